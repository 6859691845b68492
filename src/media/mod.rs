//! RTP receivers: shared port (UDP demuxed by SSRC, TCP passive with one connection per stream),
//! port pool (one port per stream, keyed by port whatever the SSRC), TCP active (we connect).
//!
//! Belongs here: sockets and tasks that turn a device's RTP into an ordered stream of RTP payloads
//! ([`MediaEvent::Payload`], MPEG-PS bytes) per stream, with loss reported as
//! [`MediaEvent::Loss`]; port / SSRC allocation and quarantine; per-stream counters and the
//! ingress metrics. Does not belong here: parsing RTP (that is the pure `proto::rtp`), demuxing PS
//! or anything about frames (the consumer of [`MediaSession::events`] does that), SIP / SDP.
//!
//! # Use
//! ```text
//! let media = MediaServer::start(&cfg.media).await?;            // binds the shared UDP + TCP port
//! let mut s = media.open(OpenRequest { transport, port: media.default_port_choice(), ..Default::default() }).await?;
//! // offer s.port and s.ssrc in the INVITE; on the 200 OK:
//! s.set_answer_ssrc(answer_y);                                  // if the answer has a y= line
//! s.connect_active(device_addr).await?;                         // TCP active only
//! while let Some(ev) = s.events.recv().await { … }             // Payload / Loss / Closed
//! drop(s);                                                      // or s.close(): port + SSRC rest in quarantine
//! ```
//!
//! # Policies (documented behaviours)
//! - **Shared UDP port**: packets go to the stream whose offered SSRC, or answer SSRC
//!   ([`MediaSession::set_answer_ssrc`]), they carry. Others are dropped and counted
//!   (`rtp_dropped{reason="unknown_ssrc"}` and `ssrc_mismatches`, or
//!   `reason="quarantined_ssrc"` for an SSRC of a stream closed less than `quarantine` ago).
//!   Packets of a stream whose SSRC is not the offered one (the answer SSRC) are accepted and
//!   counted in [`StreamCounters::ssrc_mismatch`]. A device that sends neither SSRC cannot be
//!   received on the shared UDP port: use the port pool or TCP.
//! - **Shared TCP passive port**: each accepted connection is one stream, identified by the SSRC of
//!   its first RTP packet (offered or answer SSRC). If that matches no stream and exactly one
//!   shared TCP passive stream has never had a connection, the connection is bound to it and the
//!   mismatch counted ("sole waiting stream" policy); otherwise it is closed and counted. A stream
//!   has at most one live connection; another one for it is refused while the first lives, and
//!   accepted after it ended (device reconnect). Connections must send their first packet within
//!   [`FIRST_PACKET_TIMEOUT`]; at most [`MAX_PENDING_CONNECTIONS`] wait to be identified.
//! - **Port pool**: one UDP socket or TCP listener per stream on a port of `cfg.ports`; every
//!   packet on it belongs to the stream, whatever its SSRC (devices send 0 or their own; counted
//!   as mismatches when an offered SSRC exists).
//! - **Quarantine**: a released pool port and a released offered SSRC rest for `cfg.quarantine`
//!   and then go to the back of the line. A device's own answer SSRC is not quarantined (devices
//!   reuse one SSRC for every dialog; prefer the pool or TCP for those).
//! - **Ordering**: UDP goes through a [`ReorderWindow`] (`reorder_depth`, `reorder_wait`); TCP is
//!   in order by nature (RFC 4571 deframing, a depth-1 window only detects sequence gaps). A gap
//!   given up is a [`MediaEvent::Loss`]: the consumer drops the partial frame.
//! - **RTCP** multiplexed on the RTP port (payload types 72–76 as RTP, RFC 5761 §4) is ignored.
//! - **Bounded memory**: the shared-UDP per-stream queue ([`STREAM_QUEUE`]) and the event channel
//!   ([`EVENT_QUEUE`]) are bounded. If the consumer lags, payloads are dropped and counted
//!   (`StreamCounters::overflow`, `rtp_dropped{reason="consumer_lagging"}`) and a `Loss` is
//!   delivered before the next payload, so the demuxer resynchronises. TCP frames are capped at
//!   [`MAX_TCP_FRAME`] bytes.
//! - **Receive cost**: UDP datagrams are received into one reused 64 KiB buffer and copied once
//!   into an exact-size `Bytes` (so a retained payload never pins a large block); TCP frames are
//!   zero-copy slices of the read buffer. `recvmmsg` / GRO batching is not done yet (DESIGN §3.4).
//! - **Bind address**: `cfg.ip` when it is a loopback address (tests), else all interfaces.

