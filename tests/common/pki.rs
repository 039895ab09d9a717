//! Certificates for the TLS tests, made fresh per test (rcgen): a CA, a server certificate
//! for `localhost` and `127.0.0.1`, and a client certificate, with the server's settings and
//! a tokio-rustls client configuration that trusts the CA.

use std::path::Path;
use std::sync::Arc;

use eventstream::config::{ClientAuth, TlsConfig};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio_rustls::rustls;

pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    pub client_cert: String,
    pub client_key: String,
}

/// A fresh CA with a server and a client certificate; the server's files are written to
/// `dir` (ca.crt, server.crt, server.key).
pub fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["client".into()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("ca.crt", &ca_cert.pem());
    write("server.crt", &server.pem());
    write("server.key", &server_key.serialize_pem());
    Pki {
        ca_pem: ca_cert.pem(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
        dir,
    }
}

/// The server's `tls` settings for the files of [`pki`].
pub fn tls_config(dir: &Path, client_auth: ClientAuth) -> TlsConfig {
    TlsConfig {
        enabled: true,
        cert_file: Some(dir.join("server.crt")),
        key_file: Some(dir.join("server.key")),
        ca_file: Some(dir.join("ca.crt")),
        client_auth,
    }
}

/// A client that trusts the CA, offers ALPN h2, and presents its certificate if `with_cert`.
pub fn client_config(pki: &Pki, with_cert: bool) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = if with_cert {
        let cert = CertificateDer::from_pem_slice(pki.client_cert.as_bytes()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(pki.client_key.as_bytes()).unwrap();
        builder.with_client_auth_cert(vec![cert], key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// The native CLI client's TLS settings for this PKI with the client certificate (mTLS): the
/// native client reads PEM files, so the certificate and key are written beside the CA.
pub fn native_client_tls(pki: &Pki) -> eventstream::tls::ClientTls {
    let dir = pki.dir.path();
    std::fs::write(dir.join("client.crt"), &pki.client_cert).unwrap();
    std::fs::write(dir.join("client.key"), &pki.client_key).unwrap();
    eventstream::tls::ClientTls {
        ca_file: dir.join("ca.crt").to_string_lossy().into_owned(),
        cert_file: Some(dir.join("client.crt").to_string_lossy().into_owned()),
        key_file: Some(dir.join("client.key").to_string_lossy().into_owned()),
    }
}
