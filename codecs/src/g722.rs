//! ITU-T G.722 at 64 kbit/s: 16 kHz wideband audio as sub-band ADPCM.
//!
//! A quadrature mirror filter splits the 16 kHz signal into a low band
//! (0-4 kHz, 6 bits per sample) and a high band (4-8 kHz, 2 bits per
//! sample) at 8 kHz each; every byte carries one sample pair of each band,
//! so 20 ms of audio (320 samples) is 160 bytes. On RTP its clock is 8 kHz
//! even though the audio is 16 kHz (RFC 3551 section 4.5.2, a historical
//! error kept for compatibility): timestamps advance 160 per 20 ms.
//!
//! The arithmetic follows the fixed-point description of the
//! Recommendation (blocks 1L-6L and 1H-6H, the shared predictor of block 4)
//! on 16-bit linear input. `tests/g722_reference.rs` holds both directions
//! bit-exact against FFmpeg's G.722 encoder and decoder. Encoder and decoder
//! state is a few hundred bytes, allocated nowhere: both run on the per-frame
//! path.

use crate::CodecError;
use crate::frame::{MediaTime, PcmFrame, SampleRate};

/// Bytes of one 20 ms G.722 frame (320 samples at 16 kHz, 2 per byte).
pub const FRAME_BYTES_20MS: usize = 160;

/// Half of the 24-tap QMF (the even taps `h[2i]`; the filter is symmetric,
/// so the odd taps are these in reverse).
const QMF_HALF: [i32; 12] = [3, -11, 12, 32, -210, 951, 3876, -805, 362, -156, 53, -11];

/// Low-band quantizer decision levels (block 1L), for magnitudes 1..30.
const Q6: [i32; 32] = [
    0, 35, 72, 110, 150, 190, 233, 276, 323, 370, 422, 473, 530, 587, 650, 714, 786, 858, 940,
    1023, 1121, 1219, 1339, 1458, 1612, 1765, 1980, 2195, 2557, 2919, 0, 0,
];
/// Low-band 6-bit codes of a negative difference, by quantizer interval.
const ILN: [i32; 32] = [
    0, 63, 62, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11,
    10, 9, 8, 7, 6, 5, 4, 0,
];
/// Low-band 6-bit codes of a positive difference, by quantizer interval.
const ILP: [i32; 32] = [
    0, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48, 47, 46, 45, 44, 43, 42, 41, 40, 39,
    38, 37, 36, 35, 34, 33, 32, 0,
];
/// Low-band log scale factor increments (block 3L), by 4-bit magnitude.
const WL: [i32; 8] = [-60, -30, 58, 172, 334, 538, 1198, 3042];
/// The 4-bit low-band code to its magnitude index.
const RL42: [i32; 16] = [0, 7, 6, 5, 4, 3, 2, 1, 7, 6, 5, 4, 3, 2, 1, 0];
/// Inverse log table of the scale factor (blocks 3L and 3H).
const ILB: [i32; 32] = [
    2048, 2093, 2139, 2186, 2233, 2282, 2332, 2383, 2435, 2489, 2543, 2599, 2656, 2714, 2774, 2834,
    2896, 2960, 3025, 3091, 3158, 3228, 3298, 3371, 3444, 3520, 3597, 3676, 3756, 3838, 3922, 4008,
];
/// Low-band 4-bit inverse quantizer (the predictor's view of the low band).
const QM4: [i32; 16] = [
    0, -20456, -12896, -8968, -6288, -4240, -2584, -1200, 20456, 12896, 8968, 6288, 4240, 2584,
    1200, 0,
];
/// Low-band 6-bit inverse quantizer (the decoder's output at 64 kbit/s).
const QM6: [i32; 64] = [
    -136, -136, -136, -136, -24808, -21904, -19008, -16704, -14984, -13512, -12280, -11192, -10232,
    -9360, -8576, -7856, -7192, -6576, -6000, -5456, -4944, -4464, -4008, -3576, -3168, -2776,
    -2400, -2032, -1688, -1360, -1040, -728, 24808, 21904, 19008, 16704, 14984, 13512, 12280,
    11192, 10232, 9360, 8576, 7856, 7192, 6576, 6000, 5456, 4944, 4464, 4008, 3576, 3168, 2776,
    2400, 2032, 1688, 1360, 1040, 728, 432, 136, -432, -136,
];
/// High-band 2-bit inverse quantizer.
const QM2: [i32; 4] = [-7408, -1616, 7408, 1616];
/// High-band codes of a negative / positive difference, by interval (1 or 2).
const IHN: [i32; 3] = [0, 1, 0];
const IHP: [i32; 3] = [0, 3, 2];
/// High-band log scale factor increments, and the code to its magnitude.
const WH: [i32; 3] = [0, -214, 798];
const RH2: [i32; 4] = [2, 1, 2, 1];

