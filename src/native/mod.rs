//! The native door: the binary protocol of `docs/PROTOCOL.md` on TCP (request/response and
//! pushed events) and UDP (fire-and-forget publishes), plus the Rust client that speaks it.
//!
//! [`frame`] is the framing every frame shares (header, kinds, whole frames out of a stream,
//! the error types); on it, with no I/O, [`codec`] the protocol's frame bodies and
//! [`event_run`] its delivery runs; [`gather`] a connection's writes of queued events without
//! copying them; [`connection`] runs one TCP client on a shard; [`datagram`] handles the UDP
//! socket; [`client`] is the blocking client library.

pub mod client;
pub mod codec;
pub mod connection;
pub mod datagram;
pub mod event_run;
pub mod frame;
pub mod gather;

use crate::engine::EventError;
use frame::ErrorCode;

/// The one mapping from engine refusals to native error codes.
pub fn error_code(e: &EventError) -> ErrorCode {
    match e {
        EventError::Topic(_) => ErrorCode::InvalidTopic,
        _ => ErrorCode::InvalidEvent,
    }
}
