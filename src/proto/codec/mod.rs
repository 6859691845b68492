//! Elementary-stream types shared by every layer: [`Codec`], [`Frame`], and Annex B NAL scanning.
//!
//! What belongs here: the frame model the demuxer produces and the muxers consume, and the codec
//! parsers (`h264`, `h265`, `aac`, `g711`) that read parameter sets and build decoder configuration
//! records. What does not: container formats (PS in `proto::ps`, FLV/TS/HLS in `proto::mux`).
//!
//! Timestamps are 90 kHz ticks for every codec (MPEG system clock, ISO/IEC 13818-1 §2.4.3.7), already
//! unwrapped from 33 bits into a monotonic `i64` by the demuxer.

pub mod aac;
pub mod bits;
pub mod g711;
pub mod h264;
pub mod h265;
pub mod nal;

use bytes::Bytes;

/// The codecs a GB/T 28181 device sends inside MPEG-PS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// H.264 / AVC (PSM stream type 0x1b).
    H264,
    /// H.265 / HEVC (PSM stream type 0x24).
    H265,
    /// AAC in ADTS (PSM stream type 0x0f).
    Aac,
    /// G.711 A-law (PSM stream type 0x90).
    G711A,
    /// G.711 µ-law (PSM stream type 0x91, or 0x90 with a µ-law policy).
    G711U,
}

impl Codec {
    /// True for H.264 and H.265.
    pub fn is_video(self) -> bool {
        matches!(self, Codec::H264 | Codec::H265)
    }

    /// The name used in the API, `probe` and logs.
    pub fn name(self) -> &'static str {
        match self {
            Codec::H264 => "h264",
            Codec::H265 => "h265",
            Codec::Aac => "aac",
            Codec::G711A => "g711a",
            Codec::G711U => "g711u",
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One access unit (video) or one audio frame, as the demuxer hands it to the muxers.
///
/// - Video: `data` is the Annex B access unit as received (start codes included); a keyframe
///   normally carries its SPS/PPS (and VPS) in-band, and the muxers take parameter sets from there.
/// - AAC: `data` is exactly one ADTS frame (header included), one `Frame` per ADTS frame.
/// - G.711: `data` is the raw sample bytes of one PES (8 kHz, one byte per sample).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub codec: Codec,
    /// Presentation time, 90 kHz, monotonic over the stream's life.
    pub pts: i64,
    /// Decode time, 90 kHz, monotonic over the stream's life (equal to `pts` without B-frames).
    pub dts: i64,
    /// Video: an IDR / IRAP picture a decoder can start from. Audio: always true.
    pub keyframe: bool,
    /// Set on the first frame after the source restarted (timestamp jump, codec or resolution
    /// change): muxers resend sequence headers and HLS marks `EXT-X-DISCONTINUITY`.
    pub discontinuity: bool,
    pub data: Bytes,
}

impl Frame {
    /// Composition offset (PTS − DTS) in 90 kHz ticks.
    pub fn cts(&self) -> i64 {
        self.pts - self.dts
    }
}
