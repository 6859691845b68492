//! The signalling core: one task owning registrations, keepalive state, catalog aggregation,
//! client transactions and invite sessions. It parses what `transport` hands it, drives the
//! sans-IO engines of `proto::sip`, and queues what to send.
//!
//! Not here: sockets (`transport.rs`), the public handle (`mod.rs`), parsing (`proto`).

use super::transport::{NetEvent, Peer, Transports};
use super::{InviteError, InviteRequest, Shared, SignalError};
use crate::config::{Config, Transport};
use crate::metrics::{metrics, reason, sip, LogLimiter};
use crate::proto::gb::is_gb_id;
use crate::proto::gb::manscdp::{self, CatalogItem, Manscdp};
use crate::proto::sdp::{MediaTransport, Offer, Sdp};
use crate::proto::sip::digest::{self, NonceCheck, NonceIssuer};
use crate::proto::sip::message::{branch, build_response, Message};
use crate::proto::sip::transaction::{DialogIds, InviteClient, InviteEvent, NonInviteClient, NonInviteEvent};
use crate::store::{ChannelRecord, DeviceState, SessionRecord, Store};
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// Bounds on state a hostile peer could grow.
const MAX_PENDING_CATALOGS: usize = 1024;
const MAX_CATALOG_ITEMS: usize = 20_000;
const MAX_AUTH_ENTRIES: usize = 100_000;
const MAX_INVITE_QUEUE: usize = 32;
const HOUSEKEEPING: Duration = Duration::from_millis(200);
const MANSCDP: &str = "Application/MANSCDP+xml";

static MALFORMED_LOG: LogLimiter = LogLimiter::new(10);

type InviteReply = oneshot::Sender<Result<(String, Sdp, oneshot::Receiver<String>), InviteError>>;

pub(crate) enum Cmd {
    RefreshCatalog { device_id: String, reply: oneshot::Sender<Result<(), SignalError>> },
    Invite { req: Box<InviteRequest>, reply: InviteReply },
    Bye { call_id: String, reply: Option<oneshot::Sender<()>> },
    Shutdown { reply: oneshot::Sender<()> },
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cmd::RefreshCatalog { device_id, .. } => write!(f, "RefreshCatalog({device_id})"),
            Cmd::Invite { req, .. } => write!(f, "Invite({}/{})", req.device_id, req.channel_id),
            Cmd::Bye { call_id, .. } => write!(f, "Bye({call_id})"),
            Cmd::Shutdown { .. } => write!(f, "Shutdown"),
        }
    }
}

struct Dev {
    online: bool,
    peer: Peer,
    call_id: String,
    last_seen: Instant,
    expires: Instant,
    next_catalog: Option<Instant>,
    active_invites: u32,
    last_invite: Option<Instant>,
    queue: VecDeque<(Box<InviteRequest>, InviteReply)>,
}

struct Fail {
    count: u32,
    blocked_until: Option<Instant>,
    last: Instant,
}

struct Agg {
    sum_num: u32,
    items: Vec<CatalogItem>,
    seen: std::collections::HashSet<String>,
    last_update: Instant,
}

struct InviteCtx {
    req: Box<InviteRequest>,
    reply: InviteReply,
    started: Instant,
}

enum Txn {
    Query {
        client: NonInviteClient,
        peer: Peer,
        reply: Option<oneshot::Sender<Result<(), SignalError>>>,
        device: String,
    },
    Bye {
        client: NonInviteClient,
        peer: Peer,
        reply: Option<oneshot::Sender<()>>,
    },
    Invite {
        client: Box<InviteClient>,
        peer: Peer,
        ctx: Option<InviteCtx>,
        device: String,
    },
}

struct Sess {
    device_id: String,
    peer: Peer,
    ids: DialogIds,
    to_value: String,
    uri: String,
    cseq: u32,
    ended: Option<oneshot::Sender<String>>,
}

pub(crate) struct Core {
    cfg: Arc<Config>,
    store: Store,
    tp: Transports,
    shared: Arc<Shared>,
    server_id: String,
    domain: String,
    advertise: String,
    nonces: NonceIssuer,
    t0: Instant,
    devices: HashMap<String, Dev>,
    fails: HashMap<(IpAddr, String), Fail>,
    catalogs: HashMap<(String, u32), Agg>,
    txns: HashMap<(String, u32), Txn>,
    sessions: HashMap<String, Sess>,
    sn: u32,
    out: Vec<(Peer, Bytes)>,
    last_housekeeping: Instant,
    shutdown: Option<(oneshot::Sender<()>, Instant)>,
}

fn unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3))
}

fn transport_name(p: &Peer) -> String {
    p.transport().to_owned()
}

impl Core {
    pub(crate) fn new(
        cfg: Arc<Config>,
        store: Store,
        tp: Transports,
        shared: Arc<Shared>,
        _cmd: mpsc::UnboundedSender<Cmd>,
    ) -> Core {
        let local = tp.local_addr();
        let advertise = match cfg.sip.advertise {
            Some(a) => a.to_string(),
            None if local.ip().is_unspecified() => SocketAddr::new(cfg.media.ip, local.port()).to_string(),
            None => local.to_string(),
        };
        let now = Instant::now();
        Core {
            server_id: cfg.sip.id.clone(),
            domain: cfg.sip.domain(),
            advertise,
            nonces: NonceIssuer::new(rand::random()),
            t0: now,
            devices: HashMap::new(),
            fails: HashMap::new(),
            catalogs: HashMap::new(),
            txns: HashMap::new(),
            sessions: HashMap::new(),
            sn: rand::random::<u16>() as u32,
            out: Vec::new(),
            last_housekeeping: now,
            shutdown: None,
            cfg,
            store,
            tp,
            shared,
        }
    }

