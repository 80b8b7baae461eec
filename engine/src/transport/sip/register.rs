//! REGISTER toward a trunk (RFC 3261 section 10), sans-IO.
//!
//! A trunk that sends us calls for a number may need to know where we are:
//! [`Registration`] binds our Contact to the account's address of record at
//! the trunk's registrar and keeps it bound. It sends a REGISTER (timer E
//! retransmissions over UDP, timer F gives up), answers a 401/407 digest
//! challenge once ([`digest`](super::digest); once more for a stale nonce),
//! asks again with the registrar's `Min-Expires` after a 423, and on a 200
//! takes the interval the registrar granted (our Contact's `expires`, else
//! `Expires`) and refreshes before it runs out (at the granted time minus
//! 60 s, or half of it if that is later). A failure (a final error, no
//! answer, a challenge it cannot meet) is retried after a backoff that
//! doubles from `retry_min` to `retry_max`, randomised between 50% and
//! 100% so that many engines do not retry in step. [`Registration::unregister`]
//! removes the binding (`Expires: 0`) when the engine shuts down.
//!
//! The same Call-ID and increasing CSeq numbers are used for every
//! REGISTER of one registration (RFC 3261 10.2.4).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use super::digest::{Challenge, Credentials};
use super::message::{BRANCH_COOKIE, SipMessage};
use crate::clock::Instant;

/// Where and how to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationConfig {
    /// The registrar's address (where REGISTERs go).
    pub registrar: SocketAddr,
    /// The registrar's domain: the Request-URI is `sip:<domain>` and the
    /// address of record `sip:<user>@<domain>`.
    pub domain: String,
    /// The account (address-of-record user, usually our number).
    pub user: String,
    /// The account's credentials, if the registrar challenges.
    pub credentials: Option<Credentials>,
    /// The interval asked for (RFC 3261 suggests 3600 s).
    pub expires: Duration,
    /// The first retry after a failure.
    pub retry_min: Duration,
    /// The longest wait between retries.
    pub retry_max: Duration,
    /// RFC 3261 T1 (500 ms).
    pub t1: Duration,
    /// RFC 3261 T2 (4 s).
    pub t2: Duration,
}

impl RegistrationConfig {
    /// Registering `user` at `domain` via `registrar`: 3600 s, retries from
    /// 30 s to 30 min, the RFC 3261 timers.
    pub fn new(registrar: SocketAddr, domain: &str, user: &str) -> Self {
        RegistrationConfig {
            registrar,
            domain: domain.to_owned(),
            user: user.to_owned(),
            credentials: None,
            expires: Duration::from_secs(3_600),
            retry_min: Duration::from_secs(30),
            retry_max: Duration::from_secs(1_800),
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
        }
    }
}

/// Where a registration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationStatus {
    /// Not started, or removed (after [`Registration::unregister`]).
    Unregistered,
    /// A REGISTER is out.
    Registering,
    /// Bound at the registrar for `expires` from the last 200.
    Registered {
        /// The interval the registrar granted.
        expires: Duration,
    },
    /// The last attempt failed (with `status`, or no answer); the next one
    /// is in `retry_in`.
    Failed {
        /// The registrar's final status, `None` if it never answered.
        status: Option<u16>,
        /// When the next attempt goes out, from the failure.
        retry_in: Duration,
    },
}

/// What the registration wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterOutput {
    /// Send `bytes` to `to`.
    Transmit {
        /// The registrar.
        to: SocketAddr,
        /// A REGISTER.
        bytes: Vec<u8>,
    },
    /// The status changed.
    Status(RegistrationStatus),
}

#[derive(Debug)]
struct Transaction {
    branch: String,
    text: String,
    next: Instant,
    interval: Duration,
    give_up: Instant,
    /// This REGISTER removes the binding.
    removing: bool,
}

/// One registration, sans-IO (see the module doc).
#[derive(Debug)]
pub struct Registration {
    config: RegistrationConfig,
    local: SocketAddr,
    call_id: String,
    from_tag: String,
    cseq: u32,
    random: u64,
    expires: Duration,
    transaction: Option<Transaction>,
    auth_tries: u32,
    failures: u32,
    /// The next REGISTER (refresh or retry), when none is out.
    next_attempt: Option<Instant>,
    status: RegistrationStatus,
    outputs: VecDeque<RegisterOutput>,
    /// REGISTERs sent (retransmissions not counted).
    sent: u64,
}

