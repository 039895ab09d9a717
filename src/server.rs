//! Starting and stopping the server: checks the host, binds every door's sockets (so a busy
//! port fails before anything runs), starts one pinned glommio executor per shard, joins them
//! in a channel mesh and hands each its sockets.

use std::net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket as StdUdpSocket};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::{TcpListener, UdpSocket};
use glommio::{LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, Socket, Type};

use crate::accept::{ConnectionLimit, SocketOptions};
use crate::bridge::{Bridge, BridgeStats};
use crate::busy_poll::BusyPoll;
use crate::config::{Config, ConfigError};
use crate::engine::{Batch, Shard};
use crate::grpc::calls::Liveness;
use crate::grpc::connection::{Door as GrpcDoor, DoorSettings as GrpcSettings};
use crate::native::connection::Door;
use crate::native::datagram;

/// io_uring memory each shard registers. We do no file I/O, so glommio's minimum is plenty;
/// glommio registers it with three rings, which RLIMIT_MEMLOCK must cover.
const IO_MEMORY_BYTES: usize = 64 * 1024;
const IO_MEMORY_RINGS: usize = 3;
/// glommio refuses to create an executor below this RLIMIT_MEMLOCK, whatever it registers.
pub(crate) const GLOMMIO_MEMLOCK_BYTES_MIN: u64 = 512 * 1024;
/// Batches in flight from one shard to another before the sender waits.
const CHANNEL_BATCHES: usize = 256;
/// Descriptors the default connection limits leave for everything but client and metrics
/// connections: standard streams, refusals being sent, and the server's own files.
const RESERVED_DESCRIPTORS: u64 = 256;
/// Descriptors each shard keeps open besides its clients: three TCP listeners and a UDP
/// socket, its io_uring rings, eventfds and timers, with room to spare.
const DESCRIPTORS_PER_SHARD: u64 = 32;
/// How long each shard may take to reach each start-up stage: creating an executor and
/// binding take milliseconds, so past this something is stuck and start-up fails.
const SHARD_STAGE_TIMEOUT_S: u64 = 10;
/// Room, over `limits.max_message_bytes`, for what a gRPC request adds around an event's
/// payload and metadata (topic, id, protobuf tags), so that the engine, not the HTTP/2 layer,
/// refuses an event that is too large, with its precise error.
const GRPC_MESSAGE_SLACK_BYTES: usize = 64 * 1024;
/// Connections the kernel queues on each shard's listener before accepting: absorbs a burst
/// of clients connecting at once (a reconnect storm) while the shard is busy.
const LISTEN_BACKLOG_CONNECTIONS: i32 = 1024;
/// Each UDP socket's receive buffer: holds bursts of datagrams while the shard is busy, since
/// UDP drops what does not fit (the kernel caps it at net.core.rmem_max).
const UDP_RECV_BUFFER_BYTES: usize = 4 << 20;

/// Why the server could not start. Every variant names what to change.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("{key}: cannot listen on {addr}: {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "RLIMIT_MEMLOCK is {limit} bytes but {shards} shards need {need} bytes of io_uring memory; \
         raise it (ulimit -l, or LimitMEMLOCK= in systemd: see tuning/README.md) or run fewer shards"
    )]
    Memlock {
        limit: u64,
        need: u64,
        shards: usize,
    },
    #[error(
        "io_uring is unavailable ({why}); eventstream needs it: a kernel of 5.8 or later, \
         kernel.io_uring_disabled=0, and in a container a seccomp profile that allows io_uring \
         (`eventstream doctor` names the fix; see tuning/README.md and tuning/kubernetes/README.md)"
    )]
    IoUring { why: String },
    #[error("shard {shard} failed to start: {reason}")]
    Shard { shard: usize, reason: String },
}

/// Where the doors of a running server listen (useful with port 0).
#[derive(Clone, Copy, Debug)]
pub struct Addresses {
    pub native: SocketAddr,
    pub grpc: SocketAddr,
    pub udp: Option<SocketAddr>,
    pub metrics: SocketAddr,
}

