//! The gRPC rows, spoken with the `h2` crate: an HTTP/2 implementation independent of the
//! server's own, on a single-threaded tokio runtime (the load generator's one CPU).
//!
//! - `grpc-unary`: Publish RPCs, `--inflight` on each of `--conns` connections; latency per RPC.
//! - `grpc-batch`: PublishBatch of `--batch` events, `--inflight` per connection; latency per
//!   batch, events/s counts events.
//! - `grpc-stream`: one Stream call that subscribes to its own topic: events go out on the
//!   request side and come back on the response side; latency from the send time carried in
//!   the payload, every event checked for order and sequence.
//!
//! Every response is checked (HTTP 200, grpc-status 0, `success: true`); any failure ends the
//! row with an error.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use hdrhistogram::Histogram;
use prost::Message;

use eventstream::grpc::framing::{put_message, PREFIX_LEN};
use eventstream::proto;

/// What a gRPC row needs to know.
pub struct Load {
    pub addr: String,
    pub count: u64,
    pub size: usize,
    pub conns: usize,
    pub inflight: usize,
    pub window: u64,
}

/// What a row measured: operations (RPCs or events) and per-operation latency in ns.
pub struct Measured {
    pub events: u64,
    pub seconds: f64,
    pub latency: Histogram<u64>,
}

/// The largest DATA frame payload the client sends: HTTP/2's default SETTINGS_MAX_FRAME_SIZE,
/// which every server accepts.
pub(crate) const MAX_FRAME_PAYLOAD: usize = 16_384;

/// Hands the events gathered in `pending` to h2 as one DATA frame's worth.
pub(crate) fn send_chunk(
    send: &mut h2::SendStream<Bytes>,
    pending: &mut BytesMut,
) -> Result<(), String> {
    let chunk = pending.split().freeze();
    send.reserve_capacity(chunk.len());
    send.send_data(chunk, false).map_err(|e| e.to_string())
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

pub(crate) async fn connect(addr: &str) -> Result<h2::client::SendRequest<Bytes>, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(16 << 20)
        .handshake(tcp)
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::task::spawn_local(async move {
        let _ = connection.await;
    });
    Ok(client)
}

pub(crate) fn request(addr: &str, method: &str, extra: &[(&str, &str)]) -> http::Request<()> {
    let mut builder = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/eventstream.EventService/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in extra {
        builder = builder.header(*name, *value);
    }
    builder.body(()).expect("a valid request")
}

/// The message framed for gRPC (uncompressed), with the project's own framing helper: a
/// framing mistake there would make the server refuse every request, so the rows would fail.
pub(crate) fn framed(message: &impl Message) -> Bytes {
    let mut out = BytesMut::with_capacity(message.encoded_len() + PREFIX_LEN);
    put_message(&mut out, |o| message.encode(o).expect("BytesMut grows"));
    out.freeze()
}

pub(crate) fn event(topic: &str, payload: Vec<u8>) -> proto::Event {
    proto::Event {
        topic: topic.to_owned(),
        payload: payload.into(),
        priority: proto::Priority::Medium as i32,
        ..Default::default()
    }
}

/// Appends `event(topic, payload)` framed for gRPC, encoded field by field: the Stream row
/// sends a million of them, and building an `Event` for each (a `String`, a payload copy)
/// cost the client more than the server spends on the event.
pub(crate) fn put_event(out: &mut BytesMut, topic: &String, payload: &Vec<u8>) {
    use prost::encoding::{bytes, int32, string};
    put_message(out, |o| {
        string::encode(2, topic, o);
        bytes::encode(3, payload, o);
        int32::encode(4, &(proto::Priority::Medium as i32), o);
    });
}

/// What the Stream row checks of an event that comes back, its payload and sequence, read
/// straight from the message: prost's generic decoding of every field (skipping the others
/// through its context and error machinery) was a third of the client's instructions per
/// event. Anything malformed is an error.
fn echo(mut buf: &[u8]) -> Result<(&[u8], u64), String> {
    use prost::encoding::decode_varint;
    let bad = |what: &str| format!("malformed event from the server: {what}");
    let (mut payload, mut sequence): (&[u8], u64) = (&[], 0);
    while !buf.is_empty() {
        let key = decode_varint(&mut buf).map_err(|_| bad("field key"))?;
        let tag = key >> 3;
        match key & 7 {
            0 => {
                let value = decode_varint(&mut buf).map_err(|_| bad("varint"))?;
                if tag == 7 {
                    sequence = value;
                }
            }
            2 => {
                let len = decode_varint(&mut buf).map_err(|_| bad("length"))?;
                let len = usize::try_from(len).map_err(|_| bad("length"))?;
                if len > buf.len() {
                    return Err(bad("field longer than the message"));
                }
                let (field, rest) = buf.split_at(len);
                if tag == 3 {
                    payload = field;
                }
                buf = rest;
            }
            1 | 5 => {
                let width = if key & 7 == 1 { 8 } else { 4 };
                buf = buf
                    .get(width..)
                    .ok_or_else(|| bad("truncated fixed field"))?;
            }
            _ => return Err(bad("wire type")),
        }
    }
    Ok((payload, sequence))
}

