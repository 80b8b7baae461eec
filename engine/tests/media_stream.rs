//! The media-stream WebSocket end to end, over a real socket on 127.0.0.1:
//! a client written with tokio-tungstenite plays Twilio from the messages of
//! `fixtures/providers/twilio_media_stream/session.jsonl` (Twilio's
//! published Media Streams format), streaming recorded fixture speech as
//! base64 mu-law at real pace; the server (axum route, media worker on its
//! own task, VAD, turn machine, agent loop with scripted LLM/TTS/ASR)
//! answers with `media`, `mark` and `clear` messages. The fake carrier
//! buffers and plays what it receives like Twilio does: one 20 ms frame per
//! tick, marks echoed once the audio before them played, everything dropped
//! (and pending marks echoed) on `clear`.
//!
//! Virtual time: tokio's clock is paused and auto-advances only when every
//! task waits, so socket traffic on loopback happens "instantly" and runs
//! are exact and fast.

mod common;

use common::scripted_call::{pcmu_media, scripted_conversation};

use std::collections::VecDeque;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use callingbox_engine::audio::{InboundCodec, OutboundConfig};
use callingbox_engine::codecs::{G711Law, SampleRate, read_wav};
use callingbox_engine::session::{CallMediaConfig, MediaEvent, MediaWorker};
use callingbox_engine::transport::media_stream::{
    CallSetup, EndReason, MarkEcho, MediaStreamServer, StreamEvent, StreamStart, serve,
};
use callingbox_engine::transport::{
    CallSpec, PACKET_MAX, WirePacket, WorkerHandle, spawn_worker, spawn_worker_thread,
};
use callingbox_engine::turns::TurnConfig;
use callingbox_engine::vad::{VadBatch, VadGateConfig};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant as TokioInstant;
use tokio_tungstenite::tungstenite::Message;

const TICK: Duration = Duration::from_millis(20);
const BOOK_TABLE: &str =
    "I'd like to book a table for four people tomorrow at seven in the evening.";
const LONG_REPLY: &str = "Sure, I can book that for you. Let me check what we have for four people tomorrow evening, \
    we have a table at seven by the window, and another one at seven thirty near the bar, which would you prefer?";

fn fixture_ulaw(id: &str) -> Vec<u8> {
    let path = format!(
        "{}/../fixtures/audio/{id}.8k.ulaw.wav",
        env!("CARGO_MANIFEST_DIR")
    );
    let audio = read_wav(path).expect("fixture");
    let mut codes = vec![0u8; audio.samples.len()];
    G711Law::MuLaw
        .encode(&audio.samples, &mut codes)
        .expect("encode");
    codes
}

/// The example session: (from, message) per line.
fn twilio_session() -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/providers/twilio_media_stream/session.jsonl"
    ))
    .expect("session fixture");
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let mut line: Value = serde_json::from_str(line).expect("json line");
            let from = line["from"].as_str().expect("from").to_owned();
            (from, line["message"].take())
        })
        .collect()
}

/// The fixture's message of `event` sent by `from`.
fn template(from: &str, event: &str) -> Value {
    twilio_session()
        .into_iter()
        .find(|(sender, message)| sender == from && message["event"] == event)
        .map(|(_, message)| message)
        .unwrap_or_else(|| panic!("no {from} {event} in the fixture"))
}

/// Same keys, recursively (values aside): the server speaks the documented shape.
fn same_shape(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => {
            a.len() == e.len()
                && e.iter()
                    .all(|(key, value)| a.get(key).is_some_and(|got| same_shape(got, value)))
        }
        (Value::Object(_), _) | (_, Value::Object(_)) => false,
        _ => true,
    }
}

fn rms(codes: &[u8]) -> f64 {
    let mut samples = vec![0i16; codes.len()];
    G711Law::MuLaw.decode(codes, &mut samples).expect("decode");
    let energy: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    (energy / samples.len().max(1) as f64).sqrt()
}

// ---------------------------------------------------------------------------
// The server side: axum on 127.0.0.1, a worker task, scripted providers.

struct Server {
    address: std::net::SocketAddr,
    worker: WorkerHandle,
    events: mpsc::UnboundedReceiver<StreamEvent>,
}