/// A started server. Dropping it without [`RunningServer::stop`] leaves the shards running.
pub struct RunningServer {
    addresses: Addresses,
    stops: Vec<flume::Sender<()>>,
    shards: Vec<glommio::ExecutorJoinHandle<()>>,
    /// How long shards give their clients at a stop (`shutdown.drain_timeout_ms`).
    drain: Duration,
    /// The NATS bridge, when configured.
    bridge: Option<Bridge>,
}

/// How long after the drain timeout a stopping shard may take to exit before it counts as
/// stuck.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// How far a shard got in starting up.
#[derive(Debug, PartialEq, Eq)]
enum Stage {
    Created,
    Serving,
    Failed(String),
}

struct ShardSockets {
    tcp: OwnedFd,
    grpc: OwnedFd,
    udp: Option<OwnedFd>,
    metrics: OwnedFd,
}

impl RunningServer {
    /// Where each door listens.
    pub fn addresses(&self) -> Addresses {
        self.addresses
    }

    /// Graceful stop: every shard stops accepting, tells its subscribers, closes its clients
    /// (or gives up after the drain timeout) and exits. False if some shard had not exited
    /// 2 s (`STOP_GRACE`) after the drain timeout: that is a bug (a task that never yields),
    /// and a server told to stop must stop anyway, so the stuck shard is left behind for the
    /// process's exit to end. Callers must not ignore it: it is the only sign of that bug.
    #[must_use = "false means a shard is stuck: report it"]
    pub fn stop(self) -> bool {
        for stop in &self.stops {
            let _ = stop.send(());
        }
        let (shards, bridge) = (self.shards, self.bridge);
        finishes_within(self.drain + STOP_GRACE, move || {
            for handle in shards {
                let _ = handle.join();
            }
            if let Some(bridge) = bridge {
                bridge.stop();
            }
        })
    }

    /// The NATS bridge's counters, when it runs.
    pub fn bridge_stats(&self) -> Option<Arc<BridgeStats>> {
        self.bridge.as_ref().map(|b| b.stats.clone())
    }
}

/// Runs `work` on a thread of its own; true if it finished within `limit`.
fn finishes_within(limit: Duration, work: impl FnOnce() + Send + 'static) -> bool {
    let (done, finished) = flume::bounded(1);
    std::thread::spawn(move || {
        work();
        let _ = done.send(());
    });
    finished.recv_timeout(limit).is_ok()
}

