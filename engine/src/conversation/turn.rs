//! One agent turn: the model streams, clauses go to TTS while tokens still
//! arrive, audio goes to the transport, tools run between model rounds.
//!
//! The turn is one future. Dropping it (an interruption) cancels the LLM and
//! TTS streams and the audio pushes at once. Tools run as separate tracked
//! tasks, so a tool that was already running still finishes and its result
//! still lands in the history and on the event stream.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::call_control::{CallControl, CallControlReply, DigitsRequest, TransferRequest};
use super::clauses::ClauseSplitter;
use super::{CallClock, OutboundFrame};
use crate::clock::Instant;
use crate::events::{CallEvent, EventSender, ProviderRole, ToolOutcome, duration_ms};
use crate::providers::{
    ChatMessage, LlmEvent, LlmProvider, LlmRequest, ProviderError, ToolCallRequest, TtsProvider,
};
use crate::tools::http::HttpToolRunner;
use crate::tools::{
    END_CALL, SEND_DTMF, TRANSFER_CALL, ToolDefinition, ToolLimits, ToolPolicy, ToolSet, confirm,
};

/// LLM output stamped with the engine time it arrived.
pub(super) type TimedLlmStream = BoxStream<'static, (Instant, Result<LlmEvent, ProviderError>)>;

/// Locks shared call state; a panic elsewhere must not take the call down.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// State shared by the loop, the running turn and tool tasks.
#[derive(Debug, Default)]
pub(super) struct Shared {
    /// The chat history (system prompt first).
    pub history: Vec<ChatMessage>,
    /// Bumped on every history change (a speculation is only reused if the
    /// history it was made from is unchanged).
    pub version: u64,
    /// The current turn's progress.
    pub progress: TurnProgress,
    /// Where call-control tools send their requests (the transport attached).
    pub call_control: Option<mpsc::UnboundedSender<CallControl>>,
}

impl Shared {
    fn set_tool_result(&mut self, call_id: &str, content: String) {
        for message in self.history.iter_mut().rev() {
            if let ChatMessage::Tool {
                tool_call_id,
                content: slot,
                ..
            } = message
                && tool_call_id == call_id
            {
                *slot = content;
                self.version += 1;
                return;
            }
        }
    }
}

/// Audio handed to the transport for one clause; written per frame without a lock.
#[derive(Debug, Default)]
pub(super) struct ClauseMeter {
    pushed_us: AtomicU64,
    complete: AtomicBool,
}

impl ClauseMeter {
    /// The audio pushed so far.
    pub fn pushed(&self) -> Duration {
        Duration::from_micros(self.pushed_us.load(Ordering::Relaxed))
    }

    /// Whether all of the clause's audio was pushed.
    pub fn complete(&self) -> bool {
        self.complete.load(Ordering::Relaxed)
    }
}

/// A clause the speaker took on.
#[derive(Debug)]
pub(super) struct SpokenClause {
    /// The model round it came from.
    pub round: usize,
    /// The text.
    pub text: String,
    /// Its audio so far.
    pub meter: Arc<ClauseMeter>,
}

/// Engine times of the turn's milestones.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct TurnMarks {
    pub llm_started_at: Option<Instant>,
    pub first_token_at: Option<Instant>,
    pub first_clause_at: Option<Instant>,
    pub tts_requested_at: Option<Instant>,
    pub tts_first_frame_at: Option<Instant>,
    pub first_audio_at: Option<Instant>,
}

/// What the current turn has done so far.
#[derive(Debug, Default)]
pub(super) struct TurnProgress {
    /// Clauses in speaking order.
    pub clauses: Vec<SpokenClause>,
    /// Per model round, the history index of its assistant message.
    pub round_messages: Vec<Option<usize>>,
    /// Milestones.
    pub marks: TurnMarks,
    /// A provider failed during the turn (the first failure wins).
    pub failure: Option<(ProviderRole, String)>,
}

/// How a turn ended on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct TurnOutcome {
    /// The agent called `end_call` and its last words have been played.
    pub end_call: bool,
    /// A provider failed: the call cannot go on.
    pub failure: Option<(ProviderRole, String)>,
}

