//! The device simulator against a tiny scripted SIP server written here (real sockets on 127.0.0.1):
//! REGISTER digest (RFC 2617, checked with our own MD5 here), Catalog paging with GB2312 names,
//! DeviceInfo, keepalive, unregister, INVITE in each media transport (RTP payloads must reproduce the
//! PS file byte for byte), BYE both ways, CANCEL, refusals, loss/reorder injection, catalog notify.
//! The gateway's own SIP/RTP code is not used here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use gbrelay::sim::sip::{auth_params, SipMessage};
use gbrelay::sim::{AnswerPolicy, MediaTransport, SimConfig, SimEvent, Simulator, SipTransport, SsrcPolicy};
use md5::{Digest, Md5};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::broadcast;
use tokio::time::timeout;

const SERVER_ID: &str = "34020000002000000001";
const DOMAIN: &str = "3402000000";
const NVR_ID: &str = "34020000001180000001";
const PASSWORD: &str = "12345678";

fn md5_hex(s: &str) -> String {
    Md5::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name)
}

/// The first `packs` packs of a sample, written to a temp file (≈ packs × 40 ms of media), so a full
/// pass of the file streams in about a second.
fn short_sample(packs: usize) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
    let data = std::fs::read(testdata("h264_aac.ps")).unwrap();
    let f = gbrelay::sim::ps::PsFile::parse(bytes::Bytes::from(data.clone())).unwrap();
    let cut = f.units.iter().filter(|u| data[u.start + 3] == 0xBA).nth(packs).unwrap().start;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.ps");
    std::fs::write(&path, &data[..cut]).unwrap();
    (dir, path, data[..cut].to_vec())
}

enum Conn {
    Udp(UdpSocket),
    Tcp(TcpStream, Vec<u8>),
}

/// A scripted SIP server: receives, answers, and sends what the test tells it.
struct Server {
    conn: Conn,
    peer: Option<SocketAddr>,
    local: SocketAddr,
    branch: u32,
}

impl Server {
    async fn udp() -> Server {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = s.local_addr().unwrap();
        Server { conn: Conn::Udp(s), peer: None, local, branch: 0 }
    }

    async fn recv(&mut self) -> SipMessage {
        timeout(Duration::from_secs(10), async {
            match &mut self.conn {
                Conn::Udp(s) => {
                    let mut buf = vec![0u8; 65536];
                    loop {
                        let (n, src) = s.recv_from(&mut buf).await.unwrap();
                        self.peer = Some(src);
                        if let Ok((m, _)) = SipMessage::parse(&buf[..n], true) {
                            return m;
                        }
                    }
                }
                Conn::Tcp(s, buf) => loop {
                    match SipMessage::parse(buf, false) {
                        Ok((m, used)) => {
                            buf.drain(..used);
                            return m;
                        }
                        Err(gbrelay::sim::sip::SipParseError::Incomplete) => {}
                        Err(e) => panic!("bad SIP from the simulator over TCP: {e}"),
                    }
                    let mut chunk = [0u8; 8192];
                    let n = s.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "simulator closed the SIP connection");
                    buf.extend_from_slice(&chunk[..n]);
                },
            }
        })
        .await
        .expect("a SIP message from the simulator within 10 s")
    }

    async fn send(&mut self, m: &SipMessage) {
        let b = m.to_bytes();
        match &mut self.conn {
            Conn::Udp(s) => {
                s.send_to(&b, self.peer.expect("peer known")).await.unwrap();
            }
            Conn::Tcp(s, _) => s.write_all(&b).await.unwrap(),
        }
    }

    /// Receives until `pred` matches, answering every other request 200 OK (keepalives …).
    async fn expect(&mut self, what: &str, pred: impl Fn(&SipMessage) -> bool) -> SipMessage {
        for _ in 0..200 {
            let m = self.recv().await;
            if pred(&m) {
                return m;
            }
            if m.method().is_some() && m.method() != Some("ACK") {
                let r = reply(&m, 200, "OK");
                self.send(&r).await;
            }
        }
        panic!("never got {what}");
    }

    async fn expect_request(&mut self, method: &str) -> SipMessage {
        self.expect(method, |m| m.method() == Some(method)).await
    }

    async fn expect_status(&mut self, call_id: &str, code: u16) -> SipMessage {
        let cid = call_id.to_string();
        self.expect(&format!("{code} for {call_id}"), move |m| {
            m.status() == Some(code) && m.call_id() == Some(cid.as_str())
        })
        .await
    }

    fn transport(&self) -> &'static str {
        match self.conn {
            Conn::Udp(_) => "UDP",
            Conn::Tcp(..) => "TCP",
        }
    }

    /// A server-initiated request to the device.
    fn request(&mut self, method: &str, user: &str, call_id: &str, cseq: u32) -> SipMessage {
        self.branch += 1;
        let dev = self.peer.unwrap_or(self.local);
        SipMessage::request(method, &format!("sip:{user}@{dev}"))
            .with(
                "Via",
                format!("SIP/2.0/{} {};rport;branch=z9hG4bKsrv{}", self.transport(), self.local, self.branch),
            )
            .with("From", format!("<sip:{SERVER_ID}@{DOMAIN}>;tag=srvtag"))
            .with("To", format!("<sip:{user}@{DOMAIN}>"))
            .with("Call-ID", call_id)
            .with("CSeq", format!("{cseq} {method}"))
            .with("Max-Forwards", "70")
    }
}

fn reply(req: &SipMessage, code: u16, reason: &str) -> SipMessage {
    let mut r = SipMessage::response(code, reason);
    for v in req.headers_named("via") {
        r.push("Via", v);
    }
    for h in ["From", "Call-ID", "CSeq"] {
        r.push(h, req.header(h).unwrap());
    }
    let to = req.header("To").unwrap();
    r.push("To", if to.contains("tag=") { to.to_string() } else { format!("{to};tag=srv") });
    r
}

