//! This shard's counters, and the server-wide totals gathered by pinging every shard.

use std::cell::RefCell;
use std::rc::Rc;

use super::pending::{Pending, PingGather};
use super::Shard;
use crate::engine::messages::{DoorKind, ShardMsg, ShardStats};
use crate::engine::notify::Countdown;

impl Shard {
    /// Counts a datagram the UDP door dropped.
    pub fn count_dropped_datagram(&self) {
        self.stats.borrow_mut().datagrams_dropped += 1;
    }

    /// A TCP door's connection opened or closed.
    pub fn count_connection(&self, door: DoorKind, opened: bool) {
        let mut stats = self.stats.borrow_mut();
        let live = &mut stats.connections[door.index()];
        debug_assert!(opened || *live > 0, "more connections closed than opened");
        *live = if opened {
            *live + 1
        } else {
            live.saturating_sub(1)
        };
    }

    /// A connection to door `door` was refused: the door had its `max_connections`.
    pub fn count_refused_connection(&self, door: DoorKind) {
        self.stats.borrow_mut().connections_refused[door.index()] += 1;
    }

    /// A connection to door `door` was cut as dead (its peer vanished or stopped answering).
    pub fn count_cut_connection(&self, door: DoorKind) {
        self.stats.borrow_mut().connections_cut[door.index()] += 1;
    }

    /// This shard's counters now.
    pub fn stats(&self) -> ShardStats {
        let mut stats = *self.stats.borrow();
        stats.delivered = self.delivered.get();
        stats.topics = self.topics.borrow().len() as u64;
        stats.subscriptions = self.local.borrow().len() as u64;
        stats
    }

    /// Asks every other shard for its counters and returns the server-wide totals once all of
    /// them answered. Callers that need a bound (health checks) wrap it in a timeout.
    pub async fn ping_all(&self) -> ShardStats {
        let mut total = ShardStats::default();
        for stats in self.stats_per_shard().await {
            total.add(&stats);
        }
        total
    }

    /// Every shard's counters, by shard id, once all of them answered (the metrics endpoint).
    pub async fn stats_per_shard(&self) -> Vec<ShardStats> {
        let mut per_shard = vec![ShardStats::default(); self.count];
        per_shard[self.id] = self.stats();
        let gather = Rc::new(PingGather {
            countdown: Countdown::new(self.count - 1),
            per_shard: RefCell::new(per_shard),
        });
        if self.count > 1 {
            let token = self
                .pending
                .borrow_mut()
                .insert(Pending::Ping(gather.clone())) as u32;
            for peer in (0..self.count).filter(|&p| p != self.id) {
                self.push(peer, ShardMsg::Ping { token });
            }
        }
        gather.countdown.finished().await;
        let per_shard = gather.per_shard.borrow().clone();
        per_shard
    }
}
