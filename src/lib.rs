//! eventstream: a low-latency publish/subscribe event server for Linux.
//!
//! The crate is laid out like the data path: the doors ([`native`] for the binary TCP and UDP
//! protocol, [`grpc`] for gRPC), built on one connection skeleton ([`door`]), decode frames
//! into events; the [`engine`] routes them to the shard that owns their topic, which sequences
//! them and fans them out to subscriber queues, which the doors drain back into socket writes.
//! [`server`] starts the shards and their doors from a [`config::Config`].

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
pub mod bridge;
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

/// What unit tests of several modules share.
#[cfg(test)]
pub(crate) mod testing {
    use std::future::Future;

    /// Runs `test` on a glommio executor of its own, for code that needs a shard's reactor
    /// (its timers, its task queue, its sockets), with a little io memory: unit tests run many
    /// at once within the locked-memory limit.
    pub fn on_shard<F: Future<Output = ()> + 'static>(test: impl FnOnce() -> F + Send + 'static) {
        const IO_MEMORY_BYTES: usize = 64 * 1024;
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(IO_MEMORY_BYTES)
            .spawn(test)
            .expect("an executor")
            .join()
            .expect("the test ran");
    }
}

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
