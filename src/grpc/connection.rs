//! One gRPC client connection on its shard, as socket loops around its [`Session`]: a reader
//! that hands the session what the socket brought, a writer that writes everything one
//! wake-up produced (responses, subscription events) in one socket write, and a timer that
//! wakes the session when it asked to be.

use std::cell::Cell;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};

use super::calls::{Liveness, Session, SessionSettings, TimerVerdict};
use super::h2::frame::{self, Reason};
use crate::accept::{self, Admission, ConnectionLimit, Connections, Half, SocketOptions};
use crate::busy_poll::BusyPoll;
use crate::engine::notify::Notify;
use crate::engine::{Shard, GRPC_DOOR};
use crate::tls::Transport;

/// The largest read: a read the socket fills doubles the next one, up to this.
const READ_BYTES_MAX: usize = 64 * 1024;
/// The first reads' size: an idle connection keeps little memory.
const READ_BYTES_MIN: usize = 4 * 1024;
/// Response bytes waiting for the socket after which the reader stops reading: a client that
/// sends requests but never reads the answers slows itself down, nobody else.
const UNSENT_BYTES_MAX: usize = 4 << 20;

/// The gRPC door of one shard.
pub struct Door {
    shard: Rc<Shard>,
    session: SessionSettings,
    tls: Option<Arc<rustls::ServerConfig>>,
    connections: Rc<Connections>,
    /// Low-latency mode's socket polling, shared with the shard's other TCP door.
    busy_poll: Option<Rc<BusyPoll>>,
    admission: Rc<Admission>,
}

/// Everything the gRPC door of a shard is made with, besides the shard.
pub struct DoorSettings {
    /// Messages over this many bytes are RESOURCE_EXHAUSTED.
    pub max_message: usize,
    /// With it, every connection is TLS (ALPN h2).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub idle_timeout: Duration,
    pub liveness: Option<Liveness>,
    /// Low-latency mode: connections poll their sockets.
    pub busy_poll: Option<Rc<BusyPoll>>,
    /// The door's connection limit, shared by every shard's door: past it, a connection gets
    /// the server's SETTINGS and a GOAWAY REFUSED_STREAM.
    pub limit: Arc<ConnectionLimit>,
    pub sockets: SocketOptions,
}

impl Door {
    /// The gRPC door of `shard`.
    pub fn new(shard: Rc<Shard>, settings: DoorSettings) -> Rc<Door> {
        let admission = Admission::new(
            GRPC_DOOR,
            settings.limit,
            refusal(),
            settings.tls.clone(),
            settings.sockets,
        );
        Rc::new(Door {
            shard,
            session: SessionSettings {
                max_message_bytes: settings.max_message,
                idle_timeout: settings.idle_timeout,
                liveness: settings.liveness,
            },
            tls: settings.tls,
            connections: Rc::default(),
            busy_poll: settings.busy_poll,
            admission,
        })
    }

    /// Accepts clients until shutdown, each served by its own task on this shard.
    pub async fn accept_loop(self: Rc<Self>, listener: TcpListener) {
        let (shard, connections) = (self.shard.clone(), self.connections.clone());
        let admission = self.admission.clone();
        crate::accept::accept_loop(shard, listener, connections, admission, {
            move |stream| {
                let door = self.clone();
                async move { GrpcConnection::serve(&door, stream).await }
            }
        })
        .await;
    }

    /// Completes once every connection of this door has closed.
    pub async fn drained(&self) {
        self.connections.drained().await;
    }
}

/// What a connection over the door's limit reads before the door closes it: the server's
/// connection preface (an empty SETTINGS, RFC 9113 §3.4) and a GOAWAY REFUSED_STREAM for
/// stream 0, which tells the client that nothing was processed and it may retry elsewhere.
fn refusal() -> Bytes {
    let mut out = BytesMut::new();
    frame::put_settings(&mut out, &[]);
    let debug = b"connection limit (grpc.max_connections)";
    frame::put_goaway(&mut out, 0, Reason::RefusedStream, debug);
    out.freeze()
}

/// Releases what a connection holds in the engine when its reader ends, normally or by a
/// panic (which the door contains to this one connection).
struct Release(Rc<Session>);

