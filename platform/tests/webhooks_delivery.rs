//! The delivery worker against real receivers on loopback, on SQLite and
//! (when available) PostgreSQL: signatures (checked by the published
//! Python SDK too), failures recorded with a clear error, the retry
//! schedule on virtual time, exhaustion and auto-disable, redelivery, the
//! per-endpoint concurrency limit, and the wake on new events.

mod common;
mod webhooks_support;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use callingbox::clock::{Clock, ManualClock, MonotonicClock, SharedClock, Timestamp};
use callingbox::store::{Store, calls};
use callingbox::webhooks::deliveries::{self, WebhookDelivery};
use callingbox::webhooks::endpoints::{self, EndpointFields, WebhookEndpoint};
use callingbox::webhooks::schedule::{MAX_ATTEMPTS, RETRY_DELAYS_SECONDS};
use callingbox::webhooks::signature::{self, DEFAULT_TOLERANCE_SECONDS};
use callingbox::webhooks::worker::{self, Dispatcher, WorkerSettings};
use common::database_urls;
use webhooks_support::{
    Receiver, default_secret, org, queued_call, queued_call_holding, resetting_receiver,
};

async fn stores() -> Vec<(&'static str, Store)> {
    let mut stores = Vec::new();
    for (backend, url) in database_urls().await {
        stores.push((backend, Store::open(&url).await.expect("opens")));
    }
    stores
}

async fn endpoint(store: &Store, org_id: &str, url: &str, now: Timestamp) -> WebhookEndpoint {
    let mut tx = store.begin().await.expect("tx");
    let endpoint = endpoints::insert(
        &mut tx,
        org_id,
        &EndpointFields {
            url: url.to_owned(),
            description: None,
            enabled_events: vec!["*".into()],
        },
        now,
    )
    .await
    .expect("endpoint");
    tx.commit().await.expect("commit");
    endpoint
}

async fn get_endpoint(store: &Store, org_id: &str, id: &str) -> WebhookEndpoint {
    let mut conn = store.pool().acquire().await.expect("conn");
    endpoints::get(&mut conn, org_id, id)
        .await
        .expect("reads")
        .expect("exists")
}

async fn delivery(store: &Store, org_id: &str, id: &str) -> WebhookDelivery {
    let mut conn = store.pool().acquire().await.expect("conn");
    deliveries::get(&mut conn, org_id, id)
        .await
        .expect("reads")
        .expect("exists")
}

async fn all_deliveries(store: &Store, org_id: &str) -> Vec<WebhookDelivery> {
    deliveries::list(
        store,
        org_id,
        &Default::default(),
        &callingbox::store::Cursor::Start,
        200,
    )
    .await
    .expect("lists")
    .items
}

fn settings(allow_private: bool) -> WorkerSettings {
    let mut settings = WorkerSettings::new("test-node", allow_private);
    settings.timeout = Duration::from_millis(800);
    settings
}

/// Runs `python3` with the published SDK's `construct_event`; returns its
/// output (the event id) or the SDK's error.
fn python_construct_event(body: &[u8], header: &str, secret: &str) -> Result<String, String> {
    let dir = std::env::temp_dir().join(format!("cb-webhook-{}", callingbox::store::new_id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("body.json");
    std::fs::write(&path, body).expect("writes");
    let script = "import sys\n\
        from callingbox import Callingbox\n\
        payload = open(sys.argv[1], 'rb').read()\n\
        event = Callingbox(api_key='x').webhooks.construct_event(payload, sys.argv[2], sys.argv[3])\n\
        print(event.id, event.type, event.api_version, event.data['call']['id'])\n";
    let output = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .arg(header)
        .arg(secret)
        .output()
        .expect("python3 runs");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "the Python SDK is missing: pip install callingbox==0.1.0 ({stderr})"
    );
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(stderr)
    }
}

