//! The Deepgram live adapter against a local WebSocket server that replays
//! a recorded session from `fixtures/providers/deepgram` and records what the
//! client sent.

// tungstenite's handshake callback returns its (large) error response by value.
#![allow(clippy::result_large_err)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use callingbox_engine::codecs::{MediaTime, PcmFrame, SampleRate};
use callingbox_engine::providers::deepgram::{DeepgramAsr, DeepgramConfig};
use callingbox_engine::providers::{AsrEvent, AsrSession, ProviderError};
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::{Message, http};
use tokio_util::sync::CancellationToken;

const CLOSE_STREAM: &str = r#"{"type":"CloseStream"}"#;
const KEEPALIVE: &str = r#"{"type":"KeepAlive"}"#;
/// Bytes in one 20 ms frame of 16 kHz linear16.
const FRAME_BYTES: usize = 640;
const WAIT: Duration = Duration::from_secs(5);

fn fixture_lines(name: &str) -> Vec<String> {
    let path = format!(
        "{}/../fixtures/providers/deepgram/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path)
        .expect("fixture")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// A 20 ms frame whose every sample is `value`, so the server can tell frames apart.
fn frame(value: i16) -> PcmFrame {
    PcmFrame::new(
        SampleRate::Hz16000,
        MediaTime::from_millis(value as u64 * 20),
        vec![value; 320],
    )
}

fn frame_values(audio: &[u8]) -> Vec<i16> {
    audio
        .chunks(FRAME_BYTES)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

/// The request line and auth header of a handshake.
#[derive(Debug, Clone, Default)]
struct Handshake {
    path: String,
    query: Vec<(String, String)>,
    authorization: Option<String>,
}

impl Handshake {
    fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn handshake(tcp: TcpStream) -> (WebSocketStream<TcpStream>, Handshake) {
    let seen = Arc::new(Mutex::new(Handshake::default()));
    let record = Arc::clone(&seen);
    let callback = move |request: &Request, response: Response| {
        let uri = request.uri();
        let query = url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        *record.lock().expect("record") = Handshake {
            path: uri.path().to_owned(),
            query,
            authorization: request
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        };
        Ok(response)
    };
    let ws = tokio_tungstenite::accept_hdr_async(tcp, callback)
        .await
        .expect("handshake");
    let seen = seen.lock().expect("seen").clone();
    (ws, seen)
}

/// What the server read from one connection.
#[derive(Debug, Default)]
struct Read {
    audio: Vec<u8>,
    texts: Vec<String>,
}

impl Read {
    /// Reads until `done` holds, or the client goes away.
    async fn until(&mut self, ws: &mut WebSocketStream<TcpStream>, done: impl Fn(&Read) -> bool) {
        while !done(self) {
            match tokio::time::timeout(WAIT, ws.next()).await {
                Ok(Some(Ok(Message::Binary(bytes)))) => self.audio.extend_from_slice(&bytes),
                Ok(Some(Ok(Message::Text(text)))) => self.texts.push(text.to_string()),
                Ok(Some(Ok(_))) => {}
                _ => return,
            }
        }
    }
}

fn config(address: std::net::SocketAddr) -> DeepgramConfig {
    let mut config = DeepgramConfig::new("dg-test-key");
    config.base_url = format!("ws://{address}");
    // Long enough that no KeepAlive interleaves unless a test wants one.
    config.keepalive_interval = Duration::from_secs(60);
    config.close_timeout = Duration::from_secs(2);
    config
}

async fn next(session: &mut AsrSession) -> Option<AsrEvent> {
    tokio::time::timeout(WAIT, session.next_event())
        .await
        .expect("an event or the end of the session in time")
}

#[tokio::test]
async fn results_become_interims_and_finals_and_close_stream_flushes_the_last_words() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let (mut ws, handshake) = handshake(tcp).await;
        let mut read = Read::default();
        read.until(&mut ws, |r| r.audio.len() >= 10 * FRAME_BYTES)
            .await;
        for line in fixture_lines("live_session.jsonl") {
            ws.send(Message::text(line)).await.expect("send");
        }
        read.until(&mut ws, |r| r.texts.iter().any(|t| t == CLOSE_STREAM))
            .await;
        for line in fixture_lines("after_close_stream.jsonl") {
            ws.send(Message::text(line)).await.expect("send");
        }
        let _ = ws.close(None).await;
        (handshake, read)
    });

    let asr = DeepgramAsr::new(config(address));
    let cancel = CancellationToken::new();
    let (mut session, outcome) = asr.open_with_outcome(cancel.clone()).expect("open");
    for value in 0..10 {
        session.push_frame(&frame(value)).expect("queued");
    }
    let mut events = Vec::new();
    for _ in 0..5 {
        events.push(next(&mut session).await.expect("an event"));
    }
    assert_eq!(
        events,
        vec![
            AsrEvent::Interim {
                text: "i'd like".into()
            },
            AsrEvent::Interim {
                text: "I'd like to book a table".into()
            },
            AsrEvent::Final {
                text: "I'd like to book a table".into()
            },
            AsrEvent::Interim {
                text: "for two".into()
            },
            AsrEvent::Final {
                text: "for two tonight.".into()
            },
        ]
    );
    // Closing: CloseStream goes out, and the words still in flight arrive.
    cancel.cancel();
    assert_eq!(
        next(&mut session).await,
        Some(AsrEvent::Final {
            text: "Thank you.".into()
        })
    );
    assert_eq!(next(&mut session).await, None);
    assert_eq!(
        tokio::time::timeout(WAIT, outcome.wait())
            .await
            .expect("ends"),
        Ok(())
    );

    let (handshake, read) = server.await.expect("server");
    assert_eq!(handshake.path, "/v1/listen");
    assert_eq!(
        handshake.authorization.as_deref(),
        Some("Token dg-test-key")
    );
    for (name, value) in [
        ("encoding", "linear16"),
        ("sample_rate", "16000"),
        ("channels", "1"),
        ("interim_results", "true"),
        ("endpointing", "300"),
        ("model", "nova-3"),
        ("language", "en"),
    ] {
        assert_eq!(handshake.param(name), Some(value), "query parameter {name}");
    }
    let mut expected = Vec::new();
    for value in 0..10 {
        frame(value).write_le_bytes(&mut expected);
    }
    assert_eq!(read.audio, expected, "the audio arrives as linear16 bytes");
    assert_eq!(read.texts, vec![CLOSE_STREAM.to_owned()]);
}

#[tokio::test]
async fn keepalive_goes_out_while_no_audio_flows() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let (heard_tx, heard_rx) = oneshot::channel();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let (mut ws, _) = handshake(tcp).await;
        let mut read = Read::default();
        read.until(&mut ws, |r| r.texts.len() >= 2).await;
        let _ = heard_tx.send(());
        read.until(&mut ws, |r| r.texts.iter().any(|t| t == CLOSE_STREAM))
            .await;
        let _ = ws.close(None).await;
        read
    });

    let mut config = config(address);
    config.keepalive_interval = Duration::from_millis(50);
    let cancel = CancellationToken::new();
    let (mut session, outcome) = DeepgramAsr::new(config)
        .open_with_outcome(cancel.clone())
        .expect("open");
    tokio::time::timeout(WAIT, heard_rx)
        .await
        .expect("two messages in time")
        .expect("server");
    cancel.cancel();
    assert_eq!(next(&mut session).await, None);
    assert_eq!(outcome.wait().await, Ok(()));

    let read = server.await.expect("server");
    assert!(read.audio.is_empty());
    let (last, keepalives) = read.texts.split_last().expect("texts");
    assert_eq!(last, CLOSE_STREAM);
    assert!(keepalives.len() >= 2);
    assert!(keepalives.iter().all(|t| t == KEEPALIVE), "{keepalives:?}");
}