impl Registration {
    /// A registration of our SIP address `local` (Contact, Via); `seed`
    /// makes its Call-ID, tags and branches.
    pub fn new(config: RegistrationConfig, local: SocketAddr, seed: u64) -> Self {
        let mut registration = Registration {
            expires: config.expires,
            config,
            local,
            call_id: String::new(),
            from_tag: String::new(),
            cseq: 0,
            random: seed | 1,
            transaction: None,
            auth_tries: 0,
            failures: 0,
            next_attempt: None,
            status: RegistrationStatus::Unregistered,
            outputs: VecDeque::new(),
            sent: 0,
        };
        registration.call_id = format!("{:016x}@callingbox", registration.random());
        registration.from_tag = format!("{:x}", registration.random());
        registration
    }

    /// Where it stands.
    pub fn status(&self) -> RegistrationStatus {
        self.status
    }

    /// REGISTERs sent so far (retransmissions not counted).
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<RegisterOutput> {
        self.outputs.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must run next.
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.transaction {
            Some(transaction) => Some(transaction.next.min(transaction.give_up)),
            None => self.next_attempt,
        }
    }

    /// Sends the first REGISTER at `now`.
    pub fn start(&mut self, now: Instant) {
        self.auth_tries = 0;
        self.send(now, false, None);
    }

    /// Removes the binding (`Expires: 0`); the status becomes
    /// [`RegistrationStatus::Unregistered`] when the registrar answers, or
    /// gives up.
    pub fn unregister(&mut self, now: Instant) {
        self.next_attempt = None;
        self.auth_tries = 0;
        self.send(now, true, None);
    }

    /// True once an un-REGISTER finished (answered or given up).
    pub fn is_unregistered(&self) -> bool {
        self.status == RegistrationStatus::Unregistered && self.transaction.is_none()
    }

