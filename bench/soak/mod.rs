//! `eventstream-bench soak`: a server under mixed traffic for minutes, checked for leaks and
//! for loss. See docs/PERFORMANCE.md, "Soak test", for what it runs and what it checks.
//!
//! The run, in order: start (or attach to) the server as its own process; measure a short
//! burst and aim at 80% of it; subscribe the checked subscribers and the slow one; read the
//! baseline (descriptors, subscriptions, connections); then publishers, churn and a sampler of
//! the server's RSS and descriptors for the duration; stop the churn and wait for the baseline
//! to come back; stop the publishers, send each topic's closing marker, and check what every
//! subscriber saw against what was published and what the server counted.

mod churn;
mod ledger;
mod pace;
mod publishers;
mod server;
mod subscribers;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use eventstream::engine::Pattern;

use self::ledger::{Flow, Ledger};
use self::publishers::NativeKind;
use self::server::{Probe, Server};
use self::subscribers::{NativeSubscriber, Report};
use super::delivery::{self, Form, Watcher};
use super::Args;
use eventstream::engine::Priority;
use eventstream::native::client::Client;

pub use churn::client as churn_client;

/// The load aims at this fraction of the measured burst.
const LOAD_FRACTION: f64 = 0.8;
/// Events of the capacity burst, and its subscribers (about the soak's fan-out per event).
const BURST_EVENTS: u64 = 100_000;
const BURST_SUBSCRIBERS: usize = 4;
/// Flow-control window per topic: a checked subscriber's queue holds at most this many events
/// per topic (six topics: inside `QUEUE_EVENTS`), so it is never shed.
const WINDOW_EVENTS: u64 = 512;
/// Subscriber queue of the server the soak starts (`limits.subscriber_queue_events`). The slow
/// subscriber's queue stays full, and a full queue's buffer settles at a few times its bytes
/// as the events slide through it: with the default 65,536 events that takes minutes of a
/// slow reader's pace, which a one-minute run would count as growth.
const QUEUE_EVENTS: u64 = 8_192;
/// The slow subscriber reads at this fraction of the target rate (it receives all of it).
const SLOW_FRACTION: f64 = 0.1;
/// How often the server is sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How long descriptors, subscriptions and connections may take to come back to baseline.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the publishers may take to report once told to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest RSS growth allowed between the first and the last window after warm-up, in a run
/// of at least `RSS_STRICT_RUN`.
const RSS_GROWTH_MAX: f64 = 0.05;
/// Shorter runs allow more: within a minute, subscriber queues that fill up to their bound on
/// a busy machine (and keep their buffers) move a server of 25 MiB by more than 5%, so only a
/// gross leak is told apart.
const RSS_GROWTH_MAX_SHORT: f64 = 0.25;
const RSS_STRICT_RUN: Duration = Duration::from_secs(300);
/// Warm-up is a third of the run, at most this long: a server under the soak's load takes
/// minutes to settle (its arenas and the slow subscriber's full queue reach their working
/// size), and growth while it settles is not a leak (docs/PERFORMANCE.md, "Soak test").
const WARM_UP_MAX_S: f64 = 600.0;
/// The compared windows are a quarter of what follows warm-up, at most this long.
const RSS_WINDOW_MAX_S: f64 = 60.0;
/// Rows of the printed time series, about; points of the JSON one, at most.
const SERIES_ROWS: usize = 30;
const SERIES_POINTS: usize = 400;
/// How long the publishers have to open their connections before the baseline is read.
const PUBLISHERS_CONNECT: Duration = Duration::from_millis(1_500);

/// The soak topics: one publisher each (so every topic's events carry their index as
/// sequence − 1), and each publisher's share of the target rate.
const PUBLISHERS: [(&str, f64); 6] = [
    ("native/acked", 0.05),
    ("native/pipelined", 0.30),
    ("native/batch", 0.20),
    ("grpc/unary", 0.05),
    ("grpc/batch", 0.15),
    ("grpc/stream", 0.25),
];

