//! A small scripted GB/T 28181 device for the signalling tests: one SIP UA over UDP or TCP that
//! registers with digest auth, sends keepalives and catalog MESSAGEs, and answers INVITE/BYE as a
//! test script tells it. Not the full simulator (that is `gbrelay sim`).
#![allow(dead_code)]

use bytes::Bytes;
use gbrelay::config::Config;
use gbrelay::proto::sip::digest;
use gbrelay::proto::sip::framing::StreamFramer;
use gbrelay::proto::sip::message::{build_response, Message};
use gbrelay::signal::{SignalHandle, SipServer};
use gbrelay::store::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

pub const SERVER_ID: &str = "34020000002000000001";
pub const DOMAIN: &str = "3402000000";
pub const NVR: &str = "34020000001180000001";

pub fn test_config() -> Config {
    let mut cfg = Config::default();
    cfg.sip.listen = "127.0.0.1:0".parse().unwrap();
    cfg.media.ip = "127.0.0.1".parse().unwrap();
    cfg
}

pub async fn start(cfg: Config, store: Store) -> (SignalHandle, tokio::task::JoinHandle<()>) {
    SipServer::start(Arc::new(cfg), store).await.expect("start SIP server")
}

pub enum Link {
    Udp(UdpSocket),
    Tcp { stream: TcpStream, framer: StreamFramer },
}

pub struct Ua {
    pub id: String,
    pub password: String,
    pub server: SocketAddr,
    pub link: Link,
    pub local: SocketAddr,
    pub call_id: String,
    pub cseq: u32,
    pub sn: u32,
    /// Requests received while waiting for something else.
    pub backlog: Vec<Message>,
}

impl Ua {
    pub async fn udp(id: &str, password: &str, server: SocketAddr) -> Ua {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = s.local_addr().unwrap();
        Ua::new(id, password, server, Link::Udp(s), local)
    }

    pub async fn tcp(id: &str, password: &str, server: SocketAddr) -> Ua {
        let s = TcpStream::connect(server).await.unwrap();
        let local = s.local_addr().unwrap();
        Ua::new(id, password, server, Link::Tcp { stream: s, framer: StreamFramer::new() }, local)
    }

    fn new(id: &str, password: &str, server: SocketAddr, link: Link, local: SocketAddr) -> Ua {
        Ua {
            id: id.into(),
            password: password.into(),
            server,
            link,
            local,
            call_id: format!("{}@127.0.0.1", rand::random::<u32>()),
            cseq: 0,
            sn: 0,
            backlog: vec![],
        }
    }

