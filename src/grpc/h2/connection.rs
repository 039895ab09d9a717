//! One server-side HTTP/2 connection as a state machine with no I/O (in the manner of
//! quinn-proto): bytes read from the socket go in through [`Connection::receive`], requests
//! and their data come out as [`Event`]s, responses go in through `send_*`, and everything to
//! write accumulates in [`Connection::output`], to be written with one syscall per wake-up.
//!
//! It enforces the rules that need state: stream states and ids, header blocks split over
//! CONTINUATION, HPACK, request header validity (RFC 9113 §8), both directions of flow
//! control, SETTINGS, and limits against abuse (concurrent streams, header block size, and
//! per-second budgets for resets, pings, settings and empty frames).

use hashbrown::HashMap;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use super::frame::{
    self, setting, Frame, H2Error, Reason, SettingParam, CONNECTION_STREAM_ID,
    DEFAULT_MAX_FRAME_BYTES, DEFAULT_WINDOW_BYTES, MAX_FRAME_BYTES_LIMIT, MAX_STREAM_ID,
    MAX_WINDOW_BYTES, PREFACE,
};
use super::hpack::{self, HeaderList};

/// What this server offers and tolerates on a connection.
#[derive(Clone, Debug)]
pub struct Limits {
    /// SETTINGS_MAX_CONCURRENT_STREAMS: more open streams are refused (REFUSED_STREAM).
    pub max_concurrent_streams: u32,
    /// SETTINGS_INITIAL_WINDOW_SIZE: what each stream may send us before we say more.
    pub stream_window: u32,
    /// The connection-wide receive window.
    pub connection_window: u32,
    /// SETTINGS_MAX_FRAME_SIZE we accept.
    pub max_frame_size: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: decoded size (RFC 9113 §6.5.2) of one header list.
    pub max_header_list_size: u32,
    /// Per second: RST_STREAMs from the client (rapid reset), PINGs, SETTINGS, and DATA
    /// frames that are empty without ending their stream. Over budget: GOAWAY
    /// ENHANCE_YOUR_CALM.
    pub resets_per_second: u32,
    pub pings_per_second: u32,
    pub settings_per_second: u32,
    pub empty_frames_per_second: u32,
}

/// Streams a client may have open at once: far above what one gRPC client multiplexes, and
/// a bound on what one connection holds (RFC 9113 §5.1.2 recommends at least 100).
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Each stream's receive window, 1 MiB: enough that a large message is not stalled on
/// WINDOW_UPDATE round trips (RFC 9113 §6.9.2).
pub const DEFAULT_STREAM_WINDOW_BYTES: u32 = 1 << 20;
/// The connection's receive window, 16 MiB: room for many streams' windows at once
/// (RFC 9113 §6.9.1).
pub const DEFAULT_CONNECTION_WINDOW_BYTES: u32 = 16 << 20;
/// The decoded size (RFC 9113 §6.5.2) of the largest header list accepted, 16 KiB: gRPC request
/// heads are a few hundred bytes.
pub const DEFAULT_MAX_HEADER_LIST_BYTES: u32 = 16 << 10;
/// RST_STREAMs a client may send per second before GOAWAY ENHANCE_YOUR_CALM: rapid reset
/// (CVE-2023-44487; RFC 9113 §10.5).
pub const DEFAULT_RESETS_PER_SECOND: u32 = 1000;
/// PINGs a client may send per second (RFC 9113 §10.5).
pub const DEFAULT_PINGS_PER_SECOND: u32 = 100;
/// SETTINGS frames a client may send per second (RFC 9113 §10.5).
pub const DEFAULT_SETTINGS_PER_SECOND: u32 = 100;
/// DATA frames that are empty without ending their stream a client may send per second
/// (RFC 9113 §10.5).
pub const DEFAULT_EMPTY_FRAMES_PER_SECOND: u32 = 1000;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            stream_window: DEFAULT_STREAM_WINDOW_BYTES,
            connection_window: DEFAULT_CONNECTION_WINDOW_BYTES,
            max_frame_size: DEFAULT_MAX_FRAME_BYTES,
            max_header_list_size: DEFAULT_MAX_HEADER_LIST_BYTES,
            resets_per_second: DEFAULT_RESETS_PER_SECOND,
            pings_per_second: DEFAULT_PINGS_PER_SECOND,
            settings_per_second: DEFAULT_SETTINGS_PER_SECOND,
            empty_frames_per_second: DEFAULT_EMPTY_FRAMES_PER_SECOND,
        }
    }
}

/// Header lists kept for reuse ([`Connection::recycle`]): enough for the requests one read
/// brings in, so that steady traffic decodes request heads without allocating.
const SPARE_HEADER_LISTS: usize = 64;

/// What the client did, for the layer above.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A new request (its pseudo-headers checked per RFC 9113 §8.3.1). Hand `headers` back
    /// through [`Connection::recycle`] when done with them.
    Request {
        stream: u32,
        headers: HeaderList,
        end_stream: bool,
    },
    /// Request body bytes; flow-control credit is returned as they are delivered.
    Data {
        stream: u32,
        data: Bytes,
        end_stream: bool,
    },
    /// The client ended the request with trailers (no more data).
    EndOfRequest { stream: u32 },
    /// The stream is gone (client reset, or we reset it for an error): free what it holds.
    Reset { stream: u32, reason: Reason },
}

/// The connection is finished: a GOAWAY (if any was due) is in the output; write it, close.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed {
    pub reason: Reason,
}

/// Header fields kept until they are encoded (names and values).
type OwnedFields = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Default)]
struct Stream {
    /// The client sent END_STREAM.
    remote_closed: bool,
    /// What the client may still send us on this stream.
    recv_window: i64,
    /// Bytes delivered since we last granted credit.
    recv_unacked: u32,
    /// What we may still send.
    send_window: i64,
    /// Response body waiting for window.
    pending: BytesMut,
    /// After `pending`: end the stream, with these trailers if any. They are encoded when
    /// they go out: HPACK blocks must reach the client in the order they were encoded.
    finish: Option<Option<OwnedFields>>,
    /// Content-length the client announced, and what arrived so far.
    content_length: Option<u64>,
    received: u64,
}

/// Streams we reset that are remembered (see `Connection::reset_by_us`): as many as may be
/// open at once by default, so a reset is not forgotten while the client may still be sending.
const REMEMBERED_RESETS: usize = 1024;
/// Runs of skipped stream ids remembered (see `Connection::skipped`).
const REMEMBERED_SKIP_RUNS: usize = 64;
/// Where the output starts, so that a warm connection's writes rarely grow it.
const OUTPUT_CAPACITY_BYTES: usize = 16 * 1024;
/// Where encoded header blocks start: a response head or trailers fits.
const ENCODED_BLOCK_CAPACITY_BYTES: usize = 256;
/// A header block may be larger than the decoded list it carries only by a little (HPACK
/// literals); this many times the list limit is a flood, not a request (RFC 9113 §10.5.1).
const BLOCK_BYTES_PER_LIST_BYTE: usize = 4;
/// Receive credit goes back once a window's 1/this has been consumed: few WINDOW_UPDATEs, and
/// the peer never stalls on a window it could have had (RFC 9113 §6.9).
const WINDOW_REFILL_DIVISOR: u32 = 2;
/// The first stream id a client may open: client-initiated streams are odd (RFC 9113 §5.1.1).
const FIRST_CLIENT_STREAM_ID: u32 = 1;
/// Client-initiated stream ids are odd: the next one is this far above the last
/// (RFC 9113 §5.1.1).
const CLIENT_STREAM_ID_STEP: u32 = 2;
/// The period of each per-second budget in [`Limits`].
const BUDGET_PERIOD: Duration = Duration::from_secs(1);

