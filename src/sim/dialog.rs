//! INVITE dialogs of the simulated device (RFC 3261 §13–§15, GB/T 28181-2016 §9.2): answers per
//! [`AnswerPolicy`], the media socket prepared before the 200 OK, streaming after ACK, BYE both ways,
//! CANCEL. SIP transport and shared state live in [`super::ua`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use super::rtp::{self, Sink, StreamParams};
use super::sip::{self, SipMessage};
use super::ua::*;
use super::{sdp, AnswerPolicy, MediaTransport, SimEvent, SsrcPolicy};

/// Media prepared at INVITE time, used after ACK.
pub(super) enum MediaPrep {
    Udp(UdpSocket),
    Connect(TcpSocket, SocketAddr),
    Listen(TcpListener),
}

pub(super) enum DialogState {
    /// 1xx sent, no final (ProvisionalThenSilence): CANCEL applies.
    Proceeding,
    /// 200 sent, waiting for ACK.
    WaitAck(Option<MediaPrep>),
    Streaming(JoinHandle<()>),
}

pub(super) struct Dialog {
    pub(super) channel: String,
    pub(super) invite: SipMessage,
    pub(super) src: SocketAddr,
    /// Our To header (with our tag) = From of our in-dialog requests.
    pub(super) local: String,
    /// Their From header = To of our in-dialog requests.
    pub(super) remote: String,
    pub(super) remote_target: String,
    pub(super) next_cseq: u32,
    pub(super) transport: MediaTransport,
    pub(super) ssrc: u32,
    pub(super) state: DialogState,
}

pub(super) fn abort_streams(sh: &Shared) {
    let mut d = sh.dialogs.lock().expect("dialogs lock");
    for (_, dl) in d.drain() {
        if let DialogState::Streaming(h) = dl.state {
            h.abort();
        }
    }
}

pub(super) fn pick_ssrc(policy: SsrcPolicy, offered: Option<u32>) -> u32 {
    match policy {
        SsrcPolicy::Offered => offered.unwrap_or(0),
        SsrcPolicy::Zero => 0,
        SsrcPolicy::Own(v) => v,
    }
}

