//! The event as the engine carries it: every field is a cheap, shareable handle (`Bytes`), so
//! fanning one event out to many subscribers on many shards clones reference counts, never
//! payloads.
//!
//! An event takes six forms on its way from a socket to a subscriber; each exists so that the
//! step that makes it copies nothing the next step does not need:
//!
//! | form | what it is | made by | consumed by |
//! |---|---|---|---|
//! | [`EventRef`] | fields borrowed from a read buffer | the native codec (TCP and UDP), the gRPC in-place decoder | [`Shard::publish_in_place`](super::Shard::publish_in_place) and the batch and frame forms of it |
//! | [`RawEvent`] | fields owned, not yet checked | prost decoding (gRPC events the in-place decoder leaves), [`EventRef::to_raw`], clients | [`Event::validate_after`], via `Shard::validate_recent` |
//! | [`Accepted`] | an [`EventRef`] that passed the checks, still in the buffer | admission (`engine/shard/admission.rs`) | sequencing on this shard, or [`Incoming::into_event`] for another |
//! | [`Event`] | validated and owned (id, timestamp filled) | [`Event::validate_after`], [`Incoming::into_event`] | the owner shard's sequencing, `ShardMsg::Publish` and `ShardMsg::Deliver` between shards |
//! | [`Run`](super::run::Run) | many events of one topic as one unit, records as the client sent them | PUBLISH_RUN, runs of PUBLISH frames or batch events | `Shard::publish_run`, sequenced as one range, `ShardMsg::DeliverRun` |
//! | [`EventView`] | a sequenced event, every field borrowed from where it lies | [`Incoming::sequenced_view`], [`Event::view`], `Run::for_each_view` | a door's encoder, writing it into a subscriber's queue |

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};

use super::limits::Limits;
use super::topic::{Topic, TopicError};

/// How much an event matters when a subscriber falls behind (PROTOCOL.md §6.2: lower priorities are
/// shed first, CRITICAL is never shed silently). The numbers are the protobuf enum's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Priority {
    Batch = 0,
    Low = 1,
    Medium = 2,
    High = 3,
    Critical = 4,
}

impl Priority {
    /// Every priority, lowest first: the order in which a full queue sheds.
    pub const ALL: [Priority; 5] = [
        Priority::Batch,
        Priority::Low,
        Priority::Medium,
        Priority::High,
        Priority::Critical,
    ];

    /// The wire value (native protocol byte, protobuf enum number) back to a priority.
    pub fn from_u8(value: u8) -> Option<Priority> {
        Priority::ALL.get(usize::from(value)).copied()
    }

    /// The upper-case name used by the protobuf enum, the CLI and JSON output.
    pub fn name(self) -> &'static str {
        match self {
            Priority::Batch => "BATCH",
            Priority::Low => "LOW",
            Priority::Medium => "MEDIUM",
            Priority::High => "HIGH",
            Priority::Critical => "CRITICAL",
        }
    }

    /// Accepts a name in any case or a number 0..=4, as operators type it on a command line or
    /// in `x-min-priority` metadata.
    pub fn parse(text: &str) -> Option<Priority> {
        if let Ok(n) = text.parse::<u8>() {
            return Priority::from_u8(n);
        }
        Priority::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(text))
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl From<Priority> for crate::proto::Priority {
    fn from(p: Priority) -> Self {
        match p {
            Priority::Batch => crate::proto::Priority::Batch,
            Priority::Low => crate::proto::Priority::Low,
            Priority::Medium => crate::proto::Priority::Medium,
            Priority::High => crate::proto::Priority::High,
            Priority::Critical => crate::proto::Priority::Critical,
        }
    }
}

/// An event's id: either the client's own string, or a UUIDv7 the server generated, kept in
/// its 16 bytes until something needs the text (so generating ids costs no allocation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventId {
    Generated(uuid::Uuid),
    Given(Bytes),
}

impl EventId {
    /// Longest id a client may choose, in bytes.
    pub const MAX_LEN: usize = 255;

