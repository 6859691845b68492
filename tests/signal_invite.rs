//! INVITE sessions over real sockets on 127.0.0.1: INVITE/200/ACK/BYE in both directions with
//! each transport's SDP, timeouts with Timer A retransmissions, CANCEL only after a provisional,
//! refusal, and the typed errors for unknown devices and channels.

mod signal_ua;
use signal_ua::*;

use gbrelay::config::Transport;
use gbrelay::proto::sdp::{Sdp, Setup};
use gbrelay::signal::{InviteError, InviteRequest, SignalHandle};
use gbrelay::store::{ChannelRecord, Store};
use std::time::{Duration, Instant};

const S: Duration = Duration::from_secs(3);
const CH: &str = "34020000001320000001";

async fn setup_device(tcp: bool) -> (SignalHandle, Store, Ua) {
    let store = Store::open_in_memory().unwrap();
    let mut cfg = test_config();
    cfg.sip.invite_interval = Duration::from_millis(1);
    let (h, _j) = start(cfg, store.clone()).await;
    let mut ua = if tcp {
        Ua::tcp(NVR, "12345678", h.local_sip_addr()).await
    } else {
        Ua::udp(NVR, "12345678", h.local_sip_addr()).await
    };
    assert_eq!(ua.register(3600).await.status(), Some(200));
    store
        .replace_channels(
            NVR,
            &[ChannelRecord {
                device_id: NVR.into(),
                id: CH.into(),
                name: "门口".into(),
                status: "ON".into(),
                ..Default::default()
            }],
        )
        .unwrap();
    // Answer the registration's queries so they do not linger.
    for _ in 0..2 {
        if let Some(q) = ua.request(|m| m.method() == "MESSAGE", S).await {
            ua.answer(&q, 200, None).await;
        }
    }
    (h, store, ua)
}

fn request(h: &SignalHandle, transport: Transport, deadline: Duration) -> InviteRequest {
    InviteRequest {
        device_id: NVR.into(),
        channel_id: CH.into(),
        transport,
        media_ip: "127.0.0.1".parse().unwrap(),
        media_port: 30000,
        ssrc: h.allocate_ssrc().unwrap(),
        substream: None,
        deadline,
    }
}

fn answer_sdp(tcp_active_port: Option<u16>) -> String {
    match tcp_active_port {
        Some(p) => format!("v=0\r\no={CH} 0 0 IN IP4 127.0.0.1\r\ns=Play\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=video {p} TCP/RTP/AVP 96\r\na=sendonly\r\na=rtpmap:96 PS/90000\r\na=setup:passive\r\na=connection:new\r\ny=0200001234\r\nf=\r\n"),
        None => format!("v=0\r\no={CH} 0 0 IN IP4 127.0.0.1\r\ns=Play\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=video 15060 RTP/AVP 96\r\na=sendonly\r\na=rtpmap:96 PS/90000\r\ny=0200001234\r\nf=\r\n"),
    }
}

