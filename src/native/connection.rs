//! One native TCP client on its shard: a reader that decodes frames and drives the engine, and
//! a writer that turns everything produced for this client during one wake-up (acks, errors,
//! events of every ready subscription) into one socket write.

use hashbrown::HashMap;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_lite::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};

use super::codec::{self, ClientFrame, ErrorCode, FrameRef, Pong};
use super::gather::Gather;
use super::{error_code, event_run};
use crate::accept::{ConnectionLimit, Half, SocketOptions};
use crate::busy_poll::BusyPoll;
use crate::door::{Doorway, DoorwaySettings, Lifeline, ReadSize, ReadTurn, Reader};
use crate::engine::event::unix_now_ns;
use crate::engine::{
    AckOutcome, AckRequest, AckSink, Consumer, DoorKind, Encoding, EventError, EventRef, Pattern,
    Priority, PublishError, RecentTopic, Reply, Shard, SinkId, SubState, Subscriber, Topic,
};

/// Bytes the writer gathers before it writes (and lets other subscriptions have a turn).
const WRITE_BUDGET_BYTES: usize = 256 * 1024;
/// Unsent acks and errors after which the reader stops reading: a client that pipelines
/// requests but never reads its answers slows itself down, nobody else.
const UNSENT_CONTROL_BYTES_MAX: usize = 4 << 20;
/// Largest read; reads start small and grow while the socket keeps filling them.
const READ_BYTES_MAX: usize = 64 * 1024;
/// Smallest read, and the first: the read buffer is all an idle connection holds besides its
/// structures (the other buffers are allocated by their first use), and it doubles within a
/// few reads for a client that sends a lot.
const READ_BYTES_MIN: usize = 1024;

/// What the native TCP door of one shard shares between its connections.
pub struct Door {
    doorway: Doorway,
    max_frame: usize,
}

impl Door {
    /// The door of `shard`, refusing frames over `max_frame` bytes; TLS on every connection
    /// when `tls` is set; its connections poll their sockets if `busy_poll` is given. Past
    /// `limit` (shared by every shard's door) a connection gets ERROR TooManyConnections;
    /// the others get `sockets`.
    pub fn new(
        shard: Rc<Shard>,
        max_frame: usize,
        tls: Option<Arc<rustls::ServerConfig>>,
        busy_poll: Option<Rc<BusyPoll>>,
        limit: Arc<ConnectionLimit>,
        sockets: SocketOptions,
    ) -> Rc<Door> {
        let doorway = DoorwaySettings {
            door: DoorKind::Native,
            refusal: refusal(limit.max()),
            limit,
            tls,
            busy_poll,
            sockets,
        };
        Rc::new(Door {
            doorway: Doorway::new(shard, doorway),
            max_frame,
        })
    }

    /// Accepts clients until shutdown, each served by its own task on this shard.
    pub async fn accept_loop(self: Rc<Self>, listener: TcpListener) {
        let door = self.clone();
        let serve = move |stream| {
            let door = door.clone();
            async move { Connection::serve(&door, stream).await }
        };
        self.doorway.accept_loop(listener, serve).await;
    }

    /// Completes once every connection of this door has closed.
    pub async fn drained(&self) {
        self.doorway.drained().await;
    }
}

/// What a connection over the door's limit reads before the door closes it (PROTOCOL.md §7,
/// PROTOCOL.md §8.4): one closing ERROR TooManyConnections.
fn refusal(max: usize) -> Bytes {
    let mut out = BytesMut::new();
    let msg = format!("the native door has native.max_connections ({max}) connections open");
    codec::put_error(&mut out, ErrorCode::TooManyConnections, true, 0, None, &msg);
    out.freeze()
}

/// Releases what a connection holds in the engine when its reader ends, normally or by a
/// panic (which the door contains to this one connection).
struct Release(Rc<Connection>);

