//! What a bridged event carries in its NATS message headers, and back, with no I/O: the
//! fields a remote subscriber must see as the publisher's node saw them (priority, id,
//! timestamp, metadata) and where it came from (the origin node and its sequence number).
//!
//! The fixed fields share one header, [`EVENT_HEADER`], because each header costs the NATS
//! client allocations and a hash-map entry on both sides (docs/PERFORMANCE.md, "The NATS
//! bridge"); metadata entries are one [`METADATA_HEADER`] each. Header values cannot hold CR
//! or LF, and the NATS client trims their ends, so the id and metadata are written with `%XX`
//! escapes ([`escaped`]). On import the origin becomes two metadata entries
//! ([`ORIGIN_KEY`], [`ORIGIN_SEQUENCE_KEY`]): a subscriber on another node sees where the
//! event was sequenced first, and the bridge never exports an event that has them (no loops).

use std::fmt::Write as _;

use bytes::Bytes;

use crate::engine::{EventView, IdText, Metadata, Priority, RawEvent};

/// The fixed fields, space-separated in this order: priority (0..=4), timestamp (Unix
/// nanoseconds), the per-topic sequence number on the origin node, the origin
/// (`node@start_ms`), and the id (escaped). Fields after these are ignored, so later
/// versions may add some.
pub const EVENT_HEADER: &str = "Eventstream";
/// One metadata entry, `key=value`, escaped; repeated for each entry, in order.
pub const METADATA_HEADER: &str = "Eventstream-Metadata";

/// The metadata key an imported event's origin node is kept under.
pub const ORIGIN_KEY: &str = "eventstream.origin";
/// The metadata key an imported event's origin sequence number is kept under.
pub const ORIGIN_SEQUENCE_KEY: &str = "eventstream.origin_sequence";

/// The headers of the first version of the bridge, one per fixed field. Read still, so that
/// a node of that version can export to this one; never written.
mod first_version {
    pub const PRIORITY: &str = "Eventstream-Priority";
    pub const ID: &str = "Eventstream-Id";
    pub const TIMESTAMP: &str = "Eventstream-Timestamp-Ns";
    pub const ORIGIN: &str = "Eventstream-Origin";
    pub const ORIGIN_SEQUENCE: &str = "Eventstream-Origin-Sequence";
}

/// The headers an exported event has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// [`EVENT_HEADER`]: once.
    Event,
    /// [`METADATA_HEADER`]: once per metadata entry.
    Metadata,
}

impl Header {
    /// The header's name.
    pub fn name(self) -> &'static str {
        match self {
            Header::Event => EVENT_HEADER,
            Header::Metadata => METADATA_HEADER,
        }
    }
}

/// Why an imported message cannot become an event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("header {0} is missing")]
    Missing(&'static str),
    #[error("{name} has the value {value:?}, which is not {expected}")]
    Invalid {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("metadata: {0}")]
    Metadata(String),
}

/// The headers of `event`, sequenced on this node, as exported by node `origin` (which has no
/// whitespace): each handed to `put` in order, straight into the client's header map.
pub fn headers_of(event: &EventView<'_>, origin: &str, mut put: impl FnMut(Header, String)) {
    debug_assert!(!origin.contains(char::is_whitespace), "origin {origin:?}");
    let mut scratch = IdText::default();
    let id = String::from_utf8_lossy(event.id.text(&mut scratch));
    let mut fields = String::with_capacity(FIXED_FIELDS_BYTES + origin.len() + id.len());
    let _ = write!(
        fields,
        "{} {} {} {origin} ",
        event.priority as u8, event.timestamp_ns, event.sequence
    );
    escape_into(&mut fields, &id);
    put(Header::Event, fields);
    for (key, value) in event.metadata_entries() {
        let mut entry = String::with_capacity(key.len() + value.len() + 1);
        escape_into(&mut entry, key);
        entry.push('=');
        escape_into(&mut entry, value);
        put(Header::Metadata, entry);
    }
}

/// Room for the numbers of [`EVENT_HEADER`] and their spaces: a priority, two 20-digit
/// numbers, four spaces.
const FIXED_FIELDS_BYTES: usize = 1 + 20 + 20 + 4;

/// True when an event came from the bridge: it has an origin, and is never exported again.
pub fn is_imported(event: &EventView<'_>) -> bool {
    event.metadata_entries().any(|(key, _)| key == ORIGIN_KEY)
}

