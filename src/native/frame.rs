//! The native protocol's framing (PROTOCOL.md §2), shared by both directions: the frame
//! header and kinds, finding whole frames in a byte stream, and the errors every body parser
//! returns. It sits below [`codec`](super::codec) (the other frame bodies) and
//! [`event_run`](super::event_run) (EVENT_RUN bodies) so that both depend on it and neither
//! on the other.
//!
//! Every frame is `u32 length (LE) | u8 kind | u8 flags | body`, where `length` counts the
//! bytes after itself. All integers are little-endian. No I/O here.

use bytes::{Buf, Bytes, BytesMut};

use crate::engine::event::MetadataError;

/// Bytes of a frame's length prefix: a u32, so one frame can announce up to 4 GiB.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// Bytes of the kind and flags after the length prefix: the shortest length a frame can
/// announce, since every frame has them.
pub const KIND_AND_FLAGS_BYTES: usize = 2;

/// Bytes before a frame's body (length, kind, flags): where every body starts.
pub const FRAME_HEADER_BYTES: usize = LENGTH_PREFIX_BYTES + KIND_AND_FLAGS_BYTES;

/// Frame kinds (the byte after the length prefix, which says how to read the body), client to
/// server.
pub mod kind {
    /// One event (PROTOCOL.md §5.1).
    pub const PUBLISH: u8 = 0x01;
    /// Many events, each a whole event record (PROTOCOL.md §5.2).
    pub const PUBLISH_BATCH: u8 = 0x02;
    /// Opens a subscription (PROTOCOL.md §5.3).
    pub const SUBSCRIBE: u8 = 0x03;
    /// Ends a subscription (PROTOCOL.md §5.4).
    pub const UNSUBSCRIBE: u8 = 0x04;
    /// Asks for a PONG with the server's counters (PROTOCOL.md §5.5).
    pub const PING: u8 = 0x05;
    /// Binds a topic handle for PUBLISH_RUN (PROTOCOL.md §5.6).
    pub const DECLARE: u8 = 0x06;
    /// Many events of one declared topic, in short records (PROTOCOL.md §5.7).
    pub const PUBLISH_RUN: u8 = 0x07;
    /// Server to client: a publish was sequenced (PROTOCOL.md §6.1).
    pub const ACK: u8 = 0x81;
    /// One event pushed to a subscription (PROTOCOL.md §6.2).
    pub const EVENT: u8 = 0x82;
    /// A SUBSCRIBE was accepted (PROTOCOL.md §6.3).
    pub const SUBSCRIBED: u8 = 0x83;
    /// A subscription ended, with its final counters (PROTOCOL.md §6.4).
    pub const UNSUBSCRIBED: u8 = 0x84;
    /// The answer to a PING (PROTOCOL.md §6.5).
    pub const PONG: u8 = 0x85;
    /// A request failed, or the connection is closing (PROTOCOL.md §6.6).
    pub const ERROR: u8 = 0x86;
    /// Many events pushed to a runs subscription (PROTOCOL.md §6.7).
    pub const EVENT_RUN: u8 = 0x87;
}

