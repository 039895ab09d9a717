//! README.md, "Behaviour you can rely on": bad input always gets a clear answer, never takes a
//! shard down and never disturbs other clients.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::*;
use eventstream::engine::{Priority, RawEvent};
use eventstream::native::client::ClientError;
use eventstream::native::codec::{self, ErrorCode, ServerFrame};

/// A raw connection for sending what no well-behaved client would.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    fn connect(server: &TestServer) -> Raw {
        let stream = TcpStream::connect(server.native).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Raw {
            stream,
            buf: BytesMut::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// The next frame, or None once the server closed the connection.
    fn next(&mut self) -> Option<ServerFrame> {
        loop {
            if let Some(raw) = codec::next_frame(&mut self.buf, 1 << 24).unwrap() {
                return Some(ServerFrame::parse(raw).unwrap());
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    fn expect_error(&mut self) -> (ErrorCode, bool, u64, Option<u32>, String) {
        match self.next() {
            Some(ServerFrame::Error {
                code,
                closing,
                reference,
                index,
                message,
            }) => (code, closing, reference, index, message),
            other => panic!("expected an ERROR frame, got {other:?}"),
        }
    }

    fn ping(&mut self, token: u64) {
        let mut b = BytesMut::new();
        codec::put_ping(&mut b, token);
        self.send(&b);
        match self.next() {
            Some(ServerFrame::Pong(p)) => assert_eq!(p.token, token),
            other => panic!("expected PONG, got {other:?}"),
        }
    }
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u32_le(body.len() as u32 + 2);
    b.put_u8(kind);
    b.put_u8(0);
    b.put_slice(body);
    b.to_vec()
}

fn server_error(e: ClientError) -> (ErrorCode, Option<u32>, String) {
    match e {
        ClientError::Server {
            code,
            index,
            message,
            ..
        } => (code, index, message),
        other => panic!("expected a server error, got {other}"),
    }
}

#[test]
fn skippable_bad_frames_get_an_error_and_the_connection_goes_on() {
    let server = start();
    let mut raw = Raw::connect(&server);
    raw.send(&frame(0x7f, b"??"));
    let (code, closing, ..) = raw.expect_error();
    assert_eq!((code, closing), (ErrorCode::UnknownKind, false));
    // A PUBLISH whose body stops after the request id.
    raw.send(&frame(codec::kind::PUBLISH, &42u64.to_le_bytes()));
    let (code, closing, reference, _, message) = raw.expect_error();
    assert_eq!(
        (code, closing, reference),
        (ErrorCode::Malformed, false, 42)
    );
    assert!(message.contains("truncated"), "{message}");
    raw.ping(1);
}

#[test]
fn unframeable_lengths_get_a_closing_error_then_the_connection_closes() {
    let server = start();
    for length in [u32::MAX, 0, 1] {
        let mut raw = Raw::connect(&server);
        raw.send(&length.to_le_bytes());
        raw.send(&[1, 0]);
        let (code, closing, ..) = raw.expect_error();
        assert_eq!((code, closing), (ErrorCode::BadLength, true));
        assert!(
            raw.next().is_none(),
            "connection closed after length {length}"
        );
    }
    server.client().ping().unwrap();
}

#[test]
fn invalid_events_are_refused_with_the_reason() {
    let server = start();
    let mut c = server.client();
    let (code, _, msg) = server_error(c.publish(&event("a//b", b"", Priority::Low)).unwrap_err());
    assert_eq!(code, ErrorCode::InvalidTopic);
    assert!(msg.contains("empty segment"), "{msg}");
    let (code, _, msg) = server_error(c.publish(&event("$sys/x", b"", Priority::Low)).unwrap_err());
    assert_eq!(code, ErrorCode::InvalidEvent);
    assert!(msg.contains("reserved"), "{msg}");
    let mut bad_priority = event("a", b"", Priority::Low);
    bad_priority.priority = 7;
    let (code, _, msg) = server_error(c.publish(&bad_priority).unwrap_err());
    assert_eq!(code, ErrorCode::InvalidEvent);
    assert!(msg.contains("priority 7"), "{msg}");
    let big = vec![0u8; 4 * 1024 * 1024 + 1];
    let (code, _, msg) = server_error(c.publish(&event("a", &big, Priority::Low)).unwrap_err());
    assert_eq!(code, ErrorCode::InvalidEvent);
    assert!(msg.contains("over the limit"), "{msg}");
    // 4 MiB exactly is accepted.
    c.publish(&event("a", &big[1..], Priority::Low)).unwrap();
}

#[test]
fn a_batch_with_one_bad_event_is_refused_whole_naming_its_index() {
    let server = start();
    let mut sub = server.client();
    sub.subscribe("b/**", Priority::Batch).unwrap();
    let mut events: Vec<RawEvent> = (0..5)
        .map(|i| event(&format!("b/{i}"), b"", Priority::Low))
        .collect();
    events[2].topic = bytes::Bytes::from_static(b"b/ x");
    let mut c = server.client();
    let (code, index, msg) = server_error(c.publish_batch(&events).unwrap_err());
    assert_eq!((code, index), (ErrorCode::InvalidTopic, Some(2)));
    assert!(msg.starts_with("event 2:"), "{msg}");
    c.ping().unwrap();
    sub.ping().unwrap();
    sub.set_timeout(Some(Duration::from_millis(300))).unwrap();
    assert!(
        sub.next_event().is_err(),
        "no event of a refused batch is published"
    );

    let mut small = test_config();
    small.limits.max_batch_events = 3;
    let server = start_with(small);
    let (code, ..) = server_error(server.client().publish_batch(&events).unwrap_err());
    assert_eq!(code, ErrorCode::BatchTooLarge);
}

#[test]
fn subscription_errors_name_the_subscription() {
    let mut config = test_config();
    config.limits.max_subscriptions_per_connection = 2;
    let server = start_with(config);
    let mut c = server.client();
    let (code, _, msg) = server_error(c.subscribe("a/**/b", Priority::Low).unwrap_err());
    assert_eq!(code, ErrorCode::InvalidPattern);
    assert!(msg.contains("'**'"), "{msg}");
    c.subscribe("a", Priority::Low).unwrap();
    c.subscribe("b", Priority::Low).unwrap();
    let (code, ..) = server_error(c.subscribe("c", Priority::Low).unwrap_err());
    assert_eq!(code, ErrorCode::TooManySubscriptions);
    let (code, ..) = server_error(c.unsubscribe(99).unwrap_err());
    assert_eq!(code, ErrorCode::UnknownSubscription);

    let mut raw = Raw::connect(&server);
    let mut b = BytesMut::new();
    codec::put_subscribe(&mut b, 5, 1, b"x/*");
    codec::put_subscribe(&mut b, 5, 1, b"y/*");
    codec::put_subscribe(&mut b, 6, 9, b"y/*");
    raw.send(&b);
    assert!(matches!(
        raw.next(),
        Some(ServerFrame::Subscribed { sub_id: 5 })
    ));
    let (code, _, reference, ..) = raw.expect_error();
    assert_eq!((code, reference), (ErrorCode::DuplicateSubscription, 5));
    let (code, _, reference, ..) = raw.expect_error();
    assert_eq!((code, reference), (ErrorCode::Malformed, 6));
}

#[test]
fn garbage_from_many_clients_does_not_disturb_a_healthy_pair() {
    let server = start();
    let mut sub = server.client();
    sub.subscribe("ok/*", Priority::Batch).unwrap();
    let mut publisher = server.client();
    // A deterministic pseudo-random byte stream (xorshift), different per connection.
    for seed in 1..=32u64 {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let bytes: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut raw = Raw::connect(&server);
        raw.send(&bytes);
        // Whatever it answered, the server ends up closing or waiting; drain what it sent.
        raw.stream
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        while raw.next().is_some() {}
        publisher
            .publish(&event("ok/x", &seed.to_le_bytes(), Priority::Low))
            .unwrap();
        let d = sub.next_event().unwrap();
        assert_eq!(d.event.payload.as_ref(), seed.to_le_bytes());
    }
    let pong = publisher.ping().unwrap();
    assert_eq!(pong.shards_answered, SHARDS as u16);
}

#[test]
fn a_client_that_vanishes_mid_frame_leaves_nothing_behind() {
    let server = start();
    {
        let mut c = server.client();
        c.subscribe("gone/**", Priority::Low).unwrap();
        let mut raw = Raw::connect(&server);
        raw.send(&[200, 0, 0, 0, 1, 0, 1, 2, 3]);
    }
    // Subscriptions of closed connections are released on every shard.
    let c = &mut server.client();
    for _ in 0..100 {
        if c.ping().unwrap().subscriptions == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("subscription of a closed connection still registered");
}

#[test]
fn an_owner_refusal_reaches_the_publisher_with_or_without_ack() {
    let mut config = test_config();
    config.limits.max_topics_per_shard = 1;
    let server = start_with(config);
    let mut c = server.client();
    // Two topics owned by one shard: the second cannot be tracked.
    let full = topic_owned_by("full", 1);
    let first = (0..)
        .map(|i| format!("other/t{i}"))
        .find(|t| eventstream::engine::routing::owner_of(t.as_bytes(), SHARDS) == 1);
    c.publish(&event(&first.unwrap(), b"", Priority::Low))
        .unwrap();
    let (code, _, msg) = server_error(c.publish(&event(&full, b"", Priority::Low)).unwrap_err());
    assert_eq!(code, ErrorCode::PublishFailed);
    assert!(msg.contains("max_topics_per_shard"), "{msg}");
    // Without an ack the refusal still arrives, naming the request.
    c.publish_nowait(&event(&full, b"", Priority::Low)).unwrap();
    c.flush().unwrap();
    match c.next_event().unwrap_err() {
        ClientError::Server { code, .. } => assert_eq!(code, ErrorCode::PublishFailed),
        other => panic!("expected PublishFailed, got {other}"),
    }
    assert_eq!(c.ping().unwrap().refused, 2);
}

#[test]
fn refused_topics_between_good_ones_leave_the_repeated_topic_intact() {
    // A connection reuses its last good topic for the next publish: refused events in between
    // (a bad name, a reserved one, a name that differs from the good one by one byte) must
    // neither replace it nor be taken for it.
    let server = start();
    let mut publisher = server.client();
    let good = "reuse/a";
    assert_eq!(
        publisher
            .publish(&event(good, b"1", Priority::Low))
            .unwrap()
            .sequence,
        1
    );
    for bad in ["reuse//a", "$reuse/a", "reuse/a/", "reuse/*"] {
        let e = publisher
            .publish(&event(bad, b"x", Priority::Low))
            .unwrap_err();
        assert!(
            matches!(
                e,
                ClientError::Server {
                    code: ErrorCode::InvalidTopic | ErrorCode::InvalidEvent,
                    ..
                }
            ),
            "{bad}: {e}"
        );
    }
    assert_eq!(
        publisher
            .publish(&event(good, b"2", Priority::Low))
            .unwrap()
            .sequence,
        2
    );
    assert_eq!(
        publisher
            .publish(&event("reuse/b", b"1", Priority::Low))
            .unwrap()
            .sequence,
        1
    );
}

#[test]
fn a_star_is_refused_in_a_topic_and_inside_a_pattern_segment() {
    // PROTOCOL.md §4: `a*b` is no topic, and `sensors/t*` is no pattern (it would silently match
    // nothing).
    let server = start();
    let mut c = server.client();
    // The connection's last good topic is reused for the next publish: that path too.
    c.publish(&event("a", b"", Priority::Low)).unwrap();
    let (code, _, msg) = server_error(c.publish(&event("a*b", b"", Priority::Low)).unwrap_err());
    assert_eq!(code, ErrorCode::InvalidTopic);
    assert!(msg.contains("a topic never contains '*'"), "{msg}");
    // A batch checks a run of events on one topic once: the run ends at the starred one.
    let batch = [
        event("s/a", b"", Priority::Low),
        event("s/a", b"", Priority::Low),
        event("s/a*", b"", Priority::Low),
    ];
    let (code, index, _) = server_error(c.publish_batch(&batch).unwrap_err());
    assert_eq!((code, index), (ErrorCode::InvalidTopic, Some(2)));
    for bad in ["sensors/t*", "a*b", "**x", "a/***"] {
        let (code, _, msg) = server_error(c.subscribe(bad, Priority::Low).unwrap_err());
        assert_eq!(code, ErrorCode::InvalidPattern, "{bad}");
        assert!(msg.contains("must be exactly '*'"), "{bad}: {msg}");
    }
    for good in ["*", "**", "a/*/c", "a/**"] {
        c.subscribe(good, Priority::Low).unwrap();
    }
}

/// `frame` (one whole frame) with `extra` bytes added to its body, its length fixed up.
fn with_extra(frame: &[u8], extra: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out.extend_from_slice(extra);
    let length = u32::try_from(out.len() - 4).unwrap();
    out[..4].copy_from_slice(&length.to_le_bytes());
    out
}

#[test]
fn a_frame_is_parsed_whole_before_it_is_validated() {
    // PROTOCOL.md §2: a frame that both fails to parse and breaks a rule gets Malformed.
    let server = start();
    let mut raw = Raw::connect(&server);
    let mut b = BytesMut::new();
    codec::put_publish(&mut b, 3, true, &event("a//b", b"", Priority::Low));
    raw.send(&with_extra(&b, &[0]));
    let (code, _, reference, index, _) = raw.expect_error();
    assert_eq!((code, reference, index), (ErrorCode::Malformed, 3, None));

    // A batch whose first event breaks a topic rule and whose second does not parse.
    let mut b = BytesMut::new();
    let events = [
        event("a//b", b"", Priority::Low),
        event("ok", b"", Priority::Low),
    ];
    codec::put_publish_batch(&mut b, 4, true, &events);
    let cut = b.len() - 1;
    raw.send(&with_extra(&b[..cut], &[]));
    let (code, _, reference, index, _) = raw.expect_error();
    assert_eq!((code, reference, index), (ErrorCode::Malformed, 4, Some(1)));

    // A SUBSCRIBE with a bad priority and a bad pattern: the priority is checked first.
    let mut b = BytesMut::new();
    codec::put_subscribe(&mut b, 5, 9, b"a/**/b");
    raw.send(&b);
    let (code, _, reference, ..) = raw.expect_error();
    assert_eq!((code, reference), (ErrorCode::Malformed, 5));
    raw.ping(6);
}
