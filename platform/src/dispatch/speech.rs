//! The speech stack a node runs calls on, chosen from the environment:
//! cloud providers when their keys are set, else the local ones (the
//! embedded default, no account anywhere).
//!
//! | part | chosen when | provider |
//! | --- | --- | --- |
//! | LLM | `LLM_MODEL` set (+ `LLM_BASE_URL`, `LLM_API_KEY`) | OpenAI-compatible chat completions |
//! | LLM | `ANTHROPIC_API_KEY` set | Anthropic Messages |
//! | LLM | otherwise | local llama.cpp on the Gemma 3 270M GGUF (a base model: demo and tests) |
//! | LLM fallback | `LLM_FALLBACK=local` beside a cloud LLM | the local model answers a turn the cloud model failed before its first word (`LLM_FALLBACK_WAIT_MS`, default 4000) |
//! | ASR | `DEEPGRAM_API_KEY` set | Deepgram live streaming |
//! | ASR | otherwise | local Whisper (faster-whisper service) |
//! | TTS | `ELEVENLABS_API_KEY` (+ `ELEVENLABS_VOICE_ID`) set | ElevenLabs streaming: the agent's `voice` is the voice id (`default`: `ELEVENLABS_VOICE_ID`), in the call's language |
//! | TTS | `CARTESIA_API_KEY` (+ `CARTESIA_VOICE_ID`) set | Cartesia, the same way |
//! | TTS | English calls, otherwise | Piper (espeak-ng fallback) |
//! | TTS | Spanish calls | espeak-ng's Spanish voice (robotic: no Spanish Piper voice is in any registry package) |
//! | ASR language | per call | the call's `language`: local Whisper sends English to tiny.en and Spanish to Whisper base (multilingual); Deepgram takes the tag as its `language` |
//!
//! Extraction of `returns` uses the same LLM with a JSON schema.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use callingbox_engine::providers::anthropic::AnthropicChat;
use callingbox_engine::providers::cartesia::{CartesiaConfig, CartesiaTts};
use callingbox_engine::providers::deepgram::DeepgramAsr;
use callingbox_engine::providers::elevenlabs::{ElevenLabsConfig, ElevenLabsTts};
use callingbox_engine::providers::fallback::FallbackLlm;
use callingbox_engine::providers::llama::LocalLlm;
use callingbox_engine::providers::local_whisper::{LocalWhisperAsr, LocalWhisperConfig};
use callingbox_engine::providers::openai_chat::OpenAiChat;
use callingbox_engine::providers::piper::{Espeak, PiperTts};
use callingbox_engine::providers::structured::StructuredCompletion;
use callingbox_engine::providers::{AsrProvider, LlmProvider, TtsProvider, primary_language};
use futures::future::BoxFuture;
use serde_json::Value;

use super::engine::{SpeechStack, VoiceFactory};
use super::extraction::{Extractor, JsonModel, ModelExtractor};

/// A structured-output model as the extractor uses it.
pub struct StructuredModel(pub Arc<dyn StructuredCompletion>);

impl JsonModel for StructuredModel {
    fn complete_json<'a>(
        &'a self,
        system: &'a str,
        user: &'a str,
        schema: &'a Value,
    ) -> BoxFuture<'a, Result<Value, String>> {
        let request = self.0.complete_json(system, user, schema);
        Box::pin(async move { request.await.map_err(|err| err.to_string()) })
    }
}

/// The cloud TTS vendor's voices, if its key is set.
fn cloud_voices(var: &dyn Fn(&str) -> Option<String>) -> Result<Option<VoiceFactory>, String> {
    let default_voice = |vendor: &str, env: &str| {
        var(env).ok_or_else(|| {
            format!("{vendor}'s key is set: set {env} too (the voice of agents whose voice is \"default\")")
        })
    };
    let pick = |default: &str, voice: &str| {
        if voice == crate::api::agents::DEFAULT_VOICE {
            default.to_owned()
        } else {
            voice.to_owned()
        }
    };
    if let Some(key) = var("ELEVENLABS_API_KEY") {
        let default = default_voice("ElevenLabs", "ELEVENLABS_VOICE_ID")?;
        return Ok(Some(Arc::new(move |voice: &str, language: &str| {
            let config =
                ElevenLabsConfig::new(&key, &pick(&default, voice), &primary_language(language));
            ElevenLabsTts::new(config)
                .map(|tts| Arc::new(tts) as Arc<dyn TtsProvider>)
                .map_err(|err| err.to_string())
        })));
    }
    if let Some(key) = var("CARTESIA_API_KEY") {
        let default = default_voice("Cartesia", "CARTESIA_VOICE_ID")?;
        return Ok(Some(Arc::new(move |voice: &str, language: &str| {
            let config =
                CartesiaConfig::new(&key, &pick(&default, voice), &primary_language(language));
            Ok(Arc::new(CartesiaTts::new(config)) as Arc<dyn TtsProvider>)
        })));
    }
    Ok(None)
}

