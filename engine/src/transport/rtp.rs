//! RTP (RFC 3550) for SIP calls: one UDP socket per call carrying G.711.
//!
//! The sans-IO pieces: [`parse_rtp`] reads a header (version 2, CSRCs,
//! extension, padding); [`RtpReceiver`] learns the peer from the first valid
//! packet (symmetric RTP, RFC 4961: the address a NATed phone sends from is
//! where it receives) and then ignores other sources, turns RFC 4733
//! `telephone-event` packets into digits (one per event, whatever the
//! retransmissions of its end packet) and hands audio on; [`RtpSender`]
//! numbers our packets with our own SSRC, sequence and timestamp.
//!
//! [`run_rtp`] drives one call: packets from the socket go to the
//! [`MediaWorker`](crate::session::MediaWorker) through a [`WorkerHandle`];
//! agent packets come back one per 20 ms tick and leave as they arrive, so
//! the worker's tick paces the stream. Buffers are allocated once per call.

use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU16, Ordering};

use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::rtcp::{self, REPORT_MAX, RtcpSession, RtcpStats};
use super::rtp_events::{EventPlayout, EventTiming};
use super::sip::reinvite::MediaUpdate;
use super::{CallOutput, WirePacket, WorkerHandle};
use crate::clock::Instant;
use crate::conversation::call_control::DigitsRequest;
use crate::session::{CallKey, MediaEvent};

/// Bytes of a fixed RTP header.
pub const RTP_HEADER_LEN: usize = 12;
/// The largest datagram read (anything longer is truncated and dropped).
const DATAGRAM_MAX: usize = 1_500;
/// Samples in one 20 ms G.711 packet.
pub const SAMPLES_PER_PACKET: u32 = 160;

/// A header that is not RTP we can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RtpError {
    /// Shorter than its header says.
    #[error("datagram too short for its RTP header")]
    TooShort,
    /// Not version 2 (STUN, RTCP-mux junk, garbage).
    #[error("RTP version {0}, expected 2")]
    Version(u8),
    /// The padding count is zero or runs past the payload.
    #[error("bad RTP padding")]
    Padding,
    /// An RTCP packet on the RTP port (payload types 72-76 with the marker).
    #[error("RTCP on the RTP port")]
    Rtcp,
}

/// One parsed RTP packet, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    /// The payload type.
    pub payload_type: u8,
    /// The marker bit (start of a talkspurt for audio).
    pub marker: bool,
    /// The sequence number.
    pub sequence: u16,
    /// The media timestamp.
    pub timestamp: u32,
    /// The sender's synchronization source.
    pub ssrc: u32,
    /// The payload, without CSRCs, extension or padding.
    pub payload: &'a [u8],
}

/// Parses one RTP datagram.
pub fn parse_rtp(datagram: &[u8]) -> Result<RtpPacket<'_>, RtpError> {
    if datagram.len() < RTP_HEADER_LEN {
        return Err(RtpError::TooShort);
    }
    let first = datagram[0];
    let version = first >> 6;
    if version != 2 {
        return Err(RtpError::Version(version));
    }
    let padding = first & 0x20 != 0;
    let extension = first & 0x10 != 0;
    let csrc_count = usize::from(first & 0x0F);
    let marker = datagram[1] & 0x80 != 0;
    let payload_type = datagram[1] & 0x7F;
    // RTCP SR/RR/SDES/BYE/APP (200-204) read as marker + type 72-76.
    if (72..=76).contains(&payload_type) && marker {
        return Err(RtpError::Rtcp);
    }
    let sequence = u16::from_be_bytes([datagram[2], datagram[3]]);
    let timestamp = u32::from_be_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]);
    let ssrc = u32::from_be_bytes([datagram[8], datagram[9], datagram[10], datagram[11]]);
    let mut start = RTP_HEADER_LEN + 4 * csrc_count;
    if extension {
        let header = datagram.get(start..start + 4).ok_or(RtpError::TooShort)?;
        let words = usize::from(u16::from_be_bytes([header[2], header[3]]));
        start += 4 + 4 * words;
    }
    let mut end = datagram.len();
    if start > end {
        return Err(RtpError::TooShort);
    }
    if padding {
        let count = usize::from(datagram[end - 1]);
        if count == 0 || count > end - start {
            return Err(RtpError::Padding);
        }
        end -= count;
    }
    Ok(RtpPacket {
        payload_type,
        marker,
        sequence,
        timestamp,
        ssrc,
        payload: &datagram[start..end],
    })
}

/// Numbers our outgoing packets: one SSRC, a sequence +1 per packet, a
/// timestamp one 20 ms frame on per packet within a talkspurt (160 at an
/// 8 kHz clock, 960 for Opus's 48 kHz) and following the clock across the
/// silences between them (RFC 3550, section 5.1).
#[derive(Debug, Clone)]
pub struct RtpSender {
    ssrc: u32,
    payload_type: u8,
    sequence: u16,
    first_timestamp: u32,
    started: Option<Instant>,
    last_timestamp: Option<u32>,
    packets: u64,
    /// Timestamp units per 20 ms packet.
    frame_step: u32,
}