/// One unary call: the response message, after checking status and trailers. `head` is
/// built once per row and copied per call (building a request from text costs the client
/// more than the server spends on the call).
pub(crate) async fn unary(
    client: &mut h2::client::SendRequest<Bytes>,
    head: &http::request::Parts,
    body: Bytes,
) -> Result<Bytes, String> {
    let ready = client.clone().ready().await.map_err(|e| e.to_string())?;
    *client = ready;
    let mut request = http::Request::new(());
    *request.method_mut() = head.method.clone();
    *request.uri_mut() = head.uri.clone();
    *request.headers_mut() = head.headers.clone();
    let (response, mut send) = client
        .send_request(request, false)
        .map_err(|e| e.to_string())?;
    send.send_data(body, true).map_err(|e| e.to_string())?;
    let response = response.await.map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!("HTTP status {}", response.status()));
    }
    if response.headers().contains_key("grpc-status") {
        // Trailers-only: the call failed before any message.
        check_status(Some(response.headers()))?;
    }
    let mut body = response.into_body();
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.map_err(|e| e.to_string())?;
    check_status(trailers.as_ref())?;
    if data.len() < 5 {
        return Err("no response message".into());
    }
    data.advance(5);
    Ok(data.freeze())
}

pub(crate) fn check_status(trailers: Option<&http::HeaderMap>) -> Result<(), String> {
    let status = trailers
        .and_then(|t| t.get("grpc-status"))
        .map(|v| v.to_str().unwrap_or("?").to_owned())
        .unwrap_or_else(|| "missing".into());
    if status != "0" {
        let message = trailers
            .and_then(|t| t.get("grpc-message"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        return Err(format!("grpc-status {status}: {message}"));
    }
    Ok(())
}

/// Publish (batch = None) or PublishBatch RPCs until `load.count` events went out, with
/// `inflight` calls at a time on each connection.
pub fn publish_rows(load: &Load, topic: &str, batch: Option<usize>) -> Result<Measured, String> {
    let per_call = batch.unwrap_or(1) as u64;
    let calls = load.count.div_ceil(per_call);
    let body = match batch {
        None => framed(&proto::PublishRequest {
            event: Some(event(topic, vec![7; load.size])),
        }),
        Some(n) => framed(&proto::PublishBatchRequest {
            events: (0..n).map(|_| event(topic, vec![7; load.size])).collect(),
        }),
    };
    let method = if batch.is_some() {
        "PublishBatch"
    } else {
        "Publish"
    };
    let rt = runtime()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let next = Rc::new(Cell::new(0u64));
        let latency = Rc::new(RefCell::new(crate::delivery::histogram()));
        let mut workers = Vec::new();
        for _ in 0..load.conns {
            let client = connect(&load.addr).await?;
            for _ in 0..load.inflight {
                let (mut client, next, latency) = (client.clone(), next.clone(), latency.clone());
                let head = request(&load.addr, method, &[]).into_parts().0;
                let body = body.clone();
                workers.push(tokio::task::spawn_local(async move {
                    loop {
                        let n = next.get();
                        if n >= calls {
                            return Ok::<(), String>(());
                        }
                        next.set(n + 1);
                        let start = Instant::now();
                        let message = unary(&mut client, &head, body.clone()).await?;
                        let ns = start.elapsed().as_nanos() as u64;
                        let response = proto::PublishResponse::decode(message)
                            .map_err(|e| format!("PublishResponse: {e}"))?;
                        if !response.success {
                            return Err(format!("publish refused: {}", response.message));
                        }
                        latency
                            .borrow_mut()
                            .record(ns.max(1))
                            .map_err(|e| e.to_string())?;
                    }
                }));
            }
        }
        let start = Instant::now();
        for worker in workers {
            worker.await.map_err(|e| e.to_string())??;
        }
        let seconds = start.elapsed().as_secs_f64();
        let latency = latency.borrow().clone();
        Ok(Measured {
            events: calls * per_call,
            seconds,
            latency,
        })
    })
}

