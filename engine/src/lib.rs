//! The CallingBox media engine: one call's real-time conversation (audio in,
//! voice activity, turn-taking, the agent loop, audio out) and the transports
//! that carry it (SIP/RTP, media-stream WebSocket, WebRTC).
//!
//! This crate is being built issue by issue; today it re-exports the audio
//! foundation it stands on.

pub use callingbox_codecs as codecs;
