//! The simulator's RTP sender: packetises PS units into RTP (RFC 3550 §5.1 fixed header, PT 96 = PS per
//! GB/T 28181 Annex C, 90 kHz clock, marker on the last packet of a unit), injects loss and reordering
//! on UDP from a seeded RNG, frames packets for TCP with the RFC 4571 2-byte length, and paces a
//! [`PsFile`] at real time, looping with a continuing clock. Independent of `crate::proto::rtp`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use super::ps::PsFile;

/// Largest RTP payload the simulator sends (keeps a packet under a 1500-byte MTU).
pub const MAX_PAYLOAD: usize = 1400;

/// RTP header writer with a running sequence number.
#[derive(Debug)]
pub struct Packetizer {
    pub seq: u16,
    pub ssrc: u32,
    pub payload_type: u8,
    pub max_payload: usize,
}

impl Packetizer {
    pub fn new(ssrc: u32, first_seq: u16) -> Self {
        Packetizer { seq: first_seq, ssrc, payload_type: 96, max_payload: MAX_PAYLOAD }
    }

    /// Splits `unit` into RTP packets with timestamp `ts`; the marker bit is set on the last one.
    pub fn packetize(&mut self, unit: &[u8], ts: u32, out: &mut Vec<Bytes>) {
        let n = unit.len().div_ceil(self.max_payload).max(1);
        for (i, chunk) in unit.chunks(self.max_payload).enumerate() {
            let mut b = BytesMut::with_capacity(12 + chunk.len());
            b.put_u8(0x80); // V=2, P=0, X=0, CC=0
            let marker = if i + 1 == n { 0x80 } else { 0 };
            b.put_u8(marker | (self.payload_type & 0x7f));
            b.put_u16(self.seq);
            b.put_u32(ts);
            b.put_u32(self.ssrc);
            b.put_slice(chunk);
            self.seq = self.seq.wrapping_add(1);
            out.push(b.freeze());
        }
    }
}

/// Loss and reordering injection: each packet is dropped with probability `loss`; otherwise with
/// probability `reorder` it is held back and sent right after the next packet (a swap).
#[derive(Debug)]
pub struct Injector {
    rng: StdRng,
    loss: f64,
    reorder: f64,
    held: Option<Bytes>,
    pub dropped: u64,
    pub reordered: u64,
}

impl Injector {
    pub fn new(seed: u64, loss: f64, reorder: f64) -> Self {
        Injector {
            rng: StdRng::seed_from_u64(seed),
            loss: loss.clamp(0.0, 1.0),
            reorder: reorder.clamp(0.0, 1.0),
            held: None,
            dropped: 0,
            reordered: 0,
        }
    }

    pub fn process(&mut self, pkt: Bytes, out: &mut Vec<Bytes>) {
        if self.loss > 0.0 && self.rng.gen::<f64>() < self.loss {
            self.dropped += 1;
            return;
        }
        if let Some(h) = self.held.take() {
            out.push(pkt);
            out.push(h);
            return;
        }
        if self.reorder > 0.0 && self.rng.gen::<f64>() < self.reorder {
            self.reordered += 1;
            self.held = Some(pkt);
            return;
        }
        out.push(pkt);
    }
}

/// Counters a stream updates (shared with the simulator's stats).
#[derive(Debug, Default)]
pub struct RtpCounters {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    pub dropped: AtomicU64,
    pub reordered: AtomicU64,
}

/// Where a stream's packets go.
pub enum Sink {
    /// A UDP socket connected to the server's media address.
    Udp(UdpSocket),
    /// A TCP connection (either direction of setup), RFC 4571 framing.
    Tcp(TcpStream),
}

/// Parameters of one stream.
pub struct StreamParams {
    pub ssrc: u32,
    pub first_seq: u16,
    pub seed: u64,
    pub loss: f64,
    pub reorder: f64,
}

