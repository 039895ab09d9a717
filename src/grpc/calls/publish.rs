//! Publish and PublishBatch: events decoded in place where they can be (prost otherwise),
//! published with an acknowledgement the engine sends back to the session
//! ([`AckSink`]), which answers the call.

use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;

use super::dispatch::Call;
use super::Session;
use crate::engine::event::unix_now_ns;
use crate::engine::{AckOutcome, AckRequest, AckSink, PublishError, Reply};
use crate::grpc::service;
use crate::grpc::status::GrpcError;
use crate::proto;

impl AckSink for Session {
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

impl Session {
    /// Runs `f` with the bytes of the connection's last topic (empty if none): a topic the
    /// engine validated, so an event repeating it needs no UTF-8 check while decoding.
    pub(super) fn with_known_topic<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
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

    pub(super) fn publish(self: &Rc<Self>, stream: u32, message: Bytes) -> Result<(), GrpcError> {
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

    pub(super) fn publish_batch(
        self: &Rc<Self>,
        stream: u32,
        message: Bytes,
    ) -> Result<(), GrpcError> {
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
}
