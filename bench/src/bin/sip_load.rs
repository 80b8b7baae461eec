//! The SIP load benchmark: SIPp places N concurrent calls against the
//! engine over real sockets (loopback), and we find the most calls held
//! with no lost or late RTP and a pacing jitter p99 of at most 5 ms.
//!
//! What runs, in one child process per trial (`--child`, so memory and
//! threads start clean):
//!
//! * **The engine as a node runs it**: one `SipServer` on 127.0.0.1 (UDP),
//!   one `MediaWorker` on its own thread (`spawn_worker_thread`, named
//!   `media-worker`) with Silero VAD (`VadBatch::load_or_fallback(256)`, as
//!   `platform/src/node.rs`), and a tokio runtime of two threads for the SIP
//!   task, the per-call RTP tasks and the agent loops. Each call gets an
//!   agent on scripted providers (the pacing of `engine_bench`: LLM 250 ms
//!   to the first token then 50 tokens/s, a tone voice at 16 kHz with 100 ms
//!   to the first frame, a recognizer 150 ms after the speech ends). The
//!   agent greets the caller when the call is answered, as the platform's
//!   callee does, and answers each of the caller's turns.
//! * **SIPp does the signalling only** (`fixtures/sip/uac_load.xml`):
//!   INVITE, 100/180/200, ACK, the call held for a fixed time, BYE; `-l N
//!   -m N -r R`. Its SDP offers PCMU with rtcp-mux on a port taken from an
//!   injection file (`-inf`, `[field0]`): one UDP socket per call owned by
//!   this benchmark.
//! * **The callers are ours**, on one thread (`callers`, a single-threaded
//!   tokio runtime): each call's socket reads the agent's RTP and, once the
//!   first packet from the engine tells where the engine's RTP port is (the
//!   greeting), sends the caller's audio from the same socket every 20 ms
//!   (symmetric RTP: the engine answers to where the caller's audio comes
//!   from). A caller waits 3-5 s, says a fixture sentence (8 kHz mu-law),
//!   waits 4.5 s for the reply, says the next, and sends digital silence
//!   in between, as a phone keeps sending.
//!
//! Why our own sockets rather than SIPp's `rtp_stream`: SIPp streams audio
//! but does not record what it receives, and the figures that matter are
//! the engine's outbound RTP as it arrives: sequence gaps (lost), and the
//! arrival time of each packet against its ideal 20 ms schedule.
//!
//! What is measured, per trial:
//!
//! * **Calls**: SIPp's successful and failed calls (its final screen) and
//!   exit code; the engine's `SipEvent`s (rang, answered, ended by the
//!   caller's BYE); the most calls live at once (`SipServer::load()`).
//! * **Agent RTP at the caller**: packets received per call against the
//!   engine's count of packets sent (`RtpStats::sent`, its agent's audio,
//!   plus `silence_sent`, the comfort silence while the agent is quiet, at
//!   `SipEvent::Ended`):
//!   "missing" is the difference, "lost" the sequence gaps. **Pacing
//!   jitter**: in each talkspurt (from a marker bit to the next), every
//!   packet's arrival minus its ideal time (the first packet's arrival plus
//!   its RTP timestamp offset at 8 kHz), less the smallest such offset of
//!   the talkspurt: each packet's delay above the least delayed one, which
//!   is what the far end's jitter buffer must absorb (early packets only
//!   wait longer there). `engine_bench` measures from the talkspurt's first
//!   packet instead, engine-side; here one late first packet would make a
//!   whole talkspurt look early. The times are read at the receiving
//!   socket, so they include the RTP task's send, the loopback and our own
//!   wake-up (`Instant::now()` after the read: the workspace forbids the
//!   `unsafe` a kernel receive timestamp would need). A packet is **late**
//!   when that delay is over 20 ms.
//! * **Caller RTP at the engine**: what the call's `RtpStats` says at its
//!   end (audio received, the RTCP receiver's sequence loss and interarrival
//!   jitter of our stream), and the worker's counters of packets it dropped
//!   (its inbound channel full, or a call's outputs full).
//! * **Our own lateness**: how late the callers' 20 ms send ticks ran, and
//!   the share of time the `callers` and `media-worker` threads were
//!   runnable but waiting for a CPU (`/proc/.../schedstat`): on two shared
//!   cores, the load generator competes with the engine.
//! * **CPU and memory**: CPU seconds of the engine's threads, of the
//!   callers and of SIPp (the children's times in `/proc/self/stat`), as a
//!   share of the two cores over the run; RSS per call = (the highest RSS
//!   while calls were live - RSS before the first call) / calls.
//!
//! A trial **holds** when every call was answered and completed (SIPp: all
//! successful), all N were live at once, every call heard its agent, no
//! agent packet was lost, missing or late, the pacing jitter p99 is at
//! most 5 ms, and the engine lost or dropped none of the callers' packets
//! (a debug build, as `./dev test`'s smoke: p99 at most 10 ms and up to
//! 0.5 % of the packets late, see [`late_packets_allowed`]).
//! The step search (as `engine_bench`'s) grows the calls by half while a
//! trial holds and bisects between the most that held and the fewest that
//! failed. See `bench/README.md`, "SIP load".

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::{Command, ExitCode, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant as StdInstant};

