//! The Cartesia adapter against a local server playing a recorded-shape
//! session (`fixtures/providers/cartesia/`): the request, the frames, the
//! cancel on drop, and how failures surface.

use std::time::Duration;

use callingbox_engine::codecs::{MediaTime, SampleRate};
use callingbox_engine::providers::cartesia::{CartesiaConfig, CartesiaTts};
use callingbox_engine::providers::{ProviderError, TtsProvider};

mod common;

use common::mock_vendor::*;
use futures::StreamExt;
use tokio::sync::oneshot;

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

fn config(url: &str, language: &str) -> CartesiaConfig {
    let mut config = CartesiaConfig::new("sk_car_test", "voice-es-1", language);
    config.base_url = url.to_owned();
    config.idle_timeout = Duration::from_secs(3);
    config
}

type Frames = Vec<Result<callingbox_engine::codecs::PcmFrame, ProviderError>>;

fn collect(tts: &CartesiaTts, text: &str) -> tokio::task::JoinHandle<Frames> {
    let stream = tts.synthesize(text);
    tokio::spawn(async move { stream.collect::<Vec<_>>().await })
}

/// The session's lines addressed to the client's context.
fn for_context(lines: &[String], context_id: &str) -> Vec<String> {
    lines
        .iter()
        .map(|l| l.replace("CONTEXT_ID", context_id))
        .collect()
}

#[tokio::test]
async fn speaks_a_clause_in_20_ms_frames() {
    let mut vendor = MockVendor::start(None).await;
    let tts = CartesiaTts::new(config(&vendor.url, "es"));
    assert_eq!(tts.sample_rate(), SampleRate::Hz16000);
    let frames = collect(&tts, " Buenos días. ");

    let handshake = vendor.handshake().await;
    assert_eq!(
        handshake.path_and_query,
        "/tts/websocket?api_key=sk_car_test&cartesia_version=2024-11-13"
    );
    let request = vendor.next_from_client().await;
    let context_id = request["context_id"]
        .as_str()
        .expect("a context id")
        .to_owned();
    assert!(!context_id.is_empty());
    assert_eq!(
        request,
        serde_json::json!({
            "model_id": "sonic-2",
            "transcript": "Buenos días.",
            "voice": {"mode": "id", "id": "voice-es-1"},
            "language": "es",
            "context_id": context_id,
            "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000},
            "continue": false,
        })
    );

    let session = for_context(&fixture("cartesia/hello.jsonl"), &context_id);
    vendor.send_lines(&session);
    let frames: Vec<_> = frames
        .await
        .expect("task")
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("no error");
    // 7500 samples: 23 whole frames and a padded one (440 ms, 468.75 ms of audio).
    let samples = fixture_samples(&session, "data");
    assert_eq!(samples, 7500);
    assert_eq!(frames.len(), 24);
    assert!(frames.iter().all(|f| f.len() == 320));
    assert_eq!(
        frames.last().expect("frames").end(),
        MediaTime::from_millis(480)
    );
    let last = frames.last().expect("frames");
    assert!(last.samples()[140..].iter().all(|&s| s == 0));
    // `done` ended the stream by itself: no cancel follows.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(vendor.received.try_recv().is_err(), "nothing after `done`");
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_context() {
    use futures::StreamExt as _;
    let mut vendor = MockVendor::start(None).await;
    let tts = CartesiaTts::new(config(&vendor.url, "en"));
    let mut stream = tts.synthesize("A long answer the caller will interrupt.");
    let (first_tx, first_rx) = oneshot::channel();
    let consumer = tokio::spawn(async move {
        let first = stream.next().await;
        let _ = first_tx.send(first.map(|f| f.is_ok()));
        // The barge-in: the engine drops the stream mid-clause.
        drop(stream);
    });
    let request = vendor.next_from_client().await;
    let context_id = request["context_id"].as_str().expect("context").to_owned();
    let session = for_context(&fixture("cartesia/hello.jsonl"), &context_id);
    vendor.send_lines(&session[..2]);
    assert_eq!(first_rx.await.expect("first frame"), Some(true));
    consumer.await.expect("consumer");
    let cancel = vendor.next_from_client().await;
    assert_eq!(
        cancel,
        serde_json::json!({"context_id": context_id, "cancel": true})
    );
}

#[tokio::test]
async fn a_vendor_error_message_is_a_clear_error() {
    let mut vendor = MockVendor::start(None).await;
    let tts = CartesiaTts::new(config(&vendor.url, "en"));
    let frames = collect(&tts, "Hello.");
    let context_id = vendor.next_from_client().await["context_id"]
        .as_str()
        .expect("context")
        .to_owned();
    vendor.send_lines(&for_context(
        &fixture("cartesia/invalid_voice.jsonl"),
        &context_id,
    ));
    let frames = frames.await.expect("task");
    match frames.as_slice() {
        [Err(ProviderError::BadResponse(text))] => {
            assert!(text.contains("status 400"), "{text}");
            assert!(text.contains("Invalid voice ID"), "{text}");
        }
        other => panic!("expected a vendor error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_refused_key_is_reported_at_the_handshake() {
    let vendor = MockVendor::start(Some(401)).await;
    let tts = CartesiaTts::new(config(&vendor.url, "en"));
    let frames = collect(&tts, "Hello.").await.expect("task");
    match frames.as_slice() {
        [Err(ProviderError::Unavailable(text))] => {
            assert!(
                text.contains("Cartesia refused the API key (HTTP 401)"),
                "{text}"
            )
        }
        other => panic!("expected one 401 error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_socket_closed_mid_stream_is_an_error_not_a_hang() {
    let mut vendor = MockVendor::start(None).await;
    let tts = CartesiaTts::new(config(&vendor.url, "en"));
    let frames = collect(&tts, "Hello.");
    let context_id = vendor.next_from_client().await["context_id"]
        .as_str()
        .expect("context")
        .to_owned();
    // 1600 samples = 5 whole frames, then a server-side close with a reason.
    vendor.send_lines(&for_context(&fixture("cartesia/hello.jsonl"), &context_id)[..1]);
    vendor.close(1011, "internal error");
    let frames = tokio::time::timeout(Duration::from_secs(5), frames)
        .await
        .expect("the stream ends")
        .expect("task");
    assert_eq!(frames.iter().filter(|f| f.is_ok()).count(), 5);
    match frames.last() {
        Some(Err(ProviderError::Unavailable(text))) => {
            assert!(
                text.contains("1011") && text.contains("internal error"),
                "{text}"
            )
        }
        other => panic!("expected a close error, got {other:?}"),
    }
}
