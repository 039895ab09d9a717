//! The server's HTTP/2 layer (frames, stream states, flow control, HPACK, request checks),
//! which has no I/O: the preface, then arbitrary bytes in two reads (the first byte picks
//! where the second starts). Every request it hands up is answered (head, a message,
//! trailers), so the sending side runs against whatever windows and settings the input set.
//! It must never panic, whatever the client sends.
#![no_main]

use std::time::Instant;

use bytes::BytesMut;
use eventstream::grpc::h2::connection::{Connection, Event, Limits};
use eventstream::grpc::h2::frame::PREFACE;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut conn = Connection::new(Limits::default());
    let mut input = BytesMut::from(PREFACE);
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let now = Instant::now();
    let mut events = Vec::new();
    for part in [&data[..split], &data[split..]] {
        input.extend_from_slice(part);
        let received = conn.receive(&mut input, now, &mut events);
        for event in events.drain(..) {
            if let Event::Request {
                stream, headers, ..
            } = event
            {
                conn.recycle(headers);
                conn.send_headers(stream, &[(b":status", b"200")], false);
                conn.send_data(stream, &[0, 0, 0, 0, 2, 8, 1]);
                conn.send_trailers(stream, &[(b"grpc-status", b"0")]);
            }
        }
        conn.output().clear();
        if received.is_err() {
            break;
        }
    }
});