mod alloc;
mod tcp;
mod udp;

pub use alloc::ssrc_domain;

use crate::config::{MediaConfig, Transport};
use crate::metrics::{metrics, reason};
use crate::proto::rtp::{Delivery, ReorderStats, ReorderWindow, RtpPacket};
use alloc::{PortPool, SsrcPool};
use bytes::Bytes;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

/// Capacity of each stream's event channel.
pub const EVENT_QUEUE: usize = 1024;
/// Capacity of the queue between the shared UDP socket and a stream's reorder task.
pub const STREAM_QUEUE: usize = 1024;
/// Largest RFC 4571 frame accepted on TCP.
pub const MAX_TCP_FRAME: usize = 65535;
/// How long [`MediaSession::connect_active`] waits for the device to accept.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection to the shared TCP port may take to send its first RTP packet.
pub const FIRST_PACKET_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections to the shared TCP port waiting to be identified, at most.
pub const MAX_PENDING_CONNECTIONS: usize = 256;

/// Errors of the media layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    #[error("cannot bind {proto} {addr}: {source}")]
    Bind { proto: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("no port pool is configured (media.ports)")]
    NoPool,
    #[error("port pool {first}-{last} has no free port (some may be in quarantine)")]
    PoolExhausted { first: u16, last: u16 },
    #[error("port {port} is in use or in quarantine")]
    PortBusy { port: u16 },
    #[error("SSRC {ssrc} is {why}")]
    SsrcBusy { ssrc: u32, why: &'static str },
    #[error("no free SSRC")]
    SsrcExhausted,
    #[error("stream {label:?} is {transport:?}, not tcp-active")]
    NotActive { label: String, transport: Transport },
    #[error("stream {label:?} already has a live connection")]
    AlreadyConnected { label: String },
    #[error("connect to {peer} for stream {label:?}: {source}")]
    Connect { peer: SocketAddr, label: String, source: std::io::Error },
    #[error("connect to {peer} for stream {label:?} timed out after {timeout:?}")]
    ConnectTimeout { peer: SocketAddr, label: String, timeout: Duration },
}

/// Which port a stream is received on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PortChoice {
    /// The shared `rtp_port` (streams told apart by SSRC / by connection).
    #[default]
    Shared,
    /// A port of the pool `media.ports` (error if none is configured).
    Pool,
    /// This port: the shared port if equal to it, a pool port if inside the pool (must be free),
    /// else bound as given (not quarantined on release).
    Exact(u16),
}

/// What to receive.
#[derive(Debug, Clone, Default)]
pub struct OpenRequest {
    pub transport: Transport,
    /// SSRC to offer; `None` allocates a live one (`0…`, GB/T 28181 scheme,
    /// [`MediaServer::start_with_server_id`]); a playback stream passes its own `1…` SSRC.
    /// On the shared port a given SSRC must not be in use or in quarantine.
    pub ssrc: Option<u32>,
    pub port: PortChoice,
    /// For logs (e.g. "34020000001180000001/34020000001320000001" or "rtp/cam1").
    pub label: String,
}

/// What a stream delivers, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// An RTP payload (MPEG-PS bytes), in sequence order, with the packet's marker bit: set on
    /// the last packet of a frame (GB/T 28181-2016 Annex C; RFC 3551 §4.1 leaves its meaning to
    /// the payload format), so the demuxer can hand the frame on without waiting for the next.
    Payload { data: Bytes, marker: bool },
    /// `lost` packets were given up (or dropped because the consumer lagged): drop the partial
    /// frame and resynchronise.
    Loss { lost: u32 },
    /// The TCP connection ended (peer closed, error). The session stays open: a passive stream
    /// may be reconnected by the device, an active one with [`MediaSession::connect_active`].
    Closed { reason: String },
}

