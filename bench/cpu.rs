//! Which side bounds a row: the CPU time the server and the load used while it ran, as a share
//! of one CPU. A row whose load side is near 100% measures the load, not the server.
//!
//! The server's time is the sum of its threads' (`/proc/PID/task/*/schedstat`, in ns): the
//! shard threads of a server this process spawned (named `shard-*`), or every thread of the
//! process given by `--server-pid`. The load's is this process's (`getrusage`, which keeps the
//! time of threads that already ended), less the spawned server's.

use std::time::Instant;

/// Where the server's CPU time is read from.
#[derive(Clone, Copy, Debug)]
pub enum ServerThreads {
    /// The shards of a server running inside this process.
    Spawned,
    /// Every thread of this process.
    Process(u32),
    /// Unknown (a server started apart without `--server-pid`).
    Unknown,
}

/// CPU times at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    at: Instant,
    server_ns: Option<u64>,
    process_ns: u64,
}

/// Share of one CPU each side used between two samples, in percent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    pub server_pct: Option<f64>,
    pub load_pct: f64,
}

impl ServerThreads {
    /// The CPU times now.
    pub fn sample(self) -> Sample {
        let server_ns = match self {
            ServerThreads::Spawned => Some(threads_ns("self", |name| name.starts_with("shard-"))),
            ServerThreads::Process(pid) => Some(threads_ns(&pid.to_string(), |_| true)),
            ServerThreads::Unknown => None,
        };
        Sample {
            at: Instant::now(),
            server_ns,
            process_ns: process_ns(),
        }
    }

    /// What each side used from `start` to `end`.
    pub fn usage(self, start: &Sample, end: &Sample) -> Usage {
        let wall_ns = end.at.duration_since(start.at).as_nanos().max(1) as f64;
        let server = match (start.server_ns, end.server_ns) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        let mut load = end.process_ns.saturating_sub(start.process_ns);
        if matches!(self, ServerThreads::Spawned) {
            load = load.saturating_sub(server.unwrap_or(0));
        }
        Usage {
            server_pct: server.map(|ns| 100.0 * ns as f64 / wall_ns),
            load_pct: 100.0 * load as f64 / wall_ns,
        }
    }
}

/// Sum of the on-CPU time of the threads of process `pid` ("self" for this one) whose name
/// `keep` accepts; threads that end while being read are skipped.
fn threads_ns(pid: &str, keep: impl Fn(&str) -> bool) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let mut total = 0;
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !keep(name.trim_end()) {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
        total += stat
            .split_whitespace()
            .next()
            .and_then(|ns| ns.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// This process's user and system time, every thread it ever ran included.
fn process_ns() -> u64 {
    // SAFETY: getrusage writes into the rusage struct it is given, nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (us(usage.ru_utime) + us(usage.ru_stime)) * 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_done_by_this_process_counts_as_load_and_its_threads_are_read() {
        let threads = ServerThreads::Unknown;
        let start = threads.sample();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(std::hint::black_box(i));
        }
        let usage = threads.usage(&start, &threads.sample());
        assert!(x > 0);
        assert_eq!(usage.server_pct, None);
        assert!(usage.load_pct > 0.0, "{usage:?}");
        assert!(
            threads_ns("self", |_| true) > 0,
            "this process's threads ran"
        );
        assert_eq!(threads_ns("self", |name| name == "no such thread"), 0);
    }
}
