//! The SIP transport against a real SIP peer: SIPp (Debian `sip-tester`)
//! calls the engine over 127.0.0.1 and streams recorded fixture speech as
//! PCMU RTP; the engine (SIP UAS, RTP, media worker on a task, VAD, turn
//! machine, agent loop with scripted LLM/TTS/ASR) answers and talks back.
//!
//! These run on wall-clock time: SIPp is a real process. Tests that need
//! SIPp print a SKIPPED line when it is not installed (`./dev setup`
//! installs it).

mod common;

use common::scripted_call::{scripted_conversation, scripted_conversation_with};
use common::sip_engine::{Engine, start_engine_with};
use common::sipp::{describe, fixtures, free_port};

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

use callingbox_engine::audio::dtmf::synthesize_key;
use callingbox_engine::codecs::{G711Law, SampleRate, WavEncoding, write_wav};
use callingbox_engine::events::ToolOutcome;
use callingbox_engine::events::{CallEvent, Role, SegmentSource};
use callingbox_engine::providers::ChatMessage;
use callingbox_engine::providers::scripted::{ScriptMatch, ScriptRule};
use callingbox_engine::session::MediaEvent;
use callingbox_engine::tools::ToolSet;
use callingbox_engine::transport::sip::sdp::CodecKind;
use callingbox_engine::transport::sip::{SipEnd, SipEvent};
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

async fn start_engine(rtp_ports: std::ops::RangeInclusive<u16>, answer_after: Duration) -> Engine {
    start_engine_with(rtp_ports, answer_after, || {
        scripted_conversation(&[BOOK_TABLE], &[REPLY])
    })
    .await
}

/// Runs SIPp as a UAC with `scenario` against the engine; returns its output.
async fn run_sipp(engine: &Engine, scenario: &str) -> Output {
    run_sipp_in(engine, scenario, fixtures("audio")).await
}