    /// The id a client gave, or a generated one (for an event received at `now_ns`) when it
    /// left the id empty.
    fn given_or_generated(given: Bytes, ids: &mut IdGenerator, now_ns: i64) -> EventId {
        if given.is_empty() {
            EventId::Generated(ids.next(now_ns))
        } else {
            EventId::Given(given)
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventId::Generated(u) => write!(f, "{}", u.hyphenated()),
            // Given ids were checked to be UTF-8 when they were decoded.
            EventId::Given(b) => f.write_str(&String::from_utf8_lossy(b)),
        }
    }
}

/// An event's metadata, kept in its native wire form (`count` pairs of u16-length-prefixed
/// UTF-8 key and value) so that decoding, fan-out and re-encoding never allocate per entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    count: u16,
    raw: Bytes,
}

/// Why a metadata block is not well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    #[error("metadata entry {0} is truncated")]
    Truncated(usize),
    #[error("metadata entry {0} is not valid UTF-8")]
    NotUtf8(usize),
    #[error("metadata has {0} bytes after its last entry")]
    TrailingBytes(usize),
    #[error("metadata key or value longer than 65535 bytes")]
    EntryTooLong,
    #[error("more than 65535 metadata entries")]
    TooManyEntries,
}

impl Metadata {
    /// Checks that `raw` holds exactly `count` well-formed UTF-8 pairs and wraps it.
    pub fn from_wire(count: u16, raw: Bytes) -> Result<Metadata, MetadataError> {
        Metadata::check_wire(count, &raw)?;
        Ok(Metadata { count, raw })
    }

    /// Checks that `raw` holds exactly `count` well-formed UTF-8 pairs (the native protocol's
    /// form), without taking it: a door reading in place checks first and copies out later.
    pub fn check_wire(count: u16, mut rest: &[u8]) -> Result<(), MetadataError> {
        for entry in 0..usize::from(count) {
            for _ in 0..2 {
                let (text, tail) = split_str16(rest).ok_or(MetadataError::Truncated(entry))?;
                std::str::from_utf8(text).map_err(|_| MetadataError::NotUtf8(entry))?;
                rest = tail;
            }
        }
        if !rest.is_empty() {
            return Err(MetadataError::TrailingBytes(rest.len()));
        }
        Ok(())
    }

    /// Builds metadata from pairs (CLI, gRPC): allocates once, off the hot path.
    pub fn from_pairs<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Metadata, MetadataError> {
        let mut raw = BytesMut::new();
        let mut count: usize = 0;
        for (k, v) in pairs {
            for s in [k, v] {
                let len = u16::try_from(s.len()).map_err(|_| MetadataError::EntryTooLong)?;
                raw.put_u16_le(len);
                raw.put_slice(s.as_bytes());
            }
            count += 1;
        }
        let count = u16::try_from(count).map_err(|_| MetadataError::TooManyEntries)?;
        Ok(Metadata {
            count,
            raw: raw.freeze(),
        })
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// True when there is no entry.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Encoded size of the entries (what counts against the metadata byte limit).
    pub fn wire_len(&self) -> usize {
        self.raw.len()
    }

    /// The encoded entries, as the native protocol carries them after the count.
    pub fn wire(&self) -> &Bytes {
        &self.raw
    }

    /// The entries in order. Duplicated keys are kept as sent.
    pub fn iter(&self) -> MetadataIter<'_> {
        MetadataIter::over_wire(&self.raw)
    }
}

impl<'a> MetadataIter<'a> {
    /// The entries of a block [`Metadata::check_wire`] accepted (or that [`Metadata::wire`]
    /// holds).
    pub fn over_wire(raw: &'a [u8]) -> MetadataIter<'a> {
        MetadataIter { rest: raw }
    }
}

/// Iterator over metadata entries; see [`Metadata::iter`].
pub struct MetadataIter<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for MetadataIter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        let (k, rest) = split_str16(self.rest)?;
        let (v, rest) = split_str16(rest)?;
        self.rest = rest;
        // Both were checked by `from_wire` / built from `&str` in `from_pairs`.
        Some((std::str::from_utf8(k).ok()?, std::str::from_utf8(v).ok()?))
    }
}