impl RtpSender {
    /// A sender with these (random, in production) starting values.
    pub fn new(ssrc: u32, payload_type: u8, first_sequence: u16, first_timestamp: u32) -> Self {
        RtpSender {
            ssrc,
            payload_type: payload_type & 0x7F,
            sequence: first_sequence,
            first_timestamp,
            started: None,
            last_timestamp: None,
            packets: 0,
            frame_step: SAMPLES_PER_PACKET,
        }
    }

    /// The same sender on a media clock of `clock_rate` Hz (8,000 unless
    /// told: 48,000 for Opus).
    pub fn with_clock_rate(mut self, clock_rate: u32) -> Self {
        self.frame_step = clock_rate / 50;
        self
    }

    /// The media clock rate (Hz).
    pub fn clock_rate(&self) -> u32 {
        self.frame_step * 50
    }

    /// Our SSRC.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Packets written.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// The media timestamp the clock is at by `now` (rounded to a frame,
    /// never behind the packets already sent): where an RFC 4733 event
    /// starting now begins.
    pub fn clock_timestamp(&mut self, now: Instant) -> u32 {
        let started = *self.started.get_or_insert(now);
        let frames = (now.saturating_since(started).as_micros() + 10_000) / 20_000;
        let by_clock = self
            .first_timestamp
            .wrapping_add((frames as u32).wrapping_mul(self.frame_step));
        match self.last_timestamp {
            Some(last) if by_clock.wrapping_sub(last) >= u32::MAX / 2 => last,
            _ => by_clock,
        }
    }

    /// Writes a telephone-event packet (RFC 4733): payload type
    /// `payload_type`, the event's own `timestamp` (its start), into `out`;
    /// returns its length, or `None` if `out` is too small. The audio after
    /// it must start a new talkspurt (marker), so its timestamp follows the clock.
    pub fn write_event(
        &mut self,
        payload_type: u8,
        marker: bool,
        timestamp: u32,
        payload: &[u8; 4],
        out: &mut [u8],
    ) -> Option<usize> {
        let length = RTP_HEADER_LEN + payload.len();
        if out.len() < length {
            return None;
        }
        out[0] = 0x80;
        out[1] = (u8::from(marker) << 7) | (payload_type & 0x7F);
        out[2..4].copy_from_slice(&self.sequence.to_be_bytes());
        out[4..8].copy_from_slice(&timestamp.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        out[RTP_HEADER_LEN..length].copy_from_slice(payload);
        self.sequence = self.sequence.wrapping_add(1);
        self.packets += 1;
        Some(length)
    }

    /// Writes the packet for `payload` sent at `now` into `out`; returns its
    /// length, or `None` if `out` is too small.
    pub fn write(
        &mut self,
        now: Instant,
        marker: bool,
        payload: &[u8],
        out: &mut [u8],
    ) -> Option<usize> {
        let length = RTP_HEADER_LEN + payload.len();
        if out.len() < length {
            return None;
        }
        let started = *self.started.get_or_insert(now);
        let timestamp = match self.last_timestamp {
            // Within a talkspurt the audio is contiguous: exactly one frame on.
            Some(last) if !marker => last.wrapping_add(self.frame_step),
            Some(last) => {
                // After a silence: where the clock says, rounded to a frame,
                // and never behind the talkspurt before.
                let elapsed = now.saturating_since(started);
                let frames = (elapsed.as_micros() + 10_000) / 20_000;
                let by_clock = self
                    .first_timestamp
                    .wrapping_add((frames as u32).wrapping_mul(self.frame_step));
                let next = last.wrapping_add(self.frame_step);
                // Serial-number comparison: is `by_clock` ahead of `next`?
                if by_clock.wrapping_sub(next) < u32::MAX / 2 {
                    by_clock
                } else {
                    next
                }
            }
            None => self.first_timestamp,
        };
        out[0] = 0x80;
        out[1] = (u8::from(marker) << 7) | self.payload_type;
        out[2..4].copy_from_slice(&self.sequence.to_be_bytes());
        out[4..8].copy_from_slice(&timestamp.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
        out[RTP_HEADER_LEN..length].copy_from_slice(payload);
        self.sequence = self.sequence.wrapping_add(1);
        self.last_timestamp = Some(timestamp);
        self.packets += 1;
        Some(length)
    }
}

/// The digit of an RFC 4733 event code (0-15), if it is one.
pub fn dtmf_digit(event: u8) -> Option<char> {
    match event {
        0..=9 => Some(char::from(b'0' + event)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + event - 12)),
        _ => None,
    }
}

/// Counters of one RTP session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RtpStats {
    /// Audio packets handed to the worker.
    pub audio_received: u64,
    /// Datagrams whose header could not be used (dropped).
    pub bad_headers: u64,
    /// Valid packets from another address than the learned peer (dropped).
    pub foreign_source: u64,
    /// Packets of a payload type not negotiated (comfort noise, ...), dropped.
    pub other_payload_type: u64,
    /// telephone-event packets received (all of them, retransmissions too).
    pub event_packets: u64,
    /// DTMF digits reported.
    pub digits: u64,
    /// Agent audio packets we sent (and digit events).
    pub sent: u64,
    /// Comfort-silence packets we sent while the agent was quiet (see
    /// [`super::comfort_silence`]); not counted in `sent`.
    pub silence_sent: u64,
    /// Agent packets we could not send (socket error).
    pub send_errors: u64,
    /// Agent packets not sent because the peer held the call.
    pub held_dropped: u64,
    /// Caller packets not handed to the agent while held (music on hold).
    pub held_ignored: u64,
    /// The peer learned from the first packet (where we send).
    pub peer: Option<SocketAddr>,
    /// RTCP: reports sent and received, loss, jitter and round-trip time.
    pub rtcp: RtcpStats,
}