/// A partly received header block (HEADERS without END_HEADERS, then CONTINUATIONs).
struct Block {
    stream: u32,
    end_stream: bool,
    bytes: BytesMut,
}

struct Budget {
    limit: u32,
    used: u32,
    since: Option<Instant>,
}

impl Budget {
    fn new(limit: u32) -> Budget {
        Budget {
            limit,
            used: 0,
            since: None,
        }
    }

    /// Spends one; false once more than `limit` were spent within one second.
    fn spend(&mut self, now: Instant) -> bool {
        match self.since {
            Some(t) if now.duration_since(t) < BUDGET_PERIOD => {}
            _ => {
                self.since = Some(now);
                self.used = 0;
            }
        }
        self.used += 1;
        self.used <= self.limit
    }
}

/// The server side of one HTTP/2 connection.
pub struct Connection {
    limits: Limits,
    out: BytesMut,
    preface_seen: bool,
    going_away: bool,
    decoder: hpack::Decoder,
    /// What `check_request` said of the last request head, while the blocks that follow it
    /// are repeats of its block (the same list: the same verdict).
    last_request_check: Option<Result<Option<u64>, &'static str>>,
    /// Header lists handed back by the layer above, reused for the next requests.
    spare_headers: Vec<HeaderList>,
    /// Where header blocks we send are encoded before framing.
    encoded: Vec<u8>,
    encoder: hpack::Encoder,
    streams: HashMap<u32, Stream>,
    /// Highest stream id the client opened; lower ids not in `streams` are closed.
    last_stream: u32,
    /// The streams we reset, newest last: the client may have sent frames on them before it
    /// saw the reset, and a HEADERS among those is ignored (RFC 9113 §5.1). A HEADERS on any
    /// other stream that ended is a connection error STREAM_CLOSED, so only resets are kept.
    reset_by_us: VecDeque<u32>,
    /// Stream ids the client skipped when it opened a higher one, as inclusive runs, newest
    /// last: they were never opened, and a HEADERS on one is a PROTOCOL_ERROR (RFC 9113 §5.1.1).
    skipped: VecDeque<(u32, u32)>,
    block: Option<Block>,
    /// Client's SETTINGS.
    peer_initial_window: u32,
    peer_max_frame_size: u32,
    send_window: i64,
    recv_window: i64,
    recv_unacked: u32,
    resets: Budget,
    pings: Budget,
    settings: Budget,
    empty_frames: Budget,
    /// Frames received, and how many of them were PING acknowledgements: the layer above
    /// tells a client's answers to its own PINGs apart from activity ([`Connection::frames`]).
    frames: u64,
    ping_acks: u64,
}

fn conn_err(reason: Reason, why: &'static str) -> H2Error {
    H2Error::Connection { reason, why }
}

fn stream_err(stream: u32, reason: Reason, why: &'static str) -> H2Error {
    H2Error::Stream {
        stream,
        reason,
        why,
    }
}

impl Connection {
    /// A connection that will announce `limits` in its first SETTINGS (already in the output).
    pub fn new(limits: Limits) -> Connection {
        assert!(limits.stream_window <= MAX_WINDOW_BYTES);
        assert!(limits.connection_window <= MAX_WINDOW_BYTES);
        assert!((DEFAULT_MAX_FRAME_BYTES..=MAX_FRAME_BYTES_LIMIT).contains(&limits.max_frame_size));
        let mut out = BytesMut::with_capacity(OUTPUT_CAPACITY_BYTES);
        frame::put_settings(
            &mut out,
            &[
                SettingParam {
                    id: setting::MAX_CONCURRENT_STREAMS,
                    value: limits.max_concurrent_streams,
                },
                SettingParam {
                    id: setting::INITIAL_WINDOW_SIZE,
                    value: limits.stream_window,
                },
                SettingParam {
                    id: setting::MAX_FRAME_SIZE,
                    value: limits.max_frame_size,
                },
                SettingParam {
                    id: setting::MAX_HEADER_LIST_SIZE,
                    value: limits.max_header_list_size,
                },
                SettingParam {
                    id: setting::ENABLE_PUSH,
                    value: 0,
                },
            ],
        );
        let extra = limits
            .connection_window
            .saturating_sub(DEFAULT_WINDOW_BYTES);
        if extra > 0 {
            frame::put_window_update(&mut out, CONNECTION_STREAM_ID, extra);
        }
        Connection {
            resets: Budget::new(limits.resets_per_second),
            pings: Budget::new(limits.pings_per_second),
            settings: Budget::new(limits.settings_per_second),
            empty_frames: Budget::new(limits.empty_frames_per_second),
            recv_window: i64::from(limits.connection_window),
            limits,
            out,
            preface_seen: false,
            going_away: false,
            decoder: hpack::Decoder::new(hpack::DEFAULT_TABLE_BYTES),
            last_request_check: None,
            spare_headers: Vec::new(),
            encoded: Vec::with_capacity(ENCODED_BLOCK_CAPACITY_BYTES),
            encoder: hpack::Encoder::default(),
            streams: HashMap::new(),
            last_stream: 0,
            reset_by_us: VecDeque::new(),
            skipped: VecDeque::new(),
            block: None,
            peer_initial_window: DEFAULT_WINDOW_BYTES,
            peer_max_frame_size: DEFAULT_MAX_FRAME_BYTES,
            send_window: i64::from(DEFAULT_WINDOW_BYTES),
            recv_unacked: 0,
            frames: 0,
            ping_acks: 0,
        }
    }

    /// Frames received so far, and how many of them acknowledged a PING: a read whose frames
    /// were all PING acknowledgements is the client answering a liveness check, not activity
    /// (it must not keep an idle connection open).
    pub fn frames(&self) -> (u64, u64) {
        (self.frames, self.ping_acks)
    }

    /// Sends a PING the client must acknowledge (RFC 9113 §6.7): every HTTP/2 client does so
    /// by itself, so a connection that stays silent after one has a dead or stuck peer.
    pub fn ping(&mut self, data: [u8; frame::PING_PAYLOAD_BYTES]) {
        frame::put_ping(&mut self.out, false, data);
    }

    /// Ends the connection at once: GOAWAY with `reason` and `debug` data; no new streams.
    /// For a connection the server cuts (a dead client), where [`Connection::go_away`] would
    /// let open streams finish.
    pub fn go_away_now(&mut self, reason: Reason, debug: &[u8]) {
        if !self.going_away {
            frame::put_goaway(&mut self.out, self.last_stream, reason, debug);
            self.going_away = true;
        }
    }

    /// Bytes to write to the socket; the caller writes them and clears the buffer.
    pub fn output(&mut self) -> &mut BytesMut {
        &mut self.out
    }

