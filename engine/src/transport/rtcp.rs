//! RTCP (RFC 3550, section 6) for a call's RTP session, sans-IO.
//!
//! [`RtcpSession`] is one participant of a two-party session: it counts
//! what we send (the sender info of our SRs), keeps the reception
//! statistics of the peer's stream (RFC 3550 A.1 sequence tracking, A.3
//! loss, A.8 interarrival jitter), schedules compound reports at the RFC's
//! randomised interval (A.7: at least 5 s, 2.5 s before the first, scaled
//! by a uniform factor in [0.5, 1.5] and divided by e - 3/2), writes them
//! (SR when we sent since the report before last, else RR, then SDES
//! CNAME; BYE at hang-up), and reads the peer's compound packets: a
//! packet that fails the A.2 validity checks is dropped whole; an SR's
//! NTP time becomes the LSR of our next report block, and a report block
//! about our stream gives the peer's view of our loss and jitter and,
//! from its LSR/DLSR, the round-trip time (section 6.4.1).
//!
//! Time is an input: every call takes the engine [`Instant`]; the NTP
//! wall clock is that instant through a [`WallClock`] anchor taken once
//! when the session starts, so tests run on virtual time. Per RTP packet
//! the session does a few integer operations and never allocates;
//! reports are written into the caller's buffer.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use thiserror::Error;

use crate::clock::Instant;

/// RTCP sender report.
pub const PT_SR: u8 = 200;
/// RTCP receiver report.
pub const PT_RR: u8 = 201;
/// RTCP source description.
pub const PT_SDES: u8 = 202;
/// RTCP goodbye.
pub const PT_BYE: u8 = 203;
/// RTCP application-defined.
pub const PT_APP: u8 = 204;

/// The largest compound packet we write: SR with one block (52 bytes),
/// SDES with a 255-byte CNAME (268) and BYE (8).
pub const REPORT_MAX: usize = 52 + 268 + 8;

/// Bytes of IP and UDP headers counted in the average RTCP packet size
/// (RFC 3550, section 6.2: "including lower-layer headers").
const LOWER_LAYER_OVERHEAD: f64 = 28.0;
/// RTCP's share of the session bandwidth: 5% of a 20 ms G.711 stream
/// with its RTP, UDP and IPv4 headers (50 x 200 bytes/s, both directions
/// counted as one session bandwidth per RFC 3550 section 6.2), in bytes/s.
const RTCP_BANDWIDTH: f64 = 0.05 * 50.0 * 200.0;
/// RFC 3550 A.7: the minimum interval, halved before the first report.
const RTCP_MIN_TIME: f64 = 5.0;
/// RFC 3550 A.7: e - 3/2, the compensation for timer reconsideration.
const COMPENSATION: f64 = std::f64::consts::E - 1.5;
/// RFC 3550 A.1: sequence jumps up to this are a loss, not a restart.
const MAX_DROPOUT: u16 = 3_000;
/// RFC 3550 A.1: sequence steps back up to this are reordering.
const MAX_MISORDER: u16 = 100;
/// Seconds between 1900 (NTP) and 1970 (Unix).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// A compound RTCP packet that fails the RFC 3550 A.2 checks (dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RtcpError {
    /// Shorter than a header, or a packet's length runs past the datagram.
    #[error("RTCP packet too short for its length")]
    TooShort,
    /// A packet is not version 2.
    #[error("RTCP version {0}, expected 2")]
    Version(u8),
    /// The first packet is not an SR or RR, or has padding.
    #[error("a compound RTCP packet must start with an SR or RR without padding")]
    BadFirstPacket,
    /// Padding on a packet that is not the last one, or a bad count.
    #[error("bad RTCP padding")]
    Padding,
    /// An SR, RR or BYE shorter than its count of blocks says.
    #[error("RTCP report shorter than its report count")]
    BadCount,
}

/// A 64-bit NTP timestamp: seconds since 1900 in the high 32 bits, the
/// fraction in the low 32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct NtpTime(pub u64);

impl NtpTime {
    /// The NTP time of a system time (zero before 1970).
    pub fn from_system(time: SystemTime) -> NtpTime {
        let since_unix = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        NtpTime(0).add(since_unix + Duration::from_secs(NTP_UNIX_OFFSET))
    }

    /// The middle 32 bits, as LSR and the RTT arithmetic use them (units
    /// of 1/65536 s).
    pub fn middle(self) -> u32 {
        (self.0 >> 16) as u32
    }

    fn add(self, elapsed: Duration) -> NtpTime {
        let fraction = (u64::from(elapsed.subsec_nanos()) << 32) / 1_000_000_000;
        NtpTime(
            self.0
                .wrapping_add(elapsed.as_secs() << 32)
                .wrapping_add(fraction),
        )
    }
}

/// Maps engine instants to NTP wall-clock time: the wall clock read once
/// at `at`, then advanced by the monotonic clock (so a wall-clock step
/// mid-call does not break RTT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallClock {
    /// The engine instant of the reading.
    pub at: Instant,
    /// The NTP time at `at`.
    pub ntp: NtpTime,
}

impl WallClock {
    /// The NTP time at `now`.
    pub fn ntp_at(&self, now: Instant) -> NtpTime {
        self.ntp.add(now.saturating_since(self.at))
    }
}

/// Converts a span in 1/65536 s (LSR/DLSR units) to a duration.
fn from_ntp_short(units: u32) -> Duration {
    Duration::from_micros(u64::from(units) * 1_000_000 / 65_536)
}

/// Converts a duration to 1/65536 s, saturating.
fn to_ntp_short(span: Duration) -> u32 {
    let units = span.as_micros() * 65_536 / 1_000_000;
    u32::try_from(units).unwrap_or(u32::MAX)
}

/// One reception report block (RFC 3550, section 6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    /// The source this block is about.
    pub ssrc: u32,
    /// Packets lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Packets lost since the start (24-bit signed: duplicates can make it negative).
    pub cumulative_lost: i32,
    /// The extended highest sequence number received.
    pub highest_sequence: u32,
    /// Interarrival jitter in timestamp units.
    pub jitter: u32,
    /// The middle 32 bits of the NTP time of the last SR from the source (0: none).
    pub last_sr: u32,
    /// Since that SR, in 1/65536 s.
    pub delay_since_last_sr: u32,
}

