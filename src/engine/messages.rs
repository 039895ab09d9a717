//! What shards say to each other. A [`Batch`] is what one channel send carries: everything a
//! shard produced for one peer since its last send, so one wake-up moves many events.

use std::sync::Arc;
use std::time::Instant;

use super::event::Event;
use super::index::{SubEntry, SubKey};
use super::reply::{PublishError, Route, SinkId};
use super::run::{Numbering, Run};
use super::topic::Pattern;

/// A point-in-time copy of one shard's counters, carried by pings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Events accepted from clients on this shard (before routing).
    pub received: u64,
    /// Events this shard sequenced as the owner of their topic.
    pub sequenced: u64,
    /// Events taken from the queues of subscriptions homed on this shard to be written to
    /// their clients (not those shed, nor those discarded when a subscription ended).
    pub delivered: u64,
    /// Events shed from subscriber queues homed here, by priority.
    pub shed: [u64; 5],
    /// Subscribers cut as slow consumers.
    pub cut: u64,
    /// Events this shard, as owner, could not sequence (topic limit, shutdown).
    pub refused: u64,
    /// Topics this shard owns.
    pub topics: u64,
    /// Live subscriptions homed here.
    pub subscriptions: u64,
    /// Datagrams dropped by the UDP door (malformed or invalid).
    pub datagrams_dropped: u64,
    /// Batches and messages sent to other shards.
    pub batches_out: u64,
    pub messages_out: u64,
    /// Open client connections on this shard, per TCP door ([`DoorKind::index`]).
    pub connections: [u64; DoorKind::COUNT],
    /// Connections refused because their door had its `max_connections`, per TCP door.
    pub connections_refused: [u64; DoorKind::COUNT],
    /// Connections cut as dead (keepalive, unacknowledged data, write deadline, or no answer to
    /// a PING), per TCP door.
    pub connections_cut: [u64; DoorKind::COUNT],
    /// Acknowledged publish requests by the time from decoding to the last event sequenced:
    /// bucket `i` counts those under `2^i` µs (the last bucket: everything slower).
    pub ack_latency: [u64; ACK_LATENCY_BUCKETS],
    /// Sum of those latencies, in nanoseconds.
    pub ack_latency_sum_ns: u64,
}

/// The TCP doors whose connections are counted: each door's counters are found by it, and its
/// name in logs and metrics comes from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DoorKind {
    /// The native binary protocol.
    Native,
    /// gRPC over HTTP/2.
    Grpc,
    /// Prometheus metrics (it cuts no connection as dead: a scrape that does not finish in
    /// time is answered 408 and closed).
    Metrics,
}

impl DoorKind {
    /// Every door, in the order of the per-door counters of [`ShardStats`].
    pub const ALL: [DoorKind; 3] = [DoorKind::Native, DoorKind::Grpc, DoorKind::Metrics];
    /// How many doors there are: the length of each per-door counter.
    pub const COUNT: usize = DoorKind::ALL.len();

    /// Its place in the per-door counters.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Its name in log lines.
    pub fn name(self) -> &'static str {
        match self {
            DoorKind::Native => "native",
            DoorKind::Grpc => "gRPC",
            DoorKind::Metrics => "metrics",
        }
    }

    /// Its `door` label in metrics.
    pub fn label(self) -> &'static str {
        match self {
            DoorKind::Native => "native",
            DoorKind::Grpc => "grpc",
            DoorKind::Metrics => "metrics",
        }
    }
}

/// Buckets of [`ShardStats::ack_latency`]: 1 µs to about 1 s, doubling.
pub const ACK_LATENCY_BUCKETS: usize = 21;

impl ShardStats {
    /// Counts one acknowledged request that took `latency` (a few instructions: no lock, no
    /// allocation, shard-local).
    pub fn record_ack_latency(&mut self, latency: std::time::Duration) {
        let us = latency.as_micros().min(u128::from(u64::MAX)) as u64;
        // Smallest i with us < 2^i.
        let bucket = (u64::BITS - us.leading_zeros()) as usize;
        self.ack_latency[bucket.min(ACK_LATENCY_BUCKETS - 1)] += 1;
        self.ack_latency_sum_ns = self
            .ack_latency_sum_ns
            .saturating_add(latency.as_nanos().min(u128::from(u64::MAX)) as u64);
    }
}

impl ShardStats {
    /// Adds `other` into `self` (for server-wide totals).
    pub fn add(&mut self, other: &ShardStats) {
        self.received += other.received;
        self.sequenced += other.sequenced;
        self.delivered += other.delivered;
        for (a, b) in self.shed.iter_mut().zip(other.shed) {
            *a += b;
        }
        self.cut += other.cut;
        self.refused += other.refused;
        self.topics += other.topics;
        self.subscriptions += other.subscriptions;
        self.datagrams_dropped += other.datagrams_dropped;
        self.batches_out += other.batches_out;
        self.messages_out += other.messages_out;
        for (a, b) in self.connections.iter_mut().zip(other.connections) {
            *a += b;
        }
        for (a, b) in (self.connections_refused.iter_mut()).zip(other.connections_refused) {
            *a += b;
        }
        for (a, b) in self.connections_cut.iter_mut().zip(other.connections_cut) {
            *a += b;
        }
        for (a, b) in self.ack_latency.iter_mut().zip(other.ack_latency) {
            *a += b;
        }
        self.ack_latency_sum_ns += other.ack_latency_sum_ns;
    }
}

/// One message between shards. `token`s name a pending request in the sender's table.
#[derive(Debug)]
pub enum ShardMsg {
    /// To the topic's owner: sequence and fan out, then answer as `route` says.
    Publish { event: Event, route: Route },
    /// To the topic's owner: sequence a run as one unit, then answer once as `route` says.
    PublishRun { run: Run, route: Route },
    /// To the publisher's shard: the owner sequenced (or refused) one event of request `token`
    /// (for a run: the whole run, `outcome` holding its last sequence number).
    Sequenced {
        token: u32,
        outcome: Result<u64, PublishError>,
        at: Instant,
    },
    /// To the publisher's shard: the owner refused an event of unacknowledged request
    /// `request_id`, published through `sink`.
    Refused {
        sink: SinkId,
        request_id: u64,
        error: PublishError,
    },
    /// To a subscriber's home shard: queue `event` for the subscriptions listed in the batch's
    /// `subs[start..start + len]`.
    Deliver { event: Event, start: u32, len: u32 },
    /// To a subscriber's home shard: queue a sequenced run for the subscriptions listed in the
    /// batch's `subs[start..start + len]`.
    DeliverRun {
        run: Run,
        numbering: Numbering,
        start: u32,
        len: u32,
    },
    /// Register a subscription in the receiver's index, then answer `Done`.
    Subscribe {
        entry: SubEntry,
        pattern: Arc<Pattern>,
        token: u32,
    },
    /// Forget a subscription (no answer).
    Unsubscribe { key: SubKey, pattern: Arc<Pattern> },
    /// Answer with `Pong` carrying this shard's counters.
    Ping { token: u32 },
    /// Answer to `Ping`.
    Pong { token: u32, stats: ShardStats },
    /// Answer to `Subscribe`.
    Done { token: u32 },
}

/// Everything one shard sends another in one channel message.
#[derive(Debug, Default)]
pub struct Batch {
    pub msgs: Vec<ShardMsg>,
    /// Subscription keys that `Deliver` messages point into.
    pub subs: Vec<SubKey>,
}

impl Batch {
    /// True when there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }
}
