//! The SIP user agent client for outbound calls over UDP, sans-IO.
//!
//! [`SipUac`] is driven like [`SipUas`](super::uas::SipUas): the driver
//! hands it the messages of its dialogs ([`SipUac::handle_message`] says
//! whether a message was one of them), calls [`SipUac::handle_timeout`] at
//! [`SipUac::next_deadline`], and sends what [`SipUac::poll_output`] says.
//! What it does of RFC 3261 over an unreliable transport:
//!
//! - [`SipUac::dial`] sends the INVITE with our SDP offer; timer A
//!   retransmits it (T1, doubling) until any response; timer B gives up
//!   after 64*T1 without one ([`UacEnd::NoResponse`]).
//! - `100` stops the retransmissions; the first `180`/`183` reports
//!   [`UacOutput::Ringing`]. Early media is never played to the agent nor
//!   answered by it: media starts with the 2xx.
//! - `2xx`: the ACK (a new transaction, to the Contact, through the
//!   Record-Route set) and [`UacOutput::Answered`] with the callee's codec.
//!   A retransmitted 2xx gets the same ACK again.
//! - A final non-2xx is ACKed in its transaction (same branch); its
//!   retransmissions are ACKed again for timer D (32 s). `401`/`407` with
//!   credentials is answered once with a new INVITE carrying the digest
//!   ([`super::digest`]); a second challenge (unless `stale`) ends the call.
//! - The ring timeout (and [`SipUac::hang_up`] before the answer) sends
//!   CANCEL once a provisional response came (RFC 3261 9.1 forbids it
//!   before); the CANCEL is retransmitted by timer E until answered; the
//!   `487` that follows is ACKed. If no final response comes 64*T1 after
//!   the CANCEL, the call is over anyway. A 2xx racing the CANCEL is
//!   ACKed and the call is ended with a BYE.
//! - BYE from the callee: `200`; our BYE ([`SipUac::hang_up`] once
//!   answered) is retransmitted by timer E until a final response, given up
//!   by timer F. A re-INVITE is answered with the same media; OPTIONS `200`.
//!
//! In-dialog requests go to the address the INVITE went to (the trunk or
//! the local carrier's engine act as the outbound proxy), with the Request-URI
//! the callee's Contact and the Route headers of its Record-Route.
//! Forked 2xx from a second callee are not supported (ignored).

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

use super::digest::{Challenge, Credentials};
use super::message::{ALLOW, BRANCH_COOKIE, SipMessage, name_addr_uri, response};
use super::refer::{Transfer, TransferOutcome, TransferTimeout, refer_headers, refer_to_uri};
use super::sdp::{Answer, Negotiated, Offer, negotiate, read_answer};
use super::uas::SipCallId;
use crate::clock::Instant;

/// The top bit of every outbound call's [`SipCallId`]: the UAS numbers its
/// calls from 1, so the two never collide in the driver's tables.
pub const OUTBOUND_ID_BIT: u64 = 1 << 63;

/// The UAC's settings.
#[derive(Debug, Clone)]
pub struct UacConfig {
    /// Our SIP address as peers reach it (Via, Contact).
    pub local: SocketAddr,
    /// RFC 3261 T1 (500 ms).
    pub t1: Duration,
    /// RFC 3261 T2 (4 s).
    pub t2: Duration,
    /// Timer D: how long a non-2xx final is re-ACKed (32 s over UDP).
    pub timer_d: Duration,
}

impl UacConfig {
    /// The RFC 3261 timer values.
    pub fn new(local: SocketAddr) -> Self {
        UacConfig {
            local,
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            timer_d: Duration::from_secs(32),
        }
    }
}

/// One call to place.
#[derive(Debug, Clone)]
pub struct Dial {
    /// Where every request of the call is sent (the trunk, the callee's engine).
    pub target: SocketAddr,
    /// The Request-URI and To URI (`sip:+15550001@trunk.example`).
    pub request_uri: String,
    /// Our From URI (`sip:+15550002@trunk.example`): the caller ID.
    pub from_uri: String,
    /// Where we receive RTP (in the SDP offer).
    pub local_rtp: SocketAddr,
    /// The account answering a 401/407, if any.
    pub credentials: Option<Credentials>,
    /// No answer within this (from the dial) cancels the call.
    pub ring_timeout: Duration,
    /// Over TCP (the driver holds the connection to `target`): Via
    /// `SIP/2.0/TCP`, Contact `;transport=tcp`.
    pub tcp: bool,
}

/// The Via transport of a call's requests.
fn transport_of(dial: &Dial) -> &'static str {
    if dial.tcp { "TCP" } else { "UDP" }
}

/// Why an outbound call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UacEnd {
    /// Answered, then the callee sent BYE.
    RemoteBye,
    /// Answered, then we hung up; `answered` is false if our BYE got no
    /// final response.
    LocalBye {
        /// A final response to our BYE came back.
        answered: bool,
    },
    /// The callee (or the trunk) answered the INVITE with this final status.
    Refused(u16),
    /// Nothing answered the INVITE (timer B).
    NoResponse,
    /// No answer within the ring timeout: we cancelled.
    RingTimeout,
    /// The application cancelled before the answer.
    Canceled,
    /// The 2xx carried no usable SDP answer: we ACKed and sent BYE.
    BadAnswer,
}

/// What the UAC wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UacOutput {
    /// Send `bytes` to `to`.
    Transmit {
        /// The destination.
        to: SocketAddr,
        /// A whole SIP message.
        bytes: Vec<u8>,
    },
    /// The callee rings (first 180 or 183 of the call).
    Ringing {
        /// The call.
        call: SipCallId,
        /// 180 or 183.
        status: u16,
        /// The response carried SDP (early media, ignored).
        early_media: bool,
    },
    /// The callee answered and we ACKed: media may start.
    Answered {
        /// The call.
        call: SipCallId,
        /// The codec and address the callee's answer chose.
        media: Negotiated,
    },
    /// Our REFER ([`SipUac::transfer`]) came to an end. On success the
    /// call is still up: the application hangs up (RFC 5589 6).
    TransferEnded {
        /// The call.
        call: SipCallId,
        /// How the transfer went.
        outcome: TransferOutcome,
    },
    /// The call is over (reported once per call).
    Ended {
        /// The call.
        call: SipCallId,
        /// Why.
        reason: UacEnd,
    },
}

