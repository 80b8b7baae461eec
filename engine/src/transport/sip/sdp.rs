//! SDP offer/answer (RFC 3264) for one audio stream, sans-IO.
//!
//! The engine speaks Opus (dynamic type, RFC 7587 `opus/48000/2`), G.722
//! (static type 9), PCMU (0) and PCMA (8) on SIP. [`negotiate`] picks Opus
//! whenever it is offered (wideband, with in-band FEC against loss), then
//! G.722 (wideband: what the recognizer hears best), and otherwise the first
//! of PCMU/PCMA in the offerer's order (the offerer knows its network: PCMA
//! in Europe, PCMU in North America); plus RFC 4733 `telephone-event` if
//! offered at the audio's clock rate, at 20 ms packets. [`negotiate_with`]
//! takes a strict order of our own instead. RFC 3264 lets the answerer
//! choose among the offered formats. [`Answer::to_sdp`] writes the answer
//! with our RTP address. Parsing is lenient about what it does not need and
//! never panics on garbage.
//!
//! Outbound calls turn it around: [`Offer::to_sdp`] offers Opus, G.722,
//! PCMU, PCMA and `telephone-event` (at 8 kHz, and at 48 kHz for Opus), and
//! [`read_answer`] reads what the callee picked (the first supported codec
//! of its answer).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use callingbox_codecs::G711Law;
use thiserror::Error;

use crate::audio::inbound::InboundCodec;
use crate::audio::outbound::WireCodec;

/// Why an offer cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SdpError {
    /// The body is not SDP (no `v=0`, or a line that is not `x=...`).
    #[error("not an SDP body: {0}")]
    Malformed(&'static str),
    /// No `m=audio` line with a non-zero port.
    #[error("the offer has no active audio stream")]
    NoAudio,
    /// The audio stream has no address (`c=` line) we can send to.
    #[error("the offer has no usable connection address")]
    NoConnection,
    /// None of Opus, G.722, PCMU and PCMA is offered (answered with 488).
    #[error("no common codec: the offer has none of opus, G722, PCMU and PCMA")]
    NoCommonCodec,
}

/// An audio codec the engine speaks on SIP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecKind {
    /// Opus: 48 kHz RTP clock, always `opus/48000/2` in SDP (RFC 7587), the
    /// engine sends mono.
    Opus,
    /// G.722: 16 kHz wideband audio, 8 kHz RTP clock (RFC 3551 section 4.5.2).
    G722,
    /// G.711 mu-law.
    Pcmu,
    /// G.711 A-law.
    Pcma,
}

impl CodecKind {
    /// The SDP encoding name.
    pub fn name(self) -> &'static str {
        match self {
            CodecKind::Opus => "opus",
            CodecKind::G722 => "G722",
            CodecKind::Pcmu => "PCMU",
            CodecKind::Pcma => "PCMA",
        }
    }

    /// The static RTP payload type (RFC 3551); Opus has none.
    pub fn static_payload_type(self) -> Option<u8> {
        match self {
            CodecKind::Opus => None,
            CodecKind::G722 => Some(9),
            CodecKind::Pcmu => Some(0),
            CodecKind::Pcma => Some(8),
        }
    }

    /// The RTP clock rate: 48 kHz for Opus, 8 kHz for the others (G.722
    /// too, although it samples at 16 kHz: RFC 3551 section 4.5.2).
    pub fn clock_rate(self) -> u32 {
        match self {
            CodecKind::Opus => 48_000,
            CodecKind::G722 | CodecKind::Pcmu | CodecKind::Pcma => 8_000,
        }
    }

    /// The `a=rtpmap:` encoding (`opus/48000/2`, `PCMU/8000`, ...).
    pub fn rtpmap(self) -> &'static str {
        match self {
            CodecKind::Opus => "opus/48000/2",
            CodecKind::G722 => "G722/8000",
            CodecKind::Pcmu => "PCMU/8000",
            CodecKind::Pcma => "PCMA/8000",
        }
    }

    /// How the engine decodes it.
    pub fn inbound(self) -> InboundCodec {
        match self {
            CodecKind::Opus => InboundCodec::Opus,
            CodecKind::G722 => InboundCodec::G722,
            CodecKind::Pcmu => InboundCodec::G711(G711Law::MuLaw),
            CodecKind::Pcma => InboundCodec::G711(G711Law::ALaw),
        }
    }

    /// How the engine encodes it.
    pub fn wire(self) -> WireCodec {
        match self {
            CodecKind::Opus => WireCodec::Opus,
            CodecKind::G722 => WireCodec::G722,
            CodecKind::Pcmu => WireCodec::G711(G711Law::MuLaw),
            CodecKind::Pcma => WireCodec::G711(G711Law::ALaw),
        }
    }

    const ALL: [CodecKind; 4] = [
        CodecKind::Opus,
        CodecKind::G722,
        CodecKind::Pcmu,
        CodecKind::Pcma,
    ];

    fn from_encoding(name: &str, rate: &str) -> Option<CodecKind> {
        Self::ALL.into_iter().find(|kind| {
            name.eq_ignore_ascii_case(kind.name())
                && rate.parse::<u32>().ok() == Some(kind.clock_rate())
        })
    }

    fn from_static(payload_type: u8) -> Option<CodecKind> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.static_payload_type() == Some(payload_type))
    }
}

