//! The native-protocol rows: pipelined publishes over TCP (to one subscriber, to many on a
//! wildcard, to none), UDP datagrams, and the growth rows, which measure how publishing
//! holds up once the server carries a million topics or a thousand wildcard subscriptions.
//!
//! The rows `native-tcp`, `native-publish`, `fanout` and `native-latency` take the fastest
//! documented path (topic handles, runs, delivery runs: PROTOCOL.md §5.6, PROTOCOL.md §5.7,
//! PROTOCOL.md §6.7);
//! `native-tcp-legacy`, `native-publish-legacy` and `fanout-legacy` keep measuring one frame
//! per event, as do the growth rows (they measure how the per-event path scales).

use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;

use super::delivery::{self, Form, Watcher};
use super::{Args, Row};
use eventstream::engine::Priority;
use eventstream::native::client::{Client, ClientError, TopicHandle};
use eventstream::native::codec::{Pong, RunWriter};

/// Events the fast-path publishers write at once (about 116 KiB of 100-byte events), as runs
/// of `RUN_EVENTS`: large writes, as the loopback ceilings make, and runs the server handles
/// within one read.
const EVENTS_PER_WRITE: u64 = 1024;
/// Events per PUBLISH_RUN frame.
const RUN_EVENTS: u64 = 64;
/// The request id of the fast-path publishers' frames: they ask for no ACK, and no request of
/// the client's own counter comes near it.
const RUN_REQUEST_ID: u64 = 1 << 62;

/// PUBLISH_RUN frames for `events` events of `size` bytes, encoded once and sent again and
/// again with new stamps: the load writes each event's send time and index into its payload
/// where it lies, and nothing else per event.
struct Runs {
    frames: BytesMut,
    /// Where each event's payload starts in `frames`.
    payloads: Vec<usize>,
}

impl Runs {
    fn new(handle: TopicHandle, events: u64, size: usize) -> Runs {
        let mut frames = BytesMut::new();
        let mut payloads = Vec::new();
        let payload = vec![0u8; size];
        let mut left = events;
        while left > 0 {
            let start = frames.len();
            let n = left.min(RUN_EVENTS);
            let mut run = RunWriter::begin(&mut frames, RUN_REQUEST_ID, false, handle.id());
            for _ in 0..n {
                run.push(&mut frames, Priority::Medium as u8, 0, &payload);
            }
            run.finish(&mut frames);
            let offsets = RunWriter::payload_offsets(&frames[start..]);
            payloads.extend(offsets.into_iter().map(|at| start + at));
            left -= n;
        }
        Runs { frames, payloads }
    }

    fn events(&self) -> u64 {
        self.payloads.len() as u64
    }

    /// Stamps the events `first..` with `sent_ns` and sends them.
    fn send(&mut self, client: &mut Client, sent_ns: u64, first: u64) -> Result<(), String> {
        for (i, &at) in self.payloads.iter().enumerate() {
            let payload = &mut self.frames[at..at + 16];
            delivery::stamp(payload, sent_ns, first + i as u64);
        }
        client.send_encoded(&self.frames).map_err(|e| e.to_string())
    }
}

/// Sends `count` events to `handle` in writes of `EVENTS_PER_WRITE`, stamped with the send
/// time read before each write; `before_write(i)` runs before the write starting at event `i`
/// (flow control).
fn send_runs(
    client: &mut Client,
    handle: TopicHandle,
    count: u64,
    size: usize,
    clock: &Instant,
    mut before_write: impl FnMut(&mut Client, u64) -> Result<(), String>,
) -> Result<(), String> {
    let mut full = Runs::new(handle, EVENTS_PER_WRITE.min(count), size);
    let mut sent = 0;
    while sent < count {
        before_write(client, sent)?;
        let now = clock.elapsed().as_nanos() as u64;
        if count - sent >= full.events() {
            full.send(client, now, sent)?;
            sent += full.events();
        } else {
            let mut tail = Runs::new(handle, count - sent, size);
            tail.send(client, now, sent)?;
            sent = count;
        }
    }
    Ok(())
}

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
        Form::Frames,
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
            thread::park_timeout(Duration::from_millis(1));
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
/// must have grown by the count. `form`: runs to a topic handle, or a PUBLISH per event.
pub fn publish(args: &Args, form: Form) -> Result<Row, String> {
    publish_to(args, &args.server, form)
}

