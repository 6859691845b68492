//! Byte-level parsers of the MPEG-PS system structures (ISO/IEC 13818-1 §2.5.3, §2.5.4, §2.4.3.6):
//! pack header, system header length, program stream map, PES header, and the strict
//! "does a header start here?" checks used to resynchronise and to end an unbounded PES.
//!
//! What belongs here: pure functions over `&[u8]` that say `Incomplete` (need more bytes) or
//! `Invalid` (with offset and what was expected). What does not: buffering, state, timing, codec
//! logic (see `demux.rs`, `timeline.rs`, `es.rs`).

use thiserror::Error;

/// Why a structure could not be parsed from the bytes given.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ParseError {
    /// More bytes are needed: the structure is `needed` bytes long (or at least that long).
    #[error("incomplete: need {needed} bytes")]
    Incomplete { needed: usize },
    /// The bytes cannot be this structure.
    #[error("invalid at byte {offset}: expected {expected}")]
    Invalid { offset: usize, expected: &'static str },
}

fn need(buf: &[u8], n: usize) -> Result<(), ParseError> {
    if buf.len() < n {
        Err(ParseError::Incomplete { needed: n })
    } else {
        Ok(())
    }
}

fn invalid<T>(offset: usize, expected: &'static str) -> Result<T, ParseError> {
    Err(ParseError::Invalid { offset, expected })
}

/// Start code prefix `00 00 01` (§2.5.3.2 `pack_start_code`, §2.4.3.7 `packet_start_code_prefix`).
pub const START_CODE: [u8; 3] = [0, 0, 1];
pub const PACK_START: u8 = 0xBA;
pub const PROGRAM_END: u8 = 0xB9;
pub const SYSTEM_HEADER: u8 = 0xBB;
pub const PROGRAM_STREAM_MAP: u8 = 0xBC;
pub const PRIVATE_STREAM_1: u8 = 0xBD;
pub const PADDING_STREAM: u8 = 0xBE;
pub const PRIVATE_STREAM_2: u8 = 0xBF;

/// Audio stream ids 0xC0..=0xDF (§2.4.3.7 Table 2-22).
pub fn is_audio_id(id: u8) -> bool {
    (0xC0..=0xDF).contains(&id)
}

/// Video stream ids 0xE0..=0xEF (§2.4.3.7 Table 2-22).
pub fn is_video_id(id: u8) -> bool {
    (0xE0..=0xEF).contains(&id)
}

/// An MPEG-2 pack header (§2.5.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackHeader {
    /// system_clock_reference_base, 33 bits, 90 kHz.
    pub scr_base: u64,
    pub scr_ext: u16,
    /// program_mux_rate in units of 50 bytes/s.
    pub mux_rate: u32,
    /// pack_stuffing_length (0..=7).
    pub stuffing_len: usize,
    /// Whether every marker bit was 1 (some devices get them wrong; we parse on anyway).
    pub markers_ok: bool,
}

impl PackHeader {
    /// Total length including stuffing.
    pub fn total_len(&self) -> usize {
        14 + self.stuffing_len
    }
}

/// Parse the 14 fixed bytes of an MPEG-2 pack header starting at `00 00 01 BA` (§2.5.3.3).
/// Only the '01' prefix that marks MPEG-2 (an MPEG-1 pack starts '0010') is required; wrong marker
/// bits are reported in `markers_ok`.
pub fn parse_pack_header(buf: &[u8]) -> Result<PackHeader, ParseError> {
    need(buf, 14)?;
    if buf[..3] != START_CODE || buf[3] != PACK_START {
        return invalid(0, "pack_start_code 00 00 01 BA");
    }
    let b = &buf[4..14];
    if b[0] >> 6 != 0b01 {
        return invalid(4, "'01' before system_clock_reference_base (MPEG-2 pack)");
    }
    let scr_base = (u64::from((b[0] >> 3) & 0x07) << 30)
        | (u64::from(b[0] & 0x03) << 28)
        | (u64::from(b[1]) << 20)
        | (u64::from(b[2] >> 3) << 15)
        | (u64::from(b[2] & 0x03) << 13)
        | (u64::from(b[3]) << 5)
        | u64::from(b[4] >> 3);
    let scr_ext = (u16::from(b[4] & 0x03) << 7) | u16::from(b[5] >> 1);
    let mux_rate = (u32::from(b[6]) << 14) | (u32::from(b[7]) << 6) | u32::from(b[8] >> 2);
    Ok(PackHeader {
        scr_base,
        scr_ext,
        mux_rate,
        stuffing_len: usize::from(b[9] & 0x07),
        markers_ok: pack_markers_ok(buf),
    })
}

