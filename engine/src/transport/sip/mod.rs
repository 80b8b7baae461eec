//! SIP over UDP and TCP: real SIP peers (PBXs, trunks, softphones) call the engine.
//!
//! - [`sdp`]: the offer/answer of the call's audio (PCMU/PCMA, DTMF events).
//! - [`message`]: the SIP message parser and response builder.
//! - [`uas`]: the sans-IO user agent server (transactions, timers, dialogs).
//! - [`SipServer`]: the driver. One task owns the SIP socket and the UAS;
//!   each answered call gets its own RTP socket and task
//!   ([`run_rtp`](super::rtp::run_rtp)) that feeds a
//!   [`MediaWorker`](crate::session::MediaWorker) through a [`WorkerHandle`],
//!   exactly like the media-stream transport.
//!
//! The SIP layer is our own rather than `rsipstack`: an answering UA over
//! UDP needs a small part of RFC 3261, and a sans-IO core runs its timers on
//! virtual time in unit tests, which a tokio-bound stack cannot; it also
//! keeps ~190 crates out of the build.
//!
//! A call's life: INVITE -> `100 Trying` -> the [`SipCallFactory`] sets up
//! the call's agent and an RTP port is bound -> `180 Ringing` -> `200 OK`
//! with the SDP answer (retransmitted until the ACK) -> on the ACK the call
//! is added to the worker and its media flows; the agent speaks only then.
//! A BYE from the peer ends it; a hangup from the turn machine or the agent
//! sends our BYE. Everything the call started is stopped when it ends, and
//! the application hears one [`SipEvent::Ended`].
//!
//! Outbound calls go through the same socket and driver: a [`SipDialer`]
//! (from [`SipServer::dialer`]) places them with the sans-IO [`uac`]; the
//! callee's ringing is [`SipEvent::CalleeRinging`], and on its 200 OK (ACKed)
//! the call joins the worker exactly like an inbound one. The agent never
//! hears nor speaks into ringing or early media. Trunks may challenge with
//! digest authentication ([`digest`]); numbers of the embedded default live
//! on the [`carrier::LocalCarrier`]. [`outcome`] maps how a call ended to
//! the status the control plane stores.
//!
//! In a call: RTCP reports both ways ([`rtcp`](super::rtcp), on RTP port + 1
//! or muxed when offered; loss, jitter and RTT end in the call's
//! [`RtpStats`]); re-INVITEs hold, resume and move the media
//! ([`reinvite`]); session timers are negotiated, refreshed and enforced
//! ([`session_timer`]); the agent's `transfer_call` sends REFER and
//! follows its NOTIFYs ([`refer`]); while the agent is quiet the call
//! sends comfort silence ([`super::comfort_silence`]). An INVITE past the
//! media worker's capacity gets 503. Beside the calls: a TCP listener on the SIP port
//! ([`tcp`]) and, if configured, the registration at a trunk's registrar
//! ([`register`], un-registered by [`SipServer::run_until`]'s stop).

pub mod carrier;
pub mod digest;
pub mod message;
pub mod outbound;
pub mod outcome;
pub mod refer;
pub mod register;
pub mod reinvite;
pub mod sdp;
pub mod session_timer;
pub mod tcp;
pub mod uac;
pub mod uas;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use thiserror::Error;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::rtp::{
    RtcpLink, RtpCall, RtpEnd, RtpEvent, RtpPorts, RtpReceiver, RtpSender, RtpStats, run_rtp,
};
use super::{CallSpec, WirePacket, WorkerHandle};
use crate::clock::Instant;
use crate::conversation::call_control::{
    CallControl, CallControlRequests, DigitsRequest, TransferRequest,
};
use crate::events::EndedBy;
use crate::session::{CallMediaConfig, ConversationLink, MediaEvent};
pub use carrier::LocalCarrier;
pub use digest::Credentials;
use message::SipMessage;
pub use outbound::{DialError, DialedCall, OutboundCall, Route, SipDialer, SipTrunk};
pub use outcome::{CallOutcome, CallResult, call_outcome};
pub use register::{RegistrationConfig, RegistrationStatus};
pub use reinvite::MediaUpdate;
pub use uac::{SipUac, UacConfig, UacEnd, UacOutput};
pub use uas::{CallEnd, IncomingCall, SipCallId, SipUas, UasConfig, UasOutput};

/// The longest SIP datagram read.
const DATAGRAM_MAX: usize = 16 * 1024;

/// Open TCP and TLS connections at most; more are closed at once (a
/// flood of connections must not exhaust the process).
const TCP_CONNECTIONS_MAX: usize = 4_096;

/// How long an outbound call over TCP waits for its connection.
const TCP_CONNECT_WAIT: Duration = Duration::from_secs(5);

/// How long a TLS client has to finish its handshake.
const TLS_HANDSHAKE_WAIT: Duration = Duration::from_secs(10);

/// How long [`SipServer::run_until`] waits for the registrar to confirm
/// the un-REGISTER before it returns anyway.
pub const UNREGISTER_WAIT: Duration = Duration::from_secs(5);

/// How the SIP server listens and answers.
#[derive(Debug, Clone)]
pub struct SipConfig {
    /// The UDP address the SIP socket binds.
    pub bind: SocketAddr,
    /// The address peers reach us at (SDP, Contact); the bind address if `None`.
    pub advertised_ip: Option<IpAddr>,
    /// The ports RTP sockets take, one even port per call.
    pub rtp_ports: RangeInclusive<u16>,
    /// The numbers (Request-URI users) answered; anything else gets 404.
    /// Empty answers any number.
    pub numbers: Vec<String>,
    /// Ringing time before the 200 OK.
    pub answer_after: Duration,
    /// Session timers of inbound calls (RFC 4028).
    pub session_timer: session_timer::SessionTimerConfig,
    /// Register our address at a trunk's registrar (RFC 3261 10), if it
    /// needs to know where to send our calls.
    pub register: Option<register::RegistrationConfig>,
    /// Also listen for SIP over TCP on the same address and port.
    pub tcp: bool,
    /// Also listen for SIP over TLS, where a certificate is configured.
    pub tls: Option<tcp::SipTls>,
}

