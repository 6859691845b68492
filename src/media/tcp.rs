//! TCP receive (RFC 4571 framing): the shared passive port (connections bound to streams by the
//! SSRC of their first packet), pool listeners (one per stream), and active connections.
//!
//! Belongs here: accept / connect / read loops and the binding of a connection to a stream. Does
//! not belong here: the framing and RTP validation themselves (`proto::rtp`), UDP (`udp.rs`).

use super::udp::{classify, Parsed};
use super::{
    dropped, Binding, Inner, MediaError, MediaEvent, Ordered, Session, CONNECT_TIMEOUT, FIRST_PACKET_TIMEOUT,
    MAX_PENDING_CONNECTIONS, MAX_TCP_FRAME, ROUTING_LOG,
};
use crate::config::Transport;
use crate::metrics::{metrics, transport};
use crate::proto::rtp::Deframer;
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Read buffer growth step.
const READ_CHUNK: usize = 16 * 1024;

/// Read a connection to its end: deframe, validate, order (depth 1: gaps reported at once) and
/// deliver. `first` is a frame already taken from `deframer` while identifying the connection.
async fn reader(
    s: Arc<Session>,
    mut stream: TcpStream,
    mut deframer: Deframer,
    first: Option<Bytes>,
    peer: SocketAddr,
) {
    let label = transport(s.transport.as_str());
    let in_bytes = metrics().ingress_bytes.get_or_create(&label).clone();
    let in_packets = metrics().ingress_packets.get_or_create(&label).clone();
    let mut o = Ordered::new(1, Duration::ZERO);
    let frame_in = |frame: Bytes, o: &mut Ordered| {
        in_packets.inc();
        let n = frame.len();
        match classify(frame) {
            Parsed::Rtp(p) => {
                s.count_packet(p.ssrc, n);
                o.push(tokio::time::Instant::now().into_std(), p);
            }
            Parsed::Rtcp => {}
            Parsed::Bad(e) => s.count_malformed("malformed", &e, Some(peer)),
        }
    };
    if let Some(f) = first {
        frame_in(f, &mut o);
    }
    let reason = loop {
        while let Some(r) = deframer.next() {
            match r {
                Ok(f) => frame_in(f, &mut o),
                Err(e) => s.count_malformed("bad_frame_length", &e, Some(peer)),
            }
        }
        o.drain(tokio::time::Instant::now().into_std(), &s);
        let buf = deframer.buffer_mut();
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        match stream.read_buf(buf).await {
            Ok(0) => break format!("peer {peer} closed the connection"),
            Ok(n) => {
                in_bytes.inc_by(n as u64);
            }
            Err(e) => break format!("connection from {peer}: {e}"),
        }
    };
    tracing::info!(stream = %s.label, %peer, "media connection ended: {reason}");
    s.conn_alive.store(false, Relaxed);
    if !s.closed.load(Relaxed) {
        s.emit(MediaEvent::Closed { reason });
    }
}

/// Start the reader of a connection bound to `s` (caller has set `conn_alive`).
fn start_reader(
    s: &Arc<Session>,
    stream: TcpStream,
    deframer: Deframer,
    first: Option<Bytes>,
    peer: SocketAddr,
) {
    s.counters.connections.fetch_add(1, Relaxed);
    let h = tokio::spawn(reader(s.clone(), stream, deframer, first, peer));
    if let Some(old) = s.conn.lock().expect("conn lock").replace(h.abort_handle()) {
        old.abort();
    }
    // A session released meanwhile must not keep a reader.
    if s.closed.load(Relaxed) {
        h.abort();
    }
}

