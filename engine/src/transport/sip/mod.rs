//! SIP over UDP: real SIP peers (PBXs, trunks, softphones) call the engine.
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

pub mod message;
pub mod sdp;
pub mod uas;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::rtp::{RtpCall, RtpEnd, RtpEvent, RtpPorts, RtpReceiver, RtpSender, RtpStats, run_rtp};
use super::{CallSpec, WirePacket, WorkerHandle};
use crate::audio::{InboundCodec, WireCodec};
use crate::clock::Instant;
use crate::events::EndedBy;
use crate::session::{CallMediaConfig, ConversationLink, MediaEvent};
pub use uas::{CallEnd, IncomingCall, SipCallId, SipUas, UasConfig, UasOutput};

/// The longest SIP datagram read.
const DATAGRAM_MAX: usize = 16 * 1024;

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
    /// The call's media; the codecs are set to the negotiated G.711 law.
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
    /// The turn machine or the agent hung up; we sent BYE.
    HungUp,
    /// The ACK of our 200 never came.
    AckTimeout,
    /// The call was refused with this status (factory, no RTP port).
    Rejected(u16),
    /// The media worker could not take or keep the call.
    WorkerFailed(String),
    /// The RTP socket failed.
    SocketFailed,
}

/// What the transport reports about a call.
#[derive(Debug, Clone, PartialEq)]
pub enum SipEvent {
    /// The INVITE was accepted; the call rings.
    Ringing(IncomingCall),
    /// The ACK came: the call is on the worker, media flows.
    Answered,
    /// A media event of the call (turns, barge-ins, agent audio).
    Media(MediaEvent),
    /// A DTMF key (RFC 4733).
    Dtmf {
        /// `0`-`9`, `*`, `#`, `A`-`D`.
        digit: char,
    },
    /// The call is over and everything it started has stopped.
    Ended {
        /// Why.
        reason: SipEnd,
        /// The RTP counters (zero if media never started).
        rtp: RtpStats,
    },
}

/// The SIP server: a bound socket, ready to [`SipServer::run`].
pub struct SipServer {
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    advertised_ip: IpAddr,
    config: SipConfig,
    worker: WorkerHandle,
    factory: Arc<dyn SipCallFactory>,
}

