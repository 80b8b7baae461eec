//! The control plane's handle on outbound calls: [`SipDialer::dial`] places
//! an [`OutboundCall`] through a running [`SipServer`](super::SipServer).
//!
//! ```text
//! let dialer = server.dialer();           // before server.run()
//! tokio::spawn(server.run());
//! let call = dialer.dial(OutboundCall {
//!     to: "+15550100".into(),
//!     from: "+15550199".into(),
//!     route: Route::Local(carrier.clone()),   // or Route::Trunk(SipTrunk { .. })
//!     setup,                                  // media + agent, events channel
//!     ring_timeout: Duration::from_secs(30),
//! }).await?;
//! // setup.events receives CalleeRinging, Answered, Media.., Dtmf.., Ended;
//! // call.hang_up() cancels before the answer and sends BYE after it.
//! ```

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use super::carrier::LocalCarrier;
use super::digest::Credentials;
use super::uas::SipCallId;
use super::{SipCallSetup, uac::Dial};

/// A SIP trunk (a carrier's SBC or a PBX) that places calls for us.
#[derive(Debug, Clone)]
pub struct SipTrunk {
    /// Its host name or IP address (also the domain of our URIs).
    pub host: String,
    /// Its SIP port (5060 usually).
    pub port: u16,
    /// The account answering its 401/407 challenges, if it asks.
    pub credentials: Option<Credentials>,
    /// Calls go over TCP (RFC 3261 18) rather than UDP.
    pub tcp: bool,
}

/// Where an outbound call goes.
#[derive(Debug, Clone)]
pub enum Route {
    /// Out through a trunk.
    Trunk(SipTrunk),
    /// To the engine owning the number on the local carrier.
    Local(LocalCarrier),
}

/// A call to place.
#[derive(Debug)]
pub struct OutboundCall {
    /// The number dialled (E.164, `+15550100`; a trunk may take other forms).
    pub to: String,
    /// Our caller ID (E.164).
    pub from: String,
    /// How to reach `to`.
    pub route: Route,
    /// The call's media and agent, as an inbound factory gives them; the
    /// codecs are set to the law the callee answers with.
    pub setup: SipCallSetup,
    /// No answer within this cancels the call ([`SipEnd::RingTimeout`](super::SipEnd::RingTimeout)).
    pub ring_timeout: Duration,
}

/// Why a call could not be placed (nothing was sent).
#[derive(Debug, Error)]
pub enum DialError {
    /// The local carrier has no route for the number.
    #[error("no engine owns {0} on the local carrier")]
    UnknownNumber(String),
    /// The trunk's host name did not resolve.
    #[error("cannot resolve the trunk {host}: {source}")]
    Resolve {
        /// The host.
        host: String,
        /// Why.
        source: std::io::Error,
    },
    /// The trunk resolved to no address of our socket's family.
    #[error("the trunk {0} has no address we can reach")]
    NoAddress(String),
    /// No RTP port was free.
    #[error("no RTP port: {0}")]
    NoRtpPort(std::io::Error),
    /// The SIP server is not running.
    #[error("the SIP server has stopped")]
    ServerStopped,
    /// The media worker has as many calls as it takes.
    #[error("the engine is at capacity ({0} calls)")]
    AtCapacity(usize),
    /// The TCP connection to the trunk failed.
    #[error("cannot connect to the trunk at {target} over TCP: {source}")]
    Connect {
        /// The trunk's address.
        target: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What dialers and calls ask of the SIP driver.
pub(super) enum Command {
    Dial {
        dial: Dial,
        setup: Box<SipCallSetup>,
        reply: oneshot::Sender<Result<(SipCallId, String), DialError>>,
    },
    HangUp(SipCallId),
}

/// Places outbound calls through a [`SipServer`](super::SipServer). Cheap to clone.
#[derive(Debug, Clone)]
pub struct SipDialer {
    pub(super) commands: mpsc::UnboundedSender<Command>,
    /// Our SIP address as peers reach it.
    pub(super) local: SocketAddr,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Dial { dial, .. } => write!(f, "Dial({})", dial.request_uri),
            Command::HangUp(call) => write!(f, "HangUp({call:?})"),
        }
    }
}

