//! The stream hub: one [`Stream`] per [`StreamKey`], muxed once, shared by every viewer.
//!
//! What belongs here: stream keys, the source interface ([`Puller`], [`PullHandle`],
//! [`SourceEvent`], [`PullError`]), the on-demand lifecycle (single-flight pull, first-keyframe
//! wait, idle / no-data stop, source end), the GOP ring and viewer cursors (`ring.rs`), the stream
//! driver (`stream.rs`), the HLS GOP cache and HLS viewer tracker (`hls.rs`) and the seam to the
//! muxers (`mux_adapter.rs`). What does not: HTTP (in `http`, which subscribes here), SIP and RTP
//! (the gateway glue implements [`Puller`]).
//!
//! Lifecycle (GB/T 28181 §9.2 live play, driven by viewers):
//! - The first [`Hub::open`] of a key inserts a `Starting` stream and spawns one pull; every
//!   concurrent `open` of the key gets the same stream (single flight).
//! - A failed pull ends the stream with its [`PullError`] and removes it, so the next request
//!   retries.
//! - No FLV/WS viewer and no HLS request for `idle_timeout` (and not pinned by the API): the
//!   stopper is called with `"idle"`. (The HLS viewer count, which lasts `hls.viewer_timeout`
//!   after a request, does not enter into it.) No frame for `no_data_timeout`: stopper `"no data"`.
//!   [`SourceEvent::Ended`]: viewers end cleanly. Ended streams stay listed (with their reason)
//!   for [`RECENT_KEEP`].

mod hls;
pub mod mux_adapter;
mod ring;
mod stream;

pub use hls::MAX_HLS_CLIENTS;
pub use ring::{Cursor, Read, Ring, StartInfo};
pub use stream::{FlvViewer, Stream, StreamInfo, StreamStatus, ViewError};

use crate::config::{FlvHevc, HlsConfig, StreamConfig};
use crate::proto::codec::{Codec, Frame};
use futures_util::future::BoxFuture;
use mux_adapter::MuxFactory;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// How long an ended stream stays in [`Hub::list`].
pub const RECENT_KEEP: Duration = Duration::from_secs(300);
/// At most this many ended streams are remembered.
const RECENT_MAX: usize = 256;

/// What a stream is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StreamKey {
    /// Live video of a device's channel (GB/T 28181 §9.2); `substream` 0 is the main stream,
    /// 1 the sub-stream (`a=streamnumber:1` of GB/T 28181-2022, vendors' `a=stream:1`).
    Live { device: String, channel: String, substream: u8 },
    /// A media-only receiver opened through `POST /api/v1/rtp` (signalled elsewhere).
    Rtp { name: String },
    // Room for `Playback { device, channel, start, end }` (GB/T 28181 §9.8).
}

impl std::fmt::Display for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StreamKey::Live { device, channel, substream: 0 } => write!(f, "{device}/{channel}"),
            StreamKey::Live { device, channel, substream } => write!(f, "{device}/{channel}~{substream}"),
            StreamKey::Rtp { name } => write!(f, "rtp/{name}"),
        }
    }
}

/// Source counters the media pipeline reports (cumulative).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SourceStats {
    pub packets: u64,
    pub bytes: u64,
    pub lost: u64,
    pub reordered: u64,
    pub ps_resyncs: u64,
}

/// What a source sends to its stream.
#[derive(Debug)]
pub enum SourceEvent {
    Frame(Frame),
    /// Cumulative receive counters (sent now and then, e.g. once a second).
    Stats(SourceStats),
    /// The elementary streams the source carries, as soon as known (e.g. from the MPEG-PS stream
    /// map, ISO/IEC 13818-1 §2.5.4). Optional; without it the FLV header's audio flag says whether
    /// audio was seen before the viewer's first keyframe. Sending it before the first keyframe
    /// lets that header announce audio that arrives just after the keyframe.
    Tracks {
        video: Option<Codec>,
        audio: Option<Codec>,
    },
    /// The source is gone (device BYE, device offline, socket closed), with the reason.
    Ended(String),
}

