//! Audio out: the agent's synthesized speech, resampled to the wire codec's
//! rate, encoded, and queued for paced sending, one packet per 20 ms tick.
//!
//! The queue is a fixed ring of encoded packets, allocated once per call, so
//! pushing and sending allocate nothing. A barge-in calls [`OutboundAudio::flush`]
//! and the very next tick sends nothing: every queued frame is gone at once.
//! Each frame remembers which *segment* (a clause of the agent's reply) it
//! belongs to, and the queue counts what was really sent per segment, so the
//! conversation can keep in its history only what the caller heard.

use std::time::Duration;

use callingbox_codecs::opus::MAX_PACKET_BYTES;
use callingbox_codecs::{
    CodecError, FrameDuration, Framer, G711Law, G722Encoder, OpusEncoder, OpusEncoderConfig,
    PcmFrame, Resampler, SampleRate,
};
use thiserror::Error;

/// The codec on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireCodec {
    /// G.711 at 8 kHz (PCMU or PCMA).
    G711(G711Law),
    /// Opus at 48 kHz (WebRTC, modern trunks).
    Opus,
    /// G.722 at 16 kHz (160 bytes per 20 ms).
    G722,
}

impl WireCodec {
    /// The rate the codec's frames are made at.
    pub fn rate(self) -> SampleRate {
        match self {
            WireCodec::G711(_) => SampleRate::Hz8000,
            WireCodec::Opus => SampleRate::Hz48000,
            WireCodec::G722 => SampleRate::Hz16000,
        }
    }

    /// The largest payload one 20 ms frame can encode to.
    fn max_payload(self) -> usize {
        match self {
            WireCodec::G711(_) | WireCodec::G722 => 160,
            // 20 ms at up to 64 kbit/s is 160 bytes; leave room for FEC and bursts.
            WireCodec::Opus => 400,
        }
    }
}

/// Settings of the outbound queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundConfig {
    /// The codec on the wire.
    pub codec: WireCodec,
    /// The rate TTS delivers audio at.
    pub tts_rate: SampleRate,
    /// How much audio the queue holds ahead of playout. TTS runs faster than
    /// real time; this bounds how far ahead it may get (and the memory).
    pub capacity: Duration,
}

impl OutboundConfig {
    /// G.711 mu-law on the wire, TTS at `tts_rate`, 20 s of queue.
    pub fn pcmu(tts_rate: SampleRate) -> Self {
        OutboundConfig {
            codec: WireCodec::G711(G711Law::MuLaw),
            tts_rate,
            capacity: Duration::from_secs(20),
        }
    }
}

/// What can go wrong pushing agent audio.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum OutboundError {
    /// The queue holds `capacity` already; wait for playout to drain it.
    #[error("outbound queue is full")]
    Full,
    /// The codec or resampler refused the audio.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// An identifier of one stretch of agent speech (a clause), chosen by the caller.
pub type SegmentId = u32;

/// One packet to send now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundPacket<'a> {
    /// The encoded 20 ms frame.
    pub payload: &'a [u8],
    /// The segment the frame belongs to.
    pub segment: SegmentId,
    /// First packet after the queue was empty: the RTP marker bit (RFC 3551).
    pub starts_talkspurt: bool,
}

/// What a flush threw away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flushed {
    /// Frames dropped from the queue.
    pub frames: usize,
}

enum Encoder {
    G711(G711Law),
    Opus(Box<OpusEncoder>),
    G722(Box<G722Encoder>),
}

/// The outbound audio of one call leg.
pub struct OutboundAudio {
    codec: WireCodec,
    framer: Framer,
    resampler: Option<Resampler>,
    encoder: Encoder,
    tts_frame: PcmFrame,
    wire_frame: PcmFrame,
    scratch: Vec<u8>,
    /// Ring of encoded frames: slot i holds `lengths[i]` bytes at `i * slot_size`.
    payloads: Vec<u8>,
    lengths: Vec<u16>,
    segments: Vec<SegmentId>,
    slot_size: usize,
    head: usize,
    queued: usize,
    pending_segment: SegmentId,
    was_idle: bool,
    last_sent_segment: Option<SegmentId>,
    sent_in_last_segment: usize,
}

impl std::fmt::Debug for OutboundAudio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundAudio")
            .field("codec", &self.codec)
            .field("queued", &self.queued)
            .finish()
    }
}

