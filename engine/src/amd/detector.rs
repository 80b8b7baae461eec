//! [`AnswerDetector`]: human or answering machine, from the first seconds
//! after an outbound call is answered.
//!
//! Fed the call's VAD probabilities (one per 32 ms window) and its decoded
//! 16 kHz frames, on the call's clock. The cues, as Asterisk app_amd and
//! Twilio AMD describe theirs (learned from their documentation, not code):
//!
//! * a **beep** before the decision: a machine;
//! * the **greeting length**: a person says a short "Hello?" and waits; a
//!   machine talks on ("Hi, you've reached ... leave a message after the
//!   tone"), with only short pauses. A greeting (first speech to last, pauses
//!   shorter than `human_silence` included) reaching `machine_greeting` is a
//!   machine;
//! * the **cadence**: `max_words` separate words (voiced stretches of at
//!   least `min_word` split by pauses of `between_words`) without a pause of
//!   `human_silence` is a machine reading a script;
//! * **silence after a short greeting**: `human_silence` of quiet after less
//!   than `machine_greeting` of speech is a person waiting for an answer;
//! * **initial silence**: nothing said for `initial_silence` is `Unknown`
//!   (a person who picked up and says nothing, or a silent machine);
//! * a **cap**: undecided after `max_analysis` is `Unknown`.
//!
//! After a `Machine` decision the detector goes on listening for the moment
//! to leave a message ([`MessageCue`]): the end of the beep, else
//! `message_silence` of quiet after the greeting, else `message_wait_max`.

use std::time::Duration;

use super::beep::{BeepConfig, BeepDetector, BeepEvent};
use crate::clock::Instant;

const VAD_WINDOW: Duration = Duration::from_millis(32);

/// The detector's thresholds. The defaults are what the fixture tests
/// (`engine/tests/amd.rs`) are checked against.
#[derive(Debug, Clone, PartialEq)]
pub struct AnswerDetectorConfig {
    /// A window at or above this VAD probability is speech (default 0.5).
    pub speech_threshold: f32,
    /// A window below this VAD probability is silence (default 0.35);
    /// between the two the previous state holds.
    pub silence_threshold: f32,
    /// Nothing said for this long after the answer: `Unknown` (default 2.5 s).
    pub initial_silence: Duration,
    /// A greeting this long is a machine's (default 3 s; the long human
    /// answer "Hello, this is Sam speaking, who is this?" is 2.5 s).
    pub machine_greeting: Duration,
    /// Quiet this long after a shorter greeting: a person (default 800 ms).
    pub human_silence: Duration,
    /// A pause this long separates two words (default 64 ms, two windows).
    pub between_words: Duration,
    /// A voiced stretch shorter than this is no word (default 96 ms: clicks,
    /// breaths).
    pub min_word: Duration,
    /// This many words before a pause of `human_silence`: a machine
    /// (default 12; a person's answer rarely runs past 8).
    pub max_words: u32,
    /// Give up, `Unknown`, this long after the answer (default 4 s).
    pub max_analysis: Duration,
    /// The beep.
    pub beep: BeepConfig,
    /// No beep: leave the message after this much quiet following the
    /// machine's greeting (default 2 s).
    pub message_silence: Duration,
    /// Leave the message at the latest this long after the decision, beep
    /// or not (default 30 s).
    pub message_wait_max: Duration,
}

impl Default for AnswerDetectorConfig {
    fn default() -> Self {
        AnswerDetectorConfig {
            speech_threshold: 0.5,
            silence_threshold: 0.35,
            initial_silence: Duration::from_millis(2_500),
            machine_greeting: Duration::from_millis(3_000),
            human_silence: Duration::from_millis(800),
            between_words: Duration::from_millis(64),
            min_word: Duration::from_millis(96),
            max_words: 12,
            max_analysis: Duration::from_millis(4_000),
            beep: BeepConfig::default(),
            message_silence: Duration::from_millis(2_000),
            message_wait_max: Duration::from_secs(30),
        }
    }
}

/// Who answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AnsweredBy {
    /// A person.
    Human,
    /// An answering machine or voicemail.
    Machine,
    /// The detector could not tell within its cap.
    Unknown,
}

