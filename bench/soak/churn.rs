//! Churn: short-lived clients in child processes (this binary, `soak-client`), on the native
//! and gRPC doors in turn, each subscribing, publishing and reading until it is killed with
//! SIGKILL mid-stream, so the server sees connections vanish without a goodbye.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use prost::Message;

use super::ledger;
use super::subscribers::MESSAGE_BYTES_MAX;
use eventstream::engine::Priority;
use eventstream::grpc::framing::MessageReader;
use eventstream::native::client::{Client, ClientError};
use eventstream::proto;

/// A new churn client starts this often.
const CHURN_EVERY: Duration = Duration::from_millis(1_000);
/// Churn clients live this long, plus up to `LIFETIME_SPREAD`, before they are killed.
const LIFETIME_MIN: Duration = Duration::from_millis(1_500);
const LIFETIME_SPREAD_MS: u64 = 2_000;
/// Steps through the spread (a prime, so lifetimes do not repeat in a short cycle).
const LIFETIME_STEP_MS: u64 = 733;
/// How often the churn thread looks at its children.
const TICK: Duration = Duration::from_millis(50);
/// A churn client that was never killed (its parent died) gives up after this long.
const ORPHAN_TIMEOUT: Duration = Duration::from_secs(600);
/// Churn clients take their topics from this many slots in turn: the server keeps every topic
/// it sequenced (its sequence numbers last the server's run), so fresh topics for each client
/// would grow it by design. A slot's last user was killed many lifetimes ago.
const TOPIC_SLOTS: u64 = 16;
/// Events a churn client publishes per round, and its pause between rounds.
const ROUND_EVENTS: u64 = 16;
const ROUND_PAUSE: Duration = Duration::from_millis(5);

/// What the churn did.
#[derive(Debug, Default, serde::Serialize)]
pub struct ChurnReport {
    pub native_started: u64,
    pub grpc_started: u64,
    /// Killed after they said they were subscribed and publishing.
    pub killed_mid_stream: u64,
    /// Killed before that (a slow start on a busy machine).
    pub killed_early: u64,
    pub failures: Vec<String>,
}

struct Live {
    child: Child,
    id: u64,
    door: &'static str,
    kill_at: Instant,
    ready: Arc<AtomicBool>,
}

/// What a churn client needs: where to connect and which topics to use.
#[derive(Clone)]
pub struct ChurnPlan {
    pub native: String,
    pub grpc: String,
    pub root: String,
    /// A soak topic each churn client also subscribes to.
    pub watch_topic: String,
}

/// Runs the churn until `stop`; then kills what is left and waits for it.
pub fn run(plan: ChurnPlan, stop: Arc<AtomicBool>) -> thread::JoinHandle<ChurnReport> {
    thread::spawn(move || {
        let mut report = ChurnReport::default();
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => {
                report
                    .failures
                    .push(format!("cannot find this program: {e}"));
                return report;
            }
        };
        let mut live: Vec<Live> = Vec::new();
        let mut next_start = Instant::now();
        let mut n = 0u64;
        while !stop.load(Ordering::Acquire) {
            let now = Instant::now();
            if now >= next_start {
                next_start = now + CHURN_EVERY;
                let door = if n % 2 == 0 { "native" } else { "grpc" };
                match start(&exe, &plan, door, n) {
                    Ok((child, ready)) => {
                        let spread =
                            Duration::from_millis((n * LIFETIME_STEP_MS) % LIFETIME_SPREAD_MS);
                        live.push(Live {
                            child,
                            id: n,
                            door,
                            kill_at: now + LIFETIME_MIN + spread,
                            ready,
                        });
                        if door == "native" {
                            report.native_started += 1;
                        } else {
                            report.grpc_started += 1;
                        }
                    }
                    Err(e) => report.failures.push(e),
                }
                n += 1;
            }
            let (due, rest): (Vec<Live>, Vec<Live>) =
                live.into_iter().partition(|l| Instant::now() >= l.kill_at);
            live = rest;
            for l in due {
                kill(l, &mut report);
            }
            thread::sleep(TICK);
        }
        for l in live {
            kill(l, &mut report);
        }
        report
    })
}

fn start(
    exe: &std::path::Path,
    plan: &ChurnPlan,
    door: &'static str,
    id: u64,
) -> Result<(Child, Arc<AtomicBool>), String> {
    let mut child = Command::new(exe)
        .args(["soak-client", "--churn-door", door, "--server"])
        .arg(&plan.native)
        .arg("--grpc")
        .arg(&plan.grpc)
        .arg("--churn-root")
        .arg(format!("{}/churn/{}", plan.root, id % TOPIC_SLOTS))
        .arg("--churn-watch")
        .arg(&plan.watch_topic)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start churn client {id}: {e}"))?;
    let ready = Arc::new(AtomicBool::new(false));
    let stdout = child.stdout.take().expect("piped");
    let flag = ready.clone();
    thread::spawn(move || {
        let mut line = String::new();
        if BufReader::new(stdout).read_line(&mut line).is_ok() && line.trim() == "ready" {
            flag.store(true, Ordering::Release);
        }
    });
    Ok((child, ready))
}