fn base_cfg(server: SocketAddr) -> SimConfig {
    SimConfig {
        server,
        server_id: SERVER_ID.into(),
        domain: DOMAIN.into(),
        device_id: NVR_ID.into(),
        password: PASSWORD.into(),
        local: "127.0.0.1:0".parse().unwrap(),
        sip_transport: SipTransport::Udp,
        channels: 4,
        channel_names_chinese: true,
        catalog_page: 8,
        keepalive_interval: Duration::from_secs(60),
        register_expires: 3600,
        media_file: testdata("h264_aac.ps"),
        loss: 0.0,
        reorder: 0.0,
        ssrc_policy: SsrcPolicy::Offered,
        answer: AnswerPolicy::Accept,
        manufacturer: "Hikvision".into(),
        seed: 42,
    }
}

async fn wait_event(
    rx: &mut broadcast::Receiver<SimEvent>,
    what: &str,
    pred: impl Fn(&SimEvent) -> bool,
) -> SimEvent {
    timeout(Duration::from_secs(10), async {
        loop {
            let e = rx.recv().await.expect("event channel open");
            if pred(&e) {
                return e;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} event within 10 s"))
}

/// REGISTER → 401 (qop=auth) → REGISTER with a digest we verify here → 200.
async fn accept_registration(srv: &mut Server, password: &str) -> SipMessage {
    let r1 = srv.expect_request("REGISTER").await;
    assert_eq!(r1.uri(), Some(format!("sip:{SERVER_ID}@{DOMAIN}").as_str()));
    assert!(r1.header("From").unwrap().contains(&format!("sip:{NVR_ID}@{DOMAIN}")));
    assert!(r1.header("To").unwrap().contains(&format!("sip:{NVR_ID}@{DOMAIN}")));
    let via = r1.header("Via").unwrap();
    assert!(via.contains(";rport") && via.contains("branch=z9hG4bK"), "{via}");
    assert!(via.starts_with(&format!("SIP/2.0/{}", srv.transport())), "{via}");
    assert_eq!(r1.header("Expires"), Some("3600"));
    assert!(r1.header("Contact").unwrap().contains(NVR_ID));
    let ch = reply(&r1, 401, "Unauthorized").with(
        "WWW-Authenticate",
        format!(
            "Digest realm=\"{DOMAIN}\", nonce=\"abc123nonce\", qop=\"auth\", opaque=\"op9\", algorithm=MD5"
        ),
    );
    srv.send(&ch).await;
    let r2 = srv.expect_request("REGISTER").await;
    assert_eq!(r2.call_id(), r1.call_id(), "same Call-ID for the authenticated retry");
    assert_eq!(r2.cseq().unwrap().0, r1.cseq().unwrap().0 + 1);
    let auth = r2.header("Authorization").expect("Authorization header");
    let p: std::collections::HashMap<String, String> =
        auth_params(auth.trim_start_matches("Digest")).into_iter().collect();
    assert_eq!(p["username"], NVR_ID);
    assert_eq!(p["realm"], DOMAIN);
    assert_eq!(p["nonce"], "abc123nonce");
    assert_eq!(p["nc"], "00000001");
    assert_eq!(p["qop"], "auth");
    assert_eq!(p["opaque"], "op9");
    let ha1 = md5_hex(&format!("{NVR_ID}:{DOMAIN}:{password}"));
    let ha2 = md5_hex(&format!("REGISTER:{}", p["uri"]));
    let expect = md5_hex(&format!("{ha1}:abc123nonce:{}:{}:auth:{ha2}", p["nc"], p["cnonce"]));
    if p["response"] == expect {
        let ok = reply(&r2, 200, "OK").with("Expires", "3600").with("Date", "2026-12-03T16:14:15.123");
        srv.send(&ok).await;
    } else {
        srv.send(&reply(&r2, 403, "Forbidden")).await;
    }
    r2
}

fn items_of(xml: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find("<Item>") {
        let end = rest[i..].find("</Item>").unwrap() + i;
        let item = &rest[i..end];
        let tag = |t: &str| {
            let a = item.find(&format!("<{t}>")).map(|a| a + t.len() + 2)?;
            let b = item[a..].find(&format!("</{t}>"))? + a;
            Some(item[a..b].to_string())
        };
        out.push((tag("DeviceID").unwrap(), tag("Name").unwrap_or_default()));
        rest = &rest[end..];
    }
    out
}

fn tag<'a>(xml: &'a str, t: &str) -> Option<&'a str> {
    let a = xml.find(&format!("<{t}>"))? + t.len() + 2;
    let b = xml[a..].find(&format!("</{t}>"))? + a;
    Some(&xml[a..b])
}

/// Sends a Catalog query and collects the Response MESSAGEs (answering each 200) until SumNum items.
async fn query_catalog(srv: &mut Server, expect_items: usize) -> Vec<(String, String)> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"GB2312\"?>\r\n<Query>\r\n<CmdType>Catalog</CmdType>\r\n<SN>77</SN>\r\n\
         <DeviceID>{NVR_ID}</DeviceID>\r\n</Query>\r\n"
    );
    let q = srv
        .request("MESSAGE", NVR_ID, "cat-query-1", 1)
        .with_body("Application/MANSCDP+xml", body.into_bytes());
    srv.send(&q).await;
    srv.expect_status("cat-query-1", 200).await;
    let mut items = Vec::new();
    let mut messages = 0;
    while items.len() < expect_items {
        let m = srv
            .expect("Catalog response", |m| {
                m.method() == Some("MESSAGE")
                    && String::from_utf8_lossy(&m.body).contains("<CmdType>Catalog</CmdType>")
            })
            .await;
        srv.send(&reply(&m, 200, "OK")).await;
        assert!(m.header("Content-Type").unwrap().eq_ignore_ascii_case("Application/MANSCDP+xml"));
        assert!(std::str::from_utf8(&m.body).is_err(), "Chinese names travel as GB2312 bytes, not UTF-8");
        let (xml, _, bad) = encoding_rs::GB18030.decode(&m.body);
        assert!(!bad);
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"GB2312\"?>"));
        assert_eq!(tag(&xml, "SN"), Some("77"));
        assert_eq!(tag(&xml, "SumNum"), Some(expect_items.to_string().as_str()));
        let page = items_of(&xml);
        assert!(xml.contains(&format!("<DeviceList Num=\"{}\">", page.len())));
        for t in [
            "Manufacturer",
            "Model",
            "Owner",
            "CivilCode",
            "Address",
            "Parental",
            "ParentID",
            "SafetyWay",
            "RegisterWay",
            "Secrecy",
            "Status",
            "Longitude",
            "Latitude",
        ] {
            assert!(xml.contains(&format!("<{t}>")), "catalog item lacks {t}");
        }
        assert_eq!(tag(&xml, "ParentID"), Some(NVR_ID));
        items.extend(page);
        messages += 1;
    }
    assert_eq!(items.len(), expect_items);
    assert_eq!(messages, expect_items.div_ceil(8), "split into pages of 8");
    items
}

