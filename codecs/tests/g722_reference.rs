//! G.722 bit-exact against an independent implementation: FFmpeg's G.722
//! encoder and decoder, run on a fixture recording. The reference files
//! were made by `fixtures/audio/g722/make.sh` (FFmpeg 5.1, Debian 12).

use std::path::PathBuf;

use callingbox_codecs::{G722Decoder, G722Encoder, SampleRate, read_wav};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/audio")
        .join(name)
}

fn first_difference<T: PartialEq>(ours: &[T], reference: &[T]) -> Option<usize> {
    ours.iter().zip(reference).position(|(a, b)| a != b)
}

#[test]
fn encoding_speech_matches_ffmpeg_byte_for_byte() {
    let speech = read_wav(fixture("greeting_sam.16k.wav")).expect("fixture WAV");
    assert_eq!(speech.rate, SampleRate::Hz16000);
    let reference = std::fs::read(fixture("g722/greeting_sam.ffmpeg.g722")).expect("reference");
    let mut codes = vec![0u8; speech.samples.len() / 2];
    let written = G722Encoder::new()
        .encode(&speech.samples[..codes.len() * 2], &mut codes)
        .expect("encode");
    assert_eq!(written, reference.len());
    assert_eq!(
        first_difference(&codes, &reference),
        None,
        "first differing byte"
    );
}

#[test]
fn decoding_ffmpegs_stream_matches_ffmpegs_decoder_sample_for_sample() {
    let codes = std::fs::read(fixture("g722/greeting_sam.ffmpeg.g722")).expect("reference");
    let decoded = std::fs::read(fixture("g722/greeting_sam.ffmpeg-decoded.s16le")).expect("pcm");
    let reference: Vec<i16> = decoded
        .chunks_exact(2)
        .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
        .collect();
    let mut ours = vec![0i16; codes.len() * 2];
    // Decode in 20 ms RTP payloads, as the engine does: state carries across packets.
    let mut decoder = G722Decoder::new();
    for (payload, out) in codes.chunks(160).zip(ours.chunks_mut(320)) {
        decoder.decode(payload, out).expect("decode");
    }
    assert_eq!(ours.len(), reference.len());
    assert_eq!(
        first_difference(&ours, &reference),
        None,
        "first differing sample"
    );
    // And it is speech, not silence that would match trivially.
    let peak = ours.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
    assert!(peak > 3_000, "peak {peak}");
}
