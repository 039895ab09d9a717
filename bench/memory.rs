//! The memory row: what the server holds per idle native connection and per subscription,
//! read from this process's resident memory while a server runs in it (`--spawn`).

use std::thread;
use std::time::{Duration, Instant};

use super::native::unique_topic;
use super::Args;
use eventstream::engine::Priority;
use eventstream::native::client::Client;

/// Items of each kind the memory row opens.
const MEMORY_ITEMS: u64 = 10_000;

/// Bytes of server memory per idle native connection and per subscription: the growth of this
/// process's resident memory (the server runs in it, `--spawn`) while 10,000 of each are
/// opened. Idle connections are bare sockets on the client side (no user-space buffers), and
/// the subscriptions share one client connection, so what grows is the server's.
pub fn run(args: &Args) -> Result<(), String> {
    let metrics = args
        .metrics
        .as_deref()
        .ok_or("the memory row measures a server in this process: use --spawn")?;
    // The server holds one descriptor per native connection, and by default takes at most
    // half of what this process's descriptor limit leaves after a reserve for its native
    // door (README, "Connection limits"): as many connections as that allows, up to 10,000.
    let wanted = 2 * MEMORY_ITEMS + 1_000;
    let limit = raise_fd_limit(wanted)?;
    let connections = MEMORY_ITEMS.min(limit.saturating_sub(1_000) / 2);
    if connections < MEMORY_ITEMS {
        eprintln!(
            "note: {connections} connections, not {MEMORY_ITEMS}: the descriptor limit is \
             {limit} (ulimit -n {wanted} to measure all)"
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
pub fn hold_connections(server: &str, n: u64) -> Result<(), String> {
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
