//! HLS segmenter: frames in, MPEG-TS segments and an M3U8 playlist out, all in memory.
//!
//! What belongs here: cutting segments at keyframes, the live sliding window and the VOD list,
//! and the media playlist text (RFC 8216 §4.3). What does not: TS packetisation (`ts`), serving
//! the playlist or segments over HTTP (`http`), writing files (`remux` command).
//!
//! Behaviour:
//! - A segment starts at a video keyframe (or, for a stream without video, at any AAC frame).
//!   Video frames before the first keyframe are dropped; audio frames before it open the first
//!   segment so no audio is lost.
//! - A segment is cut at the first video keyframe whose DTS is at least `target_duration_90k`
//!   after the segment's first DTS (audio-only: the first AAC frame at/after it), and at every
//!   frame marked `discontinuity`; the new segment then carries `EXT-X-DISCONTINUITY`.
//! - Every segment starts with PAT/PMT; continuity counters run on across segments (one
//!   [`TsMuxer`] per stream).
//! - A segment's duration is the next segment's first DTS minus its own; the last one (at
//!   `finish`, or before a discontinuity) ends one frame interval after its last DTS.
//! - `EXT-X-TARGETDURATION` is the ceiling of the longest segment in the playlist (RFC 8216
//!   §4.3.3.1). Before any segment exists there is nothing to measure; the playlist then uses the
//!   ceiling of the configured target, the only bound known.
//! - Live: the playlist lists the last `window` segments; two more are kept for clients that
//!   fetched the previous playlist (RFC 8216 §6.2.2), older ones are dropped (bounded memory).
//!   `EXT-X-DISCONTINUITY-SEQUENCE` counts discontinuities that left the window (§4.3.3.3).
//! - VOD: every segment is kept; after `finish` the playlist ends with `EXT-X-ENDLIST`.
//! - G.711 frames are ignored: TS has no place for them.

use std::fmt::Write as _;

use bytes::Bytes;

use super::ts::TsMuxer;
use crate::proto::codec::{Codec, Frame};

/// Segmenter options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HlsOptions {
    /// Minimum segment duration before a cut, 90 kHz.
    pub target_duration_90k: i64,
    /// Segments listed in a live playlist.
    pub window: usize,
    /// Keep every segment and write a VOD playlist.
    pub vod: bool,
}

impl Default for HlsOptions {
    fn default() -> Self {
        HlsOptions { target_duration_90k: 2 * 90_000, window: 6, vod: false }
    }
}

/// One closed segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub seq: u64,
    pub duration_90k: i64,
    pub data: Bytes,
    /// `EXT-X-DISCONTINUITY` precedes this segment.
    pub discontinuity: bool,
}

struct OpenSegment {
    buf: Vec<u8>,
    start_dts: i64,
    discontinuity: bool,
}

/// In-memory HLS segmenter for one stream. See the module header for its behaviour.
pub struct HlsSegmenter {
    opts: HlsOptions,
    ts: TsMuxer,
    open: Option<OpenSegment>,
    segments: Vec<Segment>,
    next_seq: u64,
    /// Discontinuity tags of segments dropped from the front.
    dropped_discontinuities: u64,
    finished: bool,
    have_video: bool,
    /// A video keyframe has been seen (video before it is undecodable and dropped).
    video_started: bool,
    last_dts: Option<i64>,
    /// Last DTS step between two frames of the cutting track (frame-duration estimate).
    last_step: i64,
    pending_discontinuity: bool,
    /// Capacity hint for the next segment buffer.
    size_hint: usize,
}

impl HlsSegmenter {
    pub fn new(opts: HlsOptions) -> Self {
        HlsSegmenter {
            opts,
            ts: TsMuxer::new(),
            open: None,
            segments: Vec::new(),
            next_seq: 0,
            dropped_discontinuities: 0,
            finished: false,
            have_video: false,
            video_started: false,
            last_dts: None,
            last_step: 0,
            pending_discontinuity: false,
            size_hint: 64 * 1024,
        }
    }

    /// Mux one frame; closes the open segment and opens a new one where the rules say so.
    pub fn push(&mut self, frame: &Frame) {
        if matches!(frame.codec, Codec::G711A | Codec::G711U) || frame.data.is_empty() {
            return;
        }
        if self.finished {
            // A new stream after finish: start over as a live continuation.
            self.finished = false;
            self.pending_discontinuity = true;
        }
        let video = frame.codec.is_video();
        if frame.discontinuity {
            self.pending_discontinuity = true;
        }
        if video {
            self.have_video = true;
            if !frame.keyframe && !self.video_started {
                return; // undecodable until the first keyframe
            }
            self.video_started = true;
        }
        // Does this frame start a segment?
        let cut_point = if video { frame.keyframe } else { !self.have_video };
        match &self.open {
            None => self.open_segment(frame.dts),
            Some(seg) => {
                let due = frame.dts - seg.start_dts >= self.opts.target_duration_90k;
                if self.pending_discontinuity && (cut_point || video) {
                    let end = self.estimated_end();
                    self.close_segment(end);
                    self.open_segment(frame.dts);
                } else if cut_point && due {
                    self.close_segment(frame.dts);
                    self.open_segment(frame.dts);
                }
            }
        }
        if let Some(prev) = self.last_dts {
            let step = frame.dts - prev;
            if step > 0 && (video || !self.have_video) {
                self.last_step = step;
            }
        }
        if video || !self.have_video {
            self.last_dts = Some(frame.dts);
        }
        if let Some(seg) = &mut self.open {
            self.ts.push(frame, &mut seg.buf);
        }
    }