/// INVITE (GB/T 28181-2016 §9.2.2): answer per [`AnswerPolicy`]; on Accept the media socket is
/// prepared now so its port goes into the SDP answer.
pub(super) async fn on_invite(sh: &Arc<Shared>, req: SipMessage, src: SocketAddr) {
    let Some(key) = tx_key(&req) else { return };
    if sh.cfg.answer == AnswerPolicy::NoAnswer {
        // Remember the transaction (so retransmissions are counted as such), tell the test, answer nothing.
        sh.tx.lock().expect("tx lock").put(key, None);
        let channel = req.uri().and_then(sip::uri_user).unwrap_or_default();
        if let Ok(offer) = sdp::parse_offer(&String::from_utf8_lossy(&req.body)) {
            let _ = sh.events.send(SimEvent::Invited {
                channel,
                transport: offer.transport,
                ssrc: offer.ssrc,
                stream_number: offer.stream_number,
            });
        }
        return;
    }
    let Some(call_id) = req.call_id().map(str::to_string) else { return };
    let tag = rand_token(10);
    let channel = req
        .uri()
        .and_then(sip::uri_user)
        .or_else(|| req.header("to").and_then(sip::uri_user))
        .unwrap_or_default();
    let known = sh.channels.lock().expect("channels lock").iter().any(|c| c.id == channel);
    if !known {
        reply(sh, &req, src, response_to(&req, 404, "Not Found", Some(&tag), src));
        return;
    }
    let body = String::from_utf8_lossy(&req.body).into_owned();
    let offer = match sdp::parse_offer(&body) {
        Ok(o) => o,
        Err(_) => {
            reply(sh, &req, src, response_to(&req, 488, "Not Acceptable Here", Some(&tag), src));
            return;
        }
    };
    let _ = sh.events.send(SimEvent::Invited {
        channel: channel.clone(),
        transport: offer.transport,
        ssrc: offer.ssrc,
        stream_number: offer.stream_number,
    });
    reply(sh, &req, src, response_to(&req, 100, "Trying", None, src));
    let local_to = format!("{};tag={tag}", req.header("to").unwrap_or(""));
    let remote = req.header("from").unwrap_or("").to_string();
    let remote_target = req.header("contact").map(sip::addr_uri).unwrap_or_else(|| sip::addr_uri(&remote));
    let invite_cseq = req.cseq().map(|c| c.0).unwrap_or(1);
    let ssrc = pick_ssrc(sh.cfg.ssrc_policy, offer.ssrc);
    let mut dialog = Dialog {
        channel: channel.clone(),
        invite: req.clone(),
        src,
        local: local_to,
        remote,
        remote_target,
        next_cseq: invite_cseq + 1,
        transport: offer.transport,
        ssrc,
        state: DialogState::Proceeding,
    };
    match sh.cfg.answer {
        AnswerPolicy::Refuse(code) => {
            let reason = match code {
                486 => "Busy Here",
                403 => "Forbidden",
                404 => "Not Found",
                480 => "Temporarily Unavailable",
                488 => "Not Acceptable Here",
                500 => "Server Internal Error",
                503 => "Service Unavailable",
                _ => "Refused",
            };
            reply(sh, &req, src, response_to(&req, code, reason, Some(&tag), src));
        }
        AnswerPolicy::ProvisionalThenSilence => {
            reply(sh, &req, src, response_to(&req, 180, "Ringing", Some(&tag), src));
            sh.dialogs.lock().expect("dialogs lock").insert(call_id, dialog);
        }
        AnswerPolicy::NoAnswer => {}
        AnswerPolicy::Accept => {
            let bind_ip = sh.cfg.local.ip();
            let bind = SocketAddr::new(bind_ip, 0);
            let prep: std::io::Result<(MediaPrep, u16)> = async {
                Ok(match offer.transport {
                    MediaTransport::Udp => {
                        let s = UdpSocket::bind(bind).await?;
                        s.connect(offer.addr).await?;
                        let p = s.local_addr()?.port();
                        (MediaPrep::Udp(s), p)
                    }
                    MediaTransport::TcpPassive => {
                        let s =
                            if offer.addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
                        s.bind(bind)?;
                        let p = s.local_addr()?.port();
                        (MediaPrep::Connect(s, offer.addr), p)
                    }
                    MediaTransport::TcpActive => {
                        let l = TcpListener::bind(bind).await?;
                        let p = l.local_addr()?.port();
                        (MediaPrep::Listen(l), p)
                    }
                })
            }
            .await;
            let (prep, port) = match prep {
                Ok(x) => x,
                Err(_) => {
                    reply(sh, &req, src, response_to(&req, 500, "Server Internal Error", Some(&tag), src));
                    return;
                }
            };
            let answer = sdp::answer(&channel, sh.adv_ip, port, offer.transport, ssrc, &offer.session);
            let ok = response_to(&req, 200, "OK", Some(&tag), src)
                .with("Contact", contact(sh, &channel))
                .with_body("application/sdp", answer.into_bytes());
            dialog.state = DialogState::WaitAck(Some(prep));
            sh.dialogs.lock().expect("dialogs lock").insert(call_id.clone(), dialog);
            let ok_bytes = ok.to_bytes();
            reply(sh, &req, src, ok);
            // RFC 3261 §13.3.1.4: retransmit the 2xx over UDP until the ACK comes (T1 doubling to
            // T2, for 64·T1); without an ACK the dialog is ended with BYE.
            let sh2 = sh.clone();
            let udp = matches!(sh.out, Outbound::Udp(_));
            tokio::spawn(async move {
                let mut iv = Duration::from_millis(500);
                let mut waited = Duration::ZERO;
                while waited < Duration::from_secs(32) {
                    let step = if udp { iv } else { Duration::from_millis(500) };
                    tokio::time::sleep(step).await;
                    waited += step;
                    let waiting = matches!(
                        sh2.dialogs.lock().expect("dialogs lock").get(&call_id).map(|d| &d.state),
                        Some(DialogState::WaitAck(_))
                    );
                    if !waiting {
                        return;
                    }
                    if udp {
                        send(&sh2, Some(src), ok_bytes.clone());
                        iv = (iv * 2).min(Duration::from_secs(4));
                    }
                }
                bye_dialog(&sh2, &call_id).await;
            });
        }
    }
}

pub(super) fn on_ack(sh: &Arc<Shared>, req: &SipMessage) {
    let Some(call_id) = req.call_id() else { return };
    let mut dialogs = sh.dialogs.lock().expect("dialogs lock");
    let Some(d) = dialogs.get_mut(call_id) else { return };
    let DialogState::WaitAck(prep) = &mut d.state else { return };
    let Some(prep) = prep.take() else { return };
    inc(&sh.c.acks);
    let idx = sh.stream_index.fetch_add(1, Ordering::Relaxed);
    let params = StreamParams {
        ssrc: d.ssrc,
        first_seq: (rand::thread_rng().gen::<u16>()) & 0x7fff,
        seed: sh.cfg.seed.wrapping_add(idx.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        loss: if d.transport == MediaTransport::Udp { sh.cfg.loss } else { 0.0 },
        reorder: if d.transport == MediaTransport::Udp { sh.cfg.reorder } else { 0.0 },
    };
    let sh2 = sh.clone();
    let call_id2 = call_id.to_string();
    let channel = d.channel.clone();
    let handle = tokio::spawn(async move {
        let sink = match prep {
            MediaPrep::Udp(s) => Ok(Sink::Udp(s)),
            MediaPrep::Connect(s, addr) => connect_media(s, addr).await.map(Sink::Tcp),
            MediaPrep::Listen(l) => match tokio::time::timeout(Duration::from_secs(10), l.accept()).await {
                Ok(Ok((t, _))) => {
                    let _ = t.set_nodelay(true);
                    Ok(Sink::Tcp(t))
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "media accept")),
            },
        };
        if let Ok(sink) = sink {
            let _guard = ActiveGuard::new(&sh2.c.active_streams);
            let _ = sh2.events.send(SimEvent::StreamStarted { channel });
            let _ = rtp::run_stream(sh2.media.clone(), sink, params, sh2.rtp.clone()).await;
        }
        // The media failed (connect, accept or a broken TCP connection): the device hangs up.
        let sh3 = sh2.clone();
        tokio::spawn(async move { bye_dialog(&sh3, &call_id2).await });
    });
    d.state = DialogState::Streaming(handle);
}

