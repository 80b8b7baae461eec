//! The media-stream WebSocket: a Twilio (or Telnyx) number drives the
//! engine through the Twilio Media Streams protocol, bidirectional
//! (`<Connect><Stream url="wss://.../media-stream">`).
//!
//! The carrier opens the socket and sends JSON text frames: `connected`,
//! `start` (call ids, custom parameters, media format), `media` (20 ms of
//! base64 mu-law at 8 kHz), `dtmf`, `mark` (the echo of one of our marks
//! once the audio before it played), `stop`. We send `media` (agent audio,
//! one 20 ms frame per tick, never ahead: the carrier buffers whatever we
//! send, and a barge-in can only discard what it holds), a `mark` after each
//! agent reply, and `clear` on a barge-in so the carrier drops the audio it
//! still buffers.
//!
//! [`MediaStreamSession`] is the protocol, sans-IO: text in, packets and
//! typed results out; messages to send written into reused buffers.
//! [`serve_socket`] drives one connection over an axum [`WebSocket`], with
//! the call's media on a [`MediaWorker`](crate::session::MediaWorker)
//! reached through a [`WorkerHandle`]; [`router`] mounts it at
//! `/media-stream`.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{CallOutput, CallSpec, HostError, WirePacket, WorkerHandle};
use crate::events::EndedBy;
use crate::session::{ConversationLink, MediaEvent};

/// The path [`router`] serves.
pub const MEDIA_STREAM_PATH: &str = "/media-stream";
/// Bytes of mu-law in one 20 ms packet handed to the worker.
pub const FRAME_BYTES: usize = 160;
/// The longest decoded `media` payload accepted (400 ms).
pub const MEDIA_PAYLOAD_MAX: usize = 3_200;
/// Our marks still waiting for their echo; older ones are forgotten.
const PENDING_MARKS_MAX: usize = 64;
/// The prefix of the marks we send; the rest is the segment (reply) number.
const MARK_PREFIX: &str = "reply-";

/// Close codes (RFC 6455, section 7.4.1).
mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const PROTOCOL: u16 = 1002;
    pub const UNSUPPORTED: u16 = 1003;
    pub const INVALID_DATA: u16 = 1007;
    pub const INTERNAL: u16 = 1011;
}

/// What a carrier sent that the session refuses. Every one ends the stream.
#[derive(Debug, Error)]
pub enum MediaStreamError {
    /// Not JSON, or a known event whose fields have the wrong shape.
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    /// A known event without a field it needs.
    #[error("`{event}` message without `{field}`")]
    MissingField {
        /// The event.
        event: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// The `media` payload is not valid base64.
    #[error("media payload is not base64: {0}")]
    Base64(#[from] base64::DecodeSliceError),
    /// The `media` payload decodes to more than [`MEDIA_PAYLOAD_MAX`] bytes.
    #[error("media payload of about {0} bytes is larger than {MEDIA_PAYLOAD_MAX}")]
    PayloadTooLarge(usize),
    /// The stream is not 8 kHz mono mu-law.
    #[error(
        "unsupported media format {encoding} at {sample_rate} Hz, {channels} channel(s): \
         expected audio/x-mulaw at 8000 Hz, mono"
    )]
    UnsupportedFormat {
        /// The encoding announced.
        encoding: String,
        /// The sample rate announced.
        sample_rate: u32,
        /// The channels announced.
        channels: u32,
    },
    /// `media`, `dtmf` or `mark` before `start`.
    #[error("`{0}` before `start`")]
    NotStarted(&'static str),
    /// A second `start` on the same socket.
    #[error("a second `start` on one stream")]
    AlreadyStarted,
    /// A binary WebSocket frame (the protocol is JSON text only).
    #[error("binary frame: the protocol sends JSON text")]
    BinaryFrame,
}

impl MediaStreamError {
    /// The WebSocket close code to answer this error with.
    pub fn close_code(&self) -> u16 {
        match self {
            MediaStreamError::Malformed(_)
            | MediaStreamError::MissingField { .. }
            | MediaStreamError::Base64(_)
            | MediaStreamError::PayloadTooLarge(_) => close_code::INVALID_DATA,
            MediaStreamError::UnsupportedFormat { .. } | MediaStreamError::BinaryFrame => {
                close_code::UNSUPPORTED
            }
            MediaStreamError::NotStarted(_) | MediaStreamError::AlreadyStarted => {
                close_code::PROTOCOL
            }
        }
    }
}

/// The `start` message: who is calling and how the stream is set up.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StreamStart {
    /// The stream's id (`MZ...` on Twilio); echoed in everything we send.
    pub stream_sid: String,
    /// The call's id (`CA...` on Twilio).
    pub call_sid: String,
    /// The carrier account.
    pub account_sid: String,
    /// The tracks streamed (`inbound` for a bidirectional stream).
    pub tracks: Vec<String>,
    /// The `<Parameter>`s of the TwiML `<Stream>` (the agent to run, ...).
    pub custom_parameters: BTreeMap<String, String>,
}

