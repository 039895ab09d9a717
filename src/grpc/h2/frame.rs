//! HTTP/2 frames (RFC 9113 §4 and RFC 9113 §6), both directions, with no I/O: bytes in, checked
//! frames out, and frames back to bytes. Every rule a single frame can break on its own is checked
//! here and reported as the connection or stream error the RFC names; rules that need the
//! connection's state (stream states, flow control, header blocks) live in the connection.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// What a client sends first, before any frame (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame header: 24-bit length, type, flags, reserved bit and 31-bit stream id (RFC 9113 §4.1).
pub const FRAME_HEADER_BYTES: usize = 9;
/// The frame header's length field: 24 bits, the header's first bytes (RFC 9113 §4.1).
const FRAME_LENGTH_BYTES: usize = 3;
/// Where the frame header's type byte is (RFC 9113 §4.1).
const FRAME_KIND_OFFSET_BYTES: usize = FRAME_LENGTH_BYTES;
/// Where the frame header's flags byte is (RFC 9113 §4.1).
const FRAME_FLAGS_OFFSET_BYTES: usize = FRAME_KIND_OFFSET_BYTES + 1;
/// Where the frame header's reserved bit and stream id start (RFC 9113 §4.1).
const FRAME_STREAM_OFFSET_BYTES: usize = FRAME_FLAGS_OFFSET_BYTES + 1;
/// The smallest SETTINGS_MAX_FRAME_SIZE, and its initial value (RFC 9113 §6.5.2).
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 16_384;
/// The largest SETTINGS_MAX_FRAME_SIZE allowed, 2^24-1 (RFC 9113 §6.5.2).
pub const MAX_FRAME_BYTES_LIMIT: u32 = (1 << 24) - 1;
/// The initial flow-control window of the connection and of every stream (RFC 9113 §6.9.2).
pub const DEFAULT_WINDOW_BYTES: u32 = 65_535;
/// Largest flow-control window, 2^31-1 (RFC 9113 §6.9.1).
pub const MAX_WINDOW_BYTES: u32 = (1 << 31) - 1;
/// Stream 0: frames on it are about the whole connection (RFC 9113 §5.1.1).
pub const CONNECTION_STREAM_ID: u32 = 0;
/// Largest stream id: 31 bits (RFC 9113 §5.1.1).
pub const MAX_STREAM_ID: u32 = (1 << 31) - 1;
/// The 31 bits of a stream id under the reserved bit, which is ignored (RFC 9113 §4.1).
const STREAM_ID_MASK: u32 = MAX_STREAM_ID;
/// The 31 bits of a WINDOW_UPDATE increment under its reserved bit (RFC 9113 §6.9).
const WINDOW_INCREMENT_MASK: u32 = MAX_WINDOW_BYTES;
/// The E bit of a stream dependency, above its 31-bit stream id (RFC 9113 §6.3).
const PRIORITY_EXCLUSIVE_BIT: u32 = 1 << 31;
/// A priority block: 32-bit stream dependency then 8-bit weight, in HEADERS with the PRIORITY
/// flag (RFC 9113 §6.2) and as the whole PRIORITY payload (RFC 9113 §6.3).
const PRIORITY_BYTES: usize = 5;
/// RST_STREAM's payload: one 32-bit error code (RFC 9113 §6.4).
const RST_STREAM_PAYLOAD_BYTES: usize = 4;
/// One SETTINGS parameter: 16-bit identifier, 32-bit value (RFC 9113 §6.5.1).
const SETTING_BYTES: usize = 6;
/// PING's payload: 8 bytes of opaque data (RFC 9113 §6.7).
pub const PING_PAYLOAD_BYTES: usize = 8;
/// GOAWAY's fixed part: last stream id and error code, before any debug data (RFC 9113 §6.8).
const GOAWAY_FIXED_BYTES: usize = 8;
/// WINDOW_UPDATE's payload: one 31-bit increment (RFC 9113 §6.9).
const WINDOW_UPDATE_PAYLOAD_BYTES: usize = 4;

