//! The seam to the control plane: one ordered stream of [`CallEvent`]s per
//! call (status changes, transcript segments, tool invocations and results,
//! per-turn metrics, the end of the call).
//!
//! Times inside the engine are [`clock::Instant`]s; on this seam they become
//! whole milliseconds since the call started, so the control plane can store
//! them without knowing the engine's epoch. Durations serialize as whole
//! milliseconds too.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::clock::Instant;

/// Where a call stands, as the engine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallStatus {
    /// The far end is ringing.
    Ringing,
    /// Someone (or a machine) picked up; the conversation is live.
    Answered,
    /// The call is over (see [`CallEvent::Ended`] for who ended it and why).
    Ended,
}

/// Who spoke a transcript segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The AI agent.
    Agent,
    /// The person on the phone.
    User,
}

/// How a transcript segment's text was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SegmentSource {
    /// Speech recognition of the caller's audio.
    Asr,
    /// Text the agent spoke through text-to-speech.
    Tts,
    /// Keypad digits.
    Dtmf,
}

/// Who ended the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndedBy {
    /// The agent, through the `end_call` built-in.
    Agent,
    /// The caller hung up.
    User,
    /// The platform (limits, errors, shutdown).
    System,
}

/// Which of the call's providers a failure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderRole {
    /// The speech recognizer.
    Asr,
    /// The chat model.
    Llm,
    /// The voice.
    Tts,
}

impl ProviderRole {
    /// What a caller of the API calls it.
    pub fn describe(self) -> &'static str {
        match self {
            ProviderRole::Asr => "the speech recognizer",
            ProviderRole::Llm => "the language model",
            ProviderRole::Tts => "the voice (text-to-speech)",
        }
    }
}

/// A tool's outcome as reported on the event stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolOutcome {
    /// The JSON the tool returned (or the envelope the platform returned in
    /// its place, such as `confirmation_required`).
    Result(serde_json::Value),
    /// Why the tool failed; the model saw this as an error result.
    Error(String),
}

/// Latencies of one agent turn, measured on the engine clock.
///
/// `voice_to_voice` runs from the last user voice sample to the first agent
/// audio frame handed to the transport. `engine_overhead` is what is left of
/// it after endpointing (until the turn was committed), the model's time to
/// its first speakable clause and the TTS time to first byte: the engine's own
/// cost, which should be near zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TurnMetrics {
    /// From the end of the user's speech to the moment the turn was committed.
    #[serde(with = "opt_ms")]
    pub end_of_utterance_delay: Option<Duration>,
    /// From the end of the user's speech to the final transcript.
    #[serde(with = "opt_ms")]
    pub transcription_delay: Option<Duration>,
    /// From the LLM request to its first token (or tool call).
    #[serde(with = "opt_ms")]
    pub llm_ttft: Option<Duration>,
    /// From the LLM request to the first complete clause handed to TTS.
    #[serde(with = "opt_ms")]
    pub llm_first_clause: Option<Duration>,
    /// From the first TTS request to its first audio frame.
    #[serde(with = "opt_ms")]
    pub tts_ttfb: Option<Duration>,
    /// From the end of the user's speech to the first agent audio frame out.
    #[serde(with = "opt_ms")]
    pub voice_to_voice: Option<Duration>,
    /// `voice_to_voice` minus endpointing, LLM and TTS time.
    #[serde(with = "opt_ms")]
    pub engine_overhead: Option<Duration>,
}

