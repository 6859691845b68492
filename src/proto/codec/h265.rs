//! H.265 / HEVC: VPS/SPS/PPS collection, SPS parsing and the HEVCDecoderConfigurationRecord.
//!
//! What belongs here: reading an SPS (ITU-T H.265 §7.3.2.2.1) far enough for width, height,
//! profile, tier, level, chroma format and bit depth, including profile_tier_level()
//! (§7.3.3); collecting parameter sets from an Annex B access unit; building and parsing the
//! HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 §8.3.3.1). What does not: start-code scanning
//! and IRAP detection (`nal`), containers (`proto::mux`).
//!
//! Every parser is total (fuzzed by `fuzz/fuzz_targets/h265.rs`).

use bytes::Bytes;

use super::bits::{rbsp, BitReader, CodecError};
use super::nal::{h265_type, split_annexb, H265_PPS, H265_SPS, H265_VPS};

/// general_profile_tier_level fields (§7.3.3), as the hvcC record repeats them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProfileTierLevel {
    pub profile_space: u8,
    pub tier_flag: bool,
    pub profile_idc: u8,
    pub profile_compatibility_flags: u32,
    /// The 48 bits from general_progressive_source_flag on.
    pub constraint_indicator_flags: u64,
    /// 30 × the level number (e.g. 93 = level 3.1).
    pub level_idc: u8,
}

/// What an SPS tells a muxer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sps {
    pub ptl: ProfileTierLevel,
    pub max_sub_layers: u8,
    pub temporal_id_nesting: bool,
    pub chroma_format_idc: u8,
    pub bit_depth_luma: u8,
    pub bit_depth_chroma: u8,
    /// Width and height after the conformance window (§7.4.3.2.1, SubWidthC/SubHeightC Table 6-1).
    pub width: u32,
    pub height: u32,
}

/// profile_tier_level(1, maxNumSubLayersMinus1) (§7.3.3).
fn profile_tier_level(
    r: &mut BitReader<'_>,
    max_sub_layers_minus1: u8,
) -> Result<ProfileTierLevel, CodecError> {
    let profile_space = r.u(2, "general_profile_space")? as u8;
    let tier_flag = r.flag("general_tier_flag")?;
    let profile_idc = r.u(5, "general_profile_idc")? as u8;
    let profile_compatibility_flags = r.u(32, "general_profile_compatibility_flag")? as u32;
    let constraint_indicator_flags = r.u(48, "general_constraint_flags")?;
    let level_idc = r.u(8, "general_level_idc")? as u8;
    let n = usize::from(max_sub_layers_minus1);
    let mut profile_present = [false; 8];
    let mut level_present = [false; 8];
    for i in 0..n {
        profile_present[i] = r.flag("sub_layer_profile_present_flag")?;
        level_present[i] = r.flag("sub_layer_level_present_flag")?;
    }
    if n > 0 {
        // reserved_zero_2bits for i in maxNumSubLayersMinus1..8
        r.skip(2 * (8 - n), "reserved_zero_2bits")?;
    }
    for i in 0..n {
        if profile_present[i] {
            r.skip(88, "sub_layer profile")?;
        }
        if level_present[i] {
            r.skip(8, "sub_layer_level_idc")?;
        }
    }
    Ok(ProfileTierLevel {
        profile_space,
        tier_flag,
        profile_idc,
        profile_compatibility_flags,
        constraint_indicator_flags,
        level_idc,
    })
}

