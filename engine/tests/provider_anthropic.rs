//! The Anthropic Messages adapter against a local server that replays
//! recorded `/v1/messages` streams from `fixtures/providers/anthropic`.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use callingbox_engine::providers::anthropic::{AnthropicChat, AnthropicConfig};
use callingbox_engine::providers::{
    ChatMessage, LlmEvent, LlmProvider, LlmRequest, ProviderError, ToolCallRequest, ToolSchema,
};
use futures::StreamExt;
mod common;

use common::mock_http::{Reply, Server, serve};
use serde_json::json;

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/../fixtures/providers/anthropic/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).expect("fixture")
}

fn provider(server: &Server) -> AnthropicChat {
    let mut config = AnthropicConfig::new("sk-ant-test", "claude-sonnet-4-5");
    config.base_url = server.base_url.clone();
    config.first_byte_timeout = Duration::from_millis(500);
    config.max_tokens = 300;
    AnthropicChat::new(config).expect("provider")
}

async fn collect(
    provider: &AnthropicChat,
    request: LlmRequest,
) -> Vec<Result<LlmEvent, ProviderError>> {
    tokio::time::timeout(
        Duration::from_secs(10),
        provider.stream_chat(request).collect(),
    )
    .await
    .expect("the stream ends")
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn a_text_reply_streams_as_tokens_then_done() {
    let server = serve("/v1/messages", Reply::Stream(fixture("text_reply.sse"), 5)).await;
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
    let events = collect(&provider(&server), request).await;
    assert_eq!(
        events,
        vec![
            Ok(LlmEvent::Token("Sure".into())),
            Ok(LlmEvent::Token(", a table for two".into())),
            Ok(LlmEvent::Token(" at seven. Shall".into())),
            Ok(LlmEvent::Token(" I book it?".into())),
            Ok(LlmEvent::Done),
        ]
    );
    let received = server.received();
    assert_eq!(received.len(), 1);
    let headers = &received[0].headers;
    assert_eq!(header_text(headers, "x-api-key"), Some("sk-ant-test"));
    assert_eq!(
        header_text(headers, "anthropic-version"),
        Some("2023-06-01")
    );
    assert_eq!(headers.get(header::AUTHORIZATION), None);
    assert_eq!(
        received[0].body,
        json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 300,
            "stream": true,
            "system": "You book tables.",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "A table for two at seven, please."}]}
            ]
        })
    );
}

#[tokio::test]
async fn tool_use_is_assembled_from_json_deltas_and_results_go_back_as_merged_user_blocks() {
    let server = serve("/v1/messages", Reply::Stream(fixture("tool_use.sse"), 40)).await;
    let request = LlmRequest {
        messages: vec![
            ChatMessage::System {
                content: "You book tables.".into(),
            },
            ChatMessage::User {
                content: "Hi.".into(),
            },
            ChatMessage::User {
                content: "Is there a table tonight?".into(),
            },
            ChatMessage::Assistant {
                content: "One moment.".into(),
                tool_calls: vec![
                    ToolCallRequest {
                        id: "toolu_A".into(),
                        name: "get_opening_hours".into(),
                        arguments_json: "{}".into(),
                    },
                    ToolCallRequest {
                        id: "toolu_B".into(),
                        name: "check_availability".into(),
                        arguments_json: r#"{"date":"2026-11-28","party_size":2}"#.into(),
                    },
                ],
            },
            ChatMessage::Tool {
                tool_call_id: "toolu_A".into(),
                name: "get_opening_hours".into(),
                content: r#"{"open":"18:00"}"#.into(),
            },
            ChatMessage::Tool {
                tool_call_id: "toolu_B".into(),
                name: "check_availability".into(),
                content: r#"{"free":true}"#.into(),
            },
            ChatMessage::User {
                content: "Great.".into(),
            },
            ChatMessage::System {
                content: "Confirm before booking.".into(),
            },
        ],
        tools: vec![ToolSchema {
            name: "check_availability".into(),
            description: "Checks free tables on a date.".into(),
            parameters: json!({
                "type": "object",
                "properties": {"date": {"type": "string"}, "party_size": {"type": "integer"}},
                "required": ["date", "party_size"]
            }),
        }],
    };
    let events = collect(&provider(&server), request).await;
    assert_eq!(
        events,
        vec![
            Ok(LlmEvent::Token("Let me".into())),
            Ok(LlmEvent::Token(" check that.".into())),
            Ok(LlmEvent::ToolCall(ToolCallRequest {
                id: "toolu_01T1x1fJ34qAmk2tNTrN7Up6".into(),
                name: "check_availability".into(),
                arguments_json: r#"{"date": "2026-11-28", "party_size": 2}"#.into(),
            })),
            Ok(LlmEvent::ToolCall(ToolCallRequest {
                id: "toolu_01VjtQ7mXy9cB3nRf5Lk2Hs8".into(),
                name: "get_opening_hours".into(),
                arguments_json: "{}".into(),
            })),
            Ok(LlmEvent::Done),
        ]
    );
    let body = &server.received()[0].body;
    assert_eq!(
        body["system"],
        "You book tables.\n\nConfirm before booking."
    );
    assert_eq!(
        body["tools"],
        json!([{
            "name": "check_availability",
            "description": "Checks free tables on a date.",
            "input_schema": {
                "type": "object",
                "properties": {"date": {"type": "string"}, "party_size": {"type": "integer"}},
                "required": ["date", "party_size"]
            }
        }])
    );
    assert_eq!(
        body["messages"],
        json!([
            {"role": "user", "content": [
                {"type": "text", "text": "Hi."},
                {"type": "text", "text": "Is there a table tonight?"}
            ]},
            {"role": "assistant", "content": [
                {"type": "text", "text": "One moment."},
                {"type": "tool_use", "id": "toolu_A", "name": "get_opening_hours", "input": {}},
                {"type": "tool_use", "id": "toolu_B", "name": "check_availability",
                 "input": {"date": "2026-11-28", "party_size": 2}}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_A", "content": "{\"open\":\"18:00\"}"},
                {"type": "tool_result", "tool_use_id": "toolu_B", "content": "{\"free\":true}"},
                {"type": "text", "text": "Great."}
            ]}
        ])
    );
}

