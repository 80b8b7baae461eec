//! The agent loop on virtual time: scripted LLM/TTS with known latencies, a
//! transport that plays audio at real-time pace, and real HTTP tools served
//! by a local axum server.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use callingbox_engine::clock::Instant;
use callingbox_engine::codecs::{FrameDuration, MediaTime, PcmFrame, SampleRate};
use callingbox_engine::conversation::{
    AgentConfig, AgentHandle, AgentLoop, OutboundFrame, Played, Providers, UserTurn,
};
use callingbox_engine::events::{CallEvent, EndedBy, Role, SegmentSource, ToolOutcome};
use callingbox_engine::providers::scripted::{
    LlmLatency, ScriptMatch, ScriptRule, ScriptedAsr, ScriptedLlm, ScriptedTts, TtsLatency,
};
use callingbox_engine::providers::{AsrEvent, AsrProvider, ChatMessage};
use callingbox_engine::tools::{
    BuiltinTool, HttpTool, ToolDefinition, ToolLimits, ToolPolicy, ToolSet,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;

const TTFT: Duration = Duration::from_millis(250);
const TTFB: Duration = Duration::from_millis(150);

fn llm_latency(tokens_per_second: u32) -> LlmLatency {
    LlmLatency {
        time_to_first_token: TTFT,
        tokens_per_second,
    }
}

fn tts() -> ScriptedTts {
    ScriptedTts::new(
        SampleRate::Hz16000,
        TtsLatency {
            time_to_first_byte: TTFB,
            real_time_factor: 0.1,
            speech_per_char: Duration::from_millis(60),
        },
    )
}

/// What the fake transport played, per reply.
#[derive(Debug, Default)]
struct PlayLog {
    played: BTreeMap<u64, Duration>,
    first_frame_at: BTreeMap<u64, tokio::time::Instant>,
    frames: usize,
}

/// Drains agent audio at real-time pace, like an RTP sender would.
fn spawn_player(
    mut rx: mpsc::Receiver<OutboundFrame>,
) -> (Arc<Mutex<PlayLog>>, tokio::task::JoinHandle<()>) {
    let log = Arc::new(Mutex::new(PlayLog::default()));
    let task_log = Arc::clone(&log);
    let task = tokio::spawn(async move {
        while let Some(out) = rx.recv().await {
            {
                let mut log = task_log.lock().expect("log");
                log.first_frame_at
                    .entry(out.reply)
                    .or_insert_with(tokio::time::Instant::now);
                log.frames += 1;
            }
            sleep(out.frame.duration()).await;
            *task_log
                .lock()
                .expect("log")
                .played
                .entry(out.reply)
                .or_default() += out.frame.duration();
        }
    });
    (log, task)
}

struct Call {
    agent: AgentHandle,
    events: mpsc::UnboundedReceiver<CallEvent>,
    llm: ScriptedLlm,
    tts: ScriptedTts,
    played: Arc<Mutex<PlayLog>>,
    player: tokio::task::JoinHandle<()>,
}

impl Call {
    fn start(rules: Vec<ScriptRule>, tokens_per_second: u32, tools: Vec<ToolDefinition>) -> Call {
        let llm = ScriptedLlm::new(rules, llm_latency(tokens_per_second));
        let tts = tts();
        let config = AgentConfig {
            system_prompt: "You are a booking assistant.".into(),
            tools: ToolSet::new(tools).expect("valid tools"),
            ..AgentConfig::default()
        };
        let (audio_tx, audio_rx) = mpsc::channel(4);
        let (agent, events) = AgentLoop::spawn(
            config,
            Providers {
                llm: Arc::new(llm.clone()),
                tts: Arc::new(tts.clone()),
            },
            audio_tx,
        );
        let (played, player) = spawn_player(audio_rx);
        Call {
            agent,
            events,
            llm,
            tts,
            played,
            player,
        }
    }

    fn drain(&mut self) -> Vec<CallEvent> {
        drain(&mut self.events)
    }

    fn now(&self) -> Instant {
        self.agent.clock().now()
    }

    fn played(&self, reply: u64) -> Duration {
        self.played
            .lock()
            .expect("log")
            .played
            .get(&reply)
            .copied()
            .unwrap_or_default()
    }

    fn first_frame_at(&self, reply: u64) -> Option<tokio::time::Instant> {
        self.played
            .lock()
            .expect("log")
            .first_frame_at
            .get(&reply)
            .copied()
    }
}

fn drain(events: &mut mpsc::UnboundedReceiver<CallEvent>) -> Vec<CallEvent> {
    let mut out = Vec::new();
    while let Ok(event) = events.try_recv() {
        out.push(event);
    }
    out
}

fn agent_segments(events: &[CallEvent]) -> Vec<(String, u64, bool)> {
    events
        .iter()
        .filter_map(|e| match e {
            CallEvent::TranscriptSegment {
                role: Role::Agent,
                text,
                duration_ms,
                interrupted,
                ..
            } => Some((text.clone(), *duration_ms, *interrupted)),
            _ => None,
        })
        .collect()
}

fn tool_results(events: &[CallEvent]) -> Vec<(String, ToolOutcome, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            CallEvent::ToolResult {
                name,
                outcome,
                duration_ms,
                ..
            } => Some((name.clone(), outcome.clone(), *duration_ms)),
            _ => None,
        })
        .collect()
}

