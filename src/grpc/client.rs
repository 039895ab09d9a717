//! A small blocking gRPC client over this crate's own HTTP/2 frame codec, for the CLI
//! (`eventstream pub/sub/health --grpc`): unary and server-streaming calls on one connection,
//! plaintext or TLS (rustls), with the flow control such calls need. Tests and benchmarks use
//! the independent `h2` crate instead.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub use crate::tls::ClientTls;
use bytes::{Bytes, BytesMut};
use prost::Message;

use super::framing::{self, MessageReader};
use super::h2::frame::{
    self, setting, Frame, SettingParam, DEFAULT_MAX_FRAME_BYTES, DEFAULT_WINDOW_BYTES,
    MAX_FRAME_BYTES_LIMIT, MAX_WINDOW_BYTES,
};
use super::h2::hpack::{self, HeaderList, DEFAULT_TABLE_BYTES};
use super::status::Code;

/// The read buffer's first capacity: a few reads' worth, so small calls never grow it.
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// One socket read, into a stack array: a whole default-size frame payload
/// ([`DEFAULT_MAX_FRAME_BYTES`]), while staying small for the stack.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Largest decoded header list accepted from the server: far above any response's headers
/// and trailers (a long grpc-message included), yet a bound on what a broken server can make
/// the CLI hold.
const HEADER_LIST_BYTES_MAX: usize = 1 << 20;
/// Received bytes after which the client returns flow-control credit: half the window, so the
/// server never runs out of it while the update is on its way.
const WINDOW_UPDATE_AFTER_BYTES: u32 = MAX_WINDOW_BYTES / 2;

/// What can go wrong in a call.
#[derive(Debug, thiserror::Error)]
pub enum GrpcClientError {
    #[error("cannot reach {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("status {code}: {message}")]
    Status { code: u32, message: String },
}

trait Transport: Read + Write {}
impl<T: Read + Write> Transport for T {}

/// One HTTP/2 connection to the gRPC door.
pub struct GrpcClient {
    io: Box<dyn Transport>,
    authority: String,
    scheme: &'static str,
    rbuf: BytesMut,
    decoder: hpack::Decoder,
    /// Our first header block has not gone out yet (it starts with a table size update to 0).
    first_block: bool,
    next_stream: u32,
    peer_max_frame: u32,
    consumed: u32,
}

/// The response of one call, as it arrives.
pub struct Call<'a> {
    client: &'a mut GrpcClient,
    stream: u32,
    reader: MessageReader,
    ready: std::collections::VecDeque<Bytes>,
    done: bool,
}

