//! The bridge's own thread: one connection to NATS (the official client, on a tokio
//! current-thread runtime), the export of what shard 0 sends, the NATS subscriptions the
//! node's interest needs, and the import of what they receive, to each topic's owner shard.

use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::{self, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{Client, ConnectOptions, HeaderMap, HeaderName};
use bytes::Bytes;
use futures_lite::StreamExt;
use tokio::task::JoinHandle;

use super::headers::{event_of, headers_of, is_imported, Header, EVENT_HEADER, METADATA_HEADER};
use super::interest::{Change, Interest, LocalChange};
use super::subject::{subject_of, topic_of};
use super::{BridgeStats, Settings};
use crate::engine::routing::owner_of;
use crate::engine::{EventView, IdView, Priority, RawEvent};
use crate::native::codec::{self, ServerFrame};

/// How often the round trip to NATS is measured.
const RTT_INTERVAL: Duration = Duration::from_secs(5);
/// How long a stopping bridge waits for what it still has to export to reach NATS.
const FLUSH_AT_STOP: Duration = Duration::from_secs(2);
/// Messages one NATS subscription may buffer in the client before NATS counts this node as
/// a slow consumer.
const SUBSCRIPTION_CAPACITY_MESSAGES: usize = 64 * 1024;

/// The header names, made once: the client allocates a name made from text, per event.
const EVENT_HEADER_NAME: HeaderName = HeaderName::from_static(EVENT_HEADER);
const METADATA_HEADER_NAME: HeaderName = HeaderName::from_static(METADATA_HEADER);

/// What a NATS header block adds to its headers: `NATS/1.0\r\n` before, `\r\n` after.
const HEADERS_FRAMING_BYTES: usize = 10 + 2;
/// What a header line adds to its name and value: `: ` and `\r\n`.
const HEADER_FRAMING_BYTES: usize = 4;

/// The thread's state, moved onto it.
pub(super) struct Link {
    pub(super) settings: Settings,
    pub(super) exports: flume::Receiver<Bytes>,
    pub(super) interest: flume::Receiver<LocalChange>,
    pub(super) imports: Vec<flume::Sender<RawEvent>>,
    pub(super) stats: Arc<BridgeStats>,
    pub(super) stopped: flume::Receiver<()>,
}

impl Link {
    /// The thread's body: serves until the server stops the bridge.
    pub(super) fn run(self) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let runtime = match runtime {
            Ok(runtime) => runtime,
            Err(e) => return crate::log_line!("bridge: cannot start its runtime: {e}"),
        };
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, self.serve());
    }

    async fn serve(self) {
        let client = match self.connect().await {
            Ok(client) => client,
            Err(e) => return crate::log_line!("bridge: {e}"),
        };
        let exporting = tokio::task::spawn_local(export(
            client.clone(),
            self.exports.clone(),
            self.settings.clone(),
            self.stats.clone(),
        ));
        let measuring = tokio::task::spawn_local(measure_rtt(client.clone(), self.stats.clone()));
        let interest = Rc::new(RefCell::new(Interest::new(
            self.settings.prefix.clone(),
            self.settings.import.clone(),
        )));
        let imports = Rc::new(self.imports);
        let mut held: HashMap<String, JoinHandle<()>> = HashMap::new();
        loop {
            let change = tokio::select! {
                change = self.interest.recv_async() => change,
                _ = self.stopped.recv_async() => break,
            };
            let Ok(LocalChange { pattern, added }) = change else {
                break;
            };
            let changes = match added {
                true => interest.borrow_mut().add(&pattern),
                false => interest.borrow_mut().remove(&pattern),
            };
            for change in changes {
                match change {
                    // Subscribing is a task of its own, as is what it then forwards: while
                    // NATS is away the client may take no commands until it is back, and
                    // this loop must go on taking changes (and the stop) meanwhile.
                    Change::Subscribe(subject) => {
                        let subscribing = subscribe_and_forward(
                            client.clone(),
                            subject.clone(),
                            interest.clone(),
                            imports.clone(),
                            self.settings.clone(),
                            self.stats.clone(),
                        );
                        let task = tokio::task::spawn_local(subscribing);
                        let earlier = held.insert(subject, task);
                        debug_assert!(earlier.is_none(), "a subject is subscribed once");
                    }
                    // Dropping the subscription unsubscribes it in NATS; one still being made
                    // is abandoned.
                    Change::Unsubscribe(subject) => {
                        if let Some(task) = held.remove(&subject) {
                            task.abort();
                        }
                    }
                }
            }
        }
        for (_, forwarding) in held {
            forwarding.abort();
        }
        measuring.abort();
        exporting.abort();
        let _ = tokio::time::timeout(FLUSH_AT_STOP, client.flush()).await;
    }

    /// A client that keeps (re)connecting in the background, never echoes this node's own
    /// messages back to it, and keeps `stats` up to date.
    async fn connect(&self) -> Result<Client, String> {
        let settings = &self.settings;
        let mut options = match &settings.credentials_file {
            Some(path) => ConnectOptions::with_credentials_file(path.clone())
                .await
                .map_err(|e| format!("bridge.credentials_file {}: {e}", path.display()))?,
            None => ConnectOptions::new(),
        };
        if let Some((user, password)) = &settings.user {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(ca) = &settings.tls_ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &settings.tls_client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        options = options.require_tls(settings.tls_required);
        let stats = self.stats.clone();
        let connected_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
        options = options
            .no_echo()
            .name(format!("eventstream {}", settings.origin))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .subscription_capacity(SUBSCRIPTION_CAPACITY_MESSAGES)
            .event_callback(move |event| {
                let stats = stats.clone();
                let connected_once = connected_once.clone();
                match event {
                    async_nats::Event::Connected => {
                        if connected_once.swap(true, Ordering::Relaxed) {
                            BridgeStats::count(&stats.reconnects);
                        }
                        stats.connected.store(true, Ordering::Relaxed);
                    }
                    async_nats::Event::Disconnected | async_nats::Event::Closed => {
                        if stats.connected.swap(false, Ordering::Relaxed) {
                            crate::log_line!("bridge: disconnected from NATS, reconnecting");
                        }
                    }
                    // Failed attempts repeat while NATS is away: the counters and the
                    // `connected` gauge tell of them, the log only of the disconnection.
                    async_nats::Event::ClientError(_) => {}
                    other => crate::log_line!("bridge: NATS: {other}"),
                }
                async {}
            });
        options
            .connect(settings.urls.as_slice())
            .await
            .map_err(|e| format!("cannot connect to NATS {:?}: {e}", settings.urls))
    }
}

