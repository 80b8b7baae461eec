//! A local HTTP server standing in for a vendor's JSON or SSE API: it
//! answers one route with a fixed [`Reply`] and records every request.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::Response;
use axum::routing::post;
use serde_json::Value;

/// What the fake server answers.
#[derive(Clone)]
pub enum Reply {
    /// A 200 event stream, sent in chunks of this many bytes.
    Stream(String, usize),
    /// A JSON body with this status.
    Json(StatusCode, Value),
    /// An error status with a raw JSON body.
    Error(StatusCode, String),
    /// Never answers.
    Hang,
}

/// What the fake server received.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request path.
    pub path: String,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body as JSON (null if it was not JSON).
    pub body: Value,
}

/// A running fake server.
pub struct Server {
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Server {
    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("log").clone()
    }
}

fn respond(reply: Reply) -> Response {
    let json = |status, body: String| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .expect("response")
    };
    match reply {
        Reply::Stream(text, chunk) => {
            let chunks: Vec<Result<Bytes, Infallible>> = text
                .as_bytes()
                .chunks(chunk)
                .map(|c| Ok(Bytes::copy_from_slice(c)))
                .collect();
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .body(Body::from_stream(futures::stream::iter(chunks)))
                .expect("response")
        }
        Reply::Json(status, body) => json(status, body.to_string()),
        Reply::Error(status, body) => json(status, body),
        Reply::Hang => unreachable!("handled before"),
    }
}

/// Serves `reply` on POST `path`.
pub async fn serve(path: &'static str, reply: Reply) -> Server {
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&received);
    let handler = move |uri: Uri, headers: HeaderMap, body: String| {
        let log = Arc::clone(&log);
        let reply = reply.clone();
        async move {
            log.lock().expect("log").push(Received {
                path: uri.path().to_owned(),
                headers,
                body: serde_json::from_str(&body).unwrap_or(Value::Null),
            });
            if matches!(reply, Reply::Hang) {
                std::future::pending::<()>().await;
            }
            respond(reply)
        }
    };
    let app = Router::new().route(path, post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server {
        base_url: format!("http://{address}"),
        received,
    }
}
