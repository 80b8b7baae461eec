//! What a SIP call sends while the agent is quiet: one 20 ms frame of
//! silence every 20 ms, so the peer's media never stops. Media that stops
//! for the length of a caller's monologue trips the RTP inactivity timers
//! of PBXs and trunks (they hang up), and lets a NAT forget the pinhole
//! that symmetric RTP depends on.
//!
//! The payloads are fixed (encoded once), so sending them costs no encoder
//! time on the media worker. G.722 gets none: its ADPCM decoder carries
//! state from frame to frame, and frames encoded apart from the call's
//! stream would click at every talkspurt's edge.

use std::sync::OnceLock;

use crate::codecs::{
    FrameDuration, MediaTime, OpusEncoder, OpusEncoderConfig, PcmFrame, SampleRate,
};

use super::sip::sdp::CodecKind;

/// mu-law's code for 0 (G.711: a positive zero is 0xFF).
const PCMU_SILENCE: [u8; 160] = [0xFF; 160];
/// A-law's code for 0 (0x55 with the even bits inverted).
const PCMA_SILENCE: [u8; 160] = [0xD5; 160];

/// One 20 ms frame of silence in `codec`, or `None` where there is none
/// to send (see the module docs).
pub fn silence_frame(codec: CodecKind) -> Option<&'static [u8]> {
    match codec {
        CodecKind::Pcmu => Some(&PCMU_SILENCE),
        CodecKind::Pcma => Some(&PCMA_SILENCE),
        CodecKind::Opus => opus_silence(),
        CodecKind::G722 => None,
    }
}

/// 20 ms of digital silence from a fresh 48 kHz encoder: a valid Opus
/// packet on its own (a few bytes).
fn opus_silence() -> Option<&'static [u8]> {
    static PACKET: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    PACKET
        .get_or_init(|| {
            let mut encoder =
                OpusEncoder::new(SampleRate::Hz48000, OpusEncoderConfig::default()).ok()?;
            let frame =
                PcmFrame::silence(SampleRate::Hz48000, MediaTime::ZERO, FrameDuration::Ms20);
            let mut packet = vec![0u8; 1_275];
            let length = encoder.encode(&frame, &mut packet).ok()?;
            packet.truncate(length);
            Some(packet)
        })
        .as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codecs::{G711Law, OpusDecoder};

    #[test]
    fn each_frame_decodes_to_20_ms_of_silence() {
        for (codec, law) in [
            (CodecKind::Pcmu, G711Law::MuLaw),
            (CodecKind::Pcma, G711Law::ALaw),
        ] {
            let frame = silence_frame(codec).expect("a frame");
            let mut samples = [1i16; 160];
            law.decode(frame, &mut samples).expect("decode");
            assert!(
                samples.iter().all(|&s| s.abs() <= 8),
                "{codec:?}: {samples:?}"
            );
        }
        let packet = silence_frame(CodecKind::Opus).expect("an Opus frame");
        assert!(packet.len() < 20, "{} bytes", packet.len());
        let mut decoder = OpusDecoder::new(SampleRate::Hz48000).expect("decoder");
        let mut frame = PcmFrame::new(SampleRate::Hz48000, MediaTime::ZERO, vec![1; 960]);
        decoder
            .decode_into(packet, MediaTime::ZERO, &mut frame)
            .expect("decode");
        assert_eq!(frame.len(), 960);
        let peak = frame.samples().iter().map(|s| s.unsigned_abs()).max();
        assert!(peak <= Some(32), "not silent: peak {peak:?}");
        assert_eq!(silence_frame(CodecKind::G722), None);
    }
}
