//! The engine's turn-latency and capacity benchmark, in real time.
//!
//! N simulated callers each play fixture utterances (G.711 mu-law, one
//! 160-byte packet per 20 ms) into two media worker threads (one per core),
//! each owning a `MediaWorker` that ticks its calls every 20 ms on an
//! absolute schedule: jitter buffer, decode, resample, batched Silero VAD,
//! gate, turn machine, optionally Smart Turn (`EotPool`), paced agent audio
//! out. Agent loops with scripted ASR, LLM and TTS run on a tokio runtime.
//! A packet sink records the real send time of every agent packet.
//!
//! Each configuration runs in a child process of its own (`--child`), so
//! its memory and threads start clean. See `bench/README.md` for what each
//! figure means; `--help` for the flags.

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant as StdInstant};

use callingbox_bench::fixtures::{Clip, load_clips};
use callingbox_bench::paced_llm::PacedLlm;
use callingbox_bench::procfs::{
    ThreadSchedstat, cpu_seconds_by_thread_name, load_average, rss_bytes, thread_ids_named,
};
use callingbox_bench::stats::{Histogram, Samples, Summary};
use callingbox_engine::audio::OutboundPacket;
use callingbox_engine::clock::Instant;
use callingbox_engine::codecs::{G711Law, SampleRate};
use callingbox_engine::conversation::{AgentConfig, AgentLoop, Providers};
use callingbox_engine::events::{CallEvent, TurnMetrics};
use callingbox_engine::providers::AsrProvider;
use callingbox_engine::providers::scripted::{ScriptedAsr, ScriptedTts, TtsLatency};
use callingbox_engine::session::{
    CallKey, CallMediaConfig, ConversationLink, EotPool, MediaEvent, MediaWorker, PacketSink,
};
use callingbox_engine::vad::VadBatch;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const TICK: Duration = Duration::from_millis(20);
/// One media worker thread per core of the 2-core machine.
const WORKERS: usize = 2;
/// Ticks between the last call added and the start of the measurement.
const SETTLE_TICKS: u64 = 25;
/// A reply that has not started this long after the caller stopped is given up on.
const REPLY_TIMEOUT_TICKS: u64 = 400;
/// The caller barges in this long after the agent's reply started.
const BARGE_AFTER_TICKS: u64 = 50;
/// The agent counts as finished after this many ticks without a packet.
const AGENT_QUIET_TICKS: u64 = 10;
/// A tick that starts more than this after its deadline is late.
const LATE_TICK: Duration = TICK;
/// Pacing target: p99 of the deviation from the 20 ms grid.
const JITTER_TARGET_MS: f64 = 5.0;
/// Smart Turn requests per inference.
const EOT_MAX_BATCH: usize = 8;

// Provider latencies: the best published figures (see the README).
const ASR_FINAL_DELAY: Duration = Duration::from_millis(150);
const ASR_INTERIM_PER_WORD: Duration = Duration::from_millis(200);
const LLM_TTFT: Duration = Duration::from_millis(250);
const LLM_TOKENS_PER_SECOND: u32 = 50;
const TTS_TTFB: Duration = Duration::from_millis(100);
const TTS_REAL_TIME_FACTOR: f64 = 0.1;

/// The statements callers make, one turn each (single sentences without
/// long pauses, so each is exactly one user turn).
const STATEMENTS: [&str; 7] = [
    "statement_book_table",
    "statement_billing",
    "statement_reschedule_delivery",
    "statement_double_charge",
    "statement_cancel_appointment",
    "question_closing_time",
    "question_availability",
];
const INTERRUPTION: &str = "interruption_wait_stop";
const SHORT_REPLIES: [&str; 4] = [
    "Sure. I can help you with that right away.",
    "Of course. Let me look that up for you.",
    "Got it. I have made a note of that.",
    "Okay. Is there anything else I can do?",
];
const LONG_REPLY: &str = "Sure, I can book that for you. Let me check what we have for four people tomorrow evening, \
    we have a table at seven by the window, and another one at seven thirty near the bar, which would you prefer?";
const AFTER_INTERRUPTION_REPLY: &str = "Sorry. Go ahead.";
/// Turns in each caller's script (more than a minute's worth).
const SCRIPT_ITEMS: usize = 48;

use callingbox_bench::trial::BoxError;

// ------------------------------------------------------------------ config

/// One configuration, run in one child process.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrialConfig {
    calls: usize,
    eot: bool,
    duration_s: f64,
    agent_threads: usize,
    /// Every n-th statement is interrupted ("Wait, stop.") one second into
    /// the agent's reply; 0: never.
    barge_every: usize,
    /// Print this call's media events and caller steps to stderr.
    #[serde(default)]
    trace_call: Option<usize>,
    /// At most this many calls per `MediaWorker` (several per thread), so
    /// each VAD batch stays small; `None`: one `MediaWorker` per thread.
    #[serde(default)]
    shard_size: Option<usize>,
}

// ------------------------------------------------------------------ script

#[derive(Debug, Clone, Copy)]
struct Item {
    clip: usize,
    barge: bool,
}

/// A caller's script: what it says, and the providers that know it.
struct Script {
    items: Vec<Item>,
    asr: ScriptedAsr,
    llm: Arc<PacedLlm>,
}

/// `clips` holds the statements, then the interruption.
fn build_scripts(clips: &[Clip], barge_every: usize) -> Vec<Arc<Script>> {
    let interruption = STATEMENTS.len();
    (0..STATEMENTS.len())
        .map(|variant| {
            let mut items = Vec::new();
            let mut heard = Vec::new();
            let mut replies = Vec::new();
            for k in 0..SCRIPT_ITEMS {
                let clip = (variant + k) % STATEMENTS.len();
                let barge = barge_every > 0 && k % barge_every == barge_every - 1;
                items.push(Item { clip, barge });
                heard.push(clips[clip].text.clone());
                if barge {
                    replies.push(LONG_REPLY.to_owned());
                    heard.push(clips[interruption].text.clone());
                    replies.push(AFTER_INTERRUPTION_REPLY.to_owned());
                } else {
                    replies.push(SHORT_REPLIES[(variant + k) % SHORT_REPLIES.len()].to_owned());
                }
            }
            Arc::new(Script {
                items,
                asr: ScriptedAsr::new(heard, ASR_FINAL_DELAY, ASR_INTERIM_PER_WORD),
                llm: Arc::new(PacedLlm::new(
                    replies,
                    "Okay.",
                    LLM_TTFT,
                    LLM_TOKENS_PER_SECOND,
                )),
            })
        })
        .collect()
}

// ------------------------------------------------------------------ worker side

struct NewCall {
    index: usize,
    epoch: StdInstant,
    link: ConversationLink,
    script: Arc<Script>,
    start_after_ticks: u64,
    gap_ticks: u64,
}

enum WorkerSignal {
    Ready {
        vad: String,
        eot_loaded: Option<bool>,
    },
    AllAdded,
}

#[derive(Debug, Clone, Copy)]
enum CallerState {
    Silence {
        until: u64,
    },
    Playing {
        clip: usize,
        pos: usize,
        then_barge: bool,
        /// The agent's last segment when the clip started: a reply is any other.
        segment_before: Option<u32>,
    },
    AwaitReply {
        since: u64,
        give_up: u64,
        barge: bool,
        segment_before: Option<u32>,
    },
    AgentSpeaking {
        barge_at: Option<u64>,
    },
}

