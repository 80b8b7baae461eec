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
//!
//! [`wire`] holds the WebSocket plumbing the other cloud adapters share
//! (connect with timeout and error mapping, base64 PCM to frames).

use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::{ProviderError, TtsProvider};
use crate::codecs::{PcmFrame, SampleRate};
use wire::{PcmAssembler, Socket, Vendor};

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
            &wire::api_key_from_env(API_KEY_ENV)?,
            voice_id,
            language,
        ))
    }

    /// The socket's URL for this voice, model, language and rate.
    pub fn url(&self) -> String {
        let mut url = format!(
            "{}/v1/text-to-speech/{}/stream-input?model_id={}&output_format=pcm_{}",
            self.base_url.trim_end_matches('/'),
            wire::encode_query(&self.voice_id),
            wire::encode_query(&self.model_id),
            self.sample_rate.hz()
        );
        if let Some(language) = &self.language {
            url.push_str("&language_code=");
            url.push_str(&wire::encode_query(language));
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
                        match wire::next_text(Vendor::ElevenLabs, socket, self.config.idle_timeout)
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
        let mut request = wire::request(Vendor::ElevenLabs, &config.url())?;
        request.headers_mut().insert(
            "xi-api-key",
            wire::header(Vendor::ElevenLabs, &config.api_key)?,
        );
        let mut socket = wire::connect(Vendor::ElevenLabs, request, config.connect_timeout).await?;
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
                .map_err(|e| wire::socket_error(Vendor::ElevenLabs, &e))?;
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

/// WebSocket plumbing shared by the cloud speech adapters (ElevenLabs,
/// Cartesia, OpenAI Realtime).
pub(crate) mod wire {
    use std::time::Duration;

    use base64::Engine as _;
    use futures::StreamExt;
    use tokio::net::TcpStream;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::handshake::client::Request;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::{self, Message};
    use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

    use crate::codecs::{FrameDuration, Framer, PcmFrame, SampleRate};
    use crate::providers::ProviderError;

    /// An open client socket (TLS or, in tests, plain).
    pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

    /// Who is on the other end, for error messages.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Vendor {
        ElevenLabs,
        Cartesia,
        OpenAi,
    }

    impl std::fmt::Display for Vendor {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(match self {
                Vendor::ElevenLabs => "ElevenLabs",
                Vendor::Cartesia => "Cartesia",
                Vendor::OpenAi => "OpenAI Realtime",
            })
        }
    }

    /// The key in `var`, or a clear error naming the variable.
    pub(crate) fn api_key_from_env(var: &str) -> Result<String, ProviderError> {
        match std::env::var(var) {
            Ok(key) if !key.trim().is_empty() => Ok(key.trim().to_owned()),
            _ => Err(ProviderError::Unavailable(format!("{var} is not set"))),
        }
    }

    /// Percent-encodes a query value (RFC 3986 unreserved characters pass).
    pub(crate) fn encode_query(value: &str) -> String {
        let mut out = String::with_capacity(value.len());
        for byte in value.bytes() {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
                out.push(char::from(byte));
            } else {
                out.push_str(&format!("%{byte:02X}"));
            }
        }
        out
    }

    /// A handshake request for `url`.
    pub(crate) fn request(vendor: Vendor, url: &str) -> Result<Request, ProviderError> {
        url.into_client_request()
            .map_err(|e| ProviderError::Unavailable(format!("{vendor}: bad URL {url:?} ({e})")))
    }

    /// A header value, refusing control characters (a pasted key with a newline).
    pub(crate) fn header(vendor: Vendor, value: &str) -> Result<HeaderValue, ProviderError> {
        HeaderValue::from_str(value).map_err(|_| {
            ProviderError::Unavailable(format!("{vendor}: the API key is not a valid header"))
        })
    }

    /// Opens the socket within `timeout`; a 401/403 answer says the key was
    /// refused.
    pub(crate) async fn connect(
        vendor: Vendor,
        request: Request,
        timeout: Duration,
    ) -> Result<Socket, ProviderError> {
        // rustls needs a process-wide crypto provider; this build has ring
        // only. An error means one is installed already, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        match tokio::time::timeout(timeout, tokio_tungstenite::connect_async(request)).await {
            Err(_) => Err(ProviderError::Unavailable(format!(
                "{vendor}: no connection within {} ms",
                timeout.as_millis()
            ))),
            Ok(Ok((socket, _response))) => Ok(socket),
            Ok(Err(tungstenite::Error::Http(response))) => {
                let status = response.status();
                let body = response
                    .body()
                    .as_deref()
                    .map(|b| {
                        String::from_utf8_lossy(b)
                            .chars()
                            .take(300)
                            .collect::<String>()
                    })
                    .unwrap_or_default();
                if status.as_u16() == 401 || status.as_u16() == 403 {
                    Err(ProviderError::Unavailable(format!(
                        "{vendor} refused the API key (HTTP {}): {body}",
                        status.as_u16()
                    )))
                } else {
                    Err(ProviderError::Unavailable(format!(
                        "{vendor} refused the connection (HTTP {}): {body}",
                        status.as_u16()
                    )))
                }
            }
            Ok(Err(err)) => Err(socket_error(vendor, &err)),
        }
    }

    /// A socket failure as a provider error.
    pub(crate) fn socket_error(vendor: Vendor, err: &tungstenite::Error) -> ProviderError {
        ProviderError::Unavailable(format!("{vendor}: socket failed ({err})"))
    }

    /// The next text message, waiting at most `idle` for it. `Ok(None)`:
    /// the peer closed normally. A close with an error code is an error
    /// carrying the vendor's reason.
    pub(crate) async fn next_text(
        vendor: Vendor,
        socket: &mut Socket,
        idle: Duration,
    ) -> Result<Option<String>, ProviderError> {
        loop {
            let message = match tokio::time::timeout(idle, socket.next()).await {
                Err(_) => {
                    return Err(ProviderError::Unavailable(format!(
                        "{vendor}: nothing received for {} ms",
                        idle.as_millis()
                    )));
                }
                Ok(None) => return Ok(None),
                Ok(Some(Err(err))) => return Err(socket_error(vendor, &err)),
                Ok(Some(Ok(message))) => message,
            };
            match message {
                Message::Text(text) => return Ok(Some(text.as_str().to_owned())),
                Message::Close(frame) => return close_outcome(vendor, frame),
                // Pings are answered by the socket itself; vendors send no binary.
                _ => {}
            }
        }
    }

    /// A close frame: normal closes end quietly, others carry the reason.
    pub(crate) fn close_outcome(
        vendor: Vendor,
        frame: Option<tungstenite::protocol::CloseFrame>,
    ) -> Result<Option<String>, ProviderError> {
        match frame {
            None => Ok(None),
            Some(frame) if frame.code == CloseCode::Normal => Ok(None),
            Some(frame) => Err(ProviderError::Unavailable(format!(
                "{vendor} closed the socket ({}): {}",
                u16::from(frame.code),
                frame.reason.as_str()
            ))),
        }
    }

    /// Base64 PCM16LE chunks of any size in, 20 ms frames out. An odd byte
    /// at the end of one chunk waits for the next (vendors cut anywhere).
    #[derive(Debug)]
    pub(crate) struct PcmAssembler {
        rate: SampleRate,
        framer: Framer,
        odd_byte: Option<u8>,
        bytes: Vec<u8>,
        samples: Vec<i16>,
    }

    impl PcmAssembler {
        /// An assembler for audio at `rate`; frames start at time zero.
        pub(crate) fn new(rate: SampleRate) -> Self {
            PcmAssembler {
                rate,
                framer: Framer::new(rate, FrameDuration::Ms20),
                odd_byte: None,
                bytes: Vec::with_capacity(16 * 1024),
                samples: Vec::with_capacity(8 * 1024),
            }
        }

        /// Adds one base64 chunk; returns the number of samples it completed.
        pub(crate) fn push_base64(
            &mut self,
            vendor: Vendor,
            data: &str,
        ) -> Result<usize, ProviderError> {
            self.bytes.clear();
            if let Some(byte) = self.odd_byte.take() {
                self.bytes.push(byte);
            }
            base64::engine::general_purpose::STANDARD
                .decode_vec(data, &mut self.bytes)
                .map_err(|e| {
                    ProviderError::BadResponse(format!("{vendor}: bad base64 audio ({e})"))
                })?;
            if self.bytes.len() % 2 == 1 {
                self.odd_byte = self.bytes.pop();
            }
            self.samples.clear();
            self.samples.extend(
                self.bytes
                    .chunks_exact(2)
                    .map(|pair| i16::from_le_bytes([pair[0], pair[1]])),
            );
            self.framer.push(&self.samples);
            Ok(self.samples.len())
        }

        /// The next whole frame, if one is ready.
        pub(crate) fn pop(&mut self) -> Option<PcmFrame> {
            let mut frame = PcmFrame::with_capacity(self.rate, FrameDuration::Ms20);
            self.framer.pop_into(&mut frame).then_some(frame)
        }

        /// The last partial frame, padded with silence (end of the audio).
        pub(crate) fn flush(&mut self) -> Option<PcmFrame> {
            if let Some(frame) = self.pop() {
                return Some(frame);
            }
            self.odd_byte = None;
            let mut frame = PcmFrame::with_capacity(self.rate, FrameDuration::Ms20);
            self.framer.flush_into(&mut frame).then_some(frame)
        }

        /// Forgets pending audio (after an error or an interruption).
        pub(crate) fn clear(&mut self) {
            self.framer.clear();
            self.odd_byte = None;
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn odd_bytes_carry_across_chunks() {
            let mut pcm = PcmAssembler::new(SampleRate::Hz16000);
            let samples: Vec<i16> = (0..330).map(|i| i * 7 - 1000).collect();
            let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
            let engine = base64::engine::general_purpose::STANDARD;
            // 3 + 500 + rest bytes: both cuts fall inside a sample.
            for chunk in [&bytes[..3], &bytes[3..503], &bytes[503..]] {
                pcm.push_base64(Vendor::Cartesia, &engine.encode(chunk))
                    .expect("valid base64");
            }
            let first = pcm.pop().expect("one whole frame");
            assert_eq!(first.samples(), &samples[..320]);
            assert!(pcm.pop().is_none());
            let last = pcm.flush().expect("a padded tail");
            assert_eq!(&last.samples()[..10], &samples[320..]);
            assert!(last.samples()[10..].iter().all(|&s| s == 0));
            assert!(pcm.flush().is_none());
        }

        #[test]
        fn bad_base64_is_an_error_not_a_panic() {
            let mut pcm = PcmAssembler::new(SampleRate::Hz16000);
            assert!(matches!(
                pcm.push_base64(Vendor::ElevenLabs, "not base64!"),
                Err(ProviderError::BadResponse(_))
            ));
        }

        #[test]
        fn query_values_are_encoded() {
            assert_eq!(encode_query("a b/é"), "a%20b%2F%C3%A9");
            assert_eq!(encode_query("sk_car-1.x~"), "sk_car-1.x~");
        }
    }
}
