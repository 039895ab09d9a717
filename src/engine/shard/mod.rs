//! One shard: the engine state a single core owns, and the only code that touches it.
//!
//! A shard owns a slice of the topics (by [`owner_of`](super::routing::owner_of)): it
//! sequences them and fans their events out. It is also the home of the subscriptions its
//! clients made: their queues live here. Everything else travels between shards as
//! [`ShardMsg`](super::messages::ShardMsg)s, batched per peer in an outbox that a flusher task
//! sends whenever it gets to run, so one channel send and one wake-up carry everything a read
//! from a socket produced.
//!
//! The state is declared here; each job that works on it has its own file, in the order an
//! event meets them:
//!
//! | file | job |
//! |---|---|
//! | [`admission`] | checks a door's events and sends each to its topic's owner |
//! | [`fanout`] | as the owner: sequences a topic's events and hands them to every matching subscription |
//! | [`pending`] | requests waiting for answers (acks, refusals, subscribes, pings) and answering them |
//! | [`links`] | the outboxes and channels between shards, backpressure, and applying what arrives |
//! | [`subscriptions`] | registering and ending subscriptions on every shard that may match |
//! | [`stats`] | this shard's counters and the server-wide totals |

use hashbrown::HashMap;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hashbrown::HashTable;
use slab::Slab;

use super::event::IdGenerator;
use super::index::SubscriptionIndex;
use super::limits::Limits;
use super::messages::ShardStats;
use super::notify::Notify;
use super::reply::{AckSink, SinkId};
use super::subscriber::Subscriber;

mod admission;
mod fanout;
mod links;
mod pending;
mod stats;
mod subscriptions;

use fanout::TopicState;
use links::Outbox;
use pending::Pending;

/// A shard's engine state. Lives in an `Rc` on its own executor; never crosses threads.
pub struct Shard {
    id: usize,
    count: usize,
    limits: Limits,
    started: Instant,
    outboxes: Vec<Outbox>,
    /// Topics this shard owns, by [`table_hash`]: a parsed topic carries its hash, so a run
    /// of events on one topic hashes its name once, when it is parsed.
    topics: RefCell<HashTable<(Bytes, TopicState)>>,
    index: RefCell<SubscriptionIndex>,
    /// Subscriptions whose connection lives on this shard, by their shard-local key; looked up once
    /// per delivered event (foldhash: SipHash here was a measurable part of a delivery's cost,
    /// docs/PERFORMANCE.md).
    local: RefCell<HashMap<u64, Rc<Subscriber>>>,
    next_local: Cell<u64>,
    pending: RefCell<Slab<Pending>>,
    ids: RefCell<IdGenerator>,
    stats: RefCell<ShardStats>,
    /// Events taken from the queues of subscriptions homed here to be written (the
    /// subscriptions count into it as their doors drain them): `ShardStats::delivered`.
    delivered: Rc<Cell<u64>>,
    to_cut: RefCell<Vec<Rc<Subscriber>>>,
    sinks: RefCell<HashMap<SinkId, Rc<dyn AckSink>>>,
    next_sink: Cell<u64>,
    drained: Notify,
    closing: Cell<bool>,
    /// Woken when the server starts shutting down.
    pub shutdown: Notify,
    /// Told of local subscriptions as they start and end (the NATS bridge's imports).
    interest_hook: RefCell<Option<Rc<dyn InterestHook>>>,
}

/// Hears of every subscription homed on a shard as it starts and ends (the NATS bridge
/// subscribes in NATS to what local subscribers ask for). Called off the event path.
pub trait InterestHook {
    /// `sub` started (`added`) or ended: unsubscribed, its connection gone, or cut.
    fn changed(&self, sub: &Subscriber, added: bool);
    /// Whether the server should report itself serving (a required bridge that is down
    /// makes it not serving).
    fn serving(&self) -> bool {
        true
    }
}

impl Shard {
    /// Shard `id` of `count`, enforcing `limits`; `seed` makes its event ids unique.
    pub fn new(id: usize, count: usize, limits: Limits, seed: u64) -> Rc<Shard> {
        assert!(id < count && count <= usize::from(u16::MAX));
        Rc::new(Shard {
            id,
            count,
            limits,
            started: Instant::now(),
            outboxes: (0..count).map(|_| Outbox::default()).collect(),
            topics: RefCell::new(HashTable::new()),
            index: RefCell::default(),
            local: RefCell::default(),
            next_local: Cell::new(1),
            pending: RefCell::new(Slab::new()),
            ids: RefCell::new(IdGenerator::new(seed ^ (id as u64) << 48)),
            stats: RefCell::default(),
            delivered: Rc::default(),
            to_cut: RefCell::default(),
            sinks: RefCell::default(),
            next_sink: Cell::new(1),
            drained: Notify::default(),
            closing: Cell::new(false),
            shutdown: Notify::default(),
            interest_hook: RefCell::default(),
        })
    }

    /// This shard's index, 0-based.
    pub fn id(&self) -> usize {
        self.id
    }

    /// How many shards the server runs.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The limits every door enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Time since this shard started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// True once shutdown began.
    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// False while something this server was configured to need is down (a required NATS
    /// bridge that is disconnected): health checks then report it not serving.
    pub fn dependencies_serving(&self) -> bool {
        let hook = self.interest_hook.borrow();
        hook.as_ref().is_none_or(|hook| hook.serving())
    }

    /// Starts the shutdown: doors stop accepting and close their connections.
    pub fn begin_shutdown(&self) {
        self.closing.set(true);
        self.shutdown.notify();
    }
}
