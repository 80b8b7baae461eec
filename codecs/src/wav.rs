//! WAV files: 16-bit PCM through `hound`, and the G.711 mu-law / A-law WAVs
//! (format tags 7 and 6) that telephony tools such as SIPp and SoX use, which
//! `hound` does not read, through a small RIFF chunk walker here.
//!
//! Only mono files at the engine's rates are accepted: a fixture in any other
//! shape is a mistake worth a clear error, not a silent conversion.

use std::io::Cursor;
use std::path::Path;

use crate::g711::G711Law;
use crate::{CodecError, SampleRate};

/// How the samples are stored in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WavEncoding {
    /// Signed 16-bit little-endian PCM (format tag 1).
    Pcm16,
    /// G.711 mu-law, one byte per sample (format tag 7).
    MuLaw,
    /// G.711 A-law, one byte per sample (format tag 6).
    ALaw,
}

impl WavEncoding {
    fn format_tag(self) -> u16 {
        match self {
            WavEncoding::Pcm16 => 1,
            WavEncoding::ALaw => 6,
            WavEncoding::MuLaw => 7,
        }
    }

    fn law(self) -> Option<G711Law> {
        match self {
            WavEncoding::Pcm16 => None,
            WavEncoding::MuLaw => Some(G711Law::MuLaw),
            WavEncoding::ALaw => Some(G711Law::ALaw),
        }
    }
}

/// A whole mono recording, decoded to 16-bit PCM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WavAudio {
    /// The sample rate.
    pub rate: SampleRate,
    /// How the file stored the samples.
    pub encoding: WavEncoding,
    /// The samples, decoded to 16-bit PCM.
    pub samples: Vec<i16>,
}

impl WavAudio {
    /// How long the recording plays.
    pub fn duration(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(
            self.samples.len() as u64 * 1_000_000_000 / u64::from(self.rate.hz()),
        )
    }
}

/// Reads a WAV file.
pub fn read_wav(path: impl AsRef<Path>) -> Result<WavAudio, CodecError> {
    let path = path.as_ref();
    let bytes =
        std::fs::read(path).map_err(|err| CodecError::Io(format!("{}: {err}", path.display())))?;
    read_wav_bytes(&bytes)
}

/// Parses a WAV file held in memory.
pub fn read_wav_bytes(bytes: &[u8]) -> Result<WavAudio, CodecError> {
    let format = find_format(bytes)?;
    match format.tag {
        6 | 7 => read_g711(bytes, &format),
        _ => read_pcm(bytes),
    }
}

/// Writes `samples` as a mono WAV file in `encoding`.
pub fn write_wav(
    path: impl AsRef<Path>,
    rate: SampleRate,
    samples: &[i16],
    encoding: WavEncoding,
) -> Result<(), CodecError> {
    let path = path.as_ref();
    let bytes = encode_wav(rate, samples, encoding)?;
    std::fs::write(path, bytes).map_err(|err| CodecError::Io(format!("{}: {err}", path.display())))
}

/// Encodes `samples` as the bytes of a mono WAV file in `encoding`.
pub fn encode_wav(
    rate: SampleRate,
    samples: &[i16],
    encoding: WavEncoding,
) -> Result<Vec<u8>, CodecError> {
    match encoding.law() {
        None => {
            let spec = hound::WavSpec {
                channels: 1,
                sample_rate: rate.hz(),
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            let mut cursor = Cursor::new(Vec::with_capacity(44 + samples.len() * 2));
            let mut writer = hound::WavWriter::new(&mut cursor, spec).map_err(wav_error)?;
            let mut sample_writer = writer.get_i16_writer(samples.len() as u32);
            for &sample in samples {
                sample_writer.write_sample(sample);
            }
            sample_writer.flush().map_err(wav_error)?;
            writer.finalize().map_err(wav_error)?;
            Ok(cursor.into_inner())
        }
        Some(law) => {
            let mut codes = vec![0u8; samples.len()];
            law.encode(samples, &mut codes)?;
            Ok(g711_wav_bytes(rate, encoding.format_tag(), &codes))
        }
    }
}

fn wav_error(err: hound::Error) -> CodecError {
    CodecError::InvalidWav(err.to_string())
}

/// The parts of the `fmt ` chunk we check.
struct Format {
    tag: u16,
    channels: u16,
    rate: u32,
    bits: u16,
}

fn le_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// One RIFF chunk: its id, the length its header declares, and its body as
/// far as the file goes (shorter than declared when the file is truncated).
struct Chunk<'a> {
    id: &'a [u8],
    declared_len: usize,
    body: &'a [u8],
}

