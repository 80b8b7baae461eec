//! A simulated callee for the demo and load tests: a second engine on the
//! local carrier that answers with a recorded greeting, then answers each
//! time the agent stops talking with the next recorded fixture utterance
//! (real audio through the real media path: VAD and turn-taking decide when
//! the agent has finished), and hangs up after its last line.
//!
//! It is the engine's own agent loop with a scripted "brain" (the lines in
//! order), a voice that plays the fixture recording of each line, and a
//! recognizer that does not need to understand the agent.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use callingbox_engine::codecs::{FrameDuration, MediaTime, PcmFrame, SampleRate, read_wav};
use callingbox_engine::conversation::{AgentConfig, AgentLoop, Providers};
use callingbox_engine::providers::scripted::{
    LlmLatency, ScriptMatch, ScriptRule, ScriptedAsr, ScriptedLlm,
};
use callingbox_engine::providers::{AsrProvider, ProviderError, TtsProvider};
use callingbox_engine::session::ConversationLink;
use callingbox_engine::tools::ToolSet;
use callingbox_engine::transport::sip::{
    IncomingCall, SipCallFactory, SipCallRefused, SipCallSetup, SipDialer, SipEvent,
};
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use callingbox_engine::session::CallMediaConfig;

/// A voice that plays the fixture recording of each line it is asked to say.
#[derive(Debug, Clone)]
pub struct FixtureVoice {
    clips: Arc<HashMap<String, Vec<i16>>>,
}

impl FixtureVoice {
    /// The 16 kHz recordings of `fixtures/audio/manifest.json`, by text.
    pub fn load(fixtures: &Path) -> Result<Self> {
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(fixtures.join("manifest.json"))
                .context("reading the fixtures manifest")?,
        )?;
        let mut clips = HashMap::new();
        for clip in manifest["utterances"]
            .as_array()
            .context("manifest without utterances")?
        {
            let (Some(text), Some(file)) = (
                clip["text"].as_str(),
                clip["files"]["pcm_16k"]["path"].as_str(),
            ) else {
                continue;
            };
            if text.is_empty() {
                continue;
            }
            let audio = read_wav(fixtures.join(file)).with_context(|| format!("reading {file}"))?;
            clips.insert(text.to_owned(), audio.samples);
        }
        Ok(FixtureVoice {
            clips: Arc::new(clips),
        })
    }

    /// True if `text` has a recording.
    pub fn has(&self, text: &str) -> bool {
        self.clips.contains_key(text)
    }
}

impl TtsProvider for FixtureVoice {
    fn sample_rate(&self) -> SampleRate {
        SampleRate::Hz16000
    }

    fn synthesize(&self, text: &str) -> BoxStream<'static, Result<PcmFrame, ProviderError>> {
        let samples = self.clips.get(text.trim()).cloned();
        let Some(samples) = samples else {
            let missing = ProviderError::BadResponse(format!("no recording of {text:?}"));
            return Box::pin(futures::stream::once(async move { Err(missing) }));
        };
        let len = SampleRate::Hz16000.samples_in(FrameDuration::Ms20);
        let frames: Vec<Result<PcmFrame, ProviderError>> = samples
            .chunks(len)
            .enumerate()
            .map(|(index, chunk)| {
                let mut chunk = chunk.to_vec();
                chunk.resize(len, 0);
                Ok(PcmFrame::new(
                    SampleRate::Hz16000,
                    MediaTime::from_millis(index as u64 * 20),
                    chunk,
                ))
            })
            .collect();
        Box::pin(futures::stream::iter(frames))
    }
}

/// Answers every call with `lines`: the first on pick-up, each next one when
/// the other side stops talking, hanging up after the last.
pub struct SimulatedCallee {
    voice: FixtureVoice,
    dialer: Arc<std::sync::OnceLock<SipDialer>>,
    lines: Vec<String>,
    runtime: tokio::runtime::Handle,
}

impl SimulatedCallee {
    /// A callee saying `lines` (each must have a fixture recording).
    pub fn new(voice: FixtureVoice, lines: &[&str]) -> Result<Self> {
        for line in lines {
            anyhow::ensure!(voice.has(line), "no fixture recording says {line:?}");
        }
        Ok(SimulatedCallee {
            voice,
            dialer: Arc::default(),
            lines: lines.iter().map(|l| (*l).to_owned()).collect(),
            runtime: tokio::runtime::Handle::current(),
        })
    }
}

