//! `callingbox demo`: the whole system in one process on embedded defaults
//! (SQLite, the local carrier, local speech providers). It creates an agent
//! with a `returns` schema and an HTTP tool, dials a simulated callee on the
//! local carrier (a second engine answering with recorded fixture
//! utterances), prints the transcript live, then the call's final JSON.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use axum::Json;
use axum::routing::post;
use callingbox::clock::{Clock, MonotonicClock};
use callingbox::config::Config;
use callingbox::store::{keys, orgs};
use callingbox_engine::events::TurnMetrics;
use callingbox_engine::session::MediaWorker;
use callingbox_engine::transport::sip::{SipConfig, SipServer};
use callingbox_engine::transport::spawn_worker_thread;
use callingbox_engine::vad::VadBatch;
use serde_json::{Value, json};

use super::callee::{FixtureVoice, SimulatedCallee};
use super::serve::start_node;

/// The simulated callee's number on the local carrier.
const CALLEE: &str = "+14155550142";
/// What the callee says: on pick-up, then once per agent turn.
const CALLEE_LINES: [&str; 3] = [
    "Hello, this is Sam speaking.",
    "I need to reschedule my delivery to next Monday morning.",
    "Yes.",
];

/// Demo options.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The recorded fixtures (manifest.json and WAVs).
    pub fixtures: PathBuf,
    /// Give up after this long.
    pub timeout: Duration,
}

/// A tool the agent can call: delivery slots, served on loopback.
async fn tool_server() -> Result<SocketAddr> {
    async fn slots(Json(args): Json<Value>) -> Json<Value> {
        let day = args["day"].as_str().unwrap_or("Monday").to_owned();
        let answer = json!({"day": day, "slots": ["9:00 to 11:00", "11:00 to 13:00"]});
        // The model's tool call, as the tool's server received it over HTTP.
        println!("tool  : check_delivery_slots {args} -> {answer}");
        Json(answer)
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, axum::Router::new().route("/slots", post(slots))).await;
    });
    Ok(addr)
}