impl SipConfig {
    /// SIP on `bind`, RTP on 40000-40999, any number, answered at once.
    pub fn new(bind: SocketAddr) -> Self {
        SipConfig {
            bind,
            advertised_ip: None,
            rtp_ports: 40_000..=40_999,
            numbers: Vec::new(),
            answer_after: Duration::ZERO,
            session_timer: session_timer::SessionTimerConfig::default(),
            register: None,
            tcp: true,
            tls: None,
        }
    }
}

/// The application refusing a call (answered with `status`).
#[derive(Debug, Error)]
#[error("call refused with {status}: {reason}")]
pub struct SipCallRefused {
    /// The SIP final status sent (4xx-6xx; 480, 486, 603 ...).
    pub status: u16,
    /// Why, for logs.
    pub reason: String,
}

/// A call as the application sets it up when the INVITE arrives.
#[derive(Debug)]
pub struct SipCallSetup {
    /// The call's media; the codecs are set to the negotiated one.
    pub media: CallMediaConfig,
    /// The agent and recognizer, if the call has them.
    pub link: Option<ConversationLink>,
    /// The call clock's zero (the agent loop's epoch).
    pub epoch: std::time::Instant,
    /// Where the transport reports the call's [`SipEvent`]s.
    pub events: Option<mpsc::UnboundedSender<SipEvent>>,
    /// Cancelled when the call ends (for the application's per-call tasks).
    pub cancel: CancellationToken,
    /// A copy of every agent packet sent (call recording, tests).
    pub tap: Option<mpsc::Sender<WirePacket>>,
}

/// Sets up the call of each INVITE (runs on the SIP task: keep it quick).
pub trait SipCallFactory: Send + Sync + 'static {
    /// The call for this INVITE, or a refusal.
    fn open_call(&self, call: &IncomingCall) -> Result<SipCallSetup, SipCallRefused>;
}

impl<F> SipCallFactory for F
where
    F: Fn(&IncomingCall) -> Result<SipCallSetup, SipCallRefused> + Send + Sync + 'static,
{
    fn open_call(&self, call: &IncomingCall) -> Result<SipCallSetup, SipCallRefused> {
        self(call)
    }
}

/// Why a call ended, as the application hears it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SipEnd {
    /// The peer hung up (BYE).
    RemoteBye,
    /// The peer cancelled before the answer.
    Canceled,
    /// We hung up (the turn machine, the agent, or the application); we sent BYE.
    HungUp,
    /// The ACK of our 200 never came.
    AckTimeout,
    /// The call was refused with this status (factory, no RTP port).
    Rejected(u16),
    /// The media worker could not take or keep the call.
    WorkerFailed(String),
    /// The RTP socket failed.
    SocketFailed,
    /// Outbound: the callee or the trunk answered our INVITE with this
    /// final status (486 busy, 480 unavailable, 401 after our credentials ...).
    Refused(u16),
    /// Outbound: no answer within the ring timeout; we sent CANCEL.
    RingTimeout,
    /// Outbound: the application hung up before the answer; we sent CANCEL.
    Abandoned,
    /// Outbound: nothing answered our INVITE (timer B, 64*T1).
    NoResponse,
    /// Outbound: the 200 OK carried no SDP answer we can use; we sent BYE.
    BadAnswer,
    /// The session timer ran out (RFC 4028): no refresh came, or ours
    /// failed; we sent BYE.
    SessionExpired,
    /// The agent transferred the call (REFER, the target answered); we sent BYE.
    Transferred {
        /// The destination, as configured.
        to: String,
    },
}

/// What the transport reports about a call.
#[derive(Debug, Clone, PartialEq)]
pub enum SipEvent {
    /// Inbound: the INVITE was accepted; the call rings.
    Ringing(IncomingCall),
    /// Outbound: the callee rings (its first 180 or 183). Its early media,
    /// if any, is dropped: the agent neither hears nor speaks before the answer.
    CalleeRinging {
        /// 180 or 183.
        status: u16,
        /// The response carried an SDP (early media).
        early_media: bool,
    },
    /// Answered (inbound: our 200 was ACKed; outbound: the callee's 200
    /// came and we ACKed): the call is on the worker, media flows.
    Answered,
    /// A media event of the call (turns, barge-ins, agent audio).
    Media(MediaEvent),
    /// A DTMF key (RFC 4733).
    Dtmf {
        /// `0`-`9`, `*`, `#`, `A`-`D`.
        digit: char,
    },
    /// The peer put the call on hold (`held`, by a re-INVITE with
    /// `sendonly`/`inactive`: the agent is silent and hears nothing) or
    /// resumed it.
    Hold {
        /// On hold now.
        held: bool,
    },
    /// The call is over and everything it started has stopped.
    Ended {
        /// Why.
        reason: SipEnd,
        /// The RTP counters (zero if media never started).
        rtp: RtpStats,
    },
}

/// What a running [`SipServer`] holds right now, readable from any task
/// (from [`SipServer::load`]). Every call the server tracks is released by
/// its end or by the RFC 3261 timers; these going back to zero when the
/// peers are gone is how a leak would show.
#[derive(Debug, Clone, Default)]
pub struct SipLoad(Arc<LoadCounters>);

#[derive(Debug, Default)]
struct LoadCounters {
    tracked: AtomicUsize,
    in_setup: AtomicUsize,
    live: AtomicUsize,
}

impl SipLoad {
    /// INVITE dialogs the SIP layer (UAS and UAC) still tracks, refused and
    /// ended ones included until their transaction timers forget them.
    pub fn tracked_calls(&self) -> usize {
        self.0.tracked.load(Ordering::Relaxed)
    }

