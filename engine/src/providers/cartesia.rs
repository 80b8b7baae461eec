//! Cartesia text-to-speech over its WebSocket (`/tts/websocket`).
//!
//! Each [`TtsProvider::synthesize`] call opens a socket (the key and API
//! version in the query, as the vendor documents for WebSocket clients),
//! sends one generation request with a fresh `context_id` and raw
//! `pcm_s16le` output, and turns the base64 `chunk` answers into 20 ms
//! frames until `done`. Dropping the stream before `done` sends
//! `{"context_id": .., "cancel": true}` and closes the socket.
//!
//! Not done here: Cartesia multiplexes many contexts on one socket and can
//! continue a context clause by clause (`"continue": true`), which would
//! keep one warm socket per call and the prosody of a whole reply. The
//! clause-at-a-time [`TtsProvider`] trait does not express a reply yet.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::ws::{self, PcmAssembler, Socket, Vendor};
use super::{ProviderError, TtsProvider};
use crate::codecs::{PcmFrame, SampleRate};

/// The endpoint used unless a test points the adapter elsewhere.
pub const DEFAULT_BASE_URL: &str = "wss://api.cartesia.ai";

/// The environment variable holding the API key.
pub const API_KEY_ENV: &str = "CARTESIA_API_KEY";

/// The API version this adapter was written against (`cartesia_version`).
pub const API_VERSION: &str = "2024-11-13";

/// Everything the Cartesia adapter needs.
#[derive(Clone, PartialEq)]
pub struct CartesiaConfig {
    /// The API key (sent as the `api_key` query parameter).
    pub api_key: String,
    /// The agent's voice (`voice: {"mode": "id", "id": ..}`).
    pub voice_id: String,
    /// The model, e.g. `sonic-2`.
    pub model_id: String,
    /// The agent's language (`en`, `es`, ...).
    pub language: String,
    /// Output rate: 8, 16, 24 or 48 kHz raw PCM.
    pub sample_rate: SampleRate,
    /// `wss://api.cartesia.ai` unless a test overrides it.
    pub base_url: String,
    /// The `cartesia_version` query parameter.
    pub api_version: String,
    /// Longest wait for the socket to open.
    pub connect_timeout: Duration,
    /// Longest wait between two messages once the request is sent.
    pub idle_timeout: Duration,
}

impl std::fmt::Debug for CartesiaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("CartesiaConfig")
            .field("voice_id", &self.voice_id)
            .field("model_id", &self.model_id)
            .field("language", &self.language)
            .field("sample_rate", &self.sample_rate)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl CartesiaConfig {
    /// A configuration for `voice_id` speaking `language` (`en`, `es`, ...),
    /// with `sonic-2` at 16 kHz.
    pub fn new(api_key: &str, voice_id: &str, language: &str) -> Self {
        CartesiaConfig {
            api_key: api_key.to_owned(),
            voice_id: voice_id.to_owned(),
            model_id: "sonic-2".to_owned(),
            language: language.to_owned(),
            sample_rate: SampleRate::Hz16000,
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_version: API_VERSION.to_owned(),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
        }
    }

    /// [`CartesiaConfig::new`] with the key from `CARTESIA_API_KEY`.
    pub fn from_env(voice_id: &str, language: &str) -> Result<Self, ProviderError> {
        Ok(Self::new(
            &ws::api_key_from_env(API_KEY_ENV)?,
            voice_id,
            language,
        ))
    }

    /// The socket's URL (key and version in the query).
    pub fn url(&self) -> String {
        format!(
            "{}/tts/websocket?api_key={}&cartesia_version={}",
            self.base_url.trim_end_matches('/'),
            ws::encode_query(&self.api_key),
            ws::encode_query(&self.api_version)
        )
    }

    /// The generation request for one clause.
    pub fn request(&self, context_id: &str, transcript: &str) -> serde_json::Value {
        json!({
            "model_id": self.model_id,
            "transcript": transcript,
            "voice": {"mode": "id", "id": self.voice_id},
            "language": self.language,
            "context_id": context_id,
            "output_format": {
                "container": "raw",
                "encoding": "pcm_s16le",
                "sample_rate": self.sample_rate.hz(),
            },
            "continue": false,
        })
    }
}

/// Cartesia streaming TTS, one socket and one context per clause.
#[derive(Debug, Clone)]
pub struct CartesiaTts {
    config: Arc<CartesiaConfig>,
    next_context: Arc<AtomicU64>,
}

impl CartesiaTts {
    /// An adapter with this configuration.
    pub fn new(config: CartesiaConfig) -> Self {
        CartesiaTts {
            config: Arc::new(config),
            next_context: Arc::new(AtomicU64::new(1)),
        }
    }
}

/// One answer on the socket.
#[derive(Debug, Deserialize)]
struct ServerMessage {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    context_id: Option<String>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(default)]
    status_code: Option<u16>,
}

enum Phase {
    Connect,
    Streaming,
    Done,
}

