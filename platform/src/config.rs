//! `callingbox serve` configuration: defaults, then an optional TOML file,
//! then environment variables, then command-line flags (each overriding the
//! one before).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde::Deserialize;
use thiserror::Error;

use crate::billing::Pricing;

/// Why the configuration could not be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("invalid configuration in {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message.
        message: String,
    },
    /// An environment variable holds a bad value.
    #[error("invalid {name}={value:?}: {message}")]
    Env {
        /// Variable.
        name: String,
        /// Its value.
        value: String,
        /// Why.
        message: String,
    },
}

/// The SIP side of the node.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SipSettings {
    /// UDP address of the SIP socket.
    pub listen: SocketAddr,
    /// First and last RTP port.
    pub rtp_ports: (u16, u16),
}

impl Default for SipSettings {
    fn default() -> Self {
        SipSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 5060)),
            rtp_ports: (40_000, 40_999),
        }
    }
}

/// Everything `serve` needs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP address of the API.
    pub listen: SocketAddr,
    /// `sqlite://data/callingbox.db` (default) or `postgres://...`.
    pub database_url: String,
    /// This node's id (calls it runs are stamped with it; a restart marks
    /// the node's orphaned live calls failed).
    pub node_id: String,
    /// Per connected minute, milli-cents.
    pub per_minute_milli_cents: i64,
    /// Longest call, seconds (the hold covers it).
    pub max_call_seconds: i64,
    /// Credit for each new organization, milli-cents.
    pub starting_credit_milli_cents: i64,
    /// Numbers sold: `local` (loopback carrier) or `sip_trunk`.
    pub carrier: String,
    /// Numbers a SIP trunk serves (carrier `sip_trunk`).
    pub trunk_numbers: Vec<String>,
    /// SIP settings.
    pub sip: SipSettings,
    /// Allow webhook deliveries to loopback and private addresses (tests,
    /// the local demo). Off by default.
    pub allow_private_webhooks: bool,
    /// The address WebRTC calls' media binds and offers to browsers as its
    /// ICE candidate: one the browsers can reach (default loopback, for a
    /// browser on this machine).
    pub webrtc_ip: IpAddr,
}

impl Default for Config {
    fn default() -> Self {
        let pricing = Pricing::default();
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: "sqlite://data/callingbox.db".into(),
            node_id: "node-1".into(),
            per_minute_milli_cents: pricing.per_minute_milli_cents,
            max_call_seconds: pricing.max_call_seconds,
            starting_credit_milli_cents: pricing.starting_credit_milli_cents,
            carrier: "local".into(),
            trunk_numbers: Vec::new(),
            sip: SipSettings::default(),
            allow_private_webhooks: false,
            webrtc_ip: IpAddr::from([127, 0, 0, 1]),
        }
    }
}

impl Config {
    /// Defaults, overridden by `file` (if given) and the environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                toml::from_str(&text).map_err(|err| ConfigError::Parse {
                    path: path.display().to_string(),
                    message: err.to_string(),
                })?
            }
            None => Config::default(),
        };
        config.apply_env(|name| std::env::var(name).ok())?;
        Ok(config)
    }

    /// Applies `DATABASE_URL` and the `CALLINGBOX_*` variables.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parsed<T: std::str::FromStr>(name: &str, value: String) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            value.parse().map_err(|err: T::Err| ConfigError::Env {
                name: name.into(),
                value,
                message: err.to_string(),
            })
        }
        if let Some(v) = var("DATABASE_URL") {
            self.database_url = v;
        }
        if let Some(v) = var("CALLINGBOX_LISTEN") {
            self.listen = parsed("CALLINGBOX_LISTEN", v)?;
        }
        if let Some(v) = var("CALLINGBOX_NODE_ID") {
            self.node_id = v;
        }
        if let Some(v) = var("CALLINGBOX_SIP_LISTEN") {
            self.sip.listen = parsed("CALLINGBOX_SIP_LISTEN", v)?;
        }
        if let Some(v) = var("CALLINGBOX_CARRIER") {
            self.carrier = v;
        }
        if let Some(v) = var("CALLINGBOX_WEBRTC_IP") {
            self.webrtc_ip = parsed("CALLINGBOX_WEBRTC_IP", v)?;
        }
        if let Some(v) = var("CALLINGBOX_ALLOW_PRIVATE_WEBHOOKS") {
            self.allow_private_webhooks = parsed("CALLINGBOX_ALLOW_PRIVATE_WEBHOOKS", v)?;
        }
        Ok(())
    }

    /// The prices and limits.
    pub fn pricing(&self) -> Pricing {
        Pricing {
            per_minute_milli_cents: self.per_minute_milli_cents,
            max_call_seconds: self.max_call_seconds,
            starting_credit_milli_cents: self.starting_credit_milli_cents,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_then_the_environment_override_the_defaults() {
        let mut config: Config = toml::from_str(
            "listen = \"0.0.0.0:9000\"\ncarrier = \"sip_trunk\"\ntrunk_numbers = [\"+14155550000\"]\n[sip]\nlisten = \"0.0.0.0:5070\"\n",
        )
        .expect("parses");
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.database_url, Config::default().database_url);
        config
            .apply_env(|name| (name == "DATABASE_URL").then(|| "postgres://db/x".to_owned()))
            .expect("applies");
        assert_eq!(config.database_url, "postgres://db/x");
        assert_eq!(config.sip.listen.port(), 5070);
        let bad = config.apply_env(|name| (name == "CALLINGBOX_LISTEN").then(|| "nope".to_owned()));
        assert!(
            bad.expect_err("refused")
                .to_string()
                .contains("CALLINGBOX_LISTEN")
        );
        assert!(toml::from_str::<Config>("lisen = 1").is_err());
    }
}