/// Per-stream counters, updated by the receive tasks.
#[derive(Debug, Default)]
pub struct StreamCounters {
    /// RTP packets received for this stream (valid ones).
    pub packets: AtomicU64,
    /// Bytes of those packets (RTP header included).
    pub bytes: AtomicU64,
    pub lost: AtomicU64,
    pub reordered: AtomicU64,
    pub late: AtomicU64,
    pub duplicate: AtomicU64,
    /// Packets whose SSRC was not the offered one (answer SSRC, 0, the device's own, …).
    pub ssrc_mismatch: AtomicU64,
    /// Malformed packets or frames dropped (only where they can be attributed to the stream).
    pub malformed: AtomicU64,
    /// Payloads dropped because a bounded queue was full (consumer lagging).
    pub overflow: AtomicU64,
    /// TCP connections accepted or made for this stream.
    pub connections: AtomicU64,
    /// Source restarts seen (big sequence jump).
    pub restarts: AtomicU64,
}

/// A plain copy of [`StreamCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CounterValues {
    pub packets: u64,
    pub bytes: u64,
    pub lost: u64,
    pub reordered: u64,
    pub late: u64,
    pub duplicate: u64,
    pub ssrc_mismatch: u64,
    pub malformed: u64,
    pub overflow: u64,
    pub connections: u64,
    pub restarts: u64,
}

impl StreamCounters {
    pub fn snapshot(&self) -> CounterValues {
        CounterValues {
            packets: self.packets.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            lost: self.lost.load(Relaxed),
            reordered: self.reordered.load(Relaxed),
            late: self.late.load(Relaxed),
            duplicate: self.duplicate.load(Relaxed),
            ssrc_mismatch: self.ssrc_mismatch.load(Relaxed),
            malformed: self.malformed.load(Relaxed),
            overflow: self.overflow.load(Relaxed),
            connections: self.connections.load(Relaxed),
            restarts: self.restarts.load(Relaxed),
        }
    }
}

/// How a session holds its port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Binding {
    Shared,
    Pool,
    Adhoc,
}

static MALFORMED_LOG: crate::metrics::LogLimiter = crate::metrics::LogLimiter::new(10);
static ROUTING_LOG: crate::metrics::LogLimiter = crate::metrics::LogLimiter::new(10);

/// Count a dropped packet by reason.
fn dropped(why: &str) {
    metrics().rtp_dropped.get_or_create(&reason(why)).inc();
}

/// State shared by a session's handle and its receive tasks.
pub(crate) struct Session {
    id: u64,
    label: String,
    transport: Transport,
    port: u16,
    binding: Binding,
    offered: Option<u32>,
    /// Whether `offered` is held in the SSRC pool (released into quarantine on close).
    ssrc_reserved: bool,
    answer: Mutex<Option<u32>>,
    counters: Arc<StreamCounters>,
    events: mpsc::Sender<MediaEvent>,
    pending_loss: AtomicU64,
    tasks: Mutex<Vec<AbortHandle>>,
    /// The current TCP reader.
    conn: Mutex<Option<AbortHandle>>,
    conn_alive: AtomicBool,
    closed: AtomicBool,
    reorder_depth: usize,
    reorder_wait: Duration,
}

impl Session {
    /// Whether `ssrc` is this stream's offered or answer SSRC.
    fn owns_ssrc(&self, ssrc: u32) -> bool {
        self.offered == Some(ssrc) || *self.answer.lock().expect("answer lock") == Some(ssrc)
    }

    /// Count a packet for this stream; counts a mismatch if its SSRC is not the offered one.
    fn count_packet(&self, ssrc: u32, len: usize) {
        self.counters.packets.fetch_add(1, Relaxed);
        self.counters.bytes.fetch_add(len as u64, Relaxed);
        if self.offered.is_some_and(|o| o != ssrc) {
            self.counters.ssrc_mismatch.fetch_add(1, Relaxed);
            metrics().ssrc_mismatches.inc();
        }
    }

    fn count_malformed(&self, why: &str, detail: &dyn std::fmt::Display, peer: Option<SocketAddr>) {
        self.counters.malformed.fetch_add(1, Relaxed);
        dropped(why);
        if MALFORMED_LOG.allow() {
            tracing::warn!(stream = %self.label, ?peer, "dropped {why} packet: {detail}");
        }
    }

