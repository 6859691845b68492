//! Client transactions, sans-IO (RFC 3261 §17.1): the INVITE client transaction with the session
//! setup rules GB/T 28181 gateways need around it (§17.1.1, §9.1, §13.2.2.4), and the non-INVITE
//! client transaction for MESSAGE, BYE and CANCEL (§17.1.2).
//!
//! The driver feeds `handle_response(now, msg)` and `handle_timeout(now)`, then drains
//! `poll_transmit()` (bytes for the transaction's destination) and `poll_event()`, and sleeps until
//! `poll_timeout()`. Time is passed in. Not here: matching responses to transactions (the driver
//! keys them by Call-ID + CSeq), sockets.

use super::message::{branch, build_request, Message, RequestSpec};
use bytes::Bytes;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// RFC 3261 §17.1.1.1 timer values.
pub const T1: Duration = Duration::from_millis(500);
pub const T2: Duration = Duration::from_secs(4);

/// What identifies a dialog-forming request and lets us build ACK, CANCEL and BYE for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialogIds {
    /// Request-URI of the INVITE.
    pub request_uri: String,
    /// Our sent-by `host:port` for the Via.
    pub via_host: String,
    /// "UDP" or "TCP".
    pub transport: String,
    /// Our From value including `;tag=`.
    pub from: String,
    /// The To value as sent (no tag).
    pub to: String,
    pub call_id: String,
    pub cseq: u32,
    pub contact: String,
}

impl DialogIds {
    fn via(&self, branch: &str) -> String {
        format!("SIP/2.0/{} {};rport;branch={branch}", self.transport, self.via_host)
    }

