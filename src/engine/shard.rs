//! One shard: the engine state a single core owns, and the only code that touches it.
//!
//! A shard owns a slice of the topics (by [`owner_of`]): it sequences them and fans their
//! events out. It is also the home of the subscriptions its clients made: their queues live
//! here. Everything else travels between shards as [`ShardMsg`]s, batched per peer in an
//! outbox that a flusher task sends whenever it gets to run, so one channel send and one
//! wake-up carry everything a read from a socket produced.

use hashbrown::HashMap;
use std::cell::{Cell, RefCell};
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use glommio::channels::channel_mesh::{Receivers, Senders};
use hashbrown::HashTable;
use slab::Slab;

use super::event::{
    check_fields, share, Accepted, Event, EventError, EventRef, EventView, IdGenerator, Incoming,
    Priority, RawEvent,
};
use super::index::{SubEntry, SubKey, SubscriptionIndex};
use super::limits::Limits;
use super::messages::{Batch, PublishError, ShardMsg, ShardStats};
use super::notify::{Countdown, Notify};
use super::queue::{Offer, SharedRecords, SubscriberQueue};
use super::routing::{owner, owner_of, table_hash};
use super::run::{self, Numbering, Run};
use super::subscriber::{Consumer, EncodeEvent, Encoding, SubState, Subscriber};
use super::topic::{Pattern, RecentTopic, Topic};

/// Messages an outbox may hold before the doors of this shard stop reading from their
/// sockets: the engine is saturated and publishers must slow down (PROTOCOL.md §8.2).
const MAX_BACKLOG: usize = 64 * 1024;

/// Receives the answers to a client's publishes. Doors implement it to write them to their
/// client.
pub trait AckSink {
    /// Called once per acknowledged request, on the shard the request arrived on.
    fn acked(&self, request_id: u64, outcome: AckOutcome);
    /// Called for each event of an unacknowledged request that its owner could not sequence.
    fn refused(&self, request_id: u64, error: PublishError);
}

/// A door's [`AckSink`] registered with its shard, so that owners on other shards can name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SinkId(u64);

/// Who hears how a publish went.
pub enum Reply {
    /// Acknowledge once every event is sequenced (or report the first refusal).
    Ack(AckRequest),
    /// No acknowledgement; a refusal is still reported to the sink (nothing is lost silently).
    RefusalsOnly { sink: SinkId, request_id: u64 },
    /// Nobody can be told (UDP): refusals are counted only.
    Nobody,
}

/// [`Reply`] as it travels with each event to the owner shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Answer `Sequenced` for the pending request `token` of the publishing shard.
    Ack(u32),
    /// Answer `Refused` only if the event cannot be sequenced.
    Refusal {
        sink: SinkId,
        request_id: u64,
    },
    Nobody,
}

/// The answer to an acknowledged publish or batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AckOutcome {
    /// Ok once every event is sequenced; the first refusal otherwise.
    pub result: Result<(), PublishError>,
    /// Sequence number of the last event sequenced (a single publish: its own).
    pub sequence: u64,
    /// Events in the request.
    pub count: u32,
    /// From the request's decoding to its last event being sequenced by its owner.
    pub latency: Duration,
}

/// A publish that wants an answer.
pub struct AckRequest {
    pub sink: Rc<dyn AckSink>,
    pub request_id: u64,
    /// When the door finished decoding the request (start of `latency`).
    pub decoded_at: Instant,
}

enum Pending {
    Ack {
        request: AckRequest,
        remaining: u32,
        count: u32,
        last_sequence: u64,
        error: Option<PublishError>,
    },
    /// A run made of separate unacknowledged PUBLISH frames: a refusal is reported under
    /// each frame's own request id.
    Frames {
        sink: SinkId,
        request_ids: Vec<u64>,
    },
    Subscribe(Rc<Countdown>),
    Ping(Rc<PingGather>),
}

struct PingGather {
    countdown: Countdown,
    /// Each shard's counters, by shard id, as they answer.
    per_shard: RefCell<Vec<ShardStats>>,
}

struct TopicState {
    last_sequence: u64,
    /// Subscription index generation `matches` was computed at.
    generation: u64,
    /// Matching subscriptions, sorted by key so those of one home shard are adjacent.
    matches: Vec<SubEntry>,
}

#[derive(Default)]
struct Outbox {
    batch: RefCell<Batch>,
    wake: Notify,
}

/// A shard's engine state. Lives in an `Rc` on its own executor; never crosses threads.
pub struct Shard {
    id: usize,
    count: usize,
    limits: Limits,
    started: Instant,
    outboxes: Vec<Outbox>,
    /// Topics this shard owns, by [`table_hash`]: a parsed topic carries its hash, so a run
    /// of events on one topic hashes its name once, when it is parsed.
    topics: RefCell<HashTable<(Bytes, TopicState)>>,
    index: RefCell<SubscriptionIndex>,
    /// Subscriptions whose connection lives on this shard, by their shard-local key; looked up once
    /// per delivered event (foldhash: SipHash here was a measurable part of a delivery's cost,
    /// docs/PERFORMANCE.md).
    local: RefCell<HashMap<u64, Rc<Subscriber>>>,
    next_local: Cell<u64>,
    pending: RefCell<Slab<Pending>>,
    ids: RefCell<IdGenerator>,
    stats: RefCell<ShardStats>,
    /// Events taken from the queues of subscriptions homed here to be written (the
    /// subscriptions count into it as their doors drain them): `ShardStats::delivered`.
    delivered: Rc<Cell<u64>>,
    to_cut: RefCell<Vec<Rc<Subscriber>>>,
    sinks: RefCell<HashMap<SinkId, Rc<dyn AckSink>>>,
    next_sink: Cell<u64>,
    drained: Notify,
    closing: Cell<bool>,
    /// Woken when the server starts shutting down.
    pub shutdown: Notify,
}

impl Shard {
    /// Shard `id` of `count`, enforcing `limits`; `seed` makes its event ids unique.
    pub fn new(id: usize, count: usize, limits: Limits, seed: u64) -> Rc<Shard> {
        assert!(id < count && count <= usize::from(u16::MAX));
        Rc::new(Shard {
            id,
            count,
            limits,
            started: Instant::now(),
            outboxes: (0..count).map(|_| Outbox::default()).collect(),
            topics: RefCell::new(HashTable::new()),
            index: RefCell::default(),
            local: RefCell::default(),
            next_local: Cell::new(1),
            pending: RefCell::new(Slab::new()),
            ids: RefCell::new(IdGenerator::new(seed ^ (id as u64) << 48)),
            stats: RefCell::default(),
            delivered: Rc::default(),
            to_cut: RefCell::default(),
            sinks: RefCell::default(),
            next_sink: Cell::new(1),
            drained: Notify::default(),
            closing: Cell::new(false),
            shutdown: Notify::default(),
        })
    }

    /// This shard's index, 0-based.
    pub fn id(&self) -> usize {
        self.id
    }

    /// How many shards the server runs.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The limits every door enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Time since this shard started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// True once shutdown began.
    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// Starts the shutdown: doors stop accepting and close their connections.
    pub fn begin_shutdown(&self) {
        self.closing.set(true);
        self.shutdown.notify();
    }

