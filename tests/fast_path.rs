//! The native fast path end to end (PROTOCOL.md §5.6, PROTOCOL.md §5.7, PROTOCOL.md §6.7) on four
//! unpinned shards: topic handles, runs crossing shards, runs and today's frames on one topic,
//! delivery runs with `min_priority` and shedding, and the errors of bad handles and bad runs.

mod common;

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use eventstream::engine::{IdView, Priority};
use eventstream::native::client::{Client, ClientError};
use eventstream::native::codec::{ErrorCode, RunWriter};

/// Every event `c` receives (sub id, sequence, priority, payload), until `n` arrived.
fn receive(c: &mut Client, n: usize) -> Vec<(u32, u64, Priority, Vec<u8>)> {
    let mut got = Vec::new();
    while got.len() < n {
        c.next_events_with(|sub, e| {
            if let IdView::Generated(id) = e.id {
                assert_eq!(id.get_version_num(), 7, "a generated id is a UUIDv7");
            }
            got.push((sub, e.sequence, e.priority, e.payload.to_vec()));
        })
        .unwrap_or_else(|e| panic!("after {} events: {e}", got.len()));
    }
    got
}

fn server_error(
    result: Result<impl std::fmt::Debug, ClientError>,
) -> (ErrorCode, u64, Option<u32>) {
    match result {
        Err(ClientError::Server {
            code,
            reference,
            index,
            ..
        }) => (code, reference, index),
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[test]
fn a_run_crosses_shards_as_one_unit_and_every_subscriber_gets_it_in_order() {
    let server = start();
    let topic = topic_owned_by("fast/cross", 1);
    // Subscribers homed on two other shards, one reading runs, one today's EVENT frames.
    let mut runs = server.client_on(2);
    let run_sub = runs.subscribe_runs(&topic, Priority::Batch).unwrap();
    let mut legacy = server.client_on(3);
    legacy.subscribe(&topic, Priority::Batch).unwrap();

    let mut publisher = server.client_on(0);
    let handle = publisher.topic(&topic).unwrap();
    let mut expected = Vec::new();
    for r in 0..10u8 {
        let payloads: Vec<Vec<u8>> = (0..20u8).map(|i| vec![r, i]).collect();
        let events: Vec<(Priority, &[u8])> = payloads
            .iter()
            .map(|p| (Priority::Medium, &p[..]))
            .collect();
        let ack = publisher.publish_run(handle, &events).unwrap();
        assert_eq!(ack.count, 20);
        assert_eq!(
            ack.sequence,
            u64::from(r + 1) * 20,
            "a run takes consecutive numbers"
        );
        expected.extend(payloads);
    }
    let one = publisher
        .publish_to(handle, Priority::High, b"single")
        .unwrap();
    assert_eq!((one.count, one.sequence), (1, 201));
    expected.push(b"single".to_vec());

    let got = receive(&mut runs, expected.len());
    assert!(got.iter().all(|g| g.0 == run_sub));
    let sequences: Vec<u64> = got.iter().map(|g| g.1).collect();
    assert_eq!(sequences, (1..=201).collect::<Vec<_>>());
    let payloads: Vec<Vec<u8>> = got.iter().map(|g| g.3.clone()).collect();
    assert_eq!(payloads, expected);
    assert_eq!(got[200].2, Priority::High);

    for (n, want) in expected.iter().enumerate() {
        let d = legacy.next_event().unwrap();
        assert_eq!(
            (d.sequence, &d.event.payload[..]),
            (n as u64 + 1, &want[..])
        );
        assert_eq!(d.event.id.len(), 36, "today's frames carry the id as text");
    }
}

#[test]
fn runs_and_todays_frames_to_one_topic_share_one_sequence_in_each_publisher_s_order() {
    let server = start();
    let topic = topic_owned_by("fast/mixed", 2);
    let mut sub = server.client_on(3);
    sub.subscribe_runs(&topic, Priority::Batch).unwrap();
    let mut fast = server.client_on(0);
    let mut slow = server.client_on(1);
    let handle = fast.topic(&topic).unwrap();
    for round in 0..50u8 {
        let events = [
            (Priority::Low, &[b'f', round, 0][..]),
            (Priority::Low, &[b'f', round, 1][..]),
        ];
        fast.publish_run_nowait(handle, &events).unwrap();
        slow.publish_nowait_simple(&topic, Priority::Low, &[b'l', round])
            .unwrap();
        fast.flush().unwrap();
        slow.flush().unwrap();
    }
    let got = receive(&mut sub, 150);
    let sequences: Vec<u64> = got.iter().map(|g| g.1).collect();
    assert_eq!(
        sequences,
        (1..=150).collect::<Vec<_>>(),
        "one sequence, no gap"
    );
    let from = |tag: u8| -> Vec<Vec<u8>> {
        got.iter()
            .filter(|g| g.3[0] == tag)
            .map(|g| g.3.clone())
            .collect()
    };
    let fast_order: Vec<Vec<u8>> = (0..50u8)
        .flat_map(|r| [vec![b'f', r, 0], vec![b'f', r, 1]])
        .collect();
    assert_eq!(from(b'f'), fast_order);
    assert_eq!(
        from(b'l'),
        (0..50u8).map(|r| vec![b'l', r]).collect::<Vec<_>>()
    );
    // A run is never split by another publisher's event.
    for pair in got.windows(2) {
        if pair[0].3[0] == b'f' && pair[0].3[2] == 0 {
            assert_eq!(pair[1].3, [b'f', pair[0].3[1], 1]);
        }
    }
}

#[test]
fn min_priority_picks_events_out_of_a_run() {
    let server = start();
    let topic = topic_owned_by("fast/priority", 3);
    let mut high = server.client_on(0);
    high.subscribe_runs(&topic, Priority::High).unwrap();
    let mut publisher = server.client_on(1);
    let handle = publisher.topic(&topic).unwrap();
    let priorities = [
        Priority::Low,
        Priority::Critical,
        Priority::Batch,
        Priority::High,
        Priority::Medium,
        Priority::High,
    ];
    let events: Vec<(Priority, &[u8])> = priorities.iter().map(|p| (*p, &b"x"[..])).collect();
    publisher.publish_run(handle, &events).unwrap();
    // A run of nothing it wants reaches it not at all; the next event it wants comes next.
    let low: Vec<(Priority, &[u8])> = vec![(Priority::Low, b"y"); 5];
    publisher.publish_run(handle, &low).unwrap();
    publisher
        .publish_to(handle, Priority::Critical, b"z")
        .unwrap();
    let got = receive(&mut high, 4);
    let seen: Vec<(u64, Priority)> = got.iter().map(|g| (g.1, g.2)).collect();
    assert_eq!(
        seen,
        [
            (2, Priority::Critical),
            (4, Priority::High),
            (6, Priority::High),
            (12, Priority::Critical)
        ]
    );
}

#[test]
fn run_subscribers_of_one_shard_share_a_run_s_records_and_each_gets_exactly_its_own() {
    // On one shard: two run subscriptions on one connection (all priorities, and HIGH up),
    // one on another connection, and one reading today's EVENT frames. Runs of one priority
    // are encoded once there for the three run subscriptions; a mixed run goes event by event.
    let server = start();
    let topic = topic_owned_by("fast/shared", 1);
    let mut first = server.client_on(2);
    let all = first.subscribe_runs(&topic, Priority::Batch).unwrap();
    let high_up = first.subscribe_runs(&topic, Priority::High).unwrap();
    let mut second = server.client_on(2);
    second.subscribe_runs(&topic, Priority::Batch).unwrap();
    let mut legacy = server.client_on(2);
    legacy.subscribe(&topic, Priority::Batch).unwrap();

    let mut publisher = server.client_on(0);
    let handle = publisher.topic(&topic).unwrap();
    let runs: [&[Priority]; 4] = [
        &[Priority::Low; 30],
        &[Priority::High; 20],
        &[Priority::Medium, Priority::Critical, Priority::Low],
        &[Priority::Critical; 10],
    ];
    let mut sent = Vec::new();
    for (r, priorities) in runs.iter().enumerate() {
        let payloads: Vec<Vec<u8>> = (0..priorities.len() as u8)
            .map(|i| vec![r as u8, i])
            .collect();
        let events: Vec<(Priority, &[u8])> = priorities
            .iter()
            .zip(&payloads)
            .map(|(p, b)| (*p, &b[..]))
            .collect();
        publisher.publish_run(handle, &events).unwrap();
        sent.extend(priorities.iter().copied().zip(payloads));
    }
    let numbered: Vec<(u64, Priority, Vec<u8>)> = sent
        .into_iter()
        .enumerate()
        .map(|(i, (p, b))| (i as u64 + 1, p, b))
        .collect();
    let high: Vec<_> = numbered
        .iter()
        .filter(|e| e.1 >= Priority::High)
        .cloned()
        .collect();

    let got = receive(&mut first, numbered.len() + high.len());
    let of = |sub: u32| -> Vec<(u64, Priority, Vec<u8>)> {
        let mine = got.iter().filter(|g| g.0 == sub);
        mine.map(|g| (g.1, g.2, g.3.clone())).collect()
    };
    assert_eq!(of(all), numbered);
    assert_eq!(of(high_up), high);
    let got = receive(&mut second, numbered.len());
    let seen: Vec<_> = got.into_iter().map(|g| (g.1, g.2, g.3)).collect();
    assert_eq!(seen, numbered);
    for (sequence, priority, payload) in &numbered {
        let d = legacy.next_event().unwrap();
        assert_eq!(
            (d.sequence, d.event.priority, &d.event.payload[..]),
            (*sequence, *priority as u8, &payload[..])
        );
    }
}

/// A client whose socket holds little, so that the server's queue for it fills quickly.
fn stalled_client(server: &TestServer) -> Client {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.native.into()).unwrap();
    let mut c = Client::from_stream(TcpStream::from(socket)).unwrap();
    c.set_timeout(Some(Duration::from_secs(20))).unwrap();
    c
}

#[test]
fn a_stalled_run_subscriber_sheds_low_priority_first_and_sees_the_gaps() {
    const QUEUE: usize = 64;
    let mut config = test_config();
    config.limits.subscriber_queue_events = QUEUE;
    let server = start_with(config);
    let topic = topic_owned_by("fast/stalled", 1);
    let mut stalled = stalled_client(&server);
    let sub_id = stalled.subscribe_runs(&topic, Priority::Batch).unwrap();
    let mut healthy = server.client_on(2);
    healthy.subscribe_runs(&topic, Priority::Batch).unwrap();
    let mut publisher = server.client_on(3);
    let handle = publisher.topic(&topic).unwrap();
    let payload = vec![7u8; 32 * 1024];
    let (lows, highs) = (200u64, 50u64);
    for _ in 0..lows / 20 {
        let run: Vec<(Priority, &[u8])> = vec![(Priority::Low, &payload[..]); 20];
        publisher.publish_run(handle, &run).unwrap();
        // Paced by the healthy subscriber, so that only the stalled one falls behind.
        receive(&mut healthy, 20);
    }
    for _ in 0..highs / 10 {
        let run: Vec<(Priority, &[u8])> = vec![(Priority::High, &payload[..]); 10];
        publisher.publish_run(handle, &run).unwrap();
        receive(&mut healthy, 10);
    }
    let pong = publisher.ping().unwrap();
    assert!(pong.shed > 0, "the stalled subscriber's queue shed");

    let mut seen = Vec::new();
    while seen.last().map(|s: &(u64, Priority)| s.0) != Some(lows + highs) {
        stalled
            .next_events_with(|sub, e| {
                assert_eq!(sub, sub_id);
                seen.push((e.sequence, e.priority));
            })
            .unwrap();
    }
    let sequences: Vec<u64> = seen.iter().map(|s| s.0).collect();
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "in order");
    let high: BTreeSet<u64> = seen
        .iter()
        .filter(|s| s.1 == Priority::High)
        .map(|s| s.0)
        .collect();
    assert_eq!(
        high,
        (lows + 1..=lows + highs).collect(),
        "no HIGH event was shed"
    );
    assert!(
        (seen.len() as u64) < lows + highs,
        "LOW events were shed, leaving gaps in the sequence"
    );
    let (delivered, shed) = stalled.unsubscribe(sub_id).unwrap();
    assert!(shed > 0 && delivered >= seen.len() as u64);
}

