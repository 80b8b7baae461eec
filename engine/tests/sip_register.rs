//! REGISTER toward a trunk against a real registrar: SIPp (Debian
//! `sip-tester`) plays one (`fixtures/sip/uas_registrar.xml`): it challenges
//! each REGISTER with a 401 digest challenge, verifies the engine's answer
//! (SIPp's own digest check), grants 4 s, expects the refresh before those
//! run out and the un-REGISTER (Expires: 0) when the engine shuts down.
//!
//! Wall-clock time: SIPp is a real process (backoff, 423 and timeouts are
//! tested on virtual time in `transport::sip::register`).

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::process::Command;
use std::time::Duration;

use callingbox_engine::session::MediaWorker;
use callingbox_engine::transport::sip::{
    Credentials, IncomingCall, RegistrationConfig, RegistrationStatus, SipCallRefused,
    SipCallSetup, SipConfig, SipServer,
};
use callingbox_engine::transport::spawn_worker;
use callingbox_engine::vad::VadBatch;
use tokio_util::sync::CancellationToken;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_with_digest_refreshes_and_unregisters_at_a_sipp_registrar() {
    if Command::new("sipp").arg("-v").output().is_err() {
        println!(
            "SKIPPED registers_with_digest_refreshes_and_unregisters_at_a_sipp_registrar: `sipp` is not installed (apt-get install sip-tester)"
        );
        return;
    }
    let registrar_port = free_port();
    let sipp = tokio::task::spawn_blocking(move || {
        Command::new("sipp")
            .arg("-sf")
            .arg(fixtures("sip").join("uas_registrar.xml"))
            .args(["-i", "127.0.0.1", "-p", &registrar_port.to_string()])
            .args(["-m", "1", "-nostdin", "-timeout", "30s", "-timeout_error"])
            .output()
            .expect("run sipp")
    });
    // Give SIPp a moment to bind (a lost first REGISTER would be resent anyway).
    tokio::time::sleep(Duration::from_millis(300)).await;

    let factory = |_call: &IncomingCall| -> Result<SipCallSetup, SipCallRefused> {
        Err(SipCallRefused {
            status: 480,
            reason: "registration test".into(),
        })
    };
    let (worker, _task) = spawn_worker(MediaWorker::new(VadBatch::load_or_fallback(1), None));
    let mut config = SipConfig::new("127.0.0.1:0".parse().expect("addr"));
    config.rtp_ports = 43_100..=43_110;
    let mut registration = RegistrationConfig::new(
        SocketAddr::from(([127, 0, 0, 1], registrar_port)),
        "callingbox.test",
        "1000",
    );
    registration.credentials = Some(Credentials {
        username: "alice".into(),
        password: "secret".into(),
    });
    registration.expires = Duration::from_secs(4);
    config.register = Some(registration);
    let server = SipServer::bind(config, worker, factory)
        .await
        .expect("bind SIP");
    let mut status = server.registration();
    let stop = CancellationToken::new();
    let running = tokio::spawn(server.run_until(stop.clone()));

    // Registered, then registered again by the refresh (at 2 s of the 4 s).
    let mut registered_at = Vec::new();
    let started = tokio::time::Instant::now();
    while registered_at.len() < 2 {
        tokio::time::timeout(Duration::from_secs(8), status.changed())
            .await
            .expect("the registration moves on")
            .expect("the server runs");
        let now = *status.borrow_and_update();
        match now {
            RegistrationStatus::Registered { expires } => {
                assert_eq!(expires, Duration::from_secs(4));
                registered_at.push(started.elapsed());
            }
            RegistrationStatus::Failed { status, .. } => panic!("failed: {status:?}"),
            _ => {}
        }
    }
    let between = registered_at[1] - registered_at[0];
    assert!(
        between >= Duration::from_millis(1_800) && between < Duration::from_secs(4),
        "refreshed {between:?} after the first registration (granted 4 s)"
    );

    // Shutdown un-REGISTERs (SIPp checks Expires: 0 and the credentials).
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(6), running)
        .await
        .expect("run_until returns")
        .expect("the task")
        .expect("no socket error");
    assert_eq!(*status.borrow(), RegistrationStatus::Unregistered);
    let output = sipp.await.expect("sipp thread");
    assert_eq!(
        output.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!(
        "registered at {registered_at:?}; refreshed after {between:?}; unregistered at shutdown"
    );
}