    /// Hand an event to the consumer without waiting; a full channel drops payloads and turns them
    /// into a `Loss` delivered before the next payload.
    fn emit(&self, ev: MediaEvent) {
        use mpsc::error::TrySendError;
        let pending = self.pending_loss.load(Relaxed);
        if pending > 0 {
            let lost = u32::try_from(pending).unwrap_or(u32::MAX);
            match self.events.try_send(MediaEvent::Loss { lost }) {
                Ok(()) => {
                    self.pending_loss.fetch_sub(u64::from(lost), Relaxed);
                }
                Err(TrySendError::Full(_)) => return self.note_dropped(ev),
                Err(TrySendError::Closed(_)) => return,
            }
        }
        match self.events.try_send(ev) {
            Ok(()) => {}
            Err(TrySendError::Full(ev)) => self.note_dropped(ev),
            Err(TrySendError::Closed(_)) => {}
        }
    }

    fn note_dropped(&self, ev: MediaEvent) {
        match ev {
            MediaEvent::Payload { .. } => {
                self.pending_loss.fetch_add(1, Relaxed);
                self.counters.overflow.fetch_add(1, Relaxed);
                dropped("consumer_lagging");
            }
            MediaEvent::Loss { lost } => {
                self.pending_loss.fetch_add(u64::from(lost), Relaxed);
            }
            ev @ MediaEvent::Closed { .. } => {
                // Rare and must arrive: wait for room in a task of its own.
                let tx = self.events.clone();
                tokio::spawn(async move {
                    let _ = tx.send(ev).await;
                });
            }
        }
    }

    fn add_task(&self, h: AbortHandle) {
        self.tasks.lock().expect("tasks lock").push(h);
    }
}

/// The ordering stage of one stream: a reorder window and the counters it last published.
pub(crate) struct Ordered {
    window: ReorderWindow,
    last: ReorderStats,
}

impl Ordered {
    pub(crate) fn new(depth: usize, wait: Duration) -> Self {
        Ordered { window: ReorderWindow::new(depth, wait), last: ReorderStats::default() }
    }

    pub(crate) fn push(&mut self, now: std::time::Instant, pkt: RtpPacket) {
        self.window.push(now, pkt);
    }

    pub(crate) fn deadline(&self) -> Option<tokio::time::Instant> {
        self.window.poll_timeout().map(tokio::time::Instant::from_std)
    }

    /// Deliver what is due and publish counter deltas.
    pub(crate) fn drain(&mut self, now: std::time::Instant, s: &Session) {
        while let Some(d) = self.window.pop(now) {
            match d {
                Delivery::Packet(p) => s.emit(MediaEvent::Payload { data: p.payload, marker: p.marker }),
                Delivery::Gap { lost } => s.emit(MediaEvent::Loss { lost: u32::from(lost) }),
            }
        }
        let st = self.window.stats();
        let m = metrics();
        let c = &s.counters;
        let d = |new: u64, old: u64| new.saturating_sub(old);
        let lost = d(st.lost, self.last.lost);
        let reordered = d(st.reordered, self.last.reordered);
        let late = d(st.late, self.last.late);
        let duplicate = d(st.duplicate, self.last.duplicate);
        let restarts = d(st.restarts, self.last.restarts);
        if lost + reordered + late + duplicate + restarts > 0 {
            c.lost.fetch_add(lost, Relaxed);
            c.reordered.fetch_add(reordered, Relaxed);
            c.late.fetch_add(late, Relaxed);
            c.duplicate.fetch_add(duplicate, Relaxed);
            c.restarts.fetch_add(restarts, Relaxed);
            m.rtp_lost.inc_by(lost);
            m.rtp_reordered.inc_by(reordered);
            m.rtp_late.inc_by(late);
            m.rtp_duplicate.inc_by(duplicate);
        }
        self.last = st;
    }
}

/// A route of the shared UDP socket: the stream and the queue to its reorder task.
#[derive(Clone)]
pub(crate) struct UdpRoute {
    session: Arc<Session>,
    tx: mpsc::Sender<(std::time::Instant, RtpPacket)>,
}

struct State {
    next_id: u64,
    sessions: HashMap<u64, Arc<Session>>,
    pool: Option<PortPool>,
    ssrcs: SsrcPool,
}