fn chunks(bytes: &[u8]) -> Result<Vec<Chunk<'_>>, CodecError> {
    if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
        return Err(CodecError::InvalidWav("not a RIFF/WAVE file".into()));
    }
    let mut found = Vec::new();
    let mut at = 12usize;
    while at + 8 <= bytes.len() {
        let declared_len = le_u32(bytes, at + 4).unwrap_or(0) as usize;
        let body_start = at + 8;
        let body_end = body_start.saturating_add(declared_len).min(bytes.len());
        found.push(Chunk {
            id: &bytes[at..at + 4],
            declared_len,
            body: &bytes[body_start..body_end],
        });
        // Chunks are padded to an even length.
        at = body_start
            .saturating_add(declared_len)
            .saturating_add(declared_len & 1);
    }
    Ok(found)
}

fn find_chunk<'a>(chunks: &[Chunk<'a>], id: &[u8; 4]) -> Result<&'a [u8], CodecError> {
    let chunk = chunks.iter().find(|chunk| chunk.id == id).ok_or_else(|| {
        CodecError::InvalidWav(format!("no {} chunk", String::from_utf8_lossy(id)))
    })?;
    if chunk.body.len() < chunk.declared_len {
        return Err(CodecError::InvalidWav(format!(
            "truncated: {} chunk declares {} bytes, file holds {}",
            String::from_utf8_lossy(id),
            chunk.declared_len,
            chunk.body.len()
        )));
    }
    Ok(chunk.body)
}

fn find_format(bytes: &[u8]) -> Result<Format, CodecError> {
    let body = find_chunk(&chunks(bytes)?, b"fmt ")?;
    let short = || CodecError::InvalidWav("fmt chunk too short".into());
    Ok(Format {
        tag: le_u16(body, 0).ok_or_else(short)?,
        channels: le_u16(body, 2).ok_or_else(short)?,
        rate: le_u32(body, 4).ok_or_else(short)?,
        bits: le_u16(body, 14).ok_or_else(short)?,
    })
}

fn check_mono(channels: u16) -> Result<(), CodecError> {
    if channels != 1 {
        return Err(CodecError::InvalidWav(format!(
            "expected mono, got {channels} channels"
        )));
    }
    Ok(())
}

fn read_g711(bytes: &[u8], format: &Format) -> Result<WavAudio, CodecError> {
    check_mono(format.channels)?;
    if format.bits != 8 {
        return Err(CodecError::InvalidWav(format!(
            "G.711 WAV needs 8 bits per sample, got {}",
            format.bits
        )));
    }
    let rate = SampleRate::try_from(format.rate)?;
    let data_chunk = find_chunk(&chunks(bytes)?, b"data")?;
    let (encoding, law) = if format.tag == 7 {
        (WavEncoding::MuLaw, G711Law::MuLaw)
    } else {
        (WavEncoding::ALaw, G711Law::ALaw)
    };
    let mut samples = vec![0i16; data_chunk.len()];
    law.decode(data_chunk, &mut samples)?;
    Ok(WavAudio {
        rate,
        encoding,
        samples,
    })
}

fn read_pcm(bytes: &[u8]) -> Result<WavAudio, CodecError> {
    let reader = hound::WavReader::new(Cursor::new(bytes)).map_err(wav_error)?;
    let spec = reader.spec();
    check_mono(spec.channels)?;
    if spec.sample_format != hound::SampleFormat::Int || spec.bits_per_sample != 16 {
        return Err(CodecError::InvalidWav(format!(
            "expected 16-bit integer PCM, got {} bits {:?}",
            spec.bits_per_sample, spec.sample_format
        )));
    }
    let rate = SampleRate::try_from(spec.sample_rate)?;
    let declared = reader.len() as usize;
    let samples = reader
        .into_samples::<i16>()
        .collect::<Result<Vec<i16>, _>>()
        .map_err(wav_error)?;
    if samples.len() < declared {
        return Err(CodecError::InvalidWav(format!(
            "truncated: header declares {declared} samples, file holds {}",
            samples.len()
        )));
    }
    Ok(WavAudio {
        rate,
        encoding: WavEncoding::Pcm16,
        samples,
    })
}

