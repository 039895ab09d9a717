//! Wake-ups between tasks of one shard. glommio runs a shard's tasks on one thread, so these
//! are plain `Cell`s: no atomics, no locks, no syscalls.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Wakes every task waiting on it. A waiter created before a `notify` completes; one created
/// after waits for the next. Check your condition, then `wait()`: nothing can run in between.
#[derive(Default)]
pub struct Notify {
    epoch: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
}

impl Notify {
    /// Wakes everything waiting now.
    pub fn notify(&self) {
        self.epoch.set(self.epoch.get().wrapping_add(1));
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for waker in waiters {
            waker.wake();
        }
    }

    /// Completes at the next `notify`.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            notify: self,
            seen: self.epoch.get(),
        }
    }
}

/// Future returned by [`Notify::wait`].
pub struct Wait<'a> {
    notify: &'a Notify,
    seen: u64,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.epoch.get() != self.seen {
            return Poll::Ready(());
        }
        let mut waiters = self.notify.waiters.borrow_mut();
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// Counts answers from other shards (subscribe registrations, pings) and completes when the
/// last one arrives.
pub struct Countdown {
    remaining: Cell<usize>,
    done: Notify,
}

impl Countdown {
    /// Waits for `n` answers.
    pub fn new(n: usize) -> Countdown {
        Countdown {
            remaining: Cell::new(n),
            done: Notify::default(),
        }
    }

    /// One answer arrived.
    pub fn tick(&self) {
        let left = self.remaining.get();
        debug_assert!(left > 0, "more answers than expected");
        self.remaining.set(left.saturating_sub(1));
        if left <= 1 {
            self.done.notify();
        }
    }

    /// Answers still missing.
    pub fn remaining(&self) -> usize {
        self.remaining.get()
    }

    /// Completes once every answer arrived.
    pub async fn finished(&self) {
        while self.remaining.get() > 0 {
            self.done.wait().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future;

    #[test]
    fn waiter_created_before_notify_completes() {
        let n = Notify::default();
        let w = n.wait();
        n.notify();
        future::block_on(w);
    }

    #[test]
    fn waiter_created_after_notify_waits() {
        let n = Notify::default();
        n.notify();
        let mut w = Box::pin(n.wait());
        assert!(future::block_on(future::poll_once(&mut w)).is_none());
        n.notify();
        future::block_on(w);
    }

    #[test]
    fn countdown_finishes_after_last_tick() {
        let c = Countdown::new(2);
        let mut f = Box::pin(c.finished());
        c.tick();
        assert!(future::block_on(future::poll_once(&mut f)).is_none());
        c.tick();
        future::block_on(f);
        future::block_on(Countdown::new(0).finished());
    }
}
