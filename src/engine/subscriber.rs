//! The subscriber side of the engine on its home shard: a subscription's bounded queue, and the
//! consumer (one client connection) that drains its ready subscriptions into socket writes.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use super::event::{Event, Priority};
use super::index::SubKey;
use super::notify::Notify;
use super::queue::{Offer, QueueStats, SubscriberQueue};
use super::topic::Pattern;

/// Where a subscription stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubState {
    Active,
    /// Cut as a slow consumer: its queue can still be drained, nothing new arrives.
    Cut,
    /// Unsubscribed or its connection closed.
    Closed,
}

/// One client's door-side view of its subscriptions: whichever of them have events (or news)
/// wait in `ready`, and `notify` wakes the task that writes to the client's socket.
#[derive(Default)]
pub struct Consumer {
    ready: RefCell<VecDeque<Rc<Subscriber>>>,
    /// Woken whenever a subscription of this consumer becomes ready.
    pub notify: Notify,
}

impl Consumer {
    /// The next subscription with something to deliver.
    pub fn next_ready(&self) -> Option<Rc<Subscriber>> {
        let sub = self.ready.borrow_mut().pop_front()?;
        sub.in_ready.set(false);
        Some(sub)
    }

    /// Puts `sub` on the ready list (once) and wakes the writer.
    pub fn mark_ready(&self, sub: &Rc<Subscriber>) {
        if !sub.in_ready.replace(true) {
            self.ready.borrow_mut().push_back(sub.clone());
            self.notify.notify();
        }
    }
}

/// A live subscription on its home shard.
pub struct Subscriber {
    /// Identity across shards.
    pub key: SubKey,
    /// The door's own id for it (native: the client's subscription id).
    pub tag: u64,
    pub pattern: Arc<Pattern>,
    pub min_priority: Priority,
    queue: RefCell<SubscriberQueue>,
    consumer: Rc<Consumer>,
    state: Cell<SubState>,
    in_ready: Cell<bool>,
}

impl Subscriber {
    pub(crate) fn new(
        key: SubKey,
        tag: u64,
        pattern: Arc<Pattern>,
        min_priority: Priority,
        queue: SubscriberQueue,
        consumer: Rc<Consumer>,
    ) -> Subscriber {
        Subscriber {
            key,
            tag,
            pattern,
            min_priority,
            queue: RefCell::new(queue),
            consumer,
            state: Cell::new(SubState::Active),
            in_ready: Cell::new(false),
        }
    }

    /// Current state.
    pub fn state(&self) -> SubState {
        self.state.get()
    }

    pub(crate) fn set_state(self: &Rc<Self>, state: SubState) {
        self.state.set(state);
        self.consumer.mark_ready(self);
    }

    /// Queues an arriving event by the shedding rules; wakes the consumer if anything changed.
    pub(crate) fn offer(self: &Rc<Self>, event: Event) -> Offer {
        debug_assert_eq!(self.state.get(), SubState::Active);
        let outcome = self.queue.borrow_mut().offer(event);
        if matches!(outcome, Offer::Queued | Offer::QueuedShedding(_)) {
            self.consumer.mark_ready(self);
        }
        outcome
    }

    /// The oldest queued event, for the consumer to write.
    pub fn pop(&self) -> Option<Event> {
        self.queue.borrow_mut().pop()
    }

    /// Events still queued.
    pub fn queued(&self) -> usize {
        self.queue.borrow().len()
    }

    /// This subscription's counters (delivered, shed by priority).
    pub fn stats(&self) -> QueueStats {
        self.queue.borrow().stats()
    }

    /// Puts this subscription back on its consumer's ready list (more left to write).
    pub fn requeue(self: &Rc<Self>) {
        self.consumer.mark_ready(self);
    }
}
