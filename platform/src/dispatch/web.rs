//! Calls that arrive over the web transports the node serves beside its
//! API: a carrier's media stream (the Twilio Media Streams protocol at
//! `wss://<node>/media-stream`) and a browser's WebRTC offer
//! (`POST /webrtc/offer`, try-it page at `/webrtc`).
//!
//! Each names its agent and proves its organization in its parameters:
//! `agent_id` and `api_key` (a TwiML `<Parameter>` of the `<Stream>`, or the
//! offer's `parameters`), optionally `from` and `to` for the record. The
//! call is then recorded, held, billed and followed like an inbound SIP call
//! (`direction: "inbound"`, `metadata.transport` = `media_stream` or
//! `webrtc`, and the carrier's `call_sid` for a stream). A browser should
//! not hold a live key: production pages send their offer through their
//! own server, which adds the key.

use std::collections::BTreeMap;

use callingbox_engine::transport::media_stream::{self, StreamEvent, StreamStart};
use callingbox_engine::transport::rtp::RtpStats;
use callingbox_engine::transport::sip::{SipEnd, SipEvent};
use callingbox_engine::transport::webrtc::{self, CallRequest, PeerEvent};
use callingbox_engine::transport::{CallFactory, CallRefused, CallSetup};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::inbound::{InboundRouter, LineStarter, apply_agent};
use crate::store::calls::{self, Call, NewCall, status};
use crate::store::{StoreError, agents, keys, ledger, new_id};

/// The parameter naming the agent that answers.
pub const AGENT_PARAMETER: &str = "agent_id";
/// The parameter carrying the organization's API key.
pub const KEY_PARAMETER: &str = "api_key";

/// Sets up the media-stream and WebRTC calls of the node's agents.
#[derive(Clone)]
pub struct WebCallRouter {
    line: LineStarter,
    node_id: String,
}

impl std::fmt::Debug for WebCallRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebCallRouter")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl WebCallRouter {
    /// Calls recorded and run like `inbound`'s.
    pub fn new(inbound: &InboundRouter, node_id: String) -> Self {
        WebCallRouter {
            line: inbound.line_starter(),
            node_id,
        }
    }

    async fn record(
        &self,
        transport: &str,
        parameters: &BTreeMap<String, String>,
        call_sid: Option<&str>,
    ) -> Result<Call, CallRefused> {
        let LineStarter {
            store,
            clock,
            pricing,
            ..
        } = &self.line;
        let store_error = |err: StoreError| {
            tracing::error!(%err, transport, "recording a web call failed");
            CallRefused::new(500, "cannot record the call")
        };
        let now = clock.now();
        let secret = parameters.get(KEY_PARAMETER).map(String::as_str);
        let key = match secret.filter(|s| !s.is_empty()) {
            Some(secret) => keys::authenticate(store, secret, now)
                .await
                .map_err(store_error)?,
            None => None,
        };
        let Some(key) = key else {
            return Err(CallRefused::new(
                401,
                format!("a valid API key is required (parameter {KEY_PARAMETER})"),
            ));
        };
        let Some(agent_id) = parameters.get(AGENT_PARAMETER).filter(|id| !id.is_empty()) else {
            return Err(CallRefused::new(
                400,
                format!("the agent to answer is required (parameter {AGENT_PARAMETER})"),
            ));
        };
        let mut tx = store.begin().await.map_err(store_error)?;
        let agent = agents::get(&mut tx, &key.org_id, agent_id)
            .await
            .map_err(store_error)?
            .filter(|agent| agent.archived_at.is_none())
            .ok_or_else(|| CallRefused::new(404, format!("no agent {agent_id:?}")))?;
        let mut metadata = Map::new();
        metadata.insert("transport".into(), Value::String(transport.into()));
        if let Some(sid) = call_sid.filter(|sid| !sid.is_empty()) {
            metadata.insert("call_sid".into(), Value::String(sid.into()));
        }
        let party = |name: &str, default: &str| {
            parameters
                .get(name)
                .filter(|value| !value.is_empty())
                .cloned()
                .unwrap_or_else(|| default.to_owned())
        };
        let id = new_id();
        let mut new = NewCall {
            id: id.clone(),
            org_id: key.org_id.clone(),
            agent_id: None,
            direction: "inbound".into(),
            status: status::QUEUED.into(),
            to_number: party("to", ""),
            from_number: party("from", "anonymous"),
            persona: None,
            instructions: None,
            prompt: String::new(),
            context: Map::new(),
            returns: Value::Object(Map::new()),
            language: "en".into(),
            voice: crate::api::agents::DEFAULT_VOICE.into(),
            tools: Value::Array(Vec::new()),
            voicemail_action: "hangup".into(),
            webhook_url: None,
            metadata,
            hold_milli_cents: pricing.call_hold(),
            idempotency_key: None,
            request_fingerprint: None,
            node_id: Some(self.node_id.clone()),
        };
        apply_agent(&mut new, &agent);
        if !ledger::try_hold(&mut tx, &key.org_id, &id, new.hold_milli_cents, now)
            .await
            .map_err(store_error)?
        {
            return Err(CallRefused::new(
                402,
                "calls paused: credits below the hold",
            ));
        }
        calls::insert(&mut tx, &new, now)
            .await
            .map_err(store_error)?;
        let call = calls::get_any_org(&mut tx, &id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| CallRefused::new(500, "the call vanished"))?;
        tx.commit().await.map_err(|e| store_error(e.into()))?;
        Ok(call)
    }

    /// Records and starts a call of `transport`, whose events `to_line`
    /// turns into the SIP events the dispatcher follows.
    fn open<E: Send + 'static>(
        &self,
        transport: &str,
        parameters: &BTreeMap<String, String>,
        call_sid: Option<&str>,
        to_line: fn(E) -> Vec<SipEvent>,
    ) -> Result<CallSetup<E>, CallRefused> {
        // The transport's task waits for one key lookup and insert;
        // block_in_place keeps the runtime's other tasks running meanwhile.
        let call = tokio::task::block_in_place(|| {
            self.line
                .runtime
                .block_on(self.record(transport, parameters, call_sid))
        })?;
        let (events_tx, mut events_rx) = mpsc::unbounded_channel::<E>();
        let (sip_tx, sip_rx) = mpsc::unbounded_channel();
        self.line.runtime.spawn(async move {
            while let Some(event) = events_rx.recv().await {
                for line_event in to_line(event) {
                    if sip_tx.send(line_event).is_err() {
                        return;
                    }
                }
            }
        });
        // The transport ends the call when this is cancelled (our hang-up)
        // and cancels it itself when the call is over.
        let cancel = CancellationToken::new();
        let hang_up = cancel.clone();
        let started = self
            .line
            .start(&call, sip_rx, cancel.clone(), move || hang_up.cancel())
            .map_err(|(status, reason)| CallRefused::new(status, reason))?;
        Ok(CallSetup {
            media: started.media,
            link: Some(started.link),
            epoch: started.epoch,
            events: Some(events_tx),
            cancel,
        })
    }
}