use callingbox_bench::fixtures::{Clip, load_clips};
use callingbox_bench::paced_llm::PacedLlm;
use callingbox_bench::procfs::{
    ThreadSchedstat, cpu_seconds_by_thread_name, load_average, rss_bytes, thread_ids_named,
};
use callingbox_bench::stats::{Histogram, Summary};
use callingbox_engine::clock::Instant;
use callingbox_engine::codecs::SampleRate;
use callingbox_engine::conversation::{AgentConfig, AgentLoop, Providers};
use callingbox_engine::providers::AsrProvider;
use callingbox_engine::providers::scripted::{ScriptedAsr, ScriptedTts, TtsLatency};
use callingbox_engine::session::{CallMediaConfig, ConversationLink, MediaEvent, MediaWorker};
use callingbox_engine::transport::rtp::RtpStats;
use callingbox_engine::transport::sip::{
    IncomingCall, SipCallRefused, SipCallSetup, SipConfig, SipEnd, SipEvent, SipServer,
};
use callingbox_engine::transport::spawn_worker_thread;
use callingbox_engine::vad::VadBatch;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const TICK: Duration = Duration::from_millis(20);
/// An agent packet delayed more than a frame beyond its talkspurt's least delayed one is late.
const LATE_PACKET: Duration = TICK;
/// Pacing target: p99 of each agent packet's delay above its talkspurt's least delayed one.
const JITTER_TARGET_MS: f64 = 5.0;
/// The pacing target of this build. An unoptimized build (`./dev test`'s
/// smoke runs one) spreads the packets of 10 calls by 3-4 ms in its tick
/// alone, where a release build holds p99 near 2 ms, so there the bound is
/// looser; every other criterion is the same.
fn jitter_target_ms() -> f64 {
    if cfg!(debug_assertions) {
        JITTER_TARGET_DEBUG_MS
    } else {
        JITTER_TARGET_MS
    }
}
const JITTER_TARGET_DEBUG_MS: f64 = 10.0;
/// Late agent packets a trial may have: none in a release build. An
/// unoptimized build on a shared CI machine sees a single stall of the
/// process now and then (once in ~8 smoke runs here: 40 ms, one packet of
/// each call late), so there up to 0.5 % of the packets may be late: a
/// stall, not a pacing that slips.
fn late_packets_allowed(received: u64) -> u64 {
    if cfg!(debug_assertions) {
        received / 200
    } else {
        0
    }
}
/// The engine's RTP ports: one even port (and RTCP's odd one) per call,
/// below Linux's ephemeral range so our callers' sockets never take them.
const RTP_PORTS: std::ops::RangeInclusive<u16> = 20_000..=27_999;
/// The number SIPp calls.
const NUMBER: &str = "1000";
/// Calls per second SIPp starts at least; more for more calls, so the ramp
/// lasts at most [`RAMP_MAX_S`].
const RATE_MIN: usize = 10;
const RAMP_MAX_S: usize = 10;
/// A caller waits this long after the greeting starts, plus up to 2 s
/// (spread over the calls), before its first sentence.
const FIRST_WORDS_TICKS: u64 = 150;
/// Silence after each sentence: the agent's reply (~3 s) fits in it.
const REPLY_GAP_TICKS: u64 = 225;

// Provider latencies: the best published figures, as `engine_bench`.
const ASR_FINAL_DELAY: Duration = Duration::from_millis(150);
const ASR_INTERIM_PER_WORD: Duration = Duration::from_millis(200);
const LLM_TTFT: Duration = Duration::from_millis(250);
const LLM_TOKENS_PER_SECOND: u32 = 50;
const TTS_TTFB: Duration = Duration::from_millis(100);
const TTS_REAL_TIME_FACTOR: f64 = 0.1;

const GREETING: &str = "Hello, thanks for calling. How can I help you today?";
/// What callers say, one turn each (single sentences without long pauses).
const STATEMENTS: [&str; 5] = [
    "statement_book_table",
    "statement_billing",
    "statement_reschedule_delivery",
    "question_closing_time",
    "question_availability",
];
const SHORT_REPLIES: [&str; 4] = [
    "Sure. I can help you with that right away.",
    "Of course. Let me look that up for you.",
    "Got it. I have made a note of that.",
    "Okay. Is there anything else I can do?",
];
/// Sentences in each caller's script (more than any hold time needs).
const SCRIPT_ITEMS: usize = 40;
const SILENT_PAYLOAD: [u8; 160] = [0xFF; 160];

use callingbox_bench::trial::BoxError;

// ------------------------------------------------------------------ config

/// One trial, run in one child process.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrialConfig {
    calls: usize,
    /// Calls per second SIPp starts.
    rate: usize,
    /// Seconds all calls are up together (each call is held for the ramp
    /// plus this).
    steady_s: f64,
}

impl TrialConfig {
    fn new(calls: usize, steady_s: f64, rate: Option<usize>) -> Self {
        let rate = rate.unwrap_or_else(|| RATE_MIN.max(calls.div_ceil(RAMP_MAX_S)));
        TrialConfig {
            calls,
            rate: rate.max(1),
            steady_s,
        }
    }

    /// How long SIPp holds each call after its ACK.
    fn hold(&self) -> Duration {
        let ramp = Duration::from_secs_f64(self.calls as f64 / self.rate as f64);
        ramp + Duration::from_secs_f64(self.steady_s)
    }
}

// ------------------------------------------------------------------ scripts

/// A caller's script: the sentences it says, and the providers that know them.
struct Script {
    clips: Vec<usize>,
    asr: ScriptedAsr,
    llm: Arc<PacedLlm>,
}

