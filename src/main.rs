//! The `eventstream` command: `serve` runs the server; `pub`, `sub` and `health` talk to one
//! over the native protocol, so an operator can try a server without writing code.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use clap::{Parser, Subcommand};

use eventstream::config::Config;
use eventstream::engine::{Metadata, Priority, RawEvent, Topic};
use eventstream::grpc::client::{ClientTls, GrpcClient};
use eventstream::native::client::{self, Client, Delivery};
use eventstream::proto;
use eventstream::server;
use prost::Message;

#[derive(Parser)]
#[command(
    name = "eventstream",
    version,
    about = "Low-latency publish/subscribe event server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (all defaults without a config file).
    Serve(ServeArgs),
    /// Publish one event.
    Pub(PubArgs),
    /// Print events matching a pattern, one per line.
    Sub(SubArgs),
    /// Check that a server answers on every shard; exit 0 when healthy.
    Health(HealthArgs),
    /// Check this host for the server: io_uring, locked memory, CPU governor, isolated CPUs,
    /// SMT, socket buffers, busy polling, huge pages. Exit 1 if the server could not start.
    Doctor(DoctorArgs),
}

#[derive(clap::Args)]
struct DoctorArgs {
    /// Shards the server would run [default: one per CPU this process may use].
    #[arg(long)]
    shards: Option<usize>,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// YAML configuration file; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address every door listens on [default: 0.0.0.0].
    #[arg(long)]
    bind: Option<IpAddr>,
    /// gRPC port [default: 9200].
    #[arg(long)]
    grpc_port: Option<u16>,
    /// Native TCP port [default: 9201].
    #[arg(long)]
    tcp_port: Option<u16>,
    /// Native UDP port [default: 9202].
    #[arg(long)]
    udp_port: Option<u16>,
    /// Metrics port [default: 9203].
    #[arg(long)]
    metrics_port: Option<u16>,
    /// Number of shards [default: one per available CPU].
    #[arg(long)]
    shards: Option<usize>,
    /// Do not pin shards to CPUs (allows more shards than CPUs).
    #[arg(long)]
    no_pin: bool,
    /// Low-latency mode: idle shards busy-poll this many microseconds before sleeping
    /// (shards.spin_before_park_us; each spinning shard keeps its CPU busy) [default: 0].
    #[arg(long, value_name = "MICROSECONDS")]
    spin_us: Option<u64>,
    /// Join other nodes through these NATS servers (bridge.urls), exporting and importing
    /// every topic unless the config file's bridge section says otherwise.
    #[arg(
        long,
        env = "EVENTSTREAM_BRIDGE",
        // URLs may hold a user and password: --help does not show them.
        hide_env_values = true,
        value_name = "nats://HOST:PORT[,...]",
        value_delimiter = ','
    )]
    bridge: Vec<String>,
}

/// Talking to the gRPC door instead of the native one, optionally over TLS.
#[derive(clap::Args, Clone)]
struct GrpcArgs {
    /// Use the gRPC door (default address 127.0.0.1:9200).
    #[arg(long)]
    grpc: bool,
    /// CA certificate (PEM) to trust: turns TLS on.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<String>,
    /// Client certificate (PEM), for mTLS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<String>,
    /// Client private key (PEM), for mTLS.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<String>,
}

impl GrpcArgs {
    fn tls(&self) -> Result<Option<ClientTls>, Box<dyn std::error::Error>> {
        match &self.tls_ca {
            Some(ca) => Ok(Some(ClientTls {
                ca_file: ca.clone(),
                cert_file: self.tls_cert.clone(),
                key_file: self.tls_key.clone(),
            })),
            None if self.tls_cert.is_some() => Err("--tls-cert needs --tls-ca".into()),
            None => Ok(None),
        }
    }

    /// A client of the gRPC door.
    fn client(
        &self,
        server: Option<&str>,
        timeout: Option<Duration>,
    ) -> Result<GrpcClient, Box<dyn std::error::Error>> {
        let tls = self.tls()?;
        let server = server.unwrap_or("127.0.0.1:9200");
        Ok(GrpcClient::connect(server, tls.as_ref(), timeout)?)
    }

