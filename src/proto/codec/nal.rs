//! Annex B (ITU-T H.264 Annex B / H.265 Annex B) start-code scanning and NAL unit types.
//!
//! Enough to split an access unit into NAL units, tell a keyframe, find parameter sets and guess
//! whether a PES payload is H.264 or H.265 when a PSM is missing or wrong. Full SPS parsing lives in
//! `h264` / `h265`.

/// Iterate over the NAL units of an Annex B buffer (payloads without start codes, trailing zero
/// bytes of the next start code trimmed). Bytes before the first start code are ignored.
pub fn split_annexb(buf: &[u8]) -> AnnexBIter<'_> {
    let start = find_start_code(buf, 0).map(|(pos, len)| pos + len);
    AnnexBIter { buf, next: start }
}

/// Iterator returned by [`split_annexb`].
pub struct AnnexBIter<'a> {
    buf: &'a [u8],
    next: Option<usize>,
}

impl<'a> Iterator for AnnexBIter<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            let start = self.next?;
            let (end, following) = match find_start_code(self.buf, start) {
                Some((pos, len)) => (pos, Some(pos + len)),
                None => (self.buf.len(), None),
            };
            self.next = following;
            let mut nal = &self.buf[start..end];
            // A 4-byte start code's leading zero (and any trailing_zero_8bits) belongs to no NAL.
            while let [rest @ .., 0] = nal {
                nal = rest;
            }
            if !nal.is_empty() {
                return Some(nal);
            }
        }
    }
}

/// Find the next `00 00 01` at or after `from`; returns (position of the first 0, length 3).
/// A preceding zero makes it a 4-byte start code, which [`AnnexBIter`] trims from the NAL before.
///
/// Searches for the `01` byte with `memchr` (SIMD) and checks the two zeros before it: in coded
/// slice data `01` is rare, so this runs at memory speed. (callgrind, `gbrelay remux` of
/// `testdata/h264_aac.ps`: a byte loop here was two thirds of all instructions; see BENCHMARKS.md.)
pub fn find_start_code(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let mut at = from.checked_add(2)?;
    while at < buf.len() {
        let q = at + memchr::memchr(1, &buf[at..])?;
        if buf[q - 1] == 0 && buf[q - 2] == 0 {
            return Some((q - 2, 3));
        }
        at = q + 1;
    }
    None
}

/// H.264 NAL unit type (ITU-T H.264 §7.4.1, Table 7-1).
pub fn h264_type(nal: &[u8]) -> Option<u8> {
    nal.first().map(|b| b & 0x1f)
}

/// H.265 NAL unit type (ITU-T H.265 §7.4.2.2, Table 7-1).
pub fn h265_type(nal: &[u8]) -> Option<u8> {
    nal.first().map(|b| (b >> 1) & 0x3f)
}

pub const H264_IDR: u8 = 5;
pub const H264_SEI: u8 = 6;
pub const H264_SPS: u8 = 7;
pub const H264_PPS: u8 = 8;
pub const H264_AUD: u8 = 9;

pub const H265_VPS: u8 = 32;
pub const H265_SPS: u8 = 33;
pub const H265_PPS: u8 = 34;
pub const H265_AUD: u8 = 35;

/// True for H.265 IRAP pictures (BLA, IDR, CRA: types 16..=21, §7.4.2.2).
pub fn h265_is_irap(t: u8) -> bool {
    (16..=21).contains(&t)
}

/// True if the access unit contains an H.264 IDR slice.
pub fn h264_is_keyframe(au: &[u8]) -> bool {
    split_annexb(au).any(|n| h264_type(n) == Some(H264_IDR))
}

/// True if the access unit contains an H.265 IRAP slice.
pub fn h265_is_keyframe(au: &[u8]) -> bool {
    split_annexb(au).any(|n| h265_type(n).is_some_and(h265_is_irap))
}

/// Guess the video codec of an Annex B buffer from its NAL headers, for a PSM that is missing or
/// names the wrong codec. Returns `None` when the buffer holds no conclusive NAL unit.
///
/// H.265 NAL headers are two bytes with `forbidden_zero_bit = 0`, `nuh_layer_id = 0` (in practice)
/// and `nuh_temporal_id_plus1 >= 1`; parameter sets are decisive for either codec.
pub fn guess_video_codec(buf: &[u8]) -> Option<super::Codec> {
    use super::Codec;
    for nal in split_annexb(buf) {
        if nal.len() < 2 || nal[0] & 0x80 != 0 {
            continue;
        }
        let t5 = nal[0] & 0x1f;
        let t6 = (nal[0] >> 1) & 0x3f;
        let h265_header_ok = nal[0] & 0x01 == 0 && (nal[1] & 0x07) != 0 && nal[1] >> 3 == 0;
        if h265_header_ok && matches!(t6, H265_VPS | H265_SPS | H265_PPS) {
            return Some(Codec::H265);
        }
        // H.264: nal_ref_idc != 0 for SPS/PPS/IDR.
        let ref_idc = (nal[0] >> 5) & 0x03;
        if ref_idc != 0 && matches!(t5, H264_SPS | H264_PPS | H264_IDR) {
            return Some(Codec::H264);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_three_and_four_byte_start_codes() {
        let buf = [0, 0, 0, 1, 0x67, 1, 2, 0, 0, 1, 0x68, 3, 0, 0, 0, 1, 0x65, 4, 5];
        let nals: Vec<&[u8]> = split_annexb(&buf).collect();
        assert_eq!(nals, vec![&[0x67, 1, 2][..], &[0x68, 3][..], &[0x65, 4, 5][..]]);
        assert!(h264_is_keyframe(&buf));
        assert_eq!(guess_video_codec(&buf), Some(crate::proto::codec::Codec::H264));
    }

    #[test]
    fn guesses_h265_from_vps() {
        let buf = [0, 0, 0, 1, 0x40, 0x01, 0x0c, 0, 0, 1, 0x42, 0x01, 1, 0, 0, 1, 0x26, 0x01, 9];
        assert_eq!(guess_video_codec(&buf), Some(crate::proto::codec::Codec::H265));
        assert!(h265_is_keyframe(&buf));
        assert!(!h264_is_keyframe(&[0, 0, 1, 0x41, 0]));
    }

    #[test]
    fn empty_and_garbage_have_no_nals() {
        assert_eq!(split_annexb(&[]).count(), 0);
        assert_eq!(split_annexb(&[1, 2, 3, 4]).count(), 0);
        assert_eq!(split_annexb(&[0, 0, 1]).count(), 0);
    }
}
