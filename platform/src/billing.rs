//! Prices and the arithmetic of holds and charges, in integer milli-cents
//! (1/1000 of a US cent). The ledger ([`crate::store::ledger`]) applies them.

/// What calls and numbers cost, and the limits holds are computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pricing {
    /// Per connected minute: $0.05 = 5,000 milli-cents.
    pub per_minute_milli_cents: i64,
    /// The longest a call may last; the hold covers all of it.
    pub max_call_seconds: i64,
    /// Credit every new organization starts with: $5.
    pub starting_credit_milli_cents: i64,
}

impl Default for Pricing {
    fn default() -> Self {
        Pricing {
            per_minute_milli_cents: 5_000,
            max_call_seconds: 3_600,
            starting_credit_milli_cents: 500_000,
        }
    }
}

impl Pricing {
    /// The hold a call takes before dialing: the maximum duration at the
    /// per-minute rate ($3.00 by default).
    pub fn call_hold(&self) -> i64 {
        self.charge_for(self.max_call_seconds)
    }

    /// The longest a call may last, as a duration.
    pub fn max_call_duration(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::try_from(self.max_call_seconds).unwrap_or(0))
    }

    /// The charge for `connected_seconds`: billed per second, rounded up to
    /// the next whole milli-cent. No minimum; zero seconds cost nothing.
    pub fn charge_for(&self, connected_seconds: i64) -> i64 {
        let seconds = connected_seconds.max(0);
        (seconds * self.per_minute_milli_cents + 59) / 60
    }
}

/// Milli-cents as dollars, e.g. `$3.00`, for messages.
pub fn dollars(milli_cents: i64) -> String {
    let cents = milli_cents.div_euclid(1_000);
    let sign = if cents < 0 { "-" } else { "" };
    let cents = cents.abs();
    format!("{sign}${}.{:02}", cents / 100, cents % 100)
}

/// The message a dispatch gets when the balance is below the hold.
pub fn calls_paused_message(available: i64, hold: i64) -> String {
    format!(
        "Calls paused. Your balance is {} but each call requires a {} hold (we release it back \
         if no one answers). Add {} or more in credits to keep calling.",
        dollars(available),
        dollars(hold),
        dollars(hold - available)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hold_is_an_hour_at_five_cents_a_minute() {
        let pricing = Pricing::default();
        assert_eq!(pricing.call_hold(), 300_000);
        assert_eq!(dollars(pricing.call_hold()), "$3.00");
    }

    #[test]
    fn charges_are_per_second_rounded_up() {
        let pricing = Pricing::default();
        assert_eq!(pricing.charge_for(0), 0);
        assert_eq!(pricing.charge_for(60), 5_000);
        assert_eq!(pricing.charge_for(1), 84); // 83.33 rounded up
        assert_eq!(pricing.charge_for(-5), 0);
    }

    #[test]
    fn the_paused_message_names_the_shortfall() {
        let msg = calls_paused_message(120_000, 300_000);
        assert!(msg.contains("balance is $1.20"), "{msg}");
        assert!(msg.contains("$3.00 hold"), "{msg}");
        assert!(msg.contains("Add $1.80"), "{msg}");
    }
}
