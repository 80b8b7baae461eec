//! SIP over TCP (RFC 3261 section 18) against a real peer: SIPp (Debian
//! `sip-tester`) in `-t t1` mode (TCP, one connection) calls the engine on
//! its TCP listener (beside the UDP socket, same port). One call streams
//! speech and hangs up (`uac_stream.xml`): every message, both ways, on the
//! one connection. The other never refreshes its session timer
//! (`uac_session_expires.xml`): our BYE must reach SIPp over that
//! connection too (in t1 mode SIPp has no UDP socket to get it on).

mod common;

use common::scripted_call::{pcmu_media, scripted_conversation};

use std::net::UdpSocket as StdUdpSocket;
use std::process::{Command, Output};
use std::time::Duration;

use callingbox_engine::session::{MediaEvent, MediaWorker};
use callingbox_engine::transport::rtp::RtpStats;
use callingbox_engine::transport::sip::session_timer::SessionTimerConfig;
use callingbox_engine::transport::sip::{
    IncomingCall, SipCallRefused, SipCallSetup, SipConfig, SipEnd, SipEvent, SipServer,
};
use callingbox_engine::transport::spawn_worker;
use callingbox_engine::vad::VadBatch;
use tokio::sync::mpsc;

const BOOK_TABLE: &str =
    "I'd like to book a table for four people tomorrow at seven in the evening.";

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

/// Runs SIPp over TCP with `scenario`; returns its output, the events.
async fn call_over_tcp(
    scenario: &str,
    rtp_ports: std::ops::RangeInclusive<u16>,
) -> (Output, Vec<SipEvent>) {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let factory = move |_call: &IncomingCall| {
        let conversation =
            scripted_conversation(&[BOOK_TABLE], &["Sure, for four people tomorrow at seven."])
                .map_err(|error| SipCallRefused {
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
        .expect("bind SIP (UDP and TCP)");
    let target = server.local_addr().to_string();
    tokio::spawn(server.run());
    let scenario = fixtures("sip").join(scenario);
    let (sip_port, media_port) = (free_port(), free_port());
    let sipp = tokio::task::spawn_blocking(move || {
        Command::new("sipp")
            .current_dir(fixtures("audio"))
            .arg(target)
            .arg("-sf")
            .arg(scenario)
            .args([
                "-t",
                "t1",
                "-s",
                "1000",
                "-i",
                "127.0.0.1",
                "-mi",
                "127.0.0.1",
            ])
            .args(["-p", &sip_port.to_string(), "-mp", &media_port.to_string()])
            .args(["-m", "1", "-nostdin", "-timeout", "30s", "-timeout_error"])
            .output()
            .expect("run sipp")
    });
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(25), events.recv()).await {
            Ok(Some(event)) => {
                let ended = matches!(event, SipEvent::Ended { .. });
                seen.push(event);
                if ended {
                    break;
                }
            }
            other => panic!("the call did not end: {other:?} after {seen:?}"),
        }
    }
    (sipp.await.expect("sipp thread"), seen)
}

fn ended(events: &[SipEvent]) -> (SipEnd, RtpStats) {
    match events.last() {
        Some(SipEvent::Ended { reason, rtp }) => (reason.clone(), *rtp),
        other => panic!("not ended: {other:?}"),
    }
}

fn sipp_missing(test: &str) -> bool {
    let missing = Command::new("sipp").arg("-v").output().is_err();
    if missing {
        println!("SKIPPED {test}: `sipp` is not installed (apt-get install sip-tester)");
    }
    missing
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_calls_over_tcp_streams_speech_and_hangs_up() {
    if sipp_missing("sipp_calls_over_tcp_streams_speech_and_hangs_up") {
        return;
    }
    let (output, events) = call_over_tcp("uac_stream.xml", 43_200..=43_210).await;
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(events.contains(&SipEvent::Answered), "{events:?}");
    assert!(
        events
            .iter()
            .any(|event| matches!(event, SipEvent::Media(MediaEvent::UserTurnEnded { .. }))),
        "the agent heard the caller: {events:?}"
    );
    let (reason, rtp) = ended(&events);
    assert_eq!(reason, SipEnd::RemoteBye);
    assert!(rtp.audio_received >= 150 && rtp.sent > 0, "{rtp:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_bye_goes_back_over_the_callers_tcp_connection() {
    if sipp_missing("our_bye_goes_back_over_the_callers_tcp_connection") {
        return;
    }
    let (output, events) = call_over_tcp("uac_session_expires.xml", 43_220..=43_230).await;
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(ended(&events).0, SipEnd::SessionExpired);
}