    pub fn proto(&self) -> &'static str {
        match self.link {
            Link::Udp(_) => "UDP",
            Link::Tcp { .. } => "TCP",
        }
    }

    pub async fn send(&mut self, data: &[u8]) {
        match &mut self.link {
            Link::Udp(s) => {
                s.send_to(data, self.server).await.unwrap();
            }
            Link::Tcp { stream, .. } => stream.write_all(data).await.unwrap(),
        }
    }

    /// Next message within `t`, or None.
    pub async fn recv(&mut self, t: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            match &mut self.link {
                Link::Udp(s) => {
                    let mut buf = vec![0u8; 65536];
                    let (n, _) = tokio::time::timeout_at(deadline, s.recv_from(&mut buf)).await.ok()?.ok()?;
                    return Message::parse(Bytes::copy_from_slice(&buf[..n])).ok();
                }
                Link::Tcp { stream, framer } => {
                    if let Some(m) = framer.next_message().ok()? {
                        return Message::parse(m).ok();
                    }
                    let mut buf = vec![0u8; 65536];
                    let n = tokio::time::timeout_at(deadline, stream.read(&mut buf)).await.ok()?.ok()?;
                    if n == 0 {
                        return None;
                    }
                    framer.push(&buf[..n]);
                }
            }
        }
    }

    /// Wait for a response to our request with this CSeq method; requests met meanwhile go to the
    /// backlog.
    pub async fn response(&mut self, method: &str, t: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = self.recv(left).await?;
            if m.is_request() {
                self.backlog.push(m);
            } else if m.method() == method {
                return Some(m);
            }
        }
    }

    /// Wait for a request matching `pred` (backlog first). Other requests are kept.
    pub async fn request<F: Fn(&Message) -> bool>(&mut self, pred: F, t: Duration) -> Option<Message> {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return Some(self.backlog.remove(i));
        }
        let deadline = tokio::time::Instant::now() + t;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = self.recv(left).await?;
            if m.is_request() && pred(&m) {
                return Some(m);
            }
            if m.is_request() {
                self.backlog.push(m);
            }
        }
    }

    pub fn our_from(&self) -> String {
        format!("<sip:{}@{DOMAIN}>;tag={}", self.id, self.id.len())
    }

    pub fn request_bytes(&mut self, method: &str, extra: &str, ctype: Option<&str>, body: &[u8]) -> Vec<u8> {
        self.cseq += 1;
        let mut s = format!(
            "{method} sip:{SERVER_ID}@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/{} {};rport;branch=z9hG4bK{}\r\nFrom: {}\r\nTo: <sip:{}@{DOMAIN}>\r\nCall-ID: {}\r\nCSeq: {} {method}\r\nMax-Forwards: 70\r\nUser-Agent: test-ua\r\n{extra}",
            self.proto(),
            self.local,
            rand::random::<u32>(),
            self.our_from(),
            if method == "REGISTER" { self.id.clone() } else { SERVER_ID.to_owned() },
            self.call_id,
            self.cseq,
        );
        if let Some(ct) = ctype {
            s.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        s.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut v = s.into_bytes();
        v.extend_from_slice(body);
        v
    }

    fn register_bytes(&mut self, expires: u32, auth: Option<&str>) -> Vec<u8> {
        let contact = format!("Contact: <sip:{}@{}>\r\nExpires: {expires}\r\n", self.id, self.local);
        let extra = match auth {
            Some(a) => format!("{contact}Authorization: {a}\r\n"),
            None => contact,
        };
        self.request_bytes("REGISTER", &extra, None, b"")
    }

    /// REGISTER, answer the 401 challenge, return the final response.
    pub async fn register_with(&mut self, expires: u32, qop: bool) -> Message {
        let req = self.register_bytes(expires, None);
        self.send(&req).await;
        let r = self.response("REGISTER", Duration::from_secs(3)).await.expect("answer to REGISTER");
        if r.status() != Some(401) {
            return r;
        }
        let (nonce, realm, _) = digest::parse_challenge(r.header("WWW-Authenticate").unwrap()).unwrap();
        let uri = format!("sip:{SERVER_ID}@{DOMAIN}");
        let nc_cn = qop.then_some(("0000000a", "0a4f113b"));
        let auth =
            digest::client_authorization(&self.id, &realm, &self.password, "REGISTER", &uri, &nonce, nc_cn);
        let req = self.register_bytes(expires, Some(&auth));
        self.send(&req).await;
        self.response("REGISTER", Duration::from_secs(3)).await.expect("answer to authenticated REGISTER")
    }

    pub async fn register(&mut self, expires: u32) -> Message {
        self.register_with(expires, true).await
    }

    pub async fn message(&mut self, body: &[u8]) -> Option<Message> {
        let req = self.request_bytes("MESSAGE", "", Some("Application/MANSCDP+xml"), body);
        self.send(&req).await;
        self.response("MESSAGE", Duration::from_secs(3)).await
    }

    pub async fn keepalive(&mut self) -> Option<Message> {
        self.sn += 1;
        let body = gbrelay::proto::gb::manscdp::build_keepalive(self.sn, &self.id);
        self.message(&body).await
    }

    /// Answer a request from the gateway.
    pub async fn answer(&mut self, req: &Message, code: u16, body: Option<(&str, &[u8])>) {
        let contact = [("Contact", format!("<sip:{}@{}>", self.id, self.local))];
        let r = build_response(req, code, Some("devtag"), None, &contact, body);
        self.send(&r).await;
    }
}

/// Poll `f` until true or `t` passes.
pub async fn eventually<F: FnMut() -> bool>(t: Duration, mut f: F) -> bool {
    let deadline = tokio::time::Instant::now() + t;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}
