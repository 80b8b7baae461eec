//! Whatever bytes arrive from the network or a file, the codecs answer with a
//! value or a typed error, never a panic.

use callingbox_codecs::opus::MAX_PACKET_BYTES;
use callingbox_codecs::{
    CodecError, FrameDuration, G711Law, MediaTime, OpusDecoder, OpusEncoder, OpusEncoderConfig,
    PcmFrame, Resampler, SampleRate, read_wav_bytes,
};
use proptest::prelude::*;

fn any_rate() -> impl Strategy<Value = SampleRate> {
    prop::sample::select(SampleRate::ALL.to_vec())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn pcm_bytes_parse_or_report_odd_length(bytes in prop::collection::vec(any::<u8>(), 0..4000)) {
        let mut frame = PcmFrame::with_capacity(SampleRate::Hz8000, FrameDuration::Ms20);
        match frame.fill_from_le_bytes(SampleRate::Hz8000, MediaTime::ZERO, &bytes) {
            Ok(()) => prop_assert_eq!(frame.len() * 2, bytes.len()),
            Err(err) => prop_assert_eq!(err, CodecError::OddByteCount(bytes.len())),
        }
    }

    #[test]
    fn any_rate_number_is_a_rate_or_an_error(hz in any::<u32>()) {
        match SampleRate::try_from(hz) {
            Ok(rate) => prop_assert_eq!(rate.hz(), hz),
            Err(err) => prop_assert_eq!(err, CodecError::UnsupportedRate(hz)),
        }
    }

    #[test]
    fn any_g711_payload_decodes(payload in prop::collection::vec(any::<u8>(), 0..2000)) {
        let mut frame = PcmFrame::with_capacity(SampleRate::Hz8000, FrameDuration::Ms20);
        for law in [G711Law::MuLaw, G711Law::ALaw] {
            law.decode_into(&payload, MediaTime::ZERO, &mut frame);
            prop_assert_eq!(frame.len(), payload.len());
        }
    }

    #[test]
    fn arbitrary_opus_packets_never_panic(
        rate in any_rate(),
        packets in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..1500), 1..8),
    ) {
        let mut decoder = OpusDecoder::new(rate).expect("decoder");
        let mut frame = PcmFrame::with_capacity(rate, FrameDuration::Ms20);
        for packet in &packets {
            match decoder.decode_into(packet, MediaTime::ZERO, &mut frame) {
                Ok(()) => prop_assert!(frame.len() <= rate.samples_per_ms() * 120),
                Err(err) => prop_assert!(matches!(err, CodecError::CorruptOpusPacket(_))),
            }
            // FEC and concealment after garbage must still work or error cleanly.
            let _ = decoder.recover_into(packet, FrameDuration::Ms20, MediaTime::ZERO, &mut frame);
            decoder.conceal_into(FrameDuration::Ms20, MediaTime::ZERO, &mut frame).expect("plc");
            prop_assert_eq!(frame.len(), rate.samples_in(FrameDuration::Ms20));
        }
    }

    #[test]
    fn arbitrary_frames_into_encoders_and_resamplers_never_panic(
        rate in any_rate(),
        to in any_rate(),
        samples in prop::collection::vec(any::<i16>(), 0..2000),
    ) {
        let frame = PcmFrame::new(rate, MediaTime::ZERO, samples);
        let mut encoder = OpusEncoder::new(rate, OpusEncoderConfig::default()).expect("encoder");
        let _ = encoder.encode(&frame, &mut [0u8; MAX_PACKET_BYTES]);
        let mut resampler = Resampler::new(rate, to, FrameDuration::Ms20).expect("resampler");
        let mut out = PcmFrame::with_capacity(to, FrameDuration::Ms20);
        if resampler.process_into(&frame, &mut out).is_ok() {
            prop_assert_eq!(out.len(), to.samples_in(FrameDuration::Ms20));
        }
        let _ = G711Law::MuLaw.encode_frame(&frame, &mut Vec::new());
    }

    #[test]
    fn arbitrary_bytes_are_never_a_panic_as_wav(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = read_wav_bytes(&bytes);
    }

    #[test]
    fn mangled_wav_headers_are_never_a_panic(
        flips in prop::collection::vec((0usize..80, any::<u8>()), 1..6),
        cut in 0usize..400,
        g711 in any::<bool>(),
    ) {
        let encoding = if g711 { callingbox_codecs::WavEncoding::MuLaw } else { callingbox_codecs::WavEncoding::Pcm16 };
        let mut bytes = callingbox_codecs::wav::encode_wav(SampleRate::Hz8000, &[1000; 160], encoding).expect("encode");
        for (at, value) in flips {
            if at < bytes.len() {
                bytes[at] = value;
            }
        }
        bytes.truncate(cut.min(bytes.len()));
        let _ = read_wav_bytes(&bytes);
    }
}
