//! What the native client library reads from a server: frames parsed owned
//! (`ServerFrame::parse_in`) and, for EVENT and EVENT_RUN frames, in place
//! (`EventFrame::parse`, `EventRunFrame::parse`). Both ways must agree on every event they
//! accept, and never panic.
#![no_main]

use bytes::Bytes;
use eventstream::native::codec::{self, EventFrame, ServerFrame};
use eventstream::native::event_run::EventRunFrame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let buffer = Bytes::copy_from_slice(data);
    let mut at = 0;
    while let Ok(Some(frame)) = codec::frame_at(&buffer[at..], 1 << 16) {
        at += frame.wire_len;
        let owned = ServerFrame::parse_in(frame, &buffer);
        if let Ok(Some(run)) = EventRunFrame::parse(frame) {
            let Ok(ServerFrame::EventRun { sub_id, events }) = &owned else {
                panic!("an EVENT_RUN lent in place but not parsed owned: {owned:?}");
            };
            assert_eq!(run.sub_id, *sub_id);
            let lent: Vec<_> = run
                .events()
                .map(|e| (e.sequence, e.to_raw(&buffer)))
                .collect();
            assert_eq!(&lent, events);
            continue;
        }
        match (EventFrame::parse(frame), owned) {
            (
                Ok(Some(lent)),
                Ok(ServerFrame::Event {
                    sub_id,
                    sequence,
                    event,
                }),
            ) => {
                assert_eq!((lent.sub_id, lent.sequence), (sub_id, sequence));
                assert_eq!(lent.event.to_raw(&buffer), event);
            }
            (Ok(Some(_)), other) => panic!("lent an event the owned parse gave as {other:?}"),
            (Ok(None), Ok(ServerFrame::Event { .. })) => panic!("an EVENT not lent"),
            (Err(_), Ok(ServerFrame::Event { .. })) => panic!("an EVENT refused in place only"),
            _ => {}
        }
    }
});