/// The codec negotiated for the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioCodec {
    /// The RTP payload type both sides use for it.
    pub payload_type: u8,
    /// Which codec it is.
    pub kind: CodecKind,
}

impl AudioCodec {
    /// The SDP encoding name.
    pub fn name(self) -> &'static str {
        self.kind.name()
    }
}

/// Which way media flows (RFC 3264, section 6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Both ways (the default).
    SendRecv,
    /// The offerer only sends.
    SendOnly,
    /// The offerer only receives.
    RecvOnly,
    /// No media (hold).
    Inactive,
}

impl Direction {
    /// The direction the answerer states for an offered one.
    fn answer(self) -> Direction {
        match self {
            Direction::SendRecv => Direction::SendRecv,
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            Direction::Inactive => Direction::Inactive,
        }
    }

    fn attribute(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }
}

/// What was agreed with the offerer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Where the offerer receives RTP.
    pub remote_rtp: SocketAddr,
    /// The audio codec.
    pub codec: AudioCodec,
    /// The `telephone-event` payload type at the audio's clock rate, if
    /// offered (RFC 4733 section 2.1: events share the audio's clock).
    pub telephone_event: Option<u8>,
    /// Packet duration in ms (always 20: the engine's frames).
    pub ptime: u32,
    /// The direction we answer with.
    pub direction: Direction,
    /// The offerer asked for RTCP on the RTP port (RFC 5761 `a=rtcp-mux`);
    /// the answer says yes.
    pub rtcp_mux: bool,
    /// Where the offerer receives RTCP when it said so (RFC 3605
    /// `a=rtcp:`); RTP port + 1 otherwise.
    pub remote_rtcp: Option<SocketAddr>,
}

/// Our answer to an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// What was agreed.
    pub negotiated: Negotiated,
    /// Where we receive RTP.
    pub local_rtp: SocketAddr,
    /// The `o=` session id (and version).
    pub session_id: u64,
}

impl Answer {
    /// The answer's SDP text (CRLF lines).
    pub fn to_sdp(&self) -> String {
        self.to_sdp_version(self.session_id)
    }

    /// The answer's SDP with `version` in its `o=` line: a later answer in
    /// the same session (a re-INVITE's) carries a higher one (RFC 3264, 8).
    pub fn to_sdp_version(&self, version: u64) -> String {
        let ip = self.local_rtp.ip();
        let family = match ip {
            IpAddr::V4(_) => "IP4",
            IpAddr::V6(_) => "IP6",
        };
        let codec = self.negotiated.codec;
        let mut sdp = String::with_capacity(320);
        // Writing to a String cannot fail.
        let _ = write!(
            sdp,
            "v=0\r\no=callingbox {id} {version} IN {family} {ip}\r\ns=CallingBox\r\n\
             c=IN {family} {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {pt}",
            id = self.session_id,
            port = self.local_rtp.port(),
            pt = codec.payload_type,
        );
        if let Some(event) = self.negotiated.telephone_event {
            let _ = write!(sdp, " {event}");
        }
        let _ = write!(
            sdp,
            "\r\na=rtpmap:{} {}\r\n",
            codec.payload_type,
            codec.kind.rtpmap()
        );
        if codec.kind == CodecKind::Opus {
            let _ = write!(sdp, "a=fmtp:{} {OPUS_FMTP}\r\n", codec.payload_type);
        }
        if let Some(event) = self.negotiated.telephone_event {
            let _ = write!(
                sdp,
                "a=rtpmap:{event} telephone-event/{}\r\na=fmtp:{event} 0-15\r\n",
                codec.kind.clock_rate()
            );
        }
        let _ = write!(
            sdp,
            "a=ptime:{}\r\na={}\r\n",
            self.negotiated.ptime,
            self.negotiated.direction.attribute()
        );
        if self.negotiated.rtcp_mux {
            sdp.push_str("a=rtcp-mux\r\n");
        }
        sdp
    }
}