    /// Calls set up (RTP port bound, the application's call opened) that
    /// wait for their ACK (inbound) or the callee's answer (outbound).
    pub fn calls_in_setup(&self) -> usize {
        self.0.in_setup.load(Ordering::Relaxed)
    }

    /// Calls whose media runs (on the worker, with an RTP task).
    pub fn live_calls(&self) -> usize {
        self.0.live.load(Ordering::Relaxed)
    }
}

/// The SIP server: a bound socket, ready to [`SipServer::run`].
pub struct SipServer {
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    advertised_ip: IpAddr,
    config: SipConfig,
    worker: WorkerHandle,
    factory: Arc<dyn SipCallFactory>,
    commands: mpsc::UnboundedSender<outbound::Command>,
    command_rx: mpsc::UnboundedReceiver<outbound::Command>,
    load: SipLoad,
    registration: watch::Sender<RegistrationStatus>,
    tcp: Option<TcpListener>,
    tls: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
}

impl std::fmt::Debug for SipServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipServer")
            .field("local", &self.local)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Binds the UDP socket and, if `tcp`, a TCP listener on the same port
/// (RFC 3261 18: UAs listen on both). With port 0 the UDP port is chosen
/// by the system, and that port may already be taken for TCP by some
/// other socket: then another UDP port is tried, a few times.
async fn bind_udp_and_tcp(
    bind: SocketAddr,
    tcp: bool,
) -> std::io::Result<(UdpSocket, Option<TcpListener>)> {
    const ATTEMPTS_ON_AN_EPHEMERAL_PORT: usize = 16;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let socket = UdpSocket::bind(bind).await?;
        if !tcp {
            return Ok((socket, None));
        }
        match TcpListener::bind(socket.local_addr()?).await {
            Ok(listener) => return Ok((socket, Some(listener))),
            Err(error)
                if bind.port() == 0
                    && error.kind() == std::io::ErrorKind::AddrInUse
                    && attempt < ATTEMPTS_ON_AN_EPHEMERAL_PORT => {}
            Err(error) => return Err(error),
        }
    }
}

impl SipServer {
    /// Binds the SIP socket. Fails if it cannot, or if the bind address is
    /// unspecified (0.0.0.0) and no advertised address is configured.
    pub async fn bind(
        config: SipConfig,
        worker: WorkerHandle,
        factory: impl SipCallFactory,
    ) -> std::io::Result<SipServer> {
        let (socket, tcp) = bind_udp_and_tcp(config.bind, config.tcp).await?;
        let local = socket.local_addr()?;
        let advertised_ip = match config.advertised_ip {
            Some(ip) => ip,
            None if !local.ip().is_unspecified() => local.ip(),
            None => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "bound to an unspecified address: set advertised_ip",
                ));
            }
        };
        let tls = match &config.tls {
            Some(tls) => Some((TcpListener::bind(tls.bind).await?, tcp::tls_acceptor(tls)?)),
            None => None,
        };
        let (commands, command_rx) = mpsc::unbounded_channel();
        Ok(SipServer {
            socket: Arc::new(socket),
            local,
            advertised_ip,
            config,
            worker,
            factory: Arc::new(factory),
            commands,
            command_rx,
            load: SipLoad::default(),
            registration: watch::channel(RegistrationStatus::Unregistered).0,
            tcp,
            tls,
        })
    }

    /// The registration's status as it changes (always
    /// [`RegistrationStatus::Unregistered`] without [`SipConfig::register`]).
    pub fn registration(&self) -> watch::Receiver<RegistrationStatus> {
        self.registration.subscribe()
    }

    /// The live counts of this server's calls, updated as it runs.
    pub fn load(&self) -> SipLoad {
        self.load.clone()
    }

    /// The SIP socket's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The TLS listener's address, if TLS is configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls
            .as_ref()
            .and_then(|(listener, _)| listener.local_addr().ok())
    }

    /// Places outbound calls through this server once it [`run`](Self::run)s.
    pub fn dialer(&self) -> SipDialer {
        SipDialer {
            commands: self.commands.clone(),
            local: SocketAddr::new(self.advertised_ip, self.local.port()),
        }
    }

    /// Serves calls until the SIP socket fails.
    pub async fn run(self) -> std::io::Result<()> {
        self.run_until(CancellationToken::new()).await
    }

    /// Serves calls until `stop` is cancelled (then un-REGISTERs, waiting
    /// at most [`UNREGISTER_WAIT`] for the registrar) or the socket fails.
    pub async fn run_until(self, stop: CancellationToken) -> std::io::Result<()> {
        let local = SocketAddr::new(self.advertised_ip, self.local.port());
        let registration = self
            .config
            .register
            .clone()
            .map(|config| register::Registration::new(config, local, random_seed()));
        let mut uas_config = UasConfig::new(SocketAddr::new(self.advertised_ip, self.local.port()));
        uas_config.numbers = self.config.numbers.clone();
        uas_config.answer_after = self.config.answer_after;
        uas_config.session_timer = self.config.session_timer;
        let uac_config = UacConfig::new(uas_config.local);
        let mut driver = Driver {
            uas: SipUas::new(uas_config, random_seed()),
            uac: SipUac::new(uac_config, random_seed()),
            commands: (self.commands, self.command_rx),
            pending_out: HashMap::new(),
            socket: Arc::clone(&self.socket),
            ports: RtpPorts::new(self.config.bind.ip(), self.config.rtp_ports.clone()),
            advertised_ip: self.advertised_ip,
            worker: self.worker.clone(),
            factory: Arc::clone(&self.factory),
            epoch: std::time::Instant::now(),
            pending: HashMap::new(),
            running: HashMap::new(),
            notices: mpsc::unbounded_channel(),
            load: self.load,
            registration,
            registration_status: self.registration,
            tcp_listener: self.tcp,
            tls: self.tls,
            tcp_inbound: mpsc::unbounded_channel(),
            tcp_connections: HashMap::new(),
            transfers: HashMap::new(),
        };
        driver.run(&stop).await
    }
}

