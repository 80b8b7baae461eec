//! The PCM frame: the one unit in which audio moves through CallingBox.
//!
//! A [`PcmFrame`] is mono signed 16-bit PCM at one of the four rates the engine
//! carries ([`SampleRate`]), stamped with its position on the stream's media
//! clock ([`MediaTime`]). Frames own a buffer that is allocated once and then
//! refilled in place, so the per-frame hot path allocates nothing.

use std::time::Duration;

use crate::CodecError;

/// A sample rate the engine carries. Telephony is 8 kHz, speech models want
/// 16 kHz, some TTS voices speak 24 kHz, and Opus/WebRTC run at 48 kHz.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SampleRate {
    /// 8 kHz: G.711 telephony.
    Hz8000,
    /// 16 kHz: wideband; what VAD and ASR consume.
    Hz16000,
    /// 24 kHz: common TTS output.
    Hz24000,
    /// 48 kHz: Opus fullband, WebRTC.
    Hz48000,
}

impl SampleRate {
    /// Every supported rate, lowest first.
    pub const ALL: [SampleRate; 4] = [
        SampleRate::Hz8000,
        SampleRate::Hz16000,
        SampleRate::Hz24000,
        SampleRate::Hz48000,
    ];

    /// Samples per second.
    pub const fn hz(self) -> u32 {
        match self {
            SampleRate::Hz8000 => 8_000,
            SampleRate::Hz16000 => 16_000,
            SampleRate::Hz24000 => 24_000,
            SampleRate::Hz48000 => 48_000,
        }
    }

    /// Samples in one millisecond (every supported rate is a whole number).
    pub const fn samples_per_ms(self) -> usize {
        (self.hz() / 1000) as usize
    }

    /// Samples in a frame of `duration` at this rate.
    pub const fn samples_in(self, duration: FrameDuration) -> usize {
        self.samples_per_ms() * duration.millis() as usize
    }
}

impl TryFrom<u32> for SampleRate {
    type Error = CodecError;

    fn try_from(hz: u32) -> Result<Self, CodecError> {
        match hz {
            8_000 => Ok(SampleRate::Hz8000),
            16_000 => Ok(SampleRate::Hz16000),
            24_000 => Ok(SampleRate::Hz24000),
            48_000 => Ok(SampleRate::Hz48000),
            other => Err(CodecError::UnsupportedRate(other)),
        }
    }
}

impl std::fmt::Display for SampleRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} Hz", self.hz())
    }
}

/// The frame lengths the engine uses: 10 ms (WebRTC, some ASR), 20 ms (RTP
/// ptime, the engine's tick) and 32 ms (Silero VAD's 512-sample window at 16 kHz).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameDuration {
    /// 10 ms.
    Ms10,
    /// 20 ms: one RTP packet at the usual ptime, and the engine's tick.
    Ms20,
    /// 32 ms: one Silero VAD window at 16 kHz (512 samples).
    Ms32,
}

impl FrameDuration {
    /// The length in milliseconds.
    pub const fn millis(self) -> u32 {
        match self {
            FrameDuration::Ms10 => 10,
            FrameDuration::Ms20 => 20,
            FrameDuration::Ms32 => 32,
        }
    }

    /// The length as a [`Duration`].
    pub const fn as_duration(self) -> Duration {
        Duration::from_millis(self.millis() as u64)
    }
}

/// A position on a stream's media clock, in nanoseconds since the stream began.
///
/// Nanoseconds make every frame boundary at every supported rate exact
/// (one 48 kHz sample is not a whole number of microseconds, but a 10 ms
/// frame is), and a `u64` lasts for centuries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MediaTime(u64);

impl MediaTime {
    /// The start of the stream.
    pub const ZERO: MediaTime = MediaTime(0);

    /// A time from nanoseconds since the stream began.
    pub const fn from_nanos(nanos: u64) -> Self {
        MediaTime(nanos)
    }

    /// A time from milliseconds since the stream began.
    pub const fn from_millis(millis: u64) -> Self {
        MediaTime(millis * 1_000_000)
    }

    /// The time of sample number `index` of a stream at `rate`.
    pub const fn from_samples(index: u64, rate: SampleRate) -> Self {
        // u128 so a long stream at 48 kHz cannot overflow the product.
        MediaTime((index as u128 * 1_000_000_000 / rate.hz() as u128) as u64)
    }

    /// Nanoseconds since the stream began.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// The index of the sample at this time on a stream at `rate` (rounded down).
    pub const fn to_samples(self, rate: SampleRate) -> u64 {
        (self.0 as u128 * rate.hz() as u128 / 1_000_000_000) as u64
    }

    /// This time plus `duration`, saturating at the end of the clock.
    pub fn saturating_add(self, duration: Duration) -> Self {
        let nanos = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        MediaTime(self.0.saturating_add(nanos))
    }

