//! The engine as the control plane's [`Telephony`]: outbound calls through
//! the engine's SIP user agent (the local carrier or a SIP trunk), each
//! with its own agent loop and recognizer on the shared speech stack, and
//! the engine's SIP and conversation events mapped to [`LineEvent`]s.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use callingbox_engine::amd::{AnsweredBy, AnsweringMachineConfig, MachineAction};
use callingbox_engine::conversation::{AgentConfig, AgentLoop, Providers};
use callingbox_engine::events::{CallEvent, ProviderRole};
use callingbox_engine::providers::{AsrProvider, LlmProvider, TtsProvider, primary_language};
use callingbox_engine::session::{CallMediaConfig, ConversationLink, MediaEvent};
use callingbox_engine::transport::sip::{
    OutboundCall, Route, SipCallSetup, SipDialer, SipEnd, SipEvent, call_outcome,
};
use callingbox_engine::turns::HangupReason;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{CallPlan, LineEnd, LineEvent, Telephony};

/// Builds a cloud voice from an agent's `voice` and a call's language.
pub type VoiceFactory =
    Arc<dyn Fn(&str, &str) -> Result<Arc<dyn TtsProvider>, String> + Send + Sync>;

/// The models every call shares.
#[derive(Clone)]
pub struct SpeechStack {
    /// The chat model.
    pub llm: Arc<dyn LlmProvider>,
    /// The voice.
    pub tts: Arc<dyn TtsProvider>,
    /// Voices for other languages, by BCP-47 primary subtag (`es`): a call
    /// in one of them speaks with its voice, any other call with `tts`.
    pub voices: BTreeMap<String, Arc<dyn TtsProvider>>,
    /// A cloud TTS vendor's voices, when one is configured: each call
    /// speaks with its agent's `voice` (a vendor voice id; `default` is the
    /// node's configured voice) in the call's language, instead of `tts`.
    pub cloud_voices: Option<VoiceFactory>,
    /// The recognizer (one session per call, in the call's language).
    pub asr: Arc<dyn AsrProvider>,
    /// Let the end-of-turn model decide turns (when it loaded).
    pub end_of_turn_model: bool,
    /// The longest wait for the LLM's next event before the call fails
    /// (`AgentConfig::llm_timeout`): a cloud model that says nothing for
    /// long is down, while the local model on a busy CPU may queue calls.
    pub llm_timeout: Duration,
}

impl std::fmt::Debug for SpeechStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpeechStack")
            .field("end_of_turn_model", &self.end_of_turn_model)
            .finish_non_exhaustive()
    }
}

/// A started conversation: what the media side joins, and its events.
pub struct Conversation {
    /// The agent loop, recognizer and agent audio.
    pub link: ConversationLink,
    /// The agent loop's clock zero.
    pub epoch: std::time::Instant,
    /// The conversation's events (segments, tools, metrics, its end).
    pub events: mpsc::UnboundedReceiver<CallEvent>,
    /// Stops the recognizer.
    pub cancel: CancellationToken,
}

impl SpeechStack {
    /// The voice of a call whose agent names `voice`, in `language`.
    pub fn voice_for_call(
        &self,
        voice: &str,
        language: &str,
    ) -> Result<Arc<dyn TtsProvider>, String> {
        match &self.cloud_voices {
            Some(factory) => factory(voice, language),
            None => Ok(Arc::clone(self.voice_for(language))),
        }
    }

    /// The local voice a call in `language` speaks with.
    pub fn voice_for(&self, language: &str) -> &Arc<dyn TtsProvider> {
        self.voices
            .get(&primary_language(language))
            .unwrap_or(&self.tts)
    }

