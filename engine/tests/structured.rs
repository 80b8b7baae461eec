//! `complete_json` (structured output) of the cloud adapters against local
//! servers that speak each vendor's documented JSON API, asserting the exact
//! request bodies; and of the scripted LLM.

use std::time::Duration;

use axum::http::{StatusCode, header};
use callingbox_engine::providers::ProviderError;
use callingbox_engine::providers::anthropic::{AnthropicChat, AnthropicConfig, RESULT_TOOL};
use callingbox_engine::providers::openai_chat::{OpenAiChat, OpenAiChatConfig};
use callingbox_engine::providers::scripted::{LlmLatency, ScriptedLlm};
use callingbox_engine::providers::structured::StructuredCompletion;
mod common;

use common::mock_http::{Reply, Server, serve};
use serde_json::{Value, json};

/// The schema the control plane might send for a call's `returns`:
/// `callback_time` is optional.
fn returns_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "The caller's name"},
            "party_size": {"type": "integer"},
            "confirmed": {"type": "boolean"},
            "callback_time": {"type": "string"}
        },
        "required": ["name", "party_size", "confirmed"]
    })
}

/// The same schema in the strict form every backend is sent.
fn strict_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "callback_time": {"type": ["string", "null"]},
            "confirmed": {"type": "boolean"},
            "name": {"type": "string", "description": "The caller's name"},
            "party_size": {"type": "integer"}
        },
        "required": ["callback_time", "confirmed", "name", "party_size"],
        "additionalProperties": false
    })
}

const SYSTEM: &str = "Extract the booking from the call.";
const TRANSCRIPT: &str = "Caller: A table for 4 please, name is Ana.\nAgent: Booked.";

fn answer() -> Value {
    json!({"name": "Ana", "party_size": 4, "confirmed": true, "callback_time": null})
}

// ------------------------------------------------------------------ OpenAI

fn openai(server: &Server) -> OpenAiChat {
    let mut config = OpenAiChatConfig::new(
        &format!("{}/v1", server.base_url),
        Some("sk-test-key".into()),
        "gpt-4o-mini",
    );
    config.first_byte_timeout = Duration::from_millis(300);
    config.idle_timeout = Duration::from_millis(300);
    config.temperature = Some(0.0);
    OpenAiChat::new(config).expect("provider")
}

fn openai_reply(content: &str, finish_reason: &str) -> Reply {
    Reply::Json(
        StatusCode::OK,
        json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "gpt-4o-mini",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": null},
                "finish_reason": finish_reason
            }],
            "usage": {"prompt_tokens": 80, "completion_tokens": 20, "total_tokens": 100}
        }),
    )
}

#[tokio::test]
async fn openai_asks_for_a_strict_json_schema_and_returns_the_object() {
    let server = serve(
        "/v1/chat/completions",
        openai_reply(&answer().to_string(), "stop"),
    )
    .await;
    let value = openai(&server)
        .complete_json(SYSTEM, TRANSCRIPT, &returns_schema())
        .await
        .expect("an answer");
    assert_eq!(value, answer());
    let received = server.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].path, "/v1/chat/completions");
    assert_eq!(
        received[0]
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes()),
        Some(&b"Bearer sk-test-key"[..])
    );
    assert_eq!(
        received[0].body,
        json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": TRANSCRIPT}
            ],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "result", "strict": true, "schema": strict_schema()}
            },
            "temperature": 0.0
        })
    );
}

