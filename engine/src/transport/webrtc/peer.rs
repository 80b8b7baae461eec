//! [`WebRtcPeer`]: the WebRTC side of one call, sans-IO.
//!
//! It wraps a [`str0m::Rtc`] (ICE, DTLS, SRTP, RTP/RTCP) set up for one
//! Opus 48 kHz audio track both ways, and speaks the engine's terms: an SDP
//! offer in and an answer out ([`WebRtcPeer::accept`]), datagrams and
//! timeouts in, and out of [`WebRtcPeer::poll_output`] datagrams to send,
//! the caller's Opus packets (sequence and 48 kHz timestamp for the jitter
//! buffer), and the connection's state. Agent packets go in through
//! [`WebRtcPeer::send_audio`], one per worker tick.
//!
//! Time is an input (`now` everywhere); nothing here reads a clock or does
//! I/O. The contract of str0m holds here too: after every mutation
//! (`receive`, `timeout`, `send_audio`, `close`) drain `poll_output` until it
//! returns [`PeerOutput::Timeout`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};
use thiserror::Error;

/// The RTP clock of Opus (RFC 7587: always 48 kHz).
pub const OPUS_CLOCK_RATE: u32 = 48_000;
/// RTP ticks in one 20 ms packet at [`OPUS_CLOCK_RATE`].
pub const TICKS_PER_PACKET: u64 = 960;
/// How long a peer waits idle once closed before it reports its next timeout.
const IDLE: Duration = Duration::from_secs(3_600);
/// The longest a close may take to drain (close_notify, RTCP BYE) before
/// the peer gives up on it.
const CLOSE_DRAIN: Duration = Duration::from_millis(500);

/// An offer this endpoint cannot answer. Each is the caller's fault (a 400).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum OfferError {
    /// The text is not an SDP offer.
    #[error("the offer is not valid SDP: {0}")]
    BadSdp(String),
    /// The offer has no audio m-line.
    #[error("the offer has no audio")]
    NoAudio,
    /// The offer's audio has no Opus.
    #[error(
        "the offer's audio has no Opus (opus/48000/2): Opus is the only codec this endpoint speaks"
    )]
    NoOpus,
    /// The offer's audio does not both send and receive.
    #[error(
        "the offer's audio is {0}: the call needs sendrecv (the browser's microphone and the agent's voice)"
    )]
    Direction(String),
    /// The WebRTC stack refused the offer (no fingerprint, no ICE credentials, ...).
    #[error("the offer was refused: {0}")]
    Refused(String),
    /// The local address cannot be a host candidate (unspecified, multicast, ...).
    #[error("{0} cannot be an ICE candidate: {1}")]
    LocalAddress(SocketAddr, String),
    /// The WebRTC stack failed on this offer (caught, never a crash).
    #[error("the offer could not be processed")]
    Internal,
}

/// Why a peer connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerClosed {
    /// The browser closed the connection (DTLS close_notify).
    Remote,
    /// ICE lost the browser (consent checks failed: the tab or network went away).
    Disconnected,
    /// We closed it ([`WebRtcPeer::close`]).
    Local,
    /// The WebRTC stack failed.
    Failed(String),
}

/// One Opus packet from the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerPacket {
    /// RTP sequence number.
    pub sequence: u16,
    /// RTP timestamp (48 kHz).
    pub timestamp: u32,
    /// First packet of a talkspurt (RTP marker).
    pub marker: bool,
    /// The Opus packet.
    pub payload: Arc<[u8]>,
}

/// What a peer wants done, from [`WebRtcPeer::poll_output`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerOutput {
    /// Send this datagram from the peer's socket.
    Transmit {
        /// Where to.
        destination: SocketAddr,
        /// The datagram.
        contents: Vec<u8>,
    },
    /// The caller's audio.
    Audio(CallerPacket),
    /// ICE and DTLS are up: audio flows from now on.
    Connected,
    /// The connection is over (reported once).
    Closed(PeerClosed),
    /// Nothing more to do until this time (or a datagram comes).
    Timeout(Instant),
}

/// Counters of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PeerStats {
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Datagrams that were neither STUN, DTLS, RTP nor RTCP (ignored).
    pub datagrams_unknown: u64,
    /// Datagrams the stack refused (ignored).
    pub datagrams_refused: u64,
    /// Opus packets from the caller.
    pub packets_in: u64,
    /// Media of another m-line or codec than the call's Opus (ignored).
    pub packets_ignored: u64,
    /// Caller packets larger than the worker's channel carries (dropped;
    /// counted by the driver).
    pub packets_oversized: u64,
    /// Agent packets sent.
    pub packets_out: u64,
    /// Agent packets dropped because the connection was not up.
    pub packets_not_connected: u64,
    /// Agent packets the stack refused.
    pub packets_refused: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Connected,
    Closing,
    Closed,
}