async fn full_exchange(tcp: bool, transport: Transport) {
    let (h, store, mut ua) = setup_device(tcp).await;
    let req = request(&h, transport, Duration::from_secs(5));
    let ssrc = req.ssrc;
    let h2 = h.clone();
    let call = tokio::spawn(async move { h2.invite(req).await });
    let inv = ua.request(|m| m.method() == "INVITE", S).await.expect("INVITE reaches the device");
    // GB/T 28181 §9.2: Request-URI to the channel, Subject, SDP with y=.
    assert!(inv.request_uri().unwrap().starts_with(&format!("sip:{CH}@")));
    assert_eq!(inv.header("Subject").unwrap(), format!("{CH}:{ssrc:010},{SERVER_ID}:0"));
    assert_eq!(inv.top_via().unwrap().transport, if tcp { "TCP" } else { "UDP" });
    let offer = Sdp::parse_bytes(&inv.body).unwrap();
    assert_eq!(offer.ssrc, Some(ssrc));
    assert_eq!(offer.port(), Some(30000));
    match transport {
        Transport::Udp => assert_eq!(offer.media.as_ref().unwrap().proto, "RTP/AVP"),
        Transport::TcpPassive => {
            assert_eq!(offer.media.as_ref().unwrap().proto, "TCP/RTP/AVP");
            assert_eq!(offer.setup, Some(Setup::Passive));
            assert!(offer.connection_new);
        }
        Transport::TcpActive => {
            assert_eq!(offer.setup, Some(Setup::Active));
        }
    }
    ua.answer(&inv, 100, None).await;
    let sdp = answer_sdp((transport == Transport::TcpActive).then_some(15555));
    ua.answer(&inv, 200, Some(("APPLICATION/SDP", sdp.as_bytes()))).await;
    let ack = ua.request(|m| m.method() == "ACK", S).await.expect("ACK after 200");
    assert_eq!(ack.call_id(), inv.call_id());
    assert_eq!(ack.to().unwrap().tag(), Some("devtag"));
    let session = call.await.unwrap().expect("session");
    assert_eq!(session.answer.ssrc, Some(200001234));
    if transport == Transport::TcpActive {
        assert_eq!(session.answer.port(), Some(15555));
    }
    assert_eq!(store.list_sessions().unwrap().len(), 1);
    // The gateway hangs up.
    let closing = tokio::spawn(session.bye());
    let bye = ua.request(|m| m.method() == "BYE", S).await.expect("BYE");
    assert_eq!(bye.call_id(), inv.call_id());
    assert_eq!(bye.to().unwrap().tag(), Some("devtag"));
    assert_eq!(bye.cseq(), Some((2, "BYE".into())));
    ua.answer(&bye, 200, None).await;
    tokio::time::timeout(S, closing).await.expect("bye() returns after 200").unwrap();
    assert!(store.list_sessions().unwrap().is_empty());
}

#[tokio::test]
async fn invite_ok_ack_bye_over_udp_with_udp_sdp() {
    full_exchange(false, Transport::Udp).await;
}

#[tokio::test]
async fn invite_ok_ack_bye_over_tcp_with_tcp_passive_sdp() {
    full_exchange(true, Transport::TcpPassive).await;
}

#[tokio::test]
async fn invite_ok_ack_bye_over_udp_with_tcp_active_sdp_and_device_port() {
    full_exchange(false, Transport::TcpActive).await;
}

#[tokio::test]
async fn a_bye_from_the_device_ends_the_session_and_notifies_its_owner() {
    let (h, store, mut ua) = setup_device(true).await;
    let h2 = h.clone();
    let req = request(&h, Transport::TcpPassive, S);
    let call = tokio::spawn(async move { h2.invite(req).await });
    let inv = ua.request(|m| m.method() == "INVITE", S).await.unwrap();
    ua.answer(&inv, 200, Some(("APPLICATION/SDP", answer_sdp(None).as_bytes()))).await;
    let mut session = call.await.unwrap().unwrap();
    let _ack = ua.request(|m| m.method() == "ACK", S).await.unwrap();
    let bye = format!(
        "BYE sip:{SERVER_ID}@{} SIP/2.0\r\nVia: SIP/2.0/TCP {};branch=z9hG4bKbye1\r\nFrom: {};tag=devtag\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 7 BYE\r\nContent-Length: 0\r\n\r\n",
        h.local_sip_addr(),
        ua.local,
        inv.header("To").unwrap(),
        inv.header("From").unwrap(),
        session.call_id
    );
    ua.send(bye.as_bytes()).await;
    let ok = ua.response("BYE", S).await.unwrap();
    assert_eq!(ok.status(), Some(200));
    let why = tokio::time::timeout(S, &mut session.ended).await.unwrap().unwrap();
    assert!(why.contains("BYE"), "{why}");
    assert!(store.list_sessions().unwrap().is_empty());
    // A second BYE for the same call is 481.
    ua.send(bye.replace("bye1", "bye2").as_bytes()).await;
    assert_eq!(ua.response("BYE", S).await.unwrap().status(), Some(481));
}