fn ended(reason: SipEnd) -> SipEvent {
    SipEvent::Ended {
        reason,
        rtp: RtpStats::default(),
    }
}

/// The carrier answered before it opened the stream: a stream's start is
/// its ring and its answer.
fn stream_to_line(event: StreamEvent) -> Vec<SipEvent> {
    match event {
        StreamEvent::Started(_) => vec![
            SipEvent::CalleeRinging {
                status: 180,
                early_media: false,
            },
            SipEvent::Answered,
        ],
        StreamEvent::Media(media) => vec![SipEvent::Media(media)],
        StreamEvent::Dtmf { digit } => vec![SipEvent::Dtmf { digit }],
        StreamEvent::MarkEchoed(_) => Vec::new(),
        StreamEvent::Ended { reason, .. } => vec![ended(match reason {
            media_stream::EndReason::Stopped | media_stream::EndReason::SocketClosed => {
                SipEnd::RemoteBye
            }
            media_stream::EndReason::HungUp => SipEnd::HungUp,
            media_stream::EndReason::ProtocolError { message, .. } => {
                SipEnd::WorkerFailed(format!("media stream protocol error: {message}"))
            }
            media_stream::EndReason::Refused(reason) => SipEnd::WorkerFailed(reason),
        })],
    }
}

/// A browser call rings from its offer and is answered once ICE and DTLS
/// are up.
fn peer_to_line(event: PeerEvent) -> Vec<SipEvent> {
    match event {
        PeerEvent::Started(_) => vec![SipEvent::CalleeRinging {
            status: 180,
            early_media: false,
        }],
        PeerEvent::Connected => vec![SipEvent::Answered],
        PeerEvent::Media(media) => vec![SipEvent::Media(media)],
        PeerEvent::Ended { reason, .. } => vec![ended(match reason {
            webrtc::EndReason::Peer(_) => SipEnd::RemoteBye,
            webrtc::EndReason::HungUp => SipEnd::HungUp,
            webrtc::EndReason::ConnectTimeout => SipEnd::NoResponse,
            webrtc::EndReason::WorkerGone => {
                SipEnd::WorkerFailed("the media worker stopped".into())
            }
        })],
    }
}

impl CallFactory<StreamStart, StreamEvent> for WebCallRouter {
    fn open_call(&self, start: &StreamStart) -> Result<media_stream::CallSetup, CallRefused> {
        self.open(
            "media_stream",
            &start.custom_parameters,
            Some(&start.call_sid),
            stream_to_line,
        )
    }
}

impl CallFactory<CallRequest, PeerEvent> for WebCallRouter {
    fn open_call(&self, request: &CallRequest) -> Result<webrtc::CallSetup, CallRefused> {
        self.open("webrtc", &request.parameters, None, peer_to_line)
    }
}