fn build_scripts(clips: &[Clip]) -> Vec<Arc<Script>> {
    (0..STATEMENTS.len())
        .map(|variant| {
            let order: Vec<usize> = (0..SCRIPT_ITEMS)
                .map(|k| (variant + k) % STATEMENTS.len())
                .collect();
            let heard = order.iter().map(|&c| clips[c].text.clone()).collect();
            let replies = (0..SCRIPT_ITEMS)
                .map(|k| SHORT_REPLIES[(variant + k) % SHORT_REPLIES.len()].to_owned())
                .collect();
            Arc::new(Script {
                clips: order,
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

// ------------------------------------------------------------------ engine side

/// How one call went, as the engine saw it.
#[derive(Debug)]
struct CallReport {
    /// The caller's media port (which of our sockets).
    caller_port: u16,
    answered: bool,
    reason: SipEnd,
    rtp: RtpStats,
    user_turns: u64,
    agent_talkspurts: u64,
}

/// Sets up each call the SIP server answers: an agent on scripted
/// providers, and a task that greets on the answer and reports the end.
struct Calls {
    scripts: Vec<Arc<Script>>,
    tts: Arc<ScriptedTts>,
    http: reqwest::Client,
    /// Our socket's port -> the caller's index (its script).
    slots: Arc<HashMap<u16, usize>>,
    reports: mpsc::UnboundedSender<CallReport>,
    rang: Arc<AtomicUsize>,
}

impl Calls {
    fn open(&self, call: &IncomingCall) -> Result<SipCallSetup, SipCallRefused> {
        let caller_port = call.media.remote_rtp.port();
        let refuse = |reason: String| SipCallRefused {
            status: 503,
            reason,
        };
        let slot = *self
            .slots
            .get(&caller_port)
            .ok_or_else(|| refuse(format!("no caller owns port {caller_port}")))?;
        let script = &self.scripts[slot % self.scripts.len()];
        let (audio_tx, agent_audio) = mpsc::channel(64);
        let providers = Providers {
            llm: Arc::clone(&script.llm) as _,
            tts: Arc::clone(&self.tts) as _,
        };
        let config = AgentConfig {
            http_client: Some(self.http.clone()),
            ..AgentConfig::default()
        };
        let (agent, mut agent_events) = AgentLoop::spawn(config, providers, audio_tx);
        let cancel = CancellationToken::new();
        let asr = script
            .asr
            .open(cancel.clone())
            .map_err(|e| refuse(e.to_string()))?;
        let epoch = agent.clock().to_tokio(Instant::ZERO).into_std();
        let speaker = agent.speaker();
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let reports = self.reports.clone();
        self.rang.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let (mut answered, mut user_turns, mut agent_talkspurts) = (false, 0, 0);
            loop {
                tokio::select! {
                    // The agent's transcript and status events are not
                    // needed here, but must be read (the channel is unbounded).
                    Some(_) = agent_events.recv() => {}
                    event = events.recv() => match event {
                        Some(SipEvent::Answered) => {
                            answered = true;
                            speaker.say(GREETING);
                        }
                        Some(SipEvent::Media(MediaEvent::UserTurnEnded { .. })) => user_turns += 1,
                        Some(SipEvent::Media(MediaEvent::AgentAudioStarted { .. })) => {
                            agent_talkspurts += 1;
                        }
                        Some(SipEvent::Ended { reason, rtp }) => {
                            let _ = reports.send(CallReport {
                                caller_port,
                                answered,
                                reason,
                                rtp,
                                user_turns,
                                agent_talkspurts,
                            });
                            break;
                        }
                        Some(_) => {}
                        None => break,
                    },
                }
            }
        });
        Ok(SipCallSetup {
            // PCMU both ways, the voice at 16 kHz (the outbound path
            // resamples), cues deciding the end of turn: as a node without
            // the end-of-turn model.
            media: CallMediaConfig::phone(false),
            link: Some(ConversationLink {
                agent,
                asr,
                agent_audio,
            }),
            epoch,
            events: Some(events_tx),
            cancel,
            tap: None,
        })
    }
}

// ------------------------------------------------------------------ caller side

#[derive(Debug, Clone, Copy)]
enum Speech {
    /// Digital silence for this many more ticks.
    Silence(u64),
    /// Saying `clips[item]`, at byte `pos`.
    Playing { item: usize, pos: usize },
}

/// One caller: its socket's view of the engine and its side of the talk.
struct Caller {
    script: Arc<Script>,
    /// The engine's RTP address, learned from its first packet.
    peer: Option<SocketAddr>,
    speech: Speech,
    item: usize,
    // Our stream.
    ssrc: u32,
    sequence: u16,
    timestamp: u32,
    sent: u64,
    send_failed: u64,
    // The agent's stream.
    received: u64,
    rtcp_received: u64,
    foreign: u64,
    last_sequence: Option<u16>,
    gaps: u64,
    duplicates_or_reordered: u64,
    /// Arrival and RTP timestamp of the current talkspurt's first packet.
    spurt: Option<(StdInstant, u32)>,
    /// Each packet of the current talkspurt: arrival - ideal, in ns.
    offsets: Vec<i64>,
    late: u64,
}

impl Caller {
    fn new(index: usize, script: Arc<Script>) -> Self {
        Caller {
            script,
            peer: None,
            speech: Speech::Silence(FIRST_WORDS_TICKS + (index as u64 * 37) % 100),
            item: 0,
            ssrc: 0x5EED_0000 ^ index as u32,
            sequence: (index as u16).wrapping_mul(977),
            timestamp: (index as u32).wrapping_mul(7_919),
            sent: 0,
            send_failed: 0,
            received: 0,
            rtcp_received: 0,
            foreign: 0,
            last_sequence: None,
            gaps: 0,
            duplicates_or_reordered: 0,
            spurt: None,
            // A talkspurt of 20 s fits without growing.
            offsets: Vec::with_capacity(1_000),
            late: 0,
        }
    }

    /// One datagram from the engine, read at `at`.
    fn on_datagram(
        &mut self,
        at: StdInstant,
        from: SocketAddr,
        datagram: &[u8],
        jitter: &mut Histogram,
    ) {
        if datagram.len() < 12 || datagram[0] >> 6 != 2 {
            return;
        }
        if *self.peer.get_or_insert(from) != from {
            self.foreign += 1;
            return;
        }
        // rtcp-mux: RTCP packet types 200-204 sit where RTP has marker + type.
        if (200..=204).contains(&datagram[1]) {
            self.rtcp_received += 1;
            return;
        }
        if datagram[1] & 0x7F != 0 {
            return;
        }
        let marker = datagram[1] & 0x80 != 0;
        let sequence = u16::from_be_bytes([datagram[2], datagram[3]]);
        let timestamp = u32::from_be_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]);
        self.received += 1;
        if let Some(last) = self.last_sequence {
            let step = sequence.wrapping_sub(last);
            if step == 0 || step >= 0x8000 {
                self.duplicates_or_reordered += 1;
                return;
            }
            self.gaps += u64::from(step - 1);
        }
        self.last_sequence = Some(sequence);
        if marker || self.spurt.is_none() {
            self.flush_talkspurt(jitter);
            self.spurt = Some((at, timestamp));
        }
        let Some((first_at, first_timestamp)) = self.spurt else {
            return;
        };
        // Arrival minus the ideal time counted from the first packet, in
        // ns (signed: the first packet may itself have been the late one).
        let ideal = u64::from(timestamp.wrapping_sub(first_timestamp)) * 1_000_000 / 8;
        let arrived = at.duration_since(first_at).as_nanos() as i64;
        self.offsets.push(arrived - ideal as i64);
    }

    /// Scores the talkspurt just ended: each packet's delay above the
    /// least delayed packet of the talkspurt (what the far end's jitter
    /// buffer must absorb).
    fn flush_talkspurt(&mut self, jitter: &mut Histogram) {
        let Some(&least) = self.offsets.iter().min() else {
            return;
        };
        for &offset in &self.offsets {
            let delay = Duration::from_nanos((offset - least) as u64);
            if delay > LATE_PACKET {
                self.late += 1;
            }
            jitter.record(delay);
        }
        self.offsets.clear();
    }

    /// The next 20 ms of the caller's audio as an RTP packet in `out`.
    fn next_packet(&mut self, clips: &[Clip], out: &mut [u8; 172]) {
        let mut marker = false;
        let payload: &[u8] = match self.speech {
            Speech::Silence(left) => {
                self.speech = if left <= 1 {
                    marker = true;
                    Speech::Playing {
                        item: self.item,
                        pos: 0,
                    }
                } else {
                    Speech::Silence(left - 1)
                };
                &SILENT_PAYLOAD
            }
            Speech::Playing { item, pos } => {
                let clip = &clips[self.script.clips[item % self.script.clips.len()]].ulaw;
                let end = (pos + 160).min(clip.len());
                out[12..12 + (end - pos)].copy_from_slice(&clip[pos..end]);
                out[12 + (end - pos)..].fill(0xFF);
                if end >= clip.len() {
                    self.item += 1;
                    self.speech = Speech::Silence(REPLY_GAP_TICKS);
                } else {
                    self.speech = Speech::Playing { item, pos: end };
                }
                &[]
            }
        };
        if !payload.is_empty() {
            out[12..].copy_from_slice(payload);
        }
        out[0] = 0x80;
        out[1] = if marker { 0x80 } else { 0 };
        out[2..4].copy_from_slice(&self.sequence.to_be_bytes());
        out[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(160);
    }
}

/// What the callers saw, per caller port.
#[derive(Debug, Default)]
struct CallersReport {
    by_port: HashMap<u16, CallerFigures>,
    jitter: Histogram,
    send_lateness: Histogram,
    /// Share of the callers thread's time runnable but off a CPU.
    waiting_percent: f64,
}

#[derive(Debug, Clone, Copy, Default)]
struct CallerFigures {
    sent: u64,
    send_failed: u64,
    received: u64,
    rtcp_received: u64,
    foreign: u64,
    gaps: u64,
    duplicates_or_reordered: u64,
    late: u64,
}

/// Runs every caller on this thread until `stop`.
fn run_callers(
    sockets: Vec<std::net::UdpSocket>,
    scripts: Vec<Arc<Script>>,
    clips: Arc<Vec<Clip>>,
    stop: CancellationToken,
) -> Result<CallersReport, BoxError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let mut schedstat = ThreadSchedstat::open();
    let sched_start = schedstat.as_mut().and_then(ThreadSchedstat::read);
    let wall_start = StdInstant::now();
    let mut ports = Vec::with_capacity(sockets.len());
    let (callers, jitter, lateness) = local.block_on(&runtime, async {
        let jitter = Rc::new(RefCell::new(Histogram::default()));
        let mut callers = Vec::with_capacity(sockets.len());
        for (index, socket) in sockets.into_iter().enumerate() {
            ports.push(socket.local_addr()?.port());
            socket.set_nonblocking(true)?;
            let socket = Rc::new(tokio::net::UdpSocket::from_std(socket)?);
            let caller = Rc::new(RefCell::new(Caller::new(
                index,
                Arc::clone(&scripts[index % scripts.len()]),
            )));
            let (reader, state, jitter, stop) = (
                Rc::clone(&socket),
                Rc::clone(&caller),
                Rc::clone(&jitter),
                stop.clone(),
            );
            tokio::task::spawn_local(async move {
                let mut buffer = [0u8; 1500];
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        read = reader.recv_from(&mut buffer) => match read {
                            Ok((length, from)) => state.borrow_mut().on_datagram(
                                StdInstant::now(),
                                from,
                                &buffer[..length],
                                &mut jitter.borrow_mut(),
                            ),
                            // ICMP port unreachable from an engine port
                            // already closed: keep reading.
                            Err(_) => continue,
                        },
                    }
                }
            });
            callers.push((socket, caller));
        }
        // One sender for all callers on an absolute 20 ms schedule; a tick
        // that falls behind is followed at once by the next (a phone's
        // audio keeps real time).
        let mut lateness = Histogram::default();
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut packet = [0u8; 172];
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                deadline = ticker.tick() => {
                    lateness.record(tokio::time::Instant::now().saturating_duration_since(deadline));
                    for (socket, caller) in &callers {
                        let mut caller = caller.borrow_mut();
                        let Some(peer) = caller.peer else { continue };
                        caller.next_packet(&clips, &mut packet);
                        match socket.try_send_to(&packet, peer) {
                            Ok(_) => caller.sent += 1,
                            Err(_) => caller.send_failed += 1,
                        }
                    }
                }
            }
        }
        for (_, caller) in &callers {
            caller.borrow_mut().flush_talkspurt(&mut jitter.borrow_mut());
        }
        Ok::<_, BoxError>((callers, jitter, lateness))
    })?;
    let wall = wall_start.elapsed();
    let waiting_percent = match (
        sched_start,
        schedstat.as_mut().and_then(ThreadSchedstat::read),
    ) {
        (Some((_, waited_before)), Some((_, waited_after))) => {
            100.0 * (waited_after - waited_before).as_secs_f64() / wall.as_secs_f64()
        }
        _ => 0.0,
    };
    let by_port = ports
        .into_iter()
        .zip(&callers)
        .map(|(port, (_, caller))| {
            let c = caller.borrow();
            (
                port,
                CallerFigures {
                    sent: c.sent,
                    send_failed: c.send_failed,
                    received: c.received,
                    rtcp_received: c.rtcp_received,
                    foreign: c.foreign,
                    gaps: c.gaps,
                    duplicates_or_reordered: c.duplicates_or_reordered,
                    late: c.late,
                },
            )
        })
        .collect();
    let jitter = jitter.borrow().clone();
    Ok(CallersReport {
        by_port,
        jitter,
        send_lateness: lateness,
        waiting_percent,
    })
}