/// A seed from the process's hash randomness and the clock.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

/// Splits the agent's call-control requests: digits go to the call's RTP
/// task (the returned receiver), transfers to the SIP task (they are
/// signalling). Ends when the agent or the RTP task goes away.
fn route_call_control(
    call: SipCallId,
    mut requests: CallControlRequests,
    notices: &mpsc::UnboundedSender<Notice>,
) -> mpsc::UnboundedReceiver<DigitsRequest> {
    let (media, media_requests) = mpsc::unbounded_channel();
    let notices = notices.clone();
    tokio::spawn(async move {
        while let Some(request) = requests.recv().await {
            match request {
                CallControl::Transfer(request) => {
                    if let Err(mpsc::error::SendError(Notice::Transfer { request, .. })) =
                        notices.send(Notice::Transfer { call, request })
                    {
                        let _ = request.reply.send(Err("the call is over".into()));
                    }
                }
                CallControl::SendDigits(request) => {
                    if let Err(mpsc::error::SendError(request)) = media.send(request) {
                        let _ = request.reply.send(Err("the call is over".into()));
                        return;
                    }
                }
            }
        }
    });
    media_requests
}

/// An outbound call placed, waiting for the callee's answer.
struct PendingOutbound {
    setup: SipCallSetup,
    socket: std::net::UdpSocket,
    rtcp_socket: Option<std::net::UdpSocket>,
}

/// A call set up at the INVITE, waiting for the ACK.
struct PendingCall {
    setup: SipCallSetup,
    socket: std::net::UdpSocket,
    rtcp_socket: Option<std::net::UdpSocket>,
    media: sdp::Negotiated,
}

/// A call whose media runs on its task.
struct RunningCall {
    stop: CancellationToken,
    reason: oneshot::Sender<SipEnd>,
    /// Re-INVITEs' changes for the call's RTP task.
    control: mpsc::UnboundedSender<MediaUpdate>,
}

/// What call tasks tell the SIP task.
enum Notice {
    /// The agent asks to transfer the call.
    Transfer {
        call: SipCallId,
        request: TransferRequest,
    },
    /// The call's media ended; `hung_up` if the engine ended it (send BYE).
    Finished { call: SipCallId, hung_up: bool },
    /// The TCP connection an outbound call over TCP waited for.
    Connected {
        // Boxed: notices are mostly `Finished`.
        dial: Box<uac::Dial>,
        setup: Box<SipCallSetup>,
        reply: oneshot::Sender<Result<(SipCallId, String), DialError>>,
        connected: std::io::Result<tokio::net::TcpStream>,
    },
}

struct Driver {
    uas: SipUas,
    uac: SipUac,
    /// Dialers' commands; the driver keeps a sender so it never closes.
    commands: (
        mpsc::UnboundedSender<outbound::Command>,
        mpsc::UnboundedReceiver<outbound::Command>,
    ),
    pending_out: HashMap<SipCallId, PendingOutbound>,
    socket: Arc<UdpSocket>,
    ports: RtpPorts,
    advertised_ip: IpAddr,
    worker: WorkerHandle,
    factory: Arc<dyn SipCallFactory>,
    epoch: std::time::Instant,
    pending: HashMap<SipCallId, PendingCall>,
    running: HashMap<SipCallId, RunningCall>,
    notices: (
        mpsc::UnboundedSender<Notice>,
        mpsc::UnboundedReceiver<Notice>,
    ),
    load: SipLoad,
    registration: Option<register::Registration>,
    registration_status: watch::Sender<RegistrationStatus>,
    tcp_listener: Option<TcpListener>,
    tls: Option<(TcpListener, tokio_rustls::TlsAcceptor)>,
    tcp_inbound: (
        mpsc::UnboundedSender<tcp::TcpInbound>,
        mpsc::UnboundedReceiver<tcp::TcpInbound>,
    ),
    /// Open TCP connections by peer, to write to.
    tcp_connections: HashMap<SocketAddr, mpsc::UnboundedSender<Vec<u8>>>,
    /// Transfers under way, their tools waiting for the outcome.
    transfers: HashMap<SipCallId, TransferRequest>,
}