/// An event's fixed fields, as text from its headers.
#[derive(Default)]
struct Fields<'h> {
    /// All in [`EVENT_HEADER`], the id escaped; else each in the first version's own header,
    /// the id as it was.
    in_one_header: bool,
    priority: Option<&'h str>,
    timestamp_ns: Option<&'h str>,
    origin_sequence: Option<&'h str>,
    origin: Option<&'h str>,
    id: Option<&'h str>,
}

/// The event an imported message of `topic` with `payload` and `headers` (name, value in
/// order) stands for, to be published on this node: the origin's fields, and its origin and
/// origin sequence as metadata.
pub fn event_of<'h>(
    topic: Bytes,
    payload: Bytes,
    headers: impl IntoIterator<Item = (&'h str, &'h str)>,
) -> Result<RawEvent, HeaderError> {
    let (mut fields, mut first_version) = (None, Fields::default());
    let mut metadata: Vec<(String, String)> = Vec::new();
    for (name, value) in headers {
        match name {
            EVENT_HEADER if fields.is_none() => fields = Some(value),
            METADATA_HEADER => metadata.push(metadata_entry(value)?),
            first_version::PRIORITY => first_version.priority = Some(value),
            first_version::ID => first_version.id = Some(value),
            first_version::TIMESTAMP => first_version.timestamp_ns = Some(value),
            first_version::ORIGIN => first_version.origin = Some(value),
            first_version::ORIGIN_SEQUENCE => first_version.origin_sequence = Some(value),
            _ => {}
        }
    }
    let fields = match fields {
        Some(value) => fields_of(value)?,
        None if first_version.priority.is_none() => return Err(HeaderError::Missing(EVENT_HEADER)),
        None => first_version,
    };
    // A field's header: EVENT_HEADER, or the first version's own header for it.
    let header_of = |own: &'static str| match fields.in_one_header {
        true => EVENT_HEADER,
        false => own,
    };
    let field = |value: Option<&'h str>, name: &'static str| {
        value.ok_or(HeaderError::Missing(header_of(name)))
    };
    let invalid = |name: &'static str, value: &str, expected: &'static str| HeaderError::Invalid {
        name: header_of(name),
        value: value.to_owned(),
        expected,
    };
    let priority = field(fields.priority, first_version::PRIORITY)?;
    let priority = priority
        .parse::<u8>()
        .ok()
        .and_then(Priority::from_u8)
        .ok_or_else(|| invalid(first_version::PRIORITY, priority, "a priority 0..=4"))?;
    let timestamp = field(fields.timestamp_ns, first_version::TIMESTAMP)?;
    let timestamp_ns = timestamp
        .parse::<i64>()
        .map_err(|_| invalid(first_version::TIMESTAMP, timestamp, "Unix nanoseconds"))?;
    let sequence = field(fields.origin_sequence, first_version::ORIGIN_SEQUENCE)?;
    // Kept as text in the metadata: digits only, as the origin wrote it.
    let digits = sequence.bytes().all(|b| b.is_ascii_digit());
    if !digits || sequence.parse::<u64>().is_err() {
        return Err(invalid(
            first_version::ORIGIN_SEQUENCE,
            sequence,
            "a sequence number",
        ));
    }
    let origin = field(fields.origin, first_version::ORIGIN)?;
    let id = fields.id.ok_or(HeaderError::Missing(first_version::ID))?;
    let id = match fields.in_one_header {
        true => Bytes::from(
            unescape(id).ok_or_else(|| invalid(first_version::ID, id, "an escaped id"))?,
        ),
        false => Bytes::copy_from_slice(id.as_bytes()),
    };
    let pairs = metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain([(ORIGIN_KEY, origin), (ORIGIN_SEQUENCE_KEY, sequence)]);
    let metadata = Metadata::from_pairs(pairs).map_err(|e| HeaderError::Metadata(e.to_string()))?;
    Ok(RawEvent {
        topic,
        id,
        payload,
        metadata,
        priority: priority as u8,
        timestamp_ns,
    })
}

/// The fixed fields of an [`EVENT_HEADER`] value: all five, each one non-empty.
fn fields_of(value: &str) -> Result<Fields<'_>, HeaderError> {
    let mut parts = value.split(' ');
    let mut next = || parts.next().filter(|part| !part.is_empty());
    let (priority, timestamp_ns, origin_sequence, origin, id) =
        (next(), next(), next(), next(), next());
    match (priority, timestamp_ns, origin_sequence, origin, id) {
        (Some(_), Some(_), Some(_), Some(_), Some(_)) => Ok(Fields {
            in_one_header: true,
            priority,
            timestamp_ns,
            origin_sequence,
            origin,
            id,
        }),
        _ => Err(HeaderError::Invalid {
            name: EVENT_HEADER,
            value: value.to_owned(),
            expected: "priority, timestamp, sequence, origin and id, one space apart",
        }),
    }
}

