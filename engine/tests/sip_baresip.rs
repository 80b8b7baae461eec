//! The SIP transport against a real softphone: baresip (Debian
//! `baresip-core`) calls the engine over 127.0.0.1 with a fixture WAV as its
//! microphone (`aufile`) and records what it hears (`sndfile` dumps each
//! call's decoded audio to a WAV). The engine (SIP UAS, RTP, media worker,
//! VAD, turn machine, agent loop with scripted LLM/TTS/ASR) answers, hears
//! the caller's sentence and talks back; the recording must hold the agent's
//! voice, which the scripted TTS renders as a 1 kHz square tone.
//!
//! baresip negotiates its own way (it offers Opus, G.722 and G.711 here),
//! keeps its own jitter buffer and decodes with its own codecs, which is
//! what SIPp does not: SIPp replays packets, baresip is a phone.
//!
//! baresip's recording holds the packets it got: the agent's reply, and the
//! comfort silence the engine sends while the agent is quiet. The test
//! checks the reply against what the engine says it sent, and that nothing
//! else (no echo, no noise) is in it.
//!
//! This runs on wall-clock time: baresip is a real process. It prints a
//! SKIPPED line when baresip is not installed (`./dev setup` installs it).

mod common;

use common::scripted_call::scripted_conversation;
use common::sip_engine::{Engine, start_engine_with};
use common::sipp::{fixtures, free_port};

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use callingbox_engine::codecs::{SampleRate, WavEncoding, read_wav, write_wav};
use callingbox_engine::events::{CallEvent, Role, SegmentSource};
use callingbox_engine::session::MediaEvent;
use callingbox_engine::transport::sip::sdp::CodecKind;
use callingbox_engine::transport::sip::{SipEnd, SipEvent};
use tokio::sync::mpsc;

const BOOK_TABLE: &str =
    "I'd like to book a table for four people tomorrow at seven in the evening.";
/// Short, so the call stays short: 41 characters are ~2.5 s of tone.
const REPLY: &str = "Sure, a table for four tomorrow at seven.";
/// The scripted voice's square wave: 8 samples up, 8 down at 16 kHz.
const TONE_HZ: f64 = 1_000.0;
/// Silence after the caller's sentence in the microphone file: the agent's
/// reply fits in it, and the file's end is when baresip hangs up.
const MIC_TAIL: Duration = Duration::from_secs(5);
/// baresip quits by itself after this (`-t`), the call long over.
const BARESIP_QUITS_AFTER_S: u32 = 14;

