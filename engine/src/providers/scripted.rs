//! Deterministic providers for tests: scripted answers with configurable
//! latencies, all timed with tokio time, so a test under
//! `tokio::time::pause()` runs on virtual time with no real sleeps and gets
//! the same timings on every run.

use crate::providers::PooledFrame;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use tokio::time::Instant as TokioInstant;
use tokio_util::sync::CancellationToken;

use super::structured::{ResultSchema, StructuredCompletion, fill_missing_nulls};
use super::{
    AsrEvent, AsrProvider, AsrSession, ChatMessage, LlmEvent, LlmProvider, LlmRequest,
    ProviderError, ToolCallRequest, TtsProvider,
};
use crate::codecs::{FrameDuration, MediaTime, PcmFrame, SampleRate};

/// Locks a test-provider log, surviving a panicked holder (the log is plain data).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

// ---------------------------------------------------------------- LLM

/// When a [`ScriptRule`] applies to an LLM request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptMatch {
    /// Always.
    Always,
    /// The request answers a user turn whose text contains this (case-insensitive).
    UserContains(String),
    /// The request answers the n-th user turn (0-based).
    Turn(usize),
    /// The request follows a result of tool `tool` whose JSON contains `contains`.
    ToolResultContains {
        /// The tool's name.
        tool: String,
        /// A substring of the result JSON.
        contains: String,
    },
}

/// One line of an LLM script: when it applies, the reply text, the tool calls.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptRule {
    /// When this rule applies.
    pub when: ScriptMatch,
    /// The text to stream (may be empty).
    pub reply: String,
    /// Tool calls to emit after the text: (name, arguments).
    pub tool_calls: Vec<(String, serde_json::Value)>,
}

impl ScriptRule {
    /// A rule for `when` with no reply yet.
    pub fn when(when: ScriptMatch) -> Self {
        ScriptRule {
            when,
            reply: String::new(),
            tool_calls: Vec::new(),
        }
    }

    /// Sets the reply text.
    pub fn reply(mut self, text: &str) -> Self {
        self.reply = text.to_owned();
        self
    }

    /// Adds a tool call.
    pub fn call(mut self, name: &str, arguments: serde_json::Value) -> Self {
        self.tool_calls.push((name.to_owned(), arguments));
        self
    }

    fn matches(&self, request: &LlmRequest) -> bool {
        let last = request.messages.last();
        match (&self.when, last) {
            (ScriptMatch::Always, _) => true,
            (ScriptMatch::UserContains(needle), Some(ChatMessage::User { content })) => content
                .to_lowercase()
                .contains(needle.to_lowercase().as_str()),
            (ScriptMatch::Turn(n), Some(ChatMessage::User { .. })) => {
                let users = request
                    .messages
                    .iter()
                    .filter(|m| matches!(m, ChatMessage::User { .. }))
                    .count();
                users == n + 1
            }
            (
                ScriptMatch::ToolResultContains { tool, contains },
                Some(ChatMessage::Tool { name, content, .. }),
            ) => name == tool && content.contains(contains.as_str()),
            _ => false,
        }
    }
}

/// The scripted LLM's latencies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LlmLatency {
    /// From the request to the first token.
    pub time_to_first_token: Duration,
    /// Tokens (words) per second after the first.
    pub tokens_per_second: u32,
}

impl Default for LlmLatency {
    fn default() -> Self {
        LlmLatency {
            time_to_first_token: Duration::from_millis(250),
            tokens_per_second: 50,
        }
    }
}

/// What the scripted LLM saw and when it answered, for assertions.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmCallRecord {
    /// The request.
    pub request: LlmRequest,
    /// When the request started (tokio clock).
    pub started_at: TokioInstant,
    /// When `Done` was produced, if it was (a cancelled stream never is).
    pub completed_at: Option<TokioInstant>,
}

/// A structured request the scripted LLM saw.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonCallRecord {
    /// The instructions.
    pub system: String,
    /// The material.
    pub user: String,
    /// The schema as given.
    pub schema: serde_json::Value,
}