    /// The time from `earlier` to this one, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: MediaTime) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// Mono signed 16-bit PCM at a known rate, stamped with its start time.
///
/// Build one per stream stage with [`PcmFrame::with_capacity`] and refill it
/// with [`PcmFrame::fill_from`] or the codecs' `*_into` functions: the buffer
/// keeps its capacity, so a steady stream allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcmFrame {
    samples: Vec<i16>,
    rate: SampleRate,
    start: MediaTime,
}

impl PcmFrame {
    /// An empty frame at `rate` whose buffer holds `duration` without reallocating.
    pub fn with_capacity(rate: SampleRate, duration: FrameDuration) -> Self {
        PcmFrame {
            samples: Vec::with_capacity(rate.samples_in(duration)),
            rate,
            start: MediaTime::ZERO,
        }
    }

    /// A frame owning `samples`.
    pub fn new(rate: SampleRate, start: MediaTime, samples: Vec<i16>) -> Self {
        PcmFrame {
            samples,
            rate,
            start,
        }
    }

    /// A frame of `duration` of digital silence.
    pub fn silence(rate: SampleRate, start: MediaTime, duration: FrameDuration) -> Self {
        PcmFrame::new(rate, start, vec![0; rate.samples_in(duration)])
    }

    /// The samples.
    pub fn samples(&self) -> &[i16] {
        &self.samples
    }

    /// The samples, to change in place (gain, mixing).
    pub fn samples_mut(&mut self) -> &mut [i16] {
        &mut self.samples
    }

    /// The sample rate.
    pub fn rate(&self) -> SampleRate {
        self.rate
    }

    /// When the first sample plays, on the stream's media clock.
    pub fn start(&self) -> MediaTime {
        self.start
    }

    /// Restamps the frame.
    pub fn set_start(&mut self, start: MediaTime) {
        self.start = start;
    }

    /// When the sample after the last one would play.
    pub fn end(&self) -> MediaTime {
        self.start.saturating_add(self.duration())
    }

    /// How long the frame plays.
    pub fn duration(&self) -> Duration {
        Duration::from_nanos(
            (self.samples.len() as u64 * 1_000_000_000) / u64::from(self.rate.hz()),
        )
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// True when the frame holds no samples.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Replaces the content with `samples`, reusing the buffer.
    pub fn fill_from(&mut self, rate: SampleRate, start: MediaTime, samples: &[i16]) {
        self.rate = rate;
        self.start = start;
        self.samples.clear();
        self.samples.extend_from_slice(samples);
    }

    /// Replaces the content with little-endian 16-bit PCM bytes (the WAV and
    /// RTP L16 layout), reusing the buffer.
    pub fn fill_from_le_bytes(
        &mut self,
        rate: SampleRate,
        start: MediaTime,
        bytes: &[u8],
    ) -> Result<(), CodecError> {
        if !bytes.len().is_multiple_of(2) {
            return Err(CodecError::OddByteCount(bytes.len()));
        }
        self.rate = rate;
        self.start = start;
        self.samples.clear();
        self.samples.extend(
            bytes
                .chunks_exact(2)
                .map(|pair| i16::from_le_bytes([pair[0], pair[1]])),
        );
        Ok(())
    }

    /// Appends the samples as little-endian bytes to `out`.
    pub fn write_le_bytes(&self, out: &mut Vec<u8>) {
        out.reserve(self.samples.len() * 2);
        for sample in &self.samples {
            out.extend_from_slice(&sample.to_le_bytes());
        }
    }

    /// Mutable access to the buffer for codecs that write into it.
    pub(crate) fn buffer_mut(&mut self) -> &mut Vec<i16> {
        &mut self.samples
    }

    /// Sets rate and start without touching the samples (codecs write them next).
    pub(crate) fn restamp(&mut self, rate: SampleRate, start: MediaTime) {
        self.rate = rate;
        self.start = start;
    }

    /// Consumes the frame and returns its samples.
    pub fn into_samples(self) -> Vec<i16> {
        self.samples
    }
}

/// Cuts a continuous stream of samples, arriving in chunks of any size, into
/// fixed-length frames with consecutive timestamps.
///
/// The leftover of one push waits for the next; nothing is dropped or padded
/// except by [`Framer::flush`], which pads the last partial frame with silence.
#[derive(Debug, Clone)]
pub struct Framer {
    rate: SampleRate,
    frame_len: usize,
    pending: Vec<i16>,
    next_index: u64,
}

impl Framer {
    /// A framer producing frames of `duration` at `rate`, starting at time zero.
    pub fn new(rate: SampleRate, duration: FrameDuration) -> Self {
        let frame_len = rate.samples_in(duration);
        Framer {
            rate,
            frame_len,
            pending: Vec::with_capacity(frame_len * 2),
            next_index: 0,
        }
    }

    /// Samples per frame.
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// Samples waiting for a whole frame.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Drops the samples waiting for a whole frame (the stream restarts, e.g.
    /// after a barge-in); timestamps go on from where they were.
    pub fn clear(&mut self) {
        self.pending.clear();
    }

    /// Adds samples to the stream.
    pub fn push(&mut self, samples: &[i16]) {
        self.pending.extend_from_slice(samples);
    }

