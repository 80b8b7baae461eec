//! The inbound audio stage of one call leg: RTP payloads in, one 20 ms PCM
//! frame at the output rate (16 kHz for VAD and ASR) out per tick.
//!
//! It chains the [`JitterBuffer`], the decoder, loss concealment and
//! resampling, and preallocates every buffer at construction:
//! * G.711 (PCMU/PCMA, 8 kHz clock) decodes to 8 kHz and is resampled. A loss
//!   plays the last frame time-reversed (so its first sample continues the
//!   last one played) under a fade into low-level comfort noise, then comfort
//!   noise at the background level of the call; the first frame after a gap
//!   fades in over 5 ms. No step, no click.
//! * G.722 (16 kHz audio on an 8 kHz RTP clock, RFC 3551 section 4.5.2)
//!   decodes to 16 kHz and is concealed like G.711.
//! * Opus (48 kHz RTP clock) decodes straight at the output rate (libopus
//!   resamples internally). A loss is rebuilt from the next packet's in-band
//!   FEC when the jitter buffer has it, else concealed by libopus's PLC.
//!
//! A corrupt packet is concealed like a lost one and counted, never a panic.
//! Packets must carry 20 ms (the engine's tick and the usual ptime); a packet
//! of any other duration is treated as corrupt.

use thiserror::Error;

use crate::clock::Instant;
use crate::codecs::{
    CodecError, FrameDuration, G711Law, G722Decoder, MediaTime, OpusDecoder, PcmFrame, Resampler,
    SampleRate,
};

use super::jitter::{JitterBuffer, JitterConfig, JitterError, JitterStats, Playout, PushOutcome};

/// Below this RMS (about -50 dBFS) a decoded frame counts as silence, where
/// the jitter buffer may adapt its depth unheard.
const SILENCE_RMS: f32 = 100.0;
/// Comfort noise stays within these RMS levels (about -84 to -47 dBFS).
const COMFORT_NOISE_MIN_RMS: f32 = 2.0;
const COMFORT_NOISE_MAX_RMS: f32 = 150.0;
/// The comfort noise level before any audio is heard (about -60 dBFS).
const COMFORT_NOISE_INITIAL_RMS: f32 = 30.0;
/// How fast the tracked background level may rise per frame (it falls at once).
const NOISE_RISE_PER_FRAME: f32 = 1.005;
/// Fades at the edges of a gap, in milliseconds.
const EDGE_FADE_MS: usize = 5;

/// The codec of an inbound stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboundCodec {
    /// G.711 mu-law (PCMU) or A-law (PCMA), 8 kHz clock.
    G711(G711Law),
    /// Opus, 48 kHz RTP clock, mono.
    Opus,
    /// G.722: 16 kHz audio, 8 kHz RTP clock.
    G722,
}

impl InboundCodec {
    /// The RTP timestamp clock rate.
    pub const fn clock_rate(self) -> u32 {
        match self {
            InboundCodec::G711(_) | InboundCodec::G722 => 8_000,
            InboundCodec::Opus => 48_000,
        }
    }
}

/// What filled a frame from [`InboundAudio::next_frame`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameSource {
    /// A packet, decoded.
    Decoded,
    /// Opus packet-loss concealment (a lost, corrupt or missing packet).
    Concealed,
    /// Opus in-band FEC: the lost frame rebuilt from the next packet.
    Recovered,
    /// G.711 concealment: a fade of the last frame into comfort noise, then comfort noise.
    ComfortNoise,
    /// The jitter buffer is waiting (nothing received yet, or rebuffering):
    /// silence, after a 5 ms fade from the last frame if it was not silent.
    Silence,
}

/// Frame counts, from [`InboundAudio::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct InboundStats {
    /// Frames decoded from packets.
    pub decoded: u64,
    /// Frames of Opus packet-loss concealment.
    pub concealed: u64,
    /// Frames rebuilt from Opus FEC.
    pub recovered: u64,
    /// Frames of G.711 fade and comfort noise.
    pub comfort_noise: u64,
    /// Frames of silence while the jitter buffer waited.
    pub silence: u64,
    /// Packets the decoder refused (corrupt, or not 20 ms); each was concealed.
    pub decode_errors: u64,
}

/// An inbound stage that cannot be built.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum InboundError {
    /// The decoder or resampler refused the settings.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The jitter buffer refused its configuration.
    #[error(transparent)]
    Jitter(#[from] JitterError),
}

