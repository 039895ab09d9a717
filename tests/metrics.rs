//! The metrics door end to end: a real scrape over HTTP reflects what clients did on every
//! shard, and anything but `GET /metrics` gets a clear HTTP error.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use eventstream::engine::Priority;

fn http(server: &TestServer, request: &str) -> String {
    let mut stream = TcpStream::connect(server.metrics).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// The sum over shards of one sample family (with an optional extra label filter).
fn total(text: &str, name: &str, filter: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(filter))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn a_scrape_counts_what_clients_did_on_every_shard() {
    let server = start();
    let mut subscriber = server.client_on(1);
    subscriber.subscribe("metrics/*", Priority::Batch).unwrap();
    let mut publisher = server.client_on(2);
    for shard in 0..SHARDS {
        let topic = topic_owned_by("metrics", shard);
        publisher
            .publish(&event(&topic, b"x", Priority::High))
            .unwrap();
    }
    for _ in 0..SHARDS {
        subscriber.next_event().unwrap();
    }

    let response = http(&server, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert_eq!(total(body, "eventstream_events_received_total", ""), 4);
    assert_eq!(total(body, "eventstream_events_sequenced_total", ""), 4);
    assert_eq!(total(body, "eventstream_events_delivered_total", ""), 4);
    assert_eq!(total(body, "eventstream_topics", ""), 4);
    assert_eq!(total(body, "eventstream_subscriptions", ""), 1);
    // The two native connections are open (and possibly a few the kernel placed elsewhere
    // while client_on looked for shards 1 and 2, not yet closed).
    assert!(total(body, "eventstream_connections", "door=\"native\"") >= 2);
    assert_eq!(
        total(
            body,
            "eventstream_publish_ack_latency_seconds_count",
            "shard=\"2\""
        ),
        4
    );
    for shard in 0..SHARDS {
        assert!(body.contains(&format!(
            "eventstream_events_received_total{{shard=\"{shard}\"}}"
        )));
    }
}

#[test]
fn other_requests_get_http_errors_and_the_door_keeps_serving() {
    let server = start();
    assert!(http(&server, "GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(http(&server, "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    // Over the 8 KiB bound by less than one read, so the door has read all of it when it
    // answers (no unread bytes to turn its close into a reset).
    let huge = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(8_300));
    let mut stream = TcpStream::connect(server.metrics).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = stream.write_all(huge.as_bytes());
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(http(&server, "GET /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
}
