//! How a TCP door takes clients on a shard: accept until shutdown, refuse those over the door's
//! connection limit, set the socket options that find dead clients, serve each client in its
//! own task with any panic contained to that connection, and know when all of them are gone;
//! plus the small pieces both doors' connections are built from.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncWrite};
use socket2::{SockRef, TcpKeepalive};

use glommio::net::{TcpListener, TcpStream};

use crate::busy_poll::{BusyPoll, Polling};
use crate::config::ConnectionsConfig;
use crate::engine::notify::Notify;
use crate::engine::{DoorKind, Shard};
use crate::refusal::{refuse, Refusal};

/// The connections a door is serving, so that shutdown can wait for them.
#[derive(Default)]
pub struct Connections {
    live: Cell<usize>,
    idle: Notify,
}

impl Connections {
    /// Completes once every connection has closed.
    pub async fn drained(&self) {
        while self.live.get() > 0 {
            self.idle.wait().await;
        }
    }
}

/// A client door's connection limit, server-wide: every shard's accept loop for the door
/// counts into the same one. Touched only when a connection opens or closes, never per event.
#[derive(Debug)]
pub struct ConnectionLimit {
    max: usize,
    live: AtomicUsize,
}

impl ConnectionLimit {
    /// A limit of `max` open connections.
    pub fn new(max: usize) -> Arc<ConnectionLimit> {
        debug_assert!(max > 0, "config validation refuses a zero limit");
        Arc::new(ConnectionLimit {
            max,
            live: AtomicUsize::new(0),
        })
    }

    /// The largest number of open connections.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Takes a place, unless all `max` are taken.
    fn try_take(&self) -> bool {
        let taken = |n: usize| (n < self.max).then_some(n + 1);
        (self
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, taken))
        .is_ok()
    }

    /// Gives back a place [`ConnectionLimit::try_take`] took.
    fn give_back(&self) {
        let before = self.live.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "more places given back than taken");
    }
}

/// The socket options that let the kernel, and the writer, find a dead client: one whose host
/// vanished without a FIN or RST would otherwise hold its subscriptions and queues forever.
#[derive(Clone, Copy, Debug)]
pub struct SocketOptions {
    /// SO_KEEPALIVE with TCP_KEEPIDLE, TCP_KEEPINTVL and TCP_KEEPCNT; None: off.
    pub keepalive: Option<(Duration, Duration, u32)>,
    /// TCP_USER_TIMEOUT: unacknowledged data this old drops the connection; None: kernel's.
    pub user_timeout: Option<Duration>,
    /// A socket write that makes no progress for this long fails with `TimedOut`; None: never.
    pub write_deadline: Option<Duration>,
}

impl SocketOptions {
    /// The options `config` asks for (a zero turns its option off).
    pub fn from_config(config: &ConnectionsConfig) -> SocketOptions {
        let secs = |s: u32| Duration::from_secs(u64::from(s));
        let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
        SocketOptions {
            keepalive: (config.keepalive_idle_s > 0).then(|| {
                let (idle, interval) = (config.keepalive_idle_s, config.keepalive_interval_s);
                (secs(idle), secs(interval), config.keepalive_probes)
            }),
            user_timeout: nonzero(Duration::from_millis(u64::from(config.user_timeout_ms))),
            write_deadline: nonzero(Duration::from_millis(config.write_deadline_ms)),
        }
    }

    /// Sets them on an accepted socket. The write deadline is glommio's write timeout: its
    /// timer starts when a write would block and stops when one makes progress, which is
    /// exactly "no progress for this long", at no cost on writes that do not block.
    pub fn apply(&self, stream: &TcpStream) -> io::Result<()> {
        // SAFETY: the descriptor stays open for the borrow: `stream` owns it and outlives it.
        let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
        let socket = SockRef::from(&fd);
        if let Some((idle, interval, probes)) = self.keepalive {
            let keepalive = TcpKeepalive::new()
                .with_time(idle)
                .with_interval(interval)
                .with_retries(probes);
            socket.set_tcp_keepalive(&keepalive)?;
        }
        if let Some(timeout) = self.user_timeout {
            socket.set_tcp_user_timeout(Some(timeout))?;
        }
        stream
            .set_write_timeout(self.write_deadline)
            .map_err(io::Error::from)
    }
}

