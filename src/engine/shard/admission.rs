//! Admission: a door's decoded events are checked against the rules and limits, given what
//! the door cannot know (id, receive time), and sent to their topic's owner, one by one or as
//! runs of one topic.

use std::ops::Range;
use std::time::Instant;

use bytes::Bytes;

use super::pending::Pending;
use super::Shard;
use crate::engine::event::{
    check_fields, share, Accepted, Event, EventError, EventRef, Incoming, Priority, RawEvent,
};
use crate::engine::messages::ShardMsg;
use crate::engine::reply::{Reply, Route, SinkId};
use crate::engine::routing::owner;
use crate::engine::run::{self, Run};
use crate::engine::topic::{RecentTopic, Topic};

impl Shard {
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
    pub(super) fn publish_routed(&self, event: impl Incoming, route: Route, now: Option<Instant>) {
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
    pub(super) fn route_run(&self, run: Run, route: Route, now: Option<Instant>) {
        let home = owner(run.topic.route(), self.count);
        if home == self.id {
            let count = run.count;
            let outcome = self.sequence_run(run);
            self.answer(self.id, route, outcome, now, count);
        } else {
            self.push(home, ShardMsg::PublishRun { run, route });
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    use crate::engine::event::{EventView, IdGenerator};
    use crate::engine::limits::Limits;
    use crate::engine::subscriber::{Consumer, Subscriber};
    use crate::engine::topic::Pattern;
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
