//! gRPC's length-prefixed messages inside an HTTP/2 stream (1-byte compressed flag, 4-byte
//! big-endian length, message), assembled across DATA frames with no I/O, and the request
//! headers a call is routed by.

use std::ops::Range;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use super::h2::hpack::HeaderList;
use super::status::GrpcError;

/// The request headers a call is routed by, each the first of its name, read in one pass
/// over the list (looking each up in turn scanned the list five times per call).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead<'a> {
    pub method: Option<&'a [u8]>,
    pub path: Option<&'a [u8]>,
    pub content_type: Option<&'a [u8]>,
    pub encoding: Option<&'a [u8]>,
    pub timeout: Option<&'a [u8]>,
}

impl<'a> RequestHead<'a> {
    pub fn read(headers: &'a HeaderList) -> RequestHead<'a> {
        let mut head = RequestHead::default();
        for (name, value) in headers.iter() {
            let slot = match name {
                b":method" => &mut head.method,
                b":path" => &mut head.path,
                b"content-type" => &mut head.content_type,
                b"grpc-encoding" => &mut head.encoding,
                b"grpc-timeout" => &mut head.timeout,
                _ => continue,
            };
            slot.get_or_insert(value);
        }
        head
    }
}

/// Bytes before each message.
pub const PREFIX_LEN: usize = 5;

/// Collects a stream's DATA into whole messages. Messages that arrive whole in one DATA frame
/// are handed out without a copy.
#[derive(Default)]
pub struct MessageReader {
    buf: BytesMut,
}

impl MessageReader {
    /// Adds DATA bytes; returns every message now complete, in order. A message announced
    /// over `max` bytes or marked compressed is an error before its body is buffered.
    pub fn push(&mut self, data: Bytes, max: usize, out: &mut Vec<Bytes>) -> Result<(), GrpcError> {
        let mut bodies = Vec::new();
        let source = self.push_ranges(data, max, &mut bodies)?;
        out.extend(bodies.into_iter().map(|body| source.slice(body)));
        Ok(())
    }

    /// [`push`](Self::push) without a `Bytes` per message: the messages now complete are
    /// `bodies` (appended, in order) of the returned bytes. A stream call's run of small
    /// messages is read this way: a reference-counted handle per message was a measurable
    /// part of a Stream event's server time (docs/PERFORMANCE.md).
    pub fn push_ranges(
        &mut self,
        data: Bytes,
        max: usize,
        bodies: &mut Vec<Range<usize>>,
    ) -> Result<Bytes, GrpcError> {
        let first = bodies.len();
        if self.buf.is_empty() {
            // Fast path: whole messages straight out of the frame.
            let (at, next) = Self::split(&data, max, bodies)?;
            if at < data.len() {
                self.buf.extend_from_slice(&data[at..]);
                self.reserve_for(next);
            }
            return Ok(data);
        }
        self.buf.extend_from_slice(&data);
        let (at, next) = Self::split(&self.buf, max, bodies)?;
        debug_assert!(bodies[first..].iter().all(|b| b.end <= at));
        let source = self.buf.split_to(at).freeze();
        self.reserve_for(next);
        Ok(source)
    }

    /// Appends the bodies of the whole messages at the start of `bytes`; returns where the
    /// first incomplete one starts, and its length once its prefix is there (checked
    /// against `max` before its body is taken in).
    fn split(
        bytes: &[u8],
        max: usize,
        bodies: &mut Vec<Range<usize>>,
    ) -> Result<(usize, Option<usize>), GrpcError> {
        let mut at = 0;
        while bytes.len() - at >= PREFIX_LEN {
            let len = check_prefix(&bytes[at..], max)?;
            if bytes.len() - at < PREFIX_LEN + len {
                return Ok((at, Some(len)));
            }
            bodies.push(at + PREFIX_LEN..at + PREFIX_LEN + len);
            at += PREFIX_LEN + len;
        }
        Ok((at, None))
    }

    /// Room for the whole of the partial message buffered, once its length is known.
    fn reserve_for(&mut self, next: Option<usize>) {
        if let Some(len) = next {
            self.buf.reserve(PREFIX_LEN + len - self.buf.len());
        }
    }

