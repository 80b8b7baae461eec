//! The VAD gate: turns one stream's per-window speech probabilities into
//! [`VadEvent`]s with hysteresis, the way Silero's own iterator does.
//!
//! * A window at or above `threshold` is speech; one below
//!   `negative_threshold` is silence; one in between keeps whatever is
//!   going on (it neither starts speech nor ends a silence).
//! * Speech starts once its speech windows add up to `min_speech`, with no
//!   silence window in between; the event's `at` is the start of the first
//!   speech window, so the confirmation delay does not hide the real onset.
//! * Speech stops once silence has lasted `min_silence`; the event's `at`
//!   is the end of the last window before that silence.
//!
//! Sans-IO: the caller passes each window's end time on the engine clock.

use std::time::Duration;

use super::VadEvent;
use crate::clock::Instant;

/// How the gate decides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadGateConfig {
    /// Probability at or above which a window is speech (Silero's default 0.5).
    pub threshold: f32,
    /// Probability below which a window is silence (Silero: threshold - 0.15).
    pub negative_threshold: f32,
    /// Speech needed before `SpeechStarted`. 64 ms (two windows): LiveKit
    /// uses 50 ms, Pipecat 200 ms; the gate stays quick and leaves
    /// barge-in's longer minimum to the turn-taking layer.
    pub min_speech: Duration,
    /// Silence needed before `SpeechStopped`: the short VAD stop (200 ms,
    /// as Pipecat) that hands over to the end-of-turn model.
    pub min_silence: Duration,
    /// Audio before the speech start to keep for ASR (300 ms, as OpenAI's
    /// server VAD and Bolna).
    pub prefix_padding: Duration,
    /// Length of one window (32 ms for Silero at 16 kHz).
    pub window: Duration,
}

impl Default for VadGateConfig {
    fn default() -> Self {
        VadGateConfig {
            threshold: 0.5,
            negative_threshold: 0.35,
            min_speech: Duration::from_millis(64),
            min_silence: Duration::from_millis(200),
            prefix_padding: Duration::from_millis(300),
            window: Duration::from_millis(32),
        }
    }
}

