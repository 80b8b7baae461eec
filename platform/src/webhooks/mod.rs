//! Webhooks: the outbox of call events, signed deliveries, retries.
//!
//! Work in progress: [`emit`] is where every call state change records its
//! event in the same transaction; the delivery rows, endpoints, signing and
//! the delivery worker land with the webhooks issue.

use sqlx::AnyConnection;

use crate::clock::Timestamp;
use crate::store::StoreError;
use crate::store::calls::Call;

/// The event types, in lifecycle order.
pub const EVENT_TYPES: [&str; 8] = [
    "call.queued",
    "call.ringing",
    "call.answered",
    "call.completed",
    "call.failed",
    "call.no_answer",
    "call.busy",
    "call.canceled",
];

/// Records `event_type` for `call` (as it is now) in the caller's
/// transaction, fanned out to every destination that wants it.
pub async fn emit(
    conn: &mut AnyConnection,
    call: &Call,
    event_type: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    let _ = (conn, call, event_type, now);
    Ok(())
}