/// What one carrier message meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// `connected`: the socket is up; `start` follows.
    Connected,
    /// `start`: the call's stream begins.
    Started(StreamStart),
    /// `media`: this many 20 ms packets were handed to `on_packet`
    /// (0 while a partial frame is held, or for an outbound-track echo).
    Media {
        /// Packets produced.
        packets: usize,
    },
    /// `dtmf`: the caller pressed a key.
    Dtmf {
        /// `0`-`9`, `*`, `#`, `A`-`D`.
        digit: char,
    },
    /// `mark`: the carrier reached one of our marks.
    MarkEchoed(MarkEcho),
    /// `stop`: the call's stream ended.
    Stopped,
    /// An event this session does not know (counted), or a mark not ours.
    Ignored,
}

/// The carrier's echo of a mark we sent after an agent reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkEcho {
    /// The reply (segment) the mark closed.
    pub segment: u32,
    /// The mark was still pending when we sent `clear`: the carrier echoes
    /// pending marks on a clear, so the end of that audio may not have played.
    pub cleared: bool,
}

/// Counters of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamStats {
    /// Text messages received.
    pub messages: u64,
    /// `media` messages received.
    pub media_messages: u64,
    /// 20 ms packets handed to the worker.
    pub packets_in: u64,
    /// Events we do not know, ignored.
    pub unknown_events: u64,
    /// `media` of another track than `inbound`, ignored.
    pub other_track_media: u64,
    /// Chunks that never came (a gap in the chunk numbers).
    pub chunks_missing: u64,
    /// Chunks at or below one already received, ignored.
    pub chunks_stale: u64,
    /// `media` messages we sent.
    pub media_sent: u64,
    /// Agent packets refused because their reply had been cleared.
    pub media_after_clear: u64,
    /// Marks we sent.
    pub marks_sent: u64,
    /// Marks the carrier echoed.
    pub marks_echoed: u64,
    /// `clear`s we sent.
    pub clears_sent: u64,
    /// DTMF digits received.
    pub dtmf: u64,
}

/// One inbound 20 ms packet for the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundPacket<'a> {
    /// Sequence number (the packet's index in the stream, wrapping).
    pub sequence: u16,
    /// 8 kHz timestamp (the packet's first byte's offset in the stream).
    pub timestamp: u32,
    /// 160 bytes of mu-law.
    pub payload: &'a [u8],
}

/// The messages to send for one agent packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentMessages<'a> {
    /// The mark closing the previous reply, when this packet starts another.
    pub mark: Option<&'a str>,
    /// The `media` message.
    pub media: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingStart,
    Streaming,
    Stopped,
}

#[derive(Debug, Clone, Copy)]
struct PendingMark {
    segment: u32,
    cleared: bool,
}

/// The Twilio Media Streams protocol for one socket, sans-IO.
///
/// Feed every text frame to [`receive`](Self::receive); it hands the
/// inbound audio out as 160-byte packets (sequence and timestamp counted in
/// packets from the chunk numbers, so a missing chunk leaves a gap the
/// jitter buffer conceals). Agent audio goes out through
/// [`agent_packet`](Self::agent_packet), which also closes the previous
/// reply with a mark; [`agent_audio_finished`](Self::agent_audio_finished)
/// marks the last one; [`interrupted`](Self::interrupted) writes `clear`.
/// Buffers are allocated once; a frame allocates nothing here.
#[derive(Debug)]
pub struct MediaStreamSession {
    phase: Phase,
    start: Option<StreamStart>,
    /// The stream id as a JSON string literal (quoted, escaped once).
    sid_json: String,
    decoded: Vec<u8>,
    carry: [u8; FRAME_BYTES],
    carry_len: usize,
    next_packet: u64,
    last_chunk: Option<u64>,
    /// The reply whose audio we are sending and have not marked yet.
    open_segment: Option<u32>,
    /// Replies up to this one were cleared: their packets are not sent.
    cleared_up_to: Option<u32>,
    pending_marks: VecDeque<PendingMark>,
    media_out: String,
    control_out: String,
    stats: StreamStats,
}

impl Default for MediaStreamSession {
    fn default() -> Self {
        Self::new()
    }
}

// The wire messages, borrowed from the frame where possible.

#[derive(Deserialize)]
struct EventOnly<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
}

#[derive(Deserialize)]
struct MediaMessage<'a> {
    #[serde(borrow)]
    media: Option<MediaBody<'a>>,
}

#[derive(Deserialize)]
struct MediaBody<'a> {
    #[serde(borrow, default)]
    track: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "lenient_u64")]
    chunk: Option<u64>,
    #[serde(borrow)]
    payload: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct StartMessage {
    start: Option<StartBody>,
    #[serde(rename = "streamSid", alias = "stream_id", default)]
    stream_sid: Option<String>,
}

#[derive(Deserialize)]
struct StartBody {
    #[serde(rename = "streamSid", alias = "stream_id", default)]
    stream_sid: Option<String>,
    #[serde(rename = "callSid", alias = "call_control_id", default)]
    call_sid: Option<String>,
    #[serde(rename = "accountSid", alias = "user_id", default)]
    account_sid: Option<String>,
    #[serde(default)]
    tracks: Vec<String>,
    #[serde(rename = "customParameters", alias = "custom_parameters", default)]
    custom_parameters: serde_json::Map<String, serde_json::Value>,
    #[serde(rename = "mediaFormat", alias = "media_format", default)]
    media_format: Option<MediaFormat>,
}

