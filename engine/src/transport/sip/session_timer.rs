//! Session timers (RFC 4028) of an inbound call, sans-IO.
//!
//! A call whose INVITE asks for a session timer (`Session-Expires`, or
//! `Supported: timer` when we want one) must be refreshed within each
//! interval, or it is over: a call whose far end vanished (a crashed PBX,
//! a NAT binding gone) is not held open for hours. [`negotiate_timer`]
//! reads the INVITE: an interval under our `Min-SE` is refused with 422
//! (the caller retries with a larger one); otherwise the 200 says
//! `Session-Expires: N;refresher=...` ([`TimerTerms::header`]). The refresher is
//! who the caller named; if it named none, the caller when it supports
//! timers, else us (RFC 4028 section 9).
//!
//! [`SessionTimer`] then keeps time: when we refresh, at half the interval
//! (the [`SipUas`](super::uas::SipUas) sends an UPDATE, or a re-INVITE
//! with the same SDP if the peer does not allow UPDATE); when the peer
//! does, the session ends with our BYE if no refresh came by the interval
//! minus min(32 s, interval / 3) (section 10). Every refresh (a re-INVITE
//! or UPDATE from the peer, a 2xx to ours) starts the interval again.

use std::time::Duration;

use super::message::SipMessage;
use crate::clock::Instant;

/// RFC 4028 section 4: no `Min-SE` may be under 90 s on the wire.
pub const MIN_SE_FLOOR: Duration = Duration::from_secs(90);

/// Our session timer settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimerConfig {
    /// The interval we ask for when the caller supports timers but did not
    /// ask for one (RFC 4028 recommends 1800 s).
    pub interval: Duration,
    /// The smallest interval we accept (422 below it). RFC 4028 wants at
    /// least [`MIN_SE_FLOOR`]; tests use less to run in seconds.
    pub min_se: Duration,
}

impl Default for SessionTimerConfig {
    fn default() -> Self {
        SessionTimerConfig {
            interval: Duration::from_secs(1_800),
            min_se: MIN_SE_FLOOR,
        }
    }
}

/// Who refreshes the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    /// We do (the caller said `refresher=uas`, or cannot).
    Us,
    /// The caller does (`refresher=uac`).
    Peer,
}

/// The session timer agreed for a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerTerms {
    /// The session interval.
    pub interval: Duration,
    /// Who refreshes.
    pub refresher: Refresher,
    /// The caller said `Supported: timer` (then our 200 has `Require: timer`).
    pub peer_supports: bool,
}

impl TimerTerms {
    /// The `Session-Expires` value of our responses (we are the UAS).
    pub fn header(&self) -> String {
        let refresher = match self.refresher {
            Refresher::Us => "uas",
            Refresher::Peer => "uac",
        };
        format!("{};refresher={refresher}", self.interval.as_secs())
    }
}

/// Whether a header's comma-separated option tags include `tag`.
fn has_option_tag(message: &SipMessage, header: &str, tag: &str) -> bool {
    message.headers_named(header).any(|value| {
        value
            .split(',')
            .any(|option| option.trim().eq_ignore_ascii_case(tag))
    })
}

/// `Session-Expires` (or its compact form `x`): seconds and refresher param.
fn session_expires(message: &SipMessage) -> Option<(u64, Option<Refresher>)> {
    let value = message
        .header("session-expires")
        .or_else(|| message.header("x"))?;
    let mut parts = value.split(';');
    let seconds = parts.next()?.trim().parse::<u64>().ok()?;
    let refresher = parts.find_map(|param| {
        let (name, value) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("refresher") {
            return None;
        }
        match value.trim().to_ascii_lowercase().as_str() {
            "uac" => Some(Refresher::Peer),
            "uas" => Some(Refresher::Us),
            _ => None,
        }
    });
    Some((seconds, refresher))
}

/// The peer allows UPDATE (so we refresh with it rather than a re-INVITE).
pub fn allows_update(message: &SipMessage) -> bool {
    has_option_tag(message, "allow", "UPDATE")
}

/// Reads an INVITE's session timer request. `Ok(None)`: no timer (the
/// caller neither asked nor supports one); `Err(min_se)`: refuse with 422
/// and `Min-SE: min_se`.
pub fn negotiate_timer(
    config: &SessionTimerConfig,
    invite: &SipMessage,
) -> Result<Option<TimerTerms>, Duration> {
    negotiate_with(config, invite, false)
}