#[derive(Debug, Clone)]
struct TurnRecord {
    reply: u64,
    true_end: Option<StdInstant>,
    vad_end: StdInstant,
    decided: StdInstant,
    reason: String,
    eot_requested: Option<StdInstant>,
}

#[derive(Debug, Clone)]
struct BargeRecord {
    onset: StdInstant,
    confirmed: Option<StdInstant>,
    segment: Option<u32>,
}

struct ClipMark {
    true_end: StdInstant,
    claimed: bool,
}

/// One simulated caller and what was measured on its call.
struct CallerSim {
    index: usize,
    key: CallKey,
    epoch: StdInstant,
    script: Arc<Script>,
    next_item: usize,
    state: CallerState,
    sequence: u16,
    timestamp: u32,
    gap_ticks: u64,
    clip_started_tick: u64,
    last_clip: Option<ClipMark>,
    commits: u64,
    eot_requested_at: Option<StdInstant>,
    turns: Vec<TurnRecord>,
    barges: Vec<BargeRecord>,
    reply_timeouts: u64,
    unmatched_turns: u64,
    other_interruptions: u64,
    hangups: u64,
}

#[derive(Debug, Clone, Copy)]
struct SegmentRecord {
    segment: u32,
    first_send: StdInstant,
    first_tick_start: StdInstant,
    last_send: StdInstant,
}

#[derive(Default)]
struct SinkCall {
    last_packet_tick: Option<u64>,
    last_segment: Option<u32>,
    /// The tick of the first packet of `last_segment`.
    segment_started_tick: u64,
    spurt_first: Option<StdInstant>,
    spurt_index: u32,
    segments: Vec<SegmentRecord>,
}

/// Records the real send time of every agent packet.
struct RecordingSink {
    /// (shard, call key) to the index of the call on this thread.
    slots: HashMap<(usize, u64), usize>,
    /// The shard being ticked.
    shard: usize,
    calls: Vec<SinkCall>,
    tick: u64,
    tick_start: StdInstant,
    deadline: StdInstant,
    measuring: bool,
    jitter: Histogram,
    send_offset: Histogram,
    packets: u64,
}

impl PacketSink for RecordingSink {
    fn send(&mut self, call: CallKey, _now: Instant, packet: &OutboundPacket<'_>) {
        let sent = StdInstant::now();
        let Some(&index) = self.slots.get(&(self.shard, call.as_u64())) else {
            return;
        };
        let state = &mut self.calls[index];
        state.last_packet_tick = Some(self.tick);
        if state.last_segment != Some(packet.segment) {
            state.segment_started_tick = self.tick;
        }
        state.last_segment = Some(packet.segment);
        match state.spurt_first {
            Some(grid) if !packet.starts_talkspurt => {
                state.spurt_index += 1;
                // The grid sits at the earliest packet so far (send time
                // minus 20 ms per packet): a late packet shows as late, and
                // a late first packet does not make the rest look late.
                let ideal = grid + TICK * state.spurt_index;
                if sent < ideal {
                    state.spurt_first = Some(sent - TICK * state.spurt_index);
                }
                if self.measuring {
                    self.jitter.record(sent.saturating_duration_since(ideal));
                }
            }
            _ => {
                state.spurt_first = Some(sent);
                state.spurt_index = 0;
            }
        }
        if self.measuring {
            self.send_offset
                .record(sent.saturating_duration_since(self.deadline));
            self.packets += 1;
        }
        match state.segments.last_mut() {
            Some(last) if last.segment == packet.segment => last.last_send = sent,
            _ => state.segments.push(SegmentRecord {
                segment: packet.segment,
                first_send: sent,
                first_tick_start: self.tick_start,
                last_send: sent,
            }),
        }
    }
}

struct WorkerSetup {
    id: usize,
    calls_expected: usize,
    eot: bool,
    clips: Arc<Vec<Clip>>,
    new_calls: std_mpsc::Receiver<NewCall>,
    signals: std_mpsc::Sender<WorkerSignal>,
    stop: Arc<AtomicBool>,
    trace_call: Option<usize>,
    shard_size: Option<usize>,
}

struct WorkerReport {
    sims: Vec<CallerSim>,
    sink_calls: Vec<SinkCall>,
    lateness: Histogram,
    work: Histogram,
    engine: Histogram,
    caller: Histogram,
    jitter: Histogram,
    send_offset: Histogram,
    packets: u64,
    ticks: u64,
    /// CPU time of each measured tick (schedstat).
    tick_cpu: Histogram,
    /// Time this thread was runnable but waiting for a CPU, during measured ticks.
    runqueue_wait: Duration,
    vad_failures: u64,
}

const SILENT_PACKET: [u8; 160] = [0xFF; 160];

impl CallerSim {
    /// Advances the caller by one tick and pushes its packet.
    fn step(
        &mut self,
        tick: u64,
        now: StdInstant,
        clips: &[Clip],
        sink: &SinkCall,
        worker: &mut MediaWorker,
    ) {
        let mut payload = SILENT_PACKET;
        let interruption = STATEMENTS.len();
        // State changes that start a clip this tick.
        match self.state {
            CallerState::Silence { until } if tick >= until => {
                let item = self.script.items[self.next_item % self.script.items.len()];
                self.next_item += 1;
                self.start_clip(item.clip, item.barge, tick, now, clips, sink);
            }
            CallerState::AwaitReply {
                since,
                give_up,
                barge,
                segment_before,
            } => {
                // The reply may start in the clip's trailing silence.
                let replied = sink.last_packet_tick.is_some_and(|t| t > since)
                    && sink.last_segment != segment_before;
                if replied {
                    self.state = CallerState::AgentSpeaking {
                        barge_at: barge.then_some(sink.segment_started_tick + BARGE_AFTER_TICKS),
                    };
                } else if tick >= give_up {
                    self.reply_timeouts += 1;
                    self.state = CallerState::Silence {
                        until: tick + self.gap_ticks,
                    };
                }
            }
            CallerState::AgentSpeaking { barge_at } => {
                if barge_at.is_some_and(|at| tick >= at) {
                    self.start_clip(interruption, false, tick, now, clips, sink);
                    if let CallerState::Playing { .. } = self.state {
                        // The packet pushed now carries the 20 ms before it.
                        let clip_start = now - TICK;
                        self.barges.push(BargeRecord {
                            onset: clip_start + clips[interruption].speech_start,
                            confirmed: None,
                            segment: None,
                        });
                    }
                } else if sink
                    .last_packet_tick
                    .is_none_or(|t| t + AGENT_QUIET_TICKS < tick)
                {
                    self.state = CallerState::Silence {
                        until: tick + self.gap_ticks,
                    };
                }
            }
            _ => {}
        }
        if let CallerState::Playing {
            clip,
            pos,
            then_barge,
            segment_before,
        } = self.state
        {
            let bytes = &clips[clip].ulaw;
            let end = (pos + payload.len()).min(bytes.len());
            payload[..end - pos].copy_from_slice(&bytes[pos..end]);
            if end >= bytes.len() {
                self.state = CallerState::AwaitReply {
                    since: self.clip_started_tick,
                    give_up: tick + REPLY_TIMEOUT_TICKS,
                    barge: then_barge,
                    segment_before,
                };
            } else {
                self.state = CallerState::Playing {
                    clip,
                    pos: end,
                    then_barge,
                    segment_before,
                };
            }
        }
        // A key of a call this thread added is always live.
        let _ = worker.push_packet(
            now,
            self.key,
            self.sequence,
            self.timestamp,
            false,
            &payload,
        );
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(160);
    }

