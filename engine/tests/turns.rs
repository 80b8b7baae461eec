//! Turn-taking on virtual time: a scripted call drives the machine with VAD
//! events, transcripts and model answers at realistic delays, ticking every
//! 20 ms, and the tests assert what the caller would hear.
//!
//! Texts and speech timings are those of `fixtures/audio/manifest.json`.
//! Delivery delays modelled: the VAD start arrives 64 ms after the speech
//! began (two 32 ms windows), the VAD stop 200 ms after it ended (the gate's
//! min-silence), the end-of-turn model answers 60 ms after the request.

use std::time::Duration;

use callingbox_engine::clock::Instant;
use callingbox_engine::turns::cues::{self, CompleteCue, Cue, IncompleteCue};
use callingbox_engine::turns::{
    EndOfTurnReason, HangupReason, TurnConfig, TurnConfigError, TurnInput, TurnMachine, TurnOutput,
};
use callingbox_engine::vad::VadEvent;

const VAD_START_DELAY: u64 = 64;
const VAD_STOP_DELAY: u64 = 200;
const MODEL_LATENCY: u64 = 60;
const TICK: u64 = 20;

const MANIFEST: &str = include_str!("../../fixtures/audio/manifest.json");

/// An owned copy of a `TurnOutput`, to keep in the call log.
#[derive(Debug, Clone, PartialEq)]
enum Out {
    Started {
        at: u64,
    },
    Request(u64),
    Speculative(String),
    Discard,
    Ended {
        text: String,
        reason: EndOfTurnReason,
        vad_stopped_at: u64,
    },
    Interrupt {
        at: u64,
    },
    Resume,
    IdlePrompt,
    Hangup(HangupReason),
}

fn ms(instant: Instant) -> u64 {
    u64::try_from(instant.since_epoch().as_millis()).expect("test times fit")
}

impl From<TurnOutput<'_>> for Out {
    fn from(output: TurnOutput<'_>) -> Self {
        match output {
            TurnOutput::UserStartedSpeaking { at } => Out::Started { at: ms(at) },
            TurnOutput::RequestEndOfTurnPrediction { request } => Out::Request(request),
            TurnOutput::SpeculativeTurn { text } => Out::Speculative(text.to_owned()),
            TurnOutput::DiscardSpeculation => Out::Discard,
            TurnOutput::UserTurnEnded {
                text,
                reason,
                vad_stopped_at,
            } => Out::Ended {
                text: text.to_owned(),
                reason,
                vad_stopped_at: ms(vad_stopped_at),
            },
            TurnOutput::Interrupt { at } => Out::Interrupt { at: ms(at) },
            TurnOutput::ResumeAgent => Out::Resume,
            TurnOutput::IdlePrompt => Out::IdlePrompt,
            TurnOutput::Hangup { reason } => Out::Hangup(reason),
        }
    }
}

/// A call on virtual time: every output is logged with the time it came.
struct Call {
    machine: TurnMachine,
    now: u64,
    next_tick: u64,
    log: Vec<(u64, Out)>,
}

impl Call {
    fn new(config: TurnConfig) -> Self {
        Call {
            machine: TurnMachine::new(config, Instant::ZERO).expect("valid config"),
            now: 0,
            next_tick: 0,
            log: Vec::new(),
        }
    }

    fn with_defaults() -> Self {
        Call::new(TurnConfig::default())
    }

    fn record(&mut self, at: u64, input: TurnInput<'_>) {
        let outputs: Vec<Out> = self
            .machine
            .handle(Instant::from_millis(at), input)
            .map(Out::from)
            .collect();
        self.log.extend(outputs.into_iter().map(|out| (at, out)));
    }

    /// Tick every 20 ms up to and including `until`.
    fn run_until(&mut self, until: u64) {
        while self.next_tick <= until {
            let tick = self.next_tick;
            self.record(tick, TurnInput::Tick);
            self.next_tick += TICK;
        }
        self.now = self.now.max(until);
    }

    /// Run the clock to `at`, then deliver `input`.
    fn at(&mut self, at: u64, input: TurnInput<'_>) {
        assert!(
            at >= self.now,
            "the script goes back in time: {at} < {}",
            self.now
        );
        self.run_until(at);
        self.record(at, input);
    }

    /// The user's voice runs from `start` to `end` (ms); the VAD reports it
    /// with its delays.
    fn voice_starts(&mut self, start: u64) {
        let event = VadEvent::SpeechStarted {
            at: Instant::from_millis(start),
        };
        self.at(start + VAD_START_DELAY, TurnInput::Vad(event));
    }

    fn voice_stops(&mut self, end: u64) {
        let event = VadEvent::SpeechStopped {
            at: Instant::from_millis(end),
        };
        self.at(end + VAD_STOP_DELAY, TurnInput::Vad(event));
    }

