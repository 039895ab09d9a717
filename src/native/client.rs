//! A blocking Rust client for the native protocol: what the CLI and the benchmark use, and a
//! reference for writing clients in other languages.
//!
//! One connection carries both requests and pushed events. While the client waits for an
//! answer (an ACK, SUBSCRIBED, PONG), events and unrelated errors that arrive first are kept
//! in order and handed out by [`Client::next_event`].

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs, UdpSocket};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};

use super::codec::{self, ErrorCode, EventFrame, FrameRef, Pong, RunWriter, ServerFrame};
use super::event_run::{Delivered, EventRunFrame};
use crate::engine::{EventRef, IdView, Priority, RawEvent};

/// Largest frame the client accepts from a server: room for events far larger than the
/// server's default limit (4 MiB), yet a bound on what a broken server can make it buffer.
const FRAME_BYTES_MAX: usize = 64 << 20;
/// Largest socket read: reads double while they come back full, up to this, so a subscriber
/// at full speed takes many frames per system call without zeroing much unused buffer.
const READ_BYTES_MAX: usize = 256 * 1024;
/// Smallest socket read, and the first: an idle or slow connection keeps little memory.
const READ_BYTES_MIN: usize = 4096;
/// The read and write buffers' first capacity: a flush's worth of requests
/// ([`FLUSH_THRESHOLD_BYTES`]) or a few reads, so neither grows in ordinary use.
const BUFFER_CAPACITY_BYTES: usize = 64 * 1024;
/// Buffered requests at which a `*_nowait` call sends them: large enough to carry many small
/// events per write, small enough that the server sees them without a long delay.
const FLUSH_THRESHOLD_BYTES: usize = 64 * 1024;

/// What can go wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("server closed the connection")]
    Closed,
    #[error("server error {code:?}{}: {message}", index.map(|i| format!(" (event {i})")).unwrap_or_default())]
    Server {
        code: ErrorCode,
        reference: u64,
        index: Option<u32>,
        message: String,
    },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("protocol violation by the server: {0}")]
    Protocol(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// The server's answer to an acknowledged publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub count: u32,
    /// The event's sequence number (for a batch, the last event's).
    pub sequence: u64,
    pub latency_ns: u64,
}

/// An event pushed to one of this client's subscriptions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub sub_id: u32,
    pub sequence: u64,
    pub event: RawEvent,
}

/// A topic declared on one connection ([`Client::topic`]): publishing through it sends a small
/// number instead of the topic's name, which the server checked once, at the declaration.
/// Valid only on the connection that declared it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicHandle(u32);

impl TopicHandle {
    /// The handle's number on the wire.
    pub fn id(self) -> u32 {
        self.0
    }
}

enum Inbound {
    Event(Delivery),
    Error(ClientError),
}

trait Io: Read + Write + Send {}
impl<T: Read + Write + Send> Io for T {}

/// A connection to the native TCP door.
pub struct Client {
    io: Box<dyn Io>,
    /// The socket itself, for timeouts (the same socket `io` reads and writes, maybe via TLS).
    socket: TcpStream,
    /// Whole frames read and not yet parsed, frozen once per read: the events parsed from
    /// them share this one buffer (no frame is cut out of it).
    frames: Bytes,
    /// Bytes read after the last whole frame.
    rbuf: BytesMut,
    wbuf: BytesMut,
    inbox: VecDeque<Inbound>,
    next_request: u64,
    next_handle: u32,
    read_size: usize,
}

