//! OpenAI Realtime speech-to-speech over WebSocket (the beta protocol:
//! `OpenAI-Beta: realtime=v1`, `response.audio.delta` events).
//!
//! The session speaks `pcm16` at 24 kHz both ways; the engine's frames
//! (16 kHz by default) are resampled on the way in and out with the codecs'
//! streaming [`Resampler`]. The server's VAD decides turns
//! (`turn_detection: server_vad`) and interrupts its own reply when the
//! caller barges in; the adapter then truncates the reply's audio item at
//! the duration the caller actually heard (`conversation.item.truncate`
//! with `audio_end_ms`), so the model's memory of what it said matches
//! what was played, and reports [`SpeechToSpeechEvent::ReplyInterrupted`].
//!
//! How much was heard: the engine may report it ([`RealtimeControl::report_played`]);
//! otherwise the adapter assumes playback in real time from the reply's
//! first frame. Both are capped at the audio delivered so far.
//!
//! The protocol logic is [`RealtimeProtocol`], a plain value fed with
//! server messages and engine inputs (with the time as an input) that
//! queues client messages and engine events; the socket task only moves
//! bytes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::ws::{self, PcmAssembler, Socket, Vendor};
use super::{
    ProviderError, SpeechToSpeechEvent, SpeechToSpeechProvider, SpeechToSpeechSession,
    ToolCallRequest, ToolResultMessage, ToolSchema,
};
use crate::codecs::{FrameDuration, Framer, PcmFrame, Resampler, SampleRate};
use crate::events::Role;

/// The endpoint used unless a test points the adapter elsewhere.
pub const DEFAULT_BASE_URL: &str = "wss://api.openai.com";

/// The environment variable holding the API key.
pub const API_KEY_ENV: &str = "OPENAI_API_KEY";

/// The rate of the session's `pcm16` audio, both ways.
pub const MODEL_RATE: SampleRate = SampleRate::Hz24000;

/// The server's voice activity detection (`turn_detection`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerVad {
    /// 0..1 activation threshold (higher needs louder speech).
    pub threshold: f32,
    /// Audio kept before detected speech.
    pub prefix_padding_ms: u32,
    /// Silence that ends the caller's turn.
    pub silence_duration_ms: u32,
}

impl Default for ServerVad {
    fn default() -> Self {
        ServerVad {
            threshold: 0.5,
            prefix_padding_ms: 300,
            silence_duration_ms: 500,
        }
    }
}

/// Everything the OpenAI Realtime adapter needs.
#[derive(Clone, PartialEq)]
pub struct OpenAiRealtimeConfig {
    /// The API key (`Authorization: Bearer`).
    pub api_key: String,
    /// The model, e.g. `gpt-4o-realtime-preview`.
    pub model: String,
    /// The agent's voice (`alloy`, `verse`, ...).
    pub voice: String,
    /// The caller's language (ISO 639-1, `en`, `es`, ...), given to the
    /// input transcription. The agent's spoken language follows the
    /// instructions.
    pub language: String,
    /// The model transcribing the caller (`whisper-1`); `None` turns
    /// caller transcripts off.
    pub transcription_model: Option<String>,
    /// Turn detection on the server.
    pub vad: ServerVad,
    /// The rate of the engine's frames in and out (16 kHz usually).
    pub engine_rate: SampleRate,
    /// `wss://api.openai.com` unless a test overrides it.
    pub base_url: String,
    /// Longest wait for the socket to open and the session to be configured.
    pub connect_timeout: Duration,
    /// Longest silence from the server while a reply is in progress.
    pub reply_idle_timeout: Duration,
    /// Caller frames queued for the socket (20 ms each).
    pub audio_queue: usize,
}

