//! A subscriber's bounded queue and the shedding rules of §4. Pure data structure: no I/O, no
//! clock, tested on its own.
//!
//! One FIFO per priority, each entry stamped with its arrival number; the consumer takes the
//! oldest arrival across the five fronts, so delivery order is arrival order, while shedding
//! "the oldest event of the lowest priority present" is a `pop_front` on one FIFO.

use std::collections::VecDeque;

use super::event::{Event, Priority};

/// What happened to an event offered to a full or non-full queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued without loss.
    Queued,
    /// Queued after shedding the oldest queued event of this lower priority.
    QueuedShedding(Priority),
    /// The arriving event was shed (queue full of events at least as important).
    Shed,
    /// A CRITICAL event could not be queued: the subscriber must be cut.
    Cut,
}

/// Counters a queue keeps about itself (per subscription; shards sum them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub queued: u64,
    pub delivered: u64,
    /// Shed events, by priority.
    pub shed: [u64; 5],
}

/// Bounded by both an event count and a byte budget (event sizes as [`Event::size`]).
pub struct SubscriberQueue {
    lanes: [VecDeque<(u64, Event)>; 5],
    arrivals: u64,
    len: usize,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
    stats: QueueStats,
}

impl SubscriberQueue {
    /// A queue that holds at most `max_events` events and `max_bytes` bytes.
    pub fn new(max_events: usize, max_bytes: usize) -> SubscriberQueue {
        assert!(
            max_events > 0,
            "a subscriber queue must hold at least one event"
        );
        SubscriberQueue {
            lanes: Default::default(),
            arrivals: 0,
            len: 0,
            bytes: 0,
            max_events,
            max_bytes,
            stats: QueueStats::default(),
        }
    }

    /// Events queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes queued.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// This queue's counters.
    pub fn stats(&self) -> QueueStats {
        self.stats
    }

    fn fits(&self, size: usize) -> bool {
        self.len < self.max_events && self.bytes + size <= self.max_bytes
    }

    /// Offers an arriving event, shedding by the rules of §4 when the queue is full.
    pub fn offer(&mut self, event: Event) -> Offer {
        let size = event.size();
        if size > self.max_bytes {
            // It could never fit: shedding others for it would lose them for nothing.
            return self.refuse(event.priority);
        }
        let mut outcome = Offer::Queued;
        while !self.fits(size) {
            // The lowest priority below the arriving one that has anything queued.
            let victim = Priority::ALL[..event.priority as usize]
                .iter()
                .copied()
                .find(|p| !self.lanes[*p as usize].is_empty());
            match victim {
                Some(p) => {
                    let (_, shed) = self.lanes[p as usize].pop_front().expect("lane not empty");
                    self.len -= 1;
                    self.bytes -= shed.size();
                    self.stats.shed[p as usize] += 1;
                    outcome = Offer::QueuedShedding(p);
                }
                None => return self.refuse(event.priority),
            }
        }
        self.arrivals += 1;
        self.len += 1;
        self.bytes += size;
        self.stats.queued += 1;
        self.lanes[event.priority as usize].push_back((self.arrivals, event));
        debug_assert!(self.len <= self.max_events);
        outcome
    }

    fn refuse(&mut self, priority: Priority) -> Offer {
        if priority == Priority::Critical {
            return Offer::Cut;
        }
        self.stats.shed[priority as usize] += 1;
        Offer::Shed
    }