    fn start_clip(
        &mut self,
        clip: usize,
        then_barge: bool,
        tick: u64,
        now: StdInstant,
        clips: &[Clip],
        sink: &SinkCall,
    ) {
        // The first packet, pushed now, carries the clip's first 20 ms: the
        // caller started speaking 20 ms ago.
        let clip_start = now - TICK;
        self.last_clip = Some(ClipMark {
            true_end: clip_start + clips[clip].speech_end,
            claimed: false,
        });
        self.clip_started_tick = tick;
        self.state = CallerState::Playing {
            clip,
            pos: 0,
            then_barge,
            segment_before: sink.last_segment,
        };
    }

    fn on_event(&mut self, at: Instant, event: &MediaEvent) {
        let to_std = |t: Instant| self.epoch + t.since_epoch();
        match event {
            MediaEvent::EndOfTurnRequested { .. } => {
                self.eot_requested_at = Some(to_std(at));
            }
            MediaEvent::UserTurnEnded {
                reason,
                speech_ended_at,
                decided_at,
                ..
            } => {
                let decided = to_std(*decided_at);
                let reply = self.commits;
                self.commits += 1;
                let true_end = match &mut self.last_clip {
                    Some(mark) if !mark.claimed && mark.true_end <= decided => {
                        mark.claimed = true;
                        Some(mark.true_end)
                    }
                    _ => {
                        self.unmatched_turns += 1;
                        None
                    }
                };
                self.turns.push(TurnRecord {
                    reply,
                    true_end,
                    vad_end: to_std(*speech_ended_at),
                    decided,
                    reason: format!("{reason:?}"),
                    eot_requested: self.eot_requested_at.take(),
                });
            }
            MediaEvent::Interrupted { at, segment, .. } => match self.barges.last_mut() {
                Some(barge) if barge.confirmed.is_none() => {
                    barge.confirmed = Some(to_std(*at));
                    barge.segment = *segment;
                }
                _ => self.other_interruptions += 1,
            },
            MediaEvent::Hangup { .. } => self.hangups += 1,
            _ => {}
        }
    }
}

fn run_worker(setup: WorkerSetup) -> WorkerReport {
    let capacity = setup.calls_expected.max(1);
    // With the end-of-turn model, one MediaWorker per thread: each owns
    // its own model thread.
    let shard_size = if setup.eot {
        capacity
    } else {
        setup.shard_size.unwrap_or(capacity).clamp(1, capacity)
    };
    let mut workers = Vec::new();
    let mut vad_name = String::new();
    let mut eot_loaded = None;
    for _ in 0..capacity.div_ceil(shard_size) {
        let vad = VadBatch::load_or_fallback(shard_size);
        vad_name = match vad.fallback_reason() {
            None => "silero".to_owned(),
            Some(reason) => format!("energy fallback ({reason})"),
        };
        let eot = if setup.eot {
            match EotPool::start(EOT_MAX_BATCH) {
                Ok(pool) => {
                    eot_loaded = Some(true);
                    Some(pool)
                }
                Err(err) => {
                    eprintln!("worker {}: Smart Turn did not load: {err}", setup.id);
                    eot_loaded = Some(false);
                    None
                }
            }
        } else {
            None
        };
        workers.push(MediaWorker::new(vad, eot));
    }
    let _ = setup.signals.send(WorkerSignal::Ready {
        vad: vad_name,
        eot_loaded,
    });
    let config = CallMediaConfig::phone(setup.eot);
    let ramp_per_tick = setup.calls_expected.div_ceil(16).max(1);
    let now = StdInstant::now();
    let mut sink = RecordingSink {
        slots: HashMap::with_capacity(capacity),
        shard: 0,
        calls: Vec::with_capacity(capacity),
        tick: 0,
        tick_start: now,
        deadline: now,
        measuring: false,
        jitter: Histogram::default(),
        send_offset: Histogram::default(),
        packets: 0,
    };
    let mut sims: Vec<CallerSim> = Vec::with_capacity(capacity);
    let mut lateness = Histogram::default();
    let mut work = Histogram::default();
    let mut engine = Histogram::default();
    let mut caller = Histogram::default();
    let mut measure_from: Option<u64> = None;
    let mut all_added_sent = false;
    let mut measured_ticks = 0u64;
    let mut tick_cpu = Histogram::default();
    let mut runqueue_wait = Duration::ZERO;
    let mut schedstat = ThreadSchedstat::open();
    let mut deadline = StdInstant::now() + TICK;
    let mut tick = 0u64;
    while !setup.stop.load(Ordering::Relaxed) {
        let now = StdInstant::now();
        if deadline > now {
            std::thread::sleep(deadline - now);
        }
        let tick_start = StdInstant::now();
        let sched_start = schedstat.as_mut().and_then(ThreadSchedstat::read);
        let late_by = tick_start.saturating_duration_since(deadline);
        // Ramp: add a few calls per tick.
        if sims.len() < setup.calls_expected {
            for _ in 0..ramp_per_tick {
                let Ok(new) = setup.new_calls.try_recv() else {
                    break;
                };
                let shard = sims.len() / shard_size;
                match workers[shard].add_call(tick_start, new.epoch, config.clone(), Some(new.link))
                {
                    Ok(key) => {
                        sink.slots.insert((shard, key.as_u64()), sims.len());
                        sink.calls.push(SinkCall::default());
                        sims.push(CallerSim {
                            index: new.index,
                            key,
                            epoch: new.epoch,
                            script: new.script,
                            next_item: 0,
                            state: CallerState::Silence {
                                until: tick + new.start_after_ticks,
                            },
                            sequence: 0,
                            timestamp: 0,
                            gap_ticks: new.gap_ticks,
                            clip_started_tick: 0,
                            last_clip: None,
                            commits: 0,
                            eot_requested_at: None,
                            turns: Vec::new(),
                            barges: Vec::new(),
                            reply_timeouts: 0,
                            unmatched_turns: 0,
                            other_interruptions: 0,
                            hangups: 0,
                        });
                    }
                    Err(err) => eprintln!("worker {}: call not added: {err}", setup.id),
                }
            }
        } else if !all_added_sent {
            all_added_sent = true;
            measure_from = Some(tick + SETTLE_TICKS);
            let _ = setup.signals.send(WorkerSignal::AllAdded);
        }
        let measuring = measure_from.is_some_and(|from| tick >= from);
        sink.measuring = measuring;
        sink.tick = tick;
        sink.tick_start = tick_start;
        sink.deadline = deadline;

        let mut caller_time = Duration::ZERO;
        let mut engine_time = Duration::ZERO;
        for (shard, worker) in workers.iter_mut().enumerate() {
            let calls =
                (shard * shard_size).min(sims.len())..((shard + 1) * shard_size).min(sims.len());
            let caller_start = StdInstant::now();
            for (sim, sink_call) in sims[calls.clone()].iter_mut().zip(&sink.calls[calls]) {
                sim.step(tick, caller_start, &setup.clips, sink_call, worker);
            }
            let engine_start = StdInstant::now();
            sink.shard = shard;
            let events = worker.tick(engine_start, &mut sink);
            let engine_end = StdInstant::now();
            caller_time += engine_start - caller_start;
            engine_time += engine_end - engine_start;
            for event in events {
                let Some(&index) = sink.slots.get(&(shard, event.call.as_u64())) else {
                    continue;
                };
                if setup.trace_call == Some(sims[index].index) {
                    eprintln!(
                        "call {} {:>8.3}s {:?} (caller {:?})",
                        sims[index].index,
                        event.at.since_epoch().as_secs_f64(),
                        event.event,
                        sims[index].state
                    );
                }
                sims[index].on_event(event.at, &event.event);
            }
        }
        let tick_end = StdInstant::now();
        let sched_end = schedstat.as_mut().and_then(ThreadSchedstat::read);
        if measuring {
            if let (Some((cpu0, wait0)), Some((cpu1, wait1))) = (sched_start, sched_end) {
                tick_cpu.record(cpu1.saturating_sub(cpu0));
                runqueue_wait += wait1.saturating_sub(wait0);
            }
            measured_ticks += 1;
            lateness.record(late_by);
            work.record(tick_end - tick_start);
            engine.record(engine_time);
            caller.record(caller_time);
        }
        tick += 1;
        // An absolute schedule: a late tick is followed at once by the next.
        deadline += TICK;
    }
    WorkerReport {
        sims,
        sink_calls: sink.calls,
        lateness,
        work,
        engine,
        caller,
        jitter: sink.jitter,
        send_offset: sink.send_offset,
        packets: sink.packets,
        ticks: measured_ticks,
        tick_cpu,
        runqueue_wait,
        vad_failures: workers.iter().map(MediaWorker::vad_failures).sum(),
    }
}

