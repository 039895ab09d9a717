//! One gRPC client connection on its shard: a reader that feeds socket bytes to the HTTP/2
//! state machine and turns its events into calls on the engine, and a writer that turns
//! everything one wake-up produced (responses, subscription events) into one socket write.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_lite::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};
use hashbrown::HashMap;

use super::framing::{self, MessageReader, RequestHead};
use super::h2::connection::{Connection as H2, Event as H2Event, Limits as H2Limits};
use super::h2::frame::{self, Reason};
use super::h2::hpack::HeaderList;
use super::service::{self, Method};
use super::status::{percent_encode, Code, GrpcError};
use crate::accept::{self, Admission, ConnectionLimit, Connections, Half, SocketOptions};
use crate::busy_poll::BusyPoll;
use crate::engine::event::{unix_now_ns, EventRef, EventView};
use crate::engine::notify::Notify;
use crate::engine::{
    AckOutcome, AckRequest, AckSink, Consumer, Pattern, Priority, PublishError, RecentTopic, Reply,
    Shard, SinkId, SubState, Subscriber, GRPC_DOOR,
};
use crate::proto;
use crate::tls::Transport;

/// Response bytes a subscription stream may have queued in HTTP/2 (waiting for the client's
/// window) before its events stay in its subscriber queue, where shedding applies.
const MAX_QUEUED_PER_STREAM: usize = 256 * 1024;
const READ_SIZE: usize = 64 * 1024;
/// The first reads' size.
const MIN_READ: usize = 4 * 1024;
/// Response bytes waiting for the socket after which the reader stops reading: a client that
/// sends requests but never reads the answers slows itself down, nobody else.
const MAX_UNSENT: usize = 4 << 20;
/// Answers waiting from one read, in bytes, that go out before the rest of the read is served
/// (about ten unary responses). Sending them early lets a client that keeps many calls in
/// flight on one connection work on them while the server serves the rest, instead of the
/// two taking turns. It costs at most one more `send` per read.
const FIRST_SEND: usize = 400;

/// How the door checks that a client still answers: an HTTP/2 PING after `interval` without
/// a byte from it, and a cut if it then stays silent for `timeout`.
#[derive(Clone, Copy, Debug)]
pub struct Liveness {
    pub interval: Duration,
    pub timeout: Duration,
}

/// The payload of the door's PINGs: any answer counts, so it only has to be recognisable in a
/// capture.
const PING_DATA: [u8; 8] = *b"liveness";

/// The GOAWAY debug data of a connection cut for not answering a PING.
const PING_TIMEOUT_DEBUG: &[u8] = b"no answer to PING within grpc.ping_timeout_ms";

/// The gRPC door of one shard.
pub struct Door {
    shard: Rc<Shard>,
    max_message: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
    idle_timeout: Duration,
    /// None: no PINGs (`grpc.ping_interval_ms` 0).
    liveness: Option<Liveness>,
    connections: Rc<Connections>,
    /// Low-latency mode's socket polling, shared with the shard's other TCP door.
    busy_poll: Option<Rc<BusyPoll>>,
    admission: Rc<Admission>,
}

/// Everything the gRPC door of a shard is made with, besides the shard.
pub struct DoorSettings {
    /// Messages over this many bytes are RESOURCE_EXHAUSTED.
    pub max_message: usize,
    /// With it, every connection is TLS (ALPN h2).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub idle_timeout: Duration,
    pub liveness: Option<Liveness>,
    /// Low-latency mode: connections poll their sockets.
    pub busy_poll: Option<Rc<BusyPoll>>,
    /// The door's connection limit, shared by every shard's door: past it, a connection gets
    /// the server's SETTINGS and a GOAWAY REFUSED_STREAM.
    pub limit: Arc<ConnectionLimit>,
    pub sockets: SocketOptions,
}

impl Door {
    /// The gRPC door of `shard`.
    pub fn new(shard: Rc<Shard>, settings: DoorSettings) -> Rc<Door> {
        let admission = Admission::new(
            GRPC_DOOR,
            settings.limit,
            refusal(),
            settings.tls.clone(),
            settings.sockets,
        );
        Rc::new(Door {
            shard,
            max_message: settings.max_message,
            tls: settings.tls,
            idle_timeout: settings.idle_timeout,
            liveness: settings.liveness,
            connections: Rc::default(),
            busy_poll: settings.busy_poll,
            admission,
        })
    }

    /// Accepts clients until shutdown, each served by its own task on this shard.
    pub async fn accept_loop(self: Rc<Self>, listener: TcpListener) {
        let (shard, connections) = (self.shard.clone(), self.connections.clone());
        let admission = self.admission.clone();
        crate::accept::accept_loop(shard, listener, connections, admission, {
            move |stream| {
                let door = self.clone();
                async move { GrpcConnection::serve(&door, stream).await }
            }
        })
        .await;
    }

    /// Completes once every connection of this door has closed.
    pub async fn drained(&self) {
        self.connections.drained().await;
    }
}

/// What a connection over the door's limit reads before the door closes it: the server's
/// connection preface (an empty SETTINGS, RFC 9113 §3.4) and a GOAWAY REFUSED_STREAM for
/// stream 0, which tells the client that nothing was processed and it may retry elsewhere.
fn refusal() -> Bytes {
    let mut out = BytesMut::new();
    frame::put_settings(&mut out, &[]);
    let debug = b"connection limit (grpc.max_connections)";
    frame::put_goaway(&mut out, 0, Reason::RefusedStream, debug);
    out.freeze()
}

/// What a DATA frame's bytes did for its call ([`GrpcConnection::on_data`]).
enum Pushed {
    /// A unary or server-streaming request: its one message, once complete, waits in the
    /// call for the end of the request.
    Request,
    /// A Stream call's inbound messages, to publish now: places in these bytes.
    Inbound(Bytes),
    /// A reflection call's requests, each answered now: places in these bytes.
    Reflection(Bytes),
}

/// Releases what a connection holds in the engine when its reader ends, normally or by a
/// panic (which the door contains to this one connection).
struct Release(Rc<GrpcConnection>);

