//! Integration tests of `gbrelay::media` on 127.0.0.1: every receive mode (shared UDP by SSRC,
//! answer-SSRC binding, pool UDP with SSRC 0, shared and pool TCP passive, TCP active), the
//! quarantine of ports and SSRCs, and loss / reorder injection over UDP.

use bytes::Bytes;
use gbrelay::config::{MediaConfig, PortRange, Transport};
use gbrelay::media::{
    MediaError, MediaEvent, MediaServer, MediaSession, OpenRequest, PortChoice, EVENT_QUEUE,
};
use gbrelay::proto::rtp::{frame_4571, RtpPacket};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

fn cfg(pool: Option<PortRange>) -> MediaConfig {
    MediaConfig {
        ip: "127.0.0.1".parse().unwrap(),
        rtp_port: 0,
        ports: pool,
        reorder_depth: 16,
        reorder_wait: Duration::from_millis(150),
        quarantine: Duration::from_millis(400),
        ..MediaConfig::default()
    }
}

/// A range of `n` ports that are free for UDP and TCP on 127.0.0.1 right now.
fn free_range(n: u16) -> PortRange {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    'outer: for _ in 0..200 {
        let first: u16 = rng.gen_range(20000..60000);
        let mut held = Vec::new();
        for p in first..first + n {
            let u = std::net::UdpSocket::bind(("127.0.0.1", p));
            let t = std::net::TcpListener::bind(("127.0.0.1", p));
            match (u, t) {
                (Ok(u), Ok(t)) => held.push((u, t)),
                _ => continue 'outer,
            }
        }
        return PortRange { first, last: first + n - 1 };
    }
    panic!("no free port range");
}

fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Bytes {
    RtpPacket::new(96, seq, u32::from(seq) * 3600, ssrc, false, Bytes::copy_from_slice(payload)).encode()
}

async fn next_event(s: &mut MediaSession) -> MediaEvent {
    tokio::time::timeout(Duration::from_secs(5), s.events.recv())
        .await
        .expect("an event within 5 s")
        .expect("events channel open")
}

/// Collect events until `n` payloads came; returns (payloads, total lost reported).
async fn payloads(s: &mut MediaSession, n: usize) -> (Vec<Bytes>, u32) {
    let mut out = Vec::new();
    let mut lost = 0;
    while out.len() < n {
        match next_event(s).await {
            MediaEvent::Payload { data, .. } => out.push(data),
            MediaEvent::Loss { lost: l } => lost += l,
            MediaEvent::Closed { reason } => panic!("closed early: {reason}"),
        }
    }
    (out, lost)
}

async fn no_event(s: &mut MediaSession) {
    let r = tokio::time::timeout(Duration::from_millis(300), s.events.recv()).await;
    assert!(r.is_err(), "expected no event, got {r:?}");
}

fn shared_addr(m: &MediaServer) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], m.shared_port()))
}

fn req(transport: Transport, port: PortChoice, label: &str) -> OpenRequest {
    OpenRequest { transport, port, label: label.into(), ..Default::default() }
}

#[tokio::test]
async fn shared_udp_port_demuxes_two_streams_by_ssrc_and_drops_unknown() {
    let m = MediaServer::start(&cfg(None)).await.unwrap();
    let mut a = m.open(req(Transport::Udp, PortChoice::Shared, "a")).await.unwrap();
    let mut b = m.open(req(Transport::Udp, PortChoice::Shared, "b")).await.unwrap();
    assert_eq!(a.port, m.shared_port());
    let (sa, sb) = (a.ssrc.unwrap(), b.ssrc.unwrap());
    assert_ne!(sa, sb);
    let dev = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..10u16 {
        dev.send_to(&rtp(100 + i, sa, &[b'a', i as u8]), shared_addr(&m)).await.unwrap();
        dev.send_to(&rtp(5000 + i, sb, &[b'b', i as u8]), shared_addr(&m)).await.unwrap();
        dev.send_to(&rtp(i, 0x7777_7777, b"stray"), shared_addr(&m)).await.unwrap();
    }
    let (pa, la) = payloads(&mut a, 10).await;
    let (pb, lb) = payloads(&mut b, 10).await;
    assert_eq!(pa, (0..10u8).map(|i| Bytes::from(vec![b'a', i])).collect::<Vec<_>>());
    assert_eq!(pb, (0..10u8).map(|i| Bytes::from(vec![b'b', i])).collect::<Vec<_>>());
    assert_eq!((la, lb), (0, 0));
    let ca = a.counters.snapshot();
    assert_eq!((ca.packets, ca.ssrc_mismatch, ca.lost), (10, 0, 0));
    let text = gbrelay::metrics::render();
    assert!(text.contains("gbrelay_rtp_dropped_packets_total{reason=\"unknown_ssrc\"}"), "{text}");
}

