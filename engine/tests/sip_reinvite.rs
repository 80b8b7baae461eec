//! Hold and resume on a real call: SIPp (Debian `sip-tester`) does the
//! signalling (`fixtures/sip/uac_hold_resume.xml`: hold by a=sendonly,
//! resume by a=sendrecv on another port, 491 for an offer before the ACK,
//! 488 for an offer without the call's codec); the test owns both media
//! ports, streams recorded speech from the first so the agent answers, and
//! checks where the agent's RTP goes: to the first port before the hold,
//! nowhere while held (though the agent kept talking), to the second port
//! after the resume.
//!
//! Wall-clock time: SIPp is a real process (the re-INVITE rules are tested
//! on virtual time in `transport::sip::reinvite`).

mod common;

use common::sipp::{describe, fixtures, free_port};

use common::scripted_call::{pcmu_media, scripted_conversation};

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callingbox_engine::session::{MediaEvent, MediaWorker};
use callingbox_engine::transport::sip::{
    IncomingCall, SipCallRefused, SipCallSetup, SipConfig, SipEnd, SipEvent, SipServer,
};
use callingbox_engine::transport::spawn_worker;
use callingbox_engine::vad::VadBatch;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

const BOOK_TABLE: &str =
    "I'd like to book a table for four people tomorrow at seven in the evening.";
const REPLY: &str = "Sure, I can book that for you. Let me check what we have for four people tomorrow evening, \
    we have a table at seven by the window, and another one at seven thirty near the bar.";
/// The engine's only RTP port (so the test knows where to stream).
const ENGINE_RTP: u16 = 42_900;

/// The mu-law samples of a WAV file's `data` chunk.
fn wav_data(path: &std::path::Path) -> Vec<u8> {
    let bytes = std::fs::read(path).expect("read the fixture");
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let size = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        let size = size as usize;
        if &bytes[at..at + 4] == b"data" {
            return bytes[at + 8..(at + 8 + size).min(bytes.len())].to_vec();
        }
        at += 8 + size + (size & 1);
    }
    panic!("no data chunk in {}", path.display());
}

/// An even port whose neighbour is free too (RTCP lands there, unread).
fn media_socket() -> StdUdpSocket {
    loop {
        let socket = StdUdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = socket.local_addr().expect("addr").port();
        if port.is_multiple_of(2) && StdUdpSocket::bind(("127.0.0.1", port + 1)).is_ok() {
            socket.set_nonblocking(true).expect("nonblocking");
            return socket;
        }
    }
}

/// Arrival times of the RTP packets (not RTCP) that reach `socket`.
async fn record(socket: Arc<UdpSocket>, log: Arc<Mutex<Vec<Instant>>>) {
    let mut buffer = [0u8; 1_500];
    while let Ok((length, _)) = socket.recv_from(&mut buffer).await {
        // RTP payload types 0-127; RTCP reads as 200-204.
        if length >= 12 && !(200..=204).contains(&buffer[1]) {
            log.lock().expect("log").push(Instant::now());
        }
    }
}

