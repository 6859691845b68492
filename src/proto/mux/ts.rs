//! MPEG-TS muxer: frames in, 188-byte transport packets out (ISO/IEC 13818-1).
//!
//! What belongs here: PAT and PMT (§2.4.4.3, §2.4.4.8, CRC-32 of Annex A), PES packetisation
//! (§2.4.3.6) for H.264 (stream type 0x1b), H.265 (0x24) and AAC in ADTS (0x0f), PCR (§2.4.3.5)
//! on the video PID (audio PID for an audio-only stream), continuity counters (§2.4.3.3) that run
//! on across HLS segments, and AUD insertion for H.264 / H.265. What does not: segmenting and
//! playlists (`hls`), FLV (`flv`).
//!
//! Why our own packet writer rather than the `mpeg2ts` crate: the muxer must keep continuity
//! counters across segments, decide PCR placement and adaptation-field stuffing itself and write
//! straight into the segment buffer without an intermediate packet struct per 188 bytes; the
//! transport packet layer is ~100 lines, and this way each payload byte is copied exactly once.
//!
//! Behaviour:
//! - G.711 frames are ignored ([`TsMuxer::push`] returns false): TS/HLS has no G.711 stream type
//!   that players accept, so HLS carries video (and AAC) only.
//! - The PMT lists the streams seen so far; when a new one appears (e.g. the first AAC frame after
//!   video started) the PMT version is bumped and PAT/PMT are written again before its PES.
//! - Timestamps: output PTS/DTS = input + 1.4 s (so early PCR never goes negative), modulo 2^33;
//!   PCR = DTS − 0.7 s, written on every video PES start (≤ one frame interval apart).

use crate::proto::codec::nal::{h264_type, h265_type, split_annexb, H264_AUD, H265_AUD};
use crate::proto::codec::{Codec, Frame};

pub const TS_PACKET: usize = 188;
pub const PID_PAT: u16 = 0x0000;
pub const PID_PMT: u16 = 0x1000;
pub const PID_VIDEO: u16 = 0x0100;
pub const PID_AUDIO: u16 = 0x0101;

/// Offset added to every PTS/DTS, 90 kHz.
const TS_OFFSET: i64 = 126_000;
/// PCR runs this much behind DTS, 90 kHz.
const PCR_DELAY: i64 = 63_000;

const AUD_H264: &[u8] = &[0, 0, 0, 1, 0x09, 0xf0]; // primary_pic_type 7 (any), stop bit
const AUD_H265: &[u8] = &[0, 0, 0, 1, 0x46, 0x01, 0x50]; // type 35, pic_type 2 (any), stop bit

/// CRC-32/MPEG-2 (§Annex A): polynomial 0x04C11DB7, initial 0xFFFFFFFF, no reflection.
pub fn crc32_mpeg2(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 { (crc << 1) ^ 0x04c1_1db7 } else { crc << 1 };
        }
    }
    crc
}

fn stream_type(codec: Codec) -> Option<u8> {
    match codec {
        Codec::H264 => Some(0x1b),
        Codec::H265 => Some(0x24),
        Codec::Aac => Some(0x0f),
        Codec::G711A | Codec::G711U => None,
    }
}

/// 33-bit timestamp of an input time.
fn ts33(t: i64) -> u64 {
    t.wrapping_add(TS_OFFSET).rem_euclid(1 << 33) as u64
}

/// PTS/DTS field (§2.4.3.7): 4-bit prefix, 3 marker bits.
fn put_ts(out: &mut Vec<u8>, prefix: u8, t: u64) {
    out.push((prefix << 4) | (((t >> 30) as u8 & 0x07) << 1) | 1);
    out.push((t >> 22) as u8);
    out.push((((t >> 15) as u8) << 1) | 1);
    out.push((t >> 7) as u8);
    out.push(((t as u8) << 1) | 1);
}

/// TS muxer state for one stream (one program). Keep one per stream so continuity counters run
/// on across HLS segments.
pub struct TsMuxer {
    video: Option<Codec>,
    audio: Option<Codec>,
    pmt_version: u8,
    cc_pat: u8,
    cc_pmt: u8,
    cc_video: u8,
    cc_audio: u8,
    pes_header: Vec<u8>,
}

impl Default for TsMuxer {
    fn default() -> Self {
        Self::new()
    }
}

impl TsMuxer {
    pub fn new() -> Self {
        TsMuxer {
            video: None,
            audio: None,
            pmt_version: 0,
            cc_pat: 0,
            cc_pmt: 0,
            cc_video: 0,
            cc_audio: 0,
            pes_header: Vec::with_capacity(32),
        }
    }

    /// The video codec in the PMT, if any.
    pub fn video_codec(&self) -> Option<Codec> {
        self.video
    }

