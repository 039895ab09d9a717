//! Delivery guarantees (README.md, "Behaviour you can rely on") across shards: routing by owner,
//! wildcard fan-out, min_priority, sequence numbers, ordering.

mod common;

use std::collections::HashSet;

use common::*;
use eventstream::engine::Priority;

#[test]
fn wildcard_subscribers_on_every_shard_receive_topics_of_every_shard() {
    let server = start();
    let mut subscribers: Vec<_> = (0..SHARDS).map(|s| server.client_on(s)).collect();
    for sub in &mut subscribers {
        sub.subscribe("sensors/**", Priority::Batch).unwrap();
    }
    let topics: Vec<String> = (0..SHARDS).map(|s| topic_owned_by("sensors", s)).collect();
    let mut publisher = server.client();
    for t in &topics {
        let ack = publisher.publish(&event(t, b"x", Priority::Low)).unwrap();
        assert_eq!(ack.sequence, 1, "first event of {t}");
    }
    publisher
        .publish(&event("elsewhere/x", b"no", Priority::Low))
        .unwrap();
    for sub in &mut subscribers {
        let got: HashSet<String> = (0..SHARDS)
            .map(|_| String::from_utf8(sub.next_event().unwrap().event.topic.to_vec()).unwrap())
            .collect();
        assert_eq!(got, topics.iter().cloned().collect());
    }
    // Nothing else arrives: a ping is answered before any further event.
    for sub in &mut subscribers {
        sub.ping().unwrap();
        sub.set_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        assert!(
            sub.next_event().is_err(),
            "an unrelated event leaked through"
        );
    }
}

#[test]
fn min_priority_filters_per_subscription() {
    let server = start();
    let mut sub = server.client();
    let high = sub.subscribe("alerts/*", Priority::High).unwrap();
    let all = sub.subscribe("alerts/*", Priority::Batch).unwrap();
    let mut publisher = server.client();
    for p in Priority::ALL {
        publisher
            .publish(&event("alerts/a", p.name().as_bytes(), p))
            .unwrap();
    }
    let mut for_high = Vec::new();
    let mut for_all = 0;
    for _ in 0..7 {
        let d = sub.next_event().unwrap();
        if d.sub_id == high {
            for_high.push(d.event.priority);
        } else {
            assert_eq!(d.sub_id, all);
            for_all += 1;
        }
    }
    assert_eq!(
        for_high,
        vec![Priority::High as u8, Priority::Critical as u8]
    );
    assert_eq!(for_all, 5);
}

#[test]
fn a_hundred_thousand_events_arrive_complete_and_in_order_on_two_shards() {
    bulk_arrives_complete_and_in_order(test_config(), 100_000);
}

/// Low-latency mode: connections poll their sockets between the reactor's turns, and events
/// still cross shards, complete and in order.
#[test]
fn in_low_latency_mode_events_cross_shards_complete_and_in_order() {
    let mut config = test_config();
    config.shards.spin_before_park_us = 50;
    bulk_arrives_complete_and_in_order(config, 20_000);
}

/// Low-latency mode: a publisher waiting for each acknowledgement from another shard gets it
/// while its own connection polls its socket (the answer crosses shards on a reactor turn).
#[test]
fn in_low_latency_mode_acknowledgements_cross_shards() {
    let mut config = test_config();
    config.shards.spin_before_park_us = 200;
    let server = start_with(config);
    let topic = topic_owned_by("acked", 1);
    let mut subscriber = server.client_on(2);
    subscriber.subscribe(&topic, Priority::Batch).unwrap();
    let mut publisher = server.client_on(0);
    for i in 1..=500u64 {
        let ack = publisher
            .publish(&event(&topic, b"x", Priority::Medium))
            .unwrap();
        assert_eq!(ack.sequence, i);
        assert_eq!(subscriber.next_event().unwrap().sequence, i);
    }
}

/// `n` events from a publisher on shard 3 to a topic of shard 2, subscribed from shards 0 and
/// 1, arrive complete and in order.
fn bulk_arrives_complete_and_in_order(mut config: eventstream::config::Config, n: u64) {
    // The guarantee is "complete when nothing is shed": give the subscribers room for every
    // event, so a slow CI machine cannot turn this into a shedding test.
    config.limits.subscriber_queue_events = n as usize;
    let server = start_with(config);
    let topic = topic_owned_by("bulk", 2);
    let mut a = server.client_on(0);
    let mut b = server.client_on(1);
    a.subscribe(&topic, Priority::Batch).unwrap();
    b.subscribe("bulk/*", Priority::Batch).unwrap();
    let reader = |mut c: eventstream::native::client::Client| {
        std::thread::spawn(move || {
            for expected in 1..=n {
                let d = c
                    .next_event()
                    .unwrap_or_else(|e| panic!("after {} events: {e}", expected - 1));
                assert_eq!(d.sequence, expected, "sequence");
                let n: u64 = std::str::from_utf8(&d.event.payload)
                    .unwrap()
                    .parse()
                    .unwrap();
                assert_eq!(n, expected, "publish order");
            }
        })
    };
    let (ta, tb) = (reader(a), reader(b));
    let mut publisher = server.client_on(3);
    for i in 1..=n {
        publisher
            .publish_nowait(&event(&topic, i.to_string().as_bytes(), Priority::Medium))
            .unwrap();
    }
    publisher.flush().unwrap();
    publisher.ping().unwrap();
    ta.join().unwrap();
    tb.join().unwrap();
    let pong = publisher.ping().unwrap();
    assert_eq!((pong.shed, pong.cut), (0, 0));
}

