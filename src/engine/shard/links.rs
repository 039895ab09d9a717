//! The links between shards: one outbox per peer that a flusher task sends as one batch, the
//! tasks that apply what peers send, and the backpressure doors wait on when an outbox
//! grows too long.

use std::rc::Rc;
use std::time::Instant;

use glommio::channels::channel_mesh::{Receivers, Senders};
use std::cell::RefCell;

use super::pending::Pending;
use super::Shard;
use crate::engine::messages::{Batch, ShardMsg};
use crate::engine::notify::Notify;

/// Messages an outbox may hold before the doors of this shard stop reading from their
/// sockets: the engine is saturated and publishers must slow down (PROTOCOL.md §8.2).
const BACKLOG_MESSAGES_MAX: usize = 64 * 1024;

/// What this shard has for one peer, and the flusher task's wake-up.
#[derive(Default)]
pub(super) struct Outbox {
    pub(super) batch: RefCell<Batch>,
    pub(super) wake: Notify,
}

impl Shard {
    /// Starts the tasks that move batches to and from every other shard.
    pub fn spawn_links(self: &Rc<Self>, senders: Senders<Batch>, mut receivers: Receivers<Batch>) {
        let senders = Rc::new(senders);
        for peer in (0..self.count).filter(|&p| p != self.id) {
            let shard = self.clone();
            let senders = senders.clone();
            glommio::spawn_local(async move { shard.flush_to(peer, &senders).await }).detach();
        }
        for (peer, rx) in receivers.streams() {
            let shard = self.clone();
            glommio::spawn_local(async move {
                while let Some(batch) = rx.recv().await {
                    shard.handle_batch(peer, batch);
                    // Tasks of a shard share one thread: let the writers drain what this
                    // batch queued before taking the next one.
                    futures_lite::future::yield_now().await;
                }
            })
            .detach();
        }
    }

    pub(super) async fn flush_to(&self, peer: usize, senders: &Senders<Batch>) {
        let outbox = &self.outboxes[peer];
        loop {
            let batch = std::mem::take(&mut *outbox.batch.borrow_mut());
            if batch.is_empty() {
                outbox.wake.wait().await;
                continue;
            }
            {
                let mut stats = self.stats.borrow_mut();
                stats.batches_out += 1;
                stats.messages_out += batch.msgs.len() as u64;
            }
            if senders.send_to(peer, batch).await.is_err() {
                return; // the peer is gone: the server is stopping
            }
            self.drained.notify();
        }
    }

    pub(super) fn push(&self, to: usize, msg: ShardMsg) {
        debug_assert_ne!(to, self.id, "local work never goes through an outbox");
        let outbox = &self.outboxes[to];
        let mut batch = outbox.batch.borrow_mut();
        batch.msgs.push(msg);
        if batch.msgs.len() == 1 {
            outbox.wake.notify();
        }
    }

    /// Waits while the engine is saturated (an outbox holds too much): doors call this before
    /// reading more from a socket, which is how publishers get slowed down.
    pub async fn admit(&self) {
        while self
            .outboxes
            .iter()
            .any(|o| o.batch.borrow().msgs.len() > BACKLOG_MESSAGES_MAX)
        {
            self.drained.wait().await;
        }
    }

    /// Applies one batch received from shard `from`.
    pub fn handle_batch(&self, from: usize, batch: Batch) {
        let Batch { msgs, subs } = batch;
        let now = Instant::now();
        for msg in msgs {
            match msg {
                ShardMsg::Publish { event, route } => {
                    let outcome = self.sequence(event);
                    self.answer(from, route, outcome, Some(now), 1);
                }
                ShardMsg::PublishRun { run, route } => {
                    let count = run.count;
                    let outcome = self.sequence_run(run);
                    self.answer(from, route, outcome, Some(now), count);
                }
                ShardMsg::DeliverRun {
                    run,
                    numbering,
                    start,
                    len,
                } => {
                    let keys = &subs[start as usize..(start + len) as usize];
                    debug_assert!(keys.iter().all(|k| usize::from(k.shard) == self.id));
                    self.deliver_run_local(keys.iter().map(|k| k.local), &run, &numbering);
                }
                ShardMsg::Refused {
                    sink,
                    request_id,
                    error,
                } => self.on_refused(sink, request_id, error),
                ShardMsg::Sequenced { token, outcome, at } => self.on_sequenced(token, outcome, at),
                ShardMsg::Deliver { event, start, len } => {
                    let keys = &subs[start as usize..(start + len) as usize];
                    let view = event.view();
                    for key in keys {
                        debug_assert_eq!(usize::from(key.shard), self.id);
                        self.deliver_local(key.local, &view);
                    }
                }
                ShardMsg::Subscribe {
                    entry,
                    pattern,
                    token,
                } => {
                    self.index.borrow_mut().insert(&pattern, entry);
                    self.push(from, ShardMsg::Done { token });
                }
                ShardMsg::Unsubscribe { key, pattern } => {
                    self.index.borrow_mut().remove(&pattern, key);
                }
                ShardMsg::Ping { token } => {
                    let stats = self.stats();
                    self.push(from, ShardMsg::Pong { token, stats });
                }
                ShardMsg::Pong { token, stats } => {
                    let mut pending = self.pending.borrow_mut();
                    if let Some(Pending::Ping(gather)) = pending.get(token as usize) {
                        gather.per_shard.borrow_mut()[from] = stats;
                        gather.countdown.tick();
                        if gather.countdown.remaining() == 0 {
                            pending.remove(token as usize);
                        }
                    }
                }
                ShardMsg::Done { token } => {
                    let mut pending = self.pending.borrow_mut();
                    if let Some(Pending::Subscribe(countdown)) = pending.get(token as usize) {
                        countdown.tick();
                        if countdown.remaining() == 0 {
                            pending.remove(token as usize);
                        }
                    }
                }
            }
        }
        self.process_cuts();
    }
}
