//! `gbrelay sim`: a simulated GB/T 28181 device (an NVR with N channels, or an IPC) that plays the
//! DEVICE side against a SIP server: REGISTER with digest auth (RFC 3261 §10, RFC 2617), keepalives,
//! Catalog / DeviceInfo answers in GB2312, INVITE answers in every media transport, and a PS file
//! streamed over RTP at real-time pace. Used by the integration tests, the load harness and users.
//!
//! It is written independently of the gateway's `proto::sip` / `proto::rtp` / `proto::ps` (its own
//! SIP text codec in [`sip`], SDP in [`sdp`], MANSCDP in [`manscdp`], PS slicing in [`ps`], RTP in
//! [`rtp`]) so that the two implementations check each other. The gateway's code does not belong
//! here, and nothing here belongs in `proto`.
//!
//! Documented behaviours:
//! - Every INVITE received counts in [`SimStats::invites`], retransmissions included (they are also
//!   counted in [`SimStats::invite_retransmissions`]); [`AnswerPolicy::NoAnswer`] answers nothing.
//! - [`Simulator::go_silent`] stops keepalives and REGISTER refreshes; requests from the server are
//!   still answered. [`Simulator::resume`] undoes it.
//! - A stream whose TCP connection breaks ends with a device-initiated BYE.
//! - NVR channel IDs are the device ID's first 10 digits, type `132`, the device's network digit and
//!   a 6-digit serial 1..=N; an IPC (type 131/132) has one channel whose ID is its own.

pub mod manscdp;
pub mod ps;
pub mod rtp;
pub mod sdp;
pub mod sip;
pub mod source;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;

pub use sdp::MediaTransport;
pub use source::{MediaSource, MediaSourceConfig, MediaSourceStats};

use manscdp::{DeviceFacts, SimChannel};
use ps::PsFile;
use rtp::{RtpCounters, Sink, StreamParams};
use sip::{SipMessage, StartLine};

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

#[derive(Default)]
struct Counters {
    registers: AtomicU64,
    keepalives: AtomicU64,
    catalog_queries: AtomicU64,
    device_info_queries: AtomicU64,
    invites: AtomicU64,
    invite_retransmissions: AtomicU64,
    acks: AtomicU64,
    byes: AtomicU64,
    byes_sent: AtomicU64,
    cancels: AtomicU64,
    active_streams: AtomicU64,
}

fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// Where SIP bytes go.
enum Outbound {
    Udp(Arc<UdpSocket>),
    /// Writer half of the current TCP connection (None while reconnecting).
    Tcp(Mutex<Option<mpsc::UnboundedSender<Vec<u8>>>>),
}

/// Media prepared at INVITE time, used after ACK.
enum MediaPrep {
    Udp(UdpSocket),
    Connect(TcpSocket, SocketAddr),
    Listen(TcpListener),
}

enum DialogState {
    /// 1xx sent, no final (ProvisionalThenSilence): CANCEL applies.
    Proceeding,
    /// 200 sent, waiting for ACK.
    WaitAck(Option<MediaPrep>),
    Streaming(JoinHandle<()>),
}

struct Dialog {
    channel: String,
    invite: SipMessage,
    src: SocketAddr,
    /// Our To header (with our tag) = From of our in-dialog requests.
    local: String,
    /// Their From header = To of our in-dialog requests.
    remote: String,
    remote_target: String,
    next_cseq: u32,
    transport: MediaTransport,
    ssrc: u32,
    state: DialogState,
}

/// Server-transaction memory for UDP retransmissions (RFC 3261 §17.2): key → last response sent.
#[derive(Default)]
struct TxCache {
    map: HashMap<String, Option<Vec<u8>>>,
    order: VecDeque<String>,
}

