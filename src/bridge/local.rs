//! The bridge's side on each shard: telling the link what local subscribers ask for,
//! publishing what it imports, and, on shard 0, the export queue: one subscription per export
//! pattern, whose queue sheds by priority while NATS is slow or down, drained to the link.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;

use super::interest::LocalChange;
use super::{BridgeStats, ShardTap};
use crate::engine::event::unix_now_ns;
use crate::engine::queue::CriticalOverflow;
use crate::engine::{
    Consumer, InterestHook, Pattern, Priority, RecentTopic, Reply, Shard, SubState, Subscriber,
};
use crate::native::codec;

/// Tags of the export subscriptions: this bit, and the export pattern's index below it.
/// Doors' tags (client subscription ids, HTTP/2 stream ids) fit in 32 bits.
const EXPORT_TAG: u64 = 1 << 63;
/// Bytes of EVENT frames one export batch gathers at most.
const EXPORT_BATCH_BYTES_MAX: usize = 256 * 1024;
/// Imported events published together on a shard at most.
const IMPORT_BATCH_EVENTS_MAX: usize = 1024;

/// Connects `shard` to the bridge: its subscriptions' interest, its imports, and on shard 0
/// the export queue.
pub fn attach(shard: &Rc<Shard>, tap: ShardTap) {
    let hook = Hook {
        interest: tap.interest.clone(),
        required: tap.required,
        stats: tap.stats.clone(),
    };
    shard.set_interest_hook(Rc::new(hook));
    glommio::spawn_local(import(shard.clone(), tap.imports, tap.stats.clone())).detach();
    if let Some(exports) = tap.exports {
        let exporting = export(shard.clone(), tap.export_patterns, exports, tap.stats);
        glommio::spawn_local(exporting).detach();
    }
}

/// Tells the link of the shard's local subscriptions (not its own export ones).
struct Hook {
    interest: flume::Sender<LocalChange>,
    required: bool,
    stats: Arc<BridgeStats>,
}

impl InterestHook for Hook {
    fn changed(&self, sub: &Subscriber, added: bool) {
        if sub.tag & EXPORT_TAG != 0 {
            return;
        }
        let pattern = sub.pattern.clone();
        let _ = self.interest.send(LocalChange { pattern, added });
    }

    fn serving(&self) -> bool {
        !self.required || self.stats.connected.load(Ordering::Relaxed)
    }
}

/// Publishes what the link imports for topics this shard owns, a batch at a time.
async fn import(
    shard: Rc<Shard>,
    imports: flume::Receiver<crate::engine::RawEvent>,
    stats: Arc<BridgeStats>,
) {
    let recent = RecentTopic::default();
    let mut batch = Vec::with_capacity(IMPORT_BATCH_EVENTS_MAX);
    while let Ok(first) = imports.recv_async().await {
        if shard.is_closing() {
            return;
        }
        let now_ns = unix_now_ns();
        for raw in
            std::iter::once(first).chain(imports.try_iter().take(IMPORT_BATCH_EVENTS_MAX - 1))
        {
            match shard.validate_recent(raw, &recent, now_ns) {
                Ok(event) => batch.push(event),
                Err(_) => BridgeStats::count(&stats.import_refused),
            }
        }
        stats
            .imported
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        shard.publish(batch.drain(..), Reply::Nobody);
    }
}

/// How an export subscription queues events: as native EVENT frames, its pattern's index as
/// the subscription id, which the link reads back.
fn put_exported(out: &mut BytesMut, event: &crate::engine::EventView<'_>, tag: u64) {
    codec::put_event(out, (tag & !EXPORT_TAG) as u32, event);
}

/// Shard 0's export queue: subscribes to every export pattern, and sends what they queue to
/// the link, waiting while it is behind. Meanwhile the queue sheds by priority, CRITICAL
/// events included: it never cuts, so every event it does not send is counted.
async fn export(
    shard: Rc<Shard>,
    patterns: Vec<Pattern>,
    exports: flume::Sender<bytes::Bytes>,
    stats: Arc<BridgeStats>,
) {
    let consumer =
        Rc::new(Consumer::new(put_exported).with_critical_overflow(CriticalOverflow::Shed));
    let mut subs = Vec::with_capacity(patterns.len());
    for (index, pattern) in patterns.iter().enumerate() {
        let tag = EXPORT_TAG | index as u64;
        let sub = shard
            .subscribe(pattern.clone(), Priority::Batch, &consumer, tag)
            .await;
        subs.push(sub);
    }
    loop {
        let woken = consumer.notify.wait();
        let stopped = shard.shutdown.wait();
        if shard.is_closing() {
            return;
        }
        consumer.release_held();
        let mut batch = BytesMut::new();
        while let Some(sub) = consumer.next_ready() {
            let budget = EXPORT_BATCH_BYTES_MAX.saturating_sub(batch.len());
            sub.drain(budget, |frames, _| batch.extend_from_slice(frames));
            if sub.queued() > 0 {
                consumer.hold(&sub);
            }
        }
        record_shed(&subs, &stats);
        debug_assert!(subs.iter().all(|s| s.state() == SubState::Active));
        if !batch.is_empty() {
            let sending = exports.send_async(batch.freeze());
            if crate::accept::unless(sending, stopped).await.is_none() {
                return;
            }
            continue;
        }
        if crate::accept::unless(woken, stopped).await.is_none() {
            return;
        }
    }
}

/// The export queue's shed counts, by priority, into the bridge's counters.
fn record_shed(subs: &[Rc<Subscriber>], stats: &BridgeStats) {
    let mut shed = [0u64; 5];
    for sub in subs {
        for (total, n) in shed.iter_mut().zip(sub.stats().shed) {
            *total += n;
        }
    }
    for (counter, n) in stats.export_shed.iter().zip(shed) {
        counter.store(n, Ordering::Relaxed);
    }
}