/// Parse an SPS NAL unit (2-byte header included, emulation prevention still in place).
pub fn parse_sps(nal: &[u8]) -> Result<Sps, CodecError> {
    if nal.len() < 2 {
        return Err(CodecError::Truncated { what: "nal_unit_header", bit_offset: nal.len() * 8 });
    }
    let t = h265_type(nal).unwrap_or(0);
    if t != H265_SPS {
        return Err(CodecError::WrongType { expected: "H.265 SPS (type 33)", found: t });
    }
    let data = rbsp(&nal[2..]);
    let mut r = BitReader::new(&data);
    r.skip(4, "sps_video_parameter_set_id")?;
    // §7.4.3.2.1: sps_max_sub_layers_minus1 in 0..=6.
    let at = r.bit_pos();
    let max_sub_layers_minus1 = r.u(3, "sps_max_sub_layers_minus1")? as u8;
    if max_sub_layers_minus1 > 6 {
        return Err(CodecError::Invalid {
            what: "sps_max_sub_layers_minus1",
            value: max_sub_layers_minus1.into(),
            bit_offset: at,
        });
    }
    let temporal_id_nesting = r.flag("sps_temporal_id_nesting_flag")?;
    let ptl = profile_tier_level(&mut r, max_sub_layers_minus1)?;
    r.ue_max(15, "sps_seq_parameter_set_id")?;
    let chroma_format_idc = r.ue_max(3, "chroma_format_idc")? as u8;
    let mut separate_colour_plane = false;
    if chroma_format_idc == 3 {
        separate_colour_plane = r.flag("separate_colour_plane_flag")?;
    }
    let w = u64::from(r.ue("pic_width_in_luma_samples")?);
    let h = u64::from(r.ue("pic_height_in_luma_samples")?);
    let (mut cl, mut cr, mut ct, mut cb) = (0u64, 0u64, 0u64, 0u64);
    if r.flag("conformance_window_flag")? {
        cl = r.ue("conf_win_left_offset")?.into();
        cr = r.ue("conf_win_right_offset")?.into();
        ct = r.ue("conf_win_top_offset")?.into();
        cb = r.ue("conf_win_bottom_offset")?.into();
    }
    // §7.4.3.2.1: bit depths 8..=16 (minus8 in 0..=8).
    let bit_depth_luma = 8 + r.ue_max(8, "bit_depth_luma_minus8")? as u8;
    let bit_depth_chroma = 8 + r.ue_max(8, "bit_depth_chroma_minus8")? as u8;
    // Table 6-1: ChromaArrayType 0 has SubWidthC = SubHeightC = 1.
    let (sub_w, sub_h) = match (chroma_format_idc, separate_colour_plane) {
        (1, _) => (2, 2),
        (2, _) => (2, 1),
        _ => (1, 1),
    };
    let width = w.checked_sub(sub_w * (cl + cr));
    let height = h.checked_sub(sub_h * (ct + cb));
    let (width, height) = match (width, height) {
        (Some(a), Some(b)) if a > 0 && b > 0 && a <= 65535 && b <= 65535 => (a as u32, b as u32),
        _ => {
            return Err(CodecError::Invalid {
                what: "picture size after conformance window",
                value: w.max(h),
                bit_offset: r.bit_pos(),
            })
        }
    };
    Ok(Sps {
        ptl,
        max_sub_layers: max_sub_layers_minus1 + 1,
        temporal_id_nesting,
        chroma_format_idc,
        bit_depth_luma,
        bit_depth_chroma,
        width,
        height,
    })
}

/// The VPS, SPS and PPS NAL units of an Annex B access unit, as slices of `au` (no copy).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParameterSets {
    pub vps: Vec<Bytes>,
    pub sps: Vec<Bytes>,
    pub pps: Vec<Bytes>,
}

/// Collect parameter sets from an access unit.
pub fn parameter_sets(au: &Bytes) -> ParameterSets {
    let mut ps = ParameterSets::default();
    for nal in split_annexb(au) {
        match h265_type(nal) {
            Some(H265_VPS) => ps.vps.push(au.slice_ref(nal)),
            Some(H265_SPS) => ps.sps.push(au.slice_ref(nal)),
            Some(H265_PPS) => ps.pps.push(au.slice_ref(nal)),
            _ => {}
        }
    }
    ps
}

/// HEVCDecoderConfigurationRecord (ISO/IEC 14496-15 §8.3.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HevcDecoderConfig {
    pub ptl: ProfileTierLevel,
    pub min_spatial_segmentation_idc: u16,
    pub parallelism_type: u8,
    pub chroma_format_idc: u8,
    pub bit_depth_luma_minus8: u8,
    pub bit_depth_chroma_minus8: u8,
    pub avg_frame_rate: u16,
    pub constant_frame_rate: u8,
    pub num_temporal_layers: u8,
    pub temporal_id_nested: bool,
    /// NAL length field size in bytes; we always write 4.
    pub length_size: u8,
    /// (array_completeness, NAL_unit_type, NAL units) per array.
    pub arrays: Vec<(bool, u8, Vec<Bytes>)>,
}

