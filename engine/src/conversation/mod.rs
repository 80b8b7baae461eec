//! The agent loop: one tokio task per call that turns committed user turns
//! into spoken agent replies (LLM -> clauses -> TTS -> transport), runs the
//! model -> tool -> model loop, handles barge-in and preemptive generation,
//! and reports everything on the call's event stream.
//!
//! The transport and the turn-taking machine drive it through an
//! [`AgentHandle`]: [`AgentHandle::speculate`] on a stable interim
//! transcript, [`AgentHandle::commit`] on the end of the user's turn,
//! [`AgentHandle::interrupt`] when the caller barges in (with how much of the
//! reply was actually played). Agent audio leaves through a bounded channel
//! of [`OutboundFrame`]s that the transport drains at real-time pace; on an
//! interruption the transport flushes what it still holds of that reply.

pub mod call_control;
pub mod clauses;
pub mod keypad;
pub mod played;
mod turn;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::Instant;
use crate::codecs::PcmFrame;
use crate::events::{
    CallEvent, CallStatus, EndedBy, EventSender, ProviderRole, Role, SegmentSource, TurnMetrics,
    duration_ms,
};
use crate::providers::{ChatMessage, LlmProvider, TtsProvider};
use crate::tools::http::HttpToolRunner;
use crate::tools::{ToolLimits, ToolSet, confirm};
use keypad::{KeypadCollector, KeypadConfig, KeypadEntry};
use played::ClauseAudio;
use turn::{Shared, TimedLlmStream, TurnContext, TurnOutcome, TurnProgress, lock};

/// Maps tokio time (virtual under `tokio::time::pause()`) to the engine
/// clock, with the call's start as the epoch: every [`Instant`] the loop
/// produces is the time since the call started.
#[derive(Debug, Clone, Copy)]
pub struct CallClock {
    epoch: tokio::time::Instant,
}

impl CallClock {
    /// A clock whose epoch is now.
    pub fn start_now() -> Self {
        CallClock {
            epoch: tokio::time::Instant::now(),
        }
    }

    /// The current engine time.
    pub fn now(&self) -> Instant {
        self.from_tokio(tokio::time::Instant::now())
    }

    /// A tokio instant as engine time.
    pub fn from_tokio(&self, at: tokio::time::Instant) -> Instant {
        Instant::from_std(self.epoch.into_std(), at.into_std())
    }

    /// An engine time as a tokio instant (for timers).
    pub fn to_tokio(&self, at: Instant) -> tokio::time::Instant {
        self.epoch + at.since_epoch()
    }
}

/// How the agent behaves on a call.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The rendered system prompt (persona + instructions + context).
    pub system_prompt: String,
    /// The agent's tools.
    pub tools: ToolSet,
    /// Tool deadlines and size caps.
    pub tool_limits: ToolLimits,
    /// Tool rounds per user turn; the model call after the last round is
    /// offered no tools, so it must answer in words.
    pub max_tool_rounds: usize,
    /// A comma ends a clause once the clause has this many words.
    pub min_words_before_comma: usize,
    /// The voice's pace, used to estimate how much of an unfinished clause
    /// was heard when no clause of the reply has finished yet.
    pub nominal_speech_per_char: Duration,
    /// The HTTP client for tools (shares a connection pool); a default one if `None`.
    pub http_client: Option<reqwest::Client>,
    /// How keys the caller presses are grouped into one user turn.
    pub keypad: KeypadConfig,
    /// The longest the model may take to its first event, or between two
    /// events, before it counts as failed and the call ends with the error
    /// (a caller must never be left in silence by a hung provider).
    pub llm_timeout: Duration,
}

/// The `reason` of [`CallEvent::Ended`] after a provider failed.
pub const PROVIDER_FAILED: &str = "provider_failed";

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            system_prompt: String::new(),
            tools: ToolSet::default(),
            tool_limits: ToolLimits::default(),
            max_tool_rounds: 4,
            min_words_before_comma: 5,
            nominal_speech_per_char: Duration::from_millis(60),
            http_client: None,
            keypad: KeypadConfig::default(),
            llm_timeout: Duration::from_secs(15),
        }
    }
}

/// The models the loop talks to.
#[derive(Clone)]
pub struct Providers {
    /// The chat model.
    pub llm: Arc<dyn LlmProvider>,
    /// The voice.
    pub tts: Arc<dyn TtsProvider>,
}

