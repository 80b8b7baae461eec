//! Opus through libopus (Debian's `libopus-dev`, via the `audiopus` binding):
//! the codec of WebRTC and of modern SIP trunks.
//!
//! Besides plain encode and decode this exposes the two tools Opus has for a
//! lossy network, which the jitter buffer uses:
//! * packet-loss concealment: [`OpusDecoder::conceal_into`] synthesizes a
//!   plausible frame for a packet that never came;
//! * in-band forward error correction: with FEC on, each packet carries a
//!   low-bitrate copy of the previous frame, which
//!   [`OpusDecoder::recover_into`] decodes when that previous packet was lost.

use audiopus::coder::{Decoder, Encoder};
use audiopus::packet::Packet;
use audiopus::{Application, Bitrate, Channels, MutSignals};

use crate::{CodecError, FrameDuration, MediaTime, PcmFrame, SampleRate};

/// The largest Opus packet we produce or accept for one frame (RFC 6716 limits
/// a frame to 1275 bytes; a packet of several frames can be longer).
pub const MAX_PACKET_BYTES: usize = 4000;

/// The longest audio one Opus packet can carry: 120 ms.
const MAX_PACKET_MS: usize = 120;

fn opus_rate(rate: SampleRate) -> audiopus::SampleRate {
    match rate {
        SampleRate::Hz8000 => audiopus::SampleRate::Hz8000,
        SampleRate::Hz16000 => audiopus::SampleRate::Hz16000,
        SampleRate::Hz24000 => audiopus::SampleRate::Hz24000,
        SampleRate::Hz48000 => audiopus::SampleRate::Hz48000,
    }
}

fn opus_error(err: audiopus::Error) -> CodecError {
    CodecError::Opus(err.to_string())
}

/// Encoder settings. The defaults suit a phone call: voice mode, 24 kbit/s,
/// in-band FEC on for 10 % expected loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusEncoderConfig {
    /// Target bitrate in bits per second (6,000 to 510,000).
    pub bitrate_bps: i32,
    /// Carry a low-bitrate copy of each frame in the next packet.
    pub inband_fec: bool,
    /// The loss the encoder should expect (0-100); FEC is only emitted when above 0.
    pub expected_loss_percent: u8,
    /// 0 (fastest) to 10 (best).
    pub complexity: u8,
}

impl Default for OpusEncoderConfig {
    fn default() -> Self {
        OpusEncoderConfig {
            bitrate_bps: 24_000,
            inband_fec: true,
            expected_loss_percent: 10,
            complexity: 5,
        }
    }
}

/// A mono Opus encoder at one sample rate.
pub struct OpusEncoder {
    inner: Encoder,
    rate: SampleRate,
}

impl std::fmt::Debug for OpusEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusEncoder")
            .field("rate", &self.rate)
            .finish()
    }
}

impl OpusEncoder {
    /// A voice-mode encoder at `rate`.
    pub fn new(rate: SampleRate, config: OpusEncoderConfig) -> Result<Self, CodecError> {
        let mut inner =
            Encoder::new(opus_rate(rate), Channels::Mono, Application::Voip).map_err(opus_error)?;
        inner
            .set_bitrate(Bitrate::BitsPerSecond(config.bitrate_bps))
            .map_err(opus_error)?;
        inner
            .set_inband_fec(config.inband_fec)
            .map_err(opus_error)?;
        inner
            .set_packet_loss_perc(config.expected_loss_percent)
            .map_err(opus_error)?;
        inner
            .set_complexity(config.complexity)
            .map_err(opus_error)?;
        Ok(OpusEncoder { inner, rate })
    }

    /// The rate frames must have.
    pub fn rate(&self) -> SampleRate {
        self.rate
    }

    /// Encodes one 10, 20, 40 or 60 ms frame into `packet`; returns the packet length.
    pub fn encode(&mut self, frame: &PcmFrame, packet: &mut [u8]) -> Result<usize, CodecError> {
        if frame.rate() != self.rate {
            return Err(CodecError::RateMismatch {
                expected: self.rate.hz(),
                actual: frame.rate().hz(),
            });
        }
        let per_ms = self.rate.samples_per_ms();
        let valid = [10, 20, 40, 60].iter().any(|ms| frame.len() == ms * per_ms);
        if !valid {
            return Err(CodecError::LengthMismatch {
                expected: 20 * per_ms,
                actual: frame.len(),
            });
        }
        self.inner
            .encode(frame.samples(), packet)
            .map_err(opus_error)
    }
}

/// A mono Opus decoder at one sample rate. Any Opus packet decodes at any
/// rate; libopus resamples internally.
pub struct OpusDecoder {
    inner: Decoder,
    rate: SampleRate,
}

impl std::fmt::Debug for OpusDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusDecoder")
            .field("rate", &self.rate)
            .finish()
    }
}

