//! The sans-IO client transactions of `proto::sip::transaction` in simulated time (RFC 3261
//! §17.1.1 Timer A, §9.1 CANCEL only after a provisional, §13.2.2.4 ACK per 2xx, §17.1.2 Timer E/F).
//! Here rather than in `src/proto` because the test needs a clock origin and `src/proto` never
//! reads the clock.

use bytes::Bytes;
use gbrelay::proto::sip::transaction::{
    DialogIds, InviteClient, InviteEvent, NonInviteClient, NonInviteEvent,
};
use gbrelay::proto::sip::Message;
use std::time::{Duration, Instant};

fn ids() -> DialogIds {
    DialogIds {
        request_uri: "sip:34020000001320000001@127.0.0.1:5062".into(),
        via_host: "127.0.0.1:5060".into(),
        transport: "UDP".into(),
        from: "<sip:34020000002000000001@3402000000>;tag=ftag".into(),
        to: "<sip:34020000001320000001@3402000000>".into(),
        call_id: "call-1".into(),
        cseq: 1,
        contact: "<sip:34020000002000000001@127.0.0.1:5060>".into(),
    }
}

fn resp(status: u16, method: &str, tag: Option<&str>) -> Message {
    let to = match tag {
        Some(t) => format!("<sip:34020000001320000001@3402000000>;tag={t}"),
        None => "<sip:34020000001320000001@3402000000>".into(),
    };
    let raw = format!(
        "SIP/2.0 {status} X\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK1\r\nFrom: <sip:34020000002000000001@3402000000>;tag=ftag\r\nTo: {to}\r\nCall-ID: call-1\r\nCSeq: 1 {method}\r\nContact: <sip:34020000001320000001@127.0.0.1:5062>\r\nContent-Length: 0\r\n\r\n"
    );
    Message::parse(Bytes::from(raw)).unwrap()
}

fn drain(c: &mut InviteClient) -> Vec<Message> {
    let mut v = vec![];
    while let Some(b) = c.poll_transmit() {
        v.push(Message::parse(b).unwrap());
    }
    v
}

#[test]
fn timer_a_doubles_on_udp_and_deadline_without_provisional_sends_no_cancel() {
    let t0 = Instant::now();
    let mut c = InviteClient::new(t0, ids(), 1, vec![], None, false, t0 + Duration::from_secs(4));
    assert_eq!(drain(&mut c).len(), 1);
    let mut sent_at = vec![];
    let mut now = t0;
    while let Some(t) = c.poll_timeout() {
        if t > t0 + Duration::from_secs(5) {
            break;
        }
        now = t;
        c.handle_timeout(now);
        for m in drain(&mut c) {
            assert_eq!(m.method(), "INVITE");
            sent_at.push((now - t0).as_millis());
        }
    }
    assert_eq!(sent_at, vec![500, 1500, 3500]);
    assert!(matches!(c.poll_event(), Some(InviteEvent::TimedOut { provisional: false })));
    assert!(!c.cancel_sent());
    c.check_invariants();
    let _ = now;
}

#[test]
fn provisional_stops_retransmission_and_deadline_then_cancels_and_acks_487() {
    let t0 = Instant::now();
    let mut c = InviteClient::new(t0, ids(), 1, vec![], None, false, t0 + Duration::from_secs(2));
    drain(&mut c);
    c.handle_response(t0 + Duration::from_millis(100), &resp(100, "INVITE", None));
    assert!(matches!(c.poll_event(), Some(InviteEvent::Provisional(100))));
    c.handle_timeout(t0 + Duration::from_millis(1000));
    assert!(drain(&mut c).is_empty(), "no Timer A retransmission in Proceeding");
    c.handle_timeout(t0 + Duration::from_secs(2));
    assert!(matches!(c.poll_event(), Some(InviteEvent::TimedOut { provisional: true })));
    let out = drain(&mut c);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].method(), "CANCEL");
    assert_eq!(out[0].cseq(), Some((1, "CANCEL".into())));
    assert_eq!(out[0].top_via().unwrap().branch.as_deref(), Some(c.branch()));
    c.handle_response(t0 + Duration::from_millis(2100), &resp(200, "CANCEL", Some("d")));
    c.handle_response(t0 + Duration::from_millis(2100), &resp(487, "INVITE", Some("d")));
    let out = drain(&mut c);
    assert_eq!(out[0].method(), "ACK");
    assert!(c.poll_event().is_none(), "487 after our CANCEL is not reported again");
    c.check_invariants();
}

