//! WebSocket plumbing shared by the cloud speech adapters (ElevenLabs,
//! Cartesia, OpenAI Realtime).

use std::time::Duration;

use base64::Engine as _;
use futures::StreamExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::codecs::{FrameDuration, Framer, PcmFrame, SampleRate};
use crate::providers::ProviderError;

/// An open client socket (TLS or, in tests, plain).
pub(crate) type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Who is on the other end, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vendor {
    ElevenLabs,
    Cartesia,
    OpenAi,
}

impl std::fmt::Display for Vendor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Vendor::ElevenLabs => "ElevenLabs",
            Vendor::Cartesia => "Cartesia",
            Vendor::OpenAi => "OpenAI Realtime",
        })
    }
}

/// The key in `var`, or a clear error naming the variable.
pub(crate) fn api_key_from_env(var: &str) -> Result<String, ProviderError> {
    match std::env::var(var) {
        Ok(key) if !key.trim().is_empty() => Ok(key.trim().to_owned()),
        _ => Err(ProviderError::Unavailable(format!("{var} is not set"))),
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters pass).
pub(crate) fn encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A handshake request for `url`.
pub(crate) fn request(vendor: Vendor, url: &str) -> Result<Request, ProviderError> {
    url.into_client_request()
        .map_err(|e| ProviderError::Unavailable(format!("{vendor}: bad URL {url:?} ({e})")))
}

/// A header value, refusing control characters (a pasted key with a newline).
pub(crate) fn header(vendor: Vendor, value: &str) -> Result<HeaderValue, ProviderError> {
    HeaderValue::from_str(value).map_err(|_| {
        ProviderError::Unavailable(format!("{vendor}: the API key is not a valid header"))
    })
}

/// Opens the socket within `timeout`; a 401/403 answer says the key was
/// refused.
pub(crate) async fn connect(
    vendor: Vendor,
    request: Request,
    timeout: Duration,
) -> Result<Socket, ProviderError> {
    // rustls needs a process-wide crypto provider; this build has ring
    // only. An error means one is installed already, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match tokio::time::timeout(timeout, tokio_tungstenite::connect_async(request)).await {
        Err(_) => Err(ProviderError::Unavailable(format!(
            "{vendor}: no connection within {} ms",
            timeout.as_millis()
        ))),
        Ok(Ok((socket, _response))) => Ok(socket),
        Ok(Err(tungstenite::Error::Http(response))) => {
            let status = response.status();
            let body = response
                .body()
                .as_deref()
                .map(|b| {
                    String::from_utf8_lossy(b)
                        .chars()
                        .take(300)
                        .collect::<String>()
                })
                .unwrap_or_default();
            if status.as_u16() == 401 || status.as_u16() == 403 {
                Err(ProviderError::Unavailable(format!(
                    "{vendor} refused the API key (HTTP {}): {body}",
                    status.as_u16()
                )))
            } else {
                Err(ProviderError::Unavailable(format!(
                    "{vendor} refused the connection (HTTP {}): {body}",
                    status.as_u16()
                )))
            }
        }
        Ok(Err(err)) => Err(socket_error(vendor, &err)),
    }
}

/// A socket failure as a provider error.
pub(crate) fn socket_error(vendor: Vendor, err: &tungstenite::Error) -> ProviderError {
    ProviderError::Unavailable(format!("{vendor}: socket failed ({err})"))
}

/// The next text message, waiting at most `idle` for it. `Ok(None)`:
/// the peer closed normally. A close with an error code is an error
/// carrying the vendor's reason.
pub(crate) async fn next_text(
    vendor: Vendor,
    socket: &mut Socket,
    idle: Duration,
) -> Result<Option<String>, ProviderError> {
    loop {
        let message = match tokio::time::timeout(idle, socket.next()).await {
            Err(_) => {
                return Err(ProviderError::Unavailable(format!(
                    "{vendor}: nothing received for {} ms",
                    idle.as_millis()
                )));
            }
            Ok(None) => return Ok(None),
            Ok(Some(Err(err))) => return Err(socket_error(vendor, &err)),
            Ok(Some(Ok(message))) => message,
        };
        match message {
            Message::Text(text) => return Ok(Some(text.as_str().to_owned())),
            Message::Close(frame) => return close_outcome(vendor, frame),
            // Pings are answered by the socket itself; vendors send no binary.
            _ => {}
        }
    }
}

