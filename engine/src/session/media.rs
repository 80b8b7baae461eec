//! [`CallMedia`]: one call's media, sans-IO. Packets in, 16 kHz frames to the
//! recognizer, 32 ms windows to the (batched) VAD, VAD events and
//! transcripts to the turn machine, agent audio out one packet per tick.
//!
//! The driver calls, every 20 ms tick: [`CallMedia::pull_audio`] (the next
//! inbound frame, and a VAD window when one completed) and
//! [`CallMedia::next_packet`] (the agent packet to send, before any heavy
//! work so the send times stay on the 20 ms grid), then [`CallMedia::on_vad`]
//! with the window's probability once the batch ran, then
//! [`CallMedia::tick`] for the timers. A barge-in flushes the outbound queue
//! inside the call that confirmed it, so the next tick sends nothing of the
//! interrupted reply, whatever transport carries it.

use std::time::Duration;

use callingbox_codecs::{FrameDuration, PcmFrame, SampleRate};
use thiserror::Error;

use crate::amd::{AnswerDecision, AnsweringMachine, AnsweringMachineConfig, MessageCue};
use crate::audio::dtmf::{DtmfDetector, DtmfDetectorConfig};
use crate::audio::{
    InboundAudio, InboundCodec, InboundError, OutboundAudio, OutboundConfig, OutboundError,
    OutboundPacket, PushOutcome,
};
use crate::clock::Instant;
use crate::turns::{
    EndOfTurnReason, HangupReason, TurnConfig, TurnConfigError, TurnInput, TurnMachine, TurnOutput,
};
use crate::vad::{VadGate, VadGateConfig};

/// Samples in one VAD window (32 ms at 16 kHz).
pub const VAD_WINDOW: usize = 512;
/// The longest audio the end-of-turn model looks at (Smart Turn: 8 s).
pub const TURN_AUDIO_MAX: usize = 8 * 16_000;
/// The outbound queue running dry for this long means the agent finished
/// speaking (TTS delivers clause by clause; a short gap is not the end).
const AGENT_QUIET_AFTER: Duration = Duration::from_millis(100);

/// Everything a call's media needs to know.
#[derive(Debug, Clone)]
pub struct CallMediaConfig {
    /// The codec arriving from the caller.
    pub inbound: InboundCodec,
    /// The codec and queue toward the caller.
    pub outbound: OutboundConfig,
    /// The VAD gate's thresholds.
    pub gate: VadGateConfig,
    /// The turn machine's thresholds.
    pub turns: TurnConfig,
    /// Listen for DTMF tones in the caller's audio (the SIP transport turns
    /// this on for calls that negotiated no RFC 4733 telephone-event).
    pub inband_dtmf: bool,
    /// Answering-machine detection from the start of the media (`None`:
    /// none). The SIP server runs it on outbound calls only.
    pub answering_machine: Option<AnsweringMachineConfig>,
}

impl CallMediaConfig {
    /// A phone call's media: PCMU both ways with the voice at 16 kHz, the
    /// default VAD gate and turn thresholds, the end of turn decided by the
    /// semantic model (`end_of_turn_model`) or by transcript cues alone. The
    /// SIP layer then sets the negotiated codec, in-band DTMF and
    /// answering-machine detection.
    pub fn phone(end_of_turn_model: bool) -> Self {
        CallMediaConfig {
            inbound: InboundCodec::G711(crate::codecs::G711Law::MuLaw),
            outbound: OutboundConfig::pcmu(SampleRate::Hz16000),
            gate: VadGateConfig::default(),
            turns: TurnConfig {
                use_end_of_turn_model: end_of_turn_model,
                ..TurnConfig::default()
            },
            inband_dtmf: false,
            answering_machine: None,
        }
    }
}