/// Runs the demo.
pub async fn run(options: DemoOptions) -> Result<()> {
    let started = Instant::now();
    let data = std::env::temp_dir().join(format!("callingbox-demo-{}", std::process::id()));
    std::fs::create_dir_all(&data)?;
    let config = Config {
        listen: "127.0.0.1:0".parse()?,
        database_url: format!("sqlite://{}/demo.db", data.display()),
        node_id: "demo".into(),
        max_call_seconds: 180,
        sip: callingbox::config::SipSettings {
            listen: "127.0.0.1:0".parse()?,
            rtp_ports: (41_000, 41_999),
        },
        allow_private_webhooks: true,
        ..Config::default()
    };
    eprintln!("==> starting the local speech providers (Whisper ASR, Piper TTS, Gemma LLM)...");
    let (stack, extractor) = callingbox::dispatch::speech::from_env("en")
        .await
        .map_err(|err| anyhow::anyhow!("the speech providers could not start: {err}"))?;
    let node = start_node(&config, stack, extractor).await?;
    eprintln!(
        "==> CallingBox API on http://{}, SIP on udp {}",
        node.api, node.sip
    );

    // The callee: a second engine on the local carrier.
    let voice = FixtureVoice::load(&options.fixtures)?;
    let callee = SimulatedCallee::new(voice, &CALLEE_LINES)?;
    let callee_dialer = callee.dialer_slot();
    let (worker, _thread) = spawn_worker_thread(
        MediaWorker::new(VadBatch::load_or_fallback(4), None),
        "callee-media",
    )?;
    let mut callee_config = SipConfig::new("127.0.0.1:0".parse()?);
    callee_config.rtp_ports = 42_000..=42_199;
    callee_config.numbers = vec![CALLEE.into()];
    let callee_sip = SipServer::bind(callee_config, worker, callee).await?;
    let _ = callee_dialer.set(callee_sip.dialer());
    node.carrier
        .assign(CALLEE, callee_sip.local_addr())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!(
        "==> simulated callee {CALLEE} answers on udp {}",
        callee_sip.local_addr()
    );
    tokio::spawn(callee_sip.run());
    let tools = tool_server().await?;

    // An organization and its key (what `callingbox keys create` does).
    let now = MonotonicClock::default().now();
    let mut tx = node.store.begin().await?;
    let org = orgs::create(&mut tx, "demo", config.starting_credit_milli_cents, now).await?;
    let (_, key) = keys::create(&mut tx, &org.id, "demo", None, now).await?;
    tx.commit().await?;

    let api = Api {
        http: reqwest::Client::new(),
        base: format!("http://{}", node.api),
        key,
    };
    let offers = api
        .send("GET", "/v1/numbers/available?area_code=415&limit=1", None)
        .await?;
    let number = offers[0]["phone_number"]
        .as_str()
        .context("no number offered")?
        .to_owned();
    let bought = api
        .send(
            "POST",
            "/v1/numbers/purchase",
            Some(json!({"phone_number": number})),
        )
        .await?;
    let agent = api
        .send("POST", "/v1/agents", Some(json!({
            "name": "Delivery scheduling",
            "type": "outbound",
            "persona": "You are Riley from Acme Deliveries. You are brief and polite.",
            "instructions": "You call the customer about order 1042, due Friday. Ask if Friday works. If they want another day, call check_delivery_slots for that day, offer the first slot and ask them to confirm. When they confirm, thank them and call end_call.",
            "returns": {"confirmed": "boolean", "new_delivery_day": "string", "new_delivery_slot": "string"},
            "tools": [
                {"type": "http", "name": "check_delivery_slots", "description": "Free delivery slots on a day",
                 "url": format!("http://{tools}/slots"),
                 "parameters": {"type": "object", "properties": {"day": {"type": "string", "description": "Day of the week"}},
                                "required": ["day"], "additionalProperties": false}},
                {"type": "builtin", "name": "end_call", "description": "Hang up after saying goodbye",
                 "parameters": {"type": "object", "properties": {}, "required": [], "additionalProperties": false}}
            ],
            "number_ids": [bought["id"]],
        })))
        .await?;
    eprintln!(
        "==> agent {} created; dialing {CALLEE} from {number}",
        agent["id"].as_str().unwrap_or("?")
    );
    let call = api
        .send("POST", "/v1/calls", Some(json!({"agent_id": agent["id"], "to": CALLEE, "context": {"customer": "Sam", "order": 1042}})))
        .await?;
    let id = call["id"].as_str().context("no call id")?.to_owned();

    let mut printed = 0usize;
    let mut status = String::new();
    let final_call = loop {
        if started.elapsed() > options.timeout {
            bail!(
                "the demo call did not finish within {} s (status {status})",
                options.timeout.as_secs()
            );
        }
        let call = api.send("GET", &format!("/v1/calls/{id}"), None).await?;
        let now_status = call["status"].as_str().unwrap_or("").to_owned();
        if now_status != status {
            eprintln!(
                "     [{:>5.1}s] status: {now_status}",
                started.elapsed().as_secs_f32()
            );
            status = now_status;
        }
        let transcript = api
            .send("GET", &format!("/v1/calls/{id}/transcript"), None)
            .await?;
        for segment in transcript["segments"]
            .as_array()
            .into_iter()
            .flatten()
            .skip(printed)
        {
            let who = if segment["role"] == "agent" {
                "agent "
            } else {
                "caller"
            };
            println!("{who}: {}", segment["text"].as_str().unwrap_or(""));
            printed += 1;
        }
        let terminal =
            ["completed", "no_answer", "busy", "canceled", "failed"].contains(&status.as_str());
        let extracted = call["result_status"] != "pending" || status != "completed";
        if terminal && extracted {
            break call;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("{}", serde_json::to_string_pretty(&final_call)?);
    // The agent's side of the call (the callee's engine is another node's).
    eprintln!("{}", latency_summary(&node.metrics.recent_turns()));
    node.shutdown(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(&data);
    if final_call["status"] != "completed" {
        bail!(
            "the demo call ended {}: {}",
            final_call["status"],
            final_call["error_message"]
        );
    }
    Ok(())
}

/// One line of the turns' latencies: p50 and max per stage, in ms.
fn latency_summary(turns: &[TurnMetrics]) -> String {
    let stage = |name: &str, pick: fn(&TurnMetrics) -> Option<Duration>| {
        let mut ms: Vec<u128> = turns
            .iter()
            .filter_map(pick)
            .map(|d| d.as_millis())
            .collect();
        ms.sort_unstable();
        match (ms.get(ms.len() / 2), ms.last()) {
            (Some(p50), Some(max)) => format!("{name} p50 {p50} max {max}"),
            _ => format!("{name} -"),
        }
    };
    format!(
        "==> turn latency, ms, over {} agent turns: {}; {}; {}; {}; {}",
        turns.len(),
        stage("voice_to_voice", |t| t.voice_to_voice),
        stage("endpointing", |t| t.end_of_utterance_delay),
        stage("transcription", |t| t.transcription_delay),
        stage("llm_first_token", |t| t.llm_ttft),
        stage("tts_first_byte", |t| t.tts_ttfb),
    )
}

struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("{method} {path}: not JSON"))?;
        if !status.is_success() {
            bail!("{method} {path} answered {status}: {}", body["error"]);
        }
        Ok(body)
    }
}