    /// Streams open right now.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// Consumes every whole frame in `input`, appending what happened to `events`.
    pub fn receive(
        &mut self,
        input: &mut BytesMut,
        now: Instant,
        events: &mut Vec<Event>,
    ) -> Result<(), Closed> {
        if !self.preface_seen {
            let n = input.len().min(PREFACE.len());
            if input[..n] != PREFACE[..n] {
                return Err(self.fail(conn_err(
                    Reason::ProtocolError,
                    "not an HTTP/2 connection preface",
                )));
            }
            if n < PREFACE.len() {
                return Ok(());
            }
            let _ = input.split_to(PREFACE.len());
            self.preface_seen = true;
        }
        loop {
            let frame = match frame::decode(input, self.limits.max_frame_size) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => {
                    if let Some(closed) = self.handle_error(e, events) {
                        return Err(closed);
                    }
                    continue;
                }
            };
            if let Err(e) = self.on_frame(frame, now, events) {
                if let Some(closed) = self.handle_error(e, events) {
                    return Err(closed);
                }
            }
        }
    }

    /// A stream error resets one stream; a connection error ends everything.
    fn handle_error(&mut self, e: H2Error, events: &mut Vec<Event>) -> Option<Closed> {
        match e {
            H2Error::Stream { stream, reason, .. } => {
                let was_open = self.streams.contains_key(&stream);
                self.reset(stream, reason);
                if was_open {
                    events.push(Event::Reset { stream, reason });
                }
                None
            }
            e => Some(self.fail(e)),
        }
    }

    fn fail(&mut self, e: H2Error) -> Closed {
        let (reason, why) = match e {
            H2Error::Connection { reason, why } => (reason, why),
            H2Error::Stream { reason, why, .. } => (reason, why),
        };
        frame::put_goaway(&mut self.out, self.last_stream, reason, why.as_bytes());
        self.going_away = true;
        Closed { reason }
    }

    /// Keeps the newest of a bounded memory.
    fn remember<T>(memory: &mut VecDeque<T>, item: T, limit: usize) {
        if memory.len() == limit {
            memory.pop_front();
        }
        memory.push_back(item);
    }

    /// Starts a graceful shutdown: no new streams; open ones may finish.
    pub fn go_away(&mut self) {
        if !self.going_away {
            frame::put_goaway(&mut self.out, self.last_stream, Reason::NoError, b"");
            self.going_away = true;
        }
    }

    fn on_frame(
        &mut self,
        frame: Frame,
        now: Instant,
        events: &mut Vec<Event>,
    ) -> Result<(), H2Error> {
        if let Some(block) = &self.block {
            let continues =
                matches!(&frame, Frame::Continuation { stream, .. } if *stream == block.stream);
            if !continues {
                return Err(conn_err(Reason::ProtocolError, "header block interrupted"));
            }
        }
        self.frames += 1;
        match frame {
            Frame::Settings { ack: true, .. } => {}
            Frame::Settings { ack: false, params } => {
                if !self.settings.spend(now) {
                    return Err(conn_err(Reason::EnhanceYourCalm, "SETTINGS flood"));
                }
                self.apply_settings(&params)?;
                frame::put_settings_ack(&mut self.out);
            }
            Frame::Ping { ack: true, .. } => self.ping_acks += 1,
            Frame::Ping { ack: false, data } => {
                if !self.pings.spend(now) {
                    return Err(conn_err(Reason::EnhanceYourCalm, "PING flood"));
                }
                frame::put_ping(&mut self.out, true, data);
            }
            Frame::GoAway { .. } => self.going_away = true,
            Frame::WindowUpdate {
                stream: CONNECTION_STREAM_ID,
                increment,
            } => {
                self.send_window += i64::from(increment);
                if self.send_window > i64::from(MAX_WINDOW_BYTES) {
                    return Err(conn_err(
                        Reason::FlowControlError,
                        "connection window above 2^31-1",
                    ));
                }
                // Sends leave it at 0 or more (`put_allowed`); checked against 2^31-1 above.
                assert!((1..=i64::from(MAX_WINDOW_BYTES)).contains(&self.send_window));
                self.flush_pending();
            }
            Frame::WindowUpdate { stream, increment } => {
                if stream > self.last_stream {
                    return Err(conn_err(
                        Reason::ProtocolError,
                        "WINDOW_UPDATE on an idle stream",
                    ));
                }
                if let Some(s) = self.streams.get_mut(&stream) {
                    s.send_window += i64::from(increment);
                    if s.send_window > i64::from(MAX_WINDOW_BYTES) {
                        return Err(stream_err(
                            stream,
                            Reason::FlowControlError,
                            "stream window above 2^31-1",
                        ));
                    }
                    // At least -(2^31-1) before (see `apply_settings`), and checked against
                    // 2^31-1 above (RFC 9113 §6.9.2).
                    let max = i64::from(MAX_WINDOW_BYTES);
                    assert!((-max + 1..=max).contains(&s.send_window));
                    self.flush_pending();
                }
            }
            Frame::Priority { stream, .. } => {
                // Parsed and ignored; it may name an idle stream without opening it.
                let _ = stream;
            }
            Frame::RstStream { stream, code } => {
                if stream > self.last_stream {
                    return Err(conn_err(
                        Reason::ProtocolError,
                        "RST_STREAM on an idle stream",
                    ));
                }
                if !self.resets.spend(now) {
                    return Err(conn_err(Reason::EnhanceYourCalm, "RST_STREAM flood"));
                }
                if self.streams.remove(&stream).is_some() {
                    let reason = reason_from(code);
                    events.push(Event::Reset { stream, reason });
                }
            }
            Frame::Headers {
                stream,
                end_stream,
                end_headers,
                block,
                ..
            } => {
                if end_headers {
                    // The whole block in one frame (the usual case): decoded in place.
                    self.on_header_block(stream, end_stream, &block, events)?;
                } else {
                    let mut bytes = BytesMut::from(&block[..]);
                    self.check_block_size(bytes.len())?;
                    bytes.reserve(bytes.len());
                    self.block = Some(Block {
                        stream,
                        end_stream,
                        bytes,
                    });
                }
            }
            Frame::Continuation {
                stream,
                end_headers,
                block,
            } => {
                let Some(mut pending) = self.block.take() else {
                    return Err(conn_err(
                        Reason::ProtocolError,
                        "CONTINUATION without HEADERS",
                    ));
                };
                debug_assert_eq!(pending.stream, stream);
                self.check_block_size(pending.bytes.len() + block.len())?;
                pending.bytes.extend_from_slice(&block);
                if end_headers {
                    self.on_header_block(stream, pending.end_stream, &pending.bytes, events)?;
                } else {
                    self.block = Some(pending);
                }
            }
            Frame::Data {
                stream,
                end_stream,
                data,
                flow_len,
            } => {
                self.on_data(stream, end_stream, data, flow_len, now, events)?;
            }
            Frame::Unknown { .. } => {}
        }
        Ok(())
    }

    fn check_block_size(&self, len: usize) -> Result<(), H2Error> {
        if len > BLOCK_BYTES_PER_LIST_BYTE * self.limits.max_header_list_size as usize {
            return Err(conn_err(Reason::EnhanceYourCalm, "header block too large"));
        }
        Ok(())
    }

    fn apply_settings(&mut self, params: &[SettingParam]) -> Result<(), H2Error> {
        for p in params {
            match p.id {
                setting::INITIAL_WINDOW_SIZE => {
                    // Checked with the frame (RFC 9113 §6.5.2).
                    assert!(p.value <= MAX_WINDOW_BYTES);
                    let delta = i64::from(p.value) - i64::from(self.peer_initial_window);
                    self.peer_initial_window = p.value;
                    for s in self.streams.values_mut() {
                        s.send_window += delta;
                        if s.send_window > i64::from(MAX_WINDOW_BYTES) {
                            return Err(conn_err(
                                Reason::FlowControlError,
                                "stream window above 2^31-1",
                            ));
                        }
                        // A send leaves a window at 0 or more, so a window is never below
                        // the initial window minus 2^31-1 (RFC 9113 §6.9.2).
                        assert!(s.send_window >= i64::from(p.value) - i64::from(MAX_WINDOW_BYTES));
                    }
                }
                setting::MAX_FRAME_SIZE => {
                    // Checked with the frame (RFC 9113 §6.5.2).
                    assert!((DEFAULT_MAX_FRAME_BYTES..=MAX_FRAME_BYTES_LIMIT).contains(&p.value));
                    self.peer_max_frame_size = p.value;
                }
                setting::HEADER_TABLE_SIZE => self.encoder.set_limit(p.value as usize),
                _ => {}
            }
        }
        self.flush_pending();
        Ok(())
    }

    fn on_header_block(
        &mut self,
        stream: u32,
        end_stream: bool,
        block: &[u8],
        events: &mut Vec<Event>,
    ) -> Result<(), H2Error> {
        // Decode first, whatever happens to the stream: the HPACK table must stay in step.
        let mut headers = self.spare_headers.pop().unwrap_or_default();
        let decoded = self
            .decoder
            .decode(
                block,
                &mut headers,
                self.limits.max_header_list_size as usize,
            )
            .map_err(|_| conn_err(Reason::CompressionError, "HPACK decoding failed"))?;
        if !decoded.repeat {
            self.last_request_check = None;
        }
        let result = self.open_stream(stream, end_stream, &headers, decoded.list_size, events);
        match result {
            Ok(true) => {
                events.push(Event::Request {
                    stream,
                    headers,
                    end_stream,
                });
                Ok(())
            }
            Ok(false) | Err(_) => {
                self.recycle(headers);
                result.map(|_| ())
            }
        }
    }

    /// Hands a request's header list back for reuse.
    pub fn recycle(&mut self, headers: HeaderList) {
        if self.spare_headers.len() < SPARE_HEADER_LISTS {
            self.spare_headers.push(headers);
        }
    }

    /// Applies a decoded header block to its stream: true if it opened a request.
    fn open_stream(
        &mut self,
        stream: u32,
        end_stream: bool,
        fields: &HeaderList,
        list_size: usize,
        events: &mut Vec<Event>,
    ) -> Result<bool, H2Error> {
        if let Some(s) = self.streams.get_mut(&stream) {
            // Trailers: they must end the stream and carry no pseudo-header.
            if s.remote_closed {
                return Err(stream_err(
                    stream,
                    Reason::StreamClosed,
                    "HEADERS after END_STREAM",
                ));
            }
            if !end_stream {
                return Err(stream_err(
                    stream,
                    Reason::ProtocolError,
                    "trailers without END_STREAM",
                ));
            }
            if list_size > self.limits.max_header_list_size as usize {
                return Err(stream_err(
                    stream,
                    Reason::ProtocolError,
                    "trailers larger than SETTINGS_MAX_HEADER_LIST_SIZE",
                ));
            }
            if fields.iter().any(|(n, _)| n.starts_with(b":")) {
                return Err(stream_err(
                    stream,
                    Reason::ProtocolError,
                    "pseudo-header in trailers",
                ));
            }
            s.remote_closed = true;
            events.push(Event::EndOfRequest { stream });
            return Ok(false);
        }
        if stream % CLIENT_STREAM_ID_STEP == 0 {
            return Err(conn_err(
                Reason::ProtocolError,
                "client opened an even stream id",
            ));
        }
        if stream <= self.last_stream {
            if self.reset_by_us.contains(&stream) {
                return Ok(false); // sent before the client saw our reset: ignored
            }
            let skipped = self
                .skipped
                .iter()
                .any(|run| (run.0..=run.1).contains(&stream));
            return Err(if skipped {
                conn_err(
                    Reason::ProtocolError,
                    "stream id lower than one already used",
                )
            } else {
                conn_err(Reason::StreamClosed, "HEADERS on a closed stream")
            });
        }
        let next = if self.last_stream == 0 {
            FIRST_CLIENT_STREAM_ID
        } else {
            self.last_stream + CLIENT_STREAM_ID_STEP
        };
        if stream > next {
            let run = (next, stream - CLIENT_STREAM_ID_STEP);
            Self::remember(&mut self.skipped, run, REMEMBERED_SKIP_RUNS);
        }
        // Client-initiated stream ids are odd and strictly increase (RFC 9113 §5.1.1).
        debug_assert!(stream > self.last_stream && stream <= MAX_STREAM_ID);
        debug_assert_eq!(stream % CLIENT_STREAM_ID_STEP, FIRST_CLIENT_STREAM_ID);
        self.last_stream = stream;
        if self.going_away {
            return Err(stream_err(stream, Reason::RefusedStream, "shutting down"));
        }
        if self.streams.len() >= self.limits.max_concurrent_streams as usize {
            return Err(stream_err(
                stream,
                Reason::RefusedStream,
                "too many concurrent streams",
            ));
        }
        // A repeated block (see `hpack::Decoded::repeat`) passes or fails as it did before.
        let check = *self
            .last_request_check
            .get_or_insert_with(|| check_request(fields, list_size, &self.limits));
        debug_assert_eq!(check, check_request(fields, list_size, &self.limits));
        let content_length = check.map_err(|why| stream_err(stream, Reason::ProtocolError, why))?;
        if end_stream && content_length.is_some_and(|n| n != 0) {
            return Err(stream_err(
                stream,
                Reason::ProtocolError,
                "content-length without a body",
            ));
        }
        self.streams.insert(
            stream,
            Stream {
                remote_closed: end_stream,
                recv_window: i64::from(self.limits.stream_window),
                send_window: i64::from(self.peer_initial_window),
                content_length,
                ..Stream::default()
            },
        );
        // Refused above when at the limit we advertised (RFC 9113 §5.1.2).
        debug_assert!(self.streams.len() <= self.limits.max_concurrent_streams as usize);
        Ok(true)
    }

    fn on_data(
        &mut self,
        stream: u32,
        end_stream: bool,
        data: Bytes,
        flow_len: u32,
        now: Instant,
        events: &mut Vec<Event>,
    ) -> Result<(), H2Error> {
        // Connection-level flow control counts every DATA frame, even for closed streams.
        self.recv_window -= i64::from(flow_len);
        if self.recv_window < 0 {
            return Err(conn_err(
                Reason::FlowControlError,
                "connection window exceeded",
            ));
        }
        self.grant_connection(flow_len);
        if flow_len == 0 && !end_stream && !self.empty_frames.spend(now) {
            return Err(conn_err(Reason::EnhanceYourCalm, "empty DATA flood"));
        }
        if stream > self.last_stream {
            return Err(conn_err(Reason::ProtocolError, "DATA on an idle stream"));
        }
        let Some(s) = self.streams.get_mut(&stream) else {
            return Err(stream_err(
                stream,
                Reason::StreamClosed,
                "DATA on a closed stream",
            ));
        };
        if s.remote_closed {
            return Err(stream_err(
                stream,
                Reason::StreamClosed,
                "DATA after END_STREAM",
            ));
        }
        s.recv_window -= i64::from(flow_len);
        if s.recv_window < 0 {
            return Err(stream_err(
                stream,
                Reason::FlowControlError,
                "stream window exceeded",
            ));
        }
        s.received += data.len() as u64;
        if let Some(expected) = s.content_length {
            if s.received > expected || (end_stream && s.received != expected) {
                return Err(stream_err(
                    stream,
                    Reason::ProtocolError,
                    "body does not match content-length",
                ));
            }
        }
        s.remote_closed = end_stream;
        // Credit goes back as data is handed over; the layer above bounds what it buffers.
        s.recv_unacked += flow_len;
        if !end_stream && s.recv_unacked >= self.limits.stream_window / WINDOW_REFILL_DIVISOR {
            s.recv_window += i64::from(s.recv_unacked);
            frame::put_window_update(&mut self.out, stream, s.recv_unacked);
            s.recv_unacked = 0;
        }
        // What the client may send plus what it sent and we have not granted back is the
        // window we advertised, so the window never exceeds it (nor 2^31-1, RFC 9113 §6.9.1).
        debug_assert!(s.recv_window >= 0);
        debug_assert_eq!(
            s.recv_window + i64::from(s.recv_unacked),
            i64::from(self.limits.stream_window)
        );
        events.push(Event::Data {
            stream,
            data,
            end_stream,
        });
        Ok(())
    }

    fn grant_connection(&mut self, flow_len: u32) {
        self.recv_unacked += flow_len;
        if self.recv_unacked >= self.limits.connection_window / WINDOW_REFILL_DIVISOR {
            self.recv_window += i64::from(self.recv_unacked);
            frame::put_window_update(&mut self.out, CONNECTION_STREAM_ID, self.recv_unacked);
            self.recv_unacked = 0;
        }
        // As for a stream's window (see `on_data`): never above what we advertised.
        debug_assert!(self.recv_window >= 0);
        debug_assert_eq!(
            self.recv_window + i64::from(self.recv_unacked),
            i64::from(self.limits.connection_window)
        );
    }

    /// Sends response headers (not flow-controlled). Ignored for a stream that is not open
    /// any more (the client reset it): nothing may be sent on a closed stream.
    pub fn send_headers(&mut self, stream: u32, fields: &[(&[u8], &[u8])], end_stream: bool) {
        if !self.streams.contains_key(&stream) {
            return;
        }
        let block = self.encode(fields);
        self.put_block(stream, &block, end_stream);
        self.encoded = block;
    }

    /// Encodes a header block into the reusable buffer, which the caller gives back.
    fn encode(&mut self, fields: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut block = std::mem::take(&mut self.encoded);
        block.clear();
        self.encoder.encode(fields, &mut block);
        block
    }

    fn put_block(&mut self, stream: u32, block: &[u8], end_stream: bool) {
        frame::put_headers(
            &mut self.out,
            stream,
            block,
            end_stream,
            self.peer_max_frame_size,
        );
        if end_stream {
            self.end_local(stream);
        }
    }

    /// Queues response body bytes; they go out as flow control allows.
    pub fn send_data(&mut self, stream: u32, data: &[u8]) {
        if let Some(s) = self.streams.get_mut(&stream) {
            debug_assert!(s.finish.is_none(), "data after the end of the response");
            // Nothing queued ahead (the usual case): straight into the output as far as the
            // windows allow, and only the rest waits in the stream's queue.
            let sent = if s.pending.is_empty() {
                let window = &mut self.send_window;
                put_allowed(
                    &mut self.out,
                    stream,
                    s,
                    window,
                    self.peer_max_frame_size,
                    data,
                )
            } else {
                0
            };
            s.pending.extend_from_slice(&data[sent..]);
        }
    }

    /// Ends the response with trailers, after all queued data.
    pub fn send_trailers(&mut self, stream: u32, fields: &[(&[u8], &[u8])]) {
        let Some(queued) = self.streams.get(&stream).map(|s| s.pending.len()) else {
            return;
        };
        if queued == 0 {
            // Nothing queued before them (the usual case): out now, no copy kept.
            let block = self.encode(fields);
            self.put_block(stream, &block, true);
            self.encoded = block;
        } else if let Some(s) = self.streams.get_mut(&stream) {
            let owned = fields.iter().map(|(n, v)| (n.to_vec(), v.to_vec()));
            s.finish = Some(Some(owned.collect()));
        }
    }

    /// Ends the response after all queued data, without trailers (an empty END_STREAM DATA).
    pub fn finish(&mut self, stream: u32) {
        if let Some(s) = self.streams.get_mut(&stream) {
            s.finish = Some(None);
            self.flush_stream(stream);
        }
    }

    /// Bytes queued for `stream` that flow control has not let out yet.
    pub fn queued(&self, stream: u32) -> usize {
        self.streams.get(&stream).map_or(0, |s| s.pending.len())
    }

    /// Resets a stream (RST_STREAM) and forgets it.
    pub fn reset(&mut self, stream: u32, reason: Reason) {
        frame::put_rst_stream(&mut self.out, stream, reason);
        self.streams.remove(&stream);
        if !self.reset_by_us.contains(&stream) {
            Self::remember(&mut self.reset_by_us, stream, REMEMBERED_RESETS);
        }
    }

    /// Our side of `stream` is complete. If the client is still sending, tell it to stop
    /// (RST_STREAM NO_ERROR, RFC 9113 §8.1): either way the stream is done here.
    fn end_local(&mut self, stream: u32) {
        let remote_closed = self.streams.get(&stream).map(|s| s.remote_closed);
        match remote_closed {
            Some(true) => {
                self.streams.remove(&stream);
            }
            Some(false) => self.reset(stream, Reason::NoError),
            None => {}
        }
    }

    fn flush_pending(&mut self) {
        let ids: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| !s.pending.is_empty() || s.finish.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.flush_stream(id);
        }
    }

    /// Writes as much of a stream's queued body as both windows allow, then its trailers.
    fn flush_stream(&mut self, stream: u32) {
        let max_frame = self.peer_max_frame_size;
        let Some(s) = self.streams.get_mut(&stream) else {
            return;
        };
        let mut pending = std::mem::take(&mut s.pending);
        let window = &mut self.send_window;
        let sent = put_allowed(&mut self.out, stream, s, window, max_frame, &pending);
        pending.advance(sent);
        let done = pending.is_empty();
        s.pending = pending;
        if !done {
            return;
        }
        if let Some(finish) = s.finish.take() {
            match finish {
                Some(trailers) => {
                    let fields: Vec<(&[u8], &[u8])> =
                        trailers.iter().map(|(n, v)| (&n[..], &v[..])).collect();
                    let block = self.encode(&fields);
                    self.put_block(stream, &block, true);
                    self.encoded = block;
                }
                None => {
                    frame::put_data(&mut self.out, stream, &[], true);
                    self.end_local(stream);
                }
            }
        }
    }
}

