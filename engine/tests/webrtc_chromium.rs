//! A real browser calls the agent over WebRTC: headless Chromium opens the
//! engine's own page (`GET /webrtc?autostart`), which takes the microphone
//! (Chromium's fake device playing a fixture WAV of a caller booking a
//! table), offers Opus over `POST /webrtc/offer`, connects to the call's UDP
//! socket on loopback and plays the agent's audio. The page reports its
//! RTP counters (`getStats()`) to the test server every 500 ms; the test
//! answers `{"hangup": true}` once it has seen enough, and the page closing
//! its connection must end the call on the engine.
//!
//! Real time (a browser cannot run on virtual time); about 10-20 s.
//! Needs `/usr/bin/chromium` (`apt-get install chromium`, in `./dev setup`),
//! or the path in `CHROMIUM`.

mod common;

use common::scripted_call::{pcmu_media, scripted_conversation};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use callingbox_engine::codecs::read_wav;
use callingbox_engine::session::{MediaEvent, MediaWorker};
use callingbox_engine::transport::webrtc::{
    CallRefused, CallRequest, CallSetup, EndReason, PeerClosed, PeerEvent, WebRtcConfig,
    WebRtcServer, router,
};
use callingbox_engine::transport::{WorkerHandle, spawn_worker};
use callingbox_engine::vad::VadBatch;
use serde_json::{Value, json};
use tokio::sync::mpsc;

const BOOK_TABLE: &str =
    "I'd like to book a table for four people tomorrow at seven in the evening.";
const REPLY: &str = "Sure, a table for four at seven tomorrow.";

fn chromium() -> PathBuf {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        path.exists(),
        "this test drives headless Chromium, not found at {}: `apt-get install chromium` \
         (./dev setup does), or set CHROMIUM to its path",
        path.display()
    );
    path
}

/// The caller: 1.5 s of silence (the connection comes up meanwhile; the
/// fake microphone starts with getUserMedia), the fixture, 3 s of silence.
/// 16-bit PCM mono 16 kHz, which Chromium's fake capture reads.
fn caller_wav(dir: &Path) -> PathBuf {
    let fixture = read_wav(format!(
        "{}/../fixtures/audio/statement_book_table.16k.wav",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture");
    assert_eq!(fixture.rate.hz(), 16_000);
    let mut samples = vec![0i16; 24_000];
    samples.extend_from_slice(&fixture.samples);
    samples.extend(std::iter::repeat_n(0i16, 48_000));
    let data_len = (samples.len() * 2) as u32;
    let mut bytes = Vec::with_capacity(44 + data_len as usize);
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + data_len).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16u32.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes()); // PCM
    bytes.extend_from_slice(&1u16.to_le_bytes()); // mono
    bytes.extend_from_slice(&16_000u32.to_le_bytes());
    bytes.extend_from_slice(&32_000u32.to_le_bytes());
    bytes.extend_from_slice(&2u16.to_le_bytes());
    bytes.extend_from_slice(&16u16.to_le_bytes());
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&data_len.to_le_bytes());
    for sample in samples {
        bytes.extend_from_slice(&sample.to_le_bytes());
    }
    let path = dir.join("caller.wav");
    std::fs::write(&path, bytes).expect("write the caller's WAV");
    path
}

#[derive(Default)]
struct Reports {
    last: Mutex<Option<Value>>,
    count: Mutex<usize>,
    hang_up: AtomicBool,
}

async fn report(State(reports): State<Arc<Reports>>, body: axum::Json<Value>) -> axum::Json<Value> {
    if let Ok(mut last) = reports.last.lock() {
        *last = Some(body.0);
    }
    if let Ok(mut count) = reports.count.lock() {
        *count += 1;
    }
    axum::Json(json!({ "hangup": reports.hang_up.load(Ordering::SeqCst) }))
}

fn last_report(reports: &Reports) -> Value {
    reports
        .last
        .lock()
        .ok()
        .and_then(|last| last.clone())
        .unwrap_or(Value::Null)
}

