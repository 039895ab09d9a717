//! `eventstream doctor`: checks the host the server is about to run on and prints each finding
//! with the command that fixes it (tuning/README.md explains the why of each).
//!
//! Gathering ([`HostFacts::read`]) only reads /proc and /sys and asks the kernel for an io_uring
//! ([`crate::io_uring_probe`]);
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
    /// The container this process runs in, if it can tell ([`Container::detect`]).
    pub container: Option<Container>,
    /// Whether a seccomp filter applies to this process (/proc/self/status `Seccomp: 2`).
    pub seccomp_filter: bool,
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

/// Where a containerised server runs: the fixes for io_uring and locked memory are set there,
/// not on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// A Kubernetes pod (the kubelet sets `KUBERNETES_SERVICE_HOST` in every container).
    Kubernetes,
    /// Docker (`/.dockerenv`).
    Docker,
    /// Podman or another OCI runtime that writes `/run/.containerenv`.
    Podman,
}

impl Container {
    /// Recognises the container from what its runtime leaves in every container.
    pub fn detect(kubernetes_env: bool, exists: impl Fn(&str) -> bool) -> Option<Container> {
        if kubernetes_env {
            Some(Container::Kubernetes)
        } else if exists("/.dockerenv") {
            Some(Container::Docker)
        } else if exists("/run/.containerenv") {
            Some(Container::Podman)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            Container::Kubernetes => "a Kubernetes pod",
            Container::Docker => "a Docker container",
            Container::Podman => "a Podman container",
        }
    }

    /// How to let io_uring through the container's seccomp filter.
    fn io_uring_fix(self) -> &'static str {
        match self {
            Container::Kubernetes => "securityContext.seccompProfile: {type: Localhost, localhostProfile: eventstream.json}, the profile tuning/kubernetes/seccomp/eventstream.json copied to each node's /var/lib/kubelet/seccomp/ (see tuning/kubernetes/README.md)",
            Container::Docker => "docker run --security-opt seccomp=tuning/kubernetes/seccomp/eventstream.json ...",
            Container::Podman => "podman run --security-opt seccomp=tuning/kubernetes/seccomp/eventstream.json ...",
        }
    }

    /// How to raise locked memory for the container.
    fn memlock_fix(self) -> String {
        match self {
            Container::Kubernetes => format!(
                "securityContext.capabilities.add: [IPC_LOCK] with the capability set on the binary (setcap cap_ipc_lock+ep, as tuning/kubernetes/Dockerfile does), and at least {} KiB from the container runtime: LimitMEMLOCK= in its systemd unit (see tuning/kubernetes/README.md)",
                crate::server::GLOMMIO_MEMLOCK_BYTES_MIN / BYTES_PER_KIB
            ),
            Container::Docker => "docker run --ulimit memlock=-1 ...".to_owned(),
            Container::Podman => "podman run --ulimit memlock=-1 ...".to_owned(),
        }
    }
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
const SOCKET_BUFFER_BYTES_MIN: u64 = 4 << 20;
/// The socket buffer maxima the fix suggests (16 MiB), as tuning/apply.sh sets them: room for
/// TCP to grow its windows on fast links, well past the minimum.
const SUGGESTED_SOCKET_BUFFER_BYTES: u64 = 16 << 20;
/// The busy-polling time the fix suggests, as tuning/README.md does: the value the kernel's
/// ip-sysctl documentation recommends for net.core.busy_read and busy_poll.
const SUGGESTED_BUSY_POLL_US: u64 = 50;
/// Bytes in a KiB, for reporting memory limits in the unit ulimit -l uses.
const BYTES_PER_KIB: u64 = 1024;

