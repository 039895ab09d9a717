//! A native connection's write, gathered: its own bytes (answers, frame headers) and runs of
//! queued events cut from subscriber queues without a copy ([`Subscriber::drain_shared`]),
//! sent with one vectored `sendmsg` when the socket takes it all, which it does unless the
//! client is behind. What it does not take is written through the reactor, in order.
//!
//! Copying every queued event into one buffer before the write was a tenth of the server's
//! time when publishing to a subscriber (docs/PERFORMANCE.md, "The native fast path").
//!
//! [`Subscriber::drain_shared`]: crate::engine::Subscriber::drain_shared

use std::io::{self, IoSlice};
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use futures_lite::AsyncWriteExt;

use crate::accept::Half;

/// One part of a gathered write, in order.
#[derive(Debug)]
enum Piece {
    /// Bytes of [`Gather::out`].
    Own(Range<usize>),
    /// A run of queued events, where it lies.
    Run(Bytes),
}

/// What one turn of a connection's writer sends, in order.
#[derive(Debug, Default)]
pub struct Gather {
    /// The connection's own bytes: answers, errors, EVENT_RUN headers.
    pub out: BytesMut,
    pieces: Vec<Piece>,
    /// `out` before this is in `pieces` already.
    mark: usize,
    runs_bytes: usize,
}

impl Gather {
    /// Bytes gathered so far.
    pub fn len(&self) -> usize {
        self.out.len() + self.runs_bytes
    }

    /// True when there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a run of queued events after everything gathered so far.
    pub fn push_run(&mut self, run: Bytes) {
        self.seal_own();
        self.runs_bytes += run.len();
        self.pieces.push(Piece::Run(run));
    }

    /// Records `out`'s bytes since the last piece as a piece of their own.
    fn seal_own(&mut self) {
        if self.out.len() > self.mark {
            self.pieces.push(Piece::Own(self.mark..self.out.len()));
            self.mark = self.out.len();
        }
    }

    /// The pieces as slices, in order.
    fn slices(&self) -> Vec<IoSlice<'_>> {
        let slices = self.pieces.iter().map(|piece| match piece {
            Piece::Own(range) => IoSlice::new(&self.out[range.clone()]),
            Piece::Run(run) => IoSlice::new(run),
        });
        slices.collect()
    }

    /// Sends everything gathered, then empties itself (keeping `out`'s allocation): first
    /// with one vectored send the socket takes without waiting, then, for what it did not
    /// take, with waiting writes through the reactor (and its write deadline).
    pub async fn send(&mut self, stream: &mut Half) -> io::Result<()> {
        self.seal_own();
        let sent = {
            let slices = self.slices();
            stream.try_send_vectored(&slices)?
        };
        let mut skip = sent;
        for piece in &self.pieces {
            let bytes: &[u8] = match piece {
                Piece::Own(range) => &self.out[range.clone()],
                Piece::Run(run) => run,
            };
            if skip >= bytes.len() {
                skip -= bytes.len();
                continue;
            }
            stream.write_all(&bytes[skip..]).await?;
            skip = 0;
        }
        self.clear();
        Ok(())
    }

    /// Forgets everything gathered (the runs are let go).
    pub fn clear(&mut self) {
        self.out.clear();
        self.pieces.clear();
        self.mark = 0;
        self.runs_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    /// The bytes a gather sends, in order.
    fn flat(g: &Gather) -> Vec<u8> {
        g.slices().iter().flat_map(|s| s.to_vec()).collect()
    }

    #[test]
    fn own_bytes_and_runs_go_out_in_the_order_they_were_gathered() {
        let mut g = Gather::default();
        g.out.put_slice(b"ack;");
        g.push_run(Bytes::from_static(b"run1;"));
        g.out.put_slice(b"header;");
        g.push_run(Bytes::from_static(b"run2;"));
        g.out.put_slice(b"error");
        g.seal_own();
        assert_eq!(flat(&g), b"ack;run1;header;run2;error");
        assert_eq!(g.len(), 26);
        g.clear();
        assert!(g.is_empty() && flat(&g).is_empty());
    }
}