/// A frame of agent audio for the transport, tagged with the reply it
/// belongs to (so the transport can count what it played of each reply and
/// drop the rest of an interrupted one).
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundFrame {
    /// The reply (one per user turn).
    pub reply: u64,
    /// The audio.
    pub frame: PcmFrame,
}

/// A committed user turn and its timing on the engine clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserTurn {
    /// The final transcript.
    pub text: String,
    /// When the user's speech began.
    pub speech_started_at: Option<Instant>,
    /// When the user's last voice sample was (the VAD's speech stop).
    pub speech_ended_at: Option<Instant>,
    /// When the final transcript arrived.
    pub transcript_final_at: Option<Instant>,
    /// How the text was obtained.
    pub source: SegmentSource,
}

impl UserTurn {
    /// A recognized turn with no timing information.
    pub fn text(text: &str) -> Self {
        UserTurn {
            text: text.to_owned(),
            speech_started_at: None,
            speech_ended_at: None,
            transcript_final_at: None,
            source: SegmentSource::Asr,
        }
    }
}

/// How much of the current reply the caller heard before barging in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Played {
    /// This much of the reply's audio was played out.
    Duration(Duration),
    /// This many characters of the reply's text (clauses joined by one space) were heard.
    Chars(usize),
}

enum Command {
    Status(CallStatus),
    Speculate(String),
    Commit(UserTurn),
    Discard,
    Interrupt(Option<Played>),
    Say(String),
    Resume,
    HangUp(EndedBy, String),
    Key(char),
    ProviderFailed(ProviderRole, String),
    Shutdown,
}

/// Controls a running [`AgentLoop`]. Commands are applied in the order sent;
/// after the call ended they are ignored.
#[derive(Debug)]
pub struct AgentHandle {
    commands: mpsc::UnboundedSender<Command>,
    task: JoinHandle<()>,
    clock: CallClock,
    shared: Arc<Mutex<Shared>>,
    tools_running: Arc<std::sync::atomic::AtomicU32>,
}

/// A cloneable handle that can only make the agent speak (for the tasks
/// that react to call events, such as greeting on pick-up).
#[derive(Debug, Clone)]
pub struct AgentSpeaker {
    commands: mpsc::UnboundedSender<Command>,
}

/// A cloneable handle for the caller's keypad: the transports hand it the
/// DTMF keys they receive (RFC 4733 events, a media-stream `dtmf` message,
/// in-band tones), the same way for every transport.
#[derive(Debug, Clone)]
pub struct AgentKeypad {
    commands: mpsc::UnboundedSender<Command>,
}

impl AgentKeypad {
    /// The caller pressed `key` (`0`-`9`, `*`, `#`, `A`-`D`; others are
    /// ignored) now, on the call's clock.
    pub fn press(&self, key: char) {
        let _ = self.commands.send(Command::Key(key));
    }
}

impl AgentSpeaker {
    /// Speaks `text` as the agent (as [`AgentHandle::say`]).
    pub fn say(&self, text: &str) {
        let _ = self.commands.send(Command::Say(text.to_owned()));
    }
}

impl AgentHandle {
    /// A handle that can only make the agent speak.
    pub fn speaker(&self) -> AgentSpeaker {
        AgentSpeaker {
            commands: self.commands.clone(),
        }
    }

    /// A handle that can only press keys (see [`AgentKeypad`]).
    pub fn keypad(&self) -> AgentKeypad {
        AgentKeypad {
            commands: self.commands.clone(),
        }
    }

