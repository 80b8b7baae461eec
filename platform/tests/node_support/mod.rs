//! A node as `callingbox serve` starts it, on loopback, with scripted
//! speech providers, and a small API client for it: shared by the tests
//! that drive the real node (SIP, media streams, WebRTC).

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use callingbox::clock::{Clock, MonotonicClock};
use callingbox::config::{Config, SipSettings};
use callingbox::dispatch::engine::SpeechStack;
use callingbox::dispatch::extraction::{Extractor, ModelExtractor};
use callingbox::dispatch::speech::StructuredModel;
use callingbox::node::{Node, start_node};
use callingbox::store::{keys, orgs};
use callingbox_engine::codecs::SampleRate;
use callingbox_engine::providers::scripted::{
    LlmLatency, ScriptMatch, ScriptRule, ScriptedAsr, ScriptedLlm, ScriptedTts, TtsLatency,
};
use serde_json::{Value, json};

/// What the caller's recording says (`statement_book_table`), as the
/// scripted recognizer hears it.
pub const CALLER_SAYS: &str =
    "I'd like to book a table for four people tomorrow at seven in the evening.";
pub const AGENT_ANSWERS: &str = "Of course, a table for four tomorrow at seven. See you then!";

/// Scripted providers: the recognizer hears [`CALLER_SAYS`] when the
/// caller's audio is speech, the LLM answers [`AGENT_ANSWERS`], the voice
/// is a tone; extraction answers `{"party_size": 4}`.
pub fn scripted_stack() -> (SpeechStack, Arc<dyn Extractor>) {
    scripted_stack_with(CALLER_SAYS, AGENT_ANSWERS, json!({"party_size": 4}))
}

/// Scripted providers: the recognizer hears `hears` in the caller's
/// speech, the LLM answers its first turn with `answers` (then "Okay."),
/// the voice is a tone; extraction answers `extracted`.
pub fn scripted_stack_with(
    hears: &str,
    answers: &str,
    extracted: Value,
) -> (SpeechStack, Arc<dyn Extractor>) {
    let rules = vec![
        ScriptRule::when(ScriptMatch::Turn(0)).reply(answers),
        ScriptRule::when(ScriptMatch::Always).reply("Okay."),
    ];
    scripted_stack_with_rules(hears, rules, extracted)
}

/// As [`scripted_stack_with`], the LLM following `rules` (tool calls too).
pub fn scripted_stack_with_rules(
    hears: &str,
    rules: Vec<ScriptRule>,
    extracted: Value,
) -> (SpeechStack, Arc<dyn Extractor>) {
    let llm = ScriptedLlm::new(
        rules,
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
        vec![hears.to_owned()],
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
    let json_model = ScriptedLlm::new(Vec::new(), LlmLatency::default()).with_json_reply(extracted);
    let extractor: Arc<dyn Extractor> =
        Arc::new(ModelExtractor::new(StructuredModel(Arc::new(json_model))));
    (stack, extractor)
}

/// A node as `serve` starts it (loopback API and SIP on free ports) and
/// an API key of a fresh organization with $100.
pub struct TestNode {
    pub node: Node,
    pub base: String,
    pub key: String,
    pub org_id: String,
    pub config: Config,
    pub http: reqwest::Client,
}

pub async fn start(url: &str, rtp_ports: (u16, u16)) -> TestNode {
    let (stack, extractor) = scripted_stack();
    start_with(url, rtp_ports, stack, extractor).await
}

pub async fn start_with(
    url: &str,
    rtp_ports: (u16, u16),
    stack: SpeechStack,
    extractor: Arc<dyn Extractor>,
) -> TestNode {
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        database_url: url.to_owned(),
        node_id: "inbound-test".into(),
        sip: SipSettings {
            listen: "127.0.0.1:0".parse().expect("addr"),
            rtp_ports,
        },
        allow_private_webhooks: true,
        ..Config::default()
    };
    let node = start_node(&config, stack, extractor)
        .await
        .expect("the node starts");
    let now = MonotonicClock::default().now();
    let mut tx = node.store.begin().await.expect("tx");
    let org = orgs::create(&mut tx, "inbound test", 10_000_000, now)
        .await
        .expect("org");
    let (_, key) = keys::create(&mut tx, &org.id, "test", None, now)
        .await
        .expect("key");
    tx.commit().await.expect("commit");
    TestNode {
        base: format!("http://{}", node.api),
        node,
        key,
        org_id: org.id,
        config,
        http: reqwest::Client::new(),
    }
}

impl TestNode {
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key);
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

    /// Buys `count` local numbers; returns (id, E.164) of each.
    pub async fn buy_numbers(&self, count: usize) -> Vec<(String, String)> {
        let (status, found) = self
            .call(
                "GET",
                &format!("/v1/numbers/available?area_code=415&limit={count}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{found}");
        let mut bought = Vec::new();
        for offer in found.as_array().expect("offers") {
            let e164 = offer["phone_number"].as_str().expect("number").to_owned();
            let (status, number) = self
                .call(
                    "POST",
                    "/v1/numbers/purchase",
                    Some(json!({"phone_number": e164})),
                )
                .await;
            assert_eq!(status, 201, "{number}");
            bought.push((number["id"].as_str().expect("id").to_owned(), e164));
        }
        bought
    }

    /// Buys a number and creates the agent `fields` describe answering
    /// it (`number_ids` added); returns the agent and the number (E.164).
    pub async fn agent_on_a_new_number(&self, mut fields: Value) -> (Value, String) {
        let (number_id, number) = self.buy_numbers(1).await.remove(0);
        fields["number_ids"] = json!([number_id]);
        let (status, agent) = self.call("POST", "/v1/agents", Some(fields)).await;
        assert_eq!(status, 201, "{agent}");
        (agent, number)
    }

    /// Polls `GET /v1/calls/{id}` until `done` holds of the call or
    /// `timeout` passes; returns the call last read.
    pub async fn call_until(
        &self,
        id: &str,
        timeout: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (_, call) = self.call("GET", &format!("/v1/calls/{id}"), None).await;
            if done(&call) || tokio::time::Instant::now() > deadline {
                return call;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls the inbound calls until the newest one satisfies `done`
    /// (10 s at most); returns it, or `Value::Null` if none did.
    pub async fn newest_inbound_call_when(&self, done: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..200 {
            if let Some(found) = self.inbound_calls().await.first()
                && done(found)
            {
                return found.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Value::Null
    }

    pub async fn inbound_calls(&self) -> Vec<Value> {
        let (status, list) = self.call("GET", "/v1/calls?direction=inbound", None).await;
        assert_eq!(status, 200, "{list}");
        list["data"].as_array().expect("data").clone()
    }

    pub async fn balance(&self) -> (i64, i64) {
        let mut conn = self.node.store.pool().acquire().await.expect("conn");
        let org = orgs::get(&mut conn, &self.org_id)
            .await
            .expect("reads")
            .expect("org");
        (org.balance_milli_cents, org.held_milli_cents)
    }
}