enum Decoder {
    /// G.711 or G.722: a fixed number of bytes per 20 ms, concealed with comfort noise.
    Waveform {
        codec: WaveformCodec,
        /// The codec's rate to the output rate; None when they are equal.
        resampler: Option<Box<Resampler>>,
    },
    Opus(OpusDecoder),
}

/// A codec whose packets are a fixed number of bytes per 20 ms.
enum WaveformCodec {
    G711(G711Law),
    G722(Box<G722Decoder>),
}

impl WaveformCodec {
    /// Bytes of a 20 ms payload whose decoded frame is `native_len` samples.
    fn payload_len(&self, native_len: usize) -> usize {
        match self {
            WaveformCodec::G711(_) => native_len,
            WaveformCodec::G722(_) => native_len / 2,
        }
    }

    fn decode_into(&mut self, payload: &[u8], start: MediaTime, frame: &mut PcmFrame) {
        match self {
            WaveformCodec::G711(law) => law.decode_into(payload, start, frame),
            WaveformCodec::G722(decoder) => decoder.decode_into(payload, start, frame),
        }
    }
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decoder::Waveform {
                codec: WaveformCodec::G711(law),
                ..
            } => write!(f, "G711({law:?})"),
            Decoder::Waveform {
                codec: WaveformCodec::G722(_),
                ..
            } => write!(f, "G722"),
            Decoder::Opus(_) => write!(f, "Opus"),
        }
    }
}

/// Jitter buffer, decoder, concealment and resampling for one call leg.
#[derive(Debug)]
pub struct InboundAudio {
    jitter: JitterBuffer,
    decoder: Decoder,
    output_rate: SampleRate,
    /// The frame at the decoder's rate (8 kHz for G.711, the output rate for Opus).
    native: PcmFrame,
    native_rate: SampleRate,
    native_len: usize,
    /// The last native frame played, for fades.
    last: Vec<i16>,
    /// Whether `last` was speech from the stream (decoded or recovered).
    last_was_stream: bool,
    /// Whether `last` was silence.
    last_was_silent: bool,
    frames_out: u64,
    noise_rms: f32,
    noise_state: u32,
    stats: InboundStats,
}

impl InboundAudio {
    /// A stage for `codec` producing frames at `output_rate`, with the
    /// default jitter buffer (20 to 200 ms, 64 slots of 1500 bytes).
    pub fn new(codec: InboundCodec, output_rate: SampleRate) -> Result<Self, InboundError> {
        Self::with_jitter_config(
            codec,
            output_rate,
            JitterConfig::for_clock_rate(codec.clock_rate()),
        )
    }

    /// A stage with a jitter buffer of its own configuration (its clock rate
    /// is set from the codec).
    pub fn with_jitter_config(
        codec: InboundCodec,
        output_rate: SampleRate,
        jitter: JitterConfig,
    ) -> Result<Self, InboundError> {
        let jitter = JitterBuffer::new(JitterConfig {
            clock_rate: codec.clock_rate(),
            ..jitter
        })?;
        let (decoder, native_rate) = match codec {
            InboundCodec::G711(_) | InboundCodec::G722 => {
                let (codec, codec_rate) = match codec {
                    InboundCodec::G711(law) => (WaveformCodec::G711(law), SampleRate::Hz8000),
                    _ => (
                        WaveformCodec::G722(Box::new(G722Decoder::new())),
                        SampleRate::Hz16000,
                    ),
                };
                let resampler = if output_rate == codec_rate {
                    None
                } else {
                    // Boxed once at construction: it is far larger than the Opus decoder.
                    Some(Box::new(Resampler::new(
                        codec_rate,
                        output_rate,
                        FrameDuration::Ms20,
                    )?))
                };
                (Decoder::Waveform { codec, resampler }, codec_rate)
            }
            InboundCodec::Opus => (Decoder::Opus(OpusDecoder::new(output_rate)?), output_rate),
        };
        let native_len = native_rate.samples_in(FrameDuration::Ms20);
        // Opus writes up to a 120 ms packet before its length is checked.
        let mut native = PcmFrame::new(native_rate, MediaTime::ZERO, vec![0; native_len * 6]);
        native.fill_from(native_rate, MediaTime::ZERO, &[]);
        Ok(InboundAudio {
            jitter,
            decoder,
            output_rate,
            native,
            native_rate,
            native_len,
            last: vec![0; native_len],
            last_was_stream: false,
            last_was_silent: true,
            frames_out: 0,
            noise_rms: COMFORT_NOISE_INITIAL_RMS,
            noise_state: 0x9E37_79B9,
            stats: InboundStats::default(),
        })
    }

