//! The CallingBox media engine: one call's real-time conversation (audio in,
//! voice activity, turn-taking, the agent loop, audio out) and the transports
//! that carry it (SIP/RTP, media-stream WebSocket, WebRTC).
//!
//! The cores are sans-IO state machines: they take timestamped inputs and
//! return outputs, so every rule is testable on virtual time.

pub mod amd;
pub mod audio;
pub mod clock;
pub mod conversation;
pub mod eot;
pub mod events;
pub mod providers;
pub mod session;
pub mod tools;
pub mod transport;
pub mod turns;
pub mod vad;

pub use callingbox_codecs as codecs;
