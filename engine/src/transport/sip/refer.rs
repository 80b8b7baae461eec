//! Blind transfer with REFER (RFC 3515, RFC 5589 section 6), sans-IO.
//!
//! The agent's `transfer_call` asks the call's dialog (the UAS's for an
//! inbound call, the UAC's for an outbound one) to send REFER with
//! `Refer-To: <target>`. The peer answers 202 Accepted (or refuses: 403,
//! 405, 501, 603 ...), places the call to the target itself and reports
//! how that went in NOTIFYs of the implicit `refer` subscription, whose
//! body is a `message/sipfrag` status line (`SIP/2.0 180 Ringing`, then
//! `SIP/2.0 200 OK` or a failure). A final 2xx in a NOTIFY means the
//! caller is now talking to the target: the transferor (us) sends BYE.
//! Anything else is a failed transfer, and the call goes on with the agent.
//!
//! [`Transfer`] is one REFER's life: its retransmissions over UDP (timers
//! E and F, as every non-INVITE request), the 202, the NOTIFYs, and a
//! deadline for the final NOTIFY. The dialogs own the headers; this module
//! owns the rules.

use std::net::SocketAddr;
use std::time::Duration;

use crate::clock::Instant;

use super::message::{SipMessage, reason_phrase};

/// How long after the 202 the final NOTIFY may take: the target rings
/// meanwhile (30 s is a common ring timeout), plus some slack.
pub const FINAL_NOTIFY_WAIT: Duration = Duration::from_secs(45);

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferOutcome {
    /// The peer reached the target (a final 2xx in its NOTIFY).
    Transferred {
        /// The sipfrag status (200).
        status: u16,
    },
    /// The peer refused the REFER, or reported that the target did not
    /// answer, or nothing came in time.
    Failed {
        /// The SIP status that says so (REFER response or sipfrag), if any.
        status: Option<u16>,
        /// Why, for the agent (and the caller).
        reason: String,
    },
}

impl TransferOutcome {
    fn failed(status: u16, by: &str) -> TransferOutcome {
        TransferOutcome::Failed {
            status: Some(status),
            reason: format!("{by} {status} {}", reason_phrase(status)),
        }
    }
}

#[derive(Debug)]
enum Stage {
    /// REFER out, no final response yet; resent until `give_up`.
    Requesting {
        next: Instant,
        interval: Duration,
        give_up: Instant,
    },
    /// 202 came: waiting for the NOTIFY with a final status.
    Accepted { give_up: Instant },
}

/// One REFER in a dialog. See the module docs.
#[derive(Debug)]
pub struct Transfer {
    branch: String,
    request: String,
    to: SocketAddr,
    stage: Stage,
    t2: Duration,
}

/// What a timer of a [`Transfer`] asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferTimeout {
    /// Nothing yet.
    Wait,
    /// Send the REFER again (to its destination).
    Resend(SocketAddr, String),
    /// The transfer is over.
    Done(TransferOutcome),
}

impl Transfer {
    /// A REFER just sent at `now` to `to` with Via branch `branch`;
    /// `t1` and `t2` are RFC 3261's timers.
    pub fn sent(
        now: Instant,
        to: SocketAddr,
        branch: String,
        request: String,
        (t1, t2): (Duration, Duration),
    ) -> Transfer {
        Transfer {
            branch,
            request,
            to,
            stage: Stage::Requesting {
                next: now + t1,
                interval: t1,
                give_up: now + 64 * t1,
            },
            t2,
        }
    }

    /// The Via branch of the REFER (its responses carry it).
    pub fn branch(&self) -> &str {
        &self.branch
    }

    /// When [`Transfer::handle_timeout`] must run.
    pub fn deadline(&self) -> Instant {
        match self.stage {
            Stage::Requesting { next, give_up, .. } => next.min(give_up),
            Stage::Accepted { give_up } => give_up,
        }
    }

    /// A response to the REFER; returns the outcome if it ends the transfer.
    pub fn on_response(&mut self, now: Instant, status: u16) -> Option<TransferOutcome> {
        if !matches!(self.stage, Stage::Requesting { .. }) {
            // A retransmitted 202: already accepted.
            return None;
        }
        match status {
            100..=199 => None,
            200..=299 => {
                self.stage = Stage::Accepted {
                    give_up: now + FINAL_NOTIFY_WAIT,
                };
                None
            }
            _ => Some(TransferOutcome::failed(status, "the transfer was refused:")),
        }
    }

