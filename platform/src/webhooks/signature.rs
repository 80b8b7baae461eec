//! The `CallingBox-Signature` scheme: `t=<unix seconds>,v1=<hex>` where the
//! hex is HMAC-SHA256 keyed with the whole secret string (`whsec_...` as
//! UTF-8, not decoded) over `"<t>." + raw body`. [`verify`] is the helper
//! receivers written in Rust use; it accepts what the Python SDK accepts.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "CallingBox-Signature";

/// How far the signed time may be from the verifier's clock, seconds.
pub const DEFAULT_TOLERANCE_SECONDS: i64 = 300;

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = match HmacSha256::new_from_slice(secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The lowercase hex `v1` signature of `body` signed at `timestamp`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
}

/// The whole header value: `t=<timestamp>,v1=<hex>`.
pub fn signature_header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", sign(secret, timestamp, body))
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignatureError {
    /// A part of the header has an empty key or value.
    #[error("malformed CallingBox-Signature header")]
    Malformed,
    /// `t=` is not an integer.
    #[error("timestamp in signature is not numeric")]
    BadTimestamp,
    /// No `t=`.
    #[error("missing t= in CallingBox-Signature header")]
    MissingTimestamp,
    /// No `v1=`.
    #[error("missing v1= in CallingBox-Signature header")]
    MissingSignature,
    /// The signed time is too far from now.
    #[error("timestamp drift {drift}s exceeds tolerance {tolerance}s")]
    OutsideTolerance {
        /// `|now - t|`, seconds.
        drift: i64,
        /// The tolerance, seconds.
        tolerance: i64,
    },
    /// No `v1` matches.
    #[error("webhook signature mismatch")]
    Mismatch,
    /// The signature holds but the body is not JSON.
    #[error("webhook body is not valid JSON: {0}")]
    InvalidJson(String),
}

/// Verifies `header` for the raw `body` with `secret` at `now_unix`
/// (seconds). Every `v1` is compared in constant time and any match is
/// accepted (several appear during a rotation); unknown keys are ignored;
/// `tolerance_seconds` of 0 skips the time check (tests only).
pub fn verify(
    secret: &str,
    header: &str,
    body: &[u8],
    now_unix: i64,
    tolerance_seconds: i64,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() || value.is_empty() {
            return Err(SignatureError::Malformed);
        }
        match key {
            "t" => {
                timestamp = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| SignatureError::BadTimestamp)?,
                )
            }
            "v1" => signatures.push(value),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::MissingTimestamp)?;
    if signatures.is_empty() {
        return Err(SignatureError::MissingSignature);
    }
    if tolerance_seconds > 0 {
        let drift = now_unix.saturating_sub(timestamp).saturating_abs();
        if drift > tolerance_seconds {
            return Err(SignatureError::OutsideTolerance {
                drift,
                tolerance: tolerance_seconds,
            });
        }
    }
    let expected = mac(secret, timestamp, body);
    let matched = signatures.iter().any(|candidate| {
        // `verify_slice` compares in constant time.
        hex::decode(candidate).is_ok_and(|bytes| expected.clone().verify_slice(&bytes).is_ok())
    });
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Verifies like [`verify`] with the default tolerance, then parses the
/// body: the Rust twin of the Python SDK's `construct_event`.
pub fn construct_event(
    secret: &str,
    header: &str,
    body: &[u8],
    now_unix: i64,
) -> Result<serde_json::Value, SignatureError> {
    verify(secret, header, body, now_unix, DEFAULT_TOLERANCE_SECONDS)?;
    serde_json::from_slice(body).map_err(|err| SignatureError::InvalidJson(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_1234567890abcdef1234567890abcdef";

    #[test]
    fn a_signature_is_hmac_sha256_of_t_dot_body_keyed_with_the_whole_secret() {
        // Independent check: HMAC-SHA256 computed by the `hmac` crate over
        // the concatenation, against the function's own formatting.
        let body = br#"{"id":"x"}"#;
        let header = signature_header(SECRET, 1_713_268_800, body);
        let mut direct = HmacSha256::new_from_slice(SECRET.as_bytes()).expect("key");
        direct.update(b"1713268800.{\"id\":\"x\"}");
        let hex = hex::encode(direct.finalize().into_bytes());
        assert_eq!(header, format!("t=1713268800,v1={hex}"));
        assert_eq!(hex.len(), 64);
        assert!(
            hex.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        );
    }

    #[test]
    fn verification_accepts_any_matching_v1_within_the_tolerance() {
        let body = b"{\"a\":1}";
        let t = 1_000_000;
        let good = sign(SECRET, t, body);
        let header = format!("t={t}, v1=deadbeef ,v1={good},x=ignored");
        assert_eq!(verify(SECRET, &header, body, t + 300, 300), Ok(()));
        assert_eq!(
            verify(SECRET, &header, body, t + 301, 300),
            Err(SignatureError::OutsideTolerance {
                drift: 301,
                tolerance: 300
            })
        );
        assert_eq!(verify(SECRET, &header, body, t + 10_000, 0), Ok(()));
        assert_eq!(
            verify(SECRET, &header, b"{\"a\":2}", t, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("whsec_other", &header, body, t, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn construct_event_verifies_then_parses() {
        let body = br#"{"id":"e1","type":"call.queued"}"#;
        let header = signature_header(SECRET, 50, body);
        let event = construct_event(SECRET, &header, body, 60).expect("verifies");
        assert_eq!(event["id"], "e1");
        let header = signature_header(SECRET, 50, b"not json");
        assert!(matches!(
            construct_event(SECRET, &header, b"not json", 60),
            Err(SignatureError::InvalidJson(_))
        ));
        assert_eq!(
            construct_event(SECRET, &header, b"not json", 1000),
            Err(SignatureError::OutsideTolerance {
                drift: 950,
                tolerance: 300
            })
        );
    }

    #[test]
    fn malformed_headers_are_refused_with_the_reason() {
        let body = b"{}";
        assert_eq!(
            verify(SECRET, "t=1,v1=", body, 1, 300),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify(SECRET, "t=abc,v1=00", body, 1, 300),
            Err(SignatureError::BadTimestamp)
        );
        assert_eq!(
            verify(SECRET, "v1=00", body, 1, 300),
            Err(SignatureError::MissingTimestamp)
        );
        assert_eq!(
            verify(SECRET, "t=1", body, 1, 300),
            Err(SignatureError::MissingSignature)
        );
        assert_eq!(
            verify(SECRET, "", body, 1, 300),
            Err(SignatureError::Malformed)
        );
    }
}
