//! The UDP door: publishes reach TCP subscribers; bad datagrams are dropped and counted, never
//! answered, and never partly applied.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use eventstream::engine::Priority;
use eventstream::native::client::publish_datagrams;
use eventstream::native::codec;
use eventstream::native::datagram::MAX_DATAGRAM;

fn dropped_eventually(server: &TestServer, expected: u64) {
    let mut c = server.client();
    for _ in 0..200 {
        if c.ping().unwrap().datagrams_dropped == expected {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("datagrams_dropped never reached {expected}");
}

#[test]
fn udp_publish_reaches_a_tcp_subscriber() {
    let server = start();
    let mut sub = server.client();
    sub.subscribe("sensors/*", Priority::Batch).unwrap();
    let events: Vec<_> = (0..10)
        .map(|i| event("sensors/udp", &[i], Priority::High))
        .collect();
    publish_datagrams(server.udp, &events).unwrap();
    for i in 0..10u8 {
        let d = sub.next_event().unwrap();
        assert_eq!(
            (d.event.payload.as_ref(), d.sequence),
            (&[i][..], u64::from(i) + 1)
        );
    }
}

#[test]
fn bad_datagrams_are_dropped_whole_and_counted() {
    let server = start();
    let mut sub = server.client();
    sub.subscribe("d/*", Priority::Batch).unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(server.udp).unwrap();

    socket.send(b"not a frame at all").unwrap();
    let mut subscribe = BytesMut::new();
    codec::put_subscribe(&mut subscribe, 1, 0, b"d/*");
    socket.send(&subscribe).unwrap();
    // Two good publishes and a bad one in one datagram: none of them is published.
    let mut mixed = BytesMut::new();
    codec::put_publish(&mut mixed, 0, false, &event("d/a", b"1", Priority::Low));
    codec::put_publish(&mut mixed, 0, false, &event("d/a", b"2", Priority::Low));
    codec::put_publish(&mut mixed, 0, false, &event("d//a", b"3", Priority::Low));
    socket.send(&mixed).unwrap();
    dropped_eventually(&server, 3);

    publish_datagrams(server.udp, &[event("d/a", b"good", Priority::Low)]).unwrap();
    let d = sub.next_event().unwrap();
    assert_eq!((d.event.payload.as_ref(), d.sequence), (&b"good"[..], 1));
}

#[test]
fn a_datagram_with_a_starred_topic_is_dropped_and_counted() {
    let server = start();
    let mut sub = server.client();
    sub.subscribe("**", Priority::Batch).unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(server.udp).unwrap();
    let mut starred = BytesMut::new();
    codec::put_publish(
        &mut starred,
        0,
        false,
        &event("a*b", b"star", Priority::Low),
    );
    socket.send(&starred).unwrap();
    dropped_eventually(&server, 1);
    publish_datagrams(server.udp, &[event("a/b", b"good", Priority::Low)]).unwrap();
    let d = sub.next_event().unwrap();
    assert_eq!(
        d.event.payload.as_ref(),
        b"good",
        "nothing of the dropped one"
    );
}

#[test]
fn an_empty_datagram_is_dropped_and_counted() {
    let server = start();
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(server.udp).unwrap();
    socket.send(&[]).unwrap();
    dropped_eventually(&server, 1);
}

/// One PUBLISH of exactly `size` bytes (topic "big", the payload filling the rest).
fn publish_datagram_of(size: usize) -> BytesMut {
    let fixed = codec::HEADER_LEN + 8 + 23 + "big".len();
    let mut out = BytesMut::new();
    let event = event("big", &vec![7; size - fixed], Priority::Low);
    codec::put_publish(&mut out, 0, false, &event);
    assert_eq!(out.len(), size);
    out
}

#[test]
fn a_datagram_longer_than_65507_bytes_is_dropped_and_counted_on_ipv6_too() {
    // IPv6 carries longer datagrams than IPv4's 65,507 bytes; the limit is the same for both,
    // so a frame's `length` is at most 65,503 wherever it comes from.
    let mut config = test_config();
    config.bind = "::1".parse().unwrap();
    let server = start_with(config);
    let mut sub = server.client();
    sub.subscribe("big", Priority::Batch).unwrap();
    let socket = UdpSocket::bind("[::1]:0").unwrap();
    socket.connect(server.udp).unwrap();
    socket.send(&publish_datagram_of(MAX_DATAGRAM + 1)).unwrap();
    dropped_eventually(&server, 1);
    socket.send(&publish_datagram_of(MAX_DATAGRAM)).unwrap();
    let d = sub.next_event().unwrap();
    assert_eq!(d.event.payload.len(), MAX_DATAGRAM - 40);
    assert_eq!(d.sequence, 1, "the longer one was not published");
}
