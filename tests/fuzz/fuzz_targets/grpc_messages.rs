//! What the gRPC door does with a request body: length-prefixed messages gathered from DATA
//! in two pieces (`MessageReader`), each decoded as an `Event`, a `PublishRequest` and a
//! `PublishBatchRequest`, in place and owned. The in-place decoders may decline (the owned
//! ones then decide), but an event they accept must be the event the owned decoder returns.
#![no_main]

use bytes::Bytes;
use eventstream::grpc::framing::MessageReader;
use eventstream::grpc::service;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let data = Bytes::copy_from_slice(data);
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let mut reader = MessageReader::default();
    let mut messages = Vec::new();
    for piece in [data.slice(..split), data.slice(split..)] {
        if reader.push(piece, 1 << 16, &mut messages).is_err() {
            break;
        }
    }
    for message in messages {
        let owned = service::decode_event(message.clone());
        if let Some(lent) = service::decode_event_in_place(&message, &[]) {
            assert_eq!(owned.as_ref().ok(), Some(&lent.to_raw(&message)));
        }
        let owned = service::decode_publish(message.clone());
        if let Some(lent) = service::decode_publish_in_place(&message, &[]) {
            assert_eq!(owned.as_ref().ok(), Some(&lent.to_raw(&message)));
        }
        let mut lent = Vec::new();
        let in_place = service::decode_batch_in_place(&message, 8, &mut lent);
        let mut owned = Vec::new();
        let decoded = service::decode_batch(message.clone(), 8, |_, event| {
            owned.push(event?);
            Ok(())
        });
        if let Some(result) = in_place {
            assert_eq!(result.is_ok(), decoded.is_ok());
            if result.is_ok() {
                let lent: Vec<_> = lent.iter().map(|e| e.to_raw(&message)).collect();
                assert_eq!(lent, owned);
            }
        }
    }
});
