//! Tests of `gbrelay::proto::rtp`: RTP validation (RFC 3550 §5.1, §5.3.1), the RFC 4571 deframer at
//! every split point, and the reorder window (unit cases and a proptest). They live here, not in
//! `src/proto`, because they read the clock to get `Instant`s and `src/proto` never does.

use bytes::{BufMut, Bytes, BytesMut};
use gbrelay::proto::rtp::{
    frame_4571, parse, Deframer, Delivery, ReorderWindow, RtpError, RtpPacket, RTP_HEADER_LEN,
};
use proptest::prelude::*;
use std::time::{Duration, Instant};

fn pkt(seq: u16) -> RtpPacket {
    RtpPacket::new(96, seq, u32::from(seq) * 3600, 0x1234_5678, false, Bytes::from(vec![seq as u8; 4]))
}

fn raw(b0: u8, extra_after_header: &[u8]) -> Bytes {
    let mut v = BytesMut::new();
    v.put_u8(b0);
    v.put_u8(0x80 | 96);
    v.put_u16(0xfffe);
    v.put_u32(90000);
    v.put_u32(0xdead_beef);
    v.put_slice(extra_after_header);
    v.freeze()
}

// ---------------------------------------------------------------- parse

#[test]
fn parse_minimal_header_gives_fields_and_zero_copy_payload() {
    let data = raw(0x80, b"PSDATA");
    let p = parse(data.clone()).unwrap();
    assert_eq!((p.version, p.padding, p.extension, p.marker), (2, false, false, true));
    assert_eq!((p.payload_type, p.seq, p.timestamp, p.ssrc), (96, 0xfffe, 90000, 0xdead_beef));
    assert_eq!(&p.payload[..], b"PSDATA");
    // The payload points into the input buffer: no copy.
    assert_eq!(p.payload.as_ptr(), data[RTP_HEADER_LEN..].as_ptr());
}

#[test]
fn parse_skips_csrc_list() {
    let mut extra = vec![0u8; 8];
    extra.extend_from_slice(b"xy");
    let p = parse(raw(0x82, &extra)).unwrap();
    assert_eq!(&p.payload[..], b"xy");
}

#[test]
fn parse_skips_header_extension() {
    // profile 0xBEDE, length 2 words, 8 bytes of extension, then payload.
    let mut extra = vec![0xbe, 0xde, 0x00, 0x02];
    extra.extend_from_slice(&[1; 8]);
    extra.extend_from_slice(b"pay");
    let p = parse(raw(0x90, &extra)).unwrap();
    assert!(p.extension);
    assert_eq!(&p.payload[..], b"pay");
}

#[test]
fn parse_removes_padding_counted_in_last_byte() {
    let p = parse(raw(0xa0, &[b'a', b'b', 0, 0, 3])).unwrap();
    assert!(p.padding);
    assert_eq!(&p.payload[..], b"ab");
    // Padding that is the whole remainder leaves an empty payload.
    let p = parse(raw(0xa0, &[0, 2])).unwrap();
    assert!(p.payload.is_empty());
}

#[test]
fn parse_rejects_short_packet() {
    assert_eq!(parse(Bytes::from_static(&[0x80; 11])), Err(RtpError::TooShort { len: 11 }));
}

#[test]
fn parse_rejects_version_other_than_2() {
    assert_eq!(parse(raw(0x40, b"x")), Err(RtpError::BadVersion { version: 1 }));
    assert_eq!(parse(raw(0x00, b"x")), Err(RtpError::BadVersion { version: 0 }));
}

#[test]
fn parse_rejects_csrc_list_past_end() {
    assert_eq!(parse(raw(0x83, &[0; 8])), Err(RtpError::CsrcOverrun { count: 3, needed: 24, len: 20 }));
}

#[test]
fn parse_rejects_extension_past_end() {
    assert_eq!(
        parse(raw(0x90, &[0, 0])),
        Err(RtpError::ExtensionOverrun { offset: 12, needed: 16, len: 14 })
    );
    assert_eq!(
        parse(raw(0x90, &[0, 0, 0, 3, 1, 2, 3, 4])),
        Err(RtpError::ExtensionOverrun { offset: 12, needed: 28, len: 20 })
    );
}

#[test]
fn parse_rejects_zero_or_oversized_padding() {
    assert_eq!(parse(raw(0xa0, &[1, 0])), Err(RtpError::BadPadding { offset: 13, count: 0, available: 2 }));
    assert_eq!(parse(raw(0xa0, &[1, 3])), Err(RtpError::BadPadding { offset: 13, count: 3, available: 2 }));
    // Padding may not eat into the CSRC list either.
    assert!(matches!(parse(raw(0xa1, &[0, 0, 0, 5])), Err(RtpError::BadPadding { .. })));
}