#[derive(Deserialize)]
struct MediaFormat {
    encoding: String,
    #[serde(rename = "sampleRate", alias = "sample_rate")]
    sample_rate: u32,
    #[serde(default = "one")]
    channels: u32,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
struct DtmfMessage<'a> {
    #[serde(borrow)]
    dtmf: Option<DtmfBody<'a>>,
}

#[derive(Deserialize)]
struct DtmfBody<'a> {
    #[serde(borrow)]
    digit: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct MarkMessage<'a> {
    #[serde(borrow)]
    mark: Option<MarkBody<'a>>,
}

#[derive(Deserialize)]
struct MarkBody<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
}

/// Twilio sends numbers as strings (`"chunk":"1"`); accept both.
fn lenient_u64<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    struct Lenient;
    impl serde::de::Visitor<'_> for Lenient {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a number or a string of digits")
        }
        fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<Self::Value, E> {
            Ok(Some(value))
        }
        fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Self::Value, E> {
            value
                .parse()
                .map(Some)
                .map_err(|_| E::custom("not a number"))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    deserializer.deserialize_any(Lenient)
}

impl MediaStreamSession {
    /// A session awaiting `connected`/`start`. Allocates its buffers.
    pub fn new() -> Self {
        MediaStreamSession {
            phase: Phase::AwaitingStart,
            start: None,
            sid_json: String::with_capacity(64),
            decoded: vec![0; MEDIA_PAYLOAD_MAX],
            carry: [0; FRAME_BYTES],
            carry_len: 0,
            next_packet: 0,
            last_chunk: None,
            open_segment: None,
            cleared_up_to: None,
            pending_marks: VecDeque::with_capacity(PENDING_MARKS_MAX),
            media_out: String::with_capacity(512),
            control_out: String::with_capacity(256),
            stats: StreamStats::default(),
        }
    }

    /// The `start` message, once received.
    pub fn start(&self) -> Option<&StreamStart> {
        self.start.as_ref()
    }

    /// Whether `stop` was received.
    pub fn is_stopped(&self) -> bool {
        self.phase == Phase::Stopped
    }

    /// The stream's counters.
    pub fn stats(&self) -> StreamStats {
        self.stats
    }

    /// Our marks not yet echoed.
    pub fn pending_marks(&self) -> usize {
        self.pending_marks.len()
    }