/// Clamps to the 16-bit range the Recommendation's arithmetic saturates at.
fn sat(value: i32) -> i16 {
    value.clamp(i16::MIN as i32, i16::MAX as i32) as i16
}

/// The adaptive predictor and scale factor of one sub-band (block 4 state).
#[derive(Debug, Clone, Copy)]
struct Band {
    /// Signal estimate.
    s: i32,
    /// Pole (sp) and zero (sz) parts of the estimate.
    sp: i32,
    sz: i32,
    /// Reconstructed signal, delayed (r[0] newest).
    r: [i32; 3],
    /// Pole coefficients a1, a2 (index 0 unused), and their next values.
    a: [i32; 3],
    ap: [i32; 3],
    /// Partial reconstructed signal, delayed.
    p: [i32; 3],
    /// Quantized differences, delayed.
    d: [i32; 7],
    /// Zero coefficients b1..b6 (index 0 unused), and their next values.
    b: [i32; 7],
    bp: [i32; 7],
    /// Log scale factor and scale factor.
    nb: i32,
    det: i32,
}

impl Band {
    const fn new(det: i32) -> Self {
        Band {
            s: 0,
            sp: 0,
            sz: 0,
            r: [0; 3],
            a: [0; 3],
            ap: [0; 3],
            p: [0; 3],
            d: [0; 7],
            b: [0; 7],
            bp: [0; 7],
            nb: 0,
            det,
        }
    }

    /// Blocks 3L/3H: adapts the log scale factor by `increment`, bounded by
    /// `nb_max`, and derives the linear scale factor (`shift_base` is 8 for
    /// the low band, 10 for the high band).
    fn adapt_scale(&mut self, increment: i32, nb_max: i32, shift_base: i32) {
        self.nb = (((self.nb * 127) >> 7) + increment).clamp(0, nb_max);
        let mantissa = ILB[((self.nb >> 6) & 31) as usize];
        let shift = shift_base - (self.nb >> 11);
        let scale = if shift < 0 {
            mantissa << -shift
        } else {
            mantissa >> shift
        };
        self.det = scale << 2;
    }

