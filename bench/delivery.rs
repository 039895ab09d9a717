//! What every publish → subscriber row shares: payloads stamped with their send time and
//! index, and a subscriber that checks and times each delivery.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use eventstream::engine::Priority;
use eventstream::native::client::Client;

/// Runs an open-loop schedule on one thread: event `i` is due `i / rate` seconds after a
/// start 1 ms from now (on `clock`); until it is due, `poll` takes whatever has arrived and
/// returns how many events have so far; when it is due, `send(due_ns, i)` sends it. Then
/// polls until all `count` arrived (10 s at most). Returns the start, in ns on `clock`.
/// Nothing sleeps, so the figures are the path's and the host's, not this thread's wake-ups.
pub fn open_loop(
    clock: Instant,
    rate: u64,
    count: u64,
    mut send: impl FnMut(u64, u64) -> Result<(), String>,
    mut poll: impl FnMut() -> Result<u64, String>,
) -> Result<u64, String> {
    let now = || clock.elapsed().as_nanos() as u64;
    let first = now() + 1_000_000;
    for i in 0..count {
        let due = first + i * 1_000_000_000 / rate;
        while now() < due {
            poll()?;
        }
        send(due, i)?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let received = poll()?;
        if received >= count {
            return Ok(first);
        }
        if Instant::now() > deadline {
            return Err(format!("{received} of {count} events arrived within 10 s"));
        }
    }
}

/// Writes the send time (ns on the row's clock) and the event's index into its payload.
pub fn stamp(payload: &mut [u8], sent_ns: u64, index: u64) {
    payload[..8].copy_from_slice(&sent_ns.to_le_bytes());
    payload[8..16].copy_from_slice(&index.to_le_bytes());
}

/// Checks that the delivery of a stamped payload is the `expected`-th (sequence and index);
/// returns its send time.
pub fn check(expected: u64, sequence: u64, payload: &[u8]) -> Result<u64, String> {
    let sent = u64::from_le_bytes(payload[..8].try_into().expect("16-byte payload"));
    let index = u64::from_le_bytes(payload[8..16].try_into().expect("16-byte payload"));
    if sequence != expected || index != expected - 1 {
        return Err(format!(
            "expected sequence {expected} (index {}), got sequence {sequence} (index {index}): \
             events lost or reordered",
            expected - 1
        ));
    }
    Ok(sent)
}

/// Which native frames a row publishes and receives with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// The fast path: topic handles, PUBLISH_RUN, FLAG_RUNS subscriptions (EVENT_RUN).
    Runs,
    /// Today's frames: a PUBLISH and an EVENT per event.
    Frames,
}

/// A latency histogram in ns, up to a minute.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

/// A native subscriber on its own connection and thread, receiving `count` stamped events on
/// one topic: publishers watch `received` to stay a window ahead of it. The thread that starts
/// it is unparked whenever it reports progress, so a publisher waiting for room can park.
pub struct Watcher {
    received: Arc<AtomicU64>,
    thread: thread::JoinHandle<Result<(Histogram<u64>, u64), String>>,
}

impl Watcher {
    /// Subscribes (confirmed before it returns) and starts receiving. `wait` bounds each
    /// delivery's wait; `hint` is added to the error when it runs out.
    pub fn start(
        server: &str,
        topic: &str,
        count: u64,
        clock: Instant,
        wait: Duration,
        hint: &'static str,
        form: Form,
    ) -> Result<Watcher, String> {
        let mut sub = Client::connect(server).map_err(|e| e.to_string())?;
        sub.set_timeout(Some(wait)).map_err(|e| e.to_string())?;
        match form {
            Form::Runs => sub.subscribe_runs(topic, Priority::Batch),
            Form::Frames => sub.subscribe(topic, Priority::Batch),
        }
        .map_err(|e| e.to_string())?;
        let received = Arc::new(AtomicU64::new(0));
        let progress = Progress {
            received: received.clone(),
            publisher: thread::current(),
        };
        if form == Form::Runs {
            let thread = thread::spawn(move || receive_runs(sub, count, clock, hint, &progress));
            return Ok(Watcher { received, thread });
        }
        let thread = thread::spawn(move || {
            let mut latency = histogram();
            let (mut last, mut now) = (0, 0);
            for expected in 1..=count {
                // Events read together arrived together: one clock reading per read (a
                // reading per event was a sixth of this client's time on this VM).
                let arrived_with_the_last_read = sub.has_buffered();
                // Read where it lies: an owned copy of each event (reference counts on the
                // read buffer) was about a quarter of this thread's user time.
                let sent = sub
                    .next_event_with(|d| check(expected, d.sequence, d.event.payload))
                    .map_err(|e| format!("after {} events: {e}{hint}", expected - 1))??;
                if !arrived_with_the_last_read {
                    now = clock.elapsed().as_nanos() as u64;
                }
                latency
                    .record(now.saturating_sub(sent).max(1))
                    .map_err(|e| e.to_string())?;
                last = now;
                if expected % 64 == 0 {
                    progress.report(expected);
                }
            }
            Ok((latency, last))
        });
        Ok(Watcher { received, thread })
    }

