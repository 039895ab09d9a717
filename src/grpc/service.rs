//! `eventstream.EventService` as the gRPC door sees it: which method a path names, and the
//! conversions between protobuf messages and engine events.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use super::status::GrpcError;
use crate::engine::{EventRef, EventView, IdText, Metadata, Priority, RawEvent};
use crate::proto;

/// The methods served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Publish,
    PublishBatch,
    Subscribe,
    Stream,
    HealthCheck,
    /// `grpc.health.v1.Health/Check`.
    HealthV1Check,
    /// `grpc.health.v1.Health/Watch`.
    HealthV1Watch,
    /// `ServerReflectionInfo` of `grpc.reflection.v1` or `v1alpha` (same wire format).
    Reflection,
}

impl Method {
    /// Routes a `:path`.
    pub fn from_path(path: &[u8]) -> Option<Method> {
        Some(match path {
            b"/eventstream.EventService/Publish" => Method::Publish,
            b"/eventstream.EventService/PublishBatch" => Method::PublishBatch,
            b"/eventstream.EventService/Subscribe" => Method::Subscribe,
            b"/eventstream.EventService/Stream" => Method::Stream,
            b"/eventstream.EventService/HealthCheck" => Method::HealthCheck,
            b"/grpc.health.v1.Health/Check" => Method::HealthV1Check,
            b"/grpc.health.v1.Health/Watch" => Method::HealthV1Watch,
            b"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
            | b"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo" => {
                Method::Reflection
            }
            _ => return None,
        })
    }
}

/// Decodes a request message, mapping failure to INVALID_ARGUMENT.
pub fn decode<M: Message + Default>(bytes: Bytes) -> Result<M, GrpcError> {
    M::decode(bytes).map_err(|e| GrpcError::Decode(e.to_string()))
}

/// A protobuf event as the engine's unchecked event.
/// The event of a `PublishRequest`, decoded with [`decode_event`].
pub fn decode_publish(message: Bytes) -> Result<RawEvent, GrpcError> {
    let missing = || GrpcError::InvalidArgument("PublishRequest.event is required".into());
    match fast::publish_request(&message) {
        Some(Some(event)) => decode_event_in(&message, event),
        Some(None) => Err(missing()),
        None => {
            let request: proto::PublishRequest = decode(message)?;
            raw_event(request.event.ok_or_else(missing)?)
        }
    }
}

/// The event of a `PublishRequest` decoded in place ([`fast::event_ref`]); None when it
/// needs [`decode_publish`] (no event, metadata, or anything the fast path leaves to prost).
/// `known_topic`: a topic already validated (the connection's last), whose bytes need no
/// UTF-8 check.
pub fn decode_publish_in_place<'a>(message: &'a [u8], known_topic: &[u8]) -> Option<EventRef<'a>> {
    fast::event_ref(fast::publish_request(message)??, known_topic)
}

/// An `Event` message decoded in place ([`fast::event_ref`]); None when it needs
/// [`decode_event`]. `known_topic` as for [`decode_publish_in_place`].
pub fn decode_event_in_place<'a>(message: &'a [u8], known_topic: &[u8]) -> Option<EventRef<'a>> {
    fast::event_ref(message, known_topic)
}

/// The events of a `PublishBatchRequest` (at most `max_events`) decoded in place into
/// `events` ([`fast::event_ref`]); None when some event needs [`decode_batch`], which then
/// decides everything (nothing has been published).
pub fn decode_batch_in_place<'a>(
    message: &'a [u8],
    max_events: usize,
    events: &mut Vec<EventRef<'a>>,
) -> Option<Result<(), GrpcError>> {
    let encoded = fast::batch_events(message)?;
    if encoded.len() > max_events {
        return Some(Err(too_many(encoded.len(), max_events)));
    }
    events.reserve(encoded.len());
    let mut checked_topic: &[u8] = &[];
    for event in encoded {
        let event = fast::event_ref(event, checked_topic)?;
        checked_topic = event.topic;
        events.push(event);
    }
    Some(Ok(()))
}