/// Writes DATA frames of `data` for `stream` as far as its window, the connection's window
/// and the peer's frame size allow; returns how many bytes went out.
fn put_allowed(
    out: &mut BytesMut,
    stream: u32,
    s: &mut Stream,
    connection_window: &mut i64,
    max_frame: u32,
    data: &[u8],
) -> usize {
    let mut sent = 0;
    while sent < data.len() {
        let n = ((data.len() - sent) as i64)
            .min(s.send_window)
            .min(*connection_window)
            .min(i64::from(max_frame));
        if n <= 0 {
            break;
        }
        frame::put_data(out, stream, &data[sent..sent + n as usize], false);
        s.send_window -= n;
        *connection_window -= n;
        // A send never exceeds either window (RFC 9113 §6.9).
        debug_assert!(s.send_window >= 0 && *connection_window >= 0);
        sent += n as usize;
    }
    sent
}

fn reason_from(code: u32) -> Reason {
    use Reason::*;
    [
        NoError,
        ProtocolError,
        InternalError,
        FlowControlError,
        SettingsTimeout,
        StreamClosed,
        FrameSizeError,
        RefusedStream,
        Cancel,
        CompressionError,
        ConnectError,
        EnhanceYourCalm,
        InadequateSecurity,
        Http11Required,
    ]
    .into_iter()
    .find(|r| *r as u32 == code)
    .unwrap_or(InternalError)
}

