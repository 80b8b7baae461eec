//! Runs HTTP tools: POST the model's arguments as JSON to the tool's URL with
//! its headers, and take the JSON response (size-capped) as the result.

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};

use super::HttpTool;

/// Why an HTTP tool call failed. The message is what the model is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpToolError {
    /// A configured header is not a valid HTTP header.
    #[error("invalid header {0:?}")]
    InvalidHeader(String),
    /// The request could not be sent or the connection failed.
    #[error("request failed: {0}")]
    Request(String),
    /// The endpoint answered with a non-2xx status.
    #[error("the tool endpoint answered HTTP {status}")]
    Status {
        /// The HTTP status code.
        status: u16,
    },
    /// The response body was larger than allowed.
    #[error("the tool response is larger than {limit} bytes")]
    TooLarge {
        /// The cap in bytes.
        limit: usize,
    },
    /// The response body was not JSON.
    #[error("the tool response is not JSON: {0}")]
    NotJson(String),
}

/// Sends HTTP tool requests over one shared connection pool.
#[derive(Debug, Clone)]
pub struct HttpToolRunner {
    client: reqwest::Client,
    max_response_bytes: usize,
}

impl HttpToolRunner {
    /// A runner that accepts responses up to `max_response_bytes`.
    pub fn new(client: reqwest::Client, max_response_bytes: usize) -> Self {
        HttpToolRunner {
            client,
            max_response_bytes,
        }
    }

    /// POSTs `arguments` to the tool. The caller enforces the deadline (so it
    /// runs on the engine's clock); an empty 2xx body is the result `null`.
    pub async fn call(
        &self,
        tool: &HttpTool,
        arguments: &serde_json::Value,
    ) -> Result<serde_json::Value, HttpToolError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &tool.headers {
            let header_name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| HttpToolError::InvalidHeader(name.clone()))?;
            let header_value = HeaderValue::from_str(value)
                .map_err(|_| HttpToolError::InvalidHeader(name.clone()))?;
            headers.insert(header_name, header_value);
        }
        let mut response = self
            .client
            .post(&tool.url)
            .headers(headers)
            .json(arguments)
            .send()
            .await
            .map_err(|e| HttpToolError::Request(e.without_url().to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(HttpToolError::Status {
                status: status.as_u16(),
            });
        }
        let limit = self.max_response_bytes;
        if response
            .content_length()
            .is_some_and(|len| len > limit as u64)
        {
            return Err(HttpToolError::TooLarge { limit });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| HttpToolError::Request(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > limit {
                return Err(HttpToolError::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&body).map_err(|e| HttpToolError::NotJson(e.to_string()))
    }
}
