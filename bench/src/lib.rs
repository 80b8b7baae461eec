//! Shared helpers for the CallingBox benchmarks.

pub mod fixtures;
pub mod paced_llm;
pub mod procfs;
pub mod stats;
pub mod trial;

use callingbox_codecs::{MediaTime, PcmFrame, SampleRate};

/// A 20 ms frame of a speech-like signal (a gliding buzz with harmonics) at `rate`.
pub fn voiced_frame(rate: SampleRate) -> PcmFrame {
    let len = rate.samples_per_ms() * 20;
    let fs = f64::from(rate.hz());
    let samples = (0..len)
        .map(|n| {
            let t = n as f64 / fs;
            let v: f64 = (1..=8)
                .map(|h| (2.0 * std::f64::consts::PI * 150.0 * h as f64 * t).sin() / h as f64)
                .sum();
            (v * 6000.0) as i16
        })
        .collect();
    PcmFrame::new(rate, MediaTime::ZERO, samples)
}
