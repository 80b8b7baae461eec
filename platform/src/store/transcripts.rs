//! Transcript segments, written as the engine reports them (a crash
//! mid-call keeps everything said so far).

use serde::Serialize;
use sqlx::{AnyConnection, Row};
use utoipa::ToSchema;

use super::{StoreError, opt_ts};
use crate::clock::Timestamp;

/// One segment (the API's TranscriptSegment).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Segment {
    /// Order within the call, from 0.
    pub sequence_no: i64,
    /// `agent` or `user`.
    pub role: String,
    /// What was said.
    pub text: String,
    /// When the speech started.
    #[schema(value_type = String, format = DateTime)]
    pub started_at: Timestamp,
    /// When it ended.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<Timestamp>,
    /// Length of the speech.
    pub duration_ms: Option<i64>,
    /// `asr` (recognized speech), `tts` (agent speech) or `dtmf` (keypad).
    pub source: String,
}

/// A segment about to be stored.
#[derive(Debug, Clone)]
pub struct NewSegment<'a> {
    /// Speaker.
    pub role: &'a str,
    /// Text.
    pub text: &'a str,
    /// Start.
    pub started_at: Timestamp,
    /// End.
    pub ended_at: Option<Timestamp>,
    /// Length.
    pub duration_ms: Option<i64>,
    /// Source.
    pub source: &'a str,
}

/// Appends a segment after the call's last one.
pub async fn append(
    conn: &mut AnyConnection,
    call_id: &str,
    segment: &NewSegment<'_>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO transcript_segments (call_id, sequence_no, role, text, started_at, ended_at, \
         duration_ms, source) SELECT $1, COALESCE(MAX(sequence_no) + 1, 0), $2, $3, $4, $5, $6, $7 \
         FROM transcript_segments WHERE call_id = $1",
    )
    .bind(call_id)
    .bind(segment.role)
    .bind(segment.text)
    .bind(segment.started_at.0)
    .bind(segment.ended_at.map(|t| t.0))
    .bind(segment.duration_ms)
    .bind(segment.source)
    .execute(conn)
    .await?;
    Ok(())
}

/// The call's segments in order.
pub async fn list(conn: &mut AnyConnection, call_id: &str) -> Result<Vec<Segment>, StoreError> {
    let rows = sqlx::query(
        "SELECT sequence_no, role, text, started_at, ended_at, duration_ms, source \
         FROM transcript_segments WHERE call_id = $1 ORDER BY sequence_no",
    )
    .bind(call_id)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Segment {
                sequence_no: row.try_get("sequence_no")?,
                role: row.try_get("role")?,
                text: row.try_get("text")?,
                started_at: Timestamp(row.try_get("started_at")?),
                ended_at: opt_ts(row.try_get("ended_at")?),
                duration_ms: row.try_get("duration_ms")?,
                source: row.try_get("source")?,
            })
        })
        .collect()
}
