//! The whole engine on one call, end to end: a caller plays recorded
//! fixture speech as G.711 packets; the media worker decodes it, runs the
//! real VAD (Silero when `scripts/fetch-models.sh` has run, else the energy
//! fallback), the gate and the turn machine; the agent loop answers through
//! scripted LLM and TTS; agent audio comes back as packets. Virtual time:
//! every tick advances tokio's paused clock by 20 ms, so runs are exact.

mod common;

use common::scripted_call::{pcmu_media, scripted_conversation};

use std::collections::VecDeque;
use std::time::Duration;

use callingbox_engine::audio::OutboundPacket;
use callingbox_engine::clock::Instant;
use callingbox_engine::codecs::{G711Law, read_wav};
use callingbox_engine::session::{CallKey, MediaEvent, MediaWorker, PacketSink, WorkerEvent};
use callingbox_engine::vad::VadBatch;
use tokio_util::sync::CancellationToken;

const TICK: Duration = Duration::from_millis(20);

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

#[derive(Default)]
struct Recorder {
    packets: Vec<(Instant, u32, usize)>,
}

impl PacketSink for Recorder {
    fn send(&mut self, _call: CallKey, now: Instant, packet: &OutboundPacket<'_>) {
        self.packets
            .push((now, packet.segment, packet.payload.len()));
    }
}

struct Call {
    worker: MediaWorker,
    key: CallKey,
    sink: Recorder,
    events: Vec<WorkerEvent>,
    caller: VecDeque<u8>,
    sequence: u16,
    timestamp: u32,
    cancel: CancellationToken,
    epoch: std::time::Instant,
    next_tick: tokio::time::Instant,
}

impl Call {
    async fn start(user_says: &[&str], agent_replies: &[&str]) -> Call {
        let conversation =
            scripted_conversation(user_says, agent_replies).expect("scripted conversation");
        let (epoch, cancel) = (conversation.epoch, conversation.cancel);
        let mut worker = MediaWorker::new(VadBatch::load_or_fallback(4), None);
        let now = tokio::time::Instant::now().into_std();
        let key = worker
            .add_call(now, epoch, pcmu_media(), Some(conversation.link))
            .expect("add call");
        Call {
            worker,
            key,
            sink: Recorder::default(),
            events: Vec::new(),
            caller: VecDeque::new(),
            sequence: 0,
            timestamp: 0,
            cancel,
            epoch,
            next_tick: tokio::time::Instant::now(),
        }
    }

    /// The caller starts playing `id` now; returns the call time at which it starts.
    fn say(&mut self, id: &str) -> Instant {
        self.caller.extend(fixture_ulaw(id));
        self.now()
    }

    fn now(&self) -> Instant {
        Instant::from_std(self.epoch, tokio::time::Instant::now().into_std())
    }

    /// Agent packets sent after `from`.
    fn agent_packets_after(&self, from: Instant) -> usize {
        self.sink
            .packets
            .iter()
            .filter(|(at, _, _)| *at > from)
            .count()
    }

    async fn tick(&mut self) {
        let now = tokio::time::Instant::now().into_std();
        let mut payload = [0xFFu8; 160];
        for byte in payload.iter_mut() {
            match self.caller.pop_front() {
                Some(code) => *byte = code,
                None => break,
            }
        }
        self.worker
            .push_packet(
                now,
                self.key,
                self.sequence,
                self.timestamp,
                false,
                &payload,
            )
            .expect("push");
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(160);
        let events = self.worker.tick(now, &mut self.sink).to_vec();
        self.events.extend(events);
        // Sleeping (not `advance`) lets paused time auto-advance through every
        // timer in between, so TTS can run faster than real time.
        self.next_tick += TICK;
        tokio::time::sleep_until(self.next_tick).await;
    }

    fn dump(&self) {
        for event in &self.events {
            eprintln!(
                "{:>8.3}s {:?}",
                event.at.since_epoch().as_secs_f64(),
                event.event
            );
        }
    }

    async fn run(&mut self, duration: Duration) {
        for _ in 0..duration.as_millis() / 20 {
            self.tick().await;
        }
    }

    /// Ticks until `found` matches a new event, at most `limit`.
    async fn run_until(
        &mut self,
        limit: Duration,
        found: impl Fn(&MediaEvent) -> bool,
    ) -> Option<WorkerEvent> {
        let seen = self.events.len();
        for _ in 0..limit.as_millis() / 20 {
            self.tick().await;
            if let Some(event) = self.events[seen..].iter().find(|e| found(&e.event)) {
                return Some(event.clone());
            }
        }
        None
    }
}

