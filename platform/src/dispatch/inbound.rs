//! Inbound calls: the engine's SIP server asks, for each INVITE, whether
//! and how to answer. The dialled number is looked up (its inbound agent,
//! or its prompt-era inbound configuration), the call is recorded with
//! `direction: "inbound"` and its credit hold, and the conversation starts
//! on the shared speech stack; the dispatcher then records it like any call.

use std::sync::Arc;

use callingbox_engine::transport::sip::{
    IncomingCall, SipCallFactory, SipCallRefused, SipCallSetup, SipDialer,
};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::engine::{SpeechStack, call_media, follow};
use super::{CallPlan, Dispatcher, InboundLine};
use crate::billing::Pricing;
use crate::clock::SharedClock;
use crate::lifecycle;
use crate::store::calls::{self, Call, NewCall, status};
use crate::store::{Store, StoreError, agents, ledger, new_id, numbers};

/// Answers the INVITEs of the numbers in the store.
pub struct InboundRouter {
    store: Store,
    clock: SharedClock,
    pricing: Pricing,
    node_id: String,
    stack: SpeechStack,
    dispatcher: Arc<Dispatcher>,
    dialer: SipDialer,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for InboundRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundRouter")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// Why an inbound call is not answered.
enum Refusal {
    NoSuchNumber,
    NoAgent,
    Paused,
    Store(StoreError),
}

impl InboundRouter {
    /// A router recording calls in `store` and running them on `dispatcher`.
    /// Must be built inside a multi-threaded tokio runtime.
    pub fn new(
        store: Store,
        clock: SharedClock,
        pricing: Pricing,
        node_id: String,
        stack: SpeechStack,
        dispatcher: Arc<Dispatcher>,
        dialer: SipDialer,
    ) -> Self {
        InboundRouter {
            store,
            clock,
            pricing,
            node_id,
            stack,
            dispatcher,
            dialer,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    async fn record(&self, dialled: &str, caller: &str) -> Result<Call, Refusal> {
        let number = numbers::find_active_any_org(&self.store, dialled)
            .await
            .map_err(Refusal::Store)?
            .ok_or(Refusal::NoSuchNumber)?;
        let org_id = number.org_id.clone();
        let now = self.clock.now();
        let mut tx = self.store.begin().await.map_err(Refusal::Store)?;
        let agent = match &number.inbound_agent_id {
            Some(id) => agents::get(&mut tx, &org_id, id)
                .await
                .map_err(Refusal::Store)?,
            None => None,
        };
        let id = new_id();
        let mut new = NewCall {
            id: id.clone(),
            org_id: org_id.clone(),
            agent_id: None,
            direction: "inbound".into(),
            status: status::QUEUED.into(),
            to_number: dialled.to_owned(),
            from_number: caller.to_owned(),
            persona: None,
            instructions: None,
            prompt: String::new(),
            context: Map::new(),
            returns: Value::Object(Map::new()),
            language: "en".into(),
            voice: crate::api::agents::DEFAULT_VOICE.into(),
            tools: Value::Array(Vec::new()),
            voicemail_action: "hangup".into(),
            webhook_url: None,
            metadata: Map::new(),
            hold_milli_cents: self.pricing.call_hold(),
            idempotency_key: None,
            request_fingerprint: None,
            node_id: Some(self.node_id.clone()),
        };
        match agent {
            Some(agent) if agent.archived_at.is_none() => {
                new.agent_id = Some(agent.id.clone());
                new.persona = Some(
                    agent
                        .persona
                        .clone()
                        .unwrap_or_else(|| lifecycle::DEFAULT_PERSONA.into()),
                );
                new.instructions = Some(agent.instructions.clone());
                new.prompt =
                    lifecycle::render_prompt(agent.persona.as_deref(), &agent.instructions);
                new.returns = agent.returns.clone();
                new.language = agent.language.clone();
                new.voice = agent.voice.clone();
                new.tools = agent.tools.clone();
                new.voicemail_action = agent.voicemail_action.clone();
                new.webhook_url = agent.webhook_url.clone();
            }
            _ if number.inbound_enabled => {
                new.prompt = number.inbound_prompt.clone().unwrap_or_default();
                new.returns = number
                    .inbound_returns
                    .clone()
                    .unwrap_or_else(|| Value::Object(Map::new()));
                new.language = number
                    .inbound_language
                    .clone()
                    .unwrap_or_else(|| "en".into());
                new.tools = Value::Array(number.inbound_tools.clone());
                new.voicemail_action = number.inbound_voicemail_action.clone();
                new.webhook_url = number.inbound_webhook_url.clone();
            }
            _ => return Err(Refusal::NoAgent),
        }
        if !ledger::try_hold(&mut tx, &org_id, &id, new.hold_milli_cents, now)
            .await
            .map_err(Refusal::Store)?
        {
            return Err(Refusal::Paused);
        }
        calls::insert(&mut tx, &new, now)
            .await
            .map_err(Refusal::Store)?;
        let call = calls::get_any_org(&mut tx, &id)
            .await
            .map_err(Refusal::Store)?
            .ok_or_else(|| Refusal::Store(StoreError::Corrupt(format!("call {id} vanished"))))?;
        tx.commit().await.map_err(|e| Refusal::Store(e.into()))?;
        Ok(call)
    }

    fn refuse(status: u16, reason: &str) -> SipCallRefused {
        SipCallRefused {
            status,
            reason: reason.into(),
        }
    }
}

/// The user part of a SIP From header (`"Ana" <sip:+15551234567@host>;tag=x`).
pub fn caller_number(from: &str) -> String {
    let uri = from
        .split('<')
        .nth(1)
        .and_then(|rest| rest.split('>').next())
        .unwrap_or(from);
    let uri = uri
        .trim()
        .trim_start_matches("sips:")
        .trim_start_matches("sip:")
        .trim_start_matches("tel:");
    let user = uri.split(['@', ';']).next().unwrap_or("");
    if user.is_empty() {
        "anonymous".into()
    } else {
        user.to_owned()
    }
}

impl SipCallFactory for InboundRouter {
    fn open_call(&self, incoming: &IncomingCall) -> Result<SipCallSetup, SipCallRefused> {
        let Some(dialled) = incoming.number.clone() else {
            return Err(Self::refuse(404, "no number in the Request-URI"));
        };
        let caller = caller_number(&incoming.from);
        // The SIP task waits for one indexed lookup and insert (sub-ms on
        // SQLite, a round trip on PostgreSQL); block_in_place keeps the
        // other tasks of the runtime running meanwhile.
        let recorded =
            tokio::task::block_in_place(|| self.runtime.block_on(self.record(&dialled, &caller)));
        let call = match recorded {
            Ok(call) => call,
            Err(Refusal::NoSuchNumber) => {
                return Err(Self::refuse(404, "not a number of this node"));
            }
            // The number exists and is someone's, it just answers nothing
            // yet: 480 (temporary, try later) rather than 404 (no such
            // number) or 603 (the callee declined, which trunks treat as
            // final everywhere).
            Err(Refusal::NoAgent) => {
                return Err(Self::refuse(480, "no inbound agent on this number"));
            }
            Err(Refusal::Paused) => {
                return Err(Self::refuse(480, "calls paused: credits below the hold"));
            }
            Err(Refusal::Store(err)) => {
                tracing::error!(%err, "recording an inbound call failed");
                return Err(Self::refuse(500, "cannot record the call"));
            }
        };
        let call_id = call.id.clone();
        let finish_failed = |message: String| {
            let (store, pricing, clock, id) = (
                self.store.clone(),
                self.pricing,
                Arc::clone(&self.clock),
                call_id.clone(),
            );
            self.runtime.spawn(async move {
                let outcome = lifecycle::Outcome::failed("provider_error", &message);
                let _ = lifecycle::finish(&store, &pricing, &id, outcome, clock.now()).await;
            });
        };
        let plan = match CallPlan::from_call(&call, self.pricing.max_call_duration()) {
            Ok(plan) => plan,
            Err(err) => {
                finish_failed(format!("the call's tools are invalid: {err}"));
                return Err(Self::refuse(500, "cannot plan the call"));
            }
        };
        let conversation = match self.stack.start_conversation(&plan) {
            Ok(conversation) => conversation,
            Err(message) => {
                finish_failed(message);
                return Err(Self::refuse(503, "speech providers unavailable"));
            }
        };
        let (sip_tx, sip_rx) = mpsc::unbounded_channel();
        let (line_tx, line_rx) = mpsc::unbounded_channel();
        let call_cancel = CancellationToken::new();
        let cancel = self
            .dispatcher
            .run(call_id.clone(), Some(InboundLine { events: line_rx }));
        let asr_cancel = conversation.cancel;
        let agent_events = conversation.events;
        let max_duration = plan.max_duration;
        let done = call_cancel.clone();
        let (dialer, sip_call) = (self.dialer.clone(), incoming.call);
        self.runtime.spawn(async move {
            let end = follow(
                sip_rx,
                agent_events,
                &line_tx,
                &cancel,
                max_duration,
                || dialer.hang_up(sip_call),
            )
            .await;
            asr_cancel.cancel();
            done.cancel();
            let _ = line_tx.send(super::LineEvent::Ended(end));
        });
        Ok(SipCallSetup {
            media: call_media(self.stack.end_of_turn_model),
            link: Some(conversation.link),
            epoch: conversation.epoch,
            events: Some(sip_tx),
            cancel: call_cancel,
            tap: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::caller_number;

    #[test]
    fn the_caller_is_the_from_header_user() {
        assert_eq!(
            caller_number("\"Ana\" <sip:+15551234567@10.0.0.1>;tag=ab"),
            "+15551234567"
        );
        assert_eq!(caller_number("sip:+15550001@host"), "+15550001");
        assert_eq!(caller_number("<sip:@host>"), "anonymous");
    }
}