/// Everything a turn needs.
pub(super) struct TurnContext {
    pub shared: Arc<Mutex<Shared>>,
    pub llm: Arc<dyn LlmProvider>,
    pub tts: Arc<dyn TtsProvider>,
    pub tools: Arc<ToolSet>,
    pub runner: HttpToolRunner,
    pub limits: ToolLimits,
    pub events: EventSender,
    pub clock: CallClock,
    pub audio_out: mpsc::Sender<OutboundFrame>,
    pub tracker: TaskTracker,
    pub cancel: CancellationToken,
    pub max_tool_rounds: usize,
    pub min_words_before_comma: usize,
    /// The longest wait for the model's next event (its first, or the next
    /// one mid-stream) before it counts as failed.
    pub llm_timeout: Duration,
    pub reply_id: u64,
    /// HTTP tools running now (the media side mutes the caller during tools
    /// when the agent asks for it).
    pub tools_running: Arc<std::sync::atomic::AtomicU32>,
    pub user_text: String,
    pub prior_agent_text: String,
}

/// Builds the request from the current history.
pub(super) fn request_from(
    shared: &Mutex<Shared>,
    tools: &ToolSet,
    offer_tools: bool,
) -> LlmRequest {
    LlmRequest {
        messages: lock(shared).history.clone(),
        tools: if offer_tools {
            tools.schemas()
        } else {
            Vec::new()
        },
    }
}

/// A live LLM stream with arrival times.
pub(super) fn timed(
    llm: &dyn LlmProvider,
    request: LlmRequest,
    clock: CallClock,
) -> TimedLlmStream {
    llm.stream_chat(request)
        .map(move |event| (clock.now(), event))
        .boxed()
}

/// Runs one turn to its end.
pub(super) async fn run_turn(ctx: TurnContext, first: TimedLlmStream) -> TurnOutcome {
    let (clause_tx, clause_rx) = mpsc::unbounded_channel();
    let (end_call, ()) = tokio::join!(think(&ctx, first, clause_tx), speak(&ctx, clause_rx));
    // The turn lasts until its audio has played out, not just until it was
    // handed to the transport (whose queue may hold seconds): a barge-in
    // before then must find the turn and cut the history to what was heard,
    // and `end_call` must let the last clause play.
    let playout_end = {
        let shared = lock(&ctx.shared);
        let total: Duration = shared
            .progress
            .clauses
            .iter()
            .map(|c| c.meter.pushed())
            .sum();
        shared.progress.marks.first_audio_at.map(|at| at + total)
    };
    if let Some(end) = playout_end {
        tokio::time::sleep_until(ctx.clock.to_tokio(end)).await;
    }
    let failure = lock(&ctx.shared).progress.failure.clone();
    TurnOutcome { end_call, failure }
}

/// Records that `provider` failed during this turn.
fn fail(ctx: &TurnContext, provider: ProviderRole, error: String) {
    lock(&ctx.shared)
        .progress
        .failure
        .get_or_insert((provider, error));
}

/// The model side: rounds of LLM streaming and tool calls. Returns whether
/// the agent ended the call.
async fn think(
    ctx: &TurnContext,
    first: TimedLlmStream,
    clause_tx: mpsc::UnboundedSender<(usize, String)>,
) -> bool {
    let mut next_stream = Some(first);
    let mut write_used = false;
    let mut clauses = Vec::new();
    for round in 0..=ctx.max_tool_rounds {
        let offer_tools = round < ctx.max_tool_rounds && !ctx.tools.is_empty();
        let mut stream = match next_stream.take() {
            Some(stream) => stream,
            None => timed(
                ctx.llm.as_ref(),
                request_from(&ctx.shared, &ctx.tools, offer_tools),
                ctx.clock,
            ),
        };
        let mut splitter = ClauseSplitter::new(ctx.min_words_before_comma);
        let mut text = String::new();
        let mut calls: Vec<ToolCallRequest> = Vec::new();
        let mut failed = false;
        loop {
            let (at, event) = match tokio::time::timeout(ctx.llm_timeout, stream.next()).await {
                Ok(Some(next)) => next,
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    let waited = ctx.llm_timeout.as_secs_f32();
                    fail(
                        ctx,
                        ProviderRole::Llm,
                        format!("no answer within {waited:.1} s"),
                    );
                    break;
                }
            };
            match event {
                Ok(LlmEvent::Token(token)) => {
                    mark(ctx, |m| m.first_token_at.get_or_insert(at));
                    text.push_str(&token);
                    splitter.push(&token, &mut clauses);
                }
                Ok(LlmEvent::ToolCall(call)) => {
                    mark(ctx, |m| m.first_token_at.get_or_insert(at));
                    calls.push(call);
                }
                Ok(LlmEvent::Done) => break,
                // What it said so far is still spoken; then the call ends.
                Err(error) => {
                    failed = true;
                    fail(ctx, ProviderRole::Llm, error.to_string());
                    break;
                }
            }
            send_clauses(ctx, round, &mut clauses, &clause_tx);
        }
        drop(stream);
        clauses.extend(splitter.finish());
        send_clauses(ctx, round, &mut clauses, &clause_tx);
        if !offer_tools || failed {
            // Tools were not offered this round (a call anyway is not run),
            // or the model failed mid-answer (its calls may be cut off).
            calls.clear();
        }

        let text = text.trim().to_owned();
        {
            let mut shared = lock(&ctx.shared);
            let index = if text.is_empty() && calls.is_empty() {
                None
            } else {
                let index = shared.history.len();
                shared.history.push(ChatMessage::Assistant {
                    content: text,
                    tool_calls: calls.clone(),
                });
                // Placeholders keep each result right after its call, even
                // if it arrives after an interruption.
                for call in &calls {
                    shared.history.push(ChatMessage::Tool {
                        tool_call_id: call.id.clone(),
                        name: call.name.clone(),
                        content: json!({"status": "pending"}).to_string(),
                    });
                }
                shared.version += 1;
                Some(index)
            };
            shared.progress.round_messages.push(index);
        }
        if calls.is_empty() {
            return false;
        }
        let mut waits = Vec::new();
        let mut end_call = false;
        for call in calls {
            match run_tool(ctx, call, &mut write_used) {
                ToolStart::Done { ends_call } => end_call |= ends_call,
                ToolStart::Running(wait) => waits.push(wait),
            }
        }
        futures::future::join_all(waits).await;
        if end_call {
            return true;
        }
    }
    false
}

