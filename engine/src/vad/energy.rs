//! The fallback when Silero cannot load: a speech probability from the
//! window's level against a tracked noise floor, damped for noise-like
//! (high zero-crossing) windows.
//!
//! The output has the same meaning and range as Silero's, so the same
//! [`VadGate`](super::VadGate) settings apply. It is much weaker: it hears
//! any loud sound as speech, except that a window crossing zero as often as
//! broadband noise is capped below the gate's start threshold (0.5) while
//! staying above the stop threshold (0.35), so noise can carry on a speech
//! segment (fricatives) but cannot start one.

use super::VadError;
use super::silero::check_window;
use super::streams::{StreamHandle, Streams};

/// Level, in dBFS, below which nothing is speech (phone-line hiss and hum
/// sit around -45 dBFS).
const ABSOLUTE_FLOOR_DB: f32 = -40.0;
/// How far above the noise floor speech is expected to be, in dB.
const SNR_FOR_SPEECH_DB: f32 = 12.0;
/// The lowest noise floor tracked (digital silence would be -inf).
const MIN_NOISE_FLOOR_DB: f32 = -65.0;
/// How fast the noise floor climbs while the level stays above it, in dB
/// per 32 ms window (about 3 dB/s, slow against a sentence's length).
const FLOOR_RISE_DB: f32 = 0.1;
/// Zero-crossing rate (crossings per sample) where noise-likeness begins
/// and where it is total.
const ZCR_SPEECH_MAX: f32 = 0.25;
const ZCR_NOISE: f32 = 0.45;
/// The highest probability a fully noise-like window can reach.
const NOISE_LIKE_CAP: f32 = 0.45;

/// One stream's energy VAD: scores 512-sample windows one after another.
#[derive(Debug, Clone, PartialEq)]
pub struct EnergyVad {
    noise_floor_db: f32,
}

impl Default for EnergyVad {
    fn default() -> Self {
        EnergyVad {
            noise_floor_db: MIN_NOISE_FLOOR_DB,
        }
    }
}

impl EnergyVad {
    /// A detector with no history.
    pub fn new() -> Self {
        Self::default()
    }

    /// The probability-like score (0..1) that `window` holds speech; updates
    /// the noise floor. Any window length works; empty windows score 0.
    pub fn score(&mut self, window: &[i16]) -> f32 {
        if window.is_empty() {
            return 0.0;
        }
        let mut energy = 0.0f64;
        let mut crossings = 0u32;
        let mut previous_negative = window[0] < 0;
        for &sample in window {
            let value = f64::from(sample);
            energy += value * value;
            let negative = sample < 0;
            crossings += u32::from(negative != previous_negative);
            previous_negative = negative;
        }
        let mean_square = energy / window.len() as f64 / (32768.0 * 32768.0);
        let level_db = (10.0 * (mean_square + 1e-12).log10()) as f32;
        let zcr = crossings as f32 / window.len() as f32;

        let snr_db = level_db - self.noise_floor_db;
        let above_floor = logistic((snr_db - SNR_FOR_SPEECH_DB) / 2.0);
        let loud_enough = logistic((level_db - ABSOLUTE_FLOOR_DB) / 2.0);
        let noise_likeness =
            ((zcr - ZCR_SPEECH_MAX) / (ZCR_NOISE - ZCR_SPEECH_MAX)).clamp(0.0, 1.0);
        let cap = 1.0 - noise_likeness * (1.0 - NOISE_LIKE_CAP);
        let probability = (above_floor * loud_enough).min(cap);

        // Snap down to quieter levels, creep up towards louder ones, so a
        // steady noise becomes the floor but a sentence does not.
        self.noise_floor_db = if level_db < self.noise_floor_db {
            level_db.max(MIN_NOISE_FLOOR_DB)
        } else {
            (self.noise_floor_db + FLOOR_RISE_DB).min(level_db)
        };
        probability
    }
}

