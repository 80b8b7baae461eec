//! [`MediaWorker`]: ticks the media of many calls every 20 ms on one thread.
//!
//! One tick: every call decodes its next frame and feeds its recognizer;
//! every call whose 32 ms VAD window completed submits it; one batched VAD
//! inference scores them all; then each call's gate, turn machine and
//! outbound queue advance, and its packet goes to the [`PacketSink`]. Agent
//! audio, transcripts and end-of-turn answers are collected without waiting;
//! nothing in a tick blocks.

use std::time::Duration;

use thiserror::Error;
use tokio::sync::mpsc;

use super::eot_pool::{EotPool, EotRequest};
use super::media::{CallMedia, CallMediaConfig, CallMediaError, MediaEvent, TURN_AUDIO_MAX};
use crate::audio::OutboundPacket;
use crate::clock::Instant;
use crate::conversation::{AgentHandle, OutboundFrame, Played, UserTurn};
use crate::events::{EndedBy, ProviderRole, SegmentSource};
use crate::providers::{AsrEvent, AsrSession};
use crate::vad::{StreamHandle, VadBatch, VadError};

/// Identifies a call on a worker; stale after the call is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CallKey(u64);

impl CallKey {
    fn new(slot: usize, generation: u32) -> Self {
        CallKey(((slot as u64) << 32) | u64::from(generation))
    }

    fn slot(self) -> usize {
        (self.0 >> 32) as usize
    }

    fn generation(self) -> u32 {
        self.0 as u32
    }

    /// The raw value (for logs and maps).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

/// Where a call's outgoing packets go (an RTP session, a media-stream
/// WebSocket, a benchmark's recorder).
pub trait PacketSink {
    /// Sends one packet of `call` at `now`.
    fn send(&mut self, call: CallKey, now: Instant, packet: &OutboundPacket<'_>);
}

/// A call's conversation: the agent loop's handle, the recognizer, and the
/// agent audio the loop produces.
#[derive(Debug)]
pub struct ConversationLink {
    /// The agent loop.
    pub agent: AgentHandle,
    /// The streaming recognizer.
    pub asr: AsrSession,
    /// Agent audio from the loop.
    pub agent_audio: mpsc::Receiver<OutboundFrame>,
}

/// A media event of one call, as the worker reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerEvent {
    /// Whose.
    pub call: CallKey,
    /// When, on that call's clock.
    pub at: Instant,
    /// What.
    pub event: MediaEvent,
}

/// What the worker refuses.
#[derive(Debug, Error)]
pub enum WorkerError {
    /// The call's media could not be set up.
    #[error(transparent)]
    Media(#[from] CallMediaError),
    /// The VAD has no room for another stream.
    #[error(transparent)]
    Vad(#[from] VadError),
    /// The key names no live call.
    #[error("no such call")]
    UnknownCall,
}

#[derive(Debug)]
struct Slot {
    media: CallMedia,
    vad: StreamHandle,
    epoch: std::time::Instant,
    window_end: Option<Instant>,
    link: Option<ConversationLink>,
    pending_agent_frame: Option<OutboundFrame>,
    current_reply: Option<u64>,
    /// Replies up to this one were interrupted: their frames still in flight
    /// from the agent loop are dropped, never played.
    interrupted_up_to: Option<u64>,
    /// Whether the agent was running a tool at the last tick.
    tool_running: bool,
    asr_dropped: u64,
}

/// Ticks the media of many calls.
#[derive(Debug)]
pub struct MediaWorker {
    slots: Vec<Option<Slot>>,
    generations: Vec<u32>,
    vad: VadBatch,
    eot: Option<EotPool>,
    events: Vec<WorkerEvent>,
    turn_audio: Vec<i16>,
    vad_failures: u64,
}

impl MediaWorker {
    /// A worker for up to the VAD batch's capacity of calls; `eot` scores
    /// ends of turn when given (else the turn machine's cues decide).
    pub fn new(vad: VadBatch, eot: Option<EotPool>) -> Self {
        MediaWorker {
            slots: Vec::new(),
            generations: Vec::new(),
            vad,
            eot,
            events: Vec::new(),
            turn_audio: Vec::with_capacity(TURN_AUDIO_MAX),
            vad_failures: 0,
        }
    }

    /// Calls on this worker.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|slot| slot.is_some()).count()
    }

    /// True when no call is on this worker.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most calls this worker takes at once (its VAD batch's streams).
    pub fn capacity(&self) -> usize {
        self.vad.capacity()
    }

    /// Whether the worker runs the semantic end-of-turn model.
    pub fn has_end_of_turn_model(&self) -> bool {
        self.eot.is_some()
    }

    /// Adds a call at `now` whose clock started at `epoch` (the agent
    /// loop's clock zero, so both sides time the call alike).
    pub fn add_call(
        &mut self,
        now: std::time::Instant,
        epoch: std::time::Instant,
        config: CallMediaConfig,
        link: Option<ConversationLink>,
    ) -> Result<CallKey, WorkerError> {
        let now = Instant::from_std(epoch, now);
        let media = CallMedia::new(config, now)?;
        let vad = self.vad.register()?;
        let slot = Slot {
            media,
            vad,
            epoch,
            window_end: None,
            link,
            pending_agent_frame: None,
            current_reply: None,
            interrupted_up_to: None,
            tool_running: false,
            asr_dropped: 0,
        };
        let index = match self.slots.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                self.slots.push(None);
                self.generations.push(0);
                self.slots.len() - 1
            }
        };
        self.generations[index] = self.generations[index].wrapping_add(1);
        self.slots[index] = Some(slot);
        Ok(CallKey::new(index, self.generations[index]))
    }

