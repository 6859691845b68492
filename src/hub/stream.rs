//! One stream: its state, its rings and HLS segmenter, its viewers, and the driver task that
//! turns source events into muxed tags and enforces the lifecycle timers.
//!
//! What belongs here: [`Stream`] (shared by the hub, the driver and the viewers), the driver loop,
//! [`FlvViewer`] (a cursor plus the viewer-count guard) and the HLS access used by `http`.
//! What does not: the ring's rules (`ring.rs`), the HLS GOP cache and viewer tracker (`hls.rs`),
//! muxing (`proto::mux` behind `mux_adapter.rs`), anything HTTP.
//!
//! Muxing happens once per frame per HEVC mode actually requested (DESIGN.md §3 convention 4): for
//! a stream that turns out to be H.264 both modes give identical bytes, so every viewer shares
//! one ring. HLS is muxed only from the first HLS request on, by one segmenter shared by all; that
//! segmenter starts from the cached GOP (`hls.rs`), so a cold HLS viewer does not wait for a
//! keyframe and then a whole segment.

use super::hls::{FrameGop, HlsState, HlsViewers};
use super::mux_adapter::{FlvTagMuxer, HlsParams, MuxFactory, MuxedTag, TagKind, VideoSize};
use super::ring::{Cursor, Read, Ring, StartInfo};
use super::{Hub, HubConfig, PullError, PullHandle, SourceEvent, SourceStats, StreamKey};
use crate::config::FlvHevc;
use crate::metrics::{metrics, protocol, reason as reason_label};
use crate::proto::codec::{Codec, Frame};
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::Notify;

/// Where a stream is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamStatus {
    /// The pull (INVITE) is under way.
    Starting,
    /// Media flows (or is expected to).
    Live,
    /// Stopped, with the reason (`"idle"`, `"no data"`, `"api"`, the device's BYE, …).
    Ended(String),
    /// The pull failed.
    Failed(PullError),
}

impl StreamStatus {
    fn name(&self) -> &'static str {
        match self {
            StreamStatus::Starting => "starting",
            StreamStatus::Live => "live",
            StreamStatus::Ended(_) => "ended",
            StreamStatus::Failed(_) => "failed",
        }
    }
}

/// Why a viewer got no stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ViewError {
    #[error(transparent)]
    Pull(PullError),
    /// No keyframe (or, for HLS, no segment) within `first_frame_timeout`.
    #[error("timeout: {0}")]
    Timeout(String),
    /// The stream ended before the viewer got anything.
    #[error("stream ended: {0}")]
    Ended(String),
}

/// A stream's status as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamInfo {
    #[serde(skip)]
    pub key: StreamKey,
    /// Device ID (empty for media-only streams).
    pub device: String,
    /// Channel ID, or the name of a media-only stream.
    pub channel: String,
    pub substream: u8,
    /// `"live"` or `"rtp"` (media-only).
    pub kind: &'static str,
    pub transport: Option<String>,
    pub video_codec: Option<Codec>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub audio_codec: Option<Codec>,
    /// FLV + WS-FLV + HLS viewers.
    pub viewers: usize,
    pub viewers_flv: usize,
    pub viewers_ws: usize,
    /// Distinct HLS clients with a playlist or segment request within `hls.viewer_timeout`.
    pub viewers_hls: usize,
    pub hls: bool,
    /// Elementary-stream bytes received (frame payloads).
    pub bytes_in: u64,
    pub frames_in: u64,
    /// RTP counters from the receiver.
    pub rtp: SourceStats,
    pub started_at: String,
    pub status: &'static str,
    /// Why it ended or failed; for a live stream, a note such as the G.711 browser warning.
    pub reason: Option<String>,
    /// SIP status of a refused INVITE.
    pub sip_status: Option<u16>,
}

#[derive(Default)]
struct Meta {
    transport: Option<String>,
    video_codec: Option<Codec>,
    audio_codec: Option<Codec>,
    size: Option<VideoSize>,
    stats: SourceStats,
}