/// A chat LLM that answers from a script: the first rule whose match fits the
/// request wins; no match gives an empty reply. Words stream as tokens (each
/// with its trailing space), the first after `time_to_first_token`, the rest at
/// `tokens_per_second`; tool calls follow the text at the same pace.
#[derive(Debug, Clone)]
pub struct ScriptedLlm {
    rules: Arc<Vec<ScriptRule>>,
    latency: LlmLatency,
    log: Arc<Mutex<Vec<LlmCallRecord>>>,
    next_call_id: Arc<Mutex<u64>>,
    json_reply: Option<serde_json::Value>,
    json_log: Arc<Mutex<Vec<JsonCallRecord>>>,
}

impl ScriptedLlm {
    /// A scripted LLM with these rules and latencies.
    pub fn new(rules: Vec<ScriptRule>, latency: LlmLatency) -> Self {
        ScriptedLlm {
            rules: Arc::new(rules),
            latency,
            log: Arc::new(Mutex::new(Vec::new())),
            next_call_id: Arc::new(Mutex::new(0)),
            json_reply: None,
            json_log: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Sets the object every `complete_json` answers (after the time to
    /// first token). Missing nullable properties are filled with `null`;
    /// the value must otherwise follow the schema asked for, or the call
    /// fails as a real provider's would.
    pub fn with_json_reply(mut self, value: serde_json::Value) -> Self {
        self.json_reply = Some(value);
        self
    }

    /// Every `complete_json` request so far.
    pub fn json_records(&self) -> Vec<JsonCallRecord> {
        lock(&self.json_log).clone()
    }

    /// Every request so far, with its timing.
    pub fn records(&self) -> Vec<LlmCallRecord> {
        lock(&self.log).clone()
    }

    /// The time a reply of `text` plus `tool_calls` calls takes to complete.
    pub fn completion_time(&self, text: &str, tool_calls: usize) -> Duration {
        let events = text.split_inclusive(' ').count() + tool_calls;
        self.latency.time_to_first_token + self.token_interval() * (events.max(1) as u32 - 1)
    }

    fn token_interval(&self) -> Duration {
        Duration::from_secs(1) / self.latency.tokens_per_second.max(1)
    }
}

impl LlmProvider for ScriptedLlm {
    fn stream_chat(
        &self,
        request: LlmRequest,
    ) -> BoxStream<'static, Result<LlmEvent, ProviderError>> {
        let rule = self.rules.iter().find(|r| r.matches(&request)).cloned();
        let mut events: Vec<LlmEvent> = Vec::new();
        if let Some(rule) = rule {
            events.extend(
                rule.reply
                    .split_inclusive(' ')
                    .map(|t| LlmEvent::Token(t.to_owned())),
            );
            for (name, arguments) in rule.tool_calls {
                let id = {
                    let mut next = lock(&self.next_call_id);
                    *next += 1;
                    format!("call_{}", *next)
                };
                events.push(LlmEvent::ToolCall(ToolCallRequest {
                    id,
                    name,
                    arguments_json: arguments.to_string(),
                }));
            }
        }
        let mut schedule: VecDeque<(Duration, LlmEvent)> = VecDeque::new();
        for (i, event) in events.into_iter().enumerate() {
            let delay = if i == 0 {
                self.latency.time_to_first_token
            } else {
                self.token_interval()
            };
            schedule.push_back((delay, event));
        }
        let done_delay = if schedule.is_empty() {
            self.latency.time_to_first_token
        } else {
            Duration::ZERO
        };
        schedule.push_back((done_delay, LlmEvent::Done));

        let index = {
            let mut log = lock(&self.log);
            log.push(LlmCallRecord {
                request,
                started_at: TokioInstant::now(),
                completed_at: None,
            });
            log.len() - 1
        };
        let log = Arc::clone(&self.log);
        futures::stream::unfold(schedule, move |mut schedule| {
            let log = Arc::clone(&log);
            async move {
                let (delay, event) = schedule.pop_front()?;
                tokio::time::sleep(delay).await;
                if event == LlmEvent::Done
                    && let Some(record) = lock(&log).get_mut(index)
                {
                    record.completed_at = Some(TokioInstant::now());
                }
                Some((Ok(event), schedule))
            }
        })
        .boxed()
    }
}

impl StructuredCompletion for ScriptedLlm {
    fn complete_json(
        &self,
        system: &str,
        user: &str,
        schema: &serde_json::Value,
    ) -> futures::future::BoxFuture<'static, Result<serde_json::Value, ProviderError>> {
        lock(&self.json_log).push(JsonCallRecord {
            system: system.to_owned(),
            user: user.to_owned(),
            schema: schema.clone(),
        });
        let parsed = ResultSchema::parse(schema);
        let reply = self.json_reply.clone();
        let delay = self.latency.time_to_first_token;
        Box::pin(async move {
            let schema = parsed?;
            tokio::time::sleep(delay).await;
            let mut value = reply.ok_or_else(|| {
                ProviderError::BadResponse("scripted llm: no JSON reply configured".into())
            })?;
            fill_missing_nulls(&schema, &mut value);
            schema.check_answer("scripted llm", &value)?;
            Ok(value)
        })
    }
}

// ---------------------------------------------------------------- TTS

/// The scripted TTS voice's timing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TtsLatency {
    /// From the request to the first frame.
    pub time_to_first_byte: Duration,
    /// Synthesis time per second of audio after the first frame (0.1 = ten
    /// times faster than real time).
    pub real_time_factor: f64,
    /// How long the voice takes to say one character.
    pub speech_per_char: Duration,
}