impl ReportBlock {
    fn read(bytes: &[u8]) -> ReportBlock {
        let word = |at: usize| {
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let lost = word(4) & 0x00FF_FFFF;
        // Sign-extend the 24-bit count.
        let cumulative_lost = ((lost << 8) as i32) >> 8;
        ReportBlock {
            ssrc: word(0),
            fraction_lost: bytes[4],
            cumulative_lost,
            highest_sequence: word(8),
            jitter: word(12),
            last_sr: word(16),
            delay_since_last_sr: word(20),
        }
    }

    fn write(&self, out: &mut [u8]) {
        out[0..4].copy_from_slice(&self.ssrc.to_be_bytes());
        let lost = (self.cumulative_lost.clamp(-0x80_0000, 0x7F_FFFF) as u32) & 0x00FF_FFFF;
        out[4..8].copy_from_slice(&(lost | (u32::from(self.fraction_lost) << 24)).to_be_bytes());
        out[8..12].copy_from_slice(&self.highest_sequence.to_be_bytes());
        out[12..16].copy_from_slice(&self.jitter.to_be_bytes());
        out[16..20].copy_from_slice(&self.last_sr.to_be_bytes());
        out[20..24].copy_from_slice(&self.delay_since_last_sr.to_be_bytes());
    }
}

/// The sender information of an SR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderInfo {
    /// When the report was sent.
    pub ntp: NtpTime,
    /// The same instant on the media clock.
    pub rtp_timestamp: u32,
    /// RTP packets sent since the start (wraps).
    pub packets: u32,
    /// RTP payload octets sent since the start (wraps).
    pub octets: u32,
}

/// One packet of a compound RTCP packet, borrowing the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcpPacket<'a> {
    /// A sender report.
    SenderReport {
        /// The sender.
        ssrc: u32,
        /// What it sent.
        info: SenderInfo,
        /// Its reception reports.
        blocks: ReportBlocks<'a>,
    },
    /// A receiver report.
    ReceiverReport {
        /// The reporter.
        ssrc: u32,
        /// Its reception reports.
        blocks: ReportBlocks<'a>,
    },
    /// A source description (CNAME ...), not read further.
    SourceDescription,
    /// The source(s) leave the session.
    Bye {
        /// The first source leaving.
        ssrc: Option<u32>,
    },
    /// APP or a type we do not read.
    Other(u8),
}

/// The report blocks of an SR or RR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlocks<'a>(&'a [u8]);

impl<'a> ReportBlocks<'a> {
    /// How many blocks.
    pub fn len(&self) -> usize {
        self.0.len() / 24
    }

    /// No blocks.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The blocks in order.
    pub fn iter(&self) -> impl Iterator<Item = ReportBlock> + 'a {
        self.0.chunks_exact(24).map(ReportBlock::read)
    }
}

/// Checks a compound packet against RFC 3550 A.2 (version 2 throughout,
/// SR or RR first without padding, padding only on the last packet, the
/// lengths adding up to the datagram, counts fitting their packets).
pub fn validate_compound(datagram: &[u8]) -> Result<(), RtcpError> {
    if datagram.len() < 8 {
        return Err(RtcpError::TooShort);
    }
    let first = datagram[0];
    if first >> 6 != 2 {
        return Err(RtcpError::Version(first >> 6));
    }
    if first & 0x20 != 0 || !matches!(datagram[1], PT_SR | PT_RR) {
        return Err(RtcpError::BadFirstPacket);
    }
    let mut at = 0;
    while at < datagram.len() {
        let header = datagram.get(at..at + 4).ok_or(RtcpError::TooShort)?;
        if header[0] >> 6 != 2 {
            return Err(RtcpError::Version(header[0] >> 6));
        }
        let length = 4 * (usize::from(u16::from_be_bytes([header[2], header[3]])) + 1);
        let packet = datagram.get(at..at + length).ok_or(RtcpError::TooShort)?;
        let last = at + length == datagram.len();
        let mut body_end = length;
        if header[0] & 0x20 != 0 {
            let padding = usize::from(packet[length - 1]);
            if !last || padding == 0 || padding > length - 4 {
                return Err(RtcpError::Padding);
            }
            body_end -= padding;
        }
        let count = usize::from(header[0] & 0x1F);
        let needed = match header[1] {
            PT_SR => 4 + 4 + 20 + 24 * count,
            PT_RR => 4 + 4 + 24 * count,
            PT_BYE => 4 + 4 * count,
            _ => 4,
        };
        if body_end < needed {
            return Err(RtcpError::BadCount);
        }
        at += length;
    }
    Ok(())
}

/// The packets of a compound packet that passed [`validate_compound`].
pub fn packets(datagram: &[u8]) -> impl Iterator<Item = RtcpPacket<'_>> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let header = datagram.get(at..at + 4)?;
        let length = 4 * (usize::from(u16::from_be_bytes([header[2], header[3]])) + 1);
        let packet = datagram.get(at..at + length)?;
        at += length;
        let count = usize::from(header[0] & 0x1F);
        let word = |offset: usize| {
            packet
                .get(offset..offset + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        Some(match header[1] {
            PT_SR => RtcpPacket::SenderReport {
                ssrc: word(4)?,
                info: SenderInfo {
                    ntp: NtpTime((u64::from(word(8)?) << 32) | u64::from(word(12)?)),
                    rtp_timestamp: word(16)?,
                    packets: word(20)?,
                    octets: word(24)?,
                },
                blocks: ReportBlocks(packet.get(28..28 + 24 * count)?),
            },
            PT_RR => RtcpPacket::ReceiverReport {
                ssrc: word(4)?,
                blocks: ReportBlocks(packet.get(8..8 + 24 * count)?),
            },
            PT_SDES => RtcpPacket::SourceDescription,
            PT_BYE => RtcpPacket::Bye {
                ssrc: if count > 0 { word(4) } else { None },
            },
            other => RtcpPacket::Other(other),
        })
    })
}

