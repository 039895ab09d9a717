//! A run: many events of one topic that travel as one unit, from the door that read them to
//! their subscribers' queues. Its topic is checked, routed and looked up once, it takes one
//! range of sequence numbers and one range of ids, and it crosses between shards as one
//! message, whatever its length: per event there is only its fixed-width record to read.
//!
//! The records stay in the native protocol's PUBLISH_RUN form (PROTOCOL.md §5.7), in the
//! buffer the door read them into, until a subscriber's queue copies each event once.

use bytes::Bytes;

use super::event::{EventError, EventRef, EventView, IdRange, IdView, Priority};
use super::limits::Limits;
use super::topic::Topic;

/// Bytes before each record's payload: priority (u8), timestamp_ns (i64), payload length (u32).
pub const RECORD_HEADER_BYTES: usize = 1 + 8 + 4;

/// One event of a run, read in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunEvent<'a> {
    pub priority: u8,
    /// 0: the server fills in the receive time.
    pub timestamp_ns: i64,
    pub payload: &'a [u8],
}

/// Why a run's records do not parse (the frame is then Malformed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record {index}: truncated {what}")]
pub struct RecordsError {
    /// 0-based position of the record that does not parse.
    pub index: u32,
    pub what: &'static str,
}

/// Reads one record off the front of `rest`: the event and what follows it.
#[inline]
fn split_record(rest: &[u8]) -> Option<(RunEvent<'_>, &[u8])> {
    let (header, rest) = rest.split_first_chunk::<RECORD_HEADER_BYTES>()?;
    let priority = header[0];
    let timestamp_ns = i64::from_le_bytes(header[1..9].try_into().expect("8 bytes"));
    let len = u32::from_le_bytes(header[9..13].try_into().expect("4 bytes")) as usize;
    if rest.len() < len {
        return None;
    }
    let (payload, rest) = rest.split_at(len);
    let event = RunEvent {
        priority,
        timestamp_ns,
        payload,
    };
    Some((event, rest))
}

/// Splits `count` whole records off the front of `body`: (the records, what follows them).
pub fn split_records(body: &[u8], count: u32) -> Result<(&[u8], &[u8]), RecordsError> {
    let mut rest = body;
    for index in 0..count {
        rest = match split_record(rest) {
            Some((_, rest)) => rest,
            None if rest.len() < RECORD_HEADER_BYTES => {
                let what = "record header";
                return Err(RecordsError { index, what });
            }
            None => {
                let what = "payload";
                return Err(RecordsError { index, what });
            }
        };
    }
    Ok(body.split_at(body.len() - rest.len()))
}

/// The events of records that [`split_records`] accepted, in order.
pub fn events(records: &[u8]) -> impl Iterator<Item = RunEvent<'_>> {
    let mut rest = records;
    std::iter::from_fn(move || {
        let (event, tail) = split_record(rest)?;
        rest = tail;
        Some(event)
    })
}

/// The lowest and highest priority among a run's events: which subscriptions may want any of
/// it (`top`), and whether it is all of one priority (`low == top`), which lets a shard
/// encode it once for every subscription that takes it whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Priorities {
    pub low: Priority,
    pub top: Priority,
}

impl Priorities {
    /// None of a run yet: the first event sets both.
    const EMPTY: Priorities = Priorities {
        low: Priority::Critical,
        top: Priority::Batch,
    };

    fn include(&mut self, priority: Priority) {
        self.low = self.low.min(priority);
        self.top = self.top.max(priority);
    }

    /// The one priority of every event, if they share one.
    pub fn single(&self) -> Option<Priority> {
        (self.low == self.top).then_some(self.top)
    }
}

/// Checks every event of a run against the per-event rules of PROTOCOL.md §5.7 and the limits (a
/// run's topic was checked when it was declared): on success the run's [`Priorities`], else the
/// 0-based index of the first refused event.
pub fn check(records: &[u8], limits: &Limits) -> Result<Priorities, (u32, EventError)> {
    let mut priorities = Priorities::EMPTY;
    for (index, event) in events(records).enumerate() {
        let index = index as u32;
        let priority = Priority::from_u8(event.priority)
            .ok_or((index, EventError::Priority(event.priority)))?;
        if event.payload.len() > limits.max_message_bytes {
            let (size, max) = (event.payload.len(), limits.max_message_bytes);
            return Err((index, EventError::TooLarge { size, max }));
        }
        priorities.include(priority);
    }
    Ok(priorities)
}

