//! Audio in: the jitter buffer that turns arriving packets into one frame per
//! tick ([`jitter`]), and the inbound stage that decodes, conceals and
//! resamples those frames to the rate VAD and ASR consume ([`inbound`]).

pub mod inbound;
pub mod jitter;

pub use inbound::{FrameSource, InboundAudio, InboundCodec, InboundError, InboundStats};
pub use jitter::{JitterBuffer, JitterConfig, JitterError, JitterStats, Playout, PushOutcome};
