//! G.711 mu-law (PCMU, North America and Japan) and A-law (PCMA, the rest of
//! the world): the codecs every phone network speaks.
//!
//! Bit-exact with the classic Sun implementation that CPython's `audioop`
//! ships: the encoder drops the low bits by truncation (2 bits for mu-law's
//! 14-bit scale, 3 for A-law's 13-bit scale) and decodes to the centre of each
//! quantization interval. `tests/g711_reference.rs` checks all 65,536 inputs
//! and all 256 codes against tables made by that independent implementation.
//!
//! Both directions are table lookups built at compile time from the
//! arithmetic definitions below: 64 KiB per law for encoding (speech
//! samples cluster near zero, so the hot part of the table stays in L1),
//! 512 bytes per law for decoding. The arithmetic versions stay public for
//! single samples and are what the tables are checked against.

use crate::{CodecError, MediaTime, PcmFrame, SampleRate};

/// Mu-law: the bias added to the 14-bit magnitude before finding the segment.
const ULAW_BIAS: i32 = 0x84 >> 2;
/// Mu-law: the largest 14-bit magnitude before the bias.
const ULAW_CLIP: i32 = 8159;

/// Encodes one sample to mu-law.
#[inline]
pub fn ulaw_encode_sample(sample: i16) -> u8 {
    ULAW_ENCODE[sample as u16 as usize]
}

const fn ulaw_encode_computed(sample: i16) -> u8 {
    let mut magnitude = (sample >> 2) as i32;
    let mask: u8 = if magnitude < 0 {
        magnitude = -magnitude;
        0x7F
    } else {
        0xFF
    };
    if magnitude > ULAW_CLIP {
        magnitude = ULAW_CLIP;
    }
    magnitude += ULAW_BIAS;
    // Segment s holds magnitudes below 64 << s: find it from the top set bit.
    let top_bit = 31 - (magnitude as u32 | 0x20).leading_zeros() as i32;
    let segment = top_bit - 5;
    if segment >= 8 {
        return 0x7F ^ mask;
    }
    let code = (segment << 4) | ((magnitude >> (segment + 1)) & 0xF);
    (code as u8) ^ mask
}

/// Decodes one mu-law code.
#[inline]
pub const fn ulaw_decode_sample(code: u8) -> i16 {
    ULAW_DECODE[code as usize]
}

const fn ulaw_decode_computed(code: u8) -> i16 {
    let inverted = !code;
    let mut t = (((inverted & 0x0F) as i32) << 3) + 0x84;
    t <<= ((inverted & 0x70) >> 4) as i32;
    if inverted & 0x80 != 0 {
        (0x84 - t) as i16
    } else {
        (t - 0x84) as i16
    }
}

/// Encodes one sample to A-law.
#[inline]
pub fn alaw_encode_sample(sample: i16) -> u8 {
    ALAW_ENCODE[sample as u16 as usize]
}

const fn alaw_encode_computed(sample: i16) -> u8 {
    let mut magnitude = (sample >> 3) as i32;
    let mask: u8 = if magnitude >= 0 {
        0xD5
    } else {
        magnitude = -magnitude - 1;
        0x55
    };
    // Segment s holds magnitudes below 32 << s.
    let top_bit = 31 - (magnitude as u32 | 0x10).leading_zeros() as i32;
    let segment = top_bit - 4;
    if segment >= 8 {
        return 0x7F ^ mask;
    }
    let shift = if segment < 2 { 1 } else { segment };
    let code = (segment << 4) | ((magnitude >> shift) & 0xF);
    (code as u8) ^ mask
}

/// Decodes one A-law code.
#[inline]
pub const fn alaw_decode_sample(code: u8) -> i16 {
    ALAW_DECODE[code as usize]
}

const fn alaw_decode_computed(code: u8) -> i16 {
    let toggled = code ^ 0x55;
    let mut t = ((toggled & 0x0F) as i32) << 4;
    let segment = ((toggled & 0x70) >> 4) as i32;
    t = match segment {
        0 => t + 8,
        1 => t + 0x108,
        _ => (t + 0x108) << (segment - 1),
    };
    if toggled & 0x80 != 0 {
        t as i16
    } else {
        -t as i16
    }
}

const fn build_decode_table(law: G711Law) -> [i16; 256] {
    let mut table = [0i16; 256];
    let mut code = 0;
    while code < 256 {
        table[code] = match law {
            G711Law::MuLaw => ulaw_decode_computed(code as u8),
            G711Law::ALaw => alaw_decode_computed(code as u8),
        };
        code += 1;
    }
    table
}

/// Indexed by the sample's bit pattern (`sample as u16`).
const fn build_encode_table(law: G711Law) -> [u8; 65_536] {
    let mut table = [0u8; 65_536];
    let mut index = 0;
    while index < 65_536 {
        let sample = index as u16 as i16;
        table[index] = match law {
            G711Law::MuLaw => ulaw_encode_computed(sample),
            G711Law::ALaw => alaw_encode_computed(sample),
        };
        index += 1;
    }
    table
}

static ULAW_ENCODE: [u8; 65_536] = build_encode_table(G711Law::MuLaw);
static ALAW_ENCODE: [u8; 65_536] = build_encode_table(G711Law::ALaw);
static ULAW_DECODE: [i16; 256] = build_decode_table(G711Law::MuLaw);
static ALAW_DECODE: [i16; 256] = build_decode_table(G711Law::ALaw);

