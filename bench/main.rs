//! `eventstream-bench`: measures a running eventstream server and prints the seed's table
//! (P50/P99/P99.9/max latency and events/s per row), or one JSON line per row with `--json`.
//!
//! Every delivery is checked (count, order, per-topic sequence); any error or loss fails the
//! run with a non-zero exit, so a fast wrong answer never shows up as a result.
//!
//! Rows: the native rows of [`native`] (`native-tcp`: pipelined publishes received by one
//! subscriber, latency from a send timestamp carried in the payload; `native-publish`,
//! `native-udp`, `fanout`, the `-legacy` rows of today's frames, `growth-topics`,
//! `growth-wildcards`), the gRPC rows of [`grpc`] (`grpc-unary`, `grpc-stream`,
//! `grpc-batch`), the host's ceilings of [`ceiling`], the [`memory`] row, and, with
//! nats-server installed, the [`bridge`] row (two nodes through NATS) beside the [`nats`] row
//! (nats-server's own path). Each row reports the CPU the server and the load used ([`cpu`]).
//! `--spawn` starts a server inside this process, its shards pinned to `--cores`, the load on
//! the other CPUs.

use std::process::ExitCode;

use clap::Parser;
use delivery::Form;
use hdrhistogram::Histogram;

mod bridge;
mod ceiling;
mod channels;
mod cpu;
mod delivery;
mod grpc;
mod memory;
mod native;
mod nats;
mod soak;

#[derive(Parser)]
#[command(
    name = "eventstream-bench",
    about = "Benchmark a running eventstream server"
)]
struct Args {
    /// `ceiling`: measure only what the host allows (loopback sink, relay, ping-pong).
    /// `soak`: a server process under mixed traffic and churn for `--seconds` or `--minutes`,
    /// checked for loss, leaks and flat memory (docs/PERFORMANCE.md, "Soak test").
    #[arg(value_parser = ["ceiling", "soak", "soak-client"])]
    mode: Option<String>,
    /// soak: how long the load runs, in seconds (default 60).
    #[arg(long, conflicts_with = "minutes")]
    seconds: Option<u64>,
    /// soak: how long the load runs, in minutes.
    #[arg(long)]
    minutes: Option<u64>,
    /// soak: the eventstream binary to start (default: `eventstream` beside this program).
    #[arg(long)]
    server_bin: Option<String>,
    /// soak: shards of the server it starts (unpinned).
    #[arg(long, default_value_t = 4)]
    shards: usize,
    /// soak: measure a server already running, this process (with --server, --grpc and
    /// --metrics-addr), instead of starting one.
    /// Rows: the process of the server measured (not started by --spawn), whose CPU use each
    /// row reports.
    #[arg(long)]
    server_pid: Option<u32>,
    /// soak: the metrics address of the server named by --server-pid.
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Internal (soak churn clients): the door, topic prefix and watched topic.
    #[arg(long, hide = true)]
    churn_door: Option<String>,
    #[arg(long, hide = true)]
    churn_root: Option<String>,
    #[arg(long, hide = true)]
    churn_watch: Option<String>,
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
    /// The server's CPUs (default: the last CPU); the load runs on the other CPUs. With
    /// --spawn, one pinned shard on each; otherwise where the server was started (e.g. with
    /// taskset), and where the ceiling rows put their server ends.
    #[arg(long, value_delimiter = ',')]
    cores: Option<Vec<usize>>,
    /// With --spawn: the server's low-latency mode (its shards busy-poll this many µs before
    /// sleeping, `--spin-us` of `eventstream serve`).
    #[arg(long, default_value_t = 0)]
    spin_us: u64,
    /// gRPC rows: connections.
    #[arg(long, default_value_t = 1)]
    conns: usize,
    /// gRPC unary and batch rows: calls in flight on each connection.
    #[arg(long, default_value_t = 32)]
    inflight: usize,
    /// fanout: subscribers sharing the wildcard pattern, each on its own connection.
    #[arg(long, default_value_t = 8)]
    fanout: usize,
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
        default_value = "native-tcp,native-tcp-legacy,native-publish,native-publish-legacy,\
                         native-latency,fanout,fanout-legacy,growth-topics,growth-wildcards,grpc-unary,\
                         grpc-stream,grpc-batch,ceiling",
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
    /// native-tcp: open loop at this many events/s (k and M suffixes); native-latency: its
    /// fixed rate (default 50k); soak: the target rate (default: 80% of a measured burst). Each event is due at its slot in the schedule and its
    /// latency counts from then, not from when it was sent, so a stall is charged to every
    /// event it delayed (no coordinated omission).
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
    /// Growth rows: events/s of the same measurement before the server grew.
    baseline: Option<f64>,
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