/// One stream (see the module header).
pub struct Stream {
    pub(super) key: StreamKey,
    hub: Weak<Hub>,
    cfg: HubConfig,
    mux: Arc<dyn MuxFactory>,
    status: Mutex<StreamStatus>,
    rings: Mutex<Vec<(FlvHevc, Arc<Ring>)>>,
    rings_gen: AtomicUsize,
    hls: Mutex<HlsState>,
    hls_notify: Notify,
    hls_viewers: Mutex<HlsViewers>,
    viewers_flv: AtomicUsize,
    viewers_ws: AtomicUsize,
    /// Last moment the stream had a reason to live without a viewer: creation, last viewer
    /// leaving, last HLS request.
    activity: Mutex<Instant>,
    pinned: AtomicBool,
    stop_req: Mutex<Option<String>>,
    stop_notify: Notify,
    meta: Mutex<Meta>,
    bytes_in: AtomicU64,
    frames_in: AtomicU64,
    created_at: SystemTime,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("key", &self.key)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Stream {
    pub(super) fn new(
        key: StreamKey,
        hub: Weak<Hub>,
        cfg: HubConfig,
        mux: Arc<dyn MuxFactory>,
    ) -> Arc<Stream> {
        let ring = Arc::new(Ring::new(cfg.stream.ring_bytes));
        let gop =
            FrameGop::new(if cfg.hls.gop_cache { cfg.stream.ring_bytes } else { 0 }, hls_target_90k(&cfg));
        let hls_viewers = HlsViewers::new(cfg.hls.viewer_window());
        Arc::new(Stream {
            key,
            hub,
            rings: Mutex::new(vec![(cfg.default_hevc, ring)]),
            cfg,
            mux,
            status: Mutex::new(StreamStatus::Starting),
            rings_gen: AtomicUsize::new(1),
            hls: Mutex::new(HlsState::new(gop)),
            hls_notify: Notify::new(),
            hls_viewers: Mutex::new(hls_viewers),
            viewers_flv: AtomicUsize::new(0),
            viewers_ws: AtomicUsize::new(0),
            activity: Mutex::new(Instant::now()),
            pinned: AtomicBool::new(false),
            stop_req: Mutex::new(None),
            stop_notify: Notify::new(),
            meta: Mutex::new(Meta::default()),
            bytes_in: AtomicU64::new(0),
            frames_in: AtomicU64::new(0),
            created_at: SystemTime::now(),
        })
    }

    pub fn key(&self) -> &StreamKey {
        &self.key
    }

    pub fn status(&self) -> StreamStatus {
        lock(&self.status).clone()
    }

    /// Ended or failed.
    pub fn is_finished(&self) -> bool {
        matches!(*lock(&self.status), StreamStatus::Ended(_) | StreamStatus::Failed(_))
    }

    /// Keep the stream without viewers (started through the API); only stop, no-data or the
    /// source's end stop it.
    pub fn pin(&self) {
        self.pinned.store(true, Ordering::Relaxed);
    }

    /// Bytes held by the stream's rings (each bounded by `stream.ring_bytes`).
    pub fn ring_bytes(&self) -> usize {
        lock(&self.rings).iter().map(|(_, r)| r.bytes()).sum()
    }

    /// FLV + WS-FLV viewers now (connected ones: what the idle stop looks at; HLS requests keep
    /// the stream alive through its activity time instead).
    pub fn viewers(&self) -> usize {
        self.viewers_flv.load(Ordering::Relaxed) + self.viewers_ws.load(Ordering::Relaxed)
    }

    /// Distinct HLS clients seen within `hls.viewer_timeout` (as of the driver's last sweep).
    pub fn hls_viewers(&self) -> usize {
        lock(&self.hls_viewers).len()
    }

    /// Note an HLS request by `client` (an id `http` derives from the request).
    fn hls_seen(&self, client: Option<u64>) {
        self.touch();
        if let Some(c) = client {
            lock(&self.hls_viewers).seen(c, Instant::now());
        }
    }

    /// Ask the driver to stop (stopper called with `reason`, viewers ended).
    pub fn request_stop(&self, reason: &str) {
        let mut g = lock(&self.stop_req);
        if g.is_none() {
            *g = Some(reason.to_owned());
        }
        drop(g);
        self.stop_notify.notify_one();
    }

    /// Wait until the pull has answered (live, ended or failed), at most `timeout`.
    pub async fn wait_started(&self, timeout: Duration) -> Result<(), ViewError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ring = self.ring_for(self.cfg.default_hevc);
            let notified = ring.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.status() {
                StreamStatus::Starting => {}
                StreamStatus::Live => return Ok(()),
                StreamStatus::Ended(r) => return Err(ViewError::Ended(r)),
                StreamStatus::Failed(e) => return Err(ViewError::Pull(e)),
            }
            // The driver wakes the rings when the status changes.
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(ViewError::Timeout(format!("no answer within {timeout:?}")));
                }
            }
        }
    }

    /// The ring for `mode`: shared by every mode once the video is known not to be H.265.
    fn ring_for(&self, mode: FlvHevc) -> Arc<Ring> {
        let hevc_or_unknown = matches!(lock(&self.meta).video_codec, None | Some(Codec::H265));
        let mut rings = lock(&self.rings);
        if let Some((_, r)) = rings.iter().find(|(m, _)| *m == mode) {
            return r.clone();
        }
        if !hevc_or_unknown {
            return rings[0].1.clone();
        }
        let ring = Arc::new(Ring::new(self.cfg.stream.ring_bytes));
        if matches!(*lock(&self.status), StreamStatus::Ended(_) | StreamStatus::Failed(_)) {
            ring.close("ended");
        }
        rings.push((mode, ring.clone()));
        self.rings_gen.fetch_add(1, Ordering::Release);
        ring
    }

    /// Subscribe an FLV viewer (`protocol` is `"flv"` or `"ws-flv"`). It is counted at once (a
    /// waiting viewer keeps the stream alive).
    pub fn subscribe_flv(self: &Arc<Self>, mode: FlvHevc, protocol_name: &'static str) -> FlvViewer {
        let ring = self.ring_for(mode);
        let cursor = ring.cursor();
        let ws = protocol_name == "ws-flv";
        if ws { &self.viewers_ws } else { &self.viewers_flv }.fetch_add(1, Ordering::Relaxed);
        metrics().viewers.get_or_create(&protocol(protocol_name)).inc();
        FlvViewer { stream: self.clone(), ring, cursor, protocol: protocol_name, ws, lagging_since: None }
    }

    fn touch(&self) {
        *lock(&self.activity) = Instant::now();
    }

    /// The live HLS playlist for `client` (counted as an HLS viewer; `None`: not counted). The
    /// first call creates the segmenter, primes it with the cached GOP, and waits (at most
    /// `first_frame_timeout`) until the first segment exists.
    pub async fn hls_playlist(&self, client: Option<u64>) -> Result<String, ViewError> {
        self.hls_seen(client);
        let timeout = self.cfg.stream.first_frame_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        lock(&self.hls).open(|| {
            self.mux.hls(HlsParams {
                target_duration_90k: hls_target_90k(&self.cfg),
                window: self.cfg.hls.window,
            })
        });
        loop {
            let notified = self.hls_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(text) = lock(&self.hls).sink().and_then(|h| h.latest_seq().map(|_| h.playlist())) {
                return Ok(text);
            }
            match self.status() {
                StreamStatus::Failed(e) => return Err(ViewError::Pull(e)),
                StreamStatus::Ended(r) => return Err(ViewError::Ended(r)),
                _ => {}
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(ViewError::Timeout(format!("no HLS segment within {timeout:?}")));
                }
            }
        }
    }

    /// One HLS segment, if still in the window; `client` as for [`Stream::hls_playlist`].
    pub fn hls_segment(&self, seq: u64, client: Option<u64>) -> Option<Bytes> {
        self.hls_seen(client);
        lock(&self.hls).sink().and_then(|h| h.segment(seq))
    }

    /// The status the API shows.
    pub fn info(&self) -> StreamInfo {
        let meta = lock(&self.meta);
        let status = self.status();
        let (device, channel, substream, kind) = match &self.key {
            StreamKey::Live { device, channel, substream } => {
                (device.clone(), channel.clone(), *substream, "live")
            }
            StreamKey::Rtp { name } => (String::new(), name.clone(), 0, "rtp"),
        };
        let (reason, sip_status) = match &status {
            StreamStatus::Ended(r) => (Some(r.clone()), None),
            StreamStatus::Failed(e) => (
                Some(e.to_string()),
                match e {
                    PullError::Refused { status, .. } => Some(*status),
                    _ => None,
                },
            ),
            _ => (
                matches!(meta.audio_codec, Some(Codec::G711A | Codec::G711U))
                    .then(|| "G.711 audio: browsers will play no sound (they need AAC)".to_owned()),
                None,
            ),
        };
        let flv = self.viewers_flv.load(Ordering::Relaxed);
        let ws = self.viewers_ws.load(Ordering::Relaxed);
        let hls = self.hls_viewers();
        StreamInfo {
            key: self.key.clone(),
            device,
            channel,
            substream,
            kind,
            transport: meta.transport.clone(),
            video_codec: meta.video_codec,
            width: meta.size.map(|s| s.width),
            height: meta.size.map(|s| s.height),
            audio_codec: meta.audio_codec,
            viewers: flv + ws + hls,
            viewers_flv: flv,
            viewers_ws: ws,
            viewers_hls: hls,
            hls: lock(&self.hls).sink().is_some(),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            frames_in: self.frames_in.load(Ordering::Relaxed),
            rtp: meta.stats,
            started_at: super::rfc3339(self.created_at),
            status: status.name(),
            reason,
            sip_status,
        }
    }

    fn wake_all(&self) {
        for (_, r) in lock(&self.rings).iter() {
            r.wake();
        }
        self.hls_notify.notify_waiters();
    }

    /// The driver: runs from the pull's answer until the stream ends.
    pub(super) async fn run(self: Arc<Self>, res: Result<PullHandle, PullError>) {
        let handle = match res {
            Ok(h) => h,
            Err(e) => {
                tracing::info!(stream = %self.key, error = %e, "pull failed");
                *lock(&self.status) = StreamStatus::Failed(e.clone());
                self.close_everything("pull failed");
                if let Some(hub) = self.hub.upgrade() {
                    hub.remove(&self);
                }
                return;
            }
        };
        let PullHandle { mut events, stopper, transport, started_at } = handle;
        lock(&self.meta).transport = Some(transport);
        *lock(&self.status) = StreamStatus::Live;
        metrics().streams_active.inc();
        self.wake_all();

        let mut d = Driver {
            muxers: Vec::new(),
            gen: 0,
            tags: Vec::new(),
            seen_video: false,
            seen_audio: false,
            got_keyframe: false,
            pull_started: started_at,
            video_codec: None,
            audio_codec: None,
            first_audio_dts: None,
        };
        let sc = &self.cfg.stream;
        let tick = (sc.idle_timeout.min(sc.no_data_timeout) / 4)
            .clamp(Duration::from_millis(10), Duration::from_millis(250));
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_frame = Instant::now();

        let reason: String = loop {
            tokio::select! {
                biased;
                _ = self.stop_notify.notified() => {
                    break lock(&self.stop_req).clone().unwrap_or_else(|| "stopped".into());
                }
                ev = events.recv() => match ev {
                    Some(SourceEvent::Frame(f)) => {
                        last_frame = Instant::now();
                        d.on_frame(&self, f);
                    }
                    Some(SourceEvent::Stats(s)) => lock(&self.meta).stats = s,
                    Some(SourceEvent::Tracks { video, audio }) => d.on_tracks(&self, video, audio),
                    Some(SourceEvent::Ended(r)) => break r,
                    None => break "source closed".into(),
                },
                _ = ticker.tick() => {
                    lock(&self.hls_viewers).expire(Instant::now());
                    if last_frame.elapsed() >= sc.no_data_timeout {
                        break "no data".into();
                    }
                    if !self.pinned.load(Ordering::Relaxed)
                        && self.viewers() == 0
                        && lock(&self.activity).elapsed() >= sc.idle_timeout
                    {
                        break "idle".into();
                    }
                }
            }
        };
        tracing::info!(stream = %self.key, %reason, "stream ended");
        *lock(&self.status) = StreamStatus::Ended(reason.clone());
        metrics().streams_active.dec();
        self.close_everything(&reason);
        stopper(reason);
        if let Some(hub) = self.hub.upgrade() {
            hub.remove(&self);
        }
    }

    fn close_everything(&self, reason: &str) {
        for (_, r) in lock(&self.rings).iter() {
            r.close(reason);
        }
        lock(&self.hls).finish();
        lock(&self.hls_viewers).close();
        self.hls_notify.notify_waiters();
    }
}