#[tokio::test]
async fn shared_udp_accepts_answer_ssrc_and_counts_it_as_mismatch() {
    let m = MediaServer::start(&cfg(None)).await.unwrap();
    let mut a = m.open(req(Transport::Udp, PortChoice::Shared, "a")).await.unwrap();
    let other = m.open(req(Transport::Udp, PortChoice::Shared, "other")).await.unwrap();
    let dev = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Before the answer, the device's own SSRC is unknown: dropped.
    dev.send_to(&rtp(1, 0x0bad_cafe, b"early"), shared_addr(&m)).await.unwrap();
    no_event(&mut a).await;
    assert!(a.set_answer_ssrc(0x0bad_cafe));
    // Another stream cannot take an SSRC already routed.
    assert!(!other.set_answer_ssrc(a.ssrc.unwrap()));
    for i in 2..7u16 {
        dev.send_to(&rtp(i, 0x0bad_cafe, &[i as u8]), shared_addr(&m)).await.unwrap();
    }
    let (p, _) = payloads(&mut a, 5).await;
    assert_eq!(p.len(), 5);
    assert_eq!(a.counters.snapshot().ssrc_mismatch, 5);
    assert_eq!(a.counters.snapshot().packets, 5);
}

#[tokio::test]
async fn pool_udp_port_takes_any_ssrc_including_zero() {
    let range = free_range(3);
    let m = MediaServer::start(&cfg(Some(range))).await.unwrap();
    assert_eq!(m.default_port_choice(), PortChoice::Pool);
    let mut a = m.open(req(Transport::Udp, PortChoice::Pool, "a")).await.unwrap();
    let mut b = m.open(req(Transport::Udp, PortChoice::Pool, "b")).await.unwrap();
    assert!(a.port >= range.first && a.port <= range.last);
    assert_ne!(a.port, b.port);
    let dev = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..5u16 {
        dev.send_to(&rtp(i, 0, &[b'a', i as u8]), ("127.0.0.1", a.port)).await.unwrap();
        dev.send_to(&rtp(i, 0, &[b'b', i as u8]), ("127.0.0.1", b.port)).await.unwrap();
    }
    let (pa, _) = payloads(&mut a, 5).await;
    let (pb, _) = payloads(&mut b, 5).await;
    assert_eq!(pa[4], Bytes::from_static(b"a\x04"));
    assert_eq!(pb[4], Bytes::from_static(b"b\x04"));
    assert_eq!(a.counters.snapshot().ssrc_mismatch, 5, "SSRC 0 is not the offered one");
}

#[tokio::test]
async fn pool_udp_drops_malformed_packets_and_counts_them() {
    let m = MediaServer::start(&cfg(Some(free_range(2)))).await.unwrap();
    let mut a = m.open(req(Transport::Udp, PortChoice::Pool, "a")).await.unwrap();
    let dev = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    dev.send_to(b"\x40not rtp at all", ("127.0.0.1", a.port)).await.unwrap();
    dev.send_to(&rtp(1, 5, b"ok"), ("127.0.0.1", a.port)).await.unwrap();
    let (p, _) = payloads(&mut a, 1).await;
    assert_eq!(p[0], Bytes::from_static(b"ok"));
    assert_eq!(a.counters.snapshot().malformed, 1);
}

