//! The HLS side of one stream: the lazily made segmenter, the raw-frame GOP cache that primes it,
//! and the tracker that turns stateless HLS requests into a viewer count.
//!
//! What belongs here: [`HlsState`] (segmenter + [`FrameGop`], always under one lock so the cached
//! GOP and the live frames meet without a gap or a duplicate) and [`HlsViewers`]. What does not:
//! segmenting itself (`proto::mux::hls` behind `mux_adapter.rs`), waiting for the first segment and
//! the driver's timers (`stream.rs`), telling clients apart (`http`, which hands in an opaque id).
//!
//! Rules:
//! - The FLV rings hold muxed tags, not frames, so the HLS segmenter cannot be primed from them.
//!   With `hls.gop_cache` on (off by default: it costs a GOP of memory per stream), until the
//!   first HLS request, the stream keeps the raw frames of its current GOP: from the
//!   last video keyframe on (audio included), or, while no video has been seen, the last
//!   target duration of audio (any audio frame may open a segment). Frames are `Bytes`, so a copy
//!   is a reference. The cache is bounded by bytes (`stream.ring_bytes`): when it overflows, the
//!   oldest frames go, and a GOP that has lost its keyframe is dropped whole (the next keyframe
//!   starts a new one).
//! - The first HLS request makes the segmenter and, under the same lock the driver takes for
//!   each frame, replays the cache into it (in order, original timestamps), then drops the cache.
//!   Every later frame goes to the segmenter. Segments are still cut at the first keyframe at or
//!   after the target duration, so the first segment (opening on the cached keyframe) is ready at
//!   the next keyframe rather than one segment after it.
//! - HLS viewers: a client (an id the caller derives, e.g. from address and User-Agent) counts
//!   from its request until `hls.viewer_timeout` (default: twice the segment, ≥ 10 s) has passed
//!   without another playlist or segment request. At most [`MAX_HLS_CLIENTS`] are tracked per
//!   stream; past that, new clients are not counted until old ones expire. The tracker keeps the
//!   `viewers{protocol="hls"}` gauge in step and gives its share back when the stream ends.

use super::mux_adapter::HlsSink;
use crate::metrics::{metrics, protocol};
use crate::proto::codec::Frame;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// Most HLS clients tracked per stream.
pub const MAX_HLS_CLIENTS: usize = 10_000;

/// The raw frames of the current GOP (see the module header).
pub(super) struct FrameGop {
    frames: VecDeque<Frame>,
    bytes: usize,
    bound: usize,
    /// Audio-only: how much audio (90 kHz) to keep.
    audio_span_90k: i64,
}

impl FrameGop {
    pub(super) fn new(bound: usize, audio_span_90k: i64) -> FrameGop {
        FrameGop { frames: VecDeque::new(), bytes: 0, bound, audio_span_90k }
    }

    fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
    }

    /// Hand over the cached frames, leaving the cache empty.
    fn take(&mut self) -> VecDeque<Frame> {
        self.bytes = 0;
        std::mem::take(&mut self.frames)
    }

    fn pop_front(&mut self) {
        if let Some(f) = self.frames.pop_front() {
            self.bytes -= f.data.len();
        }
    }

    fn starts_on_keyframe(&self) -> bool {
        self.frames.front().is_some_and(|f| f.codec.is_video() && f.keyframe)
    }

    /// Take `f` into the cache. `seen_video`: the stream has (or announced) video, so only a video
    /// keyframe may start the cache.
    pub(super) fn push(&mut self, f: &Frame, seen_video: bool) {
        if self.bound == 0 {
            // `hls.gop_cache = false`: nothing is kept.
            return;
        }
        let video = f.codec.is_video();
        if video && f.keyframe {
            self.clear();
        } else if seen_video && !self.starts_on_keyframe() {
            // Video before its first keyframe is undecodable; audio before it (or audio cached
            // while the stream looked audio-only) cannot open a video segment.
            self.clear();
            return;
        }
        self.bytes += f.data.len();
        self.frames.push_back(f.clone());
        if !seen_video && !video {
            // Audio-only: any frame may open a segment; keep the last `audio_span_90k`.
            while self.frames.len() > 1
                && self.frames.front().is_some_and(|a| f.dts - a.dts >= self.audio_span_90k)
            {
                self.pop_front();
            }
        }
        if self.bytes > self.bound {
            while self.bytes > self.bound && !self.frames.is_empty() {
                self.pop_front();
            }
            if seen_video || video {
                // The keyframe is gone: the rest cannot start a segment.
                self.clear();
            }
        }
    }

    /// Frames held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.frames.len()
    }

    /// Bytes of frame payload held.
    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.bytes
    }
}