struct MuxSlot {
    ring: Arc<Ring>,
    muxer: Box<dyn FlvTagMuxer>,
    last_wake_ms: u32,
    last_audio_start_ms: Option<u32>,
}

struct Driver {
    muxers: Vec<MuxSlot>,
    gen: usize,
    tags: Vec<MuxedTag>,
    seen_video: bool,
    seen_audio: bool,
    got_keyframe: bool,
    pull_started: Instant,
    video_codec: Option<Codec>,
    audio_codec: Option<Codec>,
    first_audio_dts: Option<i64>,
}

/// The HLS target segment duration in 90 kHz ticks.
fn hls_target_90k(cfg: &HubConfig) -> i64 {
    (cfg.hls.segment.as_secs_f64() * 90_000.0).round() as i64
}

/// A source with this much audio (90 kHz) and no video is treated as audio-only.
const AUDIO_ONLY_AFTER_90K: i64 = 90_000;

/// Audio tags wake viewers at most this often (ms of media time) while video flows: a viewer
/// gets them with the next video tag, so it does one write per video frame, not per tag.
const AUDIO_WAKE_MS: u32 = 40;

impl Driver {
    fn sync_muxers(&mut self, s: &Stream) {
        let gen = s.rings_gen.load(Ordering::Acquire);
        if gen == self.gen {
            return;
        }
        self.gen = gen;
        for (mode, ring) in lock(&s.rings).iter() {
            if !self.muxers.iter().any(|m| Arc::ptr_eq(&m.ring, ring)) {
                self.muxers.push(MuxSlot {
                    ring: ring.clone(),
                    muxer: s.mux.flv(*mode),
                    last_wake_ms: 0,
                    last_audio_start_ms: None,
                });
            }
        }
    }

