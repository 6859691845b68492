//! RTP (RFC 3550) packet validation, RFC 4571 framing, and a reorder window.
//!
//! Belongs here: the pure, sans-IO handling of RTP packets: [`parse`] (zero-copy header validation
//! over `Bytes`), [`Deframer`] / [`frame_4571`] (RFC 4571 length-prefixed framing over a byte
//! stream) and [`ReorderWindow`] (sequence ordering with 16-bit wrap, loss / late / duplicate /
//! reorder counters). Time is passed in by the caller as `std::time::Instant` values.
//!
//! Does not belong here: sockets, tasks, timers, metrics, SSRC routing (all in `crate::media`), and
//! anything about the payload (MPEG-PS lives in `proto::ps`).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Size of the fixed RTP header (RFC 3550 §5.1).
pub const RTP_HEADER_LEN: usize = 12;

/// Errors of this module. Offsets are byte offsets into the packet (for [`parse`]) or into the
/// byte stream since the deframer was created (for [`Deframer`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtpError {
    #[error("RTP packet of {len} bytes is shorter than the {RTP_HEADER_LEN}-byte fixed header")]
    TooShort { len: usize },
    #[error("RTP version {version} at offset 0, expected 2 (RFC 3550 §5.1)")]
    BadVersion { version: u8 },
    #[error("CSRC list of {count} entries needs {needed} bytes, packet has {len} (RFC 3550 §5.1)")]
    CsrcOverrun { count: u8, needed: usize, len: usize },
    #[error("header extension at offset {offset} needs {needed} bytes, packet has {len} (RFC 3550 §5.3.1)")]
    ExtensionOverrun { offset: usize, needed: usize, len: usize },
    #[error("padding count {count} at offset {offset} is invalid: {available} bytes follow the header (RFC 3550 §5.1)")]
    BadPadding { offset: usize, count: u8, available: usize },
    #[error("RFC 4571 frame at stream offset {offset} has length 0")]
    ZeroLengthFrame { offset: u64 },
    #[error("RFC 4571 frame at stream offset {offset} has length {len}, above the limit {max}")]
    FrameTooLong { offset: u64, len: usize, max: usize },
}

/// One validated RTP packet. `payload` is a slice of the input (no copy), with CSRC list, header
/// extension and padding removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPacket {
    pub version: u8,
    pub padding: bool,
    pub extension: bool,
    pub marker: bool,
    pub payload_type: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: Bytes,
}

impl RtpPacket {
    /// A version-2 packet without padding, CSRC or extension (for senders and tests).
    pub fn new(payload_type: u8, seq: u16, timestamp: u32, ssrc: u32, marker: bool, payload: Bytes) -> Self {
        RtpPacket {
            version: 2,
            padding: false,
            extension: false,
            marker,
            payload_type: payload_type & 0x7f,
            seq,
            timestamp,
            ssrc,
            payload,
        }
    }

    /// Serialise with the 12-byte fixed header and the payload (no padding, CSRC or extension,
    /// whatever the flags say). One allocation.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(RTP_HEADER_LEN + self.payload.len());
        out.put_u8(0x80);
        out.put_u8(u8::from(self.marker) << 7 | (self.payload_type & 0x7f));
        out.put_u16(self.seq);
        out.put_u32(self.timestamp);
        out.put_u32(self.ssrc);
        out.put_slice(&self.payload);
        out.freeze()
    }
}

