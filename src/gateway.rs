//! The running gateway: wires `signal` (SIP), `media` (RTP receivers), the PS demuxer, the `hub` and
//! `http` together, and shuts them down cleanly.
//!
//! What belongs here: the glue that turns "a player wants channel X" into an SSRC, an RTP receiver,
//! an INVITE and a demuxer feeding the hub ([`GbPuller`]); the media-only receivers of
//! `POST /api/v1/rtp` ([`RtpOpener`]); the device API's view of the SIP side ([`SignalControl`]);
//! start-up and shutdown ([`start`], [`Running::shutdown`], [`run`]). What does not: protocol logic
//! (`proto`), sockets (`signal`, `media`), fan-out (`hub`), routing (`http`).

use crate::config::{Config, Transport};
use crate::http::devices::{DeviceControl, DevicesState};
use crate::http::{ApiError, AppState, RtpControl, RtpOpenRequest};
use crate::hub::mux_adapter::ProtoMux;
use crate::hub::{Hub, HubConfig, PullError, PullHandle, Puller, SourceEvent, SourceStats, StreamKey};
use crate::media::{MediaError, MediaEvent, MediaServer, MediaSession, OpenRequest, PortChoice};
use crate::proto::ps::{DemuxPolicy, PsDemuxer};
use crate::signal::{InviteError, InviteRequest, InviteSession, SignalHandle, SipServer};
use crate::store::Store;
use axum::http::StatusCode;
use futures_util::future::BoxFuture;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Frames buffered between a stream's demuxer task and the hub (about 10 s of 25 fps video plus
/// audio). The pipeline awaits room, so a slow hub backs up into the receiver's bounded queue,
/// where overflow is dropped and counted.
const FRAME_QUEUE: usize = 512;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    #[error("store {path}: {source}")]
    Store { path: String, source: crate::store::StoreError },
    #[error(transparent)]
    Signal(#[from] crate::signal::SignalError),
    #[error("media: {0}")]
    Media(#[from] MediaError),
    #[error("cannot bind HTTP on {addr}: {source}")]
    HttpBind { addr: SocketAddr, source: std::io::Error },
}

/// Pulls a live channel from a registered device.
pub struct GbPuller {
    pub cfg: Arc<Config>,
    pub signal: SignalHandle,
    pub media: Arc<MediaServer>,
    pub store: Store,
}

fn map_invite_error(e: InviteError) -> PullError {
    match e {
        InviteError::DeviceNotFound => PullError::NotFound("unknown device".into()),
        InviteError::ChannelNotFound => PullError::NotFound("unknown channel".into()),
        InviteError::DeviceOffline => PullError::Offline("device offline".into()),
        InviteError::Refused { status, reason } => PullError::Refused { status, reason },
        InviteError::Timeout => PullError::Timeout("the device did not answer the INVITE in time".into()),
        InviteError::Busy(r) => PullError::Busy(r),
        InviteError::Transport(r) => PullError::Internal(r),
    }
}

impl Puller for GbPuller {
    fn pull(&self, key: &StreamKey) -> BoxFuture<'static, Result<PullHandle, PullError>> {
        let key = key.clone();
        let cfg = self.cfg.clone();
        let signal = self.signal.clone();
        let media = self.media.clone();
        let store = self.store.clone();
        Box::pin(async move {
            let StreamKey::Live { device, channel, substream } = key else {
                return Err(PullError::NotFound("media-only streams are opened through /api/v1/rtp".into()));
            };
            let (dev, chan) = {
                let store = store.clone();
                let (d, c) = (device.clone(), channel.clone());
                tokio::task::spawn_blocking(move || (store.get_device(&d), store.get_channel(&d, &c)))
                    .await
                    .map_err(|e| PullError::Internal(e.to_string()))?
            };
            match dev {
                Ok(Some(_)) => {}
                Ok(None) => return Err(PullError::NotFound(format!("unknown device {device}"))),
                Err(e) => return Err(PullError::Internal(e.to_string())),
            }
            match chan {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(PullError::NotFound(format!("unknown channel {channel} of device {device}")))
                }
                Err(e) => return Err(PullError::Internal(e.to_string())),
            }
            if !signal.device_online(&device) {
                return Err(PullError::Offline(format!("device {device} is offline")));
            }
            let transport = cfg.media.transport;
            let ssrc = signal.allocate_ssrc().ok_or_else(|| PullError::Busy("no free SSRC".into()))?;
            let port = if cfg.media.ports.is_some() { PortChoice::Pool } else { PortChoice::Shared };
            let label = format!("{device}/{channel}");
            let session = match media.open(OpenRequest { transport, ssrc: Some(ssrc), port, label }).await {
                Ok(s) => s,
                Err(e) => {
                    signal.release_ssrc(ssrc);
                    return Err(PullError::Busy(format!("no media port: {e}")));
                }
            };
            let started_at = Instant::now();
            let req = InviteRequest {
                device_id: device.clone(),
                channel_id: channel.clone(),
                transport,
                media_ip: cfg.media.ip,
                media_port: session.port,
                ssrc,
                substream: (substream > 0).then_some(substream),
                deadline: cfg
                    .stream
                    .first_frame_timeout
                    .min(cfg.sip.invite_timeout.max(Duration::from_secs(1))),
            };
            let mut invite = match signal.invite(req).await {
                Ok(i) => i,
                Err(e) => {
                    session.close();
                    signal.release_ssrc(ssrc);
                    return Err(map_invite_error(e));
                }
            };
            crate::metrics::metrics().invite_to_200_seconds.observe(started_at.elapsed().as_secs_f64());
            if let Some(answer_ssrc) = invite.answer.ssrc {
                if answer_ssrc != ssrc {
                    session.set_answer_ssrc(answer_ssrc);
                }
            }
            if transport == Transport::TcpActive {
                let peer = invite
                    .answer
                    .connection
                    .zip(invite.answer.port())
                    .filter(|(_, port)| *port != 0)
                    .map(|(ip, port)| SocketAddr::new(ip, port));
                let connected = match peer {
                    Some(peer) => session.connect_active(peer).await.map_err(|e| e.to_string()),
                    None => Err("the device's answer has no media address for tcp-active".to_string()),
                };
                if let Err(reason) = connected {
                    invite.bye().await;
                    session.close();
                    signal.release_ssrc(ssrc);
                    return Err(PullError::Timeout(format!(
                        "cannot connect to the device's media: {reason}"
                    )));
                }
            }
            let ended = std::mem::replace(&mut invite.ended, oneshot::channel().1);
            let policy = DemuxPolicy { g711_0x90_is_ulaw: cfg.media.g711_0x90_is_ulaw };
            let (tx, rx) = mpsc::channel(FRAME_QUEUE);
            let (stop_tx, stop_rx) = oneshot::channel::<String>();
            tokio::spawn(async move {
                let (reason, by_device) = pump(session, policy, tx.clone(), stop_rx, Some(ended)).await;
                tracing::info!(%device, %channel, %reason, "stream stopped");
                let _ = tx.try_send(SourceEvent::Ended(reason));
                finish_dialog(invite, by_device).await;
                signal.release_ssrc(ssrc);
            });
            Ok(PullHandle {
                events: rx,
                stopper: Box::new(move |reason| {
                    let _ = stop_tx.send(reason);
                }),
                transport: transport.as_str().to_string(),
                started_at,
            })
        })
    }
}