    /// Handles one text frame. Inbound audio goes to `on_packet` as
    /// 160-byte packets. An error means the stream must be closed
    /// ([`MediaStreamError::close_code`]).
    pub fn receive(
        &mut self,
        text: &str,
        on_packet: &mut dyn FnMut(InboundPacket<'_>),
    ) -> Result<Received, MediaStreamError> {
        self.stats.messages += 1;
        let event: EventOnly<'_> = serde_json::from_str(text)?;
        match event.event.as_ref() {
            "media" => self.on_media(text, on_packet),
            "connected" => Ok(Received::Connected),
            "start" => self.on_start(text),
            "dtmf" => self.on_dtmf(text),
            "mark" => self.on_mark(text),
            "stop" => {
                self.phase = Phase::Stopped;
                Ok(Received::Stopped)
            }
            _ => {
                self.stats.unknown_events += 1;
                Ok(Received::Ignored)
            }
        }
    }

    fn on_start(&mut self, text: &str) -> Result<Received, MediaStreamError> {
        if self.phase != Phase::AwaitingStart {
            return Err(MediaStreamError::AlreadyStarted);
        }
        let message: StartMessage = serde_json::from_str(text)?;
        let body = message.start.ok_or(MediaStreamError::MissingField {
            event: "start",
            field: "start",
        })?;
        // Twilio always announces the format; its only one is mu-law 8 kHz mono.
        if let Some(format) = &body.media_format {
            let encoding = format.encoding.to_ascii_lowercase();
            let mu_law = encoding == "audio/x-mulaw" || encoding == "pcmu";
            if !mu_law || format.sample_rate != 8_000 || format.channels != 1 {
                return Err(MediaStreamError::UnsupportedFormat {
                    encoding: format.encoding.clone(),
                    sample_rate: format.sample_rate,
                    channels: format.channels,
                });
            }
        }
        let stream_sid =
            body.stream_sid
                .or(message.stream_sid)
                .ok_or(MediaStreamError::MissingField {
                    event: "start",
                    field: "streamSid",
                })?;
        self.sid_json.clear();
        self.sid_json.push_str(&serde_json::to_string(&stream_sid)?);
        let custom_parameters = body
            .custom_parameters
            .into_iter()
            .map(|(name, value)| match value {
                serde_json::Value::String(text) => (name, text),
                other => (name, other.to_string()),
            })
            .collect();
        let start = StreamStart {
            stream_sid,
            call_sid: body.call_sid.unwrap_or_default(),
            account_sid: body.account_sid.unwrap_or_default(),
            tracks: body.tracks,
            custom_parameters,
        };
        self.start = Some(start.clone());
        self.phase = Phase::Streaming;
        Ok(Received::Started(start))
    }

    fn on_media(
        &mut self,
        text: &str,
        on_packet: &mut dyn FnMut(InboundPacket<'_>),
    ) -> Result<Received, MediaStreamError> {
        if self.phase == Phase::AwaitingStart {
            return Err(MediaStreamError::NotStarted("media"));
        }
        self.stats.media_messages += 1;
        let message: MediaMessage<'_> = serde_json::from_str(text)?;
        let media = message.media.ok_or(MediaStreamError::MissingField {
            event: "media",
            field: "media",
        })?;
        if media
            .track
            .as_deref()
            .is_some_and(|track| track != "inbound" && track != "inbound_track")
        {
            self.stats.other_track_media += 1;
            return Ok(Received::Media { packets: 0 });
        }
        let payload = media.payload.ok_or(MediaStreamError::MissingField {
            event: "media",
            field: "payload",
        })?;
        let estimate = base64::decoded_len_estimate(payload.len());
        if estimate > MEDIA_PAYLOAD_MAX {
            return Err(MediaStreamError::PayloadTooLarge(estimate));
        }
        let length = BASE64.decode_slice(payload.as_bytes(), &mut self.decoded)?;
        if let Some(chunk) = media.chunk {
            if let Some(last) = self.last_chunk {
                if chunk <= last {
                    self.stats.chunks_stale += 1;
                    return Ok(Received::Media { packets: 0 });
                }
                let missing = chunk - last - 1;
                if missing > 0 {
                    // Leave the missing audio's room in the numbering so the
                    // jitter buffer conceals it instead of closing the gap.
                    self.stats.chunks_missing += missing;
                    let missing_bytes = missing.saturating_mul(length as u64);
                    let held = self.carry_len as u64;
                    self.carry_len = 0;
                    self.next_packet += (held + missing_bytes).div_ceil(FRAME_BYTES as u64);
                }
            }
            self.last_chunk = Some(chunk);
        }
        let mut packets = 0;
        let mut input = &self.decoded[..length];
        while !input.is_empty() {
            let take = (FRAME_BYTES - self.carry_len).min(input.len());
            self.carry[self.carry_len..self.carry_len + take].copy_from_slice(&input[..take]);
            self.carry_len += take;
            input = &input[take..];
            if self.carry_len == FRAME_BYTES {
                on_packet(InboundPacket {
                    sequence: self.next_packet as u16,
                    timestamp: (self.next_packet * FRAME_BYTES as u64) as u32,
                    payload: &self.carry,
                });
                self.carry_len = 0;
                self.next_packet += 1;
                packets += 1;
            }
        }
        self.stats.packets_in += packets as u64;
        Ok(Received::Media { packets })
    }

    fn on_dtmf(&mut self, text: &str) -> Result<Received, MediaStreamError> {
        if self.phase == Phase::AwaitingStart {
            return Err(MediaStreamError::NotStarted("dtmf"));
        }
        let message: DtmfMessage<'_> = serde_json::from_str(text)?;
        let digit = message
            .dtmf
            .and_then(|dtmf| dtmf.digit)
            .and_then(|digit| {
                let mut chars = digit.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) if c.is_ascii_digit() || "*#ABCDabcd".contains(c) => {
                        Some(c.to_ascii_uppercase())
                    }
                    _ => None,
                }
            })
            .ok_or(MediaStreamError::MissingField {
                event: "dtmf",
                field: "digit",
            })?;
        self.stats.dtmf += 1;
        Ok(Received::Dtmf { digit })
    }

    fn on_mark(&mut self, text: &str) -> Result<Received, MediaStreamError> {
        if self.phase == Phase::AwaitingStart {
            return Err(MediaStreamError::NotStarted("mark"));
        }
        let message: MarkMessage<'_> = serde_json::from_str(text)?;
        let name =
            message
                .mark
                .and_then(|mark| mark.name)
                .ok_or(MediaStreamError::MissingField {
                    event: "mark",
                    field: "name",
                })?;
        let Some(segment) = name
            .strip_prefix(MARK_PREFIX)
            .and_then(|number| number.parse::<u32>().ok())
        else {
            return Ok(Received::Ignored);
        };
        let Some(index) = self
            .pending_marks
            .iter()
            .position(|mark| mark.segment == segment)
        else {
            return Ok(Received::Ignored);
        };
        // Marks come back in order: any before this one were lost.
        let mark = self.pending_marks[index];
        self.pending_marks.drain(..=index);
        self.stats.marks_echoed += 1;
        Ok(Received::MarkEchoed(MarkEcho {
            segment,
            cleared: mark.cleared,
        }))
    }

