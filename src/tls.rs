//! TLS for the TCP doors: a rustls session shared by a connection's reader and writer tasks
//! (one thread, so a `RefCell`), turning socket bytes into plaintext and back. rustls does the
//! protocol; this only moves bytes between it and the doors' buffers.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::sync::Arc;

use crate::accept::Half;
use bytes::BytesMut;
use futures_lite::AsyncWriteExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ServerConfig, ServerConnection};

/// A connection's transport: plaintext, or TLS.
pub enum Transport {
    Plain,
    Tls(Box<RefCell<ServerConnection>>),
}

impl Transport {
    /// Plaintext when `config` is None.
    pub fn new(config: Option<&Arc<ServerConfig>>) -> io::Result<Transport> {
        Ok(match config {
            None => Transport::Plain,
            Some(c) => {
                let session = ServerConnection::new(c.clone()).map_err(io::Error::other)?;
                Transport::Tls(Box::new(RefCell::new(session)))
            }
        })
    }

    /// True for TLS: socket bytes must go through [`Transport::open`] first.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// One socket read, appending the plaintext it carried to `plain` (reading at most about
    /// `size` bytes). `wire` is the connection's read buffer, zeroed once and reused: reading
    /// straight into `plain` would need its spare capacity zeroed for every read (64 KiB of
    /// memset per wake-up, 7% of the gRPC door's instructions), where copying out costs only
    /// the bytes that came. Ok(false): the peer closed.
    pub async fn read(
        &self,
        stream: &mut Half,
        plain: &mut BytesMut,
        size: usize,
        wire: &mut Vec<u8>,
    ) -> io::Result<bool> {
        // Grown to the largest size asked for so far and never shrunk (zeroed once per
        // growth); each read may fill all of it. Idle connections stay at the first size.
        if wire.len() < size {
            wire.resize(size, 0);
        }
        let n = stream.read(wire).await?;
        if n == 0 {
            return Ok(false);
        }
        self.open(&wire[..n], plain)
    }

    /// Feeds bytes read from the socket; appends the plaintext they carried to `plain`.
    /// Returns false once the peer closed the TLS session. A TLS error (a plaintext client,
    /// a missing or wrong client certificate) is an error: the caller closes the connection
    /// after the writer sent the alert rustls queued.
    pub fn open(&self, mut wire: &[u8], plain: &mut BytesMut) -> io::Result<bool> {
        let Transport::Tls(session) = self else {
            plain.extend_from_slice(wire);
            return Ok(true);
        };
        let mut session = session.borrow_mut();
        while !wire.is_empty() {
            // rustls reads nothing once the peer's close_notify is in: what follows it in
            // this read is not data (and would never be consumed).
            if session.read_tls(&mut wire)? == 0 {
                break;
            }
            session.process_new_packets().map_err(io::Error::other)?;
        }
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match session.reader().read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => plain.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => return Err(e),
            }
        }
    }

    /// True when TLS has bytes of its own to send (handshake, alerts).
    pub fn wants_write(&self) -> bool {
        match self {
            Transport::Plain => false,
            Transport::Tls(session) => session.borrow().wants_write(),
        }
    }

    /// Writes `plain` to the socket, through TLS when on (`wire` is scratch space for records),
    /// with whatever TLS has to send of its own.
    pub async fn write(
        &self,
        stream: &mut Half,
        plain: &[u8],
        wire: &mut Vec<u8>,
    ) -> io::Result<()> {
        if !self.is_tls() {
            return stream.write_all(plain).await;
        }
        wire.clear();
        self.seal(plain, wire)?;
        stream.write_all(wire).await
    }

    /// Encrypts `plain` (may be empty) into `wire`, with whatever else TLS has to send.
    pub fn seal(&self, plain: &[u8], wire: &mut Vec<u8>) -> io::Result<()> {
        let Transport::Tls(session) = self else {
            wire.extend_from_slice(plain);
            return Ok(());
        };
        let mut session = session.borrow_mut();
        if !plain.is_empty() {
            session.writer().write_all(plain)?;
        }
        while session.wants_write() {
            session.write_tls(wire)?;
        }
        Ok(())
    }
}

/// PEM files for a TLS client: the CA to trust, and optionally a certificate and key (mTLS).
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    pub ca_file: String,
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

/// A TLS client stream over `tcp` to `addr` (its host is the name checked in the server's
/// certificate), offering `alpn`.
pub fn client_stream(
    tcp: std::net::TcpStream,
    addr: &str,
    tls: &ClientTls,
    alpn: &[&[u8]],
) -> Result<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>, String> {
    let err = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&tls.ca_file).map_err(|e| err(&tls.ca_file, &e))? {
        roots
            .add(cert.map_err(|e| err(&tls.ca_file, &e))?)
            .map_err(|e| err(&tls.ca_file, &e))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err("protocol versions", &e))?
        .with_root_certificates(roots);
    let mut config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect())
                .map_err(|e| err(cert, &e))?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| err(key, &e))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| err("client certificate", &e))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_matches(['[', ']']);
    let name = ServerName::try_from(host.to_owned()).map_err(|e| err(host, &e))?;
    let session = rustls::ClientConnection::new(Arc::new(config), name)
        .map_err(|e| err("TLS session", &e))?;
    Ok(rustls::StreamOwned::new(session, tcp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{ClientConfig, ClientConnection, RootCertStore};

    /// Long enough for any `open` that ends; one that loops forever fails the test instead of
    /// hanging the suite.
    const OPEN_WATCHDOG: std::time::Duration = std::time::Duration::from_secs(30);

    /// A server session and a rustls client that finished their handshake in memory.
    fn connected() -> (Transport, ClientConnection) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = ClientConnection::new(Arc::new(client), name).unwrap();
        let server = Transport::new(Some(&Arc::new(server))).unwrap();
        let mut plain = BytesMut::new();
        while client.is_handshaking() || client.wants_write() || server.wants_write() {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            assert!(server.open(&wire, &mut plain).unwrap());
            let mut answer = Vec::new();
            server.seal(b"", &mut answer).unwrap();
            let mut answer = &answer[..];
            while !answer.is_empty() {
                client.read_tls(&mut answer).unwrap();
                client.process_new_packets().unwrap();
            }
        }
        assert!(plain.is_empty());
        (server, client)
    }

    #[test]
    fn open_returns_at_a_close_notify_followed_by_more_bytes_in_the_same_read() {
        // Found by the tls_transport fuzz target: rustls reads nothing after a close_notify,
        // so a read with more than its 4 KiB read size after the alert never emptied.
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (server, mut client) = connected();
            client.writer().write_all(b"last words").unwrap();
            client.send_close_notify();
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            wire.extend_from_slice(&[0; 3 * 4096]);
            let mut plain = BytesMut::new();
            let open = server.open(&wire, &mut plain).unwrap();
            let _ = done.send((open, plain));
        });
        let (open, plain) = finished.recv_timeout(OPEN_WATCHDOG).expect("open returned");
        assert!(!open, "the peer closed");
        assert_eq!(&plain[..], b"last words");
    }
}