fn split_str16(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = usize::from(u16::from_le_bytes(buf.get(..2)?.try_into().ok()?));
    let body = buf.get(2..2 + len)?;
    Some((body, &buf[2 + len..]))
}

/// An event as a door decoded it, before the engine checked it against the rules of PROTOCOL.md §4
/// and PROTOCOL.md §5.1.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawEvent {
    pub topic: Bytes,
    /// Empty: the server generates a UUIDv7.
    pub id: Bytes,
    pub payload: Bytes,
    pub metadata: Metadata,
    pub priority: u8,
    /// 0: the server fills in the receive time.
    pub timestamp_ns: i64,
}

impl RawEvent {
    /// The same fields, borrowed.
    pub fn as_ref(&self) -> EventRef<'_> {
        EventRef {
            topic: &self.topic,
            id: &self.id,
            metadata_count: self.metadata.len() as u16,
            metadata: self.metadata.wire(),
            payload: &self.payload,
            priority: self.priority,
            timestamp_ns: self.timestamp_ns,
        }
    }
}

/// An event as the doors decode it: in place, its fields borrowing the buffer the connection
/// read (so that decoding takes no reference count and copies nothing). Its metadata, in the
/// native protocol's form, was checked to be well formed by the decoder
/// ([`Metadata::check_wire`]); the gRPC door decodes only events without metadata this way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub topic: &'a [u8],
    /// Empty: the server generates a UUIDv7.
    pub id: &'a [u8],
    pub metadata_count: u16,
    /// The metadata entries in the native protocol's form.
    pub metadata: &'a [u8],
    pub payload: &'a [u8],
    pub priority: u8,
    /// 0: the server fills in the receive time.
    pub timestamp_ns: i64,
}

impl EventRef<'_> {
    /// The owned event, its fields sharing `buffer`, which the borrowed fields point into.
    pub fn to_raw(&self, buffer: &Bytes) -> RawEvent {
        RawEvent {
            topic: share(buffer, self.topic),
            id: share(buffer, self.id),
            payload: share(buffer, self.payload),
            metadata: self.metadata_in(buffer),
            priority: self.priority,
            timestamp_ns: self.timestamp_ns,
        }
    }

    /// The metadata, sharing `buffer` (the decoder checked it is well formed).
    fn metadata_in(&self, buffer: &Bytes) -> Metadata {
        Metadata {
            count: self.metadata_count,
            raw: share(buffer, self.metadata),
        }
    }
}

/// `part` of `buffer` as a `Bytes` sharing it; empty parts take no reference.
pub(crate) fn share(buffer: &Bytes, part: &[u8]) -> Bytes {
    if part.is_empty() {
        Bytes::new()
    } else {
        buffer.slice_ref(part)
    }
}

/// A validated event, sequenced once it reaches its topic's owner shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub topic: Topic,
    pub id: EventId,
    pub payload: Bytes,
    pub metadata: Metadata,
    pub priority: Priority,
    pub timestamp_ns: i64,
    /// 0 until the owner shard sequences it; then 1, 2, 3 … per topic.
    pub sequence: u64,
}

/// Why the engine refuses an event (PROTOCOL.md §4, PROTOCOL.md §5.1). Doors map it to
/// INVALID_ARGUMENT or an ERROR frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("invalid topic: {0}")]
    Topic(#[from] TopicError),
    #[error("topic {0:?} is reserved for the server (topics starting with '$')")]
    ReservedTopic(String),
    #[error("priority {0} is not one of 0..=4 (BATCH, LOW, MEDIUM, HIGH, CRITICAL)")]
    Priority(u8),
    #[error("id is {0} bytes, longer than the limit of 255")]
    IdTooLong(usize),
    #[error("id is not valid UTF-8")]
    IdNotUtf8,
    #[error("payload plus metadata is {size} bytes, over the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("{count} metadata entries, over the limit of {max}")]
    TooManyMetadata { count: usize, max: usize },
    #[error("metadata is {size} bytes, over the limit of {max}")]
    MetadataTooLarge { size: usize, max: usize },
}