#[tokio::test]
async fn a_401_is_a_clear_error_with_the_servers_message() {
    let server = serve(
        "/v1/messages",
        Reply::Error(StatusCode::UNAUTHORIZED, fixture("error_401.json")),
    )
    .await;
    let events = collect(&provider(&server), LlmRequest::default()).await;
    let [Err(ProviderError::BadResponse(text))] = events.as_slice() else {
        panic!("expected one BadResponse, got {events:?}");
    };
    assert!(text.contains("HTTP 401"), "{text}");
    assert!(text.contains("invalid x-api-key"), "{text}");
    assert!(text.contains("authentication_error"), "{text}");
}

#[tokio::test]
async fn an_error_event_mid_stream_ends_it_with_the_reason() {
    let server = serve(
        "/v1/messages",
        Reply::Stream(fixture("overloaded_midstream.sse"), 64),
    )
    .await;
    let events = collect(&provider(&server), LlmRequest::default()).await;
    assert_eq!(events[0], Ok(LlmEvent::Token("Let me".into())));
    let [_, Err(ProviderError::Unavailable(text))] = events.as_slice() else {
        panic!("expected a token then Unavailable, got {events:?}");
    };
    assert!(text.contains("Overloaded"), "{text}");
    assert!(text.contains("overloaded_error"), "{text}");
}

#[tokio::test]
async fn an_overloaded_529_is_unavailable() {
    let body = r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    let status = StatusCode::from_u16(529).expect("status");
    let server = serve("/v1/messages", Reply::Error(status, body.into())).await;
    let events = collect(&provider(&server), LlmRequest::default()).await;
    let [Err(ProviderError::Unavailable(text))] = events.as_slice() else {
        panic!("expected one Unavailable, got {events:?}");
    };
    assert!(text.contains("HTTP 529"), "{text}");
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let server = serve("/v1/messages", Reply::Hang).await;
    let mut config = provider(&server).config().clone();
    config.first_byte_timeout = Duration::from_millis(200);
    let provider = AnthropicChat::new(config).expect("provider");
    let events = collect(&provider, LlmRequest::default()).await;
    let [Err(ProviderError::Unavailable(text))] = events.as_slice() else {
        panic!("expected one Unavailable, got {events:?}");
    };
    assert!(text.contains("timed out"), "{text}");
}

#[tokio::test]
async fn a_stream_without_message_stop_is_an_error() {
    let full = fixture("tool_use.sse");
    let cut = full[..full.find("event: message_delta").expect("delta")].to_owned();
    let server = serve("/v1/messages", Reply::Stream(cut, 64)).await;
    let events = collect(&provider(&server), LlmRequest::default()).await;
    assert!(
        matches!(events.last(), Some(Err(ProviderError::Unavailable(text))) if text.contains("message_stop")),
        "{events:?}"
    );
    assert!(!events.contains(&Ok(LlmEvent::Done)));
}

#[test]
fn config_from_vars() {
    assert!(AnthropicConfig::from_vars(|_| None).is_err());
    let config = AnthropicConfig::from_vars(|name| {
        (name == "ANTHROPIC_API_KEY").then(|| "sk-ant-x".to_owned())
    })
    .expect("config");
    assert_eq!(
        config.messages_url(),
        "https://api.anthropic.com/v1/messages"
    );
    assert!(!format!("{config:?}").contains("sk-ant-x"));
}