impl GrpcClient {
    /// Connects and does the HTTP/2 handshake (TLS first, with ALPN h2, when `tls` is given).
    pub fn connect(
        addr: &str,
        tls: Option<&ClientTls>,
        timeout: Option<Duration>,
    ) -> Result<GrpcClient, GrpcClientError> {
        let tcp = TcpStream::connect(addr).map_err(|source| GrpcClientError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
        tcp.set_nodelay(true)?;
        tcp.set_read_timeout(timeout)?;
        let (io, scheme): (Box<dyn Transport>, _) = match tls {
            None => (Box::new(tcp), "http"),
            Some(tls) => {
                let stream = crate::tls::client_stream(tcp, addr, tls, &[b"h2"])
                    .map_err(GrpcClientError::Tls)?;
                (Box::new(stream), "https")
            }
        };
        let mut client = GrpcClient {
            io,
            authority: addr.to_owned(),
            scheme,
            rbuf: BytesMut::with_capacity(READ_BUFFER_BYTES),
            decoder: hpack::Decoder::new(DEFAULT_TABLE_BYTES),
            first_block: true,
            next_stream: 1,
            peer_max_frame: DEFAULT_MAX_FRAME_BYTES,
            consumed: 0,
        };
        let mut out = BytesMut::from(frame::PREFACE);
        frame::put_settings(
            &mut out,
            &[
                SettingParam {
                    id: setting::ENABLE_PUSH,
                    value: 0,
                },
                SettingParam {
                    id: setting::INITIAL_WINDOW_SIZE,
                    value: MAX_WINDOW_BYTES,
                },
            ],
        );
        // The connection window starts at the default: raise it to the largest, as the streams'.
        frame::put_window_update(&mut out, 0, MAX_WINDOW_BYTES - DEFAULT_WINDOW_BYTES);
        client.io.write_all(&out)?;
        client.io.flush()?;
        Ok(client)
    }

    /// Starts a call with one request message; read the response with [`Call::next_message`].
    pub fn call(
        &mut self,
        path: &str,
        request: &impl Message,
        metadata: &[(&str, &str)],
    ) -> Result<Call<'_>, GrpcClientError> {
        let stream = self.next_stream;
        self.next_stream += 2;
        let mut fields: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", self.scheme.as_bytes()),
            (b":path", path.as_bytes()),
            (b":authority", self.authority.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ];
        fields.extend(metadata.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
        let mut block = Vec::new();
        if std::mem::take(&mut self.first_block) {
            block.push(hpack::TABLE_SIZE_ZERO);
        }
        for (name, value) in fields {
            hpack::put_field(&mut block, name, value);
        }
        let mut out = BytesMut::new();
        frame::put_headers(&mut out, stream, &block, false, self.peer_max_frame);
        let mut body = BytesMut::new();
        framing::put_message(&mut body, |o| request.encode(o).expect("BytesMut grows"));
        let mut chunks = body.chunks(self.peer_max_frame as usize).peekable();
        while let Some(chunk) = chunks.next() {
            frame::put_data(&mut out, stream, chunk, chunks.peek().is_none());
        }
        self.io.write_all(&out)?;
        self.io.flush()?;
        Ok(Call {
            client: self,
            stream,
            reader: MessageReader::default(),
            ready: Default::default(),
            done: false,
        })
    }

    /// A unary call: its one response message.
    pub fn unary<R: Message + Default>(
        &mut self,
        path: &str,
        request: &impl Message,
    ) -> Result<R, GrpcClientError> {
        let mut call = self.call(path, request, &[])?;
        let message = call
            .next_message()?
            .ok_or_else(|| GrpcClientError::Protocol("no response message".into()))?;
        while call.next_message()?.is_some() {}
        R::decode(message).map_err(|e| GrpcClientError::Protocol(e.to_string()))
    }

    fn read_frame(&mut self) -> Result<Frame, GrpcClientError> {
        loop {
            match frame::decode(&mut self.rbuf, MAX_FRAME_BYTES_LIMIT) {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(e) => return Err(GrpcClientError::Protocol(e.to_string())),
            }
            let mut chunk = [0u8; READ_CHUNK_BYTES];
            let n = self.io.read(&mut chunk)?;
            if n == 0 {
                return Err(GrpcClientError::Protocol(
                    "server closed the connection".into(),
                ));
            }
            self.rbuf.extend_from_slice(&chunk[..n]);
        }
    }

    fn fields(&mut self, block: Bytes) -> Result<HeaderList, GrpcClientError> {
        let mut fields = HeaderList::default();
        self.decoder
            .decode(&block, &mut fields, HEADER_LIST_BYTES_MAX)
            .map_err(|e| GrpcClientError::Protocol(format!("HPACK: {e}")))?;
        Ok(fields)
    }
}

impl Call<'_> {
    /// The next response message; None once the call ended with status OK.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, GrpcClientError> {
        loop {
            if let Some(m) = self.ready.pop_front() {
                return Ok(Some(m));
            }
            if self.done {
                return Ok(None);
            }
            let client = &mut *self.client;
            match client.read_frame()? {
                Frame::Settings { ack: false, params } => {
                    for p in params {
                        if p.id == setting::MAX_FRAME_SIZE {
                            client.peer_max_frame = p.value;
                        }
                    }
                    let mut out = BytesMut::new();
                    frame::put_settings_ack(&mut out);
                    client.io.write_all(&out)?;
                }
                Frame::Ping { ack: false, data } => {
                    let mut out = BytesMut::new();
                    frame::put_ping(&mut out, true, data);
                    client.io.write_all(&out)?;
                }
                Frame::Data {
                    stream,
                    data,
                    end_stream,
                    flow_len,
                } => {
                    client.consumed += flow_len;
                    if client.consumed > WINDOW_UPDATE_AFTER_BYTES {
                        let mut out = BytesMut::new();
                        frame::put_window_update(&mut out, 0, client.consumed);
                        frame::put_window_update(&mut out, self.stream, client.consumed);
                        client.io.write_all(&out)?;
                        client.consumed = 0;
                    }
                    if stream == self.stream {
                        let mut out = Vec::new();
                        self.reader
                            .push(data, usize::MAX, &mut out)
                            .map_err(|e| GrpcClientError::Protocol(e.to_string()))?;
                        self.ready.extend(out);
                        if end_stream {
                            self.done = true;
                        }
                    }
                }
                Frame::Headers {
                    stream,
                    end_stream,
                    block,
                    ..
                } if stream == self.stream => {
                    let fields = client.fields(block)?;
                    let get = |name: &[u8]| fields.get(name);
                    if let Some(status) = get(b":status") {
                        if status != b"200" {
                            return Err(GrpcClientError::Protocol(format!(
                                "HTTP status {}",
                                String::from_utf8_lossy(status)
                            )));
                        }
                    }
                    if let Some(code) = get(b"grpc-status") {
                        let code: u32 = String::from_utf8_lossy(code)
                            .parse()
                            .unwrap_or(Code::Unknown as u32);
                        self.done = true;
                        if code != 0 {
                            let message =
                                get(b"grpc-message").map(percent_decode).unwrap_or_default();
                            return Err(GrpcClientError::Status { code, message });
                        }
                    } else if end_stream {
                        self.done = true;
                    }
                }
                Frame::RstStream { stream, code } if stream == self.stream => {
                    return Err(GrpcClientError::Protocol(format!(
                        "stream reset by the server (code {code})"
                    )));
                }
                Frame::GoAway { code, debug, .. } if code != 0 => {
                    return Err(GrpcClientError::Protocol(format!(
                        "connection closed by the server (code {code}): {}",
                        String::from_utf8_lossy(&debug)
                    )));
                }
                _ => {}
            }
        }
    }
}

fn percent_decode(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len());
    let mut rest = bytes;
    while let Some((&b, tail)) = rest.split_first() {
        if b == b'%' && tail.len() >= 2 {
            if let Ok(v) = u8::from_str_radix(&String::from_utf8_lossy(&tail[..2]), 16) {
                out.push(v);
                rest = &tail[2..];
                continue;
            }
        }
        out.push(b);
        rest = tail;
    }
    String::from_utf8_lossy(&out).into_owned()
}