fn mark(ctx: &TurnContext, f: impl FnOnce(&mut TurnMarks) -> &mut Instant) {
    f(&mut lock(&ctx.shared).progress.marks);
}

fn send_clauses(
    ctx: &TurnContext,
    round: usize,
    clauses: &mut Vec<String>,
    clause_tx: &mpsc::UnboundedSender<(usize, String)>,
) {
    if clauses.is_empty() {
        return;
    }
    let now = ctx.clock.now();
    mark(ctx, |m| m.first_clause_at.get_or_insert(now));
    for clause in clauses.drain(..) {
        // The speaker only goes away with the whole turn.
        let _ = clause_tx.send((round, clause));
    }
}

enum ToolStart {
    Done { ends_call: bool },
    Running(oneshot::Receiver<()>),
}

/// Starts one tool call (or answers it at once: unknown tool, bad
/// arguments, confirmation required, `end_call`).
fn run_tool(ctx: &TurnContext, call: ToolCallRequest, write_used: &mut bool) -> ToolStart {
    let parsed: Result<serde_json::Value, _> = serde_json::from_str(&call.arguments_json);
    ctx.events.send(CallEvent::ToolInvocation {
        id: call.id.clone(),
        name: call.name.clone(),
        arguments: parsed.as_ref().map_or_else(
            |_| serde_json::Value::String(call.arguments_json.clone()),
            Clone::clone,
        ),
        at_ms: ctx.events.ms_since_start(ctx.clock.now()),
    });
    let immediate = |outcome: ToolOutcome, ends_call: bool| {
        record_tool_result(&ctx.shared, &ctx.events, &call, outcome, Duration::ZERO);
        ToolStart::Done { ends_call }
    };
    let Some(tool) = ctx.tools.get(&call.name) else {
        return immediate(
            ToolOutcome::Error(format!("unknown tool {:?}", call.name)),
            false,
        );
    };
    let arguments = match parsed {
        Ok(arguments) => arguments,
        Err(e) => {
            return immediate(
                ToolOutcome::Error(format!("the arguments are not valid JSON: {e}")),
                false,
            );
        }
    };
    if tool.policy() == ToolPolicy::ConfirmFirstWrite {
        if *write_used || !confirm::write_confirmed(&ctx.prior_agent_text, &ctx.user_text) {
            let envelope = json!({
                "status": "confirmation_required",
                "tool": call.name,
                "arguments": arguments,
                "message": "Not executed. Read the details back to the caller, ask them to confirm, and call the tool again only after a clear yes.",
            });
            return immediate(ToolOutcome::Result(envelope), false);
        }
        *write_used = true;
    }
    let http = match tool {
        ToolDefinition::Builtin(builtin) if builtin.kind() == END_CALL => {
            return immediate(ToolOutcome::Result(json!({"status": "ending_call"})), true);
        }
        ToolDefinition::Builtin(builtin) if builtin.kind() == SEND_DTMF => {
            let (request, playing) = match send_dtmf_request(&arguments) {
                Ok(request) => request,
                Err(error) => return immediate(ToolOutcome::Error(error), false),
            };
            // Long strings take longer than the usual built-in deadline to play.
            let deadline = ctx
                .limits
                .timeout_for(tool)
                .max(playing + Duration::from_secs(2));
            return run_call_control(ctx, call, deadline, "send keypad digits", request);
        }
        ToolDefinition::Builtin(builtin) if builtin.kind() == TRANSFER_CALL => {
            let destination = match crate::tools::transfer::pick(builtin, &arguments) {
                Ok(destination) => destination,
                Err(error) => return immediate(ToolOutcome::Error(error), false),
            };
            let request =
                move |reply| CallControl::Transfer(TransferRequest { destination, reply });
            // The far end rings the target before it says how it went.
            return run_call_control(ctx, call, TRANSFER_WAIT, "transfer the call", request);
        }
        ToolDefinition::Builtin(builtin) => {
            return immediate(
                ToolOutcome::Error(format!("built-in {:?} is not available", builtin.kind())),
                false,
            );
        }
        ToolDefinition::Http(http) => http.clone(),
    };
    let deadline = ctx.limits.timeout_for(tool);
    let runner = ctx.runner.clone();
    let work = async move {
        runner
            .call(&http, &arguments)
            .await
            .map_err(|e| e.to_string())
    };
    spawn_tool(ctx, call, deadline, "the tool did not answer", work)
}