/// The WebRTC peer of one call: one Opus track each way.
pub struct WebRtcPeer {
    rtc: Rtc,
    local: SocketAddr,
    mid: Mid,
    pt: Pt,
    phase: Phase,
    /// Outputs drained while accepting the offer, handed out first.
    pending: VecDeque<PeerOutput>,
    /// The close to report, once.
    closed: Option<PeerClosed>,
    /// While closing: why, and since when.
    closing: Option<(PeerClosed, Instant)>,
    /// The first agent packet's time and RTP time, and the last RTP time sent.
    rtp_anchor: Option<(Instant, u64)>,
    last_rtp_time: u64,
    last_now: Instant,
    stats: PeerStats,
}

impl std::fmt::Debug for WebRtcPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtcPeer")
            .field("local", &self.local)
            .field("mid", &self.mid)
            .field("pt", &self.pt)
            .field("phase", &self.phase)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// The parts of an offer checked before the stack sees it: the first audio
/// m-line offering Opus, and its mid.
fn precheck(sdp: &str) -> Result<String, OfferError> {
    // str0m parses the SDP; this gives the caller a precise reason.
    if !sdp.trim_start().starts_with("v=0") {
        return Err(OfferError::BadSdp("it does not start with v=0".to_owned()));
    }
    struct Section {
        audio: bool,
        opus: bool,
        mid: Option<String>,
    }
    let mut sections: Vec<Section> = Vec::new();
    for line in sdp.lines() {
        let line = line.trim();
        if let Some(media) = line.strip_prefix("m=") {
            sections.push(Section {
                audio: media.starts_with("audio "),
                opus: false,
                mid: None,
            });
        } else if let Some(section) = sections.last_mut() {
            if let Some(mid) = line.strip_prefix("a=mid:") {
                section.mid = Some(mid.trim().to_owned());
            } else if let Some(rtpmap) = line.strip_prefix("a=rtpmap:")
                && let Some((_, encoding)) = rtpmap.split_once(' ')
                && encoding.to_ascii_lowercase().starts_with("opus/48000")
            {
                section.opus = true;
            }
        }
    }
    if !sections.iter().any(|section| section.audio) {
        return Err(OfferError::NoAudio);
    }
    let section = sections
        .into_iter()
        .find(|section| section.audio && section.opus)
        .ok_or(OfferError::NoOpus)?;
    section
        .mid
        .ok_or_else(|| OfferError::BadSdp("the audio m-line has no a=mid".to_owned()))
}

impl WebRtcPeer {
    /// Answers `offer` (SDP text) for a peer whose socket is bound at
    /// `local` (its only ICE candidate: non-trickle, so the answer carries
    /// it). Returns the peer and the SDP answer. Never panics on bad input.
    pub fn accept(
        now: Instant,
        offer: &str,
        local: SocketAddr,
    ) -> Result<(Self, String), OfferError> {
        let mid = precheck(offer)?;
        let offer = SdpOffer::from_sdp_string(offer)
            .map_err(|error| OfferError::BadSdp(error.to_string()))?;
        let candidate = Candidate::host(local, "udp")
            .map_err(|error| OfferError::LocalAddress(local, error.to_string()))?;
        // The stack is not ours to trust with hostile input: a panic in it is
        // a refused offer, not a dead server.
        std::panic::catch_unwind(AssertUnwindSafe(move || {
            Self::accept_parsed(now, offer, Mid::from(mid.as_str()), candidate, local)
        }))
        .unwrap_or(Err(OfferError::Internal))
    }

