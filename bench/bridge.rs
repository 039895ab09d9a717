//! The `bridge` row: events published on one node reaching a subscriber on another through
//! NATS (docs/BRIDGE.md); the `nats` row measures nats-server's own path the same way. The
//! row starts its own nats-server and two one-shard nodes bridged through it, both in this
//! process, so the send stamp in each payload and its arrival share one clock; the publisher
//! and the subscriber are those of `native-tcp`.

use std::thread;
use std::time::{Duration, Instant};

use eventstream::engine::{Priority, RawEvent};
use eventstream::native::client::Client;
use eventstream::server::{self, RunningServer};

use crate::delivery::Form;
use crate::native::{pipelined_between, unique_topic};
use crate::nats::NatsServer;
use crate::{Args, Row};

/// How long the path through NATS may take to open (NATS subscriptions are made in the
/// background of the subscribing node).
const PATH_OPEN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the row waits for probes still in flight once the path is open.
const QUIET: Duration = Duration::from_millis(300);

/// The row: `--count` events of `--size` bytes, published on node A, received on node B.
pub fn row(args: &Args) -> Result<Row, String> {
    let nats = NatsServer::start()?;
    let url = nats.url.clone();
    let deadline = Instant::now() + PATH_OPEN_TIMEOUT;
    let a = node(&url)?;
    let b = node(&url)?;
    let (at_a, at_b) = (
        a.addresses().native.to_string(),
        b.addresses().native.to_string(),
    );

    // Open the path: a subscriber on B to the row's prefix, and probes from A until one
    // arrives. The row's subscriber then shares that NATS subscription.
    let prefix = unique_topic("bridge");
    let pattern = format!("{prefix}/**");
    let mut probe = Client::connect(&at_b).map_err(|e| e.to_string())?;
    probe
        .subscribe(&pattern, Priority::Batch)
        .map_err(|e| e.to_string())?;
    probe
        .set_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    let mut publisher = Client::connect(&at_a).map_err(|e| e.to_string())?;
    let probe_event = RawEvent {
        topic: format!("{prefix}/probe").into_bytes().into(),
        payload: bytes::Bytes::from_static(b"probe"),
        priority: Priority::Medium as u8,
        ..RawEvent::default()
    };
    loop {
        publisher.publish(&probe_event).map_err(|e| e.to_string())?;
        if probe.next_event().is_ok() {
            break;
        }
        if Instant::now() > deadline {
            return Err("no path through NATS between the two nodes".into());
        }
    }
    probe.set_timeout(Some(QUIET)).map_err(|e| e.to_string())?;
    while probe.next_event().is_ok() {}

    let topic = format!("{prefix}/x");
    let measured = pipelined_between(
        args,
        "bridge",
        (&at_a, &at_b),
        &topic,
        &[&pattern],
        Form::Frames,
    );
    drop(probe);
    for node in [a, b] {
        if !node.stop() {
            eprintln!("note: a bridged node's shard did not stop in time");
        }
    }
    measured
}

/// A one-shard, unpinned node on loopback, bridged through `url`, once connected.
fn node(url: &str) -> Result<RunningServer, String> {
    let mut config = crate::loopback_config(1, false);
    config.bridge.urls = vec![url.to_owned()];
    let running = server::start(&config).map_err(|e| e.to_string())?;
    let stats = running.bridge_stats().ok_or("the bridge did not start")?;
    let deadline = Instant::now() + PATH_OPEN_TIMEOUT;
    while !stats.connected.load(std::sync::atomic::Ordering::Relaxed) {
        if Instant::now() > deadline {
            return Err("the bridge did not connect to nats-server".into());
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(running)
}