/// Why a pull failed. Mapped to an HTTP status only at the edge (`http`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PullError {
    /// Unknown device or channel (HTTP 404).
    #[error("not found: {0}")]
    NotFound(String),
    /// Device registered but offline (HTTP 503).
    #[error("device offline: {0}")]
    Offline(String),
    /// The device answered the INVITE with an error (HTTP 502, with the SIP status).
    #[error("INVITE refused with {status} {reason}")]
    Refused { status: u16, reason: String },
    /// No answer, or no keyframe in time (HTTP 504).
    #[error("timeout: {0}")]
    Timeout(String),
    /// Too many INVITEs to the device, or no port/SSRC free (HTTP 503).
    #[error("busy: {0}")]
    Busy(String),
    /// Anything else (HTTP 500).
    #[error("internal error: {0}")]
    Internal(String),
}

/// A running source, as the puller (or the RTP API) hands it to the hub.
pub struct PullHandle {
    pub events: tokio::sync::mpsc::Receiver<SourceEvent>,
    /// Called exactly once when the hub is done with the source, with the reason (`"idle"`,
    /// `"no data"`, `"api"`, `"shutdown"`, or the reason of a [`SourceEvent::Ended`]). It sends
    /// BYE where a dialog is still up and frees the port and SSRC.
    pub stopper: Box<dyn FnOnce(String) + Send>,
    /// `"udp"`, `"tcp-passive"`, `"tcp-active"`.
    pub transport: String,
    /// When the pull started (the INVITE was sent): the origin of `invite_to_keyframe_seconds`.
    pub started_at: Instant,
}

impl std::fmt::Debug for PullHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullHandle").field("transport", &self.transport).finish_non_exhaustive()
    }
}

/// Starts sources on demand (implemented by the gateway glue: INVITE + RTP receiver + PS demux).
pub trait Puller: Send + Sync + 'static {
    fn pull(&self, key: &StreamKey) -> BoxFuture<'static, Result<PullHandle, PullError>>;
}

/// Hub settings.
#[derive(Debug, Clone, Default)]
pub struct HubConfig {
    pub stream: StreamConfig,
    pub hls: HlsConfig,
    /// HEVC-in-FLV mode when the viewer asks for none.
    pub default_hevc: FlvHevc,
}

impl HubConfig {
    pub fn from_config(cfg: &crate::config::Config) -> HubConfig {
        HubConfig { stream: cfg.stream.clone(), hls: cfg.hls.clone(), default_hevc: cfg.http.flv_hevc }
    }
}

/// All streams of the process.
pub struct Hub {
    cfg: HubConfig,
    puller: Arc<dyn Puller>,
    mux: Arc<dyn MuxFactory>,
    streams: Mutex<HashMap<StreamKey, Arc<Stream>>>,
    recent: Mutex<VecDeque<(Instant, StreamInfo)>>,
}

impl Hub {
    pub fn new(cfg: HubConfig, puller: Arc<dyn Puller>, mux: Arc<dyn MuxFactory>) -> Arc<Hub> {
        Arc::new(Hub {
            cfg,
            puller,
            mux,
            streams: Mutex::new(HashMap::new()),
            recent: Mutex::new(VecDeque::new()),
        })
    }