    /// Starts the tasks that move batches to and from every other shard.
    pub fn spawn_links(self: &Rc<Self>, senders: Senders<Batch>, mut receivers: Receivers<Batch>) {
        let senders = Rc::new(senders);
        for peer in (0..self.count).filter(|&p| p != self.id) {
            let shard = self.clone();
            let senders = senders.clone();
            glommio::spawn_local(async move { shard.flush_to(peer, &senders).await }).detach();
        }
        for (peer, rx) in receivers.streams() {
            let shard = self.clone();
            glommio::spawn_local(async move {
                while let Some(batch) = rx.recv().await {
                    shard.handle_batch(peer, batch);
                    // Tasks of a shard share one thread: let the writers drain what this
                    // batch queued before taking the next one.
                    futures_lite::future::yield_now().await;
                }
            })
            .detach();
        }
    }

    async fn flush_to(&self, peer: usize, senders: &Senders<Batch>) {
        let outbox = &self.outboxes[peer];
        loop {
            let batch = std::mem::take(&mut *outbox.batch.borrow_mut());
            if batch.is_empty() {
                outbox.wake.wait().await;
                continue;
            }
            {
                let mut stats = self.stats.borrow_mut();
                stats.batches_out += 1;
                stats.messages_out += batch.msgs.len() as u64;
            }
            if senders.send_to(peer, batch).await.is_err() {
                return; // the peer is gone: the server is stopping
            }
            self.drained.notify();
        }
    }

    fn push(&self, to: usize, msg: ShardMsg) {
        debug_assert_ne!(to, self.id, "local work never goes through an outbox");
        let outbox = &self.outboxes[to];
        let mut batch = outbox.batch.borrow_mut();
        batch.msgs.push(msg);
        if batch.msgs.len() == 1 {
            outbox.wake.notify();
        }
    }

    /// Waits while the engine is saturated (an outbox holds too much): doors call this before
    /// reading more from a socket, which is how publishers get slowed down.
    pub async fn admit(&self) {
        while self
            .outboxes
            .iter()
            .any(|o| o.batch.borrow().msgs.len() > MAX_BACKLOG)
        {
            self.drained.wait().await;
        }
    }

    /// Checks a decoded event against PROTOCOL.md §5.1 and this shard's limits and fills id and
    /// timestamp (`received_ns`: when the bytes carrying it were read, Unix ns). `recent` is the
    /// publishing connection's last topic: an event repeating it reuses it instead of checking the
    /// name again ([`Event::validate_after`]), and the event's topic is remembered for the next.
    #[inline]
    pub fn validate_recent(
        &self,
        raw: RawEvent,
        recent: &RecentTopic,
        received_ns: i64,
    ) -> Result<Event, EventError> {
        let ids = &mut self.ids.borrow_mut();
        let previous = recent.get();
        let checked = Event::validate_after(raw, previous.as_ref(), &self.limits, ids, received_ns);
        drop(previous);
        // Returned as it came (no unwrapping and rewrapping): each move of an event is a copy
        // of 176 bytes, and this runs for every event.
        if let Ok(event) = &checked {
            recent.remember(&event.topic);
        }
        checked
    }

    /// Registers a door's sink for refusal reports; unregister it when its client goes.
    pub fn register_sink(&self, sink: Rc<dyn AckSink>) -> SinkId {
        let id = SinkId(self.next_sink.get());
        self.next_sink.set(id.0 + 1);
        self.sinks.borrow_mut().insert(id, sink);
        id
    }

    /// Forgets a sink: refusals still in flight for it are dropped (its client is gone).
    pub fn unregister_sink(&self, id: SinkId) {
        self.sinks.borrow_mut().remove(&id);
    }

    /// Validates and publishes one event the native door decoded in place (`raw`, borrowing
    /// `buffer`), reusing the connection's `recent` topic as
    /// [`validate_recent`](Self::validate_recent) does. The owned event is made only for
    /// another shard: subscribers here get it encoded from the buffer, so a publish whose
    /// subscribers (if any) all live here takes no reference count on the buffer.
    pub fn publish_in_place(
        &self,
        raw: EventRef<'_>,
        buffer: &Bytes,
        recent: &RecentTopic,
        received_ns: i64,
        reply: Reply,
    ) -> Result<(), EventError> {
        let known = recent.get();
        let parsed = match known.as_ref() {
            Some(topic) if topic.bytes()[..] == *raw.topic => None,
            _ => Some(Topic::parse(share(buffer, raw.topic))?),
        };
        let topic = (parsed.as_ref().or(known.as_ref())).expect("the recent topic or its own");
        let priority = check_fields(topic, &raw, &self.limits)?;
        let accepted = Accepted::checked(topic, priority, raw, buffer, received_ns);
        self.publish(std::iter::once(accepted), reply);
        drop(known);
        if let Some(topic) = parsed {
            recent.remember(&topic);
        }
        Ok(())
    }

