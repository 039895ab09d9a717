//! The subscriber side of the engine on its home shard: a subscription's bounded queue, and the
//! consumer (one client connection) that drains its ready subscriptions into socket writes.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use bytes::BytesMut;

use super::event::{EventView, Priority};
use super::index::SubKey;
use super::notify::Notify;
use super::queue::{CriticalOverflow, Offer, QueueStats, SharedRecords, SubscriberQueue};
use super::run::{Numbering, Run};
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

/// How a door writes one event for one of its subscriptions (`tag`: the subscription's id at
/// that door), as its connection will send it. Events are queued in this form.
pub type EncodeEvent = fn(out: &mut BytesMut, event: &EventView<'_>, tag: u64);

/// The form a subscription's events are queued in.
#[derive(Clone, Copy, Debug)]
pub enum Encoding {
    /// Written for this subscription: the encoder puts its tag in every event.
    Tagged(EncodeEvent),
    /// Written alike for every subscription (the encoder ignores the tag): a shard encodes a
    /// run of one priority once, and every such subscription queues those bytes shared
    /// ([`SharedRecords`]).
    Shared(EncodeEvent),
}

impl Encoding {
    /// The function that writes each event.
    pub fn encoder(self) -> EncodeEvent {
        match self {
            Encoding::Tagged(encode) | Encoding::Shared(encode) => encode,
        }
    }

    /// Whether `other` writes events exactly as this shared encoding does.
    pub fn shares_with(self, other: EncodeEvent) -> bool {
        matches!(self, Encoding::Shared(encode) if std::ptr::fn_addr_eq(encode, other))
    }
}

/// One client's door-side view of its subscriptions: whichever of them have events (or news)
/// wait in `ready`, and `notify` wakes the task that writes to the client's socket.
/// Subscriptions whose client cannot take more for now (an HTTP/2 window is closed) wait in
/// `held`: retried at the writer's next turn, but never a reason for a turn of their own.
pub struct Consumer {
    ready: RefCell<VecDeque<Rc<Subscriber>>>,
    held: RefCell<Vec<Rc<Subscriber>>>,
    /// Woken whenever a subscription of this consumer becomes ready.
    pub notify: Notify,
    /// How its subscriptions queue events unless one asks for another form.
    encoding: Encoding,
    /// What its subscriptions' queues do with a CRITICAL event they cannot take.
    critical_overflow: CriticalOverflow,
}

impl Consumer {
    /// A consumer whose subscriptions queue events as `encode` writes them (unless a
    /// subscription is made with its own: [`Shard::subscribe_as`](super::Shard::subscribe_as)).
    pub fn new(encode: EncodeEvent) -> Consumer {
        Consumer {
            ready: RefCell::default(),
            held: RefCell::default(),
            notify: Notify::default(),
            encoding: Encoding::Tagged(encode),
            critical_overflow: CriticalOverflow::Cut,
        }
    }

    /// This consumer, its subscriptions' queues doing `overflow` with a CRITICAL event they
    /// cannot take (by default they cut the subscription).
    pub fn with_critical_overflow(mut self, overflow: CriticalOverflow) -> Consumer {
        self.critical_overflow = overflow;
        self
    }

    /// What its subscriptions' queues do with a CRITICAL event they cannot take.
    pub fn critical_overflow(&self) -> CriticalOverflow {
        self.critical_overflow
    }

    /// The next subscription with something to deliver.
    pub fn next_ready(&self) -> Option<Rc<Subscriber>> {
        let sub = self.ready.borrow_mut().pop_front()?;
        sub.in_ready.set(false);
        Some(sub)
    }

    /// The form its subscriptions queue events in by default.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Puts `sub` on the ready list (once) and wakes the writer.
    pub fn mark_ready(&self, sub: &Rc<Subscriber>) {
        if !sub.in_ready.replace(true) {
            self.ready.borrow_mut().push_back(sub.clone());
            self.notify.notify();
        }
    }

    /// `sub` has events its client cannot take now: it is retried after the writer's next
    /// wake-up (by [`release_held`](Self::release_held)), and does not wake the writer itself.
    /// Waking it would make a writer whose client's window stays closed retry without end,
    /// never letting the task that reads the window's reopening run.
    pub fn hold(&self, sub: &Rc<Subscriber>) {
        if !sub.in_held.replace(true) {
            self.held.borrow_mut().push(sub.clone());
        }
    }

    /// Moves every held subscription to the ready list, without waking the writer (which is
    /// the caller, at the start of a turn).
    pub fn release_held(&self) {
        let held = std::mem::take(&mut *self.held.borrow_mut());
        let mut ready = self.ready.borrow_mut();
        for sub in held {
            sub.in_held.set(false);
            if !sub.in_ready.replace(true) {
                ready.push_back(sub);
            }
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
    /// How events are queued for it: the form its door writes them in.
    encoding: Encoding,
    queue: RefCell<SubscriberQueue>,
    consumer: Rc<Consumer>,
    /// The home shard's count of events taken from its subscription queues to be written:
    /// counted at the drain, so events discarded with a subscription are never in it.
    delivered: Rc<Cell<u64>>,
    state: Cell<SubState>,
    in_ready: Cell<bool>,
    in_held: Cell<bool>,
}

impl Subscriber {
    /// `(tag, encoding)`: how its door names it and writes its events.
    pub(crate) fn new(
        key: SubKey,
        (tag, encoding): (u64, Encoding),
        pattern: Arc<Pattern>,
        min_priority: Priority,
        queue: SubscriberQueue,
        consumer: Rc<Consumer>,
        delivered: Rc<Cell<u64>>,
    ) -> Subscriber {
        Subscriber {
            key,
            tag,
            pattern,
            min_priority,
            encoding,
            queue: RefCell::new(queue),
            consumer,
            delivered,
            state: Cell::new(SubState::Active),
            in_ready: Cell::new(false),
            in_held: Cell::new(false),
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

    /// Queues an arriving event, encoded for the door, by the shedding rules; wakes the
    /// consumer if anything changed.
    pub(crate) fn offer(self: &Rc<Self>, event: &EventView<'_>) -> Offer {
        debug_assert_eq!(self.state.get(), SubState::Active);
        let (encode, tag) = (self.encoding.encoder(), self.tag);
        let outcome =
            (self.queue.borrow_mut()).offer(event.priority, |out| encode(out, event, tag));
        if matches!(outcome, Offer::Queued | Offer::QueuedShedding(_)) {
            self.consumer.mark_ready(self);
        }
        outcome
    }

    /// Queues the events of a run that this subscription wants (`min_priority`), in order,
    /// each by the shedding rules, telling `seen` each outcome and priority; stops at a
    /// [`Offer::Cut`] (the subscription then takes nothing more). The queue is borrowed and
    /// the consumer woken once for the whole run.
    pub(crate) fn offer_run(
        self: &Rc<Self>,
        run: &Run,
        numbering: &Numbering,
        mut seen: impl FnMut(Offer, Priority),
    ) {
        debug_assert_eq!(self.state.get(), SubState::Active);
        let (encode, tag) = (self.encoding.encoder(), self.tag);
        let mut queue = self.queue.borrow_mut();
        let mut queued = false;
        run.for_each_view(numbering, self.min_priority, |event| {
            let outcome = queue.offer(event.priority, |out| encode(out, event, tag));
            queued |= matches!(outcome, Offer::Queued | Offer::QueuedShedding(_));
            seen(outcome, event.priority);
            outcome != Offer::Cut
        });
        drop(queue);
        if queued {
            self.consumer.mark_ready(self);
        }
    }

    /// The form its events are queued in.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Queues shared records whole (they are in this subscription's form) if they fit
    /// without shedding anything, waking the consumer; false leaves the queue as it was,
    /// for the caller to offer the events one by one ([`SubscriberQueue::offer_shared`]).
    pub(crate) fn offer_shared(self: &Rc<Self>, records: &Rc<SharedRecords>) -> bool {
        debug_assert_eq!(self.state.get(), SubState::Active);
        debug_assert!(matches!(self.encoding, Encoding::Shared(_)));
        let queued = self.queue.borrow_mut().offer_shared(records);
        if queued {
            self.consumer.mark_ready(self);
        }
        queued
    }

    /// Hands the queued events, encoded, oldest first, to `write` while fewer than `budget`
    /// bytes were handed (see [`SubscriberQueue::drain`]); the number of events. `write`
    /// gets runs of events back to back, with how many events each holds.
    pub fn drain(&self, budget: usize, write: impl FnMut(&[u8], usize)) -> usize {
        let events = self.queue.borrow_mut().drain(budget, write);
        self.delivered.set(self.delivered.get() + events as u64);
        events
    }

    /// As [`drain`](Self::drain), handing runs as `Bytes` cut from the queue without a copy
    /// ([`SubscriberQueue::drain_shared`]); call [`trim`](Self::trim) once they are let go.
    pub fn drain_shared(&self, budget: usize, write: impl FnMut(bytes::Bytes, usize)) -> usize {
        let events = self.queue.borrow_mut().drain_shared(budget, write);
        self.delivered.set(self.delivered.get() + events as u64);
        events
    }

    /// Gives back what a backlog left allocated in the queue, once the runs a shared drain
    /// handed out were let go ([`SubscriberQueue::trim`]).
    pub fn trim(&self) {
        self.queue.borrow_mut().trim();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriber(consumer: &Rc<Consumer>) -> Rc<Subscriber> {
        Rc::new(Subscriber::new(
            SubKey { shard: 0, local: 1 },
            (1, Encoding::Tagged(|_, _, _| {})),
            Arc::new(Pattern::parse(b"a/*").unwrap()),
            Priority::Batch,
            SubscriberQueue::new(16, 1 << 20),
            consumer.clone(),
            Rc::default(),
        ))
    }

    #[test]
    fn a_held_subscription_waits_for_the_next_turn_without_waking_the_writer() {
        let consumer = Rc::new(Consumer::new(|_, _, _| {}));
        let sub = subscriber(&consumer);
        let turn = consumer.notify.wait();
        consumer.hold(&sub);
        consumer.hold(&sub);
        assert!(consumer.next_ready().is_none(), "held is not ready");
        assert!(
            futures_lite::future::block_on(futures_lite::future::poll_once(turn)).is_none(),
            "holding woke the writer"
        );
        consumer.release_held();
        assert!(Rc::ptr_eq(&consumer.next_ready().unwrap(), &sub));
        assert!(consumer.next_ready().is_none(), "held twice, ready once");
        consumer.release_held();
        assert!(consumer.next_ready().is_none(), "released once");
    }

    #[test]
    fn a_held_subscription_that_is_also_ready_is_drained_once_per_turn() {
        let consumer = Rc::new(Consumer::new(|_, _, _| {}));
        let sub = subscriber(&consumer);
        consumer.hold(&sub);
        consumer.mark_ready(&sub);
        consumer.release_held();
        assert!(Rc::ptr_eq(&consumer.next_ready().unwrap(), &sub));
        assert!(consumer.next_ready().is_none());
    }
}