    fn print_json(&self, cpu: &cpu::Usage) {
        println!(
            "{}",
            serde_json::json!({
                "row": self.name,
                "server_cpu_pct": cpu.server_pct,
                "load_cpu_pct": cpu.load_pct,
                "events": self.events,
                "seconds": self.seconds,
                "events_per_s": self.events_per_s(),
                "p50_us": self.us(0.5),
                "p99_us": self.us(0.99),
                "p999_us": self.us(0.999),
                "max_us": self.us(1.0),
                "baseline_events_per_s": self.baseline,
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
        return match memory::hold_connections(&args.server, n) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("eventstream-bench: --hold-connections: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match args.mode.as_deref() {
        Some("soak-client") => {
            let (Some(door), Some(root), Some(watch)) =
                (&args.churn_door, &args.churn_root, &args.churn_watch)
            else {
                eprintln!("eventstream-bench: soak-client is started by soak");
                return ExitCode::FAILURE;
            };
            // It runs until killed: returning at all is a failed check.
            if let Err(e) = soak::churn_client(door, &args.server, &args.grpc, root, watch) {
                eprintln!("eventstream-bench: soak-client {root}: {e}");
            }
            return ExitCode::FAILURE;
        }
        Some("soak") => {
            return match soak::run(&args) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => {
                    eprintln!("eventstream-bench: soak: FAILED (see the checks above)");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("eventstream-bench: soak: FAILED: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {}
    }
    if args.size < 16 {
        eprintln!("eventstream-bench: error: --size must be at least 16");
        return ExitCode::FAILURE;
    }
    if args.conns == 0 || args.inflight == 0 || args.batch == 0 || args.fanout == 0 {
        eprintln!(
            "eventstream-bench: error: --conns, --inflight, --batch and --fanout must be at least 1"
        );
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
        match spawn(&args.cpus, args.spin_us) {
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
        // The load stays off the CPUs the server (started by the user) is said to run on.
        if let Err(e) = set_affinity(&args.cpus.1) {
            eprintln!("eventstream-bench: error: {e}");
            return ExitCode::FAILURE;
        }
        None
    };
    let code = run_rows(&args);
    if !server.is_none_or(|s| s.stop()) {
        eprintln!("eventstream-bench: error: the server did not stop within its drain timeout");
        return ExitCode::FAILURE;
    }
    code
}

/// Starts a server in this process: one pinned shard per CPU of `cores` (default: the last
/// CPU), then moves this thread, and so the load, to the other CPUs.
pub(crate) fn spawn(
    (server_cpus, load_cpus): &(Vec<usize>, Vec<usize>),
    spin_us: u64,
) -> Result<eventstream::server::RunningServer, String> {
    // The server takes the CPUs the starting thread may use: narrow them, start, move on.
    set_affinity(server_cpus)?;
    let mut config = loopback_config(server_cpus.len(), true);
    config.shards.spin_before_park_us = spin_us;
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

/// A server's configuration for the bench: loopback, ephemeral ports, `shards` shards,
/// pinned or not.
pub(crate) fn loopback_config(shards: usize, pin: bool) -> eventstream::config::Config {
    let mut config = eventstream::config::Config {
        bind: std::net::Ipv4Addr::LOCALHOST.into(),
        ..Default::default()
    };
    config.native.port = 0;
    config.grpc.port = 0;
    config.udp.port = 0;
    config.metrics.port = 0;
    config.shards.count = Some(shards);
    config.shards.pin = pin;
    config
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
    let topic = native::unique_topic(name);
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
        baseline: None,
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
    let (server_cpus, load_cpus) = &args.cpus;
    let shared_cpu = server_cpus.iter().any(|c| load_cpus.contains(c));
    let threads = match (args.spawn, args.server_pid) {
        (true, _) => cpu::ServerThreads::Spawned,
        (false, Some(pid)) => cpu::ServerThreads::Process(pid),
        (false, None) => cpu::ServerThreads::Unknown,
    };
    for name in queue {
        if shared_cpu && name.starts_with("ceiling") {
            // Both ends of a busy-polling ping-pong on one CPU take turns by time slices.
            eprintln!(
                "note: {name} skipped: it needs a CPU for each end, and this process may use \
                 only {load_cpus:?} (run it without taskset, or on two CPUs)"
            );
            continue;
        }
        let before = threads.sample();
        let result = match name {
            "ceiling-sink"
            | "ceiling-relay"
            | "ceiling-pingpong-block"
            | "ceiling-pingpong-spin"
            | "ceiling-relay-latency"
            | "ceiling-relay-latency-block" => ceiling_row(args, name),
            "native-tcp" => native::tcp(args, Form::Runs),
            "native-tcp-legacy" => native::tcp(args, Form::Frames),
            "native-publish" => native::publish(args, Form::Runs),
            "native-publish-legacy" => native::publish(args, Form::Frames),
            "native-udp" => native::udp(args),
            "fanout" => native::fanout(args, Form::Runs),
            "fanout-legacy" => native::fanout(args, Form::Frames),
            "native-latency" => native::latency(args),
            "growth-topics" => native::growth_topics(args),
            "growth-wildcards" => native::growth_wildcards(args),
            "grpc-unary" => grpc_row(args, "grpc-unary"),
            "grpc-stream" => grpc_row(args, "grpc-stream"),
            "grpc-batch" => grpc_row(args, "grpc-batch"),
            "bridge" => bridge::row(args),
            "nats" => nats::row(args),
            "channels" => {
                compare_channels(args);
                continue;
            }
            "memory" => match memory::run(args) {
                Ok(()) => continue,
                Err(e) => Err(e),
            },
            other => Err(format!(
                "unknown row {other:?} (known: native-tcp, native-tcp-legacy, native-publish, \
                 native-publish-legacy, native-latency, native-udp, fanout, fanout-legacy, \
                 growth-topics, growth-wildcards, grpc-unary, grpc-stream, grpc-batch, bridge, \
                 nats, ceiling, memory, channels)"
            )),
        };
        let usage = threads.usage(&before, &threads.sample());
        match result {
            Ok(row) => {
                if args.json {
                    row.print_json(&usage);
                }
                rows.push((row, usage));
            }
            Err(e) => {
                eprintln!("eventstream-bench: {name}: FAILED: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    if !args.json && !rows.is_empty() {
        print_table(&rows, args.spawn);
    }
    ExitCode::SUCCESS
}

/// The ceiling rows, in the order `ceiling` runs them.
const CEILING_ROWS: [&str; 6] = [
    "ceiling-sink",
    "ceiling-relay",
    "ceiling-pingpong-block",
    "ceiling-pingpong-spin",
    "ceiling-relay-latency",
    "ceiling-relay-latency-block",
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
        "ceiling-pingpong-spin" => ceiling::pingpong(server_cpus, round_trips, args.size, true),
        _ => {
            let (rate, count) = native::latency_schedule(args);
            let block = name == "ceiling-relay-latency-block";
            ceiling::relay_latency(server_cpus, rate, count, args.size, block)
        }
    }?;
    Ok(Row {
        name: c.name,
        events: c.events,
        seconds: c.seconds,
        latency: c.latency,
        baseline: None,
    })
}

/// The seed's table, then each eventstream row as a fraction of the host's ceiling when both
/// were measured in this run.
/// The CPU columns: each side's share of one CPU while the row ran (the server's only when
/// it was spawned or `--server-pid` names it). A side near 100% is what bounds the row.
fn print_table(measured: &[(Row, cpu::Usage)], spawned: bool) {
    let cell = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
    println!(
        "{:<24} {:>10} {:>10} {:>10} {:>10} {:>14} {:>9} {:>9}",
        "path", "P50 µs", "P99 µs", "P99.9 µs", "max µs", "events/s", "srv CPU%", "load CPU%"
    );
    for (r, cpu) in measured {
        println!(
            "{:<24} {:>10} {:>10} {:>10} {:>10} {:>14.0} {:>9} {:>9}",
            r.name,
            cell(r.us(0.5)),
            cell(r.us(0.99)),
            cell(r.us(0.999)),
            cell(r.us(1.0)),
            r.events_per_s(),
            cell(cpu.server_pct),
            cell(Some(cpu.load_pct)),
        );
    }
    let rows: Vec<&Row> = measured.iter().map(|(r, _)| r).collect();
    for r in &rows {
        if let Some(before) = r.baseline {
            let compared = match (r.name, spawned) {
                ("growth-wildcards", _) => "measured without them, runs alternating",
                (_, true) => "on a fresh twin server, runs alternating",
                (_, false) => "measured just before the growth",
            };
            println!(
                "{}: {:.1}% of native-publish {compared} (medians of {})",
                r.name,
                100.0 * r.events_per_s() / before,
                native::GROWTH_RUNS
            );
        }
    }
    let find = |name: &str| rows.iter().copied().find(|r| r.name == name);
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
    if let (Some(row), Some(spin)) = (find("native-latency"), find("ceiling-pingpong-spin")) {
        if let (Some(p99), Some(floor)) = (row.us(0.99), spin.us(0.99)) {
            println!(
                "native-latency P99: {:.1}x the busy-poll ping-pong P99",
                p99 / floor
            );
        }
    }
    if let (Some(row), Some(relay)) = (find("native-latency"), find("ceiling-relay-latency")) {
        if let (Some(p99), Some(floor)) = (row.us(0.99), relay.us(0.99)) {
            println!(
                "native-latency P99: {:.1}x the busy-poll relay's P99 on the same schedule",
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
