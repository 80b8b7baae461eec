//! A CallingBox node: the API, the call workers (the engine on its SIP
//! socket, the inbound router, the dispatcher), the webhook worker, and a
//! graceful shutdown that lets live calls finish. `callingbox serve` and
//! `callingbox demo` run one; it lives in the library so the end-to-end
//! tests start the very node `serve` runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::serve::ListenerExt as _;
use callingbox_engine::session::MediaWorker;
use callingbox_engine::transport::media_stream::{self, MediaStreamServer};
use callingbox_engine::transport::sip::{
    IncomingCall, LocalCarrier, Route, SipCallFactory, SipCallRefused, SipCallSetup, SipConfig,
    SipServer,
};
use callingbox_engine::transport::spawn_worker_thread;
use callingbox_engine::transport::webrtc::{self, WebRtcConfig, WebRtcServer};
use callingbox_engine::vad::VadBatch;

use crate::api::{self, AppState};
use crate::carrier::{Carrier, LocalCarrier as LocalNumbers, TrunkCarrier};
use crate::clock::{MonotonicClock, SharedClock};
use crate::config::Config;
use crate::dispatch::engine::{EngineTelephony, SpeechStack};
use crate::dispatch::extraction::Extractor;
use crate::dispatch::inbound::InboundRouter;
use crate::dispatch::web::WebCallRouter;
use crate::dispatch::{CallLauncher, Dispatcher};
use crate::lifecycle;
use crate::store::Store;

/// A running node: its API address, SIP address and the pieces tests and
/// the demo reach into.
pub struct Node {
    /// Where the API listens.
    pub api: SocketAddr,
    /// Where SIP listens.
    pub sip: SocketAddr,
    /// The database.
    pub store: Store,
    /// The local carrier's routes (numbers on loopback).
    pub carrier: LocalCarrier,
    /// The calls' dispatcher.
    pub dispatcher: Arc<Dispatcher>,
    /// The process's counters (turn latencies, provider errors).
    pub metrics: Arc<crate::metrics::Metrics>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    shutdown: tokio::sync::watch::Sender<bool>,
    webhooks: crate::webhooks::worker::WorkerHandle,
}

impl Node {
    /// Stops accepting requests, lets live calls finish (up to `drain`),
    /// hangs up the rest and waits for the server.
    pub async fn shutdown(self, drain: Duration) {
        let _ = self.shutdown.send(true);
        let left = self.dispatcher.drain(drain).await;
        if left > 0 {
            tracing::warn!(left, "hanging up the calls still live after the drain");
            self.dispatcher.cancel_all();
            self.dispatcher.drain(Duration::from_secs(10)).await;
        }
        let _ = self.server.await;
        // Deliveries of the calls' last events go out before the worker stops.
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.webhooks.shutdown().await;
        self.store.close().await;
    }
}

