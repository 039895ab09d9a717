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
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use glommio::timer::Timer;

/// Sockets of one shard that may poll at the same time: each poll of each is a system call,
/// so many of them would delay each socket's next poll and the reactor's next turn.
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

    /// Starts polling for one read, unless enough sockets of this shard poll already.
    pub fn start(self: &Rc<Self>) -> Option<Polling> {
        if self.polling.get() >= MAX_POLLING {
            return None;
        }
        self.polling.set(self.polling.get() + 1);
        Some(Polling {
            busy_poll: self.clone(),
            started: Instant::now(),
            turn: None,
        })
    }

    /// The reactor turned (a read waited for it).
    pub fn turned(&self) {
        self.turned.set(Instant::now());
    }
}

/// One read polling its socket. Kept in the read's future (a few words: an idle connection's
/// reader holds one), and counted out of [`MAX_POLLING`] when dropped, by a read given up on
/// included.
#[derive(Debug)]
pub struct Polling {
    busy_poll: Rc<BusyPoll>,
    started: Instant,
    /// A turn of the reactor this read waits for: a timer that was not due when first
    /// polled, which the reactor alone fires.
    turn: Option<Timer>,
}

impl Polling {
    /// Polls `fd` into `buf`: `Ready(Some(_))` with what `recv` returned (data, an error, or
    /// 0 at the end of the stream); `Ready(None)` once the socket stayed quiet for the window
    /// (the caller waits for the reactor, then calls [`BusyPoll::turned`]); `Pending` to let
    /// the shard's other tasks, or the reactor, run first (the task is woken again).
    pub fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        fd: RawFd,
        buf: &mut [u8],
    ) -> Poll<Option<io::Result<usize>>> {
        let busy_poll = &*self.busy_poll;
        let now = Instant::now();
        if let Some(timer) = &mut self.turn {
            if Pin::new(timer).poll(cx).is_pending() {
                return Poll::Pending;
            }
            busy_poll.turned();
            self.turn = None;
        } else if now.saturating_duration_since(busy_poll.turned.get()) >= TURN_EVERY {
            let mut timer = Timer::new(Duration::from_micros(1));
            // Due already (the thread was held up): no turn proven, try again next poll.
            if Pin::new(&mut timer).poll(cx).is_pending() {
                self.turn = Some(timer);
                return Poll::Pending;
            }
        }
        if let Some(read) = recv_now(fd, buf) {
            return Poll::Ready(Some(read));
        }
        if now.saturating_duration_since(self.started) >= busy_poll.window {
            return Poll::Ready(None);
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Drop for Polling {
    fn drop(&mut self) {
        let polling = self.busy_poll.polling.get();
        debug_assert!(polling > 0, "more polling sockets left than started");
        self.busy_poll.polling.set(polling - 1);
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

    use crate::testing::on_shard;

    /// One read as `Half::read` does it, without the reactor's part.
    async fn read(busy: &Rc<BusyPoll>, fd: RawFd, buf: &mut [u8]) -> Option<io::Result<usize>> {
        let mut polling = busy.start()?;
        futures_lite::future::poll_fn(|cx| polling.poll_read(cx, fd, buf)).await
    }

    #[test]
    fn reads_what_is_there_at_once() {
        on_shard(|| async {
            let (mut a, b) = UnixStream::pair().unwrap();
            a.write_all(b"hello").unwrap();
            let busy = Rc::new(BusyPoll::new(Duration::from_secs(1)));
            let mut buf = [0u8; 16];
            let n = read(&busy, b.as_raw_fd(), &mut buf).await;
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
            let busy = Rc::new(BusyPoll::new(Duration::from_secs(1)));
            let n = read(&busy, b.as_raw_fd(), &mut [0u8; 4]).await;
            assert_eq!(n.unwrap().unwrap(), 0);
        });
    }

    #[test]
    fn a_quiet_socket_is_polled_for_the_window_then_left_to_the_reactor() {
        on_shard(|| async {
            let (_a, b) = UnixStream::pair().unwrap();
            let busy = Rc::new(BusyPoll::new(Duration::from_millis(20)));
            let started = Instant::now();
            assert!(read(&busy, b.as_raw_fd(), &mut [0u8; 4]).await.is_none());
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
            let busy = Rc::new(BusyPoll::new(Duration::from_secs(10)));
            let mut buf = [0u8; 8];
            let n = read(&busy, b.as_raw_fd(), &mut buf).await;
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
            let busy = Rc::new(BusyPoll::new(Duration::from_millis(200)));
            assert!(read(&busy, b.as_raw_fd(), &mut [0u8; 4]).await.is_none());
            timer.await;
            let fired = fired.get().expect("the timer fired");
            assert!(fired < Duration::from_millis(100), "fired after {fired:?}");
        });
    }

    #[test]
    fn a_read_given_up_on_is_counted_out() {
        on_shard(|| async {
            let (_a, b) = UnixStream::pair().unwrap();
            let busy = Rc::new(BusyPoll::new(Duration::from_secs(10)));
            let mut buf = [0u8; 4];
            {
                let read = std::pin::pin!(read(&busy, b.as_raw_fd(), &mut buf));
                assert!(futures_lite::future::poll_once(read).await.is_none());
                assert_eq!(busy.polling.get(), 1, "polling");
            }
            assert_eq!(busy.polling.get(), 0);
        });
    }

    #[test]
    fn no_more_than_max_polling_sockets_poll() {
        let busy = Rc::new(BusyPoll::new(Duration::from_secs(10)));
        let held: Vec<_> = (0..MAX_POLLING).map(|_| busy.start().unwrap()).collect();
        assert!(busy.start().is_none(), "enough are polling");
        drop(held);
        assert!(busy.start().is_some());
    }
}