/// Runs a tool's `work` on the call's task tracker until it answers, the
/// `deadline` passes (`late` says so) or the call ends, and records the
/// outcome; the turn waits on the returned receiver.
fn spawn_tool(
    ctx: &TurnContext,
    call: ToolCallRequest,
    deadline: Duration,
    late: &'static str,
    work: impl Future<Output = Result<serde_json::Value, String>> + Send + 'static,
) -> ToolStart {
    let (done_tx, done_rx) = oneshot::channel();
    let shared = Arc::clone(&ctx.shared);
    let events = ctx.events.clone();
    let cancel = ctx.cancel.clone();
    let clock = ctx.clock;
    let running = ToolRunningGuard::enter(Arc::clone(&ctx.tools_running));
    ctx.tracker.spawn(async move {
        let _running = running;
        let started = clock.now();
        let outcome = tokio::select! {
            () = cancel.cancelled() => ToolOutcome::Error("the call ended before the tool answered".into()),
            result = tokio::time::timeout(deadline, work) => match result {
                Err(_) => ToolOutcome::Error(format!("{late} within {} ms", deadline.as_millis())),
                Ok(Err(error)) => ToolOutcome::Error(error),
                Ok(Ok(value)) => ToolOutcome::Result(value),
            },
        };
        record_tool_result(&shared, &events, &call, outcome, clock.now() - started);
        // The turn may have been interrupted; the result is recorded anyway.
        let _ = done_tx.send(());
    });
    ToolStart::Running(done_rx)
}

/// How long `transfer_call` waits for the far end: the REFER's own
/// retransmissions (up to 32 s) and then the final NOTIFY.
const TRANSFER_WAIT: Duration =
    Duration::from_secs(crate::transport::sip::refer::FINAL_NOTIFY_WAIT.as_secs() + 35);

/// The `send_dtmf` request for the model's arguments, or why there is none.
/// With it, how long the digits take to play.
fn send_dtmf_request(
    arguments: &serde_json::Value,
) -> Result<(impl FnOnce(CallControlReply) -> CallControl, Duration), String> {
    let text = arguments
        .get("digits")
        .and_then(serde_json::Value::as_str)
        .ok_or("send_dtmf needs a \"digits\" string argument")?
        .to_owned();
    let digits = crate::transport::rtp_events::parse_digits(&text).map_err(|e| e.to_string())?;
    let playing = crate::transport::rtp_events::EventTiming::default().duration_of(&digits);
    let request = move |reply| {
        CallControl::SendDigits(DigitsRequest {
            digits,
            text,
            reply,
        })
    };
    Ok((request, playing))
}

/// Sends a call-control request to the transport and records its answer
/// (or why there is none) as the tool's result.
fn run_call_control(
    ctx: &TurnContext,
    call: ToolCallRequest,
    deadline: Duration,
    what: &str,
    request: impl FnOnce(CallControlReply) -> CallControl,
) -> ToolStart {
    let (reply_tx, reply_rx) = oneshot::channel();
    let sent = lock(&ctx.shared)
        .call_control
        .as_ref()
        .map(|control| control.send(request(reply_tx)).is_ok());
    let unavailable = match sent {
        None => Some(format!("this call's connection cannot {what}")),
        Some(false) => Some("the call is over".to_owned()),
        Some(true) => None,
    };
    if let Some(error) = unavailable {
        record_tool_result(
            &ctx.shared,
            &ctx.events,
            &call,
            ToolOutcome::Error(error),
            Duration::ZERO,
        );
        return ToolStart::Done { ends_call: false };
    }
    let work = async move {
        reply_rx
            .await
            .unwrap_or_else(|_| Err("the call ended before the request was done".into()))
    };
    spawn_tool(ctx, call, deadline, "the call did not answer", work)
}