    fn estimated_end(&self) -> i64 {
        self.last_dts.map_or(0, |d| d + self.last_step.max(0))
    }

    fn open_segment(&mut self, dts: i64) {
        let mut buf = Vec::with_capacity(self.size_hint);
        self.ts.write_psi(&mut buf);
        self.open = Some(OpenSegment {
            buf,
            start_dts: dts,
            discontinuity: std::mem::take(&mut self.pending_discontinuity) && !self.segments.is_empty(),
        });
    }

    fn close_segment(&mut self, end_dts: i64) {
        let Some(seg) = self.open.take() else {
            return;
        };
        self.size_hint = seg.buf.len() + seg.buf.len() / 4;
        self.segments.push(Segment {
            seq: self.next_seq,
            duration_90k: (end_dts - seg.start_dts).max(1),
            data: Bytes::from(seg.buf),
            discontinuity: seg.discontinuity,
        });
        self.next_seq += 1;
        if !self.opts.vod {
            let keep = self.opts.window.max(1) + 2;
            while self.segments.len() > keep {
                let gone = self.segments.remove(0);
                if gone.discontinuity {
                    self.dropped_discontinuities += 1;
                }
            }
        }
    }

    /// Close the open segment (end of stream / VOD).
    pub fn finish(&mut self) {
        let end = self.estimated_end();
        self.close_segment(end);
        self.finished = true;
    }

    /// The segments listed in the playlist.
    fn listed(&self) -> &[Segment] {
        if self.opts.vod {
            &self.segments
        } else {
            let n = self.segments.len();
            &self.segments[n.saturating_sub(self.opts.window.max(1))..]
        }
    }

    /// The media playlist (RFC 8216 §4.3), segment URIs `{seq}.ts`.
    pub fn playlist(&self) -> String {
        let listed = self.listed();
        let longest = listed.iter().map(|s| s.duration_90k).max();
        // §4.3.3.1: the EXTINF duration of each segment, rounded to the nearest integer, must
        // be ≤ the target duration; we use the ceiling of the longest.
        let target = (longest.unwrap_or(self.opts.target_duration_90k).max(1) + 89_999) / 90_000;
        let first_seq = listed.first().map_or(self.next_seq, |s| s.seq);
        // Discontinuity tags before the first listed segment: dropped ones, plus any stored but
        // outside the window.
        let hidden = self.segments.iter().filter(|s| s.seq < first_seq && s.discontinuity).count() as u64;
        let mut p = String::with_capacity(256 + listed.len() * 40);
        p.push_str("#EXTM3U\n#EXT-X-VERSION:3\n");
        let _ = writeln!(p, "#EXT-X-TARGETDURATION:{target}");
        let _ = writeln!(p, "#EXT-X-MEDIA-SEQUENCE:{first_seq}");
        let disc_seq = self.dropped_discontinuities + hidden;
        if disc_seq > 0 {
            let _ = writeln!(p, "#EXT-X-DISCONTINUITY-SEQUENCE:{disc_seq}");
        }
        if self.opts.vod {
            p.push_str("#EXT-X-PLAYLIST-TYPE:VOD\n");
        }
        p.push_str("#EXT-X-INDEPENDENT-SEGMENTS\n");
        for s in listed {
            if s.discontinuity {
                p.push_str("#EXT-X-DISCONTINUITY\n");
            }
            let _ = writeln!(p, "#EXTINF:{:.3},\n{}.ts", s.duration_90k as f64 / 90_000.0, s.seq);
        }
        if self.opts.vod && self.finished {
            p.push_str("#EXT-X-ENDLIST\n");
        }
        p
    }

    /// A stored segment's bytes (live: only segments still kept).
    pub fn segment(&self, seq: u64) -> Option<Bytes> {
        let first = self.segments.first()?.seq;
        let idx = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.segments.get(idx).map(|s| s.data.clone())
    }

    /// All stored segments, oldest first.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The newest closed segment's sequence number.
    pub fn latest_seq(&self) -> Option<u64> {
        self.segments.last().map(|s| s.seq)
    }

    /// True after [`finish`](Self::finish) (until the next frame).
    pub fn is_finished(&self) -> bool {
        self.finished
    }
}
