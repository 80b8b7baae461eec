//! The local speech providers on this machine, each on its own: the
//! recognizer's time to its final after the end of speech and its
//! real-time factor (Whisper tiny.en on the English fixtures, Whisper base
//! on Spanish espeak-ng speech), the voices' time to first audio and
//! real-time factor (Piper, espeak-ng English and Spanish), and the local
//! LLM's time to first token (cold and warm) and token rate. Prints a
//! markdown table for `bench/README.md`.
//!
//! Run: `cargo run --release -p callingbox-bench --bin provider_bench`
//! (after `./dev setup`; ~2 minutes, most of it fixtures played in real time).
//! The end-to-end `voice_to_voice` of the whole local stack is what
//! `callingbox demo` prints on its last line.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use callingbox_engine::codecs::{
    FrameDuration, MediaTime, PcmFrame, SampleRate, read_wav, split_into_frames,
};
use callingbox_engine::providers::llama::{LocalLlm, LocalLlmConfig, locate_model};
use callingbox_engine::providers::local_whisper::{LocalWhisperAsr, LocalWhisperConfig};
use callingbox_engine::providers::piper::{Espeak, PiperTts};
use callingbox_engine::providers::{
    AsrEvent, AsrProvider, AsrSession, ChatMessage, LlmEvent, LlmProvider, LlmRequest, TtsProvider,
};
use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

type Failure = Box<dyn std::error::Error>;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/audio")
}

/// p50 and max of `values` (ms), as table text.
fn p50_max(values: &mut [f64]) -> String {
    values.sort_by(f64::total_cmp);
    match (values.get(values.len() / 2), values.last()) {
        (Some(p50), Some(max)) => format!("{p50:.0} / {max:.0}"),
        _ => "-".into(),
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn silence(count: usize) -> Vec<PcmFrame> {
    vec![PcmFrame::silence(SampleRate::Hz16000, MediaTime::ZERO, FrameDuration::Ms20); count]
}

/// Pushes `frames` (at real time when `paced`) and waits for the finals;
/// returns when each non-empty final arrived, since the first push.
async fn recognize(
    session: &mut AsrSession,
    frames: &[PcmFrame],
    paced: bool,
) -> Result<Vec<(String, Duration)>, Failure> {
    let started = Instant::now();
    let mut finals = Vec::new();
    let on_event = |event: AsrEvent, finals: &mut Vec<(String, Duration)>| match event {
        AsrEvent::Final { text } if !text.is_empty() => finals.push((text, started.elapsed())),
        AsrEvent::Failed { error } => eprintln!("recognizer failed: {error}"),
        _ => {}
    };
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    for frame in frames {
        if paced {
            ticker.tick().await;
        }
        while session.push_frame(frame).is_err() {
            // Unpaced: the queue is full; let the recognizer catch up.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        while let Some(event) = session.try_next_event() {
            on_event(event, &mut finals);
        }
    }
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_secs(3), session.next_event()).await
    {
        on_event(event, &mut finals);
    }
    Ok(finals)
}

/// When the last final came: with `frames` pushed at real time, then with
/// them all pushed at once (the time to the last final is then the decode
/// time of the whole clip). Each session is cancelled before the next, so no
/// leftover decode competes with it.
async fn both_ways(
    frames: &[PcmFrame],
    open: impl Fn(CancellationToken) -> Result<AsrSession, callingbox_engine::providers::ProviderError>,
) -> Result<(Option<Duration>, Option<Duration>), Failure> {
    let mut last = [None, None];
    for (slot, paced) in [(0, true), (1, false)] {
        let cancel = CancellationToken::new();
        let mut session = open(cancel.clone())?;
        let finals = recognize(&mut session, frames, paced).await?;
        cancel.cancel();
        last[slot] = finals.last().map(|(_, at)| *at);
    }
    Ok((last[0], last[1]))
}

/// All decode time over all speech, of (decode, speech) pairs in seconds.
fn real_time_factor(runs: &[(f64, f64)]) -> f64 {
    let (decode, speech) = runs.iter().fold((0.0, 0.0), |(d, s), (decode, speech)| {
        (d + decode, s + speech)
    });
    decode / speech.max(0.1)
}

/// One row of the table.
struct Row {
    provider: String,
    first_result: String,
    rtf: String,
    note: String,
}

async fn whisper_english(asr: &LocalWhisperAsr, rows: &mut Vec<Row>) -> Result<(), Failure> {
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("manifest.json"))?)?;
    let clips: Vec<&Value> = manifest["utterances"]
        .as_array()
        .ok_or("manifest without utterances")?
        .iter()
        // Sentences a caller says (Whisper pays ~0.4 s per decode whatever
        // the length, so one-word clips would only measure that floor).
        .filter(|u| {
            let speech = u["speech_end_ms"].as_u64().unwrap_or(0)
                - u["speech_start_ms"].as_u64().unwrap_or(0);
            u["text"] != "" && speech >= 1_500
        })
        .take(10)
        .collect();
    let (mut to_final, mut rtf) = (Vec::new(), Vec::new());
    for clip in &clips {
        let path = fixtures().join(clip["files"]["pcm_16k"]["path"].as_str().unwrap_or(""));
        let wav = read_wav(&path)?;
        let mut frames = split_into_frames(&wav.samples, SampleRate::Hz16000, FrameDuration::Ms20);
        frames.extend(silence(40));
        let speech_end = Duration::from_millis(clip["speech_end_ms"].as_u64().unwrap_or(0));
        let speech = Duration::from_millis(
            clip["speech_end_ms"].as_u64().unwrap_or(0)
                - clip["speech_start_ms"].as_u64().unwrap_or(0),
        );
        let (paced, unpaced) = both_ways(&frames, |cancel| asr.open(cancel)).await?;
        if let Some(at) = paced {
            to_final.push(at.saturating_sub(speech_end).as_secs_f64() * 1000.0);
        }
        if let Some(at) = unpaced {
            rtf.push((at.as_secs_f64(), speech.as_secs_f64()));
        }
    }
    rows.push(Row {
        provider: "ASR: Whisper tiny.en (faster-whisper, int8, 2 threads), English fixtures".into(),
        first_result: format!(
            "final after end of speech {} ms (p50 / max, {} clips)",
            p50_max(&mut to_final),
            to_final.len()
        ),
        rtf: format!("{:.2}", real_time_factor(&rtf)),
        note: "time to final includes the segmenter's end-of-utterance silence; RTF is all decode time over all speech".into(),
    });
    Ok(())
}

