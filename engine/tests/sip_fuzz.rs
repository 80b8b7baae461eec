//! Bad input from the network never panics the telephony stack, and the
//! answers a peer relies on stay right.
//!
//! - Parser fuzz (deterministic: fixed seeds, a fixed number of iterations,
//!   so CI is repeatable): [`SipMessage::parse`], the SDP offer/answer
//!   ([`negotiate`]), [`Challenge::parse`] and [`parse_rtp`] get random
//!   bytes and structure-aware mutations of valid seeds. Whatever parses
//!   re-serializes into something that parses the same; the sans-IO UAS and
//!   UAC fed the same mutations only ever send valid SIP.
//! - The UDP server on 127.0.0.1: malformed datagrams get the answers of
//!   RFC 3261 (400 / 488 / 404 / 405, or silence for garbage), and it still
//!   answers OPTIONS afterwards.
//! - An INVITE flood that is never properly completed leaks no call state:
//!   every call the server tracked is released by the RFC 3261 timers.
//!
//! The PRNG is a splitmix64 written here (no fuzzing dependency).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use callingbox_engine::clock::Instant;
use callingbox_engine::transport::rtp::{RtpReceiver, RtpSender, parse_rtp};
use callingbox_engine::transport::sip::digest::{Algorithm, Challenge};
use callingbox_engine::transport::sip::message::{SipMessage, StartLine, name_addr_uri, response};
use callingbox_engine::transport::sip::sdp::{Answer, Direction, Offer, negotiate};
use callingbox_engine::transport::sip::uac::Dial;
use callingbox_engine::transport::sip::{
    Credentials, SipUac, SipUas, UacConfig, UacOutput, UasConfig, UasOutput,
};

/// splitmix64: small, fast, and the same sequence on every machine.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len).map(|_| self.byte()).collect()
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

// ---------------------------------------------------------------------------
// Seeds

const OFFER_SDP: &str = "v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.10\r\ns=-\r\n\
    c=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 49170 RTP/AVP 8 0 101\r\n\
    a=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n\
    a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n";

fn invite_with(call_id: &str, branch: &str, user: &str, body: &str) -> String {
    format!(
        "INVITE sip:{user}@127.0.0.1:5060 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5061;branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"Alice\" <sip:alice@127.0.0.1:5061>;tag=a1\r\n\
         To: <sip:{user}@127.0.0.1:5060>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:alice@127.0.0.1:5061>\r\n\
         Subject: a call\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn invite_seed() -> String {
    invite_with("fuzz-1@127.0.0.1", "z9hG4bK-inv1", "1000", OFFER_SDP)
}

fn ok_seed() -> String {
    let answer = "v=0\r\no=bob 1 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\n\
        t=0 0\r\nm=audio 3456 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
        a=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\n";
    format!(
        "SIP/2.0 200 OK\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-inv1;received=127.0.0.1;rport=5061\r\n\
         From: \"Alice\" <sip:alice@127.0.0.1:5061>;tag=a1\r\n\
         To: <sip:1000@127.0.0.1:5060>;tag=b2\r\n\
         Call-ID: fuzz-1@127.0.0.1\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:bob@192.0.2.20:5060>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{answer}",
        answer.len()
    )
}

const CHALLENGE_SEED: &str = "Digest realm=\"atlanta.example.com\", qop=\"auth,auth-int\", \
    nonce=\"84a4cc6f3082121f32b42a2187831a9e\", opaque=\"5ccc069c403ebaf9f0171e9517f40e41\", \
    algorithm=MD5, stale=FALSE";

fn unauthorized_seed() -> String {
    format!(
        "SIP/2.0 401 Unauthorized\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-inv1;rport=5061\r\n\
         From: \"Alice\" <sip:alice@127.0.0.1:5061>;tag=a1\r\n\
         To: <sip:1000@127.0.0.1:5060>;tag=b2\r\n\
         Call-ID: fuzz-1@127.0.0.1\r\n\
         CSeq: 1 INVITE\r\n\
         WWW-Authenticate: {CHALLENGE_SEED}\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

fn bye_seed() -> String {
    "BYE sip:alice@127.0.0.1:5061 SIP/2.0\r\n\
     Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-bye1\r\n\
     Max-Forwards: 70\r\n\
     From: <sip:1000@127.0.0.1:5060>;tag=b2\r\n\
     To: \"Alice\" <sip:alice@127.0.0.1:5061>;tag=a1\r\n\
     i: fuzz-1@127.0.0.1\r\n\
     CSeq: 2 BYE\r\n\
     l: 0\r\n\r\n"
        .to_owned()
}

fn sip_seeds() -> Vec<String> {
    vec![invite_seed(), ok_seed(), unauthorized_seed(), bye_seed()]
}

/// RTP v2 with padding, 2 CSRCs and a one-word header extension.
fn rtp_seed() -> Vec<u8> {
    let mut packet = vec![
        0xB2,
        0x80 | 8,
        0x12,
        0x34,
        0,
        0,
        0x0F,
        0xA0,
        0xDE,
        0xAD,
        0xBE,
        0xEF,
    ];
    packet.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]); // CSRCs
    packet.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x10, 0xAA, 0, 0]); // extension, 1 word
    packet.extend((0..160).map(|i| i as u8)); // payload
    packet.extend_from_slice(&[0, 0, 3]); // 3 bytes of padding
    packet
}

// ---------------------------------------------------------------------------
// Mutations

const CONTENT_LENGTHS: &[&str] = &[
    "0",
    "1",
    "-1",
    "-0",
    "+3",
    "abc",
    "",
    " 12 ",
    "0x10",
    "4294967296",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999",
    "1e3",
    "١٢",
    "5, 6",
];

const JUNK_LINES: &[&str] = &[
    "",
    " ",
    "\t folded",
    ":",
    ": no name",
    "No-Colon-Here",
    "Via:",
    "v: SIP/2.0/UDP [::1]:5060;branch=z9hG4bK-x;rport;received",
    "Call-ID:",
    "CSeq: 4294967296 INVITE",
    "CSeq: -1 INVITE",
    "CSeq: 1",
    "CSeq: INVITE 1",
    "From: <sip:a@b",
    "From: sip:a@b>;tag=",
    "To: <<<>>>;tag=;tag",
    "Contact: *",
    "Content-Type: application/sdp",
    "Max-Forwards: 0",
    "l: 99999",
    "Name With Space: x",
    "日本語: ヘッダー",
    "X-Long: é",
];

const START_LINES: &[&str] = &[
    "INVITE sip:1000@127.0.0.1 SIP/2.0",
    "INVITE sip:1000@127.0.0.1 SIP/2.1",
    "INVITE  sip:1000@127.0.0.1 SIP/2.0",
    "INVITE sip:1000@127.0.0.1",
    "INVITE 1000 SIP/2.0",
    "invite sip:1000@127.0.0.1 SIP/2.0",
    "OPTIONS sip:x SIP/2.0",
    "BYE sip: SIP/2.0",
    "ACK sip:@ SIP/2.0",
    "CANCEL sips:1000@[::1] SIP/2.0",
    "FOO sip:x@y SIP/2.0",
    "SIP/2.0 200 OK",
    "SIP/2.0 200",
    "SIP/2.0 99 Low",
    "SIP/2.0 700 High",
    "SIP/2.0 65536 Overflow",
    "SIP/2.0 -200 Negative",
    "SIP/2.0 abc Letters",
    "SIP/2.0 180 Ringing with a very long reason phrase",
    "SIP/2.0 401 Unauthorized",
    "SIP/2.0 é",
    "",
];