    /// The messages for one agent packet of reply `segment`: a mark closing
    /// the previous reply if this one starts another, then the `media`.
    /// `None` before `start`, after `stop`, or for a reply already cleared.
    pub fn agent_packet(&mut self, segment: u32, payload: &[u8]) -> Option<AgentMessages<'_>> {
        if self.phase != Phase::Streaming {
            return None;
        }
        if self.cleared_up_to.is_some_and(|cleared| segment <= cleared) {
            self.stats.media_after_clear += 1;
            return None;
        }
        let mark = match self.open_segment {
            Some(open) if open != segment => self.write_mark(open),
            _ => false,
        };
        self.open_segment = Some(segment);
        self.media_out.clear();
        self.media_out.push_str(r#"{"event":"media","streamSid":"#);
        self.media_out.push_str(&self.sid_json);
        self.media_out.push_str(r#","media":{"payload":""#);
        BASE64.encode_string(payload, &mut self.media_out);
        self.media_out.push_str(r#""}}"#);
        self.stats.media_sent += 1;
        Some(AgentMessages {
            mark: mark.then_some(self.control_out.as_str()),
            media: &self.media_out,
        })
    }

    /// The agent's audio ran out: the mark closing the reply just sent.
    pub fn agent_audio_finished(&mut self) -> Option<&str> {
        if self.phase != Phase::Streaming {
            return None;
        }
        let open = self.open_segment.take()?;
        self.write_mark(open).then_some(self.control_out.as_str())
    }

    /// A barge-in: the `clear` that makes the carrier drop its buffered
    /// audio. The reply being sent gets no mark, and no more of its packets
    /// are sent. `None` before `start` or after `stop`.
    pub fn interrupted(&mut self) -> Option<&str> {
        if self.phase != Phase::Streaming {
            return None;
        }
        if let Some(open) = self.open_segment.take() {
            self.cleared_up_to = Some(self.cleared_up_to.map_or(open, |up_to| up_to.max(open)));
        }
        for mark in &mut self.pending_marks {
            mark.cleared = true;
        }
        self.control_out.clear();
        self.control_out
            .push_str(r#"{"event":"clear","streamSid":"#);
        self.control_out.push_str(&self.sid_json);
        self.control_out.push('}');
        self.stats.clears_sent += 1;
        Some(&self.control_out)
    }

    fn write_mark(&mut self, segment: u32) -> bool {
        use std::fmt::Write as _;
        if self.pending_marks.len() == PENDING_MARKS_MAX {
            self.pending_marks.pop_front();
        }
        self.pending_marks.push_back(PendingMark {
            segment,
            cleared: false,
        });
        self.control_out.clear();
        self.control_out.push_str(r#"{"event":"mark","streamSid":"#);
        self.control_out.push_str(&self.sid_json);
        let _ = write!(
            self.control_out,
            r#","mark":{{"name":"{MARK_PREFIX}{segment}"}}}}"#
        );
        self.stats.marks_sent += 1;
        true
    }
}

// ---------------------------------------------------------------------------
// The driver.

/// What the transport reports about a call, for the application.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// The carrier started the stream and the call is on the worker.
    Started(StreamStart),
    /// A media event of the call (turns, barge-ins, agent audio).
    Media(MediaEvent),
    /// The caller pressed a key (also handed to the agent as keypad input).
    Dtmf {
        /// `0`-`9`, `*`, `#`, `A`-`D`.
        digit: char,
    },
    /// The carrier played our audio up to the end of a reply.
    MarkEchoed(MarkEcho),
    /// The call is over and everything it started has stopped.
    Ended {
        /// Why.
        reason: EndReason,
        /// The stream's counters.
        stats: StreamStats,
    },
}

/// Why a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// The carrier sent `stop`.
    Stopped,
    /// The socket closed (or failed) without `stop`.
    SocketClosed,
    /// The turn machine or the agent ended the call; we closed the socket.
    HungUp,
    /// The carrier sent something we refuse; we closed with `code`.
    ProtocolError {
        /// The close code sent.
        code: u16,
        /// The error, as text.
        message: String,
    },
    /// The application refused the call, or the worker could not take it.
    Refused(String),
}

pub use super::CallRefused;

/// A call as the application sets it up on `start` (inbound must be G.711
/// mu-law; outbound PCMU). A refusal closes the socket.
pub type CallSetup = super::CallSetup<StreamEvent>;

/// Sets up the call of each new stream (runs on the connection's task).
pub trait CallFactory: super::CallFactory<StreamStart, StreamEvent> {}

impl<F: super::CallFactory<StreamStart, StreamEvent>> CallFactory for F {}

/// Everything a connection needs: the worker and the call factory.
#[derive(Clone)]
pub struct MediaStreamServer {
    worker: WorkerHandle,
    factory: Arc<dyn CallFactory>,
}

impl std::fmt::Debug for MediaStreamServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaStreamServer")
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

impl MediaStreamServer {
    /// Calls go to `worker`, set up by `factory`.
    pub fn new(worker: WorkerHandle, factory: impl CallFactory) -> Self {
        MediaStreamServer {
            worker,
            factory: Arc::new(factory),
        }
    }

    /// The worker the calls run on.
    pub fn worker(&self) -> &WorkerHandle {
        &self.worker
    }
}

/// An axum router serving [`MEDIA_STREAM_PATH`].
pub fn router(server: MediaStreamServer) -> Router {
    Router::new()
        .route(MEDIA_STREAM_PATH, get(upgrade))
        .with_state(server)
}

/// Serves [`router`] on `listener` with Nagle's algorithm off on every
/// connection: 20 ms frames must leave as they are sent, not wait up to
/// 40 ms for the peer's delayed ACK. Runs until the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: MediaStreamServer,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt as _;
    let listener = listener.tap_io(|tcp| {
        // Best effort: a socket that refuses still carries the call.
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(server)).await
}

async fn upgrade(upgrade: WebSocketUpgrade, State(server): State<MediaStreamServer>) -> Response {
    upgrade.on_upgrade(move |socket| async move {
        serve_socket(socket, server).await;
    })
}

struct ActiveCall {
    key: crate::session::CallKey,
    outputs: mpsc::Receiver<CallOutput>,
    events: Option<mpsc::UnboundedSender<StreamEvent>>,
    cancel: CancellationToken,
    keypad: Option<crate::conversation::AgentKeypad>,
}

impl ActiveCall {
    fn report(&self, event: StreamEvent) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }
}

/// What ends the connection loop.
enum Step {
    Continue,
    End(EndReason),
}

/// Serves one carrier connection until `stop`, the socket closing, a
/// protocol error (answered with a close frame) or a hangup; then removes
/// the call from the worker, shuts its agent down and cancels its token.
/// Returns why it ended; nothing it started is left running.
pub async fn serve_socket(mut socket: WebSocket, server: MediaStreamServer) -> EndReason {
    let mut session = MediaStreamSession::new();
    let mut call: Option<ActiveCall> = None;
    let reason = loop {
        // A token clone is a reference count, not an allocation.
        let hang_up = call.as_ref().map(|call| call.cancel.clone());
        let step = tokio::select! {
            biased;
            output = next_output(&mut call) => match output {
                Some(output) => on_output(&mut socket, &mut session, call.as_ref(), output).await,
                // The worker dropped the call's channel: it is gone.
                None => Step::End(EndReason::Refused("the media worker stopped".into())),
            },
            // The application hung up (the agent's end_call, a limit).
            () = hung_up(hang_up.as_ref()) => Step::End(EndReason::HungUp),
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => {
                    on_text(&mut socket, &mut session, &server, &mut call, text.as_str()).await
                }
                Some(Ok(Message::Binary(_))) => {
                    protocol_error(&mut socket, MediaStreamError::BinaryFrame).await
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => Step::Continue,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    Step::End(EndReason::SocketClosed)
                }
            },
        };
        if let Step::End(reason) = step {
            break reason;
        }
    };
    if matches!(reason, EndReason::Stopped | EndReason::HungUp) {
        close(&mut socket, close_code::NORMAL, "call ended").await;
    }
    if let Some(call) = call {
        end_call(&server, call, &reason, session.stats()).await;
    }
    reason
}