impl VadGateConfig {
    /// The defaults with another speech threshold; the negative threshold
    /// follows it at 0.15 below.
    pub fn with_threshold(threshold: f32) -> Self {
        VadGateConfig {
            threshold,
            negative_threshold: (threshold - 0.15).max(0.0),
            ..Self::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Quiet,
    /// Speech windows seen, not yet `min_speech` of them.
    Onset {
        start: Instant,
        speech: Duration,
    },
    /// Speech confirmed; `silence_from` is when the current silence began.
    Speaking {
        start: Instant,
        silence_from: Option<Instant>,
    },
}

/// One stream's hysteresis gate.
#[derive(Debug, Clone)]
pub struct VadGate {
    config: VadGateConfig,
    state: State,
}

impl VadGate {
    /// A gate that has heard nothing yet.
    pub fn new(config: VadGateConfig) -> Self {
        VadGate {
            config,
            state: State::Quiet,
        }
    }

    /// The settings.
    pub fn config(&self) -> &VadGateConfig {
        &self.config
    }

    /// Feeds the probability of the window that ended at `window_end`;
    /// returns the event it causes, if any. A NaN probability counts as
    /// silence.
    pub fn push(&mut self, window_end: Instant, probability: f32) -> Option<VadEvent> {
        let window_start = window_end - self.config.window;
        let is_speech = probability >= self.config.threshold;
        // NaN is silence.
        let is_silence = probability.is_nan() || probability < self.config.negative_threshold;
        match self.state {
            State::Quiet => {
                if is_speech {
                    self.state = State::Onset {
                        start: window_start,
                        speech: Duration::ZERO,
                    };
                    return self.count_onset();
                }
                None
            }
            State::Onset { .. } => {
                if is_silence {
                    self.state = State::Quiet;
                    None
                } else if is_speech {
                    self.count_onset()
                } else {
                    None
                }
            }
            State::Speaking {
                start,
                silence_from,
            } => {
                if is_speech {
                    self.state = State::Speaking {
                        start,
                        silence_from: None,
                    };
                    return None;
                }
                let silence_from = match silence_from {
                    Some(from) => from,
                    None if is_silence => window_start,
                    None => return None,
                };
                if window_end.saturating_since(silence_from) >= self.config.min_silence {
                    self.state = State::Quiet;
                    Some(VadEvent::SpeechStopped { at: silence_from })
                } else {
                    self.state = State::Speaking {
                        start,
                        silence_from: Some(silence_from),
                    };
                    None
                }
            }
        }
    }

    fn count_onset(&mut self) -> Option<VadEvent> {
        if let State::Onset { start, speech } = self.state {
            let speech = speech + self.config.window;
            if speech >= self.config.min_speech {
                self.state = State::Speaking {
                    start,
                    silence_from: None,
                };
                return Some(VadEvent::SpeechStarted { at: start });
            }
            self.state = State::Onset { start, speech };
        }
        None
    }

    /// True between `SpeechStarted` and `SpeechStopped`.
    pub fn is_speaking(&self) -> bool {
        matches!(self.state, State::Speaking { .. })
    }

    /// While speech is starting or going on: where the audio for ASR should
    /// begin, `prefix_padding` before the first speech window.
    pub fn keep_audio_from(&self) -> Option<Instant> {
        match self.state {
            State::Quiet => None,
            State::Onset { start, .. } | State::Speaking { start, .. } => {
                Some(start - self.config.prefix_padding)
            }
        }
    }

    /// Back to silence without an event (for example when the stream restarts).
    pub fn reset(&mut self) {
        self.state = State::Quiet;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds one probability per 32 ms window from time zero; returns the events.
    fn run(gate: &mut VadGate, probabilities: &[f32]) -> Vec<VadEvent> {
        probabilities
            .iter()
            .enumerate()
            .filter_map(|(i, &p)| gate.push(Instant::from_millis(32 * (i as u64 + 1)), p))
            .collect()
    }

    #[test]
    fn start_is_dated_to_the_first_speech_window_and_stop_to_the_last() {
        let mut gate = VadGate::new(VadGateConfig::default());
        // windows 0..3 silent, 3..10 speech, then silence
        let mut p = vec![0.0; 3];
        p.extend([0.9; 7]);
        p.extend([0.0; 10]);
        let events = run(&mut gate, &p);
        assert_eq!(
            events,
            vec![
                VadEvent::SpeechStarted {
                    at: Instant::from_millis(96)
                },
                VadEvent::SpeechStopped {
                    at: Instant::from_millis(320)
                },
            ]
        );
    }

    #[test]
    fn started_is_emitted_after_min_speech_and_stop_after_min_silence() {
        let mut gate = VadGate::new(VadGateConfig::default());
        assert_eq!(gate.push(Instant::from_millis(32), 0.9), None);
        assert!(!gate.is_speaking());
        assert_eq!(
            gate.push(Instant::from_millis(64), 0.9),
            Some(VadEvent::SpeechStarted { at: Instant::ZERO })
        );
        // 6 silent windows = 192 ms < 200 ms: still speaking
        for i in 0..6 {
            assert_eq!(gate.push(Instant::from_millis(96 + 32 * i), 0.1), None);
        }
        assert!(gate.is_speaking());
        assert_eq!(
            gate.push(Instant::from_millis(96 + 32 * 6), 0.1),
            Some(VadEvent::SpeechStopped {
                at: Instant::from_millis(64)
            })
        );
    }

    #[test]
    fn a_blip_shorter_than_min_speech_is_ignored() {
        let mut gate = VadGate::new(VadGateConfig::default());
        assert!(run(&mut gate, &[0.0, 0.9, 0.1, 0.0, 0.9, 0.0]).is_empty());
    }

    #[test]
    fn in_between_probabilities_neither_start_nor_break_speech() {
        let mut gate = VadGate::new(VadGateConfig::default());
        assert!(run(&mut gate, &[0.45; 20]).is_empty());
        let mut gate = VadGate::new(VadGateConfig::default());
        let mut p = vec![0.9, 0.9];
        p.extend([0.4; 30]); // hysteresis: 0.4 keeps speech going
        assert_eq!(run(&mut gate, &p).len(), 1);
        assert!(gate.is_speaking());
    }

    #[test]
    fn a_pause_shorter_than_min_silence_does_not_split_speech() {
        let mut gate = VadGate::new(VadGateConfig::default());
        let mut p = vec![0.9; 5];
        p.extend([0.0; 5]); // 160 ms
        p.extend([0.9; 5]);
        assert_eq!(run(&mut gate, &p).len(), 1);
    }

    #[test]
    fn prefix_padding_reaches_back_from_the_start() {
        let mut gate = VadGate::new(VadGateConfig::default());
        assert_eq!(gate.keep_audio_from(), None);
        run(&mut gate, &[0.0; 20]);
        gate.push(Instant::from_millis(32 * 21), 0.9);
        assert_eq!(gate.keep_audio_from(), Some(Instant::from_millis(340)));
    }

    #[test]
    fn nan_and_out_of_order_times_do_not_panic() {
        let mut gate = VadGate::new(VadGateConfig::default());
        gate.push(Instant::from_millis(1000), 0.9);
        gate.push(Instant::from_millis(10), 0.9);
        assert!(gate.is_speaking());
        assert_eq!(gate.push(Instant::ZERO, f32::NAN), None);
        gate.push(Instant::from_millis(5), f32::NAN);
    }
}
