//! A call's status lifecycle as the control plane records it: every change
//! is one transaction that updates the call, moves credits and records the
//! webhook event, so a crash never leaves a status without its event or a
//! hold without its call.
//!
//! `queued -> initiated -> ringing -> in_progress -> completed`, or a
//! terminal `no_answer`, `busy`, `canceled`, `failed` from any live status.
//! `call.completed` is emitted only once extraction has set the result.

use serde_json::Value;
use sqlx::AnyConnection;

use crate::billing::Pricing;
use crate::clock::Timestamp;
use crate::store::calls::{self, Call, CallEnding, status};
use crate::store::{Store, StoreError, ledger};
use crate::webhooks;

/// The persona used when an agent has none.
pub const DEFAULT_PERSONA: &str = "You are a friendly, concise phone assistant. You speak in short \
sentences suited to a phone call, you never invent facts, and you say so when you do not know.";

/// The system prompt of a call: persona, then instructions.
pub fn render_prompt(persona: Option<&str>, instructions: &str) -> String {
    let persona = persona.unwrap_or(DEFAULT_PERSONA);
    if instructions.trim().is_empty() {
        persona.to_owned()
    } else {
        format!("{persona}\n\n{instructions}")
    }
}

async fn load(conn: &mut AnyConnection, call_id: &str) -> Result<Call, StoreError> {
    calls::get_any_org(conn, call_id)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("call {call_id} vanished")))
}

/// Records `call.queued` for a call just inserted (inside its transaction).
pub async fn queued(
    conn: &mut AnyConnection,
    call_id: &str,
    now: Timestamp,
) -> Result<Call, StoreError> {
    let call = load(conn, call_id).await?;
    webhooks::emit(conn, &call, "call.queued", now).await?;
    Ok(call)
}

/// Moves a live call forward (`initiated`, `ringing`, `in_progress`) and
/// records its event; false if the call had already ended or moved past it.
pub async fn advance(
    store: &Store,
    call_id: &str,
    new_status: &str,
    answered_by: Option<&str>,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let mut tx = store.begin().await?;
    if !calls::advance(&mut tx, call_id, new_status, answered_by, now).await? {
        return Ok(false);
    }
    let event = match new_status {
        status::RINGING => Some("call.ringing"),
        status::IN_PROGRESS => Some("call.answered"),
        _ => None,
    };
    if let Some(event) = event {
        let call = load(&mut tx, call_id).await?;
        webhooks::emit(&mut tx, &call, event, now).await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// How a call ended, as the dispatcher reports it.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The terminal status.
    pub status: String,
    /// `human` or `machine`.
    pub answered_by: Option<String>,
    /// Error code (e.g. `sip_503`, `provider_error`).
    pub error_code: Option<String>,
    /// Human-readable error.
    pub error_message: Option<String>,
    /// Telephony hangup reason.
    pub hangup_cause: Option<String>,
    /// Seconds from the answer to the end (billed for `completed` calls).
    pub connected_seconds: i64,
    /// Someone spoke to the agent (a user transcript segment exists), so
    /// extraction runs.
    pub had_conversation: bool,
}

impl Outcome {
    /// Canceled before the answer.
    pub fn canceled(cause: &str) -> Self {
        Outcome {
            status: status::CANCELED.into(),
            hangup_cause: Some(cause.into()),
            ..Outcome::default()
        }
    }

    /// Failed, with a code and message.
    pub fn failed(code: &str, message: &str) -> Self {
        Outcome {
            status: status::FAILED.into(),
            error_code: Some(code.into()),
            error_message: Some(message.into()),
            ..Outcome::default()
        }
    }
}

/// What [`finish`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finished {
    /// The call had already ended; nothing changed.
    AlreadyEnded,
    /// Ended and its terminal event recorded.
    Ended,
    /// Ended `completed` with a conversation and a `returns` schema: the
    /// extraction must run, then [`set_result`] emits `call.completed`.
    AwaitingExtraction,
}

