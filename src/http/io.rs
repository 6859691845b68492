//! The connection wrapper that disconnects stuck readers.
//!
//! What belongs here: [`StallGuardListener`] (accepts, sets `TCP_NODELAY`), [`StallGuardIo`],
//! whose writes fail with `TimedOut` once the socket has accepted no byte for the stall timeout,
//! and [`PeerAddr`], the connection's remote address as handlers see it.
//! hyper stops polling a viewer's body while its socket is full, so the body itself cannot notice
//! that a viewer is stuck; the socket can. Nothing HTTP-specific lives here.
//!
//! A stuck viewer costs only its cursor meanwhile: the ring is bounded and trims past it
//! (`hub/ring.rs`).

use crate::metrics::{metrics, reason};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;

/// A TCP listener whose connections are [`StallGuardIo`].
pub struct StallGuardListener {
    inner: TcpListener,
    timeout: Duration,
}

impl StallGuardListener {
    pub fn new(inner: TcpListener, timeout: Duration) -> Self {
        StallGuardListener { inner, timeout }
    }
}

impl axum::serve::Listener for StallGuardListener {
    type Io = StallGuardIo;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((s, a)) => {
                    // Small tags must leave at once (time to first frame); writes are batched
                    // by the hub anyway.
                    let _ = s.set_nodelay(true);
                    return (StallGuardIo { inner: s, timeout: self.timeout, stall: None }, a);
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// The remote address of a connection accepted by [`StallGuardListener`], put into each request's
/// extensions by [`serve_with`](super::serve_with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// A TCP stream whose writes time out when blocked for too long.
pub struct StallGuardIo {
    inner: TcpStream,
    timeout: Duration,
    /// Armed while a write is pending.
    stall: Option<Pin<Box<Sleep>>>,
}

impl StallGuardIo {
    fn on_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let timeout = self.timeout;
        let sleep = self.stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.stall = None;
                metrics().viewer_drops.get_or_create(&reason("stuck")).inc();
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("peer accepted no data for {timeout:?}"),
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

use std::future::Future;

impl AsyncRead for StallGuardIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallGuardIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.on_pending(cx),
            ready => {
                self.stall = None;
                ready
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.on_pending(cx),
            ready => {
                self.stall = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
