//! The metrics door: Prometheus text on `GET /metrics` (port 9203 by default), from every
//! shard's counters gathered over the shard mesh when scraped.
//!
//! Counting happens on the data path as plain increments of a shard's own counters (no atomics
//! shared between cores, no lock); this door only reads them, one mesh round trip per scrape.
//! Each shard listens on the port (SO_REUSEPORT) and answers for all of them.

use std::fmt::Write as _;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};

use crate::accept::{ConnectionLimit, SocketOptions};
use crate::bridge::BridgeStats;
use crate::door::{Doorway, DoorwaySettings};
use crate::engine::{DoorKind, Priority, Shard, ShardStats, ACK_LATENCY_BUCKETS};

/// A request head larger than this is refused (a scrape is one short line and a few headers).
const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// The request head buffer's first capacity: a scrape's head fits without growing it.
const REQUEST_HEAD_CAPACITY_BYTES: usize = 512;
/// One socket read of the request head: a whole scrape's head in one read, on the stack.
const READ_CHUNK_BYTES: usize = 1024;
/// The exposition's first capacity: skips the smallest regrowths; the text grows with the
/// shard count, so no fixed size fits every server.
const EXPOSITION_CAPACITY_BYTES: usize = 4096;
/// How long a client may take to send its request, and the shards to answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The metrics door of one shard.
pub struct Door {
    doorway: Doorway,
    started: Instant,
    /// The NATS bridge's counters, when it runs.
    bridge: Option<Arc<BridgeStats>>,
}

impl Door {
    /// A door reporting uptime from `started` (and the NATS bridge's counters, if it runs).
    /// Over `limit` (shared by every shard's door) a connection is answered 503 and closed;
    /// the others get `sockets`.
    pub fn new(
        shard: Rc<Shard>,
        started: Instant,
        bridge: Option<Arc<BridgeStats>>,
        limit: Arc<ConnectionLimit>,
        sockets: SocketOptions,
    ) -> Rc<Door> {
        let doorway = DoorwaySettings {
            door: DoorKind::Metrics,
            refusal: refusal(limit.max()).into(),
            limit,
            tls: None,
            busy_poll: None,
            sockets,
        };
        Rc::new(Door {
            doorway: Doorway::new(shard, doorway),
            started,
            bridge,
        })
    }

    /// Accepts scrapes until the shard shuts down.
    pub async fn accept_loop(self: Rc<Self>, listener: TcpListener) {
        let door = self.clone();
        let serve = move |stream| {
            let door = door.clone();
            async move { door.serve(stream).await }
        };
        self.doorway.accept_loop(listener, serve).await;
    }

    async fn serve(&self, mut stream: TcpStream) {
        let head =
            glommio::timer::timeout(TIMEOUT, async { Ok(read_head(&mut stream).await) }).await;
        let response = match head {
            Ok(Some(head)) => self.answer(&head).await,
            Ok(None) => response(400, "Bad Request", "text/plain", "bad request\n"),
            Err(_) => response(408, "Request Timeout", "text/plain", "request timeout\n"),
        };
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.close().await;
    }

    async fn answer(&self, head: &str) -> String {
        let mut words = head.split(' ');
        let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        if path != "/metrics" {
            return response(404, "Not Found", "text/plain", "only /metrics is served\n");
        }
        if method != "GET" {
            return response(405, "Method Not Allowed", "text/plain", "use GET\n");
        }
        let gathered = glommio::timer::timeout(TIMEOUT, async {
            Ok(self.doorway.shard().stats_per_shard().await)
        })
        .await;
        match gathered {
            Ok(per_shard) => {
                let mut body = render(&per_shard, self.started.elapsed());
                if let Some(bridge) = &self.bridge {
                    render_bridge(&mut body, bridge);
                }
                response(200, "OK", "text/plain; version=0.0.4", &body)
            }
            Err(_) => response(
                503,
                "Service Unavailable",
                "text/plain",
                &format!("not every shard answered within {} s\n", TIMEOUT.as_secs()),
            ),
        }
    }
}

/// Reads up to the end of the request head; None if the client closed, sent more than
/// [`REQUEST_HEAD_BYTES_MAX`] bytes without ending it, or sent something that is not text.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(REQUEST_HEAD_CAPACITY_BYTES);
    let mut chunk = [0u8; READ_CHUNK_BYTES];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || head.len() + n > REQUEST_HEAD_BYTES_MAX {
            return None;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(head).ok()
}

/// What a connection over the door's limit is sent before it is closed.
fn refusal(max_connections: usize) -> String {
    let body = format!(
        "the metrics door has metrics.max_connections ({max_connections}) connections open; \
         retry later\n"
    );
    response(503, "Service Unavailable", "text/plain", &body)
}