    /// Publishes consecutive unacknowledged PUBLISH frames of one topic that one read brought
    /// (`frames`: request id and event, in place in `buffer`; no id or metadata of their own)
    /// as one run: their topic is checked once (reusing the connection's `recent` one), each
    /// event's fields on their own. Each frame stays its own request: one that breaks a rule
    /// is left out and returned with why (for its ERROR); if the owner refuses the run, the
    /// sink registered as `sink` hears of it under each frame's request id (unless it is gone).
    pub fn publish_frames(
        &self,
        frames: &[(u64, EventRef<'_>)],
        buffer: &Bytes,
        recent: &RecentTopic,
        received_ns: i64,
        sink: SinkId,
    ) -> Vec<(u64, EventError)> {
        let Some((_, first)) = frames.first() else {
            return Vec::new();
        };
        debug_assert!(frames.iter().all(|(_, e)| e.topic == first.topic));
        debug_assert!(frames
            .iter()
            .all(|(_, e)| e.id.is_empty() && e.metadata_count == 0));
        let known = recent
            .get()
            .clone()
            .filter(|t| t.bytes()[..] == *first.topic);
        let topic = match known.map_or_else(|| Topic::parse(share(buffer, first.topic)), Ok) {
            Ok(topic) => topic,
            Err(e) => {
                let refused = frames
                    .iter()
                    .map(|(id, _)| (*id, EventError::from(e.clone())));
                return refused.collect();
            }
        };
        let mut refused = Vec::new();
        let mut accepted = Vec::with_capacity(frames.len());
        for (request_id, event) in frames {
            match check_fields(&topic, event, &self.limits) {
                Ok(priority) => accepted.push((*request_id, event, priority)),
                Err(e) => refused.push((*request_id, e)),
            }
        }
        if accepted.is_empty() {
            return refused;
        }
        recent.remember(&topic);
        let run = Run::copied(topic, accepted.iter().map(|a| (a.1, a.2)), received_ns);
        self.stats.borrow_mut().received += u64::from(run.count);
        let request_ids = accepted.iter().map(|a| a.0).collect();
        let token = self
            .pending
            .borrow_mut()
            .insert(Pending::Frames { sink, request_ids });
        let token =
            u32::try_from(token).expect("pending requests are bounded by what connections read");
        self.route_run(run, Route::Ack(token), Some(Instant::now()));
        self.process_cuts();
        refused
    }

    /// Validates a whole batch decoded in place (`events`, borrowing `buffer`), then publishes
    /// it: all or nothing, so one refused event refuses the batch before any is published.
    /// Topics are reused as [`publish_in_place`](Self::publish_in_place) does: a run of events
    /// on one topic checks its name once. As there, the owned events are made only for other
    /// shards. On refusal: the index of the first refused event, and why.
    pub fn publish_batch_in_place(
        &self,
        events: &[EventRef<'_>],
        buffer: &Bytes,
        recent: &RecentTopic,
        received_ns: i64,
        reply: Reply,
    ) -> Result<(), (usize, EventError)> {
        // One entry per change of topic; each event keeps its topic's index and its priority.
        let mut topics: Vec<Topic> = recent.get().iter().cloned().collect();
        let mut checked: Vec<(usize, Priority)> = Vec::with_capacity(events.len());
        for (index, raw) in events.iter().enumerate() {
            if topics.last().is_none_or(|t| t.bytes()[..] != *raw.topic) {
                let topic =
                    Topic::parse(share(buffer, raw.topic)).map_err(|e| (index, e.into()))?;
                topics.push(topic);
            }
            let at = topics.len() - 1;
            let priority = check_fields(&topics[at], raw, &self.limits).map_err(|e| (index, e))?;
            checked.push((at, priority));
        }
        if let Some(last) = topics.last() {
            recent.remember(last);
        }
        let runs = plan_runs(events, &checked);
        if runs.iter().all(|r| r.len() == 1) {
            let accepted = events.iter().zip(&checked).map(|(raw, &(at, priority))| {
                Accepted::checked(&topics[at], priority, *raw, buffer, received_ns)
            });
            self.publish(accepted, reply);
            return Ok(());
        }
        // Events of one topic in a row, with no id or metadata of their own, go as runs: one
        // owner lookup, one range of sequence numbers and one message between shards each.
        let count = u32::try_from(events.len()).expect("batch sizes are limited far below u32");
        self.stats.borrow_mut().received += u64::from(count);
        let (route, now) = self.route(reply, runs.len() as u32, count);
        for span in runs {
            let (at, _) = checked[span.start];
            if span.len() == 1 {
                let (raw, priority) = (events[span.start], checked[span.start].1);
                let event = Accepted::checked(&topics[at], priority, raw, buffer, received_ns);
                self.publish_routed(event, route, now);
                continue;
            }
            let span = events[span.clone()].iter().zip(&checked[span]);
            let run = Run::copied(topics[at].clone(), span.map(|(e, c)| (e, c.1)), received_ns);
            self.route_run(run, route, now);
        }
        self.process_cuts();
        Ok(())
    }

    /// Publishes validated events, each to its topic's owner, and tells `reply` how it went.
    /// Events of one call to one topic keep their order.
    pub fn publish<I>(&self, events: I, reply: Reply)
    where
        I: IntoIterator,
        I::Item: Incoming,
        I::IntoIter: ExactSizeIterator,
    {
        let events = events.into_iter();
        let count = u32::try_from(events.len()).expect("batch sizes are limited far below u32");
        self.stats.borrow_mut().received += u64::from(count);
        let (route, now) = self.route(reply, count, count);
        for event in events {
            self.publish_routed(event, route, now);
        }
        self.process_cuts();
    }

    /// Sends one validated event to its topic's owner (or sequences it here), to be
    /// answered as `route` says.
    fn publish_routed(&self, event: impl Incoming, route: Route, now: Option<Instant>) {
        let home = owner(event.topic().route(), self.count);
        if home == self.id {
            let outcome = self.sequence(event);
            self.answer(self.id, route, outcome, now, 1);
        } else {
            let generated = event.new_id(&mut self.ids.borrow_mut());
            let event = event.into_event(generated, 0); // the owner sequences it
            self.push(home, ShardMsg::Publish { event, route });
        }
    }

    /// How the owners of a request's events answer it: `answers` owner answers complete the
    /// request (one per event, or one per run), and an ACK reports `count` events. With it,
    /// the one clock reading of the call, taken only when an ack will report it: it
    /// timestamps when the events were sequenced (a reading per unacknowledged native publish
    /// was a measurable part of its server time: docs/PERFORMANCE.md).
    fn route(&self, reply: Reply, answers: u32, count: u32) -> (Route, Option<Instant>) {
        match reply {
            Reply::Ack(request) => {
                let token = self.pending.borrow_mut().insert(Pending::Ack {
                    request,
                    remaining: answers,
                    count,
                    last_sequence: 0,
                    error: None,
                });
                if answers == 0 {
                    self.finish_ack(token);
                }
                let token = u32::try_from(token)
                    .expect("pending requests are bounded by what connections read");
                (Route::Ack(token), Some(Instant::now()))
            }
            Reply::RefusalsOnly { sink, request_id } => (Route::Refusal { sink, request_id }, None),
            Reply::Nobody => (Route::Nobody, None),
        }
    }

    /// Checks and publishes a run: `count` events of `topic` (validated when the client
    /// declared it) whose records lie in `buffer` at `records`, all or nothing. Its owner
    /// sequences it as one unit (consecutive sequence numbers) and answers `reply` once for
    /// the whole run. On refusal: the index of the first refused event, and why.
    pub fn publish_run(
        &self,
        topic: &Topic,
        records: &[u8],
        count: u32,
        buffer: &Bytes,
        received_ns: i64,
        reply: Reply,
    ) -> Result<(), (u32, EventError)> {
        let priorities = run::check(records, &self.limits)?;
        self.stats.borrow_mut().received += u64::from(count);
        let answers = u32::from(count > 0);
        let (route, now) = self.route(reply, answers, count);
        if count == 0 {
            return Ok(());
        }
        let run = Run {
            topic: topic.clone(),
            records: share(buffer, records),
            count,
            received_ns,
            priorities,
        };
        self.route_run(run, route, now);
        self.process_cuts();
        Ok(())
    }

    /// Sends a checked run to its topic's owner (or sequences it here, if this shard owns
    /// it), to be answered as `route` says.
    fn route_run(&self, run: Run, route: Route, now: Option<Instant>) {
        let home = owner(run.topic.route(), self.count);
        if home == self.id {
            let count = run.count;
            let outcome = self.sequence_run(run);
            self.answer(self.id, route, outcome, now, count);
        } else {
            self.push(home, ShardMsg::PublishRun { run, route });
        }
    }

    /// As the owner: tells the publishing shard `from` what became of one event.
    /// `at`: when the event was sequenced; read only for acknowledged routes.
    /// `events`: how many events the answer is about (one, or a run's), each of which a
    /// refusal refuses and, without an ACK, reports (PROTOCOL.md §5.2, PROTOCOL.md §5.7).
    fn answer(
        &self,
        from: usize,
        route: Route,
        outcome: Result<u64, PublishError>,
        at: Option<Instant>,
        events: u32,
    ) {
        if outcome.is_err() {
            self.stats.borrow_mut().refused += u64::from(events);
        }
        match (route, outcome) {
            (Route::Ack(token), outcome) => {
                let at = at.expect("acknowledged routes come with a clock reading");
                if from == self.id {
                    self.on_sequenced(token, outcome, at)
                } else {
                    self.push(from, ShardMsg::Sequenced { token, outcome, at });
                }
            }
            (Route::Refusal { sink, request_id }, Err(error)) if from == self.id => {
                for _ in 0..events {
                    self.on_refused(sink, request_id, error.clone())
                }
            }
            (Route::Refusal { sink, request_id }, Err(error)) => {
                for _ in 0..events {
                    let error = error.clone();
                    let refused = ShardMsg::Refused {
                        sink,
                        request_id,
                        error,
                    };
                    self.push(from, refused);
                }
            }
            (Route::Refusal { .. } | Route::Nobody, _) => {}
        }
    }

    fn on_refused(&self, sink: SinkId, request_id: u64, error: PublishError) {
        let sink = self.sinks.borrow().get(&sink).cloned();
        if let Some(sink) = sink {
            sink.refused(request_id, error);
        }
    }

    /// As the topic's owner: give the event its sequence number and hand it to every matching
    /// subscription, locally or through the outbox of its home shard.
    fn sequence(&self, event: impl Incoming) -> Result<u64, PublishError> {
        let mut topics = self.topics.borrow_mut();
        let state = self.topic_state(&mut topics, event.topic())?;
        state.last_sequence += 1;
        let sequence = state.last_sequence;
        self.stats.borrow_mut().sequenced += 1;

        let matches = &state.matches;
        let priority = event.priority();
        let (locals, remotes) = self.recipients(matches, priority);
        if locals + remotes == 0 {
            return Ok(sequence); // nobody wants it: the event is not even made
        }
        let generated = event.new_id(&mut self.ids.borrow_mut());
        if locals > 0 {
            // Subscriptions here receive the event as it lies, encoded into their queues.
            let view = event.sequenced_view(generated, sequence);
            for entry in matches.iter().filter(|e| e.min_priority <= priority) {
                if usize::from(entry.key.shard) == self.id {
                    self.deliver_local(entry.key.local, &view);
                }
            }
        }
        if remotes > 0 {
            // Other shards get the owned event, one message each.
            let mut event = Handout::new(event.into_event(generated, sequence), remotes);
            self.hand_out(matches, priority, |start, len| ShardMsg::Deliver {
                event: event.next(),
                start,
                len,
            });
            debug_assert!(event.is_spent(), "every recipient counted got the event");
        }
        Ok(sequence)
    }

    /// As the topic's owner: gives a run its range of sequence numbers (the last one is
    /// returned) and hands it to every matching subscription, locally or through the outbox
    /// of its home shard: one topic lookup, one message per other shard, for the whole run.
    fn sequence_run(&self, run: Run) -> Result<u64, PublishError> {
        let mut topics = self.topics.borrow_mut();
        let state = self.topic_state(&mut topics, &run.topic)?;
        let first_sequence = state.last_sequence + 1;
        state.last_sequence += u64::from(run.count);
        let last = state.last_sequence;
        self.stats.borrow_mut().sequenced += u64::from(run.count);

        let matches = &state.matches;
        let (locals, remotes) = self.recipients(matches, run.priorities.top);
        if locals + remotes == 0 {
            return Ok(last);
        }
        let ids = self.ids.borrow_mut().range(run.count, run.received_ns);
        let numbering = Numbering {
            first_sequence,
            ids,
        };
        if locals > 0 {
            let wanted = matches
                .iter()
                .filter(|e| e.min_priority <= run.priorities.top);
            let here = wanted.filter(|e| usize::from(e.key.shard) == self.id);
            self.deliver_run_local(here.map(|e| e.key.local), &run, &numbering);
        }
        if remotes > 0 {
            let mut run = Handout::new(run, remotes);
            let top = run.peek().priorities.top;
            self.hand_out(matches, top, |start, len| ShardMsg::DeliverRun {
                run: run.next(),
                numbering,
                start,
                len,
            });
            debug_assert!(run.is_spent(), "every recipient counted got the run");
        }
        Ok(last)
    }

    /// The state of `topic`, which this shard owns, made on its first event, with its list of
    /// matching subscriptions brought up to date. One probe of the table, whether the topic is
    /// there or not. Refused once shutdown began, or when a new topic would pass the limit.
    fn topic_state<'t>(
        &self,
        topics: &'t mut HashTable<(Bytes, TopicState)>,
        topic: &Topic,
    ) -> Result<&'t mut TopicState, PublishError> {
        if self.closing.get() {
            return Err(PublishError::ShuttingDown);
        }
        let key: &[u8] = topic.bytes();
        let known = topics.len();
        let entry = topics.entry(
            topic.table_hash(),
            |entry| entry.0 == key,
            |entry| table_hash(&entry.0),
        );
        let (_, state) = match entry {
            hashbrown::hash_table::Entry::Occupied(entry) => entry.into_mut(),
            hashbrown::hash_table::Entry::Vacant(entry) => {
                if known >= self.limits.max_topics_per_shard {
                    return Err(PublishError::TooManyTopics {
                        shard: self.id,
                        max: self.limits.max_topics_per_shard,
                    });
                }
                let state = TopicState {
                    last_sequence: 0,
                    generation: u64::MAX,
                    matches: Vec::new(),
                };
                // A copy: the event's bytes point into a whole receive buffer.
                entry
                    .insert((Bytes::copy_from_slice(key), state))
                    .into_mut()
            }
        };
        let index = self.index.borrow();
        if state.generation != index.generation() {
            state.matches.clear();
            index.matches(topic.as_str(), &mut state.matches);
            state.matches.sort_unstable_by_key(|e| e.key);
            state.generation = index.generation();
        }
        Ok(state)
    }

    /// Who receives an event of `priority` among a topic's `matches`: (subscriptions homed
    /// here, other shards with any), each other shard counted once (it gets one message).
    fn recipients(&self, matches: &[SubEntry], priority: Priority) -> (usize, usize) {
        let (mut locals, mut remotes) = (0, 0);
        let mut last_remote = None;
        for entry in matches.iter().filter(|e| e.min_priority <= priority) {
            let home = entry.key.shard;
            if usize::from(home) == self.id {
                locals += 1;
            } else if last_remote != Some(home) {
                remotes += 1;
                last_remote = Some(home);
            }
        }
        (locals, remotes)
    }

    /// Pushes one message made by `message(start, len)` to each other shard that homes a
    /// subscription in `matches` wanting `priority`: `subs[start..start + len]` of its batch
    /// lists those subscriptions (`matches` is sorted by key, so each shard's are adjacent).
    fn hand_out(
        &self,
        matches: &[SubEntry],
        priority: Priority,
        mut message: impl FnMut(u32, u32) -> ShardMsg,
    ) {
        let mut start = 0;
        while start < matches.len() {
            let home = matches[start].key.shard;
            let end = start
                + matches[start..]
                    .iter()
                    .position(|e| e.key.shard != home)
                    .unwrap_or(matches.len() - start);
            if usize::from(home) != self.id {
                let wanted = matches[start..end]
                    .iter()
                    .filter(|e| e.min_priority <= priority);
                let outbox = &self.outboxes[usize::from(home)];
                let mut batch = outbox.batch.borrow_mut();
                let first = batch.subs.len();
                batch.subs.extend(wanted.map(|e| e.key));
                let len = batch.subs.len() - first;
                if len > 0 {
                    batch.msgs.push(message(first as u32, len as u32));
                    if batch.msgs.len() == 1 {
                        outbox.wake.notify();
                    }
                }
            }
            start = end;
        }
    }

    /// Queues a sequenced run for the subscriptions homed here that `locals` names (their
    /// shard-local keys), each taking the events its `min_priority` lets through.
    fn deliver_run_local(
        &self,
        locals: impl Iterator<Item = u64>,
        run: &Run,
        numbering: &Numbering,
    ) {
        let subs = self.local.borrow();
        // A run of one priority is encoded once for the subscriptions that share their form.
        let mut shared: Option<(EncodeEvent, Rc<SharedRecords>)> = None;
        for local in locals {
            let Some(sub) = subs.get(&local) else {
                continue; // unsubscribed while the run was in flight
            };
            if sub.state() != SubState::Active || sub.min_priority > run.priorities.top {
                continue;
            }
            if let (Encoding::Shared(encode), Some(priority)) =
                (sub.encoding(), run.priorities.single())
            {
                let records = match &shared {
                    Some((made_by, records)) if sub.encoding().shares_with(*made_by) => records,
                    _ => {
                        &shared
                            .insert((encode, encode_shared(run, numbering, priority, encode)))
                            .1
                    }
                };
                if sub.offer_shared(records) {
                    continue;
                }
            }
            let mut stats = self.stats.borrow_mut();
            sub.offer_run(run, numbering, |offer, priority| match offer {
                Offer::Queued => {}
                Offer::QueuedShedding(shed) => stats.shed[shed as usize] += 1,
                Offer::Shed => stats.shed[priority as usize] += 1,
                Offer::Cut => self.to_cut.borrow_mut().push(sub.clone()),
            });
        }
    }

    fn deliver_local(&self, local: u64, event: &EventView<'_>) {
        let subs = self.local.borrow();
        let Some(sub) = subs.get(&local) else {
            return; // unsubscribed while the event was in flight
        };
        if sub.state() != SubState::Active {
            return;
        }
        let priority = event.priority;
        let mut stats = self.stats.borrow_mut();
        match sub.offer(event) {
            Offer::Queued => {}
            Offer::QueuedShedding(shed) => stats.shed[shed as usize] += 1,
            Offer::Shed => stats.shed[priority as usize] += 1,
            Offer::Cut => self.to_cut.borrow_mut().push(sub.clone()),
        }
    }

    fn process_cuts(&self) {
        if self.to_cut.borrow().is_empty() {
            return; // the usual case, after every publish
        }
        let cut = std::mem::take(&mut *self.to_cut.borrow_mut());
        for sub in cut {
            if sub.state() == SubState::Active {
                self.stats.borrow_mut().cut += 1;
                sub.set_state(SubState::Cut);
                self.local.borrow_mut().remove(&sub.key.local);
                self.unregister(&sub);
            }
        }
    }

    fn on_sequenced(&self, token: u32, outcome: Result<u64, PublishError>, at: Instant) {
        let token = token as usize;
        let frames = matches!(
            self.pending.borrow().get(token),
            Some(Pending::Frames { .. })
        );
        if !frames {
            return self.on_ack_sequenced(token, outcome, at);
        }
        let Pending::Frames { sink, request_ids } = self.pending.borrow_mut().remove(token) else {
            unreachable!("a Frames entry, checked above");
        };
        if let Err(error) = outcome {
            for request_id in request_ids {
                self.on_refused(sink, request_id, error.clone());
            }
        }
    }

    fn on_ack_sequenced(&self, token: usize, outcome: Result<u64, PublishError>, at: Instant) {
        let done = match self.pending.borrow_mut().get_mut(token) {
            Some(Pending::Ack {
                remaining,
                last_sequence,
                error,
                ..
            }) => {
                match outcome {
                    Ok(seq) => *last_sequence = seq,
                    Err(e) => {
                        error.get_or_insert(e);
                    }
                }
                *remaining -= 1;
                // Latency ends when the last event was sequenced.
                (*remaining == 0).then_some(at)
            }
            _ => {
                debug_assert!(false, "sequenced answer for unknown request {token}");
                None
            }
        };
        if let Some(at) = done {
            self.finish_ack_at(token, at);
        }
    }

    fn finish_ack(&self, token: usize) {
        self.finish_ack_at(token, Instant::now());
    }

    fn finish_ack_at(&self, token: usize, at: Instant) {
        let Pending::Ack {
            request,
            count,
            last_sequence,
            error,
            ..
        } = self.pending.borrow_mut().remove(token)
        else {
            unreachable!("finish_ack on a non-ack entry");
        };
        let outcome = AckOutcome {
            result: error.map_or(Ok(()), Err),
            sequence: last_sequence,
            count,
            latency: at.saturating_duration_since(request.decoded_at),
        };
        self.stats.borrow_mut().record_ack_latency(outcome.latency);
        request.sink.acked(request.request_id, outcome);
    }

    /// The shards a subscription must be registered on: its topic's owner for an exact
    /// pattern, every shard for a wildcard.
    fn targets(&self, pattern: &Pattern) -> std::ops::Range<usize> {
        if pattern.is_exact() {
            let owner = owner_of(pattern.as_str().as_bytes(), self.count);
            owner..owner + 1
        } else {
            0..self.count
        }
    }

    /// Registers a subscription on every shard that may own a matching topic and returns once all
    /// of them confirmed: from then on, every event sequenced anywhere reaches it
    /// (PROTOCOL.md §5.3).
    pub async fn subscribe(
        self: &Rc<Self>,
        pattern: Pattern,
        min_priority: Priority,
        consumer: &Rc<Consumer>,
        tag: u64,
    ) -> Rc<Subscriber> {
        let encoding = consumer.encoding();
        (self.subscribe_as(pattern, min_priority, consumer, tag, encoding)).await
    }

    /// As [`subscribe`](Self::subscribe), for a subscription whose events are queued in
    /// `encoding` rather than in its consumer's usual form (a native subscription that asked
    /// for delivery runs).
    pub async fn subscribe_as(
        self: &Rc<Self>,
        pattern: Pattern,
        min_priority: Priority,
        consumer: &Rc<Consumer>,
        tag: u64,
        encoding: Encoding,
    ) -> Rc<Subscriber> {
        let local = self.next_local.get();
        self.next_local.set(local + 1);
        let key = SubKey {
            shard: self.id as u16,
            local,
        };
        let pattern = Arc::new(pattern);
        let sub = Rc::new(Subscriber::new(
            key,
            (tag, encoding),
            pattern.clone(),
            min_priority,
            SubscriberQueue::new(
                self.limits.subscriber_queue_events,
                self.limits.subscriber_queue_bytes,
            ),
            consumer.clone(),
            self.delivered.clone(),
        ));
        self.local.borrow_mut().insert(local, sub.clone());
        let entry = SubEntry { key, min_priority };
        let targets = self.targets(&pattern);
        let remote = targets.clone().filter(|&t| t != self.id).count();
        let countdown = Rc::new(Countdown::new(remote));
        let token = self
            .pending
            .borrow_mut()
            .insert(Pending::Subscribe(countdown.clone())) as u32;
        for target in targets {
            if target == self.id {
                self.index.borrow_mut().insert(&pattern, entry);
            } else {
                let pattern = pattern.clone();
                self.push(
                    target,
                    ShardMsg::Subscribe {
                        entry,
                        pattern,
                        token,
                    },
                );
            }
        }
        if remote == 0 {
            self.pending.borrow_mut().remove(token as usize);
        }
        // If the caller goes away before every shard confirmed, undo the registration.
        let guard = UnsubscribeOnDrop(Some((self.clone(), sub.clone())));
        countdown.finished().await;
        guard.disarm();
        sub
    }

    /// Ends a subscription: no event reaches it afterwards. Idempotent.
    pub fn unsubscribe(&self, sub: &Rc<Subscriber>) {
        let was = sub.state();
        if was == SubState::Closed {
            return;
        }
        sub.set_state(SubState::Closed);
        self.local.borrow_mut().remove(&sub.key.local);
        if was == SubState::Active {
            self.unregister(sub);
        }
    }

    fn unregister(&self, sub: &Subscriber) {
        for target in self.targets(&sub.pattern) {
            if target == self.id {
                self.index.borrow_mut().remove(&sub.pattern, sub.key);
            } else {
                let pattern = sub.pattern.clone();
                self.push(
                    target,
                    ShardMsg::Unsubscribe {
                        key: sub.key,
                        pattern,
                    },
                );
            }
        }
    }

    /// Counts a datagram the UDP door dropped.
    pub fn count_dropped_datagram(&self) {
        self.stats.borrow_mut().datagrams_dropped += 1;
    }

    /// A TCP door's connection opened or closed; `door` indexes
    /// [`DOORS`](super::messages::DOORS).
    pub fn count_connection(&self, door: usize, opened: bool) {
        let mut stats = self.stats.borrow_mut();
        let live = &mut stats.connections[door];
        debug_assert!(opened || *live > 0, "more connections closed than opened");
        *live = if opened {
            *live + 1
        } else {
            live.saturating_sub(1)
        };
    }

    /// A connection to door `door` ([`DOORS`](super::messages::DOORS)) was refused: the door
    /// had its `max_connections`.
    pub fn count_refused_connection(&self, door: usize) {
        self.stats.borrow_mut().connections_refused[door] += 1;
    }

    /// A connection to door `door` was cut as dead (its peer vanished or stopped answering).
    pub fn count_cut_connection(&self, door: usize) {
        self.stats.borrow_mut().connections_cut[door] += 1;
    }

    /// This shard's counters now.
    pub fn stats(&self) -> ShardStats {
        let mut stats = *self.stats.borrow();
        stats.delivered = self.delivered.get();
        stats.topics = self.topics.borrow().len() as u64;
        stats.subscriptions = self.local.borrow().len() as u64;
        stats
    }

    /// Asks every other shard for its counters and returns the server-wide totals once all of
    /// them answered. Callers that need a bound (health checks) wrap it in a timeout.
    pub async fn ping_all(&self) -> ShardStats {
        let mut total = ShardStats::default();
        for stats in self.stats_per_shard().await {
            total.add(&stats);
        }
        total
    }

    /// Every shard's counters, by shard id, once all of them answered (the metrics endpoint).
    pub async fn stats_per_shard(&self) -> Vec<ShardStats> {
        let mut per_shard = vec![ShardStats::default(); self.count];
        per_shard[self.id] = self.stats();
        let gather = Rc::new(PingGather {
            countdown: Countdown::new(self.count - 1),
            per_shard: RefCell::new(per_shard),
        });
        if self.count > 1 {
            let token = self
                .pending
                .borrow_mut()
                .insert(Pending::Ping(gather.clone())) as u32;
            for peer in (0..self.count).filter(|&p| p != self.id) {
                self.push(peer, ShardMsg::Ping { token });
            }
        }
        gather.countdown.finished().await;
        let per_shard = gather.per_shard.borrow().clone();
        per_shard
    }

    /// Applies one batch received from shard `from`.
    pub fn handle_batch(&self, from: usize, batch: Batch) {
        let Batch { msgs, subs } = batch;
        let now = Instant::now();
        for msg in msgs {
            match msg {
                ShardMsg::Publish { event, route } => {
                    let outcome = self.sequence(event);
                    self.answer(from, route, outcome, Some(now), 1);
                }
                ShardMsg::PublishRun { run, route } => {
                    let count = run.count;
                    let outcome = self.sequence_run(run);
                    self.answer(from, route, outcome, Some(now), count);
                }
                ShardMsg::DeliverRun {
                    run,
                    numbering,
                    start,
                    len,
                } => {
                    let keys = &subs[start as usize..(start + len) as usize];
                    debug_assert!(keys.iter().all(|k| usize::from(k.shard) == self.id));
                    self.deliver_run_local(keys.iter().map(|k| k.local), &run, &numbering);
                }
                ShardMsg::Refused {
                    sink,
                    request_id,
                    error,
                } => self.on_refused(sink, request_id, error),
                ShardMsg::Sequenced { token, outcome, at } => self.on_sequenced(token, outcome, at),
                ShardMsg::Deliver { event, start, len } => {
                    let keys = &subs[start as usize..(start + len) as usize];
                    let view = event.view();
                    for key in keys {
                        debug_assert_eq!(usize::from(key.shard), self.id);
                        self.deliver_local(key.local, &view);
                    }
                }
                ShardMsg::Subscribe {
                    entry,
                    pattern,
                    token,
                } => {
                    self.index.borrow_mut().insert(&pattern, entry);
                    self.push(from, ShardMsg::Done { token });
                }
                ShardMsg::Unsubscribe { key, pattern } => {
                    self.index.borrow_mut().remove(&pattern, key);
                }
                ShardMsg::Ping { token } => {
                    let stats = self.stats();
                    self.push(from, ShardMsg::Pong { token, stats });
                }
                ShardMsg::Pong { token, stats } => {
                    let mut pending = self.pending.borrow_mut();
                    if let Some(Pending::Ping(gather)) = pending.get(token as usize) {
                        gather.per_shard.borrow_mut()[from] = stats;
                        gather.countdown.tick();
                        if gather.countdown.remaining() == 0 {
                            pending.remove(token as usize);
                        }
                    }
                }
                ShardMsg::Done { token } => {
                    let mut pending = self.pending.borrow_mut();
                    if let Some(Pending::Subscribe(countdown)) = pending.get(token as usize) {
                        countdown.tick();
                        if countdown.remaining() == 0 {
                            pending.remove(token as usize);
                        }
                    }
                }
            }
        }
        self.process_cuts();
    }
}

/// Bytes an encoder adds to an event besides its topic and payload, at most, as far as
/// sizing a buffer goes (EVENT_RUN's record header is 46; more only costs a regrowth).
const ENCODED_HEADER_BYTES_MAX: usize = 64;

/// A run of one priority, numbered, encoded by `encode` once for every subscription of this
/// shard that queues events in that shared form.
fn encode_shared(
    run: &Run,
    numbering: &Numbering,
    priority: Priority,
    encode: EncodeEvent,
) -> Rc<SharedRecords> {
    // Room for the records as they came plus a header and the topic for each: enough for
    // any encoding of an event without metadata or id text, so the buffer grows rarely.
    let per_event_bytes = ENCODED_HEADER_BYTES_MAX + run.topic.bytes().len();
    let capacity_bytes = run.records.len() + run.count as usize * per_event_bytes;
    let records = SharedRecords::encode(priority, run.count as usize, capacity_bytes, |writer| {
        run.for_each_view(numbering, priority, |event| {
            writer.push(|out| encode(out, event, 0));
            true
        })
    });
    debug_assert_eq!(records.len(), run.count as usize);
    Rc::new(records)
}

/// The runs of a validated batch (`checked`: each event's topic index and priority): spans of
/// consecutive events of one topic that have no id or metadata of their own (their ids are
/// the server's to make, as a run's are). Every other event is a span of one.
fn plan_runs(events: &[EventRef<'_>], checked: &[(usize, Priority)]) -> Vec<Range<usize>> {
    let plain = |i: usize| events[i].id.is_empty() && events[i].metadata_count == 0;
    let mut spans: Vec<Range<usize>> = Vec::new();
    for i in 0..events.len() {
        match spans.last_mut() {
            Some(span)
                if plain(i) && plain(span.start) && checked[span.start].0 == checked[i].0 =>
            {
                span.end = i + 1
            }
            _ => spans.push(i..i + 1),
        }
    }
    spans
}

struct UnsubscribeOnDrop(Option<(Rc<Shard>, Rc<Subscriber>)>);

impl UnsubscribeOnDrop {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for UnsubscribeOnDrop {
    fn drop(&mut self) {
        if let Some((shard, sub)) = self.0.take() {
            shard.unsubscribe(&sub);
        }
    }
}

/// Hands one owned event (or run) to a known number of other shards: copies to all but the
/// last, which gets the event itself. A copy takes a reference on each shared field (atomic increments,
/// and decrements when it is dropped), so an event bound for one other shard copies nothing.
struct Handout<T: Clone> {
    event: Option<T>,
    left: usize,
}

impl<T: Clone> Handout<T> {
    fn new(event: T, recipients: usize) -> Handout<T> {
        Handout {
            event: Some(event),
            left: recipients,
        }
    }

    /// The event, before it is handed out.
    fn peek(&self) -> &T {
        self.event
            .as_ref()
            .expect("the event stays until its last recipient")
    }

    /// The event for the next recipient.
    fn next(&mut self) -> T {
        debug_assert!(self.left > 0, "more recipients than counted");
        self.left -= 1;
        if self.left == 0 {
            self.event
                .take()
                .expect("the last recipient takes the event once")
        } else {
            self.event
                .clone()
                .expect("the event stays until its last recipient")
        }
    }

    /// True once every counted recipient got the event (or there were none).
    fn is_spent(&self) -> bool {
        self.left == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Buf, BufMut, BytesMut};

    /// One shard alone: every topic is its own, nothing crosses shards.
    fn lone_shard() -> Rc<Shard> {
        Shard::new(0, 1, Limits::default(), 7)
    }

    /// An event as a test subscription received it.
    #[derive(Debug, PartialEq)]
    struct Got {
        topic: String,
        id: String,
        payload: Bytes,
        metadata: (u16, Bytes),
        priority: Priority,
        timestamp_ns: i64,
        sequence: u64,
    }

    /// A door's encoding for tests: each field length-prefixed, read back by [`received`].
    fn record(out: &mut BytesMut, e: &EventView<'_>, _tag: u64) {
        let mut scratch = crate::engine::IdText::default();
        for field in [e.topic, e.id.text(&mut scratch), e.payload, e.metadata] {
            out.put_u32_le(field.len() as u32);
            out.put_slice(field);
        }
        out.put_u16_le(e.metadata_count);
        out.put_u8(e.priority as u8);
        out.put_i64_le(e.timestamp_ns);
        out.put_u64_le(e.sequence);
    }

    /// Everything queued for `sub`, oldest first.
    fn received(sub: &Subscriber) -> Vec<Got> {
        let mut bytes = BytesMut::new();
        sub.drain(usize::MAX, |run, _| bytes.extend_from_slice(run));
        let mut got = Vec::new();
        while !bytes.is_empty() {
            let mut field = || {
                let len = bytes.get_u32_le() as usize;
                bytes.split_to(len).freeze()
            };
            let (topic, id, payload, metadata) = (field(), field(), field(), field());
            got.push(Got {
                topic: String::from_utf8(topic.to_vec()).unwrap(),
                id: String::from_utf8(id.to_vec()).unwrap(),
                payload,
                metadata: (bytes.get_u16_le(), metadata),
                priority: Priority::from_u8(bytes.get_u8()).unwrap(),
                timestamp_ns: bytes.get_i64_le(),
                sequence: bytes.get_u64_le(),
            });
        }
        got
    }

    fn consumer() -> Rc<Consumer> {
        Rc::new(Consumer::new(record))
    }

    /// A native PUBLISH's fields, as they lie in the door's read buffer.
    fn in_buffer(topic: &str, id: &[u8], payload: &[u8]) -> Bytes {
        Bytes::from([topic.as_bytes(), id, payload].concat())
    }

    /// The event in `buffer`, whose topic and id take the first `topic_len` and `id_len` bytes.
    fn event_in(buffer: &Bytes, topic_len: usize, id_len: usize) -> EventRef<'_> {
        EventRef {
            topic: &buffer[..topic_len],
            id: &buffer[topic_len..topic_len + id_len],
            payload: &buffer[topic_len + id_len..],
            priority: Priority::Medium as u8,
            ..EventRef::default()
        }
    }

    #[test]
    fn a_publish_nobody_receives_keeps_no_reference_to_the_read_buffer() {
        let shard = lone_shard();
        let recent = RecentTopic::default();
        for (i, topic) in ["a/b", "a/b", "a/c"].into_iter().enumerate() {
            let buffer = in_buffer(topic, b"", b"payload");
            let raw = event_in(&buffer, topic.len(), 0);
            shard
                .publish_in_place(raw, &buffer, &recent, 1, Reply::Nobody)
                .unwrap();
            // No reference to the buffer was kept: not by the event, not by the topic.
            assert!(buffer.is_unique(), "event {i} kept its buffer");
        }
        assert_eq!((shard.stats().sequenced, shard.stats().topics), (3, 2));
    }

    #[test]
    fn an_event_in_place_reaches_a_subscriber_as_validated_and_sequenced() {
        let shard = lone_shard();
        let consumer = consumer();
        let pattern = Pattern::parse(b"a/*").unwrap();
        let subscribe = shard.subscribe(pattern, Priority::Batch, &consumer, 1);
        let sub = futures_lite::future::block_on(subscribe);
        let recent = RecentTopic::default();
        let buffer = in_buffer("x/y", b"", b"unseen");
        let unseen = event_in(&buffer, 3, 0);
        shard
            .publish_in_place(unseen, &buffer, &recent, 5, Reply::Nobody)
            .unwrap();
        for n in 1..=2u64 {
            let id: &[u8] = if n == 1 { b"" } else { b"my-id" };
            let buffer = in_buffer("a/b", id, b"seen");
            let raw = EventRef {
                timestamp_ns: if n == 1 { 0 } else { 42 },
                ..event_in(&buffer, 3, id.len())
            };
            shard
                .publish_in_place(raw, &buffer, &recent, 5, Reply::Nobody)
                .unwrap();
            let mut got = received(&sub);
            assert_eq!(got.len(), 1, "x/y matched nothing");
            let got = got.remove(0);
            assert_eq!(
                (got.topic.as_str(), &got.payload[..], got.sequence),
                ("a/b", &b"seen"[..], n)
            );
            assert_eq!(got.priority, Priority::Medium);
            assert_eq!(got.metadata, (0, Bytes::new()));
            if n == 1 {
                let id = uuid::Uuid::parse_str(&got.id).expect("a generated UUID");
                assert_eq!(id.get_version_num(), 7);
                assert_eq!(got.timestamp_ns, 5, "the receive time");
            } else {
                assert_eq!(got.id, "my-id");
                assert_eq!(got.timestamp_ns, 42);
            }
            assert!(buffer.is_unique(), "the subscriber's queue holds a copy");
        }
    }

    #[test]
    fn delivered_counts_events_taken_to_be_written_not_those_queued_or_discarded() {
        let shard = lone_shard();
        let consumer = consumer();
        let pattern = Pattern::parse(b"a/*").unwrap();
        let sub =
            futures_lite::future::block_on(shard.subscribe(pattern, Priority::Batch, &consumer, 1));
        let recent = RecentTopic::default();
        for _ in 0..3 {
            let buffer = in_buffer("a/b", b"", b"x");
            let raw = event_in(&buffer, 3, 0);
            shard
                .publish_in_place(raw, &buffer, &recent, 1, Reply::Nobody)
                .unwrap();
        }
        assert_eq!(shard.stats().delivered, 0, "queued is not yet delivered");
        assert_eq!(sub.drain(1, |_, _| {}), 1);
        assert_eq!(shard.stats().delivered, 1);
        shard.unsubscribe(&sub);
        assert_eq!(
            shard.stats().delivered,
            1,
            "the two events discarded by the unsubscribe are not delivered"
        );
        assert_eq!(
            sub.stats().delivered,
            1,
            "the subscription's own count agrees"
        );
    }

    #[test]
    fn an_event_in_place_is_refused_by_the_rules_an_owned_one_is() {
        let shard = lone_shard();
        let recent = RecentTopic::default();
        let limits = Limits::default();
        let long_id = [b'i'; 256];
        let bad: [(&str, &[u8], u8); 4] = [
            ("a//b", b"", 2),
            ("$sys/x", b"", 2),
            ("a/b", b"", 9),
            ("a/b", &long_id, 2),
        ];
        for (topic, id, priority) in bad {
            let buffer = in_buffer(topic, id, b"");
            let raw = EventRef {
                priority,
                ..event_in(&buffer, topic.len(), id.len())
            };
            let in_place = shard.publish_in_place(raw, &buffer, &recent, 1, Reply::Nobody);
            let mut ids = IdGenerator::new(1);
            let owned = Event::validate_after(raw.to_raw(&buffer), None, &limits, &mut ids, 1);
            assert_eq!(in_place.unwrap_err(), owned.unwrap_err(), "{topic}");
        }
        assert_eq!(shard.stats().sequenced, 0);
    }

    /// A test event: topic, payload, priority.
    type Fields = (&'static str, &'static str, u8);

    /// Several events in one buffer, each laid out in turn.
    fn batch_in_buffer(events: &[Fields]) -> (Bytes, Vec<(usize, usize, usize, u8)>) {
        let mut bytes = Vec::new();
        let mut spans = Vec::new();
        for (topic, payload, priority) in events {
            spans.push((bytes.len(), topic.len(), payload.len(), *priority));
            bytes.extend_from_slice(topic.as_bytes());
            bytes.extend_from_slice(payload.as_bytes());
        }
        (Bytes::from(bytes), spans)
    }

    fn refs<'a>(buffer: &'a Bytes, spans: &[(usize, usize, usize, u8)]) -> Vec<EventRef<'a>> {
        let refs = spans
            .iter()
            .map(|&(at, topic, payload, priority)| EventRef {
                topic: &buffer[at..at + topic],
                payload: &buffer[at + topic..at + topic + payload],
                priority,
                ..EventRef::default()
            });
        refs.collect()
    }