/// A run checked by [`check`], on its way to its topic's owner and then to subscribers' home
/// shards: cheap to clone (its fields share their bytes).
#[derive(Clone, Debug)]
pub struct Run {
    pub topic: Topic,
    /// `count` records in PUBLISH_RUN form, sharing the buffer the door read them into.
    pub records: Bytes,
    pub count: u32,
    /// When the bytes carrying the run were read (Unix ns): the timestamp of events that
    /// left theirs 0, and the time in their generated ids.
    pub received_ns: i64,
    /// The lowest and highest priority among the events ([`check`]).
    pub priorities: Priorities,
}

/// A run after its owner sequenced it: the `i`-th event is number `first_sequence + i` of
/// its topic and has the id `ids.id(i)`.
#[derive(Clone, Copy, Debug)]
pub struct Numbering {
    pub first_sequence: u64,
    pub ids: IdRange,
}

impl Run {
    /// Events of one topic that passed the checks of PROTOCOL.md §5.1 (each with its priority),
    /// decoded in place from other frames (a batch, consecutive PUBLISH frames), copied into a
    /// run's records: the one copy such a run makes of them. Needs at least one event.
    pub fn copied<'a, 'e: 'a>(
        topic: Topic,
        events: impl Iterator<Item = (&'a EventRef<'e>, Priority)> + Clone,
        received_ns: i64,
    ) -> Run {
        use bytes::BufMut;
        let size = events
            .clone()
            .map(|(e, _)| RECORD_HEADER_BYTES + e.payload.len());
        let mut records = bytes::BytesMut::with_capacity(size.sum());
        let (mut count, mut priorities) = (0, Priorities::EMPTY);
        for (event, priority) in events {
            records.put_u8(event.priority);
            records.put_i64_le(event.timestamp_ns);
            records.put_u32_le(event.payload.len() as u32);
            records.put_slice(event.payload);
            count += 1;
            priorities.include(priority);
        }
        debug_assert!(count > 0, "a run holds an event");
        Run {
            topic,
            records: records.freeze(),
            count,
            received_ns,
            priorities,
        }
    }

    /// Hands `deliver` each event of at least `min` priority as subscribers receive it,
    /// numbered by `numbering`, until it returns false. One view on the stack, made in place
    /// for each event (events below `min` are skipped before any of it is made).
    #[inline]
    pub fn for_each_view(
        &self,
        numbering: &Numbering,
        min: Priority,
        mut deliver: impl FnMut(&EventView<'_>) -> bool,
    ) {
        debug_assert_eq!(events(&self.records).count(), self.count as usize);
        for (i, e) in events(&self.records).enumerate() {
            if e.priority < min as u8 {
                continue;
            }
            let i = i as u32;
            let view = EventView {
                topic: self.topic.bytes(),
                id: IdView::Generated(numbering.ids.id(i)),
                payload: e.payload,
                metadata_count: 0,
                metadata: &[],
                priority: Priority::from_u8(e.priority).expect("checked by run::check"),
                timestamp_ns: if e.timestamp_ns == 0 {
                    self.received_ns
                } else {
                    e.timestamp_ns
                },
                sequence: numbering.first_sequence + u64::from(i),
            };
            if !deliver(&view) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    fn records(events: &[(u8, i64, &[u8])]) -> BytesMut {
        let mut out = BytesMut::new();
        for (priority, ts, payload) in events {
            out.put_u8(*priority);
            out.put_i64_le(*ts);
            out.put_u32_le(payload.len() as u32);
            out.put_slice(payload);
        }
        out
    }

    #[test]
    fn records_split_off_the_front_and_read_back_in_order() {
        let mut body = records(&[(2, 0, b"hi"), (4, 7, b"")]);
        body.put_slice(b"tail");
        let (run, rest) = split_records(&body, 2).unwrap();
        assert_eq!(rest, b"tail");
        let got: Vec<_> = events(run).collect();
        assert_eq!(
            got,
            [
                RunEvent {
                    priority: 2,
                    timestamp_ns: 0,
                    payload: b"hi"
                },
                RunEvent {
                    priority: 4,
                    timestamp_ns: 7,
                    payload: b""
                }
            ]
        );
    }

    #[test]
    fn a_short_record_names_its_index_and_field() {
        let body = records(&[(2, 0, b"hi"), (2, 0, b"long")]);
        let cut = &body[..body.len() - 1];
        let e = split_records(cut, 2).unwrap_err();
        assert_eq!((e.index, e.what), (1, "payload"));
        let e = split_records(&body, 3).unwrap_err();
        assert_eq!((e.index, e.what), (2, "record header"));
    }

    #[test]
    fn check_refuses_the_first_bad_event_and_finds_the_priorities() {
        let limits = Limits {
            max_message_bytes: 3,
            ..Limits::default()
        };
        let good = records(&[(1, 0, b"a"), (3, 0, b"abc"), (0, 0, b"")]);
        let priorities = check(&good, &limits).unwrap();
        assert_eq!(
            (priorities.low, priorities.top),
            (Priority::Batch, Priority::High)
        );
        assert_eq!(priorities.single(), None);
        let one = check(&records(&[(2, 0, b"a"), (2, 0, b"")]), &limits).unwrap();
        assert_eq!(one.single(), Some(Priority::Medium));
        let bad = records(&[(1, 0, b"a"), (5, 0, b""), (2, 0, b"abcd")]);
        assert_eq!(check(&bad, &limits), Err((1, EventError::Priority(5))));
        let big = records(&[(1, 0, b"a"), (2, 0, b"abcd")]);
        let err = EventError::TooLarge { size: 4, max: 3 };
        assert_eq!(check(&big, &limits), Err((1, err)));
    }

    #[test]
    fn views_number_the_events_fill_the_receive_time_and_skip_below_min() {
        let body = records(&[(2, 0, b"x"), (3, 42, b"y")]);
        let run = Run {
            topic: Topic::parse(Bytes::from_static(b"a/b")).unwrap(),
            records: body.freeze(),
            count: 2,
            received_ns: 9_000_000,
            priorities: Priorities {
                low: Priority::Medium,
                top: Priority::High,
            },
        };
        let ids = super::super::event::IdGenerator::new(1).range(2, 9_000_000);
        let numbering = Numbering {
            first_sequence: 5,
            ids,
        };
        let mut views = Vec::new();
        run.for_each_view(&numbering, Priority::Batch, |v| {
            let IdView::Generated(id) = v.id else {
                panic!("a run's ids are generated")
            };
            views.push((v.sequence, v.timestamp_ns, id, v.topic.to_vec()));
            true
        });
        assert_eq!(views.len(), 2);
        assert_eq!((views[0].0, views[0].1), (5, 9_000_000));
        assert_eq!((views[1].0, views[1].1), (6, 42));
        assert_eq!(views[1].2, ids.id(1));
        assert_eq!(views[0].3, b"a/b");
        let mut high = Vec::new();
        run.for_each_view(&numbering, Priority::High, |v| {
            high.push(v.sequence);
            true
        });
        assert_eq!(high, [6], "min skips the MEDIUM event");
        let mut first = Vec::new();
        run.for_each_view(&numbering, Priority::Batch, |v| {
            first.push(v.sequence);
            false
        });
        assert_eq!(first, [5], "false stops the run");
    }

    proptest::proptest! {
        #![proptest_config(crate::proptest_config())]

        #[test]
        fn split_records_never_panics_and_never_reads_past_the_body(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            count in 0u32..20,
        ) {
            if let Ok((run, rest)) = split_records(&body, count) {
                proptest::prop_assert_eq!(run.len() + rest.len(), body.len());
                proptest::prop_assert_eq!(events(run).count(), count as usize);
            }
        }
    }
}
