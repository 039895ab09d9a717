//! Server configuration: defaults, an optional YAML file, and command-line flags on top.
//! Every setting is checked here, before any socket is opened, and a wrong one is reported
//! with its key and the reason.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::engine::Limits;

mod bridge;
mod tls;
pub use bridge::BridgeConfig;
pub use tls::{ClientAuth, TlsConfig};

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

pub(crate) fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// Linux's largest TCP_KEEPIDLE and TCP_KEEPINTVL, in seconds.
const KEEPALIVE_S_MAX: u32 = 32_767;
/// Linux's largest TCP_KEEPCNT.
const KEEPALIVE_PROBES_MAX: u32 = 127;
/// Linux's largest TCP_USER_TIMEOUT: the kernel takes it as a C int.
const USER_TIMEOUT_MS_MAX: u32 = i32::MAX as u32;
/// Most topic handles a connection may be allowed: a connection's handle table grows to its
/// highest declared handle, so this bounds it (about 48 MiB at most).
const TOPIC_HANDLES_MAX: usize = 1 << 20;
/// Most shards: far beyond any host's CPUs, low enough that a typo (an extra digit) is caught
/// here instead of starting thousands of threads.
const SHARDS_MAX: usize = 1024;
/// Longest busy-poll before parking, one second: past that, spinning saves no wake-up worth
/// the CPU it burns.
const SPIN_BEFORE_PARK_US_MAX: u64 = 1_000_000;
/// Smallest `native.max_frame_bytes`: below it, ordinary requests (a topic, an id, a little
/// metadata and payload) would be refused as too large.
const NATIVE_FRAME_BYTES_MIN: usize = 1024;
/// Largest `native.max_frame_bytes`: a native frame's length field is 32 bits.
const NATIVE_FRAME_BYTES_MAX: usize = u32::MAX as usize;
/// Largest `limits.max_metadata_entries`: an event's metadata count is 16 bits on the wire.
const METADATA_ENTRIES_MAX: usize = u16::MAX as usize;
/// Largest `limits.max_message_bytes`: an event's payload and metadata lengths are 32 bits on
/// the wire.
const MESSAGE_BYTES_MAX: usize = u32::MAX as usize;

/// The whole configuration; the YAML file has the same shape.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address every door listens on.
    pub bind: IpAddr,
    pub grpc: GrpcConfig,
    pub native: NativeConfig,
    /// Dead-client detection on both TCP doors.
    pub connections: ConnectionsConfig,
    pub udp: UdpConfig,
    pub metrics: MetricsConfig,
    pub shards: ShardsConfig,
    pub limits: Limits,
    pub shutdown: ShutdownConfig,
    /// Joining other nodes through NATS (off by default).
    pub bridge: BridgeConfig,
}

/// The gRPC door.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    pub port: u16,
    pub tls: TlsConfig,
    /// A connection with no call and no traffic for this long is closed (GOAWAY); 0: never.
    pub idle_timeout_ms: u64,
    /// A connection the client has sent nothing on for this long gets an HTTP/2 PING, which
    /// every HTTP/2 client answers by itself; 0: never. Finds a client that stopped answering
    /// even while nothing is sent to it (the write deadline needs data to send).
    pub ping_interval_ms: u64,
    /// A client that sends nothing for this long after a PING is cut as dead (GOAWAY, close).
    pub ping_timeout_ms: u64,
    /// Open connections the door takes, server-wide; more are refused (GOAWAY). None: half of
    /// the descriptors the process may open, less a reserve (see `server::connection_limits`).
    pub max_connections: Option<usize>,
}

/// The native TCP door.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NativeConfig {
    pub port: u16,
    /// Largest frame a client may send, in bytes (length field value).
    pub max_frame_bytes: usize,
    pub tls: TlsConfig,
    /// Open connections the door takes, server-wide; more are refused (ERROR
    /// TooManyConnections). None: half of the descriptors the process may open, less a
    /// reserve (see `server::connection_limits`).
    pub max_connections: Option<usize>,
}