impl Drop for Release {
    fn drop(&mut self) {
        let conn = &self.0;
        conn.closed.set(true);
        let calls: Vec<Call> = conn.calls.borrow_mut().drain().map(|(_, c)| c).collect();
        for call in calls {
            if let Some(sub) = call.subscriber() {
                conn.shard.unsubscribe(sub);
            }
        }
        if let Some(sink) = conn.sink.take() {
            conn.shard.unregister_sink(sink);
        }
        conn.consumer.notify.notify();
        conn.deadline_added.notify();
    }
}

/// What a stream (one call) is doing.
enum Call {
    /// Unary or server-streaming request still arriving.
    Request {
        method: Method,
        reader: MessageReader,
        message: Option<Bytes>,
    },
    /// Waiting for the engine (an acknowledged publish, a health ping).
    Waiting,
    /// A Subscribe call streaming events.
    Subscription { sub: Rc<Subscriber> },
    /// A Stream call: inbound events are published, matching events go out; with no
    /// subscription (no `x-topic-pattern`) it only publishes. Once the client half-closes it
    /// stays here until its events are sequenced ([`GrpcConnection::finish_bidi_when_sequenced`]).
    Bidi {
        reader: MessageReader,
        sub: Option<Rc<Subscriber>>,
        published: u64,
    },
    /// A health Watch: SERVING now, NOT_SERVING when the server stops.
    Watch,
    /// A reflection call: each request message gets one response message.
    Reflection { reader: MessageReader },
    /// Not a gRPC request: answered with this HTTP status once the request has ended.
    Rejected { status: &'static [u8] },
}

impl Call {
    /// The engine subscription the call holds, to be unsubscribed when it ends.
    fn subscriber(&self) -> Option<&Rc<Subscriber>> {
        match self {
            Call::Subscription { sub } | Call::Bidi { sub: Some(sub), .. } => Some(sub),
            _ => None,
        }
    }
}

struct GrpcConnection {
    shard: Rc<Shard>,
    h2: RefCell<H2>,
    calls: RefCell<HashMap<u32, Call>>,
    consumer: Rc<Consumer>,
    max_message: usize,
    closed: Cell<bool>,
    broken: Cell<bool>,
    stop: Notify,
    sink: Cell<Option<SinkId>>,
    transport: Transport,
    /// Woken after every socket write (the reader may be waiting for room).
    written: Notify,
    /// When the client last sent anything but answers to our PINGs, and how long a
    /// connection may sit idle.
    last_activity: Cell<Instant>,
    idle_timeout: Duration,
    /// When the client last sent anything at all (answers to PINGs too).
    last_heard: Cell<Instant>,
    liveness: Option<Liveness>,
    /// When the PING that waits for an answer was sent.
    ping_sent: Cell<Option<Instant>>,
    /// The connection was found dead (no answer to a PING, or a socket timed out:
    /// keepalive, unacknowledged data, the write deadline); counted once when it ends.
    dead: Cell<bool>,
    /// Calls with a grpc-timeout, earliest first.
    deadlines: RefCell<BinaryHeap<Reverse<(Instant, u32)>>>,
    deadline_added: Notify,
    /// Reused buffer: where the request messages a DATA frame completed lie in the bytes
    /// [`MessageReader::push_ranges`] returned.
    messages: Cell<Vec<Range<usize>>>,
    /// The topic this client last published to ([`Shard::publish_in_place`]).
    recent: RecentTopic,
    /// Reused buffer a response message is encoded into.
    encoded: Cell<BytesMut>,
    /// Stream calls the engine's refusals have ended, counted: a run of inbound messages
    /// looks its call up again only when this moved.
    refusals: Cell<u64>,
}

impl AckSink for GrpcConnection {
    fn acked(&self, request_id: u64, outcome: AckOutcome) {
        let stream = request_id as u32;
        if self.calls.borrow_mut().remove(&stream).is_none() {
            return; // cancelled or past its deadline meanwhile
        }
        match outcome.result {
            Ok(()) => {
                let response = proto::PublishResponse {
                    success: true,
                    message: String::new(),
                    latency_ns: outcome.latency.as_nanos() as i64,
                };
                self.respond(stream, &response);
            }
            Err(e) => self.fail(stream, &GrpcError::Publish(e), false),
        }
        self.consumer.notify.notify();
    }

    fn refused(&self, request_id: u64, error: PublishError) {
        let stream = request_id as u32;
        let call = self.calls.borrow_mut().remove(&stream);
        if let Some(call @ Call::Bidi { .. }) = call {
            self.refusals.set(self.refusals.get() + 1);
            if let Some(sub) = call.subscriber() {
                self.shard.unsubscribe(sub);
            }
            self.fail(stream, &GrpcError::Publish(error), true);
            self.consumer.notify.notify();
        }
    }
}

impl GrpcConnection {
    async fn serve(door: &Rc<Door>, stream: TcpStream) {
        let (stream, write_half) = match accept::split(stream, door.busy_poll.clone()) {
            Ok(halves) => halves,
            Err(e) => return crate::log_line!("shard {}: {e}", door.shard.id()),
        };
        let Ok(transport) = Transport::new(door.tls.as_ref()) else {
            return;
        };
        let conn = Rc::new(GrpcConnection {
            shard: door.shard.clone(),
            h2: RefCell::new(H2::new(H2Limits::default())),
            calls: RefCell::default(),
            consumer: Rc::new(Consumer::new(put_subscribed_event)),
            max_message: door.max_message,
            closed: Cell::new(false),
            broken: Cell::new(false),
            stop: Notify::default(),
            sink: Cell::new(None),
            transport,
            written: Notify::default(),
            last_activity: Cell::new(Instant::now()),
            idle_timeout: door.idle_timeout,
            last_heard: Cell::new(Instant::now()),
            liveness: door.liveness,
            ping_sent: Cell::new(None),
            dead: Cell::new(false),
            deadlines: RefCell::default(),
            deadline_added: Notify::default(),
            messages: Cell::default(),
            recent: RecentTopic::default(),
            encoded: Cell::default(),
            refusals: Cell::new(0),
        });
        conn.sink.set(Some(conn.shard.register_sink(conn.clone())));
        let writer = {
            let (writing, stopping) = (conn.clone(), conn.clone());
            let work = async move { writing.write_loop(write_half).await };
            // A panic in the writer is contained to this connection: its reader stops too.
            accept::spawn_contained(work, move |panicked| {
                if panicked {
                    stopping.broken.set(true);
                    stopping.stop.notify();
                }
            })
        };
        let timer = glommio::spawn_local({
            let conn = conn.clone();
            async move { conn.deadline_loop().await }
        });
        conn.consumer.notify.notify(); // our SETTINGS go out first
        let release = Release(conn.clone());
        conn.read_loop(stream).await;
        drop(release);
        writer.await;
        timer.await;
        conn.consumer.release_held();
        while conn.consumer.next_ready().is_some() {}
        if conn.dead.get() {
            conn.shard.count_cut_connection(GRPC_DOOR);
        }
    }

