//! `eventstream.EventService` as the gRPC door sees it: which method a path names, and the
//! conversions between protobuf messages and engine events.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use super::status::GrpcError;
use crate::engine::{Event, Metadata, Priority, RawEvent};
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

/// An engine event as the protobuf message subscribers receive (what [`put_event`] encodes
/// without building it).
pub fn proto_event(e: &Event) -> proto::Event {
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

/// Appends an engine event as an encoded `eventstream.Event` (the same bytes prost would write
/// for [`proto_event`]'s message, map entries in order) straight from the event's shared
/// buffers: delivering to a gRPC subscriber allocates nothing per event.
pub fn put_event(out: &mut BytesMut, e: &Event) {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, WireType};
    let field = |out: &mut BytesMut, tag: u32, bytes: &[u8]| {
        if !bytes.is_empty() {
            encode_key(tag, WireType::LengthDelimited, out);
            encode_varint(bytes.len() as u64, out);
            out.put_slice(bytes);
        }
    };
    let id_len = e.id.text_len();
    if id_len > 0 {
        encode_key(1, WireType::LengthDelimited, out);
        encode_varint(id_len as u64, out);
        e.id.write_text(out);
    }
    field(out, 2, e.topic.bytes());
    field(out, 3, &e.payload);
    for (tag, value) in [(4, e.priority as u64), (5, e.timestamp_ns as u64)] {
        if value != 0 {
            encode_key(tag, WireType::Varint, out);
            encode_varint(value, out);
        }
    }
    for (k, v) in e.metadata.iter() {
        let entry_len = |s: &str| {
            if s.is_empty() {
                0
            } else {
                1 + encoded_len_varint(s.len() as u64) + s.len()
            }
        };
        encode_key(6, WireType::LengthDelimited, out);
        encode_varint((entry_len(k) + entry_len(v)) as u64, out);
        field(out, 1, k.as_bytes());
        field(out, 2, v.as_bytes());
    }
    if e.sequence != 0 {
        encode_key(7, WireType::Varint, out);
        encode_varint(e.sequence, out);
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
        ] {
            let event = Event {
                topic: Topic::parse(Bytes::from_static(b"sensors/t1")).unwrap(),
                id,
                payload: Bytes::from_static(b"\x00payload"),
                metadata: Metadata::from_pairs(meta).unwrap(),
                priority: Priority::Critical,
                timestamp_ns: ts,
                sequence: seq,
            };
            let mut ours = BytesMut::new();
            put_event(&mut ours, &event);
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