/// Bytes put inside a line: invalid UTF-8, multi-byte characters, NUL, BOM.
const INSERTS: &[&[u8]] = &[
    b"\xff",
    b"\xc3",
    b"\xe6\x97",
    "é".as_bytes(),
    "日本".as_bytes(),
    b"\x00",
    "\u{feff}".as_bytes(),
];

/// Continuation lines.
const FOLDS: &[&[u8]] = &[b" more\r", b"\t\r", b" \r", b"   x y\r"];

fn split_lines(text: &[u8]) -> Vec<Vec<u8>> {
    text.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
}

fn join_lines(lines: &[Vec<u8>]) -> Vec<u8> {
    lines.join(&b'\n')
}

/// Where the header section ends (the blank line), as a line index.
fn head_line_count(lines: &[Vec<u8>]) -> usize {
    lines
        .iter()
        .position(|line| line.is_empty() || line == b"\r")
        .unwrap_or(lines.len())
}

/// One structure-aware mutation of a SIP message.
fn mutate_sip(rng: &mut Rng, message: &mut Vec<u8>, seeds: &[String]) {
    let mut lines = split_lines(message);
    let head = head_line_count(&lines).max(1).min(lines.len());
    match rng.below(17) {
        0 => {
            // Flip a bit.
            if !message.is_empty() {
                let at = rng.below(message.len());
                message[at] ^= 1 << rng.below(8);
            }
            return;
        }
        1 => {
            // Any byte anywhere, non-UTF-8 included.
            if !message.is_empty() {
                let at = rng.below(message.len());
                message[at] = rng.byte();
            }
            return;
        }
        2 => {
            message.truncate(rng.below(message.len() + 1));
            return;
        }
        3 => {
            // Duplicate a header line.
            if head > 1 {
                let at = 1 + rng.below(head - 1);
                let line = lines[at].clone();
                lines.insert(at, line);
            }
        }
        4 => {
            // Remove a header line (mandatory ones included).
            if head > 1 {
                lines.remove(1 + rng.below(head - 1));
            }
        }
        5 => {
            // A wild Content-Length (first one, or a second one).
            let value = rng.pick(CONTENT_LENGTHS);
            let name = if rng.chance(2) { "Content-Length" } else { "l" };
            let line = format!("{name}: {value}\r").into_bytes();
            match lines[..head].iter().position(|line| {
                let lower = line.to_ascii_lowercase();
                lower.starts_with(b"content-length") || lower.starts_with(b"l:")
            }) {
                Some(at) if rng.chance(2) => lines[at] = line,
                _ => lines.insert(1 + rng.below(head), line),
            }
        }
        6 => {
            // CRLF -> LF everywhere, or LF -> CRLF, or bare CR.
            let text = String::from_utf8_lossy(message).into_owned();
            let text = match rng.below(3) {
                0 => text.replace("\r\n", "\n"),
                1 => text.replace('\n', "\r\n"),
                _ => text.replace("\r\n", "\r"),
            };
            *message = text.into_bytes();
            return;
        }
        7 => {
            // A very long header value (around and past the datagram limit).
            let len = *rng.pick(&[100, 1_000, 8_000, 16_000, 17_000]);
            let filler = *rng.pick(&[b'a', b' ', b';', b',', b'<', b'"', 0xC3]);
            let mut line = b"X-Long: ".to_vec();
            line.extend(std::iter::repeat_n(filler, len));
            line.push(b'\r');
            lines.insert(1 + rng.below(head), line);
        }
        8 => {
            // Non-UTF-8 or multi-byte characters inside a line.
            let at = rng.below(lines.len());
            let line = &mut lines[at];
            let insert = *rng.pick(INSERTS);
            let pos = rng.below(line.len() + 1);
            line.splice(pos..pos, insert.iter().copied());
        }
        9 => {
            // Header folding: a value continues on the next line.
            if head > 1 {
                let at = 1 + rng.below(head - 1);
                let line = &mut lines[at];
                match line.iter().position(|&b| b == b' ') {
                    Some(space) if rng.chance(2) => {
                        line.splice(space..space + 1, b"\r\n\t ".iter().copied());
                    }
                    _ => {
                        let fold = *rng.pick(FOLDS);
                        lines.insert(at + 1, fold.to_vec());
                    }
                }
            }
        }
        10 => {
            // A junk header line.
            let line = format!("{}\r", rng.pick(JUNK_LINES)).into_bytes();
            lines.insert(1 + rng.below(head), line);
        }
        11 => {
            // Another start line.
            lines[0] = format!("{}\r", rng.pick(START_LINES)).into_bytes();
        }
        12 => {
            // Splice a piece of another seed in.
            let other = rng.pick(seeds).as_bytes();
            let from = rng.below(other.len());
            let to = from + rng.below(other.len() - from + 1);
            let at = rng.below(message.len() + 1);
            message.splice(at..at, other[from..to].iter().copied());
            return;
        }
        13 => {
            // Cut the blank line that ends the headers.
            if head < lines.len() {
                lines.remove(head);
            }
        }
        14 => {
            // A compact form or an odd case for a header name.
            if head > 1 {
                let at = 1 + rng.below(head - 1);
                let line = &mut lines[at];
                if let Some(colon) = line.iter().position(|&b| b == b':') {
                    let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
                    let new: Vec<u8> = match name.as_str() {
                        "via" => b"v".to_vec(),
                        "call-id" => b"i".to_vec(),
                        "from" => b"f".to_vec(),
                        "to" => b"t".to_vec(),
                        "content-length" => b"L".to_vec(),
                        _ => name.to_ascii_uppercase().into_bytes(),
                    };
                    line.splice(..colon, new);
                    if rng.chance(2) {
                        line.splice(colon.min(line.len())..colon.min(line.len()), *b" \t");
                    }
                }
            }
        }
        15 => {
            // Leading CRLFs (keep-alives) or trailing garbage after the body.
            if rng.chance(2) {
                message.splice(0..0, b"\r\n\r\n".iter().copied());
            } else {
                message.extend(rng.bytes(32));
            }
            return;
        }
        _ => {
            // A mutated SDP body (Content-Length fixed or not).
            let body_start = message
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|at| at + 4)
                .unwrap_or(message.len());
            let mut body = message[body_start..].to_vec();
            if body.is_empty() {
                body = OFFER_SDP.as_bytes().to_vec();
            }
            mutate_sdp(rng, &mut body);
            message.truncate(body_start);
            message.extend(body);
            return;
        }
    }
    *message = join_lines(&lines);
}

const SDP_LINES: &[&str] = &[
    "m=audio 0 RTP/AVP 0",
    "m=audio 65535 RTP/AVP 0",
    "m=audio 65536 RTP/AVP 0",
    "m=audio -1 RTP/AVP 0",
    "m=audio abc RTP/AVP 0",
    "m=audio 5000/2 RTP/AVP 8",
    "m=audio 5000 RTP/SAVP 0",
    "m=audio 5000 RTP/AVP",
    "m=audio 5000 RTP/AVP 256 -1 x 18",
    "m=audio 5000 RTP/AVP 18",
    "m=video 5000 RTP/AVP 96",
    "m=",
    "m=audio",
    "c=IN IP4 999.1.1.1",
    "c=IN IP6 ::1",
    "c=IN IP4 224.2.1.1/127/3",
    "c=IN",
    "c=ATM NSAP x",
    "a=rtpmap:",
    "a=rtpmap:0",
    "a=rtpmap:0 ",
    "a=rtpmap:0 /",
    "a=rtpmap:0 PCMU/16000",
    "a=rtpmap:300 PCMU/8000",
    "a=rtpmap:18 PCMU/8000",
    "a=rtpmap:101 telephone-event/8000/1",
    "a=rtpmap:0 telephone-event/8000",
    "a=sendonly",
    "a=recvonly",
    "a=inactive",
    "v=1",
    "v=",
    "x",
    "=",
    "A=b",
    "a=é",
];