    async fn read_loop(self: &Rc<Self>, mut stream: Half) {
        let mut buf = BytesMut::with_capacity(MIN_READ);
        let mut wire = Vec::new();
        let mut events = Vec::new();
        // Reads start small (an idle connection keeps little memory) and double while they
        // come back full, up to READ_SIZE.
        let mut read_size = MIN_READ;
        loop {
            futures_lite::future::yield_now().await;
            self.shard.admit().await;
            while self.h2.borrow_mut().output().len() > MAX_UNSENT && !self.broken.get() {
                self.written.wait().await;
            }
            let stopped = self.shard.shutdown.wait();
            if self.shard.is_closing() {
                return self.shut_down();
            }
            let broken = self.stop.wait();
            let before = buf.len();
            let reading = self
                .transport
                .read(&mut stream, &mut buf, read_size, &mut wire);
            let read = accept::unless(reading, futures_lite::future::or(stopped, broken)).await;
            if self.transport.wants_write() {
                self.consumer.notify.notify(); // TLS handshake or alert to send
            }
            match read {
                None if self.broken.get() => return,
                None => return self.shut_down(),
                Some(Err(e)) if e.kind() == io::ErrorKind::TimedOut => {
                    return self.dead.set(true); // keepalive or unacknowledged data
                }
                Some(Ok(false)) | Some(Err(_)) => return,
                Some(Ok(true)) => {}
            }
            if buf.len() - before >= read_size {
                read_size = (read_size * 2).min(READ_SIZE);
            }
            let now = Instant::now();
            self.last_heard.set(now);
            let (frames, acks) = self.h2.borrow().frames();
            let result = self.h2.borrow_mut().receive(&mut buf, now, &mut events);
            let (frames_after, acks_after) = self.h2.borrow().frames();
            // A read that brought only answers to our PINGs is no activity: it must not keep
            // an idle connection open.
            let only_ping_acks =
                acks_after - acks == frames_after - frames && acks_after > acks && buf.is_empty();
            if !only_ping_acks {
                self.last_activity.set(now);
            }
            // The first answers of a read go out as soon as there are a few, not after the
            // whole read: the client works on them while the rest are served.
            let mut send_early = true;
            for event in events.drain(..) {
                self.on_event(event).await;
                if send_early && self.h2.borrow_mut().output().len() >= FIRST_SEND {
                    send_early = false;
                    self.consumer.notify.notify();
                    futures_lite::future::yield_now().await;
                }
            }
            self.consumer.notify.notify();
            if result.is_err() {
                return; // GOAWAY is in the output; the writer sends it and closes
            }
        }
    }

    /// Server shutdown: GOAWAY, every subscription ends with UNAVAILABLE.
    fn shut_down(&self) {
        self.h2.borrow_mut().go_away();
        let calls: Vec<(u32, Call)> = self.calls.borrow_mut().drain().collect();
        for (stream, call) in calls {
            match call {
                Call::Subscription { .. } | Call::Bidi { .. } => {
                    if let Some(sub) = call.subscriber() {
                        self.shard.unsubscribe(sub);
                    }
                    self.fail(stream, &GrpcError::ShuttingDown, true);
                }
                Call::Watch => {
                    use crate::proto::grpc::health::v1::{
                        health_check_response::ServingStatus, HealthCheckResponse,
                    };
                    let response = HealthCheckResponse {
                        status: ServingStatus::NotServing as i32,
                    };
                    self.h2
                        .borrow_mut()
                        .send_data(stream, &service::framed(&response));
                    self.fail(stream, &GrpcError::ShuttingDown, true);
                }
                _ => {}
            }
        }
        self.consumer.notify.notify();
    }

    async fn on_event(self: &Rc<Self>, event: H2Event) {
        match event {
            H2Event::Request {
                stream,
                headers,
                end_stream,
            } => {
                self.on_request(stream, &headers, end_stream).await;
                self.h2.borrow_mut().recycle(headers);
            }
            H2Event::Data {
                stream,
                data,
                end_stream,
            } => self.on_data(stream, data, end_stream).await,
            H2Event::EndOfRequest { stream } => self.on_data(stream, Bytes::new(), true).await,
            H2Event::Reset { stream, .. } => {
                // The client cancelled: free everything the call holds.
                let call = self.calls.borrow_mut().remove(&stream);
                if let Some(sub) = call.as_ref().and_then(Call::subscriber) {
                    self.shard.unsubscribe(sub);
                }
            }
        }
    }

