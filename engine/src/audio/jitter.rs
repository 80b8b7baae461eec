//! The adaptive jitter buffer: RTP-like packets in, exactly one frame per
//! 20 ms tick out.
//!
//! It is sans-IO and codec-agnostic: the caller hands it packets (`push`) as
//! they arrive and asks for the next frame (`pop`) once per tick, passing the
//! engine clock each time. Payloads are copied into a slot pool allocated at
//! construction ([`JitterConfig::slots`] x [`JitterConfig::max_payload`]
//! bytes, 64 x 1500 = 96 KiB by default: 1.28 s of 20 ms packets, each as
//! large as an Ethernet MTU allows), so a steady stream allocates nothing.
//!
//! # Depth
//!
//! A packet's *transit* is its arrival time minus its media timestamp. The
//! *floor* is the smallest transit over the last half second (the packets
//! that met no queueing); a packet's *delay variation* is its transit minus
//! the floor. The buffer plays the frame of timestamp `ts` at
//! `ts + floor + depth`: a packet is late exactly when its delay variation
//! exceeds the depth, and [`JitterStats::depth`] is that depth.
//!
//! The target depth is the 97th percentile of the delay variation over the
//! last 250 packets (5 s) plus one frame of headroom, within
//! [`JitterConfig::min_depth`]..=[`JitterConfig::max_depth`]. A percentile
//! over a window means one delay spike does not move it; a late packet raises
//! the target by at most one frame at once, a sustained jitter burst raises
//! it to fit within a second or two, and it falls by only 10 ms per second
//! once the window has calmed. The RFC 3550 interarrival jitter is kept for
//! reporting (it is what RTCP receiver reports carry) but does not drive the
//! target: one spike moves it by a sixteenth of its size.
//!
//! # Adapting
//!
//! The depth moves in whole frames: the buffer *inserts* a frame (plays
//! [`Playout::Filler`] and keeps the packet for the next tick) to deepen and
//! *drops* one (skips a packet, or a tick of a timestamp gap) to shallow.
//! Where the change is inaudible (a talk-spurt start marked by the RTP marker
//! bit, a timestamp gap while the sender is silent, or a frame the caller
//! reported as silence through [`JitterBuffer::note_silence`]) it adapts as
//! soon as the depth is a quarter of a frame off target. Elsewhere it inserts
//! at once when the depth falls half a frame below target (late packets
//! cost more than a concealed frame), drops when the depth has been a frame
//! above target for a second, or at once when it is three frames above.
//!
//! The same mechanism absorbs sender clock drift: a sender 1 % fast fills
//! the buffer by 10 ms per second, and the buffer drops one frame every two
//! seconds; a slow one gets a frame inserted as often.
//!
//! # Streams
//!
//! Sequence numbers (16 bit) and timestamps (32 bit) are unwrapped against
//! the stream so far, so wrap-around is invisible. A jump of 3,000 or more
//! packets forward, or more than 100 back (RFC 3550 appendix A.1's limits),
//! is held on probation and starts a new stream when the next packet
//! follows it in sequence; a new SSRC looks exactly like that. [`reset`]
//! starts a new stream explicitly. Both keep the learned depth target (a
//! property of the network path, not of the stream).
//!
//! [`reset`]: JitterBuffer::reset

use std::time::Duration;

use thiserror::Error;

use crate::clock::Instant;

/// The length of one frame and of the tick at which [`JitterBuffer::pop`] is called.
pub const TICK: Duration = Duration::from_millis(20);

const FRAME_US: i64 = 20_000;
/// Transits considered for the floor: the last 25 packets (0.5 s) within the last second.
const FLOOR_WINDOW: usize = 25;
const FLOOR_SPAN_US: i64 = 1_000_000;
/// Delay variations considered for the target: the last 250 packets (5 s).
const VARIATION_WINDOW: usize = 250;
const VARIATION_PERCENTILE: usize = 97;
/// How fast the target falls once the network calms: 10 ms per second.
const TARGET_DECAY_US_PER_S: i64 = 10_000;
/// How long the depth must stay a frame above target before a frame is dropped mid-speech.
const DROP_PATIENCE_US: i64 = 1_000_000;
/// Ticks of concealment while the buffer is dry before it stops and rebuffers.
const UNDERRUN_FILL_TICKS: u32 = 5;
/// RFC 3550 appendix A.1: larger sequence jumps are a restarted source.
const MAX_DROPOUT: i64 = 3_000;
const MAX_MISORDER: i64 = 100;
/// A transit this far from the floor means the timestamps jumped, not the network.
const TIMESTAMP_JUMP_US: i64 = 2_000_000;
/// Played sequence numbers remembered to tell a duplicate from a late packet.
const HISTORY_LEN: i64 = 128;

