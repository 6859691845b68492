//! The sources' shared send schedule: an MPEG-PS file cut into RTP payloads once, paced by its clock.
//!
//! Belongs here: splitting a PS file into send units (a pack and the PES after it, or a PES on its
//! own such as GB audio without a pack header), cutting units into RTP payloads (≤ 1,400 bytes,
//! marker on a unit's last packet), the send time of each unit (from the pack's SCR, ISO/IEC
//! 13818-1 §2.5.3.2), the RTP timestamp (from the PES PTS, §2.4.3.7, 90 kHz as RFC 3550 §5.1 and
//! GB/T 28181-2016 Annex C ask for PS), rewriting SCR/PTS/DTS so that the file can be looped
//! seamlessly, and keyframe fingerprints to recognise which keyframe a viewer got.
//! Does not belong: sockets and timers (`source.rs`), a real demuxer (`crate::proto::ps`): this is
//! only enough of PS to packetise a well-formed sample, and refuses anything else with an error.

use std::time::Duration;

use bytes::Bytes;

use crate::proto::codec::nal;

/// Largest RTP payload the harness sends (keeps a 12-byte header + payload under a 1,500 MTU).
pub const MAX_PAYLOAD: usize = 1400;
/// Bytes of an IDR/IRAP NAL unit used to recognise it in a viewer's FLV tag.
pub const FINGERPRINT_LEN: usize = 32;
/// Where the fingerprint starts inside the NAL unit (past the slice header's first bytes).
const FINGERPRINT_AT: usize = 16;
const TS_MASK: u64 = (1 << 33) - 1;

/// Why a file cannot be scheduled.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ScheduleError {
    #[error("no MPEG-PS start code at byte {offset} (expected 00 00 01 xx)")]
    NoStartCode { offset: usize },
    #[error("MPEG-1 or malformed pack header at byte {offset} (ISO/IEC 13818-1 §2.5.3.3 expects '01' marker bits)")]
    BadPackHeader { offset: usize },
    #[error("truncated {what} at byte {offset}")]
    Truncated { offset: usize, what: &'static str },
    #[error("the file holds no video keyframe to start from")]
    NoKeyframe,
}

/// One RTP payload with the fields all sources share (header fields per source are added at send).
#[derive(Debug, Clone)]
pub struct Packet {
    pub payload: Bytes,
    /// RTP timestamp (90 kHz, from the unit's PTS).
    pub ts: u32,
    /// RTP marker: last packet of a unit (end of a frame).
    pub marker: bool,
}

/// A group of packets sent together at one instant.
#[derive(Debug, Clone)]
pub struct Unit {
    /// Send time from the start of the stream.
    pub at: Duration,
    /// Index of the first packet in [`Schedule::packets`].
    pub first: usize,
    pub count: usize,
    /// Video keyframe: index into [`Schedule::keyframes`].
    pub keyframe: Option<usize>,
    /// Video PTS (90 kHz, unwrapped, from the schedule's start), when the unit holds a video frame.
    pub video_pts: Option<u64>,
}

/// A keyframe of the schedule and the bytes that recognise it.
#[derive(Debug, Clone)]
pub struct Keyframe {
    pub at: Duration,
    /// Video PTS from the schedule's start in 90 kHz units.
    pub pts: u64,
    /// Index of the keyframe within one loop of the file (loops repeat the same pictures).
    pub index_in_loop: usize,
    pub fingerprint: Option<[u8; FINGERPRINT_LEN]>,
}

/// The whole send plan, built once and shared by every source.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub packets: Vec<Packet>,
    pub units: Vec<Unit>,
    pub keyframes: Vec<Keyframe>,
    /// Length of one loop of the file (video PTS span plus one frame).
    pub loop_duration: Duration,
    pub loops: usize,
    /// Payload bytes of one loop.
    pub loop_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ElemKind {
    Pack,
    Header,
    Pes { stream_id: u8, has_pts: bool },
}

#[derive(Debug, Clone)]
struct Elem {
    kind: ElemKind,
    start: usize,
    end: usize,
    /// SCR base for packs, PTS for PES (33-bit).
    clock: Option<u64>,
    /// (offset of PTS field, offset of DTS field) inside the file, for rewriting.
    pts_at: Option<usize>,
    dts_at: Option<usize>,
}

