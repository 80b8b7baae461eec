//! Answering-machine detection on outbound SIP calls, end to end on
//! 127.0.0.1: SIPp (Debian `sip-tester`) answers with
//! `fixtures/sip/uas_voicemail.xml` and waits for our BYE; the callee's
//! media is the test's RTP endpoint (the scenario's SDP points at it), which
//! streams a recorded voicemail greeting (with its 1 kHz beep) or a human
//! "Hello?" as PCMU in real time and records every packet the engine sends.
//!
//! Wall-clock time: SIPp is a real process. Skipped, with a SKIPPED line,
//! when SIPp is not installed.

mod common;

use common::scripted_call::{pcmu_media, scripted_conversation};

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callingbox_engine::amd::{AnsweredBy, AnsweringMachineConfig, MachineAction, MessageCue};
use callingbox_engine::codecs::{G711Law, read_wav};
use callingbox_engine::session::{MediaEvent, MediaWorker};
use callingbox_engine::transport::comfort_silence::silence_frame;
use callingbox_engine::transport::rtp::parse_rtp;
use callingbox_engine::transport::sip::sdp::CodecKind;
use callingbox_engine::transport::sip::{
    IncomingCall, OutboundCall, Route, SipCallRefused, SipCallSetup, SipConfig, SipDialer, SipEnd,
    SipEvent, SipServer, SipTrunk,
};
use callingbox_engine::transport::spawn_worker;
use callingbox_engine::turns::HangupReason;
use callingbox_engine::vad::VadBatch;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

const MESSAGE: &str = "Hi Sam, this is the clinic about your appointment, please call us back.";

fn sipp_installed() -> bool {
    Command::new("sipp").arg("-v").output().is_ok()
}

fn fixtures(dir: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("fixtures")
        .join(dir)
}

fn manifest_beep_ms(id: &str) -> (u64, u64) {
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures("audio").join("manifest.json")).expect("manifest"),
    )
    .expect("manifest json");
    let entry = manifest["utterances"]
        .as_array()
        .expect("utterances")
        .iter()
        .find(|u| u["id"] == id)
        .expect("in the manifest");
    let beep = entry["beep_ms"].as_array().expect("a beep");
    (beep[0].as_u64().expect("ms"), beep[1].as_u64().expect("ms"))
}

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .expect("a free port")
        .port()
}

async fn start_caller(rtp_port: u16) -> SipDialer {
    let (worker, _task) = spawn_worker(MediaWorker::new(VadBatch::load_or_fallback(4), None));
    let mut config = SipConfig::new("127.0.0.1:0".parse().expect("addr"));
    config.rtp_ports = rtp_port..=rtp_port;
    let refuse = |_: &IncomingCall| -> Result<SipCallSetup, SipCallRefused> {
        Err(SipCallRefused {
            status: 403,
            reason: "this engine only calls out".into(),
        })
    };
    let server = SipServer::bind(config, worker, refuse)
        .await
        .expect("bind SIP");
    let dialer = server.dialer();
    tokio::spawn(server.run());
    dialer
}

struct Sipp {
    port: u16,
    output: tokio::task::JoinHandle<Output>,
}

fn start_sipp(rtp_port: u16) -> Sipp {
    let port = free_port();
    let mut command = Command::new("sipp");
    command
        .arg("-sf")
        .arg(fixtures("sip").join("uas_voicemail.xml"))
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-m", "1", "-nostdin", "-timeout", "40s", "-timeout_error"])
        .args(["-set", "rtp_port", &rtp_port.to_string()])
        .args(["-set", "pt", "0", "-set", "codec", "PCMU"]);
    let output = tokio::task::spawn_blocking(move || command.output().expect("run sipp"));
    Sipp { port, output }
}

impl Sipp {
    async fn finish(self) -> Output {
        tokio::time::timeout(Duration::from_secs(45), self.output)
            .await
            .expect("sipp exits")
            .expect("sipp thread")
    }
}

/// A datagram the callee's endpoint received, and when.
type Arrival = (Instant, Vec<u8>);

/// The callee's RTP endpoint: records what arrives, streams a fixture.
struct Media {
    socket: Arc<UdpSocket>,
    port: u16,
    received: Arc<Mutex<Vec<Arrival>>>,
}

