//! An [`LlmProvider`] for OpenAI-compatible chat completions
//! (`POST {base}/chat/completions` with `stream: true`).
//!
//! The reply arrives as server-sent events, `data: {chunk}` lines ending with
//! `data: [DONE]`. Text comes in `choices[0].delta.content`; tool calls come
//! in `choices[0].delta.tool_calls[i]` fragments that share an `index`: the
//! first fragment carries `id` and `function.name`, later ones append to
//! `function.arguments`. A call is reported whole once `finish_reason`
//! arrives. The same wire format is spoken by OpenAI and by most
//! self-hosted servers (vLLM, llama.cpp, Ollama), so the base URL, key and
//! model come from [`OpenAiChatConfig`].
//!
//! This module also holds the small server-sent-events reader and HTTP error
//! mapping that the Anthropic adapter shares.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::{Value, json};

use super::{ChatMessage, LlmEvent, LlmProvider, LlmRequest, ProviderError, ToolCallRequest};

/// How an OpenAI-compatible endpoint is reached, and the model to ask.
#[derive(Clone)]
pub struct OpenAiChatConfig {
    /// The API root that `/chat/completions` is appended to, e.g.
    /// `https://api.openai.com/v1` or `http://localhost:8000/v1`.
    pub base_url: String,
    /// The bearer key; `None` sends no `Authorization` header (local servers).
    pub api_key: Option<String>,
    /// The model name sent in each request.
    pub model: String,
    /// The longest wait for the TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// The longest wait from sending the request to the first byte of the
    /// streamed reply (the model's time to first token, plus queueing).
    pub first_byte_timeout: Duration,
    /// The longest silence between two chunks once the reply is streaming.
    pub idle_timeout: Duration,
    /// `max_tokens`, when set.
    pub max_tokens: Option<u32>,
    /// `temperature`, when set.
    pub temperature: Option<f32>,
}

impl fmt::Debug for OpenAiChatConfig {
    // The key never goes into logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiChatConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("connect_timeout", &self.connect_timeout)
            .field("first_byte_timeout", &self.first_byte_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_tokens", &self.max_tokens)
            .field("temperature", &self.temperature)
            .finish()
    }
}

impl OpenAiChatConfig {
    /// OpenAI's public endpoint.
    pub const DEFAULT_BASE_URL: &'static str = "https://api.openai.com/v1";

    /// A config for `model` at `base_url` with the default timeouts
    /// (connect 5 s, first byte 15 s, between chunks 30 s).
    pub fn new(base_url: &str, api_key: Option<String>, model: &str) -> Self {
        OpenAiChatConfig {
            base_url: base_url.to_owned(),
            api_key,
            model: model.to_owned(),
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(30),
            max_tokens: None,
            temperature: None,
        }
    }

    /// Reads `LLM_BASE_URL` (default OpenAI's), `LLM_API_KEY` (optional) and
    /// `LLM_MODEL` (required) from the environment.
    pub fn from_env() -> Result<Self, ProviderError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Like [`OpenAiChatConfig::from_env`], reading variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, ProviderError> {
        let non_empty = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let model = non_empty("LLM_MODEL")
            .ok_or_else(|| ProviderError::Unavailable("LLM_MODEL is not set".into()))?;
        let base = non_empty("LLM_BASE_URL").unwrap_or_else(|| Self::DEFAULT_BASE_URL.into());
        Ok(Self::new(&base, non_empty("LLM_API_KEY"), &model))
    }

    /// The full URL requests go to.
    pub fn completions_url(&self) -> String {
        format!("{}/chat/completions", self.base_url.trim_end_matches('/'))
    }
}

/// A chat LLM behind an OpenAI-compatible `/chat/completions` endpoint.
#[derive(Debug, Clone)]
pub struct OpenAiChat {
    config: OpenAiChatConfig,
    client: reqwest::Client,
}

impl OpenAiChat {
    /// A provider for `config`.
    pub fn new(config: OpenAiChatConfig) -> Result<Self, ProviderError> {
        let client = http_client(config.connect_timeout)?;
        Ok(OpenAiChat { config, client })
    }