/// Validate an RTP packet (RFC 3550 §5.1, §5.3.1) and slice out its payload without copying.
pub fn parse(pkt: Bytes) -> Result<RtpPacket, RtpError> {
    let len = pkt.len();
    if len < RTP_HEADER_LEN {
        return Err(RtpError::TooShort { len });
    }
    let b0 = pkt[0];
    // RFC 3550 §5.1: V (2 bits) = 2.
    let version = b0 >> 6;
    if version != 2 {
        return Err(RtpError::BadVersion { version });
    }
    let padding = b0 & 0x20 != 0;
    let extension = b0 & 0x10 != 0;
    let cc = b0 & 0x0f;
    let b1 = pkt[1];
    let marker = b1 & 0x80 != 0;
    let payload_type = b1 & 0x7f;
    let seq = u16::from_be_bytes([pkt[2], pkt[3]]);
    let timestamp = u32::from_be_bytes([pkt[4], pkt[5], pkt[6], pkt[7]]);
    let ssrc = u32::from_be_bytes([pkt[8], pkt[9], pkt[10], pkt[11]]);

    // RFC 3550 §5.1: CC CSRC identifiers of 32 bits follow the fixed header.
    let mut start = RTP_HEADER_LEN + 4 * usize::from(cc);
    if start > len {
        return Err(RtpError::CsrcOverrun { count: cc, needed: start, len });
    }
    // RFC 3550 §5.3.1: 16-bit profile-defined field, 16-bit length in 32-bit words, then the data.
    if extension {
        let offset = start;
        if start + 4 > len {
            return Err(RtpError::ExtensionOverrun { offset, needed: start + 4, len });
        }
        let words = usize::from(u16::from_be_bytes([pkt[start + 2], pkt[start + 3]]));
        let end = start + 4 + 4 * words;
        if end > len {
            return Err(RtpError::ExtensionOverrun { offset, needed: end, len });
        }
        start = end;
    }
    // RFC 3550 §5.1: with P set, the last octet counts the padding octets including itself, so it is
    // at least 1 and at most what follows the header.
    let mut end = len;
    if padding {
        let count = pkt[len - 1];
        let available = len - start;
        if count == 0 || usize::from(count) > available {
            return Err(RtpError::BadPadding { offset: len - 1, count, available });
        }
        end = len - usize::from(count);
    }
    let payload = pkt.slice(start..end);
    Ok(RtpPacket { version, padding, extension, marker, payload_type, seq, timestamp, ssrc, payload })
}

/// Prefix `pkt` with its RFC 4571 §2 length (16 bits, big-endian), for senders.
///
/// # Panics
/// If `pkt` is longer than 65535 bytes: RFC 4571 cannot frame it, and senders build packets far
/// below that size, so a longer one is a bug in the caller.
pub fn frame_4571(pkt: &[u8]) -> Bytes {
    let len = u16::try_from(pkt.len()).expect("RFC 4571 frames carry at most 65535 bytes");
    let mut out = BytesMut::with_capacity(2 + pkt.len());
    out.put_u16(len);
    out.put_slice(pkt);
    out.freeze()
}

/// Smallest frame the deframer accepts as a resynchronisation point: an RTP fixed header.
const RESYNC_MIN_LEN: usize = RTP_HEADER_LEN;

/// RFC 4571 deframer: 16-bit big-endian length, then that many bytes of RTP (or RTCP) packet.
///
/// Survives a split at any byte (output does not depend on how the stream was cut into pushes).
/// Buffering is bounded: [`Deframer::next`] is called until it returns `None` before more data is
/// pushed, so the buffer holds at most one incomplete frame (`2 + max_len` bytes) plus one push.
///
/// Policy on a bad length (0, or above `max_len`): the error is returned once, then the deframer
/// drops bytes one at a time until it sees a plausible frame start (a length in
/// `12..=max_len` followed by a byte with RTP version 2) and resumes there. Dropped bytes are
/// counted in [`Deframer::discarded`], resynchronisations in [`Deframer::resyncs`].
#[derive(Debug)]
pub struct Deframer {
    buf: BytesMut,
    max_len: usize,
    /// Stream offset of `buf[0]`.
    offset: u64,
    resyncing: bool,
    discarded: u64,
    resyncs: u64,
}

impl Deframer {
    /// `max_len` is the largest frame accepted (capped at 65535, the most RFC 4571 can express).
    pub fn new(max_len: usize) -> Self {
        Deframer {
            buf: BytesMut::new(),
            max_len: max_len.clamp(1, usize::from(u16::MAX)),
            offset: 0,
            resyncing: false,
            discarded: 0,
            resyncs: 0,
        }
    }

    /// Append stream bytes (one copy; IO code can read straight into [`Deframer::buffer_mut`]).
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The internal buffer, for reading from a socket directly into it (`read_buf`). Only append.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes dropped while resynchronising.
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    /// Times the deframer lost framing and looked for the next plausible frame.
    pub fn resyncs(&self) -> u64 {
        self.resyncs
    }

    /// The next complete frame (a zero-copy slice of the buffer, without the length prefix), an
    /// error for a bad length, or `None` when more bytes are needed (nothing is consumed then).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<Result<Bytes, RtpError>> {
        if self.resyncing {
            // Look for a plausible frame start; keep the last 2 bytes if we cannot decide yet.
            loop {
                if self.buf.len() < 3 {
                    return None;
                }
                let len = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
                if (RESYNC_MIN_LEN..=self.max_len).contains(&len) && self.buf[2] >> 6 == 2 {
                    self.resyncing = false;
                    break;
                }
                self.buf.advance(1);
                self.offset += 1;
                self.discarded += 1;
            }
        }
        if self.buf.len() < 2 {
            return None;
        }
        let len = usize::from(u16::from_be_bytes([self.buf[0], self.buf[1]]));
        if len == 0 || len > self.max_len {
            let offset = self.offset;
            self.resyncing = true;
            self.resyncs += 1;
            // Drop the first length byte so the scan starts one byte further.
            self.buf.advance(1);
            self.offset += 1;
            self.discarded += 1;
            return Some(Err(if len == 0 {
                RtpError::ZeroLengthFrame { offset }
            } else {
                RtpError::FrameTooLong { offset, len, max: self.max_len }
            }));
        }
        if self.buf.len() < 2 + len {
            // Reserve room for the rest of this frame so a reader fills it in few reads.
            self.buf.reserve(2 + len - self.buf.len());
            return None;
        }
        let mut frame = self.buf.split_to(2 + len);
        frame.advance(2);
        self.offset += (2 + len) as u64;
        Some(Ok(frame.freeze()))
    }
}