#[tokio::test]
async fn openai_refusals_cut_answers_and_answers_off_the_schema_are_errors() {
    let refusal = Reply::Json(
        StatusCode::OK,
        json!({"choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": null, "refusal": "I can't help with that."}}]}),
    );
    let server = serve("/v1/chat/completions", refusal).await;
    let error = openai(&server)
        .complete_json(SYSTEM, TRANSCRIPT, &returns_schema())
        .await
        .expect_err("refused");
    assert_eq!(
        error,
        ProviderError::BadResponse(
            "chat completions: the model refused: I can't help with that.".into()
        )
    );

    let server = serve(
        "/v1/chat/completions",
        openai_reply(r#"{"name": "An"#, "length"),
    )
    .await;
    let error = openai(&server)
        .complete_json(SYSTEM, TRANSCRIPT, &returns_schema())
        .await
        .expect_err("cut off");
    assert!(error.to_string().contains("token limit"), "{error}");

    // A server that ignores `strict` (some self-hosted ones do) is caught.
    let off =
        json!({"name": "Ana", "party_size": "four", "confirmed": true, "callback_time": null});
    let server = serve(
        "/v1/chat/completions",
        openai_reply(&off.to_string(), "stop"),
    )
    .await;
    let error = openai(&server)
        .complete_json(SYSTEM, TRANSCRIPT, &returns_schema())
        .await
        .expect_err("off schema");
    assert!(
        matches!(&error, ProviderError::BadResponse(m) if m.contains("/party_size: expected an integer")),
        "{error}"
    );
}

#[tokio::test]
async fn openai_http_errors_and_silence_map_like_the_streaming_calls() {
    let server = serve(
        "/v1/chat/completions",
        Reply::Json(
            StatusCode::BAD_REQUEST,
            json!({"error": {"message": "Invalid schema for response_format 'result'",
                "type": "invalid_request_error"}}),
        ),
    )
    .await;
    let error = openai(&server)
        .complete_json(SYSTEM, TRANSCRIPT, &returns_schema())
        .await
        .expect_err("400");
    assert_eq!(
        error,
        ProviderError::BadResponse(
            "chat completions: HTTP 400 Bad Request: Invalid schema for response_format 'result' (invalid_request_error)".into()
        )
    );
    let server = serve(
        "/v1/chat/completions",
        Reply::Json(StatusCode::TOO_MANY_REQUESTS, json!({})),
    )
    .await;
    let error = openai(&server)
        .complete_json(SYSTEM, TRANSCRIPT, &returns_schema())
        .await
        .expect_err("429");
    assert!(matches!(error, ProviderError::Unavailable(_)), "{error}");

    let server = serve("/v1/chat/completions", Reply::Hang).await;
    let error = openai(&server)
        .complete_json(SYSTEM, TRANSCRIPT, &returns_schema())
        .await
        .expect_err("silence");
    assert_eq!(
        error,
        ProviderError::Unavailable(
            "chat completions: timed out: no complete reply within 600 ms".into()
        )
    );
}

#[tokio::test]
async fn an_unsupported_schema_is_refused_before_any_request() {
    let server = serve("/v1/chat/completions", openai_reply("{}", "stop")).await;
    let error = openai(&server)
        .complete_json(
            SYSTEM,
            TRANSCRIPT,
            &json!({"type": "object", "properties": {
            "when": {"type": "string", "format": "date-time"}}}),
        )
        .await
        .expect_err("format");
    assert_eq!(
        error,
        ProviderError::InvalidRequest(
            "unsupported JSON schema at /properties/when: `format` is not supported".into()
        )
    );
    assert!(server.received().is_empty());
}

// --------------------------------------------------------------- Anthropic

fn anthropic(server: &Server) -> AnthropicChat {
    let mut config = AnthropicConfig::new("sk-ant-test", "claude-sonnet-4-5");
    config.base_url = server.base_url.clone();
    config.max_tokens = 512;
    config.first_byte_timeout = Duration::from_millis(300);
    config.idle_timeout = Duration::from_millis(300);
    AnthropicChat::new(config).expect("provider")
}

fn anthropic_reply(input: Value, stop_reason: &str) -> Reply {
    Reply::Json(
        StatusCode::OK,
        json!({
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [
                {"type": "text", "text": "Recording the booking."},
                {"type": "tool_use", "id": "toolu_01", "name": RESULT_TOOL, "input": input}
            ],
            "stop_reason": stop_reason,
            "usage": {"input_tokens": 120, "output_tokens": 40}
        }),
    )
}

