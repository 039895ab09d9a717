//! TLS for the TCP doors: a rustls session shared by a connection's reader and writer tasks
//! (one thread, so a `RefCell`), turning socket bytes into plaintext and back. rustls does the
//! protocol; this only moves bytes between it and the doors' buffers.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::sync::Arc;

use bytes::BytesMut;
use futures_lite::AsyncReadExt;
use glommio::net::TcpStream;
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
    /// `size` bytes). `wire` is scratch space for TLS records. Ok(false): the peer closed.
    pub async fn read(
        &self,
        stream: &mut TcpStream,
        plain: &mut BytesMut,
        size: usize,
        wire: &mut Vec<u8>,
    ) -> io::Result<bool> {
        if !self.is_tls() {
            let filled = plain.len();
            plain.resize(filled + size, 0);
            let n = stream.read(&mut plain[filled..]).await;
            plain.truncate(filled + *n.as_ref().unwrap_or(&0));
            return n.map(|n| n > 0);
        }
        wire.resize(size.max(16 * 1024), 0);
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
            session.read_tls(&mut wire)?;
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
