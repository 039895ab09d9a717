//! The soak's subscribers: native and gRPC, exact and wildcard, each checking every event
//! against its [`Ledger`]; and the slow subscriber, which reads at a trickle until the run
//! closes, so the server must shed for it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use prost::Message;

use super::ledger::{Flow, Ledger};
use eventstream::engine::Priority;
use eventstream::grpc::framing::MessageReader;
use eventstream::native::client::{Client, ClientError};
use eventstream::proto;

/// The largest message a soak client accepts from the server: the server's default message
/// limit, which no soak event comes near.
pub const MESSAGE_BYTES_MAX: usize = 4 << 20;

/// How long a subscriber waits for an event before looking at the run's state again.
const POLL: Duration = Duration::from_millis(200);
/// How long the closing markers may take to reach every subscriber once the run closes.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// What a subscriber saw, and what the server says it did for it (native only).
#[derive(serde::Serialize)]
pub struct Report {
    pub name: String,
    pub door: &'static str,
    pub pattern: String,
    pub received: u64,
    pub gaps: u64,
    /// The subscription's final counters from UNSUBSCRIBED (native subscriptions).
    pub server_delivered: Option<u64>,
    pub server_shed: Option<u64>,
    #[serde(skip)]
    pub ledger: Ledger,
}

/// A native subscription, confirmed before this returns; its reading thread starts with
/// [`NativeSubscriber::start`].
pub struct NativeSubscriber {
    client: Client,
    sub_id: u32,
    pattern: String,
    ledger: Ledger,
    /// The slow subscriber: its reading rate, events/s, until the run closes.
    slow: Option<f64>,
}

impl NativeSubscriber {
    pub fn subscribe(
        server: &str,
        pattern: &str,
        ledger: Ledger,
        slow: Option<f64>,
    ) -> Result<NativeSubscriber, String> {
        let mut client = Client::connect(server).map_err(|e| e.to_string())?;
        client
            .set_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let sub_id = client
            .subscribe(pattern, Priority::Batch)
            .map_err(|e| format!("subscribe {pattern}: {e}"))?;
        client.set_timeout(Some(POLL)).map_err(|e| e.to_string())?;
        Ok(NativeSubscriber {
            client,
            sub_id,
            pattern: pattern.to_owned(),
            ledger,
            slow,
        })
    }

    /// Reads until every topic's closing marker arrived, then unsubscribes and reports the
    /// server's counters for the subscription.
    pub fn start(self, flow: Arc<Flow>) -> thread::JoinHandle<Result<Report, String>> {
        thread::spawn(move || {
            let name = self.ledger.name.clone();
            let result = self.run(&flow);
            if result.is_err() {
                flow.fail();
            }
            result.map_err(|e| format!("{name}: {e}"))
        })
    }

    fn run(mut self, flow: &Flow) -> Result<Report, String> {
        let mut drain_began: Option<Instant> = None;
        let mut pace = self.slow.map(super::pace::Pace::new);
        loop {
            if let Some(pace) = pace.as_mut() {
                while pace.available(1) == 0 && !flow.draining.load(Ordering::Acquire) {
                    thread::sleep(super::pace::IDLE);
                }
                pace.spend(1);
            }
            let ledger = &mut self.ledger;
            let read = self
                .client
                .next_event_with(|d| ledger.record(d.event.topic, d.sequence, d.event.payload));
            match read {
                Ok(done) => {
                    if done? {
                        break;
                    }
                }
                Err(ClientError::Timeout(_)) => {}
                Err(e) => return Err(format!("after {} events: {e}", self.ledger.received())),
            }
            if flow.aborted() {
                return Err("stopped: another part of the run failed".into());
            }
            if flow.draining.load(Ordering::Acquire) {
                let began = *drain_began.get_or_insert_with(Instant::now);
                if began.elapsed() > DRAIN_TIMEOUT {
                    return Err(format!(
                        "the closing markers did not all arrive within {DRAIN_TIMEOUT:?}"
                    ));
                }
            }
        }
        self.client
            .set_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let (delivered, shed) = self
            .client
            .unsubscribe(self.sub_id)
            .map_err(|e| format!("unsubscribe: {e}"))?;
        Ok(Report {
            name: self.ledger.name.clone(),
            door: "native",
            pattern: self.pattern,
            received: self.ledger.received(),
            gaps: self.ledger.gaps(),
            server_delivered: Some(delivered),
            server_shed: Some(shed),
            ledger: self.ledger,
        })
    }
}

