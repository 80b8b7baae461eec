//! The ElevenLabs adapter against a local server playing a recorded-shape
//! session (`fixtures/providers/elevenlabs/`): what the client sends, how
//! the audio comes out, and how failures surface.

use std::time::Duration;

use callingbox_engine::codecs::{MediaTime, SampleRate};
use callingbox_engine::providers::elevenlabs::{ElevenLabsConfig, ElevenLabsTts};
use callingbox_engine::providers::{ProviderError, TtsProvider};

mod common;

use common::mock_vendor::*;
use futures::StreamExt;

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

fn config(url: &str, language: &str) -> ElevenLabsConfig {
    let mut config = ElevenLabsConfig::new("xi-test-key", "voice123", language);
    config.base_url = url.to_owned();
    config.idle_timeout = Duration::from_secs(3);
    config
}

type Frames = Vec<Result<callingbox_engine::codecs::PcmFrame, ProviderError>>;

fn collect(tts: &ElevenLabsTts, text: &str) -> tokio::task::JoinHandle<Frames> {
    let stream = tts.synthesize(text);
    tokio::spawn(async move { stream.collect::<Vec<_>>().await })
}

#[tokio::test]
async fn speaks_a_spanish_clause_in_20_ms_frames() {
    let mut vendor = MockVendor::start(None).await;
    let tts = ElevenLabsTts::new(config(&vendor.url, "es")).expect("16 kHz is offered");
    assert_eq!(tts.sample_rate(), SampleRate::Hz16000);
    let frames = collect(&tts, "Hola, ¿en qué puedo ayudarle?");

    let handshake = vendor.handshake().await;
    assert_eq!(
        handshake.path_and_query,
        "/v1/text-to-speech/voice123/stream-input?model_id=eleven_flash_v2_5&output_format=pcm_16000&language_code=es"
    );
    assert_eq!(handshake.header("xi-api-key"), Some("xi-test-key"));

    let begin = vendor.next_from_client().await;
    assert_eq!(begin["text"], " ", "the opening message is a single space");
    assert_eq!(begin["voice_settings"]["stability"], 0.5);
    assert_eq!(
        begin["voice_settings"]["similarity_boost"].as_f64(),
        Some(0.800000011920929)
    );
    let clause = vendor.next_from_client().await;
    assert_eq!(clause["text"], "Hola, ¿en qué puedo ayudarle? ");
    assert_eq!(clause["try_trigger_generation"], true);
    assert_eq!(clause["flush"], true);
    let end = vendor.next_from_client().await;
    assert_eq!(
        end,
        serde_json::json!({"text": ""}),
        "the empty text ends the input"
    );

    let session = fixture("elevenlabs/hola.jsonl");
    vendor.send_lines(&session);
    vendor.close(1000, "");
    let frames: Vec<_> = frames
        .await
        .expect("task")
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("no error");

    // 6200 samples of audio: 19 whole frames and a padded last one.
    let samples = fixture_samples(&session, "audio");
    assert_eq!(samples, 6200);
    assert_eq!(frames.len(), samples.div_ceil(320));
    for (i, frame) in frames.iter().enumerate() {
        assert_eq!(frame.rate(), SampleRate::Hz16000);
        assert_eq!(frame.len(), 320, "every frame is 20 ms");
        assert_eq!(frame.start(), MediaTime::from_millis(20 * i as u64));
    }
    let last = frames.last().expect("frames");
    assert!(
        last.samples()[120..].iter().all(|&s| s == 0),
        "padding is silence"
    );
    assert!(
        last.samples()[..120].iter().any(|&s| s != 0),
        "the tail is kept"
    );
    // The audio is the vendor's, sample for sample, across chunk borders.
    use base64::Engine as _;
    let first_chunk: serde_json::Value = serde_json::from_str(&session[0]).expect("json");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(first_chunk["audio"].as_str().expect("audio"))
        .expect("base64");
    let expected: Vec<i16> = bytes
        .chunks_exact(2)
        .map(|p| i16::from_le_bytes([p[0], p[1]]))
        .collect();
    let played: Vec<i16> = frames.iter().flat_map(|f| f.samples().to_vec()).collect();
    assert_eq!(&played[..2000], &expected[..]);
}

