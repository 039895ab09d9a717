//! TLS settings of a TCP door, and turning them into a rustls configuration at start-up, so
//! that a bad path, a key that does not match its certificate or an unreadable CA stops the
//! server with the key's name before any port is opened.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde::Deserialize;

use super::ConfigError;

/// Whether clients must present a certificate signed by `ca_file`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificate asked for.
    #[default]
    None,
    /// Asked for and checked when given; clients without one are accepted.
    Optional,
    /// Required (mTLS): clients without a valid certificate are refused.
    Require,
}

/// `<door>.tls` in the YAML file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    pub enabled: bool,
    /// PEM certificate chain, leaf first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// PEM CA certificates that client certificates must chain to.
    pub ca_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

fn invalid(section: &str, key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: format!("{section}.tls.{key}"),
        reason: reason.into(),
    }
}

impl TlsConfig {
    /// True when TLS is on and clients must authenticate.
    pub fn requires_client_certificates(&self) -> bool {
        self.enabled && self.client_auth == ClientAuth::Require
    }

    /// The rustls configuration, or None when TLS is off. `section` names the door in errors
    /// ("grpc", "native"); `alpn` lists the protocols offered (h2 for gRPC).
    pub fn load(
        &self,
        section: &str,
        alpn: &[&[u8]],
    ) -> Result<Option<Arc<ServerConfig>>, ConfigError> {
        if !self.enabled {
            return Ok(None);
        }
        let path = |key: &str, p: &Option<PathBuf>| -> Result<PathBuf, ConfigError> {
            p.clone()
                .ok_or_else(|| invalid(section, key, "required when tls.enabled is true"))
        };
        let cert_file = path("cert_file", &self.cert_file)?;
        let key_file = path("key_file", &self.key_file)?;
        let certs = read_certificates(&cert_file).map_err(|e| invalid(section, "cert_file", e))?;
        let key = PrivateKeyDer::from_pem_file(&key_file)
            .map_err(|e| invalid(section, "key_file", format!("{}: {e}", key_file.display())))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid(section, "enabled", e.to_string()))?;
        let builder = match self.client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            auth => {
                let ca_file = path("ca_file", &self.ca_file)?;
                let mut roots = RootCertStore::empty();
                for cert in
                    read_certificates(&ca_file).map_err(|e| invalid(section, "ca_file", e))?
                {
                    roots.add(cert).map_err(|e| {
                        invalid(section, "ca_file", format!("{}: {e}", ca_file.display()))
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if auth == ClientAuth::Optional {
                    verifier.allow_unauthenticated()
                } else {
                    verifier
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| invalid(section, "ca_file", e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            invalid(
                section,
                "key_file",
                format!("does not go with cert_file {}: {e}", cert_file.display()),
            )
        })?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Some(Arc::new(config)))
    }
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}
