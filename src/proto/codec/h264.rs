//! H.264 / AVC: sequence parameter set parsing and the AVCDecoderConfigurationRecord.
//!
//! What belongs here: reading an SPS (ITU-T H.264 §7.3.2.1.1) far enough for width, height,
//! profile, level, chroma format, bit depth and the VUI frame rate (§E.1.1); collecting SPS/PPS
//! from an Annex B access unit; building and parsing the AVCDecoderConfigurationRecord
//! (ISO/IEC 14496-15 §5.3.3.1). What does not: start-code scanning and keyframe detection
//! (`nal`), containers (`proto::mux`).
//!
//! Every parser is total: hostile input gives a [`CodecError`], never a panic (fuzzed by
//! `fuzz/fuzz_targets/h264.rs`).

use bytes::Bytes;

use super::bits::{rbsp, BitReader, CodecError};
use super::nal::{h264_type, split_annexb, H264_PPS, H264_SPS};

/// What an SPS tells a muxer.
#[derive(Debug, Clone, PartialEq)]
pub struct Sps {
    pub profile_idc: u8,
    /// constraint_set0..5_flag and the two reserved bits, as the second SPS byte.
    pub constraint_flags: u8,
    pub level_idc: u8,
    pub seq_parameter_set_id: u32,
    pub chroma_format_idc: u8,
    pub bit_depth_luma: u8,
    pub bit_depth_chroma: u8,
    /// Display width after frame cropping (§7.4.2.1.1, equations 7-19 … 7-22).
    pub width: u32,
    pub height: u32,
    /// Frames per second from VUI timing (`time_scale / (2 · num_units_in_tick)`, §E.2.1).
    pub frame_rate: Option<f64>,
}

/// Profiles whose SPS carries chroma_format_idc and bit depths (§7.3.2.1.1).
fn has_chroma_info(profile_idc: u8) -> bool {
    matches!(profile_idc, 100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135)
}

/// scaling_list() (§7.3.2.1.1.1): only skipped, the values do not matter to a muxer.
fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Result<(), CodecError> {
    let mut last: i64 = 8;
    let mut next: i64 = 8;
    for _ in 0..size {
        if next != 0 {
            let delta = r.se("delta_scale")?;
            if !(-128..=127).contains(&delta) {
                return Err(CodecError::Invalid {
                    what: "delta_scale",
                    value: delta as u64,
                    bit_offset: r.bit_pos(),
                });
            }
            next = (last + delta + 256) % 256;
        }
        last = if next == 0 { last } else { next };
    }
    Ok(())
}