/// A raw unit of the file before packetising.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawUnit {
    pub start: usize,
    pub end: usize,
    /// SCR base of the unit's pack, or of the last pack before it.
    pub scr: Option<u64>,
    /// PTS of the unit's first PES carrying one.
    pub pts: Option<u64>,
    pub video_pts: Option<u64>,
    pub is_video: bool,
}

fn stream_has_pes_header(id: u8) -> bool {
    // ISO/IEC 13818-1 Table 2-18 / §2.4.3.7: these streams carry no optional PES header.
    !matches!(id, 0xBC | 0xBE | 0xBF | 0xF0 | 0xF1 | 0xF2 | 0xF8 | 0xFF)
}

fn is_video_id(id: u8) -> bool {
    (0xE0..=0xEF).contains(&id)
}

/// Decode a 33-bit timestamp in the 5-byte PTS/DTS layout (§2.4.3.7).
pub fn read_pes_ts(b: &[u8]) -> u64 {
    (((b[0] >> 1) & 7) as u64) << 30
        | (b[1] as u64) << 22
        | ((b[2] >> 1) as u64) << 15
        | (b[3] as u64) << 7
        | (b[4] >> 1) as u64
}

/// Encode a 33-bit timestamp into the 5-byte PTS/DTS layout, keeping the 4-bit prefix of `b[0]`.
pub fn write_pes_ts(b: &mut [u8], ts: u64) {
    let ts = ts & TS_MASK;
    b[0] = (b[0] & 0xF0) | (((ts >> 30) as u8 & 7) << 1) | 1;
    b[1] = (ts >> 22) as u8;
    b[2] = (((ts >> 15) as u8) << 1) | 1;
    b[3] = (ts >> 7) as u8;
    b[4] = ((ts as u8) << 1) | 1;
}

/// Decode the SCR base of an MPEG-2 pack header (the 6 bytes after the start code, §2.5.3.3).
pub fn read_scr(b: &[u8]) -> u64 {
    (((b[0] >> 3) & 7) as u64) << 30
        | ((b[0] & 3) as u64) << 28
        | (b[1] as u64) << 20
        | ((b[2] >> 3) as u64) << 15
        | ((b[2] & 3) as u64) << 13
        | (b[3] as u64) << 5
        | (b[4] >> 3) as u64
}

/// Encode an SCR base into a pack header's 6 SCR bytes, keeping the SCR extension (9 bits).
pub fn write_scr(b: &mut [u8], base: u64) {
    let base = base & TS_MASK;
    let ext = (((b[4] & 3) as u16) << 7) | (b[5] >> 1) as u16;
    b[0] = 0x40 | (((base >> 30) as u8 & 7) << 3) | 0x04 | ((base >> 28) as u8 & 3);
    b[1] = (base >> 20) as u8;
    b[2] = (((base >> 15) as u8 & 0x1F) << 3) | 0x04 | ((base >> 13) as u8 & 3);
    b[3] = (base >> 5) as u8;
    b[4] = ((base as u8 & 0x1F) << 3) | 0x04 | ((ext >> 7) as u8 & 3);
    b[5] = ((ext as u8) << 1) | 1;
}