impl Client {
    /// Connects to `addr` (`host:port`).
    pub fn connect(addr: &str) -> Result<Client, ClientError> {
        let stream = TcpStream::connect(addr).map_err(|source| ClientError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
        Client::from_stream(stream)
    }

    /// Connects over TLS (the native door's `native.tls`), with a client certificate when
    /// `tls` names one.
    pub fn connect_tls(addr: &str, tls: &crate::tls::ClientTls) -> Result<Client, ClientError> {
        let tcp = TcpStream::connect(addr).map_err(|source| ClientError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
        tcp.set_nodelay(true)?;
        let socket = tcp.try_clone()?;
        let stream = crate::tls::client_stream(tcp, addr, tls, &[]).map_err(ClientError::Tls)?;
        Ok(Client::over(Box::new(stream), socket))
    }

    /// Wraps a stream the caller connected (and tuned) itself.
    pub fn from_stream(stream: TcpStream) -> Result<Client, ClientError> {
        stream.set_nodelay(true)?;
        let socket = stream.try_clone()?;
        Ok(Client::over(Box::new(stream), socket))
    }

    fn over(io: Box<dyn Io>, socket: TcpStream) -> Client {
        Client {
            io,
            socket,
            frames: Bytes::new(),
            rbuf: BytesMut::with_capacity(BUFFER_CAPACITY_BYTES),
            wbuf: BytesMut::with_capacity(BUFFER_CAPACITY_BYTES),
            inbox: VecDeque::new(),
            next_request: 1,
            next_handle: 1,
            read_size: READ_BYTES_MIN,
        }
    }

    /// Waits at most `timeout` for any answer or event (None: forever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket.set_read_timeout(timeout)
    }

    /// Never waits to read: [`Client::next_event`] (and any call that waits for an answer)
    /// returns [`ClientError::Timeout`] at once when nothing has arrived. For a caller that
    /// polls in a loop, e.g. to measure latency without a wake-up per event.
    pub fn set_nonblocking(&mut self, nonblocking: bool) -> io::Result<()> {
        self.socket.set_nonblocking(nonblocking)
    }

    /// Publishes and waits until the event's topic owner sequenced it.
    pub fn publish(&mut self, event: &RawEvent) -> Result<Ack, ClientError> {
        let id = self.request_id();
        codec::put_publish(&mut self.wbuf, id, true, event);
        self.flush()?;
        self.wait_ack(id)
    }

    /// Queues a publish without asking for an answer; sent by the next [`Client::flush`] (or
    /// once 64 KiB are buffered). Errors, if any, arrive through [`Client::next_event`].
    pub fn publish_nowait(&mut self, event: &RawEvent) -> Result<(), ClientError> {
        let id = self.request_id();
        codec::put_publish(&mut self.wbuf, id, false, event);
        if self.wbuf.len() >= FLUSH_THRESHOLD_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Like [`Client::publish_nowait`] for an event with only a topic, a priority and a
    /// payload, encoded straight from the borrowed slices.
    pub fn publish_nowait_simple(
        &mut self,
        topic: &str,
        priority: Priority,
        payload: &[u8],
    ) -> Result<(), ClientError> {
        let id = self.request_id();
        codec::put_publish_simple(
            &mut self.wbuf,
            id,
            topic.as_bytes(),
            priority as u8,
            payload,
        );
        if self.wbuf.len() >= FLUSH_THRESHOLD_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Declares `topic` on this connection and waits until the server bound it: the handle
    /// publishes to it with [`publish_to`](Self::publish_to) and
    /// [`publish_run`](Self::publish_run), the fast path.
    pub fn topic(&mut self, topic: &str) -> Result<TopicHandle, ClientError> {
        let handle = self.next_handle;
        let id = self.request_id();
        codec::put_declare(&mut self.wbuf, id, true, handle, topic.as_bytes());
        self.flush()?;
        self.wait_ack(id)?;
        self.next_handle += 1;
        Ok(TopicHandle(handle))
    }

    /// Publishes one event through a topic handle and waits until it is sequenced.
    pub fn publish_to(
        &mut self,
        topic: TopicHandle,
        priority: Priority,
        payload: &[u8],
    ) -> Result<Ack, ClientError> {
        self.publish_run(topic, &[(priority, payload)])
    }

    /// Publishes `events` (priority, payload) to one topic as a run, which the server checks
    /// all-or-nothing and sequences as one unit (consecutive sequence numbers, the ACK's the
    /// last), and waits until it is sequenced.
    pub fn publish_run(
        &mut self,
        topic: TopicHandle,
        events: &[(Priority, &[u8])],
    ) -> Result<Ack, ClientError> {
        let id = self.request_id();
        self.put_run(id, true, topic, events);
        self.flush()?;
        self.wait_ack(id)
    }

    /// As [`publish_run`](Self::publish_run) without asking for an answer: sent by the next
    /// [`flush`](Self::flush) (or once 64 KiB are buffered); errors arrive through
    /// [`next_event`](Self::next_event).
    pub fn publish_run_nowait(
        &mut self,
        topic: TopicHandle,
        events: &[(Priority, &[u8])],
    ) -> Result<(), ClientError> {
        let id = self.request_id();
        self.put_run(id, false, topic, events);
        if self.wbuf.len() >= FLUSH_THRESHOLD_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn put_run(&mut self, id: u64, ack: bool, topic: TopicHandle, events: &[(Priority, &[u8])]) {
        let mut run = RunWriter::begin(&mut self.wbuf, id, ack, topic.0);
        for (priority, payload) in events {
            run.push(&mut self.wbuf, *priority as u8, 0, payload);
        }
        run.finish(&mut self.wbuf);
    }

    /// Sends frames the caller encoded itself (e.g. a PUBLISH_RUN made once with
    /// [`RunWriter`] whose payloads it patches in place between sends), after anything
    /// buffered. Their request ids are the caller's: choose ones this client's own requests
    /// cannot use, or ask for no answer.
    pub fn send_encoded(&mut self, frames: &[u8]) -> Result<(), ClientError> {
        self.flush()?;
        self.io.write_all(frames)?;
        Ok(())
    }

    /// Publishes a batch (validated all-or-nothing) and waits until all of it is sequenced.
    pub fn publish_batch(&mut self, events: &[RawEvent]) -> Result<Ack, ClientError> {
        let id = self.request_id();
        codec::put_publish_batch(&mut self.wbuf, id, true, events);
        self.flush()?;
        self.wait_ack(id)
    }

    /// Sends everything buffered.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf)?;
            self.io.flush()?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Subscribes and waits until the server confirmed; returns the subscription id that
    /// events for it carry.
    pub fn subscribe(&mut self, pattern: &str, min_priority: Priority) -> Result<u32, ClientError> {
        self.subscribe_as(pattern, min_priority, codec::put_subscribe)
    }

    /// As [`subscribe`](Self::subscribe), with the subscription's events delivered many to a
    /// frame (EVENT_RUN), to be read in place by [`next_events_with`](Self::next_events_with)
    /// ([`next_event`](Self::next_event) hands them out one by one too).
    pub fn subscribe_runs(
        &mut self,
        pattern: &str,
        min_priority: Priority,
    ) -> Result<u32, ClientError> {
        self.subscribe_as(pattern, min_priority, codec::put_subscribe_runs)
    }

    /// Sends the SUBSCRIBE `put` encodes and waits for its SUBSCRIBED.
    fn subscribe_as(
        &mut self,
        pattern: &str,
        min_priority: Priority,
        put: fn(&mut BytesMut, u32, u8, &[u8]),
    ) -> Result<u32, ClientError> {
        // Drawn from the request counter, so that an ERROR's reference is never ambiguous.
        let sub_id = u32::try_from(self.request_id()).map_err(|_| {
            ClientError::Protocol("subscription ids exhausted on this connection".into())
        })?;
        put(
            &mut self.wbuf,
            sub_id,
            min_priority as u8,
            pattern.as_bytes(),
        );
        self.flush()?;
        self.wait_for(u64::from(sub_id), |f| match f {
            ServerFrame::Subscribed { sub_id: s } if *s == sub_id => Some(()),
            _ => None,
        })?;
        Ok(sub_id)
    }

    /// Ends a subscription; returns its final (delivered, shed) counters.
    pub fn unsubscribe(&mut self, sub_id: u32) -> Result<(u64, u64), ClientError> {
        codec::put_unsubscribe(&mut self.wbuf, sub_id);
        self.flush()?;
        self.wait_for(u64::from(sub_id), |f| match f {
            ServerFrame::Unsubscribed {
                sub_id: s,
                delivered,
                shed,
            } if *s == sub_id => Some((*delivered, *shed)),
            _ => None,
        })
    }

    /// Round trip through every shard: when it returns, every publish sent before it on this
    /// connection is sequenced. Carries the server's health and counters.
    pub fn ping(&mut self) -> Result<Pong, ClientError> {
        let token = self.request_id();
        codec::put_ping(&mut self.wbuf, token);
        self.flush()?;
        self.wait_for(token, |f| match f {
            ServerFrame::Pong(p) if p.token == token => Some(p.clone()),
            _ => None,
        })
    }

    /// Whether [`next_event`](Self::next_event) has something to return without reading the
    /// socket: frames that arrived with an earlier read (a latency measurement can read its
    /// clock once per read: the frames of one read arrived together).
    pub fn has_buffered(&self) -> bool {
        !self.inbox.is_empty() || !self.frames.is_empty()
    }

    /// The next event for any subscription, or the next error the server reported on its
    /// own (a refused unacknowledged publish, a cut subscription). Blocks up to the timeout.
    pub fn next_event(&mut self) -> Result<Delivery, ClientError> {
        loop {
            match self.inbox.pop_front() {
                Some(Inbound::Event(d)) => return Ok(d),
                Some(Inbound::Error(e)) => return Err(e),
                None => {}
            }
            // Nothing stashed: an event read now goes straight to the caller.
            match self.read_frame()? {
                ServerFrame::Event {
                    sub_id,
                    sequence,
                    event,
                } => {
                    return Ok(Delivery {
                        sub_id,
                        sequence,
                        event,
                    })
                }
                other => self.stash(other)?,
            }
        }
    }

    /// As [`next_event`](Self::next_event), but hands the event to `read` where it lies in
    /// this client's read buffer: nothing copied, no reference count taken (an owned
    /// [`Delivery`] costs more than reading a small event's fields). Events that arrived while
    /// the client waited for an answer were kept owned and are lent the same way.
    pub fn next_event_with<R>(
        &mut self,
        read: impl FnOnce(&EventFrame<'_>) -> R,
    ) -> Result<R, ClientError> {
        loop {
            match self.inbox.pop_front() {
                Some(Inbound::Event(d)) => {
                    let (sub_id, sequence) = (d.sub_id, d.sequence);
                    let event = d.event.as_ref();
                    return Ok(read(&EventFrame {
                        sub_id,
                        sequence,
                        event,
                    }));
                }
                Some(Inbound::Error(e)) => return Err(e),
                None => {}
            }
            self.fill_frames()?;
            let frame = self.first_frame();
            let parsed = EventFrame::parse(frame).map_err(|e| ClientError::Protocol(e.message));
            if let Some(event) = parsed? {
                let result = read(&event);
                self.frames.advance(frame.wire_len);
                return Ok(result);
            }
            let parsed = ServerFrame::parse_in(frame, &self.frames);
            self.frames.advance(frame.wire_len);
            self.stash(parsed.map_err(|e| ClientError::Protocol(e.message))?)?;
        }
    }

    /// Hands the next events to arrive to `each` (with their subscription's id), where they
    /// lie in this client's read buffer: every event of the next EVENT_RUN, or the next single
    /// event; nothing is allocated per event. Returns how many were handed. Events kept while
    /// the client waited for an answer are lent the same way (their ids as text).
    pub fn next_events_with(
        &mut self,
        mut each: impl FnMut(u32, &Delivered<'_>),
    ) -> Result<usize, ClientError> {
        loop {
            match self.inbox.pop_front() {
                Some(Inbound::Event(d)) => {
                    each(d.sub_id, &delivered(d.sequence, &d.event.as_ref())?);
                    return Ok(1);
                }
                Some(Inbound::Error(e)) => return Err(e),
                None => {}
            }
            self.fill_frames()?;
            let frame = self.first_frame();
            let run = EventRunFrame::parse(frame).map_err(|e| ClientError::Protocol(e.message))?;
            if let Some(run) = run {
                let mut handed = 0;
                for event in run.events() {
                    each(run.sub_id, &event);
                    handed += 1;
                }
                self.frames.advance(frame.wire_len);
                return Ok(handed);
            }
            let single = EventFrame::parse(frame).map_err(|e| ClientError::Protocol(e.message))?;
            if let Some(e) = single {
                each(e.sub_id, &delivered(e.sequence, &e.event)?);
                self.frames.advance(frame.wire_len);
                return Ok(1);
            }
            let parsed = ServerFrame::parse_in(frame, &self.frames);
            self.frames.advance(frame.wire_len);
            self.stash(parsed.map_err(|e| ClientError::Protocol(e.message))?)?;
        }
    }

    fn request_id(&mut self) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        id
    }

    fn wait_ack(&mut self, id: u64) -> Result<Ack, ClientError> {
        self.wait_for(id, |f| match f {
            ServerFrame::Ack {
                request_id,
                count,
                sequence,
                latency_ns,
            } if *request_id == id => Some(Ack {
                count: *count,
                sequence: *sequence,
                latency_ns: *latency_ns,
            }),
            _ => None,
        })
    }

    /// Reads until `pick` accepts a frame or an ERROR names `reference`; keeps the rest.
    fn wait_for<T>(
        &mut self,
        reference: u64,
        mut pick: impl FnMut(&ServerFrame) -> Option<T>,
    ) -> Result<T, ClientError> {
        loop {
            let frame = self.read_frame()?;
            if let Some(found) = pick(&frame) {
                return Ok(found);
            }
            if let ServerFrame::Error {
                code,
                reference: r,
                closing,
                ..
            } = &frame
            {
                // Slow-consumer and shutdown notices are news about a subscription, never the
                // answer to a request.
                let notice = matches!(code, ErrorCode::SlowConsumer | ErrorCode::ShuttingDown);
                if (*r == reference && !notice) || *closing {
                    return Err(into_error(frame));
                }
            }
            self.stash(frame)?;
        }
    }

    fn stash(&mut self, frame: ServerFrame) -> Result<(), ClientError> {
        match frame {
            ServerFrame::Event {
                sub_id,
                sequence,
                event,
            } => self.inbox.push_back(Inbound::Event(Delivery {
                sub_id,
                sequence,
                event,
            })),
            ServerFrame::EventRun { sub_id, events } => {
                for (sequence, event) in events {
                    let d = Delivery {
                        sub_id,
                        sequence,
                        event,
                    };
                    self.inbox.push_back(Inbound::Event(d));
                }
            }
            ServerFrame::Error { closing: true, .. } => return Err(into_error(frame)),
            ServerFrame::Error { .. } => self.inbox.push_back(Inbound::Error(into_error(frame))),
            // Answers nobody waits for any more (e.g. after a timeout) are dropped.
            _ => {}
        }
        Ok(())
    }

    fn read_frame(&mut self) -> Result<ServerFrame, ClientError> {
        self.fill_frames()?;
        let frame = self.first_frame();
        let parsed = ServerFrame::parse_in(frame, &self.frames);
        self.frames.advance(frame.wire_len);
        parsed.map_err(|e| ClientError::Protocol(e.message))
    }

    /// The frame at the front of `frames` (which holds whole frames only; not empty).
    fn first_frame(&self) -> FrameRef<'_> {
        let frame = codec::frame_at(&self.frames, FRAME_BYTES_MAX);
        frame.ok().flatten().expect("frames holds whole frames")
    }

    /// Reads the socket until `frames` holds at least one whole frame.
    fn fill_frames(&mut self) -> Result<(), ClientError> {
        loop {
            if !self.frames.is_empty() {
                return Ok(());
            }
            // Let go of the last read's buffer, so that reading more can reuse it.
            self.frames = Bytes::new();
            let (whole, framing) = codec::whole_frames(&self.rbuf, FRAME_BYTES_MAX);
            if whole > 0 {
                self.frames = self.rbuf.split_to(whole).freeze();
                continue;
            }
            if let Some(e) = framing {
                return Err(ClientError::Protocol(e.to_string()));
            }
            // Zero (and read) about as much as the last read brought, not a fixed 64 KiB.
            let start = self.rbuf.len();
            self.rbuf.resize(start + self.read_size, 0);
            let n = match self.io.read(&mut self.rbuf[start..]) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    self.rbuf.truncate(start);
                    let timeout = self.socket.read_timeout()?.unwrap_or_default();
                    return Err(ClientError::Timeout(timeout));
                }
                Err(e) => {
                    self.rbuf.truncate(start);
                    return Err(e.into());
                }
            };
            self.rbuf.truncate(start + n);
            if n == 0 {
                return Err(ClientError::Closed);
            }
            // The next read is sized to this one, with a quarter to spare, and doubles while
            // reads come back full: each read zeroes what it offers the socket, so offering
            // twice what arrives was a memset as large as the data (a measurable part of a
            // subscriber's time at millions of events/s: docs/PERFORMANCE.md).
            self.read_size = if n == self.read_size {
                (n * 2).min(READ_BYTES_MAX)
            } else {
                (n + n / 4).clamp(READ_BYTES_MIN, READ_BYTES_MAX)
            };
        }
    }
}

/// An EVENT frame's event (read in place, or kept while the client waited) as
/// [`Client::next_events_with`] lends events: its id as the text it came as.
fn delivered<'a>(sequence: u64, e: &EventRef<'a>) -> Result<Delivered<'a>, ClientError> {
    let priority = Priority::from_u8(e.priority)
        .ok_or_else(|| ClientError::Protocol(format!("priority {} out of range", e.priority)))?;
    Ok(Delivered {
        sequence,
        timestamp_ns: e.timestamp_ns,
        priority,
        id: IdView::Given(e.id),
        topic: e.topic,
        metadata_count: e.metadata_count,
        metadata: e.metadata,
        payload: e.payload,
    })
}

fn into_error(frame: ServerFrame) -> ClientError {
    match frame {
        ServerFrame::Error {
            code,
            reference,
            index,
            message,
            ..
        } => ClientError::Server {
            code,
            reference,
            index,
            message,
        },
        other => ClientError::Protocol(format!("unexpected frame {other:?}")),
    }
}

/// Sends events as one datagram (or several, when they do not fit in one) to the UDP door.
/// Nothing is acknowledged: a datagram the server refuses is dropped and counted there.
pub fn publish_datagrams(addr: impl ToSocketAddrs, events: &[RawEvent]) -> Result<(), ClientError> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.connect(addr)?;
    let mut datagram = BytesMut::new();
    for event in events {
        let before = datagram.len();
        codec::put_publish(&mut datagram, 0, false, event);
        if datagram.len() > super::datagram::MAX_DATAGRAM {
            if before == 0 {
                return Err(ClientError::Protocol(format!(
                    "an event of {} bytes does not fit in a datagram",
                    datagram.len()
                )));
            }
            let next = datagram.split_off(before);
            socket.send(&datagram)?;
            datagram = next;
        }
    }
    if !datagram.is_empty() {
        socket.send(&datagram)?;
    }
    Ok(())
}
