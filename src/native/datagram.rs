//! The UDP door: datagrams of one or more PUBLISH / PUBLISH_BATCH frames, never answered.
//! A datagram is all-or-nothing: one bad frame and the whole datagram is dropped and counted.

use std::rc::Rc;

use bytes::Bytes;
use glommio::net::UdpSocket;

use super::codec::{self, ClientFrame};
use crate::engine::event::unix_now_ns;
use crate::engine::{Event, EventRef, RecentTopic, Reply, Shard};

/// Largest datagram accepted: the largest UDP payload over IPv4, and the limit over IPv6 too
/// (which could carry more), so that one rule holds whatever the client's address family.
pub const MAX_DATAGRAM: usize = 65_507;

/// Largest `length` of a frame in a datagram: the whole datagram less the length prefix.
pub const MAX_DATAGRAM_FRAME_LENGTH: usize = MAX_DATAGRAM - 4;

/// Why a datagram was dropped (counted, and logged at most rarely; never answered).
#[derive(Debug, thiserror::Error)]
pub enum DatagramError {
    #[error("the datagram is empty")]
    Empty,
    #[error("the datagram is {0} bytes or more, over the limit of {MAX_DATAGRAM}")]
    TooLarge(usize),
    #[error("frame {0}: {1}")]
    Frame(usize, String),
    #[error("frame {0}: only PUBLISH and PUBLISH_BATCH are accepted over UDP")]
    NotPublish(usize),
    #[error("{0} trailing bytes do not form a whole frame")]
    Trailing(usize),
}

/// Decodes and validates a whole datagram into events, or refuses all of it. `recent`: the
/// topic of the socket's last event ([`Shard::validate_recent`]).
pub fn decode_datagram(
    shard: &Shard,
    datagram: &[u8],
    recent: &RecentTopic,
    received_ns: i64,
) -> Result<Vec<Event>, DatagramError> {
    // An empty datagram publishes nothing, but it is no publish either: a client that sent one
    // has a bug, and the count is where it shows.
    if datagram.is_empty() {
        return Err(DatagramError::Empty);
    }
    if datagram.len() > MAX_DATAGRAM {
        return Err(DatagramError::TooLarge(datagram.len()));
    }
    // Events keep their fields in a copy of the datagram (the receive buffer is reused).
    let buf = Bytes::copy_from_slice(datagram);
    let mut events = Vec::new();
    let mut index = 0;
    let mut at = 0;
    while at < buf.len() {
        let frame = match codec::frame_at(&buf[at..], MAX_DATAGRAM_FRAME_LENGTH) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Err(DatagramError::Trailing(buf.len() - at)),
            Err(e) => return Err(DatagramError::Frame(index, e.to_string())),
        };
        at += frame.wire_len;
        let parsed = ClientFrame::parse(frame, shard.limits().max_batch_events)
            .map_err(|e| DatagramError::Frame(index, e.message))?;
        let mut accept = |raw: EventRef<'_>| {
            let event = shard
                .validate_recent(raw.to_raw(&buf), recent, received_ns)
                .map_err(|e| DatagramError::Frame(index, e.to_string()))?;
            events.push(event);
            Ok(())
        };
        match parsed {
            ClientFrame::Publish { event, .. } => accept(event)?,
            ClientFrame::PublishBatch { events: raws, .. } => {
                raws.into_iter().try_for_each(accept)?
            }
            _ => return Err(DatagramError::NotPublish(index)),
        }
        index += 1;
    }
    Ok(events)
}

/// Receives datagrams until shutdown and publishes what they carry.
pub async fn serve(shard: Rc<Shard>, socket: UdpSocket) {
    // One byte more than accepted: a longer datagram (IPv6) fills it and is refused whole,
    // instead of being cut to a length that might parse.
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let recent = RecentTopic::default();
    loop {
        futures_lite::future::yield_now().await;
        // A saturated engine stops taking datagrams; the kernel drops (and counts) the excess.
        shard.admit().await;
        let stopped = shard.shutdown.wait();
        if shard.is_closing() {
            return;
        }
        let received =
            futures_lite::future::or(async { Some(socket.recv_from(&mut buf).await) }, async {
                stopped.await;
                None
            })
            .await;
        let n = match received {
            None => return,
            Some(Ok((n, _peer))) => n,
            Some(Err(e)) => {
                crate::log_line!("shard {}: UDP receive failed: {e}", shard.id());
                continue;
            }
        };
        match decode_datagram(&shard, &buf[..n], &recent, unix_now_ns()) {
            Ok(events) => shard.publish(events, Reply::Nobody),
            Err(_) => shard.count_dropped_datagram(),
        }
    }
}
