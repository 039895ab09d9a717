//! Joining eventstream nodes through NATS, so that events published on one node reach
//! subscribers on others without a cluster protocol of eventstream's own: a node exports
//! local events of chosen topics to NATS subjects, and imports what its local subscribers ask
//! for. docs/BRIDGE.md says what a user sees.
//!
//! The NATS client runs on a thread of its own ([`link`], a tokio runtime), so no shard ever
//! waits for NATS. Shards talk to it through bounded channels ([`local`]):
//!
//! - export: shard 0 holds one subscription per export pattern; its queue sheds by priority
//!   like any subscriber's when NATS is slow or down, and its drained events go to the link
//!   as batches of native EVENT frames;
//! - import: every shard tells the link which patterns its local subscribers start and stop
//!   asking for ([`interest`]); the link subscribes in NATS, and sends what arrives to the
//!   topic's owner shard, which publishes it as a local event that carries its origin.
//!
//! The parts with no I/O fix how events look in NATS: [`subject`] (topics as subjects) and
//! [`headers`] (an event's fields and origin as headers).

pub mod headers;
pub mod interest;
mod link;
mod local;
pub mod subject;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use crate::config::{BridgeConfig, ConfigError};
use crate::engine::{Pattern, RawEvent};
pub use local::attach;
use subject::Prefix;

/// Export batches that may wait for the link before shard 0's export task waits (and its
/// queue starts to shed).
const EXPORT_BATCHES_MAX: usize = 64;
/// Imported events that may wait for one shard before the link drops more for it (counted).
const IMPORT_EVENTS_MAX: usize = 16 * 1024;

/// The bridge's counters, shared by its thread, the shards and the metrics door.
#[derive(Debug, Default)]
pub struct BridgeStats {
    /// Events published to NATS.
    pub exported: AtomicU64,
    /// Events not handed to NATS: refused by the client, over NATS's max_payload, or met by a
    /// bug in the mapping.
    pub export_failed: AtomicU64,
    /// Events shed from the export queue while NATS was slow or down, by priority (CRITICAL
    /// ones too: the queue never cuts).
    pub export_shed: [AtomicU64; 5],
    /// Events received from NATS and published on this node.
    pub imported: AtomicU64,
    /// Messages from NATS that were not valid events (counted, not published).
    pub import_refused: AtomicU64,
    /// Imported events dropped because their shard was behind.
    pub import_dropped: AtomicU64,
    /// Connections to NATS made again after one was lost.
    pub reconnects: AtomicU64,
    /// Connected to NATS now.
    pub connected: AtomicBool,
    /// The last round trip to the NATS server, in microseconds (0: not measured yet).
    pub rtt_us: AtomicU64,
}

impl BridgeStats {
    /// Adds one to `counter`.
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Everything the bridge runs with, checked.
#[derive(Clone, Debug)]
struct Settings {
    urls: Vec<String>,
    prefix: Prefix,
    export: Vec<Pattern>,
    import: Vec<Pattern>,
    /// This node in the origin header: `node@start_ms`.
    origin: String,
    required: bool,
    user: Option<(String, String)>,
    credentials_file: Option<std::path::PathBuf>,
    tls_ca_file: Option<std::path::PathBuf>,
    /// The client certificate and its key.
    tls_client: Option<(std::path::PathBuf, std::path::PathBuf)>,
    tls_required: bool,
}

/// What one shard needs of the bridge.
pub struct ShardTap {
    /// Shard 0's: where its export task sends batches of EVENT frames.
    exports: Option<flume::Sender<Bytes>>,
    export_patterns: Vec<Pattern>,
    interest: flume::Sender<interest::LocalChange>,
    imports: flume::Receiver<RawEvent>,
    required: bool,
    stats: Arc<BridgeStats>,
}

/// The running bridge: its thread, and how to stop it.
pub struct Bridge {
    stop: flume::Sender<()>,
    thread: std::thread::JoinHandle<()>,
    /// Its counters.
    pub stats: Arc<BridgeStats>,
}

impl Bridge {
    /// Starts the bridge's thread for a server of `shards` shards; each shard then gets its
    /// tap ([`attach`]). Returns None when the configuration has no bridge.
    pub fn start(
        config: &BridgeConfig,
        shards: usize,
    ) -> Result<Option<(Bridge, Vec<ShardTap>)>, ConfigError> {
        if !config.enabled() {
            return Ok(None);
        }
        let settings = Settings {
            urls: config.urls.clone(),
            prefix: config.prefix()?,
            export: config.export_patterns()?,
            import: config.import_patterns()?,
            origin: format!("{}@{}", node_id(&config.node_id), start_ms()),
            required: config.required,
            user: config.user.clone().zip(config.password.clone()),
            credentials_file: config.credentials_file.clone(),
            tls_ca_file: config.tls_ca_file.clone(),
            tls_client: config
                .tls_cert_file
                .clone()
                .zip(config.tls_key_file.clone()),
            tls_required: config.tls_required(),
        };
        let stats = Arc::new(BridgeStats::default());
        let (export_tx, export_rx) = flume::bounded(EXPORT_BATCHES_MAX);
        let (interest_tx, interest_rx) = flume::unbounded();
        let (stop, stopped) = flume::bounded(1);
        let mut import_txs = Vec::with_capacity(shards);
        let mut taps = Vec::with_capacity(shards);
        for shard in 0..shards {
            let (import_tx, import_rx) = flume::bounded(IMPORT_EVENTS_MAX);
            import_txs.push(import_tx);
            taps.push(ShardTap {
                exports: (shard == 0 && !settings.export.is_empty()).then(|| export_tx.clone()),
                export_patterns: settings.export.clone(),
                interest: interest_tx.clone(),
                imports: import_rx,
                required: settings.required,
                stats: stats.clone(),
            });
        }
        let link = link::Link {
            settings,
            exports: export_rx,
            interest: interest_rx,
            imports: import_txs,
            stats: stats.clone(),
            stopped,
        };
        let thread = std::thread::Builder::new()
            .name("nats-bridge".into())
            .spawn(move || link.run())
            .map_err(|e| {
                crate::config::invalid("bridge", format!("cannot start its thread: {e}"))
            })?;
        Ok(Some((
            Bridge {
                stop,
                thread,
                stats: stats.clone(),
            },
            taps,
        )))
    }

    /// Stops the bridge (after the shards stopped): what waits to be exported is flushed for
    /// a moment, then the connection closes.
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// `configured` (checked: no spaces), or the host's name if it has none, or "node".
fn node_id(configured: &str) -> String {
    if !configured.is_empty() {
        return configured.to_owned();
    }
    let spaced = |c: char| c.is_whitespace() || c.is_control();
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty() && !name.contains(spaced))
        .unwrap_or_else(|| "node".to_owned())
}

/// Now, Unix milliseconds: tells this run of a node from its earlier ones.
fn start_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}
