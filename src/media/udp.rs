//! UDP receive: the shared port demultiplexed by SSRC, pool ports (one socket per stream), and the
//! per-stream reorder task. Also the binding helpers used for every port.
//!
//! Belongs here: socket loops and the glue from datagrams to [`Ordered`]. Does not belong here:
//! RTP validation and reordering logic (pure, in `proto::rtp`), TCP (in `tcp.rs`).

use super::{dropped, Inner, MediaError, Ordered, Session, ROUTING_LOG};
use crate::config::Transport;
use crate::metrics::{metrics, transport};
use crate::proto::rtp::{parse, RtpPacket};
use bytes::Bytes;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio::sync::mpsc;

/// Largest UDP datagram.
const DATAGRAM_MAX: usize = 65536;
/// Packets taken from a stream queue before the window is drained.
const BATCH: usize = 64;

/// A socket a stream owns.
pub(crate) enum Bound {
    Udp(UdpSocket),
    Tcp(TcpListener),
}

fn bind_err(proto: &'static str, addr: SocketAddr) -> impl FnOnce(std::io::Error) -> MediaError {
    move |source| MediaError::Bind { proto, addr, source }
}

fn tcp_listener(addr: SocketAddr) -> Result<TcpListener, MediaError> {
    let sock = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
        .map_err(bind_err("tcp", addr))?;
    // Restarts must not wait for TIME_WAIT connections of the previous run.
    sock.set_reuseaddr(true).map_err(bind_err("tcp", addr))?;
    sock.bind(addr).map_err(bind_err("tcp", addr))?;
    sock.listen(1024).map_err(bind_err("tcp", addr))
}

static RCVBUF_LOG: crate::metrics::LogLimiter = crate::metrics::LogLimiter::new(1);

/// A UDP socket with SO_RCVBUF set to `rcvbuf` bytes (0: the kernel's default). A smaller grant
/// than asked (capped by `net.core.rmem_max`) is logged, rate-limited, and the socket is used.
fn udp_socket(addr: SocketAddr, rcvbuf: usize) -> Result<UdpSocket, MediaError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(bind_err("udp", addr))?;
    if rcvbuf > 0 {
        let granted = sock.set_recv_buffer_size(rcvbuf).and_then(|()| sock.recv_buffer_size());
        // Linux reports twice the value it accounts (socket(7)): compare with half of it.
        match granted {
            Ok(g) if g / 2 >= rcvbuf => {}
            Ok(g) => {
                if RCVBUF_LOG.allow() {
                    tracing::warn!(
                        asked = rcvbuf,
                        granted = g / 2,
                        "UDP receive buffer capped by the kernel: raise net.core.rmem_max, or bursts drop packets"
                    );
                }
            }
            Err(e) => {
                if RCVBUF_LOG.allow() {
                    tracing::warn!("cannot set the UDP receive buffer: {e}");
                }
            }
        }
    }
    sock.set_nonblocking(true)
        .and_then(|()| sock.bind(&addr.into()))
        .and_then(|()| UdpSocket::from_std(sock.into()))
        .map_err(bind_err("udp", addr))
}

/// Bind the shared UDP socket and the TCP listener on the same port (`port` 0: the UDP socket's
/// port, retried a few times if TCP finds it taken).
pub(crate) async fn bind_shared_pair(
    ip: IpAddr,
    port: u16,
    rcvbuf: usize,
) -> Result<(UdpSocket, TcpListener), MediaError> {
    let mut last_err = None;
    for _ in 0..8 {
        let addr = SocketAddr::new(ip, port);
        let udp = udp_socket(addr, rcvbuf)?;
        let actual = udp.local_addr().map_err(bind_err("udp", addr))?;
        match tcp_listener(actual) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if port == 0 => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.expect("the loop ran and failed"))
}

/// Bind a stream's own port for its transport (UDP socket or TCP listener).
pub(crate) async fn bind_one(
    ip: IpAddr,
    port: u16,
    t: Transport,
    rcvbuf: usize,
) -> Result<Bound, MediaError> {
    let addr = SocketAddr::new(ip, port);
    match t {
        Transport::Udp => Ok(Bound::Udp(udp_socket(addr, rcvbuf)?)),
        _ => Ok(Bound::Tcp(tcp_listener(addr)?)),
    }
}

/// Parse a datagram; malformed ones and RTCP are dropped (counted by the caller via the result).
pub(crate) enum Parsed {
    Rtp(RtpPacket),
    Rtcp,
    Bad(crate::proto::rtp::RtpError),
}

pub(crate) fn classify(data: Bytes) -> Parsed {
    match parse(data) {
        // RFC 5761 §4: RTCP packet types 200–204 read as RTP payload types 72–76 with the marker.
        Ok(p) if (72..=76).contains(&p.payload_type) => Parsed::Rtcp,
        Ok(p) => Parsed::Rtp(p),
        Err(e) => Parsed::Bad(e),
    }
}