/// What the UAC refuses from the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum UacError {
    /// The call is over or never existed.
    #[error("no such call")]
    UnknownCall,
    /// The call is not answered (or already leaving).
    #[error("the call cannot do that now")]
    WrongState,
    /// A transfer of the call is already under way.
    #[error("a transfer of this call is already under way")]
    TransferInProgress,
}

/// Counters of the UAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UacStats {
    /// Requests we retransmitted (timers A and E).
    pub retransmitted: u64,
    /// ACKs sent again for a retransmitted final response.
    pub reacked: u64,
    /// INVITEs re-sent with digest credentials.
    pub authenticated: u64,
}

#[derive(Debug, Clone, Copy)]
struct Retransmit {
    next: Instant,
    interval: Duration,
    give_up: Instant,
}

impl Retransmit {
    fn start(now: Instant, t1: Duration) -> Self {
        Retransmit {
            next: now + t1,
            interval: t1,
            give_up: now + 64 * t1,
        }
    }

    /// Timer A doubles without bound; timer E stops at T2.
    fn backoff(&mut self, now: Instant, cap: Option<Duration>) {
        self.interval *= 2;
        if let Some(cap) = cap {
            self.interval = self.interval.min(cap);
        }
        self.next = now + self.interval;
    }
}

#[derive(Debug)]
enum State {
    /// INVITE out, no response yet (timers A and B).
    Calling(Retransmit),
    /// A provisional response came.
    Proceeding,
    /// CANCEL out; `timer` retransmits it until `cancel_answered`.
    Canceling {
        cancel: String,
        timer: Retransmit,
        cancel_answered: bool,
        reason: UacEnd,
    },
    /// 2xx ACKed: the dialog is up.
    Confirmed,
    /// Our BYE is out (timers E and F).
    Leaving { bye: String, timer: Retransmit },
    /// Over; kept to ACK or answer retransmissions until `forget_at`.
    Closed { forget_at: Instant },
}

#[derive(Debug)]
struct Call {
    id: SipCallId,
    dial: Dial,
    call_id: String,
    local_tag: String,
    from: String,
    to: String,
    offer: String,
    cseq: u32,
    invite_branch: String,
    invite: String,
    /// ACKs of non-2xx finals by the CSeq of their INVITE (re-ACKs).
    failure_acks: Vec<(u32, String)>,
    /// The ACK of the 2xx (re-sent to its retransmissions).
    ack: Option<String>,
    remote_tag: Option<String>,
    remote_target: Option<String>,
    route: Vec<String>,
    next_cseq: u32,
    bye_branch: Option<String>,
    /// The 200 of the callee's BYE, for its retransmissions.
    bye_ok: Option<(String, String)>,
    ring_at: Instant,
    rang: bool,
    provisional: bool,
    /// Cancel asked before any provisional response: sent with the first one.
    cancel_pending: Option<UacEnd>,
    auth_tries: u32,
    ended: bool,
    state: State,
    /// Our REFER, from its sending to its final NOTIFY.
    transfer: Option<Transfer>,
}

/// The outbound-call UAC. See the module docs.
#[derive(Debug)]
pub struct SipUac {
    config: UacConfig,
    calls: HashMap<String, Call>,
    outputs: VecDeque<UacOutput>,
    next_call: u64,
    random: u64,
    stats: UacStats,
}