    /// Build a request of this dialog.
    #[allow(clippy::too_many_arguments)]
    pub fn request(
        &self,
        method: rsip::Method,
        uri: &str,
        to: &str,
        cseq: u32,
        branch: &str,
        extra: Vec<(&str, String)>,
        body: Option<(&str, &[u8])>,
    ) -> Bytes {
        let spec = RequestSpec {
            method,
            uri,
            via: self.via(branch),
            from: self.from.clone(),
            to: to.to_owned(),
            call_id: &self.call_id,
            cseq,
            contact: matches!(method, rsip::Method::Invite).then(|| self.contact.clone()),
            extra,
            body,
        };
        // The URI was accepted when the INVITE was built; fall back to the INVITE's own URI.
        build_request(&spec)
            .or_else(|_| build_request(&RequestSpec { uri: &self.request_uri, ..spec.clone() }))
            .unwrap_or_default()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteState {
    /// §17.1.1.2 Calling: INVITE sent, retransmitting on UDP (Timer A).
    Calling,
    /// A provisional response arrived: no more retransmissions.
    Proceeding,
    /// A 2xx arrived and was ACKed; lingering to ACK retransmitted 2xx (§13.2.2.4).
    Accepted,
    /// A final non-2xx arrived and was ACKed (§17.1.1.3); lingering for Timer D.
    Completed,
    Terminated,
}

/// What the owner of an INVITE learns.
#[derive(Debug, Clone)]
pub enum InviteEvent {
    Provisional(u16),
    /// 2xx: ACK already queued. `to_tag` completes the dialog id.
    Answered {
        response: Box<Message>,
        to_tag: String,
    },
    /// Final non-2xx before the deadline.
    Refused {
        status: u16,
        reason: String,
    },
    /// The caller's deadline passed with no final answer. A CANCEL went out iff `provisional`.
    TimedOut {
        provisional: bool,
    },
    /// A 2xx arrived after the deadline: it was ACKed and a BYE sent (§15: hang up a call we no
    /// longer want). The BYE is fire-and-forget; its `to_tag` is given for the record.
    LateAnswerClosed {
        to_tag: String,
    },
    Terminated,
}

/// INVITE client transaction plus the session-setup rules around it.
#[derive(Debug)]
pub struct InviteClient {
    ids: DialogIds,
    branch: String,
    invite: Bytes,
    reliable: bool,
    state: InviteState,
    deadline: Instant,
    next_retx: Option<Instant>,
    retx_interval: Duration,
    provisional: bool,
    timed_out: bool,
    linger_until: Option<Instant>,
    cancel: Option<Bytes>,
    cancel_next: Option<Instant>,
    cancel_interval: Duration,
    cancel_done: bool,
    ack: Option<Bytes>,
    retransmissions: u32,
    out: VecDeque<Bytes>,
    events: VecDeque<InviteEvent>,
}

impl InviteClient {
    /// Start: the INVITE (built from `ids` with `body`, `extra` headers) is queued at once.
    /// `deadline` is absolute and wins over Timer B (64·T1).
    pub fn new(
        now: Instant,
        ids: DialogIds,
        branch_rand: u64,
        extra: Vec<(&str, String)>,
        body: Option<(&str, &[u8])>,
        reliable: bool,
        deadline: Instant,
    ) -> Self {
        let branch = branch(branch_rand);
        let invite = ids.request(
            rsip::Method::Invite,
            &ids.request_uri.clone(),
            &ids.to.clone(),
            ids.cseq,
            &branch,
            extra,
            body,
        );
        let mut out = VecDeque::new();
        out.push_back(invite.clone());
        InviteClient {
            ids,
            branch,
            invite,
            reliable,
            state: InviteState::Calling,
            deadline,
            next_retx: (!reliable).then(|| now + T1),
            retx_interval: T1,
            provisional: false,
            timed_out: false,
            linger_until: None,
            cancel: None,
            cancel_next: None,
            cancel_interval: T1,
            cancel_done: false,
            ack: None,
            retransmissions: 0,
            out,
            events: VecDeque::new(),
        }
    }

    pub fn state(&self) -> InviteState {
        self.state
    }

    pub fn ids(&self) -> &DialogIds {
        &self.ids
    }

    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// How many times the INVITE was retransmitted (Timer A).
    pub fn retransmissions(&self) -> u32 {
        self.retransmissions
    }

    pub fn cancel_sent(&self) -> bool {
        self.cancel.is_some()
    }

    pub fn is_terminated(&self) -> bool {
        self.state == InviteState::Terminated
    }

    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<InviteEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == InviteState::Terminated {
            return None;
        }
        let mut t: Option<Instant> = None;
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        consider(self.next_retx);
        consider(self.cancel_next);
        consider(self.linger_until);
        if !self.timed_out && matches!(self.state, InviteState::Calling | InviteState::Proceeding) {
            consider(Some(self.deadline));
        }
        t
    }

    fn send_cancel(&mut self, now: Instant) {
        // §9.1: same Request-URI, Call-ID, To, From, CSeq number and top Via branch as the INVITE.
        let c = self.ids.request(
            rsip::Method::Cancel,
            &self.ids.request_uri,
            &self.ids.to,
            self.ids.cseq,
            &self.branch,
            vec![],
            None,
        );
        self.out.push_back(c.clone());
        self.cancel = Some(c);
        if !self.reliable {
            self.cancel_next = Some(now + T1);
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(t) = self.next_retx {
            if now >= t && self.state == InviteState::Calling && !self.timed_out {
                // §17.1.1.2 Timer A: retransmit, doubling the interval.
                self.out.push_back(self.invite.clone());
                self.retransmissions += 1;
                self.retx_interval *= 2;
                self.next_retx = Some(now + self.retx_interval);
            }
        }
        if let Some(t) = self.cancel_next {
            if now >= t && !self.cancel_done {
                if let Some(c) = &self.cancel {
                    // §17.1.2.2 Timer E for the CANCEL.
                    self.out.push_back(c.clone());
                }
                self.cancel_interval = (self.cancel_interval * 2).min(T2);
                self.cancel_next = Some(now + self.cancel_interval);
            }
        }
        if !self.timed_out
            && matches!(self.state, InviteState::Calling | InviteState::Proceeding)
            && now >= self.deadline
        {
            self.timed_out = true;
            self.next_retx = None;
            self.events.push_back(InviteEvent::TimedOut { provisional: self.provisional });
            if self.provisional {
                self.send_cancel(now);
            }
            // Keep listening for late answers (a late 2xx must be ACKed and BYEd, a late 1xx
            // allows the CANCEL that §9.1 forbade before).
            self.linger_until = Some(now + 64 * T1);
        }
        if let Some(t) = self.linger_until {
            if now >= t {
                self.state = InviteState::Terminated;
                self.next_retx = None;
                self.cancel_next = None;
                self.linger_until = None;
                self.events.push_back(InviteEvent::Terminated);
            }
        }
    }

    /// A response whose Call-ID matches and whose CSeq method is INVITE or CANCEL.
    pub fn handle_response(&mut self, now: Instant, resp: &Message) {
        if self.state == InviteState::Terminated {
            return;
        }
        let Some(status) = resp.status() else { return };
        let Some((num, method)) = resp.cseq() else { return };
        if num != self.ids.cseq {
            return;
        }
        if method == "CANCEL" {
            if status >= 200 {
                self.cancel_done = true;
                self.cancel_next = None;
            }
            return;
        }
        if method != "INVITE" {
            return;
        }
        let to_value = resp.header("To").unwrap_or(&self.ids.to).to_owned();
        let to_tag = resp.to().and_then(|t| t.tag().map(str::to_owned)).unwrap_or_default();
        match status {
            100..=199 => {
                if self.state == InviteState::Calling {
                    self.state = InviteState::Proceeding;
                    self.next_retx = None;
                }
                let first = !self.provisional;
                self.provisional = true;
                if self.timed_out {
                    if first && self.cancel.is_none() {
                        self.send_cancel(now);
                    }
                } else {
                    self.events.push_back(InviteEvent::Provisional(status));
                }
            }
            200..=299 => {
                if let (InviteState::Accepted, Some(ack)) = (self.state, &self.ack) {
                    // §13.2.2.4: ACK every retransmission of the 2xx.
                    self.out.push_back(ack.clone());
                    return;
                }
                // §13.2.2.4: ACK for a 2xx is a new transaction, sent to the Contact of the 2xx.
                let uri = resp.contact().map(|c| c.uri).unwrap_or_else(|| self.ids.request_uri.clone());
                let ack = self.ids.request(
                    rsip::Method::Ack,
                    &uri,
                    &to_value,
                    self.ids.cseq,
                    &branch(fold(&self.branch) ^ 0xACC),
                    vec![],
                    None,
                );
                self.out.push_back(ack.clone());
                self.ack = Some(ack);
                self.next_retx = None;
                self.cancel_next = None;
                self.state = InviteState::Accepted;
                self.linger_until = Some(now + 64 * T1);
                if self.timed_out {
                    let bye = self.ids.request(
                        rsip::Method::Bye,
                        &uri,
                        &to_value,
                        self.ids.cseq + 1,
                        &branch(fold(&self.branch) ^ 0xB7E),
                        vec![],
                        None,
                    );
                    self.out.push_back(bye);
                    self.events.push_back(InviteEvent::LateAnswerClosed { to_tag });
                } else {
                    self.events.push_back(InviteEvent::Answered { response: Box::new(resp.clone()), to_tag });
                }
            }
            _ => {
                // §17.1.1.3: ACK a non-2xx final in the same transaction (same branch).
                let ack = self.ids.request(
                    rsip::Method::Ack,
                    &self.ids.request_uri,
                    &to_value,
                    self.ids.cseq,
                    &self.branch,
                    vec![],
                    None,
                );
                self.out.push_back(ack);
                if self.state == InviteState::Completed {
                    return;
                }
                self.next_retx = None;
                self.cancel_next = None;
                self.state = InviteState::Completed;
                // Timer D: 32 s on UDP, 0 on TCP.
                self.linger_until = Some(if self.reliable { now } else { now + Duration::from_secs(32) });
                if !self.timed_out {
                    let reason = match &resp.sip {
                        rsip::SipMessage::Response(r) => match &r.status_code {
                            rsip::StatusCode::Other(_, s) => s.clone(),
                            s => s.to_string().split_once(' ').map(|x| x.1.to_owned()).unwrap_or_default(),
                        },
                        _ => String::new(),
                    };
                    self.events.push_back(InviteEvent::Refused { status, reason });
                }
            }
        }
    }

    /// Invariants tests and fuzzers check.
    pub fn check_invariants(&self) {
        if self.cancel.is_some() {
            assert!(self.provisional, "CANCEL sent before any provisional response (RFC 3261 §9.1)");
        }
        if self.reliable {
            assert_eq!(self.retransmissions, 0, "no retransmission over a reliable transport");
        }
    }
}

fn fold(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3))
}