    /// Starts `plan`'s agent loop and recognizer.
    pub fn start_conversation(&self, plan: &CallPlan) -> Result<Conversation, String> {
        let (audio_tx, agent_audio) = mpsc::channel(64);
        let providers = Providers {
            llm: Arc::clone(&self.llm),
            tts: self
                .voice_for_call(&plan.voice, &plan.language)
                .map_err(|err| format!("the voice {:?} cannot be used: {err}", plan.voice))?,
        };
        let config = AgentConfig {
            llm_timeout: self.llm_timeout,
            ..plan.agent_config()
        };
        let (agent, events) = AgentLoop::spawn(config, providers, audio_tx);
        let cancel = CancellationToken::new();
        let asr = self
            .asr
            .open_in(&plan.language, cancel.clone())
            .map_err(|err| format!("the recognizer failed to start: {err}"))?;
        let epoch = agent
            .clock()
            .to_tokio(callingbox_engine::clock::Instant::ZERO)
            .into_std();
        Ok(Conversation {
            link: ConversationLink {
                agent,
                asr,
                agent_audio,
            },
            epoch,
            events,
            cancel,
        })
    }
}

/// Outbound calls through the engine's SIP user agent.
pub struct EngineTelephony {
    dialer: SipDialer,
    route: Route,
    stack: SpeechStack,
    ring_timeout: Duration,
}

