//! Silero VAD v6 through ONNX Runtime, one inference for many calls.
//!
//! The model takes `input [N, 576]` (64 samples of context, the end of the
//! stream's previous window, then the 512 new samples), `state [2, N, 128]`
//! (the recurrent state) and `sr` (16000), and returns `output [N, 1]` (the
//! speech probability) and `stateN [2, N, 128]`. Rows are independent, so N
//! streams' windows go through one call; `tests/vad.rs` checks that a batch
//! gives each stream exactly what a run of its own would.
//!
//! Every stream's context and state live in buffers sized for the batch's
//! capacity at construction; [`SileroBatch::submit`] stages the window in
//! the stream's slot and [`SileroBatch::run`] gathers the staged rows. ONNX Runtime itself still allocates its
//! output tensors once per [`SileroBatch::run`] (one run per 32 ms tick for
//! all calls, not per stream).

use std::path::Path;

use ort::session::Session;
use ort::value::TensorRef;

use super::VadError;
use super::runtime::{ModelError, ModelFile, open_session};
use super::streams::{StreamHandle, Streams};

/// Samples per window: 32 ms at 16 kHz.
pub const WINDOW_SAMPLES: usize = 512;
/// Samples of the previous window the model sees before the new ones.
pub const CONTEXT_SAMPLES: usize = 64;
/// Samples in one input row.
pub const ROW_SAMPLES: usize = CONTEXT_SAMPLES + WINDOW_SAMPLES;
/// Width of one layer of the recurrent state.
pub const STATE_WIDTH: usize = 128;
/// Layers in the recurrent state.
pub const STATE_LAYERS: usize = 2;
const STATE_PER_STREAM: usize = STATE_LAYERS * STATE_WIDTH;
const SAMPLE_RATE: i64 = 16_000;
/// The model's input names, in the order the session is called with.
const INPUT_NAMES: [&str; 3] = ["input", "state", "sr"];

/// Silero VAD for up to `capacity` streams, evaluated together.
///
/// Each 32 ms tick: every stream [`submit`](Self::submit)s its window, then
/// one [`run`](Self::run) scores them all, and
/// [`probability`](Self::probability) reads each stream's result.
pub struct SileroBatch {
    session: Session,
    streams: Streams,
    /// Per slot: the last 64 samples the stream submitted.
    contexts: Vec<f32>,
    /// Per slot: the recurrent state, layer-major (`[2][128]`).
    states: Vec<f32>,
    /// Per slot: the probability from the last run that included it.
    probabilities: Vec<f32>,
    /// Per slot: the submitted row (context, then the new window).
    staged: Vec<f32>,
    /// The next run's input, one row per pending stream in submission order
    /// (gathered at run time, so a stream released while pending leaves
    /// no hole).
    input: Vec<f32>,
    /// The next run's state input, `[2, pending, 128]`.
    state_input: Vec<f32>,
    sample_rate: [i64; 1],
}

impl SileroBatch {
    /// Loads the model and ONNX Runtime by the search order of
    /// [`runtime`](super::runtime), for up to `capacity` streams.
    pub fn load(capacity: usize) -> Result<Self, ModelError> {
        let runtime = ModelFile::Runtime.locate()?;
        let model = ModelFile::SileroVad.locate()?;
        Self::from_paths(&runtime, &model, capacity)
    }

    /// Loads `model` with the ONNX Runtime library at `runtime`.
    pub fn from_paths(runtime: &Path, model: &Path, capacity: usize) -> Result<Self, ModelError> {
        let session = open_session(runtime, model)?;
        let names: Vec<&str> = session.inputs().iter().map(|input| input.name()).collect();
        if names != INPUT_NAMES {
            return Err(ModelError::Session {
                path: model.to_path_buf(),
                reason: format!("expected inputs {INPUT_NAMES:?}, the model has {names:?}"),
            });
        }
        Ok(SileroBatch {
            session,
            streams: Streams::new(capacity),
            contexts: vec![0.0; capacity * CONTEXT_SAMPLES],
            states: vec![0.0; capacity * STATE_PER_STREAM],
            probabilities: vec![0.0; capacity],
            staged: vec![0.0; capacity * ROW_SAMPLES],
            input: vec![0.0; capacity * ROW_SAMPLES],
            state_input: vec![0.0; capacity * STATE_PER_STREAM],
            sample_rate: [SAMPLE_RATE],
        })
    }

    /// How many streams the batch can hold.
    pub fn capacity(&self) -> usize {
        self.streams.capacity()
    }

    /// Adds a stream with fresh state.
    pub fn register(&mut self) -> Result<StreamHandle, VadError> {
        let handle = self.streams.register()?;
        self.clear_slot(handle.slot());
        Ok(handle)
    }

    /// Removes a stream; its handle goes stale and a pending window is dropped.
    pub fn release(&mut self, handle: StreamHandle) -> Result<(), VadError> {
        self.streams.release(handle)?;
        Ok(())
    }

    /// Forgets the stream's past (state and context), as at registration.
    pub fn reset(&mut self, handle: StreamHandle) -> Result<(), VadError> {
        let slot = self.streams.check(handle)?;
        self.clear_slot(slot);
        Ok(())
    }

