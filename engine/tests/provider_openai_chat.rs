//! The OpenAI-compatible chat adapter against a local server that replays
//! recorded `/chat/completions` streams from `fixtures/providers/openai_chat`.

use std::time::Duration;

use axum::http::{StatusCode, header};
use callingbox_engine::providers::openai_chat::{OpenAiChat, OpenAiChatConfig};
use callingbox_engine::providers::{
    ChatMessage, LlmEvent, LlmProvider, LlmRequest, ProviderError, ToolCallRequest, ToolSchema,
};
use futures::StreamExt;
mod common;

use common::mock_http::{Reply, Server, serve};
use serde_json::json;

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/../fixtures/providers/openai_chat/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).expect("fixture")
}

fn provider(server: &Server) -> OpenAiChat {
    let mut config = OpenAiChatConfig::new(
        &format!("{}/v1", server.base_url),
        Some("sk-test-key".into()),
        "gpt-4o-mini",
    );
    config.first_byte_timeout = Duration::from_millis(500);
    OpenAiChat::new(config).expect("provider")
}

async fn collect(
    provider: &OpenAiChat,
    request: LlmRequest,
) -> Vec<Result<LlmEvent, ProviderError>> {
    let stream = provider.stream_chat(request);
    tokio::time::timeout(Duration::from_secs(10), stream.collect())
        .await
        .expect("the stream ends")
}

fn booking_tools() -> Vec<ToolSchema> {
    vec![
        ToolSchema {
            name: "check_availability".into(),
            description: "Checks free tables on a date.".into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "date": {"type": "string"},
                    "party_size": {"type": "integer"}
                },
                "required": ["date", "party_size"]
            }),
        },
        ToolSchema {
            name: "get_opening_hours".into(),
            description: "Today's opening hours.".into(),
            parameters: json!({"type": "object", "properties": {}}),
        },
    ]
}

