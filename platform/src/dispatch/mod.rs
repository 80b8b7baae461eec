//! Dispatch: hands calls to the engine and records what it reports.
//!
//! The seam (ARCHITECTURE.md): the control plane resolves a call into a
//! [`CallPlan`] and hands it to a [`Telephony`] (the engine's SIP side, or a
//! test line); the telephony answers with one ordered stream of
//! [`LineEvent`]s (ringing, answered, the engine's call events, the end).
//! [`Dispatcher`] turns that stream into the call's lifecycle in the store:
//! statuses and their webhook events, transcript segments as they arrive,
//! billing at the end, then extraction of the `returns` fields.

pub mod engine;
pub mod extraction;
pub mod inbound;
pub mod plan;
pub mod recorder;
pub mod speech;
pub mod web;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use callingbox_engine::events::CallEvent;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use extraction::Extractor;
pub use plan::CallPlan;
use recorder::EventRecorder;

use crate::billing::Pricing;
use crate::clock::{SharedClock, Timestamp};
use crate::lifecycle::{self, Finished, Outcome};
use crate::metrics::Metrics;
use crate::store::calls::{self, status};
use crate::store::transcripts;
use crate::store::{Store, StoreError};

/// Hands a recorded call to whatever runs calls on this node.
pub trait CallLauncher: Send + Sync + 'static {
    /// Starts the queued call `call_id` (returns at once; the call's progress
    /// is recorded as it happens).
    fn launch(&self, call_id: &str);
    /// Cancels the call if this node runs it and it was not answered yet;
    /// false if this node does not know the call.
    fn cancel(&self, call_id: &str) -> bool;
}

/// How a line ended, as the telephony reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineEnd {
    /// `completed`, `no_answer`, `busy`, `canceled` or `failed`.
    pub status: String,
    /// `human` or `machine`, if known.
    pub answered_by: Option<String>,
    /// Telephony-level reason (e.g. `remote_bye`, `agent_end_call`, `sip:486`).
    pub hangup_cause: Option<String>,
    /// Error code for failed calls (e.g. `sip_503`, `provider_error`).
    pub error_code: Option<String>,
    /// Human-readable error for failed calls.
    pub error_message: Option<String>,
}

/// What a telephony reports about one call, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum LineEvent {
    /// The far end rings.
    Ringing,
    /// The far end answered; the conversation is live.
    Answered {
        /// `human` or `machine`, if already known.
        answered_by: Option<String>,
    },
    /// An event of the conversation (transcript segments, tools, metrics).
    Engine(CallEvent),
    /// The call is over; nothing follows.
    Ended(LineEnd),
}

/// Places calls: the engine's SIP side in production.
pub trait Telephony: Send + Sync + 'static {
    /// Starts `plan`'s outbound call. Every event goes to `events`, ending
    /// with exactly one [`LineEvent::Ended`]; `cancel` asks to give up
    /// (CANCEL before the answer, BYE after).
    fn place(
        &self,
        plan: CallPlan,
        events: mpsc::UnboundedSender<LineEvent>,
        cancel: CancellationToken,
    );
}

/// Runs calls: launches them on the telephony and records their lifecycle.
pub struct Dispatcher {
    store: Store,
    clock: SharedClock,
    pricing: Pricing,
    telephony: Arc<dyn Telephony>,
    extractor: Arc<dyn Extractor>,
    metrics: Arc<Metrics>,
    live: Mutex<HashMap<String, LiveCall>>,
    idle: tokio::sync::Notify,
}

struct LiveCall {
    cancel: CancellationToken,
    answered: bool,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("live", &self.live_calls())
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// A dispatcher over `telephony`.
    pub fn new(
        store: Store,
        clock: SharedClock,
        pricing: Pricing,
        telephony: Arc<dyn Telephony>,
        extractor: Arc<dyn Extractor>,
        metrics: Arc<Metrics>,
    ) -> Arc<Dispatcher> {
        Arc::new(Dispatcher {
            store,
            clock,
            pricing,
            telephony,
            extractor,
            metrics,
            live: Mutex::new(HashMap::new()),
            idle: tokio::sync::Notify::new(),
        })
    }

