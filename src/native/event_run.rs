//! EVENT_RUN (PROTOCOL.md §6.7): how a subscription that asked for delivery
//! runs receives its events, many to a frame. Each event is a record with a fixed-width
//! header, so the server writes it into the subscription's queue with one copy of each field
//! (the server-assigned sequence, timestamp and id are plain fixed-width fields), and a client
//! reads every field in place, allocating nothing per event. A generated id travels as its 16
//! bytes; it becomes text only for a client that wants text.
//!
//! No I/O here: the server's queue encoder and frame header, and the client's parser. Only
//! the framing ([`frame`](super::frame)) is shared with the other frames' bodies.

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::{kind, BodyError, FrameRef, FRAME_HEADER_BYTES, KIND_AND_FLAGS_BYTES};
use crate::engine::event::{share, EventView, IdText, IdView, Metadata, Priority, RawEvent};

/// Bytes of a record before its variable fields: sequence (u64), timestamp_ns (i64),
/// priority (u8), id_len (u8), topic_len (u16), metadata_count (u16), metadata_len (u32),
/// payload_len (u32), uuid (16 bytes).
pub const RECORD_HEADER_BYTES: usize = 8 + 8 + 1 + 1 + 2 + 2 + 4 + 4 + 16;

/// Bytes of an EVENT_RUN's body before its first record: sub_id (u32), count (u32).
pub const BODY_PREFIX_BYTES: usize = 4 + 4;

/// Bytes of an EVENT_RUN before its first record: frame header, sub_id (u32), count (u32).
pub const FRAME_PREFIX_BYTES: usize = FRAME_HEADER_BYTES + BODY_PREFIX_BYTES;

/// Queues one event as an EVENT_RUN record (an [`EncodeEvent`](crate::engine::EncodeEvent):
/// the subscription's id goes in the frame header, written when runs of records are sent).
pub fn put_record(out: &mut BytesMut, e: &EventView<'_>, _sub_id: u64) {
    // The id as two words: a generated one was just written as two (IdRange::id), and reading
    // it back as one 16-byte value stalled store forwarding (a large part of this function's time:
    // docs/PERFORMANCE.md).
    let (id_len, (id_high, id_low), id_text): (u8, (u64, u64), &[u8]) = match e.id {
        IdView::Generated(id) => (0, id.as_u64_pair(), &[]),
        IdView::Given(text) => {
            debug_assert!(!text.is_empty() && text.len() <= usize::from(u8::MAX));
            (text.len() as u8, (0, 0), text)
        }
    };
    debug_assert!(e.topic.len() <= usize::from(u16::MAX));
    // Each word is read alone: the caller wrote sequence and timestamp a moment ago, one
    // store each, and the compiler would otherwise read both as one 16-byte value, which
    // cannot be forwarded from two stores (half of this function's time, as for the id).
    let sequence = std::hint::black_box(e.sequence);
    let mut header = [0u8; RECORD_HEADER_BYTES];
    header[0..8].copy_from_slice(&sequence.to_le_bytes());
    header[8..16].copy_from_slice(&e.timestamp_ns.to_le_bytes());
    header[16] = e.priority as u8;
    header[17] = id_len;
    header[18..20].copy_from_slice(&(e.topic.len() as u16).to_le_bytes());
    header[20..22].copy_from_slice(&e.metadata_count.to_le_bytes());
    header[22..26].copy_from_slice(&(e.metadata.len() as u32).to_le_bytes());
    header[26..30].copy_from_slice(&(e.payload.len() as u32).to_le_bytes());
    header[30..38].copy_from_slice(&id_high.to_be_bytes());
    header[38..46].copy_from_slice(&id_low.to_be_bytes());
    let size = RECORD_HEADER_BYTES + e.topic.len() + id_text.len();
    out.reserve(size + e.metadata.len() + e.payload.len());
    out.put_slice(&header);
    out.put_slice(e.topic);
    out.put_slice(id_text);
    out.put_slice(e.metadata);
    out.put_slice(e.payload);
}

/// Writes the header of an EVENT_RUN for subscription `sub_id` whose `count` records,
/// `records_len` bytes together, follow it.
pub fn put_frame_header(out: &mut BytesMut, sub_id: u32, count: u32, records_len: usize) {
    let length = KIND_AND_FLAGS_BYTES + BODY_PREFIX_BYTES + records_len;
    let length = u32::try_from(length).expect("a run is far smaller than 4 GiB");
    out.put_u32_le(length);
    out.put_u8(kind::EVENT_RUN);
    out.put_u8(0);
    out.put_u32_le(sub_id);
    out.put_u32_le(count);
}