/// What [`ReorderWindow::pop`] hands out, in sequence order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Packet(RtpPacket),
    /// `lost` consecutive sequence numbers were given up (after the wait, or because the window was
    /// full). The consumer should drop any partial frame.
    Gap {
        lost: u16,
    },
}

/// Counters of a [`ReorderWindow`]. `received` = `delivered + duplicate + late + stray +` what is
/// still buffered (see [`ReorderWindow::check_invariants`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReorderStats {
    /// Packets pushed.
    pub received: u64,
    /// Packets decided for delivery (handed out by `pop`, or queued for it).
    pub delivered: u64,
    /// Sequence numbers given up as lost (a packet that arrives later is also counted `late`).
    pub lost: u64,
    /// Packets that arrived after a later packet but still in time to be delivered in order.
    pub reordered: u64,
    /// Packets that arrived after their sequence number was given up; dropped.
    pub late: u64,
    /// Packets whose sequence number was already delivered or buffered; dropped.
    pub duplicate: u64,
    /// Packets far outside the window that were not confirmed as a source restart; dropped.
    pub stray: u64,
    /// Source restarts (a big sequence jump confirmed by the next packet): the window was reset.
    pub restarts: u64,
}

/// Jumps forward of at least this many sequence numbers (or the depth, if larger) are a possible
/// source restart rather than loss (RFC 3550 Appendix A.1, MAX_DROPOUT).
const MAX_DROPOUT: u64 = 3000;
/// How far back delivered/lost history is kept to tell a duplicate from a late packet; a packet
/// further back than this is a possible source restart (RFC 3550 Appendix A.1, MAX_MISORDER).
const HISTORY: u64 = 128;
/// Largest window depth.
const MAX_DEPTH: usize = 16384;
/// Extended sequence numbers start here so that they can go back without underflow.
const EXT_BASE: u64 = 1 << 32;

#[derive(Debug)]
struct Slot {
    ext: u64,
    arrived: Instant,
    pkt: RtpPacket,
}

/// Reorder window for RTP over UDP: delivers packets in sequence order, waits up to `wait` for a
/// missing packet (measured from the arrival of the first packet after the gap), and gives a gap up
/// at once when a packet arrives `depth` or more sequence numbers ahead of the next expected one.
///
/// Sans-IO: the caller pushes packets with the time they arrived, drains [`ReorderWindow::pop`]
/// until `None` after each push (so memory stays bounded by about `2 * depth` entries), then sleeps until [`ReorderWindow::poll_timeout`] (or the next packet).
///
/// Sequence numbers are extended to 64 bits across the 16-bit wrap. A packet more than
/// `max(3000, depth)` ahead, or more than 128 behind, is held as a restart probe: if the next
/// packet follows it, the source restarted (camera reboot): everything buffered is delivered (gaps
/// counted), and the window restarts at the probe. Otherwise the probe is dropped (`stray`).
#[derive(Debug)]
pub struct ReorderWindow {
    depth: usize,
    wait: Duration,
    slots: Vec<Option<Slot>>,
    buffered: usize,
    /// Next extended sequence number to deliver; `None` before the first packet.
    next: Option<u64>,
    /// Highest extended sequence number received in this epoch.
    highest: u64,
    /// Bit i set: sequence `next - 1 - i` was delivered (clear: lost or never seen).
    history: u128,
    /// Deliveries already decided (window overflow, restart flush), handed out first.
    ready: VecDeque<Delivery>,
    probe: Option<(Instant, RtpPacket)>,
    last_now: Option<Instant>,
    stats: ReorderStats,
}