    async fn on_request(self: &Rc<Self>, stream: u32, headers: &HeaderList, end_stream: bool) {
        let head = RequestHead::read(headers);
        let content_type = head.content_type.unwrap_or_default();
        // Not a gRPC request: a plain HTTP status (415 as the gRPC protocol asks, 405 for
        // other methods), once the client has sent all of its request.
        let rejected: Option<&'static [u8]> = if !content_type.starts_with(b"application/grpc") {
            Some(b"415")
        } else if head.method != Some(b"POST") {
            Some(b"405")
        } else {
            None
        };
        if let Some(status) = rejected {
            if end_stream {
                self.reject(stream, status);
            } else {
                self.calls
                    .borrow_mut()
                    .insert(stream, Call::Rejected { status });
            }
            return;
        }
        let path = head.path.unwrap_or_default();
        let Some(method) = Method::from_path(path) else {
            let name = String::from_utf8_lossy(path).into_owned();
            return self.fail(stream, &GrpcError::UnknownMethod(name), false);
        };
        if let Some(encoding) = head.encoding {
            if encoding != b"identity" {
                let name = String::from_utf8_lossy(encoding).into_owned();
                return self.fail(stream, &GrpcError::Compression(name), false);
            }
        }
        if let Some(timeout) = head.timeout {
            let Some(timeout) = framing::parse_timeout(timeout) else {
                let e = GrpcError::InvalidArgument(format!(
                    "grpc-timeout {:?} is not a number of at most 8 digits and a unit",
                    String::from_utf8_lossy(timeout)
                ));
                return self.fail(stream, &e, false);
            };
            let mut deadlines = self.deadlines.borrow_mut();
            deadlines.push(Reverse((Instant::now() + timeout, stream)));
            // Finished calls leave their deadline behind; sweep when they outnumber the live.
            let calls = self.calls.borrow();
            if deadlines.len() > 64 + 2 * calls.len() {
                deadlines.retain(|Reverse((_, s))| *s == stream || calls.contains_key(s));
            }
            drop((deadlines, calls));
            self.deadline_added.notify();
        }
        if method == Method::Stream {
            self.start_bidi(stream, headers).await;
            if end_stream {
                self.on_data(stream, Bytes::new(), true).await;
            }
            return;
        }
        if method == Method::Reflection {
            self.send_response_headers(stream);
            let reader = MessageReader::default();
            self.calls
                .borrow_mut()
                .insert(stream, Call::Reflection { reader });
            if end_stream {
                self.on_data(stream, Bytes::new(), true).await;
            }
            return;
        }
        self.calls.borrow_mut().insert(
            stream,
            Call::Request {
                method,
                reader: MessageReader::default(),
                message: None,
            },
        );
        if end_stream {
            self.on_data(stream, Bytes::new(), true).await;
        }
    }

    /// Starts a Stream call: subscribed to the call metadata `x-topic-pattern` (from
    /// `x-min-priority`), or publish-only without it.
    async fn start_bidi(self: &Rc<Self>, stream: u32, headers: &HeaderList) {
        let Some(pattern) = headers.get(b"x-topic-pattern") else {
            // A minimum priority filters the events sent back; a publish-only call sends none,
            // so the metadata can only be a mistake.
            if headers.get(b"x-min-priority").is_some() {
                let why =
                    "x-min-priority needs x-topic-pattern (without it, Stream only publishes)";
                return self.fail(stream, &GrpcError::InvalidArgument(why.into()), false);
            }
            self.send_response_headers(stream);
            let reader = MessageReader::default();
            let call = Call::Bidi {
                reader,
                sub: None,
                published: 0,
            };
            self.calls.borrow_mut().insert(stream, call);
            return;
        };
        let pattern = match Pattern::parse(pattern) {
            Ok(p) => p,
            Err(e) => return self.fail(stream, &GrpcError::InvalidPattern(e), false),
        };
        let min_priority = match headers.get(b"x-min-priority") {
            None => Priority::Batch,
            Some(v) => match std::str::from_utf8(v).ok().and_then(Priority::parse) {
                Some(p) => p,
                None => {
                    let e = GrpcError::InvalidArgument(format!(
                        "x-min-priority {:?} is not a priority name or 0..=4",
                        String::from_utf8_lossy(v)
                    ));
                    return self.fail(stream, &e, false);
                }
            },
        };
        let sub = self
            .shard
            .subscribe(pattern, min_priority, &self.consumer, u64::from(stream))
            .await;
        self.send_response_headers(stream);
        self.calls.borrow_mut().insert(
            stream,
            Call::Bidi {
                reader: MessageReader::default(),
                sub: Some(sub.clone()),
                published: 0,
            },
        );
        sub.requeue();
    }

    async fn on_data(self: &Rc<Self>, stream: u32, data: Bytes, end_stream: bool) {
        // Complete messages gather in a buffer the connection reuses, as places in `source`.
        let mut messages = self.messages.take();
        let max = self.max_message;
        let pushed = {
            let mut calls = self.calls.borrow_mut();
            match calls.get_mut(&stream) {
                Some(Call::Request {
                    reader, message, ..
                }) => reader
                    .push_ranges(data, max, &mut messages)
                    .and_then(|source| {
                        // Unary and server-streaming calls take one message: refuse more at once
                        // rather than hold them until the request ends.
                        for body in messages.drain(..) {
                            if message.replace(source.slice(body)).is_some() {
                                let why = "this method takes exactly one request message";
                                return Err(GrpcError::InvalidArgument(why.into()));
                            }
                        }
                        Ok(Pushed::Request)
                    }),
                Some(Call::Bidi { reader, .. }) => reader
                    .push_ranges(data, max, &mut messages)
                    .map(Pushed::Inbound),
                Some(Call::Reflection { reader }) => reader
                    .push_ranges(data, max, &mut messages)
                    .map(Pushed::Reflection),
                Some(Call::Rejected { status }) => {
                    let status = *status;
                    if end_stream {
                        calls.remove(&stream);
                        drop(calls);
                        self.reject(stream, status);
                    }
                    return;
                }
                _ => return,
            }
        };
        let pushed = pushed.and_then(|p| self.check_buffered(stream).map(|()| p));
        match pushed {
            Err(e) => self.end_call_with(stream, &e),
            Ok(Pushed::Inbound(source)) => {
                self.on_bidi_messages(stream, &source, &messages, end_stream)
            }
            Ok(Pushed::Reflection(source)) => {
                self.on_reflection(stream, &source, &messages, end_stream)
            }
            Ok(Pushed::Request) if end_stream => self.dispatch(stream).await,
            Ok(Pushed::Request) => {}
        }
        messages.clear();
        self.messages.set(messages);
    }

