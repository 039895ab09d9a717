//! `--rows channels`: the cross-shard channel choice, measured. Two glommio executors (pinned
//! to CPUs 0 and 1 when there are two) move batches one way (throughput) and single messages
//! back and forth (wake-up latency), once over glommio's channel mesh and once over flume.

use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};

/// What one channel kind achieved.
pub struct ChannelResult {
    pub kind: &'static str,
    pub events_per_s: f64,
    pub round_trip_p50: Duration,
}

const CAPACITY: usize = 256;

fn placement(i: usize) -> Placement {
    let cpus = core_affinity::get_core_ids().unwrap_or_default();
    match cpus.get(i) {
        Some(c) if cpus.len() >= 2 => Placement::Fixed(c.id),
        _ => Placement::Unbound,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Moves `count` events in batches of `batch`, then does `trips` round trips.
pub fn mesh(count: u64, batch: usize, trips: usize) -> ChannelResult {
    let mesh = MeshBuilder::<Vec<u64>, _>::full(2, CAPACITY);
    let handles: Vec<_> = (0..2)
        .map(|i| {
            let mesh = mesh.clone();
            LocalExecutorBuilder::new(placement(i))
                .spawn(move || async move {
                    let (tx, rx) = mesh.join().await.expect("mesh");
                    let me = tx.peer_id();
                    let other = 1 - me;
                    let start = Instant::now();
                    if me == 0 {
                        let mut sent = 0;
                        while sent < count {
                            let n = batch.min((count - sent) as usize);
                            tx.send_to(other, (sent..sent + n as u64).collect())
                                .await
                                .unwrap();
                            sent += n as u64;
                        }
                    } else {
                        let mut got = 0;
                        while got < count {
                            let b = rx.recv_from(other).await.unwrap().expect("open");
                            assert_eq!(b.first(), Some(&got), "in order");
                            got += b.len() as u64;
                        }
                    }
                    let elapsed = start.elapsed();
                    let mut rtts = Vec::with_capacity(trips);
                    for _ in 0..trips {
                        let t = Instant::now();
                        if me == 0 {
                            tx.send_to(other, Vec::new()).await.unwrap();
                            rx.recv_from(other).await.unwrap();
                        } else {
                            rx.recv_from(other).await.unwrap();
                            tx.send_to(other, Vec::new()).await.unwrap();
                        }
                        rtts.push(t.elapsed());
                    }
                    (me, elapsed, rtts)
                })
                .expect("executor")
        })
        .collect();
    summarize("glommio mesh", count, handles)
}

/// The same over a pair of bounded flume channels, awaited from glommio tasks.
pub fn flume(count: u64, batch: usize, trips: usize) -> ChannelResult {
    let (to1, from0) = flume::bounded::<Vec<u64>>(CAPACITY);
    let (to0, from1) = flume::bounded::<Vec<u64>>(CAPACITY);
    let ends = [(0usize, to1, from1), (1, to0, from0)];
    let handles: Vec<_> = ends
        .into_iter()
        .map(|(me, tx, rx)| {
            LocalExecutorBuilder::new(placement(me))
                .spawn(move || async move {
                    let start = Instant::now();
                    if me == 0 {
                        let mut sent = 0;
                        while sent < count {
                            let n = batch.min((count - sent) as usize);
                            tx.send_async((sent..sent + n as u64).collect())
                                .await
                                .unwrap();
                            sent += n as u64;
                        }
                    } else {
                        let mut got = 0;
                        while got < count {
                            let b = rx.recv_async().await.unwrap();
                            assert_eq!(b.first(), Some(&got), "in order");
                            got += b.len() as u64;
                        }
                    }
                    let elapsed = start.elapsed();
                    let mut rtts = Vec::with_capacity(trips);
                    for _ in 0..trips {
                        let t = Instant::now();
                        if me == 0 {
                            tx.send_async(Vec::new()).await.unwrap();
                            rx.recv_async().await.unwrap();
                        } else {
                            rx.recv_async().await.unwrap();
                            tx.send_async(Vec::new()).await.unwrap();
                        }
                        rtts.push(t.elapsed());
                    }
                    (me, elapsed, rtts)
                })
                .expect("executor")
        })
        .collect();
    summarize("flume", count, handles)
}

type Handle = glommio::ExecutorJoinHandle<(usize, Duration, Vec<Duration>)>;

fn summarize(kind: &'static str, count: u64, handles: Vec<Handle>) -> ChannelResult {
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("executor ran"))
        .collect();
    let (_, elapsed, rtts) = results
        .into_iter()
        .find(|(me, ..)| *me == 1)
        .expect("receiver");
    ChannelResult {
        kind,
        events_per_s: count as f64 / elapsed.as_secs_f64(),
        round_trip_p50: median(rtts),
    }
}