#[tokio::test]
async fn no_answer_times_out_at_the_deadline_with_timer_a_retransmissions_and_no_cancel() {
    let (h, _store, mut ua) = setup_device(false).await;
    let req = request(&h, Transport::Udp, Duration::from_millis(2200));
    let t0 = Instant::now();
    let res = {
        let h2 = h.clone();
        tokio::spawn(async move { h2.invite(req).await })
    };
    let mut invites = vec![];
    while let Some(m) =
        ua.request(|m| m.method() == "INVITE" || m.method() == "CANCEL", Duration::from_millis(3500)).await
    {
        assert_eq!(m.method(), "INVITE", "no CANCEL without a provisional response (RFC 3261 §9.1)");
        invites.push(t0.elapsed());
    }
    // Sent at 0, then Timer A at 0.5 s and 1.5 s; the deadline (2.2 s) comes before 3.5 s.
    assert_eq!(invites.len(), 3, "{invites:?}");
    assert!(
        invites[1] >= Duration::from_millis(450) && invites[2] >= Duration::from_millis(1400),
        "{invites:?}"
    );
    assert_eq!(res.await.unwrap().unwrap_err(), InviteError::Timeout);
}

#[tokio::test]
async fn a_provisional_then_the_deadline_sends_cancel_and_acks_the_487() {
    let (h, _store, mut ua) = setup_device(false).await;
    let req = request(&h, Transport::Udp, Duration::from_millis(800));
    let h2 = h.clone();
    let res = tokio::spawn(async move { h2.invite(req).await });
    let inv = ua.request(|m| m.method() == "INVITE", S).await.unwrap();
    ua.answer(&inv, 180, None).await;
    let cancel = ua.request(|m| m.method() == "CANCEL", S).await.expect("CANCEL after the deadline");
    assert_eq!(cancel.cseq(), Some((inv.cseq().unwrap().0, "CANCEL".into())));
    assert_eq!(cancel.top_via().unwrap().branch, inv.top_via().unwrap().branch);
    assert_eq!(res.await.unwrap().unwrap_err(), InviteError::Timeout);
    ua.answer(&cancel, 200, None).await;
    ua.answer(&inv, 487, None).await;
    let ack = ua.request(|m| m.method() == "ACK", S).await.expect("ACK for 487");
    assert_eq!(ack.cseq().unwrap().1, "ACK");
}