impl HevcDecoderConfig {
    /// Build from parameter sets; the first SPS gives profile, level, chroma and bit depth.
    pub fn from_parameter_sets(ps: &ParameterSets) -> Result<Self, CodecError> {
        if ps.vps.is_empty() || ps.sps.is_empty() || ps.pps.is_empty() {
            return Err(CodecError::Truncated {
                what: "HEVCDecoderConfigurationRecord needs VPS, SPS and PPS",
                bit_offset: 0,
            });
        }
        if [&ps.vps, &ps.sps, &ps.pps].iter().any(|v| v.len() > 0xffff || v.iter().any(|n| n.len() > 0xffff))
        {
            return Err(CodecError::Invalid {
                what: "parameter set count or length",
                value: 0,
                bit_offset: 0,
            });
        }
        let sps = parse_sps(&ps.sps[0])?;
        // §8.3.3.1.2: bitDepth{Luma,Chroma}Minus8 are 3-bit fields; H.265 allows up to 16-bit
        // (minus8 = 8), which the record cannot express (found by fuzzing).
        if sps.bit_depth_luma > 15 || sps.bit_depth_chroma > 15 {
            return Err(CodecError::Invalid {
                what: "bit depth not representable in HEVCDecoderConfigurationRecord",
                value: sps.bit_depth_luma.max(sps.bit_depth_chroma).into(),
                bit_offset: 0,
            });
        }
        Ok(HevcDecoderConfig {
            ptl: sps.ptl,
            min_spatial_segmentation_idc: 0,
            parallelism_type: 0,
            chroma_format_idc: sps.chroma_format_idc,
            bit_depth_luma_minus8: sps.bit_depth_luma - 8,
            bit_depth_chroma_minus8: sps.bit_depth_chroma - 8,
            avg_frame_rate: 0,
            constant_frame_rate: 0,
            num_temporal_layers: sps.max_sub_layers,
            temporal_id_nested: sps.temporal_id_nesting,
            length_size: 4,
            // §8.3.3.1.2: array_completeness 1 = all parameter sets of that type are in the
            // record (the 'hvc1' sample entry requires it).
            arrays: vec![
                (true, H265_VPS, ps.vps.clone()),
                (true, H265_SPS, ps.sps.clone()),
                (true, H265_PPS, ps.pps.clone()),
            ],
        })
    }

    /// Serialize (§8.3.3.1.1).
    pub fn to_bytes(&self) -> Vec<u8> {
        let size: usize =
            self.arrays.iter().map(|(_, _, n)| 3 + n.iter().map(|x| x.len() + 2).sum::<usize>()).sum();
        let mut out = Vec::with_capacity(23 + size);
        let p = &self.ptl;
        out.push(1); // configurationVersion
        out.push((p.profile_space & 3) << 6 | u8::from(p.tier_flag) << 5 | (p.profile_idc & 0x1f));
        out.extend_from_slice(&p.profile_compatibility_flags.to_be_bytes());
        out.extend_from_slice(&p.constraint_indicator_flags.to_be_bytes()[2..]);
        out.push(p.level_idc);
        out.extend_from_slice(&(0xf000 | (self.min_spatial_segmentation_idc & 0x0fff)).to_be_bytes());
        out.push(0xfc | (self.parallelism_type & 3));
        out.push(0xfc | (self.chroma_format_idc & 3));
        out.push(0xf8 | (self.bit_depth_luma_minus8 & 7));
        out.push(0xf8 | (self.bit_depth_chroma_minus8 & 7));
        out.extend_from_slice(&self.avg_frame_rate.to_be_bytes());
        out.push(
            (self.constant_frame_rate & 3) << 6
                | (self.num_temporal_layers & 7) << 3
                | u8::from(self.temporal_id_nested) << 2
                | (self.length_size.clamp(1, 4) - 1),
        );
        out.push(self.arrays.len().min(255) as u8);
        for (complete, t, nals) in self.arrays.iter().take(255) {
            out.push(u8::from(*complete) << 7 | (t & 0x3f));
            out.extend_from_slice(&(nals.len().min(0xffff) as u16).to_be_bytes());
            for n in nals.iter().take(0xffff) {
                out.extend_from_slice(&(n.len() as u16).to_be_bytes());
                out.extend_from_slice(n);
            }
        }
        out
    }

