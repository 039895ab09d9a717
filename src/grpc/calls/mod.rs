//! The call layer of a gRPC connection, with no I/O: bytes a socket read go in
//! ([`Session::receive`]), HTTP/2 frames to write come out ([`Session::collect_output`]), and in
//! between every call is dispatched to the engine and answered. The connection
//! ([`connection`](super::connection)) only moves bytes between this and its socket, and wakes
//! it on time ([`Session::on_timer`]); the tests below drive it with an HTTP/2 peer and no
//! socket.
//!
//! | file | job |
//! |---|---|
//! | [`dispatch`] | a request's headers and data frames to a call (`Call`), and its end |
//! | [`publish`] | Publish and PublishBatch, and their acknowledgements from the engine |
//! | [`streams`] | Subscribe and Stream: subscriptions, inbound events, events going out |
//! | [`health`] | `HealthCheck` and `grpc.health.v1` |
//! | [`deadlines`] | grpc-timeout deadlines, the idle timeout, liveness PINGs |

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::ops::Range;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use hashbrown::HashMap;

use super::framing;
use super::h2::connection::{Connection as H2, Event as H2Event, Limits as H2Limits};
use super::h2::frame::Reason;
use super::service;
use super::status::{percent_encode, Code, GrpcError};
use crate::engine::event::EventView;
use crate::engine::notify::Notify;
use crate::engine::{Consumer, RecentTopic, Shard, SinkId};

mod deadlines;
mod dispatch;
mod health;
mod publish;
mod streams;

pub use deadlines::{Liveness, TimerVerdict};
use dispatch::Call;

/// Answers waiting from one read, in bytes, that go out before the rest of the read is served
/// (about ten unary responses). Sending them early lets a client that keeps many calls in
/// flight on one connection work on them while the server serves the rest, instead of the
/// two taking turns. It costs at most one more `send` per read.
const FIRST_SEND_BYTES: usize = 400;

/// What a [`Session`] is made with, besides its shard.
#[derive(Clone, Copy, Debug)]
pub struct SessionSettings {
    /// Messages over this many bytes are RESOURCE_EXHAUSTED.
    pub max_message_bytes: usize,
    /// How long a connection with no call may stay silent (zero: forever).
    pub idle_timeout: Duration,
    /// None: no PINGs.
    pub liveness: Option<Liveness>,
}

/// One gRPC connection's calls: its HTTP/2 state, the calls in flight, and what it holds in
/// the engine (subscriptions, a refusal sink). Lives in an `Rc` on its shard: the engine
/// answers acknowledged publishes to it ([`AckSink`](crate::engine::AckSink)).
pub struct Session {
    shard: Rc<Shard>,
    h2: RefCell<H2>,
    calls: RefCell<HashMap<u32, Call>>,
    consumer: Rc<Consumer>,
    max_message: usize,
    /// Set once the connection's reader ended: nothing new starts.
    closed: Cell<bool>,
    sink: Cell<Option<SinkId>>,
    /// When the client last sent anything but answers to our PINGs, and how long a
    /// connection may sit idle.
    last_activity: Cell<Instant>,
    idle_timeout: Duration,
    /// When the client last sent anything at all (answers to PINGs too).
    last_heard: Cell<Instant>,
    liveness: Option<Liveness>,
    /// When the PING that waits for an answer was sent.
    ping_sent: Cell<Option<Instant>>,
    /// Calls with a grpc-timeout, earliest first.
    deadlines: RefCell<BinaryHeap<Reverse<(Instant, u32)>>>,
    /// Woken when a call gets a deadline: the timer may have to wake earlier.
    pub deadline_added: Notify,
    /// Reused buffer: where the request messages a DATA frame completed lie in the bytes
    /// [`MessageReader::push_ranges`](framing::MessageReader::push_ranges) returned.
    messages: Cell<Vec<Range<usize>>>,
    /// The topic this client last published to ([`Shard::publish_in_place`]).
    recent: RecentTopic,
    /// Reused buffer a response message is encoded into.
    encoded: Cell<BytesMut>,
    /// Stream calls the engine's refusals have ended, counted: a run of inbound messages
    /// looks its call up again only when this moved.
    refusals: Cell<u64>,
}

impl Session {
    /// A new connection's session on `shard`, registered for the engine's refusal reports;
    /// its server preface (SETTINGS) is already in the output.
    pub fn new(shard: Rc<Shard>, settings: SessionSettings) -> Rc<Session> {
        let now = Instant::now();
        let session = Rc::new(Session {
            shard,
            h2: RefCell::new(H2::new(H2Limits::default())),
            calls: RefCell::default(),
            consumer: Rc::new(Consumer::new(put_subscribed_event)),
            max_message: settings.max_message_bytes,
            closed: Cell::new(false),
            sink: Cell::new(None),
            last_activity: Cell::new(now),
            idle_timeout: settings.idle_timeout,
            last_heard: Cell::new(now),
            liveness: settings.liveness,
            ping_sent: Cell::new(None),
            deadlines: RefCell::default(),
            deadline_added: Notify::default(),
            messages: Cell::default(),
            recent: RecentTopic::default(),
            encoded: Cell::default(),
            refusals: Cell::new(0),
        });
        let sink = session.shard.register_sink(session.clone());
        session.sink.set(Some(sink));
        session
    }

