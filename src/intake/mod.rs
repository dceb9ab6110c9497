//! The intake: how a request gets into a queue, and how intake closes without a lock.
//!
//! Every submitting handle ([`Handle`]: inside the orchestrator and each `Submitter`) shares
//! one [`Shared`] part and keeps a private round-robin cursor. This is where a submit goes:
//! [`Handle::enqueue`] tries the target queue (or every queue, round robin), retries a few
//! times (yielding the core between tries), then blocks in a `select!` that also watches the
//! `closed` channel.
//!
//! # Closing intake without a lock, and without a shared write per submit
//!
//! The queue senders live in [`Intake`], inside the [`Shared`] part every handle holds, so
//! the queues stay open while any handle lives: workers do not leave on a disconnect but on
//! an explicit signal, once nothing can arrive any more. Who may be sending at that moment:
//!
//! - the orchestrator's own submits borrow it, and every shutdown takes it by value (or
//!   runs in its `Drop`): none can be in progress;
//! - a `Submitter` (each clone has its own [`Handle`]) brackets each submit with its own
//!   liveness counter, [`Liveness`], registered with the supervisor when the handle is made.
//!
//! A submitter's submit: `busy += 1` (`SeqCst`), then reads `closing` (`SeqCst`): if set,
//! `busy -= 1` and refuse; else send, then `busy -= 1` (`Release`). A shutdown: `closing =
//! true` (`SeqCst`), then the supervisor reads every registered `busy` until all are zero,
//! then disconnects the workers' `intake_closed` signal. In the single total order of the
//! `SeqCst` operations either the submit's read of `closing` comes after the store (it
//! refuses: nothing sent) or before it — then its `busy += 1` also precedes the supervisor's
//! reads, which see it non-zero until the send is done and `busy -= 1` released it. So when
//! the supervisor signals the workers, every accepted request is in a queue, and each worker
//! leaves only once it has seen the signal *and* found every queue empty. A handle made after
//! `closing` was set refuses on its first submit; one made before it was registered before
//! its first submit (the registration is a channel send), so the supervisor sees it.
//!
//! The cost per submit is one read-modify-write pair on the submitting handle's own counter
//! (shared only by threads that share that one `Submitter`), none on the orchestrator's own
//! path, and a read of `closing`, which is written once. A submit blocked on a full queue
//! also watches the `closed` channel, which disconnects the moment a shutdown starts, so it
//! returns promptly; `closing` makes that refusal final.
//!
//! # Re-entrancy
//!
//! A worker of this pool that would block on it (a `call`, or a blocking `submit` that
//! finds the queue full) marks itself blocked in `Shared::blocked` first. If no other alive
//! worker would be left to serve the queue — or, with per-key queues, the request's own worker
//! is the caller or is blocked too — the request runs inline instead
//! ([`reentry`](crate::reentry)). So re-entrancy can never exhaust the pool or close a cycle
//! of workers waiting on each other.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, TrySendError, select_biased};
use crossbeam_utils::CachePadded;

use crate::config::MAX_WORKERS;
use crate::distribution::ByKey;
use crate::error::{ResizeError, SubmitError, SubmitTimeoutError, TrySubmitError};
use crate::gate::{Gate, LimitWaiting, ReadyLanes};
use crate::ids::RequestId;
use crate::message::{Job, Never, Reply, Route, Stamp};
use crate::metrics_thread::Counters;
use crate::priority::{LANES, NORMAL};
use crate::reentry::Blocked;

mod calls;
mod limit;
mod live;
mod reentrant;
mod statics;

pub(crate) use limit::{Dest, Limit};
pub(crate) use reentrant::Begun;
use reentrant::Reentry;
pub(crate) use statics::Statics;

/// Ids a thread takes from its pool's counter at a time.
const ID_BLOCK: u64 = 256;

/// Times a blocking submit retries a full queue, yielding between tries, before it parks.
const FULL_QUEUE_RETRIES: u32 = 8;