/// A call's media that cannot be set up.
#[derive(Debug, Error)]
pub enum CallMediaError {
    /// The inbound stage refused its settings.
    #[error(transparent)]
    Inbound(#[from] InboundError),
    /// The outbound stage refused its settings.
    #[error(transparent)]
    Outbound(#[from] OutboundError),
    /// The turn machine refused its settings.
    #[error(transparent)]
    Turns(#[from] TurnConfigError),
}

/// What happened in the call's media that the conversation must act on.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaEvent {
    /// The user began a turn (or barged in).
    UserStartedSpeaking {
        /// Start of the user's speech.
        at: Instant,
    },
    /// Score the turn so far with the end-of-turn model
    /// ([`CallMedia::turn_audio`]) and answer with [`CallMedia::on_end_of_turn`].
    EndOfTurnRequested {
        /// Identifies the answer.
        request: u64,
    },
    /// The end-of-turn model answered a request (reported by the worker).
    EndOfTurnAnswered {
        /// The request.
        request: u64,
        /// Its probability that the turn is complete.
        probability_complete: f32,
        /// From the request's submission to the answer's arrival.
        waited: Duration,
    },
    /// Start generating a reply to these words before the turn is confirmed.
    Speculate {
        /// The stable interim transcript.
        text: String,
    },
    /// The last speculation is void.
    DiscardSpeculation,
    /// The user's turn is over.
    UserTurnEnded {
        /// The user's words.
        text: String,
        /// What decided.
        reason: EndOfTurnReason,
        /// The end of the user's voice.
        speech_ended_at: Instant,
        /// When the machine decided.
        decided_at: Instant,
    },
    /// A barge-in: queued agent audio was flushed; cancel the reply.
    Interrupted {
        /// When it was confirmed.
        at: Instant,
        /// How much of the playing segment was sent before the flush.
        played: Duration,
        /// The segment that was playing, if any.
        segment: Option<u32>,
        /// Frames thrown away.
        flushed_frames: usize,
    },
    /// The caller pressed a key, heard as in-band DTMF tones.
    KeyPressed {
        /// `0`-`9`, `*`, `#`, `A`-`D`.
        key: char,
    },
    /// The interruption was noise: resume the agent.
    ResumeAgent,
    /// The user has been silent a while: check on them.
    IdlePrompt,
    /// End the call.
    Hangup {
        /// Why.
        reason: HangupReason,
    },
    /// The first agent packet of a talkspurt left.
    AgentAudioStarted {
        /// When.
        at: Instant,
        /// Its segment.
        segment: u32,
    },
    /// The agent's audio ran out.
    AgentAudioFinished {
        /// When the last packet left.
        at: Instant,
    },
    /// Answering-machine detection decided who answered.
    AnsweredBy(AnswerDecision),
    /// A machine answered and its greeting is over: speak this voicemail
    /// message (the call ends after it).
    LeaveVoicemail {
        /// The message.
        text: String,
        /// What told it was time.
        cue: MessageCue,
    },
}

/// One call's media core.
#[derive(Debug)]
pub struct CallMedia {
    inbound: InboundAudio,
    frame: PcmFrame,
    window: Vec<i16>,
    /// The last 8 s of 16 kHz audio, for the end-of-turn model.
    history: Vec<i16>,
    history_next: usize,
    history_filled: usize,
    gate: VadGate,
    turns: TurnMachine,
    outbound: OutboundAudio,
    agent_speaking: bool,
    last_agent_packet: Option<Instant>,
    events: Vec<MediaEvent>,
    late_windows: u64,
    dtmf: Option<DtmfDetector>,
    answering_machine: Option<AnsweringMachine>,
}

impl CallMedia {
    /// A call's media starting at `now`. Allocates everything up front.
    pub fn new(config: CallMediaConfig, now: Instant) -> Result<Self, CallMediaError> {
        Ok(CallMedia {
            inbound: InboundAudio::new(config.inbound, SampleRate::Hz16000)?,
            frame: PcmFrame::with_capacity(SampleRate::Hz16000, FrameDuration::Ms20),
            window: Vec::with_capacity(VAD_WINDOW + 320),
            history: vec![0; TURN_AUDIO_MAX],
            history_next: 0,
            history_filled: 0,
            gate: VadGate::new(config.gate),
            turns: TurnMachine::new(config.turns, now)?,
            outbound: OutboundAudio::new(config.outbound)?,
            agent_speaking: false,
            last_agent_packet: None,
            events: Vec::with_capacity(16),
            late_windows: 0,
            dtmf: config
                .inband_dtmf
                .then(|| DtmfDetector::new(SampleRate::Hz16000, DtmfDetectorConfig::default())),
            answering_machine: config
                .answering_machine
                .map(|config| AnsweringMachine::new(config, now)),
        })
    }

    /// A packet from the caller.
    pub fn push_packet(
        &mut self,
        now: Instant,
        sequence: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
    ) -> PushOutcome {
        self.inbound
            .push_packet_with_marker(now, sequence, timestamp, marker, payload)
    }

    /// Tick step 1: decodes the next 20 ms of the caller's audio (16 kHz) and
    /// returns it, with a completed 32 ms VAD window and its end time when
    /// this frame completed one.
    pub fn pull_audio(&mut self, now: Instant) -> (&PcmFrame, Option<(&[i16], Instant)>) {
        self.inbound.next_frame(now, &mut self.frame);
        if let Some(key) = self
            .dtmf
            .as_mut()
            .and_then(|dtmf| dtmf.push(self.frame.samples()))
        {
            self.events.push(MediaEvent::KeyPressed { key });
        }
        for &sample in self.frame.samples() {
            self.history[self.history_next] = sample;
            self.history_next = (self.history_next + 1) % TURN_AUDIO_MAX;
        }
        self.history_filled = (self.history_filled + self.frame.len()).min(TURN_AUDIO_MAX);
        // Drop the window scored last tick, keep the overhang.
        if self.window.len() >= VAD_WINDOW {
            self.window.drain(..VAD_WINDOW);
        }
        self.window.extend_from_slice(self.frame.samples());
        if let Some(machine) = &mut self.answering_machine {
            machine.on_audio(now, self.frame.samples(), &mut self.events);
        }
        if self.window.len() >= VAD_WINDOW {
            let overhang = (self.window.len() - VAD_WINDOW) as u64;
            let window_end = now - Duration::from_micros(overhang * 1_000_000 / 16_000);
            (&self.frame, Some((&self.window[..VAD_WINDOW], window_end)))
        } else {
            (&self.frame, None)
        }
    }

    /// Tick step 2: the VAD's speech probability for the window
    /// [`Self::pull_audio`] returned.
    pub fn on_vad(&mut self, now: Instant, window_end: Instant, probability: f32) {
        if let Some(machine) = &mut self.answering_machine {
            machine.on_vad(window_end, probability, &mut self.events);
            if machine.mutes_caller() {
                return;
            }
        }
        if let Some(event) = self.gate.push(window_end, probability) {
            self.feed(now, TurnInput::Vad(event));
        }
    }

    /// A window whose VAD result never came (the batch failed): counted,
    /// and treated as silence so the gate can still close.
    pub fn on_vad_missing(&mut self, now: Instant, window_end: Instant) {
        self.late_windows += 1;
        self.on_vad(now, window_end, 0.0);
    }

    /// The recognizer began an utterance whose final it owes.
    pub fn on_utterance_started(&mut self, now: Instant) {
        if self.caller_muted() {
            return;
        }
        self.feed(now, TurnInput::UtteranceStarted);
    }

    /// A streaming recognizer result.
    pub fn on_transcript(&mut self, now: Instant, text: &str, is_final: bool) {
        if self.caller_muted() {
            return;
        }
        self.feed(now, TurnInput::Transcript { text, is_final });
    }

    /// The end-of-turn model's answer.
    pub fn on_end_of_turn(&mut self, now: Instant, request: u64, probability_complete: f32) {
        self.feed(
            now,
            TurnInput::EndOfTurnPrediction {
                request,
                probability_complete,
            },
        );
    }

    /// A tool started or finished (for muting the user during tools).
    pub fn on_tool(&mut self, now: Instant, running: bool) {
        let input = if running {
            TurnInput::ToolStarted
        } else {
            TurnInput::ToolFinished
        };
        self.feed(now, input);
    }

    /// Agent speech for `segment`, at the TTS rate given in the config.
    pub fn push_agent_audio(&mut self, samples: &[i16], segment: u32) -> Result<(), OutboundError> {
        self.outbound.push(samples, segment)
    }

    /// The end of an agent segment (pads its last frame).
    pub fn end_agent_segment(&mut self) -> Result<(), OutboundError> {
        self.outbound.end_segment()
    }

    /// Room left in the outbound queue, in 20 ms frames.
    pub fn outbound_free_frames(&self) -> usize {
        self.outbound.free_frames()
    }

    /// Tick step 1b: the agent packet to send now, if any. Called before the
    /// VAD batch runs, so the send time does not move with the tick's work
    /// (pacing jitter); a barge-in confirmed later in this tick flushes
    /// everything after this packet.
    pub fn next_packet(&mut self, now: Instant) -> Option<OutboundPacket<'_>> {
        let has_packet = self.outbound.queued_frames() > 0;
        if has_packet {
            self.last_agent_packet = Some(now);
            if !self.agent_speaking {
                self.agent_speaking = true;
                self.feed(now, TurnInput::AgentSpeaking);
            }
        } else if self.agent_speaking
            && self
                .last_agent_packet
                .is_none_or(|last| now.saturating_since(last) >= AGENT_QUIET_AFTER)
        {
            self.agent_speaking = false;
            self.feed(now, TurnInput::AgentFinishedSpeaking);
            self.events.push(MediaEvent::AgentAudioFinished {
                at: self.last_agent_packet.unwrap_or(now),
            });
        }
        let packet = self.outbound.next_packet();
        if let Some(packet) = &packet
            && packet.starts_talkspurt
        {
            self.events.push(MediaEvent::AgentAudioStarted {
                at: now,
                segment: packet.segment,
            });
        }
        packet
    }

    /// The peer held (`true`) or resumed the call (see
    /// [`TurnInput::CallHeld`]).
    pub fn set_held(&mut self, now: Instant, held: bool) {
        self.feed(now, TurnInput::CallHeld { held });
    }

    /// Tick step 3: the turn machine's timers fire.
    pub fn tick(&mut self, now: Instant) {
        self.feed(now, TurnInput::Tick);
        if let Some(machine) = &mut self.answering_machine {
            machine.poll(now, self.agent_speaking, &mut self.events);
        }
    }

    /// The answering-machine detector's decision, once made (`None` also
    /// when the call runs no detection).
    pub fn answered_by(&self) -> Option<AnswerDecision> {
        self.answering_machine
            .as_ref()
            .and_then(AnsweringMachine::decision)
    }

    fn caller_muted(&self) -> bool {
        self.answering_machine
            .as_ref()
            .is_some_and(AnsweringMachine::mutes_caller)
    }

    /// Drops all queued agent audio (a new user turn supersedes the reply
    /// still playing); returns the frames dropped.
    pub fn flush_agent_audio(&mut self) -> usize {
        self.outbound.flush().frames
    }

    /// Adds an event the driver observed about this call (e.g. a model's
    /// answer), so it reaches the event stream in order with the rest.
    pub fn report(&mut self, event: MediaEvent) {
        self.events.push(event);
    }

    /// The events since the last drain, in order.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, MediaEvent> {
        self.events.drain(..)
    }

