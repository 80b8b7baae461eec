//! An [`AsrProvider`] for Deepgram's live streaming recognition
//! (`wss://api.deepgram.com/v1/listen`).
//!
//! The socket carries raw 16-bit little-endian PCM as binary messages one
//! way and JSON messages the other: `Results` (a transcript of the current
//! segment, `is_final` once the segment will not change, `speech_final` at
//! an endpoint), `SpeechStarted`, `UtteranceEnd` and, at the end, `Metadata`.
//! Interim results become [`AsrEvent::Interim`] and final, non-empty ones
//! [`AsrEvent::Final`]: one per segment, as the turn machine expects (it
//! appends finals and replaces interims). The engine does its own
//! end-of-turn detection, so `speech_final` and `UtteranceEnd` are not
//! reported.
//!
//! While no audio flows (the caller on hold, a muted leg), a `KeepAlive`
//! text message goes out every [`DeepgramConfig::keepalive_interval`], since
//! Deepgram closes a socket that is silent for about ten seconds. Closing the
//! session sends `CloseStream` and still reads the results for the audio
//! already sent. If the socket drops mid-call the session reconnects (up to
//! [`DeepgramConfig::max_reconnects`] times), buffering the audio meanwhile
//! up to [`DeepgramConfig::reconnect_buffer`]; after that it ends with an
//! error that [`AsrOutcome`] reports.

use crate::providers::PooledFrame;
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant as TokioInstant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use super::http::{clip, http_error};
use super::{AsrEvent, AsrProvider, AsrSession, ProviderError};
use crate::codecs::{PcmFrame, SampleRate};

const VENDOR: &str = "deepgram";

/// How Deepgram is reached and what it is asked to do.
#[derive(Clone)]
pub struct DeepgramConfig {
    /// The key sent as `Authorization: Token <key>`.
    pub api_key: String,
    /// The API root that `/v1/listen` is appended to (`wss://` or `ws://`).
    pub base_url: String,
    /// The model, e.g. `nova-3`.
    pub model: String,
    /// The language code, e.g. `en` or `multi`.
    pub language: String,
    /// The rate of the audio sent; frames at another rate end the session.
    pub sample_rate: SampleRate,
    /// Deepgram's `endpointing`: the silence (ms) that finalizes a segment;
    /// `None` sends `endpointing=false`.
    pub endpointing_ms: Option<u32>,
    /// Deepgram's `utterance_end_ms`, when set.
    pub utterance_end_ms: Option<u32>,
    /// Deepgram's `smart_format` (punctuation, numbers).
    pub smart_format: bool,
    /// A `KeepAlive` goes out after this long without sending anything.
    pub keepalive_interval: Duration,
    /// The longest wait for the connection and WebSocket handshake.
    pub connect_timeout: Duration,
    /// After `CloseStream`, the longest wait for the last results.
    pub close_timeout: Duration,
    /// How many times a dropped socket is reopened in one session.
    pub max_reconnects: u32,
    /// The most audio kept while reconnecting (the oldest goes first).
    pub reconnect_buffer: Duration,
    /// Frames the session's audio queue holds before `push_frame` reports it full.
    pub audio_queue_frames: usize,
}

impl fmt::Debug for DeepgramConfig {
    // The key never goes into logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeepgramConfig")
            .field("api_key", &"<redacted>")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("language", &self.language)
            .field("sample_rate", &self.sample_rate)
            .field("endpointing_ms", &self.endpointing_ms)
            .field("utterance_end_ms", &self.utterance_end_ms)
            .field("smart_format", &self.smart_format)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("connect_timeout", &self.connect_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("max_reconnects", &self.max_reconnects)
            .field("reconnect_buffer", &self.reconnect_buffer)
            .field("audio_queue_frames", &self.audio_queue_frames)
            .finish()
    }
}

impl DeepgramConfig {
    /// Deepgram's public endpoint.
    pub const DEFAULT_BASE_URL: &'static str = "wss://api.deepgram.com";

