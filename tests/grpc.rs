//! The gRPC door through an independent HTTP/2 client (the `h2` crate): the methods
//! and statuses of README.md, "What this version serves", and the same engine as the native door.

mod common;

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::*;
use eventstream::engine::Priority;
use eventstream::proto;
use prost::Message;

type Sender = h2::client::SendRequest<Bytes>;

async fn connect(server: &TestServer) -> Sender {
    let tcp = tokio::net::TcpStream::connect(server.grpc).await.unwrap();
    // h2 counts small DATA frames it has buffered unread against a budget; a thousand
    // responses arriving before their tasks read them would exhaust the default.
    let (sender, connection) = h2::client::Builder::new()
        .data_frame_budget(1 << 20)
        .handshake(tcp)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
}

fn request(method: &str) -> http::request::Builder {
    http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://localhost/eventstream.EventService/{method}"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
}

/// The end of a call: grpc-status, grpc-message, and the messages received.
#[derive(Debug)]
struct Outcome {
    status: u8,
    message: String,
    messages: Vec<Bytes>,
    trailers: http::HeaderMap,
}

async fn finish(response: h2::client::ResponseFuture) -> Outcome {
    let response = response.await.unwrap();
    let headers = response.headers().clone();
    let mut body = response.into_body();
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        data.extend_from_slice(&chunk);
    }
    let trailers = body
        .trailers()
        .await
        .unwrap()
        .unwrap_or_else(|| headers.clone());
    let status = trailers["grpc-status"].to_str().unwrap().parse().unwrap();
    let message = trailers
        .get("grpc-message")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let mut messages = Vec::new();
    while data.len() >= 5 {
        let len = u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize;
        data.advance(5);
        messages.push(data.split_to(len).freeze());
    }
    Outcome {
        status,
        message,
        messages,
        trailers,
    }
}

async fn unary(sender: &mut Sender, method: &str, body: Bytes) -> Outcome {
    let (response, mut stream) = sender
        .send_request(request(method).body(()).unwrap(), false)
        .unwrap();
    stream.send_data(body, true).unwrap();
    finish(response).await
}

/// Opens a Subscribe call and waits for its response headers (the subscription is registered
/// once they arrive). The request stream is returned too: dropping it cancels the call.
async fn subscribe(
    sender: &mut Sender,
    pattern: &str,
    min_priority: Priority,
) -> (h2::RecvStream, h2::SendStream<Bytes>) {
    let request = proto::SubscribeRequest {
        topic_pattern: pattern.into(),
        min_priority: min_priority as i32,
    };
    let (response, mut stream) = sender
        .send_request(self::request("Subscribe").body(()).unwrap(), false)
        .unwrap();
    stream.send_data(framed(&request), true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    (response.into_body(), stream)
}

/// Reads a streaming response until at least `count` events have arrived (each chunk within
/// 10 s), giving window back as a client does; returns every event the chunks held.
async fn next_events(body: &mut h2::RecvStream, count: usize) -> Vec<proto::Event> {
    let mut data = BytesMut::new();
    let mut events = Vec::new();
    while events.len() < count {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.data())
            .await
            .expect("the next events within 10 s")
            .unwrap()
            .unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        data.extend_from_slice(&chunk);
        while data.len() >= 5 {
            let len = u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize;
            if data.len() < 5 + len {
                break;
            }
            data.advance(5);
            events.push(proto::Event::decode(data.split_to(len)).unwrap());
        }
    }
    events
}

