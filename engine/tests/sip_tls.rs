//! SIP over TLS (RFC 3261 26.2): a rustls client (the crate the engine
//! uses, but as a client, with the engine's self-signed certificate as its
//! only root) calls the engine's TLS listener: INVITE, 100, 180, 200 with
//! `;transport=tls` in the Contact, ACK, the call goes live, BYE, 200. The
//! certificate is made for the test by the `openssl` command (skipped with
//! a message where it is missing). SIPp from Debian is built without TLS,
//! so it cannot be the peer here.

mod common;

use common::scripted_call::{pcmu_media, scripted_conversation};

use std::net::UdpSocket as StdUdpSocket;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use callingbox_engine::session::MediaWorker;
use callingbox_engine::transport::sip::message::SipMessage;
use callingbox_engine::transport::sip::tcp::{SipTls, StreamFramer};
use callingbox_engine::transport::sip::{
    IncomingCall, SipCallRefused, SipCallSetup, SipConfig, SipEnd, SipEvent, SipServer,
};
use callingbox_engine::transport::spawn_worker;
use callingbox_engine::vad::VadBatch;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Reads framed messages until one whose status is `status`.
async fn until_status<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    framer: &mut StreamFramer,
    status: u16,
) -> SipMessage {
    let mut buffer = [0u8; 4_096];
    loop {
        while let Some(bytes) = framer.next_message().expect("framed") {
            let message = SipMessage::parse(&bytes).expect("a SIP message");
            if message.status() == Some(status) {
                return message;
            }
        }
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .expect("a response in time")
            .expect("read");
        assert!(read > 0, "the engine closed the connection");
        framer.push(&buffer[..read]);
    }
}

fn request(method: &str, cseq: u32, to_tag: Option<&str>, local: &str, body: &str) -> String {
    let to_tag = to_tag.map(|tag| format!(";tag={tag}")).unwrap_or_default();
    let content_type = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    format!(
        "{method} sip:1000@localhost SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bKtls{cseq}{method}\r\n\
         From: <sips:caller@localhost>;tag=tlscaller\r\nTo: <sips:1000@localhost>{to_tag}\r\n\
         Call-ID: tls-call\r\nCSeq: {cseq} {method}\r\nContact: <sip:caller@{local};transport=tls>\r\n\
         Max-Forwards: 70\r\n{content_type}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_caller_is_answered_and_hangs_up_over_its_connection() {
    let dir = std::env::temp_dir().join(format!("callingbox-sip-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    // A self-signed server certificate (not a CA: webpki refuses a CA as
    // the end entity), for localhost and 127.0.0.1.
    let openssl_config = dir.join("openssl.cnf");
    std::fs::write(
        &openssl_config,
        "[req]\ndistinguished_name = dn\nx509_extensions = leaf\nprompt = no\n\
         [dn]\nCN = localhost\n[leaf]\nbasicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\nextendedKeyUsage = serverAuth\n\
         subjectAltName = DNS:localhost, IP:127.0.0.1\n",
    )
    .expect("openssl config");
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1"])
        .arg("-config")
        .arg(&openssl_config)
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    if !made.as_ref().is_ok_and(|output| output.status.success()) {
        println!(
            "SKIPPED a_tls_caller_is_answered_and_hangs_up_over_its_connection: `openssl` could not make a certificate: {made:?}"
        );
        return;
    }

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let factory = move |_call: &IncomingCall| {
        let conversation =
            scripted_conversation(&["Hello."], &["Hi."]).map_err(|error| SipCallRefused {
                status: 503,
                reason: error.to_string(),
            })?;
        Ok(SipCallSetup {
            media: pcmu_media(),
            link: Some(conversation.link),
            epoch: conversation.epoch,
            events: Some(events_tx.clone()),
            cancel: conversation.cancel,
            tap: None,
        })
    };
    let (worker, _task) = spawn_worker(MediaWorker::new(VadBatch::load_or_fallback(2), None));
    let mut config = SipConfig::new("127.0.0.1:0".parse().expect("addr"));
    config.rtp_ports = 43_300..=43_310;
    config.numbers = vec!["1000".into()];
    config.tls = Some(SipTls {
        bind: "127.0.0.1:0".parse().expect("addr"),
        certificate: cert.clone(),
        private_key: key.clone(),
    });
    let server = SipServer::bind(config, worker, factory)
        .await
        .expect("bind SIP with TLS");
    let tls_addr = server.tls_addr().expect("a TLS listener");
    tokio::spawn(server.run());

    // The client trusts exactly the engine's certificate.
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(&cert).expect("pem") {
        roots
            .add(certificate.expect("a certificate"))
            .expect("a root");
    }
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = TcpStream::connect(tls_addr).await.expect("connect");
    let local = tcp.local_addr().expect("addr").to_string();
    let mut stream = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("the TLS handshake verifies the engine's certificate");

    let media = StdUdpSocket::bind("127.0.0.1:0").expect("media socket");
    let sdp = format!(
        "v=0\r\no=c 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
        media.local_addr().expect("addr").port()
    );
    let mut framer = StreamFramer::new();
    stream
        .write_all(request("INVITE", 1, None, &local, &sdp).as_bytes())
        .await
        .expect("send INVITE");
    let ok = until_status(&mut stream, &mut framer, 200).await;
    let contact = ok.header("contact").expect("a Contact");
    assert!(contact.ends_with(";transport=tls>"), "{contact}");
    assert!(ok.body.contains("m=audio "), "{}", ok.body);
    let tag = ok.to_tag().expect("a To tag").to_owned();
    stream
        .write_all(request("ACK", 1, Some(&tag), &local, "").as_bytes())
        .await
        .expect("send ACK");
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Some(SipEvent::Answered)) => break,
            Ok(Some(_)) => {}
            other => panic!("not answered: {other:?}"),
        }
    }
    stream
        .write_all(request("BYE", 2, Some(&tag), &local, "").as_bytes())
        .await
        .expect("send BYE");
    let bye_ok = until_status(&mut stream, &mut framer, 200).await;
    assert_eq!(bye_ok.cseq(), Some((2, "BYE")));
    let reason = loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Some(SipEvent::Ended { reason, .. })) => break reason,
            Ok(Some(_)) => {}
            other => panic!("not ended: {other:?}"),
        }
    };
    assert_eq!(reason, SipEnd::RemoteBye);
    let _ = std::fs::remove_dir_all(&dir);
}
