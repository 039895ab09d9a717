//! HTTP/2 for the gRPC door, written for this server: [`frame`] turns bytes into checked
//! frames and back, [`hpack`] header blocks into field lists and back, and [`connection`] is
//! the per-connection state machine. None does I/O.

pub mod connection;
pub mod frame;
pub mod hpack;
#[cfg(test)]
pub mod test_peer;