    fn on_tracks(&mut self, s: &Stream, video: Option<Codec>, audio: Option<Codec>) {
        self.seen_video |= video.is_some();
        self.seen_audio |= audio.is_some();
        let mut m = lock(&s.meta);
        if m.video_codec.is_none() {
            m.video_codec = video;
        }
        if m.audio_codec.is_none() {
            m.audio_codec = audio;
        }
    }

    fn on_frame(&mut self, s: &Stream, f: Frame) {
        s.bytes_in.fetch_add(f.data.len() as u64, Ordering::Relaxed);
        s.frames_in.fetch_add(1, Ordering::Relaxed);
        let is_video = f.codec.is_video();
        if is_video {
            self.seen_video = true;
            if self.video_codec != Some(f.codec) {
                self.video_codec = Some(f.codec);
                lock(&s.meta).video_codec = Some(f.codec);
            }
            if f.keyframe && !self.got_keyframe {
                self.got_keyframe = true;
                metrics().invite_to_keyframe_seconds.observe(self.pull_started.elapsed().as_secs_f64());
            }
        } else {
            self.seen_audio = true;
            self.first_audio_dts.get_or_insert(f.dts);
            if self.audio_codec != Some(f.codec) {
                self.audio_codec = Some(f.codec);
                lock(&s.meta).audio_codec = Some(f.codec);
            }
        }
        self.sync_muxers(s);
        for slot in &mut self.muxers {
            self.tags.clear();
            slot.muxer.push(&f, &mut self.tags);
            let mut wake = false;
            let mut new_gop = false;
            for t in self.tags.drain(..) {
                let video_start = t.kind == TagKind::Video && t.keyframe && !t.seq_header;
                // Audio-only source (no video after AUDIO_ONLY_AFTER of audio, and none announced):
                // viewers may start at an audio tag, one start point per AUDIO_ONLY_AFTER.
                let audio_start = t.kind == TagKind::Audio
                    && !t.seq_header
                    && !self.seen_video
                    && self.first_audio_dts.is_some_and(|d| f.dts - d >= AUDIO_ONLY_AFTER_90K)
                    && slot
                        .last_audio_start_ms
                        .is_none_or(|m| t.timestamp_ms.wrapping_sub(m) >= (AUDIO_ONLY_AFTER_90K / 90) as u32);
                if audio_start {
                    slot.last_audio_start_ms = Some(t.timestamp_ms);
                }
                let start = (video_start || audio_start).then(|| {
                    new_gop = true;
                    Arc::new(StartInfo {
                        header: slot.muxer.header(self.seen_video, self.seen_audio),
                        init: slot.muxer.init_tags(),
                    })
                });
                let w = match t.kind {
                    TagKind::Audio => {
                        !self.seen_video || t.timestamp_ms.wrapping_sub(slot.last_wake_ms) >= AUDIO_WAKE_MS
                    }
                    _ => true,
                };
                if w {
                    slot.last_wake_ms = t.timestamp_ms;
                    wake = true;
                }
                slot.ring.push(t.data, start);
            }
            if wake {
                slot.ring.wake();
            }
            if new_gop {
                if let Some(size) = slot.muxer.video_size() {
                    let mut m = lock(&s.meta);
                    if m.size != Some(size) {
                        m.size = Some(size);
                    }
                }
            }
        }
        // Into the HLS segmenter, or into the GOP cache that will prime it.
        if lock(&s.hls).push(&f, self.seen_video) {
            s.hls_notify.notify_waiters();
        }
    }
}

