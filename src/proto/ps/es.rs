//! Just enough elementary-stream reading for the demuxer to cut frames: the head of an Annex B
//! access unit (codec guess, keyframe, parameter sets, AUD) and ADTS headers.
//!
//! What belongs here: cheap scans that stop early. What does not: SPS parsing, decoder
//! configuration records (`proto::codec`).

use crate::proto::codec::nal;
use crate::proto::codec::Codec;

/// What the head of an access unit says.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AuInfo {
    /// Codec decided by a parameter set or IDR NAL (same rule as [`nal::guess_video_codec`]).
    pub guessed: Option<Codec>,
    pub keyframe: bool,
    /// A slice (VCL NAL unit) was found: the access unit holds a picture.
    pub slice: bool,
    /// Byte ranges (without start code) of the parameter sets before the first slice.
    pub vps: Option<(usize, usize)>,
    pub sps: Option<(usize, usize)>,
    pub pps: Option<(usize, usize)>,
}

/// The per-NAL rule of [`nal::guess_video_codec`]: parameter sets (and H.264 IDR) are decisive.
fn guess_one(n: &[u8]) -> Option<Codec> {
    if n.len() < 2 || n[0] & 0x80 != 0 {
        return None;
    }
    let t6 = (n[0] >> 1) & 0x3f;
    let h265_header_ok = n[0] & 0x01 == 0 && (n[1] & 0x07) != 0 && n[1] >> 3 == 0;
    if h265_header_ok && matches!(t6, nal::H265_VPS | nal::H265_SPS | nal::H265_PPS) {
        return Some(Codec::H265);
    }
    let t5 = n[0] & 0x1f;
    if (n[0] >> 5) & 0x03 != 0 && matches!(t5, nal::H264_SPS | nal::H264_PPS | nal::H264_IDR) {
        return Some(Codec::H264);
    }
    None
}

/// Position of the first `00 00 01` in `hay` (ITU-T H.264 Annex B start code prefix; the same
/// prefix as an MPEG system start code, ISO/IEC 13818-1 §2.4.3.7). Skips with `memchr` on the
/// `01` byte, which is rare in compressed data.
pub(crate) fn find_start_code(hay: &[u8]) -> Option<usize> {
    nal::find_start_code(hay, 0).map(|(p, _)| p)
}

/// Scan an access unit's NAL units up to its first slice (every slice of one picture has the same
/// IDR/IRAP-ness: H.264 §7.4.1.2.4, H.265 §7.4.2.4.4), so the cost is the header NALs only: the
/// end of a NAL is searched for only when the scan goes on past it.
pub(crate) fn scan_au(au: &[u8], hint: Option<Codec>) -> AuInfo {
    let mut info = AuInfo::default();
    let Some(first) = find_start_code(au) else { return info };
    let mut start = first + 3;
    while start < au.len() {
        let h = &au[start..(start + 2).min(au.len())];
        if info.guessed.is_none() {
            info.guessed = guess_one(h);
        }
        // H.265 needs nuh_temporal_id_plus1 != 0 (§7.4.2.2); `00 00` is no NAL header at all.
        let h265_ok = h.len() == 2 && h[1] & 0x07 != 0;
        let (vcl, slot) = match info.guessed.or(hint) {
            Some(Codec::H264) => match nal::h264_type(h) {
                Some(nal::H264_SPS) => (false, Some(1)),
                Some(nal::H264_PPS) => (false, Some(2)),
                Some(t @ 1..=5) => {
                    info.keyframe = t == nal::H264_IDR;
                    (true, None)
                }
                _ => (false, None),
            },
            Some(Codec::H265) if h265_ok => match nal::h265_type(h) {
                Some(nal::H265_VPS) => (false, Some(0)),
                Some(nal::H265_SPS) => (false, Some(1)),
                Some(nal::H265_PPS) => (false, Some(2)),
                Some(t @ 0..=31) => {
                    info.keyframe = nal::h265_is_irap(t);
                    (true, None)
                }
                _ => (false, None),
            },
            _ => (false, None),
        };
        if vcl {
            info.slice = true;
            break;
        }
        let next = find_start_code(&au[start..]).map(|o| start + o);
        if let Some(slot) = slot {
            let mut end = next.unwrap_or(au.len());
            // A 4-byte start code's leading zero (and trailing_zero_8bits) belong to no NAL.
            while end > start && au[end - 1] == 0 {
                end -= 1;
            }
            let range = Some((start, end));
            match slot {
                0 => info.vps = range,
                1 => info.sps = range,
                _ => info.pps = range,
            }
        }
        match next {
            Some(p) => start = p + 3,
            None => break,
        }
    }
    info
}

