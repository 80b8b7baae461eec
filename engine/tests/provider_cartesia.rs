//! The Cartesia adapter against a local server playing a recorded-shape
//! session (`fixtures/providers/cartesia/`): the request, the frames, the
//! cancel on drop, and how failures surface.

use std::time::Duration;

use callingbox_engine::codecs::{MediaTime, SampleRate};
use callingbox_engine::providers::cartesia::{CartesiaConfig, CartesiaTts};
use callingbox_engine::providers::{ProviderError, TtsProvider};

// ---------------------------------------------------------------- mock vendor
// A local WebSocket server standing in for the vendor: it records the
// handshake, forwards what the client sends (parsed JSON) to the test, and
// sends what the test tells it to.

use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// The client's handshake as the server saw it.
#[allow(dead_code)] // each provider test uses part of the mock
#[derive(Debug)]
struct Handshake {
    path_and_query: String,
    headers: Vec<(String, String)>,
}

#[allow(dead_code)]
impl Handshake {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[allow(dead_code)]
enum ServerCommand {
    Send(String),
    Close(u16, String),
    /// Drops the TCP connection without a closing handshake.
    Vanish,
}

struct MockVendor {
    url: String,
    handshake: oneshot::Receiver<Handshake>,
    commands: mpsc::UnboundedSender<ServerCommand>,
    received: mpsc::UnboundedReceiver<serde_json::Value>,
}

#[allow(dead_code)]
impl MockVendor {
    /// A server that accepts one client, or refuses it with `refuse_status`.
    async fn start(refuse_status: Option<u16>) -> MockVendor {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}", listener.local_addr().expect("address"));
        let (handshake_tx, handshake_rx) = oneshot::channel();
        let (commands_tx, mut commands_rx) = mpsc::unbounded_channel();
        let (received_tx, received_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            // The signature is tungstenite's; its error type is large by design.
            #[allow(clippy::result_large_err)]
            let callback = move |request: &Request, response: Response| {
                let _ = handshake_tx.send(Handshake {
                    path_and_query: request
                        .uri()
                        .path_and_query()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or_default(),
                    headers: request
                        .headers()
                        .iter()
                        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
                        .collect(),
                });
                match refuse_status {
                    None => Ok(response),
                    Some(status) => {
                        let mut refusal =
                            ErrorResponse::new(Some(r#"{"detail":"Invalid API key"}"#.to_owned()));
                        *refusal.status_mut() =
                            tokio_tungstenite::tungstenite::http::StatusCode::from_u16(status)
                                .expect("status");
                        Err(refusal)
                    }
                }
            };
            let Ok(socket) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                return;
            };
            let (mut sink, mut stream) = socket.split();
            loop {
                tokio::select! {
                    command = commands_rx.recv() => match command {
                        Some(ServerCommand::Send(text)) => {
                            if sink.send(Message::text(text)).await.is_err() { break }
                        }
                        Some(ServerCommand::Close(code, reason)) => {
                            let frame = CloseFrame { code: code.into(), reason: reason.into() };
                            let _ = sink.send(Message::Close(Some(frame))).await;
                        }
                        Some(ServerCommand::Vanish) | None => break,
                    },
                    message = stream.next() => match message {
                        Some(Ok(Message::Text(text))) => {
                            let value = serde_json::from_str(text.as_str())
                                .unwrap_or(serde_json::Value::String(text.as_str().to_owned()));
                            let _ = received_tx.send(value);
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                }
            }
        });
        MockVendor {
            url,
            handshake: handshake_rx,
            commands: commands_tx,
            received: received_rx,
        }
    }

    fn send_lines(&self, lines: &[String]) {
        for line in lines {
            let _ = self.commands.send(ServerCommand::Send(line.clone()));
        }
    }

    fn close(&self, code: u16, reason: &str) {
        let _ = self
            .commands
            .send(ServerCommand::Close(code, reason.to_owned()));
    }

    fn vanish(&self) {
        let _ = self.commands.send(ServerCommand::Vanish);
    }

    /// The next message the client sent (fails the test after 5 s).
    async fn next_from_client(&mut self) -> serde_json::Value {
        tokio::time::timeout(std::time::Duration::from_secs(5), self.received.recv())
            .await
            .expect("the client sent nothing for 5 s")
            .expect("the connection ended")
    }

    async fn handshake(&mut self) -> Handshake {
        tokio::time::timeout(std::time::Duration::from_secs(5), &mut self.handshake)
            .await
            .expect("no handshake within 5 s")
            .expect("handshake seen")
    }
}

/// The lines of a committed vendor session.
fn fixture(path: &str) -> Vec<String> {
    let full = format!(
        "{}/../fixtures/providers/{path}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&full)
        .unwrap_or_else(|e| panic!("{full}: {e}"))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Samples in the base64 audio field `field` of these lines.
fn fixture_samples(lines: &[String], field: &str) -> usize {
    use base64::Engine as _;
    lines
        .iter()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let data = v[field].as_str()?.to_owned();
            Some(
                base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .ok()?
                    .len()
                    / 2,
            )
        })
        .sum()
}

fn config(url: &str, language: &str) -> CartesiaConfig {
    let mut config = CartesiaConfig::new("sk_car_test", "voice-es-1", language);
    config.base_url = url.to_owned();
    config.idle_timeout = Duration::from_secs(3);
    config
}

type Frames = Vec<Result<callingbox_engine::codecs::PcmFrame, ProviderError>>;

fn collect(tts: &CartesiaTts, text: &str) -> tokio::task::JoinHandle<Frames> {
    let stream = tts.synthesize(text);
    tokio::spawn(async move { stream.collect::<Vec<_>>().await })
}

/// The session's lines addressed to the client's context.
fn for_context(lines: &[String], context_id: &str) -> Vec<String> {
    lines
        .iter()
        .map(|l| l.replace("CONTEXT_ID", context_id))
        .collect()
}

#[tokio::test]
async fn speaks_a_clause_in_20_ms_frames() {
    let mut vendor = MockVendor::start(None).await;
    let tts = CartesiaTts::new(config(&vendor.url, "es"));
    assert_eq!(tts.sample_rate(), SampleRate::Hz16000);
    let frames = collect(&tts, " Buenos días. ");

    let handshake = vendor.handshake().await;
    assert_eq!(
        handshake.path_and_query,
        "/tts/websocket?api_key=sk_car_test&cartesia_version=2024-11-13"
    );
    let request = vendor.next_from_client().await;
    let context_id = request["context_id"]
        .as_str()
        .expect("a context id")
        .to_owned();
    assert!(!context_id.is_empty());
    assert_eq!(
        request,
        serde_json::json!({
            "model_id": "sonic-2",
            "transcript": "Buenos días.",
            "voice": {"mode": "id", "id": "voice-es-1"},
            "language": "es",
            "context_id": context_id,
            "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000},
            "continue": false,
        })
    );

    let session = for_context(&fixture("cartesia/hello.jsonl"), &context_id);
    vendor.send_lines(&session);
    let frames: Vec<_> = frames
        .await
        .expect("task")
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("no error");
    // 7500 samples: 23 whole frames and a padded one (440 ms, 468.75 ms of audio).
    let samples = fixture_samples(&session, "data");
    assert_eq!(samples, 7500);
    assert_eq!(frames.len(), 24);
    assert!(frames.iter().all(|f| f.len() == 320));
    assert_eq!(
        frames.last().expect("frames").end(),
        MediaTime::from_millis(480)
    );
    let last = frames.last().expect("frames");
    assert!(last.samples()[140..].iter().all(|&s| s == 0));
    // `done` ended the stream by itself: no cancel follows.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(vendor.received.try_recv().is_err(), "nothing after `done`");
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_context() {
    use futures::StreamExt as _;
    let mut vendor = MockVendor::start(None).await;
    let tts = CartesiaTts::new(config(&vendor.url, "en"));
    let mut stream = tts.synthesize("A long answer the caller will interrupt.");
    let (first_tx, first_rx) = oneshot::channel();
    let consumer = tokio::spawn(async move {
        let first = stream.next().await;
        let _ = first_tx.send(first.map(|f| f.is_ok()));
        // The barge-in: the engine drops the stream mid-clause.
        drop(stream);
    });
    let request = vendor.next_from_client().await;
    let context_id = request["context_id"].as_str().expect("context").to_owned();
    let session = for_context(&fixture("cartesia/hello.jsonl"), &context_id);
    vendor.send_lines(&session[..2]);
    assert_eq!(first_rx.await.expect("first frame"), Some(true));
    consumer.await.expect("consumer");
    let cancel = vendor.next_from_client().await;
    assert_eq!(
        cancel,
        serde_json::json!({"context_id": context_id, "cancel": true})
    );
}

#[tokio::test]
async fn a_vendor_error_message_is_a_clear_error() {
    let mut vendor = MockVendor::start(None).await;
    let tts = CartesiaTts::new(config(&vendor.url, "en"));
    let frames = collect(&tts, "Hello.");
    let context_id = vendor.next_from_client().await["context_id"]
        .as_str()
        .expect("context")
        .to_owned();
    vendor.send_lines(&for_context(
        &fixture("cartesia/invalid_voice.jsonl"),
        &context_id,
    ));
    let frames = frames.await.expect("task");
    match frames.as_slice() {
        [Err(ProviderError::BadResponse(text))] => {
            assert!(text.contains("status 400"), "{text}");
            assert!(text.contains("Invalid voice ID"), "{text}");
        }
        other => panic!("expected a vendor error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_refused_key_is_reported_at_the_handshake() {
    let vendor = MockVendor::start(Some(401)).await;
    let tts = CartesiaTts::new(config(&vendor.url, "en"));
    let frames = collect(&tts, "Hello.").await.expect("task");
    match frames.as_slice() {
        [Err(ProviderError::Unavailable(text))] => {
            assert!(
                text.contains("Cartesia refused the API key (HTTP 401)"),
                "{text}"
            )
        }
        other => panic!("expected one 401 error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_socket_closed_mid_stream_is_an_error_not_a_hang() {
    let mut vendor = MockVendor::start(None).await;
    let tts = CartesiaTts::new(config(&vendor.url, "en"));
    let frames = collect(&tts, "Hello.");
    let context_id = vendor.next_from_client().await["context_id"]
        .as_str()
        .expect("context")
        .to_owned();
    // 1600 samples = 5 whole frames, then a server-side close with a reason.
    vendor.send_lines(&for_context(&fixture("cartesia/hello.jsonl"), &context_id)[..1]);
    vendor.close(1011, "internal error");
    let frames = tokio::time::timeout(Duration::from_secs(5), frames)
        .await
        .expect("the stream ends")
        .expect("task");
    assert_eq!(frames.iter().filter(|f| f.is_ok()).count(), 5);
    match frames.last() {
        Some(Err(ProviderError::Unavailable(text))) => {
            assert!(
                text.contains("1011") && text.contains("internal error"),
                "{text}"
            )
        }
        other => panic!("expected a close error, got {other:?}"),
    }
}