// ------------------------------------------------------------------ results

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrialResult {
    config: TrialConfig,
    vad: String,
    eot_model_loaded: Option<bool>,
    measured_s: f64,
    ticks: u64,
    late_ticks: u64,
    tick_lateness: Summary,
    tick_work: Summary,
    tick_engine: Summary,
    tick_caller: Summary,
    /// CPU time per tick (the work without the time other processes held the core).
    tick_cpu: Summary,
    /// Share of the measured ticks' wall time the media threads waited for a CPU, %.
    media_runqueue_wait_percent: f64,
    agent_packets: u64,
    pacing_jitter: Summary,
    send_offset: Summary,
    user_turns: u64,
    answered_turns: u64,
    unmatched_turns: u64,
    reply_timeouts: u64,
    voice_to_voice: Summary,
    endpointing: Summary,
    llm_after_commit: Summary,
    tts_ttfb: Summary,
    engine_overhead: Summary,
    engine_overhead_excl_grid_wait: Summary,
    overhead_commit_hop: Summary,
    overhead_agent_loop: Summary,
    overhead_grid_wait: Summary,
    overhead_in_tick: Summary,
    vad_stop_to_decision: Summary,
    eot_request_to_decision: Summary,
    end_of_turn_reasons: BTreeMap<String, u64>,
    barge_ins: u64,
    barge_ins_confirmed: u64,
    barge_onset_to_silence: Summary,
    barge_confirmed_to_silence: Summary,
    barge_packets_after_confirm: u64,
    other_interruptions: u64,
    hangups: u64,
    vad_failures: u64,
    rss_base_mib: f64,
    rss_after_add_mib: f64,
    rss_end_mib: f64,
    kib_per_call_after_add: f64,
    kib_per_call_end: f64,
    cpu_percent_by_thread: BTreeMap<String, f64>,
    load_average_start: Option<[f64; 3]>,
    load_average_end: Option<[f64; 3]>,
    /// Zero late ticks, pacing jitter p99 <= 5 ms (and the model keeps up).
    holds_strict: bool,
    /// The same with at most one late tick per thousand.
    holds: bool,
}

fn signed_ms(later: StdInstant, earlier: StdInstant) -> f64 {
    if later >= earlier {
        (later - earlier).as_secs_f64() * 1e3
    } else {
        -((earlier - later).as_secs_f64() * 1e3)
    }
}

#[derive(Default)]
struct TurnFigures {
    user_turns: u64,
    answered: u64,
    voice_to_voice: Samples,
    endpointing: Samples,
    llm_after_commit: Samples,
    tts_ttfb: Samples,
    engine_overhead: Samples,
    excl_grid: Samples,
    commit_hop: Samples,
    agent_loop: Samples,
    grid_wait: Samples,
    in_tick: Samples,
    vad_stop_to_decision: Samples,
    eot_request_to_decision: Samples,
    reasons: BTreeMap<String, u64>,
    barge_ins: u64,
    barge_confirmed: u64,
    onset_to_silence: Samples,
    confirmed_to_silence: Samples,
    late_packets: u64,
}

fn add_turn_figures(
    figures: &mut TurnFigures,
    sim: &CallerSim,
    sink: &SinkCall,
    metrics: &HashMap<u64, TurnMetrics>,
) {
    let segment_of = |segment: u32| sink.segments.iter().find(|s| s.segment == segment);
    for turn in &sim.turns {
        figures.user_turns += 1;
        *figures.reasons.entry(turn.reason.clone()).or_insert(0) += 1;
        figures
            .vad_stop_to_decision
            .push_ms(signed_ms(turn.decided, turn.vad_end));
        // The model's own latency: turns it decided (the other reasons are
        // the turn machine's waits, or the model being too late).
        if let (Some(requested), "Model") = (turn.eot_requested, turn.reason.as_str()) {
            figures
                .eot_request_to_decision
                .push_ms(signed_ms(turn.decided, requested));
        }
        let (Some(true_end), Some(first)) = (turn.true_end, segment_of(turn.reply as u32)) else {
            continue;
        };
        figures.answered += 1;
        figures
            .voice_to_voice
            .push_ms(signed_ms(first.first_send, true_end));
        figures
            .endpointing
            .push_ms(signed_ms(turn.decided, true_end));
        let Some(m) = metrics.get(&turn.reply) else {
            continue;
        };
        let (Some(eou), Some(v2v), Some(tts), Some(agent_overhead)) = (
            m.end_of_utterance_delay,
            m.voice_to_voice,
            m.tts_ttfb,
            m.engine_overhead,
        ) else {
            continue;
        };
        // The agent loop's times are on the same clock as the worker's.
        let committed = turn.vad_end + eou;
        let first_audio = turn.vad_end + v2v;
        // first_clause - committed: the model's time after the commit.
        let llm = (first_audio.saturating_duration_since(committed))
            .saturating_sub(tts)
            .saturating_sub(agent_overhead);
        figures.llm_after_commit.push(llm);
        figures.tts_ttfb.push(tts);
        let overhead = signed_ms(first.first_send, turn.decided)
            - (llm.as_secs_f64() + tts.as_secs_f64()) * 1e3;
        let grid_wait = signed_ms(first.first_tick_start, first_audio).max(0.0);
        if std::env::var_os("BENCH_DEBUG_WAIT").is_some() && grid_wait > 40.0 {
            eprintln!(
                "call {} reply {} {}: first frame queued {:.1} ms before the tick that sent it; decided {:.0} ms after speech end",
                sim.index,
                turn.reply,
                turn.reason,
                grid_wait,
                signed_ms(turn.decided, true_end)
            );
        }
        figures.engine_overhead.push_ms(overhead);
        figures.excl_grid.push_ms(overhead - grid_wait);
        figures
            .commit_hop
            .push_ms(signed_ms(committed, turn.decided));
        figures.agent_loop.push(agent_overhead);
        figures.grid_wait.push_ms(grid_wait);
        figures
            .in_tick
            .push_ms(signed_ms(first.first_send, first_audio) - grid_wait);
    }
    for barge in &sim.barges {
        figures.barge_ins += 1;
        let Some(confirmed) = barge.confirmed else {
            continue;
        };
        figures.barge_confirmed += 1;
        let segment = barge.segment.and_then(segment_of).or_else(|| {
            sink.segments
                .iter()
                .rev()
                .find(|s| s.first_send < confirmed)
        });
        let Some(segment) = segment else { continue };
        // The caller hears the last packet for the 20 ms it carries.
        let silent_from = segment.last_send + TICK;
        figures
            .onset_to_silence
            .push_ms(signed_ms(silent_from, barge.onset));
        figures
            .confirmed_to_silence
            .push_ms(signed_ms(silent_from, confirmed));
        if segment.last_send > confirmed {
            figures.late_packets += 1;
        }
    }
}