/// Write `data` to `w` in pieces of irregular sizes, so frames are split across reads.
async fn write_split(w: &mut TcpStream, data: &[u8]) {
    let mut pos = 0;
    let mut step = 1;
    while pos < data.len() {
        let end = (pos + step).min(data.len());
        w.write_all(&data[pos..end]).await.unwrap();
        w.flush().await.unwrap();
        pos = end;
        step = step % 37 + 5;
        tokio::task::yield_now().await;
    }
}

fn framed(seqs: impl Iterator<Item = u16>, ssrc: u32, tag: u8) -> Vec<u8> {
    seqs.flat_map(|i| frame_4571(&rtp(i, ssrc, &[tag; 30])).to_vec()).collect()
}

#[tokio::test]
async fn shared_tcp_passive_binds_each_connection_by_ssrc() {
    let m = MediaServer::start(&cfg(None)).await.unwrap();
    let mut a = m.open(req(Transport::TcpPassive, PortChoice::Shared, "a")).await.unwrap();
    let mut b = m.open(req(Transport::TcpPassive, PortChoice::Shared, "b")).await.unwrap();
    let mut cb = TcpStream::connect(shared_addr(&m)).await.unwrap();
    let mut ca = TcpStream::connect(shared_addr(&m)).await.unwrap();
    write_split(&mut cb, &framed(0..20, b.ssrc.unwrap(), b'b')).await;
    write_split(&mut ca, &framed(0..20, a.ssrc.unwrap(), b'a')).await;
    let (pa, la) = payloads(&mut a, 20).await;
    let (pb, lb) = payloads(&mut b, 20).await;
    assert!(pa.iter().all(|p| p[..] == [b'a'; 30]));
    assert!(pb.iter().all(|p| p[..] == [b'b'; 30]));
    assert_eq!((la, lb), (0, 0));
    assert_eq!(a.counters.snapshot().connections, 1);
    // The peer closing is reported.
    drop(ca);
    match next_event(&mut a).await {
        MediaEvent::Closed { reason } => assert!(reason.contains("closed"), "{reason}"),
        other => panic!("expected Closed, got {other:?}"),
    }
}

#[tokio::test]
async fn shared_tcp_passive_binds_sole_waiting_stream_despite_ssrc_and_counts_mismatch() {
    let m = MediaServer::start(&cfg(None)).await.unwrap();
    let mut a = m.open(req(Transport::TcpPassive, PortChoice::Shared, "a")).await.unwrap();
    let mut c = TcpStream::connect(shared_addr(&m)).await.unwrap();
    write_split(&mut c, &framed(0..5, 0x1234, b'x')).await;
    let (p, _) = payloads(&mut a, 5).await;
    assert_eq!(p.len(), 5);
    assert_eq!(a.counters.snapshot().ssrc_mismatch, 5);
    // A second connection for the same (connected) stream is refused: closed by the gateway.
    let mut c2 = TcpStream::connect(shared_addr(&m)).await.unwrap();
    c2.write_all(&framed(10..12, a.ssrc.unwrap(), b'y')).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), c2.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "refused connection is closed");
    no_event(&mut a).await;
}

#[tokio::test]
async fn shared_tcp_passive_reports_sequence_gap_as_loss() {
    let m = MediaServer::start(&cfg(None)).await.unwrap();
    let mut a = m.open(req(Transport::TcpPassive, PortChoice::Shared, "a")).await.unwrap();
    let mut c = TcpStream::connect(shared_addr(&m)).await.unwrap();
    let seqs = [1u16, 2, 3, 7, 8];
    write_split(&mut c, &framed(seqs.into_iter(), a.ssrc.unwrap(), b'z')).await;
    let (p, lost) = payloads(&mut a, 5).await;
    assert_eq!(p.len(), 5);
    assert_eq!(lost, 3);
    assert_eq!(a.counters.snapshot().lost, 3);
}