    /// Removes a call; returns its conversation link so the caller can shut it down.
    pub fn remove_call(&mut self, key: CallKey) -> Result<Option<ConversationLink>, WorkerError> {
        let slot = self.slot_index(key).ok_or(WorkerError::UnknownCall)?;
        let removed = self.slots[slot].take().ok_or(WorkerError::UnknownCall)?;
        let _ = self.vad.release(removed.vad);
        Ok(removed.link)
    }

    /// A packet from the caller of `key`, arriving at `now`.
    pub fn push_packet(
        &mut self,
        now: std::time::Instant,
        key: CallKey,
        sequence: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> Result<(), WorkerError> {
        let index = self.slot_index(key).ok_or(WorkerError::UnknownCall)?;
        let slot = self.slots[index].as_mut().ok_or(WorkerError::UnknownCall)?;
        let now = Instant::from_std(slot.epoch, now);
        slot.media
            .push_packet(now, sequence, timestamp, marker, payload);
        Ok(())
    }

    /// The peer of `key` held (`true`) or resumed the call at `now`.
    pub fn set_held(
        &mut self,
        now: std::time::Instant,
        key: CallKey,
        held: bool,
    ) -> Result<(), WorkerError> {
        let index = self.slot_index(key).ok_or(WorkerError::UnknownCall)?;
        let slot = self.slots[index].as_mut().ok_or(WorkerError::UnknownCall)?;
        slot.media
            .set_held(Instant::from_std(slot.epoch, now), held);
        Ok(())
    }

    /// VAD inferences that failed (their windows counted as silence).
    pub fn vad_failures(&self) -> u64 {
        self.vad_failures
    }

    fn slot_index(&self, key: CallKey) -> Option<usize> {
        let index = key.slot();
        (self.generations.get(index) == Some(&key.generation())
            && self.slots.get(index).is_some_and(Option::is_some))
        .then_some(index)
    }

    /// One 20 ms tick at wall-clock `now` for every call. Returns the media
    /// events of this tick (also already acted on for linked calls).
    pub fn tick(&mut self, now: std::time::Instant, sink: &mut dyn PacketSink) -> &[WorkerEvent] {
        self.events.clear();
        // 1. Audio in, agent audio in, VAD windows out, the agent packet sent.
        for (index, entry) in self.slots.iter_mut().enumerate() {
            let Some(slot) = entry.as_mut() else { continue };
            let key = CallKey::new(index, self.generations[index]);
            let call_now = Instant::from_std(slot.epoch, now);
            slot.drain_agent_audio();
            let (frame, window) = slot.media.pull_audio(call_now);
            if let Some(link) = &slot.link
                && link.asr.push_frame(frame).is_err()
            {
                slot.asr_dropped += 1;
            }
            slot.window_end = None;
            if let Some((samples, end)) = window
                && self.vad.submit(slot.vad, samples).is_ok()
            {
                slot.window_end = Some(end);
            }
            if let Some(packet) = slot.media.next_packet(call_now) {
                sink.send(key, call_now, &packet);
            }
        }
        // 2. One inference for every submitted window.
        let scored = self.vad.run().is_ok();
        if !scored {
            self.vad_failures += 1;
        }
        // 3. Each call advances.
        let eot_answers: Vec<_> = self
            .eot
            .as_ref()
            .map(|pool| std::iter::from_fn(|| pool.try_answer()).collect())
            .unwrap_or_default();
        for answer in eot_answers {
            let key = CallKey(answer.key);
            if let Some(index) = self.slot_index(key)
                && let Some(slot) = self.slots[index].as_mut()
            {
                let call_now = Instant::from_std(slot.epoch, now);
                slot.media
                    .on_end_of_turn(call_now, answer.request, answer.probability_complete);
                slot.media.report(MediaEvent::EndOfTurnAnswered {
                    request: answer.request,
                    probability_complete: answer.probability_complete,
                    waited: now.saturating_duration_since(answer.submitted_at),
                });
            }
        }
        for (index, entry) in self.slots.iter_mut().enumerate() {
            let Some(slot) = entry.as_mut() else { continue };
            let key = CallKey::new(index, self.generations[index]);
            let call_now = Instant::from_std(slot.epoch, now);
            if let Some(window_end) = slot.window_end {
                match self.vad.probability(slot.vad).ok().filter(|_| scored) {
                    Some(probability) => slot.media.on_vad(call_now, window_end, probability),
                    None => slot.media.on_vad_missing(call_now, window_end),
                }
            }
            if let Some(link) = slot.link.as_mut() {
                let tool_running = link.agent.tools_running() > 0;
                if tool_running != slot.tool_running {
                    slot.tool_running = tool_running;
                    slot.media.on_tool(call_now, tool_running);
                }
                while let Some(event) = link.asr.try_next_event() {
                    match event {
                        AsrEvent::UtteranceStarted => slot.media.on_utterance_started(call_now),
                        AsrEvent::Interim { text } => {
                            slot.media.on_transcript(call_now, &text, false)
                        }
                        AsrEvent::Final { text } => slot.media.on_transcript(call_now, &text, true),
                        AsrEvent::Failed { error } => {
                            link.agent.provider_failed(ProviderRole::Asr, &error)
                        }
                    }
                }
            }
            slot.media.tick(call_now);
            let first = self.events.len();
            self.events
                .extend(slot.media.drain_events().map(|event| WorkerEvent {
                    call: key,
                    at: call_now,
                    event,
                }));
            for reported in &self.events[first..] {
                if let MediaEvent::EndOfTurnRequested { request } = reported.event
                    && let Some(pool) = &self.eot
                {
                    slot.media
                        .turn_audio(Duration::from_secs(8), &mut self.turn_audio);
                    pool.submit(EotRequest {
                        key: key.as_u64(),
                        request,
                        audio: self.turn_audio.clone(),
                        submitted_at: now,
                    });
                }
                let supersedes_reply = match reported.event {
                    MediaEvent::Interrupted { .. } => true,
                    // A turn committed while the agent still talks (a short
                    // answer at its last words): the agent loop drops the old
                    // reply, so must the queue.
                    MediaEvent::UserTurnEnded { .. } => slot.media.flush_agent_audio() > 0,
                    _ => false,
                };
                if supersedes_reply {
                    slot.interrupted_up_to = slot.current_reply.or(slot.interrupted_up_to);
                    slot.current_reply = None;
                    slot.pending_agent_frame = None;
                }
                if let Some(link) = &slot.link {
                    act_on(link, &reported.event);
                }
            }
        }
        &self.events
    }
}

impl Slot {
    /// Moves the agent loop's audio into the outbound queue as far as it has room.
    fn drain_agent_audio(&mut self) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        loop {
            let frame = match self.pending_agent_frame.take() {
                Some(frame) => frame,
                None => match link.agent_audio.try_recv() {
                    Ok(frame) => frame,
                    Err(_) => return,
                },
            };
            if self
                .interrupted_up_to
                .is_some_and(|interrupted| frame.reply <= interrupted)
            {
                continue;
            }
            if self.current_reply.is_some_and(|reply| reply != frame.reply) {
                let _ = self.media.end_agent_segment();
            }
            // Segments are replies: the flush on a barge-in reports how much of
            // the reply was played, which is what the agent loop keeps.
            let segment = frame.reply as u32;
            if self
                .media
                .push_agent_audio(frame.frame.samples(), segment)
                .is_err()
            {
                self.pending_agent_frame = Some(frame);
                return;
            }
            self.current_reply = Some(frame.reply);
        }
    }
}

/// What the agent says when the caller has been silent a while.
pub const IDLE_PROMPT: &str = "Are you still there?";

/// What the conversation does with a media event.
fn act_on(link: &ConversationLink, event: &MediaEvent) {
    match event {
        MediaEvent::Speculate { text } => link.agent.speculate(text),
        MediaEvent::DiscardSpeculation => link.agent.discard(),
        MediaEvent::UserTurnEnded {
            text,
            speech_ended_at,
            ..
        } => link.agent.commit(UserTurn {
            text: text.clone(),
            speech_started_at: None,
            speech_ended_at: Some(*speech_ended_at),
            transcript_final_at: None,
            source: SegmentSource::Asr,
        }),
        MediaEvent::Interrupted { played, .. } => link.agent.interrupt(Played::Duration(*played)),
        MediaEvent::Hangup { reason } => {
            link.agent.hang_up(EndedBy::System, &format!("{reason:?}"))
        }
        MediaEvent::KeyPressed { key } => link.agent.press_key(*key),
        MediaEvent::ResumeAgent => link.agent.resume(),
        MediaEvent::IdlePrompt => link.agent.say(IDLE_PROMPT),
        MediaEvent::LeaveVoicemail { text, .. } => link.agent.say(text),
        _ => {}
    }
}
