//! Messages near the 4 MiB limit over TLS, on both TCP doors and in both directions. rustls
//! holds 16 KiB of decrypted plaintext and 64 KiB of records at a time; a door must move
//! messages far larger than either, several in a row, while other TLS clients of the same
//! server keep being answered.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use common::pki::{client_config, native_client_tls, pki, tls_config};
use common::*;
use eventstream::config::ClientAuth;
use eventstream::engine::Priority;
use eventstream::native::client::Client;
use eventstream::proto;
use prost::Message;
use tokio_rustls::rustls;

/// A payload just under the default 4 MiB message limit.
const LARGE_BYTES: usize = 3_900 * 1024;
/// Large messages sent back to back without waiting for an answer.
const PIPELINED: usize = 4;
/// What one round trip of the small client may take while the large messages flow: a
/// liveness bound (a door that served one connection's megabytes before anyone else's would
/// miss it), not a speed target.
const SMALL_ROUND_TRIP_MAX: Duration = Duration::from_secs(2);

/// The large messages, made once: message `i`'s bytes differ from every other's, so a
/// mix-up shows.
fn payloads() -> Vec<Bytes> {
    (0..=PIPELINED)
        .map(|i| {
            (0..LARGE_BYTES)
                .map(|b| (b % 251) as u8 ^ (i as u8).wrapping_mul(37))
                .collect()
        })
        .collect()
}

/// Round trips a small client makes (one at a time) until `stop`: their count and the slowest.
fn keep_pinging(mut round_trip: impl FnMut(), stop: &AtomicBool) -> (usize, Duration) {
    let (mut count, mut worst) = (0, Duration::ZERO);
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        round_trip();
        worst = worst.max(start.elapsed());
        count += 1;
        std::thread::sleep(Duration::from_millis(2));
    }
    (count, worst)
}

#[test]
fn native_door_moves_large_events_over_tls_both_ways() {
    let pki = pki();
    let mut config = test_config();
    config.native.tls = tls_config(pki.dir.path(), ClientAuth::Require);
    let server = start_with(config);
    let tls = native_client_tls(&pki);
    let addr = format!("localhost:{}", server.native.port());
    let connect = || {
        let mut c = Client::connect_tls(&addr, &tls).unwrap();
        c.set_timeout(Some(Duration::from_secs(30))).unwrap();
        c
    };
    let payload = payloads();
    let mut subscriber = connect();
    subscriber.subscribe("large/*", Priority::Batch).unwrap();
    let stop = AtomicBool::new(false);
    let (round_trips, worst) = std::thread::scope(|scope| {
        let pinger = scope.spawn(|| {
            let mut small = connect();
            keep_pinging(|| drop(small.ping().unwrap()), &stop)
        });
        let mut publisher = connect();
        // One acknowledged, then several pipelined: sent before any answer is read.
        let ack = publisher
            .publish(&event("large/a", &payload[0], Priority::Low))
            .unwrap();
        assert_eq!(ack.count, 1);
        for body in &payload[1..=PIPELINED] {
            publisher
                .publish_nowait(&event("large/a", body, Priority::Low))
                .unwrap();
        }
        publisher.flush().unwrap();
        assert_eq!(publisher.ping().unwrap().refused, 0);
        for (i, body) in payload[..=PIPELINED].iter().enumerate() {
            let delivery = subscriber.next_event().unwrap();
            assert_eq!(delivery.sequence, i as u64 + 1);
            assert!(delivery.event.payload == *body, "event {i} arrives intact");
        }
        stop.store(true, Ordering::Relaxed);
        pinger.join().unwrap()
    });
    eprintln!("native: {round_trips} small round trips, slowest {worst:?}");
    assert!(round_trips > 0);
    assert!(worst < SMALL_ROUND_TRIP_MAX, "slowest round trip {worst:?}");
}

type Sender = h2::client::SendRequest<Bytes>;