    fn interim(&mut self, at: u64, text: &str) {
        self.at(
            at,
            TurnInput::Transcript {
                text,
                is_final: false,
            },
        );
    }

    fn final_text(&mut self, at: u64, text: &str) {
        self.at(
            at,
            TurnInput::Transcript {
                text,
                is_final: true,
            },
        );
    }

    /// The recognizer announces an utterance it will finalize.
    fn utterance_started(&mut self, at: u64) {
        self.at(at, TurnInput::UtteranceStarted);
    }

    fn model_answers(&mut self, at: u64, request: u64, probability_complete: f32) {
        self.at(
            at,
            TurnInput::EndOfTurnPrediction {
                request,
                probability_complete,
            },
        );
    }

    /// The request id of the last `RequestEndOfTurnPrediction`.
    fn last_request(&self) -> u64 {
        self.log
            .iter()
            .rev()
            .find_map(|(_, out)| match out {
                Out::Request(request) => Some(*request),
                _ => None,
            })
            .expect("a request was made")
    }

    fn ended_turns(&self) -> Vec<(u64, String, EndOfTurnReason, u64)> {
        self.log
            .iter()
            .filter_map(|(at, out)| match out {
                Out::Ended {
                    text,
                    reason,
                    vad_stopped_at,
                } => Some((*at, text.clone(), *reason, *vad_stopped_at)),
                _ => None,
            })
            .collect()
    }

    fn times_of(&self, wanted: &Out) -> Vec<u64> {
        self.log
            .iter()
            .filter(|(_, out)| out == wanted)
            .map(|(at, _)| *at)
            .collect()
    }

    fn interrupts(&self) -> Vec<u64> {
        self.log
            .iter()
            .filter_map(|(_, out)| match out {
                Out::Interrupt { at } => Some(*at),
                _ => None,
            })
            .collect()
    }
}

/// The manifest's text for `id`, checked to be there so the tests follow the
/// recorded fixtures.
fn fixture_text(id: &str, text: &'static str) -> &'static str {
    assert!(
        MANIFEST.contains(&format!("\"id\": \"{id}\"")),
        "no fixture {id}"
    );
    assert!(
        MANIFEST.contains(&format!("\"text\": \"{text}\"")),
        "fixture {id} text changed"
    );
    text
}

#[test]
fn mid_sentence_pause_is_not_cut_off_even_when_the_model_says_complete() {
    // mid_pause_card_charge: voice 310-1500 ms, a 600 ms pause, 2100-4200 ms.
    let full = fixture_text(
        "mid_pause_card_charge",
        "So the problem is that the charge on my card was for the wrong amount.",
    );
    let mut call = Call::with_defaults();
    call.voice_starts(310);
    call.interim(800, "So the");
    call.interim(1300, "So the problem is that");
    call.voice_stops(1500);
    let first = call.last_request();
    // Smart Turn scores the fragment as complete (Pipecat ends the turn here).
    call.model_answers(1700 + MODEL_LATENCY, first, 0.98);
    call.final_text(1850, "So the problem is that");
    call.voice_starts(2100);
    assert!(
        call.ended_turns().is_empty(),
        "cut off in the pause: {:?}",
        call.log
    );
    call.interim(2900, "the charge on my card");
    call.interim(3800, "the charge on my card was for the wrong amount");
    call.voice_stops(4200);
    let second = call.last_request();
    assert_ne!(first, second);
    // A stale answer to the first request changes nothing.
    call.model_answers(4410, first, 0.99);
    assert!(call.ended_turns().is_empty());
    call.model_answers(4400 + MODEL_LATENCY, second, 0.93);
    call.final_text(4700, "the charge on my card was for the wrong amount.");
    call.run_until(8000);

    let ended = call.ended_turns();
    assert_eq!(ended.len(), 1, "{:?}", call.log);
    let (at, text, reason, vad_stopped_at) = &ended[0];
    assert_eq!(*at, 4460);
    assert_eq!(*reason, EndOfTurnReason::Model);
    assert_eq!(*vad_stopped_at, 4200);
    assert_eq!(text, full.trim_end_matches('.'));
    assert_eq!(call.times_of(&Out::Started { at: 310 }), [374]);
}

#[test]
fn a_fragment_ending_in_a_preposition_is_held_too() {
    // The other fragment Pipecat cut off: "The charge on my card was for".
    let mut call = Call::with_defaults();
    call.voice_starts(300);
    call.interim(1600, "The charge on my card was for");
    call.voice_stops(1800);
    let request = call.last_request();
    call.model_answers(2000 + MODEL_LATENCY, request, 0.98);
    call.run_until(2000 + 700);
    assert!(call.ended_turns().is_empty(), "{:?}", call.log);
    // The user never goes on: the hard maximum still ends the turn.
    call.run_until(5000);
    let ended = call.ended_turns();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].2, EndOfTurnReason::MaxWait);
    assert!((4300..4300 + TICK).contains(&ended[0].0), "{:?}", ended[0]);
}