    #[test]
    fn a_batch_in_place_reaches_each_topic_in_order_and_remembers_the_last_topic() {
        let shard = lone_shard();
        let consumer = consumer();
        let subscribe = shard.subscribe(
            Pattern::parse(b"a/*").unwrap(),
            Priority::Batch,
            &consumer,
            1,
        );
        let sub = futures_lite::future::block_on(subscribe);
        let recent = RecentTopic::default();
        recent.remember(&Topic::parse(Bytes::from_static(b"a/x")).unwrap());
        let (buffer, spans) = batch_in_buffer(&[
            ("a/x", "1", 2),
            ("a/x", "2", 0),
            ("a/y", "3", 4),
            ("a/x", "4", 2),
            ("b/z", "5", 2),
        ]);
        let events = refs(&buffer, &spans);
        (shard.publish_batch_in_place(&events, &buffer, &recent, 9, Reply::Nobody)).unwrap();
        let got: Vec<(String, Bytes, u64, Priority)> = received(&sub)
            .into_iter()
            .map(|e| (e.topic, e.payload, e.sequence, e.priority))
            .collect();
        let want = [
            ("a/x", "1", 1, Priority::Medium),
            ("a/x", "2", 2, Priority::Batch),
            ("a/y", "3", 1, Priority::Critical),
            ("a/x", "4", 3, Priority::Medium),
        ];
        let want: Vec<_> = want
            .iter()
            .map(|&(t, p, n, priority)| (t.to_owned(), Bytes::from(p), n, priority))
            .collect();
        assert_eq!(got, want);
        assert_eq!(recent.get().as_ref().unwrap().as_str(), "b/z");
        assert_eq!(shard.stats().sequenced, 5);
        drop(events);
        assert!(
            buffer.is_unique(),
            "the subscriber's queue holds copies, not the buffer"
        );
    }

