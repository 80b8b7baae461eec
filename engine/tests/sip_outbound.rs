//! Outbound SIP calls against real peers on 127.0.0.1.
//!
//! SIPp (Debian `sip-tester`) plays the callee or the trunk with the UAS
//! scenarios of `fixtures/sip/uas_*.xml`: it answers at once, answers late
//! after early media, is busy, gives up ringing, never answers, or asks for
//! digest credentials. The callee's media is the test's own RTP endpoint
//! (the scenarios' SDP points at it, `-set rtp_port`): it streams recorded
//! fixture speech as the callee's voice and records every packet the engine
//! sends, with its arrival time, so the tests can decode the agent's audio
//! and prove none left before the 200 OK.
//!
//! The last test calls from one engine to another over the local carrier.
//!
//! Wall-clock time: SIPp is a real process. Tests that need SIPp print a
//! SKIPPED line when it is not installed.

mod common;

use common::scripted_call::{pcmu_media, scripted_conversation};

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callingbox_engine::codecs::{G711Law, G722Decoder, G722Encoder, read_wav};
use callingbox_engine::session::{MediaEvent, MediaWorker};
use callingbox_engine::transport::comfort_silence::silence_frame;
use callingbox_engine::transport::rtp::parse_rtp;
use callingbox_engine::transport::sip::sdp::{CodecKind, Offer};
use callingbox_engine::transport::sip::{
    CallOutcome, Credentials, DialedCall, IncomingCall, LocalCarrier, OutboundCall, Route,
    SipCallRefused, SipCallSetup, SipConfig, SipDialer, SipEnd, SipEvent, SipServer, SipTrunk,
    call_outcome,
};
use callingbox_engine::transport::{WirePacket, WorkerHandle, spawn_worker};
use callingbox_engine::vad::{ModelError, ModelFile, VadBatch};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

const BOOK_TABLE: &str =
    "I'd like to book a table for four people tomorrow at seven in the evening.";
const REPLY: &str = "Sure, I can book that for you. Let me check what we have for four people tomorrow evening, \
    we have a table at seven by the window, and another one at seven thirty near the bar.";
const CALLEE: &str = "+15550100";
const CALLER_ID: &str = "+15550199";

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

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .expect("a free port")
        .port()
}

/// The calling engine: a SIP server (refusing inbound calls) and its dialer.
struct Caller {
    dialer: SipDialer,
    worker: WorkerHandle,
}

async fn start_caller(rtp_port: u16) -> Caller {
    start_caller_with(rtp_port, VadBatch::load_or_fallback(4)).await
}

/// The energy VAD: the scripted voices are square tones, which Silero
/// rightly does not take for speech; engine-to-engine calls need the
/// far agent's tone to count as speech.
fn energy_vad() -> VadBatch {
    let missing = ModelError::NotFound {
        file: ModelFile::SileroVad,
        tried: std::path::PathBuf::from("(not loaded on purpose)"),
    };
    VadBatch::from_load_result(Err(missing), 4)
}

async fn start_caller_with(rtp_port: u16, vad: VadBatch) -> Caller {
    let (worker, _task) = spawn_worker(MediaWorker::new(vad, None));
    let mut config = SipConfig::new("127.0.0.1:0".parse().expect("addr"));
    config.rtp_ports = rtp_port..=rtp_port;
    let refuse = |_: &IncomingCall| -> Result<SipCallSetup, SipCallRefused> {
        Err(SipCallRefused {
            status: 403,
            reason: "this engine only calls out".into(),
        })
    };
    let server = SipServer::bind(config, worker.clone(), refuse)
        .await
        .expect("bind SIP");
    let dialer = server.dialer();
    tokio::spawn(server.run());
    Caller { dialer, worker }
}

/// A call's setup with a scripted agent (the callee says `BOOK_TABLE`, the
/// agent answers `REPLY`), its events and a tap of the agent's packets.
struct Setup {
    setup: SipCallSetup,
    events: mpsc::UnboundedReceiver<SipEvent>,
    tapped: mpsc::Receiver<WirePacket>,
}

