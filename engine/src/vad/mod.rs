//! Voice activity: speech probabilities per 32 ms window (Silero through ONNX
//! Runtime, batched across calls, with an energy fallback) and the gate that
//! turns them into speech start and stop events.
//!
//! * [`SileroBatch`]: one Silero inference for every call's current window.
//! * [`EnergyBatch`]: the same API on a level/zero-crossing detector, used
//!   when the model or ONNX Runtime is missing.
//! * [`VadBatch`]: whichever of the two could be loaded.
//! * [`VadGate`]: one stream's hysteresis, probability in, [`VadEvent`] out.
//! * [`runtime`]: where the model files are looked for, and ONNX Runtime.

pub mod energy;
pub mod gate;
pub mod runtime;
pub mod silero;
mod streams;

pub use energy::{EnergyBatch, EnergyVad};
pub use gate::{VadGate, VadGateConfig};
pub use runtime::{ModelError, ModelFile};
pub use silero::SileroBatch;
pub use streams::{StreamError, StreamHandle};

use crate::clock::Instant;

/// What the VAD gate reports to the turn-taking machine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum VadEvent {
    /// Speech began. `at` is the start of the first speech window (before
    /// the gate's confirmation delay), so latency can be measured from it.
    SpeechStarted {
        /// When the speech began on the engine clock.
        at: Instant,
    },
    /// Speech stopped: the gate saw `min_silence` of non-speech. `at` is the
    /// end of the last speech window (the real end of the user's voice).
    SpeechStopped {
        /// When the last speech window ended on the engine clock.
        at: Instant,
    },
}

/// Why a VAD batch call failed.
#[derive(Debug, thiserror::Error)]
pub enum VadError {
    /// The call was refused (bad handle, wrong window length, batch full).
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The model failed to run.
    #[error(transparent)]
    Model(#[from] ModelError),
}

#[derive(Debug)]
enum Backend {
    Silero(Box<SileroBatch>),
    Energy(EnergyBatch),
}

/// The VAD the engine runs: Silero when it loads, otherwise the energy
/// fallback (see [`VadBatch::load_or_fallback`]). Same API either way.
#[derive(Debug)]
pub struct VadBatch {
    backend: Backend,
    fallback_reason: Option<String>,
}

impl VadBatch {
    /// Loads Silero for `capacity` streams; if it cannot load, prints why
    /// to stderr and uses [`EnergyBatch`] instead.
    pub fn load_or_fallback(capacity: usize) -> Self {
        Self::from_load_result(SileroBatch::load(capacity), capacity)
    }

    /// Uses `silero` if it loaded, else the energy fallback (printing why).
    pub fn from_load_result(silero: Result<SileroBatch, ModelError>, capacity: usize) -> Self {
        match silero {
            Ok(batch) => VadBatch {
                backend: Backend::Silero(Box::new(batch)),
                fallback_reason: None,
            },
            Err(err) => {
                let reason = err.to_string();
                eprintln!(
                    "callingbox VAD: Silero unavailable, using the energy fallback VAD (weaker: loud noise counts as speech): {reason}"
                );
                VadBatch {
                    backend: Backend::Energy(EnergyBatch::new(capacity)),
                    fallback_reason: Some(reason),
                }
            }
        }
    }

    /// Why the energy fallback is in use, or `None` when Silero runs.
    pub fn fallback_reason(&self) -> Option<&str> {
        self.fallback_reason.as_deref()
    }

    /// True when Silero runs.
    pub fn is_silero(&self) -> bool {
        matches!(self.backend, Backend::Silero(_))
    }

    /// How many streams the batch can hold.
    pub fn capacity(&self) -> usize {
        match &self.backend {
            Backend::Silero(batch) => batch.capacity(),
            Backend::Energy(batch) => batch.capacity(),
        }
    }

    /// Adds a stream with fresh state.
    pub fn register(&mut self) -> Result<StreamHandle, VadError> {
        match &mut self.backend {
            Backend::Silero(batch) => batch.register(),
            Backend::Energy(batch) => batch.register(),
        }
    }

    /// Removes a stream.
    pub fn release(&mut self, handle: StreamHandle) -> Result<(), VadError> {
        match &mut self.backend {
            Backend::Silero(batch) => batch.release(handle),
            Backend::Energy(batch) => batch.release(handle),
        }
    }

    /// Forgets the stream's past.
    pub fn reset(&mut self, handle: StreamHandle) -> Result<(), VadError> {
        match &mut self.backend {
            Backend::Silero(batch) => batch.reset(handle),
            Backend::Energy(batch) => batch.reset(handle),
        }
    }

    /// Queues one 32 ms window (512 samples at 16 kHz) for the next run.
    pub fn submit(&mut self, handle: StreamHandle, window: &[i16]) -> Result<(), VadError> {
        match &mut self.backend {
            Backend::Silero(batch) => batch.submit(handle, window),
            Backend::Energy(batch) => batch.submit(handle, window),
        }
    }

    /// Scores every pending window; returns how many.
    pub fn run(&mut self) -> Result<usize, VadError> {
        match &mut self.backend {
            Backend::Silero(batch) => batch.run(),
            Backend::Energy(batch) => batch.run(),
        }
    }

    /// The stream's probability from the last run that scored it.
    pub fn probability(&self, handle: StreamHandle) -> Result<f32, VadError> {
        match &self.backend {
            Backend::Silero(batch) => batch.probability(handle),
            Backend::Energy(batch) => batch.probability(handle),
        }
    }
}