fn count_between(log: &Mutex<Vec<Instant>>, from: Instant, to: Instant) -> usize {
    log.lock()
        .expect("log")
        .iter()
        .filter(|at| **at >= from && **at < to)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_holds_and_resumes_on_a_new_port_and_the_agent_follows() {
    if Command::new("sipp").arg("-v").output().is_err() {
        println!(
            "SKIPPED sipp_holds_and_resumes_on_a_new_port_and_the_agent_follows: `sipp` is not installed (apt-get install sip-tester)"
        );
        return;
    }
    let (events_tx, mut events) = mpsc::unbounded_channel();
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
            tap: None,
        })
    };
    let (worker, _task) = spawn_worker(MediaWorker::new(VadBatch::load_or_fallback(4), None));
    let mut config = SipConfig::new("127.0.0.1:0".parse().expect("addr"));
    config.rtp_ports = ENGINE_RTP..=ENGINE_RTP;
    config.numbers = vec!["1000".into()];
    let server = SipServer::bind(config, worker.clone(), factory)
        .await
        .expect("bind SIP");
    let target = server.local_addr().to_string();
    tokio::spawn(server.run());

    let first = Arc::new(UdpSocket::from_std(media_socket()).expect("socket"));
    let second = Arc::new(UdpSocket::from_std(media_socket()).expect("socket"));
    let (first_port, second_port) = (
        first.local_addr().expect("addr").port(),
        second.local_addr().expect("addr").port(),
    );
    let (at_first, at_second) = (Arc::default(), Arc::default());
    tokio::spawn(record(Arc::clone(&first), Arc::clone(&at_first)));
    tokio::spawn(record(Arc::clone(&second), Arc::clone(&at_second)));

    let sip_port = free_port();
    let sipp = tokio::task::spawn_blocking(move || {
        Command::new("sipp")
            .arg(target)
            .arg("-sf")
            .arg(fixtures("sip").join("uac_hold_resume.xml"))
            .args(["-s", "1000", "-i", "127.0.0.1", "-mi", "127.0.0.1"])
            .args(["-p", &sip_port.to_string()])
            .args(["-key", "rtp_port", &first_port.to_string()])
            .args(["-key", "rtp_port2", &second_port.to_string()])
            .args(["-m", "1", "-nostdin", "-timeout", "40s", "-timeout_error"])
            .output()
            .expect("run sipp")
    });

    // Once answered, the caller says its line from the first port.
    let speech = wav_data(&fixtures("audio").join("statement_book_table.8k.ulaw.wav"));
    let engine_rtp = SocketAddr::from(([127, 0, 0, 1], ENGINE_RTP));
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
            Ok(Some(SipEvent::Answered)) => break,
            Ok(Some(event)) => seen.push(event),
            other => panic!("not answered: {other:?} after {seen:?}"),
        }
    }
    let streamer = {
        let first = Arc::clone(&first);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(20));
            for (index, frame) in speech.chunks(160).enumerate() {
                ticks.tick().await;
                let mut packet = vec![0x80, if index == 0 { 0x80 } else { 0 }];
                packet.extend_from_slice(&(index as u16).to_be_bytes());
                packet.extend_from_slice(&((index as u32) * 160).to_be_bytes());
                packet.extend_from_slice(&0xCA11_E500u32.to_be_bytes());
                packet.extend_from_slice(frame);
                let _ = first.send_to(&packet, engine_rtp).await;
            }
        })
    };

    // Hold, resume and the end, timed as the engine reports them.
    let (mut held_at, mut resumed_at, mut agent_started) = (None, None, None);
    let (reason, rtp) = loop {
        match tokio::time::timeout(Duration::from_secs(30), events.recv()).await {
            Ok(Some(SipEvent::Hold { held: true })) => held_at = Some(Instant::now()),
            Ok(Some(SipEvent::Hold { held: false })) => resumed_at = Some(Instant::now()),
            Ok(Some(SipEvent::Media(MediaEvent::AgentAudioStarted { .. }))) => {
                agent_started.get_or_insert(Instant::now());
            }
            Ok(Some(SipEvent::Ended { reason, rtp })) => break (reason, rtp),
            Ok(Some(event)) => seen.push(event),
            other => panic!("the call did not end: {other:?} after {seen:?}"),
        }
    };
    let ended_at = Instant::now();
    let output = sipp.await.expect("sipp thread");
    streamer.abort();
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert_eq!(
        reason,
        SipEnd::RemoteBye,
        "the call survived hold, 491 and 488"
    );
    let agent_started = agent_started.expect("the agent answered");
    let held_at = held_at.expect("the hold was reported");
    let resumed_at = resumed_at.expect("the resume was reported");
    assert!(agent_started < held_at, "the agent spoke before the hold");

    // Packets already in flight when the hold lands: a few ms on loopback.
    let settle = Duration::from_millis(60);
    let before_hold = count_between(&at_first, agent_started, held_at);
    // The new port is only known from the resume: a packet there right
    // before the test hears of the resume raced that report.
    let during_hold = count_between(&at_first, held_at + settle, resumed_at)
        + count_between(&at_second, held_at + settle, resumed_at - settle);
    let after_resume_first = count_between(&at_first, resumed_at + settle, ended_at);
    let after_resume_second = count_between(&at_second, resumed_at, ended_at);
    println!(
        "agent RTP: {before_hold} before the hold, {during_hold} during it ({} withheld), \
         {after_resume_second} to the new port after the resume, {after_resume_first} to the old; \
         held {:?}",
        rtp.held_dropped,
        resumed_at - held_at
    );
    assert!(
        before_hold >= 10,
        "{before_hold} agent packets before the hold"
    );
    assert_eq!(during_hold, 0, "no agent RTP while held");
    assert!(
        rtp.held_dropped >= 50,
        "the agent kept talking while held: {rtp:?}"
    );
    assert!(
        after_resume_second >= 25,
        "{after_resume_second} agent packets after the resume"
    );
    assert_eq!(
        after_resume_first, 0,
        "the old port gets nothing after the move"
    );
    assert!(resumed_at - held_at >= Duration::from_secs(3));
}