#[test]
fn a_complete_sentence_ends_within_the_model_latency() {
    // statement_reschedule_delivery: voice 340-3290 ms.
    let text = fixture_text(
        "statement_reschedule_delivery",
        "I need to reschedule my delivery to next Monday morning.",
    );
    let mut call = Call::with_defaults();
    call.voice_starts(340);
    call.interim(1500, "I need to reschedule");
    call.interim(
        3100,
        "I need to reschedule my delivery to next Monday morning",
    );
    call.voice_stops(3290);
    let stop_event_at = 3290 + VAD_STOP_DELAY;
    assert_eq!(call.log.last().map(|(at, _)| *at), Some(stop_event_at));
    let request = call.last_request();
    call.model_answers(stop_event_at + MODEL_LATENCY, request, 0.91);

    let ended = call.ended_turns();
    assert_eq!(ended.len(), 1, "{:?}", call.log);
    let (at, committed, reason, vad_stopped_at) = &ended[0];
    // No wait beyond the model: it ends on the answer itself.
    assert_eq!(*at - stop_event_at, MODEL_LATENCY);
    assert_eq!(*reason, EndOfTurnReason::Model);
    assert_eq!(*vad_stopped_at, 3290);
    assert_eq!(committed, text.trim_end_matches('.'));
}

#[test]
fn the_max_wait_ends_a_turn_when_the_model_never_answers() {
    let text = fixture_text(
        "statement_book_table",
        "I'd like to book a table for four people tomorrow at seven in the evening.",
    );
    let config = TurnConfig {
        model_answer_timeout: None,
        ..TurnConfig::default()
    };
    let mut call = Call::new(config);
    call.voice_starts(370);
    call.final_text(3600, text);
    call.voice_stops(3970);
    call.run_until(3970 + 2500 - TICK);
    assert!(call.ended_turns().is_empty(), "{:?}", call.log);
    call.run_until(10_000);
    let ended = call.ended_turns();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].2, EndOfTurnReason::MaxWait);
    assert!((6470..6470 + TICK).contains(&ended[0].0), "{:?}", ended[0]);
}

#[test]
fn a_silent_model_falls_back_to_cues_after_its_timeout() {
    let text = fixture_text(
        "statement_book_table",
        "I'd like to book a table for four people tomorrow at seven in the evening.",
    );
    let mut call = Call::with_defaults();
    call.voice_starts(370);
    call.final_text(3600, text);
    call.voice_stops(3970);
    call.run_until(10_000);
    let ended = call.ended_turns();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].2, EndOfTurnReason::ModelUnanswered);
    // The request went out at 4170; the timeout is 800 ms.
    assert_eq!(ended[0].0, 4980);
}

#[test]
fn a_short_answer_the_model_doubts_ends_after_the_disagreement_wait() {
    // livekit/agents#6415: "Yeah." scored 0.127 and waited 2.5 s.
    let mut call = Call::with_defaults();
    call.voice_starts(340);
    call.interim(600, "Yeah.");
    call.voice_stops(700);
    let request = call.last_request();
    call.model_answers(900 + MODEL_LATENCY, request, 0.127);
    call.run_until(5000);
    let ended = call.ended_turns();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].2, EndOfTurnReason::TranscriptCues);
    assert_eq!(ended[0].0, 1700);
}

#[test]
fn without_a_model_cues_decide_quickly_or_wait() {
    let config = TurnConfig {
        use_end_of_turn_model: false,
        ..TurnConfig::default()
    };
    let mut call = Call::new(config.clone());
    call.voice_starts(350);
    call.interim(2000, "What time do you close on Sundays?");
    call.voice_stops(2170);
    call.run_until(5000);
    assert!(
        !call
            .log
            .iter()
            .any(|(_, out)| matches!(out, Out::Request(_)))
    );
    let ended = call.ended_turns();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].2, EndOfTurnReason::TranscriptCues);
    // 400 ms after the voice ended, on the next tick.
    assert_eq!(ended[0].0, 2580);

    let trailing = fixture_text(
        "trailing_conjunction_um",
        "I'd like to book a table for two, and um",
    );
    let mut call = Call::new(config);
    call.voice_starts(350);
    call.interim(2500, trailing);
    call.voice_stops(2640);
    call.run_until(2640 + 2000);
    assert!(call.ended_turns().is_empty(), "{:?}", call.log);
    call.run_until(8000);
    assert_eq!(call.ended_turns()[0].2, EndOfTurnReason::MaxWait);
}

fn agent_talking() -> Call {
    let mut call = Call::with_defaults();
    call.at(0, TurnInput::AgentSpeaking);
    call
}