async fn nvr_register_catalog_info_keepalive_unregister(transport: SipTransport) {
    let (mut srv, listener) = match transport {
        SipTransport::Udp => (None, None),
        SipTransport::Tcp => {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            (None, Some(l))
        }
    };
    let server_addr = match &listener {
        Some(l) => l.local_addr().unwrap(),
        None => {
            let s = Server::udp().await;
            let a = s.local;
            srv = Some(s);
            a
        }
    };
    let mut cfg = base_cfg(server_addr);
    cfg.sip_transport = transport;
    cfg.channels = 64;
    cfg.keepalive_interval = Duration::from_millis(700);
    let sim = Simulator::start(cfg).await.unwrap();
    let mut ev = sim.events();
    let mut srv = match listener {
        Some(l) => {
            let (s, peer) = l.accept().await.unwrap();
            let local = s.local_addr().unwrap();
            Server { conn: Conn::Tcp(s, Vec::new()), peer: Some(peer), local, branch: 0 }
        }
        None => srv.unwrap(),
    };
    accept_registration(&mut srv, PASSWORD).await;
    wait_event(&mut ev, "Registered", |e| *e == SimEvent::Registered).await;
    assert!(sim.stats().registered);

    let items = query_catalog(&mut srv, 64).await;
    assert_eq!(items[0].1, "通道01 前门");
    assert_eq!(items[0].0, "34020000001320000001");
    assert_eq!(items[63].0, "34020000001320000064");
    for (i, (id, name)) in items.iter().enumerate() {
        assert_eq!(id.len(), 20);
        assert_eq!(&id[10..13], "132");
        assert!(name.starts_with(&format!("通道{:02} ", i + 1)), "{name}");
    }
    assert_eq!(sim.channel_ids().len(), 64);

    let body = format!(
        "<?xml version=\"1.0\"?>\r\n<Query>\r\n<CmdType>DeviceInfo</CmdType>\r\n<SN>78</SN>\r\n<DeviceID>{NVR_ID}</DeviceID>\r\n</Query>\r\n"
    );
    let q =
        srv.request("MESSAGE", NVR_ID, "info-1", 2).with_body("Application/MANSCDP+xml", body.into_bytes());
    srv.send(&q).await;
    srv.expect_status("info-1", 200).await;
    let info = srv
        .expect("DeviceInfo", |m| {
            m.method() == Some("MESSAGE")
                && String::from_utf8_lossy(&m.body).contains("<CmdType>DeviceInfo</CmdType>")
        })
        .await;
    srv.send(&reply(&info, 200, "OK")).await;
    let xml = String::from_utf8_lossy(&info.body).into_owned();
    assert_eq!(tag(&xml, "Result"), Some("OK"));
    assert_eq!(tag(&xml, "Channel"), Some("64"));
    assert_eq!(tag(&xml, "Manufacturer"), Some("Hikvision"));
    assert_eq!(tag(&xml, "SN"), Some("78"));

    let ka = srv
        .expect("Keepalive", |m| {
            m.method() == Some("MESSAGE")
                && String::from_utf8_lossy(&m.body).contains("<CmdType>Keepalive</CmdType>")
        })
        .await;
    srv.send(&reply(&ka, 200, "OK")).await;
    let xml = String::from_utf8_lossy(&ka.body).into_owned();
    assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"GB2312\"?>"));
    assert!(xml.contains("<Notify>") && xml.contains("<Status>OK</Status>"));
    assert_eq!(tag(&xml, "DeviceID"), Some(NVR_ID));
    assert!(sim.stats().keepalives >= 1);
    assert_eq!(sim.stats().catalog_queries, 1);
    assert_eq!(sim.stats().device_info_queries, 1);

    // stop(): REGISTER with Expires: 0 on the same Call-ID.
    let stopper = tokio::spawn(sim.stop());
    let un = srv
        .expect("unregister", |m| m.method() == Some("REGISTER") && m.header("Expires") == Some("0"))
        .await;
    srv.send(&reply(&un, 200, "OK")).await;
    timeout(Duration::from_secs(6), stopper).await.unwrap().unwrap();
    wait_event(&mut ev, "Unregistered", |e| *e == SimEvent::Unregistered).await;
}

#[tokio::test]
async fn nvr_over_udp_registers_with_digest_and_pages_64_gb2312_catalog_items() {
    nvr_register_catalog_info_keepalive_unregister(SipTransport::Udp).await;
}