#[test]
fn bad_handles_get_their_documented_errors_and_disturb_nobody() {
    let server = start();
    let topic = topic_owned_by("fast/handles", 0);
    let mut watcher = server.client_on(1);
    watcher.subscribe_runs(&topic, Priority::Batch).unwrap();
    let mut bystander = server.client_on(2);
    let bystander_handle = bystander.topic(&topic).unwrap();

    let mut c = server.client_on(3);
    // A run naming a handle never declared: UnknownHandle, reference = its request id.
    let mut frame = BytesMut::new();
    let mut run = RunWriter::begin(&mut frame, 1_000_001, true, 5);
    run.push(&mut frame, 2, 0, b"lost");
    run.finish(&mut frame);
    c.send_encoded(&frame).unwrap();
    let (code, reference, _) = server_error(c.next_event());
    assert_eq!((code, reference), (ErrorCode::UnknownHandle, 1_000_001));

    let handle = c.topic(&topic).unwrap();
    assert_eq!(handle.id(), 1);
    // Handle 0, a handle over the limit, a reused handle: InvalidHandle.
    for bad in [0u32, 1_025, 1] {
        let mut frame = BytesMut::new();
        eventstream::native::codec::put_declare(
            &mut frame,
            2_000_000 + u64::from(bad),
            false,
            bad,
            b"a/b",
        );
        c.send_encoded(&frame).unwrap();
        let (code, reference, _) = server_error(c.next_event());
        assert_eq!(
            (code, reference),
            (ErrorCode::InvalidHandle, 2_000_000 + u64::from(bad))
        );
    }
    // Topics are checked once, at the declaration.
    assert_eq!(server_error(c.topic("a//b")).0, ErrorCode::InvalidTopic);
    assert_eq!(server_error(c.topic("$sys/x")).0, ErrorCode::InvalidEvent);
    assert_eq!(server_error(c.topic("a/*")).0, ErrorCode::InvalidTopic);
    // A run with one bad event is refused whole, naming the event.
    let mut frame = BytesMut::new();
    let mut run = RunWriter::begin(&mut frame, 3_000_000, true, handle.id());
    run.push(&mut frame, 2, 0, b"fine");
    run.push(&mut frame, 9, 0, b"bad priority");
    run.finish(&mut frame);
    c.send_encoded(&frame).unwrap();
    let (code, reference, index) = server_error(c.next_event());
    assert_eq!(
        (code, reference, index),
        (ErrorCode::InvalidEvent, 3_000_000, Some(1))
    );

    // The connection, its first handle and everyone else carry on; nothing bad was published.
    let ack = c.publish_to(handle, Priority::Low, b"after").unwrap();
    assert_eq!(ack.sequence, 1);
    let ack = bystander
        .publish_to(bystander_handle, Priority::Low, b"other")
        .unwrap();
    assert_eq!(ack.sequence, 2);
    let got = receive(&mut watcher, 2);
    let payloads: Vec<&[u8]> = got.iter().map(|g| &g.3[..]).collect();
    assert_eq!(payloads, [&b"after"[..], &b"other"[..]]);
}