    pub(crate) async fn run(
        mut self,
        mut net: mpsc::Receiver<NetEvent>,
        mut cmds: mpsc::UnboundedReceiver<Cmd>,
    ) {
        if let Err(e) = self.store.mark_all_offline() {
            tracing::warn!("store: {e}");
        }
        self.bye_stale_sessions(Instant::now());
        self.flush().await;
        loop {
            let now = Instant::now();
            let wake = self.next_wake(now);
            tokio::select! {
                ev = net.recv() => match ev {
                    Some(NetEvent::Message { data, peer }) => self.on_message(data, peer, Instant::now()),
                    Some(NetEvent::Malformed { peer, reason: r }) => {
                        metrics().sip_malformed.get_or_create(&reason("tcp_framing")).inc();
                        if MALFORMED_LOG.allow() {
                            tracing::warn!(peer = %peer.addr(), "closing SIP/TCP connection: {r}");
                        }
                    }
                    Some(NetEvent::Closed { conn }) => tracing::debug!(conn, "SIP/TCP connection closed"),
                    None => break,
                },
                cmd = cmds.recv() => match cmd {
                    Some(c) => self.on_cmd(c, Instant::now()),
                    None => break,
                },
                _ = tokio::time::sleep_until(wake.into()) => self.on_timer(Instant::now()),
            }
            self.flush().await;
            if let Some((_, deadline)) = &self.shutdown {
                let byes = self.txns.values().any(|t| matches!(t, Txn::Bye { .. }));
                if !byes || Instant::now() >= *deadline {
                    // Nothing is online once we stop answering.
                    self.shared.online().clear();
                    metrics().devices_online.set(0);
                    if let Some((reply, _)) = self.shutdown.take() {
                        let _ = reply.send(());
                    }
                    break;
                }
            }
        }
    }

    fn next_wake(&self, now: Instant) -> Instant {
        let mut t = self.last_housekeeping + HOUSEKEEPING;
        for txn in self.txns.values() {
            let pt = match txn {
                Txn::Query { client, .. } | Txn::Bye { client, .. } => client.poll_timeout(),
                Txn::Invite { client, .. } => client.poll_timeout(),
            };
            if let Some(pt) = pt {
                t = t.min(pt);
            }
        }
        t.max(now)
    }

    async fn flush(&mut self) {
        for (peer, data) in std::mem::take(&mut self.out) {
            if let Err(e) = self.tp.send(peer, data).await {
                tracing::debug!("send failed: {e}");
            }
        }
    }

    fn send(&mut self, peer: Peer, data: Bytes) {
        self.out.push((peer, data));
    }

    // ---------------------------------------------------------------- incoming

    fn on_message(&mut self, data: Bytes, peer: Peer, now: Instant) {
        let msg = match Message::parse(data) {
            Ok(m) => m,
            Err(e) => {
                metrics().sip_malformed.get_or_create(&reason("unparsable")).inc();
                if MALFORMED_LOG.allow() {
                    tracing::warn!(peer = %peer.addr(), "dropping malformed SIP: {e}");
                }
                return;
            }
        };
        if msg.is_request() {
            self.on_request(msg, peer, now);
        } else {
            self.on_response(msg, now);
        }
    }

    fn reply(
        &mut self,
        req: &Message,
        peer: Peer,
        code: u16,
        extra: &[(&str, String)],
        body: Option<(&str, &[u8])>,
    ) {
        let tag = format!("{:08x}", hash(req.call_id().unwrap_or("")) as u32);
        let ip = peer.addr().ip().to_string();
        let data = build_response(req, code, Some(&tag), Some((&ip, peer.addr().port())), extra, body);
        metrics().sip_messages.get_or_create(&sip(&req.method(), &code.to_string(), "out")).inc();
        self.send(peer, data);
    }

    fn on_request(&mut self, msg: Message, peer: Peer, now: Instant) {
        let method = msg.method();
        metrics().sip_messages.get_or_create(&sip(&method, "request", "in")).inc();
        // RFC 3261 §8.1.1: the mandatory headers; without them we cannot answer meaningfully.
        if msg.top_via().is_none()
            || msg.from().is_none()
            || msg.to().is_none()
            || msg.call_id().is_none()
            || msg.cseq().is_none()
        {
            metrics().sip_malformed.get_or_create(&reason("missing_header")).inc();
            if msg.top_via().is_some() {
                self.reply(&msg, peer, 400, &[], None);
            }
            return;
        }
        match method.as_str() {
            "REGISTER" => self.on_register(&msg, peer, now),
            "MESSAGE" => self.on_manscdp(&msg, peer, now),
            "BYE" => self.on_bye(&msg, peer),
            "ACK" => {}
            "OPTIONS" => self.reply(&msg, peer, 200, &[], None),
            "CANCEL" => self.reply(&msg, peer, 481, &[], None),
            "NOTIFY" => self.reply(&msg, peer, 200, &[], None),
            _ => self.reply(&msg, peer, 501, &[], None),
        }
    }

    fn auth_fail(&mut self, key: &(IpAddr, String), why: &str, now: Instant) {
        metrics().auth_failures.get_or_create(&reason(why)).inc();
        if self.fails.len() >= MAX_AUTH_ENTRIES && !self.fails.contains_key(key) {
            let window = self.cfg.sip.auth_block;
            self.fails.retain(|_, f| {
                f.blocked_until.is_some_and(|b| b > now) || now.duration_since(f.last) < window
            });
            if self.fails.len() >= MAX_AUTH_ENTRIES {
                return;
            }
        }
        let limit = self.cfg.sip.auth_fail_limit.max(1);
        let block = self.cfg.sip.auth_block;
        let f = self.fails.entry(key.clone()).or_insert(Fail { count: 0, blocked_until: None, last: now });
        f.count += 1;
        f.last = now;
        if f.count >= limit {
            f.blocked_until = Some(now + block);
            tracing::warn!(addr = %key.0, device = %key.1, "blocking after {} failed authentications", f.count);
        }
    }