#[tokio::test]
async fn anthropic_forces_a_tool_whose_input_schema_is_the_schema() {
    let server = serve("/v1/messages", anthropic_reply(answer(), "tool_use")).await;
    let value = anthropic(&server)
        .complete_json(SYSTEM, TRANSCRIPT, &returns_schema())
        .await
        .expect("an answer");
    assert_eq!(value, answer());
    let received = server.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].path, "/v1/messages");
    let header_of = |name: &str| {
        received[0]
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(header_of("x-api-key").as_deref(), Some("sk-ant-test"));
    assert_eq!(
        header_of("anthropic-version").as_deref(),
        Some("2023-06-01")
    );
    assert_eq!(
        received[0].body,
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 512,
            "system": SYSTEM,
            "messages": [{"role": "user", "content": [{"type": "text", "text": TRANSCRIPT}]}],
            "tools": [{
                "name": "record_result",
                "description": "Records the result extracted from the text.",
                "input_schema": strict_schema()
            }],
            "tool_choice": {"type": "tool", "name": "record_result"}
        })
    );
}

#[tokio::test]
async fn anthropic_answers_are_checked_because_the_api_does_not_enforce_the_schema() {
    // The model left out a property.
    let server = serve(
        "/v1/messages",
        anthropic_reply(
            json!({"name": "Ana", "party_size": 4, "confirmed": true}),
            "tool_use",
        ),
    )
    .await;
    let error = anthropic(&server)
        .complete_json(SYSTEM, TRANSCRIPT, &returns_schema())
        .await
        .expect_err("missing");
    assert_eq!(
        error,
        ProviderError::BadResponse(
            "anthropic messages: the answer does not follow the schema: /callback_time: missing"
                .into()
        )
    );
    let server = serve(
        "/v1/messages",
        anthropic_reply(json!({"name": "A"}), "max_tokens"),
    )
    .await;
    let error = anthropic(&server)
        .complete_json(SYSTEM, TRANSCRIPT, &returns_schema())
        .await
        .expect_err("cut");
    assert!(error.to_string().contains("max_tokens"), "{error}");
    let overloaded = Reply::Json(
        StatusCode::from_u16(529).expect("status"),
        json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
    );
    let server = serve("/v1/messages", overloaded).await;
    let error = anthropic(&server)
        .complete_json(SYSTEM, TRANSCRIPT, &returns_schema())
        .await
        .expect_err("529");
    assert!(matches!(error, ProviderError::Unavailable(_)), "{error}");
}

// ---------------------------------------------------------------- scripted

#[tokio::test(start_paused = true)]
async fn the_scripted_llm_answers_its_configured_object() {
    let latency = LlmLatency {
        time_to_first_token: Duration::from_millis(200),
        tokens_per_second: 50,
    };
    let llm = ScriptedLlm::new(vec![], latency)
        .with_json_reply(json!({"name": "Ana", "party_size": 4, "confirmed": true}));
    let started = tokio::time::Instant::now();
    let value = llm
        .complete_json(SYSTEM, TRANSCRIPT, &returns_schema())
        .await
        .expect("an answer");
    // The optional property the script left out comes back as null.
    assert_eq!(value, answer());
    assert_eq!(started.elapsed(), Duration::from_millis(200));
    let records = llm.json_records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].user, TRANSCRIPT);
    assert_eq!(records[0].schema, returns_schema());

    // A script that does not fit the schema fails as a provider would.
    let wrong = ScriptedLlm::new(vec![], latency).with_json_reply(json!({"name": "Ana"}));
    let error = wrong
        .complete_json(SYSTEM, TRANSCRIPT, &returns_schema())
        .await
        .expect_err("missing keys");
    assert!(matches!(error, ProviderError::BadResponse(_)), "{error}");
    let none = ScriptedLlm::new(vec![], latency);
    assert!(
        none.complete_json(SYSTEM, TRANSCRIPT, &returns_schema())
            .await
            .is_err()
    );
}
