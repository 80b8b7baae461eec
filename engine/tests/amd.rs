//! Answering-machine detection on the recorded fixtures, on virtual time:
//! each clip is replayed as the callee's audio from the answer (t = 0) in
//! 20 ms frames, with 32 ms VAD windows scored by the energy VAD (always)
//! and by Silero (when `models/` has it; skipped with a note otherwise),
//! then silence up to 12 s.
//!
//! The thresholds are `AnswerDetectorConfig::default()`: a greeting of 3 s
//! is a machine, 800 ms of quiet after a shorter one is a person, a beep is
//! a steady 400-2000 Hz tone of 120 ms or more.

use std::path::PathBuf;
use std::time::Duration;

use callingbox_engine::amd::{
    AnswerDecision, AnswerDetector, AnswerDetectorConfig, AnsweredBy, DecisionReason,
    DetectorEvent, MessageCue,
};
use callingbox_engine::clock::Instant;
use callingbox_engine::codecs::read_wav;
use callingbox_engine::vad::silero::WINDOW_SAMPLES;
use callingbox_engine::vad::{EnergyBatch, ModelError, SileroBatch};

const FRAME: usize = 320;
const REPLAY: Duration = Duration::from_secs(12);

fn fixtures_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/audio"))
}

struct Clip {
    samples: Vec<i16>,
    speech_end_ms: Option<u64>,
    beep_ms: Option<(u64, u64)>,
}

fn clip(id: &str) -> Clip {
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures_dir().join("manifest.json")).expect("manifest"),
    )
    .expect("manifest json");
    let entry = manifest["utterances"]
        .as_array()
        .expect("utterances")
        .iter()
        .find(|u| u["id"] == id)
        .unwrap_or_else(|| panic!("{id} is not in the manifest"));
    let audio = read_wav(fixtures_dir().join(format!("{id}.16k.wav"))).expect("wav");
    assert_eq!(audio.rate.hz(), 16_000);
    Clip {
        samples: audio.samples,
        speech_end_ms: entry["speech_end_ms"].as_u64(),
        beep_ms: entry["beep_ms"]
            .as_array()
            .map(|b| (b[0].as_u64().expect("ms"), b[1].as_u64().expect("ms"))),
    }
}

fn silero() -> Option<SileroBatch> {
    match SileroBatch::load(1) {
        Ok(batch) => Some(batch),
        Err(err @ ModelError::NotFound { .. }) => {
            eprintln!("SKIPPED (Silero): {err}");
            None
        }
        Err(err) => panic!("the model files are there but do not load: {err}"),
    }
}

/// Scores a 32 ms window; keeps its state across one clip's windows.
type Scorer = Box<dyn FnMut(&[i16]) -> f32>;

fn batch_scorer<B: 'static>(
    mut batch: B,
    register: fn(&mut B) -> callingbox_engine::vad::StreamHandle,
    score: fn(&mut B, callingbox_engine::vad::StreamHandle, &[i16]) -> f32,
) -> Scorer {
    let stream = register(&mut batch);
    Box::new(move |window: &[i16]| score(&mut batch, stream, window))
}

/// Fresh scorers for one clip: the energy VAD, and Silero when installed.
fn scorers() -> Vec<(&'static str, Scorer)> {
    let mut out = vec![(
        "energy",
        batch_scorer(
            EnergyBatch::new(1),
            |batch| batch.register().expect("slot"),
            |batch, stream, window| {
                batch.submit(stream, window).expect("submit");
                batch.run().expect("run");
                batch.probability(stream).expect("registered")
            },
        ),
    )];
    if let Some(silero) = silero() {
        out.push((
            "silero",
            batch_scorer(
                silero,
                |batch| batch.register().expect("slot"),
                |batch, stream, window| {
                    batch.submit(stream, window).expect("submit");
                    batch.run().expect("run");
                    batch.probability(stream).expect("registered")
                },
            ),
        ));
    }
    out
}

struct Replay {
    decision: AnswerDecision,
    cue: Option<(MessageCue, Instant)>,
    words_at_decision: u32,
}

fn replay(clip: &Clip, score: &mut dyn FnMut(&[i16]) -> f32) -> Replay {
    let mut detector = AnswerDetector::new(AnswerDetectorConfig::default(), Instant::ZERO);
    let total = (REPLAY.as_millis() as usize) * 16;
    let mut audio = clip.samples.clone();
    audio.resize(total.max(audio.len()), 0);
    let mut window = Vec::with_capacity(WINDOW_SAMPLES + FRAME);
    let mut windows_done = 0u64;
    let mut decision = None;
    let mut words_at_decision = 0;
    let mut cue = None;
    for (index, frame) in audio.chunks_exact(FRAME).enumerate() {
        let now = Instant::from_millis(20 * (index as u64 + 1));
        let mut events = Vec::new();
        events.extend(detector.push_audio(now, frame));
        window.extend_from_slice(frame);
        if window.len() >= WINDOW_SAMPLES {
            windows_done += 1;
            let probability = score(&window[..WINDOW_SAMPLES]);
            window.drain(..WINDOW_SAMPLES);
            events.extend(detector.push_vad(Instant::from_millis(32 * windows_done), probability));
        }
        events.extend(detector.poll(now));
        for event in events {
            match event {
                DetectorEvent::Decided(d) => {
                    assert!(decision.is_none(), "decided twice");
                    decision = Some(d);
                    words_at_decision = detector.words();
                }
                DetectorEvent::LeaveMessage { cue: c, at } => {
                    assert!(cue.is_none(), "two message cues");
                    cue = Some((c, at));
                }
            }
        }
    }
    Replay {
        decision: decision.expect("the detector always decides within its cap"),
        cue,
        words_at_decision,
    }
}