#[test]
fn encode_then_parse_round_trips() {
    let p = RtpPacket::new(96, 65535, 7, 42, true, Bytes::from_static(b"hello"));
    assert_eq!(parse(p.encode()).unwrap(), p);
}

// ---------------------------------------------------------------- deframer

fn stream_of(frames: &[Bytes]) -> Vec<u8> {
    frames.iter().flat_map(|f| frame_4571(f).to_vec()).collect()
}

/// Push `chunks` one by one, draining after each; returns what came out.
fn run_deframer(max: usize, chunks: &[&[u8]]) -> (Vec<Result<Bytes, RtpError>>, Deframer) {
    let mut d = Deframer::new(max);
    let mut out = Vec::new();
    for c in chunks {
        d.push(c);
        while let Some(r) = d.next() {
            out.push(r);
        }
        assert!(d.buffered() <= 2 + max + c.len(), "buffer stays bounded");
    }
    (out, d)
}

fn sample_frames() -> Vec<Bytes> {
    (0..5u16)
        .map(|i| {
            let payload = Bytes::from(vec![i as u8; 10 + 37 * usize::from(i)]);
            RtpPacket::new(96, 100 + i, 0, 1, false, payload).encode()
        })
        .collect()
}

#[test]
fn deframer_gives_the_same_frames_for_every_split() {
    let frames = sample_frames();
    let data = stream_of(&frames);
    let (whole, _) = run_deframer(1500, &[&data]);
    let whole: Vec<Bytes> = whole.into_iter().map(Result::unwrap).collect();
    assert_eq!(whole, frames);
    for split in 0..=data.len() {
        let (got, d) = run_deframer(1500, &[&data[..split], &data[split..]]);
        let got: Vec<Bytes> = got.into_iter().map(Result::unwrap).collect();
        assert_eq!(got, frames, "split at {split}");
        assert_eq!(d.buffered(), 0);
    }
}

#[test]
fn deframer_survives_one_byte_at_a_time() {
    let frames = sample_frames();
    let data = stream_of(&frames);
    let chunks: Vec<&[u8]> = data.chunks(1).collect();
    let (got, _) = run_deframer(1500, &chunks);
    assert_eq!(got.into_iter().map(Result::unwrap).collect::<Vec<_>>(), frames);
}

#[test]
fn deframer_rejects_zero_length_and_resyncs_at_next_rtp_frame() {
    let frames = sample_frames();
    let mut data = frame_4571(&frames[0]).to_vec();
    data.extend_from_slice(&[0, 0]);
    data.extend_from_slice(&stream_of(&frames[1..]));
    let (got, d) = run_deframer(1500, &[&data]);
    assert_eq!(got[0], Ok(frames[0].clone()));
    assert_eq!(got[1], Err(RtpError::ZeroLengthFrame { offset: frame_4571(&frames[0]).len() as u64 }));
    let rest: Vec<Bytes> = got[2..].iter().cloned().map(Result::unwrap).collect();
    assert_eq!(rest, frames[1..].to_vec());
    assert_eq!(d.resyncs(), 1);
    assert_eq!(d.discarded(), 2);
    // Same output for every split.
    for split in 0..=data.len() {
        let (g, _) = run_deframer(1500, &[&data[..split], &data[split..]]);
        assert_eq!(g, got, "split at {split}");
    }
}

#[test]
fn deframer_rejects_frame_above_limit_and_skips_garbage() {
    let frames = sample_frames();
    let mut data = vec![0xff, 0xff, 1, 2, 3, 4, 5];
    data.extend_from_slice(&stream_of(&frames));
    let (got, d) = run_deframer(1500, &[&data]);
    assert_eq!(got[0], Err(RtpError::FrameTooLong { offset: 0, len: 65535, max: 1500 }));
    let rest: Vec<Bytes> = got[1..].iter().cloned().map(Result::unwrap).collect();
    assert_eq!(rest, frames);
    assert_eq!(d.discarded(), 7);
    for split in 0..=data.len() {
        let (g, _) = run_deframer(1500, &[&data[..split], &data[split..]]);
        assert_eq!(g, got, "split at {split}");
    }
}

#[test]
fn deframer_frames_are_slices_without_prefix() {
    let f = frame_4571(b"\x80abcdefghijklmnop");
    assert_eq!(&f[..2], &[0, 17]);
    let (got, _) = run_deframer(100, &[&f]);
    assert_eq!(&got[0].as_ref().unwrap()[..], b"\x80abcdefghijklmnop");
}

