//! Writes what the engine reports about a call into the store as it
//! happens: each transcript segment is committed when it arrives, so a crash
//! mid-call keeps everything said so far.

use callingbox_engine::events::{CallEvent, Role, SegmentSource};

use crate::clock::Timestamp;
use crate::store::transcripts::{self, NewSegment};
use crate::store::{Store, StoreError};

/// Records one call's engine events.
#[derive(Debug)]
pub struct EventRecorder {
    store: Store,
    call_id: String,
    /// The wall-clock time of the engine's call start (its `at_ms` zero).
    call_start: Timestamp,
    user_segments: usize,
    agent_segments: usize,
}

impl EventRecorder {
    /// A recorder for `call_id`, whose engine clock started at `call_start`.
    pub fn new(store: Store, call_id: &str, call_start: Timestamp) -> Self {
        EventRecorder {
            store,
            call_id: call_id.to_owned(),
            call_start,
            user_segments: 0,
            agent_segments: 0,
        }
    }

    /// True once the caller said something (extraction then runs).
    pub fn had_conversation(&self) -> bool {
        self.user_segments > 0
    }

    /// Segments recorded so far (user, agent).
    pub fn segment_counts(&self) -> (usize, usize) {
        (self.user_segments, self.agent_segments)
    }

    fn at(&self, ms: u64) -> Timestamp {
        self.call_start.plus_micros(
            i64::try_from(ms)
                .unwrap_or(i64::MAX / 1_000)
                .saturating_mul(1_000),
        )
    }

    /// Stores `event` if it is a transcript segment (other events are for
    /// metrics and logs).
    pub async fn record(&mut self, event: &CallEvent) -> Result<(), StoreError> {
        let CallEvent::TranscriptSegment {
            role,
            text,
            started_at_ms,
            ended_at_ms,
            duration_ms,
            source,
            ..
        } = event
        else {
            return Ok(());
        };
        if text.trim().is_empty() {
            return Ok(());
        }
        let role = match role {
            Role::Agent => "agent",
            Role::User => "user",
        };
        let source = match source {
            SegmentSource::Asr => "asr",
            SegmentSource::Tts => "tts",
            SegmentSource::Dtmf => "dtmf",
        };
        let segment = NewSegment {
            role,
            text,
            started_at: self.at(*started_at_ms),
            ended_at: Some(self.at(*ended_at_ms)),
            duration_ms: i64::try_from(*duration_ms).ok(),
            source,
        };
        let mut tx = self.store.begin().await?;
        transcripts::append(&mut tx, &self.call_id, &segment).await?;
        tx.commit().await?;
        if role == "user" {
            self.user_segments += 1;
        } else {
            self.agent_segments += 1;
        }
        Ok(())
    }
}
