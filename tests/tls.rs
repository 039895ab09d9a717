//! TLS and mTLS on the TCP doors (README.md, "TLS in two minutes";
//! docs/ARCHITECTURE.md, "TLS"): the seed's configuration shape, client certificates
//! required, plaintext and certificate-less clients refused cleanly, UDP off.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::pki::{client_config, native_client_tls, pki, tls_config};
use common::*;
use eventstream::config::{ClientAuth, TlsConfig};
use eventstream::engine::Priority;
use eventstream::proto;
use rcgen::KeyPair;
use tokio_rustls::rustls;

/// A gRPC Publish over TLS; Err when the connection or the handshake fails.
async fn publish_over_tls(
    server: &TestServer,
    config: Arc<rustls::ClientConfig>,
) -> Result<u8, String> {
    let tcp = tokio::net::TcpStream::connect(server.grpc)
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = h2::client::handshake(tls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let request = http::Request::builder()
        .method("POST")
        .uri("https://localhost/eventstream.EventService/Publish")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut stream) = sender
        .send_request(request, false)
        .map_err(|e| e.to_string())?;
    let event = proto::Event {
        topic: "secure/x".into(),
        priority: Priority::High as i32,
        ..Default::default()
    };
    stream
        .send_data(framed(&proto::PublishRequest { event: Some(event) }), true)
        .map_err(|e| e.to_string())?;
    let mut body = response.await.map_err(|e| e.to_string())?.into_body();
    while let Some(chunk) = body.data().await {
        chunk.map_err(|e| e.to_string())?;
    }
    let trailers = body
        .trailers()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no trailers")?;
    Ok(trailers["grpc-status"].to_str().unwrap().parse().unwrap())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn mtls_required_accepts_certified_clients_only_and_turns_udp_off() {
    let pki = pki();
    let mut config = test_config();
    config.grpc.tls = tls_config(pki.dir.path(), ClientAuth::Require);
    let running = eventstream::server::start(&config).expect("starts with mTLS");
    assert!(
        running.addresses().udp.is_none(),
        "UDP cannot authenticate: off under mTLS"
    );
    let server = TestServer::from_running(running);
    runtime().block_on(async {
        assert_eq!(
            publish_over_tls(&server, client_config(&pki, true)).await,
            Ok(0)
        );
        let refused = publish_over_tls(&server, client_config(&pki, false)).await;
        assert!(
            refused.is_err(),
            "a client without a certificate is refused: {refused:?}"
        );
        // A plaintext HTTP/2 client on the TLS port fails cleanly, and the server goes on.
        let tcp = tokio::net::TcpStream::connect(server.grpc).await.unwrap();
        let plain = tokio::time::timeout(Duration::from_secs(10), async {
            let (mut sender, connection) = h2::client::handshake(tcp)
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(async move {
                let _ = connection.await;
            });
            let request = http::Request::builder()
                .method("POST")
                .uri("http://localhost/x")
                .body(())
                .unwrap();
            let (response, _) = sender
                .send_request(request, true)
                .map_err(|e| e.to_string())?;
            response.await.map_err(|e| e.to_string()).map(|_| ())
        })
        .await
        .expect("no hang");
        assert!(plain.is_err(), "plaintext refused: {plain:?}");
        assert_eq!(
            publish_over_tls(&server, client_config(&pki, true)).await,
            Ok(0)
        );
    });
    let mut native = server.client();
    assert_eq!(
        native.ping().unwrap().received,
        2,
        "the native door is still plaintext here"
    );
}

#[test]
fn optional_client_auth_accepts_both() {
    let pki = pki();
    let mut config = test_config();
    config.grpc.tls = tls_config(pki.dir.path(), ClientAuth::Optional);
    let server = start_with(config);
    runtime().block_on(async {
        assert_eq!(
            publish_over_tls(&server, client_config(&pki, true)).await,
            Ok(0)
        );
        assert_eq!(
            publish_over_tls(&server, client_config(&pki, false)).await,
            Ok(0)
        );
    });
}

/// Low-latency mode: the handshake and the call are read by a connection that polls its
/// socket.
#[test]
fn tls_calls_are_answered_in_low_latency_mode() {
    let pki = pki();
    let mut config = test_config();
    config.grpc.tls = tls_config(pki.dir.path(), ClientAuth::Optional);
    config.shards.spin_before_park_us = 200;
    let server = start_with(config);
    runtime().block_on(async {
        for with_cert in [true, false] {
            let client = client_config(&pki, with_cert);
            assert_eq!(publish_over_tls(&server, client).await, Ok(0));
        }
    });
}

#[test]
fn bad_tls_settings_fail_at_start_naming_the_key() {
    let pki = pki();
    let check = |tls: TlsConfig, key: &str| {
        let mut config = test_config();
        config.grpc.tls = tls;
        let err = eventstream::server::start(&config)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains(key), "{err}");
    };
    let mut t = tls_config(pki.dir.path(), ClientAuth::Require);
    t.cert_file = Some(pki.dir.path().join("missing.crt"));
    check(t, "grpc.tls.cert_file");
    let mut t = tls_config(pki.dir.path(), ClientAuth::Require);
    t.ca_file = Some(pki.dir.path().join("server.key"));
    check(t, "grpc.tls.ca_file");
    // A key that does not go with the certificate.
    let other = KeyPair::generate().unwrap();
    std::fs::write(pki.dir.path().join("other.key"), other.serialize_pem()).unwrap();
    let mut t = tls_config(pki.dir.path(), ClientAuth::None);
    t.key_file = Some(pki.dir.path().join("other.key"));
    check(t, "grpc.tls.key_file");
}

#[test]
fn the_native_door_speaks_tls_and_mtls_too() {
    use eventstream::native::client::Client;
    use eventstream::tls::ClientTls;
    let pki = pki();
    let mut config = test_config();
    config.native.tls = tls_config(pki.dir.path(), ClientAuth::Require);
    config.udp.allow_with_mtls = true;
    let running = eventstream::server::start(&config).unwrap();
    assert!(running.addresses().udp.is_some(), "explicitly allowed");
    let server = TestServer::from_running(running);
    let tls = native_client_tls(&pki);
    let addr = format!("localhost:{}", server.native.port());
    let mut sub = Client::connect_tls(&addr, &tls).unwrap();
    sub.set_timeout(Some(Duration::from_secs(10))).unwrap();
    sub.subscribe("secure/*", Priority::Batch).unwrap();
    let mut publisher = Client::connect_tls(&addr, &tls).unwrap();
    publisher
        .set_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    publisher
        .publish(&event("secure/a", b"over tls", Priority::Low))
        .unwrap();
    assert_eq!(&sub.next_event().unwrap().event.payload[..], b"over tls");
    // No client certificate: refused.
    let anonymous = ClientTls {
        cert_file: None,
        key_file: None,
        ..tls.clone()
    };
    let refused = Client::connect_tls(&addr, &anonymous).and_then(|mut c| {
        c.set_timeout(Some(Duration::from_secs(10)))?;
        c.ping()
    });
    assert!(refused.is_err());
    // Plaintext: refused.
    let mut plain = Client::connect(&addr).unwrap();
    plain.set_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(plain.ping().is_err());
}
