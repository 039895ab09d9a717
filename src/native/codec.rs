//! The native binary protocol's frame bodies, both directions, with no I/O: bytes in, frames
//! out, and back. `docs/PROTOCOL.md` is the byte-for-byte description of what this file
//! implements.
//!
//! The framing every frame shares (header, kinds, cutting frames out of a stream, the error
//! types) is [`frame`](super::frame), re-exported here so that `codec::` paths name all of the
//! protocol; EVENT_RUN's body is [`event_run`](super::event_run).

use bytes::{BufMut, Bytes, BytesMut};

use super::event_run::EventRunFrame;
/// The name [`FRAME_HEADER_BYTES`] had when it was defined here, kept for the paths that use it.
pub use super::frame::FRAME_HEADER_BYTES as HEADER_LEN;
use super::frame::LENGTH_PREFIX_BYTES;
pub use super::frame::{
    frame_at, kind, next_frame, whole_frames, BodyError, ErrorCode, FrameRef, FramingError,
    RawFrame, FRAME_HEADER_BYTES,
};
use crate::engine::event::{EventRef, EventView, IdText, Metadata, RawEvent};
use crate::engine::run;

/// PUBLISH / PUBLISH_BATCH / PUBLISH_RUN flag: answer with an ACK frame once sequenced
/// (DECLARE: once the handle is bound).
pub const FLAG_ACK: u8 = 0x01;
/// SUBSCRIBE flag: deliver this subscription's events in EVENT_RUN frames.
pub const FLAG_RUNS: u8 = 0x02;
/// ERROR flag: the server closes the connection after this frame.
pub const FLAG_CLOSING: u8 = 0x01;

/// Marks "no batch index" in an ERROR frame.
pub const NO_INDEX: u32 = u32::MAX;

/// The longest message an ERROR carries (PROTOCOL.md §11): messages are ours and short, and
/// the bound keeps any ERROR far under every frame limit.
pub const ERROR_MESSAGE_BYTES_MAX: usize = 1024;

/// The longest version a PONG carries: its length travels in one byte (PROTOCOL.md §6.5).
pub const VERSION_BYTES_MAX: usize = u8::MAX as usize;

/// Bytes of a request id or PING token, the u64 that opens PUBLISH, PUBLISH_BATCH, DECLARE,
/// PUBLISH_RUN and PING: a body ERROR names its request when the body is that long.
const REQUEST_ID_BYTES: usize = 8;

/// Bytes of a subscription id, the u32 that opens SUBSCRIBE and UNSUBSCRIBE: a body ERROR
/// names its subscription when the body is that long.
const SUB_ID_BYTES: usize = 4;

/// Bytes of a topic handle (u32) in DECLARE and PUBLISH_RUN.
const HANDLE_BYTES: usize = 4;

/// Bytes of a PUBLISH_RUN's event count (u32): the last field of its prefix, which
/// [`RunWriter::finish`] patches.
const COUNT_BYTES: usize = 4;

/// A request from a client, parsed in place: its fields borrow the frame's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame<'a> {
    /// One event (PROTOCOL.md §5.1).
    Publish {
        /// Chosen by the client, echoed in the ACK or ERROR.
        request_id: u64,
        /// FLAG_ACK: answer with an ACK once the event is sequenced.
        ack: bool,
        /// The event, its fields where they lie in the frame.
        event: EventRef<'a>,
    },
    /// Many events, validated and sequenced in order (PROTOCOL.md §5.2).
    PublishBatch {
        /// Chosen by the client, echoed in the ACK or ERROR.
        request_id: u64,
        /// FLAG_ACK: answer with one ACK once the last event is sequenced.
        ack: bool,
        /// The events, their fields where they lie in the frame.
        events: Vec<EventRef<'a>>,
    },
    /// Opens a subscription (PROTOCOL.md §5.3).
    Subscribe {
        /// Chosen by the client, unique among this connection's live subscriptions.
        sub_id: u32,
        /// Events of a lower priority are not delivered.
        min_priority: u8,
        /// The topics to deliver (PROTOCOL.md §4), not yet checked.
        pattern: &'a [u8],
        /// FLAG_RUNS: events come in EVENT_RUN frames.
        runs: bool,
    },
    /// Ends a subscription (PROTOCOL.md §5.4).
    Unsubscribe {
        /// The subscription to end.
        sub_id: u32,
    },
    /// Asks for a PONG (PROTOCOL.md §5.5).
    Ping {
        /// Echoed in the PONG.
        token: u64,
    },
    /// Binds `handle` to `topic` for this connection's PUBLISH_RUN frames.
    Declare {
        /// Chosen by the client, echoed in the ACK or ERROR.
        request_id: u64,
        /// FLAG_ACK: answer with an ACK once the handle is bound.
        ack: bool,
        /// The handle PUBLISH_RUN frames will name the topic by.
        handle: u32,
        /// The topic, not yet checked.
        topic: &'a [u8],
    },
    /// `count` events of the topic bound to `handle`, in run records
    /// ([`run::split_records`]).
    PublishRun {
        /// Chosen by the client, echoed in the ACK or ERROR.
        request_id: u64,
        /// FLAG_ACK: answer with one ACK once the last event is sequenced.
        ack: bool,
        /// The topic, as this connection declared it.
        handle: u32,
        /// Events in `records`.
        count: u32,
        /// The run records, checked whole, their fields not yet validated.
        records: &'a [u8],
    },
}

