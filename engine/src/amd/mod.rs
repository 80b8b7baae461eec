//! Answering-machine detection (AMD) for outbound calls, and what to do
//! when a machine answers.
//!
//! * [`AnswerDetector`]: sans-IO, human / machine / unknown from the first
//!   seconds of the callee's audio (VAD cadence, greeting length, beep), and
//!   afterwards the moment to leave a message.
//! * [`BeepDetector`]: the "after the tone" beep (Goertzel).
//! * [`AnsweringMachine`]: the policy a call's media runs from the answer
//!   ([`crate::session::CallMediaConfig::answering_machine`]). While the
//!   detector decides, the caller's committed turns are held back, so the
//!   agent says nothing; a person's "Hello?" is then released as the first
//!   user turn. A machine either gets hung up on at once
//!   ([`MachineAction::HangUp`]) or, after its beep, hears the agent speak
//!   the configured message, and then the call ends
//!   ([`MachineAction::LeaveMessage`]).

mod beep;
mod detector;

use std::time::Duration;

pub use beep::{BEEP_FRAME_SAMPLES, BeepConfig, BeepDetector, BeepEvent};
pub use detector::{
    AnswerDecision, AnswerDetector, AnswerDetectorConfig, AnsweredBy, DecisionReason,
    DetectorEvent, MessageCue,
};

use crate::clock::Instant;
use crate::session::MediaEvent;
use crate::turns::HangupReason;

/// What the call does when a machine answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MachineAction {
    /// Hang up at once (the API's `voicemail_action: hangup`).
    HangUp,
    /// Wait for the beep (or the end of the greeting), speak `text`, hang up
    /// (`voicemail_action: leave_message`).
    LeaveMessage {
        /// The message, spoken as is.
        text: String,
    },
}

/// Answering-machine handling for one outbound call.
#[derive(Debug, Clone, PartialEq)]
pub struct AnsweringMachineConfig {
    /// The detector's thresholds.
    pub detector: AnswerDetectorConfig,
    /// What to do with a machine.
    pub on_machine: MachineAction,
    /// The message's audio has not started this long after its cue: hang up
    /// (default 10 s; the voice failed).
    pub message_start_timeout: Duration,
    /// The agent has been quiet this long after its message: hang up
    /// (default 1.5 s; longer than the gaps between synthesized clauses).
    pub message_end_quiet: Duration,
    /// The longest message (default 60 s).
    pub message_max: Duration,
}