impl Drop for Release {
    fn drop(&mut self) {
        let conn = &self.0;
        conn.closed.set(true);
        let subs: Vec<Subscription> = conn.subs.borrow_mut().drain().map(|(_, s)| s).collect();
        for Subscription { sub, .. } in subs {
            conn.shard.unsubscribe(&sub);
        }
        if let Some(sink) = conn.sink.take() {
            conn.shard.unregister_sink(sink);
        }
        conn.consumer.notify.notify();
    }
}

/// A request [`Connection::handle`] cannot answer at once.
enum Waiting<'a> {
    Subscribe {
        sub_id: u32,
        min_priority: u8,
        pattern: &'a [u8],
        runs: bool,
    },
    Ping {
        token: u64,
    },
}

/// A confirmed subscription of this connection.
struct Subscription {
    sub: Rc<Subscriber>,
    /// Its events are queued as EVENT_RUN records (SUBSCRIBE with FLAG_RUNS), framed when
    /// they are written.
    runs: bool,
}

struct Connection {
    shard: Rc<Shard>,
    consumer: Rc<Consumer>,
    /// Encoded acks, errors and replies, written before any event.
    control: RefCell<BytesMut>,
    /// Confirmed subscriptions by the client's id. Only these get events written.
    subs: RefCell<HashMap<u32, Subscription>>,
    /// Declared topic handles (DECLARE): the topic bound to handle `h` is at index `h`. Grows
    /// to the highest handle declared, at most `limits.max_topic_handles` + 1 entries.
    handles: RefCell<Vec<Option<Topic>>>,
    /// The reader is done: the writer flushes what is left and stops.
    closed: Cell<bool>,
    /// Its socket side, shared by its reader and its writer.
    lifeline: Rc<Lifeline>,
    /// This connection's sink registration with its shard (for refusal reports).
    sink: Cell<Option<SinkId>>,
    /// The topic this client last published to ([`Shard::validate_recent`]).
    recent: RecentTopic,
}

impl AckSink for Connection {
    fn refused(&self, request_id: u64, error: PublishError) {
        let msg = error.to_string();
        self.error(ErrorCode::PublishFailed, false, request_id, None, &msg);
    }

    fn acked(&self, request_id: u64, outcome: AckOutcome) {
        let mut control = self.control.borrow_mut();
        match outcome.result {
            Ok(()) => codec::put_ack(
                &mut control,
                request_id,
                outcome.count,
                outcome.sequence,
                outcome.latency.as_nanos() as u64,
            ),
            Err(e) => codec::put_error(
                &mut control,
                ErrorCode::PublishFailed,
                false,
                request_id,
                None,
                &e.to_string(),
            ),
        }
        self.consumer.notify.notify();
    }
}

impl Connection {
    async fn serve(door: &Rc<Door>, stream: TcpStream) {
        let Some((read_half, write_half, lifeline)) = door.doorway.open(stream) else {
            return;
        };
        let conn = Rc::new(Connection {
            shard: door.doorway.shard().clone(),
            consumer: Rc::new(Consumer::new(|out, event, sub_id| {
                codec::put_event(out, sub_id as u32, event)
            })),
            control: RefCell::new(BytesMut::new()),
            subs: RefCell::default(),
            handles: RefCell::default(),
            closed: Cell::new(false),
            sink: Cell::new(None),
            recent: RecentTopic::default(),
            lifeline,
        });
        conn.sink.set(Some(conn.shard.register_sink(conn.clone())));
        let writer = {
            let writing = conn.clone();
            (conn.lifeline).spawn_writer(async move { writing.write_loop(write_half).await })
        };
        let release = Release(conn.clone());
        conn.read_loop(read_half, door.max_frame).await;
        drop(release);
        writer.await;
        // Subscriptions on the ready list point back at the consumer: break the cycle.
        while conn.consumer.next_ready().is_some() {}
        conn.lifeline.count_if_dead(&conn.shard);
    }

    fn error(&self, code: ErrorCode, closing: bool, reference: u64, index: Option<u32>, msg: &str) {
        codec::put_error(
            &mut self.control.borrow_mut(),
            code,
            closing,
            reference,
            index,
            msg,
        );
        self.consumer.notify.notify();
    }