fn scan_elems(data: &[u8]) -> Result<Vec<Elem>, ScheduleError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        if data.len() - i < 4 {
            return Err(ScheduleError::Truncated { offset: i, what: "start code" });
        }
        if data[i..i + 3] != [0, 0, 1] {
            return Err(ScheduleError::NoStartCode { offset: i });
        }
        let id = data[i + 3];
        match id {
            0xBA => {
                // Pack header, §2.5.3.3: 14 bytes + pack_stuffing_length.
                if data.len() - i < 14 {
                    return Err(ScheduleError::Truncated { offset: i, what: "pack header" });
                }
                if data[i + 4] >> 6 != 1 {
                    return Err(ScheduleError::BadPackHeader { offset: i });
                }
                let end = i + 14 + (data[i + 13] & 7) as usize;
                if end > data.len() {
                    return Err(ScheduleError::Truncated { offset: i, what: "pack stuffing" });
                }
                out.push(Elem {
                    kind: ElemKind::Pack,
                    start: i,
                    end,
                    clock: Some(read_scr(&data[i + 4..i + 10])),
                    pts_at: None,
                    dts_at: None,
                });
                i = end;
            }
            0xB9 => {
                // MPEG_program_end_code, §2.5.3.1.
                out.push(Elem {
                    kind: ElemKind::Header,
                    start: i,
                    end: i + 4,
                    clock: None,
                    pts_at: None,
                    dts_at: None,
                });
                i += 4;
            }
            _ if id >= 0xBB => {
                if data.len() - i < 6 {
                    return Err(ScheduleError::Truncated { offset: i, what: "PES length" });
                }
                let len = u16::from_be_bytes([data[i + 4], data[i + 5]]) as usize;
                let end = i + 6 + len;
                if len == 0 || end > data.len() {
                    return Err(ScheduleError::Truncated {
                        offset: i,
                        what: "PES packet (length 0 or past the end)",
                    });
                }
                if id == 0xBB || id == 0xBC {
                    out.push(Elem {
                        kind: ElemKind::Header,
                        start: i,
                        end,
                        clock: None,
                        pts_at: None,
                        dts_at: None,
                    });
                } else {
                    let (mut pts_at, mut dts_at, mut clock) = (None, None, None);
                    // §2.4.3.7: '10' marker, then PTS_DTS_flags in the next byte.
                    if stream_has_pes_header(id) && len >= 3 && data[i + 6] >> 6 == 2 {
                        let flags = data[i + 7] >> 6;
                        let hlen = data[i + 8] as usize;
                        if flags & 2 != 0 && hlen >= 5 && i + 14 <= end {
                            pts_at = Some(i + 9);
                            clock = Some(read_pes_ts(&data[i + 9..i + 14]));
                        }
                        if flags == 3 && hlen >= 10 && i + 19 <= end {
                            dts_at = Some(i + 14);
                        }
                    }
                    out.push(Elem {
                        kind: ElemKind::Pes { stream_id: id, has_pts: clock.is_some() },
                        start: i,
                        end,
                        clock,
                        pts_at,
                        dts_at,
                    });
                }
                i = end;
            }
            _ => return Err(ScheduleError::NoStartCode { offset: i }),
        }
    }
    Ok(out)
}

/// Cut the file into send units: a pack header starts a unit; a PES starts one when the unit
/// already holds a PES of another stream, or of the same stream with a new PTS (a new frame).
pub fn split_units(data: &[u8]) -> Result<Vec<RawUnit>, ScheduleError> {
    let elems = scan_elems(data)?;
    let mut units: Vec<RawUnit> = Vec::new();
    let mut cur: Option<(RawUnit, Option<u8>)> = None;
    let mut last_scr = None;
    for e in &elems {
        let new_unit = match (e.kind, &cur) {
            (_, None) => true,
            (ElemKind::Pack, _) => true,
            (ElemKind::Header, _) => false,
            (ElemKind::Pes { stream_id, has_pts }, Some((_, last_id))) => match last_id {
                None => false,
                Some(id) => *id != stream_id || has_pts,
            },
        };
        if new_unit {
            if let Some((u, _)) = cur.take() {
                units.push(u);
            }
            cur = Some((
                RawUnit {
                    start: e.start,
                    end: e.end,
                    scr: last_scr,
                    pts: None,
                    video_pts: None,
                    is_video: false,
                },
                None,
            ));
        }
        let (u, last_id) = cur.as_mut().expect("set above when None");
        u.end = e.end;
        match e.kind {
            ElemKind::Pack => {
                last_scr = e.clock;
                u.scr = e.clock;
            }
            ElemKind::Header => {}
            ElemKind::Pes { stream_id, .. } => {
                *last_id = Some(stream_id);
                if u.pts.is_none() {
                    u.pts = e.clock;
                }
                if is_video_id(stream_id) {
                    u.is_video = true;
                    if u.video_pts.is_none() {
                        u.video_pts = e.clock;
                    }
                }
            }
        }
    }
    if let Some((u, _)) = cur {
        units.push(u);
    }
    Ok(units)
}

/// Unwrap 33-bit clock values into a monotonic-ish u64 timeline relative to `base`.
#[derive(Debug)]
struct Unwrap {
    base: u64,
    last: u64,
    high: u64,
}

impl Unwrap {
    fn new(base: u64) -> Self {
        Unwrap { base, last: base, high: 0 }
    }
    /// Value relative to the base; wraps of the 33-bit clock add 2^33. Values slightly before the
    /// base (audio ahead of video) saturate at 0.
    fn rel(&mut self, v: u64) -> u64 {
        if v + (1 << 32) < self.last {
            self.high += 1 << 33;
        }
        self.last = v;
        (self.high + v).saturating_sub(self.base)
    }
}

