//! The skeleton every TCP door's connection shares, whatever protocol it speaks: the door's
//! accept loop and live connections ([`Doorway`]), and one connection's socket side
//! ([`Lifeline`]): the reader's turn (backpressure, shutdown, one read sized to recent ones),
//! the writer contained to its connection, and what each tells the other. The native and gRPC
//! doors add only what their protocol does with the bytes.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::rc::Rc;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use glommio::net::{TcpListener, TcpStream};

use crate::accept::{self, Admission, ConnectionLimit, Connections, Half, SocketOptions};
use crate::busy_poll::BusyPoll;
use crate::engine::notify::Notify;
use crate::engine::{DoorKind, Shard};
use crate::tls::Transport;

/// What a door of one shard holds for all its connections: how it admits them, how many are
/// live, and what each is served with (TLS, low-latency polling).
pub struct Doorway {
    shard: Rc<Shard>,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Low-latency mode's socket polling, shared with the shard's other TCP door.
    busy_poll: Option<Rc<BusyPoll>>,
    connections: Rc<Connections>,
    admission: Rc<Admission>,
}

/// Everything a [`Doorway`] is made with, besides its shard.
pub struct DoorwaySettings {
    pub door: DoorKind,
    /// The door's connection limit, shared by every shard's door.
    pub limit: Arc<ConnectionLimit>,
    /// What a connection over the limit is sent before it is closed.
    pub refusal: Bytes,
    /// With it, every connection is TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Low-latency mode: connections poll their sockets.
    pub busy_poll: Option<Rc<BusyPoll>>,
    pub sockets: SocketOptions,
}

impl Doorway {
    /// The doorway of a door of `shard`.
    pub fn new(shard: Rc<Shard>, settings: DoorwaySettings) -> Doorway {
        let DoorwaySettings {
            door,
            limit,
            refusal,
            tls,
            busy_poll,
            sockets,
        } = settings;
        let admission = Admission::new(door, limit, refusal, tls.clone(), sockets);
        Doorway {
            shard,
            tls,
            busy_poll,
            connections: Rc::default(),
            admission,
        }
    }

    /// The shard this door is on.
    pub fn shard(&self) -> &Rc<Shard> {
        &self.shard
    }

    /// Accepts clients until shutdown, each served by `serve` in its own task on this shard.
    pub async fn accept_loop<F, Fut>(&self, listener: TcpListener, serve: F)
    where
        F: Fn(TcpStream) -> Fut,
        Fut: Future<Output = ()> + 'static,
    {
        let (shard, connections) = (self.shard.clone(), self.connections.clone());
        accept::accept_loop(shard, listener, connections, self.admission.clone(), serve).await;
    }

    /// Completes once every connection of this door has closed.
    pub async fn drained(&self) {
        self.connections.drained().await;
    }

    /// An accepted connection's two halves (its reader's and its writer's) and its lifeline;
    /// None, logged, when the socket cannot be set up or TLS cannot start.
    pub fn open(&self, stream: TcpStream) -> Option<(Half, Half, Rc<Lifeline>)> {
        let (read_half, write_half) = match accept::split(stream, self.busy_poll.clone()) {
            Ok(halves) => halves,
            Err(e) => {
                crate::log_line!("shard {}: {e}", self.shard.id());
                return None;
            }
        };
        let transport = Transport::new(self.tls.as_ref()).ok()?;
        let lifeline = Rc::new(Lifeline {
            door: self.admission.door,
            transport,
            written: Notify::default(),
            broken: Cell::new(false),
            stop: Notify::default(),
            dead: Cell::new(false),
        });
        Some((read_half, write_half, lifeline))
    }
}

/// How big the next read is: reads start small (an idle connection holds little) and follow
/// the traffic: twice the last when it filled the read, else twice what it brought.
#[derive(Clone, Copy, Debug)]
pub struct ReadSize {
    next_bytes: usize,
    min_bytes: usize,
    max_bytes: usize,
}

impl ReadSize {
    /// Reads between `min_bytes` (the first) and `max_bytes`.
    pub const fn new(min_bytes: usize, max_bytes: usize) -> ReadSize {
        assert!(0 < min_bytes && min_bytes <= max_bytes);
        ReadSize {
            next_bytes: min_bytes,
            min_bytes,
            max_bytes,
        }
    }

    /// The size of the next read.
    pub fn next_bytes(&self) -> usize {
        self.next_bytes
    }

    /// After a read that brought `read_bytes`.
    fn after(&mut self, read_bytes: usize) {
        self.next_bytes = if read_bytes >= self.next_bytes {
            (self.next_bytes * 2).min(self.max_bytes)
        } else {
            (read_bytes * 2).clamp(self.min_bytes, self.max_bytes)
        };
        debug_assert!((self.min_bytes..=self.max_bytes).contains(&self.next_bytes));
    }
}

/// A connection's reading side: its socket half, what it read and its protocol has not used
/// yet (`buf`), and the size of its next read.
pub struct Reader {
    stream: Half,
    /// Bytes read and not consumed yet: the protocol takes whole frames off its front.
    pub buf: BytesMut,
    size: ReadSize,
    /// TLS's scratch for ciphertext.
    wire: Vec<u8>,
}