/// Former name of [`DEFAULT_MAX_FRAME_BYTES`].
pub const DEFAULT_MAX_FRAME_SIZE: u32 = DEFAULT_MAX_FRAME_BYTES;
/// Former name of [`MAX_FRAME_BYTES_LIMIT`].
pub const MAX_MAX_FRAME_SIZE: u32 = MAX_FRAME_BYTES_LIMIT;
/// Former name of [`MAX_WINDOW_BYTES`].
pub const MAX_WINDOW: u32 = MAX_WINDOW_BYTES;

/// Frame types (RFC 9113 §6).
pub mod kind {
    /// RFC 9113 §6.1.
    pub const DATA: u8 = 0x0;
    /// RFC 9113 §6.2.
    pub const HEADERS: u8 = 0x1;
    /// RFC 9113 §6.3.
    pub const PRIORITY: u8 = 0x2;
    /// RFC 9113 §6.4.
    pub const RST_STREAM: u8 = 0x3;
    /// RFC 9113 §6.5.
    pub const SETTINGS: u8 = 0x4;
    /// RFC 9113 §6.6.
    pub const PUSH_PROMISE: u8 = 0x5;
    /// RFC 9113 §6.7.
    pub const PING: u8 = 0x6;
    /// RFC 9113 §6.8.
    pub const GOAWAY: u8 = 0x7;
    /// RFC 9113 §6.9.
    pub const WINDOW_UPDATE: u8 = 0x8;
    /// RFC 9113 §6.10.
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags (RFC 9113 §6).
pub mod flag {
    /// DATA and HEADERS: the sender's last frame on the stream (RFC 9113 §6.1, §6.2).
    pub const END_STREAM: u8 = 0x1;
    /// SETTINGS and PING: an acknowledgement (RFC 9113 §6.5, §6.7).
    pub const ACK: u8 = 0x1;
    /// HEADERS and CONTINUATION: the header block is complete (RFC 9113 §6.2, §6.10).
    pub const END_HEADERS: u8 = 0x4;
    /// DATA and HEADERS: a pad length byte opens the payload (RFC 9113 §6.1, §6.2).
    pub const PADDED: u8 = 0x8;
    /// HEADERS: a priority block follows the pad length (RFC 9113 §6.2).
    pub const PRIORITY: u8 = 0x20;
}

/// SETTINGS parameters (RFC 9113 §6.5.2).
pub mod setting {
    /// SETTINGS_HEADER_TABLE_SIZE: the HPACK table size the sender's decoder allows.
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    /// SETTINGS_ENABLE_PUSH: 0 or 1.
    pub const ENABLE_PUSH: u16 = 0x2;
    /// SETTINGS_MAX_CONCURRENT_STREAMS: streams the sender lets its peer open.
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    /// SETTINGS_INITIAL_WINDOW_SIZE: every stream's initial send window.
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    /// SETTINGS_MAX_FRAME_SIZE: the largest frame payload the sender accepts.
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    /// SETTINGS_MAX_HEADER_LIST_SIZE: the largest header list the sender accepts.
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// HTTP/2 error codes (RFC 9113 §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Reason {
    NoError = 0x0,
    ProtocolError = 0x1,
    InternalError = 0x2,
    FlowControlError = 0x3,
    SettingsTimeout = 0x4,
    StreamClosed = 0x5,
    FrameSizeError = 0x6,
    RefusedStream = 0x7,
    Cancel = 0x8,
    CompressionError = 0x9,
    ConnectError = 0xa,
    EnhanceYourCalm = 0xb,
    InadequateSecurity = 0xc,
    Http11Required = 0xd,
}

/// A broken rule: either the whole connection must end (GOAWAY) or only one stream
/// (RST_STREAM). `why` is for GOAWAY debug data and logs.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum H2Error {
    #[error("connection error {reason:?}: {why}")]
    Connection { reason: Reason, why: &'static str },
    #[error("stream {stream} error {reason:?}: {why}")]
    Stream {
        stream: u32,
        reason: Reason,
        why: &'static str,
    },
}

fn conn(reason: Reason, why: &'static str) -> H2Error {
    H2Error::Connection { reason, why }
}

/// A HEADERS frame's priority block; parsed to check it, otherwise ignored (RFC 9113 §5.3.2
/// deprecates the scheme).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrioritySpec {
    pub depends_on: u32,
    pub exclusive: bool,
    pub weight: u8,
}