impl AnsweringMachineConfig {
    /// The default thresholds with `on_machine`.
    pub fn new(on_machine: MachineAction) -> Self {
        AnsweringMachineConfig {
            detector: AnswerDetectorConfig::default(),
            on_machine,
            message_start_timeout: Duration::from_secs(10),
            message_end_quiet: Duration::from_millis(1_500),
            message_max: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Undecided: the caller's turns are held.
    Detecting,
    /// A person (or unknown): the conversation runs as usual.
    Conversation,
    /// A machine; waiting for the moment to leave the message.
    AwaitingCue,
    /// The message was handed to the agent at `since`.
    Speaking {
        since: Instant,
        started: bool,
        quiet_since: Option<Instant>,
    },
    /// The hang-up was asked for.
    Done,
}

/// The answering-machine policy of one call's media (see the module docs).
#[derive(Debug)]
pub struct AnsweringMachine {
    config: AnsweringMachineConfig,
    detector: AnswerDetector,
    held: Vec<MediaEvent>,
    phase: Phase,
}

impl AnsweringMachine {
    /// Starts detecting on a call answered at `answered_at`.
    pub fn new(config: AnsweringMachineConfig, answered_at: Instant) -> Self {
        AnsweringMachine {
            detector: AnswerDetector::new(config.detector.clone(), answered_at),
            config,
            held: Vec::with_capacity(4),
            phase: Phase::Detecting,
        }
    }

    /// The decision, once made.
    pub fn decision(&self) -> Option<AnswerDecision> {
        self.detector.decision()
    }

    /// Whether the caller's audio must stay away from the turn machine: a
    /// machine's greeting is not a turn to answer, nor a barge-in.
    pub fn mutes_caller(&self) -> bool {
        !matches!(self.phase, Phase::Detecting | Phase::Conversation)
    }

    /// A decoded 20 ms frame of the caller's audio that ended at `end`.
    pub fn on_audio(&mut self, end: Instant, samples: &[i16], out: &mut Vec<MediaEvent>) {
        if self.detector.is_listening()
            && let Some(event) = self.detector.push_audio(end, samples)
        {
            self.act(event, out);
        }
    }

    /// The VAD's probability for the window that ended at `window_end`.
    pub fn on_vad(&mut self, window_end: Instant, probability: f32, out: &mut Vec<MediaEvent>) {
        if self.detector.is_listening()
            && let Some(event) = self.detector.push_vad(window_end, probability)
        {
            self.act(event, out);
        }
    }

    /// The turn machine's `event`, passed on (`Some`) or held back / dropped.
    pub fn filter(&mut self, event: MediaEvent) -> Option<MediaEvent> {
        match self.phase {
            Phase::Conversation => Some(event),
            Phase::Detecting => match event {
                MediaEvent::UserTurnEnded { .. } | MediaEvent::IdlePrompt => {
                    self.held.push(event);
                    None
                }
                other => Some(other),
            },
            // Talking to a machine: only the call's own limits still count.
            _ => matches!(event, MediaEvent::Hangup { .. }).then_some(event),
        }
    }

    /// The timers at `now`; `agent_speaking` is whether agent audio is going out.
    pub fn poll(&mut self, now: Instant, agent_speaking: bool, out: &mut Vec<MediaEvent>) {
        if self.detector.is_listening()
            && let Some(event) = self.detector.poll(now)
        {
            self.act(event, out);
        }
        if let Phase::Speaking {
            since,
            started,
            quiet_since,
        } = self.phase
        {
            let started = started || agent_speaking;
            let quiet_since = if agent_speaking {
                None
            } else {
                quiet_since.or(started.then_some(now))
            };
            let done = now.saturating_since(since) >= self.config.message_max
                || (!started && now.saturating_since(since) >= self.config.message_start_timeout)
                || quiet_since.is_some_and(|quiet| {
                    now.saturating_since(quiet) >= self.config.message_end_quiet
                });
            if done {
                self.phase = Phase::Done;
                out.push(MediaEvent::Hangup {
                    reason: HangupReason::VoicemailLeft,
                });
            } else {
                self.phase = Phase::Speaking {
                    since,
                    started,
                    quiet_since,
                };
            }
        }
    }

    fn act(&mut self, event: DetectorEvent, out: &mut Vec<MediaEvent>) {
        match event {
            DetectorEvent::Decided(decision) => {
                out.push(MediaEvent::AnsweredBy(decision));
                if decision.answered_by == AnsweredBy::Machine {
                    self.held.clear();
                    match self.config.on_machine {
                        MachineAction::HangUp => {
                            self.phase = Phase::Done;
                            out.push(MediaEvent::Hangup {
                                reason: HangupReason::AnsweringMachine,
                            });
                        }
                        MachineAction::LeaveMessage { .. } => self.phase = Phase::AwaitingCue,
                    }
                } else {
                    self.phase = Phase::Conversation;
                    out.append(&mut self.held);
                }
            }
            DetectorEvent::LeaveMessage { cue, at } => {
                if let (Phase::AwaitingCue, MachineAction::LeaveMessage { text }) =
                    (self.phase, &self.config.on_machine)
                {
                    out.push(MediaEvent::LeaveVoicemail {
                        text: text.clone(),
                        cue,
                    });
                    self.phase = Phase::Speaking {
                        since: at,
                        started: false,
                        quiet_since: None,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::turns::EndOfTurnReason;

    fn turn(text: &str) -> MediaEvent {
        MediaEvent::UserTurnEnded {
            text: text.into(),
            reason: EndOfTurnReason::MaxWait,
            speech_ended_at: Instant::from_millis(700),
            decided_at: Instant::from_millis(900),
        }
    }

    /// Feeds `speech_ms` of speech from 320 ms on, then silence, until
    /// `until_ms`, on the 32 ms VAD grid; `during` runs after each window.
    fn drive(
        machine: &mut AnsweringMachine,
        speech_ms: u64,
        until_ms: u64,
        out: &mut Vec<MediaEvent>,
        mut during: impl FnMut(u64, &mut AnsweringMachine, &mut Vec<MediaEvent>),
    ) {
        let mut t = 0;
        while t < until_ms {
            t += 32;
            let speech = (320..320 + speech_ms).contains(&t);
            machine.on_vad(Instant::from_millis(t), if speech { 0.9 } else { 0.0 }, out);
            during(t, machine, out);
            machine.poll(Instant::from_millis(t), false, out);
        }
    }

    #[test]
    fn a_persons_first_turn_waits_for_the_decision_then_goes_through() {
        let mut machine = AnsweringMachine::new(
            AnsweringMachineConfig::new(MachineAction::HangUp),
            Instant::ZERO,
        );
        let mut out = Vec::new();
        drive(&mut machine, 400, 3_000, &mut out, |t, machine, out| {
            if t == 928 {
                // The turn machine commits "Hello?" before the detector knows.
                assert_eq!(machine.filter(turn("Hello?")), None);
                assert!(out.is_empty(), "nothing reaches the agent yet: {out:?}");
            }
        });
        assert!(
            matches!(&out[..], [MediaEvent::AnsweredBy(d), MediaEvent::UserTurnEnded { text, .. }]
                if d.answered_by == AnsweredBy::Human && text == "Hello?"),
            "{out:?}"
        );
        assert!(!machine.mutes_caller());
        // Later turns pass straight through.
        assert!(machine.filter(turn("Who is this?")).is_some());
    }

    #[test]
    fn a_machine_drops_the_held_turn_and_is_hung_up_on() {
        let mut machine = AnsweringMachine::new(
            AnsweringMachineConfig::new(MachineAction::HangUp),
            Instant::ZERO,
        );
        let mut out = Vec::new();
        drive(&mut machine, 5_000, 6_000, &mut out, |t, machine, _| {
            if t == 1_504 {
                assert_eq!(machine.filter(turn("Hi, you've reached Sam.")), None);
            }
        });
        assert!(
            matches!(&out[..], [MediaEvent::AnsweredBy(d), MediaEvent::Hangup { reason: HangupReason::AnsweringMachine }]
                if d.answered_by == AnsweredBy::Machine),
            "{out:?}"
        );
        assert!(machine.mutes_caller());
        assert_eq!(machine.filter(turn("please leave a message")), None);
        assert!(machine.filter(MediaEvent::IdlePrompt).is_none());
    }

    #[test]
    fn the_message_follows_the_cue_and_the_call_ends_after_the_agent_is_quiet() {
        let mut config = AnsweringMachineConfig::new(MachineAction::LeaveMessage {
            text: "Please call back.".into(),
        });
        config.message_end_quiet = Duration::from_millis(1_000);
        let mut machine = AnsweringMachine::new(config, Instant::ZERO);
        let mut out = Vec::new();
        // 4 s of greeting, then silence: the cue is 2 s after its end.
        drive(&mut machine, 4_000, 6_400, &mut out, |_, _, _| {});
        let cue_at = out
            .iter()
            .position(|e| matches!(e, MediaEvent::LeaveVoicemail { cue: MessageCue::Silence, text } if text == "Please call back."))
            .unwrap_or_else(|| panic!("{out:?}"));
        assert_eq!(cue_at, 1, "{out:?}");
        out.clear();
        // The agent speaks for 2 s, then is quiet: the hang-up 1 s later.
        let mut t = 6_400;
        while t < 10_000 && out.is_empty() {
            t += 20;
            machine.poll(Instant::from_millis(t), t < 8_400, &mut out);
        }
        assert_eq!(
            out,
            vec![MediaEvent::Hangup {
                reason: HangupReason::VoicemailLeft
            }]
        );
        assert_eq!(t, 9_400);
    }
}
