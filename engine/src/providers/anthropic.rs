//! An [`LlmProvider`] for Anthropic's Messages API with streaming and tool
//! use (`POST {base}/v1/messages`, `anthropic-version: 2023-06-01`).
//!
//! The reply streams as named server-sent events: `message_start`, then per
//! content block `content_block_start` (a `text` block, or a `tool_use` block
//! with its `id` and `name`), `content_block_delta`s (`text_delta` text, or
//! `input_json_delta` pieces of the tool input's JSON), `content_block_stop`;
//! then `message_delta` (the `stop_reason`) and `message_stop`. `ping`s may
//! come at any time, and an `error` event ends the stream.
//!
//! The request differs from the OpenAI shape: the system prompt is a
//! top-level field, tool results go back as `tool_result` blocks in a user
//! message, and consecutive messages of one role are merged into one (the
//! API wants user and assistant turns to alternate).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use futures::stream::BoxStream;
use serde_json::{Value, json};

use futures::future::BoxFuture;

use super::http::{self, Outputs, ReplyFormat, SseEvent, error_text, http_client};
use super::structured::{ResultSchema, StructuredCompletion, post_json};
use super::{ChatMessage, LlmEvent, LlmProvider, LlmRequest, ProviderError, ToolCallRequest};

/// How Anthropic's API is reached, and the model to ask.
#[derive(Clone)]
pub struct AnthropicConfig {
    /// The API root that `/v1/messages` is appended to.
    pub base_url: String,
    /// The key sent as `x-api-key`.
    pub api_key: String,
    /// The model name.
    pub model: String,
    /// `max_tokens` (required by the API).
    pub max_tokens: u32,
    /// `temperature`, when set.
    pub temperature: Option<f32>,
    /// The longest wait for the TCP and TLS connection.
    pub connect_timeout: Duration,
    /// The longest wait from sending the request to the first byte of the reply.
    pub first_byte_timeout: Duration,
    /// The longest silence between two chunks once the reply is streaming
    /// (the API sends `ping`s, so a long silence means a dead connection).
    pub idle_timeout: Duration,
}

