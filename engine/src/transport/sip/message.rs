//! SIP messages (RFC 3261, section 7): a small parser and the response
//! builder the UAS needs. Header names are matched case-insensitively with
//! their compact forms; whatever is not understood is kept as text.

use std::fmt::Write as _;
use std::net::SocketAddr;

use thiserror::Error;

/// The longest message accepted (a UDP datagram of a sane size).
pub const MESSAGE_MAX: usize = 16 * 1024;
/// The magic cookie of RFC 3261 branch ids.
pub const BRANCH_COOKIE: &str = "z9hG4bK";

/// Why bytes are not a SIP message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// Not UTF-8 text, or too long.
    #[error("not a SIP message (binary or oversized)")]
    NotText,
    /// The first line is neither a request nor a status line.
    #[error("bad start line")]
    StartLine,
    /// A header line without a colon, or no blank line ending the headers.
    #[error("bad header section")]
    Headers,
    /// `Content-Length` is not a number or larger than the body.
    #[error("bad Content-Length")]
    ContentLength,
}

/// A request line or a status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    /// `METHOD uri SIP/2.0`.
    Request {
        /// The method, as sent (methods are case-sensitive).
        method: String,
        /// The Request-URI.
        uri: String,
    },
    /// `SIP/2.0 code reason`.
    Response {
        /// The status code.
        code: u16,
        /// The reason phrase.
        reason: String,
    },
}

/// A parsed SIP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipMessage {
    /// The first line.
    pub start: StartLine,
    /// The headers in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (`Content-Length` bytes).
    pub body: String,
}

/// The full name of a compact header form (RFC 3261, section 7.3.3).
fn expand(name: &str) -> &str {
    match name {
        "v" | "V" => "via",
        "f" | "F" => "from",
        "t" | "T" => "to",
        "i" | "I" => "call-id",
        "m" | "M" => "contact",
        "l" | "L" => "content-length",
        "c" | "C" => "content-type",
        "k" | "K" => "supported",
        "s" | "S" => "subject",
        _ => name,
    }
}

/// Whether header `name` (any case, compact or full) is `full` (lowercase).
fn is_header(name: &str, full: &str) -> bool {
    expand(name).eq_ignore_ascii_case(full)
}

impl SipMessage {
    /// Parses one datagram.
    pub fn parse(bytes: &[u8]) -> Result<SipMessage, ParseError> {
        Self::parse_with(bytes, true)
    }

    /// The start line and headers of a datagram, its body left empty and
    /// `Content-Length` not checked: enough to answer a request whose body
    /// is not what it announced with 400 (RFC 3261, section 18.3).
    pub fn parse_head(bytes: &[u8]) -> Result<SipMessage, ParseError> {
        Self::parse_with(bytes, false)
    }

