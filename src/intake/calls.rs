//! `call` and `call_timeout`: a request with a private route for its answer, and the reply
//! channels they reuse (a thread-local cache, then a pool) so a `call` allocates nothing.

use std::any::Any;
use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::{Receiver, bounded};

use super::{Begun, Dest, Handle, Intake, Reentry, Refusal, ReplyPair, Wait};
use crate::error::{CallError, CallTimeoutError, JobError};
use crate::gate::Permit;
use crate::message::{Reply, Route};
use crate::unwind::drop_quietly;

thread_local! {
    /// This thread's idle reply channel pair for `call`, for one pool: an
    /// `Option<ReplyPair<Req, Resp>>` behind `Any` (allocated once per pool switch), so a
    /// `call` in steady state makes no channel operation to get or return its reply channel.
    static REPLY: RefCell<Option<(u64, Box<dyn Any>)>> = const { RefCell::new(None) };
}

/// This thread's cached reply pair for `pool`, if it holds one.
pub(crate) fn cached_reply<Req: 'static, Resp: 'static>(pool: u64) -> Option<ReplyPair<Req, Resp>> {
    REPLY.with(|r| match &mut *r.borrow_mut() {
        Some((of, slot)) if *of == pool => slot
            .downcast_mut::<Option<ReplyPair<Req, Resp>>>()
            .and_then(Option::take),
        _ => None,
    })
}

/// Keeps `pair` in this thread's cache; returns it if the cache holds one for `pool` already.
pub(crate) fn keep_reply<Req: 'static, Resp: 'static>(
    pool: u64,
    pair: ReplyPair<Req, Resp>,
) -> Option<ReplyPair<Req, Resp>> {
    REPLY.with(|r| {
        let mut r = r.borrow_mut();
        if let Some((of, slot)) = &mut *r
            && *of == pool
            && let Some(free) = slot.downcast_mut::<Option<ReplyPair<Req, Resp>>>()
        {
            return match free {
                None => {
                    *free = Some(pair);
                    None
                }
                Some(_) => Some(pair),
            };
        }
        // The cache held another pool's pair (or nothing): it now serves this pool.
        let old = r.replace((pool, Box::new(Some(pair))));
        drop(r);
        drop_quietly(old);
        None
    })
}

impl<Req: Send, Resp: Send> Handle<Req, Resp> {
    /// A reply channel pair for a `call`: this thread's cached one (pools of `'static`
    /// types), else one from the pool, else a new one.
    pub(super) fn reply_pair(&self) -> ReplyPair<Req, Resp> {
        let pool = self.shared.pool;
        let cached = self
            .shared
            .statics
            .as_ref()
            .and_then(|s| (s.take_reply)(pool));
        cached
            .or_else(|| self.shared.replies.1.try_recv().ok())
            .unwrap_or_else(|| bounded(1))
    }

    /// Gives a reply channel pair back: to this thread's cache (no channel operation), or,
    /// if it holds one already (or cannot), to the pool.
    pub(super) fn recycle(&self, pair: ReplyPair<Req, Resp>) {
        let pool = self.shared.pool;
        let spare = match &self.shared.statics {
            Some(s) => (s.keep_reply)(pool, pair),
            None => Some(pair),
        };
        if let Some(pair) = spare {
            let _ = self.shared.replies.0.try_send(pair);
        }
    }