fn logistic(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// [`EnergyVad`] behind the same batch API as [`SileroBatch`](super::SileroBatch).
#[derive(Debug, Clone)]
pub struct EnergyBatch {
    streams: Streams,
    detectors: Vec<EnergyVad>,
    /// Per slot: the score of the pending window, published by `run`.
    staged: Vec<f32>,
    probabilities: Vec<f32>,
}

impl EnergyBatch {
    /// A batch for up to `capacity` streams.
    pub fn new(capacity: usize) -> Self {
        EnergyBatch {
            streams: Streams::new(capacity),
            detectors: vec![EnergyVad::new(); capacity],
            staged: vec![0.0; capacity],
            probabilities: vec![0.0; capacity],
        }
    }

    /// How many streams the batch can hold.
    pub fn capacity(&self) -> usize {
        self.streams.capacity()
    }

    /// Adds a stream with no history.
    pub fn register(&mut self) -> Result<StreamHandle, VadError> {
        let handle = self.streams.register()?;
        self.clear_slot(handle.slot());
        Ok(handle)
    }

    /// Removes a stream; its handle goes stale.
    pub fn release(&mut self, handle: StreamHandle) -> Result<(), VadError> {
        self.streams.release(handle)?;
        Ok(())
    }

    /// Forgets the stream's noise floor.
    pub fn reset(&mut self, handle: StreamHandle) -> Result<(), VadError> {
        let slot = self.streams.check(handle)?;
        self.clear_slot(slot);
        Ok(())
    }

    /// Queues one 512-sample window for the next run.
    pub fn submit(&mut self, handle: StreamHandle, window: &[i16]) -> Result<(), VadError> {
        let slot = self.streams.check(handle)?;
        check_window(window)?;
        self.streams.mark_pending(slot)?;
        self.staged[slot] = self.detectors[slot].score(window);
        Ok(())
    }

    /// Windows waiting for the next run.
    pub fn pending(&self) -> usize {
        self.streams.pending().len()
    }

    /// Publishes every pending window's score; returns how many.
    pub fn run(&mut self) -> Result<usize, VadError> {
        let pending = self.streams.pending();
        for &slot in pending {
            self.probabilities[slot as usize] = self.staged[slot as usize];
        }
        let count = pending.len();
        self.streams.clear_pending();
        Ok(count)
    }

    /// The stream's score from the last run that included it.
    pub fn probability(&self, handle: StreamHandle) -> Result<f32, VadError> {
        let slot = self.streams.check(handle)?;
        Ok(self.probabilities[slot])
    }

    fn clear_slot(&mut self, slot: usize) {
        self.detectors[slot] = EnergyVad::new();
        self.staged[slot] = 0.0;
        self.probabilities[slot] = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(amplitude: f32, hz: f32) -> Vec<i16> {
        (0..512)
            .map(|i| (amplitude * (i as f32 * hz * std::f32::consts::TAU / 16_000.0).sin()) as i16)
            .collect()
    }

    #[test]
    fn silence_is_not_speech_and_a_loud_tone_is() {
        let mut vad = EnergyVad::new();
        assert!(vad.score(&[0; 512]) < 0.01);
        assert!(vad.score(&sine(8000.0, 200.0)) > 0.9);
    }

    #[test]
    fn loud_white_noise_cannot_start_speech() {
        // A xorshift generator: white noise crosses zero about every other sample.
        let mut x = 0x2545_f491_u32;
        let noise: Vec<i16> = (0..512)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x >> 16) as i16 / 4
            })
            .collect();
        let score = EnergyVad::new().score(&noise);
        assert!(score > 0.35 && score < 0.5, "{score}");
    }

    #[test]
    fn a_steady_noise_becomes_the_floor() {
        let mut vad = EnergyVad::new();
        let hum = sine(600.0, 60.0); // about -35 dBFS, above the absolute floor
        let first = vad.score(&hum);
        let mut last = first;
        for _ in 0..400 {
            last = vad.score(&hum);
        }
        assert!(first > 0.5, "{first}");
        assert!(last < 0.2, "{last}");
    }
}