/// Reads fields off a frame body, in place, turning every shortfall into a `BodyError`.
struct Reader<'a> {
    body: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self, what: &str) -> Result<[u8; N], BodyError> {
        Ok(*self.bytes(N, what)?.first_chunk().expect("N bytes"))
    }
    fn u8(&mut self, what: &str) -> Result<u8, BodyError> {
        Ok(self.take::<1>(what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, BodyError> {
        self.take(what).map(u16::from_le_bytes)
    }
    fn u32(&mut self, what: &str) -> Result<u32, BodyError> {
        self.take(what).map(u32::from_le_bytes)
    }
    fn u64(&mut self, what: &str) -> Result<u64, BodyError> {
        self.take(what).map(u64::from_le_bytes)
    }
    fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], BodyError> {
        if self.body.len() < n {
            return Err(BodyError::malformed(format!("truncated {what}")));
        }
        let (field, rest) = self.body.split_at(n);
        self.body = rest;
        Ok(field)
    }
    fn str16(&mut self, what: &str) -> Result<&'a [u8], BodyError> {
        let n = self.u16(what)?;
        self.bytes(usize::from(n), what)
    }
    fn end(&self, what: &str) -> Result<(), BodyError> {
        if self.body.is_empty() {
            Ok(())
        } else {
            Err(BodyError::malformed(format!(
                "{} unexpected bytes after {what}",
                self.body.len()
            )))
        }
    }

    /// An event record: priority, timestamp, topic, id, metadata, payload.
    fn event(&mut self) -> Result<EventRef<'a>, BodyError> {
        let priority = self.u8("priority")?;
        let timestamp_ns = self.u64("timestamp")? as i64;
        let topic = self.str16("topic")?;
        let id = self.str16("id")?;
        let metadata_count = self.u16("metadata count")?;
        let meta_len = self.u32("metadata length")? as usize;
        let metadata = self.bytes(meta_len, "metadata")?;
        Metadata::check_wire(metadata_count, metadata)?;
        let payload_len = self.u32("payload length")? as usize;
        let payload = self.bytes(payload_len, "payload")?;
        Ok(EventRef {
            topic,
            id,
            metadata_count,
            metadata,
            payload,
            priority,
            timestamp_ns,
        })
    }
}

impl<'a> ClientFrame<'a> {
    /// Parses a client frame's body. `max_batch` bounds how many events a batch may announce,
    /// checked before anything is allocated for them.
    pub fn parse(frame: FrameRef<'a>, max_batch: usize) -> Result<ClientFrame<'a>, BodyError> {
        // Errors name the request they are about whenever the body is long enough to say.
        let body = frame.body;
        let reference = match frame.kind {
            kind::PUBLISH
            | kind::PUBLISH_BATCH
            | kind::PING
            | kind::DECLARE
            | kind::PUBLISH_RUN
                if body.len() >= REQUEST_ID_BYTES =>
            {
                u64::from_le_bytes(body[..REQUEST_ID_BYTES].try_into().expect("8 bytes"))
            }
            kind::SUBSCRIBE | kind::UNSUBSCRIBE if body.len() >= SUB_ID_BYTES => u64::from(
                u32::from_le_bytes(body[..SUB_ID_BYTES].try_into().expect("4 bytes")),
            ),
            _ => 0,
        };
        ClientFrame::parse_body(frame, max_batch).map_err(|e| BodyError { reference, ..e })
    }

    fn parse_body(frame: FrameRef<'a>, max_batch: usize) -> Result<ClientFrame<'a>, BodyError> {
        let ack = frame.flags & FLAG_ACK != 0;
        let mut r = Reader { body: frame.body };
        let parsed = match frame.kind {
            kind::PUBLISH => {
                let request_id = r.u64("request id")?;
                let event = r.event()?;
                r.end("the event")?;
                ClientFrame::Publish {
                    request_id,
                    ack,
                    event,
                }
            }
            kind::PUBLISH_BATCH => {
                let request_id = r.u64("request id")?;
                let count = r.u32("event count")? as usize;
                if count > max_batch {
                    return Err(BodyError::new(
                        ErrorCode::BatchTooLarge,
                        format!("batch of {count} events, over the limit of {max_batch}"),
                    ));
                }
                let mut events = Vec::with_capacity(count);
                for i in 0..count {
                    events.push(r.event().map_err(|e| BodyError {
                        message: format!("event {i}: {}", e.message),
                        index: Some(i as u32),
                        ..e
                    })?);
                }
                r.end("the last event")?;
                ClientFrame::PublishBatch {
                    request_id,
                    ack,
                    events,
                }
            }
            kind::SUBSCRIBE => {
                let sub_id = r.u32("subscription id")?;
                let min_priority = r.u8("min priority")?;
                let pattern = r.str16("pattern")?;
                r.end("the pattern")?;
                ClientFrame::Subscribe {
                    sub_id,
                    min_priority,
                    pattern,
                    runs: frame.flags & FLAG_RUNS != 0,
                }
            }
            kind::DECLARE => {
                let request_id = r.u64("request id")?;
                let handle = r.u32("handle")?;
                let topic = r.str16("topic")?;
                r.end("the topic")?;
                ClientFrame::Declare {
                    request_id,
                    ack,
                    handle,
                    topic,
                }
            }
            kind::PUBLISH_RUN => {
                let request_id = r.u64("request id")?;
                let handle = r.u32("handle")?;
                let count = r.u32("event count")?;
                if count as usize > max_batch {
                    return Err(BodyError::new(
                        ErrorCode::BatchTooLarge,
                        format!("run of {count} events, over the limit of {max_batch}"),
                    ));
                }
                let (records, rest) = run::split_records(r.body, count).map_err(|e| BodyError {
                    index: Some(e.index),
                    ..BodyError::malformed(format!("event {}: truncated {}", e.index, e.what))
                })?;
                r.body = rest;
                r.end("the last event")?;
                ClientFrame::PublishRun {
                    request_id,
                    ack,
                    handle,
                    count,
                    records,
                }
            }
            kind::UNSUBSCRIBE => {
                let sub_id = r.u32("subscription id")?;
                r.end("the subscription id")?;
                ClientFrame::Unsubscribe { sub_id }
            }
            kind::PING => {
                let token = r.u64("token")?;
                r.end("the token")?;
                ClientFrame::Ping { token }
            }
            other => {
                return Err(BodyError::new(
                    ErrorCode::UnknownKind,
                    format!("unknown frame kind 0x{other:02x}"),
                ))
            }
        };
        Ok(parsed)
    }
}

/// The request id and event of `frame` when it is a PUBLISH that can travel in a run with
/// its neighbours: no FLAG_ACK, no id or metadata of its own, and a body that parses. Any
/// other frame (or one that does not parse: its ERROR comes from [`ClientFrame::parse`])
/// is `None`.
pub fn plain_publish(frame: FrameRef<'_>) -> Option<(u64, EventRef<'_>)> {
    if frame.kind != kind::PUBLISH || frame.flags & FLAG_ACK != 0 {
        return None;
    }
    /// A PUBLISH announces no batch, so it needs no room for one.
    const BATCH_EVENTS_MAX: usize = 0;
    match ClientFrame::parse(frame, BATCH_EVENTS_MAX) {
        Ok(ClientFrame::Publish {
            request_id, event, ..
        }) if event.id.is_empty() && event.metadata_count == 0 => Some((request_id, event)),
        _ => None,
    }
}

/// Server counters carried by PONG.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pong {
    /// From the PING.
    pub token: u64,
    /// Shards the server runs.
    pub shards: u16,
    /// Shards that answered this ping (the counters are theirs).
    pub shards_answered: u16,
    /// The shard serving this connection.
    pub shard: u16,
    /// Seconds since the serving shard started.
    pub uptime_s: u64,
    /// Events accepted from clients, server-wide, all doors.
    pub received: u64,
    /// Events taken from subscription queues to be written to their clients.
    pub delivered: u64,
    /// Events shed from subscription queues.
    pub shed: u64,
    /// Subscriptions cut as slow consumers.
    pub cut: u64,
    /// Distinct topics the server tracks.
    pub topics: u64,
    /// Live subscriptions.
    pub subscriptions: u64,
    /// UDP datagrams dropped as malformed or invalid.
    pub datagrams_dropped: u64,
    /// Events an owner shard could not sequence (each also reported to its publisher when
    /// it came over TCP).
    pub refused: u64,
    /// The server's version, at most [`VERSION_BYTES_MAX`] bytes on the wire.
    pub version: String,
}

/// What the server says, parsed (the client's side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    /// A request was sequenced or bound (PROTOCOL.md §6.1).
    Ack {
        /// From the request.
        request_id: u64,
        /// Events in the request (0 for DECLARE).
        count: u32,
        /// The (last) event's sequence number in its topic.
        sequence: u64,
        /// Server time from the request being decoded to its (last) event being sequenced.
        latency_ns: u64,
    },
    /// One event delivered to a subscription (PROTOCOL.md §6.2).
    Event {
        /// The subscription it is delivered to.
        sub_id: u32,
        /// The event's sequence number in its topic.
        sequence: u64,
        /// The event, owned.
        event: RawEvent,
    },
    /// An EVENT_RUN, its events owned: (sequence, event) in order.
    EventRun {
        /// The subscription they are delivered to.
        sub_id: u32,
        /// (sequence, event), in order.
        events: Vec<(u64, RawEvent)>,
    },
    /// A subscription is registered on every shard concerned (PROTOCOL.md §6.3).
    Subscribed {
        /// From the SUBSCRIBE.
        sub_id: u32,
    },
    /// A subscription ended (PROTOCOL.md §6.4).
    Unsubscribed {
        /// From the UNSUBSCRIBE.
        sub_id: u32,
        /// Its events taken from its queue to be written.
        delivered: u64,
        /// Its events shed.
        shed: u64,
    },
    /// The answer to a PING (PROTOCOL.md §6.5).
    Pong(Pong),
    /// A request failed, or the connection is closing (PROTOCOL.md §6.6).
    Error {
        /// What went wrong, for a program.
        code: ErrorCode,
        /// FLAG_CLOSING: the server closes the connection after this frame.
        closing: bool,
        /// The request id, subscription id or token it is about; 0 if none.
        reference: u64,
        /// The failing event of a batch or run.
        index: Option<u32>,
        /// What went wrong, for a person.
        message: String,
    },
}

