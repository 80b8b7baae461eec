//! One call's conversation on scripted providers, as the end-to-end tests
//! (session, media stream, SIP) set it up: the LLM answers turn by turn from
//! a list (then "Okay."), the voice is a tone, the recognizer hears a list of
//! utterances; and the call's media settings (PCMU both ways, cues decide).

use std::sync::Arc;
use std::time::Duration;

use callingbox_engine::audio::{InboundCodec, OutboundConfig};
use callingbox_engine::clock::Instant;
use callingbox_engine::codecs::{G711Law, SampleRate};
use callingbox_engine::conversation::{AgentConfig, AgentLoop, Providers};
use callingbox_engine::providers::scripted::{
    LlmLatency, ScriptMatch, ScriptRule, ScriptedAsr, ScriptedLlm, ScriptedTts, TtsLatency,
};
use callingbox_engine::providers::{AsrProvider, ProviderError};
use callingbox_engine::session::{CallMediaConfig, ConversationLink};
use callingbox_engine::turns::TurnConfig;
use callingbox_engine::vad::VadGateConfig;
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
        llm: Arc::new(llm),
        tts: Arc::new(tts),
    };
    let (agent, _call_events) = AgentLoop::spawn(AgentConfig::default(), providers, audio_tx);
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
    })
}

/// PCMU in and out (TTS at 16 kHz), default VAD gate, transcript cues
/// deciding the end of turn (no end-of-turn model: runs stay exact).
pub fn pcmu_media() -> CallMediaConfig {
    CallMediaConfig {
        inbound: InboundCodec::G711(G711Law::MuLaw),
        outbound: OutboundConfig::pcmu(SampleRate::Hz16000),
        gate: VadGateConfig::default(),
        turns: TurnConfig {
            use_end_of_turn_model: false,
            ..TurnConfig::default()
        },
        answering_machine: None,
    }
}