#[tokio::test]
async fn pool_tcp_passive_listens_on_the_stream_port() {
    let m = MediaServer::start(&cfg(Some(free_range(2)))).await.unwrap();
    let mut a = m.open(req(Transport::TcpPassive, PortChoice::Pool, "a")).await.unwrap();
    let mut c = TcpStream::connect(("127.0.0.1", a.port)).await.unwrap();
    write_split(&mut c, &framed(65530..=65535, 0, b'p')).await;
    write_split(&mut c, &framed(0..5, 0, b'q')).await;
    let (p, lost) = payloads(&mut a, 11).await;
    assert_eq!(lost, 0, "sequence wrap is not a gap");
    assert_eq!(p[10][0], b'q');
}

#[tokio::test]
async fn tcp_active_connects_to_device_and_reads() {
    let m = MediaServer::start(&cfg(None)).await.unwrap();
    let mut a = m.open(req(Transport::TcpActive, PortChoice::Shared, "a")).await.unwrap();
    let device = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = device.local_addr().unwrap();
    let ssrc = a.ssrc.unwrap();
    let dev = tokio::spawn(async move {
        let (mut c, _) = device.accept().await.unwrap();
        write_split(&mut c, &framed(0..8, ssrc, b'd')).await;
        // Device hangs up.
    });
    a.connect_active(addr).await.unwrap();
    let (p, _) = payloads(&mut a, 8).await;
    assert_eq!(p.len(), 8);
    dev.await.unwrap();
    assert!(matches!(next_event(&mut a).await, MediaEvent::Closed { .. }));
    // Wrong transport is refused.
    let u = m.open(req(Transport::Udp, PortChoice::Shared, "u")).await.unwrap();
    assert!(matches!(u.connect_active(addr).await, Err(MediaError::NotActive { .. })));
}

#[tokio::test]
async fn tcp_active_refused_connection_is_an_error() {
    let m = MediaServer::start(&cfg(None)).await.unwrap();
    let a = m.open(req(Transport::TcpActive, PortChoice::Shared, "a")).await.unwrap();
    // A port nobody listens on.
    let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    assert!(matches!(a.connect_active(addr).await, Err(MediaError::Connect { .. })));
}

#[tokio::test]
async fn released_pool_port_is_not_reused_before_quarantine() {
    let range = free_range(2);
    let m = MediaServer::start(&cfg(Some(range))).await.unwrap();
    let a = m.open(req(Transport::Udp, PortChoice::Pool, "a")).await.unwrap();
    let pa = a.port;
    a.close();
    let b = m.open(req(Transport::Udp, PortChoice::Pool, "b")).await.unwrap();
    assert_ne!(b.port, pa, "the released port rests");
    drop(b);
    let err = m.open(req(Transport::Udp, PortChoice::Pool, "c")).await.err().expect("pool exhausted");
    assert!(matches!(err, MediaError::PoolExhausted { .. }), "{err}");
    assert!(matches!(
        m.open(req(Transport::Udp, PortChoice::Exact(pa), "e")).await.err(),
        Some(MediaError::PortBusy { .. })
    ));
    tokio::time::sleep(Duration::from_millis(450)).await;
    // After the quarantine, ports come back in the order they were released.
    let c = m.open(req(Transport::Udp, PortChoice::Pool, "c")).await.unwrap();
    assert_eq!(c.port, pa);
    assert_eq!(m.active_sessions(), 1);
}