/// As [`run_sipp`], with `rtp_stream` paths relative to `media_dir`.
async fn run_sipp_in(engine: &Engine, scenario: &str, media_dir: std::path::PathBuf) -> Output {
    let scenario = fixtures("sip").join(scenario);
    let target = engine.sip.to_string();
    let (sip_port, media_port) = (free_port(), free_port());
    tokio::task::spawn_blocking(move || {
        Command::new("sipp")
            // rtp_stream paths are relative to the working directory.
            .current_dir(media_dir)
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

    // The agent saw the keys as one entry (# ends it), on its transcript
    // and in the model's context.
    let (mut call_events, llm) = engine.agents.recv().await.expect("the call's agent");
    let mut keypad_turns = Vec::new();
    while let Ok(event) = call_events.try_recv() {
        if let CallEvent::TranscriptSegment {
            role: Role::User,
            text,
            source: SegmentSource::Dtmf,
            ..
        } = event
        {
            keypad_turns.push(text);
        }
    }
    assert_eq!(keypad_turns, vec!["[pressed 4#]".to_owned()]);
    let asked: Vec<String> = llm
        .records()
        .iter()
        .filter_map(|record| match record.request.messages.last() {
            Some(ChatMessage::User { content }) => Some(content.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        asked,
        vec!["[pressed 4#]".to_owned()],
        "the model was asked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_in_band_tones_without_telephone_event_become_keys() {
    if !sipp_installed() {
        skip("sipp_in_band_tones_without_telephone_event_become_keys");
        return;
    }
    // Keys 7, 3, # as tones (-10 dBFS per tone, 100 ms on, 150 ms off),
    // mu-law, as a phone without RFC 4733 sends them.
    let dir = std::env::temp_dir().join(format!("callingbox-inband-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut tones = vec![0i16; 4_000];
    for key in "73#".chars() {
        synthesize_key(&mut tones, SampleRate::Hz8000, key, 100, 0.3, (1.0, 1.0));
        synthesize_key(&mut tones, SampleRate::Hz8000, ' ', 150, 0.0, (1.0, 1.0));
    }
    write_wav(
        dir.join("inband_dtmf_keys.8k.ulaw.wav"),
        SampleRate::Hz8000,
        &tones,
        WavEncoding::MuLaw,
    )
    .expect("write tones");

    let mut engine = start_engine(42_400..=42_498, Duration::ZERO).await;
    let output = run_sipp_in(&engine, "uac_inband_dtmf.xml", dir.clone()).await;
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    let events = events_until_ended(&mut engine.events, Duration::from_secs(5)).await;
    let digits: String = events
        .iter()
        .filter_map(|event| match event {
            SipEvent::Dtmf { digit } => Some(*digit),
            _ => None,
        })
        .collect();
    assert_eq!(digits, "73#", "{events:?}");
    let Some(SipEvent::Ended { rtp, .. }) = events.last() else {
        panic!("the call did not end: {events:?}");
    };
    assert_eq!(rtp.event_packets, 0, "no RFC 4733 events: {rtp:?}");
    let (mut call_events, llm) = engine.agents.recv().await.expect("the call's agent");
    let mut keypad_turns = Vec::new();
    while let Ok(event) = call_events.try_recv() {
        if let CallEvent::TranscriptSegment {
            role: Role::User,
            text,
            source: SegmentSource::Dtmf,
            ..
        } = event
        {
            keypad_turns.push(text);
        }
    }
    assert_eq!(keypad_turns, vec!["[pressed 73#]".to_owned()]);
    assert!(
        llm.records().iter().any(|record| matches!(
            record.request.messages.last(),
            Some(ChatMessage::User { content }) if content == "[pressed 73#]"
        )),
        "the model was not asked about the keys"
    );
}

/// An RFC 4733 packet of `event` (PT 101).
fn event_packet(
    sequence: u16,
    timestamp: u32,
    marker: bool,
    event: u8,
    end: bool,
    duration: u16,
) -> Vec<u8> {
    let mut packet = vec![0x80, (u8::from(marker) << 7) | 101];
    packet.extend_from_slice(&sequence.to_be_bytes());
    packet.extend_from_slice(&timestamp.to_be_bytes());
    packet.extend_from_slice(&0x0BAD_CAFEu32.to_be_bytes());
    packet.extend_from_slice(&[event, (u8::from(end) << 7) | 10]);
    packet.extend_from_slice(&duration.to_be_bytes());
    packet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_the_agent_sends_digits_as_rfc_4733_events() {
    if !sipp_installed() {
        skip("sipp_the_agent_sends_digits_as_rfc_4733_events");
        return;
    }
    // The agent presses 1 2 # when the caller pressed a key.
    let rules = || {
        vec![
            ScriptRule::when(ScriptMatch::ToolResultContains {
                tool: "send_dtmf".into(),
                contains: "sent".into(),
            })
            .reply("Done."),
            ScriptRule::when(ScriptMatch::UserContains("pressed".into()))
                .call("send_dtmf", serde_json::json!({"digits": "12#"})),
            ScriptRule::when(ScriptMatch::Always).reply("Okay."),
        ]
    };
    let tools = ToolSet::from_json(r#"[{"type":"builtin","name":"send_dtmf"}]"#).expect("tools");
    let mut engine = start_engine_with(42_500..=42_500, Duration::ZERO, move || {
        scripted_conversation_with(&[BOOK_TABLE], rules(), tools.clone())
    })
    .await;
    // The caller's RTP is this socket (the SDP's address); SIPp sends none.
    let sink = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let sink_port = sink.local_addr().expect("addr").port();
    let scenario = fixtures("sip").join("uac_rtp_sink.xml");
    let target = engine.sip.to_string();
    let (sip_port, media_port) = (free_port(), free_port());
    let sipp = tokio::task::spawn_blocking(move || {
        Command::new("sipp")
            .arg(target)
            .arg("-sf")
            .arg(scenario)
            .args(["-s", "1000", "-i", "127.0.0.1", "-mi", "127.0.0.1"])
            .args(["-p", &sip_port.to_string(), "-mp", &media_port.to_string()])
            .args(["-key", "rtp_sink_port", &sink_port.to_string()])
            .args(["-m", "1", "-nostdin", "-timeout", "30s", "-timeout_error"])
            .output()
            .expect("run sipp")
    });
    // Answered: press # (start, update, three ends) toward the engine's one port.
    loop {
        match tokio::time::timeout(Duration::from_secs(5), engine.events.recv()).await {
            Ok(Some(SipEvent::Answered)) => break,
            Ok(Some(_)) => {}
            other => panic!("the call was not answered: {other:?}"),
        }
    }
    let engine_rtp: SocketAddr = "127.0.0.1:42500".parse().expect("addr");
    for (i, (marker, end, duration)) in [
        (true, false, 160),
        (false, false, 320),
        (false, true, 480),
        (false, true, 480),
        (false, true, 480),
    ]
    .into_iter()
    .enumerate()
    {
        let packet = event_packet(i as u16, 8_000, marker, 11, end, duration);
        sink.send_to(&packet, engine_rtp).await.expect("send");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Read what the engine sends until its event packets end.
    let mut events = Vec::new();
    let mut buffer = [0u8; 2_048];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    while let Ok(Ok((length, _))) =
        tokio::time::timeout_at(deadline, sink.recv_from(&mut buffer)).await
    {
        let packet = &buffer[..length];
        if length == 16 && packet[1] & 0x7F == 101 {
            let sequence = u16::from_be_bytes([packet[2], packet[3]]);
            let timestamp = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
            let duration = u16::from_be_bytes([packet[14], packet[15]]);
            events.push((
                packet[1] >> 7 == 1,
                sequence,
                timestamp,
                packet[12],
                packet[13] >> 7 == 1,
                duration,
            ));
        }
    }
    let output = sipp.await.expect("sipp thread");
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));

    // Three events (1, 2, #), seven packets each: a marked start, updates
    // of growing duration, three ends; one timestamp per event.
    let codes: Vec<u8> = events.iter().map(|e| e.3).collect();
    assert_eq!(codes, [[1u8; 7], [2; 7], [11; 7]].concat(), "{events:?}");
    for event in events.chunks(7) {
        let markers: Vec<bool> = event.iter().map(|e| e.0).collect();
        assert_eq!(
            markers,
            [true, false, false, false, false, false, false],
            "{event:?}"
        );
        assert!(
            event.iter().all(|e| e.2 == event[0].2),
            "one timestamp: {event:?}"
        );
        let ends: Vec<bool> = event.iter().map(|e| e.4).collect();
        assert_eq!(
            ends,
            [false, false, false, false, true, true, true],
            "{event:?}"
        );
        let durations: Vec<u16> = event.iter().map(|e| e.5).collect();
        assert!(durations.windows(2).all(|w| w[0] <= w[1]), "{durations:?}");
        assert_eq!(
            durations[4..],
            [800, 800, 800],
            "100 ms keys: {durations:?}"
        );
    }
    // Sequence numbers go up by one through all of them; events start
    // later in media time one after the other.
    assert!(
        events.windows(2).all(|w| w[1].1 == w[0].1.wrapping_add(1)),
        "{events:?}"
    );
    assert!(events[7].2.wrapping_sub(events[0].2) >= 1_600, "{events:?}");
    assert!(
        events[14].2.wrapping_sub(events[7].2) >= 1_600,
        "{events:?}"
    );

    // The model got the tool's result.
    let (mut call_events, llm) = engine.agents.recv().await.expect("the call's agent");
    let mut results = Vec::new();
    while let Ok(event) = call_events.try_recv() {
        if let CallEvent::ToolResult { name, outcome, .. } = event {
            results.push((name, outcome));
        }
    }
    assert_eq!(
        results,
        vec![(
            "send_dtmf".to_owned(),
            ToolOutcome::Result(serde_json::json!({"sent": "12#"}))
        )]
    );
    assert!(
        llm.records().iter().any(|r| matches!(
            r.request.messages.last(),
            Some(ChatMessage::Tool { content, .. }) if content.contains("12#")
        )),
        "the model did not see the result"
    );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_past_the_workers_capacity_get_503_not_a_call_that_fails() {
    // The worker takes 4 calls (its VAD batch): 4 INVITEs are answered
    // (and wait for their ACKs), the 5th is refused before any ringing.
    let engine = start_engine(42_700..=42_720, Duration::ZERO).await;
    assert_eq!(engine.worker.capacity(), 4);
    // One socket per call: a call's 200 retransmissions stay on its own.
    let mut sockets = Vec::new();
    for _ in 0..5 {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        sockets.push(socket);
    }
    let offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
        m=audio 9 RTP/AVP 0\r\n";
    let short = Duration::from_millis(300);
    for (n, socket) in sockets.iter().take(4).enumerate() {
        let invite = request(
            "INVITE",
            "1000",
            &format!("cap{n}"),
            Some(&format!("cap-{n}")),
            offer,
        );
        assert_eq!(
            exchange(socket, engine.sip, invite.as_bytes(), short).await,
            vec![
                "SIP/2.0 100 Trying",
                "SIP/2.0 180 Ringing",
                "SIP/2.0 200 OK"
            ],
            "call {n}"
        );
    }
    let fifth = request("INVITE", "1000", "cap4", Some("cap-4"), offer);
    assert_eq!(
        exchange(&sockets[4], engine.sip, fifth.as_bytes(), short).await,
        vec!["SIP/2.0 100 Trying", "SIP/2.0 503 Service Unavailable"]
    );
}

/// The transfer tests' agent: transfers when the caller wants a table,
/// says sorry if the transfer failed.
async fn start_transferring_engine(rtp_ports: std::ops::RangeInclusive<u16>) -> Engine {
    let rules = || {
        vec![
            ScriptRule::when(ScriptMatch::ToolResultContains {
                tool: "transfer_call".into(),
                contains: "error".into(),
            })
            .reply("Sorry, I could not put you through. Can I help you myself?"),
            ScriptRule::when(ScriptMatch::UserContains("table".into()))
                .call("transfer_call", serde_json::json!({})),
            ScriptRule::when(ScriptMatch::Always).reply("Okay."),
        ]
    };
    let tools = ToolSet::from_json(
        r#"[{"type":"builtin","name":"transfer_call","config":{"to":"+14155550100"}}]"#,
    )
    .expect("tools");
    start_engine_with(rtp_ports, Duration::ZERO, move || {
        scripted_conversation_with(&[BOOK_TABLE], rules(), tools.clone())
    })
    .await
}

/// The agent's tool results and spoken replies until its event stream
/// ends or `wait` passes.
async fn tool_results(
    events: &mut mpsc::UnboundedReceiver<CallEvent>,
    wait: Duration,
) -> (Vec<(String, ToolOutcome)>, Vec<String>) {
    let (mut results, mut agent_said) = (Vec::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, events.recv()).await {
        match event {
            CallEvent::ToolResult { name, outcome, .. } => results.push((name, outcome)),
            CallEvent::TranscriptSegment {
                role: Role::Agent,
                text,
                ..
            } => agent_said.push(text),
            _ => {}
        }
    }
    (results, agent_said)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_the_agent_transfers_the_caller_with_refer_and_hangs_up() {
    if !sipp_installed() {
        skip("sipp_the_agent_transfers_the_caller_with_refer_and_hangs_up");
        return;
    }
    let mut engine = start_transferring_engine(42_600..=42_620).await;
    // SIPp checks the REFER's Refer-To and Referred-By, accepts it,
    // reports 100 then 200 in NOTIFYs and expects our BYE.
    let output = run_sipp(&engine, "uac_transferred.xml").await;
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));

    let events = events_until_ended(&mut engine.events, Duration::from_secs(5)).await;
    assert!(
        events.iter().any(|event| matches!(
            event,
            SipEvent::Ended { reason: SipEnd::Transferred { to }, .. } if to == "+14155550100"
        )),
        "{events:?}"
    );
    let (mut agent_events, _) = engine.agents.recv().await.expect("the call's agent");
    let (results, _) = tool_results(&mut agent_events, Duration::from_secs(3)).await;
    assert_eq!(
        results,
        vec![(
            "transfer_call".to_owned(),
            ToolOutcome::Result(serde_json::json!({
                "status": "transferred", "to": "+14155550100", "sip_status": 200
            }))
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipp_a_declined_transfer_keeps_the_agent_on_the_call() {
    if !sipp_installed() {
        skip("sipp_a_declined_transfer_keeps_the_agent_on_the_call");
        return;
    }
    let mut engine = start_transferring_engine(42_630..=42_650).await;
    // SIPp answers the REFER 603, stays 3 s, then hangs up.
    let output = run_sipp(&engine, "uac_transfer_declined.xml").await;
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));

    let events = events_until_ended(&mut engine.events, Duration::from_secs(5)).await;
    assert!(
        events.iter().any(|event| matches!(
            event,
            SipEvent::Ended {
                reason: SipEnd::RemoteBye,
                ..
            }
        )),
        "{events:?}"
    );
    let (mut agent_events, _) = engine.agents.recv().await.expect("the call's agent");
    let (results, agent_said) = tool_results(&mut agent_events, Duration::from_secs(3)).await;
    assert_eq!(
        results,
        vec![(
            "transfer_call".to_owned(),
            ToolOutcome::Error("the transfer was refused: 603 Decline".into())
        )],
    );
    // The model heard why and told the caller.
    assert!(
        agent_said
            .iter()
            .any(|text| text.contains("could not put you through")),
        "{agent_said:?}"
    );
}
