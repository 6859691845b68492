//! Registration over real sockets on 127.0.0.1: digest challenge and answer over UDP and TCP,
//! wrong password, provisioning, Expires 0, blocking of a failing (address, device) pair, and
//! malformed SIP.

mod signal_ua;
use signal_ua::*;

use gbrelay::store::Store;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

const S: Duration = Duration::from_secs(3);

#[tokio::test]
async fn udp_register_is_challenged_then_accepted_with_date_and_expires() {
    let store = Store::open_in_memory().unwrap();
    let (h, _j) = start(test_config(), store.clone()).await;
    let mut ua = Ua::udp(NVR, "12345678", h.local_sip_addr()).await;
    let first = ua.request_bytes(
        "REGISTER",
        &format!("Contact: <sip:{NVR}@{}>\r\nExpires: 3600\r\n", ua.local),
        None,
        b"",
    );
    ua.send(&first).await;
    let r = ua.response("REGISTER", S).await.unwrap();
    assert_eq!(r.status(), Some(401));
    let chal = r.header("WWW-Authenticate").unwrap();
    assert!(chal.contains("realm=\"3402000000\"") && chal.contains("algorithm=MD5"), "{chal}");
    assert!(!h.device_online(NVR));
    let ok = ua.register(3600).await;
    assert_eq!(ok.status(), Some(200));
    let date = ok.header("Date").unwrap();
    assert!(chrono::NaiveDateTime::parse_from_str(date, "%Y-%m-%dT%H:%M:%S%.3f").is_ok(), "{date}");
    assert_eq!(ok.header("Expires"), Some("3600"));
    assert!(ok.to().unwrap().tag().is_some());
    assert!(eventually(S, || h.device_online(NVR)).await);
    let rec = store.get_device(NVR).unwrap().unwrap();
    assert!(rec.state.online);
    assert_eq!(rec.state.transport, "udp");
    assert_eq!(rec.state.remote, ua.local.to_string());
    // The registration triggers a Catalog and a DeviceInfo query to the address it came from.
    let q = ua
        .request(|m| m.method() == "MESSAGE" && String::from_utf8_lossy(&m.body).contains("Catalog"), S)
        .await;
    assert!(q.is_some());
}

#[tokio::test]
async fn tcp_register_without_qop_is_accepted_and_queries_come_over_the_connection() {
    let store = Store::open_in_memory().unwrap();
    let (h, _j) = start(test_config(), store.clone()).await;
    let mut ua = Ua::tcp(NVR, "12345678", h.local_sip_addr()).await;
    let ok = ua.register_with(600, false).await;
    assert_eq!(ok.status(), Some(200));
    assert!(h.device_online(NVR));
    assert_eq!(store.get_device(NVR).unwrap().unwrap().state.transport, "tcp");
    let q = ua.request(|m| String::from_utf8_lossy(&m.body).contains("DeviceInfo"), S).await.unwrap();
    assert_eq!(q.top_via().unwrap().transport, "TCP");
}

#[tokio::test]
async fn wrong_password_is_403_and_nothing_about_the_device_changes() {
    let store = Store::open_in_memory().unwrap();
    store.create_device(NVR, "gate", Some("right-one")).unwrap();
    let before = store.get_device(NVR).unwrap().unwrap();
    let (h, _j) = start(test_config(), store.clone()).await;
    let mut ua = Ua::udp(NVR, "12345678", h.local_sip_addr()).await;
    let r = ua.register(3600).await;
    assert_eq!(r.status(), Some(403));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!h.device_online(NVR));
    assert_eq!(store.get_device(NVR).unwrap().unwrap(), before);
    // The device's own password from the store works.
    let mut ua = Ua::udp(NVR, "right-one", h.local_sip_addr()).await;
    assert_eq!(ua.register(3600).await.status(), Some(200));
    assert!(h.device_online(NVR));
}

#[tokio::test]
async fn unknown_device_is_refused_when_provisioning_is_required() {
    let store = Store::open_in_memory().unwrap();
    let mut cfg = test_config();
    cfg.sip.require_provisioned = true;
    let (h, _j) = start(cfg, store.clone()).await;
    let mut ua = Ua::udp(NVR, "12345678", h.local_sip_addr()).await;
    assert_eq!(ua.register(3600).await.status(), Some(403));
    assert!(store.get_device(NVR).unwrap().is_none());
    store.create_device(NVR, "nvr", None).unwrap();
    assert_eq!(ua.register(3600).await.status(), Some(200), "provisioned with the default password");
}