/// Publishes what shard 0's export task sends: batches of native EVENT frames, each one
/// exported once (by the first export pattern matching its topic) unless it was imported.
async fn export(
    client: Client,
    batches: flume::Receiver<Bytes>,
    settings: Settings,
    stats: Arc<BridgeStats>,
) {
    let mut warned_too_large = false;
    while let Ok(batch) = batches.recv_async().await {
        let mut at = 0;
        while let Ok(Some(frame)) = codec::frame_at(&batch[at..], usize::MAX) {
            at += frame.wire_len;
            let Ok(ServerFrame::Event {
                sub_id,
                sequence,
                event,
            }) = ServerFrame::parse_in(frame, &batch)
            else {
                debug_assert!(false, "the export queue holds EVENT frames");
                continue;
            };
            // A bug met by one event must not end the export of all the others: the panic
            // hook has reported it, and the event counts as not exported.
            let mapped = panic::catch_unwind(AssertUnwindSafe(|| {
                message_of(&event, sequence, sub_id, &settings)
            }));
            let (subject, headers, headers_bytes) = match mapped {
                Ok(Some(message)) => message,
                Ok(None) => continue,
                Err(_) => {
                    BridgeStats::count(&stats.export_failed);
                    continue;
                }
            };
            // The server would answer a message over its limit by closing the connection,
            // losing what else was in flight; the client checks only messages without
            // headers. So such an event is not sent.
            let message_bytes = headers_bytes + event.payload.len();
            if message_bytes > client.max_payload() {
                if !warned_too_large {
                    warned_too_large = true;
                    crate::log_line!(
                        "bridge: an event of {message_bytes} bytes is over NATS's max_payload \
                         of {} bytes (the server's, or before the first connection the \
                         client's default), not exported (counted as failed; docs/BRIDGE.md)",
                        client.max_payload()
                    );
                }
                BridgeStats::count(&stats.export_failed);
                continue;
            }
            match client
                .publish_with_headers(subject, headers, event.payload.clone())
                .await
            {
                Ok(()) => BridgeStats::count(&stats.exported),
                Err(_) => BridgeStats::count(&stats.export_failed),
            }
        }
    }
}