/// One mutation of an SDP body (bytes: the SIP body may be anything).
fn mutate_sdp(rng: &mut Rng, body: &mut Vec<u8>) {
    let mut lines = split_lines(body);
    match rng.below(8) {
        0 if !body.is_empty() => {
            let at = rng.below(body.len());
            body[at] ^= 1 << rng.below(8);
            return;
        }
        1 => {
            body.truncate(rng.below(body.len() + 1));
            return;
        }
        2 if !lines.is_empty() => {
            let at = rng.below(lines.len());
            let line = lines[at].clone();
            lines.insert(rng.below(lines.len() + 1), line);
        }
        3 if !lines.is_empty() => {
            lines.remove(rng.below(lines.len()));
        }
        4 if lines.len() > 1 => {
            let (a, b) = (rng.below(lines.len()), rng.below(lines.len()));
            lines.swap(a, b);
        }
        5 => {
            let at = rng.below(lines.len() + 1);
            lines.insert(at, format!("{}\r", rng.pick(SDP_LINES)).into_bytes());
        }
        6 if !lines.is_empty() => {
            let at = rng.below(lines.len());
            lines[at] = format!("{}\r", rng.pick(SDP_LINES)).into_bytes();
        }
        _ => {
            let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
            *body = text.into_bytes();
            return;
        }
    }
    *body = join_lines(&lines);
}

// ---------------------------------------------------------------------------
// Checks

/// A parsed message written back as text (start line, headers as parsed,
/// the body as kept).
fn serialize(message: &SipMessage) -> Vec<u8> {
    let mut out = match &message.start {
        StartLine::Request { method, uri } => format!("{method} {uri} SIP/2.0\r\n"),
        StartLine::Response { code, reason } => format!("SIP/2.0 {code} {reason}\r\n"),
    };
    for (name, value) in &message.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(&message.body);
    out.into_bytes()
}

fn peer() -> SocketAddr {
    "127.0.0.1:5061".parse().expect("addr")
}

/// What every parsed message must satisfy; returns it for more checks.
fn check_sip(bytes: &[u8]) -> Option<SipMessage> {
    let message = SipMessage::parse(bytes).ok()?;
    // Every accessor copes.
    let _ = (
        message.call_id(),
        message.cseq(),
        message.branch(),
        message.from_tag(),
        message.to_tag(),
        message.request_user(),
        message.missing_mandatory(),
        message.contact_uri(),
        message.headers_named("via").count(),
    );
    // The body is what Content-Length said, when it said something.
    if let Some(length) = message.header("content-length") {
        assert_eq!(
            length.parse::<usize>().ok(),
            Some(message.body.len()),
            "{bytes:?}"
        );
    }
    // Written back, it parses into the same message.
    let again = serialize(&message);
    assert_eq!(
        SipMessage::parse(&again).as_ref(),
        Ok(&message),
        "re-serialized {:?}\nfrom {:?}",
        String::from_utf8_lossy(&again),
        String::from_utf8_lossy(bytes)
    );
    // What we would answer a request is valid SIP with the same dialog ids.
    if message.method().is_some() {
        for code in [100, 400, 488] {
            let text = response(
                &message,
                code,
                Some("tag9"),
                peer(),
                &[("Allow", "INVITE")],
                Some(("application/sdp", "v=0\r\n")),
            );
            let reply = SipMessage::parse(text.as_bytes())
                .unwrap_or_else(|error| panic!("our {code} does not parse ({error}): {text:?}"));
            assert_eq!(reply.status(), Some(code));
            assert_eq!(reply.call_id(), message.call_id(), "{text:?}");
            assert_eq!(reply.body, "v=0\r\n");
        }
    }
    Some(message)
}

fn answer_direction(offered: Direction) -> Direction {
    match offered {
        Direction::SendOnly => Direction::RecvOnly,
        Direction::RecvOnly => Direction::SendOnly,
        other => other,
    }
}

/// An offer that negotiates has an answer that negotiates back the same.
fn check_sdp(text: &str) -> bool {
    let Ok(negotiated) = negotiate(text) else {
        return false;
    };
    assert_eq!(negotiated.ptime, 20);
    let local_rtp: SocketAddr = "192.0.2.99:40002".parse().expect("addr");
    let answer = Answer {
        negotiated,
        local_rtp,
        session_id: 7,
    }
    .to_sdp();
    let back = negotiate(&answer)
        .unwrap_or_else(|error| panic!("our answer {answer:?} to {text:?}: {error}"));
    assert_eq!(back.remote_rtp, local_rtp);
    assert_eq!(back.codec, negotiated.codec, "{text:?}");
    assert_eq!(back.telephone_event, negotiated.telephone_event, "{text:?}");
    assert_eq!(back.direction, answer_direction(negotiated.direction));
    true
}

/// A challenge that parses is answered, and the answer carries it back.
fn check_challenge(text: &str) -> bool {
    let Ok(challenge) = Challenge::parse(text) else {
        return false;
    };
    let credentials = Credentials {
        username: "us\"er\\".into(),
        password: "secret".into(),
    };
    let header = challenge.answer(&credentials, "INVITE", "sip:1000@x", "c\"n", 1);
    // The answer has the same auth-param syntax: it reads back.
    let back = Challenge::parse(&header)
        .unwrap_or_else(|error| panic!("our answer {header:?} to {text:?}: {error}"));
    assert_eq!(back.realm, challenge.realm, "{text:?} -> {header:?}");
    assert_eq!(back.nonce, challenge.nonce, "{text:?} -> {header:?}");
    assert_eq!(back.opaque, challenge.opaque, "{text:?} -> {header:?}");
    assert_eq!(back.algorithm, challenge.algorithm);
    assert_eq!(back.qop_auth, challenge.qop_auth);
    true
}

/// A packet that parses is in bounds and written again reads the same.
fn check_rtp(datagram: &[u8]) -> bool {
    let Ok(packet) = parse_rtp(datagram) else {
        return false;
    };
    assert!(packet.payload.len() + 12 <= datagram.len());
    let mut sender = RtpSender::new(
        packet.ssrc,
        packet.payload_type,
        packet.sequence,
        packet.timestamp,
    );
    let mut out = vec![0u8; datagram.len()];
    let length = sender
        .write(Instant::ZERO, packet.marker, packet.payload, &mut out)
        .expect("fits");
    assert_eq!(parse_rtp(&out[..length]), Ok(packet), "{datagram:?}");
    true
}

// ---------------------------------------------------------------------------
// Parser fuzz

const SIP_ITERATIONS: usize = 20_000;
const RANDOM_ITERATIONS: usize = 5_000;

#[test]
fn sip_messages_never_panic_and_round_trip() {
    let seeds = sip_seeds();
    let mut parsed = 0;
    // Every truncation of every seed.
    for seed in &seeds {
        for end in 0..=seed.len() {
            parsed += usize::from(check_sip(&seed.as_bytes()[..end]).is_some());
        }
    }
    let mut rng = Rng::new(0x5EED_0001);
    for _ in 0..RANDOM_ITERATIONS {
        let bytes = rng.bytes(600);
        parsed += usize::from(check_sip(&bytes).is_some());
        // Random printable text behind a valid start line.
        let mut text = b"OPTIONS sip:x@y SIP/2.0\r\n".to_vec();
        const ALPHABET: &[u8] = b" :;\r\n\tabcVia=,<>\"";
        text.extend(
            rng.bytes(200)
                .iter()
                .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()]),
        );
        parsed += usize::from(check_sip(&text).is_some());
    }
    for _ in 0..SIP_ITERATIONS {
        let mut message = rng.pick(&seeds).clone().into_bytes();
        for _ in 0..1 + rng.below(4) {
            mutate_sip(&mut rng, &mut message, &seeds);
        }
        parsed += usize::from(check_sip(&message).is_some());
    }
    // The mutations are not all rejected at the start line: most keep a message.
    assert!(parsed > SIP_ITERATIONS / 3, "only {parsed} parsed");
}

