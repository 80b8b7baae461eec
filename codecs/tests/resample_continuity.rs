//! Streaming resampling must equal converting the whole signal at once.
//!
//! The ideal one-shot conversion of a sine is the same sine sampled at the new
//! rate, so each stream is compared with that, shifted by the delay the
//! resampler reports. A filter state lost between frames would show as an
//! error spike at every frame boundary; a wrong delay report, as a large
//! error everywhere.

use callingbox_codecs::{FrameDuration, PcmFrame, Resampler, SampleRate, split_into_frames};

const PAIRS: [(SampleRate, SampleRate); 6] = [
    (SampleRate::Hz8000, SampleRate::Hz16000),
    (SampleRate::Hz16000, SampleRate::Hz8000),
    (SampleRate::Hz24000, SampleRate::Hz8000),
    (SampleRate::Hz48000, SampleRate::Hz16000),
    (SampleRate::Hz16000, SampleRate::Hz48000),
    (SampleRate::Hz8000, SampleRate::Hz48000),
];

fn sine(rate: SampleRate, hz: f64, seconds: f64, delay_samples: usize) -> Vec<f64> {
    let fs = f64::from(rate.hz());
    (0..(seconds * fs) as usize)
        .map(|n| {
            let t = (n as f64 - delay_samples as f64) / fs;
            if t < 0.0 {
                0.0
            } else {
                0.5 * 32768.0 * (2.0 * std::f64::consts::PI * hz * t).sin()
            }
        })
        .collect()
}

fn stream(
    resampler: &mut Resampler,
    input: &[i16],
    from: SampleRate,
    frame: FrameDuration,
) -> Vec<i16> {
    let mut out = PcmFrame::with_capacity(resampler.to_rate(), frame);
    let mut streamed = Vec::new();
    for chunk in split_into_frames(input, from, frame) {
        resampler.process_into(&chunk, &mut out).expect("resample");
        streamed.extend_from_slice(out.samples());
    }
    streamed
}

#[test]
fn frame_by_frame_equals_one_shot_for_every_pair() {
    for (from, to) in PAIRS {
        for frame in [FrameDuration::Ms10, FrameDuration::Ms20] {
            for hz in [440.0, 2_500.0] {
                let input: Vec<i16> = sine(from, hz, 1.0, 0)
                    .into_iter()
                    .map(|v| v.round() as i16)
                    .collect();
                let mut resampler = Resampler::new(from, to, frame).expect("resampler");
                let delay = resampler.delay_samples();
                let streamed = stream(&mut resampler, &input, from, frame);
                let ideal = sine(to, hz, 1.0, delay);
                assert_eq!(streamed.len(), ideal.len());

                // Skip the filter's start-up (one frame past the delay) and compare the rest.
                let settle = delay + to.samples_in(frame);
                let frame_len = to.samples_in(frame);
                let (mut worst_at_boundary, mut worst_inside) = (0.0f64, 0.0f64);
                for n in settle..streamed.len() {
                    let err = (f64::from(streamed[n]) - ideal[n]).abs();
                    let phase = n % frame_len;
                    if phase < 2 || phase >= frame_len - 2 {
                        worst_at_boundary = worst_at_boundary.max(err);
                    } else {
                        worst_inside = worst_inside.max(err);
                    }
                }
                let label = format!("{from} -> {to}, {} ms frames, {hz} Hz", frame.millis());
                // -50 dB of the tone's amplitude, anywhere in the stream.
                let limit = 0.5 * 32768.0 * 10f64.powf(-50.0 / 20.0);
                assert!(
                    worst_inside < limit,
                    "{label}: error {worst_inside:.1} inside frames"
                );
                assert!(
                    worst_at_boundary < limit,
                    "{label}: error {worst_at_boundary:.1} at frame boundaries"
                );
            }
        }
    }
}

#[test]
fn reset_starts_a_new_stream() {
    let (from, to, frame) = (SampleRate::Hz8000, SampleRate::Hz16000, FrameDuration::Ms20);
    let input: Vec<i16> = sine(from, 440.0, 0.2, 0)
        .into_iter()
        .map(|v| v as i16)
        .collect();
    let mut resampler = Resampler::new(from, to, frame).expect("resampler");
    let first = stream(&mut resampler, &input, from, frame);
    resampler.reset();
    let second = stream(&mut resampler, &input, from, frame);
    assert_eq!(first, second);
}