/// Checks the host and the configuration, binds every socket, starts the shards and returns
/// once each of them is serving.
pub fn start(config: &Config) -> Result<RunningServer, StartError> {
    config.validate()?;
    let available: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    let cpus = config.shard_cpus(&available)?;
    crate::io_uring_probe::probe().map_err(|why| StartError::IoUring { why })?;
    check_memlock(cpus.len())?;
    fix_mmap_threshold();
    let (native_max, grpc_max) = connection_limits(config, cpus.len(), raise_nofile())?;
    let native_limit = ConnectionLimit::new(native_max);
    let grpc_limit = ConnectionLimit::new(grpc_max);
    let metrics_limit = ConnectionLimit::new(config.metrics.max_connections);
    let socket_options = SocketOptions::from_config(&config.connections);
    let liveness = (config.grpc.ping_interval_ms > 0).then(|| Liveness {
        interval: Duration::from_millis(config.grpc.ping_interval_ms),
        timeout: Duration::from_millis(config.grpc.ping_timeout_ms),
    });
    let grpc_tls = config.grpc.tls.load("grpc", &[b"h2"])?;
    let native_tls = config.native.tls.load("native", &[])?;

    let (tcp, native_addr) = bind_tcp_shards(
        "native.port",
        SocketAddr::new(config.bind, config.native.port),
        cpus.len(),
    )?;
    let (grpc, grpc_addr) = bind_tcp_shards(
        "grpc.port",
        SocketAddr::new(config.bind, config.grpc.port),
        cpus.len(),
    )?;
    let (metrics, metrics_addr) = bind_tcp_shards(
        "metrics.port",
        SocketAddr::new(config.bind, config.metrics.port),
        cpus.len(),
    )?;
    let mut udp: Vec<Option<OwnedFd>> = (0..cpus.len()).map(|_| None).collect();
    let mut udp_addr = None;
    if config.udp_enabled() {
        let mut addr = SocketAddr::new(config.bind, config.udp.port);
        check_free(addr, Type::DGRAM).map_err(|source| StartError::Bind {
            key: "udp.port",
            addr,
            source,
        })?;
        for slot in udp.iter_mut() {
            let socket = bind_udp(addr).map_err(|source| StartError::Bind {
                key: "udp.port",
                addr,
                source,
            })?;
            addr = socket.local_addr().expect("bound socket has an address");
            *slot = Some(OwnedFd::from(socket));
        }
        udp_addr = Some(addr);
    }

    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ u64::from(std::process::id()) << 32;
    let (bridge, taps) = match Bridge::start(&config.bridge, cpus.len())? {
        Some((bridge, taps)) => (Some(bridge), taps.into_iter().map(Some).collect()),
        None => (None, (0..cpus.len()).map(|_| None).collect::<Vec<_>>()),
    };
    let bridge_stats = bridge.as_ref().map(|b: &Bridge| b.stats.clone());
    let mut taps = taps.into_iter();
    let mesh = MeshBuilder::<Batch, _>::full(cpus.len(), CHANNEL_BATCHES);
    let mut stops = Vec::new();
    let mut shards = Vec::new();
    let mut progress = Vec::new();
    let started = Instant::now();
    let sockets = tcp.into_iter().zip(grpc).zip(udp).zip(metrics);
    for (i, (cpu, (((tcp, grpc), udp), metrics))) in cpus.iter().zip(sockets).enumerate() {
        let placement = match cpu {
            Some(cpu) => Placement::Fixed(*cpu),
            None => Placement::Unbound,
        };
        let (stop_tx, stop_rx) = flume::bounded::<()>(1);
        stops.push(stop_tx);
        let sockets = ShardSockets {
            tcp,
            grpc,
            udp,
            metrics,
        };
        let (grpc_tls, native_tls) = (grpc_tls.clone(), native_tls.clone());
        let door_limits = DoorLimits {
            native: native_limit.clone(),
            grpc: grpc_limit.clone(),
            metrics: metrics_limit.clone(),
        };
        let mesh = mesh.clone();
        let tap = taps.next().flatten();
        let bridge_stats = bridge_stats.clone();
        // Each shard reports Created (its executor exists) then Serving; a sender dropped
        // before Created means the executor could not be made, and its thread says why.
        let (ready, ready_rx) = flume::unbounded::<Stage>();
        progress.push(ready_rx);
        let limits = config.limits;
        let max_frame = config.native.max_frame_bytes;
        let grpc_idle = Duration::from_millis(config.grpc.idle_timeout_ms);
        let drain = config.drain_timeout();
        let mut builder = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{i}"))
            .io_memory(IO_MEMORY_BYTES);
        let spin = Duration::from_micros(config.shards.spin_before_park_us);
        if !spin.is_zero() {
            builder = builder.spin_before_park(spin);
        }
        let handle = builder
            .spawn(move || async move {
                let _ = ready.send(Stage::Created);
                let joined = mesh.join().await;
                let Ok((senders, receivers)) = joined else {
                    let _ = ready.send(Stage::Failed("could not join the shard mesh".into()));
                    return;
                };
                let id = senders.peer_id();
                let shard = Shard::new(id, senders.nr_consumers(), limits, seed);
                shard.spawn_links(senders, receivers);
                if let Some(tap) = tap {
                    crate::bridge::attach(&shard, tap);
                }
                let tls = DoorTls {
                    grpc: grpc_tls,
                    native: native_tls,
                };
                let doors = DoorSettings {
                    max_frame,
                    grpc_idle,
                    liveness,
                    limits: door_limits,
                    sockets: socket_options,
                    started,
                    spin,
                    bridge: bridge_stats,
                };
                run_shard(shard, sockets, tls, doors, drain, ready, stop_rx).await;
            })
            .map_err(|e| StartError::Shard {
                shard: i,
                reason: e.to_string(),
            })?;
        shards.push(handle);
    }
    for stage in [Stage::Created, Stage::Serving] {
        for (i, rx) in progress.iter().enumerate() {
            match rx.recv_timeout(Duration::from_secs(SHARD_STAGE_TIMEOUT_S)) {
                Ok(got) if got == stage => {}
                Ok(Stage::Failed(reason)) => return Err(StartError::Shard { shard: i, reason }),
                Ok(other) => unreachable!("shard {i} reported {other:?} before {stage:?}"),
                Err(flume::RecvTimeoutError::Disconnected) => {
                    // The executor could not be created: its thread ended with the reason.
                    let reason = match shards.remove(i).join() {
                        Err(e) => e.to_string(),
                        Ok(()) => "stopped before serving".to_owned(),
                    };
                    return Err(StartError::Shard { shard: i, reason });
                }
                Err(flume::RecvTimeoutError::Timeout) => {
                    return Err(StartError::Shard {
                        shard: i,
                        reason: format!("not {stage:?} after {SHARD_STAGE_TIMEOUT_S} s"),
                    })
                }
            }
        }
    }
    Ok(RunningServer {
        addresses: Addresses {
            native: native_addr,
            grpc: grpc_addr,
            udp: udp_addr,
            metrics: metrics_addr,
        },
        stops,
        shards,
        drain: config.drain_timeout(),
        bridge,
    })
}

