//! The jitter buffer and the inbound stage on virtual time: every network
//! condition is a list of arrivals, and the buffer is popped at 20 ms ticks.

use std::time::Duration;

use callingbox_engine::audio::{
    FrameSource, InboundAudio, InboundCodec, JitterBuffer, JitterConfig, Playout, PushOutcome,
};
use callingbox_engine::clock::Instant;
use callingbox_engine::codecs::{
    FrameDuration, G711Law, MediaTime, OpusEncoder, OpusEncoderConfig, PcmFrame, SampleRate,
    opus::MAX_PACKET_BYTES, read_wav, split_into_frames,
};

const ULAW_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../fixtures/audio/statement_billing.8k.ulaw.wav"
);
const PCM16_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../fixtures/audio/statement_billing.16k.wav"
);

/// A deterministic pseudo-random source (xorshift64*).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Debug, Clone)]
struct Arrival {
    at_us: u64,
    seq: u16,
    ts: u32,
    marker: bool,
    payload: Vec<u8>,
}

/// What one tick played, owned so a test can look at it after the buffer moved on.
#[derive(Debug, Clone, PartialEq)]
enum Out {
    Packet(Vec<u8>, u32),
    Lost(Option<Vec<u8>>),
    Filler,
    Waiting,
}

struct Tick {
    now: Instant,
    out: Out,
    depth: Duration,
    target: Duration,
    late_so_far: u64,
}

/// A payload that names the packet it belongs to.
fn tagged(index: u64, len: usize) -> Vec<u8> {
    let mut payload = vec![0x55; len];
    payload[..8].copy_from_slice(&index.to_le_bytes());
    payload
}

fn tag_of(payload: &[u8]) -> u64 {
    u64::from_le_bytes(payload[..8].try_into().expect("tagged payload"))
}

/// Pushes every arrival due by each tick, then pops; ticks every 20 ms from `phase_us`.
fn simulate(jb: &mut JitterBuffer, arrivals: &[Arrival], phase_us: u64, ticks: usize) -> Vec<Tick> {
    let mut sorted: Vec<&Arrival> = arrivals.iter().collect();
    sorted.sort_by_key(|a| a.at_us);
    let mut next = 0;
    let mut log = Vec::with_capacity(ticks);
    for tick in 0..ticks {
        let now_us = phase_us + tick as u64 * 20_000;
        while next < sorted.len() && sorted[next].at_us <= now_us {
            let a = sorted[next];
            jb.push_with_marker(
                Instant::from_micros(a.at_us),
                a.seq,
                a.ts,
                a.marker,
                &a.payload,
            );
            next += 1;
        }
        let now = Instant::from_micros(now_us);
        let out = match jb.pop(now) {
            Playout::Packet { payload, timestamp } => Out::Packet(payload.to_vec(), timestamp),
            Playout::Lost { next_payload } => Out::Lost(next_payload.map(<[u8]>::to_vec)),
            Playout::Filler => Out::Filler,
            Playout::Waiting => Out::Waiting,
        };
        let stats = jb.stats();
        log.push(Tick {
            now,
            out,
            depth: stats.depth,
            target: stats.target,
            late_so_far: stats.late,
        });
    }
    log
}

/// A 20 ms packet stream at 8 kHz: packet `k` sent at `k * 20 ms * sender_period`
/// and delayed by `delay_us(k)`.
fn stream(
    count: u64,
    first_seq: u16,
    first_ts: u32,
    sender_period: f64,
    mut delay_us: impl FnMut(u64) -> u64,
) -> Vec<Arrival> {
    (0..count)
        .map(|k| Arrival {
            at_us: (k as f64 * 20_000.0 * sender_period) as u64 + delay_us(k),
            seq: first_seq.wrapping_add(k as u16),
            ts: first_ts.wrapping_add((k as u32).wrapping_mul(160)),
            marker: false,
            payload: tagged(k, 160),
        })
        .collect()
}

fn g711_buffer() -> JitterBuffer {
    JitterBuffer::new(JitterConfig::for_clock_rate(8_000)).expect("valid config")
}

