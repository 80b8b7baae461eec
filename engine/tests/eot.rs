//! Smart Turn v3.2 in Rust against Pipecat's own Python implementation.
//!
//! Skips (with a note on stderr) when `models/` has not been filled by
//! `scripts/fetch-models.sh`; CI runs that script first.

use std::path::PathBuf;

use callingbox_engine::codecs::read_wav;
use callingbox_engine::eot::{EotError, SmartTurn};
use callingbox_engine::vad::ModelError;

fn fixture(id: &str) -> Vec<i16> {
    let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/audio"))
        .join(format!("{id}.16k.wav"));
    read_wav(path).expect("fixture").samples
}

fn smart_turn(max_batch: usize) -> Option<SmartTurn> {
    match SmartTurn::load(max_batch) {
        Ok(model) => Some(model),
        Err(EotError::Model(err @ ModelError::NotFound { .. })) => {
            eprintln!("SKIPPED: {err}");
            None
        }
        Err(err) => panic!("the model files are there but do not load: {err}"),
    }
}

/// (case, fixture, audio end in ms, Pipecat's probability).
///
/// The probabilities were printed by `scripts/smart_turn_reference.py`
/// (pipecat-ai 1.14.0's `_whisper_features.py` + onnxruntime 1.32.0, numpy
/// 2.4.6). Each case's audio is the clip from its start to 200 ms (the VAD
/// stop) after the manifest's speech end, or to the given cut.
const REFERENCE: [(&str, &str, usize, f32); 6] = [
    ("statement_billing", "statement_billing", 4120, 0.8688),
    (
        "question_closing_time",
        "question_closing_time",
        2370,
        0.9843,
    ),
    ("partial_phone_number", "partial_phone_number", 2930, 0.9830),
    (
        "trailing_conjunction_um",
        "trailing_conjunction_um",
        2840,
        0.0067,
    ),
    ("mid_pause_whole", "mid_pause_card_charge", 4400, 0.9685),
    // "So the problem is that" + 200 ms of the 600 ms pause.
    (
        "mid_pause_cut_at_pause",
        "mid_pause_card_charge",
        1700,
        0.9540,
    ),
];

fn case_audio(fixture_id: &str, end_ms: usize) -> Vec<i16> {
    let mut samples = fixture(fixture_id);
    samples.truncate(end_ms * 16);
    samples
}

#[test]
fn probabilities_match_pipecats_python_within_0_02() {
    let Some(mut model) = smart_turn(1) else {
        return;
    };
    for (case, id, end_ms, expected) in REFERENCE {
        let probability = model.predict(&case_audio(id, end_ms)).expect("predict");
        println!("{case:28} rust {probability:.4}  pipecat {expected:.4}");
        assert!(
            (probability - expected).abs() < 0.02,
            "{case}: rust {probability}, pipecat {expected}"
        );
    }
}

#[test]
fn a_batch_scores_each_request_as_a_single_run_does() {
    let Some(mut single) = smart_turn(1) else {
        return;
    };
    let Some(mut batched) = smart_turn(4) else {
        return;
    };
    // Six requests through a batch of four: one run of 4, one of 2.
    let audio: Vec<Vec<i16>> = REFERENCE
        .iter()
        .map(|(_, id, end_ms, _)| case_audio(id, *end_ms))
        .collect();
    let requests: Vec<&[i16]> = audio.iter().map(Vec::as_slice).collect();
    let mut together = vec![0.0; requests.len()];
    batched
        .predict_batch(&requests, &mut together)
        .expect("batch");
    for (i, request) in requests.iter().enumerate() {
        let alone = single.predict(request).expect("single");
        assert!(
            (alone - together[i]).abs() < 1e-4,
            "{}: alone {alone}, batched {}",
            REFERENCE[i].0,
            together[i]
        );
    }
    assert!(matches!(
        batched.predict_batch(&requests, &mut [0.0; 2]),
        Err(EotError::OutputLength {
            requests: 6,
            outputs: 2
        })
    ));
}

#[test]
fn empty_and_long_audio_are_scored_without_panicking() {
    let Some(mut model) = smart_turn(1) else {
        return;
    };
    let silence = model.predict(&[]).expect("empty");
    assert!((0.0..=1.0).contains(&silence));
    // 10 s: only the last 8 s count, so the first 2 s change nothing.
    let mut long = vec![1000i16; 32_000];
    long.extend(case_audio("statement_billing", 4120));
    long.extend(vec![0i16; 160_000 - long.len()]);
    let mut tail_only = long[32_000..].to_vec();
    tail_only.truncate(128_000);
    let a = model.predict(&long).expect("long");
    let b = model.predict(&tail_only).expect("tail");
    assert!((a - b).abs() < 1e-6, "{a} vs {b}");
}