fn baresip_installed() -> bool {
    std::process::Command::new("baresip")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn skip(test: &str) {
    println!("SKIPPED {test}: baresip is not installed (apt-get install baresip-core)");
}

async fn start_engine(rtp_ports: std::ops::RangeInclusive<u16>) -> Engine {
    start_engine_with(rtp_ports, Duration::ZERO, || {
        scripted_conversation(&[BOOK_TABLE], &[REPLY])
    })
    .await
}

/// A temporary directory (baresip's configuration, the microphone file,
/// the recordings), removed on drop, also when the test fails.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("callingbox-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// baresip's configuration: no audio device at all (the microphone is
/// `mic`, nothing plays, the `sndfile` filter writes what is sent and
/// heard into `recordings`), SIP on `sip_port` of 127.0.0.1, the commands
/// of `-e` through the `menu` module.
fn baresip_config(sip_port: u16, mic: &Path, recordings: &Path) -> String {
    format!(
        "poll_method\t\tepoll\n\
         sip_listen\t\t127.0.0.1:{sip_port}\n\
         net_interface\t\t127.0.0.1\n\
         call_local_timeout\t10\n\
         call_max_calls\t\t1\n\
         audio_source\t\taufile,{mic}\n\
         ausrc_srate\t\t16000\n\
         ausrc_channels\t\t1\n\
         audio_buffer\t\t20-160\n\
         rtp_ports\t\t46200-46298\n\
         rtcp_mux\t\tno\n\
         jitter_buffer_delay\t5-10\n\
         module_path\t\t/usr/lib/baresip/modules\n\
         module\t\t\topus.so\n\
         module\t\t\tg722.so\n\
         module\t\t\tg711.so\n\
         module\t\t\tsndfile.so\n\
         module\t\t\taufile.so\n\
         module_tmp\t\taccount.so\n\
         module_app\t\tmenu.so\n\
         snd_path\t\t{recordings}\n",
        mic = mic.display(),
        recordings = recordings.display(),
    )
}

/// Runs baresip until it quits by itself (`-t`) and returns its output;
/// `kill_on_drop` kills it if it outlives its bound or the test panics
/// while it runs.
async fn run_baresip(config_dir: &Path, dial: &str) -> std::process::Output {
    let child = tokio::process::Command::new("baresip")
        .arg("-f")
        .arg(config_dir)
        .args(["-e", dial, "-t", &BARESIP_QUITS_AFTER_S.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start baresip");
    let bound = Duration::from_secs(u64::from(BARESIP_QUITS_AFTER_S) + 10);
    tokio::time::timeout(bound, child.wait_with_output())
        .await
        .expect("baresip did not quit in time")
        .expect("wait for baresip")
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

/// The first channel of a 16-bit WAV, and its rate.
fn first_channel(path: &Path) -> (Vec<i16>, u32) {
    let reader = hound::WavReader::open(path).expect("open the recording");
    let spec = reader.spec();
    assert_eq!(
        (spec.bits_per_sample, spec.sample_format),
        (16, hound::SampleFormat::Int),
        "{spec:?}"
    );
    let channels = usize::from(spec.channels);
    let samples = reader
        .into_samples::<i16>()
        .step_by(channels)
        .collect::<Result<Vec<i16>, _>>()
        .expect("read the recording");
    (samples, spec.sample_rate)
}

/// One 20 ms window of the recording: the amplitude of its `TONE_HZ`
/// component (Goertzel) and its RMS.
#[derive(Debug, Clone, Copy)]
struct Window {
    tone: f64,
    rms: f64,
}

impl Window {
    /// Sound, mostly at the voice's frequency (a square wave holds 81% of
    /// its power in the fundamental; speech or noise holds little there).
    fn is_agent(self) -> bool {
        self.tone > 1_500.0 && self.tone * self.tone / 2.0 > 0.5 * self.rms * self.rms
    }

    fn is_quiet(self) -> bool {
        self.rms < 300.0
    }
}

/// Which windows are the agent's voice, counting up to `MAX_DIP` dim
/// windows between two of them as voice: the decoded square wave dims for
/// about one 20 ms window at the same place in every run (~0.6 s into the
/// reply), though the engine sends the reply's packets evenly every 20 ms;
/// an Opus artefact on a square wave, most likely, not a pause of the agent.
fn bridge_dips(windows: &[Window]) -> Vec<bool> {
    const MAX_DIP: usize = 2;
    let mut voiced: Vec<bool> = windows.iter().map(|window| window.is_agent()).collect();
    let mut last_voice: Option<usize> = None;
    for i in 0..voiced.len() {
        if !voiced[i] {
            continue;
        }
        if let Some(last) = last_voice
            && i - last - 1 <= MAX_DIP
        {
            voiced[last + 1..i].fill(true);
        }
        last_voice = Some(i);
    }
    voiced
}

fn windows(samples: &[i16], rate: u32) -> Vec<Window> {
    let length = rate as usize / 50;
    samples
        .chunks_exact(length)
        .map(|window| {
            let n = window.len() as f64;
            let coefficient = 2.0 * (2.0 * std::f64::consts::PI * TONE_HZ / f64::from(rate)).cos();
            let (mut s1, mut s2) = (0.0, 0.0);
            for &sample in window {
                let s0 = f64::from(sample) + coefficient * s1 - s2;
                s2 = s1;
                s1 = s0;
            }
            let power = (s1 * s1 + s2 * s2 - coefficient * s1 * s2).max(0.0);
            let energy: f64 = window.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
            Window {
                tone: 2.0 * power.sqrt() / n,
                rms: (energy / n).sqrt(),
            }
        })
        .collect()
}

/// The last lines of baresip's console, for a failure message.
fn console_tail(output: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    format!(
        "baresip exit {:?}:\n{}",
        output.status.code(),
        lines[lines.len().saturating_sub(25)..].join("\n")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_calls_speaks_a_fixture_and_records_the_agent() {
    if !baresip_installed() {
        skip("baresip_calls_speaks_a_fixture_and_records_the_agent");
        return;
    }
    let dir = TempDir::new("baresip");
    let config_dir = dir.0.join("config");
    let recordings = dir.0.join("recordings");
    std::fs::create_dir_all(&config_dir).expect("config dir");
    std::fs::create_dir_all(&recordings).expect("recordings dir");

    // The microphone: the caller's sentence, then silence while the agent
    // answers. aufile reports the end of its file as an audio error, on
    // which baresip hangs up: the file's length is the call's.
    let clip = read_wav(fixtures("audio").join("statement_book_table.16k.wav")).expect("fixture");
    assert_eq!(clip.rate, SampleRate::Hz16000);
    let mut mic_samples = clip.samples.clone();
    let tail = SampleRate::Hz16000.hz() as usize * MIC_TAIL.as_secs() as usize;
    mic_samples.resize(clip.samples.len() + tail, 0);
    let mic = dir.0.join("mic.wav");
    write_wav(&mic, SampleRate::Hz16000, &mic_samples, WavEncoding::Pcm16).expect("write mic");

    let mut engine = start_engine(46_000..=46_098).await;
    let sip_port = free_port();
    std::fs::write(
        config_dir.join("config"),
        baresip_config(sip_port, &mic, &recordings),
    )
    .expect("write config");
    // No registration: the account only names the caller.
    std::fs::write(
        config_dir.join("accounts"),
        format!("<sip:caller@127.0.0.1:{sip_port}>;regint=0\n"),
    )
    .expect("write accounts");

    let dial = format!("/dial sip:1000@{}", engine.sip);
    let baresip = run_baresip(&config_dir, &dial);
    let (output, events) = tokio::join!(
        baresip,
        events_until_ended(
            &mut engine.events,
            Duration::from_secs(u64::from(BARESIP_QUITS_AFTER_S) + 5)
        )
    );
    let console = console_tail(&output);
    assert_eq!(output.status.code(), Some(0), "{console}");

    // The engine saw the call ring, be answered, the agent speak, and
    // baresip hang up at the end of its microphone file.
    let Some(SipEvent::Ringing(call)) = events.first() else {
        panic!("the call did not ring: {events:?}\n{console}");
    };
    // baresip offers opus, G722, PCMU, PCMA: the engine prefers Opus.
    assert_eq!(call.media.codec.kind, CodecKind::Opus, "{:?}", call.media);
    let position = |wanted: fn(&SipEvent) -> bool| events.iter().position(wanted);
    let answered = position(|event| matches!(event, SipEvent::Answered));
    let turn_ended = position(|event| {
        matches!(
            event,
            SipEvent::Media(MediaEvent::UserTurnEnded { text, .. }) if text == BOOK_TABLE
        )
    });
    let agent_started =
        position(|event| matches!(event, SipEvent::Media(MediaEvent::AgentAudioStarted { .. })));
    assert!(
        matches!((answered, turn_ended, agent_started), (Some(a), Some(t), Some(s)) if a < t && t < s),
        "answered, heard the caller, then spoke: {events:?}\n{console}"
    );
    let agent_spoke = events
        .iter()
        .find_map(|event| match event {
            SipEvent::Media(MediaEvent::AgentAudioStarted { at, .. }) => Some(*at),
            _ => None,
        })
        .zip(events.iter().find_map(|event| match event {
            SipEvent::Media(MediaEvent::AgentAudioFinished { at }) => Some(*at),
            _ => None,
        }))
        .map(|(started, finished)| finished.saturating_since(started))
        .expect("the agent's audio finished");
    let Some(SipEvent::Ended { reason, rtp }) = events.last() else {
        panic!("the call did not end: {events:?}\n{console}");
    };
    assert_eq!(reason, &SipEnd::RemoteBye, "{console}");
    // All of the microphone file arrived (~9.8 s: ~490 packets of 20 ms).
    assert!(rtp.audio_received >= 400, "{rtp:?}");
    assert_eq!(rtp.bad_headers + rtp.foreign_source, 0, "{rtp:?}");
    assert_eq!(rtp.peer, Some(call.media.remote_rtp), "{rtp:?}");
    // The agent's audio is its reply; while it was quiet the engine sent
    // comfort silence, so baresip's media never stopped.
    let sent = Duration::from_millis(20) * rtp.sent as u32;
    assert!(
        sent >= agent_spoke.mul_f64(0.9) && sent <= agent_spoke + Duration::from_millis(200),
        "sent {sent:?} of audio, the agent spoke {agent_spoke:?}: {rtp:?}"
    );
    assert!(rtp.silence_sent >= 100, "{rtp:?}");
    assert_eq!(engine.worker.live_calls(), 0);

    // The agent's transcript: the caller heard, the reply spoken.
    let (mut call_events, _) = engine.agents.recv().await.expect("the call's agent");
    let mut segments = Vec::new();
    while let Ok(event) = call_events.try_recv() {
        if let CallEvent::TranscriptSegment {
            role, text, source, ..
        } = event
        {
            segments.push((role, source, text));
        }
    }
    assert_eq!(
        segments,
        vec![
            (Role::User, SegmentSource::Asr, BOOK_TABLE.to_owned()),
            (Role::Agent, SegmentSource::Tts, REPLY.to_owned()),
        ]
    );

    // What baresip heard: its decoded audio, as sndfile wrote it.
    let heard = std::fs::read_dir(&recordings)
        .expect("recordings")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.to_string_lossy().ends_with("-dec.wav"))
        .unwrap_or_else(|| panic!("baresip recorded nothing\n{console}"));
    let (samples, rate) = first_channel(&heard);
    let windows = windows(&samples, rate);
    let recorded = Duration::from_millis(20) * windows.len() as u32;
    let voiced = bridge_dips(&windows);
    // The longest unbroken stretch of the agent's voice.
    let (mut longest, mut run) = (0usize, 0usize);
    for &is_voice in &voiced {
        run = if is_voice { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let voice = Duration::from_millis(20) * longest as u32;
    assert!(
        voice >= Duration::from_secs(1) && voice >= agent_spoke.mul_f64(0.8),
        "{voice:?} of unbroken agent voice in {recorded:?} recorded (the agent spoke \
         {agent_spoke:?}): {windows:?}"
    );
    // The silence was heard too: the recording runs well past the reply.
    assert!(
        recorded >= agent_spoke + Duration::from_secs(3),
        "recorded {recorded:?}, the agent spoke {agent_spoke:?}"
    );
    // Nothing else: no echo of the caller, no noise (the decoder's first
    // frame ramps up, and a window beside the voice holds its edge).
    let beside_voice =
        |i: usize| voiced.get(i.wrapping_sub(1)) == Some(&true) || voiced.get(i + 1) == Some(&true);
    let other = windows
        .iter()
        .zip(&voiced)
        .enumerate()
        .skip(1)
        .filter(|(i, (window, is_voice))| !**is_voice && !window.is_quiet() && !beside_voice(*i))
        .count();
    assert!(other == 0, "{other} windows of other sound: {windows:?}");
    println!(
        "baresip: {:?} (pt {}); recorded {recorded:?}, {voice:?} of agent voice; RTP in {} \
         packets, out {}",
        call.media.codec.kind, call.media.codec.payload_type, rtp.audio_received, rtp.sent
    );
}