#[tokio::test]
async fn nvr_over_tcp_uses_one_connection_both_ways() {
    nvr_register_catalog_info_keepalive_unregister(SipTransport::Tcp).await;
}

#[tokio::test]
async fn wrong_password_is_reported_as_auth_failed_and_never_registered() {
    let mut srv = Server::udp().await;
    let mut cfg = base_cfg(srv.local);
    cfg.password = "wrong-password".into();
    let sim = Simulator::start(cfg).await.unwrap();
    let mut ev = sim.events();
    accept_registration(&mut srv, PASSWORD).await;
    let e = wait_event(&mut ev, "AuthFailed", |e| matches!(e, SimEvent::AuthFailed(_))).await;
    assert_eq!(e, SimEvent::AuthFailed(403));
    assert!(!sim.stats().registered);
    assert_eq!(sim.stats().keepalives, 0);
}

fn invite_sdp(transport: MediaTransport, port: u16, ssrc: &str) -> String {
    let (proto, extra) = match transport {
        MediaTransport::Udp => ("RTP/AVP", String::new()),
        MediaTransport::TcpPassive => ("TCP/RTP/AVP", "a=setup:passive\r\na=connection:new\r\n".to_string()),
        MediaTransport::TcpActive => ("TCP/RTP/AVP", "a=setup:active\r\na=connection:new\r\n".to_string()),
    };
    format!(
        "v=0\r\no={SERVER_ID} 0 0 IN IP4 127.0.0.1\r\ns=Play\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=video {port} {proto} 96 97 98\r\na=recvonly\r\na=rtpmap:96 PS/90000\r\na=rtpmap:97 MPEG4/90000\r\n\
         a=rtpmap:98 H264/90000\r\n{extra}y={ssrc}\r\n"
    )
}

struct Rtp {
    seq: u16,
    ts: u32,
    marker: bool,
    pt: u8,
    ssrc: u32,
    payload: Vec<u8>,
}

fn parse_rtp(b: &[u8]) -> Rtp {
    assert!(b.len() >= 12);
    assert_eq!(b[0] >> 6, 2, "RTP version 2");
    Rtp {
        seq: u16::from_be_bytes([b[2], b[3]]),
        ts: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        marker: b[1] & 0x80 != 0,
        pt: b[1] & 0x7f,
        ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        payload: b[12..].to_vec(),
    }
}

enum MediaIn {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

impl MediaIn {
    /// Next RTP packet, or None when the stream ended (TCP closed) or went quiet for `idle`.
    async fn next(&mut self, idle: Duration) -> Option<Rtp> {
        match self {
            MediaIn::Udp(s) => {
                let mut buf = vec![0u8; 2048];
                let n = timeout(idle, s.recv(&mut buf)).await.ok()?.ok()?;
                Some(parse_rtp(&buf[..n]))
            }
            MediaIn::Tcp(s) => {
                let mut len = [0u8; 2];
                timeout(idle, s.read_exact(&mut len)).await.ok()?.ok()?;
                let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
                timeout(idle, s.read_exact(&mut buf)).await.ok()?.ok()?;
                Some(parse_rtp(&buf))
            }
        }
    }
}

fn sdp_line<'a>(sdp: &'a str, prefix: &str) -> Option<&'a str> {
    sdp.lines().find_map(|l| l.strip_prefix(prefix))
}