impl std::fmt::Debug for EngineTelephony {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineTelephony")
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl EngineTelephony {
    /// Calls placed with `dialer` along `route`, on `stack`.
    pub fn new(
        dialer: SipDialer,
        route: Route,
        stack: SpeechStack,
        ring_timeout: Duration,
    ) -> Self {
        EngineTelephony {
            dialer,
            route,
            stack,
            ring_timeout,
        }
    }
}

fn failed(code: &str, message: String) -> LineEvent {
    LineEvent::Ended(LineEnd {
        status: "failed".into(),
        answered_by: None,
        hangup_cause: None,
        error_code: Some(code.into()),
        error_message: Some(message),
    })
}

impl Telephony for EngineTelephony {
    fn place(
        &self,
        plan: CallPlan,
        events: mpsc::UnboundedSender<LineEvent>,
        cancel: CancellationToken,
    ) {
        let conversation = match self.stack.start_conversation(&plan) {
            Ok(conversation) => conversation,
            Err(message) => {
                let _ = events.send(failed("provider_error", message));
                return;
            }
        };
        let (sip_tx, sip_rx) = mpsc::unbounded_channel();
        let call_cancel = CancellationToken::new();
        let mut media = CallMediaConfig::phone(self.stack.end_of_turn_model);
        media.answering_machine = Some(answering_machine(&plan.voicemail_action));
        let setup = SipCallSetup {
            media,
            link: Some(conversation.link),
            epoch: conversation.epoch,
            events: Some(sip_tx),
            cancel: call_cancel.clone(),
            tap: None,
        };
        let outbound = OutboundCall {
            to: plan.to_number.clone(),
            from: plan.from_number.clone(),
            route: self.route.clone(),
            setup,
            ring_timeout: self.ring_timeout,
        };
        let dialer = self.dialer.clone();
        let max_duration = plan.max_duration;
        let asr_cancel = conversation.cancel;
        let agent_events = conversation.events;
        tokio::spawn(async move {
            let dialed = match dialer.dial(outbound).await {
                Ok(dialed) => dialed,
                Err(err) => {
                    asr_cancel.cancel();
                    let _ = events.send(failed(
                        "dial_failed",
                        format!("the call could not be placed: {err}"),
                    ));
                    return;
                }
            };
            let end = follow_answer(
                sip_rx,
                agent_events,
                &events,
                &cancel,
                max_duration,
                None,
                || dialed.hang_up(),
            )
            .await;
            asr_cancel.cancel();
            call_cancel.cancel();
            let _ = events.send(LineEvent::Ended(end));
        });
    }
}

/// What an outbound call says to an answering machine with
/// `voicemail_action: leave_message`, after its beep.
pub const VOICEMAIL_MESSAGE: &str =
    "Hello, sorry we missed you. We will try to reach you again later. Thank you, goodbye.";

/// The answering-machine handling of an outbound call with `voicemail_action`
/// (`leave_message`, else hang up).
pub fn answering_machine(voicemail_action: &str) -> AnsweringMachineConfig {
    AnsweringMachineConfig::new(if voicemail_action == "leave_message" {
        MachineAction::LeaveMessage {
            text: VOICEMAIL_MESSAGE.into(),
        }
    } else {
        MachineAction::HangUp
    })
}

/// Forwards a call's SIP and conversation events until the call ends;
/// `hang_up` is pressed on cancel, when the agent ends the call, or at the
/// maximum duration. The answer is reported as by a `human`.
pub async fn follow(
    sip: mpsc::UnboundedReceiver<SipEvent>,
    agent: mpsc::UnboundedReceiver<CallEvent>,
    events: &mpsc::UnboundedSender<LineEvent>,
    cancel: &CancellationToken,
    max_duration: Duration,
    hang_up: impl Fn(),
) -> LineEnd {
    follow_answer(
        sip,
        agent,
        events,
        cancel,
        max_duration,
        Some(AnsweredBy::Human),
        hang_up,
    )
    .await
}

/// [`follow`] for a call whose answerer is `known` at the answer, or (`None`)
/// found by answering-machine detection: its decision is the line's
/// `answered_by` (`unknown` if the call ended first), and a machine makes
/// the call `no_answer`, as voicemail is reported.
pub async fn follow_answer(
    mut sip: mpsc::UnboundedReceiver<SipEvent>,
    mut agent: mpsc::UnboundedReceiver<CallEvent>,
    events: &mpsc::UnboundedSender<LineEvent>,
    cancel: &CancellationToken,
    max_duration: Duration,
    known: Option<AnsweredBy>,
    hang_up: impl Fn(),
) -> LineEnd {
    let mut answered_by = known;
    let mut answered = false;
    let mut agent_open = true;
    let mut hung_up = false;
    // A provider that failed for good ends the call as `failed`, whatever
    // the line says about how it ended.
    let mut provider_failure: Option<(ProviderRole, String)> = None;
    let deadline = tokio::time::sleep(max_duration);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            event = sip.recv() => match event {
                Some(SipEvent::CalleeRinging { .. }) | Some(SipEvent::Ringing(_)) => {
                    let _ = events.send(LineEvent::Ringing);
                }
                Some(SipEvent::Answered) => {
                    answered = true;
                    let _ = events.send(LineEvent::Answered {
                        answered_by: known.map(|by| by.as_str().to_owned()),
                    });
                }
                Some(SipEvent::Media(MediaEvent::AnsweredBy(decision))) => {
                    answered_by = Some(decision.answered_by);
                }
                Some(SipEvent::Ended { reason, .. }) => {
                    // What the agent said last may still be on its stream.
                    while let Ok(event) = agent.try_recv() {
                        note_failure(&event, &mut provider_failure);
                        let _ = events.send(LineEvent::Engine(event));
                    }
                    let by = answered.then(|| answered_by.unwrap_or(AnsweredBy::Unknown));
                    let end = line_end(&reason, answered, by);
                    return match provider_failure {
                        Some(failure) => provider_failed(end, failure),
                        None => end,
                    };
                }
                Some(_) => {}
                None => {
                    return LineEnd {
                        status: if answered { "completed" } else { "failed" }.into(),
                        answered_by: None,
                        hangup_cause: Some("media_worker".into()),
                        error_code: (!answered).then(|| "engine_stopped".into()),
                        error_message: (!answered).then(|| "the engine stopped reporting on the call".into()),
                    };
                }
            },
            event = agent.recv(), if agent_open => match event {
                Some(event) => {
                    note_failure(&event, &mut provider_failure);
                    let ended = matches!(event, CallEvent::Ended { .. });
                    // The media's hang-up on a machine ends the agent too; its
                    // reason names it even if the SIP side's report is late.
                    if let CallEvent::Ended { reason, .. } = &event
                        && answered_by.is_none()
                        && is_machine_hang_up(reason)
                    {
                        answered_by = Some(AnsweredBy::Machine);
                    }
                    let _ = events.send(LineEvent::Engine(event));
                    if ended && !hung_up {
                        hung_up = true;
                        hang_up();
                    }
                }
                None => agent_open = false,
            },
            () = cancel.cancelled(), if !hung_up => {
                hung_up = true;
                hang_up();
            }
            () = &mut deadline, if !hung_up => {
                hung_up = true;
                hang_up();
            }
        }
    }
}

