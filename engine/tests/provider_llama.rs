//! The local llama.cpp provider with the real model (Gemma 3 270M base,
//! `models/gemma-3-270m-q4_k_m.gguf` or `$CALLINGBOX_LLM_MODEL`; `./dev test`
//! installs it). Decoding is greedy and the thread count fixed, so every
//! answer here is the same on every run.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use callingbox_engine::providers::llama::{LocalLlm, LocalLlmConfig, locate_model};
use callingbox_engine::providers::structured::StructuredCompletion;
use callingbox_engine::providers::{
    ChatMessage, LlmEvent, LlmProvider, LlmRequest, ProviderError, ToolCallRequest, ToolSchema,
};
use futures::StreamExt;
use serde_json::{Value, json};

fn config() -> LocalLlmConfig {
    let path = locate_model().unwrap_or_else(|e| panic!("{e}"));
    let mut config = LocalLlmConfig::new(path);
    // Answers depend on the thread count (the order of float sums).
    config.threads = 2;
    config
}

/// One model for the whole file, loaded once.
fn shared() -> &'static LocalLlm {
    static LLM: OnceLock<LocalLlm> = OnceLock::new();
    LLM.get_or_init(|| LocalLlm::load(config()).expect("the model loads"))
}

fn system(text: &str) -> ChatMessage {
    ChatMessage::System {
        content: text.into(),
    }
}

fn user(text: &str) -> ChatMessage {
    ChatMessage::User {
        content: text.into(),
    }
}

async fn collect(llm: &LocalLlm, request: LlmRequest) -> Vec<Result<LlmEvent, ProviderError>> {
    tokio::time::timeout(Duration::from_secs(60), llm.stream_chat(request).collect())
        .await
        .expect("the reply ends within 60 s")
}

fn spoken(events: &[Result<LlmEvent, ProviderError>]) -> String {
    events
        .iter()
        .filter_map(|e| match e {
            Ok(LlmEvent::Token(t)) => Some(t.as_str()),
            _ => None,
        })
        .collect()
}

