//! Sending keypad digits as RFC 4733 telephone-events (the agent's
//! `send_dtmf`): a sans-IO playout that, ticked on the media clock every
//! packet interval, yields the event packets to send.
//!
//! Per RFC 4733, section 2.5: every packet of one event carries the event's
//! start timestamp; the first has the marker bit; each update carries the
//! duration so far (in timestamp units); the end is sent three times with
//! the E bit and the final duration. Sequence numbers (the RTP sender's)
//! still advance for every packet. Between digits a gap of no events; `w`
//! in the digits is a longer pause (as dialers write it).

use std::collections::VecDeque;

use thiserror::Error;

/// The most digits one request may hold (pauses included).
pub const MAX_DIGITS: usize = 64;
/// Packets of the event's end, all alike (RFC 4733, 2.5.1.4).
const END_PACKETS: u8 = 3;

/// Why a digit string cannot be sent.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DigitsError {
    /// Nothing to send.
    #[error("no digits to send")]
    Empty,
    /// More than [`MAX_DIGITS`].
    #[error("at most {MAX_DIGITS} digits per request")]
    TooLong,
    /// A character that is neither a key nor a pause.
    #[error("{0:?} is not a keypad digit (0-9, *, #, A-D, or w for a pause)")]
    NotADigit(char),
}

/// One thing to play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigitStep {
    /// A key, as its RFC 4733 event code (0-9, 10 = `*`, 11 = `#`, 12-15 = A-D).
    Key(u8),
    /// A pause (`w`).
    Pause,
}

/// Parses `digits` (`0`-`9`, `*`, `#`, `A`-`D` in either case, `w` for a
/// pause; spaces and dashes are ignored, as in written numbers).
pub fn parse_digits(digits: &str) -> Result<Vec<DigitStep>, DigitsError> {
    let mut steps = Vec::new();
    for c in digits.chars() {
        let step = match c.to_ascii_uppercase() {
            d @ '0'..='9' => DigitStep::Key(d as u8 - b'0'),
            '*' => DigitStep::Key(10),
            '#' => DigitStep::Key(11),
            d @ 'A'..='D' => DigitStep::Key(d as u8 - b'A' + 12),
            'W' => DigitStep::Pause,
            ' ' | '-' => continue,
            _ => return Err(DigitsError::NotADigit(c)),
        };
        if steps.len() == MAX_DIGITS {
            return Err(DigitsError::TooLong);
        }
        steps.push(step);
    }
    if steps.iter().all(|s| *s == DigitStep::Pause) {
        return Err(DigitsError::Empty);
    }
    Ok(steps)
}

/// Timing of the digits, in RTP timestamp units of `clock_rate` (8 kHz for
/// telephone-event/8000; 48 kHz beside Opus).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventTiming {
    /// The packet interval (160 = 20 ms).
    pub packet: u32,
    /// How long each key sounds (800 = 100 ms).
    pub tone: u32,
    /// The silence after each key (800 = 100 ms).
    pub gap: u32,
    /// A `w` pause (4000 = 500 ms).
    pub pause: u32,
    /// The volume field: the tone's power in -dBm0 (10 = -10 dBm0).
    pub volume: u8,
    /// The events' clock (Hz).
    pub clock_rate: u32,
}

impl EventTiming {
    /// The default timing (100 ms keys, 100 ms gaps, 500 ms pauses, 20 ms
    /// packets) on a clock of `clock_rate` Hz.
    pub fn at_clock_rate(clock_rate: u32) -> Self {
        let units = |ms: u32| ms * (clock_rate / 1_000);
        EventTiming {
            packet: units(20),
            tone: units(100),
            gap: units(100),
            pause: units(500),
            volume: 10,
            clock_rate,
        }
    }

