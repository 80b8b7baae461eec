//! Transports: what carries a call's audio between the carrier and a
//! [`MediaWorker`](crate::session::MediaWorker).
//!
//! A worker is not shared through a lock: it lives on its own task (on a
//! dedicated thread in production, see [`spawn_worker_thread`]) and the
//! connections talk to it over channels. A [`WorkerHandle`] sends it calls
//! and inbound packets over one bounded channel; each call gets its agent
//! packets and media events back over its own bounded channel
//! ([`CallOutput`]), one packet per 20 ms tick, so the transport paces the
//! carrier by forwarding them as they come.
//!
//! [`media_stream`] is the Twilio Media Streams WebSocket (bidirectional
//! `<Connect><Stream>`), which Telnyx also speaks; [`webrtc`] is a browser
//! calling over WebRTC (Opus both ways).

pub mod comfort_silence;
pub mod media_stream;
pub mod rtcp;
pub mod rtp;
pub mod rtp_events;
pub mod sip;
pub mod webrtc;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::audio::OutboundPacket;
use crate::clock::Instant;
use crate::session::{
    CallKey, CallMediaConfig, ConversationLink, MediaEvent, MediaWorker, PacketSink, WorkerError,
};

/// The worker's tick.
pub const TICK: Duration = Duration::from_millis(20);

/// The application refusing a call (media-stream and WebRTC transports).
#[derive(Debug, Error)]
#[error("call refused: {reason}")]
pub struct CallRefused {
    /// The HTTP status that says why (401 bad key, 404 no such agent, 402
    /// calls paused, 503 cannot take it now); WebRTC answers the offer with
    /// it, the media stream closes its socket.
    pub status: u16,
    /// Why, for the caller's developer.
    pub reason: String,
}

impl CallRefused {
    /// A refusal with this HTTP status.
    pub fn new(status: u16, reason: impl Into<String>) -> Self {
        CallRefused {
            status,
            reason: reason.into(),
        }
    }

    /// The call cannot be taken now (503).
    pub fn unavailable(reason: impl Into<String>) -> Self {
        CallRefused::new(503, reason)
    }
}

/// A call as the application sets it up, for a transport whose call events
/// are `E` (each transport names its own: `media_stream::CallSetup`,
/// `webrtc::CallSetup`).
#[derive(Debug)]
pub struct CallSetup<E> {
    /// The call's media. The transport may override the codecs it carries.
    pub media: CallMediaConfig,
    /// The agent and recognizer, if the call has them.
    pub link: Option<ConversationLink>,
    /// The call clock's zero (the agent loop's epoch).
    pub epoch: std::time::Instant,
    /// Where the transport reports the call's events.
    pub events: Option<mpsc::UnboundedSender<E>>,
    /// Cancelled by the transport when the call ends (for the
    /// application's per-call tasks); the application cancels it to hang
    /// up (the agent called `end_call`, the call hit its maximum length).
    pub cancel: tokio_util::sync::CancellationToken,
}

/// Sets up the call of each new request `R` (a stream's `start`, a WebRTC
/// offer) of a transport whose call events are `E`.
pub trait CallFactory<R, E>: Send + Sync + 'static {
    /// The call for this request, or a refusal.
    fn open_call(&self, request: &R) -> Result<CallSetup<E>, CallRefused>;
}

impl<F, R, E> CallFactory<R, E> for F
where
    F: Fn(&R) -> Result<CallSetup<E>, CallRefused> + Send + Sync + 'static,
{
    fn open_call(&self, request: &R) -> Result<CallSetup<E>, CallRefused> {
        self(request)
    }
}
/// The largest packet the channels carry: one 20 ms G.711 frame (160
/// bytes) or one 20 ms Opus packet (WebRTC: up to 64 kbit/s with in-band
/// FEC; the outbound queue's Opus slot is as large).
pub const PACKET_MAX: usize = 400;
/// Commands the worker's inbound channel holds (packets of all its calls).
const COMMAND_CAPACITY: usize = 1024;
/// Outputs a call's channel holds before the worker drops them (~1.3 s).
const OUTPUT_CAPACITY: usize = 64;

/// One packet of a call, copied into a fixed buffer (no allocation per frame).
#[derive(Debug, Clone, Copy)]
pub struct WirePacket {
    /// RTP-style sequence number.
    pub sequence: u16,
    /// RTP-style timestamp (8 kHz for G.711, 48 kHz for Opus).
    pub timestamp: u32,
    /// The segment (agent reply) the packet belongs to; 0 for inbound.
    pub segment: u32,
    /// First packet of a talkspurt.
    pub marker: bool,
    len: u16,
    bytes: [u8; PACKET_MAX],
}