/// Accepts on `listener`, or never if there is none.
async fn accept_or_pend(
    listener: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

impl Driver {
    fn publish_load(&self) {
        let counters = &self.load.0;
        let tracked = self.uas.tracked_calls() + self.uac.tracked_calls();
        counters.tracked.store(tracked, Ordering::Relaxed);
        let in_setup = self.pending.len() + self.pending_out.len();
        counters.in_setup.store(in_setup, Ordering::Relaxed);
        counters.live.store(self.running.len(), Ordering::Relaxed);
    }

    fn now(&self) -> Instant {
        Instant::from_std(self.epoch, tokio::time::Instant::now().into_std())
    }

    async fn run(&mut self, stop: &CancellationToken) -> std::io::Result<()> {
        let mut buffer = vec![0u8; DATAGRAM_MAX];
        if let Some(registration) = &mut self.registration {
            registration.start(Instant::from_std(self.epoch, std::time::Instant::now()));
        }
        let mut stopping_since: Option<Instant> = None;
        loop {
            // Outputs can cause more (a failed media start hangs up): until none.
            loop {
                if let Some(output) = self.uas.poll_output() {
                    self.on_output(output).await;
                } else if let Some(output) = self.uac.poll_output() {
                    self.on_uac_output(output).await;
                } else if let Some(output) =
                    self.registration.as_mut().and_then(|r| r.poll_output())
                {
                    match output {
                        register::RegisterOutput::Transmit { to, bytes } => {
                            self.send_sip(&bytes, to).await;
                        }
                        register::RegisterOutput::Status(status) => {
                            self.registration_status.send_replace(status);
                        }
                    }
                } else {
                    break;
                }
            }
            self.publish_load();
            if let Some(since) = stopping_since {
                let done = self
                    .registration
                    .as_ref()
                    .is_none_or(register::Registration::is_unregistered);
                if done || self.now().saturating_since(since) >= UNREGISTER_WAIT {
                    return Ok(());
                }
            }
            let registration = self
                .registration
                .as_ref()
                .and_then(register::Registration::next_deadline);
            let give_up = stopping_since.map(|since| since + UNREGISTER_WAIT);
            let deadline = [
                self.uas.next_deadline(),
                self.uac.next_deadline(),
                registration,
                give_up,
            ]
            .into_iter()
            .flatten()
            .min()
            .map(|at| tokio::time::Instant::from_std(self.epoch + at.since_epoch()));
            let timer = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                received = self.socket.recv_from(&mut buffer) => match received {
                    Ok((length, from)) => self.on_message(from, &buffer[..length]),
                    // ICMP unreachable from an earlier send: not our socket's fault.
                    Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {}
                    Err(error) => return Err(error),
                },
                () = timer => {
                    let now = self.now();
                    self.uas.handle_timeout(now);
                    self.uac.handle_timeout(now);
                    if let Some(registration) = &mut self.registration {
                        registration.handle_timeout(now);
                    }
                }
                accepted = accept_or_pend(self.tcp_listener.as_ref()) => {
                    if let Ok((stream, peer)) = accepted
                        && self.tcp_connections.len() < TCP_CONNECTIONS_MAX
                    {
                        let (outbound, outbound_rx) = mpsc::unbounded_channel();
                        self.tcp_connections.insert(peer, outbound);
                        let inbound = self.tcp_inbound.0.clone();
                        tokio::spawn(tcp::serve_connection(stream, peer, inbound, outbound_rx));
                    }
                }
                accepted = accept_or_pend(self.tls.as_ref().map(|(listener, _)| listener)) => {
                    if let (Ok((stream, peer)), Some((_, acceptor))) = (accepted, &self.tls)
                        && self.tcp_connections.len() < TCP_CONNECTIONS_MAX
                    {
                        let (outbound, outbound_rx) = mpsc::unbounded_channel();
                        self.tcp_connections.insert(peer, outbound);
                        let inbound = self.tcp_inbound.0.clone();
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            // A handshake that stalls must not hold the connection.
                            let handshake = acceptor.accept(stream);
                            match tokio::time::timeout(TLS_HANDSHAKE_WAIT, handshake).await {
                                Ok(Ok(stream)) => {
                                    tcp::serve_connection(stream, peer, inbound, outbound_rx).await;
                                }
                                _ => {
                                    let _ = inbound.send(tcp::TcpInbound::Closed { from: peer });
                                }
                            }
                        });
                    }
                }
                Some(inbound) = self.tcp_inbound.1.recv() => match inbound {
                    tcp::TcpInbound::Message { from, bytes } => self.on_message(from, &bytes),
                    tcp::TcpInbound::Closed { from } => {
                        self.tcp_connections.remove(&from);
                    }
                },
                () = stop.cancelled(), if stopping_since.is_none() => {
                    let now = self.now();
                    stopping_since = Some(now);
                    if let Some(registration) = &mut self.registration {
                        registration.unregister(now);
                    }
                }
                Some(notice) = self.notices.1.recv() => match notice {
                    Notice::Transfer { call, request } => self.on_transfer(call, request),
                    Notice::Finished { call, hung_up } => {
                        self.running.remove(&call);
                        // A transfer still waiting learns the call is over.
                        self.transfers.remove(&call);
                        if hung_up {
                            let now = self.now();
                            if is_outbound(call) {
                                let _ = self.uac.hang_up(now, call);
                            } else {
                                let _ = self.uas.hang_up(now, call);
                            }
                        }
                    }
                    Notice::Connected { dial, setup, reply, connected } => {
                        self.on_connected(*dial, setup, reply, connected);
                    }
                },
                Some(command) = self.commands.1.recv() => self.on_command(command),
            }
        }
    }

    /// One SIP message from `from` (a UDP datagram or a framed TCP one):
    /// the registration's, an outbound call's, or the UAS's.
    fn on_message(&mut self, from: SocketAddr, bytes: &[u8]) {
        let now = self.now();
        let parsed = SipMessage::parse(bytes).ok();
        let registered = match (&parsed, self.registration.as_mut()) {
            (Some(message), Some(registration)) => registration.handle_response(now, message),
            _ => false,
        };
        let outbound = !registered
            && parsed
                .as_ref()
                .is_some_and(|message| self.uac.handle_message(now, from, message));
        if !registered && !outbound {
            self.uas.handle_datagram(now, from, bytes);
        }
    }

    /// Sends a SIP message to `to`: on its TCP connection if it has one
    /// open (responses go back the way their request came), else by UDP
    /// (a lost datagram is what retransmissions are for).
    async fn send_sip(&self, bytes: &[u8], to: SocketAddr) {
        if let Some(connection) = self.tcp_connections.get(&to) {
            let _ = connection.send(bytes.to_vec());
            return;
        }
        let _ = self.socket.send_to(bytes, to).await;
    }

    async fn on_output(&mut self, output: UasOutput) {
        match output {
            UasOutput::Transmit { to, bytes } => {
                // UDP: a lost send is what retransmissions are for.
                self.send_sip(&bytes, to).await;
            }
            UasOutput::Incoming(incoming) => self.on_incoming(incoming),
            UasOutput::Answered(call) => self.on_answered(call).await,
            UasOutput::Ended { call, reason } => self.on_ended(call, reason),
            UasOutput::TransferEnded { call, outcome } => self.on_transfer_ended(call, outcome),
            UasOutput::MediaChanged { call, update } => {
                if let Some(running) = self.running.get(&call) {
                    let _ = running.control.send(update);
                }
            }
        }
    }

    /// Whether the worker has room for one more call beside those live
    /// and being set up (past it a call would be answered, then fail).
    fn has_room(&self) -> bool {
        let taken = self.running.len() + self.pending.len() + self.pending_out.len();
        taken < self.worker.capacity()
    }

    fn on_incoming(&mut self, incoming: IncomingCall) {
        let now = self.now();
        if !self.has_room() {
            // 503: the carrier may try another node (RFC 3261 21.5.4).
            let _ = self.uas.reject(now, incoming.call, 503);
            return;
        }
        let (socket, rtcp_socket) = match self.ports.bind_pair() {
            Ok(sockets) => sockets,
            Err(_) => {
                let _ = self.uas.reject(now, incoming.call, 503);
                return;
            }
        };
        let port = match socket.local_addr() {
            Ok(address) => address.port(),
            Err(_) => {
                let _ = self.uas.reject(now, incoming.call, 503);
                return;
            }
        };
        let mut setup = match self.factory.open_call(&incoming) {
            Ok(setup) => setup,
            Err(refused) => {
                let _ = self.uas.reject(now, incoming.call, refused.status);
                return;
            }
        };
        let codec = incoming.media.codec.kind;
        setup.media.inbound = codec.inbound();
        setup.media.outbound.codec = codec.wire();
        if let Some(events) = &setup.events {
            let _ = events.send(SipEvent::Ringing(incoming.clone()));
        }
        let call = incoming.call;
        self.pending.insert(
            call,
            PendingCall {
                setup,
                socket,
                rtcp_socket,
                media: incoming.media,
            },
        );
        let local_rtp = SocketAddr::new(self.advertised_ip, port);
        if self.uas.accept(now, call, local_rtp).is_err()
            && let Some(pending) = self.pending.remove(&call)
        {
            drop_pending(pending, SipEnd::Rejected(500));
        }
    }

    async fn on_answered(&mut self, call: SipCallId) {
        let Some(pending) = self.pending.remove(&call) else {
            return;
        };
        let PendingCall {
            mut setup,
            socket,
            rtcp_socket,
            media,
        } = pending;
        // Answering-machine detection is for the calls we place.
        setup.media.answering_machine = None;
        self.start_media(call, setup, (socket, rtcp_socket), media)
            .await;
    }

    /// Puts an answered call on the worker and starts its RTP task.
    async fn start_media(
        &mut self,
        call: SipCallId,
        setup: SipCallSetup,
        (socket, rtcp_socket): (std::net::UdpSocket, Option<std::net::UdpSocket>),
        media: sdp::Negotiated,
    ) {
        let SipCallSetup {
            media: mut config,
            link,
            epoch,
            events,
            cancel,
            tap,
        } = setup;
        // No RFC 4733 events negotiated: keys can only come as tones.
        config.inband_dtmf = media.telephone_event.is_none();
        let socket = match UdpSocket::from_std(socket) {
            Ok(socket) => socket,
            Err(_) => {
                report_end(&events, SipEnd::SocketFailed, RtpStats::default());
                cancel.cancel();
                self.hang_up_signalling(call);
                return;
            }
        };
        // Keys reach the agent as they arrive, beside the media (RFC 4733).
        let keypad = link.as_ref().map(|link| link.agent.keypad());
        let call_control = link.as_ref().map(|link| {
            route_call_control(call, link.agent.attach_call_control(), &self.notices.0)
        });
        let spec = CallSpec {
            config,
            link,
            epoch,
        };
        let hosted = match self.worker.add_call(spec).await {
            Ok(hosted) => hosted,
            Err(error) => {
                report_end(
                    &events,
                    SipEnd::WorkerFailed(error.to_string()),
                    RtpStats::default(),
                );
                cancel.cancel();
                self.hang_up_signalling(call);
                return;
            }
        };
        if let Some(events) = &events {
            let _ = events.send(SipEvent::Answered);
        }
        let seed = random_seed();
        let (control, control_rx) = mpsc::unbounded_channel();
        let rtp = RtpCall {
            socket,
            remote: media.remote_rtp,
            key: hosted.key,
            outputs: hosted.outputs,
            sender: RtpSender::new(
                (seed >> 32) as u32,
                media.codec.payload_type,
                (seed >> 16) as u16,
                seed as u32,
            )
            .with_clock_rate(media.codec.kind.clock_rate()),
            receiver: RtpReceiver::new(media.codec.payload_type, media.telephone_event),
            tap,
            rtcp: rtcp_link(&media, rtcp_socket, (seed >> 32) as u32, epoch),
            control: Some(control_rx),
            call_control,
            event_payload_type: media.telephone_event,
            comfort_silence: super::comfort_silence::silence_frame(media.codec.kind),
        };
        let stop = CancellationToken::new();
        let (reason_tx, reason_rx) = oneshot::channel();
        self.running.insert(
            call,
            RunningCall {
                stop: stop.clone(),
                reason: reason_tx,
                control,
            },
        );
        let worker = self.worker.clone();
        let notices = self.notices.0.clone();
        tokio::spawn(async move {
            let mut on_event = |event: RtpEvent| {
                let event = match event {
                    // In-band tones: the worker already gave the key to the agent.
                    RtpEvent::Media(MediaEvent::KeyPressed { key }) => {
                        SipEvent::Dtmf { digit: key }
                    }
                    RtpEvent::Media(event) => SipEvent::Media(event),
                    RtpEvent::Digit(digit) => {
                        if let Some(keypad) = &keypad {
                            keypad.press(digit);
                        }
                        SipEvent::Dtmf { digit }
                    }
                    RtpEvent::Held(held) => SipEvent::Hold { held },
                };
                if let Some(events) = &events {
                    let _ = events.send(event);
                }
            };
            let (end, stats) = run_rtp(rtp, &worker, &stop, epoch, &mut on_event).await;
            let mut reason_rx = reason_rx;
            let reason = match end {
                RtpEnd::Stopped => reason_rx.try_recv().unwrap_or(SipEnd::RemoteBye),
                RtpEnd::HungUp => SipEnd::HungUp,
                RtpEnd::WorkerGone => SipEnd::WorkerFailed("the media worker stopped".into()),
                RtpEnd::SocketFailed => SipEnd::SocketFailed,
            };
            let _ = notices.send(Notice::Finished {
                call,
                hung_up: end != RtpEnd::Stopped,
            });
            if let Ok(Some(link)) = worker.remove_call(hosted.key).await {
                let by = match reason {
                    SipEnd::RemoteBye | SipEnd::Canceled => EndedBy::User,
                    _ => EndedBy::System,
                };
                shut_down(link, by, &reason).await;
            }
            cancel.cancel();
            report_end(&events, reason, stats);
        });
    }

    fn on_ended(&mut self, call: SipCallId, reason: CallEnd) {
        let reason = match reason {
            CallEnd::RemoteBye => SipEnd::RemoteBye,
            CallEnd::Canceled => SipEnd::Canceled,
            CallEnd::LocalBye { .. } => SipEnd::HungUp,
            CallEnd::AckTimeout => SipEnd::AckTimeout,
            CallEnd::Rejected(status) => SipEnd::Rejected(status),
            CallEnd::SessionExpired => SipEnd::SessionExpired,
        };
        if let Some(running) = self.running.remove(&call) {
            let _ = running.reason.send(reason);
            running.stop.cancel();
        } else if let Some(pending) = self.pending.remove(&call) {
            drop_pending(pending, reason);
        }
    }
}