#[tokio::test]
async fn deliveries_are_signed_with_the_headers_and_verified_by_the_python_sdk() {
    let receiver = Receiver::start().await;
    for (backend, store) in stores().await {
        let clock = Arc::new(MonotonicClock::default());
        let now = clock.now();
        let org_id = org(&store, now).await;
        let endpoint = endpoint(
            &store,
            &org_id,
            &receiver.url(&format!("/{backend}/ep")),
            now,
        )
        .await;
        let endpoint_secret = endpoint.signing_secret.clone().expect("shown on create");
        let inline_path = format!("/{backend}/inline");
        let call = queued_call(&store, &org_id, Some(&receiver.url(&inline_path)), now).await;
        let handle = worker::spawn(store.clone(), clock.clone(), settings(true))
            .await
            .expect("spawns");
        let at_endpoint = receiver
            .wait_for(&format!("/{backend}/ep"), 1, Duration::from_secs(10))
            .await;
        let inline = receiver
            .wait_for(&inline_path, 1, Duration::from_secs(10))
            .await;
        let org_secret = default_secret(&store, &org_id).await;
        for (hit, secret) in [
            (&at_endpoint[0], &endpoint_secret),
            (&inline[0], &org_secret),
        ] {
            let body = hit.json();
            assert_eq!(hit.header("content-type"), "application/json");
            assert_eq!(
                hit.header("callingbox-event-id"),
                body["id"].as_str().expect("id")
            );
            assert_eq!(hit.header("callingbox-event-type"), "call.queued");
            assert_eq!(hit.header("x-callingbox-event"), "call.queued");
            assert_eq!(hit.header("x-callingbox-call-id"), call.id);
            assert_eq!(body["type"], "call.queued");
            assert_eq!(body["api_version"], "2026-04");
            assert_eq!(body["data"]["call"]["id"], call.id.as_str());
            let header = hit.header("callingbox-signature");
            let unix = clock.now().unix_seconds();
            signature::verify(secret, header, &hit.body, unix, DEFAULT_TOLERANCE_SECONDS)
                .unwrap_or_else(|e| panic!("{backend}: {e}: {header}"));
            // The other secret does not verify it.
            let wrong = if secret == &org_secret {
                &endpoint_secret
            } else {
                &org_secret
            };
            assert!(signature::verify(wrong, header, &hit.body, unix, 300).is_err());

            // The published SDK agrees, and refuses a tampered body.
            let seen = python_construct_event(&hit.body, header, secret).expect("the SDK verifies");
            assert_eq!(
                seen,
                format!(
                    "{} call.queued 2026-04 {}",
                    body["id"].as_str().expect("id"),
                    call.id
                )
            );
            let mut tampered = hit.body.to_vec();
            tampered.extend_from_slice(b" ");
            let refused = python_construct_event(&tampered, header, secret).expect_err("refused");
            assert!(refused.contains("signature mismatch"), "{refused}");
        }
        handle.shutdown().await;

        // Recorded: delivered once, the attempt kept, the call's inline status.
        let all = all_deliveries(&store, &org_id).await;
        assert_eq!(all.len(), 2);
        for d in &all {
            assert_eq!(d.status, "delivered", "{backend}: {d:?}");
            assert_eq!(d.attempt_count, 1);
            assert_eq!(d.last_response_status, Some(200));
            assert!(d.delivered_at.is_some());
            assert!(d.last_error.is_none());
            let attempts = deliveries::attempts(&store, &d.id).await.expect("attempts");
            assert_eq!(attempts.len(), 1);
            assert_eq!(attempts[0].response_status, Some(200));
            assert_eq!(attempts[0].response_excerpt.as_deref(), Some("ok"));
            assert!(!attempts[0].manual);
        }
        let mut conn = store.pool().acquire().await.expect("conn");
        let call = calls::get(&mut conn, &org_id, &call.id)
            .await
            .expect("reads")
            .expect("call");
        assert_eq!(call.webhook_status, "delivered");
        assert!(call.webhook_error.is_none());
        let endpoint = get_endpoint(&store, &org_id, &endpoint.id).await;
        assert_eq!(endpoint.consecutive_failures, 0);
    }
}

