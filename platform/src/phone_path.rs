//! `callingbox phone-path`: the fixtures through the phone's audio path.
//!
//! For each recorded utterance it checks what a call does to the audio:
//! - the 16 kHz recording, downsampled to 8 kHz, G.711-coded and upsampled
//!   back, compared with the same path without the codec (the codec's own
//!   signal-to-noise ratio: about 38 dB is G.711's design point on speech);
//! - the 8 kHz mu-law fixture file (made by SoX) against our own encoding of
//!   the same speech, to show both sides speak the same G.711;
//! - the cost of every stage per 20 ms frame.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use callingbox_codecs::opus::MAX_PACKET_BYTES;
use callingbox_codecs::{
    FrameDuration, G711Law, OpusDecoder, OpusEncoder, OpusEncoderConfig, PcmFrame, Resampler,
    SampleRate, read_wav, split_into_frames,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
struct Manifest {
    utterances: Vec<Utterance>,
}

#[derive(Debug, Deserialize)]
struct Utterance {
    id: String,
    kind: String,
    files: Files,
}

#[derive(Debug, Deserialize)]
struct Files {
    pcm_16k: FileRef,
    ulaw_8k: FileRef,
}

#[derive(Debug, Deserialize)]
struct FileRef {
    path: String,
}

/// One fixture's figures.
#[derive(Debug, Serialize)]
struct Row {
    id: String,
    kind: String,
    seconds: f64,
    ulaw_snr_db: Option<f64>,
    alaw_snr_db: Option<f64>,
    sox_ulaw_match: f64,
    opus_bytes_per_frame: f64,
}

/// Time spent per stage, summed over all frames.
#[derive(Debug, Default, Serialize)]
struct StageCost {
    frames: u64,
    down_16_to_8: Duration,
    ulaw_encode: Duration,
    ulaw_decode: Duration,
    up_8_to_16: Duration,
    opus_encode_48k: Duration,
    opus_decode_48k: Duration,
}

#[derive(Debug, Serialize)]
struct Report {
    fixtures: Vec<Row>,
    microseconds_per_20ms_frame: Vec<(String, f64)>,
    resampler_delay_ms: f64,
}

/// Runs the check over every fixture in `dir` and prints the report.
pub fn run(dir: &Path, json: bool) -> Result<()> {
    let manifest_path = dir.join("manifest.json");
    let manifest: Manifest = serde_json::from_slice(
        &std::fs::read(&manifest_path)
            .with_context(|| format!("reading {}", manifest_path.display()))?,
    )
    .with_context(|| format!("parsing {}", manifest_path.display()))?;
    if manifest.utterances.is_empty() {
        bail!("{} lists no utterances", manifest_path.display());
    }
    let mut cost = StageCost::default();
    let mut rows = Vec::new();
    for utterance in &manifest.utterances {
        rows.push(check_one(dir, utterance, &mut cost).with_context(|| utterance.id.clone())?);
    }
    let per_frame = |total: Duration| total.as_secs_f64() * 1e6 / cost.frames.max(1) as f64;
    let report = Report {
        microseconds_per_20ms_frame: vec![
            ("resample 16k->8k".into(), per_frame(cost.down_16_to_8)),
            ("mu-law encode".into(), per_frame(cost.ulaw_encode)),
            ("mu-law decode".into(), per_frame(cost.ulaw_decode)),
            ("resample 8k->16k".into(), per_frame(cost.up_8_to_16)),
            ("opus encode 48k".into(), per_frame(cost.opus_encode_48k)),
            ("opus decode 48k".into(), per_frame(cost.opus_decode_48k)),
        ],
        resampler_delay_ms: Resampler::new(
            SampleRate::Hz8000,
            SampleRate::Hz16000,
            FrameDuration::Ms20,
        )?
        .delay()
        .as_secs_f64()
            * 1e3,
        fixtures: rows,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    let failing: Vec<&Row> = report
        .fixtures
        .iter()
        .filter(|row| row.sox_ulaw_match < 0.9 || row.ulaw_snr_db.is_some_and(|snr| snr < 30.0))
        .collect();
    if !failing.is_empty() {
        bail!(
            "{} fixture(s) lose too much on the phone path: {}",
            failing.len(),
            failing
                .iter()
                .map(|row| row.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

fn check_one(dir: &Path, utterance: &Utterance, cost: &mut StageCost) -> Result<Row> {
    let wideband = read_wav(dir.join(&utterance.files.pcm_16k.path))?;
    let narrowband = read_wav(dir.join(&utterance.files.ulaw_8k.path))?;
    if wideband.rate != SampleRate::Hz16000 || narrowband.rate != SampleRate::Hz8000 {
        bail!("expected a 16 kHz and an 8 kHz file");
    }
    let frames = split_into_frames(&wideband.samples, SampleRate::Hz16000, FrameDuration::Ms20);
    let mut down = Resampler::new(SampleRate::Hz16000, SampleRate::Hz8000, FrameDuration::Ms20)?;
    let mut up_clean =
        Resampler::new(SampleRate::Hz8000, SampleRate::Hz16000, FrameDuration::Ms20)?;
    let mut up_ulaw = Resampler::new(SampleRate::Hz8000, SampleRate::Hz16000, FrameDuration::Ms20)?;
    let mut up_alaw = Resampler::new(SampleRate::Hz8000, SampleRate::Hz16000, FrameDuration::Ms20)?;
    let mut to_48k = Resampler::new(
        SampleRate::Hz16000,
        SampleRate::Hz48000,
        FrameDuration::Ms20,
    )?;
    let mut opus_encoder = OpusEncoder::new(SampleRate::Hz48000, OpusEncoderConfig::default())?;
    let mut opus_decoder = OpusDecoder::new(SampleRate::Hz48000)?;

    let mut narrow = PcmFrame::with_capacity(SampleRate::Hz8000, FrameDuration::Ms20);
    let mut decoded = PcmFrame::with_capacity(SampleRate::Hz8000, FrameDuration::Ms20);
    let mut wide = PcmFrame::with_capacity(SampleRate::Hz16000, FrameDuration::Ms20);
    let mut fullband = PcmFrame::with_capacity(SampleRate::Hz48000, FrameDuration::Ms20);
    let mut opus_out = PcmFrame::with_capacity(SampleRate::Hz48000, FrameDuration::Ms20);
    let mut codes = Vec::with_capacity(160);
    let mut packet = vec![0u8; MAX_PACKET_BYTES];
    let (mut clean, mut via_ulaw, mut via_alaw) = (Vec::new(), Vec::new(), Vec::new());
    let mut our_ulaw_8k = Vec::new();
    let mut opus_bytes = 0usize;

    for frame in &frames {
        let t = Instant::now();
        down.process_into(frame, &mut narrow)?;
        cost.down_16_to_8 += t.elapsed();
        our_ulaw_8k.extend_from_slice(narrow.samples());

        up_clean.process_into(&narrow, &mut wide)?;
        clean.extend_from_slice(wide.samples());

        codes.clear();
        let t = Instant::now();
        G711Law::MuLaw.encode_frame(&narrow, &mut codes)?;
        cost.ulaw_encode += t.elapsed();
        let t = Instant::now();
        G711Law::MuLaw.decode_into(&codes, narrow.start(), &mut decoded);
        cost.ulaw_decode += t.elapsed();
        let t = Instant::now();
        up_ulaw.process_into(&decoded, &mut wide)?;
        cost.up_8_to_16 += t.elapsed();
        via_ulaw.extend_from_slice(wide.samples());

        codes.clear();
        G711Law::ALaw.encode_frame(&narrow, &mut codes)?;
        G711Law::ALaw.decode_into(&codes, narrow.start(), &mut decoded);
        up_alaw.process_into(&decoded, &mut wide)?;
        via_alaw.extend_from_slice(wide.samples());

        to_48k.process_into(frame, &mut fullband)?;
        let t = Instant::now();
        let n = opus_encoder.encode(&fullband, &mut packet)?;
        cost.opus_encode_48k += t.elapsed();
        opus_bytes += n;
        let t = Instant::now();
        opus_decoder.decode_into(&packet[..n], fullband.start(), &mut opus_out)?;
        cost.opus_decode_48k += t.elapsed();
        cost.frames += 1;
    }
    let speech = utterance.kind != "silence";
    Ok(Row {
        id: utterance.id.clone(),
        kind: utterance.kind.clone(),
        seconds: wideband.duration().as_secs_f64(),
        ulaw_snr_db: speech.then(|| snr_db(&clean, &via_ulaw)).flatten(),
        alaw_snr_db: speech.then(|| snr_db(&clean, &via_alaw)).flatten(),
        sox_ulaw_match: best_correlation(&our_ulaw_8k, &narrowband.samples),
        opus_bytes_per_frame: opus_bytes as f64 / frames.len().max(1) as f64,
    })
}

/// Signal-to-noise ratio of `test` against `reference`, in dB; `None` when
/// the reference is silent.
fn snr_db(reference: &[i16], test: &[i16]) -> Option<f64> {
    let (mut signal, mut noise) = (0.0f64, 0.0f64);
    for (&r, &t) in reference.iter().zip(test) {
        signal += f64::from(r).powi(2);
        noise += (f64::from(r) - f64::from(t)).powi(2);
    }
    if signal < 1.0 {
        return None;
    }
    Some(10.0 * (signal / noise.max(1.0)).log10())
}

/// The highest normalized correlation of `a` and `b` over small lags (the two
/// resamplers differ in delay); 1.0 when both are silent.
fn best_correlation(a: &[i16], b: &[i16]) -> f64 {
    let energy = |x: &[i16]| x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>();
    if energy(a) < 1.0 && energy(b) < 1.0 {
        return 1.0;
    }
    (0..=80)
        .flat_map(|lag| [(lag, 0), (0, lag)])
        .map(|(skip_a, skip_b)| {
            let (a, b) = (&a[skip_a.min(a.len())..], &b[skip_b.min(b.len())..]);
            let len = a.len().min(b.len());
            let (a, b) = (&a[..len], &b[..len]);
            let dot: f64 = a
                .iter()
                .zip(b)
                .map(|(&x, &y)| f64::from(x) * f64::from(y))
                .sum();
            dot / (energy(a) * energy(b)).sqrt().max(1.0)
        })
        .fold(f64::MIN, f64::max)
}

fn print_table(report: &Report) {
    println!(
        "{:<24} {:<20} {:>6} {:>10} {:>10} {:>9} {:>11}",
        "fixture", "kind", "secs", "mu-law dB", "A-law dB", "sox corr", "opus B/fr"
    );
    let db = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    for row in &report.fixtures {
        println!(
            "{:<24} {:<20} {:>6.2} {:>10} {:>10} {:>9.3} {:>11.1}",
            row.id,
            row.kind,
            row.seconds,
            db(row.ulaw_snr_db),
            db(row.alaw_snr_db),
            row.sox_ulaw_match,
            row.opus_bytes_per_frame
        );
    }
    println!();
    println!("cost per 20 ms frame (this machine, one core):");
    for (stage, micros) in &report.microseconds_per_20ms_frame {
        println!("  {stage:<18} {micros:>8.2} us");
    }
    println!(
        "resampler delay: {:.1} ms each way",
        report.resampler_delay_ms
    );
}