thread_local! {
    /// This thread's block of request ids: (pool, next, end). Thread-local, never shared.
    static IDS: Cell<(u64, u64, u64)> = const { Cell::new((u64::MAX, 0, 0)) };
}

/// Reply channels kept for reuse by `call`, so a `call` allocates nothing in steady state.
pub(crate) const REPLY_POOL: usize = 64;

type ReplyPair<Req, Resp> = (Sender<Reply<Req, Resp>>, Receiver<Reply<Req, Resp>>);
type ReplyPool<Req, Resp> = (Sender<ReplyPair<Req, Resp>>, Receiver<ReplyPair<Req, Resp>>);

/// The queue senders. They live as long as some handle does: workers leave on the
/// supervisor's signal, not on a disconnect (see the module docs).
pub(crate) struct Intake<Req, Resp> {
    /// The bounded queues, `lanes[lane][queue]`: one lane per priority, each with one queue
    /// (`Shared`) or one per worker.
    pub(crate) lanes: [Vec<Sender<Job<Req, Resp>>>; LANES],
    /// Where limited requests go once they hold a permit (see [`gate`](crate::gate)).
    pub(crate) ready: ReadyLanes<Req, Resp>,
    /// Per-key distribution: picks the one queue a request may go to.
    pub(crate) key: Option<ByKey>,
}

/// What every submitting handle shares.
pub(crate) struct Shared<Req, Resp> {
    pub(crate) intake: Intake<Req, Resp>,
    /// Registers each submitter handle's liveness counter with the supervisor.
    pub(crate) register: Sender<Weak<Liveness>>,
    /// Disconnects when a shutdown starts; wakes submits blocked on a full queue.
    pub(crate) closed: Receiver<Never>,
    /// Set once, with `SeqCst`, when a shutdown starts, before `closed` disconnects; read by
    /// every submit, which then refuses (see the module docs for why `SeqCst`). A submit
    /// that saw `closed` fire (an acquire through the channel) is ordered after the store,
    /// so its later loads see `true`: a `ShutDown` is final. The flag is never written in
    /// steady state, so the per-submit load costs no contention; polling `closed` instead
    /// would take crossbeam's internal lock on every submit.
    pub(crate) closing: AtomicBool,
    /// The start of the next block of request ids: one `Relaxed` `fetch_add` per
    /// [`ID_BLOCK`] submits of a thread (see [`Handle::next_id`]); ids only need to be unique.
    pub(crate) next_id: AtomicU64,
    pub(crate) counters: Arc<Counters>,
    /// Which jobs are timed (a clock read at submit, two in the worker): those whose id has
    /// no bit of the mask set. `None` with metrics off. Written only by the metrics thread,
    /// once an interval when the rate adapts; read with `Relaxed` by every submit: a line
    /// that is almost never written costs a load, no contention. A stale mask only times a
    /// job more or less.
    pub(crate) sampling: Option<Arc<AtomicU64>>,
    /// Idle reply channels for `call`.
    pub(crate) replies: ReplyPool<Req, Resp>,
    /// What only a pool of `'static` types has (`None` for a scoped pool).
    pub(crate) statics: Option<Statics<Req, Resp>>,
    /// The moment the pool's [`Stamp`]s count from.
    pub(crate) epoch: Instant,
    /// This pool's id, unique in the process: how a worker thread recognises a handler that
    /// calls back into its own pool.
    pub(crate) pool: u64,
    /// Which workers are blocked on this pool itself (see [`Blocked`]): a worker that could
    /// deadlock by waiting runs its request inline instead.
    pub(crate) blocked: Arc<Blocked>,
    /// The pool's target size (`workers()`), shared with the supervisor.
    pub(crate) target: Arc<AtomicUsize>,
    /// `resize` requests, to the supervisor.
    pub(crate) resize: Sender<usize>,
    /// Whether the pool has per-key queues (its size is then fixed).
    pub(crate) per_key: bool,
    /// Set (once, never cleared) when a priority other than `Normal` or a limit is first
    /// used; until then workers look only at the `Normal` lanes on their fast path, so a pool
    /// that uses neither pays one load of a line nobody writes. Stored before the request
    /// it announces is sent, so a worker that receives that request sees it; a worker that
    /// reads it a moment stale only takes one job in plain FIFO order.
    pub(crate) lanes_on: Arc<AtomicBool>,
    /// Tells the supervisor that `lanes_on` was set (once).
    pub(crate) lanes_used: Sender<()>,
    /// Registers each new gate with the supervisor (which drains it at shutdown).
    pub(crate) gates: Sender<Arc<Gate<Req, Resp>>>,
    /// Limited requests waiting at their gates, per lane.
    pub(crate) limit_waiting: Arc<LimitWaiting>,
    /// The workers' stop flag (a gate moves nothing on once it is set).
    pub(crate) stop: Arc<AtomicBool>,
    /// The pool's `queue_capacity`: a gate's default waiting room.
    pub(crate) queue_capacity: usize,
}