/// The TLS configuration of each TCP door (None: plaintext).
struct DoorTls {
    grpc: Option<Arc<rustls::ServerConfig>>,
    native: Option<Arc<rustls::ServerConfig>>,
}

/// Each TCP door's connection limit, shared by every shard.
struct DoorLimits {
    native: Arc<ConnectionLimit>,
    grpc: Arc<ConnectionLimit>,
    metrics: Arc<ConnectionLimit>,
}

/// Per-door settings a shard needs.
struct DoorSettings {
    max_frame: usize,
    grpc_idle: Duration,
    liveness: Option<Liveness>,
    limits: DoorLimits,
    /// What finds dead clients on both TCP doors.
    sockets: SocketOptions,
    /// When the server started (the metrics door reports uptime).
    started: Instant,
    /// Low-latency mode's spin window (zero: off); a connection polls its socket for up to
    /// this long after each read ([`BusyPoll`]).
    spin: Duration,
    /// The NATS bridge's counters, for the metrics door.
    bridge: Option<Arc<BridgeStats>>,
}

async fn run_shard(
    shard: std::rc::Rc<Shard>,
    sockets: ShardSockets,
    tls: DoorTls,
    doors: DoorSettings,
    drain: Duration,
    ready: flume::Sender<Stage>,
    stop: flume::Receiver<()>,
) {
    // SAFETY: each fd is a bound, listening socket that this shard now owns alone.
    let listener = unsafe { TcpListener::from_raw_fd(sockets.tcp.into_raw_fd()) };
    // Low-latency mode: the connections of both TCP doors poll their sockets, sharing one limit.
    let busy_poll = (!doors.spin.is_zero()).then(|| Rc::new(BusyPoll::new(doors.spin)));
    let door = Door::new(
        shard.clone(),
        doors.max_frame,
        tls.native,
        busy_poll.clone(),
        doors.limits.native,
        doors.sockets,
    );
    let accepting = glommio::spawn_local(door.clone().accept_loop(listener));
    // SAFETY: as above.
    let grpc_listener = unsafe { TcpListener::from_raw_fd(sockets.grpc.into_raw_fd()) };
    let max_message = shard.limits().max_message_bytes + GRPC_MESSAGE_SLACK_BYTES;
    let grpc_door = GrpcDoor::new(
        shard.clone(),
        GrpcSettings {
            max_message,
            tls: tls.grpc,
            idle_timeout: doors.grpc_idle,
            liveness: doors.liveness,
            busy_poll,
            limit: doors.limits.grpc,
            sockets: doors.sockets,
        },
    );
    let grpc_accepting = glommio::spawn_local(grpc_door.clone().accept_loop(grpc_listener));
    // SAFETY: as above.
    let metrics_listener = unsafe { TcpListener::from_raw_fd(sockets.metrics.into_raw_fd()) };
    let metrics_door = crate::metrics::Door::new(
        shard.clone(),
        doors.started,
        doors.bridge,
        doors.limits.metrics,
        doors.sockets,
    );
    let metrics_accepting = glommio::spawn_local(metrics_door.accept_loop(metrics_listener));
    let receiving = sockets.udp.map(|fd| {
        // SAFETY: as above, a bound UDP socket owned by this shard.
        let socket = unsafe { UdpSocket::from_raw_fd(fd.into_raw_fd()) };
        glommio::spawn_local(datagram::serve(shard.clone(), socket))
    });
    let _ = ready.send(Stage::Serving);
    drop(ready);
    let _ = stop.recv_async().await;
    shard.begin_shutdown();
    accepting.await;
    grpc_accepting.await;
    metrics_accepting.await;
    if let Some(receiving) = receiving {
        receiving.await;
    }
    let _ = glommio::timer::timeout(drain, async {
        door.drained().await;
        grpc_door.drained().await;
        Ok(())
    })
    .await;
}

