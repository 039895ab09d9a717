//! HPACK decoding on its own: three header blocks through one decoder (each may change the
//! dynamic table the others read), then again in another order. Errors are expected; panics
//! are bugs. A block sent again may be answered as a repeat (a copy of the list it made
//! last time, if the table has not changed since); a second decoder, which reads an empty
//! block before each block so that it never takes that shortcut, must get the same lists
//! from the same tables.
#![no_main]

use eventstream::grpc::h2::hpack::{Decoder, HeaderList};
use libfuzzer_sys::fuzz_target;

const MAX_LIST: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    // The first two bytes say where the second and third blocks start in the rest.
    let [a, b, ref rest @ ..] = *data else {
        return;
    };
    let one = usize::from(a).min(rest.len());
    let two = usize::from(b).clamp(one, rest.len());
    let blocks = [&rest[..one], &rest[one..two], &rest[two..]];
    let mut decoder = Decoder::new(4096);
    let mut reference = Decoder::new(4096);
    let (mut got, mut expected) = (HeaderList::default(), HeaderList::default());
    for block in [0, 1, 2, 1, 0, 1, 2, 2].map(|i| blocks[i]) {
        let outcome = decoder.decode(block, &mut got, MAX_LIST);
        reference
            .decode(&[], &mut expected, MAX_LIST)
            .expect("an empty block is a valid block");
        let fresh = reference.decode(block, &mut expected, MAX_LIST);
        let shortcut = fresh.is_ok_and(|d| d.repeat);
        assert!(
            block.is_empty() || !shortcut,
            "an empty block came in between"
        );
        match (outcome, fresh) {
            (Ok(outcome), Ok(fresh)) => {
                assert_eq!(outcome.list_size, fresh.list_size);
                assert_eq!(got, expected);
            }
            (outcome, fresh) => {
                assert_eq!(outcome.is_ok(), fresh.is_ok());
                return; // both refused it; their tables may differ from here on
            }
        }
    }
});
