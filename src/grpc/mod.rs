//! The gRPC door (port 9200): HTTP/2 written for this server ([`h2`]), gRPC's message
//! framing ([`framing`]) and statuses ([`status`]). Work in progress: not yet served.

pub mod framing;
pub mod h2;
pub mod status;