#[test]
fn late_provisional_after_deadline_triggers_cancel_then_late_200_gets_ack_and_bye() {
    let t0 = Instant::now();
    let mut c = InviteClient::new(t0, ids(), 1, vec![], None, true, t0 + Duration::from_secs(1));
    drain(&mut c);
    c.handle_timeout(t0 + Duration::from_secs(1));
    assert!(matches!(c.poll_event(), Some(InviteEvent::TimedOut { provisional: false })));
    assert!(drain(&mut c).is_empty());
    c.handle_response(t0 + Duration::from_millis(1200), &resp(180, "INVITE", Some("d")));
    assert_eq!(drain(&mut c)[0].method(), "CANCEL");
    c.handle_response(t0 + Duration::from_millis(1300), &resp(200, "INVITE", Some("d")));
    let out = drain(&mut c);
    let methods: Vec<_> = out.iter().map(|m| m.method()).collect();
    assert_eq!(methods, ["ACK", "BYE"]);
    assert_eq!(out[1].cseq(), Some((2, "BYE".into())));
    assert_eq!(out[1].to().unwrap().tag(), Some("d"));
    assert!(matches!(c.poll_event(), Some(InviteEvent::LateAnswerClosed { .. })));
    c.check_invariants();
}

#[test]
fn answer_is_acked_once_per_2xx_retransmission() {
    let t0 = Instant::now();
    let mut c = InviteClient::new(
        t0,
        ids(),
        1,
        vec![],
        Some(("APPLICATION/SDP", b"v=0\r\n")),
        false,
        t0 + Duration::from_secs(8),
    );
    let inv = drain(&mut c);
    assert_eq!(&inv[0].body[..], b"v=0\r\n");
    c.handle_response(t0, &resp(200, "INVITE", Some("dev")));
    match c.poll_event() {
        Some(InviteEvent::Answered { to_tag, .. }) => assert_eq!(to_tag, "dev"),
        e => panic!("{e:?}"),
    }
    let ack = drain(&mut c);
    assert_eq!(ack[0].method(), "ACK");
    assert_eq!(ack[0].request_uri().unwrap(), "sip:34020000001320000001@127.0.0.1:5062");
    assert_ne!(ack[0].top_via().unwrap().branch.as_deref(), Some(c.branch()));
    c.handle_response(t0, &resp(200, "INVITE", Some("dev")));
    assert_eq!(drain(&mut c).len(), 1);
    assert!(c.poll_event().is_none());
}

#[test]
fn busy_here_is_refused_with_status() {
    let t0 = Instant::now();
    let mut c = InviteClient::new(t0, ids(), 1, vec![], None, false, t0 + Duration::from_secs(8));
    drain(&mut c);
    c.handle_response(t0, &resp(486, "INVITE", Some("x")));
    assert!(matches!(c.poll_event(), Some(InviteEvent::Refused { status: 486, .. })));
    assert_eq!(drain(&mut c)[0].method(), "ACK");
}

#[test]
fn non_invite_retransmits_until_final_or_timer_f() {
    let t0 = Instant::now();
    let req = ids().request(rsip::Method::Message, "sip:a@b", "<sip:a@b>", 5, "z9hG4bKm", vec![], None);
    let mut c = NonInviteClient::new(t0, req, false);
    assert!(c.poll_transmit().is_some());
    let mut n = 0;
    while let Some(t) = c.poll_timeout() {
        c.handle_timeout(t);
        while c.poll_transmit().is_some() {
            n += 1;
        }
    }
    assert!(matches!(c.poll_event(), Some(NonInviteEvent::TimedOut)));
    assert_eq!(n, 10, "Timer E: 0.5,1.5,3.5,7.5,11.5,...,31.5 s before Timer F at 32 s");
    let mut c = NonInviteClient::new(
        t0,
        ids().request(rsip::Method::Bye, "sip:a@b", "<sip:a@b>", 5, "z9hG4bKb", vec![], None),
        true,
    );
    c.handle_response(t0, &resp(200, "BYE", None));
    assert!(matches!(c.poll_event(), Some(NonInviteEvent::Final(200, _))));
}