fn played_tags(log: &[Tick]) -> Vec<u64> {
    log.iter()
        .filter_map(|t| match &t.out {
            Out::Packet(payload, _) => Some(tag_of(payload)),
            _ => None,
        })
        .collect()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[test]
fn in_order_stream_plays_every_packet_once_at_constant_depth() {
    let audio = read_wav(ULAW_FIXTURE).expect("fixture");
    assert_eq!(audio.rate, SampleRate::Hz8000);
    let frames = split_into_frames(&audio.samples, SampleRate::Hz8000, FrameDuration::Ms20);
    let mut arrivals = Vec::new();
    for (k, frame) in frames.iter().enumerate() {
        let mut payload = Vec::new();
        G711Law::MuLaw
            .encode_frame(frame, &mut payload)
            .expect("encode");
        arrivals.push(Arrival {
            at_us: 1_000_000 + k as u64 * 20_000 + 3_000,
            seq: 1000 + k as u16,
            ts: 42 + k as u32 * 160,
            marker: k == 0,
            payload,
        });
    }
    let mut jb = g711_buffer();
    let log = simulate(&mut jb, &arrivals, 0, 50 + frames.len() + 10);

    let played: Vec<&Tick> = log
        .iter()
        .filter(|t| matches!(t.out, Out::Packet(..)))
        .collect();
    assert_eq!(played.len(), arrivals.len(), "every packet plays");
    for (tick, arrival) in played.iter().zip(&arrivals) {
        assert_eq!(tick.out, Out::Packet(arrival.payload.clone(), arrival.ts));
    }
    // Between the first and the last packet, nothing but packets.
    let first = log
        .iter()
        .position(|t| matches!(t.out, Out::Packet(..)))
        .expect("played");
    let body = &log[first..first + arrivals.len()];
    assert!(body.iter().all(|t| matches!(t.out, Out::Packet(..))));
    // The depth never moves, and sits between the minimum and a frame above it.
    let depth = body[0].depth;
    assert!(body.iter().all(|t| t.depth == depth), "depth is constant");
    assert!(
        depth >= Duration::from_millis(20) && depth < Duration::from_millis(40),
        "{depth:?}"
    );
    let stats = jb.stats();
    assert_eq!(
        (
            stats.lost,
            stats.late,
            stats.dropped,
            stats.inserted,
            stats.duplicate
        ),
        (0, 0, 0, 0, 0)
    );
    assert_eq!(stats.played, arrivals.len() as u64);
    // The first packet waited exactly one tick after it became eligible.
    assert_eq!(body[0].now, Instant::from_millis(1_040));
}

#[test]
fn reordered_and_duplicated_packets_play_once_in_order() {
    let mut arrivals = stream(500, 7, 0, 1.0, |_| 30_000);
    // Swap the arrival times of pairs: the later packet arrives first.
    for k in (10..490).step_by(5) {
        let (a, b) = (arrivals[k].at_us, arrivals[k + 1].at_us);
        arrivals[k].at_us = b + 2_000;
        arrivals[k + 1].at_us = a;
    }
    // Duplicates: some soon after the original, some long after it played.
    let mut copies = Vec::new();
    for k in (3..495).step_by(7) {
        let mut soon = arrivals[k].clone();
        soon.at_us += 1_000;
        copies.push(soon);
        let mut stale = arrivals[k].clone();
        stale.at_us += 200_000;
        copies.push(stale);
    }
    let copy_count = copies.len() as u64;
    arrivals.extend(copies);

    let mut jb = g711_buffer();
    let log = simulate(&mut jb, &arrivals, 5_000, 600);
    assert_eq!(played_tags(&log), (0..500).collect::<Vec<_>>());
    let stats = jb.stats();
    assert_eq!(stats.duplicate, copy_count);
    assert_eq!(stats.reordered, 96);
    assert_eq!((stats.lost, stats.late), (0, 0));
}

#[test]
fn a_late_packet_is_refused_and_played_as_lost() {
    let mut arrivals = stream(200, 0, 0, 1.0, |_| 10_000);
    arrivals[100].at_us += 500_000;
    let mut jb = g711_buffer();
    let log = simulate(&mut jb, &arrivals, 0, 260);
    let tags = played_tags(&log);
    assert!(!tags.contains(&100));
    assert_eq!(tags.len(), 199);
    let stats = jb.stats();
    assert_eq!((stats.late, stats.lost), (1, 1));
    // One spike: the target rises by at most a frame, not to the spike.
    assert!(
        stats.target <= Duration::from_millis(40),
        "{:?}",
        stats.target
    );
}

#[test]
fn a_lost_packet_plays_as_lost_with_the_next_payload_for_fec() {
    let arrivals: Vec<Arrival> = stream(100, 0, 0, 1.0, |_| 10_000)
        .into_iter()
        .filter(|a| a.seq != 40 && a.seq != 70 && a.seq != 71)
        .collect();
    let mut jb = g711_buffer();
    let log = simulate(&mut jb, &arrivals, 0, 130);
    let outs: Vec<&Out> = log
        .iter()
        .map(|t| &t.out)
        .filter(|o| !matches!(o, Out::Waiting))
        .collect();
    // Packet 39, then the loss of 40 carrying 41, then 41 itself.
    assert_eq!(*outs[40], Out::Lost(Some(tagged(41, 160))));
    assert!(matches!(outs[41], Out::Packet(p, _) if tag_of(p) == 41));
    // Two in a row: the buffer (under two frames deep) runs dry and waits a
    // tick, then plays the first loss with nothing to recover it from and
    // the second with the packet after it.
    assert_eq!(*outs[70], Out::Filler);
    assert_eq!(*outs[71], Out::Lost(None));
    assert_eq!(*outs[72], Out::Lost(Some(tagged(72, 160))));
    assert!(matches!(outs[73], Out::Packet(p, _) if tag_of(p) == 72));
    assert_eq!(jb.stats().lost, 3);
    assert_eq!(played_tags(&log).len(), 97);
}

/// Ten seconds calm, `burst_s` seconds of up to 100 ms of random extra delay, then calm.
fn burst_scenario(burst_s: u64, calm_after_s: u64) -> (JitterBuffer, Vec<Tick>, usize) {
    let burst_start = 500;
    let burst_end = burst_start + burst_s * 50;
    let total = burst_end + calm_after_s * 50;
    let mut rng = XorShift(0x1234_5678_9ABC_DEF1);
    let arrivals = stream(total, 100, 5_000, 1.0, |k| {
        let extra = if (burst_start..burst_end).contains(&k) {
            rng.below(100_000)
        } else {
            0
        };
        20_000 + extra
    });
    let mut jb = g711_buffer();
    let ticks = total as usize + 20;
    let log = simulate(&mut jb, &arrivals, 7_000, ticks);
    (jb, log, burst_end as usize)
}

#[test]
fn a_jitter_burst_raises_the_depth_until_late_packets_stop() {
    let (jb, log, burst_end) = burst_scenario(20, 0);
    let calm_depth = log[450].depth;
    assert!(calm_depth < Duration::from_millis(45), "{calm_depth:?}");
    // Some packets are late as the burst begins...
    let late_in_burst = log[burst_end].late_so_far - log[500].late_so_far;
    assert!(
        late_in_burst > 0,
        "the burst should catch the buffer shallow"
    );
    // ...and none in its last ten seconds: the depth grew past the jitter.
    let late_tail = log[burst_end].late_so_far - log[burst_end - 500].late_so_far;
    assert_eq!(late_tail, 0, "late packets in the second half of the burst");
    for tick in &log[burst_end - 500..burst_end] {
        assert!(
            tick.depth >= Duration::from_millis(100),
            "depth {:?}",
            tick.depth
        );
        assert!(
            tick.depth <= Duration::from_millis(200),
            "depth {:?}",
            tick.depth
        );
    }
    let stats = jb.stats();
    assert!(stats.reordered > 0);
    assert!(stats.delay_variation >= Duration::from_millis(90));
    assert!(stats.jitter > Duration::from_millis(20));
    eprintln!(
        "burst: late {late_in_burst} packets at onset, depth {:.0} ms at its end, target {:.0} ms, lost {}",
        ms(log[burst_end - 1].depth),
        ms(log[burst_end - 1].target),
        stats.lost
    );
}

#[test]
fn a_calm_network_brings_the_depth_back_toward_the_minimum() {
    let (jb, log, burst_end) = burst_scenario(10, 40);
    assert!(log[burst_end].depth >= Duration::from_millis(100));
    // Shrinking is slow: still deep two seconds after the burst.
    assert!(log[burst_end + 100].target >= Duration::from_millis(80));
    // Twenty seconds later it is back within a frame of the minimum (up to
    // the end of the stream, after which the buffer runs dry).
    for tick in &log[burst_end + 1000..log.len() - 20] {
        assert_eq!(tick.target, Duration::from_millis(20));
        assert!(
            tick.depth <= Duration::from_millis(40),
            "depth {:?}",
            tick.depth
        );
    }
    let stats = jb.stats();
    assert!(stats.dropped >= 4, "dropped {}", stats.dropped);
    eprintln!(
        "calm: depth {:.0} ms after the burst, {:.0} ms at the end; {} frames dropped, {} inserted",
        ms(log[burst_end].depth),
        ms(log[log.len() - 21].depth),
        stats.dropped,
        stats.inserted
    );
}

#[test]
fn sequence_and_timestamp_wrap_are_seamless() {
    // Starts 50 packets before both the u16 sequence and the u32 timestamp wrap.
    let arrivals = stream(200, 65_486, u32::MAX - 50 * 160 + 1, 1.0, |k| {
        10_000 + (k * 7_919 % 15_000)
    });
    let mut jb = g711_buffer();
    let log = simulate(&mut jb, &arrivals, 0, 230);
    assert_eq!(played_tags(&log), (0..200).collect::<Vec<_>>());
    let stats = jb.stats();
    assert_eq!((stats.lost, stats.late, stats.stream_resets), (0, 0, 0));
    // Timestamps come back exactly as sent, across the wrap.
    let stamps: Vec<u32> = log
        .iter()
        .filter_map(|t| match t.out {
            Out::Packet(_, ts) => Some(ts),
            _ => None,
        })
        .collect();
    assert_eq!(stamps[50], 0);
    assert_eq!(stamps[49], u32::MAX - 159);
}

struct DriftReport {
    dropped: u64,
    inserted: u64,
    max_depth: Duration,
    min_depth: Duration,
}

fn drift_run(sender_period: f64) -> DriftReport {
    let ticks = 10 * 60 * 50;
    let count = (ticks as f64 / sender_period) as u64 + 10;
    let mut rng = XorShift(99);
    let arrivals = stream(count, 0, 0, sender_period, |_| 30_000 + rng.below(2_000));
    let mut jb = g711_buffer();
    let log = simulate(&mut jb, &arrivals, 11_000, ticks);
    let warm = &log[100..];
    let stats = jb.stats();
    assert_eq!(
        (stats.lost, stats.late, stats.underruns),
        (0, 0, 0),
        "drift must be corrected before it costs a packet"
    );
    // Every packet sent in time to play was played or dropped, exactly once.
    let tags = played_tags(&log);
    assert!(tags.windows(2).all(|w| w[0] < w[1]));
    DriftReport {
        dropped: stats.dropped,
        inserted: stats.inserted,
        max_depth: warm.iter().map(|t| t.depth).max().expect("ticks"),
        min_depth: warm.iter().map(|t| t.depth).min().expect("ticks"),
    }
}

#[test]
fn sender_clock_drift_is_corrected_by_single_frames() {
    // Ten minutes from a sender whose clock runs 1 % fast: 6 s more audio
    // than ticks, 300 frames to drop.
    let fast = drift_run(1.0 / 1.01);
    assert!(
        (270..=330).contains(&fast.dropped),
        "dropped {}",
        fast.dropped
    );
    assert!(fast.inserted <= 2, "inserted {}", fast.inserted);
    assert!(
        fast.max_depth <= Duration::from_millis(70),
        "max {:?}",
        fast.max_depth
    );
    assert!(
        fast.min_depth >= Duration::from_millis(10),
        "min {:?}",
        fast.min_depth
    );

    // And 1 % slow: 6 s less audio than ticks, 300 frames to insert.
    let slow = drift_run(1.0 / 0.99);
    assert!(
        (270..=330).contains(&slow.inserted),
        "inserted {}",
        slow.inserted
    );
    assert!(slow.dropped <= 2, "dropped {}", slow.dropped);
    assert!(
        slow.max_depth <= Duration::from_millis(70),
        "max {:?}",
        slow.max_depth
    );
    assert!(
        slow.min_depth >= Duration::from_millis(5),
        "min {:?}",
        slow.min_depth
    );
    eprintln!(
        "drift +1%: {} dropped, depth {:.1}..{:.1} ms; -1%: {} inserted, depth {:.1}..{:.1} ms",
        fast.dropped,
        ms(fast.min_depth),
        ms(fast.max_depth),
        slow.inserted,
        ms(slow.min_depth),
        ms(slow.max_depth)
    );
}

#[test]
fn a_large_sequence_jump_is_a_new_stream_not_a_mass_loss() {
    let mut arrivals = stream(100, 500, 0, 1.0, |_| 10_000);
    // A new SSRC two seconds in: sequence and timestamp start somewhere else.
    let second = stream(100, 31_000, 3_000_000_000, 1.0, |_| 10_000);
    arrivals.extend(second.into_iter().map(|mut a| {
        a.at_us += 2_000_000;
        a.payload = tagged(1000 + tag_of(&a.payload), 160);
        a
    }));
    let mut jb = g711_buffer();
    let log = simulate(&mut jb, &arrivals, 0, 230);
    let tags = played_tags(&log);
    let expected: Vec<u64> = (0..100).chain(1000..1100).collect();
    assert_eq!(tags, expected, "both streams play whole");
    let stats = jb.stats();
    assert_eq!(stats.stream_resets, 1);
    assert!(stats.lost <= 1, "lost {}", stats.lost);

    // A lone stray packet far off is not a new stream.
    let mut jb = g711_buffer();
    let mut arrivals = stream(100, 0, 0, 1.0, |_| 10_000);
    arrivals.push(Arrival {
        at_us: 1_000_000,
        seq: 40_000,
        ts: 123,
        marker: false,
        payload: tagged(9999, 160),
    });
    let log = simulate(&mut jb, &arrivals, 0, 130);
    assert_eq!(played_tags(&log), (0..100).collect::<Vec<_>>());
    assert_eq!(jb.stats().stream_resets, 0);
}

#[test]
fn reset_starts_a_new_stream_and_keeps_the_learned_target() {
    let (mut jb, _, _) = burst_scenario(10, 0);
    let target = jb.stats().target;
    assert!(target >= Duration::from_millis(100));
    jb.reset();
    assert_eq!(jb.pop(Instant::from_secs_for_test(100)), Playout::Waiting);
    assert_eq!(jb.stats().buffered, 0);
    assert_eq!(
        jb.push(Instant::from_secs_for_test(100), 5, 5, &[1; 160]),
        PushOutcome::Accepted
    );
    assert!(jb.stats().target >= target - Duration::from_millis(10));
}

trait FromSecs {
    fn from_secs_for_test(secs: u64) -> Instant;
}

impl FromSecs for Instant {
    fn from_secs_for_test(secs: u64) -> Instant {
        Instant::from_millis(secs * 1000)
    }
}

#[test]
fn a_silence_gap_in_timestamps_is_filler_not_loss() {
    // A talk spurt, 400 ms of nothing (the sender suppressed silence and kept
    // the sequence contiguous), then a marked talk spurt.
    let mut arrivals = stream(50, 0, 0, 1.0, |_| 15_000);
    let mut second = stream(50, 50, 50 * 160, 1.0, |_| 15_000);
    for a in &mut second {
        a.at_us += 1_000_000 + 400_000;
        a.ts = a.ts.wrapping_add(20 * 160);
        a.payload = tagged(tag_of(&a.payload) + 50, 160);
    }
    second[0].marker = true;
    arrivals.extend(second);
    let mut jb = g711_buffer();
    let log = simulate(&mut jb, &arrivals, 0, 140);
    assert_eq!(played_tags(&log), (0..100).collect::<Vec<_>>());
    // The buffer cannot tell a pause from a late packet until the next
    // talk spurt arrives: it conceals five ticks, then waits; the pause
    // lasts as long as the sender's (400 ms), and nothing counts as lost.
    let last_of_first = log
        .iter()
        .position(|t| matches!(&t.out, Out::Packet(p, _) if tag_of(p) == 49))
        .expect("played");
    let first_of_second = log
        .iter()
        .position(|t| matches!(&t.out, Out::Packet(p, _) if tag_of(p) == 50))
        .expect("played");
    let pause = &log[last_of_first + 1..first_of_second];
    assert!(
        (19..=21).contains(&pause.len()),
        "{} ticks of pause",
        pause.len()
    );
    assert!(pause[..5].iter().all(|t| t.out == Out::Filler));
    assert!(pause[5..].iter().all(|t| t.out == Out::Waiting));
    let stats = jb.stats();
    assert_eq!((stats.lost, stats.late, stats.dropped), (0, 0, 0));
}

#[test]
fn bad_configurations_are_errors() {
    let good = JitterConfig::for_clock_rate(8_000);
    assert!(
        JitterBuffer::new(JitterConfig {
            clock_rate: 0,
            ..good
        })
        .is_err()
    );
    assert!(
        JitterBuffer::new(JitterConfig {
            clock_rate: 44_123,
            ..good
        })
        .is_err()
    );
    assert!(
        JitterBuffer::new(JitterConfig {
            min_depth: Duration::from_millis(300),
            ..good
        })
        .is_err()
    );
    assert!(JitterBuffer::new(JitterConfig { slots: 8, ..good }).is_err());
    assert!(
        JitterBuffer::new(JitterConfig {
            max_payload: 0,
            ..good
        })
        .is_err()
    );
    let mut jb = JitterBuffer::new(good).expect("valid");
    assert_eq!(jb.push(Instant::ZERO, 1, 1, &[]), PushOutcome::Empty);
    assert_eq!(
        jb.push(Instant::ZERO, 1, 1, &[0; 1501]),
        PushOutcome::TooLarge
    );
}

#[test]
fn arbitrary_input_never_panics_and_never_grows_memory() {
    for config in [
        JitterConfig::for_clock_rate(8_000),
        JitterConfig::for_clock_rate(48_000),
        JitterConfig {
            slots: 16,
            max_payload: 64,
            min_depth: Duration::ZERO,
            max_depth: Duration::from_millis(200),
            clock_rate: 16_000,
        },
    ] {
        let mut jb = JitterBuffer::new(config).expect("valid");
        let heap = jb.heap_bytes();
        let mut rng = XorShift(0xDEAD_BEEF ^ u64::from(config.clock_rate));
        let garbage = vec![0xA5u8; 4000];
        let mut now_us = 0u64;
        let mut seq = 0u16;
        let mut ts = 0u32;
        for round in 0..200_000u32 {
            now_us += rng.below(30_000);
            // Mostly plausible streams with mistakes, sometimes anything at all.
            match rng.below(10) {
                0 => seq = rng.next() as u16,
                1 => ts = rng.next() as u32,
                2 => seq = seq.wrapping_sub(rng.below(200) as u16),
                _ => {
                    seq = seq.wrapping_add(1 + rng.below(3) as u16);
                    ts = ts.wrapping_add(160 * rng.below(4) as u32);
                }
            }
            let len = match rng.below(8) {
                0 => rng.below(4000) as usize,
                1 => 0,
                _ => 1 + rng.below(200) as usize,
            };
            jb.push_with_marker(
                Instant::from_micros(now_us),
                seq,
                ts,
                rng.below(5) == 0,
                &garbage[..len],
            );
            if round % 2 == 0 {
                if let Playout::Packet { payload, .. }
                | Playout::Lost {
                    next_payload: Some(payload),
                } = jb.pop(Instant::from_micros(now_us))
                {
                    assert!(!payload.is_empty() && payload.len() <= config.max_payload);
                }
                jb.note_silence(rng.below(3) == 0);
            }
            if round % 50_000 == 49_999 {
                jb.reset();
            }
            let stats = jb.stats();
            assert!(stats.buffered <= config.slots);
            assert!(stats.target <= config.max_depth && stats.target >= config.min_depth);
        }
        assert_eq!(jb.heap_bytes(), heap, "memory grew");
    }
}

// ---- the inbound stage ----

fn ulaw_packets() -> Vec<Vec<u8>> {
    let audio = read_wav(ULAW_FIXTURE).expect("fixture");
    split_into_frames(&audio.samples, SampleRate::Hz8000, FrameDuration::Ms20)
        .iter()
        .map(|frame| {
            let mut payload = Vec::new();
            G711Law::MuLaw
                .encode_frame(frame, &mut payload)
                .expect("encode");
            payload
        })
        .collect()
}

/// Runs an inbound stage over packets sent every 20 ms (skipping `lost`),
/// returning every output frame and its source.
fn run_inbound(
    codec: InboundCodec,
    output_rate: SampleRate,
    packets: &[Vec<u8>],
    timestamp_step: u32,
    lost: &[usize],
) -> (InboundAudio, Vec<(FrameSource, Vec<i16>)>) {
    let mut inbound = InboundAudio::new(codec, output_rate).expect("inbound");
    let mut out = PcmFrame::with_capacity(output_rate, FrameDuration::Ms20);
    let buffer = out.samples().as_ptr();
    let mut frames = Vec::new();
    let mut next = 0;
    for tick in 0..packets.len() + 20 {
        let now_us = tick as u64 * 20_000 + 9_000;
        while next < packets.len() && (next as u64 * 20_000 + 2_000) <= now_us {
            if !lost.contains(&next) {
                let at = Instant::from_micros(next as u64 * 20_000 + 2_000);
                inbound.push_packet(
                    at,
                    next as u16,
                    next as u32 * timestamp_step,
                    &packets[next],
                );
            }
            next += 1;
        }
        let source = inbound.next_frame(Instant::from_micros(now_us), &mut out);
        assert_eq!(out.len(), output_rate.samples_in(FrameDuration::Ms20));
        assert_eq!(out.rate(), output_rate);
        frames.push((source, out.samples().to_vec()));
    }
    assert_eq!(
        out.samples().as_ptr(),
        buffer,
        "the output buffer was reallocated"
    );
    (inbound, frames)
}

#[test]
fn g711_stream_decodes_every_packet_to_16_khz() {
    let packets = ulaw_packets();
    let (inbound, frames) = run_inbound(
        InboundCodec::G711(G711Law::MuLaw),
        SampleRate::Hz16000,
        &packets,
        160,
        &[],
    );
    let decoded = frames
        .iter()
        .filter(|(s, _)| *s == FrameSource::Decoded)
        .count();
    assert_eq!(decoded, packets.len());
    let first = frames
        .iter()
        .position(|(s, _)| *s == FrameSource::Decoded)
        .expect("decoded");
    assert!(
        frames[..first]
            .iter()
            .all(|(s, f)| *s == FrameSource::Silence && f.iter().all(|&x| x == 0))
    );
    let energy: f64 = frames
        .iter()
        .flat_map(|(_, f)| f.iter())
        .map(|&x| f64::from(x).powi(2))
        .sum();
    assert!(energy > 1e9, "speech came through: {energy}");
    assert_eq!(inbound.stats().decoded, packets.len() as u64);
}

#[test]
fn g711_loss_fades_into_comfort_noise_without_a_click() {
    let packets = ulaw_packets();
    // Find a loud stretch and lose three packets in a row there.
    let (_, reference) = run_inbound(
        InboundCodec::G711(G711Law::MuLaw),
        SampleRate::Hz8000,
        &packets,
        160,
        &[],
    );
    let offset = reference
        .iter()
        .position(|(s, _)| *s == FrameSource::Decoded)
        .expect("decoded");
    let rms =
        |f: &[i16]| (f.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / f.len() as f64).sqrt();
    let loud = (offset + 20..reference.len())
        .find(|&i| reference[i - 1].0 == FrameSource::Decoded && rms(&reference[i - 1].1) > 2000.0)
        .expect("a loud frame")
        - offset;
    let lost = [loud, loud + 1, loud + 2];
    let (inbound, frames) = run_inbound(
        InboundCodec::G711(G711Law::MuLaw),
        SampleRate::Hz8000,
        &packets,
        160,
        &lost,
    );
    let at = loud + offset;
    assert_eq!(frames[at - 1].0, FrameSource::Decoded);
    // Three losses (plus the ticks the buffer waits while it is dry) are
    // comfort noise, then the stream resumes.
    let resumed = at
        + frames[at..]
            .iter()
            .position(|(s, _)| *s == FrameSource::Decoded)
            .expect("resumed");
    assert!(
        (3..=5).contains(&(resumed - at)),
        "{} concealed frames",
        resumed - at
    );
    assert!(
        frames[at..resumed]
            .iter()
            .all(|(s, _)| *s == FrameSource::ComfortNoise)
    );
    // Continuous samples: no step across the loss is steeper than the speech itself.
    // (Up to the end of the 5 ms fade-in: past it is the speech itself.)
    let mut stream: Vec<i16> = frames[at - 10..=resumed]
        .iter()
        .flat_map(|(_, f)| f.clone())
        .collect();
    stream.truncate(stream.len() - 160 + 40);
    let steps: Vec<i32> = stream
        .windows(2)
        .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
        .collect();
    // Steps within the ten decoded frames, then from the last decoded sample on.
    let speech_max = steps[..10 * 160 - 1].iter().copied().max().expect("steps");
    let loss_max = steps[10 * 160 - 1..].iter().copied().max().expect("steps");
    assert!(
        loss_max <= speech_max,
        "step {loss_max} across the loss, speech has {speech_max}"
    );
    let boundary = (i32::from(frames[at].1[0]) - i32::from(frames[at - 1].1[159])).abs();
    assert!(
        boundary <= speech_max / 4,
        "step {boundary} into the concealment"
    );
    let back = (i32::from(frames[resumed].1[0]) - i32::from(frames[resumed - 1].1[159])).abs();
    assert!(back <= speech_max / 4, "step {back} out of the concealment");
    // After the fade: low-level noise, not silence and not the speech.
    let noise = rms(&frames[at + 1].1);
    assert!(noise > 0.5 && noise < 200.0, "comfort noise rms {noise}");
    // (The stream's end is concealed the same way before the buffer gives up.)
    let counted = frames
        .iter()
        .filter(|(s, _)| *s == FrameSource::ComfortNoise)
        .count();
    assert_eq!(inbound.stats().comfort_noise, counted as u64);
    assert_eq!(counted, resumed - at + 5);
}

/// Opus packets of the 16 kHz fixture with FEC on.
fn opus_packets() -> (Vec<Vec<u8>>, Vec<f64>) {
    let audio = read_wav(PCM16_FIXTURE).expect("fixture");
    let frames = split_into_frames(&audio.samples, SampleRate::Hz16000, FrameDuration::Ms20);
    let mut encoder =
        OpusEncoder::new(SampleRate::Hz16000, OpusEncoderConfig::default()).expect("encoder");
    let mut packet = [0u8; MAX_PACKET_BYTES];
    let packets = frames
        .iter()
        .map(|frame| {
            let n = encoder.encode(frame, &mut packet).expect("encode");
            packet[..n].to_vec()
        })
        .collect();
    let levels = frames
        .iter()
        .map(|f| {
            (f.samples()
                .iter()
                .map(|&x| f64::from(x).powi(2))
                .sum::<f64>()
                / f.len() as f64)
                .sqrt()
        })
        .collect();
    (packets, levels)
}

#[test]
fn opus_loss_is_recovered_from_fec_closer_to_the_original_than_plc() {
    let (packets, levels) = opus_packets();
    let (_, reference) = run_inbound(InboundCodec::Opus, SampleRate::Hz16000, &packets, 960, &[]);
    let offset = reference
        .iter()
        .position(|(s, _)| *s == FrameSource::Decoded)
        .expect("decoded");
    let error = |a: &[i16], b: &[i16]| -> f64 {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
            .sum()
    };
    let voiced: Vec<usize> = (10..packets.len() - 5)
        .filter(|&k| levels[k] > 1500.0 && levels[k - 1] > 1500.0)
        .step_by(3)
        .take(15)
        .collect();
    assert!(voiced.len() >= 10, "speech frames in the fixture");
    let (mut fec_error, mut plc_error) = (0.0, 0.0);
    for &k in &voiced {
        // One loss: the next packet is there, so FEC rebuilds the frame.
        let (_, with_fec) =
            run_inbound(InboundCodec::Opus, SampleRate::Hz16000, &packets, 960, &[k]);
        // Two in a row: the first has nothing to recover from and is concealed.
        let (_, with_plc) = run_inbound(
            InboundCodec::Opus,
            SampleRate::Hz16000,
            &packets,
            960,
            &[k, k + 1],
        );
        let at = offset + k;
        assert_eq!(with_fec[at].0, FrameSource::Recovered, "loss at {k}");
        // The buffer runs dry (the depth is under two frames) and conceals a
        // tick while it cannot yet tell late from lost; then the second loss
        // is rebuilt from the packet after it.
        let plc_sources: Vec<FrameSource> = with_plc[at..at + 4].iter().map(|f| f.0).collect();
        assert_eq!(
            plc_sources,
            [
                FrameSource::Concealed,
                FrameSource::Concealed,
                FrameSource::Recovered,
                FrameSource::Decoded
            ],
            "losses at {k}, {}",
            k + 1
        );
        fec_error += error(&reference[at].1, &with_fec[at].1);
        plc_error += error(&reference[at].1, &with_plc[at].1);
    }
    eprintln!(
        "opus: FEC error {:.3e}, PLC error {:.3e} over {} losses ({:.1} dB better)",
        fec_error,
        plc_error,
        voiced.len(),
        10.0 * (plc_error / fec_error).log10()
    );
    assert!(
        fec_error < plc_error * 0.7,
        "FEC {fec_error:.0} vs PLC {plc_error:.0}"
    );
}

#[test]
fn corrupt_and_arbitrary_payloads_are_concealed_never_a_panic() {
    for (codec, step) in [
        (InboundCodec::Opus, 960u32),
        (InboundCodec::G711(G711Law::ALaw), 160),
    ] {
        let mut inbound = InboundAudio::new(codec, SampleRate::Hz16000).expect("inbound");
        let mut out = PcmFrame::with_capacity(SampleRate::Hz16000, FrameDuration::Ms20);
        let mut rng = XorShift(7);
        let mut garbage = vec![0u8; 1500];
        for tick in 0..5_000u64 {
            let len = match rng.below(4) {
                0 => rng.below(1500) as usize,
                _ => {
                    if step == 160 {
                        160
                    } else {
                        1 + rng.below(120) as usize
                    }
                }
            };
            for byte in &mut garbage[..len] {
                *byte = rng.next() as u8;
            }
            let seq = if rng.below(50) == 0 {
                rng.next() as u16
            } else {
                tick as u16
            };
            let now = Instant::from_micros(tick * 20_000 + rng.below(40_000));
            inbound.push_packet(now, seq, tick as u32 * step, &garbage[..len]);
            inbound.next_frame(Instant::from_micros(tick * 20_000 + 30_000), &mut out);
            assert_eq!(out.len(), 320);
        }
        let stats = inbound.stats();
        let total =
            stats.decoded + stats.concealed + stats.recovered + stats.comfort_noise + stats.silence;
        assert_eq!(total, 5_000);
        if codec == InboundCodec::Opus {
            assert!(stats.decode_errors > 100, "{stats:?}");
        }
    }
}

#[test]
fn output_frames_are_stamped_back_to_back() {
    let packets = ulaw_packets();
    let mut inbound = InboundAudio::new(InboundCodec::G711(G711Law::MuLaw), SampleRate::Hz16000)
        .expect("inbound");
    let mut out = PcmFrame::with_capacity(SampleRate::Hz16000, FrameDuration::Ms20);
    for (k, packet) in packets.iter().take(20).enumerate() {
        let now = Instant::from_millis(k as u64 * 20);
        inbound.push_packet(now, k as u16, k as u32 * 160, packet);
        inbound.next_frame(now + Duration::from_millis(5), &mut out);
        assert_eq!(out.start(), MediaTime::from_millis(k as u64 * 20));
    }
}
