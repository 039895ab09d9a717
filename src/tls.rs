//! TLS for the TCP doors: a rustls session shared by a connection's reader and writer tasks
//! (one thread, so a `RefCell`), turning socket bytes into plaintext and back. rustls does the
//! protocol; this only moves bytes between it and the doors' buffers.

use std::cell::RefCell;
use std::io::{self, BufRead, Write};
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

    /// One socket read, appending the plaintext it carried to `plain` (reading at most about `size`
    /// bytes). `wire` is the connection's read buffer, zeroed once and reused: reading straight
    /// into `plain` would need its spare capacity zeroed for every read (64 KiB of memset per
    /// wake-up, a measurable part of the gRPC door's instructions: docs/PERFORMANCE.md), where
    /// copying out costs only the bytes that came. Ok(false): the peer closed.
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
    ///
    /// rustls keeps at most 16 KiB of decrypted plaintext and refuses to read more records
    /// until it is taken, so the plaintext is taken after every step, not once at the end: one
    /// socket read can carry many records (a large message arrives that way).
    pub fn open(&self, mut wire: &[u8], plain: &mut BytesMut) -> io::Result<bool> {
        let Transport::Tls(session) = self else {
            plain.extend_from_slice(wire);
            return Ok(true);
        };
        let mut session = session.borrow_mut();
        loop {
            if !wire.is_empty() {
                session.read_tls(&mut wire)?;
                session.process_new_packets().map_err(io::Error::other)?;
            }
            if !take_plaintext(&mut session, plain)? {
                return Ok(false);
            }
            if wire.is_empty() {
                return Ok(true);
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
    /// with whatever TLS has to send of its own. A large `plain` is sealed and written in
    /// pieces of [`SEAL_BYTES_MAX`], so `wire` stays that small whatever the message size.
    pub async fn write(
        &self,
        stream: &mut Half,
        plain: &[u8],
        wire: &mut Vec<u8>,
    ) -> io::Result<()> {
        if !self.is_tls() {
            return stream.write_all(plain).await;
        }
        let mut pieces = plain.chunks(SEAL_BYTES_MAX);
        // An empty `plain` still sends what TLS has of its own (handshake, alerts).
        let mut piece = pieces.next().unwrap_or_default();
        loop {
            wire.clear();
            self.seal(piece, wire)?;
            stream.write_all(wire).await?;
            match pieces.next() {
                Some(next) => piece = next,
                None => return Ok(()),
            }
        }
    }

    /// Encrypts `plain` (may be empty) into `wire`, with whatever else TLS has to send.
    ///
    /// rustls accepts plaintext only while its own record buffer holds under 64 KiB, so the
    /// records are taken out after every piece it accepts, not once at the end.
    pub fn seal(&self, mut plain: &[u8], wire: &mut Vec<u8>) -> io::Result<()> {
        let Transport::Tls(session) = self else {
            wire.extend_from_slice(plain);
            return Ok(());
        };
        let mut session = session.borrow_mut();
        loop {
            let accepted = if plain.is_empty() {
                0
            } else {
                session.writer().write(plain)?
            };
            plain = &plain[accepted..];
            while session.wants_write() {
                session.write_tls(wire)?;
            }
            if plain.is_empty() {
                return Ok(());
            }
            if accepted == 0 {
                // Only before the handshake ends: rustls holds the plaintext unsent, and no
                // door sends 64 KiB before its client has spoken.
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "TLS: more plaintext than rustls holds before the handshake ends",
                ));
            }
        }
    }
}

/// The largest piece of plaintext [`Transport::write`] seals into one socket write: large
/// enough that a write carries many records, small enough that a multi-megabyte message does
/// not leave as large a record buffer behind.
pub const SEAL_BYTES_MAX: usize = 256 * 1024;