impl std::fmt::Debug for OpenAiRealtimeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("OpenAiRealtimeConfig")
            .field("model", &self.model)
            .field("voice", &self.voice)
            .field("language", &self.language)
            .field("engine_rate", &self.engine_rate)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl OpenAiRealtimeConfig {
    /// A configuration with `voice` for a caller speaking `language`.
    pub fn new(api_key: &str, voice: &str, language: &str) -> Self {
        OpenAiRealtimeConfig {
            api_key: api_key.to_owned(),
            model: "gpt-4o-realtime-preview".to_owned(),
            voice: voice.to_owned(),
            language: language.to_owned(),
            transcription_model: Some("whisper-1".to_owned()),
            vad: ServerVad::default(),
            engine_rate: SampleRate::Hz16000,
            base_url: DEFAULT_BASE_URL.to_owned(),
            connect_timeout: Duration::from_secs(10),
            reply_idle_timeout: Duration::from_secs(15),
            audio_queue: 100,
        }
    }

    /// [`OpenAiRealtimeConfig::new`] with the key from `OPENAI_API_KEY`.
    pub fn from_env(voice: &str, language: &str) -> Result<Self, ProviderError> {
        Ok(Self::new(
            &ws::api_key_from_env(API_KEY_ENV)?,
            voice,
            language,
        ))
    }

    /// The socket's URL.
    pub fn url(&self) -> String {
        format!(
            "{}/v1/realtime?model={}",
            self.base_url.trim_end_matches('/'),
            ws::encode_query(&self.model)
        )
    }

    /// The `session.update` event configuring the session.
    pub fn session_update(&self, instructions: &str, tools: &[ToolSchema]) -> Value {
        let tools: Vec<Value> = tools
            .iter()
            .map(|tool| {
                json!({
                    "type": "function",
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters,
                })
            })
            .collect();
        let transcription = self
            .transcription_model
            .as_ref()
            .map(|model| json!({"model": model, "language": self.language}));
        json!({
            "type": "session.update",
            "session": {
                "modalities": ["audio", "text"],
                "instructions": instructions,
                "voice": self.voice,
                "input_audio_format": "pcm16",
                "output_audio_format": "pcm16",
                "input_audio_transcription": transcription,
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": self.vad.threshold,
                    "prefix_padding_ms": self.vad.prefix_padding_ms,
                    "silence_duration_ms": self.vad.silence_duration_ms,
                    "create_response": true,
                    "interrupt_response": true,
                },
                "tools": tools,
                "tool_choice": "auto",
            },
        })
    }
}

// ------------------------------------------------------------ protocol core

/// The agent audio item being delivered.
#[derive(Debug)]
struct ReplyAudio {
    item_id: String,
    content_index: u64,
    /// 24 kHz samples delivered to the engine.
    delivered_samples: u64,
    /// When its first frame went to the engine.
    first_frame_at: Option<Instant>,
    /// Truncated: its remaining deltas are dropped.
    truncated: bool,
}

impl ReplyAudio {
    fn delivered(&self) -> Duration {
        Duration::from_nanos(self.delivered_samples * 1_000_000_000 / u64::from(MODEL_RATE.hz()))
    }
}

/// Engine frames to 24 kHz `input_audio_buffer.append` messages.
struct CallerAudio {
    rate: SampleRate,
    framer: Framer,
    resampler: Option<Resampler>,
    frame: PcmFrame,
    resampled: PcmFrame,
    bytes: Vec<u8>,
}

impl CallerAudio {
    fn new(rate: SampleRate) -> Result<Self, ProviderError> {
        let resampler = if rate == MODEL_RATE {
            None
        } else {
            Some(
                Resampler::new(rate, MODEL_RATE, FrameDuration::Ms20)
                    .map_err(|e| ProviderError::BadResponse(format!("resampler: {e}")))?,
            )
        };
        Ok(CallerAudio {
            rate,
            framer: Framer::new(rate, FrameDuration::Ms20),
            resampler,
            frame: PcmFrame::with_capacity(rate, FrameDuration::Ms20),
            resampled: PcmFrame::with_capacity(MODEL_RATE, FrameDuration::Ms20),
            bytes: Vec::with_capacity(MODEL_RATE.samples_in(FrameDuration::Ms20) * 2),
        })
    }
}