#[test]
fn a_run_larger_than_the_batch_limit_is_refused_before_its_records_are_read() {
    let mut config = test_config();
    config.limits.max_batch_events = 8;
    let server = start_with(config);
    let mut c = server.client();
    let handle = c.topic("fast/limit").unwrap();
    let nine: Vec<(Priority, &[u8])> = vec![(Priority::Low, b"x"); 9];
    let (code, _, _) = server_error(c.publish_run(handle, &nine));
    assert_eq!(code, ErrorCode::BatchTooLarge);
    let eight: Vec<(Priority, &[u8])> = vec![(Priority::Low, b"x"); 8];
    assert_eq!(c.publish_run(handle, &eight).unwrap().sequence, 8);
}

#[test]
fn a_batch_s_plain_events_of_one_topic_travel_as_runs_and_keep_every_guarantee() {
    let server = start();
    let topic = topic_owned_by("fast/batch", 1);
    let mut legacy = server.client_on(2);
    legacy.subscribe(&topic, Priority::Batch).unwrap();
    let mut runs = server.client_on(3);
    runs.subscribe_runs(&topic, Priority::Batch).unwrap();
    let mut publisher = server.client_on(0);
    let mut events: Vec<_> = (0..10u8)
        .map(|i| event(&topic, &[b'e', i], Priority::Low))
        .collect();
    events[4].id = bytes::Bytes::from_static(b"given");
    events[7].metadata = eventstream::engine::Metadata::from_pairs([("k", "v")]).unwrap();
    let ack = publisher.publish_batch(&events).unwrap();
    assert_eq!((ack.count, ack.sequence), (10, 10));
    for (n, sent) in events.iter().enumerate() {
        let d = legacy.next_event().unwrap();
        assert_eq!(
            (d.sequence, &d.event.payload),
            (n as u64 + 1, &sent.payload)
        );
        match n {
            4 => assert_eq!(&d.event.id[..], b"given"),
            _ => assert_eq!(d.event.id.len(), 36, "a generated UUIDv7's text"),
        }
        assert_eq!(d.event.metadata, sent.metadata);
    }
    let got = receive(&mut runs, 10);
    let sequences: Vec<u64> = got.iter().map(|g| g.1).collect();
    assert_eq!(sequences, (1..=10).collect::<Vec<_>>());
}

