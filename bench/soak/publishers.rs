//! The soak's publishers, one per soak topic, each on its own connection (so each topic's
//! events are sequenced in the order they were sent): native PUBLISH with and without an
//! acknowledgement and PUBLISH_BATCH; gRPC Publish, PublishBatch and a Stream call. Each runs
//! at its share of the target rate, held back by [`Flow`] when a checked subscriber lags, and
//! reports how many events it had sequenced when the run told it to stop.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use prost::Message;

use super::ledger::{self, Flow, Ledger};
use super::pace::{Pace, IDLE};
use super::subscribers::{self, Report};
use eventstream::engine::{Priority, RawEvent};
use eventstream::native::client::{Client, ClientError};
use eventstream::proto;

/// Events per batch (native PUBLISH_BATCH and gRPC PublishBatch), at most.
const BATCH_EVENTS: u64 = 50;
/// Pipelined publishes written together, at most.
const PIPELINE_EVENTS: u64 = 256;
/// How long a Stream publisher waits for its last events to come back before giving up.
const ECHO_TIMEOUT: Duration = Duration::from_secs(60);

/// How a native publisher sends.
#[derive(Clone, Copy, Debug)]
pub enum NativeKind {
    /// PUBLISH with FLAG_ACK, one at a time.
    Acked,
    /// PUBLISH without acknowledgement, pipelined; a PING at the end is the barrier.
    Pipelined,
    /// PUBLISH_BATCH with FLAG_ACK.
    Batch,
}

/// A publisher's final count (events sequenced) for soak topic `t`, or why it failed.
pub type Published = (usize, Result<u64, String>);

fn raw(topic: &Bytes, index: u64, priority: Priority) -> RawEvent {
    RawEvent {
        topic: topic.clone(),
        payload: ledger::payload(index).into(),
        priority: priority as u8,
        ..RawEvent::default()
    }
}

/// Starts a native publisher of soak topic `t` at `rate` events/s.
pub fn native(
    kind: NativeKind,
    server: String,
    topic: String,
    t: usize,
    rate: f64,
    flow: Arc<Flow>,
    done: Sender<Published>,
) {
    thread::spawn(move || {
        let result = publish_native(kind, &server, &topic, t, rate, &flow)
            .map_err(|e| format!("native {kind:?} publisher of {topic}: {e}"));
        if result.is_err() {
            flow.fail();
        }
        let _ = done.send((t, result));
    });
}

fn publish_native(
    kind: NativeKind,
    server: &str,
    topic: &str,
    t: usize,
    rate: f64,
    flow: &Flow,
) -> Result<u64, String> {
    let e = |e: ClientError| e.to_string();
    let mut client = Client::connect(server).map_err(e)?;
    client
        .set_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let topic_bytes = Bytes::copy_from_slice(topic.as_bytes());
    let mut pace = Pace::new(rate);
    let mut sent = 0u64;
    let most = match kind {
        NativeKind::Acked => 1,
        NativeKind::Pipelined => PIPELINE_EVENTS,
        NativeKind::Batch => BATCH_EVENTS,
    };
    while !flow.stopping() {
        let n = pace.available(most);
        if n == 0 || !flow.room(t, sent, n) {
            client.flush().map_err(e)?;
            thread::sleep(IDLE);
            continue;
        }
        pace.spend(n);
        match kind {
            NativeKind::Acked => {
                let ack = client
                    .publish(&raw(&topic_bytes, sent, Priority::Medium))
                    .map_err(e)?;
                if ack.sequence != sent + 1 {
                    return Err(format!(
                        "event {sent} acknowledged as sequence {}",
                        ack.sequence
                    ));
                }
            }
            NativeKind::Pipelined => {
                for i in sent..sent + n {
                    client
                        .publish_nowait_simple(topic, Priority::Medium, &ledger::payload(i))
                        .map_err(e)?;
                }
                client.flush().map_err(e)?;
            }
            NativeKind::Batch => {
                let events: Vec<RawEvent> = (sent..sent + n)
                    .map(|i| raw(&topic_bytes, i, Priority::Medium))
                    .collect();
                let ack = client.publish_batch(&events).map_err(e)?;
                if u64::from(ack.count) != n || ack.sequence != sent + n {
                    return Err(format!(
                        "a batch of events {sent}..{} acknowledged as {} ending at sequence {}",
                        sent + n,
                        ack.count,
                        ack.sequence
                    ));
                }
            }
        }
        sent += n;
    }
    // Every publish before the PONG is sequenced, and any refusal was reported before it.
    client.ping().map_err(e)?;
    client.set_nonblocking(true).map_err(|e| e.to_string())?;
    match client.next_event() {
        Err(ClientError::Timeout(_)) => Ok(sent),
        Err(other) => Err(format!("after {sent} events: {other}")),
        Ok(d) => Err(format!(
            "an event for subscription {} it never made",
            d.sub_id
        )),
    }
}

