//! What a connection costs the server in file descriptors: one, whichever door it came through
//! (a server with a million clients needs a million descriptors, not two million). Alone in
//! its test binary, so no other test opens descriptors while this one counts them.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use bytes::BytesMut;
use common::*;
use eventstream::native::codec;

/// Descriptors this process holds (the server runs in it).
fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

const CONNECTIONS: usize = 100;

#[test]
fn each_connection_costs_the_server_one_descriptor() {
    let server = start();
    // Warm up: whatever the shards open lazily is open before counting.
    server.client().ping().unwrap();
    let before = open_descriptors();

    // Native: a PONG means the server serves the connection. Bare sockets, one descriptor
    // each on this side.
    let mut ping = BytesMut::new();
    codec::put_ping(&mut ping, 7);
    let mut native = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut tcp = TcpStream::connect(server.native).unwrap();
        tcp.write_all(&ping).unwrap();
        let mut head = [0u8; 5];
        tcp.read_exact(&mut head).unwrap();
        assert_eq!(head[4], codec::kind::PONG, "a PONG answers the PING");
        native.push(tcp);
    }
    // gRPC: the server's SETTINGS frame comes once it serves the connection.
    let mut grpc = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut tcp = TcpStream::connect(server.grpc).unwrap();
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .unwrap();
        let mut head = [0u8; 9];
        tcp.read_exact(&mut head).unwrap();
        assert_eq!(head[3], 0x4, "a SETTINGS frame first");
        grpc.push(tcp);
    }

    // Each connection: the client's end (this process) and the server's.
    let grown = open_descriptors() - before;
    assert!(
        grown <= 2 * 2 * CONNECTIONS + 4,
        "{grown} descriptors for {} connections",
        2 * CONNECTIONS
    );
    drop((native, grpc));
}
