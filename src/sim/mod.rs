//! `gbrelay sim`: a simulated GB/T 28181 device (an NVR with N channels, or an IPC) that plays the
//! DEVICE side against a SIP server: REGISTER with digest auth (RFC 3261 §10, RFC 2617), keepalives,
//! Catalog / DeviceInfo answers in GB2312, INVITE answers in every media transport, and a PS file
//! streamed over RTP at real-time pace. Used by the integration tests, the load harness and users.
//!
//! It is written independently of the gateway's `proto::sip` / `proto::rtp` / `proto::ps` (its own
//! SIP text codec in [`sip`], SDP in [`sdp`], MANSCDP in [`manscdp`], PS slicing in [`ps`], RTP in
//! [`rtp`]) so that the two implementations check each other. The gateway's code does not belong
//! here, and nothing here belongs in `proto`. Layout: this file holds the public API ([`Simulator`],
//! [`SimConfig`], [`run_until_shutdown`]); `ua.rs` the SIP user agent (transport, transactions,
//! REGISTER, keepalive, MESSAGE answers); `dialog.rs` INVITE dialogs and streaming; [`source`] a
//! SIP-less RTP source for media-only receivers; [`cli`] the `gbrelay sim` arguments.
//!
//! Documented behaviours:
//! - Every INVITE received counts in [`SimStats::invites`], retransmissions included (they are also
//!   counted in [`SimStats::invite_retransmissions`]); [`AnswerPolicy::NoAnswer`] answers nothing.
//! - [`Simulator::go_silent`] stops keepalives and REGISTER refreshes; requests from the server are
//!   still answered. [`Simulator::resume`] undoes it.
//! - A stream whose TCP connection breaks ends with a device-initiated BYE; a server that listens
//!   (TCP passive) is connected to with retries for up to 10 s after the ACK; a server that connects
//!   (TCP active) must do so within 10 s.
//! - Media pacing follows the pack SCRs; each loop of the file advances SCR/PTS/DTS and the RTP
//!   timestamp by the file's duration, and sequence numbers continue. Loss/reorder apply to UDP only.
//! - A refresh REGISTER keeps the Call-ID; [`Simulator::reboot`] (and every new start) uses a new one.
//!   A keepalive answered with an error, or three unanswered in a row, triggers a new REGISTER; so
//!   does a reconnected TCP connection.
//! - NVR channel IDs are the device ID's first 10 digits, type `132`, the device's network digit and
//!   a 6-digit serial 1..=N; an IPC (type 131/132) has one channel whose ID is its own.

pub mod cli;
pub mod manscdp;
pub mod ps;
pub mod rtp;
pub mod sdp;
pub mod sip;
pub mod source;

mod dialog;
mod ua;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

pub use sdp::MediaTransport;
pub use source::{MediaSource, MediaSourceConfig, MediaSourceStats};

use manscdp::SimChannel;
use ps::PsFile;
use rtp::RtpCounters;
use sip::SipMessage;

use dialog::*;
use ua::*;

/// SIP transport the device uses towards the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SipTransport {
    Udp,
    Tcp,
}

/// Which SSRC the device puts in its answer's `y=` and in its RTP packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SsrcPolicy {
    /// The one the server offered in `y=` (0 when none was offered).
    Offered,
    /// Always 0 (devices that ignore `y=`).
    Zero,
    /// The device's own value, whatever was offered.
    Own(u32),
}

/// How the device answers INVITE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerPolicy {
    /// 100 Trying, 200 OK with SDP, stream after ACK.
    Accept,
    /// 100 Trying then this final status (e.g. 486).
    Refuse(u16),
    /// Ignore INVITEs completely (the server's retransmissions are counted).
    NoAnswer,
    /// 100 Trying and 180 Ringing, then nothing: the server must CANCEL.
    ProvisionalThenSilence,
}

/// Error of the `FromStr` impls (CLI parsing).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: `{got}` (expected {expected})")]
pub struct ParsePolicyError {
    pub what: &'static str,
    pub got: String,
    pub expected: &'static str,
}

impl std::str::FromStr for SipTransport {
    type Err = ParsePolicyError;
    /// `udp` or `tcp`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "udp" => Ok(SipTransport::Udp),
            "tcp" => Ok(SipTransport::Tcp),
            _ => Err(ParsePolicyError { what: "SIP transport", got: s.into(), expected: "udp | tcp" }),
        }
    }
}

