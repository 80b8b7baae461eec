//! Inbound calls through the node `callingbox serve` runs, end to end: a
//! real SIPp process calls a number bought through the API, at the node's
//! SIP address, and streams a recorded fixture as PCMU RTP; the inbound
//! router finds the number's inbound agent, the engine answers and the
//! agent talks back; the API then shows the call (`direction: "inbound"`),
//! its transcript, its billing and its `returns`, and its webhooks were
//! delivered. Refusals: an unknown number gets 404, a bought number with no
//! inbound agent gets 480 (the number is someone's but answers nothing yet:
//! temporary, unlike 404 "no such number" or 603 "declined everywhere").
//!
//! The speech providers are scripted (recognizer, LLM, voice): what is under
//! test is SIP -> router -> engine -> store, on SQLite and (when
//! `CALLINGBOX_TEST_POSTGRES_URL` is set) PostgreSQL. Tests print a SKIPPED
//! line when `sipp` is not installed (`./dev setup` installs it).

mod common;
mod node_support;
mod webhooks_support;

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use callingbox_engine::providers::scripted::{ScriptMatch, ScriptRule};
use callingbox_engine::providers::{LlmEvent, LlmProvider, LlmRequest, ProviderError};
use common::database_urls;
use futures::StreamExt;
use futures::stream::BoxStream;
use node_support::{
    AGENT_ANSWERS, CALLER_SAYS, scripted_stack, scripted_stack_with_rules, start, start_with,
};
use serde_json::json;
use webhooks_support::Receiver;

const CALLER_ID: &str = "+12125550147";

fn sipp_installed() -> bool {
    Command::new("sipp").arg("-v").output().is_ok()
}

fn skip(test: &str) {
    println!("SKIPPED {test}: `sipp` is not installed (apt-get install sip-tester)");
}

fn fixtures(dir: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../fixtures")).join(dir)
}

fn free_udp_port() -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("addr").port()
}

/// What SIPp did, and what the kernel queued on its RTP socket(s).
struct SippRun {
    output: Output,
    /// The most bytes seen waiting on SIPp's non-SIP UDP sockets (SIPp
    /// 3.6 streams from its RTP socket but never reads it, so what the
    /// engine sent back stays queued there until the call ends).
    rtp_queued_bytes: u64,
    /// Datagrams the kernel dropped there once the queue was full.
    rtp_dropped: u64,
}

/// Runs SIPp with `scenario` calling `number` from [`CALLER_ID`].
async fn run_sipp(sip: SocketAddr, scenario: &str, number: &str) -> SippRun {
    let scenario = fixtures("sip").join(scenario);
    let number = number.to_owned();
    tokio::task::spawn_blocking(move || {
        let sip_port = free_udp_port();
        let child = Command::new("sipp")
            // rtp_stream paths are relative to the working directory.
            .current_dir(fixtures("audio"))
            .arg(sip.to_string())
            .arg("-sf")
            .arg(scenario)
            .args(["-s", &number, "-key", "caller", CALLER_ID])
            .args(["-i", "127.0.0.1", "-mi", "127.0.0.1"])
            .args(["-p", &sip_port.to_string()])
            .args(["-mp", &free_udp_port().to_string()])
            .args(["-m", "1", "-nostdin", "-timeout", "40s", "-timeout_error"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sipp starts");
        let pid = child.id();
        let (mut queued, mut dropped) = (0, 0);
        let reader = std::thread::spawn(move || child.wait_with_output());
        while !reader.is_finished() {
            let (q, d) = udp_queues(pid, sip_port);
            queued = queued.max(q);
            dropped = dropped.max(d);
            std::thread::sleep(Duration::from_millis(50));
        }
        SippRun {
            output: reader.join().expect("sipp thread").expect("sipp output"),
            rtp_queued_bytes: queued,
            rtp_dropped: dropped,
        }
    })
    .await
    .expect("sipp thread")
}

/// Bytes queued and datagrams dropped on process `pid`'s UDP sockets other
/// than the one on `sip_port`, from `/proc`.
fn udp_queues(pid: u32, sip_port: u16) -> (u64, u64) {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return (0, 0);
    };
    let inodes: Vec<String> = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let (mut queued, mut dropped) = (0, 0);
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 13 || !inodes.iter().any(|i| i == cols[9]) {
                continue;
            }
            let port = cols[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if port == Some(sip_port) {
                continue;
            }
            let rx = cols[4]
                .split(':')
                .nth(1)
                .and_then(|q| u64::from_str_radix(q, 16).ok())
                .unwrap_or(0);
            queued += rx;
            dropped += cols[12].parse::<u64>().unwrap_or(0);
        }
    }
    (queued, dropped)
}