    /// A client of the native TCP door.
    fn native(&self, server: Option<&str>) -> Result<Client, Box<dyn std::error::Error>> {
        let server = server.unwrap_or("127.0.0.1:9201");
        Ok(match self.tls()? {
            Some(tls) => Client::connect_tls(server, &tls)?,
            None => Client::connect(server)?,
        })
    }
}

#[derive(clap::Args)]
struct PubArgs {
    /// Server address [default: 127.0.0.1:9201, with --udp 127.0.0.1:9202, with --grpc 127.0.0.1:9200].
    #[arg(long)]
    server: Option<String>,
    /// Send as a UDP datagram (no acknowledgement).
    #[arg(long, conflicts_with = "grpc")]
    udp: bool,
    #[command(flatten)]
    grpc: GrpcArgs,
    /// BATCH, LOW, MEDIUM, HIGH or CRITICAL (or 0..4).
    #[arg(long, default_value = "MEDIUM", value_parser = parse_priority)]
    priority: Priority,
    /// Metadata entry, repeatable.
    #[arg(long = "meta", value_name = "K=V", value_parser = parse_meta)]
    meta: Vec<(String, String)>,
    /// Topic to publish to: `/`-separated segments, no whitespace, no `*`.
    topic: String,
    /// Payload text; `-` reads the payload from standard input.
    payload: String,
}

#[derive(clap::Args)]
struct SubArgs {
    /// Server address [default: 127.0.0.1:9201, with --grpc 127.0.0.1:9200].
    #[arg(long)]
    server: Option<String>,
    #[command(flatten)]
    grpc: GrpcArgs,
    /// Only events of at least this priority.
    #[arg(long, default_value = "BATCH", value_parser = parse_priority)]
    min_priority: Priority,
    /// Exit after this many events.
    #[arg(long)]
    count: Option<u64>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
    /// Topic pattern: a `*` segment matches one segment, a final `**` one or more; `*` may
    /// appear only as such a whole segment.
    pattern: String,
}

#[derive(clap::Args)]
struct HealthArgs {
    /// Server address [default: 127.0.0.1:9201, with --grpc 127.0.0.1:9200].
    #[arg(long)]
    server: Option<String>,
    #[command(flatten)]
    grpc: GrpcArgs,
}

fn parse_priority(s: &str) -> Result<Priority, String> {
    Priority::parse(s)
        .ok_or_else(|| format!("{s:?} is not BATCH, LOW, MEDIUM, HIGH, CRITICAL or 0..4"))
}

fn parse_meta(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not K=V"))?;
    Ok((k.to_owned(), v.to_owned()))
}

type CliResult = Result<ExitCode, Box<dyn std::error::Error>>;