/// How many submits are in progress through one submitter handle (see the module docs).
/// Padded: only the threads that share this one handle write it.
pub(crate) type Liveness = CachePadded<AtomicUsize>;

/// One submitting handle: the shared part, plus a private round-robin cursor and, for a
/// `Submitter`, its own liveness counter.
pub(crate) struct Handle<Req, Resp> {
    shared: Arc<Shared<Req, Resp>>,
    /// `None` for the orchestrator's own handle (a shutdown takes the orchestrator, so none
    /// of its submits can be in progress then).
    live: Option<Arc<Liveness>>,
    /// Where `RoundRobin` starts its next scan. `Relaxed` `fetch_add`: it only spreads load,
    /// and it is contended only by threads sharing this one handle (each `Submitter` clone
    /// has its own).
    cursor: AtomicUsize,
}

pub(crate) enum Wait {
    No,
    Forever,
    Until(Instant),
}

pub(crate) enum Refusal {
    Full,
    Timeout,
    ShutDown,
}

impl<Req, Resp> Handle<Req, Resp> {
    /// The first handle on `shared` (the orchestrator's own).
    pub(crate) fn new(shared: Shared<Req, Resp>) -> Self {
        Handle {
            shared: Arc::new(shared),
            live: None,
            cursor: AtomicUsize::new(0),
        }
    }

    /// The moment the pool's job stamps count from.
    pub(crate) fn epoch(&self) -> Instant {
        self.shared.epoch
    }

    /// This pool's process-wide id.
    pub(crate) fn pool(&self) -> u64 {
        self.shared.pool
    }

    /// The open intake, for the orchestrator's own handle (which needs no bracketing).
    pub(crate) fn intake(&self) -> &Intake<Req, Resp> {
        &self.shared.intake
    }

    /// The pool's target size.
    pub(crate) fn workers(&self) -> usize {
        self.shared.target.load(Ordering::SeqCst)
    }

    /// Asks the supervisor to bring the pool to `n` workers.
    pub(crate) fn resize(&self, n: usize) -> Result<(), ResizeError> {
        if n == 0 {
            return Err(ResizeError::Zero);
        }
        if n > MAX_WORKERS {
            return Err(ResizeError::TooLarge { limit: MAX_WORKERS });
        }
        if self.shared.per_key {
            return Err(ResizeError::PerKeyQueues);
        }
        if self.shared.closing.load(Ordering::SeqCst) {
            return Err(ResizeError::ShutDown);
        }
        self.shared.target.store(n, Ordering::SeqCst);
        self.shared
            .resize
            .send(n)
            .map_err(|_| ResizeError::ShutDown)
    }

    /// Whether intake is closed for good.
    pub(crate) fn is_shut_down(&self) -> bool {
        self.shared.closing.load(Ordering::Relaxed)
    }