/// Reception statistics of one source's stream (RFC 3550 A.1, A.3, A.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReceptionStats {
    ssrc: Option<u32>,
    base_seq: u16,
    max_seq: u16,
    cycles: u32,
    bad_seq: u32,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// The previous relative transit time (timestamp units).
    transit: Option<u32>,
    /// The jitter estimate, times 16 (A.8's integer form).
    jitter_q4: u32,
    /// The source changed its SSRC this many times.
    ssrc_changes: u64,
}

impl ReceptionStats {
    /// Starts over on `seq` (a new source, or one that restarted).
    fn init(&mut self, seq: u16) {
        self.base_seq = seq;
        self.max_seq = seq;
        self.bad_seq = u32::from(u16::MAX) + 2;
        self.cycles = 0;
        self.received = 0;
        self.expected_prior = 0;
        self.received_prior = 0;
        self.transit = None;
        self.jitter_q4 = 0;
    }

    /// One packet of `ssrc` with `seq` and `timestamp`, arriving at
    /// `arrival` (the receiver's clock in timestamp units); `audio`
    /// packets feed the jitter (RFC 4733 events repeat their timestamp).
    /// The source being known from signalling, there is no probation.
    pub fn on_packet(&mut self, ssrc: u32, seq: u16, timestamp: u32, arrival: u32, audio: bool) {
        match self.ssrc {
            Some(current) if current == ssrc => {
                if !self.update_seq(seq) {
                    return;
                }
            }
            previous => {
                if previous.is_some() {
                    self.ssrc_changes += 1;
                }
                self.ssrc = Some(ssrc);
                self.init(seq);
                self.received = 1;
            }
        }
        if audio {
            let transit = arrival.wrapping_sub(timestamp);
            if let Some(previous) = self.transit {
                let d = i64::from((transit.wrapping_sub(previous) as i32).unsigned_abs());
                let jitter = i64::from(self.jitter_q4);
                let next = jitter + d - ((jitter + 8) >> 4);
                self.jitter_q4 = u32::try_from(next.max(0)).unwrap_or(u32::MAX);
            }
            self.transit = Some(transit);
        }
    }

    /// RFC 3550 A.1 `update_seq` (without probation): false when the
    /// packet is a restart candidate not counted.
    fn update_seq(&mut self, seq: u16) -> bool {
        let udelta = seq.wrapping_sub(self.max_seq);
        if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles = self.cycles.wrapping_add(1 << 16);
            }
            self.max_seq = seq;
        } else if udelta <= u16::MAX - MAX_MISORDER {
            // A very large jump: twice in a row is the source restarting.
            if u32::from(seq) == self.bad_seq {
                self.init(seq);
            } else {
                self.bad_seq = (u32::from(seq) + 1) & 0xFFFF;
                return false;
            }
        }
        // Else duplicate or reordered: counted, max unchanged.
        self.received += 1;
        true
    }

    /// The source, once a packet came.
    pub fn ssrc(&self) -> Option<u32> {
        self.ssrc
    }

    /// The extended highest sequence number received.
    pub fn extended_max(&self) -> u32 {
        self.cycles.wrapping_add(u32::from(self.max_seq))
    }

    /// Packets expected (highest minus first, plus one).
    pub fn expected(&self) -> u64 {
        if self.ssrc.is_none() {
            return 0;
        }
        u64::from(self.cycles) + u64::from(self.max_seq) - u64::from(self.base_seq) + 1
    }

    /// Packets received (duplicates included, as A.3 counts them).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Cumulative packets lost (negative with duplicates).
    pub fn lost(&self) -> i64 {
        self.expected() as i64 - self.received as i64
    }

    /// The interarrival jitter in timestamp units.
    pub fn jitter(&self) -> u32 {
        self.jitter_q4 >> 4
    }

    /// The report block about this source (moves the interval's start).
    fn report(&mut self, last_sr: u32, delay_since_last_sr: u32) -> Option<ReportBlock> {
        let ssrc = self.ssrc?;
        let expected = self.expected();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval as i64).min(255) as u8
        };
        Some(ReportBlock {
            ssrc,
            fraction_lost,
            cumulative_lost: self.lost().clamp(-0x80_0000, 0x7F_FFFF) as i32,
            highest_sequence: self.extended_max(),
            jitter: self.jitter(),
            last_sr,
            delay_since_last_sr,
        })
    }
}

/// What RTCP saw over a call (part of the call's
/// [`RtpStats`](super::rtp::RtpStats)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RtcpStats {
    /// Compound reports we sent (BYE included).
    pub reports_sent: u64,
    /// Of which sender reports (we had sent audio since the report before).
    pub sender_reports_sent: u64,
    /// Reports we could not send (socket error).
    pub send_errors: u64,
    /// Valid compound packets received from the peer.
    pub reports_received: u64,
    /// Of which carried a sender report.
    pub sender_reports_received: u64,
    /// Datagrams dropped: failed the RFC 3550 A.2 checks.
    pub bad_packets: u64,
    /// Valid packets from another address than the learned peer (dropped).
    pub foreign_source: u64,
    /// The peer sent an RTCP BYE.
    pub bye_received: bool,
    /// Our view of the peer's stream: packets expected.
    pub expected: u64,
    /// Our view: packets lost (cumulative; negative with duplicates).
    pub lost: i64,
    /// Our view: the interarrival jitter at the end.
    pub jitter: Duration,
    /// Our view: the highest interarrival jitter of the call.
    pub jitter_max: Duration,
    /// Our view: how often the peer's SSRC changed.
    pub ssrc_changes: u64,
    /// The peer's view of our stream, from its last report block about
    /// us: the fraction lost in 1/256.
    pub remote_fraction_lost: Option<u8>,
    /// The peer's view: packets of ours lost (cumulative).
    pub remote_lost: Option<i32>,
    /// The peer's view: the jitter of our stream.
    pub remote_jitter: Option<Duration>,
    /// The last round-trip time (RFC 3550 6.4.1: arrival - LSR - DLSR).
    pub rtt: Option<Duration>,
    /// The highest round-trip time of the call.
    pub rtt_max: Option<Duration>,
}