    /// Fills `frame` with the next whole frame, if one is ready.
    pub fn pop_into(&mut self, frame: &mut PcmFrame) -> bool {
        if self.pending.len() < self.frame_len {
            return false;
        }
        let start = MediaTime::from_samples(self.next_index, self.rate);
        frame.fill_from(self.rate, start, &self.pending[..self.frame_len]);
        self.pending.drain(..self.frame_len);
        self.next_index += self.frame_len as u64;
        true
    }

    /// Pads what is left with silence to one last whole frame, if anything is left.
    pub fn flush_into(&mut self, frame: &mut PcmFrame) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        self.pending
            .resize(self.frame_len.max(self.pending.len()), 0);
        self.pop_into(frame)
    }
}

/// Splits a whole recording into frames of `duration`, the last one padded
/// with silence. Convenient for fixtures and tests; streams use [`Framer`].
pub fn split_into_frames(
    samples: &[i16],
    rate: SampleRate,
    duration: FrameDuration,
) -> Vec<PcmFrame> {
    let frame_len = rate.samples_in(duration);
    samples
        .chunks(frame_len)
        .enumerate()
        .map(|(i, chunk)| {
            let mut owned = Vec::with_capacity(frame_len);
            owned.extend_from_slice(chunk);
            owned.resize(frame_len, 0);
            PcmFrame::new(
                rate,
                MediaTime::from_samples((i * frame_len) as u64, rate),
                owned,
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes_match_the_rates() {
        assert_eq!(SampleRate::Hz8000.samples_in(FrameDuration::Ms20), 160);
        assert_eq!(SampleRate::Hz16000.samples_in(FrameDuration::Ms32), 512);
        assert_eq!(SampleRate::Hz48000.samples_in(FrameDuration::Ms10), 480);
        assert_eq!(SampleRate::Hz24000.samples_in(FrameDuration::Ms20), 480);
    }

    #[test]
    fn unsupported_rates_are_errors() {
        assert_eq!(
            SampleRate::try_from(44_100),
            Err(CodecError::UnsupportedRate(44_100))
        );
        for rate in SampleRate::ALL {
            assert_eq!(SampleRate::try_from(rate.hz()), Ok(rate));
        }
    }

    #[test]
    fn media_time_round_trips_sample_indices() {
        for rate in SampleRate::ALL {
            let t = MediaTime::from_samples(12_345_678, rate);
            assert_eq!(t.to_samples(rate), 12_345_678);
        }
        assert_eq!(
            MediaTime::from_samples(160, SampleRate::Hz8000),
            MediaTime::from_millis(20)
        );
    }

    #[test]
    fn framer_cuts_uneven_chunks_into_consecutive_frames() {
        let mut framer = Framer::new(SampleRate::Hz8000, FrameDuration::Ms20);
        let mut frame = PcmFrame::with_capacity(SampleRate::Hz8000, FrameDuration::Ms20);
        let input: Vec<i16> = (0..500).map(|i| i as i16).collect();
        let mut out = Vec::new();
        for chunk in input.chunks(37) {
            framer.push(chunk);
            while framer.pop_into(&mut frame) {
                assert_eq!(frame.len(), 160);
                assert_eq!(
                    frame.start(),
                    MediaTime::from_samples(out.len() as u64, SampleRate::Hz8000)
                );
                out.extend_from_slice(frame.samples());
            }
        }
        assert_eq!(out.len(), 480);
        assert!(framer.flush_into(&mut frame));
        assert_eq!(&frame.samples()[..20], &input[480..]);
        assert!(frame.samples()[20..].iter().all(|&s| s == 0));
        assert_eq!(frame.end(), MediaTime::from_millis(80));
        assert!(!framer.flush_into(&mut frame));
    }

    #[test]
    fn odd_byte_counts_are_rejected() {
        let mut frame = PcmFrame::with_capacity(SampleRate::Hz8000, FrameDuration::Ms20);
        assert_eq!(
            frame.fill_from_le_bytes(SampleRate::Hz8000, MediaTime::ZERO, &[1, 2, 3]),
            Err(CodecError::OddByteCount(3))
        );
        frame
            .fill_from_le_bytes(SampleRate::Hz8000, MediaTime::ZERO, &[1, 0, 0xff, 0xff])
            .expect("even byte count");
        assert_eq!(frame.samples(), &[1, -1]);
        let mut bytes = Vec::new();
        frame.write_le_bytes(&mut bytes);
        assert_eq!(bytes, [1, 0, 0xff, 0xff]);
    }

    #[test]
    fn refilling_keeps_the_buffer() {
        let mut frame = PcmFrame::with_capacity(SampleRate::Hz16000, FrameDuration::Ms20);
        let ptr = frame.samples().as_ptr();
        for _ in 0..10 {
            frame.fill_from(SampleRate::Hz16000, MediaTime::ZERO, &[7; 320]);
        }
        assert_eq!(frame.samples().as_ptr(), ptr);
    }
}
