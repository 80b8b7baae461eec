//! Keypad input and output in the agent loop, on virtual time: keys the caller presses
//! become one user turn per entry (terminator or inter-digit timeout), which
//! the model is asked about and the transcript records as `dtmf`.

use std::sync::Arc;
use std::time::Duration;

use callingbox_engine::codecs::SampleRate;
use callingbox_engine::conversation::call_control::{CallControl, DigitsRequest};
use callingbox_engine::conversation::{AgentConfig, AgentLoop, Providers, UserTurn};
use callingbox_engine::events::{CallEvent, Role, SegmentSource, ToolOutcome};
use callingbox_engine::providers::ChatMessage;
use callingbox_engine::providers::scripted::{
    LlmLatency, ScriptMatch, ScriptRule, ScriptedLlm, ScriptedTts, TtsLatency,
};
use callingbox_engine::tools::ToolSet;
use callingbox_engine::transport::rtp_events::DigitStep;
use tokio::sync::mpsc;
use tokio::time::sleep;

fn start() -> (
    callingbox_engine::conversation::AgentHandle,
    mpsc::UnboundedReceiver<CallEvent>,
    ScriptedLlm,
    mpsc::Receiver<callingbox_engine::conversation::OutboundFrame>,
) {
    start_with(
        vec![
            ScriptRule::when(ScriptMatch::UserContains("pressed".into()))
                .reply("Thanks, got your account number."),
            ScriptRule::when(ScriptMatch::Always).reply("Okay."),
        ],
        ToolSet::default(),
    )
}

fn start_with(
    rules: Vec<ScriptRule>,
    tools: ToolSet,
) -> (
    callingbox_engine::conversation::AgentHandle,
    mpsc::UnboundedReceiver<CallEvent>,
    ScriptedLlm,
    mpsc::Receiver<callingbox_engine::conversation::OutboundFrame>,
) {
    let llm = ScriptedLlm::new(rules, LlmLatency::default());
    let tts = ScriptedTts::new(
        SampleRate::Hz16000,
        TtsLatency {
            time_to_first_byte: Duration::from_millis(100),
            real_time_factor: 0.1,
            speech_per_char: Duration::from_millis(60),
        },
    );
    let (audio_tx, audio_rx) = mpsc::channel(1_024);
    let (agent, events) = AgentLoop::spawn(
        AgentConfig {
            tools,
            ..AgentConfig::default()
        },
        Providers {
            llm: Arc::new(llm.clone()),
            tts: Arc::new(tts),
        },
        audio_tx,
    );
    (agent, events, llm, audio_rx)
}

fn user_messages(llm: &ScriptedLlm) -> Vec<String> {
    llm.records()
        .iter()
        .filter_map(|record| match record.request.messages.last() {
            Some(ChatMessage::User { content }) => Some(content.clone()),
            _ => None,
        })
        .collect()
}

fn keypad_segments(events: &mut mpsc::UnboundedReceiver<CallEvent>) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let CallEvent::TranscriptSegment {
            role: Role::User,
            text,
            source: SegmentSource::Dtmf,
            started_at_ms,
            ended_at_ms,
            ..
        } = event
        {
            out.push((text, started_at_ms, ended_at_ms));
        }
    }
    out
}

#[tokio::test(start_paused = true)]
async fn keys_become_one_turn_when_the_caller_stops_pressing() {
    let (agent, mut events, llm, _audio) = start();
    for key in ['1', '2', '3', '4'] {
        agent.press_key(key);
        sleep(Duration::from_millis(400)).await;
    }
    // 400 ms after the last key: still collecting, the model was not asked.
    assert!(user_messages(&llm).is_empty());
    // The inter-digit timeout (2 s) after the last key ends the entry.
    sleep(Duration::from_millis(1_601)).await;
    assert_eq!(user_messages(&llm), vec!["[pressed 1234]"]);
    assert_eq!(
        keypad_segments(&mut events),
        vec![("[pressed 1234]".to_owned(), 0, 1_200)]
    );
    agent.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_pound_key_ends_the_entry_at_once_and_speech_comes_after_it() {
    let (agent, mut events, llm, _audio) = start();
    let keypad = agent.keypad();
    keypad.press('9');
    keypad.press('x'); // not a key: ignored
    keypad.press('#');
    sleep(Duration::from_millis(10)).await;
    assert_eq!(user_messages(&llm), vec!["[pressed 9#]"]);
    sleep(Duration::from_secs(5)).await;
    // Speech afterwards is a separate turn; the keys are in the history.
    agent.commit(UserTurn::text("That's all."));
    sleep(Duration::from_millis(10)).await;
    assert_eq!(user_messages(&llm), vec!["[pressed 9#]", "That's all."]);
    let history = agent.history();
    assert!(
        history
            .iter()
            .any(|m| matches!(m, ChatMessage::User { content } if content == "[pressed 9#]")),
        "{history:?}"
    );
    assert_eq!(keypad_segments(&mut events).len(), 1);
    agent.shutdown().await;
}

fn tool_results(events: &mut mpsc::UnboundedReceiver<CallEvent>) -> Vec<ToolOutcome> {
    let mut out = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let CallEvent::ToolResult { outcome, .. } = event {
            out.push(outcome);
        }
    }
    out
}