    /// A NOTIFY of the subscription; returns the outcome if its sipfrag
    /// (or the subscription's end) decides the transfer. The dialog
    /// answers the NOTIFY 200 either way.
    pub fn on_notify(&mut self, now: Instant, notify: &SipMessage) -> Option<TransferOutcome> {
        // RFC 3515 2.4.4: a NOTIFY may come before the 202.
        if let Stage::Requesting { .. } = self.stage {
            self.stage = Stage::Accepted {
                give_up: now + FINAL_NOTIFY_WAIT,
            };
        }
        let terminated = notify.header("subscription-state").is_some_and(|state| {
            state
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("terminated")
        });
        match sipfrag_status(&notify.body) {
            Some(status @ 200..=299) => Some(TransferOutcome::Transferred { status }),
            Some(status @ 300..) => Some(TransferOutcome::failed(status, "the target answered")),
            _ if terminated => Some(TransferOutcome::Failed {
                status: None,
                reason: "the peer ended the transfer without a final status".into(),
            }),
            _ => None,
        }
    }

    /// Runs the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> TransferTimeout {
        match &mut self.stage {
            Stage::Requesting { give_up, .. } if *give_up <= now => {
                TransferTimeout::Done(TransferOutcome::Failed {
                    status: Some(408),
                    reason: "the peer did not answer the REFER".into(),
                })
            }
            Stage::Requesting { next, interval, .. } if *next <= now => {
                // Timer E: doubling up to T2.
                *interval = (*interval * 2).min(self.t2);
                *next = now + *interval;
                TransferTimeout::Resend(self.to, self.request.clone())
            }
            Stage::Accepted { give_up } if *give_up <= now => {
                TransferTimeout::Done(TransferOutcome::Failed {
                    status: None,
                    reason: "the peer accepted the transfer but never said whether it worked"
                        .into(),
                })
            }
            _ => TransferTimeout::Wait,
        }
    }
}

/// The status of a `message/sipfrag` status line (`SIP/2.0 200 OK`).
pub fn sipfrag_status(body: &str) -> Option<u16> {
    let line = body.lines().next()?.trim();
    let mut words = line.split_whitespace();
    if !words.next()?.eq_ignore_ascii_case("SIP/2.0") {
        return None;
    }
    words
        .next()?
        .parse()
        .ok()
        .filter(|status| (100..700).contains(status))
}

/// Why a transfer destination is unusable, if it is: it must be a phone
/// number (`+` and digits) or a `sip:`, `sips:` or `tel:` URI, and nothing
/// that could break out of the Refer-To header.
pub fn check_destination(destination: &str) -> Result<(), String> {
    let lower = destination.to_ascii_lowercase();
    let uri = ["sip:", "sips:", "tel:"]
        .iter()
        .find_map(|scheme| lower.strip_prefix(scheme));
    let ok = match uri {
        Some(rest) => {
            !rest.is_empty()
                && rest
                    .chars()
                    .all(|c| c.is_ascii_graphic() && !matches!(c, '<' | '>' | '"' | ','))
        }
        None => {
            let digits = destination.strip_prefix('+').unwrap_or(destination);
            (3..=20).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit())
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{destination:?} is not a phone number (+14155550100) or a sip:/tel: URI"
        ))
    }
}

/// The Refer-To URI for a configured destination: a `sip:`, `sips:` or
/// `tel:` URI as given; a phone number (`+` and digits) at the peer's
/// host, for its trunk or PBX to route.
pub fn refer_to_uri(destination: &str, peer: SocketAddr) -> String {
    let lower = destination.to_ascii_lowercase();
    if lower.starts_with("sip:") || lower.starts_with("sips:") || lower.starts_with("tel:") {
        destination.to_owned()
    } else {
        format!("sip:{destination}@{peer}")
    }
}

