//! The seam between the hub and the muxers of `proto::mux`.
//!
//! What belongs here: the two small traits the hub drives ([`FlvTagMuxer`], [`HlsSink`]), the
//! factory that makes them ([`MuxFactory`]), and the adapter that implements them on top of
//! `crate::proto::mux::{flv, hls}`. What does not: any muxing itself (that is pure code in
//! `proto::mux`), and any fan-out (that is `ring.rs`).
//!
//! The hub only needs, per FLV tag, the muxed bytes (a complete tag including its trailing
//! PreviousTagSize, Adobe FLV spec v10.1 Annex E.3) and a few flags: is it a video keyframe, is it a
//! sequence header. Keeping the hub behind these traits lets tests drive it with a tiny double and
//! lets the muxers change without touching the fan-out code.

use crate::config::FlvHevc;
use crate::proto::codec::Frame;
use bytes::Bytes;

/// Kind of an FLV tag (FLV spec E.4.1 `TagType`: 8 audio, 9 video, 18 script data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagKind {
    Script,
    Audio,
    Video,
}

/// One muxed FLV tag as the hub stores it.
#[derive(Debug, Clone)]
pub struct MuxedTag {
    /// The complete tag: 11-byte header, body, 4-byte PreviousTagSize.
    pub data: Bytes,
    pub kind: TagKind,
    /// A video tag of a keyframe (FLV `FrameType` 1), not a sequence header.
    pub keyframe: bool,
    /// An AVC/HEVC decoder configuration record or an AAC AudioSpecificConfig tag.
    pub seq_header: bool,
    pub timestamp_ms: u32,
}

/// Width and height of the video, when the muxer has parsed a sequence parameter set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VideoSize {
    pub width: u32,
    pub height: u32,
}

/// One FLV muxer instance (one per stream and HEVC mode actually requested).
pub trait FlvTagMuxer: Send + 'static {
    /// Mux one frame; append zero or more tags (sequence headers first when they change).
    fn push(&mut self, frame: &Frame, out: &mut Vec<MuxedTag>);
    /// The 9-byte FLV header plus PreviousTagSize0 (FLV spec E.2, E.3).
    fn header(&self, has_video: bool, has_audio: bool) -> Bytes;
    /// `onMetaData` and the current sequence headers, for a viewer joining now.
    fn init_tags(&self) -> Vec<Bytes>;
    /// Video dimensions once known.
    fn video_size(&self) -> Option<VideoSize>;
}

/// Parameters of a live HLS segmenter.
#[derive(Debug, Clone, Copy)]
pub struct HlsParams {
    /// Target segment duration in 90 kHz ticks.
    pub target_duration_90k: i64,
    /// Segments kept in the live playlist.
    pub window: usize,
}

/// One HLS segmenter (one per stream, created on the first HLS request).
pub trait HlsSink: Send + 'static {
    fn push(&mut self, frame: &Frame);
    /// Close the last segment (the source ended).
    fn finish(&mut self);
    /// The media playlist; segment URIs are `"{seq}.ts"`.
    fn playlist(&self) -> String;
    fn segment(&self, seq: u64) -> Option<Bytes>;
    /// Sequence number of the newest complete segment.
    fn latest_seq(&self) -> Option<u64>;
}

/// Makes muxers for the hub.
pub trait MuxFactory: Send + Sync + 'static {
    fn flv(&self, hevc: FlvHevc) -> Box<dyn FlvTagMuxer>;
    fn hls(&self, params: HlsParams) -> Box<dyn HlsSink>;
}

// ---------------------------------------------------------------- the real muxers

use crate::proto::mux::flv::{self, FlvMuxer, FlvOptions, HevcMode};
use crate::proto::mux::hls::{HlsOptions, HlsSegmenter};

/// [`MuxFactory`] over `proto::mux` (the one the gateway uses).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProtoMux;

struct ProtoFlv {
    inner: FlvMuxer,
    scratch: Vec<flv::FlvTag>,
}

impl FlvTagMuxer for ProtoFlv {
    fn push(&mut self, frame: &Frame, out: &mut Vec<MuxedTag>) {
        self.scratch.clear();
        self.inner.push(frame, &mut self.scratch);
        out.extend(self.scratch.drain(..).map(|t| MuxedTag {
            data: t.data,
            kind: match t.kind {
                flv::TagKind::Script => TagKind::Script,
                flv::TagKind::Audio => TagKind::Audio,
                flv::TagKind::Video => TagKind::Video,
            },
            keyframe: t.keyframe,
            seq_header: t.seq_header,
            timestamp_ms: t.timestamp_ms,
        }));
    }

    fn header(&self, has_video: bool, has_audio: bool) -> Bytes {
        FlvMuxer::header(has_video, has_audio)
    }

    fn init_tags(&self) -> Vec<Bytes> {
        self.inner.init_tags()
    }

    fn video_size(&self) -> Option<VideoSize> {
        self.inner.video_info().map(|v| VideoSize { width: v.width, height: v.height })
    }
}

impl HlsSink for HlsSegmenter {
    fn push(&mut self, frame: &Frame) {
        HlsSegmenter::push(self, frame)
    }
    fn finish(&mut self) {
        HlsSegmenter::finish(self)
    }
    fn playlist(&self) -> String {
        HlsSegmenter::playlist(self)
    }
    fn segment(&self, seq: u64) -> Option<Bytes> {
        HlsSegmenter::segment(self, seq)
    }
    fn latest_seq(&self) -> Option<u64> {
        HlsSegmenter::latest_seq(self)
    }
}

impl MuxFactory for ProtoMux {
    fn flv(&self, hevc: FlvHevc) -> Box<dyn FlvTagMuxer> {
        let hevc = match hevc {
            FlvHevc::Enhanced => HevcMode::Enhanced,
            FlvHevc::CodecId12 => HevcMode::CodecId12,
        };
        Box::new(ProtoFlv { inner: FlvMuxer::new(FlvOptions { hevc }), scratch: Vec::with_capacity(4) })
    }

    fn hls(&self, params: HlsParams) -> Box<dyn HlsSink> {
        Box::new(HlsSegmenter::new(HlsOptions {
            target_duration_90k: params.target_duration_90k,
            window: params.window,
            vod: false,
        }))
    }
}
