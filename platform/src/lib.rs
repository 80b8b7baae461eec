//! CallingBox: the self-hostable API for AI phone calls. This crate is the
//! control plane (REST API, storage, billing, dispatch to the engine,
//! extraction, webhooks) and the `callingbox` binary.

pub mod api;
pub mod billing;
pub mod carrier;
pub mod clock;
pub mod config;
pub mod dispatch;
pub mod lifecycle;
pub mod metrics;
pub mod node;
pub mod store;
pub mod validate;
pub mod webhooks;
