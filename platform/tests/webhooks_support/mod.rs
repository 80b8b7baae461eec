//! Receivers for webhook tests (a real HTTP server that records every
//! request, and a socket that resets connections), and calls made straight
//! through the store with their `call.queued` event.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use callingbox::clock::Timestamp;
use callingbox::lifecycle;
use callingbox::store::calls::{self, Call, NewCall};
use callingbox::store::{Store, new_id, orgs};
use serde_json::{Map, Value, json};

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Hit {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Hit {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

#[derive(Default)]
struct Shared {
    hits: Mutex<Vec<Hit>>,
    in_flight: Mutex<HashMap<String, usize>>,
    max_in_flight: Mutex<HashMap<String, usize>>,
    slow_ms: AtomicUsize,
}

/// An HTTP receiver on loopback. Paths: `/ok` 200, `/fail` 500 with body
/// `boom`, `/redirect` 302 to `/ok`, `/slow...` 200 after `slow_ms`
/// (default 3 s), anything else 200.
#[derive(Clone)]
pub struct Receiver {
    pub base: String,
    shared: Arc<Shared>,
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let path = request.uri().path().to_owned();
    let headers = request.headers().clone();
    let body = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    {
        let mut in_flight = shared.in_flight.lock().expect("lock");
        let now = in_flight.entry(path.clone()).or_default();
        *now += 1;
        let mut max = shared.max_in_flight.lock().expect("lock");
        let peak = max.entry(path.clone()).or_default();
        *peak = (*peak).max(*now);
    }
    shared.hits.lock().expect("lock").push(Hit {
        path: path.clone(),
        headers,
        body,
        at: Instant::now(),
    });
    let response = match path.as_str() {
        "/fail" => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        "/redirect" => (StatusCode::FOUND, [(header::LOCATION, "/ok")], "").into_response(),
        p if p.starts_with("/slow") => {
            let ms = shared.slow_ms.load(Ordering::SeqCst) as u64;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            (StatusCode::OK, "late").into_response()
        }
        _ => (StatusCode::OK, "ok").into_response(),
    };
    *shared
        .in_flight
        .lock()
        .expect("lock")
        .entry(path)
        .or_default() -= 1;
    response
}

impl Receiver {
    pub async fn start() -> Receiver {
        let shared = Arc::new(Shared::default());
        shared.slow_ms.store(3000, Ordering::SeqCst);
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { base, shared }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn set_slow_ms(&self, ms: usize) {
        self.shared.slow_ms.store(ms, Ordering::SeqCst);
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.shared.hits.lock().expect("lock").clone()
    }

    pub fn hits_on(&self, path: &str) -> Vec<Hit> {
        self.hits().into_iter().filter(|h| h.path == path).collect()
    }

    pub fn max_concurrent(&self, path: &str) -> usize {
        self.shared
            .max_in_flight
            .lock()
            .expect("lock")
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    /// Waits until `count` requests arrived on `path` (or panics after
    /// `within`).
    pub async fn wait_for(&self, path: &str, count: usize, within: Duration) -> Vec<Hit> {
        let deadline = Instant::now() + within;
        loop {
            let hits = self.hits_on(path);
            if hits.len() >= count {
                return hits;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} requests on {path} within {within:?}",
                hits.len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A socket that accepts connections and closes them with unread data, so
/// the kernel resets them. Returns its URL.
pub async fn resetting_receiver() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let url = format!("http://{}/reset", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Wait for the request, read none of it, close: RST.
                let _ = stream.readable().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(stream);
            });
        }
    });
    url
}

/// A fresh organization; returns its id.
pub async fn org(store: &Store, now: Timestamp) -> String {
    let mut tx = store.begin().await.expect("tx");
    let org = orgs::create(&mut tx, "webhook test org", 0, now)
        .await
        .expect("org");
    tx.commit().await.expect("commit");
    org.id
}

/// The organization's default signing secret.
pub async fn default_secret(store: &Store, org_id: &str) -> String {
    let mut conn = store.pool().acquire().await.expect("conn");
    orgs::get(&mut conn, org_id)
        .await
        .expect("reads")
        .expect("org")
        .default_webhook_secret
}

/// Records a queued call (as the API would) with its `call.queued` event.
pub async fn queued_call(
    store: &Store,
    org_id: &str,
    webhook_url: Option<&str>,
    now: Timestamp,
) -> Call {
    queued_call_holding(store, org_id, webhook_url, now, Duration::ZERO).await
}

/// As [`queued_call`], keeping the transaction open for `hold` after the
/// event is emitted (a woken worker must not miss the row).
pub async fn queued_call_holding(
    store: &Store,
    org_id: &str,
    webhook_url: Option<&str>,
    now: Timestamp,
    hold: Duration,
) -> Call {
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
        webhook_url: webhook_url.map(str::to_owned),
        metadata: Map::new(),
        hold_milli_cents: 0,
        idempotency_key: None,
        request_fingerprint: None,
        node_id: None,
    };
    let mut tx = store.begin().await.expect("tx");
    calls::insert(&mut tx, &new, now).await.expect("insert");
    let call = lifecycle::queued(&mut tx, &id, now).await.expect("queued");
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
    }
    tx.commit().await.expect("commit");
    call
}
