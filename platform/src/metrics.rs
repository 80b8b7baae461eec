//! Prometheus metrics (`GET /metrics`, text exposition format 0.0.4):
//! calls by status (read from the store at scrape time, so every node
//! reports the same truth), per-turn latency histograms and provider errors
//! (counted in this process).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use callingbox_engine::events::TurnMetrics;
use sqlx::Row;

use crate::store::{Store, StoreError};

/// Upper bounds of the latency buckets, milliseconds.
const BUCKETS_MS: [u64; 12] = [
    50, 100, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 10_000,
];

/// A latency histogram with fixed buckets (lock-free).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_MS.len()],
    count: AtomicU64,
    sum_ms: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe_ms(&self, ms: u64) {
        for (bound, bucket) in BUCKETS_MS.iter().zip(&self.buckets) {
            if ms <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, label: &str) {
        for (bound, bucket) in BUCKETS_MS.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{stage=\"{label}\",le=\"{}\"}} {}",
                *bound as f64 / 1000.0,
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{stage=\"{label}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "{name}_sum{{stage=\"{label}\"}} {}",
            self.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0
        );
        let _ = writeln!(out, "{name}_count{{stage=\"{label}\"}} {count}");
    }
}

/// The process's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Last user voice to first agent audio.
    pub voice_to_voice: Histogram,
    /// End of speech to the turn being committed.
    pub end_of_utterance: Histogram,
    /// LLM time to first token.
    pub llm_ttft: Histogram,
    /// TTS time to first byte.
    pub tts_ttfb: Histogram,
    /// Calls that failed on a provider.
    pub provider_errors: AtomicU64,
    /// The last [`RECENT_TURNS`] turns' figures, newest last (for the demo's
    /// and the benchmarks' exact percentiles; a lock per turn, not per frame).
    recent: std::sync::Mutex<std::collections::VecDeque<TurnMetrics>>,
}

/// How many turns [`Metrics::recent_turns`] keeps.
pub const RECENT_TURNS: usize = 1_000;

impl Metrics {
    /// Records one turn's latencies.
    pub fn observe_turn(&self, turn: &TurnMetrics) {
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if let Some(d) = turn.voice_to_voice {
            self.voice_to_voice.observe_ms(ms(d));
        }
        if let Some(d) = turn.end_of_utterance_delay {
            self.end_of_utterance.observe_ms(ms(d));
        }
        if let Some(d) = turn.llm_ttft {
            self.llm_ttft.observe_ms(ms(d));
        }
        if let Some(d) = turn.tts_ttfb {
            self.tts_ttfb.observe_ms(ms(d));
        }
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if recent.len() == RECENT_TURNS {
            recent.pop_front();
        }
        recent.push_back(*turn);
    }

    /// The figures of the last turns this process ran, oldest first.
    pub fn recent_turns(&self) -> Vec<TurnMetrics> {
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }

    /// The exposition text.
    pub async fn render(&self, store: &Store) -> Result<String, StoreError> {
        let mut out = String::new();
        out.push_str("# HELP callingbox_calls Calls by status (all organizations).\n# TYPE callingbox_calls gauge\n");
        let rows =
            sqlx::query("SELECT status, COUNT(*) AS n FROM calls GROUP BY status ORDER BY status")
                .fetch_all(store.pool())
                .await?;
        for row in rows {
            let status: String = row.try_get("status")?;
            let n: i64 = row.try_get("n")?;
            let _ = writeln!(out, "callingbox_calls{{status=\"{status}\"}} {n}");
        }
        out.push_str("# HELP callingbox_webhook_deliveries Webhook deliveries by status (pending, delivered, exhausted).\n# TYPE callingbox_webhook_deliveries gauge\n");
        let rows = sqlx::query(
            "SELECT status, COUNT(*) AS n FROM webhook_deliveries GROUP BY status ORDER BY status",
        )
        .fetch_all(store.pool())
        .await?;
        for row in rows {
            let status: String = row.try_get("status")?;
            let n: i64 = row.try_get("n")?;
            let _ = writeln!(
                out,
                "callingbox_webhook_deliveries{{status=\"{status}\"}} {n}"
            );
        }
        // Every attempt is a row (the deliveries API lists them), so the
        // counter survives restarts and counts every node's attempts.
        out.push_str("# HELP callingbox_webhook_attempts_total Webhook delivery attempts by outcome.\n# TYPE callingbox_webhook_attempts_total counter\n");
        let row =
            sqlx::query("SELECT COUNT(*) AS total, COUNT(error) AS failed FROM webhook_attempts")
                .fetch_one(store.pool())
                .await?;
        let total: i64 = row.try_get("total")?;
        let failed: i64 = row.try_get("failed")?;
        let _ = writeln!(
            out,
            "callingbox_webhook_attempts_total{{outcome=\"succeeded\"}} {}\ncallingbox_webhook_attempts_total{{outcome=\"failed\"}} {failed}",
            total - failed
        );
        out.push_str("# HELP callingbox_turn_latency_seconds Per-turn latency by stage.\n# TYPE callingbox_turn_latency_seconds histogram\n");
        self.voice_to_voice.render(
            &mut out,
            "callingbox_turn_latency_seconds",
            "voice_to_voice",
        );
        self.end_of_utterance.render(
            &mut out,
            "callingbox_turn_latency_seconds",
            "end_of_utterance",
        );
        self.llm_ttft
            .render(&mut out, "callingbox_turn_latency_seconds", "llm_ttft");
        self.tts_ttfb
            .render(&mut out, "callingbox_turn_latency_seconds", "tts_ttfb");
        out.push_str("# HELP callingbox_provider_errors_total Calls ended by a speech provider failure.\n# TYPE callingbox_provider_errors_total counter\n");
        let _ = writeln!(
            out,
            "callingbox_provider_errors_total {}",
            self.provider_errors.load(Ordering::Relaxed)
        );
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let h = Histogram::default();
        h.observe_ms(80);
        h.observe_ms(700);
        let mut out = String::new();
        h.render(&mut out, "m", "s");
        assert!(out.contains("m_bucket{stage=\"s\",le=\"0.05\"} 0"), "{out}");
        assert!(out.contains("m_bucket{stage=\"s\",le=\"0.1\"} 1"), "{out}");
        assert!(out.contains("m_bucket{stage=\"s\",le=\"0.75\"} 2"), "{out}");
        assert!(out.contains("m_count{stage=\"s\"} 2"), "{out}");
    }
}