impl SimulatedCallee {
    /// Where the callee's own SIP server is reached from: set once the server
    /// is bound, so the callee can hang up after its last line.
    pub fn dialer_slot(&self) -> Arc<std::sync::OnceLock<SipDialer>> {
        Arc::clone(&self.dialer)
    }
}

impl SipCallFactory for SimulatedCallee {
    fn open_call(&self, call: &IncomingCall) -> Result<SipCallSetup, SipCallRefused> {
        let refuse = |reason: String| SipCallRefused {
            status: 500,
            reason,
        };
        let _guard = self.runtime.enter();
        let (greeting, replies) = self
            .lines
            .split_first()
            .ok_or_else(|| refuse("no lines".into()))?;
        // Turn n of the agent is answered with reply n; the last one hangs up.
        let mut rules: Vec<ScriptRule> = replies
            .iter()
            .enumerate()
            .map(|(turn, line)| {
                let rule = ScriptRule::when(ScriptMatch::Turn(turn)).reply(line);
                if turn + 1 == replies.len() {
                    rule.call("end_call", serde_json::json!({}))
                } else {
                    rule
                }
            })
            .collect();
        rules.push(
            ScriptRule::when(ScriptMatch::Always)
                .reply(greeting)
                .call("end_call", serde_json::json!({})),
        );
        let brain = ScriptedLlm::new(
            rules,
            LlmLatency {
                time_to_first_token: Duration::from_millis(150),
                tokens_per_second: 200,
            },
        );
        let tools =
            ToolSet::from_json(r#"[{"type":"builtin","name":"end_call","description":"Hang up"}]"#)
                .map_err(|err| refuse(err.to_string()))?;
        let config = AgentConfig {
            system_prompt: "The callee.".into(),
            tools,
            ..AgentConfig::default()
        };
        let (audio_tx, agent_audio) = mpsc::channel(64);
        let providers = Providers {
            llm: Arc::new(brain),
            tts: Arc::new(self.voice.clone()),
        };
        let (agent, mut agent_events) = AgentLoop::spawn(config, providers, audio_tx);
        // Its end_call hangs up once the last line was spoken.
        let (dialer, sip_call) = (Arc::clone(&self.dialer), call.call);
        tokio::spawn(async move {
            while let Some(event) = agent_events.recv().await {
                tracing::debug!(?event, "callee event");
                if matches!(event, callingbox_engine::events::CallEvent::Ended { .. })
                    && let Some(dialer) = dialer.get()
                {
                    dialer.hang_up(sip_call);
                }
            }
        });
        let cancel = CancellationToken::new();
        // The callee does not need to understand the agent: every turn it
        // hears is the same plain sentence. (Words in parentheses would be
        // read as a non-speech tag like "(coughing)", and the turn dropped.)
        let ears = ScriptedAsr::new(
            vec!["I heard the agent.".to_owned(); 64],
            Duration::from_millis(150),
            Duration::from_millis(250),
        );
        let asr = ears
            .open(cancel.clone())
            .map_err(|err| refuse(err.to_string()))?;
        let epoch = agent
            .clock()
            .to_tokio(callingbox_engine::clock::Instant::ZERO)
            .into_std();
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let greeter = agent.speaker();
        let greeting = greeting.clone();
        tokio::spawn(async move {
            while let Some(event) = events_rx.recv().await {
                tracing::debug!(?event, "callee SIP event");
                match event {
                    SipEvent::Answered => greeter.say(&greeting),
                    SipEvent::Ended { .. } => break,
                    _ => {}
                }
            }
            cancel.cancel();
        });
        // A patient callee: it never asks "are you still there?" (its voice
        // has no recording of that) and waits a minute for a slow agent.
        let mut media = CallMediaConfig::phone(false);
        media.turns.idle_prompt_after = None;
        media.turns.idle_hangup_after = Some(Duration::from_secs(60));
        Ok(SipCallSetup {
            media,
            link: Some(ConversationLink {
                agent,
                asr,
                agent_audio,
            }),
            epoch,
            events: Some(events_tx),
            cancel: CancellationToken::new(),
            tap: None,
        })
    }
}