/// What a door applies to every connection it accepts.
pub struct Admission {
    /// Which door (its counters and its name in logs).
    pub door: DoorKind,
    pub limit: Arc<ConnectionLimit>,
    /// What a connection over the limit is sent before it is closed.
    pub refusal: Rc<Refusal>,
    pub sockets: SocketOptions,
}

impl Admission {
    /// The admission of door `door`: over `limit`, a
    /// connection is sent `refusal` (after a TLS handshake when `tls` is set) and closed.
    pub fn new(
        door: DoorKind,
        limit: Arc<ConnectionLimit>,
        refusal: Bytes,
        tls: Option<Arc<rustls::ServerConfig>>,
        sockets: SocketOptions,
    ) -> Rc<Admission> {
        let refusal = Rc::new(Refusal {
            message: refusal,
            tls,
        });
        Rc::new(Admission {
            door,
            limit,
            refusal,
            sockets,
        })
    }
}

/// Accepts on `listener` until `shard` shuts down; `serve` handles each client in a task of
/// its own. A connection over the door's limit is refused and counted, and the others get
/// its socket options.
pub async fn accept_loop<F, Fut>(
    shard: Rc<Shard>,
    listener: TcpListener,
    connections: Rc<Connections>,
    admission: Rc<Admission>,
    serve: F,
) where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let door = admission.door.name();
    loop {
        let stopped = shard.shutdown.wait();
        if shard.is_closing() {
            return;
        }
        match unless(listener.accept(), stopped).await {
            None => return,
            Some(Ok(stream)) => {
                if !admission.limit.try_take() {
                    shard.count_refused_connection(admission.door);
                    glommio::spawn_local(refuse(stream, admission.refusal.clone())).detach();
                    continue;
                }
                if let Err(e) = admission.sockets.apply(&stream) {
                    crate::log_line!("shard {}: {door} socket options: {e}", shard.id());
                }
                let admitted = admission.clone();
                connections.live.set(connections.live.get() + 1);
                let connections = connections.clone();
                let shard_id = shard.id();
                shard.count_connection(admission.door, true);
                let counting = shard.clone();
                spawn_contained(serve(stream), move |panicked| {
                    if panicked {
                        crate::log_line!(
                            "shard {shard_id}: a {door} connection failed and was closed"
                        );
                    }
                    counting.count_connection(admitted.door, false);
                    admitted.limit.give_back();
                    connections.live.set(connections.live.get() - 1);
                    connections.idle.notify();
                })
                .detach();
            }
            // EMFILE and friends: keep serving the clients we have, try again shortly.
            Some(Err(e)) => {
                crate::log_line!("shard {}: {door} accept failed: {e}", shard.id());
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Runs `work` unless `stop` completes first (then None).
pub async fn unless<T>(work: impl Future<Output = T>, stop: impl Future<Output = ()>) -> Option<T> {
    futures_lite::future::or(async { Some(work.await) }, async {
        stop.await;
        None
    })
    .await
}

/// Spawns `work` on this shard with a panic in it contained to it; `then(panicked)` runs after
/// it ended either way.
pub fn spawn_contained(
    work: impl Future<Output = ()> + 'static,
    then: impl FnOnce(bool) + 'static,
) -> glommio::Task<()> {
    let work = std::panic::AssertUnwindSafe(work);
    glommio::spawn_local(async move {
        let panicked = futures_lite::FutureExt::catch_unwind(work).await.is_err();
        then(panicked);
    })
}

/// One half of an accepted socket: a connection's reader task owns one, its writer task the
/// other, so neither waits for the other and no lock is taken. Both poll the same stream (one
/// descriptor per connection, not a dup'ed pair): a half borrows it only for the length of one
/// poll, which never overlaps another on a shard's single thread, and glommio keeps separate
/// readiness sources for reading and writing.
pub struct Half {
    stream: Rc<RefCell<TcpStream>>,
    /// The reader's, in low-latency mode: it polls its socket before waiting for the reactor.
    busy_poll: Option<Rc<BusyPoll>>,
}

/// Splits an accepted socket into its reader's and its writer's [`Half`]; the reader polls
/// its socket first if `busy_poll` is given (low-latency mode). Sets TCP_NODELAY.
pub fn split(stream: TcpStream, busy_poll: Option<Rc<BusyPoll>>) -> io::Result<(Half, Half)> {
    stream.set_nodelay(true)?;
    let shared = Rc::new(RefCell::new(stream));
    let reader = Half {
        stream: shared.clone(),
        busy_poll,
    };
    let writer = Half {
        stream: shared,
        busy_poll: None,
    };
    Ok((reader, writer))
}

impl Half {
    /// Makes closing the socket abortive (SO_LINGER 0: a reset, unsent data dropped): for a
    /// connection cut as dead, whose unsent bytes would otherwise sit in the kernel.
    pub fn abort_on_close(&self) {
        let stream = self.stream.borrow();
        // SAFETY: the descriptor stays open for the borrow: `stream` owns it.
        let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
        let _ = SockRef::from(&fd).set_linger(Some(Duration::ZERO));
    }

    /// Sends as much of `bufs` as the socket takes at once, without waiting (one `sendmsg`
    /// of them all): what a writer tries before it falls back to waiting writes. 0 when the
    /// socket takes nothing now.
    pub fn try_send_vectored(&self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let stream = self.stream.borrow();
        // SAFETY: the descriptor stays open for the borrow: `stream` owns it.
        let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        match SockRef::from(&fd).send_vectored_with_flags(bufs, flags) {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(0)
            }
            sent => sent,
        }
    }

    /// Reads what the socket has into `buf`, waiting until it has something; 0 at the end of
    /// the stream. In low-latency mode the socket is polled first (see [`BusyPoll`]).
    pub fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> Read<'a> {
        Read {
            half: self,
            buf,
            stage: Stage::Start,
        }
    }
}

/// The future of [`Half::read`], written out by hand: an idle connection's reader holds one,
/// and it is a few words.
pub struct Read<'a> {
    half: &'a mut Half,
    buf: &'a mut [u8],
    stage: Stage,
}

