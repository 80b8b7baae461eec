//! A provider failing mid-call, on virtual time: the call ends at once with
//! a clear error naming the provider (never a caller left in silence), or
//! the configured fallback model answers in its place.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use callingbox_engine::codecs::{
    FrameDuration, MediaTime, PcmFrame, SampleRate, read_wav, split_into_frames,
};
use callingbox_engine::conversation::{
    AgentConfig, AgentHandle, AgentLoop, OutboundFrame, PROVIDER_FAILED, Providers, UserTurn,
};
use callingbox_engine::events::{CallEvent, EndedBy, ProviderRole, Role};
use callingbox_engine::providers::fallback::FallbackLlm;
use callingbox_engine::providers::local_whisper::{
    LocalWhisperAsr, LocalWhisperConfig, WhisperService,
};
use callingbox_engine::providers::scripted::{
    LlmLatency, ScriptMatch, ScriptRule, ScriptedLlm, ScriptedTts, TtsLatency,
};
use callingbox_engine::providers::{
    AsrEvent, AsrProvider, LlmEvent, LlmProvider, LlmRequest, ProviderError, TtsProvider,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How a test model misbehaves.
#[derive(Clone, Copy)]
enum Misbehaviour {
    /// Refuses at once (a 503, a refused connection).
    Refuses,
    /// Never answers.
    Hangs,
    /// Says a few words, then the connection drops.
    DropsMidAnswer,
}

struct BrokenLlm {
    how: Misbehaviour,
    requests: Arc<AtomicUsize>,
}

impl LlmProvider for BrokenLlm {
    fn stream_chat(&self, _: LlmRequest) -> BoxStream<'static, Result<LlmEvent, ProviderError>> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let unavailable = || Err(ProviderError::Unavailable("503 Service Unavailable".into()));
        match self.how {
            Misbehaviour::Refuses => futures::stream::iter([unavailable()]).boxed(),
            Misbehaviour::Hangs => futures::stream::pending().boxed(),
            Misbehaviour::DropsMidAnswer => futures::stream::iter([
                Ok(LlmEvent::Token("Let me check that for you. ".into())),
                Err(ProviderError::Unavailable("connection reset".into())),
            ])
            .boxed(),
        }
    }
}

/// A voice that fails on every clause.
struct BrokenTts;

impl TtsProvider for BrokenTts {
    fn sample_rate(&self) -> SampleRate {
        SampleRate::Hz16000
    }

    fn synthesize(&self, _: &str) -> BoxStream<'static, Result<PcmFrame, ProviderError>> {
        futures::stream::iter([Err(ProviderError::Unavailable("voice server gone".into()))]).boxed()
    }
}

fn scripted_llm(reply: &str) -> ScriptedLlm {
    ScriptedLlm::new(
        vec![ScriptRule::when(ScriptMatch::Always).reply(reply)],
        LlmLatency {
            time_to_first_token: Duration::from_millis(250),
            tokens_per_second: 50,
        },
    )
}

fn scripted_tts() -> ScriptedTts {
    ScriptedTts::new(
        SampleRate::Hz16000,
        TtsLatency {
            time_to_first_byte: Duration::from_millis(100),
            real_time_factor: 0.1,
            speech_per_char: Duration::from_millis(60),
        },
    )
}

struct Call {
    agent: AgentHandle,
    events: mpsc::UnboundedReceiver<CallEvent>,
    frames: Arc<AtomicUsize>,
}

fn start(llm: Arc<dyn LlmProvider>, tts: Arc<dyn TtsProvider>) -> Call {
    let config = AgentConfig {
        system_prompt: "You are a booking assistant.".into(),
        llm_timeout: Duration::from_secs(10),
        ..AgentConfig::default()
    };
    let (audio_tx, mut audio_rx) = mpsc::channel::<OutboundFrame>(4);
    let (agent, events) = AgentLoop::spawn(config, Providers { llm, tts }, audio_tx);
    let frames = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&frames);
    // Plays agent audio at real-time pace, like an RTP sender.
    tokio::spawn(async move {
        while let Some(out) = audio_rx.recv().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(out.frame.duration()).await;
        }
    });
    Call {
        agent,
        events,
        frames,
    }
}

/// Every event until the call's end (or none after `limit` of virtual time).
async fn until_ended(call: &mut Call, limit: Duration) -> Vec<CallEvent> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, call.events.recv()).await {
        let ended = matches!(event, CallEvent::Ended { .. });
        seen.push(event);
        if ended {
            break;
        }
    }
    seen
}

