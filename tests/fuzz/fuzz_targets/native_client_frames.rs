//! What a native TCP connection reads: bytes cut into frames as the server does
//! (`whole_frames`, `frame_at`), each parsed in place (`ClientFrame::parse`). Whatever the
//! bytes, framing and parsing return an error or a frame; they never panic, every frame
//! found lies within the whole frames announced, and a run's records are exactly its count.
#![no_main]

use eventstream::engine::run;
use eventstream::native::codec::{self, ClientFrame};
use libfuzzer_sys::fuzz_target;

const MAX_FRAME: usize = 1 << 16;

fuzz_target!(|data: &[u8]| {
    let (whole, _framing_error) = codec::whole_frames(data, MAX_FRAME);
    assert!(whole <= data.len());
    let mut at = 0;
    while let Ok(Some(frame)) = codec::frame_at(&data[at..whole], MAX_FRAME) {
        at += frame.wire_len;
        assert!(at <= whole, "a frame past the whole frames");
        match ClientFrame::parse(frame, 64) {
            Ok(ClientFrame::PublishBatch { events, .. }) => assert!(
                events.len() <= 64,
                "the batch limit holds before anything is kept"
            ),
            Ok(ClientFrame::PublishRun { count, records, .. }) => {
                assert!(count <= 64, "the batch limit holds for runs too");
                assert_eq!(run::events(records).count(), count as usize);
            }
            _ => {}
        }
    }
    assert_eq!(at, whole, "the whole frames are exactly the frames found");
});