fn kill(mut l: Live, report: &mut ChurnReport) {
    // A client that ended on its own failed a check (it said why on standard error).
    if let Ok(Some(status)) = l.child.try_wait() {
        report.failures.push(format!(
            "churn client {} ({}) exited on its own: {status}",
            l.id, l.door
        ));
        return;
    }
    let ready = l.ready.load(Ordering::Acquire);
    let _ = l.child.kill(); // SIGKILL
    match l.child.wait() {
        Ok(status) if status.signal() == Some(libc::SIGKILL) => {
            if ready {
                report.killed_mid_stream += 1;
            } else {
                report.killed_early += 1;
            }
        }
        Ok(status) => report.failures.push(format!(
            "churn client {} ({}) ended with {status}, not by SIGKILL",
            l.id, l.door
        )),
        Err(e) => report
            .failures
            .push(format!("churn client {}: wait: {e}", l.id)),
    }
}

/// Checks a churn client's deliveries: on its own topics (`prefix`), one publisher each, every
/// event in order with none missing from the first (a topic's sequence goes on from its slot's
/// earlier users); on the watched soak topic, increasing sequences.
struct Seen {
    prefix: String,
    /// Per topic: the next sequence expected, and the sequence of this client's event 0.
    next: HashMap<String, (u64, u64)>,
}

impl Seen {
    fn record(&mut self, topic: &[u8], sequence: u64, payload: &[u8]) -> Result<(), String> {
        let topic = String::from_utf8_lossy(topic).into_owned();
        let own = topic.starts_with(&self.prefix);
        let index = payload
            .get(8..16)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or("short payload")?;
        let (next, zero) = self
            .next
            .entry(topic.clone())
            .or_insert((sequence, sequence.wrapping_sub(index)));
        if own && (sequence != *next || sequence.wrapping_sub(*zero) != index) {
            return Err(format!(
                "{topic}: sequence {sequence} carrying event {index}; expected sequence {next} \
                 carrying event {}",
                next.wrapping_sub(*zero)
            ));
        }
        if sequence < *next {
            return Err(format!("{topic}: sequence {sequence} after {}", *next - 1));
        }
        *next = sequence + 1;
        Ok(())
    }
}

/// The churn client (`eventstream-bench soak-client`): runs until killed; returns only on a
/// failed check.
pub fn client(
    door: &str,
    native: &str,
    grpc: &str,
    prefix: &str,
    watch: &str,
) -> Result<(), String> {
    let seen = Seen {
        prefix: prefix.to_owned(),
        next: HashMap::new(),
    };
    match door {
        "native" => native_client(native, prefix, watch, seen),
        "grpc" => grpc_client(grpc, prefix, watch, seen),
        other => Err(format!("unknown door {other:?}")),
    }
}

fn say_ready() -> Result<(), String> {
    let mut out = std::io::stdout();
    writeln!(out, "ready")
        .and_then(|()| out.flush())
        .map_err(|e| e.to_string())
}

fn native_client(server: &str, prefix: &str, watch: &str, mut seen: Seen) -> Result<(), String> {
    let e = |e: ClientError| e.to_string();
    let mut client = Client::connect(server).map_err(e)?;
    client
        .set_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    client
        .subscribe(&format!("{prefix}/**"), Priority::Batch)
        .map_err(e)?;
    client.subscribe(watch, Priority::Batch).map_err(e)?;
    say_ready()?;
    client
        .set_timeout(Some(ROUND_PAUSE))
        .map_err(|e| e.to_string())?;
    let (topic, acked) = (format!("{prefix}/pipelined"), format!("{prefix}/acked"));
    let acked_bytes = bytes::Bytes::copy_from_slice(acked.as_bytes());
    let began = Instant::now();
    let (mut sent, mut sent_acked) = (0u64, 0u64);
    while began.elapsed() < ORPHAN_TIMEOUT {
        for i in sent..sent + ROUND_EVENTS {
            client
                .publish_nowait_simple(&topic, Priority::Medium, &ledger::payload(i))
                .map_err(e)?;
        }
        sent += ROUND_EVENTS;
        client.flush().map_err(e)?;
        let event = eventstream::engine::RawEvent {
            topic: acked_bytes.clone(),
            payload: ledger::payload(sent_acked).into(),
            priority: Priority::Medium as u8,
            ..Default::default()
        };
        client
            .set_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        client.publish(&event).map_err(e)?;
        client
            .set_timeout(Some(ROUND_PAUSE))
            .map_err(|e| e.to_string())?;
        sent_acked += 1;
        loop {
            match client.next_event() {
                Ok(d) => seen.record(&d.event.topic, d.sequence, &d.event.payload)?,
                Err(ClientError::Timeout(_)) => break,
                Err(other) => return Err(other.to_string()),
            }
        }
    }
    Err("never killed".into())
}