/// BYE unless the device already ended the dialog (then the session is only forgotten).
async fn finish_dialog(invite: InviteSession, by_device: bool) {
    if by_device {
        // The dialog is gone on the device's side; dropping sends a BYE the core answers locally
        // for an unknown dialog at worst.
        drop(invite);
    } else {
        invite.bye().await;
    }
}

/// Moves one stream's media into the hub: receiver events → PS demuxer → frames, until stopped
/// by the hub, ended by the device (BYE / offline) or by the receiver. Returns the reason and
/// whether the device ended it.
async fn pump(
    session: MediaSession,
    policy: DemuxPolicy,
    tx: mpsc::Sender<SourceEvent>,
    mut stop: oneshot::Receiver<String>,
    mut ended: Option<oneshot::Receiver<String>>,
) -> (String, bool) {
    let MediaSession { mut events, counters, handle, .. } = session;
    let _keep_open = handle;
    let mut demux = PsDemuxer::new(policy);
    let mut tracks = TrackState::default();
    let mut reported = PsReported::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let result = loop {
        tokio::select! {
            r = &mut stop => break (r.unwrap_or_else(|_| "stopped".into()), false),
            r = async {
                match ended.as_mut() {
                    Some(e) => e.await,
                    None => std::future::pending().await,
                }
            } => {
                match r {
                    Ok(reason) => break (reason, true),
                    // The signalling side dropped the sender without a reason: keep going until
                    // the hub or the receiver ends the stream.
                    Err(_) => { ended = None; }
                }
            }
            ev = events.recv() => match ev {
                None => break ("media receiver closed".into(), false),
                Some(MediaEvent::Payload { data, marker }) => {
                    demux.push(data);
                    if marker {
                        demux.end_of_unit();
                    }
                    if !drain(&mut demux, &tx, &mut tracks).await {
                        break ("hub went away".into(), false);
                    }
                }
                Some(MediaEvent::Loss { .. }) => demux.notify_loss(),
                Some(MediaEvent::Closed { reason }) => break (format!("media connection closed: {reason}"), false),
            },
            _ = tick.tick() => {
                let c = counters.snapshot();
                reported.flush(&demux);
                let _ = tx.try_send(SourceEvent::Stats(SourceStats {
                    packets: c.packets,
                    bytes: c.bytes,
                    lost: c.lost,
                    reordered: c.reordered,
                    ps_resyncs: demux.stats().resyncs,
                }));
            }
        }
    };
    demux.flush();
    let _ = drain(&mut demux, &tx, &mut tracks).await;
    reported.flush(&demux);
    result
}