/// A gRPC Subscribe call on its own connection and thread; `registered` is told once the
/// server answered the call's headers (the subscription is then registered on every shard).
pub fn grpc_subscriber(
    addr: String,
    pattern: String,
    mut ledger: Ledger,
    flow: Arc<Flow>,
    registered: std::sync::mpsc::Sender<Result<(), String>>,
) -> thread::JoinHandle<Result<Report, String>> {
    thread::spawn(move || {
        let name = ledger.name.clone();
        let result = crate::grpc::runtime().and_then(|rt| {
            let local = tokio::task::LocalSet::new();
            local.block_on(&rt, async {
                let mut body = match open_subscribe(&addr, &pattern).await {
                    Ok(body) => {
                        let _ = registered.send(Ok(()));
                        body
                    }
                    Err(e) => {
                        let _ = registered.send(Err(e.clone()));
                        return Err(e);
                    }
                };
                read_events(&mut body, &mut ledger, &flow).await
            })
        });
        if result.is_err() {
            flow.fail();
        }
        result
            .map(|()| Report {
                name: name.clone(),
                door: "grpc",
                pattern,
                received: ledger.received(),
                gaps: ledger.gaps(),
                server_delivered: None,
                server_shed: None,
                ledger,
            })
            .map_err(|e| format!("{name}: {e}"))
    })
}

/// Reads gRPC-framed events from `body` into `ledger` until every closing marker arrived.
pub async fn read_events(
    body: &mut h2::RecvStream,
    ledger: &mut Ledger,
    flow: &Flow,
) -> Result<(), String> {
    let mut reader = MessageReader::default();
    let mut messages = Vec::new();
    let mut drain_began: Option<Instant> = None;
    loop {
        if flow.aborted() {
            return Err("stopped: another part of the run failed".into());
        }
        if flow.draining.load(Ordering::Acquire) {
            let began = *drain_began.get_or_insert_with(Instant::now);
            if began.elapsed() > DRAIN_TIMEOUT {
                return Err(format!(
                    "the closing markers did not all arrive within {DRAIN_TIMEOUT:?}"
                ));
            }
        }
        let chunk = match tokio::time::timeout(POLL, body.data()).await {
            Err(_) => continue,
            Ok(None) => {
                let trailers = body.trailers().await.map_err(|e| e.to_string())?;
                let status = trailers
                    .as_ref()
                    .and_then(|t| t.get("grpc-status"))
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("missing")
                    .to_owned();
                return Err(format!(
                    "the call ended (grpc-status {status}) after {} events",
                    ledger.received()
                ));
            }
            Ok(Some(chunk)) => chunk.map_err(|e| e.to_string())?,
        };
        let _ = body.flow_control().release_capacity(chunk.len());
        reader
            .push(chunk, MESSAGE_BYTES_MAX, &mut messages)
            .map_err(|e| e.to_string())?;
        for message in messages.drain(..) {
            let event = proto::Event::decode(message).map_err(|e| format!("Event: {e}"))?;
            if ledger.record(event.topic.as_bytes(), event.sequence, &event.payload)? {
                return Ok(());
            }
        }
    }
}

/// Opens a Subscribe call; returns its response body once the server answered the headers.
pub async fn open_subscribe(addr: &str, pattern: &str) -> Result<h2::RecvStream, String> {
    let client = crate::grpc::connect(addr).await?;
    let mut client = client.ready().await.map_err(|e| e.to_string())?;
    let request = crate::grpc::request(addr, "Subscribe", &[]);
    let (response, mut send) = client
        .send_request(request, false)
        .map_err(|e| e.to_string())?;
    let body = crate::grpc::framed(&proto::SubscribeRequest {
        topic_pattern: pattern.to_owned(),
        min_priority: proto::Priority::Batch as i32,
    });
    send.send_data(body, true).map_err(|e| e.to_string())?;
    let response = response.await.map_err(|e| e.to_string())?;
    if response.status() != 200 {
        return Err(format!(
            "Subscribe {pattern}: HTTP status {}",
            response.status()
        ));
    }
    if response.headers().contains_key("grpc-status") {
        crate::grpc::check_status(Some(response.headers()))
            .map_err(|e| format!("Subscribe {pattern}: {e}"))?;
    }
    Ok(response.into_body())
}