impl Media {
    async fn bind() -> Media {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind RTP"));
        let port = socket.local_addr().expect("addr").port();
        let received = Arc::new(Mutex::new(Vec::new()));
        let (reader, log) = (Arc::clone(&socket), Arc::clone(&received));
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 2_048];
            while let Ok((length, _)) = reader.recv_from(&mut buffer).await {
                log.lock()
                    .expect("log")
                    .push((Instant::now(), buffer[..length].to_vec()));
            }
        });
        Media {
            socket,
            port,
            received,
        }
    }

    /// Streams `fixture` (8 kHz mu-law) to `to` in real time from now, in
    /// the background; returns when the first packet is due.
    fn stream(&self, to: SocketAddr, fixture: &str) -> Instant {
        let audio = read_wav(fixtures("audio").join(fixture)).expect("fixture");
        let socket = Arc::clone(&self.socket);
        let start = Instant::now();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval_at(start, Duration::from_millis(20));
            let mut payload = [0u8; 160];
            for (index, chunk) in audio.samples.chunks_exact(160).enumerate() {
                ticker.tick().await;
                G711Law::MuLaw.encode(chunk, &mut payload).expect("encode");
                let mut packet = vec![0x80, if index == 0 { 0x80 } else { 0 }];
                packet.extend_from_slice(&(index as u16).to_be_bytes());
                packet.extend_from_slice(&((index as u32) * 160).to_be_bytes());
                packet.extend_from_slice(&0x5EED_0002u32.to_be_bytes());
                packet.extend_from_slice(&payload);
                // The engine may have hung up already: a lost packet is fine.
                let _ = socket.send_to(&packet, to).await;
            }
        });
        start
    }

    /// Arrival times of the agent's packets that carry sound.
    fn loud_arrivals(&self) -> Vec<Instant> {
        self.received
            .lock()
            .expect("log")
            .iter()
            .filter_map(|(at, datagram)| {
                let packet = parse_rtp(datagram).expect("the engine sends valid RTP");
                let mut samples = [0i16; 160];
                G711Law::MuLaw
                    .decode(
                        packet.payload,
                        &mut samples[..packet.payload.len().min(160)],
                    )
                    .ok()?;
                let energy: f64 = samples.iter().map(|&s| f64::from(s).powi(2)).sum();
                ((energy / 160.0).sqrt() > 300.0).then_some(*at)
            })
            .collect()
    }

    /// The packets that are not the comfort silence sent while the agent
    /// is quiet: its audio.
    fn audio_packets(&self) -> usize {
        self.received
            .lock()
            .expect("log")
            .iter()
            .filter(|(_, datagram)| {
                parse_rtp(datagram)
                    .is_ok_and(|packet| Some(packet.payload) != silence_frame(CodecKind::Pcmu))
            })
            .count()
    }
}

struct Finished {
    events: Vec<(Instant, SipEvent)>,
    answered_at: Instant,
    stream_start: Instant,
    media: Media,
    sipp: Output,
}

/// Dials SIPp with answering-machine detection doing `on_machine`, streams
/// `fixture` as the callee from the answer, and collects the call's events
/// until it ends (we hang up `hang_up_after` the answer, if given).
async fn call_with_detection(
    rtp_port: u16,
    fixture: &str,
    on_machine: MachineAction,
    callee_says: &str,
    hang_up_after: Option<Duration>,
) -> Finished {
    let dialer = start_caller(rtp_port).await;
    let media = Media::bind().await;
    let sipp = start_sipp(media.port);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let conversation = scripted_conversation(
        &[callee_says],
        &["Hi, I am calling about your appointment."],
    )
    .expect("scripted providers");
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut config = pcmu_media();
    config.answering_machine = Some(AnsweringMachineConfig::new(on_machine));
    let setup = SipCallSetup {
        media: config,
        link: Some(conversation.link),
        epoch: conversation.epoch,
        events: Some(events_tx),
        cancel: conversation.cancel,
        tap: None,
    };
    let call = dialer
        .dial(OutboundCall {
            to: "+15550100".into(),
            from: "+15550199".into(),
            route: Route::Trunk(SipTrunk {
                host: "127.0.0.1".into(),
                port: sipp.port,
                credentials: None,
                tcp: false,
            }),
            setup,
            ring_timeout: Duration::from_secs(10),
        })
        .await
        .expect("dial");
    let mut seen = Vec::new();
    let mut answered_at = None;
    let mut stream_start = None;
    let deadline = Instant::now() + Duration::from_secs(35);
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
        let now = Instant::now();
        if event == SipEvent::Answered {
            answered_at = Some(now);
            if let Some(after) = hang_up_after {
                let call = call.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    call.hang_up();
                });
            }
            stream_start =
                Some(media.stream(SocketAddr::from(([127, 0, 0, 1], rtp_port)), fixture));
        }
        let done = matches!(event, SipEvent::Ended { .. });
        seen.push((now, event));
        if done {
            break;
        }
    }
    let sipp = sipp.finish().await;
    Finished {
        answered_at: answered_at.unwrap_or_else(|| panic!("never answered: {seen:?}")),
        stream_start: stream_start.expect("streamed"),
        events: seen,
        media,
        sipp,
    }
}

