//! The NATS bridge with real nats-server processes (docs/BRIDGE.md): nodes deliver each
//! other's events, once, never back to where they came from; NATS going away leaves local
//! traffic alone; a NATS cluster joins three nodes. Needs `nats-server` on the PATH (Debian:
//! `apt-get install nats-server`; .ci/run installs it).

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::TestServer;
use eventstream::bridge::BridgeStats;
use eventstream::engine::{Metadata, Priority, RawEvent};
use eventstream::grpc::client::GrpcClient;
use eventstream::proto;
use prost::Message;

/// How long anything in these tests may take to arrive before it counts as lost.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a test waits to be sure nothing more arrives.
const QUIET: Duration = Duration::from_millis(500);
/// How long a node may take to stop (its bridge gives NATS 2 s to take what it holds).
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Subscriber queues of a node whose export queue is to overflow.
const SMALL_QUEUE_EVENTS: usize = 64;
/// Events exported while NATS is away: more than the NATS client queues (2,048 commands).
const EXPORTS_BEYOND_THE_CLIENT: usize = 5_000;

/// A nats-server process, killed when dropped.
struct Nats {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
}

impl Nats {
    /// A standalone server on a free port.
    fn start() -> Nats {
        let port = free_port();
        Nats::start_with(port, Vec::new())
    }

    fn start_with(port: u16, extra: Vec<String>) -> Nats {
        let mut nats = Nats {
            child: None,
            port,
            args: extra,
        };
        nats.spawn();
        nats
    }