    /// Queues one 32 ms window (512 samples of 16 kHz PCM) for the next run.
    pub fn submit(&mut self, handle: StreamHandle, window: &[i16]) -> Result<(), VadError> {
        let slot = self.streams.check(handle)?;
        check_window(window)?;
        self.streams.mark_pending(slot)?;
        let row = &mut self.staged[slot * ROW_SAMPLES..(slot + 1) * ROW_SAMPLES];
        row[..CONTEXT_SAMPLES]
            .copy_from_slice(&self.contexts[slot * CONTEXT_SAMPLES..(slot + 1) * CONTEXT_SAMPLES]);
        for (out, &sample) in row[CONTEXT_SAMPLES..].iter_mut().zip(window) {
            *out = f32::from(sample) / 32768.0;
        }
        Ok(())
    }

    /// Windows waiting for the next run.
    pub fn pending(&self) -> usize {
        self.streams.pending().len()
    }

    /// Scores every pending window in one inference; returns how many.
    ///
    /// On an inference error the pending windows are dropped and the
    /// streams' state is left as it was before them.
    pub fn run(&mut self) -> Result<usize, VadError> {
        let count = self.streams.pending().len();
        if count == 0 {
            return Ok(0);
        }
        let result = self.infer(count);
        self.streams.clear_pending();
        result.map(|()| count)
    }

    fn infer(&mut self, count: usize) -> Result<(), VadError> {
        let pending = self.streams.pending();
        for (row, &slot) in pending.iter().enumerate() {
            self.input[row * ROW_SAMPLES..(row + 1) * ROW_SAMPLES]
                .copy_from_slice(&self.staged[slot as usize * ROW_SAMPLES..][..ROW_SAMPLES]);
            let state = &self.states[slot as usize * STATE_PER_STREAM..][..STATE_PER_STREAM];
            for layer in 0..STATE_LAYERS {
                let at = (layer * count + row) * STATE_WIDTH;
                self.state_input[at..at + STATE_WIDTH]
                    .copy_from_slice(&state[layer * STATE_WIDTH..(layer + 1) * STATE_WIDTH]);
            }
        }
        let inference = |err: ort::Error| ModelError::Inference(err.to_string());
        let input =
            TensorRef::from_array_view(([count, ROW_SAMPLES], &self.input[..count * ROW_SAMPLES]))
                .map_err(inference)?;
        let state_input = TensorRef::from_array_view((
            [STATE_LAYERS, count, STATE_WIDTH],
            &self.state_input[..count * STATE_PER_STREAM],
        ))
        .map_err(inference)?;
        let sample_rate =
            TensorRef::from_array_view(((), &self.sample_rate[..])).map_err(inference)?;
        let outputs = self
            .session
            .run(ort::inputs![input, state_input, sample_rate])
            .map_err(inference)?;
        let (probabilities, states) = match (outputs.get("output"), outputs.get("stateN")) {
            (Some(probabilities), Some(states)) => (probabilities, states),
            _ => return Err(ModelError::Output("missing `output` or `stateN`".into()).into()),
        };
        let (_, probabilities) = probabilities
            .try_extract_tensor::<f32>()
            .map_err(inference)?;
        let (_, states) = states.try_extract_tensor::<f32>().map_err(inference)?;
        if probabilities.len() != count || states.len() != count * STATE_PER_STREAM {
            return Err(ModelError::Output(format!(
                "{} probabilities and {} state values for {count} windows",
                probabilities.len(),
                states.len()
            ))
            .into());
        }
        for (row, &slot) in pending.iter().enumerate() {
            let slot = slot as usize;
            self.probabilities[slot] = probabilities[row];
            let state = &mut self.states[slot * STATE_PER_STREAM..][..STATE_PER_STREAM];
            for layer in 0..STATE_LAYERS {
                let at = (layer * count + row) * STATE_WIDTH;
                state[layer * STATE_WIDTH..(layer + 1) * STATE_WIDTH]
                    .copy_from_slice(&states[at..at + STATE_WIDTH]);
            }
            // The next window's context is the end of this one.
            let row_end = (slot + 1) * ROW_SAMPLES;
            self.contexts[slot * CONTEXT_SAMPLES..(slot + 1) * CONTEXT_SAMPLES]
                .copy_from_slice(&self.staged[row_end - CONTEXT_SAMPLES..row_end]);
        }
        Ok(())
    }

    /// The stream's speech probability (0..1) from the last run that scored
    /// one of its windows (0 before any).
    pub fn probability(&self, handle: StreamHandle) -> Result<f32, VadError> {
        let slot = self.streams.check(handle)?;
        Ok(self.probabilities[slot])
    }

    fn clear_slot(&mut self, slot: usize) {
        self.contexts[slot * CONTEXT_SAMPLES..(slot + 1) * CONTEXT_SAMPLES].fill(0.0);
        self.states[slot * STATE_PER_STREAM..(slot + 1) * STATE_PER_STREAM].fill(0.0);
        self.probabilities[slot] = 0.0;
    }
}

impl std::fmt::Debug for SileroBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SileroBatch")
            .field("capacity", &self.capacity())
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

pub(crate) fn check_window(window: &[i16]) -> Result<(), VadError> {
    if window.len() == WINDOW_SAMPLES {
        Ok(())
    } else {
        Err(super::StreamError::WindowLength {
            expected: WINDOW_SAMPLES,
            got: window.len(),
        }
        .into())
    }
}
