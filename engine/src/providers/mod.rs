//! The model providers behind small traits: streaming speech recognition,
//! a chat LLM with tool calling, text-to-speech, and speech-to-speech.
//!
//! Every provider is cancellable: streams stop when dropped (so dropping an
//! in-flight LLM or TTS stream cancels it at once), and the long-lived
//! sessions (ASR, speech-to-speech) also take a [`CancellationToken`].
//! [`scripted`] holds deterministic implementations driven by tokio time, for
//! tests on virtual time.

pub mod anthropic;
pub mod cartesia;
pub mod deepgram;
pub mod elevenlabs;
pub mod fallback;
mod http;
pub mod llama;
pub mod local_whisper;
pub mod openai_chat;
pub mod openai_realtime;
pub mod piper;
pub mod scripted;
pub mod structured;
mod ws;

use std::sync::Arc;

use crossbeam_queue::ArrayQueue;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::codecs::{PcmFrame, SampleRate};

/// Why a provider failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider could not be reached or dropped the connection.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// The provider answered something we could not use.
    #[error("bad provider response: {0}")]
    BadResponse(String),
    /// The session was closed (cancelled or ended).
    #[error("provider session closed")]
    Closed,
    /// The request cannot be served as asked (a schema outside the supported
    /// subset, a prompt too long for the model); retrying will not help.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

/// A tool call the model asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallRequest {
    /// The model's id for this call; the result refers to it.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments, as the JSON text the model produced.
    pub arguments_json: String,
}

/// One message of the chat history sent to the LLM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum ChatMessage {
    /// Instructions for the model.
    System {
        /// The system prompt.
        content: String,
    },
    /// What the caller said.
    User {
        /// The caller's words.
        content: String,
    },
    /// What the agent said (only what the caller heard) and the tools it called.
    Assistant {
        /// The spoken text.
        content: String,
        /// The tools the model called in this message.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<ToolCallRequest>,
    },
    /// A tool's result, answering one of the assistant's tool calls.
    Tool {
        /// The id of the call this answers.
        tool_call_id: String,
        /// The tool's name.
        name: String,
        /// The result (or error envelope) as JSON text.
        content: String,
    },
}

/// A tool as the model sees it: name, description, JSON schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolSchema {
    /// The tool's name.
    pub name: String,
    /// What the tool does, for the model.
    pub description: String,
    /// The JSON schema of the arguments.
    pub parameters: serde_json::Value,
}

/// One LLM request: the history and the tools the model may call.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LlmRequest {
    /// The chat history, oldest first.
    pub messages: Vec<ChatMessage>,
    /// The tools offered (empty: the model must answer in words).
    pub tools: Vec<ToolSchema>,
}

/// What a streaming LLM produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LlmEvent {
    /// A piece of the spoken reply.
    Token(String),
    /// A complete tool call.
    ToolCall(ToolCallRequest),
    /// The reply is complete.
    Done,
}

/// A chat LLM with streaming output and tool calling.
pub trait LlmProvider: Send + Sync {
    /// Starts a completion. The stream ends after [`LlmEvent::Done`] or an
    /// error; dropping it cancels the request.
    fn stream_chat(
        &self,
        request: LlmRequest,
    ) -> BoxStream<'static, Result<LlmEvent, ProviderError>>;
}

/// Text-to-speech, one clause at a time.
pub trait TtsProvider: Send + Sync {
    /// The rate of the frames this voice produces (16 or 24 kHz typically).
    fn sample_rate(&self) -> SampleRate;

    /// Speaks `text`. Frames carry their position within this clause's audio;
    /// dropping the stream cancels the synthesis.
    fn synthesize(&self, text: &str) -> BoxStream<'static, Result<PcmFrame, ProviderError>>;
}