    /// Bounds what partial request messages may hold on one connection: a stream holding more
    /// than 64 KiB triggers a count over all of them, refused past four maximum-size messages
    /// (below that threshold, at most 1,024 streams × 64 KiB are held uncounted).
    fn check_buffered(&self, stream: u32) -> Result<(), GrpcError> {
        let reader_of = |call: &Call| match call {
            Call::Request { reader, .. }
            | Call::Bidi { reader, .. }
            | Call::Reflection { reader } => reader.buffered(),
            _ => 0,
        };
        let calls = self.calls.borrow();
        if calls.get(&stream).map_or(0, reader_of) <= 64 * 1024 {
            return Ok(());
        }
        let total: usize = calls.values().map(reader_of).sum();
        let max = 4 * self.max_message;
        if total > max {
            return Err(GrpcError::ResourceExhausted(format!(
                "partial request messages on this connection hold {total} bytes, over {max}"
            )));
        }
        Ok(())
    }

    fn on_reflection(
        &self,
        stream: u32,
        source: &Bytes,
        messages: &[Range<usize>],
        end_stream: bool,
    ) {
        for body in messages {
            use crate::proto::grpc::reflection::v1::ServerReflectionRequest;
            match service::decode::<ServerReflectionRequest>(source.slice(body.clone())) {
                Ok(request) => {
                    let framed = service::framed(&super::reflection::answer(request));
                    self.h2.borrow_mut().send_data(stream, &framed);
                }
                Err(e) => return self.end_call_with(stream, &e),
            }
        }
        if end_stream && self.calls.borrow_mut().remove(&stream).is_some() {
            self.finish(stream, Code::Ok, "", &[]);
        }
    }

    /// Answers a request that is not gRPC with a plain HTTP status and a line saying why.
    fn reject(&self, stream: u32, status: &'static [u8]) {
        const WHY: &[u8] = b"this port serves gRPC (POST, content-type application/grpc)\n";
        let mut h2 = self.h2.borrow_mut();
        h2.send_headers(
            stream,
            &[(b":status", status), (b"content-type", b"text/plain")],
            false,
        );
        h2.send_data(stream, WHY);
        h2.finish(stream);
    }

    fn end_call_with(&self, stream: u32, e: &GrpcError) {
        let call = self.calls.borrow_mut().remove(&stream);
        let headers_sent = matches!(
            call,
            Some(
                Call::Subscription { .. }
                    | Call::Bidi { .. }
                    | Call::Watch
                    | Call::Reflection { .. }
            )
        );
        if let Some(sub) = call.as_ref().and_then(Call::subscriber) {
            self.shard.unsubscribe(sub);
        }
        // Ending our side also tells a client still sending to stop (RST_STREAM NO_ERROR).
        self.fail(stream, e, headers_sent);
    }

    /// Publishes a Stream call's inbound messages, `messages` of `source`, in order: each
    /// stretch of messages of one topic decoded in place goes as one batch, which the engine
    /// sends as a run ([`Shard::publish_batch_in_place`]); a message that needs prost goes on
    /// its own. The first invalid message ends the call, the ones before it published. A
    /// stretch is refused or taken whole by its topic's owner, so stopping at a refusal
    /// between stretches publishes nothing after the refused event, as one by one would.
    fn on_bidi_messages(
        self: &Rc<Self>,
        stream: u32,
        source: &Bytes,
        messages: &[Range<usize>],
        end_stream: bool,
    ) {
        let now_ns = unix_now_ns();
        // The call's count is kept here for the whole read and written back once: two
        // look-ups of the call per message were a visible share of the Stream row. Only a
        // refusal from the engine can end the call while its messages are published
        // (`refused`, which counts itself in `refusals`), so the call is looked up again only
        // after one.
        let mut published = match self.calls.borrow().get(&stream) {
            Some(Call::Bidi { published, .. }) => *published,
            _ => return,
        };
        let reply = || Reply::RefusalsOnly {
            sink: self.sink.get().expect("registered"),
            request_id: u64::from(stream),
        };
        let mut events = Vec::with_capacity(messages.len());
        let mut next = 0;
        while next < messages.len() {
            let refusals = self.refusals.get();
            events.clear();
            self.with_known_topic(|known| {
                let mut checked_topic = known;
                for body in &messages[next..] {
                    let message = &source[body.clone()];
                    let Some(event) = service::decode_event_in_place(message, checked_topic) else {
                        break;
                    };
                    if events
                        .first()
                        .is_some_and(|e: &EventRef| e.topic != event.topic)
                    {
                        break;
                    }
                    checked_topic = event.topic;
                    events.push(event);
                }
            });
            let result = if events.is_empty() {
                // Metadata, an id, or an encoding left to prost: decoded into an owned event.
                let body = messages[next].clone();
                next += 1;
                service::decode_event(source.slice(body)).and_then(|raw| {
                    let event = self.shard.validate_recent(raw, &self.recent, now_ns)?;
                    self.shard.publish(std::iter::once(event), reply());
                    published += 1;
                    Ok(())
                })
            } else {
                next += events.len();
                self.publish_stretch(&events, source, now_ns, reply, &mut published)
            };
            // A refusal first: the valid events before an invalid one were published, and
            // their owner (this shard) may have refused them and ended the call already.
            if self.refusals.get() != refusals && !self.is_bidi(stream) {
                return; // refused meanwhile: the call has ended
            }
            if let Err(e) = result {
                let e = GrpcError::InvalidArgument(format!("inbound event {published}: {e}"));
                return self.end_call_with(stream, &e);
            }
        }
        debug_assert!(self.is_bidi(stream), "the call outlives its messages");
        if let Some(Call::Bidi {
            published: kept, ..
        }) = self.calls.borrow_mut().get_mut(&stream)
        {
            *kept = published;
        }
        if end_stream {
            self.finish_bidi_when_sequenced(stream);
        }
    }