impl Driver {
    /// The agent's `transfer_call`: REFER in the call's dialog.
    fn on_transfer(&mut self, call: SipCallId, request: TransferRequest) {
        let now = self.now();
        let destination = &request.destination;
        let sent = if is_outbound(call) {
            self.uac
                .transfer(now, call, destination)
                .map_err(|e| e.to_string())
        } else {
            self.uas
                .transfer(now, call, destination)
                .map_err(|e| e.to_string())
        };
        match sent {
            Ok(()) => {
                self.transfers.insert(call, request);
            }
            Err(error) => {
                let reason = format!("the call cannot be transferred: {error}");
                let _ = request.reply.send(Err(reason));
            }
        }
    }

    /// A transfer's outcome goes to the agent's tool; a transfer that
    /// reached its target ends our side of the call (RFC 5589 6: the
    /// transferor sends BYE).
    fn on_transfer_ended(&mut self, call: SipCallId, outcome: refer::TransferOutcome) {
        let Some(TransferRequest { destination, reply }) = self.transfers.remove(&call) else {
            return;
        };
        match outcome {
            refer::TransferOutcome::Transferred { status } => {
                let _ = reply.send(Ok(serde_json::json!({
                    "status": "transferred",
                    "to": destination,
                    "sip_status": status,
                })));
                if let Some(running) = self.running.remove(&call) {
                    let _ = running.reason.send(SipEnd::Transferred { to: destination });
                    running.stop.cancel();
                }
                self.hang_up_signalling(call);
            }
            // The call goes on: the agent tells the caller.
            refer::TransferOutcome::Failed { reason, .. } => {
                let _ = reply.send(Err(reason));
            }
        }
    }