/// How an [`RtcpSession`] starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtcpConfig {
    /// Our SSRC (the one our RTP uses).
    pub ssrc: u32,
    /// Our CNAME (RFC 7022: random per call is fine); at most 255 bytes used.
    pub cname: String,
    /// The media clock rate (8000 for G.711).
    pub clock_rate: u32,
    /// Where to send until the peer's first valid RTCP packet.
    pub remote: SocketAddr,
    /// The NTP wall clock at an instant.
    pub wall_clock: WallClock,
    /// Seeds the interval randomisation.
    pub seed: u64,
}

/// One call's RTCP, sans-IO (see the module doc).
#[derive(Debug, Clone)]
pub struct RtcpSession {
    config: RtcpConfig,
    rng: u64,
    next_report: Instant,
    /// Average compound size in bytes with lower-layer headers (A.7 avg_rtcp_size).
    average_size: f64,
    peer: Option<SocketAddr>,
    sent_packets: u32,
    sent_octets: u32,
    /// The timestamp and send time of our last RTP packet.
    last_sent: Option<(Instant, u32)>,
    sent_since_report: bool,
    sent_before_report: bool,
    received_since_report: bool,
    reception: ReceptionStats,
    /// The peer's last SR: the middle of its NTP time, and when it came.
    last_peer_sr: Option<(u32, Instant)>,
    stats: RtcpStats,
}

impl RtcpSession {
    /// A session starting at `now`; the first report is due after the
    /// initial interval (half the minimum, randomised).
    pub fn new(config: RtcpConfig, now: Instant) -> RtcpSession {
        let mut session = RtcpSession {
            // Any seed, zero included, gives a non-zero xorshift state.
            rng: config.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            config,
            next_report: now,
            // An SR with one block and a short SDES.
            average_size: 52.0 + 24.0 + LOWER_LAYER_OVERHEAD,
            peer: None,
            sent_packets: 0,
            sent_octets: 0,
            last_sent: None,
            sent_since_report: false,
            sent_before_report: false,
            received_since_report: false,
            reception: ReceptionStats::default(),
            last_peer_sr: None,
            stats: RtcpStats::default(),
        };
        session.next_report = now + session.interval(true);
        session
    }

    /// Where our reports go: the peer's RTCP source once one came (symmetric
    /// RTCP behind NAT), the signalled address before.
    pub fn destination(&self) -> SocketAddr {
        self.peer.unwrap_or(self.config.remote)
    }

    /// Sends to `remote` from now on (a re-INVITE moved the peer); its
    /// reports are learned again from the next one that comes.
    pub fn set_remote(&mut self, remote: SocketAddr) {
        if remote != self.config.remote {
            self.config.remote = remote;
            self.peer = None;
        }
    }

    /// When the next report is due.
    pub fn next_report(&self) -> Instant {
        self.next_report
    }

    /// The reception statistics of the peer's stream.
    pub fn reception(&self) -> &ReceptionStats {
        &self.reception
    }

    /// The counters.
    pub fn stats(&self) -> RtcpStats {
        RtcpStats {
            expected: self.reception.expected(),
            lost: self.reception.lost(),
            jitter: self.samples(self.reception.jitter()),
            ssrc_changes: self.reception.ssrc_changes,
            ..self.stats
        }
    }

    /// Counts a report the driver could not send.
    pub fn count_send_error(&mut self) {
        self.stats.send_errors += 1;
    }

    /// We sent an RTP packet with `timestamp` and `payload_len` octets at `now`.
    pub fn on_rtp_sent(&mut self, now: Instant, timestamp: u32, payload_len: usize) {
        self.sent_packets = self.sent_packets.wrapping_add(1);
        self.sent_octets = self.sent_octets.wrapping_add(payload_len as u32);
        self.last_sent = Some((now, timestamp));
        self.sent_since_report = true;
    }

    /// An RTP packet of the peer's (already accepted by the RTP receiver)
    /// arrived at `now`; `audio` is false for telephone events.
    pub fn on_rtp_received(
        &mut self,
        now: Instant,
        ssrc: u32,
        seq: u16,
        timestamp: u32,
        audio: bool,
    ) {
        let arrival = self.media_clock(now);
        self.reception
            .on_packet(ssrc, seq, timestamp, arrival, audio);
        self.received_since_report = true;
        let jitter = self.samples(self.reception.jitter());
        if jitter > self.stats.jitter_max {
            self.stats.jitter_max = jitter;
        }
    }

    /// `now` on a clock of `clock_rate` ticks per second (wrapping).
    fn media_clock(&self, now: Instant) -> u32 {
        let micros = now.since_epoch().as_micros();
        (micros * u128::from(self.config.clock_rate) / 1_000_000) as u32
    }

    fn samples(&self, count: u32) -> Duration {
        let rate = u64::from(self.config.clock_rate.max(1));
        Duration::from_micros(u64::from(count) * 1_000_000 / rate)
    }

    /// The report due at `now`, if one is: writes the compound packet into
    /// `out` (at least [`REPORT_MAX`] bytes) and returns its length, and
    /// schedules the next one.
    pub fn poll_report(&mut self, now: Instant, out: &mut [u8]) -> Option<usize> {
        if now < self.next_report {
            return None;
        }
        let length = self.write_compound(now, false, out);
        self.next_report = now + self.interval(false);
        length
    }

    /// The compound packet that says goodbye (report, SDES, BYE), written
    /// into `out`; sent when the call hangs up.
    pub fn write_bye(&mut self, now: Instant, out: &mut [u8]) -> Option<usize> {
        self.write_compound(now, true, out)
    }