#[tokio::test]
async fn a_text_reply_streams_as_tokens_then_done() {
    let server = serve(
        "/v1/chat/completions",
        Reply::Stream(fixture("text_reply.sse"), 7),
    )
    .await;
    let provider = provider(&server);
    let request = LlmRequest {
        messages: vec![
            ChatMessage::System {
                content: "You book tables.".into(),
            },
            ChatMessage::User {
                content: "A table for two at seven, please.".into(),
            },
        ],
        tools: Vec::new(),
    };
    let events = collect(&provider, request).await;

    let tokens: String = events
        .iter()
        .filter_map(|e| match e {
            Ok(LlmEvent::Token(t)) => Some(t.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(tokens, "Sure, a table for two at seven — shall I book it?");
    assert_eq!(events.last(), Some(&Ok(LlmEvent::Done)));
    assert!(events.iter().all(Result::is_ok));
    // No empty tokens (the role chunk has empty content).
    assert!(
        events
            .iter()
            .all(|e| !matches!(e, Ok(LlmEvent::Token(t)) if t.is_empty()))
    );

    let received = server.received();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(
        request
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().ok()),
        Some(Some("Bearer sk-test-key"))
    );
    assert_eq!(
        request.body,
        json!({
            "model": "gpt-4o-mini",
            "stream": true,
            "messages": [
                {"role": "system", "content": "You book tables."},
                {"role": "user", "content": "A table for two at seven, please."}
            ]
        })
    );
}

#[tokio::test]
async fn tool_calls_are_assembled_from_fragments_and_history_is_sent_in_openai_shape() {
    let server = serve(
        "/v1/chat/completions",
        Reply::Stream(fixture("tool_calls.sse"), 64),
    )
    .await;
    let provider = provider(&server);
    let request = LlmRequest {
        messages: vec![
            ChatMessage::System {
                content: "You book tables.".into(),
            },
            ChatMessage::Assistant {
                content: "Hello, Luigi's, how can I help?".into(),
                tool_calls: Vec::new(),
            },
            ChatMessage::User {
                content: "Is there a table tonight?".into(),
            },
            ChatMessage::Assistant {
                content: String::new(),
                tool_calls: vec![ToolCallRequest {
                    id: "call_1".into(),
                    name: "get_opening_hours".into(),
                    arguments_json: "{}".into(),
                }],
            },
            ChatMessage::Tool {
                tool_call_id: "call_1".into(),
                name: "get_opening_hours".into(),
                content: r#"{"open":"18:00","close":"23:00"}"#.into(),
            },
            ChatMessage::User {
                content: "For two, please.".into(),
            },
        ],
        tools: booking_tools(),
    };
    let events = collect(&provider, request).await;
    assert_eq!(
        events,
        vec![
            Ok(LlmEvent::Token("Let".into())),
            Ok(LlmEvent::Token(" me".into())),
            Ok(LlmEvent::Token(" check".into())),
            Ok(LlmEvent::Token(".".into())),
            Ok(LlmEvent::ToolCall(ToolCallRequest {
                id: "call_Qx3nV8bLr2TzW5yKp1mJdA7c".into(),
                name: "check_availability".into(),
                arguments_json: r#"{"date":"2026-11-28","party_size":2}"#.into(),
            })),
            Ok(LlmEvent::ToolCall(ToolCallRequest {
                id: "call_Hd4kS9wQm1XcV7bNz2LpRt6e".into(),
                name: "get_opening_hours".into(),
                arguments_json: "{}".into(),
            })),
            Ok(LlmEvent::Done),
        ]
    );

    let received = server.received();
    let body = &received[0].body;
    assert_eq!(
        body["tools"],
        json!([
            {"type": "function", "function": {
                "name": "check_availability",
                "description": "Checks free tables on a date.",
                "parameters": {
                    "type": "object",
                    "properties": {"date": {"type": "string"}, "party_size": {"type": "integer"}},
                    "required": ["date", "party_size"]
                }
            }},
            {"type": "function", "function": {
                "name": "get_opening_hours",
                "description": "Today's opening hours.",
                "parameters": {"type": "object", "properties": {}}
            }}
        ])
    );
    assert_eq!(
        body["messages"],
        json!([
            {"role": "system", "content": "You book tables."},
            {"role": "assistant", "content": "Hello, Luigi's, how can I help?"},
            {"role": "user", "content": "Is there a table tonight?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_opening_hours", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"open\":\"18:00\",\"close\":\"23:00\"}"},
            {"role": "user", "content": "For two, please."}
        ])
    );
}

#[tokio::test]
async fn a_401_is_a_clear_error_with_the_servers_message() {
    let server = serve(
        "/v1/chat/completions",
        Reply::Error(StatusCode::UNAUTHORIZED, fixture("error_401.json")),
    )
    .await;
    let events = collect(&provider(&server), LlmRequest::default()).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let Err(ProviderError::BadResponse(text)) = &events[0] else {
        panic!("expected a BadResponse, got {events:?}");
    };
    assert!(text.contains("HTTP 401"), "{text}");
    assert!(text.contains("Incorrect API key provided"), "{text}");
    assert!(text.contains("invalid_request_error"), "{text}");
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_unavailable() {
    let server = serve(
        "/v1/chat/completions",
        Reply::Error(StatusCode::TOO_MANY_REQUESTS, fixture("error_429.json")),
    )
    .await;
    let events = collect(&provider(&server), LlmRequest::default()).await;
    let [Err(ProviderError::Unavailable(text))] = events.as_slice() else {
        panic!("expected one Unavailable, got {events:?}");
    };
    assert!(text.contains("HTTP 429"), "{text}");
    assert!(text.contains("Rate limit reached"), "{text}");

    let server = serve(
        "/v1/chat/completions",
        Reply::Error(StatusCode::BAD_GATEWAY, "<html>bad gateway</html>".into()),
    )
    .await;
    let events = collect(&provider(&server), LlmRequest::default()).await;
    let [Err(ProviderError::Unavailable(text))] = events.as_slice() else {
        panic!("expected one Unavailable, got {events:?}");
    };
    assert!(text.contains("HTTP 502"), "{text}");
    assert!(text.contains("bad gateway"), "{text}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let server = serve("/v1/chat/completions", Reply::Hang).await;
    let mut config = provider(&server).config().clone();
    config.first_byte_timeout = Duration::from_millis(200);
    let provider = OpenAiChat::new(config).expect("provider");
    let events = collect(&provider, LlmRequest::default()).await;
    let [Err(ProviderError::Unavailable(text))] = events.as_slice() else {
        panic!("expected one Unavailable, got {events:?}");
    };
    assert!(text.contains("timed out"), "{text}");
    assert!(text.contains("200 ms"), "{text}");
}

#[tokio::test]
async fn a_stream_cut_before_the_finish_is_an_error_not_a_short_reply() {
    let full = fixture("text_reply.sse");
    let cut = full[..full.len() / 2].to_owned();
    let server = serve("/v1/chat/completions", Reply::Stream(cut, 50)).await;
    let events = collect(&provider(&server), LlmRequest::default()).await;
    assert!(
        matches!(events.first(), Some(Ok(LlmEvent::Token(_)))),
        "{events:?}"
    );
    assert!(
        matches!(events.last(), Some(Err(ProviderError::Unavailable(text))) if text.contains("ended before")),
        "{events:?}"
    );
    assert!(!events.contains(&Ok(LlmEvent::Done)));
}

#[test]
fn config_from_vars() {
    assert!(OpenAiChatConfig::from_vars(|_| None).is_err());
    let config = OpenAiChatConfig::from_vars(|name| match name {
        "LLM_MODEL" => Some("llama3".into()),
        "LLM_BASE_URL" => Some("http://localhost:8000/v1/".into()),
        _ => None,
    })
    .expect("config");
    assert_eq!(config.api_key, None);
    assert_eq!(
        config.completions_url(),
        "http://localhost:8000/v1/chat/completions"
    );
    assert_eq!(config.connect_timeout, Duration::from_secs(5));
}
