#![no_main]
//! Fuzz the RTP receive path: the RFC 4571 deframer fed at input-chosen splits, `parse` on each
//! frame, and the reorder window with input-chosen arrival times. Checks that the deframer's output
//! does not depend on the splits and that the reorder window's invariants hold after every step.
use bytes::Bytes;
use gbrelay::proto::rtp::{parse, Deframer, ReorderWindow};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let depth = usize::from(data[0] % 64) + 1;
    let wait = Duration::from_millis(u64::from(data[1]));
    let max_len = 16 + usize::from(data[2]) * 8;
    let split_seed = data[3];
    let stream = &data[4..];

    // One feed.
    let mut one = Deframer::new(max_len);
    one.push(stream);
    let mut whole = Vec::new();
    while let Some(r) = one.next() {
        whole.push(r);
    }

    // Fed in pieces whose sizes come from the input itself.
    let mut d = Deframer::new(max_len);
    let mut w = ReorderWindow::new(depth, wait);
    let mut pieces = Vec::new();
    let mut pos = 0;
    let mut k = 0usize;
    let mut now = base();
    while pos < stream.len() {
        let step = 1 + usize::from(stream[(pos + usize::from(split_seed)) % stream.len()] ^ split_seed) % 97;
        let end = (pos + step).min(stream.len());
        d.push(&stream[pos..end]);
        assert!(d.buffered() <= 2 + max_len + (end - pos));
        pos = end;
        while let Some(r) = d.next() {
            pieces.push(r.clone());
            if let Ok(frame) = r {
                k += 1;
                now += Duration::from_millis(u64::from(frame.first().copied().unwrap_or(0) % 8));
                if let Ok(pkt) = parse(Bytes::clone(&frame)) {
                    assert!(pkt.payload.len() <= frame.len());
                    w.push(now, pkt);
                    while w.pop(now).is_some() {}
                    w.check_invariants();
                    if let Some(t) = w.poll_timeout() {
                        if k % 3 == 0 {
                            while w.pop(t).is_some() {}
                            w.check_invariants();
                        }
                    }
                }
            }
        }
    }
    assert_eq!(whole, pieces, "deframer output depends on the split");
    w.flush();
    while w.pop(now).is_some() {}
    w.check_invariants();
});
