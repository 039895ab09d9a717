//! How a door refuses a connection over its limit: in the door's own protocol, where
//! the client can read it (over TLS too, after a handshake), then a close that does not destroy
//! what was sent. Nothing here is on the path of an admitted connection.

use std::io::{self, Write};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use rustls::{ServerConfig, ServerConnection};

/// How long a refused connection is given, handshake included, to read its refusal (and
/// close) before it is closed anyway: a refusal must not hold a descriptor for long.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);
/// Socket reads while refusing: a TLS handshake flight, or what a client sent before it read
/// its refusal (discarded).
const READ_BYTES: usize = 16 * 1024;

/// What a door sends a connection over its limit.
pub struct Refusal {
    /// The door's refusal in its protocol (native: ERROR TooManyConnections; gRPC: SETTINGS
    /// and GOAWAY REFUSED_STREAM; metrics: HTTP 503).
    pub message: Bytes,
    /// The door's TLS settings: the message then goes after a handshake, as a client of a TLS
    /// door reads nothing else. A handshake costs the server little next to what the limit
    /// protects (a connection's buffers, subscriptions and descriptor for as long as it lives),
    /// and [`REFUSAL_LINGER`] bounds it.
    pub tls: Option<Arc<ServerConfig>>,
}

/// Sends `refusal` to `stream`, then closes it once the client has closed too (or after
/// [`REFUSAL_LINGER`]): closing while the client's first bytes sit unread would send a reset,
/// which can destroy the refusal before the client reads it.
pub async fn refuse(mut stream: TcpStream, refusal: Rc<Refusal>) {
    let refusing = async {
        match &refusal.tls {
            Some(config) => send_over_tls(&mut stream, config, &refusal.message).await?,
            None => stream.write_all(&refusal.message).await?,
        }
        stream.close().await?; // shuts down writing: the client reads the refusal, then EOF
        let mut sink = [0u8; 512];
        while stream.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    };
    let linger = async {
        glommio::timer::sleep(REFUSAL_LINGER).await;
        Ok(())
    };
    let _ = futures_lite::future::or(refusing, linger).await;
}

/// Completes a TLS handshake as the server of `config`, then sends `message` and a
/// close_notify. A client the handshake refuses (no certificate where one is required, not
/// TLS at all) gets an error, and the caller closes the connection.
async fn send_over_tls(
    stream: &mut TcpStream,
    config: &Arc<ServerConfig>,
    message: &[u8],
) -> io::Result<()> {
    let mut session = ServerConnection::new(config.clone()).map_err(io::Error::other)?;
    let mut read = vec![0u8; READ_BYTES];
    let mut records = Vec::new();
    while session.is_handshaking() {
        send_records(&mut session, stream, &mut records).await?;
        let n = stream.read(&mut read).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut wire = &read[..n];
        while !wire.is_empty() {
            session.read_tls(&mut wire)?;
            session.process_new_packets().map_err(io::Error::other)?;
        }
    }
    session.writer().write_all(message)?;
    session.send_close_notify();
    send_records(&mut session, stream, &mut records).await
}

/// Writes every record the session has queued.
async fn send_records(
    session: &mut ServerConnection,
    stream: &mut TcpStream,
    records: &mut Vec<u8>,
) -> io::Result<()> {
    while session.wants_write() {
        records.clear();
        session.write_tls(records)?;
        stream.write_all(records).await?;
    }
    Ok(())
}