/// The Realtime protocol as a plain value: server messages and engine
/// inputs in (the time passed in), client messages and engine events out
/// (drain [`RealtimeProtocol::take_outgoing`] and
/// [`RealtimeProtocol::take_events`]).
pub struct RealtimeProtocol {
    engine_rate: SampleRate,
    outgoing: Vec<String>,
    events: Vec<SpeechToSpeechEvent>,
    error: Option<ProviderError>,
    session_updated: bool,
    response_active: bool,
    reply: Option<ReplyAudio>,
    agent_pcm: PcmAssembler,
    agent_resampler: Option<Resampler>,
    agent_text: String,
    caller_text: String,
    caller_audio: CallerAudio,
    played_report: Option<Duration>,
    function_names: HashMap<String, String>,
    pending_calls: HashSet<String>,
    response_wanted: bool,
}

impl std::fmt::Debug for RealtimeProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealtimeProtocol")
            .field("engine_rate", &self.engine_rate)
            .field("response_active", &self.response_active)
            .field("reply", &self.reply)
            .field("pending_calls", &self.pending_calls)
            .finish_non_exhaustive()
    }
}

impl RealtimeProtocol {
    /// A protocol for an engine running at `engine_rate`.
    pub fn new(engine_rate: SampleRate) -> Result<Self, ProviderError> {
        let agent_resampler = if engine_rate == MODEL_RATE {
            None
        } else {
            Some(
                Resampler::new(MODEL_RATE, engine_rate, FrameDuration::Ms20)
                    .map_err(|e| ProviderError::BadResponse(format!("resampler: {e}")))?,
            )
        };
        Ok(RealtimeProtocol {
            engine_rate,
            outgoing: Vec::new(),
            events: Vec::new(),
            error: None,
            session_updated: false,
            response_active: false,
            reply: None,
            agent_pcm: PcmAssembler::new(MODEL_RATE),
            agent_resampler,
            agent_text: String::new(),
            caller_text: String::new(),
            caller_audio: CallerAudio::new(engine_rate)?,
            played_report: None,
            function_names: HashMap::new(),
            pending_calls: HashSet::new(),
            response_wanted: false,
        })
    }

