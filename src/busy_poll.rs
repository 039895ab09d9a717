//! Low-latency mode's socket reads. A shard started with `shards.spin_before_park_us` spins
//! instead of sleeping when it runs out of work; this module makes its TCP connections spin
//! too: after a read, a connection polls its socket with non-blocking `recv` calls, letting
//! the shard's other tasks run in between, for up to that same window.
//!
//! Why: a read that waits for glommio's reactor to report the socket readable costs a turn
//! of the reactor (arming the readiness poll, re-arming the preemption timer, flushing the
//! rings: three or four `io_uring_enter` calls, each 1-5 µs on a VM) on top of the `recv`. A
//! polled socket costs the `recv` alone, like the host's busy-poll ping-pong.
//!
//! The bound: glommio turns its reactor (its rings, timers and the other shards' messages)
//! only between runs of a shard's task queue, and a polling connection keeps that queue busy.
//! So while its sockets poll, a shard still turns its reactor every [`TURN_EVERY`]: the poll
//! that finds that much time passed since the last turn waits for one (on a timer only the
//! reactor fires) before it goes on. Other shards' messages wait no longer than that. No more
//! than [`MAX_POLLING`] sockets of a shard poll at a time.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::time::{Duration, Instant};

/// Sockets of one shard that may poll at the same time: each poll of each is a system call,
/// so many of them would slow the rounds of all.
pub const MAX_POLLING: usize = 16;

/// Longest a shard's reactor goes without a turn while its sockets poll.
pub const TURN_EVERY: Duration = Duration::from_micros(50);

/// One shard's socket polling, shared by its connections' readers.
#[derive(Debug)]
pub struct BusyPoll {
    /// How long a read polls a quiet socket before it waits for the reactor.
    window: Duration,
    /// When the reactor last turned, as far as this shard's readers saw.
    turned: Cell<Instant>,
    polling: Cell<usize>,
}

impl BusyPoll {
    /// Reads poll a quiet socket for up to `window`.
    pub fn new(window: Duration) -> BusyPoll {
        assert!(!window.is_zero(), "polling needs a window");
        BusyPoll {
            window,
            turned: Cell::new(Instant::now()),
            polling: Cell::new(0),
        }
    }

    /// Polls `fd` into `buf` until it has data, an error or the end of the stream (`Some`
    /// with what `recv` returned), or until it stayed quiet for the window (`None`: the
    /// caller waits for the reactor, then calls [`turned`](Self::turned)).
    pub async fn read(&self, fd: RawFd, buf: &mut [u8]) -> Option<io::Result<usize>> {
        let _polling = self.enter()?;
        let started = Instant::now();
        loop {
            if self.turned.get().elapsed() >= TURN_EVERY {
                self.turn().await;
            }
            if let Some(read) = recv_now(fd, buf) {
                return Some(read);
            }
            if started.elapsed() >= self.window {
                return None;
            }
            futures_lite::future::yield_now().await;
        }
    }

    /// The reactor turned (a read waited for it).
    pub fn turned(&self) {
        self.turned.set(Instant::now());
    }

    /// Waits for a turn of the reactor: a timer that is not due when first polled is fired
    /// by the reactor alone.
    async fn turn(&self) {
        let mut timer = glommio::timer::Timer::new(Duration::from_micros(1));
        let mut waited = false;
        futures_lite::future::poll_fn(|cx| {
            let poll = Pin::new(&mut timer).poll(cx);
            waited |= poll.is_pending();
            poll.map(drop)
        })
        .await;
        if waited {
            self.turned();
        }
    }

    /// Counts a polling socket, unless there are enough.
    fn enter(&self) -> Option<Polling<'_>> {
        if self.polling.get() >= MAX_POLLING {
            return None;
        }
        self.polling.set(self.polling.get() + 1);
        Some(Polling(self))
    }
}

/// A socket polling; counted out when dropped (a read given up on by its caller, at
/// shutdown, included).
struct Polling<'a>(&'a BusyPoll);

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        let polling = self.0.polling.get();
        debug_assert!(polling > 0, "more polling sockets left than entered");
        self.0.polling.set(polling - 1);
    }
}