    /// Starts refusing every submit, for good (the first step of every shutdown). `SeqCst`:
    /// see the module docs; a submit that then sees `closed` disconnected also sees it.
    pub(crate) fn close(&self) {
        self.shared.closing.store(true, Ordering::SeqCst);
    }

    /// Counts responses that a `process` iterator dropped early discarded.
    pub(crate) fn discarded(&self, n: u64) {
        self.shared
            .counters
            .undelivered
            .fetch_add(n, Ordering::Relaxed);
    }

    /// How many responses `process` iterators discarded so far.
    pub(crate) fn discarded_so_far(&self) -> u64 {
        self.shared.counters.undelivered.load(Ordering::Relaxed)
    }

    /// A new submitter handle: its own cursor and liveness counter, registered with the
    /// supervisor before it can submit anything.
    pub(crate) fn fork(&self) -> Self {
        let live = Arc::new(Liveness::default());
        let _ = self.shared.register.send(Arc::downgrade(&live));
        Handle {
            shared: Arc::clone(&self.shared),
            live: Some(live),
            cursor: AtomicUsize::new(0),
        }
    }
}

impl<Req: Send, Resp: Send> Handle<Req, Resp> {
    /// A fresh request id.
    ///
    /// Ids are handed out in blocks of [`ID_BLOCK`] to each thread (a thread-local cache), so
    /// a submit touches no shared line for its id: one `Relaxed` `fetch_add` on the pool's
    /// counter per block. Ids stay unique per pool and increase along each thread's submits.
    pub(crate) fn next_id(&self) -> RequestId {
        let pool = self.shared.pool;
        IDS.with(|ids| {
            let (of, next, end) = ids.get();
            if of == pool && next < end {
                ids.set((of, next + 1, end));
                return RequestId(next);
            }
            let start = self.shared.next_id.fetch_add(ID_BLOCK, Ordering::Relaxed);
            ids.set((pool, start + 1, start + ID_BLOCK));
            RequestId(start)
        })
    }

    pub(crate) fn job(
        &self,
        req: Req,
        deadline: Option<Instant>,
        route: Route<Req, Resp>,
    ) -> Job<Req, Resp> {
        let id = self.next_id();
        Job {
            id,
            req,
            enqueued: match &self.shared.sampling {
                Some(mask) if id.0 & mask.load(Ordering::Relaxed) == 0 => {
                    Stamp::new(self.shared.epoch, Some(Instant::now()))
                }
                _ => Stamp::NONE,
            },
            deadline: Stamp::new(self.shared.epoch, deadline),
            route,
        }
    }