    /// A config with `api_key` and the defaults: nova-3, English, 16 kHz,
    /// endpointing 300 ms, smart formatting, KeepAlive every 3 s, connect
    /// timeout 5 s, one reconnect with up to 5 s of audio buffered.
    pub fn new(api_key: &str) -> Self {
        DeepgramConfig {
            api_key: api_key.to_owned(),
            base_url: Self::DEFAULT_BASE_URL.to_owned(),
            model: "nova-3".to_owned(),
            language: "en".to_owned(),
            sample_rate: SampleRate::Hz16000,
            endpointing_ms: Some(300),
            utterance_end_ms: None,
            smart_format: true,
            keepalive_interval: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(3),
            max_reconnects: 1,
            reconnect_buffer: Duration::from_secs(5),
            audio_queue_frames: 256,
        }
    }

    /// Reads `DEEPGRAM_API_KEY` (required) and `DEEPGRAM_BASE_URL`,
    /// `DEEPGRAM_MODEL`, `DEEPGRAM_LANGUAGE` (optional) from the environment.
    pub fn from_env() -> Result<Self, ProviderError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Like [`DeepgramConfig::from_env`], reading variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, ProviderError> {
        let non_empty = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let key = non_empty("DEEPGRAM_API_KEY")
            .ok_or_else(|| ProviderError::Unavailable("DEEPGRAM_API_KEY is not set".into()))?;
        let mut config = Self::new(&key);
        if let Some(base) = non_empty("DEEPGRAM_BASE_URL") {
            config.base_url = base;
        }
        if let Some(model) = non_empty("DEEPGRAM_MODEL") {
            config.model = model;
        }
        if let Some(language) = non_empty("DEEPGRAM_LANGUAGE") {
            config.language = language;
        }
        Ok(config)
    }

    /// The `/v1/listen` URL with this config's query parameters.
    pub fn listen_url(&self) -> Result<url::Url, ProviderError> {
        let base = format!("{}/v1/listen", self.base_url.trim_end_matches('/'));
        let mut url = url::Url::parse(&base).map_err(|e| {
            ProviderError::Unavailable(format!("{VENDOR}: bad base URL {base:?}: {e}"))
        })?;
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("model", &self.model)
                .append_pair("language", &self.language)
                .append_pair("encoding", "linear16")
                .append_pair("sample_rate", &self.sample_rate.hz().to_string())
                .append_pair("channels", "1")
                .append_pair("interim_results", "true")
                .append_pair(
                    "endpointing",
                    &self
                        .endpointing_ms
                        .map_or_else(|| "false".to_owned(), |ms| ms.to_string()),
                )
                .append_pair(
                    "smart_format",
                    if self.smart_format { "true" } else { "false" },
                );
            if let Some(ms) = self.utterance_end_ms {
                query.append_pair("utterance_end_ms", &ms.to_string());
            }
        }
        Ok(url)
    }
}

/// Streaming recognition by Deepgram.
#[derive(Debug, Clone)]
pub struct DeepgramAsr {
    config: Arc<DeepgramConfig>,
}

/// How a session ended: `Ok` when it was closed (cancelled or dropped),
/// an error when Deepgram refused it or the socket could not be kept.
///
/// The [`AsrSession`] itself only shows that events stopped; this says why.
#[derive(Debug)]
pub struct AsrOutcome(oneshot::Receiver<Result<(), ProviderError>>);

impl AsrOutcome {
    /// Waits for the session to end.
    pub async fn wait(self) -> Result<(), ProviderError> {
        self.0.await.unwrap_or(Err(ProviderError::Closed))
    }

    /// The outcome if the session has ended, without waiting.
    pub fn try_get(&mut self) -> Option<Result<(), ProviderError>> {
        match self.0.try_recv() {
            Ok(outcome) => Some(outcome),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(ProviderError::Closed)),
        }
    }
}

impl DeepgramAsr {
    /// A recognizer with `config`.
    pub fn new(config: DeepgramConfig) -> Self {
        DeepgramAsr {
            config: Arc::new(config),
        }
    }

    /// A recognizer configured from the environment (see [`DeepgramConfig::from_env`]).
    pub fn from_env() -> Result<Self, ProviderError> {
        Ok(Self::new(DeepgramConfig::from_env()?))
    }

    /// The config in use.
    pub fn config(&self) -> &DeepgramConfig {
        &self.config
    }