    /// Client messages to send, oldest first.
    pub fn take_outgoing(&mut self) -> std::vec::Drain<'_, String> {
        self.outgoing.drain(..)
    }

    /// Engine events produced, oldest first.
    pub fn take_events(&mut self) -> std::vec::Drain<'_, SpeechToSpeechEvent> {
        self.events.drain(..)
    }

    /// The latest `error` the server reported, once.
    pub fn take_error(&mut self) -> Option<ProviderError> {
        self.error.take()
    }

    /// Whether the server confirmed the session configuration.
    pub fn session_updated(&self) -> bool {
        self.session_updated
    }

    /// Whether a reply is being generated.
    pub fn response_active(&self) -> bool {
        self.response_active
    }

    /// Queues a client event.
    pub fn send(&mut self, event: &Value) {
        self.outgoing.push(event.to_string());
    }

    /// A caller frame from the engine: rechunked to 20 ms, resampled to
    /// 24 kHz and queued as `input_audio_buffer.append`.
    pub fn on_caller_audio(&mut self, frame: &PcmFrame) -> Result<(), ProviderError> {
        if frame.rate() != self.caller_audio.rate {
            self.caller_audio = CallerAudio::new(frame.rate())?;
        }
        let audio = &mut self.caller_audio;
        audio.framer.push(frame.samples());
        while audio.framer.pop_into(&mut audio.frame) {
            let at_model_rate = match audio.resampler.as_mut() {
                Some(resampler) => {
                    resampler
                        .process_into(&audio.frame, &mut audio.resampled)
                        .map_err(|e| ProviderError::BadResponse(format!("resampler: {e}")))?;
                    &audio.resampled
                }
                None => &audio.frame,
            };
            audio.bytes.clear();
            at_model_rate.write_le_bytes(&mut audio.bytes);
            let mut message = String::with_capacity(64 + audio.bytes.len() * 4 / 3);
            message.push_str(r#"{"type":"input_audio_buffer.append","audio":""#);
            base64::engine::general_purpose::STANDARD.encode_string(&audio.bytes, &mut message);
            message.push_str(r#""}"#);
            self.outgoing.push(message);
        }
        Ok(())
    }

    /// A tool's result: sent as a `function_call_output` item; once every
    /// call of the reply is answered (and the reply is over) the model is
    /// asked to go on speaking.
    pub fn on_tool_result(&mut self, result: &ToolResultMessage) {
        self.send(&json!({
            "type": "conversation.item.create",
            "item": {
                "type": "function_call_output",
                "call_id": result.tool_call_id,
                "output": result.content,
            },
        }));
        self.pending_calls.remove(&result.tool_call_id);
        if self.pending_calls.is_empty() {
            if self.response_active {
                self.response_wanted = true;
            } else {
                self.send(&json!({"type": "response.create"}));
            }
        }
    }

    /// The engine's report of how much of the current reply it has played.
    pub fn on_played(&mut self, played: Duration) {
        self.played_report = Some(played);
    }

    /// The engine heard the caller barge in: cancel the reply if it is
    /// still generating and truncate it at `played`.
    pub fn on_engine_interrupt(&mut self, played: Duration, now: Instant) {
        self.played_report = Some(played);
        self.interrupt(now, true);
    }

    /// How much of the current reply the caller heard: the engine's report
    /// or real-time playback from the first frame, capped at what was delivered.
    fn heard(&self, reply: &ReplyAudio, now: Instant) -> Duration {
        let estimate = self.played_report.unwrap_or_else(|| {
            reply
                .first_frame_at
                .map_or(Duration::ZERO, |first| now.saturating_duration_since(first))
        });
        estimate.min(reply.delivered())
    }

    fn interrupt(&mut self, now: Instant, cancel_response: bool) {
        let Some(reply) = self.reply.as_ref() else {
            return;
        };
        if reply.truncated {
            return;
        }
        let heard = self.heard(reply, now);
        let still_playing = heard < reply.delivered();
        if !still_playing && !self.response_active {
            // The reply was over before the caller spoke: a normal turn.
            return;
        }
        let truncate = json!({
            "type": "conversation.item.truncate",
            "item_id": reply.item_id,
            "content_index": reply.content_index,
            "audio_end_ms": heard.as_millis() as u64,
        });
        if cancel_response && self.response_active {
            self.send(&json!({"type": "response.cancel"}));
        }
        self.send(&truncate);
        if let Some(reply) = self.reply.as_mut() {
            reply.truncated = true;
        }
        self.agent_pcm.clear();
        self.agent_text.clear();
        self.events.push(SpeechToSpeechEvent::ReplyInterrupted);
    }

    /// One server message (JSON text) at `now`.
    pub fn on_server_message(&mut self, text: &str, now: Instant) -> Result<(), ProviderError> {
        let event: Value = serde_json::from_str(text).map_err(|e| {
            ProviderError::BadResponse(format!("OpenAI Realtime: unreadable event ({e})"))
        })?;
        let kind = event["type"].as_str().unwrap_or_default();
        match kind {
            "session.updated" => self.session_updated = true,
            "input_audio_buffer.speech_started" => {
                // The server cancels its own reply (interrupt_response);
                // the audio it already sent must be cut at what was heard.
                self.interrupt(now, false);
            }
            "response.created" => {
                self.response_active = true;
                self.agent_text.clear();
            }
            "response.output_item.added" => {
                let item = &event["item"];
                if item["type"] == "function_call"
                    && let (Some(call_id), Some(name)) =
                        (item["call_id"].as_str(), item["name"].as_str())
                {
                    self.function_names
                        .insert(call_id.to_owned(), name.to_owned());
                }
            }
            "response.audio.delta" => self.on_audio_delta(&event, now)?,
            "response.audio.done" if self.reply.as_ref().is_some_and(|r| !r.truncated) => {
                if let Some(tail) = self.agent_pcm.flush() {
                    self.deliver(tail, now)?;
                }
            }
            "response.audio_transcript.delta" if !self.is_truncated(&event) => {
                self.agent_text
                    .push_str(event["delta"].as_str().unwrap_or_default());
                self.events.push(SpeechToSpeechEvent::Transcript {
                    role: Role::Agent,
                    text: self.agent_text.clone(),
                    is_final: false,
                });
            }
            "response.audio_transcript.done" if !self.is_truncated(&event) => {
                self.agent_text.clear();
                self.events.push(SpeechToSpeechEvent::Transcript {
                    role: Role::Agent,
                    text: event["transcript"].as_str().unwrap_or_default().to_owned(),
                    is_final: true,
                });
            }
            "conversation.item.input_audio_transcription.delta" => {
                self.caller_text
                    .push_str(event["delta"].as_str().unwrap_or_default());
                self.events.push(SpeechToSpeechEvent::Transcript {
                    role: Role::User,
                    text: self.caller_text.clone(),
                    is_final: false,
                });
            }
            "conversation.item.input_audio_transcription.completed" => {
                self.caller_text.clear();
                self.events.push(SpeechToSpeechEvent::Transcript {
                    role: Role::User,
                    text: event["transcript"]
                        .as_str()
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                    is_final: true,
                });
            }
            "response.function_call_arguments.done" => {
                let call_id = event["call_id"].as_str().unwrap_or_default().to_owned();
                let name = event["name"]
                    .as_str()
                    .map(str::to_owned)
                    .or_else(|| self.function_names.get(&call_id).cloned())
                    .unwrap_or_default();
                if call_id.is_empty() || name.is_empty() {
                    return Err(ProviderError::BadResponse(
                        "OpenAI Realtime: function call without call_id or name".into(),
                    ));
                }
                self.pending_calls.insert(call_id.clone());
                self.events
                    .push(SpeechToSpeechEvent::ToolCall(ToolCallRequest {
                        id: call_id,
                        name,
                        arguments_json: event["arguments"].as_str().unwrap_or("{}").to_owned(),
                    }));
            }
            "response.done" => {
                self.response_active = false;
                let response = &event["response"];
                if response["status"] == "failed" {
                    let detail = &response["status_details"]["error"];
                    self.error = Some(ProviderError::BadResponse(format!(
                        "OpenAI Realtime reply failed: {} {}",
                        detail["code"].as_str().unwrap_or_default(),
                        detail["message"].as_str().unwrap_or_default()
                    )));
                }
                if self.response_wanted && self.pending_calls.is_empty() {
                    self.response_wanted = false;
                    self.send(&json!({"type": "response.create"}));
                }
            }
            "error" => {
                let error = &event["error"];
                let code = error["code"]
                    .as_str()
                    .or_else(|| error["type"].as_str())
                    .unwrap_or("unknown");
                self.error = Some(ProviderError::BadResponse(format!(
                    "OpenAI Realtime error {code}: {}",
                    error["message"].as_str().unwrap_or_default()
                )));
            }
            _ => {}
        }
        Ok(())
    }

    fn is_truncated(&self, event: &Value) -> bool {
        let item_id = event["item_id"].as_str();
        self.reply
            .as_ref()
            .is_some_and(|r| r.truncated && Some(r.item_id.as_str()) == item_id)
    }

    fn on_audio_delta(&mut self, event: &Value, now: Instant) -> Result<(), ProviderError> {
        let item_id = event["item_id"].as_str().unwrap_or_default();
        let new_item = self.reply.as_ref().is_none_or(|r| r.item_id != item_id);
        if new_item {
            self.reply = Some(ReplyAudio {
                item_id: item_id.to_owned(),
                content_index: event["content_index"].as_u64().unwrap_or(0),
                delivered_samples: 0,
                first_frame_at: None,
                truncated: false,
            });
            self.played_report = None;
            self.agent_pcm = PcmAssembler::new(MODEL_RATE);
            if let Some(resampler) = self.agent_resampler.as_mut() {
                resampler.reset();
            }
        }
        if self.reply.as_ref().is_some_and(|r| r.truncated) {
            return Ok(());
        }
        self.agent_pcm
            .push_base64(Vendor::OpenAi, event["delta"].as_str().unwrap_or_default())?;
        while let Some(frame) = self.agent_pcm.pop() {
            self.deliver(frame, now)?;
        }
        Ok(())
    }

    /// One 20 ms frame at 24 kHz to the engine, at the engine's rate.
    fn deliver(&mut self, frame: PcmFrame, now: Instant) -> Result<(), ProviderError> {
        if let Some(reply) = self.reply.as_mut() {
            reply.delivered_samples += frame.len() as u64;
            reply.first_frame_at.get_or_insert(now);
        }
        let out = match self.agent_resampler.as_mut() {
            Some(resampler) => {
                let mut out = PcmFrame::with_capacity(self.engine_rate, FrameDuration::Ms20);
                resampler
                    .process_into(&frame, &mut out)
                    .map_err(|e| ProviderError::BadResponse(format!("resampler: {e}")))?;
                out
            }
            None => frame,
        };
        self.events.push(SpeechToSpeechEvent::Audio(out));
        Ok(())
    }
}

// ------------------------------------------------------------ session task

/// What the engine can tell an open session beyond audio and tool results.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ControlCommand {
    Interrupt(Duration),
    Played(Duration),
}

