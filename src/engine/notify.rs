//! Wake-ups between tasks of one shard. glommio runs a shard's tasks on one thread, so these
//! are plain `Cell`s: no atomics, no locks, no syscalls.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use slab::Slab;

/// Wakes every task waiting on it. A waiter created before a `notify` completes; one created
/// after waits for the next. Check your condition, then `wait()`: nothing can run in between.
///
/// A waiter dropped before it completes takes its waker out again: a shard-wide `Notify` such
/// as its shutdown is waited on by every connection, and wakers left behind by connections
/// that closed would hold their tasks' memory until the shard stops.
#[derive(Default)]
pub struct Notify {
    epoch: Cell<u64>,
    /// The wakers of the pending waiters of this epoch; a waiter knows its key.
    waiters: RefCell<Slab<Waker>>,
}

impl Notify {
    /// Wakes everything waiting now.
    pub fn notify(&self) {
        self.epoch.set(self.epoch.get().wrapping_add(1));
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for (_, waker) in waiters {
            waker.wake();
        }
    }

    /// Completes at the next `notify`.
    pub fn wait(&self) -> Wait<'_> {
        Wait {
            notify: self,
            seen: self.epoch.get(),
            key: None,
        }
    }

    /// Wakers registered by pending waiters.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.waiters.borrow().len()
    }
}

/// Future returned by [`Notify::wait`].
pub struct Wait<'a> {
    notify: &'a Notify,
    seen: u64,
    /// Where this waiter's waker is, once polled. Valid while the epoch is still `seen`: a
    /// `notify` takes the whole slab.
    key: Option<usize>,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.epoch.get() != self.seen {
            return Poll::Ready(()); // the notify took the slab: Drop leaves the stale key alone
        }
        let mut waiters = self.notify.waiters.borrow_mut();
        match self.key {
            Some(key) => {
                let waker = &mut waiters[key];
                if !waker.will_wake(cx.waker()) {
                    waker.clone_from(cx.waker());
                }
            }
            None => {
                let key = waiters.insert(cx.waker().clone());
                drop(waiters);
                self.key = Some(key);
            }
        }
        Poll::Pending
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            if self.notify.epoch.get() == self.seen {
                self.notify.waiters.borrow_mut().remove(key);
            }
        }
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
    fn a_waiter_dropped_before_the_notify_takes_its_waker_away() {
        let n = Notify::default();
        for _ in 0..1_000 {
            let mut w = Box::pin(n.wait());
            assert!(future::block_on(future::poll_once(&mut w)).is_none());
            assert!(future::block_on(future::poll_once(&mut w)).is_none());
            assert_eq!(n.waiting(), 1, "a waiter polled again keeps one waker");
        }
        assert_eq!(n.waiting(), 0, "dropped waiters leave no wakers behind");
        let mut kept = Box::pin(n.wait());
        assert!(future::block_on(future::poll_once(&mut kept)).is_none());
        let mut gone = Box::pin(n.wait());
        assert!(future::block_on(future::poll_once(&mut gone)).is_none());
        drop(gone);
        n.notify();
        future::block_on(kept);
        assert_eq!(n.waiting(), 0);
    }

    #[test]
    fn a_waiter_dropped_after_the_notify_leaves_the_next_epoch_s_waiters_alone() {
        let n = Notify::default();
        let mut old = Box::pin(n.wait());
        assert!(future::block_on(future::poll_once(&mut old)).is_none());
        n.notify();
        let mut new = Box::pin(n.wait());
        assert!(future::block_on(future::poll_once(&mut new)).is_none());
        drop(old); // its key may equal the new waiter's: it must not remove that one
        assert_eq!(n.waiting(), 1);
        n.notify();
        future::block_on(new);
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
