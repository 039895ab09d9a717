//! The server under soak: a separate process (started here, or named with `--server-pid`),
//! so that its resident memory and open descriptors can be read from /proc, and its gauges
//! from the metrics door.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a started server may take to print its addresses.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a scrape of the metrics door may take on a loaded machine.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the server listens, and which process it is.
pub struct Server {
    pub pid: u32,
    pub native: String,
    pub grpc: String,
    pub metrics: String,
    /// Started by the soak: stopped (SIGTERM) at the end.
    child: Option<Child>,
}

impl Server {
    /// Starts `bin serve` with `shards` unpinned shards on ephemeral loopback ports, and
    /// subscriber queues of `queue_events` events.
    pub fn spawn(bin: &str, shards: usize, queue_events: u64) -> Result<Server, String> {
        let config =
            std::env::temp_dir().join(format!("eventstream-soak-{}.yaml", std::process::id()));
        std::fs::write(
            &config,
            format!("limits:\n  subscriber_queue_events: {queue_events}\n"),
        )
        .map_err(|e| format!("{}: {e}", config.display()))?;
        let child = Command::new(bin)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args([
                "--bind",
                "127.0.0.1",
                "--tcp-port",
                "0",
                "--udp-port",
                "0",
                "--grpc-port",
                "0",
                "--metrics-port",
                "0",
                "--no-pin",
                "--shards",
            ])
            .arg(shards.to_string())
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        // The server read its configuration before it printed anything; waiting for that
        // (below) would only delay the removal.
        let mut child = child.map_err(|e| format!("cannot start {bin}: {e}"))?;
        let stderr = child.stderr.take().expect("piped");
        let (tx, rx) = std::sync::mpsc::channel();
        // The server's log goes on to this process's standard error once it is serving.
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stderr).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { return };
                let serving = line.contains(" serving: ");
                eprintln!("server: {line}");
                if serving {
                    let _ = tx.send(line);
                    break;
                }
            }
            for line in lines.map_while(Result::ok) {
                eprintln!("server: {line}");
            }
        });
        let line = rx.recv_timeout(START_TIMEOUT);
        let _ = std::fs::remove_file(&config);
        let line = match line {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{bin} did not start serving within {START_TIMEOUT:?}"
                ));
            }
        };
        let after = |key: &str| -> Result<String, String> {
            let rest = line
                .split_once(key)
                .ok_or_else(|| format!("no {key:?} in the server's line {line:?}"))?
                .1;
            Ok(rest
                .split([',', ' ', '/'])
                .find(|s| !s.is_empty())
                .unwrap_or_default()
                .to_owned())
        };
        Ok(Server {
            pid: child.id(),
            native: after("native tcp ")?,
            grpc: after("grpc ")?,
            metrics: after("metrics http://")?,
            child: Some(child),
        })
    }

    /// A server someone else started.
    pub fn attach(pid: u32, native: &str, grpc: &str, metrics: &str) -> Server {
        Server {
            pid,
            native: native.to_owned(),
            grpc: grpc.to_owned(),
            metrics: metrics.to_owned(),
            child: None,
        }
    }

    /// Stops a server the soak started (SIGTERM) and checks it exited 0.
    pub fn stop(mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: kill(2) with the pid of a child this process started and has not reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("the server exited with {status} after SIGTERM"));
        }
        Ok(())
    }

    /// One reading of the server's state.
    pub fn probe(&self) -> Result<Probe, String> {
        // The scrape's connection is closed (read to its end) before descriptors are counted.
        let text = scrape(&self.metrics)?;
        let sum = |name: &str, filter: &str| -> u64 {
            text.lines()
                .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(filter))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum()
        };
        Ok(Probe {
            rss_kib: rss_kib(self.pid)?,
            fds: open_fds(self.pid)?,
            subscriptions: sum("eventstream_subscriptions", ""),
            native_connections: sum("eventstream_connections", "door=\"native\""),
            grpc_connections: sum("eventstream_connections", "door=\"grpc\""),
            shed: sum("eventstream_events_shed_total", ""),
            cut: sum("eventstream_slow_consumers_cut_total", ""),
            refused: sum("eventstream_events_refused_total", ""),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The server's state at one moment: what /proc says of its process and what its metrics
/// door says of its clients.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Probe {
    pub rss_kib: u64,
    pub fds: u64,
    pub subscriptions: u64,
    pub native_connections: u64,
    pub grpc_connections: u64,
    pub shed: u64,
    pub cut: u64,
    pub refused: u64,
}

impl Probe {
    /// What must come back to its baseline once the churn stopped.
    pub fn clients(&self) -> (u64, u64, u64, u64) {
        (
            self.fds,
            self.subscriptions,
            self.native_connections,
            self.grpc_connections,
        )
    }
}

fn rss_kib(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in {path}"))
}

fn open_fds(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&path).map_err(|e| format!("{path}: {e}"))?;
    Ok(entries.count() as u64)
}

/// The metrics door's text.
fn scrape(addr: &str) -> Result<String, String> {
    let started = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("metrics {addr}: {e}"))?;
    s.set_read_timeout(Some(SCRAPE_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: soak\r\n\r\n")
        .map_err(|e| format!("metrics {addr}: {e}"))?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| format!("metrics {addr} (after {:?}): {e}", started.elapsed()))?;
    if !text.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "metrics {addr}: {}",
            text.lines().next().unwrap_or("no answer")
        ));
    }
    Ok(text)
}