/// An EVENT frame read in place: its event's fields borrow the frame, so a client that only
/// reads them takes no reference count and copies nothing ([`ServerFrame::Event`] is the
/// owned form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventFrame<'a> {
    /// The subscription it is delivered to.
    pub sub_id: u32,
    /// The event's sequence number in its topic.
    pub sequence: u64,
    /// The event, its fields where they lie in the frame.
    pub event: EventRef<'a>,
}

impl<'a> EventFrame<'a> {
    /// Parses the frame when it is an EVENT; `None` for any other kind.
    pub fn parse(frame: FrameRef<'a>) -> Result<Option<EventFrame<'a>>, BodyError> {
        if frame.kind != kind::EVENT {
            return Ok(None);
        }
        EventFrame::parse_body(frame.body).map(Some)
    }

    fn parse_body(body: &'a [u8]) -> Result<EventFrame<'a>, BodyError> {
        let mut r = Reader { body };
        let parsed = EventFrame {
            sub_id: r.u32("subscription id")?,
            sequence: r.u64("sequence")?,
            event: r.event()?,
        };
        r.end("the frame")?;
        Ok(parsed)
    }
}

impl ServerFrame {
    /// Parses a server frame cut out of the stream ([`next_frame`]).
    pub fn parse(frame: RawFrame) -> Result<ServerFrame, BodyError> {
        let in_place = FrameRef {
            kind: frame.kind,
            flags: frame.flags,
            body: &frame.body,
            wire_len: FRAME_HEADER_BYTES + frame.body.len(),
        };
        ServerFrame::parse_in(in_place, &frame.body)
    }

    /// Parses a server frame found in place ([`frame_at`]) in `buffer`: an event's fields share
    /// `buffer`, with no frame cut out of it first.
    pub fn parse_in(frame: FrameRef<'_>, buffer: &Bytes) -> Result<ServerFrame, BodyError> {
        let mut r = Reader { body: frame.body };
        let parsed = match frame.kind {
            kind::ACK => ServerFrame::Ack {
                request_id: r.u64("request id")?,
                count: r.u32("count")?,
                sequence: r.u64("sequence")?,
                latency_ns: r.u64("latency")?,
            },
            kind::EVENT => {
                // (Read to its end there.)
                let e = EventFrame::parse_body(frame.body)?;
                return Ok(ServerFrame::Event {
                    sub_id: e.sub_id,
                    sequence: e.sequence,
                    event: e.event.to_raw(buffer),
                });
            }
            kind::EVENT_RUN => {
                let run = EventRunFrame::parse_body(frame.body)?;
                let events = run.events().map(|e| (e.sequence, e.to_raw(buffer)));
                return Ok(ServerFrame::EventRun {
                    sub_id: run.sub_id,
                    events: events.collect(),
                });
            }
            kind::SUBSCRIBED => ServerFrame::Subscribed {
                sub_id: r.u32("subscription id")?,
            },
            kind::UNSUBSCRIBED => ServerFrame::Unsubscribed {
                sub_id: r.u32("subscription id")?,
                delivered: r.u64("delivered")?,
                shed: r.u64("shed")?,
            },
            kind::PONG => {
                let mut p = Pong {
                    token: r.u64("token")?,
                    shards: r.u16("shards")?,
                    shards_answered: r.u16("shards answered")?,
                    shard: r.u16("shard")?,
                    ..Pong::default()
                };
                for field in [
                    &mut p.uptime_s,
                    &mut p.received,
                    &mut p.delivered,
                    &mut p.shed,
                    &mut p.cut,
                    &mut p.topics,
                    &mut p.subscriptions,
                    &mut p.datagrams_dropped,
                    &mut p.refused,
                ] {
                    *field = r.u64("counter")?;
                }
                let len = r.u8("version length")?;
                let v = r.bytes(usize::from(len), "version")?;
                p.version = String::from_utf8_lossy(v).into_owned();
                ServerFrame::Pong(p)
            }
            kind::ERROR => {
                let code = ErrorCode::from_u16(r.u16("code")?);
                let reference = r.u64("reference")?;
                let index = r.u32("index")?;
                let message = r.str16("message")?;
                ServerFrame::Error {
                    code,
                    closing: frame.flags & FLAG_CLOSING != 0,
                    reference,
                    index: (index != NO_INDEX).then_some(index),
                    message: String::from_utf8_lossy(message).into_owned(),
                }
            }
            other => {
                return Err(BodyError::new(
                    ErrorCode::UnknownKind,
                    format!("unknown frame kind 0x{other:02x}"),
                ))
            }
        };
        r.end("the frame")?;
        Ok(parsed)
    }
}

/// Writes a frame: header with a length patched in after `body` wrote the rest.
fn frame(out: &mut BytesMut, kind: u8, flags: u8, body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u32_le(0);
    out.put_u8(kind);
    out.put_u8(flags);
    body(out);
    let length = (out.len() - start - LENGTH_PREFIX_BYTES) as u32;
    out[start..start + LENGTH_PREFIX_BYTES].copy_from_slice(&length.to_le_bytes());
}

fn put_str16(out: &mut BytesMut, s: &[u8]) {
    debug_assert!(s.len() <= usize::from(u16::MAX));
    out.put_u16_le(s.len() as u16);
    out.put_slice(s);
}

/// Event record fields, shared by what clients send and what the server pushes.
fn put_event_record(
    out: &mut BytesMut,
    priority: u8,
    timestamp_ns: i64,
    topic: &[u8],
    id: &[u8],
    (metadata_count, metadata): (u16, &[u8]),
    payload: &[u8],
) {
    out.put_u8(priority);
    out.put_i64_le(timestamp_ns);
    put_str16(out, topic);
    put_str16(out, id);
    out.put_u16_le(metadata_count);
    out.put_u32_le(metadata.len() as u32);
    out.put_slice(metadata);
    out.put_u32_le(payload.len() as u32);
    out.put_slice(payload);
}

fn put_raw_event(out: &mut BytesMut, e: &RawEvent) {
    put_event_record(
        out,
        e.priority,
        e.timestamp_ns,
        &e.topic,
        &e.id,
        (e.metadata.len() as u16, e.metadata.wire()),
        &e.payload,
    );
}

/// Client: PUBLISH.
pub fn put_publish(out: &mut BytesMut, request_id: u64, ack: bool, event: &RawEvent) {
    frame(out, kind::PUBLISH, if ack { FLAG_ACK } else { 0 }, |out| {
        out.put_u64_le(request_id);
        put_raw_event(out, event);
    });
}

/// Client: PUBLISH of an event with no id, timestamp or metadata, from borrowed parts (no
/// `Bytes` to build per event: what a tight publishing loop wants).
pub fn put_publish_simple(
    out: &mut BytesMut,
    request_id: u64,
    topic: &[u8],
    priority: u8,
    payload: &[u8],
) {
    frame(out, kind::PUBLISH, 0, |out| {
        out.put_u64_le(request_id);
        put_event_record(out, priority, 0, topic, &[], (0, &[]), payload);
    });
}

/// Client: PUBLISH_BATCH.
pub fn put_publish_batch(out: &mut BytesMut, request_id: u64, ack: bool, events: &[RawEvent]) {
    frame(
        out,
        kind::PUBLISH_BATCH,
        if ack { FLAG_ACK } else { 0 },
        |out| {
            out.put_u64_le(request_id);
            out.put_u32_le(events.len() as u32);
            for e in events {
                put_raw_event(out, e);
            }
        },
    );
}

/// Client: SUBSCRIBE.
pub fn put_subscribe(out: &mut BytesMut, sub_id: u32, min_priority: u8, pattern: &[u8]) {
    put_subscribe_flagged(out, 0, sub_id, min_priority, pattern);
}

/// Client: SUBSCRIBE with FLAG_RUNS (events come in EVENT_RUN frames).
pub fn put_subscribe_runs(out: &mut BytesMut, sub_id: u32, min_priority: u8, pattern: &[u8]) {
    put_subscribe_flagged(out, FLAG_RUNS, sub_id, min_priority, pattern);
}

fn put_subscribe_flagged(out: &mut BytesMut, flags: u8, sub_id: u32, priority: u8, pattern: &[u8]) {
    frame(out, kind::SUBSCRIBE, flags, |out| {
        out.put_u32_le(sub_id);
        out.put_u8(priority);
        put_str16(out, pattern);
    });
}

/// Client: DECLARE, binding `handle` to `topic` on this connection.
pub fn put_declare(out: &mut BytesMut, request_id: u64, ack: bool, handle: u32, topic: &[u8]) {
    frame(out, kind::DECLARE, if ack { FLAG_ACK } else { 0 }, |out| {
        out.put_u64_le(request_id);
        out.put_u32_le(handle);
        put_str16(out, topic);
    });
}

/// Client: a PUBLISH_RUN being written, event by event, into a buffer: begun by
/// [`RunWriter::begin`], each event appended by [`push`](RunWriter::push), and its count
/// and length filled in by [`finish`](RunWriter::finish). A client that sends the same shape
/// of run again can keep the finished frame and patch payloads in place
/// ([`RunWriter::payload_offsets`] says where they are).
pub struct RunWriter {
    start: usize,
    count: u32,
}

/// Bytes of a PUBLISH_RUN before its first record: frame header, request id, handle, count.
pub const RUN_PREFIX_BYTES: usize =
    FRAME_HEADER_BYTES + REQUEST_ID_BYTES + HANDLE_BYTES + COUNT_BYTES;

impl RunWriter {
    /// Starts a PUBLISH_RUN at the end of `out`.
    pub fn begin(out: &mut BytesMut, request_id: u64, ack: bool, handle: u32) -> RunWriter {
        let start = out.len();
        out.put_u32_le(0);
        out.put_u8(kind::PUBLISH_RUN);
        out.put_u8(if ack { FLAG_ACK } else { 0 });
        out.put_u64_le(request_id);
        out.put_u32_le(handle);
        out.put_u32_le(0);
        RunWriter { start, count: 0 }
    }

    /// Appends one event.
    pub fn push(&mut self, out: &mut BytesMut, priority: u8, timestamp_ns: i64, payload: &[u8]) {
        out.put_u8(priority);
        out.put_i64_le(timestamp_ns);
        out.put_u32_le(payload.len() as u32);
        out.put_slice(payload);
        self.count += 1;
    }

    /// Events appended so far.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Fills in the frame's length and count.
    pub fn finish(self, out: &mut BytesMut) {
        let length = (out.len() - self.start - LENGTH_PREFIX_BYTES) as u32;
        out[self.start..self.start + LENGTH_PREFIX_BYTES].copy_from_slice(&length.to_le_bytes());
        let count_at = self.start + RUN_PREFIX_BYTES - COUNT_BYTES;
        out[count_at..count_at + COUNT_BYTES].copy_from_slice(&self.count.to_le_bytes());
    }

    /// Where each payload starts in a finished PUBLISH_RUN `frame` (for patching in place).
    pub fn payload_offsets(frame: &[u8]) -> Vec<usize> {
        let records = &frame[RUN_PREFIX_BYTES..];
        let mut offsets = Vec::new();
        let mut at = 0;
        for event in run::events(records) {
            offsets.push(RUN_PREFIX_BYTES + at + run::RECORD_HEADER_BYTES);
            at += run::RECORD_HEADER_BYTES + event.payload.len();
        }
        offsets
    }
}

/// Client: UNSUBSCRIBE.
pub fn put_unsubscribe(out: &mut BytesMut, sub_id: u32) {
    frame(out, kind::UNSUBSCRIBE, 0, |out| out.put_u32_le(sub_id));
}

/// Client: PING.
pub fn put_ping(out: &mut BytesMut, token: u64) {
    frame(out, kind::PING, 0, |out| out.put_u64_le(token));
}

/// Server: ACK.
pub fn put_ack(out: &mut BytesMut, request_id: u64, count: u32, sequence: u64, latency_ns: u64) {
    frame(out, kind::ACK, 0, |out| {
        out.put_u64_le(request_id);
        out.put_u32_le(count);
        out.put_u64_le(sequence);
        out.put_u64_le(latency_ns);
    });
}

/// Server: EVENT, pushed to subscription `sub_id`.
pub fn put_event(out: &mut BytesMut, sub_id: u32, event: &EventView<'_>) {
    frame(out, kind::EVENT, 0, |out| {
        out.put_u32_le(sub_id);
        out.put_u64_le(event.sequence);
        put_event_record(
            out,
            event.priority as u8,
            event.timestamp_ns,
            event.topic,
            event.id.text(&mut IdText::default()),
            (event.metadata_count, event.metadata),
            event.payload,
        );
    });
}

/// Server: SUBSCRIBED.
pub fn put_subscribed(out: &mut BytesMut, sub_id: u32) {
    frame(out, kind::SUBSCRIBED, 0, |out| out.put_u32_le(sub_id));
}

/// Server: UNSUBSCRIBED, with the subscription's final counters.
pub fn put_unsubscribed(out: &mut BytesMut, sub_id: u32, delivered: u64, shed: u64) {
    frame(out, kind::UNSUBSCRIBED, 0, |out| {
        out.put_u32_le(sub_id);
        out.put_u64_le(delivered);
        out.put_u64_le(shed);
    });
}

/// Server: PONG.
pub fn put_pong(out: &mut BytesMut, p: &Pong) {
    frame(out, kind::PONG, 0, |out| {
        out.put_u64_le(p.token);
        out.put_u16_le(p.shards);
        out.put_u16_le(p.shards_answered);
        out.put_u16_le(p.shard);
        for v in [
            p.uptime_s,
            p.received,
            p.delivered,
            p.shed,
            p.cut,
            p.topics,
            p.subscriptions,
            p.datagrams_dropped,
            p.refused,
        ] {
            out.put_u64_le(v);
        }
        let v = &p.version.as_bytes()[..p.version.len().min(VERSION_BYTES_MAX)];
        out.put_u8(v.len() as u8);
        out.put_slice(v);
    });
}

/// Server: ERROR. `reference` is the request id, subscription id or token it is about (0 if
/// none); `index` the failing event of a batch.
pub fn put_error(
    out: &mut BytesMut,
    code: ErrorCode,
    closing: bool,
    reference: u64,
    index: Option<u32>,
    message: &str,
) {
    // Messages are ours and short; cut at a char boundary if one ever is not.
    let mut end = message.len().min(ERROR_MESSAGE_BYTES_MAX);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    frame(
        out,
        kind::ERROR,
        if closing { FLAG_CLOSING } else { 0 },
        |out| {
            out.put_u16_le(code as u16);
            out.put_u64_le(reference);
            out.put_u32_le(index.unwrap_or(NO_INDEX));
            put_str16(out, &message.as_bytes()[..end]);
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::event::{Event, EventId, Priority};
    use crate::engine::topic::Topic;
    use proptest::prelude::*;

    /// The frame limit of these tests: far over any frame they build, as a server's is over
    /// any frame it expects.
    const FRAME_BYTES_MAX: usize = 1 << 20;

    /// The batch limit of these tests: the server's default (PROTOCOL.md §11), far over any
    /// batch or run they build.
    const BATCH_EVENTS_MAX: usize = 10_000;

    fn raw_event() -> impl Strategy<Value = RawEvent> {
        (
            any::<u8>(),
            any::<i64>(),
            "[a-z/]{0,20}",
            "[a-z0-9-]{0,40}",
            prop::collection::vec(("[a-z]{0,8}", "\\PC{0,8}"), 0..4),
            prop::collection::vec(any::<u8>(), 0..200),
        )
            .prop_map(
                |(priority, timestamp_ns, topic, id, meta, payload)| RawEvent {
                    topic: Bytes::from(topic),
                    id: Bytes::from(id),
                    payload: Bytes::from(payload),
                    metadata: Metadata::from_pairs(
                        meta.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                    )
                    .unwrap(),
                    priority,
                    timestamp_ns,
                },
            )
    }

    /// A client frame as the tests build it, owning its fields; parsing its encoding must
    /// give [`Sent::as_frame`].
    #[derive(Debug, Clone)]
    enum Sent {
        Publish {
            request_id: u64,
            ack: bool,
            event: RawEvent,
        },
        PublishBatch {
            request_id: u64,
            ack: bool,
            events: Vec<RawEvent>,
        },
        Subscribe {
            sub_id: u32,
            min_priority: u8,
            pattern: Bytes,
            runs: bool,
        },
        Unsubscribe {
            sub_id: u32,
        },
        Ping {
            token: u64,
        },
        Declare {
            request_id: u64,
            ack: bool,
            handle: u32,
            topic: Bytes,
        },
        PublishRun {
            request_id: u64,
            ack: bool,
            handle: u32,
            /// (priority, timestamp, payload)
            events: Vec<(u8, i64, Vec<u8>)>,
            /// The records as encoded (what the parse must point at).
            records: Bytes,
        },
    }

    impl Sent {
        fn as_frame(&self) -> ClientFrame<'_> {
            match self {
                Sent::Publish {
                    request_id,
                    ack,
                    event,
                } => ClientFrame::Publish {
                    request_id: *request_id,
                    ack: *ack,
                    event: event.as_ref(),
                },
                Sent::PublishBatch {
                    request_id,
                    ack,
                    events,
                } => ClientFrame::PublishBatch {
                    request_id: *request_id,
                    ack: *ack,
                    events: events.iter().map(RawEvent::as_ref).collect(),
                },
                Sent::Subscribe {
                    sub_id,
                    min_priority,
                    pattern,
                    runs,
                } => ClientFrame::Subscribe {
                    sub_id: *sub_id,
                    min_priority: *min_priority,
                    pattern,
                    runs: *runs,
                },
                Sent::Unsubscribe { sub_id } => ClientFrame::Unsubscribe { sub_id: *sub_id },
                Sent::Ping { token } => ClientFrame::Ping { token: *token },
                Sent::Declare {
                    request_id,
                    ack,
                    handle,
                    topic,
                } => ClientFrame::Declare {
                    request_id: *request_id,
                    ack: *ack,
                    handle: *handle,
                    topic,
                },
                Sent::PublishRun {
                    request_id,
                    ack,
                    handle,
                    events,
                    records,
                } => ClientFrame::PublishRun {
                    request_id: *request_id,
                    ack: *ack,
                    handle: *handle,
                    count: events.len() as u32,
                    records,
                },
            }
        }
    }

    /// A frame cut out by the client side's [`next_frame`], seen in place.
    fn in_place(raw: &RawFrame) -> FrameRef<'_> {
        FrameRef {
            kind: raw.kind,
            flags: raw.flags,
            body: &raw.body,
            wire_len: FRAME_HEADER_BYTES + raw.body.len(),
        }
    }

    fn client_frame() -> impl Strategy<Value = Sent> {
        prop_oneof![
            (any::<u64>(), any::<bool>(), raw_event()).prop_map(|(request_id, ack, event)| {
                Sent::Publish {
                    request_id,
                    ack,
                    event,
                }
            }),
            (
                any::<u64>(),
                any::<bool>(),
                prop::collection::vec(raw_event(), 0..5)
            )
                .prop_map(|(request_id, ack, events)| Sent::PublishBatch {
                    request_id,
                    ack,
                    events
                }),
            (any::<u32>(), any::<u8>(), "[a-z/*]{0,30}", any::<bool>()).prop_map(
                |(sub_id, min_priority, p, runs)| Sent::Subscribe {
                    sub_id,
                    min_priority,
                    pattern: Bytes::from(p),
                    runs,
                }
            ),
            any::<u32>().prop_map(|sub_id| Sent::Unsubscribe { sub_id }),
            any::<u64>().prop_map(|token| Sent::Ping { token }),
            (any::<u64>(), any::<bool>(), any::<u32>(), "[a-z/]{0,30}").prop_map(
                |(request_id, ack, handle, topic)| Sent::Declare {
                    request_id,
                    ack,
                    handle,
                    topic: Bytes::from(topic),
                }
            ),
            (
                any::<u64>(),
                any::<bool>(),
                any::<u32>(),
                prop::collection::vec(
                    (
                        any::<u8>(),
                        any::<i64>(),
                        prop::collection::vec(any::<u8>(), 0..60)
                    ),
                    0..6
                )
            )
                .prop_map(|(request_id, ack, handle, events)| {
                    let mut records = BytesMut::new();
                    for (priority, ts, payload) in &events {
                        records.put_u8(*priority);
                        records.put_i64_le(*ts);
                        records.put_u32_le(payload.len() as u32);
                        records.put_slice(payload);
                    }
                    Sent::PublishRun {
                        request_id,
                        ack,
                        handle,
                        events,
                        records: records.freeze(),
                    }
                }),
        ]
    }

    fn encode(f: &Sent, out: &mut BytesMut) {
        match f {
            Sent::Publish {
                request_id,
                ack,
                event,
            } => put_publish(out, *request_id, *ack, event),
            Sent::PublishBatch {
                request_id,
                ack,
                events,
            } => put_publish_batch(out, *request_id, *ack, events),
            Sent::Subscribe {
                sub_id,
                min_priority,
                pattern,
                runs: false,
            } => put_subscribe(out, *sub_id, *min_priority, pattern),
            Sent::Subscribe {
                sub_id,
                min_priority,
                pattern,
                runs: true,
            } => put_subscribe_runs(out, *sub_id, *min_priority, pattern),
            Sent::Unsubscribe { sub_id } => put_unsubscribe(out, *sub_id),
            Sent::Ping { token } => put_ping(out, *token),
            Sent::Declare {
                request_id,
                ack,
                handle,
                topic,
            } => put_declare(out, *request_id, *ack, *handle, topic),
            Sent::PublishRun {
                request_id,
                ack,
                handle,
                events,
                ..
            } => {
                let mut run = RunWriter::begin(out, *request_id, *ack, *handle);
                for (priority, ts, payload) in events {
                    run.push(out, *priority, *ts, payload);
                }
                run.finish(out);
            }
        }
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]
        #[test]
        fn client_frames_round_trip_in_a_pipelined_stream(frames in prop::collection::vec(client_frame(), 1..6)) {
            let mut buf = BytesMut::new();
            for f in &frames { encode(f, &mut buf); }
            // In place, as the server reads them: all whole, in order, nothing left over.
            prop_assert_eq!(whole_frames(&buf, FRAME_BYTES_MAX), (buf.len(), None));
            let mut at = 0;
            for f in &frames {
                let frame = frame_at(&buf[at..], FRAME_BYTES_MAX).unwrap().unwrap();
                at += frame.wire_len;
                prop_assert_eq!(ClientFrame::parse(frame, BATCH_EVENTS_MAX).unwrap(), f.as_frame());
            }
            prop_assert_eq!(at, buf.len());
            // Cut out, as clients read them.
            for f in &frames {
                let raw = next_frame(&mut buf, FRAME_BYTES_MAX).unwrap().unwrap();
                prop_assert_eq!(ClientFrame::parse(in_place(&raw), BATCH_EVENTS_MAX).unwrap(), f.as_frame());
            }
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn a_truncated_body_is_an_error_not_a_panic(f in client_frame(), cut in any::<prop::sample::Index>()) {
            let mut whole = BytesMut::new();
            encode(&f, &mut whole);
            let raw = next_frame(&mut whole, FRAME_BYTES_MAX).unwrap().unwrap();
            if raw.body.is_empty() { return Ok(()); }
            let cut = cut.index(raw.body.len());
            let short = RawFrame { body: raw.body.slice(..cut), ..raw };
            prop_assert!(ClientFrame::parse(in_place(&short), BATCH_EVENTS_MAX).is_err());
        }

        #[test]
        fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let (whole, _) = whole_frames(&buf, FRAME_BYTES_MAX);
            let mut at = 0;
            while let Ok(Some(frame)) = frame_at(&buf[at..whole], FRAME_BYTES_MAX) {
                at += frame.wire_len;
                let _ = ClientFrame::parse(frame, BATCH_EVENTS_MAX);
            }
            prop_assert_eq!(at, whole);
            while let Ok(Some(raw)) = next_frame(&mut buf, FRAME_BYTES_MAX) {
                let _ = ServerFrame::parse(raw);
            }
        }
    }

    #[test]
    fn simple_publish_is_a_publish() {
        let mut a = BytesMut::new();
        let mut b = BytesMut::new();
        let e = RawEvent {
            topic: Bytes::from_static(b"t/x"),
            payload: Bytes::from_static(b"p"),
            priority: 3,
            ..RawEvent::default()
        };
        put_publish(&mut a, 5, false, &e);
        put_publish_simple(&mut b, 5, b"t/x", 3, b"p");
        assert_eq!(a, b);
    }

    #[test]
    fn batch_count_is_checked_before_allocating() {
        let mut buf = BytesMut::new();
        frame(&mut buf, kind::PUBLISH_BATCH, 0, |out| {
            out.put_u64_le(1);
            out.put_u32_le(u32::MAX);
        });
        let raw = next_frame(&mut buf, FRAME_BYTES_MAX).unwrap().unwrap();
        let err = ClientFrame::parse(in_place(&raw), BATCH_EVENTS_MAX).unwrap_err();
        assert_eq!(err.code, ErrorCode::BatchTooLarge);
    }

    fn hex(text: &str) -> Vec<u8> {
        let bytes = text.split_whitespace();
        bytes.map(|b| u8::from_str_radix(b, 16).unwrap()).collect()
    }

    /// The worked example of docs/PROTOCOL.md, "13. Worked example: the fast path", byte for
    /// byte: DECLARE then PUBLISH_RUN.
    #[test]
    fn the_documented_fast_path_frames_are_what_the_codec_writes_and_reads() {
        let mut out = BytesMut::new();
        put_declare(&mut out, 1, true, 1, b"sensors/t1");
        let declare = "1a 00 00 00 06 01 01 00 00 00 00 00 00 00 01 00 00 00 \
                       0a 00 73 65 6e 73 6f 72 73 2f 74 31";
        assert_eq!(out[..], hex(&declare.replace('\\', ""))[..]);
        let frame = frame_at(&out, FRAME_BYTES_MAX).unwrap().unwrap();
        let parsed = ClientFrame::parse(frame, BATCH_EVENTS_MAX).unwrap();
        let want = ClientFrame::Declare {
            request_id: 1,
            ack: true,
            handle: 1,
            topic: b"sensors/t1",
        };
        assert_eq!(parsed, want);

        let mut out = BytesMut::new();
        let mut run = RunWriter::begin(&mut out, 2, true, 1);
        run.push(&mut out, 2, 0, b"hi");
        run.push(&mut out, 3, 0, b"yo");
        run.finish(&mut out);
        let publish_run = "30 00 00 00 07 01 02 00 00 00 00 00 00 00 01 00 00 00 02 00 00 00 \
                           02 00 00 00 00 00 00 00 00 02 00 00 00 68 69 \
                           03 00 00 00 00 00 00 00 00 02 00 00 00 79 6f";
        assert_eq!(out[..], hex(&publish_run.replace('\\', ""))[..]);
        assert_eq!(RunWriter::payload_offsets(&out), [35, 50]);
        let frame = frame_at(&out, FRAME_BYTES_MAX).unwrap().unwrap();
        let ClientFrame::PublishRun {
            request_id: 2,
            ack: true,
            handle: 1,
            count: 2,
            records,
        } = ClientFrame::parse(frame, BATCH_EVENTS_MAX).unwrap()
        else {
            panic!("not the documented run")
        };
        let events: Vec<_> = run::events(records)
            .map(|e| (e.priority, e.payload))
            .collect();
        assert_eq!(events, [(2, &b"hi"[..]), (3, &b"yo"[..])]);
    }

    #[test]
    fn only_unacknowledged_publishes_without_id_or_metadata_are_plain() {
        let plain = RawEvent {
            topic: Bytes::from_static(b"a/b"),
            payload: Bytes::from_static(b"x"),
            priority: 2,
            ..RawEvent::default()
        };
        let with_id = RawEvent {
            id: Bytes::from_static(b"mine"),
            ..plain.clone()
        };
        let with_metadata = RawEvent {
            metadata: Metadata::from_pairs([("k", "v")]).unwrap(),
            ..plain.clone()
        };
        let cases = [
            (plain.clone(), false, true),
            (plain, true, false),
            (with_id, false, false),
            (with_metadata, false, false),
        ];
        for (event, ack, want) in cases {
            let mut buf = BytesMut::new();
            put_publish(&mut buf, 7, ack, &event);
            let frame = frame_at(&buf, FRAME_BYTES_MAX).unwrap().unwrap();
            let got = plain_publish(frame);
            assert_eq!(got.is_some(), want, "{event:?} ack {ack}");
            if let Some((id, e)) = got {
                assert_eq!((id, e.payload), (7, &b"x"[..]));
            }
        }
        let mut buf = BytesMut::new();
        put_ping(&mut buf, 1);
        assert_eq!(
            plain_publish(frame_at(&buf, FRAME_BYTES_MAX).unwrap().unwrap()),
            None
        );
    }

    #[test]
    fn a_run_s_count_is_checked_before_its_records_and_a_short_record_is_named() {
        let mut buf = BytesMut::new();
        frame(&mut buf, kind::PUBLISH_RUN, 0, |out| {
            out.put_u64_le(9);
            out.put_u32_le(1);
            out.put_u32_le(u32::MAX);
        });
        let frame_ref = frame_at(&buf, FRAME_BYTES_MAX).unwrap().unwrap();
        let err = ClientFrame::parse(frame_ref, BATCH_EVENTS_MAX).unwrap_err();
        assert_eq!((err.code, err.reference), (ErrorCode::BatchTooLarge, 9));

        let mut buf = BytesMut::new();
        let mut run = RunWriter::begin(&mut buf, 9, false, 1);
        run.push(&mut buf, 2, 0, b"whole");
        run.push(&mut buf, 2, 0, b"cut");
        run.finish(&mut buf);
        buf.truncate(buf.len() - 1);
        let length = (buf.len() - LENGTH_PREFIX_BYTES) as u32;
        buf[..LENGTH_PREFIX_BYTES].copy_from_slice(&length.to_le_bytes());
        let frame_ref = frame_at(&buf, FRAME_BYTES_MAX).unwrap().unwrap();
        let err = ClientFrame::parse(frame_ref, BATCH_EVENTS_MAX).unwrap_err();
        assert_eq!((err.code, err.reference), (ErrorCode::Malformed, 9));
        assert_eq!(err.index, Some(1));
        assert_eq!(err.message, "event 1: truncated payload");
    }

    #[test]
    fn batch_errors_name_the_event_index() {
        let good = RawEvent {
            topic: Bytes::from_static(b"a"),
            ..RawEvent::default()
        };
        let mut buf = BytesMut::new();
        put_publish_batch(&mut buf, 9, true, &[good.clone(), good]);
        let raw = next_frame(&mut buf, FRAME_BYTES_MAX).unwrap().unwrap();
        let short = RawFrame {
            body: raw.body.slice(..raw.body.len() - 3),
            ..raw
        };
        let err = ClientFrame::parse(in_place(&short), BATCH_EVENTS_MAX).unwrap_err();
        assert!(err.message.starts_with("event 1:"), "{}", err.message);
        assert_eq!((err.reference, err.index), (9, Some(1)));
    }

    #[test]
    fn body_errors_name_their_request() {
        let mut buf = BytesMut::new();
        frame(&mut buf, kind::PUBLISH, FLAG_ACK, |out| {
            out.put_u64_le(77);
            out.put_u8(2);
        });
        let raw = next_frame(&mut buf, FRAME_BYTES_MAX).unwrap().unwrap();
        let err = ClientFrame::parse(in_place(&raw), BATCH_EVENTS_MAX).unwrap_err();
        assert_eq!(
            (err.code, err.reference, err.index),
            (ErrorCode::Malformed, 77, None)
        );
    }

    #[test]
    fn unknown_kinds_are_skippable_errors() {
        let mut buf = BytesMut::new();
        frame(&mut buf, 0x7f, 0, |out| out.put_u8(1));
        put_ping(&mut buf, 3);
        let raw = next_frame(&mut buf, FRAME_BYTES_MAX).unwrap().unwrap();
        assert_eq!(
            ClientFrame::parse(in_place(&raw), BATCH_EVENTS_MAX)
                .unwrap_err()
                .code,
            ErrorCode::UnknownKind
        );
        let raw = next_frame(&mut buf, FRAME_BYTES_MAX).unwrap().unwrap();
        assert_eq!(
            ClientFrame::parse(in_place(&raw), BATCH_EVENTS_MAX).unwrap(),
            ClientFrame::Ping { token: 3 }
        );
    }

    #[test]
    fn server_frames_round_trip() {
        let event = Event {
            topic: Topic::parse(Bytes::from_static(b"sensors/t1")).unwrap(),
            id: EventId::Generated(uuid::Uuid::now_v7()),
            payload: Bytes::from_static(b"payload"),
            metadata: Metadata::from_pairs([("k", "v")]).unwrap(),
            priority: Priority::High,
            timestamp_ns: 12,
            sequence: 77,
        };
        let pong = Pong {
            token: 5,
            shards: 4,
            shards_answered: 4,
            uptime_s: 9,
            version: "0.1.0".into(),
            ..Pong::default()
        };
        let mut buf = BytesMut::new();
        put_ack(&mut buf, 1, 2, 3, 4);
        put_event(&mut buf, 7, &event.view());
        put_subscribed(&mut buf, 8);
        put_unsubscribed(&mut buf, 8, 10, 2);
        put_pong(&mut buf, &pong);
        put_error(
            &mut buf,
            ErrorCode::SlowConsumer,
            false,
            8,
            None,
            "slow consumer",
        );
        let mut next =
            || ServerFrame::parse(next_frame(&mut buf, FRAME_BYTES_MAX).unwrap().unwrap()).unwrap();
        assert_eq!(
            next(),
            ServerFrame::Ack {
                request_id: 1,
                count: 2,
                sequence: 3,
                latency_ns: 4
            }
        );
        let ServerFrame::Event {
            sub_id: 7,
            sequence: 77,
            event: raw,
        } = next()
        else {
            panic!()
        };
        assert_eq!(raw.id, Bytes::from(event.id.to_string()));
        assert_eq!(
            (raw.topic, raw.payload, raw.priority),
            (event.topic.bytes().clone(), event.payload.clone(), 3)
        );
        assert_eq!(raw.metadata, event.metadata);
        assert_eq!(next(), ServerFrame::Subscribed { sub_id: 8 });
        assert_eq!(
            next(),
            ServerFrame::Unsubscribed {
                sub_id: 8,
                delivered: 10,
                shed: 2
            }
        );
        assert_eq!(next(), ServerFrame::Pong(pong));
        assert_eq!(
            next(),
            ServerFrame::Error {
                code: ErrorCode::SlowConsumer,
                closing: false,
                reference: 8,
                index: None,
                message: "slow consumer".into()
            }
        );
    }
}