/// What one datagram was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtpReceived<'a> {
    /// Audio for the worker.
    Audio(RtpPacket<'a>),
    /// The caller pressed a key (reported once per event).
    Digit(char),
    /// Dropped (counted in [`RtpStats`]).
    Dropped,
}

/// The receiving side of a call's RTP, sans-IO.
#[derive(Debug, Clone)]
pub struct RtpReceiver {
    audio_payload_type: u8,
    event_payload_type: Option<u8>,
    peer: Option<SocketAddr>,
    /// The timestamp and code of the last event reported: its end packet
    /// is sent three times (RFC 4733, section 2.5.1.4) and must count once.
    last_event: Option<(u32, u8)>,
    /// The last packet of the peer's stream accepted, for RTCP's
    /// reception statistics: SSRC, sequence, timestamp, audio or not.
    last_accepted: Option<(u32, u16, u32, bool)>,
    stats: RtpStats,
}

impl RtpReceiver {
    /// A receiver for audio of `audio_payload_type` and, when negotiated,
    /// telephone events of `event_payload_type`.
    pub fn new(audio_payload_type: u8, event_payload_type: Option<u8>) -> Self {
        RtpReceiver {
            audio_payload_type,
            event_payload_type,
            peer: None,
            last_event: None,
            last_accepted: None,
            stats: RtpStats::default(),
        }
    }

    /// The peer learned from the first valid packet.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The counters.
    pub fn stats(&self) -> RtpStats {
        RtpStats {
            peer: self.peer,
            ..self.stats
        }
    }

    /// The last packet of the peer's stream accepted since the previous
    /// call (SSRC, sequence, timestamp, and whether it was audio), for the
    /// RTCP reception statistics; events and unused payload types count
    /// in the sequence space too.
    pub fn take_accepted(&mut self) -> Option<(u32, u16, u32, bool)> {
        self.last_accepted.take()
    }

    /// Forgets the learned peer: after a re-INVITE moved the stream, the
    /// next packet (from the new address) is the peer.
    pub fn forget_peer(&mut self) {
        self.peer = None;
    }

    /// Counts an agent packet dropped (`outgoing`) or a caller packet
    /// ignored while the call is held.
    pub fn count_held(&mut self, outgoing: bool) {
        if outgoing {
            self.stats.held_dropped += 1;
        } else {
            self.stats.held_ignored += 1;
        }
    }

    /// Counts a packet sent (the sender side shares the counters).
    pub fn count_sent(&mut self, ok: bool) {
        if ok {
            self.stats.sent += 1;
        } else {
            self.stats.send_errors += 1;
        }
    }

    /// One comfort-silence packet sent (`ok`) or failed.
    pub fn count_silence_sent(&mut self, ok: bool) {
        if ok {
            self.stats.silence_sent += 1;
        } else {
            self.stats.send_errors += 1;
        }
    }

    /// One datagram from `from`.
    pub fn receive<'a>(&mut self, from: SocketAddr, datagram: &'a [u8]) -> RtpReceived<'a> {
        let packet = match parse_rtp(datagram) {
            Ok(packet) => packet,
            Err(_) => {
                self.stats.bad_headers += 1;
                return RtpReceived::Dropped;
            }
        };
        match self.peer {
            None => self.peer = Some(from),
            Some(peer) if peer != from => {
                self.stats.foreign_source += 1;
                return RtpReceived::Dropped;
            }
            Some(_) => {}
        }
        let audio = packet.payload_type == self.audio_payload_type;
        self.last_accepted = Some((packet.ssrc, packet.sequence, packet.timestamp, audio));
        if Some(packet.payload_type) == self.event_payload_type {
            self.stats.event_packets += 1;
            return self.on_event(&packet);
        }
        if packet.payload_type != self.audio_payload_type {
            self.stats.other_payload_type += 1;
            return RtpReceived::Dropped;
        }
        self.stats.audio_received += 1;
        RtpReceived::Audio(packet)
    }

    fn on_event(&mut self, packet: &RtpPacket<'_>) -> RtpReceived<'static> {
        let [event, flags, ..] = packet.payload else {
            self.stats.bad_headers += 1;
            return RtpReceived::Dropped;
        };
        if packet.payload.len() < 4 {
            self.stats.bad_headers += 1;
            return RtpReceived::Dropped;
        }
        let end = flags & 0x80 != 0;
        // One event is one timestamp; its end is reported once.
        if !end || self.last_event == Some((packet.timestamp, *event)) {
            return RtpReceived::Dropped;
        }
        self.last_event = Some((packet.timestamp, *event));
        match dtmf_digit(*event) {
            Some(digit) => {
                self.stats.digits += 1;
                RtpReceived::Digit(digit)
            }
            None => RtpReceived::Dropped,
        }
    }
}

/// A range of UDP ports for RTP; each call binds the next free even one.
#[derive(Debug)]
pub struct RtpPorts {
    ip: IpAddr,
    range: RangeInclusive<u16>,
    next: AtomicU16,
}