#[tokio::test]
async fn failing_receivers_are_recorded_as_failed_attempts_with_a_clear_error() {
    let receiver = Receiver::start().await;
    receiver.set_slow_ms(3000);
    let reset = resetting_receiver().await;
    for (backend, store) in stores().await {
        let clock = ManualClock::new(Timestamp(1_800_000_000_000_000));
        let shared: SharedClock = Arc::new(clock.clone());
        let now = clock.now();
        let org_id = org(&store, now).await;
        let cases = [
            (
                receiver.url("/fail"),
                "HTTP 500 Internal Server Error",
                Some(500),
            ),
            (
                receiver.url("/redirect"),
                "HTTP 302 Found: redirects are not followed (Location: /ok)",
                Some(302),
            ),
            (
                receiver.url("/slow"),
                "timeout: no complete answer within 800 ms",
                None,
            ),
            (
                reset.clone(),
                "request failed: Connection reset by peer|request failed: connection closed",
                None,
            ),
            // Nothing listens on port 9 (discard).
            ("http://127.0.0.1:9/x".to_owned(), "connection failed", None),
        ];
        let mut ids = Vec::new();
        for (url, _, _) in &cases {
            let e = endpoint(&store, &org_id, url, now).await;
            ids.push(e.id);
        }
        queued_call(&store, &org_id, None, now).await;
        let dispatcher =
            Dispatcher::new(store.clone(), shared.clone(), settings(true)).expect("dispatcher");
        let made = dispatcher.deliver_due().await.expect("delivers");
        assert_eq!(made, cases.len(), "{backend}");
        // Prometheus sees the failed attempts and the deliveries left pending.
        let metrics = callingbox::metrics::Metrics::default()
            .render(&store)
            .await
            .expect("metrics");
        for line in [
            "callingbox_webhook_deliveries{status=\"pending\"} 5",
            "callingbox_webhook_attempts_total{outcome=\"failed\"} 5",
            "callingbox_webhook_attempts_total{outcome=\"succeeded\"} 0",
        ] {
            assert!(
                metrics.lines().any(|l| l == line),
                "{backend}: {line} in {metrics}"
            );
        }
        assert!(
            receiver.hits_on("/ok").is_empty(),
            "the redirect was not followed"
        );
        let all = all_deliveries(&store, &org_id).await;
        for ((_, needle, status), endpoint_id) in cases.iter().zip(&ids) {
            let d = all
                .iter()
                .find(|d| d.endpoint_id.as_deref() == Some(endpoint_id))
                .expect("delivery");
            let error = d.last_error.clone().unwrap_or_default();
            assert!(
                needle.split('|').any(|n| error.starts_with(n)),
                "{backend}: {error:?} lacks {needle:?}"
            );
            assert_eq!(d.status, "pending", "retried later");
            assert_eq!(d.attempt_count, 1);
            assert_eq!(d.last_response_status, status.map(i64::from));
            let attempts = deliveries::attempts(&store, &d.id).await.expect("attempts");
            assert_eq!(attempts.len(), 1);
            assert_eq!(attempts[0].error.as_deref(), Some(error.as_str()));
            assert_eq!(attempts[0].response_status, status.map(i64::from));
            assert!(attempts[0].duration_ms >= 0);
            if *status == Some(500) {
                assert_eq!(attempts[0].response_excerpt.as_deref(), Some("boom"));
            }
            if needle.starts_with("timeout") {
                assert!(
                    (700..3000).contains(&attempts[0].duration_ms),
                    "{}",
                    attempts[0].duration_ms
                );
            }
        }

        // Without allow_private_webhooks, loopback is refused after DNS.
        let guarded_org = org(&store, now).await;
        endpoint(&store, &guarded_org, &receiver.url("/ok"), now).await;
        let by_name = receiver.url("/ok").replace("127.0.0.1", "localhost");
        endpoint(&store, &guarded_org, &by_name, now).await;
        endpoint(
            &store,
            &guarded_org,
            "http://169.254.169.254/latest/meta-data",
            now,
        )
        .await;
        let hits_before = receiver.hits().len();
        queued_call(&store, &guarded_org, None, now).await;
        let guarded =
            Dispatcher::new(store.clone(), shared.clone(), settings(false)).expect("dispatcher");
        // The first org's rows are not due (next attempt in a minute).
        assert_eq!(guarded.deliver_due().await.expect("delivers"), 3);
        assert_eq!(
            receiver.hits().len(),
            hits_before,
            "nothing reached loopback"
        );
        let mut errors: Vec<_> = all_deliveries(&store, &guarded_org)
            .await
            .into_iter()
            .map(|d| d.last_error.unwrap_or_default())
            .collect();
        errors.sort();
        assert!(
            errors[0].starts_with("refused: 127.0.0.1 is a loopback address"),
            "{errors:?}"
        );
        assert!(
            errors[1].starts_with("refused: 169.254.169.254 is a cloud metadata address"),
            "{errors:?}"
        );
        assert!(
            errors[2].starts_with("refused: localhost resolves to"),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .all(|e| e.ends_with("(the operator setting allow_private_webhooks allows it)"))
        );
    }
}