impl OutboundAudio {
    /// An empty queue; allocates everything it will ever use.
    pub fn new(config: OutboundConfig) -> Result<Self, OutboundError> {
        let wire_rate = config.codec.rate();
        let resampler = (config.tts_rate != wire_rate)
            .then(|| Resampler::new(config.tts_rate, wire_rate, FrameDuration::Ms20))
            .transpose()?;
        let encoder = match config.codec {
            WireCodec::G711(law) => Encoder::G711(law),
            WireCodec::G722 => Encoder::G722(Box::new(G722Encoder::new())),
            WireCodec::Opus => Encoder::Opus(Box::new(OpusEncoder::new(
                SampleRate::Hz48000,
                OpusEncoderConfig::default(),
            )?)),
        };
        let slots = (config.capacity.as_millis() / 20).max(1) as usize;
        let slot_size = config.codec.max_payload();
        Ok(OutboundAudio {
            codec: config.codec,
            framer: Framer::new(config.tts_rate, FrameDuration::Ms20),
            resampler,
            encoder,
            tts_frame: PcmFrame::with_capacity(config.tts_rate, FrameDuration::Ms20),
            wire_frame: PcmFrame::with_capacity(wire_rate, FrameDuration::Ms20),
            scratch: vec![0; MAX_PACKET_BYTES],
            payloads: vec![0; slots * slot_size],
            lengths: vec![0; slots],
            segments: vec![0; slots],
            slot_size,
            head: 0,
            queued: 0,
            pending_segment: 0,
            was_idle: true,
            last_sent_segment: None,
            sent_in_last_segment: 0,
        })
    }

    /// Frames waiting to be sent.
    pub fn queued_frames(&self) -> usize {
        self.queued
    }

    /// Audio waiting to be sent.
    pub fn queued_duration(&self) -> Duration {
        Duration::from_millis(20 * self.queued as u64)
    }

    /// Room left, in frames.
    pub fn free_frames(&self) -> usize {
        self.lengths.len() - self.queued
    }

    /// Adds TTS audio for `segment`. Whole 20 ms frames are encoded and queued
    /// now; a remainder waits for more audio or for [`Self::end_segment`].
    /// On [`OutboundError::Full`] nothing of this chunk is queued: push it
    /// again when playout has made room.
    pub fn push(&mut self, samples: &[i16], segment: SegmentId) -> Result<(), OutboundError> {
        let frame_len = self.framer.frame_len();
        let whole_frames = (self.framer.pending_len() + samples.len()) / frame_len;
        if whole_frames > self.free_frames() {
            return Err(OutboundError::Full);
        }
        self.pending_segment = segment;
        self.framer.push(samples);
        while self.framer.pop_into(&mut self.tts_frame) {
            self.enqueue_tts_frame()?;
        }
        Ok(())
    }

    /// Ends a segment: its last partial frame is padded with silence and queued.
    pub fn end_segment(&mut self) -> Result<(), OutboundError> {
        if self.framer.pending_len() == 0 {
            return Ok(());
        }
        if self.free_frames() == 0 {
            return Err(OutboundError::Full);
        }
        if self.framer.flush_into(&mut self.tts_frame) {
            self.enqueue_tts_frame()?;
        }
        Ok(())
    }

    fn enqueue_tts_frame(&mut self) -> Result<(), OutboundError> {
        let frame = match self.resampler.as_mut() {
            Some(resampler) => {
                resampler.process_into(&self.tts_frame, &mut self.wire_frame)?;
                &self.wire_frame
            }
            None => &self.tts_frame,
        };
        let len = match &mut self.encoder {
            Encoder::G711(law) => {
                let codes = &mut self.scratch[..frame.len()];
                law.encode(frame.samples(), codes)?;
                frame.len()
            }
            Encoder::Opus(encoder) => encoder.encode(frame, &mut self.scratch)?,
            Encoder::G722(encoder) => encoder.encode(frame.samples(), &mut self.scratch)?,
        };
        // An Opus packet larger than a slot (never at our bitrate) is cut to
        // silence rather than corrupting its neighbours.
        let len = if len > self.slot_size { 0 } else { len };
        let slot = (self.head + self.queued) % self.lengths.len();
        let at = slot * self.slot_size;
        self.payloads[at..at + len].copy_from_slice(&self.scratch[..len]);
        self.lengths[slot] = len as u16;
        self.segments[slot] = self.pending_segment;
        self.queued += 1;
        Ok(())
    }

