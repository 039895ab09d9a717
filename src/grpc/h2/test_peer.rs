//! The client side of an HTTP/2 conversation for tests with no socket: it writes a client's
//! frames (header blocks encoded by an independent HPACK implementation) into `input`, and
//! reads back what the server side wrote. The h2 state machine's tests and the gRPC call
//! layer's tests both speak through it.

use bytes::BytesMut;

use super::frame::{self, Frame, DEFAULT_MAX_FRAME_BYTES, MAX_FRAME_BYTES_LIMIT, PREFACE};

/// A header list as tests write it.
pub type Fields<'a> = &'a [(&'a [u8], &'a [u8])];

/// A decoded header list, owned.
pub type OwnedFields = Vec<(Vec<u8>, Vec<u8>)>;

/// A client's half of a connection: its frames waiting to be received in `input`, and its
/// own HPACK state in each direction.
pub struct ClientPeer {
    /// What the client sent, for the server side to receive.
    pub input: BytesMut,
    encoder: loona_hpack::Encoder<'static>,
    decoder: loona_hpack::Decoder<'static>,
}

impl Default for ClientPeer {
    fn default() -> Self {
        ClientPeer::new()
    }
}

impl ClientPeer {
    /// A client that has sent its connection preface and an empty SETTINGS.
    pub fn new() -> ClientPeer {
        let mut peer = ClientPeer {
            input: BytesMut::from(PREFACE),
            encoder: loona_hpack::Encoder::new(),
            decoder: loona_hpack::Decoder::new(),
        };
        frame::put_settings(&mut peer.input, &[]);
        peer
    }

    /// `fields` as a header block of the client's encoder.
    pub fn block(&mut self, fields: Fields<'_>) -> Vec<u8> {
        self.encoder.encode(fields.iter().copied())
    }

    /// Sends a HEADERS frame (with CONTINUATIONs if it is long).
    pub fn headers(&mut self, stream: u32, fields: Fields<'_>, end_stream: bool) {
        let block = self.block(fields);
        frame::put_headers(
            &mut self.input,
            stream,
            &block,
            end_stream,
            DEFAULT_MAX_FRAME_BYTES,
        );
    }

    /// Sends one DATA frame.
    pub fn data(&mut self, stream: u32, data: &[u8], end_stream: bool) {
        frame::put_data(&mut self.input, stream, data, end_stream);
    }

    /// Sends a frame as raw bytes, valid or not.
    pub fn raw(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        self.input
            .extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        self.input.extend_from_slice(&[kind, flags]);
        self.input.extend_from_slice(&stream.to_be_bytes());
        self.input.extend_from_slice(payload);
    }

    /// Every whole frame in `output` (what the server wrote), taken off it.
    pub fn frames(output: &mut BytesMut) -> Vec<Frame> {
        let mut frames = Vec::new();
        while let Some(f) = frame::decode(output, MAX_FRAME_BYTES_LIMIT).unwrap() {
            frames.push(f);
        }
        frames
    }

    /// A header block the server wrote, decoded by the client's decoder (blocks must be
    /// decoded in the order the server wrote them).
    pub fn fields(&mut self, block: &[u8]) -> OwnedFields {
        let mut out = Vec::new();
        self.decoder
            .decode_with_cb(block, |n, v| out.push((n.to_vec(), v.to_vec())))
            .unwrap();
        out
    }
}