/// Which G.711 law: the RTP payload types are 0 (PCMU) and 8 (PCMA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum G711Law {
    /// Mu-law, RTP payload type 0 (PCMU).
    MuLaw,
    /// A-law, RTP payload type 8 (PCMA).
    ALaw,
}

impl G711Law {
    /// The static RTP payload type (RFC 3551).
    pub const fn rtp_payload_type(self) -> u8 {
        match self {
            G711Law::MuLaw => 0,
            G711Law::ALaw => 8,
        }
    }

    /// Encodes `pcm` into `out`, one code per sample. `out` must be as long as `pcm`.
    pub fn encode(self, pcm: &[i16], out: &mut [u8]) -> Result<(), CodecError> {
        if out.len() != pcm.len() {
            return Err(CodecError::LengthMismatch {
                expected: pcm.len(),
                actual: out.len(),
            });
        }
        match self {
            G711Law::MuLaw => {
                for (code, &sample) in out.iter_mut().zip(pcm) {
                    *code = ULAW_ENCODE[sample as u16 as usize];
                }
            }
            G711Law::ALaw => {
                for (code, &sample) in out.iter_mut().zip(pcm) {
                    *code = ALAW_ENCODE[sample as u16 as usize];
                }
            }
        }
        Ok(())
    }

    /// Decodes `codes` into `out`. `out` must be as long as `codes`.
    pub fn decode(self, codes: &[u8], out: &mut [i16]) -> Result<(), CodecError> {
        if out.len() != codes.len() {
            return Err(CodecError::LengthMismatch {
                expected: codes.len(),
                actual: out.len(),
            });
        }
        let table = match self {
            G711Law::MuLaw => &ULAW_DECODE,
            G711Law::ALaw => &ALAW_DECODE,
        };
        for (sample, &code) in out.iter_mut().zip(codes) {
            *sample = table[code as usize];
        }
        Ok(())
    }

    /// Decodes an 8 kHz payload into `frame`, reusing its buffer. Any payload
    /// length is valid: every byte is one sample.
    pub fn decode_into(self, payload: &[u8], start: MediaTime, frame: &mut PcmFrame) {
        frame.restamp(SampleRate::Hz8000, start);
        let buffer = frame.buffer_mut();
        buffer.clear();
        buffer.resize(payload.len(), 0);
        // Lengths are equal by construction.
        let _ = self.decode(payload, buffer);
    }

    /// Encodes an 8 kHz frame, appending one code per sample to `out`.
    pub fn encode_frame(self, frame: &PcmFrame, out: &mut Vec<u8>) -> Result<(), CodecError> {
        if frame.rate() != SampleRate::Hz8000 {
            return Err(CodecError::RateMismatch {
                expected: 8_000,
                actual: frame.rate().hz(),
            });
        }
        let from = out.len();
        out.resize(from + frame.len(), 0);
        self.encode(frame.samples(), &mut out[from..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_and_extremes_have_their_usual_codes() {
        assert_eq!(ulaw_encode_sample(0), 0xFF);
        assert_eq!(ulaw_decode_sample(0xFF), 0);
        assert_eq!(ulaw_encode_sample(i16::MAX), 0x80);
        assert_eq!(ulaw_encode_sample(i16::MIN), 0x00);
        assert_eq!(ulaw_decode_sample(0x80), 32124);
        assert_eq!(alaw_encode_sample(0), 0xD5);
        assert_eq!(alaw_decode_sample(0xD5), 8);
        assert_eq!(alaw_decode_sample(0xAA), 32256);
    }

    #[test]
    fn tables_equal_the_arithmetic() {
        for sample in i16::MIN..=i16::MAX {
            assert_eq!(ulaw_encode_sample(sample), ulaw_encode_computed(sample));
            assert_eq!(alaw_encode_sample(sample), alaw_encode_computed(sample));
        }
    }

    #[test]
    fn decode_then_encode_returns_every_code() {
        // Every code but mu-law's negative zero (0x7F decodes to 0, which encodes as 0xFF).
        for code in 0..=255u8 {
            if code != 0x7F {
                assert_eq!(ulaw_encode_sample(ulaw_decode_sample(code)), code);
            }
            assert_eq!(alaw_encode_sample(alaw_decode_sample(code)), code);
        }
    }

    #[test]
    fn frame_helpers_check_rate_and_length() {
        let frame = PcmFrame::new(SampleRate::Hz16000, MediaTime::ZERO, vec![0; 320]);
        assert!(matches!(
            G711Law::MuLaw.encode_frame(&frame, &mut Vec::new()),
            Err(CodecError::RateMismatch { .. })
        ));
        assert!(matches!(
            G711Law::ALaw.encode(&[0; 4], &mut [0; 3]),
            Err(CodecError::LengthMismatch { .. })
        ));
        let mut decoded = PcmFrame::with_capacity(SampleRate::Hz8000, crate::FrameDuration::Ms20);
        G711Law::ALaw.decode_into(&[0xD5; 160], MediaTime::from_millis(40), &mut decoded);
        assert_eq!(decoded.len(), 160);
        assert_eq!(decoded.start(), MediaTime::from_millis(40));
    }
}