fn agent_setup(hears: &str, says: &str) -> Setup {
    let conversation = scripted_conversation(&[hears], &[says]).expect("scripted providers");
    let (events_tx, events) = mpsc::unbounded_channel();
    let (tap_tx, tapped) = mpsc::channel(4_096);
    Setup {
        setup: SipCallSetup {
            media: pcmu_media(),
            link: Some(conversation.link),
            epoch: conversation.epoch,
            events: Some(events_tx),
            cancel: conversation.cancel,
            tap: Some(tap_tx),
        },
        events,
        tapped,
    }
}

/// SIPp running a UAS scenario; `output` ends when it exits.
struct Sipp {
    address: SocketAddr,
    output: tokio::task::JoinHandle<Output>,
}

/// Starts SIPp with `scenario`; `answer` is the RTP port and codec of its
/// SDP, for the scenarios that answer.
fn start_sipp(scenario: &str, answer: Option<(u16, G711Law)>) -> Sipp {
    let port = free_port();
    let mut command = Command::new("sipp");
    command
        .arg("-sf")
        .arg(fixtures("sip").join(scenario))
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-m", "1", "-nostdin", "-timeout", "40s", "-timeout_error"]);
    if let Some((rtp_port, law)) = answer {
        let (pt, codec) = match law {
            G711Law::MuLaw => ("0", "PCMU"),
            G711Law::ALaw => ("8", "PCMA"),
        };
        command
            .args(["-set", "rtp_port", &rtp_port.to_string()])
            .args(["-set", "pt", pt, "-set", "codec", codec]);
    }
    let output = tokio::task::spawn_blocking(move || command.output().expect("run sipp"));
    Sipp {
        address: SocketAddr::from(([127, 0, 0, 1], port)),
        output,
    }
}

impl Sipp {
    fn trunk(&self, credentials: Option<Credentials>) -> Route {
        Route::Trunk(SipTrunk {
            host: "127.0.0.1".into(),
            port: self.address.port(),
            credentials,
            tcp: false,
        })
    }

    async fn finish(self) -> Output {
        tokio::time::timeout(Duration::from_secs(45), self.output)
            .await
            .expect("sipp exits")
            .expect("sipp thread")
    }
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A datagram the callee's endpoint received, and when.
type Arrival = (Instant, Vec<u8>);

/// The callee's RTP endpoint: records what arrives, streams speech.
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

    /// Streams the first `max_packets` 20 ms packets of a fixture to `to`
    /// in `law`; returns how many were sent.
    async fn stream(&self, to: SocketAddr, fixture: &str, law: G711Law, max_packets: usize) -> u64 {
        let audio = read_wav(fixtures("audio").join(fixture)).expect("fixture");
        let pt = match law {
            G711Law::MuLaw => 0,
            G711Law::ALaw => 8,
        };
        let mut ticker = tokio::time::interval(Duration::from_millis(20));
        let mut sent = 0u64;
        let mut payload = [0u8; 160];
        for (index, chunk) in audio
            .samples
            .chunks_exact(160)
            .take(max_packets)
            .enumerate()
        {
            ticker.tick().await;
            law.encode(chunk, &mut payload).expect("encode");
            let mut packet = vec![0x80, pt | if index == 0 { 0x80 } else { 0 }];
            packet.extend_from_slice(&(index as u16).to_be_bytes());
            packet.extend_from_slice(&((index as u32) * 160).to_be_bytes());
            packet.extend_from_slice(&0x5EED_0001u32.to_be_bytes());
            packet.extend_from_slice(&payload);
            self.socket.send_to(&packet, to).await.expect("send RTP");
            sent += 1;
        }
        sent
    }

    fn received(&self) -> Vec<(Instant, Vec<u8>)> {
        self.received.lock().expect("log").clone()
    }
}

fn rms(law: G711Law, codes: &[u8]) -> f64 {
    let mut samples = vec![0i16; codes.len()];
    law.decode(codes, &mut samples).expect("decode");
    let energy: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (energy / samples.len().max(1) as f64).sqrt()
}

/// Events with their arrival times, until `stop` matches one (included) or `wait` passes.
async fn events_until(
    events: &mut mpsc::UnboundedReceiver<SipEvent>,
    wait: Duration,
    stop: impl Fn(&SipEvent) -> bool,
) -> Vec<(Instant, SipEvent)> {
    let mut seen = Vec::new();
    let deadline = Instant::now() + wait;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
        let done = stop(&event);
        seen.push((Instant::now(), event));
        if done {
            break;
        }
    }
    seen
}