    #[test]
    fn one_refused_event_refuses_a_batch_in_place_with_its_index_and_the_owned_reason() {
        let shard = lone_shard();
        let recent = RecentTopic::default();
        let limits = Limits::default();
        let cases: [(&[Fields], usize); 4] = [
            (&[("a/b", "", 2), ("a/b", "", 2), ("a//b", "", 2)], 2),
            (&[("a/b", "", 2), ("a/b", "", 7), ("a//b", "", 2)], 1),
            (&[("$sys/x", "", 2), ("a/b", "", 2)], 0),
            (&[("a/b", "", 2), ("c/d", "", 2), ("c/d", "", 5)], 2),
        ];
        for (batch, index) in cases {
            let (buffer, spans) = batch_in_buffer(batch);
            let events = refs(&buffer, &spans);
            let refused = shard.publish_batch_in_place(&events, &buffer, &recent, 1, Reply::Nobody);
            let mut ids = IdGenerator::new(1);
            let raw = events[index].to_raw(&buffer);
            let owned = Event::validate_after(raw, None, &limits, &mut ids, 1).unwrap_err();
            assert_eq!(refused, Err((index, owned)), "{batch:?}");
            assert!(
                recent.get().is_none(),
                "a refused batch leaves the recent topic as it was"
            );
        }
        assert_eq!(
            shard.stats().sequenced,
            0,
            "nothing of a refused batch is published"
        );
    }
}