    fn parse_with(bytes: &[u8], with_body: bool) -> Result<SipMessage, ParseError> {
        if bytes.len() > MESSAGE_MAX {
            return Err(ParseError::NotText);
        }
        let text = std::str::from_utf8(bytes).map_err(|_| ParseError::NotText)?;
        // Leading CRLFs are keep-alives (RFC 5626) or stray; skip them.
        let text = text.trim_start_matches(['\r', '\n']);
        let (head, rest) = match text.find("\r\n\r\n") {
            Some(at) => (&text[..at], &text[at + 4..]),
            None => match text.find("\n\n") {
                Some(at) => (&text[..at], &text[at + 2..]),
                None => return Err(ParseError::Headers),
            },
        };
        let mut lines = head.split('\n').map(|line| line.trim_end_matches('\r'));
        let start = parse_start_line(lines.next().ok_or(ParseError::StartLine)?)?;
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t']) {
                // A folded continuation line belongs to the header before.
                // Folding whitespace reads as one space (RFC 3261, 7.3.1); an
                // empty side adds none, so a message written back reads the same.
                let (_, value) = headers.last_mut().ok_or(ParseError::Headers)?;
                let more = line.trim();
                if !more.is_empty() {
                    if !value.is_empty() {
                        value.push(' ');
                    }
                    value.push_str(more);
                }
                continue;
            }
            let (name, value) = line.split_once(':').ok_or(ParseError::Headers)?;
            let name = name.trim();
            if name.is_empty() || name.contains(' ') {
                return Err(ParseError::Headers);
            }
            headers.push((name.to_owned(), value.trim().to_owned()));
        }
        let mut message = SipMessage {
            start,
            headers,
            body: String::new(),
        };
        if !with_body {
            return Ok(message);
        }
        let body = match message.header("content-length") {
            Some(length) => {
                let length: usize = length.parse().map_err(|_| ParseError::ContentLength)?;
                // A body shorter than announced is a truncated datagram (RFC 3261, 18.3).
                rest.get(..length).ok_or(ParseError::ContentLength)?
            }
            None => rest,
        };
        message.body = body.to_owned();
        Ok(message)
    }

    /// The first value of header `name` (full name, any case; compact forms match).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| is_header(header, name))
            .map(|(_, value)| value.as_str())
    }

    /// Every header line named `name`, in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(header, _)| is_header(header, name))
            .map(|(_, value)| value.as_str())
    }

    /// The method of a request.
    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    /// The Call-ID.
    pub fn call_id(&self) -> Option<&str> {
        self.header("call-id").filter(|id| !id.is_empty())
    }

    /// The CSeq number and method.
    pub fn cseq(&self) -> Option<(u32, &str)> {
        let mut parts = self.header("cseq")?.split_whitespace();
        let number = parts.next()?.parse().ok()?;
        Some((number, parts.next()?))
    }

    /// The branch of the top Via.
    pub fn branch(&self) -> Option<&str> {
        let top = self.header("via")?.split(',').next()?;
        param(top, "branch")
    }

    /// The tag of the From header.
    pub fn from_tag(&self) -> Option<&str> {
        param(self.header("from")?, "tag")
    }

    /// The tag of the To header.
    pub fn to_tag(&self) -> Option<&str> {
        param(self.header("to")?, "tag")
    }

    /// The user part of the Request-URI (`sip:1000@host` is `1000`).
    pub fn request_user(&self) -> Option<&str> {
        let StartLine::Request { uri, .. } = &self.start else {
            return None;
        };
        uri_user(uri)
    }

    /// Whether the request has what every request must have to be answered
    /// (RFC 3261, section 8.1.1): Via, From, To, Call-ID, a CSeq matching
    /// the method.
    pub fn missing_mandatory(&self) -> Option<&'static str> {
        let method = self.method()?;
        if self.header("via").is_none() {
            return Some("Via");
        }
        if self.header("from").is_none() {
            return Some("From");
        }
        if self.header("to").is_none() {
            return Some("To");
        }
        if self.call_id().is_none() {
            return Some("Call-ID");
        }
        match self.cseq() {
            Some((_, cseq_method)) if cseq_method == method => None,
            _ => Some("CSeq"),
        }
    }

    /// The URI inside the Contact header (`<sip:x@y>;expires=...`).
    pub fn contact_uri(&self) -> Option<&str> {
        name_addr_uri(self.header("contact")?)
    }
}

/// The URI of a name-addr (`"Bob" <sip:bob@host>;tag=1`) or addr-spec;
/// `None` unless it can be a Request-URI (a scheme, no whitespace): it is
/// where in-dialog requests go, and a peer's junk must not make them invalid.
pub fn name_addr_uri(value: &str) -> Option<&str> {
    let uri = match value.find('<') {
        Some(open) => {
            let rest = &value[open + 1..];
            rest.find('>').map(|close| &rest[..close])
        }
        None => value.split(';').next().map(str::trim),
    }?;
    let usable = uri.split_once(':').is_some_and(|(scheme, rest)| {
        !scheme.is_empty() && !rest.is_empty() && scheme.chars().all(|c| c.is_ascii_alphanumeric())
    }) && !uri.chars().any(|c| c.is_whitespace() || c.is_control());
    usable.then_some(uri)
}

/// The user part of a SIP URI (`sip:user@host`), if it has one.
pub fn uri_user(uri: &str) -> Option<&str> {
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    let (user, _) = rest.split_once('@')?;
    // `user;password` or `user:password` keep the user.
    user.split([':', ';'])
        .next()
        .filter(|user| !user.is_empty())
}

