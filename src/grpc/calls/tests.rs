//! The call layer driven without a socket: a client's frames in ([`ClientPeer`]), the
//! session's frames out, time passed in by hand.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use prost::Message;

use super::{Liveness, Session, SessionSettings, TimerVerdict};
use crate::engine::{Limits, Shard};
use crate::grpc::h2::connection::Event as H2Event;
use crate::grpc::h2::frame::{self, Frame};
use crate::grpc::h2::test_peer::{ClientPeer, OwnedFields};
use crate::grpc::service;
use crate::proto;
use crate::testing::on_shard;

const SETTINGS: SessionSettings = SessionSettings {
    max_message_bytes: 4 * 1024 * 1024,
    idle_timeout: Duration::ZERO,
    liveness: None,
};

/// What the session wrote, header blocks decoded in order.
#[derive(Debug, PartialEq)]
enum Seen {
    Headers {
        stream: u32,
        fields: OwnedFields,
        end_stream: bool,
    },
    Data {
        stream: u32,
        data: Vec<u8>,
    },
    Other(Frame),
}

/// A session on a lone shard, and the client talking to it.
struct Harness {
    session: Rc<Session>,
    peer: ClientPeer,
    events: Vec<H2Event>,
}

impl Harness {
    fn new(settings: SessionSettings) -> Harness {
        let shard = Shard::new(0, 1, Limits::default(), 7);
        let mut harness = Harness {
            session: Session::new(shard, settings),
            peer: ClientPeer::new(),
            events: Vec::new(),
        };
        harness.written(); // the server's SETTINGS
        harness
    }

    /// The session receives everything the client sent so far.
    async fn deliver(&mut self, now: Instant) -> Result<(), ()> {
        let (session, peer) = (&self.session, &mut self.peer);
        session
            .receive(&mut peer.input, now, &mut self.events)
            .await
    }

    /// Everything the session wrote since the last look, but SETTINGS and their acks.
    fn written(&mut self) -> Vec<Seen> {
        let mut out = self.session.collect_output(BytesMut::new());
        let frames = ClientPeer::frames(&mut out);
        frames
            .into_iter()
            .filter(|f| !matches!(f, Frame::Settings { .. } | Frame::WindowUpdate { .. }))
            .map(|f| match f {
                Frame::Headers {
                    stream,
                    block,
                    end_stream,
                    ..
                } => Seen::Headers {
                    stream,
                    fields: self.peer.fields(&block),
                    end_stream,
                },
                Frame::Data { stream, data, .. } => Seen::Data {
                    stream,
                    data: data.to_vec(),
                },
                other => Seen::Other(other),
            })
            .collect()
    }

    /// Opens a gRPC call to `method` on `stream` with `extra` request headers.
    fn call(&mut self, stream: u32, method: &str, extra: &[(&[u8], &[u8])], end_stream: bool) {
        let path = format!("/{method}");
        let mut fields: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ];
        fields.extend_from_slice(extra);
        self.peer.headers(stream, &fields, end_stream);
    }

    /// Sends one request message on `stream`.
    fn message(&mut self, stream: u32, message: &impl Message, end_stream: bool) {
        let framed = service::framed(message);
        self.peer.data(stream, &framed, end_stream);
    }
}

/// The value of header `name` in `fields`.
fn header<'f>(fields: &'f OwnedFields, name: &str) -> Option<&'f [u8]> {
    let found = fields.iter().find(|(n, _)| n == name.as_bytes());
    found.map(|(_, v)| &v[..])
}

/// The gRPC status of the call on `stream` (its trailers, or a trailers-only response).
fn status(seen: &[Seen], stream: u32) -> Option<String> {
    seen.iter().find_map(|s| match s {
        Seen::Headers {
            stream: s,
            fields,
            end_stream: true,
        } if *s == stream => {
            header(fields, "grpc-status").map(|v| String::from_utf8_lossy(v).into())
        }
        _ => None,
    })
}

/// The response messages of `stream`, decoded as `M`.
fn messages<M: Message + Default>(seen: &[Seen], stream: u32) -> Vec<M> {
    let mut bytes = Vec::new();
    for s in seen {
        if let Seen::Data { stream: s, data } = s {
            if *s == stream {
                bytes.extend_from_slice(data);
            }
        }
    }
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    while rest.len() >= 5 {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        out.push(M::decode(&rest[5..5 + len]).unwrap());
        rest = &rest[5 + len..];
    }
    assert!(rest.is_empty(), "a partial message");
    out
}

/// A Subscribe request for `pattern`, every priority.
fn subscribe_to(pattern: &str) -> proto::SubscribeRequest {
    proto::SubscribeRequest {
        topic_pattern: pattern.into(),
        min_priority: 0,
    }
}

fn event(topic: &str, payload: &[u8]) -> proto::Event {
    proto::Event {
        topic: topic.into(),
        payload: bytes::Bytes::copy_from_slice(payload),
        priority: proto::Priority::Medium as i32,
        ..Default::default()
    }
}