/// Our `a=fmtp` for Opus (RFC 7587 section 7): we decode its in-band FEC,
/// and everything the engine hears is resampled to 16 kHz, so a sender may
/// save the bits of a wider band.
const OPUS_FMTP: &str = "useinbandfec=1;maxplaybackrate=16000;sprop-maxcapturerate=16000";

/// Our offer for an outbound call: Opus ([`Offer::OPUS`]), G.722 (9), PCMU
/// (0), PCMA (8) and `telephone-event` at 8 kHz ([`Offer::TELEPHONE_EVENT`])
/// and at 48 kHz for Opus ([`Offer::TELEPHONE_EVENT_48K`]), 20 ms packets,
/// sendrecv.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// Where we receive RTP.
    pub local_rtp: SocketAddr,
    /// The `o=` session id (and version).
    pub session_id: u64,
}

impl Offer {
    /// The payload type we offer RFC 4733 events on (8 kHz clock).
    pub const TELEPHONE_EVENT: u8 = 101;
    /// The payload type of RFC 4733 events on Opus's 48 kHz clock.
    pub const TELEPHONE_EVENT_48K: u8 = 102;
    /// The dynamic payload type we offer Opus on.
    pub const OPUS: u8 = 96;

    /// The offer's SDP text (CRLF lines).
    pub fn to_sdp(&self) -> String {
        let ip = self.local_rtp.ip();
        let family = match ip {
            IpAddr::V4(_) => "IP4",
            IpAddr::V6(_) => "IP6",
        };
        let (event, event_48k, opus) =
            (Self::TELEPHONE_EVENT, Self::TELEPHONE_EVENT_48K, Self::OPUS);
        format!(
            "v=0\r\no=callingbox {id} {id} IN {family} {ip}\r\ns=CallingBox\r\n\
             c=IN {family} {ip}\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP {opus} 9 0 8 {event} {event_48k}\r\n\
             a=rtpmap:{opus} opus/48000/2\r\na=fmtp:{opus} {OPUS_FMTP}\r\n\
             a=rtpmap:9 G722/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
             a=rtpmap:{event} telephone-event/8000\r\na=fmtp:{event} 0-15\r\n\
             a=rtpmap:{event_48k} telephone-event/48000\r\na=fmtp:{event_48k} 0-15\r\n\
             a=ptime:20\r\na=sendrecv\r\n",
            id = self.session_id,
            port = self.local_rtp.port(),
        )
    }
}

/// Reads the callee's answer to our [`Offer`]: the codec it put first
/// (RFC 3264 lets the answerer pick among the offered ones), its
/// `telephone-event` type if it kept it, and where it receives RTP. The
/// direction is ours (an answer of `recvonly` makes us `sendonly`).
pub fn read_answer(answer: &str) -> Result<Negotiated, SdpError> {
    let mut negotiated = negotiate_in_order(answer, None)?;
    // We never offer rtcp-mux, so an answer cannot turn it on (RFC 5761 5.1.1).
    negotiated.rtcp_mux = false;
    Ok(negotiated)
}

/// One `m=` section as parsed.
#[derive(Debug, Default)]
struct MediaSection<'a> {
    kind: &'a str,
    port: u16,
    formats: Vec<u8>,
    connection: Option<IpAddr>,
    rtpmaps: Vec<(u8, &'a str)>,
    direction: Option<Direction>,
    rtcp_mux: bool,
    /// `a=rtcp:` port and, if given, address.
    rtcp: Option<(u16, Option<IpAddr>)>,
}

