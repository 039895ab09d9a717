//! Requests waiting for answers from other shards (acknowledgements, refusals of
//! unacknowledged frames, subscribes, pings), and the owner's side of answering them.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

use super::Shard;
use crate::engine::messages::{ShardMsg, ShardStats};
use crate::engine::notify::Countdown;
use crate::engine::reply::PublishError;
use crate::engine::reply::{AckOutcome, AckRequest, AckSink, Reply, Route, SinkId};

/// A request of this shard's doors that other shards still have to answer.
pub(super) enum Pending {
    Ack {
        request: AckRequest,
        remaining: u32,
        count: u32,
        last_sequence: u64,
        error: Option<PublishError>,
    },
    /// A run made of separate unacknowledged PUBLISH frames: a refusal is reported under
    /// each frame's own request id.
    Frames {
        sink: SinkId,
        request_ids: Vec<u64>,
    },
    Subscribe(Rc<Countdown>),
    Ping(Rc<PingGather>),
}

/// A ping of every shard: the counters gathered so far.
pub(super) struct PingGather {
    pub(super) countdown: Countdown,
    /// Each shard's counters, by shard id, as they answer.
    pub(super) per_shard: RefCell<Vec<ShardStats>>,
}

impl Shard {
    /// Registers a door's sink for refusal reports; unregister it when its client goes.
    pub fn register_sink(&self, sink: Rc<dyn AckSink>) -> SinkId {
        let id = SinkId(self.next_sink.get());
        self.next_sink.set(id.0 + 1);
        self.sinks.borrow_mut().insert(id, sink);
        id
    }

    /// Forgets a sink: refusals still in flight for it are dropped (its client is gone).
    pub fn unregister_sink(&self, id: SinkId) {
        self.sinks.borrow_mut().remove(&id);
    }

    /// How the owners of a request's events answer it: `answers` owner answers complete the
    /// request (one per event, or one per run), and an ACK reports `count` events. With it,
    /// the one clock reading of the call, taken only when an ack will report it: it
    /// timestamps when the events were sequenced (a reading per unacknowledged native publish
    /// was a measurable part of its server time: docs/PERFORMANCE.md).
    pub(super) fn route(&self, reply: Reply, answers: u32, count: u32) -> (Route, Option<Instant>) {
        match reply {
            Reply::Ack(request) => {
                let token = self.pending.borrow_mut().insert(Pending::Ack {
                    request,
                    remaining: answers,
                    count,
                    last_sequence: 0,
                    error: None,
                });
                if answers == 0 {
                    self.finish_ack(token);
                }
                let token = u32::try_from(token)
                    .expect("pending requests are bounded by what connections read");
                (Route::Ack(token), Some(Instant::now()))
            }
            Reply::RefusalsOnly { sink, request_id } => (Route::Refusal { sink, request_id }, None),
            Reply::Nobody => (Route::Nobody, None),
        }
    }

    /// As the owner: tells the publishing shard `from` what became of one event.
    /// `at`: when the event was sequenced; read only for acknowledged routes.
    /// `events`: how many events the answer is about (one, or a run's), each of which a
    /// refusal refuses and, without an ACK, reports (PROTOCOL.md §5.2, PROTOCOL.md §5.7).
    pub(super) fn answer(
        &self,
        from: usize,
        route: Route,
        outcome: Result<u64, PublishError>,
        at: Option<Instant>,
        events: u32,
    ) {
        if outcome.is_err() {
            self.stats.borrow_mut().refused += u64::from(events);
        }
        match (route, outcome) {
            (Route::Ack(token), outcome) => {
                let at = at.expect("acknowledged routes come with a clock reading");
                if from == self.id {
                    self.on_sequenced(token, outcome, at)
                } else {
                    self.push(from, ShardMsg::Sequenced { token, outcome, at });
                }
            }
            (Route::Refusal { sink, request_id }, Err(error)) if from == self.id => {
                for _ in 0..events {
                    self.on_refused(sink, request_id, error.clone())
                }
            }
            (Route::Refusal { sink, request_id }, Err(error)) => {
                for _ in 0..events {
                    let error = error.clone();
                    let refused = ShardMsg::Refused {
                        sink,
                        request_id,
                        error,
                    };
                    self.push(from, refused);
                }
            }
            (Route::Refusal { .. } | Route::Nobody, _) => {}
        }
    }

    pub(super) fn on_refused(&self, sink: SinkId, request_id: u64, error: PublishError) {
        let sink = self.sinks.borrow().get(&sink).cloned();
        if let Some(sink) = sink {
            sink.refused(request_id, error);
        }
    }

    pub(super) fn on_sequenced(&self, token: u32, outcome: Result<u64, PublishError>, at: Instant) {
        let token = token as usize;
        let frames = matches!(
            self.pending.borrow().get(token),
            Some(Pending::Frames { .. })
        );
        if !frames {
            return self.on_ack_sequenced(token, outcome, at);
        }
        let Pending::Frames { sink, request_ids } = self.pending.borrow_mut().remove(token) else {
            unreachable!("a Frames entry, checked above");
        };
        if let Err(error) = outcome {
            for request_id in request_ids {
                self.on_refused(sink, request_id, error.clone());
            }
        }
    }

    pub(super) fn on_ack_sequenced(
        &self,
        token: usize,
        outcome: Result<u64, PublishError>,
        at: Instant,
    ) {
        let done = match self.pending.borrow_mut().get_mut(token) {
            Some(Pending::Ack {
                remaining,
                last_sequence,
                error,
                ..
            }) => {
                match outcome {
                    Ok(seq) => *last_sequence = seq,
                    Err(e) => {
                        error.get_or_insert(e);
                    }
                }
                *remaining -= 1;
                // Latency ends when the last event was sequenced.
                (*remaining == 0).then_some(at)
            }
            _ => {
                debug_assert!(false, "sequenced answer for unknown request {token}");
                None
            }
        };
        if let Some(at) = done {
            self.finish_ack_at(token, at);
        }
    }

    pub(super) fn finish_ack(&self, token: usize) {
        self.finish_ack_at(token, Instant::now());
    }

    pub(super) fn finish_ack_at(&self, token: usize, at: Instant) {
        let Pending::Ack {
            request,
            count,
            last_sequence,
            error,
            ..
        } = self.pending.borrow_mut().remove(token)
        else {
            unreachable!("finish_ack on a non-ack entry");
        };
        let outcome = AckOutcome {
            result: error.map_or(Ok(()), Err),
            sequence: last_sequence,
            count,
            latency: at.saturating_duration_since(request.decoded_at),
        };
        self.stats.borrow_mut().record_ack_latency(outcome.latency);
        request.sink.acked(request.request_id, outcome);
    }
}
