//! SIP over UDP: real SIP peers (PBXs, trunks, softphones) call the engine.
//!
//! [`sdp`] is the offer/answer of the call's audio stream.

pub mod sdp;