    /// Where the writer waits for work (responses, subscription events) and how it finds the
    /// subscriptions with events ready.
    pub fn consumer(&self) -> &Rc<Consumer> {
        &self.consumer
    }

    /// True once [`release`](Self::release) ran.
    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    /// Bytes waiting to be written, kept by the HTTP/2 layer.
    pub fn output_len(&self) -> usize {
        self.h2.borrow_mut().output().len()
    }

    /// Everything to write now: the subscriptions' queued events moved into their streams as
    /// far as flow control lets them, then the HTTP/2 output, whose place `spare` (empty)
    /// takes: the writer hands each buffer back after writing it, so both keep their capacity.
    pub fn collect_output(&self, spare: BytesMut) -> BytesMut {
        debug_assert!(spare.is_empty(), "the spare output buffer was written");
        // Streams that flow control held back are retried at every turn: the reader may
        // have taken in the window they waited for (it wakes the writer after each read).
        self.consumer.release_held();
        while let Some(sub) = self.consumer.next_ready() {
            self.drain_subscription(&sub);
        }
        std::mem::replace(self.h2.borrow_mut().output(), spare)
    }

    /// Feeds bytes read from the socket at `now` to HTTP/2 and serves every request, data
    /// frame and reset they complete. `buf` keeps an incomplete frame for the next read;
    /// `events` is a buffer the caller reuses. Err once the connection must close (a GOAWAY
    /// is in the output).
    pub async fn receive(
        self: &Rc<Self>,
        buf: &mut BytesMut,
        now: Instant,
        events: &mut Vec<H2Event>,
    ) -> Result<(), ()> {
        self.last_heard.set(now);
        let (frames, acks) = self.h2.borrow().frames();
        let result = self.h2.borrow_mut().receive(buf, now, events);
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
            if send_early && self.output_len() >= FIRST_SEND_BYTES {
                send_early = false;
                self.consumer.notify.notify();
                futures_lite::future::yield_now().await;
            }
        }
        self.consumer.notify.notify();
        result.map_err(|_| ())
    }

    /// Server shutdown: GOAWAY, every subscription ends with UNAVAILABLE, every health Watch
    /// with NOT_SERVING first.
    pub fn shut_down(&self) {
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
                    self.send_not_serving(stream);
                    self.fail(stream, &GrpcError::ShuttingDown, true);
                }
                _ => {}
            }
        }
        self.consumer.notify.notify();
    }

    /// Closes the connection now with a GOAWAY carrying `debug` (a client that stopped
    /// answering PINGs): nothing more is read.
    fn go_away_now(&self, debug: &[u8]) {
        self.h2.borrow_mut().go_away_now(Reason::NoError, debug);
        self.consumer.notify.notify();
    }

    /// Releases what the connection holds in the engine (subscriptions, its refusal sink)
    /// once its reader ended, normally or by a panic.
    pub fn release(&self) {
        self.closed.set(true);
        let calls: Vec<Call> = self.calls.borrow_mut().drain().map(|(_, c)| c).collect();
        for call in calls {
            if let Some(sub) = call.subscriber() {
                self.shard.unsubscribe(sub);
            }
        }
        if let Some(sink) = self.sink.take() {
            self.shard.unregister_sink(sink);
        }
        self.consumer.notify.notify();
        self.deadline_added.notify();
    }

    pub(super) async fn on_event(self: &Rc<Self>, event: H2Event) {
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

    pub(super) fn send_response_headers(&self, stream: u32) {
        self.h2.borrow_mut().send_headers(
            stream,
            &[(b":status", b"200"), (b"content-type", b"application/grpc")],
            false,
        );
    }

    /// Headers, one message, OK trailers.
    pub(super) fn respond(&self, stream: u32, message: &impl prost::Message) {
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
    pub(super) fn fail(&self, stream: u32, e: &GrpcError, headers_sent: bool) {
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
    pub(super) fn finish(&self, stream: u32, code: Code, message: &str, extra: &[(&[u8], &[u8])]) {
        let mut fields: Vec<(&[u8], &[u8])> = vec![(b"grpc-status", code.as_header())];
        if !message.is_empty() {
            fields.push((b"grpc-message", message.as_bytes()));
        }
        fields.extend_from_slice(extra);
        self.h2.borrow_mut().send_trailers(stream, &fields);
    }
}

/// How a gRPC subscriber's events are queued: each an `eventstream.Event` message with its
/// gRPC prefix, ready for the stream's DATA frames.
fn put_subscribed_event(out: &mut BytesMut, event: &EventView<'_>, _stream: u64) {
    framing::put_message(out, |o| service::put_event(o, event));
}

#[cfg(test)]
mod tests;