#[test]
fn a_unary_publish_is_answered_with_headers_a_response_and_ok_trailers() {
    on_shard(|| async {
        let mut h = Harness::new(SETTINGS);
        h.call(1, "eventstream.EventService/Publish", &[], false);
        let request = proto::PublishRequest {
            event: Some(event("a/b", b"x")),
        };
        h.message(1, &request, true);
        h.deliver(Instant::now()).await.unwrap();
        let seen = h.written();
        let Seen::Headers { fields, .. } = &seen[0] else {
            panic!("{seen:?}")
        };
        assert_eq!(header(fields, ":status"), Some(&b"200"[..]));
        let responses = messages::<proto::PublishResponse>(&seen, 1);
        assert_eq!(responses.len(), 1);
        assert!(responses[0].success);
        assert_eq!(status(&seen, 1).as_deref(), Some("0"));
    });
}

#[test]
fn an_unknown_method_is_unimplemented_in_a_trailers_only_response() {
    on_shard(|| async {
        let mut h = Harness::new(SETTINGS);
        h.call(1, "eventstream.EventService/Nope", &[], true);
        h.deliver(Instant::now()).await.unwrap();
        let seen = h.written();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(status(&seen, 1).as_deref(), Some("12"));
    });
}

#[test]
fn a_request_that_is_not_grpc_gets_415_once_it_has_ended() {
    on_shard(|| async {
        let mut h = Harness::new(SETTINGS);
        let fields: &[(&[u8], &[u8])] = &[
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/x"),
            (b"content-type", b"text/plain"),
        ];
        h.peer.headers(1, fields, false);
        h.deliver(Instant::now()).await.unwrap();
        assert_eq!(h.written(), vec![], "nothing before the request ends");
        h.peer.data(1, b"body", true);
        h.deliver(Instant::now()).await.unwrap();
        let seen = h.written();
        let Seen::Headers { fields, .. } = &seen[0] else {
            panic!("{seen:?}")
        };
        assert_eq!(header(fields, ":status"), Some(&b"415"[..]));
    });
}

#[test]
fn a_subscription_receives_what_another_call_publishes_in_its_own_stream() {
    on_shard(|| async {
        let mut h = Harness::new(SETTINGS);
        h.call(1, "eventstream.EventService/Subscribe", &[], false);
        h.message(1, &subscribe_to("a/*"), true);
        h.deliver(Instant::now()).await.unwrap();
        h.written();
        for (stream, topic) in [(3, "a/b"), (5, "c/d")] {
            h.call(stream, "eventstream.EventService/Publish", &[], false);
            let request = proto::PublishRequest {
                event: Some(event(topic, b"x")),
            };
            h.message(stream, &request, true);
        }
        h.deliver(Instant::now()).await.unwrap();
        let seen = h.written();
        let events = messages::<proto::Event>(&seen, 1);
        assert_eq!(events.len(), 1, "only the matching topic: {events:?}");
        assert_eq!((events[0].topic.as_str(), events[0].sequence), ("a/b", 1));
        assert_eq!(status(&seen, 1), None, "the subscription goes on");
    });
}

#[test]
fn a_call_past_its_grpc_timeout_ends_with_deadline_exceeded_when_the_timer_says() {
    on_shard(|| async {
        let mut h = Harness::new(SETTINGS);
        let start = Instant::now();
        h.call(
            1,
            "eventstream.EventService/Subscribe",
            &[(b"grpc-timeout", b"100m")],
            false,
        );
        h.message(1, &subscribe_to("a/*"), true);
        h.deliver(start).await.unwrap();
        h.written();
        let TimerVerdict::Next(Some(at)) = h.session.on_timer(start) else {
            panic!("the deadline is the next time to look")
        };
        assert!(at > start && at <= start + Duration::from_secs(1));
        assert_eq!(h.written(), vec![]);
        let after = at + Duration::from_millis(1);
        assert_eq!(h.session.on_timer(after), TimerVerdict::Next(None));
        assert_eq!(status(&h.written(), 1).as_deref(), Some("4"));
    });
}

#[test]
fn an_idle_connection_gets_a_goaway_after_its_idle_timeout_and_not_before() {
    on_shard(|| async {
        let idle = Duration::from_secs(10);
        let settings = SessionSettings {
            idle_timeout: idle,
            ..SETTINGS
        };
        let mut h = Harness::new(settings);
        let start = Instant::now();
        h.deliver(start).await.unwrap();
        let next = h.session.on_timer(start + idle / 2);
        assert!(matches!(next, TimerVerdict::Next(Some(_))), "{next:?}");
        assert_eq!(h.written(), vec![]);
        let later = start + idle + Duration::from_millis(1);
        assert_eq!(h.session.on_timer(later), TimerVerdict::Idle);
        let seen = h.written();
        assert!(
            matches!(seen[..], [Seen::Other(Frame::GoAway { .. })]),
            "{seen:?}"
        );
    });
}

