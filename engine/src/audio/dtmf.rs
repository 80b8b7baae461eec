//! In-band DTMF detection (the fallback for calls that negotiated no RFC
//! 4733 telephone-event): Goertzel filters on the eight DTMF frequencies,
//! with the checks ITU-T Q.24 receivers make.
//!
//! The decoded audio is cut into blocks of 12.75 ms (102 samples at 8 kHz,
//! scaled for other rates). A block holds a key when
//! - one low-group (row) and one high-group (column) tone stand out: each is
//!   at least [`DtmfDetectorConfig::min_tone_power`] and 8 dB above the other
//!   tones of its group;
//! - the twist is in range: the row tone at most 8 dB above the column tone
//!   (normal twist), the column at most 4 dB above the row (reverse twist);
//! - the two tones hold most of the block's energy (speech and music, whose
//!   energy spreads over many frequencies, fail this: talk-off rejection).
//!
//! Blocks are evaluated every half block (two filter banks, half a block
//! apart). A key is reported once, when four windows in a row hold it at a
//! steady power (within 2 dB): tones of 40 ms, the shortest Q.24 asks to
//! accept, always do; tones shorter than about 26 ms cannot (the windows
//! that only partly cover a tone see it weaker), so blips and chance matches
//! in speech are ignored. The key must then be absent for three windows in a
//! row (the inter-digit gap) before the same key can be reported again.
//!
//! Sans-IO and allocation-free: [`DtmfDetector::push`] takes any number of
//! samples and keeps eight filter states and a few counters.

use callingbox_codecs::SampleRate;

const ROWS_HZ: [f32; 4] = [697.0, 770.0, 852.0, 941.0];
const COLUMNS_HZ: [f32; 4] = [1209.0, 1336.0, 1477.0, 1633.0];
const KEYS: [[char; 4]; 4] = [
    ['1', '2', '3', 'A'],
    ['4', '5', '6', 'B'],
    ['7', '8', '9', 'C'],
    ['*', '0', '#', 'D'],
];
/// 102 samples at 8 kHz: bins narrow enough to tell the rows apart (73 Hz
/// apart), blocks short enough that a 40 ms tone spans two of them.
const BLOCK_AT_8K: usize = 102;

/// The detector's thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DtmfDetectorConfig {
    /// The least mean power of one tone, as a fraction of full scale squared
    /// (1e-4 is a sine of amplitude about -37 dBFS... -34 dBFS peak).
    pub min_tone_power: f32,
    /// How much stronger the row tone may be than the column tone (dB).
    pub normal_twist_db: f32,
    /// How much stronger the column tone may be than the row tone (dB).
    pub reverse_twist_db: f32,
    /// How far each tone must stand above the others of its group (dB).
    pub group_margin_db: f32,
    /// The share of the block's energy the two tones must hold.
    pub min_tone_share: f32,
}

impl Default for DtmfDetectorConfig {
    fn default() -> Self {
        DtmfDetectorConfig {
            min_tone_power: 1e-5,
            normal_twist_db: 8.0,
            reverse_twist_db: 4.0,
            group_margin_db: 8.0,
            min_tone_share: 0.6,
        }
    }
}

/// Windows in a row that must hold the same key at a steady power (within
/// [`STEADY_DB`]) for it to be accepted: 4 windows 6.4 ms apart span 31.9 ms,
/// which a tone shorter than about 26 ms cannot fill at a steady level (a
/// window only partly over a tone sees it weaker).
const ACCEPT_WINDOWS: usize = 4;
/// Windows in a row without the held key that release it (the inter-digit gap).
const RELEASE_WINDOWS: u32 = 3;
const STEADY_DB: f32 = 2.0;

/// One Goertzel filter bank over one window.
#[derive(Debug, Clone, Copy)]
struct Bank {
    /// States (s[n-1], s[n-2]) of the rows, then the columns.
    states: [(f32, f32); 8],
    energy: f32,
    filled: usize,
}

const EMPTY_BANK: Bank = Bank {
    states: [(0.0, 0.0); 8],
    energy: 0.0,
    filled: 0,
};

