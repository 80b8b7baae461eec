//! The call's audio, both ways.
//!
//! In: the jitter buffer turns arriving packets into one frame per tick
//! ([`jitter`]), and the inbound stage decodes, conceals and resamples those
//! frames to the rate VAD and ASR consume ([`inbound`]).
//! Out: the agent's speech is encoded and queued for paced sending, and
//! flushed at once on a barge-in ([`outbound`]).
//! Keys: in-band DTMF tones in the decoded audio ([`dtmf`]).

pub mod dtmf;
pub mod inbound;
pub mod jitter;
pub mod outbound;

pub use inbound::{FrameSource, InboundAudio, InboundCodec, InboundError, InboundStats};
pub use jitter::{JitterBuffer, JitterConfig, JitterError, JitterStats, Playout, PushOutcome};
pub use outbound::{OutboundAudio, OutboundConfig, OutboundError, OutboundPacket, WireCodec};