/// Negotiates an offer: the first active `m=audio` stream, Opus if offered,
/// else G.722 if offered, else the offerer's first of PCMU/PCMA, and
/// `telephone-event` if offered.
pub fn negotiate(offer: &str) -> Result<Negotiated, SdpError> {
    let wideband = [CodecKind::Opus, CodecKind::G722];
    negotiate_in_order(offer, Some(&wideband)).or_else(|error| match error {
        SdpError::NoCommonCodec => negotiate_in_order(offer, None),
        other => Err(other),
    })
}

/// [`negotiate`] with our own order of preference (codecs left out of it
/// are never chosen).
pub fn negotiate_with(offer: &str, preference: &[CodecKind]) -> Result<Negotiated, SdpError> {
    negotiate_in_order(offer, Some(preference))
}

/// Negotiates a new offer in an established call (a re-INVITE): like
/// [`negotiate`], but only `kind` is acceptable, because the call's media
/// pipeline was built for it (an offer without it has no common codec).
pub fn negotiate_keeping(offer: &str, kind: CodecKind) -> Result<Negotiated, SdpError> {
    negotiate_in_order(offer, Some(&[kind]))
}

/// Negotiates in `preference` order, or in the SDP's own order when None.
fn negotiate_in_order(
    offer: &str,
    preference: Option<&[CodecKind]>,
) -> Result<Negotiated, SdpError> {
    let mut session_connection: Option<IpAddr> = None;
    let mut session_direction: Option<Direction> = None;
    let mut sections: Vec<MediaSection<'_>> = Vec::new();
    let mut saw_version = false;
    for raw in offer.lines() {
        let line = raw.trim_end_matches('\r');
        if line.is_empty() {
            continue;
        }
        let bytes = line.as_bytes();
        if bytes.len() < 2 || bytes[1] != b'=' || !bytes[0].is_ascii_lowercase() {
            return Err(SdpError::Malformed("a line is not `x=value`"));
        }
        let value = &line[2..];
        match bytes[0] {
            b'v' => {
                if value.trim() != "0" {
                    return Err(SdpError::Malformed("version is not 0"));
                }
                saw_version = true;
            }
            b'c' => {
                let address = parse_connection(value);
                match sections.last_mut() {
                    Some(section) => section.connection = address,
                    None => session_connection = address,
                }
            }
            b'm' => sections.push(parse_media(value)),
            b'a' => {
                let direction = match value {
                    "sendrecv" => Some(Direction::SendRecv),
                    "sendonly" => Some(Direction::SendOnly),
                    "recvonly" => Some(Direction::RecvOnly),
                    "inactive" => Some(Direction::Inactive),
                    _ => None,
                };
                match (sections.last_mut(), direction) {
                    (Some(section), Some(direction)) => section.direction = Some(direction),
                    (None, Some(direction)) => session_direction = Some(direction),
                    (Some(section), None) if value == "rtcp-mux" => section.rtcp_mux = true,
                    (Some(section), None) if value.starts_with("rtcp:") => {
                        // RFC 3605: `a=rtcp:port [IN IP4 address]`.
                        let mut fields = value["rtcp:".len()..].split_whitespace();
                        let port = fields.next().and_then(|port| port.parse::<u16>().ok());
                        let rest: Vec<&str> = fields.collect();
                        let address = match rest.as_slice() {
                            [_, _, address] => address.parse::<IpAddr>().ok(),
                            _ => None,
                        };
                        section.rtcp = port.filter(|&port| port != 0).map(|port| (port, address));
                    }
                    (Some(section), None) => {
                        if let Some(map) = value.strip_prefix("rtpmap:")
                            && let Some((pt, encoding)) = map.split_once(' ')
                            && let Ok(pt) = pt.trim().parse::<u8>()
                        {
                            section.rtpmaps.push((pt, encoding.trim()));
                        }
                    }
                    (None, None) => {}
                }
            }
            _ => {}
        }
    }
    if !saw_version {
        return Err(SdpError::Malformed("no `v=0` line"));
    }
    let audio = sections
        .iter()
        .find(|section| section.kind == "audio" && section.port != 0)
        .ok_or(SdpError::NoAudio)?;
    let ip = audio
        .connection
        .or(session_connection)
        .ok_or(SdpError::NoConnection)?;
    let encoding_of = |pt: u8| -> Option<&str> {
        audio
            .rtpmaps
            .iter()
            .find(|(mapped, _)| *mapped == pt)
            .map(|(_, encoding)| *encoding)
    };
    let offered = audio.formats.iter().filter_map(|&pt| {
        let kind = match encoding_of(pt) {
            Some(encoding) => {
                let name = encoding.split('/').next().unwrap_or_default();
                let rate = encoding.split('/').nth(1).unwrap_or("8000");
                CodecKind::from_encoding(name, rate)
            }
            // Static payload types need no rtpmap (RFC 3551).
            None => CodecKind::from_static(pt),
        }?;
        Some(AudioCodec {
            payload_type: pt,
            kind,
        })
    });
    let codec = match preference {
        None => offered.into_iter().next(),
        Some(preference) => {
            let offered: Vec<AudioCodec> = offered.collect();
            preference
                .iter()
                .find_map(|kind| offered.iter().find(|codec| codec.kind == *kind).copied())
        }
    }
    .ok_or(SdpError::NoCommonCodec)?;
    let event_encoding = format!("telephone-event/{}", codec.kind.clock_rate());
    let telephone_event = audio.formats.iter().copied().find(|&pt| {
        encoding_of(pt).is_some_and(|encoding| {
            let encoding = encoding.strip_suffix("/1").unwrap_or(encoding);
            encoding.eq_ignore_ascii_case(&event_encoding)
        })
    });
    let direction = audio
        .direction
        .or(session_direction)
        .unwrap_or(Direction::SendRecv)
        .answer();
    Ok(Negotiated {
        remote_rtp: SocketAddr::new(ip, audio.port),
        codec,
        telephone_event,
        ptime: 20,
        direction,
        rtcp_mux: audio.rtcp_mux,
        remote_rtcp: audio
            .rtcp
            .map(|(port, address)| SocketAddr::new(address.unwrap_or(ip), port)),
    })
}

