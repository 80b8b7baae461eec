//! One call's conversation on scripted providers, as the end-to-end tests
//! (session, media stream, SIP) set it up: the LLM answers turn by turn from
//! a list (then "Okay."), the voice is a tone, the recognizer hears a list of
//! utterances; and the call's media settings (PCMU both ways, cues decide).

use std::sync::Arc;
use std::time::Duration;

use callingbox_engine::clock::Instant;
use callingbox_engine::codecs::SampleRate;
use callingbox_engine::conversation::{AgentConfig, AgentLoop, Providers};
use callingbox_engine::events::CallEvent;
use callingbox_engine::providers::scripted::{
    LlmLatency, ScriptMatch, ScriptRule, ScriptedAsr, ScriptedLlm, ScriptedTts, TtsLatency,
};
use callingbox_engine::providers::{AsrProvider, ProviderError};
use callingbox_engine::session::{CallMediaConfig, ConversationLink};
use callingbox_engine::tools::ToolSet;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A started conversation and what the media side needs to join it.
pub struct ScriptedConversation {
    /// The agent loop, recognizer and agent audio, for the worker.
    pub link: ConversationLink,
    /// The agent loop's clock zero, as the worker's epoch for this call.
    pub epoch: std::time::Instant,
    /// Ends the recognizer.
    pub cancel: CancellationToken,
    /// The call's event stream (transcript, tools, end).
    pub events: mpsc::UnboundedReceiver<CallEvent>,
    /// The model (a clone sharing its log: what it was asked).
    pub llm: ScriptedLlm,
}

/// Starts an agent loop that replies `agent_replies[n]` to turn `n` (then
/// "Okay."), at LLM TTFT 250 ms / 40 tokens per second and TTS TTFB 100 ms,
/// and a recognizer that hears `user_says` in order (final 150 ms after the
/// speech ends).
pub fn scripted_conversation<S: AsRef<str>>(
    user_says: &[S],
    agent_replies: &[S],
) -> Result<ScriptedConversation, ProviderError> {
    let mut rules: Vec<ScriptRule> = agent_replies
        .iter()
        .enumerate()
        .map(|(turn, reply)| ScriptRule::when(ScriptMatch::Turn(turn)).reply(reply.as_ref()))
        .collect();
    rules.push(ScriptRule::when(ScriptMatch::Always).reply("Okay."));
    scripted_conversation_with(user_says, rules, ToolSet::default())
}

/// As [`scripted_conversation`], with the LLM's rules and the agent's tools given.
pub fn scripted_conversation_with<S: AsRef<str>>(
    user_says: &[S],
    rules: Vec<ScriptRule>,
    tools: ToolSet,
) -> Result<ScriptedConversation, ProviderError> {
    let llm = ScriptedLlm::new(
        rules,
        LlmLatency {
            time_to_first_token: Duration::from_millis(250),
            tokens_per_second: 40,
        },
    );
    let tts = ScriptedTts::new(
        SampleRate::Hz16000,
        TtsLatency {
            time_to_first_byte: Duration::from_millis(100),
            real_time_factor: 0.1,
            speech_per_char: Duration::from_millis(60),
        },
    );
    let (audio_tx, agent_audio) = mpsc::channel(64);
    let providers = Providers {
        llm: Arc::new(llm.clone()),
        tts: Arc::new(tts),
    };
    let config = AgentConfig {
        tools,
        ..AgentConfig::default()
    };
    let (agent, events) = AgentLoop::spawn(config, providers, audio_tx);
    let cancel = CancellationToken::new();
    let asr = ScriptedAsr::new(
        user_says.iter().map(|s| s.as_ref().to_owned()).collect(),
        Duration::from_millis(150),
        Duration::from_millis(250),
    )
    .open(cancel.clone())?;
    let epoch = agent.clock().to_tokio(Instant::ZERO).into_std();
    Ok(ScriptedConversation {
        link: ConversationLink {
            agent,
            asr,
            agent_audio,
        },
        epoch,
        cancel,
        events,
        llm,
    })
}

/// PCMU in and out (TTS at 16 kHz), default VAD gate, transcript cues
/// deciding the end of turn (no end-of-turn model: runs stay exact).
pub fn pcmu_media() -> CallMediaConfig {
    CallMediaConfig::phone(false)
}
