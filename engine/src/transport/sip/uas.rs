//! The SIP user agent server for inbound calls over UDP, sans-IO.
//!
//! [`SipUas`] takes datagrams and the time, and queues what to send and
//! what happened ([`UasOutput`]); the driver feeds it and calls
//! [`SipUas::handle_timeout`] at [`SipUas::next_deadline`]. It implements
//! what an answering UA needs of RFC 3261 over an unreliable transport:
//!
//! - INVITE: `100 Trying` at once, then [`UasOutput::Incoming`]; the driver
//!   binds RTP and [`SipUas::accept`]s (`180 Ringing`, then `200 OK` with
//!   the SDP answer, at once or after `answer_after`) or
//!   [`SipUas::reject`]s. The 200 is retransmitted (T1 doubling to T2) until
//!   the ACK, for at most 64*T1 (then the call is ended with a BYE); the ACK
//!   reports [`UasOutput::Answered`]: only then does the agent speak.
//! - A final non-2xx to an INVITE (404 unknown number, 488 no common codec,
//!   487 after CANCEL, ...) is retransmitted by timer G until the ACK, given
//!   up by timer H (64*T1); ACK retransmissions are absorbed for timer I (T4).
//! - CANCEL of a ringing INVITE: 200 for the CANCEL, 487 for the INVITE.
//! - BYE: 200, the call ends. Our own BYE ([`SipUas::hang_up`]) is
//!   retransmitted by timer E until a final response, or given up by timer F.
//! - OPTIONS: 200. Other methods: 405. Non-INVITE responses are replayed to
//!   retransmitted requests for timer J (64*T1).
//! - Bytes that are not SIP are dropped; a request missing a mandatory
//!   header, or whose body is not what its Content-Length says (RFC 3261,
//!   18.3), is answered 400. Nothing from the network panics.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

use super::message::{BRANCH_COOKIE, ParseError, SipMessage, name_addr_uri, response};
use super::refer::{Transfer, TransferOutcome, TransferTimeout, refer_headers, refer_to_uri};
use super::reinvite::{MediaUpdate, PendingReinvite, Reoffer, read_reoffer};
use super::session_timer::{
    SessionTimer, SessionTimerConfig, TimerTerms, allows_update, negotiate_timer, read_refresh,
    request_header, response_terms,
};

/// The methods the UAS handles (UPDATE: session refreshes, RFC 4028).
const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, NOTIFY";
use super::sdp::{Answer, Negotiated, SdpError, negotiate};
use crate::clock::Instant;

/// Identifies a call of one [`SipUas`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SipCallId(pub u64);

/// The UAS's settings.
#[derive(Debug, Clone)]
pub struct UasConfig {
    /// Our SIP address as peers reach it (Contact, Via of our BYE).
    pub local: SocketAddr,
    /// The numbers (Request-URI users) we answer; empty answers any.
    pub numbers: Vec<String>,
    /// Ringing time before the 200 OK.
    pub answer_after: Duration,
    /// RFC 3261 T1: the round-trip estimate (500 ms).
    pub t1: Duration,
    /// RFC 3261 T2: the longest retransmit interval (4 s).
    pub t2: Duration,
    /// RFC 3261 T4: how long the network keeps a message (5 s).
    pub t4: Duration,
    /// Session timers (RFC 4028).
    pub session_timer: SessionTimerConfig,
}

impl UasConfig {
    /// The RFC 3261 timer values, answering at once, any number.
    pub fn new(local: SocketAddr) -> Self {
        UasConfig {
            local,
            numbers: Vec::new(),
            answer_after: Duration::ZERO,
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            session_timer: SessionTimerConfig::default(),
        }
    }
}

/// A call offered to the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingCall {
    /// The call.
    pub call: SipCallId,
    /// The SIP Call-ID.
    pub call_id: String,
    /// The From header (the caller).
    pub from: String,
    /// The To header (who was called).
    pub to: String,
    /// The called number (Request-URI user).
    pub number: Option<String>,
    /// Where the INVITE came from.
    pub source: SocketAddr,
    /// The media agreed from the SDP offer.
    pub media: Negotiated,
}

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEnd {
    /// The peer sent BYE.
    RemoteBye,
    /// The peer cancelled before the answer.
    Canceled,
    /// We hung up; `answered` is false if our BYE got no final response.
    LocalBye {
        /// A final response to our BYE came back.
        answered: bool,
    },
    /// The ACK of our 200 never came (64*T1).
    AckTimeout,
    /// We refused the call with this final status.
    Rejected(u16),
    /// The session timer ran out (no refresh from the peer, or ours
    /// failed): we sent BYE.
    SessionExpired,
}

/// What the UAS wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UasOutput {
    /// Send `bytes` to `to`.
    Transmit {
        /// The destination.
        to: SocketAddr,
        /// A whole SIP message.
        bytes: Vec<u8>,
    },
    /// A new call: answer it with [`SipUas::accept`] or [`SipUas::reject`].
    Incoming(IncomingCall),
    /// The ACK of our 200 came: media may start.
    Answered(SipCallId),
    /// A re-INVITE changed the call's media (hold, resume, a new address).
    MediaChanged {
        /// The call.
        call: SipCallId,
        /// What the media does now.
        update: MediaUpdate,
    },
    /// Our REFER ([`SipUas::transfer`]) came to an end. On success the
    /// call is still up: the application hangs up (RFC 5589 6).
    TransferEnded {
        /// The call.
        call: SipCallId,
        /// How the transfer went.
        outcome: TransferOutcome,
    },
    /// The call is over (reported once per call that was [`UasOutput::Incoming`]).
    Ended {
        /// The call.
        call: SipCallId,
        /// Why.
        reason: CallEnd,
    },
}

/// What the UAS refuses from the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum UasError {
    /// The call is gone (cancelled, ended) or never existed.
    #[error("no such call")]
    UnknownCall,
    /// The call is not in a state that allows this.
    #[error("the call cannot do that now")]
    WrongState,
    /// A transfer of the call is already under way.
    #[error("a transfer of this call is already under way")]
    TransferInProgress,
}

/// Counters of the UAS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UasStats {
    /// Datagrams that were not SIP (dropped).
    pub unparsable: u64,
    /// Requests answered 400.
    pub bad_requests: u64,
    /// Retransmitted requests answered from the transaction state.
    pub retransmissions_absorbed: u64,
    /// Messages we retransmitted (timers E, G and the 2xx).
    pub retransmitted: u64,
}

#[derive(Debug)]
enum State {
    /// Offered to the application, waiting for accept or reject.
    Offered,
    /// 180 sent; the 200 leaves at `answer_at`.
    Ringing { answer_at: Instant },
    /// 200 sent, waiting for the ACK.
    Answering(Retransmit),
    /// ACK received.
    Confirmed,
    /// A final non-2xx sent, waiting for the ACK (timers G and H).
    Rejecting(Retransmit),
    /// The ACK of the non-2xx came: absorbing ACK retransmissions (timer I).
    Rejected { forget_at: Instant },
    /// Our BYE is out (timers E and F).
    Leaving { bye: String, timer: Retransmit },
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

    fn backoff(&mut self, now: Instant, t2: Duration) {
        self.interval = (self.interval * 2).min(t2);
        self.next = now + self.interval;
    }
}

#[derive(Debug)]
struct Call {
    id: SipCallId,
    invite: SipMessage,
    invite_branch: String,
    source: SocketAddr,
    to_tag: String,
    media: Negotiated,
    /// The last response to the INVITE, replayed to its retransmissions.
    last_response: Option<String>,
    answer_sdp: Option<String>,
    next_cseq: u32,
    bye_branch: Option<String>,
    /// Whether the application saw it (it then gets exactly one `Ended`).
    offered: bool,
    state: State,
    /// Our RTP address and `o=` session id and version, for the answers
    /// to re-INVITEs.
    local_rtp: Option<SocketAddr>,
    session_id: u64,
    sdp_version: u64,
    /// A re-INVITE answered, waiting for its ACK.
    reinvite: Option<PendingReinvite>,
    /// The session timer (RFC 4028), if one was agreed.
    timer: Option<SessionTimer>,
    /// The peer allows UPDATE: our refreshes use it, else a re-INVITE.
    peer_allows_update: bool,
    /// Our refresh in flight.
    refresh: Option<Refresh>,
    /// Our REFER, from its sending to its final NOTIFY.
    transfer: Option<Transfer>,
    /// No refresh of ours before this (after a 491 or a refusal).
    refresh_not_before: Option<Instant>,
}