/// One thing that happened on a call, in the order it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CallEvent {
    /// The call's status changed.
    Status {
        /// The new status.
        status: CallStatus,
        /// When, in ms since the call started.
        at_ms: u64,
    },
    /// A finished piece of the transcript.
    TranscriptSegment {
        /// Who spoke.
        role: Role,
        /// What was said (for an interrupted agent reply, only what was played).
        text: String,
        /// Start, in ms since the call started.
        started_at_ms: u64,
        /// End, in ms since the call started.
        ended_at_ms: u64,
        /// Length of the speech.
        duration_ms: u64,
        /// How the text was obtained.
        source: SegmentSource,
        /// The caller cut this agent reply short.
        interrupted: bool,
    },
    /// The model called a tool.
    ToolInvocation {
        /// The model's id for this call.
        id: String,
        /// The tool's name.
        name: String,
        /// The arguments the model gave (a string if they were not valid JSON).
        arguments: serde_json::Value,
        /// When, in ms since the call started.
        at_ms: u64,
    },
    /// A tool call finished.
    ToolResult {
        /// The model's id for this call.
        id: String,
        /// The tool's name.
        name: String,
        /// What the tool returned, or why it failed.
        outcome: ToolOutcome,
        /// How long the tool took.
        duration_ms: u64,
    },
    /// Latencies of one agent turn.
    TurnMetrics {
        /// Which user turn (0-based) these belong to.
        turn: u64,
        /// The figures.
        #[serde(flatten)]
        metrics: TurnMetrics,
    },
    /// A provider failed for good (after its fallback, if one is
    /// configured): the call ends right after this, `by: system`,
    /// `reason: "provider_failed"`.
    ProviderFailed {
        /// Which provider.
        provider: ProviderRole,
        /// What went wrong, as the provider reported it.
        error: String,
        /// When, in ms since the call started.
        at_ms: u64,
    },
    /// The call ended.
    Ended {
        /// Who ended it.
        by: EndedBy,
        /// Why (e.g. `end_call`, `hangup`).
        reason: String,
        /// When, in ms since the call started.
        at_ms: u64,
    },
}

/// The sending end of a call's event stream. Cloneable; every clone writes to
/// the same ordered stream. Unbounded on purpose: events are small and rare,
/// and a slow consumer must never stall the call.
#[derive(Debug, Clone)]
pub struct EventSender {
    call_start: Instant,
    tx: mpsc::UnboundedSender<CallEvent>,
}

impl EventSender {
    /// A new stream for a call that started at `call_start`, and its receiver.
    pub fn channel(call_start: Instant) -> (EventSender, mpsc::UnboundedReceiver<CallEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (EventSender { call_start, tx }, rx)
    }

    /// `at` as whole milliseconds since the call started (0 if earlier).
    pub fn ms_since_start(&self, at: Instant) -> u64 {
        duration_ms(at.saturating_since(self.call_start))
    }

    /// Sends `event`. A consumer that went away is not an error for the call.
    pub fn send(&self, event: CallEvent) {
        // The control plane dropping its receiver must not stop the call.
        let _ = self.tx.send(event);
    }
}

/// `duration` in whole milliseconds, saturating.
pub fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Serde for `Option<Duration>` as whole milliseconds (or null).
mod opt_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_some(&super::duration_ms(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_with_a_type_tag_and_milliseconds() {
        let event = CallEvent::TurnMetrics {
            turn: 2,
            metrics: TurnMetrics {
                llm_ttft: Some(Duration::from_millis(250)),
                ..TurnMetrics::default()
            },
        };
        let json = serde_json::to_value(&event).expect("serializes");
        assert_eq!(json["type"], "turn_metrics");
        assert_eq!(json["llm_ttft"], 250);
        assert!(json["tts_ttfb"].is_null());
        let back: CallEvent = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, event);

        let ended = CallEvent::Ended {
            by: EndedBy::Agent,
            reason: "end_call".into(),
            at_ms: 10,
        };
        let json = serde_json::to_value(&ended).expect("serializes");
        assert_eq!(json["by"], "agent");
    }

    #[test]
    fn times_are_milliseconds_since_call_start() {
        let (tx, _rx) = EventSender::channel(Instant::from_millis(1_000));
        assert_eq!(tx.ms_since_start(Instant::from_millis(1_250)), 250);
        assert_eq!(tx.ms_since_start(Instant::from_millis(10)), 0);
    }
}