#[test]
fn regression_cases_parse_or_fail_cleanly() {
    let cases: &[&[u8]] = &[
        // A folded continuation of an empty value reads back the same.
        b"OPTIONS sip:x@y SIP/2.0\r\nSubject:\r\n more\r\nl: 0\r\n\r\n",
        b"OPTIONS sip:x@y SIP/2.0\r\nSubject: a\r\n \r\nl: 0\r\n\r\n",
        // Content-Length inside a multi-byte character.
        "OPTIONS sip:x@y SIP/2.0\r\nl: 1\r\n\r\né".as_bytes(),
        b"OPTIONS sip:x@y SIP/2.0\r\nl: -1\r\n\r\n",
        b"OPTIONS sip:x@y SIP/2.0\r\nl: 18446744073709551616\r\n\r\n",
        b"\r\n\r\n\r\n",
        b"SIP/2.0 200\r\n\r\n",
    ];
    for case in cases {
        let _ = check_sip(case);
    }
    assert_eq!(
        SipMessage::parse(cases[0]).map(|m| m.header("subject").map(str::to_owned)),
        Ok(Some("more".to_owned()))
    );
    // A Contact that cannot be a Request-URI is not the remote target: our
    // BYE (UAS) or ACK (UAC) went out as `BYE sip:a@12DP 127.0.0.1 ...` / `ACK b2`.
    for contact in [
        "<sip:alice@12DP 127.0.0.1:5061>",
        "tag=b2",
        "<>",
        ":x",
        "<sip:\u{1}@h>",
    ] {
        let text = bye_seed().replace("l: 0", &format!("Contact: {contact}\r\nl: 0"));
        let message = SipMessage::parse(text.as_bytes()).expect("parses");
        assert_eq!(message.contact_uri(), None, "{contact}");
    }
    assert_eq!(name_addr_uri("\"A\" <sips:a@b>;tag=1"), Some("sips:a@b"));
    let mut config = UasConfig::new("127.0.0.1:5060".parse().expect("addr"));
    config.numbers = vec!["1000".into()];
    let mut uas = SipUas::new(config, 3);
    let invite = invite_seed().replace(
        "Contact: <sip:alice@127.0.0.1:5061>",
        "Contact: <sip:alice@12DP 127.0.0.1:5061>",
    );
    uas.handle_datagram(Instant::ZERO, peer(), invite.as_bytes());
    let mut accept = false;
    drain_uas(&mut uas, Instant::ZERO, &mut accept);
    // No ACK: after 64*T1 the UAS hangs up with a BYE to the From URI.
    uas.handle_timeout(Instant::from_millis(32_000));
    let sent = drain_uas(&mut uas, Instant::from_millis(32_000), &mut accept);
    let bye = sent
        .iter()
        .find(|m| m.method() == Some("BYE"))
        .expect("a BYE");
    assert_eq!(
        bye.start,
        StartLine::Request {
            method: "BYE".into(),
            uri: "sip:alice@127.0.0.1:5061".into()
        }
    );
}

#[test]
fn sdp_offers_never_panic_and_answers_negotiate_back() {
    let local: SocketAddr = "127.0.0.1:40000".parse().expect("addr");
    let seeds: Vec<String> = vec![
        OFFER_SDP.to_owned(),
        Offer {
            local_rtp: local,
            session_id: 1,
        }
        .to_sdp(),
        Offer {
            local_rtp: "[::1]:40000".parse().expect("addr"),
            session_id: 2,
        }
        .to_sdp(),
    ];
    let mut answered = 0;
    for seed in &seeds {
        assert!(check_sdp(seed), "{seed}");
        for end in 0..=seed.len() {
            let _ = check_sdp(&String::from_utf8_lossy(&seed.as_bytes()[..end]));
        }
    }
    let mut rng = Rng::new(0x5EED_0002);
    for _ in 0..RANDOM_ITERATIONS {
        let _ = check_sdp(&String::from_utf8_lossy(&rng.bytes(300)));
    }
    for _ in 0..SIP_ITERATIONS {
        let mut body = rng.pick(&seeds).clone().into_bytes();
        for _ in 0..1 + rng.below(4) {
            mutate_sdp(&mut rng, &mut body);
        }
        answered += usize::from(check_sdp(&String::from_utf8_lossy(&body)));
    }
    assert!(answered > SIP_ITERATIONS / 10, "only {answered} answered");
}

const CHALLENGE_PIECES: &[&str] = &[
    "\"",
    "\\",
    "\\\"",
    ",",
    ",,,",
    "=",
    "==",
    " ",
    "\t",
    "realm=",
    "nonce=\"",
    "qop=auth-int",
    "qop=\"\"",
    "algorithm=SHA-256",
    "algorithm=md5-SESS",
    "stale=true",
    "opaque",
    "é",
    "日本",
    "\r\n",
];

#[test]
fn digest_challenges_never_panic_and_answers_read_back() {
    let mut answered = 0;
    for end in 0..=CHALLENGE_SEED.len() {
        if let Some(text) = CHALLENGE_SEED.get(..end) {
            let _ = check_challenge(text);
        }
    }
    let mut rng = Rng::new(0x5EED_0003);
    for _ in 0..RANDOM_ITERATIONS {
        let _ = check_challenge(&String::from_utf8_lossy(&rng.bytes(200)));
    }
    for _ in 0..SIP_ITERATIONS {
        let mut text = CHALLENGE_SEED.to_owned();
        for _ in 0..1 + rng.below(4) {
            let mut chars: Vec<char> = text.chars().collect();
            match rng.below(4) {
                0 => {
                    let at = rng.below(chars.len() + 1);
                    let piece: Vec<char> = rng.pick(CHALLENGE_PIECES).chars().collect();
                    chars.splice(at..at, piece);
                }
                1 if !chars.is_empty() => {
                    let at = rng.below(chars.len());
                    let to = (at + rng.below(8)).min(chars.len());
                    chars.drain(at..to);
                }
                2 => chars.truncate(rng.below(chars.len() + 1)),
                _ if !chars.is_empty() => {
                    let at = rng.below(chars.len());
                    chars[at] = char::from(rng.byte() & 0x7F);
                }
                _ => {}
            }
            text = chars.into_iter().collect();
        }
        answered += usize::from(check_challenge(&text));
    }
    assert!(answered > SIP_ITERATIONS / 10, "only {answered} answered");
    // MD5-sess in any case is still MD5-sess.
    let sess = Challenge::parse("Digest realm=r, nonce=n, algorithm=md5-SESS").expect("parses");
    assert_eq!(sess.algorithm, Algorithm::Md5Sess);
}

