//! SIP digest authentication for outbound calls (RFC 3261 section 22,
//! RFC 2617 with RFC 8760's MD5): a trunk answers our INVITE with
//! `401 WWW-Authenticate` or `407 Proxy-Authenticate`; we answer the
//! challenge with `Authorization` / `Proxy-Authorization` on a new INVITE.
//!
//! Supported: `algorithm=MD5` (the default) and `MD5-sess`, with
//! `qop=auth` when offered, or the RFC 2069 form when no qop is offered.
//! `qop=auth-int` alone and other algorithms (SHA-256, ...) are refused:
//! the trunks the engine targets all offer MD5.

use std::fmt::Write as _;

use md5::{Digest as _, Md5};
use thiserror::Error;

/// A SIP account's user name and password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The authentication user name.
    pub username: String,
    /// The password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password in logs.
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Why a challenge cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DigestError {
    /// The scheme is not `Digest` (e.g. `Basic`, forbidden in SIP).
    #[error("not a Digest challenge")]
    NotDigest,
    /// A required parameter is missing.
    #[error("the challenge has no {0}")]
    Missing(&'static str),
    /// An algorithm other than MD5 / MD5-sess.
    #[error("unsupported digest algorithm {0}")]
    Algorithm(String),
    /// A qop list without `auth`.
    #[error("unsupported qop {0}")]
    Qop(String),
}

/// The hash algorithm of a challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `MD5`.
    Md5,
    /// `MD5-sess`: HA1 also hashes the nonce and cnonce.
    Md5Sess,
}

/// A parsed `WWW-Authenticate` / `Proxy-Authenticate` digest challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// The protection space.
    pub realm: String,
    /// The server's nonce.
    pub nonce: String,
    /// Returned unchanged, when present.
    pub opaque: Option<String>,
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Whether `qop=auth` is used (the server offered it).
    pub qop_auth: bool,
    /// The nonce was stale: the credentials were right, retry with the new one.
    pub stale: bool,
}

impl Challenge {
    /// Parses one challenge header value (`Digest realm="..", nonce=".."`).
    pub fn parse(value: &str) -> Result<Challenge, DigestError> {
        let value = value.trim();
        let (scheme, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("digest") {
            return Err(DigestError::NotDigest);
        }
        let params = auth_params(rest);
        let get = |name: &str| {
            params
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.as_str())
        };
        let realm = get("realm")
            .ok_or(DigestError::Missing("realm"))?
            .to_owned();
        let nonce = get("nonce")
            .ok_or(DigestError::Missing("nonce"))?
            .to_owned();
        let algorithm = match get("algorithm") {
            None => Algorithm::Md5,
            Some(name) if name.eq_ignore_ascii_case("MD5") => Algorithm::Md5,
            Some(name) if name.eq_ignore_ascii_case("MD5-sess") => Algorithm::Md5Sess,
            Some(other) => return Err(DigestError::Algorithm(other.to_owned())),
        };
        let qop_auth = match get("qop") {
            None => false,
            Some(list) => {
                if list
                    .split(',')
                    .any(|qop| qop.trim().eq_ignore_ascii_case("auth"))
                {
                    true
                } else {
                    return Err(DigestError::Qop(list.to_owned()));
                }
            }
        };
        Ok(Challenge {
            realm,
            nonce,
            opaque: get("opaque").map(str::to_owned),
            algorithm,
            qop_auth,
            stale: get("stale").is_some_and(|stale| stale.eq_ignore_ascii_case("true")),
        })
    }