/// Marker bits of the pack header (§2.5.3.3): SCR markers and the two after program_mux_rate.
fn pack_markers_ok(buf: &[u8]) -> bool {
    buf[4] & 0xC4 == 0x44
        && buf[6] & 0x04 == 0x04
        && buf[8] & 0x04 == 0x04
        && buf[9] & 0x01 == 0x01
        && buf[12] & 0x03 == 0x03
}

/// PTS/DTS as read from a PES header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PesHeader {
    pub stream_id: u8,
    /// PES_packet_length; 0 means unbounded (§2.4.3.7).
    pub packet_len: usize,
    /// Bytes from the start code to the first payload byte (9 + PES_header_data_length).
    pub header_len: usize,
    pub pts: Option<u64>,
    pub dts: Option<u64>,
}

impl PesHeader {
    /// Payload bytes after the header, or `None` for an unbounded PES.
    pub fn payload_len(&self) -> Option<usize> {
        (self.packet_len != 0).then(|| self.packet_len + 6 - self.header_len)
    }
}

/// Read a 33-bit timestamp from its 5-byte field (§2.4.3.7: 4 bits prefix, 3 + 15 + 15 bits with
/// marker bits). Returns `None` if a marker bit is 0.
fn read_ts(b: &[u8]) -> Option<u64> {
    if b[0] & 1 == 0 || b[2] & 1 == 0 || b[4] & 1 == 0 {
        return None;
    }
    Some(
        (u64::from((b[0] >> 1) & 0x07) << 30)
            | (u64::from(b[1]) << 22)
            | (u64::from(b[2] >> 1) << 15)
            | (u64::from(b[3]) << 7)
            | u64::from(b[4] >> 1),
    )
}

/// Parse a PES header with the MPEG-2 optional fields (§2.4.3.6), for stream ids that carry them
/// (audio, video, private_stream_1). `buf` starts at the start code.
pub fn parse_pes_header(buf: &[u8]) -> Result<PesHeader, ParseError> {
    need(buf, 9)?;
    if buf[..3] != START_CODE {
        return invalid(0, "packet_start_code_prefix 00 00 01");
    }
    let packet_len = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
    if buf[6] >> 6 != 0b10 {
        return invalid(6, "'10' before PES_scrambling_control");
    }
    let flags = buf[7] >> 6;
    let hdl = usize::from(buf[8]);
    let header_len = 9 + hdl;
    if packet_len != 0 && packet_len < 3 + hdl {
        return invalid(8, "PES_header_data_length within PES_packet_length");
    }
    let min_hdl = match flags {
        0b00 => 0,
        0b10 => 5,
        0b11 => 10,
        _ => return invalid(7, "PTS_DTS_flags other than '01' (forbidden)"),
    };
    if hdl < min_hdl {
        return invalid(8, "PES_header_data_length covering PTS/DTS");
    }
    need(buf, 9 + min_hdl)?;
    let (mut pts, mut dts) = (None, None);
    if flags & 0b10 != 0 {
        pts = read_ts(&buf[9..14]);
        if pts.is_none() {
            return invalid(9, "PTS marker bits");
        }
    }
    if flags == 0b11 {
        dts = read_ts(&buf[14..19]);
        if dts.is_none() {
            return invalid(14, "DTS marker bits");
        }
    }
    Ok(PesHeader { stream_id: buf[3], packet_len, header_len, pts, dts })
}

/// Length field of a structure that carries one (everything but the pack header and end code).
pub fn length_field(buf: &[u8]) -> Result<usize, ParseError> {
    need(buf, 6)?;
    Ok(6 + usize::from(u16::from_be_bytes([buf[4], buf[5]])))
}

/// Bytes of look-ahead [`header_plausible`] may want after the start code position.
pub const LOOKAHEAD: usize = 19;