    async fn read_loop(self: &Rc<Self>, stream: Half, max_frame: usize) {
        // Buffers start small or empty and grow with the traffic: an idle connection holds
        // little.
        let size = ReadSize::new(READ_BYTES_MIN, READ_BYTES_MAX);
        let mut reader = Reader::new(stream, BytesMut::new(), size);
        loop {
            let backlogged = || self.control.borrow().len() > UNSENT_CONTROL_BYTES_MAX;
            let writer = &self.consumer.notify;
            match self
                .lifeline
                .read(&self.shard, &mut reader, backlogged, writer)
                .await
            {
                ReadTurn::Read => {}
                ReadTurn::ShutDown => return self.shut_down(),
                ReadTurn::End => return,
            }
            let buf = &mut reader.buf;
            let received_ns = unix_now_ns();
            // The whole frames read so far, frozen once: frames and events are read in place,
            // and what is kept of them (events someone receives) shares this one buffer.
            let (whole, framing) = codec::whole_frames(buf, max_frame);
            if whole > 0 {
                let frames = buf.split_to(whole).freeze();
                let mut at = 0;
                // Consecutive plain PUBLISH frames to one topic, published as one run.
                let mut span: Vec<(u64, EventRef<'_>)> = Vec::new();
                let max_span = self.shard.limits().max_batch_events;
                while let Ok(Some(frame)) = codec::frame_at(&frames[at..], max_frame) {
                    at += frame.wire_len;
                    let plain = codec::plain_publish(frame);
                    if let Some((request_id, event)) = plain {
                        let joins = span.first().is_none_or(|(_, e)| e.topic == event.topic);
                        if !joins || span.len() == max_span {
                            self.publish_span(&mut span, &frames, received_ns);
                        }
                        span.push((request_id, event));
                        continue;
                    }
                    self.publish_span(&mut span, &frames, received_ns);
                    // Most requests are served at once, with no future to build and poll.
                    if let Some(waiting) = self.handle(frame, &frames, received_ns) {
                        self.handle_waiting(waiting).await;
                    }
                }
                self.publish_span(&mut span, &frames, received_ns);
                debug_assert_eq!(at, whole, "every whole frame was handled");
            }
            if let Some(e) = framing {
                self.error(ErrorCode::BadLength, true, 0, None, &e.to_string());
                return;
            }
        }
    }

    /// Publishes the plain PUBLISH frames gathered from one read (all to one topic), then
    /// forgets them: one alone as it came, several as one run
    /// ([`Shard::publish_frames`]); each frame that breaks a rule gets its own ERROR.
    fn publish_span(
        self: &Rc<Self>,
        span: &mut Vec<(u64, EventRef<'_>)>,
        frames: &Bytes,
        received_ns: i64,
    ) {
        let refused = match span.as_slice() {
            [] => return,
            [(request_id, event)] => {
                let reply = self.reply(false, *request_id);
                let published =
                    (self.shard).publish_in_place(*event, frames, &self.recent, received_ns, reply);
                published
                    .err()
                    .map(|e| (*request_id, e))
                    .into_iter()
                    .collect()
            }
            several => {
                let sink = self.sink.get().expect("registered before reading");
                (self.shard).publish_frames(several, frames, &self.recent, received_ns, sink)
            }
        };
        for (request_id, e) in refused {
            self.error(error_code(&e), false, request_id, None, &e.to_string());
        }
        span.clear();
    }

    /// The server is stopping: every subscription hears it, then the connection closes.
    fn shut_down(&self) {
        for (&sub_id, Subscription { sub, .. }) in self.subs.borrow().iter() {
            self.shard.unsubscribe(sub);
            let msg = "the server is shutting down";
            self.error(ErrorCode::ShuttingDown, false, u64::from(sub_id), None, msg);
        }
        self.subs.borrow_mut().clear();
        self.error(
            ErrorCode::ShuttingDown,
            true,
            0,
            None,
            "the server is shutting down",
        );
    }

    /// Serves one request, or returns it if it must wait for other shards (then pass it to
    /// [`handle_waiting`](Self::handle_waiting)). `frame` lies in `frames`, which the events
    /// that are kept share.
    fn handle<'a>(
        self: &Rc<Self>,
        frame: FrameRef<'a>,
        frames: &Bytes,
        received_ns: i64,
    ) -> Option<Waiting<'a>> {
        let parsed = ClientFrame::parse(frame, self.shard.limits().max_batch_events);
        let frame = match parsed {
            Ok(f) => f,
            Err(e) => {
                self.error(e.code, false, e.reference, e.index, &e.message);
                return None;
            }
        };
        match frame {
            ClientFrame::Publish {
                request_id,
                ack,
                event,
            } => {
                let reply = self.reply(ack, request_id);
                let published =
                    self.shard
                        .publish_in_place(event, frames, &self.recent, received_ns, reply);
                if let Err(e) = published {
                    self.error(error_code(&e), false, request_id, None, &e.to_string());
                }
            }
            ClientFrame::PublishBatch {
                request_id,
                ack,
                events,
            } => {
                let reply = self.reply(ack, request_id);
                let published = (self.shard).publish_batch_in_place(
                    &events,
                    frames,
                    &self.recent,
                    received_ns,
                    reply,
                );
                if let Err((i, e)) = published {
                    let msg = format!("event {i}: {e}");
                    let index = Some(i as u32);
                    self.error(error_code(&e), false, request_id, index, &msg);
                }
            }
            ClientFrame::Subscribe {
                sub_id,
                min_priority,
                pattern,
                runs,
            } => {
                return Some(Waiting::Subscribe {
                    sub_id,
                    min_priority,
                    pattern,
                    runs,
                })
            }
            ClientFrame::Declare {
                request_id,
                ack,
                handle,
                topic,
            } => self.declare(request_id, ack, handle, topic),
            ClientFrame::PublishRun {
                request_id,
                ack,
                handle,
                count,
                records,
            } => {
                let handles = self.handles.borrow();
                let Some(topic) = handles.get(handle as usize).and_then(Option::as_ref) else {
                    let msg = format!("topic handle {handle} is not declared on this connection");
                    self.error(ErrorCode::UnknownHandle, false, request_id, None, &msg);
                    return None;
                };
                let reply = self.reply(ack, request_id);
                let published =
                    (self.shard).publish_run(topic, records, count, frames, received_ns, reply);
                if let Err((i, e)) = published {
                    let msg = format!("event {i}: {e}");
                    self.error(error_code(&e), false, request_id, Some(i), &msg);
                }
            }
            ClientFrame::Ping { token } => return Some(Waiting::Ping { token }),
            ClientFrame::Unsubscribe { sub_id } => {
                let sub = self.subs.borrow_mut().remove(&sub_id);
                match sub {
                    Some(Subscription { sub, .. }) => {
                        self.shard.unsubscribe(&sub);
                        let stats = sub.stats();
                        let shed = stats.shed.iter().sum();
                        codec::put_unsubscribed(
                            &mut self.control.borrow_mut(),
                            sub_id,
                            stats.delivered,
                            shed,
                        );
                        self.consumer.notify.notify();
                    }
                    None => {
                        let msg = format!("no subscription {sub_id} on this connection");
                        self.error(
                            ErrorCode::UnknownSubscription,
                            false,
                            u64::from(sub_id),
                            None,
                            &msg,
                        );
                    }
                }
            }
        }
        None
    }