/// True if `head` (the first bytes of a PES payload) is an Annex B start code followed by an
/// access unit delimiter (H.264 type 9, §7.3.2.4; H.265 type 35, §7.3.2.5).
pub(crate) fn starts_with_aud(head: &[u8]) -> bool {
    let rest = match head {
        [0, 0, 0, 1, rest @ ..] | [0, 0, 1, rest @ ..] => rest,
        _ => return false,
    };
    match rest {
        [b, ..] if b & 0x9f == nal::H264_AUD => true,
        [b0, b1, ..] => (b0 >> 1) & 0x3f == nal::H265_AUD && b0 & 0x81 == 0 && b1 & 0x07 != 0,
        _ => false,
    }
}

/// True if `head` begins with an Annex B start code (3 or 4 bytes).
pub(crate) fn starts_with_start_code(head: &[u8]) -> bool {
    matches!(head, [0, 0, 0, 1, ..] | [0, 0, 1, ..])
}

/// An ADTS frame header (ISO/IEC 14496-3 §1.A.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Adts {
    /// aac_frame_length: header + payload bytes.
    pub frame_len: usize,
    pub sample_rate: u32,
    /// Samples per channel in this frame: 1024 × (number_of_raw_data_blocks_in_frame + 1).
    pub samples: u32,
}

const ADTS_RATES: [u32; 13] =
    [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];

/// True if `b` starts with the ADTS syncword 0xFFF and layer '00'.
pub(crate) fn is_adts_sync(b: &[u8]) -> bool {
    b.len() >= 2 && b[0] == 0xFF && b[1] & 0xF6 == 0xF0
}

/// Parse a 7-byte ADTS fixed + variable header; `None` if it is not one.
pub(crate) fn parse_adts(b: &[u8]) -> Option<Adts> {
    if b.len() < 7 || !is_adts_sync(b) {
        return None;
    }
    let sample_rate = *ADTS_RATES.get(usize::from((b[2] >> 2) & 0x0f))?;
    let frame_len = (usize::from(b[3] & 0x03) << 11) | (usize::from(b[4]) << 3) | usize::from(b[5] >> 5);
    let header = if b[1] & 0x01 == 0 { 9 } else { 7 };
    if frame_len < header {
        return None;
    }
    Some(Adts { frame_len, sample_rate, samples: 1024 * (u32::from(b[6] & 0x03) + 1) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_stops_at_first_slice_and_finds_parameter_sets() {
        let au = [0, 0, 0, 1, 0x67, 0x4d, 0, 0, 1, 0x68, 0xee, 0, 0, 1, 0x65, 0x88, 0, 0, 1, 0x41, 1];
        let i = scan_au(&au, None);
        assert_eq!(i.guessed, Some(Codec::H264));
        assert!(i.keyframe);
        assert_eq!(i.sps, Some((4, 6)));
        assert_eq!(i.pps, Some((9, 11)));
        let p = scan_au(&[0, 0, 1, 0x41, 0x9a], Some(Codec::H264));
        assert!(!p.keyframe && p.guessed.is_none());
    }

    #[test]
    fn aud_detection_for_both_codecs() {
        assert!(starts_with_aud(&[0, 0, 0, 1, 0x09, 0xf0]));
        assert!(starts_with_aud(&[0, 0, 1, 0x46, 0x01, 0x50]));
        assert!(!starts_with_aud(&[0, 0, 1, 0x67, 0x42]));
        assert!(!starts_with_aud(&[0, 0, 2, 0x09]));
    }

    #[test]
    fn adts_header_of_sample() {
        // First ADTS header of h264_aac.ps: 16 kHz, 1 block.
        let h = [0xff, 0xf1, 0x60, 0x40, 0x29, 0x3f, 0xfc];
        let a = parse_adts(&h).unwrap();
        assert_eq!(a.sample_rate, 16000);
        assert_eq!(a.samples, 1024);
        assert_eq!(a.frame_len, (0x29 << 3) | (0x3f >> 5));
        assert!(parse_adts(&[0xff, 0xf7, 0x60, 0x40, 0x29, 0x3f, 0xfc]).is_none());
    }
}