#[test]
fn backchannels_during_agent_speech_do_not_even_pause_it() {
    let cases = [
        ("backchannel_uh_huh", "Uh-huh.", 340, 580),
        ("backchannel_okay", "Okay.", 350, 740),
        ("backchannel_right", "Right.", 350, 590),
    ];
    for (id, text, start, end) in cases {
        let text = fixture_text(id, text);
        let mut call = agent_talking();
        call.voice_starts(start);
        // The recognizer's first interim lands ~250 ms into the word.
        call.interim(start + 250, text.trim_end_matches('.'));
        call.voice_stops(end);
        call.final_text(end + 350, text);
        call.run_until(4000);
        assert!(call.log.is_empty(), "{id}: {:?}", call.log);
        // And the user's real turn after the agent finishes still works.
        call.at(4000, TurnInput::AgentFinishedSpeaking);
        call.voice_starts(4500);
        call.interim(5000, "No.");
        call.voice_stops(5100);
        let request = call.last_request();
        call.model_answers(5360, request, 0.9);
        assert_eq!(call.ended_turns().len(), 1, "{id}");
        assert_eq!(call.ended_turns()[0].1, "No.");
    }
}

#[test]
fn wait_stop_interrupts_within_one_tick_of_the_minimum_speech() {
    fixture_text("interruption_wait_stop", "Wait, stop.");
    let mut call = agent_talking();
    call.voice_starts(340);
    call.interim(340 + 150, "Wait");
    call.interim(900, "Wait, stop");
    call.voice_stops(1260);
    call.final_text(1600, "Wait, stop.");
    call.run_until(4000);

    let interrupts = call.interrupts();
    assert_eq!(interrupts.len(), 1, "{:?}", call.log);
    let after_onset = interrupts[0] - 340;
    assert!(
        (200..=200 + TICK).contains(&after_onset),
        "interrupted {after_onset} ms after the onset"
    );
    // The decision is logged when it is made.
    assert_eq!(
        call.times_of(&Out::Interrupt { at: interrupts[0] }),
        [interrupts[0]]
    );
    assert_eq!(call.times_of(&Out::Started { at: 340 }), [interrupts[0]]);
    let ended = call.ended_turns();
    assert_eq!(ended.len(), 1);
    // Stopped with real words: no resume.
    assert!(call.times_of(&Out::Resume).is_empty());
}

#[test]
fn a_backchannel_followed_by_words_interrupts() {
    let mut call = agent_talking();
    call.voice_starts(340);
    call.interim(600, "Okay");
    call.run_until(900);
    assert!(call.interrupts().is_empty());
    call.interim(1000, "Okay but that's not what I asked");
    assert_eq!(call.interrupts(), [1000]);
}

#[test]
fn a_late_transcript_of_a_short_no_still_interrupts() {
    let mut call = agent_talking();
    call.voice_starts(340);
    call.voice_stops(610);
    call.run_until(900);
    assert!(call.interrupts().is_empty());
    call.final_text(950, "No.");
    assert_eq!(call.interrupts(), [950]);
    assert!(
        call.log
            .iter()
            .any(|(_, out)| matches!(out, Out::Request(_)))
    );
}

#[test]
fn a_noise_burst_interrupts_on_audio_and_the_agent_resumes() {
    let mut call = agent_talking();
    call.voice_starts(1000);
    call.run_until(1400);
    assert!(call.interrupts().is_empty(), "too quick for a cough");
    call.run_until(1600);
    let interrupts = call.interrupts();
    assert_eq!(interrupts.len(), 1);
    assert!((1500..1500 + TICK).contains(&interrupts[0]));
    call.voice_stops(1650);
    let request = call.last_request();
    call.model_answers(1850 + MODEL_LATENCY, request, 0.7);
    // The recognizer finds nothing but noise.
    call.final_text(2000, "[noise]");
    call.run_until(6000);
    let resumes = call.times_of(&Out::Resume);
    assert_eq!(resumes.len(), 1, "{:?}", call.log);
    assert!((3150..3150 + TICK).contains(&resumes[0]), "{resumes:?}");
    assert!(call.ended_turns().is_empty());
}

#[test]
fn an_interruption_with_words_is_not_undone() {
    let mut call = agent_talking();
    call.voice_starts(1000);
    call.run_until(1600);
    assert_eq!(call.interrupts().len(), 1);
    call.voice_stops(1900);
    call.final_text(2200, "Can you repeat that?");
    let request = call.last_request();
    call.model_answers(2300, request, 0.9);
    call.run_until(6000);
    assert!(call.times_of(&Out::Resume).is_empty());
    assert_eq!(call.ended_turns().len(), 1);
}