    /// Publishes a Stream call's stretch of messages decoded in place, counting each into
    /// `published`: all of them, or, if one is invalid, the valid ones before it, and then
    /// why that one is not.
    fn publish_stretch(
        &self,
        events: &[EventRef<'_>],
        source: &Bytes,
        now_ns: i64,
        reply: impl Fn() -> Reply,
        published: &mut u64,
    ) -> Result<(), GrpcError> {
        let (shard, recent) = (&self.shard, &self.recent);
        let Err((index, error)) =
            shard.publish_batch_in_place(events, source, recent, now_ns, reply())
        else {
            *published += events.len() as u64;
            return Ok(());
        };
        if index > 0 {
            let valid = &events[..index];
            let again = shard.publish_batch_in_place(valid, source, recent, now_ns, reply());
            debug_assert!(
                again.is_ok(),
                "the events before the first invalid one are valid"
            );
            *published += index as u64;
        }
        Err(GrpcError::from(error))
    }

    /// Ends a Stream call the client has half-closed with OK and `x-published-count` once
    /// every event it published is sequenced (a publish succeeds once sequenced:
    /// README.md, "Behaviour you can rely on"): until then a refusal, the deadline, a cancel or
    /// shutdown may still end it otherwise.
    fn finish_bidi_when_sequenced(self: &Rc<Self>, stream: u32) {
        let conn = self.clone();
        glommio::spawn_local(async move {
            // A ping goes to each shard behind this shard's publishes to it, and the owner's
            // refusals come back ahead of its answer (one ordered channel each way): once
            // every shard has answered, each event was sequenced or its refusal ended the call.
            // At shutdown a shard may never answer; the reader ends the call then.
            let stopped = conn.shard.shutdown.wait();
            if conn.shard.is_closing()
                || accept::unless(conn.shard.ping_all(), stopped)
                    .await
                    .is_none()
            {
                return;
            }
            let call = {
                let mut calls = conn.calls.borrow_mut();
                match calls.get(&stream) {
                    Some(Call::Bidi { .. }) => calls.remove(&stream),
                    _ => None, // ended meanwhile
                }
            };
            let Some(call @ Call::Bidi { published, .. }) = call else {
                return;
            };
            if let Some(sub) = call.subscriber() {
                conn.shard.unsubscribe(sub);
            }
            let count = published.to_string();
            conn.finish(
                stream,
                Code::Ok,
                "",
                &[(b"x-published-count", count.as_bytes())],
            );
            conn.consumer.notify.notify();
        })
        .detach();
    }

    /// Whether `stream` is a Stream call still going.
    fn is_bidi(&self, stream: u32) -> bool {
        matches!(self.calls.borrow().get(&stream), Some(Call::Bidi { .. }))
    }

    /// A unary or server-streaming request arrived whole.
    async fn dispatch(self: &Rc<Self>, stream: u32) {
        let Some(Call::Request {
            method,
            reader,
            message,
        }) = self.calls.borrow_mut().remove(&stream)
        else {
            return;
        };
        let message = match message {
            Some(message) if reader.is_empty() => message,
            _ => {
                let e = GrpcError::InvalidArgument(format!(
                    "expected exactly one request message, got {}{}",
                    usize::from(message.is_some()),
                    if reader.is_empty() {
                        ""
                    } else {
                        " and a partial one"
                    }
                ));
                return self.fail(stream, &e, false);
            }
        };
        let result = match method {
            Method::Publish => self.publish(stream, message),
            Method::PublishBatch => self.publish_batch(stream, message),
            Method::Subscribe => self.subscribe(stream, message).await,
            Method::HealthCheck => {
                self.health(stream).await;
                Ok(())
            }
            Method::HealthV1Check | Method::HealthV1Watch => {
                self.health_v1(stream, message, method == Method::HealthV1Watch)
                    .await
            }
            Method::Reflection => unreachable!("reflection starts with its headers"),
            Method::Stream => unreachable!("Stream starts with its headers"),
        };
        if let Err(e) = result {
            self.fail(stream, &e, false);
        }
    }

    /// Runs `f` with the bytes of the connection's last topic (empty if none): a topic the
    /// engine validated, so an event repeating it needs no UTF-8 check while decoding.
    fn with_known_topic<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        let recent = self.recent.get();
        f(recent.as_ref().map_or(&[], |topic| &topic.bytes()[..]))
    }

    /// Runs `publish` (which validates, then publishes) with the call waiting for its
    /// acknowledgement: marked waiting first, as a publish to this shard is acknowledged
    /// within the call; unmarked if the events were refused before any was published.
    fn publish_acknowledged(
        self: &Rc<Self>,
        stream: u32,
        publish: impl FnOnce(Reply) -> Result<(), GrpcError>,
    ) -> Result<(), GrpcError> {
        self.calls.borrow_mut().insert(stream, Call::Waiting);
        let published = publish(self.ack_request(stream));
        if published.is_err() {
            self.calls.borrow_mut().remove(&stream);
        }
        published
    }

    fn ack_request(self: &Rc<Self>, stream: u32) -> Reply {
        Reply::Ack(AckRequest {
            sink: self.clone(),
            request_id: u64::from(stream),
            decoded_at: Instant::now(),
        })
    }

    fn publish(self: &Rc<Self>, stream: u32, message: Bytes) -> Result<(), GrpcError> {
        let now_ns = unix_now_ns();
        if let Some(event) =
            self.with_known_topic(|known| service::decode_publish_in_place(&message, known))
        {
            return self.publish_acknowledged(stream, |reply| {
                (self.shard)
                    .publish_in_place(event, &message, &self.recent, now_ns, reply)
                    .map_err(GrpcError::from)
            });
        }
        let raw = service::decode_publish(message)?;
        self.publish_acknowledged(stream, |reply| {
            let event = (self.shard).validate_recent(raw, &self.recent, now_ns)?;
            self.shard.publish(std::iter::once(event), reply);
            Ok(())
        })
    }

