//! The recorded fixture utterances (`fixtures/audio/`) as a caller plays
//! them: G.711 mu-law bytes, with the text and where the speech lies in the
//! clip (from `manifest.json`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use callingbox_codecs::{G711Law, read_wav};
use serde::Deserialize;

/// One fixture clip, ready to send as 8 kHz mu-law.
#[derive(Debug, Clone)]
pub struct Clip {
    /// The manifest id (`statement_book_table`).
    pub id: String,
    /// What is said.
    pub text: String,
    /// Mu-law bytes, one per 8 kHz sample, leading and trailing silence included.
    pub ulaw: Arc<[u8]>,
    /// Where the voice starts, from the start of the clip.
    pub speech_start: Duration,
    /// Where the voice ends (the last voice sample), from the start of the clip.
    pub speech_end: Duration,
}

#[derive(Deserialize)]
struct Manifest {
    utterances: Vec<Utterance>,
}

#[derive(Deserialize)]
struct Utterance {
    id: String,
    text: String,
    speech_start_ms: Option<u64>,
    speech_end_ms: Option<u64>,
}

/// Why a clip could not be loaded.
#[derive(Debug)]
pub struct FixtureError(pub String);

impl std::fmt::Display for FixtureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FixtureError {}

/// The fixtures folder of the workspace.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures/audio"))
}

/// Loads the clips named `ids` (each must have speech marks in the manifest).
pub fn load_clips(ids: &[&str]) -> Result<Vec<Clip>, FixtureError> {
    let dir = fixtures_dir();
    let manifest_path = dir.join("manifest.json");
    let manifest: Manifest = std::fs::read(&manifest_path)
        .map_err(|e| FixtureError(format!("{}: {e}", manifest_path.display())))
        .and_then(|bytes| {
            serde_json::from_slice(&bytes)
                .map_err(|e| FixtureError(format!("{}: {e}", manifest_path.display())))
        })?;
    ids.iter()
        .map(|&id| {
            let entry = manifest
                .utterances
                .iter()
                .find(|u| u.id == id)
                .ok_or_else(|| FixtureError(format!("no fixture {id} in the manifest")))?;
            let (Some(start), Some(end)) = (entry.speech_start_ms, entry.speech_end_ms) else {
                return Err(FixtureError(format!("fixture {id} has no speech marks")));
            };
            let path = dir.join(format!("{id}.8k.ulaw.wav"));
            let audio =
                read_wav(&path).map_err(|e| FixtureError(format!("{}: {e}", path.display())))?;
            let mut ulaw = vec![0u8; audio.samples.len()];
            G711Law::MuLaw
                .encode(&audio.samples, &mut ulaw)
                .map_err(|e| FixtureError(format!("{}: {e}", path.display())))?;
            Ok(Clip {
                id: id.to_owned(),
                text: entry.text.clone(),
                ulaw: ulaw.into(),
                speech_start: Duration::from_millis(start),
                speech_end: Duration::from_millis(end),
            })
        })
        .collect()
}