impl Event {
    /// Checks a decoded event against PROTOCOL.md §5.1 and the configured limits, and fills the id
    /// and the timestamp when the client left them empty. When its topic is byte for byte
    /// `previous` (an already validated topic: the same connection's last one, see
    /// [`Shard::validate_recent`](super::Shard::validate_recent)), that topic is reused instead of
    /// checked again (publishers usually repeat one topic; the check was a large part of a batch's
    /// instructions and of a native publish's: docs/PERFORMANCE.md).
    pub fn validate_after(
        mut raw: RawEvent,
        previous: Option<&Topic>,
        limits: &Limits,
        ids: &mut IdGenerator,
        now_ns: i64,
    ) -> Result<Event, EventError> {
        let topic = match previous {
            Some(known) if known.bytes() == &raw.topic => known.clone(),
            _ => Topic::parse(std::mem::take(&mut raw.topic))?,
        };
        // (The topic's bytes may have moved into `topic`: the rules read it from there.)
        let priority = check_fields(&topic, &raw.as_ref(), limits)?;
        Ok(Event {
            topic,
            id: EventId::given_or_generated(raw.id, ids, now_ns),
            payload: raw.payload,
            metadata: raw.metadata,
            priority,
            timestamp_ns: timestamp_or(raw.timestamp_ns, now_ns),
            sequence: 0,
        })
    }

    /// The event borrowed as subscribers receive it.
    pub fn view(&self) -> EventView<'_> {
        EventView {
            topic: self.topic.bytes(),
            id: match &self.id {
                EventId::Generated(id) => IdView::Generated(*id),
                EventId::Given(id) => IdView::Given(id),
            },
            payload: &self.payload,
            metadata_count: self.metadata.len() as u16,
            metadata: self.metadata.wire(),
            priority: self.priority,
            timestamp_ns: self.timestamp_ns,
            sequence: self.sequence,
        }
    }
}

/// The rules of PROTOCOL.md §5.1 besides the topic's shape, and the configured limits; the priority
/// on success.
pub(super) fn check_fields(
    topic: &Topic,
    raw: &EventRef<'_>,
    limits: &Limits,
) -> Result<Priority, EventError> {
    if topic.is_reserved() {
        return Err(EventError::ReservedTopic(topic.as_str().to_owned()));
    }
    let priority = Priority::from_u8(raw.priority).ok_or(EventError::Priority(raw.priority))?;
    if raw.id.len() > EventId::MAX_LEN {
        return Err(EventError::IdTooLong(raw.id.len()));
    }
    if std::str::from_utf8(raw.id).is_err() {
        return Err(EventError::IdNotUtf8);
    }
    let metadata_count = usize::from(raw.metadata_count);
    if metadata_count > limits.max_metadata_entries {
        return Err(EventError::TooManyMetadata {
            count: metadata_count,
            max: limits.max_metadata_entries,
        });
    }
    if raw.metadata.len() > limits.max_metadata_bytes {
        return Err(EventError::MetadataTooLarge {
            size: raw.metadata.len(),
            max: limits.max_metadata_bytes,
        });
    }
    let size = raw.payload.len() + raw.metadata.len();
    if size > limits.max_message_bytes {
        return Err(EventError::TooLarge {
            size,
            max: limits.max_message_bytes,
        });
    }
    Ok(priority)
}

/// An event decoded in place that passed the checks of PROTOCOL.md §5.1
/// ([`Shard::publish_in_place`](super::Shard::publish_in_place),
/// [`Shard::publish_batch_in_place`](super::Shard::publish_batch_in_place)), still in the door's
/// buffer: what sequencing needs (topic, priority) without the owned [`Event`], which only another
/// shard needs: subscribers on this shard receive an [`EventView`] of it. An event published to a
/// topic with no subscriber elsewhere is never copied out as a whole.
pub struct Accepted<'a> {
    topic: &'a Topic,
    priority: Priority,
    raw: EventRef<'a>,
    buffer: &'a Bytes,
    received_ns: i64,
}

