//! `eventstream doctor`: checks the host the server is about to run on and prints each finding
//! with the command that fixes it (tuning/README.md explains the why of each).
//!
//! Gathering ([`HostFacts::read`]) only reads /proc and /sys and asks the kernel for an io_uring;
//! judging ([`assess`]) is a pure function of those facts, tested without a host.

use std::fs;

/// What the checks look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// Whether an io_uring could be created, and why not.
    pub io_uring: Result<(), String>,
    /// Soft RLIMIT_MEMLOCK in bytes (None: unlimited) and whether CAP_IPC_LOCK is held.
    pub memlock: Option<u64>,
    pub ipc_lock: bool,
    /// CPUs this process may use.
    pub cpus: Vec<usize>,
    /// scaling_governor per CPU (absent when the kernel exposes no cpufreq).
    pub governors: Vec<(usize, String)>,
    /// /sys/devices/system/cpu/isolated.
    pub isolated: String,
    /// SMT: whether sibling threads are active.
    pub smt_active: Option<bool>,
    /// net.core.rmem_max, wmem_max, busy_read, busy_poll.
    pub rmem_max: Option<u64>,
    pub wmem_max: Option<u64>,
    pub busy_read: Option<u64>,
    pub busy_poll: Option<u64>,
    /// The selected mode of transparent huge pages ("always", "madvise", "never").
    pub thp: Option<String>,
}

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    /// Costs latency or throughput.
    Advice,
    /// The server cannot start.
    Blocker,
}

/// One check's verdict, and the command that changes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub what: String,
    pub fix: Option<String>,
}

fn finding(level: Level, what: String, fix: Option<&str>) -> Finding {
    Finding {
        level,
        what,
        fix: fix.map(str::to_owned),
    }
}

/// Socket buffer maxima below this cap TCP windows on fast paths (4 MiB).
const MIN_SOCKET_BUFFER: u64 = 4 << 20;

/// Judges `facts` for a server of `shards` shards.
pub fn assess(facts: &HostFacts, shards: usize) -> Vec<Finding> {
    use Level::{Advice, Blocker, Ok};
    let mut out = Vec::new();
    out.push(match &facts.io_uring {
        Result::Ok(()) => finding(Ok, "io_uring: available".into(), None),
        Err(why) => finding(
            Blocker,
            format!("io_uring: unavailable ({why})"),
            Some("sysctl -w kernel.io_uring_disabled=0  # and a kernel >= 5.8; in containers, allow io_uring_* syscalls in the seccomp profile"),
        ),
    });
    let need = crate::server::memlock_needed(shards);
    out.push(match facts.memlock {
        None => finding(Ok, "RLIMIT_MEMLOCK: unlimited".into(), None),
        Some(_) if facts.ipc_lock => finding(
            Ok,
            "RLIMIT_MEMLOCK: not binding (CAP_IPC_LOCK)".into(),
            None,
        ),
        Some(limit) if limit >= need => finding(
            Ok,
            format!(
                "RLIMIT_MEMLOCK: {} KiB, {shards} shards need {} KiB",
                limit / 1024,
                need / 1024
            ),
            None,
        ),
        Some(limit) => finding(
            Blocker,
            format!(
                "RLIMIT_MEMLOCK: {} KiB, {shards} shards need {} KiB",
                limit / 1024,
                need / 1024
            ),
            Some("ulimit -l unlimited  # systemd: LimitMEMLOCK=infinity; see tuning/README.md"),
        ),
    });
    let slow: Vec<String> = facts
        .governors
        .iter()
        .filter(|(_, g)| g != "performance")
        .map(|(cpu, g)| format!("cpu{cpu}={g}"))
        .collect();
    out.push(if facts.governors.is_empty() {
        finding(
            Ok,
            "CPU frequency governor: not exposed (a VM or a fixed clock)".into(),
            None,
        )
    } else if slow.is_empty() {
        finding(Ok, "CPU frequency governor: performance everywhere".into(), None)
    } else {
        finding(
            Advice,
            format!("CPU frequency governor: {}", slow.join(" ")),
            Some("tuning/apply.sh  # or: echo performance | tee /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor"),
        )
    });
    let isolated = facts.isolated.trim();
    out.push(if isolated.is_empty() {
        finding(
            Advice,
            format!(
                "isolated CPUs: none (shards on CPUs {:?} share them with everything else)",
                facts.cpus
            ),
            Some("add isolcpus=LIST nohz_full=LIST to the kernel command line, then run the server under taskset -c LIST"),
        )
    } else {
        finding(Ok, format!("isolated CPUs: {isolated}"), None)
    });
    out.push(match facts.smt_active {
        Some(true) => finding(
            Advice,
            "SMT: active (a shard's sibling thread competes for its core)".into(),
            Some("echo off > /sys/devices/system/cpu/smt/control  # or pin shards to one thread per core"),
        ),
        Some(false) => finding(Ok, "SMT: off".into(), None),
        None => finding(Ok, "SMT: not reported".into(), None),
    });
    for (name, value) in [
        ("net.core.rmem_max", facts.rmem_max),
        ("net.core.wmem_max", facts.wmem_max),
    ] {
        out.push(match value {
            Some(v) if v < MIN_SOCKET_BUFFER => finding(
                Advice,
                format!("{name}: {v} bytes (below {MIN_SOCKET_BUFFER})"),
                Some(&format!("sysctl -w {name}={}", 16 << 20)),
            ),
            Some(v) => finding(Ok, format!("{name}: {v} bytes"), None),
            None => finding(Ok, format!("{name}: not readable"), None),
        });
    }
    let busy = facts
        .busy_read
        .unwrap_or(0)
        .max(facts.busy_poll.unwrap_or(0));
    out.push(if busy == 0 {
        finding(
            Advice,
            "socket busy polling: off (net.core.busy_read and busy_poll are 0)".into(),
            Some(
                "sysctl -w net.core.busy_read=50 net.core.busy_poll=50  # lower latency, more CPU",
            ),
        )
    } else {
        finding(Ok, format!("socket busy polling: {busy} µs"), None)
    });
    out.push(match facts.thp.as_deref() {
        Some("always") => finding(
            Advice,
            "transparent huge pages: always (compaction stalls show up as latency spikes)".into(),
            Some("echo madvise > /sys/kernel/mm/transparent_hugepage/enabled"),
        ),
        Some(mode) => finding(Ok, format!("transparent huge pages: {mode}"), None),
        None => finding(Ok, "transparent huge pages: not reported".into(), None),
    });
    out
}