/// Hands every complete frame to the hub, announcing the tracks first when they change. False when
/// the hub dropped its end.
async fn drain(demux: &mut PsDemuxer, tx: &mpsc::Sender<SourceEvent>, tracks: &mut TrackState) -> bool {
    while let Some(frame) = demux.poll_frame() {
        let now = (demux.video_codec(), demux.audio_codec());
        if now != tracks.codecs {
            tracks.codecs = now;
            if tx.send(SourceEvent::Tracks { video: now.0, audio: now.1 }).await.is_err() {
                return false;
            }
        }
        // Audio whose DTS does not advance (a source that loops or restarts with overlapping
        // audio, e.g. 10.11 s of AAC against 10 s of video) would make players reject the output
        // ("non monotonically increasing dts"): drop it and count it. Video is passed on: dropping
        // a reference picture would break every frame after it; the demuxer rebases video jumps.
        if !frame.codec.is_video() {
            if tracks.last_audio_dts.is_some_and(|last| frame.dts <= last) {
                crate::metrics::metrics()
                    .ps_quirks
                    .get_or_create(&crate::metrics::reason("audio_dts_not_increasing"))
                    .inc();
                continue;
            }
            tracks.last_audio_dts = Some(frame.dts);
        }
        if tx.send(SourceEvent::Frame(frame)).await.is_err() {
            return false;
        }
    }
    true
}

/// What the pipeline last told the hub about the tracks.
#[derive(Default)]
struct TrackState {
    codecs: (Option<crate::proto::codec::Codec>, Option<crate::proto::codec::Codec>),
    last_audio_dts: Option<i64>,
}