/// RFC 9113 §8.2-8.3 for a request head; returns its content-length, if any.
fn check_request(
    fields: &HeaderList,
    list_size: usize,
    limits: &Limits,
) -> Result<Option<u64>, &'static str> {
    if list_size > limits.max_header_list_size as usize {
        return Err("header list larger than SETTINGS_MAX_HEADER_LIST_SIZE");
    }
    let (mut method, mut scheme, mut path) = (0, 0, 0);
    let mut regular_seen = false;
    let mut content_length = None;
    let (mut authority, mut host) = (None, None);
    for (name, value, checked) in fields.iter_checked() {
        if !checked {
            if let Some(why) = hpack::field_error(name, value) {
                return Err(why);
            }
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            if regular_seen {
                return Err("pseudo-header after a regular header");
            }
            match pseudo {
                b"method" => method += 1,
                b"scheme" => scheme += 1,
                b"path" => {
                    if value.is_empty() {
                        return Err("empty :path");
                    }
                    path += 1
                }
                b"authority" => authority = Some(value),
                _ => return Err("unknown pseudo-header"),
            }
            continue;
        }
        regular_seen = true;
        match name {
            b"connection" | b"keep-alive" | b"proxy-connection" | b"transfer-encoding"
            | b"upgrade" => {
                return Err("connection-specific header");
            }
            b"te" if value != b"trailers" => return Err("te other than trailers"),
            b"host" => host = Some(value),
            b"content-length" => {
                let n = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or("content-length is not a number")?;
                content_length = Some(n);
            }
            _ => {}
        }
    }
    if (method, scheme, path) != (1, 1, 1) {
        return Err("missing or repeated :method, :scheme or :path");
    }
    if let (Some(a), Some(h)) = (authority, host) {
        if a != h {
            return Err(":authority and host differ");
        }
    }
    Ok(content_length)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::h2::frame::{flag, kind};
    use crate::grpc::h2::test_peer::ClientPeer;

    /// The server's state machine and a client talking to it ([`ClientPeer`]): the client's
    /// frames go in with [`run`](Peer::run), the server's come out with
    /// [`frames`](Peer::frames). It derefs to the client, so `p.headers(..)` sends a request.
    struct Peer {
        conn: Connection,
        client: ClientPeer,
        now: Instant,
    }

    impl std::ops::Deref for Peer {
        type Target = ClientPeer;
        fn deref(&self) -> &ClientPeer {
            &self.client
        }
    }

    impl std::ops::DerefMut for Peer {
        fn deref_mut(&mut self) -> &mut ClientPeer {
            &mut self.client
        }
    }

    const REQUEST: &[(&[u8], &[u8])] = &[
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", b"/eventstream.EventService/Publish"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ];

    impl Peer {
        fn new(limits: Limits) -> Peer {
            Peer {
                conn: Connection::new(limits),
                client: ClientPeer::new(),
                now: Instant::now(),
            }
        }

        fn run(&mut self) -> (Vec<Event>, Result<(), Closed>) {
            let mut events = Vec::new();
            let result = self
                .conn
                .receive(&mut self.client.input, self.now, &mut events);
            (events, result)
        }

        /// Everything the server wrote, decoded (header blocks still encoded).
        fn frames(&mut self) -> Vec<Frame> {
            ClientPeer::frames(self.conn.output())
        }
    }

    fn goaway_reason(frames: &[Frame]) -> Option<u32> {
        frames.iter().find_map(|f| match f {
            Frame::GoAway { code, .. } => Some(*code),
            _ => None,
        })
    }

    fn rst(frames: &[Frame], stream: u32) -> Option<u32> {
        frames.iter().find_map(|f| match f {
            Frame::RstStream { stream: s, code } if *s == stream => Some(*code),
            _ => None,
        })
    }

    #[test]
    fn handshake_then_a_request_with_a_body() {
        let mut p = Peer::new(Limits::default());
        p.headers(1, REQUEST, false);
        frame::put_data(&mut p.input, 1, b"\0\0\0\0\x02hi", true);
        let (events, result) = p.run();
        assert_eq!(result, Ok(()));
        let Event::Request {
            stream: 1,
            headers: fields,
            end_stream: false,
        } = &events[0]
        else {
            panic!("{events:?}")
        };
        assert_eq!(fields.len(), 5);
        assert_eq!(
            events[1],
            Event::Data {
                stream: 1,
                data: Bytes::from_static(b"\0\0\0\0\x02hi"),
                end_stream: true
            }
        );
        let frames = p.frames();
        assert!(matches!(&frames[0], Frame::Settings { ack: false, params } if params.len() == 5));
        assert!(frames.contains(&Frame::Settings {
            ack: true,
            params: vec![]
        }));
    }

    #[test]
    fn a_response_is_headers_data_and_trailers() {
        let mut p = Peer::new(Limits::default());
        p.headers(1, REQUEST, true);
        p.run().1.unwrap();
        p.frames();
        p.conn.send_headers(
            1,
            &[(b":status", b"200"), (b"content-type", b"application/grpc")],
            false,
        );
        p.conn.send_data(1, b"body");
        p.conn.send_trailers(1, &[(b"grpc-status", b"0")]);
        let frames = p.frames();
        let Frame::Headers {
            block,
            end_stream: false,
            ..
        } = &frames[0]
        else {
            panic!("{frames:?}")
        };
        assert_eq!(p.fields(block)[0], (b":status".to_vec(), b"200".to_vec()));
        assert!(
            matches!(&frames[1], Frame::Data { data, end_stream: false, .. } if &data[..] == b"body")
        );
        let Frame::Headers {
            block,
            end_stream: true,
            ..
        } = &frames[2]
        else {
            panic!("{frames:?}")
        };
        assert_eq!(
            p.fields(block),
            vec![(b"grpc-status".to_vec(), b"0".to_vec())]
        );
        assert_eq!(p.conn.open_streams(), 0);
    }

    #[test]
    fn response_data_waits_for_the_clients_window() {
        let mut p = Peer::new(Limits::default());
        p.input.clear();
        p.input.extend_from_slice(PREFACE);
        frame::put_settings(
            &mut p.input,
            &[SettingParam {
                id: setting::INITIAL_WINDOW_SIZE,
                value: 10,
            }],
        );
        p.headers(1, REQUEST, true);
        p.run().1.unwrap();
        p.frames();
        p.conn.send_headers(1, &[(b":status", b"200")], false);
        p.conn.send_data(1, &[7u8; 25]);
        p.conn.send_trailers(1, &[(b"grpc-status", b"0")]);
        let frames = p.frames();
        assert!(matches!(&frames[1], Frame::Data { data, .. } if data.len() == 10));
        assert_eq!(frames.len(), 2, "the rest and the trailers wait");
        assert_eq!(p.conn.queued(1), 15);
        frame::put_window_update(&mut p.input, 1, 100);
        p.run().1.unwrap();
        let frames = p.frames();
        assert!(matches!(&frames[0], Frame::Data { data, .. } if data.len() == 15));
        assert!(matches!(
            &frames[1],
            Frame::Headers {
                end_stream: true,
                ..
            }
        ));
    }

    /// Every header block the server wrote, in output order, decoded by the client's decoder.
    fn decoded_blocks(p: &mut Peer) -> Vec<(u32, OwnedFields)> {
        let frames = p.frames();
        let blocks = frames.iter().filter_map(|f| match f {
            Frame::Headers { stream, block, .. } => Some((*stream, block.clone())),
            _ => None,
        });
        blocks
            .collect::<Vec<_>>()
            .into_iter()
            .map(|(stream, block)| (stream, p.fields(&block)))
            .collect()
    }

    #[test]
    fn trailers_waiting_for_window_are_encoded_when_they_go_out() {
        let mut p = Peer::new(Limits::default());
        p.input.clear();
        p.input.extend_from_slice(PREFACE);
        let small_window = SettingParam {
            id: setting::INITIAL_WINDOW_SIZE,
            value: 10,
        };
        frame::put_settings(&mut p.input, &[small_window]);
        p.headers(1, REQUEST, true);
        p.headers(3, REQUEST, true);
        p.run().1.unwrap();
        p.frames();
        let ok: &[(&[u8], &[u8])] = &[(b"grpc-status", b"0")];
        // Stream 1's trailers wait behind its data; stream 3's go out first, and add
        // grpc-status 0 to the client's table.
        p.conn.send_headers(1, &[(b":status", b"200")], false);
        p.conn.send_data(1, &[7u8; 25]);
        p.conn.send_trailers(1, ok);
        p.conn.send_headers(3, &[(b":status", b"200")], false);
        p.conn.send_trailers(3, ok);
        frame::put_window_update(&mut p.input, 1, 100);
        p.run().1.unwrap();
        let blocks = decoded_blocks(&mut p);
        let trailers: Vec<u32> = blocks
            .iter()
            .filter(|(_, fields)| fields == &[(b"grpc-status".to_vec(), b"0".to_vec())])
            .map(|(stream, _)| *stream)
            .collect();
        assert_eq!(trailers, [3, 1], "{blocks:?}");
    }

    #[test]
    fn a_client_that_shrinks_its_table_hears_it_in_the_next_block() {
        let mut p = Peer::new(Limits::default());
        p.headers(1, REQUEST, true);
        p.run().1.unwrap();
        p.conn
            .send_headers(1, &[(b"content-type", b"application/grpc")], false);
        p.conn.send_trailers(1, &[(b"grpc-status", b"0")]);
        decoded_blocks(&mut p);
        let no_table = SettingParam {
            id: setting::HEADER_TABLE_SIZE,
            value: 0,
        };
        frame::put_settings(&mut p.input, &[no_table]);
        p.headers(3, REQUEST, true);
        p.run().1.unwrap();
        p.conn
            .send_headers(3, &[(b"content-type", b"application/grpc")], false);
        p.conn.send_trailers(3, &[(b"grpc-status", b"0")]);
        let frames = p.frames();
        let blocks: Vec<&Bytes> = frames
            .iter()
            .filter_map(|f| match f {
                Frame::Headers { block, .. } => Some(block),
                _ => None,
            })
            .collect();
        assert_eq!(blocks[0][0], 0x20, "a size update to 0 opens the block");
        assert_eq!(blocks[1][0] & 0xf0, 0x00, "then nothing is indexed");
        for block in blocks {
            p.fields(block);
        }
    }

    #[test]
    fn header_blocks_may_span_continuations_but_not_be_interrupted() {
        let mut p = Peer::new(Limits::default());
        let block = p.block(REQUEST);
        let (a, b) = block.split_at(block.len() / 2);
        p.raw(kind::HEADERS, 0, 1, a);
        p.raw(kind::CONTINUATION, flag::END_HEADERS, 1, b);
        let (events, result) = p.run();
        result.unwrap();
        assert!(matches!(events[0], Event::Request { stream: 1, .. }));

        let mut p = Peer::new(Limits::default());
        let block = p.block(REQUEST);
        p.raw(kind::HEADERS, 0, 1, &block[..4]);
        frame::put_ping(&mut p.input, false, [0; 8]);
        assert_eq!(
            p.run().1,
            Err(Closed {
                reason: Reason::ProtocolError
            })
        );
        assert_eq!(
            goaway_reason(&p.frames()),
            Some(Reason::ProtocolError as u32)
        );
    }

    #[test]
    fn a_continuation_flood_ends_the_connection() {
        let mut p = Peer::new(Limits::default());
        p.raw(kind::HEADERS, 0, 1, &[0x40; 100]);
        for _ in 0..10_000 {
            p.raw(kind::CONTINUATION, 0, 1, &[0x40; 100]);
        }
        assert_eq!(
            p.run().1,
            Err(Closed {
                reason: Reason::EnhanceYourCalm
            })
        );
    }

    #[test]
    fn streams_over_the_limit_are_refused_and_others_go_on() {
        let mut p = Peer::new(Limits {
            max_concurrent_streams: 2,
            ..Limits::default()
        });
        for id in [1, 3, 5] {
            p.headers(id, REQUEST, false);
        }
        let (events, result) = p.run();
        result.unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(rst(&p.frames(), 5), Some(Reason::RefusedStream as u32));
        p.headers(7, REQUEST, false);
        frame::put_rst_stream(&mut p.input, 1, Reason::Cancel);
        p.headers(9, REQUEST, false);
        let (events, _) = p.run();
        assert!(events.contains(&Event::Reset {
            stream: 1,
            reason: Reason::Cancel
        }));
        assert!(matches!(
            events.last(),
            Some(Event::Request { stream: 9, .. })
        ));
    }

    #[test]
    fn rapid_resets_and_ping_floods_get_enhance_your_calm() {
        let mut p = Peer::new(Limits {
            resets_per_second: 10,
            ..Limits::default()
        });
        for i in 0..20 {
            let id = 1 + 2 * i;
            p.headers(id, REQUEST, false);
            frame::put_rst_stream(&mut p.input, id, Reason::Cancel);
        }
        assert_eq!(
            p.run().1,
            Err(Closed {
                reason: Reason::EnhanceYourCalm
            })
        );

        let mut p = Peer::new(Limits {
            pings_per_second: 5,
            ..Limits::default()
        });
        for _ in 0..6 {
            frame::put_ping(&mut p.input, false, [1; 8]);
        }
        assert_eq!(
            p.run().1,
            Err(Closed {
                reason: Reason::EnhanceYourCalm
            })
        );
        let acks = p
            .frames()
            .iter()
            .filter(|f| matches!(f, Frame::Ping { ack: true, .. }))
            .count();
        assert_eq!(acks, 5);
    }

    #[test]
    fn a_malformed_field_sent_again_by_table_index_is_refused_again() {
        // The encoder indexes every field, so the second request names the bad field by its
        // dynamic-table index: the table entry must remember that its bytes failed.
        for (name, value) in [
            (&b"x-Upper"[..], &b"v"[..]),
            (b"x-ok", b"a\r\nb"),
            (b"x-ok", b" padded"),
        ] {
            let mut fields = REQUEST.to_vec();
            fields.push((name, value));
            let mut p = Peer::new(Limits::default());
            p.headers(1, &fields, true);
            p.headers(3, &fields, true);
            p.headers(5, REQUEST, true);
            let (events, result) = p.run();
            result.unwrap();
            let frames = p.frames();
            for stream in [1, 3] {
                assert_eq!(
                    rst(&frames, stream),
                    Some(Reason::ProtocolError as u32),
                    "{name:?} {value:?}, stream {stream}"
                );
            }
            assert!(
                matches!(events[..], [Event::Request { stream: 5, .. }]),
                "{events:?}"
            );
        }
    }

    #[test]
    fn malformed_requests_reset_only_their_stream() {
        let bad: &[&[(&[u8], &[u8])]] = &[
            &[
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", b"/x"),
                (b"Content-Type", b"a"),
            ],
            &[(b":method", b"POST"), (b":scheme", b"http")],
            &[
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", b"/x"),
                (b":path", b"/y"),
            ],
            &[
                (b":method", b"POST"),
                (b"a", b"b"),
                (b":scheme", b"http"),
                (b":path", b"/x"),
            ],
            &[
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", b"/x"),
                (b":foo", b"x"),
            ],
            &[
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", b"/x"),
                (b"connection", b"close"),
            ],
            &[
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", b"/x"),
                (b"te", b"gzip"),
            ],
            &[
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", b""),
            ],
        ];
        for (i, fields) in bad.iter().enumerate() {
            let mut p = Peer::new(Limits::default());
            p.headers(1, fields, true);
            p.headers(3, REQUEST, true);
            let (events, result) = p.run();
            result.unwrap();
            assert_eq!(
                rst(&p.frames(), 1),
                Some(Reason::ProtocolError as u32),
                "case {i}"
            );
            assert!(
                matches!(events[..], [Event::Request { stream: 3, .. }]),
                "case {i}: {events:?}"
            );
        }
    }

    #[test]
    fn flow_control_violations_and_stream_id_rules() {
        let mut p = Peer::new(Limits {
            stream_window: 8,
            ..Limits::default()
        });
        p.headers(1, REQUEST, false);
        frame::put_data(&mut p.input, 1, &[0; 9], false);
        let (_, result) = p.run();
        result.unwrap();
        assert_eq!(rst(&p.frames(), 1), Some(Reason::FlowControlError as u32));

        let mut p = Peer::new(Limits::default());
        p.headers(2, REQUEST, true);
        assert_eq!(
            p.run().1,
            Err(Closed {
                reason: Reason::ProtocolError
            })
        );

        let mut p = Peer::new(Limits::default());
        p.headers(5, REQUEST, true);
        p.headers(3, REQUEST, true);
        let lower_unused_id = p.run().1;
        assert_eq!(
            lower_unused_id,
            Err(Closed {
                reason: Reason::ProtocolError
            })
        );

        let mut p = Peer::new(Limits::default());
        frame::put_data(&mut p.input, 1, b"x", false);
        assert_eq!(
            p.run().1,
            Err(Closed {
                reason: Reason::ProtocolError
            })
        );
    }

    /// A HEADERS on a stream that is over is answered by how it ended (RFC 9113 §5.1 and
    /// RFC 9113 §5.1.1), however many streams came since.
    #[test]
    fn headers_on_an_ended_stream_are_answered_by_how_it_ended() {
        let later_streams = |p: &mut Peer, from: u32| {
            for id in (from..from + 4000).step_by(2) {
                p.headers(id, REQUEST, true);
                p.run().1.unwrap();
                p.conn.send_headers(id, &[(b":status", b"200")], true);
            }
        };
        // We reset it: the client may have sent this before it saw the reset; ignored.
        let mut p = Peer::new(Limits::default());
        p.headers(1, REQUEST, false);
        p.run().1.unwrap();
        p.conn.reset(1, Reason::Cancel);
        later_streams(&mut p, 3);
        p.headers(1, REQUEST, true);
        p.headers(5001, REQUEST, true);
        let (events, result) = p.run();
        assert_eq!(result, Ok(()));
        assert!(
            matches!(events[..], [Event::Request { stream: 5001, .. }]),
            "{events:?}"
        );

        // Both sides ended it, or the client reset it: a connection error STREAM_CLOSED.
        for client_reset in [false, true] {
            let mut p = Peer::new(Limits::default());
            p.headers(1, REQUEST, !client_reset);
            p.run().1.unwrap();
            if client_reset {
                frame::put_rst_stream(&mut p.input, 1, Reason::Cancel);
            } else {
                p.conn.send_headers(1, &[(b":status", b"200")], true);
            }
            later_streams(&mut p, 3);
            p.headers(1, REQUEST, true);
            let closed = Err(Closed {
                reason: Reason::StreamClosed,
            });
            assert_eq!(p.run().1, closed, "client reset: {client_reset}");
        }

        // Never opened, skipped when the client opened a higher id: PROTOCOL_ERROR.
        let mut p = Peer::new(Limits::default());
        p.headers(1, REQUEST, true);
        p.headers(7, REQUEST, true);
        p.run().1.unwrap();
        later_streams(&mut p, 9);
        p.headers(5, REQUEST, true);
        let protocol_error = Err(Closed {
            reason: Reason::ProtocolError,
        });
        assert_eq!(p.run().1, protocol_error);
    }

    #[test]
    fn a_wrong_preface_is_refused() {
        let mut p = Peer::new(Limits::default());
        p.input = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]);
        assert_eq!(
            p.run().1,
            Err(Closed {
                reason: Reason::ProtocolError
            })
        );
    }

    #[test]
    fn nothing_is_sent_on_a_stream_the_client_reset() {
        let mut p = Peer::new(Limits::default());
        p.headers(1, REQUEST, false);
        frame::put_rst_stream(&mut p.input, 1, Reason::Cancel);
        p.run().1.unwrap();
        p.frames();
        p.conn.send_headers(1, &[(b":status", b"200")], false);
        p.conn.send_data(1, b"late");
        assert!(p.frames().is_empty());
    }

    #[test]
    fn go_away_refuses_new_streams_and_lets_open_ones_finish() {
        let mut p = Peer::new(Limits::default());
        p.headers(1, REQUEST, true);
        p.run().1.unwrap();
        p.conn.go_away();
        p.headers(3, REQUEST, true);
        p.run().1.unwrap();
        let frames = p.frames();
        assert_eq!(goaway_reason(&frames), Some(0));
        assert_eq!(rst(&frames, 3), Some(Reason::RefusedStream as u32));
        p.conn.send_headers(1, &[(b":status", b"200")], true);
        assert!(matches!(
            p.frames()[..],
            [Frame::Headers {
                stream: 1,
                end_stream: true,
                ..
            }]
        ));
    }

    #[test]
    fn a_server_ping_is_sent_and_its_acknowledgement_told_apart() {
        let mut p = Peer::new(Limits::default());
        p.run().1.unwrap();
        p.frames();
        assert_eq!(p.conn.frames(), (1, 0), "the client's SETTINGS");
        p.conn.ping(*b"liveness");
        assert!(matches!(
            p.frames()[..],
            [Frame::Ping {
                ack: false,
                data: [b'l', b'i', b'v', b'e', b'n', b'e', b's', b's']
            }]
        ));
        frame::put_ping(&mut p.input, true, *b"liveness");
        p.run().1.unwrap();
        assert_eq!(p.conn.frames(), (2, 1));
        assert!(p.frames().is_empty(), "an acknowledgement is not answered");
        p.conn.go_away_now(Reason::NoError, b"no answer");
        p.conn.go_away();
        let frames = p.frames();
        assert_eq!(frames.len(), 1, "one GOAWAY: {frames:?}");
        assert_eq!(goaway_reason(&frames), Some(0));
    }
}