    /// Serves a request that waits for other shards: a subscription is confirmed once every
    /// shard that may own a matching topic registered it, a PONG carries every shard's counters.
    async fn handle_waiting(self: &Rc<Self>, request: Waiting<'_>) {
        match request {
            Waiting::Subscribe {
                sub_id,
                min_priority,
                pattern,
                runs,
            } => self.subscribe(sub_id, min_priority, pattern, runs).await,
            Waiting::Ping { token } => {
                let totals = self.shard.ping_all().await;
                let pong = Pong {
                    token,
                    shards: self.shard.count() as u16,
                    shards_answered: self.shard.count() as u16,
                    shard: self.shard.id() as u16,
                    uptime_s: self.shard.uptime().as_secs(),
                    received: totals.received,
                    delivered: totals.delivered,
                    shed: totals.shed.iter().sum(),
                    cut: totals.cut,
                    topics: totals.topics,
                    subscriptions: totals.subscriptions,
                    datagrams_dropped: totals.datagrams_dropped,
                    refused: totals.refused,
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                };
                codec::put_pong(&mut self.control.borrow_mut(), &pong);
                self.consumer.notify.notify();
            }
        }
    }

    /// How a publish hears back: an ACK when asked for (only those start a latency clock),
    /// otherwise only refusals.
    fn reply(self: &Rc<Self>, ack: bool, request_id: u64) -> Reply {
        if ack {
            Reply::Ack(AckRequest {
                sink: self.clone(),
                request_id,
                decoded_at: Instant::now(),
            })
        } else {
            Reply::RefusalsOnly {
                sink: self.sink.get().expect("registered before reading"),
                request_id,
            }
        }
    }