#[test]
fn a_refused_run_is_reported_once_per_event_without_an_ack_and_once_with_one() {
    let mut config = test_config();
    config.limits.max_topics_per_shard = 1;
    let server = start_with(config);
    let full = topic_owned_by("fast/refused/a", 2);
    let refused = topic_owned_by("fast/refused/b", 2);
    let mut c = server.client_on(0);
    c.publish(&event(&full, b"fills shard 2", Priority::Low))
        .unwrap();
    let before = c.ping().unwrap().refused;

    // A batch of three plain events (one run), no ACK: three PublishFailed, its request id.
    let events: Vec<_> = (0..3)
        .map(|_| event(&refused, b"x", Priority::Low))
        .collect();
    let mut frame = BytesMut::new();
    eventstream::native::codec::put_publish_batch(&mut frame, 4_000_000, false, &events);
    c.send_encoded(&frame).unwrap();
    for _ in 0..3 {
        let (code, reference, _) = server_error(c.next_event());
        assert_eq!((code, reference), (ErrorCode::PublishFailed, 4_000_000));
    }
    // A PUBLISH_RUN of four, no ACK: four; with an ACK: one, in place of the ACK.
    let handle = c.topic(&refused).unwrap();
    let mut frame = BytesMut::new();
    let mut run = RunWriter::begin(&mut frame, 5_000_000, false, handle.id());
    for _ in 0..4 {
        run.push(&mut frame, 1, 0, b"y");
    }
    run.finish(&mut frame);
    c.send_encoded(&frame).unwrap();
    for _ in 0..4 {
        let (code, reference, _) = server_error(c.next_event());
        assert_eq!((code, reference), (ErrorCode::PublishFailed, 5_000_000));
    }
    let two: Vec<(Priority, &[u8])> = vec![(Priority::Low, b"z"); 2];
    assert_eq!(
        server_error(c.publish_run(handle, &two)).0,
        ErrorCode::PublishFailed
    );
    let after = c.ping().unwrap().refused;
    assert_eq!(after - before, 3 + 4 + 2, "every refused event is counted");
}

