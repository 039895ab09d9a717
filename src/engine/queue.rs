//! A subscriber's bounded queue and the shedding rules of PROTOCOL.md §6.2. Pure data structure: no
//! I/O, no clock, tested on its own.
//!
//! Events are queued already encoded for the subscriber's door (the bytes its connection will
//! write), so an event delivered here holds nothing of its publisher's buffers and the writer
//! copies runs of them out at once. One FIFO per priority, each entry stamped with its arrival
//! number; the consumer takes the oldest arrival across the five fronts, so delivery order is
//! arrival order, while shedding "the oldest event of the lowest priority present" drops the
//! front of one FIFO. A bit mask says which FIFOs hold anything, so the usual subscriber, whose
//! events share one priority, takes from its one busy FIFO without comparing fronts.
//!
//! A run of one priority that a shard encoded once for all its subscriptions of one form
//! ([`SharedRecords`]) is queued by each as one entry that shares the bytes: its events still
//! count one by one (limits, shedding, arrival order), but nothing is copied per subscription.

use std::collections::VecDeque;
use std::rc::Rc;

use bytes::{Buf, Bytes, BytesMut};

use super::event::Priority;

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

/// What a full queue does with a CRITICAL event it cannot take (PROTOCOL.md §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CriticalOverflow {
    /// Cut the subscription: its client is told it lost CRITICAL events (SlowConsumer).
    Cut,
    /// Shed the event and count it, as any other: for a queue no client reads (the NATS
    /// bridge's export), where a cut would lose what follows it uncounted.
    Shed,
}

/// Counters a queue keeps about itself (per subscription; shards sum them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    pub queued: u64,
    pub delivered: u64,
    /// Shed events, by priority.
    pub shed: [u64; 5],
}

/// Events of one priority encoded once, back to back, for every subscription of a shard that
/// queues them in the same form (EVENT_RUN records do not name their subscription): each such
/// queue holds them as one entry sharing these bytes.
#[derive(Debug)]
pub struct SharedRecords {
    bytes: Bytes,
    /// Where each event ends in `bytes`.
    ends: Vec<u32>,
    priority: Priority,
}

impl SharedRecords {
    /// Encodes `count` events of `priority` into one buffer (of `capacity_bytes` to begin
    /// with): `encode` appends each with the writer it is given. At least one event.
    pub fn encode(
        priority: Priority,
        count: usize,
        capacity_bytes: usize,
        encode: impl FnOnce(&mut SharedRecordsWriter),
    ) -> SharedRecords {
        let mut writer = SharedRecordsWriter {
            bytes: BytesMut::with_capacity(capacity_bytes),
            ends: Vec::with_capacity(count),
        };
        encode(&mut writer);
        assert!(!writer.ends.is_empty(), "shared records hold an event");
        SharedRecords {
            bytes: writer.bytes.freeze(),
            ends: writer.ends,
            priority,
        }
    }

    /// Events held.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Never true: built with at least one event.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Where the `i`-th event begins.
    fn start(&self, i: usize) -> usize {
        if i == 0 {
            0
        } else {
            self.ends[i - 1] as usize
        }
    }
}

/// Appends the events of a [`SharedRecords`] being made, marking where each ends.
pub struct SharedRecordsWriter {
    bytes: BytesMut,
    ends: Vec<u32>,
}

impl SharedRecordsWriter {
    /// Appends one event, which `encode` writes.
    pub fn push(&mut self, encode: impl FnOnce(&mut BytesMut)) {
        encode(&mut self.bytes);
        let end = u32::try_from(self.bytes.len()).expect("a run is far smaller than 4 GiB");
        debug_assert!(self.ends.last().is_none_or(|&last| last <= end));
        self.ends.push(end);
    }
}

/// The `len` field of a lane entry that stands for the front of the lane's `shared` list
/// rather than one event in its `bytes`.
const SHARED_ENTRY: u32 = u32::MAX;

/// A queue's hold on shared records: the events from `first` on are still queued.
struct SharedCursor {
    records: Rc<SharedRecords>,
    first: usize,
}

