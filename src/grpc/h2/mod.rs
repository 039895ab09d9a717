//! HTTP/2 for the gRPC door, written for this server: [`frame`] turns bytes into checked
//! frames and back, with no I/O.

pub mod frame;
