//! The gRPC door (port 9200): HTTP/2 written for this server ([`h2`]), gRPC's message
//! framing ([`framing`]) and statuses ([`status`]), `eventstream.EventService`
//! ([`service`]), server reflection ([`reflection`]), one connection's calls without I/O
//! ([`calls`]) and its socket loops on a shard ([`connection`]); [`client`] is the CLI's small
//! gRPC client.

pub mod calls;
pub mod client;
pub mod connection;
pub mod framing;
pub mod h2;
pub mod reflection;
pub mod service;
pub mod status;
