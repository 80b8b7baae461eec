//! Cost of Silero VAD per 32 ms window as the batch grows.
//!
//! `scripts/fetch-models.sh && cargo run --release -p callingbox-engine --example vad_batch`

use std::time::Instant;

use callingbox_engine::codecs::read_wav;
use callingbox_engine::vad::SileroBatch;
use callingbox_engine::vad::silero::WINDOW_SAMPLES;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let speech = read_wav(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/audio/statement_billing.16k.wav"
    ))?
    .samples;
    let windows: Vec<&[i16]> = speech.chunks_exact(WINDOW_SAMPLES).collect();
    let mut batch = SileroBatch::load(256)?;
    println!("| batch | runs | per run (µs) | per window (µs) | windows per core-second |");
    println!("|---:|---:|---:|---:|---:|");
    for size in [1usize, 8, 64, 256] {
        let streams: Vec<_> = (0..size)
            .map(|_| batch.register())
            .collect::<Result<_, _>>()?;
        let runs = (20_000 / size).clamp(200, 5_000);
        let mut tick = |t: usize| -> Result<(), Box<dyn std::error::Error>> {
            for (i, &stream) in streams.iter().enumerate() {
                // Each stream at a different place in the clip.
                batch.submit(stream, windows[(t + i * 7) % windows.len()])?;
            }
            batch.run()?;
            Ok(())
        };
        for t in 0..20 {
            tick(t)?;
        }
        let started = Instant::now();
        for t in 0..runs {
            tick(t)?;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let per_run = elapsed / runs as f64 * 1e6;
        let per_window = per_run / size as f64;
        println!(
            "| {size} | {runs} | {per_run:.1} | {per_window:.2} | {:.0} |",
            1e6 / per_window
        );
        for stream in streams {
            batch.release(stream)?;
        }
    }
    Ok(())
}
