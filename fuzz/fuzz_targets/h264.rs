#![no_main]
// Placeholder: the owner of this parser fills the target in.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = data;
});