    /// Binds a topic handle for PUBLISH_RUN (PROTOCOL.md §5.6): the topic is checked
    /// once here, never again per event.
    fn declare(&self, request_id: u64, ack: bool, handle: u32, topic: &[u8]) {
        let max = self.shard.limits().max_topic_handles;
        let at = handle as usize;
        if handle == 0 || at > max {
            let msg =
                format!("topic handle {handle} is not in 1..={max} (limits.max_topic_handles)");
            return self.error(ErrorCode::InvalidHandle, false, request_id, None, &msg);
        }
        if let Some(Some(bound)) = self.handles.borrow().get(at) {
            let msg = format!(
                "topic handle {handle} is already declared on this connection (as {:?})",
                bound.as_str()
            );
            return self.error(ErrorCode::InvalidHandle, false, request_id, None, &msg);
        }
        let checked = Topic::parse(Bytes::copy_from_slice(topic))
            .map_err(EventError::from)
            .and_then(|t| match t.is_reserved() {
                true => Err(EventError::ReservedTopic(t.as_str().to_owned())),
                false => Ok(t),
            });
        let topic = match checked {
            Ok(topic) => topic,
            Err(e) => {
                let msg = e.to_string();
                return self.error(error_code(&e), false, request_id, None, &msg);
            }
        };
        let mut handles = self.handles.borrow_mut();
        if handles.len() <= at {
            handles.resize(at + 1, None);
        }
        handles[at] = Some(topic);
        if ack {
            codec::put_ack(&mut self.control.borrow_mut(), request_id, 0, 0, 0);
            self.consumer.notify.notify();
        }
    }