    /// The transport's end of the call-control seam (see [`call_control`]):
    /// from now on the agent's `send_dtmf` asks the returned receiver.
    pub fn attach_call_control(&self) -> call_control::CallControlRequests {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.shared).call_control = Some(tx);
        rx
    }

    /// The caller pressed `key` now (as [`AgentKeypad::press`]).
    pub fn press_key(&self, key: char) {
        self.send(Command::Key(key));
    }

    /// The call's clock (time since the call started).
    pub fn clock(&self) -> CallClock {
        self.clock
    }

    fn send(&self, command: Command) {
        // A loop that already ended ignores further commands.
        let _ = self.commands.send(command);
    }

    /// Speaks `text` now as the agent (no model call): an idle prompt such
    /// as "Are you still there?". Interrupts a reply in progress.
    pub fn say(&self, text: &str) {
        self.send(Command::Say(text.to_owned()));
    }

    /// The last interruption was a false alarm (noise, a cough): speak what
    /// the caller did not hear of the interrupted reply. Only the audio
    /// already synthesized is resumed; the model is not asked again.
    pub fn resume(&self) {
        self.send(Command::Resume);
    }

    /// How many HTTP tools are running now. Lock-free, for the media tick.
    pub fn tools_running(&self) -> u32 {
        self.tools_running
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reports a call status change on the event stream.
    pub fn set_status(&self, status: CallStatus) {
        self.send(Command::Status(status));
    }

    /// Starts generating a reply to a stable interim transcript before the
    /// turn ends. Nothing is spoken or run until [`commit`](Self::commit).
    pub fn speculate(&self, interim_text: &str) {
        self.send(Command::Speculate(interim_text.to_owned()));
    }

    /// The user's turn ended: reply to it. Reuses the speculation if its
    /// text matches (case and punctuation aside) and the history has not
    /// changed since; otherwise starts afresh. A reply still playing is
    /// interrupted first (played time estimated from the clock).
    pub fn commit(&self, turn: UserTurn) {
        self.send(Command::Commit(turn));
    }

    /// Drops the speculation (the user kept talking, or it was a false start).
    pub fn discard(&self) {
        self.send(Command::Discard);
    }

    /// The caller barged in: stop the reply now, keep in the history only
    /// what was `played`. Tools already running still finish and are recorded.
    pub fn interrupt(&self, played: Played) {
        self.send(Command::Interrupt(Some(played)));
    }

    /// Ends the call from outside (the caller hung up, a limit was hit).
    pub fn hang_up(&self, by: EndedBy, reason: &str) {
        self.send(Command::HangUp(by, reason.to_owned()));
    }

    /// A provider outside the loop (the recognizer) failed for good: report
    /// it and end the call.
    pub fn provider_failed(&self, provider: ProviderRole, error: &str) {
        self.send(Command::ProviderFailed(provider, error.to_owned()));
    }

    /// The chat history as the model will see it next.
    pub fn history(&self) -> Vec<ChatMessage> {
        lock(&self.shared).history.clone()
    }

    /// Whether the loop has finished (the call ended).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the loop and waits until it and every task it started are gone.
    pub async fn shutdown(self) {
        let _ = self.commands.send(Command::Shutdown);
        let _ = self.task.await;
    }

    /// Waits until the call ends by itself (`end_call`, `hang_up`).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

struct ActiveTurn {
    future: Pin<Box<dyn Future<Output = TurnOutcome> + Send>>,
    user: UserTurn,
    committed_at: Instant,
    index: u64,
}

struct Speculation {
    normalized: String,
    history_version: u64,
    started_at: Instant,
    stream: TimedLlmStream,
}

/// Aborts a task when dropped (a discarded speculation stops at once).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum Step {
    Command(Option<Command>),
    TurnDone(TurnOutcome),
    KeypadTimeout,
}

/// One call's conversation, run by [`AgentLoop::spawn`] on its own task.
pub struct AgentLoop {
    providers: Providers,
    tools: Arc<ToolSet>,
    config: AgentConfig,
    runner: HttpToolRunner,
    events: EventSender,
    clock: CallClock,
    audio_out: mpsc::Sender<OutboundFrame>,
    shared: Arc<Mutex<Shared>>,
    commands: mpsc::UnboundedReceiver<Command>,
    turn: Option<ActiveTurn>,
    speculation: Option<Speculation>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    turns: u64,
    tools_running: Arc<std::sync::atomic::AtomicU32>,
    /// What the caller did not hear of the last interrupted reply.
    unplayed: Option<String>,
    /// Keys pressed since the last keypad entry ended.
    keypad: KeypadCollector,
}