    /// A provider configured from the environment (see
    /// [`OpenAiChatConfig::from_env`]).
    pub fn from_env() -> Result<Self, ProviderError> {
        Self::new(OpenAiChatConfig::from_env()?)
    }

    /// The config in use.
    pub fn config(&self) -> &OpenAiChatConfig {
        &self.config
    }

    /// The JSON body sent for `request`.
    pub fn request_body(&self, request: &LlmRequest) -> Value {
        let messages: Vec<Value> = request.messages.iter().map(message_json).collect();
        let mut body = json!({
            "model": self.config.model,
            "messages": messages,
            "stream": true,
        });
        if !request.tools.is_empty() {
            body["tools"] = request
                .tools
                .iter()
                .map(|tool| {
                    json!({
                        "type": "function",
                        "function": {
                            "name": tool.name,
                            "description": tool.description,
                            "parameters": tool.parameters,
                        }
                    })
                })
                .collect();
        }
        if let Some(max_tokens) = self.config.max_tokens {
            body["max_tokens"] = json!(max_tokens);
        }
        if let Some(temperature) = self.config.temperature {
            body["temperature"] = json!(temperature);
        }
        body
    }
}

fn message_json(message: &ChatMessage) -> Value {
    match message {
        ChatMessage::System { content } => json!({"role": "system", "content": content}),
        ChatMessage::User { content } => json!({"role": "user", "content": content}),
        ChatMessage::Assistant {
            content,
            tool_calls,
        } => {
            if tool_calls.is_empty() {
                return json!({"role": "assistant", "content": content});
            }
            let calls: Vec<Value> = tool_calls
                .iter()
                .map(|call| {
                    json!({
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments_json},
                    })
                })
                .collect();
            // A message that only calls tools has null content, as the API returns it.
            let content = if content.is_empty() {
                Value::Null
            } else {
                json!(content)
            };
            json!({"role": "assistant", "content": content, "tool_calls": calls})
        }
        ChatMessage::Tool {
            tool_call_id,
            content,
            ..
        } => json!({"role": "tool", "tool_call_id": tool_call_id, "content": content}),
    }
}

impl LlmProvider for OpenAiChat {
    fn stream_chat(
        &self,
        request: LlmRequest,
    ) -> BoxStream<'static, Result<LlmEvent, ProviderError>> {
        let mut http = self
            .client
            .post(self.config.completions_url())
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(&self.request_body(&request));
        if let Some(key) = &self.config.api_key {
            http = http.bearer_auth(key);
        }
        let state = ChatStream {
            opening: Some(http),
            body: None,
            first_byte_timeout: self.config.first_byte_timeout,
            idle_timeout: self.config.idle_timeout,
            calls: BTreeMap::new(),
            finish_reason: None,
            pending: VecDeque::new(),
            finished: false,
        };
        futures::stream::unfold(state, |mut state| async move {
            loop {
                if let Some(item) = state.pending.pop_front() {
                    return Some((item, state));
                }
                if state.finished {
                    return None;
                }
                if let Err(error) = state.advance().await {
                    state.finished = true;
                    return Some((Err(error), state));
                }
            }
        })
        .boxed()
    }
}

const VENDOR: &str = "chat completions";

/// A tool call being assembled from its fragments.
#[derive(Debug, Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

/// The state of one streamed completion.
struct ChatStream {
    /// The request, until it is sent.
    opening: Option<reqwest::RequestBuilder>,
    body: Option<SseBody>,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
    /// Tool calls by their `index`.
    calls: BTreeMap<u64, PartialCall>,
    finish_reason: Option<String>,
    pending: VecDeque<Result<LlmEvent, ProviderError>>,
    finished: bool,
}