impl ReorderWindow {
    /// `depth` packets are held at most (clamped to `1..=16384`, well inside half the sequence
    /// space); a gap is given up after `wait`.
    pub fn new(depth: usize, wait: Duration) -> Self {
        let depth = depth.clamp(1, MAX_DEPTH);
        ReorderWindow {
            depth,
            wait,
            slots: (0..depth).map(|_| None).collect(),
            buffered: 0,
            next: None,
            highest: 0,
            history: 0,
            ready: VecDeque::new(),
            probe: None,
            last_now: None,
            stats: ReorderStats::default(),
        }
    }

    pub fn stats(&self) -> ReorderStats {
        self.stats
    }

    /// Packets held (in the window, decided-but-not-popped, and a restart probe).
    pub fn buffered(&self) -> usize {
        self.buffered
            + self.ready.iter().filter(|d| matches!(d, Delivery::Packet(_))).count()
            + usize::from(self.probe.is_some())
    }

    fn slot_of(&self, ext: u64) -> usize {
        (ext % self.depth as u64) as usize
    }

    fn max_ahead(&self) -> u64 {
        MAX_DROPOUT.max(self.depth as u64)
    }

    /// Record that `n` sequence numbers were passed: delivered (`true`) or given up.
    fn advance_history(&mut self, n: u64, delivered: bool) {
        if n == 0 {
            return;
        }
        if n >= 128 {
            self.history = 0;
        } else {
            self.history <<= n;
        }
        if delivered {
            self.history |= 1;
        }
    }

    /// Move everything below `until` out of the window into `ready`, giving gaps up.
    fn force_until(&mut self, until: u64) {
        let Some(mut next) = self.next else { return };
        let mut gap: u64 = 0;
        while next < until {
            if self.buffered == 0 {
                // Nothing left in the window: the rest of the range is one gap.
                gap += until - next;
                next = until;
                break;
            }
            let idx = self.slot_of(next);
            match self.slots[idx].take() {
                Some(slot) if slot.ext == next => {
                    self.flush_gap(&mut gap);
                    self.buffered -= 1;
                    self.advance_history(1, true);
                    self.ready.push_back(Delivery::Packet(slot.pkt));
                    self.stats.delivered += 1;
                }
                other => {
                    self.slots[idx] = other;
                    gap += 1;
                }
            }
            next += 1;
        }
        self.flush_gap(&mut gap);
        self.next = Some(next);
    }

    /// Queue a `Gap` for `gap` given-up sequence numbers (split into u16 pieces) and record them.
    fn flush_gap(&mut self, gap: &mut u64) {
        if *gap == 0 {
            return;
        }
        self.stats.lost += *gap;
        self.advance_history(*gap, false);
        let mut left = *gap;
        while left > 0 {
            let piece = left.min(u64::from(u16::MAX));
            self.ready.push_back(Delivery::Gap { lost: piece as u16 });
            left -= piece;
        }
        *gap = 0;
    }

    /// Deliver everything held, in order, giving every gap up (end of stream, restart).
    pub fn flush(&mut self) {
        if let Some(next) = self.next {
            if self.buffered > 0 {
                let top = self.slots.iter().flatten().map(|s| s.ext).max().unwrap_or(next);
                self.force_until(top + 1);
            }
        }
    }

    fn restart(&mut self, now: Instant, probe: RtpPacket) {
        self.flush();
        self.stats.restarts += 1;
        self.next = None;
        self.history = 0;
        self.insert_first(now, probe);
    }

    fn insert_first(&mut self, now: Instant, pkt: RtpPacket) {
        let ext = EXT_BASE + u64::from(pkt.seq);
        self.next = Some(ext);
        self.highest = ext;
        let idx = self.slot_of(ext);
        self.slots[idx] = Some(Slot { ext, arrived: now, pkt });
        self.buffered += 1;
    }

    /// Accept a packet that arrived at `now`.
    pub fn push(&mut self, now: Instant, pkt: RtpPacket) {
        self.stats.received += 1;
        self.last_now = Some(now);
        let Some(next) = self.next else {
            self.insert_first(now, pkt);
            return;
        };
        // RFC 3550 Appendix A.1: the 16-bit difference, taken as signed, places the packet.
        let next16 = next as u16;
        let delta = i64::from(pkt.seq.wrapping_sub(next16) as i16);
        let ext = (next as i64 + delta) as u64;

        if delta < 0 {
            let back = (-delta) as u64;
            if back <= HISTORY {
                if self.history & (1u128 << (back - 1)) != 0 {
                    self.stats.duplicate += 1;
                } else {
                    self.stats.late += 1;
                }
                return;
            }
            self.probe_restart(now, pkt);
            return;
        }
        let ahead = delta as u64;
        if ahead >= self.max_ahead() {
            self.probe_restart(now, pkt);
            return;
        }
        // A packet inside the window ends any pending restart probe: the probe was a stray.
        if self.probe.take().is_some() {
            self.stats.stray += 1;
        }
        if ahead >= self.depth as u64 {
            // RFC-less but classic: the window is full; give up what is missing below the new packet's
            // window so it fits.
            self.force_until(ext + 1 - self.depth as u64);
        }
        let idx = self.slot_of(ext);
        if let Some(slot) = &self.slots[idx] {
            if slot.ext == ext {
                self.stats.duplicate += 1;
                return;
            }
        }
        if ext < self.highest {
            self.stats.reordered += 1;
        } else {
            self.highest = ext;
        }
        debug_assert!(self.slots[idx].is_none(), "slot of an in-window sequence is free");
        self.slots[idx] = Some(Slot { ext, arrived: now, pkt });
        self.buffered += 1;
    }

