//! The native-protocol rows: pipelined publishes over TCP (to one subscriber, to many on a
//! wildcard, to none), UDP datagrams, and the growth rows, which measure how publishing
//! holds up once the server carries a million topics or a thousand wildcard subscriptions.

use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::delivery::{self, Watcher};
use super::{Args, Row};
use eventstream::engine::Priority;
use eventstream::native::client::{Client, ClientError};
use eventstream::native::codec::Pong;

/// Events sent as UDP datagrams (`UDP_BATCH` publishes per datagram), received by one TCP
/// subscriber: latency from the send time in the payload, every event checked for order and
/// sequence. The sender keeps at most `--window` events ahead of the subscriber; a lost
/// datagram fails the row (the subscriber's wait times out).
pub fn udp(args: &Args) -> Result<Row, String> {
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
        baseline: None,
    })
}

/// Pipelined publishes on one connection and no subscriber: how fast the server takes events
/// in. Timed from the first publish to the answer of a PING sent after the last, which the
/// server gives once it has routed every event before it; the server's `received` counter
/// must have grown by the count.
pub fn publish(args: &Args) -> Result<Row, String> {
    publish_to(args, &args.server)
}

/// The `native-publish` measurement against the server at native address `server`.
fn publish_to(args: &Args, server: &str) -> Result<Row, String> {
    let topic = unique_topic("native-publish");
    let mut publisher = Client::connect(server).map_err(|e| e.to_string())?;
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
    check_grown(
        &before,
        &after,
        |p| p.received,
        args.count,
        "events received",
    )?;
    Ok(Row {
        name: "native-publish",
        events: args.count,
        seconds,
        latency: None,
        baseline: None,
    })
}

