//! One gRPC client connection on its shard, as socket loops around its [`Session`]: a reader
//! that hands the session what the socket brought, a writer that writes everything one
//! wake-up produced (responses, subscription events) in one socket write, and a timer that
//! wakes the session when it asked to be.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};

use super::calls::{Liveness, Session, SessionSettings, TimerVerdict};
use super::h2::frame::{self, Reason};
use crate::accept::{ConnectionLimit, Half, SocketOptions};
use crate::busy_poll::BusyPoll;
use crate::door::{Doorway, DoorwaySettings, Lifeline, ReadSize, ReadTurn, Reader};
use crate::engine::{DoorKind, Shard};

/// The largest read: a read the socket fills doubles the next one, up to this.
const READ_BYTES_MAX: usize = 64 * 1024;
/// The first reads' size: an idle connection keeps little memory.
const READ_BYTES_MIN: usize = 4 * 1024;
/// Response bytes waiting for the socket after which the reader stops reading: a client that
/// sends requests but never reads the answers slows itself down, nobody else.
const UNSENT_BYTES_MAX: usize = 4 << 20;

/// The gRPC door of one shard.
pub struct Door {
    doorway: Doorway,
    session: SessionSettings,
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
        let doorway = DoorwaySettings {
            door: DoorKind::Grpc,
            limit: settings.limit,
            refusal: refusal(),
            tls: settings.tls,
            busy_poll: settings.busy_poll,
            sockets: settings.sockets,
        };
        Rc::new(Door {
            doorway: Doorway::new(shard, doorway),
            session: SessionSettings {
                max_message_bytes: settings.max_message,
                idle_timeout: settings.idle_timeout,
                liveness: settings.liveness,
            },
        })
    }

    /// Accepts clients until shutdown, each served by its own task on this shard.
    pub async fn accept_loop(self: Rc<Self>, listener: TcpListener) {
        let door = self.clone();
        let serve = move |stream| {
            let door = door.clone();
            async move { GrpcConnection::serve(&door, stream).await }
        };
        self.doorway.accept_loop(listener, serve).await;
    }

    /// Completes once every connection of this door has closed.
    pub async fn drained(&self) {
        self.doorway.drained().await;
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

/// A connection's socket side: its session, and the lifeline its reader, writer and timer
/// share.
struct GrpcConnection {
    session: Rc<Session>,
    shard: Rc<Shard>,
    lifeline: Rc<Lifeline>,
}

impl GrpcConnection {
    async fn serve(door: &Rc<Door>, stream: TcpStream) {
        let Some((read_half, write_half, lifeline)) = door.doorway.open(stream) else {
            return;
        };
        let shard = door.doorway.shard().clone();
        let conn = Rc::new(GrpcConnection {
            session: Session::new(shard.clone(), door.session),
            shard,
            lifeline,
        });
        let writer = {
            let writing = conn.clone();
            (conn.lifeline).spawn_writer(async move { writing.write_loop(write_half).await })
        };
        let timer = glommio::spawn_local({
            let conn = conn.clone();
            async move { conn.timer_loop().await }
        });
        let consumer = conn.session.consumer().clone();
        consumer.notify.notify(); // our SETTINGS go out first
        let release = Release(conn.session.clone());
        conn.read_loop(read_half).await;
        drop(release);
        writer.await;
        timer.await;
        consumer.release_held();
        while consumer.next_ready().is_some() {}
        conn.lifeline.count_if_dead(&conn.shard);
    }

    async fn read_loop(&self, stream: Half) {
        let buf = BytesMut::with_capacity(READ_BYTES_MIN);
        let mut reader = Reader::new(stream, buf, ReadSize::new(READ_BYTES_MIN, READ_BYTES_MAX));
        let mut events = Vec::new();
        let session = &self.session;
        loop {
            let backlogged = || session.output_len() > UNSENT_BYTES_MAX;
            let writer = &session.consumer().notify;
            match self
                .lifeline
                .read(&self.shard, &mut reader, backlogged, writer)
                .await
            {
                ReadTurn::Read => {}
                ReadTurn::ShutDown => return session.shut_down(),
                ReadTurn::End => return,
            }
            let now = Instant::now();
            if session
                .receive(&mut reader.buf, now, &mut events)
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
                    self.lifeline.mark_dead();
                    return self.lifeline.stop_reading();
                }
                TimerVerdict::Idle => return self.lifeline.stop_reading(),
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
        let (session, transport) = (&self.session, self.lifeline.transport());
        // Kept across wake-ups with its capacity: `spare` takes the HTTP/2 layer's place as
        // its output while `out` is written (a fresh buffer there would grow by reallocating
        // and copying).
        let mut spare = BytesMut::new();
        loop {
            let woken = session.consumer().notify.wait();
            let out = session.collect_output(std::mem::take(&mut spare));
            if out.is_empty() && !transport.wants_write() {
                spare = out;
                if session.is_closed() {
                    break;
                }
                woken.await;
                continue;
            }
            if let Err(e) = transport.write(&mut socket, &out, &mut wire).await {
                self.lifeline.write_failed(&e, &socket);
                break;
            }
            self.lifeline.wrote();
            let mut out = out;
            out.clear();
            spare = out;
        }
        let _ = socket.close().await;
    }
}