/// Binds `count` SO_REUSEPORT listeners on one port (the first picks it when `addr` has port
/// 0), after checking nothing else holds it.
fn bind_tcp_shards(
    key: &'static str,
    addr: SocketAddr,
    count: usize,
) -> Result<(Vec<OwnedFd>, SocketAddr), StartError> {
    let error = |addr, source| StartError::Bind { key, addr, source };
    check_free(addr, Type::STREAM).map_err(|e| error(addr, e))?;
    let first = bind_tcp(addr).map_err(|e| error(addr, e))?;
    let addr = first.local_addr().expect("bound socket has an address");
    let mut fds = vec![OwnedFd::from(first)];
    for _ in 1..count {
        fds.push(OwnedFd::from(bind_tcp(addr).map_err(|e| error(addr, e))?));
    }
    Ok((fds, addr))
}

/// Fails if anything already listens on `addr`. SO_REUSEPORT would otherwise let a second
/// server (same user) bind the same port and silently take half of the clients.
fn check_free(addr: SocketAddr, kind: Type) -> std::io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), kind, None)?;
    // TCP: SO_REUSEADDR so that TIME_WAIT leftovers of our own last run do not count; it
    // never lets us share a port with a listener. UDP has no TIME_WAIT, and SO_REUSEADDR
    // would let the probe share the port: so none there.
    if kind == Type::STREAM {
        probe.set_reuse_address(true)?;
    }
    probe.bind(&addr.into())
}

/// SO_REUSEADDR lets a restart bind while old connections sit in TIME_WAIT; SO_REUSEPORT lets
/// every shard bind the same port and have the kernel spread clients over them.
fn bind_tcp(addr: SocketAddr) -> std::io::Result<StdTcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG_CONNECTIONS)?;
    Ok(socket.into())
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<StdUdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_recv_buffer_size(UDP_RECV_BUFFER_BYTES)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// Allocations at least this large get pages of their own from the kernel, given back when
/// freed: glibc's own default, held fixed (see [`fix_mmap_threshold`]).
const MMAP_THRESHOLD_BYTES: libc::c_int = 128 * 1024;

