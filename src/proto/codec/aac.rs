//! AAC: ADTS header parsing and conversion to and from the AudioSpecificConfig.
//!
//! What belongs here: the ADTS fixed and variable headers (ISO/IEC 14496-3 §1.A.2.2.1, same layout
//! as ISO/IEC 13818-7 §6.2), the AudioSpecificConfig (ISO/IEC 14496-3 §1.6.2.1) for the
//! GASpecificConfig case (§4.4.1), and the frame duration. What does not: PES or FLV framing
//! (`proto::ps`, `proto::mux`).
//!
//! Every parser is total (fuzzed by `fuzz/fuzz_targets/aac.rs`).

use super::bits::{BitReader, CodecError};

/// samplingFrequencyIndex → Hz (ISO/IEC 14496-3 §1.6.3.3, Table 1.18).
pub const SAMPLE_RATES: [u32; 13] =
    [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];

/// Samples per AAC frame (raw_data_block) for AAC-LC (frameLengthFlag = 0).
pub const SAMPLES_PER_FRAME: u32 = 1024;

/// A parsed ADTS header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdtsHeader {
    /// MPEG-4 audioObjectType = profile_ObjectType + 1 (2 = AAC-LC).
    pub object_type: u8,
    pub sampling_index: u8,
    pub sample_rate: u32,
    pub channel_config: u8,
    /// 7 without CRC, 9 with (protection_absent = 0).
    pub header_len: usize,
    /// aac_frame_length: the whole frame, header included.
    pub frame_len: usize,
    /// number_of_raw_data_blocks_in_frame + 1.
    pub raw_blocks: u8,
}

impl AdtsHeader {
    /// Parse the header at the start of `buf` (§1.A.2.2.1). `buf` may hold more than one frame.
    pub fn parse(buf: &[u8]) -> Result<Self, CodecError> {
        if buf.len() < 7 {
            return Err(CodecError::Truncated {
                what: "adts_fixed_header + adts_variable_header",
                bit_offset: buf.len() * 8,
            });
        }
        // syncword '1111 1111 1111'
        if buf[0] != 0xff || buf[1] & 0xf0 != 0xf0 {
            return Err(CodecError::Invalid {
                what: "ADTS syncword",
                value: u64::from(u16::from_be_bytes([buf[0], buf[1]]) >> 4),
                bit_offset: 0,
            });
        }
        // layer shall be '00' (§1.A.3.2.1).
        if buf[1] & 0x06 != 0 {
            return Err(CodecError::Invalid {
                what: "ADTS layer",
                value: u64::from((buf[1] >> 1) & 3),
                bit_offset: 13,
            });
        }
        let protection_absent = buf[1] & 1 == 1;
        let object_type = (buf[2] >> 6) + 1;
        let sampling_index = (buf[2] >> 2) & 0x0f;
        let sample_rate = *SAMPLE_RATES.get(usize::from(sampling_index)).ok_or(CodecError::Invalid {
            what: "sampling_frequency_index",
            value: sampling_index.into(),
            bit_offset: 18,
        })?;
        let channel_config = ((buf[2] & 1) << 2) | (buf[3] >> 6);
        let frame_len =
            (usize::from(buf[3] & 3) << 11) | (usize::from(buf[4]) << 3) | usize::from(buf[5] >> 5);
        let header_len = if protection_absent { 7 } else { 9 };
        if frame_len < header_len {
            return Err(CodecError::Invalid {
                what: "aac_frame_length",
                value: frame_len as u64,
                bit_offset: 30,
            });
        }
        Ok(AdtsHeader {
            object_type,
            sampling_index,
            sample_rate,
            channel_config,
            header_len,
            frame_len,
            raw_blocks: (buf[6] & 3) + 1,
        })
    }

    /// The equivalent AudioSpecificConfig.
    pub fn audio_specific_config(&self) -> AudioSpecificConfig {
        AudioSpecificConfig {
            object_type: self.object_type,
            sampling_index: self.sampling_index,
            sample_rate: self.sample_rate,
            channel_config: self.channel_config,
        }
    }

    /// Duration of this frame in 90 kHz ticks (1024 samples per raw data block).
    pub fn duration_90k(&self) -> i64 {
        i64::from(self.raw_blocks) * i64::from(SAMPLES_PER_FRAME) * 90_000
            / i64::from(self.sample_rate.max(1))
    }
}

/// AudioSpecificConfig for GASpecificConfig object types (AAC Main/LC/SSR/LTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioSpecificConfig {
    pub object_type: u8,
    /// 15 means an explicit `sample_rate`.
    pub sampling_index: u8,
    pub sample_rate: u32,
    pub channel_config: u8,
}

