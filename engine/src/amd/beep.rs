//! [`BeepDetector`]: the answering machine's "leave a message after the
//! tone" beep, found as a steady pure tone.
//!
//! Each 20 ms frame of 16 kHz audio is scored with the Goertzel algorithm at
//! every candidate frequency (400-2000 Hz, 25 Hz apart). A frame is *tonal*
//! when it is loud enough and one frequency holds most of its energy (a
//! pure sine scores 1.0 at its own bin; speech spreads over many harmonics
//! and formants and scores far lower). A beep is a run of tonal frames at
//! the same frequency (within a tolerance) lasting at least `min_duration`.
//! The same idea as FreeSWITCH mod_avmd (a steady single frequency) and the
//! tone detectors of Asterisk, written from the description, not the code.

use std::time::Duration;

use crate::clock::Instant;

/// Samples in the 20 ms frames the detector scores (16 kHz).
pub const BEEP_FRAME_SAMPLES: usize = 320;
const SAMPLE_RATE_HZ: f32 = 16_000.0;
const FRAME: Duration = Duration::from_millis(20);

/// What makes a tone a beep.
#[derive(Debug, Clone, PartialEq)]
pub struct BeepConfig {
    /// Lowest candidate frequency (default 400 Hz).
    pub min_hz: f32,
    /// Highest candidate frequency (default 2000 Hz).
    pub max_hz: f32,
    /// Spacing of the candidate frequencies (default 25 Hz: a tone between
    /// two candidates still scores above 0.8 of its energy on a 20 ms frame).
    pub step_hz: f32,
    /// Share of a frame's energy one frequency must hold for the frame to be
    /// tonal (default 0.7).
    pub min_purity: f32,
    /// Quietest tonal frame, dBFS RMS (default -40 dBFS).
    pub min_level_dbfs: f32,
    /// How far the frequency may drift from frame to frame within one beep
    /// (default 50 Hz, one bin of a 20 ms frame).
    pub max_drift_hz: f32,
    /// How long the tone must last to be a beep (default 120 ms: six whole
    /// frames, so any beep of 140 ms or more is found however it straddles
    /// the frame grid; answering-machine beeps last 200 ms to 1 s).
    pub min_duration: Duration,
}

impl Default for BeepConfig {
    fn default() -> Self {
        BeepConfig {
            min_hz: 400.0,
            max_hz: 2000.0,
            step_hz: 25.0,
            min_purity: 0.7,
            min_level_dbfs: -40.0,
            max_drift_hz: 50.0,
            min_duration: Duration::from_millis(120),
        }
    }
}

/// What the beep detector saw in a frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BeepEvent {
    /// A tone has lasted `min_duration`: a beep that started at `at`.
    Started {
        /// The start of its first tonal frame.
        at: Instant,
        /// Its frequency (the candidate nearest to it).
        hz: f32,
    },
    /// The beep stopped at `at` (the end of its last tonal frame).
    Ended {
        /// When it began.
        started_at: Instant,
        /// When it stopped.
        at: Instant,
        /// Its frequency.
        hz: f32,
    },
}

/// Finds beeps in 20 ms frames; sans-IO, allocation-free per frame (the
/// Goertzel coefficients are computed once, in [`BeepDetector::new`]).
#[derive(Debug, Clone)]
pub struct BeepDetector {
    config: BeepConfig,
    /// `(frequency, 2 cos(2 pi f / fs))` of every candidate.
    bins: Vec<(f32, f32)>,
    min_energy: f32,
    run: Option<ToneRun>,
}

#[derive(Debug, Clone, Copy)]
struct ToneRun {
    started_at: Instant,
    last_end: Instant,
    hz: f32,
    reported: bool,
}