// ------------------------------------------------------------------ one trial

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct TrialResult {
    config: Option<TrialConfig>,
    hold_ms: u64,
    vad: String,
    sipp_exit: Option<i32>,
    sipp_successful: Option<u64>,
    sipp_failed: Option<u64>,
    rang: u64,
    answered: u64,
    /// Ended by the caller's BYE, as the scenario does.
    completed: u64,
    /// Other ends, by reason.
    ended_otherwise: BTreeMap<String, u64>,
    peak_live_calls: u64,
    calls_with_agent_audio: u64,
    user_turns: u64,
    agent_talkspurts: u64,
    agent_packets_sent: u64,
    agent_packets_received: u64,
    /// Sent by the engine, never read by the caller.
    agent_packets_missing: u64,
    /// Sequence gaps seen by the callers.
    agent_packets_lost: u64,
    agent_packets_late: u64,
    agent_duplicates_or_reordered: u64,
    agent_send_errors: u64,
    /// RTCP reports from the engine (muxed on the RTP port).
    agent_rtcp_received: u64,
    pacing_jitter: Summary,
    caller_packets_sent: u64,
    caller_send_failed: u64,
    caller_send_lateness: Summary,
    engine_audio_received: u64,
    /// The RTCP receiver's cumulative loss of the callers' streams.
    engine_inbound_lost: i64,
    /// The highest RFC 3550 interarrival jitter of a caller's stream, ms.
    engine_inbound_jitter_max_ms: f64,
    worker_inbound_dropped: u64,
    worker_outputs_dropped: u64,
    wall_s: f64,
    /// CPU seconds by thread group: engine (media-worker), engine (runtime),
    /// callers, others in this process, and SIPp.
    cpu_s: BTreeMap<String, f64>,
    /// All of it as a share of the two cores over the run.
    cpu_percent_of_machine: f64,
    media_worker_waiting_percent: f64,
    callers_waiting_percent: f64,
    rss_base_mib: f64,
    kib_per_call: f64,
    load_average_start: Option<[f64; 3]>,
    load_average_end: Option<[f64; 3]>,
    holds: bool,
    /// Why it did not hold.
    failures: Vec<String>,
}