/// Judges `facts` for a server of `shards` shards.
pub fn assess(facts: &HostFacts, shards: usize) -> Vec<Finding> {
    use Level::{Advice, Blocker, Ok};
    let mut out = Vec::new();
    out.push(match (&facts.io_uring, facts.container) {
        (Result::Ok(()), _) => finding(Ok, "io_uring: available".into(), None),
        // Container runtimes' default seccomp profiles refuse io_uring_setup with EPERM.
        (Err(why), Some(container)) if facts.seccomp_filter => finding(
            Blocker,
            format!(
                "io_uring: blocked in {} by its seccomp filter ({why})",
                container.name()
            ),
            Some(container.io_uring_fix()),
        ),
        (Err(why), _) => finding(
            Blocker,
            format!("io_uring: unavailable ({why})"),
            Some("sysctl -w kernel.io_uring_disabled=0  # and a kernel >= 5.8; in containers, allow io_uring_* syscalls in the seccomp profile (tuning/kubernetes/seccomp/eventstream.json)"),
        ),
    });
    let need = crate::server::memlock_needed(shards, facts.ipc_lock);
    let why_needed = if facts.ipc_lock {
        "glommio's floor (CAP_IPC_LOCK exempts the rings' registrations)".to_owned()
    } else {
        format!("{shards} shards need")
    };
    let measured = |limit: u64| {
        format!(
            "RLIMIT_MEMLOCK: {} KiB, {why_needed} {} KiB",
            limit / BYTES_PER_KIB,
            need / BYTES_PER_KIB
        )
    };
    out.push(match facts.memlock {
        None => finding(Ok, "RLIMIT_MEMLOCK: unlimited".into(), None),
        Some(limit) if limit >= need => finding(Ok, measured(limit), None),
        Some(limit) => finding(
            Blocker,
            match facts.container {
                Some(container) => format!("{} in {}", measured(limit), container.name()),
                None => measured(limit),
            },
            Some(&match facts.container {
                Some(container) => container.memlock_fix(),
                None => {
                    "ulimit -l unlimited  # systemd: LimitMEMLOCK=infinity; see tuning/README.md"
                        .to_owned()
                }
            }),
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
            Some(v) if v < SOCKET_BUFFER_BYTES_MIN => finding(
                Advice,
                format!("{name}: {v} bytes (below {SOCKET_BUFFER_BYTES_MIN})"),
                Some(&format!("sysctl -w {name}={SUGGESTED_SOCKET_BUFFER_BYTES}")),
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
            Some(&format!(
                "sysctl -w net.core.busy_read={SUGGESTED_BUSY_POLL_US} \
                 net.core.busy_poll={SUGGESTED_BUSY_POLL_US}  # lower latency, more CPU"
            )),
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
        let kubernetes_env = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        HostFacts {
            io_uring: crate::io_uring_probe::probe(),
            memlock,
            ipc_lock: crate::server::has_ipc_lock(),
            container: Container::detect(kubernetes_env, |p| std::path::Path::new(p).exists()),
            seccomp_filter: seccomp_mode(&status) == Some(SECCOMP_MODE_FILTER),
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

/// `Seccomp:` of /proc/self/status when a BPF filter applies (0: none, 1: strict).
const SECCOMP_MODE_FILTER: u8 = 2;

/// The `Seccomp:` mode of a /proc/PID/status text.
fn seccomp_mode(status: &str) -> Option<u8> {
    let mode = status.lines().find_map(|l| l.strip_prefix("Seccomp:"))?;
    mode.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuned() -> HostFacts {
        HostFacts {
            io_uring: Ok(()),
            memlock: None,
            ipc_lock: false,
            container: None,
            seccomp_filter: false,
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
    fn cap_ipc_lock_leaves_only_glommio_s_floor() {
        let facts = HostFacts {
            memlock: Some(512 * 1024),
            ipc_lock: true,
            ..tuned()
        };
        assert!(assess(&facts, 64).iter().all(|f| f.level == Level::Ok));
        let facts = HostFacts {
            memlock: Some(64 * 1024),
            ..facts
        };
        let memlock = &assess(&facts, 64)[1];
        assert_eq!(memlock.level, Level::Blocker, "{memlock:?}");
        assert!(memlock.what.contains("glommio's floor"), "{memlock:?}");
    }

    #[test]
    fn in_a_container_the_fixes_are_the_container_s() {
        let facts = HostFacts {
            io_uring: Err("Operation not permitted (os error 1)".into()),
            memlock: Some(64 * 1024),
            container: Some(Container::Kubernetes),
            seccomp_filter: true,
            ..tuned()
        };
        let findings = assess(&facts, 2);
        let (io_uring, memlock) = (&findings[0], &findings[1]);
        assert!(io_uring
            .what
            .contains("blocked in a Kubernetes pod by its seccomp filter"));
        assert!(io_uring.fix.as_ref().unwrap().contains("seccompProfile"));
        assert!(memlock.what.ends_with("in a Kubernetes pod"), "{memlock:?}");
        assert!(memlock.fix.as_ref().unwrap().contains("IPC_LOCK"));
        let docker = HostFacts {
            container: Some(Container::Docker),
            ..facts.clone()
        };
        let fixes: Vec<String> = assess(&docker, 2)
            .into_iter()
            .take(2)
            .map(|f| f.fix.unwrap())
            .collect();
        assert!(fixes[0].contains("--security-opt seccomp="), "{fixes:?}");
        assert!(fixes[1].contains("--ulimit memlock=-1"), "{fixes:?}");
        // Without a seccomp filter, io_uring is off for another reason: the host's fix.
        let unfiltered = HostFacts {
            seccomp_filter: false,
            ..facts
        };
        assert!(assess(&unfiltered, 2)[0]
            .what
            .starts_with("io_uring: unavailable"));
    }

    #[test]
    fn containers_and_seccomp_are_recognised() {
        assert_eq!(
            Container::detect(true, |_| false),
            Some(Container::Kubernetes)
        );
        assert_eq!(
            Container::detect(false, |p| p == "/.dockerenv"),
            Some(Container::Docker)
        );
        assert_eq!(
            Container::detect(false, |p| p == "/run/.containerenv"),
            Some(Container::Podman)
        );
        assert_eq!(Container::detect(false, |_| false), None);
        let status = "Name:\teventstream\nSeccomp:\t2\nSeccomp_filters:\t1\n";
        assert_eq!(seccomp_mode(status), Some(SECCOMP_MODE_FILTER));
        assert_eq!(seccomp_mode("Seccomp:\t0\n"), Some(0));
        assert_eq!(seccomp_mode("Name:\tx\n"), None);
    }
}