    /// True if the PMT lists an AAC stream.
    pub fn has_audio(&self) -> bool {
        self.audio.is_some()
    }

    fn next_cc(cc: &mut u8) -> u8 {
        let c = *cc;
        *cc = (*cc + 1) & 0x0f;
        c
    }

    /// One PSI section in one packet (pointer_field 0, rest 0xFF).
    fn write_section(out: &mut Vec<u8>, pid: u16, cc: u8, section: &[u8]) {
        let start = out.len();
        out.extend_from_slice(&[
            0x47,
            0x40 | (pid >> 8) as u8, // payload_unit_start_indicator
            pid as u8,
            0x10 | cc, // payload only
            0x00,      // pointer_field
        ]);
        out.extend_from_slice(section);
        out.resize(start + TS_PACKET, 0xff);
    }

    /// Write PAT and PMT (at the start of every segment, and when the stream set changes).
    pub fn write_psi(&mut self, out: &mut Vec<u8>) {
        // PAT (§2.4.4.3): one program, number 1, PMT PID.
        let mut pat = vec![
            0x00, // table_id
            0xb0,
            0x0d, // section_syntax_indicator, '0', reserved, section_length 13
            0x00,
            0x01, // transport_stream_id
            0xc1, // reserved, version 0, current_next
            0x00,
            0x00, // section_number, last_section_number
            0x00,
            0x01, // program_number 1
            0xe0 | (PID_PMT >> 8) as u8,
            PID_PMT as u8,
        ];
        let crc = crc32_mpeg2(&pat);
        pat.extend_from_slice(&crc.to_be_bytes());
        let cc = Self::next_cc(&mut self.cc_pat);
        Self::write_section(out, PID_PAT, cc, &pat);

        // PMT (§2.4.4.8).
        let pcr_pid = if self.video.is_some() || self.audio.is_none() { PID_VIDEO } else { PID_AUDIO };
        let mut es = Vec::with_capacity(10);
        for (codec, pid) in [(self.video, PID_VIDEO), (self.audio, PID_AUDIO)] {
            if let Some(st) = codec.and_then(stream_type) {
                es.extend_from_slice(&[st, 0xe0 | (pid >> 8) as u8, pid as u8, 0xf0, 0x00]);
            }
        }
        let section_length = 9 + es.len() + 4;
        let mut pmt = vec![
            0x02,
            0xb0 | (section_length >> 8) as u8,
            section_length as u8,
            0x00,
            0x01, // program_number
            0xc1 | ((self.pmt_version & 0x1f) << 1),
            0x00,
            0x00,
            0xe0 | (pcr_pid >> 8) as u8,
            pcr_pid as u8,
            0xf0,
            0x00, // program_info_length 0
        ];
        pmt.extend_from_slice(&es);
        let crc = crc32_mpeg2(&pmt);
        pmt.extend_from_slice(&crc.to_be_bytes());
        let cc = Self::next_cc(&mut self.cc_pmt);
        Self::write_section(out, PID_PMT, cc, &pmt);
    }

    /// Mux one frame into `out` as PES in transport packets. Returns false (writing nothing)
    /// for a frame TS cannot carry (G.711) or an empty one.
    pub fn push(&mut self, frame: &Frame, out: &mut Vec<u8>) -> bool {
        if stream_type(frame.codec).is_none() || frame.data.is_empty() {
            return false;
        }
        let video = frame.codec.is_video();
        // A new or changed stream: bump the PMT version and announce it before the PES.
        let slot = if video { &mut self.video } else { &mut self.audio };
        if *slot != Some(frame.codec) {
            *slot = Some(frame.codec);
            self.pmt_version = (self.pmt_version + 1) & 0x1f;
            self.write_psi(out);
        }

        // AUD first for video where the access unit has none (H.264 §7.4.1.2.3 orders it first;
        // some players need it to find access-unit boundaries).
        let aud: &[u8] = if video {
            let first = split_annexb(&frame.data).next();
            match frame.codec {
                Codec::H264 if first.and_then(h264_type) != Some(H264_AUD) => AUD_H264,
                Codec::H265 if first.and_then(h265_type) != Some(H265_AUD) => AUD_H265,
                _ => &[],
            }
        } else {
            &[]
        };

        // PES header (§2.4.3.6/§2.4.3.7).
        let pts = ts33(frame.pts);
        let dts = ts33(frame.dts);
        let with_dts = video && frame.pts != frame.dts;
        let mut h = std::mem::take(&mut self.pes_header);
        h.clear();
        let header_data_len: usize = if with_dts { 10 } else { 5 };
        let pes_len = 3 + header_data_len + aud.len() + frame.data.len();
        h.extend_from_slice(&[0, 0, 1, if video { 0xe0 } else { 0xc0 }]);
        // PES_packet_length: 0 (unbounded) is allowed only for video (§2.4.3.7).
        let len_field = if pes_len <= 0xffff { pes_len as u16 } else { 0 };
        h.extend_from_slice(&len_field.to_be_bytes());
        h.push(0x80 | if video { 0x04 } else { 0 }); // '10', data_alignment_indicator for video
        h.push(if with_dts { 0xc0 } else { 0x80 });
        h.push(header_data_len as u8);
        put_ts(&mut h, if with_dts { 3 } else { 2 }, pts);
        if with_dts {
            put_ts(&mut h, 1, dts);
        }

        let pcr = if video || self.video.is_none() {
            Some(frame.dts.wrapping_add(TS_OFFSET - PCR_DELAY).rem_euclid(1 << 33) as u64)
        } else {
            None
        };
        let (pid, cc) = if video { (PID_VIDEO, &mut self.cc_video) } else { (PID_AUDIO, &mut self.cc_audio) };
        let random_access = frame.keyframe && video;
        write_pes(out, pid, cc, pcr, random_access, &[&h, aud, &frame.data]);
        self.pes_header = h;
        true
    }
}