fn metadata_entry(value: &str) -> Result<(String, String), HeaderError> {
    let bad = || HeaderError::Invalid {
        name: METADATA_HEADER,
        value: value.to_owned(),
        expected: "an escaped key=value entry",
    };
    let (key, value) = value.split_once('=').ok_or_else(bad)?;
    Ok((
        unescape(key).ok_or_else(bad)?,
        unescape(value).ok_or_else(bad)?,
    ))
}

/// Whether `c` is written `%XX` in an id or a metadata key or value: the escape itself; `=`,
/// which ends a metadata key; whitespace, which separates the fixed fields and which the
/// NATS client trims from the ends of header values; and control characters (line breaks
/// would end the header).
fn escaped(c: char) -> bool {
    c == '%' || c == '=' || c.is_whitespace() || c.is_control()
}

fn escape_into(out: &mut String, text: &str) {
    // Printable ASCII other than `%` and `=` is never escaped: most ids and metadata are, and
    // are copied whole.
    let plain = |b: u8| b.is_ascii_graphic() && b != b'%' && b != b'=';
    if text.bytes().all(plain) {
        out.push_str(text);
        return;
    }
    for c in text.chars() {
        if escaped(c) {
            let mut utf8 = [0; 4];
            for byte in c.encode_utf8(&mut utf8).bytes() {
                let _ = write!(out, "%{byte:02X}");
            }
        } else {
            out.push(c);
        }
    }
}