fn decision(events: &[(Instant, SipEvent)]) -> (Instant, AnsweredBy) {
    events
        .iter()
        .find_map(|(at, event)| match event {
            SipEvent::Media(MediaEvent::AnsweredBy(decision)) => Some((*at, decision.answered_by)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no decision: {events:?}"))
}

fn end_of(call: &Finished) -> (Instant, SipEnd) {
    match call.events.last() {
        Some((at, SipEvent::Ended { reason, .. })) => (*at, reason.clone()),
        _ => panic!("the call did not end: {:?}", call.events),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voicemail_greeting_is_hung_up_on_at_once_and_the_agent_never_speaks() {
    if !sipp_installed() {
        println!("SKIPPED: `sipp` is not installed (apt-get install sip-tester)");
        return;
    }
    let call = call_with_detection(
        42_610,
        "voicemail_sam.8k.ulaw.wav",
        MachineAction::HangUp,
        "Hi, you've reached Sam.",
        None,
    )
    .await;
    assert_eq!(call.sipp.status.code(), Some(0), "{:?}", call.sipp);
    let (decided_at, by) = decision(&call.events);
    assert_eq!(by, AnsweredBy::Machine);
    let after = decided_at - call.answered_at;
    assert!(
        after <= Duration::from_millis(4_500),
        "decided after {after:?}"
    );
    assert!(call.events.iter().any(|(_, e)| matches!(
        e,
        SipEvent::Media(MediaEvent::Hangup {
            reason: HangupReason::AnsweringMachine
        })
    )));
    let (ended_at, reason) = end_of(&call);
    assert_eq!(reason, SipEnd::HungUp);
    assert!(
        ended_at - decided_at <= Duration::from_millis(500),
        "hung up at once"
    );
    // No turn was answered and not a packet of agent audio left.
    assert!(
        !call
            .events
            .iter()
            .any(|(_, e)| matches!(e, SipEvent::Media(MediaEvent::UserTurnEnded { .. }))),
        "{:?}",
        call.events
    );
    assert_eq!(call.media.audio_packets(), 0, "the agent said nothing");
    println!(
        "machine decided {after:?} after the answer; hung up {:?} later",
        ended_at - decided_at
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_leaves_its_message_after_the_beep_then_hangs_up() {
    if !sipp_installed() {
        println!("SKIPPED: `sipp` is not installed (apt-get install sip-tester)");
        return;
    }
    let (_, beep_end_ms) = manifest_beep_ms("voicemail_sam");
    let call = call_with_detection(
        42_620,
        "voicemail_sam.8k.ulaw.wav",
        MachineAction::LeaveMessage {
            text: MESSAGE.into(),
        },
        "Hi, you've reached Sam.",
        None,
    )
    .await;
    assert_eq!(call.sipp.status.code(), Some(0), "{:?}", call.sipp);
    assert_eq!(decision(&call.events).1, AnsweredBy::Machine);
    let cue = call.events.iter().find_map(|(at, e)| match e {
        SipEvent::Media(MediaEvent::LeaveVoicemail { text, cue }) => {
            Some((*at, text.clone(), *cue))
        }
        _ => None,
    });
    let (_, text, cue) = cue.unwrap_or_else(|| panic!("no message: {:?}", call.events));
    assert_eq!((text.as_str(), cue), (MESSAGE, MessageCue::Beep));
    let loud = call.media.loud_arrivals();
    let first = *loud.first().expect("the agent spoke");
    let beep_end = call.stream_start + Duration::from_millis(beep_end_ms);
    assert!(
        first >= beep_end,
        "agent audio began {:?} before the beep ended",
        beep_end - first
    );
    assert!(
        first - beep_end <= Duration::from_millis(1_500),
        "the message began {:?} after the beep",
        first - beep_end
    );
    assert!(
        loud.len() > 100,
        "the message was spoken: {} packets",
        loud.len()
    );
    let (ended_at, reason) = end_of(&call);
    assert_eq!(reason, SipEnd::HungUp);
    let last = *loud.last().expect("spoke");
    assert!(ended_at > last, "hung up after the message");
    assert!(
        ended_at - last <= Duration::from_millis(2_500),
        "hung up {:?} after the message",
        ended_at - last
    );
    assert!(call.events.iter().any(|(_, e)| matches!(
        e,
        SipEvent::Media(MediaEvent::Hangup {
            reason: HangupReason::VoicemailLeft
        })
    )));
    println!(
        "message began {:?} after the beep, lasted {:?}; hung up {:?} after it",
        first - beep_end,
        last - first,
        ended_at - last
    );
    let _ = call.answered_at;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_human_hello_is_kept_as_the_first_turn_and_answered() {
    if !sipp_installed() {
        println!("SKIPPED: `sipp` is not installed (apt-get install sip-tester)");
        return;
    }
    let call = call_with_detection(
        42_630,
        "pickup_hello.8k.ulaw.wav",
        MachineAction::HangUp,
        "Hello?",
        Some(Duration::from_secs(5)),
    )
    .await;
    assert_eq!(call.sipp.status.code(), Some(0), "{:?}", call.sipp);
    let (decided_at, by) = decision(&call.events);
    assert_eq!(by, AnsweredBy::Human);
    let turn = call.events.iter().find_map(|(at, e)| match e {
        SipEvent::Media(MediaEvent::UserTurnEnded { text, .. }) => Some((*at, text.clone())),
        _ => None,
    });
    let (turn_at, text) = turn.unwrap_or_else(|| panic!("no turn: {:?}", call.events));
    assert_eq!(text, "Hello?");
    assert!(turn_at >= decided_at, "the turn waited for the decision");
    let first = *call
        .media
        .loud_arrivals()
        .first()
        .expect("the agent replied");
    assert!(first > decided_at);
    let _ = (call.answered_at, call.stream_start);
}