impl RtpPorts {
    /// Ports in `range` on `ip` (the address sockets bind to).
    pub fn new(ip: IpAddr, range: RangeInclusive<u16>) -> Self {
        let start = *range.start();
        RtpPorts {
            ip,
            range,
            next: AtomicU16::new(start),
        }
    }

    /// Binds a socket on the next free even port of the range (odd ones are
    /// RTCP's by convention), starting after the last one given out.
    pub fn bind(&self) -> std::io::Result<std::net::UdpSocket> {
        self.bind_even(false).map(|(rtp, _)| rtp)
    }

    /// Like [`bind`](Self::bind), and also binds the RTCP socket on the
    /// port above (RFC 3550 section 11), even past the range's end; an
    /// even port whose neighbour is taken is passed over while another
    /// pair is free, and the call goes without RTCP (`None`) if none is.
    pub fn bind_pair(&self) -> std::io::Result<(std::net::UdpSocket, Option<std::net::UdpSocket>)> {
        self.bind_even(true).or_else(|_| self.bind_even(false))
    }

    fn bind_even(
        &self,
        with_rtcp: bool,
    ) -> std::io::Result<(std::net::UdpSocket, Option<std::net::UdpSocket>)> {
        let (low, high) = (*self.range.start(), *self.range.end());
        let first_even = low + (low % 2);
        if first_even > high {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the RTP port range holds no even port",
            ));
        }
        let count = (high - first_even) / 2 + 1;
        let cursor = self.next.load(Ordering::Relaxed).clamp(first_even, high);
        let offset = (cursor - first_even) / 2;
        for step in 0..count {
            let port = first_even + ((offset + step) % count) * 2;
            if let Ok(socket) = std::net::UdpSocket::bind(SocketAddr::new(self.ip, port)) {
                let rtcp = if with_rtcp {
                    let Some(rtcp_port) = port.checked_add(1) else {
                        continue;
                    };
                    match std::net::UdpSocket::bind(SocketAddr::new(self.ip, rtcp_port)) {
                        Ok(rtcp) => {
                            rtcp.set_nonblocking(true)?;
                            Some(rtcp)
                        }
                        Err(_) => continue,
                    }
                } else {
                    None
                };
                let next = if port.saturating_add(2) > high {
                    first_even
                } else {
                    port + 2
                };
                self.next.store(next, Ordering::Relaxed);
                socket.set_nonblocking(true)?;
                return Ok((socket, rtcp));
            }
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "every RTP port of the range is in use",
        ))
    }
}

/// What a call's RTP reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum RtpEvent {
    /// A media event of the call from the worker.
    Media(MediaEvent),
    /// A DTMF key from an RFC 4733 event.
    Digit(char),
    /// The peer held (`true`) or resumed the call.
    Held(bool),
}

/// Why [`run_rtp`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtpEnd {
    /// `stop` was cancelled (the SIP side ended the call).
    Stopped,
    /// The worker reported a hangup (the turn machine or the agent ended it).
    HungUp,
    /// The worker dropped the call's channel.
    WorkerGone,
    /// The socket failed.
    SocketFailed,
}

/// One call's RTP as [`run_rtp`] runs it.
#[derive(Debug)]
pub struct RtpCall {
    /// The call's socket (from [`RtpPorts::bind`]).
    pub socket: UdpSocket,
    /// Where to send until the peer's first packet (the SDP offer's address).
    pub remote: SocketAddr,
    /// The call on the worker.
    pub key: CallKey,
    /// The call's agent packets and media events from the worker.
    pub outputs: mpsc::Receiver<CallOutput>,
    /// Numbers our packets.
    pub sender: RtpSender,
    /// Reads the caller's packets.
    pub receiver: RtpReceiver,
    /// A copy of each agent packet sent (call recording, tests); a full
    /// channel drops copies, never delays the call.
    pub tap: Option<mpsc::Sender<WirePacket>>,
    /// The agent's `send_dtmf` requests, if it has any (transfers are the
    /// SIP task's).
    pub call_control: Option<mpsc::UnboundedReceiver<DigitsRequest>>,
    /// The negotiated telephone-event payload type (none: digits cannot be sent).
    pub event_payload_type: Option<u8>,
    /// The call's RTCP, if it has any.
    pub rtcp: Option<RtcpLink>,
    /// Hold, resume and moves of the peer's address (re-INVITEs).
    pub control: Option<mpsc::UnboundedReceiver<MediaUpdate>>,
    /// One 20 ms frame of silence in the call's codec, sent every 20 ms
    /// while the agent is quiet (see [`super::comfort_silence`]); `None`
    /// sends the agent's talkspurts only.
    pub comfort_silence: Option<&'static [u8]>,
}

/// A call's RTCP as [`run_rtp`] runs it.
#[derive(Debug)]
pub struct RtcpLink {
    /// The RTCP socket (RTP port + 1), or `None` under rtcp-mux (RFC 5761:
    /// RTCP shares the RTP socket).
    pub socket: Option<UdpSocket>,
    /// Counts, schedules, writes and reads the reports.
    pub session: RtcpSession,
}

