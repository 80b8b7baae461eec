//! HTTP and server-sent-events plumbing shared by the HTTP adapters: the
//! client, an SSE reader with first-byte and idle timeouts, the mapping of
//! HTTP and transport errors to [`ProviderError`], and [`llm_stream`], which
//! turns a vendor's [`ReplyFormat`] into an [`LlmEvent`] stream.

use std::collections::VecDeque;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::Value;

use super::{LlmEvent, ProviderError};

/// The events an LLM reply produces, queued for the stream's reader.
pub(crate) type Outputs = VecDeque<Result<LlmEvent, ProviderError>>;

/// What one vendor's streamed reply means, event by event.
pub(crate) trait ReplyFormat: Send + 'static {
    /// Reads one event and queues what it means; `Ok(true)` once the reply
    /// is complete (its last outputs queued).
    fn on_event(&mut self, event: SseEvent, out: &mut Outputs) -> Result<bool, ProviderError>;

    /// The body ended before the format saw its end: queue a complete ending
    /// if the reply still counts as whole, or say why it does not.
    fn on_body_end(&mut self, out: &mut Outputs) -> Result<(), ProviderError>;
}

/// Sends `request` when first polled and streams the reply as `format`
/// reads it. An error ends the stream after it is yielded; dropping the
/// stream cancels the request.
pub(crate) fn llm_stream<F: ReplyFormat>(
    request: reqwest::RequestBuilder,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
    vendor: &'static str,
    format: F,
) -> BoxStream<'static, Result<LlmEvent, ProviderError>> {
    let state = Reply {
        opening: Some(request),
        body: None,
        first_byte_timeout,
        idle_timeout,
        vendor,
        format,
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

/// One streamed reply in progress.
struct Reply<F> {
    /// The request, until it is sent.
    opening: Option<reqwest::RequestBuilder>,
    body: Option<SseBody>,
    first_byte_timeout: Duration,
    idle_timeout: Duration,
    vendor: &'static str,
    format: F,
    pending: Outputs,
    finished: bool,
}

impl<F: ReplyFormat> Reply<F> {
    /// Reads one event from the wire and queues what it means.
    async fn advance(&mut self) -> Result<(), ProviderError> {
        let body = match (&mut self.body, self.opening.take()) {
            (Some(body), _) => body,
            (None, Some(request)) => self.body.insert(
                SseBody::open(
                    request,
                    self.first_byte_timeout,
                    self.idle_timeout,
                    self.vendor,
                )
                .await?,
            ),
            (None, None) => return Err(ProviderError::Closed),
        };
        match body.next_event().await? {
            Some(event) => self.finished = self.format.on_event(event, &mut self.pending)?,
            None => {
                self.format.on_body_end(&mut self.pending)?;
                self.finished = true;
            }
        }
        Ok(())
    }
}

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
