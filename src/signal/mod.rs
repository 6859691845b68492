//! GB/T 28181 signalling over SIP (UDP + TCP on `cfg.sip.listen`): registrar with digest auth,
//! keepalive and online/offline, Catalog/DeviceInfo queries and notifications, INVITE sessions.
//!
//! Layout: `transport.rs` moves bytes (UDP socket, TCP connections); `core.rs` is one task that
//! owns all signalling state and drives the sans-IO engines of `proto::sip`; this file is the
//! public handle the HTTP layer and the stream glue use. Not here: message parsing (`proto::sip`),
//! MANSCDP/SDP (`proto::gb`, `proto::sdp`), persistence (`store`), media.
//!
//! SSRC choice: the caller allocates with [`SignalHandle::allocate_ssrc`] (GB scheme, unique among
//! live sessions, quarantined on release), passes it in [`InviteRequest::ssrc`], and releases it
//! with [`SignalHandle::release_ssrc`] when its stream ends — the media side needs the SSRC before
//! the INVITE anyway (to register the expected stream on a shared port).

mod core;
mod transport;

use crate::config::{Config, Transport};
use crate::proto::gb::SsrcAllocator;
use crate::proto::sdp::Sdp;
use crate::store::Store;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

pub use transport::MAX_TCP_CONNS;

/// Errors of the signalling service.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    #[error("cannot bind SIP on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("bad configuration: {0}")]
    Config(String),
    #[error("device {0} not found")]
    DeviceNotFound(String),
    #[error("device {0} is offline")]
    DeviceOffline(String),
    #[error("device {device} did not answer the query: {reason}")]
    NoAnswer { device: String, reason: String },
    #[error("signalling service stopped")]
    Stopped,
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// A request to open a live (or sub-stream) session on a channel.
#[derive(Debug, Clone)]
pub struct InviteRequest {
    pub device_id: String,
    pub channel_id: String,
    pub transport: Transport,
    pub media_ip: IpAddr,
    pub media_port: u16,
    /// From [`SignalHandle::allocate_ssrc`].
    pub ssrc: u32,
    pub substream: Option<u8>,
    /// How long to wait for the final answer; wins over Timer B (RFC 3261 §17.1.1.2).
    pub deadline: Duration,
}

/// Why an INVITE failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InviteError {
    #[error("device not found")]
    DeviceNotFound,
    #[error("channel not found")]
    ChannelNotFound,
    #[error("device offline")]
    DeviceOffline,
    #[error("device refused: {status} {reason}")]
    Refused { status: u16, reason: String },
    #[error("no answer in time")]
    Timeout,
    #[error("busy: {0}")]
    Busy(String),
    #[error("transport: {0}")]
    Transport(String),
}

/// An established session. Dropping it without [`InviteSession::bye`] sends BYE in the background.
#[derive(Debug)]
pub struct InviteSession {
    pub call_id: String,
    /// The device's SDP (its `y=` SSRC; its address and port for TCP active).
    pub answer: Sdp,
    /// Fires when the device sends BYE or goes offline, with a reason.
    pub ended: oneshot::Receiver<String>,
    guard: SessionGuard,
}

#[derive(Debug)]
struct SessionGuard {
    call_id: String,
    cmd: mpsc::UnboundedSender<core::Cmd>,
    done: bool,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.cmd.send(core::Cmd::Bye { call_id: self.call_id.clone(), reply: None });
        }
    }
}

impl InviteSession {
    /// Send BYE and wait for its answer (or its transaction timeout).
    pub async fn bye(mut self) {
        self.guard.done = true;
        let (tx, rx) = oneshot::channel();
        if self.guard.cmd.send(core::Cmd::Bye { call_id: self.call_id.clone(), reply: Some(tx) }).is_ok() {
            let _ = rx.await;
        }
    }
}

pub(crate) struct Shared {
    online: Mutex<HashSet<String>>,
    ssrc: Mutex<SsrcAllocator>,
    local: SocketAddr,
}