fn grpc_client(addr: &str, prefix: &str, watch: &str, seen: Seen) -> Result<(), String> {
    let rt = crate::grpc::runtime()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let seen = std::rc::Rc::new(std::cell::RefCell::new(seen));
        let watching = super::subscribers::open_subscribe(addr, watch).await?;
        let mut client = crate::grpc::connect(addr).await?;
        client = client.ready().await.map_err(|e| e.to_string())?;
        let pattern = format!("{prefix}/**");
        let request = crate::grpc::request(addr, "Stream", &[("x-topic-pattern", &pattern)]);
        let (response, mut send) = client
            .send_request(request, false)
            .map_err(|e| e.to_string())?;
        let response = response.await.map_err(|e| e.to_string())?;
        if response.status() != 200 {
            return Err(format!("Stream: HTTP status {}", response.status()));
        }
        let mut readers = Vec::new();
        for body in [watching, response.into_body()] {
            let seen = seen.clone();
            readers.push(tokio::task::spawn_local(async move {
                read_checked(body, &seen).await
            }));
        }
        say_ready()?;
        let (topic, unary) = (format!("{prefix}/stream"), format!("{prefix}/unary"));
        let head = crate::grpc::request(addr, "Publish", &[]).into_parts().0;
        let began = Instant::now();
        let (mut sent, mut sent_unary) = (0u64, 0u64);
        let mut pending = BytesMut::new();
        while began.elapsed() < ORPHAN_TIMEOUT {
            if let Some(r) = readers.iter().find(|r| r.is_finished()) {
                let _ = r;
                break;
            }
            for i in sent..sent + ROUND_EVENTS {
                crate::grpc::put_event(&mut pending, &topic, &ledger::payload(i));
            }
            sent += ROUND_EVENTS;
            crate::grpc::send_chunk(&mut send, &mut pending)?;
            let body = crate::grpc::framed(&proto::PublishRequest {
                event: Some(crate::grpc::event(&unary, ledger::payload(sent_unary))),
            });
            let answer = crate::grpc::unary(&mut client, &head, body).await?;
            let answer = proto::PublishResponse::decode(answer).map_err(|e| e.to_string())?;
            if !answer.success {
                return Err(format!("Publish refused: {}", answer.message));
            }
            sent_unary += 1;
            tokio::time::sleep(ROUND_PAUSE).await;
        }
        for r in readers {
            if r.is_finished() {
                r.await.map_err(|e| e.to_string())??;
            }
        }
        Err("never killed".into())
    })
}

async fn read_checked(
    mut body: h2::RecvStream,
    seen: &std::cell::RefCell<Seen>,
) -> Result<(), String> {
    let mut reader = MessageReader::default();
    let mut messages = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
        reader
            .push(chunk, MESSAGE_BYTES_MAX, &mut messages)
            .map_err(|e| e.to_string())?;
        for message in messages.drain(..) {
            let event = proto::Event::decode(message).map_err(|e| e.to_string())?;
            seen.borrow_mut()
                .record(event.topic.as_bytes(), event.sequence, &event.payload)?;
        }
    }
    Err("a call ended".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_churn_client_checks_its_own_topics_from_its_first_event_and_others_for_order() {
        let mut seen = Seen {
            prefix: "r/churn/3".into(),
            next: HashMap::new(),
        };
        // Its topic's sequence goes on from the slot's earlier users: event 0 is sequence 41.
        seen.record(b"r/churn/3/t", 41, &ledger::payload(0))
            .unwrap();
        seen.record(b"r/churn/3/t", 42, &ledger::payload(1))
            .unwrap();
        assert!(
            seen.record(b"r/churn/3/t", 44, &ledger::payload(3))
                .is_err(),
            "a gap"
        );
        // A watched topic only has to go forward (it may have started before the client).
        seen.record(b"r/main/a", 7, &ledger::payload(6)).unwrap();
        seen.record(b"r/main/a", 9, &ledger::payload(8)).unwrap();
        assert!(seen.record(b"r/main/a", 9, &ledger::payload(8)).is_err());
    }
}