/// ERROR frame codes. Stable: clients switch on them. Here with the framing because every
/// body parser's [`BodyError`] carries one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    /// A frame's body does not parse; the frame was skipped.
    Malformed = 1,
    /// A frame's length is over the limit or under 2: the stream cannot be framed, closing.
    BadLength = 2,
    /// Unknown frame kind; the frame was skipped.
    UnknownKind = 3,
    /// An event's topic breaks PROTOCOL.md §4.
    InvalidTopic = 4,
    /// An event breaks another rule (priority, id, sizes, reserved topic).
    InvalidEvent = 5,
    /// A subscription pattern breaks PROTOCOL.md §4.
    InvalidPattern = 6,
    /// A batch holds more events than allowed.
    BatchTooLarge = 7,
    /// The connection already has the maximum number of subscriptions.
    TooManySubscriptions = 8,
    /// The subscription id is already in use on this connection.
    DuplicateSubscription = 9,
    /// No subscription with that id on this connection.
    UnknownSubscription = 10,
    /// The subscription was cut: a CRITICAL event could not be queued (PROTOCOL.md §6.2).
    SlowConsumer = 11,
    /// The owner shard could not sequence an event (e.g. topic limit reached).
    PublishFailed = 12,
    /// The server is shutting down.
    ShuttingDown = 13,
    /// The datagram door does not accept this frame kind.
    NotAllowed = 14,
    /// The door has its `native.max_connections` open: this connection is refused (closing).
    TooManyConnections = 15,
    /// DECLARE of a handle that is 0, over `limits.max_topic_handles`, or already bound.
    InvalidHandle = 16,
    /// PUBLISH_RUN with a handle this connection has not declared.
    UnknownHandle = 17,
}

impl ErrorCode {
    /// The code for a wire value; unknown values (from a newer server) map to `Malformed`.
    pub fn from_u16(v: u16) -> ErrorCode {
        use ErrorCode::*;
        [
            Malformed,
            BadLength,
            UnknownKind,
            InvalidTopic,
            InvalidEvent,
            InvalidPattern,
            BatchTooLarge,
            TooManySubscriptions,
            DuplicateSubscription,
            UnknownSubscription,
            SlowConsumer,
            PublishFailed,
            ShuttingDown,
            NotAllowed,
            TooManyConnections,
            InvalidHandle,
            UnknownHandle,
        ]
        .into_iter()
        .find(|c| *c as u16 == v)
        .unwrap_or(Malformed)
    }
}

/// The stream cannot be framed any more: answer with an ERROR (closing) and close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// The length prefix announces more than the reader accepts: refused before the body is
    /// buffered, so one frame cannot make the reader hold any amount of memory.
    #[error("frame length {length} is over the limit of {max} bytes")]
    TooLarge {
        /// The announced length (the bytes after the prefix).
        length: usize,
        /// The reader's limit.
        max: usize,
    },
    /// The length prefix announces fewer bytes than a kind and flags: no frame can be that
    /// short, so the bytes that follow cannot be split into frames.
    #[error("frame length {0} is shorter than the {min}-byte kind and flags", min = KIND_AND_FLAGS_BYTES)]
    TooShort(usize),
}

/// One frame's body does not parse; the stream is still framed, so only this frame fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BodyError {
    /// What the ERROR frame answering this frame says.
    pub code: ErrorCode,
    /// What is wrong, for a person: the ERROR frame's message.
    pub message: String,
    /// The request id, subscription id or token of the frame, when its body got that far.
    pub reference: u64,
    /// The failing event of a batch.
    pub index: Option<u32>,
}

impl BodyError {
    /// An error about no request in particular (a parser that got that far sets `reference`).
    pub(super) fn new(code: ErrorCode, message: impl Into<String>) -> BodyError {
        BodyError {
            code,
            message: message.into(),
            reference: 0,
            index: None,
        }
    }

    /// A body that does not hold its kind's fields.
    pub(super) fn malformed(what: impl Into<String>) -> BodyError {
        BodyError::new(ErrorCode::Malformed, what)
    }
}

impl From<MetadataError> for BodyError {
    fn from(e: MetadataError) -> Self {
        BodyError::malformed(format!("metadata: {e}"))
    }
}

/// A frame cut out of the stream, body not yet parsed, owning its body: for a client that
/// reads frame by frame ([`next_frame`]; the test suite's raw client). The server and
/// [`Client`](super::client::Client) read whole frames in place instead ([`frame_at`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    /// How to read the body ([`kind`]).
    pub kind: u8,
    /// Bits whose meaning depends on the kind.
    pub flags: u8,
    /// The bytes after the header, sharing the stream's memory.
    pub body: Bytes,
}

