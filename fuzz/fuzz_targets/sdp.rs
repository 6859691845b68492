#![no_main]
//! SDP: the GB subset parser (y=, f=, TCP/RTP/AVP) over hostile text.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = gbrelay::proto::sdp::Sdp::parse_bytes(data) {
        let _ = s.port();
    }
});
