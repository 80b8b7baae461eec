//! The seam from the conversation to the call's transport for what only the
//! transport can do (send keypad digits; transfer the call): the
//! agent's built-in tools send a [`CallControl`] request and wait for the
//! transport's answer, which goes back to the model as the tool result.
//!
//! A transport that can act on requests takes the receiving end with
//! [`AgentHandle::attach_call_control`](super::AgentHandle::attach_call_control)
//! before the call starts; on a call whose transport did not, the tools
//! answer the model with an error at once (the media stream has no way to
//! send digits). On SIP, digits are media (the call's RTP task plays them)
//! and transfers are signalling (the SIP task sends REFER): each kind has
//! its own request type, so each task receives only what it acts on.

use tokio::sync::{mpsc, oneshot};

use crate::transport::rtp_events::DigitStep;

/// What the transport answers: `Ok` with what was done, or why not.
pub type CallControlReply = oneshot::Sender<Result<serde_json::Value, String>>;

/// A request from the agent to the call's transport.
#[derive(Debug)]
pub enum CallControl {
    /// Play digits to the far end.
    SendDigits(DigitsRequest),
    /// Blind-transfer the call.
    Transfer(TransferRequest),
}

/// Play these digits to the far end (RFC 4733 events on SIP); answer once
/// they were sent.
#[derive(Debug)]
pub struct DigitsRequest {
    /// The validated digits and pauses.
    pub digits: Vec<DigitStep>,
    /// The digits as the model gave them (for the result).
    pub text: String,
    /// The answer.
    pub reply: CallControlReply,
}

/// Blind-transfer the call to `destination` (SIP REFER); answer once the
/// far end reports that the target answered (then the call ends) or that
/// the transfer failed (then the call goes on).
#[derive(Debug)]
pub struct TransferRequest {
    /// A phone number or a `sip:`/`tel:` URI, as configured.
    pub destination: String,
    /// The answer.
    pub reply: CallControlReply,
}

impl CallControl {
    /// Answers the request with `result` (a request whose tool gave up is
    /// not an error).
    pub fn answer(self, result: Result<serde_json::Value, String>) {
        let reply = match self {
            CallControl::SendDigits(request) => request.reply,
            CallControl::Transfer(request) => request.reply,
        };
        let _ = reply.send(result);
    }
}

/// The transport's end: requests in the order the agent made them.
pub type CallControlRequests = mpsc::UnboundedReceiver<CallControl>;