impl TxCache {
    const CAP: usize = 4096;
    fn put(&mut self, key: String, resp: Option<Vec<u8>>) {
        if !self.map.contains_key(&key) {
            self.order.push_back(key.clone());
            while self.order.len() > Self::CAP {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
        }
        self.map.insert(key, resp);
    }
}

struct RegState {
    call_id: String,
    cseq: u32,
}

struct Shared {
    cfg: SimConfig,
    model: String,
    firmware: String,
    civil_code: String,
    adv_ip: IpAddr,
    sip_local: Mutex<SocketAddr>,
    events: broadcast::Sender<SimEvent>,
    c: Counters,
    rtp: Arc<RtpCounters>,
    out: Outbound,
    pending: Mutex<HashMap<String, mpsc::UnboundedSender<SipMessage>>>,
    dialogs: Mutex<HashMap<String, Dialog>>,
    tx: Mutex<TxCache>,
    channels: Mutex<Vec<SimChannel>>,
    silent: AtomicBool,
    registered: AtomicBool,
    stopping: AtomicBool,
    sn: AtomicU32,
    stream_index: AtomicU64,
    reg: tokio::sync::Mutex<RegState>,
    reg_kick: tokio::sync::Notify,
    media: Arc<PsFile>,
}

/// A running simulated device. Dropping it stops its tasks without unregistering; [`Simulator::stop`]
/// unregisters first.
pub struct Simulator {
    sh: Arc<Shared>,
    /// The register loop, stopped first by [`Simulator::stop`].
    reg_task: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

fn rand_token(n: usize) -> String {
    const A: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut r = rand::thread_rng();
    (0..n).map(|_| A[r.gen_range(0..A.len())] as char).collect()
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
        let (events, _) = broadcast::channel(4096);
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
                (Outbound::Tcp(Mutex::new(None)), local, Some(stream))
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
            cfg,
        });
        if let Some(stream) = tcp_first {
            let sh2 = sh.clone();
            tasks.push(tokio::spawn(tcp_loop(sh2, stream, in_tx.clone())));
        }
        drop(in_tx);
        tasks.push(tokio::spawn(dispatch_loop(sh.clone(), in_rx)));
        let reg_task = tokio::spawn(register_loop(sh.clone()));
        tasks.push(tokio::spawn(keepalive_loop(sh.clone())));
        Ok(Simulator { sh, reg_task, tasks })
    }

    pub fn events(&self) -> broadcast::Receiver<SimEvent> {
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
        abort_streams(&self.sh);
        self.reg_task.abort();
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn abort_streams(sh: &Shared) {
    let mut d = sh.dialogs.lock().expect("dialogs lock");
    for (_, dl) in d.drain() {
        if let DialogState::Streaming(h) = dl.state {
            h.abort();
        }
    }
}

fn facts(sh: &Shared) -> DeviceFacts<'_> {
    DeviceFacts {
        device_id: &sh.cfg.device_id,
        manufacturer: &sh.cfg.manufacturer,
        model: &sh.model,
        firmware: &sh.firmware,
        civil_code: &sh.civil_code,
    }
}

fn new_call_id() -> String {
    format!("{}@sim", rand_token(24))
}