#[test]
fn idle_prompt_then_hang_up() {
    let mut call = agent_talking();
    call.at(1000, TurnInput::AgentFinishedSpeaking);
    call.run_until(8990);
    assert!(call.log.is_empty());
    call.run_until(9000);
    assert_eq!(call.times_of(&Out::IdlePrompt), [9000]);
    // The agent asks "are you still there?".
    call.at(9200, TurnInput::AgentSpeaking);
    call.at(11_000, TurnInput::AgentFinishedSpeaking);
    call.run_until(20_980);
    assert!(
        call.times_of(&Out::Hangup(HangupReason::IdleTimeout))
            .is_empty()
    );
    call.run_until(30_000);
    assert_eq!(call.times_of(&Out::IdlePrompt), [9000]);
    assert_eq!(
        call.times_of(&Out::Hangup(HangupReason::IdleTimeout)),
        [21_000]
    );
    assert!(call.machine.has_ended());
}

#[test]
fn answering_the_idle_prompt_keeps_the_call() {
    let mut call = agent_talking();
    call.at(1000, TurnInput::AgentFinishedSpeaking);
    call.run_until(9000);
    call.at(9200, TurnInput::AgentSpeaking);
    call.at(11_000, TurnInput::AgentFinishedSpeaking);
    call.voice_starts(12_000);
    call.interim(12_300, "Yes, I'm here.");
    call.voice_stops(12_600);
    let request = call.last_request();
    call.model_answers(12_900, request, 0.9);
    call.run_until(40_000);
    assert_eq!(call.ended_turns().len(), 1);
    assert!(
        call.times_of(&Out::Hangup(HangupReason::IdleTimeout))
            .is_empty()
    );
}

#[test]
fn max_call_duration_hangs_up_and_silences_the_machine() {
    let config = TurnConfig {
        max_call_duration: Some(Duration::from_secs(60)),
        ..TurnConfig::default()
    };
    let mut call = Call::new(config);
    call.at(0, TurnInput::AgentSpeaking);
    call.run_until(59_980);
    assert!(call.log.is_empty());
    call.run_until(60_000);
    assert_eq!(
        call.times_of(&Out::Hangup(HangupReason::MaxDuration)),
        [60_000]
    );
    call.voice_starts(61_000);
    call.interim(61_500, "Wait, stop");
    call.run_until(65_000);
    assert_eq!(call.log.len(), 1);
}

#[test]
fn the_user_is_muted_while_a_tool_runs_when_configured() {
    for mute in [true, false] {
        let config = TurnConfig {
            mute_user_during_tools: mute,
            ..TurnConfig::default()
        };
        let mut call = Call::new(config);
        call.at(0, TurnInput::AgentSpeaking);
        call.at(100, TurnInput::ToolStarted);
        call.voice_starts(500);
        call.interim(700, "Wait, stop");
        call.voice_stops(1300);
        call.final_text(1600, "Wait, stop.");
        call.run_until(3000);
        if mute {
            assert!(call.log.is_empty(), "muted: {:?}", call.log);
        } else {
            assert_eq!(call.interrupts().len(), 1);
        }
        call.at(3000, TurnInput::ToolFinished);
        call.at(3100, TurnInput::AgentFinishedSpeaking);
        call.voice_starts(3500);
        call.interim(3900, "Hello?");
        call.voice_stops(4000);
        let request = call.last_request();
        call.model_answers(4300, request, 0.9);
        let ended = call.ended_turns();
        assert_eq!(ended.last().map(|turn| turn.1.as_str()), Some("Hello?"));
        assert_eq!(ended.len(), if mute { 1 } else { 2 }, "{:?}", call.log);
    }
}

#[test]
fn preemptive_generation_after_the_stop_and_discarded_when_the_user_goes_on() {
    let mut call = Call::with_defaults();
    call.voice_starts(340);
    call.interim(2900, "I need to cancel my appointment on Thursday");
    call.voice_stops(3080);
    call.final_text(3400, "I need to cancel my appointment on Thursday");
    // Stable since 2900: speculate with the request at the VAD stop.
    assert_eq!(
        call.times_of(&Out::Speculative(
            "I need to cancel my appointment on Thursday".into()
        )),
        [3280]
    );
    call.voice_starts(3500);
    assert_eq!(call.times_of(&Out::Discard), [3564]);
    call.interim(4000, "and book one on Friday instead.");
    call.voice_stops(4400);
    let full = "I need to cancel my appointment on Thursday and book one on Friday instead.";
    assert_eq!(call.times_of(&Out::Speculative(full.into())), [4600]);
    let request = call.last_request();
    call.model_answers(4660, request, 0.8);
    let ended = call.ended_turns();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].1, full);
    // The speculation matched the turn: no discard before the commit.
    assert_eq!(call.times_of(&Out::Discard), [3564]);
}

#[test]
fn no_speculation_on_words_that_sound_unfinished() {
    let mut call = Call::with_defaults();
    call.voice_starts(340);
    call.interim(1300, "So the problem is that");
    call.voice_stops(1500);
    call.run_until(2000);
    assert!(
        !call
            .log
            .iter()
            .any(|(_, out)| matches!(out, Out::Speculative(_)))
    );
}

