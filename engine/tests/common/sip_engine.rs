//! The SIP server on loopback with one scripted conversation per call, as
//! the tests that drive real SIP peers (SIPp, baresip) start it: answers
//! number 1000, PCMU media settings (the server sets the negotiated codec),
//! a media worker with Silero VAD (4 calls), every agent packet tapped.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use callingbox_engine::events::CallEvent;
use callingbox_engine::providers::ProviderError;
use callingbox_engine::providers::scripted::ScriptedLlm;
use callingbox_engine::session::MediaWorker;
use callingbox_engine::transport::sip::{
    IncomingCall, SipCallRefused, SipCallSetup, SipConfig, SipEvent, SipServer,
};
use callingbox_engine::transport::{WirePacket, WorkerHandle, spawn_worker};
use callingbox_engine::vad::VadBatch;
use tokio::sync::mpsc;

use super::scripted_call::{ScriptedConversation, pcmu_media};

/// A running engine and what the tests read from it.
pub struct Engine {
    /// The SIP socket's address.
    pub sip: SocketAddr,
    /// The media worker.
    pub worker: WorkerHandle,
    /// The server's call events.
    pub events: mpsc::UnboundedReceiver<SipEvent>,
    /// A copy of every agent packet sent.
    pub tapped: mpsc::Receiver<WirePacket>,
    /// Each call's agent: its event stream and its model's log.
    pub agents: mpsc::UnboundedReceiver<(mpsc::UnboundedReceiver<CallEvent>, ScriptedLlm)>,
}

/// Starts the engine; each call's conversation comes from `conversation`
/// (its failure refuses the call with 503), the 200 OK `answer_after` the
/// INVITE.
pub async fn start_engine_with(
    rtp_ports: RangeInclusive<u16>,
    answer_after: Duration,
    conversation: impl Fn() -> Result<ScriptedConversation, ProviderError> + Send + Sync + 'static,
) -> Engine {
    let (events_tx, events) = mpsc::unbounded_channel();
    let (tap_tx, tapped) = mpsc::channel(4_096);
    let (agents_tx, agents) = mpsc::unbounded_channel();
    let factory = move |_call: &IncomingCall| {
        let conversation = conversation().map_err(|error| SipCallRefused {
            status: 503,
            reason: error.to_string(),
        })?;
        let _ = agents_tx.send((conversation.events, conversation.llm));
        Ok(SipCallSetup {
            media: pcmu_media(),
            link: Some(conversation.link),
            epoch: conversation.epoch,
            events: Some(events_tx.clone()),
            cancel: conversation.cancel,
            tap: Some(tap_tx.clone()),
        })
    };
    let (worker, _task) = spawn_worker(MediaWorker::new(VadBatch::load_or_fallback(4), None));
    let mut config = SipConfig::new("127.0.0.1:0".parse().expect("addr"));
    config.rtp_ports = rtp_ports;
    config.numbers = vec!["1000".into()];
    config.answer_after = answer_after;
    let server = SipServer::bind(config, worker.clone(), factory)
        .await
        .expect("bind SIP");
    let sip = server.local_addr();
    tokio::spawn(server.run());
    Engine {
        sip,
        worker,
        events,
        tapped,
        agents,
    }
}