#[tokio::test]
async fn a_dropped_socket_reconnects_once_with_the_buffered_audio_then_fails() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let live = fixture_lines("live_session.jsonl");
    let (interim, final_result) = (live[1].clone(), live[5].clone());
    let (connecting_tx, connecting_rx) = oneshot::channel();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        // First connection: three frames, one interim, then the socket dies.
        let (tcp, _) = listener.accept().await.expect("accept");
        let (mut ws, first) = handshake(tcp).await;
        let mut read = Read::default();
        read.until(&mut ws, |r| r.audio.len() >= 3 * FRAME_BYTES)
            .await;
        ws.send(Message::text(interim)).await.expect("send");
        ws.flush().await.expect("flush");
        drop(ws);
        let first_audio = frame_values(&read.audio);

        // Second connection: held before the handshake while the test pushes audio.
        let (tcp, _) = listener.accept().await.expect("accept again");
        let _ = connecting_tx.send(());
        go_rx.await.expect("go");
        let (mut ws, second) = handshake(tcp).await;
        let mut read = Read::default();
        read.until(&mut ws, |r| r.audio.len() >= 5 * FRAME_BYTES)
            .await;
        ws.send(Message::text(final_result)).await.expect("send");
        ws.flush().await.expect("flush");
        drop(ws);
        (first, first_audio, second, frame_values(&read.audio))
    });

    let mut config = config(address);
    // Five 20 ms frames.
    config.reconnect_buffer = Duration::from_millis(100);
    let (mut session, outcome) = DeepgramAsr::new(config)
        .open_with_outcome(CancellationToken::new())
        .expect("open");
    for value in 0..3 {
        session.push_frame(&frame(value)).expect("queued");
    }
    assert_eq!(
        next(&mut session).await,
        Some(AsrEvent::Interim {
            text: "i'd like".into()
        })
    );
    tokio::time::timeout(WAIT, connecting_rx)
        .await
        .expect("the client reconnects")
        .expect("server");
    // Eight frames while the socket is down: only the newest five are kept.
    for value in 10..18 {
        session.push_frame(&frame(value)).expect("queued");
    }
    // Lets the session move them from its queue to its reconnect buffer.
    tokio::time::sleep(Duration::from_millis(200)).await;
    go_tx.send(()).expect("go");

    assert_eq!(
        next(&mut session).await,
        Some(AsrEvent::Final {
            text: "for two tonight.".into()
        })
    );
    // The second drop is final: the call hears of it, the events end and
    // the outcome says why.
    let failed = next(&mut session).await;
    assert!(
        matches!(&failed, Some(AsrEvent::Failed { error }) if error.contains("giving up")),
        "{failed:?}"
    );
    assert_eq!(next(&mut session).await, None);
    let Err(ProviderError::Unavailable(reason)) = tokio::time::timeout(WAIT, outcome.wait())
        .await
        .expect("ends")
    else {
        panic!("expected Unavailable");
    };
    assert!(reason.contains("deepgram"), "{reason}");
    assert!(reason.contains("after 1 reconnect"), "{reason}");
    assert_eq!(session.push_frame(&frame(99)), Err(ProviderError::Closed));

    let (first, first_audio, second, second_audio) = server.await.expect("server");
    assert_eq!(first_audio, vec![0, 1, 2]);
    assert_eq!(second_audio, vec![13, 14, 15, 16, 17]);
    assert_eq!(second.authorization.as_deref(), Some("Token dg-test-key"));
    assert_eq!(second.query, first.query);
}