    /// The credentials header value answering this challenge for a request
    /// of `method` to `uri`; `cnonce` is our random nonce, `nc` counts the
    /// requests made with this nonce (1 for the first).
    pub fn answer(
        &self,
        credentials: &Credentials,
        method: &str,
        uri: &str,
        cnonce: &str,
        nc: u32,
    ) -> String {
        let nc = format!("{nc:08x}");
        let mut ha1 = md5_hex(&format!(
            "{}:{}:{}",
            credentials.username, self.realm, credentials.password
        ));
        if self.algorithm == Algorithm::Md5Sess {
            ha1 = md5_hex(&format!("{ha1}:{}:{cnonce}", self.nonce));
        }
        let ha2 = md5_hex(&format!("{method}:{uri}"));
        let response = if self.qop_auth {
            md5_hex(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", self.nonce))
        } else {
            md5_hex(&format!("{ha1}:{}:{ha2}", self.nonce))
        };
        let mut header = String::with_capacity(256);
        let _ = write!(
            header,
            "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{response}\"",
            quote(&credentials.username),
            quote(&self.realm),
            quote(&self.nonce),
        );
        let algorithm = match self.algorithm {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
        };
        let _ = write!(header, ", algorithm={algorithm}");
        if self.qop_auth {
            let _ = write!(header, ", cnonce=\"{}\", qop=auth, nc={nc}", quote(cnonce));
        }
        if let Some(opaque) = &self.opaque {
            let _ = write!(header, ", opaque=\"{}\"", quote(opaque));
        }
        header
    }
}

fn md5_hex(text: &str) -> String {
    let digest = Md5::digest(text.as_bytes());
    let mut hex = String::with_capacity(32);
    for byte in digest {
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// Escapes `"` and `\` inside a quoted-string.
fn quote(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `key=value, key="quoted, value"` into pairs (quotes and escapes removed).
fn auth_params(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.trim().is_empty() {
            return params;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' => value.extend(chars.next()),
                        c => value.push(c),
                    }
                }
            }
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        params.push((key.trim().to_owned(), value.trim().to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mufasa(password: &str) -> Credentials {
        Credentials {
            username: "Mufasa".into(),
            password: password.into(),
        }
    }

    #[test]
    fn rfc_2617_example_with_qop_auth() {
        // RFC 2617, section 3.5.
        let challenge = Challenge::parse(
            "Digest realm=\"testrealm@host.com\", qop=\"auth,auth-int\", \
             nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", \
             opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"",
        )
        .expect("parses");
        assert!(challenge.qop_auth);
        assert_eq!(challenge.algorithm, Algorithm::Md5);
        let header = challenge.answer(
            &mufasa("Circle Of Life"),
            "GET",
            "/dir/index.html",
            "0a4f113b",
            1,
        );
        assert!(
            header.contains("response=\"6629fae49393a05397450978507c4ef1\""),
            "{header}"
        );
        assert!(header.contains("nc=00000001"), "{header}");
        assert!(
            header.contains("opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""),
            "{header}"
        );
    }

    #[test]
    fn rfc_7616_md5_example() {
        // RFC 7616, section 3.9.1 (the MD5 half; RFC 8760 keeps MD5 for SIP).
        let challenge = Challenge::parse(
            "Digest realm=\"http-auth@example.org\", qop=\"auth, auth-int\", algorithm=MD5, \
             nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\", \
             opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"",
        )
        .expect("parses");
        let header = challenge.answer(
            &mufasa("Circle of Life"),
            "GET",
            "/dir/index.html",
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
            1,
        );
        assert!(
            header.contains("response=\"8ca523f5e9506fed4657c9700eebdbec\""),
            "{header}"
        );
    }

    #[test]
    fn without_qop_the_rfc_2069_form_is_used() {
        let challenge =
            Challenge::parse("Digest realm=\"sip.example\",nonce=\"abc\"").expect("parses");
        assert!(!challenge.qop_auth);
        let header = challenge.answer(
            &Credentials {
                username: "alice".into(),
                password: "secret".into(),
            },
            "INVITE",
            "sip:+15550001@sip.example",
            "unused",
            1,
        );
        // MD5(MD5(alice:sip.example:secret):abc:MD5(INVITE:sip:+15550001@sip.example))
        let ha1 = md5_hex("alice:sip.example:secret");
        let ha2 = md5_hex("INVITE:sip:+15550001@sip.example");
        let expected = md5_hex(&format!("{ha1}:abc:{ha2}"));
        assert!(
            header.contains(&format!("response=\"{expected}\"")),
            "{header}"
        );
        assert!(!header.contains("qop"), "{header}");
    }

    #[test]
    fn unsupported_challenges_are_typed_errors() {
        assert_eq!(
            Challenge::parse("Basic realm=\"x\""),
            Err(DigestError::NotDigest)
        );
        assert_eq!(
            Challenge::parse("Digest realm=\"x\""),
            Err(DigestError::Missing("nonce"))
        );
        assert_eq!(
            Challenge::parse("Digest realm=\"x\", nonce=\"n\", algorithm=SHA-256"),
            Err(DigestError::Algorithm("SHA-256".into()))
        );
        assert!(matches!(
            Challenge::parse("Digest realm=\"x\", nonce=\"n\", qop=\"auth-int\""),
            Err(DigestError::Qop(_))
        ));
        let stale = Challenge::parse(
            "Digest realm=\"a\\\"b\", nonce=\"n, with comma\", stale=TRUE, algorithm=md5-sess",
        )
        .expect("parses");
        assert_eq!(stale.realm, "a\"b");
        assert_eq!(stale.nonce, "n, with comma");
        assert!(stale.stale);
        assert_eq!(stale.algorithm, Algorithm::Md5Sess);
        for junk in ["", "Digest", "Digest ,,,", "Digest =\"", "Digest a=\"\\"] {
            let _ = Challenge::parse(junk);
        }
    }

    #[test]
    fn the_password_is_never_printed() {
        let printed = format!("{:?}", mufasa("Circle Of Life"));
        assert!(!printed.contains("Circle"), "{printed}");
    }
}