/// PS counters already added to the process metrics (the demuxer's are cumulative).
#[derive(Default)]
struct PsReported {
    resyncs: u64,
    quirks: BTreeMap<&'static str, u64>,
}

impl PsReported {
    fn flush(&mut self, demux: &PsDemuxer) {
        let m = crate::metrics::metrics();
        let st = demux.stats();
        if st.resyncs > self.resyncs {
            m.ps_resyncs.inc_by(st.resyncs - self.resyncs);
            self.resyncs = st.resyncs;
        }
        for (name, n) in &st.quirk_counts {
            let seen = self.quirks.entry(name).or_insert(0);
            if *n > *seen {
                m.ps_quirks.get_or_create(&crate::metrics::reason(name)).inc_by(n - *seen);
                *seen = *n;
            }
        }
    }
}

/// Media-only receivers (`POST /api/v1/rtp`).
pub struct RtpOpener {
    pub cfg: Arc<Config>,
    pub media: Arc<MediaServer>,
}

fn media_api_error(e: MediaError) -> ApiError {
    let status = match &e {
        MediaError::NoPool => StatusCode::BAD_REQUEST,
        MediaError::PoolExhausted { .. } | MediaError::SsrcExhausted => StatusCode::SERVICE_UNAVAILABLE,
        MediaError::PortBusy { .. } | MediaError::SsrcBusy { .. } => StatusCode::CONFLICT,
        MediaError::Bind { .. } => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    ApiError::new(status, "media", e.to_string())
}

impl RtpControl for RtpOpener {
    fn open(&self, req: RtpOpenRequest) -> BoxFuture<'static, Result<(u16, PullHandle), ApiError>> {
        let cfg = self.cfg.clone();
        let media = self.media.clone();
        Box::pin(async move {
            let port = if req.port == 0 {
                if cfg.media.ports.is_none() {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "no_pool",
                        "port 0 asks for a pool port, but no pool is configured (media.ports)",
                    ));
                }
                PortChoice::Pool
            } else if req.port == cfg.media.rtp_port || req.port == media.shared_port() {
                if req.ssrc.is_none() {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "ssrc_required",
                        "the shared port tells streams apart by SSRC: give \"ssrc\"",
                    ));
                }
                PortChoice::Shared
            } else {
                PortChoice::Exact(req.port)
            };
            let peer =
                match (req.transport, req.peer) {
                    (Transport::TcpActive, Some(peer)) => Some(peer),
                    (Transport::TcpActive, None) => {
                        return Err(ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "peer_required",
                            "tcp-active: the gateway connects to the source; give \"peer\": \"ip:port\"",
                        ))
                    }
                    (_, Some(_)) => return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "\"peer\" is for tcp-active only: with udp and tcp-passive the source sends to us",
                    )),
                    (_, None) => None,
                };
            let started_at = Instant::now();
            let label = format!("rtp/{}", req.stream);
            let session = media
                .open(OpenRequest { transport: req.transport, ssrc: req.ssrc, port, label })
                .await
                .map_err(media_api_error)?;
            let port = session.port;
            if let Some(peer) = peer {
                if let Err(e) = session.connect_active(peer).await {
                    session.close();
                    return Err(ApiError::new(
                        StatusCode::BAD_GATEWAY,
                        "connect_failed",
                        format!("tcp-active: cannot connect to {peer}: {e}"),
                    ));
                }
            }
            let policy = DemuxPolicy { g711_0x90_is_ulaw: cfg.media.g711_0x90_is_ulaw };
            let (tx, rx) = mpsc::channel(FRAME_QUEUE);
            let (stop_tx, stop_rx) = oneshot::channel::<String>();
            let name = req.stream.clone();
            tokio::spawn(async move {
                let (reason, _) = pump(session, policy, tx.clone(), stop_rx, None).await;
                tracing::info!(stream = %name, %reason, "media-only stream stopped");
                let _ = tx.try_send(SourceEvent::Ended(reason));
            });
            Ok((
                port,
                PullHandle {
                    events: rx,
                    stopper: Box::new(move |reason| {
                        let _ = stop_tx.send(reason);
                    }),
                    transport: req.transport.as_str().to_string(),
                    started_at,
                },
            ))
        })
    }
}