fn describe(output: &Output) -> String {
    let tail = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    };
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        tail(&output.stdout),
        tail(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_calls_a_number_and_its_inbound_agent_answers_records_and_bills_the_call() {
    if !sipp_installed() {
        skip("sipp_calls_a_number_and_its_inbound_agent_answers_records_and_bills_the_call");
        return;
    }
    for (backend, url) in database_urls().await {
        let t = start(&url, (43_000, 43_099)).await;
        let receiver = Receiver::start().await;
        let (agent, number) = t
            .agent_on_a_new_number(json!({
                "name": "front desk", "type": "inbound",
                "instructions": "Take table bookings.",
                "returns": {"party_size": "integer"},
                "webhook_url": receiver.url("/hooks"),
            }))
            .await;
        let (balance_before, _) = t.balance().await;

        let run = run_sipp(t.node.sip, "uac_caller.xml", &number).await;
        assert_eq!(
            run.output.status.code(),
            Some(0),
            "{backend}: {}",
            describe(&run.output)
        );

        // The call ends at the BYE; extraction follows.
        let call = t
            .newest_inbound_call_when(|call| call["result_status"] != "pending")
            .await;
        assert!(call.is_object(), "{backend}: no finished inbound call");
        assert_eq!(t.inbound_calls().await.len(), 1, "{backend}");
        assert_eq!(call["direction"], "inbound", "{backend}: {call}");
        assert_eq!(call["to_number"], number.as_str(), "{call}");
        assert_eq!(call["from_number"], CALLER_ID, "{call}");
        assert_eq!(call["agent_id"], agent["id"], "{call}");
        assert_eq!(call["status"], "completed", "{call}");
        assert_eq!(call["hangup_cause"], "remote_hangup", "{call}");
        assert_eq!(call["answered_by"], "human", "{call}");
        assert_eq!(call["result_status"], "completed", "{call}");
        assert_eq!(call["result"], json!({"party_size": 4}), "{call}");

        // Billing: the connected seconds (answer to BYE: the ~9.5 s of the
        // scenario) were charged, the hold released.
        let billed = call["billed_duration_seconds"].as_i64().expect("billed");
        assert!((8..=13).contains(&billed), "{backend}: billed {billed} s");
        let charge = t.config.pricing().charge_for(billed);
        assert_eq!(call["billing_amount_milli_cents"], charge, "{call}");
        assert_eq!(call["reservation_status"], "settled", "{call}");
        let (balance_after, held) = t.balance().await;
        assert_eq!((balance_before - balance_after, held), (charge, 0));

        // The transcript: what the caller said as heard, then the agent's
        // answer, spoken (TTS) and not cut off.
        let id = call["id"].as_str().expect("id");
        let (status, transcript) = t
            .call("GET", &format!("/v1/calls/{id}/transcript"), None)
            .await;
        assert_eq!(status, 200, "{transcript}");
        let segments: Vec<(&str, &str, &str)> = transcript["segments"]
            .as_array()
            .expect("segments")
            .iter()
            .map(|s| {
                (
                    s["role"].as_str().unwrap_or_default(),
                    s["text"].as_str().unwrap_or_default(),
                    s["source"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            segments,
            [
                ("user", CALLER_SAYS, "asr"),
                ("agent", AGENT_ANSWERS, "tts")
            ],
            "{backend}: {transcript}"
        );

        // The agent's audio reached SIPp's RTP socket (~100 packets of
        // 172 bytes for the answer; the kernel counts buffer overhead too).
        assert!(
            run.rtp_queued_bytes > 20 * 172 || run.rtp_dropped > 0,
            "{backend}: no RTP came back to SIPp (queued {} bytes, dropped {})",
            run.rtp_queued_bytes,
            run.rtp_dropped
        );

        // The agent's webhook heard the call's progress. Deliveries run
        // concurrently, so ringing and answered (a few ms apart) may arrive
        // in either order; completed comes seconds later, last.
        let hits = receiver
            .wait_for("/hooks", 3, Duration::from_secs(10))
            .await;
        let mut types: Vec<String> = hits
            .iter()
            .map(|h| h.json()["type"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(types.last().map(String::as_str), Some("call.completed"));
        types.sort();
        assert_eq!(
            types,
            ["call.answered", "call.completed", "call.ringing"],
            "{backend}"
        );
        let completed = hits[2].json();
        assert_eq!(completed["data"]["call"]["id"], id, "{completed}");
        assert_eq!(
            completed["data"]["call"]["direction"], "inbound",
            "{completed}"
        );

        println!(
            "{backend}: inbound call {id} completed, billed {billed} s; \
             RTP back to SIPp: {} bytes queued, {} dropped",
            run.rtp_queued_bytes, run.rtp_dropped
        );
        t.node.shutdown(Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_number_gets_404_and_a_number_without_an_agent_gets_480() {
    if !sipp_installed() {
        skip("an_unknown_number_gets_404_and_a_number_without_an_agent_gets_480");
        return;
    }
    for (backend, url) in database_urls().await {
        let t = start(&url, (43_100, 43_199)).await;
        let numbers = t.buy_numbers(1).await;
        let (_, unattached) = &numbers[0];

        // A number nobody bought (the local carrier's range, not this org's).
        let run = run_sipp(t.node.sip, "uac_refused_404.xml", "+14155550199").await;
        assert_eq!(
            run.output.status.code(),
            Some(0),
            "{backend}: unknown number: {}",
            describe(&run.output)
        );
        // A bought number that no inbound agent answers.
        let run = run_sipp(t.node.sip, "uac_refused_480.xml", unattached).await;
        assert_eq!(
            run.output.status.code(),
            Some(0),
            "{backend}: number without an agent: {}",
            describe(&run.output)
        );
        // An outbound agent on it changes nothing: it answers no calls.
        let (status, agent) = t
            .call(
                "POST",
                "/v1/agents",
                Some(json!({
                    "name": "dialer", "type": "outbound", "instructions": "Remind.",
                    "number_ids": [numbers[0].0],
                })),
            )
            .await;
        assert_eq!(status, 201, "{agent}");
        let run = run_sipp(t.node.sip, "uac_refused_480.xml", unattached).await;
        assert_eq!(
            run.output.status.code(),
            Some(0),
            "{backend}: number with an outbound agent: {}",
            describe(&run.output)
        );
        // Refused calls are not recorded, hold nothing and cost nothing.
        assert!(t.inbound_calls().await.is_empty(), "{backend}");
        assert_eq!(t.balance().await.1, 0, "{backend}");
        t.node.shutdown(Duration::from_secs(5)).await;
    }
}

/// A chat model whose service is down.
struct ModelDown;

impl LlmProvider for ModelDown {
    fn stream_chat(&self, _: LlmRequest) -> BoxStream<'static, Result<LlmEvent, ProviderError>> {
        futures::stream::iter([Err(ProviderError::Unavailable(
            "503 Service Unavailable".into(),
        ))])
        .boxed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_is_down_hangs_up_the_call_and_records_a_provider_error() {
    if !sipp_installed() {
        skip("a_model_that_is_down_hangs_up_the_call_and_records_a_provider_error");
        return;
    }
    for (backend, url) in database_urls().await {
        let (mut stack, extractor) = scripted_stack();
        stack.llm = Arc::new(ModelDown);
        let t = start_with(&url, (43_200, 43_299), stack, extractor).await;
        let receiver = Receiver::start().await;
        let (_, number) = t
            .agent_on_a_new_number(json!({
                "name": "front desk", "type": "inbound",
                "instructions": "Take table bookings.",
                "webhook_url": receiver.url("/hooks"),
            }))
            .await;

        // The caller speaks; the model fails on its turn; the node must
        // hang up (the scenario fails unless a BYE comes within 20 s).
        let run = run_sipp(t.node.sip, "uac_caller_hung_up_on.xml", &number).await;
        assert_eq!(
            run.output.status.code(),
            Some(0),
            "{backend}: the node did not hang up: {}",
            describe(&run.output)
        );
        let call = t
            .newest_inbound_call_when(|call| call["status"] == "failed")
            .await;
        assert!(call.is_object(), "{backend}: {:?}", t.inbound_calls().await);
        assert_eq!(call["error_code"], "provider_error", "{call}");
        let message = call["error_message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("the language model failed") && message.contains("503"),
            "{backend}: {message}"
        );
        // A call our provider broke is not charged.
        assert_eq!(call["reservation_status"], "released", "{call}");
        assert_eq!(call["billing_amount_milli_cents"], 0, "{call}");
        assert_eq!(call["hangup_cause"], "local_hangup", "{call}");
        let hits = receiver
            .wait_for("/hooks", 3, Duration::from_secs(10))
            .await;
        let last = hits.last().map(|h| h.json()["type"].clone());
        assert_eq!(last, Some(json!("call.failed")), "{backend}");
        t.node.shutdown(Duration::from_secs(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_transfers_an_inbound_call_and_the_call_ends_transferred() {
    if !sipp_installed() {
        skip("the_agent_transfers_an_inbound_call_and_the_call_ends_transferred");
        return;
    }
    for (backend, url) in database_urls().await {
        // The caller asks for a table; the agent's model transfers the call.
        let rules = vec![
            ScriptRule::when(ScriptMatch::UserContains("table".into()))
                .call("transfer_call", json!({})),
            ScriptRule::when(ScriptMatch::Always).reply("Okay."),
        ];
        let (stack, extractor) =
            scripted_stack_with_rules(CALLER_SAYS, rules, json!({"party_size": 4}));
        let t = start_with(&url, (43_400, 43_499), stack, extractor).await;
        let (agent, number) = t
            .agent_on_a_new_number(json!({
                "name": "switchboard", "type": "inbound",
                "instructions": "Put callers through to the restaurant.",
                "tools": [{"type": "builtin", "name": "transfer_call",
                           "config": {"to": "+14155550100"}}],
            }))
            .await;

        // SIPp checks the REFER's Refer-To, accepts it, reports the
        // target's 200 in a NOTIFY and expects our BYE.
        let run = run_sipp(t.node.sip, "uac_transferred.xml", &number).await;
        assert_eq!(
            run.output.status.code(),
            Some(0),
            "{backend}: {}",
            describe(&run.output)
        );
        let call = t
            .newest_inbound_call_when(|call| call["status"] == "completed")
            .await;
        assert_eq!(call["status"], "completed", "{backend}: {call}");
        assert_eq!(call["hangup_cause"], "transferred", "{backend}: {call}");
        assert_eq!(call["agent_id"], agent["id"], "{call}");
        assert!(
            call["billed_duration_seconds"].as_i64() > Some(0),
            "{backend}: the connected time until the transfer is billed: {call}"
        );
        t.node.shutdown(Duration::from_secs(5)).await;
    }
}