/// INVITE one channel over `transport`, receive one full pass of the short file and compare it byte
/// for byte, then BYE and check the stream stops.
async fn stream_one_pass(transport: MediaTransport, policy: SsrcPolicy, expect_ssrc: u32) {
    let (_dir, path, file) = short_sample(30);
    let mut srv = Server::udp().await;
    let mut cfg = base_cfg(srv.local);
    cfg.media_file = path;
    cfg.ssrc_policy = policy;
    let sim = Simulator::start(cfg).await.unwrap();
    let mut ev = sim.events();
    accept_registration(&mut srv, PASSWORD).await;
    wait_event(&mut ev, "Registered", |e| *e == SimEvent::Registered).await;
    let channel = sim.channel_ids()[1].clone();

    let (udp, listener, port) = match transport {
        MediaTransport::Udp => {
            let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let p = s.local_addr().unwrap().port();
            (Some(s), None, p)
        }
        MediaTransport::TcpPassive => {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let p = l.local_addr().unwrap().port();
            (None, Some(l), p)
        }
        MediaTransport::TcpActive => (None, None, 9),
    };
    let call_id = format!("invite-{transport:?}");
    let invite = srv
        .request("INVITE", &channel, &call_id, 1)
        .with("Contact", format!("<sip:{SERVER_ID}@{}>", srv.local))
        .with("Subject", format!("{channel}:0200000001,{SERVER_ID}:0"))
        .with_body("application/sdp", invite_sdp(transport, port, "0200000001").into_bytes());
    srv.send(&invite).await;
    srv.expect_status(&call_id, 100).await;
    let ok = srv.expect_status(&call_id, 200).await;
    let e = wait_event(&mut ev, "Invited", |e| matches!(e, SimEvent::Invited { .. })).await;
    assert_eq!(
        e,
        SimEvent::Invited {
            channel: channel.clone(),
            transport,
            ssrc: Some(200_000_001),
            stream_number: None
        }
    );
    let seen = sim.last_request("INVITE").expect("the INVITE is kept for inspection");
    assert_eq!(seen.header("Subject"), Some(format!("{channel}:0200000001,{SERVER_ID}:0").as_str()));
    let answer = String::from_utf8(ok.body.clone()).unwrap();
    assert_eq!(sdp_line(&answer, "y="), Some(format!("{expect_ssrc:010}").as_str()));
    assert!(sdp_line(&answer, "f=").is_some());
    let m = sdp_line(&answer, "m=").unwrap().to_string();
    let their_port: u16 = m.split_whitespace().nth(1).unwrap().parse().unwrap();
    let to_tag = gbrelay::sim::sip::param(ok.header("To").unwrap(), "tag").expect("To tag in 200 OK");
    match transport {
        MediaTransport::Udp => assert!(m.contains(" RTP/AVP 96"), "{m}"),
        MediaTransport::TcpPassive => {
            assert!(m.contains("TCP/RTP/AVP"));
            assert_eq!(sdp_line(&answer, "a=setup:"), Some("active"));
        }
        MediaTransport::TcpActive => {
            assert!(m.contains("TCP/RTP/AVP"));
            assert_eq!(sdp_line(&answer, "a=setup:"), Some("passive"));
            assert_eq!(sdp_line(&answer, "c="), Some("IN IP4 127.0.0.1"));
        }
    }
    let mut ack = srv.request("ACK", &channel, &call_id, 1);
    ack.headers.retain(|(n, _)| n != "To");
    ack.push("To", ok.header("To").unwrap());
    srv.send(&ack).await;
    let mut media = match transport {
        MediaTransport::Udp => MediaIn::Udp(udp.unwrap()),
        MediaTransport::TcpPassive => MediaIn::Tcp(
            timeout(Duration::from_secs(5), listener.unwrap().accept()).await.unwrap().unwrap().0,
        ),
        MediaTransport::TcpActive => MediaIn::Tcp(
            TcpStream::connect(("127.0.0.1", their_port)).await.expect("the device listens on its m= port"),
        ),
    };
    wait_event(&mut ev, "StreamStarted", |e| matches!(e, SimEvent::StreamStarted { .. })).await;

    // One pass of the file, packets in order (loopback, no injection).
    let t0 = std::time::Instant::now();
    let mut got = Vec::with_capacity(file.len());
    let mut last_seq: Option<u16> = None;
    let mut units = 0;
    while got.len() < file.len() {
        let p = media.next(Duration::from_secs(3)).await.expect("RTP keeps coming");
        assert_eq!(p.pt, 96);
        assert_eq!(p.ssrc, expect_ssrc);
        assert!(p.payload.len() <= 1400);
        if let Some(s) = last_seq {
            assert_eq!(p.seq, s.wrapping_add(1), "sequence numbers are consecutive");
        }
        last_seq = Some(p.seq);
        if p.marker {
            units += 1;
        }
        let _ = p.ts;
        got.extend_from_slice(&p.payload);
    }
    let elapsed = t0.elapsed();
    assert_eq!(&got[..file.len()], &file[..], "RTP payloads reproduce the PS file");
    assert!(units >= 30, "one marker per unit: {units}");
    // 30 packs at 25 fps ≈ 1.16 s of media: paced at real time, not blasted.
    assert!(elapsed >= Duration::from_millis(900), "paced at real time: {elapsed:?}");
    // The loop continues with the next sequence number.
    let p = media.next(Duration::from_secs(3)).await.expect("the file loops");
    assert_eq!(p.seq, last_seq.unwrap().wrapping_add(1));
    assert!(sim.stats().active_streams == 1 && sim.stats().acks == 1);

    let bye = {
        let mut b = srv.request("BYE", &channel, &call_id, 2);
        b.headers.retain(|(n, _)| n != "To");
        b.push("To", ok.header("To").unwrap());
        b
    };
    assert!(bye.header("To").unwrap().contains(&to_tag));
    srv.send(&bye).await;
    srv.expect_status(&call_id, 200).await;
    let e = wait_event(&mut ev, "Bye", |e| matches!(e, SimEvent::Bye { .. })).await;
    assert_eq!(e, SimEvent::Bye { channel, from_server: true });
    // The stream stops: UDP goes quiet, TCP is closed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut after = 0;
    while media.next(Duration::from_millis(400)).await.is_some() {
        after += 1;
        assert!(after < 50, "stream still running after BYE");
    }
    assert_eq!(sim.stats().active_streams, 0);
    assert_eq!(sim.stats().byes, 1);
}

#[tokio::test]
async fn udp_stream_reproduces_the_ps_file_and_stops_on_bye() {
    stream_one_pass(MediaTransport::Udp, SsrcPolicy::Offered, 200_000_001).await;
}

#[tokio::test]
async fn tcp_passive_server_gets_a_connection_and_rfc4571_frames() {
    stream_one_pass(MediaTransport::TcpPassive, SsrcPolicy::Own(0x1234_5678), 0x1234_5678).await;
}

#[tokio::test]
async fn tcp_active_server_connects_to_the_devices_answered_port() {
    stream_one_pass(MediaTransport::TcpActive, SsrcPolicy::Zero, 0).await;
}

/// Registers a simulator with `cfg` tweaks and returns (server, sim, events, first channel).
async fn registered(
    tweak: impl FnOnce(&mut SimConfig),
) -> (Server, Simulator, broadcast::Receiver<SimEvent>, String) {
    let mut srv = Server::udp().await;
    let mut cfg = base_cfg(srv.local);
    tweak(&mut cfg);
    let sim = Simulator::start(cfg).await.unwrap();
    let mut ev = sim.events();
    accept_registration(&mut srv, PASSWORD).await;
    wait_event(&mut ev, "Registered", |e| *e == SimEvent::Registered).await;
    let ch = sim.channel_ids()[0].clone();
    (srv, sim, ev, ch)
}

