//! Joining eventstream nodes through NATS: a node exports local events of chosen topics to
//! NATS subjects and imports what its local subscribers ask for, so events published on one
//! node reach subscribers on others without a cluster protocol of eventstream's own.
//!
//! [`subject`] is how topics and patterns are named in NATS, [`headers`] what an event carries
//! in its NATS message besides its payload.

pub mod headers;
pub mod subject;