/// One non-blocking `recv`: `None` if the socket has nothing yet.
fn recv_now(fd: RawFd, buf: &mut [u8]) -> Option<io::Result<usize>> {
    loop {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the length of the call;
        // `fd` is the caller's open socket.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Some(Ok(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => return None,
            io::ErrorKind::Interrupted => continue,
            _ => return Some(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::rc::Rc;

    /// Runs `test` on a glommio executor of its own: turns need its reactor.
    fn on_shard<F: Future<Output = ()> + 'static>(test: impl FnOnce() -> F + Send + 'static) {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(64 * 1024)
            .spawn(test)
            .expect("an executor")
            .join()
            .expect("the test ran");
    }

    #[test]
    fn reads_what_is_there_at_once() {
        on_shard(|| async {
            let (mut a, b) = UnixStream::pair().unwrap();
            a.write_all(b"hello").unwrap();
            let busy = BusyPoll::new(Duration::from_secs(1));
            let mut buf = [0u8; 16];
            let n = busy.read(b.as_raw_fd(), &mut buf).await;
            assert_eq!(n.unwrap().unwrap(), 5);
            assert_eq!(&buf[..5], b"hello");
            assert_eq!(busy.polling.get(), 0, "counted out");
        });
    }

    #[test]
    fn end_of_stream_reads_zero() {
        on_shard(|| async {
            let (a, b) = UnixStream::pair().unwrap();
            drop(a);
            let busy = BusyPoll::new(Duration::from_secs(1));
            let n = busy.read(b.as_raw_fd(), &mut [0u8; 4]).await;
            assert_eq!(n.unwrap().unwrap(), 0);
        });
    }

    #[test]
    fn a_quiet_socket_is_polled_for_the_window_then_left_to_the_reactor() {
        on_shard(|| async {
            let (_a, b) = UnixStream::pair().unwrap();
            let busy = BusyPoll::new(Duration::from_millis(20));
            let started = Instant::now();
            assert!(busy.read(b.as_raw_fd(), &mut [0u8; 4]).await.is_none());
            assert!(started.elapsed() >= Duration::from_millis(20));
            assert_eq!(busy.polling.get(), 0);
        });
    }

    #[test]
    fn data_arriving_while_polling_is_read() {
        on_shard(|| async {
            let (mut a, b) = UnixStream::pair().unwrap();
            let writer = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(5));
                a.write_all(b"late").unwrap();
                a
            });
            let busy = BusyPoll::new(Duration::from_secs(10));
            let mut buf = [0u8; 8];
            let n = busy.read(b.as_raw_fd(), &mut buf).await;
            assert_eq!(n.unwrap().unwrap(), 4);
            assert_eq!(&buf[..4], b"late");
            drop(writer.join());
        });
    }

    /// The reactor keeps turning while a socket polls: a timer (which only the reactor fires)
    /// fires long before the poll ends. Without the turns it would fire only after it.
    #[test]
    fn the_reactor_turns_while_a_socket_polls() {
        on_shard(|| async {
            let (_a, b) = UnixStream::pair().unwrap();
            let started = Instant::now();
            let fired = Rc::new(Cell::new(None));
            let timer = {
                let fired = fired.clone();
                glommio::spawn_local(async move {
                    glommio::timer::sleep(Duration::from_micros(200)).await;
                    fired.set(Some(started.elapsed()));
                })
            };
            let busy = BusyPoll::new(Duration::from_millis(200));
            assert!(busy.read(b.as_raw_fd(), &mut [0u8; 4]).await.is_none());
            timer.await;
            let fired = fired.get().expect("the timer fired");
            assert!(fired < Duration::from_millis(100), "fired after {fired:?}");
        });
    }

    #[test]
    fn a_read_given_up_on_is_counted_out() {
        on_shard(|| async {
            let (_a, b) = UnixStream::pair().unwrap();
            let busy = BusyPoll::new(Duration::from_secs(10));
            let mut buf = [0u8; 4];
            {
                let read = std::pin::pin!(busy.read(b.as_raw_fd(), &mut buf));
                assert!(futures_lite::future::poll_once(read).await.is_none());
                assert_eq!(busy.polling.get(), 1, "polling");
            }
            assert_eq!(busy.polling.get(), 0);
        });
    }

    #[test]
    fn no_more_than_max_polling_sockets_poll() {
        let busy = BusyPoll::new(Duration::from_secs(10));
        let held: Vec<_> = (0..MAX_POLLING).map(|_| busy.enter().unwrap()).collect();
        assert!(busy.enter().is_none(), "enough are polling");
        drop(held);
        assert!(busy.enter().is_some());
    }
}