impl<'a> Accepted<'a> {
    /// An event that [`check_fields`] already passed with `priority`, its topic `topic`.
    pub(super) fn checked(
        topic: &'a Topic,
        priority: Priority,
        raw: EventRef<'a>,
        buffer: &'a Bytes,
        received_ns: i64,
    ) -> Accepted<'a> {
        debug_assert_eq!(topic.bytes()[..], *raw.topic, "the event's own topic");
        debug_assert_eq!(Priority::from_u8(raw.priority), Some(priority));
        Accepted {
            topic,
            priority,
            raw,
            buffer,
            received_ns,
        }
    }
}

/// An event on its way to its topic's owner, as [`Shard::publish`](super::Shard::publish)
/// takes it: an [`Event`] (the gRPC and UDP doors, and every event another shard forwards), or
/// an [`Accepted`] one still in place (the native TCP door, gRPC events without metadata).
pub trait Incoming {
    /// The event's validated topic.
    fn topic(&self) -> &Topic;
    /// The event's priority (which subscriptions want it).
    fn priority(&self) -> Priority;
    /// The id the server makes for it (with `ids`) when the client left the id empty; `None`
    /// when it has one. Made once, whoever receives the event.
    fn new_id(&self, ids: &mut IdGenerator) -> Option<uuid::Uuid>;
    /// The event as subscribers on this shard receive it, numbered `sequence`: `generated`
    /// is what [`new_id`](Self::new_id) made.
    fn sequenced_view(&self, generated: Option<uuid::Uuid>, sequence: u64) -> EventView<'_>;
    /// The owned event, for another shard: `generated` is what [`new_id`](Self::new_id) made.
    fn into_event(self, generated: Option<uuid::Uuid>, sequence: u64) -> Event;
}

impl Incoming for Event {
    fn topic(&self) -> &Topic {
        &self.topic
    }

    fn priority(&self) -> Priority {
        self.priority
    }

    fn new_id(&self, _: &mut IdGenerator) -> Option<uuid::Uuid> {
        None // validated events have their ids
    }

    fn sequenced_view(&self, generated: Option<uuid::Uuid>, sequence: u64) -> EventView<'_> {
        debug_assert!(generated.is_none(), "an owned event has its id");
        EventView {
            sequence,
            ..self.view()
        }
    }

    fn into_event(mut self, generated: Option<uuid::Uuid>, sequence: u64) -> Event {
        debug_assert!(generated.is_none(), "an owned event has its id");
        self.sequence = sequence;
        self
    }
}

impl Incoming for Accepted<'_> {
    fn topic(&self) -> &Topic {
        self.topic
    }

    fn priority(&self) -> Priority {
        self.priority
    }

    fn new_id(&self, ids: &mut IdGenerator) -> Option<uuid::Uuid> {
        self.raw.id.is_empty().then(|| ids.next(self.received_ns))
    }

    fn sequenced_view(&self, generated: Option<uuid::Uuid>, sequence: u64) -> EventView<'_> {
        debug_assert_eq!(generated.is_none(), !self.raw.id.is_empty());
        let raw = &self.raw;
        EventView {
            topic: raw.topic,
            id: match generated {
                Some(id) => IdView::Generated(id),
                None => IdView::Given(raw.id),
            },
            payload: raw.payload,
            metadata_count: raw.metadata_count,
            metadata: raw.metadata,
            priority: self.priority,
            timestamp_ns: timestamp_or(raw.timestamp_ns, self.received_ns),
            sequence,
        }
    }

    fn into_event(self, generated: Option<uuid::Uuid>, sequence: u64) -> Event {
        debug_assert_eq!(generated.is_none(), !self.raw.id.is_empty());
        let (raw, buffer) = (self.raw, self.buffer);
        Event {
            topic: self.topic.clone(),
            id: match generated {
                Some(id) => EventId::Generated(id),
                None => EventId::Given(share(buffer, raw.id)),
            },
            payload: share(buffer, raw.payload),
            metadata: raw.metadata_in(buffer),
            priority: self.priority,
            timestamp_ns: timestamp_or(raw.timestamp_ns, self.received_ns),
            sequence,
        }
    }
}

