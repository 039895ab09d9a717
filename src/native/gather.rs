//! A native connection's write, gathered: its own bytes (answers, frame headers) and runs of
//! queued events cut from subscriber queues without a copy ([`Subscriber::drain_shared`]),
//! sent with one vectored `sendmsg` when the socket takes it all, which it does unless the
//! client is behind. What it does not take is written through the reactor, in order.
//!
//! Copying every queued event into one buffer before the write was a large part of the
//! server's time when publishing to a subscriber (docs/PERFORMANCE.md, "The native fast path").
//!
//! [`Subscriber::drain_shared`]: crate::engine::Subscriber::drain_shared

use std::io::{self, IoSlice};
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use futures_lite::AsyncWriteExt;

use crate::accept::Half;

/// Runs shorter than this are copied into the connection's own bytes instead of becoming
/// pieces of their own: a turn that drains many small runs (one event each, when a
/// subscriber's events alternate between priorities) stays a few pieces, and a fallback
/// write is not one system call per event.
const COPY_BELOW_BYTES: usize = 4096;
/// Most slices one `sendmsg` takes (Linux's UIO_MAXIOV; more is refused with EMSGSIZE).
const MAX_IOVECS: usize = 1024;

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
        if run.len() < COPY_BELOW_BYTES {
            self.out.extend_from_slice(&run);
            return;
        }
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

    /// The first pieces as slices, in order, as many as one `sendmsg` takes.
    fn slices(&self) -> Vec<IoSlice<'_>> {
        let slices = self
            .pieces
            .iter()
            .take(MAX_IOVECS)
            .map(|piece| match piece {
                Piece::Own(range) => IoSlice::new(&self.out[range.clone()]),
                Piece::Run(run) => IoSlice::new(run),
            });
        slices.collect()
    }

    /// Sends everything gathered, then empties itself (keeping `out`'s allocation): first
    /// with one vectored send the socket takes without waiting (of the first `MAX_IOVECS`
    /// pieces), then, for what it did not take, with waiting writes through the reactor (and
    /// its write deadline).
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
        let pieces = g.pieces.iter().map(|piece| match piece {
            Piece::Own(range) => g.out[range.clone()].to_vec(),
            Piece::Run(run) => run.to_vec(),
        });
        pieces.flatten().collect()
    }

    fn run_of(byte: u8, len: usize) -> Bytes {
        Bytes::from(vec![byte; len])
    }

    #[test]
    fn own_bytes_and_runs_go_out_in_the_order_they_were_gathered() {
        let mut g = Gather::default();
        g.out.put_slice(b"ack;");
        g.push_run(run_of(b'1', COPY_BELOW_BYTES));
        g.out.put_slice(b"header;");
        g.push_run(run_of(b'2', COPY_BELOW_BYTES));
        g.push_run(Bytes::from_static(b"small"));
        g.out.put_slice(b"error");
        g.seal_own();
        let mut want = b"ack;".to_vec();
        want.extend(vec![b'1'; COPY_BELOW_BYTES]);
        want.extend(b"header;");
        want.extend(vec![b'2'; COPY_BELOW_BYTES]);
        want.extend(b"smallerror");
        assert_eq!(flat(&g), want);
        assert_eq!(g.len(), want.len());
        assert_eq!(g.pieces.len(), 5, "the small run went into the own bytes");
        g.clear();
        assert!(g.is_empty() && flat(&g).is_empty());
    }

    #[test]
    fn one_send_is_offered_at_most_the_slices_the_kernel_takes() {
        let mut g = Gather::default();
        for i in 0..(MAX_IOVECS + 10) {
            g.out.put_u8(i as u8);
            g.push_run(run_of(i as u8, COPY_BELOW_BYTES));
        }
        g.seal_own();
        assert!(g.pieces.len() > MAX_IOVECS);
        assert_eq!(g.slices().len(), MAX_IOVECS);
    }
}