impl Default for TtsLatency {
    fn default() -> Self {
        TtsLatency {
            time_to_first_byte: Duration::from_millis(150),
            real_time_factor: 0.1,
            speech_per_char: Duration::from_millis(60),
        }
    }
}

/// A TTS voice that "speaks" a clause as a tone lasting
/// `speech_per_char` per character, in 20 ms frames.
#[derive(Debug, Clone)]
pub struct ScriptedTts {
    rate: SampleRate,
    latency: TtsLatency,
    log: Arc<Mutex<Vec<(String, TokioInstant)>>>,
}

impl ScriptedTts {
    /// A voice at `rate` with these latencies.
    pub fn new(rate: SampleRate, latency: TtsLatency) -> Self {
        ScriptedTts {
            rate,
            latency,
            log: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Every clause requested so far, with the request time.
    pub fn requests(&self) -> Vec<(String, TokioInstant)> {
        lock(&self.log).clone()
    }

    /// How long the voice's audio for `text` lasts (whole 20 ms frames).
    pub fn audio_duration(&self, text: &str) -> Duration {
        FrameDuration::Ms20.as_duration() * self.frame_count(text)
    }

    fn frame_count(&self, text: &str) -> u32 {
        let chars = text.trim().chars().count() as u32;
        let speech = self.latency.speech_per_char * chars;
        speech
            .as_millis()
            .div_ceil(u128::from(FrameDuration::Ms20.millis()))
            .max(1) as u32
    }
}

impl TtsProvider for ScriptedTts {
    fn sample_rate(&self) -> SampleRate {
        self.rate
    }

    fn synthesize(&self, text: &str) -> BoxStream<'static, Result<PcmFrame, ProviderError>> {
        lock(&self.log).push((text.to_owned(), TokioInstant::now()));
        let frames = self.frame_count(text);
        let rate = self.rate;
        let first = self.latency.time_to_first_byte;
        let per_frame = FrameDuration::Ms20
            .as_duration()
            .mul_f64(self.latency.real_time_factor.max(0.0));
        futures::stream::unfold(0u32, move |index| async move {
            if index >= frames {
                return None;
            }
            tokio::time::sleep(if index == 0 { first } else { per_frame }).await;
            let start = MediaTime::from_millis(u64::from(index) * 20);
            let len = rate.samples_in(FrameDuration::Ms20);
            // A square tone, so "audio" is visibly not silence.
            let samples = (0..len)
                .map(|i| if (i / 8) % 2 == 0 { 3_000 } else { -3_000 })
                .collect();
            Some((Ok(PcmFrame::new(rate, start, samples)), index + 1))
        })
        .boxed()
    }
}

// ---------------------------------------------------------------- ASR

/// A recognizer that hears its script: each stretch of non-silent audio is
/// the next scripted utterance. While it lasts, interims reveal one more word
/// per `interim_per_word` of speech; `final_delay` after the speech ends
/// (the first silent frame's start) it reports the utterance as final.
/// Speech that resumes within [`ScriptedAsr::UTTERANCE_GAP`] of a finalized
/// utterance belongs to it (a pause between words, already transcribed in
/// full), so a recording with short pauses is still one utterance. Each
/// utterance is announced ([`AsrEvent::UtteranceStarted`]) when its speech
/// begins, like the local Whisper recognizer does.
#[derive(Debug, Clone)]
pub struct ScriptedAsr {
    utterances: Arc<Vec<String>>,
    final_delay: Duration,
    interim_per_word: Duration,
}

impl ScriptedAsr {
    /// Silence shorter than this between two stretches of speech is a pause
    /// inside one utterance.
    pub const UTTERANCE_GAP: Duration = Duration::from_millis(500);