/// A G.711 WAV as SoX writes it: an 18-byte `fmt ` chunk, a `fact` chunk
/// (required for non-PCM formats) and the data.
fn g711_wav_bytes(rate: SampleRate, tag: u16, codes: &[u8]) -> Vec<u8> {
    let data_len = codes.len() as u32;
    let pad = (codes.len() & 1) as u32;
    let riff_len = 4 + (8 + 18) + (8 + 4) + (8 + data_len + pad);
    let mut out = Vec::with_capacity(riff_len as usize + 8);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&riff_len.to_le_bytes());
    out.extend_from_slice(b"WAVE");
    out.extend_from_slice(b"fmt ");
    out.extend_from_slice(&18u32.to_le_bytes());
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // channels
    out.extend_from_slice(&rate.hz().to_le_bytes());
    out.extend_from_slice(&rate.hz().to_le_bytes()); // bytes per second
    out.extend_from_slice(&1u16.to_le_bytes()); // block align
    out.extend_from_slice(&8u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(&0u16.to_le_bytes()); // cbSize
    out.extend_from_slice(b"fact");
    out.extend_from_slice(&4u32.to_le_bytes());
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(codes);
    if pad == 1 {
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp() -> Vec<i16> {
        (0..1600)
            .map(|i| ((i * 37) % 20000 - 10000) as i16)
            .collect()
    }

    #[test]
    fn pcm_round_trips_exactly() {
        let bytes = encode_wav(SampleRate::Hz16000, &ramp(), WavEncoding::Pcm16).expect("encode");
        let audio = read_wav_bytes(&bytes).expect("read");
        assert_eq!(audio.rate, SampleRate::Hz16000);
        assert_eq!(audio.encoding, WavEncoding::Pcm16);
        assert_eq!(audio.samples, ramp());
        assert_eq!(audio.duration(), std::time::Duration::from_millis(100));
    }

    #[test]
    fn g711_round_trips_through_the_codec() {
        for (encoding, law) in [
            (WavEncoding::MuLaw, G711Law::MuLaw),
            (WavEncoding::ALaw, G711Law::ALaw),
        ] {
            let bytes = encode_wav(SampleRate::Hz8000, &ramp(), encoding).expect("encode");
            let audio = read_wav_bytes(&bytes).expect("read");
            assert_eq!(audio.encoding, encoding);
            let mut codes = vec![0; 1600];
            law.encode(&ramp(), &mut codes).expect("encode");
            let mut expected = vec![0; 1600];
            law.decode(&codes, &mut expected).expect("decode");
            assert_eq!(audio.samples, expected);
        }
    }

    #[test]
    fn truncated_files_are_errors() {
        for encoding in [WavEncoding::Pcm16, WavEncoding::MuLaw] {
            let bytes = encode_wav(SampleRate::Hz8000, &ramp(), encoding).expect("encode");
            for cut in [0, 4, 11, 20, 40, bytes.len() - 1] {
                assert!(
                    matches!(
                        read_wav_bytes(&bytes[..cut]),
                        Err(CodecError::InvalidWav(_))
                    ),
                    "{encoding:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn unsupported_shapes_say_what_is_wrong() {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut cursor = Cursor::new(Vec::new());
        let mut writer = hound::WavWriter::new(&mut cursor, spec).expect("writer");
        writer.write_sample(0i16).expect("write");
        writer.write_sample(0i16).expect("write");
        writer.finalize().expect("finalize");
        let err = read_wav_bytes(cursor.get_ref()).expect_err("stereo");
        assert!(err.to_string().contains("mono"), "{err}");

        let mut bytes =
            encode_wav(SampleRate::Hz8000, &ramp(), WavEncoding::MuLaw).expect("encode");
        bytes[24..28].copy_from_slice(&11_025u32.to_le_bytes());
        assert_eq!(
            read_wav_bytes(&bytes),
            Err(CodecError::UnsupportedRate(11_025))
        );
    }
}
