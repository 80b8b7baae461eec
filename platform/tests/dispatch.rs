//! The control plane's side of the engine seam: a call plan goes out, line
//! events come back, and the call's lifecycle, transcript, billing and
//! result are recorded. The line here is scripted (the engine's SIP side is
//! tested against real SIP peers in the engine's tests).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use callingbox::billing::Pricing;
use callingbox::dispatch::extraction::Extractor;
use callingbox::dispatch::{CallLauncher, CallPlan, Dispatcher, LineEnd, LineEvent, Telephony};
use callingbox::store::transcripts::Segment;
use callingbox_engine::events::{CallEvent, Role, SegmentSource};
use common::{TestServer, database_urls};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How the scripted far end behaves.
#[derive(Debug, Clone)]
enum Script {
    /// Rings, answers, the caller says `user`, talks `talk` long, hangs up.
    Answers { user: &'static str, talk: Duration },
    /// Rings, then busy.
    Busy,
    /// Rings until canceled.
    RingsForever,
}

struct ScriptedLine {
    script: Script,
    plans: Mutex<Vec<CallPlan>>,
}

impl Telephony for ScriptedLine {
    fn place(
        &self,
        plan: CallPlan,
        events: mpsc::UnboundedSender<LineEvent>,
        cancel: CancellationToken,
    ) {
        self.plans.lock().expect("lock").push(plan);
        let script = self.script.clone();
        tokio::spawn(async move {
            let _ = events.send(LineEvent::Ringing);
            let end = |status: &str, cause: &str| LineEnd {
                status: status.into(),
                answered_by: None,
                hangup_cause: Some(cause.into()),
                error_code: None,
                error_message: None,
            };
            match script {
                Script::Busy => {
                    let _ = events.send(LineEvent::Ended(end("busy", "sip:486")));
                }
                Script::RingsForever => {
                    cancel.cancelled().await;
                    let _ = events.send(LineEvent::Ended(end("canceled", "sip:487")));
                }
                Script::Answers { user, talk } => {
                    let _ = events.send(LineEvent::Answered {
                        answered_by: Some("human".into()),
                    });
                    let segment = |role, text: &str, at: u64| {
                        LineEvent::Engine(CallEvent::TranscriptSegment {
                            role,
                            text: text.into(),
                            started_at_ms: at,
                            ended_at_ms: at + 900,
                            duration_ms: 900,
                            source: if role == Role::Agent {
                                SegmentSource::Tts
                            } else {
                                SegmentSource::Asr
                            },
                            interrupted: false,
                        })
                    };
                    let _ =
                        events.send(segment(Role::Agent, "Hi, can you come tomorrow at ten?", 0));
                    let _ = events.send(segment(Role::User, user, 1_500));
                    tokio::time::sleep(talk).await;
                    let _ = events.send(LineEvent::Ended(end("completed", "remote_bye")));
                }
            }
        });
    }
}

struct KeywordExtractor;

impl Extractor for KeywordExtractor {
    fn extract<'a>(
        &'a self,
        _returns: &'a Value,
        transcript: &'a [Segment],
    ) -> BoxFuture<'a, Result<Value, String>> {
        let said: String = transcript
            .iter()
            .filter(|s| s.role == "user")
            .map(|s| s.text.clone())
            .collect();
        Box::pin(async move { Ok(json!({"confirmed": said.contains("yes")})) })
    }
}

async fn server(
    backend: &'static str,
    url: &str,
    script: Script,
) -> (TestServer, Arc<ScriptedLine>, Arc<Dispatcher>) {
    let line = Arc::new(ScriptedLine {
        script,
        plans: Mutex::new(Vec::new()),
    });
    let dispatcher_slot: Arc<Mutex<Option<Arc<Dispatcher>>>> = Arc::default();
    let slot = Arc::clone(&dispatcher_slot);
    let telephony: Arc<dyn Telephony> = line.clone();
    let pricing = Pricing {
        starting_credit_milli_cents: 10_000_000,
        ..Pricing::default()
    };
    let s = TestServer::start_full(backend, url, pricing, move |store, clock| {
        let dispatcher = Dispatcher::new(
            store,
            clock,
            pricing,
            telephony,
            Arc::new(KeywordExtractor),
            Arc::default(),
        );
        *slot.lock().expect("lock") = Some(Arc::clone(&dispatcher));
        Arc::new(dispatcher) as Arc<dyn CallLauncher>
    })
    .await;
    let dispatcher = dispatcher_slot
        .lock()
        .expect("lock")
        .clone()
        .expect("built");
    (s, line, dispatcher)
}

