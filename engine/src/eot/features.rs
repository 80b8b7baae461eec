//! Whisper log-mel features exactly as Smart Turn v3 is fed by Pipecat
//! (`pipecat/audio/turn/smart_turn/_whisper_features.py`, itself a copy of
//! `transformers.WhisperFeatureExtractor` with `chunk_length=8`):
//!
//! 1. keep the last 8 s of 16 kHz audio, zero-padding at the front;
//! 2. normalise the waveform to zero mean, unit variance;
//! 3. centred STFT: reflect padding of 200, periodic Hann window of 400
//!    samples (25 ms), hop 160 (10 ms), power spectrum;
//! 4. 80 Slaney mel filters over 0-8 kHz, floor 1e-10, log10;
//! 5. drop the last frame (800 remain), clamp to (max - 8), then (x + 4) / 4.
//!
//! All buffers are allocated once in [`WhisperLogMel::new`]. The spectrum
//! is computed in f64 as the reference does.

use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{RealFftPlanner, RealToComplex};

/// The model's sample rate.
pub const SAMPLE_RATE: usize = 16_000;
/// Audio the model sees: the last 8 s.
pub const MAX_SAMPLES: usize = 8 * SAMPLE_RATE;
/// FFT and window length (25 ms).
pub const N_FFT: usize = 400;
/// Hop between frames (10 ms).
pub const HOP: usize = 160;
/// Mel bands.
pub const N_MELS: usize = 80;
/// Frames per input (8 s at 10 ms).
pub const N_FRAMES: usize = MAX_SAMPLES / HOP;
/// Values in one feature matrix, `[N_MELS][N_FRAMES]`.
pub const FEATURES_LEN: usize = N_MELS * N_FRAMES;

const N_BINS: usize = N_FFT / 2 + 1;
const MEL_FLOOR: f64 = 1e-10;
const NORM_EPS: f32 = 1e-7;

/// One triangular mel filter: weights for the bins from `first_bin` on.
#[derive(Debug, Clone)]
struct MelFilter {
    first_bin: usize,
    weights: Vec<f64>,
}

/// The feature extractor, with every buffer it needs.
pub struct WhisperLogMel {
    fft: Arc<dyn RealToComplex<f64>>,
    window: Vec<f64>,
    filters: Vec<MelFilter>,
    audio: Vec<f32>,
    padded: Vec<f64>,
    frame: Vec<f64>,
    spectrum: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
    power: Vec<f64>,
    log_mel: Vec<f64>,
}

impl std::fmt::Debug for WhisperLogMel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperLogMel").finish_non_exhaustive()
    }
}

impl Default for WhisperLogMel {
    fn default() -> Self {
        Self::new()
    }
}

impl WhisperLogMel {
    /// Plans the FFT, builds the filter bank and allocates the buffers.
    pub fn new() -> Self {
        let fft = RealFftPlanner::<f64>::new().plan_fft_forward(N_FFT);
        let spectrum = fft.make_output_vec();
        let scratch = fft.make_scratch_vec();
        WhisperLogMel {
            fft,
            window: (0..N_FFT)
                .map(|n| 0.5 - 0.5 * (std::f64::consts::TAU * n as f64 / N_FFT as f64).cos())
                .collect(),
            filters: mel_filters(),
            audio: vec![0.0; MAX_SAMPLES],
            padded: vec![0.0; MAX_SAMPLES + N_FFT],
            frame: vec![0.0; N_FFT],
            spectrum,
            scratch,
            power: vec![0.0; N_BINS],
            log_mel: vec![0.0; FEATURES_LEN],
        }
    }

    /// Computes the features of `audio` (16 kHz PCM; only the last 8 s
    /// count) into `out`, laid out `[N_MELS][N_FRAMES]`.
    ///
    /// Returns `false` (and leaves `out` alone) when `out` is not
    /// [`FEATURES_LEN`] long.
    pub fn compute_into(&mut self, audio: &[i16], out: &mut [f32]) -> bool {
        if out.len() != FEATURES_LEN {
            return false;
        }
        // 1. The last 8 s, zero-padded at the front, as float32 in [-1, 1).
        let kept = &audio[audio.len().saturating_sub(MAX_SAMPLES)..];
        let pad = MAX_SAMPLES - kept.len();
        self.audio[..pad].fill(0.0);
        for (out, &sample) in self.audio[pad..].iter_mut().zip(kept) {
            *out = f32::from(sample) / 32768.0;
        }

        // 2. Zero mean, unit variance (in float32, like the reference).
        let n = MAX_SAMPLES as f64;
        let mean = self.audio.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let variance = self
            .audio
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        let mean = mean as f32;
        let scale = ((variance as f32) + NORM_EPS).sqrt();

        // 3. Reflect padding by N_FFT / 2 on both sides.
        let half = N_FFT / 2;
        for (i, &x) in self.audio.iter().enumerate() {
            self.padded[half + i] = f64::from((x - mean) / scale);
        }
        for i in 0..half {
            self.padded[i] = self.padded[2 * half - i];
            self.padded[half + MAX_SAMPLES + i] = self.padded[half + MAX_SAMPLES - 2 - i];
        }

        // 4. Power spectrum and mel bands of each frame.
        let mut max = f64::NEG_INFINITY;
        for t in 0..N_FRAMES {
            let start = t * HOP;
            for ((frame, &x), &w) in self
                .frame
                .iter_mut()
                .zip(&self.padded[start..start + N_FFT])
                .zip(&self.window)
            {
                *frame = x * w;
            }
            // The sizes are fixed at construction, so this cannot fail.
            if self
                .fft
                .process_with_scratch(&mut self.frame, &mut self.spectrum, &mut self.scratch)
                .is_err()
            {
                return false;
            }
            for (power, bin) in self.power.iter_mut().zip(&self.spectrum) {
                *power = bin.norm_sqr();
            }
            for (m, filter) in self.filters.iter().enumerate() {
                let energy: f64 = filter
                    .weights
                    .iter()
                    .zip(&self.power[filter.first_bin..])
                    .map(|(w, p)| w * p)
                    .sum();
                let value = energy.max(MEL_FLOOR).log10();
                max = max.max(value);
                self.log_mel[m * N_FRAMES + t] = value;
            }
        }

        // 5. Dynamic range of 8 (80 dB), then scale to about [-1, 1].
        let floor = max - 8.0;
        for (out, &value) in out.iter_mut().zip(&self.log_mel) {
            *out = ((value.max(floor) + 4.0) / 4.0) as f32;
        }
        true
    }
}

