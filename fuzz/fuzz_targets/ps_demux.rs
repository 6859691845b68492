#![no_main]
//! Fuzz the MPEG-PS demuxer: the input is fed in two pushes split at a byte chosen by the input
//! itself, then compared with a one-shot feed (frames and stats must be identical), with the
//! demuxer's invariants checked after every step and on every frame; then with a loss reported
//! at the split, and with a transport frame mark (`end_of_unit`) after each push.

use bytes::Bytes;
use gbrelay::proto::codec::Frame;
use gbrelay::proto::ps::{DemuxPolicy, PsDemuxer, PsStats, MAX_FRAME_BYTES};
use libfuzzer_sys::fuzz_target;

fn run(chunks: &[Bytes], loss_after_first: bool, mark_each: bool) -> (Vec<Frame>, PsStats) {
    let mut d = PsDemuxer::new(DemuxPolicy::default());
    let mut frames = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        if i == 1 && loss_after_first {
            d.notify_loss();
        }
        d.push(c.clone());
        if mark_each {
            d.end_of_unit();
        }
        while let Some(f) = d.poll_frame() {
            frames.push(f);
        }
        d.check_invariants();
    }
    d.flush();
    while let Some(f) = d.poll_frame() {
        frames.push(f);
    }
    d.check_invariants();
    let mut last_video_dts = i64::MIN;
    for f in &frames {
        assert!(!f.data.is_empty() && f.data.len() <= MAX_FRAME_BYTES);
        assert!(f.pts >= f.dts);
        if f.codec.is_video() {
            assert!(f.dts >= last_video_dts, "video DTS monotonic");
            last_video_dts = f.dts;
        }
    }
    (frames, d.stats().clone())
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let split = usize::from(u16::from_le_bytes([data[0], data[1]])) % (data.len() - 1) + 2;
    let all = Bytes::copy_from_slice(&data[2..]);
    let split = (split - 2).min(all.len());
    let one = run(&[all.clone()], false, false);
    let two = run(&[all.slice(..split), all.slice(split..)], false, false);
    assert!(one == two, "split at {split} differs from one-shot");
    // A loss reported at the split must not break anything either.
    let _ = run(&[all.slice(..split), all.slice(split..)], true, false);
    // Transport frame marks (RTP marker bits) at the split and the end: invariants hold.
    let _ = run(&[all.slice(..split), all.slice(split..)], false, true);
});