/// Publishes one closing marker (HIGH priority, so a full queue sheds a MEDIUM event for it,
/// never the marker) to each soak topic, acknowledged.
pub fn markers(server: &str, topics: &[String], published: &[u64]) -> Result<(), String> {
    let mut client = Client::connect(server).map_err(|e| e.to_string())?;
    client
        .set_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    for (topic, &count) in topics.iter().zip(published) {
        let topic_bytes = Bytes::copy_from_slice(topic.as_bytes());
        let ack = client
            .publish(&raw(&topic_bytes, ledger::MARKER_INDEX, Priority::High))
            .map_err(|e| format!("marker for {topic}: {e}"))?;
        if ack.sequence != count + 1 {
            return Err(format!(
                "{topic}: the marker was sequenced at {}, after {count} events published",
                ack.sequence
            ));
        }
    }
    Ok(())
}

/// The gRPC publishers, on one connection each and one thread: Publish to soak topic
/// `topics[0]`, PublishBatch to `topics[1]`, and a Stream call subscribed to `topics[2]`,
/// which publishes on it and checks what comes back (its report is the thread's result).
pub struct GrpcPlan {
    pub addr: String,
    /// (soak topic index, topic, rate) for Publish, PublishBatch and Stream.
    pub unary: (usize, String, f64),
    pub batch: (usize, String, f64),
    pub stream: (usize, String, f64),
    /// The Stream call's ledger (its own topic).
    pub stream_ledger: Ledger,
}

pub fn grpc(
    plan: GrpcPlan,
    flow: Arc<Flow>,
    done: Sender<Published>,
) -> thread::JoinHandle<Result<Report, String>> {
    thread::spawn(move || {
        let rt = crate::grpc::runtime()?;
        let local = tokio::task::LocalSet::new();
        let result = local.block_on(&rt, async {
            let GrpcPlan {
                addr,
                unary,
                batch,
                stream,
                stream_ledger,
            } = plan;
            for (what, (t, topic, rate), per_call) in [
                ("Publish", unary, None),
                ("PublishBatch", batch, Some(BATCH_EVENTS)),
            ] {
                let (addr, flow, done) = (addr.clone(), flow.clone(), done.clone());
                tokio::task::spawn_local(async move {
                    let result = publish_unary(&addr, &topic, t, rate, per_call, &flow)
                        .await
                        .map_err(|e| format!("gRPC {what} publisher of {topic}: {e}"));
                    if result.is_err() {
                        flow.fail();
                    }
                    let _ = done.send((t, result));
                });
            }
            stream_call(&addr, stream, stream_ledger, &flow, &done).await
        });
        if result.is_err() {
            flow.fail();
        }
        result
    })
}