/// Where reports go: under rtcp-mux wherever the RTP goes (the peer
/// learned from its RTP, RFC 5761 with symmetric RTP), else the RTCP
/// session's own choice.
fn rtcp_destination(session: &RtcpSession, muxed: bool, receiver: &RtpReceiver) -> SocketAddr {
    match receiver.peer() {
        Some(peer) if muxed => peer,
        _ => session.destination(),
    }
}

/// The next media update, or never once there are none.
async fn next_update(
    control: Option<&mut mpsc::UnboundedReceiver<MediaUpdate>>,
) -> Option<MediaUpdate> {
    match control {
        Some(control) => control.recv().await,
        None => std::future::pending().await,
    }
}

/// Receives on `socket`, or never if there is none.
async fn recv_or_pend(
    socket: Option<&UdpSocket>,
    buffer: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match socket {
        Some(socket) => socket.recv_from(buffer).await,
        None => std::future::pending().await,
    }
}

/// Drives one call's RTP until `stop` is cancelled, the worker hangs up,
/// or the worker or socket goes away. `on_event` gets the call's media
/// events and digits; `epoch` is zero of the sender's clock. Returns why it
/// ended and the counters.
pub async fn run_rtp(
    call: RtpCall,
    worker: &WorkerHandle,
    stop: &CancellationToken,
    epoch: std::time::Instant,
    on_event: &mut (dyn FnMut(RtpEvent) + Send),
) -> (RtpEnd, RtpStats) {
    let RtpCall {
        socket,
        mut remote,
        key,
        mut outputs,
        mut sender,
        mut receiver,
        tap,
        rtcp,
        mut control,
        mut call_control,
        event_payload_type,
        comfort_silence,
    } = call;
    let mut held = false;
    let (rtcp_socket, mut rtcp_session) = match rtcp {
        Some(link) => (link.socket, Some(link.session)),
        None => (None, None),
    };
    let muxed = rtcp_session.is_some() && rtcp_socket.is_none();
    let mut rtcp_readable = rtcp_socket.is_some();
    let now = || Instant::from_std(epoch, tokio::time::Instant::now().into_std());
    let at = |instant: Instant| tokio::time::Instant::from_std(epoch + instant.since_epoch());
    let mut inbound = vec![0u8; DATAGRAM_MAX];
    let mut rtcp_inbound = vec![0u8; DATAGRAM_MAX];
    let mut outbound = vec![0u8; RTP_HEADER_LEN + super::PACKET_MAX];
    let mut report = vec![0u8; REPORT_MAX];
    let far_future = tokio::time::Instant::now() + std::time::Duration::from_secs(86_400 * 365);
    let report_timer = tokio::time::sleep_until(
        rtcp_session
            .as_ref()
            .map_or(far_future, |s| at(s.next_report())),
    );
    tokio::pin!(report_timer);
    let mut digits = DigitsOut::new(sender.clock_rate());
    // Comfort silence: the agent is quiet until its first packet, and again
    // once the worker says its audio finished (100 ms without a frame), so
    // a late worker tick never puts silence into its speech. The ticker
    // catches up late ticks (Burst): the silence's timestamps step a frame
    // a packet, and a schedule that slid with each late tick would drift
    // behind them. It restarts each time the agent falls quiet.
    let silence = comfort_silence.unwrap_or_default();
    let mut quiet_ticker = tokio::time::interval(std::time::Duration::from_millis(20));
    quiet_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut agent_quiet = true;
    let mut silence_flowing = false;
    let end = loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => {
                // What the worker reported before the stop (often what led
                // to it: a hang-up, a decision) still reaches the application.
                while let Ok(output) = outputs.try_recv() {
                    if let CallOutput::Event(event) = output {
                        on_event(RtpEvent::Media(event));
                    }
                }
                break RtpEnd::Stopped;
            }
            request = next_request(&mut call_control) => match request {
                Some(request) => digits.request(request, event_payload_type),
                None => call_control = None,
            },
            _ = digits.ticker.tick(), if digits.playout.is_active() => {
                let timestamp = sender.clock_timestamp(now());
                if let (Some(event), Some(payload_type)) =
                    (digits.playout.tick(timestamp), event_payload_type)
                    && let Some(length) = sender.write_event(
                        payload_type,
                        event.marker,
                        event.timestamp,
                        &event.payload,
                        &mut outbound,
                    )
                {
                    let to = receiver.peer().unwrap_or(remote);
                    let sent = socket.send_to(&outbound[..length], to).await.is_ok();
                    receiver.count_sent(sent);
                }
                if !digits.playout.is_active() {
                    digits.finished();
                }
            }
            scheduled = quiet_ticker.tick(), if agent_quiet && !silence.is_empty() && !held && !digits.playout.is_active() => {
                // Ticks missed while paused (held, digits) or stalled are
                // not sent in a burst: the silence starts over on the clock.
                if scheduled.elapsed() > std::time::Duration::from_millis(60) {
                    quiet_ticker.reset();
                    silence_flowing = false;
                    continue;
                }
                // The first silence after the agent's audio (or digits)
                // follows a gap of a frame or two: it starts a new
                // talkspurt (marker: its timestamp follows the clock); the
                // next ones continue it.
                let after_digits = std::mem::take(&mut digits.resume_with_marker);
                let marker = !std::mem::replace(&mut silence_flowing, true) || after_digits;
                let now = now();
                if let Some(length) = sender.write(now, marker, silence, &mut outbound) {
                    let to = receiver.peer().unwrap_or(remote);
                    let packet = &outbound[..length];
                    let sent = send_audio(&socket, to, rtcp_session.as_mut(), now, packet).await;
                    receiver.count_silence_sent(sent);
                }
            }
            output = outputs.recv() => match output {
                None => break RtpEnd::WorkerGone,
                Some(CallOutput::Packet(_)) if held => receiver.count_held(true),
                Some(CallOutput::Packet(packet)) => {
                    agent_quiet = false;
                    silence_flowing = false;
                    // Digits are not mixed with speech: the agent's audio
                    // waits out the digits (dropped, as a paused talkspurt).
                    if digits.playout.is_active() {
                        continue;
                    }
                    let marker = packet.marker || std::mem::take(&mut digits.resume_with_marker);
                    let now = now();
                    let Some(length) =
                        sender.write(now, marker, packet.payload(), &mut outbound)
                    else {
                        receiver.count_sent(false);
                        continue;
                    };
                    let to = receiver.peer().unwrap_or(remote);
                    let written = &outbound[..length];
                    let sent = send_audio(&socket, to, rtcp_session.as_mut(), now, written).await;
                    receiver.count_sent(sent);
                    if let Some(tap) = &tap {
                        let _ = tap.try_send(packet);
                    }
                }
                Some(CallOutput::Event(event)) => {
                    if matches!(event, MediaEvent::AgentAudioFinished { .. }) && !agent_quiet {
                        agent_quiet = true;
                        quiet_ticker.reset_immediately();
                    }
                    let hangup = matches!(event, MediaEvent::Hangup { .. });
                    on_event(RtpEvent::Media(event));
                    if hangup {
                        break RtpEnd::HungUp;
                    }
                }
            },
            received = socket.recv_from(&mut inbound) => match received {
                Ok((length, from)) => {
                    let datagram = &inbound[..length];
                    if muxed && rtcp::is_rtcp(datagram) {
                        if let Some(session) = rtcp_session.as_mut() {
                            let _ = session.receive(now(), from, datagram);
                        }
                        continue;
                    }
                    match receiver.receive(from, datagram) {
                        // Music on hold is not the caller speaking.
                        RtpReceived::Audio(_) if held => receiver.count_held(false),
                        RtpReceived::Audio(packet) => {
                            if let Some(wire) = WirePacket::new(
                                packet.sequence,
                                packet.timestamp,
                                packet.marker,
                                packet.payload,
                            ) {
                                worker.push_packet(key, wire);
                            }
                        }
                        RtpReceived::Digit(digit) => on_event(RtpEvent::Digit(digit)),
                        RtpReceived::Dropped => {}
                    }
                    if let (Some(session), Some((ssrc, sequence, timestamp, audio))) =
                        (rtcp_session.as_mut(), receiver.take_accepted())
                    {
                        session.on_rtp_received(now(), ssrc, sequence, timestamp, audio);
                    }
                }
                // ICMP port unreachable surfaces as an error on Linux: the
                // peer is not listening yet; keep the call.
                Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {}
                Err(_) => break RtpEnd::SocketFailed,
            },
            received = recv_or_pend(rtcp_socket.as_ref(), &mut rtcp_inbound), if rtcp_readable => {
                // A failing RTCP socket never ends the call: ICMP
                // unreachable (the peer does no RTCP) is skipped, anything
                // else stops reading it.
                match (received, rtcp_session.as_mut()) {
                    (Ok((length, from)), Some(session)) => {
                        let _ = session.receive(now(), from, &rtcp_inbound[..length]);
                    }
                    (Err(error), _) if error.kind() == std::io::ErrorKind::ConnectionRefused => {}
                    (Err(_), _) => rtcp_readable = false,
                    (Ok(_), None) => {}
                }
            }
            update = next_update(control.as_mut()) => match update {
                None => control = None,
                Some(update) => {
                    if update.remote_rtp != remote {
                        // Symmetric RTP starts over on the new address.
                        remote = update.remote_rtp;
                        receiver.forget_peer();
                    }
                    if let Some(session) = rtcp_session.as_mut()
                        && !muxed
                    {
                        session.set_remote(update.remote_rtcp);
                    }
                    if update.held != held {
                        held = update.held;
                        let _ = worker.set_held(key, held).await;
                        on_event(RtpEvent::Held(held));
                    }
                }
            },
            () = &mut report_timer, if rtcp_session.is_some() => {
                if let Some(session) = rtcp_session.as_mut() {
                    let now = now();
                    if let Some(length) = session.poll_report(now, &mut report) {
                        let to = rtcp_destination(session, muxed, &receiver);
                        let out = rtcp_socket.as_ref().unwrap_or(&socket);
                        if out.send_to(&report[..length], to).await.is_err() {
                            session.count_send_error();
                        }
                    }
                    report_timer.as_mut().reset(at(session.next_report()));
                }
            }
        }
    };
    let mut stats = receiver.stats();
    if let Some(mut session) = rtcp_session {
        // RFC 3550 6.3.7: a member of a small session may send its BYE at once.
        if let Some(length) = session.write_bye(now(), &mut report) {
            let out = rtcp_socket.as_ref().unwrap_or(&socket);
            if out
                .send_to(
                    &report[..length],
                    rtcp_destination(&session, muxed, &receiver),
                )
                .await
                .is_err()
            {
                session.count_send_error();
            }
        }
        stats.rtcp = session.stats();
    }
    (end, stats)
}