/// One SETTINGS parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SettingParam {
    pub id: u16,
    pub value: u32,
}

/// A frame, checked on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: u32,
        end_stream: bool,
        data: Bytes,
        /// Bytes counted by flow control: the whole payload, padding included.
        flow_len: u32,
    },
    Headers {
        stream: u32,
        end_stream: bool,
        end_headers: bool,
        priority: Option<PrioritySpec>,
        block: Bytes,
    },
    Priority {
        stream: u32,
        spec: PrioritySpec,
    },
    RstStream {
        stream: u32,
        code: u32,
    },
    Settings {
        ack: bool,
        params: Vec<SettingParam>,
    },
    Ping {
        ack: bool,
        data: [u8; PING_PAYLOAD_BYTES],
    },
    GoAway {
        last_stream: u32,
        code: u32,
        debug: Bytes,
    },
    WindowUpdate {
        stream: u32,
        increment: u32,
    },
    Continuation {
        stream: u32,
        end_headers: bool,
        block: Bytes,
    },
    /// A type this implementation does not know: must be ignored (RFC 9113 §4.1).
    Unknown {
        kind: u8,
        stream: u32,
    },
}

/// Cuts the next whole frame off `buf`; `Ok(None)` when more bytes are needed. A frame longer
/// than `max_frame_size` (our SETTINGS_MAX_FRAME_SIZE) is a connection error before its
/// payload is even buffered. A client may not send PUSH_PROMISE (RFC 9113 §8.4).
pub fn decode(buf: &mut BytesMut, max_frame_size: u32) -> Result<Option<Frame>, H2Error> {
    if buf.len() < FRAME_HEADER_BYTES {
        return Ok(None);
    }
    debug_assert!(max_frame_size <= MAX_FRAME_BYTES_LIMIT);
    let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]);
    if len > max_frame_size {
        return Err(conn(
            Reason::FrameSizeError,
            "frame larger than SETTINGS_MAX_FRAME_SIZE",
        ));
    }
    let total = FRAME_HEADER_BYTES + len as usize;
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(total);
    let kind = frame[FRAME_KIND_OFFSET_BYTES];
    let flags = frame[FRAME_FLAGS_OFFSET_BYTES];
    let mut stream_id = [0; size_of::<u32>()];
    stream_id.copy_from_slice(&frame[FRAME_STREAM_OFFSET_BYTES..FRAME_HEADER_BYTES]);
    let stream = u32::from_be_bytes(stream_id) & STREAM_ID_MASK;
    frame.advance(FRAME_HEADER_BYTES);
    parse(kind, flags, stream, frame.freeze()).map(Some)
}

fn strip_padding(flags: u8, mut payload: Bytes) -> Result<Bytes, H2Error> {
    if flags & flag::PADDED == 0 {
        return Ok(payload);
    }
    if payload.is_empty() {
        return Err(conn(
            Reason::FrameSizeError,
            "PADDED frame without a pad length",
        ));
    }
    let pad = usize::from(payload.get_u8());
    if pad > payload.len() {
        return Err(conn(Reason::ProtocolError, "padding longer than the frame"));
    }
    payload.truncate(payload.len() - pad);
    Ok(payload)
}

fn priority_spec(payload: &mut Bytes) -> PrioritySpec {
    let word = payload.get_u32();
    PrioritySpec {
        depends_on: word & STREAM_ID_MASK,
        exclusive: word & PRIORITY_EXCLUSIVE_BIT != 0,
        weight: payload.get_u8(),
    }
}