    /// The packet to send on this tick, if any agent audio is queued.
    pub fn next_packet(&mut self) -> Option<OutboundPacket<'_>> {
        if self.queued == 0 {
            self.was_idle = true;
            return None;
        }
        let slot = self.head;
        self.head = (self.head + 1) % self.lengths.len();
        self.queued -= 1;
        let segment = self.segments[slot];
        if self.last_sent_segment == Some(segment) {
            self.sent_in_last_segment += 1;
        } else {
            self.last_sent_segment = Some(segment);
            self.sent_in_last_segment = 1;
        }
        let starts_talkspurt = std::mem::replace(&mut self.was_idle, false);
        let at = slot * self.slot_size;
        Some(OutboundPacket {
            payload: &self.payloads[at..at + self.lengths[slot] as usize],
            segment,
            starts_talkspurt,
        })
    }

    /// The segment being played and how much of it was sent so far.
    pub fn playing(&self) -> Option<(SegmentId, Duration)> {
        self.last_sent_segment.map(|segment| {
            (
                segment,
                Duration::from_millis(20 * self.sent_in_last_segment as u64),
            )
        })
    }

    /// Drops every queued frame (barge-in): the next tick sends nothing.
    pub fn flush(&mut self) -> Flushed {
        let frames = self.queued;
        self.queued = 0;
        self.framer.clear();
        self.was_idle = true;
        if let Some(resampler) = self.resampler.as_mut() {
            resampler.reset();
        }
        Flushed { frames }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: SampleRate, millis: usize) -> Vec<i16> {
        let fs = f64::from(rate.hz());
        (0..rate.samples_per_ms() * millis)
            .map(|n| (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * n as f64 / fs).sin()) as i16)
            .collect()
    }

    #[test]
    fn audio_is_sent_one_frame_per_tick_in_order() {
        let mut out = OutboundAudio::new(OutboundConfig::pcmu(SampleRate::Hz16000)).expect("new");
        out.push(&tone(SampleRate::Hz16000, 100), 1).expect("push");
        out.push(&tone(SampleRate::Hz16000, 50), 2).expect("push");
        out.end_segment().expect("end");
        assert_eq!(out.queued_frames(), 8);
        let mut segments = Vec::new();
        let mut first = true;
        while let Some(packet) = out.next_packet() {
            assert_eq!(packet.payload.len(), 160);
            assert_eq!(packet.starts_talkspurt, first);
            first = false;
            segments.push(packet.segment);
        }
        // 100 ms of segment 1 plus 50 ms of segment 2 padded to 60 ms.
        assert_eq!(segments, [1, 1, 1, 1, 1, 2, 2, 2]);
        assert_eq!(out.playing(), Some((2, Duration::from_millis(60))));
    }

    #[test]
    fn flush_empties_the_queue_at_once() {
        let mut out = OutboundAudio::new(OutboundConfig::pcmu(SampleRate::Hz24000)).expect("new");
        out.push(&tone(SampleRate::Hz24000, 2_000), 7)
            .expect("push");
        assert!(out.next_packet().is_some());
        assert_eq!(out.flush(), Flushed { frames: 99 });
        assert!(out.next_packet().is_none());
        out.push(&tone(SampleRate::Hz24000, 40), 8).expect("push");
        let packet = out.next_packet().expect("new speech plays");
        assert!(packet.starts_talkspurt);
        assert_eq!(packet.segment, 8);
    }

    #[test]
    fn a_full_queue_refuses_without_losing_what_it_holds() {
        let config = OutboundConfig {
            capacity: Duration::from_millis(100),
            ..OutboundConfig::pcmu(SampleRate::Hz8000)
        };
        let mut out = OutboundAudio::new(config).expect("new");
        out.push(&tone(SampleRate::Hz8000, 80), 1).expect("fits");
        assert_eq!(
            out.push(&tone(SampleRate::Hz8000, 40), 1),
            Err(OutboundError::Full)
        );
        assert_eq!(out.queued_frames(), 4);
        assert!(out.next_packet().is_some());
        out.push(&tone(SampleRate::Hz8000, 40), 1)
            .expect("room again");
        assert_eq!(out.queued_frames(), 5);
    }

    #[test]
    fn opus_frames_decode_back_to_speech() {
        let config = OutboundConfig {
            codec: WireCodec::Opus,
            ..OutboundConfig::pcmu(SampleRate::Hz24000)
        };
        let mut out = OutboundAudio::new(config).expect("new");
        out.push(&tone(SampleRate::Hz24000, 200), 1).expect("push");
        let mut decoder =
            callingbox_codecs::OpusDecoder::new(SampleRate::Hz48000).expect("decoder");
        let mut frame = PcmFrame::with_capacity(SampleRate::Hz48000, FrameDuration::Ms20);
        let mut energy = 0.0;
        while let Some(packet) = out.next_packet() {
            decoder
                .decode_into(
                    packet.payload,
                    callingbox_codecs::MediaTime::ZERO,
                    &mut frame,
                )
                .expect("decodes");
            assert_eq!(frame.len(), 960);
            energy += frame
                .samples()
                .iter()
                .map(|&s| f64::from(s).powi(2))
                .sum::<f64>();
        }
        assert!(energy > 1e9, "decoded audio is silent: {energy}");
    }
}