fn event(topic: &str, payload: &[u8], priority: Priority) -> proto::Event {
    proto::Event {
        topic: topic.into(),
        payload: Bytes::copy_from_slice(payload),
        priority: priority as i32,
        ..Default::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn publish_over_grpc_reaches_a_native_subscriber_with_the_same_sequence() {
    let server = start();
    let mut native = server.client();
    native.subscribe("orders/*", Priority::Batch).unwrap();
    runtime().block_on(async {
        let mut sender = connect(&server).await;
        let mut e = event("orders/new", b"o-1", Priority::High);
        e.metadata.insert("source".into(), "grpc".into());
        let outcome = unary(
            &mut sender,
            "Publish",
            framed(&proto::PublishRequest { event: Some(e) }),
        )
        .await;
        assert_eq!(outcome.status, 0, "{outcome:?}");
        let response = proto::PublishResponse::decode(outcome.messages[0].clone()).unwrap();
        assert!(response.success);
        assert!(response.latency_ns > 0);
    });
    let d = native.next_event().unwrap();
    assert_eq!((d.sequence, &d.event.payload[..]), (1, &b"o-1"[..]));
    assert_eq!(
        d.event.metadata.iter().collect::<Vec<_>>(),
        vec![("source", "grpc")]
    );
    assert_eq!(d.event.id.len(), 36);
}

/// Low-latency mode: gRPC calls on a connection that polls its socket are answered, including
/// those whose topic another shard owns.
#[test]
fn in_low_latency_mode_unary_calls_are_answered_across_shards() {
    let mut config = test_config();
    config.shards.spin_before_park_us = 200;
    let server = start_with(config);
    runtime().block_on(async {
        let mut sender = connect(&server).await;
        for shard in 0..SHARDS {
            let topic = topic_owned_by("ll", shard);
            for _ in 0..50 {
                let e = event(&topic, b"x", Priority::Medium);
                let body = framed(&proto::PublishRequest { event: Some(e) });
                let outcome = unary(&mut sender, "Publish", body).await;
                assert_eq!(outcome.status, 0, "{outcome:?}");
                let response = proto::PublishResponse::decode(outcome.messages[0].clone());
                assert!(response.unwrap().success);
            }
        }
    });
}

#[test]
fn a_grpc_subscriber_receives_native_publishes_and_cancel_frees_it() {
    let server = start();
    runtime().block_on(async {
        let mut sender = connect(&server).await;
        let (mut body, stream) = subscribe(&mut sender, "sensors/*", Priority::Low).await;
        // Registered once the response headers arrived: publish natively now.
        let mut native = server.client();
        native
            .publish(&common::event("sensors/t1", b"a", Priority::Medium))
            .unwrap();
        native
            .publish(&common::event("sensors/t2", b"low", Priority::Batch))
            .unwrap();
        native
            .publish(&common::event("sensors/t2", b"b", Priority::Critical))
            .unwrap();
        let events = next_events(&mut body, 2).await;
        assert_eq!(
            (events[0].topic.as_str(), events[0].sequence),
            ("sensors/t1", 1)
        );
        assert_eq!(
            (
                events[1].topic.as_str(),
                events[1].sequence,
                &events[1].payload[..]
            ),
            ("sensors/t2", 2, &b"b"[..])
        );
        // Cancel: the subscription is released on every shard.
        drop(body);
        drop(stream);
        for _ in 0..100 {
            if native.ping().unwrap().subscriptions == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("cancelled subscription still registered");
    });
}

/// A gRPC subscriber that stops reading fills its HTTP/2 window, then the server's per-stream
/// queue; from then on its events wait in its subscriber queue. Its shard must go on serving
/// everyone else meanwhile (it once spun in the connection's writer, retrying the stalled
/// stream without end), and the subscriber gets every event, in order, once it reads again.
#[test]
fn a_grpc_subscriber_that_stops_reading_stalls_only_itself() {
    const EVENTS: usize = 2_000; // of 1 KiB: far beyond the 64 KiB window and the stream queue
    let server = start();
    runtime().block_on(async {
        let mut sender = connect(&server).await;
        let (mut body, _stream) = subscribe(&mut sender, "stalled/*", Priority::Batch).await;
        let mut native = server.client();
        let payload = vec![7u8; 1024];
        for _ in 0..EVENTS {
            let event = common::event("stalled/t", &payload, Priority::Medium);
            native.publish_nowait(&event).unwrap();
        }
        native.flush().unwrap();
        // Every shard answers while the subscriber reads nothing.
        for _ in 0..10 {
            let pong = native.ping().unwrap();
            assert_eq!(
                pong.shards_answered, pong.shards,
                "a shard stopped answering"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Events flow again once the subscriber reads.
        let events = next_events(&mut body, EVENTS).await;
        let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
        assert_eq!(sequences, (1..=EVENTS as u64).collect::<Vec<_>>());
    });
}

#[test]
fn responses_decode_whatever_header_table_the_client_allows() {
    // The server indexes content-type and grpc-status in the client's table: with no table,
    // a table too small for some entries, and the default, every answer reads back right.
    let server = start();
    runtime().block_on(async {
        for table_size in [0, 50, 4096] {
            let tcp = tokio::net::TcpStream::connect(server.grpc).await.unwrap();
            let (mut sender, connection) = h2::client::Builder::new()
                .header_table_size(table_size)
                .handshake::<_, Bytes>(tcp)
                .await
                .unwrap();
            tokio::spawn(async move {
                let _ = connection.await;
            });
            for round in 0..3 {
                let good = framed(&proto::PublishRequest {
                    event: Some(event("tables/t", b"x", Priority::Low)),
                });
                let o = unary(&mut sender, "Publish", good).await;
                assert_eq!((o.status, round), (0, round), "table {table_size}: {o:?}");
                let bad = framed(&proto::PublishRequest {
                    event: Some(event("tables//t", b"x", Priority::Low)),
                });
                let o = unary(&mut sender, "Publish", bad).await;
                assert_eq!(o.status, 3, "table {table_size}: {o:?}");
                assert!(o.message.contains("empty segment"), "{}", o.message);
            }
        }
    });
}

#[test]
fn statuses_of_section_2() {
    let server = start();
    runtime().block_on(async {
        let mut sender = connect(&server).await;
        let bad = framed(&proto::PublishRequest {
            event: Some(event("a//b", b"", Priority::Low)),
        });
        let o = unary(&mut sender, "Publish", bad).await;
        assert_eq!(o.status, 3, "{o:?}");
        assert!(o.message.contains("empty segment"), "{}", o.message);

        let mut events: Vec<_> = (0..4)
            .map(|i| event(&format!("b/{i}"), b"", Priority::Low))
            .collect();
        events[2].topic = "b/ x".into();
        let o = unary(
            &mut sender,
            "PublishBatch",
            framed(&proto::PublishBatchRequest { events }),
        )
        .await;
        assert_eq!(o.status, 3);
        assert!(o.message.starts_with("event 2"), "{}", o.message);

        let o = unary(&mut sender, "Nope", framed(&proto::Empty {})).await;
        assert_eq!(o.status, 12);

        let o = unary(
            &mut sender,
            "Publish",
            Bytes::from_static(&[0, 0, 0, 0, 3, 0xff, 0xff, 0xff]),
        )
        .await;
        assert_eq!(o.status, 3, "malformed protobuf: {o:?}");

        let o = unary(
            &mut sender,
            "Publish",
            Bytes::from_static(&[1, 0, 0, 0, 1, 0]),
        )
        .await;
        assert_eq!(o.status, 12, "compressed without grpc-encoding: {o:?}");

        let big = |n: usize| {
            framed(&proto::PublishRequest {
                event: Some(event("big", &vec![0u8; n], Priority::Low)),
            })
        };
        let o = unary(&mut sender, "Publish", big(3 << 20)).await;
        assert_eq!(o.status, 0, "3 MiB passes: {o:?}");
        let o = unary(&mut sender, "Publish", big(5 << 20)).await;
        assert_eq!(o.status, 8, "5 MiB is RESOURCE_EXHAUSTED: {o:?}");

        let o = unary(&mut sender, "HealthCheck", framed(&proto::Empty {})).await;
        assert_eq!(o.status, 0);
        let health = proto::HealthResponse::decode(o.messages[0].clone()).unwrap();
        assert!(health.healthy);
        assert_eq!(health.version, env!("CARGO_PKG_VERSION"));
    });
}

#[test]
fn stream_publishes_inbound_events_and_sends_matching_ones() {
    let server = start();
    runtime().block_on(async {
        let mut sender = connect(&server).await;
        let req = request("Stream")
            .header("x-topic-pattern", "chat/**")
            .header("x-min-priority", "LOW")
            .body(())
            .unwrap();
        let (response, mut stream) = sender.send_request(req, false).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        let mut body = response.into_body();
        for (topic, p) in [
            ("chat/a", Priority::Medium),
            ("other/x", Priority::High),
            ("chat/b/c", Priority::Batch),
            ("chat/b", Priority::High),
        ] {
            stream
                .send_data(framed(&event(topic, b"m", p)), false)
                .unwrap();
        }
        let mut topics: Vec<String> = next_events(&mut body, 2)
            .await
            .into_iter()
            .map(|e| e.topic)
            .collect();
        // Two topics, possibly two owner shards: no order between them is promised.
        topics.sort();
        assert_eq!(
            topics,
            vec!["chat/a", "chat/b"],
            "own events matching the pattern and priority"
        );
        stream.send_data(Bytes::new(), true).unwrap();
        let trailers = body.trailers().await.unwrap().unwrap();
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["x-published-count"], "4");

        // An invalid inbound event ends the call with INVALID_ARGUMENT naming its position.
        let req = request("Stream")
            .header("x-topic-pattern", "chat/**")
            .body(())
            .unwrap();
        let (response, mut stream) = sender.send_request(req, false).unwrap();
        stream
            .send_data(framed(&event("chat/ok", b"", Priority::Low)), false)
            .unwrap();
        stream
            .send_data(framed(&event("chat//bad", b"", Priority::Low)), false)
            .unwrap();
        let o = finish(response).await;
        assert_eq!(o.status, 3, "{o:?}");
        assert!(o.message.contains("inbound event 1"), "{}", o.message);
        let _ = o.trailers;
    });
}

/// Opens a Stream call without `x-topic-pattern` (publish-only), sends `frames` (the last one
/// half-closes) and returns how the call ended.
async fn publish_only_stream(sender: &mut Sender, frames: Vec<Bytes>) -> Outcome {
    let req = request("Stream").body(()).unwrap();
    let (response, mut stream) = sender.send_request(req, false).unwrap();
    let last = frames.len().saturating_sub(1);
    for (i, frame) in frames.into_iter().enumerate() {
        stream.send_data(frame, i == last).unwrap();
    }
    finish(response).await
}

#[test]
fn a_stream_without_a_topic_pattern_publishes_and_sends_nothing_back() {
    const EVENTS: usize = 50;
    let server = start();
    let mut sub = server.client();
    sub.subscribe("ingest/**", Priority::Batch).unwrap();
    runtime().block_on(async {
        let mut sender = connect(&server).await;
        // Events one per DATA frame and several in one frame; half-closed by an empty frame.
        let mut frames: Vec<Bytes> = (0..EVENTS / 2)
            .map(|i| framed(&event("ingest/a", i.to_string().as_bytes(), Priority::Low)))
            .collect();
        let mut several = BytesMut::new();
        for i in EVENTS / 2..EVENTS {
            several.extend_from_slice(&framed(&event(
                "ingest/a",
                i.to_string().as_bytes(),
                Priority::Low,
            )));
        }
        frames.push(several.freeze());
        frames.push(Bytes::new());
        let o = publish_only_stream(&mut sender, frames).await;
        assert_eq!(o.status, 0, "{o:?}");
        assert!(o.messages.is_empty(), "no events back: {o:?}");
        assert_eq!(o.trailers["x-published-count"], EVENTS.to_string().as_str());

        // No events at all, the request's HEADERS already ending it: OK, none published.
        let req = request("Stream").body(()).unwrap();
        let (response, _stream) = sender.send_request(req, true).unwrap();
        let o = finish(response).await;
        assert_eq!(o.status, 0, "{o:?}");
        assert_eq!(o.trailers["x-published-count"], "0");

        // A minimum priority filters events sent back: without a pattern it is a mistake.
        let req = request("Stream")
            .header("x-min-priority", "HIGH")
            .body(())
            .unwrap();
        let (response, _stream) = sender.send_request(req, false).unwrap();
        let o = finish(response).await;
        assert_eq!(o.status, 3, "{o:?}");
        assert!(o.message.contains("x-topic-pattern"), "{}", o.message);
    });
    let payloads: Vec<String> = (0..EVENTS)
        .map(|_| String::from_utf8(sub.next_event().unwrap().event.payload.to_vec()).unwrap())
        .collect();
    let want: Vec<String> = (0..EVENTS).map(|i| i.to_string()).collect();
    assert_eq!(payloads, want, "every event, in the order sent");
}

#[test]
fn a_publish_only_stream_with_an_invalid_event_ends_naming_its_position() {
    let server = start();
    runtime().block_on(async {
        let mut sender = connect(&server).await;
        let frames = vec![
            framed(&event("ingest/ok", b"", Priority::Low)),
            framed(&event("ingest/ok", b"", Priority::Low)),
            framed(&event("ingest/ bad", b"", Priority::Low)),
        ];
        let o = publish_only_stream(&mut sender, frames).await;
        assert_eq!(o.status, 3, "{o:?}");
        assert!(o.message.contains("inbound event 2"), "{}", o.message);
        assert!(o.messages.is_empty(), "{o:?}");
    });
}

#[test]
fn an_invalid_event_inside_a_read_of_one_topic_ends_the_call_after_the_valid_ones_before_it() {
    // One DATA frame of one topic: the engine takes its valid events as one run, and the
    // invalid one (an id over the length limit, found only when the engine checks the
    // stretch) must leave them published, itself and what follows not.
    let server = start();
    let topic = "ingest/run";
    let mut sub = server.client();
    sub.subscribe(topic, Priority::Batch).unwrap();
    runtime().block_on(async {
        let mut sender = connect(&server).await;
        let mut frame = BytesMut::new();
        for payload in ["0", "1", "2"] {
            frame.extend_from_slice(&framed(&event(topic, payload.as_bytes(), Priority::Low)));
        }
        let mut bad = event(topic, b"bad", Priority::Low);
        bad.id = "i".repeat(1000);
        frame.extend_from_slice(&framed(&bad));
        frame.extend_from_slice(&framed(&event(topic, b"3", Priority::Low)));
        let o = publish_only_stream(&mut sender, vec![frame.freeze()]).await;
        assert_eq!(o.status, 3, "INVALID_ARGUMENT: {o:?}");
        assert!(o.message.contains("inbound event 3"), "{}", o.message);
        let marker = proto::PublishRequest {
            event: Some(event(topic, b"marker", Priority::Low)),
        };
        let o = unary(&mut sender, "Publish", framed(&marker)).await;
        assert_eq!(o.status, 0, "{o:?}");
    });
    let got: Vec<(Bytes, u64)> = (0..4)
        .map(|_| {
            let e = sub.next_event().unwrap();
            (e.event.payload, e.sequence)
        })
        .collect();
    let want = [("0", 1), ("1", 2), ("2", 3), ("marker", 4)];
    let want: Vec<(Bytes, u64)> = want
        .iter()
        .map(|(p, s)| (Bytes::from_static(p.as_bytes()), *s))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn a_publish_only_stream_the_client_never_half_closes_ends_at_its_deadline() {
    let server = start();
    runtime().block_on(async {
        let mut sender = connect(&server).await;
        let req = request("Stream")
            .header("grpc-timeout", "200m")
            .body(())
            .unwrap();
        let (response, mut stream) = sender.send_request(req, false).unwrap();
        stream
            .send_data(framed(&event("ingest/slow", b"", Priority::Low)), false)
            .unwrap();
        let o = tokio::time::timeout(Duration::from_secs(10), finish(response))
            .await
            .unwrap();
        assert_eq!(o.status, 4, "DEADLINE_EXCEEDED: {o:?}");
    });
}

#[test]
fn a_stream_ends_ok_only_once_its_events_are_sequenced() {
    // One topic per shard, taken first; then, on each shard, a Stream sends one event to a
    // second topic and half-closes in the same DATA frame. Every owner refuses its event,
    // the connection's own shard at once and the others after a trip between shards: each
    // call must end with that refusal, never OK before its event was sequenced.
    let mut config = test_config();
    config.limits.max_topics_per_shard = 1;
    let server = start_with(config);
    runtime().block_on(async {
        let mut sender = connect(&server).await;
        for shard in 0..SHARDS {
            let first = proto::PublishRequest {
                event: Some(event(&topic_owned_by("first", shard), b"", Priority::Low)),
            };
            let o = unary(&mut sender, "Publish", framed(&first)).await;
            assert_eq!(o.status, 0, "{o:?}");
        }
        for pattern in [Some("nothing/**"), None] {
            for shard in 0..SHARDS {
                let mut req = request("Stream");
                if let Some(pattern) = pattern {
                    req = req.header("x-topic-pattern", pattern);
                }
                let (response, mut stream) =
                    sender.send_request(req.body(()).unwrap(), false).unwrap();
                let second = event(&topic_owned_by("second", shard), b"", Priority::Low);
                stream.send_data(framed(&second), true).unwrap();
                let o = finish(response).await;
                assert_eq!(o.status, 8, "pattern {pattern:?}, shard {shard}: {o:?}");
                assert!(o.message.contains("max_topics_per_shard"), "{}", o.message);
            }
        }
    });
}

#[test]
fn a_stream_refused_by_a_topic_owner_ends_and_publishes_nothing_after() {
    // One topic per shard: each shard's second topic is refused by its owner. The inbound
    // events go in one DATA frame, so the refusal from the connection's own shard (whichever
    // that is) arrives while its events are being published, and the rest must not be.
    let mut config = test_config();
    config.limits.max_topics_per_shard = 1;
    let server = start_with(config);
    let after = topic_owned_by("first", 0);
    let mut sub = server.client();
    sub.subscribe(&after, Priority::Batch).unwrap();
    runtime().block_on(async {
        let mut sender = connect(&server).await;
        let req = request("Stream")
            .header("x-topic-pattern", "nothing/**")
            .body(())
            .unwrap();
        let (response, mut stream) = sender.send_request(req, false).unwrap();
        let mut frame = BytesMut::new();
        for prefix in ["first", "second"] {
            for shard in 0..SHARDS {
                let topic = topic_owned_by(prefix, shard);
                frame.extend_from_slice(&framed(&event(&topic, prefix.as_bytes(), Priority::Low)));
            }
        }
        for _ in 0..8 {
            frame.extend_from_slice(&framed(&event(&after, b"after", Priority::Low)));
        }
        stream.send_data(frame.freeze(), false).unwrap();
        let o = finish(response).await;
        assert_eq!(o.status, 8, "RESOURCE_EXHAUSTED: {o:?}");
        assert!(o.message.contains("max_topics_per_shard"), "{}", o.message);
        // A marker published on the same connection after the call has ended reaches the
        // topic's owner after anything the call published there (one connection's publishes
        // to a topic keep their order): the subscriber sees the first event, then the marker.
        let marker = proto::PublishRequest {
            event: Some(event(&after, b"marker", Priority::Low)),
        };
        let o = unary(&mut sender, "Publish", framed(&marker)).await;
        assert_eq!(o.status, 0, "{o:?}");
    });
    let payloads: Vec<Bytes> = (0..2)
        .map(|_| sub.next_event().unwrap().event.payload)
        .collect();
    assert_eq!(payloads, [&b"first"[..], &b"marker"[..]]);
}

#[test]
fn a_thousand_concurrent_streams_on_one_connection() {
    let server = start();
    runtime().block_on(async {
        let sender = connect(&server).await;
        let mut calls = Vec::new();
        for i in 0..1000 {
            let sender = sender.clone();
            calls.push(tokio::spawn(async move {
                let mut sender = sender.ready().await.unwrap();
                let e = event(&format!("many/{}", i % 10), b"x", Priority::Low);
                unary(
                    &mut sender,
                    "Publish",
                    framed(&proto::PublishRequest { event: Some(e) }),
                )
                .await
                .status
            }));
        }
        for call in calls {
            assert_eq!(call.await.unwrap(), 0);
        }
    });
}

#[test]
fn grpc_timeout_ends_a_subscription_with_deadline_exceeded() {
    let server = start();
    runtime().block_on(async {
        let mut sender = connect(&server).await;
        let req = request("Subscribe")
            .header("grpc-timeout", "200m")
            .body(())
            .unwrap();
        let (response, mut stream) = sender.send_request(req, false).unwrap();
        let subscribe = proto::SubscribeRequest {
            topic_pattern: "quiet/*".into(),
            min_priority: 0,
        };
        stream.send_data(framed(&subscribe), true).unwrap();
        let started = std::time::Instant::now();
        let o = tokio::time::timeout(Duration::from_secs(10), finish(response))
            .await
            .unwrap();
        assert_eq!(o.status, 4, "{o:?}");
        assert!(started.elapsed() >= Duration::from_millis(150));
        let bad = request("Publish")
            .header("grpc-timeout", "soon")
            .body(())
            .unwrap();
        let (response, mut stream) = sender.send_request(bad, false).unwrap();
        stream.send_data(framed(&proto::Empty {}), true).unwrap();
        assert_eq!(finish(response).await.status, 3);
    });
}

fn call(path: &str) -> http::request::Builder {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
}

#[test]
fn health_v1_and_reflection_answer() {
    use eventstream::proto::grpc::health::v1::{HealthCheckRequest, HealthCheckResponse};
    use eventstream::proto::grpc::reflection::v1::{
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest, ServerReflectionResponse,
    };
    let server = start();
    runtime().block_on(async {
        let mut sender = connect(&server).await;
        let ask = |service: &str| {
            framed(&HealthCheckRequest {
                service: service.into(),
            })
        };
        for service in ["", "eventstream.EventService"] {
            let (response, mut stream) = sender
                .send_request(
                    call("/grpc.health.v1.Health/Check").body(()).unwrap(),
                    false,
                )
                .unwrap();
            stream.send_data(ask(service), true).unwrap();
            let o = finish(response).await;
            assert_eq!(o.status, 0);
            assert_eq!(
                HealthCheckResponse::decode(o.messages[0].clone())
                    .unwrap()
                    .status,
                1,
                "SERVING"
            );
        }
        let (response, mut stream) = sender
            .send_request(
                call("/grpc.health.v1.Health/Check").body(()).unwrap(),
                false,
            )
            .unwrap();
        stream.send_data(ask("nope.Service"), true).unwrap();
        assert_eq!(finish(response).await.status, 5, "NOT_FOUND");

        let (response, mut stream) = sender
            .send_request(
                call("/grpc.health.v1.Health/Watch").body(()).unwrap(),
                false,
            )
            .unwrap();
        stream.send_data(ask(""), true).unwrap();
        let mut body = response.await.unwrap().into_body();
        let first = tokio::time::timeout(Duration::from_secs(10), body.data())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(HealthCheckResponse::decode(&first[5..]).unwrap().status, 1);

        for path in [
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            let (response, mut stream) = sender
                .send_request(call(path).body(()).unwrap(), false)
                .unwrap();
            let list = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            let symbol = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::FileContainingSymbol(
                    "eventstream.EventService".into(),
                )),
            };
            stream.send_data(framed(&list), false).unwrap();
            stream.send_data(framed(&symbol), true).unwrap();
            let o = finish(response).await;
            assert_eq!(o.status, 0, "{path}");
            let Some(MessageResponse::ListServicesResponse(services)) =
                ServerReflectionResponse::decode(o.messages[0].clone())
                    .unwrap()
                    .message_response
            else {
                panic!("{path}")
            };
            assert!(services
                .service
                .iter()
                .any(|s| s.name == "eventstream.EventService"));
            assert!(matches!(
                ServerReflectionResponse::decode(o.messages[1].clone())
                    .unwrap()
                    .message_response,
                Some(MessageResponse::FileDescriptorResponse(_))
            ));
        }
    });
}

/// Raw bytes for abuse tests, built with the server's own frame encoder.
fn raw_request_block() -> Vec<u8> {
    let mut encoder = loona_hpack::Encoder::new();
    encoder.encode([
        (&b":method"[..], &b"POST"[..]),
        (b":scheme", b"http"),
        (b":path", b"/eventstream.EventService/Subscribe"),
        (b"content-type", b"application/grpc"),
    ])
}

#[test]
fn rapid_resets_and_malformed_frames_end_only_the_abusers_connection() {
    use eventstream::grpc::h2::frame::{self, Reason};
    use std::io::{Read, Write};
    let server = start();
    // Rapid reset: open and cancel streams as fast as possible.
    let mut abuser = std::net::TcpStream::connect(server.grpc).unwrap();
    abuser
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = BytesMut::from(frame::PREFACE);
    frame::put_settings(&mut out, &[]);
    let block = raw_request_block();
    for i in 0..5_000u32 {
        let id = 1 + 2 * i;
        // The same block each time: its fields are literals (with indexing), so repeating it
        // is valid HPACK whatever the server's table holds.
        frame::put_headers(&mut out, id, &block, false, 16_384);
        frame::put_rst_stream(&mut out, id, Reason::Cancel);
    }
    let _ = abuser.write_all(&out);
    let mut seen = Vec::new();
    let mut chunk = [0u8; 65536];
    while let Ok(n) = abuser.read(&mut chunk) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&chunk[..n]);
    }
    let mut seen = BytesMut::from(&seen[..]);
    let mut goaway = None;
    while let Ok(Some(f)) = frame::decode(&mut seen, frame::MAX_MAX_FRAME_SIZE) {
        if let frame::Frame::GoAway { code, .. } = f {
            goaway = Some(code);
        }
    }
    assert_eq!(
        goaway,
        Some(Reason::EnhanceYourCalm as u32),
        "rapid reset is stopped"
    );

    // Garbage after a valid preface: a connection error, GOAWAY, close.
    for garbage in [
        &[0xffu8; 64][..],
        &[0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
    ] {
        let mut bad = std::net::TcpStream::connect(server.grpc).unwrap();
        bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut out = BytesMut::from(frame::PREFACE);
        out.extend_from_slice(garbage);
        let _ = bad.write_all(&out);
        let mut sink = Vec::new();
        let _ = bad.read_to_end(&mut sink);
    }

    // Meanwhile everyone else is served.
    runtime().block_on(async {
        let mut sender = connect(&server).await;
        let e = event("still/up", b"", Priority::Low);
        let o = unary(
            &mut sender,
            "Publish",
            framed(&proto::PublishRequest { event: Some(e) }),
        )
        .await;
        assert_eq!(o.status, 0);
    });
    assert_eq!(
        server.client().ping().unwrap().subscriptions,
        0,
        "reset streams hold nothing"
    );
}

#[test]
fn idle_connections_are_closed_with_goaway() {
    let mut config = test_config();
    config.grpc.idle_timeout_ms = 200;
    let server = start_with(config);
    runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(server.grpc).await.unwrap();
        let (_sender, connection) = h2::client::handshake(tcp).await.unwrap();
        let started = std::time::Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
        assert!(ended.is_ok(), "the idle connection was closed");
        assert!(started.elapsed() >= Duration::from_millis(150));
        // A connection with a call in progress is not idle.
        let mut sender = connect(&server).await;
        let req = request("Subscribe").body(()).unwrap();
        let (response, mut stream) = sender.send_request(req, false).unwrap();
        stream
            .send_data(
                framed(&proto::SubscribeRequest {
                    topic_pattern: "idle/*".into(),
                    min_priority: 0,
                }),
                true,
            )
            .unwrap();
        let mut body = response.await.unwrap().into_body();
        tokio::time::sleep(Duration::from_millis(600)).await;
        let mut native = server.client();
        native
            .publish(&common::event("idle/x", b"still here", Priority::Low))
            .unwrap();
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.data())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(chunk.len() > 5);
    });
}