/// The video payload of a unit (PES payloads of its video PES, concatenated).
fn video_payload(data: &[u8], elems: &[Elem], unit: &RawUnit) -> Vec<u8> {
    let mut out = Vec::new();
    for e in elems.iter().filter(|e| e.start >= unit.start && e.end <= unit.end) {
        if let ElemKind::Pes { stream_id, .. } = e.kind {
            if is_video_id(stream_id) && e.end - e.start > 9 {
                let hstart = e.start + 9 + data[e.start + 8] as usize;
                if hstart <= e.end {
                    out.extend_from_slice(&data[hstart..e.end]);
                }
            }
        }
    }
    out
}

/// The IDR/IRAP NAL unit of an access unit, if any (H.264 §7.4.1 type 5; H.265 §7.4.2.2 16..=21).
pub fn key_nal(au: &[u8], h265: bool) -> Option<&[u8]> {
    nal::split_annexb(au).find(|n| {
        if h265 {
            nal::h265_type(n).is_some_and(nal::h265_is_irap)
        } else {
            nal::h264_type(n) == Some(nal::H264_IDR)
        }
    })
}

/// The bytes that recognise a keyframe NAL unit.
pub fn fingerprint(key_nal: &[u8]) -> Option<[u8; FINGERPRINT_LEN]> {
    key_nal.get(FINGERPRINT_AT..FINGERPRINT_AT + FINGERPRINT_LEN).map(|s| {
        let mut f = [0u8; FINGERPRINT_LEN];
        f.copy_from_slice(s);
        f
    })
}

/// Find a fingerprint in a buffer (naive search; buffers are a few KiB).
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

impl Schedule {
    /// Build the schedule from a PS file: start at its first video keyframe, loop it `loops` times
    /// (rewriting SCR, PTS and DTS so the clock runs on), and cut every unit into RTP payloads.
    pub fn build(data: &[u8], loops: usize) -> Result<Schedule, ScheduleError> {
        let elems = scan_elems(data)?;
        let units = split_units(data)?;
        let h265 = {
            let first_video = units.iter().find(|u| u.is_video);
            first_video
                .map(|u| video_payload(data, &elems, u))
                .and_then(|p| nal::guess_video_codec(&p))
                .is_some_and(|c| c == crate::proto::codec::Codec::H265)
        };
        // Key units and their NAL fingerprints.
        let mut key_nals: Vec<Option<Option<[u8; FINGERPRINT_LEN]>>> = Vec::with_capacity(units.len());
        for u in &units {
            if u.is_video {
                let p = video_payload(data, &elems, u);
                key_nals.push(key_nal(&p, h265).map(fingerprint));
            } else {
                key_nals.push(None);
            }
        }
        let first_key = key_nals.iter().position(|k| k.is_some()).ok_or(ScheduleError::NoKeyframe)?;
        let units = &units[first_key..];
        let key_nals = &key_nals[first_key..];
        let base_video_pts = units[0].video_pts.unwrap_or(0);
        let base_scr = units[0].scr.unwrap_or(base_video_pts);

        // Video PTS span → loop duration (plus the median frame interval).
        let mut vu = Unwrap::new(base_video_pts);
        let vpts: Vec<u64> = units.iter().filter_map(|u| u.video_pts).map(|p| vu.rel(p)).collect();
        let mut deltas: Vec<u64> =
            vpts.windows(2).map(|w| w[1].saturating_sub(w[0])).filter(|d| *d > 0).collect();
        deltas.sort_unstable();
        let frame = deltas.get(deltas.len() / 2).copied().unwrap_or(3600);
        let loop_ticks = vpts.last().copied().unwrap_or(0) + frame;
        let loop_duration = Duration::from_micros(loop_ticks * 100 / 9);

        let mut s = Schedule {
            packets: Vec::new(),
            units: Vec::new(),
            keyframes: Vec::new(),
            loop_duration,
            loops: loops.max(1),
            loop_bytes: units.iter().map(|u| (u.end - u.start) as u64).sum(),
        };
        for l in 0..s.loops {
            let shift = loop_ticks * l as u64;
            let mut su = Unwrap::new(base_scr);
            let mut pu = Unwrap::new(base_video_pts);
            let mut last_at = Duration::ZERO;
            let mut key_in_loop = 0;
            for (u, key) in units.iter().zip(key_nals) {
                let mut buf = data[u.start..u.end].to_vec();
                if shift != 0 {
                    for e in elems.iter().filter(|e| e.start >= u.start && e.end <= u.end) {
                        let o = e.start - u.start;
                        match e.kind {
                            ElemKind::Pack => {
                                let scr = read_scr(&buf[o + 4..o + 10]);
                                write_scr(&mut buf[o + 4..o + 10], scr + shift);
                            }
                            ElemKind::Pes { .. } => {
                                for at in [e.pts_at, e.dts_at].into_iter().flatten() {
                                    let p = at - u.start;
                                    let ts = read_pes_ts(&buf[p..p + 5]);
                                    write_pes_ts(&mut buf[p..p + 5], ts + shift);
                                }
                            }
                            ElemKind::Header => {}
                        }
                    }
                }
                // Send time: the pack's SCR (system clock, §2.5.2), never going backwards.
                let clock = u.scr.map(|c| su.rel(c)).unwrap_or(0);
                let at = (Duration::from_micros(clock * 100 / 9) + loop_duration * l as u32).max(last_at);
                last_at = at;
                let pts = u.pts.unwrap_or(base_video_pts) + shift;
                let video_pts = u.video_pts.map(|p| pu.rel(p) + shift);
                let keyframe = key.map(|fp| {
                    s.keyframes.push(Keyframe {
                        at,
                        pts: video_pts.unwrap_or(0),
                        index_in_loop: key_in_loop,
                        fingerprint: fp,
                    });
                    key_in_loop += 1;
                    s.keyframes.len() - 1
                });
                let buf = Bytes::from(buf);
                let first = s.packets.len();
                let mut off = 0;
                while off < buf.len() {
                    let end = (off + MAX_PAYLOAD).min(buf.len());
                    s.packets.push(Packet {
                        payload: buf.slice(off..end),
                        ts: (pts & 0xFFFF_FFFF) as u32,
                        marker: end == buf.len(),
                    });
                    off = end;
                }
                s.units.push(Unit { at, first, count: s.packets.len() - first, keyframe, video_pts });
            }
        }
        Ok(s)
    }