impl AnsweredBy {
    /// `human`, `machine` or `unknown` (the API's `answered_by`).
    pub fn as_str(self) -> &'static str {
        match self {
            AnsweredBy::Human => "human",
            AnsweredBy::Machine => "machine",
            AnsweredBy::Unknown => "unknown",
        }
    }
}

/// Which cue decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionReason {
    /// A beep was heard.
    Beep,
    /// The greeting reached `machine_greeting`.
    LongGreeting,
    /// `max_words` words without a pause.
    ManyWords,
    /// A short greeting, then `human_silence` of quiet.
    GreetingThenSilence,
    /// Nothing said for `initial_silence`.
    InitialSilence,
    /// `max_analysis` passed.
    Cap,
}

/// The detector's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerDecision {
    /// Who answered.
    pub answered_by: AnsweredBy,
    /// Why.
    pub reason: DecisionReason,
    /// When it was decided (call clock).
    pub at: Instant,
    /// From the answer to the decision.
    pub after_answer: Duration,
}

/// When to start speaking a voicemail message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageCue {
    /// The beep ended.
    Beep,
    /// The greeting ended and `message_silence` passed with no beep.
    Silence,
    /// `message_wait_max` passed.
    Timeout,
}

/// What [`AnswerDetector`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DetectorEvent {
    /// The decision (once).
    Decided(AnswerDecision),
    /// After a `Machine` decision: start the message now (once).
    LeaveMessage {
        /// Which cue.
        cue: MessageCue,
        /// When (call clock).
        at: Instant,
    },
}

/// Human-or-machine detection for one answered call; sans-IO, allocation-free
/// after [`AnswerDetector::new`].
#[derive(Debug, Clone)]
pub struct AnswerDetector {
    config: AnswerDetectorConfig,
    answered_at: Instant,
    beep: BeepDetector,
    decision: Option<AnswerDecision>,
    cue_reported: bool,
    speaking: bool,
    first_speech: Option<Instant>,
    last_speech_end: Option<Instant>,
    /// The word being spoken: when its voice began and how long it is voiced.
    word_start: Option<Instant>,
    word_counted: bool,
    silence_run: Duration,
    words: u32,
    beep_started: Option<Instant>,
    beep_ended: Option<Instant>,
    /// The last time the detector heard from the driver.
    now: Instant,
}

impl AnswerDetector {
    /// A detector for a call answered at `answered_at`.
    pub fn new(config: AnswerDetectorConfig, answered_at: Instant) -> Self {
        AnswerDetector {
            beep: BeepDetector::new(config.beep.clone()),
            config,
            answered_at,
            decision: None,
            cue_reported: false,
            speaking: false,
            first_speech: None,
            last_speech_end: None,
            word_start: None,
            word_counted: false,
            silence_run: Duration::ZERO,
            words: 0,
            beep_started: None,
            beep_ended: None,
            now: answered_at,
        }
    }

    /// The settings.
    pub fn config(&self) -> &AnswerDetectorConfig {
        &self.config
    }

    /// The decision, once made.
    pub fn decision(&self) -> Option<AnswerDecision> {
        self.decision
    }

    /// Whether the detector still needs audio (undecided, or a machine
    /// whose message cue has not come yet).
    pub fn is_listening(&self) -> bool {
        match self.decision {
            None => true,
            Some(decision) => decision.answered_by == AnsweredBy::Machine && !self.cue_reported,
        }
    }

    /// Words counted so far (for tests and logs).
    pub fn words(&self) -> u32 {
        self.words
    }

    /// One decoded 20 ms frame (16 kHz) that ended at `end`: beep detection.
    pub fn push_audio(&mut self, end: Instant, samples: &[i16]) -> Option<DetectorEvent> {
        if !self.is_listening() {
            return None;
        }
        self.now = self.now.max(end);
        match self.beep.push_frame(end, samples) {
            Some(BeepEvent::Started { at, .. }) => {
                self.beep_started = Some(at);
                if self.decision.is_none() {
                    return self.decide(AnsweredBy::Machine, DecisionReason::Beep, end);
                }
                None
            }
            Some(BeepEvent::Ended { at, .. }) => {
                self.beep_ended = Some(at);
                self.poll(end)
            }
            None => None,
        }
    }