    fn spawn(&mut self) {
        let mut args = vec![
            "-a".to_owned(),
            "127.0.0.1".to_owned(),
            "-p".to_owned(),
            self.port.to_string(),
        ];
        args.extend(self.args.iter().cloned());
        let child = Command::new(nats_server())
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs (apt-get install nats-server; .ci/run installs it)");
        self.child = Some(child);
        let port = self.port;
        wait_for("nats-server to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// nats-server, from the PATH or where Debian puts it (/usr/sbin, not on every user's PATH).
fn nats_server() -> &'static str {
    let on_path = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    if on_path {
        "nats-server"
    } else {
        "/usr/sbin/nats-server"
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The configuration of a node bridged through `urls`, on 2 unpinned shards.
fn node_config(urls: &[String]) -> eventstream::config::Config {
    let mut config = common::test_config();
    config.shards.count = Some(2);
    config.bridge.urls = urls.to_vec();
    config
}

/// An eventstream node bridged through `urls`, connected.
fn node(urls: &[String]) -> TestServer {
    connected(common::start_with(node_config(urls)))
}

/// `server`, once its bridge has connected to NATS.
fn connected(server: TestServer) -> TestServer {
    let stats = server.bridge_stats().expect("the bridge runs");
    wait_for("the bridge to connect", || {
        stats.connected.load(Ordering::Relaxed)
    });
    server
}

/// Waits up to [`ARRIVAL_TIMEOUT`] for `done`; fails the test naming `what` otherwise.
fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + ARRIVAL_TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "waited in vain for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until `server`'s bridge has noticed NATS went away.
fn disconnected(server: &TestServer) {
    let stats = server.bridge_stats().expect("the bridge runs");
    wait_for("the bridge to notice NATS went away", || {
        !stats.connected.load(Ordering::Relaxed)
    });
}

/// Publishes [`EXPORTS_BEYOND_THE_CLIENT`] events of `priority` to `topic` on `server`.
fn flood(server: &TestServer, topic: &str, priority: Priority) {
    let mut publisher = server.client();
    for i in 0..EXPORTS_BEYOND_THE_CLIENT {
        let event = common::event(topic, format!("{i}").as_bytes(), priority);
        publisher.publish(&event).unwrap();
    }
}

/// Events the export has accounted for: handed to the NATS client (which holds what it
/// cannot send while disconnected), shed from the export queue, or failed.
fn exports_accounted(stats: &BridgeStats) -> u64 {
    let shed: u64 = stats
        .export_shed
        .iter()
        .map(|s| s.load(Ordering::Relaxed))
        .sum();
    stats.exported.load(Ordering::Relaxed) + shed + stats.export_failed.load(Ordering::Relaxed)
}

/// A native subscriber to `pattern` on `server`, on a thread of its own: what it receives.
fn native_subscriber(server: &TestServer, pattern: &str) -> mpsc::Receiver<RawEvent> {
    let mut client = server.client();
    client.subscribe(pattern, Priority::Batch).unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        while let Ok(delivery) = client.next_event() {
            if tx.send(delivery.event).is_err() {
                return;
            }
        }
    });
    rx
}

/// A gRPC Subscribe call to `pattern` on `server`, on a thread of its own.
fn grpc_subscriber(server: &TestServer, pattern: &str) -> mpsc::Receiver<proto::Event> {
    let addr = server.grpc.to_string();
    let pattern = pattern.to_owned();
    let (tx, rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    thread::spawn(move || {
        let mut client = GrpcClient::connect(&addr, None, Some(ARRIVAL_TIMEOUT * 2)).unwrap();
        let request = proto::SubscribeRequest {
            topic_pattern: pattern,
            min_priority: 0,
        };
        let path = "/eventstream.EventService/Subscribe";
        let mut call = client.call(path, &request, &[]).unwrap();
        let _ = ready_tx.send(());
        while let Ok(Some(message)) = call.next_message() {
            let event = proto::Event::decode(&message[..]).unwrap();
            if tx.send(event).is_err() {
                return;
            }
        }
    });
    ready_rx.recv_timeout(ARRIVAL_TIMEOUT).unwrap();
    rx
}

fn publish(server: &TestServer, topic: &str, payload: &str) {
    let event = common::event(topic, payload.as_bytes(), Priority::Medium);
    server.client().publish(&event).unwrap();
}

/// Publishes probes to `topic` on `from` until `seen` reports one arrived (NATS
/// subscriptions are made in the background), then waits until no more probes arrive: the
/// path is open and quiet. Returns how many probes it published.
fn open_path<T>(from: &TestServer, topic: &str, seen: &mpsc::Receiver<T>) -> u64 {
    let deadline = Instant::now() + ARRIVAL_TIMEOUT;
    let mut probes = 0;
    loop {
        publish(from, topic, "probe");
        probes += 1;
        if seen.recv_timeout(Duration::from_millis(100)).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no path from the publisher's node"
        );
    }
    while seen.recv_timeout(QUIET).is_ok() {}
    probes
}

fn drain<T>(rx: &mpsc::Receiver<T>) {
    while rx.recv_timeout(QUIET).is_ok() {}
}

/// The next `count` events `rx` receives.
fn receive<T>(rx: &mpsc::Receiver<T>, count: usize) -> Vec<T> {
    (0..count)
        .map(|i| {
            rx.recv_timeout(ARRIVAL_TIMEOUT)
                .unwrap_or_else(|_| panic!("event {i} of {count} did not arrive"))
        })
        .collect()
}

fn payloads(events: &[RawEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| String::from_utf8(e.payload.to_vec()).unwrap())
        .collect()
}

fn metadata(event: &RawEvent, key: &str) -> Option<String> {
    event
        .metadata
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_owned())
}

#[test]
fn two_nodes_deliver_each_others_events_once_and_never_back() {
    let nats = Nats::start();
    let (a, b) = (node(&[nats.url()]), node(&[nats.url()]));
    let at_a = native_subscriber(&a, "sensors/*");
    let at_b = native_subscriber(&b, "sensors/*");
    let grpc_at_b = grpc_subscriber(&b, "sensors/**");
    open_path(&a, "sensors/probe", &at_b);
    drain(&grpc_at_b);
    drain(&at_a);

    let sent: Vec<String> = (0..100).map(|i| format!("a{i}")).collect();
    for payload in &sent {
        publish(&a, "sensors/t1", payload);
    }
    let got = receive(&at_b, sent.len());
    assert_eq!(payloads(&got), sent, "in order, each once");
    for event in &got {
        assert!(metadata(event, "eventstream.origin").is_some());
        assert!(metadata(event, "eventstream.origin_sequence").is_some());
    }
    let by_grpc = receive(&grpc_at_b, sent.len());
    let grpc_payloads: Vec<String> = by_grpc
        .iter()
        .map(|e| String::from_utf8(e.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(grpc_payloads, sent);
    assert_eq!(
        payloads(&receive(&at_a, sent.len())),
        sent,
        "local delivery as ever"
    );
    assert!(at_b.recv_timeout(QUIET).is_err(), "no duplicate reached B");
    assert!(at_a.recv_timeout(QUIET).is_err(), "nothing came back to A");

    // An id and metadata that header values cannot hold as they are (line breaks; spaces at
    // the ends, which the NATS client trims) arrive as they were sent.
    let id = " line\r\nbreak 100% ° ";
    let mut odd = common::event("sensors/t1", b"odd", Priority::High);
    odd.id = bytes::Bytes::from_static(id.as_bytes());
    odd.metadata = Metadata::from_pairs([("k\n", "v=1 %"), (" k", "v ")]).unwrap();
    a.client().publish(&odd).unwrap();
    let got = receive(&at_b, 1).remove(0);
    assert_eq!(&got.id[..], id.as_bytes());
    assert_eq!(metadata(&got, "k\n").as_deref(), Some("v=1 %"));
    assert_eq!(metadata(&got, " k").as_deref(), Some("v "));
    assert_eq!(got.priority, Priority::High as u8);
    assert_eq!(receive(&at_a, 1)[0].id, odd.id, "local delivery as ever");

    // Larger than NATS's max_payload (1 MiB by default), though eventstream takes it: not
    // exported, counted as failed; what follows still goes.
    let a_stats = a.bridge_stats().unwrap();
    let failed = a_stats.export_failed.load(Ordering::Relaxed);
    let big = vec![b'x'; 1536 * 1024];
    a.client()
        .publish(&common::event("sensors/t1", &big, Priority::Medium))
        .unwrap();
    publish(&a, "sensors/t1", "after the big one");
    assert_eq!(payloads(&receive(&at_b, 1)), ["after the big one"]);
    assert_eq!(a_stats.export_failed.load(Ordering::Relaxed), failed + 1);
    assert_eq!(
        receive(&at_a, 2)[0].payload.len(),
        big.len(),
        "local delivery as ever"
    );

    // The other way: B's events reach A once, and are not exported again by A.
    open_path(&b, "sensors/probe2", &at_a);
    drain(&at_b);
    let exported_by_a = a.bridge_stats().unwrap().exported.load(Ordering::Relaxed);
    for i in 0..10 {
        publish(&b, "sensors/t2", &format!("b{i}"));
    }
    let got = receive(&at_a, 10);
    assert_eq!(
        payloads(&got),
        (0..10).map(|i| format!("b{i}")).collect::<Vec<_>>()
    );
    assert!(at_a.recv_timeout(QUIET).is_err(), "no duplicate reached A");
    assert_eq!(receive(&at_b, 10).len(), 10, "B's own subscriber");
    assert!(at_b.recv_timeout(QUIET).is_err(), "nothing came back to B");
    assert_eq!(
        a_stats.exported.load(Ordering::Relaxed),
        exported_by_a,
        "an imported event is never exported"
    );
}

#[test]
fn a_nats_server_killed_and_restarted_leaves_local_traffic_alone_and_the_bridge_comes_back() {
    let mut nats = Nats::start();
    let (a, b) = (node(&[nats.url()]), node(&[nats.url()]));
    let at_a = native_subscriber(&a, "sensors/*");
    let at_b = native_subscriber(&b, "sensors/*");
    // Every event published on A, all of which A's export patterns (**) match.
    let mut published_on_a = open_path(&a, "sensors/probe", &at_b);
    drain(&at_a);

    nats.kill();
    let stats_a = a.bridge_stats().unwrap();
    disconnected(&a);
    // Local traffic on both nodes while NATS is down.
    for i in 0..20 {
        publish(&a, "sensors/local", &format!("down{i}"));
        publish(&b, "sensors/local", &format!("down{i}"));
    }
    published_on_a += 20;
    let expected: Vec<String> = (0..20).map(|i| format!("down{i}")).collect();
    assert_eq!(payloads(&receive(&at_a, 20)), expected);
    let at_b_local: Vec<RawEvent> = receive(&at_b, 20);
    assert_eq!(payloads(&at_b_local), expected, "B's own events, in order");

    nats.spawn();
    for stats in [a.bridge_stats().unwrap(), b.bridge_stats().unwrap()] {
        wait_for("the bridge to reconnect", || {
            stats.connected.load(Ordering::Relaxed)
        });
        assert!(stats.reconnects.load(Ordering::Relaxed) >= 1);
    }
    // What A exported while NATS was down may arrive now; then the path is open again.
    published_on_a += open_path(&a, "sensors/probe", &at_b);
    drain(&at_a);
    for i in 0..20 {
        publish(&a, "sensors/t1", &format!("up{i}"));
    }
    published_on_a += 20;
    let expected: Vec<String> = (0..20).map(|i| format!("up{i}")).collect();
    assert_eq!(payloads(&receive(&at_b, 20)), expected);

    // Every event published on A is accounted for.
    assert_eq!(
        exports_accounted(&stats_a),
        published_on_a,
        "every exported event is counted"
    );
}

#[test]
fn critical_events_beyond_the_export_queue_are_shed_and_counted_not_cut() {
    let mut nats = Nats::start();
    let mut config = node_config(&[nats.url()]);
    config.limits.subscriber_queue_events = SMALL_QUEUE_EVENTS;
    let a = connected(common::start_with(config));
    let stats = a.bridge_stats().unwrap();
    nats.kill();
    disconnected(&a);
    // Far more CRITICAL events than the client, the link's channel and the export queue hold.
    flood(&a, "flood/t", Priority::Critical);
    nats.spawn();
    // Each is exported once NATS is back, or was shed and counted: none is lost uncounted.
    let all = EXPORTS_BEYOND_THE_CLIENT as u64;
    wait_for("every flooded event to be accounted for", || {
        exports_accounted(&stats) >= all
    });
    thread::sleep(QUIET);
    assert_eq!(exports_accounted(&stats), all);
    let shed_critical = stats.export_shed[Priority::Critical as usize].load(Ordering::Relaxed);
    assert!(shed_critical > 0, "the queue overflowed");
}

#[test]
fn a_node_stops_promptly_while_nats_is_away_and_its_client_is_full() {
    let mut nats = Nats::start();
    let a = node(&[nats.url()]);
    nats.kill();
    disconnected(&a);
    // More exports than the NATS client holds while it reconnects: its command queue fills,
    // and the client takes no more commands, a subscription's among them, until NATS is back.
    flood(&a, "filled/t", Priority::Medium);
    let _subscriber = native_subscriber(&a, "later/**");
    thread::sleep(QUIET);
    let (stopped_tx, stopped_rx) = mpsc::channel();
    thread::spawn(move || {
        drop(a);
        let _ = stopped_tx.send(());
    });
    stopped_rx
        .recv_timeout(STOP_TIMEOUT)
        .expect("the node stopped while NATS was away");
}

#[test]
fn three_nodes_on_a_three_server_nats_cluster_each_get_every_other_nodes_events_once() {
    let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let routes: String = cluster_ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let servers: Vec<Nats> = cluster_ports
        .iter()
        .map(|&cluster| {
            let extra = vec![
                "--cluster_name".to_owned(),
                "es".to_owned(),
                "--cluster".to_owned(),
                format!("nats://127.0.0.1:{cluster}"),
                "--routes".to_owned(),
                routes.clone(),
            ];
            Nats::start_with(free_port(), extra)
        })
        .collect();
    let nodes: Vec<TestServer> = servers.iter().map(|s| node(&[s.url()])).collect();
    let subscribers: Vec<_> = nodes
        .iter()
        .map(|n| native_subscriber(n, "cluster/**"))
        .collect();
    for (i, from) in nodes.iter().enumerate() {
        for (j, seen) in subscribers.iter().enumerate() {
            if i != j {
                open_path(from, &format!("cluster/probe{i}"), seen);
            }
        }
    }
    for seen in &subscribers {
        drain(seen);
    }
    for (i, from) in nodes.iter().enumerate() {
        for k in 0..10 {
            publish(from, &format!("cluster/n{i}"), &format!("{i}-{k}"));
        }
    }
    for (j, seen) in subscribers.iter().enumerate() {
        let got = receive(seen, 30);
        for i in 0..3 {
            let from_i: Vec<String> = payloads(&got)
                .into_iter()
                .filter(|p| p.starts_with(&format!("{i}-")))
                .collect();
            let expected: Vec<String> = (0..10).map(|k| format!("{i}-{k}")).collect();
            assert_eq!(
                from_i, expected,
                "node {j} got node {i}'s events once, in order"
            );
        }
        assert!(
            seen.recv_timeout(QUIET).is_err(),
            "node {j} got no duplicate"
        );
    }
}

#[test]
fn nodes_with_client_certificates_bridge_through_a_nats_server_that_verifies_them() {
    let pki = common::pki::pki();
    let dir = pki.dir.path();
    std::fs::write(dir.join("client.crt"), &pki.client_cert).unwrap();
    std::fs::write(dir.join("client.key"), &pki.client_key).unwrap();
    let file = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let tls_args = [
        "--tlsverify",
        "--tlscert",
        &file("server.crt"),
        "--tlskey",
        &file("server.key"),
        "--tlscacert",
        &file("ca.crt"),
    ];
    let nats = Nats::start_with(free_port(), tls_args.map(str::to_owned).to_vec());
    let url = format!("tls://127.0.0.1:{}", nats.port);
    let tls_node = |with_cert: bool| {
        let mut config = node_config(std::slice::from_ref(&url));
        config.bridge.tls_ca_file = Some(dir.join("ca.crt"));
        if with_cert {
            config.bridge.tls_cert_file = Some(dir.join("client.crt"));
            config.bridge.tls_key_file = Some(dir.join("client.key"));
        }
        common::start_with(config)
    };
    let (a, b) = (connected(tls_node(true)), connected(tls_node(true)));
    let at_b = native_subscriber(&b, "secure/*");
    open_path(&a, "secure/probe", &at_b);
    let sent: Vec<String> = (0..20).map(|i| format!("s{i}")).collect();
    for payload in &sent {
        publish(&a, "secure/t", payload);
    }
    assert_eq!(payloads(&receive(&at_b, sent.len())), sent);

    // Without a certificate the server refuses the node, which keeps serving its own clients.
    let c = tls_node(false);
    let at_c = native_subscriber(&c, "secure/*");
    publish(&c, "secure/local", "here");
    assert_eq!(payloads(&receive(&at_c, 1)), ["here"]);
    publish(&a, "secure/t", "not for c");
    assert!(at_c.recv_timeout(QUIET).is_err(), "C never joined");
    let stats = c.bridge_stats().unwrap();
    assert!(!stats.connected.load(Ordering::Relaxed));
    assert_eq!(stats.imported.load(Ordering::Relaxed), 0);
}
