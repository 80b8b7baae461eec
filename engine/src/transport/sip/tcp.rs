//! SIP over TCP (RFC 3261 section 18): a listener beside the UDP socket.
//!
//! A stream carries messages back to back, so [`StreamFramer`] cuts them
//! out by their `Content-Length` (mandatory on streams, RFC 3261 18.3),
//! skipping the CRLF keep-alives between them (RFC 5626 4.4.1); a message
//! without a usable length, or larger than [`MESSAGE_MAX`], closes the
//! connection (there is no way to find the next one). [`serve_connection`]
//! runs one accepted connection: framed messages go to the SIP driver,
//! which answers on the same connection (RFC 3261 18.2.2: responses go
//! back over the connection the request came on) and sends the dialog's
//! later requests (BYE, refreshes) over it while it stays open.
//!
//! Over TCP our Via says `SIP/2.0/TCP` and our Contact `;transport=tcp`
//! (the [`uas`](super::uas) reads the transport off the INVITE's Via).
//!
//! TLS (RFC 3261 26.2) is the same stream under rustls, on its own port
//! when a certificate and key are configured ([`SipTls`], [`tls_acceptor`]):
//! `SIP/2.0/TLS` and `;transport=tls`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

/// SIP over TLS: where to listen, and our certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipTls {
    /// The TLS listener's address (port 5061 by convention).
    pub bind: SocketAddr,
    /// The certificate chain, PEM (ours first).
    pub certificate: PathBuf,
    /// The certificate's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PathBuf,
}

/// The TLS server side for `tls`'s certificate and key (rustls on ring,
/// TLS 1.2 and 1.3).
pub fn tls_acceptor(tls: &SipTls) -> std::io::Result<TlsAcceptor> {
    let invalid = |what: &str, error: &dyn std::fmt::Display| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("SIP TLS {what}: {error}"),
        )
    };
    let chain = CertificateDer::pem_file_iter(&tls.certificate)
        .map_err(|error| invalid("certificate", &error))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid("certificate", &error))?;
    if chain.is_empty() {
        return Err(invalid("certificate", &"no certificate in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.private_key)
        .map_err(|error| invalid("private key", &error))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| invalid("protocols", &error))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| invalid("certificate and key", &error))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The largest message taken from a stream (headers and body).
pub const MESSAGE_MAX: usize = 64 * 1024;

/// Why a stream cannot be read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    /// Headers or body past [`MESSAGE_MAX`].
    #[error("SIP message larger than {MESSAGE_MAX} bytes on a stream")]
    TooLarge,
    /// No `Content-Length`, or not a number.
    #[error("SIP message without a usable Content-Length on a stream")]
    BadContentLength,
}

/// Cuts SIP messages out of a byte stream, sans-IO.
#[derive(Debug, Default)]
pub struct StreamFramer {
    buffer: Vec<u8>,
}

impl StreamFramer {
    /// An empty framer.
    pub fn new() -> Self {
        StreamFramer::default()
    }

    /// Bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The next whole message, `None` until one is complete.
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let keep_alive = self
            .buffer
            .iter()
            .take_while(|&&byte| byte == b'\r' || byte == b'\n')
            .count();
        self.buffer.drain(..keep_alive);
        let Some(head_end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
            if self.buffer.len() > MESSAGE_MAX {
                return Err(FrameError::TooLarge);
            }
            return Ok(None);
        };
        let head = std::str::from_utf8(&self.buffer[..head_end])
            .map_err(|_| FrameError::BadContentLength)?;
        let length = head
            .split("\r\n")
            .skip(1)
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                let name = name.trim();
                (name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l"))
                    .then(|| value.trim().parse::<usize>().ok())
            })
            .flatten()
            .ok_or(FrameError::BadContentLength)?;
        let total = head_end + 4 + length;
        if total > MESSAGE_MAX {
            return Err(FrameError::TooLarge);
        }
        if self.buffer.len() < total {
            return Ok(None);
        }
        Ok(Some(self.buffer.drain(..total).collect()))
    }
}

/// What a connection tells the SIP driver.
#[derive(Debug)]
pub enum TcpInbound {
    /// A whole SIP message from `from`.
    Message {
        /// The connection's peer.
        from: SocketAddr,
        /// The message.
        bytes: Vec<u8>,
    },
    /// The connection to `from` is closed (its sender is dropped).
    Closed {
        /// The connection's peer.
        from: SocketAddr,
    },
}