impl Shared {
    fn online(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.online.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The handle to the running SIP service. Cheap to clone.
#[derive(Clone)]
pub struct SignalHandle {
    cmd: mpsc::UnboundedSender<core::Cmd>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SignalHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalHandle").field("local", &self.shared.local).finish_non_exhaustive()
    }
}

/// The SIP server.
pub struct SipServer;

impl SipServer {
    /// Bind `cfg.sip.listen` (UDP and TCP), BYE the sessions the store remembers from a previous
    /// run, and serve until [`SignalHandle::shutdown`].
    pub async fn start(
        cfg: Arc<Config>,
        store: Store,
    ) -> Result<(SignalHandle, JoinHandle<()>), SignalError> {
        let ssrc = SsrcAllocator::new(&cfg.sip.id, cfg.media.quarantine)
            .map_err(|e| SignalError::Config(e.to_string()))?;
        let (net_tx, net_rx) = mpsc::channel(4096);
        let (transports, tcp) = transport::Transports::bind(cfg.sip.listen, net_tx)
            .await
            .map_err(|source| SignalError::Bind { addr: cfg.sip.listen, source })?;
        let local = transports.local_addr();
        let shared = Arc::new(Shared { online: Mutex::new(HashSet::new()), ssrc: Mutex::new(ssrc), local });
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let core = core::Core::new(cfg, store, transports.clone(), shared.clone(), cmd_tx.clone());
        let net_task = tokio::spawn(transports.run(tcp));
        let join = tokio::spawn(async move {
            core.run(net_rx, cmd_rx).await;
            net_task.abort();
        });
        Ok((SignalHandle { cmd: cmd_tx, shared }, join))
    }
}

impl SignalHandle {
    /// Registered and keepalives current.
    pub fn device_online(&self, id: &str) -> bool {
        self.shared.online().contains(id)
    }

    /// Send a Catalog (and DeviceInfo) query; Ok once the device accepted the Catalog query (2xx).
    pub async fn refresh_catalog(&self, device_id: &str) -> Result<(), SignalError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(core::Cmd::RefreshCatalog { device_id: device_id.to_owned(), reply: tx })
            .map_err(|_| SignalError::Stopped)?;
        rx.await.map_err(|_| SignalError::Stopped)?
    }

    /// Open a session (RFC 3261 §13, GB/T 28181 §9.2). Limited per device by
    /// `sip.invite_concurrency` and paced by `sip.invite_interval`.
    pub async fn invite(&self, req: InviteRequest) -> Result<InviteSession, InviteError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(core::Cmd::Invite { req: Box::new(req), reply: tx })
            .map_err(|_| InviteError::Transport("signalling stopped".into()))?;
        let (call_id, answer, ended) =
            rx.await.map_err(|_| InviteError::Transport("signalling stopped".into()))??;
        Ok(InviteSession {
            guard: SessionGuard { call_id: call_id.clone(), cmd: self.cmd.clone(), done: false },
            call_id,
            answer,
            ended,
        })
    }

    /// BYE every session, then stop the service.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.cmd.send(core::Cmd::Shutdown { reply: tx }).is_ok() {
            let _ = rx.await;
        }
    }

    /// The bound SIP address (UDP and TCP).
    pub fn local_sip_addr(&self) -> SocketAddr {
        self.shared.local
    }

    /// A live SSRC by the GB scheme (`0` + digits 4–8 of the server ID + sequence); `None` when all
    /// 10 000 are live or quarantined.
    pub fn allocate_ssrc(&self) -> Option<u32> {
        self.shared.ssrc.lock().unwrap_or_else(|e| e.into_inner()).allocate(Instant::now(), false).ok()
    }

    /// Release an SSRC; it is quarantined for `media.quarantine` before reuse.
    pub fn release_ssrc(&self, ssrc: u32) {
        self.shared.ssrc.lock().unwrap_or_else(|e| e.into_inner()).release(Instant::now(), ssrc);
    }
}