impl AgentLoop {
    /// Starts a call's loop now (the call clock's zero), sending agent audio
    /// to `audio_out`. Returns its handle and the call's event stream.
    pub fn spawn(
        config: AgentConfig,
        providers: Providers,
        audio_out: mpsc::Sender<OutboundFrame>,
    ) -> (AgentHandle, mpsc::UnboundedReceiver<CallEvent>) {
        let clock = CallClock::start_now();
        let config_keypad = config.keypad;
        let (events, event_rx) = EventSender::channel(Instant::ZERO);
        let (command_tx, command_rx) = mpsc::unbounded_channel();
        let tools_running = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let shared = Arc::new(Mutex::new(Shared {
            history: vec![ChatMessage::System {
                content: config.system_prompt.clone(),
            }],
            ..Shared::default()
        }));
        let runner = HttpToolRunner::new(
            config.http_client.clone().unwrap_or_default(),
            config.tool_limits.max_response_bytes,
        );
        let agent = AgentLoop {
            providers,
            tools: Arc::new(config.tools.clone()),
            config,
            runner,
            events,
            clock,
            audio_out,
            shared: Arc::clone(&shared),
            commands: command_rx,
            turn: None,
            speculation: None,
            tracker: TaskTracker::new(),
            cancel: CancellationToken::new(),
            turns: 0,
            tools_running: Arc::clone(&tools_running),
            unplayed: None,
            keypad: KeypadCollector::new(config_keypad),
        };
        let task = tokio::spawn(agent.run());
        let handle = AgentHandle {
            commands: command_tx,
            task,
            clock,
            shared,
            tools_running,
        };
        (handle, event_rx)
    }