// ------------------------------------------------------------------ one trial

fn run_trial(config: &TrialConfig) -> Result<TrialResult, BoxError> {
    let mut ids: Vec<&str> = STATEMENTS.to_vec();
    ids.push(INTERRUPTION);
    let clips = Arc::new(load_clips(&ids)?);
    let scripts = build_scripts(&clips, config.barge_every);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.agent_threads.max(1))
        .thread_name("bench-agents")
        .enable_time()
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let (signal_tx, signal_rx) = std_mpsc::channel();
    let mut call_senders = Vec::new();
    let mut threads = Vec::new();
    for id in 0..WORKERS {
        let (call_tx, call_rx) = std_mpsc::channel();
        call_senders.push(call_tx);
        let setup = WorkerSetup {
            id,
            calls_expected: config.calls / WORKERS + usize::from(id < config.calls % WORKERS),
            eot: config.eot,
            clips: Arc::clone(&clips),
            new_calls: call_rx,
            signals: signal_tx.clone(),
            stop: Arc::clone(&stop),
            trace_call: config.trace_call,
            shard_size: config.shard_size,
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("bench-media-{id}"))
                .spawn(move || run_worker(setup))?,
        );
    }
    let mut vad = String::new();
    let mut eot_model_loaded = None;
    // A worker with no calls reports "all added" right after "ready".
    let (mut ready, mut all_added) = (0, 0);
    while ready < WORKERS {
        match signal_rx.recv_timeout(Duration::from_secs(60))? {
            WorkerSignal::Ready {
                vad: name,
                eot_loaded,
            } => {
                ready += 1;
                vad = name;
                eot_model_loaded = eot_loaded.map(|l| l && eot_model_loaded.unwrap_or(true));
            }
            WorkerSignal::AllAdded => all_added += 1,
        }
    }
    if config.eot {
        // The model threads must not delay the 20 ms ticks: run them at the
        // lowest priority, as a deployment would (the engine cannot yet).
        for tid in thread_ids_named("callingbox-eot") {
            let reniced = Command::new("renice")
                .args(["-n", "19", "-p", &tid.to_string()])
                .stdout(Stdio::null())
                .status();
            if !reniced.is_ok_and(|status| status.success()) {
                eprintln!("could not lower the priority of the model thread {tid}");
            }
        }
    }
    let rss_base = rss_bytes().unwrap_or(0);
    let load_average_start = load_average();
    let started = StdInstant::now();

    let tts = Arc::new(ScriptedTts::new(
        SampleRate::Hz16000,
        TtsLatency {
            time_to_first_byte: TTS_TTFB,
            real_time_factor: TTS_REAL_TIME_FACTOR,
            speech_per_char: Duration::from_millis(60),
        },
    ));
    let http = reqwest::Client::new();
    let mut call_events = Vec::with_capacity(config.calls);
    let mut asr_cancels = Vec::with_capacity(config.calls);
    {
        let _context = runtime.enter();
        for index in 0..config.calls {
            let script = Arc::clone(&scripts[index % scripts.len()]);
            let (audio_tx, audio_rx) = mpsc::channel(64);
            let providers = Providers {
                llm: Arc::clone(&script.llm) as _,
                tts: Arc::clone(&tts) as _,
            };
            let agent_config = AgentConfig {
                http_client: Some(http.clone()),
                ..AgentConfig::default()
            };
            let (agent, events) = AgentLoop::spawn(agent_config, providers, audio_tx);
            let cancel = CancellationToken::new();
            let asr = script.asr.open(cancel.clone())?;
            let epoch = agent.clock().to_tokio(Instant::ZERO).into_std();
            call_events.push(events);
            asr_cancels.push(cancel);
            let new = NewCall {
                index,
                epoch,
                link: ConversationLink {
                    agent,
                    asr,
                    agent_audio: audio_rx,
                },
                script,
                // Staggered: callers start speaking 0.2 to 3.2 s in, each at
                // its own phase of the tick and of the VAD window.
                start_after_ticks: 10 + (index as u64 * 37) % 150,
                gap_ticks: 25 + (index as u64 % 10) * 2,
            };
            call_senders[index % WORKERS]
                .send(new)
                .map_err(|_| "a media worker exited early")?;
        }
    }
    while all_added < WORKERS {
        if let WorkerSignal::AllAdded = signal_rx.recv_timeout(Duration::from_secs(120))? {
            all_added += 1;
        }
    }
    let rss_after_add = rss_bytes().unwrap_or(0);
    let cpu_start = cpu_seconds_by_thread_name();
    let measure_start = StdInstant::now();
    let total = Duration::from_secs_f64(config.duration_s);
    if let Some(left) = total.checked_sub(started.elapsed()) {
        std::thread::sleep(left);
    }
    let rss_end = rss_bytes().unwrap_or(0);
    let cpu_end = cpu_seconds_by_thread_name();
    let measured = measure_start.elapsed().as_secs_f64();
    let load_average_end = load_average();
    stop.store(true, Ordering::Relaxed);
    let mut reports = Vec::new();
    for thread in threads {
        reports.push(thread.join().map_err(|_| "a media worker panicked")?);
    }
    for cancel in &asr_cancels {
        cancel.cancel();
    }

    // Turn metrics from each call's event stream, by reply.
    let mut metrics_by_call: Vec<HashMap<u64, TurnMetrics>> = Vec::with_capacity(config.calls);
    for events in &mut call_events {
        let mut by_turn = HashMap::new();
        while let Ok(event) = events.try_recv() {
            if let CallEvent::TurnMetrics { turn, metrics } = event {
                by_turn.insert(turn, metrics);
            }
        }
        metrics_by_call.push(by_turn);
    }

    let mut figures = TurnFigures::default();
    let mut lateness = Histogram::default();
    let mut work = Histogram::default();
    let mut engine = Histogram::default();
    let mut caller = Histogram::default();
    let mut jitter = Histogram::default();
    let mut send_offset = Histogram::default();
    let mut tick_cpu = Histogram::default();
    let mut runqueue_wait = Duration::ZERO;
    let (mut packets, mut ticks, mut vad_failures) = (0, 0, 0);
    let (mut unmatched, mut timeouts, mut other_interruptions, mut hangups) = (0, 0, 0, 0);
    for report in &reports {
        lateness.merge(&report.lateness);
        work.merge(&report.work);
        engine.merge(&report.engine);
        caller.merge(&report.caller);
        jitter.merge(&report.jitter);
        send_offset.merge(&report.send_offset);
        tick_cpu.merge(&report.tick_cpu);
        runqueue_wait += report.runqueue_wait;
        packets += report.packets;
        ticks += report.ticks;
        vad_failures += report.vad_failures;
        for (sim, sink) in report.sims.iter().zip(&report.sink_calls) {
            add_turn_figures(&mut figures, sim, sink, &metrics_by_call[sim.index]);
            unmatched += sim.unmatched_turns;
            timeouts += sim.reply_timeouts;
            other_interruptions += sim.other_interruptions;
            hangups += sim.hangups;
        }
    }
    let late_ticks = lateness.count_above(LATE_TICK);
    let pacing_jitter = jitter.summary();
    let eot_request_to_decision = figures.eot_request_to_decision.summary();
    let calls = config.calls.max(1) as f64;
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let per_call_kib = |bytes: u64| bytes.saturating_sub(rss_base) as f64 / 1024.0 / calls;
    let cpu_percent_by_thread = cpu_end
        .iter()
        .map(|(name, end)| {
            let start = cpu_start.get(name).copied().unwrap_or(0.0);
            (name.clone(), (end - start) / measured.max(1e-9) * 100.0)
        })
        .filter(|(_, percent)| *percent > 0.05)
        .collect();
    let unanswered = figures.reasons.get("ModelUnanswered").copied().unwrap_or(0);
    // The model keeps up: at most 1 % of turns fell back to the cues
    // because its answer came later than the turn machine's 800 ms timeout.
    // (Its decisions' latency also holds the turn machine's own waits, and
    // no event tells when the model answered: see the README.)
    let model_keeps_up = figures.user_turns > 0 && unanswered * 100 <= figures.user_turns;
    let keeps_pace = ticks > 0
        && pacing_jitter.p99 <= JITTER_TARGET_MS
        && figures.answered > 0
        && (!config.eot || model_keeps_up);
    let holds_strict = keeps_pace && late_ticks == 0;
    // On a shared machine a neighbour's burst can delay one tick in
    // thousands whatever the load: allow one late tick per thousand.
    let holds = keeps_pace && late_ticks * 1000 <= ticks;
    Ok(TrialResult {
        config: config.clone(),
        vad,
        eot_model_loaded,
        measured_s: measured,
        ticks,
        late_ticks,
        tick_lateness: lateness.summary(),
        tick_work: work.summary(),
        tick_engine: engine.summary(),
        tick_caller: caller.summary(),
        tick_cpu: tick_cpu.summary(),
        media_runqueue_wait_percent: runqueue_wait.as_secs_f64()
            / (ticks.max(1) as f64 * TICK.as_secs_f64())
            * 100.0,
        agent_packets: packets,
        pacing_jitter,
        send_offset: send_offset.summary(),
        user_turns: figures.user_turns,
        answered_turns: figures.answered,
        unmatched_turns: unmatched,
        reply_timeouts: timeouts,
        voice_to_voice: figures.voice_to_voice.summary(),
        endpointing: figures.endpointing.summary(),
        llm_after_commit: figures.llm_after_commit.summary(),
        tts_ttfb: figures.tts_ttfb.summary(),
        engine_overhead: figures.engine_overhead.summary(),
        engine_overhead_excl_grid_wait: figures.excl_grid.summary(),
        overhead_commit_hop: figures.commit_hop.summary(),
        overhead_agent_loop: figures.agent_loop.summary(),
        overhead_grid_wait: figures.grid_wait.summary(),
        overhead_in_tick: figures.in_tick.summary(),
        vad_stop_to_decision: figures.vad_stop_to_decision.summary(),
        eot_request_to_decision,
        end_of_turn_reasons: figures.reasons,
        barge_ins: figures.barge_ins,
        barge_ins_confirmed: figures.barge_confirmed,
        barge_onset_to_silence: figures.onset_to_silence.summary(),
        barge_confirmed_to_silence: figures.confirmed_to_silence.summary(),
        barge_packets_after_confirm: figures.late_packets,
        other_interruptions,
        hangups,
        vad_failures,
        rss_base_mib: mib(rss_base),
        rss_after_add_mib: mib(rss_after_add),
        rss_end_mib: mib(rss_end),
        kib_per_call_after_add: per_call_kib(rss_after_add),
        kib_per_call_end: per_call_kib(rss_end),
        cpu_percent_by_thread,
        load_average_start,
        load_average_end,
        holds_strict,
        holds,
    })
}

