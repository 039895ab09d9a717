//! `eventstream.EventService` as the gRPC door sees it: which method a path names, and the
//! conversions between protobuf messages and engine events.

use bytes::{Bytes, BytesMut};
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

/// An engine event as the protobuf message subscribers receive.
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