/// The checked subscribers: name, door, pattern under the run's `main` prefix.
const SUBSCRIBERS: [(&str, &str, &str); 6] = [
    ("native exact", "native", "grpc/unary"),
    ("native *", "native", "*/batch"),
    ("native **", "native", "**"),
    ("gRPC exact", "grpc", "native/pipelined"),
    ("gRPC *", "grpc", "native/*"),
    ("gRPC **", "grpc", "**"),
];

/// One sample of the server, `t_s` seconds after the load started.
#[derive(Clone, Copy, Debug, serde::Serialize)]
struct Sample {
    t_s: f64,
    #[serde(flatten)]
    probe: Probe,
}

/// Runs the soak; Ok(true) when every check passed.
pub fn run(args: &Args) -> Result<bool, String> {
    let seconds = args.seconds.or(args.minutes.map(|m| m * 60)).unwrap_or(60);
    let duration = Duration::from_secs(seconds);
    let server = match args.server_pid {
        Some(pid) => {
            let metrics = args
                .metrics_addr
                .as_deref()
                .ok_or("--server-pid needs --metrics-addr")?;
            Server::attach(pid, &args.server, &args.grpc, metrics)
        }
        None => {
            let bin = match &args.server_bin {
                Some(bin) => bin.clone(),
                None => std::env::current_exe()
                    .map_err(|e| e.to_string())?
                    .with_file_name("eventstream")
                    .to_string_lossy()
                    .into_owned(),
            };
            Server::spawn(&bin, args.shards, QUEUE_EVENTS)?
        }
    };
    let initial = server.probe()?;
    let root = super::native::unique_topic("soak");
    let topics: Vec<String> = PUBLISHERS
        .iter()
        .map(|(t, _)| format!("{root}/main/{t}"))
        .collect();

    let capacity = match args.rate {
        Some(_) => None,
        None => Some(burst(&server.native, &format!("{root}/burst"))?),
    };
    let target = match (args.rate, capacity) {
        (Some(rate), _) => rate as f64,
        (None, c) => c.unwrap_or_default() * LOAD_FRACTION,
    };
    eprintln!(
        "soak: {seconds} s against server pid {} (native {}, gRPC {}); target {target:.0} \
         events/s{}",
        server.pid,
        server.native,
        server.grpc,
        capacity.map_or_else(String::new, |c| format!(
            " ({:.0}% of a measured burst of {c:.0})",
            LOAD_FRACTION * 100.0
        ))
    );

    // Subscribers first: each sees every soak event from sequence 1.
    let matching = |pattern: &str| -> Result<Vec<String>, String> {
        let p = Pattern::parse(pattern.as_bytes()).map_err(|e| e.to_string())?;
        Ok(topics.iter().filter(|t| p.matches(t)).cloned().collect())
    };
    let mut planned = Vec::new();
    for (name, door, pattern) in SUBSCRIBERS {
        let pattern = format!("{root}/main/{pattern}");
        planned.push((
            name,
            door,
            Ledger::new(name, matching(&pattern)?, false),
            pattern,
        ));
    }
    let stream_topic = topics[5].clone();
    let stream_ledger = Ledger::new("gRPC Stream", vec![stream_topic.clone()], false);
    let slow_pattern = format!("{root}/main/**");
    let slow_ledger = Ledger::new("slow native **", matching(&slow_pattern)?, true);
    let flow = {
        let mut checked: Vec<&Ledger> = planned.iter().map(|p| &p.2).collect();
        checked.push(&stream_ledger);
        Arc::new(Flow::new(WINDOW_EVENTS, &topics, &checked))
    };
    let mut readers = Vec::new();
    let (registered_tx, registered_rx) = mpsc::channel();
    let mut grpc_subscribers = 0;
    for (_, door, ledger, pattern) in planned {
        if door == "native" {
            let sub = NativeSubscriber::subscribe(&server.native, &pattern, ledger, None)?;
            readers.push(sub.start(flow.clone()));
        } else {
            readers.push(subscribers::grpc_subscriber(
                server.grpc.clone(),
                pattern,
                ledger,
                flow.clone(),
                registered_tx.clone(),
            ));
            grpc_subscribers += 1;
        }
    }
    let slow = NativeSubscriber::subscribe(
        &server.native,
        &slow_pattern,
        slow_ledger,
        Some(target * SLOW_FRACTION),
    )?;
    let slow = slow.start(flow.clone());
    for _ in 0..grpc_subscribers {
        registered_rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| "a gRPC subscriber did not register within 30 s".to_owned())??;
    }

    // The server's counters before any soak event: what was shed, cut or refused is counted
    // from here.
    let before_load = server.probe()?;
    let (published_tx, published_rx) = mpsc::channel();
    // The Stream publisher's subscription is part of the baseline: open it first.
    let stream_reader = publishers::grpc(
        publishers::GrpcPlan {
            addr: server.grpc.clone(),
            unary: (3, topics[3].clone(), target * PUBLISHERS[3].1),
            batch: (4, topics[4].clone(), target * PUBLISHERS[4].1),
            stream: (5, stream_topic, target * PUBLISHERS[5].1),
            stream_ledger,
        },
        flow.clone(),
        published_tx.clone(),
    );
    for (t, kind) in [
        (0, NativeKind::Acked),
        (1, NativeKind::Pipelined),
        (2, NativeKind::Batch),
    ] {
        publishers::native(
            kind,
            server.native.clone(),
            topics[t].clone(),
            t,
            target * PUBLISHERS[t].1,
            flow.clone(),
            published_tx.clone(),
        );
    }
    // The publishers' connections are open once their first second is due; the baseline is
    // read after it, with every steady client connected.
    thread::sleep(PUBLISHERS_CONNECT);
    let baseline = stable_probe(&server)?;
    let start = Instant::now();
    let samples = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (samples, sampling) = (samples.clone(), sampling.clone());
        let s = Server::attach(server.pid, &server.native, &server.grpc, &server.metrics);
        thread::spawn(move || {
            let mut failures = 0u64;
            while sampling.load(Ordering::Acquire) {
                match s.probe() {
                    Ok(probe) => samples.lock().expect("no panic while held").push(Sample {
                        t_s: start.elapsed().as_secs_f64(),
                        probe,
                    }),
                    Err(e) => {
                        failures += 1;
                        eprintln!("soak: sample failed: {e}");
                    }
                }
                thread::sleep(SAMPLE_EVERY);
            }
            failures
        })
    };
    let churn_stop = Arc::new(AtomicBool::new(false));
    let churning = churn::run(
        churn::ChurnPlan {
            native: server.native.clone(),
            grpc: server.grpc.clone(),
            root: root.clone(),
            watch_topic: topics[0].clone(),
        },
        churn_stop.clone(),
    );
    let mut last_note = Instant::now();
    while start.elapsed() < duration && !flow.aborted() {
        thread::sleep(Duration::from_millis(100));
        if last_note.elapsed() >= Duration::from_secs(60) {
            last_note = Instant::now();
            if let Some(s) = samples.lock().expect("no panic while held").last() {
                eprintln!(
                    "soak: {:.0} s: RSS {:.1} MiB, {} descriptors, {} subscriptions, shed {}",
                    s.t_s,
                    s.probe.rss_kib as f64 / 1024.0,
                    s.probe.fds,
                    s.probe.subscriptions,
                    s.probe.shed - baseline.shed
                );
            }
        }
    }
    let load_seconds = start.elapsed().as_secs_f64();

    // Churn stops; with the load still on, everything it opened must be let go.
    churn_stop.store(true, Ordering::Release);
    let churn = churning.join().map_err(|_| "the churn thread panicked")?;
    let settle_began = Instant::now();
    let mut settled = server.probe()?;
    while settled.clients() != baseline.clients() && settle_began.elapsed() < SETTLE_TIMEOUT {
        thread::sleep(Duration::from_millis(200));
        settled = server.probe()?;
    }
    let settle_s = settle_began.elapsed().as_secs_f64();

    // The publishers stop; each topic gets its closing marker once its count is known.
    flow.stop.store(true, Ordering::Release);
    let mut published = vec![None; topics.len()];
    let mut failures: Vec<String> = Vec::new();
    let deadline = Instant::now() + STOP_TIMEOUT;
    while published.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        match published_rx.recv_timeout(left) {
            Ok((t, Ok(n))) => published[t] = Some(n),
            Ok((t, Err(e))) => {
                failures.push(e);
                published[t] = Some(0);
            }
            Err(_) => {
                failures.push(format!("publishers did not stop within {STOP_TIMEOUT:?}"));
                break;
            }
        }
    }
    let published: Vec<u64> = published
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    sampling.store(false, Ordering::Release);
    flow.draining.store(true, Ordering::Release);
    if failures.is_empty() && !flow.aborted() {
        if let Err(e) = publishers::markers(&server.native, &topics, &published) {
            failures.push(e);
            flow.fail();
        }
    } else {
        flow.fail();
    }
    let mut reports: Vec<Report> = Vec::new();
    for reader in readers.into_iter().chain([stream_reader, slow]) {
        match reader.join() {
            Ok(Ok(report)) => reports.push(report),
            Ok(Err(e)) => failures.push(e),
            Err(_) => failures.push("a subscriber thread panicked".into()),
        }
    }
    let sample_failures = sampler.join().map_err(|_| "the sampler panicked")?;
    let after = server.probe()?;

    // Everything the soak opened is closed: the server must be back where it started.
    let closed_began = Instant::now();
    let mut closed = after;
    while closed.clients() != initial.clients() && closed_began.elapsed() < SETTLE_TIMEOUT {
        thread::sleep(Duration::from_millis(200));
        closed = server.probe()?;
    }

    let samples = std::mem::take(&mut *samples.lock().expect("no panic while held"));
    let rss = rss_growth(&samples, load_seconds);
    let mut checks: Vec<(String, Result<String, String>)> = Vec::new();
    checks.push((
        "publishers and subscribers ran without error".into(),
        if failures.is_empty() {
            Ok(format!(
                "{} events published",
                published.iter().sum::<u64>()
            ))
        } else {
            Err(failures.join("; "))
        },
    ));
    check_subscribers(
        &reports,
        &topics,
        &published,
        &before_load,
        &after,
        &mut checks,
    );
    checks.push((
        "churn: clients killed mid-stream, none failed".into(),
        if churn.failures.is_empty() && churn.killed_mid_stream > 0 {
            Ok(format!(
                "{} killed mid-stream, {} before they were ready",
                churn.killed_mid_stream, churn.killed_early
            ))
        } else if churn.failures.is_empty() {
            Err("no churn client was killed mid-stream".into())
        } else {
            Err(churn.failures.join("; "))
        },
    ));
    checks.push((
        "descriptors, subscriptions, connections back to baseline after the churn".into(),
        if settled.clients() == baseline.clients() {
            Ok(format!("in {settle_s:.1} s: {}", clients_text(&settled)))
        } else {
            Err(format!(
                "after {settle_s:.0} s: {} (baseline {})",
                clients_text(&settled),
                clients_text(&baseline)
            ))
        },
    ));
    checks.push((
        "all released once the soak's clients closed".into(),
        if closed.clients() == initial.clients() {
            Ok(clients_text(&closed))
        } else {
            Err(format!(
                "{} (before the soak {})",
                clients_text(&closed),
                clients_text(&initial)
            ))
        },
    ));
    checks.push(("server RSS flat after warm-up".into(), rss.verdict()));
    let passed = checks.iter().all(|(_, r)| r.is_ok());

    let stopped = server.stop();
    let achieved = published.iter().sum::<u64>() as f64 / load_seconds;
    if args.json {
        let stride = samples.len().div_ceil(SERIES_POINTS).max(1);
        println!(
            "{}",
            serde_json::json!({
                "row": "soak",
                "passed": passed && stopped.is_ok(),
                "seconds": load_seconds,
                "capacity_events_per_s": capacity,
                "target_events_per_s": target,
                "achieved_events_per_s": achieved,
                "published": topics.iter().zip(&published).map(|(t, n)| (t.rsplit_once("/main/").map_or(t.as_str(), |x| x.1), n)).collect::<std::collections::BTreeMap<_, _>>(),
                "subscribers": reports,
                "churn": churn,
                "baseline": baseline,
                "after_churn": settled,
                "settle_s": settle_s,
                "closed": closed,
                "rss": rss,
                "sample_failures": sample_failures,
                "checks": checks.iter().map(|(name, r)| serde_json::json!({
                    "check": name,
                    "passed": r.is_ok(),
                    "detail": r.as_ref().unwrap_or_else(|e| e),
                })).collect::<Vec<_>>(),
                "series": samples.iter().step_by(stride).collect::<Vec<_>>(),
            })
        );
    } else {
        print_summary(
            &topics,
            &published,
            load_seconds,
            target,
            achieved,
            &reports,
            &churn,
            &samples,
            &checks,
        );
    }
    stopped?;
    Ok(passed)
}