impl std::str::FromStr for SsrcPolicy {
    type Err = ParsePolicyError;
    /// `offered`, `zero`, or `own:<u32>`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePolicyError {
            what: "SSRC policy",
            got: s.into(),
            expected: "offered | zero | own:<u32>",
        };
        match s.to_ascii_lowercase().as_str() {
            "offered" => Ok(SsrcPolicy::Offered),
            "zero" => Ok(SsrcPolicy::Zero),
            l => l.strip_prefix("own:").and_then(|v| v.parse().ok()).map(SsrcPolicy::Own).ok_or_else(err),
        }
    }
}

impl std::str::FromStr for AnswerPolicy {
    type Err = ParsePolicyError;
    /// `accept`, `refuse:<status>`, `no-answer`, or `provisional`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePolicyError {
            what: "answer policy",
            got: s.into(),
            expected: "accept | refuse:<status 300-699> | no-answer | provisional",
        };
        match s.to_ascii_lowercase().as_str() {
            "accept" => Ok(AnswerPolicy::Accept),
            "no-answer" | "noanswer" => Ok(AnswerPolicy::NoAnswer),
            "provisional" | "provisional-then-silence" => Ok(AnswerPolicy::ProvisionalThenSilence),
            l => l
                .strip_prefix("refuse:")
                .and_then(|v| v.parse().ok())
                .filter(|c: &u16| (300..700).contains(c))
                .map(AnswerPolicy::Refuse)
                .ok_or_else(err),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub server: SocketAddr,
    /// 20-digit SIP server ID.
    pub server_id: String,
    pub domain: String,
    /// 20 digits; type (digits 11–13) `118` NVR or `132` IPC.
    pub device_id: String,
    pub password: String,
    /// Bind address (port 0 picks one). Its IP, unless unspecified, is the address put in Via,
    /// Contact and SDP.
    pub local: SocketAddr,
    pub sip_transport: SipTransport,
    /// NVR: number of channels; an IPC always has 1.
    pub channels: u32,
    pub channel_names_chinese: bool,
    /// Catalog items per Response MESSAGE.
    pub catalog_page: u32,
    pub keepalive_interval: Duration,
    pub register_expires: u32,
    /// MPEG-PS file streamed in a loop at real-time pace.
    pub media_file: PathBuf,
    /// UDP media loss probability per packet.
    pub loss: f64,
    /// UDP media reorder probability per packet (swap with the next one).
    pub reorder: f64,
    pub ssrc_policy: SsrcPolicy,
    pub answer: AnswerPolicy,
    pub manufacturer: String,
    /// Seed of the loss/reorder RNG (each stream mixes in its own index).
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            server: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 5060),
            server_id: "34020000002000000001".into(),
            domain: "3402000000".into(),
            device_id: "34020000001180000001".into(),
            password: "12345678".into(),
            local: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            sip_transport: SipTransport::Udp,
            channels: 4,
            channel_names_chinese: true,
            catalog_page: 8,
            keepalive_interval: Duration::from_secs(60),
            register_expires: 3600,
            media_file: PathBuf::from("testdata/h264_aac.ps"),
            loss: 0.0,
            reorder: 0.0,
            ssrc_policy: SsrcPolicy::Offered,
            answer: AnswerPolicy::Accept,
            manufacturer: "Hikvision".into(),
            seed: 1,
        }
    }
}

/// What happened, as the device saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum SimEvent {
    /// 200 OK to a REGISTER with a non-zero Expires.
    Registered,
    /// 200 OK to the REGISTER with `Expires: 0` sent by [`Simulator::stop`].
    Unregistered,
    /// The server refused the credentials (403, or 401 again after an authenticated REGISTER).
    AuthFailed(u16),
    /// Any other final failure of REGISTER (0 = no response).
    RegisterFailed(u16),
    CatalogQueried,
    DeviceInfoQueried,
    /// A new INVITE (not a retransmission): the channel, the transport the offer asks for, the
    /// offered `y=` SSRC and stream number (`a=streamnumber` / `a=stream`).
    Invited {
        channel: String,
        transport: MediaTransport,
        ssrc: Option<u32>,
        stream_number: Option<u32>,
    },
    /// After ACK (and the TCP connection): the first RTP is about to go out.
    StreamStarted {
        channel: String,
    },
    Bye {
        channel: String,
        from_server: bool,
    },
    Cancelled {
        channel: String,
    },
}

