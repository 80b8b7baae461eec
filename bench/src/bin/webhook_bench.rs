//! The webhook delivery benchmark: deliveries per second to a local
//! receiver, and event-to-delivery latency at a steady event rate, on
//! SQLite and (when a server is named) PostgreSQL.
//!
//! * Throughput: `--backlog` events are committed with the worker stopped,
//!   then one worker (defaults: 64 in flight, 4 per destination) delivers
//!   them; the figure is deliveries / time to the last one. Measured with
//!   one endpoint (the per-destination limit binds) and with eight.
//! * Latency: events are committed at `--rate` per second for
//!   `--seconds`, one endpoint; latency runs from the start of the
//!   event's transaction (the call insert and `emit`) to the receiver
//!   reading the request.
//!
//! The receiver is an axum server on loopback answering 200 at once.
//! `CALLINGBOX_BENCH_POSTGRES_URL` (or `CALLINGBOX_TEST_POSTGRES_URL`)
//! names a PostgreSQL server; a fresh database is made on it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use callingbox::clock::{MonotonicClock, SharedClock, Timestamp};
use callingbox::lifecycle;
use callingbox::store::calls::{self, NewCall};
use callingbox::store::{Store, new_id, orgs};
use callingbox::webhooks::deliveries;
use callingbox::webhooks::endpoints::{self, EndpointFields};
use callingbox::webhooks::worker::{self, WorkerSettings};
use callingbox_bench::stats::Samples;
use serde_json::{Map, json};

/// What the receiver saw: call id -> arrival times.
#[derive(Default)]
struct Seen {
    arrivals: Mutex<Vec<(String, Instant)>>,
}

