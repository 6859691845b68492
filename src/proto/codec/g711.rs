//! G.711 A-law / µ-law descriptors (ITU-T G.711).
//!
//! What belongs here: the fixed properties of G.711 as GB/T 28181 devices send it (8 kHz, mono,
//! one byte per sample), frame duration, the FLV SoundFormat values (E.4.2.1 of the FLV spec:
//! 7 = G.711 A-law, 8 = G.711 µ-law) and whether browsers can play it. What does not: sample
//! decoding (not needed for relaying) or PS stream-type policy (`proto::ps`).

use super::Codec;

/// Companding law.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Law {
    ALaw,
    MuLaw,
}

/// What a muxer needs to know about a G.711 stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct G711Descriptor {
    pub law: Law,
    /// Always 8000 (G.711 §1: 8 kHz sampling).
    pub sample_rate: u32,
    /// GB/T 28181 devices send mono.
    pub channels: u8,
}

impl G711Descriptor {
    /// The descriptor for `codec`, or `None` for a non-G.711 codec.
    pub fn for_codec(codec: Codec) -> Option<Self> {
        let law = match codec {
            Codec::G711A => Law::ALaw,
            Codec::G711U => Law::MuLaw,
            _ => return None,
        };
        Some(G711Descriptor { law, sample_rate: 8000, channels: 1 })
    }

    /// FLV SoundFormat (FLV spec v10.1 §E.4.2.1): 7 A-law, 8 µ-law.
    pub fn flv_sound_format(&self) -> u8 {
        match self.law {
            Law::ALaw => 7,
            Law::MuLaw => 8,
        }
    }

    /// Duration of `len` bytes in 90 kHz ticks (one byte per sample at 8 kHz).
    pub fn duration_90k(&self, len: usize) -> i64 {
        len as i64 * 90_000 / i64::from(self.sample_rate)
    }

    /// Browser FLV/HLS players (mpegts.js, hls.js, MSE) cannot decode G.711; stream info says so.
    pub fn browser_playable(&self) -> bool {
        false
    }

    /// Name for stream info / probe output.
    pub fn name(&self) -> &'static str {
        match self.law {
            Law::ALaw => "G.711 A-law (PCMA)",
            Law::MuLaw => "G.711 µ-law (PCMU)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alaw_and_mulaw_map_to_flv_formats_7_and_8() {
        let a = G711Descriptor::for_codec(Codec::G711A).unwrap();
        let u = G711Descriptor::for_codec(Codec::G711U).unwrap();
        assert_eq!((a.flv_sound_format(), u.flv_sound_format()), (7, 8));
        assert_eq!(a.duration_90k(160), 1800, "160 samples = 20 ms");
        assert!(!a.browser_playable());
        assert!(G711Descriptor::for_codec(Codec::Aac).is_none());
    }
}
