//! Time in a session: calls end at their grpc-timeout, a connection with no call closes after
//! its idle timeout, and a client that stops answering PINGs is cut. The session only decides;
//! the connection's timer task sleeps until [`Session::on_timer`] says to look again.

use std::cmp::Reverse;
use std::time::{Duration, Instant};

use super::Session;
use crate::grpc::status::GrpcError;

/// How the door checks that a client still answers: an HTTP/2 PING after `interval` without
/// a byte from it, and a cut if it then stays silent for `timeout`.
#[derive(Clone, Copy, Debug)]
pub struct Liveness {
    pub interval: Duration,
    pub timeout: Duration,
}

/// What a timer wake-up found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerVerdict {
    /// Look again at this instant, or (None) only once a call gets a deadline.
    Next(Option<Instant>),
    /// The connection sat idle for its idle timeout: a GOAWAY is in the output, and nothing
    /// more is to be read.
    Idle,
    /// The client did not answer a PING in time: a GOAWAY is in the output, and the
    /// connection is dead (counted as cut).
    Dead,
}

/// The payload of the door's PINGs: any answer counts, so it only has to be recognisable in a
/// capture.
const PING_DATA: [u8; 8] = *b"liveness";

/// The GOAWAY debug data of a connection cut for not answering a PING.
const PING_TIMEOUT_DEBUG: &[u8] = b"no answer to PING within grpc.ping_timeout_ms";

/// Finished calls leave their deadline behind in the heap; it is swept once it holds more
/// than this many entries beyond twice the live calls.
const DEADLINES_SWEEP_SLACK: usize = 64;

impl Session {
    /// Gives call `stream` a deadline at `at`.
    pub(super) fn add_deadline(&self, stream: u32, at: Instant) {
        let mut deadlines = self.deadlines.borrow_mut();
        deadlines.push(Reverse((at, stream)));
        let calls = self.calls.borrow();
        if deadlines.len() > DEADLINES_SWEEP_SLACK + 2 * calls.len() {
            deadlines.retain(|Reverse((_, s))| *s == stream || calls.contains_key(s));
        }
        drop((deadlines, calls));
        self.deadline_added.notify();
    }

    /// Ends calls whose grpc-timeout passed by `now`, closes the connection (GOAWAY) once it
    /// has had no call and no traffic for the idle timeout, and cuts it once the client stops
    /// answering PINGs.
    pub fn on_timer(&self, now: Instant) -> TimerVerdict {
        let Ok(ping_at) = self.check_liveness(now) else {
            return TimerVerdict::Dead;
        };
        self.expire_deadlines(now);
        let watching_idle = self.idle_timeout > Duration::ZERO;
        let quiet = self.calls.borrow().is_empty();
        if watching_idle && quiet && self.last_activity.get() + self.idle_timeout <= now {
            self.h2.borrow_mut().go_away();
            self.consumer.notify.notify();
            return TimerVerdict::Idle;
        }
        // With calls open, look again one idle period from now (they may all end quietly).
        let idle_at = watching_idle.then(|| {
            let since = if quiet { self.last_activity.get() } else { now };
            since + self.idle_timeout
        });
        let deadline_at = self.deadlines.borrow().peek().map(|Reverse((t, _))| *t);
        TimerVerdict::Next(deadline_at.into_iter().chain(idle_at).chain(ping_at).min())
    }

    /// Ends with DEADLINE_EXCEEDED every call whose deadline is at or before `now`.
    fn expire_deadlines(&self, now: Instant) {
        let mut expired = Vec::new();
        {
            let mut deadlines = self.deadlines.borrow_mut();
            while let Some(Reverse((t, stream))) = deadlines.peek().copied() {
                if t > now {
                    break;
                }
                deadlines.pop();
                expired.push(stream);
            }
        }
        if expired.is_empty() {
            return;
        }
        for stream in expired {
            let live = self.calls.borrow().contains_key(&stream);
            if live {
                self.end_call_with(stream, &GrpcError::DeadlineExceeded);
            }
        }
        self.consumer.notify.notify();
    }

    /// Checks that the client still answers (see [`Liveness`]): sends a PING when it has been
    /// silent for the interval; cuts the connection (GOAWAY) when it stayed silent for the
    /// timeout after one. Returns when to look again (None: never), or Err once cut.
    fn check_liveness(&self, now: Instant) -> Result<Option<Instant>, ()> {
        let Some(Liveness { interval, timeout }) = self.liveness else {
            return Ok(None);
        };
        if let Some(sent) = self.ping_sent.get() {
            if self.last_heard.get() > sent {
                self.ping_sent.set(None); // answered (or the client spoke anyway)
            } else if now >= sent + timeout {
                self.go_away_now(PING_TIMEOUT_DEBUG);
                return Err(());
            } else {
                return Ok(Some(sent + timeout));
            }
        }
        let due = self.last_heard.get() + interval;
        if now < due {
            return Ok(Some(due));
        }
        self.h2.borrow_mut().ping(PING_DATA);
        self.consumer.notify.notify();
        self.ping_sent.set(Some(now));
        Ok(Some(now + timeout))
    }
}
