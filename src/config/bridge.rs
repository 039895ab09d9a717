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
    /// A PEM client certificate, for NATS servers that verify their clients (with
    /// `tls_key_file`).
    pub tls_cert_file: Option<PathBuf>,
    /// The PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
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
            tls_cert_file: None,
            tls_key_file: None,
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

    /// True when any TLS file is given: the connection must then be TLS, whatever the URL's
    /// scheme, rather than fall back to plain text with a server that does not offer it.
    pub fn tls_required(&self) -> bool {
        self.tls_ca_file.is_some() || self.tls_cert_file.is_some()
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
        // The origin header's fields are space-separated (docs/BRIDGE.md).
        if self
            .node_id
            .contains(|c: char| c.is_whitespace() || c.is_control())
        {
            let why = format!("{:?} has a space or a control character", self.node_id);
            return Err(invalid("bridge.node_id", why));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            let why = "tls_cert_file and tls_key_file go together";
            return Err(invalid("bridge.tls_cert_file", why));
        }
        // The bridge reads these on its own thread, after start-up: a file it could not read
        // (missing, a directory, not permitted) is refused here, where it stops the server
        // with the key's name.
        let files = [
            ("bridge.credentials_file", &self.credentials_file),
            ("bridge.tls_ca_file", &self.tls_ca_file),
            ("bridge.tls_cert_file", &self.tls_cert_file),
            ("bridge.tls_key_file", &self.tls_key_file),
        ];
        for (key, file) in files {
            if let Some(path) = file {
                std::fs::read(path)
                    .map_err(|e| invalid(key, format!("{}: {e}", path.display())))?;
            }
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

#[cfg(test)]
mod tests {
    use super::super::Config;

    /// A file that exists wherever the tests run.
    const SOME_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");

    /// The first word of the error of `yaml`'s bridge section: the key at fault.
    fn refused_key(yaml: &str) -> String {
        let e = Config::from_yaml(yaml).unwrap().validate().unwrap_err();
        e.to_string().split(':').next().unwrap().to_owned()
    }

    #[test]
    fn the_bridge_is_off_without_urls_and_its_keys_are_then_not_checked() {
        let config = Config::from_yaml("bridge:\n  subject_prefix: 'a b'\n").unwrap();
        assert!(!config.bridge.enabled());
        config.validate().unwrap();
    }

    #[test]
    fn each_bad_key_is_named() {
        let on = "bridge:\n  urls: [nats://127.0.0.1:4222]\n";
        Config::from_yaml(on).unwrap().validate().unwrap();
        let cert = format!("  tls_cert_file: {SOME_FILE}\n");
        for (extra, key) in [
            ("", "bridge.urls"),
            ("  subject_prefix: 'a b'\n", "bridge.subject_prefix"),
            ("  export: ['a/**/b']\n", "bridge.export"),
            ("  import: ['']\n", "bridge.import"),
            ("  user: u\n", "bridge.user"),
            ("  node_id: 'a b'\n", "bridge.node_id"),
            (&cert, "bridge.tls_cert_file"),
            ("  tls_ca_file: /no/such/ca.pem\n", "bridge.tls_ca_file"),
            (
                "  credentials_file: /no/such.creds\n",
                "bridge.credentials_file",
            ),
            (
                &format!("{cert}  tls_key_file: /no/such/key.pem\n"),
                "bridge.tls_key_file",
            ),
        ] {
            let yaml = match extra {
                "" => "bridge:\n  urls: [http://127.0.0.1:4222]\n".to_owned(),
                _ => format!("{on}{extra}"),
            };
            assert_eq!(refused_key(&yaml), key, "{yaml}");
        }
    }

    #[test]
    fn any_tls_file_requires_tls() {
        let on = "bridge:\n  urls: [nats://127.0.0.1:4222]\n";
        assert!(!Config::from_yaml(on).unwrap().bridge.tls_required());
        let ca = format!("{on}  tls_ca_file: {SOME_FILE}\n");
        assert!(Config::from_yaml(&ca).unwrap().bridge.tls_required());
    }
}