/// How both TCP doors find clients whose host vanished (no FIN, no RST) or that stopped
/// reading, so that they do not hold subscriptions, queues and memory forever.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// TCP keepalive: the kernel probes a connection silent for this long, in seconds (the
    /// kernel's unit); 0: no keepalive.
    pub keepalive_idle_s: u32,
    /// Seconds between keepalive probes.
    pub keepalive_interval_s: u32,
    /// Unanswered probes after which the kernel drops the connection.
    pub keepalive_probes: u32,
    /// TCP_USER_TIMEOUT: a connection whose sent data stays unacknowledged this long is
    /// dropped by the kernel (keepalive alone does not probe a connection with data in
    /// flight); 0: the kernel's retransmission limits (about 15 minutes). On Linux it also
    /// decides when unanswered keepalive probes end a connection, so keep it at
    /// idle + interval x probes (the defaults are: 30 s + 3 x 10 s).
    pub user_timeout_ms: u32,
    /// A connection whose socket takes no byte of what the server has to send for this long
    /// is cut (a client that stopped reading, or whose host is gone); 0: never.
    pub write_deadline_ms: u64,
}

/// The native UDP door.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UdpConfig {
    pub enabled: bool,
    pub port: u16,
    /// UDP cannot authenticate: where a TCP door requires client certificates, the UDP door
    /// stays off unless this is true.
    pub allow_with_mtls: bool,
}

/// The metrics door (Prometheus text on `GET /metrics`, see `crate::metrics`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    pub port: u16,
    /// Open connections the door takes, server-wide; more are answered 503 and closed. A
    /// scrape holds one for well under a second, so a few scrapers need few; the limit keeps
    /// clients that connect and send nothing from taking the descriptors the other doors need.
    pub max_connections: usize,
}

/// How many shards, and whether each is pinned to its own CPU.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShardsConfig {
    /// None: one per CPU this process may run on.
    pub count: Option<usize>,
    pub pin: bool,
    /// Low-latency mode: how long an idle shard busy-polls before it sleeps in the kernel,
    /// in microseconds (glommio's spin before park). 0, the default, sleeps at once. A
    /// spinning shard keeps its CPU at 100% while it waits; it saves the wake-up of a
    /// sleeping thread (tens of microseconds on a virtual machine) on the next event.
    pub spin_before_park_us: u64,
}

/// Graceful shutdown.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long connections get to finish after SIGINT/SIGTERM, in milliseconds.
    pub drain_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: IpAddr::from([0, 0, 0, 0]),
            grpc: GrpcConfig::default(),
            native: NativeConfig::default(),
            connections: ConnectionsConfig::default(),
            udp: UdpConfig::default(),
            metrics: MetricsConfig::default(),
            shards: ShardsConfig::default(),
            limits: Limits::default(),
            shutdown: ShutdownConfig::default(),
            bridge: BridgeConfig::default(),
        }
    }
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            port: 9200,
            tls: TlsConfig::default(),
            idle_timeout_ms: 300_000,
            ping_interval_ms: 60_000,
            ping_timeout_ms: 20_000,
            max_connections: None,
        }
    }
}

impl Default for NativeConfig {
    fn default() -> Self {
        NativeConfig {
            port: 9201,
            max_frame_bytes: 16 << 20,
            tls: TlsConfig::default(),
            max_connections: None,
        }
    }
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            keepalive_idle_s: 30,
            keepalive_interval_s: 10,
            keepalive_probes: 3,
            user_timeout_ms: 60_000,
            write_deadline_ms: 30_000,
        }
    }
}

impl Default for UdpConfig {
    fn default() -> Self {
        UdpConfig {
            enabled: true,
            port: 9202,
            allow_with_mtls: false,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            port: 9203,
            max_connections: 32,
        }
    }
}

impl Default for ShardsConfig {
    fn default() -> Self {
        ShardsConfig {
            count: None,
            pin: true,
            spin_before_park_us: 0,
        }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            drain_timeout_ms: 5_000,
        }
    }
}