async fn start_server(user_says: &[&str], agent_replies: &[&str]) -> Server {
    let user_says: Vec<String> = user_says.iter().map(|s| s.to_string()).collect();
    let agent_replies: Vec<String> = agent_replies.iter().map(|s| s.to_string()).collect();
    let (events_tx, events) = mpsc::unbounded_channel();
    let factory = move |_start: &StreamStart| {
        let conversation = scripted_conversation(&user_says, &agent_replies).map_err(|error| {
            callingbox_engine::transport::media_stream::CallRefused::unavailable(error.to_string())
        })?;
        Ok(CallSetup {
            media: pcmu_media(),
            link: Some(conversation.link),
            epoch: conversation.epoch,
            events: Some(events_tx.clone()),
            cancel: conversation.cancel,
        })
    };
    let (worker, _task) = spawn_worker(MediaWorker::new(VadBatch::load_or_fallback(4), None));
    let server = MediaStreamServer::new(worker.clone(), factory);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(serve(listener, server));
    Server {
        address,
        worker,
        events,
    }
}

// ---------------------------------------------------------------------------
// The carrier side: Twilio as the docs describe it.

/// What the carrier got from the server.
#[derive(Debug, Clone)]
enum FromServer {
    Text(Value),
    Close { code: u16, reason: String },
}

enum Buffered {
    Media,
    Mark(String),
}

type ClientSink = futures::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;

struct Carrier {
    sink: ClientSink,
    incoming: mpsc::UnboundedReceiver<FromServer>,
    reader: tokio::task::JoinHandle<()>,
    /// Everything the server sent, with when it arrived.
    log: Vec<(TokioInstant, FromServer)>,
    /// The caller's audio still to stream.
    caller: VecDeque<u8>,
    chunk: u64,
    sequence: u64,
    /// Audio and marks the carrier holds for playout.
    buffered: VecDeque<Buffered>,
    next_tick: TokioInstant,
}

