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

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use futures::stream::BoxStream;
use serde_json::{Value, json};

use futures::future::BoxFuture;

use super::http::{self, Outputs, ReplyFormat, SseEvent, error_text, http_client};
use super::structured::{ResultSchema, StructuredCompletion, post_json};
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

impl OpenAiChat {
    /// The JSON body [`StructuredCompletion::complete_json`] sends: the
    /// instructions and the material as a system and a user message, and a
    /// strict `json_schema` response format holding the schema in its
    /// strict form ([`ResultSchema::strict_json`]).
    pub fn structured_body(&self, system: &str, user: &str, schema: &ResultSchema) -> Value {
        let mut body = json!({
            "model": self.config.model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": user},
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": "result",
                    "strict": true,
                    "schema": schema.strict_json(),
                }
            },
        });
        if let Some(max_tokens) = self.config.max_tokens {
            body["max_tokens"] = json!(max_tokens);
        }
        if let Some(temperature) = self.config.temperature {
            body["temperature"] = json!(temperature);
        }
        body
    }
}

/// Structured output through `response_format` `json_schema` with
/// `strict: true`, in one non-streamed request. The whole exchange must fit
/// in the first-byte plus the idle timeout. A refusal, an answer cut off by
/// the token limit, or an answer off the schema is a `BadResponse`.
impl StructuredCompletion for OpenAiChat {
    fn complete_json(
        &self,
        system: &str,
        user: &str,
        schema: &Value,
    ) -> BoxFuture<'static, Result<Value, ProviderError>> {
        let schema = match ResultSchema::parse(schema) {
            Ok(schema) => schema,
            Err(error) => return Box::pin(async move { Err(error.into()) }),
        };
        let mut http = self
            .client
            .post(self.config.completions_url())
            .json(&self.structured_body(system, user, &schema));
        if let Some(key) = &self.config.api_key {
            http = http.bearer_auth(key);
        }
        let timeout = self.config.first_byte_timeout + self.config.idle_timeout;
        Box::pin(async move {
            let reply = post_json(http, timeout, VENDOR).await?;
            let choice = &reply["choices"][0];
            let message = &choice["message"];
            if let Some(refusal) = message["refusal"].as_str() {
                return Err(ProviderError::BadResponse(format!(
                    "{VENDOR}: the model refused: {refusal}"
                )));
            }
            if choice["finish_reason"] == "length" {
                return Err(ProviderError::BadResponse(format!(
                    "{VENDOR}: the answer was cut off by the token limit"
                )));
            }
            let content = message["content"].as_str().ok_or_else(|| {
                ProviderError::BadResponse(format!("{VENDOR}: the reply has no message content"))
            })?;
            let value: Value = serde_json::from_str(content).map_err(|e| {
                ProviderError::BadResponse(format!(
                    "{VENDOR}: the answer is not JSON ({e}): {}",
                    http::clip(content, 300)
                ))
            })?;
            schema.check_answer(VENDOR, &value)?;
            Ok(value)
        })
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
        http::llm_stream(
            http,
            self.config.first_byte_timeout,
            self.config.idle_timeout,
            VENDOR,
            ChatFormat::default(),
        )
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

/// How a streamed completion reads: text deltas, tool calls assembled
/// from fragments and reported at the finish reason.
#[derive(Debug, Default)]
struct ChatFormat {
    /// Tool calls by their `index`.
    calls: BTreeMap<u64, PartialCall>,
    finish_reason: Option<String>,
}

impl ReplyFormat for ChatFormat {
    fn on_event(&mut self, event: SseEvent, out: &mut Outputs) -> Result<bool, ProviderError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.finish(out);
            return Ok(true);
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
            return Ok(false);
        };
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str()
            && !text.is_empty()
        {
            out.push_back(Ok(LlmEvent::Token(text.to_owned())));
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
            self.flush_calls(out)?;
        }
        Ok(false)
    }

    fn on_body_end(&mut self, out: &mut Outputs) -> Result<(), ProviderError> {
        // Some servers end the body without `[DONE]`; a reply that got its
        // finish reason is still complete.
        if self.finish_reason.is_none() {
            return Err(ProviderError::Unavailable(format!(
                "{VENDOR}: the stream ended before the reply was complete"
            )));
        }
        self.finish(out);
        Ok(())
    }
}

impl ChatFormat {
    /// Queues the assembled tool calls, in index order.
    fn flush_calls(&mut self, out: &mut Outputs) -> Result<(), ProviderError> {
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
            out.push_back(Ok(LlmEvent::ToolCall(ToolCallRequest {
                id,
                name: call.name,
                arguments_json,
            })));
        }
        Ok(())
    }

    /// Queues the remaining calls and the end of the reply.
    fn finish(&mut self, out: &mut Outputs) {
        match self.flush_calls(out) {
            Ok(()) => out.push_back(Ok(LlmEvent::Done)),
            Err(error) => out.push_back(Err(error)),
        }
    }
}