/// What a streaming recognizer reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AsrEvent {
    /// The recognizer began an utterance and will report exactly one
    /// [`AsrEvent::Final`] for it, empty if it held no words. Optional: a
    /// recognizer that sends it lets the turn machine wait for the words of
    /// speech it has not finished decoding (Whisper decodes a pause-split
    /// utterance a second after it ends) instead of committing the turn
    /// without them. Recognizers whose finals are not per utterance
    /// (Deepgram's are per segment) do not send it.
    UtteranceStarted,
    /// A hypothesis that may still change.
    Interim {
        /// The text so far.
        text: String,
    },
    /// The final text of an utterance.
    Final {
        /// The recognized text.
        text: String,
    },
    /// The recognizer failed for good (the service died, the connection
    /// dropped and could not be re-established): nothing more will be
    /// heard, so the call ends with a clear error instead of hanging in
    /// silence. The last event of a session.
    Failed {
        /// What went wrong.
        error: String,
    },
}

/// A 16 kHz frame lent to a recognizer. It goes back to its session's pool
/// when dropped, so feeding a recognizer every 20 ms allocates nothing once
/// the pool holds as many frames as the queue (the media hot path calls
/// [`AsrSession::push_frame`] on every tick).
pub struct PooledFrame {
    frame: PcmFrame,
    pool: Arc<ArrayQueue<PcmFrame>>,
}

impl std::ops::Deref for PooledFrame {
    type Target = PcmFrame;

    fn deref(&self) -> &PcmFrame {
        &self.frame
    }
}

impl std::fmt::Debug for PooledFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl Drop for PooledFrame {
    fn drop(&mut self) {
        // An empty Vec does not allocate.
        let empty = PcmFrame::new(self.frame.rate(), self.frame.start(), Vec::new());
        // A full pool (more frames in flight than expected) lets it go.
        let _ = self.pool.push(std::mem::replace(&mut self.frame, empty));
    }
}

/// An open streaming recognition session.
///
/// Audio goes in through [`AsrSession::push_frame`], which never waits nor
/// allocates (the media hot path calls it); events come out of
/// [`AsrSession::next_event`]. Dropping the session, or cancelling its
/// token, ends it.
#[derive(Debug)]
pub struct AsrSession {
    audio: mpsc::Sender<PooledFrame>,
    pool: Arc<ArrayQueue<PcmFrame>>,
    events: mpsc::UnboundedReceiver<AsrEvent>,
}

impl AsrSession {
    /// A session from its two channel ends (for provider implementations).
    pub fn from_channels(
        audio: mpsc::Sender<PooledFrame>,
        events: mpsc::UnboundedReceiver<AsrEvent>,
    ) -> Self {
        // Every frame the queue can hold, plus the one the provider reads.
        let pool = Arc::new(ArrayQueue::new(audio.max_capacity() + 2));
        AsrSession {
            audio,
            pool,
            events,
        }
    }

    /// Hands a copy of a 16 kHz frame to the recognizer without waiting. A
    /// full queue means the recognizer fell behind; the frame is dropped and
    /// reported.
    pub fn push_frame(&self, frame: &PcmFrame) -> Result<(), ProviderError> {
        let mut copy = self.pool.pop().unwrap_or_else(|| {
            PcmFrame::with_capacity(frame.rate(), crate::codecs::FrameDuration::Ms20)
        });
        copy.fill_from(frame.rate(), frame.start(), frame.samples());
        let lent = PooledFrame {
            frame: copy,
            pool: Arc::clone(&self.pool),
        };
        self.audio.try_send(lent).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                ProviderError::Unavailable("recognizer queue full".into())
            }
            mpsc::error::TrySendError::Closed(_) => ProviderError::Closed,
        })
    }

    /// The next recognition event if one is ready, without waiting (for
    /// the media worker's tick).
    pub fn try_next_event(&mut self) -> Option<AsrEvent> {
        self.events.try_recv().ok()
    }

    /// The next recognition event, or `None` once the session ended.
    pub async fn next_event(&mut self) -> Option<AsrEvent> {
        self.events.recv().await
    }
}