// ---------------------------------------------------------------- reorder window

fn drain(w: &mut ReorderWindow, now: Instant) -> Vec<Delivery> {
    let mut v = Vec::new();
    while let Some(d) = w.pop(now) {
        v.push(d);
    }
    w.check_invariants();
    v
}

fn seqs(ds: &[Delivery]) -> Vec<Result<u16, u16>> {
    ds.iter()
        .map(|d| match d {
            Delivery::Packet(p) => Ok(p.seq),
            Delivery::Gap { lost } => Err(*lost),
        })
        .collect()
}

#[test]
fn reorder_in_order_packets_are_delivered_at_once() {
    let t = Instant::now();
    let mut w = ReorderWindow::new(8, Duration::from_millis(40));
    for s in 10..20 {
        w.push(t, pkt(s));
        assert_eq!(seqs(&drain(&mut w, t)), vec![Ok(s)]);
    }
    assert_eq!(w.poll_timeout(), None);
    let st = w.stats();
    assert_eq!((st.received, st.delivered, st.lost, st.reordered), (10, 10, 0, 0));
}

#[test]
fn reorder_swapped_packets_come_out_in_order_and_are_counted() {
    let t = Instant::now();
    let mut w = ReorderWindow::new(8, Duration::from_millis(40));
    w.push(t, pkt(1));
    assert_eq!(seqs(&drain(&mut w, t)), vec![Ok(1)]);
    w.push(t, pkt(3));
    assert!(drain(&mut w, t).is_empty());
    assert_eq!(w.poll_timeout(), Some(t + Duration::from_millis(40)));
    w.push(t, pkt(2));
    assert_eq!(seqs(&drain(&mut w, t)), vec![Ok(2), Ok(3)]);
    assert_eq!(w.stats().reordered, 1);
    assert_eq!(w.stats().lost, 0);
}

#[test]
fn reorder_gap_is_given_up_after_wait() {
    let t = Instant::now();
    let wait = Duration::from_millis(40);
    let mut w = ReorderWindow::new(8, wait);
    w.push(t, pkt(1));
    drain(&mut w, t);
    w.push(t + Duration::from_millis(1), pkt(4));
    w.push(t + Duration::from_millis(2), pkt(5));
    assert!(drain(&mut w, t + Duration::from_millis(40)).is_empty());
    let due = w.poll_timeout().unwrap();
    assert_eq!(due, t + Duration::from_millis(41));
    assert_eq!(seqs(&drain(&mut w, due)), vec![Err(2), Ok(4), Ok(5)]);
    assert_eq!(w.stats().lost, 2);
    // The lost packet turning up now is late, and dropped.
    w.push(due, pkt(2));
    assert!(drain(&mut w, due).is_empty());
    assert_eq!(w.stats().late, 1);
}

#[test]
fn reorder_full_window_gives_gap_up_at_once() {
    let t = Instant::now();
    let mut w = ReorderWindow::new(4, Duration::from_secs(10));
    w.push(t, pkt(0));
    drain(&mut w, t);
    // 1 is lost; 2..=4 wait; 5 needs the window to move past 1.
    for s in 2..=4 {
        w.push(t, pkt(s));
    }
    assert!(drain(&mut w, t).is_empty());
    w.push(t, pkt(5));
    assert_eq!(seqs(&drain(&mut w, t)), vec![Err(1), Ok(2), Ok(3), Ok(4), Ok(5)]);
}

#[test]
fn reorder_handles_16_bit_wrap() {
    let t = Instant::now();
    let mut w = ReorderWindow::new(8, Duration::from_millis(40));
    let order = [65533u16, 65535, 65534, 1, 0, 2];
    let mut out = Vec::new();
    for s in order {
        w.push(t, pkt(s));
        out.extend(drain(&mut w, t));
    }
    assert_eq!(seqs(&out), vec![Ok(65533), Ok(65534), Ok(65535), Ok(0), Ok(1), Ok(2)]);
    assert_eq!(w.stats().reordered, 2);
}

#[test]
fn reorder_counts_duplicates_in_window_and_after_delivery() {
    let t = Instant::now();
    let mut w = ReorderWindow::new(8, Duration::from_millis(40));
    w.push(t, pkt(1));
    drain(&mut w, t);
    w.push(t, pkt(1)); // already delivered
    w.push(t, pkt(3));
    w.push(t, pkt(3)); // already buffered
    w.push(t, pkt(2));
    assert_eq!(seqs(&drain(&mut w, t)), vec![Ok(2), Ok(3)]);
    assert_eq!(w.stats().duplicate, 2);
}

