#![no_main]
//! MANSCDP: GB18030 decoding and the XML reader over hostile bodies.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = gbrelay::proto::gb::manscdp::parse(data);
});