#[tokio::test]
async fn udp_loss_and_reorder_injection_match_their_rates_and_counters() {
    let (mut srv, sim, _ev, channel) = registered(|c| {
        c.loss = 0.05;
        c.reorder = 0.05;
    })
    .await;
    let media = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = media.local_addr().unwrap().port();
    let invite = srv
        .request("INVITE", &channel, "lossy", 1)
        .with_body("application/sdp", invite_sdp(MediaTransport::Udp, port, "0200000002").into_bytes());
    srv.send(&invite).await;
    let ok = srv.expect_status("lossy", 200).await;
    let mut ack = srv.request("ACK", &channel, "lossy", 1);
    ack.headers.retain(|(n, _)| n != "To");
    ack.push("To", ok.header("To").unwrap());
    srv.send(&ack).await;
    let mut m = MediaIn::Udp(media);
    let mut seqs = Vec::new();
    while seqs.len() < 1500 {
        let p = m.next(Duration::from_secs(3)).await.expect("RTP");
        seqs.push(p.seq);
    }
    let mut bye = srv.request("BYE", &channel, "lossy", 2);
    bye.headers.retain(|(n, _)| n != "To");
    bye.push("To", ok.header("To").unwrap());
    srv.send(&bye).await;
    srv.expect_status("lossy", 200).await;
    while let Some(p) = m.next(Duration::from_millis(300)).await {
        seqs.push(p.seq);
    }
    let st = sim.stats();
    assert_eq!(st.rtp_packets, seqs.len() as u64, "loopback delivers every packet sent");
    // Unwrap sequence numbers relative to the first.
    let base = seqs[0];
    let ext: Vec<i64> = {
        let mut out = Vec::new();
        let mut hi = 0i64;
        let mut prev = 0u16;
        for s in seqs.iter().map(|s| s.wrapping_sub(base)) {
            if s < prev && prev - s > 30000 {
                hi += 65536;
            }
            prev = s;
            out.push(hi + s as i64);
        }
        out
    };
    let max = *ext.iter().max().unwrap();
    let missing = (max + 1) as u64 - ext.len() as u64;
    let mut late = 0u64;
    let mut hi = -1i64;
    for &s in &ext {
        if s < hi {
            late += 1;
        }
        hi = hi.max(s);
    }
    let total = st.rtp_packets + st.rtp_dropped;
    let loss_rate = st.rtp_dropped as f64 / total as f64;
    let reorder_rate = st.rtp_reordered as f64 / total as f64;
    assert!((0.025..0.09).contains(&loss_rate), "loss rate {loss_rate}");
    assert!((0.025..0.09).contains(&reorder_rate), "reorder rate {reorder_rate}");
    // What the receiver sees agrees with the counters (the first packet may itself have been
    // dropped, and one held packet may be unsent when the stream stops).
    assert!(missing.abs_diff(st.rtp_dropped) <= 2, "missing {missing} vs dropped {}", st.rtp_dropped);
    assert!(late.abs_diff(st.rtp_reordered) <= 2, "late {late} vs reordered {}", st.rtp_reordered);
}

