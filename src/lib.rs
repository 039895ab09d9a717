//! eventstream: a low-latency publish/subscribe event server for Linux.
//!
//! The crate is laid out like the data path: [`native`] (the binary TCP and UDP doors) decodes
//! frames into events, the [`engine`] routes them to the shard that owns their topic, which
//! sequences them and fans them out to subscriber queues, which the doors drain back into
//! socket writes. [`server`] starts the shards and their doors from a [`config::Config`].

/// Writes one line to standard error and never panics: a server must survive a closed
/// stderr (the `eprintln!` macro panics on EPIPE).
#[macro_export]
macro_rules! log_line {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod accept;
pub mod busy_poll;
pub mod config;
pub mod doctor;
pub mod door;
pub mod engine;
pub mod grpc;
pub mod io_uring_probe;
pub mod metrics;
pub mod native;
pub mod refusal;
pub mod server;
pub mod tls;

/// Types generated from `proto/eventstream.proto` (by build.rs, with protox).
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/eventstream.rs"));

    /// The standard gRPC health and reflection services, generated the same way.
    pub mod grpc {
        pub mod health {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/grpc.health.v1.rs"));
            }
        }
        pub mod reflection {
            pub mod v1 {
                include!(concat!(env!("OUT_DIR"), "/grpc.reflection.v1.rs"));
            }
        }
    }

    /// Every .proto the server serves, compiled: answers gRPC reflection.
    pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));
}

/// The configuration of every property test: failing cases are not written to a
/// `proptest-regressions/` folder at the project's root (only the project's own folders live
/// there); a failure worth keeping becomes a named test of its own.
#[cfg(test)]
pub(crate) fn proptest_config() -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        failure_persistence: None,
        ..proptest::test_runner::Config::default()
    }
}