/// The node's speech stack and its extractor, from the environment.
pub async fn from_env(language: &str) -> Result<(SpeechStack, Arc<dyn Extractor>), String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let (llm, structured): (Arc<dyn LlmProvider>, Arc<dyn StructuredCompletion>) =
        if var("LLM_MODEL").is_some() {
            let chat = Arc::new(
                OpenAiChat::from_env().map_err(|e| format!("LLM (OpenAI-compatible): {e}"))?,
            );
            (chat.clone(), chat)
        } else if var("ANTHROPIC_API_KEY").is_some() {
            let chat =
                Arc::new(AnthropicChat::from_env().map_err(|e| format!("LLM (Anthropic): {e}"))?);
            (chat.clone(), chat)
        } else {
            let local = tokio::task::spawn_blocking(LocalLlm::load_default)
                .await
                .map_err(|e| format!("LLM (local): {e}"))?
                .map_err(|e| format!("LLM (local): {e}"))?;
            let local = Arc::new(local);
            (local.clone(), local)
        };
    let llm = match var("LLM_FALLBACK").as_deref() {
        None => llm,
        Some("local") if var("LLM_MODEL").is_some() || var("ANTHROPIC_API_KEY").is_some() => {
            let local = tokio::task::spawn_blocking(LocalLlm::load_default)
                .await
                .map_err(|e| format!("LLM fallback (local): {e}"))?
                .map_err(|e| format!("LLM fallback (local): {e}"))?;
            let wait = var("LLM_FALLBACK_WAIT_MS")
                .map(|ms| {
                    ms.parse::<u64>().map_err(|_| {
                        format!("LLM_FALLBACK_WAIT_MS must be milliseconds, got {ms:?}")
                    })
                })
                .transpose()?
                .unwrap_or(4_000);
            Arc::new(FallbackLlm::new(
                llm,
                Arc::new(local),
                Duration::from_millis(wait),
            ))
        }
        Some("local") => llm,
        Some(other) => {
            return Err(format!(
                "LLM_FALLBACK={other:?} is not a fallback this node knows (only \"local\")"
            ));
        }
    };
    let asr: Arc<dyn AsrProvider> = if var("DEEPGRAM_API_KEY").is_some() {
        Arc::new(DeepgramAsr::from_env().map_err(|e| format!("ASR (Deepgram): {e}"))?)
    } else {
        let config = LocalWhisperConfig {
            language: language.into(),
            ..LocalWhisperConfig::default()
        };
        Arc::new(
            LocalWhisperAsr::start(config)
                .await
                .map_err(|e| format!("ASR (local Whisper): {e}"))?,
        )
    };
    let tts = tokio::task::spawn_blocking(PiperTts::load_or_espeak_fallback)
        .await
        .map_err(|e| format!("TTS: {e}"))?
        .map_err(|e| format!("TTS: {e}"))?;
    let spanish =
        tokio::task::spawn_blocking(|| PiperTts::espeak_only(Espeak::from_environment("es")))
            .await
            .map_err(|e| format!("TTS (Spanish): {e}"))?
            .map_err(|e| format!("TTS (Spanish): {e}"))?;
    let voices: BTreeMap<String, Arc<dyn TtsProvider>> =
        BTreeMap::from([("es".to_owned(), Arc::new(spanish) as Arc<dyn TtsProvider>)]);
    let cloud_llm = var("LLM_MODEL").is_some() || var("ANTHROPIC_API_KEY").is_some();
    let llm_timeout = match var("LLM_TIMEOUT_MS") {
        Some(ms) => Duration::from_millis(
            ms.parse()
                .map_err(|_| format!("LLM_TIMEOUT_MS must be milliseconds, got {ms:?}"))?,
        ),
        // The local model runs one request at a time: a turn may wait for
        // other calls' turns.
        None if cloud_llm => Duration::from_secs(15),
        None => Duration::from_secs(60),
    };
    let stack = SpeechStack {
        llm,
        tts: Arc::new(tts),
        voices,
        cloud_voices: cloud_voices(&var)?,
        asr,
        end_of_turn_model: false,
        llm_timeout,
    };
    let extractor: Arc<dyn Extractor> = Arc::new(ModelExtractor::new(StructuredModel(structured)));
    Ok((stack, extractor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use callingbox_engine::codecs::SampleRate;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        }
    }

    #[test]
    fn a_cloud_voice_needs_its_default_voice_id_and_serves_every_agent_voice() {
        assert!(cloud_voices(&env(&[])).expect("no vendor").is_none());
        for (key, voice_env) in [
            ("ELEVENLABS_API_KEY", "ELEVENLABS_VOICE_ID"),
            ("CARTESIA_API_KEY", "CARTESIA_VOICE_ID"),
        ] {
            let missing = match key {
                "ELEVENLABS_API_KEY" => cloud_voices(&env(&[("ELEVENLABS_API_KEY", "k")])),
                _ => cloud_voices(&env(&[("CARTESIA_API_KEY", "k")])),
            };
            let error = missing.err().expect("refused without a default voice");
            assert!(error.contains(voice_env), "{error}");
        }
        let factory = cloud_voices(&env(&[
            ("ELEVENLABS_API_KEY", "k"),
            ("ELEVENLABS_VOICE_ID", "21m00Tcm4TlvDq8ikWAM"),
        ]))
        .expect("configured")
        .expect("a vendor");
        for (voice, language) in [("default", "en"), ("pNInz6obpgDQGcFmaJgB", "es-MX")] {
            let tts = factory(voice, language).expect("a voice");
            assert_eq!(tts.sample_rate(), SampleRate::Hz16000);
        }
    }
}