    /// Parse a record (FLV sequence start, `hvcC` box).
    pub fn parse(buf: &[u8]) -> Result<Self, CodecError> {
        let mut r = super::bits::ByteTaker::new(buf);
        let h = r.take(23, "HEVCDecoderConfigurationRecord header")?;
        if h[0] != 1 {
            return Err(CodecError::Invalid {
                what: "configurationVersion",
                value: h[0].into(),
                bit_offset: 0,
            });
        }
        let mut cif = [0u8; 8];
        cif[2..].copy_from_slice(&h[6..12]);
        let ptl = ProfileTierLevel {
            profile_space: h[1] >> 6,
            tier_flag: h[1] & 0x20 != 0,
            profile_idc: h[1] & 0x1f,
            profile_compatibility_flags: u32::from_be_bytes([h[2], h[3], h[4], h[5]]),
            constraint_indicator_flags: u64::from_be_bytes(cif),
            level_idc: h[12],
        };
        let n_arrays = h[22];
        let mut arrays = Vec::new();
        for _ in 0..n_arrays {
            let a = r.take(3, "array header")?;
            let count = u16::from_be_bytes([a[1], a[2]]);
            let mut nals = Vec::new();
            for _ in 0..count {
                let l = r.take(2, "nalUnitLength")?;
                nals.push(r.take(usize::from(u16::from_be_bytes([l[0], l[1]])), "nalUnit")?);
            }
            arrays.push((a[0] & 0x80 != 0, a[0] & 0x3f, nals));
        }
        Ok(HevcDecoderConfig {
            ptl,
            min_spatial_segmentation_idc: u16::from_be_bytes([h[13], h[14]]) & 0x0fff,
            parallelism_type: h[15] & 3,
            chroma_format_idc: h[16] & 3,
            bit_depth_luma_minus8: h[17] & 7,
            bit_depth_chroma_minus8: h[18] & 7,
            avg_frame_rate: u16::from_be_bytes([h[19], h[20]]),
            constant_frame_rate: h[21] >> 6,
            num_temporal_layers: (h[21] >> 3) & 7,
            temporal_id_nested: h[21] & 4 != 0,
            length_size: (h[21] & 3) + 1,
            arrays,
        })
    }