#[test]
fn sequences_are_per_topic_and_ids_and_timestamps_are_filled() {
    let server = start();
    let mut sub = server.client();
    sub.subscribe("seq/**", Priority::Batch).unwrap();
    let mut publisher = server.client();
    for topic in ["seq/a", "seq/b", "seq/a", "seq/a", "seq/b"] {
        publisher
            .publish(&event(topic, b"", Priority::Low))
            .unwrap();
    }
    let mut seen = Vec::new();
    for _ in 0..5 {
        let d = sub.next_event().unwrap();
        assert_eq!(d.event.id.len(), 36, "server-generated UUID text");
        assert!(d.event.timestamp_ns > 1_600_000_000_000_000_000);
        seen.push((
            String::from_utf8(d.event.topic.to_vec()).unwrap(),
            d.sequence,
        ));
    }
    let a: Vec<u64> = seen
        .iter()
        .filter(|(t, _)| t == "seq/a")
        .map(|(_, s)| *s)
        .collect();
    let b: Vec<u64> = seen
        .iter()
        .filter(|(t, _)| t == "seq/b")
        .map(|(_, s)| *s)
        .collect();
    assert_eq!((a, b), (vec![1, 2, 3], vec![1, 2]));
}

#[test]
fn client_ids_timestamps_and_metadata_pass_through() {
    let server = start();
    let mut sub = server.client();
    sub.subscribe("meta/x", Priority::Batch).unwrap();
    let mut e = event("meta/x", b"\xff\x00binary", Priority::Critical);
    e.id = bytes::Bytes::from_static(b"order-42");
    e.timestamp_ns = 123;
    e.metadata =
        eventstream::engine::Metadata::from_pairs([("source", "test"), ("k", "v")]).unwrap();
    server.client().publish(&e).unwrap();
    let got = sub.next_event().unwrap().event;
    assert_eq!(got, e);
}

#[test]
fn batches_keep_their_order_and_are_acknowledged_once() {
    let server = start();
    let mut sub = server.client();
    sub.subscribe("batch/**", Priority::Batch).unwrap();
    let events: Vec<_> = (0..1000)
        .map(|i| {
            event(
                &format!("batch/{}", i % 7),
                i.to_string().as_bytes(),
                Priority::Low,
            )
        })
        .collect();
    assert!(!sub.has_buffered(), "nothing has arrived yet");
    let ack = server.client().publish_batch(&events).unwrap();
    assert_eq!(ack.count, 1000);
    let mut last = std::collections::HashMap::new();
    let mut from_an_earlier_read = 0;
    for _ in 0..1000 {
        from_an_earlier_read += usize::from(sub.has_buffered());
        let d = sub.next_event().unwrap();
        let i: u64 = std::str::from_utf8(&d.event.payload)
            .unwrap()
            .parse()
            .unwrap();
        let prev = last.insert(d.event.topic.clone(), (i, d.sequence));
        if let Some((pi, ps)) = prev {
            assert!(i > pi && d.sequence == ps + 1, "order within a topic");
        }
    }
    // 1,000 events of ~40 bytes cannot each take a read of their own.
    assert!(
        from_an_earlier_read > 0,
        "has_buffered saw no event of an earlier read"
    );
    assert!(!sub.has_buffered(), "all taken");
}

#[test]
fn unsubscribe_stops_delivery_and_reports_counters() {
    let server = start();
    let mut sub = server.client();
    let id = sub.subscribe("u/*", Priority::Batch).unwrap();
    let mut publisher = server.client();
    publisher
        .publish(&event("u/a", b"1", Priority::Low))
        .unwrap();
    sub.next_event().unwrap();
    assert_eq!(sub.unsubscribe(id).unwrap(), (1, 0));
    publisher
        .publish(&event("u/a", b"2", Priority::Low))
        .unwrap();
    let pong = sub.ping().unwrap();
    assert_eq!(pong.subscriptions, 0);
    sub.set_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    assert!(sub.next_event().is_err());
}

#[test]
fn health_ping_reaches_every_shard() {
    let server = start();
    let pong = server.client().ping().unwrap();
    assert_eq!(
        (pong.shards, pong.shards_answered),
        (SHARDS as u16, SHARDS as u16)
    );
    assert_eq!(pong.version, env!("CARGO_PKG_VERSION"));
}

#[test]
fn events_lent_in_place_are_the_events_delivered_owned_whether_stashed_or_not() {
    let server = start();
    let mut sub = server.client();
    let id = sub.subscribe("lent/*", Priority::Batch).unwrap();
    let mut publisher = server.client();
    let payload = |i: u64| format!("payload {i}").into_bytes();
    for i in 1..=3 {
        publisher
            .publish(&event("lent/a", &payload(i), Priority::High))
            .unwrap();
    }
    // Once the three events are on their way, the PONG comes after them: waiting for it
    // stashes them (owned).
    std::thread::sleep(std::time::Duration::from_millis(100));
    sub.ping().unwrap();
    assert!(sub.has_buffered(), "the events were stashed");
    for i in 4..=6 {
        publisher
            .publish(&event("lent/a", &payload(i), Priority::High))
            .unwrap();
    }
    for i in 1..=6u64 {
        let (sub_id, sequence, topic, body, priority) = sub
            .next_event_with(|d| {
                (
                    d.sub_id,
                    d.sequence,
                    d.event.topic.to_vec(),
                    d.event.payload.to_vec(),
                    d.event.priority,
                )
            })
            .unwrap();
        assert_eq!((sub_id, sequence), (id, i));
        assert_eq!(
            (&topic[..], body, priority),
            (&b"lent/a"[..], payload(i), Priority::High as u8)
        );
    }
}
