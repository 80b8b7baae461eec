//! The turn-taking state machine.

use std::time::Duration;

use super::cues::{self, CompleteCue, Cue};
use super::{EndOfTurnReason, HangupReason, TurnConfig, TurnConfigError, TurnInput, TurnOutput};
use crate::clock::Instant;
use crate::vad::VadEvent;

/// Room reserved for one turn's transcript; longer turns grow the buffers
/// once, which is per turn, not per frame.
const TEXT_CAPACITY: usize = 2048;

/// Outputs one call can produce: at most a handful (a commit with its
/// discard, an interrupt with its start and request, idle prompt and
/// hang-up); the capacity leaves ample room.
const OUTPUT_CAPACITY: usize = 16;

/// An output waiting to be read; text lives in the machine's buffers.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pending {
    UserStartedSpeaking {
        at: Instant,
    },
    RequestEndOfTurnPrediction {
        request: u64,
    },
    SpeculativeTurn,
    DiscardSpeculation,
    UserTurnEnded {
        reason: EndOfTurnReason,
        vad_stopped_at: Instant,
    },
    Interrupt {
        at: Instant,
    },
    ResumeAgent,
    IdlePrompt,
    Hangup {
        reason: HangupReason,
    },
}

/// What the user is doing, as far as turn-taking is concerned.
#[derive(Debug, Clone, Copy, PartialEq)]
enum UserState {
    /// No speech, no turn pending.
    Silent,
    /// A user turn is in progress and the user is speaking.
    Speaking,
    /// Speech over the agent, not (yet) an interruption. `stopped_at` is set
    /// once the VAD stopped; late words may still confirm it.
    BargeIn {
        started_at: Instant,
        stopped_at: Option<Instant>,
    },
    /// Speech while a tool runs with `mute_user_during_tools`: ignored.
    Muted,
    /// The user stopped; waiting for the end of the turn.
    AwaitingEnd {
        vad_stopped_at: Instant,
        request: Option<u64>,
        requested_at: Instant,
        answer: Option<f32>,
    },
}

/// The user's silence since the agent last finished speaking.
#[derive(Debug, Clone, Copy, PartialEq)]
struct IdleClock {
    since: Instant,
    prompted: bool,
}

/// The transcript of the current turn: finished segments plus the current
/// interim, joined into `text`.
#[derive(Debug)]
struct TurnText {
    finals: String,
    interim: String,
    text: String,
    scratch: String,
    /// What `text` says, computed once per change of the text (the
    /// machine reads it on every tick while it waits).
    analysis: Option<TextAnalysis>,
}

/// The transcript cues of the turn's current text.
#[derive(Debug, Clone, Copy)]
struct TextAnalysis {
    has_words: bool,
    /// Only words of a backchannel ("uh-huh", "okay").
    backchannel: bool,
    cue: Cue,
}

impl TurnText {
    fn new() -> Self {
        TurnText {
            finals: String::with_capacity(TEXT_CAPACITY),
            interim: String::with_capacity(TEXT_CAPACITY),
            text: String::with_capacity(TEXT_CAPACITY),
            scratch: String::with_capacity(TEXT_CAPACITY),
            analysis: None,
        }
    }

    fn clear(&mut self) {
        self.finals.clear();
        self.interim.clear();
        self.text.clear();
        self.analysis = None;
    }

    /// Apply a recognizer result; true if the turn's text changed.
    fn update(&mut self, segment: &str, is_final: bool) -> bool {
        let segment = segment.trim();
        self.interim.clear();
        if is_final {
            if !segment.is_empty() {
                if !self.finals.is_empty() {
                    self.finals.push(' ');
                }
                self.finals.push_str(segment);
            }
        } else {
            self.interim.push_str(segment);
        }
        self.scratch.clear();
        self.scratch.push_str(&self.finals);
        if !self.finals.is_empty() && !self.interim.is_empty() {
            self.scratch.push(' ');
        }
        self.scratch.push_str(&self.interim);
        let changed = self.scratch != self.text;
        std::mem::swap(&mut self.scratch, &mut self.text);
        if changed {
            self.analysis = None;
        }
        changed
    }
}