// ------------------------------------------------------------------ calibration

/// The two models alone, on this machine: what one batched inference costs.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ModelCost {
    model: String,
    batch: usize,
    /// Median time of one inference of the whole batch, ms.
    ms_per_run: f64,
    /// The same per row, us.
    us_per_row: f64,
}

fn median_ms(mut runs: Vec<Duration>) -> f64 {
    runs.sort();
    runs.get(runs.len() / 2)
        .map_or(0.0, |d| d.as_secs_f64() * 1e3)
}

fn calibrate(clips: &[Clip]) -> Result<Vec<ModelCost>, BoxError> {
    // Speech: a statement decoded to 16 kHz the way the worker would see it (8 kHz samples doubled).
    let mut pcm8 = vec![0i16; clips[0].ulaw.len()];
    G711Law::MuLaw.decode(&clips[0].ulaw, &mut pcm8)?;
    let speech: Vec<i16> = pcm8.iter().flat_map(|&s| [s, s]).collect();
    let mut costs = Vec::new();
    let mut vad = VadBatch::load_or_fallback(512);
    let model = if vad.is_silero() {
        "silero"
    } else {
        "energy fallback"
    };
    let handles: Vec<_> = (0..512).map(|_| vad.register()).collect::<Result<_, _>>()?;
    for batch in [1usize, 8, 32, 64, 128, 256, 512] {
        let mut runs = Vec::new();
        for rep in 0..40 {
            for (i, &handle) in handles[..batch].iter().enumerate() {
                let start = ((rep * 7 + i * 13) % 100) * 512;
                vad.submit(handle, &speech[start..start + 512])?;
            }
            let began = StdInstant::now();
            vad.run()?;
            runs.push(began.elapsed());
        }
        let ms = median_ms(runs);
        costs.push(ModelCost {
            model: format!("VAD ({model})"),
            batch,
            ms_per_run: ms,
            us_per_row: ms * 1e3 / batch as f64,
        });
    }
    match callingbox_engine::eot::SmartTurn::load(8) {
        Ok(mut smart_turn) => {
            let turn = &speech[..speech.len().min(8 * 16_000)];
            for batch in [1usize, 4, 8] {
                let requests: Vec<&[i16]> = vec![turn; batch];
                let mut out = vec![0.0f32; batch];
                let mut runs = Vec::new();
                for _ in 0..7 {
                    let began = StdInstant::now();
                    smart_turn.predict_batch(&requests, &mut out)?;
                    runs.push(began.elapsed());
                }
                let ms = median_ms(runs);
                costs.push(ModelCost {
                    model: "Smart Turn v3.2".into(),
                    batch,
                    ms_per_run: ms,
                    us_per_row: ms * 1e3 / batch as f64,
                });
            }
        }
        Err(err) => eprintln!("Smart Turn did not load: {err}"),
    }
    Ok(costs)
}

// ------------------------------------------------------------------ parent

fn run_child(config: &TrialConfig) -> Result<TrialResult, BoxError> {
    eprintln!(
        "== {} calls, {} endpointing, {:.0} s",
        config.calls,
        if config.eot { "Smart Turn" } else { "VAD-only" },
        config.duration_s
    );
    let result: TrialResult = callingbox_bench::trial::run_in_child(config)?;
    eprintln!(
        "   turns {} answered {}, v2v p50 {:.0} ms, overhead p99 {:.1} ms, late ticks {}, tick work p99 {:.1} ms, jitter p99 {:.2} ms, holds: {}",
        result.user_turns,
        result.answered_turns,
        result.voice_to_voice.p50,
        result.engine_overhead.p99,
        result.late_ticks,
        result.tick_work.p99,
        result.pacing_jitter.p99,
        result.holds
    );
    Ok(result)
}

