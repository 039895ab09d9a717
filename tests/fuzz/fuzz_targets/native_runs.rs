//! The fast path's run records, both directions: PUBLISH_RUN records as the server splits,
//! checks and reads them (`run::split_records`, `run::check`, `run::events`), and EVENT_RUN
//! frames as a client reads them (`EventRunFrame::parse_body`, then each event in place and
//! owned). Whatever the bytes: an error or records that read back exactly as counted; never a
//! panic, never a read past what was split off.
#![no_main]

use bytes::Bytes;
use eventstream::engine::{run, Limits};
use eventstream::native::event_run::EventRunFrame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((count, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    // Counts up to 65,535: enough to run past any body the fuzzer makes.
    let count = u32::from(u16::from_le_bytes(*count));
    if let Ok((records, rest)) = run::split_records(body, count) {
        assert_eq!(records.len() + rest.len(), body.len());
        assert_eq!(run::events(records).count(), count as usize);
        let limits = Limits {
            max_message_bytes: 64,
            ..Limits::default()
        };
        if let Err((index, _)) = run::check(records, &limits) {
            assert!(index < count, "a refused event lies in the run");
        }
    }

    let buffer = Bytes::copy_from_slice(data);
    if let Ok(frame) = EventRunFrame::parse_body(&buffer) {
        let mut seen = 0;
        for event in frame.events() {
            let owned = event.to_raw(&buffer);
            assert_eq!(&owned.payload[..], event.payload);
            assert_eq!(&owned.topic[..], event.topic);
            seen += 1;
        }
        assert_eq!(seen, frame.count, "the records are exactly those counted");
    }
});