/// Finds DTMF keys in one call's decoded audio.
#[derive(Debug, Clone)]
pub struct DtmfDetector {
    block_len: usize,
    /// Goertzel coefficients (2 cos w) of the rows, then the columns.
    coefficients: [f32; 8],
    /// Two banks half a window apart: a window ends every half window.
    banks: [Bank; 2],
    min_tone_power: f32,
    normal_twist: f32,
    reverse_twist: f32,
    group_margin: f32,
    min_tone_share: f32,
    steady: f32,
    /// The last windows' keys and tone powers, newest at `recent_at`.
    recent: [(Option<char>, f32); ACCEPT_WINDOWS],
    recent_at: usize,
    /// The key reported and not yet released by a gap.
    holding: Option<char>,
    /// Windows in a row without the held key.
    gap_windows: u32,
}

impl DtmfDetector {
    /// A detector for audio at `rate`.
    pub fn new(rate: SampleRate, config: DtmfDetectorConfig) -> Self {
        let hz = rate.hz() as f32;
        let block_len = BLOCK_AT_8K * rate.hz() as usize / 8_000;
        let mut coefficients = [0.0; 8];
        for (coefficient, tone) in coefficients
            .iter_mut()
            .zip(ROWS_HZ.iter().chain(COLUMNS_HZ.iter()))
        {
            *coefficient = 2.0 * (2.0 * std::f32::consts::PI * tone / hz).cos();
        }
        let db = |db: f32| 10f32.powf(db / 10.0);
        let mut second = EMPTY_BANK;
        // The second bank starts half a window late.
        second.filled = block_len - block_len / 2;
        DtmfDetector {
            block_len,
            coefficients,
            banks: [EMPTY_BANK, second],
            min_tone_power: config.min_tone_power,
            normal_twist: db(config.normal_twist_db),
            reverse_twist: db(config.reverse_twist_db),
            group_margin: db(config.group_margin_db),
            min_tone_share: config.min_tone_share,
            steady: db(STEADY_DB),
            recent: [(None, 0.0); ACCEPT_WINDOWS],
            recent_at: 0,
            holding: None,
            gap_windows: 0,
        }
    }

    /// Feeds the next `samples`; returns the key that started in them, if
    /// one did (at most one can in 20 ms: a key takes 32 ms to accept).
    pub fn push(&mut self, samples: &[i16]) -> Option<char> {
        let mut started = None;
        for &sample in samples {
            let x = f32::from(sample) / 32_768.0;
            for index in 0..2 {
                let bank = &mut self.banks[index];
                bank.energy += x * x;
                for (state, coefficient) in bank.states.iter_mut().zip(self.coefficients) {
                    let s = x + coefficient * state.0 - state.1;
                    *state = (s, state.0);
                }
                bank.filled += 1;
                if bank.filled == self.block_len {
                    let window = self.window_key(&self.banks[index]);
                    if let Some(key) = self.advance(window) {
                        started = Some(key);
                    }
                    self.banks[index] = EMPTY_BANK;
                }
            }
        }
        started
    }

    /// The key a finished window holds, if it passes every check, and the
    /// power of its two tones.
    fn window_key(&self, bank: &Bank) -> (Option<char>, f32) {
        let n = self.block_len as f32;
        // |X(f)|^2 scaled to the mean power of the tone (A^2/2 for a sine of
        // amplitude A), comparable with the window's mean power.
        let mut power = [0.0f32; 8];
        for (power, (state, coefficient)) in power
            .iter_mut()
            .zip(bank.states.iter().zip(self.coefficients))
        {
            let magnitude = state.0 * state.0 + state.1 * state.1 - coefficient * state.0 * state.1;
            *power = 2.0 * magnitude.max(0.0) / (n * n);
        }
        let (rows, columns) = power.split_at(4);
        let (row, row_power) = strongest(rows);
        let (column, column_power) = strongest(columns);
        let tones = row_power + column_power;
        if row_power < self.min_tone_power || column_power < self.min_tone_power {
            return (None, tones);
        }
        if row_power > column_power * self.normal_twist
            || column_power > row_power * self.reverse_twist
        {
            return (None, tones);
        }
        let stands_out = |group: &[f32], best: usize, best_power: f32| {
            group
                .iter()
                .enumerate()
                .all(|(i, p)| i == best || p * self.group_margin <= best_power)
        };
        if !stands_out(rows, row, row_power) || !stands_out(columns, column, column_power) {
            return (None, tones);
        }
        if tones < self.min_tone_share * bank.energy / n {
            return (None, tones);
        }
        (Some(KEYS[row][column]), tones)
    }