/// Read until the first RTP packet; returns its SSRC and frame with the deframer (holding the
/// rest). Malformed frames and RTCP before it are skipped.
async fn identify(stream: &mut TcpStream) -> std::io::Result<(u32, Bytes, Deframer)> {
    let mut deframer = Deframer::new(MAX_TCP_FRAME);
    loop {
        while let Some(r) = deframer.next() {
            if let Ok(frame) = r {
                if let Parsed::Rtp(p) = classify(frame.clone()) {
                    return Ok((p.ssrc, frame, deframer));
                }
            }
            dropped("malformed");
        }
        let buf = deframer.buffer_mut();
        buf.reserve(READ_CHUNK);
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// The shared TCP passive port: identify each connection by its first packet's SSRC.
pub(crate) async fn shared_tcp_accept(inner: Arc<Inner>, listener: TcpListener) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_CONNECTIONS));
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("shared TCP accept error: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            dropped("too_many_pending_connections");
            continue;
        };
        let inner = inner.clone();
        tokio::spawn(async move {
            let r = tokio::time::timeout(FIRST_PACKET_TIMEOUT, identify(&mut stream)).await;
            drop(permit);
            match r {
                Ok(Ok((ssrc, first, deframer))) => bind_shared(&inner, stream, peer, ssrc, first, deframer),
                Ok(Err(e)) => {
                    dropped("connection_without_rtp");
                    tracing::debug!(%peer, "shared TCP connection ended before its first RTP packet: {e}");
                }
                Err(_) => {
                    dropped("connection_without_rtp");
                    tracing::debug!(%peer, "shared TCP connection sent no RTP in {FIRST_PACKET_TIMEOUT:?}");
                }
            }
        });
    }
}

/// Bind an identified connection to its stream (see the module policy in `media/mod.rs`).
fn bind_shared(
    inner: &Inner,
    stream: TcpStream,
    peer: SocketAddr,
    ssrc: u32,
    first: Bytes,
    deframer: Deframer,
) {
    let st = inner.lock();
    let candidates: Vec<&Arc<Session>> = st
        .sessions
        .values()
        .filter(|s| s.binding == Binding::Shared && s.transport == Transport::TcpPassive)
        .collect();
    let by_ssrc = candidates.iter().find(|s| s.owns_ssrc(ssrc));
    let chosen = match by_ssrc {
        Some(s) if s.conn_alive.load(Relaxed) => {
            dropped("stream_already_connected");
            if ROUTING_LOG.allow() {
                tracing::warn!(%peer, ssrc, stream = %s.label, "second connection for a connected stream refused");
            }
            return;
        }
        Some(s) => (*s).clone(),
        None => {
            let waiting: Vec<&&Arc<Session>> =
                candidates.iter().filter(|s| s.counters.connections.load(Relaxed) == 0).collect();
            if waiting.len() == 1 && !st.ssrcs.is_resting(ssrc) {
                let s = (*waiting[0]).clone();
                // Policy "sole waiting stream": bind it; the packets count as SSRC mismatches.
                tracing::info!(%peer, ssrc, stream = %s.label, offered = ?s.offered, "TCP connection bound to the only waiting stream despite its SSRC");
                s
            } else {
                let why = if st.ssrcs.is_resting(ssrc) { "quarantined_ssrc" } else { "unknown_ssrc" };
                dropped(why);
                metrics().ssrc_mismatches.inc();
                if ROUTING_LOG.allow() {
                    tracing::info!(%peer, ssrc, waiting = waiting.len(), "TCP connection with an SSRC of no stream closed");
                }
                return;
            }
        }
    };
    chosen.conn_alive.store(true, Relaxed);
    drop(st);
    start_reader(&chosen, stream, deframer, Some(first), peer);
}

/// A pool TCP passive port: the stream's connection (one live at a time).
pub(crate) async fn pool_tcp_accept(s: Arc<Session>, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(stream = %s.label, "TCP accept error: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if s.conn_alive.swap(true, Relaxed) {
            dropped("stream_already_connected");
            continue;
        }
        start_reader(&s, stream, Deframer::new(MAX_TCP_FRAME), None, peer);
    }
}

/// TCP active: connect to the device and read.
pub(crate) async fn connect_active(s: &Arc<Session>, peer: SocketAddr) -> Result<(), MediaError> {
    if s.transport != Transport::TcpActive {
        return Err(MediaError::NotActive { label: s.label.clone(), transport: s.transport });
    }
    if s.conn_alive.swap(true, Relaxed) {
        return Err(MediaError::AlreadyConnected { label: s.label.clone() });
    }
    let r = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(peer)).await;
    let stream = match r {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => {
            s.conn_alive.store(false, Relaxed);
            return Err(MediaError::Connect { peer, label: s.label.clone(), source });
        }
        Err(_) => {
            s.conn_alive.store(false, Relaxed);
            return Err(MediaError::ConnectTimeout {
                peer,
                label: s.label.clone(),
                timeout: CONNECT_TIMEOUT,
            });
        }
    };
    start_reader(s, stream, Deframer::new(MAX_TCP_FRAME), None, peer);
    Ok(())
}
