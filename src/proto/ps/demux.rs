//! The MPEG-PS demuxer state machine (ISO/IEC 13818-1 §2.5): bytes in (split anywhere), frames
//! out. Sans-IO: `push` queues `Bytes`, `poll_frame` parses lazily, `flush` ends the input,
//! `notify_loss` reports a hole in the input.
//!
//! What belongs here: walking pack headers, system headers, PSMs and PES packets; cutting video
//! access units and audio frames; timestamps; the named quirk behaviours listed in `mod.rs`.
//! What does not: header bit layouts (`header.rs`), NAL/ADTS reading (`es.rs`), timestamp
//! unwrapping (`timeline.rs`), RTP (`proto::rtp`), muxing (`proto::mux`).

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};

use super::es::{self, AuInfo};
use super::header::{self as hdr, ParseError, LOOKAHEAD};
use super::input::InputQueue;
use super::timeline::{ClockEvent, Timeline, TrackClock};
use crate::proto::codec::{Codec, Frame};

/// A frame (or one PES) larger than this is dropped and counted (`frame_too_large`).
pub const MAX_FRAME_BYTES: usize = 8 << 20;
/// How many [`QuirkEvent`]s are kept (counts in `quirk_counts` go on).
pub const MAX_QUIRK_EVENTS: usize = 64;
/// Default video frame duration before two frames have been seen (25 fps).
const DEFAULT_VIDEO_STEP: i64 = 3600;

/// Device-dependent choices the stream itself cannot settle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DemuxPolicy {
    /// PSM stream type 0x90 is G.711 A-law by GB/T 28181; some devices mean µ-law (the SDP's
    /// rtpmap says so). Default `false`: A-law. Type 0x91 is always µ-law.
    pub g711_0x90_is_ulaw: bool,
}

/// One noteworthy deviation met in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuirkEvent {
    /// One of the names listed in `mod.rs` (e.g. `psm_crc_little_endian`).
    pub name: &'static str,
    /// Byte offset in the stream (counting every pushed byte) where it was met.
    pub offset: u64,
    pub detail: String,
}

/// Counters of what the demuxer met. Compare with the `layout` of `testdata/*.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PsStats {
    pub packs: u64,
    pub system_headers: u64,
    pub psms: u64,
    /// PES with a video stream id (0xE0..=0xEF), selected or not.
    pub video_pes: u64,
    /// PES with an audio stream id (0xC0..=0xDF), selected or not.
    pub audio_pes: u64,
    /// private_stream_1 (0xBD) PES, skipped by length.
    pub private_pes: u64,
    /// Other PES skipped by length: padding, private_stream_2, unknown ids, a second video or
    /// audio stream, an audio stream type we do not carry.
    pub skipped_pes: u64,
    /// Times the demuxer lost sync (garbage where a start code belonged, or a reported loss).
    pub resyncs: u64,
    /// Bytes thrown away while resynchronising (and truncated tails).
    pub bytes_skipped: u64,
    pub frames_video: u64,
    pub frames_audio: u64,
    /// The first [`MAX_QUIRK_EVENTS`] quirks met.
    pub quirks: Vec<QuirkEvent>,
    /// Every quirk met, by name.
    pub quirk_counts: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dest {
    Video,
    Audio,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting a start code at the front of the input.
    Header,
    /// Looking for the next pack header after garbage or loss.
    Resync,
    /// `remaining` bytes of the current PES payload follow (`pes` holds them unless skipped).
    Payload { remaining: usize },
    /// A PES with PES_packet_length 0: the payload runs to the next plausible header.
    Unbounded,
    /// Bytes to drop (system header, skipped PES).
    Skip { remaining: usize },
}

#[derive(Debug)]
struct PesAcc {
    dest: Dest,
    pts: Option<u64>,
    dts: Option<u64>,
    pieces: Vec<Bytes>,
    len: usize,
    /// A pack header came between the previous video PES and this one.
    after_pack: bool,
    offset: u64,
    overflow: bool,
}

#[derive(Debug)]
struct FrameAcc {
    pts: Option<u64>,
    dts: Option<u64>,
    pieces: Vec<Bytes>,
    len: usize,
    offset: u64,
    overflow: bool,
}

/// Parameter sets of the latest access unit that carried them (NAL units without start codes),
/// for a late joiner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParameterSets {
    pub vps: Option<Bytes>,
    pub sps: Option<Bytes>,
    pub pps: Option<Bytes>,
}