impl WirePacket {
    /// A packet holding `payload`; `None` if it is longer than [`PACKET_MAX`].
    pub fn new(sequence: u16, timestamp: u32, marker: bool, payload: &[u8]) -> Option<Self> {
        if payload.len() > PACKET_MAX {
            return None;
        }
        let mut bytes = [0u8; PACKET_MAX];
        bytes[..payload.len()].copy_from_slice(payload);
        Some(WirePacket {
            sequence,
            timestamp,
            segment: 0,
            marker,
            len: payload.len() as u16,
            bytes,
        })
    }

    /// The encoded audio.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// What the worker sends a call's transport.
// Packets are nearly every output: boxing them would allocate per frame.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum CallOutput {
    /// An agent packet to send now (one per tick while the agent speaks).
    Packet(WirePacket),
    /// A media event of the call (barge-in, turn ended, hangup, ...).
    Event(MediaEvent),
}

/// A call's media as a transport hands it to the worker.
#[derive(Debug)]
pub struct CallSpec {
    /// The call's media settings.
    pub config: CallMediaConfig,
    /// The conversation, if the call has an agent.
    pub link: Option<ConversationLink>,
    /// The call clock's zero (the agent loop's epoch).
    pub epoch: std::time::Instant,
}

/// What the worker host refuses.
#[derive(Debug, Error)]
pub enum HostError {
    /// The worker thread is gone.
    #[error("the media worker has stopped")]
    WorkerGone,
    /// The worker refused the call.
    #[error(transparent)]
    Worker(#[from] WorkerError),
}

// Packets are nearly every command: boxing them would allocate per frame.
#[allow(clippy::large_enum_variant)]
enum Command {
    Add {
        // Boxed: calls are added rarely, packets fill the channel.
        spec: Box<CallSpec>,
        outputs: mpsc::Sender<CallOutput>,
        reply: oneshot::Sender<Result<CallKey, WorkerError>>,
    },
    Packet {
        key: CallKey,
        packet: WirePacket,
    },
    Remove {
        key: CallKey,
        reply: oneshot::Sender<Option<ConversationLink>>,
    },
    Hold {
        key: CallKey,
        held: bool,
    },
}

#[derive(Debug, Default)]
struct HostCounters {
    /// The most calls the worker takes (set once at spawn).
    capacity: AtomicUsize,
    live_calls: AtomicUsize,
    inbound_dropped: AtomicU64,
    outputs_dropped: AtomicU64,
}

/// Talks to a worker running on its own task or thread. Cheap to clone.
#[derive(Debug, Clone)]
pub struct WorkerHandle {
    commands: mpsc::Sender<Command>,
    counters: Arc<HostCounters>,
}

/// A call added to the worker: its key and its outputs.
#[derive(Debug)]
pub struct HostedCall {
    /// The call's key on the worker.
    pub key: CallKey,
    /// Agent packets and media events, in tick order.
    pub outputs: mpsc::Receiver<CallOutput>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Add { .. } => f.write_str("Add"),
            Command::Packet { key, .. } => write!(f, "Packet({key:?})"),
            Command::Remove { key, .. } => write!(f, "Remove({key:?})"),
            Command::Hold { key, held } => write!(f, "Hold({key:?}, {held})"),
        }
    }
}

impl WorkerHandle {
    /// Adds a call; its outputs start with the next tick.
    pub async fn add_call(&self, spec: CallSpec) -> Result<HostedCall, HostError> {
        let (outputs_tx, outputs) = mpsc::channel(OUTPUT_CAPACITY);
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Add {
                spec: Box::new(spec),
                outputs: outputs_tx,
                reply,
            })
            .await
            .map_err(|_| HostError::WorkerGone)?;
        let key = answer.await.map_err(|_| HostError::WorkerGone)??;
        Ok(HostedCall { key, outputs })
    }

    /// Hands the worker a packet from the caller without waiting; a full
    /// channel drops it (counted: the worker is behind, waiting makes it worse).
    pub fn push_packet(&self, key: CallKey, packet: WirePacket) {
        if self
            .commands
            .try_send(Command::Packet { key, packet })
            .is_err()
        {
            self.counters
                .inbound_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removes a call; returns its conversation so the caller can shut it down.
    pub async fn remove_call(&self, key: CallKey) -> Result<Option<ConversationLink>, HostError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Remove { key, reply })
            .await
            .map_err(|_| HostError::WorkerGone)?;
        answer.await.map_err(|_| HostError::WorkerGone)
    }

    /// Tells the call's turn machine the peer held (`true`) or resumed it.
    pub async fn set_held(&self, key: CallKey, held: bool) -> Result<(), HostError> {
        self.commands
            .send(Command::Hold { key, held })
            .await
            .map_err(|_| HostError::WorkerGone)
    }

    /// The most calls the worker takes at once: more are refused.
    pub fn capacity(&self) -> usize {
        self.counters.capacity.load(Ordering::Relaxed)
    }

    /// Calls on the worker now.
    pub fn live_calls(&self) -> usize {
        self.counters.live_calls.load(Ordering::Relaxed)
    }

    /// Inbound packets dropped because the worker's channel was full.
    pub fn inbound_dropped(&self) -> u64 {
        self.counters.inbound_dropped.load(Ordering::Relaxed)
    }

    /// Agent packets and events dropped because a call's transport lagged.
    pub fn outputs_dropped(&self) -> u64 {
        self.counters.outputs_dropped.load(Ordering::Relaxed)
    }
}

