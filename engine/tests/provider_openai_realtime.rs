//! The OpenAI Realtime adapter against a local server playing
//! recorded-shape sessions (`fixtures/providers/openai_realtime/`): the
//! session setup, caller audio at 24 kHz, transcripts, a tool call and its
//! result, barge-in truncation, and how failures surface.

use std::time::Duration;

use callingbox_engine::codecs::{MediaTime, PcmFrame, SampleRate};
use callingbox_engine::events::Role;
use callingbox_engine::providers::openai_realtime::{
    OpenAiRealtime, OpenAiRealtimeConfig, RealtimeSession,
};
use callingbox_engine::providers::{
    ProviderError, SpeechToSpeechEvent, SpeechToSpeechProvider, ToolResultMessage, ToolSchema,
};
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------- mock vendor
// A local WebSocket server standing in for the vendor: it records the
// handshake, forwards what the client sends (parsed JSON) to the test, and
// sends what the test tells it to.

use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// The client's handshake as the server saw it.
#[allow(dead_code)] // each provider test uses part of the mock
#[derive(Debug)]
struct Handshake {
    path_and_query: String,
    headers: Vec<(String, String)>,
}

#[allow(dead_code)]
impl Handshake {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[allow(dead_code)]
enum ServerCommand {
    Send(String),
    Close(u16, String),
    /// Drops the TCP connection without a closing handshake.
    Vanish,
}

struct MockVendor {
    url: String,
    handshake: oneshot::Receiver<Handshake>,
    commands: mpsc::UnboundedSender<ServerCommand>,
    received: mpsc::UnboundedReceiver<serde_json::Value>,
}

#[allow(dead_code)]
impl MockVendor {
    /// A server that accepts one client, or refuses it with `refuse_status`.
    async fn start(refuse_status: Option<u16>) -> MockVendor {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}", listener.local_addr().expect("address"));
        let (handshake_tx, handshake_rx) = oneshot::channel();
        let (commands_tx, mut commands_rx) = mpsc::unbounded_channel();
        let (received_tx, received_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            // The signature is tungstenite's; its error type is large by design.
            #[allow(clippy::result_large_err)]
            let callback = move |request: &Request, response: Response| {
                let _ = handshake_tx.send(Handshake {
                    path_and_query: request
                        .uri()
                        .path_and_query()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or_default(),
                    headers: request
                        .headers()
                        .iter()
                        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                        .collect(),
                });
                match refuse_status {
                    None => Ok(response),
                    Some(status) => {
                        let mut refusal =
                            ErrorResponse::new(Some(r#"{"detail":"Invalid API key"}"#.to_owned()));
                        *refusal.status_mut() =
                            tokio_tungstenite::tungstenite::http::StatusCode::from_u16(status)
                                .expect("status");
                        Err(refusal)
                    }
                }
            };
            let Ok(socket) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                return;
            };
            let (mut sink, mut stream) = socket.split();
            loop {
                tokio::select! {
                    command = commands_rx.recv() => match command {
                        Some(ServerCommand::Send(text)) => {
                            if sink.send(Message::text(text)).await.is_err() { break }
                        }
                        Some(ServerCommand::Close(code, reason)) => {
                            let frame = CloseFrame { code: code.into(), reason: reason.into() };
                            let _ = sink.send(Message::Close(Some(frame))).await;
                        }
                        Some(ServerCommand::Vanish) | None => break,
                    },
                    message = stream.next() => match message {
                        Some(Ok(Message::Text(text))) => {
                            let value = serde_json::from_str(text.as_str())
                                .unwrap_or(serde_json::Value::String(text.as_str().to_owned()));
                            let _ = received_tx.send(value);
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                }
            }
        });
        MockVendor {
            url,
            handshake: handshake_rx,
            commands: commands_tx,
            received: received_rx,
        }
    }

    fn send_lines(&self, lines: &[String]) {
        for line in lines {
            let _ = self.commands.send(ServerCommand::Send(line.clone()));
        }
    }

    fn close(&self, code: u16, reason: &str) {
        let _ = self
            .commands
            .send(ServerCommand::Close(code, reason.to_owned()));
    }

    fn vanish(&self) {
        let _ = self.commands.send(ServerCommand::Vanish);
    }

    /// The next message the client sent (fails the test after 5 s).
    async fn next_from_client(&mut self) -> serde_json::Value {
        tokio::time::timeout(std::time::Duration::from_secs(5), self.received.recv())
            .await
            .expect("the client sent nothing for 5 s")
            .expect("the connection ended")
    }

    async fn handshake(&mut self) -> Handshake {
        tokio::time::timeout(std::time::Duration::from_secs(5), &mut self.handshake)
            .await
            .expect("no handshake within 5 s")
            .expect("handshake seen")
    }
}

/// The lines of a committed vendor session.
fn fixture(path: &str) -> Vec<String> {
    let full = format!(
        "{}/../fixtures/providers/{path}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&full)
        .unwrap_or_else(|e| panic!("{full}: {e}"))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Samples in the base64 audio field `field` of these lines.
fn fixture_samples(lines: &[String], field: &str) -> usize {
    use base64::Engine as _;
    lines
        .iter()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let data = v[field].as_str()?.to_owned();
            Some(
                base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .ok()?
                    .len()
                    / 2,
            )
        })
        .sum()
}

const INSTRUCTIONS: &str = "Eres la recepcionista de una panadería. Responde en español.";

fn config(url: &str) -> OpenAiRealtimeConfig {
    let mut config = OpenAiRealtimeConfig::new("sk-test", "alloy", "es");
    config.base_url = url.to_owned();
    config
}

fn tools() -> Vec<ToolSchema> {
    vec![ToolSchema {
        name: "opening_hours".into(),
        description: "The bakery's opening hours for a day.".into(),
        parameters: serde_json::json!({
            "type": "object",
            "properties": {"day": {"type": "string"}},
            "required": ["day"],
        }),
    }]
}

/// Connects through the setup exchange and checks what the client sent.
async fn open_session(vendor: &mut MockVendor) -> (RealtimeSession, CancellationToken) {
    let adapter = OpenAiRealtime::new(config(&vendor.url));
    let cancel = CancellationToken::new();
    let token = cancel.clone();
    let connecting =
        tokio::spawn(async move { adapter.connect(INSTRUCTIONS, &tools(), token).await });
    let setup = fixture("openai_realtime/setup.jsonl");
    vendor.send_lines(&setup[..1]);
    let update = vendor.next_from_client().await;
    assert_eq!(update["type"], "session.update");
    vendor.send_lines(&setup[1..]);
    let session = tokio::time::timeout(Duration::from_secs(5), connecting)
        .await
        .expect("connected in time")
        .expect("task")
        .expect("session accepted");
    (session, cancel)
}

async fn next_event(session: &mut RealtimeSession) -> SpeechToSpeechEvent {
    tokio::time::timeout(Duration::from_secs(5), session.session.events.recv())
        .await
        .expect("an event within 5 s")
        .expect("the session is open")
}

/// Reads events until `count` audio frames arrived; returns the others.
async fn take_audio(
    session: &mut RealtimeSession,
    count: usize,
) -> (Vec<PcmFrame>, Vec<SpeechToSpeechEvent>) {
    let mut frames = Vec::new();
    let mut others = Vec::new();
    while frames.len() < count {
        match next_event(session).await {
            SpeechToSpeechEvent::Audio(frame) => frames.push(frame),
            other => others.push(other),
        }
    }
    (frames, others)
}

#[tokio::test]
async fn setup_sends_auth_voice_formats_vad_and_tools() {
    let mut vendor = MockVendor::start(None).await;
    let adapter = OpenAiRealtime::new(config(&vendor.url));
    let connecting = tokio::spawn(async move {
        adapter
            .connect(INSTRUCTIONS, &tools(), CancellationToken::new())
            .await
    });
    let handshake = vendor.handshake().await;
    assert_eq!(
        handshake.path_and_query,
        "/v1/realtime?model=gpt-4o-realtime-preview"
    );
    assert_eq!(handshake.header("authorization"), Some("Bearer sk-test"));
    assert_eq!(handshake.header("openai-beta"), Some("realtime=v1"));
    let setup = fixture("openai_realtime/setup.jsonl");
    vendor.send_lines(&setup[..1]);
    let update = vendor.next_from_client().await;
    let session = &update["session"];
    assert_eq!(session["instructions"], INSTRUCTIONS);
    assert_eq!(session["voice"], "alloy");
    assert_eq!(session["input_audio_format"], "pcm16");
    assert_eq!(session["output_audio_format"], "pcm16");
    assert_eq!(session["input_audio_transcription"]["language"], "es");
    assert_eq!(session["turn_detection"]["type"], "server_vad");
    assert_eq!(session["turn_detection"]["interrupt_response"], true);
    assert_eq!(
        session["tools"],
        serde_json::json!([{
            "type": "function",
            "name": "opening_hours",
            "description": "The bakery's opening hours for a day.",
            "parameters": tools()[0].parameters,
        }])
    );
    // Not connected until the server confirms the configuration.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!connecting.is_finished());
    vendor.send_lines(&setup[1..]);
    assert!(connecting.await.expect("task").is_ok());
}

#[tokio::test]
async fn caller_audio_goes_out_at_24_khz() {
    let mut vendor = MockVendor::start(None).await;
    let (session, _cancel) = open_session(&mut vendor).await;
    for i in 0..10u64 {
        let frame = PcmFrame::new(
            SampleRate::Hz16000,
            MediaTime::from_millis(20 * i),
            vec![1000; 320],
        );
        session
            .session
            .audio_in
            .try_send(frame)
            .expect("queue has room");
    }
    use base64::Engine as _;
    for _ in 0..10 {
        let append = vendor.next_from_client().await;
        assert_eq!(append["type"], "input_audio_buffer.append");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(append["audio"].as_str().expect("audio"))
            .expect("base64");
        assert_eq!(bytes.len(), 480 * 2, "20 ms at 24 kHz");
    }
}

#[tokio::test]
async fn a_spanish_turn_with_a_tool_call_round_trip() {
    let mut vendor = MockVendor::start(None).await;
    let (mut session, cancel) = open_session(&mut vendor).await;

    vendor.send_lines(&fixture("openai_realtime/caller_asks_and_tool_call.jsonl"));
    assert_eq!(
        next_event(&mut session).await,
        SpeechToSpeechEvent::Transcript {
            role: Role::User,
            text: "¿A qué hora abren mañana?".into(),
            is_final: true,
        }
    );
    let call = match next_event(&mut session).await {
        SpeechToSpeechEvent::ToolCall(call) => call,
        other => panic!("expected the tool call, got {other:?}"),
    };
    assert_eq!(call.id, "call_abc123");
    assert_eq!(call.name, "opening_hours");
    assert_eq!(call.arguments_json, r#"{"day":"tomorrow"}"#);

    session
        .session
        .tool_results
        .send(ToolResultMessage {
            tool_call_id: call.id.clone(),
            content: r#"{"opens":"09:00","closes":"20:00"}"#.into(),
        })
        .expect("session open");
    assert_eq!(
        vendor.next_from_client().await,
        serde_json::json!({
            "type": "conversation.item.create",
            "item": {
                "type": "function_call_output",
                "call_id": "call_abc123",
                "output": r#"{"opens":"09:00","closes":"20:00"}"#,
            },
        })
    );
    assert_eq!(
        vendor.next_from_client().await,
        serde_json::json!({"type": "response.create"}),
        "the model is asked to speak the result"
    );

    let reply = fixture("openai_realtime/reply_after_tool.jsonl");
    vendor.send_lines(&reply);
    // 14900 samples at 24 kHz: 31 whole 20 ms frames and a padded tail.
    let samples = fixture_samples(&reply, "delta");
    assert_eq!(samples, 14_900);
    let (frames, others) = take_audio(&mut session, samples.div_ceil(480)).await;
    for (i, frame) in frames.iter().enumerate() {
        assert_eq!(
            frame.rate(),
            SampleRate::Hz16000,
            "resampled to the engine's rate"
        );
        assert_eq!(frame.len(), 320);
        assert_eq!(frame.start(), MediaTime::from_millis(20 * i as u64));
    }
    // Non-silent audio came through the resampler.
    assert!(frames[5].samples().iter().any(|&s| s.abs() > 1000));
    let mut transcripts: Vec<_> = others;
    loop {
        let event = next_event(&mut session).await;
        let done = matches!(
            &event,
            SpeechToSpeechEvent::Transcript { is_final: true, .. }
        );
        transcripts.push(event);
        if done {
            break;
        }
    }
    assert_eq!(
        transcripts,
        vec![
            SpeechToSpeechEvent::Transcript {
                role: Role::Agent,
                text: "Abrimos ".into(),
                is_final: false
            },
            SpeechToSpeechEvent::Transcript {
                role: Role::Agent,
                text: "Abrimos a las nueve.".into(),
                is_final: false
            },
            SpeechToSpeechEvent::Transcript {
                role: Role::Agent,
                text: "Abrimos a las nueve.".into(),
                is_final: true
            },
        ]
    );

    cancel.cancel();
    let closed = tokio::time::timeout(Duration::from_secs(5), session.control.ended()).await;
    assert_eq!(closed.expect("ends on cancel"), None);
}

#[tokio::test]
async fn a_server_detected_barge_in_truncates_at_what_was_played() {
    let mut vendor = MockVendor::start(None).await;
    let (mut session, _cancel) = open_session(&mut vendor).await;
    vendor.send_lines(&fixture("openai_realtime/long_reply.jsonl"));
    // 600 ms of reply audio arrive at once, far ahead of playback.
    let (_frames, _) = take_audio(&mut session, 30).await;
    session
        .control
        .report_played(Duration::from_millis(260))
        .expect("open");
    vendor.send_lines(&fixture("openai_realtime/barge_in.jsonl"));
    // The server cancelled its own reply (interrupt_response): only the truncation is sent.
    assert_eq!(
        vendor.next_from_client().await,
        serde_json::json!({
            "type": "conversation.item.truncate",
            "item_id": "item_reply_3",
            "content_index": 0,
            "audio_end_ms": 260,
        })
    );
    assert_eq!(
        next_event(&mut session).await,
        SpeechToSpeechEvent::ReplyInterrupted
    );
    // The late audio and text of the cut reply are dropped: the next event
    // is the caller's words.
    let caller = fixture("openai_realtime/caller_asks_and_tool_call.jsonl");
    vendor.send_lines(&caller[4..5]);
    assert!(matches!(
        next_event(&mut session).await,
        SpeechToSpeechEvent::Transcript {
            role: Role::User,
            is_final: true,
            ..
        }
    ));
}

#[tokio::test]
async fn without_a_playback_report_the_cut_follows_the_clock() {
    let mut vendor = MockVendor::start(None).await;
    let (mut session, _cancel) = open_session(&mut vendor).await;
    let sent = std::time::Instant::now();
    vendor.send_lines(&fixture("openai_realtime/long_reply.jsonl"));
    let _ = take_audio(&mut session, 30).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    vendor.send_lines(&fixture("openai_realtime/barge_in.jsonl"));
    let truncate = vendor.next_from_client().await;
    let elapsed = sent.elapsed().as_millis() as u64;
    let cut = truncate["audio_end_ms"].as_u64().expect("audio_end_ms");
    assert!(cut >= 150, "at least the time waited: {cut}");
    assert!(
        cut <= elapsed.min(600),
        "at most the time since the audio came, and the audio: {cut}"
    );
}

#[tokio::test]
async fn an_engine_barge_in_cancels_and_truncates() {
    let mut vendor = MockVendor::start(None).await;
    let (mut session, _cancel) = open_session(&mut vendor).await;
    vendor.send_lines(&fixture("openai_realtime/long_reply.jsonl"));
    let _ = take_audio(&mut session, 30).await;
    session
        .control
        .interrupt(Duration::from_millis(140))
        .expect("open");
    assert_eq!(
        vendor.next_from_client().await,
        serde_json::json!({"type": "response.cancel"}),
        "the reply is still being generated"
    );
    assert_eq!(vendor.next_from_client().await["audio_end_ms"], 140);
    assert_eq!(
        next_event(&mut session).await,
        SpeechToSpeechEvent::ReplyInterrupted
    );
}

#[tokio::test]
async fn a_vendor_error_is_reported_and_ends_the_session_when_the_server_closes() {
    let mut vendor = MockVendor::start(None).await;
    let (mut session, _cancel) = open_session(&mut vendor).await;
    vendor.send_lines(&fixture("openai_realtime/error.jsonl"));
    vendor.close(1000, "");
    let error = tokio::time::timeout(Duration::from_secs(5), session.control.ended())
        .await
        .expect("ends");
    match error {
        Some(ProviderError::BadResponse(text)) => {
            assert!(
                text.contains("invalid_value") && text.contains("pcm8"),
                "{text}"
            )
        }
        other => panic!("expected the vendor's error, got {other:?}"),
    }
    assert!(
        session.session.events.recv().await.is_none(),
        "the event stream ended"
    );
}

#[tokio::test]
async fn a_rejected_configuration_fails_the_connect() {
    let mut vendor = MockVendor::start(None).await;
    let adapter = OpenAiRealtime::new(config(&vendor.url));
    let connecting = tokio::spawn(async move {
        adapter
            .connect(INSTRUCTIONS, &tools(), CancellationToken::new())
            .await
    });
    vendor.send_lines(&fixture("openai_realtime/setup.jsonl")[..1]);
    vendor.next_from_client().await;
    vendor.send_lines(&fixture("openai_realtime/error.jsonl"));
    match connecting.await.expect("task") {
        Err(ProviderError::BadResponse(text)) => assert!(text.contains("invalid_value"), "{text}"),
        other => panic!("expected the vendor's error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_refused_key_is_reported_at_the_handshake() {
    let vendor = MockVendor::start(Some(401)).await;
    let adapter = OpenAiRealtime::new(config(&vendor.url));
    match adapter
        .connect(INSTRUCTIONS, &[], CancellationToken::new())
        .await
    {
        Err(ProviderError::Unavailable(text)) => {
            assert!(
                text.contains("OpenAI Realtime refused the API key (HTTP 401)"),
                "{text}"
            )
        }
        other => panic!("expected a 401 error, got {other:?}"),
    }
    // Through the provider trait, the event stream ends at once.
    let vendor = MockVendor::start(Some(401)).await;
    let adapter = OpenAiRealtime::new(config(&vendor.url));
    let mut session = adapter
        .open(INSTRUCTIONS, &[], CancellationToken::new())
        .expect("opening starts");
    let end = tokio::time::timeout(Duration::from_secs(5), session.events.recv()).await;
    assert_eq!(end.expect("no hang"), None);
}

#[tokio::test]
async fn a_socket_dropped_mid_reply_ends_the_session_with_an_error() {
    let mut vendor = MockVendor::start(None).await;
    let (mut session, _cancel) = open_session(&mut vendor).await;
    vendor.send_lines(&fixture("openai_realtime/long_reply.jsonl")[..5]);
    vendor.vanish();
    let error = tokio::time::timeout(Duration::from_secs(5), session.control.ended())
        .await
        .expect("no hang");
    assert!(
        matches!(error, Some(ProviderError::Unavailable(_))),
        "{error:?}"
    );
}
