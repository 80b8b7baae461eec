//! Crash test: a node that produces call events and delivers them is
//! killed with SIGKILL twice, while events are being produced and
//! deliveries are in flight, then restarted to drain. Every event that was
//! committed is delivered at least once, and a receiver that dedupes by
//! `CallingBox-Event-Id` processes each exactly once. On SQLite and (when
//! available) PostgreSQL.
//!
//! The node is this test binary itself, re-run with `crash_node` selected
//! and its settings in `CB_CRASH_*` variables (the `serve` command is not
//! needed for it, and the binary is always built).

mod common;
mod webhooks_support;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use callingbox::clock::{MonotonicClock, SharedClock};
use callingbox::store::{Store, orgs};
use callingbox::webhooks::deliveries;
use callingbox::webhooks::endpoints::{self, EndpointFields};
use callingbox::webhooks::worker::{self, WorkerSettings};
use common::database_urls;
use sqlx::Row;
use webhooks_support::{Receiver, queued_call};

const ORG_NAME: &str = "crash test org";

/// The node (run only as a child of the test below).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the crash test's child process; runs only when CB_CRASH_DB is set"]
async fn crash_node() {
    let Ok(db) = std::env::var("CB_CRASH_DB") else {
        return;
    };
    let receiver = std::env::var("CB_CRASH_RECEIVER").expect("receiver");
    let produce: usize = std::env::var("CB_CRASH_PRODUCE")
        .expect("produce")
        .parse()
        .expect("a count");
    let drain = std::env::var("CB_CRASH_DRAIN").is_ok();
    let store = Store::open(&db).await.expect("opens");
    let clock: SharedClock = Arc::new(MonotonicClock::default());
    let org_id = match orgs::find_by_name(&store, ORG_NAME).await.expect("reads") {
        Some(org) => org.id,
        None => {
            let mut tx = store.begin().await.expect("tx");
            let org = orgs::create(&mut tx, ORG_NAME, 0, clock.now())
                .await
                .expect("org");
            endpoints::insert(
                &mut tx,
                &org.id,
                &EndpointFields {
                    url: format!("{receiver}/slow/endpoint"),
                    description: None,
                    enabled_events: vec!["*".into()],
                },
                clock.now(),
            )
            .await
            .expect("endpoint");
            tx.commit().await.expect("commit");
            org.id
        }
    };
    let mut settings = WorkerSettings::new("crash-node", true);
    settings.timeout = Duration::from_secs(2);
    settings.poll_interval = Duration::from_millis(200);
    let handle = worker::spawn(store.clone(), clock.clone(), settings)
        .await
        .expect("spawns");
    let inline = format!("{receiver}/slow/inline");
    for i in 1..=produce {
        queued_call(&store, &org_id, Some(&inline), clock.now()).await;
        println!("produced {i}");
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    if drain {
        loop {
            let pending = deliveries::count_by_status(&store, "pending")
                .await
                .expect("counts");
            if pending == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        handle.shutdown().await;
        println!("drained");
    } else {
        // Until killed.
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
}

fn start_node(db: &str, receiver: &str, produce: usize, drain: bool) -> Child {
    let mut command = Command::new(std::env::current_exe().expect("the test binary"));
    command
        .args([
            "--exact",
            "crash_node",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CB_CRASH_DB", db)
        .env("CB_CRASH_RECEIVER", receiver)
        .env("CB_CRASH_PRODUCE", produce.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if drain {
        command.env("CB_CRASH_DRAIN", "1");
    }
    command.spawn().expect("the node starts")
}

/// Reads the node's output until a line equal to `line`; the output read
/// if it ended first.
fn wait_for_line(child: &mut Child, line: &str) -> Result<(), String> {
    let stdout = child.stdout.take().expect("piped");
    let mut reader = BufReader::new(stdout);
    let mut text = String::new();
    let mut seen = String::new();
    loop {
        text.clear();
        match reader.read_line(&mut text) {
            Ok(0) | Err(_) => return Err(seen),
            Ok(_) if text.trim_end().ends_with(line) => {
                // Keep draining in the background so the node never blocks
                // on a full pipe.
                std::thread::spawn(move || {
                    let mut sink = String::new();
                    while reader.read_line(&mut sink).is_ok_and(|n| n > 0) {
                        sink.clear();
                    }
                });
                return Ok(());
            }
            Ok(_) => {
                if !text.starts_with("produced ") {
                    seen.push_str(&text);
                }
            }
        }
    }
}

async fn count(store: &Store, sql: &'static str) -> i64 {
    let row = sqlx::query(sql)
        .fetch_one(store.pool())
        .await
        .expect("counts");
    row.try_get::<i64, _>(0).expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_nodes_lose_no_event_and_a_deduping_receiver_processes_each_once() {
    let receiver = Receiver::start().await;
    // Slow enough that deliveries are in flight and queued when killed.
    receiver.set_slow_ms(40);
    for (backend, db) in database_urls().await {
        let hits_before = receiver.hits().len();
        // Run 1: killed while producing (and delivering).
        let mut node = start_node(&db, &receiver.base, 400, false);
        if let Err(out) = wait_for_line(&mut node, "produced 150") {
            panic!("{backend}: node 1 ended early: {out}");
        }
        node.kill().expect("SIGKILL");
        node.wait().expect("reaped");
        let store = Store::open(&db).await.expect("opens");
        let pending_after_first = deliveries::count_by_status(&store, "pending")
            .await
            .expect("counts");
        let leased_after_first = count(
            &store,
            "SELECT COUNT(*) FROM webhook_deliveries WHERE lease_owner IS NOT NULL",
        )
        .await;
        // Run 2: restarted, killed again while producing.
        let mut node = start_node(&db, &receiver.base, 200, false);
        if let Err(out) = wait_for_line(&mut node, "produced 100") {
            panic!("{backend}: node 2 ended early: {out}");
        }
        node.kill().expect("SIGKILL");
        node.wait().expect("reaped");
        // Run 3: restarted, drains everything and stops.
        let started = Instant::now();
        let mut node = start_node(&db, &receiver.base, 0, true);
        if let Err(out) = wait_for_line(&mut node, "drained") {
            panic!("{backend}: node 3 ended before draining: {out}");
        }
        let status = node.wait().expect("exits");
        assert!(status.success(), "{backend}: {status}");
        let drain_time = started.elapsed();

        let calls = count(&store, "SELECT COUNT(*) FROM calls").await;
        let rows = count(&store, "SELECT COUNT(*) FROM webhook_deliveries").await;
        let delivered = deliveries::count_by_status(&store, "delivered")
            .await
            .expect("counts");
        let attempts = count(&store, "SELECT COUNT(*) FROM webhook_attempts").await;
        let ids: HashSet<String> = sqlx::query("SELECT id FROM webhook_deliveries")
            .fetch_all(store.pool())
            .await
            .expect("ids")
            .iter()
            .map(|r| r.try_get::<String, _>("id").expect("id"))
            .collect();
        store.close().await;

        let hits = receiver.hits().split_off(hits_before);
        let mut seen: HashMap<String, usize> = HashMap::new();
        for hit in &hits {
            *seen
                .entry(hit.header("callingbox-event-id").to_owned())
                .or_default() += 1;
        }
        let duplicates: usize = seen.values().map(|n| n - 1).sum();
        eprintln!(
            "{backend}: {calls} calls committed across 2 kills, {rows} deliveries, \
             {} requests received, {} unique event ids, {duplicates} duplicate requests, \
             {attempts} recorded attempts; after kill 1: {pending_after_first} pending, \
             {leased_after_first} leased; drain took {drain_time:?}",
            hits.len(),
            seen.len()
        );
        assert!(
            calls >= 250,
            "{backend}: both runs produced before the kill ({calls})"
        );
        assert!(
            pending_after_first > 0,
            "{backend}: the first kill left work undone"
        );
        assert_eq!(
            rows,
            2 * calls,
            "{backend}: every committed call has its two deliveries (endpoint + inline)"
        );
        assert_eq!(delivered, rows, "{backend}: every delivery delivered");
        let received: HashSet<String> = seen.keys().cloned().collect();
        assert_eq!(
            received, ids,
            "{backend}: each event id received at least once, and no other"
        );
        assert_eq!(
            seen.len() as i64,
            rows,
            "{backend}: deduped by id, each processed once"
        );
        assert!(hits.len() >= seen.len());
    }
}