/// Starts a node on `config` with `stack` (the speech providers).
pub async fn start_node(
    config: &Config,
    stack: SpeechStack,
    extractor: Arc<dyn Extractor>,
) -> Result<Node> {
    let store = Store::open(&config.database_url)
        .await
        .with_context(|| format!("opening the database {}", config.database_url))?;
    let clock: SharedClock = Arc::new(MonotonicClock::default());
    let pricing = config.pricing();
    let orphans = lifecycle::fail_orphans(&store, &pricing, &config.node_id, clock.now()).await?;
    if orphans > 0 {
        tracing::warn!(
            orphans,
            "calls left live by the last run were marked failed"
        );
    }

    let vad = VadBatch::load_or_fallback(256);
    if let Some(reason) = vad.fallback_reason() {
        tracing::warn!(reason, "Silero VAD unavailable: using the energy detector");
    }
    let (worker, _thread) = spawn_worker_thread(MediaWorker::new(vad, None), "media-worker")?;
    let web_worker = worker.clone();

    let mut sip_config = SipConfig::new(config.sip.listen);
    sip_config.rtp_ports = config.sip.rtp_ports.0..=config.sip.rtp_ports.1;
    // The inbound router needs the dispatcher, which needs the server's
    // dialer: INVITEs are refused (503) until it is set, right below.
    let router: Arc<std::sync::OnceLock<InboundRouter>> = Arc::default();
    let sip = SipServer::bind(sip_config, worker, LateRouter(Arc::clone(&router)))
        .await
        .context("binding the SIP socket")?;
    let sip_addr = sip.local_addr();
    let carrier = LocalCarrier::new();
    let telephony = EngineTelephony::new(
        sip.dialer(),
        Route::Local(carrier.clone()),
        stack.clone(),
        Duration::from_secs(30),
    );
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let dispatcher = Dispatcher::new(
        store.clone(),
        Arc::clone(&clock),
        pricing,
        Arc::new(telephony),
        extractor,
        Arc::clone(&metrics),
    );
    let inbound = InboundRouter::new(
        store.clone(),
        Arc::clone(&clock),
        pricing,
        config.node_id.clone(),
        stack,
        Arc::clone(&dispatcher),
        sip.dialer(),
    );
    // Media streams and browsers reach the same agents beside the API.
    let web = WebCallRouter::new(&inbound, config.node_id.clone());
    let _ = router.set(inbound);
    let web_calls = media_stream::router(MediaStreamServer::new(web_worker.clone(), web.clone()))
        .merge(webrtc::router(WebRtcServer::new(
            web_worker,
            web,
            WebRtcConfig {
                candidate_ip: config.webrtc_ip,
                ..WebRtcConfig::default()
            },
        )));
    tokio::spawn(async move {
        if let Err(err) = sip.run().await {
            tracing::error!(%err, "the SIP server stopped");
        }
    });

    let numbers: Arc<dyn Carrier> = match config.carrier.as_str() {
        "sip_trunk" => Arc::new(TrunkCarrier {
            numbers: config.trunk_numbers.clone(),
        }),
        _ => Arc::new(LocalNumbers::routed(carrier.clone(), sip_addr)),
    };
    // Every number this node sells on the local carrier is answered here.
    route_local_numbers(&store, &carrier, sip_addr).await?;
    let launcher: Arc<dyn CallLauncher> = Arc::new(Arc::clone(&dispatcher));
    let state = AppState {
        store: store.clone(),
        clock,
        pricing,
        carrier: numbers,
        launcher,
        node_id: config.node_id.clone(),
        metrics,
    };
    let webhooks = crate::webhooks::worker::spawn(
        store.clone(),
        Arc::clone(&state.clock),
        crate::webhooks::worker::WorkerSettings::new(
            config.node_id.clone(),
            config.allow_private_webhooks,
        ),
    )
    .await
    .context("starting the webhook worker")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the API on {}", config.listen))?;
    let api_addr = listener.local_addr()?;
    let (shutdown, mut shutdown_rx) = tokio::sync::watch::channel(false);
    let node_metrics = Arc::clone(&state.metrics);
    let app = api::router(state).merge(web_calls);
    // Media-stream frames must leave as they are sent, not wait for the
    // peer's delayed ACK (best effort: a socket that refuses still works).
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown_rx.wait_for(|stop| *stop).await;
            })
            .await
    });
    Ok(Node {
        api: api_addr,
        sip: sip_addr,
        store,
        carrier,
        dispatcher,
        metrics: node_metrics,
        server,
        shutdown,
        webhooks,
    })
}

/// Points the local carrier's routes of the node's active local numbers at
/// its own SIP address.
pub async fn route_local_numbers(
    store: &Store,
    carrier: &LocalCarrier,
    sip: SocketAddr,
) -> Result<()> {
    let numbers: Vec<String> = sqlx::query_scalar(
        "SELECT e164 FROM phone_numbers WHERE status = 'active' AND carrier = 'local'",
    )
    .fetch_all(store.pool())
    .await?;
    for number in numbers {
        let _ = carrier.assign(&number, sip);
    }
    Ok(())
}

/// The inbound router, once the node has built it.
struct LateRouter(Arc<std::sync::OnceLock<InboundRouter>>);

impl SipCallFactory for LateRouter {
    fn open_call(&self, call: &IncomingCall) -> Result<SipCallSetup, SipCallRefused> {
        match self.0.get() {
            Some(router) => router.open_call(call),
            None => Err(SipCallRefused {
                status: 503,
                reason: "starting".into(),
            }),
        }
    }
}