/// Resolves when the application cancels the call; pending while there is no call.
async fn hung_up(token: Option<&CancellationToken>) {
    match token {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

/// The call's next output; pending while there is no call.
async fn next_output(call: &mut Option<ActiveCall>) -> Option<CallOutput> {
    match call {
        Some(call) => call.outputs.recv().await,
        None => std::future::pending().await,
    }
}

async fn on_output(
    socket: &mut WebSocket,
    session: &mut MediaStreamSession,
    call: Option<&ActiveCall>,
    output: CallOutput,
) -> Step {
    match output {
        CallOutput::Packet(packet) => {
            if let Some(messages) = session.agent_packet(packet.segment, packet.payload()) {
                if let Some(mark) = messages.mark
                    && socket.send(Message::text(mark)).await.is_err()
                {
                    return Step::End(EndReason::SocketClosed);
                }
                if socket.send(Message::text(messages.media)).await.is_err() {
                    return Step::End(EndReason::SocketClosed);
                }
            }
            Step::Continue
        }
        CallOutput::Event(event) => {
            let control = match &event {
                MediaEvent::Interrupted { .. } => session.interrupted(),
                MediaEvent::AgentAudioFinished { .. } => session.agent_audio_finished(),
                _ => None,
            };
            if let Some(control) = control
                && socket.send(Message::text(control)).await.is_err()
            {
                return Step::End(EndReason::SocketClosed);
            }
            let hung_up = matches!(event, MediaEvent::Hangup { .. });
            if let Some(call) = call {
                call.report(StreamEvent::Media(event));
            }
            if hung_up {
                Step::End(EndReason::HungUp)
            } else {
                Step::Continue
            }
        }
    }
}

async fn on_text(
    socket: &mut WebSocket,
    session: &mut MediaStreamSession,
    server: &MediaStreamServer,
    call: &mut Option<ActiveCall>,
    text: &str,
) -> Step {
    let key = call.as_ref().map(|call| call.key);
    let worker = &server.worker;
    let received = session.receive(text, &mut |packet| {
        if let Some(key) = key
            && let Some(wire) =
                WirePacket::new(packet.sequence, packet.timestamp, false, packet.payload)
        {
            worker.push_packet(key, wire);
        }
    });
    match received {
        Ok(Received::Started(start)) => match open_call(server, &start).await {
            Ok(active) => {
                active.report(StreamEvent::Started(start));
                *call = Some(active);
                Step::Continue
            }
            Err(refused) => {
                // A close reason holds 123 bytes at most (RFC 6455, 5.5).
                let mut why = format!("call refused: {refused}");
                if why.len() > 120 {
                    let mut cut = 120;
                    while !why.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    why.truncate(cut);
                }
                close(socket, close_code::INTERNAL, &why).await;
                Step::End(EndReason::Refused(refused))
            }
        },
        Ok(Received::Dtmf { digit }) => {
            if let Some(call) = call {
                if let Some(keypad) = &call.keypad {
                    keypad.press(digit);
                }
                call.report(StreamEvent::Dtmf { digit });
            }
            Step::Continue
        }
        Ok(Received::MarkEchoed(echo)) => {
            if let Some(call) = call {
                call.report(StreamEvent::MarkEchoed(echo));
            }
            Step::Continue
        }
        Ok(Received::Stopped) => Step::End(EndReason::Stopped),
        Ok(Received::Connected | Received::Media { .. } | Received::Ignored) => Step::Continue,
        Err(error) => protocol_error(socket, error).await,
    }
}

async fn open_call(server: &MediaStreamServer, start: &StreamStart) -> Result<ActiveCall, String> {
    let setup = server
        .factory
        .open_call(start)
        .map_err(|refused| refused.reason)?;
    let CallSetup {
        media,
        link,
        epoch,
        events,
        cancel,
    } = setup;
    let keypad = link.as_ref().map(|link| link.agent.keypad());
    let spec = CallSpec {
        config: media,
        link,
        epoch,
    };
    match server.worker.add_call(spec).await {
        Ok(hosted) => Ok(ActiveCall {
            key: hosted.key,
            outputs: hosted.outputs,
            events,
            cancel,
            keypad,
        }),
        Err(error) => {
            // The link went down with the refused call; stop the rest.
            cancel.cancel();
            Err(match error {
                HostError::WorkerGone => "the media worker stopped".to_owned(),
                HostError::Worker(error) => error.to_string(),
            })
        }
    }
}

async fn protocol_error(socket: &mut WebSocket, error: MediaStreamError) -> Step {
    let code = error.close_code();
    let message = error.to_string();
    close(socket, code, &message).await;
    Step::End(EndReason::ProtocolError { code, message })
}

/// Sends a close frame (reason cut to the 123 bytes a close frame holds).
async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let frame = CloseFrame {
        code,
        reason: reason[..end].into(),
    };
    let _ = socket.send(Message::Close(Some(frame))).await;
}

async fn end_call(
    server: &MediaStreamServer,
    call: ActiveCall,
    reason: &EndReason,
    stats: StreamStats,
) {
    if let Ok(Some(link)) = server.worker.remove_call(call.key).await {
        let ConversationLink {
            agent,
            asr,
            agent_audio,
        } = link;
        let by = match reason {
            EndReason::Stopped | EndReason::SocketClosed => EndedBy::User,
            _ => EndedBy::System,
        };
        agent.hang_up(by, &format!("{reason:?}"));
        agent.shutdown().await;
        drop(asr);
        drop(agent_audio);
    }
    call.cancel.cancel();
    call.report(StreamEvent::Ended {
        reason: reason.clone(),
        stats,
    });
}

// MediaStreamSession's unit tests: the protocol on its own.
#[cfg(test)]
mod tests {
    use super::*;

    const START: &str = r#"{"event":"start","sequenceNumber":"1","start":{"accountSid":"AC1","streamSid":"MZ1","callSid":"CA1","tracks":["inbound"],"customParameters":{"agent":"demo","n":3},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"streamSid":"MZ1"}"#;

    fn media(chunk: u64, payload: &[u8]) -> String {
        format!(
            r#"{{"event":"media","sequenceNumber":"{}","media":{{"track":"inbound","chunk":"{chunk}","timestamp":"{}","payload":"{}"}},"streamSid":"MZ1"}}"#,
            chunk + 2,
            chunk * 20,
            BASE64.encode(payload)
        )
    }

    fn started() -> MediaStreamSession {
        let mut session = MediaStreamSession::new();
        let mut ignore = |_: InboundPacket<'_>| {};
        assert_eq!(
            session
                .receive(
                    r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#,
                    &mut ignore
                )
                .expect("connected"),
            Received::Connected
        );
        session.receive(START, &mut ignore).expect("start");
        session
    }

    fn packets(session: &mut MediaStreamSession, text: &str) -> Vec<(u16, u32, Vec<u8>)> {
        let mut out = Vec::new();
        session
            .receive(text, &mut |p| {
                out.push((p.sequence, p.timestamp, p.payload.to_vec()))
            })
            .expect("media");
        out
    }

    #[test]
    fn start_is_parsed_with_its_parameters() {
        let session = started();
        let start = session.start().expect("start");
        assert_eq!(start.stream_sid, "MZ1");
        assert_eq!(start.call_sid, "CA1");
        assert_eq!(start.custom_parameters["agent"], "demo");
        assert_eq!(start.custom_parameters["n"], "3");
    }

    #[test]
    fn media_becomes_numbered_packets_and_a_gap_stays_a_gap() {
        let mut session = started();
        let first = packets(&mut session, &media(1, &[1; 160]));
        assert_eq!(first, vec![(0, 0, vec![1; 160])]);
        assert_eq!(packets(&mut session, &media(2, &[2; 160]))[0].0, 1);
        // Chunk 3 never came: chunk 4 is packet 3, timestamp 480.
        let after_gap = packets(&mut session, &media(4, &[4; 160]));
        assert_eq!((after_gap[0].0, after_gap[0].1), (3, 480));
        // A stale chunk is ignored.
        assert!(packets(&mut session, &media(2, &[2; 160])).is_empty());
        // Odd sizes are reframed into 160-byte packets.
        assert!(packets(&mut session, &media(5, &[5; 100])).is_empty());
        let reframed = packets(&mut session, &media(6, &[6; 100]));
        assert_eq!(reframed.len(), 1);
        assert_eq!(&reframed[0].2[..100], &[5; 100][..]);
        assert_eq!(&reframed[0].2[100..], &[6; 60][..]);
        let stats = session.stats();
        assert_eq!((stats.chunks_missing, stats.chunks_stale), (1, 1));
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        let mut ignore = |_: InboundPacket<'_>| {};
        let mut session = MediaStreamSession::new();
        assert!(matches!(
            session.receive("{not json", &mut ignore),
            Err(MediaStreamError::Malformed(_))
        ));
        assert!(matches!(
            session.receive(&media(1, &[0; 160]), &mut ignore),
            Err(MediaStreamError::NotStarted("media"))
        ));
        let l16 = START
            .replace("audio/x-mulaw", "audio/l16")
            .replace("8000", "16000");
        let error = session.receive(&l16, &mut ignore).expect_err("format");
        assert!(matches!(
            error,
            MediaStreamError::UnsupportedFormat {
                sample_rate: 16000,
                ..
            }
        ));
        assert_eq!(error.close_code(), 1003);
        let mut session = started();
        let bad = r#"{"event":"media","media":{"chunk":"1","payload":"!!!not base64"}}"#;
        assert!(matches!(
            session.receive(bad, &mut ignore),
            Err(MediaStreamError::Base64(_))
        ));
        let huge = media(1, &[0; MEDIA_PAYLOAD_MAX * 2]);
        assert!(matches!(
            session.receive(&huge, &mut ignore),
            Err(MediaStreamError::PayloadTooLarge(_))
        ));
        assert!(matches!(
            session.receive(START, &mut ignore),
            Err(MediaStreamError::AlreadyStarted)
        ));
        assert_eq!(
            session
                .receive(r#"{"event":"somethingNew","x":[1]}"#, &mut ignore)
                .expect("ignored"),
            Received::Ignored
        );
        assert_eq!(session.stats().unknown_events, 1);
    }

    #[test]
    fn replies_are_marked_echoes_reported_and_clear_cuts_the_reply() {
        let mut session = started();
        let messages = session.agent_packet(0, &[0xAA; 160]).expect("media");
        assert!(messages.mark.is_none());
        let media: serde_json::Value = serde_json::from_str(messages.media).expect("json");
        assert_eq!(media["event"], "media");
        assert_eq!(media["streamSid"], "MZ1");
        let payload = BASE64
            .decode(media["media"]["payload"].as_str().expect("payload"))
            .expect("base64");
        assert_eq!(payload, vec![0xAA; 160]);
        // Reply 1 starts: reply 0 is marked first.
        let messages = session.agent_packet(1, &[0xAB; 160]).expect("media");
        let mark: serde_json::Value =
            serde_json::from_str(messages.mark.expect("mark")).expect("json");
        assert_eq!(mark["mark"]["name"], "reply-0");
        let finished = session.agent_audio_finished().expect("mark");
        assert!(finished.contains(r#""name":"reply-1""#));
        assert!(session.agent_audio_finished().is_none());
        let mut ignore = |_: InboundPacket<'_>| {};
        let echo =
            r#"{"event":"mark","streamSid":"MZ1","sequenceNumber":"9","mark":{"name":"reply-0"}}"#;
        assert_eq!(
            session.receive(echo, &mut ignore).expect("mark"),
            Received::MarkEchoed(MarkEcho {
                segment: 0,
                cleared: false
            })
        );
        // Reply 2 is cut: clear, no mark for it, no more of its packets.
        session.agent_packet(2, &[1; 160]).expect("media");
        let clear: serde_json::Value =
            serde_json::from_str(session.interrupted().expect("clear")).expect("json");
        assert_eq!(
            clear,
            serde_json::json!({"event": "clear", "streamSid": "MZ1"})
        );
        assert!(session.agent_packet(2, &[1; 160]).is_none());
        assert!(session.agent_audio_finished().is_none());
        // The carrier echoes the mark still pending at the clear.
        let echo = echo.replace("reply-0", "reply-1");
        assert_eq!(
            session.receive(&echo, &mut ignore).expect("mark"),
            Received::MarkEchoed(MarkEcho {
                segment: 1,
                cleared: true
            })
        );
        // The next reply plays normally.
        assert!(session.agent_packet(3, &[1; 160]).is_some());
    }

    #[test]
    fn dtmf_and_stop() {
        let mut session = started();
        let mut ignore = |_: InboundPacket<'_>| {};
        let dtmf = r##"{"event":"dtmf","streamSid":"MZ1","sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"#"}}"##;
        assert_eq!(
            session.receive(dtmf, &mut ignore).expect("dtmf"),
            Received::Dtmf { digit: '#' }
        );
        let stop = r#"{"event":"stop","sequenceNumber":"6","stop":{"accountSid":"AC1","callSid":"CA1"},"streamSid":"MZ1"}"#;
        assert_eq!(
            session.receive(stop, &mut ignore).expect("stop"),
            Received::Stopped
        );
        assert!(session.is_stopped());
        assert!(session.agent_packet(0, &[0; 160]).is_none());
    }
}