    fn write_compound(&mut self, now: Instant, bye: bool, out: &mut [u8]) -> Option<usize> {
        if out.len() < REPORT_MAX {
            return None;
        }
        let we_sent = self.sent_since_report || self.sent_before_report;
        let (last_sr, delay) = match self.last_peer_sr {
            Some((middle, at)) => (middle, to_ntp_short(now.saturating_since(at))),
            None => (0, 0),
        };
        let block = self.reception.report(last_sr, delay);
        let count = u8::from(block.is_some());
        let ssrc = self.config.ssrc.to_be_bytes();
        let mut at;
        if we_sent {
            let words = 6 + 6 * u16::from(count);
            out[0] = 0x80 | count;
            out[1] = PT_SR;
            out[2..4].copy_from_slice(&words.to_be_bytes());
            out[4..8].copy_from_slice(&ssrc);
            let ntp = self.config.wall_clock.ntp_at(now);
            out[8..16].copy_from_slice(&ntp.0.to_be_bytes());
            // Our media clock now: the last packet's timestamp moved on by
            // the time since it left (RFC 3550 6.4.1).
            let rtp_timestamp = match self.last_sent {
                Some((sent_at, timestamp)) => {
                    let ticks = now.saturating_since(sent_at).as_micros()
                        * u128::from(self.config.clock_rate)
                        / 1_000_000;
                    timestamp.wrapping_add(ticks as u32)
                }
                None => 0,
            };
            out[16..20].copy_from_slice(&rtp_timestamp.to_be_bytes());
            out[20..24].copy_from_slice(&self.sent_packets.to_be_bytes());
            out[24..28].copy_from_slice(&self.sent_octets.to_be_bytes());
            at = 28;
            self.stats.sender_reports_sent += 1;
        } else {
            let words = 1 + 6 * u16::from(count);
            out[0] = 0x80 | count;
            out[1] = PT_RR;
            out[2..4].copy_from_slice(&words.to_be_bytes());
            out[4..8].copy_from_slice(&ssrc);
            at = 8;
        }
        if let Some(block) = block {
            block.write(&mut out[at..at + 24]);
            at += 24;
        }
        // SDES: one chunk with the CNAME, null-terminated, padded to a word.
        let cname = &self.config.cname.as_bytes()[..self.config.cname.len().min(255)];
        let chunk = 4 + 2 + cname.len();
        let padded = (chunk + 1).div_ceil(4) * 4;
        let sdes_start = at;
        out[at] = 0x81;
        out[at + 1] = PT_SDES;
        out[at + 2..at + 4].copy_from_slice(&((padded / 4) as u16).to_be_bytes());
        out[at + 4..at + 8].copy_from_slice(&ssrc);
        out[at + 8] = 1; // CNAME
        out[at + 9] = cname.len() as u8;
        out[at + 10..at + 10 + cname.len()].copy_from_slice(cname);
        out[at + 10 + cname.len()..sdes_start + 4 + padded].fill(0);
        at = sdes_start + 4 + padded;
        if bye {
            out[at] = 0x81;
            out[at + 1] = PT_BYE;
            out[at + 2..at + 4].copy_from_slice(&1u16.to_be_bytes());
            out[at + 4..at + 8].copy_from_slice(&ssrc);
            at += 8;
        }
        self.sent_before_report = self.sent_since_report;
        self.sent_since_report = false;
        self.received_since_report = false;
        self.stats.reports_sent += 1;
        self.update_average(at);
        Some(at)
    }

