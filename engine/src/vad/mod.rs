//! Voice activity: speech probabilities per 32 ms window (Silero through ONNX
//! Runtime, batched across calls, with an energy fallback) and the gate that
//! turns them into speech start and stop events.

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