impl fmt::Debug for AnthropicConfig {
    // The key never goes into logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &"<redacted>")
            .field("model", &self.model)
            .field("max_tokens", &self.max_tokens)
            .field("temperature", &self.temperature)
            .field("connect_timeout", &self.connect_timeout)
            .field("first_byte_timeout", &self.first_byte_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

impl AnthropicConfig {
    /// Anthropic's public endpoint.
    pub const DEFAULT_BASE_URL: &'static str = "https://api.anthropic.com";
    /// The model used when none is configured.
    pub const DEFAULT_MODEL: &'static str = "claude-sonnet-4-5";
    /// The API version this adapter speaks.
    pub const API_VERSION: &'static str = "2023-06-01";

    /// A config for `model` with the public endpoint, 1024 max tokens and
    /// the default timeouts (connect 5 s, first byte 15 s, between chunks 30 s).
    pub fn new(api_key: &str, model: &str) -> Self {
        AnthropicConfig {
            base_url: Self::DEFAULT_BASE_URL.to_owned(),
            api_key: api_key.to_owned(),
            model: model.to_owned(),
            max_tokens: 1024,
            temperature: None,
            connect_timeout: Duration::from_secs(5),
            first_byte_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(30),
        }
    }

    /// Reads `ANTHROPIC_API_KEY` (required), `ANTHROPIC_MODEL` and
    /// `ANTHROPIC_BASE_URL` (optional) from the environment.
    pub fn from_env() -> Result<Self, ProviderError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Like [`AnthropicConfig::from_env`], reading variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, ProviderError> {
        let non_empty = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let key = non_empty("ANTHROPIC_API_KEY")
            .ok_or_else(|| ProviderError::Unavailable("ANTHROPIC_API_KEY is not set".into()))?;
        let model = non_empty("ANTHROPIC_MODEL").unwrap_or_else(|| Self::DEFAULT_MODEL.into());
        let mut config = Self::new(&key, &model);
        if let Some(base) = non_empty("ANTHROPIC_BASE_URL") {
            config.base_url = base;
        }
        Ok(config)
    }

    /// The full URL requests go to.
    pub fn messages_url(&self) -> String {
        format!("{}/v1/messages", self.base_url.trim_end_matches('/'))
    }
}

/// A chat LLM behind Anthropic's Messages API.
#[derive(Debug, Clone)]
pub struct AnthropicChat {
    config: AnthropicConfig,
    client: reqwest::Client,
}

impl AnthropicChat {
    /// A provider for `config`.
    pub fn new(config: AnthropicConfig) -> Result<Self, ProviderError> {
        let client = http_client(config.connect_timeout)?;
        Ok(AnthropicChat { config, client })
    }

    /// A provider configured from the environment (see [`AnthropicConfig::from_env`]).
    pub fn from_env() -> Result<Self, ProviderError> {
        Self::new(AnthropicConfig::from_env()?)
    }

    /// The config in use.
    pub fn config(&self) -> &AnthropicConfig {
        &self.config
    }

    /// The JSON body sent for `request`: system messages joined into the
    /// top-level `system`, the rest as alternating user and assistant
    /// messages of content blocks.
    pub fn request_body(&self, request: &LlmRequest) -> Value {
        let system: Vec<&str> = request
            .messages
            .iter()
            .filter_map(|m| match m {
                ChatMessage::System { content } if !content.trim().is_empty() => {
                    Some(content.as_str())
                }
                _ => None,
            })
            .collect();
        let mut body = json!({
            "model": self.config.model,
            "max_tokens": self.config.max_tokens,
            "messages": messages_json(&request.messages),
            "stream": true,
        });
        if !system.is_empty() {
            body["system"] = json!(system.join("\n\n"));
        }
        if !request.tools.is_empty() {
            body["tools"] = request
                .tools
                .iter()
                .map(|tool| {
                    json!({
                        "name": tool.name,
                        "description": tool.description,
                        "input_schema": tool.parameters,
                    })
                })
                .collect();
        }
        if let Some(temperature) = self.config.temperature {
            body["temperature"] = json!(temperature);
        }
        body
    }
}

/// The tool `complete_json` forces the model to call.
pub const RESULT_TOOL: &str = "record_result";

impl AnthropicChat {
    /// The JSON body [`StructuredCompletion::complete_json`] sends: the
    /// instructions as `system`, the material as the user message, and one
    /// tool ([`RESULT_TOOL`]) whose `input_schema` is the schema's strict
    /// form, forced through `tool_choice`.
    pub fn structured_body(&self, system: &str, user: &str, schema: &ResultSchema) -> Value {
        let mut body = json!({
            "model": self.config.model,
            "max_tokens": self.config.max_tokens,
            "messages": [{"role": "user", "content": [{"type": "text", "text": user}]}],
            "tools": [{
                "name": RESULT_TOOL,
                "description": "Records the result extracted from the text.",
                "input_schema": schema.strict_json(),
            }],
            "tool_choice": {"type": "tool", "name": RESULT_TOOL},
        });
        if !system.trim().is_empty() {
            body["system"] = json!(system);
        }
        if let Some(temperature) = self.config.temperature {
            body["temperature"] = json!(temperature);
        }
        body
    }
}

/// Structured output through a forced tool call, in one non-streamed
/// request; the answer is the tool's `input`. The whole exchange must fit in
/// the first-byte plus the idle timeout. Anthropic does not enforce the
/// schema, so the answer is checked against it (a mismatch is a
/// `BadResponse`), as is one cut off by `max_tokens`.
impl StructuredCompletion for AnthropicChat {
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
        let http = self
            .client
            .post(self.config.messages_url())
            .header("x-api-key", &self.config.api_key)
            .header("anthropic-version", AnthropicConfig::API_VERSION)
            .json(&self.structured_body(system, user, &schema));
        let timeout = self.config.first_byte_timeout + self.config.idle_timeout;
        Box::pin(async move {
            let reply = post_json(http, timeout, VENDOR).await?;
            if reply["stop_reason"] == "max_tokens" {
                return Err(ProviderError::BadResponse(format!(
                    "{VENDOR}: the answer was cut off by max_tokens"
                )));
            }
            let input = reply["content"]
                .as_array()
                .and_then(|blocks| {
                    blocks
                        .iter()
                        .find(|b| b["type"] == "tool_use" && b["name"] == RESULT_TOOL)
                })
                .map(|block| block["input"].clone())
                .ok_or_else(|| {
                    ProviderError::BadResponse(format!(
                        "{VENDOR}: the reply has no {RESULT_TOOL} tool_use block"
                    ))
                })?;
            schema.check_answer(VENDOR, &input)?;
            Ok(input)
        })
    }
}

/// The history as Messages API messages: each message becomes content
/// blocks, and consecutive blocks of one role share a message.
fn messages_json(history: &[ChatMessage]) -> Vec<Value> {
    let mut messages: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for message in history {
        let (role, blocks) = match message {
            ChatMessage::System { .. } => continue,
            ChatMessage::User { content } => ("user", text_block(content).into_iter().collect()),
            ChatMessage::Assistant {
                content,
                tool_calls,
            } => {
                let mut blocks: Vec<Value> = text_block(content).into_iter().collect();
                blocks.extend(tool_calls.iter().map(|call| {
                    json!({
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        "input": tool_input(&call.arguments_json),
                    })
                }));
                ("assistant", blocks)
            }
            ChatMessage::Tool {
                tool_call_id,
                content,
                ..
            } => (
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": tool_call_id,
                    "content": content,
                })],
            ),
        };
        // The API rejects empty text blocks and empty messages.
        if blocks.is_empty() {
            continue;
        }
        match messages.last_mut() {
            Some((last_role, last_blocks)) if *last_role == role => last_blocks.extend(blocks),
            _ => messages.push((role, blocks)),
        }
    }
    messages
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect()
}