/// A sequenced event as a subscriber's door encodes it, every field borrowed from wherever
/// the event lies (a door's receive buffer, or an owned [`Event`] from another shard).
/// Delivery encodes it straight into the subscriber's queue: one copy of each field, no
/// reference count taken, nothing moved by value but this view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventView<'a> {
    pub topic: &'a [u8],
    /// The id: a generated one stays 16 bytes until a door that needs text formats it.
    pub id: IdView<'a>,
    pub payload: &'a [u8],
    pub metadata_count: u16,
    /// The metadata entries in the native protocol's form.
    pub metadata: &'a [u8],
    pub priority: Priority,
    pub timestamp_ns: i64,
    pub sequence: u64,
}

impl<'a> EventView<'a> {
    /// The metadata entries in order.
    pub fn metadata_entries(&self) -> MetadataIter<'a> {
        MetadataIter::over_wire(self.metadata)
    }
}

/// An event's id as a door encodes it: a generated UUIDv7 in its 16 bytes (the native
/// protocol's delivery runs carry it so), or the text a client gave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdView<'a> {
    Generated(uuid::Uuid),
    Given(&'a [u8]),
}

impl<'a> IdView<'a> {
    /// The id as text: a generated one formatted into `scratch` (for doors that carry text).
    pub fn text<'s>(&self, scratch: &'s mut IdText) -> &'s [u8]
    where
        'a: 's,
    {
        match *self {
            IdView::Generated(id) => scratch.of(&id),
            IdView::Given(text) => text,
        }
    }
}

/// Room for a generated id's text, on the stack of whoever encodes the event.
pub struct IdText([u8; uuid::fmt::Hyphenated::LENGTH]);

impl Default for IdText {
    fn default() -> IdText {
        IdText([0; uuid::fmt::Hyphenated::LENGTH])
    }
}

impl IdText {
    /// `id` as lower-case hyphenated text, written here.
    pub fn of(&mut self, id: &uuid::Uuid) -> &[u8] {
        id.hyphenated().encode_lower(&mut self.0).as_bytes()
    }
}

/// The timestamp a client gave, or the receive time (`now_ns`) when it left 0.
fn timestamp_or(given: i64, now_ns: i64) -> i64 {
    if given == 0 {
        now_ns
    } else {
        given
    }
}

/// Current Unix time in nanoseconds (a vDSO call, no syscall).
pub fn unix_now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Makes UUIDv7 ids without a syscall or a lock: the millisecond timestamp, then a per-shard
/// counter mixed with a per-shard random seed (unique within the shard, unpredictable across).
pub struct IdGenerator {
    seed: u64,
    counter: u64,
}

impl IdGenerator {
    /// One generator per shard; `seed` should differ between shards and runs.
    pub fn new(seed: u64) -> IdGenerator {
        IdGenerator { seed, counter: 0 }
    }

    /// The next id for an event received at `now_ns`.
    pub fn next(&mut self, now_ns: i64) -> uuid::Uuid {
        self.range(1, now_ns).id(0)
    }

    /// Ids for `count` events received at `now_ns`, taken at once: a run of events is given
    /// its ids as one [`IdRange`], which any shard can expand again without this generator.
    pub fn range(&mut self, count: u32, now_ns: i64) -> IdRange {
        let first = self.counter.wrapping_add(1);
        self.counter = self.counter.wrapping_add(u64::from(count));
        IdRange {
            seed: self.seed,
            first,
            millis: u64::try_from(now_ns / 1_000_000).unwrap_or(0),
        }
    }
}

/// The ids of a run of events, in 24 bytes however long the run ([`IdGenerator::range`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    seed: u64,
    first: u64,
    millis: u64,
}