fn negotiate_with(
    config: &SessionTimerConfig,
    invite: &SipMessage,
    known_support: bool,
) -> Result<Option<TimerTerms>, Duration> {
    let peer_supports = known_support || has_option_tag(invite, "supported", "timer");
    let their_min = invite
        .header("min-se")
        .and_then(|value| value.split(';').next())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or_default();
    match session_expires(invite) {
        Some((seconds, refresher)) => {
            let interval = Duration::from_secs(seconds);
            if interval < config.min_se {
                return Err(config.min_se.max(their_min));
            }
            let refresher = match refresher {
                // A caller that does not support timers cannot refresh (a
                // proxy added the header): we must (RFC 4028 section 9).
                Some(Refresher::Peer) if peer_supports => Refresher::Peer,
                Some(Refresher::Peer) | Some(Refresher::Us) => Refresher::Us,
                None if peer_supports => Refresher::Peer,
                None => Refresher::Us,
            };
            Ok(Some(TimerTerms {
                interval,
                refresher,
                peer_supports,
            }))
        }
        None if peer_supports => Ok(Some(TimerTerms {
            interval: config.interval.max(config.min_se).max(their_min),
            refresher: Refresher::Peer,
            peer_supports,
        })),
        None => Ok(None),
    }
}

/// A refresh (re-INVITE or UPDATE) from the peer in a call with `current`
/// terms: the terms from then on, or `Err(min_se)` for a 422.
pub fn read_refresh(
    config: &SessionTimerConfig,
    current: &TimerTerms,
    request: &SipMessage,
) -> Result<TimerTerms, Duration> {
    // Support shown once (in the INVITE) holds for the dialog.
    match negotiate_with(config, request, current.peer_supports)? {
        Some(terms) => Ok(terms),
        // Refreshes that omit the header keep the interval (lenient).
        None => Ok(*current),
    }
}

/// Our refresh request's `Session-Expires`: the roles are the
/// transaction's (RFC 4028 section 7.4), so as its UAC we say `uac`.
pub fn request_header(terms: &TimerTerms) -> String {
    format!("{};refresher=uac", terms.interval.as_secs())
}

/// The terms a 2xx to our refresh sets: its `Session-Expires`, where
/// `uac` is us (the transaction's UAC); without one, `current` stands.
pub fn response_terms(current: &TimerTerms, response: &SipMessage) -> TimerTerms {
    match session_expires(response) {
        Some((seconds, refresher)) if seconds > 0 => TimerTerms {
            interval: Duration::from_secs(seconds),
            refresher: match refresher {
                Some(Refresher::Us) => Refresher::Peer,
                _ => Refresher::Us,
            },
            peer_supports: current.peer_supports,
        },
        _ => *current,
    }
}

/// The running timer of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimer {
    terms: TimerTerms,
    refreshed_at: Instant,
}

impl SessionTimer {
    /// Started (or refreshed) at `now`.
    pub fn new(terms: TimerTerms, now: Instant) -> SessionTimer {
        SessionTimer {
            terms,
            refreshed_at: now,
        }
    }

    /// The agreed terms.
    pub fn terms(&self) -> TimerTerms {
        self.terms
    }

    /// A refresh happened at `now` with these `terms`.
    pub fn refreshed(&mut self, now: Instant, terms: TimerTerms) {
        self.terms = terms;
        self.refreshed_at = now;
    }

    /// When we send our refresh (we are the refresher): half the interval.
    pub fn refresh_at(&self) -> Option<Instant> {
        (self.terms.refresher == Refresher::Us).then(|| self.refreshed_at + self.terms.interval / 2)
    }