    /// Block 4: reconstruction, pole and zero adaptation, and the next
    /// estimate, from the quantized difference `d`.
    fn predict(&mut self, d: i32) {
        self.d[0] = d;
        self.r[0] = i32::from(sat(self.s + d));
        self.p[0] = i32::from(sat(self.sz + d));

        // UPPOL2: the second pole coefficient.
        let sg0 = self.p[0] >> 15;
        let sg1 = self.p[1] >> 15;
        let sg2 = self.p[2] >> 15;
        let wd1 = i32::from(sat(self.a[1] << 2));
        let wd2 = if sg0 == sg1 { -wd1 } else { wd1 }.min(32767);
        let mut wd3 = (wd2 >> 7) + if sg0 == sg2 { 128 } else { -128 };
        wd3 += (self.a[2] * 32512) >> 15;
        self.ap[2] = wd3.clamp(-12288, 12288);

        // UPPOL1: the first pole coefficient, bounded by the second.
        let wd1 = if sg0 == sg1 { 192 } else { -192 };
        let wd2 = (self.a[1] * 32640) >> 15;
        let limit = i32::from(sat(15360 - self.ap[2]));
        self.ap[1] = i32::from(sat(wd1 + wd2)).clamp(-limit, limit);

        // UPZERO: the zero coefficients follow the signs of past differences.
        let step = if d == 0 { 0 } else { 128 };
        let sign = d >> 15;
        for i in 1..7 {
            let wd2 = if (self.d[i] >> 15) == sign {
                step
            } else {
                -step
            };
            let wd3 = (self.b[i] * 32640) >> 15;
            self.bp[i] = i32::from(sat(wd2 + wd3));
        }

        // DELAYA: shift the delay lines.
        for i in (1..7).rev() {
            self.d[i] = self.d[i - 1];
            self.b[i] = self.bp[i];
        }
        for i in (1..3).rev() {
            self.r[i] = self.r[i - 1];
            self.p[i] = self.p[i - 1];
            self.a[i] = self.ap[i];
        }

        // FILTEP, FILTEZ, PREDIC: the next estimate.
        let pole = |a: i32, r: i32| (a * i32::from(sat(r + r))) >> 15;
        self.sp = i32::from(sat(pole(self.a[1], self.r[1]) + pole(self.a[2], self.r[2])));
        let mut sz = 0;
        for i in (1..7).rev() {
            sz += (self.b[i] * i32::from(sat(self.d[i] + self.d[i]))) >> 15;
        }
        self.sz = i32::from(sat(sz));
        self.s = i32::from(sat(self.sp + self.sz));
    }
}

/// Initial scale factors of the low and high band (the Recommendation's reset).
const LOW_DET0: i32 = 32;
const HIGH_DET0: i32 = 8;

/// A G.722 encoder (64 kbit/s): 16 kHz PCM in, one byte per two samples out.
#[derive(Debug, Clone)]
pub struct G722Encoder {
    low: Band,
    high: Band,
    /// The QMF's input history (x[23] newest).
    history: [i32; 24],
}

impl Default for G722Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Encoder {
    /// An encoder in the reset state.
    pub fn new() -> Self {
        G722Encoder {
            low: Band::new(LOW_DET0),
            high: Band::new(HIGH_DET0),
            history: [0; 24],
        }
    }

    /// Encodes 16 kHz samples into `out`, which must hold `pcm.len() / 2`
    /// bytes; `pcm` must have an even length. Returns the bytes written.
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, CodecError> {
        if !pcm.len().is_multiple_of(2) {
            return Err(CodecError::LengthMismatch {
                expected: pcm.len() + 1,
                actual: pcm.len(),
            });
        }
        let bytes = pcm.len() / 2;
        if out.len() < bytes {
            return Err(CodecError::LengthMismatch {
                expected: bytes,
                actual: out.len(),
            });
        }
        for (pair, code) in pcm.chunks_exact(2).zip(out.iter_mut()) {
            *code = self.encode_pair(pair[0], pair[1]);
        }
        Ok(bytes)
    }

    /// Encodes a 20 ms frame at 16 kHz into `out` (cleared first; its
    /// capacity is reused, so a steady stream allocates nothing).
    pub fn encode_frame(&mut self, frame: &PcmFrame, out: &mut Vec<u8>) -> Result<(), CodecError> {
        if frame.rate() != SampleRate::Hz16000 {
            return Err(CodecError::RateMismatch {
                expected: 16_000,
                actual: frame.rate().hz(),
            });
        }
        out.clear();
        out.resize(frame.len() / 2, 0);
        self.encode(frame.samples(), out).map(|_| ())
    }

