//! How a TCP door takes clients on a shard: accept until shutdown, serve each client in its own
//! task with any panic contained to that connection, and know when all of them are gone.

use std::cell::Cell;
use std::future::Future;
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
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            stopped.await;
            None
        })
        .await;
        match accepted {
            None => return,
            Some(Ok(stream)) => {
                connections.live.set(connections.live.get() + 1);
                let serving = std::panic::AssertUnwindSafe(serve(stream));
                let connections = connections.clone();
                let shard_id = shard.id();
                glommio::spawn_local(async move {
                    if futures_lite::FutureExt::catch_unwind(serving)
                        .await
                        .is_err()
                    {
                        crate::log_line!(
                            "shard {shard_id}: a {door} connection failed and was closed"
                        );
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