/// A frame found in place at the front of a buffer (the server's form: nothing is cut out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameRef<'a> {
    /// How to read the body ([`kind`]).
    pub kind: u8,
    /// Bits whose meaning depends on the kind.
    pub flags: u8,
    /// The bytes after the header, where they lie.
    pub body: &'a [u8],
    /// Bytes the whole frame takes in the stream, length prefix included.
    pub wire_len: usize,
}

/// The length prefix at the front of `buf` (the bytes after it that the frame takes), once
/// its 4 bytes are there.
fn declared_length(buf: &[u8]) -> Option<usize> {
    let prefix = buf.first_chunk::<LENGTH_PREFIX_BYTES>()?;
    Some(u32::from_le_bytes(*prefix) as usize)
}

/// The whole frame at the front of `buf`, in place; `Ok(None)` when more bytes are needed.
pub fn frame_at(buf: &[u8], max_frame: usize) -> Result<Option<FrameRef<'_>>, FramingError> {
    let Some(length) = declared_length(buf) else {
        return Ok(None);
    };
    if length > max_frame {
        return Err(FramingError::TooLarge {
            length,
            max: max_frame,
        });
    }
    if length < KIND_AND_FLAGS_BYTES {
        return Err(FramingError::TooShort(length));
    }
    let Some(frame) = buf.get(LENGTH_PREFIX_BYTES..LENGTH_PREFIX_BYTES + length) else {
        return Ok(None);
    };
    Ok(Some(FrameRef {
        kind: frame[0],
        flags: frame[1],
        body: &frame[KIND_AND_FLAGS_BYTES..],
        wire_len: LENGTH_PREFIX_BYTES + length,
    }))
}

/// How many bytes at the front of `buf` are whole frames, and the framing error that stops
/// the stream right after them, if any. A connection freezes those bytes once and reads every
/// frame in place ([`frame_at`]).
pub fn whole_frames(buf: &[u8], max_frame: usize) -> (usize, Option<FramingError>) {
    let mut at = 0;
    loop {
        match frame_at(&buf[at..], max_frame) {
            Ok(Some(frame)) => at += frame.wire_len,
            Ok(None) => return (at, None),
            Err(e) => return (at, Some(e)),
        }
    }
}