/// Shared state of the media server (held by its tasks and by every session handle).
pub(crate) struct Inner {
    cfg: MediaConfig,
    bind_ip: IpAddr,
    shared_port: u16,
    state: Mutex<State>,
    /// Shared UDP port: SSRC → stream.
    udp_routes: RwLock<HashMap<u32, UdpRoute>>,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("media state lock")
    }

    /// Release a session: stop its tasks, drop its routes, quarantine its pool port and SSRC.
    fn release(&self, id: u64) {
        let now = tokio::time::Instant::now();
        let mut st = self.lock();
        let Some(s) = st.sessions.remove(&id) else { return };
        s.closed.store(true, Relaxed);
        for h in s.tasks.lock().expect("tasks lock").drain(..) {
            h.abort();
        }
        if let Some(h) = s.conn.lock().expect("conn lock").take() {
            h.abort();
        }
        if s.binding == Binding::Shared && s.transport == Transport::Udp {
            let mut routes = self.udp_routes.write().expect("routes lock");
            let answer = *s.answer.lock().expect("answer lock");
            for ssrc in [s.offered, answer].into_iter().flatten() {
                if routes.get(&ssrc).is_some_and(|r| r.session.id == id) {
                    routes.remove(&ssrc);
                }
            }
        }
        if s.binding == Binding::Pool {
            if let Some(pool) = st.pool.as_mut() {
                pool.release(now, s.port);
            }
        }
        if s.ssrc_reserved {
            if let Some(o) = s.offered {
                st.ssrcs.release(now, o);
            }
        }
        tracing::debug!(stream = %s.label, port = s.port, "media session released");
    }

    fn ssrc_resting(&self, ssrc: u32) -> bool {
        self.lock().ssrcs.is_resting(ssrc)
    }
}

/// The RTP receive side of the gateway.
pub struct MediaServer {
    inner: Arc<Inner>,
    tasks: Vec<AbortHandle>,
}

impl Drop for MediaServer {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn bind_ip(cfg: &MediaConfig) -> IpAddr {
    if cfg.ip.is_loopback() {
        cfg.ip
    } else {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }
}

impl MediaServer {
    /// Start with the default server ID's SSRC domain (`34020000002000000001` → 20000).
    pub async fn start(cfg: &MediaConfig) -> Result<Arc<MediaServer>, MediaError> {
        Self::start_with_server_id(cfg, "34020000002000000001").await
    }

    /// Bind the shared UDP and TCP port (`rtp_port`; 0 picks a free one, the same number for
    /// both) and start their tasks. Pool ports are bound lazily, per stream. Allocated SSRCs use
    /// digits 4–8 of `server_id`.
    pub async fn start_with_server_id(
        cfg: &MediaConfig,
        server_id: &str,
    ) -> Result<Arc<MediaServer>, MediaError> {
        let ip = bind_ip(cfg);
        let (udp, tcp) = udp::bind_shared_pair(ip, cfg.rtp_port, cfg.udp_recv_buffer).await?;
        let shared_port = udp.local_addr().map(|a| a.port()).unwrap_or(cfg.rtp_port);
        let pool = cfg.ports.map(|r| PortPool::new(r, Some(shared_port), cfg.quarantine));
        let inner = Arc::new(Inner {
            cfg: cfg.clone(),
            bind_ip: ip,
            shared_port,
            state: Mutex::new(State {
                next_id: 1,
                sessions: HashMap::new(),
                pool,
                ssrcs: SsrcPool::new(ssrc_domain(server_id), cfg.quarantine),
            }),
            udp_routes: RwLock::new(HashMap::new()),
        });
        let t1 = tokio::spawn(udp::shared_udp_loop(inner.clone(), udp)).abort_handle();
        let t2 = tokio::spawn(tcp::shared_tcp_accept(inner.clone(), tcp)).abort_handle();
        tracing::info!(port = shared_port, pool = ?cfg.ports, "media server listening");
        Ok(Arc::new(MediaServer { inner, tasks: vec![t1, t2] }))
    }

    /// The shared port actually bound (UDP and TCP).
    pub fn shared_port(&self) -> u16 {
        self.inner.shared_port
    }

    pub fn has_pool(&self) -> bool {
        self.inner.cfg.ports.is_some()
    }

    /// The pool when one is configured, else the shared port.
    pub fn default_port_choice(&self) -> PortChoice {
        if self.has_pool() {
            PortChoice::Pool
        } else {
            PortChoice::Shared
        }
    }

    /// Sessions open now.
    pub fn active_sessions(&self) -> usize {
        self.inner.lock().sessions.len()
    }