    fn challenge(&mut self, msg: &Message, peer: Peer, stale: bool, now: Instant) {
        let nonce = self.nonces.issue(now.duration_since(self.t0).as_millis() as u64);
        let mut v = format!("Digest realm=\"{}\", nonce=\"{nonce}\", algorithm=MD5", self.domain);
        if stale {
            v.push_str(", stale=true");
        }
        self.reply(msg, peer, 401, &[("WWW-Authenticate", v)], None);
    }

    /// RFC 3261 §10.3 registrar with GB/T 28181 §9.1 digest registration.
    fn on_register(&mut self, msg: &Message, peer: Peer, now: Instant) {
        let Some(id) = msg.from().and_then(|f| f.user().map(str::to_owned)).filter(|u| is_gb_id(u)) else {
            metrics().sip_malformed.get_or_create(&reason("bad_device_id")).inc();
            self.reply(msg, peer, 400, &[], None);
            return;
        };
        let key = (peer.addr().ip(), id.clone());
        // Cheap refusal of a (source address, device) pair that keeps failing: no store, no MD5.
        if let Some(f) = self.fails.get(&key) {
            if f.blocked_until.is_some_and(|b| b > now) {
                metrics().auth_failures.get_or_create(&reason("blocked")).inc();
                self.reply(msg, peer, 403, &[], None);
                return;
            }
        }
        let record = match self.store.get_device(&id) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("store: {e}");
                self.reply(msg, peer, 500, &[], None);
                return;
            }
        };
        if record.is_none() && self.cfg.sip.require_provisioned {
            self.auth_fail(&key, "unprovisioned", now);
            self.reply(msg, peer, 403, &[], None);
            return;
        }
        let Some(auth) = msg.header("Authorization") else {
            self.challenge(msg, peer, false, now);
            return;
        };
        let creds = match digest::parse_authorization(auth) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(device = %id, "bad Authorization: {e}");
                self.auth_fail(&key, "bad_authorization", now);
                self.reply(msg, peer, 400, &[], None);
                return;
            }
        };
        let now_ms = now.duration_since(self.t0).as_millis() as u64;
        match self.nonces.check(&creds.nonce, now_ms, self.cfg.sip.nonce_ttl.as_millis() as u64) {
            NonceCheck::Valid => {}
            // A nonce from before a restart, or expired: challenge again (RFC 2617 §3.2.1 stale).
            NonceCheck::Stale => return self.challenge(msg, peer, true, now),
            NonceCheck::Invalid => return self.challenge(msg, peer, false, now),
        }
        let password =
            record.as_ref().and_then(|r| r.password.clone()).unwrap_or_else(|| self.cfg.sip.password.clone());
        if !digest::verify(&creds, "REGISTER", &password) {
            tracing::info!(device = %id, addr = %peer.addr(), "REGISTER: wrong password");
            self.auth_fail(&key, "wrong_password", now);
            self.reply(msg, peer, 403, &[], None);
            return;
        }
        self.fails.remove(&key);
        let expires = msg.expires().unwrap_or(self.cfg.sip.register_expires.as_secs() as u32);
        let date = chrono::Local::now().format("%Y-%m-%dT%H:%M:%S%.3f").to_string();
        let mut extra = vec![("Date", date), ("Expires", expires.to_string())];
        if let Some(c) = msg.header("Contact") {
            extra.push(("Contact", c.to_owned()));
        }
        self.reply(msg, peer, 200, &extra, None);
        let call_id = msg.call_id().unwrap_or("").to_owned();
        if expires == 0 {
            // RFC 3261 §10.2.2: Expires 0 removes the binding.
            self.set_offline(&id, "unregister", now);
            self.devices.remove(&id);
            return;
        }
        let stored_call_id = record.as_ref().map(|r| r.state.call_id.clone()).unwrap_or_default();
        let known = self.devices.get(&id).map(|d| d.call_id.clone());
        let rebooted = match &known {
            Some(c) => *c != call_id,
            None => {
                stored_call_id != call_id || self.store.channel_count(&id).map(|n| n == 0).unwrap_or(true)
            }
        };
        let expires_at = now + Duration::from_secs(u64::from(expires));
        let dev = self.devices.entry(id.clone()).or_insert_with(|| Dev {
            online: false,
            peer,
            call_id: call_id.clone(),
            last_seen: now,
            expires: expires_at,
            next_catalog: None,
            active_invites: 0,
            last_invite: None,
            queue: VecDeque::new(),
        });
        dev.peer = peer;
        dev.call_id = call_id;
        dev.last_seen = now;
        dev.expires = expires_at;
        let was_online = dev.online;
        if rebooted {
            dev.next_catalog = None;
        }
        self.persist_state(&id, true, expires);
        if !was_online {
            self.set_online(&id, if rebooted { "register" } else { "refresh" });
        }
        if rebooted {
            tracing::info!(device = %id, addr = %peer.addr(), transport = peer.transport(), "registered; querying catalog and device info");
            self.send_query(&id, "Catalog", None, now);
            self.send_query(&id, "DeviceInfo", None, now);
            self.schedule_catalog(&id, now);
        }
    }

    fn persist_state(&mut self, id: &str, online: bool, expires_secs: u32) {
        let Some(dev) = self.devices.get(id) else { return };
        let st = DeviceState {
            online,
            transport: transport_name(&dev.peer),
            remote: dev.peer.addr().to_string(),
            last_seen: unix_ms(),
            expires_at: unix_ms() + i64::from(expires_secs) * 1000,
            call_id: dev.call_id.clone(),
        };
        if let Err(e) = self.store.set_device_state(id, &st) {
            tracing::error!("store: {e}");
        }
    }

    fn schedule_catalog(&mut self, id: &str, now: Instant) {
        let iv = self.cfg.sip.catalog_interval;
        if let Some(dev) = self.devices.get_mut(id) {
            dev.next_catalog = if iv.is_zero() {
                None
            } else {
                // ±10% jitter so that devices registered together do not query together.
                let f = 0.9 + rand::random::<f64>() * 0.2;
                Some(now + iv.mul_f64(f))
            };
        }
    }

    fn set_online(&mut self, id: &str, why: &str) {
        if let Some(d) = self.devices.get_mut(id) {
            d.online = true;
        }
        let n = {
            let mut s = self.shared.online();
            s.insert(id.to_owned());
            s.len()
        };
        metrics().devices_online.set(n as i64);
        metrics().device_online_transitions.get_or_create(&reason(&format!("online_{why}"))).inc();
        tracing::info!(device = %id, reason = why, "device online");
    }

    fn set_offline(&mut self, id: &str, why: &str, now: Instant) {
        let was = self.devices.get_mut(id).map(|d| std::mem::replace(&mut d.online, false)).unwrap_or(false);
        let n = {
            let mut s = self.shared.online();
            s.remove(id);
            s.len()
        };
        metrics().devices_online.set(n as i64);
        if let Some(dev) = self.devices.get(id) {
            let st = DeviceState {
                online: false,
                transport: transport_name(&dev.peer),
                remote: dev.peer.addr().to_string(),
                last_seen: unix_ms() - now.duration_since(dev.last_seen).as_millis() as i64,
                expires_at: if why == "unregister" || why == "expired" {
                    0
                } else {
                    unix_ms() + dev.expires.saturating_duration_since(now).as_millis() as i64
                },
                call_id: dev.call_id.clone(),
            };
            if let Err(e) = self.store.set_device_state(id, &st) {
                tracing::error!("store: {e}");
            }
        }
        if was {
            metrics().device_online_transitions.get_or_create(&reason(&format!("offline_{why}"))).inc();
            tracing::info!(device = %id, reason = why, "device offline");
        }
        // Sessions of a device that went away end now; tell their owners.
        let ids: Vec<String> =
            self.sessions.iter().filter(|(_, s)| s.device_id == id).map(|(k, _)| k.clone()).collect();
        for call_id in ids {
            if let Some(mut s) = self.sessions.remove(&call_id) {
                if let Some(tx) = s.ended.take() {
                    let _ = tx.send(format!("device offline ({why})"));
                }
                self.send_bye(&call_id, s, None, now);
            }
        }
        if let Some(dev) = self.devices.get_mut(id) {
            for (_, reply) in dev.queue.drain(..) {
                let _ = reply.send(Err(InviteError::DeviceOffline));
            }
        }
    }

    /// GB/T 28181 §9.3 / §9.5 MESSAGE: answered 200 always, then interpreted.
    fn on_manscdp(&mut self, msg: &Message, peer: Peer, now: Instant) {
        self.reply(msg, peer, 200, &[], None);
        let Some(from) = msg.from().and_then(|f| f.user().map(str::to_owned)) else { return };
        let body = match manscdp::parse(&msg.body) {
            Ok(b) => b,
            Err(e) => {
                metrics().sip_malformed.get_or_create(&reason("manscdp")).inc();
                if MALFORMED_LOG.allow() {
                    tracing::warn!(device = %from, "bad MANSCDP body: {e}");
                }
                return;
            }
        };
        match body {
            Manscdp::Keepalive { .. } => self.on_keepalive(&from, peer, now),
            Manscdp::CatalogResponse(c) => {
                self.touch(&from, peer, now);
                self.on_catalog(&from, c, now)
            }
            Manscdp::CatalogNotify(c) => {
                self.touch(&from, peer, now);
                self.on_catalog_notify(&from, c)
            }
            Manscdp::DeviceInfo(d) => {
                self.touch(&from, peer, now);
                let mut obj = serde_json::Map::new();
                for (k, v) in &d.fields {
                    obj.insert(k.clone(), serde_json::Value::String(v.clone()));
                }
                if let Err(e) = self.store.set_device_info(&from, &serde_json::Value::Object(obj)) {
                    tracing::error!("store: {e}");
                }
            }
            _ => {}
        }
    }

    /// Any message from a registered device proves it alive.
    fn touch(&mut self, id: &str, peer: Peer, now: Instant) {
        if let Some(d) = self.devices.get_mut(id) {
            if now < d.expires {
                d.last_seen = now;
                d.peer = peer;
            }
        }
    }

    fn on_keepalive(&mut self, id: &str, peer: Peer, now: Instant) {
        if let Some(d) = self.devices.get_mut(id) {
            if now >= d.expires {
                return; // registration lapsed: it must REGISTER again
            }
            d.last_seen = now;
            d.peer = peer;
            if !d.online {
                self.set_online(id, "keepalive");
                let secs = self
                    .devices
                    .get(id)
                    .map(|d| d.expires.saturating_duration_since(now).as_secs() as u32)
                    .unwrap_or(0);
                self.persist_state(id, true, secs);
            }
            return;
        }
        // After a gateway restart: a stored device whose registration has not expired is back at
        // once (GB/T 28181 §9.6: keepalive proves the registered device alive).
        let rec = match self.store.get_device(id) {
            Ok(Some(r)) => r,
            _ => return,
        };
        let left_ms = rec.state.expires_at - unix_ms();
        if left_ms <= 0 {
            return;
        }
        self.devices.insert(
            id.to_owned(),
            Dev {
                online: false,
                peer,
                call_id: rec.state.call_id.clone(),
                last_seen: now,
                expires: now + Duration::from_millis(left_ms as u64),
                next_catalog: None,
                active_invites: 0,
                last_invite: None,
                queue: VecDeque::new(),
            },
        );
        self.schedule_catalog(id, now);
        self.set_online(id, "keepalive_after_restart");
        self.persist_state(id, true, (left_ms / 1000) as u32);
    }

    fn channel_of(device: &str, it: &CatalogItem) -> ChannelRecord {
        ChannelRecord {
            device_id: device.to_owned(),
            id: it.device_id.clone(),
            name: it.name.clone(),
            manufacturer: it.manufacturer.clone(),
            model: it.model.clone(),
            status: if it.status.is_empty() { "ON".into() } else { it.status.to_ascii_uppercase() },
            parent_id: it.parent_id.clone(),
            civil_code: it.civil_code.clone(),
            longitude: it.longitude,
            latitude: it.latitude,
            updated_at: 0,
        }
    }

    /// GB/T 28181 §A.2.6.4: a catalog answer may span several MESSAGEs with the same SN; SumNum
    /// says how many items in total.
    fn on_catalog(&mut self, device: &str, c: manscdp::Catalog, now: Instant) {
        if !self.devices.contains_key(device) {
            return;
        }
        let key = (device.to_owned(), c.sn);
        if !self.catalogs.contains_key(&key) && self.catalogs.len() >= MAX_PENDING_CATALOGS {
            metrics().sip_malformed.get_or_create(&reason("catalog_limit")).inc();
            return;
        }
        let agg = self.catalogs.entry(key.clone()).or_insert_with(|| Agg {
            sum_num: c.sum_num,
            items: Vec::new(),
            seen: Default::default(),
            last_update: now,
        });
        agg.last_update = now;
        for it in c.items {
            if agg.items.len() >= MAX_CATALOG_ITEMS {
                break;
            }
            if !it.device_id.is_empty() && agg.seen.insert(it.device_id.clone()) {
                agg.items.push(it);
            }
        }
        if agg.items.len() as u64 >= u64::from(agg.sum_num) {
            if let Some(agg) = self.catalogs.remove(&key) {
                let chans: Vec<ChannelRecord> =
                    agg.items.iter().map(|i| Self::channel_of(device, i)).collect();
                tracing::info!(device = %device, channels = chans.len(), "catalog complete");
                if let Err(e) = self.store.replace_channels(device, &chans) {
                    tracing::error!("store: {e}");
                }
            }
        }
    }

    /// GB/T 28181 §9.5.3 catalog notifications: per-item events.
    fn on_catalog_notify(&mut self, device: &str, c: manscdp::Catalog) {
        if !self.devices.contains_key(device) {
            return;
        }
        for it in c.items {
            let ev = it.event.clone().unwrap_or_else(|| "UPDATE".into());
            let res = match ev.as_str() {
                "DEL" => self.store.delete_channel(device, &it.device_id).map(|_| ()),
                "ON" | "OFF" | "VLOST" | "DEFECT" => {
                    let status = if ev == "ON" { "ON" } else { "OFF" };
                    match self.store.get_channel(device, &it.device_id) {
                        Ok(Some(mut ch)) => {
                            ch.status = status.into();
                            self.store.upsert_channel(&ch)
                        }
                        Ok(None) if !it.name.is_empty() => {
                            let mut ch = Self::channel_of(device, &it);
                            ch.status = status.into();
                            self.store.upsert_channel(&ch)
                        }
                        Ok(None) => Ok(()),
                        Err(e) => Err(e),
                    }
                }
                _ => self.store.upsert_channel(&Self::channel_of(device, &it)),
            };
            if let Err(e) = res {
                tracing::error!("store: {e}");
            }
        }
    }

    fn on_bye(&mut self, msg: &Message, peer: Peer) {
        let call_id = msg.call_id().unwrap_or("").to_owned();
        match self.sessions.remove(&call_id) {
            Some(mut s) => {
                self.reply(msg, peer, 200, &[], None);
                if let Some(tx) = s.ended.take() {
                    let _ = tx.send("device sent BYE".into());
                }
                if let Err(e) = self.store.remove_session(&call_id) {
                    tracing::error!("store: {e}");
                }
                tracing::info!(call_id = %call_id, device = %s.device_id, "session ended by device");
            }
            None => self.reply(msg, peer, 481, &[], None),
        }
    }

    fn on_response(&mut self, msg: Message, now: Instant) {
        let Some(status) = msg.status() else { return };
        let (Some(call_id), Some((cseq, method))) = (msg.call_id().map(str::to_owned), msg.cseq()) else {
            metrics().sip_malformed.get_or_create(&reason("missing_header")).inc();
            return;
        };
        metrics().sip_messages.get_or_create(&sip(&method, &status.to_string(), "in")).inc();
        let key = (call_id, cseq);
        match self.txns.get_mut(&key) {
            Some(Txn::Query { client, .. }) | Some(Txn::Bye { client, .. }) => {
                client.handle_response(now, &msg)
            }
            Some(Txn::Invite { client, .. }) => client.handle_response(now, &msg),
            None => return,
        }
        self.drive(&key, now);
    }

    // ---------------------------------------------------------------- outgoing requests

    /// Where requests to a device go: its TCP connection if alive, else the address its
    /// REGISTER/keepalives came from over UDP (policy: NAT-friendly, DESIGN.md §4).
    fn device_peer(&self, dev: &Dev) -> Peer {
        match dev.peer {
            Peer::Tcp { conn, addr } if !self.tp.tcp_alive(conn) => Peer::Udp(addr),
            p => p,
        }
    }

    fn via_transport(peer: &Peer) -> &'static str {
        if peer.is_reliable() {
            "TCP"
        } else {
            "UDP"
        }
    }

    fn new_ids(&self, peer: &Peer, user: &str, request_uri: String) -> DialogIds {
        DialogIds {
            request_uri,
            via_host: self.advertise.clone(),
            transport: Self::via_transport(peer).into(),
            from: format!("<sip:{}@{}>;tag={:08x}", self.server_id, self.domain, rand::random::<u32>()),
            to: format!("<sip:{user}@{}>", self.domain),
            call_id: format!(
                "{:016x}@{}",
                rand::random::<u64>(),
                self.advertise.split(':').next().unwrap_or("gbrelay")
            ),
            cseq: 1,
            contact: format!("<sip:{}@{}>", self.server_id, self.advertise),
        }
    }

    fn send_query(
        &mut self,
        device: &str,
        cmd: &str,
        reply: Option<oneshot::Sender<Result<(), SignalError>>>,
        now: Instant,
    ) {
        let Some(dev) = self.devices.get(device) else {
            if let Some(r) = reply {
                let _ = r.send(Err(SignalError::DeviceNotFound(device.to_owned())));
            }
            return;
        };
        let peer = self.device_peer(dev);
        self.sn = self.sn.wrapping_add(1) % 1_000_000_000;
        let body = manscdp::build_query(cmd, self.sn, device);
        let ids = self.new_ids(&peer, device, format!("sip:{device}@{}", peer.addr()));
        let req = ids.request(
            rsip::Method::Message,
            &ids.request_uri,
            &ids.to,
            1,
            &branch(rand::random()),
            vec![],
            Some((MANSCDP, &body)),
        );
        metrics().sip_messages.get_or_create(&sip("MESSAGE", "request", "out")).inc();
        let client = NonInviteClient::new(now, req, peer.is_reliable());
        let key = (ids.call_id.clone(), 1);
        self.txns.insert(key.clone(), Txn::Query { client, peer, reply, device: device.to_owned() });
        self.drive(&key, now);
    }

    fn send_bye(&mut self, call_id: &str, s: Sess, reply: Option<oneshot::Sender<()>>, now: Instant) {
        if let Err(e) = self.store.remove_session(call_id) {
            tracing::error!("store: {e}");
        }
        let cseq = s.cseq + 1;
        let req = s.ids.request(
            rsip::Method::Bye,
            &s.uri,
            &s.to_value,
            cseq,
            &branch(rand::random()),
            vec![],
            None,
        );
        metrics().sip_messages.get_or_create(&sip("BYE", "request", "out")).inc();
        let client = NonInviteClient::new(now, req, s.peer.is_reliable());
        let key = (call_id.to_owned(), cseq);
        self.txns.insert(key.clone(), Txn::Bye { client, peer: s.peer, reply });
        self.drive(&key, now);
    }

    /// At start: BYE what a previous run left open (we serve none of it now).
    fn bye_stale_sessions(&mut self, now: Instant) {
        let list = match self.store.list_sessions() {
            Ok(l) => l,
            Err(e) => return tracing::error!("store: {e}"),
        };
        for r in list {
            let Ok(addr) = r.remote.parse::<SocketAddr>() else {
                let _ = self.store.remove_session(&r.call_id);
                continue;
            };
            // The old TCP connection died with the old process; UDP is the best effort left.
            let peer = Peer::Udp(addr);
            let ids = DialogIds {
                request_uri: format!("sip:{}@{}", r.channel_id, addr),
                via_host: self.advertise.clone(),
                transport: "UDP".into(),
                from: format!("<sip:{}@{}>;tag={}", self.server_id, self.domain, r.from_tag),
                to: format!("<sip:{}@{}>", r.channel_id, self.domain),
                call_id: r.call_id.clone(),
                cseq: r.cseq,
                contact: format!("<sip:{}@{}>", self.server_id, self.advertise),
            };
            let s = Sess {
                device_id: r.device_id.clone(),
                peer,
                uri: ids.request_uri.clone(),
                to_value: format!("<sip:{}@{}>;tag={}", r.channel_id, self.domain, r.to_tag),
                cseq: r.cseq,
                ids,
                ended: None,
            };
            tracing::info!(call_id = %r.call_id, device = %r.device_id, "BYE for a session left by a previous run");
            self.send_bye(&r.call_id, s, None, now);
        }
    }

    /// Drain a transaction's transmits and events and act on them.
    fn drive(&mut self, key: &(String, u32), now: Instant) {
        let mut outs = Vec::new();
        let mut inv_events = Vec::new();
        let mut non_events = Vec::new();
        let (peer, done) = match self.txns.get_mut(key) {
            Some(Txn::Query { client, peer, .. }) | Some(Txn::Bye { client, peer, .. }) => {
                while let Some(b) = client.poll_transmit() {
                    outs.push(b);
                }
                while let Some(e) = client.poll_event() {
                    non_events.push(e);
                }
                (*peer, client.is_terminated())
            }
            Some(Txn::Invite { client, peer, .. }) => {
                while let Some(b) = client.poll_transmit() {
                    outs.push(b);
                }
                while let Some(e) = client.poll_event() {
                    inv_events.push(e);
                }
                (*peer, client.is_terminated())
            }
            None => return,
        };
        for b in outs {
            self.send(peer, b);
        }
        for e in non_events {
            match self.txns.get_mut(key) {
                Some(Txn::Query { reply, device, .. }) => {
                    let r = reply.take();
                    let device = device.clone();
                    if let Some(r) = r {
                        let res = match &e {
                            NonInviteEvent::Final(s, _) if (200..300).contains(s) => Ok(()),
                            NonInviteEvent::Final(s, _) => {
                                Err(SignalError::NoAnswer { device, reason: format!("status {s}") })
                            }
                            NonInviteEvent::TimedOut => {
                                Err(SignalError::NoAnswer { device, reason: "timeout".into() })
                            }
                        };
                        let _ = r.send(res);
                    }
                }
                Some(Txn::Bye { reply, .. }) => {
                    if let Some(r) = reply.take() {
                        let _ = r.send(());
                    }
                }
                _ => {}
            }
        }
        for e in inv_events {
            self.on_invite_event(key, e, now);
        }
        if done {
            self.txns.remove(key);
        }
    }

    fn release_invite_slot(&mut self, device: &str, now: Instant) {
        if let Some(d) = self.devices.get_mut(device) {
            d.active_invites = d.active_invites.saturating_sub(1);
        }
        self.pump_invites(device, now);
    }

    fn on_invite_event(&mut self, key: &(String, u32), e: InviteEvent, now: Instant) {
        let Some(Txn::Invite { client, peer, ctx, device }) = self.txns.get_mut(key) else { return };
        let peer = *peer;
        let device = device.clone();
        match e {
            InviteEvent::Provisional(_) | InviteEvent::Terminated => {}
            InviteEvent::LateAnswerClosed { .. } => {
                tracing::info!(call_id = %key.0, "late 200 OK after the deadline: ACK + BYE sent");
            }
            InviteEvent::Answered { response, to_tag } => {
                let ids = client.ids().clone();
                let Some(c) = ctx.take() else { return };
                let to_value = response
                    .header("To")
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("{};tag={to_tag}", ids.to));
                let uri = response.contact().map(|c| c.uri).unwrap_or_else(|| ids.request_uri.clone());
                metrics().invite_to_200_seconds.observe(now.duration_since(c.started).as_secs_f64());
                let sess = Sess {
                    device_id: device.clone(),
                    peer,
                    ids: ids.clone(),
                    to_value,
                    uri,
                    cseq: ids.cseq,
                    ended: None,
                };
                let answer = match Sdp::parse_bytes(&response.body) {
                    Ok(a) => a,
                    Err(err) => {
                        let _ = c.reply.send(Err(InviteError::Transport(format!(
                            "device answer has no usable SDP: {err}"
                        ))));
                        self.send_bye(&ids.call_id, sess, None, now);
                        self.release_invite_slot(&device, now);
                        return;
                    }
                };
                let (etx, erx) = oneshot::channel();
                let rec = SessionRecord {
                    call_id: ids.call_id.clone(),
                    device_id: device.clone(),
                    channel_id: c.req.channel_id.clone(),
                    from_tag: ids.from.rsplit("tag=").next().unwrap_or("").to_owned(),
                    to_tag,
                    remote: peer.addr().to_string(),
                    transport: transport_name(&peer),
                    cseq: ids.cseq,
                    created_at: 0,
                };
                if let Err(err) = self.store.add_session(&rec) {
                    tracing::error!("store: {err}");
                }
                if c.reply.send(Ok((ids.call_id.clone(), answer, erx))).is_err() {
                    // The caller is gone: hang up at once.
                    self.send_bye(&ids.call_id, sess, None, now);
                } else {
                    self.sessions.insert(ids.call_id.clone(), Sess { ended: Some(etx), ..sess });
                }
                self.release_invite_slot(&device, now);
            }
            InviteEvent::Refused { status, reason } => {
                if let Some(c) = ctx.take() {
                    let _ = c.reply.send(Err(InviteError::Refused { status, reason }));
                    self.release_invite_slot(&device, now);
                }
            }
            InviteEvent::TimedOut { .. } => {
                if let Some(c) = ctx.take() {
                    let _ = c.reply.send(Err(InviteError::Timeout));
                    self.release_invite_slot(&device, now);
                }
            }
        }
    }

    fn start_invite(&mut self, req: Box<InviteRequest>, reply: InviteReply, now: Instant) {
        let Some(dev) = self.devices.get(&req.device_id) else {
            let _ = reply.send(Err(InviteError::DeviceOffline));
            return;
        };
        let peer = self.device_peer(dev);
        let ids = self.new_ids(&peer, &req.channel_id, format!("sip:{}@{}", req.channel_id, peer.addr()));
        let transport = match req.transport {
            Transport::Udp => MediaTransport::Udp,
            Transport::TcpPassive => MediaTransport::TcpPassive,
            Transport::TcpActive => MediaTransport::TcpActive,
        };
        let sdp = Offer {
            server_id: &self.server_id,
            media_ip: req.media_ip,
            media_port: req.media_port,
            transport,
            ssrc: req.ssrc,
            substream: req.substream,
            playback: None,
        }
        .build();
        // GB/T 28181 §9.2.2: Subject = <channel>:<ssrc>,<server>:0
        let subject = format!("{}:{:010},{}:0", req.channel_id, req.ssrc, self.server_id);
        let client = InviteClient::new(
            now,
            ids.clone(),
            rand::random(),
            vec![("Subject", subject)],
            Some(("APPLICATION/SDP", sdp.as_bytes())),
            peer.is_reliable(),
            now + req.deadline,
        );
        metrics().sip_messages.get_or_create(&sip("INVITE", "request", "out")).inc();
        if let Some(d) = self.devices.get_mut(&req.device_id) {
            d.active_invites += 1;
            d.last_invite = Some(now);
        }
        let key = (ids.call_id.clone(), ids.cseq);
        let device = req.device_id.clone();
        self.txns.insert(
            key.clone(),
            Txn::Invite {
                client: Box::new(client),
                peer,
                ctx: Some(InviteCtx { req, reply, started: now }),
                device,
            },
        );
        self.drive(&key, now);
    }

    /// Start queued INVITEs of a device within its concurrency and pacing limits.
    fn pump_invites(&mut self, device: &str, now: Instant) {
        let limit = self.cfg.sip.invite_concurrency.max(1);
        let spacing = self.cfg.sip.invite_interval;
        loop {
            let Some(d) = self.devices.get_mut(device) else { return };
            if d.queue.is_empty() || d.active_invites >= limit {
                return;
            }
            if let Some(last) = d.last_invite {
                if now < last + spacing {
                    return; // the housekeeping timer comes back
                }
            }
            let Some((req, reply)) = d.queue.pop_front() else { return };
            if reply.is_closed() {
                continue;
            }
            self.start_invite(req, reply, now);
        }
    }

    // ---------------------------------------------------------------- commands and timers

    fn on_cmd(&mut self, cmd: Cmd, now: Instant) {
        match cmd {
            Cmd::RefreshCatalog { device_id, reply } => {
                if !self.devices.get(&device_id).is_some_and(|d| d.online) {
                    let known = matches!(self.store.get_device(&device_id), Ok(Some(_)));
                    let _ = reply.send(Err(if known {
                        SignalError::DeviceOffline(device_id)
                    } else {
                        SignalError::DeviceNotFound(device_id)
                    }));
                    return;
                }
                self.send_query(&device_id, "Catalog", Some(reply), now);
                self.send_query(&device_id, "DeviceInfo", None, now);
            }
            Cmd::Invite { req, reply } => {
                if self.shutdown.is_some() {
                    let _ = reply.send(Err(InviteError::Busy("shutting down".into())));
                    return;
                }
                match self.store.get_device(&req.device_id) {
                    Ok(Some(_)) => {}
                    Ok(None) if self.devices.contains_key(&req.device_id) => {}
                    Ok(None) => {
                        let _ = reply.send(Err(InviteError::DeviceNotFound));
                        return;
                    }
                    Err(e) => {
                        let _ = reply.send(Err(InviteError::Transport(e.to_string())));
                        return;
                    }
                }
                // An IPC may be addressed by its own ID as the channel.
                if req.channel_id != req.device_id {
                    match self.store.get_channel(&req.device_id, &req.channel_id) {
                        Ok(Some(_)) => {}
                        _ => {
                            let _ = reply.send(Err(InviteError::ChannelNotFound));
                            return;
                        }
                    }
                }
                let Some(d) = self.devices.get_mut(&req.device_id).filter(|d| d.online) else {
                    let _ = reply.send(Err(InviteError::DeviceOffline));
                    return;
                };
                if d.queue.len() >= MAX_INVITE_QUEUE {
                    let _ = reply.send(Err(InviteError::Busy(format!(
                        "{} INVITEs already queued for this device",
                        d.queue.len()
                    ))));
                    return;
                }
                let device = req.device_id.clone();
                d.queue.push_back((req, reply));
                self.pump_invites(&device, now);
            }
            Cmd::Bye { call_id, reply } => match self.sessions.remove(&call_id) {
                Some(s) => self.send_bye(&call_id, s, reply, now),
                None => {
                    if let Some(r) = reply {
                        let _ = r.send(());
                    }
                }
            },
            Cmd::Shutdown { reply } => {
                let ids: Vec<String> = self.sessions.keys().cloned().collect();
                for id in ids {
                    if let Some(mut s) = self.sessions.remove(&id) {
                        if let Some(tx) = s.ended.take() {
                            let _ = tx.send("gateway shutting down".into());
                        }
                        self.send_bye(&id, s, None, now);
                    }
                }
                self.shutdown = Some((reply, now + Duration::from_secs(2)));
            }
        }
    }

    fn on_timer(&mut self, now: Instant) {
        let due: Vec<(String, u32)> = self
            .txns
            .iter_mut()
            .filter_map(|(k, t)| {
                let pt = match t {
                    Txn::Query { client, .. } | Txn::Bye { client, .. } => client.poll_timeout(),
                    Txn::Invite { client, .. } => client.poll_timeout(),
                };
                pt.filter(|&p| p <= now).map(|_| k.clone())
            })
            .collect();
        for key in due {
            match self.txns.get_mut(&key) {
                Some(Txn::Query { client, .. }) | Some(Txn::Bye { client, .. }) => client.handle_timeout(now),
                Some(Txn::Invite { client, .. }) => client.handle_timeout(now),
                None => continue,
            }
            self.drive(&key, now);
        }
        if now.duration_since(self.last_housekeeping) >= HOUSEKEEPING {
            self.last_housekeeping = now;
            self.housekeeping(now);
        }
    }

    fn housekeeping(&mut self, now: Instant) {
        let ka = self.cfg.sip.keepalive_interval * self.cfg.sip.keepalive_missed.max(1);
        let mut offline = Vec::new();
        let mut queries = Vec::new();
        let mut pumps = Vec::new();
        for (id, d) in &self.devices {
            if !d.online {
                continue;
            }
            if now >= d.expires {
                offline.push((id.clone(), "expired"));
            } else if now.duration_since(d.last_seen) >= ka {
                offline.push((id.clone(), "keepalive_timeout"));
            } else if d.next_catalog.is_some_and(|t| now >= t) {
                queries.push(id.clone());
            }
            if !d.queue.is_empty() {
                pumps.push(id.clone());
            }
        }
        for (id, why) in offline {
            self.set_offline(&id, why, now);
        }
        for id in queries {
            self.send_query(&id, "Catalog", None, now);
            self.schedule_catalog(&id, now);
        }
        for id in pumps {
            self.pump_invites(&id, now);
        }
        // Catalogs whose remaining parts never came: keep what arrived (no deletion on partial).
        let stall = self.cfg.sip.catalog_stall;
        let stalled: Vec<(String, u32)> = self
            .catalogs
            .iter()
            .filter(|(_, a)| now.duration_since(a.last_update) >= stall)
            .map(|(k, _)| k.clone())
            .collect();
        for key in stalled {
            if let Some(agg) = self.catalogs.remove(&key) {
                tracing::warn!(device = %key.0, sn = key.1, got = agg.items.len(), want = agg.sum_num, "catalog stalled; keeping the partial list");
                for it in &agg.items {
                    if let Err(e) = self.store.upsert_channel(&Self::channel_of(&key.0, it)) {
                        tracing::error!("store: {e}");
                    }
                }
            }
        }
        if self.fails.len() > 1024 {
            let window = self.cfg.sip.auth_block;
            self.fails.retain(|_, f| {
                f.blocked_until.is_some_and(|b| b > now) || now.duration_since(f.last) < window
            });
        }
    }
}