    fn encode_pair(&mut self, first: i16, second: i16) -> u8 {
        // Transmit QMF: the two newest samples in, one low and one high band sample out.
        self.history.copy_within(2.., 0);
        self.history[22] = i32::from(first);
        self.history[23] = i32::from(second);
        let mut even = 0i32;
        let mut odd = 0i32;
        for (i, &tap) in QMF_HALF.iter().enumerate() {
            odd += self.history[2 * i] * tap;
            even += self.history[2 * i + 1] * QMF_HALF[11 - i];
        }
        let xlow = (even + odd) >> 14;
        let xhigh = (even - odd) >> 14;

        // Low band: 6-bit quantization of the prediction error (block 1L).
        let el = i32::from(sat(xlow - self.low.s));
        let magnitude = if el >= 0 { el } else { -(el + 1) };
        let mut interval = 1;
        while interval < 30 && magnitude >= (Q6[interval] * self.low.det) >> 12 {
            interval += 1;
        }
        let ilow = if el < 0 { ILN[interval] } else { ILP[interval] };
        // The predictor adapts on the 4-bit core of the code (blocks 2L-4L).
        let ril = (ilow >> 2) as usize;
        let dlow = (self.low.det * QM4[ril]) >> 15;
        self.low.adapt_scale(WL[RL42[ril] as usize], 18432, 8);
        self.low.predict(dlow);

        // High band: 2-bit quantization (blocks 1H-4H).
        let eh = i32::from(sat(xhigh - self.high.s));
        let magnitude = if eh >= 0 { eh } else { -(eh + 1) };
        let level = if magnitude >= (564 * self.high.det) >> 12 {
            2
        } else {
            1
        };
        let ihigh = if eh < 0 { IHN[level] } else { IHP[level] };
        let dhigh = (self.high.det * QM2[ihigh as usize]) >> 15;
        self.high
            .adapt_scale(WH[RH2[ihigh as usize] as usize], 22528, 10);
        self.high.predict(dhigh);

        ((ihigh << 6) | ilow) as u8
    }
}

/// A G.722 decoder (64 kbit/s): one byte in, two 16 kHz samples out.
#[derive(Debug, Clone)]
pub struct G722Decoder {
    low: Band,
    high: Band,
    /// The receive QMF's history of band sums and differences.
    history: [i32; 24],
}

impl Default for G722Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Decoder {
    /// A decoder in the reset state.
    pub fn new() -> Self {
        G722Decoder {
            low: Band::new(LOW_DET0),
            high: Band::new(HIGH_DET0),
            history: [0; 24],
        }
    }

    /// Decodes `codes` into `out`, which must hold `2 * codes.len()`
    /// samples. Returns the samples written. Every byte is a valid code, so
    /// corrupt payloads decode to noise, never to an error.
    pub fn decode(&mut self, codes: &[u8], out: &mut [i16]) -> Result<usize, CodecError> {
        let samples = codes.len() * 2;
        if out.len() < samples {
            return Err(CodecError::LengthMismatch {
                expected: samples,
                actual: out.len(),
            });
        }
        for (&code, pair) in codes.iter().zip(out.chunks_exact_mut(2)) {
            let (first, second) = self.decode_byte(code);
            pair[0] = first;
            pair[1] = second;
        }
        Ok(samples)
    }

    /// Decodes one RTP payload into `frame` at 16 kHz, stamped `start`
    /// (its buffer is refilled, never reallocated beyond its capacity).
    pub fn decode_into(&mut self, payload: &[u8], start: MediaTime, frame: &mut PcmFrame) {
        frame.restamp(SampleRate::Hz16000, start);
        let buffer = frame.buffer_mut();
        buffer.clear();
        buffer.resize(payload.len() * 2, 0);
        // The buffer was sized to the payload just above.
        let _ = self.decode(payload, buffer);
    }

