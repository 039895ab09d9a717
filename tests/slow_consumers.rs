//! Slow consumers (PROTOCOL.md §6.2): a stalled subscriber sheds lowest priority first, counts it,
//! sees gaps in `sequence`, and is cut on a CRITICAL event it cannot queue, while a healthy
//! subscriber of the same topic loses nothing and the publisher is not held up.

mod common;

use std::net::TcpStream;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::*;
use eventstream::engine::Priority;
use eventstream::native::client::{Client, ClientError};
use eventstream::native::codec::ErrorCode;

const QUEUE: usize = 64;
const PAYLOAD: usize = 32 * 1024;
/// Smaller than the queue, so a subscriber that keeps up never sheds.
const CHUNK: usize = QUEUE / 2;

/// A client whose socket holds little, so that the server's queue for it fills quickly.
fn stalled_client(server: &TestServer) -> Client {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.native.into()).unwrap();
    let mut c = Client::from_stream(TcpStream::from(socket)).unwrap();
    c.set_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    c
}

/// A subscriber that keeps up: a thread reads its events and reports each sequence number.
struct Healthy {
    sequences: mpsc::Receiver<u64>,
    seen: Vec<u64>,
}

impl Healthy {
    fn start(mut c: Client) -> Healthy {
        let (tx, sequences) = mpsc::channel();
        thread::spawn(move || {
            while let Ok(d) = c.next_event() {
                if tx.send(d.sequence).is_err() {
                    return;
                }
            }
        });
        Healthy {
            sequences,
            seen: Vec::new(),
        }
    }

    /// Waits until `n` events arrived in total.
    fn wait_for(&mut self, n: usize) {
        while self.seen.len() < n {
            let seq = self
                .sequences
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| {
                    panic!("healthy subscriber stuck after {} events", self.seen.len())
                });
            self.seen.push(seq);
        }
    }
}

/// Publishes `count` events in chunks, each chunk once the healthy subscriber has the last,
/// so that only the stalled subscriber falls behind (whatever the machine's load).
fn publish_paced(
    publisher: &mut Client,
    healthy: &mut Healthy,
    topic: &str,
    count: usize,
    priority: Priority,
) {
    let payload = vec![7u8; PAYLOAD];
    let mut sent = healthy.seen.len();
    for chunk in 0..count.div_ceil(CHUNK) {
        let n = CHUNK.min(count - chunk * CHUNK);
        for _ in 0..n {
            publisher
                .publish_nowait(&event(topic, &payload, priority))
                .unwrap();
        }
        publisher.flush().unwrap();
        sent += n;
        healthy.wait_for(sent);
    }
}

#[test]
fn stalled_subscriber_sheds_lowest_first_then_is_cut_while_others_lose_nothing() {
    let mut config = test_config();
    config.limits.subscriber_queue_events = QUEUE;
    let server = start_with(config);
    // Phase 1: 1000 LOW then 20 HIGH events while one subscriber does not read.
    let mut healthy = server.client();
    healthy.subscribe("load/x", Priority::Batch).unwrap();
    let mut stalled = stalled_client(&server);
    let stalled_id = stalled.subscribe("load/x", Priority::Batch).unwrap();
    let mut healthy = Healthy::start(healthy);

    let mut publisher = server.client();
    publish_paced(&mut publisher, &mut healthy, "load/x", 1000, Priority::Low);
    publish_paced(&mut publisher, &mut healthy, "load/x", 20, Priority::High);
    publisher
        .ping()
        .expect("the publisher is not held up by the stalled subscriber");
    let expected: Vec<u64> = (1..=1020).collect();
    assert_eq!(healthy.seen, expected, "healthy subscriber lost nothing");

    let mut seen = Vec::new();
    loop {
        let d = stalled.next_event().unwrap();
        seen.push((d.sequence, d.event.priority));
        if d.sequence == 1020 {
            break;
        }
    }
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "in sequence order"
    );
    assert!(seen.len() < 1020, "something must have been shed");
    let highs: Vec<u64> = seen
        .iter()
        .filter(|(_, p)| *p == Priority::High as u8)
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(
        highs,
        (1001..=1020).collect::<Vec<_>>(),
        "HIGH events are kept, LOW shed first"
    );
    let (delivered, shed) = stalled.unsubscribe(stalled_id).unwrap();
    assert_eq!(delivered as usize, seen.len());
    assert_eq!(
        shed as usize,
        1020 - seen.len(),
        "every missing sequence was counted as shed"
    );

    // Phase 2: CRITICAL events that cannot be queued cut the stalled subscriber.
    let mut healthy = server.client();
    healthy.subscribe("crit/x", Priority::Batch).unwrap();
    let cut_id = stalled.subscribe("crit/x", Priority::Batch).unwrap();
    let mut healthy = Healthy::start(healthy);
    publish_paced(
        &mut publisher,
        &mut healthy,
        "crit/x",
        500,
        Priority::Critical,
    );
    publisher.ping().unwrap();
    let all: Vec<u64> = (1..=500).collect();
    assert_eq!(healthy.seen, all, "healthy subscriber lost nothing");

    let mut last = 0;
    let err = loop {
        match stalled.next_event() {
            Ok(d) => {
                assert!(
                    d.sequence == last + 1,
                    "a cut subscriber gets what it had, without gaps"
                );
                last = d.sequence;
            }
            Err(e) => break e,
        }
    };
    match err {
        ClientError::Server {
            code, reference, ..
        } => {
            assert_eq!(
                (code, reference),
                (ErrorCode::SlowConsumer, u64::from(cut_id))
            );
        }
        other => panic!("expected a slow-consumer error, got {other}"),
    }
    assert!(last < 500);
    // The connection itself is still usable, and the counters show the cut and the sheds.
    let pong = stalled.ping().unwrap();
    assert_eq!(pong.cut, 1);
    assert!(pong.shed >= 1020 - seen.len() as u64);
}
