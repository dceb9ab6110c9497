//! How a worker hands a finished job's answer on: to the responses channel (waiting for
//! space, as back-pressure), to a waiting `call`, to a `process` iterator, or — in a pipeline
//! stage — to the next stage; and how a job that never ran is handed back.

use std::panic::{self, AssertUnwindSafe};
use std::time::Duration;

use crossbeam_channel::TrySendError;
use crossbeam_utils::Backoff;

use super::Worker;
use crate::context::JobContext;
use crate::error::{CallError, JobError};
use crate::ids::{RequestId, WorkerId};
use crate::message::{Job, Reply, Route, StatsDelta, Status};
use crate::response::Response;
use crate::unwind::drop_quietly;

impl<Req, Resp, S, I, H> Worker<Req, Resp, I, H>
where
    Req: Send,
    Resp: Send,
    I: Fn(WorkerId) -> S + Send + Sync,
    H: Fn(&mut S, &JobContext, Req) -> Resp + Send + Sync,
{
    pub(super) fn answer(
        &self,
        id: RequestId,
        outcome: Result<Resp, JobError>,
        route: Route<Req, Resp>,
        queue_time: Duration,
        handler_time: Duration,
        stats: &mut StatsDelta,
    ) {
        let response = |outcome| Response {
            id,
            worker: WorkerId(self.id),
            outcome,
            queue_time,
            handler_time,
        };
        // Whatever could not be delivered is counted first, then dropped where a panicking
        // `Drop` cannot take the worker down.
        match route {
            Route::Stream => match self.forward {
                None => {
                    if let Err(lost) = self.deliver(response(outcome), stats) {
                        stats.undelivered += 1;
                        drop_quietly(lost);
                    }
                }
                Some(forward) => match outcome {
                    Ok(value) => {
                        if let Some(handoff) = forward(value) {
                            self.report_waiting(stats);
                            drop_quietly(panic::catch_unwind(AssertUnwindSafe(handoff)));
                        }
                    }
                    // Stage handlers contain their function's panics and take no deadlines.
                    Err(_) => stats.undelivered += 1,
                },
            },
            Route::Process(tx, seq) => {
                // Never full: `process` keeps at most its channel's capacity in flight. It
                // fails only when the iterator was dropped early.
                if let Err(lost) = tx.send((seq, response(outcome))) {
                    stats.undelivered += 1;
                    drop_quietly(lost);
                }
            }
            Route::Call(back) => {
                let reply = Reply {
                    result: outcome.map_err(CallError::Failed),
                    back: back.clone(),
                };
                if let Err(lost) = back.send(reply) {
                    stats.undelivered += 1;
                    drop_quietly(lost);
                }
            }
        }
    }

    /// Sends a response, waiting for space on a full bounded channel (back-pressure) until the
    /// receiver is gone or a `shutdown_timeout` expires. Hands back what it could not deliver.
    fn deliver(
        &self,
        response: Response<Resp>,
        stats: &mut StatsDelta,
    ) -> Result<(), Response<Resp>> {
        let response = match self.links.responses.try_send(response) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Disconnected(response)) => return Err(response),
            Err(TrySendError::Full(response)) => response,
        };
        // Retry with a backoff before the select parks us (see `Handle::enqueue`).
        let backoff = Backoff::new();
        let mut response = response;
        while !backoff.is_completed() {
            backoff.snooze();
            match self.links.responses.try_send(response) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Disconnected(back)) => return Err(back),
                Err(TrySendError::Full(back)) => response = back,
            }
        }
        self.report_waiting(stats);
        crossbeam_channel::select_biased! {
            recv(self.links.abort) -> _ => Err(response),
            send(self.links.responses, response) -> sent => sent.map_err(|e| e.into_inner()),
        }
    }

    /// About to block handing a finished job's answer on: report the worker as not busy
    /// (busy means running the handler), so the wait is not counted as work. The next job's
    /// start reports it busy again.
    pub(super) fn report_waiting(&self, stats: &mut StatsDelta) {
        self.waited.set(true);
        if self.flush_every.is_some() {
            stats.busy = false;
            stats.running_since = None;
            self.flush(stats);
        }
    }

    pub(super) fn hand_back(&self, job: Job<Req, Resp>, stats: &mut StatsDelta) {
        // `process` borrows the orchestrator, so no shutdown can hand its jobs back; if one
        // ever did, the supervisor's `unstarted` is the place for it.
        let status = &self.links.status;
        let cancelled = job.hand_back(|id, req| {
            let _ = status.send(Status::Unstarted { id, req });
        });
        if cancelled {
            stats.cancelled += 1;
        } else {
            stats.handed_back += 1;
        }
        self.live(|l| &l.returned);
    }
}