/// `IN IP4 192.0.2.1` (a multicast `/ttl` suffix is cut off).
fn parse_connection(value: &str) -> Option<IpAddr> {
    let mut parts = value.split_whitespace();
    let (net, _family, address) = (parts.next()?, parts.next()?, parts.next()?);
    if net != "IN" {
        return None;
    }
    address.split('/').next()?.parse().ok()
}

/// `audio 49170 RTP/AVP 0 8 101`; unknown shapes become an inactive section.
fn parse_media(value: &str) -> MediaSection<'_> {
    let mut parts = value.split_whitespace();
    let kind = parts.next().unwrap_or_default();
    // `49170/2` (port count) keeps its first port.
    let port = parts
        .next()
        .and_then(|port| port.split('/').next())
        .and_then(|port| port.parse::<u16>().ok())
        .unwrap_or(0);
    let protocol = parts.next().unwrap_or_default();
    let formats = parts.filter_map(|pt| pt.parse::<u8>().ok()).collect();
    // Only plain RTP/AVP (or AVPF) audio is ours; SRTP needs keys we do not do.
    let port = if protocol == "RTP/AVP" || protocol == "RTP/AVPF" {
        port
    } else {
        0
    };
    MediaSection {
        kind,
        port,
        formats,
        ..MediaSection::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\n\
        c=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8 0 101\r\n\
        a=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n";

    #[test]
    fn picks_the_offerers_first_g711_and_telephone_event() {
        let negotiated = negotiate(OFFER).expect("answerable");
        assert_eq!(
            negotiated.remote_rtp,
            "192.0.2.10:6000".parse().expect("addr")
        );
        // Without G.722, the offerer's first G.711 law.
        assert_eq!(negotiated.codec.kind, CodecKind::Pcma);
        assert_eq!(negotiated.codec.payload_type, 8);
        // Our own order can say otherwise.
        let pcmu_first =
            negotiate_with(OFFER, &[CodecKind::Pcmu, CodecKind::Pcma]).expect("answerable");
        assert_eq!(pcmu_first.codec.kind, CodecKind::Pcmu);
        assert_eq!(pcmu_first.codec.payload_type, 0);
        assert_eq!(negotiated.telephone_event, Some(101));
        assert_eq!(negotiated.ptime, 20);
        assert_eq!(negotiated.direction, Direction::SendRecv);
    }

    #[test]
    fn rtcp_mux_is_answered_and_an_rtcp_port_is_followed() {
        assert!(!negotiate(OFFER).expect("answerable").rtcp_mux);
        assert_eq!(negotiate(OFFER).expect("answerable").remote_rtcp, None);
        let offer = format!("{OFFER}a=rtcp-mux\r\na=rtcp:6003 IN IP4 192.0.2.11\r\n");
        let negotiated = negotiate(&offer).expect("answerable");
        assert!(negotiated.rtcp_mux);
        assert_eq!(
            negotiated.remote_rtcp,
            Some("192.0.2.11:6003".parse().expect("addr"))
        );
        let answer = Answer {
            negotiated,
            local_rtp: "192.0.2.99:40002".parse().expect("addr"),
            session_id: 7,
        }
        .to_sdp();
        assert!(answer.ends_with("a=rtcp-mux\r\n"), "{answer}");
        // A port alone is on the stream's address; garbage is ignored.
        let port_only = format!("{OFFER}a=rtcp:7001\r\n");
        assert_eq!(
            negotiate(&port_only).expect("answerable").remote_rtcp,
            Some("192.0.2.10:7001".parse().expect("addr"))
        );
        for bad in [
            "a=rtcp:",
            "a=rtcp:x",
            "a=rtcp:0",
            "a=rtcp:99999 IN IP4 nowhere",
        ] {
            let offer = format!("{OFFER}{bad}\r\n");
            assert_eq!(
                negotiate(&offer).expect("answerable").remote_rtcp,
                None,
                "{bad}"
            );
        }
        // We never offer mux: an answer cannot switch it on.
        let read = read_answer(&format!("{OFFER}a=rtcp-mux\r\n")).expect("usable");
        assert!(!read.rtcp_mux);
    }

    #[test]
    fn pcmu_without_rtpmap_and_media_level_connection_wins() {
        let offer = "v=0\no=- 1 1 IN IP4 10.0.0.1\ns=-\nc=IN IP4 10.0.0.1\nt=0 0\n\
            m=video 5000 RTP/AVP 96\nm=audio 7000 RTP/AVP 18 0\nc=IN IP4 10.0.0.2\na=sendonly\n";
        let negotiated = negotiate(offer).expect("answerable");
        assert_eq!(
            negotiated.remote_rtp,
            "10.0.0.2:7000".parse().expect("addr")
        );
        assert_eq!(negotiated.codec.kind, CodecKind::Pcmu);
        assert_eq!(negotiated.telephone_event, None);
        assert_eq!(negotiated.direction, Direction::RecvOnly);
    }

    #[test]
    fn the_answer_names_our_address_and_the_chosen_codec() {
        let negotiated = negotiate_with(OFFER, &[CodecKind::Pcma]).expect("answerable");
        let answer = Answer {
            negotiated,
            local_rtp: "192.0.2.99:40002".parse().expect("addr"),
            session_id: 7,
        };
        let sdp = answer.to_sdp();
        assert!(sdp.contains("c=IN IP4 192.0.2.99\r\n"), "{sdp}");
        assert!(sdp.contains("m=audio 40002 RTP/AVP 8 101\r\n"), "{sdp}");
        assert!(sdp.contains("a=rtpmap:8 PCMA/8000\r\n"), "{sdp}");
        assert!(
            sdp.contains("a=rtpmap:101 telephone-event/8000\r\n"),
            "{sdp}"
        );
        assert!(sdp.contains("a=ptime:20\r\n"), "{sdp}");
        // The answer is itself answerable SDP with the same stream.
        let reparsed = negotiate(&sdp).expect("our answer parses");
        assert_eq!(reparsed.codec, negotiated.codec);
        assert_eq!(reparsed.remote_rtp.port(), 40002);
    }

    #[test]
    fn our_offer_lists_opus_g722_and_both_laws_and_the_answer_picks_one() {
        let offer = Offer {
            local_rtp: "127.0.0.1:40010".parse().expect("addr"),
            session_id: 3,
        }
        .to_sdp();
        assert!(
            offer.contains("m=audio 40010 RTP/AVP 96 9 0 8 101 102\r\n"),
            "{offer}"
        );
        assert!(offer.contains("a=rtpmap:96 opus/48000/2\r\n"), "{offer}");
        assert!(offer.contains("a=fmtp:96 useinbandfec=1;"), "{offer}");
        assert!(offer.contains("a=rtpmap:9 G722/8000\r\n"), "{offer}");
        assert!(
            offer.contains("a=rtpmap:102 telephone-event/48000\r\n"),
            "{offer}"
        );
        // Answered by our own UAS logic, it takes Opus and the 48 kHz events.
        let negotiated = negotiate(&offer).expect("our offer is answerable");
        assert_eq!(negotiated.codec.kind, CodecKind::Opus);
        assert_eq!(negotiated.codec.payload_type, Offer::OPUS);
        assert_eq!(negotiated.telephone_event, Some(Offer::TELEPHONE_EVENT_48K));
        // Without Opus: G.722 and the 8 kHz events.
        let negotiated = negotiate_with(&offer, &[CodecKind::G722]).expect("answerable");
        assert_eq!(negotiated.codec.payload_type, 9);
        assert_eq!(negotiated.telephone_event, Some(Offer::TELEPHONE_EVENT));
        let answer = "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
            m=audio 7078 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=recvonly\r\n";
        let read = read_answer(answer).expect("usable answer");
        assert_eq!(read.codec.kind, CodecKind::Pcma);
        assert_eq!(read.codec.payload_type, 8);
        assert_eq!(read.telephone_event, None);
        assert_eq!(read.remote_rtp, "10.0.0.5:7078".parse().expect("addr"));
        assert_eq!(read.direction, Direction::SendOnly);
    }

    #[test]
    fn no_common_codec_is_refused() {
        let offer = "v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nc=IN IP4 1.2.3.4\r\nt=0 0\r\n\
            m=audio 4000 RTP/AVP 18 96\r\na=rtpmap:96 iLBC/8000\r\n";
        assert_eq!(negotiate(offer), Err(SdpError::NoCommonCodec));
        // A dynamic type named PCMU at another rate is not G.711, nor Opus at 8 kHz.
        assert_eq!(
            negotiate(&offer.replace("iLBC/8000", "opus/8000")),
            Err(SdpError::NoCommonCodec)
        );
        let offer = offer.replace("iLBC/8000", "PCMU/16000");
        assert_eq!(negotiate(&offer), Err(SdpError::NoCommonCodec));
        // A codec left out of our preference is never chosen.
        assert_eq!(
            negotiate_with(OFFER, &[CodecKind::G722]),
            Err(SdpError::NoCommonCodec)
        );
    }

    #[test]
    fn g722_is_recognized_by_static_type_or_name_and_answered() {
        let offer = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
            m=audio 7000 RTP/AVP 0 9 101\r\na=rtpmap:101 telephone-event/8000\r\n";
        let negotiated = negotiate(offer).expect("answerable");
        assert_eq!(negotiated.codec.kind, CodecKind::G722);
        assert_eq!(negotiated.codec.payload_type, 9);
        // A softphone naming it on another number (dynamic types may carry any codec).
        let dynamic =
            offer.replace("RTP/AVP 0 9 101", "RTP/AVP 0 102 101") + "a=rtpmap:102 g722/8000\r\n";
        let negotiated = negotiate(&dynamic).expect("answerable");
        assert_eq!(negotiated.codec.kind, CodecKind::G722);
        assert_eq!(negotiated.codec.payload_type, 102);
        let sdp = Answer {
            negotiated,
            local_rtp: "10.0.0.9:40000".parse().expect("addr"),
            session_id: 1,
        }
        .to_sdp();
        assert!(sdp.contains("m=audio 40000 RTP/AVP 102 101\r\n"), "{sdp}");
        assert!(sdp.contains("a=rtpmap:102 G722/8000\r\n"), "{sdp}");
        // G.722 at 16 kHz in the rtpmap is the common mistake RFC 3551 warns of: not ours.
        let wrong_clock =
            offer.replace("RTP/AVP 0 9 101", "RTP/AVP 102") + "a=rtpmap:102 G722/16000\r\n";
        assert_eq!(negotiate(&wrong_clock), Err(SdpError::NoCommonCodec));
    }

    #[test]
    fn opus_is_preferred_and_answered_with_its_type_fmtp_and_48k_events() {
        // A softphone's offer (baresip's order): Opus on 111, G.722, PCMU,
        // and events at both clocks.
        let offer = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
            m=audio 7000 RTP/AVP 0 9 111 101 110\r\na=rtpmap:111 opus/48000/2\r\n\
            a=fmtp:111 stereo=1;sprop-stereo=1\r\na=rtpmap:101 telephone-event/8000\r\n\
            a=rtpmap:110 telephone-event/48000\r\n";
        let negotiated = negotiate(offer).expect("answerable");
        assert_eq!(negotiated.codec.kind, CodecKind::Opus);
        assert_eq!(negotiated.codec.payload_type, 111);
        assert_eq!(negotiated.telephone_event, Some(110));
        assert_eq!(negotiated.codec.kind.clock_rate(), 48_000);
        let sdp = Answer {
            negotiated,
            local_rtp: "10.0.0.9:40000".parse().expect("addr"),
            session_id: 1,
        }
        .to_sdp();
        assert!(sdp.contains("m=audio 40000 RTP/AVP 111 110\r\n"), "{sdp}");
        assert!(sdp.contains("a=rtpmap:111 opus/48000/2\r\n"), "{sdp}");
        assert!(
            sdp.contains("a=fmtp:111 useinbandfec=1;maxplaybackrate=16000"),
            "{sdp}"
        );
        assert!(
            sdp.contains("a=rtpmap:110 telephone-event/48000\r\n"),
            "{sdp}"
        );
        // Events only at 8 kHz beside Opus do not share its clock: none.
        let no_48k = offer.replace("111 101 110", "111 101");
        assert_eq!(
            negotiate(&no_48k).expect("answerable").telephone_event,
            None
        );
        // A re-INVITE keeps Opus; one without it has no common codec.
        assert_eq!(
            negotiate_keeping(offer, CodecKind::Opus)
                .expect("answerable")
                .codec
                .payload_type,
            111
        );
        assert_eq!(
            negotiate_keeping(&offer.replace("opus", "speex"), CodecKind::Opus),
            Err(SdpError::NoCommonCodec)
        );
    }

    #[test]
    fn missing_pieces_are_typed_errors() {
        assert_eq!(
            negotiate("v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 0 RTP/AVP 0\r\n"),
            Err(SdpError::NoAudio)
        );
        assert_eq!(
            negotiate("v=0\r\nm=audio 4000 RTP/AVP 0\r\n"),
            Err(SdpError::NoConnection)
        );
        assert_eq!(
            negotiate("v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/SAVP 0\r\n"),
            Err(SdpError::NoAudio)
        );
        assert!(matches!(negotiate(""), Err(SdpError::Malformed(_))));
    }

    #[test]
    fn garbage_never_panics() {
        let samples = [
            "\u{0}\u{1}\u{2}",
            "v=0\r\nm=\r\nc=\r\na=rtpmap:\r\na=rtpmap:999 x\r\n",
            "v=0\r\nc=IN IP4 999.1.1.1\r\nm=audio 70000 RTP/AVP 0\r\n",
            "v=0\r\nc=IN\r\nm=audio x RTP/AVP 0\r\n",
            "v=0\r\nm=audio 4000/2 RTP/AVP 300 -1 0\r\nc=IN IP6 ::1\r\n",
            "héllo=wörld",
            "=",
            "v",
        ];
        for sample in samples {
            let _ = negotiate(sample);
        }
        // Every prefix of a valid offer is either answerable or an error.
        for end in 0..OFFER.len() {
            let _ = negotiate(&OFFER[..end]);
        }
        let ipv6 = negotiate("v=0\r\nm=audio 4000/2 RTP/AVP 300 -1 0\r\nc=IN IP6 ::1\r\n")
            .expect("ipv6 offer");
        assert_eq!(ipv6.remote_rtp, "[::1]:4000".parse().expect("addr"));
    }
}