    /// Counts a submit that got its request back.
    fn rejected(&self) {
        self.shared
            .counters
            .rejected
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The queue to try first, and whether the others may be tried after it.
    #[inline]
    fn target(&self, intake: &Intake<Req, Resp>, req: &Req) -> (usize, bool) {
        let n = intake.lanes[NORMAL].len();
        match &intake.key {
            _ if n == 1 => (0, false),
            Some(key) => (self.key_of(key, req, n), false),
            None => (self.cursor.fetch_add(1, Ordering::Relaxed) % n, true),
        }
    }

    /// Puts a job on a queue of `lane` without blocking. On refusal the job comes back, with
    /// the index of the queue a blocking wait should start from.
    #[inline]
    pub(crate) fn try_enqueue(
        &self,
        intake: &Intake<Req, Resp>,
        job: Job<Req, Resp>,
        lane: usize,
    ) -> Result<(), (Refusal, Job<Req, Resp>, usize)> {
        let queues = &intake.lanes[lane];
        let (first, ring) = self.target(intake, &job.req);
        let tries = if ring { queues.len() } else { 1 };
        let mut job = job;
        for k in 0..tries {
            match queues[(first + k) % queues.len()].try_send(job) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(back)) => job = back,
                Err(TrySendError::Disconnected(back)) => {
                    return Err((Refusal::ShutDown, back, first));
                }
            }
        }
        Err((Refusal::Full, job, first))
    }

    /// The per-key queue (= worker) of `req`, if this pool has per-key queues.
    fn key_queue(&self, intake: Option<&Intake<Req, Resp>>, req: &Req) -> Option<usize> {
        let intake = intake?;
        let key = intake.key.as_ref()?;
        Some(self.key_of(key, req, intake.lanes[NORMAL].len()))
    }

    /// Puts a job where `dest` says, waiting as `wait` says. On refusal the job comes back.
    ///
    /// `may_inline`: a worker of this pool about to wait forever for space runs the job
    /// inline instead if no other worker is free (a caller that already counted itself as
    /// blocked passes `false`).
    #[inline]
    fn enqueue(
        &self,
        intake: Option<&Intake<Req, Resp>>,
        job: Job<Req, Resp>,
        wait: Wait,
        may_inline: bool,
        dest: Dest<'_, Req, Resp>,
    ) -> Result<RequestId, (Refusal, Job<Req, Resp>)> {
        let Some(intake) = intake else {
            return Err((Refusal::ShutDown, job));
        };
        if self.shared.closing.load(Ordering::Relaxed) {
            return Err((Refusal::ShutDown, job));
        }
        let lane = match dest {
            Dest::Lane(lane) => lane,
            Dest::Gate(limit, lane) => {
                return self.enqueue_gate(intake, limit, job, wait, may_inline, lane);
            }
        };
        if lane != NORMAL {
            self.lanes_on();
        }
        // The fast path, kept small enough to inline: one try on the target queue(s).
        let id = job.id;
        match self.try_enqueue(intake, job, lane) {
            Ok(()) => Ok(id),
            Err((Refusal::Full, job, first)) => {
                self.enqueue_wait(intake, job, first, wait, may_inline, lane)
            }
            Err((why, job, _)) => Err((why, job)),
        }
    }

    /// [`enqueue`](Self::enqueue) into a bounded lane whose queue(s) were full at the first
    /// try: wait as `wait` says, from queue `first` on.
    #[cold]
    #[inline(never)]
    fn enqueue_wait(
        &self,
        intake: &Intake<Req, Resp>,
        job: Job<Req, Resp>,
        first: usize,
        wait: Wait,
        may_inline: bool,
        lane: usize,
    ) -> Result<RequestId, (Refusal, Job<Req, Resp>)> {
        let id = job.id;
        let (mut job, mut first) = (job, first);
        let deadline = match wait {
            Wait::No => return Err((Refusal::Full, job)),
            Wait::Forever => None,
            Wait::Until(at) => Some(at),
        };
        // A worker of this pool waiting for space in its own queue: only while another
        // worker is free to make that space (a timed wait ends by itself).
        let per_key = intake.key.is_some();
        let reentry =
            (may_inline && deadline.is_none()).then(|| self.reentry(|| per_key.then_some(first)));
        let _blocked = match reentry {
            Some(Reentry::Inline(inline)) => {
                inline.run(job);
                return Ok(id);
            }
            Some(Reentry::Wait(guard)) => guard,
            None => None,
        };
        // A blocking `select` parks this thread at once, and then every worker `recv` must
        // take the queue's waker lock and unpark it: a futex round trip per job while the
        // queue is full. So retry a few times first, as `Sender::send` does; but yield
        // between tries instead of spinning: a full queue means the workers are behind,
        // and on a machine with fewer cores than threads a producer spinning on `pause`
        // takes the core a worker needs (1 µs jobs, 2 workers, 2 cores: 0.6 µs/job
        // yielding against 1.1 µs spinning; see README "Performance"). Where cores are
        // idle a yield returns at once, so this is still only a few microseconds.
        for _ in 0..FULL_QUEUE_RETRIES {
            std::thread::yield_now();
            if self.shared.closing.load(Ordering::Relaxed) {
                return Err((Refusal::ShutDown, job));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            match self.try_enqueue(intake, job, lane) {
                Ok(()) => return Ok(id),
                Err((Refusal::Full, back, at)) => (job, first) = (back, at),
                Err((why, back, _)) => return Err((why, back)),
            }
        }
        let closed = &self.shared.closed;
        let queues = &intake.lanes[lane];
        let n = queues.len();
        let sent = if n == 1 || intake.key.is_some() {
            // One possible queue: the allocation-free macro.
            let q = &queues[first];
            let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            match timeout {
                None => select_biased! {
                    recv(closed) -> _ => Err((Refusal::ShutDown, job)),
                    send(q, job) -> sent => sent.map_err(|e| (Refusal::ShutDown, e.into_inner())),
                },
                Some(timeout) => select_biased! {
                    recv(closed) -> _ => Err((Refusal::ShutDown, job)),
                    send(q, job) -> sent => sent.map_err(|e| (Refusal::ShutDown, e.into_inner())),
                    default(timeout) => Err((Refusal::Timeout, job)),
                },
            }
        } else {
            // Round robin and every worker queue is full: wait for space on any of them.
            let mut sel = Select::new_biased();
            sel.recv(closed);
            for k in 0..n {
                sel.send(&queues[(first + k) % n]);
            }
            let op = match deadline {
                None => Ok(sel.select()),
                Some(at) => sel.select_deadline(at),
            };
            match op {
                Err(_) => Err((Refusal::Timeout, job)),
                Ok(op) if op.index() == 0 => {
                    let _ = op.recv(closed);
                    Err((Refusal::ShutDown, job))
                }
                Ok(op) => {
                    let q = &queues[(first + op.index() - 1) % n];
                    op.send(q, job)
                        .map_err(|e| (Refusal::ShutDown, e.into_inner()))
                }
            }
        };
        sent.map(|()| id)
    }

    #[inline]
    pub(crate) fn submit(
        &self,
        intake: Option<&Intake<Req, Resp>>,
        req: Req,
        deadline: Option<Instant>,
        dest: Dest<'_, Req, Resp>,
    ) -> Result<RequestId, SubmitError<Req>> {
        let job = self.job(req, deadline, Route::Stream);
        self.enqueue(intake, job, Wait::Forever, true, dest)
            .map_err(|(_, job)| {
                self.rejected();
                SubmitError::ShutDown(job.req)
            })
    }

    #[inline]
    pub(crate) fn try_submit(
        &self,
        intake: Option<&Intake<Req, Resp>>,
        req: Req,
        dest: Dest<'_, Req, Resp>,
    ) -> Result<RequestId, TrySubmitError<Req>> {
        let job = self.job(req, None, Route::Stream);
        self.enqueue(intake, job, Wait::No, false, dest)
            .map_err(|(why, job)| {
                self.rejected();
                match why {
                    Refusal::Full | Refusal::Timeout => TrySubmitError::Full(job.req),
                    Refusal::ShutDown => TrySubmitError::ShutDown(job.req),
                }
            })
    }

    pub(crate) fn submit_timeout(
        &self,
        intake: Option<&Intake<Req, Resp>>,
        req: Req,
        timeout: Duration,
        dest: Dest<'_, Req, Resp>,
    ) -> Result<RequestId, SubmitTimeoutError<Req>> {
        let wait = match Instant::now().checked_add(timeout) {
            Some(at) => Wait::Until(at),
            None => Wait::Forever,
        };
        let job = self.job(req, None, Route::Stream);
        self.enqueue(intake, job, wait, false, dest)
            .map_err(|(why, job)| {
                self.rejected();
                match why {
                    Refusal::Full | Refusal::Timeout => SubmitTimeoutError::Timeout(job.req),
                    Refusal::ShutDown => SubmitTimeoutError::ShutDown(job.req),
                }
            })
    }
}