fn now_std() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// The shared UDP port: parse, route by SSRC to the stream's queue.
pub(crate) async fn shared_udp_loop(inner: Arc<Inner>, sock: UdpSocket) {
    let label = transport(Transport::Udp.as_str());
    let in_bytes = metrics().ingress_bytes.get_or_create(&label).clone();
    let in_packets = metrics().ingress_packets.get_or_create(&label).clone();
    loop {
        let (data, from) = match recv_datagram(&sock).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("shared UDP receive error: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let n = data.len();
        in_bytes.inc_by(n as u64);
        in_packets.inc();
        let pkt = match classify(data) {
            Parsed::Rtp(p) => p,
            Parsed::Rtcp => continue,
            Parsed::Bad(e) => {
                dropped("malformed");
                if super::MALFORMED_LOG.allow() {
                    tracing::warn!(%from, "dropped malformed RTP on the shared UDP port: {e}");
                }
                continue;
            }
        };
        // Route under the read lock: no clone of the route per packet.
        let unrouted = {
            let routes = inner.udp_routes.read().expect("routes lock");
            match routes.get(&pkt.ssrc) {
                Some(r) => {
                    r.session.count_packet(pkt.ssrc, n);
                    if r.tx.try_send((now_std(), pkt)).is_err() {
                        // The stream task is behind: the window will see this packet as lost.
                        r.session.counters.overflow.fetch_add(1, Relaxed);
                        dropped("queue_full");
                    }
                    None
                }
                None => Some(pkt),
            }
        };
        match unrouted {
            None => {}
            Some(pkt) if inner.ssrc_resting(pkt.ssrc) => dropped("quarantined_ssrc"),
            Some(pkt) => {
                dropped("unknown_ssrc");
                metrics().ssrc_mismatches.inc();
                if ROUTING_LOG.allow() {
                    tracing::info!(%from, ssrc = pkt.ssrc, seq = pkt.seq, "RTP with unknown SSRC on the shared UDP port");
                }
            }
        }
    }
}

/// Sleep until `deadline`, or forever.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A shared-UDP stream: packets from the demux queue through the reorder window to the consumer.
pub(crate) async fn stream_task(s: Arc<Session>, mut rx: mpsc::Receiver<(std::time::Instant, RtpPacket)>) {
    let mut o = Ordered::new(s.reorder_depth, s.reorder_wait);
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some((t, p)) => {
                    o.push(t, p);
                    for _ in 1..BATCH {
                        match rx.try_recv() {
                            Ok((t, p)) => o.push(t, p),
                            Err(_) => break,
                        }
                    }
                }
                None => return,
            },
            _ = sleep_until(o.deadline()) => {}
        }
        o.drain(now_std(), &s);
    }
}

thread_local! {
    /// One datagram-sized receive buffer per worker thread, shared by every UDP receive task on
    /// it (a 64 KiB buffer per pool-port stream would be a tenth of a stream's memory).
    static RECV_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0u8; DATAGRAM_MAX]);
}

/// Receive one datagram into the thread's buffer and copy it out at its size (the shared port
/// and every pool port).
async fn recv_datagram(sock: &UdpSocket) -> std::io::Result<(Bytes, SocketAddr)> {
    loop {
        sock.readable().await?;
        let r = RECV_BUF.with_borrow_mut(|buf| {
            sock.try_recv_from(buf).map(|(n, from)| (Bytes::copy_from_slice(&buf[..n]), from))
        });
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

/// A pool UDP port: every datagram belongs to this stream, whatever its SSRC.
pub(crate) async fn pool_udp_task(s: Arc<Session>, sock: UdpSocket) {
    let label = transport(Transport::Udp.as_str());
    let in_bytes = metrics().ingress_bytes.get_or_create(&label).clone();
    let in_packets = metrics().ingress_packets.get_or_create(&label).clone();
    let mut o = Ordered::new(s.reorder_depth, s.reorder_wait);
    loop {
        tokio::select! {
            r = recv_datagram(&sock) => match r {
                Ok((data, from)) => {
                    let n = data.len();
                    in_bytes.inc_by(n as u64);
                    in_packets.inc();
                    match classify(data) {
                        Parsed::Rtp(p) => {
                            s.count_packet(p.ssrc, n);
                            o.push(now_std(), p);
                        }
                        Parsed::Rtcp => {}
                        Parsed::Bad(e) => s.count_malformed("malformed", &e, Some(from)),
                    }
                }
                Err(e) => {
                    tracing::warn!(stream = %s.label, "UDP receive error: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = sleep_until(o.deadline()) => {}
        }
        o.drain(now_std(), &s);
    }
}