fn chromium_log(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// One browser at a time: two would share the machine's 2 cores.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The engine and the browser of one test.
struct Call {
    dir: PathBuf,
    worker: WorkerHandle,
    events: mpsc::UnboundedReceiver<PeerEvent>,
    reports: Arc<Reports>,
    chromium: tokio::process::Child,
    log_path: PathBuf,
}

/// Starts the engine (a worker task, the WebRTC endpoint, scripted
/// providers; `max_call` ends the call from the engine's side) and a
/// headless Chromium on its page.
async fn start_call(name: &str, max_call: Option<Duration>) -> Call {
    let browser = chromium();
    let dir = std::env::temp_dir().join(format!("callingbox-webrtc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let wav = caller_wav(&dir);

    let (events_tx, events) = mpsc::unbounded_channel();
    let factory = move |_request: &CallRequest| {
        let conversation = scripted_conversation(&[BOOK_TABLE], &[REPLY])
            .map_err(|error| CallRefused::unavailable(error.to_string()))?;
        let mut media = pcmu_media();
        media.turns.max_call_duration = max_call;
        Ok(CallSetup {
            media,
            link: Some(conversation.link),
            epoch: conversation.epoch,
            events: Some(events_tx.clone()),
            cancel: conversation.cancel,
        })
    };
    let (worker, _task) = spawn_worker(MediaWorker::new(VadBatch::load_or_fallback(4), None));
    let server = WebRtcServer::new(worker.clone(), factory, WebRtcConfig::default());
    let reports = Arc::new(Reports::default());
    let app = router(server).merge(
        Router::new()
            .route("/report", post(report))
            .with_state(Arc::clone(&reports)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let log_path = dir.join("chromium.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let chromium = tokio::process::Command::new(&browser)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            "--autoplay-policy=no-user-gesture-required",
            "--allow-loopback-in-peer-connection",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!(
            "--use-file-for-fake-audio-capture={}%noloop",
            wav.display()
        ))
        .arg(format!(
            "http://{address}/webrtc?autostart=1&report=/report"
        ))
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");
    Call {
        dir,
        worker,
        events,
        reports,
        chromium,
        log_path,
    }
}

impl Call {
    async fn finish(mut self) {
        let _ = self.chromium.kill().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_calls_the_agent_and_hangs_up() {
    let _one = ONE_BROWSER.lock().await;
    let mut call = start_call("user-hangs-up", None).await;
    // The call: started, connected, the caller's turn, the agent's reply
    // heard by the browser.
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    let mut heard_reply = false;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        while let Ok(event) = call.events.try_recv() {
            seen.push(event);
        }
        let agent_spoke = seen.iter().any(|event| {
            matches!(
                event,
                PeerEvent::Media(MediaEvent::AgentAudioFinished { .. })
            )
        });
        let received = last_report(&call.reports)["received"]["packets"]
            .as_u64()
            .unwrap_or(0);
        if agent_spoke && received >= 50 {
            heard_reply = true;
            break;
        }
        if seen
            .iter()
            .any(|event| matches!(event, PeerEvent::Ended { .. }))
        {
            break;
        }
    }
    let during = last_report(&call.reports);
    eprintln!("the browser during the call: {during}");
    assert!(
        heard_reply,
        "no agent reply reached the browser in time.\nevents: {seen:?}\nlast report: {during}\n\
         chromium:\n{}",
        chromium_log(&call.log_path)
    );
    assert!(
        matches!(seen.first(), Some(PeerEvent::Started(_))),
        "{seen:?}"
    );
    assert!(seen.contains(&PeerEvent::Connected), "{seen:?}");
    assert!(
        seen.iter().any(|event| matches!(
            event,
            PeerEvent::Media(MediaEvent::UserTurnEnded { text, .. }) if text == BOOK_TABLE
        )),
        "the caller's turn: {seen:?}"
    );
    assert!(
        seen.iter().any(|event| matches!(
            event,
            PeerEvent::Media(MediaEvent::AgentAudioStarted { segment: 0, .. })
        )),
        "the agent's reply: {seen:?}"
    );
    assert_eq!(during["connection"], "connected", "{during}");
    // The browser sent its microphone and received the reply (~2.5 s of
    // speech at one packet per 20 ms) with no loss on loopback.
    let sent = during["sent"]["packets"].as_u64().unwrap_or(0);
    assert!(sent >= 100, "browser sent {sent} packets: {during}");
    let received = during["received"]["packets"].as_u64().unwrap_or(0);
    assert!(
        received >= 50,
        "browser received {received} packets: {during}"
    );
    assert_eq!(during["received"]["lost"].as_i64(), Some(0), "{during}");
    // And decoded it to sound (the scripted voice is a tone): Chromium's
    // own measure of the audio it played out.
    let energy = during["received"]["energy"].as_f64().unwrap_or(0.0);
    assert!(energy > 0.01, "the agent's audio decoded silent: {during}");

    // The page hangs up: the engine ends the call.
    call.reports.hang_up.store(true, Ordering::SeqCst);
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match call.events.recv().await {
                Some(PeerEvent::Ended { reason, stats }) => break Some((reason, stats)),
                Some(other) => seen.push(other),
                None => break None,
            }
        }
    })
    .await
    .expect("the call ends after the browser hangs up")
    .expect("an Ended event");
    let (reason, stats) = ended;
    assert!(
        matches!(
            reason,
            EndReason::Peer(PeerClosed::Remote | PeerClosed::Disconnected)
        ),
        "{reason:?}"
    );
    assert!(stats.packets_in >= 100, "{stats:?}");
    assert!(stats.packets_out >= received, "{stats:?}");
    assert_eq!(stats.packets_oversized, 0, "{stats:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(call.worker.live_calls(), 0);
    assert_eq!(call.worker.inbound_dropped(), 0);
    let final_report = last_report(&call.reports);
    assert_eq!(final_report["state"], "ended", "{final_report}");

    call.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_ending_the_call_closes_the_browser_connection() {
    let _one = ONE_BROWSER.lock().await;
    // The engine ends the call 8 s in (its longest call): after the reply.
    let mut call = start_call("agent-hangs-up", Some(Duration::from_secs(8))).await;
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match call.events.recv().await {
                Some(PeerEvent::Ended { reason, stats }) => break Some((reason, stats)),
                Some(_) => {}
                None => break None,
            }
        }
    })
    .await
    .expect("the engine ends the call")
    .expect("an Ended event");
    let (reason, stats) = ended;
    assert_eq!(reason, EndReason::HungUp, "{stats:?}");
    assert!(stats.packets_in >= 100, "{stats:?}");
    assert_eq!(call.worker.live_calls(), 0);
    // The browser saw its connection closed without being asked to hang up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut page = last_report(&call.reports);
    while page["state"] != "ended" && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        page = last_report(&call.reports);
    }
    assert!(!call.reports.hang_up.load(Ordering::SeqCst));
    assert_eq!(
        page["state"],
        "ended",
        "the page did not see the hang-up: {page}\nchromium:\n{}",
        chromium_log(&call.log_path)
    );
    assert_eq!(page["error"], Value::Null, "{page}");
    call.finish().await;
}