/// How a [`JitterBuffer`] is sized and bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    /// The RTP timestamp clock: 8,000 Hz for G.711, 48,000 Hz for Opus.
    pub clock_rate: u32,
    /// The shallowest the buffer gets, however calm the network.
    pub min_depth: Duration,
    /// The deepest the buffer gets, however bad the network.
    pub max_depth: Duration,
    /// Packets held at most (each 20 ms); also the reordering horizon.
    pub slots: usize,
    /// The largest payload accepted, in bytes; larger ones are refused.
    pub max_payload: usize,
}

impl JitterConfig {
    /// 64 slots: 1.28 s of 20 ms packets, six times the default maximum depth.
    pub const DEFAULT_SLOTS: usize = 64;
    /// 1500 bytes: an Ethernet MTU, above any one-frame Opus packet (1275 bytes).
    pub const DEFAULT_MAX_PAYLOAD: usize = 1500;

    /// The defaults for a stream at `clock_rate`: depth between 20 and 200 ms,
    /// 64 slots of 1500 bytes.
    pub const fn for_clock_rate(clock_rate: u32) -> Self {
        JitterConfig {
            clock_rate,
            min_depth: Duration::from_millis(20),
            max_depth: Duration::from_millis(200),
            slots: Self::DEFAULT_SLOTS,
            max_payload: Self::DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// A [`JitterConfig`] that cannot work.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum JitterError {
    /// The clock rate does not divide into whole 20 ms frames, or is absurd.
    #[error("clock rate {0} Hz: expected a multiple of 50 Hz up to 192 kHz")]
    BadClockRate(u32),
    /// The minimum depth is above the maximum, or the maximum is over 5 s.
    #[error("depth range {min:?} to {max:?}: expected min <= max <= 5 s")]
    BadDepthRange {
        /// The configured minimum.
        min: Duration,
        /// The configured maximum.
        max: Duration,
    },
    /// Too few slots to hold the maximum depth plus reordering headroom.
    #[error("{slots} slots cannot hold a depth of {max_depth:?}: need at least {needed}")]
    TooFewSlots {
        /// The configured slot count.
        slots: usize,
        /// The configured maximum depth.
        max_depth: Duration,
        /// The smallest slot count that works.
        needed: usize,
    },
    /// Slots of zero bytes.
    #[error("max_payload must be at least one byte")]
    ZeroPayload,
}

/// What [`JitterBuffer::push`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Stored for playout.
    Accepted,
    /// Stored, and it starts a new stream (a sequence jump confirmed by this
    /// packet following the jumped one): the old stream's packets are gone.
    NewStream,
    /// A copy of a packet already held or already played: dropped.
    Duplicate,
    /// Its playout time has passed (it was played out as lost): dropped.
    TooLate,
    /// Larger than [`JitterConfig::max_payload`]: dropped.
    TooLarge,
    /// No payload: dropped.
    Empty,
    /// A sequence jump too large to be loss or reordering: held aside until
    /// the next packet shows whether it starts a new stream.
    Probation,
}

/// What to play for one tick, from [`JitterBuffer::pop`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Playout<'a> {
    /// The packet due now.
    Packet {
        /// Its payload, as pushed.
        payload: &'a [u8],
        /// Its RTP timestamp, as pushed.
        timestamp: u32,
    },
    /// The packet due now never came (or came after its time). When the
    /// packet after it is here, `next_payload` is it, so an Opus decoder can
    /// rebuild the lost frame from its in-band FEC.
    Lost {
        /// The following packet's payload, if it has arrived.
        next_payload: Option<&'a [u8]>,
    },
    /// No packet is due and none is missing: the sender paused (silence
    /// suppression, Opus DTX), the buffer inserted a frame to deepen, or it
    /// ran dry and is waiting a few ticks for a late packet. Play concealment
    /// or comfort noise; nothing was lost.
    Filler,
    /// Buffering: nothing received yet, or rebuffering after the buffer stayed
    /// dry for 100 ms. Play silence.
    Waiting,
}