#[test]
fn rtp_packets_never_panic_and_round_trip() {
    let seed = rtp_seed();
    let parsed = parse_rtp(&seed).expect("the seed parses");
    assert_eq!(parsed.payload.len(), 160);
    for end in 0..=seed.len() {
        let _ = check_rtp(&seed[..end]);
    }
    let mut rng = Rng::new(0x5EED_0004);
    let mut receiver = RtpReceiver::new(0, Some(101));
    let mut ok = 0;
    for round in 0..50_000 {
        let bytes = if round % 5 == 0 {
            let mut bytes = rng.bytes(64);
            if let Some(first) = bytes.first_mut() {
                *first = 0x80 | (*first & 0x3F); // version 2: reach past the first check
            }
            bytes
        } else {
            let mut bytes = seed.clone();
            for _ in 0..1 + rng.below(3) {
                match rng.below(6) {
                    0 => {
                        let at = rng.below(bytes.len());
                        bytes[at] ^= 1 << rng.below(8);
                    }
                    1 => bytes[0] = (bytes[0] & 0xF0) | rng.below(16) as u8, // CSRC count
                    2 if bytes.len() > 23 => {
                        // The extension's length in words.
                        let words = *rng.pick(&[0u16, 1, 2, 40, 0x7FFF, 0xFFFF]);
                        bytes[22..24].copy_from_slice(&words.to_be_bytes());
                    }
                    3 if !bytes.is_empty() => {
                        let last = bytes.len() - 1;
                        bytes[last] = *rng.pick(&[0u8, 1, 3, 160, 170, 171, 255]);
                    }
                    4 => bytes.truncate(rng.below(bytes.len() + 1)),
                    _ => bytes[0] ^= 0x30, // padding / extension bits
                }
                if bytes.is_empty() {
                    break;
                }
            }
            bytes
        };
        ok += usize::from(check_rtp(&bytes));
        let _ = receiver.receive(peer(), &bytes);
    }
    assert!(ok > 5_000, "only {ok} parsed");
}

// ---------------------------------------------------------------------------
// The sans-IO UAS and UAC on the same mutations

/// Drains a UAS: every message it sends parses; offered calls are accepted
/// or rejected in turn.
fn drain_uas(uas: &mut SipUas, now: Instant, accept: &mut bool) -> Vec<SipMessage> {
    let mut sent = Vec::new();
    while let Some(output) = uas.poll_output() {
        match output {
            UasOutput::Transmit { bytes, .. } => {
                sent.push(SipMessage::parse(&bytes).unwrap_or_else(|error| {
                    panic!("the UAS sent invalid SIP ({error}): {bytes:?}")
                }))
            }
            UasOutput::Incoming(call) => {
                *accept = !*accept;
                if *accept {
                    let _ = uas.accept(now, call.call, "127.0.0.1:40000".parse().expect("addr"));
                } else {
                    let _ = uas.reject(now, call.call, 486);
                }
            }
            UasOutput::Answered(_)
            | UasOutput::Ended { .. }
            | UasOutput::MediaChanged { .. }
            | UasOutput::TransferEnded { .. } => {}
        }
    }
    sent
}

#[test]
fn the_uas_sends_only_valid_sip_whatever_it_receives() {
    let seeds = sip_seeds();
    let mut config = UasConfig::new("127.0.0.1:5060".parse().expect("addr"));
    config.numbers = vec!["1000".into()];
    let mut uas = SipUas::new(config, 7);
    let mut rng = Rng::new(0x5EED_0005);
    let mut now_ms = 0u64;
    let mut accept = false;
    let mut answers = 0;
    for round in 0..SIP_ITERATIONS / 2 {
        // Distinct Call-IDs and branches, so new calls keep being made.
        let mut message = rng
            .pick(&seeds)
            .replace("fuzz-1@", &format!("fuzz-{round}@"));
        message = message.replace("-inv1", &format!("-inv{round}"));
        let mut bytes = message.into_bytes();
        for _ in 0..rng.below(4) {
            mutate_sip(&mut rng, &mut bytes, &seeds);
        }
        now_ms += rng.below(300) as u64;
        let now = Instant::from_millis(now_ms);
        uas.handle_datagram(now, peer(), &bytes);
        answers += drain_uas(&mut uas, now, &mut accept).len();
        if let Some(deadline) = uas.next_deadline().filter(|at| *at <= now) {
            uas.handle_timeout(deadline);
            drain_uas(&mut uas, now, &mut accept);
        }
    }
    assert!(answers > SIP_ITERATIONS / 8, "only {answers} answers");
    // Every call is released by the timers in the end.
    for step in 1..=400 {
        let now = Instant::from_millis(now_ms + step * 500);
        uas.handle_timeout(now);
        for sent in drain_uas(&mut uas, now, &mut accept) {
            // Our BYEs are answered, so hung-up calls go too.
            if sent.method() == Some("BYE") {
                let ok = response(&sent, 200, None, peer(), &[], None);
                uas.handle_datagram(now, peer(), ok.as_bytes());
            }
        }
    }
    assert_eq!(uas.tracked_calls(), 0);
    assert_eq!(uas.next_deadline(), None);
}

#[test]
fn the_uac_survives_mutated_answers_and_challenges() {
    let mut rng = Rng::new(0x5EED_0006);
    let templates = [
        ok_seed(),
        unauthorized_seed(),
        ok_seed().replace("200 OK", "183 Session Progress"),
    ];
    let target: SocketAddr = "127.0.0.1:5070".parse().expect("addr");
    let mut uac = SipUac::new(UacConfig::new(peer()), 11);
    let mut now_ms = 0u64;
    let mut seen_calls = HashSet::new();
    // Fewer rounds: every call dialed stays tracked until its timers end.
    for _ in 0..SIP_ITERATIONS / 20 {
        now_ms += 10;
        let now = Instant::from_millis(now_ms);
        let call = uac.dial(
            now,
            Dial {
                target,
                request_uri: "sip:1000@127.0.0.1:5070".into(),
                from_uri: "sip:alice@127.0.0.1:5061".into(),
                local_rtp: "127.0.0.1:40002".parse().expect("addr"),
                credentials: Some(Credentials {
                    username: "alice".into(),
                    password: "pw".into(),
                }),
                ring_timeout: Duration::from_secs(30),
                tcp: false,
            },
        );
        seen_calls.insert(call);
        // The INVITE's ids go into the answer, so mutations act on a match.
        let mut invite = None;
        while let Some(output) = uac.poll_output() {
            if let UacOutput::Transmit { bytes, .. } = output {
                invite = SipMessage::parse(&bytes).ok();
            }
        }
        let invite = invite.expect("the UAC sent its INVITE");
        let mut answer = rng
            .pick(&templates)
            .replace("fuzz-1@127.0.0.1", invite.call_id().expect("call-id"))
            .replace("z9hG4bK-inv1", invite.branch().expect("branch"))
            .replace(
                "tag=a1",
                &format!("tag={}", invite.from_tag().expect("tag")),
            )
            .into_bytes();
        let seeds = [String::from_utf8_lossy(&answer).into_owned()];
        for _ in 0..rng.below(4) {
            mutate_sip(&mut rng, &mut answer, &seeds);
        }
        if let Ok(message) = SipMessage::parse(&answer) {
            uac.handle_message(now, target, &message);
        }
        while let Some(output) = uac.poll_output() {
            if let UacOutput::Transmit { bytes, .. } = output {
                SipMessage::parse(&bytes).unwrap_or_else(|error| {
                    panic!("the UAC sent invalid SIP ({error}): {bytes:?}")
                });
            }
        }
        let _ = uac.hang_up(now, call);
        uac.handle_timeout(now);
        while uac.poll_output().is_some() {}
    }
    // Timers release everything.
    for step in 1..=200 {
        uac.handle_timeout(Instant::from_millis(now_ms + step * 1_000));
        while uac.poll_output().is_some() {}
    }
    assert_eq!(uac.tracked_calls(), 0, "{} calls dialed", seen_calls.len());
}