#[tokio::test]
async fn released_ssrc_is_quarantined_and_its_late_packets_dropped() {
    let m = MediaServer::start(&cfg(None)).await.unwrap();
    let r = OpenRequest { ssrc: Some(200_001_234), ..req(Transport::Udp, PortChoice::Shared, "a") };
    let a = m.open(r.clone()).await.unwrap();
    assert_eq!(a.ssrc, Some(200_001_234));
    assert!(matches!(m.open(r.clone()).await.err(), Some(MediaError::SsrcBusy { why: "in use", .. })));
    drop(a);
    assert!(matches!(m.open(r.clone()).await.err(), Some(MediaError::SsrcBusy { why: "in quarantine", .. })));
    // Allocated SSRCs skip it too, and are new.
    let other = m.open(req(Transport::Udp, PortChoice::Shared, "o")).await.unwrap();
    assert_ne!(other.ssrc, Some(200_001_234));
    let dev = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    dev.send_to(&rtp(1, 200_001_234, b"late"), shared_addr(&m)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = gbrelay::metrics::render();
    assert!(text.contains("reason=\"quarantined_ssrc\""), "{text}");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut again = m.open(r).await.unwrap();
    dev.send_to(&rtp(1, 200_001_234, b"new"), shared_addr(&m)).await.unwrap();
    let (p, _) = payloads(&mut again, 1).await;
    assert_eq!(p[0], Bytes::from_static(b"new"));
}

#[tokio::test]
async fn udp_loss_and_reorder_give_ordered_payloads_loss_events_and_counters() {
    let m = MediaServer::start(&cfg(Some(free_range(2)))).await.unwrap();
    let mut a = m.open(req(Transport::Udp, PortChoice::Pool, "a")).await.unwrap();
    let dev = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // 0..100 starting near the wrap; 10, 40, 41 lost; (20,21), (60,61), (80,83) swapped (5 packets
    // arrive after a later one: 20, 60, 81, 82, 80); 50 duplicated.
    let base = 65500u16;
    let mut order: Vec<u16> = (0..100).filter(|i| ![10, 40, 41].contains(i)).collect();
    let swap = |o: &mut Vec<u16>, x: u16, y: u16| {
        let i = o.iter().position(|v| *v == x).unwrap();
        let j = o.iter().position(|v| *v == y).unwrap();
        o.swap(i, j);
    };
    swap(&mut order, 20, 21);
    swap(&mut order, 60, 61);
    swap(&mut order, 80, 83);
    let dup = order.iter().position(|v| *v == 50).unwrap();
    order.insert(dup + 1, 50);
    for i in &order {
        let s = base.wrapping_add(*i);
        dev.send_to(&rtp(s, 0, &i.to_be_bytes()), ("127.0.0.1", a.port)).await.unwrap();
    }
    let (p, lost) = payloads(&mut a, 97).await;
    let got: Vec<u16> = p.iter().map(|b| u16::from_be_bytes([b[0], b[1]])).collect();
    let want: Vec<u16> = (0..100).filter(|i| ![10, 40, 41].contains(i)).collect();
    assert_eq!(got, want);
    assert_eq!(lost, 3);
    let c = a.counters.snapshot();
    assert_eq!((c.lost, c.reordered, c.duplicate, c.late), (3, 5, 1, 0), "{c:?}");
    assert_eq!(c.packets, 98);
}

#[tokio::test]
async fn lagging_consumer_loses_payloads_as_a_counted_loss_not_memory() {
    let m = MediaServer::start(&cfg(Some(free_range(2)))).await.unwrap();
    let mut a = m.open(req(Transport::TcpPassive, PortChoice::Pool, "a")).await.unwrap();
    let mut c = TcpStream::connect(("127.0.0.1", a.port)).await.unwrap();
    let extra = 76u16;
    let n = EVENT_QUEUE as u16 + extra;
    c.write_all(&framed(0..n, 0, b'l')).await.unwrap();
    // Wait until the reader has taken every packet while nobody reads the events.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while a.counters.snapshot().packets < u64::from(n) {
        assert!(tokio::time::Instant::now() < deadline, "reader did not take the packets");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(a.counters.snapshot().overflow, u64::from(extra));
    let (p, lost) = payloads(&mut a, EVENT_QUEUE).await;
    assert_eq!((p.len(), lost), (EVENT_QUEUE, 0));
    // The next payload is preceded by a Loss covering what was dropped.
    c.write_all(&framed(n..n + 1, 0, b'm')).await.unwrap();
    assert_eq!(next_event(&mut a).await, MediaEvent::Loss { lost: u32::from(extra) });
    assert_eq!(
        next_event(&mut a).await,
        MediaEvent::Payload { data: Bytes::from(vec![b'm'; 30]), marker: false }
    );
}

#[tokio::test]
async fn shared_tcp_passive_refuses_unknown_ssrc_when_several_streams_wait() {
    let m = MediaServer::start(&cfg(None)).await.unwrap();
    let mut a = m.open(req(Transport::TcpPassive, PortChoice::Shared, "a")).await.unwrap();
    let mut b = m.open(req(Transport::TcpPassive, PortChoice::Shared, "b")).await.unwrap();
    let mut c = TcpStream::connect(shared_addr(&m)).await.unwrap();
    c.write_all(&framed(0..3, 0x4242, b'u')).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "connection with an SSRC of no stream is closed");
    no_event(&mut a).await;
    no_event(&mut b).await;
    // The answer SSRC identifies a connection too.
    assert!(b.set_answer_ssrc(0x4242));
    let mut c = TcpStream::connect(shared_addr(&m)).await.unwrap();
    c.write_all(&framed(0..3, 0x4242, b'v')).await.unwrap();
    let (p, _) = payloads(&mut b, 3).await;
    assert_eq!(p[0][0], b'v');
    assert_eq!(a.counters.snapshot().connections, 0);
}

