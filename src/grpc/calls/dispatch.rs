//! From HTTP/2 to calls: a request's headers start a call (or refuse it), its data frames
//! feed the call's message reader, and its end dispatches a unary or server-streaming call to
//! its handler.

use std::ops::Range;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;

use super::Session;
use crate::engine::Subscriber;
use crate::grpc::framing::{self, MessageReader, RequestHead};
use crate::grpc::h2::hpack::HeaderList;
use crate::grpc::service::{self, Method};
use crate::grpc::status::{Code, GrpcError};

/// A stream's partial request messages are counted against the connection's bound only once
/// they hold more than this: at most `h2` max streams × this much is held uncounted.
const BUFFERED_COUNT_FROM_BYTES: usize = 64 * 1024;

/// What partial request messages may hold on one connection, in maximum-size messages.
const BUFFERED_MESSAGES_MAX: usize = 4;

/// What a stream (one call) is doing.
pub(super) enum Call {
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
    /// stays here until its events are sequenced ([`Session::finish_bidi_when_sequenced`]).
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
    pub(super) fn subscriber(&self) -> Option<&Rc<Subscriber>> {
        match self {
            Call::Subscription { sub } | Call::Bidi { sub: Some(sub), .. } => Some(sub),
            _ => None,
        }
    }
}

/// What a DATA frame's bytes did for its call ([`Session::on_data`]).
enum Pushed {
    /// A unary or server-streaming request: its one message, once complete, waits in the
    /// call for the end of the request.
    Request,
    /// A Stream call's inbound messages, to publish now: places in these bytes.
    Inbound(Bytes),
    /// A reflection call's requests, each answered now: places in these bytes.
    Reflection(Bytes),
}

impl Session {
    pub(super) async fn on_request(
        self: &Rc<Self>,
        stream: u32,
        headers: &HeaderList,
        end_stream: bool,
    ) {
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
            self.add_deadline(stream, Instant::now() + timeout);
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

    pub(super) async fn on_data(self: &Rc<Self>, stream: u32, data: Bytes, end_stream: bool) {
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
        if calls.get(&stream).map_or(0, reader_of) <= BUFFERED_COUNT_FROM_BYTES {
            return Ok(());
        }
        let total: usize = calls.values().map(reader_of).sum();
        let max = BUFFERED_MESSAGES_MAX * self.max_message;
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
                    let framed = service::framed(&crate::grpc::reflection::answer(request));
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
    pub(super) fn reject(&self, stream: u32, status: &'static [u8]) {
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

    pub(super) fn end_call_with(&self, stream: u32, e: &GrpcError) {
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
}