fn dtmf_agent() -> ToolSet {
    ToolSet::from_json(r#"[{"type":"builtin","name":"send_dtmf"}]"#).expect("tools")
}

fn pressing(digits: &str) -> Vec<ScriptRule> {
    vec![
        ScriptRule::when(ScriptMatch::Turn(0))
            .call("send_dtmf", serde_json::json!({ "digits": digits })),
        ScriptRule::when(ScriptMatch::Always).reply("Okay."),
    ]
}

#[tokio::test(start_paused = true)]
async fn send_dtmf_asks_the_transport_and_returns_its_answer() {
    let (agent, mut events, _llm, _audio) = start_with(pressing("1w2#"), dtmf_agent());
    let mut control = agent.attach_call_control();
    agent.commit(UserTurn::text("Press one, then two, then pound."));
    let request = tokio::time::timeout(Duration::from_secs(5), control.recv())
        .await
        .expect("a request in time")
        .expect("a request");
    let CallControl::SendDigits(DigitsRequest {
        ref digits,
        ref text,
        ..
    }) = request
    else {
        panic!("not digits: {request:?}");
    };
    assert_eq!(text, "1w2#");
    assert_eq!(
        digits,
        &[
            DigitStep::Key(1),
            DigitStep::Pause,
            DigitStep::Key(2),
            DigitStep::Key(11)
        ]
    );
    request.answer(Ok(serde_json::json!({"sent": "1w2#"})));
    sleep(Duration::from_millis(10)).await;
    assert_eq!(
        tool_results(&mut events),
        vec![ToolOutcome::Result(serde_json::json!({"sent": "1w2#"}))]
    );
    agent.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn send_dtmf_errors_reach_the_model() {
    // Not a digit: refused before the transport is asked.
    let (agent, mut events, _llm, _audio) = start_with(pressing("12x"), dtmf_agent());
    let mut control = agent.attach_call_control();
    agent.commit(UserTurn::text("Press it."));
    sleep(Duration::from_secs(2)).await;
    assert!(control.try_recv().is_err(), "the transport was asked");
    let results = tool_results(&mut events);
    assert!(
        matches!(&results[..], [ToolOutcome::Error(e)] if e.contains("'x'") && e.contains("not a keypad digit")),
        "{results:?}"
    );
    agent.shutdown().await;

    // A connection without call control (the media stream): a clear error.
    let (agent, mut events, _llm, _audio) = start_with(pressing("12"), dtmf_agent());
    agent.commit(UserTurn::text("Press it."));
    sleep(Duration::from_secs(2)).await;
    let results = tool_results(&mut events);
    assert!(
        matches!(&results[..], [ToolOutcome::Error(e)] if e.contains("cannot send keypad digits")),
        "{results:?}"
    );
    agent.shutdown().await;

    // The transport refuses (no telephone-event negotiated).
    let (agent, mut events, _llm, _audio) = start_with(pressing("12"), dtmf_agent());
    let mut control = agent.attach_call_control();
    agent.commit(UserTurn::text("Press it."));
    let request = tokio::time::timeout(Duration::from_secs(5), control.recv())
        .await
        .expect("in time")
        .expect("a request");
    request.answer(Err("no telephone-event".into()));
    sleep(Duration::from_millis(10)).await;
    assert_eq!(
        tool_results(&mut events),
        vec![ToolOutcome::Error("no telephone-event".into())]
    );
    agent.shutdown().await;
}