fn parse(kind: u8, flags: u8, stream: u32, mut payload: Bytes) -> Result<Frame, H2Error> {
    let needs_stream = |why| {
        if stream == CONNECTION_STREAM_ID {
            Err(conn(Reason::ProtocolError, why))
        } else {
            Ok(())
        }
    };
    let no_stream = |why| {
        if stream != CONNECTION_STREAM_ID {
            Err(conn(Reason::ProtocolError, why))
        } else {
            Ok(())
        }
    };
    Ok(match kind {
        kind::DATA => {
            needs_stream("DATA on stream 0")?;
            let flow_len = payload.len() as u32;
            Frame::Data {
                stream,
                end_stream: flags & flag::END_STREAM != 0,
                data: strip_padding(flags, payload)?,
                flow_len,
            }
        }
        kind::HEADERS => {
            needs_stream("HEADERS on stream 0")?;
            let mut block = strip_padding(flags, payload)?;
            let priority = if flags & flag::PRIORITY != 0 {
                if block.len() < PRIORITY_BYTES {
                    return Err(conn(
                        Reason::FrameSizeError,
                        "HEADERS too short for its priority",
                    ));
                }
                let spec = priority_spec(&mut block);
                if spec.depends_on == stream {
                    return Err(H2Error::Stream {
                        stream,
                        reason: Reason::ProtocolError,
                        why: "stream depends on itself",
                    });
                }
                Some(spec)
            } else {
                None
            };
            Frame::Headers {
                stream,
                end_stream: flags & flag::END_STREAM != 0,
                end_headers: flags & flag::END_HEADERS != 0,
                priority,
                block,
            }
        }
        kind::PRIORITY => {
            needs_stream("PRIORITY on stream 0")?;
            if payload.len() != PRIORITY_BYTES {
                return Err(H2Error::Stream {
                    stream,
                    reason: Reason::FrameSizeError,
                    why: "PRIORITY is not 5 bytes",
                });
            }
            let spec = priority_spec(&mut payload);
            if spec.depends_on == stream {
                return Err(H2Error::Stream {
                    stream,
                    reason: Reason::ProtocolError,
                    why: "stream depends on itself",
                });
            }
            Frame::Priority { stream, spec }
        }
        kind::RST_STREAM => {
            needs_stream("RST_STREAM on stream 0")?;
            if payload.len() != RST_STREAM_PAYLOAD_BYTES {
                return Err(conn(Reason::FrameSizeError, "RST_STREAM is not 4 bytes"));
            }
            Frame::RstStream {
                stream,
                code: payload.get_u32(),
            }
        }
        kind::SETTINGS => {
            no_stream("SETTINGS on a stream")?;
            let ack = flags & flag::ACK != 0;
            if ack && !payload.is_empty() {
                return Err(conn(Reason::FrameSizeError, "SETTINGS ack with a payload"));
            }
            if payload.len() % SETTING_BYTES != 0 {
                return Err(conn(
                    Reason::FrameSizeError,
                    "SETTINGS length not a multiple of 6",
                ));
            }
            let mut params = Vec::with_capacity(payload.len() / SETTING_BYTES);
            while payload.has_remaining() {
                let param = SettingParam {
                    id: payload.get_u16(),
                    value: payload.get_u32(),
                };
                check_setting(param)?;
                params.push(param);
            }
            Frame::Settings { ack, params }
        }
        kind::PUSH_PROMISE => return Err(conn(Reason::ProtocolError, "clients cannot push")),
        kind::PING => {
            no_stream("PING on a stream")?;
            if payload.len() != PING_PAYLOAD_BYTES {
                return Err(conn(Reason::FrameSizeError, "PING is not 8 bytes"));
            }
            let mut data = [0u8; PING_PAYLOAD_BYTES];
            payload.copy_to_slice(&mut data);
            Frame::Ping {
                ack: flags & flag::ACK != 0,
                data,
            }
        }
        kind::GOAWAY => {
            no_stream("GOAWAY on a stream")?;
            if payload.len() < GOAWAY_FIXED_BYTES {
                return Err(conn(Reason::FrameSizeError, "GOAWAY shorter than 8 bytes"));
            }
            Frame::GoAway {
                last_stream: payload.get_u32() & STREAM_ID_MASK,
                code: payload.get_u32(),
                debug: payload,
            }
        }
        kind::WINDOW_UPDATE => {
            if payload.len() != WINDOW_UPDATE_PAYLOAD_BYTES {
                return Err(conn(Reason::FrameSizeError, "WINDOW_UPDATE is not 4 bytes"));
            }
            let increment = payload.get_u32() & WINDOW_INCREMENT_MASK;
            if increment == 0 {
                let why = "WINDOW_UPDATE of 0";
                return Err(if stream == CONNECTION_STREAM_ID {
                    conn(Reason::ProtocolError, why)
                } else {
                    H2Error::Stream {
                        stream,
                        reason: Reason::ProtocolError,
                        why,
                    }
                });
            }
            Frame::WindowUpdate { stream, increment }
        }
        kind::CONTINUATION => {
            needs_stream("CONTINUATION on stream 0")?;
            Frame::Continuation {
                stream,
                end_headers: flags & flag::END_HEADERS != 0,
                block: payload,
            }
        }
        kind => Frame::Unknown { kind, stream },
    })
}