impl Carrier {
    async fn connect(server: &Server) -> Carrier {
        let url = format!("ws://{}/media-stream", server.address);
        // Nagle off, as a carrier's media sender would have it.
        let (socket, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
            .await
            .expect("connect");
        let (sink, mut stream) = socket.split();
        let (tx, incoming) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let event = match message {
                    Message::Text(text) => {
                        FromServer::Text(serde_json::from_str(text.as_str()).expect("server JSON"))
                    }
                    Message::Close(frame) => {
                        let (code, reason) = frame
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new()));
                        let _ = tx.send(FromServer::Close { code, reason });
                        break;
                    }
                    _ => continue,
                };
                let _ = tx.send(event);
            }
        });
        Carrier {
            sink,
            incoming,
            reader,
            log: Vec::new(),
            caller: VecDeque::new(),
            chunk: 0,
            sequence: 0,
            buffered: VecDeque::new(),
            next_tick: TokioInstant::now(),
        }
    }

    async fn send_json(&mut self, message: &Value) {
        self.send_text(message.to_string()).await;
    }

    async fn send_text(&mut self, text: String) {
        self.sequence += 1;
        // A closed socket is what some tests expect; they check the close.
        let _ = self.sink.send(Message::text(text)).await;
    }

    /// `connected` and `start`, from the fixture.
    async fn open_stream(&mut self) {
        self.send_json(&template("carrier", "connected")).await;
        self.send_json(&template("carrier", "start")).await;
    }

    async fn send_media(&mut self, payload: &[u8]) {
        self.chunk += 1;
        let mut message = template("carrier", "media");
        message["sequenceNumber"] = json!((self.sequence + 1).to_string());
        message["media"]["chunk"] = json!(self.chunk.to_string());
        message["media"]["timestamp"] = json!(((self.chunk - 1) * 20).to_string());
        message["media"]["payload"] = json!(BASE64.encode(payload));
        self.send_json(&message).await;
    }

    fn say(&mut self, id: &str) -> TokioInstant {
        self.caller.extend(fixture_ulaw(id));
        TokioInstant::now()
    }

    /// One 20 ms tick: stream the caller's next chunk, take in what the
    /// server sent, play one frame of it.
    async fn tick(&mut self) {
        let mut payload = [0xFFu8; 160];
        for byte in payload.iter_mut() {
            match self.caller.pop_front() {
                Some(code) => *byte = code,
                None => break,
            }
        }
        self.send_media(&payload).await;
        self.take_in().await;
        self.play().await;
        self.next_tick += TICK;
        tokio::time::sleep_until(self.next_tick).await;
    }

    async fn take_in(&mut self) {
        while let Ok(message) = self.incoming.try_recv() {
            let now = TokioInstant::now();
            if let FromServer::Text(text) = &message {
                match text["event"].as_str() {
                    Some("media") => self.buffered.push_back(Buffered::Media),
                    Some("mark") => {
                        let name = text["mark"]["name"].as_str().expect("mark name");
                        self.buffered.push_back(Buffered::Mark(name.to_owned()));
                    }
                    Some("clear") => {
                        // Twilio drops its audio and echoes the marks still pending.
                        let marks: Vec<String> = self
                            .buffered
                            .drain(..)
                            .filter_map(|item| match item {
                                Buffered::Mark(name) => Some(name),
                                Buffered::Media => None,
                            })
                            .collect();
                        for name in marks {
                            self.echo_mark(&name).await;
                        }
                    }
                    other => panic!("unexpected server event {other:?}"),
                }
            }
            self.log.push((now, message));
        }
    }

    async fn play(&mut self) {
        self.echo_leading_marks().await;
        if let Some(Buffered::Media) = self.buffered.front() {
            self.buffered.pop_front();
        }
        self.echo_leading_marks().await;
    }

    async fn echo_leading_marks(&mut self) {
        while let Some(Buffered::Mark(name)) = self.buffered.front() {
            let name = name.clone();
            self.buffered.pop_front();
            self.echo_mark(&name).await;
        }
    }

    async fn echo_mark(&mut self, name: &str) {
        let mut echo = template("carrier", "mark");
        echo["sequenceNumber"] = json!((self.sequence + 1).to_string());
        echo["mark"]["name"] = json!(name);
        self.send_json(&echo).await;
    }

    async fn run(&mut self, duration: Duration) {
        for _ in 0..duration.as_millis() / 20 {
            self.tick().await;
        }
    }

    /// Ticks until the server sends a message `found` matches; returns when.
    async fn run_until(
        &mut self,
        limit: Duration,
        found: impl Fn(&FromServer) -> bool,
    ) -> Option<TokioInstant> {
        let seen = self.log.len();
        for _ in 0..limit.as_millis() / 20 {
            self.tick().await;
            if let Some((at, _)) = self.log[seen..].iter().find(|(_, m)| found(m)) {
                return Some(*at);
            }
        }
        None
    }

    /// Waits (without sending) for the server to close the socket.
    async fn closed(&mut self) -> (u16, String) {
        let deadline = TokioInstant::now() + Duration::from_secs(2);
        loop {
            let message = tokio::time::timeout_at(deadline, self.incoming.recv())
                .await
                .expect("the server closes in time");
            match message {
                Some(FromServer::Close { code, reason }) => return (code, reason),
                Some(other) => self.log.push((TokioInstant::now(), other)),
                None => panic!("socket dropped without a close frame"),
            }
        }
    }

    fn texts(&self, event: &str) -> impl Iterator<Item = (TokioInstant, &Value)> {
        self.log
            .iter()
            .filter_map(move |(at, message)| match message {
                FromServer::Text(text) if text["event"] == event => Some((*at, text)),
                _ => None,
            })
    }
}

fn is_event(event: &'static str) -> impl Fn(&FromServer) -> bool {
    move |message| matches!(message, FromServer::Text(text) if text["event"] == event)
}

fn is_mark(name: &'static str) -> impl Fn(&FromServer) -> bool {
    move |message| {
        matches!(message, FromServer::Text(text)
            if text["event"] == "mark" && text["mark"]["name"] == name)
    }
}