fn text_block(text: &str) -> Option<Value> {
    (!text.trim().is_empty()).then(|| json!({"type": "text", "text": text}))
}

/// A tool call's arguments as the `input` object the API wants. Arguments
/// that are not a JSON object (a reply cut off mid-call) are passed along as
/// text rather than dropped, so the history stays valid and honest.
fn tool_input(arguments_json: &str) -> Value {
    if arguments_json.trim().is_empty() {
        return json!({});
    }
    match serde_json::from_str::<Value>(arguments_json) {
        Ok(value) if value.is_object() => value,
        _ => json!({ "invalid_arguments_json": arguments_json }),
    }
}

impl LlmProvider for AnthropicChat {
    fn stream_chat(
        &self,
        request: LlmRequest,
    ) -> BoxStream<'static, Result<LlmEvent, ProviderError>> {
        let http = self
            .client
            .post(self.config.messages_url())
            .header("x-api-key", &self.config.api_key)
            .header("anthropic-version", AnthropicConfig::API_VERSION)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .json(&self.request_body(&request));
        http::llm_stream(
            http,
            self.config.first_byte_timeout,
            self.config.idle_timeout,
            VENDOR,
            MessageFormat::default(),
        )
    }
}

const VENDOR: &str = "anthropic messages";

/// A `tool_use` block being assembled.
#[derive(Debug)]
struct ToolBlock {
    id: String,
    name: String,
    /// The `input` given whole in `content_block_start` (normally `{}`).
    initial_input: Value,
    /// The `input_json_delta` pieces so far.
    partial_json: String,
}

/// How a streamed message reads: named events, text blocks spoken as they
/// come, `tool_use` blocks assembled and reported at their block's stop.
#[derive(Debug, Default)]
struct MessageFormat {
    /// Open `tool_use` blocks by their content-block index.
    tool_blocks: BTreeMap<u64, ToolBlock>,
}