async fn receive(State(seen): State<Arc<Seen>>, request: Request) -> StatusCode {
    let at = Instant::now();
    let call_id = request
        .headers()
        .get("x-callingbox-call-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let _ = axum::body::to_bytes(request.into_body(), 1 << 20).await;
    if let Ok(mut arrivals) = seen.arrivals.lock() {
        arrivals.push((call_id, at));
    }
    StatusCode::OK
}

async fn start_receiver() -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let app = axum::Router::new()
        .fallback(receive)
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds a loopback port");
    let base = format!("http://{}", listener.local_addr().expect("an address"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (base, seen)
}

/// A call and its `call.queued` event, in one transaction, as the API
/// records them.
async fn emit_one(store: &Store, org_id: &str, now: Timestamp) -> String {
    let id = new_id();
    let new = NewCall {
        id: id.clone(),
        org_id: org_id.to_owned(),
        agent_id: None,
        direction: "outbound".into(),
        status: calls::status::QUEUED.into(),
        to_number: "+14155550123".into(),
        from_number: "+14155550100".into(),
        persona: None,
        instructions: None,
        prompt: "Say hi.".into(),
        context: Map::new(),
        returns: json!({}),
        language: "en".into(),
        voice: "default".into(),
        tools: json!([]),
        voicemail_action: "hangup".into(),
        webhook_url: None,
        metadata: Map::new(),
        hold_milli_cents: 0,
        idempotency_key: None,
        request_fingerprint: None,
        node_id: None,
    };
    let mut tx = store.begin().await.expect("a transaction");
    calls::insert(&mut tx, &new, now).await.expect("inserts");
    lifecycle::queued(&mut tx, &id, now).await.expect("emits");
    tx.commit().await.expect("commits");
    id
}

async fn org_with_endpoints(
    store: &Store,
    clock: &SharedClock,
    base: &str,
    endpoints_n: usize,
) -> String {
    let mut tx = store.begin().await.expect("a transaction");
    let org = orgs::create(&mut tx, "bench", 0, clock.now())
        .await
        .expect("an org");
    for i in 0..endpoints_n {
        endpoints::insert(
            &mut tx,
            &org.id,
            &EndpointFields {
                url: format!("{base}/endpoint-{i}"),
                description: None,
                enabled_events: vec!["*".into()],
            },
            clock.now(),
        )
        .await
        .expect("an endpoint");
    }
    tx.commit().await.expect("commits");
    org.id
}

fn settings() -> WorkerSettings {
    // The defaults of `serve`, loopback allowed; `--per-destination` and
    // `--in-flight` override the limits.
    let mut settings = WorkerSettings::new("bench-node", true);
    settings.per_destination = arg("--per-destination", settings.per_destination as f64) as usize;
    settings.max_in_flight = arg("--in-flight", settings.max_in_flight as f64) as usize;
    settings
}

/// Deliveries per second of a backlog of `events` events to
/// `endpoints_n` endpoints.
async fn throughput(store: &Store, endpoints_n: usize, events: usize) -> f64 {
    let clock: SharedClock = Arc::new(MonotonicClock::default());
    let (base, seen) = start_receiver().await;
    let org_id = org_with_endpoints(store, &clock, &base, endpoints_n).await;
    for _ in 0..events {
        emit_one(store, &org_id, clock.now()).await;
    }
    let expected = events * endpoints_n;
    let started = Instant::now();
    let handle = worker::spawn(store.clone(), clock, settings())
        .await
        .expect("the worker starts");
    loop {
        let got = seen.arrivals.lock().map(|a| a.len()).unwrap_or(0);
        if got >= expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let last = seen
        .arrivals
        .lock()
        .ok()
        .and_then(|a| a.iter().map(|(_, at)| *at).max())
        .unwrap_or_else(Instant::now);
    handle.shutdown().await;
    // Recording the last attempts may trail the arrivals by a little.
    while deliveries::count_by_status(store, "pending")
        .await
        .unwrap_or(0)
        > 0
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    expected as f64 / last.duration_since(started).as_secs_f64()
}

struct LatencyRun {
    samples: Samples,
    achieved_rate: f64,
    emit: Samples,
}

/// Event-to-delivery latency at `rate` events per second for `seconds`.
async fn latency(store: &Store, rate: f64, seconds: f64) -> LatencyRun {
    let clock: SharedClock = Arc::new(MonotonicClock::default());
    let (base, seen) = start_receiver().await;
    let org_id = org_with_endpoints(store, &clock, &base, 1).await;
    let handle = worker::spawn(store.clone(), clock.clone(), settings())
        .await
        .expect("the worker starts");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let total = (rate * seconds) as usize;
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut started_at: HashMap<String, Instant> = HashMap::with_capacity(total);
    let mut emit = Samples::default();
    let start = Instant::now();
    for i in 0..total {
        // An absolute schedule: a slow commit does not lower the rate.
        let due = start + period * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let t0 = Instant::now();
        let call_id = emit_one(store, &org_id, clock.now()).await;
        emit.push(t0.elapsed());
        started_at.insert(call_id, t0);
    }
    let achieved_rate = total as f64 / start.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.arrivals.lock().map(|a| a.len()).unwrap_or(0) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    handle.shutdown().await;
    let mut samples = Samples::default();
    if let Ok(arrivals) = seen.arrivals.lock() {
        for (call_id, at) in arrivals.iter() {
            if let Some(t0) = started_at.get(call_id) {
                samples.push(at.duration_since(*t0));
            }
        }
    }
    LatencyRun {
        samples,
        achieved_rate,
        emit,
    }
}

async fn fresh_postgres(admin: &str) -> String {
    sqlx::any::install_default_drivers();
    let name = format!("cbbench_{}", new_id().replace('-', "_"));
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(admin)
        .await
        .expect("the PostgreSQL server answers");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("creates a database");
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(admin);
    format!("{base}/{name}")
}

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--help") {
        println!(
            "webhook_bench [--backlog N (5000)] [--rate EVENTS_PER_S (500)] [--seconds S (10)]\n\
             [--per-destination N] [--in-flight N] (default: the worker's defaults)\n\
             PostgreSQL: CALLINGBOX_BENCH_POSTGRES_URL or CALLINGBOX_TEST_POSTGRES_URL"
        );
        return;
    }
    let backlog = arg("--backlog", 5000.0) as usize;
    let rate = arg("--rate", 500.0);
    let seconds = arg("--seconds", 10.0);
    let dir = std::env::temp_dir().join(format!("callingbox-webhook-bench-{}", new_id()));
    let mut databases = vec![("SQLite", format!("sqlite://{}/bench.db", dir.display()))];
    let admin = std::env::var("CALLINGBOX_BENCH_POSTGRES_URL")
        .or_else(|_| std::env::var("CALLINGBOX_TEST_POSTGRES_URL"));
    if let Ok(admin) = admin {
        databases.push(("PostgreSQL", fresh_postgres(&admin).await));
    } else {
        eprintln!("no PostgreSQL named: SQLite only");
    }
    println!(
        "| database | deliveries/s, 1 endpoint | deliveries/s, 8 endpoints | \
         latency at {rate:.0} ev/s p50 / p99 / max | achieved rate | emit transaction p50 / p99 |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for (name, url) in databases {
        let store = Store::open(&url).await.expect("the database opens");
        let one = throughput(&store, 1, backlog).await;
        let eight = throughput(&store, 8, backlog / 8).await;
        let run = latency(&store, rate, seconds).await;
        let s = run.samples.summary();
        let e = run.emit.summary();
        println!(
            "| {name} | {one:.0} | {eight:.0} | {:.1} / {:.1} / {:.1} ms (n={}) | {:.0} ev/s | {:.2} / {:.2} ms |",
            s.p50, s.p99, s.max, s.n, run.achieved_rate, e.p50, e.p99
        );
        store.close().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