/// The value of `;name=value` among a header's parameters (outside `<...>`).
fn param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    let params = match value.rfind('>') {
        Some(close) => &value[close + 1..],
        None => value,
    };
    params.split(';').skip(1).find_map(|param| {
        let (key, found) = param.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then_some(found.trim())
            .filter(|found| !found.is_empty())
    })
}

fn parse_start_line(line: &str) -> Result<StartLine, ParseError> {
    if let Some(status) = line.strip_prefix("SIP/2.0 ") {
        let (code, reason) = status.split_once(' ').unwrap_or((status, ""));
        let code: u16 = code.parse().map_err(|_| ParseError::StartLine)?;
        if !(100..=699).contains(&code) {
            return Err(ParseError::StartLine);
        }
        return Ok(StartLine::Response {
            code,
            reason: reason.to_owned(),
        });
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some("SIP/2.0"), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::StartLine);
    };
    // RFC 3261 token characters; enough to refuse binary junk.
    let token = |c: char| c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c);
    if method.is_empty() || !method.chars().all(token) || !uri.contains(':') {
        return Err(ParseError::StartLine);
    }
    Ok(StartLine::Request {
        method: method.to_owned(),
        uri: uri.to_owned(),
    })
}

/// The reason phrase of the status codes the engine sends.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        422 => "Session Interval Too Small",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        603 => "Decline",
        _ => "Unknown",
    }
}

/// The methods the engine's UAS handles.
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, NOTIFY";

