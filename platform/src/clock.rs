//! Time as an input: everything that stamps or schedules takes a [`Clock`],
//! so tests (retry schedules, holds, expiry) run on virtual time.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use serde::{Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A point in time: microseconds since the Unix epoch (UTC), as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Whole seconds since the epoch (the webhook envelope's `created`).
    pub fn unix_seconds(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }

    /// `self` plus `micros` microseconds (saturating).
    pub fn plus_micros(self, micros: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(micros))
    }

    /// `self` plus whole seconds (saturating).
    pub fn plus_seconds(self, seconds: i64) -> Timestamp {
        self.plus_micros(seconds.saturating_mul(1_000_000))
    }

    /// The first instant of this timestamp's month (UTC).
    pub fn month_start(self) -> Timestamp {
        let at = OffsetDateTime::from_unix_timestamp(self.unix_seconds())
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let start = at
            .replace_day(1)
            .map(|d| d.replace_time(time::Time::MIDNIGHT))
            .unwrap_or(at);
        Timestamp(start.unix_timestamp() * 1_000_000)
    }

    /// Parses an RFC 3339 date-time (as the API accepts it).
    pub fn parse_rfc3339(text: &str) -> Option<Timestamp> {
        let at = OffsetDateTime::parse(text, &Rfc3339).ok()?;
        i64::try_from(at.unix_timestamp_nanos() / 1_000)
            .ok()
            .map(Timestamp)
    }

    /// RFC 3339 in UTC with millisecond precision, e.g. `2026-04-15T14:00:00.000Z`.
    pub fn to_rfc3339(self) -> String {
        let nanos = i128::from(self.0) * 1_000;
        let at = OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
            .replace_nanosecond(0)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let millis = self.0.rem_euclid(1_000_000) / 1_000;
        let base = at.format(&Rfc3339).unwrap_or_default();
        // `base` ends in `Z` (UTC, no fraction): insert the milliseconds.
        match base.strip_suffix('Z') {
            Some(head) => format!("{head}.{millis:03}Z"),
            None => base,
        }
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

/// Where "now" comes from.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        Timestamp(i64::try_from(nanos / 1_000).unwrap_or(i64::MAX))
    }
}

/// The system clock, made strictly increasing: two readings on this node
/// never tie, so newest-first lists keep creation order.
#[derive(Debug, Default)]
pub struct MonotonicClock {
    last: AtomicI64,
}

impl Clock for MonotonicClock {
    fn now(&self) -> Timestamp {
        let wall = SystemClock.now().0;
        let mut last = self.last.load(Ordering::SeqCst);
        loop {
            let next = wall.max(last + 1);
            match self
                .last
                .compare_exchange(last, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return Timestamp(next),
                Err(seen) => last = seen,
            }
        }
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock reading `start`.
    pub fn new(start: Timestamp) -> Self {
        ManualClock(Arc::new(AtomicI64::new(start.0)))
    }

    /// Moves the clock forward by `micros`.
    pub fn advance_micros(&self, micros: i64) {
        self.0.fetch_add(micros, Ordering::SeqCst);
    }

    /// Sets the clock.
    pub fn set(&self, at: Timestamp) {
        self.0.store(at.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_format_as_rfc3339_utc_with_milliseconds_and_parse_back() {
        let at = Timestamp(1_776_261_600_123_456); // 2026-04-15T14:00:00.123456Z
        assert_eq!(at.to_rfc3339(), "2026-04-15T14:00:00.123Z");
        assert_eq!(at.unix_seconds(), 1_776_261_600);
        let back = Timestamp::parse_rfc3339("2026-04-15T14:00:00.123Z").expect("parses");
        assert_eq!(back, Timestamp(1_776_261_600_123_000));
        assert_eq!(Timestamp(0).to_rfc3339(), "1970-01-01T00:00:00.000Z");
        assert!(Timestamp::parse_rfc3339("yesterday").is_none());
        assert_eq!(at.month_start().to_rfc3339(), "2026-04-01T00:00:00.000Z");
    }

    #[test]
    fn the_monotonic_clock_never_repeats() {
        let clock = MonotonicClock::default();
        let readings: Vec<_> = (0..1000).map(|_| clock.now()).collect();
        assert!(readings.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn the_manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(Timestamp(5));
        assert_eq!(clock.now(), Timestamp(5));
        clock.advance_micros(10);
        assert_eq!(clock.now(), Timestamp(15));
    }
}