/// What the owner of a non-INVITE request learns.
#[derive(Debug, Clone)]
pub enum NonInviteEvent {
    Final(u16, Box<Message>),
    /// Timer F (64·T1) expired.
    TimedOut,
}

/// Non-INVITE client transaction (RFC 3261 §17.1.2): MESSAGE, BYE, CANCEL.
#[derive(Debug)]
pub struct NonInviteClient {
    request: Bytes,
    reliable: bool,
    next_retx: Option<Instant>,
    interval: Duration,
    timer_f: Instant,
    done: bool,
    out: VecDeque<Bytes>,
    events: VecDeque<NonInviteEvent>,
}

impl NonInviteClient {
    pub fn new(now: Instant, request: Bytes, reliable: bool) -> Self {
        let mut out = VecDeque::new();
        out.push_back(request.clone());
        NonInviteClient {
            request,
            reliable,
            next_retx: (!reliable).then(|| now + T1),
            interval: T1,
            timer_f: now + 64 * T1,
            done: false,
            out,
            events: VecDeque::new(),
        }
    }

    pub fn is_terminated(&self) -> bool {
        self.done
    }

    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<NonInviteEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        Some(self.next_retx.map_or(self.timer_f, |r| r.min(self.timer_f)))
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.done {
            return;
        }
        if now >= self.timer_f {
            self.done = true;
            self.events.push_back(NonInviteEvent::TimedOut);
            return;
        }
        if let Some(t) = self.next_retx {
            if now >= t && !self.reliable {
                // Timer E: double up to T2.
                self.out.push_back(self.request.clone());
                self.interval = (self.interval * 2).min(T2);
                self.next_retx = Some(now + self.interval);
            }
        }
    }

    pub fn handle_response(&mut self, now: Instant, resp: &Message) {
        if self.done {
            return;
        }
        let Some(status) = resp.status() else { return };
        if status < 200 {
            // Proceeding: retransmit at T2 (§17.1.2.2).
            if !self.reliable {
                self.interval = T2;
                self.next_retx = Some(now + T2);
            }
            return;
        }
        self.done = true;
        self.events.push_back(NonInviteEvent::Final(status, Box::new(resp.clone())));
    }
}
