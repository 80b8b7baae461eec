//! WebRTC: a browser talks to an agent.
//!
//! Signalling is one HTTP exchange, non-trickle: the browser gathers its
//! ICE candidates, then `POST`s its offer to [`OFFER_PATH`] as
//! `{"type": "offer", "sdp": "..."}` (with optional string `parameters` for
//! the call factory), and gets `{"type": "answer", "sdp": "...", "call": N}`
//! back. The answer carries our only candidate: a UDP socket bound for the
//! call on the configured address. Bad input (not JSON, not SDP, no audio,
//! no Opus) is a `400` with `{"error": "..."}`, never a panic.
//!
//! Audio is Opus at 48 kHz both ways: the browser's packets go to the
//! [`MediaWorker`](crate::session::MediaWorker) as `InboundCodec::Opus`
//! (its jitter buffer, FEC and PLC), and the agent's packets come back one
//! per 20 ms worker tick and leave as they come (the worker paces, and a
//! barge-in flushes its queue, as for every transport). The call's
//! conversation is whatever the [`CallFactory`] sets up; this transport only
//! decides the codecs.
//!
//! Hang-up works both ways: the browser closing the connection (or ICE
//! losing it) ends the call; the agent or turn machine ending the call
//! closes the connection (DTLS close_notify).
//!
//! [`WebRtcPeer`] is the connection, sans-IO; [`serve_peer`] drives one over
//! a tokio UDP socket; [`router`] mounts the signalling endpoint and a small
//! page at [`PAGE_PATH`] to try it (Call / Hang up).
//!
//! The stack is [str0m](https://docs.rs/str0m) on OpenSSL. Its frame API
//! copies each packet into an `Arc<[u8]>` and each datagram into a `Vec`: a
//! small allocation per 20 ms packet in the transport task (not in the
//! worker's tick, which stays allocation-free).

mod peer;

pub use peer::{
    CallerPacket, OPUS_CLOCK_RATE, OfferError, PeerClosed, PeerOutput, PeerStats, TICKS_PER_PACKET,
    WebRtcPeer,
};

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{CallOutput, CallSpec, HostError, WirePacket, WorkerHandle};
use crate::audio::{InboundCodec, WireCodec};
use crate::events::EndedBy;
use crate::session::{CallKey, ConversationLink, MediaEvent};

/// The page [`router`] serves.
pub const PAGE_PATH: &str = "/webrtc";
/// The signalling endpoint [`router`] serves.
pub const OFFER_PATH: &str = "/webrtc/offer";
/// The largest datagram read (an MTU-sized packet fits with room).
const DATAGRAM_MAX: usize = 2_048;
/// The try-it page.
const PAGE: &str = include_str!("call.html");

/// Settings of the WebRTC endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebRtcConfig {
    /// The address each call's UDP socket binds, and its ICE candidate: an
    /// address the browsers can reach (not `0.0.0.0`).
    pub candidate_ip: IpAddr,
    /// A call whose browser has not connected (ICE + DTLS) by then is dropped.
    pub connect_timeout: Duration,
}

impl Default for WebRtcConfig {
    /// Loopback (a browser on this machine), 10 s to connect.
    fn default() -> Self {
        WebRtcConfig {
            candidate_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// A browser's call, as the factory sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRequest {
    /// The call's number on this endpoint (also in the answer, as `call`).
    pub id: u64,
    /// The offer's `parameters` (the page passes its query string: `?agent=...`).
    pub parameters: BTreeMap<String, String>,
}

pub use super::CallRefused;

/// A call as the application sets it up. The transport sets the codecs
/// (Opus both ways); the rest (TTS rate, queue, VAD gate, turns) is the
/// application's. A refusal is answered with a 503.
pub type CallSetup = super::CallSetup<PeerEvent>;

/// Sets up the call of each accepted offer.
pub trait CallFactory: super::CallFactory<CallRequest, PeerEvent> {}

impl<F: super::CallFactory<CallRequest, PeerEvent>> CallFactory for F {}

/// What the transport reports about a call, for the application.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerEvent {
    /// The offer was answered and the call is on the worker.
    Started(CallRequest),
    /// ICE and DTLS are up: audio flows.
    Connected,
    /// A media event of the call (turns, barge-ins, agent audio).
    Media(MediaEvent),
    /// The call is over and everything it started has stopped.
    Ended {
        /// Why.
        reason: EndReason,
        /// The connection's counters.
        stats: PeerStats,
    },
}

/// Why a WebRTC call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The connection ended on the browser's side (or failed).
    Peer(PeerClosed),
    /// The turn machine or the agent ended the call; we closed the connection.
    HungUp,
    /// The browser never connected within the configured time.
    ConnectTimeout,
    /// The media worker stopped.
    WorkerGone,
}