/// Runs one connection (TCP, or TLS over it) until the peer closes it, a
/// read fails, the stream cannot be framed, or the driver drops `outbound`.
pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    inbound: mpsc::UnboundedSender<TcpInbound>,
    mut outbound: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let mut framer = StreamFramer::new();
    let mut buffer = vec![0u8; 16 * 1024];
    'connection: loop {
        tokio::select! {
            read = stream.read(&mut buffer) => match read {
                Ok(0) | Err(_) => break,
                Ok(length) => {
                    framer.push(&buffer[..length]);
                    loop {
                        match framer.next_message() {
                            Ok(Some(bytes)) => {
                                if inbound.send(TcpInbound::Message { from: peer, bytes }).is_err() {
                                    break 'connection;
                                }
                            }
                            Ok(None) => break,
                            Err(_) => break 'connection,
                        }
                    }
                }
            },
            message = outbound.recv() => match message {
                Some(bytes) => {
                    if stream.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
        }
    }
    let _ = inbound.send(TcpInbound::Closed { from: peer });
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:1000@x SIP/2.0\r\nVia: SIP/2.0/TCP 1.2.3.4;branch=z9hG4bK1\r\n\
        Content-Length: 5\r\n\r\nhello";
    const BYE: &str = "BYE sip:1000@x SIP/2.0\r\nl: 0\r\n\r\n";

    #[test]
    fn messages_are_cut_by_content_length_across_reads() {
        let mut framer = StreamFramer::new();
        let stream = format!("\r\n\r\n{INVITE}{BYE}\r\n");
        // Byte by byte: a message only once it is whole.
        let mut messages = Vec::new();
        for byte in stream.as_bytes() {
            framer.push(&[*byte]);
            while let Some(message) = framer.next_message().expect("valid") {
                messages.push(String::from_utf8(message).expect("utf-8"));
            }
        }
        assert_eq!(messages, vec![INVITE.to_owned(), BYE.to_owned()]);
        // All at once: the same.
        let mut framer = StreamFramer::new();
        framer.push(stream.as_bytes());
        assert_eq!(framer.next_message(), Ok(Some(INVITE.as_bytes().to_vec())));
        assert_eq!(framer.next_message(), Ok(Some(BYE.as_bytes().to_vec())));
        assert_eq!(framer.next_message(), Ok(None));
    }

    #[test]
    fn garbage_and_mutated_streams_never_panic() {
        let stream = format!("{INVITE}{BYE}");
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut random = move || {
            seed ^= seed >> 12;
            seed ^= seed << 25;
            seed ^= seed >> 27;
            seed.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        for round in 0..2_000 {
            let mut bytes = stream.as_bytes().to_vec();
            for _ in 0..(round % 8) + 1 {
                let at = (random() as usize) % bytes.len();
                bytes[at] = random() as u8;
            }
            bytes.truncate((random() as usize) % (bytes.len() + 1));
            let mut framer = StreamFramer::new();
            for chunk in bytes.chunks(1 + (random() as usize) % 40) {
                framer.push(chunk);
                while let Ok(Some(message)) = framer.next_message() {
                    assert!(message.len() <= MESSAGE_MAX);
                }
            }
        }
    }

    #[test]
    fn unframeable_streams_are_errors() {
        let mut framer = StreamFramer::new();
        framer.push(b"OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/TCP a\r\n\r\n");
        assert_eq!(framer.next_message(), Err(FrameError::BadContentLength));
        let mut framer = StreamFramer::new();
        framer.push(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: lots\r\n\r\n");
        assert_eq!(framer.next_message(), Err(FrameError::BadContentLength));
        let mut framer = StreamFramer::new();
        framer.push(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 99999999\r\n\r\n");
        assert_eq!(framer.next_message(), Err(FrameError::TooLarge));
        let mut framer = StreamFramer::new();
        framer.push(&vec![b'a'; MESSAGE_MAX + 1]);
        assert_eq!(framer.next_message(), Err(FrameError::TooLarge));
    }

    #[test]
    fn a_call_over_tcp_gets_a_tcp_contact_and_tcp_via_on_our_requests() {
        use crate::clock::Instant;
        use crate::transport::sip::message::SipMessage;
        use crate::transport::sip::uas::{SipUas, UasConfig, UasOutput};
        let mut uas = SipUas::new(UasConfig::new("192.0.2.1:5060".parse().expect("addr")), 3);
        let peer: SocketAddr = "192.0.2.10:40123".parse().expect("addr");
        let body = "v=0\r\nc=IN IP4 192.0.2.10\r\nm=audio 6000 RTP/AVP 0\r\n";
        let invite = format!(
            "INVITE sip:1000@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/TCP 192.0.2.10:40123;branch=z9hG4bKt\r\n\
             From: <sip:a@192.0.2.10>;tag=a\r\nTo: <sip:1000@192.0.2.1>\r\nCall-ID: tcp\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:a@192.0.2.10:40123;transport=tcp>\r\nMax-Forwards: 70\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        uas.handle_datagram(Instant::ZERO, peer, invite.as_bytes());
        let mut call = None;
        while let Some(output) = uas.poll_output() {
            if let UasOutput::Incoming(incoming) = output {
                call = Some(incoming.call);
            }
        }
        let call = call.expect("a call");
        uas.accept(
            Instant::ZERO,
            call,
            "192.0.2.1:40000".parse().expect("addr"),
        )
        .expect("accept");
        uas.hang_up(Instant::ZERO, call).expect("hang up");
        let mut sent = Vec::new();
        while let Some(output) = uas.poll_output() {
            if let UasOutput::Transmit { to, bytes } = output {
                assert_eq!(to, peer, "back where the request came from");
                sent.push(SipMessage::parse(&bytes).expect("valid"));
            }
        }
        let ok = sent
            .iter()
            .find(|m| m.status() == Some(200))
            .expect("a 200");
        assert_eq!(
            ok.header("contact"),
            Some("<sip:callingbox@192.0.2.1:5060;transport=tcp>")
        );
        let bye = sent
            .iter()
            .find(|m| m.method() == Some("BYE"))
            .expect("a BYE");
        assert!(
            bye.header("via")
                .is_some_and(|via| via.starts_with("SIP/2.0/TCP ")),
            "{:?}",
            bye.header("via")
        );
    }
}
