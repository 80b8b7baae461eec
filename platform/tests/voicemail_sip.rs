//! Outbound calls that reach voicemail, end to end through the node `serve`
//! runs: a call created with `POST /v1/calls` goes out on the local carrier
//! to SIPp (`fixtures/sip/uas_voicemail.xml`, answering at once and waiting
//! for our BYE), whose media is the test's RTP endpoint streaming the
//! recorded voicemail greeting (`voicemail_sam`, with its 1 kHz beep). The
//! engine's answering-machine detection hangs up on it (`voicemail_action:
//! hangup`) or speaks the voicemail message after the beep and then hangs
//! up (`leave_message`); either way the API then shows
//! `status: no_answer`, `answered_by: machine`, nothing billed and no
//! extraction. On SQLite and (with `CALLINGBOX_TEST_POSTGRES_URL`)
//! PostgreSQL. Prints a SKIPPED line when `sipp` is not installed.

mod common;
mod node_support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use callingbox_engine::codecs::{G711Law, read_wav};
use common::database_urls;
use serde_json::{Value, json};

const CALLEE: &str = "+12125550188";

fn fixtures(dir: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures")).join(dir)
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .expect("a free port")
        .port()
}

/// Streams the fixture as PCMU from `socket` to `to`, in real time.
async fn stream(socket: &tokio::net::UdpSocket, to: SocketAddr, fixture: &str) {
    let audio = read_wav(fixtures("audio").join(fixture)).expect("fixture");
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let mut payload = [0u8; 160];
    for (index, chunk) in audio.samples.chunks_exact(160).enumerate() {
        ticker.tick().await;
        G711Law::MuLaw.encode(chunk, &mut payload).expect("encode");
        let mut packet = vec![0x80, if index == 0 { 0x80 } else { 0 }];
        packet.extend_from_slice(&(index as u16).to_be_bytes());
        packet.extend_from_slice(&((index as u32) * 160).to_be_bytes());
        packet.extend_from_slice(&0x5EED_0003u32.to_be_bytes());
        packet.extend_from_slice(&payload);
        let _ = socket.send_to(&packet, to).await;
    }
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_reaches_voicemail_is_no_answer_answered_by_machine_and_free() {
    if Command::new("sipp").arg("-v").output().is_err() {
        println!("SKIPPED: `sipp` is not installed (apt-get install sip-tester)");
        return;
    }
    for (round, (backend, url)) in database_urls().await.into_iter().enumerate() {
        // RTP wants an even port.
        let engine_rtp = 43_310 + 2 * round as u16;
        let (stack, extractor) = node_support::scripted_stack_with(
            "Hi, you've reached Sam.",
            "Hi, this is the clinic.",
            json!({"reached": true}),
        );
        let test = node_support::start_with(&url, (engine_rtp, engine_rtp), stack, extractor).await;

        for action in ["hangup", "leave_message"] {
            // The callee: SIPp on the local carrier, its media our socket.
            let media = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind RTP");
            let media_port = media.local_addr().expect("addr").port();
            let sipp_port = free_udp_port();
            let mut command = Command::new("sipp");
            command
                .arg("-sf")
                .arg(fixtures("sip").join("uas_voicemail.xml"))
                .args(["-i", "127.0.0.1", "-p", &sipp_port.to_string()])
                .args(["-m", "1", "-nostdin", "-timeout", "40s", "-timeout_error"])
                .args(["-set", "rtp_port", &media_port.to_string()])
                .args(["-set", "pt", "0", "-set", "codec", "PCMU"]);
            let sipp = tokio::task::spawn_blocking(move || command.output().expect("run sipp"));
            test.node
                .carrier
                .assign(CALLEE, SocketAddr::from(([127, 0, 0, 1], sipp_port)))
                .expect("E.164");
            tokio::time::sleep(Duration::from_millis(300)).await;

            let (_, from) = test.buy_numbers(1).await.remove(0);

            let (status, created) = test
                .call(
                    "POST",
                    "/v1/calls",
                    Some(json!({
                        "to": CALLEE,
                        "from_number": from,
                        "prompt": "Remind Sam of the appointment tomorrow at nine.",
                        "returns": {"confirmed": "boolean"},
                        "voicemail_action": action,
                    })),
                )
                .await;
            assert_eq!(status, 201, "{backend}: {created}");
            let id = created["id"].as_str().expect("id").to_owned();

            // Stream the greeting from the answer on.
            let call = test
                .call_until(&id, Duration::from_secs(15), |call| {
                    call["status"] == "in_progress" || call["status"] == "failed"
                })
                .await;
            assert_eq!(
                call["status"], "in_progress",
                "{backend}: never answered: {call}"
            );
            let answered = tokio::time::Instant::now();
            let engine = SocketAddr::from(([127, 0, 0, 1], engine_rtp));
            let streaming = async { stream(&media, engine, "voicemail_sam.8k.ulaw.wav").await };
            let ended = async {
                let call = test
                    .call_until(&id, Duration::from_secs(20), |call| {
                        call["status"] != "in_progress"
                    })
                    .await;
                (call, answered.elapsed())
            };
            let (_, (call, lasted)) = tokio::join!(streaming, ended);
            let output = sipp.await.expect("sipp thread");
            assert_eq!(
                output.status.code(),
                Some(0),
                "{backend}: {}",
                describe(&output)
            );

            assert_eq!(call["status"], "no_answer", "{backend}: {call}");
            assert_eq!(call["answered_by"], "machine", "{backend}: {call}");
            assert_eq!(call["billed_duration_seconds"], 0, "{backend}: {call}");
            assert_eq!(call["billing_amount_milli_cents"], 0, "{backend}: {call}");
            assert_eq!(
                call["result"],
                Value::Null,
                "{backend}: no extraction: {call}"
            );
            assert_ne!(call["result_status"], "completed", "{backend}: {call}");
            let (status, transcript) = test
                .call("GET", &format!("/v1/calls/{id}/transcript"), None)
                .await;
            assert_eq!(status, 200, "{transcript}");
            let message_spoken = transcript.to_string().contains("sorry we missed you");
            if action == "hangup" {
                // Decided ~3.4 s after the answer, hung up at once.
                assert!(lasted < Duration::from_secs(5), "{backend}: {lasted:?}");
                assert!(!message_spoken, "{backend}: {transcript}");
            } else {
                // The beep ends 6.4 s into the greeting; then the message.
                assert!(
                    lasted > Duration::from_millis(6_400),
                    "{backend}: {lasted:?}"
                );
                assert!(message_spoken, "{backend}: the message: {transcript}");
            }
            println!(
                "{backend} {action}: {id} ended {} / {} after {lasted:?}",
                call["status"], call["answered_by"]
            );
        }
        test.node.shutdown(Duration::from_secs(2)).await;
    }
}
