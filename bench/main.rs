//! `eventstream-bench`: measures a running eventstream server and prints the seed's table
//! (P50/P99/P99.9/max latency and events/s per row), or one JSON line per row with `--json`.
//!
//! Every delivery is checked (count, order, per-topic sequence); any error or loss fails the
//! run with a non-zero exit, so a fast wrong answer never shows up as a result.
//!
//! Rows: `native-tcp` (pipelined publishes over the native protocol, received by one
//! subscriber on another connection; latency from a send timestamp carried in the payload),
//! and the gRPC rows of [`grpc`] (`grpc-unary`, `grpc-stream`, `grpc-batch`). `--spawn` starts
//! a server inside this process, its shards pinned to `--cores`, the load on the other CPUs.

use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use hdrhistogram::Histogram;

mod ceiling;
mod channels;
mod delivery;
mod grpc;

use delivery::Watcher;

use eventstream::engine::Priority;
use eventstream::native::client::Client;

#[derive(Parser)]
#[command(
    name = "eventstream-bench",
    about = "Benchmark a running eventstream server"
)]
struct Args {
    /// `ceiling`: measure only what the host allows (loopback sink, relay, ping-pong).
    #[arg(value_parser = ["ceiling"])]
    mode: Option<String>,
    /// Native TCP address of the server.
    #[arg(long, default_value = "127.0.0.1:9201")]
    server: String,
    /// gRPC address of the server.
    #[arg(long, default_value = "127.0.0.1:9200")]
    grpc: String,
    /// UDP address of the server (the native-udp row).
    #[arg(long, default_value = "127.0.0.1:9202")]
    udp: String,
    /// Start a server in this process (ephemeral ports on 127.0.0.1) instead of using one.
    #[arg(long)]
    spawn: bool,
    /// With --spawn: CPUs for the server's shards, one pinned shard each (default: the last
    /// CPU); the load runs on the other CPUs.
    #[arg(long, value_delimiter = ',')]
    cores: Option<Vec<usize>>,
    /// gRPC rows: connections.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// gRPC unary and batch rows: calls in flight on each connection.
    #[arg(long, default_value_t = 32)]
    inflight: usize,
    /// grpc-batch: events per PublishBatch.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Events per row (accepts k and M suffixes).
    #[arg(long, default_value = "1M", value_parser = parse_count)]
    count: u64,
    /// Payload bytes per event (at least 16: send time and index).
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Rows to run, comma-separated.
    #[arg(
        long,
        default_value = "native-tcp,native-publish,grpc-unary,grpc-stream,grpc-batch,ceiling",
        value_delimiter = ','
    )]
    rows: Vec<String>,
    /// Events a publisher may run ahead of its subscriber (flow control; keep it well under
    /// the server's subscriber queue of 65,536). Queueing latency grows with it.
    #[arg(long, default_value_t = 4096)]
    window: u64,
    /// One JSON object per row instead of the table.
    #[arg(long)]
    json: bool,
    /// Server and load CPUs, read once at start (before this process pins anything).
    #[arg(skip)]
    cpus: (Vec<usize>, Vec<usize>),
    /// Internal (the memory row): open this many idle connections to --server, print
    /// "ready", and hold them until standard input closes.
    #[arg(long, hide = true)]
    hold_connections: Option<u64>,
    /// With --spawn: the server's metrics address (the memory row reads its counters).
    #[arg(skip)]
    metrics: Option<String>,
    /// native-tcp: open loop at this many events/s (k and M suffixes). Each event is due at
    /// its slot in the schedule and its latency counts from then, not from when it was sent,
    /// so a stall is charged to every event it delayed (no coordinated omission).
    #[arg(long, value_parser = parse_count)]
    rate: Option<u64>,
}

fn parse_count(s: &str) -> Result<u64, String> {
    let (digits, mult) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1_000),
        Some(b'M' | b'm') => (&s[..s.len() - 1], 1_000_000),
        _ => (s, 1),
    };
    digits
        .parse::<u64>()
        .map(|n| n * mult)
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{s:?} is not a positive count (e.g. 20000, 100k, 1M)"))
}

/// One measured row.
struct Row {
    name: &'static str,
    events: u64,
    seconds: f64,
    /// None for throughput-only rows (sink and relay ceilings).
    latency: Option<Histogram<u64>>,
}