fn first_metrics(events: &[CallEvent]) -> callingbox_engine::events::TurnMetrics {
    events
        .iter()
        .find_map(|e| match e {
            CallEvent::TurnMetrics { metrics, .. } => Some(*metrics),
            _ => None,
        })
        .expect("metrics")
}

fn assistant_texts(history: &[ChatMessage]) -> Vec<String> {
    history
        .iter()
        .filter_map(|m| match m {
            ChatMessage::Assistant { content, .. } => Some(content.clone()),
            _ => None,
        })
        .collect()
}

fn always(reply: &str) -> ScriptRule {
    ScriptRule::when(ScriptMatch::Always).reply(reply)
}

fn after_tool(tool: &str, contains: &str) -> ScriptRule {
    ScriptRule::when(ScriptMatch::ToolResultContains {
        tool: tool.into(),
        contains: contains.into(),
    })
}

// ------------------------------------------------------------ a local tool server

/// A request body and its `x-api-key` header.
type Received = (Value, Option<String>);

#[derive(Clone, Default)]
struct ServerState {
    hits: Arc<AtomicUsize>,
    bodies: Arc<Mutex<Vec<Received>>>,
}

impl ServerState {
    fn record(&self, headers: &HeaderMap, body: Value) {
        self.hits.fetch_add(1, Ordering::SeqCst);
        let key = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.bodies.lock().expect("bodies").push((body, key));
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// Serves `/lookup` (JSON), `/slow_lookup` (JSON after 2 s), `/slow` (after
/// 30 s), `/broken` (500) and `/book` (JSON) on 127.0.0.1:0.
async fn tool_server() -> (String, ServerState) {
    let state = ServerState::default();
    let app = axum::Router::new()
        .route(
            "/lookup",
            post(
                |State(s): State<ServerState>, h: HeaderMap, Json(b): Json<Value>| async move {
                    ServerState::record(&s, &h, b);
                    Json(json!({"slot": "3 pm", "available": true}))
                },
            ),
        )
        .route(
            "/slow_lookup",
            post(
                |State(s): State<ServerState>, h: HeaderMap, Json(b): Json<Value>| async move {
                    ServerState::record(&s, &h, b);
                    sleep(Duration::from_secs(2)).await;
                    Json(json!({"found": true}))
                },
            ),
        )
        .route(
            "/slow",
            post(
                |State(s): State<ServerState>, h: HeaderMap, Json(b): Json<Value>| async move {
                    ServerState::record(&s, &h, b);
                    sleep(Duration::from_secs(30)).await;
                    Json(json!({"late": true}))
                },
            ),
        )
        .route(
            "/broken",
            post(
                |State(s): State<ServerState>, h: HeaderMap, Json(b): Json<Value>| async move {
                    ServerState::record(&s, &h, b);
                    (StatusCode::INTERNAL_SERVER_ERROR, "boom")
                },
            ),
        )
        .route(
            "/huge",
            post(
                |State(s): State<ServerState>, h: HeaderMap, Json(b): Json<Value>| async move {
                    ServerState::record(&s, &h, b);
                    Json(json!({"blob": "x".repeat(100 * 1024)}))
                },
            ),
        )
        .route(
            "/book",
            post(
                |State(s): State<ServerState>, h: HeaderMap, Json(b): Json<Value>| async move {
                    ServerState::record(&s, &h, b);
                    Json(json!({"status": "booked"}))
                },
            ),
        )
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    (format!("http://{addr}"), state)
}

fn http_tool(base: &str, name: &str, path: &str, policy: ToolPolicy) -> ToolDefinition {
    ToolDefinition::Http(HttpTool {
        name: name.into(),
        description: format!("{name} tool"),
        policy,
        url: format!("{base}{path}"),
        parameters: json!({"type":"object","properties":{},"required":[],"additionalProperties":false}),
        headers: BTreeMap::from([("x-api-key".to_owned(), "secret-1".to_owned())]),
        timeout_ms: None,
    })
}

fn end_call_tool() -> ToolDefinition {
    ToolDefinition::Builtin(BuiltinTool {
        name: "end_call".into(),
        description: "Hang up".into(),
        policy: ToolPolicy::Read,
        builtin: None,
        parameters: json!({"type":"object","properties":{},"required":[],"additionalProperties":false}),
        config: None,
    })
}

// ------------------------------------------------------------ tests

#[tokio::test(start_paused = true)]
async fn a_full_turn_speaks_the_reply_and_measures_the_scripted_latencies() {
    let reply = "Hello! How can I help you today?";
    let mut call = Call::start(vec![always(reply)], 50, vec![]);
    sleep(Duration::from_secs(1)).await;
    let now = call.now();
    call.agent.commit(UserTurn {
        text: "Hi there".into(),
        speech_started_at: Some(now - Duration::from_millis(900)),
        speech_ended_at: Some(now - Duration::from_millis(300)),
        transcript_final_at: Some(now - Duration::from_millis(100)),
        source: SegmentSource::Asr,
    });
    sleep(Duration::from_secs(5)).await;
    let events = call.drain();

    let expected_audio =
        call.tts.audio_duration("Hello!") + call.tts.audio_duration("How can I help you today?");
    assert_eq!(
        agent_segments(&events),
        vec![(reply.to_owned(), expected_audio.as_millis() as u64, false)]
    );
    assert_eq!(call.played(0), expected_audio, "every frame was played");
    let user_segment = events.iter().find_map(|e| match e {
        CallEvent::TranscriptSegment {
            role: Role::User,
            text,
            started_at_ms,
            ended_at_ms,
            ..
        } => Some((text.clone(), *started_at_ms, *ended_at_ms)),
        _ => None,
    });
    assert_eq!(user_segment, Some(("Hi there".into(), 100, 700)));
    assert_eq!(
        call.tts
            .requests()
            .iter()
            .map(|(t, _)| t.as_str())
            .collect::<Vec<_>>(),
        vec!["Hello!", "How can I help you today?"]
    );

    let metrics = first_metrics(&events);
    let ms = |n| Some(Duration::from_millis(n));
    assert_eq!(metrics.end_of_utterance_delay, ms(300));
    assert_eq!(metrics.transcription_delay, ms(200));
    assert_eq!(
        metrics.llm_ttft,
        ms(250),
        "the scripted time to first token"
    );
    // "Hello!" is complete with the first token.
    assert_eq!(metrics.llm_first_clause, ms(250));
    assert_eq!(metrics.tts_ttfb, ms(150), "the scripted time to first byte");
    assert_eq!(metrics.voice_to_voice, ms(300 + 250 + 150));
    assert_eq!(metrics.engine_overhead, ms(0));

    assert_eq!(
        assistant_texts(&call.agent.history()),
        vec![reply.to_owned()]
    );
    call.agent.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn clauses_are_spoken_while_the_model_is_still_writing() {
    let reply = "Sure. I can help with that. Let me see what we have for Monday morning.";
    // 5 tokens per second: the reply takes seconds to write.
    let call = Call::start(vec![always(reply)], 5, vec![]);
    let committed = tokio::time::Instant::now();
    call.agent.commit(UserTurn::text("Can I book a table?"));
    sleep(Duration::from_secs(10)).await;

    let llm_done = call.llm.records()[0].completed_at.expect("LLM finished");
    assert_eq!(
        llm_done - committed,
        call.llm.completion_time(reply, 0),
        "the script's pace"
    );
    let first_audio = call.first_frame_at(0).expect("audio played");
    assert_eq!(
        first_audio - committed,
        TTFT + TTFB,
        "'Sure.' spoken at once"
    );
    assert!(
        first_audio < llm_done,
        "first audio before the LLM finished"
    );
    let tts = call.tts.requests();
    assert_eq!(tts.len(), 3);
    assert!(
        tts[1].1 < llm_done,
        "the second clause went to TTS mid-stream"
    );
    call.agent.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_http_tool_runs_between_model_rounds() {
    let (base, server) = tool_server().await;
    let rules = vec![
        ScriptRule::when(ScriptMatch::UserContains("slot".into()))
            .reply("Let me check.")
            .call("lookup", json!({"day": "monday"})),
        after_tool("lookup", "3 pm").reply("The next slot is at 3 pm."),
    ];
    let mut call = Call::start(
        rules,
        50,
        vec![http_tool(&base, "lookup", "/lookup", ToolPolicy::Read)],
    );
    call.agent.commit(UserTurn::text("Any slot on Monday?"));
    sleep(Duration::from_secs(6)).await;
    let events = call.drain();

    assert_eq!(server.hits(), 1);
    assert_eq!(
        server.bodies.lock().expect("bodies")[0],
        (json!({"day": "monday"}), Some("secret-1".into())),
        "the arguments were POSTed as JSON with the tool's headers"
    );
    let invocation = events.iter().find_map(|e| match e {
        CallEvent::ToolInvocation {
            name, arguments, ..
        } => Some((name.clone(), arguments.clone())),
        _ => None,
    });
    assert_eq!(
        invocation,
        Some(("lookup".into(), json!({"day": "monday"})))
    );
    assert_eq!(
        tool_results(&events)[0].1,
        ToolOutcome::Result(json!({"slot": "3 pm", "available": true}))
    );
    let records = call.llm.records();
    assert_eq!(records.len(), 2, "model -> tool -> model");
    match records[1].request.messages.last() {
        Some(ChatMessage::Tool { name, content, .. }) => {
            assert_eq!(name, "lookup");
            assert!(content.contains("3 pm"));
        }
        other => panic!("the second request must end with the tool result, got {other:?}"),
    }
    assert_eq!(
        agent_segments(&events)[0].0,
        "Let me check. The next slot is at 3 pm."
    );
    call.agent.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_tool_that_times_out_is_an_error_for_the_model_and_the_call_goes_on() {
    let (base, server) = tool_server().await;
    let mut slow = http_tool(&base, "slow", "/slow", ToolPolicy::Read);
    if let ToolDefinition::Http(t) = &mut slow {
        t.timeout_ms = Some(2_000);
    }
    let rules = vec![
        after_tool("slow", "did not answer").reply("Sorry, that system is slow today."),
        ScriptRule::when(ScriptMatch::Turn(0)).call("slow", json!({})),
        always("Anything else?"),
    ];
    let mut call = Call::start(rules, 50, vec![slow]);
    call.agent.commit(UserTurn::text("Check my order"));
    // The media side sees the tool running (to mute the caller if asked).
    sleep(Duration::from_secs(1)).await;
    assert_eq!(call.agent.tools_running(), 1);
    sleep(Duration::from_secs(7)).await;
    assert_eq!(call.agent.tools_running(), 0);
    let events = call.drain();
    assert_eq!(server.hits(), 1);
    let results = tool_results(&events);
    assert_eq!(results.len(), 1);
    assert!(matches!(&results[0].1, ToolOutcome::Error(e) if e.contains("within 2000 ms")));
    assert_eq!(results[0].2, 2_000, "timed out on the tool's own deadline");
    assert_eq!(
        agent_segments(&events)[0].0,
        "Sorry, that system is slow today."
    );

    call.agent.commit(UserTurn::text("No thanks"));
    sleep(Duration::from_secs(5)).await;
    assert_eq!(agent_segments(&call.drain())[0].0, "Anything else?");
    call.agent.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_tool_answering_500_is_an_error_for_the_model() {
    let (base, server) = tool_server().await;
    let rules = vec![
        after_tool("broken", "HTTP 500").reply("I could not reach the booking system."),
        always("").call("broken", json!({"x": 1})),
    ];
    let mut call = Call::start(
        rules,
        50,
        vec![http_tool(&base, "broken", "/broken", ToolPolicy::Read)],
    );
    call.agent.commit(UserTurn::text("Book it"));
    sleep(Duration::from_secs(6)).await;
    let events = call.drain();
    assert_eq!(server.hits(), 1);
    assert!(matches!(
        &tool_results(&events)[0].1,
        ToolOutcome::Error(e) if e.contains("HTTP 500")
    ));
    let tool_message = call.llm.records()[1].request.messages.last().cloned();
    assert!(
        matches!(tool_message, Some(ChatMessage::Tool { content, .. }) if content.contains("\"error\""))
    );
    assert_eq!(
        agent_segments(&events)[0].0,
        "I could not reach the booking system."
    );
    call.agent.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_oversized_tool_response_is_an_error_for_the_model() {
    let (base, server) = tool_server().await;
    let rules = vec![
        after_tool("huge", "larger than").reply("That answer was too big."),
        always("").call("huge", json!({})),
    ];
    let mut call = Call::start(
        rules,
        50,
        vec![http_tool(&base, "huge", "/huge", ToolPolicy::Read)],
    );
    call.agent.commit(UserTurn::text("Get everything"));
    sleep(Duration::from_secs(6)).await;
    let events = call.drain();
    assert_eq!(server.hits(), 1);
    assert!(matches!(
        &tool_results(&events)[0].1,
        ToolOutcome::Error(e) if e.contains("larger than 65536 bytes")
    ));
    assert_eq!(agent_segments(&events)[0].0, "That answer was too big.");
    call.agent.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_model_stuck_calling_tools_is_stopped_after_the_round_limit() {
    let (base, server) = tool_server().await;
    // The model would call the tool forever.
    let rules = vec![always("").call("lookup", json!({}))];
    let mut call = Call::start(
        rules,
        50,
        vec![http_tool(&base, "lookup", "/lookup", ToolPolicy::Read)],
    );
    call.agent.commit(UserTurn::text("Loop"));
    sleep(Duration::from_secs(10)).await;
    let rounds = AgentConfig::default().max_tool_rounds;
    assert_eq!(server.hits(), rounds);
    let records = call.llm.records();
    assert_eq!(records.len(), rounds + 1);
    assert!(
        records[..rounds]
            .iter()
            .all(|r| !r.request.tools.is_empty())
    );
    assert!(
        records[rounds].request.tools.is_empty(),
        "the last model call is offered no tools"
    );
    assert_eq!(tool_results(&call.drain()).len(), rounds);

    // The call goes on.
    call.agent.commit(UserTurn::text("Hello?"));
    sleep(Duration::from_secs(10)).await;
    assert_eq!(call.llm.records().len(), 2 * (rounds + 1));
    call.agent.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_write_tool_runs_only_after_a_clear_yes_to_the_agents_question() {
    let (base, server) = tool_server().await;
    let rules = vec![
        after_tool("book", "confirmation_required").reply("Shall I book 3 pm for you?"),
        after_tool("book", "booked").reply("Done, you are booked."),
        always("").call("book", json!({"time": "3 pm"})),
    ];
    let mut call = Call::start(
        rules,
        50,
        vec![http_tool(
            &base,
            "book",
            "/book",
            ToolPolicy::ConfirmFirstWrite,
        )],
    );

    // No yes yet: the endpoint must not be hit.
    call.agent.commit(UserTurn::text("Book me for 3 pm"));
    sleep(Duration::from_secs(6)).await;
    let events = call.drain();
    assert_eq!(server.hits(), 0);
    assert!(matches!(
        &tool_results(&events)[0].1,
        ToolOutcome::Result(v) if v["status"] == "confirmation_required"
    ));
    assert_eq!(agent_segments(&events)[0].0, "Shall I book 3 pm for you?");

    // A clear yes to that question: executed once.
    call.agent.commit(UserTurn::text("Yes, please."));
    sleep(Duration::from_secs(6)).await;
    let events = call.drain();
    assert_eq!(server.hits(), 1);
    assert_eq!(
        tool_results(&events)[0].1,
        ToolOutcome::Result(json!({"status": "booked"}))
    );
    assert_eq!(agent_segments(&events)[0].0, "Done, you are booked.");

    // "Yes" again, but the agent asked nothing: not executed.
    call.agent.commit(UserTurn::text("yes"));
    sleep(Duration::from_secs(6)).await;
    assert_eq!(server.hits(), 1);
    call.agent.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn end_call_says_the_last_clause_then_ends_the_call() {
    let rules = vec![always("Goodbye, have a nice day.").call("end_call", json!({}))];
    let call = Call::start(rules, 50, vec![end_call_tool()]);
    let committed = tokio::time::Instant::now();
    call.agent.commit(UserTurn::text("That's all, thanks"));
    let Call {
        agent,
        mut events,
        llm,
        tts,
        played,
        player,
    } = call;
    tokio::time::timeout(Duration::from_secs(30), agent.wait())
        .await
        .expect("the call ended by itself");
    let ended_after = tokio::time::Instant::now() - committed;
    let events = drain(&mut events);
    let audio = tts.audio_duration("Goodbye, have a nice day.");
    let first_audio = played.lock().expect("log").first_frame_at[&0] - committed;
    assert_eq!(
        ended_after,
        first_audio + audio,
        "ended when the last clause had played"
    );
    assert_eq!(
        events.last(),
        Some(&CallEvent::Ended {
            by: EndedBy::Agent,
            reason: "end_call".into(),
            at_ms: ended_after.as_millis() as u64,
        })
    );
    assert_eq!(agent_segments(&events)[0].0, "Goodbye, have a nice day.");
    assert_eq!(llm.records().len(), 1, "no model call after end_call");
    player.await.expect("player ends with the call");
    assert_eq!(played.lock().expect("log").played[&0], audio);
}

#[tokio::test(start_paused = true)]
async fn barge_in_during_speech_keeps_only_what_was_played() {
    let reply =
        "Sure thing. Your table for four is booked for seven tonight. Anything else I can do?";
    let rules = vec![
        ScriptRule::when(ScriptMatch::Turn(0)).reply(reply),
        always("Okay."),
    ];
    let mut call = Call::start(rules, 50, vec![]);
    let committed = tokio::time::Instant::now();
    call.agent
        .commit(UserTurn::text("Book a table for four at seven"));
    let first_audio = TTFT + Duration::from_millis(20) + TTFB;
    sleep(first_audio + Duration::from_millis(10)).await;
    assert_eq!(
        call.first_frame_at(0).map(|t| t - committed),
        Some(first_audio)
    );
    // The caller talks over the agent one second into its reply.
    sleep(Duration::from_millis(1_000)).await;
    let played = call.played(0);
    assert_eq!(played, Duration::from_millis(1_000));
    call.agent.interrupt(Played::Duration(played));
    sleep(Duration::from_millis(1)).await;

    // "Sure thing." is 660 ms; 340 ms of the 2880 ms second clause is "Your".
    let heard = "Sure thing. Your";
    assert_eq!(
        assistant_texts(&call.agent.history()),
        vec![heard.to_owned()]
    );
    let events = call.drain();
    assert_eq!(
        agent_segments(&events),
        vec![(heard.to_owned(), 1_000, true)]
    );

    // Nothing more is pushed for the interrupted reply.
    let frames = call.played.lock().expect("log").frames;
    sleep(Duration::from_secs(5)).await;
    let later = call.played.lock().expect("log").frames;
    assert!(later - frames <= 4, "at most the transport's queue drains");

    call.agent.commit(UserTurn::text("Actually make it eight"));
    sleep(Duration::from_secs(3)).await;
    let records = call.llm.records();
    let seen = assistant_texts(&records[1].request.messages);
    assert_eq!(
        seen,
        vec![heard.to_owned()],
        "the model sees only the heard part"
    );
    call.agent.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn barge_in_during_a_tool_call_still_records_the_result() {
    let (base, server) = tool_server().await;
    let rules = vec![
        ScriptRule::when(ScriptMatch::Turn(0))
            .reply("Let me look that up.")
            .call("lookup", json!({"order": 42})),
        after_tool("lookup", "found").reply("I found it."),
        always("Sure."),
    ];
    let mut call = Call::start(
        rules,
        50,
        vec![http_tool(&base, "lookup", "/slow_lookup", ToolPolicy::Read)],
    );
    call.agent.commit(UserTurn::text("Where is order 42?"));
    // The clause is ready at 350 ms, its 1200 ms of audio play from 500 ms
    // to 1700 ms; the tool runs from 350 ms for 2 s.
    sleep(Duration::from_millis(1_750)).await;
    assert_eq!(call.played(0), Duration::from_millis(1_200));
    assert_eq!(server.hits(), 1);
    call.agent.interrupt(Played::Duration(call.played(0)));
    sleep(Duration::from_millis(1)).await;
    let history = call.agent.history();
    assert!(matches!(
        &history[2],
        ChatMessage::Assistant { content, tool_calls }
            if content == "Let me look that up." && tool_calls.len() == 1
    ));
    assert!(
        matches!(&history[3], ChatMessage::Tool { content, .. } if content.contains("pending"))
    );

    sleep(Duration::from_secs(3)).await;
    let events = call.drain();
    assert_eq!(
        tool_results(&events)[0].1,
        ToolOutcome::Result(json!({"found": true})),
        "the running tool's result is recorded after the barge-in"
    );
    assert!(
        matches!(&call.agent.history()[3], ChatMessage::Tool { content, .. } if content.contains("found"))
    );
    assert_eq!(
        call.llm.records().len(),
        1,
        "the follow-up model call was cancelled"
    );

    call.agent.commit(UserTurn::text("Hello?"));
    sleep(Duration::from_secs(3)).await;
    let next = &call.llm.records()[1].request.messages;
    assert!(
        next.iter()
            .any(|m| matches!(m, ChatMessage::Tool { content, .. } if content.contains("found")))
    );
    call.agent.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_matching_speculation_is_reused() {
    let rules = vec![
        ScriptRule::when(ScriptMatch::UserContains("open".into())).reply("We open at nine."),
        always("Sorry?"),
    ];
    let mut call = Call::start(rules, 50, vec![]);
    let speculated = tokio::time::Instant::now();
    let speech_end = call.now();
    call.agent.speculate("what time do you open");
    sleep(Duration::from_millis(200)).await;
    call.agent.commit(UserTurn {
        speech_ended_at: Some(speech_end),
        ..UserTurn::text("What time do you open?")
    });
    sleep(Duration::from_secs(4)).await;
    let events = call.drain();
    assert_eq!(call.llm.records().len(), 1, "one model call, reused");
    assert_eq!(agent_segments(&events)[0].0, "We open at nine.");
    // The reply is 4 tokens (first at 250 ms, then 20 ms each) from the
    // speculation's start, not from the commit.
    assert_eq!(
        call.first_frame_at(0).map(|t| t - speculated),
        Some(TTFT + Duration::from_millis(60) + TTFB)
    );
    let metrics = first_metrics(&events);
    assert_eq!(metrics.llm_ttft, Some(TTFT));
    assert_eq!(
        metrics.end_of_utterance_delay,
        Some(Duration::from_millis(200))
    );
    assert_eq!(
        metrics.voice_to_voice,
        Some(Duration::from_millis(250 + 60 + 150))
    );
    assert_eq!(metrics.engine_overhead, Some(Duration::ZERO));
    call.agent.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_stale_or_discarded_speculation_is_not_used() {
    let rules = vec![
        ScriptRule::when(ScriptMatch::UserContains("close".into())).reply("We close at six."),
        ScriptRule::when(ScriptMatch::UserContains("open".into())).reply("We open at nine."),
    ];
    let mut call = Call::start(rules, 50, vec![]);
    call.agent.speculate("what time do you open");
    sleep(Duration::from_millis(100)).await;
    call.agent
        .commit(UserTurn::text("What time do you open and close?"));
    sleep(Duration::from_secs(4)).await;
    let records = call.llm.records();
    assert_eq!(records.len(), 2, "the speculation was replaced");
    assert_eq!(records[0].completed_at, None, "and cancelled");
    assert_eq!(agent_segments(&call.drain())[0].0, "We close at six.");

    call.agent.speculate("and on sunday do you open");
    sleep(Duration::from_millis(100)).await;
    call.agent.discard();
    sleep(Duration::from_secs(4)).await;
    let records = call.llm.records();
    assert_eq!(records.len(), 3);
    assert_eq!(
        records[2].completed_at, None,
        "discarding cancels the stream"
    );
    assert!(
        agent_segments(&call.drain()).is_empty(),
        "nothing was spoken"
    );
    call.agent.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn shutting_down_mid_turn_leaves_no_task_running() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    let rules = vec![always(
        "This is a long answer, with many clauses, that will not finish. Really it will not.",
    )];
    let call = Call::start(rules, 10, vec![]);
    call.agent.commit(UserTurn::text("Tell me everything"));
    sleep(Duration::from_millis(900)).await;
    call.agent.speculate("and another thing");
    sleep(Duration::from_millis(10)).await;
    assert!(
        metrics.num_alive_tasks() >= baseline + 3,
        "loop, player, speculation"
    );
    assert!(call.played(0) > Duration::ZERO, "mid-reply");
    let Call { agent, player, .. } = call;
    agent.shutdown().await;
    player
        .await
        .expect("player ends once the loop dropped its sink");
    assert_eq!(metrics.num_alive_tasks(), baseline);
}

#[tokio::test(start_paused = true)]
async fn hanging_up_cancels_a_running_tool() {
    let (base, _server) = tool_server().await;
    let rules = vec![always("").call("slow", json!({}))];
    let call = Call::start(
        rules,
        50,
        vec![http_tool(&base, "slow", "/slow", ToolPolicy::Read)],
    );
    call.agent.commit(UserTurn::text("Check"));
    sleep(Duration::from_secs(1)).await;
    call.agent.hang_up(EndedBy::User, "hangup");
    let Call {
        agent, mut events, ..
    } = call;
    tokio::time::timeout(Duration::from_secs(1), agent.wait())
        .await
        .expect("the loop ended without waiting for the tool");
    let all = drain(&mut events);
    assert!(all.iter().any(|e| matches!(
        e,
        CallEvent::Ended {
            by: EndedBy::User,
            ..
        }
    )));
    assert!(matches!(
        &tool_results(&all)[0].1,
        ToolOutcome::Error(e) if e.contains("call ended")
    ));
}

#[tokio::test(start_paused = true)]
async fn the_scripted_recognizer_reports_interims_then_a_delayed_final() {
    let asr = ScriptedAsr::new(
        vec!["book a table".into()],
        Duration::from_millis(300),
        Duration::from_millis(200),
    );
    let cancel = CancellationToken::new();
    let mut session = asr.open(cancel.clone()).expect("session");
    let frame = |i: u64, level: i16| {
        PcmFrame::new(
            SampleRate::Hz16000,
            MediaTime::from_millis(i * 20),
            vec![level; SampleRate::Hz16000.samples_in(FrameDuration::Ms20)],
        )
    };
    let start = tokio::time::Instant::now();
    // 600 ms of speech, then silence; each frame is pushed once complete.
    for i in 0..40 {
        sleep(Duration::from_millis(20)).await;
        session
            .push_frame(&frame(i, if i < 30 { 4_000 } else { 0 }))
            .expect("push");
    }
    let mut interims = Vec::new();
    let mut announced = 0;
    let final_at = loop {
        match session.next_event().await.expect("event") {
            AsrEvent::UtteranceStarted => {
                assert!(interims.is_empty(), "announced before its words");
                announced += 1;
            }
            AsrEvent::Interim { text } => interims.push(text),
            AsrEvent::Final { text } => {
                assert_eq!(text, "book a table");
                break tokio::time::Instant::now();
            }
            AsrEvent::Failed { error } => panic!("the scripted recognizer failed: {error}"),
        }
    };
    assert_eq!(interims, vec!["book", "book a", "book a table"]);
    assert_eq!(announced, 1, "one utterance, announced once");
    assert_eq!(final_at - start, Duration::from_millis(600 + 300));
    cancel.cancel();
    assert_eq!(session.next_event().await, None, "cancel ends the session");
}

#[test]
fn tool_limits_default_to_the_documented_values() {
    let limits = ToolLimits::default();
    assert_eq!(limits.tool_timeout, Duration::from_secs(5));
    assert_eq!(limits.http_timeout, Duration::from_secs(10));
    assert_eq!(limits.max_response_bytes, 64 * 1024);
}