/// Ends a call: status and failure fields, billing (connected time charged
/// for completed calls, the hold released otherwise) and the terminal
/// event, in one transaction.
pub async fn finish(
    store: &Store,
    pricing: &Pricing,
    call_id: &str,
    outcome: Outcome,
    now: Timestamp,
) -> Result<Finished, StoreError> {
    let mut tx = store.begin().await?;
    let call = load(&mut tx, call_id).await?;
    if status::is_terminal(&call.status) {
        return Ok(Finished::AlreadyEnded);
    }
    let completed = outcome.status == status::COMPLETED;
    let billed_seconds = if completed {
        outcome.connected_seconds.max(0)
    } else {
        0
    };
    let charge = pricing
        .charge_for(billed_seconds)
        .min(call.hold_milli_cents());
    let ending = CallEnding {
        status: outcome.status.clone(),
        answered_by: outcome.answered_by.clone(),
        error_code: outcome.error_code.clone(),
        error_message: outcome.error_message.clone(),
        hangup_cause: outcome.hangup_cause.clone(),
        billed_duration_seconds: billed_seconds,
        billing_amount_milli_cents: charge,
        reservation_status: if charge > 0 { "settled" } else { "released" }.into(),
    };
    if !calls::end(&mut tx, call_id, &ending, now).await? {
        return Ok(Finished::AlreadyEnded);
    }
    ledger::settle_hold(
        &mut tx,
        call.org_id(),
        call_id,
        call.hold_milli_cents(),
        charge,
        now,
    )
    .await?;
    let needs_extraction = completed
        && outcome.had_conversation
        && call.returns.as_object().is_some_and(|r| !r.is_empty());
    let finished = if needs_extraction {
        Finished::AwaitingExtraction
    } else {
        if completed && outcome.had_conversation {
            // No returns schema: nothing to extract, the result is null.
            calls::set_result(&mut tx, call_id, None, "completed", None, now).await?;
        }
        let call = load(&mut tx, call_id).await?;
        webhooks::emit(&mut tx, &call, &format!("call.{}", outcome.status), now).await?;
        Finished::Ended
    };
    tx.commit().await?;
    Ok(finished)
}

/// Records the extraction's outcome and emits `call.completed`.
pub async fn set_result(
    store: &Store,
    call_id: &str,
    result: Result<Value, String>,
    now: Timestamp,
) -> Result<(), StoreError> {
    let mut tx = store.begin().await?;
    match &result {
        Ok(value) => {
            calls::set_result(&mut tx, call_id, Some(value), "completed", None, now).await?
        }
        Err(error) => calls::set_result(&mut tx, call_id, None, "failed", Some(error), now).await?,
    }
    let call = load(&mut tx, call_id).await?;
    webhooks::emit(&mut tx, &call, "call.completed", now).await?;
    tx.commit().await?;
    Ok(())
}

/// Ends every call this node left live (queued, ringing, in progress) when
/// it stopped: they fail with `error_code` `node_restarted`, their holds are
/// released and their terminal events recorded. Returns how many.
pub async fn fail_orphans(
    store: &Store,
    pricing: &Pricing,
    node_id: &str,
    now: Timestamp,
) -> Result<usize, StoreError> {
    let orphans = calls::live_on_node(store, node_id).await?;
    let mut failed = 0;
    for call in &orphans {
        let outcome = Outcome::failed(
            "node_restarted",
            "the CallingBox node running this call stopped before it ended",
        );
        if finish(store, pricing, &call.id, outcome, now).await? != Finished::AlreadyEnded {
            failed += 1;
        }
    }
    Ok(failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prompt_is_persona_then_instructions() {
        assert_eq!(render_prompt(Some("P."), "Do X."), "P.\n\nDo X.");
        assert_eq!(render_prompt(Some("P."), "  "), "P.");
        assert!(render_prompt(None, "Do X.").starts_with(DEFAULT_PERSONA));
    }
}