/// Streaming speech recognition.
pub trait AsrProvider: Send + Sync {
    /// Opens a session in the provider's configured language; it ends when
    /// `cancel` fires or the session is dropped.
    fn open(&self, cancel: CancellationToken) -> Result<AsrSession, ProviderError>;

    /// Opens a session that recognizes `language`, a BCP-47 tag (`en`,
    /// `es-MX`): the call's language. The default serves English only and
    /// refuses any other language with [`ProviderError::InvalidRequest`].
    fn open_in(
        &self,
        language: &str,
        cancel: CancellationToken,
    ) -> Result<AsrSession, ProviderError> {
        if primary_language(language) == "en" {
            self.open(cancel)
        } else {
            Err(ProviderError::InvalidRequest(format!(
                "this recognizer only knows English, not {language:?}"
            )))
        }
    }
}

/// The primary subtag of a BCP-47 tag, lower-cased (`es-MX` -> `es`).
pub fn primary_language(tag: &str) -> String {
    tag.split(['-', '_'])
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// What a speech-to-speech model produces.
#[derive(Debug, Clone, PartialEq)]
pub enum SpeechToSpeechEvent {
    /// Agent audio to play.
    Audio(PcmFrame),
    /// A transcript of either side.
    Transcript {
        /// Who spoke.
        role: crate::events::Role,
        /// The text.
        text: String,
        /// Whether this text is final.
        is_final: bool,
    },
    /// The model wants a tool run; answer with [`SpeechToSpeechSession::tool_results`].
    ToolCall(ToolCallRequest),
    /// The model stopped its current reply (it heard the caller barge in).
    ReplyInterrupted,
}

/// A tool result sent back to a speech-to-speech model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolResultMessage {
    /// The id of the call this answers.
    pub tool_call_id: String,
    /// The result as JSON text.
    pub content: String,
}

/// An open speech-to-speech session: caller audio in; agent audio,
/// transcripts and tool calls out.
#[derive(Debug)]
pub struct SpeechToSpeechSession {
    /// Caller audio (use `try_send` on the hot path).
    pub audio_in: mpsc::Sender<PcmFrame>,
    /// Tool results for the model.
    pub tool_results: mpsc::UnboundedSender<ToolResultMessage>,
    /// Everything the model produces.
    pub events: mpsc::UnboundedReceiver<SpeechToSpeechEvent>,
}

/// A speech-to-speech ("realtime") model.
pub trait SpeechToSpeechProvider: Send + Sync {
    /// Opens a session with the system prompt and tools; it ends when
    /// `cancel` fires or the session is dropped.
    fn open(
        &self,
        instructions: &str,
        tools: &[ToolSchema],
        cancel: CancellationToken,
    ) -> Result<SpeechToSpeechSession, ProviderError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codecs::{FrameDuration, MediaTime};

    #[test]
    fn feeding_a_recognizer_reuses_a_few_buffers() {
        let (audio_tx, mut audio_rx) = mpsc::channel::<PooledFrame>(4);
        let (_events_tx, events_rx) = mpsc::unbounded_channel();
        let session = AsrSession::from_channels(audio_tx, events_rx);
        let frame = PcmFrame::silence(SampleRate::Hz16000, MediaTime::ZERO, FrameDuration::Ms20);
        let mut buffers = std::collections::HashSet::new();
        for _ in 0..500 {
            session.push_frame(&frame).expect("queued");
            let lent = audio_rx.try_recv().expect("a frame");
            assert_eq!(lent.samples(), frame.samples());
            buffers.insert(lent.samples().as_ptr() as usize);
        }
        // After the first frame every one is a recycled buffer.
        assert_eq!(buffers.len(), 1, "{} buffers for 500 frames", buffers.len());
        // A recognizer that falls behind gets a clear error, not a hidden wait.
        for _ in 0..4 {
            session.push_frame(&frame).expect("room");
        }
        assert!(matches!(
            session.push_frame(&frame),
            Err(ProviderError::Unavailable(_))
        ));
    }
}