    /// Takes the oldest queued event (arrival order, whatever its priority).
    pub fn pop(&mut self) -> Option<Event> {
        let lane = self
            .lanes
            .iter()
            .enumerate()
            .filter_map(|(i, lane)| lane.front().map(|(arrival, _)| (*arrival, i)))
            .min()?
            .1;
        let (_, event) = self.lanes[lane].pop_front()?;
        self.len -= 1;
        self.bytes -= event.size();
        self.stats.delivered += 1;
        Some(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::event::{EventId, Metadata};
    use crate::engine::topic::Topic;
    use bytes::Bytes;

    fn event(seq: u64, priority: Priority) -> Event {
        Event {
            topic: Topic::parse(Bytes::from_static(b"t")).unwrap(),
            id: EventId::Given(Bytes::from_static(b"i")),
            payload: Bytes::from_static(b"12345678"),
            metadata: Metadata::default(),
            priority,
            timestamp_ns: 1,
            sequence: seq,
        }
    }

    fn drain(q: &mut SubscriberQueue) -> Vec<u64> {
        std::iter::from_fn(|| q.pop()).map(|e| e.sequence).collect()
    }

    #[test]
    fn delivers_in_arrival_order_across_priorities() {
        let mut q = SubscriberQueue::new(10, 1 << 20);
        for (i, p) in [
            Priority::High,
            Priority::Batch,
            Priority::Critical,
            Priority::Low,
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(q.offer(event(i as u64 + 1, p)), Offer::Queued);
        }
        assert_eq!(drain(&mut q), vec![1, 2, 3, 4]);
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn full_queue_sheds_oldest_of_lowest_priority_first() {
        let mut q = SubscriberQueue::new(3, 1 << 20);
        q.offer(event(1, Priority::Medium));
        q.offer(event(2, Priority::Low));
        q.offer(event(3, Priority::Low));
        assert_eq!(
            q.offer(event(4, Priority::High)),
            Offer::QueuedShedding(Priority::Low)
        );
        assert_eq!(
            q.offer(event(5, Priority::High)),
            Offer::QueuedShedding(Priority::Low)
        );
        assert_eq!(
            q.offer(event(6, Priority::High)),
            Offer::QueuedShedding(Priority::Medium)
        );
        assert_eq!(drain(&mut q), vec![4, 5, 6]);
        assert_eq!(q.stats().shed, [0, 2, 1, 0, 0]);
    }

    #[test]
    fn arriving_event_is_shed_when_nothing_lower_is_queued() {
        let mut q = SubscriberQueue::new(2, 1 << 20);
        q.offer(event(1, Priority::High));
        q.offer(event(2, Priority::Medium));
        assert_eq!(q.offer(event(3, Priority::Medium)), Offer::Shed);
        assert_eq!(q.offer(event(4, Priority::Batch)), Offer::Shed);
        assert_eq!(q.stats().shed, [1, 0, 1, 0, 0]);
        assert_eq!(drain(&mut q), vec![1, 2]);
    }

    #[test]
    fn critical_that_cannot_be_queued_cuts() {
        let mut q = SubscriberQueue::new(2, 1 << 20);
        q.offer(event(1, Priority::Critical));
        q.offer(event(2, Priority::Low));
        assert_eq!(
            q.offer(event(3, Priority::Critical)),
            Offer::QueuedShedding(Priority::Low)
        );
        assert_eq!(q.offer(event(4, Priority::Critical)), Offer::Cut);
        assert_eq!(drain(&mut q), vec![1, 3]);
    }

    #[test]
    fn byte_budget_bounds_the_queue_too() {
        let size = event(0, Priority::Low).size();
        let mut q = SubscriberQueue::new(100, size * 2);
        q.offer(event(1, Priority::Low));
        q.offer(event(2, Priority::Low));
        assert_eq!(q.offer(event(3, Priority::Low)), Offer::Shed);
        assert_eq!(
            q.offer(event(4, Priority::High)),
            Offer::QueuedShedding(Priority::Low)
        );
        assert_eq!(q.len(), 2);
        assert_eq!(q.bytes(), size * 2);
    }

    #[test]
    fn an_event_larger_than_the_whole_budget_is_shed_or_cuts_alone() {
        let size = event(0, Priority::Low).size();
        let mut q = SubscriberQueue::new(100, size);
        assert_eq!(q.offer(event(1, Priority::Low)), Offer::Queued);
        let mut big = event(2, Priority::High);
        big.payload = bytes::Bytes::from(vec![0u8; 100]);
        assert_eq!(q.offer(big.clone()), Offer::Shed);
        big.priority = Priority::Critical;
        assert_eq!(q.offer(big), Offer::Cut);
        assert_eq!(
            drain(&mut q),
            vec![1],
            "nothing was shed to make room in vain"
        );
    }
}
