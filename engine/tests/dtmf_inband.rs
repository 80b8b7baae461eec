//! In-band DTMF detection on the recorded fixtures: speech, backchannels,
//! line noise and noise bursts (16 kHz PCM and 8 kHz mu-law) hold no keys
//! (talk-off), and keys mixed over speech are still found.

use callingbox_engine::audio::dtmf::{DtmfDetector, DtmfDetectorConfig, synthesize_key};
use callingbox_engine::codecs::read_wav;

fn fixture_wavs() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/audio");
    let mut wavs: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures/audio")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "wav"))
        .collect();
    wavs.sort();
    wavs
}

fn detect(audio: &callingbox_engine::codecs::WavAudio, samples: &[i16]) -> String {
    let mut detector = DtmfDetector::new(audio.rate, DtmfDetectorConfig::default());
    let frame = audio.rate.hz() as usize / 50;
    samples
        .chunks(frame)
        .filter_map(|chunk| detector.push(chunk))
        .collect()
}

#[test]
fn speech_and_noise_fixtures_hold_no_keys() {
    let wavs = fixture_wavs();
    assert!(wavs.len() >= 20, "fixtures missing: {wavs:?}");
    for path in wavs {
        let audio = read_wav(&path).expect("wav");
        assert_eq!(detect(&audio, &audio.samples), "", "{}", path.display());
    }
}

#[test]
fn keys_over_speech_are_found() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/audio");
    for name in ["phone_number.16k.wav", "phone_number.8k.ulaw.wav"] {
        let audio = read_wav(dir.join(name)).expect("wav");
        // Keys at -10 dBFS per tone, 80 ms on / 80 ms off, added onto the
        // speech from 0.5 s on (speech some 10 dB below the tones).
        let mut tones = vec![0i16; audio.rate.hz() as usize / 2];
        for key in "2580".chars() {
            synthesize_key(&mut tones, audio.rate, key, 80, 0.3, (1.0, 1.0));
            synthesize_key(&mut tones, audio.rate, ' ', 80, 0.0, (1.0, 1.0));
        }
        let mixed: Vec<i16> = audio
            .samples
            .iter()
            .zip(tones.iter().chain(std::iter::repeat(&0)))
            .map(|(&speech, &tone)| {
                (i32::from(speech) / 3 + i32::from(tone)).clamp(-32_768, 32_767) as i16
            })
            .collect();
        assert_eq!(detect(&audio, &mixed), "2580", "{name}");
    }
}