    /// When the session is over without a refresh: for the peer's, the
    /// interval minus min(32 s, interval / 3) (RFC 4028 section 10); for
    /// ours (all failed), the interval.
    pub fn expires_at(&self) -> Instant {
        let interval = self.terms.interval;
        match self.terms.refresher {
            Refresher::Peer => {
                self.refreshed_at + interval - (interval / 3).min(Duration::from_secs(32))
            }
            Refresher::Us => self.refreshed_at + interval,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invite(extra: &str) -> SipMessage {
        let text = format!(
            "INVITE sip:1000@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.10;branch=z9hG4bKx\r\n\
             From: <sip:a@b>;tag=1\r\nTo: <sip:1000@192.0.2.1>\r\nCall-ID: st\r\nCSeq: 1 INVITE\r\n\
             Max-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        SipMessage::parse(text.as_bytes()).expect("parses")
    }

    fn config() -> SessionTimerConfig {
        SessionTimerConfig::default()
    }

    #[test]
    fn the_callers_interval_and_refresher_are_kept() {
        let terms = negotiate_timer(
            &config(),
            &invite("Supported: replaces, timer\r\nSession-Expires: 600;refresher=uac\r\n"),
        )
        .expect("acceptable")
        .expect("a timer");
        assert_eq!(terms.interval, Duration::from_secs(600));
        assert_eq!(terms.refresher, Refresher::Peer);
        assert!(terms.peer_supports);
        assert_eq!(terms.header(), "600;refresher=uac");
        let ours = negotiate_timer(
            &config(),
            &invite("Supported: timer\r\nx: 300;refresher=uas\r\n"),
        )
        .expect("acceptable")
        .expect("a timer");
        assert_eq!(
            (ours.interval.as_secs(), ours.refresher),
            (300, Refresher::Us)
        );
    }

    #[test]
    fn too_small_is_422_with_our_min_se() {
        let refused = negotiate_timer(
            &config(),
            &invite("Supported: timer\r\nSession-Expires: 60\r\n"),
        );
        assert_eq!(refused, Err(MIN_SE_FLOOR));
        // Their larger Min-SE wins the 422's value.
        let refused = negotiate_timer(
            &config(),
            &invite("Supported: timer\r\nSession-Expires: 60\r\nMin-SE: 120\r\n"),
        );
        assert_eq!(refused, Err(Duration::from_secs(120)));
    }

    #[test]
    fn who_refreshes_when_nobody_said() {
        // Supported but no header: we ask for our interval, the caller refreshes.
        let terms = negotiate_timer(&config(), &invite("Supported: timer\r\nMin-SE: 2000\r\n"))
            .expect("acceptable")
            .expect("a timer");
        assert_eq!(terms.interval, Duration::from_secs(2_000));
        assert_eq!(terms.refresher, Refresher::Peer);
        // A proxy added Session-Expires for a caller without timers: we refresh.
        let terms = negotiate_timer(
            &config(),
            &invite("Session-Expires: 1800;refresher=uac\r\n"),
        )
        .expect("acceptable")
        .expect("a timer");
        assert_eq!(terms.refresher, Refresher::Us);
        assert!(!terms.peer_supports);
        // Neither: no timer.
        assert_eq!(negotiate_timer(&config(), &invite("")), Ok(None));
        // Garbage is no timer, never a panic.
        assert_eq!(
            negotiate_timer(&config(), &invite("Session-Expires: soon\r\n")),
            Ok(None)
        );
    }

    #[test]
    fn refresh_and_expiry_times_on_virtual_time() {
        let ours = TimerTerms {
            interval: Duration::from_secs(90),
            refresher: Refresher::Us,
            peer_supports: true,
        };
        let mut timer = SessionTimer::new(ours, Instant::from_millis(1_000));
        assert_eq!(timer.refresh_at(), Some(Instant::from_millis(46_000)));
        assert_eq!(timer.expires_at(), Instant::from_millis(91_000));
        timer.refreshed(Instant::from_millis(46_100), ours);
        assert_eq!(timer.refresh_at(), Some(Instant::from_millis(91_100)));
        let theirs = TimerTerms {
            refresher: Refresher::Peer,
            ..ours
        };
        let timer = SessionTimer::new(theirs, Instant::ZERO);
        assert_eq!(timer.refresh_at(), None);
        // 90 - min(32, 30) = 60 s.
        assert_eq!(timer.expires_at(), Instant::from_millis(60_000));
        let long = SessionTimer::new(
            TimerTerms {
                interval: Duration::from_secs(1_800),
                ..theirs
            },
            Instant::ZERO,
        );
        assert_eq!(long.expires_at(), Instant::from_millis(1_768_000));
    }

    // The UAS with session timers, on virtual time.

    use crate::transport::sip::message::response;
    use crate::transport::sip::uas::{CallEnd, SipUas, UasConfig, UasOutput};
    use std::net::SocketAddr;

    const PEER: &str = "192.0.2.10:5070";

    fn peer() -> SocketAddr {
        PEER.parse().expect("addr")
    }

    fn request(
        method: &str,
        cseq: u32,
        branch: &str,
        to_tag: Option<&str>,
        extra: &str,
    ) -> Vec<u8> {
        let to_tag = to_tag.map(|tag| format!(";tag={tag}")).unwrap_or_default();
        let body = if method == "INVITE" && to_tag.is_empty() {
            "v=0\r\no=p 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
             m=audio 6000 RTP/AVP 0\r\n"
        } else {
            ""
        };
        format!(
            "{method} sip:1000@192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {PEER};branch=z9hG4bK{branch}\r\n\
             From: <sip:peer@192.0.2.10>;tag=peer1\r\nTo: <sip:1000@192.0.2.1>{to_tag}\r\n\
             Call-ID: timer-test\r\nCSeq: {cseq} {method}\r\nContact: <sip:peer@{PEER}>\r\n\
             Max-Forwards: 70\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// What the UAS queued: messages sent (parsed) and calls ended.
    fn drain(uas: &mut SipUas) -> (Vec<SipMessage>, Vec<CallEnd>) {
        let (mut sent, mut ended) = (Vec::new(), Vec::new());
        while let Some(output) = uas.poll_output() {
            match output {
                UasOutput::Transmit { bytes, .. } => {
                    sent.push(SipMessage::parse(&bytes).expect("we send valid SIP"));
                }
                UasOutput::Ended { reason, .. } => ended.push(reason),
                _ => {}
            }
        }
        (sent, ended)
    }

    /// An answered call whose INVITE had `extra` headers; returns our To
    /// tag and the 200.
    fn answered(uas: &mut SipUas, extra: &str) -> (String, SipMessage) {
        uas.handle_datagram(
            Instant::ZERO,
            peer(),
            &request("INVITE", 1, "inv", None, extra),
        );
        let call = loop {
            match uas.poll_output() {
                Some(UasOutput::Incoming(incoming)) => break incoming.call,
                Some(_) => {}
                None => panic!("no call"),
            }
        };
        uas.accept(
            Instant::ZERO,
            call,
            "192.0.2.1:40000".parse().expect("addr"),
        )
        .expect("accept");
        let (sent, _) = drain(uas);
        let ok = sent
            .into_iter()
            .find(|message| message.status() == Some(200))
            .expect("a 200");
        let tag = ok.to_tag().expect("a tag").to_owned();
        uas.handle_datagram(
            Instant::ZERO,
            peer(),
            &request("ACK", 1, "ack", Some(&tag), ""),
        );
        let _ = drain(uas);
        (tag, ok)
    }

    fn uas() -> SipUas {
        SipUas::new(UasConfig::new("192.0.2.1:5060".parse().expect("addr")), 5)
    }

    #[test]
    fn uas_refuses_a_small_interval_with_422() {
        let mut uas = uas();
        let invite = request(
            "INVITE",
            1,
            "small",
            None,
            "Supported: timer\r\nSession-Expires: 30\r\n",
        );
        uas.handle_datagram(Instant::ZERO, peer(), &invite);
        let (sent, _) = drain(&mut uas);
        let refused = sent
            .iter()
            .find(|m| m.status() == Some(422))
            .expect("a 422");
        assert_eq!(refused.header("min-se"), Some("90"));
        // The caller ACKs and retries with the same Call-ID, a higher CSeq
        // and our Min-SE: a new call.
        uas.handle_datagram(
            Instant::from_millis(10),
            peer(),
            &request("ACK", 1, "small", None, ""),
        );
        let retry = request(
            "INVITE",
            2,
            "retry",
            None,
            "Supported: timer\r\nSession-Expires: 90\r\n",
        );
        uas.handle_datagram(Instant::from_millis(20), peer(), &retry);
        let mut offered = false;
        while let Some(output) = uas.poll_output() {
            offered |= matches!(output, UasOutput::Incoming(_));
        }
        assert!(offered, "the retry is a call");
    }

    #[test]
    fn uas_ends_a_session_the_peer_stops_refreshing() {
        let mut uas = uas();
        let (tag, ok) = answered(
            &mut uas,
            "Supported: timer\r\nSession-Expires: 90;refresher=uac\r\n",
        );
        assert_eq!(ok.header("session-expires"), Some("90;refresher=uac"));
        assert_eq!(ok.header("require"), Some("timer"));
        // The peer refreshes by UPDATE at 50 s: 200 with the interval.
        let update = request(
            "UPDATE",
            2,
            "up",
            Some(&tag),
            "Session-Expires: 90;refresher=uac\r\n",
        );
        uas.handle_datagram(Instant::from_millis(50_000), peer(), &update);
        let (sent, _) = drain(&mut uas);
        assert_eq!(sent[0].status(), Some(200));
        assert_eq!(sent[0].header("session-expires"), Some("90;refresher=uac"));
        // Then nothing: at 50 + 90 - 30 = 110 s our BYE, not a moment before.
        uas.handle_timeout(Instant::from_millis(109_999));
        assert_eq!(drain(&mut uas), (vec![], vec![]));
        uas.handle_timeout(Instant::from_millis(110_000));
        let (sent, ended) = drain(&mut uas);
        assert_eq!(sent[0].method(), Some("BYE"));
        assert_eq!(ended, vec![CallEnd::SessionExpired]);
    }

    #[test]
    fn uas_refreshes_by_update_at_half_the_interval_and_gives_up_without_answers() {
        let mut uas = uas();
        let (_, ok) = answered(
            &mut uas,
            "Supported: timer\r\nAllow: INVITE, ACK, BYE, UPDATE\r\nSession-Expires: 100;refresher=uas\r\n",
        );
        assert_eq!(ok.header("session-expires"), Some("100;refresher=uas"));
        assert_eq!(uas.next_deadline(), Some(Instant::from_millis(50_000)));
        uas.handle_timeout(Instant::from_millis(50_000));
        let (sent, _) = drain(&mut uas);
        let update = &sent[0];
        assert_eq!(update.method(), Some("UPDATE"));
        assert_eq!(update.header("session-expires"), Some("100;refresher=uac"));
        assert_eq!(update.to_tag(), Some("peer1"));
        // The peer's 200 (it keeps us as refresher): the next one at 50 + 50 s.
        let answer = response(
            update,
            200,
            None,
            peer(),
            &[("Session-Expires", "100;refresher=uac")],
            None,
        );
        uas.handle_datagram(Instant::from_millis(50_100), peer(), answer.as_bytes());
        let (sent, ended) = drain(&mut uas);
        assert!(sent.is_empty() && ended.is_empty());
        assert_eq!(uas.next_deadline(), Some(Instant::from_millis(100_100)));
        // The next refresh is never answered: retransmitted, then the session ends.
        let mut now = Instant::from_millis(100_100);
        let mut updates = 0;
        let mut ended = Vec::new();
        while ended.is_empty() && now < Instant::from_millis(200_000) {
            uas.handle_timeout(now);
            let (sent, end) = drain(&mut uas);
            updates += sent.iter().filter(|m| m.method() == Some("UPDATE")).count();
            if !end.is_empty() {
                assert_eq!(sent.last().and_then(SipMessage::method), Some("BYE"));
            }
            ended = end;
            now = uas.next_deadline().expect("a timer");
        }
        assert_eq!(ended, vec![CallEnd::SessionExpired]);
        assert!(updates >= 5, "{updates} UPDATEs");
    }

    #[test]
    fn uas_refreshes_by_reinvite_when_update_is_not_allowed_and_acks_it() {
        let mut uas = uas();
        let (_, _) = answered(&mut uas, "Session-Expires: 90\r\n");
        // A caller without timer support: we refresh, by re-INVITE.
        uas.handle_timeout(Instant::from_millis(45_000));
        let (sent, _) = drain(&mut uas);
        let reinvite = &sent[0];
        assert_eq!(reinvite.method(), Some("INVITE"));
        assert!(
            reinvite.body.contains("m=audio 40000 "),
            "our session: {}",
            reinvite.body
        );
        let answer = response(reinvite, 200, None, peer(), &[], None);
        uas.handle_datagram(Instant::from_millis(45_050), peer(), answer.as_bytes());
        let (sent, _) = drain(&mut uas);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].method(), Some("ACK"));
        assert_eq!(sent[0].cseq(), reinvite.cseq().map(|(n, _)| (n, "ACK")));
        assert_ne!(
            sent[0].branch(),
            reinvite.branch(),
            "a 2xx's ACK is a new transaction"
        );
        assert_eq!(uas.next_deadline(), Some(Instant::from_millis(90_050)));
    }
}