    /// Ends the SIP side of a call that could not start its media.
    fn hang_up_signalling(&mut self, call: SipCallId) {
        let now = self.now();
        if is_outbound(call) {
            let _ = self.uac.hang_up(now, call);
        } else {
            let _ = self.uas.hang_up(now, call);
        }
    }

    fn on_command(&mut self, command: outbound::Command) {
        match command {
            outbound::Command::Dial { dial, setup, reply }
                if dial.tcp && !self.tcp_connections.contains_key(&dial.target) =>
            {
                // Connect first, off the driver's task; the call is placed
                // once the connection is up.
                let notices = self.notices.0.clone();
                tokio::spawn(async move {
                    let connecting = tokio::net::TcpStream::connect(dial.target);
                    let connected = tokio::time::timeout(TCP_CONNECT_WAIT, connecting)
                        .await
                        .unwrap_or_else(|_| {
                            Err(std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "the TCP connection timed out",
                            ))
                        });
                    let _ = notices.send(Notice::Connected {
                        dial: Box::new(dial),
                        setup,
                        reply,
                        connected,
                    });
                });
            }
            outbound::Command::Dial { dial, setup, reply } => self.place_call(dial, setup, reply),
            outbound::Command::HangUp(call) => {
                if let Some(running) = self.running.remove(&call) {
                    // Stop the media now; the BYE's answer needs no waiting for.
                    let _ = running.reason.send(SipEnd::HungUp);
                    running.stop.cancel();
                }
                // Outbound: CANCEL or BYE; inbound: BYE.
                self.hang_up_signalling(call);
            }
        }
    }

    /// An outbound call's TCP connection is up (or failed).
    fn on_connected(
        &mut self,
        dial: uac::Dial,
        setup: Box<SipCallSetup>,
        reply: oneshot::Sender<Result<(SipCallId, String), DialError>>,
        connected: std::io::Result<tokio::net::TcpStream>,
    ) {
        match connected {
            Ok(stream) => {
                let (outbound, outbound_rx) = mpsc::unbounded_channel();
                self.tcp_connections.insert(dial.target, outbound);
                let inbound = self.tcp_inbound.0.clone();
                tokio::spawn(tcp::serve_connection(
                    stream,
                    dial.target,
                    inbound,
                    outbound_rx,
                ));
                self.place_call(dial, setup, reply);
            }
            Err(source) => {
                discard_setup(*setup);
                let _ = reply.send(Err(DialError::Connect {
                    target: dial.target,
                    source,
                }));
            }
        }
    }

    /// Binds the call's RTP and sends its INVITE.
    fn place_call(
        &mut self,
        mut dial: uac::Dial,
        setup: Box<SipCallSetup>,
        reply: oneshot::Sender<Result<(SipCallId, String), DialError>>,
    ) {
        if !self.has_room() {
            discard_setup(*setup);
            let _ = reply.send(Err(DialError::AtCapacity(self.worker.capacity())));
            return;
        }
        let bound = self.ports.bind_pair().and_then(|sockets| {
            let port = sockets.0.local_addr()?.port();
            Ok((sockets, port))
        });
        let ((socket, rtcp_socket), port) = match bound {
            Ok(bound) => bound,
            Err(error) => {
                discard_setup(*setup);
                let _ = reply.send(Err(DialError::NoRtpPort(error)));
                return;
            }
        };
        dial.local_rtp = SocketAddr::new(self.advertised_ip, port);
        let now = self.now();
        let call = self.uac.dial(now, dial);
        let call_id = self.uac.call_id(call).unwrap_or_default().to_owned();
        self.pending_out.insert(
            call,
            PendingOutbound {
                setup: *setup,
                socket,
                rtcp_socket,
            },
        );
        let _ = reply.send(Ok((call, call_id)));
    }

    async fn on_uac_output(&mut self, output: UacOutput) {
        match output {
            UacOutput::Transmit { to, bytes } => {
                self.send_sip(&bytes, to).await;
            }
            UacOutput::Ringing {
                call,
                status,
                early_media,
            } => {
                if let Some(events) = self
                    .pending_out
                    .get(&call)
                    .and_then(|pending| pending.setup.events.as_ref())
                {
                    let _ = events.send(SipEvent::CalleeRinging {
                        status,
                        early_media,
                    });
                }
            }
            UacOutput::Answered { call, media } => {
                let Some(PendingOutbound {
                    mut setup,
                    socket,
                    rtcp_socket,
                }) = self.pending_out.remove(&call)
                else {
                    return;
                };
                // Early media (ringback, announcements) waited in the socket:
                // the agent must not hear it as the callee's first words.
                let mut scratch = [0u8; 2_048];
                while socket.recv_from(&mut scratch).is_ok() {}
                let codec = media.codec.kind;
                setup.media.inbound = codec.inbound();
                setup.media.outbound.codec = codec.wire();
                self.start_media(call, setup, (socket, rtcp_socket), media)
                    .await;
            }
            UacOutput::TransferEnded { call, outcome } => self.on_transfer_ended(call, outcome),
            UacOutput::Ended { call, reason } => {
                let reason = match reason {
                    UacEnd::RemoteBye => SipEnd::RemoteBye,
                    UacEnd::LocalBye { .. } => SipEnd::HungUp,
                    UacEnd::Refused(status) => SipEnd::Refused(status),
                    UacEnd::NoResponse => SipEnd::NoResponse,
                    UacEnd::RingTimeout => SipEnd::RingTimeout,
                    UacEnd::Canceled => SipEnd::Abandoned,
                    UacEnd::BadAnswer => SipEnd::BadAnswer,
                };
                if let Some(running) = self.running.remove(&call) {
                    let _ = running.reason.send(reason);
                    running.stop.cancel();
                } else if let Some(pending) = self.pending_out.remove(&call) {
                    drop_setup(pending.setup, reason);
                }
            }
        }
    }
}

