//! Webhooks: the outbox of call events, signed deliveries, retries.
//!
//! * [`emit`] runs inside the transaction of every call status change
//!   ([`crate::lifecycle`]): it writes one delivery row per destination
//!   (each enabled endpoint of the organization that wants the event, and
//!   the call's inline `webhook_url`), with the envelope as of the event. A
//!   crash can never leave a status change without its deliveries.
//! * [`worker`] leases due rows, signs ([`signature`]), POSTs through the
//!   SSRF guard ([`safety`], [`sender`]), records every attempt and follows
//!   the retry [`schedule`].
//! * [`endpoints`] and [`deliveries`] are the storage the API
//!   (`/v1/webhook_endpoints`, `/v1/webhook_deliveries`) reads and writes.

pub mod deliveries;
pub mod endpoints;
pub mod safety;
pub mod schedule;
pub mod sender;
pub mod signature;
pub mod worker;

use std::sync::OnceLock;

use serde_json::json;
use sqlx::AnyConnection;
use tokio::sync::watch;

use crate::clock::Timestamp;
use crate::store::calls::{self, Call};
use crate::store::{StoreError, new_id};

pub use signature::{SignatureError, construct_event, sign, signature_header, verify};

/// The schema version of `data.call` in every envelope.
pub const API_VERSION: &str = "2026-04";

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

/// What each event type means (`GET /v1/webhook_event_types`).
pub const EVENT_DESCRIPTIONS: [(&str, &str); 8] = [
    (
        "call.queued",
        "The call was created and its credits reserved, before dialing.",
    ),
    ("call.ringing", "The carrier started ringing the far end."),
    (
        "call.answered",
        "The callee picked up; the AI session is live.",
    ),
    (
        "call.completed",
        "The call ended normally and structured extraction finished (the payload has the final result).",
    ),
    (
        "call.failed",
        "A provider- or AI-side failure ended the call (error_code, error_message).",
    ),
    ("call.no_answer", "The call rang out unanswered."),
    ("call.busy", "The far end was busy."),
    (
        "call.canceled",
        "The caller canceled before the remote party picked up.",
    ),
];

/// The PostgreSQL channel `emit` notifies on commit (every node listens).
pub const NOTIFY_CHANNEL: &str = "callingbox_webhooks";

fn wake_sender() -> &'static watch::Sender<u64> {
    static WAKE: OnceLock<watch::Sender<u64>> = OnceLock::new();
    WAKE.get_or_init(|| watch::channel(0).0)
}

/// Wakes every delivery worker of this process (a new or re-queued
/// delivery is due). A generation counter, so a wake between a worker's
/// lease and its wait is never lost.
pub fn wake() {
    wake_sender().send_modify(|generation| *generation = generation.wrapping_add(1));
}

pub(crate) fn subscribe() -> watch::Receiver<u64> {
    wake_sender().subscribe()
}

/// The envelope of `event_type` for `call` (as it is now), with `id`.
pub fn envelope(id: &str, event_type: &str, call: &Call, now: Timestamp) -> serde_json::Value {
    json!({
        "id": id,
        "type": event_type,
        "created": now.unix_seconds(),
        "api_version": API_VERSION,
        "data": {"call": call},
    })
}

/// Records `event_type` for `call` (as it is now) in the caller's
/// transaction, fanned out to every destination that wants it: each
/// enabled endpoint of the organization whose `enabled_events` match, and
/// the call's inline `webhook_url` (signed with the organization's default
/// secret). The workers are woken ([`notify_workers`]).
pub async fn emit(
    conn: &mut AnyConnection,
    call: &Call,
    event_type: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    let mut destinations: Vec<(Option<String>, String)> =
        endpoints::matching(conn, call.org_id(), event_type)
            .await?
            .into_iter()
            .map(|(id, url)| (Some(id), url))
            .collect();
    if let Some(url) = &call.webhook_url {
        destinations.push((None, url.clone()));
    }
    if destinations.is_empty() {
        return Ok(());
    }
    for (endpoint_id, url) in &destinations {
        let id = new_id();
        let payload = envelope(&id, event_type, call, now).to_string();
        deliveries::insert(
            conn,
            &deliveries::NewDelivery {
                id: &id,
                org_id: call.org_id(),
                endpoint_id: endpoint_id.as_deref(),
                call_id: Some(&call.id),
                event_type,
                url,
                payload: &payload,
            },
            now,
        )
        .await?;
    }
    if call.webhook_url.is_some() && call.webhook_status != "pending" {
        calls::set_webhook_status(conn, &call.id, "pending", None, now).await?;
    }
    notify_workers(conn).await
}

/// Wakes the delivery workers once the caller's transaction commits: on
/// PostgreSQL a `NOTIFY` (delivered on commit, to every node); on SQLite
/// at once, which is safe because the caller holds the single writer lock,
/// so a woken worker's lease waits for the commit.
pub async fn notify_workers(conn: &mut AnyConnection) -> Result<(), StoreError> {
    if conn.backend_name().eq_ignore_ascii_case("postgresql") {
        sqlx::raw_sql("NOTIFY callingbox_webhooks")
            .execute(&mut *conn)
            .await?;
    } else {
        wake();
    }
    Ok(())
}