async fn tcp_connect(cfg: &SimConfig) -> std::io::Result<TcpStream> {
    let sock = if cfg.server.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    sock.set_reuseaddr(true)?;
    if cfg.local.port() != 0 || !cfg.local.ip().is_unspecified() {
        sock.bind(cfg.local)?;
    }
    let s = sock.connect(cfg.server).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Owns the TCP SIP connection: reads frames (RFC 3261 §18.3 Content-Length framing), writes what
/// [`send`] queues, and reconnects (then re-registers) when the server closes it.
async fn tcp_loop(sh: Arc<Shared>, first: TcpStream, in_tx: mpsc::UnboundedSender<(SipMessage, SocketAddr)>) {
    let mut stream = Some(first);
    loop {
        let s = match stream.take() {
            Some(s) => s,
            None => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match tcp_connect(&sh.cfg).await {
                    Ok(s) => {
                        if let Ok(a) = s.local_addr() {
                            *sh.sip_local.lock().expect("sip_local lock") =
                                SocketAddr::new(sh.adv_ip, a.port());
                        }
                        sh.registered.store(false, Ordering::Relaxed);
                        sh.reg_kick.notify_one();
                        s
                    }
                    Err(_) => continue,
                }
            }
        };
        let peer = s.peer_addr().unwrap_or(sh.cfg.server);
        let (mut rd, mut wr) = s.into_split();
        let (wtx, mut wrx) = mpsc::unbounded_channel::<Vec<u8>>();
        if let Outbound::Tcp(slot) = &sh.out {
            *slot.lock().expect("tcp slot lock") = Some(wtx);
        }
        let writer = tokio::spawn(async move {
            while let Some(b) = wrx.recv().await {
                if wr.write_all(&b).await.is_err() {
                    break;
                }
            }
        });
        let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
        let mut chunk = vec![0u8; 16 * 1024];
        'read: loop {
            let n = match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            loop {
                match SipMessage::parse(&buf, false) {
                    Ok((m, used)) => {
                        buf.drain(..used);
                        if in_tx.send((m, peer)).is_err() {
                            break 'read;
                        }
                    }
                    Err(sip::SipParseError::Incomplete) => {
                        // Only CRLF keep-alives left?
                        if buf.iter().all(|b| *b == b'\r' || *b == b'\n') {
                            buf.clear();
                        }
                        break;
                    }
                    Err(_) => break 'read, // unframeable stream: reconnect
                }
            }
        }
        writer.abort();
        if let Outbound::Tcp(slot) = &sh.out {
            *slot.lock().expect("tcp slot lock") = None;
        }
        if sh.stopping.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// Sends bytes to the server (UDP: to `to`, default the configured server; TCP: the connection).
fn send(sh: &Shared, to: Option<SocketAddr>, bytes: Vec<u8>) {
    match &sh.out {
        Outbound::Udp(s) => {
            let _ = s.try_send_to(&bytes, to.unwrap_or(sh.cfg.server));
        }
        Outbound::Tcp(slot) => {
            if let Some(tx) = slot.lock().expect("tcp slot lock").as_ref() {
                let _ = tx.send(bytes);
            }
        }
    }
}

fn via(sh: &Shared) -> String {
    let t = match sh.cfg.sip_transport {
        SipTransport::Udp => "UDP",
        SipTransport::Tcp => "TCP",
    };
    let local = *sh.sip_local.lock().expect("sip_local lock");
    format!("SIP/2.0/{t} {local};rport;branch=z9hG4bK{}", rand_token(16))
}

fn contact(sh: &Shared, user: &str) -> String {
    let local = *sh.sip_local.lock().expect("sip_local lock");
    format!("<sip:{user}@{local}>")
}

fn server_uri(sh: &Shared) -> String {
    format!("sip:{}@{}", sh.cfg.server_id, sh.cfg.domain)
}

/// An out-of-dialog request from the device (RFC 3261 §8.1.1).
fn new_request(sh: &Shared, method: &str, call_id: &str, cseq: u32) -> SipMessage {
    let cfg = &sh.cfg;
    let me = format!("<sip:{}@{}>", cfg.device_id, cfg.domain);
    let to = if method == "REGISTER" { me.clone() } else { format!("<{}>", server_uri(sh)) };
    let uri =
        if method == "REGISTER" { format!("sip:{}@{}", cfg.server_id, cfg.domain) } else { server_uri(sh) };
    SipMessage::request(method, &uri)
        .with("Via", via(sh))
        .with("From", format!("{me};tag={}", rand_token(10)))
        .with("To", to)
        .with("Call-ID", call_id)
        .with("CSeq", format!("{cseq} {method}"))
        .with("Max-Forwards", "70")
        .with("User-Agent", "IP Camera")
}

/// Client transaction (RFC 3261 §17.1.2): sends, retransmits over UDP (Timer E, T1 = 500 ms doubling
/// to T2 = 4 s), and returns the final response, or None after Timer F (32 s).
async fn request(sh: &Shared, msg: SipMessage) -> Option<SipMessage> {
    let branch = msg.top_branch()?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    sh.pending.lock().expect("pending lock").insert(branch.clone(), tx);
    let bytes = msg.to_bytes();
    send(sh, None, bytes.clone());
    let udp = matches!(sh.out, Outbound::Udp(_));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(32);
    let mut interval = Duration::from_millis(500);
    let mut next = tokio::time::Instant::now() + interval;
    let result = loop {
        tokio::select! {
            r = rx.recv() => match r {
                Some(resp) if resp.status().unwrap_or(0) >= 200 => break Some(resp),
                Some(_) => {
                    // Provisional: keep waiting; non-INVITE retransmissions continue at T2 (§17.1.2.2).
                    interval = Duration::from_secs(4);
                }
                None => break None,
            },
            _ = tokio::time::sleep_until(next), if udp => {
                send(sh, None, bytes.clone());
                interval = (interval * 2).min(Duration::from_secs(4));
                next = tokio::time::Instant::now() + interval;
            }
            _ = tokio::time::sleep_until(deadline) => break None,
        }
    };
    sh.pending.lock().expect("pending lock").remove(&branch);
    result
}

enum RegOutcome {
    Auth(u16),
    Failed(u16),
}

/// One REGISTER exchange (RFC 3261 §10.2) with a digest retry on 401/407 (RFC 2617).
async fn register_once(sh: &Shared, reg: &mut RegState, expires: u32) -> Result<u32, RegOutcome> {
    let build = |cseq: u32, auth: Option<(&str, String)>| {
        let mut m = new_request(sh, "REGISTER", &reg.call_id, cseq)
            .with("Contact", contact(sh, &sh.cfg.device_id))
            .with("Expires", expires.to_string());
        if let Some((name, v)) = auth {
            m.push(name, v);
        }
        m
    };
    reg.cseq += 1;
    inc(&sh.c.registers);
    let mut resp = request(sh, build(reg.cseq, None)).await.ok_or(RegOutcome::Failed(0))?;
    let code = resp.status().unwrap_or(0);
    if code == 401 || code == 407 {
        let hname = if code == 401 { "WWW-Authenticate" } else { "Proxy-Authenticate" };
        let ch = resp.header(hname).and_then(sip::Challenge::parse).ok_or(RegOutcome::Auth(code))?;
        let uri = format!("sip:{}@{}", sh.cfg.server_id, sh.cfg.domain);
        let auth = ch.authorization(&sh.cfg.device_id, &sh.cfg.password, "REGISTER", &uri, &rand_token(16));
        let aname = if code == 401 { "Authorization" } else { "Proxy-Authorization" };
        reg.cseq += 1;
        inc(&sh.c.registers);
        resp = request(sh, build(reg.cseq, Some((aname, auth)))).await.ok_or(RegOutcome::Failed(0))?;
    }
    match resp.status().unwrap_or(0) {
        200..=299 => {
            let granted = resp
                .header("Expires")
                .and_then(|v| v.trim().parse().ok())
                .or_else(|| {
                    resp.header("Contact").and_then(|c| sip::param(c, "expires")).and_then(|v| v.parse().ok())
                })
                .unwrap_or(expires);
            Ok(granted)
        }
        c @ (401 | 403 | 407) => Err(RegOutcome::Auth(c)),
        c => Err(RegOutcome::Failed(c)),
    }
}

async fn register_loop(sh: Arc<Shared>) {
    // A fresh Call-ID at start: the server sees a reboot (GB/T 28181-2016 §9.1.2.1).
    loop {
        let outcome = {
            let mut reg = sh.reg.lock().await;
            register_once(&sh, &mut reg, sh.cfg.register_expires).await
        };
        let wait = match outcome {
            Ok(granted) => {
                sh.registered.store(true, Ordering::Relaxed);
                let _ = sh.events.send(SimEvent::Registered);
                let g = granted.max(1) as u64;
                // Refresh ahead of expiry (10 %, at least 5 s; half for short registrations).
                Duration::from_secs(if g > 10 { g - (g / 10).max(5) } else { (g / 2).max(1) })
            }
            Err(RegOutcome::Auth(c)) => {
                sh.registered.store(false, Ordering::Relaxed);
                let _ = sh.events.send(SimEvent::AuthFailed(c));
                sh.cfg.keepalive_interval.max(Duration::from_secs(1))
            }
            Err(RegOutcome::Failed(c)) => {
                sh.registered.store(false, Ordering::Relaxed);
                let _ = sh.events.send(SimEvent::RegisterFailed(c));
                sh.cfg.keepalive_interval.max(Duration::from_secs(1))
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = sh.reg_kick.notified() => {}
        }
        while sh.silent.load(Ordering::Relaxed) {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = sh.reg_kick.notified() => {}
            }
        }
    }
}

/// A MESSAGE to the server with a MANSCDP body; returns the final status (0 = none).
async fn send_message(sh: &Shared, body: Vec<u8>) -> u16 {
    let m = new_request(sh, "MESSAGE", &new_call_id(), 20).with_body("Application/MANSCDP+xml", body);
    request(sh, m).await.and_then(|r| r.status()).unwrap_or(0)
}

async fn keepalive_loop(sh: Arc<Shared>) {
    let mut tick = tokio::time::interval(sh.cfg.keepalive_interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let misses = Arc::new(AtomicU32::new(0));
    loop {
        tick.tick().await;
        if sh.silent.load(Ordering::Relaxed) || !sh.registered.load(Ordering::Relaxed) {
            continue;
        }
        let sn = sh.sn.fetch_add(1, Ordering::Relaxed);
        let body = manscdp::keepalive(sn, &sh.cfg.device_id);
        inc(&sh.c.keepalives);
        let sh2 = sh.clone();
        let misses = misses.clone();
        tokio::spawn(async move {
            let code = send_message(&sh2, body).await;
            // A server that no longer knows us (e.g. restarted, 4xx) or stops answering: register again.
            let lost = match code {
                0 => misses.fetch_add(1, Ordering::Relaxed) + 1 >= 3,
                200..=299 => {
                    misses.store(0, Ordering::Relaxed);
                    false
                }
                _ => true,
            };
            if lost && !sh2.stopping.load(Ordering::Relaxed) {
                misses.store(0, Ordering::Relaxed);
                sh2.registered.store(false, Ordering::Relaxed);
                sh2.reg_kick.notify_one();
            }
        });
    }
}

async fn dispatch_loop(sh: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<(SipMessage, SocketAddr)>) {
    while let Some((m, src)) = rx.recv().await {
        match m.start {
            StartLine::Response { .. } => {
                if let Some(b) = m.top_branch() {
                    if let Some(tx) = sh.pending.lock().expect("pending lock").get(&b) {
                        let _ = tx.send(m);
                    }
                }
            }
            StartLine::Request { .. } => on_request(&sh, m, src).await,
        }
    }
}

/// A response to `req` (RFC 3261 §8.2.6): Via, From, Call-ID, CSeq copied; To copied with our tag
/// added if it has none; RFC 3581 `rport` filled with the source port.
fn response_to(
    req: &SipMessage,
    code: u16,
    reason: &str,
    to_tag: Option<&str>,
    src: SocketAddr,
) -> SipMessage {
    let mut r = SipMessage::response(code, reason);
    for (i, v) in req.headers_named("via").into_iter().enumerate() {
        let mut v = v.to_string();
        if i == 0 {
            if let Some(p) = v.find(";rport") {
                let after = &v[p + 6..];
                if !after.starts_with('=') {
                    v.insert_str(p + 6, &format!("={};received={}", src.port(), src.ip()));
                }
            }
        }
        r.push("Via", v);
    }
    if let Some(f) = req.header("from") {
        r.push("From", f);
    }
    if let Some(t) = req.header("to") {
        match to_tag {
            Some(tag) if sip::param(t, "tag").is_none() => r.push("To", format!("{t};tag={tag}")),
            _ => r.push("To", t),
        }
    }
    if let Some(c) = req.call_id() {
        r.push("Call-ID", c);
    }
    if let Some(c) = req.header("cseq") {
        r.push("CSeq", c);
    }
    r.push("User-Agent", "IP Camera");
    r
}

fn tx_key(req: &SipMessage) -> Option<String> {
    let method = req.method()?;
    let cseq = req.cseq().map(|c| c.0).unwrap_or(0);
    Some(format!("{}|{}|{cseq}|{method}", req.top_branch().unwrap_or_default(), req.call_id().unwrap_or("")))
}

/// Sends a response and remembers it for retransmitted requests.
fn reply(sh: &Shared, req: &SipMessage, src: SocketAddr, resp: SipMessage) {
    let bytes = resp.to_bytes();
    if let Some(k) = tx_key(req) {
        sh.tx.lock().expect("tx lock").put(k, Some(bytes.clone()));
    }
    send(sh, Some(src), bytes);
}

async fn on_request(sh: &Arc<Shared>, req: SipMessage, src: SocketAddr) {
    let method = req.method().unwrap_or("").to_string();
    if method == "INVITE" {
        inc(&sh.c.invites);
    }
    // Retransmission of a request we already saw (RFC 3261 §17.2.1 / §17.2.2): repeat the answer.
    if method != "ACK" {
        if let Some(k) = tx_key(&req) {
            let cached = sh.tx.lock().expect("tx lock").map.get(&k).cloned();
            if let Some(resp) = cached {
                if method == "INVITE" {
                    inc(&sh.c.invite_retransmissions);
                }
                if let Some(b) = resp {
                    send(sh, Some(src), b);
                }
                return;
            }
        }
    }
    match method.as_str() {
        "MESSAGE" => on_message(sh, &req, src),
        "INVITE" => on_invite(sh, req, src).await,
        "ACK" => on_ack(sh, &req),
        "BYE" => on_bye(sh, &req, src),
        "CANCEL" => on_cancel(sh, &req, src),
        "OPTIONS" | "SUBSCRIBE" | "NOTIFY" | "INFO" | "UPDATE" => {
            let mut r = response_to(&req, 200, "OK", Some(&rand_token(8)), src);
            if let Some(e) = req.header("Expires") {
                r.push("Expires", e);
            }
            reply(sh, &req, src, r);
        }
        _ => {
            let r = response_to(&req, 405, "Method Not Allowed", Some(&rand_token(8)), src)
                .with("Allow", "INVITE, ACK, BYE, CANCEL, MESSAGE, OPTIONS, SUBSCRIBE, NOTIFY, INFO");
            reply(sh, &req, src, r);
        }
    }
}

/// MESSAGE from the server (GB/T 28181-2016 §9.5, §9.3): 200 OK at once, then the Response MESSAGE(s).
fn on_message(sh: &Arc<Shared>, req: &SipMessage, src: SocketAddr) {
    reply(sh, req, src, response_to(req, 200, "OK", Some(&rand_token(8)), src));
    let xml = manscdp::from_gb(&req.body);
    let root = manscdp::root_name(&xml).unwrap_or("").to_string();
    let cmd = manscdp::tag_text(&xml, "CmdType").unwrap_or("").to_string();
    let sn = manscdp::tag_text(&xml, "SN").unwrap_or("0").to_string();
    if root != "Query" {
        return;
    }
    let bodies: Vec<Vec<u8>> = match cmd.as_str() {
        "Catalog" => {
            inc(&sh.c.catalog_queries);
            let _ = sh.events.send(SimEvent::CatalogQueried);
            let chans = sh.channels.lock().expect("channels lock").clone();
            manscdp::catalog_responses(&sn, &facts(sh), &chans, sh.cfg.catalog_page as usize)
        }
        "DeviceInfo" => {
            inc(&sh.c.device_info_queries);
            let _ = sh.events.send(SimEvent::DeviceInfoQueried);
            let n = sh.channels.lock().expect("channels lock").len();
            let name = format!("{} {}", sh.cfg.manufacturer, sh.model);
            vec![manscdp::device_info(&sn, &facts(sh), &name, n)]
        }
        "DeviceStatus" => vec![manscdp::device_status(&sn, &sh.cfg.device_id)],
        _ => return,
    };
    let sh = sh.clone();
    tokio::spawn(async move {
        for b in bodies {
            send_message(&sh, b).await;
        }
    });
}

fn pick_ssrc(policy: SsrcPolicy, offered: Option<u32>) -> u32 {
    match policy {
        SsrcPolicy::Offered => offered.unwrap_or(0),
        SsrcPolicy::Zero => 0,
        SsrcPolicy::Own(v) => v,
    }
}

/// INVITE (GB/T 28181-2016 §9.2.2): answer per [`AnswerPolicy`]; on Accept the media socket is
/// prepared now so its port goes into the SDP answer.
async fn on_invite(sh: &Arc<Shared>, req: SipMessage, src: SocketAddr) {
    let Some(key) = tx_key(&req) else { return };
    if sh.cfg.answer == AnswerPolicy::NoAnswer {
        // Remember the transaction (so retransmissions are counted as such), tell the test, answer nothing.
        sh.tx.lock().expect("tx lock").put(key, None);
        let channel = req.uri().and_then(sip::uri_user).unwrap_or_default();
        if let Ok(offer) = sdp::parse_offer(&String::from_utf8_lossy(&req.body)) {
            let _ = sh.events.send(SimEvent::Invited {
                channel,
                transport: offer.transport,
                ssrc: offer.ssrc,
                stream_number: offer.stream_number,
            });
        }
        return;
    }
    let Some(call_id) = req.call_id().map(str::to_string) else { return };
    let tag = rand_token(10);
    let channel = req
        .uri()
        .and_then(sip::uri_user)
        .or_else(|| req.header("to").and_then(sip::uri_user))
        .unwrap_or_default();
    let known = sh.channels.lock().expect("channels lock").iter().any(|c| c.id == channel);
    if !known {
        reply(sh, &req, src, response_to(&req, 404, "Not Found", Some(&tag), src));
        return;
    }
    let body = String::from_utf8_lossy(&req.body).into_owned();
    let offer = match sdp::parse_offer(&body) {
        Ok(o) => o,
        Err(_) => {
            reply(sh, &req, src, response_to(&req, 488, "Not Acceptable Here", Some(&tag), src));
            return;
        }
    };
    let _ = sh.events.send(SimEvent::Invited {
        channel: channel.clone(),
        transport: offer.transport,
        ssrc: offer.ssrc,
        stream_number: offer.stream_number,
    });
    reply(sh, &req, src, response_to(&req, 100, "Trying", None, src));
    let local_to = format!("{};tag={tag}", req.header("to").unwrap_or(""));
    let remote = req.header("from").unwrap_or("").to_string();
    let remote_target = req.header("contact").map(sip::addr_uri).unwrap_or_else(|| sip::addr_uri(&remote));
    let invite_cseq = req.cseq().map(|c| c.0).unwrap_or(1);
    let ssrc = pick_ssrc(sh.cfg.ssrc_policy, offer.ssrc);
    let mut dialog = Dialog {
        channel: channel.clone(),
        invite: req.clone(),
        src,
        local: local_to,
        remote,
        remote_target,
        next_cseq: invite_cseq + 1,
        transport: offer.transport,
        ssrc,
        state: DialogState::Proceeding,
    };
    match sh.cfg.answer {
        AnswerPolicy::Refuse(code) => {
            let reason = match code {
                486 => "Busy Here",
                403 => "Forbidden",
                404 => "Not Found",
                480 => "Temporarily Unavailable",
                488 => "Not Acceptable Here",
                500 => "Server Internal Error",
                503 => "Service Unavailable",
                _ => "Refused",
            };
            reply(sh, &req, src, response_to(&req, code, reason, Some(&tag), src));
        }
        AnswerPolicy::ProvisionalThenSilence => {
            reply(sh, &req, src, response_to(&req, 180, "Ringing", Some(&tag), src));
            sh.dialogs.lock().expect("dialogs lock").insert(call_id, dialog);
        }
        AnswerPolicy::NoAnswer => {}
        AnswerPolicy::Accept => {
            let bind_ip = sh.cfg.local.ip();
            let bind = SocketAddr::new(bind_ip, 0);
            let prep: std::io::Result<(MediaPrep, u16)> = async {
                Ok(match offer.transport {
                    MediaTransport::Udp => {
                        let s = UdpSocket::bind(bind).await?;
                        s.connect(offer.addr).await?;
                        let p = s.local_addr()?.port();
                        (MediaPrep::Udp(s), p)
                    }
                    MediaTransport::TcpPassive => {
                        let s =
                            if offer.addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
                        s.bind(bind)?;
                        let p = s.local_addr()?.port();
                        (MediaPrep::Connect(s, offer.addr), p)
                    }
                    MediaTransport::TcpActive => {
                        let l = TcpListener::bind(bind).await?;
                        let p = l.local_addr()?.port();
                        (MediaPrep::Listen(l), p)
                    }
                })
            }
            .await;
            let (prep, port) = match prep {
                Ok(x) => x,
                Err(_) => {
                    reply(sh, &req, src, response_to(&req, 500, "Server Internal Error", Some(&tag), src));
                    return;
                }
            };
            let answer = sdp::answer(&channel, sh.adv_ip, port, offer.transport, ssrc, &offer.session);
            let ok = response_to(&req, 200, "OK", Some(&tag), src)
                .with("Contact", contact(sh, &channel))
                .with_body("application/sdp", answer.into_bytes());
            dialog.state = DialogState::WaitAck(Some(prep));
            sh.dialogs.lock().expect("dialogs lock").insert(call_id.clone(), dialog);
            let ok_bytes = ok.to_bytes();
            reply(sh, &req, src, ok);
            // RFC 3261 §13.3.1.4: retransmit the 2xx over UDP until the ACK comes (T1 doubling to
            // T2, for 64·T1); without an ACK the dialog is ended with BYE.
            let sh2 = sh.clone();
            let udp = matches!(sh.out, Outbound::Udp(_));
            tokio::spawn(async move {
                let mut iv = Duration::from_millis(500);
                let mut waited = Duration::ZERO;
                while waited < Duration::from_secs(32) {
                    let step = if udp { iv } else { Duration::from_millis(500) };
                    tokio::time::sleep(step).await;
                    waited += step;
                    let waiting = matches!(
                        sh2.dialogs.lock().expect("dialogs lock").get(&call_id).map(|d| &d.state),
                        Some(DialogState::WaitAck(_))
                    );
                    if !waiting {
                        return;
                    }
                    if udp {
                        send(&sh2, Some(src), ok_bytes.clone());
                        iv = (iv * 2).min(Duration::from_secs(4));
                    }
                }
                bye_dialog(&sh2, &call_id).await;
            });
        }
    }
}

fn on_ack(sh: &Arc<Shared>, req: &SipMessage) {
    let Some(call_id) = req.call_id() else { return };
    let mut dialogs = sh.dialogs.lock().expect("dialogs lock");
    let Some(d) = dialogs.get_mut(call_id) else { return };
    let DialogState::WaitAck(prep) = &mut d.state else { return };
    let Some(prep) = prep.take() else { return };
    inc(&sh.c.acks);
    let idx = sh.stream_index.fetch_add(1, Ordering::Relaxed);
    let params = StreamParams {
        ssrc: d.ssrc,
        first_seq: (rand::thread_rng().gen::<u16>()) & 0x7fff,
        seed: sh.cfg.seed.wrapping_add(idx.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        loss: if d.transport == MediaTransport::Udp { sh.cfg.loss } else { 0.0 },
        reorder: if d.transport == MediaTransport::Udp { sh.cfg.reorder } else { 0.0 },
    };
    let sh2 = sh.clone();
    let call_id2 = call_id.to_string();
    let channel = d.channel.clone();
    let handle = tokio::spawn(async move {
        let sink = match prep {
            MediaPrep::Udp(s) => Ok(Sink::Udp(s)),
            MediaPrep::Connect(s, addr) => {
                match tokio::time::timeout(Duration::from_secs(10), s.connect(addr)).await {
                    Ok(Ok(t)) => {
                        let _ = t.set_nodelay(true);
                        Ok(Sink::Tcp(t))
                    }
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "media connect")),
                }
            }
            MediaPrep::Listen(l) => match tokio::time::timeout(Duration::from_secs(10), l.accept()).await {
                Ok(Ok((t, _))) => {
                    let _ = t.set_nodelay(true);
                    Ok(Sink::Tcp(t))
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "media accept")),
            },
        };
        if let Ok(sink) = sink {
            let _guard = ActiveGuard::new(&sh2.c.active_streams);
            let _ = sh2.events.send(SimEvent::StreamStarted { channel });
            let _ = rtp::run_stream(sh2.media.clone(), sink, params, sh2.rtp.clone()).await;
        }
        // The media failed (connect, accept or a broken TCP connection): the device hangs up.
        let sh3 = sh2.clone();
        tokio::spawn(async move { bye_dialog(&sh3, &call_id2).await });
    });
    d.state = DialogState::Streaming(handle);
}