/// The MPEG-PS demuxer. See the module docs of `proto::ps` for the behaviour it promises.
#[derive(Debug)]
pub struct PsDemuxer {
    policy: DemuxPolicy,
    input: InputQueue,
    state: State,
    out: VecDeque<Frame>,
    stats: PsStats,
    pes: Option<PesAcc>,
    frame: Option<FrameAcc>,
    pack_since_video: bool,
    video_id: Option<u8>,
    audio_id: Option<u8>,
    psm_seen: bool,
    psm_video_type: Option<u8>,
    psm_video: Option<Codec>,
    psm_checked: bool,
    /// Audio codec from the PSM: `Ok(codec)` or `Err(unsupported stream type)`.
    psm_audio: Option<Result<Codec, u8>>,
    video_codec: Option<Codec>,
    audio_codec: Option<Codec>,
    params: ParameterSets,
    timeline: Timeline,
    vclock: TrackClock,
    aclock: TrackClock,
    video_step: i64,
    audio_next: Option<i64>,
    aac_carry: Vec<u8>,
    aac_carry_pts: i64,
    /// The transport's end-of-frame marks are believed (see [`PsDemuxer::end_of_unit`]); false
    /// for good once one was found inside a PES or inside a frame.
    marks_trusted: bool,
    /// The last frame was ended by a mark: `Some(its PTS)` until the next video PES shows
    /// whether the mark really was at a frame boundary.
    mark_cut: Option<Option<u64>>,
    /// An unbounded PES was ended by a mark: the next pushed bytes must begin with a start code.
    mark_cut_unbounded: bool,
}

fn concat(pieces: Vec<Bytes>, len: usize) -> Bytes {
    if pieces.len() == 1 {
        return pieces.into_iter().next().unwrap_or_default();
    }
    let mut b = BytesMut::with_capacity(len);
    for p in &pieces {
        b.extend_from_slice(p);
    }
    b.freeze()
}

/// First `N` bytes over a list of pieces (fewer if they hold fewer).
fn head<const N: usize>(pieces: &[Bytes]) -> ([u8; N], usize) {
    let mut out = [0u8; N];
    let mut n = 0;
    for p in pieces {
        let take = p.len().min(N - n);
        out[n..n + take].copy_from_slice(&p[..take]);
        n += take;
        if n == N {
            break;
        }
    }
    (out, n)
}

fn g711_ticks(bytes: usize) -> i64 {
    // 8 kHz, one byte per sample: 11.25 ticks of 90 kHz per byte.
    (bytes as i64 * 90_000) / 8_000
}

impl Default for PsDemuxer {
    fn default() -> Self {
        Self::new(DemuxPolicy::default())
    }
}

impl PsDemuxer {
    pub fn new(policy: DemuxPolicy) -> Self {
        PsDemuxer {
            policy,
            input: InputQueue::default(),
            state: State::Header,
            out: VecDeque::new(),
            stats: PsStats::default(),
            pes: None,
            frame: None,
            pack_since_video: false,
            video_id: None,
            audio_id: None,
            psm_seen: false,
            psm_video_type: None,
            psm_video: None,
            psm_checked: false,
            psm_audio: None,
            video_codec: None,
            audio_codec: None,
            params: ParameterSets::default(),
            timeline: Timeline::default(),
            vclock: TrackClock::default(),
            aclock: TrackClock::default(),
            video_step: DEFAULT_VIDEO_STEP,
            audio_next: None,
            aac_carry: Vec::new(),
            aac_carry_pts: 0,
            marks_trusted: true,
            mark_cut: None,
            mark_cut_unbounded: false,
        }
    }

    /// Queue PS bytes, split anywhere. Parsing happens in [`Self::poll_frame`]; drain it after
    /// each push (the queue holds what was pushed and not yet parsed).
    pub fn push(&mut self, data: Bytes) {
        if std::mem::take(&mut self.mark_cut_unbounded) && !data.starts_with(&hdr::START_CODE[..]) {
            // The PES the mark ended goes on: the mark was not at a PES end.
            let off = self.input.offset();
            self.distrust_marks(off, "an unbounded PES went on after the mark");
        }
        self.input.push(data);
    }

    /// The transport says the bytes pushed so far end a frame: the RTP marker bit, set on the
    /// last packet of a frame (GB/T 28181-2016 Annex C.2, as RFC 2250 §2 does for MPEG). The
    /// frame being assembled is then complete now, instead of when the next frame's PES arrives
    /// (one frame interval later), so a viewer gets the first keyframe as soon as it is whole;
    /// a PES with PES_packet_length 0 ends here too.
    ///
    /// Policy (`rtp_marker_misplaced`): a mark is acted on only where the parse is at a PES end
    /// (or inside an unbounded video PES) and the frame holds a slice. A mark met inside a
    /// bounded PES, an unbounded PES that goes on in the next packet, or a next video PES that
    /// continues the frame a mark ended (no PTS, or the same PTS) shows the device marks
    /// something else than frame ends: marks are ignored for the rest of the stream and frames
    /// end at the next frame's PES as without marks. Only the last case can have cut a frame.
    pub fn end_of_unit(&mut self) {
        if !self.marks_trusted {
            return;
        }
        while self.step(false) {}
        if !self.input.is_empty() {
            // A header cut short at the packet's end (or a start-code look-alike held back).
            return;
        }
        match self.state {
            State::Header => {}
            State::Unbounded if self.pes.as_ref().is_some_and(|p| p.dest == Dest::Video) => {
                self.pes_end();
                self.state = State::Header;
                self.mark_cut_unbounded = true;
            }
            State::Payload { remaining } if remaining > 0 => {
                let off = self.input.offset();
                self.distrust_marks(off, "mark inside a PES");
                return;
            }
            _ => return,
        }
        let pts = self.frame.as_ref().map(|f| f.pts);
        if self.finish_video(true) {
            self.mark_cut = pts;
        }
    }