struct Options {
    calls: Vec<usize>,
    eot_calls: Vec<usize>,
    duration_s: f64,
    capacity: bool,
    capacity_duration_s: f64,
    capacity_trials: usize,
    agent_threads: usize,
    barge_every: usize,
    smoke: bool,
    out: Option<String>,
    trace_call: Option<usize>,
    calibrate: bool,
    calibrate_only: bool,
    shard_size: Option<usize>,
}

const HELP: &str = "engine_bench: the engine's turn latency and capacity, in real time

  --calls 1,100,1000     latency runs with VAD-only endpointing
  --eot-calls 1,150      latency runs with Smart Turn on every turn (--eot-calls '' for none)
  --eot                  only the Smart Turn runs (same as --calls '')
  --duration 60          seconds per latency run
  --no-capacity          skip the capacity step search
  --capacity-duration 25 seconds per capacity trial
  --capacity-trials 4    extra trials per mode in the step search
  --agent-threads 1      tokio threads for agent loops and providers
  --barge-every 2        interrupt every n-th statement (0: never)
  --out PATH             JSON output (default bench/results/engine.json)
  --calibrate            only time the models alone (Silero, Smart Turn) per batch size
  --no-calibrate         skip that step in a full run
  --shard N              at most N calls per MediaWorker (several per thread; VAD-only)
  --trace-call N         print call N's media events to stderr
  --smoke                5 calls, 10 s, VAD-only; exits 1 if no turn was answered
";

fn parse_list(value: &str) -> Result<Vec<usize>, BoxError> {
    value
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse::<usize>()
                .map_err(|e| format!("{s}: {e}").into())
        })
        .collect()
}

fn parse_options(args: &[String]) -> Result<Options, BoxError> {
    let mut options = Options {
        calls: vec![1, 100, 1000],
        eot_calls: vec![1, 150],
        duration_s: 60.0,
        capacity: true,
        capacity_duration_s: 25.0,
        capacity_trials: 4,
        agent_threads: 1,
        barge_every: 2,
        smoke: false,
        out: None,
        trace_call: None,
        calibrate: true,
        calibrate_only: false,
        shard_size: None,
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--calls" => options.calls = parse_list(value()?)?,
            "--eot-calls" => options.eot_calls = parse_list(value()?)?,
            "--eot" => options.calls.clear(),
            "--duration" => options.duration_s = value()?.parse()?,
            "--no-capacity" => options.capacity = false,
            "--capacity-duration" => options.capacity_duration_s = value()?.parse()?,
            "--capacity-trials" => options.capacity_trials = value()?.parse()?,
            "--agent-threads" => options.agent_threads = value()?.parse()?,
            "--barge-every" => options.barge_every = value()?.parse()?,
            "--out" => options.out = Some(value()?.clone()),
            "--smoke" => options.smoke = true,
            "--calibrate" => options.calibrate_only = true,
            "--no-calibrate" => options.calibrate = false,
            "--shard" => {
                let size: usize = value()?.parse()?;
                options.shard_size = (size > 0).then_some(size);
            }
            "--trace-call" => options.trace_call = Some(value()?.parse()?),
            "--help" | "-h" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag {other}\n{HELP}").into()),
        }
    }
    Ok(options)
}

/// Step search for the most calls that hold, starting from what the latency runs showed.
fn capacity_search(
    eot: bool,
    known: &[TrialResult],
    options: &Options,
    results: &mut Vec<TrialResult>,
) -> Result<(Option<usize>, Option<usize>), BoxError> {
    let mut outcomes: Vec<(usize, bool)> = known
        .iter()
        .filter(|r| r.config.eot == eot)
        .map(|r| (r.config.calls, r.holds))
        .collect();
    // The most calls that held, and the fewest above it that failed (a
    // failure below a success was noise).
    let bounds = |outcomes: &[(usize, bool)]| {
        let held = outcomes.iter().filter(|o| o.1).map(|o| o.0).max();
        let failed = outcomes
            .iter()
            .filter(|o| !o.1 && held.is_none_or(|h| o.0 > h))
            .map(|o| o.0)
            .min();
        (held, failed)
    };
    for _ in 0..options.capacity_trials {
        let (held, failed) = bounds(&outcomes);
        let next = match (held, failed) {
            (Some(h), None) => h * 3 / 2,
            (None, Some(f)) if f > 1 => f / 2,
            (Some(h), Some(f)) if f > h + h / 10 + 1 => (h + f) / 2,
            (None, None) => {
                if eot {
                    150
                } else {
                    1000
                }
            }
            _ => break,
        };
        let config = TrialConfig {
            calls: next,
            eot,
            duration_s: options.capacity_duration_s,
            agent_threads: options.agent_threads,
            barge_every: options.barge_every,
            trace_call: options.trace_call,
            shard_size: options.shard_size,
        };
        let result = run_child(&config)?;
        outcomes.push((next, result.holds));
        results.push(result);
    }
    Ok(bounds(&outcomes))
}

fn print_model_costs(costs: &[ModelCost]) {
    if costs.is_empty() {
        return;
    }
    println!("\n### The models alone: one inference, one thread (median)\n");
    println!("| model | batch | ms per inference | us per row |");
    println!("| --- | ---: | ---: | ---: |");
    for cost in costs {
        println!(
            "| {} | {} | {:.2} | {:.0} |",
            cost.model, cost.batch, cost.ms_per_run, cost.us_per_row
        );
    }
}

fn ms_or_dash(summary: &Summary, value: f64) -> String {
    if summary.n == 0 {
        "-".into()
    } else {
        format!("{value:.1}")
    }
}

