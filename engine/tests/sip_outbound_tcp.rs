//! An outbound call over TCP (RFC 3261 18): the engine dials a trunk
//! configured with `tcp: true`, which SIPp (Debian `sip-tester`) plays in
//! `-t t1` mode (TCP only) with `fixtures/sip/uas_answer.xml`: 100, 180,
//! 200 with SDP on the engine's connection, our ACK on it, and SIPp's BYE
//! back over it. In t1 mode SIPp has no UDP socket, so any message sent by
//! UDP would be lost and the scenario would fail.

mod common;

use common::scripted_call::{pcmu_media, scripted_conversation};

use std::net::UdpSocket as StdUdpSocket;
use std::process::Command;
use std::time::Duration;

use callingbox_engine::session::MediaWorker;
use callingbox_engine::transport::sip::{
    IncomingCall, OutboundCall, Route, SipCallRefused, SipCallSetup, SipConfig, SipEnd, SipEvent,
    SipServer, SipTrunk,
};
use callingbox_engine::transport::spawn_worker;
use callingbox_engine::vad::VadBatch;
use tokio::sync::mpsc;

fn fixtures(dir: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fixtures")
        .join(dir)
}

fn free_port() -> u16 {
    StdUdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .expect("a free port")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_call_over_tcp_is_answered_and_hung_up_on_its_connection() {
    if Command::new("sipp").arg("-v").output().is_err() {
        println!(
            "SKIPPED an_outbound_call_over_tcp_is_answered_and_hung_up_on_its_connection: `sipp` is not installed (apt-get install sip-tester)"
        );
        return;
    }
    // The callee's RTP lands here (its SDP names this port).
    let media = StdUdpSocket::bind("127.0.0.1:0").expect("media socket");
    let media_port = media.local_addr().expect("addr").port();
    let sipp_port = free_port();
    let sipp = tokio::task::spawn_blocking(move || {
        Command::new("sipp")
            .arg("-sf")
            .arg(fixtures("sip").join("uas_answer.xml"))
            .args(["-t", "t1", "-i", "127.0.0.1", "-p", &sipp_port.to_string()])
            .args(["-set", "rtp_port", &media_port.to_string()])
            .args(["-set", "pt", "0", "-set", "codec", "PCMU"])
            .args(["-m", "1", "-nostdin", "-timeout", "30s", "-timeout_error"])
            .output()
            .expect("run sipp")
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (worker, _task) = spawn_worker(MediaWorker::new(VadBatch::load_or_fallback(4), None));
    let mut config = SipConfig::new("127.0.0.1:0".parse().expect("addr"));
    config.rtp_ports = 43_400..=43_410;
    let refuse = |_: &IncomingCall| -> Result<SipCallSetup, SipCallRefused> {
        Err(SipCallRefused {
            status: 403,
            reason: "this engine only calls out".into(),
        })
    };
    let server = SipServer::bind(config, worker, refuse)
        .await
        .expect("bind SIP");
    let dialer = server.dialer();
    tokio::spawn(server.run());

    let conversation = scripted_conversation(&["Hello?"], &["Hi, this is the agent."])
        .expect("scripted providers");
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let setup = SipCallSetup {
        media: pcmu_media(),
        link: Some(conversation.link),
        epoch: conversation.epoch,
        events: Some(events_tx),
        cancel: conversation.cancel,
        tap: None,
    };
    let _call = dialer
        .dial(OutboundCall {
            to: "+15550100".into(),
            from: "+15550199".into(),
            route: Route::Trunk(SipTrunk {
                host: "127.0.0.1".into(),
                port: sipp_port,
                credentials: None,
                tcp: true,
            }),
            setup,
            ring_timeout: Duration::from_secs(20),
        })
        .await
        .expect("dialed over TCP");
    let mut seen = Vec::new();
    let reason = loop {
        match tokio::time::timeout(Duration::from_secs(25), events.recv()).await {
            Ok(Some(SipEvent::Ended { reason, .. })) => break reason,
            Ok(Some(event)) => seen.push(event),
            other => panic!("the call did not end: {other:?} after {seen:?}"),
        }
    };
    assert!(seen.contains(&SipEvent::Answered), "{seen:?}");
    assert_eq!(reason, SipEnd::RemoteBye, "{seen:?}");
    let output = sipp.await.expect("sipp thread");
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