impl Reader {
    /// The reader of `stream`, starting with `buf` (empty), its reads sized by `size`.
    pub fn new(stream: Half, buf: BytesMut, size: ReadSize) -> Reader {
        debug_assert!(buf.is_empty());
        Reader {
            stream,
            buf,
            size,
            wire: Vec::new(),
        }
    }
}

/// What the reader's turn ([`Lifeline::read`]) came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadTurn {
    /// Bytes were added to the buffer.
    Read,
    /// The server is shutting down: the connection says so to its client, then ends.
    ShutDown,
    /// The connection ends: the client closed it, a read failed, or the writer stopped.
    End,
}

/// One connection's socket side: its transport (plain or TLS), and what its reader and writer
/// tell each other: the writer wrote (there may be room to read again), the connection must
/// stop, it was found dead.
pub struct Lifeline {
    door: DoorKind,
    transport: Transport,
    /// Woken after every socket write (the reader may be waiting for room).
    written: Notify,
    /// Set, and `stop` woken, when the connection must stop: the writer failed or panicked,
    /// or its protocol closed it.
    broken: Cell<bool>,
    stop: Notify,
    /// The connection was found dead (a socket timed out: keepalive, unacknowledged data, the
    /// write deadline; or its protocol's own check); counted once when it ends.
    dead: Cell<bool>,
}

impl Lifeline {
    /// The connection's transport.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Stops the reader; the writer still sends what is queued.
    pub fn stop_reading(&self) {
        self.broken.set(true);
        self.stop.notify();
    }

    /// The connection was found dead: counted as cut when it ends.
    pub fn mark_dead(&self) {
        self.dead.set(true);
    }

    /// The reader's turn: waits while the engine is saturated or while the connection has
    /// too much waiting for its socket (`backlogged`, the door's own bound), then reads into
    /// the reader's buffer as its size says, unless the server stops or the connection breaks meanwhile.
    /// `writer` is woken when TLS has something of its own to send.
    pub async fn read(
        &self,
        shard: &Shard,
        reader: &mut Reader,
        backlogged: impl Fn() -> bool,
        writer: &Notify,
    ) -> ReadTurn {
        // A socket that always has data would otherwise keep this task running forever.
        futures_lite::future::yield_now().await;
        shard.admit().await;
        while backlogged() && !self.broken.get() {
            self.written.wait().await;
        }
        if self.broken.get() {
            return ReadTurn::End;
        }
        let stopped = shard.shutdown.wait();
        if shard.is_closing() {
            return ReadTurn::ShutDown;
        }
        let broken = self.stop.wait();
        let Reader {
            stream,
            buf,
            size,
            wire,
        } = reader;
        let filled = buf.len();
        let reading = self.transport.read(stream, buf, size.next_bytes(), wire);
        let read = accept::unless(reading, futures_lite::future::or(stopped, broken)).await;
        if self.transport.wants_write() {
            writer.notify(); // TLS handshake or alert to send
        }
        match read {
            None if self.broken.get() => ReadTurn::End,
            None => ReadTurn::ShutDown,
            Some(Err(e)) if e.kind() == io::ErrorKind::TimedOut => {
                self.dead.set(true); // keepalive or unacknowledged data
                ReadTurn::End
            }
            Some(Ok(false)) | Some(Err(_)) => ReadTurn::End,
            Some(Ok(true)) => {
                size.after(buf.len() - filled);
                ReadTurn::Read
            }
        }
    }

    /// Starts the connection's writer, `work`, as a task of its own: a panic in it is
    /// contained to this connection, whose reader then stops too.
    pub fn spawn_writer(
        self: &Rc<Self>,
        work: impl Future<Output = ()> + 'static,
    ) -> glommio::Task<()> {
        let stopping = self.clone();
        accept::spawn_contained(work, move |panicked| {
            if panicked {
                stopping.stop_reading();
            }
        })
    }

    /// The writer wrote: the reader may have room again.
    pub fn wrote(&self) {
        self.written.notify();
    }

    /// The writer's write failed with `e`: the connection stops. Past the write deadline (or
    /// when the kernel gave up on unacknowledged data) it is dead, and what is unsent is
    /// dropped with it at once.
    pub fn write_failed(&self, e: &io::Error, socket: &Half) {
        if e.kind() == io::ErrorKind::TimedOut {
            self.dead.set(true);
            socket.abort_on_close();
        }
        self.stop_reading();
        self.written.notify();
    }

    /// Once the connection ended: counts it as cut if it was found dead.
    pub fn count_if_dead(&self, shard: &Shard) {
        if self.dead.get() {
            shard.count_cut_connection(self.door);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ReadSize;

    #[test]
    fn reads_double_while_full_and_follow_what_came_otherwise() {
        let mut size = ReadSize::new(1024, 64 * 1024);
        assert_eq!(size.next_bytes(), 1024);
        size.after(1024);
        assert_eq!(size.next_bytes(), 2048);
        size.after(2048);
        size.after(4096);
        assert_eq!(size.next_bytes(), 8192);
        size.after(3000);
        assert_eq!(size.next_bytes(), 6000);
        size.after(10);
        assert_eq!(size.next_bytes(), 1024, "never under the minimum");
        for _ in 0..10 {
            let full = size.next_bytes();
            size.after(full);
        }
        assert_eq!(size.next_bytes(), 64 * 1024, "never over the maximum");
    }
}
