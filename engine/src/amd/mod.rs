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