/// Parse an SPS NAL unit (header byte included, emulation prevention still in place).
pub fn parse_sps(nal: &[u8]) -> Result<Sps, CodecError> {
    match h264_type(nal) {
        Some(H264_SPS) => {}
        Some(t) => return Err(CodecError::WrongType { expected: "H.264 SPS (type 7)", found: t }),
        None => return Err(CodecError::Truncated { what: "nal_unit_header", bit_offset: 0 }),
    }
    let data = rbsp(&nal[1..]);
    let mut r = BitReader::new(&data);
    let profile_idc = r.u(8, "profile_idc")? as u8;
    let constraint_flags = r.u(8, "constraint_set_flags")? as u8;
    let level_idc = r.u(8, "level_idc")? as u8;
    // §7.4.2.1.1: seq_parameter_set_id in 0..=31.
    let seq_parameter_set_id = r.ue_max(31, "seq_parameter_set_id")?;
    let mut chroma_format_idc = 1u8;
    let mut bit_depth_luma = 8u8;
    let mut bit_depth_chroma = 8u8;
    let mut separate_colour_plane = false;
    if has_chroma_info(profile_idc) {
        chroma_format_idc = r.ue_max(3, "chroma_format_idc")? as u8;
        if chroma_format_idc == 3 {
            separate_colour_plane = r.flag("separate_colour_plane_flag")?;
        }
        // §7.4.2.1.1: bit_depth_*_minus8 in 0..=6.
        bit_depth_luma = 8 + r.ue_max(6, "bit_depth_luma_minus8")? as u8;
        bit_depth_chroma = 8 + r.ue_max(6, "bit_depth_chroma_minus8")? as u8;
        r.skip(1, "qpprime_y_zero_transform_bypass_flag")?;
        if r.flag("seq_scaling_matrix_present_flag")? {
            let lists = if chroma_format_idc != 3 { 8 } else { 12 };
            for i in 0..lists {
                if r.flag("seq_scaling_list_present_flag")? {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    r.ue_max(12, "log2_max_frame_num_minus4")?;
    match r.ue_max(2, "pic_order_cnt_type")? {
        0 => {
            r.ue_max(12, "log2_max_pic_order_cnt_lsb_minus4")?;
        }
        1 => {
            r.skip(1, "delta_pic_order_always_zero_flag")?;
            r.se("offset_for_non_ref_pic")?;
            r.se("offset_for_top_to_bottom_field")?;
            let n = r.ue_max(255, "num_ref_frames_in_pic_order_cnt_cycle")?;
            for _ in 0..n {
                r.se("offset_for_ref_frame")?;
            }
        }
        _ => {}
    }
    r.ue("max_num_ref_frames")?;
    r.skip(1, "gaps_in_frame_num_value_allowed_flag")?;
    let width_mbs = u64::from(r.ue("pic_width_in_mbs_minus1")?) + 1;
    let height_units = u64::from(r.ue("pic_height_in_map_units_minus1")?) + 1;
    let frame_mbs_only = r.flag("frame_mbs_only_flag")?;
    if !frame_mbs_only {
        r.skip(1, "mb_adaptive_frame_field_flag")?;
    }
    r.skip(1, "direct_8x8_inference_flag")?;
    let (mut crop_l, mut crop_r, mut crop_t, mut crop_b) = (0u64, 0u64, 0u64, 0u64);
    if r.flag("frame_cropping_flag")? {
        crop_l = r.ue("frame_crop_left_offset")?.into();
        crop_r = r.ue("frame_crop_right_offset")?.into();
        crop_t = r.ue("frame_crop_top_offset")?.into();
        crop_b = r.ue("frame_crop_bottom_offset")?.into();
    }
    // Equations 7-19 … 7-22: ChromaArrayType 0 (monochrome or separate planes) crops in luma units.
    let chroma_array_type = if separate_colour_plane { 0 } else { chroma_format_idc };
    let field_factor = if frame_mbs_only { 1 } else { 2 };
    let (crop_unit_x, crop_unit_y) = match chroma_array_type {
        0 => (1, field_factor),
        1 => (2, 2 * field_factor),
        2 => (2, field_factor),
        _ => (1, field_factor),
    };
    let full_w = width_mbs * 16;
    let full_h = height_units * 16 * field_factor;
    let width = full_w.checked_sub(crop_unit_x * (crop_l + crop_r));
    let height = full_h.checked_sub(crop_unit_y * (crop_t + crop_b));
    let (width, height) = match (width, height) {
        (Some(w), Some(h)) if w > 0 && h > 0 && w <= 65535 && h <= 65535 => (w as u32, h as u32),
        _ => {
            return Err(CodecError::Invalid {
                what: "picture size after cropping",
                value: full_w.max(full_h),
                bit_offset: r.bit_pos(),
            })
        }
    };
    // The VUI is optional for a muxer: a damaged VUI leaves the frame rate unknown.
    let frame_rate = if r.flag("vui_parameters_present_flag").unwrap_or(false) {
        vui_frame_rate(&mut r).ok().flatten()
    } else {
        None
    };
    Ok(Sps {
        profile_idc,
        constraint_flags,
        level_idc,
        seq_parameter_set_id,
        chroma_format_idc,
        bit_depth_luma,
        bit_depth_chroma,
        width,
        height,
        frame_rate,
    })
}

/// vui_parameters() up to timing_info (§E.1.1).
fn vui_frame_rate(r: &mut BitReader<'_>) -> Result<Option<f64>, CodecError> {
    if r.flag("aspect_ratio_info_present_flag")? {
        // Extended_SAR (Table E-1) carries sar_width and sar_height.
        if r.u(8, "aspect_ratio_idc")? == 255 {
            r.skip(32, "sar_width/sar_height")?;
        }
    }
    if r.flag("overscan_info_present_flag")? {
        r.skip(1, "overscan_appropriate_flag")?;
    }
    if r.flag("video_signal_type_present_flag")? {
        r.skip(4, "video_format/video_full_range_flag")?;
        if r.flag("colour_description_present_flag")? {
            r.skip(24, "colour_description")?;
        }
    }
    if r.flag("chroma_loc_info_present_flag")? {
        r.ue("chroma_sample_loc_type_top_field")?;
        r.ue("chroma_sample_loc_type_bottom_field")?;
    }
    if r.flag("timing_info_present_flag")? {
        let units = r.u(32, "num_units_in_tick")?;
        let scale = r.u(32, "time_scale")?;
        // §E.2.1: both shall be greater than 0; one frame is two ticks.
        if units > 0 && scale > 0 {
            return Ok(Some(scale as f64 / (2.0 * units as f64)));
        }
    }
    Ok(None)
}

/// The SPS and PPS NAL units found in an Annex B access unit, as slices of `au` (no copy).
pub fn parameter_sets(au: &Bytes) -> (Vec<Bytes>, Vec<Bytes>) {
    let mut sps = Vec::new();
    let mut pps = Vec::new();
    for nal in split_annexb(au) {
        match h264_type(nal) {
            Some(H264_SPS) => sps.push(au.slice_ref(nal)),
            Some(H264_PPS) => pps.push(au.slice_ref(nal)),
            _ => {}
        }
    }
    (sps, pps)
}

/// AVCDecoderConfigurationRecord (ISO/IEC 14496-15 §5.3.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcDecoderConfig {
    pub profile_idc: u8,
    pub profile_compatibility: u8,
    pub level_idc: u8,
    /// NAL length field size in bytes (1, 2 or 4); we always write 4.
    pub length_size: u8,
    pub sps: Vec<Bytes>,
    pub pps: Vec<Bytes>,
    /// (chroma_format, bit_depth_luma_minus8, bit_depth_chroma_minus8) for the high profiles.
    pub high_profile_ext: Option<(u8, u8, u8)>,
}

impl AvcDecoderConfig {
    /// Build from parameter sets (the first SPS gives profile and level).
    pub fn from_parameter_sets(sps: &[Bytes], pps: &[Bytes]) -> Result<Self, CodecError> {
        let first = sps.first().ok_or(CodecError::Truncated {
            what: "AVCDecoderConfigurationRecord needs an SPS",
            bit_offset: 0,
        })?;
        if pps.is_empty() {
            return Err(CodecError::Truncated {
                what: "AVCDecoderConfigurationRecord needs a PPS",
                bit_offset: 0,
            });
        }
        let parsed = parse_sps(first)?;
        // §5.3.3.1.1: at most 31 SPS (5 bits) and 255 PPS; each length fits 16 bits.
        if sps.len() > 31 || pps.len() > 255 || sps.iter().chain(pps).any(|n| n.len() > 0xffff) {
            return Err(CodecError::Invalid {
                what: "parameter set count or length",
                value: (sps.len() + pps.len()) as u64,
                bit_offset: 0,
            });
        }
        // §5.3.3.1.2: the chroma/bit-depth extension follows for profiles 100, 110, 122, 144.
        let high_profile_ext = matches!(parsed.profile_idc, 100 | 110 | 122 | 144).then_some((
            parsed.chroma_format_idc,
            parsed.bit_depth_luma - 8,
            parsed.bit_depth_chroma - 8,
        ));
        Ok(AvcDecoderConfig {
            profile_idc: parsed.profile_idc,
            profile_compatibility: parsed.constraint_flags,
            level_idc: parsed.level_idc,
            length_size: 4,
            sps: sps.to_vec(),
            pps: pps.to_vec(),
            high_profile_ext,
        })
    }

    /// Serialize (§5.3.3.1.1).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(11 + self.sps.iter().chain(&self.pps).map(|n| n.len() + 2).sum::<usize>());
        out.push(1); // configurationVersion
        out.push(self.profile_idc);
        out.push(self.profile_compatibility);
        out.push(self.level_idc);
        out.push(0xfc | (self.length_size.clamp(1, 4) - 1)); // reserved '111111' + lengthSizeMinusOne
        out.push(0xe0 | (self.sps.len().min(31) as u8)); // reserved '111' + numOfSequenceParameterSets
        for s in self.sps.iter().take(31) {
            out.extend_from_slice(&(s.len() as u16).to_be_bytes());
            out.extend_from_slice(s);
        }
        out.push(self.pps.len().min(255) as u8);
        for p in self.pps.iter().take(255) {
            out.extend_from_slice(&(p.len() as u16).to_be_bytes());
            out.extend_from_slice(p);
        }
        if let Some((chroma, luma8, chroma8)) = self.high_profile_ext {
            out.push(0xfc | (chroma & 3));
            out.push(0xf8 | (luma8 & 7));
            out.push(0xf8 | (chroma8 & 7));
            out.push(0); // numOfSequenceParameterSetExt
        }
        out
    }

    /// Parse a record (as found in an FLV sequence header or an `avcC` box).
    pub fn parse(buf: &[u8]) -> Result<Self, CodecError> {
        let mut r = super::bits::ByteTaker::new(buf);
        let head = r.take(6, "AVCDecoderConfigurationRecord header")?;
        if head[0] != 1 {
            return Err(CodecError::Invalid {
                what: "configurationVersion",
                value: head[0].into(),
                bit_offset: 0,
            });
        }
        let length_size = (head[4] & 3) + 1;
        if length_size == 3 {
            // §5.3.3.1.2: the value 2 (3 bytes) is not allowed.
            return Err(CodecError::Invalid { what: "lengthSizeMinusOne", value: 2, bit_offset: 32 });
        }
        let mut sps = Vec::new();
        for _ in 0..(head[5] & 0x1f) {
            let l = r.take(2, "sequenceParameterSetLength")?;
            sps.push(r.take(usize::from(u16::from_be_bytes([l[0], l[1]])), "sequenceParameterSetNALUnit")?);
        }
        let n = r.take(1, "numOfPictureParameterSets")?[0];
        let mut pps = Vec::new();
        for _ in 0..n {
            let l = r.take(2, "pictureParameterSetLength")?;
            pps.push(r.take(usize::from(u16::from_be_bytes([l[0], l[1]])), "pictureParameterSetNALUnit")?);
        }
        let high_profile_ext = if matches!(head[1], 100 | 110 | 122 | 144) && r.remaining() >= 3 {
            let t = r.rest();
            Some((t[0] & 3, t[1] & 7, t[2] & 7))
        } else {
            None
        };
        Ok(AvcDecoderConfig {
            profile_idc: head[1],
            profile_compatibility: head[2],
            level_idc: head[3],
            length_size,
            sps,
            pps,
            high_profile_ext,
        })
    }

    /// RFC 6381 codec string, e.g. `avc1.64001f`.
    pub fn codec_string(&self) -> String {
        format!("avc1.{:02x}{:02x}{:02x}", self.profile_idc, self.profile_compatibility, self.level_idc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// x264 `-profile:v main -level 4.0` SPS for 1920x1080 at 30 fps (coded 1088, cropped;
    /// emulation-prevention bytes inside the VUI timing).
    const HD_SPS: [u8; 26] = [
        0x67, 0x4d, 0x40, 0x28, 0xec, 0xa0, 0x3c, 0x01, 0x13, 0xf2, 0xe0, 0x22, 0x00, 0x00, 0x03, 0x00, 0x02,
        0x00, 0x00, 0x03, 0x00, 0x78, 0x1e, 0x30, 0x63, 0x2c,
    ];

    fn golden_au() -> Bytes {
        Bytes::from(std::fs::read("testdata/ffmpeg_h264_320x240.h264").unwrap())
    }

    #[test]
    fn parses_x264_sps_of_golden_file() {
        let au = golden_au();
        let (sps, pps) = parameter_sets(&au);
        assert!(!sps.is_empty() && !pps.is_empty());
        let s = parse_sps(&sps[0]).unwrap();
        assert_eq!((s.width, s.height), (320, 240));
        assert_eq!(s.profile_idc, 100, "encoded with -profile:v high");
        assert_eq!(s.chroma_format_idc, 1);
        assert_eq!(s.bit_depth_luma, 8);
        assert_eq!(s.frame_rate, Some(25.0));
    }

    #[test]
    fn parses_cropped_sps_1920x1080() {
        let s = parse_sps(&HD_SPS).unwrap();
        assert_eq!((s.profile_idc, s.constraint_flags, s.level_idc), (77, 0x40, 40));
        assert_eq!((s.width, s.height), (1920, 1080));
        assert_eq!(s.frame_rate, Some(30.0));
    }

    #[test]
    fn builds_avcc_with_known_layout() {
        let sps = Bytes::from_static(&HD_SPS);
        let pps = Bytes::from_static(&[0x68, 0xeb, 0xe3, 0xcb, 0x20]);
        let cfg =
            AvcDecoderConfig::from_parameter_sets(std::slice::from_ref(&sps), std::slice::from_ref(&pps))
                .unwrap();
        let mut expect = vec![0x01, 0x4d, 0x40, 0x28, 0xff, 0xe1, 0x00, 0x1a];
        expect.extend_from_slice(&sps);
        expect.extend_from_slice(&[0x01, 0x00, 0x05, 0x68, 0xeb, 0xe3, 0xcb, 0x20]);
        assert_eq!(cfg.to_bytes(), expect);
        assert_eq!(AvcDecoderConfig::parse(&expect).unwrap(), cfg);
        assert_eq!(cfg.codec_string(), "avc1.4d4028");
    }

    #[test]
    fn high_profile_avcc_carries_chroma_extension() {
        let au = golden_au();
        let (sps, pps) = parameter_sets(&au);
        let cfg = AvcDecoderConfig::from_parameter_sets(&sps[..1], &pps[..1]).unwrap();
        let b = cfg.to_bytes();
        assert_eq!(&b[b.len() - 4..], &[0xfd, 0xf8, 0xf8, 0x00]);
        assert_eq!(AvcDecoderConfig::parse(&b).unwrap(), cfg);
    }

    #[test]
    fn rejects_wrong_type_and_truncation_at_every_length() {
        assert!(matches!(parse_sps(&[0x68, 0, 0]), Err(CodecError::WrongType { found: 8, .. })));
        for n in 0..9 {
            assert!(parse_sps(&HD_SPS[..n]).is_err(), "prefix of {n} bytes");
        }
        for n in 0..20 {
            let _ = AvcDecoderConfig::parse(&[1u8; 20][..n]);
        }
    }
}