async fn whisper_spanish(asr: &LocalWhisperAsr, rows: &mut Vec<Row>) -> Result<(), Failure> {
    let voice = PiperTts::espeak_only(Espeak::from_environment("es"))?;
    let sentences = [
        "Quisiera reservar una mesa para cuatro personas mañana a las siete de la tarde.",
        "Necesito cambiar la fecha de mi entrega al próximo lunes por la mañana.",
        "¿A qué hora cierran hoy?",
    ];
    let (mut to_final, mut rtf) = (Vec::new(), Vec::new());
    for sentence in sentences {
        let mut frames: Vec<PcmFrame> = Vec::new();
        let mut audio = voice.synthesize(sentence);
        while let Some(frame) = audio.next().await {
            frames.push(frame?);
        }
        let speech = Duration::from_millis(frames.len() as u64 * 20);
        frames.extend(silence(40));
        let (paced, unpaced) = both_ways(&frames, |cancel| asr.open_in("es", cancel)).await?;
        if let Some(at) = paced {
            to_final.push(at.saturating_sub(speech).as_secs_f64() * 1000.0);
        }
        if let Some(at) = unpaced {
            rtf.push((at.as_secs_f64(), speech.as_secs_f64()));
        }
    }
    rows.push(Row {
        provider: "ASR: Whisper base (multilingual), Spanish espeak-ng speech".into(),
        first_result: format!(
            "final after end of speech {} ms ({} sentences)",
            p50_max(&mut to_final),
            to_final.len()
        ),
        rtf: format!("{:.2}", real_time_factor(&rtf)),
        note: "the first Spanish request loads the model (~0.6 s), counted in the max".into(),
    });
    Ok(())
}