fn ended(event: &SipEvent) -> bool {
    matches!(event, SipEvent::Ended { .. })
}

/// The end of a call's events, its outcome, and whether it was answered.
fn outcome_of(events: &[(Instant, SipEvent)]) -> (SipEnd, CallOutcome, String) {
    let answered = events.iter().any(|(_, e)| *e == SipEvent::Answered);
    let Some((_, SipEvent::Ended { reason, .. })) = events.last() else {
        panic!("the call did not end: {events:?}");
    };
    let result = call_outcome(reason, answered);
    (reason.clone(), result.outcome, result.hangup_cause)
}

async fn dial(caller: &Caller, route: Route, setup: SipCallSetup, ring: Duration) -> DialedCall {
    caller
        .dialer
        .dial(OutboundCall {
            to: CALLEE.into(),
            from: CALLER_ID.into(),
            route,
            setup,
            ring_timeout: ring,
        })
        .await
        .expect("dial")
}

/// Asserts the agent's packets: payload type, enough of them, mostly sound,
/// none before `answered_at`. Returns (packets, loud packets).
/// Checks what the callee received (all after the answer, in the
/// answer's codec) and returns (agent audio packets, loud ones, comfort
/// silence packets): most of the agent's audio carries sound.
fn check_agent_audio(
    received: &[(Instant, Vec<u8>)],
    law: G711Law,
    answered_at: Instant,
) -> (usize, usize, usize) {
    let (pt, codec) = match law {
        G711Law::MuLaw => (0, CodecKind::Pcmu),
        G711Law::ALaw => (8, CodecKind::Pcma),
    };
    let silence_frame = silence_frame(codec);
    let (mut audio, mut loud, mut silence) = (0, 0, 0);
    for (at, datagram) in received {
        assert!(*at >= answered_at, "agent audio arrived before the 200 OK");
        let packet = parse_rtp(datagram).expect("the engine sends valid RTP");
        assert_eq!(packet.payload_type, pt, "the answer's codec");
        assert_eq!(packet.payload.len(), 160);
        if Some(packet.payload) == silence_frame {
            silence += 1;
            continue;
        }
        audio += 1;
        if rms(law, packet.payload) > 300.0 {
            loud += 1;
        }
    }
    assert!(audio >= 25, "the agent spoke at least 0.5 s: {audio}");
    assert!(
        loud * 2 >= audio,
        "{loud} of {audio} agent packets carry sound"
    );
    (audio, loud, silence)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_answers_at_once_in_pcma_talks_and_hangs_up() {
    if !sipp_installed() {
        skip("sipp_answers_at_once_in_pcma_talks_and_hangs_up");
        return;
    }
    let our_rtp = 42_500;
    let caller = start_caller(our_rtp).await;
    let media = Media::bind().await;
    let sipp = start_sipp("uas_answer.xml", Some((media.port, G711Law::ALaw)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let Setup {
        setup,
        mut events,
        mut tapped,
    } = agent_setup(BOOK_TABLE, REPLY);
    let dialed_at = Instant::now();
    let _call = dial(&caller, sipp.trunk(None), setup, Duration::from_secs(20)).await;
    let mut seen = events_until(&mut events, Duration::from_secs(5), |e| {
        *e == SipEvent::Answered || ended(e)
    })
    .await;
    let answered_at = seen.last().map(|(at, _)| *at).expect("an event");
    assert!(
        seen.iter()
            .any(|(_, e)| matches!(e, SipEvent::CalleeRinging { status: 180, .. })),
        "{seen:?}"
    );
    assert_eq!(seen.last().map(|(_, e)| e), Some(&SipEvent::Answered));
    let ours = SocketAddr::from(([127, 0, 0, 1], our_rtp));
    let streamed = media
        .stream(
            ours,
            "statement_book_table.8k.ulaw.wav",
            G711Law::ALaw,
            1_000,
        )
        .await;
    // SIPp hangs up 9 s after its 200.
    seen.extend(events_until(&mut events, Duration::from_secs(15), ended).await);
    let output = sipp.finish().await;
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));

    let turn = seen.iter().find_map(|(_, e)| match e {
        SipEvent::Media(MediaEvent::UserTurnEnded { text, .. }) => Some(text.clone()),
        _ => None,
    });
    assert_eq!(turn.as_deref(), Some(BOOK_TABLE), "{seen:?}");
    let (end, outcome, cause) = outcome_of(&seen);
    assert_eq!(end, SipEnd::RemoteBye);
    assert_eq!(
        (outcome, cause.as_str()),
        (CallOutcome::Completed, "remote_hangup")
    );
    let Some((_, SipEvent::Ended { rtp, .. })) = seen.last() else {
        unreachable!()
    };
    assert_eq!(rtp.audio_received, streamed, "{rtp:?}");
    assert_eq!(
        rtp.peer,
        Some(SocketAddr::from(([127, 0, 0, 1], media.port)))
    );
    let received = media.received();
    let (packets, loud, silence) = check_agent_audio(&received, G711Law::ALaw, answered_at);
    assert_eq!(packets as u64, rtp.sent, "every packet sent arrived");
    assert_eq!(silence as u64, rtp.silence_sent, "and every silence packet");
    let mut tapped_count = 0;
    while tapped.try_recv().is_ok() {
        tapped_count += 1;
    }
    assert_eq!(tapped_count, packets);
    assert_eq!(caller.worker.live_calls(), 0);
    println!(
        "answered {:?} after the dial; callee streamed {streamed} packets, \
         the agent sent {packets} PCMA packets ({loud} loud); outcome {} / {cause}",
        answered_at - dialed_at,
        outcome.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_answers_late_after_early_media_and_we_hang_up() {
    if !sipp_installed() {
        skip("sipp_answers_late_after_early_media_and_we_hang_up");
        return;
    }
    let our_rtp = 42_502;
    let caller = start_caller(our_rtp).await;
    let media = Media::bind().await;
    let sipp = start_sipp("uas_answer_late.xml", Some((media.port, G711Law::MuLaw)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let Setup {
        setup, mut events, ..
    } = agent_setup(BOOK_TABLE, REPLY);
    let dialed_at = Instant::now();
    let call = dial(&caller, sipp.trunk(None), setup, Duration::from_secs(20)).await;
    let mut seen = events_until(&mut events, Duration::from_secs(3), |e| {
        matches!(e, SipEvent::CalleeRinging { .. }) || ended(e)
    })
    .await;
    assert!(
        matches!(
            seen.last(),
            Some((_, SipEvent::CalleeRinging { status: 180, .. }))
        ),
        "{seen:?}"
    );
    // While it rings, the callee's side "talks" (early media): 2 s of speech
    // at our RTP port. The agent must neither hear it nor answer it.
    let ours = SocketAddr::from(([127, 0, 0, 1], our_rtp));
    let early = media
        .stream(
            ours,
            "statement_book_table.8k.ulaw.wav",
            G711Law::MuLaw,
            100,
        )
        .await;
    seen.extend(
        events_until(&mut events, Duration::from_secs(5), |e| {
            *e == SipEvent::Answered || ended(e)
        })
        .await,
    );
    let answered_at = seen.last().map(|(at, _)| *at).expect("an event");
    assert_eq!(
        seen.last().map(|(_, e)| e),
        Some(&SipEvent::Answered),
        "{seen:?}"
    );
    let rang_for = answered_at - dialed_at;
    assert!(
        rang_for >= Duration::from_millis(2_900),
        "answered after {rang_for:?}"
    );
    assert!(
        media.received().is_empty(),
        "no agent audio before the 200 OK"
    );
    let streamed = media
        .stream(
            ours,
            "statement_book_table.8k.ulaw.wav",
            G711Law::MuLaw,
            1_000,
        )
        .await;
    // Let the agent answer for a while, then hang up.
    seen.extend(
        events_until(&mut events, Duration::from_secs(10), |e| {
            matches!(e, SipEvent::Media(MediaEvent::AgentAudioStarted { .. }))
        })
        .await,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    call.hang_up();
    seen.extend(events_until(&mut events, Duration::from_secs(5), ended).await);
    let output = sipp.finish().await;
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));

    let turns: Vec<_> = seen
        .iter()
        .filter_map(|(_, e)| match e {
            SipEvent::Media(MediaEvent::UserTurnEnded { text, .. }) => Some(text.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(turns, vec![BOOK_TABLE.to_owned()], "{seen:?}");
    let (end, outcome, cause) = outcome_of(&seen);
    assert_eq!(end, SipEnd::HungUp);
    assert_eq!(
        (outcome, cause.as_str()),
        (CallOutcome::Completed, "local_hangup")
    );
    let Some((_, SipEvent::Ended { rtp, .. })) = seen.last() else {
        unreachable!()
    };
    // Only the speech after the answer reached the call: the early media was dropped.
    assert_eq!(rtp.audio_received, streamed, "{rtp:?} (early: {early})");
    let received = media.received();
    let (packets, loud, _) = check_agent_audio(&received, G711Law::MuLaw, answered_at);
    assert_eq!(caller.worker.live_calls(), 0);
    println!(
        "rang {rang_for:?} with {early} early-media packets ignored; the agent sent \
         {packets} PCMU packets ({loud} loud) after the answer; outcome {} / {cause}",
        outcome.as_str()
    );
}

/// A call that never gets answered: its events, the SIPp output and how long it took.
async fn unanswered(
    scenario: &str,
    rtp_port: u16,
    ring: Duration,
) -> (Vec<(Instant, SipEvent)>, Output, Duration, Caller) {
    let caller = start_caller(rtp_port).await;
    let sipp = start_sipp(scenario, None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let Setup {
        setup,
        mut events,
        mut tapped,
    } = agent_setup(BOOK_TABLE, REPLY);
    let started = Instant::now();
    let _call = dial(&caller, sipp.trunk(None), setup, ring).await;
    let seen = events_until(&mut events, Duration::from_secs(15), ended).await;
    let took = started.elapsed();
    let output = sipp.finish().await;
    assert!(
        !seen.iter().any(|(_, e)| *e == SipEvent::Answered),
        "{seen:?}"
    );
    assert!(
        tapped.try_recv().is_err(),
        "no agent audio without an answer"
    );
    assert_eq!(caller.worker.live_calls(), 0);
    (seen, output, took, caller)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_busy_is_busy() {
    if !sipp_installed() {
        skip("sipp_busy_is_busy");
        return;
    }
    let (seen, output, took, _caller) =
        unanswered("uas_busy.xml", 42_504, Duration::from_secs(20)).await;
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let (end, outcome, cause) = outcome_of(&seen);
    assert_eq!(end, SipEnd::Refused(486));
    assert_eq!((outcome, cause.as_str()), (CallOutcome::Busy, "sip:486"));
    println!("busy after {took:?}: {} / {cause}", outcome.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_unavailable_after_ringing_is_no_answer() {
    if !sipp_installed() {
        skip("sipp_unavailable_after_ringing_is_no_answer");
        return;
    }
    let (seen, output, took, _caller) =
        unanswered("uas_unavailable.xml", 42_506, Duration::from_secs(20)).await;
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        seen.iter()
            .any(|(_, e)| matches!(e, SipEvent::CalleeRinging { status: 180, .. })),
        "{seen:?}"
    );
    let (end, outcome, cause) = outcome_of(&seen);
    assert_eq!(end, SipEnd::Refused(480));
    assert_eq!(
        (outcome, cause.as_str()),
        (CallOutcome::NoAnswer, "sip:480")
    );
    println!("unavailable after {took:?}: {} / {cause}", outcome.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_never_answers_and_the_ring_timeout_cancels() {
    if !sipp_installed() {
        skip("sipp_never_answers_and_the_ring_timeout_cancels");
        return;
    }
    let ring = Duration::from_secs(3);
    let (seen, output, took, _caller) = unanswered("uas_no_answer.xml", 42_508, ring).await;
    // SIPp got the CANCEL, answered it and the 487, and got our ACK.
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let (end, outcome, cause) = outcome_of(&seen);
    assert_eq!(end, SipEnd::RingTimeout);
    assert_eq!(
        (outcome, cause.as_str()),
        (CallOutcome::NoAnswer, "ring_timeout")
    );
    assert!(
        took >= ring && took < ring + Duration::from_secs(2),
        "ended after {took:?}"
    );
    println!(
        "ring timeout {ring:?}: ended after {took:?}, {} / {cause}",
        outcome.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_trunk_challenges_and_our_digest_passes_or_a_wrong_one_fails() {
    if !sipp_installed() {
        skip("sipp_trunk_challenges_and_our_digest_passes_or_a_wrong_one_fails");
        return;
    }
    let caller = start_caller(42_510).await;
    for (password, expect_answer) in [("s3cret", true), ("wrong", false)] {
        let media = Media::bind().await;
        let sipp = start_sipp("uas_auth.xml", Some((media.port, G711Law::MuLaw)));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let Setup {
            setup, mut events, ..
        } = agent_setup(BOOK_TABLE, REPLY);
        let credentials = Credentials {
            username: "alice".into(),
            password: password.into(),
        };
        let call = dial(
            &caller,
            sipp.trunk(Some(credentials)),
            setup,
            Duration::from_secs(20),
        )
        .await;
        let mut seen = events_until(&mut events, Duration::from_secs(5), |e| {
            *e == SipEvent::Answered || ended(e)
        })
        .await;
        if expect_answer {
            assert_eq!(
                seen.last().map(|(_, e)| e),
                Some(&SipEvent::Answered),
                "{seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
            call.hang_up();
            seen.extend(events_until(&mut events, Duration::from_secs(5), ended).await);
        }
        let output = sipp.finish().await;
        assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
        let (end, outcome, cause) = outcome_of(&seen);
        if expect_answer {
            assert_eq!(end, SipEnd::HungUp);
            assert_eq!(outcome, CallOutcome::Completed);
        } else {
            // SIPp checked the digest, found it wrong, and refused.
            assert_eq!(end, SipEnd::Refused(403));
            assert_eq!((outcome, cause.as_str()), (CallOutcome::Failed, "sip:403"));
        }
        println!("password {password:?}: {} / {cause}", outcome.as_str());
    }
    assert_eq!(caller.worker.live_calls(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_calls_another_over_the_local_carrier() {
    const GREETING: &str = "Hello, this is the restaurant, how can I help you today?";
    let carrier = LocalCarrier::new();

    // Engine B owns the number; its agent greets whoever calls.
    let (b_events_tx, mut b_events) = mpsc::unbounded_channel();
    let factory = move |_: &IncomingCall| {
        let conversation =
            scripted_conversation(&[BOOK_TABLE], &[REPLY]).map_err(|error| SipCallRefused {
                status: 503,
                reason: error.to_string(),
            })?;
        // Queued now, heard only once the call is answered and on the worker.
        conversation.link.agent.say(GREETING);
        Ok(SipCallSetup {
            media: pcmu_media(),
            link: Some(conversation.link),
            epoch: conversation.epoch,
            events: Some(b_events_tx.clone()),
            cancel: conversation.cancel,
            tap: None,
        })
    };
    let (b_worker, _b_task) = spawn_worker(MediaWorker::new(energy_vad(), None));
    let mut b_config = SipConfig::new("127.0.0.1:0".parse().expect("addr"));
    b_config.rtp_ports = 42_520..=42_530;
    b_config.numbers = vec![CALLEE.into()];
    b_config.answer_after = Duration::from_millis(500);
    let b = SipServer::bind(b_config, b_worker.clone(), factory)
        .await
        .expect("bind B");
    carrier.assign(CALLEE, b.local_addr()).expect("E.164");
    tokio::spawn(b.run());

    // Engine A calls it: its agent hears the greeting and asks for a table.
    let a = start_caller_with(42_512, energy_vad()).await;
    let Setup {
        setup,
        events: mut a_events,
        ..
    } = agent_setup(GREETING, BOOK_TABLE);
    let unknown = a
        .dialer
        .dial(OutboundCall {
            to: "+15550111".into(),
            from: CALLER_ID.into(),
            route: Route::Local(carrier.clone()),
            setup: agent_setup(GREETING, BOOK_TABLE).setup,
            ring_timeout: Duration::from_secs(5),
        })
        .await;
    assert!(unknown.is_err(), "a number nobody owns cannot be dialled");
    let call = dial(
        &a,
        Route::Local(carrier.clone()),
        setup,
        Duration::from_secs(10),
    )
    .await;

    // A hears B's greeting as a turn and replies; B hears the reply as its turn.
    let a_seen = events_until(&mut a_events, Duration::from_secs(20), |e| {
        matches!(e, SipEvent::Media(MediaEvent::AgentAudioStarted { .. })) || ended(e)
    })
    .await;
    let b_seen = events_until(&mut b_events, Duration::from_secs(20), |e| {
        matches!(e, SipEvent::Media(MediaEvent::UserTurnEnded { .. })) || ended(e)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    call.hang_up();
    let a_rest = events_until(&mut a_events, Duration::from_secs(5), ended).await;
    let b_rest = events_until(&mut b_events, Duration::from_secs(5), ended).await;
    let a_all: Vec<_> = a_seen.into_iter().chain(a_rest).collect();
    let b_all: Vec<_> = b_seen.into_iter().chain(b_rest).collect();

    let turn = |events: &[(Instant, SipEvent)]| {
        events.iter().find_map(|(_, e)| match e {
            SipEvent::Media(MediaEvent::UserTurnEnded { text, .. }) => Some(text.clone()),
            _ => None,
        })
    };
    assert!(
        a_all
            .iter()
            .any(|(_, e)| matches!(e, SipEvent::CalleeRinging { status: 180, .. })),
        "{a_all:?}"
    );
    let Some((_, SipEvent::Ringing(incoming))) = b_all.first() else {
        panic!("B was not called: {b_all:?}");
    };
    assert_eq!(incoming.number.as_deref(), Some(CALLEE));
    assert!(incoming.from.contains(CALLER_ID), "{}", incoming.from);
    // Our offer puts Opus first and our answer prefers it: two engines
    // talk Opus (48 kHz clock, 960 per packet), with events on its clock.
    assert_eq!(incoming.media.codec.kind, CodecKind::Opus, "{incoming:?}");
    assert_eq!(
        incoming.media.telephone_event,
        Some(Offer::TELEPHONE_EVENT_48K)
    );
    assert_eq!(turn(&a_all).as_deref(), Some(GREETING), "{a_all:?}");
    assert_eq!(turn(&b_all).as_deref(), Some(BOOK_TABLE), "{b_all:?}");

    let (a_end, a_outcome, a_cause) = outcome_of(&a_all);
    let (b_end, b_outcome, b_cause) = outcome_of(&b_all);
    assert_eq!(a_end, SipEnd::HungUp);
    assert_eq!(b_end, SipEnd::RemoteBye);
    assert_eq!(a_outcome, CallOutcome::Completed);
    assert_eq!(b_outcome, CallOutcome::Completed);
    let stats = |events: &[(Instant, SipEvent)]| match events.last() {
        Some((_, SipEvent::Ended { rtp, .. })) => *rtp,
        other => panic!("not ended: {other:?}"),
    };
    let (a_rtp, b_rtp) = (stats(&a_all), stats(&b_all));
    // Audio both ways: each side's agent spoke and the other heard it all.
    assert!(a_rtp.sent >= 25 && b_rtp.sent >= 25, "{a_rtp:?} {b_rtp:?}");
    assert!(a_rtp.audio_received >= 25 && b_rtp.audio_received >= 25);
    assert!(
        a_rtp.audio_received <= b_rtp.sent + b_rtp.silence_sent
            && b_rtp.audio_received <= a_rtp.sent + a_rtp.silence_sent
    );
    assert_eq!(a_rtp.bad_headers + b_rtp.bad_headers, 0);
    assert_eq!(a.worker.live_calls(), 0);
    assert_eq!(b_worker.live_calls(), 0);
    println!(
        "A -> B over the local carrier: A sent {} / heard {} packets ({} / {a_cause}), \
         B sent {} / heard {} ({} / {b_cause})",
        a_rtp.sent,
        a_rtp.audio_received,
        a_outcome.as_str(),
        b_rtp.sent,
        b_rtp.audio_received,
        b_outcome.as_str()
    );
}

/// SIPp answering `uas_answer.xml` with `pt`/`codec` in its SDP.
fn start_sipp_answering(rtp_port: u16, pt: &str, codec: &str) -> Sipp {
    let port = free_port();
    let mut command = Command::new("sipp");
    command
        .arg("-sf")
        .arg(fixtures("sip").join("uas_answer.xml"))
        .args(["-i", "127.0.0.1", "-p", &port.to_string()])
        .args(["-m", "1", "-nostdin", "-timeout", "40s", "-timeout_error"])
        .args(["-set", "rtp_port", &rtp_port.to_string()])
        .args(["-set", "pt", pt, "-set", "codec", codec]);
    let output = tokio::task::spawn_blocking(move || command.output().expect("run sipp"));
    Sipp {
        address: SocketAddr::from(([127, 0, 0, 1], port)),
        output,
    }
}

/// Streams a 16 kHz fixture as G.722 (payload type 9): 160 bytes per 20 ms,
/// timestamps +160 per packet (the 8 kHz clock of RFC 3551 section 4.5.2).
async fn stream_g722(media: &Media, to: SocketAddr, fixture: &str) -> u64 {
    let audio = read_wav(fixtures("audio").join(fixture)).expect("fixture");
    assert_eq!(audio.rate.hz(), 16_000);
    let mut encoder = G722Encoder::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let mut payload = [0u8; 160];
    let mut sent = 0u64;
    for (index, chunk) in audio.samples.chunks_exact(320).enumerate() {
        ticker.tick().await;
        encoder.encode(chunk, &mut payload).expect("encode");
        let mut packet = vec![0x80, 9 | if index == 0 { 0x80 } else { 0 }];
        packet.extend_from_slice(&(index as u16).to_be_bytes());
        packet.extend_from_slice(&((index as u32) * 160).to_be_bytes());
        packet.extend_from_slice(&0x5EED_0722u32.to_be_bytes());
        packet.extend_from_slice(&payload);
        media.socket.send_to(&packet, to).await.expect("send RTP");
        sent += 1;
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_answers_in_g722_and_both_directions_carry_wideband_speech() {
    if !sipp_installed() {
        skip("sipp_answers_in_g722_and_both_directions_carry_wideband_speech");
        return;
    }
    let our_rtp = 42_540;
    let caller = start_caller(our_rtp).await;
    let media = Media::bind().await;
    let sipp = start_sipp_answering(media.port, "9", "G722");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let Setup {
        setup, mut events, ..
    } = agent_setup(BOOK_TABLE, REPLY);
    let _call = dial(&caller, sipp.trunk(None), setup, Duration::from_secs(20)).await;
    let mut seen = events_until(&mut events, Duration::from_secs(5), |e| {
        *e == SipEvent::Answered || ended(e)
    })
    .await;
    assert_eq!(seen.last().map(|(_, e)| e), Some(&SipEvent::Answered));
    let ours = SocketAddr::from(([127, 0, 0, 1], our_rtp));
    let streamed = stream_g722(&media, ours, "statement_book_table.16k.wav").await;
    // SIPp hangs up 9 s after its 200.
    seen.extend(events_until(&mut events, Duration::from_secs(15), ended).await);
    let output = sipp.finish().await;
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));

    // The engine decoded our G.722 into speech its VAD and recognizer heard as one turn.
    let turn = seen.iter().find_map(|(_, e)| match e {
        SipEvent::Media(MediaEvent::UserTurnEnded { text, .. }) => Some(text.clone()),
        _ => None,
    });
    assert_eq!(turn.as_deref(), Some(BOOK_TABLE), "{seen:?}");
    let Some((_, SipEvent::Ended { rtp, .. })) = seen.last() else {
        panic!("the call ended: {seen:?}")
    };
    assert_eq!(rtp.audio_received, streamed, "{rtp:?}");

    // The agent answered in G.722: type 9, 160 bytes, timestamps +160, and sound.
    let received = media.received();
    assert!(received.len() >= 25, "agent packets: {}", received.len());
    let mut decoder = G722Decoder::new();
    let mut pcm = [0i16; 320];
    let mut loud = 0;
    let mut previous_timestamp: Option<u32> = None;
    for (_, datagram) in &received {
        let packet = parse_rtp(datagram).expect("the engine sends valid RTP");
        assert_eq!(packet.payload_type, 9, "the answer's codec");
        assert_eq!(packet.payload.len(), 160);
        if let Some(previous) = previous_timestamp {
            assert_eq!(packet.timestamp.wrapping_sub(previous) % 160, 0);
        }
        previous_timestamp = Some(packet.timestamp);
        decoder.decode(packet.payload, &mut pcm).expect("decode");
        let energy: f64 = pcm.iter().map(|&s| f64::from(s).powi(2)).sum();
        if (energy / pcm.len() as f64).sqrt() > 300.0 {
            loud += 1;
        }
    }
    assert!(
        loud * 2 >= received.len(),
        "{loud} of {} agent packets carry sound",
        received.len()
    );
    assert_eq!(caller.worker.live_calls(), 0);
    println!(
        "G.722: callee streamed {streamed} packets, the agent sent {} G.722 packets ({loud} loud)",
        received.len()
    );
}