fn too_many(count: usize, max_events: usize) -> GrpcError {
    GrpcError::InvalidArgument(format!(
        "batch of {count} events, over the limit of {max_events}"
    ))
}

/// The events of a `PublishBatchRequest` (at most `max_events`), each decoded with
/// [`decode_event`] and handed to `each` with its index, in order; stops at the first error
/// `each` returns.
pub fn decode_batch(
    message: Bytes,
    max_events: usize,
    mut each: impl FnMut(usize, Result<RawEvent, GrpcError>) -> Result<(), GrpcError>,
) -> Result<(), GrpcError> {
    if let Some(events) = fast::batch_events(&message) {
        if events.len() > max_events {
            return Err(too_many(events.len(), max_events));
        }
        for (index, event) in events.enumerate() {
            each(index, decode_event_in(&message, event))?;
        }
        return Ok(());
    }
    // An encoding the fast path does not take apart: prost decides.
    let request: proto::PublishBatchRequest = decode(message)?;
    if request.events.len() > max_events {
        return Err(too_many(request.events.len(), max_events));
    }
    for (index, event) in request.events.into_iter().enumerate() {
        each(index, raw_event(event))?;
    }
    Ok(())
}

/// Decodes an `Event` message into the engine's form. Topic, id and payload stay slices of
/// the request's bytes, where prost would copy the strings into new allocations; an encoding
/// the fast path does not handle (a metadata key given twice, many metadata entries, an
/// error) is decoded again by prost, so both ways agree on results and on error messages.
pub fn decode_event(message: Bytes) -> Result<RawEvent, GrpcError> {
    decode_event_in(&message, &message)
}

/// [`decode_event`] for an event encoded at `event`, a part of `whole`.
fn decode_event_in(whole: &Bytes, event: &[u8]) -> Result<RawEvent, GrpcError> {
    match fast::event(whole, event) {
        Some(raw) => Ok(raw),
        None => raw_event(decode(whole.slice_ref(event))?),
    }
}

/// Protobuf decoding of the request messages without prost's owned strings. It reads
/// borrowed slices and takes shared `Bytes` only of what an event keeps.
mod fast {
    use bytes::{Buf, BufMut, Bytes, BytesMut};
    use prost::encoding::{decode_key, decode_varint, skip_field, DecodeContext, WireType};

    use crate::engine::{EventRef, Metadata, RawEvent};

    /// Metadata entries the fast path takes; more go to prost (duplicate keys are looked for
    /// by scanning, which must stay cheap).
    const MAX_FAST_METADATA: usize = 32;