    /// Debounces window decisions; returns a key when it is accepted.
    fn advance(&mut self, window: (Option<char>, f32)) -> Option<char> {
        self.recent_at = (self.recent_at + 1) % ACCEPT_WINDOWS;
        self.recent[self.recent_at] = window;
        if let Some(held) = self.holding {
            if window.0 == Some(held) {
                self.gap_windows = 0;
                return None;
            }
            self.gap_windows += 1;
            if self.gap_windows < RELEASE_WINDOWS {
                return None;
            }
            self.holding = None;
        }
        let key = window.0?;
        let same = self.recent.iter().all(|(k, _)| *k == Some(key));
        let (low, high) = self
            .recent
            .iter()
            .fold((f32::MAX, 0.0f32), |(low, high), (_, p)| {
                (low.min(*p), high.max(*p))
            });
        if same && high <= low * self.steady {
            self.holding = Some(key);
            self.gap_windows = 0;
            return Some(key);
        }
        None
    }
}

fn strongest(powers: &[f32]) -> (usize, f32) {
    powers.iter().copied().enumerate().fold(
        (0, f32::MIN),
        |best, (i, p)| if p > best.1 { (i, p) } else { best },
    )
}

/// The row and column frequencies of `key` (for generating test tones).
pub fn key_frequencies(key: char) -> Option<(f32, f32)> {
    KEYS.iter().enumerate().find_map(|(row, keys)| {
        keys.iter()
            .position(|k| *k == key)
            .map(|column| (ROWS_HZ[row], COLUMNS_HZ[column]))
    })
}