/// One event of an EVENT_RUN, read in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivered<'a> {
    /// The event's sequence number in its topic.
    pub sequence: u64,
    /// When it was published (nanoseconds since the Unix epoch).
    pub timestamp_ns: i64,
    /// Its priority.
    pub priority: Priority,
    /// Its id: 16 bytes when the server generated it, the publisher's text otherwise.
    pub id: IdView<'a>,
    /// Its topic.
    pub topic: &'a [u8],
    /// Entries in `metadata`.
    pub metadata_count: u16,
    /// The metadata entries in the native protocol's form (checked well formed).
    pub metadata: &'a [u8],
    /// Its payload.
    pub payload: &'a [u8],
}

impl Delivered<'_> {
    /// The event owned, its fields sharing `buffer` (which the borrowed fields point into);
    /// a generated id becomes its text.
    pub fn to_raw(&self, buffer: &Bytes) -> RawEvent {
        let id = match self.id {
            IdView::Generated(_) => Bytes::copy_from_slice(self.id.text(&mut IdText::default())),
            IdView::Given(text) => share(buffer, text),
        };
        let metadata = Metadata::from_wire(self.metadata_count, share(buffer, self.metadata))
            .expect("checked when the frame was parsed");
        RawEvent {
            topic: share(buffer, self.topic),
            id,
            payload: share(buffer, self.payload),
            metadata,
            priority: self.priority as u8,
            timestamp_ns: self.timestamp_ns,
        }
    }
}

/// An EVENT_RUN read in place: the records were checked to be whole and well formed when it
/// was parsed, so iterating them cannot fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventRunFrame<'a> {
    /// The subscription the events are delivered to.
    pub sub_id: u32,
    /// Records in the run.
    pub count: u32,
    records: &'a [u8],
}

/// The variable fields' lengths in a record header: topic, id, metadata, payload.
#[inline]
fn lengths(h: &[u8; RECORD_HEADER_BYTES]) -> [usize; 4] {
    let u32_at = |at: usize| u32::from_le_bytes(h[at..at + 4].try_into().expect("4")) as usize;
    let topic = usize::from(u16::from_le_bytes([h[18], h[19]]));
    [topic, usize::from(h[17]), u32_at(22), u32_at(26)]
}

/// Checks the record at the front of `rest` (whose structure may be anything) and returns what
/// follows it, or what is wrong.
fn check_record(rest: &[u8]) -> Result<&[u8], &'static str> {
    let (h, rest) = rest
        .split_first_chunk::<RECORD_HEADER_BYTES>()
        .ok_or("truncated record header")?;
    Priority::from_u8(h[16]).ok_or("priority out of range")?;
    let [topic, id, metadata_len, payload] = lengths(h);
    // Checked: on a 32-bit client two u32 lengths could overflow.
    let size = [id, metadata_len, payload]
        .into_iter()
        .try_fold(topic, usize::checked_add)
        .ok_or("record lengths overflow")?;
    if rest.len() < size {
        return Err("truncated record");
    }
    let metadata = &rest[topic + id..topic + id + metadata_len];
    let metadata_count = u16::from_le_bytes([h[20], h[21]]);
    if metadata_count > 0 || !metadata.is_empty() {
        Metadata::check_wire(metadata_count, metadata).map_err(|_| "bad metadata")?;
    }
    Ok(&rest[size..])
}

/// Reads the record at the front of `rest`, which [`check_record`] accepted: the event where
/// it lies, and what follows it. No check is repeated: this runs for every event a client
/// reads.
#[inline]
fn read_record(rest: &[u8]) -> (Delivered<'_>, &[u8]) {
    let (h, rest) = rest
        .split_first_chunk::<RECORD_HEADER_BYTES>()
        .expect("checked by check_record");
    let [topic_len, id_len, metadata_len, payload_len] = lengths(h);
    let (topic, rest) = rest.split_at(topic_len);
    let (id, rest) = rest.split_at(id_len);
    let (metadata, rest) = rest.split_at(metadata_len);
    let (payload, rest) = rest.split_at(payload_len);
    let id = if id_len == 0 {
        IdView::Generated(uuid::Uuid::from_bytes(h[30..46].try_into().expect("16")))
    } else {
        IdView::Given(id)
    };
    let event = Delivered {
        sequence: u64::from_le_bytes(h[0..8].try_into().expect("8")),
        timestamp_ns: i64::from_le_bytes(h[8..16].try_into().expect("8")),
        priority: Priority::ALL[usize::from(h[16])],
        id,
        topic,
        metadata_count: u16::from_le_bytes([h[20], h[21]]),
        metadata,
        payload,
    };
    (event, rest)
}

