//! What a bridged event carries in its NATS message headers, and back, with no I/O: the
//! fields a remote subscriber must see as the publisher's node saw them (priority, id,
//! timestamp, metadata) and where it came from (the origin node and its sequence number).
//!
//! Header values cannot hold CR or LF, and a metadata entry is one `key=value` value, so in
//! metadata keys and values `%`, `=`, CR, LF and other control characters are written as `%XX`.
//! On import the origin becomes two metadata entries ([`ORIGIN_KEY`], [`ORIGIN_SEQUENCE_KEY`]):
//! a subscriber on another node sees where the event was sequenced first, and the bridge
//! never exports an event that has them (no loops).

use std::fmt::Write as _;

use bytes::Bytes;

use crate::engine::{EventView, IdText, Metadata, Priority, RawEvent};

/// The event's priority, as its number (0..=4).
pub const PRIORITY_HEADER: &str = "Eventstream-Priority";
/// The event's id, as its subscribers on the origin node see it.
pub const ID_HEADER: &str = "Eventstream-Id";
/// The event's timestamp, Unix nanoseconds.
pub const TIMESTAMP_HEADER: &str = "Eventstream-Timestamp-Ns";
/// The node that exported it: its node id and start time, `node@epoch_ms`.
pub const ORIGIN_HEADER: &str = "Eventstream-Origin";
/// The event's per-topic sequence number on the origin node.
pub const ORIGIN_SEQUENCE_HEADER: &str = "Eventstream-Origin-Sequence";
/// One metadata entry, `key=value`, escaped; repeated for each entry, in order.
pub const METADATA_HEADER: &str = "Eventstream-Metadata";

/// The metadata key an imported event's origin node is kept under.
pub const ORIGIN_KEY: &str = "eventstream.origin";
/// The metadata key an imported event's origin sequence number is kept under.
pub const ORIGIN_SEQUENCE_KEY: &str = "eventstream.origin_sequence";

/// Why an imported message cannot become an event.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("header {0} is missing")]
    Missing(&'static str),
    #[error("header {name} has the value {value:?}, which is not {expected}")]
    Invalid {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("metadata: {0}")]
    Metadata(String),
}

/// The headers of `event`, sequenced on this node, as exported by node `origin`: each name
/// and value handed to `put` in order (straight into the client's header map, with no list
/// made per event).
pub fn headers_of(event: &EventView<'_>, origin: &str, mut put: impl FnMut(&'static str, String)) {
    let mut scratch = IdText::default();
    let id = String::from_utf8_lossy(event.id.text(&mut scratch)).into_owned();
    put(PRIORITY_HEADER, (event.priority as u8).to_string());
    put(ID_HEADER, id);
    put(TIMESTAMP_HEADER, event.timestamp_ns.to_string());
    put(ORIGIN_HEADER, origin.to_owned());
    put(ORIGIN_SEQUENCE_HEADER, event.sequence.to_string());
    for (key, value) in event.metadata_entries() {
        let mut entry = String::with_capacity(key.len() + value.len() + 1);
        escape_into(&mut entry, key);
        entry.push('=');
        escape_into(&mut entry, value);
        put(METADATA_HEADER, entry);
    }
}

/// True when an event came from the bridge: it has an origin, and is never exported again.
pub fn is_imported(event: &EventView<'_>) -> bool {
    event.metadata_entries().any(|(key, _)| key == ORIGIN_KEY)
}