// ---------------------------------------------------------------------------
// Against the UDP server

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use callingbox_engine::session::MediaWorker;
use callingbox_engine::transport::sip::{
    IncomingCall, SipCallSetup, SipConfig, SipEnd, SipEvent, SipLoad, SipServer,
};
use callingbox_engine::transport::spawn_worker;
use callingbox_engine::vad::{ModelError, ModelFile, VadBatch};
use common::scripted_call::pcmu_media;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

struct Server {
    sip: SocketAddr,
    load: SipLoad,
    events: mpsc::UnboundedReceiver<SipEvent>,
    /// The cancel token of every call the factory opened.
    opened: Arc<Mutex<Vec<CancellationToken>>>,
}

/// A server on 127.0.0.1 answering number 1000; calls carry no agent (the
/// SIP layer is under test), so opening one is cheap.
async fn start_server(rtp_ports: std::ops::RangeInclusive<u16>, answer_after: Duration) -> Server {
    let (events_tx, events) = mpsc::unbounded_channel();
    let opened = Arc::new(Mutex::new(Vec::new()));
    let made = Arc::clone(&opened);
    let factory = move |_call: &IncomingCall| {
        let cancel = CancellationToken::new();
        made.lock().expect("lock").push(cancel.clone());
        Ok(SipCallSetup {
            media: pcmu_media(),
            link: None,
            epoch: std::time::Instant::now(),
            events: Some(events_tx.clone()),
            cancel,
            tap: None,
        })
    };
    let missing = ModelError::NotFound {
        file: ModelFile::SileroVad,
        tried: std::path::PathBuf::from("(not loaded on purpose)"),
    };
    // Room for the whole flood: past the worker's capacity INVITEs get 503
    // (sip_sipp tests that), and the flood is about state, not capacity.
    let vad = VadBatch::from_load_result(Err(missing), 2 * FLOOD_CALLS);
    let (worker, _task) = spawn_worker(MediaWorker::new(vad, None));
    let mut config = SipConfig::new("127.0.0.1:0".parse().expect("addr"));
    config.rtp_ports = rtp_ports;
    config.numbers = vec!["1000".into()];
    config.answer_after = answer_after;
    let server = SipServer::bind(config, worker, factory)
        .await
        .expect("bind SIP");
    let sip = server.local_addr();
    let load = server.load();
    tokio::spawn(server.run());
    Server {
        sip,
        load,
        events,
        opened,
    }
}

/// A SIP peer socket on 127.0.0.1.
struct Peer {
    socket: UdpSocket,
    server: SocketAddr,
}

impl Peer {
    async fn new(server: SocketAddr) -> Peer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        Peer { socket, server }
    }

    fn addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("addr")
    }

    async fn send(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.server).await.expect("send");
    }

    /// The next message from the server within `wait`; whatever the server
    /// sends must be valid SIP.
    async fn recv(&self, wait: Duration) -> Option<SipMessage> {
        let mut buffer = vec![0u8; 65_536];
        let (length, from) = tokio::time::timeout(wait, self.socket.recv_from(&mut buffer))
            .await
            .ok()?
            .expect("recv");
        assert_eq!(from, self.server);
        let bytes = &buffer[..length];
        Some(SipMessage::parse(bytes).unwrap_or_else(|error| {
            panic!(
                "the server sent invalid SIP ({error}): {:?}",
                String::from_utf8_lossy(bytes)
            )
        }))
    }

    /// Waits for a response with `status` (skipping provisional ones).
    async fn expect_status(&self, status: u16) -> SipMessage {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let message = self
                .recv(left)
                .await
                .unwrap_or_else(|| panic!("no {status} came"));
            match message.status() {
                Some(code) if code == status => return message,
                Some(code) if code < 200 => {}
                other => panic!("expected {status}, got {other:?}: {message:?}"),
            }
        }
    }

    /// Nothing comes back within `wait`.
    async fn expect_silence(&self, wait: Duration, what: &str) {
        if let Some(message) = self.recv(wait).await {
            panic!("{what}: expected no answer, got {message:?}");
        }
    }

    /// An OPTIONS gets its 200; returns how long it took.
    async fn ping(&self, n: usize) -> Duration {
        let started = std::time::Instant::now();
        let options = request(
            &Req::new(
                "OPTIONS",
                &format!("ping-{n}"),
                &format!("z9hG4bK-ping-{n}"),
            ),
            self.addr(),
        );
        self.send(options.as_bytes()).await;
        let ok = self.expect_status(200).await;
        assert_eq!(ok.call_id(), Some(format!("ping-{n}").as_str()));
        started.elapsed()
    }
}

/// What a request is made of.
struct Req<'a> {
    method: &'a str,
    call_id: &'a str,
    branch: &'a str,
    from_tag: &'a str,
    to_tag: Option<&'a str>,
    cseq: u32,
    body: &'a str,
    user: &'a str,
}

impl<'a> Req<'a> {
    fn new(method: &'a str, call_id: &'a str, branch: &'a str) -> Self {
        Req {
            method,
            call_id,
            branch,
            from_tag: "peer",
            to_tag: None,
            cseq: 1,
            body: "",
            user: "1000",
        }
    }
}

/// A request from `peer`: every mandatory header, Content-Length right.
fn request(req: &Req<'_>, peer: SocketAddr) -> String {
    let to_tag = req
        .to_tag
        .map(|tag| format!(";tag={tag}"))
        .unwrap_or_default();
    let content_type = if req.body.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    format!(
        "{method} sip:{user}@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {peer};branch={branch};rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:peer@{peer}>;tag={from_tag}\r\n\
         To: <sip:{user}@127.0.0.1>{to_tag}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} {method}\r\n\
         Contact: <sip:peer@{peer}>\r\n\
         {content_type}Content-Length: {length}\r\n\r\n{body}",
        method = req.method,
        user = req.user,
        branch = req.branch,
        from_tag = req.from_tag,
        call_id = req.call_id,
        cseq = req.cseq,
        length = req.body.len(),
        body = req.body,
    )
}