    /// RFC 6381 / ISO/IEC 14496-15 Annex E codec string, e.g. `hvc1.1.6.L93.B0`.
    pub fn codec_string(&self) -> String {
        let p = &self.ptl;
        let space = match p.profile_space {
            1 => "A",
            2 => "B",
            3 => "C",
            _ => "",
        };
        // The compatibility flags in reverse bit order, hex without leading zeros.
        let compat = p.profile_compatibility_flags.reverse_bits();
        let mut s = format!(
            "hvc1.{space}{}.{:X}.{}{}",
            p.profile_idc,
            compat,
            if p.tier_flag { 'H' } else { 'L' },
            p.level_idc
        );
        let bytes = p.constraint_indicator_flags.to_be_bytes();
        let cons = &bytes[2..];
        let last = cons.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        for b in &cons[..last.max(1)] {
            s.push_str(&format!(".{b:X}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::codec::nal::h265_is_keyframe;

    fn golden() -> Bytes {
        Bytes::from(std::fs::read("testdata/ffmpeg_h265_320x240.hevc").unwrap())
    }

    #[test]
    fn parses_x265_sps_of_golden_file() {
        let ps = parameter_sets(&golden());
        assert!(h265_is_keyframe(&golden()));
        assert!(!ps.vps.is_empty() && !ps.pps.is_empty());
        let s = parse_sps(&ps.sps[0]).unwrap();
        assert_eq!((s.width, s.height), (320, 240));
        assert_eq!(s.ptl.profile_idc, 1, "Main profile");
        assert!(!s.ptl.tier_flag);
        assert_eq!(s.chroma_format_idc, 1);
        assert_eq!((s.bit_depth_luma, s.bit_depth_chroma), (8, 8));
    }

    /// x265 (`level-idc=4`, which also selects the High tier) SPS and VPS for 1920x1080 Main
    /// (coded 1088 with a conformance window; emulation-prevention bytes inside).
    const HD_SPS: &[u8] = &[
        0x42, 0x01, 0x01, 0x21, 0x60, 0x00, 0x00, 0x03, 0x00, 0x90, 0x00, 0x00, 0x03, 0x00, 0x00, 0x03, 0x00,
        0x78, 0xa0, 0x03, 0xc0, 0x80, 0x10, 0xe5, 0x96, 0x56, 0x69, 0x24, 0xca, 0xf0, 0x16, 0x80, 0x80, 0x00,
        0x00, 0x03, 0x00, 0x80, 0x00, 0x00, 0x0f, 0x04,
    ];
    const HD_VPS: &[u8] = &[
        0x40, 0x01, 0x0c, 0x01, 0xff, 0xff, 0x21, 0x60, 0x00, 0x00, 0x03, 0x00, 0x90, 0x00, 0x00, 0x03, 0x00,
        0x00, 0x03, 0x00, 0x78, 0x95, 0x98, 0x09,
    ];

    #[test]
    fn parses_hd_sps_with_conformance_window() {
        let s = parse_sps(HD_SPS).unwrap();
        assert_eq!((s.width, s.height), (1920, 1080));
        assert_eq!(s.ptl.level_idc, 120);
        assert!(s.ptl.tier_flag);
        assert_eq!(s.ptl.profile_idc, 1);
        assert_eq!(s.ptl.profile_compatibility_flags, 0x6000_0000);
        assert_eq!(s.ptl.constraint_indicator_flags, 0x9000_0000_0000);
    }

    #[test]
    fn hvcc_layout_matches_known_bytes() {
        let ps = ParameterSets {
            vps: vec![Bytes::from_static(HD_VPS)],
            sps: vec![Bytes::from_static(HD_SPS)],
            pps: vec![Bytes::from_static(&[0x44, 0x01, 0xc1, 0x72, 0xb4, 0x62, 0x40])],
        };
        let cfg = HevcDecoderConfig::from_parameter_sets(&ps).unwrap();
        let b = cfg.to_bytes();
        let head = [
            0x01, 0x21, 0x60, 0x00, 0x00, 0x00, 0x90, 0x00, 0x00, 0x00, 0x00, 0x00, 0x78, 0xf0, 0x00, 0xfc,
            0xfd, 0xf8, 0xf8, 0x00, 0x00, 0x0f, 0x03,
        ];
        assert_eq!(&b[..23], &head);
        assert_eq!(&b[23..30], &[0xa0, 0x00, 0x01, 0x00, HD_VPS.len() as u8, 0x40, 0x01]);
        assert_eq!(b.len(), 23 + 3 * 3 + 3 * 2 + HD_VPS.len() + HD_SPS.len() + 7);
        assert_eq!(HevcDecoderConfig::parse(&b).unwrap(), cfg);
        assert_eq!(cfg.codec_string(), "hvc1.1.6.H120.90");
    }

    #[test]
    fn hostile_inputs_are_errors() {
        assert!(matches!(parse_sps(&[0x40, 0x01, 0]), Err(CodecError::WrongType { found: 32, .. })));
        // Up to the end of profile_tier_level every prefix is truncated; later ones must not panic.
        for n in 0..HD_SPS.len() {
            let r = parse_sps(&HD_SPS[..n]);
            assert!(n > 20 || r.is_err(), "prefix {n}");
        }
        for n in 0..40 {
            let _ = HevcDecoderConfig::parse(&[1u8; 40][..n]);
        }
    }
}