impl SipUac {
    /// A UAC; `seed` makes its tags, branches and Call-IDs.
    pub fn new(config: UacConfig, seed: u64) -> Self {
        SipUac {
            config,
            calls: HashMap::new(),
            outputs: VecDeque::new(),
            next_call: 1,
            random: seed.rotate_left(17) | 1,
            stats: UacStats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> UacStats {
        self.stats
    }

    /// Calls the UAC still tracks (including ended ones absorbing retransmissions).
    pub fn tracked_calls(&self) -> usize {
        self.calls.len()
    }

    /// The SIP Call-ID of a call.
    pub fn call_id(&self, call: SipCallId) -> Option<&str> {
        self.calls
            .values()
            .find(|tracked| tracked.id == call)
            .map(|tracked| tracked.call_id.as_str())
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<UacOutput> {
        self.outputs.pop_front()
    }

    /// When [`SipUac::handle_timeout`] must run next.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.calls
            .values()
            .filter_map(|call| {
                let ring = (!call.ended
                    && matches!(call.state, State::Calling(_) | State::Proceeding)
                    && call.cancel_pending.is_none())
                .then_some(call.ring_at);
                let state = match &call.state {
                    State::Calling(timer) | State::Leaving { timer, .. } => {
                        Some(timer.next.min(timer.give_up))
                    }
                    State::Canceling {
                        timer,
                        cancel_answered,
                        ..
                    } => Some(if *cancel_answered {
                        timer.give_up
                    } else {
                        timer.next.min(timer.give_up)
                    }),
                    State::Closed { forget_at } => Some(*forget_at),
                    State::Proceeding | State::Confirmed => None,
                };
                let transfer = call.transfer.as_ref().map(Transfer::deadline);
                [ring, state, transfer].into_iter().flatten().min()
            })
            .min()
    }

    fn random(&mut self) -> u64 {
        // xorshift64*, as the UAS.
        self.random ^= self.random >> 12;
        self.random ^= self.random << 25;
        self.random ^= self.random >> 27;
        self.random.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn branch(&mut self) -> String {
        format!("{BRANCH_COOKIE}{:x}", self.random())
    }

    fn transmit(&mut self, to: SocketAddr, text: String) {
        self.outputs.push_back(UacOutput::Transmit {
            to,
            bytes: text.into_bytes(),
        });
    }

    fn contact(&self, dial: &Dial) -> String {
        if dial.tcp {
            format!("<sip:callingbox@{};transport=tcp>", self.config.local)
        } else {
            format!("<sip:callingbox@{}>", self.config.local)
        }
    }

    /// Places a call: sends the INVITE now.
    pub fn dial(&mut self, now: Instant, dial: Dial) -> SipCallId {
        let id = SipCallId(OUTBOUND_ID_BIT | self.next_call);
        self.next_call += 1;
        let call_id = format!("{:016x}{:08x}@callingbox", self.random(), self.next_call);
        let local_tag = format!("{:x}", self.random());
        let offer = Offer {
            local_rtp: dial.local_rtp,
            session_id: self.random() >> 1,
        }
        .to_sdp();
        let mut call = Call {
            id,
            from: format!("<{}>;tag={local_tag}", dial.from_uri),
            to: format!("<{}>", dial.request_uri),
            ring_at: now + dial.ring_timeout,
            dial,
            call_id: call_id.clone(),
            local_tag,
            offer,
            cseq: 0,
            invite_branch: String::new(),
            invite: String::new(),
            failure_acks: Vec::new(),
            ack: None,
            remote_tag: None,
            remote_target: None,
            route: Vec::new(),
            next_cseq: 0,
            bye_branch: None,
            bye_ok: None,
            rang: false,
            provisional: false,
            cancel_pending: None,
            auth_tries: 0,
            ended: false,
            state: State::Proceeding,
            transfer: None,
        };
        self.send_invite(now, &mut call, None);
        self.calls.insert(call_id, call);
        id
    }

    /// Builds and sends the call's next INVITE (CSeq + 1, a new branch).
    fn send_invite(
        &mut self,
        now: Instant,
        call: &mut Call,
        authorization: Option<(&str, String)>,
    ) {
        call.cseq += 1;
        call.next_cseq = call.cseq + 1;
        call.invite_branch = self.branch();
        let contact = self.contact(&call.dial);
        let mut invite = String::with_capacity(1024);
        let _ = write!(
            invite,
            "INVITE {uri} SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} INVITE\r\nContact: {contact}\r\nAllow: {ALLOW}\r\n\
             User-Agent: CallingBox\r\n",
            uri = call.dial.request_uri,
            local = self.config.local,
            branch = call.invite_branch,
            from = call.from,
            to = call.to,
            call_id = call.call_id,
            cseq = call.cseq,
            transport = transport_of(&call.dial),
        );
        if let Some((name, value)) = authorization {
            let _ = write!(invite, "{name}: {value}\r\n");
        }
        let _ = write!(
            invite,
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{}",
            call.offer.len(),
            call.offer
        );
        call.invite = invite.clone();
        call.state = State::Calling(Retransmit::start(now, self.config.t1));
        self.transmit(call.dial.target, invite);
    }

    /// Ends the call from our side: CANCEL before the answer (deferred
    /// until a provisional response, RFC 3261 9.1), BYE after it.
    pub fn hang_up(&mut self, now: Instant, call: SipCallId) -> Result<(), UacError> {
        let key = self.key(call).ok_or(UacError::UnknownCall)?;
        let Some(mut tracked) = self.calls.remove(&key) else {
            return Err(UacError::UnknownCall);
        };
        let result = match tracked.state {
            State::Calling(_) if !tracked.ended => {
                tracked.cancel_pending.get_or_insert(UacEnd::Canceled);
                Ok(())
            }
            State::Proceeding if !tracked.ended => {
                self.send_cancel(now, &mut tracked, UacEnd::Canceled);
                Ok(())
            }
            State::Canceling { .. } | State::Leaving { .. } => Ok(()),
            State::Confirmed => {
                self.send_bye(now, &mut tracked);
                Ok(())
            }
            _ => Err(UacError::UnknownCall),
        };
        self.calls.insert(key, tracked);
        result
    }

    /// Blind-transfers an answered call to `destination` (a phone number
    /// at the peer's host, or a URI: [`refer_to_uri`]): sends REFER (see
    /// [`super::refer`]). The outcome comes as
    /// [`UacOutput::TransferEnded`].
    pub fn transfer(
        &mut self,
        now: Instant,
        call: SipCallId,
        destination: &str,
    ) -> Result<(), UacError> {
        let key = self.key(call).ok_or(UacError::UnknownCall)?;
        let branch = self.branch();
        let Some(mut tracked) = self.calls.remove(&key) else {
            return Err(UacError::UnknownCall);
        };
        let result = if !matches!(tracked.state, State::Confirmed) || tracked.ended {
            Err(UacError::WrongState)
        } else if tracked.transfer.is_some() {
            Err(UacError::TransferInProgress)
        } else {
            let mut text = self.in_dialog(&tracked, "REFER", tracked.next_cseq, &branch);
            let referred_by = name_addr_uri(&tracked.from)
                .unwrap_or("sip:callingbox@invalid")
                .to_owned();
            let refer_to = refer_to_uri(destination, tracked.dial.target);
            text.push_str(&refer_headers(
                &refer_to,
                &referred_by,
                &self.contact(&tracked.dial),
            ));
            tracked.next_cseq += 1;
            let timers = (self.config.t1, self.config.t2);
            let to = tracked.dial.target;
            tracked.transfer = Some(Transfer::sent(now, to, branch, text.clone(), timers));
            self.transmit(to, text);
            Ok(())
        };
        self.calls.insert(key, tracked);
        result
    }

    /// Reports a transfer's outcome and forgets the transfer.
    fn transfer_ended(&mut self, call: &mut Call, outcome: TransferOutcome) {
        call.transfer = None;
        self.outputs.push_back(UacOutput::TransferEnded {
            call: call.id,
            outcome,
        });
    }

    fn key(&self, call: SipCallId) -> Option<String> {
        self.calls
            .iter()
            .find(|(_, tracked)| tracked.id == call)
            .map(|(key, _)| key.clone())
    }

    fn send_cancel(&mut self, now: Instant, call: &mut Call, reason: UacEnd) {
        let mut cancel = String::with_capacity(512);
        let _ = write!(
            cancel,
            "CANCEL {uri} SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} CANCEL\r\nUser-Agent: CallingBox\r\nContent-Length: 0\r\n\r\n",
            uri = call.dial.request_uri,
            local = self.config.local,
            branch = call.invite_branch,
            from = call.from,
            to = call.to,
            call_id = call.call_id,
            cseq = call.cseq,
            transport = transport_of(&call.dial),
        );
        call.state = State::Canceling {
            cancel: cancel.clone(),
            timer: Retransmit::start(now, self.config.t1),
            cancel_answered: false,
            reason,
        };
        self.transmit(call.dial.target, cancel);
    }

    /// The headers every in-dialog request starts with: request line, Via,
    /// Route, From, To, Call-ID, CSeq.
    fn in_dialog(&self, call: &Call, method: &str, cseq: u32, branch: &str) -> String {
        let target = call
            .remote_target
            .clone()
            .unwrap_or_else(|| call.dial.request_uri.clone());
        let mut text = String::with_capacity(512);
        let _ = write!(
            text,
            "{method} {target} SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n",
            local = self.config.local,
            transport = transport_of(&call.dial),
        );
        for route in &call.route {
            let _ = write!(text, "Route: {route}\r\n");
        }
        let _ = write!(
            text,
            "From: {from}\r\nTo: {to};tag={tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n",
            from = call.from,
            to = call.to,
            tag = call.remote_tag.as_deref().unwrap_or_default(),
            call_id = call.call_id,
        );
        text
    }

    fn send_bye(&mut self, now: Instant, call: &mut Call) {
        let branch = self.branch();
        let mut bye = self.in_dialog(call, "BYE", call.next_cseq, &branch);
        bye.push_str("User-Agent: CallingBox\r\nContent-Length: 0\r\n\r\n");
        call.next_cseq += 1;
        call.bye_branch = Some(branch);
        call.state = State::Leaving {
            bye: bye.clone(),
            timer: Retransmit::start(now, self.config.t1),
        };
        self.transmit(call.dial.target, bye);
    }

    fn end(&mut self, call: &mut Call, reason: UacEnd) {
        if !std::mem::replace(&mut call.ended, true) {
            self.outputs.push_back(UacOutput::Ended {
                call: call.id,
                reason,
            });
        }
    }

    fn close(&self, now: Instant, call: &mut Call) {
        call.state = State::Closed {
            forget_at: now + self.config.timer_d.max(64 * self.config.t1),
        };
    }

    /// One parsed message from `source`; returns false if it is not of a
    /// call of this UAC (then it is the UAS's).
    pub fn handle_message(
        &mut self,
        now: Instant,
        source: SocketAddr,
        message: &SipMessage,
    ) -> bool {
        let Some(key) = message.call_id() else {
            return false;
        };
        let Some(mut call) = self.calls.remove(key) else {
            return false;
        };
        // Responses carry our tag in From; the callee's requests in To. A
        // call to ourselves shares the Call-ID with the UAS's side of it.
        let ours = match message.status() {
            Some(_) => message.from_tag() == Some(call.local_tag.as_str()),
            None => message.to_tag() == Some(call.local_tag.as_str()),
        };
        if ours {
            match message.status() {
                Some(code) => self.on_response(now, &mut call, code, message),
                None => self.on_request(now, source, &mut call, message),
            }
        }
        self.calls.insert(key.to_owned(), call);
        ours
    }

    fn on_response(&mut self, now: Instant, call: &mut Call, code: u16, message: &SipMessage) {
        let Some((cseq, method)) = message.cseq() else {
            return;
        };
        match method {
            "INVITE" => self.on_invite_response(now, call, code, cseq, message),
            "CANCEL" if code >= 200 => {
                if let State::Canceling {
                    cancel_answered, ..
                } = &mut call.state
                {
                    *cancel_answered = true;
                }
            }
            "REFER"
                if call
                    .transfer
                    .as_ref()
                    .is_some_and(|t| message.branch() == Some(t.branch())) =>
            {
                if let Some(outcome) = call
                    .transfer
                    .as_mut()
                    .and_then(|transfer| transfer.on_response(now, code))
                {
                    self.transfer_ended(call, outcome);
                }
            }
            "BYE" if code >= 200 && message.branch() == call.bye_branch.as_deref() => {
                if matches!(call.state, State::Leaving { .. }) {
                    self.end(call, UacEnd::LocalBye { answered: true });
                    self.close(now, call);
                }
            }
            _ => {}
        }
    }

    fn on_invite_response(
        &mut self,
        now: Instant,
        call: &mut Call,
        code: u16,
        cseq: u32,
        message: &SipMessage,
    ) {
        if (200..300).contains(&code) {
            self.on_success(now, call, cseq, message);
            return;
        }
        if code >= 300
            && let Some((_, ack)) = call.failure_acks.iter().find(|(acked, _)| *acked == cseq)
        {
            // A retransmitted final: ACK again (timer D).
            let ack = ack.clone();
            self.stats.reacked += 1;
            self.transmit(call.dial.target, ack);
            return;
        }
        if cseq != call.cseq || call.ended {
            return;
        }
        if code < 200 {
            if matches!(call.state, State::Calling(_)) {
                call.state = State::Proceeding;
            }
            call.provisional = true;
            if let Some(reason) = call.cancel_pending.take()
                && matches!(call.state, State::Proceeding)
            {
                self.send_cancel(now, call, reason);
                return;
            }
            if code > 100 && !call.rang && !matches!(call.state, State::Canceling { .. }) {
                call.rang = true;
                self.outputs.push_back(UacOutput::Ringing {
                    call: call.id,
                    status: code,
                    early_media: !message.body.trim().is_empty(),
                });
            }
            return;
        }
        // A final non-2xx: ACK it in its transaction (RFC 3261 17.1.1.3).
        let ack = self.failure_ack(call, message);
        call.failure_acks.push((cseq, ack.clone()));
        self.transmit(call.dial.target, ack);
        let canceling = match &call.state {
            State::Canceling { reason, .. } => Some(*reason),
            _ => None,
        };
        let cancelled = canceling.or(call.cancel_pending);
        let challenged = code == 401 || code == 407;
        if let Some(reason) = cancelled
            && (code == 487 || challenged)
        {
            // The 487 of our CANCEL; or a challenge not worth answering now.
            self.end(call, reason);
            self.close(now, call);
            return;
        }
        if cancelled.is_none() && challenged && self.authenticate(now, call, code, message) {
            return;
        }
        // Whatever came instead (a 486 crossing our CANCEL) says more.
        self.end(call, UacEnd::Refused(code));
        self.close(now, call);
    }

    /// Answers a 401/407 with a new INVITE; false if it cannot.
    fn authenticate(
        &mut self,
        now: Instant,
        call: &mut Call,
        code: u16,
        message: &SipMessage,
    ) -> bool {
        let Some(credentials) = call.dial.credentials.clone() else {
            return false;
        };
        let (challenge_header, answer_header) = if code == 401 {
            ("www-authenticate", "Authorization")
        } else {
            ("proxy-authenticate", "Proxy-Authorization")
        };
        let Some(challenge) = message
            .headers_named(challenge_header)
            .find_map(|value| Challenge::parse(value).ok())
        else {
            return false;
        };
        // One try per call, and one more for a stale nonce (right password).
        let allowed = call.auth_tries == 0 || (call.auth_tries == 1 && challenge.stale);
        if !allowed {
            return false;
        }
        call.auth_tries += 1;
        let cnonce = format!("{:016x}", self.random());
        let value = challenge.answer(&credentials, "INVITE", &call.dial.request_uri, &cnonce, 1);
        self.stats.authenticated += 1;
        self.send_invite(now, call, Some((answer_header, value)));
        true
    }

    fn failure_ack(&self, call: &Call, response: &SipMessage) -> String {
        let to = response.header("to").unwrap_or(&call.to);
        format!(
            "ACK {uri} SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n",
            uri = call.dial.request_uri,
            local = self.config.local,
            branch = response.branch().unwrap_or(&call.invite_branch),
            from = call.from,
            call_id = call.call_id,
            cseq = response.cseq().map_or(call.cseq, |(cseq, _)| cseq),
            transport = transport_of(&call.dial),
        )
    }

    fn on_success(&mut self, now: Instant, call: &mut Call, cseq: u32, message: &SipMessage) {
        if let Some(ack) = &call.ack {
            // A retransmitted 2xx: the same ACK (only the first dialog is kept).
            if message.to_tag() == call.remote_tag.as_deref() {
                let ack = ack.clone();
                self.stats.reacked += 1;
                self.transmit(call.dial.target, ack);
            }
            return;
        }
        if cseq != call.cseq || call.ended {
            return;
        }
        call.remote_tag = message.to_tag().map(str::to_owned);
        call.remote_target = message.contact_uri().map(str::to_owned);
        let mut route: Vec<String> = message
            .headers_named("record-route")
            .flat_map(|value| value.split(',').map(|part| part.trim().to_owned()))
            .filter(|part| !part.is_empty())
            .collect();
        route.reverse();
        call.route = route;
        let branch = self.branch();
        let mut ack = self.in_dialog(call, "ACK", cseq, &branch);
        ack.push_str("Content-Length: 0\r\n\r\n");
        call.ack = Some(ack.clone());
        self.transmit(call.dial.target, ack);
        let canceling = match &call.state {
            State::Canceling { reason, .. } => Some(*reason),
            _ => None,
        };
        if let Some(reason) = canceling.or(call.cancel_pending) {
            // The answer crossed our CANCEL: the call was still not wanted.
            self.end(call, reason);
            self.send_bye(now, call);
            return;
        }
        match read_answer(&message.body) {
            Ok(media) => {
                call.state = State::Confirmed;
                self.outputs.push_back(UacOutput::Answered {
                    call: call.id,
                    media,
                });
            }
            Err(_) => {
                self.end(call, UacEnd::BadAnswer);
                self.send_bye(now, call);
            }
        }
    }

    fn on_request(
        &mut self,
        now: Instant,
        source: SocketAddr,
        call: &mut Call,
        request: &SipMessage,
    ) {
        let method = request.method().unwrap_or_default();
        let in_dialog = call.ack.is_some();
        match method {
            "ACK" => {}
            "BYE" => {
                if let Some((branch, ok)) = &call.bye_ok
                    && request.branch() == Some(branch.as_str())
                {
                    let ok = ok.clone();
                    self.transmit(source, ok);
                    return;
                }
                if !in_dialog || call.bye_ok.is_some() {
                    let text = response(request, 481, None, source, &[], None);
                    self.transmit(source, text);
                    return;
                }
                let ok = response(request, 200, None, source, &[], None);
                call.bye_ok = Some((request.branch().unwrap_or_default().to_owned(), ok.clone()));
                self.transmit(source, ok);
                self.end(call, UacEnd::RemoteBye);
                self.close(now, call);
            }
            "INVITE" if in_dialog && matches!(call.state, State::Confirmed) => {
                // A session refresh: the same media again.
                let answer = match negotiate(&request.body) {
                    Ok(negotiated) => Some(
                        Answer {
                            negotiated,
                            local_rtp: call.dial.local_rtp,
                            session_id: 1,
                        }
                        .to_sdp(),
                    ),
                    Err(_) if request.body.trim().is_empty() => Some(call.offer.clone()),
                    Err(_) => None,
                };
                let contact = self.contact(&call.dial);
                let text = match answer {
                    Some(sdp) => response(
                        request,
                        200,
                        None,
                        source,
                        &[("Contact", &contact), ("Allow", ALLOW)],
                        Some(("application/sdp", &sdp)),
                    ),
                    None => response(request, 488, None, source, &[], None),
                };
                self.transmit(source, text);
            }
            "NOTIFY" if in_dialog && call.transfer.is_some() => {
                let text = response(request, 200, None, source, &[], None);
                self.transmit(source, text);
                if let Some(outcome) = call
                    .transfer
                    .as_mut()
                    .and_then(|transfer| transfer.on_notify(now, request))
                {
                    self.transfer_ended(call, outcome);
                }
            }
            "OPTIONS" if in_dialog => {
                let text = response(request, 200, None, source, &[("Allow", ALLOW)], None);
                self.transmit(source, text);
            }
            _ if !in_dialog => {
                let text = response(request, 481, None, source, &[], None);
                self.transmit(source, text);
            }
            _ => {
                let text = response(request, 405, None, source, &[("Allow", ALLOW)], None);
                self.transmit(source, text);
            }
        }
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let t2 = self.config.t2;
        let keys: Vec<String> = self.calls.keys().cloned().collect();
        for key in keys {
            let Some(mut call) = self.calls.remove(&key) else {
                continue;
            };
            let mut forget = false;
            if let Some(transfer) = call.transfer.as_mut().filter(|t| t.deadline() <= now) {
                match transfer.handle_timeout(now) {
                    TransferTimeout::Wait => {}
                    TransferTimeout::Resend(to, text) => {
                        self.stats.retransmitted += 1;
                        self.transmit(to, text);
                    }
                    TransferTimeout::Done(outcome) => self.transfer_ended(&mut call, outcome),
                }
            }
            let ringing = matches!(call.state, State::Calling(_) | State::Proceeding);
            if ringing && !call.ended && call.cancel_pending.is_none() && call.ring_at <= now {
                if call.provisional {
                    self.send_cancel(now, &mut call, UacEnd::RingTimeout);
                } else {
                    // RFC 3261 9.1: no CANCEL before a provisional response.
                    call.cancel_pending = Some(UacEnd::RingTimeout);
                }
            }
            match &mut call.state {
                State::Calling(timer) if timer.give_up <= now => {
                    let reason = match call.cancel_pending {
                        Some(UacEnd::Canceled) => UacEnd::Canceled,
                        _ => UacEnd::NoResponse,
                    };
                    self.end(&mut call, reason);
                    self.close(now, &mut call);
                }
                State::Calling(timer) if timer.next <= now => {
                    timer.backoff(now, None);
                    let invite = call.invite.clone();
                    self.stats.retransmitted += 1;
                    self.transmit(call.dial.target, invite);
                }
                State::Canceling { timer, reason, .. } if timer.give_up <= now => {
                    let reason = *reason;
                    self.end(&mut call, reason);
                    self.close(now, &mut call);
                }
                State::Canceling {
                    cancel,
                    timer,
                    cancel_answered: false,
                    ..
                } if timer.next <= now => {
                    timer.backoff(now, Some(t2));
                    let cancel = cancel.clone();
                    self.stats.retransmitted += 1;
                    self.transmit(call.dial.target, cancel);
                }
                State::Leaving { timer, .. } if timer.give_up <= now => {
                    self.end(&mut call, UacEnd::LocalBye { answered: false });
                    forget = true;
                }
                State::Leaving { bye, timer } if timer.next <= now => {
                    timer.backoff(now, Some(t2));
                    let bye = bye.clone();
                    self.stats.retransmitted += 1;
                    self.transmit(call.dial.target, bye);
                }
                State::Closed { forget_at } if *forget_at <= now => forget = true,
                _ => {}
            }
            if !forget {
                self.calls.insert(key, call);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::message::StartLine;
    use super::*;

    const ANSWER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
        t=0 0\r\nm=audio 6000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\n";

    fn trunk() -> SocketAddr {
        "127.0.0.1:5070".parse().expect("addr")
    }

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn uac() -> SipUac {
        SipUac::new(UacConfig::new("127.0.0.1:5060".parse().expect("addr")), 7)
    }

    fn dial(credentials: Option<Credentials>) -> Dial {
        Dial {
            target: trunk(),
            request_uri: "sip:+15550100@127.0.0.1:5070".into(),
            from_uri: "sip:+15550199@127.0.0.1:5060".into(),
            local_rtp: "127.0.0.1:40000".parse().expect("addr"),
            credentials,
            ring_timeout: Duration::from_secs(20),
            tcp: false,
        }
    }

    /// Drains the outputs: (the messages sent, other outputs).
    fn drain(uac: &mut SipUac) -> (Vec<SipMessage>, Vec<UacOutput>) {
        let mut sent = Vec::new();
        let mut other = Vec::new();
        while let Some(output) = uac.poll_output() {
            match output {
                UacOutput::Transmit { to, bytes } => {
                    assert_eq!(to, trunk());
                    sent.push(SipMessage::parse(&bytes).expect("we send valid SIP"));
                }
                output => other.push(output),
            }
        }
        (sent, other)
    }

    fn names(sent: &[SipMessage]) -> Vec<String> {
        sent.iter()
            .map(|message| match message.status() {
                Some(code) => code.to_string(),
                None => message.method().unwrap_or_default().to_owned(),
            })
            .collect()
    }

    /// The callee's response to `request`.
    fn reply(
        request: &SipMessage,
        code: u16,
        extra: &[(&str, &str)],
        body: Option<&str>,
    ) -> SipMessage {
        let text = response(
            request,
            code,
            Some("callee"),
            "127.0.0.1:5060".parse().expect("addr"),
            extra,
            body.map(|body| ("application/sdp", body)),
        );
        SipMessage::parse(text.as_bytes()).expect("parses")
    }

    /// Dials and returns the call and its INVITE.
    fn invite(uac: &mut SipUac, credentials: Option<Credentials>) -> (SipCallId, SipMessage) {
        let call = uac.dial(at(0), dial(credentials));
        let (mut sent, other) = drain(uac);
        assert!(other.is_empty());
        assert_eq!(names(&sent), vec!["INVITE"]);
        let invite = sent.remove(0);
        assert!(
            invite.body.contains("RTP/AVP 96 9 0 8 101 102"),
            "{}",
            invite.body
        );
        assert_eq!(invite.cseq(), Some((1, "INVITE")));
        assert_eq!(invite.request_user(), Some("+15550100"));
        (call, invite)
    }

    fn feed(uac: &mut SipUac, ms: u64, message: &SipMessage) -> (Vec<SipMessage>, Vec<UacOutput>) {
        assert!(
            uac.handle_message(at(ms), trunk(), message),
            "not ours: {message:?}"
        );
        drain(uac)
    }

    #[test]
    fn timer_a_retransmits_the_invite_until_timer_b_gives_up() {
        let mut uac = uac();
        let (call, _) = invite(&mut uac, None);
        let mut sent_at = Vec::new();
        let mut ended = Vec::new();
        while let Some(next) = uac.next_deadline() {
            uac.handle_timeout(next);
            let (sent, other) = drain(&mut uac);
            if !sent.is_empty() {
                sent_at.push(next.since_epoch().as_millis());
            }
            ended.extend(other);
        }
        // T1 doubling, no cap: 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s; B at 32 s.
        assert_eq!(sent_at, vec![500, 1_500, 3_500, 7_500, 15_500, 31_500]);
        assert_eq!(
            ended,
            vec![UacOutput::Ended {
                call,
                reason: UacEnd::NoResponse
            }]
        );
        assert_eq!(uac.tracked_calls(), 0);
    }

    #[test]
    fn ringing_then_200_is_acked_answered_and_reacked() {
        let mut uac = uac();
        let (call, invite) = invite(&mut uac, None);
        assert_eq!(
            feed(&mut uac, 10, &reply(&invite, 100, &[], None)).0.len(),
            0
        );
        // 100 stops timer A.
        uac.handle_timeout(at(600));
        assert!(drain(&mut uac).0.is_empty());
        let (sent, other) = feed(&mut uac, 20, &reply(&invite, 180, &[], None));
        assert!(sent.is_empty());
        assert_eq!(
            other,
            vec![UacOutput::Ringing {
                call,
                status: 180,
                early_media: false
            }]
        );
        // A second 180 or a 183 with early media reports nothing more.
        let early = reply(&invite, 183, &[], Some(ANSWER));
        assert_eq!(feed(&mut uac, 30, &early), (vec![], vec![]));
        let ok = reply(
            &invite,
            200,
            &[
                ("Contact", "<sip:callee@127.0.0.1:5070;transport=udp>"),
                ("Record-Route", "<sip:p1@10.0.0.1;lr>, <sip:p2@10.0.0.2;lr>"),
            ],
            Some(ANSWER),
        );
        let (sent, other) = feed(&mut uac, 5_000, &ok);
        assert_eq!(names(&sent), vec!["ACK"]);
        let ack = &sent[0];
        assert!(
            matches!(&ack.start, StartLine::Request { uri, .. } if uri == "sip:callee@127.0.0.1:5070;transport=udp")
        );
        assert_eq!(ack.to_tag(), Some("callee"));
        assert_eq!(ack.cseq(), Some((1, "ACK")));
        assert_ne!(
            ack.branch(),
            invite.branch(),
            "a 2xx ACK is its own transaction"
        );
        let routes: Vec<_> = ack.headers_named("route").collect();
        assert_eq!(routes, vec!["<sip:p2@10.0.0.2;lr>", "<sip:p1@10.0.0.1;lr>"]);
        let [
            UacOutput::Answered {
                call: answered,
                media,
            },
        ] = other.as_slice()
        else {
            panic!("{other:?}");
        };
        assert_eq!(*answered, call);
        assert_eq!(media.codec.payload_type, 8);
        assert_eq!(media.telephone_event, Some(101));
        assert_eq!(media.remote_rtp.port(), 6000);
        // The ring timeout no longer applies; a retransmitted 200: same ACK.
        assert_eq!(uac.next_deadline(), None);
        let (again, other) = feed(&mut uac, 5_500, &ok);
        assert_eq!(again, sent);
        assert!(other.is_empty());
        assert_eq!(uac.stats().reacked, 1);
    }

    #[test]
    fn busy_is_acked_in_its_transaction_and_its_retransmission_reacked() {
        let mut uac = uac();
        let (call, invite) = invite(&mut uac, None);
        let busy = reply(&invite, 486, &[], None);
        let (sent, other) = feed(&mut uac, 100, &busy);
        assert_eq!(names(&sent), vec!["ACK"]);
        assert_eq!(sent[0].branch(), invite.branch());
        assert_eq!(sent[0].to_tag(), Some("callee"));
        assert_eq!(sent[0].cseq(), Some((1, "ACK")));
        assert_eq!(
            other,
            vec![UacOutput::Ended {
                call,
                reason: UacEnd::Refused(486)
            }]
        );
        let (again, other) = feed(&mut uac, 600, &busy);
        assert_eq!(names(&again), vec!["ACK"]);
        assert!(other.is_empty());
        // Timer D forgets it; nothing is retransmitted meanwhile.
        uac.handle_timeout(at(20_000));
        assert!(drain(&mut uac).0.is_empty());
        uac.handle_timeout(at(40_000));
        assert_eq!(uac.tracked_calls(), 0);
        assert!(!uac.handle_message(at(40_001), trunk(), &busy));
    }

    #[test]
    fn the_ring_timeout_cancels_and_the_487_ends_the_call() {
        let mut uac = uac();
        let (call, invite) = invite(&mut uac, None);
        feed(&mut uac, 50, &reply(&invite, 180, &[], None));
        assert_eq!(uac.next_deadline(), Some(at(20_000)));
        uac.handle_timeout(at(20_000));
        let (sent, _) = drain(&mut uac);
        assert_eq!(names(&sent), vec!["CANCEL"]);
        let cancel = &sent[0];
        assert_eq!(cancel.branch(), invite.branch());
        assert_eq!(cancel.cseq(), Some((1, "CANCEL")));
        assert_eq!(cancel.to_tag(), None);
        // Timer E retransmits the CANCEL until its 200.
        uac.handle_timeout(at(20_500));
        assert_eq!(names(&drain(&mut uac).0), vec!["CANCEL"]);
        assert_eq!(
            feed(&mut uac, 20_600, &reply(cancel, 200, &[], None)),
            (vec![], vec![])
        );
        uac.handle_timeout(at(21_500));
        assert!(drain(&mut uac).0.is_empty());
        let (sent, other) = feed(&mut uac, 21_600, &reply(&invite, 487, &[], None));
        assert_eq!(names(&sent), vec!["ACK"]);
        assert_eq!(
            other,
            vec![UacOutput::Ended {
                call,
                reason: UacEnd::RingTimeout
            }]
        );
    }

    #[test]
    fn a_cancel_before_any_provisional_waits_for_one() {
        let mut uac = uac();
        let (call, invite) = invite(&mut uac, None);
        uac.hang_up(at(100), call).expect("hang up");
        assert!(drain(&mut uac).0.is_empty(), "no CANCEL before a 1xx");
        let (sent, _) = feed(&mut uac, 200, &reply(&invite, 100, &[], None));
        assert_eq!(names(&sent), vec!["CANCEL"]);
        // The 200 crossed the CANCEL: ACK it, then BYE; the call was abandoned.
        let (sent, other) = feed(&mut uac, 300, &reply(&invite, 200, &[], Some(ANSWER)));
        assert_eq!(names(&sent), vec!["ACK", "BYE"]);
        assert_eq!(
            other,
            vec![UacOutput::Ended {
                call,
                reason: UacEnd::Canceled
            }]
        );
        let bye = &sent[1];
        assert_eq!(bye.cseq(), Some((2, "BYE")));
        assert_eq!(
            feed(&mut uac, 400, &reply(bye, 200, &[], None)),
            (vec![], vec![])
        );
    }

    #[test]
    fn a_digest_challenge_is_answered_once() {
        let mut uac = uac();
        let credentials = Credentials {
            username: "alice".into(),
            password: "secret".into(),
        };
        let (call, invite) = invite(&mut uac, Some(credentials));
        let challenge = "Digest realm=\"trunk\", nonce=\"n1\", qop=\"auth\"";
        let unauthorized = reply(&invite, 401, &[("WWW-Authenticate", challenge)], None);
        let (sent, other) = feed(&mut uac, 100, &unauthorized);
        assert!(other.is_empty(), "{other:?}");
        assert_eq!(names(&sent), vec!["ACK", "INVITE"]);
        let second = &sent[1];
        assert_eq!(second.cseq(), Some((2, "INVITE")));
        assert_eq!(second.call_id(), invite.call_id());
        assert_eq!(second.from_tag(), invite.from_tag());
        assert_ne!(second.branch(), invite.branch());
        let authorization = second.header("authorization").expect("credentials");
        assert!(
            authorization.contains("username=\"alice\""),
            "{authorization}"
        );
        assert!(authorization.contains("uri=\"sip:+15550100@127.0.0.1:5070\""));
        assert!(authorization.contains("qop=auth"));
        // The first 401 retransmitted: re-ACKed, not answered again.
        let (sent_again, _) = feed(&mut uac, 150, &unauthorized);
        assert_eq!(names(&sent_again), vec!["ACK"]);
        assert_eq!(sent_again[0].cseq(), Some((1, "ACK")));
        // A second challenge (wrong password) ends the call.
        let (sent, other) = feed(
            &mut uac,
            200,
            &reply(second, 401, &[("WWW-Authenticate", challenge)], None),
        );
        assert_eq!(names(&sent), vec!["ACK"]);
        assert_eq!(
            other,
            vec![UacOutput::Ended {
                call,
                reason: UacEnd::Refused(401)
            }]
        );
        assert_eq!(uac.stats().authenticated, 1);
    }

    #[test]
    fn a_challenge_without_credentials_is_a_refusal() {
        let mut uac = uac();
        let (call, invite) = invite(&mut uac, None);
        let required = reply(
            &invite,
            407,
            &[("Proxy-Authenticate", "Digest realm=\"x\", nonce=\"y\"")],
            None,
        );
        let (_, other) = feed(&mut uac, 100, &required);
        assert_eq!(
            other,
            vec![UacOutput::Ended {
                call,
                reason: UacEnd::Refused(407)
            }]
        );
    }

    /// Dials and gets answered: the call, the INVITE and the 200.
    fn answered(uac: &mut SipUac) -> (SipCallId, SipMessage) {
        let (call, invite) = invite(uac, None);
        let ok = reply(
            &invite,
            200,
            &[("Contact", "<sip:callee@127.0.0.1:5070>")],
            Some(ANSWER),
        );
        let (_, other) = feed(uac, 100, &ok);
        assert!(matches!(other.as_slice(), [UacOutput::Answered { .. }]));
        (call, invite)
    }

    /// A request from the callee in the dialog.
    fn from_callee(invite: &SipMessage, method: &str, branch: &str, cseq: u32) -> SipMessage {
        let text = format!(
            "{method} sip:callingbox@127.0.0.1:5060 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{branch}\r\n\
             From: {to};tag=callee\r\nTo: {from}\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n",
            to = invite.header("to").expect("to"),
            from = invite.header("from").expect("from"),
            call_id = invite.call_id().expect("call-id"),
        );
        SipMessage::parse(text.as_bytes()).expect("parses")
    }

    #[test]
    fn the_callees_bye_gets_200_once_and_again_for_its_retransmission() {
        let mut uac = uac();
        let (call, invite) = answered(&mut uac);
        let bye = from_callee(&invite, "BYE", "b1", 1);
        let (sent, other) = feed(&mut uac, 1_000, &bye);
        assert_eq!(names(&sent), vec!["200"]);
        assert_eq!(
            other,
            vec![UacOutput::Ended {
                call,
                reason: UacEnd::RemoteBye
            }]
        );
        let (sent, other) = feed(&mut uac, 1_500, &bye);
        assert_eq!(names(&sent), vec!["200"]);
        assert!(other.is_empty());
        // An OPTIONS out of any dialog of ours is not ours.
        let stray = SipMessage::parse(
            b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKq\r\n\
              From: <sip:a@b>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\nCall-ID: other\r\n\
              CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        )
        .expect("parses");
        assert!(!uac.handle_message(at(2_000), trunk(), &stray));
    }

    #[test]
    fn our_bye_is_retransmitted_until_answered_or_given_up() {
        let mut uac = uac();
        let (call, _) = answered(&mut uac);
        uac.hang_up(at(1_000), call).expect("hang up");
        let (sent, _) = drain(&mut uac);
        assert_eq!(names(&sent), vec!["BYE"]);
        let bye = sent[0].clone();
        assert!(
            matches!(&bye.start, StartLine::Request { uri, .. } if uri == "sip:callee@127.0.0.1:5070")
        );
        assert_eq!(bye.to_tag(), Some("callee"));
        uac.handle_timeout(at(1_500));
        assert_eq!(names(&drain(&mut uac).0), vec!["BYE"]);
        let (_, other) = feed(&mut uac, 1_600, &reply(&bye, 200, &[], None));
        assert_eq!(
            other,
            vec![UacOutput::Ended {
                call,
                reason: UacEnd::LocalBye { answered: true }
            }]
        );
        // Unanswered, timer F gives up after 64*T1.
        let mut uac = super::tests::uac();
        let (call, _) = answered(&mut uac);
        uac.hang_up(at(1_000), call).expect("hang up");
        let mut ended = Vec::new();
        while let Some(next) = uac.next_deadline() {
            uac.handle_timeout(next);
            ended.extend(drain(&mut uac).1);
        }
        assert_eq!(
            ended,
            vec![UacOutput::Ended {
                call,
                reason: UacEnd::LocalBye { answered: false }
            }]
        );
        assert!(uac.hang_up(at(99_000), call).is_err());
    }

    #[test]
    fn a_200_without_a_usable_answer_is_acked_and_hung_up() {
        let mut uac = uac();
        let (call, invite) = invite(&mut uac, None);
        let opus = ANSWER.replace("RTP/AVP 8 101", "RTP/AVP 96");
        let (sent, other) = feed(&mut uac, 100, &reply(&invite, 200, &[], Some(&opus)));
        assert_eq!(names(&sent), vec!["ACK", "BYE"]);
        assert_eq!(
            other,
            vec![UacOutput::Ended {
                call,
                reason: UacEnd::BadAnswer
            }]
        );
    }

    #[test]
    fn garbage_responses_never_panic() {
        let mut uac = uac();
        let (_, invite) = invite(&mut uac, None);
        let ok = response(
            &invite,
            200,
            Some("t"),
            trunk(),
            &[("Record-Route", ",,,"), ("Contact", "<")],
            Some(("application/sdp", "v=0\r\nm=")),
        );
        for end in 0..ok.len() {
            if let Ok(message) = SipMessage::parse(&ok.as_bytes()[..end]) {
                uac.handle_message(at(10), trunk(), &message);
            }
        }
        drain(&mut uac);
    }
}