/// The event an imported message of `topic` with `payload` and `headers` (name, value in
/// order) stands for, to be published on this node: the origin's fields, and its origin and
/// origin sequence as metadata.
pub fn event_of<'h>(
    topic: Bytes,
    payload: Bytes,
    headers: impl IntoIterator<Item = (&'h str, &'h str)>,
) -> Result<RawEvent, HeaderError> {
    let (mut priority, mut id, mut timestamp, mut origin, mut sequence) =
        (None, None, None, None, None);
    let mut metadata: Vec<(String, String)> = Vec::new();
    for (name, value) in headers {
        match name {
            PRIORITY_HEADER => priority = Some(value),
            ID_HEADER => id = Some(value),
            TIMESTAMP_HEADER => timestamp = Some(value),
            ORIGIN_HEADER => origin = Some(value),
            ORIGIN_SEQUENCE_HEADER => sequence = Some(value),
            METADATA_HEADER => metadata.push(metadata_entry(value)?),
            _ => {}
        }
    }
    let number = |name: &'static str, value: Option<&str>, expected: &'static str| {
        let value = value.ok_or(HeaderError::Missing(name))?;
        value.parse::<i64>().map_err(|_| HeaderError::Invalid {
            name,
            value: value.to_owned(),
            expected,
        })
    };
    let priority = number(PRIORITY_HEADER, priority, "a priority 0..=4")?;
    let priority = u8::try_from(priority)
        .ok()
        .and_then(Priority::from_u8)
        .ok_or_else(|| HeaderError::Invalid {
            name: PRIORITY_HEADER,
            value: priority.to_string(),
            expected: "a priority 0..=4",
        })?;
    let timestamp_ns = number(TIMESTAMP_HEADER, timestamp, "Unix nanoseconds")?;
    let sequence = number(ORIGIN_SEQUENCE_HEADER, sequence, "a sequence number")?;
    let origin = origin.ok_or(HeaderError::Missing(ORIGIN_HEADER))?;
    let id = id.ok_or(HeaderError::Missing(ID_HEADER))?;
    let sequence = sequence.to_string();
    let pairs = metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain([
            (ORIGIN_KEY, origin),
            (ORIGIN_SEQUENCE_KEY, sequence.as_str()),
        ]);
    let metadata = Metadata::from_pairs(pairs).map_err(|e| HeaderError::Metadata(e.to_string()))?;
    Ok(RawEvent {
        topic,
        id: Bytes::copy_from_slice(id.as_bytes()),
        payload,
        metadata,
        priority: priority as u8,
        timestamp_ns,
    })
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

/// Whether `c` must be escaped in a metadata key or value.
fn escaped(c: char) -> bool {
    c == '%' || c == '=' || c.is_control()
}

fn escape_into(out: &mut String, text: &str) {
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

/// The inverse of [`escape_into`]; None for a malformed or needless escape.
fn unescape(text: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&first, tail)) = rest.split_first() {
        if first == b'%' {
            let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
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

    /// What `headers_of` hands out, as a list.
    fn exported(event: &EventView<'_>, origin: &str) -> Vec<(&'static str, String)> {
        let mut headers = Vec::new();
        headers_of(event, origin, |name, value| headers.push((name, value)));
        headers
    }

    fn import(headers: &[(&'static str, String)]) -> Result<RawEvent, HeaderError> {
        let pairs = headers.iter().map(|(n, v)| (*n, v.as_str()));
        event_of(Bytes::from_static(b"a/b"), Bytes::from_static(b"x"), pairs)
    }

    #[test]
    fn an_exported_event_is_imported_with_its_fields_and_its_origin_as_metadata() {
        let metadata = Metadata::from_pairs([("k", "v"), ("a=b", "50%\r\n")]).unwrap();
        let headers = exported(&view(b"id-1", &metadata), "node-a@1700");
        let imported = import(&headers).unwrap();
        assert_eq!(imported.priority, Priority::High as u8);
        assert_eq!(&imported.id[..], b"id-1");
        assert_eq!(imported.timestamp_ns, 1_700_000_000_000_000_000);
        let entries: Vec<(&str, &str)> = imported.metadata.iter().collect();
        assert_eq!(
            entries,
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
    fn header_values_hold_no_line_breaks() {
        let metadata = Metadata::from_pairs([("k\n", "v\r")]).unwrap();
        for (_, value) in exported(&view(b"i", &metadata), "n") {
            assert!(!value.contains(['\r', '\n']), "{value:?}");
        }
    }

    #[test]
    fn a_message_missing_or_garbling_a_field_is_refused_by_name() {
        let metadata = Metadata::default();
        let good = exported(&view(b"i", &metadata), "n");
        let without = |name| {
            good.iter()
                .filter(|(n, _)| *n != name)
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            import(&without(PRIORITY_HEADER)),
            Err(HeaderError::Missing(PRIORITY_HEADER))
        );
        assert_eq!(
            import(&without(ORIGIN_HEADER)),
            Err(HeaderError::Missing(ORIGIN_HEADER))
        );
        let mut bad = without(PRIORITY_HEADER);
        bad.push((PRIORITY_HEADER, "7".into()));
        assert!(matches!(
            import(&bad),
            Err(HeaderError::Invalid {
                name: PRIORITY_HEADER,
                ..
            })
        ));
        let mut bad = good.clone();
        bad.push((METADATA_HEADER, "no-equals".into()));
        assert!(matches!(
            import(&bad),
            Err(HeaderError::Invalid {
                name: METADATA_HEADER,
                ..
            })
        ));
        let mut bad = good;
        bad.push((METADATA_HEADER, "k=%G1".into()));
        assert!(import(&bad).is_err());
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]

        #[test]
        fn metadata_survives_the_trip_whatever_it_holds(
            entries in proptest::collection::vec((".{0,8}", ".{0,8}"), 0..5),
        ) {
            let metadata = Metadata::from_pairs(entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap();
            let headers = exported(&view(b"i", &metadata), "n");
            let imported = import(&headers).unwrap();
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