fn speech_end(id: &str) -> Duration {
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/audio/manifest.json"
        ))
        .expect("manifest"),
    )
    .expect("json");
    let utterance = manifest["utterances"]
        .as_array()
        .expect("utterances")
        .iter()
        .find(|u| u["id"] == id)
        .expect("fixture id");
    Duration::from_millis(utterance["speech_end_ms"].as_u64().expect("speech end"))
}

const BOOK_TABLE: &str =
    "I'd like to book a table for four people tomorrow at seven in the evening.";
const LONG_REPLY: &str = "Sure, I can book that for you. Let me check what we have for four people tomorrow evening, \
    we have a table at seven by the window, and another one at seven thirty near the bar, which would you prefer?";

#[tokio::test(start_paused = true)]
async fn a_spoken_turn_gets_a_spoken_answer() {
    let mut call = Call::start(
        &[BOOK_TABLE],
        &["Sure, a table for four at seven tomorrow."],
    )
    .await;
    call.run(Duration::from_millis(200)).await;
    let started = call.say("statement_book_table");
    let ended = call
        .run_until(Duration::from_secs(8), |e| {
            matches!(e, MediaEvent::UserTurnEnded { .. })
        })
        .await
        .expect("the turn ends");
    let MediaEvent::UserTurnEnded { text, .. } = &ended.event else {
        unreachable!()
    };
    assert_eq!(text, BOOK_TABLE);
    let audio = call
        .run_until(Duration::from_secs(3), |e| {
            matches!(e, MediaEvent::AgentAudioStarted { .. })
        })
        .await
        .expect("the agent answers");
    // Voice to voice: the last sample of the caller's voice to the first agent packet.
    let voice_ended = started + speech_end("statement_book_table");
    let voice_to_voice = audio.at - voice_ended;
    call.dump();
    eprintln!("voice ended at {voice_ended:?}");
    assert!(
        voice_to_voice > Duration::from_millis(300)
            && voice_to_voice < Duration::from_millis(1_200),
        "voice to voice {voice_to_voice:?}"
    );
    call.run(Duration::from_secs(4)).await;
    let first_packet = call.sink.packets.first().expect("agent packets");
    assert_eq!(first_packet.2, 160, "PCMU packets");
    assert!(
        call.sink.packets.len() >= 50,
        "{} agent packets",
        call.sink.packets.len()
    );
    assert!(
        call.events
            .iter()
            .any(|e| matches!(e.event, MediaEvent::AgentAudioFinished { .. }))
    );
    call.cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn wait_stop_cuts_the_agent_off_within_a_frame() {
    let mut call = Call::start(&[BOOK_TABLE, "Wait, stop."], &[LONG_REPLY]).await;
    call.say("statement_book_table");
    call.run_until(Duration::from_secs(8), |e| {
        matches!(e, MediaEvent::AgentAudioStarted { .. })
    })
    .await
    .expect("the agent answers");
    call.run(Duration::from_secs(1)).await;
    let spoke_at = call.say("interruption_wait_stop");
    let interrupted = call
        .run_until(Duration::from_secs(3), |e| {
            matches!(e, MediaEvent::Interrupted { .. })
        })
        .await
        .expect("the agent is interrupted");
    let MediaEvent::Interrupted {
        flushed_frames,
        played,
        ..
    } = interrupted.event
    else {
        unreachable!()
    };
    assert!(
        flushed_frames > 20,
        "the long reply was still queued: {flushed_frames}"
    );
    assert!(played >= Duration::from_secs(1), "played {played:?}");
    // Confirmed within ~200-500 ms of the caller's onset (340 ms into the clip).
    let reaction = interrupted.at - spoke_at;
    assert!(
        reaction < Duration::from_millis(340 + 600),
        "reaction {reaction:?}"
    );
    // Nothing of the interrupted reply is sent after the interruption.
    let old_reply = call.sink.packets.last().expect("packets").1;
    call.run(Duration::from_millis(500)).await;
    let late = call
        .sink
        .packets
        .iter()
        .filter(|(at, segment, _)| *at > interrupted.at && *segment == old_reply)
        .count();
    assert_eq!(late, 0, "packets of the interrupted reply after the flush");
    call.cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_backchannel_does_not_interrupt() {
    let mut call = Call::start(&[BOOK_TABLE, "Okay."], &[LONG_REPLY]).await;
    call.say("statement_book_table");
    call.run_until(Duration::from_secs(8), |e| {
        matches!(e, MediaEvent::AgentAudioStarted { .. })
    })
    .await
    .expect("the agent answers");
    call.run(Duration::from_secs(1)).await;
    let said_okay = call.say("backchannel_okay");
    call.run(Duration::from_secs(3)).await;
    call.dump();
    eprintln!("okay at {said_okay:?}");
    assert!(
        !call
            .events
            .iter()
            .any(|e| matches!(e.event, MediaEvent::Interrupted { .. })),
        "a backchannel interrupted the agent"
    );
    // The agent kept talking through it, one packet per tick.
    assert!(call.agent_packets_after(said_okay) >= 140);
    call.cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn noise_is_ignored_and_after_a_wordless_interruption_the_agent_resumes() {
    // The second utterance is speech the recognizer makes no words of (a
    // mumble, a voice in the background).
    let mut call = Call::start(&[BOOK_TABLE, ""], &[LONG_REPLY]).await;
    call.say("statement_book_table");
    call.run_until(Duration::from_secs(8), |e| {
        matches!(e, MediaEvent::AgentAudioStarted { .. })
    })
    .await
    .expect("the agent answers");
    call.run(Duration::from_secs(1)).await;
    // A bump on the microphone: loud broadband noise is not speech.
    let before_noise = call.events.len();
    call.caller
        .extend(noise_burst_ulaw(Duration::from_millis(400)));
    call.run(Duration::from_secs(1)).await;
    assert!(
        !call.events[before_noise..].iter().any(|e| matches!(
            e.event,
            MediaEvent::Interrupted { .. } | MediaEvent::UserStartedSpeaking { .. }
        )),
        "noise was taken for speech"
    );
    call.say("greeting_sam");
    let interrupted = call
        .run_until(Duration::from_secs(3), |e| {
            matches!(e, MediaEvent::Interrupted { .. })
        })
        .await
        .expect("a long noise interrupts on audio alone");
    let resumed = call
        .run_until(Duration::from_secs(4), |e| {
            matches!(e, MediaEvent::ResumeAgent)
        })
        .await
        .expect("the agent resumes");
    assert!(resumed.at - interrupted.at >= Duration::from_millis(1_500));
    let speaks_again = call
        .run_until(Duration::from_secs(2), |e| {
            matches!(e, MediaEvent::AgentAudioStarted { .. })
        })
        .await
        .unwrap_or_else(|| {
            call.dump();
            panic!("agent audio again")
        });
    assert!(
        speaks_again.at - resumed.at < Duration::from_millis(400),
        "{:?}",
        speaks_again.at - resumed.at
    );
    call.cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_silent_caller_is_asked_if_they_are_still_there() {
    let mut call = Call::start(&[BOOK_TABLE], &["Sure."]).await;
    call.say("statement_book_table");
    call.run_until(Duration::from_secs(8), |e| {
        matches!(e, MediaEvent::AgentAudioFinished { .. })
    })
    .await
    .expect("the agent answers and finishes");
    let prompt = call
        .run_until(Duration::from_secs(10), |e| {
            matches!(e, MediaEvent::IdlePrompt)
        })
        .await
        .expect("an idle prompt");
    call.run_until(Duration::from_secs(1), |e| {
        matches!(e, MediaEvent::AgentAudioStarted { .. })
    })
    .await
    .expect("the prompt is spoken");
    let hangup = call
        .run_until(Duration::from_secs(14), |e| {
            matches!(e, MediaEvent::Hangup { .. })
        })
        .await
        .expect("then the call is hung up");
    assert!(hangup.at - prompt.at >= Duration::from_secs(10));
    call.cancel.cancel();
}

/// Broadband noise as G.711 codes (a deterministic xorshift).
fn noise_burst_ulaw(length: Duration) -> Vec<u8> {
    let mut state = 0x2545_f491_u32;
    (0..length.as_millis() as usize * 8)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let sample = ((state >> 16) as i16) / 3;
            callingbox_engine::codecs::g711::ulaw_encode_sample(sample)
        })
        .collect()
}