    fn publish_batch(self: &Rc<Self>, stream: u32, message: Bytes) -> Result<(), GrpcError> {
        let max = self.shard.limits().max_batch_events;
        let now_ns = unix_now_ns();
        let mut events = Vec::new();
        match service::decode_batch_in_place(&message, max, &mut events) {
            Some(Ok(())) => {
                return self.publish_acknowledged(stream, |reply| {
                    (self.shard)
                        .publish_batch_in_place(&events, &message, &self.recent, now_ns, reply)
                        .map_err(|(index, error)| GrpcError::InvalidBatchEvent { index, error })
                });
            }
            Some(Err(e)) => return Err(e),
            None => {}
        }
        // Events with metadata, or encodings left to prost: decoded into owned events.
        self.publish_acknowledged(stream, |reply| {
            let mut events = Vec::new();
            service::decode_batch(message, max, |index, raw| {
                let raw =
                    raw.map_err(|e| GrpcError::InvalidArgument(format!("event {index}: {e}")))?;
                let event = (self.shard)
                    .validate_recent(raw, &self.recent, now_ns)
                    .map_err(|error| GrpcError::InvalidBatchEvent { index, error })?;
                events.push(event);
                Ok(())
            })?;
            self.shard.publish(events, reply);
            Ok(())
        })
    }

    async fn subscribe(self: &Rc<Self>, stream: u32, message: Bytes) -> Result<(), GrpcError> {
        let request: proto::SubscribeRequest = service::decode(message)?;
        let pattern =
            Pattern::parse(request.topic_pattern.as_bytes()).map_err(GrpcError::InvalidPattern)?;
        let min_priority = u8::try_from(request.min_priority)
            .ok()
            .and_then(Priority::from_u8)
            .ok_or_else(|| {
                GrpcError::InvalidArgument(format!(
                    "min_priority {} is not one of 0..=4",
                    request.min_priority
                ))
            })?;
        self.calls.borrow_mut().insert(stream, Call::Waiting);
        let sub = self
            .shard
            .subscribe(pattern, min_priority, &self.consumer, u64::from(stream))
            .await;
        if self.calls.borrow().get(&stream).is_none() {
            // Cancelled while registering.
            self.shard.unsubscribe(&sub);
            return Ok(());
        }
        self.send_response_headers(stream);
        self.calls
            .borrow_mut()
            .insert(stream, Call::Subscription { sub: sub.clone() });
        sub.requeue();
        Ok(())
    }

    /// Whether the server is healthy: every shard answers a ping within 1 s and it is not
    /// stopping. None when the call was cancelled meanwhile.
    async fn healthy(self: &Rc<Self>, stream: u32) -> Option<bool> {
        self.calls.borrow_mut().insert(stream, Call::Waiting);
        let answered = glommio::timer::timeout(Duration::from_secs(1), async {
            Ok(self.shard.ping_all().await)
        })
        .await
        .is_ok();
        self.calls.borrow_mut().remove(&stream)?;
        Some(answered && !self.shard.is_closing())
    }

    async fn health(self: &Rc<Self>, stream: u32) {
        let Some(healthy) = self.healthy(stream).await else {
            return;
        };
        let response = proto::HealthResponse {
            healthy,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_seconds: self.shard.uptime().as_secs() as i64,
        };
        self.respond(stream, &response);
    }

    /// `grpc.health.v1`: the whole server ("") and `eventstream.EventService` are SERVING
    /// while every shard answers a ping within 1 s and the server is not stopping.
    async fn health_v1(
        self: &Rc<Self>,
        stream: u32,
        message: Bytes,
        watch: bool,
    ) -> Result<(), GrpcError> {
        use crate::proto::grpc::health::v1::{
            health_check_response::ServingStatus, HealthCheckRequest, HealthCheckResponse,
        };
        let request: HealthCheckRequest = service::decode(message)?;
        let known = matches!(request.service.as_str(), "" | "eventstream.EventService");
        if !known && !watch {
            return Err(GrpcError::NotFound(format!(
                "unknown service {:?}",
                request.service
            )));
        }
        let Some(healthy) = self.healthy(stream).await else {
            return Ok(()); // cancelled meanwhile
        };
        let status = match (known, healthy) {
            (false, _) => ServingStatus::ServiceUnknown,
            (true, true) => ServingStatus::Serving,
            (true, false) => ServingStatus::NotServing,
        };
        let response = HealthCheckResponse {
            status: status as i32,
        };
        if watch {
            self.send_response_headers(stream);
            self.h2
                .borrow_mut()
                .send_data(stream, &service::framed(&response));
            self.calls.borrow_mut().insert(stream, Call::Watch);
        } else {
            self.respond(stream, &response);
        }
        Ok(())
    }

    fn send_response_headers(&self, stream: u32) {
        self.h2.borrow_mut().send_headers(
            stream,
            &[(b":status", b"200"), (b"content-type", b"application/grpc")],
            false,
        );
    }

    /// Headers, one message, OK trailers.
    fn respond(&self, stream: u32, message: &impl prost::Message) {
        self.send_response_headers(stream);
        let mut framed = self.encoded.take();
        framed.clear();
        framing::put_message(&mut framed, |o| message.encode(o).expect("BytesMut grows"));
        let mut h2 = self.h2.borrow_mut();
        h2.send_data(stream, &framed);
        self.encoded.set(framed);
        h2.send_trailers(stream, &[(b"grpc-status", Code::Ok.as_header())]);
    }

    /// Ends a call with an error status: trailers-only when nothing was sent yet.
    fn fail(&self, stream: u32, e: &GrpcError, headers_sent: bool) {
        let message = percent_encode(&e.to_string());
        if headers_sent {
            self.finish(stream, e.code(), &message, &[]);
        } else {
            self.h2.borrow_mut().send_headers(
                stream,
                &[
                    (b":status", b"200"),
                    (b"content-type", b"application/grpc"),
                    (b"grpc-status", e.code().as_header()),
                    (b"grpc-message", message.as_bytes()),
                ],
                true,
            );
        }
    }

    /// Trailers after a streamed response.
    fn finish(&self, stream: u32, code: Code, message: &str, extra: &[(&[u8], &[u8])]) {
        let mut fields: Vec<(&[u8], &[u8])> = vec![(b"grpc-status", code.as_header())];
        if !message.is_empty() {
            fields.push((b"grpc-message", message.as_bytes()));
        }
        fields.extend_from_slice(extra);
        self.h2.borrow_mut().send_trailers(stream, &fields);
    }