/// Where a [`Read`] is.
enum Stage {
    /// Not polled yet.
    Start,
    /// Polling the socket (low-latency mode).
    Polling(Polling),
    /// Left to the reactor; `waited` once it returned Pending (so the reactor turned since).
    Reactor { waited: bool },
}

impl Future for Read<'_> {
    type Output = io::Result<usize>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Stage::Start = this.stage {
            let polling = this.half.busy_poll.as_ref().and_then(BusyPoll::start);
            this.stage = polling.map_or(Stage::Reactor { waited: false }, Stage::Polling);
        }
        if let Stage::Polling(polling) = &mut this.stage {
            let fd = this.half.stream.borrow().as_raw_fd();
            match polling.poll_read(cx, fd, this.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(read)) => return Poll::Ready(read),
                Poll::Ready(None) => this.stage = Stage::Reactor { waited: false },
            }
        }
        let Stage::Reactor { waited } = &mut this.stage else {
            unreachable!("a read past its start and its polling waits for the reactor");
        };
        let read = Pin::new(&mut *this.half).poll_read(cx, this.buf);
        match (&read, &this.half.busy_poll) {
            (Poll::Pending, _) => *waited = true,
            (Poll::Ready(_), Some(busy_poll)) if *waited => busy_poll.turned(),
            _ => {}
        }
        read
    }
}

impl AsyncRead for Half {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.stream.borrow_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for Half {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.stream.borrow_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.stream.borrow_mut()).poll_flush(cx)
    }

    /// Shuts the socket down for writing (the reader's half can still read).
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.stream.borrow_mut()).poll_close(cx)
    }
}