    /// Free pool ports now (not in use, not in quarantine); 0 without a pool.
    pub fn free_pool_ports(&self) -> usize {
        self.inner.lock().pool.as_ref().map_or(0, |p| p.free_len())
    }

    /// Open a receiver. For UDP and TCP passive, the port is listening when this returns.
    pub async fn open(&self, req: OpenRequest) -> Result<MediaSession, MediaError> {
        let inner = &self.inner;
        let now = tokio::time::Instant::now();
        // Resolve the port choice.
        let choice = match req.port {
            PortChoice::Exact(p) if p == inner.shared_port => PortChoice::Shared,
            other => other,
        };
        // Reserve port and SSRC under the lock; bind outside it.
        let (binding, mut port, offered, ssrc_reserved) = {
            let mut st = inner.lock();
            let (binding, port) = match choice {
                PortChoice::Shared => (Binding::Shared, inner.shared_port),
                PortChoice::Pool => {
                    let pool = st.pool.as_mut().ok_or(MediaError::NoPool)?;
                    let port = pool.take(now).ok_or(MediaError::PoolExhausted {
                        first: pool.range.first,
                        last: pool.range.last,
                    })?;
                    (Binding::Pool, port)
                }
                PortChoice::Exact(p) => match st.pool.as_mut() {
                    Some(pool) if pool.contains(p) => {
                        if !pool.take_exact(now, p) {
                            return Err(MediaError::PortBusy { port: p });
                        }
                        (Binding::Pool, p)
                    }
                    _ => (Binding::Adhoc, p),
                },
            };
            let undo = |st: &mut State| {
                if binding == Binding::Pool {
                    if let Some(pool) = st.pool.as_mut() {
                        pool.put_back(port);
                    }
                }
            };
            let (offered, reserved) = match req.ssrc {
                Some(ssrc) if binding == Binding::Shared => {
                    if let Some(why) = st.ssrcs.busy(now, ssrc) {
                        undo(&mut st);
                        return Err(MediaError::SsrcBusy { ssrc, why });
                    }
                    st.ssrcs.reserve(now, ssrc);
                    (Some(ssrc), true)
                }
                Some(ssrc) => (Some(ssrc), false),
                None => match st.ssrcs.allocate(now, false) {
                    Some(s) => (Some(s), true),
                    None => {
                        undo(&mut st);
                        return Err(MediaError::SsrcExhausted);
                    }
                },
            };
            (binding, port, offered, reserved)
        };

        // Bind what this stream owns (pool / ad hoc port, UDP or TCP passive).
        let mut sock = None;
        if binding != Binding::Shared && req.transport != Transport::TcpActive {
            let mut tries = 0;
            loop {
                match udp::bind_one(inner.bind_ip, port, req.transport, inner.cfg.udp_recv_buffer).await {
                    Ok(s) => {
                        sock = Some(s);
                        break;
                    }
                    Err(e) => {
                        let mut st = inner.lock();
                        let next = match (binding, st.pool.as_mut()) {
                            (Binding::Pool, Some(pool)) if req.port == PortChoice::Pool && tries < 16 => {
                                pool.put_back(port);
                                tries += 1;
                                pool.take(now)
                            }
                            (Binding::Pool, Some(pool)) => {
                                pool.put_back(port);
                                None
                            }
                            _ => None,
                        };
                        match next {
                            Some(p) => port = p,
                            None => {
                                if ssrc_reserved {
                                    if let Some(o) = offered {
                                        st.ssrcs.release(now, o);
                                    }
                                }
                                return Err(e);
                            }
                        }
                    }
                }
            }
        }

        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let counters = Arc::new(StreamCounters::default());
        let mut st = inner.lock();
        let id = st.next_id;
        st.next_id += 1;
        let session = Arc::new(Session {
            id,
            label: req.label.clone(),
            transport: req.transport,
            port,
            binding,
            offered,
            ssrc_reserved,
            answer: Mutex::new(None),
            counters: counters.clone(),
            events: tx,
            pending_loss: AtomicU64::new(0),
            tasks: Mutex::new(Vec::new()),
            conn: Mutex::new(None),
            conn_alive: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            reorder_depth: inner.cfg.reorder_depth,
            reorder_wait: inner.cfg.reorder_wait,
        });
        st.sessions.insert(id, session.clone());
        drop(st);

        match (binding, req.transport, sock) {
            (Binding::Shared, Transport::Udp, _) => {
                let (qtx, qrx) = mpsc::channel(STREAM_QUEUE);
                if let Some(o) = offered {
                    inner
                        .udp_routes
                        .write()
                        .expect("routes lock")
                        .insert(o, UdpRoute { session: session.clone(), tx: qtx });
                }
                let h = tokio::spawn(udp::stream_task(session.clone(), qrx));
                session.add_task(h.abort_handle());
            }
            (_, _, Some(udp::Bound::Udp(sock))) => {
                let h = tokio::spawn(udp::pool_udp_task(session.clone(), sock));
                session.add_task(h.abort_handle());
            }
            (_, _, Some(udp::Bound::Tcp(listener))) => {
                let h = tokio::spawn(tcp::pool_tcp_accept(session.clone(), listener));
                session.add_task(h.abort_handle());
            }
            // Shared TCP passive: the shared accept loop binds connections by SSRC.
            // TCP active: `connect_active` starts the reader.
            _ => {}
        }
        tracing::debug!(stream = %req.label, port, ssrc = ?offered, transport = req.transport.as_str(), "media session opened");
        Ok(MediaSession {
            port,
            ssrc: offered,
            transport: req.transport,
            events: rx,
            counters,
            handle: SessionHandle { inner: inner.clone(), session },
        })
    }
}

/// Keeps a stream open; dropping it releases the stream (port and SSRC into quarantine).
pub struct SessionHandle {
    inner: Arc<Inner>,
    session: Arc<Session>,
}

impl Drop for SessionHandle {
    fn drop(&mut self) {
        self.inner.release(self.session.id);
    }
}

impl SessionHandle {
    /// Also accept packets (shared UDP) / connections (shared TCP) with the SSRC from the device's
    /// answer (its `y=` line). Returns false if another stream already owns that SSRC on the shared
    /// UDP port (then it is not bound).
    pub fn set_answer_ssrc(&self, ssrc: u32) -> bool {
        let s = &self.session;
        let prev = s.answer.lock().expect("answer lock").replace(ssrc);
        if s.binding != Binding::Shared || s.transport != Transport::Udp || s.offered == Some(ssrc) {
            return true;
        }
        let mut routes = self.inner.udp_routes.write().expect("routes lock");
        if let Some(p) = prev {
            if p != ssrc && s.offered != Some(p) && routes.get(&p).is_some_and(|r| r.session.id == s.id) {
                routes.remove(&p);
            }
        }
        match routes.get(&ssrc) {
            Some(r) if r.session.id == s.id => true,
            Some(r) => {
                if ROUTING_LOG.allow() {
                    tracing::warn!(stream = %s.label, ssrc, other = %r.session.label, "answer SSRC already routed to another stream");
                }
                false
            }
            None => {
                let Some(route) = s.offered.and_then(|o| routes.get(&o).cloned()) else { return false };
                routes.insert(ssrc, route);
                true
            }
        }
    }