/// Builds a response to `request` (RFC 3261, section 8.2.6): the Vias,
/// From, Call-ID and CSeq copied, `to_tag` added to To when it has none,
/// `received`/`rport` filled in on the top Via for `source`.
pub fn response(
    request: &SipMessage,
    code: u16,
    to_tag: Option<&str>,
    source: SocketAddr,
    extra_headers: &[(&str, &str)],
    body: Option<(&str, &str)>,
) -> String {
    let mut out = String::with_capacity(512 + body.map_or(0, |(_, b)| b.len()));
    let _ = write!(out, "SIP/2.0 {code} {}\r\n", reason_phrase(code));
    let mut first_via = true;
    for (name, value) in &request.headers {
        if is_header(name, "via") {
            if first_via {
                first_via = false;
                let _ = write!(out, "Via: {}\r\n", fill_received(value, source));
            } else {
                let _ = write!(out, "Via: {value}\r\n");
            }
        } else if is_header(name, "record-route") && (200..300).contains(&code) {
            let _ = write!(out, "Record-Route: {value}\r\n");
        }
    }
    if let Some(from) = request.header("from") {
        let _ = write!(out, "From: {from}\r\n");
    }
    if let Some(to) = request.header("to") {
        match to_tag {
            Some(tag) if request.to_tag().is_none() && code != 100 => {
                let _ = write!(out, "To: {to};tag={tag}\r\n");
            }
            _ => {
                let _ = write!(out, "To: {to}\r\n");
            }
        }
    }
    if let Some(call_id) = request.header("call-id") {
        let _ = write!(out, "Call-ID: {call_id}\r\n");
    }
    if let Some(cseq) = request.header("cseq") {
        let _ = write!(out, "CSeq: {cseq}\r\n");
    }
    for (name, value) in extra_headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    out.push_str("Server: CallingBox\r\n");
    match body {
        Some((content_type, body)) => {
            let _ = write!(
                out,
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
        None => out.push_str("Content-Length: 0\r\n\r\n"),
    }
    out
}

/// The top Via with `received` and a valued `rport` (RFC 3581) for `source`.
fn fill_received(via: &str, source: SocketAddr) -> String {
    let (top, others) = match via.split_once(',') {
        Some((top, others)) => (top, Some(others)),
        None => (via, None),
    };
    let mut filled = String::with_capacity(via.len() + 40);
    let mut has_rport = false;
    for (index, part) in top.split(';').enumerate() {
        let key = part.split('=').next().unwrap_or_default().trim();
        if index > 0 && key.eq_ignore_ascii_case("received") {
            continue;
        }
        if index > 0 && key.eq_ignore_ascii_case("rport") {
            has_rport = true;
            continue;
        }
        if index > 0 {
            filled.push(';');
        }
        filled.push_str(part);
    }
    let _ = write!(filled, ";received={}", source.ip());
    if has_rport {
        let _ = write!(filled, ";rport={}", source.port());
    }
    if let Some(others) = others {
        filled.push(',');
        filled.push_str(others);
    }
    filled
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:1000@127.0.0.1:5060 SIP/2.0\r\n\
        Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1;rport\r\n\
        v: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-proxy\r\n\
        From: \"Alice\" <sip:alice@127.0.0.1:5061>;tag=abc\r\n\
        t: <sip:1000@127.0.0.1:5060>\r\n\
        i: call-1@127.0.0.1\r\n\
        CSeq: 1 INVITE\r\n\
        m: <sip:alice@127.0.0.1:5061>\r\n\
        Subject: a long\r\n  folded header\r\n\
        Content-Type: application/sdp\r\n\
        l: 4\r\n\r\nv=0\r\nextra";

    #[test]
    fn parses_a_request_with_compact_and_folded_headers() {
        let message = SipMessage::parse(INVITE.as_bytes()).expect("parses");
        assert_eq!(message.method(), Some("INVITE"));
        assert_eq!(message.request_user(), Some("1000"));
        assert_eq!(message.call_id(), Some("call-1@127.0.0.1"));
        assert_eq!(message.cseq(), Some((1, "INVITE")));
        assert_eq!(message.branch(), Some("z9hG4bK-1"));
        assert_eq!(message.from_tag(), Some("abc"));
        assert_eq!(message.to_tag(), None);
        assert_eq!(message.contact_uri(), Some("sip:alice@127.0.0.1:5061"));
        assert_eq!(message.header("subject"), Some("a long folded header"));
        assert_eq!(message.headers_named("via").count(), 2);
        // Content-Length cuts the body.
        assert_eq!(message.body, "v=0\r");
        assert_eq!(message.missing_mandatory(), None);
    }

    #[test]
    fn a_response_copies_the_dialog_headers_and_adds_the_tag() {
        let message = SipMessage::parse(INVITE.as_bytes()).expect("parses");
        let source: SocketAddr = "192.0.2.7:5999".parse().expect("addr");
        let text = response(&message, 180, Some("t1"), source, &[], None);
        let reply = SipMessage::parse(text.as_bytes()).expect("our response parses");
        assert_eq!(reply.status(), Some(180));
        assert_eq!(reply.to_tag(), Some("t1"));
        assert_eq!(reply.branch(), Some("z9hG4bK-1"));
        let vias: Vec<&str> = reply.headers_named("via").collect();
        assert_eq!(
            vias,
            vec![
                "SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1;received=192.0.2.7;rport=5999",
                "SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK-proxy",
            ]
        );
        assert_eq!(reply.cseq(), Some((1, "INVITE")));
        assert_eq!(reply.header("content-length"), Some("0"));
        // 100 Trying never carries a tag.
        let trying = response(&message, 100, Some("t1"), source, &[], None);
        assert!(!trying.contains("tag=t1"));
    }

    #[test]
    fn malformed_messages_are_typed_errors() {
        let cases: [(&[u8], ParseError); 7] = [
            (b"\xff\xfe\x00garbage", ParseError::NotText),
            (b"hello world\r\n\r\n", ParseError::StartLine),
            (b"INVITE sip:x SIP/3.0\r\n\r\n", ParseError::StartLine),
            (b"SIP/2.0 99 Low\r\n\r\n", ParseError::StartLine),
            (
                b"OPTIONS sip:x SIP/2.0\r\nno colon here\r\n\r\n",
                ParseError::Headers,
            ),
            (b"OPTIONS sip:x SIP/2.0\r\nVia: x\r\n", ParseError::Headers),
            (
                b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 99\r\n\r\nshort",
                ParseError::ContentLength,
            ),
        ];
        for (bytes, expected) in cases {
            assert_eq!(SipMessage::parse(bytes), Err(expected), "{bytes:?}");
        }
        let no_call_id = SipMessage::parse(b"BYE sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCSeq: 2 BYE\r\n\r\n").expect("parses");
        assert_eq!(no_call_id.missing_mandatory(), Some("Call-ID"));
        // Every truncation of a valid message parses or fails; none panics.
        for end in 0..INVITE.len() {
            let _ = SipMessage::parse(&INVITE.as_bytes()[..end]);
        }
    }
}