#[test]
fn reorder_resets_on_confirmed_source_restart() {
    let t = Instant::now();
    let mut w = ReorderWindow::new(8, Duration::from_millis(40));
    let mut out = Vec::new();
    for s in [100, 101, 40000, 40001, 40002] {
        w.push(t, pkt(s));
        out.extend(drain(&mut w, t));
    }
    assert_eq!(seqs(&out), vec![Ok(100), Ok(101), Ok(40000), Ok(40001), Ok(40002)]);
    assert_eq!(w.stats().restarts, 1);
    assert_eq!(w.stats().lost, 0);
}

#[test]
fn reorder_drops_a_single_stray_far_packet() {
    let t = Instant::now();
    let mut w = ReorderWindow::new(8, Duration::from_millis(40));
    let mut out = Vec::new();
    for s in [100, 101, 9000, 102, 103] {
        w.push(t, pkt(s));
        out.extend(drain(&mut w, t));
    }
    assert_eq!(seqs(&out), vec![Ok(100), Ok(101), Ok(102), Ok(103)]);
    assert_eq!(w.stats().stray, 1);
    assert_eq!(w.stats().restarts, 0);
}

#[test]
fn reorder_depth_one_passes_tcp_order_and_reports_gaps_at_once() {
    let t = Instant::now();
    let mut w = ReorderWindow::new(1, Duration::ZERO);
    let mut out = Vec::new();
    for s in [5, 6, 9, 10] {
        w.push(t, pkt(s));
        out.extend(drain(&mut w, t));
    }
    assert_eq!(seqs(&out), vec![Ok(5), Ok(6), Err(2), Ok(9), Ok(10)]);
}

proptest! {
    /// Any arrival order in which no packet is displaced by `depth` or more delivers every packet in
    /// order with no loss; with some packets removed, the survivors come in order and every removed
    /// packet below the highest one received is counted lost exactly once. The first packet sent
    /// arrives first (it anchors the window).
    #[test]
    fn reorder_permutations_within_depth_deliver_in_order(
        start in any::<u16>(),
        depth in 1usize..32,
        jitter in proptest::collection::vec(0usize..1000, 1..300),
        drop_mask in proptest::collection::vec(any::<bool>(), 300),
        drop_some in any::<bool>(),
    ) {
        let n = jitter.len();
        // The first packet of the stream arrives first: it sets the window's start (a packet before
        // it arriving later is late by design).
        let mut order: Vec<(usize, usize)> =
            jitter.iter().enumerate().map(|(i, j)| (if i == 0 { 0 } else { i + j % depth }, i)).collect();
        order.sort();
        let dropped = |i: usize| drop_some && drop_mask[i] && i % 3 == 0 && i > 0;
        let t0 = Instant::now();
        let mut w = ReorderWindow::new(depth, Duration::from_secs(3600));
        let mut out = Vec::new();
        let mut expect_reordered = 0u64;
        let mut max_seen: Option<usize> = None;
        for (k, &(_, i)) in order.iter().enumerate() {
            if dropped(i) { continue; }
            if max_seen.is_some_and(|m| m > i) { expect_reordered += 1; }
            max_seen = Some(max_seen.map_or(i, |m| m.max(i)));
            let now = t0 + Duration::from_millis(k as u64);
            w.push(now, pkt(start.wrapping_add(i as u16)));
            out.extend(drain(&mut w, now));
        }
        w.flush();
        out.extend(drain(&mut w, t0));
        let delivered: Vec<u16> = out.iter().filter_map(|d| match d { Delivery::Packet(p) => Some(p.seq), _ => None }).collect();
        let expected: Vec<u16> = (0..n).filter(|&i| !dropped(i)).map(|i| start.wrapping_add(i as u16)).collect();
        prop_assert_eq!(&delivered, &expected);
        let gaps: u64 = out.iter().map(|d| match d { Delivery::Gap { lost } => u64::from(*lost), _ => 0 }).sum();
        let expect_lost = max_seen.map_or(0, |m| (0..m).filter(|&i| dropped(i)).count()) as u64;
        let st = w.stats();
        prop_assert_eq!(gaps, expect_lost);
        prop_assert_eq!(st.lost, expect_lost);
        prop_assert_eq!(st.delivered, expected.len() as u64);
        prop_assert_eq!(st.late + st.duplicate + st.stray, 0);
        prop_assert_eq!(st.reordered, expect_reordered);
        w.check_invariants();
    }
}
