//! Exhaustive G.711 check against tables made by an independent
//! implementation (CPython 3.11's `audioop`, cross-checked with SoX): every
//! one of the 256 codes decoded, every one of the 65,536 inputs encoded.
//! Regenerate the tables with `python3 codecs/tests/data/g711/make_tables.py`.

use callingbox_codecs::G711Law;
use callingbox_codecs::g711::{
    alaw_decode_sample, alaw_encode_sample, ulaw_decode_sample, ulaw_encode_sample,
};

const ULAW_ENCODE: &[u8] = include_bytes!("data/g711/ulaw_encode.bin");
const ALAW_ENCODE: &[u8] = include_bytes!("data/g711/alaw_encode.bin");
const ULAW_DECODE: &[u8] = include_bytes!("data/g711/ulaw_decode.bin");
const ALAW_DECODE: &[u8] = include_bytes!("data/g711/alaw_decode.bin");

fn decode_table(bytes: &[u8]) -> Vec<i16> {
    assert_eq!(bytes.len(), 512);
    bytes
        .chunks_exact(2)
        .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
        .collect()
}

fn every_input() -> impl Iterator<Item = (usize, i16)> {
    (i16::MIN..=i16::MAX).enumerate()
}

#[test]
fn mulaw_encodes_all_65536_inputs_like_the_reference() {
    assert_eq!(ULAW_ENCODE.len(), 65_536);
    let mismatches: Vec<(i16, u8, u8)> = every_input()
        .filter_map(|(i, x)| {
            let ours = ulaw_encode_sample(x);
            (ours != ULAW_ENCODE[i]).then_some((x, ours, ULAW_ENCODE[i]))
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "first mismatches (input, ours, reference): {:?}",
        &mismatches[..mismatches.len().min(10)]
    );
}

#[test]
fn alaw_encodes_all_65536_inputs_like_the_reference() {
    assert_eq!(ALAW_ENCODE.len(), 65_536);
    let mismatches: Vec<(i16, u8, u8)> = every_input()
        .filter_map(|(i, x)| {
            let ours = alaw_encode_sample(x);
            (ours != ALAW_ENCODE[i]).then_some((x, ours, ALAW_ENCODE[i]))
        })
        .collect();
    assert!(
        mismatches.is_empty(),
        "first mismatches (input, ours, reference): {:?}",
        &mismatches[..mismatches.len().min(10)]
    );
}

#[test]
fn all_256_codes_decode_like_the_reference() {
    let ulaw = decode_table(ULAW_DECODE);
    let alaw = decode_table(ALAW_DECODE);
    for code in 0..=255u8 {
        assert_eq!(
            ulaw_decode_sample(code),
            ulaw[code as usize],
            "mu-law code {code:#04x}"
        );
        assert_eq!(
            alaw_decode_sample(code),
            alaw[code as usize],
            "A-law code {code:#04x}"
        );
    }
}

#[test]
fn slice_codecs_agree_with_the_reference() {
    let inputs: Vec<i16> = (i16::MIN..=i16::MAX).collect();
    for (law, table) in [(G711Law::MuLaw, ULAW_ENCODE), (G711Law::ALaw, ALAW_ENCODE)] {
        let mut codes = vec![0u8; inputs.len()];
        law.encode(&inputs, &mut codes).expect("equal lengths");
        assert!(
            codes == table,
            "{law:?} slice encoder differs from the reference"
        );
    }
    let codes: Vec<u8> = (0..=255).collect();
    for (law, table) in [(G711Law::MuLaw, ULAW_DECODE), (G711Law::ALaw, ALAW_DECODE)] {
        let mut samples = vec![0i16; 256];
        law.decode(&codes, &mut samples).expect("equal lengths");
        assert_eq!(samples, decode_table(table), "{law:?} slice decoder");
    }
}
