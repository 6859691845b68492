//! The simulated device's SIP user agent: shared state, the UDP/TCP SIP transport, client
//! transactions with retransmission (RFC 3261 §17.1), REGISTER with digest (§10, RFC 2617),
//! keepalives, and the dispatch of requests from the server (MESSAGE queries here; INVITE dialogs in
//! [`super::dialog`]). Media sending is in [`super::rtp`].

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::sync::{broadcast, mpsc};

use super::dialog::*;
use super::manscdp::{self, DeviceFacts, SimChannel};
use super::ps::PsFile;
use super::rtp::RtpCounters;
use super::sip::{self, SipMessage, StartLine};
use super::{SimConfig, SimEvent, SipTransport};

#[derive(Default)]
pub(super) struct Counters {
    pub(super) registers: AtomicU64,
    pub(super) keepalives: AtomicU64,
    pub(super) catalog_queries: AtomicU64,
    pub(super) device_info_queries: AtomicU64,
    pub(super) invites: AtomicU64,
    pub(super) invite_retransmissions: AtomicU64,
    pub(super) acks: AtomicU64,
    pub(super) byes: AtomicU64,
    pub(super) byes_sent: AtomicU64,
    pub(super) cancels: AtomicU64,
    pub(super) active_streams: AtomicU64,
}

pub(super) fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// Where SIP bytes go.
pub(super) enum Outbound {
    Udp(Arc<UdpSocket>),
    /// Writer half of the current TCP connection (None while reconnecting).
    Tcp(Mutex<Option<mpsc::UnboundedSender<Vec<u8>>>>),
}

/// Server-transaction memory for UDP retransmissions (RFC 3261 §17.2): key → last response sent.
#[derive(Default)]
pub(super) struct TxCache {
    pub(super) map: HashMap<String, Option<Vec<u8>>>,
    pub(super) order: VecDeque<String>,
}