#[tokio::test]
async fn english_at_24_khz_asks_for_pcm_24000() {
    let mut vendor = MockVendor::start(None).await;
    let mut config = config(&vendor.url, "en");
    config.sample_rate = SampleRate::Hz24000;
    config.model_id = "eleven_multilingual_v2".into();
    let tts = ElevenLabsTts::new(config).expect("24 kHz is offered");
    let _frames = collect(&tts, "Hello there.");
    let handshake = vendor.handshake().await;
    assert!(
        handshake
            .path_and_query
            .contains("model_id=eleven_multilingual_v2")
    );
    assert!(handshake.path_and_query.contains("output_format=pcm_24000"));
    assert!(handshake.path_and_query.ends_with("language_code=en"));
}

#[test]
fn rates_the_vendor_does_not_offer_are_refused() {
    let mut config = ElevenLabsConfig::new("k", "v", "en");
    config.sample_rate = SampleRate::Hz48000;
    assert!(ElevenLabsTts::new(config).is_err());
}

#[tokio::test]
async fn a_vendor_error_message_is_a_clear_error() {
    let mut vendor = MockVendor::start(None).await;
    let tts = ElevenLabsTts::new(config(&vendor.url, "en")).expect("config");
    let frames = collect(&tts, "Hello.");
    for _ in 0..3 {
        vendor.next_from_client().await;
    }
    vendor.send_lines(&fixture("elevenlabs/quota_error.jsonl"));
    let frames = frames.await.expect("task");
    assert_eq!(frames.len(), 1, "the error ends the stream: {frames:?}");
    match &frames[0] {
        Err(ProviderError::BadResponse(text)) => {
            assert!(text.contains("quota_exceeded"), "{text}");
            assert!(text.contains("exceeds your quota"), "{text}");
        }
        other => panic!("expected a vendor error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_refused_key_is_reported_at_the_handshake() {
    let vendor = MockVendor::start(Some(401)).await;
    let tts = ElevenLabsTts::new(config(&vendor.url, "en")).expect("config");
    let frames = collect(&tts, "Hello.").await.expect("task");
    match frames.as_slice() {
        [Err(ProviderError::Unavailable(text))] => {
            assert!(text.contains("refused the API key (HTTP 401)"), "{text}");
            assert!(
                text.contains("Invalid API key"),
                "the vendor's reason: {text}"
            );
        }
        other => panic!("expected one 401 error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_socket_dropped_mid_stream_is_an_error_not_a_hang() {
    let mut vendor = MockVendor::start(None).await;
    let tts = ElevenLabsTts::new(config(&vendor.url, "en")).expect("config");
    let frames = collect(&tts, "Hello.");
    for _ in 0..3 {
        vendor.next_from_client().await;
    }
    // One chunk of audio (2000 samples = 6 whole frames), then the socket vanishes.
    vendor.send_lines(&fixture("elevenlabs/hola.jsonl")[..1]);
    vendor.vanish();
    let frames = tokio::time::timeout(Duration::from_secs(5), frames)
        .await
        .expect("the stream ends")
        .expect("task");
    assert_eq!(frames.iter().filter(|f| f.is_ok()).count(), 6);
    assert!(
        matches!(frames.last(), Some(Err(ProviderError::Unavailable(_)))),
        "{:?}",
        frames.last()
    );
}

#[tokio::test]
async fn a_silent_vendor_times_out() {
    let mut vendor = MockVendor::start(None).await;
    let mut config = config(&vendor.url, "en");
    config.idle_timeout = Duration::from_millis(200);
    let tts = ElevenLabsTts::new(config).expect("config");
    let frames = collect(&tts, "Hello.");
    for _ in 0..3 {
        vendor.next_from_client().await;
    }
    let frames = tokio::time::timeout(Duration::from_secs(5), frames)
        .await
        .expect("the stream ends")
        .expect("task");
    match frames.as_slice() {
        [Err(ProviderError::Unavailable(text))] => {
            assert!(text.contains("nothing received"), "{text}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}

#[test]
fn from_env_names_the_missing_variable() {
    // Only checks the failure path: the test must not depend on a real key.
    if std::env::var("ELEVENLABS_API_KEY").is_err() {
        match ElevenLabsConfig::from_env("v", "es") {
            Err(ProviderError::Unavailable(text)) => assert!(text.contains("ELEVENLABS_API_KEY")),
            other => panic!("{other:?}"),
        }
    }
}