/// A placed call: its id and the hang-up button.
#[derive(Debug, Clone)]
pub struct DialedCall {
    /// The call (outbound ids have [`OUTBOUND_ID_BIT`](super::uac::OUTBOUND_ID_BIT) set).
    pub call: SipCallId,
    /// The SIP Call-ID (for logs and the carrier's records).
    pub call_id: String,
    commands: mpsc::UnboundedSender<Command>,
}

impl DialedCall {
    /// Ends the call: CANCEL while it rings, BYE once answered. The end is
    /// reported on the call's events as usual.
    pub fn hang_up(&self) {
        let _ = self.commands.send(Command::HangUp(self.call));
    }
}

impl SipDialer {
    /// Hangs up any running call of this server, inbound or outbound (BYE;
    /// CANCEL for an outbound call still ringing). The end is reported on
    /// the call's events as usual.
    pub fn hang_up(&self, call: SipCallId) {
        let _ = self.commands.send(Command::HangUp(call));
    }

    /// Our SIP address as peers reach it.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Places `call`: resolves its route, binds its RTP port and sends the
    /// INVITE. Returns once the INVITE is out; what happens next arrives on
    /// `call.setup.events`. On an error nothing was sent, no event is
    /// reported, and the setup's agent is shut down.
    pub async fn dial(&self, call: OutboundCall) -> Result<DialedCall, DialError> {
        let OutboundCall {
            to,
            from,
            route,
            setup,
            ring_timeout,
        } = call;
        // A trunk knows our caller ID in its own domain; local peers in ours.
        let (target, domain, from_domain, credentials, tcp) = match route {
            Route::Local(carrier) => {
                let Some(target) = carrier.resolve(&to) else {
                    super::discard_setup(setup);
                    return Err(DialError::UnknownNumber(to));
                };
                (
                    target,
                    target.to_string(),
                    self.local.to_string(),
                    None,
                    false,
                )
            }
            Route::Trunk(trunk) => {
                let target = match self.resolve(&trunk.host, trunk.port).await {
                    Ok(target) => target,
                    Err(error) => {
                        super::discard_setup(setup);
                        return Err(error);
                    }
                };
                let domain = match (trunk.host.parse::<IpAddr>(), trunk.port) {
                    (Ok(IpAddr::V6(ip)), port) => format!("[{ip}]:{port}"),
                    (_, 5060) => trunk.host.clone(),
                    (_, port) => format!("{}:{port}", trunk.host),
                };
                (target, domain.clone(), domain, trunk.credentials, trunk.tcp)
            }
        };
        let dial = Dial {
            target,
            request_uri: format!("sip:{to}@{domain}"),
            from_uri: format!("sip:{from}@{from_domain}"),
            // The driver fills in the RTP port it binds.
            local_rtp: SocketAddr::new(self.local.ip(), 0),
            credentials,
            ring_timeout,
            tcp,
        };
        let (reply, answer) = oneshot::channel();
        if let Err(refused) = self.commands.send(Command::Dial {
            dial,
            setup: Box::new(setup),
            reply,
        }) {
            if let Command::Dial { setup, .. } = refused.0 {
                super::discard_setup(*setup);
            }
            return Err(DialError::ServerStopped);
        }
        let (id, call_id) = answer.await.map_err(|_| DialError::ServerStopped)??;
        Ok(DialedCall {
            call: id,
            call_id,
            commands: self.commands.clone(),
        })
    }

    async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, DialError> {
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|source| DialError::Resolve {
                host: host.to_owned(),
                source,
            })?
            .collect();
        addresses
            .iter()
            .find(|address| address.is_ipv4() == self.local.is_ipv4())
            .copied()
            .ok_or_else(|| DialError::NoAddress(host.to_owned()))
    }
}