/// Sends one written audio packet to `to` and tells RTCP; returns
/// whether it left.
async fn send_audio(
    socket: &UdpSocket,
    to: SocketAddr,
    rtcp: Option<&mut RtcpSession>,
    now: Instant,
    packet: &[u8],
) -> bool {
    let sent = socket.send_to(packet, to).await.is_ok();
    if sent && let Some(session) = rtcp {
        let timestamp = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        session.on_rtp_sent(now, timestamp, packet.len() - RTP_HEADER_LEN);
    }
    sent
}

/// The agent's digits on one call: the RFC 4733 playout, its 20 ms pace,
/// and the requests to answer when it is done.
struct DigitsOut {
    playout: EventPlayout,
    ticker: tokio::time::Interval,
    waiting: Vec<DigitsRequest>,
    resume_with_marker: bool,
}

impl DigitsOut {
    /// Digits on a media clock of `clock_rate` Hz (events share the
    /// audio's clock, RFC 4733 section 2.1).
    fn new(clock_rate: u32) -> Self {
        let mut ticker = tokio::time::interval(std::time::Duration::from_millis(20));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        DigitsOut {
            playout: EventPlayout::new(EventTiming::at_clock_rate(clock_rate)),
            ticker,
            waiting: Vec::new(),
            resume_with_marker: false,
        }
    }

