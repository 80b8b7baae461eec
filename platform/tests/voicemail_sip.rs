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

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use callingbox::clock::{Clock, MonotonicClock};
use callingbox::config::{Config, SipSettings};
use callingbox::dispatch::engine::SpeechStack;
use callingbox::dispatch::extraction::{Extractor, ModelExtractor};
use callingbox::dispatch::speech::StructuredModel;
use callingbox::node::start_node;
use callingbox::store::{keys, orgs};
use callingbox_engine::codecs::{G711Law, SampleRate, read_wav};
use callingbox_engine::providers::scripted::{
    LlmLatency, ScriptMatch, ScriptRule, ScriptedAsr, ScriptedLlm, ScriptedTts, TtsLatency,
};
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

fn scripted_stack() -> (SpeechStack, Arc<dyn Extractor>) {
    let llm = ScriptedLlm::new(
        vec![ScriptRule::when(ScriptMatch::Always).reply("Hi, this is the clinic.")],
        LlmLatency {
            time_to_first_token: Duration::from_millis(200),
            tokens_per_second: 50,
        },
    );
    let tts = ScriptedTts::new(
        SampleRate::Hz16000,
        TtsLatency {
            time_to_first_byte: Duration::from_millis(100),
            real_time_factor: 0.1,
            speech_per_char: Duration::from_millis(40),
        },
    );
    let asr = ScriptedAsr::new(
        vec!["Hi, you've reached Sam.".to_owned()],
        Duration::from_millis(150),
        Duration::from_millis(250),
    );
    let stack = SpeechStack {
        llm: Arc::new(llm),
        tts: Arc::new(tts),
        voices: Default::default(),
        cloud_voices: None,
        asr: Arc::new(asr),
        end_of_turn_model: false,
        llm_timeout: Duration::from_secs(15),
    };
    let json_model = ScriptedLlm::new(Vec::new(), LlmLatency::default())
        .with_json_reply(json!({"reached": true}));
    let extractor: Arc<dyn Extractor> =
        Arc::new(ModelExtractor::new(StructuredModel(Arc::new(json_model))));
    (stack, extractor)
}

async fn api(
    http: &reqwest::Client,
    base: &str,
    key: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http
        .request(method, format!("{base}{path}"))
        .bearer_auth(key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("the API answers");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
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
        let config = Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            database_url: url.clone(),
            node_id: "voicemail-test".into(),
            sip: SipSettings {
                listen: "127.0.0.1:0".parse().expect("addr"),
                rtp_ports: (engine_rtp, engine_rtp),
            },
            ..Config::default()
        };
        let (stack, extractor) = scripted_stack();
        let node = start_node(&config, stack, extractor)
            .await
            .expect("the node starts");
        let now = MonotonicClock::default().now();
        let mut tx = node.store.begin().await.expect("tx");
        let org = orgs::create(&mut tx, "voicemail test", 10_000_000, now)
            .await
            .expect("org");
        let (_, key) = keys::create(&mut tx, &org.id, "test", None, now)
            .await
            .expect("key");
        tx.commit().await.expect("commit");
        let base = format!("http://{}", node.api);
        let http = reqwest::Client::new();

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
            node.carrier
                .assign(CALLEE, SocketAddr::from(([127, 0, 0, 1], sipp_port)))
                .expect("E.164");
            tokio::time::sleep(Duration::from_millis(300)).await;

            let (status, offers) = api(
                &http,
                &base,
                &key,
                reqwest::Method::GET,
                "/v1/numbers/available?area_code=415&limit=1",
                None,
            )
            .await;
            assert_eq!(status, 200, "{offers}");
            let from = offers[0]["phone_number"]
                .as_str()
                .expect("a number")
                .to_owned();
            let (status, bought) = api(
                &http,
                &base,
                &key,
                reqwest::Method::POST,
                "/v1/numbers/purchase",
                Some(json!({"phone_number": from})),
            )
            .await;
            assert_eq!(status, 201, "{bought}");

            let (status, created) = api(
                &http,
                &base,
                &key,
                reqwest::Method::POST,
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
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            loop {
                let (_, call) = api(
                    &http,
                    &base,
                    &key,
                    reqwest::Method::GET,
                    &format!("/v1/calls/{id}"),
                    None,
                )
                .await;
                if call["status"] == "in_progress" {
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline && call["status"] != "failed",
                    "{backend}: never answered: {call}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let answered = tokio::time::Instant::now();
            let engine = SocketAddr::from(([127, 0, 0, 1], engine_rtp));
            let streaming = async { stream(&media, engine, "voicemail_sam.8k.ulaw.wav").await };
            let ended = async {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
                loop {
                    let (_, call) = api(
                        &http,
                        &base,
                        &key,
                        reqwest::Method::GET,
                        &format!("/v1/calls/{id}"),
                        None,
                    )
                    .await;
                    let done = call["status"] != "in_progress";
                    if done || tokio::time::Instant::now() > deadline {
                        return (call, answered.elapsed());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
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
            let (status, transcript) = api(
                &http,
                &base,
                &key,
                reqwest::Method::GET,
                &format!("/v1/calls/{id}/transcript"),
                None,
            )
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
        node.shutdown(Duration::from_secs(2)).await;
    }
}