/// One Stream call subscribed to its own topic: every event published on it comes back on it.
pub fn stream_row(load: &Load, topic: &str) -> Result<Measured, String> {
    let count = load.count;
    let rt = runtime()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let clock = Instant::now();
        let mut client = connect(&load.addr).await?;
        client = client.ready().await.map_err(|e| e.to_string())?;
        let request = request(&load.addr, "Stream", &[("x-topic-pattern", topic)]);
        let (response, mut send) = client
            .send_request(request, false)
            .map_err(|e| e.to_string())?;
        let received = Rc::new(Cell::new(0u64));
        let progress = received.clone();
        let receiver = tokio::task::spawn_local(async move {
            let response = response.await.map_err(|e| e.to_string())?;
            if response.status() != 200 {
                return Err(format!("HTTP status {}", response.status()));
            }
            let mut body = response.into_body();
            let mut latency = crate::delivery::histogram();
            let mut buf = BytesMut::new();
            let mut expected = 1u64;
            let mut last = 0u64;
            while expected <= count {
                let Some(chunk) = body.data().await else {
                    let trailers = body.trailers().await.map_err(|e| e.to_string())?;
                    check_status(trailers.as_ref())?;
                    return Err(format!("stream ended after {} events", expected - 1));
                };
                let chunk = chunk.map_err(|e| e.to_string())?;
                let _ = body.flow_control().release_capacity(chunk.len());
                buf.extend_from_slice(&chunk);
                // The chunk's events all arrived now: one clock reading for them (a reading
                // per event was a fifth of this client's time on this VM's clock).
                let now = clock.elapsed().as_nanos() as u64;
                // Messages are read where they lie; what they took is dropped at the end.
                let mut at = 0;
                while buf.len() - at >= PREFIX_LEN {
                    let prefix = &buf[at + 1..at + PREFIX_LEN];
                    let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
                    if buf.len() - at < PREFIX_LEN + len {
                        break;
                    }
                    let message = &buf[at + PREFIX_LEN..at + PREFIX_LEN + len];
                    at += PREFIX_LEN + len;
                    let (payload, sequence) = echo(message)?;
                    // A server without sequence numbers (a peer) sends 0: order by index.
                    let sequence = if sequence == 0 { expected } else { sequence };
                    let sent = crate::delivery::check(expected, sequence, payload)?;
                    latency
                        .record(now.saturating_sub(sent).max(1))
                        .map_err(|e| e.to_string())?;
                    last = now;
                    expected += 1;
                    progress.set(expected - 1);
                }
                buf.advance(at);
            }
            Ok((latency, last))
        });
        let mut payload = vec![0u8; load.size];
        let topic = topic.to_owned();
        // Every event of the row encodes to the same length (the stamp overwrites payload
        // bytes in place).
        let event_len = {
            let mut probe = BytesMut::new();
            put_event(&mut probe, &topic, &payload);
            probe.len()
        };
        let first = clock.elapsed().as_nanos() as u64;
        let mut pending = BytesMut::new();
        let mut chunk_began = first;
        for i in 0..count {
            // Hand h2 whole frames' worth at a time, as a client library would coalesce
            // writes: a chunk ends before the event that would take it over one frame's
            // payload. (A chunk over one frame went out as two DATA frames in two writes,
            // the second a few bytes long. An event bigger than a frame goes alone.)
            if !pending.is_empty() && pending.len() + event_len > MAX_FRAME_PAYLOAD {
                send_chunk(&mut send, &mut pending)?;
                tokio::task::yield_now().await;
            }
            // Stay at most `window` events ahead of what came back (no shedding measured).
            while i.saturating_sub(received.get()) > load.window {
                if receiver.is_finished() {
                    break;
                }
                // Everything sent has come back: the rest is still here (a window smaller
                // than a chunk).
                let unsent = (pending.len() / event_len) as u64;
                if unsent > 0 && i.saturating_sub(received.get()) <= unsent {
                    send_chunk(&mut send, &mut pending)?;
                }
                tokio::task::yield_now().await;
            }
            // The events of a chunk go out together, when it is handed over: each is stamped
            // with the time its chunk began, which is at or before its send time (latency is
            // never under-counted), with one clock reading per chunk.
            if pending.is_empty() {
                chunk_began = clock.elapsed().as_nanos() as u64;
            }
            crate::delivery::stamp(&mut payload, chunk_began, i);
            put_event(&mut pending, &topic, &payload);
            if i + 1 == count {
                send_chunk(&mut send, &mut pending)?;
            }
        }
        let (latency, last) = receiver.await.map_err(|e| e.to_string())??;
        send.send_data(Bytes::new(), true)
            .map_err(|e| e.to_string())?;
        Ok(Measured {
            events: count,
            seconds: (last - first) as f64 / 1e9,
            latency,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_event_writes_what_prost_writes_and_echo_reads_it_back() {
        let (topic, payload) = ("bench/t".to_owned(), vec![1, 2, 3, 0, 255]);
        let mut ours = BytesMut::new();
        put_event(&mut ours, &topic, &payload);
        let mut message = event(&topic, payload.clone());
        assert_eq!(&ours[..], &framed(&message)[..]);
        message.sequence = 9;
        message.id = "some-id".into();
        message.timestamp_ns = -5;
        message.metadata.insert("k".into(), "v".into());
        let encoded = message.encode_to_vec();
        assert_eq!(echo(&encoded), Ok((&payload[..], 9)));
        for cut in 1..encoded.len() {
            // Every cut that leaves a field unfinished is an error, never a wrong answer.
            if let Ok((p, n)) = echo(&encoded[..cut]) {
                assert!(n == 0 || (p == &payload[..] && n == 9), "cut at {cut}");
            }
        }
        assert!(echo(&[0x3b]).is_err(), "wire type 3 (a group) is refused");
    }
}
