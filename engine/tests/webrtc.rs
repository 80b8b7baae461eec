//! The WebRTC signalling endpoint over real HTTP on 127.0.0.1: the page is
//! served, bad input gets a `400` with a JSON `error` (and no call), a good
//! offer gets an SDP answer and a call on the worker, and a browser that
//! never connects has its call dropped after the connect timeout.
//! The browser end to end is `webrtc_chromium.rs`.

mod common;

use common::scripted_call::{pcmu_media, scripted_conversation};

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use callingbox_engine::session::MediaWorker;
use callingbox_engine::transport::WorkerHandle;
use callingbox_engine::transport::spawn_worker;
use callingbox_engine::transport::webrtc::{
    CallRefused, CallRequest, CallSetup, EndReason, PeerEvent, WebRtcConfig, WebRtcServer, router,
};
use callingbox_engine::vad::VadBatch;
use serde_json::{Value, json};
use str0m::media::{Direction, MediaKind};
use str0m::{Candidate, RtcConfig};
use tokio::sync::mpsc;

struct Server {
    address: SocketAddr,
    worker: WorkerHandle,
    events: mpsc::UnboundedReceiver<PeerEvent>,
    http: reqwest::Client,
}

async fn start_server(connect_timeout: Duration) -> Server {
    let (events_tx, events) = mpsc::unbounded_channel();
    let factory = move |_request: &CallRequest| {
        let conversation = scripted_conversation(&["Hello."], &["Hi."])
            .map_err(|error| CallRefused::unavailable(error.to_string()))?;
        Ok(CallSetup {
            media: pcmu_media(),
            link: Some(conversation.link),
            epoch: conversation.epoch,
            events: Some(events_tx.clone()),
            cancel: conversation.cancel,
        })
    };
    let (worker, _task) = spawn_worker(MediaWorker::new(VadBatch::load_or_fallback(2), None));
    let config = WebRtcConfig {
        connect_timeout,
        ..WebRtcConfig::default()
    };
    let server = WebRtcServer::new(worker.clone(), factory, config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, router(server)).await });
    Server {
        address,
        worker,
        events,
        http: reqwest::Client::new(),
    }
}

/// A browser's offer (one sendrecv audio track), Opus or PCMU only.
fn offer(opus: bool) -> String {
    let config = RtcConfig::new().clear_codecs();
    let config = if opus {
        config.enable_opus(true, false)
    } else {
        config.enable_pcmu(true, false)
    };
    let mut rtc = config.build(Instant::now());
    let candidate =
        Candidate::host("127.0.0.1:9".parse().expect("address"), "udp").expect("candidate");
    rtc.add_local_candidate(candidate);
    let mut change = rtc.sdp_api();
    change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let (offer, _pending) = change.apply().expect("offer");
    offer.to_sdp_string()
}

async fn post(server: &Server, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let response = server
        .http
        .post(format!("http://{}/webrtc/offer", server.address))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    let body = response.json().await.expect("a JSON body");
    (status, body)
}

fn error_of(body: &Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {body}"))
}

#[tokio::test]
async fn bad_offers_get_a_json_400_and_no_call() {
    let server = start_server(Duration::from_secs(10)).await;

    let page = server
        .http
        .get(format!("http://{}/webrtc", server.address))
        .send()
        .await
        .expect("page");
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.expect("html");
    assert!(html.contains("RTCPeerConnection") && html.contains("Hang up"));

    let (status, body) = post(&server, "this is not json").await;
    assert_eq!(status, 400);
    assert!(error_of(&body).contains("not an offer"), "{body}");

    let (status, body) = post(&server, json!({"type": "offer"}).to_string()).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_of(&body).contains("sdp"), "{body}");

    let (status, body) = post(
        &server,
        json!({"type": "answer", "sdp": offer(true)}).to_string(),
    )
    .await;
    assert_eq!(status, 400, "{body}");

    let (status, body) = post(
        &server,
        json!({"type": "offer", "sdp": "garbage\r\n"}).to_string(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(error_of(&body).contains("not valid SDP"), "{body}");

    let (status, body) = post(&server, json!({"sdp": offer(false)}).to_string()).await;
    assert_eq!(status, 400);
    assert!(error_of(&body).contains("no Opus"), "{body}");

    let mangled = offer(true).replace("a=ice-ufrag", "a=x-ufrag");
    let (status, body) = post(&server, json!({"sdp": mangled}).to_string()).await;
    assert_eq!(status, 400, "{body}");

    assert_eq!(server.worker.live_calls(), 0);
}

#[tokio::test]
async fn an_answered_browser_that_never_connects_is_dropped() {
    let mut server = start_server(Duration::from_millis(500)).await;
    let body = json!({"type": "offer", "sdp": offer(true), "parameters": {"agent": "demo"}});
    let (status, answer) = post(&server, body.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["type"], "answer");
    let sdp = answer["sdp"].as_str().expect("sdp");
    assert!(sdp.contains("opus/48000"), "{sdp}");
    assert!(
        sdp.contains("a=candidate") && sdp.contains("127.0.0.1"),
        "{sdp}"
    );
    assert_eq!(server.worker.live_calls(), 1);
    let started = server.events.recv().await.expect("started");
    let PeerEvent::Started(request) = started else {
        panic!("{started:?}");
    };
    assert_eq!(Some(request.id), answer["call"].as_u64());
    assert_eq!(request.parameters["agent"], "demo");
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(PeerEvent::Ended { reason, .. }) = server.events.recv().await {
                break reason;
            }
        }
    })
    .await
    .expect("the call is dropped");
    assert_eq!(ended, EndReason::ConnectTimeout);
    assert_eq!(server.worker.live_calls(), 0);
}
