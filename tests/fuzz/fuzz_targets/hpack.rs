//! HPACK decoding on its own: two header blocks through one decoder (the first may change
//! the dynamic table the second reads). Errors are expected; panics are bugs.
#![no_main]

use eventstream::grpc::h2::hpack::{Decoder, HeaderList};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::new(4096);
    let mut headers = HeaderList::default();
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    for block in [&data[..split], &data[split..]] {
        if decoder.decode(block, &mut headers, 16 * 1024).is_err() {
            break;
        }
    }
});