    async fn run(mut self) {
        loop {
            let step = {
                let commands = &mut self.commands;
                let turn = &mut self.turn;
                let turn_done = async {
                    match turn.as_mut() {
                        Some(active) => active.future.as_mut().await,
                        None => std::future::pending().await,
                    }
                };
                let keypad_deadline = self.keypad.deadline().map(|at| self.clock.to_tokio(at));
                let keypad_timeout = async {
                    match keypad_deadline {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    command = commands.recv() => Step::Command(command),
                    outcome = turn_done => Step::TurnDone(outcome),
                    () = keypad_timeout => Step::KeypadTimeout,
                }
            };
            let keep_going = match step {
                Step::Command(None) | Step::Command(Some(Command::Shutdown)) => false,
                Step::Command(Some(command)) => self.handle(command),
                Step::TurnDone(outcome) => self.finish_turn(outcome),
                Step::KeypadTimeout => {
                    if let Some(entry) = self.keypad.poll(self.clock.now()) {
                        self.commit_keypad(entry);
                    }
                    true
                }
            };
            if !keep_going {
                break;
            }
        }
        self.stop().await;
    }

    /// Applies a command; `false` when the call is over.
    fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Status(status) => {
                self.events.send(CallEvent::Status {
                    status,
                    at_ms: self.events.ms_since_start(self.clock.now()),
                });
            }
            Command::Speculate(text) => self.speculate(text),
            Command::Commit(user) => self.commit(user),
            Command::Discard => self.speculation = None,
            Command::Interrupt(played) => self.interrupt(played),
            Command::Say(text) => self.say(text),
            Command::Resume => {
                if let Some(rest) = self.unplayed.take() {
                    self.say(rest);
                }
            }
            Command::HangUp(by, reason) => {
                self.interrupt(None);
                self.end(by, &reason);
                return false;
            }
            Command::Key(key) => {
                if let Some(entry) = self.keypad.press(key, self.clock.now()) {
                    self.commit_keypad(entry);
                }
            }
            Command::ProviderFailed(provider, error) => {
                self.interrupt(None);
                self.fail(provider, error);
                return false;
            }
            Command::Shutdown => return false,
        }
        true
    }

    /// A finished keypad entry is a user turn like a spoken one: reported
    /// on the transcript (source `dtmf`) and answered by the model.
    fn commit_keypad(&mut self, entry: KeypadEntry) {
        self.speculation = None;
        self.commit(UserTurn {
            text: entry.as_user_text(),
            speech_started_at: Some(entry.first_at),
            speech_ended_at: Some(entry.last_at),
            transcript_final_at: Some(entry.last_at),
            source: SegmentSource::Dtmf,
        });
    }

    fn speculate(&mut self, text: String) {
        let normalized = confirm::normalize(&text);
        if self
            .speculation
            .as_ref()
            .is_some_and(|s| s.normalized == normalized)
        {
            return;
        }
        let (mut request, history_version) = {
            let shared = lock(&self.shared);
            (shared.history.clone(), shared.version)
        };
        request.push(ChatMessage::User { content: text });
        let request = crate::providers::LlmRequest {
            messages: request,
            tools: self.tools.schemas(),
        };
        let mut upstream = turn::timed(self.providers.llm.as_ref(), request, self.clock);
        let (tx, rx) = mpsc::unbounded_channel();
        // A task, so the model keeps streaming while the caller finishes.
        let task = self.tracker.spawn(async move {
            while let Some(item) = upstream.next().await {
                if tx.send(item).is_err() {
                    break;
                }
            }
        });
        let guard = AbortOnDrop(task);
        let stream = futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
            rx.recv().await.map(|item| (item, (rx, guard)))
        })
        .boxed();
        self.speculation = Some(Speculation {
            normalized,
            history_version,
            started_at: self.clock.now(),
            stream,
        });
    }

    fn commit(&mut self, user: UserTurn) {
        if self.turn.is_some() {
            self.interrupt(None);
        }
        // The caller went on to something else: nothing to resume.
        self.unplayed = None;
        let now = self.clock.now();
        let started = user.speech_started_at.unwrap_or(now);
        let ended = user.speech_ended_at.unwrap_or(now);
        self.events.send(CallEvent::TranscriptSegment {
            role: Role::User,
            text: user.text.clone(),
            started_at_ms: self.events.ms_since_start(started),
            ended_at_ms: self.events.ms_since_start(ended),
            duration_ms: duration_ms(ended - started),
            source: user.source,
            interrupted: false,
        });

        let speculation = self.speculation.take();
        let (prior_agent_text, reused) = {
            let mut shared = lock(&self.shared);
            let prior = previous_agent_text(&shared.history);
            let reused = speculation.filter(|s| {
                s.history_version == shared.version
                    && s.normalized == confirm::normalize(&user.text)
            });
            shared.history.push(ChatMessage::User {
                content: user.text.clone(),
            });
            shared.version += 1;
            shared.progress = TurnProgress::default();
            (prior, reused)
        };
        let (first, llm_started_at) = match reused {
            Some(s) => (s.stream, s.started_at),
            None => {
                let offer_tools = self.config.max_tool_rounds > 0 && !self.tools.is_empty();
                let request = turn::request_from(&self.shared, &self.tools, offer_tools);
                (
                    turn::timed(self.providers.llm.as_ref(), request, self.clock),
                    now,
                )
            }
        };
        self.begin_turn(user, first, llm_started_at, now, prior_agent_text);
    }

    /// Runs a reply whose first model stream is `first`.
    fn begin_turn(
        &mut self,
        user: UserTurn,
        first: turn::TimedLlmStream,
        llm_started_at: Instant,
        now: Instant,
        prior_agent_text: String,
    ) {
        let reply_id = self.turns;
        lock(&self.shared).progress.marks.llm_started_at = Some(llm_started_at);
        let ctx = TurnContext {
            shared: Arc::clone(&self.shared),
            llm: Arc::clone(&self.providers.llm),
            tts: Arc::clone(&self.providers.tts),
            tools: Arc::clone(&self.tools),
            runner: self.runner.clone(),
            limits: self.config.tool_limits,
            events: self.events.clone(),
            clock: self.clock,
            audio_out: self.audio_out.clone(),
            tracker: self.tracker.clone(),
            cancel: self.cancel.clone(),
            max_tool_rounds: self.config.max_tool_rounds,
            min_words_before_comma: self.config.min_words_before_comma,
            llm_timeout: self.config.llm_timeout,
            reply_id,
            tools_running: Arc::clone(&self.tools_running),
            user_text: user.text.clone(),
            prior_agent_text,
        };
        self.turn = Some(ActiveTurn {
            future: Box::pin(turn::run_turn(ctx, first)),
            user,
            committed_at: now,
            index: self.turns,
        });
        self.turns += 1;
    }

    /// Speaks `text` as the agent, with no model call and no user turn
    /// (idle prompts, resuming after a false interruption).
    fn say(&mut self, text: String) {
        if self.turn.is_some() {
            self.interrupt(None);
        }
        self.speculation = None;
        let now = self.clock.now();
        let prior_agent_text = {
            let mut shared = lock(&self.shared);
            shared.progress = TurnProgress::default();
            previous_agent_text(&shared.history)
        };
        let canned: turn::TimedLlmStream = futures::stream::iter([
            (now, Ok(crate::providers::LlmEvent::Token(text))),
            (now, Ok(crate::providers::LlmEvent::Done)),
        ])
        .boxed();
        let user = UserTurn {
            text: String::new(),
            speech_started_at: Some(now),
            speech_ended_at: Some(now),
            transcript_final_at: Some(now),
            source: SegmentSource::Asr,
        };
        self.begin_turn(user, canned, now, now, prior_agent_text);
    }

    /// Stops the current reply; `played: None` estimates it from the clock
    /// (real-time playout since the first frame).
    fn interrupt(&mut self, played: Option<Played>) {
        let Some(active) = self.turn.take() else {
            return;
        };
        // Dropping the turn cancels the LLM and TTS streams and the pushes.
        drop(active.future);
        let now = self.clock.now();
        let (text, heard, first_audio_at, marks, unplayed) = {
            let mut shared = lock(&self.shared);
            let progress = std::mem::take(&mut shared.progress);
            let clauses: Vec<ClauseAudio> = progress
                .clauses
                .iter()
                .map(|c| ClauseAudio {
                    text: c.text.clone(),
                    pushed: c.meter.pushed(),
                    complete: c.meter.complete(),
                })
                .collect();
            let pushed: Duration = clauses.iter().map(|c| c.pushed).sum();
            let first_audio_at = progress.marks.first_audio_at;
            let (parts, heard) = match played {
                Some(Played::Chars(chars)) => {
                    let parts = parts_by_chars(&clauses, chars);
                    (parts, None)
                }
                Some(Played::Duration(d)) => {
                    let per_char =
                        played::pace(&clauses).unwrap_or(self.config.nominal_speech_per_char);
                    (
                        played::played_parts(&clauses, d, per_char),
                        Some(d.min(pushed)),
                    )
                }
                None => {
                    let d = first_audio_at.map_or(Duration::ZERO, |at| now - at);
                    let per_char =
                        played::pace(&clauses).unwrap_or(self.config.nominal_speech_per_char);
                    (
                        played::played_parts(&clauses, d, per_char),
                        Some(d.min(pushed)),
                    )
                }
            };
            let unplayed = clauses
                .iter()
                .zip(&parts)
                .filter_map(|(clause, part)| {
                    let rest = clause
                        .text
                        .strip_prefix(part.as_str())
                        .unwrap_or(&clause.text)
                        .trim();
                    (!rest.is_empty()).then_some(rest)
                })
                .collect::<Vec<_>>()
                .join(" ");
            // Rewrite each round's assistant message to what was heard.
            let rounds = progress.round_messages.len();
            let round_text = |round: usize| {
                progress
                    .clauses
                    .iter()
                    .zip(&parts)
                    .filter(|(c, p)| c.round == round && !p.is_empty())
                    .map(|(_, p)| p.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            for (round, index) in progress.round_messages.iter().enumerate() {
                if let Some(ChatMessage::Assistant { content, .. }) =
                    index.and_then(|i| shared.history.get_mut(i))
                {
                    *content = round_text(round);
                }
            }
            let unfinished = round_text(rounds);
            if !unfinished.is_empty() {
                shared.history.push(ChatMessage::Assistant {
                    content: unfinished,
                    tool_calls: Vec::new(),
                });
            }
            shared.version += 1;
            let text = parts
                .iter()
                .filter(|p| !p.is_empty())
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(" ");
            (text, heard, first_audio_at, progress.marks, unplayed)
        };
        self.unplayed = (!unplayed.is_empty()).then_some(unplayed);
        if let Some(started) = first_audio_at {
            let heard = heard.unwrap_or_else(|| now - started);
            self.events.send(CallEvent::TranscriptSegment {
                role: Role::Agent,
                text,
                started_at_ms: self.events.ms_since_start(started),
                ended_at_ms: self.events.ms_since_start(started + heard),
                duration_ms: duration_ms(heard),
                source: SegmentSource::Tts,
                interrupted: true,
            });
        }
        self.emit_metrics(&active.user, active.committed_at, active.index, &marks);
    }

    /// A turn ran to its end; `false` when the agent ended the call.
    fn finish_turn(&mut self, outcome: TurnOutcome) -> bool {
        let Some(active) = self.turn.take() else {
            return true;
        };
        let (text, total, marks) = {
            let shared = lock(&self.shared);
            let progress = &shared.progress;
            let text = progress
                .clauses
                .iter()
                .map(|c| c.text.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            let total: Duration = progress.clauses.iter().map(|c| c.meter.pushed()).sum();
            (text, total, progress.marks)
        };
        if let Some(started) = marks.first_audio_at {
            // Playout runs in real time from the first frame.
            self.events.send(CallEvent::TranscriptSegment {
                role: Role::Agent,
                text,
                started_at_ms: self.events.ms_since_start(started),
                ended_at_ms: self.events.ms_since_start(started + total),
                duration_ms: duration_ms(total),
                source: SegmentSource::Tts,
                interrupted: false,
            });
        }
        self.emit_metrics(&active.user, active.committed_at, active.index, &marks);
        if let Some((provider, error)) = outcome.failure {
            self.fail(provider, error);
            return false;
        }
        if outcome.end_call {
            self.end(EndedBy::Agent, "end_call");
            return false;
        }
        true
    }

    fn emit_metrics(
        &self,
        user: &UserTurn,
        committed_at: Instant,
        turn: u64,
        marks: &turn::TurnMarks,
    ) {
        // A canned reply (idle prompt, resume) answers no user turn.
        if user.text.is_empty() {
            return;
        }
        let metrics = turn_metrics(user, committed_at, marks);
        self.events.send(CallEvent::TurnMetrics { turn, metrics });
    }

    /// Reports a provider's failure and ends the call.
    fn fail(&self, provider: ProviderRole, error: String) {
        self.events.send(CallEvent::ProviderFailed {
            provider,
            error,
            at_ms: self.events.ms_since_start(self.clock.now()),
        });
        self.end(EndedBy::System, PROVIDER_FAILED);
    }

    fn end(&self, by: EndedBy, reason: &str) {
        let at_ms = self.events.ms_since_start(self.clock.now());
        self.events.send(CallEvent::Status {
            status: CallStatus::Ended,
            at_ms,
        });
        self.events.send(CallEvent::Ended {
            by,
            reason: reason.to_owned(),
            at_ms,
        });
    }

    /// Cancels everything and waits until every task the loop started ended.
    async fn stop(&mut self) {
        self.turn = None;
        self.speculation = None;
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// The agent's text since the last user message (what it said last turn).
fn previous_agent_text(history: &[ChatMessage]) -> String {
    let last_user = history
        .iter()
        .rposition(|m| matches!(m, ChatMessage::User { .. }))
        .map_or(0, |i| i + 1);
    history[last_user..]
        .iter()
        .filter_map(|m| match m {
            ChatMessage::Assistant { content, .. } if !content.is_empty() => Some(content.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The heard part of each clause when `chars` characters of the reply text
/// (clauses joined by one space) were heard.
fn parts_by_chars(clauses: &[ClauseAudio], chars: usize) -> Vec<String> {
    let mut left = chars;
    clauses
        .iter()
        .map(|c| {
            let part = played::cut_at_word(&c.text, left).to_owned();
            left = left.saturating_sub(c.text.chars().count() + 1);
            part
        })
        .collect()
}

/// The turn's latencies from its milestones.
fn turn_metrics(user: &UserTurn, committed_at: Instant, marks: &turn::TurnMarks) -> TurnMetrics {
    let since = |later: Option<Instant>, earlier: Option<Instant>| Some(later? - earlier?);
    let end_of_utterance_delay = since(Some(committed_at), user.speech_ended_at);
    let llm_first_clause = since(marks.first_clause_at, marks.llm_started_at);
    let tts_ttfb = since(marks.tts_first_frame_at, marks.tts_requested_at);
    let voice_to_voice = since(marks.first_audio_at, user.speech_ended_at);
    // The model's own time to the first clause counts from when it could
    // start at the earliest: a speculation started before the commit.
    let llm_after_commit = marks
        .first_clause_at
        .zip(marks.llm_started_at)
        .map(|(clause, started)| clause - started.max(committed_at));
    let engine_overhead = (|| {
        Some(
            voice_to_voice?
                .saturating_sub(end_of_utterance_delay?)
                .saturating_sub(llm_after_commit?)
                .saturating_sub(tts_ttfb?),
        )
    })();
    TurnMetrics {
        end_of_utterance_delay,
        transcription_delay: since(user.transcript_final_at, user.speech_ended_at),
        llm_ttft: since(marks.first_token_at, marks.llm_started_at),
        llm_first_clause,
        tts_ttfb,
        voice_to_voice,
        engine_overhead,
    }
}