#[test]
fn partial_messages_cannot_hold_unbounded_memory() {
    let server = start();
    runtime().block_on(async {
        let sender = connect(&server).await;
        let (statuses, mut refusals) = tokio::sync::mpsc::unbounded_channel();
        let mut streams = Vec::new();
        for _ in 0..8 {
            let mut s = sender.clone().ready().await.unwrap();
            let (response, mut stream) = s
                .send_request(request("Publish").body(()).unwrap(), false)
                .unwrap();
            // A 4,000,000-byte message announced, 3 MiB of it sent, never finished.
            let mut partial = BytesMut::new();
            partial.put_u8(0);
            partial.put_u32(4_000_000);
            partial.extend_from_slice(&vec![0u8; 3 << 20]);
            stream.reserve_capacity(partial.len());
            stream.send_data(partial.freeze(), false).unwrap();
            streams.push(stream);
            let statuses = statuses.clone();
            tokio::spawn(async move {
                if let Ok(r) = response.await {
                    let status = r
                        .headers()
                        .get("grpc-status")
                        .map(|v| v.to_str().unwrap().to_owned());
                    let _ = statuses.send(status);
                }
            });
        }
        let first = tokio::time::timeout(Duration::from_secs(20), refusals.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            first.as_deref(),
            Some("8"),
            "over 4 maximum-size messages buffered: RESOURCE_EXHAUSTED"
        );
        drop(streams);
        let mut sender = connect(&server).await;
        let e = event("after/partials", b"", Priority::Low);
        assert_eq!(
            unary(
                &mut sender,
                "Publish",
                framed(&proto::PublishRequest { event: Some(e) })
            )
            .await
            .status,
            0
        );
    });
}

