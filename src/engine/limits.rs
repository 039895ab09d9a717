//! The explicit bounds of PROTOCOL.md §11, in one place, so that every door enforces the same ones.

use serde::Deserialize;

/// Per-event, per-batch, per-connection and per-subscriber limits. Every door checks events
/// against these before they reach the engine; subscriber queues are sized from them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Payload plus encoded metadata of one event, in bytes.
    pub max_message_bytes: usize,
    /// Metadata entries per event.
    pub max_metadata_entries: usize,
    /// Encoded metadata per event, in bytes.
    pub max_metadata_bytes: usize,
    /// Events per batch publish.
    pub max_batch_events: usize,
    /// Live subscriptions per client connection.
    pub max_subscriptions_per_connection: usize,
    /// Events a subscriber may have queued before shedding starts.
    pub subscriber_queue_events: usize,
    /// Bytes a subscriber may have queued before shedding starts.
    pub subscriber_queue_bytes: usize,
    /// Distinct topics one shard tracks (each keeps a sequence counter for the server's life).
    pub max_topics_per_shard: usize,
    /// Topic handles one native connection may declare (DECLARE; each holds a topic name).
    pub max_topic_handles: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 4 << 20,
            max_metadata_entries: 64,
            max_metadata_bytes: 16 << 10,
            max_batch_events: 10_000,
            max_subscriptions_per_connection: 1_024,
            subscriber_queue_events: 65_536,
            subscriber_queue_bytes: 64 << 20,
            max_topics_per_shard: 10_000_000,
            max_topic_handles: 1_024,
        }
    }
}