    /// A recognizer that hears `utterances` in order.
    pub fn new(utterances: Vec<String>, final_delay: Duration, interim_per_word: Duration) -> Self {
        ScriptedAsr {
            utterances: Arc::new(utterances),
            final_delay,
            interim_per_word,
        }
    }
}

/// Below this peak a frame counts as silence.
const SILENCE_PEAK: i16 = 200;

impl AsrProvider for ScriptedAsr {
    /// A script "hears" its utterances in any language.
    fn open_in(&self, _: &str, cancel: CancellationToken) -> Result<AsrSession, ProviderError> {
        self.open(cancel)
    }

    fn open(&self, cancel: CancellationToken) -> Result<AsrSession, ProviderError> {
        let (audio_tx, mut audio_rx) = mpsc::channel::<PooledFrame>(256);
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        let utterances = Arc::clone(&self.utterances);
        let final_delay = self.final_delay;
        let per_word = self.interim_per_word.max(Duration::from_millis(1));
        tokio::spawn(async move {
            let mut next_utterance = 0usize;
            let mut speech = Duration::ZERO;
            let mut words_shown = 0usize;
            let mut final_at: Option<TokioInstant> = None;
            // When the last finalized utterance's speech ended.
            let mut finalized_speech_end: Option<TokioInstant> = None;
            let mut speech_end: Option<TokioInstant> = None;
            loop {
                let deadline = async {
                    match final_at {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    () = deadline => {
                        final_at = None;
                        if let Some(text) = utterances.get(next_utterance) {
                            let _ = event_tx.send(AsrEvent::Final { text: text.clone() });
                        }
                        next_utterance += 1;
                        speech = Duration::ZERO;
                        words_shown = 0;
                        finalized_speech_end = speech_end;
                    }
                    frame = audio_rx.recv() => {
                        let Some(frame) = frame else { break };
                        let loud = frame.samples().iter().any(|s| s.saturating_abs() > SILENCE_PEAK);
                        let length = frame.duration();
                        if loud {
                            let frame_start = TokioInstant::now() - length;
                            if let Some(end) = finalized_speech_end {
                                if frame_start.saturating_duration_since(end) < ScriptedAsr::UTTERANCE_GAP {
                                    // The rest of an utterance already transcribed.
                                    finalized_speech_end = Some(TokioInstant::now());
                                    continue;
                                }
                                finalized_speech_end = None;
                            }
                            final_at = None;
                            let Some(text) = utterances.get(next_utterance) else { continue };
                            if speech == Duration::ZERO {
                                let _ = event_tx.send(AsrEvent::UtteranceStarted);
                            }
                            speech += length;
                            let words: Vec<&str> = text.split_whitespace().collect();
                            let shown = ((speech.as_micros() / per_word.as_micros()) as usize + 1)
                                .min(words.len());
                            if shown > words_shown {
                                words_shown = shown;
                                let _ = event_tx.send(AsrEvent::Interim { text: words[..shown].join(" ") });
                            }
                        } else if speech > Duration::ZERO && final_at.is_none() {
                            // The frame arrives once it is complete: speech ended at its start.
                            speech_end = Some(TokioInstant::now() - length);
                            final_at = Some(TokioInstant::now() - length + final_delay);
                        }
                    }
                }
            }
        });
        Ok(AsrSession::from_channels(audio_tx, event_rx))
    }
}