impl Row {
    fn events_per_s(&self) -> f64 {
        self.events as f64 / self.seconds
    }

    fn us(&self, quantile: f64) -> Option<f64> {
        let h = self.latency.as_ref()?;
        Some(
            if quantile >= 1.0 {
                h.max()
            } else {
                h.value_at_quantile(quantile)
            } as f64
                / 1_000.0,
        )
    }

    fn print_json(&self) {
        println!(
            "{}",
            serde_json::json!({
                "row": self.name,
                "events": self.events,
                "seconds": self.seconds,
                "events_per_s": self.events_per_s(),
                "p50_us": self.us(0.5),
                "p99_us": self.us(0.99),
                "p999_us": self.us(0.999),
                "max_us": self.us(1.0),
            })
        );
    }
}

/// The server's CPUs (`cores`, default the last CPU) and the load's (all the others).
fn cpu_split(cores: Option<&[usize]>) -> Result<(Vec<usize>, Vec<usize>), String> {
    let all: Vec<usize> = core_affinity::get_core_ids()
        .ok_or("cannot read this process's CPUs")?
        .into_iter()
        .map(|c| c.id)
        .collect();
    let server_cpus: Vec<usize> = match cores {
        Some(list) => list.to_vec(),
        None => all.last().copied().into_iter().collect(),
    };
    if let Some(bad) = server_cpus.iter().find(|c| !all.contains(c)) {
        return Err(format!(
            "CPU {bad} is not one this process may use ({all:?})"
        ));
    }
    let load_cpus: Vec<usize> = all
        .iter()
        .copied()
        .filter(|c| !server_cpus.contains(c))
        .collect();
    Ok((
        server_cpus,
        if load_cpus.is_empty() { all } else { load_cpus },
    ))
}