/// Counts a running tool until dropped (also when its task is aborted).
struct ToolRunningGuard(Arc<std::sync::atomic::AtomicU32>);

impl ToolRunningGuard {
    fn enter(counter: Arc<std::sync::atomic::AtomicU32>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        ToolRunningGuard(counter)
    }
}

impl Drop for ToolRunningGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Puts a tool's outcome into the history (what the model sees) and on the event stream.
fn record_tool_result(
    shared: &Mutex<Shared>,
    events: &EventSender,
    call: &ToolCallRequest,
    outcome: ToolOutcome,
    took: Duration,
) {
    let content = match &outcome {
        ToolOutcome::Result(value) => value.to_string(),
        ToolOutcome::Error(error) => json!({ "error": error }).to_string(),
    };
    lock(shared).set_tool_result(&call.id, content);
    events.send(CallEvent::ToolResult {
        id: call.id.clone(),
        name: call.name.clone(),
        outcome,
        duration_ms: duration_ms(took),
    });
}

/// What the synthesis stage hands to the pushing stage.
enum Voiced {
    Frame(Arc<ClauseMeter>, crate::codecs::PcmFrame),
    ClauseEnd(Arc<ClauseMeter>),
}

/// The voice side: TTS per clause in order, running ahead of playout (so
/// the next clause is ready before the current one has played), and a
/// pusher that hands frames to the transport at the pace it drains them.
async fn speak(ctx: &TurnContext, clause_rx: mpsc::UnboundedReceiver<(usize, String)>) {
    let (voiced_tx, voiced_rx) = mpsc::unbounded_channel();
    tokio::join!(synthesize(ctx, clause_rx, voiced_tx), push(ctx, voiced_rx));
}

async fn synthesize(
    ctx: &TurnContext,
    mut clause_rx: mpsc::UnboundedReceiver<(usize, String)>,
    voiced_tx: mpsc::UnboundedSender<Voiced>,
) {
    let mut first_frame_seen = false;
    while let Some((round, text)) = clause_rx.recv().await {
        let meter = Arc::new(ClauseMeter::default());
        {
            let now = ctx.clock.now();
            let mut shared = lock(&ctx.shared);
            shared.progress.marks.tts_requested_at.get_or_insert(now);
            shared.progress.clauses.push(SpokenClause {
                round,
                text: text.clone(),
                meter: Arc::clone(&meter),
            });
        }
        let mut audio = ctx.tts.synthesize(&text);
        while let Some(frame) = audio.next().await {
            let frame = match frame {
                Ok(frame) => frame,
                Err(error) => {
                    // The caller would hear nothing more: stop the turn's
                    // voice and let the call end with the error.
                    fail(ctx, ProviderRole::Tts, error.to_string());
                    let _ = voiced_tx.send(Voiced::ClauseEnd(meter));
                    return;
                }
            };
            if !first_frame_seen {
                first_frame_seen = true;
                let now = ctx.clock.now();
                mark(ctx, |m| m.tts_first_frame_at.get_or_insert(now));
            }
            // The pusher only goes away with the whole turn.
            let _ = voiced_tx.send(Voiced::Frame(Arc::clone(&meter), frame));
        }
        let _ = voiced_tx.send(Voiced::ClauseEnd(meter));
    }
}

async fn push(ctx: &TurnContext, mut voiced_rx: mpsc::UnboundedReceiver<Voiced>) {
    let mut first_audio_seen = false;
    while let Some(voiced) = voiced_rx.recv().await {
        let (meter, frame) = match voiced {
            Voiced::Frame(meter, frame) => (meter, frame),
            Voiced::ClauseEnd(meter) => {
                meter.complete.store(true, Ordering::Relaxed);
                continue;
            }
        };
        let length = frame.duration();
        let out = OutboundFrame {
            reply: ctx.reply_id,
            frame,
        };
        if ctx.audio_out.send(out).await.is_err() {
            // The transport is gone; nothing more can be played.
            return;
        }
        meter.pushed_us.fetch_add(
            u64::try_from(length.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if !first_audio_seen {
            first_audio_seen = true;
            let now = ctx.clock.now();
            mark(ctx, |m| m.first_audio_at.get_or_insert(now));
        }
    }
}
