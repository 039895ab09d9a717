//! The calls that hold a subscription: Subscribe (events out) and Stream (events in, and out
//! when it names a pattern), and the move of a subscription's queued events into its HTTP/2
//! stream as far as flow control lets them.

use std::ops::Range;
use std::rc::Rc;

use bytes::Bytes;

use super::dispatch::Call;
use super::Session;
use crate::accept;
use crate::engine::event::{unix_now_ns, EventRef};
use crate::engine::{Pattern, Priority, Reply, SubState, Subscriber};
use crate::grpc::framing::MessageReader;
use crate::grpc::h2::hpack::HeaderList;
use crate::grpc::service;
use crate::grpc::status::{Code, GrpcError};
use crate::proto;

/// Response bytes a subscription stream may have queued in HTTP/2 (waiting for the client's
/// window) before its events stay in its subscriber queue, where shedding applies.
const QUEUED_PER_STREAM_BYTES_MAX: usize = 256 * 1024;

impl Session {
    pub(super) async fn subscribe(
        self: &Rc<Self>,
        stream: u32,
        message: Bytes,
    ) -> Result<(), GrpcError> {
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

    /// Starts a Stream call: subscribed to the call metadata `x-topic-pattern` (from
    /// `x-min-priority`), or publish-only without it.
    pub(super) async fn start_bidi(self: &Rc<Self>, stream: u32, headers: &HeaderList) {
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

    /// Publishes a Stream call's inbound messages, `messages` of `source`, in order: each
    /// stretch of messages of one topic decoded in place goes as one batch, which the engine
    /// sends as a run ([`Shard::publish_batch_in_place`]); a message that needs prost goes on
    /// its own. The first invalid message ends the call, the ones before it published. A
    /// stretch is refused or taken whole by its topic's owner, so stopping at a refusal
    /// between stretches publishes nothing after the refused event, as one by one would.
    pub(super) fn on_bidi_messages(
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

    /// Moves a subscription's queued events (framed gRPC messages already) into its stream, as
    /// far as HTTP/2 lets them.
    pub(super) fn drain_subscription(&self, sub: &Rc<Subscriber>) {
        let stream = sub.tag as u32;
        let current = match self.calls.borrow().get(&stream) {
            Some(call) => call.subscriber().is_some_and(|s| Rc::ptr_eq(s, sub)),
            _ => false,
        };
        if !current || sub.state() == SubState::Closed {
            return;
        }
        let mut h2 = self.h2.borrow_mut();
        let budget = QUEUED_PER_STREAM_BYTES_MAX.saturating_sub(h2.queued(stream));
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
