//! How a call ended, as the control plane stores it: the call's terminal
//! `status` and its `hangup_cause` (the CallingBox API's call fields).
//!
//! | how the call ended ([`SipEnd`]) | outcome | `hangup_cause` |
//! | --- | --- | --- |
//! | answered, then anything (BYE either way, a media failure ...) | `completed` | as below |
//! | refused with 486 Busy Here or 600 Busy Everywhere | `busy` | `sip:486`, `sip:600` |
//! | refused with 408 or 480 | `no_answer` | `sip:408`, `sip:480` |
//! | no answer within the ring timeout (we sent CANCEL) | `no_answer` | `ring_timeout` |
//! | refused with 487 (cancelled elsewhere) | `canceled` | `sip:487` |
//! | we cancelled before the answer ([`SipDialer`](super::SipDialer) hang-up) | `canceled` | `local_cancel` |
//! | the caller cancelled an inbound call before our answer | `canceled` | `remote_cancel` |
//! | any other final status (4xx-6xx), ours or theirs | `failed` | `sip:<code>` (`sip:503`) |
//! | no response at all to the INVITE (timer B) | `failed` | `no_response` |
//! | a 2xx whose SDP we cannot use | `failed` | `sdp_answer` |
//! | the ACK of our 200 never came (inbound) | `failed` | `ack_timeout` |
//! | the media worker or the RTP socket failed before the answer | `failed` | `media_worker`, `rtp_socket` |
//! | the session timer ran out (RFC 4028: no refresh; we sent BYE) | `completed` | `session_expired` |
//!
//! Answered calls are always `completed` (they connected, and are billed
//! for it); their cause is `remote_hangup` (the far end sent BYE),
//! `local_hangup` (we did), or the failure's cause above.

use super::SipEnd;

/// A call's terminal status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallOutcome {
    /// Answered; ended normally or not.
    Completed,
    /// The line was busy.
    Busy,
    /// Nobody picked up.
    NoAnswer,
    /// Cancelled before the answer.
    Canceled,
    /// Something went wrong before the answer.
    Failed,
}

impl CallOutcome {
    /// The API's name of the status (`completed`, `no_answer`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Completed => "completed",
            CallOutcome::Busy => "busy",
            CallOutcome::NoAnswer => "no_answer",
            CallOutcome::Canceled => "canceled",
            CallOutcome::Failed => "failed",
        }
    }
}

/// What the control plane records of the end of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallResult {
    /// The terminal status.
    pub outcome: CallOutcome,
    /// The telephony-level reason (see the module table).
    pub hangup_cause: String,
}

/// The outcome of a call that ended with `end`; `answered` if it was
/// answered ([`SipEvent::Answered`](super::SipEvent::Answered) was reported).
pub fn call_outcome(end: &SipEnd, answered: bool) -> CallResult {
    let (outcome, hangup_cause) = match end {
        SipEnd::RemoteBye => (CallOutcome::Completed, "remote_hangup".to_owned()),
        SipEnd::HungUp => (CallOutcome::Completed, "local_hangup".to_owned()),
        SipEnd::Canceled => (CallOutcome::Canceled, "remote_cancel".to_owned()),
        SipEnd::Abandoned => (CallOutcome::Canceled, "local_cancel".to_owned()),
        SipEnd::RingTimeout => (CallOutcome::NoAnswer, "ring_timeout".to_owned()),
        SipEnd::Refused(code) | SipEnd::Rejected(code) => {
            let outcome = match code {
                486 | 600 => CallOutcome::Busy,
                408 | 480 => CallOutcome::NoAnswer,
                487 => CallOutcome::Canceled,
                _ => CallOutcome::Failed,
            };
            (outcome, format!("sip:{code}"))
        }
        SipEnd::NoResponse => (CallOutcome::Failed, "no_response".to_owned()),
        SipEnd::BadAnswer => (CallOutcome::Failed, "sdp_answer".to_owned()),
        SipEnd::AckTimeout => (CallOutcome::Failed, "ack_timeout".to_owned()),
        SipEnd::SessionExpired => (CallOutcome::Failed, "session_expired".to_owned()),
        SipEnd::Transferred { .. } => (CallOutcome::Completed, "transferred".to_owned()),
        SipEnd::WorkerFailed(_) => (CallOutcome::Failed, "media_worker".to_owned()),
        SipEnd::SocketFailed => (CallOutcome::Failed, "rtp_socket".to_owned()),
    };
    CallResult {
        outcome: if answered {
            CallOutcome::Completed
        } else {
            outcome
        },
        hangup_cause,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(end: SipEnd, answered: bool) -> (&'static str, String) {
        let result = call_outcome(&end, answered);
        (result.outcome.as_str(), result.hangup_cause)
    }

    #[test]
    fn the_documented_mapping() {
        let cases = [
            (SipEnd::RemoteBye, true, "completed", "remote_hangup"),
            (SipEnd::HungUp, true, "completed", "local_hangup"),
            (SipEnd::SocketFailed, true, "completed", "rtp_socket"),
            (SipEnd::Refused(486), false, "busy", "sip:486"),
            (SipEnd::Refused(600), false, "busy", "sip:600"),
            (SipEnd::Refused(480), false, "no_answer", "sip:480"),
            (SipEnd::Refused(408), false, "no_answer", "sip:408"),
            (SipEnd::RingTimeout, false, "no_answer", "ring_timeout"),
            (SipEnd::Refused(487), false, "canceled", "sip:487"),
            (SipEnd::Abandoned, false, "canceled", "local_cancel"),
            (SipEnd::Canceled, false, "canceled", "remote_cancel"),
            (SipEnd::Refused(503), false, "failed", "sip:503"),
            (SipEnd::Refused(401), false, "failed", "sip:401"),
            (SipEnd::Rejected(404), false, "failed", "sip:404"),
            (SipEnd::NoResponse, false, "failed", "no_response"),
            (SipEnd::BadAnswer, false, "failed", "sdp_answer"),
            (SipEnd::AckTimeout, false, "failed", "ack_timeout"),
            (SipEnd::SessionExpired, true, "completed", "session_expired"),
            (
                SipEnd::Transferred { to: "+1".into() },
                true,
                "completed",
                "transferred",
            ),
            (
                SipEnd::WorkerFailed("gone".into()),
                false,
                "failed",
                "media_worker",
            ),
        ];
        for (end, answered, status, cause) in cases {
            assert_eq!(
                outcome(end.clone(), answered),
                (status, cause.to_owned()),
                "{end:?}"
            );
        }
    }
}