/// How the session stands, for [`RealtimeControl`].
#[derive(Debug, Clone, Default, PartialEq)]
struct SessionStatus {
    last_error: Option<ProviderError>,
    ended: bool,
}

/// Control of an open Realtime session: barge-in from the engine, playback
/// position, and the vendor's errors.
#[derive(Debug)]
pub struct RealtimeControl {
    commands: mpsc::UnboundedSender<ControlCommand>,
    status: watch::Receiver<SessionStatus>,
}

impl RealtimeControl {
    /// The engine heard the caller barge in after `played` of the current
    /// reply: the reply is cancelled and truncated there.
    pub fn interrupt(&self, played: Duration) -> Result<(), ProviderError> {
        self.commands
            .send(ControlCommand::Interrupt(played))
            .map_err(|_| ProviderError::Closed)
    }

    /// How much of the current reply the engine has played (makes the
    /// truncation on a server-detected barge-in exact).
    pub fn report_played(&self, played: Duration) -> Result<(), ProviderError> {
        self.commands
            .send(ControlCommand::Played(played))
            .map_err(|_| ProviderError::Closed)
    }

    /// The latest error the vendor reported (most are recoverable and the
    /// session stays open), or why the session ended.
    pub fn last_error(&self) -> Option<ProviderError> {
        self.status.borrow().last_error.clone()
    }