    /// A length-delimited field's bytes.
    fn delimited<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
        let len = usize::try_from(decode_varint(buf).ok()?).ok()?;
        if len > buf.len() {
            return None;
        }
        let (field, rest) = buf.split_at(len);
        *buf = rest;
        Some(field)
    }

    fn string<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
        delimited(buf).filter(|b| std::str::from_utf8(b).is_ok())
    }

    /// Walks the fields of a message, calling `field` for tags up to `known` and skipping the
    /// others; None on any malformation.
    fn walk_fields<'a>(
        mut buf: &'a [u8],
        mut field: impl FnMut(u32, WireType, &mut &'a [u8]) -> Option<()>,
        known: u32,
    ) -> Option<()> {
        while !buf.is_empty() {
            let (tag, wire) = decode_key(&mut buf).ok()?;
            if tag <= known {
                field(tag, wire, &mut buf)?;
            } else {
                skip_field(wire, tag, &mut buf, DecodeContext::default()).ok()?;
            }
        }
        Some(())
    }

    /// `PublishRequest`: Some(Some(event)), Some(None) when it has no event, None for
    /// anything else (an event given twice is merged by prost).
    pub fn publish_request(message: &[u8]) -> Option<Option<&[u8]>> {
        let mut event = None;
        walk_fields(
            message,
            |_, wire, buf| {
                if wire != WireType::LengthDelimited || event.is_some() {
                    return None;
                }
                event = Some(delimited(buf)?);
                Some(())
            },
            1,
        )?;
        Some(event)
    }

    /// The events of a `PublishBatchRequest`, as an exact-size iterator over their encoded
    /// bytes; None if the message is malformed (prost then decides what to say about it).
    pub fn batch_events(message: &[u8]) -> Option<impl ExactSizeIterator<Item = &[u8]>> {
        // Check the framing and count first, so that no event is handed out from a broken
        // message and the batch limit applies before any work.
        let mut count = 0;
        walk_fields(
            message,
            |_, wire, buf| {
                (wire == WireType::LengthDelimited).then_some(())?;
                delimited(buf)?;
                count += 1;
                Some(())
            },
            1,
        )?;
        let mut buf = message;
        let events = std::iter::from_fn(move || loop {
            if buf.is_empty() {
                return None;
            }
            let (tag, wire) = decode_key(&mut buf).expect("checked above");
            if tag == 1 {
                return Some(delimited(&mut buf).expect("checked above"));
            }
            skip_field(wire, tag, &mut buf, DecodeContext::default()).expect("checked above");
        });
        Some(Counted {
            events,
            left: count,
        })
    }

    /// An iterator that knows how many items it has left.
    struct Counted<I> {
        events: I,
        left: usize,
    }

    impl<'a, I: Iterator<Item = &'a [u8]>> Iterator for Counted<I> {
        type Item = &'a [u8];

        fn next(&mut self) -> Option<&'a [u8]> {
            let next = self.events.next();
            debug_assert_eq!(next.is_some(), self.left > 0, "the count was taken first");
            self.left = self.left.saturating_sub(1);
            next
        }

        fn size_hint(&self) -> (usize, Option<usize>) {
            (self.left, Some(self.left))
        }
    }

    impl<'a, I: Iterator<Item = &'a [u8]>> ExactSizeIterator for Counted<I> {}

    /// The `Event` encoded at `event` (a part of `whole`), or None for anything the fast
    /// path leaves to prost.
    pub fn event(whole: &Bytes, event: &[u8]) -> Option<RawEvent> {
        let mut metadata = (BytesMut::new(), 0);
        let fields = walk(event, Some(&mut metadata), &[])?;
        let (raw, count) = metadata;
        let metadata = if count == 0 {
            Metadata::default()
        } else {
            Metadata::from_wire(count as u16, raw.freeze()).ok()?
        };
        Some(RawEvent {
            metadata,
            ..fields.to_raw(whole)
        })
    }

    /// The `Event` encoded at `event`, in place; None for anything the fast path leaves to
    /// prost, and for an event with metadata (whose protobuf form is not the engine's).
    /// A topic equal to `checked_topic` (known to be UTF-8: the previous event's in a batch,
    /// or the connection's last validated topic) is not checked again.
    pub fn event_ref<'a>(event: &'a [u8], checked_topic: &[u8]) -> Option<EventRef<'a>> {
        walk(event, None, checked_topic)
    }

    /// Walks an `Event`'s fields. Metadata entries are appended to `metadata` in the engine's
    /// form (with their count); with no `metadata`, an event that has some is left to the
    /// caller's other path (None), as is anything prost would word differently.
    fn walk<'a>(
        event: &'a [u8],
        mut metadata: Option<&mut (BytesMut, usize)>,
        checked_topic: &[u8],
    ) -> Option<EventRef<'a>> {
        let mut fields = EventRef::default();
        let mut priority = 0i32;
        walk_fields(
            event,
            |tag, wire, buf| {
                let expected = match tag {
                    1 | 2 | 3 | 6 => WireType::LengthDelimited,
                    _ => WireType::Varint,
                };
                if wire != expected {
                    return None;
                }
                match tag {
                    1 => fields.id = string(buf)?,
                    2 => {
                        let topic = delimited(buf)?;
                        if topic != checked_topic {
                            std::str::from_utf8(topic).ok()?;
                        }
                        fields.topic = topic;
                    }
                    3 => fields.payload = delimited(buf)?,
                    4 => priority = decode_varint(buf).ok()? as i32,
                    5 => fields.timestamp_ns = decode_varint(buf).ok()? as i64,
                    6 => {
                        let (raw, count) = metadata.as_deref_mut()?;
                        metadata_entry(delimited(buf)?, raw, count)?;
                    }
                    // 7, sequence: the server assigns it.
                    _ => drop(decode_varint(buf).ok()?),
                }
                Some(())
            },
            7,
        )?;
        // Out of range: prost's path words the error.
        fields.priority = u8::try_from(priority).ok().filter(|p| *p <= 4)?;
        Some(fields)
    }

    /// One map entry (key = 1, value = 2) appended in the engine's metadata form (u16 LE
    /// length, bytes; key then value). None for a repeated key, too many entries, or a
    /// string the engine's form cannot hold.
    fn metadata_entry(entry: &[u8], raw: &mut BytesMut, count: &mut usize) -> Option<()> {
        let (mut key, mut value): (&[u8], &[u8]) = (&[], &[]);
        walk_fields(
            entry,
            |tag, wire, buf| {
                if wire != WireType::LengthDelimited {
                    return None;
                }
                *(if tag == 1 { &mut key } else { &mut value }) = string(buf)?;
                Some(())
            },
            2,
        )?;
        if *count == MAX_FAST_METADATA || keys(raw).any(|k| k == key) {
            return None;
        }
        for s in [key, value] {
            raw.put_u16_le(u16::try_from(s.len()).ok()?);
            raw.put_slice(s);
        }
        *count += 1;
        Some(())
    }

    /// The keys already in a metadata buffer.
    fn keys(mut raw: &[u8]) -> impl Iterator<Item = &[u8]> {
        fn next<'a>(raw: &mut &'a [u8]) -> &'a [u8] {
            let len = usize::from(raw.get_u16_le());
            let (s, rest) = raw.split_at(len);
            *raw = rest;
            s
        }
        std::iter::from_fn(move || {
            if raw.is_empty() {
                return None;
            }
            let key = next(&mut raw);
            next(&mut raw);
            Some(key)
        })
    }
}