/// What the signalling endpoint answers instead of an SDP answer.
#[derive(Debug, Error)]
pub enum SignalError {
    /// The body is not the expected JSON.
    #[error("the body is not an offer {{\"type\": \"offer\", \"sdp\": \"...\"}}: {0}")]
    BadRequest(String),
    /// The offer cannot be answered.
    #[error(transparent)]
    Offer(#[from] OfferError),
    /// The application refused the call.
    #[error(transparent)]
    Refused(#[from] CallRefused),
    /// The worker refused the call, or is gone.
    #[error("the media worker cannot take the call: {0}")]
    Worker(String),
    /// No UDP socket could be opened for the call.
    #[error("cannot open the call's UDP socket: {0}")]
    Socket(#[from] std::io::Error),
}

impl SignalError {
    /// The HTTP status answering this error.
    pub fn status(&self) -> StatusCode {
        match self {
            SignalError::Offer(OfferError::LocalAddress(..)) | SignalError::Socket(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            SignalError::BadRequest(_) | SignalError::Offer(_) => StatusCode::BAD_REQUEST,
            SignalError::Refused(refused) => StatusCode::from_u16(refused.status)
                .ok()
                .filter(|status| status.is_client_error() || status.is_server_error())
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            SignalError::Worker(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for SignalError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.to_string() });
        (self.status(), axum::Json(body)).into_response()
    }
}

/// Everything the endpoint needs: the worker, the call factory, the settings.
#[derive(Clone)]
pub struct WebRtcServer {
    worker: WorkerHandle,
    factory: Arc<dyn CallFactory>,
    config: WebRtcConfig,
    next_id: Arc<AtomicU64>,
}

impl std::fmt::Debug for WebRtcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebRtcServer")
            .field("worker", &self.worker)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl WebRtcServer {
    /// Calls go to `worker`, set up by `factory`.
    pub fn new(worker: WorkerHandle, factory: impl CallFactory, config: WebRtcConfig) -> Self {
        WebRtcServer {
            worker,
            factory: Arc::new(factory),
            config,
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// The worker the calls run on.
    pub fn worker(&self) -> &WorkerHandle {
        &self.worker
    }

    /// Answers one offer body: binds the call's socket, accepts the offer,
    /// sets the call up on the worker and starts driving it on a task.
    /// Returns the answer's JSON.
    pub async fn answer(&self, body: &[u8]) -> Result<serde_json::Value, SignalError> {
        let offer: OfferBody = serde_json::from_slice(body)
            .map_err(|error| SignalError::BadRequest(error.to_string()))?;
        if offer.kind.as_deref().is_some_and(|kind| kind != "offer") {
            return Err(SignalError::BadRequest(format!(
                "`type` is {:?}, not \"offer\"",
                offer.kind.unwrap_or_default()
            )));
        }
        let socket = UdpSocket::bind(SocketAddr::new(self.config.candidate_ip, 0)).await?;
        let local = socket.local_addr()?;
        let now = tokio::time::Instant::now().into_std();
        let (peer, answer) = WebRtcPeer::accept(now, &offer.sdp, local)?;
        let request = CallRequest {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            parameters: offer.parameters,
        };
        let setup = self.factory.open_call(&request)?;
        let CallSetup {
            mut media,
            link,
            epoch,
            events,
            cancel,
        } = setup;
        media.inbound = InboundCodec::Opus;
        media.outbound.codec = WireCodec::Opus;
        let hosted = match self
            .worker
            .add_call(CallSpec {
                config: media,
                link,
                epoch,
            })
            .await
        {
            Ok(hosted) => hosted,
            Err(error) => {
                // The link went down with the refused call; stop the rest.
                cancel.cancel();
                return Err(SignalError::Worker(match error {
                    HostError::WorkerGone => "the media worker stopped".to_owned(),
                    HostError::Worker(error) => error.to_string(),
                }));
            }
        };
        let call = ActiveCall {
            key: hosted.key,
            outputs: hosted.outputs,
            events,
            cancel,
        };
        call.report(PeerEvent::Started(request.clone()));
        tokio::spawn(serve_peer(
            peer,
            socket,
            self.worker.clone(),
            call,
            self.config.connect_timeout,
        ));
        Ok(serde_json::json!({ "type": "answer", "sdp": answer, "call": request.id }))
    }
}

#[derive(Deserialize)]
struct OfferBody {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    sdp: String,
    #[serde(default)]
    parameters: BTreeMap<String, String>,
}

/// An axum router serving the page at [`PAGE_PATH`] and the signalling
/// endpoint at [`OFFER_PATH`].
pub fn router(server: WebRtcServer) -> Router {
    Router::new()
        .route(PAGE_PATH, get(page))
        .route(OFFER_PATH, post(offer))
        .with_state(server)
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn offer(State(server): State<WebRtcServer>, body: Bytes) -> Response {
    match server.answer(&body).await {
        Ok(answer) => axum::Json(answer).into_response(),
        Err(error) => error.into_response(),
    }
}

/// A call on the worker, as its driver holds it.
#[derive(Debug)]
pub struct ActiveCall {
    key: CallKey,
    outputs: mpsc::Receiver<CallOutput>,
    events: Option<mpsc::UnboundedSender<PeerEvent>>,
    cancel: CancellationToken,
}

impl ActiveCall {
    fn report(&self, event: PeerEvent) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Drives one call's connection until it closes (either side), the
/// browser fails to connect in `connect_timeout`, or the worker stops;
/// then removes the call from the worker, shuts its agent down and cancels
/// its token. Returns why it ended; nothing it started is left running.
pub async fn serve_peer(
    mut peer: WebRtcPeer,
    socket: UdpSocket,
    worker: WorkerHandle,
    mut call: ActiveCall,
    connect_timeout: Duration,
) -> EndReason {
    let mut buffer = vec![0u8; DATAGRAM_MAX];
    let connect_by = tokio::time::Instant::now() + connect_timeout;
    // Set when we close the connection: the reason to give once it is closed.
    let mut closing: Option<EndReason> = None;
    let mut worker_open = true;
    let mut oversized = 0;
    let reason = 'call: loop {
        let deadline = loop {
            match peer.poll_output() {
                PeerOutput::Timeout(at) => break at,
                PeerOutput::Transmit {
                    destination,
                    contents,
                } => {
                    // UDP: a failed send is a lost packet, which RTP/ICE absorb.
                    let _ = socket.send_to(&contents, destination).await;
                }
                PeerOutput::Audio(packet) => {
                    if let Some(wire) = WirePacket::new(
                        packet.sequence,
                        packet.timestamp,
                        packet.marker,
                        &packet.payload,
                    ) {
                        worker.push_packet(call.key, wire);
                    } else {
                        oversized += 1;
                    }
                }
                PeerOutput::Connected => call.report(PeerEvent::Connected),
                PeerOutput::Closed(closed) => {
                    break 'call closing.take().unwrap_or(EndReason::Peer(closed));
                }
            }
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        let connecting = !peer.is_connected() && closing.is_none();
        tokio::select! {
            biased;
            // The application hung up (the agent's end_call, a limit).
            () = call.cancel.cancelled(), if closing.is_none() => {
                closing = Some(EndReason::HungUp);
                peer.close();
            }
            output = call.outputs.recv(), if worker_open => match output {
                Some(CallOutput::Packet(packet)) => {
                    peer.send_audio(now(), packet.payload(), packet.marker);
                }
                Some(CallOutput::Event(event)) => {
                    let hung_up = matches!(event, MediaEvent::Hangup { .. });
                    call.report(PeerEvent::Media(event));
                    if hung_up && closing.is_none() {
                        closing = Some(EndReason::HungUp);
                        peer.close();
                    }
                }
                None => {
                    worker_open = false;
                    closing.get_or_insert(EndReason::WorkerGone);
                    peer.close();
                }
            },
            received = socket.recv_from(&mut buffer) => {
                // An error here is an ICMP echo of an earlier send: ignore it.
                if let Ok((length, source)) = received {
                    peer.receive(now(), source, &buffer[..length]);
                }
            }
            _ = tokio::time::sleep_until(deadline) => peer.timeout(now()),
            _ = tokio::time::sleep_until(connect_by), if connecting => {
                closing = Some(EndReason::ConnectTimeout);
                peer.close();
            }
        }
    };
    let stats = PeerStats {
        packets_oversized: oversized,
        ..peer.stats()
    };
    drop(socket);
    end_call(&worker, call, &reason, stats).await;
    reason
}

async fn end_call(worker: &WorkerHandle, call: ActiveCall, reason: &EndReason, stats: PeerStats) {
    if let Ok(Some(link)) = worker.remove_call(call.key).await {
        let ConversationLink {
            agent,
            asr,
            agent_audio,
        } = link;
        let by = match reason {
            EndReason::Peer(PeerClosed::Remote | PeerClosed::Disconnected) => EndedBy::User,
            _ => EndedBy::System,
        };
        agent.hang_up(by, &format!("{reason:?}"));
        agent.shutdown().await;
        drop(asr);
        drop(agent_audio);
    }
    call.cancel.cancel();
    call.report(PeerEvent::Ended {
        reason: reason.clone(),
        stats,
    });
}