/// The provider failure and the end the call reports, with the failure's time.
fn failure_of(events: &[CallEvent]) -> (ProviderRole, String, u64) {
    let failure = events.iter().find_map(|event| match event {
        CallEvent::ProviderFailed {
            provider,
            error,
            at_ms,
        } => Some((*provider, error.clone(), *at_ms)),
        _ => None,
    });
    let ended = events.iter().find_map(|event| match event {
        CallEvent::Ended { by, reason, .. } => Some((*by, reason.clone())),
        _ => None,
    });
    assert_eq!(
        ended,
        Some((EndedBy::System, PROVIDER_FAILED.to_owned())),
        "{events:?}"
    );
    failure.unwrap_or_else(|| panic!("no provider failure reported: {events:?}"))
}

fn agent_words(events: &[CallEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|event| match event {
            CallEvent::TranscriptSegment {
                role: Role::Agent,
                text,
                ..
            } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_model_that_refuses_ends_the_call_with_an_llm_error() {
    let requests = Arc::new(AtomicUsize::new(0));
    let llm = Arc::new(BrokenLlm {
        how: Misbehaviour::Refuses,
        requests: Arc::clone(&requests),
    });
    let mut call = start(llm, Arc::new(scripted_tts()));
    call.agent
        .commit(UserTurn::text("I'd like to book a table."));
    let events = until_ended(&mut call, Duration::from_secs(5)).await;
    let (provider, error, _) = failure_of(&events);
    assert_eq!(provider, ProviderRole::Llm);
    assert!(error.contains("503"), "{error}");
    assert!(agent_words(&events).is_empty());
    assert_eq!(call.frames.load(Ordering::SeqCst), 0);
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_model_that_never_answers_ends_the_call_after_the_timeout() {
    let llm = Arc::new(BrokenLlm {
        how: Misbehaviour::Hangs,
        requests: Arc::default(),
    });
    let mut call = start(llm, Arc::new(scripted_tts()));
    call.agent.commit(UserTurn::text("Are you there?"));
    let events = until_ended(&mut call, Duration::from_secs(30)).await;
    let (provider, error, at_ms) = failure_of(&events);
    assert_eq!(provider, ProviderRole::Llm);
    assert!(error.contains("no answer within 10.0 s"), "{error}");
    // The configured 10 s, not sooner and not much later.
    assert!((10_000..10_100).contains(&at_ms), "failed at {at_ms} ms");
}

#[tokio::test(start_paused = true)]
async fn words_said_before_the_model_dropped_are_played_then_the_call_ends() {
    let llm = Arc::new(BrokenLlm {
        how: Misbehaviour::DropsMidAnswer,
        requests: Arc::default(),
    });
    let mut call = start(llm, Arc::new(scripted_tts()));
    call.agent.commit(UserTurn::text("What time do you open?"));
    let events = until_ended(&mut call, Duration::from_secs(10)).await;
    let (provider, error, _) = failure_of(&events);
    assert_eq!(provider, ProviderRole::Llm);
    assert!(error.contains("connection reset"), "{error}");
    assert_eq!(
        agent_words(&events),
        vec!["Let me check that for you.".to_owned()]
    );
    assert!(call.frames.load(Ordering::SeqCst) > 0);
}

#[tokio::test(start_paused = true)]
async fn a_voice_that_fails_ends_the_call_with_a_tts_error() {
    let mut call = start(
        Arc::new(scripted_llm("We open at nine.")),
        Arc::new(BrokenTts),
    );
    call.agent.commit(UserTurn::text("What time do you open?"));
    let events = until_ended(&mut call, Duration::from_secs(10)).await;
    let (provider, error, _) = failure_of(&events);
    assert_eq!(provider, ProviderRole::Tts);
    assert!(error.contains("voice server gone"), "{error}");
    assert_eq!(call.frames.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn a_failed_recognizer_ends_the_call_with_an_asr_error() {
    let mut call = start(Arc::new(scripted_llm("Hello.")), Arc::new(scripted_tts()));
    call.agent
        .provider_failed(ProviderRole::Asr, "local Whisper: connection refused");
    let events = until_ended(&mut call, Duration::from_secs(1)).await;
    let (provider, error, _) = failure_of(&events);
    assert_eq!(provider, ProviderRole::Asr);
    assert_eq!(error, "local Whisper: connection refused");
}

#[tokio::test(start_paused = true)]
async fn the_fallback_model_answers_when_the_primary_refuses_or_hangs() {
    for how in [Misbehaviour::Refuses, Misbehaviour::Hangs] {
        let requests = Arc::new(AtomicUsize::new(0));
        let primary = Arc::new(BrokenLlm {
            how,
            requests: Arc::clone(&requests),
        });
        let fallback = scripted_llm("We open at nine.");
        let llm = Arc::new(FallbackLlm::new(
            primary,
            Arc::new(fallback.clone()),
            Duration::from_secs(3),
        ));
        let mut call = start(llm, Arc::new(scripted_tts()));
        call.agent.commit(UserTurn::text("What time do you open?"));
        let started = tokio::time::Instant::now();
        let mut events = Vec::new();
        while agent_words(&events).is_empty() && started.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(event)) =
                tokio::time::timeout(Duration::from_secs(1), call.events.recv()).await
            {
                events.push(event);
            }
        }
        assert_eq!(agent_words(&events), vec!["We open at nine.".to_owned()]);
        assert!(
            !events.iter().any(|e| matches!(
                e,
                CallEvent::ProviderFailed { .. } | CallEvent::Ended { .. }
            )),
            "{events:?}"
        );
        assert_eq!(requests.load(Ordering::SeqCst), 1);
        assert_eq!(fallback.records().len(), 1);
        call.agent.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_primary_that_fails_mid_answer_is_not_retried_on_the_fallback() {
    let fallback = scripted_llm("We open at nine.");
    let llm = Arc::new(FallbackLlm::new(
        Arc::new(BrokenLlm {
            how: Misbehaviour::DropsMidAnswer,
            requests: Arc::default(),
        }),
        Arc::new(fallback.clone()),
        Duration::from_secs(3),
    ));
    let mut call = start(llm, Arc::new(scripted_tts()));
    call.agent.commit(UserTurn::text("What time do you open?"));
    let events = until_ended(&mut call, Duration::from_secs(10)).await;
    let (provider, _, _) = failure_of(&events);
    assert_eq!(provider, ProviderRole::Llm);
    assert!(fallback.records().is_empty());
}

#[tokio::test(start_paused = true)]
async fn when_both_models_fail_the_error_names_both() {
    let llm = Arc::new(FallbackLlm::new(
        Arc::new(BrokenLlm {
            how: Misbehaviour::Hangs,
            requests: Arc::default(),
        }),
        Arc::new(BrokenLlm {
            how: Misbehaviour::Refuses,
            requests: Arc::default(),
        }),
        Duration::from_secs(3),
    ));
    let mut call = start(llm, Arc::new(scripted_tts()));
    call.agent.commit(UserTurn::text("Hello?"));
    let events = until_ended(&mut call, Duration::from_secs(20)).await;
    let (provider, error, _) = failure_of(&events);
    assert_eq!(provider, ProviderRole::Llm);
    assert!(
        error.contains("no first event within 3000 ms") && error.contains("503"),
        "{error}"
    );
}

#[tokio::test]
async fn a_whisper_service_that_dies_mid_utterance_fails_the_session() {
    // A service that takes the first request's header line, then dies.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(socket).lines();
                let _ = lines.next_line().await;
            });
        }
    });
    let asr = LocalWhisperAsr::start(LocalWhisperConfig {
        service: WhisperService::Connect(address),
        ..LocalWhisperConfig::default()
    })
    .await
    .expect("connects");
    let mut session = asr.open(CancellationToken::new()).expect("opens");
    // A spoken sentence, then silence: one utterance to decode.
    let wav = read_wav(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fixtures/audio/greeting_sam.16k.wav"),
    )
    .expect("fixture");
    let mut frames = split_into_frames(&wav.samples, SampleRate::Hz16000, FrameDuration::Ms20);
    frames.extend(std::iter::repeat_n(
        PcmFrame::silence(SampleRate::Hz16000, MediaTime::ZERO, FrameDuration::Ms20),
        50,
    ));
    let mut events = Vec::new();
    for frame in &frames {
        if session.push_frame(frame).is_err() {
            // The session is over: what it reported is below.
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        while let Some(event) = session.try_next_event() {
            events.push(event);
        }
    }
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_secs(3), session.next_event()).await
    {
        events.push(event);
    }
    assert!(events.contains(&AsrEvent::UtteranceStarted), "{events:?}");
    let failure = events.iter().find_map(|event| match event {
        AsrEvent::Failed { error } => Some(error.clone()),
        _ => None,
    });
    let failure = failure.unwrap_or_else(|| panic!("no failure reported: {events:?}"));
    assert!(failure.starts_with("local Whisper:"), "{failure}");
    assert!(
        matches!(events.last(), Some(AsrEvent::Failed { .. })),
        "{events:?}"
    );
}