    fn random(&mut self) -> u64 {
        // xorshift64*, as the UAS and UAC.
        self.random ^= self.random >> 12;
        self.random ^= self.random << 25;
        self.random ^= self.random >> 27;
        self.random.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn aor(&self) -> String {
        format!("sip:{}@{}", self.config.user, self.config.domain)
    }

    fn send(&mut self, now: Instant, removing: bool, authorization: Option<(&str, String)>) {
        self.cseq += 1;
        self.sent += 1;
        let branch = format!("{BRANCH_COOKIE}{:x}", self.random());
        let expires = if removing { 0 } else { self.expires.as_secs() };
        let mut text = format!(
            "REGISTER sip:{domain} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: <{aor}>;tag={tag}\r\nTo: <{aor}>\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{local}>\r\nExpires: {expires}\r\n\
             User-Agent: CallingBox\r\n",
            domain = self.config.domain,
            local = self.local,
            aor = self.aor(),
            tag = self.from_tag,
            call_id = self.call_id,
            cseq = self.cseq,
            user = self.config.user,
        );
        if let Some((name, value)) = authorization {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("Content-Length: 0\r\n\r\n");
        self.transaction = Some(Transaction {
            branch,
            text: text.clone(),
            next: now + self.config.t1,
            interval: self.config.t1,
            give_up: now + 64 * self.config.t1,
            removing,
        });
        self.set_status(if removing {
            self.status
        } else {
            RegistrationStatus::Registering
        });
        self.outputs.push_back(RegisterOutput::Transmit {
            to: self.config.registrar,
            bytes: text.into_bytes(),
        });
    }

    fn set_status(&mut self, status: RegistrationStatus) {
        if status != self.status {
            self.status = status;
            self.outputs.push_back(RegisterOutput::Status(status));
        }
    }

    /// A response from the network at `now`; true if it answered our
    /// REGISTER (then it is consumed), false if it is someone else's.
    pub fn handle_response(&mut self, now: Instant, response: &SipMessage) -> bool {
        let Some(code) = response.status() else {
            return false;
        };
        let ours = self.transaction.as_ref().is_some_and(|transaction| {
            response.branch() == Some(transaction.branch.as_str())
                && response.call_id() == Some(self.call_id.as_str())
        });
        if !ours {
            // A late answer to an earlier REGISTER of ours is still ours.
            return response.call_id() == Some(self.call_id.as_str())
                && response
                    .cseq()
                    .is_some_and(|(_, method)| method == "REGISTER");
        }
        if code < 200 {
            // Provisional: stop retransmitting quickly, wait for the final.
            if let Some(transaction) = &mut self.transaction {
                transaction.interval = self.config.t2;
                transaction.next = now + self.config.t2;
            }
            return true;
        }
        let Some(transaction) = self.transaction.take() else {
            return true;
        };
        match code {
            200..=299 if transaction.removing => self.removed(),
            200..=299 => {
                let granted = self.granted(response).unwrap_or(self.expires);
                self.failures = 0;
                self.auth_tries = 0;
                let refresh_in = granted
                    .saturating_sub(Duration::from_secs(60))
                    .max(granted / 2);
                self.next_attempt = Some(now + refresh_in);
                self.set_status(RegistrationStatus::Registered { expires: granted });
            }
            401 | 407 => {
                if !self.authenticate(now, code, response, transaction.removing) {
                    self.failed(now, Some(code), transaction.removing);
                }
            }
            // RFC 3261 10.2.8: ask again for at least Min-Expires.
            423 => match response
                .header("min-expires")
                .and_then(|value| value.trim().parse::<u64>().ok())
                .filter(|&seconds| Duration::from_secs(seconds) > self.expires)
            {
                Some(seconds) if !transaction.removing => {
                    self.expires = Duration::from_secs(seconds);
                    self.send(now, false, None);
                }
                _ => self.failed(now, Some(code), transaction.removing),
            },
            _ => self.failed(now, Some(code), transaction.removing),
        }
        true
    }

    /// The interval in a 200: our Contact's `expires`, else `Expires`.
    fn granted(&self, response: &SipMessage) -> Option<Duration> {
        let ours = format!("sip:{}@{}", self.config.user, self.local);
        let from_contact = response
            .headers_named("contact")
            .flat_map(|value| value.split(','))
            .filter(|contact| contact.contains(&ours))
            .find_map(|contact| {
                contact.split(';').skip(1).find_map(|param| {
                    let (name, value) = param.split_once('=')?;
                    name.trim()
                        .eq_ignore_ascii_case("expires")
                        .then(|| value.trim().parse::<u64>().ok())
                        .flatten()
                })
            });
        let seconds = from_contact.or_else(|| {
            response
                .header("expires")
                .and_then(|value| value.trim().parse::<u64>().ok())
        })?;
        (seconds > 0).then(|| Duration::from_secs(seconds))
    }

    fn authenticate(
        &mut self,
        now: Instant,
        code: u16,
        response: &SipMessage,
        removing: bool,
    ) -> bool {
        let Some(credentials) = self.config.credentials.clone() else {
            return false;
        };
        let (challenge_header, answer_header) = if code == 401 {
            ("www-authenticate", "Authorization")
        } else {
            ("proxy-authenticate", "Proxy-Authorization")
        };
        let Some(challenge) = response
            .headers_named(challenge_header)
            .find_map(|value| Challenge::parse(value).ok())
        else {
            return false;
        };
        // One answer per REGISTER, one more for a stale nonce.
        let allowed = self.auth_tries == 0 || (self.auth_tries == 1 && challenge.stale);
        if !allowed {
            return false;
        }
        self.auth_tries += 1;
        let cnonce = format!("{:016x}", self.random());
        let uri = format!("sip:{}", self.config.domain);
        let value = challenge.answer(&credentials, "REGISTER", &uri, &cnonce, 1);
        self.send(now, removing, Some((answer_header, value)));
        true
    }

    fn removed(&mut self) {
        self.next_attempt = None;
        self.set_status(RegistrationStatus::Unregistered);
    }

    fn failed(&mut self, now: Instant, status: Option<u16>, removing: bool) {
        if removing {
            // Shutting down: nothing to retry.
            self.removed();
            return;
        }
        self.auth_tries = 0;
        let doubled = self
            .config
            .retry_min
            .saturating_mul(1u32 << self.failures.min(16));
        let ceiling = doubled.min(self.config.retry_max);
        // 50-100% of the ceiling (RFC 5626 4.5 randomises alike).
        let fraction = 0.5 + (self.random() >> 11) as f64 / (1u64 << 53) as f64 / 2.0;
        let retry_in = ceiling.mul_f64(fraction);
        self.failures = self.failures.saturating_add(1);
        self.next_attempt = Some(now + retry_in);
        self.set_status(RegistrationStatus::Failed { status, retry_in });
    }

    /// Runs the timers due at `now`: retransmissions, timeouts, refreshes
    /// and retries.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(transaction) = &mut self.transaction {
            if transaction.give_up <= now {
                let removing = transaction.removing;
                self.transaction = None;
                self.failed(now, None, removing);
            } else if transaction.next <= now {
                // Timer E: doubling up to T2.
                transaction.interval = (transaction.interval * 2).min(self.config.t2);
                transaction.next = now + transaction.interval;
                let bytes = transaction.text.clone().into_bytes();
                self.outputs.push_back(RegisterOutput::Transmit {
                    to: self.config.registrar,
                    bytes,
                });
            }
            return;
        }
        if self.next_attempt.is_some_and(|at| at <= now) {
            self.next_attempt = None;
            self.auth_tries = 0;
            self.send(now, false, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::sip::message::response;

    fn registrar() -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 50], 5060))
    }

    fn local() -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], 5060))
    }

    fn registration(credentials: bool) -> Registration {
        let mut config = RegistrationConfig::new(registrar(), "trunk.example", "+15550100");
        if credentials {
            config.credentials = Some(Credentials {
                username: "alice".into(),
                password: "secret".into(),
            });
        }
        config.expires = Duration::from_secs(600);
        Registration::new(config, local(), 9)
    }

    /// The REGISTERs sent and statuses reported.
    fn drain(registration: &mut Registration) -> (Vec<SipMessage>, Vec<RegistrationStatus>) {
        let (mut sent, mut statuses) = (Vec::new(), Vec::new());
        while let Some(output) = registration.poll_output() {
            match output {
                RegisterOutput::Transmit { to, bytes } => {
                    assert_eq!(to, registrar());
                    sent.push(SipMessage::parse(&bytes).expect("a valid REGISTER"));
                }
                RegisterOutput::Status(status) => statuses.push(status),
            }
        }
        (sent, statuses)
    }

    fn answer(request: &SipMessage, code: u16, headers: &[(&str, &str)]) -> SipMessage {
        let text = response(request, code, Some("reg1"), registrar(), headers, None);
        SipMessage::parse(text.as_bytes()).expect("parses")
    }

    const CHALLENGE: &str =
        "Digest realm=\"trunk.example\", nonce=\"abc123\", qop=\"auth\", algorithm=MD5";

    #[test]
    fn challenged_then_registered_then_refreshed_before_expiry() {
        let mut registration = registration(true);
        registration.start(Instant::ZERO);
        let (sent, statuses) = drain(&mut registration);
        assert_eq!(statuses, vec![RegistrationStatus::Registering]);
        let first = &sent[0];
        assert_eq!(first.method(), Some("REGISTER"));
        assert_eq!(first.header("to"), Some("<sip:+15550100@trunk.example>"));
        assert_eq!(first.header("expires"), Some("600"));
        assert!(first.header("authorization").is_none());
        let challenged = answer(first, 401, &[("WWW-Authenticate", CHALLENGE)]);
        assert!(registration.handle_response(Instant::from_millis(20), &challenged));
        let (sent, _) = drain(&mut registration);
        let second = &sent[0];
        let authorization = second.header("authorization").expect("credentials");
        assert!(
            authorization.contains("username=\"alice\"")
                && authorization.contains("uri=\"sip:trunk.example\"")
        );
        assert_eq!(
            second.call_id(),
            first.call_id(),
            "one Call-ID per registration"
        );
        assert_eq!(second.cseq().map(|c| c.0), Some(2));
        // The registrar grants 300 s on our Contact.
        let ok = answer(
            second,
            200,
            &[
                ("Contact", "<sip:+15550100@192.0.2.1:5060>;expires=300"),
                ("Expires", "600"),
            ],
        );
        assert!(registration.handle_response(Instant::from_millis(40), &ok));
        assert_eq!(
            drain(&mut registration).1,
            vec![RegistrationStatus::Registered {
                expires: Duration::from_secs(300)
            }]
        );
        // Refreshed 60 s before it runs out.
        assert_eq!(
            registration.next_deadline(),
            Some(Instant::from_millis(240_040))
        );
        registration.handle_timeout(Instant::from_millis(240_039));
        assert!(drain(&mut registration).0.is_empty());
        registration.handle_timeout(Instant::from_millis(240_040));
        let (sent, _) = drain(&mut registration);
        assert_eq!(sent[0].cseq().map(|c| c.0), Some(3));
        // Someone else's response is not ours.
        let other = SipMessage::parse(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: other\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n").expect("parses");
        assert!(!registration.handle_response(Instant::from_millis(240_050), &other));
    }

    #[test]
    fn wrong_credentials_are_tried_once_then_retried_with_backoff() {
        let mut registration = registration(true);
        registration.start(Instant::ZERO);
        let mut now = Instant::ZERO;
        let mut retries = Vec::new();
        for _ in 0..6 {
            let (sent, _) = drain(&mut registration);
            let challenged = answer(&sent[0], 401, &[("WWW-Authenticate", CHALLENGE)]);
            registration.handle_response(now, &challenged);
            let (sent, _) = drain(&mut registration);
            assert!(sent[0].header("authorization").is_some());
            // The same challenge again: the password is wrong.
            let refused = answer(&sent[0], 401, &[("WWW-Authenticate", CHALLENGE)]);
            registration.handle_response(now, &refused);
            let (sent, statuses) = drain(&mut registration);
            assert!(sent.is_empty(), "no third try");
            let Some(RegistrationStatus::Failed {
                status: Some(401),
                retry_in,
            }) = statuses.last().copied()
            else {
                panic!("{statuses:?}");
            };
            retries.push(retry_in);
            now = registration.next_deadline().expect("a retry");
            registration.handle_timeout(now);
        }
        // 30 s doubling to the 30 min cap, each 50-100% of its ceiling.
        for (n, retry) in retries.iter().enumerate() {
            let ceiling = Duration::from_secs(30 * (1 << n)).min(Duration::from_secs(1_800));
            assert!(*retry >= ceiling / 2 && *retry <= ceiling, "{n}: {retry:?}");
        }
    }

    #[test]
    fn no_answer_is_retransmitted_then_a_failure_and_423_asks_longer() {
        let mut registration = registration(false);
        registration.start(Instant::ZERO);
        let mut sends = 1;
        let _ = drain(&mut registration);
        let mut statuses = Vec::new();
        while statuses.is_empty() {
            let now = registration.next_deadline().expect("a timer");
            registration.handle_timeout(now);
            let (sent, status) = drain(&mut registration);
            sends += sent.len();
            statuses = status;
        }
        // Timer E: 0.5, 1, 2, 4, 4 ... s until timer F at 32 s.
        assert!(sends >= 9, "{sends}");
        assert!(matches!(
            statuses[0],
            RegistrationStatus::Failed { status: None, .. }
        ));
        let now = registration.next_deadline().expect("a retry");
        registration.handle_timeout(now);
        let (sent, _) = drain(&mut registration);
        let too_brief = answer(&sent[0], 423, &[("Min-Expires", "1200")]);
        registration.handle_response(now, &too_brief);
        let (sent, _) = drain(&mut registration);
        assert_eq!(sent[0].header("expires"), Some("1200"));
    }

    #[test]
    fn unregister_sends_expires_zero_and_ends_unregistered() {
        let mut registration = registration(true);
        registration.start(Instant::ZERO);
        let (sent, _) = drain(&mut registration);
        registration.handle_response(Instant::ZERO, &answer(&sent[0], 200, &[("Expires", "600")]));
        let _ = drain(&mut registration);
        registration.unregister(Instant::from_millis(1_000));
        let (sent, _) = drain(&mut registration);
        assert_eq!(sent[0].header("expires"), Some("0"));
        let challenged = answer(&sent[0], 401, &[("WWW-Authenticate", CHALLENGE)]);
        registration.handle_response(Instant::from_millis(1_010), &challenged);
        let (sent, _) = drain(&mut registration);
        assert_eq!(sent[0].header("expires"), Some("0"));
        assert!(sent[0].header("authorization").is_some());
        registration.handle_response(Instant::from_millis(1_020), &answer(&sent[0], 200, &[]));
        assert_eq!(
            drain(&mut registration).1,
            vec![RegistrationStatus::Unregistered]
        );
        assert!(registration.is_unregistered());
        assert_eq!(registration.next_deadline(), None);
    }
}