/// Cuts the next whole frame off the front of `buf`; `Ok(None)` when more bytes are needed
/// (room for the rest is reserved). The body shares `buf`'s memory (no copy).
pub fn next_frame(buf: &mut BytesMut, max_frame: usize) -> Result<Option<RawFrame>, FramingError> {
    let Some(frame) = frame_at(buf, max_frame)? else {
        if let Some(length) = declared_length(buf) {
            buf.reserve(LENGTH_PREFIX_BYTES + length - buf.len());
        }
        return Ok(None);
    };
    let (kind, flags, wire_len) = (frame.kind, frame.flags, frame.wire_len);
    let mut whole = buf.split_to(wire_len);
    whole.advance(FRAME_HEADER_BYTES);
    Ok(Some(RawFrame {
        kind,
        flags,
        body: whole.freeze(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use proptest::prelude::*;

    /// The frame limit of these tests: far over any frame they build, as a server's is over
    /// any frame it expects.
    const FRAME_BYTES_MAX: usize = 1 << 20;

    /// Bytes of the bodies the tests frame at most: enough for many frames to a buffer.
    const BODY_BYTES_MAX: usize = 64;

    /// A frame of any kind, flags and body: framing does not read the body.
    fn any_frame() -> impl Strategy<Value = (u8, u8, Vec<u8>)> {
        let body = prop::collection::vec(any::<u8>(), 0..BODY_BYTES_MAX);
        (any::<u8>(), any::<u8>(), body)
    }

    /// Writes a frame by hand, as PROTOCOL.md §2 lays it out.
    fn put_frame(out: &mut BytesMut, (kind, flags, body): &(u8, u8, Vec<u8>)) {
        out.put_u32_le((KIND_AND_FLAGS_BYTES + body.len()) as u32);
        out.put_u8(*kind);
        out.put_u8(*flags);
        out.put_slice(body);
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]
        #[test]
        fn frames_are_found_whole_in_a_pipelined_stream(frames in prop::collection::vec(any_frame(), 1..6)) {
            let mut buf = BytesMut::new();
            for f in &frames { put_frame(&mut buf, f); }
            // In place, as the server reads them: all whole, in order, nothing left over.
            prop_assert_eq!(whole_frames(&buf, FRAME_BYTES_MAX), (buf.len(), None));
            let mut at = 0;
            for (kind, flags, body) in &frames {
                let frame = frame_at(&buf[at..], FRAME_BYTES_MAX).unwrap().unwrap();
                at += frame.wire_len;
                prop_assert_eq!((frame.kind, frame.flags, frame.body), (*kind, *flags, &body[..]));
                prop_assert_eq!(frame.wire_len, FRAME_HEADER_BYTES + body.len());
            }
            prop_assert_eq!(at, buf.len());
            // Cut out, as clients read them.
            for (kind, flags, body) in &frames {
                let raw = next_frame(&mut buf, FRAME_BYTES_MAX).unwrap().unwrap();
                prop_assert_eq!((raw.kind, raw.flags, &raw.body[..]), (*kind, *flags, &body[..]));
            }
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn a_truncated_stream_waits_for_more(f in any_frame(), cut in any::<prop::sample::Index>()) {
            let mut whole = BytesMut::new();
            put_frame(&mut whole, &f);
            let cut = cut.index(whole.len());
            prop_assert_eq!(frame_at(&whole[..cut], FRAME_BYTES_MAX).unwrap(), None);
            prop_assert_eq!(whole_frames(&whole[..cut], FRAME_BYTES_MAX), (0, None));
            let mut part = BytesMut::from(&whole[..cut]);
            prop_assert_eq!(next_frame(&mut part, FRAME_BYTES_MAX).unwrap(), None);
        }

        #[test]
        fn huge_lengths_are_refused_before_buffering(length in (FRAME_BYTES_MAX as u32 + 1)..=u32::MAX) {
            let mut buf = BytesMut::new();
            buf.put_u32_le(length);
            buf.put_u8(kind::PUBLISH);
            let refused = matches!(next_frame(&mut buf, FRAME_BYTES_MAX), Err(FramingError::TooLarge { .. }));
            prop_assert!(refused);
            let stops = matches!(whole_frames(&buf, FRAME_BYTES_MAX), (0, Some(FramingError::TooLarge { .. })));
            prop_assert!(stops);
        }
    }

    #[test]
    fn lengths_below_two_cannot_be_framed() {
        let mut buf = BytesMut::from(&[1u8, 0, 0, 0, 5][..]);
        assert_eq!(
            next_frame(&mut buf, FRAME_BYTES_MAX),
            Err(FramingError::TooShort(1))
        );
        // In place: the frames before the bad length are whole, and the error stops the rest.
        let ping = |token: u64| (kind::PING, 0, token.to_le_bytes().to_vec());
        let mut stream = BytesMut::new();
        put_frame(&mut stream, &ping(1));
        let first = stream.len();
        stream.extend_from_slice(&buf);
        put_frame(&mut stream, &ping(2));
        let expected = (first, Some(FramingError::TooShort(1)));
        assert_eq!(whole_frames(&stream, FRAME_BYTES_MAX), expected);
    }

    #[test]
    fn error_codes_survive_the_wire_and_unknown_ones_are_malformed() {
        let last = ErrorCode::UnknownHandle as u16;
        assert!((1..=last).all(|v| ErrorCode::from_u16(v) as u16 == v));
        for unknown in [0, last + 1, u16::MAX] {
            assert_eq!(ErrorCode::from_u16(unknown), ErrorCode::Malformed);
        }
    }
}