    /// Total send time of the schedule.
    pub fn duration(&self) -> Duration {
        self.loop_duration * self.loops as u32
    }

    /// Loops needed to cover `d`.
    pub fn loops_for(loop_duration: Duration, d: Duration) -> usize {
        if loop_duration.is_zero() {
            return 1;
        }
        (d.as_secs_f64() / loop_duration.as_secs_f64()).ceil().max(1.0) as usize
    }

    /// Which keyframe of the schedule a viewer's keyframe tag body is, given when it arrived
    /// relative to the source's start: the latest matching keyframe sent at or before then.
    pub fn identify_keyframe(&self, body: &[u8], since_source_start: Duration) -> Option<usize> {
        let mut best = None;
        for (i, k) in self.keyframes.iter().enumerate() {
            if let Some(fp) = &k.fingerprint {
                if k.at <= since_source_start && contains(body, fp) {
                    best = Some(i);
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/h264_aac.ps")).expect("testdata sample")
    }

    #[test]
    fn pes_timestamp_roundtrips_all_33_bits() {
        for ts in [0u64, 1, 90000, (1 << 32) + 7, (1 << 33) - 1] {
            let mut b = [0x21, 0, 0, 0, 0];
            write_pes_ts(&mut b, ts);
            assert_eq!(read_pes_ts(&b), ts);
            assert_eq!(b[0] & 0xF0, 0x20, "prefix kept");
            assert_eq!(b[4] & 1, 1, "marker bit set");
        }
    }

    #[test]
    fn scr_roundtrips_and_keeps_extension() {
        for base in [0u64, 86400, (1 << 33) - 1, 123_456_789] {
            let mut b = [0x44, 0, 0x04, 0, 0x04 | 2, 0x55];
            write_scr(&mut b, base);
            assert_eq!(read_scr(&b), base);
            assert_eq!(b[4] & 3, 2);
            assert_eq!(b[5], 0x55);
        }
    }

    #[test]
    fn units_of_the_sample_follow_the_gb_layout() {
        let data = sample();
        let units = split_units(&data).unwrap();
        // 250 packs (one per video frame) + 158 audio PES without pack header.
        assert_eq!(units.iter().filter(|u| u.is_video).count(), 250);
        assert_eq!(units.len(), 250 + 158);
        assert_eq!(units.iter().map(|u| u.end - u.start).sum::<usize>(), data.len());
        assert_eq!(units[0].start, 0);
        assert!(units.windows(2).all(|w| w[0].end == w[1].start));
    }

    #[test]
    fn pacing_follows_scr_at_real_time() {
        let data = sample();
        let s = Schedule::build(&data, 1).unwrap();
        assert_eq!(s.units[0].at, Duration::ZERO);
        assert!(s.units.windows(2).all(|w| w[0].at <= w[1].at), "send times never go back");
        // 25 fps: video frame n goes at n × 40 ms (SCR steps 3600 ticks).
        let video: Vec<&Unit> = s.units.iter().filter(|u| u.video_pts.is_some()).collect();
        assert_eq!(video.len(), 250);
        assert_eq!(video[25].at, Duration::from_millis(1000));
        assert_eq!(s.loop_duration, Duration::from_secs(10));
        assert_eq!(s.keyframes.len(), 5);
        assert!(s.keyframes.iter().all(|k| k.fingerprint.is_some()));
        assert_eq!(s.keyframes[1].at, Duration::from_secs(2));
    }

    #[test]
    fn packets_carry_the_whole_file_with_markers_at_unit_ends() {
        let data = sample();
        let s = Schedule::build(&data, 1).unwrap();
        assert!(s.packets.iter().all(|p| p.payload.len() <= MAX_PAYLOAD && !p.payload.is_empty()));
        let joined: Vec<u8> = s.packets.iter().flat_map(|p| p.payload.iter().copied()).collect();
        assert_eq!(joined, data);
        for u in &s.units {
            let pk = &s.packets[u.first..u.first + u.count];
            assert!(pk[..u.count - 1].iter().all(|p| !p.marker));
            assert!(pk[u.count - 1].marker);
            assert!(pk.iter().all(|p| p.ts == pk[0].ts), "one timestamp per unit");
        }
        // The first video unit's RTP timestamp is its PTS (90000 in the sample).
        assert_eq!(s.packets[0].ts, 90000);
    }

    #[test]
    fn loops_continue_the_clock() {
        let data = sample();
        let s = Schedule::build(&data, 3).unwrap();
        assert_eq!(s.units.len(), 3 * 408);
        assert_eq!(s.keyframes.len(), 15);
        assert_eq!(s.keyframes[5].index_in_loop, 0);
        assert_eq!(s.keyframes[5].at, Duration::from_secs(10));
        assert_eq!(s.keyframes[5].pts, 900_000);
        assert_eq!(s.keyframes[5].fingerprint, s.keyframes[0].fingerprint);
        // The second loop's first packet: SCR and PTS moved by 10 s (900000 ticks).
        let second = &s.units[408];
        let p = &s.packets[second.first].payload;
        assert_eq!(read_scr(&p[4..10]), 86400 + 900_000);
        assert_eq!(s.packets[second.first].ts, 90000 + 900_000);
        let v = s.units.iter().filter_map(|u| u.video_pts).collect::<Vec<_>>();
        assert!(v.windows(2).all(|w| w[1] > w[0]), "video PTS strictly increases over loops");
    }

    #[test]
    fn keyframes_are_identified_by_fingerprint_and_time() {
        let data = sample();
        let s = Schedule::build(&data, 2).unwrap();
        let fp1 = s.keyframes[1].fingerprint.unwrap();
        let mut body = vec![0u8; 100];
        body.extend_from_slice(&fp1);
        assert_eq!(s.identify_keyframe(&body, Duration::from_secs(3)), Some(1));
        assert_eq!(s.identify_keyframe(&body, Duration::from_secs(13)), Some(6));
        assert_eq!(s.identify_keyframe(&body, Duration::from_secs(1)), None);
        assert_eq!(s.identify_keyframe(&[0u8; 64], Duration::from_secs(30)), None);
    }

    #[test]
    fn garbage_is_an_error_with_its_offset() {
        assert_eq!(
            Schedule::build(b"\x00\x00\x02\xba", 1).unwrap_err(),
            ScheduleError::NoStartCode { offset: 0 }
        );
        let data = sample();
        assert!(matches!(split_units(&data[..20]), Err(ScheduleError::Truncated { offset: 14, .. })));
    }

    #[test]
    fn unwrap_handles_33_bit_wrap() {
        let mut u = Unwrap::new((1 << 33) - 3600);
        assert_eq!(u.rel((1 << 33) - 3600), 0);
        assert_eq!(u.rel(0), 3600);
        assert_eq!(u.rel(3600), 7200);
    }
}
