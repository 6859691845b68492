//! RTP sources: each sends the shared [`Schedule`] at real-time pace from its own socket.
//!
//! Belongs here: the RTP fixed header per source (RFC 3550 §5.1: V=2, PT 96 as GB/T 28181 assigns
//! to PS, its own SSRC and sequence numbers), UDP sending, TCP with RFC 4571 §2 framing (a 16-bit
//! length before each packet), both connecting to the gateway (TCP passive on the gateway's side)
//! and listening for it (TCP active on the gateway's side), and the counters a report needs. Does
//! not belong: packetising (`schedule.rs`, done once and shared), opening the receiver (`gateway.rs`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio::time::Instant;

use super::schedule::{Packet, Schedule};

/// RTP payload type the harness sends (GB/T 28181: 96 = PS/90000).
pub const PT_PS: u8 = 96;

/// Where and how a source sends.
#[derive(Debug)]
pub enum Target {
    Udp(SocketAddr),
    /// Connect to the gateway's TCP port (gateway side: TCP passive).
    TcpConnect(SocketAddr),
    /// Wait for the gateway to connect (gateway side: TCP active).
    TcpListen(TcpListener),
}

/// Counters and instants shared with the harness.
#[derive(Debug, Default)]
pub struct SourceStats {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    pub send_errors: AtomicU64,
    /// When unit 0 of the schedule was due (the stream's time origin).
    pub started: OnceLock<Instant>,
    /// When the last packet of the first keyframe left the socket.
    pub first_key_sent: OnceLock<Instant>,
    pub error: OnceLock<String>,
}

/// Write the 12-byte RTP fixed header (RFC 3550 §5.1) followed by the payload into `out`.
pub fn write_rtp(out: &mut Vec<u8>, p: &Packet, seq: u16, ssrc: u32) {
    out.push(0x80); // V=2, P=0, X=0, CC=0
    out.push(if p.marker { 0x80 | PT_PS } else { PT_PS });
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&p.ts.to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(&p.payload);
}

/// Append one RFC 4571 frame (16-bit big-endian length, then the RTP packet).
pub fn write_rfc4571(out: &mut Vec<u8>, p: &Packet, seq: u16, ssrc: u32) {
    let len = (12 + p.payload.len()) as u16;
    out.extend_from_slice(&len.to_be_bytes());
    write_rtp(out, p, seq, ssrc);
}

enum Sock {
    Udp(UdpSocket, SocketAddr),
    Tcp(TcpStream),
}