#[tokio::test(start_paused = true)]
async fn quarantine_runs_on_the_tokio_clock_and_releases_in_order() {
    // TCP active pool streams hold a pool port without binding it: no IO, so the paused clock is
    // exact.
    let range = free_range(3);
    let m = MediaServer::start(&cfg(Some(range))).await.unwrap();
    let open = || m.open(req(Transport::TcpActive, PortChoice::Pool, "q"));
    let (a, b, c) = (open().await.unwrap(), open().await.unwrap(), open().await.unwrap());
    let (pa, pb) = (a.port, b.port);
    drop(b);
    tokio::time::advance(Duration::from_millis(100)).await;
    drop(a);
    assert!(matches!(open().await.err(), Some(MediaError::PoolExhausted { .. })));
    tokio::time::advance(Duration::from_millis(299)).await;
    assert!(open().await.is_err(), "b rests until 400 ms after its release");
    tokio::time::advance(Duration::from_millis(1)).await;
    let d = open().await.unwrap();
    assert_eq!(d.port, pb, "first released, first back");
    assert!(open().await.is_err(), "a still rests");
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_eq!(open().await.unwrap().port, pa);
    drop(c);
}

#[tokio::test]
async fn udp_gap_is_given_up_after_reorder_wait_not_later() {
    let m = MediaServer::start(&cfg(Some(free_range(2)))).await.unwrap();
    let mut a = m.open(req(Transport::Udp, PortChoice::Pool, "a")).await.unwrap();
    let dev = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for s in [1u16, 2, 4] {
        dev.send_to(&rtp(s, 0, &[s as u8]), ("127.0.0.1", a.port)).await.unwrap();
    }
    let (p, _) = payloads(&mut a, 2).await;
    assert_eq!(p, vec![Bytes::from_static(&[1]), Bytes::from_static(&[2])]);
    let t = tokio::time::Instant::now();
    assert_eq!(next_event(&mut a).await, MediaEvent::Loss { lost: 1 });
    let waited = t.elapsed();
    assert_eq!(
        next_event(&mut a).await,
        MediaEvent::Payload { data: Bytes::from_static(&[4]), marker: false }
    );
    // reorder_wait is 150 ms in these tests; allow scheduling slack but no long stall.
    assert!(waited >= Duration::from_millis(100) && waited < Duration::from_millis(450), "{waited:?}");
    assert_eq!(a.counters.snapshot().lost, 1);
}