/// An HTTP/2 connection over mTLS to the gRPC door, with windows that let a large message
/// flow without waiting for each 64 KiB to be acknowledged.
async fn connect_grpc(server: &TestServer, config: Arc<rustls::ClientConfig>) -> Sender {
    let tcp = tokio::net::TcpStream::connect(server.grpc).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(8 << 20)
        .initial_connection_window_size(32 << 20)
        .handshake(tls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
}

fn request(method: &str) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!(
            "https://localhost/eventstream.EventService/{method}"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// A unary Publish; the grpc-status it ended with.
async fn publish(sender: &mut Sender, event: proto::Event) -> u8 {
    let (response, mut stream) = sender.send_request(request("Publish"), false).unwrap();
    stream
        .send_data(framed(&proto::PublishRequest { event: Some(event) }), true)
        .unwrap();
    let mut body = response.await.unwrap().into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
    }
    let trailers = body.trailers().await.unwrap().expect("trailers");
    trailers["grpc-status"].to_str().unwrap().parse().unwrap()
}

fn large_event(payload: Bytes) -> proto::Event {
    proto::Event {
        topic: "large/g".into(),
        payload,
        priority: Priority::Low as i32,
        ..Default::default()
    }
}

#[test]
fn grpc_door_moves_large_events_over_tls_both_ways() {
    let pki = pki();
    let mut config = test_config();
    config.grpc.tls = tls_config(pki.dir.path(), ClientAuth::Require);
    let server = start_with(config);
    let client = client_config(&pki, true);
    let payload = payloads();
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut subscriber = connect_grpc(&server, client.clone()).await;
        let (response, mut call) = subscriber
            .send_request(request("Subscribe"), false)
            .unwrap();
        let subscribe = proto::SubscribeRequest {
            topic_pattern: "large/*".into(),
            min_priority: Priority::Batch as i32,
        };
        call.send_data(framed(&subscribe), true).unwrap();
        let mut events = response.await.unwrap().into_body();

        // The small client: unary Publishes of a few bytes, one at a time, all along.
        let mut small = connect_grpc(&server, client.clone()).await;
        let small_stop = stop.clone();
        let pinger = tokio::spawn(async move {
            let (mut count, mut worst) = (0usize, Duration::ZERO);
            while !small_stop.load(Ordering::Relaxed) {
                let start = Instant::now();
                let event = proto::Event {
                    topic: "small/x".into(),
                    payload: Bytes::from_static(b"tick"),
                    ..Default::default()
                };
                assert_eq!(publish(&mut small, event).await, 0);
                worst = worst.max(start.elapsed());
                count += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (count, worst)
        });

        // Several large Publishes in flight at once on one connection.
        let publisher = connect_grpc(&server, client.clone()).await;
        let calls: Vec<_> = (0..PIPELINED)
            .map(|i| {
                let mut sender = publisher.clone();
                let event = large_event(payload[i].clone());
                tokio::spawn(async move { publish(&mut sender, event).await })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap(), 0, "a large publish succeeds");
        }

        // Each arrives whole at the TLS subscriber (in whatever order the calls were
        // sequenced: they ran concurrently).
        let mut data = BytesMut::new();
        let mut seen = Vec::new();
        while seen.len() < PIPELINED {
            let chunk = tokio::time::timeout(Duration::from_secs(30), events.data())
                .await
                .expect("the large events within 30 s")
                .unwrap()
                .unwrap();
            events.flow_control().release_capacity(chunk.len()).unwrap();
            data.extend_from_slice(&chunk);
            while data.len() >= 5 {
                let len = u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize;
                if data.len() < 5 + len {
                    break;
                }
                data.advance(5);
                let event = proto::Event::decode(data.split_to(len)).unwrap();
                let i = (0..PIPELINED)
                    .find(|&i| event.payload == payload[i])
                    .expect("a payload that was sent, intact");
                assert_eq!(event.sequence, seen.len() as u64 + 1);
                seen.push(i);
            }
        }
        seen.sort_unstable();
        assert_eq!(seen, (0..PIPELINED).collect::<Vec<_>>());
        stop.store(true, Ordering::Relaxed);
        let (round_trips, worst) = pinger.await.unwrap();
        eprintln!("grpc: {round_trips} small round trips, slowest {worst:?}");
        assert!(round_trips > 0);
        assert!(worst < SMALL_ROUND_TRIP_MAX, "slowest round trip {worst:?}");
    });
}