    /// True when no partial message is buffered (a stream may end here).
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Bytes of a partial message held.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

fn check_prefix(prefix: &[u8], max: usize) -> Result<usize, GrpcError> {
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if prefix[0] != 0 {
        // We never advertise grpc-accept-encoding, so a compressed message is unsupported.
        return Err(GrpcError::Compression("compressed message".into()));
    }
    if len > max {
        return Err(GrpcError::TooLarge { size: len, max });
    }
    Ok(len)
}

/// Appends one message (uncompressed) with its prefix, encoding it with `encode`.
pub fn put_message(out: &mut BytesMut, encode: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u8(0);
    out.put_u32(0);
    encode(out);
    let len = (out.len() - start - PREFIX_LEN) as u32;
    out[start + 1..start + PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
}

/// Parses `grpc-timeout` ("TimeoutValue TimeoutUnit": at most 8 digits, then H M S m u n).
pub fn parse_timeout(value: &[u8]) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_request_head_takes_the_first_of_each_name_and_skips_the_rest() {
        let mut headers = HeaderList::default();
        for (name, value) in [
            (&b":method"[..], &b"POST"[..]),
            (b":path", b"/eventstream.EventService/Publish"),
            (b"user-agent", b"grpc-go"),
            (b"grpc-timeout", b"5S"),
            (b"content-type", b"application/grpc"),
            (b"content-type", b"text/plain"),
            (b"grpc-timeout", b"1n"),
        ] {
            headers.push(name, value);
        }
        let head = RequestHead::read(&headers);
        assert_eq!(
            head,
            RequestHead {
                method: Some(b"POST"),
                path: Some(b"/eventstream.EventService/Publish"),
                content_type: Some(b"application/grpc"),
                encoding: None,
                timeout: Some(b"5S"),
            }
        );
        for (name, _) in headers.iter() {
            assert_eq!(
                Some(RequestHead::read(&headers)),
                Some(head),
                "{name:?} read twice the same"
            );
        }
    }

    fn framed(msgs: &[&[u8]]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for m in msgs {
            put_message(&mut out, |o| o.put_slice(m));
        }
        out.to_vec()
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]
        /// However the stream is cut into DATA frames, the same messages come out.
        #[test]
        fn messages_survive_any_split(
            msgs in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..6),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
            let wire = framed(&refs);
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            points.push(0);
            points.push(wire.len());
            points.sort();
            let mut reader = MessageReader::default();
            let mut out = Vec::new();
            for w in points.windows(2) {
                reader.push(Bytes::copy_from_slice(&wire[w[0]..w[1]]), 1 << 20, &mut out).unwrap();
            }
            prop_assert!(reader.is_empty());
            let got: Vec<&[u8]> = out.iter().map(|b| &b[..]).collect();
            prop_assert_eq!(got, refs);
        }
    }

    #[test]
    fn whole_messages_are_read_where_they_lie_and_a_partial_one_is_kept() {
        let wire = Bytes::from(framed(&[b"one", b"two", b"three"]));
        let cut = wire.len() - 2;
        let mut reader = MessageReader::default();
        let mut bodies = Vec::new();
        let source = reader
            .push_ranges(wire.slice(..cut), 1 << 20, &mut bodies)
            .unwrap();
        // The first two point into the frame itself: no copy, no handle per message.
        assert_eq!(source.as_ptr(), wire.as_ptr());
        let got: Vec<&[u8]> = bodies.iter().map(|b| &source[b.clone()]).collect();
        assert_eq!(got, [&b"one"[..], b"two"]);
        assert_eq!(reader.buffered(), cut - 16);
        bodies.clear();
        let source = reader
            .push_ranges(wire.slice(cut..), 1 << 20, &mut bodies)
            .unwrap();
        assert_eq!(&source[bodies[0].clone()], b"three");
        assert!(reader.is_empty());
    }

    #[test]
    fn oversized_and_compressed_messages_are_refused_from_the_prefix() {
        let mut r = MessageReader::default();
        let mut out = Vec::new();
        let prefix = Bytes::from_static(&[0, 0, 0x50, 0, 0]);
        assert_eq!(
            r.push(prefix, 4 << 20, &mut out),
            Err(GrpcError::TooLarge {
                size: 5 << 20,
                max: 4 << 20
            })
        );
        let mut r = MessageReader::default();
        let compressed = Bytes::from_static(&[1, 0, 0, 0, 1, 9]);
        assert!(matches!(
            r.push(compressed, 100, &mut out),
            Err(GrpcError::Compression(_))
        ));
    }

    #[test]
    fn timeouts_parse_per_the_spec() {
        assert_eq!(parse_timeout(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_timeout(b"1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse_timeout(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_timeout(b"5n"), Some(Duration::from_nanos(5)));
        assert_eq!(parse_timeout(b"123456789m"), None, "more than 8 digits");
        assert_eq!(parse_timeout(b"m"), None);
        assert_eq!(parse_timeout(b"10x"), None);
        assert_eq!(parse_timeout(b""), None);
    }
}