impl<'a> EventRunFrame<'a> {
    /// Parses the frame when it is an EVENT_RUN; `None` for any other kind.
    pub fn parse(frame: FrameRef<'a>) -> Result<Option<EventRunFrame<'a>>, BodyError> {
        if frame.kind != kind::EVENT_RUN {
            return Ok(None);
        }
        EventRunFrame::parse_body(frame.body).map(Some)
    }

    /// Parses an EVENT_RUN's body, checking every record.
    pub fn parse_body(body: &'a [u8]) -> Result<EventRunFrame<'a>, BodyError> {
        let (prefix, records) = body
            .split_first_chunk::<BODY_PREFIX_BYTES>()
            .ok_or_else(|| BodyError::malformed("truncated EVENT_RUN header"))?;
        let sub_id = u32::from_le_bytes(prefix[..4].try_into().expect("4"));
        let count = u32::from_le_bytes(prefix[4..].try_into().expect("4"));
        let mut rest = records;
        for i in 0..count {
            rest = match check_record(rest) {
                Ok(rest) => rest,
                Err(what) => return Err(BodyError::malformed(format!("record {i}: {what}"))),
            };
        }
        if !rest.is_empty() {
            let extra = rest.len();
            return Err(BodyError::malformed(format!(
                "{extra} bytes after the last record"
            )));
        }
        Ok(EventRunFrame {
            sub_id,
            count,
            records,
        })
    }

    /// The events, in order.
    pub fn events(&self) -> impl Iterator<Item = Delivered<'a>> {
        let mut rest = self.records;
        std::iter::from_fn(move || {
            if rest.is_empty() {
                return None;
            }
            let (event, tail) = read_record(rest);
            rest = tail;
            Some(event)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::{frame_at, LENGTH_PREFIX_BYTES};
    use super::*;
    use crate::engine::Metadata;
    use proptest::prelude::*;

    /// The frame limit of these tests: far over any run they build, so framing never refuses
    /// one.
    const FRAME_BYTES_MAX: usize = 1 << 30;

    /// An EVENT_RUN of `views` for subscription `sub_id`, as the server's writer frames it.
    fn frame_of(sub_id: u32, views: &[EventView<'_>]) -> BytesMut {
        let mut records = BytesMut::new();
        for v in views {
            put_record(&mut records, v, 0);
        }
        let mut out = BytesMut::new();
        put_frame_header(&mut out, sub_id, views.len() as u32, records.len());
        out.put_slice(&records);
        out
    }

    fn parse(bytes: &[u8]) -> Result<EventRunFrame<'_>, BodyError> {
        let frame = frame_at(bytes, FRAME_BYTES_MAX).unwrap().unwrap();
        assert_eq!(frame.wire_len, bytes.len());
        Ok(EventRunFrame::parse(frame)?.expect("an EVENT_RUN"))
    }

    fn view<'a>(sequence: u64, id: IdView<'a>, meta: &'a Metadata) -> EventView<'a> {
        EventView {
            topic: b"sensors/t1",
            id,
            payload: b"hi",
            metadata_count: meta.len() as u16,
            metadata: meta.wire(),
            priority: Priority::High,
            timestamp_ns: 1_700_000_000_000_000_000,
            sequence,
        }
    }

    /// The worked example of PROTOCOL.md §6.7, byte for byte.
    #[test]
    fn the_documented_event_run_is_what_the_server_writes() {
        let uuid = uuid::Uuid::parse_str("0199b1c2-7e4a-7d3e-9f10-2a4b6c8d0e1f").unwrap();
        let none = Metadata::default();
        let first = EventView {
            priority: Priority::Medium,
            timestamp_ns: 0x1122_3344_5566_7788,
            ..view(1, IdView::Generated(uuid), &none)
        };
        let second = EventView {
            priority: Priority::Medium,
            timestamp_ns: 0x1122_3344_5566_7788,
            payload: b"yo",
            ..view(2, IdView::Given(b"a1"), &none)
        };
        let bytes = frame_of(7, &[first, second]);
        let documented = "\
            80 00 00 00 87 00 07 00 00 00 02 00 00 00 \
            01 00 00 00 00 00 00 00 88 77 66 55 44 33 22 11 02 00 0a 00 00 00 00 00 00 00 \
            02 00 00 00 01 99 b1 c2 7e 4a 7d 3e 9f 10 2a 4b 6c 8d 0e 1f \
            73 65 6e 73 6f 72 73 2f 74 31 68 69 \
            02 00 00 00 00 00 00 00 88 77 66 55 44 33 22 11 02 02 0a 00 00 00 00 00 00 00 \
            02 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 \
            73 65 6e 73 6f 72 73 2f 74 31 61 31 79 6f";
        let want: Vec<u8> = documented
            .split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect();
        assert_eq!(bytes[..], want[..]);
        let run = parse(&bytes).unwrap();
        let got: Vec<_> = run.events().collect();
        assert_eq!((run.sub_id, run.count, got.len()), (7, 2, 2));
        assert_eq!(got[0].id, IdView::Generated(uuid));
        assert_eq!(got[1].id, IdView::Given(b"a1"));
        assert_eq!((got[1].sequence, got[1].payload), (2, &b"yo"[..]));
    }

    #[test]
    fn owned_events_carry_the_id_as_text() {
        let uuid = uuid::Uuid::now_v7();
        let meta = Metadata::from_pairs([("k", "v")]).unwrap();
        let bytes = frame_of(3, &[view(9, IdView::Generated(uuid), &meta)]);
        let buffer = Bytes::from(bytes.to_vec());
        let run = parse(&buffer).unwrap();
        let raw = run.events().next().unwrap().to_raw(&buffer);
        assert_eq!(raw.id, Bytes::from(uuid.hyphenated().to_string()));
        assert_eq!(raw.metadata.iter().collect::<Vec<_>>(), [("k", "v")]);
        assert_eq!((&raw.topic[..], raw.priority), (&b"sensors/t1"[..], 3));
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]

        #[test]
        fn runs_round_trip(
            events in prop::collection::vec(
                (any::<u64>(), any::<i64>(), 0u8..5, "[a-z0-9-]{0,20}", "[a-z/]{1,20}",
                 prop::collection::vec(("[a-z]{0,6}", "\\PC{0,6}"), 0..3),
                 prop::collection::vec(any::<u8>(), 0..100)),
                0..6),
            sub_id in any::<u32>(),
        ) {
            let metas: Vec<Metadata> = events.iter().map(|e| {
                Metadata::from_pairs(e.5.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap()
            }).collect();
            let uuid = uuid::Uuid::now_v7();
            let views: Vec<EventView<'_>> = events.iter().zip(&metas).map(|(e, meta)| EventView {
                topic: e.4.as_bytes(),
                id: if e.3.is_empty() { IdView::Generated(uuid) } else { IdView::Given(e.3.as_bytes()) },
                payload: &e.6,
                metadata_count: meta.len() as u16,
                metadata: meta.wire(),
                priority: Priority::from_u8(e.2).unwrap(),
                timestamp_ns: e.1,
                sequence: e.0,
            }).collect();
            let bytes = frame_of(sub_id, &views);
            let run = parse(&bytes).unwrap();
            prop_assert_eq!(run.sub_id, sub_id);
            let got: Vec<_> = run.events().collect();
            prop_assert_eq!(got.len(), views.len());
            for (g, v) in got.iter().zip(&views) {
                prop_assert_eq!((g.sequence, g.timestamp_ns, g.priority), (v.sequence, v.timestamp_ns, v.priority));
                prop_assert_eq!((g.id, g.topic, g.payload), (v.id, v.topic, v.payload));
                prop_assert_eq!((g.metadata_count, g.metadata), (v.metadata_count, v.metadata));
            }
            // Every truncation is an error, never a panic.
            for cut in 0..bytes.len() {
                let mut short = bytes[..cut].to_vec();
                if short.len() >= LENGTH_PREFIX_BYTES {
                    let length = (cut - LENGTH_PREFIX_BYTES) as u32;
                    short[..LENGTH_PREFIX_BYTES].copy_from_slice(&length.to_le_bytes());
                    if cut >= FRAME_HEADER_BYTES {
                        let frame = frame_at(&short, FRAME_BYTES_MAX).unwrap().unwrap();
                        if !views.is_empty() || cut < bytes.len() {
                            prop_assert!(EventRunFrame::parse(frame).is_err());
                        }
                    }
                }
            }
        }

        #[test]
        fn garbage_is_an_error_or_a_run_that_iterates(body in prop::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(run) = EventRunFrame::parse_body(&body) {
                prop_assert_eq!(run.events().count(), run.count as usize);
            }
        }
    }
}
