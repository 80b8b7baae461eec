//! The retry schedule: attempt 1 at once, then +1 min, +5 min, +30 min,
//! +2 h, +5 h, +10 h, +24 h after the previous failure, each delay with
//! +/-20 % jitter (so retries from many deliveries failed together spread
//! out); after the eighth failure the delivery is exhausted.

/// Automatic attempts before a delivery is exhausted.
pub const MAX_ATTEMPTS: i64 = 8;

/// Exhausted deliveries in a row that disable an endpoint.
pub const DISABLE_AFTER_EXHAUSTED: i64 = 10;

/// Delay before attempt `n + 1` after attempt `n` failed (index `n - 1`),
/// seconds.
pub const RETRY_DELAYS_SECONDS: [i64; 7] = [60, 300, 1_800, 7_200, 18_000, 36_000, 86_400];

/// Jitter: each delay is multiplied by a factor in `1 +/- JITTER`.
pub const JITTER: f64 = 0.2;

/// The nominal delay (seconds) after `failed_attempts` automatic attempts
/// failed, or `None` when the delivery is exhausted.
pub fn nominal_delay_seconds(failed_attempts: i64) -> Option<i64> {
    if !(1..MAX_ATTEMPTS).contains(&failed_attempts) {
        return None;
    }
    usize::try_from(failed_attempts - 1)
        .ok()
        .and_then(|i| RETRY_DELAYS_SECONDS.get(i).copied())
}

/// The jittered delay (microseconds) after `failed_attempts` failed;
/// `unit` in `[0, 1]` picks where in the jitter band it lands (a random
/// draw in production, fixed in tests).
pub fn delay_micros(failed_attempts: i64, unit: f64) -> Option<i64> {
    let nominal = nominal_delay_seconds(failed_attempts)? as f64 * 1e6;
    let factor = 1.0 - JITTER + 2.0 * JITTER * unit.clamp(0.0, 1.0);
    Some((nominal * factor).round() as i64)
}

/// The jittered delay with a random draw.
pub fn random_delay_micros(failed_attempts: i64) -> Option<i64> {
    delay_micros(failed_attempts, rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_the_reference_one_and_ends_after_eight_attempts() {
        let delays: Vec<_> = (1..=8).map(nominal_delay_seconds).collect();
        assert_eq!(
            delays,
            vec![
                Some(60),
                Some(300),
                Some(1_800),
                Some(7_200),
                Some(18_000),
                Some(36_000),
                Some(86_400),
                None
            ]
        );
        assert_eq!(nominal_delay_seconds(0), None);
        // Roughly two days in all.
        let total: i64 = RETRY_DELAYS_SECONDS.iter().sum();
        assert!((41 * 3600..42 * 3600).contains(&total), "{total}");
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        assert_eq!(delay_micros(1, 0.0), Some(48_000_000));
        assert_eq!(delay_micros(1, 1.0), Some(72_000_000));
        assert_eq!(delay_micros(1, 0.5), Some(60_000_000));
        for _ in 0..1000 {
            let d = random_delay_micros(2).expect("retries remain");
            assert!((240_000_000..=360_000_000).contains(&d), "{d}");
        }
    }
}
