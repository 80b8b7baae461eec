//! An API server on a real socket, on each database the machine offers:
//! SQLite always (a fresh file), PostgreSQL when
//! `CALLINGBOX_TEST_POSTGRES_URL` names a server (a fresh database per
//! test; `./dev test` starts one).

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use callingbox::api::{self, AppState};
use callingbox::billing::Pricing;
use callingbox::carrier::LocalCarrier;
use callingbox::clock::{Clock, MonotonicClock};
use callingbox::dispatch::CallLauncher;
use callingbox::store::{Store, keys, orgs};
use serde_json::Value;

/// Records the calls handed to it; knows none of them (cancel ends them in
/// the API).
#[derive(Debug, Default)]
pub struct RecordingLauncher {
    pub launched: Mutex<Vec<String>>,
}

impl CallLauncher for RecordingLauncher {
    fn launch(&self, call_id: &str) {
        self.launched.lock().expect("lock").push(call_id.to_owned());
    }

    fn cancel(&self, _call_id: &str) -> bool {
        false
    }
}

/// A running server and an API key of a fresh organization.
pub struct TestServer {
    pub backend: &'static str,
    pub base: String,
    pub http: reqwest::Client,
    pub key: String,
    pub org_id: String,
    pub store: Store,
    pub launcher: Arc<RecordingLauncher>,
    pub pricing: Pricing,
}

/// The database URLs to run each test on.
pub async fn database_urls() -> Vec<(&'static str, String)> {
    let dir = std::env::temp_dir().join(format!("callingbox-test-{}", uuid_like()));
    let mut urls = vec![("sqlite", format!("sqlite://{}/test.db", dir.display()))];
    if let Ok(admin) = std::env::var("CALLINGBOX_TEST_POSTGRES_URL") {
        let name = format!("cbtest_{}", uuid_like().replace('-', "_"));
        sqlx::any::install_default_drivers();
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin)
            .await
            .expect("the PostgreSQL test server answers");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("creates a test database");
        let base = admin
            .rsplit_once('/')
            .map(|(b, _)| b.to_owned())
            .unwrap_or(admin.clone());
        urls.push(("postgres", format!("{base}/{name}")));
    }
    urls
}

fn uuid_like() -> String {
    let bytes: [u8; 8] = rand_bytes();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn rand_bytes() -> [u8; 8] {
    use std::hash::{BuildHasher, RandomState};
    let a = RandomState::new().hash_one(std::time::SystemTime::now());
    a.to_le_bytes()
}

impl TestServer {
    /// Starts a server on `url` whose organization has $100 of credit.
    pub async fn start(backend: &'static str, url: &str) -> TestServer {
        let pricing = Pricing {
            starting_credit_milli_cents: 10_000_000,
            ..Pricing::default()
        };
        Self::start_with(backend, url, pricing).await
    }

    /// Starts a server with `pricing`.
    pub async fn start_with(backend: &'static str, url: &str, pricing: Pricing) -> TestServer {
        let launcher = Arc::new(RecordingLauncher::default());
        let as_launcher: Arc<dyn CallLauncher> = launcher.clone();
        let mut server = Self::start_full(backend, url, pricing, |_, _| as_launcher).await;
        server.launcher = launcher;
        server
    }

    /// Starts a server whose calls go to the launcher `make` builds from
    /// the store and clock.
    pub async fn start_full(
        backend: &'static str,
        url: &str,
        pricing: Pricing,
        make: impl FnOnce(Store, Arc<dyn Clock>) -> Arc<dyn CallLauncher>,
    ) -> TestServer {
        let store = Store::open(url).await.expect("the test database opens");
        let clock: Arc<dyn Clock> = Arc::new(MonotonicClock::default());
        let launcher = Arc::new(RecordingLauncher::default());
        let call_launcher = make(store.clone(), Arc::clone(&clock));
        let mut tx = store.begin().await.expect("tx");
        let org = orgs::create(
            &mut tx,
            "test org",
            pricing.starting_credit_milli_cents,
            clock.now(),
        )
        .await
        .expect("org");
        let (_, key) = keys::create(&mut tx, &org.id, "test", None, clock.now())
            .await
            .expect("key");
        tx.commit().await.expect("commit");
        let state = AppState {
            store: store.clone(),
            clock,
            pricing,
            carrier: Arc::new(LocalCarrier::default()),
            launcher: call_launcher,
            node_id: "test-node".into(),
            metrics: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, api::router(state)).await;
        });
        TestServer {
            backend,
            base,
            http: reqwest::Client::new(),
            key,
            org_id: org.id,
            store,
            launcher,
            pricing,
        }
    }

    /// A second organization's key on the same server.
    pub async fn other_org_key(&self) -> String {
        let now = MonotonicClock::default().now();
        let mut tx = self.store.begin().await.expect("tx");
        let org = orgs::create(&mut tx, "other org", 500_000, now)
            .await
            .expect("org");
        let (_, key) = keys::create(&mut tx, &org.id, "other", None, now)
            .await
            .expect("key");
        tx.commit().await.expect("commit");
        key
    }

    /// Sends a request with this server's key; returns status and JSON body.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_as(&self.key, method, path, body).await
    }

    /// Sends a request with `key`.
    pub async fn call_as(
        &self,
        key: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json)
    }

    /// Buys `count` local numbers; returns their ids.
    pub async fn buy_numbers(&self, area: &str, count: usize) -> Vec<(String, String)> {
        let (status, found) = self
            .call(
                "GET",
                &format!("/v1/numbers/available?area_code={area}&limit={count}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{found}");
        let mut bought = Vec::new();
        for offer in found.as_array().expect("array") {
            let e164 = offer["phone_number"].as_str().expect("number").to_owned();
            let (status, number) = self
                .call(
                    "POST",
                    "/v1/numbers/purchase",
                    Some(serde_json::json!({"phone_number": e164})),
                )
                .await;
            assert_eq!(status, 201, "{number}");
            bought.push((number["id"].as_str().expect("id").to_owned(), e164));
        }
        bought
    }
}

/// Asserts an error answer: the status and an `{"error": "..."}` body
/// containing `needle`.
#[track_caller]
pub fn assert_error(answer: &(u16, Value), status: u16, needle: &str) {
    assert_eq!(answer.0, status, "{}", answer.1);
    let message = answer.1["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error envelope: {}", answer.1));
    assert!(message.contains(needle), "{message:?} lacks {needle:?}");
}