    /// The rate of the frames it produces.
    pub fn output_rate(&self) -> SampleRate {
        self.output_rate
    }

    /// Takes an RTP payload that arrived at `now`.
    pub fn push_packet(
        &mut self,
        now: Instant,
        seq: u16,
        timestamp: u32,
        payload: &[u8],
    ) -> PushOutcome {
        self.jitter.push(now, seq, timestamp, payload)
    }

    /// Takes an RTP payload with its marker bit (set on a talk spurt's first packet).
    pub fn push_packet_with_marker(
        &mut self,
        now: Instant,
        seq: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> PushOutcome {
        self.jitter
            .push_with_marker(now, seq, timestamp, marker, payload)
    }

    /// Fills `out` with the next 20 ms at the output rate; call once per
    /// tick. Pass a frame made by `PcmFrame::with_capacity(rate, Ms20)` and
    /// reuse it: its buffer is refilled, never reallocated.
    pub fn next_frame(&mut self, now: Instant, out: &mut PcmFrame) -> FrameSource {
        let start =
            MediaTime::from_samples(self.frames_out * self.native_len as u64, self.native_rate);
        self.frames_out += 1;
        let source = self.fill_native(now, start);
        let level = rms(self.native.samples());
        let silent = level < SILENCE_RMS;
        match source {
            FrameSource::Decoded => {
                self.jitter.note_silence(silent);
                self.track_noise(level);
                self.stats.decoded += 1;
            }
            FrameSource::Recovered => self.stats.recovered += 1,
            FrameSource::Concealed => self.stats.concealed += 1,
            FrameSource::ComfortNoise => self.stats.comfort_noise += 1,
            FrameSource::Silence => self.stats.silence += 1,
        }
        self.last.copy_from_slice(self.native.samples());
        self.last_was_stream = matches!(source, FrameSource::Decoded | FrameSource::Recovered);
        self.last_was_silent = silent;
        self.emit(out);
        source
    }

    /// Forgets the stream (a new SSRC): the jitter buffer restarts, the
    /// resampler and concealment start over. The decoder keeps its state.
    pub fn reset(&mut self) {
        self.jitter.reset();
        if let Decoder::Waveform {
            resampler: Some(resampler),
            ..
        } = &mut self.decoder
        {
            resampler.reset();
        }
        self.last.fill(0);
        self.last_was_stream = false;
        self.last_was_silent = true;
    }

    /// The jitter buffer's counters and estimates.
    pub fn jitter_stats(&self) -> JitterStats {
        self.jitter.stats()
    }

    /// Frame counts by source.
    pub fn stats(&self) -> InboundStats {
        self.stats
    }

    /// Leaves exactly one native frame in `self.native` and says what it is.
    fn fill_native(&mut self, now: Instant, start: MediaTime) -> FrameSource {
        let len = self.native_len;
        let rate = self.native_rate;
        let playout = self.jitter.pop(now);
        match (&mut self.decoder, playout) {
            (Decoder::Waveform { codec, .. }, Playout::Packet { payload, .. }) => {
                if payload.len() == codec.payload_len(len) {
                    codec.decode_into(payload, start, &mut self.native);
                    let fade_in = !self.last_was_stream;
                    if fade_in {
                        fade_in_from(self.native.samples_mut(), self.last[len - 1], rate);
                    }
                    return FrameSource::Decoded;
                }
                self.stats.decode_errors += 1;
                self.comfort_noise(start)
            }
            (Decoder::Waveform { .. }, Playout::Lost { .. } | Playout::Filler) => {
                self.comfort_noise(start)
            }
            (Decoder::Opus(decoder), Playout::Packet { payload, .. }) => {
                let decoded = decoder.decode_into(payload, start, &mut self.native);
                if decoded.is_ok() && self.native.len() == len {
                    if self.last_was_silent && !self.last_was_stream {
                        fade_in_from(self.native.samples_mut(), self.last[len - 1], rate);
                    }
                    return FrameSource::Decoded;
                }
                self.stats.decode_errors += 1;
                self.opus_conceal(start)
            }
            (
                Decoder::Opus(decoder),
                Playout::Lost {
                    next_payload: Some(next),
                },
            ) => {
                let recovered =
                    decoder.recover_into(next, FrameDuration::Ms20, start, &mut self.native);
                if recovered.is_ok() && self.native.len() == len {
                    return FrameSource::Recovered;
                }
                self.opus_conceal(start)
            }
            (Decoder::Opus(_), Playout::Lost { next_payload: None } | Playout::Filler) => {
                self.opus_conceal(start)
            }
            (_, Playout::Waiting) => {
                self.silence(start);
                FrameSource::Silence
            }
        }
    }

    fn opus_conceal(&mut self, start: MediaTime) -> FrameSource {
        let len = self.native_len;
        if let Decoder::Opus(decoder) = &mut self.decoder {
            let concealed = decoder.conceal_into(FrameDuration::Ms20, start, &mut self.native);
            if concealed.is_ok() && self.native.len() == len {
                return FrameSource::Concealed;
            }
        }
        // libopus refusing to conceal would be a bug there; stay click-free anyway.
        self.comfort_noise(start)
    }

    /// G.711 concealment: after stream audio, the last frame reversed, faded
    /// into comfort noise; after that, comfort noise.
    fn comfort_noise(&mut self, start: MediaTime) -> FrameSource {
        let len = self.native_len;
        // Refill from `last` only to set the length; every sample is overwritten.
        self.native.fill_from(self.native_rate, start, &self.last);
        let amplitude = self.noise_rms * 3f32.sqrt();
        let fade_from_last = self.last_was_stream;
        let mut state = self.noise_state;
        for (n, sample) in self.native.samples_mut().iter_mut().enumerate() {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let noise = (state as f32 / u32::MAX as f32 * 2.0 - 1.0) * amplitude;
            let value = if fade_from_last {
                // Raised cosine from 1 to 0 over the frame.
                let gain = 0.5 * (1.0 + (std::f32::consts::PI * n as f32 / len as f32).cos());
                f32::from(self.last[len - 1 - n]) * gain + noise * (1.0 - gain)
            } else {
                noise
            };
            *sample = value.round().clamp(-32768.0, 32767.0) as i16;
        }
        self.noise_state = state;
        FrameSource::ComfortNoise
    }

    /// Silence, after a short fade of the last frame (reversed, so it starts
    /// where the last frame ended) when that frame was not silent.
    fn silence(&mut self, start: MediaTime) {
        let len = self.native_len;
        let fade_len = (self.native_rate.samples_per_ms() * EDGE_FADE_MS).min(len);
        self.native.fill_from(self.native_rate, start, &self.last);
        let fade = !self.last_was_silent;
        let samples = self.native.samples_mut();
        samples.reverse();
        for (n, sample) in samples.iter_mut().enumerate() {
            let gain = if fade && n < fade_len {
                0.5 * (1.0 + (std::f32::consts::PI * n as f32 / fade_len as f32).cos())
            } else {
                0.0
            };
            *sample = (f32::from(*sample) * gain).round() as i16;
        }
    }

    /// Tracks the background level: falls at once to a quieter frame, rises slowly.
    fn track_noise(&mut self, level: f32) {
        self.noise_rms = (self.noise_rms * NOISE_RISE_PER_FRAME)
            .min(level)
            .clamp(COMFORT_NOISE_MIN_RMS, COMFORT_NOISE_MAX_RMS);
    }

    fn emit(&mut self, out: &mut PcmFrame) {
        match &mut self.decoder {
            Decoder::Waveform {
                resampler: Some(resampler),
                ..
            } => {
                if resampler.process_into(&self.native, out).is_err() {
                    // Cannot happen with the lengths fixed above; stay in step anyway.
                    let len = self.output_rate.samples_in(FrameDuration::Ms20);
                    fill_zeros(out, self.output_rate, self.native.start(), len);
                }
            }
            _ => out.fill_from(self.native_rate, self.native.start(), self.native.samples()),
        }
    }
}

fn fill_zeros(out: &mut PcmFrame, rate: SampleRate, start: MediaTime, len: usize) {
    const ZEROS: [i16; 960] = [0; 960];
    out.fill_from(rate, start, &ZEROS[..len.min(ZEROS.len())]);
}

/// Crossfades the first 5 ms of `samples` from the constant `from` (the last
/// sample played), so a frame after a gap starts without a step.
fn fade_in_from(samples: &mut [i16], from: i16, rate: SampleRate) {
    let fade_len = (rate.samples_per_ms() * EDGE_FADE_MS).min(samples.len());
    for (n, sample) in samples.iter_mut().take(fade_len).enumerate() {
        let weight = 0.5 * (1.0 - (std::f32::consts::PI * n as f32 / fade_len as f32).cos());
        let mixed = f32::from(from) * (1.0 - weight) + f32::from(*sample) * weight;
        *sample = mixed.round() as i16;
    }
}

fn rms(samples: &[i16]) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    let energy: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (energy / samples.len() as f64).sqrt() as f32
}