/// The call's RTCP: on the RTP socket under rtcp-mux, else on its own
/// socket (RTP port + 1) toward the peer's `a=rtcp:` address or RTP port
/// + 1; none if that socket could not be bound.
fn rtcp_link(
    media: &sdp::Negotiated,
    socket: Option<std::net::UdpSocket>,
    ssrc: u32,
    epoch: std::time::Instant,
) -> Option<RtcpLink> {
    let (socket, remote) = if media.rtcp_mux {
        (None, media.remote_rtp)
    } else {
        let rtp = media.remote_rtp;
        let remote = media
            .remote_rtcp
            .unwrap_or_else(|| SocketAddr::new(rtp.ip(), rtp.port().wrapping_add(1)));
        (Some(UdpSocket::from_std(socket?).ok()?), remote)
    };
    let now = Instant::from_std(epoch, std::time::Instant::now());
    let seed = random_seed();
    let config = super::rtcp::RtcpConfig {
        ssrc,
        cname: format!("{seed:016x}@callingbox"),
        clock_rate: media.codec.kind.clock_rate(),
        remote,
        wall_clock: super::rtcp::WallClock {
            at: now,
            ntp: super::rtcp::NtpTime::from_system(std::time::SystemTime::now()),
        },
        seed,
    };
    Some(RtcpLink {
        socket,
        session: super::rtcp::RtcpSession::new(config, now),
    })
}

fn is_outbound(call: SipCallId) -> bool {
    call.0 & uac::OUTBOUND_ID_BIT != 0
}

fn report_end(events: &Option<mpsc::UnboundedSender<SipEvent>>, reason: SipEnd, rtp: RtpStats) {
    if let Some(events) = events {
        let _ = events.send(SipEvent::Ended { reason, rtp });
    }
}

/// Stops what a call set up at the INVITE that never got its media.
fn drop_pending(pending: PendingCall, reason: SipEnd) {
    drop_setup(pending.setup, reason);
}

/// Stops what the application set up for a call that was never placed
/// (no [`SipEvent`] is reported: the dial itself failed).
fn discard_setup(setup: SipCallSetup) {
    let SipCallSetup { link, cancel, .. } = setup;
    tokio::spawn(async move {
        if let Some(link) = link {
            shut_down(link, EndedBy::System, &SipEnd::Abandoned).await;
        }
        cancel.cancel();
    });
}

/// Stops what the application set up for a call that never got its media.
fn drop_setup(setup: SipCallSetup, reason: SipEnd) {
    let SipCallSetup {
        link,
        events,
        cancel,
        ..
    } = setup;
    tokio::spawn(async move {
        if let Some(link) = link {
            shut_down(link, EndedBy::User, &reason).await;
        }
        cancel.cancel();
        report_end(&events, reason, RtpStats::default());
    });
}

async fn shut_down(link: ConversationLink, by: EndedBy, reason: &SipEnd) {
    let ConversationLink {
        agent,
        asr,
        agent_audio,
    } = link;
    agent.hang_up(by, &format!("{reason:?}"));
    agent.shutdown().await;
    drop(asr);
    drop(agent_audio);
}