async fn voice(
    name: &str,
    tts: &PiperTts,
    sentences: &[&str],
    rows: &mut Vec<Row>,
) -> Result<(), Failure> {
    let (mut ttfb, mut rtf) = (Vec::new(), Vec::new());
    for sentence in sentences {
        let started = Instant::now();
        let mut first = None;
        let mut audio = Duration::ZERO;
        let mut stream = tts.synthesize(sentence);
        while let Some(frame) = stream.next().await {
            let frame = frame?;
            first.get_or_insert_with(|| started.elapsed());
            audio += frame.duration();
        }
        ttfb.push(first.unwrap_or_default().as_secs_f64() * 1000.0);
        rtf.push(started.elapsed().as_secs_f64() / audio.as_secs_f64().max(0.02));
    }
    rows.push(Row {
        provider: format!("TTS: {name}"),
        first_result: format!("first audio {} ms", p50_max(&mut ttfb)),
        rtf: format!("{:.3}", median(&mut rtf)),
        note: format!("{} clauses of 4-15 words", sentences.len()),
    });
    Ok(())
}

async fn llm(rows: &mut Vec<Row>) -> Result<(), Failure> {
    let mut config = LocalLlmConfig::new(locate_model()?);
    config.threads = 2;
    let llm = LocalLlm::load(config)?;
    let mut messages = vec![ChatMessage::System {
        content: "You are the receptionist of Bella Vista, an Italian restaurant. Take table bookings. Be brief.".into(),
    }];
    let said = [
        "Hi, I'd like to book a table.",
        "For four people, tomorrow evening.",
        "At seven, if you have it.",
        "The name is Sam Lee.",
        "Do you have parking?",
        "Great, thank you.",
    ];
    let (mut cold, mut warm, mut rates) = (Vec::new(), Vec::new(), Vec::new());
    for (turn, line) in said.iter().enumerate() {
        messages.push(ChatMessage::User {
            content: (*line).into(),
        });
        let started = Instant::now();
        let mut first = None;
        let mut text = String::new();
        let mut tokens = 0usize;
        let mut stream = llm.stream_chat(LlmRequest {
            messages: messages.clone(),
            tools: Vec::new(),
        });
        while let Some(event) = stream.next().await {
            if let LlmEvent::Token(token) = event? {
                first.get_or_insert_with(|| started.elapsed());
                text.push_str(&token);
                tokens += 1;
            }
        }
        let first = first.unwrap_or_default();
        let ms = first.as_secs_f64() * 1000.0;
        if turn == 0 {
            cold.push(ms)
        } else {
            warm.push(ms)
        }
        let generating = started.elapsed().saturating_sub(first).as_secs_f64();
        if tokens > 1 && generating > 0.0 {
            rates.push((tokens - 1) as f64 / generating);
        }
        messages.push(ChatMessage::Assistant {
            content: text,
            tool_calls: Vec::new(),
        });
    }
    rows.push(Row {
        provider: "LLM: llama.cpp, Gemma 3 270M Q4_K_M (base), 2 threads".into(),
        first_result: format!(
            "first token: cold {}, warm {} ms (p50 / max, {} turns)",
            p50_max(&mut cold),
            p50_max(&mut warm),
            warm.len()
        ),
        rtf: format!("{:.0} tok/s", median(&mut rates)),
        note: "warm: the examples and earlier turns are in the prompt cache".into(),
    });
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Failure> {
    let mut rows = Vec::new();
    let asr = LocalWhisperAsr::start(LocalWhisperConfig::default()).await?;
    whisper_english(&asr, &mut rows).await?;
    whisper_spanish(&asr, &mut rows).await?;
    let english = [
        "Of course.",
        "Sure, a table for four tomorrow at seven.",
        "We have a slot on Monday from nine to eleven, does that work for you?",
        "Thank you for calling, goodbye!",
        "Let me check that for you.",
    ];
    voice(
        "Piper en_US-joe-medium (ONNX Runtime)",
        &PiperTts::load()?,
        &english,
        &mut rows,
    )
    .await?;
    voice(
        "espeak-ng English (fallback)",
        &PiperTts::espeak_only(Espeak::from_environment("en-us"))?,
        &english,
        &mut rows,
    )
    .await?;
    let spanish = [
        "Claro.",
        "Tenemos una mesa para cuatro mañana a las siete.",
        "Gracias por llamar, ¡adiós!",
    ];
    voice(
        "espeak-ng Spanish",
        &PiperTts::espeak_only(Espeak::from_environment("es"))?,
        &spanish,
        &mut rows,
    )
    .await?;
    llm(&mut rows).await?;
    println!("| provider | time to first result | real-time factor | note |");
    println!("|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {} | {} |",
            row.provider, row.first_result, row.rtf, row.note
        );
    }
    Ok(())
}
