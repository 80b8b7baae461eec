//! ElevenLabs text-to-speech over its WebSocket input-streaming endpoint
//! (`/v1/text-to-speech/{voice_id}/stream-input`).
//!
//! Each [`TtsProvider::synthesize`] call opens one socket, sends the
//! opening message (a single space with the voice settings), the clause
//! (ending in a space, with `flush`), then the empty end-of-input text, and
//! turns the base64 PCM16LE audio of the answers into 20 ms frames. Dropping
//! the stream drops the socket, which stops the generation.
//!
//! Not done here: the endpoint is built for one socket per *reply* (clauses
//! sent as the LLM produces them, audio coming back continuously), which
//! would save a TLS + WebSocket handshake per clause (roughly 100-300 ms
//! of time to first byte). The [`TtsProvider`] trait speaks one clause at a
//! time, so that needs a reply-level trait first.

use std::sync::Arc;
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
pub const DEFAULT_BASE_URL: &str = "wss://api.elevenlabs.io";

/// The environment variable holding the API key.
pub const API_KEY_ENV: &str = "ELEVENLABS_API_KEY";

/// How the voice sounds (the `voice_settings` of the opening message).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VoiceSettings {
    /// 0..1: higher is steadier, lower is more expressive.
    pub stability: f32,
    /// 0..1: how closely to follow the original voice.
    pub similarity_boost: f32,
    /// Speaking rate, 1.0 is normal (0.7..1.2 accepted).
    pub speed: f32,
}

impl Default for VoiceSettings {
    fn default() -> Self {
        VoiceSettings {
            stability: 0.5,
            similarity_boost: 0.8,
            speed: 1.0,
        }
    }
}

/// Everything the ElevenLabs adapter needs.
#[derive(Clone, PartialEq)]
pub struct ElevenLabsConfig {
    /// The API key (sent in the `xi-api-key` header).
    pub api_key: String,
    /// The agent's voice.
    pub voice_id: String,
    /// The model, e.g. `eleven_flash_v2_5` (low latency, multilingual).
    pub model_id: String,
    /// ISO 639-1 language of the agent (`en`, `es`, ...), sent as
    /// `language_code` so the model reads numbers and names in it; `None`
    /// lets the model detect it.
    pub language: Option<String>,
    /// 16 or 24 kHz (`output_format=pcm_16000` / `pcm_24000`).
    pub sample_rate: SampleRate,
    /// How the voice sounds.
    pub voice_settings: VoiceSettings,
    /// `wss://api.elevenlabs.io` unless a test overrides it.
    pub base_url: String,
    /// Longest wait for the socket to open.
    pub connect_timeout: Duration,
    /// Longest wait between two messages once the text is sent.
    pub idle_timeout: Duration,
}

impl std::fmt::Debug for ElevenLabsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key stays out of logs.
        f.debug_struct("ElevenLabsConfig")
            .field("voice_id", &self.voice_id)
            .field("model_id", &self.model_id)
            .field("language", &self.language)
            .field("sample_rate", &self.sample_rate)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl ElevenLabsConfig {
    /// A configuration for `voice_id` speaking `language` (`en`, `es`, ...),
    /// with the `eleven_flash_v2_5` model at 16 kHz.
    pub fn new(api_key: &str, voice_id: &str, language: &str) -> Self {
        ElevenLabsConfig {
            api_key: api_key.to_owned(),
            voice_id: voice_id.to_owned(),
            model_id: "eleven_flash_v2_5".to_owned(),
            language: Some(language.to_owned()),
            sample_rate: SampleRate::Hz16000,
            voice_settings: VoiceSettings::default(),
            base_url: DEFAULT_BASE_URL.to_owned(),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
        }
    }

    /// [`ElevenLabsConfig::new`] with the key from `ELEVENLABS_API_KEY`.
    pub fn from_env(voice_id: &str, language: &str) -> Result<Self, ProviderError> {
        Ok(Self::new(
            &ws::api_key_from_env(API_KEY_ENV)?,
            voice_id,
            language,
        ))
    }

    /// The socket's URL for this voice, model, language and rate.
    pub fn url(&self) -> String {
        let mut url = format!(
            "{}/v1/text-to-speech/{}/stream-input?model_id={}&output_format=pcm_{}",
            self.base_url.trim_end_matches('/'),
            ws::encode_query(&self.voice_id),
            ws::encode_query(&self.model_id),
            self.sample_rate.hz()
        );
        if let Some(language) = &self.language {
            url.push_str("&language_code=");
            url.push_str(&ws::encode_query(language));
        }
        url
    }
}

/// ElevenLabs streaming TTS, one socket per clause.
#[derive(Debug, Clone)]
pub struct ElevenLabsTts {
    config: Arc<ElevenLabsConfig>,
}