/// The inverse of [`escape_into`]; None for a malformed escape or bytes that are not UTF-8.
fn unescape(text: &str) -> Option<String> {
    if !text.contains('%') {
        return Some(text.to_owned());
    }
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'%' {
            let hex = tail
                .get(..2)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
            bytes.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            rest = &tail[2..];
        } else {
            bytes.push(first);
            rest = tail;
        }
    }
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::IdView;
    use proptest::prelude::*;

    fn view<'a>(id: &'a [u8], metadata: &'a Metadata) -> EventView<'a> {
        EventView {
            topic: b"a/b",
            id: IdView::Given(id),
            payload: b"x",
            metadata_count: metadata.len() as u16,
            metadata: metadata.wire(),
            priority: Priority::High,
            timestamp_ns: 1_700_000_000_000_000_000,
            sequence: 42,
        }
    }

    /// What `headers_of` hands out, as a list of names and values.
    fn exported(event: &EventView<'_>, origin: &str) -> Vec<(&'static str, String)> {
        let mut headers = Vec::new();
        headers_of(event, origin, |header, value| {
            headers.push((header.name(), value))
        });
        headers
    }

    /// Imports `headers` as the NATS client hands them over: each value trimmed.
    fn import(headers: &[(&'static str, String)]) -> Result<RawEvent, HeaderError> {
        let pairs = headers.iter().map(|(n, v)| (*n, v.trim()));
        event_of(Bytes::from_static(b"a/b"), Bytes::from_static(b"x"), pairs)
    }

    fn entries(metadata: &Metadata) -> Vec<(&str, &str)> {
        metadata.iter().collect()
    }

    /// The example of docs/BRIDGE.md, "What an exported event carries", byte for byte.
    #[test]
    fn the_documented_headers_golden() {
        let metadata = Metadata::from_pairs([("unit", "°C"), ("note", "a=b 5%")]).unwrap();
        let mut event = view(b"reading 7", &metadata);
        event.timestamp_ns = 1_764_806_400_000_000_000;
        event.sequence = 1_204;
        let headers = exported(&event, "edge-1@1764806000000");
        let expected = [
            (
                "Eventstream",
                "3 1764806400000000000 1204 edge-1@1764806000000 reading%207",
            ),
            ("Eventstream-Metadata", "unit=°C"),
            ("Eventstream-Metadata", "note=a%3Db%205%25"),
        ];
        let got: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn an_exported_event_is_imported_with_its_fields_and_its_origin_as_metadata() {
        let metadata = Metadata::from_pairs([("k", "v"), ("a=b", "50%\r\n")]).unwrap();
        let headers = exported(&view(b"id 1\r\n%", &metadata), "node-a@1700");
        let imported = import(&headers).unwrap();
        assert_eq!(imported.priority, Priority::High as u8);
        assert_eq!(&imported.id[..], b"id 1\r\n%");
        assert_eq!(imported.timestamp_ns, 1_700_000_000_000_000_000);
        assert_eq!(
            entries(&imported.metadata),
            vec![
                ("k", "v"),
                ("a=b", "50%\r\n"),
                (ORIGIN_KEY, "node-a@1700"),
                (ORIGIN_SEQUENCE_KEY, "42"),
            ]
        );
        let reimported = view(b"id-1", &imported.metadata);
        assert!(is_imported(&reimported));
        assert!(!is_imported(&view(b"id-1", &metadata)));
    }

    #[test]
    fn the_first_versions_headers_are_still_imported() {
        let headers = [
            (first_version::PRIORITY, "1".to_owned()),
            (first_version::ID, "old id".to_owned()),
            (first_version::TIMESTAMP, "5".to_owned()),
            (first_version::ORIGIN, "old@1".to_owned()),
            (first_version::ORIGIN_SEQUENCE, "9".to_owned()),
            (METADATA_HEADER, "k=v".to_owned()),
        ];
        let imported = import(&headers).unwrap();
        assert_eq!(imported.priority, Priority::Low as u8);
        assert_eq!(&imported.id[..], b"old id");
        assert_eq!(imported.timestamp_ns, 5);
        assert_eq!(
            entries(&imported.metadata),
            vec![
                ("k", "v"),
                (ORIGIN_KEY, "old@1"),
                (ORIGIN_SEQUENCE_KEY, "9")
            ]
        );
    }

    #[test]
    fn later_fields_are_ignored() {
        let value = "2 7 3 n@1 id an-added-field another";
        let imported = import(&[(EVENT_HEADER, value.to_owned())]).unwrap();
        assert_eq!(&imported.id[..], b"id");
        assert_eq!(imported.priority, Priority::Medium as u8);
    }

    #[test]
    fn header_values_hold_no_line_breaks() {
        let metadata = Metadata::from_pairs([("k\n", "v\r")]).unwrap();
        for (_, value) in exported(&view(b"i\r\nj", &metadata), "n") {
            assert!(!value.contains(['\r', '\n']), "{value:?}");
        }
    }

    #[test]
    fn a_message_missing_or_garbling_a_field_is_refused_by_name() {
        assert_eq!(import(&[]), Err(HeaderError::Missing(EVENT_HEADER)));
        let refused = |value: &str| import(&[(EVENT_HEADER, value.to_owned())]).unwrap_err();
        for value in [
            "2 7 3 n@1",
            "",
            "7 7 3 n@1 id",
            "2 x 3 n@1 id",
            "2 7 -3 n@1 id",
            "2 7 3 n@1 %G1",
            "2 7 3 n@1 %+F",
            "2  7 3 n@1 id",
        ] {
            assert!(
                matches!(
                    refused(value),
                    HeaderError::Invalid {
                        name: EVENT_HEADER,
                        ..
                    }
                ),
                "{value:?}"
            );
        }
        let old_without_origin = [
            (first_version::PRIORITY, "1".to_owned()),
            (first_version::ID, "i".to_owned()),
            (first_version::TIMESTAMP, "5".to_owned()),
            (first_version::ORIGIN_SEQUENCE, "9".to_owned()),
        ];
        assert_eq!(
            import(&old_without_origin),
            Err(HeaderError::Missing(first_version::ORIGIN))
        );
        let good = exported(&view(b"i", &Metadata::default()), "n");
        for entry in ["no-equals", "k=%G1"] {
            let mut bad = good.clone();
            bad.push((METADATA_HEADER, entry.into()));
            assert!(matches!(
                import(&bad),
                Err(HeaderError::Invalid {
                    name: METADATA_HEADER,
                    ..
                })
            ));
        }
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]

        #[test]
        fn an_event_survives_the_trip_whatever_its_id_and_metadata_hold(
            id in "\\PC{0,4}[ \t\u{a0}]{0,2}\\PC{1,6}\\s{0,2}",
            entries in proptest::collection::vec(("\\s{0,2}.{0,8}\\s{0,2}", "\\s{0,2}.{0,8}\\s{0,2}"), 0..5),
        ) {
            let metadata = Metadata::from_pairs(entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
            let headers = exported(&view(id.as_bytes(), &metadata), "n@1");
            for (_, value) in &headers {
                prop_assert!(!value.contains(['\r', '\n']));
            }
            let imported = import(&headers).unwrap();
            prop_assert_eq!(&imported.id[..], id.as_bytes());
            let back: Vec<(String, String)> = imported
                .metadata
                .iter()
                .take(entries.len())
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            prop_assert_eq!(back, entries);
        }
    }
}