    /// The first half of a `call`: enqueue with a pooled reply channel (or, re-entrant with
    /// no worker free, run it inline), return the reply's receiver and, for a worker of this
    /// pool, the guard that counts it as blocked until the answer arrives.
    pub(crate) fn call_begin(
        &self,
        intake: Option<&Intake<Req, Resp>>,
        req: Req,
        dest: Dest<'_, Req, Resp>,
    ) -> Result<Begun<'_, Req, Resp>, CallError<Req>> {
        // A handler calling into the limit it runs under: waiting for a permit could wait
        // for itself, so the request runs nested in it, under the caller's permit.
        let nested = matches!(dest, Dest::Gate(limit, _) if limit.gate.runs_here());
        let reentry = if nested {
            self.inline_runner()
                .map_or(Reentry::Wait(None), |(_, inline)| Reentry::Inline(inline))
        } else {
            self.reentry(|| self.key_queue(intake, &req))
        };
        // Inline through a limit: under one of its permits if one is free. If none is, every
        // worker is blocked on the pool and so is every running holder of a permit: nothing
        // can free one, and the request runs nested past the limit (documented) rather than
        // deadlock.
        let permit = match (&reentry, dest) {
            (Reentry::Inline(_), Dest::Gate(limit, _)) if !nested => limit.gate.try_permit(),
            _ => None,
        };
        let guard = match reentry {
            Reentry::Wait(guard) => guard,
            Reentry::Inline(inline) => {
                if intake.is_none() || self.shared.closing.load(Ordering::Relaxed) {
                    self.rejected();
                    return Err(CallError::ShutDown(req));
                }
                let (tx, rx) = self.reply_pair();
                let running = permit.as_ref().map(Permit::enter);
                inline.run(self.job(req, None, Route::Call(tx)));
                drop(running);
                drop(permit); // gives the permit back, moves the limit's next request on
                return Ok((rx, None));
            }
        };
        let (tx, rx) = self.reply_pair();
        let job = self.job(req, None, Route::Call(tx));
        let may_inline = guard.is_none();
        match self.enqueue(intake, job, Wait::Forever, may_inline, dest) {
            Ok(_) => Ok((rx, guard)),
            Err((_, job)) => {
                self.rejected();
                if let Route::Call(tx) = job.route {
                    self.recycle((tx, rx));
                }
                Err(CallError::ShutDown(job.req))
            }
        }
    }

    /// The second half of a `call`: wait for the one reply, recycle the channel.
    pub(crate) fn call_wait(&self, rx: Receiver<Reply<Req, Resp>>) -> Result<Resp, CallError<Req>> {
        match rx.recv() {
            Ok(Reply { result, back }) => {
                // Exactly one reply per accepted call, so the channel is empty again.
                self.recycle((back, rx));
                result
            }
            // The job was dropped unanswered: its worker thread died outside the handler.
            Err(_) => Err(CallError::Failed(JobError::WorkerDied)),
        }
    }

    /// The first half of a `call_timeout`: enqueue with a fresh reply channel and the
    /// deadline, waiting for space no longer than the deadline.
    pub(crate) fn call_timed_begin(
        &self,
        intake: Option<&Intake<Req, Resp>>,
        req: Req,
        deadline: Option<Instant>,
        dest: Dest<'_, Req, Resp>,
    ) -> Result<Receiver<Reply<Req, Resp>>, CallTimeoutError<Req>> {
        // Not pooled: a late answer may still arrive on it after the caller gave up.
        let (tx, rx) = bounded(1);
        let job = self.job(req, deadline, Route::Call(tx));
        let wait = deadline.map_or(Wait::Forever, Wait::Until);
        match self.enqueue(intake, job, wait, false, dest) {
            Ok(_) => Ok(rx),
            Err((why, job)) => {
                self.rejected();
                Err(match why {
                    Refusal::ShutDown => CallTimeoutError::ShutDown(job.req),
                    Refusal::Full | Refusal::Timeout => CallTimeoutError::Timeout(job.req),
                })
            }
        }
    }

    /// The second half of a `call_timeout`: the answer, if it comes before the deadline.
    pub(crate) fn call_timed_wait(
        &self,
        rx: Receiver<Reply<Req, Resp>>,
        deadline: Option<Instant>,
    ) -> Result<Resp, CallTimeoutError<Req>> {
        let got = match deadline {
            Some(at) => rx.recv_deadline(at).map_err(|e| e.is_timeout()),
            None => rx.recv().map_err(|_| false),
        };
        match got {
            Ok(Reply { result, .. }) => result.map_err(CallTimeoutError::from),
            // Given up: the worker's answer will find the receiver gone (undelivered).
            Err(true) => Err(CallTimeoutError::Expired),
            Err(false) => Err(CallTimeoutError::Failed(JobError::WorkerDied)),
        }
    }
}