impl OpusDecoder {
    /// A decoder producing frames at `rate`.
    pub fn new(rate: SampleRate) -> Result<Self, CodecError> {
        let inner = Decoder::new(opus_rate(rate), Channels::Mono).map_err(opus_error)?;
        Ok(OpusDecoder { inner, rate })
    }

    /// The rate of the frames it produces.
    pub fn rate(&self) -> SampleRate {
        self.rate
    }

    /// Decodes one packet into `frame` (its length is the packet's duration).
    /// A corrupt, truncated or empty packet is an error and leaves the
    /// decoder usable for the next one.
    pub fn decode_into(
        &mut self,
        packet: &[u8],
        start: MediaTime,
        frame: &mut PcmFrame,
    ) -> Result<(), CodecError> {
        let packet = Packet::try_from(packet)
            .map_err(|err| CodecError::CorruptOpusPacket(err.to_string()))?;
        let max = MAX_PACKET_MS * self.rate.samples_per_ms();
        self.run(Some(packet), max, false, start, frame)
            .map_err(|err| match err {
                CodecError::Opus(message) => CodecError::CorruptOpusPacket(message),
                other => other,
            })
    }

    /// Fills `frame` with `duration` of concealment for a packet that was lost.
    pub fn conceal_into(
        &mut self,
        duration: FrameDuration,
        start: MediaTime,
        frame: &mut PcmFrame,
    ) -> Result<(), CodecError> {
        let len = self.rate.samples_in(duration);
        self.run(None, len, false, start, frame)
    }

    /// Rebuilds a lost frame of `duration` from the FEC data in the packet
    /// that followed it. When that packet carries no FEC, libopus conceals
    /// instead, so the result is never worse than [`Self::conceal_into`].
    pub fn recover_into(
        &mut self,
        next_packet: &[u8],
        duration: FrameDuration,
        start: MediaTime,
        frame: &mut PcmFrame,
    ) -> Result<(), CodecError> {
        let packet = Packet::try_from(next_packet)
            .map_err(|err| CodecError::CorruptOpusPacket(err.to_string()))?;
        let len = self.rate.samples_in(duration);
        self.run(Some(packet), len, true, start, frame)
    }