impl ChatStream {
    /// Reads one event from the wire and queues what it means.
    async fn advance(&mut self) -> Result<(), ProviderError> {
        let body = match (&mut self.body, self.opening.take()) {
            (Some(body), _) => body,
            (None, Some(request)) => self.body.insert(
                SseBody::open(request, self.first_byte_timeout, self.idle_timeout, VENDOR).await?,
            ),
            (None, None) => return Err(ProviderError::Closed),
        };
        let Some(event) = body.next_event().await? else {
            // Some servers end the body without `[DONE]`; a reply that got
            // its finish reason is still complete.
            if self.finish_reason.is_some() {
                self.finish();
                return Ok(());
            }
            return Err(ProviderError::Unavailable(format!(
                "{VENDOR}: the stream ended before the reply was complete"
            )));
        };
        let data = event.data.trim();
        if data == "[DONE]" {
            self.finish();
            return Ok(());
        }
        let chunk: Value = serde_json::from_str(data).map_err(|e| {
            ProviderError::BadResponse(format!("{VENDOR}: a chunk is not JSON ({e}): {data}"))
        })?;
        if let Some(error) = chunk.get("error") {
            return Err(ProviderError::Unavailable(format!(
                "{VENDOR}: error mid-stream: {}",
                error_text(error)
            )));
        }
        // A usage-only chunk has no choices.
        let Some(choice) = chunk["choices"].get(0) else {
            return Ok(());
        };
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str()
            && !text.is_empty()
        {
            self.pending.push_back(Ok(LlmEvent::Token(text.to_owned())));
        }
        if let Some(fragments) = delta["tool_calls"].as_array() {
            for (position, fragment) in fragments.iter().enumerate() {
                // Some servers leave out `index` when each chunk holds whole calls.
                let index = fragment["index"].as_u64().unwrap_or(position as u64);
                let call = self.calls.entry(index).or_default();
                if let Some(id) = fragment["id"].as_str()
                    && call.id.is_empty()
                {
                    call.id = id.to_owned();
                }
                let function = &fragment["function"];
                if let Some(name) = function["name"].as_str()
                    && call.name.is_empty()
                {
                    call.name = name.to_owned();
                }
                if let Some(arguments) = function["arguments"].as_str() {
                    call.arguments.push_str(arguments);
                }
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            self.finish_reason = Some(reason.to_owned());
            self.flush_calls()?;
        }
        Ok(())
    }

    /// Queues the assembled tool calls, in index order.
    fn flush_calls(&mut self) -> Result<(), ProviderError> {
        for (index, call) in std::mem::take(&mut self.calls) {
            if call.name.is_empty() {
                return Err(ProviderError::BadResponse(format!(
                    "{VENDOR}: tool call {index} has no function name"
                )));
            }
            let id = if call.id.is_empty() {
                format!("call_{index}")
            } else {
                call.id
            };
            // A call without arguments means "no arguments", which is `{}` in JSON.
            let arguments_json = if call.arguments.trim().is_empty() {
                "{}".to_owned()
            } else {
                call.arguments
            };
            self.pending
                .push_back(Ok(LlmEvent::ToolCall(ToolCallRequest {
                    id,
                    name: call.name,
                    arguments_json,
                })));
        }
        Ok(())
    }

    fn finish(&mut self) {
        if let Err(error) = self.flush_calls() {
            self.pending.push_back(Err(error));
        } else {
            self.pending.push_back(Ok(LlmEvent::Done));
        }
        self.finished = true;
    }
}

// ------------------------------------------------- shared HTTP/SSE plumbing

/// An HTTP client with the connect timeout (and no overall timeout: replies stream).
pub(crate) fn http_client(connect_timeout: Duration) -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .build()
        .map_err(|e| ProviderError::Unavailable(format!("cannot build the HTTP client: {e}")))
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SseEvent {
    /// The `event:` field, if any.
    pub(crate) event: Option<String>,
    /// The `data:` lines, joined with newlines.
    pub(crate) data: String,
}

/// Splits a byte stream into server-sent events (the WHATWG format: fields
/// up to a newline, an empty line ends the event, `:` lines are comments).
#[derive(Debug, Default)]
pub(crate) struct SseDecoder {
    buffer: Vec<u8>,
    event: Option<String>,
    data: String,
    has_data: bool,
    ready: VecDeque<SseEvent>,
}

impl SseDecoder {
    /// Adds bytes from the wire (chunks may split lines and UTF-8 anywhere).
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(offset) = self.buffer[start..].iter().position(|b| *b == b'\n') {
            let end = start + offset;
            let line = self.buffer[start..end]
                .strip_suffix(b"\r")
                .unwrap_or(&self.buffer[start..end]);
            let line = String::from_utf8_lossy(line).into_owned();
            self.line(&line);
            start = end + 1;
        }
        self.buffer.drain(..start);
    }