/// Our session refresh (UPDATE or re-INVITE) awaiting its response.
#[derive(Debug)]
struct Refresh {
    branch: String,
    cseq: u32,
    invite: bool,
    text: String,
    timer: Retransmit,
}

/// A response of a non-INVITE server transaction, kept for timer J.
#[derive(Debug)]
struct Replay {
    to: SocketAddr,
    response: String,
    forget_at: Instant,
}

/// The inbound-call UAS. See the module docs.
#[derive(Debug)]
pub struct SipUas {
    config: UasConfig,
    calls: HashMap<String, Call>,
    replays: HashMap<(String, String), Replay>,
    outputs: VecDeque<UasOutput>,
    next_call: u64,
    random: u64,
    stats: UasStats,
}

impl SipUas {
    /// A UAS; `seed` makes its tags and branches (random in production,
    /// fixed in tests).
    pub fn new(config: UasConfig, seed: u64) -> Self {
        SipUas {
            config,
            calls: HashMap::new(),
            replays: HashMap::new(),
            outputs: VecDeque::new(),
            next_call: 1,
            random: seed | 1,
            stats: UasStats::default(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &UasConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> UasStats {
        self.stats
    }

    /// Calls (and rejected INVITEs) the UAS still tracks.
    pub fn tracked_calls(&self) -> usize {
        self.calls.len()
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<UasOutput> {
        self.outputs.pop_front()
    }

    /// When [`SipUas::handle_timeout`] must run next.
    pub fn next_deadline(&self) -> Option<Instant> {
        let calls = self.calls.values().filter_map(|call| match &call.state {
            State::Offered | State::Confirmed => None,
            State::Ringing { answer_at } => Some(*answer_at),
            State::Answering(timer) | State::Rejecting(timer) | State::Leaving { timer, .. } => {
                Some(timer.next.min(timer.give_up))
            }
            State::Rejected { forget_at } => Some(*forget_at),
        });
        let reinvites = self
            .calls
            .values()
            .filter_map(|call| call.reinvite.as_ref().map(PendingReinvite::deadline));
        let timers = self.calls.values().filter_map(timer_deadline);
        let replays = self.replays.values().map(|replay| replay.forget_at);
        let transfers = self
            .calls
            .values()
            .filter_map(|call| call.transfer.as_ref().map(Transfer::deadline));
        calls
            .chain(reinvites)
            .chain(timers)
            .chain(replays)
            .chain(transfers)
            .min()
    }

    fn random(&mut self) -> u64 {
        // xorshift64*: unique enough for tags and branches.
        self.random ^= self.random >> 12;
        self.random ^= self.random << 25;
        self.random ^= self.random >> 27;
        self.random.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn transmit(&mut self, to: SocketAddr, text: String) {
        self.outputs.push_back(UasOutput::Transmit {
            to,
            bytes: text.into_bytes(),
        });
    }

    /// One datagram from `source` at `now`.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, bytes: &[u8]) {
        let message = match SipMessage::parse(bytes) {
            Ok(message) => message,
            Err(error) => {
                self.stats.unparsable += 1;
                // A request whose body is not what its Content-Length says
                // (bad, or a datagram cut short) gets 400 (RFC 3261, 18.3).
                if error == ParseError::ContentLength
                    && let Ok(head) = SipMessage::parse_head(bytes)
                    && head.method().is_some_and(|method| method != "ACK")
                    && head.missing_mandatory().is_none()
                {
                    self.stats.bad_requests += 1;
                    let text = response(&head, 400, None, source, &[], None);
                    let text = text.replacen("400 Bad Request", "400 Bad Content-Length", 1);
                    self.transmit(source, text);
                }
                return;
            }
        };
        if message.status().is_some() {
            self.on_response(now, &message);
            return;
        }
        if let Some(missing) = message.missing_mandatory() {
            self.stats.bad_requests += 1;
            // Without a Via there is nowhere to send an answer.
            if missing != "Via" && message.method() != Some("ACK") {
                let text = response(&message, 400, None, source, &[], None);
                let text = text.replacen("400 Bad Request", &format!("400 Missing {missing}"), 1);
                self.transmit(source, text);
            }
            return;
        }
        let method = message.method().unwrap_or_default().to_owned();
        if method != "INVITE" && method != "ACK" && self.replay(&message, &method) {
            return;
        }
        match method.as_str() {
            "INVITE" => self.on_invite(now, source, message),
            "ACK" => self.on_ack(now, &message),
            "CANCEL" => self.on_cancel(now, source, &message),
            "BYE" => self.on_bye(now, source, &message),
            "UPDATE" => self.on_update(now, source, &message),
            "NOTIFY" => self.on_notify(now, source, &message),
            "OPTIONS" => {
                let text = response(
                    &message,
                    200,
                    Some(&self.new_tag()),
                    source,
                    &[("Allow", ALLOW), ("Accept", "application/sdp")],
                    None,
                );
                self.answer_non_invite(now, source, &message, &method, text);
            }
            _ => {
                let text = response(
                    &message,
                    405,
                    Some(&self.new_tag()),
                    source,
                    &[("Allow", ALLOW)],
                    None,
                );
                self.answer_non_invite(now, source, &message, &method, text);
            }
        }
    }

    fn new_tag(&mut self) -> String {
        format!("{:x}", self.random())
    }

    /// Replays the response of a retransmitted non-INVITE request.
    fn replay(&mut self, message: &SipMessage, method: &str) -> bool {
        let Some(branch) = message.branch() else {
            return false;
        };
        let Some(replay) = self.replays.get(&(branch.to_owned(), method.to_owned())) else {
            return false;
        };
        let (to, text) = (replay.to, replay.response.clone());
        self.stats.retransmissions_absorbed += 1;
        self.transmit(to, text);
        true
    }

    fn answer_non_invite(
        &mut self,
        now: Instant,
        source: SocketAddr,
        message: &SipMessage,
        method: &str,
        text: String,
    ) {
        if let Some(branch) = message.branch() {
            self.replays.insert(
                (branch.to_owned(), method.to_owned()),
                Replay {
                    to: source,
                    response: text.clone(),
                    forget_at: now + 64 * self.config.t1,
                },
            );
        }
        self.transmit(source, text);
    }

    fn on_invite(&mut self, now: Instant, source: SocketAddr, invite: SipMessage) {
        let Some(call_id) = invite.call_id().map(str::to_owned) else {
            return;
        };
        // A new INVITE (higher CSeq) for a Call-ID we refused, as after a
        // 422 (RFC 4028 section 6): a new call; the refused one is done.
        let cseq = |message: &SipMessage| message.cseq().map(|(n, _)| n);
        if let Some(call) = self.calls.get(&call_id)
            && matches!(call.state, State::Rejecting(_) | State::Rejected { .. })
            && invite.to_tag().is_none()
            && invite.branch() != Some(call.invite_branch.as_str())
            && cseq(&invite) > cseq(&call.invite)
        {
            self.calls.remove(&call_id);
        }
        if let Some(call) = self.calls.get(&call_id) {
            let same_transaction = invite.branch() == Some(call.invite_branch.as_str());
            if same_transaction || invite.to_tag().is_none() {
                // A retransmission: the last response again.
                if let Some(last) = call.last_response.clone() {
                    self.stats.retransmissions_absorbed += 1;
                    self.transmit(source, last);
                }
                return;
            }
            self.on_reinvite(now, source, &invite, &call_id);
            return;
        }
        if invite.to_tag().is_some() {
            let text = response(&invite, 481, None, source, &[], None);
            self.transmit(source, text);
            return;
        }
        let to_tag = self.new_tag();
        let trying = response(&invite, 100, None, source, &[], None);
        self.transmit(source, trying.clone());
        let number = invite.request_user().map(str::to_owned);
        let known = self.config.numbers.is_empty()
            || number
                .as_deref()
                .is_some_and(|number| self.config.numbers.iter().any(|n| n == number));
        let media = match (known, negotiate(&invite.body)) {
            (false, _) => Err(404),
            (true, Ok(media)) => Ok(media),
            (true, Err(SdpError::Malformed(_))) if !invite.body.trim().is_empty() => Err(400),
            // No offer (late offer is not supported), no audio, no G.711.
            (true, Err(_)) => Err(488),
        };
        // RFC 4028: an interval under our Min-SE is refused with 422.
        let timer = negotiate_timer(&self.config.session_timer, &invite);
        let media = match (media, &timer) {
            (Ok(_), Err(_)) => Err(422),
            (media, _) => media,
        };
        let timer = timer
            .ok()
            .flatten()
            .map(|terms| SessionTimer::new(terms, now));
        let peer_allows_update = allows_update(&invite);
        let id = SipCallId(self.next_call);
        self.next_call += 1;
        let call = Call {
            id,
            invite_branch: invite.branch().unwrap_or_default().to_owned(),
            source,
            to_tag,
            media: media.unwrap_or(PLACEHOLDER_MEDIA),
            last_response: Some(trying),
            answer_sdp: None,
            next_cseq: 1,
            bye_branch: None,
            offered: media.is_ok(),
            state: State::Offered,
            invite,
            local_rtp: None,
            session_id: 0,
            sdp_version: 0,
            reinvite: None,
            timer,
            peer_allows_update,
            refresh: None,
            refresh_not_before: None,
            transfer: None,
        };
        let incoming = media.ok().map(|media| IncomingCall {
            call: id,
            call_id: call_id.clone(),
            from: call.invite.header("from").unwrap_or_default().to_owned(),
            to: call.invite.header("to").unwrap_or_default().to_owned(),
            number: call.invite.request_user().map(str::to_owned),
            source,
            media,
        });
        self.calls.insert(call_id.clone(), call);
        match (incoming, media) {
            (Some(incoming), _) => self.outputs.push_back(UasOutput::Incoming(incoming)),
            (None, Err(code)) => self.send_final_failure(now, &call_id, code),
            (None, Ok(_)) => {}
        }
    }

    /// Our Contact for the call at `key`, on the transport its INVITE came by.
    fn contact(&self, key: &str) -> String {
        let transport = self
            .calls
            .get(key)
            .map_or("UDP", |call| via_transport(&call.invite));
        match transport {
            "UDP" => format!("<sip:callingbox@{}>", self.config.local),
            other => format!(
                "<sip:callingbox@{};transport={}>",
                self.config.local,
                other.to_ascii_lowercase()
            ),
        }
    }

    fn call_key(&self, call: SipCallId) -> Option<String> {
        self.calls
            .iter()
            .find(|(_, tracked)| tracked.id == call)
            .map(|(key, _)| key.clone())
    }

    /// Answers an offered call: 180 Ringing now, 200 OK with our SDP (RTP
    /// at `local_rtp`) now or after `answer_after`.
    pub fn accept(
        &mut self,
        now: Instant,
        call: SipCallId,
        local_rtp: SocketAddr,
    ) -> Result<(), UasError> {
        let key = self.call_key(call).ok_or(UasError::UnknownCall)?;
        let session_id = self.random() >> 1;
        let answer_after = self.config.answer_after;
        let tracked = self.calls.get_mut(&key).ok_or(UasError::UnknownCall)?;
        if !matches!(tracked.state, State::Offered) {
            return Err(UasError::WrongState);
        }
        let sdp = Answer {
            negotiated: tracked.media,
            local_rtp,
            session_id,
        }
        .to_sdp();
        tracked.answer_sdp = Some(sdp);
        tracked.local_rtp = Some(local_rtp);
        (tracked.session_id, tracked.sdp_version) = (session_id, session_id);
        let ringing = response(
            &tracked.invite,
            180,
            Some(&tracked.to_tag),
            tracked.source,
            &[],
            None,
        );
        tracked.last_response = Some(ringing.clone());
        tracked.state = State::Ringing {
            answer_at: now + answer_after,
        };
        let source = tracked.source;
        self.transmit(source, ringing);
        if answer_after.is_zero() {
            self.send_ok(now, &key);
        }
        Ok(())
    }

    /// Refuses an offered or ringing call with a final `status` (4xx-6xx).
    pub fn reject(&mut self, now: Instant, call: SipCallId, status: u16) -> Result<(), UasError> {
        let key = self.call_key(call).ok_or(UasError::UnknownCall)?;
        let tracked = self.calls.get(&key).ok_or(UasError::UnknownCall)?;
        if !matches!(tracked.state, State::Offered | State::Ringing { .. }) {
            return Err(UasError::WrongState);
        }
        let status = status.clamp(400, 699);
        self.send_final_failure(now, &key, status);
        self.end(call, CallEnd::Rejected(status));
        Ok(())
    }

    /// Ends the call from our side: BYE once answered, 480 while ringing.
    pub fn hang_up(&mut self, now: Instant, call: SipCallId) -> Result<(), UasError> {
        let key = self.call_key(call).ok_or(UasError::UnknownCall)?;
        let state = &self.calls.get(&key).ok_or(UasError::UnknownCall)?.state;
        match state {
            State::Offered | State::Ringing { .. } => self.reject(now, call, 480),
            State::Answering(_) | State::Confirmed => {
                self.send_bye(now, &key);
                Ok(())
            }
            _ => Err(UasError::WrongState),
        }
    }

    /// Blind-transfers an answered call to `destination` (a phone number
    /// at the peer's host, or a URI: [`refer_to_uri`]): sends REFER (see
    /// [`super::refer`]). The outcome comes as
    /// [`UasOutput::TransferEnded`].
    pub fn transfer(
        &mut self,
        now: Instant,
        call: SipCallId,
        destination: &str,
    ) -> Result<(), UasError> {
        let key = self.call_key(call).ok_or(UasError::UnknownCall)?;
        let branch = format!("{BRANCH_COOKIE}{:x}", self.random());
        let contact = self.contact(&key);
        let (local, timers) = (self.config.local, (self.config.t1, self.config.t2));
        let tracked = self.calls.get_mut(&key).ok_or(UasError::UnknownCall)?;
        if !matches!(tracked.state, State::Confirmed) {
            return Err(UasError::WrongState);
        }
        if tracked.transfer.is_some() {
            return Err(UasError::TransferInProgress);
        }
        let to = tracked.invite.header("to").unwrap_or_default();
        let referred_by = name_addr_uri(to)
            .unwrap_or("sip:callingbox@invalid")
            .to_owned();
        let mut text = String::with_capacity(768);
        let _ = write!(
            text,
            "REFER {target} SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: {to};tag={tag}\r\nTo: {from}\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} REFER\r\n",
            target = dialog_target(&tracked.invite),
            tag = tracked.to_tag,
            from = tracked.invite.header("from").unwrap_or_default(),
            call_id = tracked.invite.call_id().unwrap_or_default(),
            cseq = tracked.next_cseq,
            transport = via_transport(&tracked.invite),
        );
        let refer_to = refer_to_uri(destination, tracked.source);
        text.push_str(&refer_headers(&refer_to, &referred_by, &contact));
        tracked.next_cseq += 1;
        let source = tracked.source;
        tracked.transfer = Some(Transfer::sent(now, source, branch, text.clone(), timers));
        self.transmit(source, text);
        Ok(())
    }

    /// A NOTIFY of our REFER's subscription: 200, and maybe the outcome.
    fn on_notify(&mut self, now: Instant, source: SocketAddr, notify: &SipMessage) {
        let found = notify
            .call_id()
            .and_then(|id| self.calls.get_mut(id))
            .filter(|call| notify.to_tag() == Some(call.to_tag.as_str()))
            .and_then(|call| {
                let outcome = call.transfer.as_mut()?.on_notify(now, notify);
                Some((call.id, outcome))
            });
        let Some((id, outcome)) = found else {
            let text = response(notify, 481, None, source, &[], None);
            self.answer_non_invite(now, source, notify, "NOTIFY", text);
            return;
        };
        let text = response(notify, 200, None, source, &[], None);
        self.answer_non_invite(now, source, notify, "NOTIFY", text);
        if let Some(outcome) = outcome {
            self.transfer_ended(id, outcome);
        }
    }

    /// Reports a transfer's outcome and forgets the transfer.
    fn transfer_ended(&mut self, call: SipCallId, outcome: TransferOutcome) {
        if let Some(tracked) = self.calls.values_mut().find(|tracked| tracked.id == call) {
            tracked.transfer = None;
        }
        self.outputs
            .push_back(UasOutput::TransferEnded { call, outcome });
    }

    fn send_ok(&mut self, now: Instant, key: &str) {
        let contact = self.contact(key);
        let t1 = self.config.t1;
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        let sdp = call.answer_sdp.clone().unwrap_or_default();
        let expires = call.timer.map(|timer| timer.terms().header());
        let mut headers = vec![
            ("Contact", contact.as_str()),
            ("Allow", ALLOW),
            ("Supported", "replaces, timer"),
        ];
        if let (Some(expires), Some(timer)) = (&expires, call.timer) {
            headers.push(("Session-Expires", expires));
            if timer.terms().peer_supports {
                headers.push(("Require", "timer"));
            }
        }
        let ok = response(
            &call.invite,
            200,
            Some(&call.to_tag),
            call.source,
            &headers,
            Some(("application/sdp", &sdp)),
        );
        call.last_response = Some(ok.clone());
        call.state = State::Answering(Retransmit::start(now, t1));
        let source = call.source;
        self.transmit(source, ok);
    }

    fn send_final_failure(&mut self, now: Instant, key: &str, code: u16) {
        let t1 = self.config.t1;
        let timer_config = self.config.session_timer;
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        let min_se = match negotiate_timer(&timer_config, &call.invite) {
            Err(min_se) if code == 422 => Some(min_se.as_secs().to_string()),
            _ => None,
        };
        let headers: Vec<(&str, &str)> = min_se
            .iter()
            .map(|value| ("Min-SE", value.as_str()))
            .collect();
        let text = response(
            &call.invite,
            code,
            Some(&call.to_tag),
            call.source,
            &headers,
            None,
        );
        call.last_response = Some(text.clone());
        call.state = State::Rejecting(Retransmit::start(now, t1));
        let source = call.source;
        self.transmit(source, text);
    }

    fn send_bye(&mut self, now: Instant, key: &str) {
        let branch = format!("{BRANCH_COOKIE}{:x}", self.random());
        let local = self.config.local;
        let t1 = self.config.t1;
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        let target = dialog_target(&call.invite);
        let mut bye = String::with_capacity(512);
        let _ = write!(
            bye,
            "BYE {target} SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: {to};tag={tag}\r\nTo: {from}\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} BYE\r\nUser-Agent: CallingBox\r\nContent-Length: 0\r\n\r\n",
            to = call.invite.header("to").unwrap_or_default(),
            tag = call.to_tag,
            from = call.invite.header("from").unwrap_or_default(),
            call_id = call.invite.call_id().unwrap_or_default(),
            cseq = call.next_cseq,
            transport = via_transport(&call.invite),
        );
        call.next_cseq += 1;
        call.bye_branch = Some(branch);
        call.state = State::Leaving {
            bye: bye.clone(),
            timer: Retransmit::start(now, t1),
        };
        let source = call.source;
        self.transmit(source, bye);
    }

    fn on_ack(&mut self, now: Instant, ack: &SipMessage) {
        let Some(call) = ack.call_id().and_then(|id| self.calls.get_mut(id)) else {
            return;
        };
        match call.state {
            State::Answering(_) => {
                call.state = State::Confirmed;
                // The session's interval starts with the dialog.
                if let Some(timer) = &mut call.timer {
                    let terms = timer.terms();
                    timer.refreshed(now, terms);
                }
                let id = call.id;
                self.outputs.push_back(UasOutput::Answered(id));
            }
            State::Rejecting(_) => {
                call.state = State::Rejected {
                    forget_at: now + self.config.t4,
                };
            }
            // The ACK of a re-INVITE's final response (a 2xx's has a new
            // branch: matched by CSeq).
            State::Confirmed
                if call
                    .reinvite
                    .as_ref()
                    .is_some_and(|pending| ack.cseq().map(|(n, _)| n) == Some(pending.cseq)) =>
            {
                call.reinvite = None;
            }
            _ => {}
        }
    }

    /// A re-INVITE in a dialog: hold, resume, a new address, a refresh
    /// (see [`super::reinvite`]).
    fn on_reinvite(&mut self, now: Instant, source: SocketAddr, invite: &SipMessage, key: &str) {
        let contact = self.contact(key);
        let t1 = self.config.t1;
        let timer_config = self.config.session_timer;
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        let branch = invite.branch().unwrap_or_default();
        if let Some(pending) = &call.reinvite
            && pending.branch == branch
        {
            let text = pending.response.clone();
            self.stats.retransmissions_absorbed += 1;
            self.transmit(source, text);
            return;
        }
        // An offer while another is unfinished (before the ACK): 491, and
        // the peer retries later (RFC 3261 14.2). Not kept: a retransmission
        // meets the same answer.
        if !matches!(call.state, State::Confirmed) || call.reinvite.is_some() {
            let text = response(invite, 491, None, source, &[], None);
            self.transmit(source, text);
            return;
        }
        // A re-INVITE refreshes the session timer (RFC 4028); one under our
        // Min-SE is refused before its offer is looked at.
        let refresh = match call.timer {
            Some(timer) => read_refresh(&timer_config, &timer.terms(), invite).map(Some),
            None => Ok(None),
        };
        let reoffer = match refresh {
            Err(_) => Err(422),
            Ok(_) => read_reoffer(&call.media, &invite.body),
        };
        let (status, sdp) = match reoffer {
            Err(status) => (status, None),
            Ok(Reoffer::NoOffer) => (200, call.answer_sdp.clone()),
            Ok(Reoffer::Accept { media }) => match call.local_rtp {
                Some(local_rtp) => {
                    let before = MediaUpdate::of(&call.media);
                    call.media = media;
                    call.sdp_version += 1;
                    let sdp = Answer {
                        negotiated: media,
                        local_rtp,
                        session_id: call.session_id,
                    }
                    .to_sdp_version(call.sdp_version);
                    call.answer_sdp = Some(sdp.clone());
                    let update = MediaUpdate::of(&media);
                    if update != before {
                        let id = call.id;
                        self.outputs
                            .push_back(UasOutput::MediaChanged { call: id, update });
                    }
                    (200, Some(sdp))
                }
                None => (500, None),
            },
        };
        let mut headers: Vec<(&str, String)> = Vec::new();
        if status == 200 {
            headers.push(("Contact", contact));
            headers.push(("Allow", ALLOW.to_owned()));
        }
        match refresh {
            Err(min_se) => headers.push(("Min-SE", min_se.as_secs().to_string())),
            Ok(Some(terms)) if status == 200 => {
                headers.extend(timer_headers(&terms));
                if let Some(timer) = self.calls.get_mut(key).and_then(|call| call.timer.as_mut()) {
                    timer.refreshed(now, terms);
                }
            }
            Ok(_) => {}
        }
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let body = sdp.as_deref().map(|sdp| ("application/sdp", sdp));
        let text = response(invite, status, None, source, &headers, body);
        let cseq = invite.cseq().map(|(n, _)| n).unwrap_or_default();
        if let Some(call) = self.calls.get_mut(key) {
            call.reinvite = Some(PendingReinvite::new(
                branch.to_owned(),
                cseq,
                text.clone(),
                now,
                t1,
            ));
        }
        self.transmit(source, text);
    }

    /// An UPDATE in a dialog: a session refresh (RFC 4028). Offers in
    /// UPDATE (RFC 3311) are not taken: 488, the session stays.
    fn on_update(&mut self, now: Instant, source: SocketAddr, update: &SipMessage) {
        let timer_config = self.config.session_timer;
        let contact = self.contact(update.call_id().unwrap_or_default());
        let call = update
            .call_id()
            .and_then(|id| self.calls.get_mut(id))
            .filter(|call| matches!(call.state, State::Confirmed));
        let Some(call) = call else {
            let text = response(update, 481, None, source, &[], None);
            self.answer_non_invite(now, source, update, "UPDATE", text);
            return;
        };
        let mut headers: Vec<(&str, String)> = Vec::new();
        let status = if !update.body.trim().is_empty() {
            488
        } else {
            match call.timer.as_mut() {
                Some(timer) => match read_refresh(&timer_config, &timer.terms(), update) {
                    Ok(terms) => {
                        timer.refreshed(now, terms);
                        headers.extend(timer_headers(&terms));
                        200
                    }
                    Err(min_se) => {
                        headers.push(("Min-SE", min_se.as_secs().to_string()));
                        422
                    }
                },
                None => 200,
            }
        };
        if status == 200 {
            headers.push(("Contact", contact));
        }
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let text = response(update, status, None, source, &headers, None);
        self.answer_non_invite(now, source, update, "UPDATE", text);
    }

    /// Sends our session refresh: UPDATE if the peer allows it, else a
    /// re-INVITE with the session as it is (same SDP version: no change).
    fn send_refresh(&mut self, now: Instant, key: &str) {
        let branch = format!("{BRANCH_COOKIE}{:x}", self.random());
        let local = self.config.local;
        let t1 = self.config.t1;
        let contact = self.contact(key);
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        let Some(timer) = call.timer else {
            return;
        };
        let invite = !call.peer_allows_update;
        let (method, body) = if invite {
            ("INVITE", call.answer_sdp.clone().unwrap_or_default())
        } else {
            ("UPDATE", String::new())
        };
        let mut text = String::with_capacity(640 + body.len());
        let _ = write!(
            text,
            "{method} {target} SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: {to};tag={tag}\r\nTo: {from}\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\nContact: {contact}\r\nSession-Expires: {expires}\r\n\
             Supported: timer\r\nAllow: {ALLOW}\r\nUser-Agent: CallingBox\r\n",
            target = dialog_target(&call.invite),
            to = call.invite.header("to").unwrap_or_default(),
            tag = call.to_tag,
            from = call.invite.header("from").unwrap_or_default(),
            call_id = call.invite.call_id().unwrap_or_default(),
            cseq = call.next_cseq,
            expires = request_header(&timer.terms()),
            transport = via_transport(&call.invite),
        );
        if !body.is_empty() {
            text.push_str("Content-Type: application/sdp\r\n");
        }
        let _ = write!(text, "Content-Length: {}\r\n\r\n{body}", body.len());
        call.refresh = Some(Refresh {
            branch,
            cseq: call.next_cseq,
            invite,
            text: text.clone(),
            timer: Retransmit::start(now, t1),
        });
        call.next_cseq += 1;
        let source = call.source;
        self.transmit(source, text);
    }

    /// The final response to our refresh of the call at `key`.
    fn on_refresh_response(&mut self, now: Instant, key: &str, code: u16, message: &SipMessage) {
        let jitter = Duration::from_millis(self.random() % 2_000);
        let local = self.config.local;
        let ack_branch = format!("{BRANCH_COOKIE}{:x}", self.random());
        let Some(call) = self.calls.get_mut(key) else {
            return;
        };
        let Some(refresh) = call.refresh.take() else {
            return;
        };
        if refresh.invite {
            // The ACK: a new transaction after a 2xx, the INVITE's otherwise.
            let branch = if (200..300).contains(&code) {
                ack_branch
            } else {
                refresh.branch.clone()
            };
            let ack = format!(
                "ACK {target} SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch={branch};rport\r\n\
                 Max-Forwards: 70\r\nFrom: {to};tag={tag}\r\nTo: {peer}\r\nCall-ID: {call_id}\r\n\
                 CSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n",
                target = dialog_target(&call.invite),
                to = call.invite.header("to").unwrap_or_default(),
                tag = call.to_tag,
                peer = message.header("to").unwrap_or_default(),
                call_id = call.invite.call_id().unwrap_or_default(),
                cseq = refresh.cseq,
                transport = via_transport(&call.invite),
            );
            self.outputs.push_back(UasOutput::Transmit {
                to: call.source,
                bytes: ack.into_bytes(),
            });
        }
        let Some(timer) = call.timer.as_mut() else {
            return;
        };
        match code {
            200..=299 => {
                let terms = response_terms(&timer.terms(), message);
                timer.refreshed(now, terms);
            }
            // Glare with the peer's own re-INVITE: again in 0-2 s (RFC
            // 3261 14.1, we do not own the Call-ID).
            491 => call.refresh_not_before = Some(now + jitter),
            // RFC 4028 section 10: the session is gone.
            408 | 481 => {
                let id = call.id;
                self.end(id, CallEnd::SessionExpired);
                self.send_bye(now, key);
            }
            // Refused otherwise: no more tries, the session runs out.
            _ => call.refresh_not_before = Some(timer.expires_at()),
        }
    }

    fn on_cancel(&mut self, now: Instant, source: SocketAddr, cancel: &SipMessage) {
        let branch = cancel.branch().unwrap_or_default();
        let found = self
            .calls
            .iter()
            .find(|(_, call)| call.invite_branch == branch && !branch.is_empty())
            .map(|(key, call)| (key.clone(), call.id, call.to_tag.clone()));
        let Some((key, id, to_tag)) = found else {
            let text = response(cancel, 481, None, source, &[], None);
            self.answer_non_invite(now, source, cancel, "CANCEL", text);
            return;
        };
        let text = response(cancel, 200, Some(&to_tag), source, &[], None);
        self.answer_non_invite(now, source, cancel, "CANCEL", text);
        let ringing = self
            .calls
            .get(&key)
            .is_some_and(|call| matches!(call.state, State::Offered | State::Ringing { .. }));
        if ringing {
            self.send_final_failure(now, &key, 487);
            self.end(id, CallEnd::Canceled);
        }
    }

    fn on_bye(&mut self, now: Instant, source: SocketAddr, bye: &SipMessage) {
        let key = bye
            .call_id()
            .filter(|id| self.calls.contains_key(*id))
            .map(str::to_owned);
        let in_dialog = key
            .as_ref()
            .and_then(|key| self.calls.get(key))
            .filter(|call| {
                matches!(
                    call.state,
                    State::Answering(_) | State::Confirmed | State::Leaving { .. }
                )
            });
        let Some((key, id, to_tag)) = in_dialog.map(|call| {
            (
                key.clone().unwrap_or_default(),
                call.id,
                call.to_tag.clone(),
            )
        }) else {
            let text = response(bye, 481, None, source, &[], None);
            self.answer_non_invite(now, source, bye, "BYE", text);
            return;
        };
        let text = response(bye, 200, Some(&to_tag), source, &[], None);
        self.answer_non_invite(now, source, bye, "BYE", text);
        self.end(id, CallEnd::RemoteBye);
        self.calls.remove(&key);
    }

    fn on_response(&mut self, now: Instant, message: &SipMessage) {
        let Some(code) = message.status() else { return };
        if code < 200 {
            return;
        }
        let branch = message.branch().unwrap_or_default();
        let transferring = self
            .calls
            .values_mut()
            .find(|call| call.transfer.as_ref().is_some_and(|t| t.branch() == branch))
            .and_then(|call| {
                let outcome = call.transfer.as_mut()?.on_response(now, code);
                Some((call.id, outcome))
            });
        if let Some((id, outcome)) = transferring {
            if let Some(outcome) = outcome {
                self.transfer_ended(id, outcome);
            }
            return;
        }
        let refreshed = self
            .calls
            .iter()
            .find(|(_, call)| call.refresh.as_ref().is_some_and(|r| r.branch == branch))
            .map(|(key, _)| key.clone());
        if let Some(key) = refreshed {
            self.on_refresh_response(now, &key, code, message);
            return;
        }
        let found = self
            .calls
            .iter()
            .find(|(_, call)| call.bye_branch.as_deref() == Some(branch))
            .map(|(key, call)| (key.clone(), call.id));
        if let Some((key, id)) = found {
            self.end(id, CallEnd::LocalBye { answered: true });
            self.calls.remove(&key);
        }
    }

    /// Reports the end of an offered call, once.
    fn end(&mut self, call: SipCallId, reason: CallEnd) {
        let Some(tracked) = self.calls.values_mut().find(|tracked| tracked.id == call) else {
            return;
        };
        if std::mem::replace(&mut tracked.offered, false) {
            self.outputs.push_back(UasOutput::Ended { call, reason });
        }
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.replays.retain(|_, replay| replay.forget_at > now);
        let t2 = self.config.t2;
        let mut due: Vec<(String, Due)> = Vec::new();
        for (key, call) in &mut self.calls {
            match &mut call.state {
                State::Ringing { answer_at } if *answer_at <= now => {
                    due.push((key.clone(), Due::Answer));
                }
                State::Answering(timer) if timer.give_up <= now => {
                    due.push((key.clone(), Due::AckTimeout));
                }
                State::Rejecting(timer) if timer.give_up <= now => {
                    due.push((key.clone(), Due::Forget));
                }
                State::Rejecting(timer) | State::Answering(timer) if timer.next <= now => {
                    timer.backoff(now, t2);
                    if let Some(last) = &call.last_response {
                        due.push((key.clone(), Due::Send(call.source, last.clone())));
                    }
                }
                State::Rejected { forget_at } if *forget_at <= now => {
                    due.push((key.clone(), Due::Forget));
                }
                State::Leaving { timer, .. } if timer.give_up <= now => {
                    due.push((key.clone(), Due::ByeTimeout(call.id)));
                }
                State::Leaving { bye, timer } if timer.next <= now => {
                    // Timer E: doubling to T2.
                    timer.backoff(now, t2);
                    due.push((key.clone(), Due::Send(call.source, bye.clone())));
                }
                _ => {}
            }
        }
        for call in self.calls.values_mut() {
            let Some(pending) = &mut call.reinvite else {
                continue;
            };
            if pending.expired(now) {
                // No ACK in 64*T1: the offer/answer stands, stop resending.
                call.reinvite = None;
            } else if let Some(text) = pending.retransmission(now, t2) {
                due.push((String::new(), Due::Send(call.source, text.to_owned())));
            }
        }
        // Session timers (RFC 4028): our refreshes, and sessions run out.
        let (mut refreshes, mut expired) = (Vec::new(), Vec::new());
        for (key, call) in &mut self.calls {
            let Some(timer) = call
                .timer
                .filter(|_| matches!(call.state, State::Confirmed))
            else {
                continue;
            };
            if timer.expires_at() <= now {
                expired.push((key.clone(), call.id));
            } else if let Some(refresh) = &mut call.refresh {
                if refresh.timer.give_up <= now {
                    // No answer to our refresh (a 408): the session is gone.
                    expired.push((key.clone(), call.id));
                } else if refresh.timer.next <= now {
                    refresh.timer.backoff(now, t2);
                    due.push((String::new(), Due::Send(call.source, refresh.text.clone())));
                }
            } else if timer.refresh_at().is_some_and(|at| at <= now)
                && call.refresh_not_before.is_none_or(|at| at <= now)
            {
                refreshes.push(key.clone());
            }
        }
        let mut transfers_ended = Vec::new();
        for call in self.calls.values_mut() {
            let Some(transfer) = call.transfer.as_mut().filter(|t| t.deadline() <= now) else {
                continue;
            };
            match transfer.handle_timeout(now) {
                TransferTimeout::Wait => {}
                TransferTimeout::Resend(to, text) => due.push((String::new(), Due::Send(to, text))),
                TransferTimeout::Done(outcome) => transfers_ended.push((call.id, outcome)),
            }
        }
        for (id, outcome) in transfers_ended {
            self.transfer_ended(id, outcome);
        }
        due.sort_by(|a, b| a.0.cmp(&b.0));
        for key in refreshes {
            self.send_refresh(now, &key);
        }
        for (key, id) in expired {
            if let Some(call) = self.calls.get_mut(&key) {
                call.refresh = None;
            }
            self.end(id, CallEnd::SessionExpired);
            self.send_bye(now, &key);
        }
        for (key, what) in due {
            match what {
                Due::Answer => self.send_ok(now, &key),
                Due::Send(to, text) => {
                    self.stats.retransmitted += 1;
                    self.transmit(to, text);
                }
                Due::Forget => {
                    self.calls.remove(&key);
                }
                Due::AckTimeout => {
                    // RFC 3261, 13.3.1.4: no ACK, end the session with a BYE.
                    if let Some(id) = self.calls.get(&key).map(|call| call.id) {
                        self.end(id, CallEnd::AckTimeout);
                    }
                    self.send_bye(now, &key);
                }
                Due::ByeTimeout(id) => {
                    self.end(id, CallEnd::LocalBye { answered: false });
                    self.calls.remove(&key);
                }
            }
        }
    }
}

enum Due {
    Answer,
    Send(SocketAddr, String),
    Forget,
    AckTimeout,
    ByeTimeout(SipCallId),
}

/// The transport of a request's top Via (`UDP`, `TCP` or `TLS`): the one
/// our requests and Contact in its dialog use.
fn via_transport(request: &SipMessage) -> &'static str {
    let via = request.header("via").unwrap_or_default().trim_start();
    let protocol = via.split_whitespace().next().unwrap_or_default();
    match protocol.rsplit('/').next() {
        Some(transport) if transport.eq_ignore_ascii_case("TCP") => "TCP",
        Some(transport) if transport.eq_ignore_ascii_case("TLS") => "TLS",
        _ => "UDP",
    }
}

/// Where requests in the dialog go: the caller's Contact (or From).
fn dialog_target(invite: &SipMessage) -> String {
    invite
        .contact_uri()
        .or_else(|| invite.header("from").and_then(name_addr_uri))
        .unwrap_or("sip:unknown@invalid")
        .to_owned()
}

/// `Session-Expires` (and `Require: timer` if the caller supports timers)
/// of our 2xx to a refresh.
fn timer_headers(terms: &TimerTerms) -> Vec<(&'static str, String)> {
    let mut headers = vec![("Session-Expires", terms.header())];
    if terms.peer_supports {
        headers.push(("Require", "timer".to_owned()));
    }
    headers
}

/// When a confirmed call's session timer needs the UAS next.
fn timer_deadline(call: &Call) -> Option<Instant> {
    if !matches!(call.state, State::Confirmed) {
        return None;
    }
    let timer = call.timer?;
    let ours = match &call.refresh {
        Some(refresh) => Some(refresh.timer.next.min(refresh.timer.give_up)),
        None => timer.refresh_at().map(|at| {
            call.refresh_not_before
                .map_or(at, |not_before| at.max(not_before))
        }),
    };
    Some(ours.map_or(timer.expires_at(), |at| at.min(timer.expires_at())))
}

/// The media of a call refused before negotiation (never used for media).
const PLACEHOLDER_MEDIA: Negotiated = Negotiated {
    remote_rtp: SocketAddr::V4(std::net::SocketAddrV4::new(
        std::net::Ipv4Addr::UNSPECIFIED,
        0,
    )),
    codec: super::sdp::AudioCodec {
        payload_type: 0,
        kind: super::sdp::CodecKind::Pcmu,
    },
    telephone_event: None,
    ptime: 20,
    direction: super::sdp::Direction::Inactive,
    rtcp_mux: false,
    remote_rtcp: None,
};

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n\
        t=0 0\r\nm=audio 6000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n";

    fn peer() -> SocketAddr {
        "127.0.0.1:5061".parse().expect("addr")
    }

    fn rtp() -> SocketAddr {
        "127.0.0.1:40000".parse().expect("addr")
    }

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn request(
        method: &str,
        user: &str,
        branch: &str,
        cseq: u32,
        to_tag: &str,
        body: &str,
    ) -> Vec<u8> {
        let cseq_method = if method == "ACK" && branch == "invite" {
            "ACK"
        } else {
            method
        };
        format!(
            "{method} sip:{user}@127.0.0.1:5060 SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-{branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: sipp <sip:sipp@127.0.0.1:5061>;tag=caller\r\n\
             To: <sip:{user}@127.0.0.1:5060>{to_tag}\r\n\
             Call-ID: call-1\r\n\
             CSeq: {cseq} {cseq_method}\r\n\
             Contact: <sip:sipp@127.0.0.1:5061>\r\n\
             Content-Type: application/sdp\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn invite(user: &str) -> Vec<u8> {
        request("INVITE", user, "invite", 1, "", OFFER)
    }

    fn uas(answer_after: Duration) -> SipUas {
        let mut config = UasConfig::new("127.0.0.1:5060".parse().expect("addr"));
        config.numbers = vec!["1000".into()];
        config.answer_after = answer_after;
        SipUas::new(config, 42)
    }

    /// Drains the outputs: (status or method of each message sent, other outputs).
    fn drain(uas: &mut SipUas) -> (Vec<String>, Vec<UasOutput>) {
        let mut sent = Vec::new();
        let mut other = Vec::new();
        while let Some(output) = uas.poll_output() {
            match output {
                UasOutput::Transmit { to, bytes } => {
                    assert_eq!(to, peer());
                    let message = SipMessage::parse(&bytes).expect("we send valid SIP");
                    sent.push(match message.status() {
                        Some(code) => code.to_string(),
                        None => message.method().unwrap_or_default().to_owned(),
                    });
                }
                output => other.push(output),
            }
        }
        (sent, other)
    }

    fn last_sent(uas: &mut SipUas) -> Vec<SipMessage> {
        std::iter::from_fn(|| uas.poll_output())
            .filter_map(|output| match output {
                UasOutput::Transmit { bytes, .. } => SipMessage::parse(&bytes).ok(),
                _ => None,
            })
            .collect()
    }

    /// INVITE and accept: returns the call and the to-tag.
    fn answered(uas: &mut SipUas) -> (SipCallId, String) {
        uas.handle_datagram(at(0), peer(), &invite("1000"));
        let (sent, other) = drain(uas);
        assert_eq!(sent, vec!["100"]);
        let [UasOutput::Incoming(incoming)] = other.as_slice() else {
            panic!("expected one incoming call, got {other:?}");
        };
        assert_eq!(incoming.number.as_deref(), Some("1000"));
        assert_eq!(incoming.media.remote_rtp.port(), 6000);
        let call = incoming.call;
        uas.accept(at(1), call, rtp()).expect("accept");
        let messages = last_sent(uas);
        let codes: Vec<_> = messages.iter().filter_map(SipMessage::status).collect();
        assert_eq!(codes, vec![180, 200]);
        let ok = &messages[1];
        assert!(
            ok.body.contains("m=audio 40000 RTP/AVP 0 101"),
            "{}",
            ok.body
        );
        assert!(ok.contact_uri().is_some());
        let tag = ok.to_tag().expect("a to-tag").to_owned();
        assert_eq!(messages[0].to_tag(), Some(tag.as_str()));
        (call, tag)
    }

    #[test]
    fn the_200_is_retransmitted_until_the_ack_then_the_call_is_answered() {
        let mut uas = uas(Duration::ZERO);
        let (call, tag) = answered(&mut uas);
        // Timer: T1, then 2*T1, 4*T1 ... after the 200 at 1 ms.
        assert_eq!(uas.next_deadline(), Some(at(501)));
        uas.handle_timeout(at(501));
        assert_eq!(drain(&mut uas).0, vec!["200"]);
        assert_eq!(uas.next_deadline(), Some(at(1_501)));
        uas.handle_timeout(at(1_000));
        assert!(drain(&mut uas).0.is_empty());
        uas.handle_timeout(at(1_501));
        assert_eq!(drain(&mut uas).0, vec!["200"]);
        // A retransmitted INVITE gets the 200 again, and no new call.
        uas.handle_datagram(at(1_600), peer(), &invite("1000"));
        assert_eq!(drain(&mut uas), (vec!["200".into()], vec![]));
        let ack = request("ACK", "1000", "ack", 1, &format!(";tag={tag}"), "");
        uas.handle_datagram(at(1_700), peer(), &ack);
        assert_eq!(drain(&mut uas), (vec![], vec![UasOutput::Answered(call)]));
        // Answered: no timer left, a second ACK changes nothing.
        assert_eq!(uas.next_deadline(), None);
        uas.handle_datagram(at(1_800), peer(), &ack);
        assert_eq!(drain(&mut uas), (vec![], vec![]));
        assert_eq!(uas.stats().retransmitted, 2);
    }

    #[test]
    fn bye_ends_the_call_once_and_its_retransmission_gets_the_same_200() {
        let mut uas = uas(Duration::ZERO);
        let (call, tag) = answered(&mut uas);
        let tag = format!(";tag={tag}");
        uas.handle_datagram(at(10), peer(), &request("ACK", "1000", "ack", 1, &tag, ""));
        drain(&mut uas);
        let bye = request("BYE", "1000", "bye", 2, &tag, "");
        uas.handle_datagram(at(5_000), peer(), &bye);
        assert_eq!(
            drain(&mut uas),
            (
                vec!["200".into()],
                vec![UasOutput::Ended {
                    call,
                    reason: CallEnd::RemoteBye
                }]
            )
        );
        uas.handle_datagram(at(5_500), peer(), &bye);
        assert_eq!(drain(&mut uas), (vec!["200".into()], vec![]));
        // Timer J forgets the transaction; then the dialog is unknown: 481.
        uas.handle_timeout(at(5_000 + 32_001));
        uas.handle_datagram(at(40_000), peer(), &bye);
        assert_eq!(drain(&mut uas).0, vec!["481"]);
        assert_eq!(uas.tracked_calls(), 0);
    }

    #[test]
    fn cancel_while_ringing_gets_200_and_the_invite_487_until_its_ack() {
        let mut uas = uas(Duration::from_secs(10));
        uas.handle_datagram(at(0), peer(), &invite("1000"));
        let (_, other) = drain(&mut uas);
        let Some(UasOutput::Incoming(incoming)) = other.into_iter().next() else {
            panic!("no incoming call");
        };
        uas.accept(at(0), incoming.call, rtp()).expect("accept");
        assert_eq!(drain(&mut uas).0, vec!["180"]);
        assert_eq!(uas.next_deadline(), Some(at(10_000)));
        let cancel = request("CANCEL", "1000", "invite", 1, "", "");
        uas.handle_datagram(at(2_000), peer(), &cancel);
        assert_eq!(
            drain(&mut uas),
            (
                vec!["200".into(), "487".into()],
                vec![UasOutput::Ended {
                    call: incoming.call,
                    reason: CallEnd::Canceled
                }]
            )
        );
        // Never answered now, even at the answer time; the 487 is retransmitted (timer G).
        uas.handle_timeout(at(10_000));
        assert_eq!(drain(&mut uas).0, vec!["487"]);
        assert!(uas.accept(at(10_000), incoming.call, rtp()).is_err());
        uas.handle_datagram(
            at(10_100),
            peer(),
            &request("ACK", "1000", "invite", 1, "", ""),
        );
        assert_eq!(drain(&mut uas), (vec![], vec![]));
        // Timer I: forgotten T4 after the ACK.
        assert_eq!(uas.next_deadline(), Some(at(15_100)));
        uas.handle_timeout(at(15_100));
        assert_eq!(uas.tracked_calls(), 0);
        // A CANCEL of nothing: 481.
        let stray = request("CANCEL", "1000", "other", 1, "", "");
        uas.handle_datagram(at(16_000), peer(), &stray);
        assert_eq!(drain(&mut uas).0, vec!["481"]);
    }

    #[test]
    fn unknown_numbers_get_404_and_offers_without_g711_488() {
        let mut uas = uas(Duration::ZERO);
        uas.handle_datagram(at(0), peer(), &invite("2000"));
        assert_eq!(drain(&mut uas), (vec!["100".into(), "404".into()], vec![]));
        // Timer G retransmits it; timer H gives up after 64*T1 without an ACK.
        uas.handle_timeout(at(500));
        assert_eq!(drain(&mut uas).0, vec!["404"]);
        uas.handle_timeout(at(32_000));
        drain(&mut uas);
        uas.handle_timeout(at(40_000));
        assert_eq!(uas.tracked_calls(), 0);

        let mut uas = super::tests::uas(Duration::ZERO);
        let opus = OFFER.replace("RTP/AVP 0 101", "RTP/AVP 96");
        let text = String::from_utf8(invite("1000"))
            .expect("utf8")
            .replace(OFFER, &opus);
        let text = text.replace(
            &format!("Content-Length: {}", OFFER.len()),
            &format!("Content-Length: {}", opus.len()),
        );
        uas.handle_datagram(at(0), peer(), text.as_bytes());
        assert_eq!(drain(&mut uas), (vec!["100".into(), "488".into()], vec![]));
    }

    #[test]
    fn options_and_unknown_methods() {
        let mut uas = uas(Duration::ZERO);
        uas.handle_datagram(at(0), peer(), &request("OPTIONS", "1000", "o1", 1, "", ""));
        let sent = last_sent(&mut uas);
        assert_eq!(sent[0].status(), Some(200));
        assert_eq!(sent[0].header("allow"), Some(ALLOW));
        uas.handle_datagram(
            at(0),
            peer(),
            &request("SUBSCRIBE", "1000", "s1", 1, "", ""),
        );
        assert_eq!(drain(&mut uas).0, vec!["405"]);
    }

    #[test]
    fn garbage_is_dropped_and_requests_missing_headers_get_400() {
        let mut uas = uas(Duration::ZERO);
        for junk in [
            &b""[..],
            b"\x00\x01\x02\x03",
            b"hello",
            b"INVITE sip:1000@h SIP/2.0\r\nVia SIP/2.0/UDP h\r\n\r\n",
            b"SIP/2.0 200 OK\r\n\r\n",
        ] {
            uas.handle_datagram(at(0), peer(), junk);
        }
        assert_eq!(drain(&mut uas), (vec![], vec![]));
        let no_call_id: Vec<u8> = String::from_utf8(invite("1000"))
            .expect("utf8")
            .replace("Call-ID: call-1\r\n", "")
            .into_bytes();
        uas.handle_datagram(at(0), peer(), &no_call_id);
        let sent = last_sent(&mut uas);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].status(), Some(400));
        let wrong_cseq = String::from_utf8(request("BYE", "1000", "b", 1, "", ""))
            .expect("utf8")
            .replace("1 BYE", "1 INVITE");
        uas.handle_datagram(at(0), peer(), wrong_cseq.as_bytes());
        assert_eq!(drain(&mut uas).0, vec!["400"]);
        // Every truncation of an INVITE: no panic, and the UAS still answers.
        let whole = invite("1000");
        for end in 0..whole.len() {
            uas.handle_datagram(at(0), peer(), &whole[..end]);
        }
        drain(&mut uas);
        uas.handle_datagram(at(0), peer(), &request("OPTIONS", "1000", "o2", 1, "", ""));
        assert_eq!(drain(&mut uas).0, vec!["200"]);
    }

    #[test]
    fn a_transfer_sends_refer_follows_the_notifies_and_reports_the_outcome() {
        let mut uas = uas(Duration::ZERO);
        let (call, tag) = answered(&mut uas);
        // Not before the ACK: the dialog is not confirmed.
        assert_eq!(
            uas.transfer(at(5), call, "+14155550100"),
            Err(UasError::WrongState)
        );
        let tag = format!(";tag={tag}");
        uas.handle_datagram(at(10), peer(), &request("ACK", "1000", "ack", 1, &tag, ""));
        drain(&mut uas);
        uas.transfer(at(1_000), call, "+14155550100")
            .expect("transfer");
        assert_eq!(
            uas.transfer(at(1_001), call, "+14155550100"),
            Err(UasError::TransferInProgress)
        );
        let refer = last_sent(&mut uas).remove(0);
        assert_eq!(refer.method(), Some("REFER"));
        assert_eq!(refer.to_tag(), Some("caller"));
        assert_eq!(refer.from_tag(), tag.strip_prefix(";tag="));
        assert_eq!(
            refer.header("refer-to"),
            Some("<sip:+14155550100@127.0.0.1:5061>")
        );
        assert_eq!(
            refer.header("referred-by"),
            Some("<sip:1000@127.0.0.1:5060>")
        );
        // Unanswered: timer E resends it.
        uas.handle_timeout(at(1_500));
        assert_eq!(drain(&mut uas).0, vec!["REFER"]);
        let accepted = response(&refer, 202, None, peer(), &[], None);
        uas.handle_datagram(at(1_600), peer(), accepted.as_bytes());
        assert_eq!(drain(&mut uas), (vec![], vec![]));
        let notify = |branch: &str, cseq: u32, frag: &str| {
            let text = String::from_utf8(request("NOTIFY", "1000", branch, cseq, &tag, frag))
                .expect("utf-8")
                .replace("application/sdp", "message/sipfrag");
            text.into_bytes()
        };
        uas.handle_datagram(
            at(1_700),
            peer(),
            &notify("n1", 2, "SIP/2.0 180 Ringing\r\n"),
        );
        assert_eq!(drain(&mut uas), (vec!["200".to_owned()], vec![]));
        uas.handle_datagram(at(4_000), peer(), &notify("n2", 3, "SIP/2.0 200 OK\r\n"));
        assert_eq!(
            drain(&mut uas),
            (
                vec!["200".to_owned()],
                vec![UasOutput::TransferEnded {
                    call,
                    outcome: TransferOutcome::Transferred { status: 200 }
                }]
            )
        );
        // The subscription is over: another NOTIFY is not ours.
        uas.handle_datagram(at(4_100), peer(), &notify("n3", 4, "SIP/2.0 200 OK\r\n"));
        assert_eq!(drain(&mut uas).0, vec!["481"]);
    }

    #[test]
    fn our_bye_is_retransmitted_until_answered() {
        let mut uas = uas(Duration::ZERO);
        let (call, tag) = answered(&mut uas);
        let tag = format!(";tag={tag}");
        uas.handle_datagram(at(10), peer(), &request("ACK", "1000", "ack", 1, &tag, ""));
        drain(&mut uas);
        uas.hang_up(at(1_000), call).expect("hang up");
        let bye = last_sent(&mut uas).remove(0);
        assert_eq!(bye.method(), Some("BYE"));
        assert_eq!(bye.call_id(), Some("call-1"));
        assert_eq!(bye.to_tag(), Some("caller"));
        assert_eq!(bye.from_tag(), tag.strip_prefix(";tag="));
        assert!(
            matches!(&bye.start, super::super::message::StartLine::Request { uri, .. } if uri == "sip:sipp@127.0.0.1:5061")
        );
        uas.handle_timeout(at(1_500));
        assert_eq!(drain(&mut uas).0, vec!["BYE"]);
        let ok = response(&bye, 200, None, peer(), &[], None);
        uas.handle_datagram(at(1_600), peer(), ok.as_bytes());
        assert_eq!(
            drain(&mut uas),
            (
                vec![],
                vec![UasOutput::Ended {
                    call,
                    reason: CallEnd::LocalBye { answered: true }
                }]
            )
        );
        assert_eq!(uas.tracked_calls(), 0);
    }

    #[test]
    fn no_ack_ends_the_call_with_a_bye_and_an_unanswered_bye_gives_up() {
        let mut uas = uas(Duration::ZERO);
        let (call, _) = answered(&mut uas);
        let mut ended = Vec::new();
        let mut sent = Vec::new();
        let mut now = 1;
        while let Some(next) = uas.next_deadline() {
            now = next.since_epoch().as_millis() as u64;
            uas.handle_timeout(next);
            let (messages, other) = drain(&mut uas);
            sent.extend(messages);
            ended.extend(other);
        }
        assert_eq!(
            ended,
            vec![UasOutput::Ended {
                call,
                reason: CallEnd::AckTimeout
            }]
        );
        // 200 at 0.5, 1.5, 3.5, 7.5, 11.5 ... until 32 s; then BYEs until 64*T1 later.
        assert!(sent.iter().filter(|s| *s == "200").count() >= 7, "{sent:?}");
        assert!(sent.iter().filter(|s| *s == "BYE").count() >= 7, "{sent:?}");
        assert!(now >= 64_000, "gave up at {now}");
        assert_eq!(uas.tracked_calls(), 0);
    }
}