    fn run(
        &mut self,
        packet: Option<Packet<'_>>,
        len: usize,
        fec: bool,
        start: MediaTime,
        frame: &mut PcmFrame,
    ) -> Result<(), CodecError> {
        frame.restamp(self.rate, start);
        let buffer = frame.buffer_mut();
        buffer.clear();
        // Grows the frame's buffer once, to the longest packet; later calls reuse it.
        buffer.resize(len, 0);
        let signals = MutSignals::try_from(&mut buffer[..]).map_err(opus_error)?;
        match self.inner.decode(packet, signals, fec) {
            Ok(decoded) => {
                buffer.truncate(decoded);
                Ok(())
            }
            Err(err) => {
                buffer.clear();
                Err(opus_error(err))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A voiced, speech-like test signal: a buzz with harmonics whose pitch
    /// glides, in syllables of about 200 ms (a steady tone would be taken for
    /// background noise by the encoder's voice detector, which then sends no FEC).
    fn voiced(rate: SampleRate, frames: usize) -> Vec<PcmFrame> {
        let len = rate.samples_in(FrameDuration::Ms20);
        let fs = rate.hz() as f64;
        let mut phase = 0.0f64;
        (0..frames)
            .map(|i| {
                let samples = (0..len)
                    .map(|n| {
                        let t = (i * len + n) as f64 / fs;
                        let f0 = 140.0 + 40.0 * (2.0 * std::f64::consts::PI * 1.3 * t).sin();
                        phase += 2.0 * std::f64::consts::PI * f0 / fs;
                        let v: f64 = (1..=8).map(|h| (phase * h as f64).sin() / h as f64).sum();
                        let syllable = (2.0 * std::f64::consts::PI * 2.5 * t).sin().abs();
                        (v * 6000.0 * (0.05 + syllable)) as i16
                    })
                    .collect();
                PcmFrame::new(rate, MediaTime::from_millis(20 * i as u64), samples)
            })
            .collect()
    }

    fn error_energy(a: &[i16], b: &[i16]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
            .sum()
    }

    #[test]
    fn round_trip_keeps_the_signal_at_every_rate() {
        for rate in SampleRate::ALL {
            let mut encoder =
                OpusEncoder::new(rate, OpusEncoderConfig::default()).expect("encoder");
            let mut decoder = OpusDecoder::new(rate).expect("decoder");
            let mut packet = [0u8; MAX_PACKET_BYTES];
            let mut out = PcmFrame::with_capacity(rate, FrameDuration::Ms20);
            let input = voiced(rate, 50);
            let mut energy_in = 0.0;
            let mut energy_out = 0.0;
            for (i, frame) in input.iter().enumerate() {
                let n = encoder.encode(frame, &mut packet).expect("encode");
                assert!(n > 2 && n < 200, "packet of {n} bytes at {rate}");
                decoder
                    .decode_into(&packet[..n], frame.start(), &mut out)
                    .expect("decode");
                assert_eq!(out.len(), frame.len());
                if i > 10 {
                    energy_in += frame
                        .samples()
                        .iter()
                        .map(|&s| f64::from(s).powi(2))
                        .sum::<f64>();
                    energy_out += out
                        .samples()
                        .iter()
                        .map(|&s| f64::from(s).powi(2))
                        .sum::<f64>();
                }
            }
            // A lossy codec: compare loudness, not waveforms (it shifts phase).
            let ratio = energy_out / energy_in;
            assert!(
                (0.5..2.0).contains(&ratio),
                "energy ratio {ratio} at {rate}"
            );
        }
    }

    #[test]
    fn fec_rebuilds_a_lost_frame_better_than_concealment() {
        let rate = SampleRate::Hz16000;
        let config = OpusEncoderConfig {
            bitrate_bps: 32_000,
            expected_loss_percent: 20,
            ..OpusEncoderConfig::default()
        };
        let mut encoder = OpusEncoder::new(rate, config).expect("encoder");
        let input = voiced(rate, 40);
        let packets: Vec<Vec<u8>> = input
            .iter()
            .map(|frame| {
                let mut packet = [0u8; MAX_PACKET_BYTES];
                let n = encoder.encode(frame, &mut packet).expect("encode");
                packet[..n].to_vec()
            })
            .collect();
        let decode_until = |lost: usize| {
            let mut decoder = OpusDecoder::new(rate).expect("decoder");
            let mut out = PcmFrame::with_capacity(rate, FrameDuration::Ms20);
            for packet in &packets[..lost] {
                decoder
                    .decode_into(packet, MediaTime::ZERO, &mut out)
                    .expect("decode");
            }
            decoder
        };
        let (mut plc_error, mut fec_error) = (0.0, 0.0);
        // Lose each frame of a stretch of syllables, one at a time.
        for lost in 20..38 {
            // A clean decode of the lost frame is the yardstick (codec delay included).
            let mut reference = PcmFrame::with_capacity(rate, FrameDuration::Ms20);
            decode_until(lost)
                .decode_into(&packets[lost], MediaTime::ZERO, &mut reference)
                .expect("decode");
            let mut concealed = PcmFrame::with_capacity(rate, FrameDuration::Ms20);
            decode_until(lost)
                .conceal_into(FrameDuration::Ms20, MediaTime::ZERO, &mut concealed)
                .expect("plc");
            let mut recovered = PcmFrame::with_capacity(rate, FrameDuration::Ms20);
            decode_until(lost)
                .recover_into(
                    &packets[lost + 1],
                    FrameDuration::Ms20,
                    MediaTime::ZERO,
                    &mut recovered,
                )
                .expect("fec");
            assert_eq!(concealed.len(), 320);
            assert_eq!(recovered.len(), 320);
            plc_error += error_energy(reference.samples(), concealed.samples());
            fec_error += error_energy(reference.samples(), recovered.samples());
        }
        assert!(
            fec_error < plc_error * 0.5,
            "FEC error {fec_error:.0} should be well under PLC error {plc_error:.0}"
        );
    }

    #[test]
    fn bad_packets_and_frames_are_errors() {
        let mut decoder = OpusDecoder::new(SampleRate::Hz48000).expect("decoder");
        let mut out = PcmFrame::with_capacity(SampleRate::Hz48000, FrameDuration::Ms20);
        assert!(matches!(
            decoder.decode_into(&[], MediaTime::ZERO, &mut out),
            Err(CodecError::CorruptOpusPacket(_))
        ));
        // TOC code 3 (arbitrary frame count) with a missing count byte.
        assert!(matches!(
            decoder.decode_into(&[0x03], MediaTime::ZERO, &mut out),
            Err(CodecError::CorruptOpusPacket(_))
        ));
        let mut encoder =
            OpusEncoder::new(SampleRate::Hz48000, OpusEncoderConfig::default()).expect("encoder");
        let odd = PcmFrame::new(SampleRate::Hz48000, MediaTime::ZERO, vec![0; 700]);
        assert!(matches!(
            encoder.encode(&odd, &mut [0; MAX_PACKET_BYTES]),
            Err(CodecError::LengthMismatch { .. })
        ));
        let wrong_rate =
            PcmFrame::silence(SampleRate::Hz8000, MediaTime::ZERO, FrameDuration::Ms20);
        assert!(matches!(
            encoder.encode(&wrong_rate, &mut [0; MAX_PACKET_BYTES]),
            Err(CodecError::RateMismatch { .. })
        ));
    }
}