/// The segmenter (once made) and the GOP cache that primes it. One lock for both.
pub(super) struct HlsState {
    sink: Option<Box<dyn HlsSink>>,
    /// The segmenter has had its first frame (it must start where a segment may open).
    started: bool,
    gop: FrameGop,
}

impl HlsState {
    pub(super) fn new(gop: FrameGop) -> HlsState {
        HlsState { sink: None, started: false, gop }
    }

    pub(super) fn sink(&self) -> Option<&dyn HlsSink> {
        self.sink.as_deref()
    }

    /// Make the segmenter (unless there is one) with `make` and replay the cached GOP into it.
    pub(super) fn open(&mut self, make: impl FnOnce() -> Box<dyn HlsSink>) {
        if self.sink.is_some() {
            return;
        }
        let mut sink = make();
        let cached = self.gop.take();
        // The cache always starts where a segment may open.
        self.started = !cached.is_empty();
        for f in &cached {
            sink.push(f);
        }
        self.sink = Some(sink);
    }

    /// One live frame: into the segmenter if there is one, else into the cache. True when a
    /// segment was completed.
    pub(super) fn push(&mut self, f: &Frame, seen_video: bool) -> bool {
        let Some(sink) = self.sink.as_mut() else {
            self.gop.push(f, seen_video);
            return false;
        };
        // A segmenter made before any usable frame starts at a video keyframe (when there is
        // video), so its first segment opens with video, not with audio before the keyframe.
        if !self.started {
            if seen_video && !(f.codec.is_video() && f.keyframe) {
                return false;
            }
            self.started = true;
        }
        let before = sink.latest_seq();
        sink.push(f);
        sink.latest_seq() != before
    }

    /// The stream ended: close the last segment and free the cache.
    pub(super) fn finish(&mut self) {
        if let Some(h) = self.sink.as_mut() {
            h.finish();
        }
        self.gop.clear();
    }

    #[cfg(test)]
    fn gop(&self) -> &FrameGop {
        &self.gop
    }
}

/// HLS clients seen recently (see the module header).
pub(super) struct HlsViewers {
    last_seen: HashMap<u64, Instant>,
    window: Duration,
    cap: usize,
    closed: bool,
    gauge: Gauge,
}

impl HlsViewers {
    pub(super) fn new(window: Duration) -> HlsViewers {
        HlsViewers::with_cap(window, MAX_HLS_CLIENTS)
    }

    fn with_cap(window: Duration, cap: usize) -> HlsViewers {
        HlsViewers {
            last_seen: HashMap::new(),
            window,
            cap,
            closed: false,
            gauge: metrics().viewers.get_or_create(&protocol("hls")).clone(),
        }
    }

    /// `client` requested the playlist or a segment at `now`.
    pub(super) fn seen(&mut self, client: u64, now: Instant) {
        if self.closed {
            return;
        }
        if let Some(t) = self.last_seen.get_mut(&client) {
            *t = (*t).max(now);
            return;
        }
        if self.last_seen.len() >= self.cap {
            self.expire(now);
            if self.last_seen.len() >= self.cap {
                return;
            }
        }
        self.last_seen.insert(client, now);
        self.gauge.inc();
    }

    /// Forget clients whose last request is `window` old at `now`.
    pub(super) fn expire(&mut self, now: Instant) {
        let before = self.last_seen.len();
        let window = self.window;
        self.last_seen.retain(|_, t| now.saturating_duration_since(*t) < window);
        self.gauge.dec_by((before - self.last_seen.len()) as i64);
    }

    /// Clients counted now.
    pub(super) fn len(&self) -> usize {
        self.last_seen.len()
    }

    /// The stream ended: nobody watches it any more, and nobody will.
    pub(super) fn close(&mut self) {
        self.closed = true;
        self.gauge.dec_by(self.last_seen.len() as i64);
        self.last_seen.clear();
    }
}