    /// Copies the last `duration` of the caller's audio (at most 8 s) into
    /// `out`, oldest first: the input of the end-of-turn model.
    pub fn turn_audio(&self, duration: Duration, out: &mut Vec<i16>) {
        let wanted = ((duration.as_millis() as usize) * 16).min(self.history_filled);
        out.clear();
        let start = (self.history_next + TURN_AUDIO_MAX - wanted) % TURN_AUDIO_MAX;
        if start + wanted <= TURN_AUDIO_MAX {
            out.extend_from_slice(&self.history[start..start + wanted]);
        } else {
            out.extend_from_slice(&self.history[start..]);
            out.extend_from_slice(&self.history[..wanted - (TURN_AUDIO_MAX - start)]);
        }
    }

    /// Whether the turn machine ended the call.
    pub fn has_ended(&self) -> bool {
        self.turns.has_ended()
    }

    /// VAD windows that had no result.
    pub fn late_windows(&self) -> u64 {
        self.late_windows
    }

    fn feed(&mut self, now: Instant, input: TurnInput<'_>) {
        // Collect first: handling an interrupt needs `self.outbound` while the
        // outputs borrow `self.turns`.
        let mut interrupt_at = None;
        for output in self.turns.handle(now, input) {
            let event = match output {
                TurnOutput::UserStartedSpeaking { at } => MediaEvent::UserStartedSpeaking { at },
                TurnOutput::RequestEndOfTurnPrediction { request } => {
                    MediaEvent::EndOfTurnRequested { request }
                }
                TurnOutput::SpeculativeTurn { text } => MediaEvent::Speculate {
                    text: text.to_owned(),
                },
                TurnOutput::DiscardSpeculation => MediaEvent::DiscardSpeculation,
                TurnOutput::UserTurnEnded {
                    text,
                    reason,
                    vad_stopped_at,
                } => MediaEvent::UserTurnEnded {
                    text: text.to_owned(),
                    reason,
                    speech_ended_at: vad_stopped_at,
                    decided_at: now,
                },
                TurnOutput::Interrupt { at } => {
                    interrupt_at = Some(at);
                    continue;
                }
                TurnOutput::ResumeAgent => MediaEvent::ResumeAgent,
                TurnOutput::IdlePrompt => MediaEvent::IdlePrompt,
                TurnOutput::Hangup { reason } => MediaEvent::Hangup { reason },
            };
            let event = match &mut self.answering_machine {
                Some(machine) => match machine.filter(event) {
                    Some(event) => event,
                    None => continue,
                },
                None => event,
            };
            self.events.push(event);
        }
        if let Some(at) = interrupt_at {
            let playing = self.outbound.playing();
            let flushed = self.outbound.flush();
            self.events.push(MediaEvent::Interrupted {
                at,
                played: playing.map_or(Duration::ZERO, |(_, played)| played),
                segment: playing.map(|(segment, _)| segment),
                flushed_frames: flushed.frames,
            });
        }
    }
}
