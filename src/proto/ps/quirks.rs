//! A small MPEG-PS reader/writer that rewrites a clean stream into the variants real devices send
//! (DESIGN.md §4, testdata/README.md): Hikvision one NAL per PES, 'HK' PSM descriptors,
//! little-endian CRC and 0xBD private PES; Dahua zero CRC and empty PSM entries; PES length 0;
//! non-0xFF pack stuffing; garbage between packs; timestamp wraps and jumps.
//!
//! What belongs here: building test and simulation inputs (the demuxer's tests, the fuzz seed
//! corpus, the simulated device may use it). What does not: anything the demuxer itself needs.
//! The reader is strict (it expects a well-formed stream such as `testdata/*.ps`).

use bytes::Bytes;

use super::header::{self as hdr, ParseError};

/// How to write a PSM's CRC_32 (ISO/IEC 13818-1 §2.5.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrcStyle {
    Correct,
    /// Dahua.
    Zero,
    /// Hikvision.
    LittleEndian,
    Value(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsmEntrySpec {
    pub stream_type: u8,
    pub stream_id: u8,
    pub descriptors: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PsmSpec {
    /// Program-level descriptors (raw tag/length/body bytes).
    pub info: Vec<u8>,
    pub entries: Vec<PsmEntrySpec>,
    pub crc: CrcStyle,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PesSpec {
    pub stream_id: u8,
    pub pts: Option<u64>,
    pub dts: Option<u64>,
    pub payload: Bytes,
    /// Write PES_packet_length 0.
    pub unbounded: bool,
}

/// One structure of a program stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unit {
    Pack {
        scr: u64,
        mux_rate: u32,
        stuffing: Vec<u8>,
    },
    /// A system header, kept verbatim.
    SystemHeader(Bytes),
    Psm(PsmSpec),
    Pes(PesSpec),
    /// Written verbatim (garbage, a private PES, ...).
    Raw(Bytes),
}

impl Unit {
    pub fn is_video(&self) -> bool {
        matches!(self, Unit::Pes(p) if hdr::is_video_id(p.stream_id))
    }
    pub fn is_audio(&self) -> bool {
        matches!(self, Unit::Pes(p) if hdr::is_audio_id(p.stream_id))
    }
}

/// Read a well-formed program stream into units.
pub fn parse(ps: &[u8]) -> Result<Vec<Unit>, ParseError> {
    let mut units = Vec::new();
    let all = Bytes::copy_from_slice(ps);
    let mut i = 0;
    while i < ps.len() {
        let b = &ps[i..];
        if b.len() < 4 || b[..3] != hdr::START_CODE {
            return Err(ParseError::Invalid { offset: i, expected: "start code" });
        }
        let at = |e: ParseError| match e {
            ParseError::Invalid { offset, expected } => ParseError::Invalid { offset: offset + i, expected },
            other => other,
        };
        match b[3] {
            hdr::PACK_START => {
                let p = hdr::parse_pack_header(b).map_err(at)?;
                let total = p.total_len();
                if b.len() < total {
                    return Err(ParseError::Incomplete { needed: i + total });
                }
                units.push(Unit::Pack {
                    scr: p.scr_base,
                    mux_rate: p.mux_rate,
                    stuffing: b[14..total].to_vec(),
                });
                i += total;
            }
            hdr::PROGRAM_END => {
                units.push(Unit::Raw(all.slice(i..i + 4)));
                i += 4;
            }
            id => {
                let total = hdr::length_field(b).map_err(at)?;
                if b.len() < total {
                    return Err(ParseError::Incomplete { needed: i + total });
                }
                let whole = all.slice(i..i + total);
                match id {
                    hdr::SYSTEM_HEADER => units.push(Unit::SystemHeader(whole)),
                    hdr::PROGRAM_STREAM_MAP => units.push(Unit::Psm(read_psm(&whole).map_err(at)?)),
                    0xC0..=0xEF => {
                        let h = hdr::parse_pes_header(b).map_err(at)?;
                        if h.packet_len == 0 {
                            return Err(ParseError::Invalid { offset: i + 4, expected: "bounded PES" });
                        }
                        units.push(Unit::Pes(PesSpec {
                            stream_id: id,
                            pts: h.pts,
                            dts: h.dts,
                            payload: all.slice(i + h.header_len..i + total),
                            unbounded: false,
                        }));
                    }
                    _ => units.push(Unit::Raw(whole)),
                }
                i += total;
            }
        }
    }
    Ok(units)
}

fn read_psm(b: &[u8]) -> Result<PsmSpec, ParseError> {
    let bad = |offset| ParseError::Invalid { offset, expected: "well-formed PSM" };
    let info_len = usize::from(u16::from_be_bytes([b[8], b[9]]));
    let info = b.get(10..10 + info_len).ok_or(bad(8))?.to_vec();
    let p = 10 + info_len;
    let es_len = usize::from(u16::from_be_bytes([*b.get(p).ok_or(bad(p))?, *b.get(p + 1).ok_or(bad(p))?]));
    let mut entries = Vec::new();
    let mut i = p + 2;
    let end = p + 2 + es_len;
    while i + 4 <= end {
        let dlen = usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
        entries.push(PsmEntrySpec {
            stream_type: b[i],
            stream_id: b[i + 1],
            descriptors: b.get(i + 4..i + 4 + dlen).ok_or(bad(i))?.to_vec(),
        });
        i += 4 + dlen;
    }
    Ok(PsmSpec { info, entries, crc: CrcStyle::Correct })
}

fn put_ts(out: &mut Vec<u8>, prefix: u8, ts: u64) {
    let ts = ts & ((1 << 33) - 1);
    out.push((prefix << 4) | ((ts >> 29) as u8 & 0x0e) | 1);
    out.push((ts >> 22) as u8);
    out.push(((ts >> 14) as u8 & 0xfe) | 1);
    out.push((ts >> 7) as u8);
    out.push(((ts << 1) as u8 & 0xfe) | 1);
}

fn write_pack(out: &mut Vec<u8>, scr: u64, mux_rate: u32, stuffing: &[u8]) {
    let s = scr & ((1 << 33) - 1);
    out.extend_from_slice(&[0, 0, 1, hdr::PACK_START]);
    out.push(0x40 | ((s >> 27) as u8 & 0x38) | 0x04 | ((s >> 28) as u8 & 0x03));
    out.push((s >> 20) as u8);
    out.push(((s >> 12) as u8 & 0xf8) | 0x04 | ((s >> 13) as u8 & 0x03));
    out.push((s >> 5) as u8);
    out.push(((s << 3) as u8 & 0xf8) | 0x04);
    out.push(0x01);
    out.push((mux_rate >> 14) as u8);
    out.push((mux_rate >> 6) as u8);
    out.push(((mux_rate << 2) as u8) | 0x03);
    out.push(0xf8 | (stuffing.len().min(7) as u8));
    out.extend_from_slice(&stuffing[..stuffing.len().min(7)]);
}

fn write_psm(out: &mut Vec<u8>, psm: &PsmSpec) {
    let start = out.len();
    let es: usize = psm.entries.iter().map(|e| 4 + e.descriptors.len()).sum();
    let len = 2 + 2 + psm.info.len() + 2 + es + 4;
    out.extend_from_slice(&[0, 0, 1, hdr::PROGRAM_STREAM_MAP]);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&[0xe0, 0xff]);
    out.extend_from_slice(&(psm.info.len() as u16).to_be_bytes());
    out.extend_from_slice(&psm.info);
    out.extend_from_slice(&(es as u16).to_be_bytes());
    for e in &psm.entries {
        out.extend_from_slice(&[e.stream_type, e.stream_id]);
        out.extend_from_slice(&(e.descriptors.len() as u16).to_be_bytes());
        out.extend_from_slice(&e.descriptors);
    }
    let crc = hdr::crc32_mpeg2(&out[start..]);
    out.extend_from_slice(&match psm.crc {
        CrcStyle::Correct => crc.to_be_bytes(),
        CrcStyle::Zero => [0; 4],
        CrcStyle::LittleEndian => crc.to_le_bytes(),
        CrcStyle::Value(v) => v.to_be_bytes(),
    });
}

/// Write one PES; a bounded payload too long for one PES continues in PES without PTS.
fn write_pes(out: &mut Vec<u8>, p: &PesSpec) {
    let mut payload = &p.payload[..];
    let mut first = true;
    loop {
        let (flags, hdl) = match (first, p.pts, p.dts) {
            (true, Some(_), Some(_)) => (0xc0u8, 10usize),
            (true, Some(_), None) => (0x80, 5),
            _ => (0x00, 0),
        };
        let room = 65535 - 3 - hdl;
        let n = if p.unbounded { payload.len() } else { payload.len().min(room) };
        out.extend_from_slice(&[0, 0, 1, p.stream_id]);
        let len = if p.unbounded { 0 } else { 3 + hdl + n };
        out.extend_from_slice(&(len as u16).to_be_bytes());
        out.extend_from_slice(&[0x84, flags, hdl as u8]);
        if let (true, Some(pts)) = (first, p.pts) {
            put_ts(out, if p.dts.is_some() { 3 } else { 2 }, pts);
            if let Some(dts) = p.dts {
                put_ts(out, 1, dts);
            }
        }
        out.extend_from_slice(&payload[..n]);
        payload = &payload[n..];
        first = false;
        if payload.is_empty() {
            break;
        }
    }
}

/// Write units back into a program stream.
pub fn write(units: &[Unit]) -> Vec<u8> {
    let mut out = Vec::new();
    for u in units {
        match u {
            Unit::Pack { scr, mux_rate, stuffing } => write_pack(&mut out, *scr, *mux_rate, stuffing),
            Unit::SystemHeader(b) | Unit::Raw(b) => out.extend_from_slice(b),
            Unit::Psm(p) => write_psm(&mut out, p),
            Unit::Pes(p) => write_pes(&mut out, p),
        }
    }
    out
}

/// Annex B NAL units of a payload, each with its own start code (as written in the stream).
fn nal_chunks(payload: &Bytes) -> Vec<Bytes> {
    let mut starts = Vec::new();
    let mut i = 0;
    while let Some((p, _)) = crate::proto::codec::nal::find_start_code(payload, i) {
        let p = if p > 0 && payload[p - 1] == 0 { p - 1 } else { p };
        starts.push(p);
        i = p + 4;
    }
    if starts.first() != Some(&0) {
        starts.insert(0, 0);
    }
    starts.dedup();
    let mut out = Vec::new();
    for (k, &s) in starts.iter().enumerate() {
        let e = starts.get(k + 1).copied().unwrap_or(payload.len());
        if e > s {
            out.push(payload.slice(s..e));
        }
    }
    out
}

/// Hikvision: one NAL unit per video PES. `pts_on_all`: every PES repeats the frame's PTS;
/// otherwise only the first carries it.
pub fn one_nal_per_pes(units: Vec<Unit>, pts_on_all: bool) -> Vec<Unit> {
    let mut out = Vec::with_capacity(units.len() * 4);
    for u in units {
        match u {
            Unit::Pes(p) if hdr::is_video_id(p.stream_id) => {
                for (k, nal) in nal_chunks(&p.payload).into_iter().enumerate() {
                    let keep = k == 0 || pts_on_all;
                    out.push(Unit::Pes(PesSpec {
                        payload: nal,
                        pts: p.pts.filter(|_| keep),
                        dts: p.dts.filter(|_| keep),
                        ..p.clone()
                    }));
                }
            }
            u => out.push(u),
        }
    }
    out
}

/// A frame over several PES of at most `max` payload bytes, the PTS only on the first.
pub fn split_video_pes(units: Vec<Unit>, max: usize) -> Vec<Unit> {
    let max = max.max(1);
    let mut out = Vec::new();
    for u in units {
        match u {
            Unit::Pes(p) if hdr::is_video_id(p.stream_id) => {
                let mut k = 0;
                while k < p.payload.len() {
                    let e = (k + max).min(p.payload.len());
                    let first = k == 0;
                    out.push(Unit::Pes(PesSpec {
                        payload: p.payload.slice(k..e),
                        pts: p.pts.filter(|_| first),
                        dts: p.dts.filter(|_| first),
                        ..p.clone()
                    }));
                    k = e;
                }
            }
            u => out.push(u),
        }
    }
    out
}

/// Video PES written with PES_packet_length 0.
pub fn video_length_zero(mut units: Vec<Unit>) -> Vec<Unit> {
    for u in &mut units {
        if let Unit::Pes(p) = u {
            if hdr::is_video_id(p.stream_id) {
                p.unbounded = true;
            }
        }
    }
    units
}

/// A PES of stream `id` skipped by length, whose body holds start-code look-alikes.
pub fn opaque_pes(id: u8, body_len: usize) -> Bytes {
    let mut b = vec![0, 0, 1, id];
    let body: Vec<u8> = [0x00, 0x00, 0x01, 0xBA, 0x00, 0x00, 0x01, 0xE0, 0x48, 0x4B]
        .iter()
        .copied()
        .cycle()
        .take(body_len)
        .collect();
    b.extend_from_slice(&(body.len() as u16).to_be_bytes());
    b.extend_from_slice(&body);
    Bytes::from(b)
}

/// Insert a `Raw` unit after every video PES (Hikvision sends 0xBD private PES after frames).
pub fn after_each_video(units: Vec<Unit>, raw: Bytes) -> Vec<Unit> {
    let mut out = Vec::with_capacity(units.len() * 2);
    for u in units {
        let v = u.is_video();
        out.push(u);
        if v {
            out.push(Unit::Raw(raw.clone()));
        }
    }
    out
}

/// Apply `f` to every PSM.
pub fn map_psm(mut units: Vec<Unit>, mut f: impl FnMut(&mut PsmSpec)) -> Vec<Unit> {
    for u in &mut units {
        if let Unit::Psm(p) = u {
            f(p);
        }
    }
    units
}

/// Hikvision-style descriptors: a program descriptor and one per entry, bodies starting "HK".
pub fn hk_descriptors(p: &mut PsmSpec) {
    p.info =
        vec![0x40, 0x0e, b'H', b'K', 0x01, 0x00, 0x0d, 0x8c, 0x28, 0x3e, 0x0e, 0x00, 0x0f, 0xff, 0xff, 0xff];
    for e in &mut p.entries {
        e.descriptors = vec![0x42, 0x0e, b'H', b'K', 0, 0x20, 0x05, 0x00, 0x02, 0xd0, 0xff, 0xff, 0, 0, 0, 0];
    }
}

/// Drop every PSM.
pub fn without_psm(units: Vec<Unit>) -> Vec<Unit> {
    units.into_iter().filter(|u| !matches!(u, Unit::Psm(_))).collect()
}

/// Set the stuffing of every pack header (at most 7 bytes are written).
pub fn pack_stuffing(mut units: Vec<Unit>, bytes: &[u8]) -> Vec<Unit> {
    for u in &mut units {
        if let Unit::Pack { stuffing, .. } = u {
            *stuffing = bytes.to_vec();
        }
    }
    units
}

/// Insert `garbage(k)` before the k-th pack header for every k where it returns bytes.
pub fn garbage_before_packs(
    units: Vec<Unit>,
    mut garbage: impl FnMut(usize) -> Option<Vec<u8>>,
) -> Vec<Unit> {
    let mut out = Vec::with_capacity(units.len() + 16);
    let mut k = 0;
    for u in units {
        if matches!(u, Unit::Pack { .. }) {
            if let Some(g) = garbage(k) {
                out.push(Unit::Raw(Bytes::from(g)));
            }
            k += 1;
        }
        out.push(u);
    }
    out
}

/// Map every PTS, DTS and SCR of units from index `from` on (values are taken modulo 2^33 when
/// written).
pub fn map_timestamps(mut units: Vec<Unit>, from: usize, f: impl Fn(u64) -> u64) -> Vec<Unit> {
    for u in units.iter_mut().skip(from) {
        match u {
            Unit::Pack { scr, .. } => *scr = f(*scr) & ((1 << 33) - 1),
            Unit::Pes(p) => {
                p.pts = p.pts.map(|t| f(t) & ((1 << 33) - 1));
                p.dts = p.dts.map(|t| f(t) & ((1 << 33) - 1));
            }
            _ => {}
        }
    }
    units
}

/// Keep only the pack headers that start a keyframe (followed by a system header).
pub fn packs_only_at_keyframes(units: Vec<Unit>) -> Vec<Unit> {
    let mut out = Vec::with_capacity(units.len());
    let mut it = units.into_iter().peekable();
    while let Some(u) = it.next() {
        if matches!(u, Unit::Pack { .. }) && !matches!(it.peek(), Some(Unit::SystemHeader(_))) {
            continue;
        }
        out.push(u);
    }
    out
}

/// Index of the `n`-th pack header (0-based), if there is one.
pub fn nth_pack(units: &[Unit], n: usize) -> Option<usize> {
    units.iter().enumerate().filter(|(_, u)| matches!(u, Unit::Pack { .. })).nth(n).map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_then_write_reproduces_the_sample_exactly() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/h264_aac.ps");
        let ps = std::fs::read(path).unwrap();
        let units = parse(&ps).unwrap();
        assert_eq!(units.iter().filter(|u| matches!(u, Unit::Pack { .. })).count(), 250);
        assert_eq!(write(&units), ps);
    }
}
