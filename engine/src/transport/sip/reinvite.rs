//! Re-INVITEs of an answered inbound call, sans-IO: hold, resume and a
//! moved RTP address (RFC 3264 section 8, RFC 6337).
//!
//! [`read_reoffer`] decides what a new offer in the dialog does to the
//! call: `a=sendonly` or `a=inactive` (or the RFC 2543 `c=0.0.0.0`) puts
//! it on hold (we answer `recvonly` or `inactive` and stop sending);
//! `a=sendrecv` resumes it; a new address or port is where RTP goes from
//! then on. The codec stays the call's (its media pipeline was built for
//! it): an offer without it is refused with 488 and the call goes on with
//! the old session. A re-INVITE without SDP is answered with the current
//! session as our offer.
//!
//! The [`SipUas`](super::uas::SipUas) keeps one [`PendingReinvite`] per
//! call between its final response and the ACK: the response is
//! retransmitted like a 2xx (T1 doubling to T2, for 64*T1), replayed to a
//! retransmitted re-INVITE, and a new offer meanwhile gets 491 (RFC 3261
//! section 14.2; the peer retries after a random wait).

use std::net::SocketAddr;
use std::time::Duration;

use super::sdp::{Direction, Negotiated, SdpError, negotiate_keeping};
use crate::clock::Instant;

/// What the call's media does after an accepted re-offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaUpdate {
    /// Where the peer receives RTP now.
    pub remote_rtp: SocketAddr,
    /// Where it receives RTCP (RTP port + 1 unless it said otherwise).
    pub remote_rtcp: SocketAddr,
    /// On hold: we must not send (our answer is `recvonly` or `inactive`),
    /// and what comes in is not the caller talking (music on hold).
    pub held: bool,
}

impl MediaUpdate {
    /// The media state `media` stands for.
    pub fn of(media: &Negotiated) -> MediaUpdate {
        let rtp = media.remote_rtp;
        MediaUpdate {
            remote_rtp: rtp,
            remote_rtcp: media
                .remote_rtcp
                .unwrap_or_else(|| SocketAddr::new(rtp.ip(), rtp.port().wrapping_add(1))),
            held: matches!(media.direction, Direction::RecvOnly | Direction::Inactive),
        }
    }
}

/// What a re-INVITE's body asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reoffer {
    /// A new offer we accept: answer it from `media`.
    Accept {
        /// The call's media from now on.
        media: Negotiated,
    },
    /// No SDP (RFC 3261 14.2): our current session is the offer of the 200,
    /// the ACK carries the answer.
    NoOffer,
}

/// Reads the body of a re-INVITE of a call whose media is `current`; the
/// error is the status to refuse it with (the call goes on unchanged).
pub fn read_reoffer(current: &Negotiated, body: &str) -> Result<Reoffer, u16> {
    if body.trim().is_empty() {
        return Ok(Reoffer::NoOffer);
    }
    let mut media = match negotiate_keeping(body, current.codec.kind) {
        Ok(media) => media,
        Err(SdpError::Malformed(_)) => return Err(400),
        // No common codec, no audio stream, no address: not acceptable here.
        Err(_) => return Err(488),
    };
    if media.remote_rtp.ip().is_unspecified() {
        // RFC 2543 hold (RFC 6337 5.3): do not send; keep the old address
        // for when the call resumes with a real one.
        media.remote_rtp = current.remote_rtp;
        media.remote_rtcp = current.remote_rtcp;
        media.direction = match media.direction {
            Direction::SendRecv | Direction::RecvOnly => Direction::RecvOnly,
            other => other,
        };
    }
    // rtcp-mux is decided by the first offer/answer (RFC 5761 5.1.3).
    media.rtcp_mux = current.rtcp_mux;
    Ok(Reoffer::Accept { media })
}

/// One re-INVITE's final response awaiting its ACK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingReinvite {
    /// The re-INVITE's branch (its retransmissions carry it).
    pub branch: String,
    /// Its CSeq number (the ACK carries it, on a new branch after a 2xx).
    pub cseq: u32,
    /// The response, sent again until the ACK.
    pub response: String,
    next: Instant,
    interval: Duration,
    give_up: Instant,
}

