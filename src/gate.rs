//! Concurrency limits: a [`Gate`] of `k` permits in front of the pool's queues.
//!
//! A request submitted through a `Limited` handle first waits in its gate's own bounded
//! queue (`waiting`), holding no worker. Whoever may have made a permit available moves
//! waiting requests on — [`Gate::pump`]: take a permit, take the oldest waiting request, put
//! the pair on the pool's *ready* lane of the request's priority and queue (unbounded, but
//! never holding more than the permits: at most `k` per gate). A worker takes a ready request
//! before the bounded lane of the same priority, runs it, and drops its [`Permit`], which
//! gives the permit back and pumps again. So at most `k` requests of one gate are past the
//! gate at once — ready or running — and a waiting request never holds a worker.
//!
//! # No lost wake-up
//!
//! Two parties pump: a submitter right after it added a request, and a permit's `Drop` right
//! after it gave the permit back. The danger is the "store buffering" race: the submitter
//! sees no free permit while the permit's holder, releasing, sees no waiting request. Each
//! side writes (the queue push; the `SeqCst` decrement of `held`), then issues a `SeqCst`
//! fence, then reads the other side's location: with a `SeqCst` fence between each side's
//! write and read, at least one of them sees the other's write. So whenever a request waits,
//! some permit is held, and its `Drop` will move the request on. The supervisor also pumps a
//! gate that waits with no permit held, as a guard, while a graceful shutdown drains it.
//!
//! `held` is one atomic counter per gate, written by the threads that submit through that
//! gate and the workers that finish its requests — only limited traffic touches it. A channel
//! of tokens would do the same with more operations per request.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering, fence};

use crossbeam_channel::{Receiver, Sender};
use crossbeam_utils::CachePadded;

use crate::message::Job;
use crate::priority::LANES;
use crate::unwind::drop_quietly;

thread_local! {
    /// The gate whose request this worker thread runs now (its address), or 0: how a
    /// handler that calls back into its own limit is recognised. Thread-local.
    static RUNNING: Cell<usize> = const { Cell::new(0) };
}

/// A limited request waiting for a permit: the job, its priority lane, and the queue (worker
/// queue, for `RoundRobin` and `by_key`) it goes to once it has one.
pub(crate) struct Waiting<Req, Resp> {
    pub(crate) job: Job<Req, Resp>,
    pub(crate) lane: usize,
    pub(crate) queue: usize,
}

/// A request past its gate, with the permit it holds.
pub(crate) type Permitted<Req, Resp> = (Job<Req, Resp>, Permit<Req, Resp>);

/// The pool's ready lanes: `[lane][queue]`, unbounded (a gate never has more than its
/// permits in them).
pub(crate) type ReadyLanes<Req, Resp> = [Vec<Sender<Permitted<Req, Resp>>>; LANES];

/// How many limited requests of a pool wait at their gates, per lane (for `queued`).
/// Written by the threads that move limited requests (`Relaxed` add and subtract: a
/// statistic that nothing else depends on); read by the metrics thread. A request is counted
/// right after it entered a waiting queue, and uncounted as it leaves one, possibly first by
/// another thread: so the sum can dip below zero for a moment, and readers clamp it at zero
/// (an undercount for a moment, never an overshoot).
pub(crate) type LimitWaiting = [AtomicI64; LANES];

/// One concurrency limit.
pub(crate) struct Gate<Req, Resp> {
    limit: usize,
    /// Permits held: requests of this gate that are ready or running. `SeqCst`: see the
    /// module docs. Padded: it is written by every thread that moves this gate's requests.
    held: CachePadded<AtomicUsize>,
    /// The gate's waiting requests, oldest first.
    waiting: Receiver<Waiting<Req, Resp>>,
    /// Pumps between taking a request off `waiting` and putting it on a ready lane (`SeqCst`,
    /// around both): with `waiting` empty and none in flight, nothing more can leave the gate.
    moving: AtomicUsize,
    ready: ReadyLanes<Req, Resp>,
    /// The pool's stop flag: once set, a released permit moves nothing on (what waits is
    /// handed back by the supervisor).
    stop: Arc<AtomicBool>,
    totals: Arc<LimitWaiting>,
}

impl<Req, Resp> Gate<Req, Resp> {
    /// A gate of `limit` permits whose requests wait in `waiting` and go on to `ready`.
    pub(crate) fn new(
        limit: usize,
        waiting: Receiver<Waiting<Req, Resp>>,
        ready: ReadyLanes<Req, Resp>,
        stop: Arc<AtomicBool>,
        totals: Arc<LimitWaiting>,
    ) -> Self {
        Gate {
            limit,
            held: CachePadded::new(AtomicUsize::new(0)),
            waiting,
            moving: AtomicUsize::new(0),
            ready,
            stop,
            totals,
        }
    }