/// Moves the plaintext rustls decrypted into `plain`; false once the peer closed the session
/// (close_notify). An unclean end (TCP EOF without close_notify) is an error.
fn take_plaintext(session: &mut ServerConnection, plain: &mut BytesMut) -> io::Result<bool> {
    let mut reader = session.reader();
    loop {
        match reader.fill_buf() {
            Ok([]) => return Ok(false),
            Ok(chunk) => {
                let len = chunk.len();
                plain.extend_from_slice(chunk);
                reader.consume(len);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) => return Err(e),
        }
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
    //! The session between socket and door, tested without sockets: a rustls client in
    //! memory talks to a [`Transport`], the bytes moved by hand.

    use super::*;
    use rustls::ClientConnection;
    use std::io::Read;

    /// A server configuration with a fresh self-signed certificate, and a client
    /// configuration that trusts it.
    fn configs() -> (Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_der = cert.der().clone();
        let key_der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert_der.clone()], key_der)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert_der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// A server transport and a client session that trusts it, handshake done.
    fn pair() -> (Transport, ClientConnection) {
        let (server, client) = configs();
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = ClientConnection::new(client, name).unwrap();
        let server = Transport::new(Some(&server)).unwrap();
        let mut plain = BytesMut::new();
        while client.is_handshaking() {
            assert!(server
                .open(&client_send(&mut client, &[]), &mut plain)
                .unwrap());
            let mut back = Vec::new();
            server.seal(&[], &mut back).unwrap();
            feed_client(&mut client, &back);
        }
        // The client's last flight (Finished) ends the server's handshake.
        assert!(server
            .open(&client_send(&mut client, &[]), &mut plain)
            .unwrap());
        assert!(plain.is_empty(), "no application data during the handshake");
        (server, client)
    }

    /// Hands `wire` to the client, taking its plaintext as it goes (rustls holds 16 KiB).
    fn feed_client(client: &mut ClientConnection, mut wire: &[u8]) -> Vec<u8> {
        let mut plain = Vec::new();
        while !wire.is_empty() {
            client.read_tls(&mut wire).unwrap();
            client.process_new_packets().unwrap();
            let _ = client.reader().read_to_end(&mut plain);
        }
        plain
    }

    /// The records that carry `plain` from the client, with anything else it has to send.
    fn client_send(client: &mut ClientConnection, mut plain: &[u8]) -> Vec<u8> {
        let mut wire = Vec::new();
        loop {
            let accepted = client.writer().write(plain).unwrap();
            plain = &plain[accepted..];
            while client.wants_write() {
                client.write_tls(&mut wire).unwrap();
            }
            if plain.is_empty() {
                return wire;
            }
        }
    }

    /// A message of `len` bytes that is not the same byte over and over.
    fn message(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// Just under the default 4 MiB message limit: the largest event a client may send.
    const LARGE_BYTES: usize = 3_900 * 1024;

    #[test]
    fn many_records_in_one_read_all_reach_the_door() {
        let (server, mut client) = pair();
        let sent = message(LARGE_BYTES);
        let wire = client_send(&mut client, &sent);
        // Everything at once, as a socket read of a fast client's burst would hand it over
        // (in 64 KiB reads, as the doors read, the same holds).
        let mut plain = BytesMut::new();
        assert!(server.open(&wire, &mut plain).unwrap());
        assert_eq!(plain.len(), sent.len());
        assert!(plain[..] == sent[..], "the plaintext arrives intact");
        let mut plain = BytesMut::new();
        let wire = client_send(&mut client, &sent);
        for read in wire.chunks(64 * 1024) {
            assert!(server.open(read, &mut plain).unwrap());
        }
        assert!(plain[..] == sent[..]);
    }

    #[test]
    fn a_message_larger_than_rustls_buffers_is_sealed_whole() {
        let (server, mut client) = pair();
        let sent = message(LARGE_BYTES);
        let mut wire = Vec::new();
        server.seal(&sent, &mut wire).unwrap();
        assert_eq!(feed_client(&mut client, &wire), sent);
        // Sealed in the pieces `write` uses, the bytes are the same stream.
        let mut wire = Vec::new();
        for piece in sent.chunks(SEAL_BYTES_MAX) {
            server.seal(piece, &mut wire).unwrap();
        }
        assert_eq!(feed_client(&mut client, &wire), sent);
    }

    #[test]
    fn close_notify_ends_the_session_even_with_bytes_behind_it() {
        let (server, mut client) = pair();
        client.writer().write_all(b"last words").unwrap();
        client.send_close_notify();
        let mut wire = client_send(&mut client, &[]);
        // Bytes after close_notify are never read: open must not wait on them.
        wire.extend_from_slice(&[23, 3, 3, 0, 1, 0]);
        let mut plain = BytesMut::new();
        assert!(!server.open(&wire, &mut plain).unwrap());
        assert_eq!(&plain[..], b"last words");
    }

    /// Long enough for any `open` that ends; one that loops forever fails the test instead of
    /// hanging the suite.
    const OPEN_WATCHDOG: std::time::Duration = std::time::Duration::from_secs(30);

    #[test]
    fn open_returns_at_a_close_notify_followed_by_more_bytes_in_the_same_read() {
        // Found by the tls_transport fuzz target: rustls reads nothing after a close_notify,
        // so a read with more than its 4 KiB read size after the alert never emptied.
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (server, mut client) = pair();
            client.writer().write_all(b"last words").unwrap();
            client.send_close_notify();
            let mut wire = client_send(&mut client, &[]);
            wire.extend_from_slice(&[0; 3 * 4096]);
            let mut plain = BytesMut::new();
            let open = server.open(&wire, &mut plain).unwrap();
            let _ = done.send((open, plain));
        });
        let (open, plain) = finished.recv_timeout(OPEN_WATCHDOG).expect("open returned");
        assert!(!open, "the peer closed");
        assert_eq!(&plain[..], b"last words");
    }

    #[test]
    fn plaintext_on_a_tls_door_is_an_error() {
        let server = Transport::new(Some(&configs().0)).unwrap();
        let mut plain = BytesMut::new();
        assert!(server.open(b"PRI * HTTP/2.0\r\n\r\n", &mut plain).is_err());
    }
}