impl Config {
    /// Reads a YAML file; unknown keys are errors, missing ones take their defaults.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_yaml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses YAML text (an empty document means all defaults).
    pub fn from_yaml(text: &str) -> Result<Config, String> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
    }

    /// Whether the UDP door runs: on, unless a TCP door requires client certificates and UDP
    /// was not explicitly allowed anyway (README.md, "What this version serves").
    pub fn udp_enabled(&self) -> bool {
        let mtls = self.grpc.tls.requires_client_certificates()
            || self.native.tls.requires_client_certificates();
        self.udp.enabled && (!mtls || self.udp.allow_with_mtls)
    }

    /// The drain timeout as a duration.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.shutdown.drain_timeout_ms)
    }

    /// Checks every value that does not depend on the host; [`Config::shard_cpus`] checks
    /// the rest.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut ports = vec![("native.port", self.native.port)];
        if self.udp.enabled {
            ports.push(("udp.port", self.udp.port));
        }
        // TCP and UDP may share a number; TCP doors may not.
        let tcp: Vec<_> = [
            ("grpc.port", self.grpc.port),
            ("native.port", self.native.port),
            ("metrics.port", self.metrics.port),
        ]
        .into_iter()
        .filter(|(_, p)| *p != 0)
        .collect();
        for (i, (key, port)) in tcp.iter().enumerate() {
            if let Some((other, _)) = tcp[..i].iter().find(|(_, p)| p == port) {
                return Err(invalid(
                    key,
                    format!("port {port} is already used by {other}"),
                ));
            }
        }
        if let Some(n) = self.shards.count {
            if n == 0 || n > SHARDS_MAX {
                return Err(invalid(
                    "shards.count",
                    format!("{n} is not in 1..={SHARDS_MAX}"),
                ));
            }
        }
        if self.shards.spin_before_park_us > SPIN_BEFORE_PARK_US_MAX {
            return Err(invalid(
                "shards.spin_before_park_us",
                format!(
                    "{} is over {SPIN_BEFORE_PARK_US_MAX} (one second)",
                    self.shards.spin_before_park_us
                ),
            ));
        }
        self.validate_connections()?;
        self.bridge.validate()?;
        let l = &self.limits;
        if !(NATIVE_FRAME_BYTES_MIN..=NATIVE_FRAME_BYTES_MAX).contains(&self.native.max_frame_bytes)
        {
            return Err(invalid(
                "native.max_frame_bytes",
                format!("must be between {NATIVE_FRAME_BYTES_MIN} and {NATIVE_FRAME_BYTES_MAX}"),
            ));
        }
        for (key, value) in [
            ("limits.max_message_bytes", l.max_message_bytes),
            ("limits.max_batch_events", l.max_batch_events),
            (
                "limits.max_subscriptions_per_connection",
                l.max_subscriptions_per_connection,
            ),
            ("limits.subscriber_queue_events", l.subscriber_queue_events),
            ("limits.subscriber_queue_bytes", l.subscriber_queue_bytes),
            ("limits.max_topics_per_shard", l.max_topics_per_shard),
            ("limits.max_topic_handles", l.max_topic_handles),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if l.max_topic_handles > TOPIC_HANDLES_MAX {
            return Err(invalid(
                "limits.max_topic_handles",
                format!("must be at most {TOPIC_HANDLES_MAX}"),
            ));
        }
        if l.max_metadata_entries > METADATA_ENTRIES_MAX {
            return Err(invalid(
                "limits.max_metadata_entries",
                format!("must be at most {METADATA_ENTRIES_MAX}"),
            ));
        }
        if l.max_message_bytes > MESSAGE_BYTES_MAX {
            return Err(invalid(
                "limits.max_message_bytes",
                format!("must be at most {MESSAGE_BYTES_MAX}"),
            ));
        }
        if l.max_message_bytes > self.native.max_frame_bytes {
            return Err(invalid(
                "limits.max_message_bytes",
                format!(
                    "{} is larger than native.max_frame_bytes ({}), so such events could never be sent",
                    l.max_message_bytes, self.native.max_frame_bytes
                ),
            ));
        }
        Ok(())
    }

    /// The settings that find dead clients and bound each door's connections.
    fn validate_connections(&self) -> Result<(), ConfigError> {
        let c = &self.connections;
        if c.keepalive_idle_s > 0 {
            for (key, value, max) in [
                (
                    "connections.keepalive_idle_s",
                    c.keepalive_idle_s,
                    KEEPALIVE_S_MAX,
                ),
                (
                    "connections.keepalive_interval_s",
                    c.keepalive_interval_s,
                    KEEPALIVE_S_MAX,
                ),
                (
                    "connections.keepalive_probes",
                    c.keepalive_probes,
                    KEEPALIVE_PROBES_MAX,
                ),
            ] {
                if value == 0 || value > max {
                    return Err(invalid(
                        key,
                        format!("{value} is not in 1..={max} (the kernel's range)"),
                    ));
                }
            }
        }
        if c.user_timeout_ms > USER_TIMEOUT_MS_MAX {
            return Err(invalid(
                "connections.user_timeout_ms",
                format!(
                    "{} is over {USER_TIMEOUT_MS_MAX} (the kernel's range)",
                    c.user_timeout_ms
                ),
            ));
        }
        if self.grpc.ping_interval_ms > 0 && self.grpc.ping_timeout_ms == 0 {
            return Err(invalid(
                "grpc.ping_timeout_ms",
                "must be at least 1 while grpc.ping_interval_ms is on",
            ));
        }
        for (key, max) in [
            ("native.max_connections", self.native.max_connections),
            ("grpc.max_connections", self.grpc.max_connections),
            (
                "metrics.max_connections",
                Some(self.metrics.max_connections),
            ),
        ] {
            if max == Some(0) {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        Ok(())
    }

    /// The CPU of each shard (None: unpinned), checked against the CPUs this process may use.
    pub fn shard_cpus(&self, available: &[usize]) -> Result<Vec<Option<usize>>, ConfigError> {
        if available.is_empty() && self.shards.pin {
            return Err(invalid(
                "shards.pin",
                "cannot tell which CPUs this process may use; run with --no-pin",
            ));
        }
        let count = self.shards.count.unwrap_or(available.len().max(1));
        if !self.shards.pin {
            return Ok(vec![None; count]);
        }
        if count > available.len() {
            return Err(invalid(
                "shards.count",
                format!(
                    "{count} pinned shards need {count} CPUs, but this process may use {} ({:?}); use fewer shards or --no-pin",
                    available.len(),
                    available
                ),
            ));
        }
        Ok(available[..count].iter().map(|&c| Some(c)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(Config::from_yaml("").unwrap(), Config::default());
        Config::default().validate().unwrap();
    }

    #[test]
    fn yaml_overrides_what_it_names() {
        let c = Config::from_yaml("native:\n  port: 7000\nlimits:\n  max_batch_events: 5\nshards:\n  count: 3\n  pin: false\n").unwrap();
        assert_eq!(c.native.port, 7000);
        assert_eq!(c.limits.max_batch_events, 5);
        assert_eq!(c.limits.max_metadata_entries, 64);
        assert_eq!(c.shard_cpus(&[0]).unwrap(), vec![None, None, None]);
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let e = Config::from_yaml("native:\n  prot: 7000\n").unwrap_err();
        assert!(e.contains("prot"), "{e}");
    }

    #[test]
    fn conflicting_ports_name_both_keys() {
        let mut c = Config::default();
        c.metrics.port = c.native.port;
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.starts_with("metrics.port") && e.contains("native.port"),
            "{e}"
        );
    }

    #[test]
    fn low_latency_mode_is_a_bounded_shard_setting() {
        let c = Config::from_yaml("shards:\n  spin_before_park_us: 50\n").unwrap();
        assert_eq!(c.shards.spin_before_park_us, 50);
        assert_eq!(Config::default().shards.spin_before_park_us, 0);
        let c = Config::from_yaml("shards:\n  spin_before_park_us: 2000000\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("shards.spin_before_park_us"), "{e}");
    }

    #[test]
    fn pinned_shards_cannot_outnumber_cpus() {
        let mut c = Config::default();
        c.shards.count = Some(4);
        let e = c.shard_cpus(&[0, 1]).unwrap_err().to_string();
        assert!(e.starts_with("shards.count"), "{e}");
        c.shards.count = None;
        assert_eq!(c.shard_cpus(&[0, 1]).unwrap(), vec![Some(0), Some(1)]);
    }

    #[test]
    fn the_seed_yaml_parses_and_mtls_turns_udp_off() {
        let c = Config::from_yaml(
            "grpc:\n  port: 9200\n  tls:\n    enabled: true\n    cert_file: /etc/eventstream/server.crt\n    key_file: /etc/eventstream/server.key\n    ca_file: /etc/eventstream/ca.crt\n    client_auth: require  # mTLS; also: none, optional\n",
        )
        .unwrap();
        assert_eq!(c.grpc.tls.client_auth, ClientAuth::Require);
        assert!(!c.udp_enabled());
        let e = c.grpc.tls.load("grpc", &[b"h2"]).unwrap_err().to_string();
        assert!(
            e.starts_with("grpc.tls.cert_file: /etc/eventstream/server.crt"),
            "{e}"
        );
    }

    #[test]
    fn dead_client_settings_parse_and_are_checked_with_their_key() {
        let c = Config::from_yaml(
            "connections:\n  keepalive_idle_s: 5\n  write_deadline_ms: 250\nnative:\n  max_connections: 10\ngrpc:\n  ping_interval_ms: 100\n",
        )
        .unwrap();
        assert_eq!(c.connections.keepalive_idle_s, 5);
        assert_eq!(c.connections.write_deadline_ms, 250);
        assert_eq!(c.native.max_connections, Some(10));
        assert_eq!(c.grpc.max_connections, None);
        assert_eq!(c.grpc.ping_interval_ms, 100);
        c.validate().unwrap();
        for (yaml, key) in [
            (
                "connections:\n  keepalive_probes: 0\n",
                "connections.keepalive_probes",
            ),
            (
                "connections:\n  keepalive_interval_s: 40000\n",
                "connections.keepalive_interval_s",
            ),
            (
                "connections:\n  user_timeout_ms: 3000000000\n",
                "connections.user_timeout_ms",
            ),
            ("grpc:\n  ping_timeout_ms: 0\n", "grpc.ping_timeout_ms"),
            ("native:\n  max_connections: 0\n", "native.max_connections"),
            ("grpc:\n  max_connections: 0\n", "grpc.max_connections"),
            (
                "metrics:\n  max_connections: 0\n",
                "metrics.max_connections",
            ),
        ] {
            let e = Config::from_yaml(yaml).unwrap().validate().unwrap_err();
            assert!(e.to_string().starts_with(key), "{yaml}: {e}");
        }
        // Keepalive off: its other settings do not matter.
        let off = "connections:\n  keepalive_idle_s: 0\n  keepalive_probes: 0\n";
        Config::from_yaml(off).unwrap().validate().unwrap();
    }

    #[test]
    fn bound_errors_state_the_bound() {
        let error = |yaml: &str| Config::from_yaml(yaml).unwrap().validate().unwrap_err();
        for (yaml, text) in [
            (
                "shards:\n  count: 1025\n",
                "shards.count: 1025 is not in 1..=1024",
            ),
            (
                "shards:\n  spin_before_park_us: 1000001\n",
                "shards.spin_before_park_us: 1000001 is over 1000000 (one second)",
            ),
            (
                "native:\n  max_frame_bytes: 1023\n",
                "native.max_frame_bytes: must be between 1024 and 4294967295",
            ),
            (
                "limits:\n  max_metadata_entries: 65536\n",
                "limits.max_metadata_entries: must be at most 65535",
            ),
            (
                "connections:\n  user_timeout_ms: 2147483648\n",
                "connections.user_timeout_ms: 2147483648 is over 2147483647 (the kernel's range)",
            ),
        ] {
            assert_eq!(error(yaml).to_string(), text, "{yaml}");
        }
    }

    #[test]
    fn zero_limits_are_refused() {
        let mut c = Config::default();
        c.limits.subscriber_queue_events = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("limits.subscriber_queue_events"));
    }
}