    /// The end of the stream. An event cut off before its blank line is
    /// discarded, as the SSE standard says: it may be truncated.
    pub(crate) fn finish(&mut self) {
        self.buffer.clear();
        self.event = None;
        self.data.clear();
        self.has_data = false;
    }

    /// The next complete event.
    pub(crate) fn next_event(&mut self) -> Option<SseEvent> {
        self.ready.pop_front()
    }

    fn line(&mut self, line: &str) {
        if line.is_empty() {
            let event = self.event.take();
            if self.has_data {
                self.has_data = false;
                self.ready.push_back(SseEvent {
                    event,
                    data: std::mem::take(&mut self.data),
                });
            }
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            _ => {}
        }
    }
}

/// A streaming HTTP reply read as server-sent events, with timeouts.
pub(crate) struct SseBody {
    body: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    decoder: SseDecoder,
    idle_timeout: Duration,
    ended: bool,
    vendor: &'static str,
}

impl SseBody {
    /// Sends `request` and waits for the reply's first bytes: both within
    /// `first_byte_timeout`. A non-success status becomes an error carrying
    /// the status and the error message from the body.
    pub(crate) async fn open(
        request: reqwest::RequestBuilder,
        first_byte_timeout: Duration,
        idle_timeout: Duration,
        vendor: &'static str,
    ) -> Result<Self, ProviderError> {
        let deadline = tokio::time::Instant::now() + first_byte_timeout;
        let timed_out = || {
            ProviderError::Unavailable(format!(
                "{vendor}: timed out: no reply within {} ms (first-byte timeout)",
                first_byte_timeout.as_millis()
            ))
        };
        let response = tokio::time::timeout_at(deadline, request.send())
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| request_error(vendor, &e))?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            // The error body is short; a server that never finishes it still
            // yields the status.
            let body = tokio::time::timeout(first_byte_timeout, response.text())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            return Err(http_error(
                vendor,
                status.as_u16(),
                status.canonical_reason().unwrap_or(""),
                &body,
                retry_after.as_deref(),
            ));
        }
        let mut body = SseBody {
            body: response.bytes_stream().boxed(),
            decoder: SseDecoder::default(),
            idle_timeout,
            ended: false,
            vendor,
        };
        match tokio::time::timeout_at(deadline, body.body.next()).await {
            Err(_) => return Err(timed_out()),
            Ok(chunk) => body.take(chunk)?,
        }
        Ok(body)
    }

    /// The next event, or `None` at the end of the body.
    pub(crate) async fn next_event(&mut self) -> Result<Option<SseEvent>, ProviderError> {
        loop {
            if let Some(event) = self.decoder.next_event() {
                return Ok(Some(event));
            }
            if self.ended {
                return Ok(None);
            }
            let chunk = tokio::time::timeout(self.idle_timeout, self.body.next())
                .await
                .map_err(|_| {
                    ProviderError::Unavailable(format!(
                        "{}: timed out: the stream stalled for {} ms",
                        self.vendor,
                        self.idle_timeout.as_millis()
                    ))
                })?;
            self.take(chunk)?;
        }
    }

    fn take(&mut self, chunk: Option<reqwest::Result<bytes::Bytes>>) -> Result<(), ProviderError> {
        match chunk {
            Some(Ok(bytes)) => self.decoder.push(&bytes),
            Some(Err(e)) => {
                return Err(ProviderError::Unavailable(format!(
                    "{}: the stream broke: {e}",
                    self.vendor
                )));
            }
            None => {
                self.decoder.finish();
                self.ended = true;
            }
        }
        Ok(())
    }
}