/// How long words heard before the VAD opened speech wait for it: the gate
/// confirms speech 64-100 ms after its onset; a recognizer rarely leads by more.
const EARLY_WORDS_WINDOW: Duration = Duration::from_millis(400);

/// The turn-taking machine of one call. See the [module docs](super).
#[derive(Debug)]
pub struct TurnMachine {
    config: TurnConfig,
    call_started_at: Instant,
    now: Instant,
    ended: bool,
    agent_speaking: bool,
    tools_running: u32,
    user: UserState,
    turn: TurnText,
    last_text_change: Instant,
    /// The current turn began by interrupting the agent.
    interrupted_agent: bool,
    /// Words that arrived while no speech was open: a streaming recognizer
    /// often leads the VAD gate (which needs `min_speech` first), so they
    /// belong to the speech that starts right after.
    early_words_at: Option<Instant>,
    /// Utterances the recognizer announced and has not finalized yet: their
    /// words may belong to the turn, so it waits for them (up to the
    /// maximum wait) before committing.
    finals_owed: u32,
    next_request: u64,
    speculating: bool,
    speculative_text: String,
    committed_text: String,
    idle: Option<IdleClock>,
    /// The peer holds the call: no idle prompt or hang-up.
    held: bool,
    pending: [Pending; OUTPUT_CAPACITY],
    pending_len: usize,
    dropped_outputs: u64,
}

impl TurnMachine {
    /// A machine for a call that started (was answered) at `call_started_at`.
    pub fn new(config: TurnConfig, call_started_at: Instant) -> Result<Self, TurnConfigError> {
        config.validate()?;
        Ok(TurnMachine {
            config,
            call_started_at,
            now: call_started_at,
            ended: false,
            agent_speaking: false,
            tools_running: 0,
            user: UserState::Silent,
            turn: TurnText::new(),
            last_text_change: call_started_at,
            interrupted_agent: false,
            early_words_at: None,
            finals_owed: 0,
            next_request: 0,
            speculating: false,
            speculative_text: String::with_capacity(TEXT_CAPACITY),
            committed_text: String::with_capacity(TEXT_CAPACITY),
            idle: None,
            held: false,
            pending: [Pending::DiscardSpeculation; OUTPUT_CAPACITY],
            pending_len: 0,
            dropped_outputs: 0,
        })
    }

    /// The thresholds in use.
    pub fn config(&self) -> &TurnConfig {
        &self.config
    }

    /// Whether the machine asked to hang up (it ignores all input after).
    pub fn has_ended(&self) -> bool {
        self.ended
    }

    /// Outputs lost because one call produced more than the fixed capacity.
    /// Always zero unless there is a bug; exposed for metrics.
    pub fn dropped_outputs(&self) -> u64 {
        self.dropped_outputs
    }

