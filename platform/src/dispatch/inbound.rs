//! Inbound calls: the engine's SIP server asks, for each INVITE, whether
//! and how to answer. The dialled number is looked up (its inbound agent,
//! or its prompt-era inbound configuration), the call is recorded with
//! `direction: "inbound"` and its credit hold, and the conversation starts
//! on the shared speech stack; the dispatcher then records it like any call.

use std::sync::Arc;

use callingbox_engine::session::{CallMediaConfig, ConversationLink};
use callingbox_engine::transport::sip::{
    IncomingCall, SipCallFactory, SipCallRefused, SipCallSetup, SipDialer, SipEvent,
};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::engine::{SpeechStack, follow};
use super::{CallPlan, Dispatcher, InboundLine};
use crate::billing::Pricing;
use crate::clock::SharedClock;
use crate::lifecycle;
use crate::store::calls::{self, Call, NewCall, status};
use crate::store::{Store, StoreError, agents, ledger, new_id, numbers};

/// Answers the INVITEs of the numbers in the store.
pub struct InboundRouter {
    line: LineStarter,
    node_id: String,
    dialer: SipDialer,
}

/// What every inbound transport (SIP, media streams, WebRTC) shares once
/// its call is recorded: the conversation, the dispatcher's record of the
/// call, and the task that follows the line until it ends.
#[derive(Clone)]
pub(super) struct LineStarter {
    pub store: Store,
    pub clock: SharedClock,
    pub pricing: Pricing,
    pub stack: SpeechStack,
    pub dispatcher: Arc<Dispatcher>,
    pub runtime: tokio::runtime::Handle,
}

/// A recorded call's conversation, for the transport's call setup.
pub(super) struct StartedLine {
    /// The agent loop, recognizer and agent audio.
    pub link: ConversationLink,
    /// The agent loop's clock zero.
    pub epoch: std::time::Instant,
    /// The media settings (G.711; transports with their own codecs override).
    pub media: CallMediaConfig,
}

impl LineStarter {
    /// Starts `call`'s conversation and follows its line (`line`: the
    /// transport's events as SIP events) until it ends; `hang_up` ends the
    /// call from our side. `done` is cancelled once everything stopped.
    /// On failure the call is finished as failed and the status to refuse
    /// the transport with is returned.
    pub fn start(
        &self,
        call: &Call,
        line: mpsc::UnboundedReceiver<SipEvent>,
        done: CancellationToken,
        hang_up: impl Fn() + Send + 'static,
    ) -> Result<StartedLine, (u16, &'static str)> {
        let finish_failed = |message: String| {
            let (store, pricing, clock, id) = (
                self.store.clone(),
                self.pricing,
                Arc::clone(&self.clock),
                call.id.clone(),
            );
            self.runtime.spawn(async move {
                let outcome = lifecycle::Outcome::failed("provider_error", &message);
                let _ = lifecycle::finish(&store, &pricing, &id, outcome, clock.now()).await;
            });
        };
        let plan = match CallPlan::from_call(call, self.pricing.max_call_duration()) {
            Ok(plan) => plan,
            Err(err) => {
                finish_failed(format!("the call's tools are invalid: {err}"));
                return Err((500, "cannot plan the call"));
            }
        };
        let conversation = match self.stack.start_conversation(&plan) {
            Ok(conversation) => conversation,
            Err(message) => {
                finish_failed(message);
                return Err((503, "speech providers unavailable"));
            }
        };
        let (line_tx, line_rx) = mpsc::unbounded_channel();
        let cancel = self
            .dispatcher
            .run(call.id.clone(), Some(InboundLine { events: line_rx }));
        let asr_cancel = conversation.cancel;
        let agent_events = conversation.events;
        let max_duration = plan.max_duration;
        self.runtime.spawn(async move {
            let end = follow(line, agent_events, &line_tx, &cancel, max_duration, hang_up).await;
            asr_cancel.cancel();
            done.cancel();
            let _ = line_tx.send(super::LineEvent::Ended(end));
        });
        Ok(StartedLine {
            link: conversation.link,
            epoch: conversation.epoch,
            media: CallMediaConfig::phone(self.stack.end_of_turn_model),
        })
    }
}

/// An inbound call from `caller` to `to`, queued, before its agent or
/// inbound configuration fills in how it is answered.
pub(super) fn new_inbound_call(
    id: String,
    org_id: String,
    to: &str,
    caller: &str,
    hold_milli_cents: i64,
    node_id: &str,
) -> NewCall {
    NewCall {
        id,
        org_id,
        agent_id: None,
        direction: "inbound".into(),
        status: status::QUEUED.into(),
        to_number: to.to_owned(),
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
        hold_milli_cents,
        idempotency_key: None,
        request_fingerprint: None,
        node_id: Some(node_id.to_owned()),
    }
}

/// Fills `new` from the agent that answers it.
pub(super) fn apply_agent(new: &mut NewCall, agent: &agents::Agent) {
    new.agent_id = Some(agent.id.clone());
    new.persona = Some(
        agent
            .persona
            .clone()
            .unwrap_or_else(|| lifecycle::DEFAULT_PERSONA.into()),
    );
    new.instructions = Some(agent.instructions.clone());
    new.prompt = lifecycle::render_prompt(agent.persona.as_deref(), &agent.instructions);
    new.returns = agent.returns.clone();
    new.language = agent.language.clone();
    new.voice = agent.voice.clone();
    new.tools = agent.tools.clone();
    new.voicemail_action = agent.voicemail_action.clone();
    new.webhook_url = agent.webhook_url.clone();
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
            line: LineStarter {
                store,
                clock,
                pricing,
                stack,
                dispatcher,
                runtime: tokio::runtime::Handle::current(),
            },
            node_id,
            dialer,
        }
    }

    /// What a web-call router needs to start lines like this one.
    pub(super) fn line_starter(&self) -> LineStarter {
        self.line.clone()
    }

    async fn record(&self, dialled: &str, caller: &str) -> Result<Call, Refusal> {
        let LineStarter {
            store,
            clock,
            pricing,
            ..
        } = &self.line;
        let number = numbers::find_active_any_org(store, dialled)
            .await
            .map_err(Refusal::Store)?
            .ok_or(Refusal::NoSuchNumber)?;
        let org_id = number.org_id.clone();
        let now = clock.now();
        let mut tx = store.begin().await.map_err(Refusal::Store)?;
        let agent = match &number.inbound_agent_id {
            Some(id) => agents::get(&mut tx, &org_id, id)
                .await
                .map_err(Refusal::Store)?,
            None => None,
        };
        let id = new_id();
        let mut new = new_inbound_call(
            id.clone(),
            org_id.clone(),
            dialled,
            caller,
            pricing.call_hold(),
            &self.node_id,
        );
        match agent {
            Some(agent) if agent.archived_at.is_none() => apply_agent(&mut new, &agent),
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
        let recorded = tokio::task::block_in_place(|| {
            self.line.runtime.block_on(self.record(&dialled, &caller))
        });
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
        let (sip_tx, sip_rx) = mpsc::unbounded_channel();
        let done = CancellationToken::new();
        let (dialer, sip_call) = (self.dialer.clone(), incoming.call);
        let started = self
            .line
            .start(&call, sip_rx, done.clone(), move || {
                dialer.hang_up(sip_call)
            })
            .map_err(|(status, reason)| Self::refuse(status, reason))?;
        Ok(SipCallSetup {
            media: started.media,
            link: Some(started.link),
            epoch: started.epoch,
            events: Some(sip_tx),
            cancel: done,
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