fn main() -> ExitCode {
    let mut args = Args::parse();
    if let Some(n) = args.hold_connections {
        return match hold_connections(&args.server, n) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("eventstream-bench: --hold-connections: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if args.size < 16 {
        eprintln!("eventstream-bench: error: --size must be at least 16");
        return ExitCode::FAILURE;
    }
    if args.conns == 0 || args.inflight == 0 || args.batch == 0 {
        eprintln!("eventstream-bench: error: --conns, --inflight and --batch must be at least 1");
        return ExitCode::FAILURE;
    }
    args.cpus = match cpu_split(args.cores.as_deref()) {
        Ok(split) => split,
        Err(e) => {
            eprintln!("eventstream-bench: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = if args.spawn {
        match spawn(&args.cpus) {
            Ok(server) => {
                let a = server.addresses();
                args.server = a.native.to_string();
                if let Some(udp) = a.udp {
                    args.udp = udp.to_string();
                }
                args.metrics = Some(a.metrics.to_string());
                args.grpc = a.grpc.to_string();
                Some(server)
            }
            Err(e) => {
                eprintln!("eventstream-bench: error: --spawn: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let code = run_rows(&args);
    if let Some(server) = server {
        server.stop();
    }
    code
}

/// Starts a server in this process: one pinned shard per CPU of `cores` (default: the last
/// CPU), then moves this thread, and so the load, to the other CPUs.
fn spawn(
    (server_cpus, load_cpus): &(Vec<usize>, Vec<usize>),
) -> Result<eventstream::server::RunningServer, String> {
    // The server takes the CPUs the starting thread may use: narrow them, start, move on.
    set_affinity(server_cpus)?;
    let mut config = eventstream::config::Config {
        bind: std::net::Ipv4Addr::LOCALHOST.into(),
        ..Default::default()
    };
    config.native.port = 0;
    config.grpc.port = 0;
    config.udp.port = 0;
    config.shards.count = Some(server_cpus.len());
    config.shards.pin = true;
    let server = eventstream::server::start(&config).map_err(|e| e.to_string());
    set_affinity(load_cpus)?;
    let server = server?;
    eprintln!(
        "eventstream-bench: server on CPU {server_cpus:?} (native {}, gRPC {}), load on CPU \
         {load_cpus:?}",
        server.addresses().native,
        server.addresses().grpc,
    );
    Ok(server)
}

/// Restricts the calling thread (and the threads it starts later) to `cpus`.
fn set_affinity(cpus: &[usize]) -> Result<(), String> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write inside it, and
    // sched_setaffinity reads it for the calling thread (pid 0).
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(format!(
            "cannot pin to CPUs {cpus:?}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn grpc_row(args: &Args, name: &'static str) -> Result<Row, String> {
    let load = grpc::Load {
        addr: args.grpc.clone(),
        count: args.count,
        size: args.size,
        conns: args.conns,
        inflight: args.inflight,
        window: args.window,
    };
    let topic = unique_topic(name);
    let measured = match name {
        "grpc-unary" => grpc::publish_rows(&load, &topic, None),
        "grpc-batch" => grpc::publish_rows(&load, &topic, Some(args.batch)),
        _ => grpc::stream_row(&load, &topic),
    }?;
    Ok(Row {
        name,
        events: measured.events,
        seconds: measured.seconds,
        latency: Some(measured.latency),
    })
}

fn run_rows(args: &Args) -> ExitCode {
    let mut rows = Vec::new();
    let names: Vec<String> = if args.mode.is_some() {
        vec!["ceiling".to_owned()]
    } else {
        args.rows.clone()
    };
    let mut queue: Vec<&str> = Vec::new();
    for name in &names {
        if name == "ceiling" {
            queue.extend(CEILING_ROWS);
        } else {
            queue.push(name);
        }
    }
    for name in queue {
        let result = match name {
            "ceiling-sink"
            | "ceiling-relay"
            | "ceiling-pingpong-block"
            | "ceiling-pingpong-spin" => ceiling_row(args, name),
            "native-tcp" => native_tcp(args),
            "native-publish" => native_publish(args),
            "native-udp" => native_udp(args),
            "grpc-unary" => grpc_row(args, "grpc-unary"),
            "grpc-stream" => grpc_row(args, "grpc-stream"),
            "grpc-batch" => grpc_row(args, "grpc-batch"),
            "channels" => {
                compare_channels(args);
                continue;
            }
            "memory" => match memory(args) {
                Ok(()) => continue,
                Err(e) => Err(e),
            },
            other => Err(format!(
                "unknown row {other:?} (known: native-tcp, native-publish, native-udp, \
                 grpc-unary, grpc-stream, grpc-batch, ceiling, memory, channels)"
            )),
        };
        match result {
            Ok(row) => {
                if args.json {
                    row.print_json();
                }
                rows.push(row);
            }
            Err(e) => {
                eprintln!("eventstream-bench: {name}: FAILED: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if !args.json && !rows.is_empty() {
        print_table(&rows);
    }
    ExitCode::SUCCESS
}

/// Items of each kind the memory row opens.
const MEMORY_ITEMS: u64 = 10_000;

/// Bytes of server memory per idle native connection and per subscription: the growth of this
/// process's resident memory (the server runs in it, `--spawn`) while 10,000 of each are
/// opened. Idle connections are bare sockets on the client side (no user-space buffers), and
/// the subscriptions share one client connection, so what grows is the server's.
fn memory(args: &Args) -> Result<(), String> {
    let metrics = args
        .metrics
        .as_deref()
        .ok_or("the memory row measures a server in this process: use --spawn")?;
    // The server holds two descriptors per native connection (its reader and writer halves):
    // as many connections as this process's descriptor limit allows, up to 10,000.
    let limit = raise_fd_limit(2 * MEMORY_ITEMS + 1_000)?;
    let connections = MEMORY_ITEMS.min(limit.saturating_sub(1_000) / 2);
    if connections < MEMORY_ITEMS {
        eprintln!(
            "note: {connections} connections, not {MEMORY_ITEMS}: the descriptor limit is \
             {limit} (ulimit -n {} to measure all)",
            2 * MEMORY_ITEMS + 1_000
        );
    }
    let rss0 = rss_bytes()?;
    // The client ends live in a child process: this one holds the server's 10,000 ends.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut holder = std::process::Command::new(exe)
        .args(["--server", &args.server, "--hold-connections"])
        .arg(connections.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the connection holder: {e}"))?;
    let mut ready = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().expect("piped")),
        &mut ready,
    )
    .map_err(|e| e.to_string())?;
    if ready.trim() != "ready" {
        let _ = holder.kill();
        return Err("the connection holder failed (see its error above)".into());
    }
    // Wait until the server accepted them all (its own gauge says so).
    let deadline = Instant::now() + Duration::from_secs(30);
    while scrape(metrics, "eventstream_connections", "door=\"native\"")? < connections {
        if Instant::now() > deadline {
            return Err(format!(
                "the server did not accept {connections} connections in 30 s"
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
    let rss1 = rss_bytes()?;
    // A connection may hold 1,024 subscriptions: 1,000 on each of 10 connections, all opened
    // (and warmed with one subscription) before the measurement starts.
    let topic = unique_topic("memory");
    let mut clients = Vec::new();
    for c in 0..10 {
        let mut client = Client::connect(&args.server).map_err(|e| e.to_string())?;
        client
            .set_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        client
            .subscribe(&format!("{topic}/warm-up/{c}"), Priority::Batch)
            .map_err(|e| e.to_string())?;
        clients.push(client);
    }
    let rss2 = rss_bytes()?;
    for i in 0..MEMORY_ITEMS {
        clients[(i % 10) as usize]
            .subscribe(&format!("{topic}/{i}"), Priority::Batch)
            .map_err(|e| e.to_string())?;
    }
    let rss3 = rss_bytes()?;
    let per_connection = rss1.saturating_sub(rss0) as f64 / connections as f64;
    let per_subscription = rss3.saturating_sub(rss2) as f64 / MEMORY_ITEMS as f64;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "row": "memory",
                "connections": connections,
                "subscriptions": MEMORY_ITEMS,
                "bytes_per_idle_native_connection": per_connection,
                "bytes_per_subscription": per_subscription,
            })
        );
    } else {
        println!(
            "memory: {per_connection:.0} bytes per idle native connection, \
             {per_subscription:.0} bytes per subscription ({connections} connections, \
             {MEMORY_ITEMS} subscriptions)"
        );
    }
    drop(holder.stdin.take()); // the holder exits and its connections close
    let _ = holder.wait();
    Ok(())
}

/// The connection holder of the memory row (a child process).
fn hold_connections(server: &str, n: u64) -> Result<(), String> {
    if raise_fd_limit(n + 100)? < n + 100 {
        return Err(format!(
            "the descriptor limit does not allow {n} connections"
        ));
    }
    let mut held = Vec::with_capacity(n as usize);
    for _ in 0..n {
        held.push(std::net::TcpStream::connect(server).map_err(|e| e.to_string())?);
    }
    println!("ready");
    let mut rest = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut rest);
    drop(held);
    Ok(())
}

/// This process's resident memory.
fn rss_bytes() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| "no VmRSS in /proc/self/status".into())
}

/// Raises the soft RLIMIT_NOFILE towards `want` (up to the hard limit); returns the new soft
/// limit.
fn raise_fd_limit(want: u64) -> Result<u64, String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(format!(
                "cannot read the descriptor limit: {}",
                std::io::Error::last_os_error()
            ));
        }
        if limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(format!(
                    "cannot raise the descriptor limit: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
    }
    Ok(limit.rlim_cur)
}

/// The sum of a metric's samples whose labels contain `filter`, from the metrics door.
fn scrape(addr: &str, name: &str, filter: &str) -> Result<u64, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| e.to_string())?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum())
}

/// The ceiling rows, in the order `ceiling` runs them.
const CEILING_ROWS: [&str; 4] = [
    "ceiling-sink",
    "ceiling-relay",
    "ceiling-pingpong-block",
    "ceiling-pingpong-spin",
];

fn ceiling_row(args: &Args, name: &str) -> Result<Row, String> {
    let (server_cpus, load_cpus) = &args.cpus;
    set_affinity(load_cpus)?;
    // Ping-pong counts round trips: a tenth of the events, at least 10,000.
    let round_trips = (args.count / 10).max(10_000);
    let c = match name {
        "ceiling-sink" => ceiling::sink(server_cpus, args.count.max(1_000_000), args.size),
        "ceiling-relay" => ceiling::relay(server_cpus, args.count.max(1_000_000), args.size),
        "ceiling-pingpong-block" => ceiling::pingpong(server_cpus, round_trips, args.size, false),
        _ => ceiling::pingpong(server_cpus, round_trips, args.size, true),
    }?;
    Ok(Row {
        name: c.name,
        events: c.events,
        seconds: c.seconds,
        latency: c.latency,
    })
}

/// The seed's table, then each eventstream row as a fraction of the host's ceiling when both
/// were measured in this run.
fn print_table(rows: &[Row]) {
    let cell = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    println!(
        "{:<24} {:>10} {:>10} {:>10} {:>10} {:>14}",
        "path", "P50 µs", "P99 µs", "P99.9 µs", "max µs", "events/s"
    );
    for r in rows {
        println!(
            "{:<24} {:>10} {:>10} {:>10} {:>10} {:>14.0}",
            r.name,
            cell(r.us(0.5)),
            cell(r.us(0.99)),
            cell(r.us(0.999)),
            cell(r.us(1.0)),
            r.events_per_s()
        );
    }
    let find = |name: &str| rows.iter().find(|r| r.name == name);
    if let (Some(row), Some(sink)) = (find("native-publish"), find("ceiling-sink")) {
        println!(
            "native-publish: {:.1}% of the sink ceiling",
            100.0 * row.events_per_s() / sink.events_per_s()
        );
    }
    if let (Some(row), Some(relay)) = (find("native-tcp"), find("ceiling-relay")) {
        println!(
            "native-tcp: {:.1}% of the relay ceiling",
            100.0 * row.events_per_s() / relay.events_per_s()
        );
    }
    if let (Some(row), Some(spin)) = (find("native-tcp"), find("ceiling-pingpong-spin")) {
        if let (Some(p99), Some(floor)) = (row.us(0.99), spin.us(0.99)) {
            println!(
                "native-tcp P99: {:.1}x the busy-poll ping-pong P99",
                p99 / floor
            );
        }
    }
}

/// Batches of 256 events (about what one socket read yields) and 100k round trips, three runs
/// of each channel kind, alternating.
fn compare_channels(args: &Args) {
    for run in 1..=3 {
        for result in [
            channels::mesh(args.count, 256, 100_000),
            channels::flume(args.count, 256, 100_000),
        ] {
            let line = serde_json::json!({
                "row": "channels",
                "run": run,
                "kind": result.kind,
                "events_per_s": result.events_per_s,
                "round_trip_p50_us": result.round_trip_p50.as_secs_f64() * 1e6,
            });
            println!("{line}");
        }
    }
}

/// Events sent as UDP datagrams (`UDP_BATCH` publishes per datagram), received by one TCP
/// subscriber: latency from the send time in the payload, every event checked for order and
/// sequence. The sender keeps at most `--window` events ahead of the subscriber; a lost
/// datagram fails the row (the subscriber's wait times out).
fn native_udp(args: &Args) -> Result<Row, String> {
    const UDP_BATCH: u64 = 8;
    let topic = unique_topic("native-udp");
    let count = args.count;
    let clock = Instant::now();
    let wait = Duration::from_secs(5);
    let watcher = Watcher::start(
        &args.server,
        &topic,
        count,
        clock,
        wait,
        " (datagrams lost?)",
    )?;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    socket.connect(&args.udp).map_err(|e| e.to_string())?;
    let mut datagram = bytes::BytesMut::new();
    let mut payload = vec![0u8; args.size];
    // Datagrams are not flow-controlled: stay well inside the socket buffers.
    let window = args.window.min(1024);
    let first = clock.elapsed().as_nanos() as u64;
    for i in 0..count {
        while i.saturating_sub(watcher.received()) > window && !watcher.is_finished() {
            thread::yield_now();
        }
        if watcher.is_finished() {
            break; // it failed: its error is reported below
        }
        delivery::stamp(&mut payload, clock.elapsed().as_nanos() as u64, i);
        eventstream::native::codec::put_publish_simple(
            &mut datagram,
            i,
            topic.as_bytes(),
            Priority::Medium as u8,
            &payload,
        );
        if (i + 1) % UDP_BATCH == 0 || i + 1 == count {
            socket.send(&datagram).map_err(|e| e.to_string())?;
            datagram.clear();
        }
    }
    let (latency, last) = watcher.finish()?;
    Ok(Row {
        name: "native-udp",
        events: count,
        seconds: (last - first) as f64 / 1e9,
        latency: Some(latency),
    })
}

/// Pipelined publishes on one connection and no subscriber: how fast the server takes events
/// in. Timed from the first publish to the answer of a PING sent after the last, which the
/// server gives once it has routed every event before it; the server's `received` counter
/// must have grown by the count.
fn native_publish(args: &Args) -> Result<Row, String> {
    let topic = unique_topic("native-publish");
    let mut publisher = Client::connect(&args.server).map_err(|e| e.to_string())?;
    publisher
        .set_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let before = publisher.ping().map_err(|e| e.to_string())?;
    let payload = vec![0x5au8; args.size];
    let start = Instant::now();
    for _ in 0..args.count {
        publisher
            .publish_nowait_simple(&topic, Priority::Medium, &payload)
            .map_err(|e| e.to_string())?;
    }
    publisher.flush().map_err(|e| e.to_string())?;
    let after = publisher.ping().map_err(|e| e.to_string())?;
    let seconds = start.elapsed().as_secs_f64();
    let taken = after.received - before.received;
    if taken < args.count || after.refused != before.refused {
        return Err(format!(
            "the server took {taken} of {} events ({} refused)",
            args.count,
            after.refused - before.refused
        ));
    }
    Ok(Row {
        name: "native-publish",
        events: args.count,
        seconds,
        latency: None,
    })
}

/// Waits until `clock` reaches `due` ns: sleeps while the wait is long, then yields (the
/// receiver thread shares the load CPU, so no busy spin).
fn wait_until(clock: &Instant, due: u64) {
    loop {
        let now = clock.elapsed().as_nanos() as u64;
        if now >= due {
            return;
        }
        if due - now > 200_000 {
            thread::sleep(Duration::from_nanos(due - now - 100_000));
        } else {
            thread::yield_now();
        }
    }
}

fn unique_topic(row: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("bench/{row}/{}-{nanos}", std::process::id())
}

/// Pipelined publishes on one connection, one subscriber on another; both threads of this
/// process, so the send timestamp in the payload and the receive time share one clock.
fn native_tcp(args: &Args) -> Result<Row, String> {
    let topic = unique_topic("native-tcp");
    let count = args.count;
    let clock = Instant::now();
    // Flow control: the publisher stays at most `--window` events ahead of the subscriber,
    // inside the server's subscriber queue, so the row measures delivery, not shedding.
    let wait = Duration::from_secs(10);
    let watcher = Watcher::start(&args.server, &topic, count, clock, wait, "")?;

    let mut publisher = Client::connect(&args.server).map_err(|e| e.to_string())?;
    publisher
        .set_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut payload = vec![0u8; args.size];
    let first = clock.elapsed().as_nanos() as u64;
    for i in 0..count {
        if let Some(rate) = args.rate {
            // Open loop: event i is due at its slot; late events go at once, stamped with
            // the slot, so their latency includes the wait the schedule did not get.
            let due = first + i * 1_000_000_000 / rate;
            wait_until(&clock, due);
            delivery::stamp(&mut payload, due, i);
            publisher
                .publish_nowait_simple(&topic, Priority::Medium, &payload)
                .map_err(|e| e.to_string())?;
            publisher.flush().map_err(|e| e.to_string())?;
            continue;
        }
        if i % 1024 == 0 {
            while i.saturating_sub(watcher.received()) > args.window {
                publisher.flush().map_err(|e| e.to_string())?;
                if watcher.is_finished() {
                    break; // it failed: its error is reported below
                }
                thread::yield_now();
            }
        }
        delivery::stamp(&mut payload, clock.elapsed().as_nanos() as u64, i);
        publisher
            .publish_nowait_simple(&topic, Priority::Medium, &payload)
            .map_err(|e| e.to_string())?;
    }
    publisher.flush().map_err(|e| e.to_string())?;
    let pong = publisher.ping().map_err(|e| e.to_string())?;
    let (latency, last) = watcher.finish()?;
    if pong.shed > 0 {
        eprintln!(
            "note: the server reports {} shed events in total (other clients?)",
            pong.shed
        );
    }
    Ok(Row {
        name: "native-tcp",
        events: count,
        seconds: (last - first) as f64 / 1e9,
        latency: Some(latency),
    })
}
