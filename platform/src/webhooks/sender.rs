//! One delivery attempt over HTTP: a signed POST through the SSRF guard,
//! with a total timeout, no redirects followed, no proxy (a proxy would
//! resolve names past the guard) and the answer's body read up to a cap.
//! Every failure becomes a short `last_error` a user can act on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::safety::{self, GuardedResolver, Refused};
use super::signature;

/// The most of a response body read (the rest is dropped unread).
pub const MAX_RESPONSE_BYTES: usize = 4096;

/// The HTTP side of the workers.
#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
    timeout: Duration,
    allow_private: bool,
}

/// What one delivery is.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Destination.
    pub url: &'a str,
    /// The exact body.
    pub body: &'a str,
    /// The secret to sign with.
    pub secret: &'a str,
    /// The signature's time, unix seconds.
    pub timestamp: i64,
    /// The delivery id (`CallingBox-Event-Id`).
    pub event_id: &'a str,
    /// The event type.
    pub event_type: &'a str,
    /// The call, if any (`X-CallingBox-Call-Id`).
    pub call_id: Option<&'a str>,
}

/// How it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The HTTP status, if an answer came.
    pub status: Option<u16>,
    /// `None` on a 2xx.
    pub error: Option<String>,
    /// The first bytes of the answer's body (lossy UTF-8).
    pub excerpt: Option<String>,
    /// How long it took.
    pub elapsed: Duration,
}

/// The HTTP client could not be built (TLS backend).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the webhook HTTP client: {0}")]
pub struct BuildError(#[from] reqwest::Error);

impl Sender {
    /// A sender with `timeout` per attempt (connect, send, answer, body).
    pub fn new(timeout: Duration, allow_private: bool) -> Result<Sender, BuildError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver { allow_private }))
            .user_agent(concat!("CallingBox-Webhooks/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(Sender {
            client,
            timeout,
            allow_private,
        })
    }

    /// The per-attempt timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Makes one attempt.
    pub async fn send(&self, request: &Request<'_>) -> Outcome {
        let started = Instant::now();
        let failed = |error: String| Outcome {
            status: None,
            error: Some(error),
            excerpt: None,
            elapsed: started.elapsed(),
        };
        let url = match url::Url::parse(request.url) {
            Ok(url) => url,
            Err(err) => return failed(format!("refused: invalid URL: {err}")),
        };
        if let Err(err) = safety::check_url(&url, self.allow_private) {
            return failed(err);
        }
        let signature =
            signature::signature_header(request.secret, request.timestamp, request.body.as_bytes());
        let mut builder = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(signature::SIGNATURE_HEADER, signature)
            .header("CallingBox-Event-Id", request.event_id)
            .header("CallingBox-Event-Type", request.event_type)
            .header("X-CallingBox-Event", request.event_type);
        if let Some(call_id) = request.call_id {
            builder = builder.header("X-CallingBox-Call-Id", call_id);
        }
        let mut response = match builder.body(request.body.to_owned()).send().await {
            Ok(response) => response,
            Err(err) => return failed(self.describe(&err)),
        };
        let status = response.status();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        // The status decides; the body is only an excerpt, so an error
        // while reading it ends the read, not the attempt.
        while body.len() < MAX_RESPONSE_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        body.truncate(MAX_RESPONSE_BYTES);
        let excerpt = (!body.is_empty()).then(|| String::from_utf8_lossy(&body).into_owned());
        let reason = status.canonical_reason().unwrap_or("");
        let error = if status.is_success() {
            // The receiver answered 2xx; a body cut short does not undo that.
            None
        } else if status.is_redirection() {
            Some(format!(
                "HTTP {} {reason}: redirects are not followed{}",
                status.as_u16(),
                location
                    .map(|l| format!(" (Location: {l})"))
                    .unwrap_or_default()
            ))
        } else {
            Some(
                format!("HTTP {} {reason}", status.as_u16())
                    .trim_end()
                    .to_owned(),
            )
        };
        Outcome {
            status: Some(status.as_u16()),
            error,
            excerpt,
            elapsed: started.elapsed(),
        }
    }

    /// A short message for a transport error.
    fn describe(&self, err: &reqwest::Error) -> String {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
        let mut innermost = err.to_string();
        while let Some(current) = source {
            if let Some(refused) = current.downcast_ref::<Refused>() {
                return refused.to_string();
            }
            innermost = current.to_string();
            source = current.source();
        }
        if err.is_timeout() {
            format!(
                "timeout: no complete answer within {} ms",
                self.timeout.as_millis()
            )
        } else if err.is_connect() {
            format!("connection failed: {innermost}")
        } else {
            format!("request failed: {innermost}")
        }
    }
}