    /// Let timers fire at `now`: the same as `handle(now, TurnInput::Tick)`.
    pub fn tick(&mut self, now: Instant) -> Emitted<'_> {
        self.handle(now, TurnInput::Tick)
    }

    /// Feed one input at `now` and read what the machine asks for. Timers
    /// due by `now` fire first, so a late tick never reorders decisions.
    /// Time never goes backwards: an earlier `now` counts as the latest seen.
    pub fn handle(&mut self, now: Instant, input: TurnInput<'_>) -> Emitted<'_> {
        self.pending_len = 0;
        self.now = self.now.max(now);
        let now = self.now;
        self.evaluate(now);
        if !self.ended {
            self.apply(now, input);
            self.evaluate(now);
        }
        Emitted {
            machine: self,
            next: 0,
        }
    }

    fn push(&mut self, output: Pending) {
        if let Some(slot) = self.pending.get_mut(self.pending_len) {
            *slot = output;
            self.pending_len += 1;
        } else {
            self.dropped_outputs += 1;
        }
    }

    fn apply(&mut self, now: Instant, input: TurnInput<'_>) {
        match input {
            TurnInput::Vad(VadEvent::SpeechStarted { at }) => self.on_speech_started(at),
            TurnInput::Vad(VadEvent::SpeechStopped { at }) => self.on_speech_stopped(now, at),
            TurnInput::Transcript { text, is_final } => self.on_transcript(now, text, is_final),
            TurnInput::UtteranceStarted => self.finals_owed = self.finals_owed.saturating_add(1),
            TurnInput::EndOfTurnPrediction {
                request,
                probability_complete,
            } => {
                if let UserState::AwaitingEnd {
                    request: Some(expected),
                    answer,
                    ..
                } = &mut self.user
                    && *expected == request
                    && probability_complete.is_finite()
                {
                    *answer = Some(probability_complete.clamp(0.0, 1.0));
                }
            }
            TurnInput::AgentSpeaking => self.agent_speaking = true,
            TurnInput::AgentFinishedSpeaking => self.on_agent_finished(now),
            TurnInput::ToolStarted => {
                self.tools_running = self.tools_running.saturating_add(1);
                // The agent is busy, not waiting on the user.
                self.idle = None;
            }
            TurnInput::ToolFinished => self.tools_running = self.tools_running.saturating_sub(1),
            TurnInput::CallHeld { held } => {
                self.held = held;
                if !held && let Some(idle) = &mut self.idle {
                    // The silence that counts starts at the resume.
                    *idle = IdleClock {
                        since: now,
                        prompted: false,
                    };
                }
            }
            TurnInput::Tick => {}
        }
    }

    fn muted(&self) -> bool {
        self.config.mute_user_during_tools && self.tools_running > 0
    }

    fn on_speech_started(&mut self, at: Instant) {
        match self.user {
            UserState::Silent => {
                let early_words = self
                    .early_words_at
                    .take()
                    .is_some_and(|heard| self.now.saturating_since(heard) <= EARLY_WORDS_WINDOW);
                if !early_words {
                    self.turn.clear();
                }
                self.interrupted_agent = false;
                if self.muted() {
                    self.user = UserState::Muted;
                } else if self.agent_speaking {
                    self.user = UserState::BargeIn {
                        started_at: at,
                        stopped_at: None,
                    };
                } else {
                    self.user = UserState::Speaking;
                    self.push(Pending::UserStartedSpeaking { at });
                }
            }
            // The user went on: the same turn continues.
            UserState::AwaitingEnd { .. } => {
                self.discard_speculation();
                self.user = UserState::Speaking;
            }
            // More speech right after a short one over the agent: a new
            // stretch of continuous speech, same words.
            UserState::BargeIn {
                stopped_at: Some(_),
                ..
            } => {
                self.user = UserState::BargeIn {
                    started_at: at,
                    stopped_at: None,
                };
            }
            UserState::Speaking | UserState::Muted | UserState::BargeIn { .. } => {}
        }
    }

    fn on_speech_stopped(&mut self, now: Instant, at: Instant) {
        match self.user {
            UserState::Speaking => self.await_end_of_turn(now, at),
            UserState::BargeIn {
                started_at,
                stopped_at: None,
            } => {
                self.user = UserState::BargeIn {
                    started_at,
                    stopped_at: Some(at),
                };
            }
            UserState::Muted => self.user = UserState::Silent,
            UserState::Silent | UserState::AwaitingEnd { .. } | UserState::BargeIn { .. } => {}
        }
    }

    fn await_end_of_turn(&mut self, now: Instant, vad_stopped_at: Instant) {
        let request = if self.config.use_end_of_turn_model {
            let request = self.next_request;
            self.next_request = self.next_request.wrapping_add(1);
            self.push(Pending::RequestEndOfTurnPrediction { request });
            Some(request)
        } else {
            None
        };
        self.user = UserState::AwaitingEnd {
            vad_stopped_at,
            request,
            requested_at: now,
            answer: None,
        };
    }

    fn on_transcript(&mut self, now: Instant, text: &str, is_final: bool) {
        if is_final {
            self.finals_owed = self.finals_owed.saturating_sub(1);
            if text.trim().is_empty() {
                // An announced utterance with no words: only the debt is paid.
                return;
            }
        }
        let in_turn = matches!(
            self.user,
            UserState::Speaking | UserState::BargeIn { .. } | UserState::AwaitingEnd { .. }
        );
        // Words before the VAD opened speech are kept for the speech that
        // starts within EARLY_WORDS_WINDOW; otherwise late results after a
        // commit or a dropped backchannel belong to no turn, and results for
        // muted speech are ignored by design.
        if !in_turn {
            if matches!(self.user, UserState::Silent) && !self.muted() {
                if self.early_words_at.is_none() {
                    self.turn.clear();
                }
                self.turn.update(text, is_final);
                self.early_words_at = Some(now);
            }
            return;
        }
        if self.turn.update(text, is_final) {
            self.last_text_change = now;
        }
        if self.text_analysis().has_words
            && let Some(idle) = &mut self.idle
        {
            // The user is there: restart the silence count.
            *idle = IdleClock {
                since: now,
                prompted: false,
            };
        }
    }

    fn on_agent_finished(&mut self, now: Instant) {
        self.agent_speaking = false;
        // Speech over the agent that outlived it is simply the user talking.
        if let UserState::BargeIn {
            started_at,
            stopped_at: None,
        } = self.user
        {
            self.user = UserState::Speaking;
            self.push(Pending::UserStartedSpeaking { at: started_at });
        }
        // After an idle prompt the count goes on (so the hang-up comes 20 s
        // after the real silence began); otherwise it restarts now.
        match self.idle {
            Some(IdleClock { prompted: true, .. }) => {}
            _ => {
                self.idle = Some(IdleClock {
                    since: now,
                    prompted: false,
                });
            }
        }
    }

    fn evaluate(&mut self, now: Instant) {
        if self.ended {
            return;
        }
        if let Some(max) = self.config.max_call_duration
            && now.saturating_since(self.call_started_at) >= max
        {
            self.hang_up(HangupReason::MaxDuration);
            return;
        }
        match self.user {
            UserState::BargeIn {
                started_at,
                stopped_at,
            } => self.evaluate_barge_in(now, started_at, stopped_at),
            UserState::AwaitingEnd {
                vad_stopped_at,
                requested_at,
                answer,
                ..
            } => self.evaluate_end_of_turn(now, vad_stopped_at, requested_at, answer),
            UserState::Silent | UserState::Speaking | UserState::Muted => {}
        }
        self.evaluate_idle(now);
    }

    /// The cues of the turn's text, computed once per change of the text.
    fn text_analysis(&mut self) -> TextAnalysis {
        if let Some(analysis) = self.turn.analysis {
            return analysis;
        }
        let text = &self.turn.text;
        let has_words = cues::has_words(text);
        let analysis = TextAnalysis {
            has_words,
            backchannel: has_words && cues::is_backchannel(text, &self.config.backchannel_phrases),
            cue: cues::classify(text),
        };
        self.turn.analysis = Some(analysis);
        analysis
    }

    fn hang_up(&mut self, reason: HangupReason) {
        self.push(Pending::Hangup { reason });
        self.ended = true;
    }

    fn evaluate_barge_in(
        &mut self,
        now: Instant,
        started_at: Instant,
        stopped_at: Option<Instant>,
    ) {
        let TextAnalysis {
            has_words,
            backchannel,
            ..
        } = self.text_analysis();
        match stopped_at {
            None => {
                let speech = now.saturating_since(started_at);
                let by_words =
                    has_words && !backchannel && speech >= self.config.barge_in_min_speech;
                let by_audio = !has_words && speech >= self.config.barge_in_audio_only_after;
                if by_words || by_audio {
                    self.confirm_barge_in(now, started_at, None);
                }
            }
            Some(stop) => {
                // The VAD already required its minimum speech; real words
                // that arrive late are enough.
                if has_words && !backchannel {
                    self.confirm_barge_in(now, started_at, Some(stop));
                } else if now.saturating_since(stop) >= self.config.barge_in_late_transcript_window
                {
                    // A backchannel or a short noise: it never happened.
                    self.turn.clear();
                    self.user = UserState::Silent;
                }
            }
        }
    }

    fn confirm_barge_in(&mut self, now: Instant, started_at: Instant, stopped_at: Option<Instant>) {
        self.push(Pending::UserStartedSpeaking { at: started_at });
        if self.agent_speaking {
            self.push(Pending::Interrupt { at: now });
            self.agent_speaking = false;
            self.interrupted_agent = true;
        }
        match stopped_at {
            None => self.user = UserState::Speaking,
            Some(stop) => self.await_end_of_turn(now, stop),
        }
    }

    fn discard_speculation(&mut self) {
        if self.speculating {
            self.speculating = false;
            self.push(Pending::DiscardSpeculation);
        }
    }

    /// The wait after the end of voice when cues alone decide.
    fn cue_wait(&self, cue: Cue) -> Duration {
        let config = &self.config;
        match cue {
            Cue::Complete(_) => config.cue_complete_wait,
            Cue::Neutral => config.cue_neutral_wait,
            Cue::Incomplete(incomplete) if incomplete.is_strong() => config.max_end_of_turn_wait,
            Cue::Incomplete(_) => config
                .cue_neutral_wait
                .max(config.punctuated_function_word_hold),
        }
    }

    /// The least wait after the end of voice when the model says complete.
    fn model_complete_hold(&self, cue: Cue) -> Duration {
        match cue {
            Cue::Complete(_) | Cue::Neutral => Duration::ZERO,
            Cue::Incomplete(incomplete) if incomplete.is_strong() => {
                self.config.max_end_of_turn_wait
            }
            Cue::Incomplete(_) => self.config.punctuated_function_word_hold,
        }
    }

    /// Whether the turn ends now, and why.
    fn end_of_turn_decision(
        &self,
        now: Instant,
        vad_stopped_at: Instant,
        requested_at: Instant,
        answer: Option<f32>,
        cue: Cue,
    ) -> Option<EndOfTurnReason> {
        let config = &self.config;
        let waited = now.saturating_since(vad_stopped_at);
        let max_wait = config.max_end_of_turn_wait;
        if waited >= max_wait {
            return Some(EndOfTurnReason::MaxWait);
        }
        if !config.use_end_of_turn_model {
            return (waited >= self.cue_wait(cue)).then_some(EndOfTurnReason::TranscriptCues);
        }
        match answer {
            Some(probability) if probability >= config.model_complete_threshold => {
                (waited >= self.model_complete_hold(cue)).then_some(EndOfTurnReason::Model)
            }
            Some(_) => {
                let short_or_question = matches!(
                    cue,
                    Cue::Complete(CompleteCue::ShortAnswer | CompleteCue::Question)
                );
                (short_or_question && waited >= config.model_disagreement_wait)
                    .then_some(EndOfTurnReason::TranscriptCues)
            }
            None => {
                let timed_out = config
                    .model_answer_timeout
                    .is_some_and(|timeout| now.saturating_since(requested_at) >= timeout);
                (timed_out && waited >= self.cue_wait(cue))
                    .then_some(EndOfTurnReason::ModelUnanswered)
            }
        }
    }

    fn evaluate_end_of_turn(
        &mut self,
        now: Instant,
        vad_stopped_at: Instant,
        requested_at: Instant,
        answer: Option<f32>,
    ) {
        let waited = now.saturating_since(vad_stopped_at);
        let TextAnalysis {
            has_words,
            backchannel,
            cue,
        } = self.text_analysis();
        let false_alarm = self.interrupted_agent && (!has_words || backchannel);
        if false_alarm {
            // Noise or a backchannel stopped the agent: give the recognizer
            // time to prove otherwise, then let the agent go on.
            if waited >= self.config.false_interruption_timeout {
                self.discard_speculation();
                self.reset_turn();
                self.push(Pending::ResumeAgent);
            }
            return;
        }
        if !has_words {
            // Nothing was said (noise with the agent silent): no turn to
            // commit. Words may still arrive up to the maximum wait.
            if waited >= self.config.max_end_of_turn_wait {
                self.reset_turn();
            }
            return;
        }
        if self.speculating && self.speculative_text != self.turn.text {
            self.discard_speculation();
        }
        if let Some(reason) =
            self.end_of_turn_decision(now, vad_stopped_at, requested_at, answer, cue)
        {
            // Words of this turn still being decoded would be lost (they would
            // arrive after the commit): wait for them, up to the maximum.
            let words_pending = self.finals_owed > 0 && reason != EndOfTurnReason::MaxWait;
            if !words_pending {
                self.commit(reason, vad_stopped_at);
            }
            return;
        }
        let stable =
            now.saturating_since(self.last_text_change) >= self.config.preemptive_stable_for;
        if self.config.preemptive_generation
            && !self.speculating
            && stable
            && !matches!(cue, Cue::Incomplete(_))
        {
            self.speculative_text.clear();
            self.speculative_text.push_str(&self.turn.text);
            self.speculating = true;
            self.push(Pending::SpeculativeTurn);
        }
    }

    fn commit(&mut self, reason: EndOfTurnReason, vad_stopped_at: Instant) {
        self.committed_text.clear();
        self.committed_text.push_str(&self.turn.text);
        // A live speculation has this very text (checked before): keep it.
        self.speculating = false;
        self.push(Pending::UserTurnEnded {
            reason,
            vad_stopped_at,
        });
        self.reset_turn();
        // The agent now thinks; silence is counted once it has spoken.
        self.idle = None;
    }

    fn reset_turn(&mut self) {
        self.turn.clear();
        self.interrupted_agent = false;
        self.user = UserState::Silent;
    }

    fn evaluate_idle(&mut self, now: Instant) {
        if self.ended
            || self.held
            || self.user != UserState::Silent
            || self.agent_speaking
            || self.tools_running > 0
        {
            return;
        }
        let Some(idle) = self.idle else {
            return;
        };
        let silent_for = now.saturating_since(idle.since);
        let mut prompted = idle.prompted;
        if !prompted
            && let Some(prompt_after) = self.config.idle_prompt_after
            && silent_for >= prompt_after
        {
            prompted = true;
            self.idle = Some(IdleClock {
                since: idle.since,
                prompted: true,
            });
            self.push(Pending::IdlePrompt);
        }
        if let Some(hangup_after) = self.config.idle_hangup_after
            && silent_for >= hangup_after
            && (prompted || self.config.idle_prompt_after.is_none())
        {
            self.hang_up(HangupReason::IdleTimeout);
        }
    }

    fn view(&self, pending: Pending) -> TurnOutput<'_> {
        match pending {
            Pending::UserStartedSpeaking { at } => TurnOutput::UserStartedSpeaking { at },
            Pending::RequestEndOfTurnPrediction { request } => {
                TurnOutput::RequestEndOfTurnPrediction { request }
            }
            Pending::SpeculativeTurn => TurnOutput::SpeculativeTurn {
                text: &self.speculative_text,
            },
            Pending::DiscardSpeculation => TurnOutput::DiscardSpeculation,
            Pending::UserTurnEnded {
                reason,
                vad_stopped_at,
            } => TurnOutput::UserTurnEnded {
                text: &self.committed_text,
                reason,
                vad_stopped_at,
            },
            Pending::Interrupt { at } => TurnOutput::Interrupt { at },
            Pending::ResumeAgent => TurnOutput::ResumeAgent,
            Pending::IdlePrompt => TurnOutput::IdlePrompt,
            Pending::Hangup { reason } => TurnOutput::Hangup { reason },
        }
    }
}

