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

mod common;

use common::mock_vendor::*;

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