fn each_vad(id: &str, check: impl Fn(&str, &Clip, &Replay)) {
    let clip = clip(id);
    for (name, mut score) in scorers() {
        let result = replay(&clip, &mut *score);
        eprintln!(
            "{id:24} {name:6} {:8} {:20} after {:5} ms  words {}  cue {:?}",
            result.decision.answered_by.as_str(),
            format!("{:?}", result.decision.reason),
            result.decision.after_answer.as_millis(),
            result.words_at_decision,
            result
                .cue
                .map(|(cue, at)| (cue, at.since_epoch().as_millis())),
        );
        check(name, &clip, &result);
    }
}

#[test]
fn hello_then_silence_is_a_human_within_a_second_of_the_hello() {
    each_vad("pickup_hello", |vad, clip, r| {
        assert_eq!(r.decision.answered_by, AnsweredBy::Human, "{vad}");
        assert_eq!(r.decision.reason, DecisionReason::GreetingThenSilence);
        let end = clip.speech_end_ms.expect("speech");
        assert!(
            r.decision.after_answer <= Duration::from_millis(end + 1_000),
            "{vad}: {:?}",
            r.decision
        );
        assert!(r.cue.is_none(), "a person gets no voicemail cue");
    });
}

#[test]
fn a_short_spoken_greeting_is_a_human() {
    each_vad("greeting_sam", |vad, _, r| {
        assert_eq!(r.decision.answered_by, AnsweredBy::Human, "{vad}");
    });
}

#[test]
fn a_long_human_answer_is_never_a_machine() {
    // "Hello, this is Sam speaking, who is this?": 2.5 s of speech, then
    // the caller waits. Below the 3 s machine greeting.
    each_vad("pickup_hello_long", |vad, _, r| {
        assert_ne!(r.decision.answered_by, AnsweredBy::Machine, "{vad}");
        assert!(r.decision.after_answer <= Duration::from_millis(4_000));
    });
}

#[test]
fn a_voicemail_greeting_is_a_machine_before_its_beep_and_the_cue_is_the_beep_end() {
    for id in ["voicemail_sam", "voicemail_greeting"] {
        each_vad(id, |vad, clip, r| {
            let (beep_start, beep_end) = clip.beep_ms.expect("the fixture has a beep");
            assert_eq!(r.decision.answered_by, AnsweredBy::Machine, "{id} {vad}");
            assert!(
                r.decision.after_answer <= Duration::from_millis(4_000),
                "{id} {vad}: {:?}",
                r.decision
            );
            assert!(r.decision.after_answer < Duration::from_millis(beep_start));
            let (cue, at) = r.cue.expect("a message cue");
            assert_eq!(cue, MessageCue::Beep, "{id} {vad}");
            let at = at.since_epoch().as_millis() as u64;
            assert!(
                (beep_end..=beep_end + 60).contains(&at),
                "{id} {vad}: cue at {at} ms, beep ends at {beep_end} ms"
            );
        });
    }
}

#[test]
fn a_voicemail_greeting_without_a_beep_cues_after_its_silence() {
    each_vad("voicemail_sam_no_beep", |vad, clip, r| {
        assert_eq!(r.decision.answered_by, AnsweredBy::Machine, "{vad}");
        let (cue, at) = r.cue.expect("a message cue");
        assert_eq!(cue, MessageCue::Silence, "{vad}");
        let end = clip.speech_end_ms.expect("speech");
        let at = at.since_epoch().as_millis() as u64;
        assert!(
            (end + 2_000..=end + 2_200).contains(&at),
            "{vad}: cue at {at} ms, speech ended at {end} ms"
        );
    });
}

#[test]
fn silence_and_line_noise_are_unknown_not_machine() {
    each_vad("silence", |vad, _, r| {
        assert_eq!(r.decision.answered_by, AnsweredBy::Unknown, "{vad}");
        assert_eq!(r.decision.reason, DecisionReason::InitialSilence);
    });
    each_vad("line_noise", |vad, _, r| {
        assert_ne!(r.decision.answered_by, AnsweredBy::Machine, "{vad}");
    });
}

#[test]
fn no_speech_fixture_holds_a_beep() {
    // The beep detector on every clip without a beep: speech (vowels are
    // periodic but not pure) and noise never make a tone of 120 ms.
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures_dir().join("manifest.json")).expect("manifest"),
    )
    .expect("manifest json");
    let mut checked = 0;
    for entry in manifest["utterances"].as_array().expect("utterances") {
        if entry.get("beep_ms").is_some() {
            continue;
        }
        let id = entry["id"].as_str().expect("id");
        let audio = read_wav(fixtures_dir().join(format!("{id}.16k.wav"))).expect("wav");
        let mut beeps = callingbox_engine::amd::BeepDetector::new(Default::default());
        for (index, frame) in audio.samples.chunks_exact(FRAME).enumerate() {
            let event = beeps.push_frame(Instant::from_millis(20 * (index as u64 + 1)), frame);
            assert!(event.is_none(), "{id}: {event:?}");
        }
        checked += 1;
    }
    assert!(checked >= 20, "{checked}");
}
