//! Shared by the end-to-end tests: an in-process server on ephemeral loopback ports with four
//! unpinned shards (so cross-shard paths run even on a 2-CPU machine), and small helpers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use eventstream::config::Config;
use eventstream::engine::routing::owner_of;
use eventstream::engine::{Priority, RawEvent};
use eventstream::native::client::Client;
use eventstream::server::{self, RunningServer};

pub mod pki;

/// A protobuf message in gRPC's length-prefixed framing (uncompressed), as a client sends it.
pub fn framed(msg: &impl prost::Message) -> Bytes {
    use bytes::{BufMut, BytesMut};
    let mut out = BytesMut::new();
    out.put_u8(0);
    out.put_u32(msg.encoded_len() as u32);
    msg.encode(&mut out).unwrap();
    out.freeze()
}

pub const SHARDS: usize = 4;

/// A server that stops when the test ends.
pub struct TestServer {
    running: Option<RunningServer>,
    pub native: SocketAddr,
    pub udp: SocketAddr,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            // A shard that does not stop fails the test (unless it is failing already)
            // instead of hanging it.
            if !running.stop() && !std::thread::panicking() {
                panic!("a shard did not stop within the drain timeout");
            }
        }
    }
}

/// Test configuration: loopback, ephemeral ports, 4 unpinned shards.
pub fn test_config() -> Config {
    let mut config = Config {
        bind: "127.0.0.1".parse().unwrap(),
        ..Config::default()
    };
    config.native.port = 0;
    config.udp.port = 0;
    config.grpc.port = 0;
    config.metrics.port = 0;
    config.shards.count = Some(SHARDS);
    config.shards.pin = false;
    config.shutdown.drain_timeout_ms = 1_000;
    config
}

pub fn start() -> TestServer {
    start_with(test_config())
}

pub fn start_with(config: Config) -> TestServer {
    TestServer::from_running(server::start(&config).expect("server starts"))
}

impl TestServer {
    /// Wraps a started server (its UDP address is unspecified when the door is off).
    pub fn from_running(running: RunningServer) -> TestServer {
        let addrs = running.addresses();
        TestServer {
            native: addrs.native,
            udp: addrs.udp.unwrap_or_else(|| "0.0.0.0:0".parse().unwrap()),
            grpc: addrs.grpc,
            metrics: addrs.metrics,
            running: Some(running),
        }
    }

    /// The NATS bridge's counters, when the server runs one.
    pub fn bridge_stats(&self) -> Option<std::sync::Arc<eventstream::bridge::BridgeStats>> {
        self.running.as_ref().and_then(|r| r.bridge_stats())
    }

    /// A client with a 20 s safety timeout on every wait.
    pub fn client(&self) -> Client {
        let mut c = Client::connect(&self.native.to_string()).expect("connect");
        c.set_timeout(Some(Duration::from_secs(20))).unwrap();
        c
    }

    /// A client whose connection the kernel placed on `shard` (SO_REUSEPORT spreads
    /// connections by their ports, so this opens connections until one lands there).
    pub fn client_on(&self, shard: usize) -> Client {
        for _ in 0..500 {
            let mut c = self.client();
            if usize::from(c.ping().unwrap().shard) == shard {
                return c;
            }
        }
        panic!("no connection landed on shard {shard}");
    }
}

/// A topic under `prefix` owned by `shard`.
pub fn topic_owned_by(prefix: &str, shard: usize) -> String {
    (0..)
        .map(|i| format!("{prefix}/t{i}"))
        .find(|t| owner_of(t.as_bytes(), SHARDS) == shard)
        .unwrap()
}

pub fn event(topic: &str, payload: &[u8], priority: Priority) -> RawEvent {
    RawEvent {
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        payload: Bytes::copy_from_slice(payload),
        priority: priority as u8,
        ..RawEvent::default()
    }
}