const PING_INTERVAL: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// A session whose client was silent for the PING interval, and the PING it was sent then:
/// the session, when it was sent, and its payload.
async fn pinged() -> (Harness, Instant, [u8; frame::PING_PAYLOAD_BYTES]) {
    let settings = SessionSettings {
        liveness: Some(Liveness {
            interval: PING_INTERVAL,
            timeout: PING_TIMEOUT,
        }),
        ..SETTINGS
    };
    let mut h = Harness::new(settings);
    let start = Instant::now();
    h.deliver(start).await.unwrap();
    let ping_at = start + PING_INTERVAL;
    assert_eq!(
        h.session.on_timer(ping_at),
        TimerVerdict::Next(Some(ping_at + PING_TIMEOUT))
    );
    let seen = h.written();
    let [Seen::Other(Frame::Ping { ack: false, data })] = &seen[..] else {
        panic!("{seen:?}")
    };
    let data = *data;
    (h, ping_at, data)
}

#[test]
fn a_client_silent_after_a_ping_is_cut() {
    on_shard(|| async {
        let (mut h, ping_at, _) = pinged().await;
        let timeout = PING_TIMEOUT;
        assert_eq!(h.session.on_timer(ping_at + timeout), TimerVerdict::Dead);
        let seen = h.written();
        let [Seen::Other(Frame::GoAway { debug, .. })] = &seen[..] else {
            panic!("{seen:?}")
        };
        assert!(debug.starts_with(b"no answer to PING"));
    });
}

#[test]
fn a_client_that_answers_the_ping_is_pinged_again_an_interval_later() {
    on_shard(|| async {
        let (mut h, ping_at, data) = pinged().await;
        let interval = PING_INTERVAL;
        frame::put_ping(&mut h.peer.input, true, data);
        let answered = ping_at + Duration::from_secs(1);
        h.deliver(answered).await.unwrap();
        assert_eq!(
            h.session.on_timer(answered),
            TimerVerdict::Next(Some(answered + interval))
        );
    });
}

#[test]
fn health_check_answers_healthy_on_a_server_that_is_not_stopping() {
    on_shard(|| async {
        let mut h = Harness::new(SETTINGS);
        h.call(1, "eventstream.EventService/HealthCheck", &[], false);
        h.message(1, &proto::Empty {}, true);
        h.deliver(Instant::now()).await.unwrap();
        let seen = h.written();
        let responses = messages::<proto::HealthResponse>(&seen, 1);
        assert!(responses[0].healthy);
        assert_eq!(responses[0].version, env!("CARGO_PKG_VERSION"));
        assert_eq!(status(&seen, 1).as_deref(), Some("0"));
    });
}

#[test]
fn a_health_watch_ends_with_not_serving_at_shutdown() {
    use crate::proto::grpc::health::v1::{
        health_check_response::ServingStatus, HealthCheckRequest, HealthCheckResponse,
    };
    on_shard(|| async {
        let mut h = Harness::new(SETTINGS);
        h.call(1, "grpc.health.v1.Health/Watch", &[], false);
        let request = HealthCheckRequest {
            service: String::new(),
        };
        h.message(1, &request, true);
        h.deliver(Instant::now()).await.unwrap();
        h.session.shut_down();
        let seen = h.written();
        let statuses: Vec<i32> = messages::<HealthCheckResponse>(&seen, 1)
            .iter()
            .map(|r| r.status)
            .collect();
        let serving = ServingStatus::Serving as i32;
        assert_eq!(statuses, vec![serving, ServingStatus::NotServing as i32]);
        assert_eq!(status(&seen, 1).as_deref(), Some("14"), "UNAVAILABLE");
        assert!(seen
            .iter()
            .any(|s| matches!(s, Seen::Other(Frame::GoAway { .. }))));
    });
}

#[test]
fn a_half_closed_stream_call_ends_with_its_published_count_once_sequenced() {
    on_shard(|| async {
        let mut h = Harness::new(SETTINGS);
        h.call(1, "eventstream.EventService/Stream", &[], false);
        for payload in [b"1", b"2", b"3"] {
            h.message(1, &event("a/b", payload), false);
        }
        h.peer.data(1, b"", true);
        h.deliver(Instant::now()).await.unwrap();
        // The call ends from a task that waits for every shard's answer.
        for _ in 0..10 {
            futures_lite::future::yield_now().await;
        }
        let seen = h.written();
        let trailers = seen.iter().find_map(|s| match s {
            Seen::Headers {
                fields,
                end_stream: true,
                ..
            } => Some(fields),
            _ => None,
        });
        let trailers = trailers.expect("the call ended");
        assert_eq!(header(trailers, "grpc-status"), Some(&b"0"[..]));
        assert_eq!(header(trailers, "x-published-count"), Some(&b"3"[..]));
    });
}

#[test]
fn release_ends_every_subscription_in_the_engine() {
    on_shard(|| async {
        let mut h = Harness::new(SETTINGS);
        h.call(1, "eventstream.EventService/Subscribe", &[], false);
        h.message(1, &subscribe_to("a/*"), true);
        h.deliver(Instant::now()).await.unwrap();
        assert_eq!(h.session.shard.stats().subscriptions, 1);
        h.session.release();
        assert_eq!(h.session.shard.stats().subscriptions, 0);
        assert!(h.session.is_closed());
    });
}