/// Publish (`per_call` None) or PublishBatch calls, one at a time so that the topic's events
/// are sequenced in the order they were sent.
async fn publish_unary(
    addr: &str,
    topic: &str,
    t: usize,
    rate: f64,
    per_call: Option<u64>,
    flow: &Flow,
) -> Result<u64, String> {
    let mut client = crate::grpc::connect(addr).await?;
    let method = if per_call.is_some() {
        "PublishBatch"
    } else {
        "Publish"
    };
    let head = crate::grpc::request(addr, method, &[]).into_parts().0;
    let mut pace = Pace::new(rate);
    let mut sent = 0u64;
    while !flow.stopping() {
        let n = pace.available(per_call.unwrap_or(1));
        if n == 0 || !flow.room(t, sent, n) {
            tokio::time::sleep(IDLE).await;
            continue;
        }
        pace.spend(n);
        let event = |i| crate::grpc::event(topic, ledger::payload(i));
        let body = match per_call {
            None => crate::grpc::framed(&proto::PublishRequest {
                event: Some(event(sent)),
            }),
            Some(_) => crate::grpc::framed(&proto::PublishBatchRequest {
                events: (sent..sent + n).map(event).collect(),
            }),
        };
        let message = crate::grpc::unary(&mut client, &head, body).await?;
        let response =
            proto::PublishResponse::decode(message).map_err(|e| format!("PublishResponse: {e}"))?;
        if !response.success {
            return Err(format!("refused: {}", response.message));
        }
        sent += n;
    }
    Ok(sent)
}

/// A Stream call subscribed to its own topic: publishes on the request side at its rate,
/// checks every event that comes back, and counts as published only what came back.
async fn stream_call(
    addr: &str,
    (t, topic, rate): (usize, String, f64),
    mut ledger: Ledger,
    flow: &Arc<Flow>,
    done: &Sender<Published>,
) -> Result<Report, String> {
    let mut client = crate::grpc::connect(addr).await?;
    client = client.ready().await.map_err(|e| e.to_string())?;
    let request = crate::grpc::request(addr, "Stream", &[("x-topic-pattern", &topic)]);
    let (response, mut send) = client
        .send_request(request, false)
        .map_err(|e| e.to_string())?;
    // The server answers the headers once the call's subscription is registered.
    let response = response.await.map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!("Stream: HTTP status {}", response.status()));
    }
    let mut body = response.into_body();
    let progress = ledger.progress();
    let sender = {
        let (flow, topic) = (flow.clone(), topic.clone());
        tokio::task::spawn_local(async move {
            let mut pace = Pace::new(rate);
            let mut sent = 0u64;
            let mut pending = BytesMut::new();
            while !flow.stopping() {
                let n = pace.available(PIPELINE_EVENTS);
                if n == 0 || !flow.room(t, sent, n) {
                    tokio::time::sleep(IDLE).await;
                    continue;
                }
                pace.spend(n);
                for i in sent..sent + n {
                    crate::grpc::put_event(&mut pending, &topic, &ledger::payload(i));
                    if pending.len() >= crate::grpc::MAX_FRAME_PAYLOAD {
                        crate::grpc::send_chunk(&mut send, &mut pending)?;
                    }
                }
                if !pending.is_empty() {
                    crate::grpc::send_chunk(&mut send, &mut pending)?;
                }
                sent += n;
                tokio::task::yield_now().await;
            }
            // What was sent is published once it came back.
            let began = Instant::now();
            while progress[0].load(Ordering::Acquire) < sent {
                if flow.aborted() || began.elapsed() > ECHO_TIMEOUT {
                    return Err(format!(
                        "{} of {sent} events came back",
                        progress[0].load(Ordering::Acquire)
                    ));
                }
                tokio::time::sleep(IDLE).await;
            }
            Ok::<_, String>((sent, send))
        })
    };
    let name = ledger.name.clone();
    let reading = {
        let flow = flow.clone();
        tokio::task::spawn_local(async move {
            subscribers::read_events(&mut body, &mut ledger, &flow)
                .await
                .map(|()| (ledger, body))
        })
    };
    let sent = sender.await.map_err(|e| e.to_string())?;
    let mut send = match sent {
        Ok((sent, send)) => {
            let _ = done.send((t, Ok(sent)));
            send
        }
        Err(e) => {
            let e = format!("gRPC Stream publisher of {topic}: {e}");
            let _ = done.send((t, Err(e.clone())));
            return Err(e);
        }
    };
    let (ledger, _body) = reading
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{name}: {e}"))?;
    send.send_data(Bytes::new(), true)
        .map_err(|e| e.to_string())?;
    Ok(Report {
        name,
        door: "grpc",
        pattern: topic,
        received: ledger.received(),
        gaps: ledger.gaps(),
        server_delivered: None,
        server_shed: None,
        ledger,
    })
}
