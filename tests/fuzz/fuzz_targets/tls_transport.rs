//! The TLS-wrapped reader of the TCP doors (`Transport::open`, then `seal` for whatever the
//! session has to answer), as a server session built by `TlsConfig::load` the way the gRPC
//! door builds it. The first byte picks one of two ways to drive it:
//!
//! - raw: the rest is what a client sends, cut into reads by the second byte. Almost all of
//!   it is refused in the handshake; it must be refused with an error, never a panic or a
//!   loop that does not end.
//! - session: a real rustls client completes the handshake first, then the rest is a script
//!   of what that client sends (records of chosen sizes, a close_notify, raw bytes) and of
//!   how those bytes arrive (reads of up to 64 KiB, as the doors read). Until raw bytes are
//!   mixed in, every read is accepted and the plaintext comes out exactly as it went in.
#![no_main]

use std::io::Write;
use std::sync::{Arc, OnceLock};

use bytes::BytesMut;
use eventstream::config::{ClientAuth, TlsConfig};
use eventstream::tls::Transport;
use libfuzzer_sys::fuzz_target;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig};

/// The most a door reads from its socket at once (the doors' largest read size).
const READ_BYTES_MAX: usize = 64 * 1024;
/// Read sizes in session scripts are multiples of this.
const READ_STEP_BYTES: usize = 256;
/// Handshake round trips before a session that has not finished counts as a bug.
const HANDSHAKE_ROUNDS_MAX: usize = 16;