#[tokio::test]
async fn retries_follow_the_schedule_on_virtual_time_then_exhaust_and_disable_the_endpoint() {
    let receiver = Receiver::start().await;
    for (backend, store) in stores().await {
        let start = Timestamp(1_800_000_000_000_000);
        let clock = ManualClock::new(start);
        let shared: SharedClock = Arc::new(clock.clone());
        let org_id = org(&store, start).await;
        let failing = endpoint(&store, &org_id, &receiver.url("/fail"), start).await;
        // Ten events to the endpoint, plus one inline delivery (which does
        // not count towards the endpoint's auto-disable).
        let inline_call = queued_call(&store, &org_id, Some(&receiver.url("/fail")), start).await;
        for _ in 0..9 {
            queued_call(&store, &org_id, None, start).await;
        }
        let dispatcher =
            Dispatcher::new(store.clone(), shared.clone(), settings(true)).expect("dispatcher");
        let mut last_attempt: std::collections::HashMap<String, Timestamp> = Default::default();
        let mut exhausted_seen = 0;
        let mut rounds = 0;
        loop {
            let made = dispatcher.deliver_due().await.expect("delivers");
            let now = clock.now();
            let all = all_deliveries(&store, &org_id).await;
            assert_eq!(all.len(), 11);
            for d in &all {
                if d.updated_at == now
                    && (d.status == "pending" || d.status == "exhausted")
                    && d.attempt_count > 0
                {
                    // Attempted in this round: it was due now, not before.
                    if let Some(previous) = last_attempt.get(&d.id) {
                        let gap = now.0 - previous.0;
                        let nominal =
                            RETRY_DELAYS_SECONDS[(d.attempt_count - 2) as usize] * 1_000_000;
                        assert!(
                            (nominal * 8 / 10..=nominal * 12 / 10).contains(&gap),
                            "{backend}: attempt {} came {gap} us after the previous, nominal {nominal}",
                            d.attempt_count
                        );
                    }
                    last_attempt.insert(d.id.clone(), now);
                }
                if d.status == "pending" && d.attempt_count > 0 {
                    assert!(d.next_attempt_at > now, "scheduled in the future");
                }
            }
            let endpoint_state = get_endpoint(&store, &org_id, &failing.id).await;
            let exhausted_at_endpoint = all
                .iter()
                .filter(|d| d.status == "exhausted" && d.endpoint_id.is_some())
                .count() as i64;
            assert_eq!(endpoint_state.consecutive_failures, exhausted_at_endpoint);
            if exhausted_at_endpoint < 10 {
                assert_eq!(
                    endpoint_state.status, "enabled",
                    "{backend}: not before ten"
                );
            } else {
                assert_eq!(endpoint_state.status, "disabled");
                assert_eq!(
                    endpoint_state.disabled_reason.as_deref(),
                    Some("too_many_failures")
                );
                if exhausted_seen < 10 {
                    assert_eq!(
                        endpoint_state.disabled_at,
                        Some(now),
                        "disabled by the tenth"
                    );
                }
            }
            exhausted_seen = exhausted_seen.max(exhausted_at_endpoint);
            let next = all
                .iter()
                .filter(|d| d.status == "pending")
                .map(|d| d.next_attempt_at)
                .min();
            let Some(next) = next else { break };
            assert!(made > 0 || rounds == 0);
            // One microsecond early: nothing is due yet.
            clock.set(Timestamp(next.0 - 1));
            assert_eq!(
                dispatcher.deliver_due().await.expect("delivers"),
                0,
                "{backend}: nothing early"
            );
            clock.set(next);
            rounds += 1;
            assert!(rounds < 200, "the schedule ends");
        }
        assert_eq!(exhausted_seen, 10);
        let all = all_deliveries(&store, &org_id).await;
        for d in &all {
            assert_eq!(d.status, "exhausted");
            assert_eq!(d.attempt_count, MAX_ATTEMPTS);
            assert_eq!(
                d.last_error.as_deref(),
                Some("HTTP 500 Internal Server Error")
            );
            assert_eq!(
                deliveries::attempts(&store, &d.id)
                    .await
                    .expect("attempts")
                    .len(),
                8
            );
        }
        // Roughly two days from the event to the last attempt.
        let total = last_attempt.values().max().expect("attempts").0 - start.0;
        assert!(
            (33 * 3600 * 1_000_000..50 * 3600 * 1_000_000).contains(&total),
            "{total}"
        );
        let mut conn = store.pool().acquire().await.expect("conn");
        let call = calls::get(&mut conn, &org_id, &inline_call.id)
            .await
            .expect("reads")
            .expect("call");
        drop(conn);
        assert_eq!(call.webhook_status, "failed");
        assert_eq!(
            call.webhook_error.as_deref(),
            Some("HTTP 500 Internal Server Error")
        );

        // Disabled: new events skip it.
        let quiet = queued_call(&store, &org_id, None, clock.now()).await;
        assert!(
            all_deliveries(&store, &org_id)
                .await
                .iter()
                .all(|d| d.call_id.as_deref() != Some(quiet.id.as_str())),
            "{backend}: no delivery to a disabled endpoint"
        );

        // A manual redelivery of an exhausted delivery: one more attempt,
        // not counted in attempt_count; failing again re-exhausts it.
        clock.advance_micros(60_000_000);
        let mut tx = store.begin().await.expect("tx");
        endpoints::set_enabled(&mut tx, &failing.id, true, clock.now())
            .await
            .expect("enables");
        tx.commit().await.expect("commit");
        assert_eq!(
            get_endpoint(&store, &org_id, &failing.id)
                .await
                .consecutive_failures,
            0
        );
        let target = all
            .iter()
            .find(|d| d.endpoint_id.is_some())
            .expect("one")
            .id
            .clone();
        let mut tx = store.begin().await.expect("tx");
        let queued = deliveries::redeliver(&mut tx, &org_id, &target, clock.now())
            .await
            .expect("redelivers")
            .expect("exists");
        tx.commit().await.expect("commit");
        assert_eq!(queued.status, "pending");
        assert_eq!(dispatcher.deliver_due().await.expect("delivers"), 1);
        let again = delivery(&store, &org_id, &target).await;
        assert_eq!(again.status, "exhausted");
        assert_eq!(again.attempt_count, MAX_ATTEMPTS);
        assert_eq!(again.manual_retry_count, 1);
        let attempts = deliveries::attempts(&store, &target)
            .await
            .expect("attempts");
        assert_eq!(attempts.len(), 9);
        assert!(attempts.last().expect("last").manual);
        assert_eq!(
            get_endpoint(&store, &org_id, &failing.id)
                .await
                .consecutive_failures,
            1
        );

        // Any 2xx resets the count.
        let mut tx = store.begin().await.expect("tx");
        endpoints::update(
            &mut tx,
            &failing.id,
            &EndpointFields {
                url: receiver.url("/ok"),
                description: None,
                enabled_events: vec!["*".into()],
            },
            clock.now(),
        )
        .await
        .expect("updates");
        tx.commit().await.expect("commit");
        queued_call(&store, &org_id, None, clock.now()).await;
        assert_eq!(dispatcher.deliver_due().await.expect("delivers"), 1);
        assert_eq!(
            get_endpoint(&store, &org_id, &failing.id)
                .await
                .consecutive_failures,
            0
        );
    }
}