/// Counters since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// REGISTER requests sent (authenticated retries and unregister included).
    pub registers: u64,
    pub registered: bool,
    pub keepalives: u64,
    pub catalog_queries: u64,
    pub device_info_queries: u64,
    /// INVITE requests received, retransmissions included.
    pub invites: u64,
    pub invite_retransmissions: u64,
    pub acks: u64,
    /// BYEs received from the server.
    pub byes: u64,
    /// BYEs the device sent.
    pub byes_sent: u64,
    pub cancels: u64,
    pub active_streams: u64,
    pub rtp_packets: u64,
    pub rtp_bytes: u64,
    /// Packets withheld by loss injection.
    pub rtp_dropped: u64,
    /// Packets swapped by reorder injection.
    pub rtp_reordered: u64,
}

/// A running simulated device. Dropping it stops its tasks without unregistering; [`Simulator::stop`]
/// unregisters first.
pub struct Simulator {
    sh: Arc<Shared>,
    /// The register loop, stopped first by [`Simulator::stop`].
    reg_task: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
    /// The receiver created with the channel, handed to the first [`Simulator::events`] caller.
    first_rx: Mutex<Option<broadcast::Receiver<SimEvent>>>,
}

/// One parsed copy of each media file, shared by every simulator in the process (the load harness
/// runs hundreds).
fn load_media(path: &PathBuf) -> std::io::Result<Arc<PsFile>> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Weak<PsFile>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(f) = cache.lock().expect("media cache lock").get(path).and_then(Weak::upgrade) {
        return Ok(f);
    }
    let data = std::fs::read(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("media file {}: {e}", path.display())))?;
    let f = Arc::new(PsFile::parse(Bytes::from(data))?);
    cache.lock().expect("media cache lock").insert(path.clone(), Arc::downgrade(&f));
    Ok(f)
}

/// The `i`-th device ID after `base`: same centre code, industry, type and network digit (digits
/// 1–14), serial (digits 15–20) advanced by `i` modulo 10^6 — for starting many devices (load harness).
/// A `base` that is not 20 digits gets the number appended instead.
pub fn nth_device_id(base: &str, i: u32) -> String {
    match (
        base.len() == 20 && base.bytes().all(|b| b.is_ascii_digit()),
        base.get(14..).map(str::parse::<u32>),
    ) {
        (true, Some(Ok(serial))) => format!("{}{:06}", &base[..14], (serial + i) % 1_000_000),
        _ => format!("{base}{i}"),
    }
}