/// The events of one priority, in arrival order: each entry is its arrival number and either
/// the length of one event encoded in `bytes` (back to back, oldest first), or
/// [`SHARED_ENTRY`], for the remaining events of the front of `shared` (whose arrival numbers
/// follow on from the entry's).
#[derive(Default)]
struct Lane {
    entries: VecDeque<(u64, u32)>,
    bytes: BytesMut,
    shared: VecDeque<SharedCursor>,
}

/// A lane that empties with more than this allocated for its bytes gives the allocation back:
/// a subscriber that caught up after a backlog does not keep its peak (up to the queue's whole
/// byte budget), while one in steady use, whose writer takes at most 256 KiB a turn, keeps
/// its buffer.
const KEEP_BYTES: usize = 1 << 20;
/// The same for the entries (16 bytes each).
const KEEP_ENTRIES: usize = 16 * 1024;

impl Lane {
    /// Forgets the entries of the `run` oldest events, whose bytes were already taken from the
    /// front of `bytes`; true when that emptied the lane, whose allocations are then kept
    /// unless a backlog made them large.
    fn forget_run(&mut self, run: usize) -> bool {
        debug_assert!(self.entries.iter().take(run).all(|e| e.1 != SHARED_ENTRY));
        self.entries.drain(..run);
        self.emptied()
    }

    /// Takes the `taken` oldest events of the shared records at the front (an entry of its
    /// own), forgetting the entry once they are all taken: their bytes, shared, and true when
    /// that emptied the lane.
    fn take_shared(&mut self, taken: usize) -> (Bytes, bool) {
        debug_assert_eq!(self.entries.front().map(|e| e.1), Some(SHARED_ENTRY));
        let cursor = self
            .shared
            .front_mut()
            .expect("a shared entry has its records");
        let records = &cursor.records;
        let end = cursor.first + taken;
        debug_assert!(taken > 0 && end <= records.len());
        let bytes = records
            .bytes
            .slice(records.start(cursor.first)..records.start(end));
        cursor.first = end;
        if end < records.len() {
            self.entries[0].0 += taken as u64;
            return (bytes, false);
        }
        self.shared.pop_front();
        self.entries.pop_front();
        (bytes, self.emptied())
    }

    /// True when the lane holds nothing now (its allocations then kept unless a backlog made
    /// them large).
    fn emptied(&mut self) -> bool {
        if !self.entries.is_empty() {
            return false;
        }
        debug_assert!(self.bytes.is_empty(), "the entries account for every byte");
        debug_assert!(
            self.shared.is_empty(),
            "the entries account for every shared run"
        );
        self.trim();
        true
    }

    /// Gives back a backlog's allocations, once the lane is empty. (Reclaiming an empty
    /// buffer moves nothing: it only rewinds to the allocation's start. A buffer that runs
    /// handed out by [`SubscriberQueue::drain_shared`] still share cannot be reclaimed: its
    /// writer trims again once it let go of them.)
    fn trim(&mut self) {
        debug_assert!(self.entries.is_empty());
        if self.bytes.try_reclaim(KEEP_BYTES + 1) {
            self.bytes = BytesMut::new();
        }
        if self.entries.capacity() > KEEP_ENTRIES {
            self.entries = VecDeque::new();
        }
    }
}

/// Bounded by both an event count and a byte budget (the events' encoded bytes).
pub struct SubscriberQueue {
    /// Made when the first event arrives: an idle subscription holds only the pointer.
    lanes: Option<Box<[Lane; 5]>>,
    /// Bit `p` is set exactly when lane `p` holds events.
    busy: u8,
    arrivals: u64,
    len: usize,
    bytes: usize,
    max_events: usize,
    max_bytes: usize,
    critical_overflow: CriticalOverflow,
    stats: QueueStats,
}