pub fn raw_event(e: proto::Event) -> Result<RawEvent, GrpcError> {
    let priority = u8::try_from(e.priority)
        .ok()
        .filter(|p| Priority::from_u8(*p).is_some())
        .ok_or_else(|| {
            GrpcError::InvalidArgument(format!(
                "priority {} is not one of 0..=4 (BATCH, LOW, MEDIUM, HIGH, CRITICAL)",
                e.priority
            ))
        })?;
    let metadata = Metadata::from_pairs(e.metadata.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|err| GrpcError::InvalidArgument(format!("metadata: {err}")))?;
    Ok(RawEvent {
        topic: Bytes::from(e.topic),
        id: Bytes::from(e.id),
        payload: e.payload,
        metadata,
        priority,
        timestamp_ns: e.timestamp_ns,
    })
}

/// Appends an engine event as an encoded `eventstream.Event` (the same bytes prost would write
/// for the equivalent message, map entries in order) straight from where the event lies:
/// delivering to a gRPC subscriber allocates nothing per event. Field keys are single bytes
/// written as such, and so are lengths under 128 (ids, most topics, small payloads): a call
/// to prost's varint writer per key and length was the largest item of the Stream row.
pub fn put_event(out: &mut BytesMut, e: &EventView<'_>) {
    use prost::encoding::{encode_varint, encoded_len_varint, WireType};
    /// The key of field `tag` (1..=15: one byte).
    const fn key(tag: u8, wire_type: WireType) -> u8 {
        assert!(tag >= 1 && tag <= 15);
        (tag << 3) | wire_type as u8
    }
    /// A varint through a stack buffer: prost writing into `BytesMut` checks its capacity
    /// at every byte (a timestamp takes nine).
    fn put_varint(out: &mut BytesMut, value: u64) {
        let mut buf = [0u8; 10];
        let mut rest = &mut buf[..];
        encode_varint(value, &mut rest);
        let len = 10 - rest.len();
        out.put_slice(&buf[..len]);
    }
    fn put_len(out: &mut BytesMut, len: usize) {
        match u8::try_from(len) {
            Ok(short) if short < 0x80 => out.put_u8(short),
            _ => put_varint(out, len as u64),
        }
    }
    let field = |out: &mut BytesMut, key: u8, bytes: &[u8]| {
        if !bytes.is_empty() {
            out.put_u8(key);
            put_len(out, bytes.len());
            out.put_slice(bytes);
        }
    };
    use WireType::{LengthDelimited, Varint};
    field(
        out,
        key(1, LengthDelimited),
        e.id.text(&mut IdText::default()),
    );
    field(out, key(2, LengthDelimited), e.topic);
    field(out, key(3, LengthDelimited), e.payload);
    if e.priority as u8 != 0 {
        out.put_u8(key(4, Varint));
        out.put_u8(e.priority as u8);
    }
    if e.timestamp_ns != 0 {
        out.put_u8(key(5, Varint));
        put_varint(out, e.timestamp_ns as u64);
    }
    for (k, v) in e.metadata_entries() {
        let entry_len = |s: &str| {
            if s.is_empty() {
                0
            } else {
                1 + encoded_len_varint(s.len() as u64) + s.len()
            }
        };
        out.put_u8(key(6, LengthDelimited));
        put_len(out, entry_len(k) + entry_len(v));
        field(out, key(1, LengthDelimited), k.as_bytes());
        field(out, key(2, LengthDelimited), v.as_bytes());
    }
    if e.sequence != 0 {
        out.put_u8(key(7, Varint));
        put_varint(out, e.sequence);
    }
}

