//! As a topic's owner: sequence its events and hand them to every matching subscription,
//! encoded into the queues of those homed here, one message per other shard for the rest.

use std::rc::Rc;

use bytes::Bytes;
use hashbrown::HashTable;

use super::Shard;
use crate::engine::event::{EventView, Incoming, Priority};
use crate::engine::index::SubEntry;
use crate::engine::messages::ShardMsg;
use crate::engine::queue::{Offer, SharedRecords};
use crate::engine::reply::PublishError;
use crate::engine::routing::table_hash;
use crate::engine::run::{Numbering, Run};
use crate::engine::subscriber::{EncodeEvent, Encoding, SubState};
use crate::engine::topic::Topic;

/// What the owner keeps per topic.
pub(super) struct TopicState {
    pub(super) last_sequence: u64,
    /// Subscription index generation `matches` was computed at.
    pub(super) generation: u64,
    /// Matching subscriptions, sorted by key so those of one home shard are adjacent.
    pub(super) matches: Vec<SubEntry>,
}

impl Shard {
    /// As the topic's owner: give the event its sequence number and hand it to every matching
    /// subscription, locally or through the outbox of its home shard.
    pub(super) fn sequence(&self, event: impl Incoming) -> Result<u64, PublishError> {
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
    pub(super) fn sequence_run(&self, run: Run) -> Result<u64, PublishError> {
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
    pub(super) fn topic_state<'t>(
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
    pub(super) fn recipients(&self, matches: &[SubEntry], priority: Priority) -> (usize, usize) {
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
    pub(super) fn hand_out(
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
    pub(super) fn deliver_run_local(
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

    pub(super) fn deliver_local(&self, local: u64, event: &EventView<'_>) {
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

    pub(super) fn process_cuts(&self) {
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
                self.tell_interest(&sub, false);
            }
        }
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
