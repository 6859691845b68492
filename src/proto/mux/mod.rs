//! Container muxers: frames from `proto::codec` in, bytes players read out.
//!
//! What belongs here: FLV tags (`flv`: AVC, HEVC as Enhanced RTMP or codec id 12, AAC, G.711),
//! MPEG-TS packets (`ts`) and the in-memory HLS segmenter and playlist (`hls`). What does not:
//! parameter-set parsing (`proto::codec`), fan-out, GOP caching and HTTP (`hub`, `http`).
//! Each muxer builds its output once as `Bytes`; viewers share it.

pub mod flv;
pub mod hls;
pub mod ts;

pub use flv::{AudioInfo, FlvMuxer, FlvOptions, FlvTag, HevcMode, TagKind, VideoInfo};
pub use hls::{HlsOptions, HlsSegmenter, Segment};
pub use ts::TsMuxer;