    /// Calls running now.
    pub fn live_calls(&self) -> usize {
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Waits until no call runs, or `timeout`; returns the calls still live.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let idle = self.idle.notified();
            if self.live_calls() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.live_calls();
            }
        }
    }

    /// Hangs up every live call (shutdown after the drain timeout).
    pub fn cancel_all(&self) {
        for call in self
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            call.cancel.cancel();
        }
    }

    /// Runs a call that is already recorded: its plan goes to the
    /// telephony (outbound) or it arrived on one (inbound, `events` given).
    /// Returns the call's cancel token (inbound lines hang up on it).
    pub fn run(
        self: &Arc<Self>,
        call_id: String,
        inbound: Option<InboundLine>,
    ) -> CancellationToken {
        let cancel = CancellationToken::new();
        self.live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                call_id.clone(),
                LiveCall {
                    cancel: cancel.clone(),
                    answered: false,
                },
            );
        let this = Arc::clone(self);
        let token = cancel.clone();
        tokio::spawn(async move {
            if let Err(err) = this.drive(&call_id, inbound, cancel).await {
                tracing::error!(call_id, %err, "recording the call failed");
                let outcome = Outcome::failed(
                    "internal_error",
                    &format!("the call could not be recorded: {err}"),
                );
                let _ = lifecycle::finish(
                    &this.store,
                    &this.pricing,
                    &call_id,
                    outcome,
                    this.clock.now(),
                )
                .await;
            }
            this.live
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&call_id);
            this.idle.notify_waiters();
        });
        token
    }

    async fn drive(
        &self,
        call_id: &str,
        inbound: Option<InboundLine>,
        cancel: CancellationToken,
    ) -> Result<(), StoreError> {
        let call = {
            let mut conn = self.store.pool().acquire().await?;
            calls::get_any_org(&mut conn, call_id).await?
        };
        let Some(call) = call else {
            tracing::warn!(call_id, "launched a call that does not exist");
            return Ok(());
        };
        if status::is_terminal(&call.status) {
            return Ok(());
        }
        let mut events = match inbound {
            Some(line) => line.events,
            None => {
                let plan = match CallPlan::from_call(&call, self.pricing.max_call_duration()) {
                    Ok(plan) => plan,
                    Err(err) => {
                        let outcome = Outcome::failed(
                            "invalid_tools",
                            &format!("the call's tools are invalid: {err}"),
                        );
                        lifecycle::finish(
                            &self.store,
                            &self.pricing,
                            call_id,
                            outcome,
                            self.clock.now(),
                        )
                        .await?;
                        return Ok(());
                    }
                };
                lifecycle::advance(
                    &self.store,
                    call_id,
                    status::INITIATED,
                    None,
                    self.clock.now(),
                )
                .await?;
                let (tx, rx) = mpsc::unbounded_channel();
                self.telephony.place(plan, tx, cancel.clone());
                rx
            }
        };
        let mut recorder: Option<EventRecorder> = None;
        let mut answered_at: Option<Timestamp> = None;
        let mut answered_by: Option<String> = None;
        let end = loop {
            let Some(event) = events.recv().await else {
                break LineEnd {
                    status: status::FAILED.into(),
                    answered_by: None,
                    hangup_cause: None,
                    error_code: Some("telephony_lost".into()),
                    error_message: Some("the telephony stopped reporting on the call".into()),
                };
            };
            match event {
                LineEvent::Ringing => {
                    lifecycle::advance(
                        &self.store,
                        call_id,
                        status::RINGING,
                        None,
                        self.clock.now(),
                    )
                    .await?;
                }
                LineEvent::Answered { answered_by: by } => {
                    let now = self.clock.now();
                    answered_at = Some(now);
                    answered_by = by.clone();
                    if let Some(live) = self
                        .live
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get_mut(call_id)
                    {
                        live.answered = true;
                    }
                    lifecycle::advance(
                        &self.store,
                        call_id,
                        status::IN_PROGRESS,
                        by.as_deref(),
                        now,
                    )
                    .await?;
                    recorder = Some(EventRecorder::new(self.store.clone(), call_id, now));
                }
                LineEvent::Engine(event) => {
                    tracing::debug!(call_id, ?event, "engine event");
                    if let CallEvent::TurnMetrics { metrics, .. } = &event {
                        self.metrics.observe_turn(metrics);
                    }
                    if let Some(recorder) = recorder.as_mut() {
                        recorder.record(&event).await?;
                    }
                }
                LineEvent::Ended(end) => break end,
            }
        };
        if end.error_code.as_deref() == Some("provider_error") {
            self.metrics
                .provider_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let now = self.clock.now();
        let connected_seconds = answered_at
            .map(|at| (now.0 - at.0).max(0) / 1_000_000)
            .unwrap_or(0);
        let outcome = Outcome {
            status: end.status,
            answered_by: end.answered_by.or(answered_by),
            error_code: end.error_code,
            error_message: end.error_message,
            hangup_cause: end.hangup_cause,
            connected_seconds,
            had_conversation: recorder
                .as_ref()
                .is_some_and(EventRecorder::had_conversation),
        };
        if lifecycle::finish(&self.store, &self.pricing, call_id, outcome, now).await?
            == Finished::AwaitingExtraction
        {
            self.extract(call_id).await?;
        }
        Ok(())
    }

    /// Extracts the call's `returns` fields from its transcript and records
    /// the result (emitting `call.completed`).
    pub async fn extract(&self, call_id: &str) -> Result<(), StoreError> {
        let mut conn = self.store.pool().acquire().await?;
        let Some(call) = calls::get_any_org(&mut conn, call_id).await? else {
            return Ok(());
        };
        let segments = transcripts::list(&mut conn, call_id).await?;
        drop(conn);
        let result = self.extractor.extract(&call.returns, &segments).await;
        if let Err(err) = &result {
            tracing::warn!(call_id, %err, "extraction failed");
        }
        lifecycle::set_result(&self.store, call_id, result, self.clock.now()).await
    }
}

/// An inbound call's event stream, from the telephony that answered it.
#[derive(Debug)]
pub struct InboundLine {
    /// The line's events.
    pub events: mpsc::UnboundedReceiver<LineEvent>,
}

impl CallLauncher for Arc<Dispatcher> {
    fn launch(&self, call_id: &str) {
        let _ = self.run(call_id.to_owned(), None);
    }

    fn cancel(&self, call_id: &str) -> bool {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        match live.get(call_id) {
            Some(call) if !call.answered => {
                call.cancel.cancel();
                true
            }
            _ => false,
        }
    }
}