/// Runs `devices` simulated devices until Ctrl-C or SIGTERM, logging their events with `tracing`,
/// then unregisters them all — what `gbrelay sim` runs. Device `i` gets [`nth_device_id`]`(base, i)`
/// and, when `base.local` has a fixed port, that port + `i`.
pub async fn run_until_shutdown(base: SimConfig, devices: u32) -> std::io::Result<()> {
    let mut sims = Vec::new();
    for i in 0..devices.max(1) {
        let mut cfg = base.clone();
        cfg.device_id = nth_device_id(&base.device_id, i);
        if base.local.port() != 0 {
            let port = u16::try_from(base.local.port() as u32 + i).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "local port + device count exceeds 65535",
                )
            })?;
            cfg.local.set_port(port);
        }
        let id = cfg.device_id.clone();
        let sim = Simulator::start(cfg).await?;
        let mut ev = sim.events();
        tokio::spawn(async move {
            loop {
                match ev.recv().await {
                    Ok(e) => tracing::info!(device = %id, event = ?e, "sim event"),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(device = %id, skipped = n, "sim events lagged")
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
        tracing::info!(device = %sim.sh.cfg.device_id, sip = %sim.sip_local_addr(), channels = sim.channel_ids().len(), "sim device started");
        sims.push(sim);
    }
    shutdown_signal().await;
    tracing::info!(devices = sims.len(), "sim: unregistering");
    futures_util::future::join_all(sims.into_iter().map(Simulator::stop)).await;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn make_channels(cfg: &SimConfig) -> Vec<SimChannel> {
    let id = &cfg.device_id;
    let ty = id.get(10..13).unwrap_or("");
    if ty == "131" || ty == "132" || id.len() != 20 {
        return vec![SimChannel {
            id: id.clone(),
            name: manscdp::channel_name(1, cfg.channel_names_chinese),
            online: true,
            longitude: 120.15,
            latitude: 30.28,
        }];
    }
    (1..=cfg.channels)
        .map(|n| SimChannel {
            id: format!("{}132{}{:06}", &id[..10], &id[13..14], n),
            name: manscdp::channel_name(n, cfg.channel_names_chinese),
            online: true,
            longitude: 120.15 + n as f64 * 0.001,
            latitude: 30.28 + n as f64 * 0.001,
        })
        .collect()
}

async fn resolve_adv_ip(cfg: &SimConfig) -> IpAddr {
    if !cfg.local.ip().is_unspecified() {
        return cfg.local.ip();
    }
    // The address the OS would use towards the server (a connected UDP socket sends nothing).
    let any = if cfg.server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    if let Ok(s) = UdpSocket::bind(any).await {
        if s.connect(cfg.server).await.is_ok() {
            if let Ok(a) = s.local_addr() {
                return a.ip();
            }
        }
    }
    cfg.server.ip()
}

impl Simulator {
    /// Binds the SIP socket (connects, for TCP), loads the media file, and starts registering,
    /// keepalives and request handling in background tasks.
    pub async fn start(cfg: SimConfig) -> std::io::Result<Simulator> {
        let media = load_media(&cfg.media_file)?;
        let adv_ip = resolve_adv_ip(&cfg).await;
        let (events, first_rx) = broadcast::channel(4096);
        let (in_tx, in_rx) = mpsc::unbounded_channel::<(SipMessage, SocketAddr)>();
        let mut tasks = Vec::new();
        let (out, sip_local, tcp_first) = match cfg.sip_transport {
            SipTransport::Udp => {
                let sock = Arc::new(UdpSocket::bind(cfg.local).await?);
                let local = SocketAddr::new(adv_ip, sock.local_addr()?.port());
                let s2 = sock.clone();
                let in_tx = in_tx.clone();
                tasks.push(tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let Ok((n, src)) = s2.recv_from(&mut buf).await else {
                            // ICMP errors surface here on some systems; keep listening.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        };
                        if buf[..n].iter().all(|b| *b == b'\r' || *b == b'\n') {
                            continue;
                        }
                        if let Ok((m, _)) = SipMessage::parse(&buf[..n], true) {
                            if in_tx.send((m, src)).is_err() {
                                return;
                            }
                        }
                    }
                }));
                (Outbound::Udp(sock), local, None)
            }
            SipTransport::Tcp => {
                let stream = tcp_connect(&cfg).await?;
                let local = SocketAddr::new(adv_ip, stream.local_addr()?.port());
                // The writer queue exists before the REGISTER task starts: `tcp_loop` drains it.
                let (wtx, wrx) = mpsc::unbounded_channel::<Vec<u8>>();
                (Outbound::Tcp(Mutex::new(Some(wtx))), local, Some((stream, wrx)))
            }
        };
        let channels = make_channels(&cfg);
        let nvr = channels.len() > 1 || cfg.device_id.get(10..13) == Some("118");
        let model = match (cfg.manufacturer.as_str(), nvr) {
            ("Hikvision", true) => "DS-7932N-R4",
            ("Hikvision", false) => "DS-2CD2T47G2-L",
            ("Dahua", true) => "DHI-NVR5864-4KS2",
            ("Dahua", false) => "DH-IPC-HFW2431S",
            (_, true) => "SIM-NVR",
            (_, false) => "SIM-IPC",
        };
        let sh = Arc::new(Shared {
            model: model.into(),
            firmware: "V4.62.210 build 230501".into(),
            civil_code: cfg.device_id.get(..6).unwrap_or("340200").into(),
            adv_ip,
            sip_local: Mutex::new(sip_local),
            events,
            c: Counters::default(),
            rtp: Arc::new(RtpCounters::default()),
            out,
            pending: Mutex::new(HashMap::new()),
            dialogs: Mutex::new(HashMap::new()),
            tx: Mutex::new(TxCache::default()),
            channels: Mutex::new(channels),
            silent: AtomicBool::new(false),
            registered: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            sn: AtomicU32::new(1),
            stream_index: AtomicU64::new(0),
            reg: tokio::sync::Mutex::new(RegState { call_id: new_call_id(), cseq: 0 }),
            reg_kick: tokio::sync::Notify::new(),
            media,
            last_requests: Mutex::new(HashMap::new()),
            cfg,
        });
        if let Some(first) = tcp_first {
            let sh2 = sh.clone();
            tasks.push(tokio::spawn(tcp_loop(sh2, first, in_tx.clone())));
        }
        drop(in_tx);
        tasks.push(tokio::spawn(dispatch_loop(sh.clone(), in_rx)));
        let reg_task = tokio::spawn(register_loop(sh.clone()));
        tasks.push(tokio::spawn(keepalive_loop(sh.clone())));
        Ok(Simulator { sh, reg_task, tasks, first_rx: Mutex::new(Some(first_rx)) })
    }

    /// Events of this device. The FIRST call returns a receiver that holds every event since
    /// [`Simulator::start`] (up to 4096), so a fast `Registered` is never missed; later calls see
    /// events from the moment of the call.
    pub fn events(&self) -> broadcast::Receiver<SimEvent> {
        if let Some(rx) = self.first_rx.lock().expect("first_rx lock").take() {
            return rx;
        }
        self.sh.events.subscribe()
    }

    pub fn stats(&self) -> SimStats {
        let c = &self.sh.c;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SimStats {
            registers: g(&c.registers),
            registered: self.sh.registered.load(Ordering::Relaxed),
            keepalives: g(&c.keepalives),
            catalog_queries: g(&c.catalog_queries),
            device_info_queries: g(&c.device_info_queries),
            invites: g(&c.invites),
            invite_retransmissions: g(&c.invite_retransmissions),
            acks: g(&c.acks),
            byes: g(&c.byes),
            byes_sent: g(&c.byes_sent),
            cancels: g(&c.cancels),
            active_streams: g(&c.active_streams),
            rtp_packets: g(&self.sh.rtp.packets),
            rtp_bytes: g(&self.sh.rtp.bytes),
            rtp_dropped: g(&self.sh.rtp.dropped),
            rtp_reordered: g(&self.sh.rtp.reordered),
        }
    }

    /// The device's SIP address as put in Via and Contact.
    pub fn sip_local_addr(&self) -> SocketAddr {
        *self.sh.sip_local.lock().expect("sip_local lock")
    }

    /// The last request of `method` the device received from the server (e.g. `"INVITE"` to check
    /// its Subject and SDP), as parsed by the simulator's own SIP codec.
    pub fn last_request(&self, method: &str) -> Option<SipMessage> {
        self.sh.last_requests.lock().expect("last_requests lock").get(method).cloned()
    }

    /// The IDs of the device's channels, in catalog order.
    pub fn channel_ids(&self) -> Vec<String> {
        self.sh.channels.lock().expect("channels lock").iter().map(|c| c.id.clone()).collect()
    }

    /// Unregisters (`Expires: 0`, waiting at most 5 s for the answer), ends every stream without BYE,
    /// and stops all tasks.
    pub async fn stop(mut self) {
        self.sh.stopping.store(true, Ordering::Relaxed);
        self.sh.silent.store(true, Ordering::Relaxed);
        // Stop the register loop first so it cannot refresh concurrently.
        self.reg_task.abort();
        abort_streams(&self.sh);
        let sh = self.sh.clone();
        let r = tokio::time::timeout(Duration::from_secs(5), async move {
            let mut reg = sh.reg.lock().await;
            register_once(&sh, &mut reg, 0).await
        })
        .await;
        if let Ok(Ok(_)) = r {
            self.sh.registered.store(false, Ordering::Relaxed);
            let _ = self.sh.events.send(SimEvent::Unregistered);
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }

    /// Device-initiated BYE for every dialog of `channel`.
    pub async fn send_bye(&self, channel: &str) {
        let ids: Vec<String> = {
            let d = self.sh.dialogs.lock().expect("dialogs lock");
            d.iter().filter(|(_, v)| v.channel == channel).map(|(k, _)| k.clone()).collect()
        };
        for id in ids {
            bye_dialog(&self.sh, &id).await;
        }
    }

    /// Simulates a reboot: every stream ends without BYE, and the device registers again at once with
    /// a new Call-ID (which a server treats as a reboot, GB/T 28181-2016 §9.1.2.1).
    pub async fn reboot(&self) {
        abort_streams(&self.sh);
        self.sh.registered.store(false, Ordering::Relaxed);
        {
            let mut reg = self.sh.reg.lock().await;
            reg.call_id = new_call_id();
            reg.cseq = 0;
        }
        self.sh.reg_kick.notify_one();
    }

    /// Stops keepalives and REGISTER refreshes (the server should declare the device offline).
    pub async fn go_silent(&self) {
        self.sh.silent.store(true, Ordering::Relaxed);
    }

    /// Undoes [`Simulator::go_silent`]: keepalives resume at the next tick.
    pub async fn resume(&self) {
        self.sh.silent.store(false, Ordering::Relaxed);
        self.sh.reg_kick.notify_one();
    }

    /// Sends a catalog event notification (`ADD`, `DEL`, `ON`, `OFF`, also `UPDATE`/`VLOST`…) for
    /// `channel` and applies it to the device's own channel list, waiting for the server's answer.
    pub async fn send_catalog_notify(&self, event: &str, channel: &str) {
        let sh = &self.sh;
        let ch = {
            let mut chans = sh.channels.lock().expect("channels lock");
            let pos = chans.iter().position(|c| c.id == channel);
            let ch = match pos {
                Some(p) => chans[p].clone(),
                None => {
                    let n = chans.len() as u32 + 1;
                    SimChannel {
                        id: channel.to_string(),
                        name: manscdp::channel_name(n, sh.cfg.channel_names_chinese),
                        online: true,
                        longitude: 120.15,
                        latitude: 30.28,
                    }
                }
            };
            match (event, pos) {
                ("ADD", None) => chans.push(ch.clone()),
                ("DEL", Some(p)) => {
                    chans.remove(p);
                }
                ("ON", Some(p)) => chans[p].online = true,
                ("OFF", Some(p)) => chans[p].online = false,
                _ => {}
            }
            let mut ch = ch;
            match event {
                "ON" => ch.online = true,
                "OFF" => ch.online = false,
                _ => {}
            }
            ch
        };
        let sn = sh.sn.fetch_add(1, Ordering::Relaxed);
        let body = manscdp::catalog_notify(sn, &facts(sh), &ch, event);
        let _ = send_message(sh, body).await;
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.sh.stopping.store(true, Ordering::Relaxed);
        self.sh.silent.store(true, Ordering::Relaxed);
        abort_streams(&self.sh);
        self.reg_task.abort();
        for t in &self.tasks {
            t.abort();
        }
        // Close the SIP TCP connection now (its writer task ends when the queue closes) rather than
        // when the last detached transaction task lets go of the shared state.
        if let Outbound::Tcp(slot) = &self.sh.out {
            slot.lock().expect("tcp slot lock").take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nth_device_id_advances_the_serial_only() {
        assert_eq!(nth_device_id("34020000001180000001", 0), "34020000001180000001");
        assert_eq!(nth_device_id("34020000001180000001", 41), "34020000001180000042");
        assert_eq!(nth_device_id("34020000001180999999", 1), "34020000001180000000");
    }

    #[test]
    fn cli_policy_strings_parse() {
        assert_eq!("TCP".parse::<SipTransport>(), Ok(SipTransport::Tcp));
        assert_eq!("own:1234".parse::<SsrcPolicy>(), Ok(SsrcPolicy::Own(1234)));
        assert_eq!("zero".parse::<SsrcPolicy>(), Ok(SsrcPolicy::Zero));
        assert_eq!("refuse:486".parse::<AnswerPolicy>(), Ok(AnswerPolicy::Refuse(486)));
        assert_eq!("provisional".parse::<AnswerPolicy>(), Ok(AnswerPolicy::ProvisionalThenSilence));
        assert!("refuse:200".parse::<AnswerPolicy>().is_err());
        assert!("sctp".parse::<SipTransport>().is_err());
    }

    #[test]
    fn nvr_channels_take_the_device_prefix_type_132_and_a_serial_and_an_ipc_is_its_own_channel() {
        let mut cfg = SimConfig { channels: 3, ..SimConfig::default() };
        let ids: Vec<_> = make_channels(&cfg).into_iter().map(|c| c.id).collect();
        assert_eq!(ids, ["34020000001320000001", "34020000001320000002", "34020000001320000003"]);
        cfg.device_id = "34020000001320000042".into();
        let ipc = make_channels(&cfg);
        assert_eq!(ipc.len(), 1);
        assert_eq!(ipc[0].id, cfg.device_id);
    }
}