/// A close frame: normal closes end quietly, others carry the reason.
pub(crate) fn close_outcome(
    vendor: Vendor,
    frame: Option<tungstenite::protocol::CloseFrame>,
) -> Result<Option<String>, ProviderError> {
    match frame {
        None => Ok(None),
        Some(frame) if frame.code == CloseCode::Normal => Ok(None),
        Some(frame) => Err(ProviderError::Unavailable(format!(
            "{vendor} closed the socket ({}): {}",
            u16::from(frame.code),
            frame.reason.as_str()
        ))),
    }
}

/// Base64 PCM16LE chunks of any size in, 20 ms frames out. An odd byte
/// at the end of one chunk waits for the next (vendors cut anywhere).
#[derive(Debug)]
pub(crate) struct PcmAssembler {
    rate: SampleRate,
    framer: Framer,
    odd_byte: Option<u8>,
    bytes: Vec<u8>,
    samples: Vec<i16>,
}

impl PcmAssembler {
    /// An assembler for audio at `rate`; frames start at time zero.
    pub(crate) fn new(rate: SampleRate) -> Self {
        PcmAssembler {
            rate,
            framer: Framer::new(rate, FrameDuration::Ms20),
            odd_byte: None,
            bytes: Vec::with_capacity(16 * 1024),
            samples: Vec::with_capacity(8 * 1024),
        }
    }

    /// Adds one base64 chunk; returns the number of samples it completed.
    pub(crate) fn push_base64(
        &mut self,
        vendor: Vendor,
        data: &str,
    ) -> Result<usize, ProviderError> {
        self.bytes.clear();
        if let Some(byte) = self.odd_byte.take() {
            self.bytes.push(byte);
        }
        base64::engine::general_purpose::STANDARD
            .decode_vec(data, &mut self.bytes)
            .map_err(|e| ProviderError::BadResponse(format!("{vendor}: bad base64 audio ({e})")))?;
        if self.bytes.len() % 2 == 1 {
            self.odd_byte = self.bytes.pop();
        }
        self.samples.clear();
        self.samples.extend(
            self.bytes
                .chunks_exact(2)
                .map(|pair| i16::from_le_bytes([pair[0], pair[1]])),
        );
        self.framer.push(&self.samples);
        Ok(self.samples.len())
    }

    /// The next whole frame, if one is ready.
    pub(crate) fn pop(&mut self) -> Option<PcmFrame> {
        let mut frame = PcmFrame::with_capacity(self.rate, FrameDuration::Ms20);
        self.framer.pop_into(&mut frame).then_some(frame)
    }

    /// The last partial frame, padded with silence (end of the audio).
    pub(crate) fn flush(&mut self) -> Option<PcmFrame> {
        if let Some(frame) = self.pop() {
            return Some(frame);
        }
        self.odd_byte = None;
        let mut frame = PcmFrame::with_capacity(self.rate, FrameDuration::Ms20);
        self.framer.flush_into(&mut frame).then_some(frame)
    }

    /// Forgets pending audio (after an error or an interruption).
    pub(crate) fn clear(&mut self) {
        self.framer.clear();
        self.odd_byte = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_bytes_carry_across_chunks() {
        let mut pcm = PcmAssembler::new(SampleRate::Hz16000);
        let samples: Vec<i16> = (0..330).map(|i| i * 7 - 1000).collect();
        let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let engine = base64::engine::general_purpose::STANDARD;
        // 3 + 500 + rest bytes: both cuts fall inside a sample.
        for chunk in [&bytes[..3], &bytes[3..503], &bytes[503..]] {
            pcm.push_base64(Vendor::Cartesia, &engine.encode(chunk))
                .expect("valid base64");
        }
        let first = pcm.pop().expect("one whole frame");
        assert_eq!(first.samples(), &samples[..320]);
        assert!(pcm.pop().is_none());
        let last = pcm.flush().expect("a padded tail");
        assert_eq!(&last.samples()[..10], &samples[320..]);
        assert!(last.samples()[10..].iter().all(|&s| s == 0));
        assert!(pcm.flush().is_none());
    }

    #[test]
    fn bad_base64_is_an_error_not_a_panic() {
        let mut pcm = PcmAssembler::new(SampleRate::Hz16000);
        assert!(matches!(
            pcm.push_base64(Vendor::ElevenLabs, "not base64!"),
            Err(ProviderError::BadResponse(_))
        ));
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode_query("a b/é"), "a%20b%2F%C3%A9");
        assert_eq!(encode_query("sk_car-1.x~"), "sk_car-1.x~");
    }
}