    pub fn config(&self) -> &HubConfig {
        &self.cfg
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<StreamKey, Arc<Stream>>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stream of `key`, starting a pull if there is none (single flight). Media-only keys
    /// ([`StreamKey::Rtp`]) are never pulled: they exist only once [`Hub::attach`]ed.
    pub fn open(self: &Arc<Self>, key: &StreamKey) -> Result<Arc<Stream>, PullError> {
        let mut map = self.streams();
        if let Some(s) = map.get(key) {
            // A stream that has just ended but not yet left the map is replaced, not joined.
            if !s.is_finished() {
                return Ok(s.clone());
            }
        }
        if let StreamKey::Rtp { name } = key {
            return Err(PullError::NotFound(format!("no media-only stream named {name:?}")));
        }
        let stream = Stream::new(key.clone(), Arc::downgrade(self), self.cfg.clone(), self.mux.clone());
        map.insert(key.clone(), stream.clone());
        drop(map);
        let fut = self.puller.pull(key);
        let s = stream.clone();
        // A pull that never answers must not pin a `Starting` stream forever: every viewer
        // would join it and time out. Bound it at twice the viewers' wait.
        let bound = self.cfg.stream.first_frame_timeout * 2;
        tokio::spawn(async move {
            let res = match tokio::time::timeout(bound, fut).await {
                Ok(res) => res,
                Err(_) => Err(PullError::Timeout(format!("no answer within {bound:?}"))),
            };
            s.run(res).await;
        });
        Ok(stream)
    }

    /// The stream of `key` if it exists; never starts a pull.
    pub fn get(&self, key: &StreamKey) -> Option<Arc<Stream>> {
        self.streams().get(key).cloned()
    }

    /// Attach a source that was started elsewhere (a media-only receiver). The stream is pinned:
    /// it is not stopped for idleness, only by [`Hub::stop`], `no_data_timeout` or its end.
    /// Fails if the key is taken (the handle is then stopped with `"duplicate"`).
    pub fn attach(self: &Arc<Self>, key: StreamKey, handle: PullHandle) -> Result<Arc<Stream>, PullError> {
        let mut map = self.streams();
        if map.get(&key).is_some_and(|s| !s.is_finished()) {
            drop(map);
            (handle.stopper)("duplicate".into());
            return Err(PullError::Busy(format!("stream {key} exists")));
        }
        let stream = Stream::new(key.clone(), Arc::downgrade(self), self.cfg.clone(), self.mux.clone());
        stream.pin();
        map.insert(key, stream.clone());
        drop(map);
        let s = stream.clone();
        tokio::spawn(async move { s.run(Ok(handle)).await });
        Ok(stream)
    }

    /// Stop a stream (BYE through its stopper) and end its viewers. False if there is none.
    pub fn stop(&self, key: &StreamKey, reason: &str) -> bool {
        match self.get(key) {
            Some(s) => {
                s.request_stop(reason);
                true
            }
            None => false,
        }
    }

    /// Stop every stream (shutdown).
    pub fn stop_all(&self, reason: &str) {
        let all: Vec<_> = self.streams().values().cloned().collect();
        for s in all {
            s.request_stop(reason);
        }
    }

    /// Stop every stream and wait (at most `timeout`) until each has called its stopper.
    pub async fn shutdown(&self, timeout: Duration) {
        self.stop_all("shutdown");
        let deadline = Instant::now() + timeout;
        while !self.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Number of streams currently held (starting or live).
    pub fn len(&self) -> usize {
        self.streams().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Active streams, then recently ended ones (newest first).
    pub fn list(&self) -> Vec<StreamInfo> {
        let mut items: Vec<StreamInfo> = self.streams().values().map(|s| s.info()).collect();
        items.sort_by_key(|i| i.key.to_string());
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        while recent.front().is_some_and(|(t, _)| now.duration_since(*t) > RECENT_KEEP) {
            recent.pop_front();
        }
        items.extend(recent.iter().rev().map(|(_, i)| i.clone()));
        items
    }

    /// Called by a stream when it has ended: forget it (if it is still the one in the map) and
    /// remember its final status.
    fn remove(&self, stream: &Arc<Stream>) {
        {
            let mut map = self.streams();
            if map.get(&stream.key).is_some_and(|s| Arc::ptr_eq(s, stream)) {
                map.remove(&stream.key);
            }
        }
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.push_back((Instant::now(), stream.info()));
        while recent.len() > RECENT_MAX {
            recent.pop_front();
        }
    }
}

/// Wall-clock time as RFC 3339 (for the API).
pub(crate) fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
