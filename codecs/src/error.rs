//! The one error type of the codecs crate.

use thiserror::Error;

/// Everything that can go wrong while moving audio through this crate.
///
/// Every variant comes from bad input or a misconfiguration; none is a bug to
/// panic over, so callers on the network path can log it and drop the packet.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// A sample rate this engine does not carry (it carries 8, 16, 24 and 48 kHz).
    #[error("unsupported sample rate {0} Hz: expected 8000, 16000, 24000 or 48000")]
    UnsupportedRate(u32),
    /// 16-bit PCM arrived as bytes whose count is not a multiple of two.
    #[error("16-bit PCM needs an even number of bytes, got {0}")]
    OddByteCount(usize),
    /// A buffer did not have the length the operation needs.
    #[error("expected {expected} samples, got {actual}")]
    LengthMismatch {
        /// The length the operation needs.
        expected: usize,
        /// The length it was given.
        actual: usize,
    },
    /// A frame at one sample rate was handed to a stage set up for another.
    #[error("frame is at {actual} Hz but this stage expects {expected} Hz")]
    RateMismatch {
        /// The rate the stage was built for.
        expected: u32,
        /// The rate of the frame it was given.
        actual: u32,
    },
    /// An Opus packet libopus refused to decode (corrupt, truncated or empty).
    #[error("corrupt Opus packet: {0}")]
    CorruptOpusPacket(String),
    /// libopus refused a request (encoder setup or encode call).
    #[error("Opus: {0}")]
    Opus(String),
    /// The resampler could not be built or run.
    #[error("resampler: {0}")]
    Resampler(String),
    /// A WAV file that is truncated, malformed, or in a format this crate does not read.
    #[error("invalid WAV: {0}")]
    InvalidWav(String),
    /// Reading or writing a file failed.
    #[error("I/O: {0}")]
    Io(String),
}

impl From<std::io::Error> for CodecError {
    fn from(err: std::io::Error) -> Self {
        CodecError::Io(err.to_string())
    }
}