/// The `native-publish` measurement against the server at native address `server`.
fn publish_to(args: &Args, server: &str, form: Form) -> Result<Row, String> {
    let topic = unique_topic("native-publish");
    let mut publisher = Client::connect(server).map_err(|e| e.to_string())?;
    publisher
        .set_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let before = publisher.ping().map_err(|e| e.to_string())?;
    let payload = vec![0x5au8; args.size];
    let clock = Instant::now();
    let start = Instant::now();
    match form {
        Form::Runs => {
            let handle = publisher.topic(&topic).map_err(|e| e.to_string())?;
            let no_wait = |_: &mut Client, _| Ok(());
            send_runs(
                &mut publisher,
                handle,
                args.count,
                args.size,
                &clock,
                no_wait,
            )?;
        }
        Form::Frames => {
            for _ in 0..args.count {
                publisher
                    .publish_nowait_simple(&topic, Priority::Medium, &payload)
                    .map_err(|e| e.to_string())?;
            }
        }
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
        name: match form {
            Form::Runs => "native-publish",
            Form::Frames => "native-publish-legacy",
        },
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
pub fn wait_until(clock: &Instant, due: u64) {
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
pub fn tcp(args: &Args, form: Form) -> Result<Row, String> {
    let topic = unique_topic("native-tcp");
    let name = match form {
        Form::Runs => "native-tcp",
        Form::Frames => "native-tcp-legacy",
    };
    pipelined(args, name, &topic, &[&topic], form)
}

/// Pipelined publishes to one topic, each delivered to `--fanout` subscribers that share one
/// wildcard pattern (each on its own connection). Counts deliveries: events/s is events
/// times subscribers per second, every subscriber checked for every event in order.
pub fn fanout(args: &Args, form: Form) -> Result<Row, String> {
    let prefix = unique_topic("fanout");
    let pattern = format!("{prefix}/*");
    let patterns = vec![pattern.as_str(); args.fanout];
    let name = match form {
        Form::Runs => "fanout",
        Form::Frames => "fanout-legacy",
    };
    pipelined(args, name, &format!("{prefix}/x"), &patterns, form)
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
    form: Form,
) -> Result<Row, String> {
    let server = args.server.as_str();
    pipelined_between(args, name, (server, server), topic, patterns, form)
}

/// [`pipelined`] with the publisher on one server and the subscribers on another
/// (`servers`: publisher's, subscribers'), which may be the same.
pub fn pipelined_between(
    args: &Args,
    name: &'static str,
    (publish_at, subscribe_at): (&str, &str),
    topic: &str,
    patterns: &[&str],
    form: Form,
) -> Result<Row, String> {
    let count = args.count;
    let clock = Instant::now();
    let wait = Duration::from_secs(10);
    let watchers = patterns
        .iter()
        .map(|p| Watcher::start(subscribe_at, p, count, clock, wait, "", form))
        .collect::<Result<Vec<_>, _>>()?;
    let slowest = || {
        watchers
            .iter()
            .map(Watcher::received)
            .min()
            .unwrap_or(count)
    };
    let failed = || watchers.iter().any(Watcher::is_finished);

    let mut publisher = Client::connect(publish_at).map_err(|e| e.to_string())?;
    publisher
        .set_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut payload = vec![0u8; args.size];
    let first = clock.elapsed().as_nanos() as u64;
    let mut sent = first;
    let handle = match form {
        Form::Runs => Some(publisher.topic(topic).map_err(|e| e.to_string())?),
        Form::Frames => None,
    };
    // Closed loop on the fast path: pre-encoded runs, large writes.
    let runs = handle.filter(|_| args.rate.is_none());
    if let Some(handle) = runs {
        let window = |publisher: &mut Client, i: u64| {
            while i.saturating_sub(slowest()) > args.window {
                publisher.flush().map_err(|e| e.to_string())?;
                if failed() {
                    break; // a subscriber stopped early: its error is reported below
                }
                // Until a subscriber reports progress (its Watcher unparks this thread): a
                // waiting publisher takes no CPU from the subscribers that share its CPU.
                thread::park_timeout(Duration::from_millis(1));
            }
            Ok(())
        };
        send_runs(&mut publisher, handle, count, args.size, &clock, window)?;
    }
    // Otherwise event by event: open loop on either path, or closed loop on today's frames.
    for i in (0..count).filter(|_| runs.is_none()) {
        if let Some(rate) = args.rate {
            // Open loop: event i is due at its slot; late events go at once, stamped with
            // the slot, so their latency includes the wait the schedule did not get.
            let due = first + i * 1_000_000_000 / rate;
            wait_until(&clock, due);
            delivery::stamp(&mut payload, due, i);
            match handle {
                Some(handle) => {
                    publisher.publish_run_nowait(handle, &[(Priority::Medium, &payload)])
                }
                None => publisher.publish_nowait_simple(topic, Priority::Medium, &payload),
            }
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
                // Until a subscriber reports progress (its Watcher unparks this thread): a
                // waiting publisher takes no CPU from the subscribers that share its CPU.
                thread::park_timeout(Duration::from_millis(1));
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
    sub.subscribe_runs(&topic, Priority::Batch)
        .map_err(|e| e.to_string())?;
    sub.set_nonblocking(true).map_err(|e| e.to_string())?;
    let mut publisher = Client::connect(&args.server).map_err(|e| e.to_string())?;
    publisher
        .set_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let handle = publisher.topic(&topic).map_err(|e| e.to_string())?;
    // One event per write, encoded once: a one-record run to the topic's handle.
    let mut one = Runs::new(handle, 1, args.size);

    let clock = Instant::now();
    let mut latency = delivery::histogram();
    let mut received = 0;
    let send = |due: u64, i: u64| -> Result<(), String> { one.send(&mut publisher, due, i) };
    // Takes whatever has arrived; never waits.
    let poll = || -> Result<u64, String> {
        loop {
            let mut failed = None;
            let read = sub.next_events_with(|_, d| {
                let now = clock.elapsed().as_nanos() as u64;
                match delivery::check(received + 1, d.sequence, d.payload) {
                    Ok(due) => {
                        let _ = latency.record(now.saturating_sub(due).max(1));
                        received += 1;
                    }
                    Err(e) => failed = failed.take().or(Some(e)),
                }
            });
            if let Some(e) = failed {
                return Err(e);
            }
            match read {
                Ok(_) => {}
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
                runs.0.push(publish_to(args, &fresh, Form::Frames)?);
                runs.1.push(publish(args, Form::Frames)?);
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
        without.push(publish(args, Form::Frames)?);
        let holder = subscribe_wildcards(args, &mut probe, base)?;
        with.push(publish(args, Form::Frames)?);
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
    (0..GROWTH_RUNS)
        .map(|_| publish(args, Form::Frames))
        .collect()
}

/// The run with the median rate.
fn median_run(mut runs: Vec<Row>) -> Row {
    runs.sort_by(|a, b| a.events_per_s().total_cmp(&b.events_per_s()));
    runs.swap_remove(runs.len() / 2)
}
