//! The recorded-speech fixtures are what the engine's tests, load tests and
//! latency benchmarks stand on: check that the manifest tells the truth about
//! every file, and that the set covers what those tests need.

use std::collections::BTreeSet;
use std::path::PathBuf;

use callingbox_codecs::{SampleRate, WavEncoding, read_wav};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Manifest {
    voice: String,
    utterances: Vec<Utterance>,
}

#[derive(Debug, Deserialize)]
struct Utterance {
    id: String,
    kind: String,
    text: String,
    duration_ms: u64,
    speech_start_ms: Option<u64>,
    speech_end_ms: Option<u64>,
    pauses_ms: Vec<(u64, u64)>,
    files: Files,
}

#[derive(Debug, Deserialize)]
struct Files {
    pcm_16k: FileRef,
    ulaw_8k: FileRef,
}

#[derive(Debug, Deserialize)]
struct FileRef {
    path: String,
    sample_rate: u32,
    encoding: String,
}

fn audio_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/audio")
}

fn manifest() -> Manifest {
    let bytes = std::fs::read(audio_dir().join("manifest.json")).expect("manifest.json");
    serde_json::from_slice(&bytes).expect("manifest parses")
}

const NON_SPEECH: [&str; 3] = ["silence", "line_noise", "noise_burst"];

#[test]
fn every_file_matches_its_manifest_entry() {
    let manifest = manifest();
    assert!(
        manifest.voice.contains("piper"),
        "voice: {}",
        manifest.voice
    );
    for utterance in &manifest.utterances {
        let wide = read_wav(audio_dir().join(&utterance.files.pcm_16k.path)).expect("16k wav");
        let narrow = read_wav(audio_dir().join(&utterance.files.ulaw_8k.path)).expect("8k wav");
        assert_eq!(wide.rate, SampleRate::Hz16000, "{}", utterance.id);
        assert_eq!(wide.encoding, WavEncoding::Pcm16, "{}", utterance.id);
        assert_eq!(utterance.files.pcm_16k.sample_rate, 16_000);
        assert_eq!(utterance.files.pcm_16k.encoding, "pcm_s16le");
        assert_eq!(narrow.rate, SampleRate::Hz8000, "{}", utterance.id);
        assert_eq!(narrow.encoding, WavEncoding::MuLaw, "{}", utterance.id);
        assert_eq!(utterance.files.ulaw_8k.sample_rate, 8_000);
        assert_eq!(utterance.files.ulaw_8k.encoding, "mulaw");
        for (label, millis) in [
            ("16k", wide.duration().as_millis()),
            ("8k", narrow.duration().as_millis()),
        ] {
            assert!(
                millis.abs_diff(u128::from(utterance.duration_ms)) <= 1,
                "{} {label}: file {millis} ms, manifest {} ms",
                utterance.id,
                utterance.duration_ms
            );
        }
        let speech = !NON_SPEECH.contains(&utterance.kind.as_str());
        if speech {
            assert!(!utterance.text.is_empty(), "{} has no text", utterance.id);
            assert!(
                (2_000..=8_000).contains(&utterance.duration_ms),
                "{} lasts {} ms",
                utterance.id,
                utterance.duration_ms
            );
            let (start, end) = (
                utterance.speech_start_ms.expect("speech start"),
                utterance.speech_end_ms.expect("speech end"),
            );
            assert!(
                start < end && end <= utterance.duration_ms,
                "{}",
                utterance.id
            );
            // The speech really is where the manifest says: loud inside, silent before.
            let rms = |from_ms: u64, to_ms: u64| {
                let part = &wide.samples[(from_ms * 16) as usize..(to_ms * 16) as usize];
                (part.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / part.len().max(1) as f64)
                    .sqrt()
            };
            assert!(
                rms(0, start.saturating_sub(20)) < 50.0,
                "{}: noise before speech",
                utterance.id
            );
            assert!(
                rms(start, end) > 500.0,
                "{}: no speech where expected",
                utterance.id
            );
        } else {
            assert!(
                utterance.text.is_empty(),
                "{} should have no text",
                utterance.id
            );
        }
        for &(from, to) in &utterance.pauses_ms {
            let pause = &wide.samples[(from * 16) as usize..(to * 16) as usize];
            assert!(
                pause.iter().all(|&s| s == 0),
                "{}: pause is not silent",
                utterance.id
            );
        }
    }
}

#[test]
fn the_set_covers_what_the_engine_tests_need() {
    let manifest = manifest();
    let kinds: BTreeSet<&str> = manifest
        .utterances
        .iter()
        .map(|u| u.kind.as_str())
        .collect();
    for needed in [
        "phone_number",
        "email_spelled",
        "yes",
        "no",
        "date_time",
        "address",
        "mid_pause",
        "backchannel",
        "interruption",
        "silence",
        "line_noise",
    ] {
        assert!(kinds.contains(needed), "no fixture of kind {needed}");
    }
    let speech = manifest
        .utterances
        .iter()
        .filter(|u| !NON_SPEECH.contains(&u.kind.as_str()))
        .count();
    assert!(speech >= 20, "only {speech} speech fixtures");
    let backchannels: BTreeSet<&str> = manifest
        .utterances
        .iter()
        .filter(|u| u.kind == "backchannel")
        .map(|u| u.text.as_str())
        .collect();
    assert!(backchannels.len() >= 3, "{backchannels:?}");
    let mid_pause = manifest
        .utterances
        .iter()
        .find(|u| u.kind == "mid_pause")
        .expect("mid_pause fixture");
    let (from, to) = mid_pause.pauses_ms[0];
    assert!(
        (550..=650).contains(&(to - from)),
        "pause of {} ms",
        to - from
    );
}

#[test]
fn fixtures_stay_small() {
    let total: u64 =
        std::fs::read_dir(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/audio"))
            .expect("fixtures dir")
            .map(|entry| entry.expect("entry").metadata().expect("metadata").len())
            .sum();
    assert!(
        total < 20 * 1024 * 1024,
        "fixtures/audio holds {total} bytes"
    );
}