fn read_trimmed(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_owned())
}

fn read_number(path: &str) -> Option<u64> {
    read_trimmed(path)?.parse().ok()
}

impl HostFacts {
    /// Reads this host's facts.
    pub fn read() -> HostFacts {
        let cpus: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.id)
            .collect();
        let governors = cpus
            .iter()
            .filter_map(|cpu| {
                let path = format!("/sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor");
                read_trimmed(&path).map(|g| (*cpu, g))
            })
            .collect();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes only the struct we pass.
        let memlock = if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0
            || limit.rlim_cur == libc::RLIM_INFINITY
        {
            None
        } else {
            Some(limit.rlim_cur)
        };
        // The selected THP mode is the bracketed word: "always [madvise] never".
        let thp = read_trimmed("/sys/kernel/mm/transparent_hugepage/enabled").and_then(|s| {
            let start = s.find('[')? + 1;
            let end = s[start..].find(']')? + start;
            Some(s[start..end].to_owned())
        });
        HostFacts {
            io_uring: probe_io_uring(),
            memlock,
            ipc_lock: crate::server::has_ipc_lock(),
            cpus,
            governors,
            isolated: read_trimmed("/sys/devices/system/cpu/isolated").unwrap_or_default(),
            smt_active: read_number("/sys/devices/system/cpu/smt/active").map(|v| v == 1),
            rmem_max: read_number("/proc/sys/net/core/rmem_max"),
            wmem_max: read_number("/proc/sys/net/core/wmem_max"),
            busy_read: read_number("/proc/sys/net/core/busy_read"),
            busy_poll: read_number("/proc/sys/net/core/busy_poll"),
            thp,
        }
    }
}

/// Asks the kernel for a small io_uring (and closes it): what glommio does at start.
fn probe_io_uring() -> Result<(), String> {
    let ring = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(64 * 1024)
        .make();
    match ring {
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuned() -> HostFacts {
        HostFacts {
            io_uring: Ok(()),
            memlock: None,
            ipc_lock: false,
            cpus: vec![0, 1],
            governors: vec![(0, "performance".into()), (1, "performance".into())],
            isolated: "1".into(),
            smt_active: Some(false),
            rmem_max: Some(16 << 20),
            wmem_max: Some(16 << 20),
            busy_read: Some(50),
            busy_poll: Some(50),
            thp: Some("madvise".into()),
        }
    }

    #[test]
    fn a_tuned_host_has_only_ok_findings() {
        let findings = assess(&tuned(), 2);
        assert!(
            findings.iter().all(|f| f.level == Level::Ok),
            "{findings:#?}"
        );
    }

    #[test]
    fn each_problem_is_named_with_its_fix() {
        let facts = HostFacts {
            io_uring: Err("Operation not permitted".into()),
            memlock: Some(64 * 1024),
            governors: vec![(0, "powersave".into()), (1, "performance".into())],
            isolated: String::new(),
            smt_active: Some(true),
            rmem_max: Some(212_992),
            busy_read: Some(0),
            busy_poll: Some(0),
            thp: Some("always".into()),
            ..tuned()
        };
        let findings = assess(&facts, 4);
        let blockers: Vec<_> = findings
            .iter()
            .filter(|f| f.level == Level::Blocker)
            .collect();
        assert_eq!(blockers.len(), 2, "{findings:#?}");
        assert!(blockers[1].what.contains("4 shards need 768 KiB"));
        for f in findings.iter().filter(|f| f.level != Level::Ok) {
            assert!(f.fix.is_some(), "{f:?} has no fix");
        }
        let text: Vec<&str> = findings.iter().map(|f| f.what.as_str()).collect();
        assert!(
            text.iter().any(|t| t.contains("cpu0=powersave")),
            "{text:?}"
        );
        assert!(
            text.iter().any(|t| t.contains("rmem_max: 212992")),
            "{text:?}"
        );
        assert!(text
            .iter()
            .any(|t| t.starts_with("transparent huge pages: always")));
    }

    #[test]
    fn cap_ipc_lock_makes_memlock_irrelevant() {
        let facts = HostFacts {
            memlock: Some(0),
            ipc_lock: true,
            ..tuned()
        };
        assert!(assess(&facts, 64).iter().all(|f| f.level == Level::Ok));
    }
}