#[tokio::test]
async fn expires_zero_unregisters() {
    let store = Store::open_in_memory().unwrap();
    let (h, _j) = start(test_config(), store.clone()).await;
    let mut ua = Ua::tcp(NVR, "12345678", h.local_sip_addr()).await;
    assert_eq!(ua.register(3600).await.status(), Some(200));
    assert!(h.device_online(NVR));
    let r = ua.register(0).await;
    assert_eq!(r.status(), Some(200));
    assert!(!h.device_online(NVR));
    assert!(!store.get_device(NVR).unwrap().unwrap().state.online);
}

#[tokio::test]
async fn a_failing_address_device_pair_is_blocked_but_others_behind_the_same_nat_are_not() {
    let store = Store::open_in_memory().unwrap();
    let mut cfg = test_config();
    cfg.sip.auth_fail_limit = 3;
    let (h, _j) = start(cfg, store.clone()).await;
    let mut bad = Ua::udp(NVR, "wrong", h.local_sip_addr()).await;
    for _ in 0..3 {
        assert_eq!(bad.register(3600).await.status(), Some(403));
    }
    // Now blocked: even the first, unauthenticated REGISTER gets 403 (no challenge, no digest).
    bad.password = "12345678".into();
    assert_eq!(bad.register(3600).await.status(), Some(403));
    // Another device from the same IP is served.
    let mut other = Ua::udp("34020000001180000002", "12345678", h.local_sip_addr()).await;
    assert_eq!(other.register(3600).await.status(), Some(200));
}

#[tokio::test]
async fn malformed_sip_is_dropped_or_400_and_the_server_keeps_serving() {
    let store = Store::open_in_memory().unwrap();
    let (h, _j) = start(test_config(), store.clone()).await;
    let addr = h.local_sip_addr();
    let sock = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    // Read answers while sending, so the test's own socket buffer does not drop them.
    let reader = {
        let sock = sock.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            let mut statuses = vec![];
            while let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_millis(1000), sock.recv_from(&mut buf)).await
            {
                let m =
                    gbrelay::proto::sip::Message::parse(bytes::Bytes::copy_from_slice(&buf[..n])).unwrap();
                statuses.push(m.status());
            }
            statuses
        })
    };
    let reg = format!(
        "REGISTER sip:{SERVER_ID}@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKx\r\nFrom: <sip:{NVR}@{DOMAIN}>;tag=1\r\nTo: <sip:{NVR}@{DOMAIN}>\r\nCall-ID: x\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n"
    );
    let mut garbage: Vec<Vec<u8>> = vec![
        reg.as_bytes()[..reg.len() / 2].to_vec(),
        reg.replace("Content-Length: 0", "Content-Length: 500").into_bytes(),
        reg.replace("Content-Length: 0", "Content-Length: zz").into_bytes(),
        (0..2000u32).map(|i| (i * 7919 % 251) as u8).collect(),
        format!(
            "REGISTER sip:a@b SIP/2.0\r\n{}\r\n",
            "X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(500)
        )
        .into_bytes(),
        reg.replace(&format!("From: <sip:{NVR}@{DOMAIN}>;tag=1\r\n"), "").into_bytes(),
        b"\r\n\r\n".to_vec(),
        vec![],
    ];
    for i in 0..300u32 {
        garbage.push(
            reg.replace("Call-ID: x", &format!("Call-ID: flood{i}")).replace(NVR, "not-a-gb-id").into_bytes(),
        );
    }
    for (i, g) in garbage.iter().enumerate() {
        sock.send_to(g, addr).await.unwrap();
        if i % 10 == 9 {
            // Keep the burst within the loopback socket buffers: what is measured is the
            // server's handling, not kernel drops.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    // Over TCP: garbage closes the connection; oversized headers too.
    let mut t = tokio::net::TcpStream::connect(addr).await.unwrap();
    t.write_all(&(0..5000u32).map(|i| (i % 256) as u8).collect::<Vec<_>>()).await.unwrap();
    let mut t2 = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = t2.write_all(format!("REGISTER sip:a@b SIP/2.0\r\n{}", "X: y\r\n".repeat(5000)).as_bytes()).await;
    // Answers that came back are 400s (the missing-From one and the bad IDs), never anything else.
    let statuses = reader.await.unwrap();
    assert!(statuses.iter().all(|s| *s == Some(400)), "{statuses:?}");
    assert!(statuses.len() >= 300, "{}", statuses.len());
    let malformed = gbrelay::metrics::render();
    assert!(malformed.contains("gbrelay_sip_malformed_total"), "malformed input is counted");
    // Still serving.
    let mut ua = Ua::tcp(NVR, "12345678", addr).await;
    assert_eq!(ua.register(3600).await.status(), Some(200));
}