    fn distrust_marks(&mut self, off: u64, why: &'static str) {
        self.marks_trusted = false;
        self.mark_cut = None;
        self.mark_cut_unbounded = false;
        self.quirk("rtp_marker_misplaced", off, || format!("{why}: transport frame marks ignored"));
    }

    /// The next complete frame, in stream order, or `None` until more input arrives.
    pub fn poll_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = self.out.pop_front() {
                return Some(f);
            }
            if !self.step(false) {
                return None;
            }
        }
    }

    /// End of input: parse everything queued, end an unbounded PES at the end, and complete the
    /// frame being assembled. A PES cut short by the end is dropped (`truncated_at_end`). Frames
    /// become available from [`Self::poll_frame`]. Pushing again afterwards starts a new run on
    /// the same timeline.
    pub fn flush(&mut self) {
        while self.step(true) {}
        match self.state {
            State::Unbounded => self.pes_end(),
            State::Payload { .. } if self.pes.is_some() => {
                let off = self.input.offset();
                self.pes = None;
                self.quirk("truncated_at_end", off, || "PES payload cut short".into());
            }
            _ => {}
        }
        let rest = self.input.len();
        if rest > 0 {
            let off = self.input.offset();
            self.input.clear();
            self.stats.bytes_skipped += rest as u64;
            self.quirk("truncated_at_end", off, || format!("{rest} bytes of an unfinished header"));
        }
        self.state = State::Header;
        self.finish_video_frame();
        if !self.aac_carry.is_empty() {
            let n = self.aac_carry.len();
            self.aac_carry.clear();
            self.quirk("truncated_at_end", self.input.offset(), || format!("{n} bytes of ADTS"));
        }
        self.pack_since_video = false;
    }

    /// The transport reported lost packets (RTP sequence gap) before the bytes pushed next.
    ///
    /// Policy: everything queued before the hole is parsed first. A PES cut by the hole is
    /// dropped (`loss_dropped_frame`) with the frame it belongs to; if it had a new PTS it was
    /// the start of the next frame, so the frame before it is complete and is emitted. A frame
    /// whose PES all arrived whole is kept. Then the demuxer resynchronises at the next pack
    /// header (one `resyncs`). Frames that follow may reference the dropped one until the next
    /// keyframe; that is the consumer's call.
    pub fn notify_loss(&mut self) {
        while self.step(false) {}
        let off = self.input.offset();
        let rest = self.input.len();
        self.input.clear();
        self.stats.bytes_skipped += rest as u64;
        if let Some(pes) = self.pes.take() {
            let frames_before = self.stats.frames_video;
            if pes.dest == Dest::Video {
                self.drop_partial_video(&pes);
            }
            let what = if self.stats.frames_video > frames_before { "PES" } else { "frame" };
            self.quirk("loss_dropped_frame", off, || format!("partial {what} dropped after loss"));
        }
        self.aac_carry.clear();
        self.stats.resyncs += 1;
        self.state = State::Resync;
    }

    pub fn stats(&self) -> &PsStats {
        &self.stats
    }

    /// The video codec in use (from the NAL units, else the PSM).
    pub fn video_codec(&self) -> Option<Codec> {
        self.video_codec.or(self.psm_video)
    }

    /// The audio codec in use (from the PSM, else detected from the payload).
    pub fn audio_codec(&self) -> Option<Codec> {
        self.audio_codec.or(self.psm_audio.and_then(Result::ok))
    }

    /// Parameter sets seen last (for a viewer that joins between keyframes).
    pub fn parameter_sets(&self) -> &ParameterSets {
        &self.params
    }

    /// Internal consistency, for tests and fuzzing: panics if broken.
    pub fn check_invariants(&self) {
        assert!(self.stats.quirks.len() <= MAX_QUIRK_EVENTS);
        let counted: u64 = self.stats.quirk_counts.values().sum();
        assert!(counted >= self.stats.quirks.len() as u64);
        if let Some(p) = &self.pes {
            assert!(p.len <= MAX_FRAME_BYTES);
            assert_eq!(p.len, p.pieces.iter().map(Bytes::len).sum::<usize>());
        }
        if let Some(f) = &self.frame {
            assert!(f.len <= MAX_FRAME_BYTES);
            assert_eq!(f.len, f.pieces.iter().map(Bytes::len).sum::<usize>());
        }
        assert!(self.aac_carry.len() <= 8192);
        if let State::Payload { remaining } | State::Skip { remaining } = self.state {
            assert!(remaining <= 65_541);
        }
    }

    fn quirk(&mut self, name: &'static str, offset: u64, detail: impl FnOnce() -> String) {
        *self.stats.quirk_counts.entry(name).or_insert(0) += 1;
        if self.stats.quirks.len() < MAX_QUIRK_EVENTS {
            self.stats.quirks.push(QuirkEvent { name, offset, detail: detail() });
        }
    }

    /// One parsing step; false when nothing more can be done with the queued input.
    fn step(&mut self, eof: bool) -> bool {
        match self.state {
            State::Header => self.step_header(),
            State::Resync => self.step_scan(eof, false),
            State::Unbounded => self.step_scan(eof, true),
            State::Payload { remaining } => {
                if self.input.is_empty() {
                    return false;
                }
                let piece = self.input.take_front(remaining);
                let remaining = remaining - piece.len();
                self.pes_add(piece);
                if remaining == 0 {
                    self.state = State::Header;
                    self.pes_end();
                } else {
                    self.state = State::Payload { remaining };
                }
                true
            }
            State::Skip { remaining } => {
                if self.input.is_empty() {
                    return false;
                }
                let remaining = remaining - self.input.skip(remaining);
                self.state = if remaining == 0 { State::Header } else { State::Skip { remaining } };
                true
            }
        }
    }

    fn enter_resync(&mut self, offset: u64, why: &'static str) {
        self.stats.resyncs += 1;
        self.quirk("garbage_resync", offset, || why.to_string());
        self.state = State::Resync;
    }

    fn step_header(&mut self) -> bool {
        let off = self.input.offset();
        let Some(h) = self.input.contiguous(4) else { return false };
        if h[..3] != hdr::START_CODE {
            self.enter_resync(off, "no start code where a header belongs");
            return true;
        }
        let id = h[3];
        match id {
            hdr::PACK_START => self.header_pack(off),
            hdr::SYSTEM_HEADER => {
                let Some(h) = self.input.contiguous(6) else { return false };
                let Ok(total) = hdr::length_field(h) else { return false };
                self.stats.system_headers += 1;
                self.state = State::Skip { remaining: total };
                true
            }
            hdr::PROGRAM_STREAM_MAP => self.header_psm(off),
            hdr::PROGRAM_END => {
                self.input.skip(4);
                true
            }
            0xC0..=0xEF => self.header_pes(off, id),
            hdr::PRIVATE_STREAM_1 | hdr::PADDING_STREAM | hdr::PRIVATE_STREAM_2 | 0xF0..=0xFF => {
                let Some(h) = self.input.contiguous(6) else { return false };
                let Ok(total) = hdr::length_field(h) else { return false };
                if total == 6 && id != hdr::PADDING_STREAM {
                    // A length-0 private/unknown PES cannot be skipped by its length.
                    self.enter_resync(off, "length-0 PES of a stream we skip");
                    self.stats.bytes_skipped += self.input.skip(1) as u64;
                    return true;
                }
                match id {
                    hdr::PRIVATE_STREAM_1 => {
                        self.stats.private_pes += 1;
                        self.quirk("private_stream_skipped", off, || format!("0xBD, {total} bytes"));
                    }
                    hdr::PADDING_STREAM => self.stats.skipped_pes += 1,
                    _ => {
                        self.stats.skipped_pes += 1;
                        self.quirk("unknown_stream_skipped", off, || {
                            format!("stream id {id:#04x}, {total} bytes")
                        });
                    }
                }
                self.state = State::Skip { remaining: total };
                true
            }
            _ => {
                self.enter_resync(off, "start code with a stream id that is no PS structure");
                self.stats.bytes_skipped += self.input.skip(1) as u64;
                true
            }
        }
    }

    /// Pack header (§2.5.3.3) and its stuffing, skipped by pack_stuffing_length exactly: vendors
    /// fill it with bytes that are not 0xFF, even start-code look-alikes.
    fn header_pack(&mut self, off: u64) -> bool {
        let Some(h) = self.input.contiguous(14) else { return false };
        let ph = match hdr::parse_pack_header(h) {
            Ok(ph) => ph,
            Err(ParseError::Incomplete { .. }) => return false,
            Err(ParseError::Invalid { expected, .. }) => {
                self.enter_resync(off, expected);
                self.stats.bytes_skipped += self.input.skip(1) as u64;
                return true;
            }
        };
        let total = ph.total_len();
        let Some(h) = self.input.contiguous(total) else { return false };
        let not_ff = h[14..].iter().any(|&b| b != 0xFF);
        if not_ff {
            let s = format!("{:02x?}", &h[14..]);
            self.quirk("pack_stuffing_not_ff", off, || s);
        }
        if !ph.markers_ok {
            self.quirk("pack_marker_bits", off, || "a marker bit is 0".into());
        }
        self.input.skip(total);
        self.stats.packs += 1;
        self.pack_since_video = true;
        true
    }

    /// Program stream map (§2.5.4.1). Never rejected for its CRC; lengths that overrun are
    /// clamped; a map that cannot be read at all is skipped by its length.
    fn header_psm(&mut self, off: u64) -> bool {
        let Some(h) = self.input.contiguous(6) else { return false };
        let Ok(total) = hdr::length_field(h) else { return false };
        let Some(h) = self.input.contiguous(total) else { return false };
        let parsed = hdr::parse_psm(h);
        self.input.skip(total);
        self.stats.psms += 1;
        match parsed {
            Ok(psm) => self.on_psm(psm, off),
            Err(e) => self.quirk("psm_invalid", off, || e.to_string()),
        }
        true
    }

    fn on_psm(&mut self, psm: hdr::Psm, off: u64) {
        match psm.crc {
            hdr::CrcCheck::Ok => {}
            hdr::CrcCheck::Zero => self.quirk("psm_crc_zero", off, || "CRC_32 is 0".into()),
            hdr::CrcCheck::LittleEndian => {
                self.quirk("psm_crc_little_endian", off, || "CRC_32 little-endian".into())
            }
            hdr::CrcCheck::Bad => self.quirk("psm_crc_bad", off, || "CRC_32 mismatch".into()),
            hdr::CrcCheck::Missing => self.quirk("psm_crc_bad", off, || "no room for CRC".into()),
        }
        if psm.hk_descriptor {
            let n = psm.descriptor_bytes;
            self.quirk("psm_vendor_descriptor", off, || format!("'HK' descriptors, {n} bytes"));
        }
        if psm.empty_entries > 0 {
            let n = psm.empty_entries;
            self.quirk("psm_empty_entry", off, || format!("{n} empty entries"));
        }
        if psm.truncated {
            self.quirk("psm_length_clamped", off, || "a length overran the map".into());
        }
        self.psm_seen = true;
        self.psm_checked = false;
        let mut video_done = false;
        let mut audio_done = false;
        for e in &psm.entries {
            if hdr::is_video_id(e.stream_id) && !video_done {
                if self.video_id.is_some_and(|v| v != e.stream_id) {
                    continue;
                }
                video_done = true;
                self.video_id = Some(e.stream_id);
                self.psm_video_type = Some(e.stream_type);
                self.psm_video = match e.stream_type {
                    0x1b => Some(Codec::H264),
                    0x24 => Some(Codec::H265),
                    t => {
                        self.quirk("psm_unsupported_stream_type", off, || {
                            format!("video stream type {t:#04x}; the NAL units decide")
                        });
                        None
                    }
                };
            } else if hdr::is_audio_id(e.stream_id) && !audio_done {
                if self.audio_id.is_some_and(|a| a != e.stream_id) {
                    continue;
                }
                audio_done = true;
                self.audio_id = Some(e.stream_id);
                let kind = match e.stream_type {
                    0x0f => Ok(Codec::Aac),
                    0x90 if self.policy.g711_0x90_is_ulaw => Ok(Codec::G711U),
                    0x90 => Ok(Codec::G711A),
                    0x91 => Ok(Codec::G711U),
                    t => Err(t),
                };
                if let Err(t) = kind {
                    if self.psm_audio != Some(Err(t)) {
                        self.quirk("psm_unsupported_stream_type", off, || {
                            format!("audio stream type {t:#04x}: audio skipped")
                        });
                    }
                }
                self.psm_audio = Some(kind);
            }
        }
    }

    /// PES header of an audio or video stream (§2.4.3.6).
    fn header_pes(&mut self, off: u64, id: u8) -> bool {
        let Some(h) = self.input.contiguous(9) else { return false };
        let need = 9 + usize::from(h[8]);
        let Some(h) = self.input.contiguous(need) else { return false };
        let ph = match hdr::parse_pes_header(h) {
            Ok(ph) => ph,
            Err(ParseError::Incomplete { .. }) => return false,
            Err(ParseError::Invalid { expected, .. }) => {
                self.quirk("pes_header_invalid", off, || expected.to_string());
                self.enter_resync(off, "invalid PES header");
                self.stats.bytes_skipped += self.input.skip(1) as u64;
                return true;
            }
        };
        self.input.skip(ph.header_len);
        let dest = if hdr::is_video_id(id) {
            self.stats.video_pes += 1;
            if self.video_id.is_none_or(|v| v == id) {
                self.video_id = Some(id);
                Some(Dest::Video)
            } else {
                None
            }
        } else {
            self.stats.audio_pes += 1;
            if self.audio_id.is_some_and(|a| a != id) || matches!(self.psm_audio, Some(Err(_))) {
                None
            } else {
                self.audio_id = Some(id);
                Some(Dest::Audio)
            }
        };
        let payload = ph.payload_len();
        if payload.is_none() {
            self.quirk("pes_length_zero", off, || format!("stream {id:#04x} PES_packet_length 0"));
        }
        match dest {
            None => {
                self.stats.skipped_pes += 1;
                self.state = match payload {
                    Some(n) => State::Skip { remaining: n },
                    None => State::Unbounded,
                };
            }
            Some(dest) => {
                let after_pack = dest == Dest::Video && std::mem::take(&mut self.pack_since_video);
                self.pes = Some(PesAcc {
                    dest,
                    pts: ph.pts,
                    dts: ph.dts,
                    pieces: Vec::new(),
                    len: 0,
                    after_pack,
                    offset: off,
                    overflow: false,
                });
                match payload {
                    Some(0) => self.pes_end(),
                    Some(n) => self.state = State::Payload { remaining: n },
                    None => self.state = State::Unbounded,
                }
            }
        }
        true
    }

    /// Scan the front chunk for the next header: in `Resync` only a pack header (strictly
    /// checked) ends the scan and skipped bytes are counted; in `Unbounded` any plausible PS
    /// header ends the PES payload (video data never holds `00 00 01` followed by a byte ≥ 0x80:
    /// that would be a NAL header with forbidden_zero_bit set).
    fn step_scan(&mut self, eof: bool, unbounded: bool) -> bool {
        let front = self.input.front();
        if front.is_empty() {
            return false;
        }
        let len = front.len();
        let mut i = 0;
        let (stop, found) = loop {
            let p = match es::find_start_code(&front[i..]) {
                Some(o) => i + o,
                None => {
                    // A start code may straddle into the next chunk.
                    let tail =
                        (i.max(len.saturating_sub(2))..len).find(|&p| front[p..].iter().all(|&b| b == 0));
                    match tail {
                        Some(p) => p,
                        None => break (len, false),
                    }
                }
            };
            let mut buf = [0u8; LOOKAHEAD];
            let n = self.input.peek_into(p, &mut buf);
            // A candidate at the chunk's end may turn out not to be a start code at all.
            let sc = n.min(3);
            let verdict = if buf[..sc] != hdr::START_CODE[..sc] {
                Ok(false)
            } else {
                hdr::header_plausible(&buf[..n], unbounded)
            };
            match verdict {
                Ok(true) => break (p, true),
                Ok(false) => i = p + 1,
                Err(_) if eof => i = p + 1,
                Err(_) => break (p, false),
            }
            if i >= len {
                break (len, false);
            }
        };
        if stop > 0 {
            if unbounded {
                let piece = self.input.take_front(stop);
                self.pes_add(piece);
            } else {
                self.stats.bytes_skipped += self.input.skip(stop) as u64;
            }
        }
        if found {
            if unbounded {
                self.pes_end();
            }
            self.state = State::Header;
            return true;
        }
        stop > 0
    }

    /// A video PES that will not be delivered whole: if it would have started a new frame (a new
    /// PTS), the frame before it is complete and goes out; otherwise that frame misses a part
    /// and is dropped with it.
    fn drop_partial_video(&mut self, pes: &PesAcc) {
        let starts_new = pes.pts.is_some() && self.frame.as_ref().is_some_and(|f| f.pts != pes.pts);
        if starts_new {
            self.finish_video_frame();
        } else {
            self.frame = None;
        }
    }

    fn pes_add(&mut self, piece: Bytes) {
        let Some(p) = self.pes.as_mut() else { return };
        if p.overflow {
            return;
        }
        if p.len + piece.len() > MAX_FRAME_BYTES {
            p.overflow = true;
            p.pieces.clear();
            p.len = 0;
            let off = p.offset;
            self.quirk("frame_too_large", off, || format!("PES over {MAX_FRAME_BYTES} bytes"));
            return;
        }
        p.len += piece.len();
        p.pieces.push(piece);
    }

    fn pes_end(&mut self) {
        let Some(pes) = self.pes.take() else { return };
        if pes.overflow {
            if pes.dest == Dest::Video {
                self.drop_partial_video(&pes);
            }
            return;
        }
        match pes.dest {
            Dest::Video => self.video_pes_done(pes),
            Dest::Audio => self.audio_pes_done(pes),
        }
    }

    /// Frame boundaries (documented behaviour): a PES starts a new access unit when it begins
    /// with an AUD, or carries a PTS different from the frame's, or has no PTS but follows a new
    /// pack header and begins with a start code. A PES with no PTS otherwise continues the frame
    /// (PTS only on the first PES), and so does one repeating the frame's PTS (one NAL per PES).
    fn video_pes_done(&mut self, pes: PesAcc) {
        let (h, n) = head::<6>(&pes.pieces);
        let h = &h[..n];
        if let Some(cut_pts) = self.mark_cut.take() {
            // The frame before was ended by a transport mark: this PES must begin a new one.
            let continues = self.frame.is_none()
                && !es::starts_with_aud(h)
                && match pes.pts {
                    Some(p) => cut_pts == Some(p),
                    None => !(pes.after_pack && es::starts_with_start_code(h)),
                };
            if continues {
                self.distrust_marks(pes.offset, "a frame went on after the mark");
            }
        }
        let boundary = match &self.frame {
            None => true,
            Some(f) => {
                if es::starts_with_aud(h) {
                    true
                } else if let Some(pts) = pes.pts {
                    if Some(pts) == f.pts {
                        self.quirk("pts_repeated_in_frame", pes.offset, || {
                            "PES repeats the frame's PTS (one NAL per PES)".into()
                        });
                        false
                    } else {
                        true
                    }
                } else if pes.after_pack && es::starts_with_start_code(h) {
                    true
                } else {
                    self.quirk("pts_only_on_first_pes", pes.offset, || {
                        "PES without PTS continues the frame".into()
                    });
                    false
                }
            }
        };
        if boundary {
            self.finish_video_frame();
            self.frame = Some(FrameAcc {
                pts: pes.pts,
                dts: pes.dts,
                pieces: pes.pieces,
                len: pes.len,
                offset: pes.offset,
                overflow: false,
            });
            return;
        }
        let Some(f) = self.frame.as_mut() else { return };
        if f.overflow {
            return;
        }
        if f.len + pes.len > MAX_FRAME_BYTES {
            f.overflow = true;
            f.pieces.clear();
            f.len = 0;
            let off = f.offset;
            self.quirk("frame_too_large", off, || format!("frame over {MAX_FRAME_BYTES} bytes"));
            return;
        }
        f.len += pes.len;
        f.pieces.extend(pes.pieces);
    }

    fn finish_video_frame(&mut self) {
        self.finish_video(false);
    }

    /// Complete the frame being assembled. With `need_slice`, a frame without a slice NAL unit
    /// yet (parameter sets only) stays open and `false` is returned.
    fn finish_video(&mut self, need_slice: bool) -> bool {
        let Some(f) = self.frame.take() else { return false };
        if f.overflow || f.len == 0 {
            if need_slice {
                self.frame = Some(f);
            }
            return false;
        }
        let (len, offset, pts, dts) = (f.len, f.offset, f.pts, f.dts);
        let data = concat(f.pieces, f.len);
        let hint = self.video_codec.or(self.psm_video);
        let mut info: AuInfo = es::scan_au(&data, hint);
        if info.guessed.is_some() && info.guessed != hint {
            info = es::scan_au(&data, info.guessed);
        }
        if need_slice && !info.slice {
            self.frame = Some(FrameAcc { pts, dts, pieces: vec![data], len, offset, overflow: false });
            return false;
        }
        let mut discontinuity = false;
        if let Some(g) = info.guessed {
            if self.psm_seen && !self.psm_checked {
                self.psm_checked = true;
                if self.psm_video != Some(g) {
                    let t = self.psm_video_type;
                    self.quirk("psm_wrong_video_codec", offset, || {
                        format!("PSM stream type {t:02x?}, NAL units say {g}")
                    });
                }
            }
            if !self.psm_seen && self.video_codec.is_none() {
                self.quirk("psm_missing_codec_from_nal", offset, || format!("{g} from NAL units"));
            }
        }
        let Some(codec) = info.guessed.or(self.video_codec).or(self.psm_video) else {
            self.quirk("video_codec_unknown", offset, || "frame dropped: codec unknown".into());
            return true;
        };
        if let Some(prev) = self.video_codec {
            if prev != codec {
                discontinuity = true;
                self.quirk("codec_change", offset, || format!("{prev} -> {codec}"));
            }
        }
        self.video_codec = Some(codec);
        if let Some((s, e)) = info.sps {
            let sps = data.slice(s..e);
            if self.params.sps.as_ref().is_some_and(|old| *old != sps) {
                if !discontinuity {
                    self.quirk("sps_change", offset, || "new sequence parameter set".into());
                }
                discontinuity = true;
            }
            self.params.sps = Some(sps);
            self.params.vps = info.vps.map(|(s, e)| data.slice(s..e));
            self.params.pps = info.pps.map(|(s, e)| data.slice(s..e));
        }
        let (pts, dts) = match pts {
            Some(p) => {
                let prev = self.vclock.last;
                let (pts, dts, ev) = self.timeline.map(
                    &mut self.vclock,
                    &mut self.aclock,
                    p,
                    dts.unwrap_or(p),
                    self.video_step,
                );
                self.clock_event(ev, offset);
                if let Some(prev) = prev {
                    let d = dts - prev;
                    if (1..=90_000).contains(&d) && !matches!(ev, ClockEvent::Jump { .. }) {
                        self.video_step = d;
                    }
                }
                (pts, dts)
            }
            None => {
                let Some(last) = self.vclock.last.or(self.timeline.last_any()) else {
                    self.quirk("no_timestamp", offset, || "video frame dropped".into());
                    return true;
                };
                let t = last + self.video_step;
                self.quirk("pts_missing_extrapolated", offset, || format!("{t}"));
                self.timeline.note(&mut self.vclock, t);
                (t, t)
            }
        };
        discontinuity |= std::mem::take(&mut self.vclock.discontinuity);
        self.stats.frames_video += 1;
        self.out.push_back(Frame { codec, pts, dts, keyframe: info.keyframe, discontinuity, data });
        true
    }

    fn clock_event(&mut self, ev: ClockEvent, off: u64) {
        match ev {
            ClockEvent::None => {}
            ClockEvent::Wrapped => self.quirk("pts_wrap", off, || "33-bit timestamp wrapped".into()),
            ClockEvent::Jump { from, to } => {
                self.quirk("timestamp_jump", off, || format!("{from} rebased to {to}"))
            }
            ClockEvent::Clamped => {
                self.quirk("timestamp_backwards_clamped", off, || "small step back".into())
            }
        }
    }

    fn audio_pes_done(&mut self, pes: PesAcc) {
        if pes.len == 0 {
            // An empty PES carries no frame (found by fuzzing: it made an empty G.711 frame).
            return;
        }
        let (h, n) = head::<2>(&pes.pieces);
        let codec = match self.psm_audio {
            Some(Ok(c)) => c,
            _ => match self.audio_codec {
                Some(c) => c,
                None if n == 0 => return,
                None if es::is_adts_sync(&h[..n]) => {
                    self.quirk("psm_missing_codec_from_adts", pes.offset, || "AAC".into());
                    Codec::Aac
                }
                None => {
                    let c = if self.policy.g711_0x90_is_ulaw { Codec::G711U } else { Codec::G711A };
                    self.quirk("audio_codec_guessed_g711", pes.offset, || format!("{c}"));
                    c
                }
            },
        };
        if let Some(prev) = self.audio_codec {
            if prev != codec {
                self.aclock.discontinuity = true;
                self.aac_carry.clear();
                self.quirk("codec_change", pes.offset, || format!("{prev} -> {codec}"));
            }
        }
        self.audio_codec = Some(codec);
        let data = concat(pes.pieces, pes.len);
        match codec {
            Codec::Aac => self.audio_aac(data, pes.pts, pes.offset),
            _ => {
                let dur = g711_ticks(data.len());
                let Some(pts) = self.audio_pts(pes.pts, dur, pes.offset) else { return };
                self.emit_audio(codec, pts, dur, data);
            }
        }
    }

    /// Output PTS of an audio PES: its own PTS mapped on the timeline, else the end of the
    /// previous audio frame.
    fn audio_pts(&mut self, raw: Option<u64>, dur: i64, off: u64) -> Option<i64> {
        match raw {
            Some(p) => {
                let (pts, _, ev) = self.timeline.map(&mut self.aclock, &mut self.vclock, p, p, dur.max(1));
                self.clock_event(ev, off);
                Some(pts)
            }
            None => {
                if self.audio_next.is_none() {
                    self.quirk("no_timestamp", off, || "audio PES without PTS dropped".into());
                }
                self.audio_next
            }
        }
    }

    fn emit_audio(&mut self, codec: Codec, pts: i64, dur: i64, data: Bytes) {
        self.timeline.note(&mut self.aclock, pts);
        self.audio_next = Some(pts + dur);
        let discontinuity = std::mem::take(&mut self.aclock.discontinuity);
        self.stats.frames_audio += 1;
        self.out.push_back(Frame { codec, pts, dts: pts, keyframe: true, discontinuity, data });
    }

    /// One frame per ADTS frame (ISO/IEC 14496-3 §1.A.2): a PES holding several is split, the
    /// later ones timed 1024 samples apart; an ADTS frame cut by the PES end is completed from
    /// the next PES; bytes without a sync word are skipped (`adts_sync_lost`).
    fn audio_aac(&mut self, payload: Bytes, raw_pts: Option<u64>, off: u64) {
        let mut data = payload;
        // A frame cut by the previous PES end comes first and keeps the PTS it was given.
        let mut carried = false;
        if !self.aac_carry.is_empty() {
            let mut v = std::mem::take(&mut self.aac_carry);
            v.extend_from_slice(&data);
            data = Bytes::from(v);
            carried = true;
        }
        let mut pos = 0;
        let mut next: Option<i64> = None;
        let mut lost_sync = false;
        while pos < data.len() {
            let rest = &data[pos..];
            if rest.len() < 7 {
                if es::is_adts_sync(rest) || rest == [0xFF] {
                    let pts = if carried { Some(self.aac_carry_pts) } else { next };
                    self.carry(rest, pts, off);
                } else {
                    lost_sync = true;
                }
                break;
            }
            let Some(h) = es::parse_adts(rest) else {
                lost_sync = true;
                pos += 1 + memchr::memchr(0xFF, &rest[1..]).unwrap_or(rest.len() - 1);
                continue;
            };
            let dur = i64::from(h.samples) * 90_000 / i64::from(h.sample_rate);
            let pts = if carried {
                self.aac_carry_pts
            } else if let Some(t) = next {
                t
            } else {
                match self.audio_pts(raw_pts, dur, off) {
                    Some(t) => t,
                    None => return,
                }
            };
            if h.frame_len > rest.len() {
                self.carry(rest, Some(pts), off);
                break;
            }
            let frame = data.slice(pos..pos + h.frame_len);
            self.emit_audio(Codec::Aac, pts, dur, frame);
            pos += h.frame_len;
            // After a carried frame, the first frame starting in this PES takes the PES PTS.
            next = if carried { None } else { Some(pts + dur) };
            carried = false;
        }
        if lost_sync {
            self.quirk("adts_sync_lost", off, || "bytes without ADTS sync skipped".into());
        }
    }

    fn carry(&mut self, rest: &[u8], pts: Option<i64>, off: u64) {
        if rest.len() > 8192 {
            return;
        }
        let Some(pts) = pts.or(self.audio_next) else { return };
        self.aac_carry = rest.to_vec();
        self.aac_carry_pts = pts;
        self.quirk("adts_split_across_pes", off, || format!("{} bytes carried", rest.len()));
    }
}