impl Drop for HlsViewers {
    fn drop(&mut self) {
        self.gauge.dec_by(self.last_seen.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::codec::Codec;
    use bytes::Bytes;

    fn video(n: i64, key: bool, size: usize) -> Frame {
        Frame {
            codec: Codec::H264,
            pts: n * 3600,
            dts: n * 3600,
            keyframe: key,
            discontinuity: false,
            data: Bytes::from(vec![n as u8; size]),
        }
    }

    fn audio(n: i64) -> Frame {
        Frame {
            codec: Codec::Aac,
            pts: n * 3600,
            dts: n * 3600,
            keyframe: true,
            discontinuity: false,
            data: Bytes::from(vec![n as u8; 10]),
        }
    }

    /// Records what it was fed; a "segment" completes at every keyframe after the first.
    #[derive(Default)]
    struct Recorder {
        got: std::sync::Arc<std::sync::Mutex<Vec<(bool, i64)>>>,
        keys: u64,
    }

    impl HlsSink for Recorder {
        fn push(&mut self, f: &Frame) {
            self.got.lock().unwrap().push((f.codec.is_video(), f.dts / 3600));
            if f.codec.is_video() && f.keyframe {
                self.keys += 1;
            }
        }
        fn finish(&mut self) {}
        fn playlist(&self) -> String {
            String::new()
        }
        fn segment(&self, _seq: u64) -> Option<Bytes> {
            None
        }
        fn latest_seq(&self) -> Option<u64> {
            self.keys.checked_sub(2)
        }
    }

    #[test]
    fn segmenter_made_mid_gop_gets_the_cached_gop_then_live_frames_without_gap_or_duplicate() {
        let mut h = HlsState::new(FrameGop::new(1 << 20, 180_000));
        for n in 0..17 {
            h.push(&video(n, n % 10 == 0, 100), true);
            h.push(&audio(n), true);
        }
        assert_eq!(h.gop().len(), 14, "frames 10..17 with their audio");
        let rec = Recorder::default();
        let got = rec.got.clone();
        h.open(|| Box::new(rec));
        assert_eq!(h.gop().len(), 0, "the cache is dropped once replayed");
        let mut completed = vec![];
        for n in 17..21 {
            completed.push(h.push(&video(n, n % 10 == 0, 100), true));
            h.push(&audio(n), true);
        }
        assert_eq!(completed, [false, false, false, true], "the cached GOP closes at the next keyframe");
        let got = got.lock().unwrap().clone();
        let want: Vec<(bool, i64)> = (10..21).flat_map(|n| [(true, n), (false, n)]).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn without_a_cached_keyframe_the_segmenter_starts_at_the_next_keyframe() {
        let mut h = HlsState::new(FrameGop::new(1 << 20, 180_000));
        // Audio and video before the first keyframe of a stream that announced video.
        h.push(&audio(0), true);
        h.push(&video(1, false, 100), true);
        assert_eq!(h.gop().len(), 0);
        let rec = Recorder::default();
        let got = rec.got.clone();
        h.open(|| Box::new(rec));
        h.push(&audio(2), true);
        h.push(&video(3, true, 100), true);
        h.push(&audio(3), true);
        assert_eq!(*got.lock().unwrap(), [(true, 3), (false, 3)]);
    }

    #[test]
    fn gop_cache_is_bounded_in_bytes_and_drops_a_gop_that_lost_its_keyframe() {
        let mut g = FrameGop::new(10_000, 180_000);
        g.push(&video(0, true, 4_000), true);
        g.push(&video(1, false, 4_000), true);
        assert_eq!((g.len(), g.bytes()), (2, 8_000));
        g.push(&video(2, false, 4_000), true);
        assert_eq!((g.len(), g.bytes()), (0, 0), "keyframe trimmed: nothing to start from");
        g.push(&video(3, false, 100), true);
        assert_eq!(g.len(), 0, "waits for the next keyframe");
        g.push(&video(4, true, 100), true);
        g.push(&audio(4), true);
        assert_eq!((g.len(), g.bytes()), (2, 110));
    }

    #[test]
    fn audio_only_cache_keeps_the_last_target_duration() {
        // 3600 ticks per frame, keep 18_000: five frames.
        let mut g = FrameGop::new(1 << 20, 18_000);
        for n in 0..20 {
            g.push(&audio(n), false);
        }
        assert_eq!(g.len(), 5);
        assert_eq!(g.frames.front().unwrap().dts, 15 * 3600);
        // Video turns up without a keyframe: the audio can no longer open a segment.
        g.push(&video(20, false, 100), true);
        assert_eq!(g.len(), 0);
    }

    #[test]
    fn hls_clients_count_once_expire_and_are_capped() {
        let t0 = Instant::now();
        let mut v = HlsViewers::with_cap(Duration::from_secs(10), 3);
        v.seen(1, t0);
        v.seen(2, t0);
        v.seen(1, t0 + Duration::from_secs(5));
        assert_eq!(v.len(), 2);
        v.expire(t0 + Duration::from_secs(9));
        assert_eq!(v.len(), 2);
        v.expire(t0 + Duration::from_secs(10));
        assert_eq!(v.len(), 1, "client 2 expired, client 1 was seen again at 5 s");
        v.seen(3, t0 + Duration::from_secs(10));
        v.seen(4, t0 + Duration::from_secs(10));
        v.seen(5, t0 + Duration::from_secs(10));
        assert_eq!(v.len(), 3, "capped");
        // At the cap, a newcomer takes the place of an expired client.
        v.seen(6, t0 + Duration::from_secs(15));
        assert_eq!(v.len(), 3);
        v.close();
        assert_eq!(v.len(), 0);
        v.seen(7, t0 + Duration::from_secs(16));
        assert_eq!(v.len(), 0, "not counted after the end");
    }
}