    /// One datagram from `from` on the RTCP port (or the RTP port under
    /// rtcp-mux) at `now`. Invalid ones are dropped and counted.
    pub fn receive(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Result<(), RtcpError> {
        if let Err(error) = validate_compound(datagram) {
            self.stats.bad_packets += 1;
            return Err(error);
        }
        match self.peer {
            None => self.peer = Some(from),
            Some(peer) if peer != from => {
                self.stats.foreign_source += 1;
                return Ok(());
            }
            Some(_) => {}
        }
        self.stats.reports_received += 1;
        self.update_average(datagram.len());
        let arrival = self.config.wall_clock.ntp_at(now).middle();
        for packet in packets(datagram) {
            let blocks = match packet {
                RtcpPacket::SenderReport { info, blocks, .. } => {
                    self.stats.sender_reports_received += 1;
                    self.last_peer_sr = Some((info.ntp.middle(), now));
                    blocks
                }
                RtcpPacket::ReceiverReport { blocks, .. } => blocks,
                RtcpPacket::Bye { .. } => {
                    self.stats.bye_received = true;
                    continue;
                }
                RtcpPacket::SourceDescription | RtcpPacket::Other(_) => continue,
            };
            let ours = self.config.ssrc;
            for block in blocks.iter().filter(|block| block.ssrc == ours) {
                self.on_block_about_us(arrival, &block);
            }
        }
        Ok(())
    }

    fn on_block_about_us(&mut self, arrival: u32, block: &ReportBlock) {
        self.stats.remote_fraction_lost = Some(block.fraction_lost);
        self.stats.remote_lost = Some(block.cumulative_lost);
        self.stats.remote_jitter = Some(self.samples(block.jitter));
        if block.last_sr == 0 {
            return;
        }
        // RFC 3550 6.4.1: RTT = A - LSR - DLSR; a negative one (clock
        // trouble, or a forged block) is no measurement.
        let since_sr = arrival.wrapping_sub(block.last_sr);
        if since_sr < block.delay_since_last_sr || since_sr > u32::MAX / 2 {
            return;
        }
        let rtt = from_ntp_short(since_sr - block.delay_since_last_sr);
        self.stats.rtt = Some(rtt);
        if self.stats.rtt_max.is_none_or(|max| rtt > max) {
            self.stats.rtt_max = Some(rtt);
        }
    }

    fn update_average(&mut self, bytes: usize) {
        let size = bytes as f64 + LOWER_LAYER_OVERHEAD;
        self.average_size += (size - self.average_size) / 16.0;
    }

    /// RFC 3550 A.7 `rtcp_interval` for the two members of a call.
    fn interval(&mut self, initial: bool) -> Duration {
        let members = 2.0;
        let we_sent = self.sent_since_report || self.sent_before_report;
        let senders =
            f64::from(u8::from(we_sent)) + f64::from(u8::from(self.received_since_report));
        let minimum = if initial {
            RTCP_MIN_TIME / 2.0
        } else {
            RTCP_MIN_TIME
        };
        let mut bandwidth = RTCP_BANDWIDTH;
        let mut n = members;
        if senders <= members * 0.25 {
            if we_sent {
                bandwidth *= 0.25;
                n = senders;
            } else {
                bandwidth *= 0.75;
                n -= senders;
            }
        }
        let deterministic = (self.average_size * n / bandwidth).max(minimum);
        let factor = 0.5 + self.uniform();
        Duration::from_secs_f64(deterministic * factor / COMPENSATION)
    }

    /// Uniform in [0, 1) (xorshift64*).
    fn uniform(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let value = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (value >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// True if a datagram on the RTP port is RTCP (RFC 5761 section 4: a
/// second byte of 192-223 is never an RTP payload type we negotiate).
pub fn is_rtcp(datagram: &[u8]) -> bool {
    datagram.len() >= 8 && datagram[0] >> 6 == 2 && (192..=223).contains(&datagram[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: u32 = 0x1111_1111;
    const THEIRS: u32 = 0x2222_2222;

    fn peer() -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 7], 4001))
    }

    fn config(seed: u64) -> RtcpConfig {
        RtcpConfig {
            ssrc: OURS,
            cname: "test@callingbox".into(),
            clock_rate: 8_000,
            remote: peer(),
            wall_clock: WallClock {
                at: Instant::ZERO,
                ntp: NtpTime(3_900_000_000u64 << 32),
            },
            seed,
        }
    }

    /// The peer's SR at `ntp` with one block about our stream.
    fn peer_sr(ntp: NtpTime, block: Option<ReportBlock>) -> Vec<u8> {
        let count = u8::from(block.is_some());
        let mut packet = vec![0x80 | count, PT_SR];
        packet.extend_from_slice(&(6 + 6 * u16::from(count)).to_be_bytes());
        packet.extend_from_slice(&THEIRS.to_be_bytes());
        packet.extend_from_slice(&ntp.0.to_be_bytes());
        packet.extend_from_slice(&[0; 12]);
        if let Some(block) = block {
            let mut bytes = [0u8; 24];
            block.write(&mut bytes);
            packet.extend_from_slice(&bytes);
        }
        // An SDES with an empty chunk list, as the compound needs nothing more.
        packet.extend_from_slice(&[0x80, PT_SDES, 0, 0]);
        packet
    }

    #[test]
    fn ntp_time_from_the_unix_epoch_and_its_middle_bits() {
        let ntp = NtpTime::from_system(SystemTime::UNIX_EPOCH + Duration::from_millis(1_500));
        assert_eq!(ntp.0 >> 32, NTP_UNIX_OFFSET + 1);
        assert_eq!(ntp.0 & 0xFFFF_FFFF, 1u64 << 31);
        assert_eq!(
            ntp.middle(),
            (((NTP_UNIX_OFFSET + 1) as u32) << 16) | 0x8000
        );
        let clock = WallClock {
            at: Instant::from_millis(10),
            ntp,
        };
        assert_eq!(
            clock.ntp_at(Instant::from_millis(260)).0,
            ntp.0 + (1u64 << 30)
        );
    }

    #[test]
    fn intervals_are_randomised_around_the_rfc_minimum() {
        let mut session = RtcpSession::new(config(42), Instant::ZERO);
        let first = session.next_report().since_epoch().as_secs_f64();
        // Initial: 2.5 s x [0.5, 1.5] / (e - 1.5).
        assert!((1.02..=3.08).contains(&first), "{first}");
        let mut now = session.next_report();
        let mut out = [0u8; REPORT_MAX];
        let mut intervals = Vec::new();
        for _ in 0..2_000 {
            assert!(session.poll_report(now, &mut out).is_some());
            assert!(
                session.poll_report(now, &mut out).is_none(),
                "one report per interval"
            );
            let interval = (session.next_report() - now).as_secs_f64();
            intervals.push(interval);
            now = session.next_report();
        }
        let (low, high) = (5.0 * 0.5 / COMPENSATION, 5.0 * 1.5 / COMPENSATION);
        assert!(
            intervals
                .iter()
                .all(|t| (low - 1e-9..=high + 1e-9).contains(t))
        );
        let mean = intervals.iter().sum::<f64>() / intervals.len() as f64;
        assert!((mean - 5.0 / COMPENSATION).abs() < 0.1, "mean {mean}");
        // Spread over the whole range, not a fixed period.
        assert!(intervals.iter().any(|&t| t < low + 0.3));
        assert!(intervals.iter().any(|&t| t > high - 0.3));
        // A different seed, different times.
        let other = RtcpSession::new(config(43), Instant::ZERO);
        assert_ne!(
            other.next_report(),
            RtcpSession::new(config(42), Instant::ZERO).next_report()
        );
    }

    #[test]
    fn loss_and_extended_sequence_across_a_wrap() {
        let mut stats = ReceptionStats::default();
        // 65530..=65535, 0..=9 with 3 and 4 lost: 16 expected, 14 received.
        let mut seq = 65_530u16;
        for i in 0..16u32 {
            if seq != 3 && seq != 4 {
                stats.on_packet(THEIRS, seq, i * 160, i * 160, true);
            }
            seq = seq.wrapping_add(1);
        }
        assert_eq!(stats.expected(), 16);
        assert_eq!(stats.received(), 14);
        assert_eq!(stats.lost(), 2);
        assert_eq!(stats.extended_max(), (1 << 16) + 9);
        let block = stats.report(0, 0).expect("a source");
        assert_eq!(block.fraction_lost, (2 * 256 / 16) as u8);
        assert_eq!(block.cumulative_lost, 2);
        // The next interval: nothing lost, the fraction is of the interval only.
        for (i, seq) in (10u16..20).enumerate() {
            stats.on_packet(
                THEIRS,
                seq,
                2_560 + i as u32 * 160,
                2_560 + i as u32 * 160,
                true,
            );
        }
        let block = stats.report(0, 0).expect("a source");
        assert_eq!((block.fraction_lost, block.cumulative_lost), (0, 2));
        // A duplicate makes the interval's loss negative: reported as zero.
        stats.on_packet(THEIRS, 19, 4_000, 4_000, true);
        stats.on_packet(THEIRS, 19, 4_000, 4_000, true);
        let block = stats.report(0, 0).expect("a source");
        assert_eq!((block.fraction_lost, block.cumulative_lost), (0, 0));
    }

    #[test]
    fn a_restart_takes_two_packets_and_an_ssrc_change_starts_over() {
        let mut stats = ReceptionStats::default();
        for seq in 100..110u16 {
            stats.on_packet(THEIRS, seq, 0, 0, true);
        }
        // One wild sequence number is ignored ...
        stats.on_packet(THEIRS, 40_000, 0, 0, true);
        assert_eq!((stats.received(), stats.extended_max()), (10, 109));
        // ... the next in line confirms a restart.
        stats.on_packet(THEIRS, 40_001, 0, 0, true);
        assert_eq!((stats.received(), stats.expected()), (1, 1));
        // Reordered within MAX_MISORDER: counted, the maximum stays.
        stats.on_packet(THEIRS, 40_003, 0, 0, true);
        stats.on_packet(THEIRS, 40_002, 0, 0, true);
        assert_eq!(
            (stats.received(), stats.expected(), stats.lost()),
            (3, 3, 0)
        );
        stats.on_packet(0x3333, 7, 0, 0, true);
        assert_eq!(stats.ssrc(), Some(0x3333));
        assert_eq!(
            (stats.received(), stats.expected(), stats.ssrc_changes),
            (1, 1, 1)
        );
    }

    #[test]
    fn jitter_follows_rfc_3550_a8() {
        let mut stats = ReceptionStats::default();
        // Perfectly paced: no jitter.
        for i in 0..50u32 {
            stats.on_packet(THEIRS, i as u16, i * 160, 1_000 + i * 160, true);
        }
        assert_eq!(stats.jitter(), 0);
        // Arrivals alternating on time and 80 samples (10 ms) late: |D| = 80
        // per packet; J converges to 80.
        for i in 50..1_050u32 {
            let offset = if i % 2 == 0 { 80 } else { 0 };
            stats.on_packet(THEIRS, i as u16, i * 160, 1_000 + i * 160 + offset, true);
        }
        assert!((78..=80).contains(&stats.jitter()), "{}", stats.jitter());
        // Telephone events repeat timestamps: they do not move the jitter.
        let before = stats.jitter();
        for i in 1_050..1_060u32 {
            stats.on_packet(THEIRS, i as u16, 999, 1_000 + i * 160, false);
        }
        assert_eq!(stats.jitter(), before);
        assert_eq!(stats.lost(), 0);
    }

    #[test]
    fn we_send_sr_while_talking_rr_when_silent_and_the_peer_computes_our_numbers() {
        let mut session = RtcpSession::new(config(7), Instant::ZERO);
        let mut out = [0u8; REPORT_MAX];
        // Peer audio and ours for 2 s, 100 packets each way.
        for i in 0..100u32 {
            let now = Instant::from_millis(u64::from(i) * 20);
            session.on_rtp_received(now, THEIRS, 500 + i as u16, 1_000 + i * 160, true);
            session.on_rtp_sent(now, 7_000 + i * 160, 160);
        }
        let now = Instant::from_millis(3_100);
        let length = session.poll_report(now, &mut out).expect("due");
        let report = &out[..length];
        validate_compound(report).expect("our compound is valid");
        let parsed: Vec<RtcpPacket<'_>> = packets(report).collect();
        let RtcpPacket::SenderReport { ssrc, info, blocks } = parsed[0] else {
            panic!("an SR first: {parsed:?}");
        };
        assert_eq!(ssrc, OURS);
        assert_eq!((info.packets, info.octets), (100, 16_000));
        assert_eq!(info.ntp, config(7).wall_clock.ntp_at(now));
        // Last packet at 1980 ms with 7000 + 99*160; 1120 ms later = 8960 samples on.
        assert_eq!(info.rtp_timestamp, 7_000 + 99 * 160 + 8_960);
        let block: Vec<ReportBlock> = blocks.iter().collect();
        assert_eq!(block.len(), 1);
        assert_eq!(block[0].ssrc, THEIRS);
        assert_eq!(block[0].highest_sequence, 599);
        assert_eq!((block[0].fraction_lost, block[0].cumulative_lost), (0, 0));
        assert_eq!(block[0].last_sr, 0, "no SR from the peer yet");
        assert_eq!(parsed[1], RtcpPacket::SourceDescription);
        assert_eq!(parsed.len(), 2);
        // The SDES carries our CNAME.
        assert!(report.windows(15).any(|w| w == b"test@callingbox"));
        // Still an SR one interval later (sent since the report before last) ...
        let now = session.next_report();
        let length = session.poll_report(now, &mut out).expect("due");
        assert_eq!(out[1], PT_SR, "{:?}", &out[..length]);
        // ... then an RR once we have been silent for two intervals.
        let now = session.next_report();
        let length = session.poll_report(now, &mut out).expect("due");
        assert_eq!(out[1], PT_RR);
        validate_compound(&out[..length]).expect("valid");
        let stats = session.stats();
        assert_eq!((stats.reports_sent, stats.sender_reports_sent), (3, 2));
    }

    #[test]
    fn rtt_from_the_peers_lsr_and_dlsr_and_our_lsr_for_the_peer() {
        let clock = config(1).wall_clock;
        let mut session = RtcpSession::new(config(1), Instant::ZERO);
        let mut out = [0u8; REPORT_MAX];
        session.on_rtp_sent(Instant::from_millis(900), 0, 160);
        // Our SR at 1 s.
        let sent_at = Instant::from_millis(1_000);
        session.next_report = sent_at;
        session.poll_report(sent_at, &mut out).expect("due");
        let our_sr = match packets(&out).next() {
            Some(RtcpPacket::SenderReport { info, .. }) => info.ntp,
            other => panic!("{other:?}"),
        };
        // The peer held it 250 ms, the network took 2 x 40 ms: the RR
        // arrives at 1.33 s and says DLSR = 250 ms.
        let block = ReportBlock {
            ssrc: OURS,
            fraction_lost: 64,
            cumulative_lost: 12,
            highest_sequence: 1_000,
            jitter: 80,
            last_sr: our_sr.middle(),
            delay_since_last_sr: to_ntp_short(Duration::from_millis(250)),
        };
        let peer_ntp = NtpTime(0xDEAD_BEEF_1234_5678);
        session
            .receive(
                Instant::from_millis(1_330),
                peer(),
                &peer_sr(peer_ntp, Some(block)),
            )
            .expect("valid");
        let stats = session.stats();
        let rtt = stats.rtt.expect("an RTT");
        assert!(
            rtt.abs_diff(Duration::from_millis(80)) < Duration::from_micros(100),
            "{rtt:?}"
        );
        assert_eq!(stats.rtt_max, Some(rtt));
        assert_eq!(stats.remote_fraction_lost, Some(64));
        assert_eq!(stats.remote_lost, Some(12));
        assert_eq!(stats.remote_jitter, Some(Duration::from_millis(10)));
        assert_eq!(
            (stats.reports_received, stats.sender_reports_received),
            (1, 1)
        );
        // Our next report block carries the peer's SR as LSR and the time since as DLSR.
        session.on_rtp_received(Instant::from_millis(1_400), THEIRS, 1, 0, true);
        let at = Instant::from_millis(1_830);
        session.next_report = at;
        let length = session.poll_report(at, &mut out).expect("due");
        let block = packets(&out[..length])
            .find_map(|packet| match packet {
                RtcpPacket::SenderReport { blocks, .. }
                | RtcpPacket::ReceiverReport { blocks, .. } => blocks.iter().next(),
                _ => None,
            })
            .expect("a block");
        assert_eq!(block.last_sr, peer_ntp.middle());
        let dlsr = from_ntp_short(block.delay_since_last_sr);
        assert!(
            dlsr.abs_diff(Duration::from_millis(500)) < Duration::from_micros(100),
            "{dlsr:?}"
        );
        // A block claiming more delay than elapsed gives no RTT (no wrap to ~18 h).
        let mut forged = block;
        forged.ssrc = OURS;
        forged.last_sr = clock.ntp_at(Instant::from_millis(1_800)).middle();
        forged.delay_since_last_sr = to_ntp_short(Duration::from_secs(5));
        session
            .receive(
                Instant::from_millis(1_900),
                peer(),
                &peer_sr(peer_ntp, Some(forged)),
            )
            .expect("valid");
        assert_eq!(session.stats().rtt, Some(rtt));
    }

    #[test]
    fn bad_compounds_are_dropped_and_foreign_sources_ignored() {
        let mut session = RtcpSession::new(config(3), Instant::ZERO);
        let good = peer_sr(NtpTime(5), None);
        let now = Instant::from_millis(10);
        // Starts with SDES, not SR/RR.
        let sdes_first = [0x80, PT_SDES, 0, 0, 0x80, PT_RR, 0, 1, 0, 0, 0, 1];
        assert_eq!(
            session.receive(now, peer(), &sdes_first),
            Err(RtcpError::BadFirstPacket)
        );
        // Lengths that do not add up.
        assert_eq!(
            session.receive(now, peer(), &good[..good.len() - 1]),
            Err(RtcpError::TooShort)
        );
        let mut long = good.clone();
        long[3] += 2;
        assert!(session.receive(now, peer(), &long).is_err());
        // A report count past the packet.
        let mut count = good.clone();
        count[0] = 0x80 | 3;
        assert_eq!(
            session.receive(now, peer(), &count),
            Err(RtcpError::BadCount)
        );
        // Version 1 on the second packet.
        let mut version = good.clone();
        version[28] = 0x40;
        assert_eq!(
            session.receive(now, peer(), &version),
            Err(RtcpError::Version(1))
        );
        // Padding on the first packet.
        let mut padded = good.clone();
        padded[0] |= 0x20;
        assert_eq!(
            session.receive(now, peer(), &padded),
            Err(RtcpError::BadFirstPacket)
        );
        assert_eq!(session.stats().bad_packets, 6);
        assert_eq!(session.stats().reports_received, 0);
        // Every truncation and first byte of a valid compound: errors, never panics.
        for end in 0..good.len() {
            let _ = session.receive(now, peer(), &good[..end]);
        }
        let mut mutated = good.clone();
        for index in 0..mutated.len() {
            for value in [0u8, 0x1F, 0x3F, 0x80, 0xBF, 0xFF] {
                let saved = mutated[index];
                mutated[index] = value;
                let _ = session.receive(now, SocketAddr::from(([192, 0, 2, 9], 1)), &mutated);
                mutated[index] = saved;
            }
        }
        let mut fresh = RtcpSession::new(config(3), Instant::ZERO);
        fresh.receive(now, peer(), &good).expect("valid");
        let elsewhere = SocketAddr::from(([203, 0, 113, 1], 9));
        fresh
            .receive(now, elsewhere, &good)
            .expect("valid, but not the peer's");
        let stats = fresh.stats();
        assert_eq!((stats.reports_received, stats.foreign_source), (1, 1));
        assert_eq!(fresh.destination(), peer());
    }

    #[test]
    fn bye_ends_our_compound_and_a_peer_bye_is_seen() {
        let mut session = RtcpSession::new(config(9), Instant::ZERO);
        let mut out = [0u8; REPORT_MAX];
        let length = session
            .write_bye(Instant::from_millis(500), &mut out)
            .expect("room");
        validate_compound(&out[..length]).expect("valid");
        let kinds: Vec<RtcpPacket<'_>> = packets(&out[..length]).collect();
        assert!(
            matches!(kinds[0], RtcpPacket::ReceiverReport { ssrc: OURS, blocks } if blocks.is_empty())
        );
        assert_eq!(kinds[1], RtcpPacket::SourceDescription);
        assert_eq!(kinds[2], RtcpPacket::Bye { ssrc: Some(OURS) });
        assert!(is_rtcp(&out[..length]));
        let mut bye = peer_sr(NtpTime(1), None);
        bye.extend_from_slice(&[0x81, PT_BYE, 0, 1]);
        bye.extend_from_slice(&THEIRS.to_be_bytes());
        session
            .receive(Instant::from_millis(600), peer(), &bye)
            .expect("valid");
        assert!(session.stats().bye_received);
        // A too-small buffer is refused, not a panic.
        assert!(session.write_bye(Instant::ZERO, &mut [0u8; 16]).is_none());
    }

    #[test]
    fn rtcp_and_rtp_are_told_apart_on_a_muxed_port() {
        let rtp_pcmu = [0x80, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        let rtp_marker_pcmu = [0x80, 0x80, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        let rtp_event = [0x80, 101, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1];
        assert!(!is_rtcp(&rtp_pcmu) && !is_rtcp(&rtp_marker_pcmu) && !is_rtcp(&rtp_event));
        assert!(is_rtcp(&peer_sr(NtpTime(1), None)));
    }
}