/// The outputs of one [`TurnMachine::handle`] call, in order. Borrows the
/// machine: read them before the next call.
#[derive(Debug)]
pub struct Emitted<'m> {
    machine: &'m TurnMachine,
    next: usize,
}

impl Emitted<'_> {
    /// Whether the call produced no output.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'m> Iterator for Emitted<'m> {
    type Item = TurnOutput<'m>;

    fn next(&mut self) -> Option<TurnOutput<'m>> {
        let machine = self.machine;
        let pending = *machine.pending.get(..machine.pending_len)?.get(self.next)?;
        self.next += 1;
        Some(machine.view(pending))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.machine.pending_len.saturating_sub(self.next);
        (left, Some(left))
    }
}

impl ExactSizeIterator for Emitted<'_> {}

#[cfg(test)]
mod tests {
    use super::*;

    fn capacities(machine: &TurnMachine) -> [usize; 6] {
        [
            machine.turn.finals.capacity(),
            machine.turn.interim.capacity(),
            machine.turn.text.capacity(),
            machine.turn.scratch.capacity(),
            machine.speculative_text.capacity(),
            machine.committed_text.capacity(),
        ]
    }

    /// The workspace forbids `unsafe`, so no counting allocator: instead,
    /// the only heap buffers the machine writes per input must never grow
    /// (everything else it touches is fixed-size by construction).
    #[test]
    fn a_long_call_never_grows_the_text_buffers() {
        let mut machine =
            TurnMachine::new(TurnConfig::default(), Instant::ZERO).expect("valid config");
        let before = capacities(&machine);
        let mut now = 0u64;
        let mut turns_ended = 0;
        let mut interrupts = 0;
        for turn in 0..200u64 {
            let start = now + 300;
            let stop = start + 2000;
            if turn % 3 == 0 {
                let _ = machine.handle(Instant::from_millis(now), TurnInput::AgentSpeaking);
            }
            while now < stop + 3000 {
                now += 20;
                let at = Instant::from_millis(now);
                let input = match now {
                    n if n == start + 80 => TurnInput::Vad(VadEvent::SpeechStarted {
                        at: Instant::from_millis(start),
                    }),
                    n if n == start + 600 => TurnInput::Transcript {
                        text: "I was charged twice for the same order",
                        is_final: false,
                    },
                    n if n == start + 1200 => TurnInput::Transcript {
                        text: "I was charged twice for the same order, and I'd like a refund.",
                        is_final: true,
                    },
                    n if n == stop + 200 => TurnInput::Vad(VadEvent::SpeechStopped {
                        at: Instant::from_millis(stop),
                    }),
                    n if n == stop + 260 => TurnInput::EndOfTurnPrediction {
                        request: turn,
                        probability_complete: 0.9,
                    },
                    n if n == stop + 1000 => TurnInput::AgentFinishedSpeaking,
                    _ => TurnInput::Tick,
                };
                for output in machine.handle(at, input) {
                    match output {
                        TurnOutput::UserTurnEnded { .. } => turns_ended += 1,
                        TurnOutput::Interrupt { .. } => interrupts += 1,
                        _ => {}
                    }
                }
            }
        }
        assert_eq!(turns_ended, 200);
        assert_eq!(interrupts, 67);
        assert_eq!(capacities(&machine), before);
        assert!(!machine.has_ended());
        assert_eq!(machine.dropped_outputs(), 0);
    }
}