/// Split one PES (given as consecutive pieces) into transport packets (§2.4.3.2), with PCR and
/// random_access_indicator in the first packet's adaptation field and stuffing in the last.
fn write_pes(
    out: &mut Vec<u8>,
    pid: u16,
    cc: &mut u8,
    pcr: Option<u64>,
    random_access: bool,
    pieces: &[&[u8]; 3],
) {
    let total: usize = pieces.iter().map(|p| p.len()).sum();
    out.reserve((total / 184 + 2) * TS_PACKET);
    let mut remaining = total;
    let mut piece = 0usize;
    let mut offset = 0usize;
    let mut first = true;
    while remaining > 0 {
        let start = out.len();
        // Adaptation field contents (after its length byte) for this packet.
        let mut af = [0u8; 7];
        let mut af_len = 0usize; // bytes of af used (flags + PCR)
        if first && (pcr.is_some() || random_access) {
            af[0] = if random_access { 0x40 } else { 0 };
            af_len = 1;
            if let Some(pcr) = pcr {
                af[0] |= 0x10; // PCR_flag
                af[1] = (pcr >> 25) as u8;
                af[2] = (pcr >> 17) as u8;
                af[3] = (pcr >> 9) as u8;
                af[4] = (pcr >> 1) as u8;
                af[5] = ((pcr as u8 & 1) << 7) | 0x7e; // reserved 6 bits, extension 9 bits = 0
                af[6] = 0;
                af_len = 7;
            }
        }
        let has_af_fields = af_len > 0;
        let mut space = 184 - if has_af_fields { 1 + af_len } else { 0 };
        let mut stuffing = 0usize;
        let mut need_af = has_af_fields;
        if remaining < space {
            // Fill the rest with adaptation-field stuffing (§2.4.3.5).
            let gap = space - remaining;
            if need_af {
                stuffing = gap;
            } else {
                need_af = true;
                // The length byte takes one, the flags byte another (if gap ≥ 2).
                if gap >= 2 {
                    af_len = 1;
                    af[0] = 0;
                    stuffing = gap - 2;
                }
            }
            space = remaining;
        }
        let pusi = if first { 0x40 } else { 0 };
        let c = *cc;
        *cc = (c + 1) & 0x0f;
        out.extend_from_slice(&[
            0x47,
            pusi | (pid >> 8) as u8 & 0x1f,
            pid as u8,
            if need_af { 0x30 } else { 0x10 } | c,
        ]);
        if need_af {
            out.push((af_len + stuffing) as u8);
            out.extend_from_slice(&af[..af_len]);
            out.resize(out.len() + stuffing, 0xff);
        }
        // Payload: copy `space` bytes from the pieces.
        let mut want = space;
        while want > 0 {
            let p = pieces[piece];
            let n = (p.len() - offset).min(want);
            out.extend_from_slice(&p[offset..offset + n]);
            offset += n;
            want -= n;
            if offset == p.len() {
                piece += 1;
                offset = 0;
            }
            while piece < pieces.len() && pieces[piece].is_empty() {
                piece += 1;
            }
        }
        remaining -= space;
        debug_assert_eq!(out.len() - start, TS_PACKET);
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_mpeg2_matches_the_standard_check_value() {
        // CRC-32/MPEG-2 check value for "123456789".
        assert_eq!(crc32_mpeg2(b"123456789"), 0x0376_e6e7);
    }

    #[test]
    fn pts_field_has_prefix_and_marker_bits() {
        let mut v = Vec::new();
        put_ts(&mut v, 2, 0x1_2345_6789);
        // '0010' PTS[32..30] '1' | PTS[29..15] '1' | PTS[14..0] '1'
        assert_eq!(v, vec![0x29, 0x8d, 0x15, 0xcf, 0x13]);
    }
}