/// `count` unacknowledged PUBLISH frames to `topic`, request ids `first..`, in one buffer
/// (one write, so the server reads them together); priority 9 where `bad` says.
fn publishes(topic: &str, first: u64, count: u64, bad: impl Fn(u64) -> bool) -> BytesMut {
    let mut frames = BytesMut::new();
    for n in 0..count {
        let priority = if bad(n) { 9 } else { Priority::Low as u8 };
        let payload = n.to_le_bytes();
        eventstream::native::codec::put_publish_simple(
            &mut frames,
            first + n,
            topic.as_bytes(),
            priority,
            &payload,
        );
    }
    frames
}

#[test]
fn consecutive_publish_frames_of_one_topic_go_as_a_run_and_each_keeps_its_own_answer() {
    let server = start();
    let topic = topic_owned_by("fast/frames", 2);
    let mut sub = server.client_on(3);
    sub.subscribe_runs(&topic, Priority::Batch).unwrap();
    let mut c = server.client_on(0);
    // Frames 10 and 20 break a rule: each gets its own ERROR; the rest are published in order.
    c.send_encoded(&publishes(&topic, 6_000_000, 30, |n| n == 10 || n == 20))
        .unwrap();
    for n in [10, 20] {
        let (code, reference, _) = server_error(c.next_event());
        assert_eq!((code, reference), (ErrorCode::InvalidEvent, 6_000_000 + n));
    }
    let got = receive(&mut sub, 28);
    let sequences: Vec<u64> = got.iter().map(|g| g.1).collect();
    assert_eq!(sequences, (1..=28).collect::<Vec<_>>());
    let sent: Vec<u64> = got
        .iter()
        .map(|g| u64::from_le_bytes(g.3[..8].try_into().unwrap()))
        .collect();
    let want: Vec<u64> = (0..30).filter(|n| *n != 10 && *n != 20).collect();
    assert_eq!(sent, want, "in the order they were sent");
}

