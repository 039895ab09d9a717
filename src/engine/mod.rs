//! The engine: everything between a door that decoded an event and the queue of a subscriber
//! that will receive it. Doors (native TCP and UDP, gRPC) call into the [`Shard`] of
//! the core they run on.
//!
//! Read in this order: [`event`] and [`topic`] (what flows), [`routing`] (who owns a topic),
//! [`run`] (many events of one topic as one unit), [`shard`] (sequencing and fan-out), [`index`] (who matches), [`queue`] and [`subscriber`]
//! (per-subscriber buffering and shedding), [`messages`] (what crosses between shards).

pub mod event;
pub mod index;
pub mod limits;
pub mod messages;
pub mod notify;
pub mod queue;
pub mod reply;
pub mod routing;
pub mod run;
pub mod shard;
pub mod subscriber;
pub mod topic;

pub use event::{
    Accepted, Event, EventError, EventId, EventRef, EventView, IdRange, IdText, IdView, Incoming,
    Metadata, Priority, RawEvent,
};
pub use limits::Limits;
pub use messages::{Batch, DoorKind, ShardStats, ACK_LATENCY_BUCKETS};
pub use reply::{AckOutcome, AckRequest, AckSink, PublishError, Reply, SinkId};
pub use shard::{InterestHook, Shard};
pub use subscriber::{Consumer, EncodeEvent, Encoding, SubState, Subscriber};
pub use topic::{Pattern, RecentTopic, Topic, TopicError};
