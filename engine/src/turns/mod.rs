//! Turn-taking: endpointing, barge-in, backchannels, false-interruption
//! recovery, idle handling.
//!
//! [`TurnMachine`] is a sans-IO state machine. The driver feeds it VAD
//! events, transcripts, end-of-turn model answers and agent/tool playout
//! state, each with the current engine time, plus a [`TurnInput::Tick`]
//! every 20 ms frame; it answers with [`TurnOutput`]s. It never blocks, and
//! after construction it allocates nothing per frame (transcript text is
//! copied into buffers reserved up front, grown only for very long turns).
//!
//! How it decides, in short:
//! * **End of turn**: after the VAD stop it asks the audio end-of-turn model
//!   and reads the transcript ([`cues`]). The turn ends when the model says
//!   complete and the words do not sound unfinished; an unfinished sentence
//!   ("So the problem is that") is held open until the user goes on or the
//!   hard maximum wait passes. See [`TurnConfig`] for every wait.
//! * **Barge-in**: speech over the agent interrupts only after
//!   `barge_in_min_speech` with words that are not a backchannel, or after
//!   `barge_in_audio_only_after` of speech with no words yet. Backchannels
//!   produce no output at all, so the agent never even pauses.
//! * **False interruption**: if the interrupting speech brought no words
//!   (or only a backchannel), the agent resumes after
//!   `false_interruption_timeout` of silence.
//!
//! Against the baselines (`shared/research/pipecat-baseline.md`,
//! `anchors-voice.md`), with the defaults:
//! * Pipecat ends the turn on a mid-sentence fragment its audio model scores
//!   complete ("So the problem is that", p ~0.98); here the trailing
//!   function word holds it.
//! * Pipecat and LiveKit (VAD mode) interrupt on any 200/500 ms of speech,
//!   backchannels included; here a backchannel produces no output at all.
//! * A real "wait, stop" interrupts 200 ms after its onset (one 20 ms tick
//!   at most later), LiveKit waits 500 ms; audio alone (no words yet)
//!   interrupts at 500 ms.
//! * A false interruption resumes the agent after 1.5 s (LiveKit 2.0 s;
//!   Pipecat has none). When the model says incomplete to "Yeah." the turn
//!   ends after 1.0 s, not at the 2.5-3 s fallback.

mod config;
pub mod cues;
mod machine;

pub use config::{DEFAULT_BACKCHANNELS, TurnConfig, TurnConfigError};
pub use machine::{Emitted, TurnMachine};

use crate::clock::Instant;
use crate::vad::VadEvent;

/// One input to the turn machine. Times that matter are inside the events
/// (`VadEvent::*::at`); the current time is passed with each call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TurnInput<'a> {
    /// A speech start or stop from the VAD gate.
    Vad(VadEvent),
    /// A streaming recognizer result for the current user utterance. Interim
    /// results replace the previous interim; a final result closes the
    /// current segment and is appended to the turn (Deepgram-style).
    Transcript {
        /// The recognized text of the current segment.
        text: &'a str,
        /// Whether the segment is final.
        is_final: bool,
    },
    /// The recognizer began an utterance and owes one final result for it
    /// ([`AsrEvent::UtteranceStarted`](crate::providers::AsrEvent::UtteranceStarted)).
    /// While a final is owed the turn is not committed before
    /// `max_end_of_turn_wait`, so words still being decoded are not lost.
    UtteranceStarted,
    /// The end-of-turn model's answer to a `RequestEndOfTurnPrediction`.
    /// Answers to stale requests, and non-finite probabilities, are ignored.
    EndOfTurnPrediction {
        /// The request this answers.
        request: u64,
        /// The probability that the user finished the turn.
        probability_complete: f32,
    },
    /// The agent's audio started playing out.
    AgentSpeaking,
    /// The agent's last audio frame was played out.
    AgentFinishedSpeaking,
    /// A tool call started.
    ToolStarted,
    /// A tool call finished.
    ToolFinished,
    /// The peer put the call on hold (`true`, a re-INVITE with
    /// `sendonly`/`inactive`) or resumed it: silence while held is not the
    /// caller leaving, so the idle prompt and hang-up wait; the count
    /// starts over at the resume.
    CallHeld {
        /// On hold now.
        held: bool,
    },
    /// A 20 ms frame passed: let timers fire.
    Tick,
}

/// Why a user turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndOfTurnReason {
    /// The end-of-turn model said complete and the words agreed (or held
    /// the turn only briefly).
    Model,
    /// Transcript cues decided: there is no model, or the model said
    /// incomplete to a short answer or a question.
    TranscriptCues,
    /// The model did not answer within `model_answer_timeout`; transcript
    /// cues decided.
    ModelUnanswered,
    /// The hard maximum wait after the end of the user's voice passed.
    MaxWait,
}

/// Why the machine asks to end the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HangupReason {
    /// The user stayed silent past `idle_hangup_after`.
    IdleTimeout,
    /// The call reached `max_call_duration`.
    MaxDuration,
    /// An answering machine answered and the call hangs up on it
    /// ([`crate::amd::MachineAction::HangUp`]).
    AnsweringMachine,
    /// The voicemail message was left (or could not be).
    VoicemailLeft,
}

/// What the turn machine asks the driver to do. Text borrows the machine's
/// buffers until its next call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TurnOutput<'a> {
    /// A user turn began (at `at`, the start of the speech). Over the agent
    /// this comes only with a confirmed `Interrupt`.
    UserStartedSpeaking {
        /// When the user's speech began.
        at: Instant,
    },
    /// Run the end-of-turn model on the audio up to now and answer with
    /// `TurnInput::EndOfTurnPrediction` carrying the same `request`.
    RequestEndOfTurnPrediction {
        /// Identifies the answer.
        request: u64,
    },
    /// The transcript is stable after the VAD stop: start generating a
    /// reply to `text` now. If `UserTurnEnded` follows without a
    /// `DiscardSpeculation` in between, its text is this text.
    SpeculativeTurn {
        /// The user's words so far.
        text: &'a str,
    },
    /// The last speculation is void (the user went on or the words changed):
    /// cancel that generation.
    DiscardSpeculation,
    /// The user's turn is over: reply to it.
    UserTurnEnded {
        /// The user's words.
        text: &'a str,
        /// What decided.
        reason: EndOfTurnReason,
        /// The end of the user's voice, to measure endpointing delay from.
        vad_stopped_at: Instant,
    },
    /// A confirmed barge-in: flush all queued agent audio on every transport
    /// and cancel the agent's LLM and TTS.
    Interrupt {
        /// When the machine decided.
        at: Instant,
    },
    /// The interruption was a false alarm (noise, or a backchannel): resume
    /// what the agent was saying.
    ResumeAgent,
    /// The user has been silent for `idle_prompt_after`: check on them.
    IdlePrompt,
    /// End the call. The machine emits nothing more afterwards.
    Hangup {
        /// Why.
        reason: HangupReason,
    },
}