    /// How long `steps` take to play (keys with their gaps, pauses).
    pub fn duration_of(&self, steps: &[DigitStep]) -> std::time::Duration {
        let units: u64 = steps
            .iter()
            .map(|step| match step {
                DigitStep::Key(_) => u64::from(self.tone + self.gap),
                DigitStep::Pause => u64::from(self.pause),
            })
            .sum();
        std::time::Duration::from_millis(units * 1_000 / u64::from(self.clock_rate.max(1)))
    }
}

impl Default for EventTiming {
    /// On the 8 kHz clock of telephone-event/8000.
    fn default() -> Self {
        EventTiming::at_clock_rate(8_000)
    }
}

/// One telephone-event packet to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPacket {
    /// The marker bit (the event's first packet).
    pub marker: bool,
    /// The RTP timestamp: the event's start.
    pub timestamp: u32,
    /// The 4-byte payload: event, E|R|volume, duration.
    pub payload: [u8; 4],
}

#[derive(Debug, Clone, Copy)]
enum State {
    Idle,
    Playing { event: u8, start: u32 },
    Ending { event: u8, start: u32, left: u8 },
    Silent { until: u32 },
}

/// Plays queued digits as event packets, one per tick.
#[derive(Debug)]
pub struct EventPlayout {
    timing: EventTiming,
    queue: VecDeque<DigitStep>,
    state: State,
}

impl EventPlayout {
    /// An idle playout.
    pub fn new(timing: EventTiming) -> Self {
        EventPlayout {
            timing,
            queue: VecDeque::with_capacity(MAX_DIGITS),
            state: State::Idle,
        }
    }

    /// Queues `steps` after whatever is still playing.
    pub fn queue(&mut self, steps: &[DigitStep]) {
        self.queue.extend(steps.iter().copied());
    }

    /// Whether digits are playing or queued (agent audio waits meanwhile).
    pub fn is_active(&self) -> bool {
        !matches!(self.state, State::Idle) || !self.queue.is_empty()
    }

    /// One tick at media timestamp `now` (advancing by `timing.packet` per
    /// tick): the packet to send now, if any.
    pub fn tick(&mut self, now: u32) -> Option<EventPacket> {
        loop {
            match self.state {
                State::Idle => match self.queue.pop_front()? {
                    DigitStep::Key(event) => {
                        self.state = State::Playing { event, start: now };
                        return Some(self.packet(event, now, self.timing.packet, true, false));
                    }
                    DigitStep::Pause => {
                        self.state = State::Silent {
                            until: now.wrapping_add(self.timing.pause),
                        };
                        return None;
                    }
                },
                State::Playing { event, start } => {
                    let duration = now.wrapping_sub(start).wrapping_add(self.timing.packet);
                    if duration >= self.timing.tone {
                        self.state = State::Ending {
                            event,
                            start,
                            left: END_PACKETS - 1,
                        };
                        return Some(self.packet(event, start, self.timing.tone, false, true));
                    }
                    return Some(self.packet(event, start, duration, false, false));
                }
                State::Ending { event, start, left } => {
                    self.state = if left <= 1 {
                        State::Silent {
                            until: start.wrapping_add(self.timing.tone + self.timing.gap),
                        }
                    } else {
                        State::Ending {
                            event,
                            start,
                            left: left - 1,
                        }
                    };
                    return Some(self.packet(event, start, self.timing.tone, false, true));
                }
                State::Silent { until } => {
                    // Wrapping-safe "now >= until".
                    if (now.wrapping_sub(until) as i32) < 0 {
                        return None;
                    }
                    self.state = State::Idle;
                }
            }
        }
    }