    fn probe_restart(&mut self, now: Instant, pkt: RtpPacket) {
        match self.probe.take() {
            Some((_, probe)) if probe.seq.wrapping_add(1) == pkt.seq => {
                self.restart(now, probe);
                // The current packet follows the probe directly.
                self.push_after_restart(now, pkt);
            }
            Some(_) => {
                self.stats.stray += 1;
                self.probe = Some((now, pkt));
            }
            None => self.probe = Some((now, pkt)),
        }
    }

    fn push_after_restart(&mut self, now: Instant, pkt: RtpPacket) {
        // `received` was already counted for this packet.
        self.stats.received -= 1;
        self.push(now, pkt);
    }

    /// Earliest arrival among the packets in the window (the gap at `next` is known since then).
    fn gap_known_since(&self) -> Option<Instant> {
        self.slots.iter().flatten().map(|s| s.arrived).min()
    }

    /// The next delivery, if one is due at `now`.
    pub fn pop(&mut self, now: Instant) -> Option<Delivery> {
        if let Some(d) = self.ready.pop_front() {
            return Some(d);
        }
        let next = self.next?;
        if self.buffered == 0 {
            return None;
        }
        let idx = self.slot_of(next);
        if matches!(&self.slots[idx], Some(s) if s.ext == next) {
            let slot = self.slots[idx].take().expect("checked just above");
            self.buffered -= 1;
            self.next = Some(next + 1);
            self.advance_history(1, true);
            self.stats.delivered += 1;
            return Some(Delivery::Packet(slot.pkt));
        }
        // A gap at `next`: give it up once it has waited `wait`.
        let since = self.gap_known_since()?;
        let due = since.checked_add(self.wait)?;
        if now < due {
            return None;
        }
        let first = self.slots.iter().flatten().map(|s| s.ext).min()?;
        self.force_until(first);
        self.ready.pop_front()
    }

    /// When `pop` will next have something to give if no packet arrives: `None` when nothing is
    /// held. Call after draining `pop`. A deliverable-now state returns the last push time.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.ready.is_empty() {
            return self.last_now;
        }
        let next = self.next?;
        if self.buffered == 0 {
            return None;
        }
        if matches!(&self.slots[self.slot_of(next)], Some(s) if s.ext == next) {
            return self.last_now;
        }
        self.gap_known_since()?.checked_add(self.wait)
    }

    /// Check the internal invariants; panics with a description if one is broken. For tests and
    /// fuzzing.
    pub fn check_invariants(&self) {
        let occupied = self.slots.iter().flatten().count();
        assert_eq!(occupied, self.buffered, "buffered count matches occupied slots");
        if let Some(next) = self.next {
            for (i, s) in self.slots.iter().enumerate() {
                if let Some(s) = s {
                    assert!(
                        s.ext >= next && s.ext < next + self.depth as u64,
                        "slot ext {} outside window",
                        s.ext
                    );
                    assert_eq!(self.slot_of(s.ext), i, "slot index matches ext");
                    assert_eq!(s.ext as u16, s.pkt.seq, "slot ext matches seq");
                }
            }
        } else {
            assert_eq!(self.buffered, 0, "nothing buffered before the first packet");
        }
        let st = self.stats;
        let ready_pkts = self.ready.iter().filter(|d| matches!(d, Delivery::Packet(_))).count() as u64;
        // `delivered` counts packets moved to `ready` too.
        assert_eq!(
            st.received,
            st.delivered
                + st.duplicate
                + st.late
                + st.stray
                + self.buffered as u64
                + u64::from(self.probe.is_some()),
            "received = delivered + duplicate + late + stray + held: {st:?}, buffered {}, ready {ready_pkts}",
            self.buffered
        );
    }
}

// Tests are in `tests/media_rtp.rs` (they need real `Instant`s, which this pure module never reads).