struct ActiveGuard<'a>(&'a AtomicU64);

impl<'a> ActiveGuard<'a> {
    fn new(a: &'a AtomicU64) -> Self {
        a.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(a)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn on_bye(sh: &Arc<Shared>, req: &SipMessage, src: SocketAddr) {
    inc(&sh.c.byes);
    let removed = req.call_id().and_then(|c| sh.dialogs.lock().expect("dialogs lock").remove(c));
    match removed {
        Some(d) => {
            reply(sh, req, src, response_to(req, 200, "OK", None, src));
            if let DialogState::Streaming(h) = d.state {
                h.abort();
            }
            let _ = sh.events.send(SimEvent::Bye { channel: d.channel, from_server: true });
        }
        None => reply(sh, req, src, response_to(req, 481, "Call/Transaction Does Not Exist", None, src)),
    }
}

/// CANCEL (RFC 3261 §9.2): 200 to the CANCEL; if the INVITE has no final response yet, 487 to it.
fn on_cancel(sh: &Arc<Shared>, req: &SipMessage, src: SocketAddr) {
    inc(&sh.c.cancels);
    reply(sh, req, src, response_to(req, 200, "OK", None, src));
    let channel = req.uri().and_then(sip::uri_user).unwrap_or_default();
    let Some(call_id) = req.call_id() else { return };
    let pending = {
        let mut d = sh.dialogs.lock().expect("dialogs lock");
        match d.get(call_id).map(|x| matches!(x.state, DialogState::Proceeding)) {
            Some(true) => d.remove(call_id),
            _ => None,
        }
    };
    if let Some(dl) = pending {
        let tag = sip::param(&dl.local, "tag");
        let r = response_to(&dl.invite, 487, "Request Terminated", tag.as_deref(), dl.src);
        reply(sh, &dl.invite, dl.src, r);
    }
    let _ = sh.events.send(SimEvent::Cancelled { channel });
}

/// Ends a dialog from the device side with BYE (RFC 3261 §15.1.1), if it still exists.
async fn bye_dialog(sh: &Arc<Shared>, call_id: &str) {
    let Some(d) = sh.dialogs.lock().expect("dialogs lock").remove(call_id) else { return };
    if let DialogState::Streaming(h) = &d.state {
        h.abort();
    }
    if matches!(d.state, DialogState::Proceeding) {
        return;
    }
    let bye = SipMessage::request("BYE", &d.remote_target)
        .with("Via", via(sh))
        .with("From", d.local.clone())
        .with("To", d.remote.clone())
        .with("Call-ID", call_id)
        .with("CSeq", format!("{} BYE", d.next_cseq))
        .with("Max-Forwards", "70")
        .with("User-Agent", "IP Camera");
    inc(&sh.c.byes_sent);
    let _ = sh.events.send(SimEvent::Bye { channel: d.channel.clone(), from_server: false });
    let sh2 = sh.clone();
    tokio::spawn(async move {
        request(&sh2, bye).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

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