impl std::fmt::Debug for SipServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipServer")
            .field("local", &self.local)
            .field("config", &self.config)
            .finish_non_exhaustive()
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
        let socket = UdpSocket::bind(config.bind).await?;
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
        Ok(SipServer {
            socket: Arc::new(socket),
            local,
            advertised_ip,
            config,
            worker,
            factory: Arc::new(factory),
        })
    }

    /// The SIP socket's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Serves calls until the SIP socket fails.
    pub async fn run(self) -> std::io::Result<()> {
        let mut uas_config = UasConfig::new(SocketAddr::new(self.advertised_ip, self.local.port()));
        uas_config.numbers = self.config.numbers.clone();
        uas_config.answer_after = self.config.answer_after;
        let mut driver = Driver {
            uas: SipUas::new(uas_config, random_seed()),
            socket: Arc::clone(&self.socket),
            ports: RtpPorts::new(self.config.bind.ip(), self.config.rtp_ports.clone()),
            advertised_ip: self.advertised_ip,
            worker: self.worker.clone(),
            factory: Arc::clone(&self.factory),
            epoch: std::time::Instant::now(),
            pending: HashMap::new(),
            running: HashMap::new(),
            notices: mpsc::unbounded_channel(),
        };
        driver.run().await
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

/// A call set up at the INVITE, waiting for the ACK.
struct PendingCall {
    setup: SipCallSetup,
    socket: std::net::UdpSocket,
    media: sdp::Negotiated,
}

/// A call whose media runs on its task.
struct RunningCall {
    stop: CancellationToken,
    reason: oneshot::Sender<SipEnd>,
}

/// What call tasks tell the SIP task.
enum Notice {
    /// The call's media ended; `hung_up` if the engine ended it (send BYE).
    Finished { call: SipCallId, hung_up: bool },
}

struct Driver {
    uas: SipUas,
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
}

impl Driver {
    fn now(&self) -> Instant {
        Instant::from_std(self.epoch, tokio::time::Instant::now().into_std())
    }

    async fn run(&mut self) -> std::io::Result<()> {
        let mut buffer = vec![0u8; DATAGRAM_MAX];
        loop {
            while let Some(output) = self.uas.poll_output() {
                self.on_output(output).await;
            }
            let deadline = self
                .uas
                .next_deadline()
                .map(|at| tokio::time::Instant::from_std(self.epoch + at.since_epoch()));
            let timer = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                received = self.socket.recv_from(&mut buffer) => match received {
                    Ok((length, from)) => {
                        let now = self.now();
                        self.uas.handle_datagram(now, from, &buffer[..length]);
                    }
                    // ICMP unreachable from an earlier send: not our socket's fault.
                    Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {}
                    Err(error) => return Err(error),
                },
                () = timer => {
                    let now = self.now();
                    self.uas.handle_timeout(now);
                }
                Some(notice) = self.notices.1.recv() => match notice {
                    Notice::Finished { call, hung_up } => {
                        self.running.remove(&call);
                        if hung_up {
                            let now = self.now();
                            let _ = self.uas.hang_up(now, call);
                        }
                    }
                },
            }
        }
    }

    async fn on_output(&mut self, output: UasOutput) {
        match output {
            UasOutput::Transmit { to, bytes } => {
                // UDP: a lost send is what retransmissions are for.
                let _ = self.socket.send_to(&bytes, to).await;
            }
            UasOutput::Incoming(incoming) => self.on_incoming(incoming),
            UasOutput::Answered(call) => self.on_answered(call).await,
            UasOutput::Ended { call, reason } => self.on_ended(call, reason),
        }
    }

    fn on_incoming(&mut self, incoming: IncomingCall) {
        let now = self.now();
        let socket = match self.ports.bind() {
            Ok(socket) => socket,
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
        let law = incoming.media.codec.law;
        setup.media.inbound = InboundCodec::G711(law);
        setup.media.outbound.codec = WireCodec::G711(law);
        if let Some(events) = &setup.events {
            let _ = events.send(SipEvent::Ringing(incoming.clone()));
        }
        let call = incoming.call;
        self.pending.insert(
            call,
            PendingCall {
                setup,
                socket,
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
            setup,
            socket,
            media,
        } = pending;
        let SipCallSetup {
            media: config,
            link,
            epoch,
            events,
            cancel,
            tap,
        } = setup;
        let socket = match UdpSocket::from_std(socket) {
            Ok(socket) => socket,
            Err(_) => {
                report_end(&events, SipEnd::SocketFailed, RtpStats::default());
                cancel.cancel();
                let now = self.now();
                let _ = self.uas.hang_up(now, call);
                return;
            }
        };
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
                let now = self.now();
                let _ = self.uas.hang_up(now, call);
                return;
            }
        };
        if let Some(events) = &events {
            let _ = events.send(SipEvent::Answered);
        }
        let seed = random_seed();
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
            ),
            receiver: RtpReceiver::new(media.codec.payload_type, media.telephone_event),
            tap,
        };
        let stop = CancellationToken::new();
        let (reason_tx, reason_rx) = oneshot::channel();
        self.running.insert(
            call,
            RunningCall {
                stop: stop.clone(),
                reason: reason_tx,
            },
        );
        let worker = self.worker.clone();
        let notices = self.notices.0.clone();
        tokio::spawn(async move {
            let mut on_event = |event: RtpEvent| {
                let event = match event {
                    RtpEvent::Media(event) => SipEvent::Media(event),
                    RtpEvent::Digit(digit) => SipEvent::Dtmf { digit },
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
        };
        if let Some(running) = self.running.remove(&call) {
            let _ = running.reason.send(reason);
            running.stop.cancel();
        } else if let Some(pending) = self.pending.remove(&call) {
            drop_pending(pending, reason);
        }
    }
}

fn report_end(events: &Option<mpsc::UnboundedSender<SipEvent>>, reason: SipEnd, rtp: RtpStats) {
    if let Some(events) = events {
        let _ = events.send(SipEvent::Ended { reason, rtp });
    }
}

/// Stops what a call set up at the INVITE that never got its media.
fn drop_pending(pending: PendingCall, reason: SipEnd) {
    let SipCallSetup {
        link,
        events,
        cancel,
        ..
    } = pending.setup;
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