impl ReplyFormat for MessageFormat {
    fn on_event(&mut self, event: SseEvent, out: &mut Outputs) -> Result<bool, ProviderError> {
        let data: Value = serde_json::from_str(&event.data).map_err(|e| {
            ProviderError::BadResponse(format!(
                "{VENDOR}: an event is not JSON ({e}): {}",
                event.data
            ))
        })?;
        // The `type` in the data names the event; the `event:` line repeats it.
        let kind = data["type"]
            .as_str()
            .map(str::to_owned)
            .or(event.event)
            .unwrap_or_default();
        match kind.as_str() {
            "content_block_start" => {
                let block = &data["content_block"];
                if block["type"] == "tool_use" {
                    let index = block_index(&data)?;
                    let id = block["id"].as_str().unwrap_or_default().to_owned();
                    let name = block["name"].as_str().unwrap_or_default().to_owned();
                    if id.is_empty() || name.is_empty() {
                        return Err(ProviderError::BadResponse(format!(
                            "{VENDOR}: a tool_use block without id or name: {block}"
                        )));
                    }
                    self.tool_blocks.insert(
                        index,
                        ToolBlock {
                            id,
                            name,
                            initial_input: block["input"].clone(),
                            partial_json: String::new(),
                        },
                    );
                } else if let Some(text) = block["text"].as_str()
                    && !text.is_empty()
                {
                    out.push_back(Ok(LlmEvent::Token(text.to_owned())));
                }
            }
            "content_block_delta" => {
                let delta = &data["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => {
                        if let Some(text) = delta["text"].as_str()
                            && !text.is_empty()
                        {
                            out.push_back(Ok(LlmEvent::Token(text.to_owned())));
                        }
                    }
                    Some("input_json_delta") => {
                        let index = block_index(&data)?;
                        let Some(block) = self.tool_blocks.get_mut(&index) else {
                            return Err(ProviderError::BadResponse(format!(
                                "{VENDOR}: input_json_delta for block {index}, which is not a tool_use block"
                            )));
                        };
                        block
                            .partial_json
                            .push_str(delta["partial_json"].as_str().unwrap_or_default());
                    }
                    // Thinking, signatures, citations: nothing to say aloud.
                    _ => {}
                }
            }
            "content_block_stop" => {
                let index = block_index(&data)?;
                if let Some(block) = self.tool_blocks.remove(&index) {
                    let arguments_json = if !block.partial_json.trim().is_empty() {
                        block.partial_json
                    } else if block.initial_input.is_object() {
                        block.initial_input.to_string()
                    } else {
                        "{}".to_owned()
                    };
                    out.push_back(Ok(LlmEvent::ToolCall(ToolCallRequest {
                        id: block.id,
                        name: block.name,
                        arguments_json,
                    })));
                }
            }
            "message_stop" => {
                out.push_back(Ok(LlmEvent::Done));
                return Ok(true);
            }
            "error" => {
                let error = &data["error"];
                let text = format!("{VENDOR}: error mid-stream: {}", error_text(&data));
                // Overload and API errors are worth retrying; the rest are not.
                return Err(match error["type"].as_str() {
                    Some("overloaded_error" | "api_error" | "rate_limit_error") => {
                        ProviderError::Unavailable(text)
                    }
                    _ => ProviderError::BadResponse(text),
                });
            }
            // message_start, message_delta, ping, and event types added later.
            _ => {}
        }
        Ok(false)
    }

    fn on_body_end(&mut self, _out: &mut Outputs) -> Result<(), ProviderError> {
        Err(ProviderError::Unavailable(format!(
            "{VENDOR}: the stream ended before message_stop"
        )))
    }
}

fn block_index(data: &Value) -> Result<u64, ProviderError> {
    data["index"].as_u64().ok_or_else(|| {
        ProviderError::BadResponse(format!("{VENDOR}: an event without a block index: {data}"))
    })
}