/// The device API's view of the SIP side.
pub struct SignalControl(pub SignalHandle);

impl DeviceControl for SignalControl {
    fn is_online(&self, device_id: &str) -> bool {
        self.0.device_online(device_id)
    }

    fn refresh_catalog(&self, device_id: &str) -> BoxFuture<'static, Result<(), String>> {
        let signal = self.0.clone();
        let id = device_id.to_owned();
        Box::pin(async move { signal.refresh_catalog(&id).await.map_err(|e| e.to_string()) })
    }
}

/// A started gateway.
pub struct Running {
    pub http_addr: SocketAddr,
    pub sip_addr: SocketAddr,
    pub signal: SignalHandle,
    pub hub: Arc<Hub>,
    pub media: Arc<MediaServer>,
    pub store: Store,
    http_task: JoinHandle<()>,
    sip_task: JoinHandle<()>,
}

/// Open the store, bind SIP, media and HTTP, and serve in background tasks.
pub async fn start(cfg: Config) -> Result<Running, GatewayError> {
    let cfg = Arc::new(cfg);
    let store = Store::open(&cfg.store.path)
        .map_err(|source| GatewayError::Store { path: cfg.store.path.display().to_string(), source })?;
    let (signal, sip_task) = SipServer::start(cfg.clone(), store.clone()).await?;
    let media = MediaServer::start_with_server_id(&cfg.media, &cfg.sip.id).await?;
    let puller = Arc::new(GbPuller {
        cfg: cfg.clone(),
        signal: signal.clone(),
        media: media.clone(),
        store: store.clone(),
    });
    let hub = Hub::new(HubConfig::from_config(&cfg), puller, Arc::new(ProtoMux));
    let state = AppState {
        hub: hub.clone(),
        config: cfg.clone(),
        rtp: Some(Arc::new(RtpOpener { cfg: cfg.clone(), media: media.clone() })),
    };
    let devices = crate::http::devices::router(DevicesState {
        store: store.clone(),
        control: Arc::new(SignalControl(signal.clone())),
    });
    let router = crate::http::router(state, devices);
    let listener = tokio::net::TcpListener::bind(cfg.http.listen)
        .await
        .map_err(|source| GatewayError::HttpBind { addr: cfg.http.listen, source })?;
    let http_addr =
        listener.local_addr().map_err(|source| GatewayError::HttpBind { addr: cfg.http.listen, source })?;
    let stuck = cfg.stream.slow_viewer_timeout;
    let http_task = tokio::spawn(async move {
        if let Err(e) = crate::http::serve_with(listener, router, stuck).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    let sip_addr = signal.local_sip_addr();
    tracing::info!(%http_addr, %sip_addr, server_id = %cfg.sip.id, domain = %cfg.sip.domain(), "gbrelay started");
    Ok(Running { http_addr, sip_addr, signal, hub, media, store, http_task, sip_task })
}

impl Running {
    /// End every stream (BYE to each device), stop SIP and HTTP.
    pub async fn shutdown(self) {
        self.hub.stop_all("shutdown");
        // Give the stream tasks a moment to send their BYEs before the SIP core stops.
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.signal.shutdown().await;
        self.http_task.abort();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.sip_task).await;
    }
}

/// Run until SIGINT or SIGTERM, then shut down cleanly.
pub async fn run(cfg: Config) -> Result<(), GatewayError> {
    let running = start(cfg).await?;
    wait_for_signal().await;
    tracing::info!("shutting down: BYE every session");
    running.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