#[tokio::test]
async fn a_delivered_event_is_redelivered_with_the_same_id() {
    let receiver = Receiver::start().await;
    for (backend, store) in stores().await {
        let clock = ManualClock::new(Timestamp(1_800_000_000_000_000));
        let shared: SharedClock = Arc::new(clock.clone());
        let org_id = org(&store, clock.now()).await;
        let path = format!("/{backend}/redeliver");
        endpoint(&store, &org_id, &receiver.url(&path), clock.now()).await;
        queued_call(&store, &org_id, None, clock.now()).await;
        let dispatcher =
            Dispatcher::new(store.clone(), shared, settings(true)).expect("dispatcher");
        assert_eq!(dispatcher.deliver_due().await.expect("delivers"), 1);
        let id = all_deliveries(&store, &org_id).await[0].id.clone();
        clock.advance_micros(5_000_000);
        let mut tx = store.begin().await.expect("tx");
        deliveries::redeliver(&mut tx, &org_id, &id, clock.now())
            .await
            .expect("redelivers");
        tx.commit().await.expect("commit");
        assert_eq!(dispatcher.deliver_due().await.expect("delivers"), 1);
        let hits = receiver.hits_on(&path);
        assert_eq!(hits.len(), 2);
        assert_eq!(hits[0].header("callingbox-event-id"), id);
        assert_eq!(hits[1].header("callingbox-event-id"), id);
        assert_eq!(hits[0].body, hits[1].body, "the same envelope");
        let d = delivery(&store, &org_id, &id).await;
        assert_eq!(
            (d.status.as_str(), d.attempt_count, d.manual_retry_count),
            ("delivered", 1, 1)
        );
        assert_eq!(
            d.delivered_at,
            Some(Timestamp(1_800_000_000_000_000)),
            "the first delivery"
        );
    }
}

