//! How a TCP door takes clients on a shard: accept until shutdown, serve each client in its own
//! task with any panic contained to that connection, and know when all of them are gone; plus
//! the small pieces both doors' connections are built from.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::rc::Rc;
use std::time::Duration;

use glommio::net::{TcpListener, TcpStream};

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

/// Two handles on one accepted socket (the second a dup'ed fd), so a connection's reader and
/// writer tasks each own one and never share a lock. Sets TCP_NODELAY.
pub fn split(stream: TcpStream) -> io::Result<(TcpStream, TcpStream)> {
    stream.set_nodelay(true)?;
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) has no memory-safety preconditions; the result is checked.
    let fd = unsafe { libc::fcntl(stream.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh duplicate that this handle alone owns.
    let write_half = unsafe { TcpStream::from_raw_fd(fd) };
    Ok((stream, write_half))
}