/// One FLV or WS-FLV viewer: a cursor into the stream's ring. Dropping it un-counts the viewer.
pub struct FlvViewer {
    stream: Arc<Stream>,
    ring: Arc<Ring>,
    cursor: Cursor,
    protocol: &'static str,
    ws: bool,
    /// First lag since the viewer was last caught up with the live edge.
    lagging_since: Option<Instant>,
}

impl FlvViewer {
    pub fn stream(&self) -> &Arc<Stream> {
        &self.stream
    }

    pub fn protocol(&self) -> &'static str {
        self.protocol
    }

    /// Wait for the first batch (FLV header, init tags, the GOP from its keyframe on), at most
    /// `first_frame_timeout`.
    pub async fn first(&mut self, out: &mut Vec<Bytes>) -> Result<(), ViewError> {
        let timeout = self.stream.cfg.stream.first_frame_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.ring.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.ring.read(&mut self.cursor, out) {
                Read::Data { .. } => return Ok(()),
                Read::Closed(r) => {
                    return Err(match self.stream.status() {
                        StreamStatus::Failed(e) => ViewError::Pull(e),
                        _ => ViewError::Ended(r),
                    })
                }
                Read::Empty => {}
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => {
                    let what = match self.stream.status() {
                        StreamStatus::Starting => "no answer from the device",
                        _ => "no keyframe",
                    };
                    return Err(ViewError::Timeout(format!("{what} within {timeout:?}")));
                }
            }
        }
    }

    /// Wait for the next batch; `false` once the stream has ended and everything was read, or
    /// when the viewer has kept lagging (never catching up with the live edge) for
    /// `slow_viewer_timeout` (counted as `viewer_drops{reason="stuck"}`).
    pub async fn next(&mut self, out: &mut Vec<Bytes>) -> bool {
        loop {
            let notified = self.ring.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.ring.read(&mut self.cursor, out) {
                Read::Data { lagged } => {
                    if lagged {
                        metrics().viewer_drops.get_or_create(&reason_label("lagged")).inc();
                        // Lagging again without having caught up since the first lag, for longer
                        // than slow_viewer_timeout: this viewer cannot keep up; let it go.
                        let since = *self.lagging_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= self.stream.cfg.stream.slow_viewer_timeout {
                            metrics().viewer_drops.get_or_create(&reason_label("stuck")).inc();
                            return false;
                        }
                    }
                    return true;
                }
                Read::Closed(_) => return false,
                Read::Empty => {
                    // Caught up with the live edge.
                    self.lagging_since = None;
                    notified.await
                }
            }
        }
    }
}

impl Drop for FlvViewer {
    fn drop(&mut self) {
        let counter = if self.ws { &self.stream.viewers_ws } else { &self.stream.viewers_flv };
        if counter.fetch_sub(1, Ordering::Relaxed) == 1 && self.stream.viewers() == 0 {
            self.stream.touch();
        }
        metrics().viewers.get_or_create(&protocol(self.protocol)).dec();
    }
}