/// Time on a CPU and waiting for one, of this process's thread `tid`.
fn schedstat_of(tid: u32) -> Option<(Duration, Duration)> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    Some((
        Duration::from_nanos(fields.next()??),
        Duration::from_nanos(fields.next()??),
    ))
}

/// CPU seconds of the waited-for children (`cutime + cstime` in `/proc/self/stat`).
fn children_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    // After the name, state is field 3; cutime is field 16, cstime 17.
    let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<f64>().ok());
    Some((ticks(16)? + ticks(17)?) / 100.0)
}

/// The cumulative count on the line of SIPp's final screen starting with `label`.
fn sipp_count(stdout: &str, label: &str) -> Option<u64> {
    stdout
        .lines()
        .rev()
        .find(|line| line.trim_start().starts_with(label))?
        .split('|')
        .filter_map(|cell| cell.trim().parse::<u64>().ok())
        .next_back()
}

fn fixtures(dir: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fixtures")
        .join(dir)
}

/// A UDP port free right now on loopback (for SIPp's own sockets).
fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn run_trial(config: &TrialConfig) -> Result<TrialResult, BoxError> {
    // Per call: our socket, the engine's RTP and RTCP sockets, a few spare.
    let needed = config.calls as u64 * 3 + 256;
    if let Some(limit) = open_files_limit()
        && limit < needed
    {
        return Err(format!(
            "{} calls need ~{needed} open files, the limit is {limit} (raise it: ulimit -n {needed})",
            config.calls
        )
        .into());
    }
    let clips = Arc::new(load_clips(&STATEMENTS)?);
    let scripts = build_scripts(&clips);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("engine-rt")
        .enable_all()
        .build()?;

    let vad = VadBatch::load_or_fallback(256);
    let vad_name = match vad.fallback_reason() {
        None => "silero".to_owned(),
        Some(reason) => format!("energy fallback ({reason})"),
    };
    let (worker, _media_thread) = spawn_worker_thread(MediaWorker::new(vad, None), "media-worker")?;

    let mut sockets = Vec::with_capacity(config.calls);
    let mut slots = HashMap::with_capacity(config.calls);
    for index in 0..config.calls {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        slots.insert(socket.local_addr()?.port(), index);
        sockets.push(socket);
    }
    let ports: Vec<u16> = sockets
        .iter()
        .map(|s| s.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?;

    let (reports_tx, mut reports) = mpsc::unbounded_channel();
    let rang = Arc::new(AtomicUsize::new(0));
    let calls = Arc::new(Calls {
        scripts: scripts.clone(),
        tts: Arc::new(ScriptedTts::new(
            SampleRate::Hz16000,
            TtsLatency {
                time_to_first_byte: TTS_TTFB,
                real_time_factor: TTS_REAL_TIME_FACTOR,
                speech_per_char: Duration::from_millis(60),
            },
        )),
        http: reqwest::Client::new(),
        slots: Arc::new(slots),
        reports: reports_tx,
        rang: Arc::clone(&rang),
    });
    let (sip_addr, load) = runtime.block_on(async {
        let mut sip = SipConfig::new("127.0.0.1:0".parse()?);
        sip.rtp_ports = RTP_PORTS;
        sip.numbers = vec![NUMBER.into()];
        sip.tcp = false;
        let factory = {
            let calls = Arc::clone(&calls);
            move |call: &IncomingCall| calls.open(call)
        };
        let server = SipServer::bind(sip, worker.clone(), factory).await?;
        let addr = server.local_addr();
        let load = server.load();
        tokio::spawn(server.run());
        Ok::<_, BoxError>((addr, load))
    })?;

    let stop_callers = CancellationToken::new();
    let callers = {
        let (scripts, clips, stop) = (scripts.clone(), Arc::clone(&clips), stop_callers.clone());
        std::thread::Builder::new()
            .name("callers".into())
            .spawn(move || run_callers(sockets, scripts, clips, stop))?
    };

    // SIPp's injection file: one of our ports per call, in order.
    let dir = std::env::temp_dir().join(format!("sip_load-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let injection = dir.join("ports.csv");
    let mut csv = String::from("SEQUENTIAL\n");
    for port in &ports {
        csv.push_str(&format!("{port};\n"));
    }
    std::fs::write(&injection, csv)?;

    let rss_base = rss_bytes().unwrap_or(0);
    let load_average_start = load_average();
    let cpu_before = cpu_seconds_by_thread_name();
    let children_before = children_cpu_seconds().unwrap_or(0.0);
    let media_tid = thread_ids_named("media-worker").first().copied();
    let media_sched_before = media_tid.and_then(schedstat_of);
    let started = StdInstant::now();

    // While SIPp runs: the most calls live at once, and the RSS then.
    let monitoring = Arc::new(AtomicBool::new(true));
    let monitor = {
        let (monitoring, load) = (Arc::clone(&monitoring), load.clone());
        std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || {
                let (mut peak, mut rss_peak) = (0usize, 0u64);
                while monitoring.load(Ordering::Relaxed) {
                    peak = peak.max(load.live_calls());
                    rss_peak = rss_peak.max(rss_bytes().unwrap_or(0));
                    std::thread::sleep(Duration::from_millis(100));
                }
                (peak, rss_peak)
            })?
    };

    let hold = config.hold();
    let timeout = hold + Duration::from_secs(60);
    let output = Command::new("sipp")
        .current_dir(&dir)
        .arg(sip_addr.to_string())
        .arg("-sf")
        .arg(fixtures("sip").join("uac_load.xml"))
        .arg("-inf")
        .arg(&injection)
        .args(["-s", NUMBER, "-i", "127.0.0.1", "-mi", "127.0.0.1"])
        .args(["-p", &free_port()?.to_string()])
        .args(["-mp", &free_port()?.to_string()])
        .args([
            "-l",
            &config.calls.to_string(),
            "-m",
            &config.calls.to_string(),
        ])
        .args(["-r", &config.rate.to_string(), "-rp", "1000"])
        .args(["-d", &hold.as_millis().to_string()])
        .args(["-nostdin", "-timeout", &format!("{}s", timeout.as_secs())])
        .arg("-timeout_error")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running sipp (apt-get install sip-tester): {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);

    // The engine's side of each call, until every call has ended.
    let mut engine_reports = Vec::with_capacity(config.calls);
    let deadline = StdInstant::now() + Duration::from_secs(15);
    runtime.block_on(async {
        while engine_reports.len() < rang.load(Ordering::Relaxed)
            || load.live_calls() + load.calls_in_setup() > 0
        {
            let left = deadline.saturating_duration_since(StdInstant::now());
            match tokio::time::timeout(left, reports.recv()).await {
                Ok(Some(report)) => engine_reports.push(report),
                Ok(None) | Err(_) => break,
            }
        }
        // The last agent packets and RTCP byes still in flight.
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
    let wall = started.elapsed();
    monitoring.store(false, Ordering::Relaxed);
    let (peak_live, rss_peak) = monitor.join().map_err(|_| "the monitor thread panicked")?;
    let cpu_after = cpu_seconds_by_thread_name();
    let children_after = children_cpu_seconds().unwrap_or(children_before);
    let media_sched_after = media_tid.and_then(schedstat_of);
    let load_average_end = load_average();
    stop_callers.cancel();
    let callers = callers
        .join()
        .map_err(|_| "the callers thread panicked")??;
    let _ = std::fs::remove_dir_all(&dir);

    let mut result = TrialResult {
        config: Some(config.clone()),
        hold_ms: hold.as_millis() as u64,
        vad: vad_name,
        sipp_exit: output.status.code(),
        sipp_successful: sipp_count(&stdout, "Successful call"),
        sipp_failed: sipp_count(&stdout, "Failed call"),
        rang: rang.load(Ordering::Relaxed) as u64,
        peak_live_calls: peak_live as u64,
        wall_s: wall.as_secs_f64(),
        pacing_jitter: callers.jitter.summary(),
        caller_send_lateness: callers.send_lateness.summary(),
        callers_waiting_percent: callers.waiting_percent,
        worker_inbound_dropped: worker.inbound_dropped(),
        worker_outputs_dropped: worker.outputs_dropped(),
        rss_base_mib: rss_base as f64 / (1024.0 * 1024.0),
        kib_per_call: rss_peak.saturating_sub(rss_base) as f64 / 1024.0 / config.calls as f64,
        load_average_start,
        load_average_end,
        ..TrialResult::default()
    };
    if let (Some((_, before)), Some((_, after))) = (media_sched_before, media_sched_after) {
        result.media_worker_waiting_percent =
            100.0 * (after - before).as_secs_f64() / wall.as_secs_f64();
    }
    let mut jitter_max = Duration::ZERO;
    for report in &engine_reports {
        result.answered += u64::from(report.answered);
        match &report.reason {
            SipEnd::RemoteBye => result.completed += 1,
            other => {
                *result
                    .ended_otherwise
                    .entry(format!("{other:?}"))
                    .or_insert(0) += 1
            }
        }
        result.user_turns += report.user_turns;
        result.agent_talkspurts += report.agent_talkspurts;
        // The agent's audio and the comfort silence between: all of it
        // is RTP the caller must receive on time.
        let sent = report.rtp.sent + report.rtp.silence_sent;
        result.agent_packets_sent += sent;
        result.agent_send_errors += report.rtp.send_errors;
        result.engine_audio_received += report.rtp.audio_received;
        result.engine_inbound_lost += report.rtp.rtcp.lost.max(0);
        jitter_max = jitter_max.max(report.rtp.rtcp.jitter_max);
        let heard = callers.by_port.get(&report.caller_port);
        let received = heard.map_or(0, |c| c.received);
        result.agent_packets_missing += sent.saturating_sub(received);
        result.calls_with_agent_audio += u64::from(received > 0);
    }
    result.engine_inbound_jitter_max_ms = jitter_max.as_secs_f64() * 1e3;
    let mut foreign = 0;
    for figures in callers.by_port.values() {
        result.agent_packets_received += figures.received;
        result.agent_packets_lost += figures.gaps;
        result.agent_packets_late += figures.late;
        result.agent_duplicates_or_reordered += figures.duplicates_or_reordered;
        result.caller_packets_sent += figures.sent;
        result.caller_send_failed += figures.send_failed;
        foreign += figures.foreign;
        result.agent_rtcp_received += figures.rtcp_received;
    }
    let cpu_delta = |name: &str| {
        cpu_after.get(name).copied().unwrap_or(0.0) - cpu_before.get(name).copied().unwrap_or(0.0)
    };
    let total_after: f64 = cpu_after.values().sum();
    let total_before: f64 = cpu_before.values().sum();
    let grouped = ["media-worker", "engine-rt", "callers"];
    let mut cpu = BTreeMap::new();
    for name in grouped {
        cpu.insert(name.to_owned(), cpu_delta(name));
    }
    let named: f64 = grouped.iter().map(|n| cpu_delta(n)).sum();
    cpu.insert(
        "other threads".to_owned(),
        total_after - total_before - named,
    );
    cpu.insert("sipp".to_owned(), children_after - children_before);
    result.cpu_percent_of_machine = 100.0 * cpu.values().sum::<f64>() / (2.0 * wall.as_secs_f64());
    result.cpu_s = cpu;

    // The criteria.
    let n = config.calls as u64;
    let mut failures = Vec::new();
    let mut check = |ok: bool, why: String| {
        if !ok {
            failures.push(why);
        }
    };
    check(
        result.sipp_exit == Some(0),
        format!("SIPp exited with {:?}", result.sipp_exit),
    );
    check(
        result.sipp_successful.is_none_or(|s| s == n) && result.sipp_failed.is_none_or(|f| f == 0),
        format!(
            "SIPp: {:?} successful, {:?} failed",
            result.sipp_successful, result.sipp_failed
        ),
    );
    check(
        result.answered == n && result.completed == n,
        format!(
            "{} answered, {} completed by the caller's BYE, of {n} (other ends: {:?})",
            result.answered, result.completed, result.ended_otherwise
        ),
    );
    check(
        result.peak_live_calls == n,
        format!("at most {} calls were live at once", result.peak_live_calls),
    );
    check(
        result.calls_with_agent_audio == n,
        format!("{} calls heard their agent", result.calls_with_agent_audio),
    );
    check(
        result.agent_packets_lost + result.agent_packets_missing + result.agent_send_errors == 0,
        format!(
            "agent RTP: {} lost (sequence gaps), {} missing, {} send errors",
            result.agent_packets_lost, result.agent_packets_missing, result.agent_send_errors
        ),
    );
    let late_allowed = late_packets_allowed(result.agent_packets_received);
    check(
        result.agent_packets_late <= late_allowed,
        format!(
            "{} agent packets arrived more than 20 ms late (at most {late_allowed})",
            result.agent_packets_late
        ),
    );
    check(
        result.pacing_jitter.n > 0 && result.pacing_jitter.p99 <= jitter_target_ms(),
        format!(
            "pacing jitter p99 {:.2} ms (target {} ms)",
            result.pacing_jitter.p99,
            jitter_target_ms()
        ),
    );
    check(
        result.engine_inbound_lost == 0
            && result.worker_inbound_dropped == 0
            && result.worker_outputs_dropped == 0
            && result.caller_send_failed == 0,
        format!(
            "caller RTP: {} lost at the engine, {} dropped by the worker, {} outputs dropped, {} not sent",
            result.engine_inbound_lost,
            result.worker_inbound_dropped,
            result.worker_outputs_dropped,
            result.caller_send_failed
        ),
    );
    check(
        foreign == 0,
        format!("{foreign} packets from an unexpected address"),
    );
    if !failures.is_empty() && result.sipp_exit != Some(0) {
        let tail: Vec<&str> = stdout.lines().rev().take(40).collect();
        eprintln!(
            "SIPp's last screen:\n{}\nstderr: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    result.holds = failures.is_empty();
    result.failures = failures;
    // Tearing down the runtime would wait for agent tasks; the process ends instead.
    std::mem::forget(runtime);
    Ok(result)
}

// ------------------------------------------------------------------ parent

fn run_child(config: &TrialConfig) -> Result<TrialResult, BoxError> {
    eprintln!(
        "== {} calls at {} calls/s, each held {:.1} s",
        config.calls,
        config.rate,
        config.hold().as_secs_f64()
    );
    let result: TrialResult = callingbox_bench::trial::run_in_child(config)?;
    eprintln!(
        "   answered {} completed {}, agent packets {} (lost {}, missing {}, late {}), jitter p99 {:.2} ms, cpu {:.0} %, holds: {}",
        result.answered,
        result.completed,
        result.agent_packets_received,
        result.agent_packets_lost,
        result.agent_packets_missing,
        result.agent_packets_late,
        result.pacing_jitter.p99,
        result.cpu_percent_of_machine,
        result.holds
    );
    for failure in &result.failures {
        eprintln!("   - {failure}");
    }
    Ok(result)
}

struct Options {
    calls: Vec<usize>,
    steady_s: f64,
    rate: Option<usize>,
    capacity: bool,
    capacity_trials: usize,
    smoke: bool,
    out: Option<String>,
}

const HELP: &str = "sip_load: SIPp places N concurrent calls against the engine over loopback

  --calls 50,150         trials run first (then the step search)
  --steady 20            seconds all calls are up together, per trial
  --rate R               calls per second SIPp starts (default: N/10, at least 10)
  --no-capacity          skip the step search
  --capacity-trials 6    trials of the step search at most
  --out PATH             JSON output (default bench/results/sip_load.json)
  --smoke                10 calls for 5 s; exits 1 unless every criterion holds
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
        calls: vec![50, 150],
        steady_s: 20.0,
        rate: None,
        capacity: true,
        capacity_trials: 6,
        smoke: false,
        out: None,
    };
    let mut args = args.iter();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--calls" => options.calls = parse_list(value()?)?,
            "--steady" => options.steady_s = value()?.parse()?,
            "--rate" => options.rate = Some(value()?.parse()?),
            "--no-capacity" => options.capacity = false,
            "--capacity-trials" => options.capacity_trials = value()?.parse()?,
            "--out" => options.out = Some(value()?.clone()),
            "--smoke" => options.smoke = true,
            "--help" | "-h" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown flag {other}\n{HELP}").into()),
        }
    }
    Ok(options)
}

/// Step search for the most calls held, from the trials already run.
fn capacity_search(
    options: &Options,
    results: &mut Vec<TrialResult>,
) -> Result<(Option<usize>, Option<usize>), BoxError> {
    let mut outcomes: Vec<(usize, bool)> = results
        .iter()
        .filter_map(|r| Some((r.config.as_ref()?.calls, r.holds)))
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
        let next = match bounds(&outcomes) {
            (Some(h), None) => h * 3 / 2,
            (None, Some(f)) if f > 1 => f / 2,
            (Some(h), Some(f)) if f > h + h / 10 + 1 => (h + f) / 2,
            (None, None) => 100,
            _ => break,
        };
        let result = run_child(&TrialConfig::new(next, options.steady_s, options.rate))?;
        outcomes.push((next, result.holds));
        results.push(result);
    }
    Ok(bounds(&outcomes))
}

fn print_tables(results: &[TrialResult], capacity: Option<(Option<usize>, Option<usize>)>) {
    println!("\n### SIP load: every trial\n");
    println!(
        "| calls | calls/s | held s | SIPp ok / failed | answered / completed | peak live | agent packets (sent) | lost / missing / late | pacing jitter p50 / p99 / max ms | engine: caller packets in / lost / dropped | caller tick lateness p99 ms | turns | CPU (media / engine-rt / callers / SIPp) | threads waiting for a CPU (media / callers) | RSS per call | load avg | holds |"
    );
    println!(
        "| ---: | ---: | ---: | --- | --- | ---: | --- | --- | --- | --- | ---: | ---: | --- | --- | ---: | --- | --- |"
    );
    let show = |n: Option<u64>| n.map_or("-".to_owned(), |n| n.to_string());
    for r in results {
        let Some(config) = &r.config else { continue };
        let cpu = |name: &str| {
            100.0 * r.cpu_s.get(name).copied().unwrap_or(0.0) / (2.0 * r.wall_s.max(1e-9))
        };
        println!(
            "| {} | {} | {:.1} | {} / {} | {} / {} | {} | {} ({}) | {} / {} / {} | {:.2} / {:.2} / {:.1} | {} / {} / {} | {:.2} | {} | {:.0} % ({:.0} / {:.0} / {:.0} / {:.0}) | {:.1} % / {:.1} % | {:.0} KiB | {} | {} |",
            config.calls,
            config.rate,
            r.hold_ms as f64 / 1e3,
            show(r.sipp_successful),
            show(r.sipp_failed),
            r.answered,
            r.completed,
            r.peak_live_calls,
            r.agent_packets_received,
            r.agent_packets_sent,
            r.agent_packets_lost,
            r.agent_packets_missing,
            r.agent_packets_late,
            r.pacing_jitter.p50,
            r.pacing_jitter.p99,
            r.pacing_jitter.max,
            r.engine_audio_received,
            r.engine_inbound_lost,
            r.worker_inbound_dropped,
            r.caller_send_lateness.p99,
            r.user_turns,
            r.cpu_percent_of_machine,
            cpu("media-worker"),
            cpu("engine-rt"),
            cpu("callers"),
            cpu("sipp"),
            r.media_worker_waiting_percent,
            r.callers_waiting_percent,
            r.kib_per_call,
            r.load_average_end
                .map_or("-".into(), |l| format!("{:.1}", l[0])),
            if r.holds { "yes" } else { "no" },
        );
    }
    if let Some((held, failed)) = capacity {
        let show = |n: Option<usize>| n.map_or("-".to_owned(), |n| n.to_string());
        println!("\n### SIP load: step search\n");
        println!("| most calls held | least calls that failed |");
        println!("| ---: | ---: |");
        println!("| {} | {} |", show(held), show(failed));
    }
}

fn write_results(
    out: &str,
    results: &[TrialResult],
    capacity: Option<(Option<usize>, Option<usize>)>,
    began: StdInstant,
) -> Result<(), BoxError> {
    let document = serde_json::json!({
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "wall_seconds": began.elapsed().as_secs_f64(),
        "machine": {
            "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "cpu_model": std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|info| {
                info.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|m| m.trim().to_owned())
            }),
        },
        "providers": {
            "asr_final_delay_ms": ASR_FINAL_DELAY.as_millis() as u64,
            "llm_ttft_ms": LLM_TTFT.as_millis() as u64,
            "llm_tokens_per_second": LLM_TOKENS_PER_SECOND,
            "tts_ttfb_ms": TTS_TTFB.as_millis() as u64,
            "tts_real_time_factor": TTS_REAL_TIME_FACTOR,
        },
        "capacity": capacity.map(|(held, failed)| serde_json::json!({
            "most_calls_held": held,
            "least_calls_failed": failed,
        })),
        "runs": results,
    });
    if let Some(dir) = std::path::Path::new(out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(out, serde_json::to_string_pretty(&document)? + "\n")?;
    eprintln!("wrote {out}");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    callingbox_bench::trial::run_if_child(&args, run_trial);
    match run(&args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("sip_load: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<ExitCode, BoxError> {
    let options = parse_options(args)?;
    if options.smoke {
        let result = run_child(&TrialConfig::new(10, 5.0, options.rate))?;
        print_tables(std::slice::from_ref(&result), None);
        if !result.holds {
            eprintln!("smoke: the SIP load criteria failed");
            return Ok(ExitCode::FAILURE);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let began = StdInstant::now();
    let mut results = Vec::new();
    for &calls in &options.calls {
        results.push(run_child(&TrialConfig::new(
            calls,
            options.steady_s,
            options.rate,
        ))?);
    }
    let capacity = if options.capacity {
        Some(capacity_search(&options, &mut results)?)
    } else {
        None
    };
    print_tables(&results, capacity);
    let out = options.out.clone().unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/results/sip_load.json").to_owned()
    });
    write_results(&out, &results, capacity, began)?;
    Ok(ExitCode::SUCCESS)
}
