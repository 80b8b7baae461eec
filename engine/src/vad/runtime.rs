//! Finding the model files and loading ONNX Runtime, shared by the VAD and
//! the end-of-turn model.
//!
//! ## Search order
//!
//! For each file ([`ModelFile`]):
//! 1. its environment variable (`ORT_DYLIB_PATH` for the runtime library,
//!    `CALLINGBOX_VAD_MODEL` for Silero, `CALLINGBOX_EOT_MODEL` for Smart
//!    Turn). When set, it must name an existing file: a wrong path is an
//!    error, not a silent switch to another copy.
//! 2. `models/<file name>` at the workspace root (where
//!    `scripts/fetch-models.sh` puts it).
//!
//! ONNX Runtime is a process-wide library: the first successful load wins
//! and later calls reuse it, whatever path they name.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

/// The command that installs every file this module looks for.
pub const FETCH_COMMAND: &str = "scripts/fetch-models.sh";

/// The folder `scripts/fetch-models.sh` fills: `models/` at the workspace root.
pub fn default_models_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../models"))
}

/// A file the engine loads at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFile {
    /// The ONNX Runtime shared library (`libonnxruntime.so.1.32.0`).
    Runtime,
    /// The Silero VAD model (`silero_vad.onnx`).
    SileroVad,
    /// The Smart Turn v3.2 end-of-turn model (`smart-turn-v3.2-cpu.onnx`).
    SmartTurn,
}

impl ModelFile {
    /// The file name inside the models folder.
    pub const fn file_name(self) -> &'static str {
        match self {
            ModelFile::Runtime => "libonnxruntime.so.1.32.0",
            ModelFile::SileroVad => "silero_vad.onnx",
            ModelFile::SmartTurn => "smart-turn-v3.2-cpu.onnx",
        }
    }

    /// The environment variable that overrides the location.
    pub const fn env_var(self) -> &'static str {
        match self {
            ModelFile::Runtime => "ORT_DYLIB_PATH",
            ModelFile::SileroVad => "CALLINGBOX_VAD_MODEL",
            ModelFile::SmartTurn => "CALLINGBOX_EOT_MODEL",
        }
    }

    /// Finds the file by the documented search order, reading the real
    /// environment and the default models folder.
    pub fn locate(self) -> Result<PathBuf, ModelError> {
        let from_env = std::env::var_os(self.env_var()).map(PathBuf::from);
        self.locate_in(from_env.as_deref(), &default_models_dir())
    }

    /// The search order with its inputs given: `from_env` is the value of
    /// [`ModelFile::env_var`] if it is set.
    pub fn locate_in(
        self,
        from_env: Option<&Path>,
        models_dir: &Path,
    ) -> Result<PathBuf, ModelError> {
        let candidate = match from_env {
            Some(path) if !path.as_os_str().is_empty() => path.to_path_buf(),
            _ => models_dir.join(self.file_name()),
        };
        if candidate.is_file() {
            Ok(candidate)
        } else {
            Err(ModelError::NotFound {
                file: self,
                tried: candidate,
            })
        }
    }
}

impl std::fmt::Display for ModelFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModelFile::Runtime => "the ONNX Runtime library",
            ModelFile::SileroVad => "the Silero VAD model",
            ModelFile::SmartTurn => "the Smart Turn v3.2 model",
        })
    }
}

/// Why a model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file is not where the search order looked.
    #[error(
        "{file} was not found at {tried}: run `{FETCH_COMMAND}` to install it, or set {} to its path",
        file.env_var()
    )]
    NotFound {
        /// Which file.
        file: ModelFile,
        /// The path that was checked.
        tried: PathBuf,
    },
    /// The ONNX Runtime library exists but could not be loaded.
    #[error("cannot load ONNX Runtime from {path}: {reason} (run `{FETCH_COMMAND}`)")]
    Runtime {
        /// The library path.
        path: PathBuf,
        /// What ONNX Runtime or the loader said.
        reason: String,
    },
    /// ONNX Runtime refused the model file.
    #[error("cannot open the model {path}: {reason}")]
    Session {
        /// The model path.
        path: PathBuf,
        /// What ONNX Runtime said.
        reason: String,
    },
    /// An inference call failed.
    #[error("inference failed: {0}")]
    Inference(String),
    /// The model returned an output of an unexpected shape.
    #[error("unexpected model output: {0}")]
    Output(String),
}

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();

/// The process-wide ONNX Runtime environment, loading the library from
/// `dylib` on the first successful call. A failure is not remembered, so a
/// later call with a good path still works.
pub fn environment(dylib: &Path) -> Result<Environment, ModelError> {
    if let Some(environment) = ENVIRONMENT.get() {
        return Ok(environment.clone());
    }
    let built = ort::init_from(dylib)
        .map_err(|err| err.to_string())
        .and_then(|builder| {
            builder
                .with_name("callingbox")
                .build()
                .map_err(|err| err.to_string())
        });
    match built {
        Ok(environment) => Ok(ENVIRONMENT.get_or_init(|| environment).clone()),
        // Another thread may have built the one allowed environment meanwhile.
        Err(reason) => ENVIRONMENT.get().cloned().ok_or(ModelError::Runtime {
            path: dylib.to_path_buf(),
            reason,
        }),
    }
}

/// Opens `model` in a session that runs on the calling thread only (one
/// intra-op thread, sequential): the engine batches instead of spreading one
/// small inference over cores.
pub fn open_session(runtime: &Path, model: &Path) -> Result<ort::session::Session, ModelError> {
    let environment = environment(runtime)?;
    let session_error = |reason: String| ModelError::Session {
        path: model.to_path_buf(),
        reason,
    };
    ort::session::Session::builder(&environment)
        .map_err(|err| session_error(err.to_string()))?
        .with_intra_threads(1)
        .map_err(|err| session_error(err.to_string()))?
        .with_inter_threads(1)
        .map_err(|err| session_error(err.to_string()))?
        .with_parallel_execution(false)
        .map_err(|err| session_error(err.to_string()))?
        .commit_from_file(model)
        .map_err(|err| session_error(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_model_names_the_install_command() {
        let dir = Path::new("/nonexistent/callingbox-models");
        let err = ModelFile::SileroVad
            .locate_in(None, dir)
            .expect_err("no model there");
        let message = err.to_string();
        assert!(message.contains("scripts/fetch-models.sh"), "{message}");
        assert!(message.contains("CALLINGBOX_VAD_MODEL"), "{message}");
        assert!(
            message.contains("/nonexistent/callingbox-models/silero_vad.onnx"),
            "{message}"
        );
    }

    #[test]
    fn the_environment_variable_wins_and_must_exist() {
        let dir = std::env::temp_dir();
        let here = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
        assert_eq!(
            ModelFile::SmartTurn
                .locate_in(Some(&here), Path::new("/nonexistent"))
                .expect("exists"),
            here
        );
        let missing = dir.join("callingbox-no-such-model.onnx");
        match ModelFile::SmartTurn.locate_in(Some(&missing), &dir) {
            Err(ModelError::NotFound { tried, .. }) => assert_eq!(tried, missing),
            other => panic!("expected NotFound, got {other:?}"),
        }
    }
}