fn weather_tools() -> Vec<ToolSchema> {
    vec![
        ToolSchema {
            name: "get_weather".into(),
            description: "Gets the current weather in a city.".into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
                },
                "required": ["city", "unit"]
            }),
        },
        ToolSchema {
            name: "end_call".into(),
            description: "Ends the call.".into(),
            parameters: json!({"type": "object", "properties": {}}),
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_streams_token_by_token_and_is_the_same_every_time() {
    let llm = shared();
    let request = LlmRequest {
        messages: vec![
            system("You are the receptionist of the Sunny Hotel. Be brief."),
            user("Hello, is this the Sunny Hotel?"),
        ],
        tools: vec![],
    };
    let events = collect(llm, request.clone()).await;
    println!("{events:?}");
    assert!(events.iter().all(Result::is_ok), "{events:?}");
    assert_eq!(events.last(), Some(&Ok(LlmEvent::Done)));
    let tokens = events
        .iter()
        .filter(|e| matches!(e, Ok(LlmEvent::Token(_))))
        .count();
    assert!(tokens >= 3, "streamed as {tokens} tokens: {events:?}");
    let text = spoken(&events);
    assert!(!text.trim().is_empty() && !text.contains('\n'), "{text:?}");
    assert!(!text.starts_with(' ') && !text.starts_with('{'), "{text:?}");
    // Greedy decoding: the same request gives the same words.
    let again = collect(llm, request).await;
    assert_eq!(spoken(&again), text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asked_for_what_a_tool_does_it_calls_it_with_valid_arguments() {
    let llm = shared();
    let request = LlmRequest {
        messages: vec![
            system("You are a weather hotline."),
            user("Hi! What's the weather like in Paris right now, in celsius?"),
        ],
        tools: weather_tools(),
    };
    let events = collect(llm, request).await;
    println!("{events:?}");
    let calls: Vec<&ToolCallRequest> = events
        .iter()
        .filter_map(|e| match e {
            Ok(LlmEvent::ToolCall(call)) => Some(call),
            _ => None,
        })
        .collect();
    assert_eq!(calls.len(), 1, "{events:?}");
    assert_eq!(events.last(), Some(&Ok(LlmEvent::Done)));
    assert_eq!(spoken(&events), "", "a call is not spoken");
    let call = calls[0];
    assert_eq!(call.name, "get_weather");
    let arguments: Value = serde_json::from_str(&call.arguments_json).expect("JSON arguments");
    let object = arguments.as_object().expect("an object");
    assert_eq!(object.len(), 2, "{arguments}");
    let city = object["city"].as_str().expect("city is a string");
    assert!(city.contains("Paris"), "{arguments}");
    assert!(
        ["celsius", "fahrenheit"].contains(&object["unit"].as_str().expect("unit is a string")),
        "{arguments}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_tool_result_it_speaks() {
    let llm = shared();
    let request = LlmRequest {
        messages: vec![
            system("You are a weather hotline."),
            user("What's the weather in Paris?"),
            ChatMessage::Assistant {
                content: String::new(),
                tool_calls: vec![ToolCallRequest {
                    id: "call_1".into(),
                    name: "get_weather".into(),
                    arguments_json: r#"{"city": "Paris", "unit": "celsius"}"#.into(),
                }],
            },
            ChatMessage::Tool {
                tool_call_id: "call_1".into(),
                name: "get_weather".into(),
                content: r#"{"sky": "sunny", "temperature": 21}"#.into(),
            },
        ],
        tools: weather_tools(),
    };
    let events = collect(llm, request).await;
    println!("{events:?}");
    assert_eq!(events.last(), Some(&Ok(LlmEvent::Done)));
    let text = spoken(&events);
    assert!(!text.trim().is_empty(), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complete_json_fills_exactly_the_schema() {
    let llm = shared();
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "party_size": {"type": "integer"},
            "day": {"type": "string"},
            "wants_terrace": {"type": "boolean"},
            "phone": {"type": ["string", "null"]}
        },
        "required": ["name", "party_size", "day", "wants_terrace", "phone"]
    });
    let transcript = "Agent: Luigi's restaurant, how can I help?\n\
                      Caller: Hi, I'd like a table for 6 people on Saturday.\n\
                      Agent: Certainly. What name?\n\
                      Caller: Johnson. And we would love a table on the terrace.";
    let started = Instant::now();
    let value = tokio::time::timeout(
        Duration::from_secs(60),
        llm.complete_json("Extract the booking from the call.", transcript, &schema),
    )
    .await
    .expect("within 60 s")
    .expect("an answer");
    println!("{value} in {:?}", started.elapsed());
    let object = value.as_object().expect("an object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["day", "name", "party_size", "phone", "wants_terrace"]
    );
    assert!(object["name"].is_string(), "{value}");
    assert!(object["party_size"].is_i64(), "{value}");
    assert!(object["day"].is_string(), "{value}");
    assert!(object["wants_terrace"].is_boolean(), "{value}");
    assert!(
        object["phone"].is_null() || object["phone"].is_string(),
        "{value}"
    );
    // What this model gets right on this transcript (greedy, so stable).
    assert_eq!(object["party_size"], json!(6), "{value}");
    assert!(
        object["name"]
            .as_str()
            .is_some_and(|n| n.contains("Johnson")),
        "{value}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_supported_type_gives_a_grammar_llama_cpp_accepts_and_a_valid_answer() {
    let llm = shared();
    let schema = json!({
        "type": "object",
        "properties": {
            "outcome": {"enum": ["booked", "declined", "callback"]},
            "amount": {"type": ["number", "null"]},
            "items": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 3},
            "contact": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "vip": {"type": "boolean"}},
                "required": ["name", "vip"]
            },
            "nights": {"type": "integer"}
        },
        "required": ["outcome", "amount", "items", "contact"]
    });
    let transcript = "Caller: I'm Maria Chen. Please book the suite and breakfast for 3 nights.\n\
                      Agent: Done, that's 450 dollars in total.";
    let value = llm
        .complete_json("Record the outcome of the call.", transcript, &schema)
        .await
        .expect("an answer");
    println!("{value}");
    // Every key, each of its type (`nights` was optional: integer or null).
    let strict =
        callingbox_engine::providers::structured::ResultSchema::parse(&schema).expect("schema");
    assert_eq!(strict.check(&value), Ok(()), "{value}");
    assert!(
        value["nights"].is_null() || value["nights"].is_i64(),
        "{value}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prompt_prefix_is_reused_and_a_dropped_stream_stops_the_job() {
    // Its own model instance: the shared one's cache and stats change with
    // the other tests.
    let llm = LocalLlm::load(config()).expect("the model loads");
    let mut messages = vec![system("You are a bakery's phone line."), user("Hi.")];
    let first = collect(
        &llm,
        LlmRequest {
            messages: messages.clone(),
            tools: vec![],
        },
    )
    .await;
    let first_stats = llm.last_stats().expect("stats");
    assert!(first_stats.generated_tokens > 0);
    messages.push(ChatMessage::Assistant {
        content: spoken(&first),
        tool_calls: vec![],
    });
    messages.push(user("Do you sell sourdough bread?"));

    // Drop the stream after its first token: the thread moves on.
    let mut stream = llm.stream_chat(LlmRequest {
        messages: messages.clone(),
        tools: vec![],
    });
    let first_event = stream.next().await;
    assert!(
        matches!(first_event, Some(Ok(LlmEvent::Token(_)))),
        "{first_event:?}"
    );
    drop(stream);

    let second = collect(
        &llm,
        LlmRequest {
            messages,
            tools: vec![],
        },
    )
    .await;
    assert_eq!(second.last(), Some(&Ok(LlmEvent::Done)));
    let stats = llm.last_stats().expect("stats");
    println!("{first_stats:?}\n{stats:?}");
    // Everything up to the new turn was already evaluated.
    assert!(
        stats.reused_tokens >= first_stats.prompt_tokens,
        "{stats:?} after {first_stats:?}"
    );
    assert!(stats.prompt_tokens > stats.reused_tokens);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_outside_the_subset_is_refused_before_inference() {
    let llm = shared();
    let error = llm
        .complete_json(
            "x",
            "y",
            &json!({"type": "object", "properties": {
            "a": {"oneOf": [{"type": "string"}, {"type": "integer"}]}}}),
        )
        .await
        .expect_err("oneOf");
    assert!(matches!(error, ProviderError::InvalidRequest(_)), "{error}");
    let events = collect(
        llm,
        LlmRequest {
            messages: vec![user("hi")],
            tools: vec![ToolSchema {
                name: "t".into(),
                description: "d".into(),
                parameters: json!({"type": "object", "properties": {"a": {"$ref": "#/x"}}}),
            }],
        },
    )
    .await;
    assert!(
        matches!(events.as_slice(), [Err(ProviderError::InvalidRequest(_))]),
        "{events:?}"
    );
}

/// Measures load time, time to first token, generation speed and
/// `complete_json` latency on this machine, cold (nothing cached) and warm
/// (the prompt's prefix cached). Run alone, on a quiet machine:
/// `cargo test -p callingbox-engine --test provider_llama -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check: run it by hand on a quiet machine"]
async fn measure() {
    for threads in [1, 2] {
        let mut config = config();
        config.threads = threads;
        let started = Instant::now();
        let llm = LocalLlm::load(config).expect("the model loads");
        println!("threads {threads}: load {:.0} ms", ms(started.elapsed()));
        println!(
            "| case | prompt tok | reused | gen tok | TTFT ms | prefill ms | tok/s | total ms | slow picks |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        let mut messages = vec![
            system("You are the receptionist of the Sunny Hotel. Be brief."),
            user("Hello, is this the Sunny Hotel?"),
        ];
        for case in ["reply, cold", "reply, same again", "reply, next turn"] {
            if case == "reply, next turn" {
                messages.push(ChatMessage::Assistant {
                    content: "Yes, this is the Sunny Hotel.".into(),
                    tool_calls: vec![],
                });
                messages.push(user("Do you have a room for two nights from Friday?"));
            }
            let started = Instant::now();
            let mut stream = llm.stream_chat(LlmRequest {
                messages: messages.clone(),
                tools: vec![],
            });
            let mut ttft = None;
            while let Some(event) = stream.next().await {
                if matches!(event, Ok(LlmEvent::Token(_))) {
                    ttft.get_or_insert(started.elapsed());
                }
            }
            row(case, &llm, ttft.unwrap_or_default(), started.elapsed());
        }
        let request = LlmRequest {
            messages: vec![
                system("You are a weather hotline."),
                user("Hi! What's the weather like in Paris right now, in celsius?"),
            ],
            tools: weather_tools(),
        };
        for case in ["tool call, cold", "tool call, warm"] {
            let started = Instant::now();
            let events = collect(&llm, request.clone()).await;
            assert!(
                events
                    .iter()
                    .any(|e| matches!(e, Ok(LlmEvent::ToolCall(_))))
            );
            row(case, &llm, Duration::ZERO, started.elapsed());
        }
        let schema = json!({"type": "object", "properties": {
            "name": {"type": "string"}, "party_size": {"type": "integer"},
            "day": {"type": "string"}, "wants_terrace": {"type": "boolean"}},
            "required": ["name", "party_size", "day", "wants_terrace"]});
        let transcript = "Caller: Hi, I'd like a table for 6 people on Saturday.\n\
                          Agent: Certainly. What name?\nCaller: Johnson, on the terrace please.";
        for case in ["complete_json, cold", "complete_json, warm"] {
            let started = Instant::now();
            llm.complete_json("Extract the booking.", transcript, &schema)
                .await
                .expect("an answer");
            row(case, &llm, Duration::ZERO, started.elapsed());
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn row(case: &str, llm: &LocalLlm, ttft: Duration, total: Duration) {
    let s = llm.last_stats().expect("stats");
    let rate = if s.generated_tokens > 1 && !s.decode.is_zero() {
        (s.generated_tokens - 1) as f64 / s.decode.as_secs_f64()
    } else {
        0.0
    };
    let ttft = if ttft.is_zero() { s.first_token } else { ttft };
    println!(
        "| {case} | {} | {} | {} | {:.0} | {:.0} | {rate:.1} | {:.0} | {} |",
        s.prompt_tokens,
        s.reused_tokens,
        s.generated_tokens,
        ms(ttft),
        ms(s.prefill),
        ms(total),
        s.grammar_fallbacks
    );
}
