//! Session timers (RFC 4028) against a real SIP peer: SIPp (Debian
//! `sip-tester`) calls an engine whose Min-SE is 2 s (RFC 4028 wants 90 s on
//! the wire; 2 s lets a test see several intervals). One caller is refused
//! with 422, retries, makes the engine the refresher and answers its UPDATEs
//! (`fixtures/sip/uac_session_timer.xml`); the other never refreshes and
//! must get the engine's BYE (`fixtures/sip/uac_session_expires.xml`).
//!
//! Wall-clock time: SIPp is a real process (the timer rules are tested on
//! virtual time in `transport::sip::session_timer`).

mod common;

use common::scripted_call::{pcmu_media, scripted_conversation};

use std::net::UdpSocket as StdUdpSocket;
use std::process::{Command, Output};
use std::time::Duration;

use callingbox_engine::session::MediaWorker;
use callingbox_engine::transport::sip::session_timer::SessionTimerConfig;
use callingbox_engine::transport::sip::{
    IncomingCall, SipCallRefused, SipCallSetup, SipConfig, SipEnd, SipEvent, SipServer,
};
use callingbox_engine::transport::spawn_worker;
use callingbox_engine::vad::VadBatch;
use tokio::sync::mpsc;
use tokio::time::Instant;

fn fixtures(dir: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fixtures")
        .join(dir)
}

fn free_port() -> u16 {
    let socket = StdUdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("addr").port()
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `scenario` against an engine with a 2 s Min-SE; returns SIPp's
/// output, how long the call lasted from the answer, and why it ended.
async fn call_with(
    scenario: &str,
    rtp_ports: std::ops::RangeInclusive<u16>,
) -> (Output, Duration, SipEnd) {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let factory = move |_call: &IncomingCall| {
        let conversation =
            scripted_conversation(&["Hello."], &["Hi there."]).map_err(|error| SipCallRefused {
                status: 503,
                reason: error.to_string(),
            })?;
        Ok(SipCallSetup {
            media: pcmu_media(),
            link: Some(conversation.link),
            epoch: conversation.epoch,
            events: Some(events_tx.clone()),
            cancel: conversation.cancel,
            tap: None,
        })
    };
    let (worker, _task) = spawn_worker(MediaWorker::new(VadBatch::load_or_fallback(4), None));
    let mut config = SipConfig::new("127.0.0.1:0".parse().expect("addr"));
    config.rtp_ports = rtp_ports;
    config.numbers = vec!["1000".into()];
    config.session_timer = SessionTimerConfig {
        interval: Duration::from_secs(1_800),
        min_se: Duration::from_secs(2),
    };
    let server = SipServer::bind(config, worker.clone(), factory)
        .await
        .expect("bind SIP");
    let target = server.local_addr().to_string();
    tokio::spawn(server.run());
    let scenario = fixtures("sip").join(scenario);
    let (sip_port, media_port) = (free_port(), free_port());
    let sipp = tokio::task::spawn_blocking(move || {
        Command::new("sipp")
            .arg(target)
            .arg("-sf")
            .arg(scenario)
            .args(["-s", "1000", "-i", "127.0.0.1", "-mi", "127.0.0.1"])
            .args(["-p", &sip_port.to_string(), "-mp", &media_port.to_string()])
            .args(["-m", "1", "-nostdin", "-timeout", "30s", "-timeout_error"])
            .output()
            .expect("run sipp")
    });
    let mut answered = None;
    let reason = loop {
        match tokio::time::timeout(Duration::from_secs(20), events.recv()).await {
            Ok(Some(SipEvent::Answered)) => answered = Some(Instant::now()),
            Ok(Some(SipEvent::Ended { reason, .. })) => break reason,
            Ok(Some(_)) => {}
            other => panic!("the call did not end: {other:?}"),
        }
    };
    let lasted = answered.expect("answered").elapsed();
    let output = sipp.await.expect("sipp thread");
    (output, lasted, reason)
}

fn sipp_missing(test: &str) -> bool {
    let missing = Command::new("sipp").arg("-v").output().is_err();
    if missing {
        println!("SKIPPED {test}: `sipp` is not installed (apt-get install sip-tester)");
    }
    missing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_gets_422_then_the_engine_refreshes_by_update_past_the_interval() {
    if sipp_missing("sipp_gets_422_then_the_engine_refreshes_by_update_past_the_interval") {
        return;
    }
    let (output, lasted, reason) = call_with("uac_session_timer.xml", 43_000..=43_010).await;
    // SIPp checked the 422's Min-SE, the 200's Session-Expires and both UPDATEs.
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(reason, SipEnd::RemoteBye);
    // Two refreshes at 2 s and 4 s kept a 4 s session alive past 4 s.
    assert!(
        lasted > Duration::from_millis(4_300),
        "the call lasted {lasted:?}"
    );
    println!("refreshed session lasted {lasted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_never_refreshes_gets_our_bye_when_the_session_runs_out() {
    if sipp_missing("a_caller_that_never_refreshes_gets_our_bye_when_the_session_runs_out") {
        return;
    }
    let (output, lasted, reason) = call_with("uac_session_expires.xml", 43_020..=43_030).await;
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(reason, SipEnd::SessionExpired);
    // 3 s - min(32 s, 1 s) = 2 s after the answer.
    assert!(
        lasted >= Duration::from_millis(1_900) && lasted < Duration::from_millis(2_600),
        "BYE after {lasted:?}"
    );
    println!("unrefreshed session ended after {lasted:?}");
}