#[tokio::test]
async fn no_answer_policy_stays_silent_and_counts_invite_retransmissions() {
    let (mut srv, sim, _ev, channel) = registered(|c| c.answer = AnswerPolicy::NoAnswer).await;
    let invite = srv
        .request("INVITE", &channel, "silent", 1)
        .with_body("application/sdp", invite_sdp(MediaTransport::Udp, 30000, "0200000003").into_bytes());
    for _ in 0..3 {
        srv.send(&invite).await; // Timer A retransmissions reuse the branch.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = timeout(Duration::from_millis(800), srv.expect_status("silent", 100)).await;
    assert!(got.is_err(), "no response of any kind to an ignored INVITE");
    let st = sim.stats();
    assert_eq!(st.invites, 3);
    assert_eq!(st.invite_retransmissions, 2);
}

#[tokio::test]
async fn provisional_then_silence_answers_cancel_with_200_and_487() {
    let (mut srv, sim, mut ev, channel) =
        registered(|c| c.answer = AnswerPolicy::ProvisionalThenSilence).await;
    let invite = srv
        .request("INVITE", &channel, "ringing", 1)
        .with_body("application/sdp", invite_sdp(MediaTransport::Udp, 30000, "0200000004").into_bytes());
    srv.send(&invite).await;
    srv.expect_status("ringing", 100).await;
    srv.expect_status("ringing", 180).await;
    let nothing = timeout(Duration::from_millis(700), srv.expect_status("ringing", 200)).await;
    assert!(nothing.is_err(), "no final response on its own");
    // CANCEL reuses the INVITE's branch and CSeq number (RFC 3261 §9.1).
    let mut cancel = invite.clone();
    cancel.start =
        gbrelay::sim::sip::StartLine::Request { method: "CANCEL".into(), uri: invite.uri().unwrap().into() };
    cancel.headers.retain(|(n, _)| n != "CSeq" && n != "Content-Type");
    cancel.push("CSeq", "1 CANCEL");
    cancel.body.clear();
    srv.send(&cancel).await;
    let c200 = srv.expect("200 to CANCEL", |m| m.status() == Some(200)).await;
    assert_eq!(c200.cseq().unwrap().1, "CANCEL");
    let r487 = srv.expect_status("ringing", 487).await;
    assert_eq!(r487.cseq().unwrap().1, "INVITE");
    wait_event(&mut ev, "Cancelled", |e| matches!(e, SimEvent::Cancelled { .. })).await;
    assert_eq!(sim.stats().cancels, 1);
}

#[tokio::test]
async fn refuse_policy_answers_100_then_the_status() {
    let (mut srv, sim, _ev, channel) = registered(|c| c.answer = AnswerPolicy::Refuse(486)).await;
    let invite = srv
        .request("INVITE", &channel, "busy", 1)
        .with_body("application/sdp", invite_sdp(MediaTransport::Udp, 30000, "0200000005").into_bytes());
    srv.send(&invite).await;
    srv.expect_status("busy", 100).await;
    let r = srv.expect_status("busy", 486).await;
    assert!(gbrelay::sim::sip::param(r.header("To").unwrap(), "tag").is_some());
    assert_eq!(sim.stats().active_streams, 0);
    // An unknown channel is 404 whatever the policy.
    let bad = srv
        .request("INVITE", "34020000001329999999", "unknown", 1)
        .with_body("application/sdp", invite_sdp(MediaTransport::Udp, 30000, "0200000006").into_bytes());
    srv.send(&bad).await;
    srv.expect_status("unknown", 404).await;
}

#[tokio::test]
async fn device_bye_uses_the_dialog_and_catalog_notify_reports_the_event() {
    let (_dir, path, _) = short_sample(10);
    let (mut srv, sim, mut ev, channel) = registered(|c| c.media_file = path).await;
    let media = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = media.local_addr().unwrap().port();
    let invite = srv
        .request("INVITE", &channel, "devbye", 1)
        .with("Contact", format!("<sip:{SERVER_ID}@{}>", srv.local))
        .with_body("application/sdp", invite_sdp(MediaTransport::Udp, port, "0200000007").into_bytes());
    srv.send(&invite).await;
    let ok = srv.expect_status("devbye", 200).await;
    let mut ack = srv.request("ACK", &channel, "devbye", 1);
    ack.headers.retain(|(n, _)| n != "To");
    ack.push("To", ok.header("To").unwrap());
    srv.send(&ack).await;
    let mut m = MediaIn::Udp(media);
    assert!(m.next(Duration::from_secs(3)).await.is_some());

    sim.send_bye(&channel).await;
    let bye = srv.expect_request("BYE").await;
    assert_eq!(bye.call_id(), Some("devbye"));
    assert_eq!(
        bye.uri(),
        Some(format!("sip:{SERVER_ID}@{}", srv.local).as_str()),
        "BYE goes to the INVITE's Contact"
    );
    // From/To swap: the device's tag is in From, the server's in To.
    assert_eq!(bye.header("From"), ok.header("To"));
    assert!(bye.header("To").unwrap().contains("tag=srvtag"));
    srv.send(&reply(&bye, 200, "OK")).await;
    let e = wait_event(&mut ev, "Bye", |e| matches!(e, SimEvent::Bye { .. })).await;
    assert_eq!(e, SimEvent::Bye { channel: channel.clone(), from_server: false });
    assert_eq!(sim.stats().byes_sent, 1);

    let notifier = {
        let ch = channel.clone();
        async move {
            sim.send_catalog_notify("OFF", &ch).await;
            sim
        }
    };
    let task = tokio::spawn(notifier);
    let n = srv
        .expect("catalog notify", |m| {
            m.method() == Some("MESSAGE") && String::from_utf8_lossy(&m.body).contains("<Event>")
        })
        .await;
    srv.send(&reply(&n, 200, "OK")).await;
    let sim = task.await.unwrap();
    let (xml, _, _) = encoding_rs::GB18030.decode(&n.body);
    assert!(xml.contains("<Notify>"));
    assert_eq!(tag(&xml, "CmdType"), Some("Catalog"));
    assert_eq!(tag(&xml, "Event"), Some("OFF"));
    assert_eq!(tag(&xml, "Status"), Some("OFF"));
    assert_eq!(items_of(&xml)[0].0, channel);
    // The device's own catalog now reports the channel OFF.
    let items = {
        let body = "<?xml version=\"1.0\"?><Query><CmdType>Catalog</CmdType><SN>9</SN></Query>";
        let q = srv
            .request("MESSAGE", NVR_ID, "cat2", 3)
            .with_body("Application/MANSCDP+xml", body.as_bytes().to_vec());
        srv.send(&q).await;
        let r = srv
            .expect("catalog", |m| {
                m.method() == Some("MESSAGE") && String::from_utf8_lossy(&m.body).contains("<SumNum>")
            })
            .await;
        srv.send(&reply(&r, 200, "OK")).await;
        encoding_rs::GB18030.decode(&r.body).0.into_owned()
    };
    let first_item = &items[items.find("<Item>").unwrap()..items.find("</Item>").unwrap()];
    assert!(first_item.contains("<Status>OFF</Status>"), "{first_item}");
    drop(sim);
}

#[tokio::test]
async fn go_silent_stops_keepalives() {
    let (mut srv, sim, _ev, _) = registered(|c| c.keepalive_interval = Duration::from_millis(200)).await;
    srv.expect("a keepalive", |m| String::from_utf8_lossy(&m.body).contains("Keepalive")).await;
    sim.go_silent().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = sim.stats().keepalives;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(sim.stats().keepalives, before, "no keepalive while silent");
    sim.resume().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(sim.stats().keepalives > before, "keepalives resume");
}

#[tokio::test]
async fn refresh_keeps_the_call_id_and_reboot_registers_with_a_new_one() {
    let mut srv = Server::udp().await;
    let sim = Simulator::start(base_cfg(srv.local)).await.unwrap();
    let mut ev = sim.events();
    // RFC 2069-style challenge (no qop): response = MD5(HA1:nonce:HA2).
    let r1 = srv.expect_request("REGISTER").await;
    srv.send(
        &reply(&r1, 401, "Unauthorized")
            .with("WWW-Authenticate", format!("Digest realm=\"{DOMAIN}\", nonce=\"n0\"")),
    )
    .await;
    let r2 = srv.expect_request("REGISTER").await;
    let p: std::collections::HashMap<String, String> =
        auth_params(r2.header("Authorization").unwrap().trim_start_matches("Digest")).into_iter().collect();
    assert!(!p.contains_key("qop") && !p.contains_key("nc"));
    let ha1 = md5_hex(&format!("{NVR_ID}:{DOMAIN}:{PASSWORD}"));
    let ha2 = md5_hex(&format!("REGISTER:{}", p["uri"]));
    assert_eq!(p["response"], md5_hex(&format!("{ha1}:n0:{ha2}")));
    // Grant only 2 s: the device must refresh well before that, on the same Call-ID.
    srv.send(&reply(&r2, 200, "OK").with("Expires", "2")).await;
    wait_event(&mut ev, "Registered", |e| *e == SimEvent::Registered).await;
    let t = std::time::Instant::now();
    let r3 = srv.expect_request("REGISTER").await;
    assert!(t.elapsed() < Duration::from_millis(1900), "refreshed before expiry");
    assert_eq!(r3.call_id(), r1.call_id());
    assert!(r3.cseq().unwrap().0 > r2.cseq().unwrap().0);
    srv.send(&reply(&r3, 200, "OK").with("Expires", "3600")).await;
    wait_event(&mut ev, "Registered", |e| *e == SimEvent::Registered).await;

    sim.reboot().await;
    let r4 = srv.expect_request("REGISTER").await;
    assert_ne!(r4.call_id(), r1.call_id(), "a reboot registers with a new Call-ID");
    assert_eq!(r4.cseq().unwrap().0, 1);
    srv.send(&reply(&r4, 200, "OK").with("Expires", "3600")).await;
    wait_event(&mut ev, "Registered", |e| *e == SimEvent::Registered).await;
    assert!(sim.stats().registers >= 4);
}

#[tokio::test]
async fn media_source_streams_the_file_without_sip_in_each_transport() {
    use gbrelay::sim::{MediaSource, MediaSourceConfig};
    let (_dir, path, file) = short_sample(10);
    for transport in [MediaTransport::Udp, MediaTransport::TcpPassive, MediaTransport::TcpActive] {
        let mut cfg = MediaSourceConfig::loopback(path.clone(), transport, 777);
        let (mut rx, src) = match transport {
            MediaTransport::Udp => {
                let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                cfg.peer = s.local_addr().unwrap();
                (MediaIn::Udp(s), MediaSource::start(cfg).await.unwrap())
            }
            MediaTransport::TcpPassive => {
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                cfg.peer = l.local_addr().unwrap();
                let src = MediaSource::start(cfg).await.unwrap();
                (MediaIn::Tcp(l.accept().await.unwrap().0), src)
            }
            MediaTransport::TcpActive => {
                let src = MediaSource::start(cfg).await.unwrap();
                (MediaIn::Tcp(TcpStream::connect(src.local_addr()).await.unwrap()), src)
            }
        };
        let mut got = Vec::new();
        while got.len() < file.len() {
            let p = rx.next(Duration::from_secs(3)).await.expect("RTP");
            assert_eq!(p.ssrc, 777);
            got.extend_from_slice(&p.payload);
        }
        assert_eq!(&got[..file.len()], &file[..], "{transport:?}");
        assert!(src.stats().packets > 0);
        src.stop();
    }
}

#[tokio::test]
async fn tcp_passive_media_connect_is_retried_until_the_server_listens() {
    let (_dir, path, file) = short_sample(10);
    let (mut srv, sim, mut ev, channel) = registered(|c| c.media_file = path).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }; // closed again: the first connection attempts are refused
    let invite = srv.request("INVITE", &channel, "late-listener", 1).with_body(
        "application/sdp",
        invite_sdp(MediaTransport::TcpPassive, port, "0200000009").into_bytes(),
    );
    srv.send(&invite).await;
    let ok = srv.expect_status("late-listener", 200).await;
    let mut ack = srv.request("ACK", &channel, "late-listener", 1);
    ack.headers.retain(|(n, _)| n != "To");
    ack.push("To", ok.header("To").unwrap());
    srv.send(&ack).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let l = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let (t, _) = timeout(Duration::from_secs(5), l.accept()).await.expect("the device retries").unwrap();
    let mut m = MediaIn::Tcp(t);
    let mut got = Vec::new();
    while got.len() < file.len() {
        got.extend_from_slice(&m.next(Duration::from_secs(3)).await.expect("RTP").payload);
    }
    assert_eq!(&got[..file.len()], &file[..]);
    wait_event(&mut ev, "StreamStarted", |e| matches!(e, SimEvent::StreamStarted { .. })).await;
    assert_eq!(sim.stats().byes_sent, 0);
}