#[tokio::test]
async fn a_refused_key_ends_the_session_with_the_servers_reason() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let callback = |_: &Request, _: Response| -> Result<Response, ErrorResponse> {
            Err(http::Response::builder()
                .status(http::StatusCode::UNAUTHORIZED)
                .header("content-type", "application/json")
                .header("dg-error", "Invalid credentials.")
                .body(Some(
                    r#"{"err_code":"INVALID_AUTH","err_msg":"Invalid credentials.","request_id":"0d6a2b0c-5d0e-4f53-9a77-4d3a1b1e8c2f"}"#
                        .to_owned(),
                ))
                .expect("response"))
        };
        let _ = tokio_tungstenite::accept_hdr_async(tcp, callback).await;
        // A refused key is not retried.
        tokio::time::timeout(Duration::from_millis(300), listener.accept())
            .await
            .is_err()
    });

    let (mut session, outcome) = DeepgramAsr::new(config(address))
        .open_with_outcome(CancellationToken::new())
        .expect("open");
    let Err(ProviderError::BadResponse(reason)) = tokio::time::timeout(WAIT, outcome.wait())
        .await
        .expect("ends")
    else {
        panic!("expected BadResponse");
    };
    assert!(reason.contains("HTTP 401"), "{reason}");
    assert!(reason.contains("Invalid credentials."), "{reason}");
    let failed = next(&mut session).await;
    assert!(
        matches!(&failed, Some(AsrEvent::Failed { error }) if error.contains("HTTP 401")),
        "{failed:?}"
    );
    assert_eq!(next(&mut session).await, None);
    assert!(server.await.expect("server"), "no second attempt");
}

#[tokio::test]
async fn an_unreachable_server_times_out() {
    // A listener that never completes the WebSocket handshake.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let mut config = config(address);
    config.connect_timeout = Duration::from_millis(200);
    let (_session, outcome) = DeepgramAsr::new(config)
        .open_with_outcome(CancellationToken::new())
        .expect("open");
    let Err(ProviderError::Unavailable(reason)) = tokio::time::timeout(WAIT, outcome.wait())
        .await
        .expect("ends")
    else {
        panic!("expected Unavailable");
    };
    assert!(reason.contains("timed out"), "{reason}");
    drop(listener);
}