/// Send the schedule from `start` until `end` (or until `stop` turns true).
pub async fn run(
    sched: Arc<Schedule>,
    target: Target,
    ssrc: u32,
    start: Instant,
    end: Instant,
    stats: Arc<SourceStats>,
    mut stop: watch::Receiver<bool>,
) {
    let fail = |stats: &SourceStats, e: String| {
        let _ = stats.error.set(e);
    };
    let mut sock = match target {
        Target::Udp(addr) => match UdpSocket::bind("127.0.0.1:0").await {
            Ok(s) => Sock::Udp(s, addr),
            Err(e) => return fail(&stats, format!("bind UDP: {e}")),
        },
        Target::TcpConnect(addr) => {
            tokio::time::sleep_until(start).await;
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    Sock::Tcp(s)
                }
                Err(e) => return fail(&stats, format!("connect to {addr}: {e}")),
            }
        }
        Target::TcpListen(l) => match tokio::time::timeout(Duration::from_secs(10), l.accept()).await {
            Ok(Ok((s, _))) => {
                let _ = s.set_nodelay(true);
                Sock::Tcp(s)
            }
            Ok(Err(e)) => return fail(&stats, format!("accept the gateway's connection: {e}")),
            Err(_) => return fail(&stats, "the gateway did not connect within 10 s (TCP active)".into()),
        },
    };
    let start = start.max(Instant::now());
    let _ = stats.started.set(start);
    let mut seq: u16 = (ssrc as u16).wrapping_mul(7919);
    let mut buf = Vec::with_capacity(64 * 1024);
    for unit in &sched.units {
        let due = start + unit.at;
        if due > end || *stop.borrow() {
            break;
        }
        if due > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = stop.changed() => break,
            }
        }
        let pkts = &sched.packets[unit.first..unit.first + unit.count];
        let mut sent_bytes = 0u64;
        match &mut sock {
            Sock::Udp(s, addr) => {
                for p in pkts {
                    buf.clear();
                    write_rtp(&mut buf, p, seq, ssrc);
                    seq = seq.wrapping_add(1);
                    match s.send_to(&buf, *addr).await {
                        Ok(n) => sent_bytes += n as u64,
                        Err(_) => {
                            stats.send_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            Sock::Tcp(s) => {
                buf.clear();
                for p in pkts {
                    write_rfc4571(&mut buf, p, seq, ssrc);
                    seq = seq.wrapping_add(1);
                }
                if let Err(e) = s.write_all(&buf).await {
                    return fail(&stats, format!("TCP send: {e}"));
                }
                sent_bytes += buf.len() as u64;
            }
        }
        stats.packets.fetch_add(pkts.len() as u64, Ordering::Relaxed);
        stats.bytes.fetch_add(sent_bytes, Ordering::Relaxed);
        if unit.keyframe.is_some() {
            let _ = stats.first_key_sent.set(Instant::now());
        }
    }
    if let Sock::Tcp(mut s) = sock {
        let _ = s.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn rtp_header_fields() {
        let p = Packet { payload: Bytes::from_static(b"\x00\x00\x01\xba"), ts: 0x0102_0304, marker: true };
        let mut out = Vec::new();
        write_rtp(&mut out, &p, 0xABCD, 0x1122_3344);
        assert_eq!(out, [0x80, 0x80 | 96, 0xAB, 0xCD, 1, 2, 3, 4, 0x11, 0x22, 0x33, 0x44, 0, 0, 1, 0xba]);
        let mut framed = Vec::new();
        let p2 = Packet { marker: false, ..p };
        write_rfc4571(&mut framed, &p2, 1, 2);
        assert_eq!(&framed[..2], &[0, 16], "RFC 4571 length covers header + payload");
        assert_eq!(framed[3], 96, "no marker");
    }

    #[tokio::test]
    async fn udp_source_sends_the_schedule_in_order_at_pace() {
        let data = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/h264_aac.ps")).unwrap();
        let sched = Arc::new(Schedule::build(&data, 1).unwrap());
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = rx.local_addr().unwrap();
        let stats = Arc::new(SourceStats::default());
        let (_tx, stop) = watch::channel(false);
        let start = Instant::now();
        // 300 ms of the schedule: units due in [0, 300 ms].
        let h = tokio::spawn(run(
            sched.clone(),
            Target::Udp(addr),
            42,
            start,
            start + Duration::from_millis(300),
            stats.clone(),
            stop,
        ));
        let expected: usize =
            sched.units.iter().take_while(|u| u.at <= Duration::from_millis(300)).map(|u| u.count).sum();
        let mut buf = vec![0u8; 2048];
        let mut last_seq = None;
        for i in 0..expected {
            let n = tokio::time::timeout(Duration::from_secs(2), rx.recv(&mut buf)).await.unwrap().unwrap();
            assert_eq!(&buf[8..12], &42u32.to_be_bytes());
            let seq = u16::from_be_bytes([buf[2], buf[3]]);
            if let Some(l) = last_seq {
                assert_eq!(seq, u16::wrapping_add(l, 1), "packet {i}");
            }
            last_seq = Some(seq);
            assert_eq!(&buf[12..n], &sched.packets[i].payload[..]);
        }
        h.await.unwrap();
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(280), "paced: {elapsed:?}");
        assert_eq!(stats.packets.load(Ordering::Relaxed), expected as u64);
        assert!(stats.first_key_sent.get().is_some());
    }
}