    /// Opens a session like [`AsrProvider::open`], and also returns how it
    /// ends. Must be called within a tokio runtime; the connection is made
    /// in the background, so a refused key shows in the outcome.
    pub fn open_with_outcome(
        &self,
        cancel: CancellationToken,
    ) -> Result<(AsrSession, AsrOutcome), ProviderError> {
        self.open_with_config(Arc::clone(&self.config), cancel)
    }

    fn open_with_config(
        &self,
        config: Arc<DeepgramConfig>,
        cancel: CancellationToken,
    ) -> Result<(AsrSession, AsrOutcome), ProviderError> {
        let url = config.listen_url()?;
        let (audio_tx, audio_rx) = mpsc::channel(config.audio_queue_frames.max(1));
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        let (outcome_tx, outcome_rx) = oneshot::channel();
        let frame_bytes = config.sample_rate.samples_per_ms() * 2 * 20;
        let backlog_limit = (config.sample_rate.samples_per_ms() as u128
            * 2
            * config.reconnect_buffer.as_millis()) as usize;
        let failure_tx = event_tx.clone();
        let worker = Worker {
            config,
            url,
            audio: audio_rx,
            events: event_tx,
            cancel,
            backlog: VecDeque::with_capacity(backlog_limit / frame_bytes.max(1) + 1),
            backlog_bytes: 0,
            backlog_limit,
            server_error: None,
        };
        tokio::spawn(async move {
            let outcome = worker.run().await;
            if let Err(error) = &outcome {
                // Reconnecting gave up: the call must hear of it.
                let _ = failure_tx.send(AsrEvent::Failed {
                    error: error.to_string(),
                });
            }
            let _ = outcome_tx.send(outcome);
        });
        Ok((
            AsrSession::from_channels(audio_tx, event_rx),
            AsrOutcome(outcome_rx),
        ))
    }
}

impl AsrProvider for DeepgramAsr {
    fn open(&self, cancel: CancellationToken) -> Result<AsrSession, ProviderError> {
        self.open_with_outcome(cancel).map(|(session, _)| session)
    }

