//! A media-only source: streams a PS file over RTP to a receiver with no SIP at all, for the gateway's
//! media-only receivers (`POST /api/v1/rtp`) and the load harness. Same sender as the simulated device
//! ([`super::rtp::run_stream`]); nothing about SIP or dialogs belongs here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, UdpSocket};
use tokio::task::JoinHandle;

use super::rtp::{self, RtpCounters, Sink, StreamParams};
use super::MediaTransport;

/// What to send and where.
#[derive(Debug, Clone)]
pub struct MediaSourceConfig {
    pub media_file: PathBuf,
    /// Named from the receiver's side, like the gateway's config: `Udp` sends to `peer`; `TcpPassive`
    /// (the receiver listens) connects to `peer`; `TcpActive` (the receiver connects) listens on
    /// `peer` (port 0 picks one; see [`MediaSource::local_addr`]) and sends to the first connection.
    pub transport: MediaTransport,
    pub peer: SocketAddr,
    pub ssrc: u32,
    /// Local bind address for UDP / outgoing TCP (port 0 is fine).
    pub local: SocketAddr,
    pub loss: f64,
    pub reorder: f64,
    pub seed: u64,
}

impl MediaSourceConfig {
    /// A loss-free source on 127.0.0.1: `peer` and `local` are `127.0.0.1:0` (set `peer` for
    /// UDP and TCP passive; TCP active listens on it).
    pub fn loopback(media_file: PathBuf, transport: MediaTransport, ssrc: u32) -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        MediaSourceConfig {
            media_file,
            transport,
            peer: any,
            ssrc,
            local: any,
            loss: 0.0,
            reorder: 0.0,
            seed: 1,
        }
    }
}

/// Counters of one source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaSourceStats {
    pub packets: u64,
    pub bytes: u64,
    pub dropped: u64,
    pub reordered: u64,
}

/// A running source; dropping it stops the stream.
pub struct MediaSource {
    task: JoinHandle<std::io::Result<()>>,
    counters: Arc<RtpCounters>,
    local: SocketAddr,
}

impl MediaSource {
    /// Loads the file (shared cache), binds, and starts sending in a background task. For UDP and TCP
    /// passive the first packet leaves at once (TCP: once connected); for TCP active once a receiver
    /// has connected (within 30 s).
    pub async fn start(cfg: MediaSourceConfig) -> std::io::Result<MediaSource> {
        let file = super::load_media(&cfg.media_file)?;
        let counters = Arc::new(RtpCounters::default());
        let params = StreamParams {
            ssrc: cfg.ssrc,
            first_seq: rand::random::<u16>() & 0x7fff,
            seed: cfg.seed,
            loss: if cfg.transport == MediaTransport::Udp { cfg.loss } else { 0.0 },
            reorder: if cfg.transport == MediaTransport::Udp { cfg.reorder } else { 0.0 },
        };
        let c2 = counters.clone();
        let (local, task) = match cfg.transport {
            MediaTransport::Udp => {
                let s = UdpSocket::bind(cfg.local).await?;
                s.connect(cfg.peer).await?;
                let local = s.local_addr()?;
                (local, tokio::spawn(rtp::run_stream(file, Sink::Udp(s), params, c2)))
            }
            MediaTransport::TcpPassive => {
                let s = if cfg.peer.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
                s.bind(cfg.local)?;
                let t = s.connect(cfg.peer).await?;
                t.set_nodelay(true)?;
                let local = t.local_addr()?;
                (local, tokio::spawn(rtp::run_stream(file, Sink::Tcp(t), params, c2)))
            }
            MediaTransport::TcpActive => {
                let l = TcpListener::bind(cfg.peer).await?;
                let local = l.local_addr()?;
                let task = tokio::spawn(async move {
                    let (t, _) =
                        tokio::time::timeout(Duration::from_secs(30), l.accept()).await.map_err(|_| {
                            std::io::Error::new(std::io::ErrorKind::TimedOut, "no receiver connected")
                        })??;
                    t.set_nodelay(true)?;
                    rtp::run_stream(file, Sink::Tcp(t), params, c2).await
                });
                (local, task)
            }
        };
        Ok(MediaSource { task, counters, local })
    }

    /// The local address: the UDP/TCP source address, or where a TCP-active receiver must connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn stats(&self) -> MediaSourceStats {
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        MediaSourceStats {
            packets: g(&self.counters.packets),
            bytes: g(&self.counters.bytes),
            dropped: g(&self.counters.dropped),
            reordered: g(&self.counters.reordered),
        }
    }

    /// True once the stream has ended (a TCP receiver closed the connection, or no receiver came).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for MediaSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}
