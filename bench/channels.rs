//! `--rows channels`: the cross-shard channel choice, measured. Two glommio executors (pinned
//! to CPUs 0 and 1 when there are two) move batches one way (throughput) and single messages
//! back and forth (wake-up latency), once over glommio's channel mesh and once over flume.

use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::{MeshBuilder, Receivers, Senders};
use glommio::{LocalExecutorBuilder, Placement};

/// What one channel kind achieved.
pub struct ChannelResult {
    pub kind: &'static str,
    pub events_per_s: f64,
    pub round_trip_p50: Duration,
}

const CAPACITY: usize = 256;

/// One executor's end of a two-way channel, whatever the implementation.
trait End {
    async fn send(&self, batch: Vec<u64>);
    async fn recv(&self) -> Vec<u64>;
}

struct MeshEnd {
    tx: Senders<Vec<u64>>,
    rx: Receivers<Vec<u64>>,
    other: usize,
}

impl End for MeshEnd {
    async fn send(&self, batch: Vec<u64>) {
        self.tx
            .send_to(self.other, batch)
            .await
            .expect("peer alive");
    }
    async fn recv(&self) -> Vec<u64> {
        self.rx
            .recv_from(self.other)
            .await
            .expect("peer")
            .expect("open")
    }
}

struct FlumeEnd {
    tx: flume::Sender<Vec<u64>>,
    rx: flume::Receiver<Vec<u64>>,
}

impl End for FlumeEnd {
    async fn send(&self, batch: Vec<u64>) {
        self.tx.send_async(batch).await.expect("peer alive");
    }
    async fn recv(&self) -> Vec<u64> {
        self.rx.recv_async().await.expect("open")
    }
}

fn placement(i: usize) -> Placement {
    let cpus = core_affinity::get_core_ids().unwrap_or_default();
    match cpus.get(i) {
        Some(c) if cpus.len() >= 2 => Placement::Fixed(c.id),
        _ => Placement::Unbound,
    }
}

/// Executor 0 sends `count` events in batches of `batch` (receiver 1 times it and checks the
/// order), then both do `trips` round trips; returns (who, one-way time, round trips).
async fn exercise(me: usize, end: impl End, count: u64, batch: usize, trips: usize) -> Outcome {
    let start = Instant::now();
    let mut moved = 0;
    while moved < count {
        if me == 0 {
            let n = batch.min((count - moved) as usize) as u64;
            end.send((moved..moved + n).collect()).await;
            moved += n;
        } else {
            let b = end.recv().await;
            assert_eq!(b.first(), Some(&moved), "in order");
            moved += b.len() as u64;
        }
    }
    let elapsed = start.elapsed();
    let mut rtts = Vec::with_capacity(trips);
    for _ in 0..trips {
        let t = Instant::now();
        if me == 0 {
            end.send(Vec::new()).await;
            end.recv().await;
        } else {
            end.recv().await;
            end.send(Vec::new()).await;
        }
        rtts.push(t.elapsed());
    }
    (me, elapsed, rtts)
}

type Outcome = (usize, Duration, Vec<Duration>);

/// glommio's channel mesh.
pub fn mesh(count: u64, batch: usize, trips: usize) -> ChannelResult {
    let mesh = MeshBuilder::<Vec<u64>, _>::full(2, CAPACITY);
    let handles = (0..2)
        .map(|i| {
            let mesh = mesh.clone();
            LocalExecutorBuilder::new(placement(i))
                .spawn(move || async move {
                    let (tx, rx) = mesh.join().await.expect("mesh");
                    let me = tx.peer_id();
                    exercise(
                        me,
                        MeshEnd {
                            tx,
                            rx,
                            other: 1 - me,
                        },
                        count,
                        batch,
                        trips,
                    )
                    .await
                })
                .expect("executor")
        })
        .collect();
    summarize("glommio mesh", count, handles)
}

/// A pair of bounded flume channels, awaited from glommio tasks.
pub fn flume(count: u64, batch: usize, trips: usize) -> ChannelResult {
    let (to1, from0) = flume::bounded(CAPACITY);
    let (to0, from1) = flume::bounded(CAPACITY);
    let ends = [
        (0, FlumeEnd { tx: to1, rx: from1 }),
        (1, FlumeEnd { tx: to0, rx: from0 }),
    ];
    let handles = ends
        .into_iter()
        .map(|(me, end)| {
            LocalExecutorBuilder::new(placement(me))
                .spawn(move || exercise(me, end, count, batch, trips))
                .expect("executor")
        })
        .collect();
    summarize("flume", count, handles)
}

fn summarize(
    kind: &'static str,
    count: u64,
    handles: Vec<glommio::ExecutorJoinHandle<Outcome>>,
) -> ChannelResult {
    let outcomes: Vec<Outcome> = handles
        .into_iter()
        .map(|h| h.join().expect("executor ran"))
        .collect();
    let (_, elapsed, mut rtts) = outcomes
        .into_iter()
        .find(|(me, ..)| *me == 1)
        .expect("receiver");
    rtts.sort();
    ChannelResult {
        kind,
        events_per_s: count as f64 / elapsed.as_secs_f64(),
        round_trip_p50: rtts[rtts.len() / 2],
    }
}