fn doctor(args: DoctorArgs) -> CliResult {
    use eventstream::doctor::{assess, HostFacts, Level};
    let facts = HostFacts::read();
    let shards = args.shards.unwrap_or(facts.cpus.len().max(1));
    let findings = assess(&facts, shards);
    for f in &findings {
        let level = match f.level {
            Level::Ok => "ok",
            Level::Advice => "advice",
            Level::Blocker => "BLOCKER",
        };
        println!("{level:<8}{}", f.what);
        if let Some(fix) = &f.fix {
            println!("{:<8}fix: {fix}", "");
        }
    }
    let blocked = findings.iter().any(|f| f.level == Level::Blocker);
    Ok(if blocked {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Pub(args) => publish(args),
        Command::Sub(args) => subscribe(args),
        Command::Health(args) => health(args),
        Command::Doctor(args) => doctor(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eventstream::log_line!("eventstream: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> CliResult {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(bind) = args.bind {
        config.bind = bind;
    }
    if let Some(p) = args.grpc_port {
        config.grpc.port = p;
    }
    if let Some(p) = args.tcp_port {
        config.native.port = p;
    }
    if let Some(p) = args.udp_port {
        config.udp.port = p;
    }
    if let Some(p) = args.metrics_port {
        config.metrics.port = p;
    }
    if let Some(n) = args.shards {
        config.shards.count = Some(n);
    }
    if let Some(us) = args.spin_us {
        config.shards.spin_before_park_us = us;
    }
    // An empty EVENTSTREAM_BRIDGE (a manifest's unset value) leaves the bridge as it was.
    let bridge: Vec<String> = args
        .bridge
        .iter()
        .filter(|u| !u.is_empty())
        .cloned()
        .collect();
    if !bridge.is_empty() {
        config.bridge.urls = bridge;
    }
    if args.no_pin {
        config.shards.pin = false;
    }
    // Signals are taken by this thread alone: block them before the shard threads inherit
    // the mask, then wait for one.
    let signals = block_shutdown_signals();
    let running = server::start(&config)?;
    let addrs = running.addresses();
    eventstream::log_line!(
        "eventstream {} serving: native tcp {}{}, grpc {}, metrics http://{}/metrics",
        env!("CARGO_PKG_VERSION"),
        addrs.native,
        addrs.udp.map(|a| format!(", udp {a}")).unwrap_or_default(),
        addrs.grpc,
        addrs.metrics,
    );
    let signal = wait_for_signal(&signals);
    eventstream::log_line!("eventstream: signal {signal}, shutting down");
    if !running.stop() {
        eventstream::log_line!(
            "eventstream: a shard did not stop within the drain timeout; exiting without it"
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn block_shutdown_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-set manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_for_signal(set: &libc::sigset_t) -> i32 {
    let mut signal = 0;
    // SAFETY: `set` is a valid signal set; sigwait writes the signal number.
    unsafe { libc::sigwait(set, &mut signal) };
    signal
}

fn publish(args: PubArgs) -> CliResult {
    let payload = if args.payload == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf)?;
        buf
    } else {
        args.payload.into_bytes()
    };
    let metadata = Metadata::from_pairs(args.meta.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    let event = RawEvent {
        topic: Bytes::from(args.topic.clone()),
        payload: Bytes::from(payload),
        metadata,
        priority: args.priority as u8,
        ..RawEvent::default()
    };
    if args.grpc.grpc {
        let mut client = args
            .grpc
            .client(args.server.as_deref(), Some(Duration::from_secs(10)))?;
        let event = proto::Event {
            topic: args.topic.clone(),
            payload: event.payload,
            priority: i32::from(event.priority),
            metadata: args.meta.iter().cloned().collect(),
            ..Default::default()
        };
        let request = proto::PublishRequest { event: Some(event) };
        let response: proto::PublishResponse =
            client.unary("/eventstream.EventService/Publish", &request)?;
        println!(
            "{} published latency_ns={}",
            args.topic, response.latency_ns
        );
        return Ok(ExitCode::SUCCESS);
    }
    if args.udp {
        // The UDP door never answers: a topic it would drop is refused here, with the rule.
        Topic::parse(event.topic.clone()).map_err(eventstream::engine::EventError::Topic)?;
        let server = args.server.unwrap_or_else(|| "127.0.0.1:9202".into());
        client::publish_datagrams(server.as_str(), &[event])?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut client = args.grpc.native(args.server.as_deref())?;
    client.set_timeout(Some(Duration::from_secs(10)))?;
    let ack = client.publish(&event)?;
    println!("{} sequence={}", args.topic, ack.sequence);
    Ok(ExitCode::SUCCESS)
}

fn subscribe(args: SubArgs) -> CliResult {
    let mut grpc_client;
    let mut next: Box<dyn FnMut() -> Result<Delivery, Box<dyn std::error::Error>> + '_>;
    if args.grpc.grpc {
        grpc_client = args.grpc.client(args.server.as_deref(), None)?;
        let request = proto::SubscribeRequest {
            topic_pattern: args.pattern.clone(),
            min_priority: i32::from(args.min_priority as u8),
        };
        let mut call = grpc_client.call("/eventstream.EventService/Subscribe", &request, &[])?;
        next = Box::new(move || {
            let message = call
                .next_message()?
                .ok_or("the server ended the subscription")?;
            let event = proto::Event::decode(message)?;
            let sequence = event.sequence;
            let event = eventstream::grpc::service::raw_event(event)?;
            Ok(Delivery {
                sub_id: 0,
                sequence,
                event,
            })
        });
    } else {
        let mut client = args.grpc.native(args.server.as_deref())?;
        client.set_timeout(Some(Duration::from_secs(10)))?;
        client.subscribe(&args.pattern, args.min_priority)?;
        client.set_timeout(None)?;
        next = Box::new(move || Ok(client.next_event()?));
    }
    let stdout = std::io::stdout();
    let mut received = 0;
    while args.count.is_none_or(|n| received < n) {
        let delivery = next()?;
        let line = if args.json {
            json_line(&delivery)
        } else {
            text_line(&delivery)
        };
        let mut out = stdout.lock();
        writeln!(out, "{line}")?;
        out.flush()?;
        received += 1;
    }
    Ok(ExitCode::SUCCESS)
}

fn text_line(d: &Delivery) -> String {
    let e = &d.event;
    let priority = Priority::from_u8(e.priority).map_or("?", Priority::name);
    let payload = match std::str::from_utf8(&e.payload) {
        Ok(text) => text.to_owned(),
        Err(_) => format!(
            "base64:{}",
            base64::engine::general_purpose::STANDARD.encode(&e.payload)
        ),
    };
    format!(
        "{} #{} {} {}",
        String::from_utf8_lossy(&e.topic),
        d.sequence,
        priority,
        payload
    )
}

fn json_line(d: &Delivery) -> String {
    let e = &d.event;
    let metadata: serde_json::Map<String, serde_json::Value> = e
        .metadata
        .iter()
        .map(|(k, v)| (k.to_owned(), serde_json::Value::from(v)))
        .collect();
    let mut obj = serde_json::json!({
        "id": String::from_utf8_lossy(&e.id),
        "topic": String::from_utf8_lossy(&e.topic),
        "sequence": d.sequence,
        "priority": Priority::from_u8(e.priority).map_or("?", Priority::name),
        "timestamp_ns": e.timestamp_ns,
        "metadata": metadata,
    });
    match std::str::from_utf8(&e.payload) {
        Ok(text) => obj["payload"] = text.into(),
        Err(_) => {
            obj["payload_base64"] = base64::engine::general_purpose::STANDARD
                .encode(&e.payload)
                .into()
        }
    }
    obj.to_string()
}

fn health(args: HealthArgs) -> CliResult {
    if args.grpc.grpc {
        let mut client = args
            .grpc
            .client(args.server.as_deref(), Some(Duration::from_secs(2)))?;
        let health: proto::HealthResponse =
            client.unary("/eventstream.EventService/HealthCheck", &proto::Empty {})?;
        println!(
            "{} version={} uptime={}s",
            if health.healthy {
                "healthy"
            } else {
                "unhealthy"
            },
            health.version,
            health.uptime_seconds
        );
        return Ok(if health.healthy {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let mut client = args.grpc.native(args.server.as_deref())?;
    client.set_timeout(Some(Duration::from_secs(1)))?;
    let pong = client.ping()?;
    let healthy = pong.shards_answered == pong.shards;
    println!(
        "{} version={} uptime={}s shards={}/{} topics={} subscriptions={} received={} delivered={} shed={} cut={} refused={} datagrams_dropped={}",
        if healthy { "healthy" } else { "unhealthy" },
        pong.version,
        pong.uptime_s,
        pong.shards_answered,
        pong.shards,
        pong.topics,
        pong.subscriptions,
        pong.received,
        pong.delivered,
        pong.shed,
        pong.cut,
        pong.refused,
        pong.datagrams_dropped,
    );
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