/// Keeps glibc's malloc from raising its mmap threshold as it sees large blocks freed (its
/// default, up to 32 MiB). Raised, it serves the large buffers of subscriber queues and writes
/// from the shards' heap arenas, where freed runs of them fragment the arenas, which then only
/// grow: in the soak, the server's RSS crept up in steps for as long as it ran
/// (docs/PERFORMANCE.md, "Soak test"). Fixed, such a buffer is mapped and unmapped whole (and
/// grown with mremap); they are made far less often than events. A no-op on other C libraries.
fn fix_mmap_threshold() {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallopt takes the allocator's locks and only sets one of its parameters.
        let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) };
        debug_assert_eq!(set, 1, "glibc accepts a threshold below its 32 MiB maximum");
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (as Go's runtime does): every client
/// connection is a descriptor, and the soft limit's common default (1024) is sized for
/// programs that open a few files. Returns the soft limit then in force (u64::MAX: none).
fn raise_nofile() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return u64::MAX; // cannot tell: the limits are left to what is configured
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        limit.rlim_cur
    }
}

/// The connection limit of each client TCP door (native, gRPC), given `nofile` descriptors:
/// as configured, or by default half each of what `shards` shards and the metrics door's
/// `max_connections` leave of them; limits that
/// cannot fit are an error naming the key, so that the door refuses clients with a clear
/// error instead of failing accepts with EMFILE.
pub fn connection_limits(
    config: &Config,
    shards: usize,
    nofile: u64,
) -> Result<(usize, usize), ConfigError> {
    let reserved = RESERVED_DESCRIPTORS
        + DESCRIPTORS_PER_SHARD * shards as u64
        + config.metrics.max_connections as u64;
    let budget = nofile.saturating_sub(reserved);
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let (native, grpc) = (config.native.max_connections, config.grpc.max_connections);
    let fix = "raise RLIMIT_NOFILE (ulimit -n, or LimitNOFILE= in systemd) or lower the limit";
    let too_many = |key: &str, wanted: u64| ConfigError::Invalid {
        key: key.to_owned(),
        reason: format!(
            "{wanted} connections need more descriptors than RLIMIT_NOFILE ({nofile}) leaves \
             after {reserved} for {shards} shards, metrics and the rest ({budget}); {fix}"
        ),
    };
    let configured = |key: &str, n: usize, left: u64| {
        if n as u64 > left {
            Err(too_many(key, n as u64))
        } else {
            Ok(n)
        }
    };
    match (native, grpc) {
        (Some(n), Some(g)) => {
            configured("native.max_connections", n, budget)?;
            let left = budget - n as u64;
            let key = "grpc.max_connections";
            configured(key, g, left).map_err(|_| {
                too_many(
                    "native.max_connections + grpc.max_connections",
                    n as u64 + g as u64,
                )
            })?;
            Ok((n, g))
        }
        (Some(n), None) => {
            configured("native.max_connections", n, budget.saturating_sub(1))?;
            Ok((n, to_usize(budget - n as u64)))
        }
        (None, Some(g)) => {
            configured("grpc.max_connections", g, budget.saturating_sub(1))?;
            Ok((to_usize(budget - g as u64), g))
        }
        (None, None) if budget < 2 => Err(too_many("native.max_connections", 2)),
        (None, None) => Ok((to_usize(budget / 2), to_usize(budget - budget / 2))),
    }
}

/// The soft RLIMIT_MEMLOCK (bytes) `shards` shards need: what they register with io_uring,
/// unless CAP_IPC_LOCK (`ipc_lock`) exempts the process from that charge, and glommio's own
/// floor either way (it checks the soft limit itself); tuning/README.md explains it.
pub fn memlock_needed(shards: usize, ipc_lock: bool) -> u64 {
    if ipc_lock {
        return GLOMMIO_MEMLOCK_BYTES_MIN;
    }
    ((shards * IO_MEMORY_BYTES * IO_MEMORY_RINGS) as u64).max(GLOMMIO_MEMLOCK_BYTES_MIN)
}

/// Fails early, with the fix, when io_uring could not register its memory.
fn check_memlock(shards: usize) -> Result<(), StartError> {
    let need = memlock_needed(shards, has_ipc_lock());
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) != 0 {
            return Ok(()); // cannot tell; glommio will report what it finds
        }
        if limit.rlim_cur != libc::RLIM_INFINITY && limit.rlim_cur < need {
            // Raise the soft limit as far as the hard limit allows.
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max.min(need.max(limit.rlim_cur)),
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) == 0 {
                limit = raised;
            }
        }
    }
    let limit = (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur);
    memlock_verdict(limit, need, shards)
}

