//! What the host itself allows, measured in the same run as the server: the loopback TCP
//! ceilings a pub/sub server's rows are fractions of.
//!
//! - `ceiling-sink`: one connection written in 256 KiB writes, read and discarded (the most a
//!   publisher can push into one socket);
//! - `ceiling-relay`: publisher socket → a thread copying bytes → subscriber socket (a fan-out
//!   of one with no parsing: the ceiling of `native-tcp`);
//! - `ceiling-pingpong-block` / `-spin`: one record back and forth, with blocking reads or with
//!   both ends busy-polling non-blocking sockets (the floor under any round trip);
//! - `ceiling-relay-latency`: `native-latency`'s schedule through a busy-polling relay (its
//!   floor, host stalls included).
//!
//! The "server" half of each runs on a thread pinned to the server CPUs, the client half on
//! the load CPUs, as the rows measured against eventstream.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// One ceiling measurement.
pub struct Ceiling {
    pub name: &'static str,
    pub events: u64,
    pub seconds: f64,
    /// Round trips (ping-pong only).
    pub latency: Option<Histogram<u64>>,
}

const CHUNK: usize = 256 * 1024;

fn listener() -> Result<(TcpListener, String), String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = l.local_addr().map_err(|e| e.to_string())?.to_string();
    Ok((l, addr))
}

fn connect(addr: &str) -> Result<TcpStream, String> {
    let s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(s)
}

/// Runs `server` on a thread pinned to `server_cpus` (the caller's own mask is restored for
/// the client half, which runs on the calling thread).
fn on_server_cpus<T: Send + 'static>(
    server_cpus: &[usize],
    server: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> thread::JoinHandle<Result<T, String>> {
    let cpus = server_cpus.to_vec();
    thread::spawn(move || {
        crate::set_affinity(&cpus)?;
        server()
    })
}

fn join<T>(h: thread::JoinHandle<Result<T, String>>) -> Result<T, String> {
    h.join().map_err(|_| "ceiling thread panicked".to_owned())?
}

/// A buffer of `count` records of `size` bytes, written in CHUNK-sized writes.
fn write_records(stream: &mut TcpStream, count: u64, size: usize) -> Result<(), String> {
    let chunk = vec![0x5au8; CHUNK];
    let mut left = count * size as u64;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        stream.write_all(&chunk[..n]).map_err(|e| e.to_string())?;
        left -= n as u64;
    }
    Ok(())
}

/// Reads `bytes` bytes; returns when the first and the last arrived.
fn read_exactly(stream: &mut TcpStream, bytes: u64) -> Result<(Instant, Instant), String> {
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    let mut first = None;
    while got < bytes {
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("connection closed after {got} of {bytes} bytes"));
        }
        first.get_or_insert_with(Instant::now);
        got += n as u64;
    }
    Ok((first.expect("read something"), Instant::now()))
}

pub fn sink(server_cpus: &[usize], count: u64, size: usize) -> Result<Ceiling, String> {
    let (l, addr) = listener()?;
    let bytes = count * size as u64;
    let server = on_server_cpus(server_cpus, move || {
        let (mut s, _) = l.accept().map_err(|e| e.to_string())?;
        let (first, last) = read_exactly(&mut s, bytes)?;
        Ok((last - first).as_secs_f64())
    });
    let mut client = connect(&addr)?;
    write_records(&mut client, count, size)?;
    let seconds = join(server)?;
    Ok(Ceiling {
        name: "ceiling-sink",
        events: count,
        seconds,
        latency: None,
    })
}

pub fn relay(server_cpus: &[usize], count: u64, size: usize) -> Result<Ceiling, String> {
    let (l, addr) = listener()?;
    let bytes = count * size as u64;
    let server = on_server_cpus(server_cpus, move || {
        let (mut from, _) = l.accept().map_err(|e| e.to_string())?;
        let (mut to, _) = l.accept().map_err(|e| e.to_string())?;
        to.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = from.read(&mut buf).map_err(|e| e.to_string())?;
            if n == 0 {
                return Ok(());
            }
            to.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        }
    });
    let mut publisher = connect(&addr)?;
    let mut subscriber = connect(&addr)?;
    let receiving = thread::spawn(move || read_exactly(&mut subscriber, bytes));
    let start = Instant::now();
    write_records(&mut publisher, count, size)?;
    let (_, last) = receiving
        .join()
        .map_err(|_| "subscriber thread panicked".to_owned())??;
    drop(publisher);
    join(server)?;
    Ok(Ceiling {
        name: "ceiling-relay",
        events: count,
        seconds: (last - start).as_secs_f64(),
        latency: None,
    })
}