#[tokio::test]
async fn a_slow_endpoint_cannot_starve_the_others() {
    let receiver = Receiver::start().await;
    receiver.set_slow_ms(600);
    for (backend, store) in stores().await {
        let clock: SharedClock = Arc::new(MonotonicClock::default());
        let slow_org = org(&store, clock.now()).await;
        let fast_org = org(&store, clock.now()).await;
        endpoint(&store, &slow_org, &receiver.url("/slow"), clock.now()).await;
        let fast_path = format!("/{backend}/fast");
        endpoint(&store, &fast_org, &receiver.url(&fast_path), clock.now()).await;
        for _ in 0..8 {
            queued_call(&store, &slow_org, None, clock.now()).await;
        }
        for _ in 0..8 {
            queued_call(&store, &fast_org, None, clock.now()).await;
        }
        let slow_before = receiver.hits_on("/slow").len();
        let mut settings = settings(true);
        settings.timeout = Duration::from_secs(5);
        settings.per_destination = 2;
        let started = Instant::now();
        let handle = worker::spawn(store.clone(), clock.clone(), settings)
            .await
            .expect("spawns");
        let fast = receiver
            .wait_for(&fast_path, 8, Duration::from_secs(10))
            .await;
        let fast_done = fast.iter().map(|h| h.at).max().expect("hits");
        let slow = receiver
            .wait_for("/slow", slow_before + 8, Duration::from_secs(20))
            .await;
        let slow_done = slow.iter().map(|h| h.at).max().expect("hits");
        handle.shutdown().await;
        assert!(
            fast_done.duration_since(started) < Duration::from_millis(600),
            "{backend}: the fast endpoint waited {:?}",
            fast_done.duration_since(started)
        );
        assert!(slow_done > fast_done);
        assert!(
            receiver.max_concurrent("/slow") <= 2,
            "{backend}: per-endpoint limit"
        );
        // 8 slow deliveries two at a time take about 4 rounds of 600 ms.
        assert!(slow_done.duration_since(started) >= Duration::from_millis(1700));
    }
}

#[tokio::test]
async fn a_new_event_wakes_the_worker_without_waiting_for_the_poll() {
    let receiver = Receiver::start().await;
    for (backend, store) in stores().await {
        let clock: SharedClock = Arc::new(MonotonicClock::default());
        let org_id = org(&store, clock.now()).await;
        let path = format!("/{backend}/wake");
        endpoint(&store, &org_id, &receiver.url(&path), clock.now()).await;
        let mut settings = settings(true);
        settings.poll_interval = Duration::from_secs(60);
        let handle = worker::spawn(store.clone(), clock.clone(), settings)
            .await
            .expect("spawns");
        // Let the worker settle into its wait (and PostgreSQL's LISTEN).
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Many rounds, at varied moments of the worker's loop: a lost wake
        // shows up as a 60 s wait.
        for i in 0..20 {
            tokio::time::sleep(Duration::from_millis((i as u64 * 7) % 23)).await;
            let sent = Instant::now();
            // Every other event commits 30 ms after the worker is woken.
            let hold = Duration::from_millis(if i % 2 == 0 { 0 } else { 30 });
            queued_call_holding(&store, &org_id, None, clock.now(), hold).await;
            let hits = receiver
                .wait_for(&path, i + 1, Duration::from_secs(5))
                .await;
            let latency = hits[i].at.duration_since(sent);
            assert!(
                latency < Duration::from_millis(500),
                "{backend}: {latency:?}"
            );
        }
        handle.shutdown().await;
    }
}