    /// The VAD's speech probability for the 32 ms window that ended at
    /// `window_end`.
    pub fn push_vad(&mut self, window_end: Instant, probability: f32) -> Option<DetectorEvent> {
        if !self.is_listening() {
            return None;
        }
        self.now = self.now.max(window_end);
        let window_start = window_end - VAD_WINDOW;
        let speech = if probability >= self.config.speech_threshold {
            true
        } else if probability < self.config.silence_threshold {
            false
        } else {
            self.speaking
        };
        // A beep scores as speech on most VADs: its windows are no greeting.
        let in_beep = self.beep_started.is_some() && self.beep_ended.is_none();
        if speech && !in_beep {
            self.first_speech.get_or_insert(window_start);
            self.last_speech_end = Some(window_end);
            self.silence_run = Duration::ZERO;
            let start = *self.word_start.get_or_insert(window_start);
            if !self.word_counted && window_end.saturating_since(start) >= self.config.min_word {
                self.word_counted = true;
                self.words += 1;
            }
        } else {
            self.silence_run += VAD_WINDOW;
            if self.silence_run >= self.config.between_words {
                self.word_start = None;
                self.word_counted = false;
            }
            if self.silence_run >= self.config.human_silence {
                // A pause long enough to answer in starts the cadence afresh.
                self.words = 0;
            }
        }
        self.speaking = speech;
        if self.decision.is_none() {
            if let Some(first) = self.first_speech
                && let Some(last) = self.last_speech_end
                && last.saturating_since(first) >= self.config.machine_greeting
            {
                return self.decide(
                    AnsweredBy::Machine,
                    DecisionReason::LongGreeting,
                    window_end,
                );
            }
            if self.words >= self.config.max_words {
                return self.decide(AnsweredBy::Machine, DecisionReason::ManyWords, window_end);
            }
        }
        self.poll(window_end)
    }

    /// The timers at `now`: the silence rules, the cap, the message cue.
    pub fn poll(&mut self, now: Instant) -> Option<DetectorEvent> {
        self.now = self.now.max(now);
        let now = self.now;
        match self.decision {
            None => {
                let since_answer = now.saturating_since(self.answered_at);
                match self.last_speech_end {
                    Some(last) if now.saturating_since(last) >= self.config.human_silence => {
                        return self.decide(
                            AnsweredBy::Human,
                            DecisionReason::GreetingThenSilence,
                            now,
                        );
                    }
                    None if since_answer >= self.config.initial_silence => {
                        return self.decide(
                            AnsweredBy::Unknown,
                            DecisionReason::InitialSilence,
                            now,
                        );
                    }
                    _ => {}
                }
                if since_answer >= self.config.max_analysis {
                    return self.decide(AnsweredBy::Unknown, DecisionReason::Cap, now);
                }
                None
            }
            Some(decision) if decision.answered_by == AnsweredBy::Machine && !self.cue_reported => {
                let in_beep = self.beep_started.is_some() && self.beep_ended.is_none();
                let cue = if self.beep_ended.is_some() {
                    Some(MessageCue::Beep)
                } else if !in_beep
                    && self.last_speech_end.is_some_and(|last| {
                        now.saturating_since(last) >= self.config.message_silence
                    })
                {
                    Some(MessageCue::Silence)
                } else if now.saturating_since(decision.at) >= self.config.message_wait_max {
                    Some(MessageCue::Timeout)
                } else {
                    None
                };
                cue.map(|cue| {
                    self.cue_reported = true;
                    DetectorEvent::LeaveMessage { cue, at: now }
                })
            }
            Some(_) => None,
        }
    }