    fn request(&mut self, request: DigitsRequest, event_payload_type: Option<u8>) {
        if event_payload_type.is_none() {
            let _ = request.reply.send(Err(
                "the call negotiated no telephone-event (RFC 4733): digits cannot be sent".into(),
            ));
            return;
        }
        if !self.playout.is_active() {
            self.ticker.reset_immediately();
        }
        self.playout.queue(&request.digits);
        self.waiting.push(request);
    }

    fn finished(&mut self) {
        self.resume_with_marker = true;
        for request in self.waiting.drain(..) {
            let _ = request
                .reply
                .send(Ok(serde_json::json!({ "sent": request.text })));
        }
    }
}

/// The next digits request (pending forever without a channel).
async fn next_request(
    control: &mut Option<mpsc::UnboundedReceiver<DigitsRequest>>,
) -> Option<DigitsRequest> {
    match control {
        Some(control) => control.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pt: u8, marker: bool, seq: u16, ts: u32) -> Vec<u8> {
        let mut packet = vec![0x80, (u8::from(marker) << 7) | pt];
        packet.extend_from_slice(&seq.to_be_bytes());
        packet.extend_from_slice(&ts.to_be_bytes());
        packet.extend_from_slice(&0x1234_5678u32.to_be_bytes());
        packet
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    #[test]
    fn parses_csrcs_extension_and_padding() {
        let mut packet = header(0, true, 7, 1600);
        packet[0] |= 0x20 | 0x10 | 2; // padding, extension, 2 CSRCs
        packet.extend_from_slice(&[0; 8]); // CSRCs
        packet.extend_from_slice(&[0xBE, 0xDE, 0, 1, 1, 2, 3, 4]); // 1-word extension
        packet.extend_from_slice(&[9; 160]);
        packet.extend_from_slice(&[0, 0, 3]); // 3 bytes of padding
        let parsed = parse_rtp(&packet).expect("valid");
        assert_eq!(parsed.payload, &[9; 160][..]);
        assert_eq!((parsed.sequence, parsed.timestamp), (7, 1600));
        assert!(parsed.marker);
        assert_eq!(parsed.ssrc, 0x1234_5678);
    }

    #[test]
    fn bad_headers_are_errors_never_panics() {
        assert_eq!(parse_rtp(&[0x80; 5]), Err(RtpError::TooShort));
        let mut v1 = header(0, false, 1, 1);
        v1[0] = 0x40;
        assert_eq!(parse_rtp(&v1), Err(RtpError::Version(1)));
        let mut csrcs = header(0, false, 1, 1);
        csrcs[0] |= 15;
        assert_eq!(parse_rtp(&csrcs), Err(RtpError::TooShort));
        let mut extension = header(0, false, 1, 1);
        extension[0] |= 0x10;
        extension.extend_from_slice(&[0, 0, 0xFF, 0xFF]);
        assert_eq!(parse_rtp(&extension), Err(RtpError::TooShort));
        let mut padding = header(0, false, 1, 1);
        padding[0] |= 0x20;
        padding.extend_from_slice(&[1, 2, 200]);
        assert_eq!(parse_rtp(&padding), Err(RtpError::Padding));
        let rtcp = [0x80, 200, 0, 6, 0, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(parse_rtp(&rtcp), Err(RtpError::Rtcp));
        // Every truncation and every first byte of a valid packet.
        let mut valid = header(8, false, 1, 1);
        valid.extend_from_slice(&[1; 160]);
        for end in 0..valid.len() {
            let _ = parse_rtp(&valid[..end]);
        }
        for first in 0..=255u8 {
            valid[0] = first;
            let _ = parse_rtp(&valid);
        }
    }

    #[test]
    fn the_first_source_is_the_peer_and_others_are_dropped() {
        let mut receiver = RtpReceiver::new(0, Some(101));
        let mut audio = header(0, true, 1, 0);
        audio.extend_from_slice(&[0xFF; 160]);
        assert!(matches!(
            receiver.receive(addr(4000), &audio),
            RtpReceived::Audio(_)
        ));
        assert_eq!(receiver.peer(), Some(addr(4000)));
        assert_eq!(receiver.receive(addr(4002), &audio), RtpReceived::Dropped);
        assert_eq!(
            receiver.receive(addr(4000), &[1, 2, 3]),
            RtpReceived::Dropped
        );
        let mut comfort_noise = header(13, false, 2, 160);
        comfort_noise.push(40);
        assert_eq!(
            receiver.receive(addr(4000), &comfort_noise),
            RtpReceived::Dropped
        );
        let stats = receiver.stats();
        assert_eq!(stats.audio_received, 1);
        assert_eq!(stats.foreign_source, 1);
        assert_eq!(stats.bad_headers, 1);
        assert_eq!(stats.other_payload_type, 1);
    }

    #[test]
    fn a_telephone_event_is_one_digit_despite_retransmitted_ends() {
        let mut receiver = RtpReceiver::new(0, Some(101));
        let event = |ts: u32, code: u8, end: bool, duration: u16| {
            let mut packet = header(101, false, 0, ts);
            packet.extend_from_slice(&[code, if end { 0x80 | 10 } else { 10 }]);
            packet.extend_from_slice(&duration.to_be_bytes());
            packet
        };
        let mut digits = Vec::new();
        for (ts, code) in [(8000u32, 5u8), (16000, 11)] {
            for duration in [160u16, 320, 480] {
                if let RtpReceived::Digit(d) =
                    receiver.receive(addr(1), &event(ts, code, false, duration))
                {
                    digits.push(d);
                }
            }
            for _ in 0..3 {
                if let RtpReceived::Digit(d) =
                    receiver.receive(addr(1), &event(ts, code, true, 640))
                {
                    digits.push(d);
                }
            }
        }
        assert_eq!(digits, vec!['5', '#']);
        assert_eq!(receiver.stats().event_packets, 12);
        assert_eq!(receiver.stats().digits, 2);
        // A short event payload is a bad packet, not a panic.
        let mut short = header(101, false, 0, 1);
        short.push(1);
        assert_eq!(receiver.receive(addr(1), &short), RtpReceived::Dropped);
    }

    #[test]
    fn an_opus_sender_steps_960_per_packet_on_its_48k_clock() {
        let mut sender = RtpSender::new(7, 111, 0, 0).with_clock_rate(48_000);
        assert_eq!(sender.clock_rate(), 48_000);
        let mut out = [0u8; 200];
        let mut stamps = Vec::new();
        for (ms, marker) in [(0, true), (20, false), (40, false), (1_040, true)] {
            let length = sender
                .write(Instant::from_millis(ms), marker, &[1; 60], &mut out)
                .expect("fits");
            let packet = parse_rtp(&out[..length]).expect("rtp");
            assert_eq!(packet.payload_type, 111);
            stamps.push(packet.timestamp);
        }
        // Contiguous within the talkspurt; after 1 s of silence, by the clock.
        assert_eq!(stamps, vec![0, 960, 1_920, 52 * 960]);
    }

    #[test]
    fn the_sender_numbers_talkspurts_by_the_clock() {
        let mut sender = RtpSender::new(0xCAFE, 0, 65_534, 1_000);
        let mut out = [0u8; 200];
        let mut sent = Vec::new();
        let mut send = |sender: &mut RtpSender, ms: u64, marker: bool| {
            let length = sender
                .write(Instant::from_millis(ms), marker, &[0x55; 160], &mut out)
                .expect("room");
            let packet = parse_rtp(&out[..length]).expect("our packet parses");
            assert_eq!(packet.ssrc, 0xCAFE);
            assert_eq!(packet.payload, &[0x55; 160][..]);
            sent.push((packet.sequence, packet.timestamp, packet.marker));
        };
        send(&mut sender, 0, true);
        send(&mut sender, 21, false);
        send(&mut sender, 39, false);
        // 1 s of silence, then a talkspurt at 1000 ms: timestamp by the clock.
        send(&mut sender, 1_001, true);
        send(&mut sender, 1_020, false);
        assert_eq!(
            sent,
            vec![
                (65_534, 1_000, true),
                (65_535, 1_160, false),
                (0, 1_320, false),
                (1, 1_000 + 50 * 160, true),
                (2, 1_000 + 51 * 160, false),
            ]
        );
        assert!(
            sender
                .write(Instant::ZERO, false, &[0; 160], &mut [0u8; 100])
                .is_none()
        );
    }

    #[test]
    fn ports_are_even_and_taken_in_turn() {
        let ports = RtpPorts::new(IpAddr::from([127, 0, 0, 1]), 41_001..=41_011);
        let a = ports.bind().expect("a port");
        let b = ports.bind().expect("another port");
        let (pa, pb) = (
            a.local_addr().expect("addr").port(),
            b.local_addr().expect("addr").port(),
        );
        assert_eq!(pa % 2, 0);
        assert_eq!(pb % 2, 0);
        assert_ne!(pa, pb);
        assert!(
            RtpPorts::new(IpAddr::from([127, 0, 0, 1]), 41_021..=41_021)
                .bind()
                .is_err()
        );
    }
}