    /// Deepgram takes the call's BCP-47 tag as its `language` parameter.
    fn open_in(
        &self,
        language: &str,
        cancel: CancellationToken,
    ) -> Result<AsrSession, ProviderError> {
        let mut config = (*self.config).clone();
        config.language = language.to_owned();
        self.open_with_config(Arc::new(config), cancel)
            .map(|(session, _)| session)
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why one connection ended.
enum Ending {
    /// The session was closed by its owner, gracefully.
    Closed,
    /// The socket dropped; reconnecting may help.
    Dropped(String),
    /// Something reconnecting will not fix.
    Failed(ProviderError),
}

/// The background task behind one session.
struct Worker {
    config: Arc<DeepgramConfig>,
    url: url::Url,
    audio: mpsc::Receiver<PooledFrame>,
    events: mpsc::UnboundedSender<AsrEvent>,
    cancel: CancellationToken,
    /// Audio not yet delivered, oldest first (while connecting, or the frame
    /// whose send failed).
    backlog: VecDeque<Bytes>,
    backlog_bytes: usize,
    backlog_limit: usize,
    /// An error Deepgram reported in a message, for the drop that follows.
    server_error: Option<String>,
}

impl Worker {
    async fn run(mut self) -> Result<(), ProviderError> {
        let mut reconnects = 0u32;
        let mut last_drop: Option<String> = None;
        loop {
            let socket = match self.connect().await {
                Ok(Some(socket)) => socket,
                Ok(None) => return Ok(()),
                Err(error) => {
                    return Err(match last_drop {
                        None => error,
                        Some(reason) => ProviderError::Unavailable(format!(
                            "{VENDOR}: the socket dropped ({reason}) and reconnecting failed: {error}"
                        )),
                    });
                }
            };
            match self.stream(socket).await {
                Ending::Closed => return Ok(()),
                Ending::Failed(error) => return Err(error),
                Ending::Dropped(reason) => {
                    if reconnects >= self.config.max_reconnects {
                        return Err(ProviderError::Unavailable(format!(
                            "{VENDOR}: the socket dropped ({reason}) after {reconnects} reconnect(s); giving up"
                        )));
                    }
                    reconnects += 1;
                    last_drop = Some(reason);
                }
            }
        }
    }

    /// Opens the socket, buffering audio meanwhile. `None`: the session was
    /// closed before it opened.
    async fn connect(&mut self) -> Result<Option<Socket>, ProviderError> {
        let mut request = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| ProviderError::Unavailable(format!("{VENDOR}: bad URL: {e}")))?;
        let auth = format!("Token {}", self.config.api_key)
            .parse()
            .map_err(|_| {
                ProviderError::BadResponse(format!(
                    "{VENDOR}: the API key is not a valid header value"
                ))
            })?;
        request.headers_mut().insert("authorization", auth);
        let timeout = self.config.connect_timeout;
        let connecting = tokio::time::timeout(timeout, tokio_tungstenite::connect_async(request));
        tokio::pin!(connecting);
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return Ok(None),
                result = &mut connecting => {
                    return match result {
                        Err(_) => Err(ProviderError::Unavailable(format!(
                            "{VENDOR}: timed out: no connection within {} ms",
                            timeout.as_millis()
                        ))),
                        Ok(Err(error)) => Err(handshake_error(error)),
                        Ok(Ok((socket, _response))) => Ok(Some(socket)),
                    };
                }
                frame = self.audio.recv() => match frame {
                    Some(frame) => {
                        let bytes = self.encode(&frame)?;
                        self.buffer(bytes);
                    }
                    None => return Ok(None),
                },
            }
        }
    }

    /// Streams audio and reads results until the session closes or the socket drops.
    async fn stream(&mut self, socket: Socket) -> Ending {
        let (mut sink, mut source) = socket.split();
        while let Some(chunk) = self.backlog.pop_front() {
            let len = chunk.len();
            self.backlog_bytes -= len;
            if let Err(error) = sink.send(Message::Binary(chunk.clone())).await {
                self.backlog.push_front(chunk);
                self.backlog_bytes += len;
                return Ending::Dropped(self.drop_reason(&error.to_string()));
            }
        }
        let mut last_sent = TokioInstant::now();
        loop {
            let keepalive_at = last_sent + self.config.keepalive_interval;
            tokio::select! {
                () = self.cancel.cancelled() => return self.close(sink, source).await,
                frame = self.audio.recv() => {
                    let Some(frame) = frame else {
                        return self.close(sink, source).await;
                    };
                    let bytes = match self.encode(&frame) {
                        Ok(bytes) => bytes,
                        Err(error) => return Ending::Failed(error),
                    };
                    if let Err(error) = sink.send(Message::Binary(bytes.clone())).await {
                        self.buffer(bytes);
                        return Ending::Dropped(self.drop_reason(&error.to_string()));
                    }
                    last_sent = TokioInstant::now();
                }
                () = tokio::time::sleep_until(keepalive_at) => {
                    if let Err(error) = sink.send(Message::text(KEEPALIVE)).await {
                        return Ending::Dropped(self.drop_reason(&error.to_string()));
                    }
                    last_sent = TokioInstant::now();
                }
                message = source.next() => match message {
                    Some(Ok(Message::Text(text))) => self.on_message(&text),
                    Some(Ok(Message::Close(frame))) => {
                        let reason = match frame {
                            Some(frame) => format!("closed by the server: {} {}", frame.code, frame.reason),
                            None => "closed by the server".to_owned(),
                        };
                        return Ending::Dropped(self.drop_reason(&reason));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return Ending::Dropped(self.drop_reason(&error.to_string())),
                    None => return Ending::Dropped(self.drop_reason("connection closed")),
                },
            }
        }
    }

    /// Sends `CloseStream`, reads the last results, and closes the socket.
    async fn close(
        &mut self,
        mut sink: futures::stream::SplitSink<Socket, Message>,
        mut source: futures::stream::SplitStream<Socket>,
    ) -> Ending {
        if sink.send(Message::text(CLOSE_STREAM)).await.is_ok() {
            let deadline = TokioInstant::now() + self.config.close_timeout;
            loop {
                match tokio::time::timeout_at(deadline, source.next()).await {
                    Ok(Some(Ok(Message::Text(text)))) => self.on_message(&text),
                    Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) | Err(_) => break,
                    Ok(Some(Ok(_))) => {}
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
        Ending::Closed
    }

    /// Turns one Deepgram message into events.
    fn on_message(&mut self, text: &str) {
        // A message we cannot read is skipped: one odd message should not end a call.
        let Ok(message) = serde_json::from_str::<serde_json::Value>(text) else {
            return;
        };
        match message["type"].as_str() {
            Some("Results") => {
                let transcript = message["channel"]["alternatives"][0]["transcript"]
                    .as_str()
                    .unwrap_or_default()
                    .trim();
                if transcript.is_empty() {
                    return;
                }
                let text = transcript.to_owned();
                let event = if message["is_final"].as_bool().unwrap_or(false) {
                    AsrEvent::Final { text }
                } else {
                    AsrEvent::Interim { text }
                };
                // A dropped receiver means the session is going away anyway.
                let _ = self.events.send(event);
            }
            Some("Error") => {
                let description = super::http::error_text(&message);
                self.server_error = Some(clip(&description, 300).to_owned());
            }
            // SpeechStarted, UtteranceEnd, Metadata: the engine has its own VAD and endpointing.
            _ => {}
        }
    }

    /// A frame as linear16 bytes, if it has the session's rate.
    fn encode(&self, frame: &PcmFrame) -> Result<Bytes, ProviderError> {
        if frame.rate() != self.config.sample_rate {
            return Err(ProviderError::BadResponse(format!(
                "{VENDOR}: a {} frame in a session opened at {}",
                frame.rate(),
                self.config.sample_rate
            )));
        }
        let mut bytes = Vec::with_capacity(frame.len() * 2);
        frame.write_le_bytes(&mut bytes);
        Ok(Bytes::from(bytes))
    }

    /// Keeps audio for the next connection, dropping the oldest past the limit.
    fn buffer(&mut self, bytes: Bytes) {
        self.backlog_bytes += bytes.len();
        self.backlog.push_back(bytes);
        while self.backlog_bytes > self.backlog_limit {
            match self.backlog.pop_front() {
                Some(old) => self.backlog_bytes -= old.len(),
                None => break,
            }
        }
    }

    fn drop_reason(&mut self, what: &str) -> String {
        match self.server_error.take() {
            Some(error) => format!("{what}; Deepgram said: {error}"),
            None => what.to_owned(),
        }
    }
}

const KEEPALIVE: &str = r#"{"type":"KeepAlive"}"#;
const CLOSE_STREAM: &str = r#"{"type":"CloseStream"}"#;

/// A refused handshake as a provider error, with Deepgram's reason.
fn handshake_error(error: tungstenite::Error) -> ProviderError {
    match error {
        tungstenite::Error::Http(response) => {
            let status = response.status();
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            // Deepgram also names the error in a `dg-error` header.
            let body = if body.trim().is_empty() {
                response
                    .headers()
                    .get("dg-error")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            } else {
                body.into_owned()
            };
            http_error(
                VENDOR,
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                &body,
                None,
            )
        }
        other => ProviderError::Unavailable(format!("{VENDOR}: cannot connect: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_url_carries_the_stream_format() {
        let mut config = DeepgramConfig::new("k");
        config.base_url = "ws://127.0.0.1:9/".into();
        config.endpointing_ms = None;
        config.utterance_end_ms = Some(1000);
        let url = config.listen_url().expect("url");
        assert_eq!(
            url.as_str(),
            "ws://127.0.0.1:9/v1/listen?model=nova-3&language=en&encoding=linear16&sample_rate=16000&channels=1&interim_results=true&endpointing=false&smart_format=true&utterance_end_ms=1000"
        );
        assert!(!format!("{config:?}").contains("\"k\""));
    }

    #[test]
    fn from_vars_needs_the_key() {
        assert!(DeepgramConfig::from_vars(|_| None).is_err());
        let config = DeepgramConfig::from_vars(|name| {
            (name == "DEEPGRAM_API_KEY").then(|| "secret".to_owned())
        })
        .expect("config");
        assert_eq!(config.api_key, "secret");
        assert_eq!(config.base_url, DeepgramConfig::DEFAULT_BASE_URL);
    }
}
