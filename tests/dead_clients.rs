//! Dead clients and connection limits (docs/ARCHITECTURE.md, "Dead clients and connection limits"),
//! on both TCP doors, with real sockets: a client over a door's `max_connections` gets a clear
//! refusal and is counted while the others keep working; a client that stops reading, or stops
//! answering, is cut and counted, and what it held in the engine is released.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use eventstream::config::ClientAuth;
use eventstream::engine::Priority;
use eventstream::grpc::h2::frame::{self, Frame, Reason};
use eventstream::native::client::Client;
use eventstream::native::codec::{self, ErrorCode};
use tokio_rustls::rustls;

/// How long a test waits for something the server does by itself before it fails.
const PATIENCE: Duration = Duration::from_secs(20);

fn scrape(server: &TestServer) -> String {
    let mut stream = TcpStream::connect(server.metrics).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// The sum over shards of one sample family, for one door (`native` or `grpc`) if given.
fn total(text: &str, name: &str, door: Option<&str>) -> u64 {
    let filter = door.map(|d| format!("door=\"{d}\"")).unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(&filter))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

/// Scrapes until `done` holds for the metrics text (or fails after [`PATIENCE`]).
fn wait_for_metrics(server: &TestServer, what: &str, done: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let text = scrape(server);
        if done(&text) {
            return text;
        }
        assert!(started.elapsed() < PATIENCE, "never saw {what}:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Everything the server sends until it closes (a reset counts as a close).
fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return seen,
            Ok(n) => seen.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return seen,
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
}

fn h2_frames(bytes: &[u8]) -> Vec<Frame> {
    let mut bytes = BytesMut::from(bytes);
    let mut frames = Vec::new();
    while let Ok(Some(f)) = frame::decode(&mut bytes, frame::MAX_MAX_FRAME_SIZE) {
        frames.push(f);
    }
    frames
}

/// A raw HTTP/2 client's opening: the preface and an empty SETTINGS.
fn h2_opening() -> BytesMut {
    let mut out = BytesMut::from(frame::PREFACE);
    frame::put_settings(&mut out, &[]);
    out
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An h2 client connection (its task answers PINGs by itself) and a health check through it.
async fn h2_connect(addr: SocketAddr) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
}

/// A health check over `sender`: true if the server answered 200.
async fn h2_healthy(sender: &mut h2::client::SendRequest<bytes::Bytes>) -> bool {
    let request = http::Request::builder()
        .method("POST")
        .uri("http://localhost/grpc.health.v1.Health/Check")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let Ok(mut ready) = sender.clone().ready().await else {
        return false;
    };
    let Ok((response, mut body)) = ready.send_request(request, false) else {
        return false;
    };
    let _ = body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true);
    *sender = ready;
    matches!(response.await, Ok(r) if r.status() == 200)
}

#[test]
fn connections_over_a_doors_limit_are_refused_clearly_and_counted() {
    let mut config = test_config();
    config.native.max_connections = Some(2);
    config.grpc.max_connections = Some(2);
    let server = start_with(config);

    // Native: two clients are served, a third reads one closing ERROR TooManyConnections.
    let mut first = server.client();
    let mut second = server.client();
    first.ping().unwrap();
    second.ping().unwrap();
    let mut third = TcpStream::connect(server.native).unwrap();
    let refusal = read_until_closed(&mut third);
    let error = codec::frame_at(&refusal, 1 << 20).unwrap().unwrap();
    assert_eq!(error.wire_len, refusal.len(), "one frame, then the close");
    assert_eq!(
        (error.kind, error.flags),
        (0x86, 0x01),
        "ERROR, FLAG_CLOSING"
    );
    let code = u16::from_le_bytes([error.body[0], error.body[1]]);
    assert_eq!(code, ErrorCode::TooManyConnections as u16);
    assert_eq!(ErrorCode::from_u16(code), ErrorCode::TooManyConnections);
    let message = String::from_utf8_lossy(&error.body[16..]);
    assert!(message.contains("native.max_connections (2)"), "{message}");
    // The clients it has keep working; once one leaves, a new one is served.
    first.ping().unwrap();
    second.ping().unwrap();
    drop(first);
    // The place is given back when the server has seen the close: until then, refusals.
    let (started, mut refused_meanwhile) = (Instant::now(), 0);
    loop {
        let mut next = server.client();
        if next.ping().is_ok() {
            break;
        }
        refused_meanwhile += 1;
        assert!(
            started.elapsed() < PATIENCE,
            "the freed place was not given"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // gRPC: two connections are served, a third gets SETTINGS and GOAWAY REFUSED_STREAM.
    runtime().block_on(async {
        let mut a = h2_connect(server.grpc).await;
        let mut b = h2_connect(server.grpc).await;
        assert!(h2_healthy(&mut a).await && h2_healthy(&mut b).await);
        let grpc = server.grpc;
        let refused = tokio::task::spawn_blocking(move || {
            let mut third = TcpStream::connect(grpc).unwrap();
            third.write_all(&h2_opening()).unwrap();
            h2_frames(&read_until_closed(&mut third))
        })
        .await
        .unwrap();
        assert!(
            matches!(refused.first(), Some(Frame::Settings { ack: false, .. })),
            "{refused:?}"
        );
        let goaway = refused.iter().find_map(|f| match f {
            Frame::GoAway { code, debug, .. } => Some((*code, debug.clone())),
            _ => None,
        });
        let (code, debug) = goaway.expect("a GOAWAY");
        assert_eq!(code, Reason::RefusedStream as u32);
        assert!(String::from_utf8_lossy(&debug).contains("connection limit"));
        assert!(
            h2_healthy(&mut a).await && h2_healthy(&mut b).await,
            "the others keep working"
        );
    });

    let text = scrape(&server);
    let refused = "eventstream_connections_refused_total";
    let native = total(&text, refused, Some("native"));
    assert_eq!(native, 1 + refused_meanwhile, "{text}");
    assert_eq!(total(&text, refused, Some("grpc")), 1, "{text}");
}

#[test]
fn connections_over_the_metrics_doors_limit_are_answered_503_and_counted() {
    let mut config = test_config();
    config.metrics.max_connections = 2;
    // One shard: one accept queue, so connections are taken in the order they were made (with
    // several, a later connection can be accepted by another shard first).
    config.shards.count = Some(1);
    let server = start_with(config);
    // Two clients that connect and send nothing hold both places (until the door's request
    // timeout); a third is answered 503 at once.
    let idle: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(server.metrics).unwrap())
        .collect();
    let started = Instant::now();
    let answer = scrape(&server);
    let mut refused = 1;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("metrics.max_connections (2)"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    // Once they leave, scrapes are served again (refused until the server has seen them
    // close), and every refusal was counted.
    drop(idle);
    let text = loop {
        let text = scrape(&server);
        if text.starts_with("HTTP/1.1 200 ") {
            break text;
        }
        assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
        refused += 1;
        assert!(
            started.elapsed() < PATIENCE,
            "the freed places were not given"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let name = "eventstream_connections_refused_total";
    assert_eq!(total(&text, name, Some("metrics")), refused, "{text}");
    assert_eq!(total(&text, name, Some("native")), 0, "{text}");
    assert_eq!(
        total(&text, "eventstream_connections", Some("metrics")),
        1,
        "the scrape itself: {text}"
    );
}

/// Connects to a TLS door as a client with the test PKI's certificate, sends `first` (may be
/// empty) and reads the plaintext that comes until the server's close_notify.
fn read_over_tls_until_closed(addr: SocketAddr, pki: &pki::Pki, first: &[u8]) -> Vec<u8> {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let session = rustls::ClientConnection::new(pki::client_config(pki, true), name).unwrap();
    let socket = TcpStream::connect(addr).unwrap();
    socket.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut tls = rustls::StreamOwned::new(session, socket);
    if !first.is_empty() {
        tls.write_all(first).unwrap();
    }
    let mut plain = Vec::new();
    match tls.read_to_end(&mut plain) {
        Ok(_) => plain,
        Err(e) => panic!("no refusal over TLS, ended by close_notify: {e}; read {plain:?}"),
    }
}

#[test]
fn connections_over_a_tls_doors_limit_read_the_refusal_over_tls() {
    let pki = pki::pki();
    let mut config = test_config();
    config.native.tls = pki::tls_config(pki.dir.path(), ClientAuth::Require);
    config.grpc.tls = pki::tls_config(pki.dir.path(), ClientAuth::Require);
    config.native.max_connections = Some(1);
    config.grpc.max_connections = Some(1);
    let server = start_with(config);

    // Native: the one place is taken; the next client reads ERROR TooManyConnections.
    let addr = server.native.to_string();
    let mut first = Client::connect_tls(&addr, &pki::native_client_tls(&pki)).unwrap();
    first.ping().unwrap();
    let refusal = read_over_tls_until_closed(server.native, &pki, b"");
    let error = codec::frame_at(&refusal, 1 << 20).unwrap().unwrap();
    assert_eq!((error.kind, error.wire_len), (0x86, refusal.len()));
    let code = u16::from_le_bytes([error.body[0], error.body[1]]);
    assert_eq!(code, ErrorCode::TooManyConnections as u16);
    first.ping().unwrap();

    // gRPC: the one place is taken; the next client reads SETTINGS and GOAWAY REFUSED_STREAM.
    runtime().block_on(async {
        let connector = tokio_rustls::TlsConnector::from(pki::client_config(&pki, true));
        let tcp = tokio::net::TcpStream::connect(server.grpc).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
        let (mut a, conn) = h2::client::handshake(tls).await.unwrap();
        tokio::spawn(conn);
        assert!(h2_healthy(&mut a).await);
        let (grpc, pki) = (server.grpc, &pki);
        let refused = h2_frames(&read_over_tls_until_closed(grpc, pki, &h2_opening()));
        let goaway = refused.iter().find_map(|f| match f {
            Frame::GoAway { code, .. } => Some(*code),
            _ => None,
        });
        assert_eq!(goaway, Some(Reason::RefusedStream as u32), "{refused:?}");
        assert!(h2_healthy(&mut a).await, "the one served keeps working");
    });

    let text = scrape(&server);
    let refused = "eventstream_connections_refused_total";
    assert_eq!(total(&text, refused, Some("native")), 1, "{text}");
    assert_eq!(total(&text, refused, Some("grpc")), 1, "{text}");
}

#[test]
fn a_native_subscriber_that_stops_reading_is_cut_at_the_write_deadline() {
    let mut config = test_config();
    config.connections.write_deadline_ms = 300;
    let server = start_with(config);
    // A subscriber whose socket holds little, and that never reads again once subscribed.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&server.native.into()).unwrap();
    let stalled_stream = TcpStream::from(socket);
    let mut stalled = Client::from_stream(stalled_stream.try_clone().unwrap()).unwrap();
    stalled.set_timeout(Some(PATIENCE)).unwrap();
    stalled.subscribe("dead/*", Priority::Batch).unwrap();

    let mut publisher = server.client();
    let payload = vec![7u8; 32 * 1024];
    let event = event("dead/native", &payload, Priority::Low);
    let started = Instant::now();
    let cut = "eventstream_dead_connections_cut_total";
    // Publish until the server gives up on the subscriber: its socket buffers fill, then its
    // writes make no progress.
    loop {
        for _ in 0..64 {
            publisher.publish_nowait(&event).unwrap();
        }
        publisher.ping().unwrap(); // paces the publisher to the server
        if total(&scrape(&server), cut, Some("native")) == 1 {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the stalled subscriber was never cut"
        );
    }
    eprintln!(
        "stalled native subscriber cut {:?} after publishing began",
        started.elapsed()
    );
    let text = wait_for_metrics(&server, "the subscription released", |t| {
        total(t, "eventstream_subscriptions", None) == 0
            && total(t, "eventstream_connections", Some("native")) == 1
    });
    assert_eq!(total(&text, cut, Some("grpc")), 0);
    // Its socket was closed (reset: what was unsent is dropped).
    let mut stalled_stream = stalled_stream;
    read_until_closed(&mut stalled_stream);
    // The publisher was not held up and is still served.
    publisher.ping().unwrap();
}

#[test]
fn a_grpc_client_that_stops_answering_pings_is_cut() {
    let mut config = test_config();
    config.grpc.ping_interval_ms = 200;
    config.grpc.ping_timeout_ms = 300;
    let server = start_with(config);
    // A client that opens the connection and is never heard from again.
    let mut silent = TcpStream::connect(server.grpc).unwrap();
    silent.write_all(&h2_opening()).unwrap();
    let started = Instant::now();
    let cut = "eventstream_dead_connections_cut_total";
    wait_for_metrics(&server, "the silent client cut", |t| {
        total(t, cut, Some("grpc")) == 1
    });
    let elapsed = started.elapsed();
    eprintln!("silent gRPC client cut after {elapsed:?}");
    assert!(
        elapsed >= Duration::from_millis(450),
        "cut before its PING timed out"
    );
    let frames = h2_frames(&read_until_closed(&mut silent));
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, Frame::Ping { ack: false, .. })),
        "it was asked: {frames:?}"
    );
    let debug = frames.iter().find_map(|f| match f {
        Frame::GoAway { debug, .. } => Some(String::from_utf8_lossy(debug).into_owned()),
        _ => None,
    });
    assert!(debug.expect("a GOAWAY").contains("PING"));

    // A client that answers (the h2 crate does, by itself) stays connected through many PING
    // intervals and is served.
    runtime().block_on(async {
        let mut sender = h2_connect(server.grpc).await;
        assert!(h2_healthy(&mut sender).await);
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        assert!(h2_healthy(&mut sender).await, "an answering client was cut");
    });
    let text = scrape(&server);
    assert_eq!(total(&text, cut, Some("grpc")), 1, "{text}");
    assert_eq!(total(&text, cut, Some("native")), 0, "{text}");
}

#[test]
fn answers_to_pings_do_not_keep_an_idle_connection_open() {
    let mut config = test_config();
    config.grpc.ping_interval_ms = 100;
    config.grpc.ping_timeout_ms = 5_000;
    config.grpc.idle_timeout_ms = 600;
    let server = start_with(config);
    runtime().block_on(async {
        let tcp = tokio::net::TcpStream::connect(server.grpc).await.unwrap();
        let (_sender, connection) = h2::client::handshake(tcp).await.unwrap();
        let started = Instant::now();
        let ended = tokio::time::timeout(PATIENCE, connection).await;
        assert!(
            ended.is_ok(),
            "the idle connection that answers PINGs was not closed"
        );
        assert!(started.elapsed() >= Duration::from_millis(500));
    });
    let text = scrape(&server);
    let cut = "eventstream_dead_connections_cut_total";
    assert_eq!(total(&text, cut, None), 0, "idle is not dead: {text}");
}

/// A network namespace joined to this one by a veth pair: a host on the other end of a
/// cable, which can vanish (its link goes down: no FIN, no RST, packets to it are lost).
struct Netns {
    name: String,
    host_ip: String,
    /// The namespace's end of the pair.
    peer: String,
}

impl Netns {
    /// None when this host cannot make one (not root, no iproute2).
    fn create() -> Option<Netns> {
        let id = std::process::id();
        let net = Netns {
            name: format!("es-keepalive-{id}"),
            host_ip: format!("10.213.{}.1", id % 250),
            peer: format!("esk{id}b"),
        };
        let host = format!("esk{id}a");
        let peer_ip = format!("10.213.{}.2/30", id % 250);
        let steps: [&[&str]; 7] = [
            &["netns", "add", &net.name],
            &[
                "link", "add", &host, "type", "veth", "peer", "name", &net.peer,
            ],
            &["link", "set", &net.peer, "netns", &net.name],
            &["addr", "add", &format!("{}/30", net.host_ip), "dev", &host],
            &["link", "set", &host, "up"],
            &["-n", &net.name, "addr", "add", &peer_ip, "dev", &net.peer],
            &["-n", &net.name, "link", "set", &net.peer, "up"],
        ];
        for step in steps {
            let ok = std::process::Command::new("ip")
                .args(step)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("cannot make a network namespace (ip {step:?} failed)");
                return None; // Drop removes what was made
            }
        }
        Some(net)
    }

    /// A TCP connection to `addr` from inside the namespace.
    fn connect(&self, addr: SocketAddr) -> TcpStream {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let netns = std::fs::File::open(path).unwrap();
            // SAFETY: setns on this thread only, with a descriptor we hold open.
            let joined = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(joined, 0, "setns: {}", std::io::Error::last_os_error());
            TcpStream::connect_timeout(&addr, PATIENCE).unwrap()
        })
        .join()
        .unwrap()
    }

    /// The namespace's host vanishes: its link goes down, silently.
    fn vanish(&self) {
        let down = ["-n", &self.name, "link", "set", &self.peer, "down"];
        let status = std::process::Command::new("ip")
            .args(down)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and with it the other end.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

#[test]
fn a_native_client_whose_host_vanishes_is_found_by_keepalive() {
    let Some(net) = Netns::create() else {
        eprintln!("skipped: needs root and iproute2 to simulate a vanished host");
        return;
    };
    let mut config = test_config();
    config.bind = net.host_ip.parse().unwrap();
    config.connections.keepalive_idle_s = 1;
    config.connections.keepalive_interval_s = 1;
    config.connections.keepalive_probes = 2;
    // On Linux, TCP_USER_TIMEOUT also decides when unanswered keepalive probes end a
    // connection: it is kept equal to idle + interval x probes, as the defaults are.
    config.connections.user_timeout_ms = 3_000;
    let server = start_with(config);
    let mut client = Client::from_stream(net.connect(server.native)).unwrap();
    client.set_timeout(Some(PATIENCE)).unwrap();
    client.subscribe("vanish/*", Priority::Batch).unwrap();
    wait_for_metrics(&server, "the subscription", |t| {
        total(t, "eventstream_subscriptions", None) == 1
    });
    net.vanish();
    let started = Instant::now();
    let cut = "eventstream_dead_connections_cut_total";
    wait_for_metrics(&server, "the vanished client cut", |t| {
        total(t, cut, Some("native")) == 1 && total(t, "eventstream_subscriptions", None) == 0
    });
    eprintln!("vanished native client cut after {:?}", started.elapsed());
    drop(client);
}