#[test]
fn a_refused_run_of_publish_frames_answers_each_frame_under_its_own_request_id() {
    let mut config = test_config();
    config.limits.max_topics_per_shard = 1;
    let server = start_with(config);
    let full = topic_owned_by("fast/frames-refused/a", 1);
    let refused = topic_owned_by("fast/frames-refused/b", 1);
    let mut c = server.client_on(0);
    c.publish(&event(&full, b"fills shard 1", Priority::Low))
        .unwrap();
    c.send_encoded(&publishes(&refused, 7_000_000, 5, |_| false))
        .unwrap();
    let mut references: Vec<u64> = (0..5)
        .map(|_| {
            let (code, reference, _) = server_error(c.next_event());
            assert_eq!(code, ErrorCode::PublishFailed);
            reference
        })
        .collect();
    references.sort_unstable();
    assert_eq!(references, (7_000_000..7_000_005).collect::<Vec<_>>());
    assert_eq!(c.ping().unwrap().refused, 5);
}

#[test]
fn thousands_of_one_event_runs_in_one_write_all_arrive() {
    // Events alternating between two priorities queue in two lanes, so one write turn drains
    // thousands of one-event runs (it once offered the kernel more slices than one sendmsg
    // takes, and the connection was dropped).
    let server = start();
    let topic = topic_owned_by("fast/alternating", 1);
    let mut sub = server.client_on(1);
    sub.subscribe_runs(&topic, Priority::Batch).unwrap();
    let mut legacy = server.client_on(1);
    legacy.subscribe(&topic, Priority::Batch).unwrap();
    let mut publisher = server.client_on(1);
    let events: Vec<_> = (0..3_000u32)
        .map(|i| {
            let priority = if i % 2 == 0 {
                Priority::Medium
            } else {
                Priority::High
            };
            event(&topic, &i.to_le_bytes(), priority)
        })
        .collect();
    assert_eq!(publisher.publish_batch(&events).unwrap().sequence, 3_000);
    let got = receive(&mut sub, 3_000);
    let sequences: Vec<u64> = got.iter().map(|g| g.1).collect();
    assert_eq!(sequences, (1..=3_000).collect::<Vec<_>>());
    for n in 1..=3_000 {
        assert_eq!(legacy.next_event().unwrap().sequence, n);
    }
}