/// Whether an agent's end `reason` is the media's hang-up on a machine.
fn is_machine_hang_up(reason: &str) -> bool {
    [HangupReason::AnsweringMachine, HangupReason::VoicemailLeft]
        .iter()
        .any(|machine| reason == format!("{machine:?}"))
}

fn note_failure(event: &CallEvent, failure: &mut Option<(ProviderRole, String)>) {
    if let CallEvent::ProviderFailed {
        provider, error, ..
    } = event
    {
        failure.get_or_insert((*provider, error.clone()));
    }
}

/// The end of a call that a provider failure cut short.
fn provider_failed(end: LineEnd, (provider, error): (ProviderRole, String)) -> LineEnd {
    LineEnd {
        status: "failed".into(),
        error_code: Some("provider_error".into()),
        error_message: Some(format!("{} failed: {error}", provider.describe())),
        ..end
    }
}

fn line_end(reason: &SipEnd, answered: bool, answered_by: Option<AnsweredBy>) -> LineEnd {
    let result = call_outcome(reason, answered);
    // Voicemail is "nobody answered" to the API (and free).
    let status = if answered_by == Some(AnsweredBy::Machine) {
        "no_answer"
    } else {
        result.outcome.as_str()
    };
    let (error_code, error_message) = if status == "failed" {
        let code = match reason {
            SipEnd::Refused(code) | SipEnd::Rejected(code) => format!("sip_{code}"),
            _ => result.hangup_cause.clone(),
        };
        (
            Some(code),
            Some(format!("the call failed: {}", result.hangup_cause)),
        )
    } else {
        (None, None)
    };
    LineEnd {
        status: status.into(),
        answered_by: answered_by.map(|by| by.as_str().to_owned()),
        hangup_cause: Some(result.hangup_cause),
        error_code,
        error_message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use callingbox_engine::codecs::SampleRate;
    use callingbox_engine::providers::scripted::{ScriptedAsr, ScriptedLlm, ScriptedTts};

    #[test]
    fn a_call_speaks_with_the_voice_of_its_language() {
        let english: Arc<dyn TtsProvider> =
            Arc::new(ScriptedTts::new(SampleRate::Hz16000, Default::default()));
        let spanish: Arc<dyn TtsProvider> =
            Arc::new(ScriptedTts::new(SampleRate::Hz24000, Default::default()));
        let stack = SpeechStack {
            llm: Arc::new(ScriptedLlm::new(Vec::new(), Default::default())),
            tts: Arc::clone(&english),
            voices: BTreeMap::from([("es".to_owned(), Arc::clone(&spanish))]),
            cloud_voices: None,
            asr: Arc::new(ScriptedAsr::new(
                Vec::new(),
                Duration::ZERO,
                Duration::from_millis(1),
            )),
            end_of_turn_model: false,
            llm_timeout: Duration::from_secs(15),
        };
        for (language, expected) in [
            ("es", &spanish),
            ("es-MX", &spanish),
            ("ES-419", &spanish),
            ("en", &english),
            ("en-GB", &english),
        ] {
            assert!(
                Arc::ptr_eq(stack.voice_for(language), expected),
                "{language}"
            );
        }
    }
}