/// `text` without its header line starting with `name:`.
fn without_header(text: &str, name: &str) -> String {
    text.split("\r\n")
        .filter(|line| !line.starts_with(&format!("{name}:")))
        .collect::<Vec<_>>()
        .join("\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_datagrams_get_the_answers_peers_rely_on() {
    let server = start_server(45_000..=45_099, Duration::ZERO).await;
    let fresh = || Peer::new(server.sip);
    let quiet = Duration::from_millis(300);

    // Garbage, keep-alives, stray responses, non-UTF-8: dropped, no answer.
    let peer = fresh().await;
    let mut rng = Rng::new(0x5EED_0007);
    for _ in 0..50 {
        peer.send(&rng.bytes(1_400)).await;
    }
    for junk in [
        &b""[..],
        b"\r\n\r\n",
        b"\xff\xfe\xfd INVITE",
        b"hello world\r\n\r\n",
        ok_seed().as_bytes(),
        unauthorized_seed().as_bytes(),
    ] {
        peer.send(junk).await;
    }
    peer.expect_silence(quiet, "garbage").await;

    let offer = OFFER_SDP;
    let invite = |peer: &Peer, call_id: &str| {
        let mut req = Req::new("INVITE", call_id, "z9hG4bK-bad");
        req.body = offer;
        request(&req, peer.addr())
    };

    // A truncated INVITE (the datagram ends inside the headers), no Via
    // (nowhere to answer): dropped.
    let peer = fresh().await;
    let whole = invite(&peer, "truncated");
    let head_end = whole.find("\r\n\r\n").expect("a head");
    for cut in [10, head_end / 2, head_end + 2] {
        peer.send(&whole.as_bytes()[..cut]).await;
    }
    peer.send(without_header(&whole, "Via").as_bytes()).await;
    peer.expect_silence(quiet, "truncated headers / no Via")
        .await;
    // The datagram ends inside the body, or Content-Length is past the
    // body, negative, not a number, overflowing: 400 (RFC 3261, 18.3).
    let cut_body = whole[..whole.len() - 10].to_owned();
    for length in ["", "99999", "-1", "abc", "18446744073709551616"] {
        let peer = fresh().await;
        let text = if length.is_empty() {
            cut_body.clone()
        } else {
            whole.replace(
                &format!("Content-Length: {}", offer.len()),
                &format!("Content-Length: {length}"),
            )
        };
        peer.send(text.as_bytes()).await;
        let bad = peer.expect_status(400).await;
        assert!(
            matches!(&bad.start, StartLine::Response { reason, .. } if reason == "Bad Content-Length"),
            "{length:?}: {bad:?}"
        );
        assert_eq!(bad.call_id(), Some("truncated"));
        peer.expect_silence(quiet, length).await;
    }

    // Enough to answer but a mandatory header missing: 400 naming it.
    for (header, reason) in [
        ("Call-ID", "Missing Call-ID"),
        ("CSeq", "Missing CSeq"),
        ("From", "Missing From"),
        ("To", "Missing To"),
    ] {
        let peer = fresh().await;
        let text = without_header(&invite(&peer, &format!("no-{header}")), header);
        peer.send(text.as_bytes()).await;
        let bad = peer.expect_status(400).await;
        assert!(
            matches!(&bad.start, StartLine::Response { reason: r, .. } if r == reason),
            "{bad:?}"
        );
        assert!(bad.branch().is_some(), "answered on the request's Via");
        peer.expect_silence(quiet, header).await;
    }
    // A CSeq whose method is not the request's.
    let peer = fresh().await;
    let text = invite(&peer, "cseq-mismatch").replace("CSeq: 1 INVITE", "CSeq: 1 BYE");
    peer.send(text.as_bytes()).await;
    peer.expect_status(400).await;

    // No common codec (G.729 only), no audio, no offer at all: 488.
    for (name, body) in [
        (
            "g729",
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio 5000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n",
        ),
        (
            "pcmu-16k",
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio 5000 RTP/AVP 96\r\na=rtpmap:96 PCMU/16000\r\n",
        ),
        (
            "video",
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=video 5000 RTP/AVP 96\r\n",
        ),
        ("late-offer", ""),
    ] {
        let peer = fresh().await;
        let mut req = Req::new("INVITE", name, "z9hG4bK-codec");
        req.body = body;
        peer.send(request(&req, peer.addr()).as_bytes()).await;
        let refused = peer.expect_status(488).await;
        assert_eq!(refused.call_id(), Some(name));
        assert!(refused.to_tag().is_some(), "a final answer has a To tag");
    }
    // An SDP that is not SDP: 400. An unknown number: 404. A method we do
    // not know: 405.
    let peer = fresh().await;
    let mut req = Req::new("INVITE", "not-sdp", "z9hG4bK-notsdp");
    req.body = "this is not SDP\r\n";
    peer.send(request(&req, peer.addr()).as_bytes()).await;
    peer.expect_status(400).await;
    let peer = fresh().await;
    let mut req = Req::new("INVITE", "unknown-number", "z9hG4bK-404");
    req.body = offer;
    req.user = "9999";
    peer.send(request(&req, peer.addr()).as_bytes()).await;
    peer.expect_status(404).await;
    let peer = fresh().await;
    let req = Req::new("FOO", "foo", "z9hG4bK-foo");
    peer.send(request(&req, peer.addr()).as_bytes()).await;
    peer.expect_status(405).await;

    // Mutated requests by the hundred: whatever comes back is valid SIP
    // (checked by `recv`), nothing comes back for what is not SIP.
    let peer = fresh().await;
    let seeds = vec![
        invite(&peer, "mutant"),
        request(&Req::new("OPTIONS", "mutant-o", "z9hG4bK-mo"), peer.addr()),
        request(&Req::new("BYE", "mutant-b", "z9hG4bK-mb"), peer.addr()),
    ];
    let mut answers = 0;
    for round in 0..300 {
        let seed = rng
            .pick(&seeds)
            .replace("mutant", &format!("mutant-{round}"));
        let mut bytes = seed.into_bytes();
        for _ in 0..1 + rng.below(3) {
            mutate_sip(&mut rng, &mut bytes, &seeds);
        }
        bytes.truncate(60_000);
        peer.send(&bytes).await;
        while peer.recv(Duration::from_millis(2)).await.is_some() {
            answers += 1;
        }
    }
    while peer.recv(quiet).await.is_some() {
        answers += 1;
    }
    assert!(answers > 50, "only {answers} answers to 300 mutants");

    // After all of that the server still answers.
    let peer = fresh().await;
    let took = peer.ping(1).await;
    assert!(took < Duration::from_secs(1), "OPTIONS took {took:?}");
    drop(server.events);
}

/// The flood's view of one call, from the peer's side.
#[derive(Debug, Default)]
struct FloodCall {
    /// Statuses received for the INVITE.
    invite_statuses: Vec<u16>,
    /// The To tag of the server's answer.
    to_tag: Option<String>,
    /// Statuses received for the CANCEL / BYE.
    other_statuses: Vec<(String, u16)>,
    /// The server's BYE came (after its ACK timeout), answered 481.
    server_bye: bool,
}

const FLOOD_CALLS: usize = 200;
const FLOOD_BATCH: usize = 20;

/// What the attacker sees of every call, and its answers to the server's BYEs.
struct Flood {
    peer: Peer,
    calls: HashMap<String, FloodCall>,
    unknown_bye_481: usize,
}

impl Flood {
    fn call_id(i: usize) -> String {
        format!("flood-{i}")
    }

    fn invite(&self, i: usize) -> String {
        let (call_id, branch) = (Self::call_id(i), format!("z9hG4bK-flood-{i}"));
        let mut req = Req::new("INVITE", &call_id, &branch);
        req.body = OFFER_SDP;
        request(&req, self.peer.addr())
    }

    fn in_transaction(&self, i: usize, method: &str) -> String {
        let (call_id, branch) = (Self::call_id(i), format!("z9hG4bK-flood-{i}"));
        let mut req = Req::new(method, &call_id, &branch);
        if method == "ACK" {
            req.to_tag = self.calls[&call_id].to_tag.as_deref();
        }
        request(&req, self.peer.addr())
    }

    fn bye(&self, i: usize) -> String {
        let (call_id, branch) = (Self::call_id(i), format!("z9hG4bK-flood-bye-{i}"));
        let mut req = Req::new("BYE", &call_id, &branch);
        req.to_tag = self.calls[&call_id].to_tag.as_deref();
        req.cseq = 2;
        request(&req, self.peer.addr())
    }

    /// Reads what the server sends for up to `wait` (until `done` holds).
    async fn pump(&mut self, wait: Duration, done: impl Fn(&Flood) -> bool) {
        let deadline = tokio::time::Instant::now() + wait;
        while !done(self) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            let Some(message) = self.peer.recv(left).await else {
                return;
            };
            let call_id = message.call_id().unwrap_or_default().to_owned();
            if message.method() == Some("BYE") {
                // A flooder has forgotten its calls: 481 to the server's BYE.
                let text = response(&message, 481, None, self.peer.server, &[], None);
                self.peer.send(text.as_bytes()).await;
                if let Some(call) = self.calls.get_mut(&call_id) {
                    call.server_bye = true;
                }
                continue;
            }
            let (Some(status), Some((_, method))) = (message.status(), message.cseq()) else {
                continue;
            };
            match self.calls.get_mut(&call_id) {
                Some(call) if method == "INVITE" => {
                    if call.invite_statuses.last() != Some(&status) {
                        call.invite_statuses.push(status);
                    }
                    if let Some(tag) = message.to_tag() {
                        call.to_tag = Some(tag.to_owned());
                    }
                }
                Some(call) => call.other_statuses.push((method.to_owned(), status)),
                None if method == "BYE" && status == 481 => self.unknown_bye_481 += 1,
                None => {}
            }
        }
    }

    fn got(&self, i: usize, status: u16) -> bool {
        self.calls[&Self::call_id(i)]
            .invite_statuses
            .contains(&status)
    }
}