/// A failed request (no HTTP status) as a provider error.
pub(crate) fn request_error(vendor: &str, error: &reqwest::Error) -> ProviderError {
    let what = if error.is_connect() {
        "cannot connect"
    } else if error.is_timeout() {
        "timed out"
    } else {
        "request failed"
    };
    ProviderError::Unavailable(format!("{vendor}: {what}: {error}"))
}

/// An HTTP error status as a provider error: `Unavailable` for the ones
/// worth retrying later (408, 429, 5xx, Anthropic's 529), `BadResponse` for
/// the rest (bad key, bad request); the text names the status and the
/// server's own error message.
pub(crate) fn http_error(
    vendor: &str,
    status: u16,
    reason: &str,
    body: &str,
    retry_after: Option<&str>,
) -> ProviderError {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .map(|json| error_text(&json))
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| clip(body.trim(), 300).to_owned());
    let mut text = format!("{vendor}: HTTP {status} {reason}: {message}");
    if let Some(retry_after) = retry_after {
        text.push_str(&format!(" (retry after {retry_after} s)"));
    }
    if status == 408 || status == 429 || status >= 500 {
        ProviderError::Unavailable(text)
    } else {
        ProviderError::BadResponse(text)
    }
}

/// The human-readable message of a vendor's JSON error, wherever it keeps it:
/// `{"error": {"message"}}` (OpenAI, Anthropic), `{"err_msg"}` (Deepgram),
/// `{"message"}`, or `{"error": "text"}`.
pub(crate) fn error_text(json: &Value) -> String {
    let candidates = [
        &json["error"]["message"],
        &json["message"],
        &json["err_msg"],
        &json["error"],
        &json["description"],
    ];
    let message = candidates
        .iter()
        .find_map(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    let kind = json["error"]["type"]
        .as_str()
        .or_else(|| json["err_code"].as_str());
    match kind {
        Some(kind) if !message.is_empty() => format!("{message} ({kind})"),
        Some(kind) => kind.to_owned(),
        None if message.is_empty() && !json.is_null() => clip(&json.to_string(), 300).to_owned(),
        None => message,
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
pub(crate) fn clip(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut decoder = SseDecoder::default();
        let mut events = Vec::new();
        for chunk in chunks {
            decoder.push(chunk);
            while let Some(event) = decoder.next_event() {
                events.push(event);
            }
        }
        decoder.finish();
        while let Some(event) = decoder.next_event() {
            events.push(event);
        }
        events
    }

    #[test]
    fn sse_events_survive_any_chunking() {
        let wire = "event: message_start\r\ndata: {\"a\":\"h\u{e9}\"}\r\n\r\n: keep-alive comment\n\ndata: one\ndata: two\n\ndata:[DONE]\n\ndata: {\"cut";
        let whole = decode(&[wire.as_bytes()]);
        assert_eq!(
            whole,
            vec![
                SseEvent {
                    event: Some("message_start".into()),
                    data: "{\"a\":\"h\u{e9}\"}".into()
                },
                SseEvent {
                    event: None,
                    data: "one\ntwo".into()
                },
                SseEvent {
                    event: None,
                    data: "[DONE]".into()
                },
            ]
        );
        // Byte by byte, splitting the two-byte 'é' and every CRLF.
        let bytes: Vec<&[u8]> = wire.as_bytes().chunks(1).collect();
        assert_eq!(decode(&bytes), whole);
    }

    #[test]
    fn http_errors_name_status_and_message() {
        let error = http_error(
            "x",
            401,
            "Unauthorized",
            r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error"}}"#,
            None,
        );
        assert_eq!(
            error,
            ProviderError::BadResponse(
                "x: HTTP 401 Unauthorized: Incorrect API key provided (invalid_request_error)"
                    .into()
            )
        );
        let error = http_error("x", 503, "Service Unavailable", "upstream down", Some("2"));
        assert_eq!(
            error,
            ProviderError::Unavailable(
                "x: HTTP 503 Service Unavailable: upstream down (retry after 2 s)".into()
            )
        );
        assert_eq!(clip("h\u{e9}llo", 2), "h");
    }
}