impl BeepDetector {
    /// A detector with `config`.
    pub fn new(config: BeepConfig) -> Self {
        let mut bins = Vec::new();
        let mut hz = config.min_hz;
        while hz <= config.max_hz + f32::EPSILON && config.step_hz > 0.0 {
            let omega = 2.0 * std::f32::consts::PI * hz / SAMPLE_RATE_HZ;
            bins.push((hz, 2.0 * omega.cos()));
            hz += config.step_hz;
        }
        // Mean square of a full-scale-normalized frame at the minimum level.
        let min_energy = 10f32.powf(config.min_level_dbfs / 10.0) * BEEP_FRAME_SAMPLES as f32;
        BeepDetector {
            config,
            bins,
            min_energy,
            run: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> &BeepConfig {
        &self.config
    }

    /// Scores one 20 ms frame (16 kHz) that ended at `end`. Frames of any
    /// other length are treated as not tonal.
    pub fn push_frame(&mut self, end: Instant, samples: &[i16]) -> Option<BeepEvent> {
        let tone = if samples.len() == BEEP_FRAME_SAMPLES {
            self.tone_of(samples)
        } else {
            None
        };
        let start = end - FRAME;
        match (tone, self.run) {
            (Some(hz), Some(run)) if (hz - run.hz).abs() <= self.config.max_drift_hz => {
                let mut run = run;
                run.last_end = end;
                let mut event = None;
                if !run.reported && end.saturating_since(run.started_at) >= self.config.min_duration
                {
                    run.reported = true;
                    event = Some(BeepEvent::Started {
                        at: run.started_at,
                        hz: run.hz,
                    });
                }
                self.run = Some(run);
                event
            }
            (tone, previous) => {
                self.run = tone.map(|hz| ToneRun {
                    started_at: start,
                    last_end: end,
                    hz,
                    reported: false,
                });
                previous
                    .filter(|run| run.reported)
                    .map(|run| BeepEvent::Ended {
                        started_at: run.started_at,
                        at: run.last_end,
                        hz: run.hz,
                    })
            }
        }
    }

    /// The frequency of a tonal frame, or `None`.
    fn tone_of(&self, samples: &[i16]) -> Option<f32> {
        let mut energy = 0.0f32;
        for &sample in samples {
            let x = f32::from(sample) / 32_768.0;
            energy += x * x;
        }
        if energy < self.min_energy || energy <= 0.0 {
            return None;
        }
        let mut best = (0.0f32, 0.0f32);
        for &(hz, coeff) in &self.bins {
            let (mut s1, mut s2) = (0.0f32, 0.0f32);
            for &sample in samples {
                let s = f32::from(sample) / 32_768.0 + coeff * s1 - s2;
                s2 = s1;
                s1 = s;
            }
            let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
            if power > best.1 {
                best = (hz, power);
            }
        }
        // A full-scale sine at a bin scores |X|^2 = (N/2)^2 against an energy
        // of N/2: purity = 2 |X|^2 / (N * energy) is 1.0 for a pure tone.
        let purity = 2.0 * best.1 / (samples.len() as f32 * energy);
        (purity >= self.config.min_purity).then_some(best.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f32, amplitude: f32, frames: usize, phase_frames: usize) -> Vec<i16> {
        (0..frames * BEEP_FRAME_SAMPLES)
            .map(|n| {
                let t = (n + phase_frames) as f32 / SAMPLE_RATE_HZ;
                (amplitude * 32_767.0 * (2.0 * std::f32::consts::PI * hz * t).sin()) as i16
            })
            .collect()
    }

    fn run(detector: &mut BeepDetector, audio: &[i16], from_ms: u64) -> Vec<BeepEvent> {
        audio
            .chunks(BEEP_FRAME_SAMPLES)
            .enumerate()
            .filter_map(|(i, frame)| {
                detector.push_frame(Instant::from_millis(from_ms + 20 * (i as u64 + 1)), frame)
            })
            .collect()
    }

    #[test]
    fn a_steady_1400_hz_tone_is_a_beep_with_its_start_and_end() {
        let mut detector = BeepDetector::new(BeepConfig::default());
        let mut audio = vec![0i16; 5 * BEEP_FRAME_SAMPLES];
        audio.extend(tone(1412.0, 0.3, 15, 7));
        audio.extend(vec![0i16; 3 * BEEP_FRAME_SAMPLES]);
        let events = run(&mut detector, &audio, 0);
        assert_eq!(events.len(), 2, "{events:?}");
        let BeepEvent::Started { at, hz } = events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(at, Instant::from_millis(100));
        assert!((hz - 1412.0).abs() <= 12.5, "{hz}");
        let BeepEvent::Ended { at, .. } = events[1] else {
            panic!("{events:?}")
        };
        assert_eq!(at, Instant::from_millis(400));
    }

    #[test]
    fn a_short_blip_quiet_tone_or_noise_is_no_beep() {
        let mut detector = BeepDetector::new(BeepConfig::default());
        // 100 ms: shorter than min_duration.
        assert!(run(&mut detector, &tone(1000.0, 0.3, 5, 0), 0).is_empty());
        // -60 dBFS: below min_level_dbfs.
        let mut quiet = BeepDetector::new(BeepConfig::default());
        assert!(run(&mut quiet, &tone(1000.0, 0.001, 20, 0), 0).is_empty());
        // Two tones at once (a dial tone's 350 + 440 Hz would be out of range;
        // 700 + 1200 Hz is in range): no single frequency dominates.
        let chord: Vec<i16> = tone(700.0, 0.2, 20, 0)
            .iter()
            .zip(tone(1200.0, 0.2, 20, 0))
            .map(|(a, b)| a.saturating_add(b))
            .collect();
        let mut two = BeepDetector::new(BeepConfig::default());
        assert!(run(&mut two, &chord, 0).is_empty());
        // White-ish noise from a fixed LCG.
        let mut state = 12_345u32;
        let noise: Vec<i16> = (0..20 * BEEP_FRAME_SAMPLES)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((state >> 16) as i16) / 4
            })
            .collect();
        let mut noisy = BeepDetector::new(BeepConfig::default());
        assert!(run(&mut noisy, &noise, 0).is_empty());
    }

    #[test]
    fn a_frequency_jump_restarts_the_run() {
        let mut detector = BeepDetector::new(BeepConfig::default());
        let mut audio = tone(600.0, 0.3, 4, 0);
        audio.extend(tone(1800.0, 0.3, 4, 0));
        assert!(run(&mut detector, &audio, 0).is_empty());
    }
}