    /// Events received so far (to the nearest frame, or 64 events).
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Acquire)
    }

    /// True once it stopped: all received, or failed (`finish` says which).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// The latency histogram and when the last event arrived (ns on the row's clock).
    pub fn finish(self) -> Result<(Histogram<u64>, u64), String> {
        self.thread
            .join()
            .map_err(|_| "receiver thread panicked".to_owned())?
    }
}

/// How a [`Watcher`]'s thread tells its publisher how far it got.
struct Progress {
    received: Arc<AtomicU64>,
    /// Parked while it waits for room (an unpark when it is not parked is one atomic swap).
    publisher: thread::Thread,
}

impl Progress {
    fn report(&self, received: u64) {
        self.received.store(received, Ordering::Release);
        self.publisher.unpark();
    }
}

/// A [`Watcher`]'s thread on the fast path: every event of every EVENT_RUN checked where it
/// lies in the client's read buffer; one clock reading per frame (its events arrived together).
fn receive_runs(
    mut sub: Client,
    count: u64,
    clock: Instant,
    hint: &str,
    progress: &Progress,
) -> Result<(Histogram<u64>, u64), String> {
    let mut latency = histogram();
    let mut received = 0;
    let mut last = 0;
    // Events of one write share their send stamp and those of one frame their arrival: equal
    // latencies are recorded as one entry with its count (an entry per event was a twentieth
    // of this thread's time).
    let mut same: (u64, u64) = (0, 0);
    while received < count {
        let mut failed = None;
        let mut now = None;
        sub.next_events_with(|_, d| {
            let now = *now.get_or_insert_with(|| clock.elapsed().as_nanos() as u64);
            match check(received + 1, d.sequence, d.payload) {
                Ok(sent) => {
                    let value = now.saturating_sub(sent).max(1);
                    if value != same.0 {
                        let _ = latency.record_n(same.0.max(1), same.1);
                        same = (value, 0);
                    }
                    same.1 += 1;
                    received += 1;
                    last = now;
                }
                Err(e) => failed = failed.take().or(Some(e)),
            }
        })
        .map_err(|e| format!("after {received} events: {e}{hint}"))?;
        if let Some(e) = failed {
            return Err(e);
        }
        progress.report(received);
    }
    latency
        .record_n(same.0.max(1), same.1)
        .map_err(|e| e.to_string())?;
    Ok((latency, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamped(sent: u64, index: u64) -> Vec<u8> {
        let mut p = vec![0; 100];
        stamp(&mut p, sent, index);
        p
    }

    #[test]
    fn deliveries_in_order_pass_and_give_their_send_time() {
        assert_eq!(check(1, 1, &stamped(42, 0)), Ok(42));
        assert_eq!(check(7, 7, &stamped(9, 6)), Ok(9));
    }

    #[test]
    fn a_lost_or_reordered_event_fails_the_row() {
        // Event 2 lost: the third delivery arrives where the second was expected.
        let e = check(2, 3, &stamped(0, 2)).unwrap_err();
        assert!(e.contains("lost or reordered"), "{e}");
        // Right sequence, wrong payload (the publisher's order broke).
        assert!(check(2, 2, &stamped(0, 5)).is_err());
    }
}