struct Endpoints {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

/// A self-signed certificate for "localhost", written once to a temporary directory so that
/// the server configuration comes from the same loader the server uses.
fn endpoints() -> &'static Endpoints {
    static ENDPOINTS: OnceLock<Endpoints> = OnceLock::new();
    ENDPOINTS.get_or_init(|| {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("certificate");
        let dir = std::env::temp_dir().join(format!("eventstream-fuzz-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temporary directory");
        std::fs::write(dir.join("server.crt"), cert.pem()).expect("write certificate");
        std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("write key");
        let tls = TlsConfig {
            enabled: true,
            cert_file: Some(dir.join("server.crt")),
            key_file: Some(dir.join("server.key")),
            // Optional client certificates: the verifier is set up, and the client needs none.
            ca_file: Some(dir.join("server.crt")),
            client_auth: ClientAuth::Optional,
        };
        let server = tls.load("grpc", &[b"h2"]).expect("loads").expect("enabled");
        let _ = std::fs::remove_dir_all(&dir);
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(cert.der().to_vec()))
            .expect("root");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"h2".to_vec()];
        Endpoints {
            server,
            client: Arc::new(client),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let [mode, ref rest @ ..] = *data else {
        return;
    };
    let ends = endpoints();
    let server = Transport::new(Some(&ends.server)).expect("a server session");
    if mode & 1 == 0 {
        raw(&server, rest);
    } else {
        session(&server, ends, rest);
    }
});

fn raw(server: &Transport, data: &[u8]) {
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut plain = BytesMut::new();
    let mut wire = Vec::new();
    for part in [&data[..split], &data[split..]] {
        let open = server.open(part, &mut plain);
        wire.clear();
        let sealed = server.seal(b"", &mut wire);
        if !matches!(open, Ok(true)) || sealed.is_err() {
            return;
        }
    }
    // A session that accepted everything so far takes plaintext to send (kept until the
    // handshake is done).
    wire.clear();
    let _ = server.seal(b"after the input", &mut wire);
}

/// Feeds `wire` to the server in reads of at most `read_bytes`, appending what the server
/// answers to `answer`. Stops at the first read the server refuses or that ends the session,
/// and says which.
fn deliver(
    server: &Transport,
    wire: &[u8],
    read_bytes: usize,
    plain: &mut BytesMut,
    answer: &mut Vec<u8>,
) -> Delivery {
    for read in wire.chunks(read_bytes) {
        let open = server.open(read, plain);
        let sealed = server.seal(b"", answer);
        match (open, sealed) {
            (Ok(true), Ok(())) => {}
            (Ok(false), Ok(())) => return Delivery::Closed,
            (Err(e), _) | (_, Err(e)) => return Delivery::Refused(e),
        }
    }
    Delivery::Open
}

#[derive(Debug)]
enum Delivery {
    Open,
    Closed,
    Refused(std::io::Error),
}

fn session(server: &Transport, ends: &Endpoints, script: &[u8]) {
    let name = ServerName::try_from("localhost").expect("name");
    let mut client = ClientConnection::new(ends.client.clone(), name).expect("client");
    let mut plain = BytesMut::new();
    let mut wire = Vec::new();
    for _ in 0..HANDSHAKE_ROUNDS_MAX {
        if !client.is_handshaking() && !client.wants_write() && !server.wants_write() {
            break;
        }
        wire.clear();
        flush(&mut client, &mut wire);
        let mut answer = Vec::new();
        let delivered = deliver(server, &wire, READ_BYTES_MAX, &mut plain, &mut answer);
        assert!(
            matches!(delivered, Delivery::Open),
            "handshake: {delivered:?}"
        );
        answer_client(&mut client, &answer);
    }
    assert!(!client.is_handshaking(), "the handshake finished");
    assert!(plain.is_empty());

    let mut sent = Vec::new(); // plaintext the client sent
    let mut checked = 0; // bytes of `plain` already compared with `sent` (`plain` only grows)
    let mut pending = Vec::new(); // wire bytes not yet delivered
    let mut mixed = false; // raw bytes among the records: errors allowed from here
    let mut closed = false;
    let mut bytes = script.iter().copied();
    while let Some(op) = bytes.next() {
        let arg = bytes.next().unwrap_or(0);
        match op % 4 {
            0 => {
                // `count` records of `size` bytes each.
                let (count, size) = (usize::from(op / 4) + 1, usize::from(arg) + 1);
                for i in 0..count {
                    let record: Vec<u8> = (0..size).map(|j| (i + j) as u8).collect();
                    client.writer().write_all(&record).expect("client buffers");
                    flush(&mut client, &mut pending);
                    if !closed {
                        sent.extend_from_slice(&record);
                    }
                }
            }
            1 => {
                client.send_close_notify();
                flush(&mut client, &mut pending);
                closed = true;
            }
            2 => {
                let n = usize::from(arg);
                pending.extend(bytes.by_ref().take(n));
                mixed = true;
            }
            _ => {
                flush(&mut client, &mut pending);
                let read_bytes = (usize::from(arg) + 1) * READ_STEP_BYTES;
                let mut answer = Vec::new();
                let delivered = deliver(server, &pending, read_bytes, &mut plain, &mut answer);
                pending.clear();
                if !mixed {
                    // The client reads what the server had to say (tickets, key updates).
                    answer_client(&mut client, &answer);
                }
                // Only the new plaintext is compared: comparing all of it after every read made
                // long scripts quadratic, the fuzzer's largest cost.
                assert!(plain.len() <= sent.len(), "no more plaintext out than in");
                assert!(
                    plain[checked..] == sent[checked..plain.len()],
                    "plaintext out is plaintext in"
                );
                checked = plain.len();
                match delivered {
                    Delivery::Open if !mixed => assert_eq!(plain.len(), sent.len()),
                    Delivery::Closed if !mixed => {
                        assert_eq!(plain.len(), sent.len());
                        return;
                    }
                    Delivery::Refused(e) if !mixed => panic!("refused a well-formed stream: {e}"),
                    Delivery::Open => {}
                    Delivery::Closed | Delivery::Refused(_) => return,
                }
            }
        }
    }
}

/// Hands the server's answer to the client, which must accept it.
fn answer_client(client: &mut ClientConnection, mut answer: &[u8]) {
    while !answer.is_empty() {
        client.read_tls(&mut answer).expect("client reads");
        client.process_new_packets().expect("client accepts");
    }
}

/// Moves everything the client has to send to `wire` (one `write_tls` moves a bounded number
/// of records).
fn flush(client: &mut ClientConnection, wire: &mut Vec<u8>) {
    while client.wants_write() {
        client.write_tls(wire).expect("client writes");
    }
}