/// Counters and estimates, from [`JitterBuffer::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JitterStats {
    /// The current depth: how long a packet that met no network queueing
    /// waits here before it plays (as of the last tick while playing).
    pub depth: Duration,
    /// The depth the buffer steers toward.
    pub target: Duration,
    /// Packets held now.
    pub buffered: usize,
    /// RFC 3550 (appendix A.8) interarrival jitter.
    pub jitter: Duration,
    /// The 97th percentile of the arrival delay variation over the last 250 packets.
    pub delay_variation: Duration,
    /// Packets pushed (every call of `push`).
    pub received: u64,
    /// Packets played out (returned as [`Playout::Packet`]).
    pub played: u64,
    /// Duplicates dropped.
    pub duplicate: u64,
    /// Packets dropped because they came after their playout time.
    pub late: u64,
    /// Frames played out as [`Playout::Lost`], plus packets skipped over
    /// unseen when the buffer resynchronised after a long gap.
    pub lost: u64,
    /// Packets accepted out of sequence order (after a later one).
    pub reordered: u64,
    /// Frames dropped to lower the depth: a fast sender clock, a target
    /// that fell, or a backlog after a network stall.
    pub dropped: u64,
    /// Frames inserted to raise the depth: a slow sender clock, or a target that rose.
    pub inserted: u64,
    /// Times the buffer ran dry while playing.
    pub underruns: u64,
    /// Packets refused as larger than the slots, or empty.
    pub refused: u64,
    /// New streams started (confirmed sequence jumps and [`JitterBuffer::reset`] calls).
    pub stream_resets: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    occupied: bool,
    ext_seq: i64,
    ext_ts: i64,
    arrival_us: i64,
    len: usize,
    marker: bool,
}

#[derive(Debug, Clone, Copy)]
struct Probation {
    seq: u16,
    timestamp: u32,
    marker: bool,
    arrival: Instant,
    len: usize,
}

/// A fixed-capacity ring of the most recent values.
#[derive(Debug, Clone)]
struct Ring<T> {
    values: Vec<T>,
    next: usize,
    len: usize,
}

impl<T: Copy + Default> Ring<T> {
    fn new(capacity: usize) -> Self {
        Ring {
            values: vec![T::default(); capacity],
            next: 0,
            len: 0,
        }
    }

    fn push(&mut self, value: T) {
        self.values[self.next] = value;
        self.next = (self.next + 1) % self.values.len();
        self.len = (self.len + 1).min(self.values.len());
    }

    fn clear(&mut self) {
        self.next = 0;
        self.len = 0;
    }

    fn as_slice(&self) -> &[T] {
        // The filled entries are a prefix until the ring wraps, then all of it.
        &self.values[..self.len]
    }
}

enum Step {
    Packet(usize),
    Lost(Option<usize>),
    Filler,
    Waiting,
}

/// Where a frame stands for adapting: whether an insert or a drop here is unheard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Boundary {
    None,
    InsertOnly,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Adapt {
    Insert,
    Drop,
    Hold,
}

/// The adaptive jitter buffer for one RTP-like stream. See the module docs.
#[derive(Debug, Clone)]
pub struct JitterBuffer {
    config: JitterConfig,
    frame_samples: i64,
    min_depth_us: i64,
    max_depth_us: i64,

    slots: Vec<Slot>,
    pool: Vec<u8>,
    buffered: usize,

    // The stream: all sequence numbers and timestamps unwrapped to i64.
    anchored: bool,
    playing: bool,
    expected_seq: i64,
    newest_seq: i64,
    cursor_ts: i64,
    ts_ref: i64,
    /// Bit i: whether `expected_seq - 1 - i` was received (played or dropped).
    history: u128,
    stall_ticks: u32,
    awaiting_late: bool,
    last_silent: bool,
    above_since_us: Option<i64>,
    last_pop_us: Option<i64>,
    depth_us: i64,

    probation: Option<Probation>,
    probation_payload: Vec<u8>,

    // Estimators.
    transits: Ring<(i64, i64)>,
    floor_us: Option<i64>,
    last_transit_us: Option<i64>,
    rfc_jitter_us: f64,
    variations: Ring<i64>,
    scratch: Vec<i64>,
    variation_p97_us: i64,
    target_us: i64,

    stats: JitterStats,
}