/// Sends `file` forever at the pace of its pack SCRs, looping with continuing sequence numbers and
/// timestamps. Returns only on a TCP write error (UDP send errors, e.g. ICMP port unreachable, are
/// ignored as a device would). Loss/reorder injection applies to UDP only.
pub async fn run_stream(
    file: Arc<PsFile>,
    mut sink: Sink,
    p: StreamParams,
    c: Arc<RtpCounters>,
) -> std::io::Result<()> {
    let mut pk = Packetizer::new(p.ssrc, p.first_seq);
    let mut inj = Injector::new(p.seed, p.loss, p.reorder);
    let start = Instant::now();
    let mut pkts = Vec::with_capacity(64);
    let mut wire = Vec::with_capacity(64);
    let mut tcp_buf = BytesMut::with_capacity(64 * 1024);
    for pass in 0u64.. {
        for i in 0..file.units.len() {
            let due = pass.saturating_mul(file.loop_duration).saturating_add(file.units[i].pace);
            let at = start + Duration::from_micros(due.saturating_mul(1000) / 90);
            tokio::time::sleep_until(at).await;
            let data = file.unit_bytes(i, pass);
            pkts.clear();
            pk.packetize(&data, file.rtp_timestamp(i, pass), &mut pkts);
            match &mut sink {
                Sink::Udp(sock) => {
                    wire.clear();
                    let (d0, r0) = (inj.dropped, inj.reordered);
                    for pkt in pkts.drain(..) {
                        inj.process(pkt, &mut wire);
                    }
                    c.dropped.fetch_add(inj.dropped - d0, Ordering::Relaxed);
                    c.reordered.fetch_add(inj.reordered - r0, Ordering::Relaxed);
                    for pkt in wire.drain(..) {
                        if sock.send(&pkt).await.is_ok() {
                            c.packets.fetch_add(1, Ordering::Relaxed);
                            c.bytes.fetch_add(pkt.len() as u64, Ordering::Relaxed);
                        }
                    }
                }
                Sink::Tcp(stream) => {
                    tcp_buf.clear();
                    let mut n = 0u64;
                    for pkt in pkts.drain(..) {
                        // RFC 4571 §2: 16-bit length, then the RTP packet.
                        tcp_buf.put_u16(pkt.len() as u16);
                        tcp_buf.put_slice(&pkt);
                        n += 1;
                    }
                    stream.write_all(&tcp_buf).await?;
                    c.packets.fetch_add(n, Ordering::Relaxed);
                    c.bytes.fetch_add(tcp_buf.len() as u64 - 2 * n, Ordering::Relaxed);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packetizer_splits_at_1400_and_marks_the_last_packet() {
        let mut p = Packetizer::new(0x01020304, 65535);
        let unit = vec![7u8; 3000];
        let mut out = Vec::new();
        p.packetize(&unit, 90_000, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].len(), 12 + 1400);
        assert_eq!(out[2].len(), 12 + 200);
        assert_eq!(&out[0][..2], &[0x80, 96]);
        assert_eq!(out[2][1], 0x80 | 96);
        assert_eq!(u16::from_be_bytes([out[0][2], out[0][3]]), 65535);
        assert_eq!(u16::from_be_bytes([out[1][2], out[1][3]]), 0, "sequence wraps");
        assert_eq!(u32::from_be_bytes([out[1][4], out[1][5], out[1][6], out[1][7]]), 90_000);
        assert_eq!(u32::from_be_bytes([out[1][8], out[1][9], out[1][10], out[1][11]]), 0x01020304);
        let total: usize = out.iter().map(|b| b.len() - 12).sum();
        assert_eq!(total, 3000);
    }

    #[test]
    fn injector_rates_follow_the_configured_probabilities_and_the_seed() {
        let run = |seed| {
            let mut inj = Injector::new(seed, 0.01, 0.02);
            let mut out = Vec::new();
            for i in 0..100_000u32 {
                inj.process(Bytes::copy_from_slice(&i.to_be_bytes()), &mut out);
            }
            (inj.dropped, inj.reordered, out)
        };
        let (d, r, out) = run(7);
        assert!((800..1200).contains(&d), "dropped {d}");
        assert!((1600..2400).contains(&r), "reordered {r}");
        // Every packet not dropped is sent exactly once (the last one may still be held).
        assert!(out.len() as u64 >= 100_000 - d - 1);
        let (d2, r2, out2) = run(7);
        assert_eq!((d, r), (d2, r2));
        assert_eq!(out, out2);
    }
}