/// Transport events so far, with when they were taken.
fn drain(
    events: &mut mpsc::UnboundedReceiver<StreamEvent>,
    into: &mut Vec<(TokioInstant, StreamEvent)>,
) {
    while let Ok(event) = events.try_recv() {
        into.push((TokioInstant::now(), event));
    }
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Lets the runtime settle for `duration` of virtual time.
async fn settle(duration: Duration) {
    tokio::time::sleep(duration).await;
}

// ---------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_caller_on_a_media_stream_hears_the_agent_and_the_reply_is_marked() {
    let mut server = start_server(
        &[BOOK_TABLE],
        &["Sure, a table for four at seven tomorrow."],
    )
    .await;
    settle(TICK).await;
    let baseline = alive_tasks();
    let mut carrier = Carrier::connect(&server).await;
    carrier.open_stream().await;
    carrier.send_json(&template("carrier", "dtmf")).await;
    carrier
        .send_text(r#"{"event":"somethingTwilioAddsLater","streamSid":"MZ"}"#.into())
        .await;
    carrier.run(Duration::from_millis(200)).await;
    assert_eq!(server.worker.live_calls(), 1);
    carrier.say("statement_book_table");
    let first_media = carrier
        .run_until(Duration::from_secs(8), is_event("media"))
        .await
        .expect("the agent answers");
    let marked = carrier
        .run_until(Duration::from_secs(8), is_mark("reply-0"))
        .await
        .expect("the reply is marked");
    carrier.run(Duration::from_millis(200)).await;

    // The reply: 20 ms mu-law frames, audible, one per tick.
    let media: Vec<(TokioInstant, Vec<u8>)> = carrier
        .texts("media")
        .map(|(at, text)| {
            let payload = text["media"]["payload"].as_str().expect("payload");
            (at, BASE64.decode(payload).expect("base64"))
        })
        .collect();
    assert!(media.len() >= 50, "{} media messages", media.len());
    assert!(media.iter().all(|(_, payload)| payload.len() == 160));
    let audio: Vec<u8> = media.iter().flat_map(|(_, p)| p.iter().copied()).collect();
    let level = rms(&audio);
    assert!(level > 300.0, "agent audio RMS {level:.0}");
    for window in media.windows(6) {
        let span = window[5].0 - window[0].0;
        assert!(
            span >= Duration::from_millis(80),
            "6 frames within {span:?}: a burst"
        );
    }
    let last_media = media.last().expect("media").0;
    assert!(marked >= last_media, "the mark follows the reply's audio");
    assert!(first_media < marked);
    // What the server sent has the documented shape.
    for (_, text) in carrier.texts("media").take(1).chain(carrier.texts("mark")) {
        let event = text["event"].as_str().expect("event");
        assert!(same_shape(text, &template("server", event)), "{text}");
        assert_eq!(text["streamSid"], template("carrier", "start")["streamSid"]);
    }

    // The transport's event stream: started, the DTMF, the echo of the mark.
    let mut events = Vec::new();
    drain(&mut server.events, &mut events);
    let started = events.iter().find_map(|(_, e)| match e {
        StreamEvent::Started(start) => Some(start.clone()),
        _ => None,
    });
    assert_eq!(
        started.expect("started").custom_parameters["agent"],
        "restaurant-demo"
    );
    assert!(
        events
            .iter()
            .any(|(_, e)| *e == StreamEvent::Dtmf { digit: '1' })
    );
    assert!(events.iter().any(|(_, e)| *e
        == StreamEvent::MarkEchoed(MarkEcho {
            segment: 0,
            cleared: false
        })));
    assert!(events.iter().any(|(_, e)| matches!(
        e,
        StreamEvent::Media(MediaEvent::UserTurnEnded { text, .. }) if text == BOOK_TABLE
    )));

    // `stop` ends the call: closed cleanly, removed, nothing left running.
    carrier.send_json(&template("carrier", "stop")).await;
    let (code, _) = carrier.closed().await;
    assert_eq!(code, 1000);
    settle(Duration::from_millis(200)).await;
    drain(&mut server.events, &mut events);
    let Some((_, StreamEvent::Ended { reason, stats })) = events.last() else {
        panic!("no Ended event: {:?}", events.last());
    };
    assert_eq!(*reason, EndReason::Stopped);
    assert_eq!(stats.unknown_events, 1);
    assert_eq!(stats.dtmf, 1);
    assert_eq!(stats.marks_sent, 1);
    assert_eq!(stats.marks_echoed, 1);
    assert_eq!(stats.media_sent as usize, media.len());
    assert_eq!(server.worker.live_calls(), 0);
    let Carrier { reader, sink, .. } = carrier;
    drop(sink);
    reader.await.expect("reader");
    settle(Duration::from_millis(200)).await;
    assert_eq!(alive_tasks(), baseline, "tasks left after the call");
    assert_eq!(server.worker.inbound_dropped(), 0);
    assert_eq!(server.worker.outputs_dropped(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_barge_in_sends_clear_and_the_cut_reply_is_never_sent_again() {
    let mut server = start_server(&[BOOK_TABLE, "Wait, stop."], &[LONG_REPLY]).await;
    let mut carrier = Carrier::connect(&server).await;
    carrier.open_stream().await;
    carrier.say("statement_book_table");
    carrier
        .run_until(Duration::from_secs(8), is_event("media"))
        .await
        .expect("the agent answers");
    carrier.run(Duration::from_secs(1)).await;
    let spoke_at = carrier.say("interruption_wait_stop");
    let cleared_at = carrier
        .run_until(Duration::from_secs(3), is_event("clear"))
        .await
        .expect("the server sends clear");
    // Confirmed within ~200-500 ms of the caller's onset (340 ms into the clip).
    let reaction = cleared_at - spoke_at;
    assert!(
        reaction < Duration::from_millis(340 + 600),
        "clear after {reaction:?}"
    );
    // Events taken every tick, so their times are the ticks they came in.
    let mut events = Vec::new();
    drain(&mut server.events, &mut events);
    for _ in 0..4_000 / 20 {
        carrier.tick().await;
        drain(&mut server.events, &mut events);
    }
    let interrupted = events.iter().find_map(|(at, e)| match e {
        StreamEvent::Media(MediaEvent::Interrupted {
            segment,
            flushed_frames,
            ..
        }) => Some((*at, *segment, *flushed_frames)),
        _ => None,
    });
    let (_, segment, flushed) = interrupted.expect("Interrupted reported");
    assert_eq!(segment, Some(0));
    assert!(flushed > 20, "the long reply was still queued: {flushed}");
    // The next audio is the answer to "Wait, stop." (reply 1), not more of reply 0.
    let next_reply_at = events
        .iter()
        .find_map(|(at, e)| match e {
            StreamEvent::Media(MediaEvent::AgentAudioStarted { segment, .. }) if *segment >= 1 => {
                Some(*at)
            }
            _ => None,
        })
        .expect("the agent answers the interruption");
    // In arrival order: the media messages between the clear and the next
    // reply (the confirming tick's packet goes out just before the clear).
    let clear_index = carrier
        .log
        .iter()
        .position(|(_, message)| is_event("clear")(message))
        .expect("clear sent");
    let media_after_clear = carrier.log[clear_index..]
        .iter()
        .filter(|(at, message)| is_event("media")(message) && *at < next_reply_at)
        .count();
    assert_eq!(media_after_clear, 0, "media of the cut reply after clear");
    assert!(next_reply_at - cleared_at >= Duration::from_millis(300));
    // The cut reply is never marked; the next one is.
    assert_eq!(
        carrier
            .texts("mark")
            .filter(|(_, m)| m["mark"]["name"] == "reply-0")
            .count(),
        0
    );
    assert!(
        carrier
            .texts("mark")
            .any(|(_, m)| m["mark"]["name"] == "reply-1")
    );
    let clear = carrier.texts("clear").next().expect("clear").1.clone();
    assert!(same_shape(&clear, &template("server", "clear")));

    carrier.send_json(&template("carrier", "stop")).await;
    assert_eq!(carrier.closed().await.0, 1000);
    settle(Duration::from_millis(100)).await;
    assert_eq!(server.worker.live_calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn malformed_messages_get_a_clean_close_and_the_server_keeps_serving() {
    let mut server = start_server(&[], &[]).await;
    settle(TICK).await;
    let baseline = alive_tasks();

    // Not JSON at all.
    let mut carrier = Carrier::connect(&server).await;
    carrier.send_text("this is not json".into()).await;
    assert_eq!(carrier.closed().await.0, 1007);

    // A stream that is not 8 kHz mu-law.
    let mut carrier = Carrier::connect(&server).await;
    let mut start = template("carrier", "start");
    start["start"]["mediaFormat"] =
        json!({"encoding": "audio/l16", "sampleRate": 16000, "channels": 1});
    carrier.send_json(&start).await;
    let (code, reason) = carrier.closed().await;
    assert_eq!(code, 1003);
    assert!(reason.contains("unsupported media format"), "{reason}");

    // Media before start.
    let mut carrier = Carrier::connect(&server).await;
    carrier.send_media(&[0xFF; 160]).await;
    assert_eq!(carrier.closed().await.0, 1002);

    // A call in progress, then a payload that is not base64.
    let mut carrier = Carrier::connect(&server).await;
    carrier.open_stream().await;
    carrier.run(Duration::from_millis(100)).await;
    assert_eq!(server.worker.live_calls(), 1);
    let mut bad = template("carrier", "media");
    bad["media"]["chunk"] = json!("99");
    bad["media"]["payload"] = json!("%%% not base64 %%%");
    carrier.send_json(&bad).await;
    assert_eq!(carrier.closed().await.0, 1007);
    settle(Duration::from_millis(100)).await;
    assert_eq!(server.worker.live_calls(), 0, "the call was removed");
    let mut events = Vec::new();
    drain(&mut server.events, &mut events);
    assert!(events.iter().any(|(_, e)| matches!(
        e,
        StreamEvent::Ended {
            reason: EndReason::ProtocolError { code: 1007, .. },
            ..
        }
    )));

    // A binary frame.
    let mut carrier = Carrier::connect(&server).await;
    carrier.open_stream().await;
    let _ = carrier.sink.send(Message::binary(vec![0u8; 160])).await;
    assert_eq!(carrier.closed().await.0, 1003);

    // Still serving: a good call, then the carrier just drops the socket.
    let mut carrier = Carrier::connect(&server).await;
    carrier.open_stream().await;
    carrier.run(Duration::from_millis(100)).await;
    assert_eq!(server.worker.live_calls(), 1);
    let _ = carrier.sink.close().await;
    drop(carrier);
    settle(Duration::from_millis(200)).await;
    assert_eq!(server.worker.live_calls(), 0);
    drain(&mut server.events, &mut events);
    assert!(matches!(
        events.last(),
        Some((
            _,
            StreamEvent::Ended {
                reason: EndReason::SocketClosed,
                ..
            }
        ))
    ));
    settle(Duration::from_millis(200)).await;
    assert_eq!(alive_tasks(), baseline, "tasks left after the calls");
}

#[tokio::test(start_paused = true)]
async fn a_call_the_turn_machine_hangs_up_closes_the_socket() {
    let mut server = start_server(&[BOOK_TABLE], &["Sure."]).await;
    let mut carrier = Carrier::connect(&server).await;
    carrier.open_stream().await;
    carrier.say("statement_book_table");
    // The agent answers, then the caller stays silent: an idle prompt, then a hangup.
    carrier
        .run_until(Duration::from_secs(45), |message| {
            matches!(message, FromServer::Close { .. })
        })
        .await
        .expect("the server hangs up");
    let Some((_, FromServer::Close { code, .. })) = carrier.log.last() else {
        panic!("the close is the last message");
    };
    assert_eq!(*code, 1000);
    assert!(
        carrier.texts("mark").count() >= 2,
        "the answer and the idle prompt are marked"
    );
    settle(Duration::from_millis(100)).await;
    let mut events = Vec::new();
    drain(&mut server.events, &mut events);
    assert!(
        events
            .iter()
            .any(|(_, e)| matches!(e, StreamEvent::Media(MediaEvent::IdlePrompt)))
    );
    assert!(matches!(
        events.last(),
        Some((
            _,
            StreamEvent::Ended {
                reason: EndReason::HungUp,
                ..
            }
        ))
    ));
    assert_eq!(server.worker.live_calls(), 0);
}

#[tokio::test]
async fn a_worker_thread_takes_calls_and_ends_when_its_handles_drop() {
    let (worker, thread) = spawn_worker_thread(
        MediaWorker::new(VadBatch::load_or_fallback(2), None),
        "media-worker-test",
    )
    .expect("worker thread");
    let spec = CallSpec {
        config: CallMediaConfig {
            inbound: InboundCodec::G711(G711Law::MuLaw),
            outbound: OutboundConfig::pcmu(SampleRate::Hz16000),
            gate: VadGateConfig::default(),
            turns: TurnConfig::default(),
            inband_dtmf: false,
            answering_machine: None,
        },
        link: None,
        epoch: std::time::Instant::now(),
    };
    let hosted = worker.add_call(spec).await.expect("add");
    assert_eq!(worker.live_calls(), 1);
    let packet = WirePacket::new(0, 0, false, &[0xFF; 160]).expect("packet");
    worker.push_packet(hosted.key, packet);
    assert!(
        worker
            .remove_call(hosted.key)
            .await
            .expect("remove")
            .is_none()
    );
    assert_eq!(worker.live_calls(), 0);
    assert!(WirePacket::new(0, 0, false, &[0; PACKET_MAX + 1]).is_none());
    drop(worker);
    let worker = tokio::task::spawn_blocking(move || thread.join().expect("join"))
        .await
        .expect("joined");
    assert!(worker.is_empty());
}
