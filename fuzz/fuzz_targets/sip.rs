#![no_main]
//! SIP: datagram parsing, stream framing at an input-chosen split, Authorization parsing and
//! the INVITE client transaction fed with whatever parses as a response.
use bytes::Bytes;
use gbrelay::proto::sip::digest::parse_authorization;
use gbrelay::proto::sip::framing::StreamFramer;
use gbrelay::proto::sip::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::parse(Bytes::copy_from_slice(data)) {
        let _ = (m.method(), m.cseq(), m.top_via(), m.from(), m.to(), m.contact(), m.expires());
        if let Some(a) = m.header("Authorization") {
            let _ = parse_authorization(a);
        }
    }
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut one = StreamFramer::new();
    one.push(data);
    let mut a = vec![];
    while let Ok(Some(m)) = one.next_message() {
        a.push(m);
    }
    let mut two = StreamFramer::new();
    two.push(&data[..split]);
    let mut b = vec![];
    while let Ok(Some(m)) = two.next_message() {
        b.push(m);
    }
    two.push(&data[split..]);
    while let Ok(Some(m)) = two.next_message() {
        b.push(m);
    }
    // Framing is split-independent up to the first error.
    if one.next_message().is_ok() && two.next_message().is_ok() {
        assert_eq!(a, b);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = parse_authorization(s);
    }
});