async fn dispatch(s: &TestServer) -> String {
    let numbers = s.buy_numbers("415", 1).await;
    let (_, agent) = s
        .call(
            "POST",
            "/v1/agents",
            Some(json!({
                "name": "reminders", "type": "outbound", "instructions": "Confirm the visit.",
                "returns": {"confirmed": "boolean"}, "number_ids": [numbers[0].0]
            })),
        )
        .await;
    let (status, call) = s
        .call(
            "POST",
            "/v1/calls",
            Some(
                json!({"agent_id": agent["id"], "to": "+14155550150", "context": {"name": "Ana"}}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{call}");
    call["id"].as_str().expect("id").to_owned()
}

async fn wait_for(s: &TestServer, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..200 {
        let (_, call) = s.call("GET", &format!("/v1/calls/{id}"), None).await;
        if done(&call) {
            return call;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("call {id} never reached the expected state");
}

#[tokio::test]
async fn an_answered_call_is_recorded_billed_and_extracted() {
    for (backend, url) in database_urls().await {
        let (s, line, _) = server(
            backend,
            &url,
            Script::Answers {
                user: "yes I'll be there",
                talk: Duration::from_millis(1_100),
            },
        )
        .await;
        let id = dispatch(&s).await;
        let call = wait_for(&s, &id, |c| c["result_status"] == "completed").await;
        assert_eq!(call["status"], "completed", "{backend}");
        assert_eq!(call["answered_by"], "human");
        assert_eq!(call["result"], json!({"confirmed": true}));
        assert_eq!(call["hangup_cause"], "remote_bye");
        assert!(
            call["started_at"].is_string()
                && call["answered_at"].is_string()
                && call["ended_at"].is_string()
        );
        assert_eq!(call["reservation_status"], "settled");
        let billed = call["billed_duration_seconds"].as_i64().expect("billed");
        assert!((1..=2).contains(&billed), "{billed}");
        assert_eq!(
            call["billing_amount_milli_cents"],
            s.pricing.charge_for(billed)
        );
        let (_, transcript) = s
            .call("GET", &format!("/v1/calls/{id}/transcript"), None)
            .await;
        let segments = transcript["segments"].as_array().expect("segments");
        assert_eq!(segments.len(), 2);
        assert_eq!(
            (
                segments[0]["role"].as_str(),
                segments[0]["sequence_no"].as_i64()
            ),
            (Some("agent"), Some(0))
        );
        assert_eq!(
            (segments[1]["role"].as_str(), segments[1]["source"].as_str()),
            (Some("user"), Some("asr"))
        );
        let plan = line.plans.lock().expect("lock")[0].clone();
        assert_eq!(plan.to_number, "+14155550150");
        assert!(
            plan.system_prompt.contains("Confirm the visit.")
                && plan.system_prompt.contains("\"Ana\"")
        );
        // The hold came back: only the connected time was charged.
        let org = callingbox::store::orgs::get(
            &mut s.store.pool().acquire().await.expect("conn"),
            &s.org_id,
        )
        .await
        .expect("org")
        .expect("exists");
        assert_eq!(org.held_milli_cents, 0);
        assert_eq!(
            org.balance_milli_cents,
            s.pricing.starting_credit_milli_cents - 100_000 - s.pricing.charge_for(billed)
        );
    }
}

#[tokio::test]
async fn a_busy_line_releases_the_hold_and_extracts_nothing() {
    for (backend, url) in database_urls().await {
        let (s, _, _) = server(backend, &url, Script::Busy).await;
        let id = dispatch(&s).await;
        let call = wait_for(&s, &id, |c| c["status"] == "busy").await;
        assert_eq!(call["reservation_status"], "released", "{backend}");
        assert_eq!(call["billing_amount_milli_cents"], 0);
        assert_eq!(
            call["result_status"], "pending",
            "no extraction without a conversation"
        );
        assert!(call["result"].is_null());
        assert_eq!(call["hangup_cause"], "sip:486");
    }
}

#[tokio::test]
async fn a_ringing_call_can_be_canceled() {
    for (backend, url) in database_urls().await {
        let (s, _, dispatcher) = server(backend, &url, Script::RingsForever).await;
        let id = dispatch(&s).await;
        wait_for(&s, &id, |c| c["status"] == "ringing").await;
        let (status, _) = s
            .call("POST", &format!("/v1/calls/{id}/cancel"), None)
            .await;
        assert_eq!(status, 200);
        let call = wait_for(&s, &id, |c| c["status"] == "canceled").await;
        assert_eq!(call["reservation_status"], "released", "{backend}");
        assert_eq!(
            dispatcher.drain(Duration::from_secs(5)).await,
            0,
            "nothing left running"
        );
    }
}

#[tokio::test]
async fn a_restarted_node_fails_its_orphaned_calls() {
    use callingbox::clock::{Clock, MonotonicClock};
    for (backend, url) in database_urls().await {
        let (s, _, _) = server(backend, &url, Script::RingsForever).await;
        let id = dispatch(&s).await;
        wait_for(&s, &id, |c| c["status"] == "ringing").await;
        // The node "restarts": its startup recovery runs on the same store.
        let failed = callingbox::lifecycle::fail_orphans(
            &s.store,
            &s.pricing,
            "test-node",
            MonotonicClock::default().now(),
        )
        .await
        .expect("recovers");
        assert_eq!(failed, 1);
        let (_, call) = s.call("GET", &format!("/v1/calls/{id}"), None).await;
        assert_eq!(call["status"], "failed", "{backend}");
        assert_eq!(call["error_code"], "node_restarted");
        assert_eq!(call["reservation_status"], "released");
    }
}