    /// Waits until the session ends; returns why, if it failed.
    pub async fn ended(&mut self) -> Option<ProviderError> {
        let _ = self.status.wait_for(|s| s.ended).await;
        self.status.borrow().last_error.clone()
    }
}

/// An open session: the engine-facing channels and its control.
#[derive(Debug)]
pub struct RealtimeSession {
    /// Audio, tool results and events, as the provider trait has them.
    pub session: SpeechToSpeechSession,
    /// Barge-in, playback position, errors.
    pub control: RealtimeControl,
}

/// The task's ends of the session channels.
struct TaskEnds {
    audio: mpsc::Receiver<PcmFrame>,
    tool_results: mpsc::UnboundedReceiver<ToolResultMessage>,
    events: mpsc::UnboundedSender<SpeechToSpeechEvent>,
    commands: mpsc::UnboundedReceiver<ControlCommand>,
    status: watch::Sender<SessionStatus>,
}

/// OpenAI Realtime as a [`SpeechToSpeechProvider`].
#[derive(Debug, Clone)]
pub struct OpenAiRealtime {
    config: Arc<OpenAiRealtimeConfig>,
}

impl OpenAiRealtime {
    /// An adapter with this configuration.
    pub fn new(config: OpenAiRealtimeConfig) -> Self {
        OpenAiRealtime {
            config: Arc::new(config),
        }
    }