    /// Checks that the client still answers (see [`Liveness`]): sends a PING when it has been
    /// silent for the interval; cuts the connection (GOAWAY, close) when it stayed silent for
    /// the timeout after one. Returns when to look again (None: never), or Err once cut.
    fn check_liveness(&self, now: Instant) -> Result<Option<Instant>, ()> {
        let Some(Liveness { interval, timeout }) = self.liveness else {
            return Ok(None);
        };
        if let Some(sent) = self.ping_sent.get() {
            if self.last_heard.get() > sent {
                self.ping_sent.set(None); // answered (or the client spoke anyway)
            } else if now >= sent + timeout {
                let mut h2 = self.h2.borrow_mut();
                h2.go_away_now(Reason::NoError, PING_TIMEOUT_DEBUG);
                drop(h2);
                self.dead.set(true);
                self.consumer.notify.notify();
                self.broken.set(true); // stops the reader; the writer sends the GOAWAY
                self.stop.notify();
                return Err(());
            } else {
                return Ok(Some(sent + timeout));
            }
        }
        let due = self.last_heard.get() + interval;
        if now < due {
            return Ok(Some(due));
        }
        self.h2.borrow_mut().ping(PING_DATA);
        self.consumer.notify.notify();
        self.ping_sent.set(Some(now));
        Ok(Some(now + timeout))
    }

    /// Ends calls whose grpc-timeout passed, closes the connection (GOAWAY) once it has had
    /// no call and no traffic for the idle timeout, and cuts it once the client stops
    /// answering PINGs ([`GrpcConnection::check_liveness`]).
    async fn deadline_loop(&self) {
        loop {
            let added = self.deadline_added.wait();
            if self.closed.get() {
                return;
            }
            let now = Instant::now();
            let Ok(ping_at) = self.check_liveness(now) else {
                return;
            };
            let watching_idle = self.idle_timeout > Duration::ZERO;
            let quiet = self.calls.borrow().is_empty();
            if watching_idle && quiet && self.last_activity.get() + self.idle_timeout <= now {
                self.h2.borrow_mut().go_away();
                self.consumer.notify.notify();
                self.broken.set(true); // stops the reader; the writer sends the GOAWAY
                self.stop.notify();
                return;
            }
            // With calls open, look again one idle period from now (they may all end quietly).
            let idle_at = watching_idle.then(|| {
                let since = if quiet { self.last_activity.get() } else { now };
                since + self.idle_timeout
            });
            let next = self.deadlines.borrow().peek().map(|Reverse((t, _))| *t);
            let Some(next) = next.into_iter().chain(idle_at).chain(ping_at).min() else {
                added.await;
                continue;
            };
            if next > now {
                let sleep = glommio::timer::sleep(next - now);
                futures_lite::future::or(sleep, added).await;
                continue;
            }
            let mut expired = Vec::new();
            {
                let mut deadlines = self.deadlines.borrow_mut();
                while let Some(Reverse((t, stream))) = deadlines.peek().copied() {
                    if t > now {
                        break;
                    }
                    deadlines.pop();
                    expired.push(stream);
                }
            }
            for stream in expired {
                let live = self.calls.borrow().contains_key(&stream);
                if live {
                    self.end_call_with(stream, &GrpcError::DeadlineExceeded);
                }
            }
            self.consumer.notify.notify();
        }
    }

    async fn write_loop(&self, mut socket: Half) {
        let mut wire = Vec::new();
        // Kept across wake-ups with its capacity: `spare` takes the HTTP/2 layer's place as
        // its output while `out` is written (a fresh buffer there would grow by reallocating
        // and copying).
        let mut spare = BytesMut::new();
        loop {
            let woken = self.consumer.notify.wait();
            // Streams that flow control held back are retried at every turn: the reader may
            // have taken in the window they waited for (it wakes this task after each read).
            self.consumer.release_held();
            while let Some(sub) = self.consumer.next_ready() {
                self.drain_subscription(&sub);
            }
            let out = std::mem::replace(self.h2.borrow_mut().output(), std::mem::take(&mut spare));
            if out.is_empty() && !self.transport.wants_write() {
                if self.closed.get() {
                    break;
                }
                woken.await;
                continue;
            }
            let wrote = self.transport.write(&mut socket, &out, &mut wire).await;
            if let Err(e) = wrote {
                if e.kind() == io::ErrorKind::TimedOut {
                    // The write deadline passed (or the kernel gave up on unacknowledged
                    // data): what is unsent is dropped with the connection, at once.
                    self.dead.set(true);
                    socket.abort_on_close();
                }
                self.broken.set(true);
                self.stop.notify();
                self.written.notify();
                break;
            }
            self.written.notify();
            let mut out = out;
            out.clear();
            spare = out;
        }
        let _ = socket.close().await;
    }

    /// Moves a subscription's queued events (framed gRPC messages already) into its stream, as
    /// far as HTTP/2 lets them.
    fn drain_subscription(&self, sub: &Rc<Subscriber>) {
        let stream = sub.tag as u32;
        let current = match self.calls.borrow().get(&stream) {
            Some(call) => call.subscriber().is_some_and(|s| Rc::ptr_eq(s, sub)),
            _ => false,
        };
        if !current || sub.state() == SubState::Closed {
            return;
        }
        let mut h2 = self.h2.borrow_mut();
        let budget = MAX_QUEUED_PER_STREAM.saturating_sub(h2.queued(stream));
        sub.drain(budget, |messages, _| h2.send_data(stream, messages));
        drop(h2);
        if sub.queued() > 0 {
            self.consumer.hold(sub);
        } else if sub.state() == SubState::Cut {
            self.calls.borrow_mut().remove(&stream);
            self.fail(stream, &GrpcError::SlowConsumer, true);
        }
    }
}

/// How a gRPC subscriber's events are queued: each an `eventstream.Event` message with its
/// gRPC prefix, ready for the stream's DATA frames.
fn put_subscribed_event(out: &mut BytesMut, event: &EventView<'_>, _stream: u64) {
    framing::put_message(out, |o| service::put_event(o, event));
}