fn print_tables(
    results: &[TrialResult],
    capacity: &BTreeMap<String, (Option<usize>, Option<usize>)>,
) {
    let mode = |r: &TrialResult| {
        if r.config.eot {
            "Smart Turn"
        } else {
            "VAD-only"
        }
    };
    println!("\n### Turn latency (ms, p50 / p95 / p99)\n");
    println!(
        "| endpointing | calls | turns | voice_to_voice | engine_overhead | overhead excl. grid wait | endpointing | LLM after commit p50 | TTS TTFB p50 |"
    );
    println!("| --- | ---: | ---: | --- | --- | --- | --- | ---: | ---: |");
    for r in results {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            mode(r),
            r.config.calls,
            r.answered_turns,
            r.voice_to_voice.triple(),
            r.engine_overhead.triple(),
            r.engine_overhead_excl_grid_wait.triple(),
            r.endpointing.triple(),
            ms_or_dash(&r.llm_after_commit, r.llm_after_commit.p50),
            ms_or_dash(&r.tts_ttfb, r.tts_ttfb.p50),
        );
    }
    println!("\n### engine_overhead breakdown (ms, p50 / p99)\n");
    println!(
        "| endpointing | calls | decision -> agent commit | agent loop (clause -> TTS, frame -> queue) | wait for the next tick | in-tick until sent |"
    );
    println!("| --- | ---: | --- | --- | --- | --- |");
    let pair = |s: &Summary| {
        if s.n == 0 {
            "-".to_owned()
        } else {
            format!("{:.2} / {:.2}", s.p50, s.p99)
        }
    };
    for r in results {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            mode(r),
            r.config.calls,
            pair(&r.overhead_commit_hop),
            pair(&r.overhead_agent_loop),
            pair(&r.overhead_grid_wait),
            pair(&r.overhead_in_tick),
        );
    }
    println!("\n### Barge-in (ms, p50 / p95 / p99)\n");
    println!(
        "| endpointing | calls | barge-ins (confirmed) | speech onset -> agent silent | confirmed -> agent silent | agent packets after confirmation |"
    );
    println!("| --- | ---: | --- | --- | --- | ---: |");
    for r in results.iter().filter(|r| r.barge_ins > 0) {
        println!(
            "| {} | {} | {} ({}) | {} | {} | {} |",
            mode(r),
            r.config.calls,
            r.barge_ins,
            r.barge_ins_confirmed,
            r.barge_onset_to_silence.triple(),
            r.barge_confirmed_to_silence.triple(),
            r.barge_packets_after_confirm,
        );
    }
    println!("\n### Capacity: every run\n");
    println!(
        "| endpointing | calls | late ticks | tick lateness p99 / max | tick wall time p50 / p99 / max | tick CPU p50 / p99 | media threads waiting for a CPU | pacing jitter p99 / max | Smart Turn: VAD stop -> decision p50 / p99 | RSS per call | load avg | holds |"
    );
    println!("| --- | ---: | ---: | --- | --- | --- | ---: | --- | ---: | ---: | --- | --- |");
    for r in results {
        let load = r
            .load_average_end
            .map_or("-".into(), |l| format!("{:.1}", l[0]));
        println!(
            "| {}{} | {} | {} / {} | {:.2} / {:.1} | {:.2} / {:.2} / {:.1} | {:.2} / {:.2} | {:.1} % | {:.2} / {:.1} | {} | {:.0} KiB | {} | {} |",
            mode(r),
            r.config
                .shard_size
                .filter(|_| !r.config.eot)
                .map_or(String::new(), |n| format!(" (shards of {n})")),
            r.config.calls,
            r.late_ticks,
            r.ticks,
            r.tick_lateness.p99,
            r.tick_lateness.max,
            r.tick_work.p50,
            r.tick_work.p99,
            r.tick_work.max,
            r.tick_cpu.p50,
            r.tick_cpu.p99,
            r.media_runqueue_wait_percent,
            r.pacing_jitter.p99,
            r.pacing_jitter.max,
            if r.config.eot {
                format!(
                    "{} / {} ({} of {} turns unanswered)",
                    ms_or_dash(&r.eot_request_to_decision, r.eot_request_to_decision.p50),
                    ms_or_dash(&r.eot_request_to_decision, r.eot_request_to_decision.p99),
                    r.end_of_turn_reasons
                        .get("ModelUnanswered")
                        .copied()
                        .unwrap_or(0),
                    r.user_turns
                )
            } else {
                "-".into()
            },
            r.kib_per_call_end,
            load,
            match (r.holds_strict, r.holds) {
                (true, _) => "yes",
                (false, true) => "yes (<= 0.1 % late ticks)",
                _ => "no",
            },
        );
    }
    if !capacity.is_empty() {
        println!("\n### Capacity: step search\n");
        println!("| endpointing | most calls held | least calls that failed |");
        println!("| --- | ---: | ---: |");
        for (mode, (held, failed)) in capacity {
            let show = |n: &Option<usize>| n.map_or("-".to_owned(), |n| n.to_string());
            println!("| {mode} | {} | {} |", show(held), show(failed));
        }
    }
    println!("\n### Pipecat 1.14, same machine kind (shared/research/pipecat-baseline.md)\n");
    println!(
        "| mode | sessions | VAD stop -> first bot audio p50 / p95 / p99 | real end of speech -> first bot audio p50 / p99 |"
    );
    println!("| --- | ---: | --- | --- |");
    println!("| vad | 1 | 5.2 / 8.4 / 9.6 ms | 240 / 268 ms (zero-latency fake services) |");
    println!("| vad | 10 | 6.4 / 10.1 / 11.3 ms | 242 / 268 ms |");
    println!("| default (Smart Turn) | 10 | 80 / 138 / 217 ms | 316 / 396 ms |");
    println!("| either | 50, 100 | overloaded | - |");
    println!(
        "\nPipecat capacity (input lag p99 < 20 ms): 14 sessions (VAD) / 4 (Smart Turn) per process, 36 / 6 with two processes; ~10.5 MB (VAD) / ~56 MB (Smart Turn) per session. Bot audio stopped 310-360 ms after the user's speech onset."
    );
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    callingbox_bench::trial::run_if_child(&args, run_trial);
    match run(&args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("engine_bench: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode, BoxError> {
    let options = parse_options(args)?;
    if options.smoke {
        let config = TrialConfig {
            calls: 5,
            eot: false,
            duration_s: 10.0,
            agent_threads: options.agent_threads,
            barge_every: options.barge_every,
            trace_call: options.trace_call,
            shard_size: options.shard_size,
        };
        let result = run_child(&config)?;
        print_tables(std::slice::from_ref(&result), &BTreeMap::new());
        if result.answered_turns == 0 {
            eprintln!("smoke: no turn was answered");
            return Ok(ExitCode::FAILURE);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let began = StdInstant::now();
    let mut model_costs = Vec::new();
    if options.calibrate || options.calibrate_only {
        let mut ids: Vec<&str> = STATEMENTS.to_vec();
        ids.push(INTERRUPTION);
        model_costs = calibrate(&load_clips(&ids)?)?;
        print_model_costs(&model_costs);
        if options.calibrate_only {
            return Ok(ExitCode::SUCCESS);
        }
    }
    let mut results = Vec::new();
    for (&calls, eot) in options
        .calls
        .iter()
        .map(|c| (c, false))
        .chain(options.eot_calls.iter().map(|c| (c, true)))
    {
        let config = TrialConfig {
            calls,
            eot,
            duration_s: options.duration_s,
            agent_threads: options.agent_threads,
            barge_every: options.barge_every,
            trace_call: options.trace_call,
            shard_size: options.shard_size,
        };
        results.push(run_child(&config)?);
    }
    let mut capacity = BTreeMap::new();
    if options.capacity {
        let known = results.clone();
        if !options.calls.is_empty() {
            let found = capacity_search(false, &known, &options, &mut results)?;
            capacity.insert("VAD-only".to_owned(), found);
        }
        if !options.eot_calls.is_empty() {
            let found = capacity_search(true, &known, &options, &mut results)?;
            capacity.insert("Smart Turn".to_owned(), found);
        }
    }
    print_tables(&results, &capacity);
    print_model_costs(&model_costs);
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/results/engine.json").to_owned());
    let capacity_json: BTreeMap<_, _> = capacity
        .iter()
        .map(|(mode, (held, failed))| {
            (
                mode.clone(),
                serde_json::json!({ "most_calls_held": held, "least_calls_failed": failed }),
            )
        })
        .collect();
    let document = serde_json::json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "wall_seconds": began.elapsed().as_secs_f64(),
        "providers": {
            "asr_final_delay_ms": ASR_FINAL_DELAY.as_millis() as u64,
            "asr_interim_per_word_ms": ASR_INTERIM_PER_WORD.as_millis() as u64,
            "llm_ttft_ms": LLM_TTFT.as_millis() as u64,
            "llm_tokens_per_second": LLM_TOKENS_PER_SECOND,
            "tts_ttfb_ms": TTS_TTFB.as_millis() as u64,
            "tts_real_time_factor": TTS_REAL_TIME_FACTOR,
        },
        "capacity": capacity_json,
        "model_costs": model_costs,
        "runs": results,
    });
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&document)? + "\n")?;
    eprintln!("wrote {out}");
    Ok(ExitCode::SUCCESS)
}