    fn accept_parsed(
        now: Instant,
        offer: SdpOffer,
        mid: Mid,
        candidate: Candidate,
        local: SocketAddr,
    ) -> Result<(Self, String), OfferError> {
        let mut rtc = RtcConfig::new()
            .clear_codecs()
            .enable_opus(true, false)
            // The agent talks over the caller on purpose only; stats unused.
            .set_stats_interval(None)
            .build(now);
        rtc.add_local_candidate(candidate);
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|error| OfferError::Refused(error.to_string()))?;
        // Drain what accepting produced (the first connectivity checks).
        let mut pending = VecDeque::new();
        loop {
            match rtc.poll_output() {
                Ok(Output::Timeout(_)) => break,
                Ok(Output::Transmit(transmit)) => pending.push_back(PeerOutput::Transmit {
                    destination: transmit.destination,
                    contents: transmit.contents.into(),
                }),
                Ok(Output::Event(_)) => {}
                Err(error) => return Err(OfferError::Refused(error.to_string())),
            }
        }
        let media = rtc.media(mid).ok_or(OfferError::NoAudio)?;
        if media.kind() != MediaKind::Audio {
            return Err(OfferError::NoAudio);
        }
        let direction = media.direction();
        if direction != Direction::SendRecv {
            return Err(OfferError::Direction(direction.to_string()));
        }
        let pt = rtc
            .writer(mid)
            .and_then(|writer| {
                writer
                    .payload_params()
                    .find(|params| params.spec().codec == Codec::Opus)
                    .map(|params| params.pt())
            })
            .ok_or(OfferError::NoOpus)?;
        let answer = answer.to_sdp_string();
        Ok((
            WebRtcPeer {
                rtc,
                local,
                mid,
                pt,
                phase: Phase::Connecting,
                pending,
                closed: None,
                closing: None,
                rtp_anchor: None,
                last_rtp_time: 0,
                last_now: now,
                stats: PeerStats::default(),
            },
            answer,
        ))
    }

    /// The peer's socket address (its ICE candidate).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Whether ICE and DTLS are up.
    pub fn is_connected(&self) -> bool {
        self.phase == Phase::Connected
    }

    /// Whether the connection is over (closed, and the close reported).
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed && self.closed.is_none() && self.pending.is_empty()
    }

    /// The peer's counters.
    pub fn stats(&self) -> PeerStats {
        self.stats
    }

    /// A datagram that arrived on the peer's socket from `source`.
    /// Garbage is counted and ignored: anyone can send to the port.
    pub fn receive(&mut self, now: Instant, source: SocketAddr, contents: &[u8]) {
        self.last_now = now;
        self.stats.datagrams_in += 1;
        if self.phase == Phase::Closed {
            return;
        }
        let Ok(receive) = Receive::new(Protocol::Udp, source, self.local, contents) else {
            self.stats.datagrams_unknown += 1;
            return;
        };
        if self.rtc.handle_input(Input::Receive(now, receive)).is_err() {
            self.stats.datagrams_refused += 1;
            self.check_alive();
        }
    }

    /// The last [`PeerOutput::Timeout`] is due.
    pub fn timeout(&mut self, now: Instant) {
        self.last_now = now;
        if self.phase == Phase::Closed {
            return;
        }
        if let Err(error) = self.rtc.handle_input(Input::Timeout(now)) {
            self.fail(error.to_string());
        }
    }

    /// Sends one 20 ms agent packet at `now` (the worker's tick). RTP time
    /// runs 960 per packet within a talkspurt and follows the clock across
    /// the silence before one (`starts_talkspurt`, also the RTP marker), so
    /// the browser's jitter buffer sees real gaps as gaps. Returns whether
    /// it was sent (not before the connection is up, nor after it closed).
    pub fn send_audio(&mut self, now: Instant, payload: &[u8], starts_talkspurt: bool) -> bool {
        self.last_now = now;
        if self.phase != Phase::Connected {
            self.stats.packets_not_connected += 1;
            return false;
        }
        let rtp_time = match self.rtp_anchor {
            None => {
                self.rtp_anchor = Some((now, 0));
                0
            }
            Some((anchor, base)) => {
                let next = self.last_rtp_time + TICKS_PER_PACKET;
                if starts_talkspurt {
                    let elapsed = now.saturating_duration_since(anchor).as_micros() as u64;
                    let by_clock = base + elapsed * u64::from(OPUS_CLOCK_RATE) / 1_000_000;
                    let by_clock = by_clock / TICKS_PER_PACKET * TICKS_PER_PACKET;
                    next.max(by_clock)
                } else {
                    next
                }
            }
        };
        let Some(writer) = self.rtc.writer(self.mid) else {
            self.stats.packets_refused += 1;
            return false;
        };
        let time = MediaTime::new(rtp_time, Frequency::FORTY_EIGHT_KHZ);
        match writer
            .start_of_talkspurt(starts_talkspurt)
            .write(self.pt, now, time, payload)
        {
            Ok(()) => {
                self.last_rtp_time = rtp_time;
                self.stats.packets_out += 1;
                true
            }
            Err(_) => {
                self.stats.packets_refused += 1;
                false
            }
        }
    }

    /// Closes the connection (the agent hung up): DTLS close_notify and
    /// RTCP BYE go out through the next polls, then [`PeerClosed::Local`].
    pub fn close(&mut self) {
        self.start_close(PeerClosed::Local);
    }

    fn start_close(&mut self, cause: PeerClosed) {
        match self.phase {
            Phase::Closing | Phase::Closed => {}
            Phase::Connecting | Phase::Connected => {
                self.phase = Phase::Closing;
                self.closing = Some((cause, self.last_now));
                if self.rtc.close().is_err() {
                    self.rtc.disconnect();
                }
            }
        }
    }

    /// The next thing to do. Drain until [`PeerOutput::Timeout`] after every
    /// mutation.
    pub fn poll_output(&mut self) -> PeerOutput {
        loop {
            if let Some(output) = self.pending.pop_front() {
                return output;
            }
            if let Some(closed) = self.closed.take() {
                return PeerOutput::Closed(closed);
            }
            if self.phase == Phase::Closed {
                return PeerOutput::Timeout(self.last_now + IDLE);
            }
            let output = match self.rtc.poll_output() {
                Ok(output) => output,
                Err(error) => {
                    self.fail(error.to_string());
                    continue;
                }
            };
            match output {
                Output::Timeout(at) => {
                    if let Some((cause, since)) = &self.closing {
                        let give_up = *since + CLOSE_DRAIN;
                        if !self.rtc.is_alive() || self.last_now >= give_up {
                            let cause = cause.clone();
                            self.rtc.disconnect();
                            self.finish(cause);
                            continue;
                        }
                        return PeerOutput::Timeout(at.min(give_up));
                    }
                    return PeerOutput::Timeout(at);
                }
                Output::Transmit(transmit) => {
                    return PeerOutput::Transmit {
                        destination: transmit.destination,
                        contents: transmit.contents.into(),
                    };
                }
                Output::Event(event) => {
                    if let Some(output) = self.on_event(event) {
                        return output;
                    }
                }
            }
        }
    }

    fn on_event(&mut self, event: Event) -> Option<PeerOutput> {
        match event {
            Event::Connected => {
                if self.phase == Phase::Connecting {
                    self.phase = Phase::Connected;
                    return Some(PeerOutput::Connected);
                }
                None
            }
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.rtc.disconnect();
                self.finish(PeerClosed::Disconnected);
                None
            }
            Event::Closed => {
                // The browser closed: let the stack answer (close_notify), then report.
                self.start_close(PeerClosed::Remote);
                None
            }
            Event::MediaData(data) => {
                if data.mid != self.mid || data.params.spec().codec != Codec::Opus {
                    self.stats.packets_ignored += 1;
                    return None;
                }
                self.stats.packets_in += 1;
                Some(PeerOutput::Audio(CallerPacket {
                    sequence: data.seq_range.start().as_u16(),
                    timestamp: data.time.rebase(Frequency::FORTY_EIGHT_KHZ).numer() as u32,
                    marker: data.audio_start_of_talk_spurt,
                    payload: data.data,
                }))
            }
            _ => None,
        }
    }

    fn check_alive(&mut self) {
        if !self.rtc.is_alive() && self.phase != Phase::Closed {
            let cause = match self.closing.take() {
                Some((cause, _)) => cause,
                None => PeerClosed::Failed("the connection stopped".to_owned()),
            };
            self.finish(cause);
        }
    }

    fn fail(&mut self, reason: String) {
        self.rtc.disconnect();
        self.finish(PeerClosed::Failed(reason));
    }

    fn finish(&mut self, cause: PeerClosed) {
        if self.phase != Phase::Closed {
            self.phase = Phase::Closed;
            self.closing = None;
            self.closed = Some(cause);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use str0m::change::SdpAnswer;

    const PEER: &str = "127.0.0.1:40000";
    const BROWSER: &str = "127.0.0.1:40001";

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("address")
    }

    /// A browser stand-in: a str0m peer offering one sendrecv audio track
    /// (Opus, or only PCMU).
    fn browser(now: Instant, opus: bool) -> (Rtc, String, str0m::change::SdpPendingOffer, Mid) {
        let config = RtcConfig::new().clear_codecs();
        let config = if opus {
            config.enable_opus(true, false)
        } else {
            config.enable_pcmu(true, false)
        };
        let mut rtc = config.build(now);
        rtc.add_local_candidate(Candidate::host(addr(BROWSER), "udp").expect("candidate"));
        let mut change = rtc.sdp_api();
        let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
        let (offer, pending) = change.apply().expect("an offer");
        (rtc, offer.to_sdp_string(), pending, mid)
    }

    #[test]
    fn bad_offers_are_typed_errors() {
        let now = Instant::now();
        let local = addr(PEER);
        let error = WebRtcPeer::accept(now, "hello, world", local).expect_err("not SDP");
        assert!(matches!(error, OfferError::BadSdp(_)), "{error:?}");
        let error = WebRtcPeer::accept(now, "v=0\r\nthis is not sdp\r\n", local).expect_err("bad");
        assert_eq!(error, OfferError::NoAudio);
        let (_, offer, _, _) = browser(now, true);
        let broken = offer.replace("a=fingerprint", "a=nofingerprint");
        let error = WebRtcPeer::accept(now, &broken, local).expect_err("no fingerprint");
        assert!(matches!(error, OfferError::Refused(_)), "{error:?}");
        let truncated = &offer[..offer.len() / 2];
        assert!(WebRtcPeer::accept(now, truncated, local).is_err());
        let (_, pcmu_only, _, _) = browser(now, false);
        let error = WebRtcPeer::accept(now, &pcmu_only, local).expect_err("no opus");
        assert_eq!(error, OfferError::NoOpus);
        assert!(error.to_string().contains("no Opus"), "{error}");
        let recvonly = offer.replace("a=sendrecv", "a=recvonly");
        let error = WebRtcPeer::accept(now, &recvonly, local).expect_err("recvonly");
        assert!(matches!(error, OfferError::Direction(_)), "{error:?}");
        let unspecified = addr("0.0.0.0:40000");
        let error = WebRtcPeer::accept(now, &offer, unspecified).expect_err("0.0.0.0");
        assert!(matches!(error, OfferError::LocalAddress(..)), "{error:?}");
    }

    /// Both peers in memory on virtual time: datagrams hop straight across.
    struct Link {
        now: Instant,
        peer: WebRtcPeer,
        browser: Rtc,
        mid: Mid,
        heard: Vec<CallerPacket>,
        closed: Option<PeerClosed>,
        connected: bool,
        browser_connected: bool,
        browser_closed: bool,
        browser_heard: Vec<(u64, Vec<u8>)>,
    }

    impl Link {
        fn new() -> Link {
            let now = Instant::now();
            let (mut browser_rtc, offer, pending, mid) = browser(now, true);
            let (peer, answer) = WebRtcPeer::accept(now, &offer, addr(PEER)).expect("accepted");
            let answer = SdpAnswer::from_sdp_string(&answer).expect("answer parses");
            browser_rtc
                .sdp_api()
                .accept_answer(pending, answer)
                .expect("answer accepted");
            Link {
                now,
                peer,
                browser: browser_rtc,
                mid,
                heard: Vec::new(),
                closed: None,
                connected: false,
                browser_connected: false,
                browser_closed: false,
                browser_heard: Vec::new(),
            }
        }

        /// Drains both sides until neither has anything to send now.
        fn pump(&mut self) {
            for _ in 0..100 {
                let mut moved = false;
                loop {
                    match self.peer.poll_output() {
                        PeerOutput::Timeout(_) => break,
                        PeerOutput::Transmit {
                            destination,
                            contents,
                        } => {
                            assert_eq!(destination, addr(BROWSER));
                            moved = true;
                            if let Ok(receive) =
                                Receive::new(Protocol::Udp, addr(PEER), addr(BROWSER), &contents)
                            {
                                let _ =
                                    self.browser.handle_input(Input::Receive(self.now, receive));
                            }
                        }
                        PeerOutput::Audio(packet) => self.heard.push(packet),
                        PeerOutput::Connected => self.connected = true,
                        PeerOutput::Closed(closed) => self.closed = Some(closed),
                    }
                }
                loop {
                    match self.browser.poll_output() {
                        Ok(Output::Timeout(_)) | Err(_) => break,
                        Ok(Output::Transmit(transmit)) => {
                            moved = true;
                            self.peer
                                .receive(self.now, transmit.source, &transmit.contents);
                        }
                        Ok(Output::Event(Event::Connected)) => self.browser_connected = true,
                        Ok(Output::Event(Event::Closed)) => self.browser_closed = true,
                        Ok(Output::Event(Event::MediaData(data))) => self
                            .browser_heard
                            .push((data.time.numer(), data.data.to_vec())),
                        Ok(Output::Event(_)) => {}
                    }
                }
                if !moved {
                    return;
                }
            }
        }

        /// Advances virtual time by `step`, firing both sides' timers.
        fn advance(&mut self, step: Duration) {
            self.now += step;
            self.peer.timeout(self.now);
            let _ = self.browser.handle_input(Input::Timeout(self.now));
            self.pump();
        }

        fn connect(&mut self) {
            self.pump();
            for _ in 0..200 {
                if self.connected && self.browser_connected {
                    return;
                }
                self.advance(Duration::from_millis(10));
            }
            panic!("no connection: {:?}", self.peer);
        }
    }

    #[test]
    fn audio_flows_both_ways_and_a_local_close_reaches_the_browser() {
        let mut link = Link::new();
        // Agent audio before the connection is up is dropped, counted.
        let now = link.now;
        assert!(!link.peer.send_audio(now, &[1, 2, 3], true));
        assert_eq!(link.peer.stats().packets_not_connected, 1);
        link.connect();
        assert!(link.peer.is_connected());

        // The browser's packets come out numbered, 960 ticks apart.
        let mid = link.mid;
        let pt = {
            let writer = link.browser.writer(mid).expect("writer");
            writer.payload_params().next().expect("opus").pt()
        };
        for n in 0..10u64 {
            let now = link.now;
            let writer = link.browser.writer(mid).expect("writer");
            writer
                .write(
                    pt,
                    now,
                    MediaTime::new(n * TICKS_PER_PACKET, Frequency::FORTY_EIGHT_KHZ),
                    vec![0xF8, n as u8, 0xAA],
                )
                .expect("write");
            link.advance(Duration::from_millis(20));
        }
        assert_eq!(link.heard.len(), 10, "{:?}", link.peer.stats());
        for pair in link.heard.windows(2) {
            assert_eq!(pair[1].sequence, pair[0].sequence.wrapping_add(1));
            assert_eq!(pair[1].timestamp.wrapping_sub(pair[0].timestamp), 960);
        }
        assert_eq!(&link.heard[3].payload[..], &[0xF8, 3, 0xAA]);

        // The agent's packets reach the browser; a talkspurt after a silence
        // jumps the RTP time by the silence.
        for n in 0..5u8 {
            let now = link.now;
            assert!(link.peer.send_audio(now, &[0xF8, n], n == 0));
            link.advance(Duration::from_millis(20));
        }
        link.advance(Duration::from_millis(400));
        let now = link.now;
        assert!(link.peer.send_audio(now, &[0xF8, 9], true));
        link.advance(Duration::from_millis(20));
        link.advance(Duration::from_millis(100));
        assert_eq!(link.browser_heard.len(), 6, "{:?}", link.peer.stats());
        assert_eq!(link.browser_heard[1].1, vec![0xF8, 1]);
        let step = link.browser_heard[1].0 - link.browser_heard[0].0;
        assert_eq!(step, 960);
        let jump = link.browser_heard[5].0 - link.browser_heard[4].0;
        assert!(
            jump >= 960 * 20,
            "RTP time after 400 ms of silence moved {jump}"
        );
        assert_eq!(link.peer.stats().packets_out, 6);

        // Garbage on the port is ignored.
        let now = link.now;
        link.peer
            .receive(now, addr("127.0.0.1:9"), b"\x00\x01garbage");
        link.pump();
        assert!(link.peer.is_connected());

        // The agent hangs up: the browser learns it, the peer reports it once.
        link.peer.close();
        for _ in 0..100 {
            if link.closed.is_some() {
                break;
            }
            link.advance(Duration::from_millis(10));
        }
        assert_eq!(link.closed, Some(PeerClosed::Local));
        assert!(link.browser_closed, "the browser saw no close");
        assert!(link.peer.is_closed());
        let now = link.now;
        assert!(!link.peer.send_audio(now, &[1], false));
    }

    #[test]
    fn the_browser_closing_ends_the_peer() {
        let mut link = Link::new();
        link.connect();
        link.browser.close().expect("close");
        for _ in 0..100 {
            if link.closed.is_some() {
                break;
            }
            link.advance(Duration::from_millis(10));
        }
        assert_eq!(link.closed, Some(PeerClosed::Remote));
    }
}