#[tokio::test]
async fn busy_here_is_refused_486_and_bad_targets_are_typed_errors() {
    let (h, _store, mut ua) = setup_device(false).await;
    let h2 = h.clone();
    let req = request(&h, Transport::Udp, S);
    let res = tokio::spawn(async move { h2.invite(req).await });
    let inv = ua.request(|m| m.method() == "INVITE", S).await.unwrap();
    ua.answer(&inv, 486, None).await;
    match res.await.unwrap() {
        Err(InviteError::Refused { status: 486, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(ua.request(|m| m.method() == "ACK", S).await.is_some());
    let mut r = request(&h, Transport::Udp, S);
    r.channel_id = "34020000001320000099".into();
    assert_eq!(h.invite(r).await.unwrap_err(), InviteError::ChannelNotFound);
    let mut r = request(&h, Transport::Udp, S);
    r.device_id = "34020000001180000055".into();
    assert_eq!(h.invite(r).await.unwrap_err(), InviteError::DeviceNotFound);
    // Unregister: the device is offline.
    assert_eq!(ua.register(0).await.status(), Some(200));
    assert_eq!(h.invite(request(&h, Transport::Udp, S)).await.unwrap_err(), InviteError::DeviceOffline);
}

#[tokio::test]
async fn dropping_a_session_sends_bye_and_shutdown_byes_the_rest() {
    let (h, store, mut ua) = setup_device(false).await;
    for _ in 0..2 {
        let h2 = h.clone();
        let req = request(&h, Transport::Udp, S);
        let call = tokio::spawn(async move { h2.invite(req).await });
        let inv = ua.request(|m| m.method() == "INVITE", S).await.unwrap();
        ua.answer(&inv, 200, Some(("APPLICATION/SDP", answer_sdp(None).as_bytes()))).await;
        let session = call.await.unwrap().unwrap();
        drop(session);
        let bye = ua.request(|m| m.method() == "BYE", S).await.expect("BYE on drop");
        ua.answer(&bye, 200, None).await;
    }
    let h2 = h.clone();
    let req = request(&h, Transport::Udp, S);
    let call = tokio::spawn(async move { h2.invite(req).await });
    let inv = ua.request(|m| m.method() == "INVITE", S).await.unwrap();
    ua.answer(&inv, 200, Some(("APPLICATION/SDP", answer_sdp(None).as_bytes()))).await;
    let mut kept = call.await.unwrap().unwrap();
    let h3 = h.clone();
    let stop = tokio::spawn(async move { h3.shutdown().await });
    let bye = ua.request(|m| m.method() == "BYE", S).await.expect("BYE at shutdown");
    ua.answer(&bye, 200, None).await;
    tokio::time::timeout(S, stop).await.unwrap().unwrap();
    assert!(tokio::time::timeout(S, &mut kept.ended).await.unwrap().is_ok());
    assert!(store.list_sessions().unwrap().is_empty());
}

#[tokio::test]
async fn sessions_left_in_the_store_by_a_previous_run_are_byed_at_start() {
    let store = Store::open_in_memory().unwrap();
    let dev = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    store
        .add_session(&gbrelay::store::SessionRecord {
            call_id: "stale-1".into(),
            device_id: NVR.into(),
            channel_id: CH.into(),
            from_tag: "f1".into(),
            to_tag: "t1".into(),
            remote: dev.local_addr().unwrap().to_string(),
            transport: "udp".into(),
            cseq: 1,
            created_at: 0,
        })
        .unwrap();
    let (_h, _j) = start(test_config(), store.clone()).await;
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(S, dev.recv_from(&mut buf)).await.unwrap().unwrap();
    let m = gbrelay::proto::sip::Message::parse(bytes::Bytes::copy_from_slice(&buf[..n])).unwrap();
    assert_eq!(m.method(), "BYE");
    assert_eq!(m.call_id(), Some("stale-1"));
    assert_eq!(m.to().unwrap().tag(), Some("t1"));
    assert_eq!(m.from().unwrap().tag(), Some("f1"));
    assert!(store.list_sessions().unwrap().is_empty());
}

#[tokio::test]
async fn invites_to_one_device_are_limited_in_number_and_paced() {
    let store = Store::open_in_memory().unwrap();
    let mut cfg = test_config();
    cfg.sip.invite_concurrency = 1;
    cfg.sip.invite_interval = Duration::from_millis(300);
    let (h, _j) = start(cfg, store.clone()).await;
    let mut ua = Ua::udp(NVR, "12345678", h.local_sip_addr()).await;
    assert_eq!(ua.register(3600).await.status(), Some(200));
    store
        .replace_channels(
            NVR,
            &[ChannelRecord {
                device_id: NVR.into(),
                id: CH.into(),
                status: "ON".into(),
                ..Default::default()
            }],
        )
        .unwrap();
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let h2 = h.clone();
            let req = request(&h, Transport::Udp, Duration::from_secs(5));
            tokio::spawn(async move { h2.invite(req).await })
        })
        .collect();
    let first = ua.request(|m| m.method() == "INVITE", S).await.unwrap();
    let t_first = Instant::now();
    assert!(
        ua.request(|m| m.method() == "INVITE" && m.call_id() != first.call_id(), Duration::from_millis(600))
            .await
            .is_none(),
        "one INVITE at a time"
    );
    ua.answer(&first, 200, Some(("APPLICATION/SDP", answer_sdp(None).as_bytes()))).await;
    let second = ua.request(|m| m.method() == "INVITE" && m.call_id() != first.call_id(), S).await.unwrap();
    assert!(t_first.elapsed() >= Duration::from_millis(300));
    ua.answer(&second, 200, Some(("APPLICATION/SDP", answer_sdp(None).as_bytes()))).await;
    for c in calls {
        let s = c.await.unwrap().unwrap();
        assert!(s.answer.ssrc.is_some());
    }
}