#[tokio::test]
async fn the_first_event_receiver_sees_events_from_before_it_was_taken() {
    let mut srv = Server::udp().await;
    let sim = Simulator::start(base_cfg(srv.local)).await.unwrap();
    accept_registration(&mut srv, PASSWORD).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sim.stats().registered);
    let mut first = sim.events();
    wait_event(&mut first, "Registered", |e| *e == SimEvent::Registered).await;
    let mut later = sim.events();
    assert!(later.try_recv().is_err(), "later receivers start empty");
}

#[tokio::test]
async fn dropping_a_tcp_device_closes_its_sip_connection() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut cfg = base_cfg(l.local_addr().unwrap());
    cfg.sip_transport = SipTransport::Tcp;
    cfg.keepalive_interval = Duration::from_millis(100);
    let sim = Simulator::start(cfg).await.unwrap();
    let (s, peer) = l.accept().await.unwrap();
    let local = s.local_addr().unwrap();
    let mut srv = Server { conn: Conn::Tcp(s, Vec::new()), peer: Some(peer), local, branch: 0 };
    let reg = srv.expect_request("REGISTER").await;
    srv.send(&reply(&reg, 200, "OK")).await;
    // A keepalive left unanswered: its transaction task outlives the device handle.
    srv.expect("a keepalive", |m| String::from_utf8_lossy(&m.body).contains("Keepalive")).await;
    drop(sim);
    let Conn::Tcp(mut s, _) = srv.conn else { unreachable!() };
    let mut buf = vec![0u8; 4096];
    let eof = timeout(Duration::from_secs(2), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(eof.is_ok(), "SIP connection closed at once after drop");
}
