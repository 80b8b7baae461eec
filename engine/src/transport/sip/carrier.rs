//! The local carrier of the embedded default: phone numbers with no
//! account anywhere, for engines (or test peers) on one machine.
//!
//! It is only a routing table, E.164 number -> the SIP address of the
//! [`SipServer`](super::SipServer) that owns the number. An outbound call
//! to a local number ([`Route::Local`](super::Route::Local)) sends its
//! INVITE straight to that address with the number as the Request-URI user
//! (`sip:+15550100@127.0.0.1:5070`); the owning server answers it if the
//! number is among its [`SipConfig::numbers`](super::SipConfig::numbers)
//! (or it answers any number). No registration, no authentication: the
//! table is shared in memory (clone the carrier) by the one process that
//! runs the engines, typically `callingbox demo`. A number not in the table
//! cannot be dialled ([`DialError::UnknownNumber`](super::DialError)).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use thiserror::Error;

/// A number that is not E.164.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0:?} is not an E.164 number (+ and 1 to 15 digits)")]
pub struct NotE164(pub String);

/// Whether `number` is E.164: `+`, then 1-15 digits, the first not 0.
pub fn is_e164(number: &str) -> bool {
    number.strip_prefix('+').is_some_and(|digits| {
        (1..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0')
    })
}

/// The routing table of local numbers. Cheap to clone; clones share it.
#[derive(Debug, Clone, Default)]
pub struct LocalCarrier {
    routes: Arc<RwLock<HashMap<String, SocketAddr>>>,
}

impl LocalCarrier {
    /// An empty carrier.
    pub fn new() -> Self {
        LocalCarrier::default()
    }

    /// Routes `number` to the SIP server at `sip` (replacing any route it had).
    pub fn assign(&self, number: &str, sip: SocketAddr) -> Result<(), NotE164> {
        if !is_e164(number) {
            return Err(NotE164(number.to_owned()));
        }
        self.write().insert(number.to_owned(), sip);
        Ok(())
    }

    /// Removes the route of `number`; whether it had one.
    pub fn release(&self, number: &str) -> bool {
        self.write().remove(number).is_some()
    }

    /// Where `number` is answered.
    pub fn resolve(&self, number: &str) -> Option<SocketAddr> {
        self.read().get(number).copied()
    }

    /// Every route, sorted by number.
    pub fn routes(&self) -> Vec<(String, SocketAddr)> {
        let mut routes: Vec<_> = self
            .read()
            .iter()
            .map(|(number, sip)| (number.clone(), *sip))
            .collect();
        routes.sort();
        routes
    }

    // A panic elsewhere while holding the lock leaves a valid map: recover it.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, SocketAddr>> {
        self.routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, SocketAddr>> {
        self.routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_route_to_their_server_and_clones_share_the_table() {
        let carrier = LocalCarrier::new();
        let shared = carrier.clone();
        let b: SocketAddr = "127.0.0.1:5070".parse().expect("addr");
        carrier.assign("+15550100", b).expect("e164");
        assert_eq!(shared.resolve("+15550100"), Some(b));
        assert_eq!(shared.resolve("+15550101"), None);
        assert_eq!(carrier.assign("5550100", b), Err(NotE164("5550100".into())));
        assert!(carrier.assign("+0123", b).is_err());
        assert!(carrier.assign("+1234567890123456", b).is_err());
        assert!(carrier.assign("+1 555", b).is_err());
        assert_eq!(shared.routes(), vec![("+15550100".to_owned(), b)]);
        assert!(shared.release("+15550100"));
        assert!(!carrier.release("+15550100"));
        assert_eq!(carrier.resolve("+15550100"), None);
    }
}
