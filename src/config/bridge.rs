//! `bridge:` in the YAML file: joining this node to others through NATS (off unless it names
//! at least one NATS server), checked at start-up so that a bad prefix or pattern stops the
//! server with the key's name.

use std::path::PathBuf;

use serde::Deserialize;

use super::{invalid, ConfigError};
use crate::bridge::subject::Prefix;
use crate::engine::Pattern;

/// The NATS bridge.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeConfig {
    /// NATS servers of one cluster (`nats://host:port`, `tls://host:port`); empty: no bridge.
    pub urls: Vec<String>,
    /// The NATS tokens every bridged subject starts with.
    pub subject_prefix: String,
    /// Patterns of the local topics whose events are exported.
    pub export: Vec<String>,
    /// Patterns of the topics that may be imported, for local subscribers that ask for them.
    pub import: Vec<String>,
    /// This node's name in the origin of the events it exports; empty: the host's name.
    pub node_id: String,
    /// Health checks report NOT_SERVING while the bridge is disconnected from NATS.
    pub required: bool,
    /// NATS user and password, if the servers ask for them.
    pub user: Option<String>,
    pub password: Option<String>,
    /// A NATS credentials file (JWT and NKey seed).
    pub credentials_file: Option<PathBuf>,
    /// PEM CA certificates for `tls://` servers (default: the system's roots).
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            urls: Vec::new(),
            subject_prefix: "eventstream".into(),
            export: vec!["**".into()],
            import: vec!["**".into()],
            node_id: String::new(),
            required: false,
            user: None,
            password: None,
            credentials_file: None,
            tls_ca_file: None,
        }
    }
}

impl BridgeConfig {
    /// True when the bridge is to run.
    pub fn enabled(&self) -> bool {
        !self.urls.is_empty()
    }

    /// The subject prefix, checked.
    pub fn prefix(&self) -> Result<Prefix, ConfigError> {
        Prefix::new(&self.subject_prefix)
            .map_err(|e| invalid("bridge.subject_prefix", e.to_string()))
    }

    /// The export patterns, checked.
    pub fn export_patterns(&self) -> Result<Vec<Pattern>, ConfigError> {
        patterns("bridge.export", &self.export)
    }

    /// The import patterns, checked.
    pub fn import_patterns(&self) -> Result<Vec<Pattern>, ConfigError> {
        patterns("bridge.import", &self.import)
    }

    /// Checks every key of the section (nothing when the bridge is off).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        for url in &self.urls {
            let known = ["nats://", "tls://"].iter().any(|s| url.starts_with(s));
            if !known || url.len() <= "nats://".len() {
                let why = format!("{url:?} is not nats://HOST:PORT or tls://HOST:PORT");
                return Err(invalid("bridge.urls", why));
            }
        }
        self.prefix()?;
        self.export_patterns()?;
        self.import_patterns()?;
        if self.user.is_some() != self.password.is_some() {
            return Err(invalid("bridge.user", "user and password go together"));
        }
        Ok(())
    }
}

fn patterns(key: &str, texts: &[String]) -> Result<Vec<Pattern>, ConfigError> {
    texts
        .iter()
        .map(|text| {
            Pattern::parse(text.as_bytes()).map_err(|e| invalid(key, format!("{text:?}: {e}")))
        })
        .collect()
}