impl IdRange {
    /// The id of the run's `index`-th event: a UUIDv7 of the run's millisecond whose 74 bits
    /// after the version and variant are the mixed counter then the seed's low 16 bits (what
    /// `uuid::Builder::from_unix_timestamp_millis` makes of those bytes). Computed as two
    /// words, not byte by byte: copying a UUID assembled from single-byte stores stalled the
    /// run's delivery loop (measured in `native-tcp`: docs/PERFORMANCE.md).
    #[inline]
    pub fn id(&self, index: u32) -> uuid::Uuid {
        let counter = self.first.wrapping_add(u64::from(index));
        let r = splitmix64(self.seed ^ counter).to_le_bytes();
        let seed = (self.seed as u16).to_le_bytes();
        let high = (self.millis & 0xFFFF_FFFF_FFFF) << 16
            | 0x7000
            | u64::from(r[0] & 0x0F) << 8
            | u64::from(r[1]);
        let variant = (r[2] & 0x3F) | 0x80;
        let low = u64::from_be_bytes([variant, r[3], r[4], r[5], r[6], r[7], seed[0], seed[1]]);
        uuid::Uuid::from_u64_pair(high, low)
    }
}

/// A bijective mixer: distinct counters give distinct outputs, so ids never collide in a shard.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(topic: &str) -> RawEvent {
        RawEvent {
            topic: Bytes::copy_from_slice(topic.as_bytes()),
            payload: Bytes::from_static(b"hello"),
            priority: 2,
            ..RawEvent::default()
        }
    }

    #[test]
    fn a_batch_reuses_the_previous_topic_only_when_it_is_the_same() {
        let limits = Limits::default();
        let mut ids = IdGenerator::new(1);
        let first = Event::validate_after(raw("a/b"), None, &limits, &mut ids, 1).unwrap();
        let previous = Some(&first.topic);
        let same = Event::validate_after(raw("a/b"), previous, &limits, &mut ids, 1).unwrap();
        assert_eq!(same.topic, first.topic);
        let other = Event::validate_after(raw("a/c"), previous, &limits, &mut ids, 1).unwrap();
        assert_eq!(other.topic.as_str(), "a/c");
        // A different topic is still checked in full.
        for bad in ["a//b", "$sys/x", "a/*"] {
            assert!(Event::validate_after(raw(bad), previous, &limits, &mut ids, 1).is_err());
        }
    }

    #[test]
    fn priority_names_and_numbers_parse() {
        assert_eq!(Priority::parse("low"), Some(Priority::Low));
        assert_eq!(Priority::parse("CRITICAL"), Some(Priority::Critical));
        assert_eq!(Priority::parse("3"), Some(Priority::High));
        assert_eq!(Priority::parse("5"), None);
        assert_eq!(Priority::parse("urgent"), None);
    }

    #[test]
    fn priority_matches_protobuf_numbers() {
        for p in Priority::ALL {
            assert_eq!(crate::proto::Priority::from(p) as i32, p as i32);
        }
    }

    #[test]
    fn validate_fills_id_and_timestamp() {
        let mut ids = IdGenerator::new(7);
        let e = Event::validate_after(
            raw("a/b"),
            None,
            &Limits::default(),
            &mut ids,
            1_700_000_000_000_000_000,
        )
        .unwrap();
        assert_eq!(e.timestamp_ns, 1_700_000_000_000_000_000);
        let EventId::Generated(u) = e.id else {
            panic!("id not generated")
        };
        assert_eq!(u.get_version_num(), 7);
        let mut scratch = IdText::default();
        assert_eq!(e.view().id.text(&mut scratch), e.id.to_string().as_bytes());
    }

    #[test]
    fn validate_keeps_given_id_and_timestamp() {
        let mut r = raw("a/b");
        r.id = Bytes::from_static(b"my-id");
        r.timestamp_ns = 42;
        let e = Event::validate_after(r, None, &Limits::default(), &mut IdGenerator::new(1), 99)
            .unwrap();
        assert_eq!(e.id, EventId::Given(Bytes::from_static(b"my-id")));
        assert_eq!(e.timestamp_ns, 42);
    }

    #[test]
    fn validate_refuses_what_section_3_forbids() {
        let limits = Limits::default();
        let mut ids = IdGenerator::new(1);
        let mut check =
            |r: RawEvent| Event::validate_after(r, None, &limits, &mut ids, 1).unwrap_err();
        assert!(matches!(check(raw("$sys/x")), EventError::ReservedTopic(_)));
        assert!(matches!(check(raw("a//b")), EventError::Topic(_)));
        let mut r = raw("a");
        r.priority = 9;
        assert_eq!(check(r), EventError::Priority(9));
        let mut r = raw("a");
        r.payload = Bytes::from(vec![0u8; limits.max_message_bytes + 1]);
        assert!(matches!(check(r), EventError::TooLarge { .. }));
        let mut r = raw("a");
        let keys: Vec<String> = (0..65).map(|i| format!("k{i}")).collect();
        r.metadata = Metadata::from_pairs(keys.iter().map(|k| (k.as_str(), "v"))).unwrap();
        assert!(matches!(
            check(r),
            EventError::TooManyMetadata { count: 65, .. }
        ));
        let mut r = raw("a");
        let big = "x".repeat(17 * 1024);
        r.metadata = Metadata::from_pairs([("k", big.as_str())]).unwrap();
        assert!(matches!(check(r), EventError::MetadataTooLarge { .. }));
        let mut r = raw("a");
        r.id = Bytes::from(vec![b'i'; 256]);
        assert_eq!(check(r), EventError::IdTooLong(256));
    }

    #[test]
    fn metadata_round_trips_through_wire_form() {
        let m = Metadata::from_pairs([("source", "unit"), ("é", "ü")]).unwrap();
        let again = Metadata::from_wire(2, m.wire().clone()).unwrap();
        assert_eq!(
            again.iter().collect::<Vec<_>>(),
            vec![("source", "unit"), ("é", "ü")]
        );
        assert_eq!(
            Metadata::from_wire(3, m.wire().clone()),
            Err(MetadataError::Truncated(2))
        );
        assert_eq!(
            Metadata::from_wire(1, m.wire().clone()),
            Err(MetadataError::TrailingBytes(8))
        );
        let bad = Bytes::from_static(&[1, 0, 0xff, 0, 0]);
        assert_eq!(Metadata::from_wire(1, bad), Err(MetadataError::NotUtf8(0)));
    }

    #[test]
    fn a_range_of_ids_is_what_as_many_single_ids_would_have_been() {
        let (mut one_by_one, mut ranged) = (IdGenerator::new(9), IdGenerator::new(9));
        let range = ranged.range(3, 7_000_000);
        for i in 0..3 {
            assert_eq!(range.id(i), one_by_one.next(7_000_000));
        }
        assert_eq!(ranged.next(7_000_000), one_by_one.next(7_000_000));
    }

    #[test]
    fn ids_are_the_uuid_crate_s_v7_of_the_same_bytes() {
        for (seed, millis) in [
            (1u64, 1_700_000_000_123u64),
            (u64::MAX, 0),
            (0x1234, 9_000_000_000_000),
        ] {
            let range = IdGenerator::new(seed).range(3, (millis * 1_000_000) as i64);
            for i in 0..3 {
                let counter = 1 + u64::from(i);
                let mut tail = [0u8; 10];
                tail[..8].copy_from_slice(&splitmix64(seed ^ counter).to_le_bytes());
                tail[8..].copy_from_slice(&(seed as u16).to_le_bytes());
                let want = uuid::Builder::from_unix_timestamp_millis(millis, &tail).into_uuid();
                assert_eq!(range.id(i), want);
                assert_eq!(want.get_version_num(), 7);
            }
        }
    }

    #[test]
    fn generated_ids_are_distinct() {
        let mut ids = IdGenerator::new(3);
        let a = ids.next(5_000_000);
        let b = ids.next(5_000_000);
        assert_ne!(a, b);
    }
}