/// Runs `worker` as a task of the current tokio runtime: ticks every 20 ms
/// on tokio time (so tests can run it on paused time). The task ends, and
/// returns the worker, when every [`WorkerHandle`] is dropped.
pub fn spawn_worker(worker: MediaWorker) -> (WorkerHandle, tokio::task::JoinHandle<MediaWorker>) {
    let (handle, commands, counters) = channels(worker.capacity());
    let task = tokio::spawn(run_worker(worker, commands, counters));
    (handle, task)
}

/// Runs `worker` on a dedicated thread (its own single-threaded tokio
/// runtime), so no other task can delay its ticks. The thread ends when
/// every [`WorkerHandle`] is dropped.
pub fn spawn_worker_thread(
    worker: MediaWorker,
    name: &str,
) -> std::io::Result<(WorkerHandle, std::thread::JoinHandle<MediaWorker>)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let (handle, commands, counters) = channels(worker.capacity());
    let thread = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || runtime.block_on(run_worker(worker, commands, counters)))?;
    Ok((handle, thread))
}

fn channels(capacity: usize) -> (WorkerHandle, mpsc::Receiver<Command>, Arc<HostCounters>) {
    let (commands, receiver) = mpsc::channel(COMMAND_CAPACITY);
    let counters = Arc::new(HostCounters::default());
    counters.capacity.store(capacity, Ordering::Relaxed);
    (
        WorkerHandle {
            commands,
            counters: Arc::clone(&counters),
        },
        receiver,
        counters,
    )
}

/// The outputs of every call, looked up by key (built at add time, read per tick).
struct ChannelSink<'a> {
    calls: &'a HashMap<CallKey, mpsc::Sender<CallOutput>>,
    counters: &'a HostCounters,
}

impl PacketSink for ChannelSink<'_> {
    fn send(&mut self, call: CallKey, _now: Instant, packet: &OutboundPacket<'_>) {
        let Some(outputs) = self.calls.get(&call) else {
            return;
        };
        let Some(mut wire) = WirePacket::new(0, 0, packet.starts_talkspurt, packet.payload) else {
            // A codec with frames larger than the channel carries: misconfigured.
            self.counters
                .outputs_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        wire.segment = packet.segment;
        if outputs.try_send(CallOutput::Packet(wire)).is_err() {
            self.counters
                .outputs_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn run_worker(
    mut worker: MediaWorker,
    mut commands: mpsc::Receiver<Command>,
    counters: Arc<HostCounters>,
) -> MediaWorker {
    let mut calls: HashMap<CallKey, mpsc::Sender<CallOutput>> = HashMap::with_capacity(64);
    let mut ticker = tokio::time::interval(TICK);
    // Catch up after a stall: the inbound side must keep real time; the
    // carrier absorbs the few extra packets.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    loop {
        tokio::select! {
            biased;
            command = commands.recv() => {
                let Some(command) = command else { break };
                let now = tokio::time::Instant::now().into_std();
                match command {
                    Command::Packet { key, packet } => {
                        // A packet racing its call's removal is dropped.
                        let _ = worker.push_packet(
                            now,
                            key,
                            packet.sequence,
                            packet.timestamp,
                            packet.marker,
                            packet.payload(),
                        );
                    }
                    Command::Add { spec, outputs, reply } => {
                        let added = worker.add_call(now, spec.epoch, spec.config, spec.link);
                        if let Ok(key) = added {
                            calls.insert(key, outputs);
                            counters.live_calls.store(worker.len(), Ordering::Relaxed);
                        }
                        let _ = reply.send(added);
                    }
                    Command::Remove { key, reply } => {
                        calls.remove(&key);
                        let link = worker.remove_call(key).ok().flatten();
                        counters.live_calls.store(worker.len(), Ordering::Relaxed);
                        let _ = reply.send(link);
                    }
                    Command::Hold { key, held } => {
                        // A hold racing its call's removal changes nothing.
                        let _ = worker.set_held(now, key, held);
                    }
                }
            }
            _ = ticker.tick() => {
                let now = tokio::time::Instant::now().into_std();
                let mut sink = ChannelSink { calls: &calls, counters: &counters };
                for event in worker.tick(now, &mut sink) {
                    if let Some(outputs) = calls.get(&event.call)
                        && outputs.try_send(CallOutput::Event(event.event.clone())).is_err()
                    {
                        counters.outputs_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
    worker
}