impl TxCache {
    pub(super) const CAP: usize = 4096;
    pub(super) fn put(&mut self, key: String, resp: Option<Vec<u8>>) {
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

pub(super) struct RegState {
    pub(super) call_id: String,
    pub(super) cseq: u32,
}

pub(super) struct Shared {
    pub(super) cfg: SimConfig,
    pub(super) model: String,
    pub(super) firmware: String,
    pub(super) civil_code: String,
    pub(super) adv_ip: IpAddr,
    pub(super) sip_local: Mutex<SocketAddr>,
    pub(super) events: broadcast::Sender<SimEvent>,
    pub(super) c: Counters,
    pub(super) rtp: Arc<RtpCounters>,
    pub(super) out: Outbound,
    pub(super) pending: Mutex<HashMap<String, mpsc::UnboundedSender<SipMessage>>>,
    pub(super) dialogs: Mutex<HashMap<String, Dialog>>,
    pub(super) tx: Mutex<TxCache>,
    pub(super) channels: Mutex<Vec<SimChannel>>,
    pub(super) silent: AtomicBool,
    pub(super) registered: AtomicBool,
    pub(super) stopping: AtomicBool,
    pub(super) sn: AtomicU32,
    pub(super) stream_index: AtomicU64,
    pub(super) reg: tokio::sync::Mutex<RegState>,
    pub(super) reg_kick: tokio::sync::Notify,
    pub(super) media: Arc<PsFile>,
    /// The last request received per method (wire form), for tests to inspect.
    pub(super) last_requests: Mutex<HashMap<String, SipMessage>>,
}

pub(super) fn rand_token(n: usize) -> String {
    const A: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut r = rand::thread_rng();
    (0..n).map(|_| A[r.gen_range(0..A.len())] as char).collect()
}

pub(super) fn facts(sh: &Shared) -> DeviceFacts<'_> {
    DeviceFacts {
        device_id: &sh.cfg.device_id,
        manufacturer: &sh.cfg.manufacturer,
        model: &sh.model,
        firmware: &sh.firmware,
        civil_code: &sh.civil_code,
    }
}

pub(super) fn new_call_id() -> String {
    format!("{}@sim", rand_token(24))
}

pub(super) async fn tcp_connect(cfg: &SimConfig) -> std::io::Result<TcpStream> {
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
///
/// `first` comes with the receiver of the writer queue already installed in `sh.out` (so what is
/// sent before this task first runs is queued, not lost); a reconnection installs its queue before
/// it kicks the re-REGISTER.
pub(super) async fn tcp_loop(
    sh: Arc<Shared>,
    first: (TcpStream, mpsc::UnboundedReceiver<Vec<u8>>),
    in_tx: mpsc::UnboundedSender<(SipMessage, SocketAddr)>,
) {
    let mut first = Some(first);
    loop {
        let (s, mut wrx) = match first.take() {
            Some(f) => f,
            None => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match tcp_connect(&sh.cfg).await {
                    Ok(s) => {
                        if let Ok(a) = s.local_addr() {
                            *sh.sip_local.lock().expect("sip_local lock") =
                                SocketAddr::new(sh.adv_ip, a.port());
                        }
                        let (wtx, wrx) = mpsc::unbounded_channel::<Vec<u8>>();
                        if let Outbound::Tcp(slot) = &sh.out {
                            *slot.lock().expect("tcp slot lock") = Some(wtx);
                        }
                        sh.registered.store(false, Ordering::Relaxed);
                        sh.reg_kick.notify_one();
                        (s, wrx)
                    }
                    Err(_) => continue,
                }
            }
        };
        let peer = s.peer_addr().unwrap_or(sh.cfg.server);
        let (mut rd, mut wr) = s.into_split();
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
pub(super) fn send(sh: &Shared, to: Option<SocketAddr>, bytes: Vec<u8>) {
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

pub(super) fn via(sh: &Shared) -> String {
    let t = match sh.cfg.sip_transport {
        SipTransport::Udp => "UDP",
        SipTransport::Tcp => "TCP",
    };
    let local = *sh.sip_local.lock().expect("sip_local lock");
    format!("SIP/2.0/{t} {local};rport;branch=z9hG4bK{}", rand_token(16))
}

pub(super) fn contact(sh: &Shared, user: &str) -> String {
    let local = *sh.sip_local.lock().expect("sip_local lock");
    format!("<sip:{user}@{local}>")
}

pub(super) fn server_uri(sh: &Shared) -> String {
    format!("sip:{}@{}", sh.cfg.server_id, sh.cfg.domain)
}

/// An out-of-dialog request from the device (RFC 3261 §8.1.1).
pub(super) fn new_request(sh: &Shared, method: &str, call_id: &str, cseq: u32) -> SipMessage {
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
pub(super) async fn request(sh: &Shared, msg: SipMessage) -> Option<SipMessage> {
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

pub(super) enum RegOutcome {
    Auth(u16),
    Failed(u16),
}

/// One REGISTER exchange (RFC 3261 §10.2) with a digest retry on 401/407 (RFC 2617).
pub(super) async fn register_once(sh: &Shared, reg: &mut RegState, expires: u32) -> Result<u32, RegOutcome> {
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

pub(super) async fn register_loop(sh: Arc<Shared>) {
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
pub(super) async fn send_message(sh: &Shared, body: Vec<u8>) -> u16 {
    let m = new_request(sh, "MESSAGE", &new_call_id(), 20).with_body("Application/MANSCDP+xml", body);
    request(sh, m).await.and_then(|r| r.status()).unwrap_or(0)
}

pub(super) async fn keepalive_loop(sh: Arc<Shared>) {
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

pub(super) async fn dispatch_loop(
    sh: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<(SipMessage, SocketAddr)>,
) {
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
pub(super) fn response_to(
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

pub(super) fn tx_key(req: &SipMessage) -> Option<String> {
    let method = req.method()?;
    let cseq = req.cseq().map(|c| c.0).unwrap_or(0);
    Some(format!("{}|{}|{cseq}|{method}", req.top_branch().unwrap_or_default(), req.call_id().unwrap_or("")))
}

/// Sends a response and remembers it for retransmitted requests.
pub(super) fn reply(sh: &Shared, req: &SipMessage, src: SocketAddr, resp: SipMessage) {
    let bytes = resp.to_bytes();
    if let Some(k) = tx_key(req) {
        sh.tx.lock().expect("tx lock").put(k, Some(bytes.clone()));
    }
    send(sh, Some(src), bytes);
}

pub(super) async fn on_request(sh: &Arc<Shared>, req: SipMessage, src: SocketAddr) {
    let method = req.method().unwrap_or("").to_string();
    if method == "INVITE" {
        inc(&sh.c.invites);
    }
    {
        let mut last = sh.last_requests.lock().expect("last_requests lock");
        if last.len() < 32 || last.contains_key(&method) {
            last.insert(method.clone(), req.clone());
        }
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
pub(super) fn on_message(sh: &Arc<Shared>, req: &SipMessage, src: SocketAddr) {
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
