//! Keypad input (DTMF) as user turns: digits the caller presses are
//! collected into one entry, as an IVR would, and handed to the model as a
//! user message such as `[pressed 1234#]`.
//!
//! An entry ends on the terminator key (`#` by default, included in the
//! entry so the model sees it) or when no key came for the inter-digit
//! timeout (2 s by default, as Pipecat's DTMF aggregator and Vapi's keypad
//! input plan do). Sans-IO: times are inputs, so it is tested on virtual time.

use std::time::Duration;

use crate::clock::Instant;

/// How keypad entries are delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeypadConfig {
    /// An entry ends when no key came for this long after the last one.
    pub inter_digit_timeout: Duration,
    /// This key ends an entry at once (`None`: only the timeout does).
    pub terminator: Option<char>,
    /// An entry this long ends at once (a caller leaning on the keypad
    /// cannot grow a message without bound).
    pub max_digits: usize,
}

impl Default for KeypadConfig {
    fn default() -> Self {
        KeypadConfig {
            inter_digit_timeout: Duration::from_secs(2),
            terminator: Some('#'),
            max_digits: 32,
        }
    }
}

/// A finished keypad entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeypadEntry {
    /// The keys in the order pressed (`0`-`9`, `*`, `#`, `A`-`D`).
    pub digits: String,
    /// When the first key was pressed.
    pub first_at: Instant,
    /// When the last key was pressed.
    pub last_at: Instant,
}

impl KeypadEntry {
    /// The entry as the model and the transcript see it: `[pressed 12#]`.
    pub fn as_user_text(&self) -> String {
        format!("[pressed {}]", self.digits)
    }
}

/// Whether `key` is a DTMF key (RFC 4733 events 0-15).
pub fn is_dtmf_key(key: char) -> bool {
    matches!(key, '0'..='9' | '*' | '#' | 'A'..='D')
}

/// Collects keys into entries.
#[derive(Debug, Clone)]
pub struct KeypadCollector {
    config: KeypadConfig,
    digits: String,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
}

impl KeypadCollector {
    /// An empty collector.
    pub fn new(config: KeypadConfig) -> Self {
        KeypadCollector {
            config,
            digits: String::with_capacity(config.max_digits),
            first_at: None,
            last_at: None,
        }
    }

    /// `key` was pressed at `at`. Returns the entry it ends, if it ends one
    /// (the terminator, the maximum length). A key that is not a DTMF key is
    /// ignored. A pending entry whose timeout already passed is returned
    /// first, without this key (which then starts a new entry).
    pub fn press(&mut self, key: char, at: Instant) -> Option<KeypadEntry> {
        if !is_dtmf_key(key) {
            return None;
        }
        if let Some(expired) = self.poll(at) {
            self.push(key, at);
            return Some(expired);
        }
        self.push(key, at);
        let terminated = self.config.terminator == Some(key);
        if terminated || self.digits.len() >= self.config.max_digits {
            return self.take();
        }
        None
    }

    /// The entry that timed out by `now`, if any.
    pub fn poll(&mut self, now: Instant) -> Option<KeypadEntry> {
        match self.deadline() {
            Some(deadline) if now >= deadline => self.take(),
            _ => None,
        }
    }

    /// When the pending entry times out (`None` when nothing is pending).
    pub fn deadline(&self) -> Option<Instant> {
        self.last_at.map(|at| at + self.config.inter_digit_timeout)
    }

    fn push(&mut self, key: char, at: Instant) {
        self.digits.push(key);
        self.first_at.get_or_insert(at);
        self.last_at = Some(at);
    }

    fn take(&mut self) -> Option<KeypadEntry> {
        let (first_at, last_at) = (self.first_at.take()?, self.last_at.take()?);
        Some(KeypadEntry {
            digits: std::mem::take(&mut self.digits),
            first_at,
            last_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn the_terminator_ends_an_entry_at_once_and_is_kept() {
        let mut keypad = KeypadCollector::new(KeypadConfig::default());
        assert_eq!(keypad.press('1', ms(0)), None);
        assert_eq!(keypad.press('2', ms(300)), None);
        let entry = keypad.press('#', ms(600)).expect("# ends the entry");
        assert_eq!(entry.digits, "12#");
        assert_eq!((entry.first_at, entry.last_at), (ms(0), ms(600)));
        assert_eq!(entry.as_user_text(), "[pressed 12#]");
        assert_eq!(keypad.deadline(), None);
    }

    #[test]
    fn silence_after_the_last_key_ends_the_entry() {
        let mut keypad = KeypadCollector::new(KeypadConfig::default());
        keypad.press('4', ms(1_000));
        keypad.press('2', ms(2_500));
        assert_eq!(keypad.deadline(), Some(ms(4_500)));
        assert_eq!(keypad.poll(ms(4_499)), None, "not yet");
        let entry = keypad.poll(ms(4_500)).expect("timed out");
        assert_eq!(entry.digits, "42");
        assert_eq!(keypad.poll(ms(10_000)), None, "reported once");
    }

    #[test]
    fn a_key_after_the_timeout_starts_a_new_entry() {
        let mut keypad = KeypadCollector::new(KeypadConfig::default());
        keypad.press('1', ms(0));
        let entry = keypad.press('2', ms(5_000)).expect("the old entry");
        assert_eq!(entry.digits, "1");
        assert_eq!(keypad.poll(ms(7_000)).expect("second").digits, "2");
    }

    #[test]
    fn bad_keys_are_ignored_and_entries_are_bounded() {
        let mut keypad = KeypadCollector::new(KeypadConfig {
            terminator: None,
            max_digits: 3,
            ..KeypadConfig::default()
        });
        assert_eq!(keypad.press('x', ms(0)), None);
        assert_eq!(keypad.deadline(), None);
        keypad.press('1', ms(0));
        keypad.press('#', ms(10));
        let entry = keypad.press('*', ms(20)).expect("full");
        assert_eq!(entry.digits, "1#*");
    }
}