fn response(code: u16, reason: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {code} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Reads one per-door counter out of a shard's counters (in [`DoorKind::ALL`] order).
type PerDoor = fn(&ShardStats) -> [u64; DoorKind::COUNT];

/// The NATS bridge's counters in Prometheus text, appended to `out`.
pub fn render_bridge(out: &mut String, stats: &BridgeStats) {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let counters = [
        (
            "eventstream_bridge_exported_total",
            "Events published to NATS.",
            load(&stats.exported),
        ),
        (
            "eventstream_bridge_export_failed_total",
            "Events that could not be published to NATS.",
            load(&stats.export_failed),
        ),
        (
            "eventstream_bridge_imported_total",
            "Events received from NATS and published on this node.",
            load(&stats.imported),
        ),
        (
            "eventstream_bridge_import_refused_total",
            "Messages from NATS that were not valid events.",
            load(&stats.import_refused),
        ),
        (
            "eventstream_bridge_import_dropped_total",
            "Imported events dropped because their shard was behind.",
            load(&stats.import_dropped),
        ),
        (
            "eventstream_bridge_reconnects_total",
            "Connections to NATS made again after one was lost.",
            load(&stats.reconnects),
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    let name = "eventstream_bridge_export_shed_total";
    let _ = writeln!(out, "# HELP {name} Events shed from the export queue while NATS was slow or down, by priority.\n# TYPE {name} counter");
    for (priority, shed) in Priority::ALL.iter().zip(&stats.export_shed) {
        let _ = writeln!(out, "{name}{{priority=\"{priority}\"}} {}", load(shed));
    }
    let connected = u8::from(stats.connected.load(Ordering::Relaxed));
    let _ = writeln!(out, "# HELP eventstream_bridge_connected 1 while connected to NATS.\n# TYPE eventstream_bridge_connected gauge\neventstream_bridge_connected {connected}");
    let rtt = load(&stats.rtt_us) as f64 / 1e6;
    let _ = writeln!(out, "# HELP eventstream_bridge_rtt_seconds The last round trip to the NATS server.\n# TYPE eventstream_bridge_rtt_seconds gauge\neventstream_bridge_rtt_seconds {rtt}");
}

/// The Prometheus text exposition of every shard's counters.
pub fn render(per_shard: &[ShardStats], uptime: Duration) -> String {
    let mut out = String::with_capacity(EXPOSITION_CAPACITY_BYTES);
    let mut family = |name: &str, kind: &str, help: &str, value: &dyn Fn(&ShardStats) -> u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (shard, stats) in per_shard.iter().enumerate() {
            let _ = writeln!(out, "{name}{{shard=\"{shard}\"}} {}", value(stats));
        }
    };
    family(
        "eventstream_events_received_total",
        "counter",
        "Events accepted from clients, by the shard that read them.",
        &|s| s.received,
    );
    family(
        "eventstream_events_sequenced_total",
        "counter",
        "Events sequenced by the shard that owns their topic.",
        &|s| s.sequenced,
    );
    family(
        "eventstream_events_delivered_total",
        "counter",
        "Events taken from the queues of subscriptions homed on the shard to be written to their clients.",
        &|s| s.delivered,
    );
    family(
        "eventstream_events_refused_total",
        "counter",
        "Events the owner shard could not sequence (topic limit, shutdown).",
        &|s| s.refused,
    );
    family(
        "eventstream_slow_consumers_cut_total",
        "counter",
        "Subscriptions ended as slow consumers.",
        &|s| s.cut,
    );
    family(
        "eventstream_datagrams_dropped_total",
        "counter",
        "UDP datagrams dropped as malformed or invalid.",
        &|s| s.datagrams_dropped,
    );
    family(
        "eventstream_cross_shard_batches_total",
        "counter",
        "Batches sent to other shards over the shard mesh.",
        &|s| s.batches_out,
    );
    family(
        "eventstream_cross_shard_messages_total",
        "counter",
        "Messages (events, acknowledgements, control) sent to other shards.",
        &|s| s.messages_out,
    );
    family(
        "eventstream_topics",
        "gauge",
        "Topics owned by the shard.",
        &|s| s.topics,
    );
    family(
        "eventstream_subscriptions",
        "gauge",
        "Live subscriptions homed on the shard.",
        &|s| s.subscriptions,
    );

    let _ = writeln!(
        out,
        "# HELP eventstream_events_shed_total Events shed from subscriber queues, by priority.\n\
         # TYPE eventstream_events_shed_total counter"
    );
    for (shard, stats) in per_shard.iter().enumerate() {
        for (p, shed) in stats.shed.iter().enumerate() {
            let priority = Priority::from_u8(p as u8).expect("five priorities").name();
            let _ = writeln!(
                out,
                "eventstream_events_shed_total{{shard=\"{shard}\",priority=\"{priority}\"}} {shed}"
            );
        }
    }

    let _ = writeln!(
        out,
        "# HELP eventstream_connections Open client connections, by door.\n\
         # TYPE eventstream_connections gauge"
    );
    for (shard, stats) in per_shard.iter().enumerate() {
        for (door, live) in DoorKind::ALL.iter().zip(stats.connections) {
            let door = door.label();
            let _ = writeln!(
                out,
                "eventstream_connections{{shard=\"{shard}\",door=\"{door}\"}} {live}"
            );
        }
    }

    let per_door: [(&str, &str, PerDoor); 2] = [
        (
            "eventstream_connections_refused_total",
            "Connections refused because the door had its max_connections, by door.",
            |s| s.connections_refused,
        ),
        (
            "eventstream_dead_connections_cut_total",
            "Connections cut as dead (keepalive, unacknowledged data, write deadline, or no \
             answer to a PING), by door.",
            |s| s.connections_cut,
        ),
    ];
    for (name, help, value) in per_door {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (shard, stats) in per_shard.iter().enumerate() {
            for (door, count) in DoorKind::ALL.iter().zip(value(stats)) {
                let door = door.label();
                let _ = writeln!(out, "{name}{{shard=\"{shard}\",door=\"{door}\"}} {count}");
            }
        }
    }

    let name = "eventstream_publish_ack_latency_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Acknowledged publish requests: from decoding to the last event \
         sequenced.\n# TYPE {name} histogram"
    );
    for (shard, stats) in per_shard.iter().enumerate() {
        let mut cumulative = 0;
        for (i, count) in stats.ack_latency.iter().enumerate() {
            cumulative += count;
            let le = if i + 1 == ACK_LATENCY_BUCKETS {
                "+Inf".to_owned()
            } else {
                format!("{}", (1u64 << i) as f64 / 1e6)
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{shard=\"{shard}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let sum = stats.ack_latency_sum_ns as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{shard=\"{shard}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{shard=\"{shard}\"}} {cumulative}");
    }

    let _ = writeln!(
        out,
        "# HELP eventstream_uptime_seconds Time since the server started.\n\
         # TYPE eventstream_uptime_seconds gauge\neventstream_uptime_seconds {}",
        uptime.as_secs()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(value: &str, line_start: &str) -> Option<String> {
        value
            .lines()
            .find(|l| l.starts_with(line_start))
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
    }

    #[test]
    fn every_shard_and_priority_has_its_samples() {
        let mut a = ShardStats {
            received: 7,
            connections: [2, 1, 1],
            connections_refused: [4, 0, 6],
            connections_cut: [0, 5, 0],
            ..ShardStats::default()
        };
        a.shed[4] = 3;
        a.record_ack_latency(Duration::from_micros(3)); // under 4 µs: bucket 2
        a.record_ack_latency(Duration::from_secs(5)); // past the last bound
        let b = ShardStats {
            topics: 9,
            ..ShardStats::default()
        };
        let text = render(&[a, b], Duration::from_secs(42));
        let get = |s: &str| sample(&text, s);
        assert_eq!(
            get("eventstream_events_received_total{shard=\"0\"}").unwrap(),
            "7"
        );
        assert_eq!(get("eventstream_topics{shard=\"1\"}").unwrap(), "9");
        assert_eq!(
            get("eventstream_events_shed_total{shard=\"0\",priority=\"CRITICAL\"}").unwrap(),
            "3"
        );
        assert_eq!(
            get("eventstream_connections{shard=\"0\",door=\"grpc\"}").unwrap(),
            "1"
        );
        assert_eq!(
            get("eventstream_connections_refused_total{shard=\"0\",door=\"native\"}").unwrap(),
            "4"
        );
        assert_eq!(
            get("eventstream_connections_refused_total{shard=\"0\",door=\"metrics\"}").unwrap(),
            "6"
        );
        assert_eq!(
            get("eventstream_dead_connections_cut_total{shard=\"0\",door=\"grpc\"}").unwrap(),
            "5"
        );
        let bucket = "eventstream_publish_ack_latency_seconds_bucket{shard=\"0\",";
        assert_eq!(get(&format!("{bucket}le=\"0.000002\"}}")).unwrap(), "0");
        assert_eq!(get(&format!("{bucket}le=\"0.000004\"}}")).unwrap(), "1");
        assert_eq!(get(&format!("{bucket}le=\"+Inf\"}}")).unwrap(), "2");
        assert_eq!(get("eventstream_uptime_seconds").unwrap(), "42");
        // Every sample line belongs to a family announced before it.
        let mut typed = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|f| typed.contains(*f))
                    .unwrap_or(name);
                assert!(typed.contains(family), "{line}");
            }
        }
    }

    #[test]
    fn latency_buckets_double_from_one_microsecond() {
        let mut s = ShardStats::default();
        for us in [0, 1, 2, 3, 1_000, 2_000_000] {
            s.record_ack_latency(Duration::from_micros(us));
        }
        // 0 µs -> bucket 0 (< 1 µs); 1 -> 1 (< 2); 2, 3 -> 2 (< 4); 1000 -> 10 (< 1024);
        // 2 s -> the last bucket.
        assert_eq!(s.ack_latency[0], 1);
        assert_eq!(s.ack_latency[1], 1);
        assert_eq!(s.ack_latency[2], 2);
        assert_eq!(s.ack_latency[10], 1);
        assert_eq!(s.ack_latency[ACK_LATENCY_BUCKETS - 1], 1);
    }
}