    /// The most requests of this gate that may be past it at once.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// Permits held now.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::SeqCst)
    }

    /// Requests waiting for a permit now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Counts a request just added to the waiting queue; [`uncount`](Self::uncount) as one
    /// leaves it.
    pub(crate) fn count(&self, lane: usize) {
        self.totals[lane].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn uncount(&self, lane: usize) {
        self.totals[lane].fetch_sub(1, Ordering::Relaxed);
    }

    /// Takes a permit if one is free.
    pub(crate) fn acquire(&self) -> bool {
        let mut held = self.held.load(Ordering::SeqCst);
        loop {
            if held >= self.limit {
                return false;
            }
            match self.held.compare_exchange_weak(
                held,
                held + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(now) => held = now,
            }
        }
    }

    /// A permit, if one is free (for a request run inline by a worker of the pool).
    pub(crate) fn try_permit(self: &Arc<Self>) -> Option<Permit<Req, Resp>> {
        self.acquire().then(|| Permit(Arc::clone(self)))
    }

    fn release(&self) {
        self.held.fetch_sub(1, Ordering::SeqCst);
    }

    /// Whether nothing of this gate is waiting, ready or running (read in that order: with
    /// nothing added any more, an empty queue followed by no permit held means every request
    /// it had has finished). The supervisor drops a gate it alone holds only when idle.
    pub(crate) fn is_idle(&self) -> bool {
        let empty = self.waiting.is_empty();
        fence(Ordering::SeqCst);
        empty && self.held() == 0
    }

    /// Whether nothing waits at this gate and nothing is on its way out of it: then, with no
    /// submit in progress, every request it let through is in a queue or running (the
    /// workers' to finish), and nothing more will come out of it. Read in that order: a pump
    /// counts itself in `moving` before it takes a request off the queue.
    pub(crate) fn is_drained(&self) -> bool {
        let empty = self.waiting.is_empty();
        fence(Ordering::SeqCst);
        empty && self.moving.load(Ordering::SeqCst) == 0
    }

    /// Moves waiting requests on while permits are free (see the module docs).
    pub(crate) fn pump(self: &Arc<Self>) {
        loop {
            fence(Ordering::SeqCst);
            if self.waiting.is_empty() || !self.acquire() {
                return;
            }
            self.moving.fetch_add(1, Ordering::SeqCst);
            let taken = self.waiting.try_recv();
            let _moved = Moved(&self.moving);
            match taken {
                Ok(Waiting { job, lane, queue }) => {
                    self.uncount(lane);
                    let permit = Permit(Arc::clone(self));
                    let ready = &self.ready[lane];
                    // The ready lanes' receivers live with the workers and the supervisor,
                    // which outlive every accepted request; were they gone, drop it where
                    // its `Drop` cannot escape.
                    if let Err(lost) = ready[queue % ready.len()].send((job, permit)) {
                        drop_quietly(lost.into_inner());
                    }
                }
                // Another thread took it first: give the permit back (the loop looks again).
                Err(_) => self.release(),
            }
        }
    }

    /// Every waiting request, taken off the queue (the supervisor hands them back).
    pub(crate) fn drain(&self) -> impl Iterator<Item = Job<Req, Resp>> + '_ {
        std::iter::from_fn(|| {
            let w = self.waiting.try_recv().ok()?;
            self.uncount(w.lane);
            Some(w.job)
        })
    }

    /// Whether the calling thread runs a request of this gate now.
    pub(crate) fn runs_here(&self) -> bool {
        RUNNING.with(|r| r.get() == self.addr())
    }

    fn addr(&self) -> usize {
        std::ptr::from_ref(self) as usize
    }
}

/// Counts a pump out of `moving` when dropped (after its send).
struct Moved<'a>(&'a AtomicUsize);

impl Drop for Moved<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A permit of a gate, held by one of its requests from the moment it leaves the waiting
/// queue until it finished (or was handed back). Dropping it gives the permit back and moves
/// the next waiting request on — on every path, also when the holder unwinds.
pub(crate) struct Permit<Req, Resp>(Arc<Gate<Req, Resp>>);

impl<Req, Resp> Permit<Req, Resp> {
    /// Marks the calling thread as running a request of this permit's gate until the guard
    /// drops (restoring what it ran before: an inline run may nest).
    pub(crate) fn enter(&self) -> Running {
        let was = RUNNING.with(|r| r.replace(self.0.addr()));
        Running(was)
    }
}

impl<Req, Resp> Drop for Permit<Req, Resp> {
    fn drop(&mut self) {
        self.0.release();
        if !self.0.stop.load(Ordering::Relaxed) {
            self.0.pump();
        }
    }
}

/// See [`Permit::enter`].
pub(crate) struct Running(usize);

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.with(|r| r.set(self.0));
    }
}