#[test]
fn a_changed_final_discards_the_speculation() {
    let mut call = Call::with_defaults();
    call.voice_starts(340);
    call.interim(1000, "I want the blue one");
    call.voice_stops(1200);
    call.run_until(1500);
    assert_eq!(
        call.times_of(&Out::Speculative("I want the blue one".into())),
        [1400]
    );
    call.final_text(1600, "I want the blue one.");
    assert_eq!(call.times_of(&Out::Discard), [1600]);
    let request = call.last_request();
    call.model_answers(1700, request, 0.9);
    assert_eq!(call.ended_turns()[0].1, "I want the blue one.");
}

#[test]
fn a_half_read_phone_number_is_waited_for() {
    let partial = fixture_text(
        "partial_phone_number",
        "My number is five five five, two three",
    );
    let mut call = Call::with_defaults();
    call.voice_starts(340);
    call.interim(2600, partial);
    call.voice_stops(2730);
    let request = call.last_request();
    call.model_answers(2930 + MODEL_LATENCY, request, 0.95);
    // The user reads the rest from a card after a 1.2 s pause.
    call.run_until(3900);
    assert!(call.ended_turns().is_empty(), "{:?}", call.log);
    call.voice_starts(3930);
    call.final_text(4000, "My number is five five five, two three");
    call.interim(5000, "four, eight nine zero one.");
    call.voice_stops(5200);
    let request = call.last_request();
    call.model_answers(5460, request, 0.95);
    let ended = call.ended_turns();
    assert_eq!(ended.len(), 1);
    assert_eq!(
        ended[0].1,
        fixture_text(
            "phone_number",
            "My number is five five five, two three four, eight nine zero one."
        )
    );
    assert_eq!(ended[0].0, 5460);
}

#[test]
fn an_email_spelled_letter_by_letter_is_waited_for() {
    let full = fixture_text(
        "email_spelled",
        "My email is A, N, N, A, dot, L, E, E, at example dot com.",
    );
    let mut call = Call::with_defaults();
    call.voice_starts(350);
    call.interim(2400, "My email is A, N, N, A, dot");
    call.voice_stops(2500);
    let request = call.last_request();
    call.model_answers(2700 + MODEL_LATENCY, request, 0.9);
    call.final_text(2900, "My email is A, N, N, A, dot,");
    // A 1.5 s pause to recall the rest.
    call.run_until(3900);
    assert!(call.ended_turns().is_empty(), "{:?}", call.log);
    assert!(
        !call
            .log
            .iter()
            .any(|(_, out)| matches!(out, Out::Speculative(_)))
    );
    call.voice_starts(4000);
    call.interim(5000, "L, E, E, at example dot com.");
    call.voice_stops(5800);
    let request = call.last_request();
    call.model_answers(6000 + MODEL_LATENCY, request, 0.9);
    let ended = call.ended_turns();
    assert_eq!(ended.len(), 1, "{:?}", call.log);
    assert_eq!(ended[0].1, full);
    assert_eq!(ended[0].0, 6060);
}