impl Drop for Release {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// A connection's socket side: its session and what its three tasks tell each other.
struct GrpcConnection {
    session: Rc<Session>,
    shard: Rc<Shard>,
    transport: Transport,
    /// Woken after every socket write (the reader may be waiting for room).
    written: Notify,
    /// The connection must stop: the writer failed or panicked, or the session closed it.
    broken: Cell<bool>,
    stop: Notify,
    /// The connection was found dead (no answer to a PING, or a socket timed out:
    /// keepalive, unacknowledged data, the write deadline); counted once when it ends.
    dead: Cell<bool>,
}

impl GrpcConnection {
    async fn serve(door: &Rc<Door>, stream: TcpStream) {
        let (stream, write_half) = match accept::split(stream, door.busy_poll.clone()) {
            Ok(halves) => halves,
            Err(e) => return crate::log_line!("shard {}: {e}", door.shard.id()),
        };
        let Ok(transport) = Transport::new(door.tls.as_ref()) else {
            return;
        };
        let conn = Rc::new(GrpcConnection {
            session: Session::new(door.shard.clone(), door.session),
            shard: door.shard.clone(),
            transport,
            written: Notify::default(),
            broken: Cell::new(false),
            stop: Notify::default(),
            dead: Cell::new(false),
        });
        let writer = {
            let (writing, stopping) = (conn.clone(), conn.clone());
            let work = async move { writing.write_loop(write_half).await };
            // A panic in the writer is contained to this connection: its reader stops too.
            accept::spawn_contained(work, move |panicked| {
                if panicked {
                    stopping.stop_reading();
                }
            })
        };
        let timer = glommio::spawn_local({
            let conn = conn.clone();
            async move { conn.timer_loop().await }
        });
        let consumer = conn.session.consumer().clone();
        consumer.notify.notify(); // our SETTINGS go out first
        let release = Release(conn.session.clone());
        conn.read_loop(stream).await;
        drop(release);
        writer.await;
        timer.await;
        consumer.release_held();
        while consumer.next_ready().is_some() {}
        if conn.dead.get() {
            conn.shard.count_cut_connection(GRPC_DOOR);
        }
    }

    /// Stops the reader; the writer still sends what the session queued (a GOAWAY).
    fn stop_reading(&self) {
        self.broken.set(true);
        self.stop.notify();
    }

    async fn read_loop(&self, mut stream: Half) {
        let mut buf = BytesMut::with_capacity(READ_BYTES_MIN);
        let mut wire = Vec::new();
        let mut events = Vec::new();
        let session = &self.session;
        // Reads start small (an idle connection keeps little memory) and double while they
        // come back full, up to READ_BYTES_MAX.
        let mut read_size = READ_BYTES_MIN;
        loop {
            futures_lite::future::yield_now().await;
            self.shard.admit().await;
            while session.output_len() > UNSENT_BYTES_MAX && !self.broken.get() {
                self.written.wait().await;
            }
            let stopped = self.shard.shutdown.wait();
            if self.shard.is_closing() {
                return session.shut_down();
            }
            let broken = self.stop.wait();
            let before = buf.len();
            let reading = self
                .transport
                .read(&mut stream, &mut buf, read_size, &mut wire);
            let read = accept::unless(reading, futures_lite::future::or(stopped, broken)).await;
            if self.transport.wants_write() {
                session.consumer().notify.notify(); // TLS handshake or alert to send
            }
            match read {
                None if self.broken.get() => return,
                None => return session.shut_down(),
                Some(Err(e)) if e.kind() == io::ErrorKind::TimedOut => {
                    return self.dead.set(true); // keepalive or unacknowledged data
                }
                Some(Ok(false)) | Some(Err(_)) => return,
                Some(Ok(true)) => {}
            }
            if buf.len() - before >= read_size {
                read_size = (read_size * 2).min(READ_BYTES_MAX);
            }
            if session
                .receive(&mut buf, Instant::now(), &mut events)
                .await
                .is_err()
            {
                return; // GOAWAY is in the output; the writer sends it and closes
            }
        }
    }

    /// Wakes the session when it asked to be ([`Session::on_timer`]), and stops the
    /// connection when it says so.
    async fn timer_loop(&self) {
        let session = &self.session;
        loop {
            let added = session.deadline_added.wait();
            if session.is_closed() {
                return;
            }
            match session.on_timer(Instant::now()) {
                TimerVerdict::Dead => {
                    self.dead.set(true);
                    return self.stop_reading();
                }
                TimerVerdict::Idle => return self.stop_reading(),
                TimerVerdict::Next(None) => added.await,
                TimerVerdict::Next(Some(at)) => {
                    let now = Instant::now();
                    if at > now {
                        let sleep = glommio::timer::sleep(at - now);
                        futures_lite::future::or(sleep, added).await;
                    }
                }
            }
        }
    }

    async fn write_loop(&self, mut socket: Half) {
        let mut wire = Vec::new();
        let session = &self.session;
        // Kept across wake-ups with its capacity: `spare` takes the HTTP/2 layer's place as
        // its output while `out` is written (a fresh buffer there would grow by reallocating
        // and copying).
        let mut spare = BytesMut::new();
        loop {
            let woken = session.consumer().notify.wait();
            let out = session.collect_output(std::mem::take(&mut spare));
            if out.is_empty() && !self.transport.wants_write() {
                spare = out;
                if session.is_closed() {
                    break;
                }
                woken.await;
                continue;
            }
            let wrote = self.transport.write(&mut socket, &out, &mut wire).await;
            if let Err(e) = wrote {
                if e.kind() == io::ErrorKind::TimedOut {
                    // The write deadline passed (or the kernel gave up on unacknowledged
                    // data): what is unsent is dropped with the connection, at once.
                    self.dead.set(true);
                    socket.abort_on_close();
                }
                self.stop_reading();
                self.written.notify();
                break;
            }
            self.written.notify();
            let mut out = out;
            out.clear();
            spare = out;
        }
        let _ = socket.close().await;
    }
}