/// Encodes a message with its gRPC prefix.
pub fn framed(msg: &impl Message) -> BytesMut {
    let mut out = BytesMut::with_capacity(msg.encoded_len() + super::framing::PREFIX_LEN);
    super::framing::put_message(&mut out, |o| msg.encode(o).expect("BytesMut grows"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Event;
    use proptest::prelude::*;

    /// An engine event as the protobuf message subscribers receive (what [`put_event`] encodes
    /// without building it).
    fn proto_event(e: &Event) -> proto::Event {
        proto::Event {
            id: e.id.to_string(),
            topic: e.topic.as_str().to_owned(),
            payload: e.payload.clone(),
            priority: e.priority as i32,
            timestamp_ns: e.timestamp_ns,
            metadata: e
                .metadata
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            sequence: e.sequence,
        }
    }

    /// A decoded event with its metadata as a sorted list (prost's map has no order).
    fn comparable(
        r: Result<RawEvent, GrpcError>,
    ) -> Result<(RawEvent, Vec<(String, String)>), String> {
        let mut r = r.map_err(|e| e.to_string())?;
        let mut pairs: Vec<(String, String)> = r
            .metadata
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        pairs.sort();
        r.metadata = Metadata::default();
        Ok((r, pairs))
    }

    fn with_prost(message: Bytes) -> Result<RawEvent, GrpcError> {
        raw_event(decode(message)?)
    }

    fn events() -> impl Strategy<Value = proto::Event> {
        (
            ".{0,12}",
            "[a-z/*]{0,16}",
            proptest::collection::vec(any::<u8>(), 0..48),
            -2i32..7,
            any::<i64>(),
            // Half without metadata: the in-place decoder takes only those.
            prop_oneof![
                Just(Default::default()),
                proptest::collection::hash_map("[a-z]{0,3}", ".{0,5}", 0..40)
            ],
            any::<u64>(),
        )
            .prop_map(
                |(id, topic, payload, priority, timestamp_ns, metadata, sequence)| proto::Event {
                    id,
                    topic,
                    payload: payload.into(),
                    priority,
                    timestamp_ns,
                    metadata,
                    sequence,
                },
            )
    }

    fn event_decodes_as_with_prost(event: proto::Event) -> Result<(), TestCaseError> {
        let has_metadata = !event.metadata.is_empty();
        let message = Bytes::from(event.encode_to_vec());
        prop_assert_eq!(
            comparable(decode_event(message.clone())),
            comparable(with_prost(message.clone()))
        );
        in_place_decodes_as_with_prost(&message)?;
        prop_assert!(!has_metadata || decode_event_in_place(&message, &[]).is_none());
        Ok(())
    }

    /// What the in-place decoder takes, it reads as prost does; what it leaves, the owned
    /// path decides.
    fn in_place_decodes_as_with_prost(message: &Bytes) -> Result<(), TestCaseError> {
        if let Some(event) = decode_event_in_place(message, &[]) {
            let theirs = with_prost(message.clone());
            prop_assert_eq!(Ok(event.to_raw(message)), theirs.map_err(|e| e.to_string()));
        }
        Ok(())
    }

    /// A batch cut at `cut` (when `cut % 3 == 0`) decodes to the same events in the same
    /// order, or the same error, as with prost; the limit `max` counts events first.
    fn batch_decodes_as_with_prost(
        events: Vec<proto::Event>,
        cut: usize,
        max: usize,
    ) -> Result<(), TestCaseError> {
        let request = proto::PublishBatchRequest { events };
        let mut bytes = request.encode_to_vec();
        if cut % 3 == 0 && !bytes.is_empty() {
            bytes.truncate(cut % bytes.len());
        }
        let message = Bytes::from(bytes);
        let mut ours = Vec::new();
        let result = decode_batch(message.clone(), max, |i, e| {
            ours.push((i, comparable(e)));
            Ok(())
        });
        let mut in_place = Vec::new();
        let taken = decode_batch_in_place(&message, max, &mut in_place);
        let theirs = decode::<proto::PublishBatchRequest>(message.clone());
        // The in-place decoder may leave a batch to the owned path; what it takes, it reads
        // as the owned path does.
        match &taken {
            Some(Ok(())) => {
                let in_place: Vec<_> = in_place.iter().map(|e| e.to_raw(&message)).collect();
                let owned: Vec<_> = ours
                    .iter()
                    .map(|(_, e)| e.clone().map(|(e, _)| e))
                    .collect();
                prop_assert_eq!(result.clone(), Ok(()));
                prop_assert_eq!(in_place.into_iter().map(Ok).collect::<Vec<_>>(), owned);
            }
            Some(Err(e)) => prop_assert_eq!(Err(e.clone()), result.clone()),
            None => {}
        }
        match theirs {
            Err(e) => prop_assert_eq!(result, Err(e)),
            Ok(r) if r.events.len() > max => prop_assert!(result.is_err() && ours.is_empty()),
            Ok(r) => {
                prop_assert_eq!(result, Ok(()));
                let want: Vec<_> = r
                    .events
                    .into_iter()
                    .enumerate()
                    .map(|(i, e)| (i, comparable(raw_event(e))))
                    .collect();
                prop_assert_eq!(ours, want);
            }
        }
        Ok(())
    }

    /// Cases the property tests once found (kept as named tests, see `proptest_config`).
    #[test]
    fn an_event_with_only_a_timestamp_decodes_as_with_prost() {
        let event = |timestamp_ns| proto::Event {
            timestamp_ns,
            ..proto::Event::default()
        };
        event_decodes_as_with_prost(event(1)).unwrap();
        batch_decodes_as_with_prost(vec![event(-1)], 52_899_972_863_060_971, 1).unwrap();
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]
        /// The fast decoder reads every event as prost does (metadata aside from its order),
        /// including out-of-range priorities and more metadata than it takes itself.
        #[test]
        fn events_decode_as_with_prost(event in events()) {
            event_decodes_as_with_prost(event)?;
        }

        /// On arbitrary bytes, and on events with bytes flipped, both ways agree: the same
        /// event or the same error.
        #[test]
        fn garbage_decodes_as_with_prost(
            event in events(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
            junk in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut bytes = event.encode_to_vec();
            for (at, value) in flips {
                if !bytes.is_empty() {
                    let n = bytes.len();
                    bytes[at % n] = value;
                }
            }
            for message in [Bytes::from(bytes), Bytes::from(junk)] {
                prop_assert_eq!(
                    comparable(decode_event(message.clone())),
                    comparable(with_prost(message.clone()))
                );
                in_place_decodes_as_with_prost(&message)?;
            }
        }

        /// Batches: the same events in the same order, or the same error, as prost; the
        /// batch limit counts events before any is decoded.
        #[test]
        fn batches_decode_as_with_prost(
            events in proptest::collection::vec(events(), 0..6),
            cut in any::<usize>(),
            max in 0usize..8,
        ) {
            batch_decodes_as_with_prost(events, cut, max)?;
        }
    }

    #[test]
    fn a_publish_request_without_event_is_refused() {
        let message = Bytes::from(proto::PublishRequest { event: None }.encode_to_vec());
        let err = decode_publish(message).unwrap_err();
        assert!(err.to_string().contains("event is required"), "{err}");
    }

    #[test]
    fn paths_route_to_methods() {
        assert_eq!(
            Method::from_path(b"/eventstream.EventService/Publish"),
            Some(Method::Publish)
        );
        assert_eq!(Method::from_path(b"/eventstream.EventService/Nope"), None);
    }

    #[test]
    fn put_event_writes_what_prost_would() {
        use crate::engine::{EventId, Metadata, Topic};
        for (id, meta, ts, seq) in [
            (
                EventId::Generated(uuid::Uuid::now_v7()),
                vec![("k", "v"), ("source", "test"), ("", "empty key")],
                -5i64,
                9u64,
            ),
            (EventId::Given(Bytes::from_static(b"my-id")), vec![], 0, 0),
            // Lengths of 128 and more take two varint bytes.
            (
                EventId::Given(Bytes::from(vec![b'i'; 200])),
                vec![("long", &*"v".repeat(300))],
                i64::MAX,
                u64::MAX,
            ),
        ] {
            let event = Event {
                topic: Topic::parse(Bytes::from_static(b"sensors/t1")).unwrap(),
                id,
                payload: Bytes::from(vec![0u8; 1 + seq as usize % 1000]),
                metadata: Metadata::from_pairs(meta).unwrap(),
                priority: Priority::from_u8((seq % 5) as u8).unwrap(),
                timestamp_ns: ts,
                sequence: seq,
            };
            let mut ours = BytesMut::new();
            put_event(&mut ours, &event.view());
            assert_eq!(
                proto::Event::decode(ours.clone()).unwrap(),
                proto_event(&event)
            );
            assert_eq!(ours.len(), proto_event(&event).encoded_len());
        }
    }

    #[test]
    fn out_of_range_priorities_are_invalid() {
        for p in [-1, 5, 300] {
            let e = proto::Event {
                topic: "a".into(),
                priority: p,
                ..Default::default()
            };
            assert!(
                matches!(raw_event(e), Err(GrpcError::InvalidArgument(_))),
                "priority {p}"
            );
        }
    }
}
