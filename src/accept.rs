//! How a TCP door takes clients on a shard: accept until shutdown, serve each client in its own
//! task with any panic contained to that connection, and know when all of them are gone; plus
//! the small pieces both doors' connections are built from.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};

use glommio::net::{TcpListener, TcpStream};

use crate::busy_poll::{BusyPoll, Polling};
use crate::engine::notify::Notify;
use crate::engine::Shard;

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

/// Accepts on `listener` until `shard` shuts down; `serve` handles each client in a task of
/// its own. `door` names the door in logs.
pub async fn accept_loop<F, Fut>(
    shard: Rc<Shard>,
    listener: TcpListener,
    connections: Rc<Connections>,
    door: &'static str,
    serve: F,
) where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    loop {
        let stopped = shard.shutdown.wait();
        if shard.is_closing() {
            return;
        }
        match unless(listener.accept(), stopped).await {
            None => return,
            Some(Ok(stream)) => {
                connections.live.set(connections.live.get() + 1);
                let connections = connections.clone();
                let shard_id = shard.id();
                let counted = crate::engine::DOORS.iter().position(|d| *d == door);
                if let Some(i) = counted {
                    shard.count_connection(i, true);
                }
                let counting = shard.clone();
                spawn_contained(serve(stream), move |panicked| {
                    if panicked {
                        crate::log_line!(
                            "shard {shard_id}: a {door} connection failed and was closed"
                        );
                    }
                    if let Some(i) = counted {
                        counting.count_connection(i, false);
                    }
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