impl PendingReinvite {
    /// Sent at `now`: first retransmission after `t1`, none after 64*T1.
    pub fn new(branch: String, cseq: u32, response: String, now: Instant, t1: Duration) -> Self {
        PendingReinvite {
            branch,
            cseq,
            response,
            next: now + t1,
            interval: t1,
            give_up: now + 64 * t1,
        }
    }

    /// When it needs attention.
    pub fn deadline(&self) -> Instant {
        self.next.min(self.give_up)
    }

    /// True once 64*T1 passed without an ACK (the response is given up).
    pub fn expired(&self, now: Instant) -> bool {
        now >= self.give_up
    }

    /// The response to send again at `now`, if due (the interval doubles
    /// up to `t2`).
    pub fn retransmission(&mut self, now: Instant, t2: Duration) -> Option<&str> {
        if now < self.next || self.expired(now) {
            return None;
        }
        self.interval = (self.interval * 2).min(t2);
        self.next = now + self.interval;
        Some(&self.response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::sip::sdp::{CodecKind, negotiate};
    use crate::transport::sip::uas::{SipUas, UasConfig, UasOutput};

    fn offer(port: u16, ip: &str, codecs: &str, direction: &str) -> String {
        format!(
            "v=0\r\no=peer 1 2 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP {codecs} 101\r\na=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:8 PCMA/8000\r\na=rtpmap:18 G729/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\na={direction}\r\n"
        )
    }

    fn current() -> Negotiated {
        negotiate(&offer(6000, "192.0.2.10", "0 8", "sendrecv")).expect("answerable")
    }

    fn accepted(body: &str) -> Negotiated {
        match read_reoffer(&current(), body) {
            Ok(Reoffer::Accept { media }) => media,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sendonly_and_inactive_hold_sendrecv_resumes_and_a_new_port_is_followed() {
        let held = accepted(&offer(6000, "192.0.2.10", "0", "sendonly"));
        assert_eq!(held.direction, Direction::RecvOnly);
        assert!(MediaUpdate::of(&held).held);
        let inactive = accepted(&offer(6000, "192.0.2.10", "0", "inactive"));
        assert_eq!(inactive.direction, Direction::Inactive);
        assert!(MediaUpdate::of(&inactive).held);
        let resumed = accepted(&offer(7002, "192.0.2.20", "0", "sendrecv"));
        let update = MediaUpdate::of(&resumed);
        assert!(!update.held);
        assert_eq!(update.remote_rtp, "192.0.2.20:7002".parse().expect("addr"));
        assert_eq!(update.remote_rtcp, "192.0.2.20:7003".parse().expect("addr"));
        // The peer only receiving is no hold: the agent still talks.
        assert!(!MediaUpdate::of(&accepted(&offer(6000, "192.0.2.10", "0", "recvonly"))).held);
    }

    #[test]
    fn rfc_2543_hold_keeps_the_address_and_stops_sending() {
        let held = accepted(&offer(6000, "0.0.0.0", "0", "sendrecv"));
        assert_eq!(held.direction, Direction::RecvOnly);
        assert_eq!(held.remote_rtp, current().remote_rtp);
        assert!(MediaUpdate::of(&held).held);
    }

    #[test]
    fn the_codec_stays_and_refusals_keep_the_call() {
        // PCMA first, but PCMU (the call's) is offered too: PCMU stays.
        let kept = accepted(&offer(6000, "192.0.2.10", "8 0", "sendrecv"));
        assert_eq!(kept.codec.kind, CodecKind::Pcmu);
        assert_eq!(kept.codec.payload_type, 0);
        // Only PCMA or only G.729: 488.
        for codecs in ["8", "18"] {
            let body = offer(6000, "192.0.2.10", codecs, "sendrecv");
            assert_eq!(read_reoffer(&current(), &body), Err(488), "{codecs}");
        }
        assert_eq!(read_reoffer(&current(), "v=0\r\nbad line\r\n"), Err(400));
        assert_eq!(read_reoffer(&current(), " \r\n"), Ok(Reoffer::NoOffer));
    }

    #[test]
    fn a_pending_response_is_retransmitted_until_given_up() {
        let t1 = Duration::from_millis(500);
        let mut pending =
            PendingReinvite::new("b".into(), 3, "SIP/2.0 200 OK".into(), Instant::ZERO, t1);
        assert_eq!(
            pending.retransmission(Instant::from_millis(499), t1 * 8),
            None
        );
        let mut sent = Vec::new();
        let mut now = Instant::ZERO;
        while !pending.expired(now) {
            now = pending.deadline();
            if pending.retransmission(now, t1 * 8).is_some() {
                sent.push(now.since_epoch().as_millis());
            }
        }
        assert_eq!(&sent[..5], &[500, 1_500, 3_500, 7_500, 11_500]);
        assert_eq!(now, Instant::from_millis(32_000));
    }

    // The UAS with re-INVITEs, on virtual time.

    const PEER: &str = "192.0.2.10:5070";

    fn request(method: &str, cseq: u32, branch: &str, to_tag: Option<&str>, body: &str) -> Vec<u8> {
        let to_tag = to_tag.map(|tag| format!(";tag={tag}")).unwrap_or_default();
        let content = if body.is_empty() {
            String::new()
        } else {
            "Content-Type: application/sdp\r\n".into()
        };
        format!(
            "{method} sip:1000@192.0.2.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {PEER};branch=z9hG4bK{branch}\r\n\
             From: <sip:peer@192.0.2.10>;tag=peer1\r\nTo: <sip:1000@192.0.2.1>{to_tag}\r\n\
             Call-ID: reinvite-test\r\nCSeq: {cseq} {method}\r\nContact: <sip:peer@{PEER}>\r\n\
             Max-Forwards: 70\r\n{content}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// An answered call; returns the UAS, our To tag and the call.
    fn answered_call() -> (SipUas, String, crate::transport::sip::uas::SipCallId) {
        let config = UasConfig::new("192.0.2.1:5060".parse().expect("addr"));
        let mut uas = SipUas::new(config, 11);
        let peer: SocketAddr = PEER.parse().expect("addr");
        let body = offer(6000, "192.0.2.10", "0", "sendrecv");
        uas.handle_datagram(
            Instant::ZERO,
            peer,
            &request("INVITE", 1, "inv1", None, &body),
        );
        let call = loop {
            match uas.poll_output() {
                Some(UasOutput::Incoming(incoming)) => break incoming.call,
                Some(_) => {}
                None => panic!("no incoming call"),
            }
        };
        uas.accept(
            Instant::ZERO,
            call,
            "192.0.2.1:40000".parse().expect("addr"),
        )
        .expect("accept");
        let mut to_tag = None;
        while let Some(output) = uas.poll_output() {
            if let UasOutput::Transmit { bytes, .. } = output {
                let text = String::from_utf8(bytes).expect("utf-8");
                if text.starts_with("SIP/2.0 200") {
                    let message =
                        crate::transport::sip::message::SipMessage::parse(text.as_bytes())
                            .expect("our 200 parses");
                    to_tag = message.to_tag().map(str::to_owned);
                }
            }
        }
        let to_tag = to_tag.expect("a 200 with a To tag");
        uas.handle_datagram(
            Instant::from_millis(10),
            peer,
            &request("ACK", 1, "ack1", Some(&to_tag), ""),
        );
        assert_eq!(uas.poll_output(), Some(UasOutput::Answered(call)));
        (uas, to_tag, call)
    }

    /// The responses (first lines and bodies) and media changes queued.
    fn drain(uas: &mut SipUas) -> (Vec<String>, Vec<MediaUpdate>) {
        let (mut texts, mut updates) = (Vec::new(), Vec::new());
        while let Some(output) = uas.poll_output() {
            match output {
                UasOutput::Transmit { bytes, .. } => {
                    texts.push(String::from_utf8(bytes).expect("utf-8"))
                }
                UasOutput::MediaChanged { update, .. } => updates.push(update),
                other => panic!("unexpected {other:?}"),
            }
        }
        (texts, updates)
    }

    #[test]
    fn hold_then_resume_on_a_new_port_through_the_uas() {
        let (mut uas, tag, call) = answered_call();
        let peer: SocketAddr = PEER.parse().expect("addr");
        let hold = offer(6000, "192.0.2.10", "0", "sendonly");
        uas.handle_datagram(
            Instant::from_millis(1_000),
            peer,
            &request("INVITE", 2, "re2", Some(&tag), &hold),
        );
        let (texts, updates) = drain(&mut uas);
        assert_eq!(texts.len(), 1);
        assert!(texts[0].starts_with("SIP/2.0 200 OK"), "{}", texts[0]);
        assert!(texts[0].contains("a=recvonly\r\n"), "{}", texts[0]);
        // The same session id, a higher version.
        let o_line = texts[0].lines().find(|l| l.starts_with("o=")).expect("o=");
        let fields: Vec<&str> = o_line.split(' ').collect();
        assert_eq!(
            fields[2].parse::<u64>().expect("version"),
            fields[1].parse::<u64>().expect("id") + 1
        );
        assert_eq!(updates.len(), 1);
        assert!(updates[0].held);
        // Retransmitted until the ACK; a retransmitted re-INVITE gets it again.
        uas.handle_timeout(Instant::from_millis(1_500));
        let (again, _) = drain(&mut uas);
        assert_eq!(again, texts);
        uas.handle_datagram(
            Instant::from_millis(1_600),
            peer,
            &request("INVITE", 2, "re2", Some(&tag), &hold),
        );
        assert_eq!(drain(&mut uas), (texts.clone(), vec![]));
        // Another offer before the ACK: 491, nothing changes.
        let resume = offer(7002, "192.0.2.20", "0", "sendrecv");
        uas.handle_datagram(
            Instant::from_millis(1_700),
            peer,
            &request("INVITE", 3, "re3", Some(&tag), &resume),
        );
        let (texts, updates) = drain(&mut uas);
        assert!(texts[0].starts_with("SIP/2.0 491"), "{}", texts[0]);
        assert!(updates.is_empty());
        uas.handle_datagram(
            Instant::from_millis(1_800),
            peer,
            &request("ACK", 2, "ack2", Some(&tag), ""),
        );
        assert_eq!(drain(&mut uas), (vec![], vec![]));
        // After the ACK no more retransmissions.
        uas.handle_timeout(Instant::from_millis(3_000));
        assert_eq!(drain(&mut uas), (vec![], vec![]));
        // Resume on a new address.
        uas.handle_datagram(
            Instant::from_millis(4_000),
            peer,
            &request("INVITE", 4, "re4", Some(&tag), &resume),
        );
        let (texts, updates) = drain(&mut uas);
        assert!(texts[0].starts_with("SIP/2.0 200 OK") && texts[0].contains("a=sendrecv\r\n"));
        assert_eq!(
            updates,
            vec![MediaUpdate {
                remote_rtp: "192.0.2.20:7002".parse().expect("addr"),
                remote_rtcp: "192.0.2.20:7003".parse().expect("addr"),
                held: false,
            }]
        );
        uas.handle_datagram(
            Instant::from_millis(4_000),
            peer,
            &request("ACK", 4, "ack4", Some(&tag), ""),
        );
        // No common codec: 488, the call goes on (a refresh still answers 200).
        let g729 = offer(7002, "192.0.2.20", "18", "sendrecv");
        uas.handle_datagram(
            Instant::from_millis(5_000),
            peer,
            &request("INVITE", 5, "re5", Some(&tag), &g729),
        );
        let (texts, updates) = drain(&mut uas);
        assert!(texts[0].starts_with("SIP/2.0 488"), "{}", texts[0]);
        assert!(updates.is_empty());
        uas.handle_datagram(
            Instant::from_millis(5_000),
            peer,
            &request("ACK", 5, "re5", Some(&tag), ""),
        );
        uas.handle_datagram(
            Instant::from_millis(6_000),
            peer,
            &request("INVITE", 6, "re6", Some(&tag), &resume),
        );
        let (texts, updates) = drain(&mut uas);
        assert!(texts[0].starts_with("SIP/2.0 200 OK"), "{}", texts[0]);
        assert!(updates.is_empty(), "a refresh changes nothing: {updates:?}");
        uas.handle_datagram(
            Instant::from_millis(6_000),
            peer,
            &request("ACK", 6, "ack6", Some(&tag), ""),
        );
        // A re-INVITE without SDP: our current session as the offer.
        uas.handle_datagram(
            Instant::from_millis(7_000),
            peer,
            &request("INVITE", 7, "re7", Some(&tag), ""),
        );
        let (texts, _) = drain(&mut uas);
        assert!(texts[0].starts_with("SIP/2.0 200 OK") && texts[0].contains("m=audio 40000 "));
        let _ = call;
    }
}
