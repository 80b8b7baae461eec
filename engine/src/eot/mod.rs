//! End of turn: Smart Turn v3.2 (Pipecat's audio end-of-turn model, ONNX,
//! bundled in the `pipecat-ai` wheel) run through ONNX Runtime.
//!
//! The turn-taking machine asks it, after the VAD's short stop, whether the
//! user's turn is complete. Input: up to the last 8 s of the turn at 16 kHz
//! as Whisper log-mel features ([`features`]); output: the probability that
//! the turn is complete (Pipecat's cut-off is 0.5). Several calls' requests
//! go through one inference ([`SmartTurn::predict_batch`]); the model takes
//! `input_features [N, 80, 800]` and returns `logits [N, 1]`, which despite
//! the name are already sigmoid probabilities.

pub mod features;

use std::path::Path;

use ort::session::Session;
use ort::value::TensorRef;

use crate::vad::runtime::{ModelError, ModelFile, open_session};
use features::{FEATURES_LEN, N_FRAMES, N_MELS, WhisperLogMel};

/// Why an end-of-turn prediction failed.
#[derive(Debug, thiserror::Error)]
pub enum EotError {
    /// The model could not be loaded or run.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The output slice does not match the requests.
    #[error("{requests} requests but room for {outputs} probabilities")]
    OutputLength {
        /// Requests given.
        requests: usize,
        /// Length of the output slice.
        outputs: usize,
    },
}

/// Smart Turn v3.2 with room for `max_batch` requests per inference.
pub struct SmartTurn {
    session: Session,
    features: WhisperLogMel,
    /// `[max_batch][N_MELS][N_FRAMES]`, reused by every call.
    input: Vec<f32>,
    max_batch: usize,
}

impl std::fmt::Debug for SmartTurn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmartTurn")
            .field("max_batch", &self.max_batch)
            .finish_non_exhaustive()
    }
}

impl SmartTurn {
    /// Loads the model and ONNX Runtime by the search order of
    /// [`crate::vad::runtime`] (`CALLINGBOX_EOT_MODEL`, then
    /// `models/smart-turn-v3.2-cpu.onnx`).
    pub fn load(max_batch: usize) -> Result<Self, EotError> {
        let runtime = ModelFile::Runtime.locate()?;
        let model = ModelFile::SmartTurn.locate()?;
        Self::from_paths(&runtime, &model, max_batch)
    }

    /// Loads `model` with the ONNX Runtime library at `runtime`.
    pub fn from_paths(runtime: &Path, model: &Path, max_batch: usize) -> Result<Self, EotError> {
        let session = open_session(runtime, model)?;
        let max_batch = max_batch.max(1);
        Ok(SmartTurn {
            session,
            features: WhisperLogMel::new(),
            input: vec![0.0; max_batch * FEATURES_LEN],
            max_batch,
        })
    }

    /// Requests scored per inference; larger batches are split.
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// The probability that the turn in `audio` (16 kHz PCM, the turn from
    /// shortly before its speech start to now) is complete.
    pub fn predict(&mut self, audio: &[i16]) -> Result<f32, EotError> {
        let mut probability = [0.0f32];
        self.predict_batch(&[audio], &mut probability)?;
        Ok(probability[0])
    }

    /// Scores several calls' turns, `max_batch` per inference; writes one
    /// probability per request into `probabilities`.
    pub fn predict_batch(
        &mut self,
        requests: &[&[i16]],
        probabilities: &mut [f32],
    ) -> Result<(), EotError> {
        if requests.len() != probabilities.len() {
            return Err(EotError::OutputLength {
                requests: requests.len(),
                outputs: probabilities.len(),
            });
        }
        for (chunk, out) in requests
            .chunks(self.max_batch)
            .zip(probabilities.chunks_mut(self.max_batch))
        {
            self.infer(chunk, out)?;
        }
        Ok(())
    }

    fn infer(&mut self, requests: &[&[i16]], probabilities: &mut [f32]) -> Result<(), EotError> {
        let count = requests.len();
        for (audio, slot) in requests
            .iter()
            .zip(self.input.chunks_exact_mut(FEATURES_LEN))
        {
            // The slot is FEATURES_LEN long by construction.
            self.features.compute_into(audio, slot);
        }
        let inference = |err: ort::Error| ModelError::Inference(err.to_string());
        let input = TensorRef::from_array_view((
            [count, N_MELS, N_FRAMES],
            &self.input[..count * FEATURES_LEN],
        ))
        .map_err(inference)?;
        let outputs = self.session.run(ort::inputs![input]).map_err(inference)?;
        let (_, scores) = outputs[0].try_extract_tensor::<f32>().map_err(inference)?;
        if scores.len() != count {
            return Err(ModelError::Output(format!(
                "{} scores for {count} requests",
                scores.len()
            ))
            .into());
        }
        probabilities.copy_from_slice(scores);
        Ok(())
    }
}