    /// TCP active: connect to the device's address from its SDP answer (timeout
    /// [`CONNECT_TIMEOUT`]) and start reading.
    pub async fn connect_active(&self, peer: SocketAddr) -> Result<(), MediaError> {
        tcp::connect_active(&self.session, peer).await
    }
}

/// An open receiver.
pub struct MediaSession {
    /// The port to offer in the SDP `m=` line.
    pub port: u16,
    /// The SSRC to offer (`y=` line).
    pub ssrc: Option<u32>,
    pub transport: Transport,
    /// Payloads in order, losses, connection ends. Bounded ([`EVENT_QUEUE`]).
    pub events: mpsc::Receiver<MediaEvent>,
    pub counters: Arc<StreamCounters>,
    /// Move this out to keep the stream open while `events` goes elsewhere.
    pub handle: SessionHandle,
}

impl MediaSession {
    /// See [`SessionHandle::set_answer_ssrc`].
    pub fn set_answer_ssrc(&self, ssrc: u32) -> bool {
        self.handle.set_answer_ssrc(ssrc)
    }

    /// See [`SessionHandle::connect_active`].
    pub async fn connect_active(&self, peer: SocketAddr) -> Result<(), MediaError> {
        self.handle.connect_active(peer).await
    }

    /// Release the stream now (same as dropping it).
    pub fn close(self) {
        drop(self);
    }
}