    fn channels(&self) -> (RealtimeSession, TaskEnds) {
        let (audio_tx, audio_rx) = mpsc::channel(self.config.audio_queue.max(1));
        let (tools_tx, tools_rx) = mpsc::unbounded_channel();
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let (status_tx, status_rx) = watch::channel(SessionStatus::default());
        let session = RealtimeSession {
            session: SpeechToSpeechSession {
                audio_in: audio_tx,
                tool_results: tools_tx,
                events: events_rx,
            },
            control: RealtimeControl {
                commands: commands_tx,
                status: status_rx,
            },
        };
        let ends = TaskEnds {
            audio: audio_rx,
            tool_results: tools_rx,
            events: events_tx,
            commands: commands_rx,
            status: status_tx,
        };
        (session, ends)
    }

    /// Opens a session and waits until the server accepted its
    /// configuration: a refused key, an unreachable server or a rejected
    /// `session.update` is an error here.
    pub async fn connect(
        &self,
        instructions: &str,
        tools: &[ToolSchema],
        cancel: CancellationToken,
    ) -> Result<RealtimeSession, ProviderError> {
        let (session, ends) = self.channels();
        let mut protocol = RealtimeProtocol::new(self.config.engine_rate)?;
        let socket = handshake(&self.config, instructions, tools, &mut protocol).await?;
        let config = Arc::clone(&self.config);
        tokio::spawn(async move {
            run(socket, protocol, ends, cancel, config).await;
        });
        Ok(session)
    }
}

impl SpeechToSpeechProvider for OpenAiRealtime {
    /// Starts connecting in the background; a failure (refused key, ...)
    /// ends the event stream at once. [`OpenAiRealtime::connect`] reports it.
    fn open(
        &self,
        instructions: &str,
        tools: &[ToolSchema],
        cancel: CancellationToken,
    ) -> Result<SpeechToSpeechSession, ProviderError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ProviderError::Unavailable("OpenAI Realtime needs a tokio runtime".into())
        })?;
        let (session, ends) = self.channels();
        let mut protocol = RealtimeProtocol::new(self.config.engine_rate)?;
        let config = Arc::clone(&self.config);
        let instructions = instructions.to_owned();
        let tools = tools.to_vec();
        runtime.spawn(async move {
            match handshake(&config, &instructions, &tools, &mut protocol).await {
                Ok(socket) => run(socket, protocol, ends, cancel, config).await,
                Err(err) => ends.status.send_modify(|s| {
                    s.last_error = Some(err);
                    s.ended = true;
                }),
            }
        });
        Ok(session.session)
    }
}

/// Connects, configures the session and waits for `session.updated`.
async fn handshake(
    config: &OpenAiRealtimeConfig,
    instructions: &str,
    tools: &[ToolSchema],
    protocol: &mut RealtimeProtocol,
) -> Result<Socket, ProviderError> {
    let mut request = ws::request(Vendor::OpenAi, &config.url())?;
    let headers = request.headers_mut();
    headers.insert(
        "Authorization",
        ws::header(Vendor::OpenAi, &format!("Bearer {}", config.api_key))?,
    );
    headers.insert("OpenAI-Beta", ws::header(Vendor::OpenAi, "realtime=v1")?);
    let deadline = Instant::now() + config.connect_timeout;
    let mut socket = ws::connect(Vendor::OpenAi, request, config.connect_timeout).await?;
    socket
        .send(Message::text(
            config.session_update(instructions, tools).to_string(),
        ))
        .await
        .map_err(|e| ws::socket_error(Vendor::OpenAi, &e))?;
    while !protocol.session_updated() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(text) = ws::next_text(Vendor::OpenAi, &mut socket, left).await? else {
            return Err(ProviderError::Unavailable(
                "OpenAI Realtime closed the socket during setup".into(),
            ));
        };
        protocol.on_server_message(&text, Instant::now())?;
        if let Some(err) = protocol.take_error() {
            return Err(err);
        }
    }
    Ok(socket)
}

