//! Who hears how a publish went: the vocabulary a door, its shard and the topic's owner share.
//!
//! A door hands its shard a [`Reply`] with each publish; the shard turns it into a [`Route`]
//! that travels with each event to the topic's owner, whose answer comes back to the door's
//! [`AckSink`]. These types live apart from the shard so that the messages between shards
//! can name them without depending on the shard itself.

use std::rc::Rc;
use std::time::{Duration, Instant};

/// Receives the answers to a client's publishes. Doors implement it to write them to their
/// client.
pub trait AckSink {
    /// Called once per acknowledged request, on the shard the request arrived on.
    fn acked(&self, request_id: u64, outcome: AckOutcome);
    /// Called for each event of an unacknowledged request that its owner could not sequence.
    fn refused(&self, request_id: u64, error: PublishError);
}

/// A door's [`AckSink`] registered with its shard, so that owners on other shards can name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SinkId(pub(super) u64);

/// Who hears how a publish went.
pub enum Reply {
    /// Acknowledge once every event is sequenced (or report the first refusal).
    Ack(AckRequest),
    /// No acknowledgement; a refusal is still reported to the sink (nothing is lost silently).
    RefusalsOnly { sink: SinkId, request_id: u64 },
    /// Nobody can be told (UDP): refusals are counted only.
    Nobody,
}

/// [`Reply`] as it travels with each event to the owner shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Answer `Sequenced` for the pending request `token` of the publishing shard.
    Ack(u32),
    /// Answer `Refused` only if the event cannot be sequenced.
    Refusal {
        sink: SinkId,
        request_id: u64,
    },
    Nobody,
}

/// The answer to an acknowledged publish or batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckOutcome {
    /// Ok once every event is sequenced; the first refusal otherwise.
    pub result: Result<(), PublishError>,
    /// Sequence number of the last event sequenced (a single publish: its own).
    pub sequence: u64,
    /// Events in the request.
    pub count: u32,
    /// From the request's decoding to its last event being sequenced by its owner.
    pub latency: Duration,
}

/// A publish that wants an answer.
pub struct AckRequest {
    pub sink: Rc<dyn AckSink>,
    pub request_id: u64,
    /// When the door finished decoding the request (start of `latency`).
    pub decoded_at: Instant,
}

/// A shard's answer to a publish: the sequence number, or why it could not be sequenced.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    #[error("shard {shard} tracks {max} topics already (limits.max_topics_per_shard)")]
    TooManyTopics { shard: usize, max: usize },
    #[error("the server is shutting down")]
    ShuttingDown,
}
