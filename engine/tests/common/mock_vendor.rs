//! A local WebSocket server standing in for a speech vendor, shared by the
//! provider tests: it records the handshake, forwards what the client sends
//! (parsed JSON) to the test, and sends what the test tells it to.

use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

/// The client's handshake as the server saw it.
#[derive(Debug)]
pub struct Handshake {
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
}

impl Handshake {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub enum ServerCommand {
    Send(String),
    Close(u16, String),
    /// Drops the TCP connection without a closing handshake.
    Vanish,
}

pub struct MockVendor {
    pub url: String,
    pub handshake: oneshot::Receiver<Handshake>,
    pub commands: mpsc::UnboundedSender<ServerCommand>,
    pub received: mpsc::UnboundedReceiver<serde_json::Value>,
}

impl MockVendor {
    /// A server that accepts one client, or refuses it with `refuse_status`.
    pub async fn start(refuse_status: Option<u16>) -> MockVendor {
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

    pub fn send_lines(&self, lines: &[String]) {
        for line in lines {
            let _ = self.commands.send(ServerCommand::Send(line.clone()));
        }
    }

    pub fn close(&self, code: u16, reason: &str) {
        let _ = self
            .commands
            .send(ServerCommand::Close(code, reason.to_owned()));
    }

    pub fn vanish(&self) {
        let _ = self.commands.send(ServerCommand::Vanish);
    }

    /// The next message the client sent (fails the test after 5 s).
    pub async fn next_from_client(&mut self) -> serde_json::Value {
        tokio::time::timeout(std::time::Duration::from_secs(5), self.received.recv())
            .await
            .expect("the client sent nothing for 5 s")
            .expect("the connection ended")
    }

    pub async fn handshake(&mut self) -> Handshake {
        tokio::time::timeout(std::time::Duration::from_secs(5), &mut self.handshake)
            .await
            .expect("no handshake within 5 s")
            .expect("handshake seen")
    }
}

/// The lines of a committed vendor session.
pub fn fixture(path: &str) -> Vec<String> {
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
