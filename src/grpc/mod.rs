//! The gRPC door (port 9200): HTTP/2 written for this server ([`h2`]) and, on top of it, the
//! gRPC layer. Work in progress: not yet served.

pub mod h2;