fn micros(at: Instant) -> i64 {
    i64::try_from(at.since_epoch().as_micros()).unwrap_or(i64::MAX)
}

fn duration_from_us(us: i64) -> Duration {
    Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

fn duration_us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl JitterBuffer {
    /// A buffer sized by `config`; every buffer it will use is allocated here.
    pub fn new(config: JitterConfig) -> Result<Self, JitterError> {
        let rate = config.clock_rate;
        if rate == 0 || !rate.is_multiple_of(50) || rate > 192_000 {
            return Err(JitterError::BadClockRate(rate));
        }
        if config.min_depth > config.max_depth || config.max_depth > Duration::from_secs(5) {
            return Err(JitterError::BadDepthRange {
                min: config.min_depth,
                max: config.max_depth,
            });
        }
        let max_depth_us = duration_us(config.max_depth);
        // The deepest buffer holds max_depth of packets plus a few frames of arrivals ahead.
        let needed = (max_depth_us / FRAME_US) as usize + 4;
        if config.slots < needed {
            return Err(JitterError::TooFewSlots {
                slots: config.slots,
                max_depth: config.max_depth,
                needed,
            });
        }
        if config.max_payload == 0 {
            return Err(JitterError::ZeroPayload);
        }
        let min_depth_us = duration_us(config.min_depth);
        Ok(JitterBuffer {
            config,
            frame_samples: i64::from(rate / 50),
            min_depth_us,
            max_depth_us,
            slots: vec![Slot::default(); config.slots],
            pool: vec![0; config.slots * config.max_payload],
            buffered: 0,
            anchored: false,
            playing: false,
            expected_seq: 0,
            newest_seq: 0,
            cursor_ts: 0,
            ts_ref: 0,
            history: 0,
            stall_ticks: 0,
            awaiting_late: false,
            last_silent: false,
            above_since_us: None,
            last_pop_us: None,
            depth_us: 0,
            probation: None,
            probation_payload: vec![0; config.max_payload],
            transits: Ring::new(FLOOR_WINDOW),
            floor_us: None,
            last_transit_us: None,
            rfc_jitter_us: 0.0,
            variations: Ring::new(VARIATION_WINDOW),
            scratch: vec![0; VARIATION_WINDOW],
            variation_p97_us: 0,
            target_us: min_depth_us,
            stats: JitterStats {
                target: config.min_depth,
                ..JitterStats::default()
            },
        })
    }

    /// The configuration it was built with.
    pub fn config(&self) -> &JitterConfig {
        &self.config
    }

    /// Heap memory held, in bytes. Fixed at construction: nothing a caller
    /// does changes it (the tests hold it to that).
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.pool.capacity()
            + self.probation_payload.capacity()
            + self.transits.values.capacity() * std::mem::size_of::<(i64, i64)>()
            + (self.variations.values.capacity() + self.scratch.capacity())
                * std::mem::size_of::<i64>()
    }

    /// Takes a packet that arrived at `now`, without the RTP marker bit.
    pub fn push(&mut self, now: Instant, seq: u16, timestamp: u32, payload: &[u8]) -> PushOutcome {
        self.push_with_marker(now, seq, timestamp, false, payload)
    }

    /// Takes a packet that arrived at `now`. `marker` is the RTP marker bit,
    /// which audio senders set on the first packet of a talk spurt: the buffer
    /// may then play it a frame later without an audible cost.
    pub fn push_with_marker(
        &mut self,
        now: Instant,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> PushOutcome {
        self.stats.received += 1;
        if payload.is_empty() {
            self.stats.refused += 1;
            return PushOutcome::Empty;
        }
        if payload.len() > self.config.max_payload {
            self.stats.refused += 1;
            return PushOutcome::TooLarge;
        }
        let mut outcome = PushOutcome::Accepted;
        if !self.anchored {
            self.anchor(seq, timestamp);
        }
        let delta = self.seq_delta(seq);
        if !(-MAX_MISORDER..MAX_DROPOUT).contains(&delta) {
            match self.probation {
                Some(held) if seq == held.seq.wrapping_add(1) => {
                    // Two packets in sequence after a jump: a new stream.
                    self.restart_stream();
                    self.anchor(held.seq, held.timestamp);
                    let slot = self.slot_index(self.expected_seq);
                    let base = slot * self.config.max_payload;
                    self.pool[base..base + held.len]
                        .copy_from_slice(&self.probation_payload[..held.len]);
                    let ext_ts = self.extend_ts(held.timestamp);
                    self.store(
                        micros(held.arrival),
                        self.expected_seq,
                        ext_ts,
                        held.marker,
                        held.len,
                    );
                    outcome = PushOutcome::NewStream;
                }
                _ => {
                    self.probation = Some(Probation {
                        seq,
                        timestamp,
                        marker,
                        arrival: now,
                        len: payload.len(),
                    });
                    self.probation_payload[..payload.len()].copy_from_slice(payload);
                    return PushOutcome::Probation;
                }
            }
        }
        self.probation = None;
        let now_us = micros(now);
        let delta = self.seq_delta(seq);
        let ext_seq = self.expected_seq + delta;
        let ext_ts = self.extend_ts(timestamp);

        if delta < 0 {
            // Behind the playout point: already played, or played out as lost.
            let age = -delta - 1;
            if age < HISTORY_LEN && self.history & (1u128 << age) != 0 {
                self.stats.duplicate += 1;
                return PushOutcome::Duplicate;
            }
            self.stats.late += 1;
            if let Some(variation) = self.observe_arrival(now_us, ext_ts) {
                self.raise_target_for_late(variation);
            }
            return PushOutcome::TooLate;
        }
        let index = self.slot_index(ext_seq);
        if self.slots[index].occupied && self.slots[index].ext_seq == ext_seq {
            self.stats.duplicate += 1;
            return PushOutcome::Duplicate;
        }
        if delta >= self.slots.len() as i64 {
            // Further ahead than the buffer reaches: everything held is stale.
            self.resync(ext_seq, ext_ts);
        }
        self.observe_arrival(now_us, ext_ts);
        let base = index * self.config.max_payload;
        self.pool[base..base + payload.len()].copy_from_slice(payload);
        self.store(now_us, ext_seq, ext_ts, marker, payload.len());
        outcome
    }

    /// Tells the buffer whether the frame it last played was silence (the
    /// decoder knows; the buffer does not look into payloads). After a
    /// silent frame it adapts the depth at once, where nobody can hear it.
    pub fn note_silence(&mut self, silent: bool) {
        self.last_silent = silent;
    }

    /// The frame to play for the tick at `now`. Call exactly once per 20 ms tick.
    pub fn pop(&mut self, now: Instant) -> Playout<'_> {
        let now_us = micros(now);
        self.decay_target(now_us);
        match self.step(now_us) {
            Step::Packet(index) => {
                let slot = self.slots[index];
                let base = index * self.config.max_payload;
                Playout::Packet {
                    payload: &self.pool[base..base + slot.len],
                    timestamp: slot.ext_ts as u32,
                }
            }
            Step::Lost(next) => Playout::Lost {
                next_payload: next.map(|index| {
                    let base = index * self.config.max_payload;
                    &self.pool[base..base + self.slots[index].len]
                }),
            },
            Step::Filler => Playout::Filler,
            Step::Waiting => Playout::Waiting,
        }
    }

    /// Forgets the stream (held packets, sequence and timing anchors), for a
    /// new SSRC. Keeps the learned depth target and the counters.
    pub fn reset(&mut self) {
        self.restart_stream();
    }

    /// Counters and estimates.
    pub fn stats(&self) -> JitterStats {
        JitterStats {
            depth: duration_from_us(self.depth_us),
            target: duration_from_us(self.target_us),
            buffered: self.buffered,
            jitter: duration_from_us(self.rfc_jitter_us as i64),
            delay_variation: duration_from_us(self.variation_p97_us),
            ..self.stats
        }
    }

    // ---- stream bookkeeping ----

    fn anchor(&mut self, seq: u16, timestamp: u32) {
        self.anchored = true;
        self.playing = false;
        self.expected_seq = i64::from(seq);
        self.newest_seq = self.expected_seq;
        self.cursor_ts = i64::from(timestamp);
        self.ts_ref = self.cursor_ts;
        self.history = 0;
    }

    fn restart_stream(&mut self) {
        for slot in &mut self.slots {
            slot.occupied = false;
        }
        self.buffered = 0;
        self.anchored = false;
        self.playing = false;
        self.history = 0;
        self.stall_ticks = 0;
        self.awaiting_late = false;
        self.last_silent = false;
        self.above_since_us = None;
        self.probation = None;
        // A new stream has a new timestamp origin: the transits start over.
        self.transits.clear();
        self.floor_us = None;
        self.last_transit_us = None;
        self.stats.stream_resets += 1;
    }

    /// Drops everything held and restarts playout at a packet far ahead.
    fn resync(&mut self, ext_seq: i64, ext_ts: i64) {
        let held = self.buffered as u64;
        for slot in &mut self.slots {
            slot.occupied = false;
        }
        self.buffered = 0;
        self.stats.dropped += held;
        let skipped = u64::try_from(ext_seq - self.expected_seq).unwrap_or(0);
        self.stats.lost += skipped.saturating_sub(held);
        self.expected_seq = ext_seq;
        self.cursor_ts = ext_ts;
        self.history = 0;
        self.playing = false;
        self.stall_ticks = 0;
    }

    fn seq_delta(&self, seq: u16) -> i64 {
        i64::from(seq.wrapping_sub(self.expected_seq as u16) as i16)
    }

    fn extend_ts(&self, timestamp: u32) -> i64 {
        self.ts_ref + i64::from(timestamp.wrapping_sub(self.ts_ref as u32) as i32)
    }

    fn slot_index(&self, ext_seq: i64) -> usize {
        ext_seq.rem_euclid(self.slots.len() as i64) as usize
    }

    fn store(&mut self, arrival_us: i64, ext_seq: i64, ext_ts: i64, marker: bool, len: usize) {
        let index = self.slot_index(ext_seq);
        if !self.slots[index].occupied {
            self.buffered += 1;
        }
        self.slots[index] = Slot {
            occupied: true,
            ext_seq,
            ext_ts,
            arrival_us,
            len,
            marker,
        };
        if ext_seq < self.newest_seq {
            self.stats.reordered += 1;
        } else {
            self.newest_seq = ext_seq;
            self.ts_ref = ext_ts;
        }
    }

    fn ts_us(&self, ext_ts: i64) -> i64 {
        let us = i128::from(ext_ts) * 1_000_000 / i128::from(self.config.clock_rate);
        us.clamp(i128::from(i64::MIN / 4), i128::from(i64::MAX / 4)) as i64
    }

    /// The held packet with the lowest sequence number at or after the playout point.
    fn head(&self) -> Option<usize> {
        if self.buffered == 0 {
            return None;
        }
        (0..self.slots.len() as i64)
            .map(|offset| self.slot_index(self.expected_seq + offset))
            .find(|&index| {
                let slot = &self.slots[index];
                slot.occupied && slot.ext_seq >= self.expected_seq
            })
    }

    fn is_held(&self, ext_seq: i64) -> bool {
        let slot = &self.slots[self.slot_index(ext_seq)];
        slot.occupied && slot.ext_seq == ext_seq
    }

    fn release(&mut self, index: usize) {
        if self.slots[index].occupied {
            self.slots[index].occupied = false;
            self.buffered -= 1;
        }
    }

    /// Moves the playout point past one sequence number.
    fn advance_expected(&mut self, received: bool) {
        self.history = (self.history << 1) | u128::from(received);
        self.expected_seq += 1;
    }

    // ---- estimators ----

    /// Records a packet's arrival; returns its delay variation, or None when
    /// its timestamp is so far off that the timing starts over.
    fn observe_arrival(&mut self, now_us: i64, ext_ts: i64) -> Option<i64> {
        let transit = now_us.saturating_sub(self.ts_us(ext_ts));
        if let Some(floor) = self.floor_us
            && transit.saturating_sub(floor).abs() > TIMESTAMP_JUMP_US
        {
            // Not network delay: the timestamps jumped (or the network froze
            // for seconds). Measure from this packet on.
            self.transits.clear();
            self.floor_us = None;
            self.last_transit_us = None;
        }
        if let Some(previous) = self.last_transit_us {
            let step = transit.saturating_sub(previous).abs() as f64;
            self.rfc_jitter_us += (step - self.rfc_jitter_us) / 16.0;
        }
        self.last_transit_us = Some(transit);
        self.transits.push((now_us, transit));
        let floor = self
            .transits
            .as_slice()
            .iter()
            .filter(|(arrival, _)| now_us.saturating_sub(*arrival) <= FLOOR_SPAN_US)
            .map(|&(_, transit)| transit)
            .min()
            .unwrap_or(transit);
        self.floor_us = Some(floor);
        let variation = transit.saturating_sub(floor);
        self.variations.push(variation);
        let n = self.variations.len;
        self.scratch[..n].copy_from_slice(self.variations.as_slice());
        let rank = (n - 1) * VARIATION_PERCENTILE / 100;
        let (_, p97, _) = self.scratch[..n].select_nth_unstable(rank);
        self.variation_p97_us = *p97;
        let wanted = self.clamp_depth(self.variation_p97_us.saturating_add(FRAME_US));
        if wanted > self.target_us {
            self.target_us = wanted;
        }
        Some(variation)
    }

    fn clamp_depth(&self, us: i64) -> i64 {
        us.clamp(self.min_depth_us, self.max_depth_us)
    }

    /// A late packet: grow at once, but by at most a frame, so one spike cannot blow it up.
    fn raise_target_for_late(&mut self, variation: i64) {
        let wanted = variation
            .saturating_add(FRAME_US)
            .min(self.target_us + FRAME_US);
        self.target_us = self.clamp_depth(wanted.max(self.target_us));
    }

    fn decay_target(&mut self, now_us: i64) {
        let elapsed = self
            .last_pop_us
            .map_or(0, |last| now_us.saturating_sub(last).clamp(0, 1_000_000));
        self.last_pop_us = Some(now_us);
        let wanted = self.clamp_depth(self.variation_p97_us.saturating_add(FRAME_US));
        if self.target_us > wanted {
            let fall = elapsed * TARGET_DECAY_US_PER_S / 1_000_000;
            self.target_us = (self.target_us - fall).max(wanted);
        }
    }

    /// The depth if the frame of timestamp `ext_ts` played now.
    fn depth_at(&self, now_us: i64, ext_ts: i64) -> i64 {
        let floor = self.floor_us.unwrap_or(0);
        now_us
            .saturating_sub(self.ts_us(ext_ts))
            .saturating_sub(floor)
    }

    fn adapt(&mut self, now_us: i64, depth: i64, boundary: Boundary) -> Adapt {
        let target = self.target_us;
        if depth > target + FRAME_US {
            self.above_since_us.get_or_insert(now_us);
        } else {
            self.above_since_us = None;
        }
        if depth < target - FRAME_US / 2 {
            return Adapt::Insert;
        }
        if depth > target + 3 * FRAME_US {
            return Adapt::Drop;
        }
        if boundary != Boundary::None && depth < target - FRAME_US / 4 {
            return Adapt::Insert;
        }
        if boundary == Boundary::Both && depth > target + FRAME_US * 3 / 4 {
            return Adapt::Drop;
        }
        match self.above_since_us {
            Some(since) if now_us.saturating_sub(since) >= DROP_PATIENCE_US => Adapt::Drop,
            _ => Adapt::Hold,
        }
    }

    fn corrected(&mut self, now_us: i64) {
        if self.above_since_us.is_some() {
            self.above_since_us = Some(now_us);
        }
    }

    // ---- playout ----

    fn step(&mut self, now_us: i64) -> Step {
        if !self.anchored {
            return Step::Waiting;
        }
        if !self.playing {
            if !self.try_resume(now_us) {
                return Step::Waiting;
            }
            self.playing = true;
        }
        let half = self.frame_samples / 2;
        let Some(head) = self.head() else {
            // Dry: conceal a few ticks while the cursor waits for a late
            // packet, then stop and rebuffer.
            if self.stall_ticks == 0 {
                self.stats.underruns += 1;
                self.awaiting_late = true;
            }
            self.stall_ticks += 1;
            self.depth_us = self.depth_at(now_us, self.cursor_ts);
            if self.stall_ticks > UNDERRUN_FILL_TICKS {
                self.playing = false;
                self.stall_ticks = 0;
                return Step::Waiting;
            }
            return Step::Filler;
        };
        self.stall_ticks = 0;
        let slot = self.slots[head];
        let missing = slot.ext_seq - self.expected_seq;
        let due_ts = slot.ext_ts - missing * self.frame_samples;
        if due_ts > self.cursor_ts + half
            && self.ts_us(due_ts) - self.ts_us(self.cursor_ts) > TIMESTAMP_JUMP_US
        {
            // A timestamp jump within a stream: play on from the new timeline.
            self.cursor_ts = due_ts;
        }
        let depth = self.depth_at(now_us, self.cursor_ts);
        self.depth_us = depth;

        if due_ts > self.cursor_ts + half {
            // Nothing is due: the sender paused. Adapting here is inaudible.
            self.awaiting_late = false;
            match self.adapt(now_us, depth, Boundary::Both) {
                Adapt::Insert => self.stats.inserted += 1,
                Adapt::Drop => {
                    self.stats.dropped += 1;
                    self.cursor_ts = (self.cursor_ts + 2 * self.frame_samples).min(due_ts);
                    self.corrected(now_us);
                }
                Adapt::Hold => self.cursor_ts += self.frame_samples,
            }
            return Step::Filler;
        }
        if missing > 0 {
            self.awaiting_late = false;
            self.stats.lost += 1;
            self.advance_expected(false);
            self.cursor_ts += self.frame_samples;
            return Step::Lost((missing == 1).then_some(head));
        }
        if std::mem::take(&mut self.awaiting_late) {
            // The packet the buffer ran dry for came after its time.
            let variation = slot
                .arrival_us
                .saturating_sub(self.ts_us(slot.ext_ts))
                .saturating_sub(self.floor_us.unwrap_or(0));
            self.raise_target_for_late(variation);
        }
        // A marked packet may start a frame late (insert) but is never
        // skipped; after a silent frame either is unheard.
        let boundary = if self.last_silent {
            Boundary::Both
        } else if slot.marker {
            Boundary::InsertOnly
        } else {
            Boundary::None
        };
        match self.adapt(now_us, depth, boundary) {
            Adapt::Insert => {
                self.stats.inserted += 1;
                return Step::Filler;
            }
            Adapt::Drop if self.is_held(slot.ext_seq + 1) => {
                // Skip this packet; the next one plays now.
                self.stats.dropped += 1;
                self.release(head);
                self.advance_expected(true);
                self.corrected(now_us);
                let next = self.slot_index(slot.ext_seq + 1);
                return self.play(next);
            }
            Adapt::Drop | Adapt::Hold => {}
        }
        self.play(head)
    }

    fn play(&mut self, index: usize) -> Step {
        let slot = self.slots[index];
        self.release(index);
        self.advance_expected(true);
        self.cursor_ts = slot.ext_ts + self.frame_samples;
        self.stats.played += 1;
        Step::Packet(index)
    }

    /// Decides whether to start playing again; positions the cursor if so.
    fn try_resume(&mut self, now_us: i64) -> bool {
        let Some(mut head) = self.head() else {
            return false;
        };
        // After a network stall the backlog can be far deeper than needed:
        // start from the newest packets that keep the target.
        loop {
            let slot = self.slots[head];
            let too_deep = self.depth_at(now_us, slot.ext_ts) > self.target_us + 2 * FRAME_US;
            if !(too_deep && self.is_held(slot.ext_seq + 1)) {
                break;
            }
            self.stats.dropped += 1;
            self.stats.lost += u64::try_from(slot.ext_seq - self.expected_seq).unwrap_or(0);
            self.release(head);
            while self.expected_seq <= slot.ext_seq {
                self.advance_expected(self.expected_seq == slot.ext_seq);
            }
            head = self.slot_index(slot.ext_seq + 1);
        }
        let slot = self.slots[head];
        let missing = slot.ext_seq - self.expected_seq;
        // With packets missing before the head, resume one frame early so the
        // last missing one plays as Lost with the head as its FEC source.
        let resume_ts = if missing > 0 {
            slot.ext_ts - self.frame_samples
        } else {
            slot.ext_ts
        };
        if self.depth_at(now_us, resume_ts) < self.target_us {
            return false;
        }
        if missing > 1 {
            self.stats.lost += u64::try_from(missing - 1).unwrap_or(0);
            while self.expected_seq < slot.ext_seq - 1 {
                self.advance_expected(false);
            }
        }
        if self.awaiting_late
            && missing == 0
            && slot.ext_ts <= self.cursor_ts + self.frame_samples / 2
        {
            let variation = slot
                .arrival_us
                .saturating_sub(self.ts_us(slot.ext_ts))
                .saturating_sub(self.floor_us.unwrap_or(0));
            self.raise_target_for_late(variation);
        }
        self.awaiting_late = false;
        self.cursor_ts = resume_ts;
        true
    }
}