fn hertz_to_mel(hz: f64) -> f64 {
    let logstep = 27.0 / 6.4f64.ln();
    if hz >= 1000.0 {
        15.0 + (hz / 1000.0).ln() * logstep
    } else {
        3.0 * hz / 200.0
    }
}

fn mel_to_hertz(mel: f64) -> f64 {
    let logstep = 6.4f64.ln() / 27.0;
    if mel >= 15.0 {
        1000.0 * (logstep * (mel - 15.0)).exp()
    } else {
        200.0 * mel / 3.0
    }
}

/// Slaney-normalised triangular filters, as `_build_mel_filterbank`.
fn mel_filters() -> Vec<MelFilter> {
    let mel_min = hertz_to_mel(0.0);
    let mel_max = hertz_to_mel(SAMPLE_RATE as f64 / 2.0);
    let edges: Vec<f64> = (0..N_MELS + 2)
        .map(|i| mel_to_hertz(mel_min + (mel_max - mel_min) * i as f64 / (N_MELS + 1) as f64))
        .collect();
    let bin_hz = |bin: usize| (SAMPLE_RATE / 2) as f64 * bin as f64 / (N_BINS - 1) as f64;
    (0..N_MELS)
        .map(|m| {
            let (low, centre, high) = (edges[m], edges[m + 1], edges[m + 2]);
            let norm = 2.0 / (high - low);
            let weights: Vec<(usize, f64)> = (0..N_BINS)
                .map(|bin| {
                    let hz = bin_hz(bin);
                    let down = (hz - low) / (centre - low);
                    let up = (high - hz) / (high - centre);
                    (bin, down.min(up).max(0.0) * norm)
                })
                .filter(|&(_, w)| w > 0.0)
                .collect();
            MelFilter {
                first_bin: weights.first().map_or(0, |&(bin, _)| bin),
                weights: weights.iter().map(|&(_, w)| w).collect(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_contiguous_and_cover_the_band() {
        let filters = mel_filters();
        assert_eq!(filters.len(), N_MELS);
        for pair in filters.windows(2) {
            assert!(pair[1].first_bin >= pair[0].first_bin);
        }
        let last = filters.last().expect("filters");
        assert!(last.first_bin + last.weights.len() <= N_BINS);
    }

    #[test]
    fn a_tone_lights_its_own_mel_band() {
        let mut extractor = WhisperLogMel::new();
        let tone: Vec<i16> = (0..MAX_SAMPLES)
            .map(|i| (8000.0 * (i as f64 * 1000.0 * std::f64::consts::TAU / 16_000.0).sin()) as i16)
            .collect();
        let mut out = vec![0.0; FEATURES_LEN];
        assert!(extractor.compute_into(&tone, &mut out));
        let frame = 400;
        let band = (0..N_MELS)
            .max_by(|&a, &b| out[a * N_FRAMES + frame].total_cmp(&out[b * N_FRAMES + frame]))
            .expect("bands");
        // The band whose centre is nearest 1 kHz.
        let centre = |m: usize| {
            let lo = hertz_to_mel(0.0);
            let hi = hertz_to_mel(8000.0);
            mel_to_hertz(lo + (hi - lo) * (m + 1) as f64 / (N_MELS + 1) as f64)
        };
        let expected = (0..N_MELS)
            .min_by(|&a, &b| {
                (centre(a) - 1000.0)
                    .abs()
                    .total_cmp(&(centre(b) - 1000.0).abs())
            })
            .expect("bands");
        assert!(
            band.abs_diff(expected) <= 1,
            "band {band}, expected {expected}"
        );
        // The dynamic range is clamped to 8 decades, i.e. 2.0 after scaling.
        assert!(out.iter().all(|v| v.is_finite()));
        let max = out.iter().copied().fold(f32::MIN, f32::max);
        let min = out.iter().copied().fold(f32::MAX, f32::min);
        assert!(max - min <= 2.0 + 1e-5, "{min}..{max}");
    }

    #[test]
    fn empty_audio_and_a_wrong_buffer_do_not_panic() {
        let mut extractor = WhisperLogMel::new();
        let mut out = vec![0.0; FEATURES_LEN];
        assert!(extractor.compute_into(&[], &mut out));
        assert!(out.iter().all(|v| v.is_finite()));
        assert!(!extractor.compute_into(&[1, 2, 3], &mut [0.0; 10]));
    }
}