/// Events/s of pipelined native publishes to `BURST_SUBSCRIBERS` subscribers of one topic,
/// every delivery checked, the publisher a window ahead of the slowest.
fn burst(server: &str, prefix: &str) -> Result<f64, String> {
    let clock = Instant::now();
    let topic = format!("{prefix}/x");
    let watchers = (0..BURST_SUBSCRIBERS)
        .map(|_| {
            Watcher::start(
                server,
                &format!("{prefix}/*"),
                BURST_EVENTS,
                clock,
                Duration::from_secs(30),
                "",
                Form::Frames,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut publisher = Client::connect(server).map_err(|e| e.to_string())?;
    let mut payload = vec![0u8; ledger::PAYLOAD_BYTES];
    let began = Instant::now();
    for i in 0..BURST_EVENTS {
        if i % 1024 == 0 {
            loop {
                let slowest = watchers.iter().map(Watcher::received).min().unwrap_or(0);
                if i.saturating_sub(slowest) <= WINDOW_EVENTS
                    || watchers.iter().any(Watcher::is_finished)
                {
                    break;
                }
                publisher.flush().map_err(|e| e.to_string())?;
                thread::yield_now();
            }
        }
        delivery::stamp(&mut payload, 0, i);
        publisher
            .publish_nowait_simple(&topic, Priority::Medium, &payload)
            .map_err(|e| e.to_string())?;
    }
    publisher.flush().map_err(|e| e.to_string())?;
    for w in watchers {
        w.finish().map_err(|e| format!("capacity burst: {e}"))?;
    }
    Ok(BURST_EVENTS as f64 / began.elapsed().as_secs_f64())
}

/// A probe taken when two readings in a row agree (a metrics scrape or a closing client may
/// be passing through).
fn stable_probe(server: &Server) -> Result<Probe, String> {
    let mut last = server.probe()?;
    for _ in 0..50 {
        thread::sleep(Duration::from_millis(200));
        let now = server.probe()?;
        if now.clients() == last.clients() {
            return Ok(now);
        }
        last = now;
    }
    Err("the server's descriptors and clients did not hold still for the baseline".into())
}

fn clients_text(p: &Probe) -> String {
    format!(
        "{} descriptors, {} subscriptions, {} native and {} gRPC connections",
        p.fds, p.subscriptions, p.native_connections, p.grpc_connections
    )
}

/// The per-subscriber checks: every checked subscriber saw every event of its topics in order
/// (the ledgers failed at once otherwise) up to its closing marker; the slow subscriber's
/// gaps are exactly what the server shed for it, and nobody else was shed.
fn check_subscribers(
    reports: &[Report],
    topics: &[String],
    published: &[u64],
    before: &Probe,
    after: &Probe,
    checks: &mut Vec<(String, Result<String, String>)>,
) {
    let mut slow_shed = None;
    for r in reports {
        let complete = r.ledger.check_complete(topics, published);
        let slow = r.name.starts_with("slow");
        let verdict = complete.and_then(|()| {
            if let (Some(delivered), Some(shed)) = (r.server_delivered, r.server_shed) {
                if delivered != r.received {
                    return Err(format!(
                        "received {} events, the server says it delivered {delivered}",
                        r.received
                    ));
                }
                if shed != r.gaps {
                    return Err(format!(
                        "{} events missing from its sequences, the server says it shed {shed}",
                        r.gaps
                    ));
                }
            }
            if slow {
                slow_shed = Some(r.gaps);
                if r.gaps == 0 {
                    return Err("never shed: it was not slow enough to test shedding".into());
                }
                Ok(format!(
                    "{} received, {} shed, every gap counted by the server",
                    r.received, r.gaps
                ))
            } else {
                Ok(format!("{} received in order, none missing", r.received))
            }
        });
        checks.push((format!("{} ({}, {})", r.name, r.door, r.pattern), verdict));
    }
    let shed = after.shed - before.shed;
    checks.push((
        "server-wide shed = the slow subscriber's; no cut, no refusal".into(),
        match slow_shed {
            Some(s) if s == shed && after.cut == before.cut && after.refused == before.refused => {
                Ok(format!("{shed} shed"))
            }
            Some(s) => Err(format!(
                "the server shed {shed} (slow subscriber {s}), cut {}, refused {}",
                after.cut - before.cut,
                after.refused - before.refused
            )),
            None => Err("no report from the slow subscriber".into()),
        },
    ));
}

/// The server's RSS after warm-up: the median of the first window against the last.
#[derive(Debug, serde::Serialize)]
struct RssGrowth {
    /// The growth allowed (by the run's length).
    allowed: f64,
    warm_up_s: f64,
    window_s: f64,
    first_median_kib: Option<u64>,
    last_median_kib: Option<u64>,
    growth: Option<f64>,
}

impl RssGrowth {
    fn verdict(&self) -> Result<String, String> {
        let (Some(first), Some(last), Some(growth)) =
            (self.first_median_kib, self.last_median_kib, self.growth)
        else {
            return Err("too few samples to compare".into());
        };
        let text = format!(
            "{:.1} MiB -> {:.1} MiB ({:+.1}%; medians of {:.0}-{:.0} s and the last {:.0} s)",
            first as f64 / 1024.0,
            last as f64 / 1024.0,
            growth * 100.0,
            self.warm_up_s,
            self.warm_up_s + self.window_s,
            self.window_s
        );
        if growth < self.allowed {
            Ok(format!("{text}, under {:.0}%", self.allowed * 100.0))
        } else {
            Err(format!("grew {text}, over {:.0}%", self.allowed * 100.0))
        }
    }
}

/// Warm-up: a third of the run, at most [`WARM_UP_MAX_S`]; windows: a quarter of what is
/// left, at most [`RSS_WINDOW_MAX_S`].
fn rss_growth(samples: &[Sample], load_seconds: f64) -> RssGrowth {
    let warm_up_s = (load_seconds / 3.0).min(WARM_UP_MAX_S);
    let window_s = ((load_seconds - warm_up_s) / 4.0).min(RSS_WINDOW_MAX_S);
    let median = |from: f64, to: f64| -> Option<u64> {
        let mut v: Vec<u64> = samples
            .iter()
            .filter(|s| s.t_s >= from && s.t_s <= to)
            .map(|s| s.probe.rss_kib)
            .collect();
        v.sort_unstable();
        v.get(v.len() / 2).copied()
    };
    let first = median(warm_up_s, warm_up_s + window_s);
    let last = median(load_seconds - window_s, load_seconds);
    RssGrowth {
        allowed: if load_seconds >= RSS_STRICT_RUN.as_secs_f64() {
            RSS_GROWTH_MAX
        } else {
            RSS_GROWTH_MAX_SHORT
        },
        warm_up_s,
        window_s,
        first_median_kib: first,
        last_median_kib: last,
        growth: first
            .zip(last)
            .map(|(f, l)| l as f64 / f.max(1) as f64 - 1.0),
    }
}

#[allow(clippy::too_many_arguments)]
fn print_summary(
    topics: &[String],
    published: &[u64],
    load_seconds: f64,
    target: f64,
    achieved: f64,
    reports: &[Report],
    churn: &churn::ChurnReport,
    samples: &[Sample],
    checks: &[(String, Result<String, String>)],
) {
    println!(
        "soak: {load_seconds:.0} s, target {target:.0} events/s, achieved {achieved:.0} events/s"
    );
    println!(
        "{:<28} {:>12} {:>10}",
        "publisher (topic)", "events", "events/s"
    );
    for (t, n) in topics.iter().zip(published) {
        let name = t.rsplit_once("/main/").map_or(t.as_str(), |x| x.1);
        println!("{name:<28} {n:>12} {:>10.0}", *n as f64 / load_seconds);
    }
    println!(
        "{:<16} {:<7} {:>12} {:>10} {:>12}",
        "subscriber", "door", "received", "gaps", "server shed"
    );
    for r in reports {
        println!(
            "{:<16} {:<7} {:>12} {:>10} {:>12}",
            r.name,
            r.door,
            r.received,
            r.gaps,
            r.server_shed.map_or_else(|| "-".into(), |s| s.to_string())
        );
    }
    println!(
        "churn: {} native and {} gRPC clients started, {} killed mid-stream (SIGKILL), {} \
         before they were ready",
        churn.native_started, churn.grpc_started, churn.killed_mid_stream, churn.killed_early
    );
    println!(
        "{:>8} {:>10} {:>6} {:>6} {:>7} {:>6} {:>12}",
        "t s", "RSS MiB", "fds", "subs", "native", "gRPC", "shed"
    );
    let stride = samples.len().div_ceil(SERIES_ROWS).max(1);
    let mut shown: Vec<&Sample> = samples.iter().step_by(stride).collect();
    if let Some(last) = samples.last() {
        if !shown.last().is_some_and(|s| std::ptr::eq(*s, last)) {
            shown.push(last);
        }
    }
    for s in shown {
        let p = s.probe;
        println!(
            "{:>8.0} {:>10.1} {:>6} {:>6} {:>7} {:>6} {:>12}",
            s.t_s,
            p.rss_kib as f64 / 1024.0,
            p.fds,
            p.subscriptions,
            p.native_connections,
            p.grpc_connections,
            p.shed
        );
    }
    for (name, result) in checks {
        match result {
            Ok(detail) => println!("PASS  {name}: {detail}"),
            Err(detail) => println!("FAIL  {name}: {detail}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_s: f64, rss_kib: u64) -> Sample {
        Sample {
            t_s,
            probe: Probe {
                rss_kib,
                ..Probe::default()
            },
        }
    }

    #[test]
    fn rss_growth_compares_the_first_window_after_warm_up_with_the_last() {
        // 60 s: warm-up 20 s, windows of 10 s. Warm-up growth does not count.
        let flat: Vec<Sample> = (0..=60)
            .map(|t| sample(t as f64, if t < 20 { 1_000 + t * 100 } else { 4_000 }))
            .collect();
        let g = rss_growth(&flat, 60.0);
        assert_eq!(
            (g.first_median_kib, g.last_median_kib),
            (Some(4_000), Some(4_000))
        );
        assert!(g.verdict().is_ok());
        // 300 s: warm-up 100 s, windows of 50 s (medians at 125 s and 275 s): 7% is too much.
        let growing: Vec<Sample> = (0..=300).map(|t| sample(t as f64, 4_000 + t * 2)).collect();
        let e = rss_growth(&growing, 300.0).verdict().unwrap_err();
        assert!(e.contains("over 5%"), "{e}");
        // A minute only tells a gross leak: 7% passes, 30% does not.
        let slow: Vec<Sample> = (0..=60).map(|t| sample(t as f64, 4_000 + t * 10)).collect();
        assert!(rss_growth(&slow, 60.0).verdict().is_ok());
        let gross: Vec<Sample> = (0..=60).map(|t| sample(t as f64, 4_000 + t * 60)).collect();
        assert!(rss_growth(&gross, 60.0)
            .verdict()
            .unwrap_err()
            .contains("over 25%"));
        // 30 minutes: warm-up 600 s, windows of 60 s. Settling for the first seven minutes
        // does not count; creeping on afterwards does.
        let settling = |t: u64| 4_000 + t.min(420) * 2;
        let settled: Vec<Sample> = (0..=1800).map(|t| sample(t as f64, settling(t))).collect();
        let g = rss_growth(&settled, 1800.0);
        assert_eq!((g.warm_up_s, g.window_s), (600.0, 60.0));
        assert!(g.verdict().is_ok(), "{:?}", g.verdict());
        let creeping: Vec<Sample> = (0..=1800)
            .map(|t| sample(t as f64, settling(t) + t / 4))
            .collect();
        assert!(rss_growth(&creeping, 1800.0).verdict().is_err());
        assert!(
            rss_growth(&[], 60.0).verdict().is_err(),
            "no samples, no pass"
        );
    }
}
