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
            UasOutput::Answered(_) | UasOutput::Ended { .. } => {}
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