/// The NATS subject and headers of an event that shard 0 queued for export under export
/// pattern `sub_id`, with the headers' size on the wire; None when this copy is not to go
/// (another pattern exports it, or it came from NATS).
fn message_of(
    event: &RawEvent,
    sequence: u64,
    sub_id: u32,
    settings: &Settings,
) -> Option<(String, HeaderMap, usize)> {
    // Checked when it was published: only its text is needed here.
    let Ok(topic) = std::str::from_utf8(&event.topic) else {
        debug_assert!(false, "a sequenced event's topic is UTF-8");
        return None;
    };
    let first = settings.export.iter().position(|p| p.matches(topic));
    if first != Some(sub_id as usize) {
        return None;
    }
    let view = view_of(event, sequence);
    if is_imported(&view) {
        return None;
    }
    let mut headers = HeaderMap::new();
    let mut headers_bytes = HEADERS_FRAMING_BYTES;
    headers_of(&view, &settings.origin, |header, value| {
        headers_bytes += header.name().len() + HEADER_FRAMING_BYTES + value.len();
        match header {
            Header::Event => headers.append(EVENT_HEADER_NAME, value),
            Header::Metadata => headers.append(METADATA_HEADER_NAME, value),
        }
    });
    Some((subject_of(&settings.prefix, topic), headers, headers_bytes))
}

/// An owned event of an EVENT frame, as the view the header mapping reads.
fn view_of(event: &RawEvent, sequence: u64) -> EventView<'_> {
    debug_assert!(
        Priority::from_u8(event.priority).is_some(),
        "a sequenced event's priority"
    );
    EventView {
        topic: &event.topic,
        id: IdView::Given(&event.id),
        payload: &event.payload,
        metadata_count: event.metadata.len() as u16,
        metadata: event.metadata.wire(),
        priority: Priority::from_u8(event.priority).unwrap_or(Priority::Medium),
        timestamp_ns: event.timestamp_ns,
        sequence,
    }
}

/// Subscribes to `subject` in NATS, then forwards what it receives.
async fn subscribe_and_forward(
    client: Client,
    subject: String,
    interest: Rc<RefCell<Interest>>,
    imports: Rc<Vec<flume::Sender<RawEvent>>>,
    settings: Settings,
    stats: Arc<BridgeStats>,
) {
    match client.subscribe(subject.clone()).await {
        Ok(subscription) => {
            forward(subscription, subject, interest, imports, settings, stats).await;
        }
        Err(e) => crate::log_line!("bridge: cannot subscribe to {subject}: {e}"),
    }
}

/// Sends what NATS subscription `via` receives to each event's owner shard, unless another
/// held subscription imports the same message.
async fn forward(
    mut subscription: async_nats::Subscriber,
    via: String,
    interest: Rc<RefCell<Interest>>,
    imports: Rc<Vec<flume::Sender<RawEvent>>>,
    settings: Settings,
    stats: Arc<BridgeStats>,
) {
    while let Some(message) = subscription.next().await {
        // As on export, a bug met by one message must not end the import of the others.
        let mapped = panic::catch_unwind(AssertUnwindSafe(|| {
            import_of(&message, &via, &interest.borrow(), &settings)
        }));
        let event = match mapped {
            Ok(Import::Event(event)) => event,
            Ok(Import::ViaAnother) => continue,
            Ok(Import::Refused) | Err(_) => {
                BridgeStats::count(&stats.import_refused);
                continue;
            }
        };
        let owner = owner_of(&event.topic, imports.len());
        match imports[owner].try_send(event) {
            Ok(()) => {}
            Err(flume::TrySendError::Full(_)) => BridgeStats::count(&stats.import_dropped),
            Err(flume::TrySendError::Disconnected(_)) => return,
        }
    }
}

/// What becomes of a message a NATS subscription received.
enum Import {
    /// The event it stands for, to publish.
    Event(RawEvent),
    /// Another held subscription imports it.
    ViaAnother,
    /// Not a valid event (another publisher on the subjects).
    Refused,
}

/// What becomes of `message`, received through NATS subscription `via`.
fn import_of(
    message: &async_nats::Message,
    via: &str,
    interest: &Interest,
    settings: &Settings,
) -> Import {
    if !interest.imports_via(via, message.subject.as_str()) {
        return Import::ViaAnother;
    }
    let Ok(topic) = topic_of(&settings.prefix, message.subject.as_str()) else {
        return Import::Refused;
    };
    let headers = message.headers.iter().flat_map(|map| {
        map.iter().flat_map(|(name, values)| {
            values
                .iter()
                .map(move |value| (name.as_ref(), value.as_str()))
        })
    });
    match event_of(topic.bytes().clone(), message.payload.clone(), headers) {
        Ok(event) => Import::Event(event),
        Err(_) => Import::Refused,
    }
}

/// Measures the round trip to the NATS server (a PING and its PONG) every [`RTT_INTERVAL`].
async fn measure_rtt(client: Client, stats: Arc<BridgeStats>) {
    loop {
        tokio::time::sleep(RTT_INTERVAL).await;
        if !stats.connected.load(Ordering::Relaxed) {
            continue;
        }
        let start = Instant::now();
        if client.flush().await.is_ok() {
            let rtt_us = start.elapsed().as_micros().max(1) as u64;
            stats.rtt_us.store(rtt_us, Ordering::Relaxed);
        }
    }
}
