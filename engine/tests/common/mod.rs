//! Helpers shared by the engine's integration tests.
// Each test crate that includes these uses only part of them.
#![allow(dead_code)]

pub mod mock_http;
pub mod mock_vendor;
pub mod scripted_call;
pub mod sip_engine;
pub mod sipp;