#[test]
fn a_star_is_refused_in_a_topic_and_inside_a_pattern_segment() {
    // The topic and pattern rules (PROTOCOL.md §4) on the gRPC door: INVALID_ARGUMENT with a
    // message that states the rule.
    let server = start();
    runtime().block_on(async {
        let mut sender = connect(&server).await;
        let starred = framed(&proto::PublishRequest {
            event: Some(event("a*b", b"", Priority::Low)),
        });
        let o = unary(&mut sender, "Publish", starred).await;
        assert_eq!(o.status, 3, "{o:?}");
        assert!(
            o.message.contains("a topic never contains '*'"),
            "{}",
            o.message
        );

        let events = vec![
            event("b/x", b"", Priority::Low),
            event("b/x*", b"", Priority::Low),
        ];
        let batch = framed(&proto::PublishBatchRequest { events });
        let o = unary(&mut sender, "PublishBatch", batch).await;
        assert_eq!(o.status, 3, "{o:?}");
        assert!(o.message.starts_with("event 1"), "{}", o.message);

        let subscribe = proto::SubscribeRequest {
            topic_pattern: "sensors/t*".into(),
            min_priority: 0,
        };
        let (response, mut stream) = sender
            .send_request(request("Subscribe").body(()).unwrap(), false)
            .unwrap();
        stream.send_data(framed(&subscribe), true).unwrap();
        let o = finish(response).await;
        assert_eq!(o.status, 3, "{o:?}");
        assert!(o.message.contains("must be exactly '*'"), "{}", o.message);

        let req = request("Stream")
            .header("x-topic-pattern", "sensors/t*")
            .body(())
            .unwrap();
        let (response, _stream) = sender.send_request(req, false).unwrap();
        let o = finish(response).await;
        assert_eq!(o.status, 3, "{o:?}");
        assert!(o.message.contains("must be exactly '*'"), "{}", o.message);
    });
}