/// `limit`: the soft RLIMIT_MEMLOCK (None: unlimited); `need`: [`memlock_needed`].
fn memlock_verdict(limit: Option<u64>, need: u64, shards: usize) -> Result<(), StartError> {
    match limit {
        Some(limit) if limit < need => Err(StartError::Memlock {
            limit,
            need,
            shards,
        }),
        _ => Ok(()),
    }
}

/// CAP_IPC_LOCK exempts a process from RLIMIT_MEMLOCK.
pub fn has_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_that_outlasts_its_limit_is_given_up_on_in_time() {
        let started = Instant::now();
        let stuck = finishes_within(Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_secs(5))
        });
        assert!(!stuck, "a 5 s stop counted as finished within 50 ms");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "waited for it anyway"
        );
        assert!(finishes_within(Duration::from_secs(5), || {}));
    }

    #[test]
    fn memlock_too_low_fails_with_the_fix_unless_exempt() {
        let need = memlock_needed(4, false);
        assert_eq!(need, 786_432, "4 shards x 192 KiB");
        let err = memlock_verdict(Some(65_536), need, 4)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("65536") && err.contains("786432") && err.contains("tuning/README.md"),
            "{err}"
        );
        let exempt = memlock_needed(64, true);
        assert!(
            memlock_verdict(Some(512 * 1024), exempt, 64).is_ok(),
            "CAP_IPC_LOCK exempts from the registrations' charge"
        );
        assert!(
            memlock_verdict(Some(65_536), exempt, 64).is_err(),
            "but not from glommio's own 512 KiB floor"
        );
        assert!(memlock_verdict(None, need, 4).is_ok(), "unlimited");
        assert!(memlock_verdict(Some(8 << 20), need, 4).is_ok());
    }

    #[test]
    fn connection_limits_default_to_the_descriptors_and_must_fit_them() {
        let mut c = Config::default();
        let reserved = RESERVED_DESCRIPTORS + 2 * DESCRIPTORS_PER_SHARD + 32;
        let (n, g) = connection_limits(&c, 2, reserved + 1000).unwrap();
        assert_eq!((n, g), (500, 500));
        assert!(
            connection_limits(&c, 2, u64::MAX).unwrap().0 > 1 << 30,
            "no limit"
        );
        let e = connection_limits(&c, 2, reserved).unwrap_err().to_string();
        assert!(e.starts_with("native.max_connections") && e.contains("RLIMIT_NOFILE"));
        c.native.max_connections = Some(900);
        assert_eq!(
            connection_limits(&c, 2, reserved + 1000).unwrap(),
            (900, 100)
        );
        c.native.max_connections = Some(1000);
        let e = connection_limits(&c, 2, reserved + 1000).unwrap_err();
        assert!(e.to_string().starts_with("native.max_connections"), "{e}");
        c.native.max_connections = None;
        c.grpc.max_connections = Some(5000);
        let e = connection_limits(&c, 2, reserved + 1000).unwrap_err();
        assert!(e.to_string().starts_with("grpc.max_connections"), "{e}");
        c.native.max_connections = Some(600);
        c.grpc.max_connections = Some(600);
        let e = connection_limits(&c, 2, reserved + 1000).unwrap_err();
        assert!(
            e.to_string()
                .contains("native.max_connections + grpc.max_connections"),
            "{e}"
        );
        c.grpc.max_connections = Some(400);
        assert_eq!(
            connection_limits(&c, 2, reserved + 1000).unwrap(),
            (600, 400)
        );
    }

    #[test]
    fn a_port_in_use_is_refused_even_with_reuseport() {
        let first = bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let taken = first.local_addr().unwrap();
        assert!(check_free(taken, Type::STREAM).is_err());
        assert!(
            bind_tcp(taken).is_ok(),
            "SO_REUSEPORT alone would have allowed it"
        );
    }
}
