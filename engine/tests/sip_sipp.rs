//! The SIP transport against a real SIP peer: SIPp (Debian `sip-tester`)
//! calls the engine over 127.0.0.1 and streams recorded fixture speech as
//! PCMU RTP; the engine (SIP UAS, RTP, media worker on a task, VAD, turn
//! machine, agent loop with scripted LLM/TTS/ASR) answers and talks back.
//!
//! These run on wall-clock time: SIPp is a real process. Tests that need
//! SIPp print a SKIPPED line when it is not installed (`./dev setup`
//! installs it).

mod common;

use common::scripted_call::{pcmu_media, scripted_conversation};

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::process::{Command, Output};
use std::time::Duration;

use callingbox_engine::codecs::G711Law;
use callingbox_engine::session::{MediaEvent, MediaWorker};
use callingbox_engine::transport::sip::sdp::CodecKind;
use callingbox_engine::transport::sip::{
    IncomingCall, SipCallRefused, SipCallSetup, SipConfig, SipEnd, SipEvent, SipServer,
};
use callingbox_engine::transport::{WirePacket, WorkerHandle, spawn_worker};
use callingbox_engine::vad::VadBatch;
use tokio::sync::mpsc;

const BOOK_TABLE: &str =
    "I'd like to book a table for four people tomorrow at seven in the evening.";
const REPLY: &str = "Sure, I can book that for you. Let me check what we have for four people tomorrow evening, \
    we have a table at seven by the window, and another one at seven thirty near the bar.";

fn sipp_installed() -> bool {
    Command::new("sipp").arg("-v").output().is_ok()
}

fn skip(test: &str) {
    println!("SKIPPED {test}: `sipp` is not installed (apt-get install sip-tester)");
}

fn fixtures(dir: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fixtures")
        .join(dir)
}

/// A UDP port free right now on 127.0.0.1.
fn free_port() -> u16 {
    let socket = StdUdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("addr").port()
}

struct Engine {
    sip: SocketAddr,
    worker: WorkerHandle,
    events: mpsc::UnboundedReceiver<SipEvent>,
    tapped: mpsc::Receiver<WirePacket>,
}

async fn start_engine(rtp_ports: std::ops::RangeInclusive<u16>, answer_after: Duration) -> Engine {
    let (events_tx, events) = mpsc::unbounded_channel();
    let (tap_tx, tapped) = mpsc::channel(4_096);
    let factory = move |_call: &IncomingCall| {
        let conversation =
            scripted_conversation(&[BOOK_TABLE], &[REPLY]).map_err(|error| SipCallRefused {
                status: 503,
                reason: error.to_string(),
            })?;
        Ok(SipCallSetup {
            media: pcmu_media(),
            link: Some(conversation.link),
            epoch: conversation.epoch,
            events: Some(events_tx.clone()),
            cancel: conversation.cancel,
            tap: Some(tap_tx.clone()),
        })
    };
    let (worker, _task) = spawn_worker(MediaWorker::new(VadBatch::load_or_fallback(4), None));
    let mut config = SipConfig::new("127.0.0.1:0".parse().expect("addr"));
    config.rtp_ports = rtp_ports;
    config.numbers = vec!["1000".into()];
    config.answer_after = answer_after;
    let server = SipServer::bind(config, worker.clone(), factory)
        .await
        .expect("bind SIP");
    let sip = server.local_addr();
    tokio::spawn(server.run());
    Engine {
        sip,
        worker,
        events,
        tapped,
    }
}

/// Runs SIPp as a UAC with `scenario` against the engine; returns its output.
async fn run_sipp(engine: &Engine, scenario: &str) -> Output {
    let scenario = fixtures("sip").join(scenario);
    let target = engine.sip.to_string();
    let (sip_port, media_port) = (free_port(), free_port());
    tokio::task::spawn_blocking(move || {
        Command::new("sipp")
            // rtp_stream paths are relative to the working directory.
            .current_dir(fixtures("audio"))
            .arg(target)
            .arg("-sf")
            .arg(scenario)
            .args(["-s", "1000", "-i", "127.0.0.1", "-mi", "127.0.0.1"])
            .args(["-p", &sip_port.to_string(), "-mp", &media_port.to_string()])
            .args(["-m", "1", "-nostdin", "-timeout", "30s", "-timeout_error"])
            .output()
            .expect("run sipp")
    })
    .await
    .expect("sipp thread")
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The events until the call ended (or `wait` passed).
async fn events_until_ended(
    events: &mut mpsc::UnboundedReceiver<SipEvent>,
    wait: Duration,
) -> Vec<SipEvent> {
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
        let ended = matches!(event, SipEvent::Ended { .. });
        seen.push(event);
        if ended {
            break;
        }
    }
    seen
}