/// The headers a REFER adds to the dialog's request start (request line,
/// Via, From, To, Call-ID, CSeq): Refer-To, Referred-By, Contact.
pub fn refer_headers(refer_to: &str, referred_by: &str, contact: &str) -> String {
    format!(
        "Refer-To: <{refer_to}>\r\nReferred-By: <{referred_by}>\r\nContact: {contact}\r\n\
         Event: refer\r\nUser-Agent: CallingBox\r\nContent-Length: 0\r\n\r\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn peer() -> SocketAddr {
        "192.0.2.7:5060".parse().expect("addr")
    }

    fn transfer() -> Transfer {
        Transfer::sent(
            at(0),
            peer(),
            "z9hG4bKrefer".into(),
            "REFER sip:a@b SIP/2.0\r\n\r\n".into(),
            (Duration::from_millis(500), Duration::from_secs(4)),
        )
    }

    fn notify(frag: &str, state: &str) -> SipMessage {
        let text = format!(
            "NOTIFY sip:us@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.7;branch=z9hG4bKn\r\n\
             From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 NOTIFY\r\n\
             Event: refer\r\nSubscription-State: {state}\r\nContent-Type: message/sipfrag\r\n\
             Content-Length: {}\r\n\r\n{frag}",
            frag.len()
        );
        SipMessage::parse(text.as_bytes()).expect("notify")
    }

    #[test]
    fn accepted_then_a_final_200_notify_is_a_transfer() {
        let mut transfer = transfer();
        assert_eq!(transfer.on_response(at(10), 202), None);
        assert_eq!(transfer.deadline(), at(10) + FINAL_NOTIFY_WAIT);
        let trying = notify("SIP/2.0 100 Trying\r\n", "active;expires=60");
        assert_eq!(transfer.on_notify(at(20), &trying), None);
        let ringing = notify("SIP/2.0 180 Ringing\r\n", "active;expires=60");
        assert_eq!(transfer.on_notify(at(30), &ringing), None);
        let ok = notify("SIP/2.0 200 OK\r\n", "terminated;reason=noresource");
        assert_eq!(
            transfer.on_notify(at(40), &ok),
            Some(TransferOutcome::Transferred { status: 200 })
        );
    }

    #[test]
    fn a_refusal_or_a_failed_target_fails_the_transfer_with_its_status() {
        let mut refused = transfer();
        assert_eq!(
            refused.on_response(at(10), 603),
            Some(TransferOutcome::Failed {
                status: Some(603),
                reason: "the transfer was refused: 603 Decline".into()
            })
        );
        let mut busy = transfer();
        busy.on_response(at(10), 202);
        let frag = notify("SIP/2.0 486 Busy Here", "terminated");
        assert_eq!(
            busy.on_notify(at(20), &frag),
            Some(TransferOutcome::Failed {
                status: Some(486),
                reason: "the target answered 486 Busy Here".into()
            })
        );
        let mut ended = transfer();
        ended.on_response(at(10), 202);
        let bare = notify("SIP/2.0 180 Ringing", "terminated;reason=timeout");
        assert!(matches!(
            ended.on_notify(at(20), &bare),
            Some(TransferOutcome::Failed { status: None, .. })
        ));
    }

    #[test]
    fn the_refer_is_resent_on_timer_e_until_timer_f_gives_up() {
        let mut transfer = transfer();
        assert_eq!(transfer.handle_timeout(at(499)), TransferTimeout::Wait);
        let mut resent = Vec::new();
        let gave_up_at = loop {
            let now = transfer.deadline().since_epoch().as_millis() as u64;
            match transfer.handle_timeout(at(now)) {
                TransferTimeout::Resend(to, text) => {
                    assert_eq!(to, peer());
                    assert!(text.starts_with("REFER "));
                    resent.push(now);
                }
                TransferTimeout::Done(outcome) => {
                    assert!(matches!(
                        outcome,
                        TransferOutcome::Failed {
                            status: Some(408),
                            ..
                        }
                    ));
                    break now;
                }
                TransferTimeout::Wait => panic!("a deadline with nothing due at {now}"),
            }
        };
        // 0.5, 1.5, 3.5, 7.5, 11.5 ... s: doubling to T2 = 4 s; F at 32 s.
        assert_eq!(&resent[..4], &[500, 1_500, 3_500, 7_500]);
        assert_eq!(resent[4] - resent[3], 4_000);
        assert_eq!(gave_up_at, 32_000);
    }

    #[test]
    fn accepted_but_never_notified_gives_up_after_the_wait() {
        let mut transfer = transfer();
        transfer.on_response(at(100), 202);
        // A retransmitted 202 changes nothing; no more resends.
        assert_eq!(transfer.on_response(at(200), 202), None);
        let end = at(100) + FINAL_NOTIFY_WAIT;
        assert_eq!(transfer.deadline(), end);
        assert!(matches!(
            transfer.handle_timeout(end),
            TransferTimeout::Done(TransferOutcome::Failed { status: None, .. })
        ));
    }

    #[test]
    fn sipfrag_and_destinations() {
        assert_eq!(sipfrag_status("SIP/2.0 200 OK\r\n"), Some(200));
        assert_eq!(sipfrag_status("sip/2.0 503 Service Unavailable"), Some(503));
        assert_eq!(sipfrag_status("HTTP/1.1 200 OK"), None);
        assert_eq!(sipfrag_status("SIP/2.0 abc"), None);
        assert_eq!(sipfrag_status(""), None);
        assert_eq!(
            refer_to_uri("+14155550100", peer()),
            "sip:+14155550100@192.0.2.7:5060"
        );
        assert_eq!(
            refer_to_uri("sip:desk@pbx.example", peer()),
            "sip:desk@pbx.example"
        );
        assert_eq!(refer_to_uri("tel:+44207", peer()), "tel:+44207");
        for good in [
            "+14155550100",
            "911",
            "sip:desk@pbx.example;transport=tcp",
            "tel:+44207",
        ] {
            assert_eq!(check_destination(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "sip:",
            "desk",
            "+1 415",
            "sip:a@b>\r\nX: y",
            "sip:a b@c",
            "12",
        ] {
            assert!(check_destination(bad).is_err(), "{bad:?}");
        }
    }
}