    fn decode_byte(&mut self, code: u8) -> (i16, i16) {
        let ilow = i32::from(code & 0x3F);
        let ihigh = i32::from(code >> 6);

        // Low band: the full 6-bit code reconstructs the output (blocks 5L, 6L) ...
        let wd2 = (self.low.det * QM6[ilow as usize]) >> 15;
        let rlow = (self.low.s + wd2).clamp(-16384, 16383);
        // ... and its 4-bit core adapts the predictor, as in the encoder.
        let ril = (ilow >> 2) as usize;
        let dlow = (self.low.det * QM4[ril]) >> 15;
        self.low.adapt_scale(WL[RL42[ril] as usize], 18432, 8);
        self.low.predict(dlow);

        // High band.
        let dhigh = (self.high.det * QM2[ihigh as usize]) >> 15;
        let rhigh = (dhigh + self.high.s).clamp(-16384, 16383);
        self.high
            .adapt_scale(WH[RH2[ihigh as usize] as usize], 22528, 10);
        self.high.predict(dhigh);

        // Receive QMF: the band sum and difference in, two samples out.
        self.history.copy_within(2.., 0);
        self.history[22] = rlow + rhigh;
        self.history[23] = rlow - rhigh;
        let mut first = 0i32;
        let mut second = 0i32;
        for (i, &tap) in QMF_HALF.iter().enumerate() {
            second += self.history[2 * i] * tap;
            first += self.history[2 * i + 1] * QMF_HALF[11 - i];
        }
        (sat(first >> 11), sat(second >> 11))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(len: usize, hz: f32, amplitude: f32) -> Vec<i16> {
        (0..len)
            .map(|n| {
                (amplitude * (2.0 * std::f32::consts::PI * hz * n as f32 / 16_000.0).sin()) as i16
            })
            .collect()
    }

    fn snr_db(reference: &[i16], decoded: &[i16]) -> f64 {
        let signal: f64 = reference.iter().map(|&s| f64::from(s).powi(2)).sum();
        let noise: f64 = reference
            .iter()
            .zip(decoded)
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
            .sum();
        10.0 * (signal / noise.max(1.0)).log10()
    }

    #[test]
    fn wideband_tones_survive_a_round_trip() {
        // 1 kHz sits in the low band, 6 kHz in the high band: G.711 could not carry it.
        for hz in [1_000.0, 6_000.0] {
            let pcm = tone(16_000, hz, 8_000.0);
            let mut codes = vec![0u8; pcm.len() / 2];
            G722Encoder::new().encode(&pcm, &mut codes).expect("encode");
            let mut decoded = vec![0i16; pcm.len()];
            G722Decoder::new()
                .decode(&codes, &mut decoded)
                .expect("decode");
            // The QMF pair delays the signal by a few samples; skip the first
            // 100 ms while the scale factors adapt, and take the best lag.
            let snr = (0..48)
                .map(|lag| snr_db(&pcm[1_600..15_000], &decoded[1_600 + lag..15_000 + lag]))
                .fold(f64::MIN, f64::max);
            assert!(snr > 20.0, "{hz} Hz: SNR {snr:.1} dB");
        }
    }

    #[test]
    fn a_frame_is_160_bytes_and_odd_input_is_refused() {
        let frame = PcmFrame::new(
            SampleRate::Hz16000,
            MediaTime::ZERO,
            tone(320, 440.0, 3_000.0),
        );
        let mut out = Vec::new();
        G722Encoder::new()
            .encode_frame(&frame, &mut out)
            .expect("encode");
        assert_eq!(out.len(), FRAME_BYTES_20MS);
        assert!(G722Encoder::new().encode(&[1, 2, 3], &mut [0; 2]).is_err());
        assert!(G722Decoder::new().decode(&[0; 4], &mut [0; 7]).is_err());
        let narrow = PcmFrame::new(SampleRate::Hz8000, MediaTime::ZERO, vec![0; 160]);
        assert!(G722Encoder::new().encode_frame(&narrow, &mut out).is_err());
    }

    #[test]
    fn every_byte_decodes_without_overflow() {
        let mut decoder = G722Decoder::new();
        let codes: Vec<u8> = (0..=255u8).cycle().take(16_000).collect();
        let mut out = vec![0i16; codes.len() * 2];
        decoder.decode(&codes, &mut out).expect("decode");
    }
}