struct Synthesis {
    config: Arc<CartesiaConfig>,
    context_id: String,
    text: String,
    phase: Phase,
    socket: Option<Box<Socket>>,
    pcm: PcmAssembler,
}

impl Synthesis {
    async fn next(&mut self) -> Option<Result<PcmFrame, ProviderError>> {
        loop {
            if let Some(frame) = self.pcm.pop() {
                return Some(Ok(frame));
            }
            match self.phase {
                Phase::Connect => match self.open().await {
                    Ok(socket) => {
                        self.socket = Some(Box::new(socket));
                        self.phase = Phase::Streaming;
                    }
                    Err(err) => return self.fail(err),
                },
                Phase::Streaming => {
                    let Some(socket) = self.socket.as_mut() else {
                        return self.fail(ProviderError::Closed);
                    };
                    let text =
                        match ws::next_text(Vendor::Cartesia, socket, self.config.idle_timeout)
                            .await
                        {
                            Ok(Some(text)) => text,
                            Ok(None) => {
                                self.socket = None;
                                return self.fail(ProviderError::Unavailable(
                                    "Cartesia closed the socket before `done`".into(),
                                ));
                            }
                            Err(err) => {
                                self.socket = None;
                                return self.fail(err);
                            }
                        };
                    if let Err(err) = self.on_message(&text) {
                        return self.fail(err);
                    }
                }
                Phase::Done => return self.pcm.flush().map(Ok),
            }
        }
    }

    async fn open(&self) -> Result<Socket, ProviderError> {
        let request = ws::request(Vendor::Cartesia, &self.config.url())?;
        let mut socket =
            ws::connect(Vendor::Cartesia, request, self.config.connect_timeout).await?;
        let body = self.config.request(&self.context_id, self.text.trim());
        socket
            .send(Message::text(body.to_string()))
            .await
            .map_err(|e| ws::socket_error(Vendor::Cartesia, &e))?;
        Ok(socket)
    }

    fn on_message(&mut self, text: &str) -> Result<(), ProviderError> {
        let message: ServerMessage = serde_json::from_str(text).map_err(|e| {
            ProviderError::BadResponse(format!("Cartesia: unreadable message ({e})"))
        })?;
        if message
            .context_id
            .as_deref()
            .is_some_and(|id| id != self.context_id)
        {
            // Another context's message (none expected on our own socket).
            return Ok(());
        }
        match message.kind.as_str() {
            "chunk" => {
                if let Some(data) = message.data.as_deref() {
                    self.pcm.push_base64(Vendor::Cartesia, data)?;
                }
                if message.done {
                    self.finish();
                }
            }
            "done" => self.finish(),
            "error" => {
                let detail = match message.error {
                    Some(serde_json::Value::String(text)) => text,
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                return Err(ProviderError::BadResponse(format!(
                    "Cartesia error (status {}): {detail}",
                    message.status_code.unwrap_or_default()
                )));
            }
            // Word timestamps, phoneme timestamps, flush acknowledgements.
            _ => {}
        }
        Ok(())
    }

    fn finish(&mut self) {
        self.phase = Phase::Done;
        // Nothing left to cancel; the socket closes when dropped.
        self.socket = None;
    }

    fn fail(&mut self, err: ProviderError) -> Option<Result<PcmFrame, ProviderError>> {
        self.phase = Phase::Done;
        // The context failed on the vendor's side: nothing to cancel.
        self.socket = None;
        self.pcm.clear();
        Some(Err(err))
    }
}

impl Drop for Synthesis {
    fn drop(&mut self) {
        // Dropped while the vendor is still generating: tell it to stop
        // (billing and server load), then close. Needs a runtime to send;
        // without one the socket just drops, which also ends the context.
        let Some(mut socket) = self.socket.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let cancel = json!({"context_id": self.context_id, "cancel": true}).to_string();
        runtime.spawn(async move {
            let polite = async {
                let _ = socket.send(Message::text(cancel)).await;
                let _ = socket.as_mut().close(None).await;
            };
            let _ = tokio::time::timeout(Duration::from_secs(2), polite).await;
        });
    }
}

impl TtsProvider for CartesiaTts {
    fn sample_rate(&self) -> SampleRate {
        self.config.sample_rate
    }

    fn synthesize(&self, text: &str) -> BoxStream<'static, Result<PcmFrame, ProviderError>> {
        let context_id = format!(
            "callingbox-{}-{}",
            std::process::id(),
            self.next_context.fetch_add(1, Ordering::Relaxed)
        );
        let synthesis = Synthesis {
            config: Arc::clone(&self.config),
            context_id,
            text: text.to_owned(),
            phase: Phase::Connect,
            socket: None,
            pcm: PcmAssembler::new(self.config.sample_rate),
        };
        futures::stream::unfold(synthesis, |mut synthesis| async move {
            let item = synthesis.next().await?;
            Some((item, synthesis))
        })
        .boxed()
    }
}