    fn packet(&self, event: u8, start: u32, duration: u32, marker: bool, end: bool) -> EventPacket {
        let duration = u16::try_from(duration).unwrap_or(u16::MAX).to_be_bytes();
        EventPacket {
            marker,
            timestamp: start,
            payload: [
                event,
                (u8::from(end) << 7) | (self.timing.volume & 0x3f),
                duration[0],
                duration[1],
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn play(digits: &str, ticks: u32) -> Vec<(u32, EventPacket)> {
        let mut playout = EventPlayout::new(EventTiming::default());
        playout.queue(&parse_digits(digits).expect("digits"));
        (0..ticks)
            .filter_map(|tick| {
                let now = 1_000 + tick * 160;
                playout.tick(now).map(|packet| (now, packet))
            })
            .collect()
    }

    fn duration(packet: &EventPacket) -> u16 {
        u16::from_be_bytes([packet.payload[2], packet.payload[3]])
    }

    #[test]
    fn one_key_is_a_marked_start_updates_and_three_ends() {
        let packets = play("5", 20);
        let events: Vec<_> = packets.iter().map(|(_, p)| p.payload[0]).collect();
        assert_eq!(events, vec![5; 7]);
        assert!(packets[0].1.marker);
        assert!(packets[1..].iter().all(|(_, p)| !p.marker));
        assert!(
            packets.iter().all(|(_, p)| p.timestamp == 1_000),
            "one start timestamp"
        );
        let durations: Vec<_> = packets.iter().map(|(_, p)| duration(p)).collect();
        assert_eq!(durations, vec![160, 320, 480, 640, 800, 800, 800]);
        let ends: Vec<_> = packets.iter().map(|(_, p)| p.payload[1] >> 7).collect();
        assert_eq!(ends, vec![0, 0, 0, 0, 1, 1, 1]);
        assert!(
            packets.iter().all(|(_, p)| p.payload[1] & 0x3f == 10),
            "volume"
        );
    }

    #[test]
    fn keys_follow_each_other_after_the_gap_and_w_pauses() {
        let packets = play("1#w*", 80);
        let starts: Vec<_> = packets
            .iter()
            .filter(|(_, p)| p.marker)
            .map(|(now, p)| (p.payload[0], *now))
            .collect();
        // 100 ms tone + 100 ms gap = 1600 units between starts; w adds 4000.
        assert_eq!(starts, vec![(1, 1_000), (11, 2_600), (10, 8_200)]);
        for (event, start) in starts {
            assert!(
                packets
                    .iter()
                    .filter(|(_, p)| p.payload[0] == event)
                    .all(|(_, p)| p.timestamp == start)
            );
        }
    }

    #[test]
    fn digits_are_validated() {
        assert_eq!(
            parse_digits("12a-D w"),
            Ok(vec![
                DigitStep::Key(1),
                DigitStep::Key(2),
                DigitStep::Key(12),
                DigitStep::Key(15),
                DigitStep::Pause
            ])
        );
        assert_eq!(parse_digits("12x"), Err(DigitsError::NotADigit('x')));
        assert_eq!(parse_digits(""), Err(DigitsError::Empty));
        assert_eq!(parse_digits("ww"), Err(DigitsError::Empty));
        assert_eq!(parse_digits(&"1".repeat(65)), Err(DigitsError::TooLong));
        let steps = parse_digits("12w").expect("digits");
        assert_eq!(
            EventTiming::default().duration_of(&steps),
            std::time::Duration::from_millis(900)
        );
        // Beside Opus the events run on its 48 kHz clock: six times the
        // units, the same time.
        let opus = EventTiming::at_clock_rate(48_000);
        assert_eq!((opus.packet, opus.tone, opus.pause), (960, 4_800, 24_000));
        assert_eq!(
            opus.duration_of(&steps),
            std::time::Duration::from_millis(900)
        );
    }

    #[test]
    fn idle_once_done_and_timestamps_may_wrap() {
        let mut playout = EventPlayout::new(EventTiming::default());
        playout.queue(&[DigitStep::Key(0)]);
        let mut now = u32::MAX - 300;
        let mut count = 0;
        for _ in 0..30 {
            if let Some(packet) = playout.tick(now) {
                assert_eq!(packet.timestamp, u32::MAX - 300);
                count += 1;
            }
            now = now.wrapping_add(160);
        }
        assert_eq!(count, 7);
        assert!(!playout.is_active());
    }
}