/// Strict check that a real PS structure starts at `buf` (which begins `00 00 01 id`), used to
/// resynchronise after garbage and to end an unbounded PES. `accept_pes`: whether PES/PSM/system
/// headers count (pack headers always do). `Err(Incomplete)` when more bytes are needed to decide;
/// `buf` shorter than [`LOOKAHEAD`] at end of input should be judged with what there is.
pub fn header_plausible(buf: &[u8], accept_pes: bool) -> Result<bool, ParseError> {
    need(buf, 4)?;
    let id = buf[3];
    match id {
        PACK_START => {
            need(buf, 14)?;
            Ok(pack_markers_ok(buf))
        }
        _ if !accept_pes => Ok(false),
        PROGRAM_END => Ok(true),
        SYSTEM_HEADER => {
            // §2.5.3.5: header_length >= 6, marker bits around rate_bound.
            need(buf, 9)?;
            let len = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
            Ok(len >= 6 && buf[6] & 0x80 != 0 && buf[8] & 0x01 != 0)
        }
        PROGRAM_STREAM_MAP => {
            // §2.5.4.1: program_stream_map_length <= 1018 in the standard; allow vendor slack.
            // The marker bit is not checked: some devices write the byte as 0.
            need(buf, 6)?;
            let len = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
            Ok((6..=4096).contains(&len))
        }
        PADDING_STREAM | PRIVATE_STREAM_2 => {
            need(buf, 6)?;
            Ok(u16::from_be_bytes([buf[4], buf[5]]) != 0)
        }
        PRIVATE_STREAM_1 | 0xC0..=0xEF => match parse_pes_header(buf) {
            Ok(_) => Ok(true),
            Err(ParseError::Incomplete { needed }) => Err(ParseError::Incomplete { needed }),
            Err(_) => Ok(false),
        },
        _ => Ok(false),
    }
}

/// One elementary stream entry of a program stream map (§2.5.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PsmEntry {
    pub stream_type: u8,
    pub stream_id: u8,
}

/// How the PSM's CRC_32 compared with the CRC we computed (§2.5.4.1, Annex A). Never a reason to
/// reject the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrcCheck {
    Ok,
    /// Dahua writes 0.
    Zero,
    /// Hikvision writes the CRC little-endian.
    LittleEndian,
    Bad,
    /// Too short to hold a CRC at all.
    Missing,
}

/// A parsed program stream map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Psm {
    pub entries: Vec<PsmEntry>,
    pub crc: CrcCheck,
    /// Total bytes of descriptors (program and elementary stream level).
    pub descriptor_bytes: usize,
    /// True if any descriptor's payload starts with ASCII "HK" (Hikvision).
    pub hk_descriptor: bool,
    /// Entries with stream_type 0 or stream_id 0 (Dahua), not listed in `entries`.
    pub empty_entries: usize,
    /// The elementary_stream_map_length pointed past the end and was clamped.
    pub truncated: bool,
}

fn scan_descriptors(d: &[u8], hk: &mut bool) {
    let mut i = 0;
    while i + 2 <= d.len() {
        let len = usize::from(d[i + 1]);
        let body = &d[i + 2..d.len().min(i + 2 + len)];
        if body.starts_with(b"HK") {
            *hk = true;
        }
        i += 2 + len;
    }
}

/// Parse a whole PSM (`buf` = start code through CRC, exactly `6 + program_stream_map_length`
/// bytes). Lenient by design: lengths that overrun are clamped, CRC is only classified.
pub fn parse_psm(buf: &[u8]) -> Result<Psm, ParseError> {
    need(buf, 6)?;
    if buf[..3] != START_CODE || buf[3] != PROGRAM_STREAM_MAP {
        return invalid(0, "00 00 01 BC");
    }
    let total = length_field(buf)?;
    need(buf, total)?;
    let buf = &buf[..total];
    if total < 12 {
        return invalid(4, "program_stream_map_length >= 6");
    }
    // The CRC covers everything before it; without 4 spare bytes there is none.
    let body_end = total.saturating_sub(4).max(12);
    let mut truncated = false;
    let mut hk = false;
    let info_len = usize::from(u16::from_be_bytes([buf[8], buf[9]]));
    let mut pos = 10 + info_len;
    if pos + 2 > body_end {
        truncated = true;
        pos = body_end.saturating_sub(2).max(10);
    }
    scan_descriptors(&buf[10..pos], &mut hk);
    let mut descriptor_bytes = pos - 10;
    let es_map_len = usize::from(u16::from_be_bytes([buf[pos], buf[pos + 1]]));
    let es_start = pos + 2;
    let mut es_end = es_start + es_map_len;
    if es_end > body_end {
        truncated = true;
        es_end = body_end;
    }
    let mut entries = Vec::new();
    let mut empty_entries = 0;
    let mut i = es_start;
    while i + 4 <= es_end {
        let (stream_type, stream_id) = (buf[i], buf[i + 1]);
        let dlen = usize::from(u16::from_be_bytes([buf[i + 2], buf[i + 3]]));
        let dend = (i + 4 + dlen).min(es_end);
        scan_descriptors(&buf[i + 4..dend], &mut hk);
        descriptor_bytes += dend - (i + 4);
        if stream_type == 0 || stream_id == 0 {
            empty_entries += 1;
        } else {
            entries.push(PsmEntry { stream_type, stream_id });
        }
        i = i + 4 + dlen;
    }
    let crc = if total < 16 || es_end + 4 > total {
        CrcCheck::Missing
    } else {
        let stored = &buf[es_end..es_end + 4];
        let want = crc32_mpeg2(&buf[..es_end]);
        if stored == want.to_be_bytes() {
            CrcCheck::Ok
        } else if stored == [0, 0, 0, 0] {
            CrcCheck::Zero
        } else if stored == want.to_le_bytes() {
            CrcCheck::LittleEndian
        } else {
            CrcCheck::Bad
        }
    };
    Ok(Psm { entries, crc, descriptor_bytes, hk_descriptor: hk, empty_entries, truncated })
}

const fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = (i as u32) << 24;
        let mut k = 0;
        while k < 8 {
            c = if c & 0x8000_0000 != 0 { (c << 1) ^ 0x04C1_1DB7 } else { c << 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

static CRC_TABLE: [u32; 256] = crc_table();

/// CRC-32/MPEG-2 (ISO/IEC 13818-1 Annex A: polynomial 0x04C11DB7, initial 0xFFFFFFFF, no
/// reflection, no final XOR).
pub fn crc32_mpeg2(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c = (c << 8) ^ CRC_TABLE[((c >> 24) as u8 ^ b) as usize];
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_header_of_sample_parses_scr_and_mux_rate() {
        let h = [0, 0, 1, 0xBA, 0x44, 0x00, 0x16, 0x8c, 0x04, 0x01, 0x00, 0xff, 0xff, 0xf8];
        let p = parse_pack_header(&h).unwrap();
        assert_eq!(p.stuffing_len, 0);
        assert!(p.markers_ok);
        assert_eq!(p.mux_rate, 0x3fff);
        // The sample's first SCR is 0.96 s (PTS 1.0 s minus a 40 ms mux delay).
        assert_eq!(p.scr_base, 86_400);
        assert_eq!(parse_pack_header(&h[..13]), Err(ParseError::Incomplete { needed: 14 }));
    }

    #[test]
    fn pes_header_reads_pts_and_rejects_forbidden_flags() {
        let h = [0, 0, 1, 0xE0, 0, 20, 0x84, 0x80, 5, 0x21, 0x00, 0x05, 0xbf, 0x21];
        let p = parse_pes_header(&h).unwrap();
        assert_eq!(p.pts, Some(90_000));
        assert_eq!(p.dts, None);
        assert_eq!(p.payload_len(), Some(20 + 6 - 14));
        let mut bad = h;
        bad[7] = 0x40;
        assert!(matches!(parse_pes_header(&bad), Err(ParseError::Invalid { offset: 7, .. })));
        assert!(matches!(parse_pes_header(&h[..12]), Err(ParseError::Incomplete { needed: 14 })));
    }

    #[test]
    fn psm_crc_is_classified_not_rejected() {
        let mut psm = vec![0, 0, 1, 0xBC, 0, 18, 0xe0, 0xff, 0, 0, 0, 8, 0x1b, 0xe0, 0, 0, 0x0f, 0xc0, 0, 0];
        let crc = crc32_mpeg2(&psm);
        assert_eq!(crc, 0x4a45c708, "CRC of the sample PSM");
        for (stored, want) in [
            (crc.to_be_bytes(), CrcCheck::Ok),
            ([0; 4], CrcCheck::Zero),
            (crc.to_le_bytes(), CrcCheck::LittleEndian),
            ([1, 2, 3, 4], CrcCheck::Bad),
        ] {
            let mut p = psm.clone();
            p.extend_from_slice(&stored);
            let m = parse_psm(&p).unwrap();
            assert_eq!(m.crc, want);
            assert_eq!(m.entries.len(), 2);
        }
        psm.truncate(10);
        assert!(parse_psm(&psm).is_err());
    }
}
