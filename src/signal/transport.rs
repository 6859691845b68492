//! SIP transports (RFC 3261 §18): one UDP socket and one TCP listener on the same address.
//! Tasks here only move bytes: datagrams and framed TCP messages go to the core as [`NetEvent`]s;
//! the core sends through [`Transports`]. Not here: SIP semantics (`core.rs`).
//!
//! Bounds: at most [`MAX_TCP_CONNS`] connections; each connection's buffer is bounded by the
//! framer's header and body limits (`proto::sip::framing`); a framing error closes the connection
//! (RFC 3261 §18.3 gives no way to resynchronise a stream).

use crate::proto::sip::framing::StreamFramer;
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;

/// Most TCP connections served at once; further ones are closed on accept.
pub const MAX_TCP_CONNS: usize = 4096;
/// Outgoing messages queued per TCP connection before it is considered stuck and closed.
const TCP_QUEUE: usize = 256;

/// Where a message came from / goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    Udp(SocketAddr),
    Tcp { conn: u64, addr: SocketAddr },
}

impl Peer {
    pub fn addr(&self) -> SocketAddr {
        match *self {
            Peer::Udp(a) | Peer::Tcp { addr: a, .. } => a,
        }
    }
    pub fn transport(&self) -> &'static str {
        match self {
            Peer::Udp(_) => "udp",
            Peer::Tcp { .. } => "tcp",
        }
    }
    pub fn is_reliable(&self) -> bool {
        matches!(self, Peer::Tcp { .. })
    }
}

#[derive(Debug)]
pub enum NetEvent {
    Message {
        data: Bytes,
        peer: Peer,
    },
    /// A TCP stream could not be framed; the connection was closed.
    Malformed {
        peer: Peer,
        reason: String,
    },
    Closed {
        conn: u64,
    },
}

type ConnMap = HashMap<u64, (SocketAddr, mpsc::Sender<Bytes>)>;

/// The sending side, shared by the core.
#[derive(Clone)]
pub struct Transports {
    udp: Arc<UdpSocket>,
    conns: Arc<Mutex<ConnMap>>,
    next_conn: Arc<AtomicU64>,
    events: mpsc::Sender<NetEvent>,
}

impl Transports {
    /// Bind UDP and TCP on `addr` (port 0: UDP picks, TCP takes the same port).
    pub async fn bind(
        addr: SocketAddr,
        events: mpsc::Sender<NetEvent>,
    ) -> std::io::Result<(Self, TcpListener)> {
        let udp = UdpSocket::bind(addr).await?;
        let local = udp.local_addr()?;
        let tcp = TcpListener::bind(local).await?;
        Ok((
            Transports {
                udp: Arc::new(udp),
                conns: Arc::new(Mutex::new(HashMap::new())),
                next_conn: Arc::new(AtomicU64::new(1)),
                events,
            },
            tcp,
        ))
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.udp.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    fn conns(&self) -> std::sync::MutexGuard<'_, ConnMap> {
        // A poisoned map only means a task panicked mid-insert; the map itself stays valid.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn tcp_alive(&self, conn: u64) -> bool {
        self.conns().contains_key(&conn)
    }

    /// Send to a peer. TCP: queued on the connection (closed when its queue is full).
    pub async fn send(&self, peer: Peer, data: Bytes) -> Result<(), String> {
        match peer {
            Peer::Udp(a) => {
                self.udp.send_to(&data, a).await.map(|_| ()).map_err(|e| format!("udp send to {a}: {e}"))
            }
            Peer::Tcp { conn, addr } => {
                let tx = self.conns().get(&conn).map(|(_, tx)| tx.clone());
                match tx {
                    Some(tx) => tx.try_send(data).map_err(|e| {
                        self.conns().remove(&conn);
                        format!("tcp {addr} (conn {conn}): {e}")
                    }),
                    None => Err(format!("tcp {addr} (conn {conn}) is closed")),
                }
            }
        }
    }

    fn adopt(&self, stream: TcpStream, addr: SocketAddr) -> Option<Peer> {
        let (tx, rx) = mpsc::channel(TCP_QUEUE);
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        {
            let mut m = self.conns();
            if m.len() >= MAX_TCP_CONNS {
                return None;
            }
            m.insert(conn, (addr, tx));
        }
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        tokio::spawn(write_loop(wr, rx));
        let me = self.clone();
        tokio::spawn(async move {
            me.read_loop(rd, conn, addr).await;
            me.conns().remove(&conn);
            let _ = me.events.send(NetEvent::Closed { conn }).await;
        });
        Some(Peer::Tcp { conn, addr })
    }

    async fn read_loop(&self, mut rd: tokio::net::tcp::OwnedReadHalf, conn: u64, addr: SocketAddr) {
        let mut framer = StreamFramer::new();
        let mut buf = vec![0u8; 16 * 1024];
        let peer = Peer::Tcp { conn, addr };
        loop {
            let n = match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            framer.push(&buf[..n]);
            loop {
                match framer.next_message() {
                    Ok(Some(data)) => {
                        if self.events.send(NetEvent::Message { data, peer }).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = self.events.send(NetEvent::Malformed { peer, reason: e.to_string() }).await;
                        return;
                    }
                }
            }
            if !self.conns().contains_key(&conn) {
                return; // closed by the sender side (queue overflow)
            }
        }
    }

    /// Run the UDP receive loop and the TCP accept loop until the event receiver is gone.
    pub async fn run(self, tcp: TcpListener) {
        let me = self.clone();
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                match me.udp.recv_from(&mut buf).await {
                    Ok((n, src)) => {
                        let data = Bytes::copy_from_slice(&buf[..n]);
                        if me.events.send(NetEvent::Message { data, peer: Peer::Udp(src) }).await.is_err() {
                            return;
                        }
                    }
                    // ICMP port unreachable surfaces as an error on some platforms: keep going.
                    Err(_) => tokio::task::yield_now().await,
                }
            }
        });
        loop {
            tokio::select! {
                acc = tcp.accept() => {
                    if let Ok((s, addr)) = acc {
                        if self.adopt(s, addr).is_none() {
                            crate::metrics::metrics().sip_malformed.get_or_create(&crate::metrics::reason("tcp_conn_limit")).inc();
                        }
                    }
                }
                _ = self.events.closed() => break,
            }
        }
        udp_task.abort();
    }
}

async fn write_loop(mut wr: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>) {
    while let Some(b) = rx.recv().await {
        if wr.write_all(&b).await.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}