#[test]
fn cue_table() {
    use Cue::{Complete, Incomplete, Neutral};
    use IncompleteCue as I;
    let table: &[(&str, Cue)] = &[
        (
            "So the problem is that",
            Incomplete(I::TrailingFunctionWord),
        ),
        (
            "The charge on my card was for",
            Incomplete(I::TrailingFunctionWord),
        ),
        (
            "So the problem is that.",
            Incomplete(I::PunctuatedFunctionWord),
        ),
        (
            "I'd like to book a table for two, and um",
            Incomplete(I::TrailingFiller),
        ),
        ("I want to go and", Incomplete(I::TrailingConjunction)),
        ("but", Incomplete(I::TrailingConjunction)),
        ("It's because", Incomplete(I::TrailingConjunction)),
        ("Send it to my", Incomplete(I::TrailingConjunction)),
        ("I have a", Incomplete(I::TrailingConjunction)),
        ("Uh", Incomplete(I::TrailingFiller)),
        ("It was, like", Incomplete(I::TrailingFiller)),
        ("I need to", Incomplete(I::TrailingFunctionWord)),
        ("Well, the thing is,", Incomplete(I::TrailingPunctuation)),
        ("Let me think...", Incomplete(I::TrailingPunctuation)),
        (
            "My number is five five five, two three",
            Incomplete(I::PartialPhoneNumber),
        ),
        (
            "My number is five five five.",
            Incomplete(I::PartialPhoneNumber),
        ),
        ("It's 555 234", Incomplete(I::PartialPhoneNumber)),
        ("call me at double five", Incomplete(I::PartialPhoneNumber)),
        ("My number is five", Incomplete(I::PartialPhoneNumber)),
        ("My email is A, N, N, A", Incomplete(I::SpelledEmail)),
        (
            "My email is anna at example dot",
            Incomplete(I::SpelledEmail),
        ),
        ("it's anna@example", Incomplete(I::SpelledEmail)),
        (
            "My number is five five five, two three four, eight nine zero one.",
            Complete(CompleteCue::TerminalPunctuation),
        ),
        ("My number is 555 234 8901", Neutral),
        (
            "My email is A, N, N, A, dot, L, E, E, at example dot com.",
            Complete(CompleteCue::TerminalPunctuation),
        ),
        ("it's anna@example.com", Neutral),
        ("Yes.", Complete(CompleteCue::ShortAnswer)),
        ("no", Complete(CompleteCue::ShortAnswer)),
        ("Okay", Complete(CompleteCue::ShortAnswer)),
        ("Thank you!", Complete(CompleteCue::ShortAnswer)),
        (
            "What time do you close on Sundays?",
            Complete(CompleteCue::Question),
        ),
        ("Who are you talking to?", Complete(CompleteCue::Question)),
        (
            "I need help with my bill.",
            Complete(CompleteCue::TerminalPunctuation),
        ),
        (
            "I'd like option A.",
            Complete(CompleteCue::TerminalPunctuation),
        ),
        ("a table for two", Neutral),
        (
            "I was born in 1990.",
            Complete(CompleteCue::TerminalPunctuation),
        ),
        ("at seven in the evening", Neutral),
        ("", Neutral),
        ("[noise]", Neutral),
    ];
    let mut wrong = Vec::new();
    for (text, expected) in table {
        let got = cues::classify(text);
        if got != *expected {
            wrong.push(format!("{text:?}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn backchannel_table() {
    let phrases = TurnConfig::default().backchannel_phrases;
    let table: &[(&str, bool)] = &[
        ("Uh-huh.", true),
        ("uh huh", true),
        ("Mm-hmm", true),
        ("Okay.", true),
        ("Okay, okay.", true),
        ("Right, got it.", true),
        ("Yeah, I see.", true),
        ("Sure", true),
        ("Wait, stop.", false),
        ("No.", false),
        ("Okay but", false),
        ("Yes, but what about Friday?", false),
        ("", false),
        ("[noise]", false),
    ];
    for (text, expected) in table {
        assert_eq!(cues::is_backchannel(text, &phrases), *expected, "{text:?}");
    }
}

#[test]
fn phone_digits_are_counted_however_they_are_read() {
    let table: &[(&str, Option<u32>)] = &[
        ("My number is five five five, two three", Some(5)),
        ("555-234-89", Some(8)),
        ("my cell is double five five", Some(3)),
        ("call me at five five five twenty three", Some(5)),
        ("a table for two", None),
        ("I was born in 1990", None),
        ("My number is five five five and I need help", None),
    ];
    for (text, expected) in table {
        assert_eq!(cues::trailing_phone_digits(text), *expected, "{text:?}");
    }
}

#[test]
fn bad_configs_are_refused() {
    let bad_threshold = TurnConfig {
        model_complete_threshold: f32::NAN,
        ..TurnConfig::default()
    };
    assert!(matches!(
        TurnMachine::new(bad_threshold, Instant::ZERO),
        Err(TurnConfigError::Threshold(_))
    ));
    let empty_phrase = TurnConfig {
        backchannel_phrases: vec!["okay".into(), " - ".into()],
        ..TurnConfig::default()
    };
    assert!(matches!(
        TurnMachine::new(empty_phrase, Instant::ZERO),
        Err(TurnConfigError::EmptyBackchannel(_))
    ));
    let hangup_first = TurnConfig {
        idle_hangup_after: Some(Duration::from_secs(5)),
        ..TurnConfig::default()
    };
    assert!(TurnMachine::new(hangup_first, Instant::ZERO).is_err());
}

#[test]
fn hostile_inputs_never_panic() {
    let mut machine =
        TurnMachine::new(TurnConfig::default(), Instant::from_millis(1000)).expect("valid config");
    let inputs = [
        TurnInput::Vad(VadEvent::SpeechStopped {
            at: Instant::from_millis(5),
        }),
        TurnInput::EndOfTurnPrediction {
            request: u64::MAX,
            probability_complete: f32::NAN,
        },
        TurnInput::ToolFinished,
        TurnInput::Vad(VadEvent::SpeechStarted {
            at: Instant::from_millis(u64::MAX / 2),
        }),
        TurnInput::Transcript {
            text: "((([[[<<<",
            is_final: true,
        },
        TurnInput::Transcript {
            text: "ünïcödé ’’’ — …",
            is_final: false,
        },
        TurnInput::Vad(VadEvent::SpeechStopped { at: Instant::ZERO }),
        TurnInput::EndOfTurnPrediction {
            request: 0,
            probability_complete: f32::INFINITY,
        },
        TurnInput::AgentFinishedSpeaking,
    ];
    // Time jumping backwards, and far forwards.
    for (index, input) in inputs.into_iter().enumerate() {
        let now = if index % 2 == 0 {
            0
        } else {
            3_000 * index as u64
        };
        let _ = machine.handle(Instant::from_millis(now), input).count();
    }
    assert_eq!(machine.dropped_outputs(), 0);
}

/// Whisper-style recognition: each pause-split utterance is decoded after it
/// ends, so the words of the last one arrive well after the VAD stop.
fn pause_split_greeting(call: &mut Call, announce: bool) {
    // "Hello. This is Sam speaking.": voice 380-770 ms, 1060-2110 ms.
    call.voice_starts(380);
    if announce {
        call.utterance_started(460);
    }
    call.voice_stops(770);
    call.voice_starts(1060);
    if announce {
        call.utterance_started(1140);
    }
    call.final_text(1830, "Hello.");
    call.voice_stops(2110);
}

#[test]
fn words_still_being_decoded_are_waited_for() {
    let mut config = TurnConfig {
        use_end_of_turn_model: false,
        ..TurnConfig::default()
    };
    config.cue_complete_wait = Duration::from_millis(400);
    // Without the announcements the machine cannot know more words are
    // coming: "Hello." is complete, and the turn ends without the rest.
    let mut unannounced = Call::new(config.clone());
    pause_split_greeting(&mut unannounced, false);
    unannounced.final_text(3030, "This is Sam speaking.");
    unannounced.run_until(5000);
    let turns = unannounced.ended_turns();
    assert_eq!(turns.len(), 1, "{:?}", unannounced.log);
    assert_eq!(turns[0].1, "Hello.");

    // With them, the turn waits for the second final and keeps every word.
    let mut call = Call::new(config);
    pause_split_greeting(&mut call, true);
    call.run_until(3020);
    assert!(
        call.ended_turns().is_empty(),
        "committed early: {:?}",
        call.log
    );
    call.final_text(3030, "This is Sam speaking.");
    call.run_until(5000);
    let turns = call.ended_turns();
    assert_eq!(turns.len(), 1, "{:?}", call.log);
    let (at, text, reason, vad_stopped_at) = &turns[0];
    assert_eq!(text, "Hello. This is Sam speaking.");
    assert_eq!(*reason, EndOfTurnReason::TranscriptCues);
    assert_eq!(*vad_stopped_at, 2110);
    // Committed once the text is in and the complete cue's wait is over.
    assert!((3030..=3060).contains(at), "committed at {at}");
}

#[test]
fn an_empty_final_settles_an_announced_utterance() {
    // A cough announced as an utterance after the words: Whisper finds no
    // words in it; the turn goes on as soon as it says so.
    let mut call = Call::new(TurnConfig {
        use_end_of_turn_model: false,
        ..TurnConfig::default()
    });
    call.voice_starts(300);
    call.utterance_started(400);
    call.final_text(1500, "Yes, that works for me.");
    call.utterance_started(1520);
    call.voice_stops(1700);
    call.final_text(2300, "");
    call.run_until(4000);
    let turns = call.ended_turns();
    assert_eq!(turns.len(), 1, "{:?}", call.log);
    assert_eq!(turns[0].1, "Yes, that works for me.");
    assert!(turns[0].0 >= 2300 && turns[0].0 <= 2320, "{:?}", turns[0]);
}

#[test]
fn a_final_that_never_comes_delays_the_turn_only_to_the_maximum_wait() {
    let config = TurnConfig {
        use_end_of_turn_model: false,
        ..TurnConfig::default()
    };
    let max_wait = config.max_end_of_turn_wait;
    let mut call = Call::new(config);
    call.voice_starts(300);
    call.utterance_started(400);
    call.final_text(1400, "Yes, that works for me.");
    call.utterance_started(1450);
    call.voice_stops(1600);
    call.run_until(6000);
    let turns = call.ended_turns();
    assert_eq!(turns.len(), 1, "{:?}", call.log);
    assert_eq!(turns[0].2, EndOfTurnReason::MaxWait);
    let max_wait = u64::try_from(max_wait.as_millis()).expect("fits");
    assert!(
        turns[0].0 >= 1600 + max_wait && turns[0].0 <= 1600 + max_wait + TICK,
        "{:?}",
        turns[0]
    );
}

#[test]
fn a_held_call_is_not_idle_and_the_count_restarts_at_the_resume() {
    let mut call = agent_talking();
    call.at(1000, TurnInput::AgentFinishedSpeaking);
    // The caller puts us on hold (re-INVITE with a=sendonly) for a minute.
    call.at(2000, TurnInput::CallHeld { held: true });
    call.run_until(62_000);
    assert!(call.log.is_empty(), "{:?}", call.log);
    assert!(!call.machine.has_ended());
    // Resumed: the silence that counts starts now (prompt 8 s later).
    call.at(62_000, TurnInput::CallHeld { held: false });
    call.run_until(69_980);
    assert!(call.log.is_empty(), "{:?}", call.log);
    call.run_until(70_000);
    assert_eq!(call.times_of(&Out::IdlePrompt), [70_000]);
}