/// Moves bytes between the socket, the engine channels and the protocol
/// until the session ends; publishes why it ended.
async fn run(
    socket: Socket,
    protocol: RealtimeProtocol,
    mut ends: TaskEnds,
    cancel: CancellationToken,
    config: Arc<OpenAiRealtimeConfig>,
) {
    let outcome = pump(socket, protocol, &mut ends, cancel, &config).await;
    ends.status.send_modify(|s| {
        if outcome.is_some() {
            s.last_error = outcome;
        }
        s.ended = true;
    });
}

/// The loop of [`run`]; `Some(error)` if the session failed.
async fn pump(
    mut socket: Socket,
    mut protocol: RealtimeProtocol,
    ends: &mut TaskEnds,
    cancel: CancellationToken,
    config: &OpenAiRealtimeConfig,
) -> Option<ProviderError> {
    let mut tools_open = true;
    let mut commands_open = true;
    // Caller audio flows all the time: the deadline counts from the
    // server's last message, not from the loop's last turn.
    let mut last_server_message = Instant::now();
    loop {
        let outgoing: Vec<String> = protocol.take_outgoing().collect();
        for text in outgoing {
            if let Err(err) = socket.send(Message::text(text)).await {
                return Some(ws::socket_error(Vendor::OpenAi, &err));
            }
        }
        for event in protocol.take_events() {
            if ends.events.send(event).is_err() {
                // The engine dropped the session.
                let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
                return None;
            }
        }
        if let Some(err) = protocol.take_error() {
            ends.status.send_modify(|s| s.last_error = Some(err));
        }
        let reply_deadline = protocol.response_active();
        // Biased, engine commands before server messages: a playback
        // report made before a barge-in arrives is applied before it.
        tokio::select! {
            biased;
            () = cancel.cancelled() => {
                let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
                return None;
            }
            command = ends.commands.recv(), if commands_open => match command {
                Some(ControlCommand::Interrupt(played)) => {
                    protocol.on_engine_interrupt(played, Instant::now());
                }
                Some(ControlCommand::Played(played)) => protocol.on_played(played),
                None => commands_open = false,
            },
            message = socket.next() => {
                let text = match message {
                    None => return Some(closed_error(ends)),
                    Some(Err(err)) => return Some(ws::socket_error(Vendor::OpenAi, &err)),
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(frame))) => {
                        return Some(match ws::close_outcome(Vendor::OpenAi, frame) {
                            Err(err) => err,
                            Ok(_) => closed_error(ends),
                        });
                    }
                    Some(Ok(_)) => continue,
                };
                last_server_message = Instant::now();
                if let Err(err) = protocol.on_server_message(text.as_str(), last_server_message) {
                    return Some(err);
                }
            }
            frame = ends.audio.recv() => {
                let Some(frame) = frame else {
                    let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
                    return None;
                };
                if let Err(err) = protocol.on_caller_audio(&frame) {
                    return Some(err);
                }
            }
            result = ends.tool_results.recv(), if tools_open => match result {
                Some(result) => protocol.on_tool_result(&result),
                None => tools_open = false,
            },
            () = tokio::time::sleep_until(last_server_message + config.reply_idle_timeout), if reply_deadline => {
                return Some(ProviderError::Unavailable(format!(
                    "OpenAI Realtime: no event for {} ms during a reply",
                    config.reply_idle_timeout.as_millis()
                )));
            }
        }
    }
}

/// The server closed the socket: its last error if it gave one.
fn closed_error(ends: &TaskEnds) -> ProviderError {
    ends.status
        .borrow()
        .last_error
        .clone()
        .unwrap_or_else(|| ProviderError::Unavailable("OpenAI Realtime closed the socket".into()))
}
