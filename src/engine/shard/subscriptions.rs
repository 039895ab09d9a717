//! Subscriptions: registered on every shard that may own a matching topic (its owner for an
//! exact pattern, all shards for a wildcard) and confirmed before events are promised.

use std::rc::Rc;
use std::sync::Arc;

use super::pending::Pending;
use super::{InterestHook, Shard};
use crate::engine::event::Priority;
use crate::engine::index::{SubEntry, SubKey};
use crate::engine::messages::ShardMsg;
use crate::engine::notify::Countdown;
use crate::engine::queue::SubscriberQueue;
use crate::engine::routing::owner_of;
use crate::engine::subscriber::{Consumer, Encoding, SubState, Subscriber};
use crate::engine::topic::Pattern;

impl Shard {
    /// The shards a subscription must be registered on: its topic's owner for an exact
    /// pattern, every shard for a wildcard.
    pub(super) fn targets(&self, pattern: &Pattern) -> std::ops::Range<usize> {
        if pattern.is_exact() {
            let owner = owner_of(pattern.as_str().as_bytes(), self.count);
            owner..owner + 1
        } else {
            0..self.count
        }
    }

    /// Registers a subscription on every shard that may own a matching topic and returns once all
    /// of them confirmed: from then on, every event sequenced anywhere reaches it
    /// (PROTOCOL.md §5.3).
    pub async fn subscribe(
        self: &Rc<Self>,
        pattern: Pattern,
        min_priority: Priority,
        consumer: &Rc<Consumer>,
        tag: u64,
    ) -> Rc<Subscriber> {
        let encoding = consumer.encoding();
        (self.subscribe_as(pattern, min_priority, consumer, tag, encoding)).await
    }

    /// As [`subscribe`](Self::subscribe), for a subscription whose events are queued in
    /// `encoding` rather than in its consumer's usual form (a native subscription that asked
    /// for delivery runs).
    pub async fn subscribe_as(
        self: &Rc<Self>,
        pattern: Pattern,
        min_priority: Priority,
        consumer: &Rc<Consumer>,
        tag: u64,
        encoding: Encoding,
    ) -> Rc<Subscriber> {
        let local = self.next_local.get();
        self.next_local.set(local + 1);
        let key = SubKey {
            shard: self.id as u16,
            local,
        };
        let pattern = Arc::new(pattern);
        let sub = Rc::new(Subscriber::new(
            key,
            (tag, encoding),
            pattern.clone(),
            min_priority,
            SubscriberQueue::new(
                self.limits.subscriber_queue_events,
                self.limits.subscriber_queue_bytes,
            )
            .with_critical_overflow(consumer.critical_overflow()),
            consumer.clone(),
            self.delivered.clone(),
        ));
        self.local.borrow_mut().insert(local, sub.clone());
        self.tell_interest(&sub, true);
        let entry = SubEntry { key, min_priority };
        let targets = self.targets(&pattern);
        let remote = targets.clone().filter(|&t| t != self.id).count();
        let countdown = Rc::new(Countdown::new(remote));
        let token = self
            .pending
            .borrow_mut()
            .insert(Pending::Subscribe(countdown.clone())) as u32;
        for target in targets {
            if target == self.id {
                self.index.borrow_mut().insert(&pattern, entry);
            } else {
                let pattern = pattern.clone();
                self.push(
                    target,
                    ShardMsg::Subscribe {
                        entry,
                        pattern,
                        token,
                    },
                );
            }
        }
        if remote == 0 {
            self.pending.borrow_mut().remove(token as usize);
        }
        // If the caller goes away before every shard confirmed, undo the registration.
        let guard = UnsubscribeOnDrop(Some((self.clone(), sub.clone())));
        countdown.finished().await;
        guard.disarm();
        sub
    }

    /// Ends a subscription: no event reaches it afterwards. Idempotent.
    pub fn unsubscribe(&self, sub: &Rc<Subscriber>) {
        let was = sub.state();
        if was == SubState::Closed {
            return;
        }
        sub.set_state(SubState::Closed);
        self.local.borrow_mut().remove(&sub.key.local);
        if was == SubState::Active {
            self.unregister(sub);
            self.tell_interest(sub, false);
        }
    }

    /// Lets this shard's [`InterestHook`] know a local subscription started or ended.
    pub(super) fn tell_interest(&self, sub: &Subscriber, added: bool) {
        let hook = self.interest_hook.borrow().clone();
        if let Some(hook) = hook {
            hook.changed(sub, added);
        }
    }

    /// Installs `hook`, told of every local subscription that starts or ends from now on.
    pub fn set_interest_hook(&self, hook: Rc<dyn InterestHook>) {
        *self.interest_hook.borrow_mut() = Some(hook);
    }

    pub(super) fn unregister(&self, sub: &Subscriber) {
        for target in self.targets(&sub.pattern) {
            if target == self.id {
                self.index.borrow_mut().remove(&sub.pattern, sub.key);
            } else {
                let pattern = sub.pattern.clone();
                self.push(
                    target,
                    ShardMsg::Unsubscribe {
                        key: sub.key,
                        pattern,
                    },
                );
            }
        }
    }
}

/// Undoes a subscription whose caller went away before every shard confirmed it.
struct UnsubscribeOnDrop(Option<(Rc<Shard>, Rc<Subscriber>)>);

impl UnsubscribeOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for UnsubscribeOnDrop {
    fn drop(&mut self) {
        if let Some((shard, sub)) = self.0.take() {
            shard.unsubscribe(&sub);
        }
    }
}