/// Appends `duration_ms` of the tone pair of `key` at `rate` to `out`, each
/// tone of peak `amplitude` (full scale 1.0) times `row_gain` / `column_gain`
/// (for twist). Unknown keys append silence.
pub fn synthesize_key(
    out: &mut Vec<i16>,
    rate: SampleRate,
    key: char,
    duration_ms: u32,
    amplitude: f32,
    (row_gain, column_gain): (f32, f32),
) {
    let hz = rate.hz() as f32;
    let samples = (rate.hz() * duration_ms / 1_000) as usize;
    let (row, column) = key_frequencies(key).unwrap_or((0.0, 0.0));
    let gain = if key_frequencies(key).is_some() {
        1.0
    } else {
        0.0
    };
    let two_pi = 2.0 * std::f32::consts::PI;
    out.extend((0..samples).map(|i| {
        let t = i as f32 / hz;
        let value = gain
            * amplitude
            * (row_gain * (two_pi * row * t).sin() + column_gain * (two_pi * column * t).sin());
        (value.clamp(-1.0, 1.0) * 32_767.0) as i16
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_KEYS: &str = "123A456B789C*0#D";

    fn detect(rate: SampleRate, samples: &[i16]) -> String {
        let mut detector = DtmfDetector::new(rate, DtmfDetectorConfig::default());
        // In 20 ms frames, as the media tick hands them over.
        let frame = rate.hz() as usize / 50;
        samples
            .chunks(frame)
            .filter_map(|chunk| detector.push(chunk))
            .collect()
    }

    fn keys(rate: SampleRate, keys: &str, on_ms: u32, off_ms: u32, gains: (f32, f32)) -> Vec<i16> {
        let mut out = Vec::new();
        synthesize_key(&mut out, rate, ' ', 100, 0.0, (1.0, 1.0));
        for key in keys.chars() {
            synthesize_key(&mut out, rate, key, on_ms, 0.25, gains);
            synthesize_key(&mut out, rate, ' ', off_ms, 0.0, (1.0, 1.0));
        }
        out
    }

    #[test]
    fn every_key_is_detected_once_at_8_and_16_khz() {
        for rate in [SampleRate::Hz8000, SampleRate::Hz16000] {
            let audio = keys(rate, ALL_KEYS, 100, 100, (1.0, 1.0));
            assert_eq!(detect(rate, &audio), ALL_KEYS, "{rate:?}");
        }
    }

    #[test]
    fn tones_of_40_ms_with_40_ms_gaps_are_detected_and_20_ms_blips_are_not() {
        let rate = SampleRate::Hz8000;
        assert_eq!(
            detect(rate, &keys(rate, "5555", 40, 40, (1.0, 1.0))),
            "5555"
        );
        for offset_ms in 0..13 {
            let mut audio = vec![0i16; offset_ms * 8];
            audio.extend(keys(rate, "159", 20, 100, (1.0, 1.0)));
            assert_eq!(detect(rate, &audio), "", "20 ms blips {offset_ms} ms late");
            let mut audio = vec![0i16; offset_ms * 8];
            audio.extend(keys(rate, "159", 40, 40, (1.0, 1.0)));
            assert_eq!(
                detect(rate, &audio),
                "159",
                "40 ms keys {offset_ms} ms late"
            );
        }
    }

    #[test]
    fn a_long_press_is_one_key() {
        let rate = SampleRate::Hz16000;
        assert_eq!(detect(rate, &keys(rate, "7", 2_000, 50, (1.0, 1.0))), "7");
    }

    #[test]
    fn twist_within_limits_passes_and_beyond_them_fails() {
        let rate = SampleRate::Hz8000;
        let db = |db: f32| 10f32.powf(db / 20.0);
        // Row 6 dB above column (normal twist) and column 3 dB above row.
        assert_eq!(
            detect(rate, &keys(rate, "8", 100, 50, (1.0, db(-6.0)))),
            "8"
        );
        assert_eq!(
            detect(rate, &keys(rate, "8", 100, 50, (db(-3.0), 1.0))),
            "8"
        );
        // 12 dB either way is not a key.
        assert_eq!(
            detect(rate, &keys(rate, "8", 100, 50, (1.0, db(-12.0)))),
            ""
        );
        assert_eq!(
            detect(rate, &keys(rate, "8", 100, 50, (db(-12.0), 1.0))),
            ""
        );
    }

    #[test]
    fn a_single_tone_or_quiet_keys_are_not_keys() {
        let rate = SampleRate::Hz8000;
        // A dial-tone-like single frequency: the column is missing.
        assert_eq!(detect(rate, &keys(rate, "1", 200, 50, (1.0, 0.0))), "");
        // Far below the power threshold.
        let mut quiet = Vec::new();
        synthesize_key(&mut quiet, rate, '1', 200, 0.001, (1.0, 1.0));
        assert_eq!(detect(rate, &quiet), "");
    }

    #[test]
    fn keys_survive_moderate_noise_and_drown_in_loud_noise() {
        let rate = SampleRate::Hz8000;
        let clean = keys(rate, "0#", 100, 100, (1.0, 1.0));
        // A deterministic pseudo-random noise (xorshift), white.
        let mut seed = 0x2545_f491_u32;
        let mut noise = |amplitude: f32| {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            ((seed as f32 / u32::MAX as f32) * 2.0 - 1.0) * amplitude
        };
        let noisy = |samples: &[i16], amplitude: f32, noise: &mut dyn FnMut(f32) -> f32| {
            samples
                .iter()
                .map(|&s| {
                    (f32::from(s) + noise(amplitude) * 32_767.0).clamp(-32_768.0, 32_767.0) as i16
                })
                .collect::<Vec<_>>()
        };
        // Noise 20 dB below the tones: still the keys.
        assert_eq!(detect(rate, &noisy(&clean, 0.035, &mut noise)), "0#");
        // Noise as loud as the tones: no false keys, whatever else.
        let drowned = detect(rate, &noisy(&clean, 0.6, &mut noise));
        assert!(drowned.chars().all(|k| "0#".contains(k)), "{drowned}");
        // Noise alone gives no keys.
        let silence = vec![0i16; 8_000];
        assert_eq!(detect(rate, &noisy(&silence, 0.3, &mut noise)), "");
    }
}