/// 200 INVITEs with distinct Call-IDs that are never completed: half are
/// cancelled while ringing (half of those never ACK the 487), of the answered
/// half, some hang up with a BYE before any ACK and the others never ACK at
/// all (and answer the server's BYE with 481). Plus BYEs for dialogs that do
/// not exist. The server stays responsive, and every call it tracked is
/// released: by the BYE at once, by timer I (T4 = 5 s) after the ACK of the
/// 487, by timer H (64*T1 = 32 s) without it, by the ACK timeout (64*T1)
/// and our BYE's 481. Runs ~36 s on wall-clock time (the driver's timers are
/// tokio's; real sockets do not mix with a paused clock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_flood_leaks_no_call_state() {
    let started = std::time::Instant::now();
    let mut server = start_server(45_200..=45_799, Duration::from_secs(2)).await;
    let probe = Peer::new(server.sip).await;
    let mut flood = Flood {
        peer: Peer::new(server.sip).await,
        calls: (0..FLOOD_CALLS)
            .map(|i| (Flood::call_id(i), FloodCall::default()))
            .collect(),
        unknown_bye_481: 0,
    };
    let mut slowest_ping = Duration::ZERO;
    let mut pings = 0;

    // The flood, in batches (a UDP socket's buffer holds only so much): each
    // batch rings, then its even calls are cancelled at once.
    for batch in (0..FLOOD_CALLS).step_by(FLOOD_BATCH) {
        let range = batch..batch + FLOOD_BATCH;
        for attempt in 0..4 {
            for i in range.clone() {
                if !flood.got(i, 180) {
                    let invite = flood.invite(i);
                    flood.peer.send(invite.as_bytes()).await;
                }
            }
            let range = range.clone();
            flood
                .pump(Duration::from_millis(500 << attempt), move |f| {
                    range.clone().all(|i| f.got(i, 180))
                })
                .await;
        }
        for i in range.clone() {
            assert!(
                flood.got(i, 180),
                "call {i} never rang: {:?}",
                flood.calls[&Flood::call_id(i)]
            );
            if i % 2 == 0 {
                let cancel = flood.in_transaction(i, "CANCEL");
                flood.peer.send(cancel.as_bytes()).await;
            }
        }
        // Responsive during the flood.
        pings += 1;
        slowest_ping = slowest_ping.max(probe.ping(pings).await);
    }
    // BYEs of dialogs that never existed: 481.
    for i in 0..50 {
        let (call_id, branch) = (format!("ghost-{i}"), format!("z9hG4bK-ghost-{i}"));
        let mut req = Req::new("BYE", &call_id, &branch);
        req.to_tag = Some("nobody");
        flood
            .peer
            .send(request(&req, flood.peer.addr()).as_bytes())
            .await;
    }
    // The cancelled ones get 487, the others their 200 after the 2 s ring.
    flood
        .pump(Duration::from_secs(10), |f| {
            (0..FLOOD_CALLS).all(|i| f.got(i, if i % 2 == 0 { 487 } else { 200 }))
                && f.unknown_bye_481 == 50
        })
        .await;
    assert_eq!(flood.unknown_bye_481, 50);
    for i in 0..FLOOD_CALLS {
        let expected = if i % 2 == 0 { 487 } else { 200 };
        let call = &flood.calls[&Flood::call_id(i)];
        assert!(
            call.invite_statuses.contains(&expected),
            "call {i}: {call:?}"
        );
        if i % 2 == 0 {
            assert!(
                call.other_statuses.contains(&("CANCEL".into(), 200)),
                "call {i}: {call:?}"
            );
        }
    }
    assert_eq!(server.load.tracked_calls(), FLOOD_CALLS);
    assert_eq!(
        server.load.calls_in_setup(),
        FLOOD_CALLS / 2,
        "the answered ones wait for their ACK"
    );
    // Half the 487s are ACKed; a quarter of the calls hang up before any ACK.
    for i in 0..FLOOD_CALLS {
        let text = match i % 4 {
            0 => flood.in_transaction(i, "ACK"),
            1 => flood.bye(i),
            _ => continue,
        };
        flood.peer.send(text.as_bytes()).await;
    }
    pings += 1;
    slowest_ping = slowest_ping.max(probe.ping(pings).await);

    // Then nothing more from the peer but 481s to the server's BYEs: every
    // call is released by the timers.
    let released = started + Duration::from_secs(50);
    let load = server.load.clone();
    while std::time::Instant::now() < released
        && (load.tracked_calls() + load.calls_in_setup() + load.live_calls()) > 0
    {
        flood.pump(Duration::from_secs(2), |_| false).await;
        pings += 1;
        slowest_ping = slowest_ping.max(probe.ping(pings).await);
    }
    let took = started.elapsed();
    assert_eq!(
        (
            load.tracked_calls(),
            load.calls_in_setup(),
            load.live_calls()
        ),
        (0, 0, 0),
        "calls still held after {took:?}"
    );
    for i in 0..FLOOD_CALLS {
        let call = &flood.calls[&Flood::call_id(i)];
        if i % 4 == 1 {
            assert!(
                call.other_statuses.contains(&("BYE".into(), 200)),
                "call {i}: {call:?}"
            );
        }
        // The calls never ACKed were hung up with a BYE (RFC 3261, 13.3.1.4).
        assert_eq!(call.server_bye, i % 4 == 3, "call {i}: {call:?}");
    }
    assert!(
        slowest_ping < Duration::from_secs(2),
        "an OPTIONS took {slowest_ping:?}"
    );

    // Every call opened was ended once, for the reason its peer gave, and
    // what the application set up for it was stopped.
    let mut reasons: HashMap<String, usize> = HashMap::new();
    let mut rang = 0;
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_millis(200), server.events.recv()).await
    {
        match event {
            SipEvent::Ringing(_) => rang += 1,
            SipEvent::Ended { reason, .. } => {
                *reasons.entry(format!("{reason:?}")).or_default() += 1
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(rang, FLOOD_CALLS);
    let expected: HashMap<String, usize> = [
        (format!("{:?}", SipEnd::Canceled), FLOOD_CALLS / 2),
        (format!("{:?}", SipEnd::RemoteBye), FLOOD_CALLS / 4),
        (format!("{:?}", SipEnd::AckTimeout), FLOOD_CALLS / 4),
    ]
    .into();
    assert_eq!(reasons, expected);
    let opened = server.opened.lock().expect("lock");
    assert_eq!(opened.len(), FLOOD_CALLS);
    assert!(opened.iter().all(CancellationToken::is_cancelled));
    println!(
        "flood: {FLOOD_CALLS} INVITEs released in {took:?}; {pings} OPTIONS, slowest {slowest_ping:?}"
    );
}