impl SubscriberQueue {
    /// A queue that holds at most `max_events` events and `max_bytes` bytes, and cuts its
    /// subscription when a CRITICAL event does not fit.
    pub fn new(max_events: usize, max_bytes: usize) -> SubscriberQueue {
        assert!(
            max_events > 0,
            "a subscriber queue must hold at least one event"
        );
        SubscriberQueue {
            lanes: None,
            busy: 0,
            arrivals: 0,
            len: 0,
            bytes: 0,
            max_events,
            max_bytes,
            critical_overflow: CriticalOverflow::Cut,
            stats: QueueStats::default(),
        }
    }

    /// This queue, doing `overflow` with a CRITICAL event that does not fit.
    pub fn with_critical_overflow(mut self, overflow: CriticalOverflow) -> SubscriberQueue {
        self.critical_overflow = overflow;
        self
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

    /// Whether `count` more events of `size` bytes together fit without shedding.
    fn fits(&self, count: usize, size: usize) -> bool {
        self.len + count <= self.max_events && self.bytes + size <= self.max_bytes
    }

    /// Counts `count` events of `size` bytes in, queued in `lane` (whose entry the caller
    /// pushes): the first arrival number they take.
    fn admit(&mut self, lane: usize, count: usize, size: usize) -> u64 {
        let first_arrival = self.arrivals + 1;
        self.arrivals += count as u64;
        self.len += count;
        self.bytes += size;
        self.stats.queued += count as u64;
        self.busy |= 1 << lane;
        debug_assert!(self.len <= self.max_events && self.bytes <= self.max_bytes);
        first_arrival
    }

    /// Offers an arriving event of `priority`, which `encode` appends to the buffer it is
    /// given, shedding by the rules of PROTOCOL.md §6.2 when the queue is full.
    pub fn offer(&mut self, priority: Priority, encode: impl FnOnce(&mut BytesMut)) -> Offer {
        let lane = priority as usize;
        let bytes = &mut self.lanes.get_or_insert_with(Box::default)[lane].bytes;
        let start = bytes.len();
        encode(bytes);
        let size = bytes.len() - start;
        if size > self.max_bytes {
            // It could never fit: shedding others for it would lose them for nothing.
            bytes.truncate(start);
            return self.refuse(priority);
        }
        let mut outcome = Offer::Queued;
        while !self.fits(1, size) {
            // The lowest priority below the arriving one that has anything queued (never the
            // arriving event's own lane, where its bytes now are).
            let below = self.busy & ((1u8 << lane) - 1);
            if below == 0 {
                self.lanes_mut()[lane].bytes.truncate(start);
                return self.refuse(priority);
            }
            let victim = below.trailing_zeros() as usize;
            let shed = self.shed_front(victim);
            self.bytes -= shed;
            self.len -= 1;
            self.stats.shed[victim] += 1;
            outcome = Offer::QueuedShedding(Priority::ALL[victim]);
        }
        let arrival = self.admit(lane, 1, size);
        let size = u32::try_from(size).expect("an event is far smaller than 4 GiB");
        self.lanes_mut()[lane].entries.push_back((arrival, size));
        outcome
    }

    /// Queues shared records whole, as one entry, if they fit without shedding anything;
    /// false leaves the queue as it was, for the caller to offer their events one by one
    /// (whose shedding then follows PROTOCOL.md §6.2 exactly, as a whole run never could).
    pub fn offer_shared(&mut self, records: &Rc<SharedRecords>) -> bool {
        let (count, size) = (records.len(), records.bytes.len());
        if !self.fits(count, size) {
            return false;
        }
        let lane = records.priority as usize;
        let first_arrival = self.admit(lane, count, size);
        let cursor = SharedCursor {
            records: records.clone(),
            first: 0,
        };
        let lane = &mut self.lanes.get_or_insert_with(Box::default)[lane];
        lane.entries.push_back((first_arrival, SHARED_ENTRY));
        lane.shared.push_back(cursor);
        true
    }

    /// Sheds the oldest event of a busy lane: its size.
    fn shed_front(&mut self, lane: usize) -> usize {
        let lane_ref = &mut self.lanes_mut()[lane];
        let (_, len) = lane_ref.entries[0];
        let (size, emptied) = if len == SHARED_ENTRY {
            let (bytes, emptied) = lane_ref.take_shared(1);
            (bytes.len(), emptied)
        } else {
            lane_ref.bytes.advance(len as usize);
            (len as usize, lane_ref.forget_run(1))
        };
        if emptied {
            self.busy &= !(1 << lane);
        }
        size
    }

    fn refuse(&mut self, priority: Priority) -> Offer {
        if priority == Priority::Critical && self.critical_overflow == CriticalOverflow::Cut {
            return Offer::Cut;
        }
        self.stats.shed[priority as usize] += 1;
        Offer::Shed
    }

    /// The lanes, once an event arrived (always so while any lane is busy).
    fn lanes_mut(&mut self) -> &mut [Lane; 5] {
        self.lanes
            .as_mut()
            .expect("lanes are made by the first event")
    }

    /// Hands the queued events, oldest arrival first, to `write`, for as long as fewer than
    /// `budget` bytes were handed (so at least one event when any is queued); the number of
    /// events handed. A run of events from one lane is handed as one slice, with its count.
    pub fn drain(&mut self, budget: usize, mut write: impl FnMut(&[u8], usize)) -> usize {
        self.drain_runs(budget, |run, events| match run {
            Taken::Own(bytes, len) => {
                write(&bytes[..len], events);
                bytes.advance(len);
            }
            Taken::Shared(bytes) => write(&bytes, events),
        })
    }

    /// As [`drain`](Self::drain), handing each run as `Bytes` cut from the lane without a
    /// copy: a writer can send them where they lie, after the lane moved on (its further
    /// events go after them, or, while they are still held, into a fresh buffer).
    pub fn drain_shared(&mut self, budget: usize, mut write: impl FnMut(Bytes, usize)) -> usize {
        self.drain_runs(budget, |run, events| match run {
            Taken::Own(bytes, len) => write(bytes.split_to(len).freeze(), events),
            Taken::Shared(bytes) => write(bytes, events),
        })
    }

    /// Gives back what a backlog left allocated in the empty lanes: for a writer to call once
    /// it dropped the runs [`drain_shared`](Self::drain_shared) handed it.
    pub fn trim(&mut self) {
        let Some(lanes) = self.lanes.as_mut() else {
            return;
        };
        for lane in lanes.iter_mut().filter(|l| l.entries.is_empty()) {
            lane.trim();
        }
    }

    /// The drain itself: `take(run, events)` gets each run in turn; an own run must be
    /// removed (its `len` bytes) from the front of its lane's buffer.
    fn drain_runs(&mut self, budget: usize, mut take: impl FnMut(Taken<'_>, usize)) -> usize {
        debug_assert_eq!(
            self.busy == 0,
            self.len == 0,
            "busy lanes hold the queued events"
        );
        let mut handed = 0;
        let mut events = 0;
        while handed < budget && self.busy != 0 {
            let (lane, run_limit) = if self.busy.is_power_of_two() {
                (self.busy.trailing_zeros() as usize, u64::MAX)
            } else {
                // Several priorities queued: the lane with the oldest front, for as long as
                // its arrivals come before every other lane's front.
                let (mut oldest, mut lane, mut next) = (u64::MAX, 0, u64::MAX);
                for (i, l) in self.lanes_mut().iter().enumerate() {
                    let Some(&(arrival, _)) = l.entries.front() else {
                        continue;
                    };
                    if arrival < oldest {
                        (next, oldest, lane) = (oldest, arrival, i);
                    } else if arrival < next {
                        next = arrival;
                    }
                }
                (lane, next)
            };
            let lane_ref = &mut self.lanes_mut()[lane];
            let (run, bytes, emptied) = if lane_ref.entries[0].1 == SHARED_ENTRY {
                // Shared records arrived all at once: no other lane's front falls among them.
                let cursor = lane_ref
                    .shared
                    .front()
                    .expect("a shared entry has its records");
                let (records, first) = (&cursor.records, cursor.first);
                debug_assert!(
                    lane_ref.entries[0].0 + (records.len() - first) as u64 <= run_limit,
                    "shared records' arrival numbers are consecutive"
                );
                let base = records.start(first);
                let left = budget - handed;
                // As for own events: each is handed while fewer than `budget` bytes were.
                let later = &records.ends[first..records.len() - 1];
                let run = 1 + later.partition_point(|&end| (end as usize - base) < left);
                let (shared, emptied) = lane_ref.take_shared(run);
                let bytes = shared.len();
                take(Taken::Shared(shared), run);
                (run, bytes, emptied)
            } else {
                let mut run = 0;
                let mut bytes = 0;
                for &(arrival, len) in &lane_ref.entries {
                    if len == SHARED_ENTRY || handed + bytes >= budget || arrival > run_limit {
                        break;
                    }
                    run += 1;
                    bytes += len as usize;
                }
                debug_assert!(run > 0, "the oldest front is always handed");
                let before = lane_ref.bytes.len();
                take(Taken::Own(&mut lane_ref.bytes, bytes), run);
                debug_assert_eq!(lane_ref.bytes.len() + bytes, before, "take removed the run");
                (run, bytes, lane_ref.forget_run(run))
            };
            if emptied {
                self.busy &= !(1 << lane);
            }
            handed += bytes;
            events += run;
        }
        self.len -= events;
        self.bytes -= handed;
        self.stats.delivered += events as u64;
        events
    }
}

/// A run of one lane's events as a drain hands it on.
enum Taken<'a> {
    /// `len` bytes at the front of the lane's own buffer, to be removed by the taker.
    Own(&'a mut BytesMut, usize),
    /// Shared records' bytes.
    Shared(Bytes),
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    /// Bytes of a test event: its length, its sequence number, then padding.
    const SIZE: usize = 12;

    fn offer_sized(q: &mut SubscriberQueue, seq: u64, priority: Priority, size: usize) -> Offer {
        assert!(size >= SIZE);
        q.offer(priority, |out| {
            out.put_u32_le(size as u32);
            out.put_u64_le(seq);
            out.put_bytes(0, size - SIZE);
        })
    }

    fn offer(q: &mut SubscriberQueue, seq: u64, priority: Priority) -> Offer {
        offer_sized(q, seq, priority, SIZE)
    }

    /// Shared records holding `events` (sequence, priority, size), encoded as the tests'
    /// events are.
    fn shared(priority: Priority, events: &[(u64, Priority, usize)]) -> SharedRecords {
        SharedRecords::encode(priority, events.len(), 0, |writer| {
            for &(seq, _, size) in events {
                writer.push(|out| {
                    out.put_u32_le(size as u32);
                    out.put_u64_le(seq);
                    out.put_bytes(0, size - SIZE);
                });
            }
        })
    }

    /// The sequence numbers of the events `bytes` holds, in order.
    fn sequences(mut bytes: &[u8]) -> Vec<u64> {
        let mut seqs = Vec::new();
        while !bytes.is_empty() {
            let size = bytes.get_u32_le() as usize;
            seqs.push(bytes.get_u64_le());
            bytes.advance(size - SIZE);
        }
        seqs
    }

    /// Drains what `budget` allows; the sequence numbers handed. An even budget drains with
    /// [`SubscriberQueue::drain_shared`], whose runs are held until the next shared drain
    /// (in `HELD`), so the lanes go on while earlier runs still share their buffers.
    fn drain_within(q: &mut SubscriberQueue, budget: usize) -> Vec<u64> {
        thread_local! {
            static HELD: std::cell::RefCell<Vec<Bytes>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let mut bytes = Vec::new();
        let mut counted = 0;
        let events = if budget % 2 == 0 {
            HELD.with_borrow_mut(|held| {
                held.clear();
                q.drain_shared(budget, |run, n| {
                    bytes.extend_from_slice(&run);
                    held.push(run);
                    counted += n;
                })
            })
        } else {
            q.drain(budget, |run, n| {
                bytes.extend_from_slice(run);
                counted += n;
            })
        };
        assert_eq!(counted, events, "the runs' counts add up");
        let seqs = sequences(&bytes);
        assert_eq!(seqs.len(), events);
        seqs
    }

    fn drain(q: &mut SubscriberQueue) -> Vec<u64> {
        drain_within(q, usize::MAX)
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
            assert_eq!(offer(&mut q, i as u64 + 1, p), Offer::Queued);
        }
        assert_eq!(drain(&mut q), vec![1, 2, 3, 4]);
        assert_eq!(q.bytes(), 0);
        assert_eq!(q.stats().delivered, 4);
    }

    #[test]
    fn a_drain_stops_once_its_budget_is_reached_but_hands_at_least_one_event() {
        let mut q = SubscriberQueue::new(10, 1 << 20);
        for seq in 1..=5 {
            offer(&mut q, seq, Priority::Medium);
        }
        assert_eq!(drain_within(&mut q, 1), vec![1]);
        assert_eq!(drain_within(&mut q, 2 * SIZE), vec![2, 3]);
        assert_eq!(drain_within(&mut q, 2 * SIZE + 1), vec![4, 5]);
        assert_eq!(drain_within(&mut q, 100), Vec::<u64>::new());
        assert!(q.is_empty());
    }

    #[test]
    fn full_queue_sheds_oldest_of_lowest_priority_first() {
        let mut q = SubscriberQueue::new(3, 1 << 20);
        offer(&mut q, 1, Priority::Medium);
        offer(&mut q, 2, Priority::Low);
        offer(&mut q, 3, Priority::Low);
        assert_eq!(
            offer(&mut q, 4, Priority::High),
            Offer::QueuedShedding(Priority::Low)
        );
        assert_eq!(
            offer(&mut q, 5, Priority::High),
            Offer::QueuedShedding(Priority::Low)
        );
        assert_eq!(
            offer(&mut q, 6, Priority::High),
            Offer::QueuedShedding(Priority::Medium)
        );
        assert_eq!(drain(&mut q), vec![4, 5, 6]);
        assert_eq!(q.stats().shed, [0, 2, 1, 0, 0]);
    }

    #[test]
    fn arriving_event_is_shed_when_nothing_lower_is_queued() {
        let mut q = SubscriberQueue::new(2, 1 << 20);
        offer(&mut q, 1, Priority::High);
        offer(&mut q, 2, Priority::Medium);
        assert_eq!(offer(&mut q, 3, Priority::Medium), Offer::Shed);
        assert_eq!(offer(&mut q, 4, Priority::Batch), Offer::Shed);
        assert_eq!(q.stats().shed, [1, 0, 1, 0, 0]);
        assert_eq!(drain(&mut q), vec![1, 2]);
    }

    #[test]
    fn critical_that_cannot_be_queued_cuts() {
        let mut q = SubscriberQueue::new(2, 1 << 20);
        offer(&mut q, 1, Priority::Critical);
        offer(&mut q, 2, Priority::Low);
        assert_eq!(
            offer(&mut q, 3, Priority::Critical),
            Offer::QueuedShedding(Priority::Low)
        );
        assert_eq!(offer(&mut q, 4, Priority::Critical), Offer::Cut);
        assert_eq!(drain(&mut q), vec![1, 3]);
    }

    #[test]
    fn a_queue_that_sheds_critical_counts_it_instead_of_cutting() {
        let mut q = SubscriberQueue::new(2, 1 << 20).with_critical_overflow(CriticalOverflow::Shed);
        offer(&mut q, 1, Priority::Critical);
        offer(&mut q, 2, Priority::Low);
        assert_eq!(
            offer(&mut q, 3, Priority::Critical),
            Offer::QueuedShedding(Priority::Low)
        );
        assert_eq!(offer(&mut q, 4, Priority::Critical), Offer::Shed);
        assert_eq!(q.stats().shed, [0, 1, 0, 0, 1]);
        assert_eq!(drain(&mut q), vec![1, 3]);
    }

    #[test]
    fn byte_budget_bounds_the_queue_too() {
        let mut q = SubscriberQueue::new(100, SIZE * 2);
        offer(&mut q, 1, Priority::Low);
        offer(&mut q, 2, Priority::Low);
        assert_eq!(offer(&mut q, 3, Priority::Low), Offer::Shed);
        assert_eq!(
            offer(&mut q, 4, Priority::High),
            Offer::QueuedShedding(Priority::Low)
        );
        assert_eq!(q.len(), 2);
        assert_eq!(q.bytes(), SIZE * 2);
        assert_eq!(
            drain(&mut q),
            vec![2, 4],
            "a refused event left no bytes behind"
        );
    }

    #[test]
    fn an_event_larger_than_the_whole_budget_is_shed_or_cuts_alone() {
        let mut q = SubscriberQueue::new(100, SIZE);
        assert_eq!(offer(&mut q, 1, Priority::Low), Offer::Queued);
        assert_eq!(
            offer_sized(&mut q, 2, Priority::High, SIZE + 100),
            Offer::Shed
        );
        assert_eq!(
            offer_sized(&mut q, 3, Priority::Critical, SIZE + 100),
            Offer::Cut
        );
        assert_eq!(
            drain(&mut q),
            vec![1],
            "nothing was shed to make room in vain"
        );
    }

    #[test]
    fn a_lane_gives_back_a_backlog_s_allocation_once_drained_but_keeps_a_small_one() {
        let mut q = SubscriberQueue::new(1 << 16, 64 << 20);
        let lane = Priority::Medium as usize;
        for seq in 0..10 {
            offer_sized(&mut q, seq, Priority::Medium, 1000);
        }
        drain(&mut q);
        let lanes = q.lanes.as_mut().unwrap();
        assert!(
            lanes[lane].bytes.try_reclaim(10_000),
            "a small buffer is kept"
        );
        for seq in 0..3_000 {
            offer_sized(&mut q, seq, Priority::Medium, 1000);
        }
        assert_eq!(drain_within(&mut q, 1000).len(), 1);
        assert_eq!(
            q.bytes(),
            2_999 * 1000,
            "partly drained: the rest is still there"
        );
        assert_eq!(drain(&mut q).len(), 2_999);
        let lanes = q.lanes.as_mut().unwrap();
        assert!(
            !lanes[lane].bytes.try_reclaim(1),
            "the 3 MB backlog's buffer was given back"
        );
        assert_eq!(offer(&mut q, 1, Priority::Medium), Offer::Queued);
        assert_eq!(drain(&mut q), vec![1], "and the lane still works");
    }

    #[test]
    fn runs_drained_shared_leave_a_working_lane_and_a_backlog_is_given_back_after_them() {
        let mut q = SubscriberQueue::new(1 << 16, 64 << 20);
        let lane = Priority::Medium as usize;
        for seq in 0..3_000 {
            offer_sized(&mut q, seq, Priority::Medium, 1000);
        }
        let mut held = Vec::new();
        let handed = q.drain_shared(usize::MAX, |run, _| held.push(run));
        assert_eq!(handed, 3_000);
        // The lane goes on while the runs still share its buffer.
        offer(&mut q, 9, Priority::Medium);
        let mut bytes = held.concat();
        let mut more = Vec::new();
        q.drain_shared(usize::MAX, |run, _| more.push(run));
        bytes.extend(more.concat());
        assert_eq!(sequences(&bytes), (0..3_000).chain([9]).collect::<Vec<_>>());
        drop((held, more));
        // A backlog drained at once, its runs let go, the queue trimmed: whichever way the
        // lane parted with the runs' buffer, it does not keep one of a backlog's size.
        for seq in 0..3_000 {
            offer_sized(&mut q, seq, Priority::Medium, 1000);
        }
        let mut held = Vec::new();
        q.drain_shared(usize::MAX, |run, _| held.push(run));
        drop(held);
        q.trim();
        let lanes = q.lanes.as_mut().unwrap();
        assert!(
            !lanes[lane].bytes.try_reclaim(KEEP_BYTES),
            "trimmed: the lane holds no buffer of a backlog's size"
        );
    }

    /// The rules of PROTOCOL.md §6.2 written as plainly as possible, over one list in arrival
    /// order: what the lanes and the mask must agree with. Entries: (sequence, priority, size).
    #[derive(Default)]
    struct Model {
        queued: Vec<(u64, Priority, usize)>,
    }

    impl Model {
        fn bytes(&self) -> usize {
            self.queued.iter().map(|e| e.2).sum()
        }

        fn offer(
            &mut self,
            event: (u64, Priority, usize),
            max_events: usize,
            max_bytes: usize,
        ) -> Offer {
            let (_, priority, size) = event;
            if size > max_bytes {
                return refused(priority);
            }
            let mut outcome = Offer::Queued;
            while self.queued.len() >= max_events || self.bytes() + size > max_bytes {
                let lowest = self.queued.iter().map(|e| e.1).min();
                match lowest.filter(|p| *p < priority) {
                    Some(p) => {
                        let oldest = self.queued.iter().position(|e| e.1 == p).unwrap();
                        self.queued.remove(oldest);
                        outcome = Offer::QueuedShedding(p);
                    }
                    None => return refused(priority),
                }
            }
            self.queued.push(event);
            outcome
        }

        fn drain(&mut self, budget: usize) -> Vec<u64> {
            let mut handed = 0;
            let mut seqs = Vec::new();
            while handed < budget && !self.queued.is_empty() {
                let (seq, _, size) = self.queued.remove(0);
                handed += size;
                seqs.push(seq);
            }
            seqs
        }
    }

    fn refused(priority: Priority) -> Offer {
        if priority == Priority::Critical {
            Offer::Cut
        } else {
            Offer::Shed
        }
    }

    proptest::proptest! {
        #![proptest_config(crate::proptest_config())]

        #[test]
        fn the_lanes_follow_the_plain_rules(
            ops in proptest::collection::vec((0u8..5, 0usize..40, 0usize..80, 0u8..3, 1u64..6), 1..300),
            max_events in 1usize..12,
            max_bytes in 10usize..400,
        ) {
            let mut q = SubscriberQueue::new(max_events, max_bytes);
            let mut model = Model::default();
            for (op, (priority, padding, budget, kind, count)) in ops.into_iter().enumerate() {
                // Sequence numbers: room for the events of one shared op between ops.
                let (seq, priority) = (op as u64 * 8, Priority::from_u8(priority).unwrap());
                match kind {
                    0 => {
                        proptest::prop_assert_eq!(drain_within(&mut q, budget), model.drain(budget));
                    }
                    1 => {
                        let got = offer_sized(&mut q, seq, priority, SIZE + padding);
                        let expected = model.offer((seq, priority, SIZE + padding), max_events, max_bytes);
                        proptest::prop_assert_eq!(got, expected);
                    }
                    _ => {
                        // `count` events sharing records, sized apart; queued whole only when
                        // they all fit without shedding, else offered one by one.
                        let events: Vec<(u64, Priority, usize)> = (0..count)
                            .map(|i| (seq + i, priority, SIZE + (padding + i as usize * 7) % 40))
                            .collect();
                        let records = Rc::new(shared(priority, &events));
                        let size: usize = events.iter().map(|e| e.2).sum();
                        let fits = model.queued.len() + events.len() <= max_events
                            && model.bytes() + size <= max_bytes;
                        proptest::prop_assert_eq!(q.offer_shared(&records), fits);
                        for &event in &events {
                            if fits {
                                model.queued.push(event);
                            } else {
                                let got = offer_sized(&mut q, event.0, priority, event.2);
                                let expected = model.offer(event, max_events, max_bytes);
                                proptest::prop_assert_eq!(got, expected);
                            }
                        }
                    }
                }
                proptest::prop_assert_eq!(q.len(), model.queued.len());
                proptest::prop_assert_eq!(q.bytes(), model.bytes());
            }
            proptest::prop_assert_eq!(drain(&mut q), model.drain(usize::MAX));
        }
    }
}
