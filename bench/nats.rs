//! The `nats` row: nats-server's own publish → subscribe path, measured as the `bridge` row is
//! (the same payloads, window, rate and clock, a publisher and a subscriber on threads of their
//! own) with the NATS client the bridge uses, so the two rows compare in one run. Also the
//! nats-server process both rows start.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::StreamExt;
use hdrhistogram::Histogram;
use tokio::sync::Notify;

use crate::delivery::{histogram, stamp};
use crate::native::wait_until;
use crate::{Args, Row};

/// How long nats-server may take to listen, and the row's subscriber to be ready.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the subscriber waits for the next message before the row fails.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a publisher a window ahead waits for news of progress before it looks again.
const WINDOW_WAIT: Duration = Duration::from_millis(1);
/// Events between the subscriber's progress reports (as the native rows' subscriber).
const PROGRESS_EVERY_EVENTS: u64 = 64;
/// The subject the row publishes on.
const SUBJECT: &str = "bench.nats";

/// A nats-server on a free loopback port, killed when dropped.
pub struct NatsServer {
    child: Child,
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
}

impl NatsServer {
    /// Starts Debian's nats-server (from the PATH, or /usr/sbin) and waits until it listens.
    pub fn start() -> Result<NatsServer, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let binary = ["nats-server", "/usr/sbin/nats-server"]
            .into_iter()
            .find(|b| {
                Command::new(b)
                    .arg("--version")
                    .stdout(Stdio::null())
                    .status()
                    .is_ok()
            })
            .ok_or("this row needs nats-server (apt-get install nats-server)")?;
        let child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("nats-server: {e}"))?;
        let server = NatsServer {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("nats-server did not listen".into());
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The row: `--count` messages of `--size` bytes from a publisher to a subscriber through
/// nats-server, a window ahead at most, or open loop at `--rate`.
pub fn row(args: &Args) -> Result<Row, String> {
    let server = NatsServer::start()?;
    let clock = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Notify::new());
    let (ready_tx, ready_rx) = mpsc::channel();
    let subscriber = {
        let (url, received, progress) = (server.url.clone(), received.clone(), progress.clone());
        let count = args.count;
        thread::spawn(move || {
            on_runtime(subscribe(url, count, clock, received, progress, ready_tx))
        })
    };
    if ready_rx.recv_timeout(START_TIMEOUT).is_err() {
        return Err(match subscriber.join() {
            Ok(Err(e)) => e,
            _ => "the subscriber was not ready".into(),
        });
    }
    let first = on_runtime(publish(args, &server.url, clock, &received, &progress))?;
    let (latency, last) = subscriber
        .join()
        .map_err(|_| "subscriber thread panicked".to_owned())??;
    Ok(Row {
        name: "nats",
        events: args.count,
        seconds: last.saturating_sub(first) as f64 / 1e9,
        latency: Some(latency),
        baseline: None,
    })
}

/// Runs `task` to completion on a current-thread runtime of this thread (as the bridge runs
/// its client).
fn on_runtime<T>(task: impl std::future::Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?
        .block_on(task)
}

/// Publishes the row's messages; returns when the first was sent (ns on `clock`).
async fn publish(
    args: &Args,
    url: &str,
    clock: Instant,
    received: &AtomicU64,
    progress: &Notify,
) -> Result<u64, String> {
    let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
    let now = || clock.elapsed().as_nanos() as u64;
    let mut payload = vec![0u8; args.size];
    let first = now();
    for i in 0..args.count {
        let sent = match args.rate {
            // Open loop: message i is due at its slot, and stamped with it.
            Some(rate) => {
                let due = first + i * 1_000_000_000 / rate;
                // As the native rows wait; the connection task wrote the last message when
                // this thread yielded to it after publishing.
                wait_until(&clock, due);
                due
            }
            None => {
                while i.saturating_sub(received.load(Ordering::Acquire)) > args.window {
                    let _ = tokio::time::timeout(WINDOW_WAIT, progress.notified()).await;
                }
                now()
            }
        };
        stamp(&mut payload, sent, i);
        client
            .publish(SUBJECT, Bytes::copy_from_slice(&payload))
            .await
            .map_err(|e| e.to_string())?;
        if args.rate.is_some() {
            // Let the connection task write it now, as the other rows' open loops flush.
            tokio::task::yield_now().await;
        }
    }
    client.flush().await.map_err(|e| e.to_string())?;
    Ok(first)
}

/// Receives the row's messages in order, timing each from its stamp; returns the latencies
/// and when the last arrived (ns on `clock`).
async fn subscribe(
    url: String,
    count: u64,
    clock: Instant,
    received: Arc<AtomicU64>,
    progress: Arc<Notify>,
    ready: mpsc::Sender<()>,
) -> Result<(Histogram<u64>, u64), String> {
    let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
    let mut subscription = client.subscribe(SUBJECT).await.map_err(|e| e.to_string())?;
    // The subscription is at the server once a round trip after it returns.
    client.flush().await.map_err(|e| e.to_string())?;
    let _ = ready.send(());
    let mut latency = histogram();
    let mut last = 0;
    for index in 0..count {
        let message = tokio::time::timeout(ARRIVAL_TIMEOUT, subscription.next())
            .await
            .map_err(|_| format!("after {index} messages, none came for {ARRIVAL_TIMEOUT:?}"))?
            .ok_or("the subscription ended")?;
        last = clock.elapsed().as_nanos() as u64;
        let payload = &message.payload;
        let sent = u64::from_le_bytes(payload[..8].try_into().map_err(|_| "short payload")?);
        let got = u64::from_le_bytes(payload[8..16].try_into().map_err(|_| "short payload")?);
        if got != index {
            return Err(format!(
                "expected message {index}, got {got}: lost or reordered"
            ));
        }
        latency
            .record(last.saturating_sub(sent).max(1))
            .map_err(|e| e.to_string())?;
        if (index + 1) % PROGRESS_EVERY_EVENTS == 0 {
            received.store(index + 1, Ordering::Release);
            progress.notify_one();
        }
    }
    Ok((latency, last))
}
