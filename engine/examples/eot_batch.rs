//! Cost of a Smart Turn v3.2 request (features + inference) at batch 1 and 4.
//!
//! `scripts/fetch-models.sh && cargo run --release -p callingbox-engine --example eot_batch`

use std::time::Instant;

use callingbox_engine::codecs::read_wav;
use callingbox_engine::eot::SmartTurn;
use callingbox_engine::eot::features::{FEATURES_LEN, WhisperLogMel};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ids = [
        "statement_billing",
        "question_closing_time",
        "partial_phone_number",
        "address",
    ];
    let clips: Vec<Vec<i16>> = ids
        .iter()
        .map(|id| {
            read_wav(format!(
                "{}/../fixtures/audio/{id}.16k.wav",
                env!("CARGO_MANIFEST_DIR")
            ))
            .map(|wav| wav.samples)
        })
        .collect::<Result<_, _>>()?;
    let requests: Vec<&[i16]> = clips.iter().map(Vec::as_slice).collect();

    let mut features = WhisperLogMel::new();
    let mut out = vec![0.0; FEATURES_LEN];
    let rounds = 50;
    let started = Instant::now();
    for i in 0..rounds {
        features.compute_into(requests[i % requests.len()], &mut out);
    }
    let feature_ms = started.elapsed().as_secs_f64() / rounds as f64 * 1e3;

    let mut model = SmartTurn::load(4)?;
    println!("features alone: {feature_ms:.2} ms per request");
    println!("| batch | per run (ms) | per request (ms) |");
    println!("|---:|---:|---:|");
    for size in [1usize, 4] {
        let mut probabilities = vec![0.0; size];
        for _ in 0..3 {
            model.predict_batch(&requests[..size], &mut probabilities)?;
        }
        let started = Instant::now();
        for _ in 0..rounds {
            model.predict_batch(&requests[..size], &mut probabilities)?;
        }
        let per_run = started.elapsed().as_secs_f64() / rounds as f64 * 1e3;
        println!("| {size} | {per_run:.2} | {:.2} |", per_run / size as f64);
    }
    Ok(())
}