    async fn subscribe(self: &Rc<Self>, sub_id: u32, min_priority: u8, pattern: &[u8], runs: bool) {
        let reference = u64::from(sub_id);
        let Some(min_priority) = Priority::from_u8(min_priority) else {
            let msg = format!("min priority {min_priority} is not one of 0..=4");
            return self.error(ErrorCode::Malformed, false, reference, None, &msg);
        };
        if self.subs.borrow().contains_key(&sub_id) {
            let msg = format!("subscription id {sub_id} is already in use on this connection");
            return self.error(
                ErrorCode::DuplicateSubscription,
                false,
                reference,
                None,
                &msg,
            );
        }
        let max = self.shard.limits().max_subscriptions_per_connection;
        if self.subs.borrow().len() >= max {
            let msg = format!("this connection has {max} subscriptions, the limit");
            return self.error(
                ErrorCode::TooManySubscriptions,
                false,
                reference,
                None,
                &msg,
            );
        }
        let pattern = match Pattern::parse(pattern) {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("invalid pattern: {e}");
                return self.error(ErrorCode::InvalidPattern, false, reference, None, &msg);
            }
        };
        // EVENT_RUN records do not name their subscription: a shard encodes a run once for
        // all of them.
        let encoding = match runs {
            true => Encoding::Shared(event_run::put_record),
            false => self.consumer.encoding(),
        };
        let sub = (self.shard)
            .subscribe_as(pattern, min_priority, &self.consumer, reference, encoding)
            .await;
        codec::put_subscribed(&mut self.control.borrow_mut(), sub_id);
        let subscription = Subscription {
            sub: sub.clone(),
            runs,
        };
        self.subs.borrow_mut().insert(sub_id, subscription);
        // Events may have queued while the other shards confirmed: now they may be written.
        sub.requeue();
    }

    async fn write_loop(&self, mut stream: Half) {
        // Plaintext: queued events are sent where they lie (`Gather`); TLS seals a copy.
        let mut batch = Gather::default();
        let transport = self.lifeline.transport();
        let zero_copy = !transport.is_tls();
        let mut drained: Vec<Rc<Subscriber>> = Vec::new();
        let mut wire = Vec::new();
        loop {
            let woken = self.consumer.notify.wait();
            {
                let mut control = self.control.borrow_mut();
                batch.out.extend_from_slice(&control);
                control.clear();
            }
            while batch.len() < WRITE_BUDGET_BYTES {
                let Some(sub) = self.consumer.next_ready() else {
                    break;
                };
                if self.drain_into(&sub, &mut batch, zero_copy) {
                    drained.push(sub);
                }
            }
            if batch.is_empty() && !transport.wants_write() {
                if self.closed.get() {
                    break;
                }
                woken.await;
                continue;
            }
            let wrote = if zero_copy {
                batch.send(&mut stream).await
            } else {
                transport.write(&mut stream, &batch.out, &mut wire).await
            };
            batch.clear();
            // The runs sent are let go: backlogs' buffers can be given back.
            for sub in drained.drain(..) {
                sub.trim();
            }
            if let Err(e) = wrote {
                self.lifeline.write_failed(&e, &stream);
                break;
            }
            self.lifeline.wrote();
        }
        let _ = stream.close().await;
    }

    /// Adds what `sub` has queued (within the budget) to `batch`, and its cut notice once
    /// empty: the queued runs themselves when `zero_copy`, else copies. True when it drained
    /// anything.
    fn drain_into(&self, sub: &Rc<Subscriber>, batch: &mut Gather, zero_copy: bool) -> bool {
        let sub_id = sub.tag as u32;
        let runs = match self.subs.borrow().get(&sub_id) {
            Some(s) if Rc::ptr_eq(&s.sub, sub) => s.runs,
            _ => return false, // not confirmed yet (it will be requeued), or gone
        };
        if sub.state() == SubState::Closed {
            return false;
        }
        let budget = WRITE_BUDGET_BYTES.saturating_sub(batch.len());
        let header = |out: &mut BytesMut, count: usize, len: usize| {
            if runs {
                let count = u32::try_from(count).expect("a drain hands far fewer events");
                event_run::put_frame_header(out, sub_id, count, len);
            }
        };
        let drained = if zero_copy {
            sub.drain_shared(budget, |events, count| {
                header(&mut batch.out, count, events.len());
                batch.push_run(events);
            })
        } else {
            sub.drain(budget, |events, count| {
                header(&mut batch.out, count, events.len());
                batch.out.extend_from_slice(events)
            })
        };
        let out = &mut batch.out;
        if sub.queued() > 0 {
            sub.requeue();
        } else if sub.state() == SubState::Cut {
            self.subs.borrow_mut().remove(&sub_id);
            let msg = "slow consumer: a CRITICAL event could not be queued; subscription cut";
            codec::put_error(
                out,
                ErrorCode::SlowConsumer,
                false,
                u64::from(sub_id),
                None,
                msg,
            );
        }
        drained > 0
    }
}