    fn decide(
        &mut self,
        answered_by: AnsweredBy,
        reason: DecisionReason,
        at: Instant,
    ) -> Option<DetectorEvent> {
        let decision = AnswerDecision {
            answered_by,
            reason,
            at,
            after_answer: at.saturating_since(self.answered_at),
        };
        self.decision = Some(decision);
        Some(DetectorEvent::Decided(decision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drives a detector with a VAD pattern: `(speech?, milliseconds)` runs,
    /// then silence until `until_ms`; returns every event.
    fn drive(pattern: &[(bool, u64)], until_ms: u64) -> Vec<DetectorEvent> {
        let mut detector = AnswerDetector::new(AnswerDetectorConfig::default(), Instant::ZERO);
        let mut events = Vec::new();
        let mut t = 0u64;
        let mut runs = pattern.iter().copied();
        let mut current = runs.next();
        let mut left = current.map_or(0, |(_, ms)| ms);
        while t < until_ms {
            t += 32;
            let speech = match current {
                Some((speech, _)) => speech,
                None => false,
            };
            events.extend(
                detector.push_vad(Instant::from_millis(t), if speech { 0.9 } else { 0.05 }),
            );
            left = left.saturating_sub(32);
            if left == 0 && current.is_some() {
                current = runs.next();
                left = current.map_or(0, |(_, ms)| ms);
            }
        }
        events
    }

    fn decision(events: &[DetectorEvent]) -> AnswerDecision {
        events
            .iter()
            .find_map(|event| match event {
                DetectorEvent::Decided(decision) => Some(*decision),
                _ => None,
            })
            .expect("a decision")
    }

    #[test]
    fn a_short_hello_then_silence_is_a_human() {
        let events = drive(&[(false, 320), (true, 416)], 5_000);
        let decided = decision(&events);
        assert_eq!(decided.answered_by, AnsweredBy::Human);
        assert_eq!(decided.reason, DecisionReason::GreetingThenSilence);
        assert!(
            decided.after_answer <= Duration::from_millis(1_600),
            "{decided:?}"
        );
        assert_eq!(events.len(), 1, "a human gets no message cue: {events:?}");
    }

    #[test]
    fn a_long_greeting_with_short_pauses_is_a_machine_then_the_silence_cue() {
        let mut pattern = vec![(false, 320)];
        for _ in 0..12 {
            pattern.push((true, 320));
            pattern.push((false, 160));
        }
        let events = drive(&pattern, 12_000);
        let decided = decision(&events);
        assert_eq!(decided.answered_by, AnsweredBy::Machine);
        assert_eq!(decided.reason, DecisionReason::LongGreeting);
        assert!(
            matches!(
                events.last(),
                Some(DetectorEvent::LeaveMessage {
                    cue: MessageCue::Silence,
                    ..
                })
            ),
            "{events:?}"
        );
    }

    #[test]
    fn silence_is_unknown_after_the_initial_silence() {
        let events = drive(&[], 5_000);
        let decided = decision(&events);
        assert_eq!(decided.answered_by, AnsweredBy::Unknown);
        assert_eq!(decided.reason, DecisionReason::InitialSilence);
        assert!(decided.after_answer >= Duration::from_millis(2_500));
    }

    #[test]
    fn a_pause_long_enough_to_answer_in_makes_it_human() {
        // Two stretches of 2 s: joined by a 0.9 s pause (longer than
        // human_silence) the first one is a complete human answer.
        let events = drive(
            &[(false, 320), (true, 2_016), (false, 896), (true, 2_016)],
            6_000,
        );
        assert_eq!(decision(&events).answered_by, AnsweredBy::Human);
        // Joined by 0.5 s, they are one 4.5 s greeting: a machine.
        let events = drive(
            &[(false, 320), (true, 2_016), (false, 512), (true, 2_016)],
            6_000,
        );
        assert_eq!(decision(&events).reason, DecisionReason::LongGreeting);
    }

    #[test]
    fn late_speech_still_undecided_gives_up_at_the_cap() {
        let events = drive(&[(false, 1_984), (true, 3_000)], 6_000);
        let decided = decision(&events);
        assert_eq!(decided.answered_by, AnsweredBy::Unknown);
        assert_eq!(decided.reason, DecisionReason::Cap);
        assert_eq!(decided.after_answer, Duration::from_millis(4_000));
    }
}
