//! Joining eventstream nodes through NATS, so that events published on one node reach
//! subscribers on others without a cluster protocol of eventstream's own: a node exports
//! local events of chosen topics to NATS subjects, and imports what its local subscribers ask
//! for. This version has the bridge's parts that do no I/O, which fix how events look in NATS;
//! the connection to NATS is not built yet, and nothing is exported or imported.
//!
//! [`subject`] is how topics and patterns are named in NATS, [`headers`] what an event carries
//! in its NATS message besides its payload, [`interest`] which NATS subscriptions the node's
//! local subscribers need.

pub mod headers;
pub mod interest;
pub mod subject;