fn rms(codes: &[u8]) -> f64 {
    let mut samples = vec![0i16; codes.len()];
    G711Law::MuLaw.decode(codes, &mut samples).expect("decode");
    let energy: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (energy / samples.len().max(1) as f64).sqrt()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_calls_streams_speech_hears_the_agent_and_hangs_up() {
    if !sipp_installed() {
        skip("sipp_calls_streams_speech_hears_the_agent_and_hangs_up");
        return;
    }
    let mut engine = start_engine(42_000..=42_098, Duration::ZERO).await;
    let output = run_sipp(&engine, "uac_stream.xml").await;
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));

    let events = events_until_ended(&mut engine.events, Duration::from_secs(5)).await;
    let offered = events
        .iter()
        .find_map(|event| match event {
            SipEvent::Ringing(call) => Some(call.media.remote_rtp),
            _ => None,
        })
        .expect("the call rang");
    assert!(events.contains(&SipEvent::Answered), "{events:?}");
    let turn = events.iter().find_map(|event| match event {
        SipEvent::Media(MediaEvent::UserTurnEnded { text, .. }) => Some(text.clone()),
        _ => None,
    });
    assert_eq!(turn.as_deref(), Some(BOOK_TABLE), "{events:?}");
    assert!(
        events
            .iter()
            .any(|event| matches!(event, SipEvent::Media(MediaEvent::AgentAudioStarted { .. }))),
        "{events:?}"
    );
    let Some(SipEvent::Ended { reason, rtp }) = events.last() else {
        panic!("the call did not end: {events:?}");
    };
    assert_eq!(reason, &SipEnd::RemoteBye);
    // The clip is ~4.5 s: ~225 packets of 20 ms; all of it arrived.
    assert!(rtp.audio_received >= 150, "{rtp:?}");
    assert_eq!(rtp.bad_headers + rtp.foreign_source, 0, "{rtp:?}");
    // Symmetric RTP: we sent to where SIPp streams from, its offered port.
    assert_eq!(rtp.peer, Some(offered), "{rtp:?}");
    assert!(rtp.sent >= 25, "the agent spoke at least 0.5 s: {rtp:?}");

    let mut tapped = Vec::new();
    while let Ok(packet) = engine.tapped.try_recv() {
        tapped.push(packet);
    }
    assert_eq!(tapped.len() as u64, rtp.sent);
    let loud = tapped
        .iter()
        .filter(|packet| packet.payload().len() == 160 && rms(packet.payload()) > 300.0)
        .count();
    assert!(
        loud * 2 >= tapped.len(),
        "{loud} of {} agent packets carry sound",
        tapped.len()
    );
    assert_eq!(engine.worker.live_calls(), 0);
    println!(
        "sipp exit 0; RTP in {} packets, out {} packets ({loud} loud), peer {offered}",
        rtp.audio_received, rtp.sent
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_cancels_while_ringing_and_gets_487() {
    if !sipp_installed() {
        skip("sipp_cancels_while_ringing_and_gets_487");
        return;
    }
    let mut engine = start_engine(42_100..=42_198, Duration::from_secs(10)).await;
    let output = run_sipp(&engine, "uac_cancel.xml").await;
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let events = events_until_ended(&mut engine.events, Duration::from_secs(5)).await;
    assert!(
        matches!(events.first(), Some(SipEvent::Ringing(_))),
        "{events:?}"
    );
    // PCMA was offered first: the call was set up for it.
    let Some(SipEvent::Ringing(call)) = events.first() else {
        unreachable!()
    };
    assert_eq!(call.media.codec.kind, CodecKind::Pcma);
    assert!(!events.contains(&SipEvent::Answered), "{events:?}");
    assert!(
        matches!(
            events.last(),
            Some(SipEvent::Ended {
                reason: SipEnd::Canceled,
                ..
            })
        ),
        "{events:?}"
    );
    assert_eq!(engine.worker.live_calls(), 0);
    assert!(
        engine.tapped.try_recv().is_err(),
        "no audio before an answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_key_presses_become_one_digit_each() {
    if !sipp_installed() {
        skip("sipp_key_presses_become_one_digit_each");
        return;
    }
    let mut engine = start_engine(42_300..=42_398, Duration::ZERO).await;
    let output = run_sipp(&engine, "uac_dtmf.xml").await;
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let events = events_until_ended(&mut engine.events, Duration::from_secs(5)).await;
    let digits: String = events
        .iter()
        .filter_map(|event| match event {
            SipEvent::Dtmf { digit } => Some(*digit),
            _ => None,
        })
        .collect();
    assert_eq!(digits, "4#", "{events:?}");
    let Some(SipEvent::Ended { reason, rtp }) = events.last() else {
        panic!("the call did not end: {events:?}");
    };
    assert_eq!(reason, &SipEnd::RemoteBye);
    // Each pcap holds a whole event: start, updates, three end packets.
    assert!(rtp.event_packets >= 6, "{rtp:?}");
    assert_eq!(rtp.digits, 2, "{rtp:?}");
}

/// Sends `bytes` and returns the status line of each reply within `wait`.
async fn exchange(
    socket: &tokio::net::UdpSocket,
    to: SocketAddr,
    bytes: &[u8],
    wait: Duration,
) -> Vec<String> {
    socket.send_to(bytes, to).await.expect("send");
    let mut replies = Vec::new();
    let mut buffer = vec![0u8; 4_096];
    while let Ok(Ok((length, _))) = tokio::time::timeout(wait, socket.recv_from(&mut buffer)).await
    {
        let text = String::from_utf8_lossy(&buffer[..length]).to_string();
        replies.push(text.lines().next().unwrap_or_default().to_owned());
    }
    replies
}

fn request(method: &str, user: &str, branch: &str, call_id: Option<&str>, body: &str) -> String {
    let call_id = call_id
        .map(|id| format!("Call-ID: {id}\r\n"))
        .unwrap_or_default();
    format!(
        "{method} sip:{user}@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK{branch};rport\r\n\
         From: <sip:test@127.0.0.1>;tag=t\r\nTo: <sip:{user}@127.0.0.1>\r\n\
         {call_id}CSeq: 1 {method}\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_sip_gets_400_or_is_dropped_and_the_server_keeps_working() {
    let engine = start_engine(42_200..=42_298, Duration::ZERO).await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let short = Duration::from_millis(300);
    for junk in [
        &b"\x00\xff\x13garbage"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"INVITE sip:1000@127.0.0.1 SIP/2.0\r\nVia: no end of headers",
        &[0x80; 172],
    ] {
        assert!(
            exchange(&socket, engine.sip, junk, short).await.is_empty(),
            "{junk:?} was answered"
        );
    }
    let no_call_id = request("OPTIONS", "1000", "a", None, "");
    assert_eq!(
        exchange(&socket, engine.sip, no_call_id.as_bytes(), short).await,
        vec!["SIP/2.0 400 Missing Call-ID"]
    );
    // A body shorter than its Content-Length: 400 (RFC 3261, 18.3).
    let bad_length = request("OPTIONS", "1000", "b", Some("c1"), "")
        .replace("Content-Length: 0", "Content-Length: 5000");
    assert_eq!(
        exchange(&socket, engine.sip, bad_length.as_bytes(), short).await,
        vec!["SIP/2.0 400 Bad Content-Length"]
    );
    let offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
        m=audio 9 RTP/AVP 0\r\n";
    let wrong_number = request("INVITE", "9999", "c", Some("c2"), offer);
    assert_eq!(
        exchange(&socket, engine.sip, wrong_number.as_bytes(), short).await,
        vec!["SIP/2.0 100 Trying", "SIP/2.0 404 Not Found"]
    );
    let ack = request("ACK", "9999", "c", Some("c2"), "");
    assert!(
        exchange(&socket, engine.sip, ack.as_bytes(), short)
            .await
            .is_empty()
    );
    let opus = offer.replace("RTP/AVP 0", "RTP/AVP 96");
    let no_codec = request("INVITE", "1000", "d", Some("c3"), &opus);
    assert_eq!(
        exchange(&socket, engine.sip, no_codec.as_bytes(), short).await,
        vec!["SIP/2.0 100 Trying", "SIP/2.0 488 Not Acceptable Here"]
    );
    let ack = request("ACK", "1000", "d", Some("c3"), "");
    assert!(
        exchange(&socket, engine.sip, ack.as_bytes(), short)
            .await
            .is_empty()
    );
    let options = request("OPTIONS", "1000", "e", Some("c4"), "");
    assert_eq!(
        exchange(&socket, engine.sip, options.as_bytes(), short).await,
        vec!["SIP/2.0 200 OK"]
    );
}