impl AudioSpecificConfig {
    /// Serialize (§1.6.2.1): 5-bit object type, 4-bit index (+24-bit rate when 15), 4-bit
    /// channels, GASpecificConfig with frameLengthFlag, dependsOnCoreCoder, extensionFlag all 0.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bits: u64 = 0;
        let mut n = 0u32;
        let mut put = |v: u64, w: u32| {
            bits = (bits << w) | (v & ((1 << w) - 1));
            n += w;
        };
        put(u64::from(self.object_type.min(30)), 5);
        put(u64::from(self.sampling_index), 4);
        if self.sampling_index == 15 {
            put(u64::from(self.sample_rate), 24);
        }
        put(u64::from(self.channel_config), 4);
        put(0, 3);
        let pad = (8 - n % 8) % 8;
        let bits = bits << pad;
        let total = ((n + pad) / 8) as usize;
        bits.to_be_bytes()[8 - total..].to_vec()
    }

    /// Parse (§1.6.2.1), including the audioObjectType escape (31 → 32 + 6 bits).
    pub fn parse(buf: &[u8]) -> Result<Self, CodecError> {
        let mut r = BitReader::new(buf);
        let mut object_type = r.u(5, "audioObjectType")? as u8;
        if object_type == 31 {
            object_type = 32 + r.u(6, "audioObjectTypeExt")? as u8;
        }
        let sampling_index = r.u(4, "samplingFrequencyIndex")? as u8;
        let sample_rate = if sampling_index == 15 {
            r.u(24, "samplingFrequency")? as u32
        } else {
            *SAMPLE_RATES.get(usize::from(sampling_index)).ok_or(CodecError::Invalid {
                what: "samplingFrequencyIndex",
                value: sampling_index.into(),
                bit_offset: 5,
            })?
        };
        if sample_rate == 0 {
            return Err(CodecError::Invalid { what: "samplingFrequency", value: 0, bit_offset: 9 });
        }
        let channel_config = r.u(4, "channelConfiguration")? as u8;
        Ok(AudioSpecificConfig { object_type, sampling_index, sample_rate, channel_config })
    }

    /// Channel count for channelConfiguration 1..=7 (Table 1.19); 0 (in-band PCE) is reported as 2.
    pub fn channels(&self) -> u8 {
        match self.channel_config {
            1..=6 => self.channel_config,
            7 => 8,
            _ => 2,
        }
    }

    /// A 7-byte ADTS header (no CRC) for a raw frame of `payload_len` bytes (§1.A.2.2.1).
    /// `None` when the config cannot be expressed in ADTS (object type > 4, explicit rate,
    /// frame longer than 13 bits).
    pub fn adts_header(&self, payload_len: usize) -> Option<[u8; 7]> {
        let len = payload_len + 7;
        if !(1..=4).contains(&self.object_type) || self.sampling_index > 12 || len > 0x1fff {
            return None;
        }
        let profile = self.object_type - 1;
        let ch = self.channel_config & 7;
        Some([
            0xff,
            0xf1, // MPEG-4, layer 0, protection_absent
            (profile << 6) | (self.sampling_index << 2) | (ch >> 2),
            ((ch & 3) << 6) | ((len >> 11) as u8 & 3),
            (len >> 3) as u8,
            (((len & 7) as u8) << 5) | 0x1f, // buffer fullness 0x7ff (VBR)
            0xfc,
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_frame_of_golden_adts_file() {
        let data = std::fs::read("testdata/ffmpeg_aac_48k_mono.aac").unwrap();
        let mut pos = 0;
        let mut frames = 0;
        while pos < data.len() {
            let h = AdtsHeader::parse(&data[pos..]).unwrap();
            assert_eq!((h.object_type, h.sample_rate, h.channel_config), (2, 48000, 1));
            assert_eq!(h.duration_90k(), 1920);
            pos += h.frame_len;
            frames += 1;
        }
        assert_eq!(pos, data.len());
        assert!(frames > 90, "2 s at 48 kHz is ~94 frames, got {frames}");
    }

    #[test]
    fn adts_to_asc_and_back_is_exact() {
        // AAC-LC 44.1 kHz stereo: ASC 0x12 0x10 (well-known).
        let asc = AudioSpecificConfig::parse(&[0x12, 0x10]).unwrap();
        assert_eq!((asc.object_type, asc.sample_rate, asc.channel_config), (2, 44100, 2));
        assert_eq!(asc.to_bytes(), vec![0x12, 0x10]);
        let hdr = asc.adts_header(100).unwrap();
        assert_eq!(hdr, [0xff, 0xf1, 0x50, 0x80, 0x0d, 0x7f, 0xfc]);
        let parsed = AdtsHeader::parse(&hdr).unwrap();
        assert_eq!(parsed.frame_len, 107);
        assert_eq!(parsed.audio_specific_config(), asc);
        // 16 kHz mono (GB devices): 0x14 0x08.
        let asc16 =
            AudioSpecificConfig { object_type: 2, sampling_index: 8, sample_rate: 16000, channel_config: 1 };
        assert_eq!(asc16.to_bytes(), vec![0x14, 0x08]);
    }

    #[test]
    fn explicit_rate_and_escape_object_type_parse() {
        let asc =
            AudioSpecificConfig { object_type: 2, sampling_index: 15, sample_rate: 12345, channel_config: 1 };
        let b = asc.to_bytes();
        assert_eq!(b.len(), 5);
        assert_eq!(AudioSpecificConfig::parse(&b).unwrap(), asc);
        assert!(asc.adts_header(10).is_none());
        // object type 31 escape → 32 + 6 bits (here 32 + 0 = 32).
        let esc = AudioSpecificConfig::parse(&[0xf8, 0x01, 0x80]).unwrap();
        assert_eq!(esc.object_type, 32);
    }

    #[test]
    fn rejects_bad_sync_layer_index_and_length() {
        assert!(AdtsHeader::parse(&[0xff, 0xf1, 0x50]).is_err());
        assert!(AdtsHeader::parse(&[0xfe, 0xf1, 0x50, 0x80, 0x0e, 0xff, 0xfc]).is_err());
        assert!(AdtsHeader::parse(&[0xff, 0xf3, 0x50, 0x80, 0x0e, 0xff, 0xfc]).is_err());
        assert!(AdtsHeader::parse(&[0xff, 0xf1, 0x7c, 0x80, 0x0e, 0xff, 0xfc]).is_err());
        assert!(AdtsHeader::parse(&[0xff, 0xf1, 0x50, 0x80, 0x00, 0x1f, 0xfc]).is_err());
        assert!(AudioSpecificConfig::parse(&[0x17, 0x80]).is_err());
        assert!(AudioSpecificConfig::parse(&[0x12]).is_err());
    }
}