impl ElevenLabsTts {
    /// An adapter with this configuration. Only 16 and 24 kHz are offered as
    /// raw PCM by the vendor; other rates are refused here.
    pub fn new(config: ElevenLabsConfig) -> Result<Self, ProviderError> {
        if !matches!(
            config.sample_rate,
            SampleRate::Hz16000 | SampleRate::Hz24000
        ) {
            return Err(ProviderError::BadResponse(format!(
                "ElevenLabs: unsupported output rate {} (use 16 or 24 kHz)",
                config.sample_rate
            )));
        }
        Ok(ElevenLabsTts {
            config: Arc::new(config),
        })
    }
}

/// One answer on the socket. Audio is `null` on the final message.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ServerMessage {
    #[serde(default)]
    audio: Option<String>,
    #[serde(default)]
    is_final: Option<bool>,
    /// Set (with `message`) when the vendor reports a failure.
    #[serde(default)]
    error: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<String>,
}

enum Phase {
    Connect,
    Streaming(Box<Socket>),
    Done,
}

struct Synthesis {
    config: Arc<ElevenLabsConfig>,
    text: String,
    phase: Phase,
    pcm: PcmAssembler,
}

impl Synthesis {
    /// The next frame, or an error (after which the stream ends).
    async fn next(&mut self) -> Option<Result<PcmFrame, ProviderError>> {
        loop {
            if let Some(frame) = self.pcm.pop() {
                return Some(Ok(frame));
            }
            match &mut self.phase {
                Phase::Connect => match self.open().await {
                    Ok(socket) => self.phase = Phase::Streaming(Box::new(socket)),
                    Err(err) => return self.fail(err),
                },
                Phase::Streaming(socket) => {
                    let text =
                        match ws::next_text(Vendor::ElevenLabs, socket, self.config.idle_timeout)
                            .await
                        {
                            Ok(Some(text)) => text,
                            Ok(None) => {
                                return self.fail(ProviderError::Unavailable(
                                    "ElevenLabs closed the socket before the final audio".into(),
                                ));
                            }
                            Err(err) => return self.fail(err),
                        };
                    if let Err(err) = self.on_message(&text) {
                        return self.fail(err);
                    }
                }
                Phase::Done => {
                    return self.pcm.flush().map(Ok);
                }
            }
        }
    }

    async fn open(&mut self) -> Result<Socket, ProviderError> {
        let config = &self.config;
        let mut request = ws::request(Vendor::ElevenLabs, &config.url())?;
        request.headers_mut().insert(
            "xi-api-key",
            ws::header(Vendor::ElevenLabs, &config.api_key)?,
        );
        let mut socket = ws::connect(Vendor::ElevenLabs, request, config.connect_timeout).await?;
        let settings = config.voice_settings;
        // The opening message must be a single space.
        let begin = json!({
            "text": " ",
            "voice_settings": {
                "stability": settings.stability,
                "similarity_boost": settings.similarity_boost,
                "speed": settings.speed,
            },
        });
        let mut clause = self.text.trim().to_owned();
        // The vendor wants every text chunk to end with a space.
        clause.push(' ');
        let messages = [
            begin,
            json!({"text": clause, "try_trigger_generation": true, "flush": true}),
            json!({"text": ""}),
        ];
        for message in messages {
            socket
                .send(Message::text(message.to_string()))
                .await
                .map_err(|e| ws::socket_error(Vendor::ElevenLabs, &e))?;
        }
        Ok(socket)
    }

    fn on_message(&mut self, text: &str) -> Result<(), ProviderError> {
        let message: ServerMessage = serde_json::from_str(text).map_err(|e| {
            ProviderError::BadResponse(format!("ElevenLabs: unreadable message ({e})"))
        })?;
        if let Some(error) = message.error {
            let kind = match error {
                serde_json::Value::String(kind) => kind,
                other => other.to_string(),
            };
            return Err(ProviderError::BadResponse(format!(
                "ElevenLabs error {kind}: {}",
                message.message.unwrap_or_default()
            )));
        }
        if let Some(audio) = message.audio.as_deref() {
            self.pcm.push_base64(Vendor::ElevenLabs, audio)?;
        }
        if message.is_final == Some(true) {
            // Done: the socket closes itself; dropping ours is enough.
            self.phase = Phase::Done;
        }
        Ok(())
    }

    fn fail(&mut self, err: ProviderError) -> Option<Result<PcmFrame, ProviderError>> {
        self.phase = Phase::Done;
        self.pcm.clear();
        Some(Err(err))
    }
}

impl TtsProvider for ElevenLabsTts {
    fn sample_rate(&self) -> SampleRate {
        self.config.sample_rate
    }

    fn synthesize(&self, text: &str) -> BoxStream<'static, Result<PcmFrame, ProviderError>> {
        let synthesis = Synthesis {
            config: Arc::clone(&self.config),
            text: text.to_owned(),
            phase: Phase::Connect,
            pcm: PcmAssembler::new(self.config.sample_rate),
        };
        futures::stream::unfold(synthesis, |mut synthesis| async move {
            let item = synthesis.next().await?;
            Some((item, synthesis))
        })
        .boxed()
    }
}