/// The value checks of RFC 9113 §6.5.2; unknown parameters are ignored.
fn check_setting(p: SettingParam) -> Result<(), H2Error> {
    match p.id {
        setting::ENABLE_PUSH if p.value > 1 => Err(conn(
            Reason::ProtocolError,
            "SETTINGS_ENABLE_PUSH not 0 or 1",
        )),
        setting::INITIAL_WINDOW_SIZE if p.value > MAX_WINDOW_BYTES => Err(conn(
            Reason::FlowControlError,
            "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
        )),
        setting::MAX_FRAME_SIZE
            if !(DEFAULT_MAX_FRAME_BYTES..=MAX_FRAME_BYTES_LIMIT).contains(&p.value) =>
        {
            Err(conn(
                Reason::ProtocolError,
                "SETTINGS_MAX_FRAME_SIZE out of range",
            ))
        }
        _ => Ok(()),
    }
}

fn put_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    debug_assert!(len <= MAX_FRAME_BYTES_LIMIT as usize);
    debug_assert!(stream <= MAX_STREAM_ID);
    out.put_slice(&(len as u32).to_be_bytes()[size_of::<u32>() - FRAME_LENGTH_BYTES..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

/// SETTINGS with these parameters.
pub fn put_settings(out: &mut BytesMut, params: &[SettingParam]) {
    put_header(
        out,
        params.len() * SETTING_BYTES,
        kind::SETTINGS,
        0,
        CONNECTION_STREAM_ID,
    );
    for p in params {
        out.put_u16(p.id);
        out.put_u32(p.value);
    }
}

/// SETTINGS acknowledgement.
pub fn put_settings_ack(out: &mut BytesMut) {
    put_header(out, 0, kind::SETTINGS, flag::ACK, CONNECTION_STREAM_ID);
}

/// PING or its acknowledgement.
pub fn put_ping(out: &mut BytesMut, ack: bool, data: [u8; PING_PAYLOAD_BYTES]) {
    put_header(
        out,
        PING_PAYLOAD_BYTES,
        kind::PING,
        if ack { flag::ACK } else { 0 },
        CONNECTION_STREAM_ID,
    );
    out.put_slice(&data);
}

/// GOAWAY naming the last stream this side will process.
pub fn put_goaway(out: &mut BytesMut, last_stream: u32, reason: Reason, debug: &[u8]) {
    debug_assert!(last_stream <= MAX_STREAM_ID);
    put_header(
        out,
        GOAWAY_FIXED_BYTES + debug.len(),
        kind::GOAWAY,
        0,
        CONNECTION_STREAM_ID,
    );
    out.put_u32(last_stream);
    out.put_u32(reason as u32);
    out.put_slice(debug);
}

/// RST_STREAM.
pub fn put_rst_stream(out: &mut BytesMut, stream: u32, reason: Reason) {
    put_header(out, RST_STREAM_PAYLOAD_BYTES, kind::RST_STREAM, 0, stream);
    out.put_u32(reason as u32);
}

/// WINDOW_UPDATE (stream 0: the connection's window).
pub fn put_window_update(out: &mut BytesMut, stream: u32, increment: u32) {
    debug_assert!(increment > 0 && increment <= MAX_WINDOW_BYTES);
    put_header(
        out,
        WINDOW_UPDATE_PAYLOAD_BYTES,
        kind::WINDOW_UPDATE,
        0,
        stream,
    );
    out.put_u32(increment);
}

/// A header block as HEADERS plus as many CONTINUATION frames as `max_frame_size` requires.
pub fn put_headers(
    out: &mut BytesMut,
    stream: u32,
    block: &[u8],
    end_stream: bool,
    max_frame_size: u32,
) {
    debug_assert!((DEFAULT_MAX_FRAME_BYTES..=MAX_FRAME_BYTES_LIMIT).contains(&max_frame_size));
    let max = max_frame_size as usize;
    let mut chunks = block.chunks(max).peekable();
    let first = chunks.next().unwrap_or(&[]);
    let mut flags = if end_stream { flag::END_STREAM } else { 0 };
    if chunks.peek().is_none() {
        flags |= flag::END_HEADERS;
    }
    put_header(out, first.len(), kind::HEADERS, flags, stream);
    out.put_slice(first);
    while let Some(chunk) = chunks.next() {
        let flags = if chunks.peek().is_none() {
            flag::END_HEADERS
        } else {
            0
        };
        put_header(out, chunk.len(), kind::CONTINUATION, flags, stream);
        out.put_slice(chunk);
    }
}

/// One DATA frame; the caller splits by frame size and flow-control window.
pub fn put_data(out: &mut BytesMut, stream: u32, data: &[u8], end_stream: bool) {
    put_header(
        out,
        data.len(),
        kind::DATA,
        if end_stream { flag::END_STREAM } else { 0 },
        stream,
    );
    out.put_slice(data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn raw(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        put_header(&mut b, payload.len(), kind, flags, stream);
        b.put_slice(payload);
        b
    }

    fn one(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Result<Frame, H2Error> {
        let mut b = raw(kind, flags, stream, payload);
        let f = decode(&mut b, DEFAULT_MAX_FRAME_BYTES).map(|f| f.expect("whole frame"));
        assert!(f.is_err() || b.is_empty());
        f
    }

    fn reason(e: H2Error) -> (bool, Reason) {
        match e {
            H2Error::Connection { reason, .. } => (true, reason),
            H2Error::Stream { reason, .. } => (false, reason),
        }
    }

    #[test]
    fn encoded_frames_decode_to_themselves() {
        let mut b = BytesMut::new();
        put_settings(
            &mut b,
            &[SettingParam {
                id: setting::MAX_CONCURRENT_STREAMS,
                value: 100,
            }],
        );
        put_settings_ack(&mut b);
        put_ping(&mut b, true, *b"12345678");
        put_goaway(&mut b, 7, Reason::EnhanceYourCalm, b"calm");
        put_rst_stream(&mut b, 3, Reason::Cancel);
        put_window_update(&mut b, 0, 1000);
        put_data(&mut b, 5, b"hello", true);
        let mut next = || decode(&mut b, DEFAULT_MAX_FRAME_BYTES).unwrap().unwrap();
        assert_eq!(
            next(),
            Frame::Settings {
                ack: false,
                params: vec![SettingParam { id: 3, value: 100 }]
            }
        );
        assert_eq!(
            next(),
            Frame::Settings {
                ack: true,
                params: vec![]
            }
        );
        assert_eq!(
            next(),
            Frame::Ping {
                ack: true,
                data: *b"12345678"
            }
        );
        assert_eq!(
            next(),
            Frame::GoAway {
                last_stream: 7,
                code: 0xb,
                debug: Bytes::from_static(b"calm")
            }
        );
        assert_eq!(next(), Frame::RstStream { stream: 3, code: 8 });
        assert_eq!(
            next(),
            Frame::WindowUpdate {
                stream: 0,
                increment: 1000
            }
        );
        assert_eq!(
            next(),
            Frame::Data {
                stream: 5,
                end_stream: true,
                data: Bytes::from_static(b"hello"),
                flow_len: 5
            }
        );
        assert!(b.is_empty());
    }

    #[test]
    fn header_blocks_are_split_into_continuations() {
        let block: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        let mut b = BytesMut::new();
        put_headers(&mut b, 1, &block, true, DEFAULT_MAX_FRAME_BYTES);
        let mut got = Vec::new();
        let mut frames = 0;
        while let Some(f) = decode(&mut b, DEFAULT_MAX_FRAME_BYTES).unwrap() {
            frames += 1;
            match f {
                Frame::Headers {
                    end_stream,
                    end_headers,
                    block,
                    ..
                } => {
                    assert!(end_stream && !end_headers);
                    got.extend_from_slice(&block);
                }
                Frame::Continuation {
                    end_headers, block, ..
                } => {
                    assert_eq!(end_headers, got.len() + block.len() == 40_000);
                    got.extend_from_slice(&block);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!((frames, got), (3, block));
    }

    #[test]
    fn padding_is_removed_and_counted_by_flow_control() {
        let f = one(kind::DATA, flag::PADDED, 1, b"\x03abcxyz").unwrap();
        assert_eq!(
            f,
            Frame::Data {
                stream: 1,
                end_stream: false,
                data: Bytes::from_static(b"abc"),
                flow_len: 7
            }
        );
        assert_eq!(
            reason(one(kind::DATA, flag::PADDED, 1, b"\x09ab").unwrap_err()),
            (true, Reason::ProtocolError)
        );
        assert_eq!(
            reason(one(kind::DATA, flag::PADDED, 1, b"").unwrap_err()),
            (true, Reason::FrameSizeError)
        );
        let f = one(
            kind::HEADERS,
            flag::PADDED | flag::PRIORITY | flag::END_HEADERS,
            3,
            b"\x01\x80\x00\x00\x01\x10hdr\x00",
        )
        .unwrap();
        let spec = PrioritySpec {
            depends_on: 1,
            exclusive: true,
            weight: 16,
        };
        assert_eq!(
            f,
            Frame::Headers {
                stream: 3,
                end_stream: false,
                end_headers: true,
                priority: Some(spec),
                block: Bytes::from_static(b"hdr")
            }
        );
    }

    #[test]
    fn single_frame_rules_of_rfc_9113() {
        // (kind, flags, stream, payload, is a connection error, reason)
        type Case = (u8, u8, u32, &'static [u8], bool, Reason);
        let cases: &[Case] = &[
            (kind::DATA, 0, 0, b"x", true, Reason::ProtocolError),
            (kind::HEADERS, 0, 0, b"", true, Reason::ProtocolError),
            (
                kind::HEADERS,
                flag::PRIORITY,
                3,
                b"\x00\x00\x00\x03\x10",
                false,
                Reason::ProtocolError,
            ),
            (
                kind::PRIORITY,
                0,
                3,
                b"\x00\x00\x00\x01",
                false,
                Reason::FrameSizeError,
            ),
            (
                kind::PRIORITY,
                0,
                0,
                b"\x00\x00\x00\x01\x10",
                true,
                Reason::ProtocolError,
            ),
            (
                kind::RST_STREAM,
                0,
                1,
                b"\x00\x00\x00",
                true,
                Reason::FrameSizeError,
            ),
            (
                kind::RST_STREAM,
                0,
                0,
                b"\x00\x00\x00\x00",
                true,
                Reason::ProtocolError,
            ),
            (kind::SETTINGS, 0, 1, b"", true, Reason::ProtocolError),
            (
                kind::SETTINGS,
                flag::ACK,
                0,
                b"\x00\x01\x00\x00\x00\x00",
                true,
                Reason::FrameSizeError,
            ),
            (
                kind::SETTINGS,
                0,
                0,
                b"\x00\x01\x00",
                true,
                Reason::FrameSizeError,
            ),
            (
                kind::SETTINGS,
                0,
                0,
                b"\x00\x02\x00\x00\x00\x02",
                true,
                Reason::ProtocolError,
            ),
            (
                kind::SETTINGS,
                0,
                0,
                b"\x00\x04\x80\x00\x00\x00",
                true,
                Reason::FlowControlError,
            ),
            (
                kind::SETTINGS,
                0,
                0,
                b"\x00\x05\x00\x00\x3f\xff",
                true,
                Reason::ProtocolError,
            ),
            (
                kind::PUSH_PROMISE,
                flag::END_HEADERS,
                1,
                b"\x00\x00\x00\x02",
                true,
                Reason::ProtocolError,
            ),
            (kind::PING, 0, 0, b"1234567", true, Reason::FrameSizeError),
            (kind::PING, 0, 1, b"12345678", true, Reason::ProtocolError),
            (kind::GOAWAY, 0, 0, b"1234567", true, Reason::FrameSizeError),
            (kind::GOAWAY, 0, 1, b"12345678", true, Reason::ProtocolError),
            (
                kind::WINDOW_UPDATE,
                0,
                0,
                b"\x00\x00\x00",
                true,
                Reason::FrameSizeError,
            ),
            (
                kind::WINDOW_UPDATE,
                0,
                0,
                b"\x00\x00\x00\x00",
                true,
                Reason::ProtocolError,
            ),
            (
                kind::WINDOW_UPDATE,
                0,
                1,
                b"\x00\x00\x00\x00",
                false,
                Reason::ProtocolError,
            ),
            (kind::CONTINUATION, 0, 0, b"", true, Reason::ProtocolError),
        ];
        for &(k, flags, stream, payload, is_conn, why) in cases {
            let err = one(k, flags, stream, payload)
                .expect_err(&format!("kind {k} flags {flags} stream {stream}"));
            assert_eq!(
                reason(err),
                (is_conn, why),
                "kind {k} flags {flags} stream {stream}"
            );
        }
        assert_eq!(
            one(0xfa, 0xff, 9, b"whatever").unwrap(),
            Frame::Unknown {
                kind: 0xfa,
                stream: 9
            }
        );
        assert!(
            one(kind::SETTINGS, 0, 0, b"\x00\x63\xff\xff\xff\xff").is_ok(),
            "unknown settings are ignored"
        );
    }

    #[test]
    fn oversized_frames_are_refused_from_their_header() {
        let mut b = BytesMut::new();
        put_header(
            &mut b,
            DEFAULT_MAX_FRAME_BYTES as usize + 1,
            kind::DATA,
            0,
            1,
        );
        assert_eq!(
            reason(decode(&mut b, DEFAULT_MAX_FRAME_BYTES).unwrap_err()),
            (true, Reason::FrameSizeError)
        );
    }

    #[test]
    fn the_reserved_bit_is_ignored() {
        let mut b = raw(kind::RST_STREAM, 0, 1, &[0, 0, 0, 8]);
        b[5] |= 0x80;
        assert_eq!(
            decode(&mut b, DEFAULT_MAX_FRAME_BYTES).unwrap(),
            Some(Frame::RstStream { stream: 1, code: 8 })
        );
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]
        #[test]
        fn garbage_and_truncation_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300), cut in any::<prop::sample::Index>()) {
            let mut b = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decode(&mut b, DEFAULT_MAX_FRAME_BYTES) {}
            let mut whole = BytesMut::new();
            put_data(&mut whole, 1, &bytes, false);
            let cut = cut.index(whole.len());
            let mut part = BytesMut::from(&whole[..cut]);
            prop_assert_eq!(decode(&mut part, DEFAULT_MAX_FRAME_BYTES).unwrap(), None);
        }
    }
}
