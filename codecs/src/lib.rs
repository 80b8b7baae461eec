//! Audio in the shapes a phone call needs: the [`PcmFrame`] every stage of
//! CallingBox passes along, the telephone codecs (G.711 mu-law and A-law,
//! G.722, Opus), streaming sample-rate conversion, and WAV files.
//!
//! Everything on the per-frame path writes into buffers the caller owns and
//! reuses (`*_into` functions), so a steady stream allocates nothing. Bad
//! input of any kind (odd byte counts, unsupported rates, corrupt packets,
//! truncated files) is a [`CodecError`], never a panic: `tests/no_panic.rs`
//! throws arbitrary bytes at every entry point to hold that line.

mod error;
mod frame;
pub mod g711;
pub mod g722;
pub mod opus;
pub mod resample;
pub mod wav;

pub use error::CodecError;
pub use frame::{FrameDuration, Framer, MediaTime, PcmFrame, SampleRate, split_into_frames};
pub use g711::G711Law;
pub use g722::{G722Decoder, G722Encoder};
pub use opus::{OpusDecoder, OpusEncoder, OpusEncoderConfig};
pub use resample::Resampler;
pub use wav::{WavAudio, WavEncoding, read_wav, read_wav_bytes, write_wav};