/// Connects to a listening server (TCP passive on its side). The server may open its listener a
/// moment after the ACK, so a refused connection is retried every 200 ms for up to 10 s (retries
/// from a fresh port: the answered m= port only matters for a server that connects).
async fn connect_media(first: TcpSocket, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut attempt = tokio::time::timeout_at(deadline, first.connect(addr)).await;
    loop {
        match attempt {
            Ok(Ok(t)) => {
                let _ = t.set_nodelay(true);
                return Ok(t);
            }
            Ok(Err(e)) if tokio::time::Instant::now() + Duration::from_millis(200) >= deadline => {
                return Err(e)
            }
            Ok(Err(_)) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                attempt = tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await;
            }
            Err(_) => return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "media connect")),
        }
    }
}

pub(super) struct ActiveGuard<'a>(&'a AtomicU64);

impl<'a> ActiveGuard<'a> {
    fn new(a: &'a AtomicU64) -> Self {
        a.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(a)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(super) fn on_bye(sh: &Arc<Shared>, req: &SipMessage, src: SocketAddr) {
    inc(&sh.c.byes);
    let removed = req.call_id().and_then(|c| sh.dialogs.lock().expect("dialogs lock").remove(c));
    match removed {
        Some(d) => {
            reply(sh, req, src, response_to(req, 200, "OK", None, src));
            if let DialogState::Streaming(h) = d.state {
                h.abort();
            }
            let _ = sh.events.send(SimEvent::Bye { channel: d.channel, from_server: true });
        }
        None => reply(sh, req, src, response_to(req, 481, "Call/Transaction Does Not Exist", None, src)),
    }
}

/// CANCEL (RFC 3261 §9.2): 200 to the CANCEL; if the INVITE has no final response yet, 487 to it.
pub(super) fn on_cancel(sh: &Arc<Shared>, req: &SipMessage, src: SocketAddr) {
    inc(&sh.c.cancels);
    reply(sh, req, src, response_to(req, 200, "OK", None, src));
    let channel = req.uri().and_then(sip::uri_user).unwrap_or_default();
    let Some(call_id) = req.call_id() else { return };
    let pending = {
        let mut d = sh.dialogs.lock().expect("dialogs lock");
        match d.get(call_id).map(|x| matches!(x.state, DialogState::Proceeding)) {
            Some(true) => d.remove(call_id),
            _ => None,
        }
    };
    if let Some(dl) = pending {
        let tag = sip::param(&dl.local, "tag");
        let r = response_to(&dl.invite, 487, "Request Terminated", tag.as_deref(), dl.src);
        reply(sh, &dl.invite, dl.src, r);
    }
    let _ = sh.events.send(SimEvent::Cancelled { channel });
}

/// Ends a dialog from the device side with BYE (RFC 3261 §15.1.1), if it still exists.
pub(super) async fn bye_dialog(sh: &Arc<Shared>, call_id: &str) {
    let Some(d) = sh.dialogs.lock().expect("dialogs lock").remove(call_id) else { return };
    if let DialogState::Streaming(h) = &d.state {
        h.abort();
    }
    if matches!(d.state, DialogState::Proceeding) {
        return;
    }
    let bye = SipMessage::request("BYE", &d.remote_target)
        .with("Via", via(sh))
        .with("From", d.local.clone())
        .with("To", d.remote.clone())
        .with("Call-ID", call_id)
        .with("CSeq", format!("{} BYE", d.next_cseq))
        .with("Max-Forwards", "70")
        .with("User-Agent", "IP Camera");
    inc(&sh.c.byes_sent);
    let _ = sh.events.send(SimEvent::Bye { channel: d.channel.clone(), from_server: false });
    let sh2 = sh.clone();
    tokio::spawn(async move {
        request(&sh2, bye).await;
    });
}