/// Reads exactly `buf.len()` bytes, spinning on WouldBlock when `spin`.
fn read_full(s: &mut TcpStream, buf: &mut [u8], spin: bool) -> Result<(), String> {
    let mut at = 0;
    while at < buf.len() {
        match s.read(&mut buf[at..]) {
            Ok(0) => return Err("peer closed".into()),
            Ok(n) => at += n,
            Err(e) if spin && e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

fn write_full(s: &mut TcpStream, buf: &[u8], spin: bool) -> Result<(), String> {
    let mut at = 0;
    while at < buf.len() {
        match s.write(&buf[at..]) {
            Ok(n) => at += n,
            Err(e) if spin && e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

pub fn pingpong(
    server_cpus: &[usize],
    round_trips: u64,
    size: usize,
    spin: bool,
) -> Result<Ceiling, String> {
    let (l, addr) = listener()?;
    let warmup = (round_trips / 10).max(1);
    let total = round_trips + warmup;
    let server = on_server_cpus(server_cpus, move || {
        let (mut s, _) = l.accept().map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        s.set_nonblocking(spin).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; size];
        for _ in 0..total {
            read_full(&mut s, &mut buf, spin)?;
            write_full(&mut s, &buf, spin)?;
        }
        Ok(())
    });
    let mut s = connect(&addr)?;
    s.set_nonblocking(spin).map_err(|e| e.to_string())?;
    s.set_read_timeout((!spin).then(|| Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
    let mut buf = vec![7u8; size];
    let mut measured = Duration::ZERO;
    for i in 0..total {
        let start = Instant::now();
        write_full(&mut s, &buf, spin)?;
        read_full(&mut s, &mut buf, spin)?;
        let took = start.elapsed();
        if i >= warmup {
            measured += took;
            hist.record((took.as_nanos() as u64).max(1))
                .map_err(|e| e.to_string())?;
        }
    }
    join(server)?;
    Ok(Ceiling {
        name: if spin {
            "ceiling-pingpong-spin"
        } else {
            "ceiling-pingpong-block"
        },
        events: round_trips,
        seconds: measured.as_secs_f64(),
        latency: Some(hist),
    })
}

/// The floor under `native-latency`, measured the same way: records published at `rate` per
/// second (each stamped with its due time, latency counted from it), relayed by a thread
/// that busy-polls the publisher's socket and writes each read to the subscriber's socket,
/// which the client busy-polls between sends. Unlike a ping-pong, which waits for each answer
/// before the next and so times one round trip per stall of the host, an open-loop run counts
/// every record a stall delays: what the host's own interruptions cost a schedule like
/// `native-latency`'s.
///
/// With `block`, the relay thread sleeps in `read` until a record arrives instead of
/// busy-polling (`ceiling-relay-latency-block`): the floor for a server that sleeps between
/// events, as eventstream does outside low-latency mode, paying one wake-up per record.
pub fn relay_latency(
    server_cpus: &[usize],
    rate: u64,
    count: u64,
    size: usize,
    block: bool,
) -> Result<Ceiling, String> {
    assert!(size >= 8, "records carry an 8-byte stamp");
    let (l, addr) = listener()?;
    let server = on_server_cpus(server_cpus, move || {
        let (mut from, _) = l.accept().map_err(|e| e.to_string())?;
        let (mut to, _) = l.accept().map_err(|e| e.to_string())?;
        to.set_nodelay(true).map_err(|e| e.to_string())?;
        from.set_nonblocking(!block).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            match from.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => to.write_all(&buf[..n]).map_err(|e| e.to_string())?,
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
                Err(e) => return Err(e.to_string()),
            }
        }
    });
    let mut publisher = connect(&addr)?;
    let mut subscriber = connect(&addr)?;
    subscriber
        .set_nonblocking(true)
        .map_err(|e| e.to_string())?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
    let clock = Instant::now();
    let (mut inbox, mut filled, mut received) = (vec![0u8; CHUNK], 0, 0u64);
    let mut record = vec![0u8; size];
    let send = |due: u64, _: u64| -> Result<(), String> {
        record[..8].copy_from_slice(&due.to_le_bytes());
        publisher.write_all(&record).map_err(|e| e.to_string())
    };
    // Takes whatever has arrived; never waits.
    let poll = || -> Result<u64, String> {
        loop {
            match subscriber.read(&mut inbox[filled..]) {
                Ok(0) => return Err("relay closed".into()),
                Ok(n) => filled += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(received),
                Err(e) => return Err(e.to_string()),
            }
            let now = clock.elapsed().as_nanos() as u64;
            let whole = filled / size * size;
            for record in inbox[..whole].chunks_exact(size) {
                let due = u64::from_le_bytes(record[..8].try_into().expect("8 bytes"));
                hist.record(now.saturating_sub(due).max(1))
                    .map_err(|e| e.to_string())?;
                received += 1;
            }
            inbox.copy_within(whole..filled, 0);
            filled -= whole;
        }
    };
    let first = crate::delivery::open_loop(clock, rate, count, send, poll)?;
    let seconds = (clock.elapsed().as_nanos() as u64 - first) as f64 / 1e9;
    drop(publisher);
    join(server)?;
    Ok(Ceiling {
        name: if block {
            "ceiling-relay-latency-block"
        } else {
            "ceiling-relay-latency"
        },
        events: count,
        seconds,
        latency: Some(hist),
    })
}