/// Checks, from the PONGs before and after a row published `expected` events, that the
/// server's `counter` grew by as many and that it refused none; `what` names the counter.
fn check_grown(
    before: &Pong,
    after: &Pong,
    counter: fn(&Pong) -> u64,
    expected: u64,
    what: &str,
) -> Result<(), String> {
    let grown = counter(after) - counter(before);
    let refused = after.refused - before.refused;
    if grown < expected || refused > 0 {
        return Err(format!(
            "the server counts {grown} {what} of {expected} ({refused} refused)"
        ));
    }
    Ok(())
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

pub fn unique_topic(row: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("bench/{row}/{}-{nanos}", std::process::id())
}

/// Closed-loop publishers read the clock for their send stamps once per this many events
/// (about 3 KiB of 100-byte publishes, which the client writes out together).
const STAMP_EVERY: u64 = 32;

/// Pipelined publishes on one connection, one subscriber on another; both threads of this
/// process, so the send timestamp in the payload and the receive time share one clock.
pub fn tcp(args: &Args) -> Result<Row, String> {
    let topic = unique_topic("native-tcp");
    pipelined(args, "native-tcp", &topic, &[&topic])
}

/// Pipelined publishes to one topic, each delivered to `--fanout` subscribers that share one
/// wildcard pattern (each on its own connection). Counts deliveries: events/s is events
/// times subscribers per second, every subscriber checked for every event in order.
pub fn fanout(args: &Args) -> Result<Row, String> {
    let prefix = unique_topic("fanout");
    let pattern = format!("{prefix}/*");
    let patterns = vec![pattern.as_str(); args.fanout];
    pipelined(args, "fanout", &format!("{prefix}/x"), &patterns)
}

/// Publishes `--count` events to `topic` on one connection, pipelined, while a subscriber per
/// entry of `patterns` receives and checks them. Flow control: the publisher stays at most
/// `--window` events ahead of the slowest subscriber, inside the server's subscriber queues,
/// so the row measures delivery, not shedding.
fn pipelined(
    args: &Args,
    name: &'static str,
    topic: &str,
    patterns: &[&str],
) -> Result<Row, String> {
    let count = args.count;
    let clock = Instant::now();
    let wait = Duration::from_secs(10);
    let watchers = patterns
        .iter()
        .map(|p| Watcher::start(&args.server, p, count, clock, wait, ""))
        .collect::<Result<Vec<_>, _>>()?;
    let slowest = || {
        watchers
            .iter()
            .map(Watcher::received)
            .min()
            .unwrap_or(count)
    };
    let failed = || watchers.iter().any(Watcher::is_finished);

    let mut publisher = Client::connect(&args.server).map_err(|e| e.to_string())?;
    publisher
        .set_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut payload = vec![0u8; args.size];
    let first = clock.elapsed().as_nanos() as u64;
    let mut sent = first;
    for i in 0..count {
        if let Some(rate) = args.rate {
            // Open loop: event i is due at its slot; late events go at once, stamped with
            // the slot, so their latency includes the wait the schedule did not get.
            let due = first + i * 1_000_000_000 / rate;
            wait_until(&clock, due);
            delivery::stamp(&mut payload, due, i);
            publisher
                .publish_nowait_simple(topic, Priority::Medium, &payload)
                .map_err(|e| e.to_string())?;
            publisher.flush().map_err(|e| e.to_string())?;
            continue;
        }
        if i % 1024 == 0 {
            while i.saturating_sub(slowest()) > args.window {
                publisher.flush().map_err(|e| e.to_string())?;
                if failed() {
                    break; // a subscriber stopped early: its error is reported below
                }
                thread::yield_now();
            }
        }
        // One clock reading per STAMP_EVERY events: the later ones of a group are stamped a
        // little before they are sent, so latency is never under-counted.
        if i % STAMP_EVERY == 0 {
            sent = clock.elapsed().as_nanos() as u64;
        }
        delivery::stamp(&mut payload, sent, i);
        publisher
            .publish_nowait_simple(topic, Priority::Medium, &payload)
            .map_err(|e| e.to_string())?;
    }
    publisher.flush().map_err(|e| e.to_string())?;
    let pong = publisher.ping().map_err(|e| e.to_string())?;
    let mut latency = delivery::histogram();
    let mut last = first;
    for watcher in watchers {
        let (h, done) = watcher.finish()?;
        latency.add(&h).map_err(|e| e.to_string())?;
        last = last.max(done);
    }
    if pong.shed > 0 {
        eprintln!(
            "note: the server reports {} shed events in total (other clients?)",
            pong.shed
        );
    }
    Ok(Row {
        name,
        events: count * patterns.len() as u64,
        seconds: (last - first) as f64 / 1e9,
        latency: Some(latency),
        baseline: None,
    })
}

/// The rate and event count of `native-latency` (and of its floor, `ceiling-relay-latency`):
/// `--rate`, default 50,000 events/s, for at most five seconds.
pub fn latency_schedule(args: &Args) -> (u64, u64) {
    let rate = args.rate.unwrap_or(50_000);
    (rate, args.count.min(rate * 5))
}

/// Publish → subscriber latency at a fixed rate (`--rate`, default 50,000 events/s), for the
/// low-latency comparison with the host's busy-poll ping-pong. One thread publishes each
/// event when it is due and, in between, busy-polls the subscriber's connection: nothing
/// sleeps, so what is measured is the server and the loopback, not this process's wake-ups.
/// Latency counts from each event's due time (no coordinated omission). At most five
/// seconds of events: `--count` or rate × 5 s, whichever is fewer.
pub fn latency(args: &Args) -> Result<Row, String> {
    let (rate, count) = latency_schedule(args);
    let topic = unique_topic("native-latency");
    let mut sub = Client::connect(&args.server).map_err(|e| e.to_string())?;
    sub.subscribe(&topic, Priority::Batch)
        .map_err(|e| e.to_string())?;
    sub.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut publisher = Client::connect(&args.server).map_err(|e| e.to_string())?;
    publisher
        .set_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;

    let clock = Instant::now();
    let mut latency = delivery::histogram();
    let mut received = 0;
    let mut payload = vec![0u8; args.size];
    let send = |due: u64, i: u64| -> Result<(), String> {
        delivery::stamp(&mut payload, due, i);
        publisher
            .publish_nowait_simple(&topic, Priority::Medium, &payload)
            .map_err(|e| e.to_string())?;
        publisher.flush().map_err(|e| e.to_string())
    };
    // Takes whatever has arrived; never waits.
    let poll = || -> Result<u64, String> {
        loop {
            match sub.next_event() {
                Ok(d) => {
                    let now = clock.elapsed().as_nanos() as u64;
                    let due = delivery::check(received + 1, d.sequence, &d.event.payload)?;
                    latency
                        .record(now.saturating_sub(due).max(1))
                        .map_err(|e| e.to_string())?;
                    received += 1;
                }
                Err(ClientError::Timeout(_)) => return Ok(received),
                Err(e) => return Err(format!("after {received} events: {e}")),
            }
        }
    };
    let first = delivery::open_loop(clock, rate, count, send, poll)?;
    Ok(Row {
        name: "native-latency",
        events: count,
        seconds: (clock.elapsed().as_nanos() as u64 - first) as f64 / 1e9,
        latency: Some(latency),
        baseline: None,
    })
}

/// Runs of the `native-publish` measurement before each growth row grows the server, and
/// after; the row reports the median after as a fraction of the median before.
pub const GROWTH_RUNS: usize = 5;

/// Wildcard subscriptions the `growth-wildcards` row adds (the target names 1,000).
const GROWTH_WILDCARDS: usize = 1_000;

/// `native-publish` throughput on a server that gained `--count` distinct topics (each
/// sequenced once, so each holds an entry in its owner's topic table), against without them.
///
/// With `--spawn` the runs alternate between the grown server and a fresh twin started beside
/// it on the same CPUs (without, with, without, ...): on a shared machine whose speed drifts
/// over seconds, five runs before growing and five after differed by more than the cost being
/// measured (single rounds read 66% to 160%). Against a server the bench did not start, the
/// runs are taken before and after growing it.
pub fn growth_topics(args: &Args) -> Result<Row, String> {
    let (without, with) = if args.spawn {
        let twin = crate::spawn(&args.cpus, args.spin_us)?;
        let fresh = twin.addresses().native.to_string();
        let alternating = grow_topics(args).and_then(|()| {
            let mut runs = (Vec::new(), Vec::new());
            for _ in 0..GROWTH_RUNS {
                runs.0.push(publish_to(args, &fresh)?);
                runs.1.push(publish(args)?);
            }
            Ok(runs)
        });
        if !twin.stop() {
            return Err("the twin server did not stop within its drain timeout".into());
        }
        alternating?
    } else {
        let before = publish_runs(args)?;
        grow_topics(args)?;
        (before, publish_runs(args)?)
    };
    Ok(Row {
        name: "growth-topics",
        baseline: Some(median_run(without).events_per_s()),
        ..median_run(with)
    })
}

/// Publishes once to each of `--count` new topics, checked to be counted by the server.
fn grow_topics(args: &Args) -> Result<(), String> {
    let prefix = unique_topic("growth-topics");
    let mut client = Client::connect(&args.server).map_err(|e| e.to_string())?;
    client
        .set_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let counted = client.ping().map_err(|e| e.to_string())?;
    for i in 0..args.count {
        let topic = format!("{prefix}/t{i}");
        client
            .publish_nowait_simple(&topic, Priority::Low, b"x")
            .map_err(|e| e.to_string())?;
    }
    let grown = client.ping().map_err(|e| e.to_string())?;
    check_grown(&counted, &grown, |p| p.topics, args.count, "new topics")
}

/// `native-publish` throughput with 1,000 wildcard subscriptions that match none of the
/// published topics (half `*`, half `**`, all under the published topics' prefix, so the
/// server must tell them apart), against without them. Unlike topics, subscriptions can be
/// taken away again, so the runs alternate (without, with, without, ...): on a shared machine
/// whose speed drifts over seconds, two sets of runs taken one after the other differed by
/// more than the cost being measured.
pub fn growth_wildcards(args: &Args) -> Result<Row, String> {
    let mut probe = Client::connect(&args.server).map_err(|e| e.to_string())?;
    probe
        .set_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for _ in 0..GROWTH_RUNS {
        let base = probe.ping().map_err(|e| e.to_string())?.subscriptions;
        without.push(publish(args)?);
        let holder = subscribe_wildcards(args, &mut probe, base)?;
        with.push(publish(args)?);
        drop(holder); // its subscriptions go with its connection
        let deadline = Instant::now() + Duration::from_secs(5);
        while probe.ping().map_err(|e| e.to_string())?.subscriptions > base {
            if Instant::now() > deadline {
                return Err("the wildcard subscriptions outlived their connection by 5 s".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(Row {
        name: "growth-wildcards",
        baseline: Some(median_run(without).events_per_s()),
        ..median_run(with)
    })
}

/// A connection holding `GROWTH_WILDCARDS` subscriptions, checked to be counted by the server
/// (`base`: its count before).
fn subscribe_wildcards(args: &Args, probe: &mut Client, base: u64) -> Result<Client, String> {
    let mut holder = Client::connect(&args.server).map_err(|e| e.to_string())?;
    for i in 0..GROWTH_WILDCARDS {
        let rest = if i % 2 == 0 { "*" } else { "**" };
        holder
            .subscribe(
                &format!("bench/native-publish/w{i}/{rest}"),
                Priority::Batch,
            )
            .map_err(|e| format!("wildcard subscription {i}: {e}"))?;
    }
    let now = probe.ping().map_err(|e| e.to_string())?.subscriptions;
    if now < base + GROWTH_WILDCARDS as u64 {
        return Err(format!(
            "the server counts {} new subscriptions of {GROWTH_WILDCARDS}",
            now.saturating_sub(base)
        ));
    }
    Ok(holder)
}

/// `GROWTH_RUNS` runs of the `native-publish` measurement.
fn publish_runs(args: &Args) -> Result<Vec<Row>, String> {
    (0..GROWTH_RUNS).map(|_| publish(args)).collect()
}

/// The run with the median rate.
fn median_run(mut runs: Vec<Row>) -> Row {
    runs.sort_by(|a, b| a.events_per_s().total_cmp(&b.events_per_s()));
    runs.swap_remove(runs.len() / 2)
}
