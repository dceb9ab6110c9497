//! [`Orchestrator`] and [`Submitter`]: the four ways to submit, the three ways to stop, and
//! the start-up that wires the threads together.
//!
//! # Closing intake without a lock
//!
//! The queue senders live in one `Intake`, behind an `Arc` that only the orchestrator holds
//! strongly; submitters hold a `Weak`. A submit upgrades the `Weak` for the duration of its
//! send, so the senders — and with them the queues — are dropped exactly when intake is
//! closed *and* no submit is in progress. Workers drain until their queues report
//! disconnected, so they see every request that any submit managed to send, and a submit
//! that finds the `Weak` dead gets its request back. That is the whole race-free close:
//! `Arc`'s reference count is the only shared counter, and no submit can be both accepted and
//! refused. A submit blocked on a full queue also watches the `closed` channel, which
//! disconnects the moment a shutdown starts, so it returns promptly instead of waiting for
//! space.

use std::fmt;
use std::panic;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_utils::Backoff;

use crossbeam_channel::{
    Receiver, Select, Sender, TrySendError, bounded, select_biased, unbounded,
};

use crate::broadcast::{Broadcaster, Counters};
use crate::builder::{Builder, ByKey, Config, Spread};
use crate::error::{
    BuildError, BuildErrorKind, CallError, JobError, SubmitError, SubmitTimeoutError,
    TrySubmitError,
};
use crate::message::{Control, Job, Reply, RequestId, Response, Route, Shutdown, Status, WorkerId};
use crate::metrics::{MetricsEvent, MetricsSnapshot, ShutdownSummary};
use crate::process::{Feeder, Process, ProcessOrdered};
use crate::supervisor::{Outcome, SpawnWorker, Supervisor};
use crate::worker::{self, Forward, Inline, JobContext, Never, Worker};

/// The largest buffer a subscription gets; larger requests are clamped to it.
pub const MAX_SUBSCRIBER_CAPACITY: usize = 1 << 20;

/// The default buffer of a subscription made with [`Orchestrator::subscribe`].
pub const DEFAULT_SUBSCRIBER_CAPACITY: usize = 64;

/// Reply channels kept for reuse by `call`, so a `call` allocates nothing in steady state.
const REPLY_POOL: usize = 64;

type ReplyPair<Req, Resp> = (Sender<Reply<Req, Resp>>, Receiver<Reply<Req, Resp>>);
type ReplyPool<Req, Resp> = (Sender<ReplyPair<Req, Resp>>, Receiver<ReplyPair<Req, Resp>>);

/// The queue senders; dropped (closing the queues) when the last strong `Arc` goes.
pub(crate) struct Intake<Req, Resp> {
    pub(crate) queues: Vec<Sender<Job<Req, Resp>>>,
    /// Per-key distribution: picks the one queue a request may go to.
    key: Option<ByKey>,
}

/// What every submitting handle shares.
struct Shared<Req, Resp> {
    intake: Weak<Intake<Req, Resp>>,
    /// Disconnects when a shutdown starts; wakes submits blocked on a full queue.
    closed: Receiver<Never>,
    /// Set once, with `Release`, when a shutdown starts, before `closed` disconnects; read
    /// with `Relaxed` by every submit, which then refuses. Without it, producers that keep
    /// retrying would keep the intake `Arc` upgraded and a graceful shutdown could never
    /// close the queues. A submit that saw `closed` fire (an acquire through the channel)
    /// is ordered after the store, so its later loads see `true`: a `ShutDown` is final. The
    /// flag is never written in steady state, so the per-submit load costs no contention;
    /// polling `closed` instead would take crossbeam's internal lock on every submit.
    closing: AtomicBool,
    /// The next request id. One `Relaxed` `fetch_add` per accepted submit: ids only need to
    /// be unique, and the queue's own send already touches a line every producer shares.
    next_id: AtomicU64,
    counters: Arc<Counters>,
    /// Which jobs are timed (a clock read at submit, two in the worker): those whose id has
    /// no bit of the mask set. `None` with metrics off.
    time_mask: Option<u64>,
    /// Idle reply channels for `call`.
    replies: ReplyPool<Req, Resp>,
    /// This pool's id, unique in the process: how a worker thread recognises a handler that
    /// calls back into its own pool.
    pool: u64,
    /// The number of workers.
    workers: usize,
    /// Workers of this pool blocked in a re-entrant `call` or `submit` into it. Touched only
    /// by re-entrant waits (never on the ordinary path), with `SeqCst` read-modify-writes: a
    /// worker that would make it reach `workers` runs the request inline instead of waiting,
    /// so at least one worker is always free to serve the queue and re-entrancy cannot
    /// exhaust the pool.
    reentrant: AtomicUsize,
}

/// Process-wide source of pool ids; one `fetch_add` per `build`.
static NEXT_POOL: AtomicU64 = AtomicU64::new(0);

/// Whether a re-entrant caller may wait or must run its request inline.
enum Reentry<'a, Req, Resp> {
    /// Not a worker of this pool, or another worker is free: wait as usual (the guard, if
    /// any, counts this worker as blocked until it is dropped).
    Wait(Option<WaitGuard<'a>>),
    /// Waiting would leave no worker free: run it here.
    Inline(std::rc::Rc<Inline<Req, Resp>>),
}

/// A `call` under way: the reply's receiver, and for a worker of this pool the guard that
/// counts it as blocked until the answer arrives.
type Begun<'a, Req, Resp> = (Receiver<Reply<Req, Resp>>, Option<WaitGuard<'a>>);

/// Counts one worker as blocked in a re-entrant wait while it lives.
struct WaitGuard<'a>(&'a AtomicUsize);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One submitting handle: the shared part, plus a private round-robin cursor.
pub(crate) struct Handle<Req, Resp> {
    shared: Arc<Shared<Req, Resp>>,
    /// Where `RoundRobin` starts its next scan. `Relaxed` `fetch_add`: it only spreads load,
    /// and it is contended only by threads sharing this one handle (each `Submitter` clone
    /// has its own).
    cursor: AtomicUsize,
}

enum Wait {
    No,
    Forever,
    Until(Instant),
}

pub(crate) enum Refusal {
    Full,
    Timeout,
    ShutDown,
}

/// The threads and channels of a running orchestrator; taken by the first shutdown.
struct Running<Req, Resp> {
    intake: Arc<Intake<Req, Resp>>,
    closed: Sender<Never>,
    stop: Arc<AtomicBool>,
    supervisor_ctl: Sender<Shutdown>,
    supervisor: JoinHandle<Outcome<Req>>,
    broadcast_ctl: Sender<Control>,
    broadcaster: JoinHandle<ShutdownSummary>,
}

/// A pool of worker threads behind a bounded queue; see the [crate docs](crate) for a tour.
///
/// All submitting methods take `&self`, so an orchestrator can be shared by reference
/// (it is `Send + Sync` when `Req` and `Resp` are `Send`); use [`submitter`](Self::submitter)
/// for an owned, cloneable handle. Dropping it is the same as [`shutdown`](Self::shutdown):
/// no thread outlives it.
pub struct Orchestrator<Req, Resp> {
    handle: Handle<Req, Resp>,
    running: Option<Running<Req, Resp>>,
    workers: usize,
    queue_capacity: usize,
}

/// An owned handle for submitting from threads that cannot borrow the [`Orchestrator`].
///
/// `Clone + Send + Sync + 'static`; it has the same four submitting methods. It does not keep
/// the orchestrator alive: after any shutdown, every method hands the request back as
/// `ShutDown`.
///
/// # Examples
///
/// ```
/// use channel_orchestrator::Orchestrator;
///
/// let (orch, responses) = Orchestrator::builder().workers(2).build(|x: u32| x + 1)?;
/// let submitter = orch.submitter();
/// let producer = std::thread::spawn(move || {
///     for i in 0..10 {
///         submitter.submit(i).unwrap();
///     }
/// });
/// producer.join().unwrap();
/// let report = orch.shutdown();
/// assert_eq!(report.completed, 10);
/// assert_eq!(responses.iter().count(), 10);
/// # Ok::<(), channel_orchestrator::BuildError>(())
/// ```
pub struct Submitter<Req, Resp> {
    handle: Handle<Req, Resp>,
}

/// What a shutdown did, returned by [`Orchestrator::shutdown`] and its siblings.
///
/// Every accepted request is in exactly one place: answered (counted in `completed` or
/// `failed`), handed back in `unstarted`, or handed back to its `call` (counted in
/// `cancelled`).
#[non_exhaustive]
pub struct ShutdownReport<Req> {
    /// Requests accepted over the orchestrator's life: `completed + failed + unstarted.len() + cancelled`.
    pub submitted: u64,
    /// Jobs whose handler returned a value (`call`s included).
    pub completed: u64,
    /// Jobs answered with an error: the handler panicked or the deadline had passed (`call`s included).
    pub failed: u64,
    /// Responses nobody could receive: the responses receiver was dropped, or a
    /// `shutdown_timeout` gave up waiting for space. Also counted in `completed` or `failed`.
    pub undelivered: u64,
    /// Stream requests that never started, in no particular order.
    pub unstarted: Vec<(RequestId, Req)>,
    /// `call` requests that never started; each went back to its caller as `CallError::Cancelled`.
    pub cancelled: u64,
    /// Submits that got their request back, over the orchestrator's life.
    pub rejected: u64,
    /// How long the shutdown took.
    pub elapsed: Duration,
}

impl<Req> fmt::Debug for ShutdownReport<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownReport")
            .field("submitted", &self.submitted)
            .field("completed", &self.completed)
            .field("failed", &self.failed)
            .field("undelivered", &self.undelivered)
            .field("unstarted", &self.unstarted.len())
            .field("cancelled", &self.cancelled)
            .field("rejected", &self.rejected)
            .field("elapsed", &self.elapsed)
            .finish()
    }
}

impl<Req, Resp> fmt::Debug for Orchestrator<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Orchestrator")
            .field("workers", &self.workers)
            .field("running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

impl<Req, Resp> fmt::Debug for Submitter<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Submitter")
            .field(
                "shut_down",
                &(self.handle.shared.intake.strong_count() == 0),
            )
            .finish_non_exhaustive()
    }
}

impl<Req, Resp> Clone for Submitter<Req, Resp> {
    fn clone(&self) -> Self {
        Submitter {
            handle: self.handle.fork(),
        }
    }
}

impl<Req, Resp> Handle<Req, Resp> {
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

    fn fork(&self) -> Self {
        Handle {
            shared: Arc::clone(&self.shared),
            cursor: AtomicUsize::new(0),
        }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Handle<Req, Resp> {
    /// A fresh request id.
    pub(crate) fn next_id(&self) -> RequestId {
        RequestId(self.shared.next_id.fetch_add(1, Ordering::Relaxed))
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
            enqueued: self
                .shared
                .time_mask
                .filter(|m| id.0 & m == 0)
                .map(|_| Instant::now()),
            deadline,
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
    fn target(&self, intake: &Intake<Req, Resp>, job: &Job<Req, Resp>) -> (usize, bool) {
        let n = intake.queues.len();
        match &intake.key {
            _ if n == 1 => (0, false),
            Some(key) => (key.queue(&job.req, n), false),
            None => (self.cursor.fetch_add(1, Ordering::Relaxed) % n, true),
        }
    }

    /// Puts a job on a queue without blocking. On refusal the job comes back, with the
    /// index of the queue a blocking wait should start from.
    pub(crate) fn try_enqueue(
        &self,
        intake: &Intake<Req, Resp>,
        job: Job<Req, Resp>,
    ) -> Result<(), (Refusal, Job<Req, Resp>, usize)> {
        let queues = &intake.queues;
        let (first, ring) = self.target(intake, &job);
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

    /// Whether this thread, a worker of this pool, may block on it (counting itself as
    /// blocked), or must run its request inline because every other worker is blocked too.
    fn reentry(&self) -> Reentry<'_, Req, Resp> {
        let Some(inline) = worker::reentrant::<Req, Resp>(self.shared.pool) else {
            return Reentry::Wait(None);
        };
        let waits = &self.shared.reentrant;
        if waits.fetch_add(1, Ordering::SeqCst) + 1 < self.shared.workers {
            Reentry::Wait(Some(WaitGuard(waits)))
        } else {
            waits.fetch_sub(1, Ordering::SeqCst);
            Reentry::Inline(inline)
        }
    }

    /// Puts a job on a queue, waiting as `wait` says. On refusal the job comes back.
    ///
    /// `may_inline`: a worker of this pool about to wait forever for space runs the job
    /// inline instead if no other worker is free (a caller that already counted itself as
    /// blocked passes `false`).
    fn enqueue(
        &self,
        intake: Option<&Intake<Req, Resp>>,
        job: Job<Req, Resp>,
        wait: Wait,
        may_inline: bool,
    ) -> Result<RequestId, (Refusal, Job<Req, Resp>)> {
        let Some(intake) = intake else {
            return Err((Refusal::ShutDown, job));
        };
        if self.shared.closing.load(Ordering::Relaxed) {
            return Err((Refusal::ShutDown, job));
        }
        let id = job.id;
        let (mut job, mut first) = match self.try_enqueue(intake, job) {
            Ok(()) => return Ok(id),
            Err((Refusal::Full, job, first)) => (job, first),
            Err((why, job, _)) => return Err((why, job)),
        };
        let deadline = match wait {
            Wait::No => return Err((Refusal::Full, job)),
            Wait::Forever => None,
            Wait::Until(at) => Some(at),
        };
        // A worker of this pool waiting for space in its own queue: only while another
        // worker is free to make that space (a timed wait ends by itself).
        let _blocked = match (may_inline && deadline.is_none()).then(|| self.reentry()) {
            Some(Reentry::Inline(inline)) => {
                inline.run(job);
                return Ok(id);
            }
            Some(Reentry::Wait(guard)) => guard,
            None => None,
        };
        // A blocking `select` parks this thread at once, and then every worker `recv` must
        // take the queue's waker lock and unpark it: a futex round trip per job while the
        // queue is full. `Sender::send` avoids that by retrying with a backoff first; do
        // the same (a few microseconds at most) before falling back to the select.
        let backoff = Backoff::new();
        while !backoff.is_completed() {
            backoff.snooze();
            if self.shared.closing.load(Ordering::Relaxed) {
                return Err((Refusal::ShutDown, job));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            match self.try_enqueue(intake, job) {
                Ok(()) => return Ok(id),
                Err((Refusal::Full, back, at)) => (job, first) = (back, at),
                Err((why, back, _)) => return Err((why, back)),
            }
        }
        let closed = &self.shared.closed;
        let queues = &intake.queues;
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

    fn submit(
        &self,
        intake: Option<&Intake<Req, Resp>>,
        req: Req,
        deadline: Option<Instant>,
    ) -> Result<RequestId, SubmitError<Req>> {
        let job = self.job(req, deadline, Route::Stream);
        self.enqueue(intake, job, Wait::Forever, true)
            .map_err(|(_, job)| {
                self.rejected();
                SubmitError::ShutDown(job.req)
            })
    }

    fn try_submit(
        &self,
        intake: Option<&Intake<Req, Resp>>,
        req: Req,
    ) -> Result<RequestId, TrySubmitError<Req>> {
        let job = self.job(req, None, Route::Stream);
        self.enqueue(intake, job, Wait::No, false)
            .map_err(|(why, job)| {
                self.rejected();
                match why {
                    Refusal::Full | Refusal::Timeout => TrySubmitError::Full(job.req),
                    Refusal::ShutDown => TrySubmitError::ShutDown(job.req),
                }
            })
    }

    fn submit_timeout(
        &self,
        intake: Option<&Intake<Req, Resp>>,
        req: Req,
        timeout: Duration,
    ) -> Result<RequestId, SubmitTimeoutError<Req>> {
        let wait = match Instant::now().checked_add(timeout) {
            Some(at) => Wait::Until(at),
            None => Wait::Forever,
        };
        let job = self.job(req, None, Route::Stream);
        self.enqueue(intake, job, wait, false)
            .map_err(|(why, job)| {
                self.rejected();
                match why {
                    Refusal::Full | Refusal::Timeout => SubmitTimeoutError::Timeout(job.req),
                    Refusal::ShutDown => SubmitTimeoutError::ShutDown(job.req),
                }
            })
    }

    /// The first half of a `call`: enqueue with a pooled reply channel (or, re-entrant with
    /// no worker free, run it inline), return the reply's receiver and, for a worker of this
    /// pool, the guard that counts it as blocked until the answer arrives.
    fn call_begin(
        &self,
        intake: Option<&Intake<Req, Resp>>,
        req: Req,
    ) -> Result<Begun<'_, Req, Resp>, CallError<Req>> {
        let pool = &self.shared.replies;
        let guard = match self.reentry() {
            Reentry::Wait(guard) => guard,
            Reentry::Inline(inline) => {
                if intake.is_none() || self.shared.closing.load(Ordering::Relaxed) {
                    self.rejected();
                    return Err(CallError::ShutDown(req));
                }
                let (tx, rx) = pool.1.try_recv().unwrap_or_else(|_| bounded(1));
                inline.run(self.job(req, None, Route::Call(tx)));
                return Ok((rx, None));
            }
        };
        let (tx, rx) = pool.1.try_recv().unwrap_or_else(|_| bounded(1));
        let job = self.job(req, None, Route::Call(tx));
        let may_inline = guard.is_none();
        match self.enqueue(intake, job, Wait::Forever, may_inline) {
            Ok(_) => Ok((rx, guard)),
            Err((_, job)) => {
                self.rejected();
                if let Route::Call(tx) = job.route {
                    let _ = pool.0.try_send((tx, rx));
                }
                Err(CallError::ShutDown(job.req))
            }
        }
    }

    /// The second half of a `call`: wait for the one reply, recycle the channel.
    fn call_wait(&self, rx: Receiver<Reply<Req, Resp>>) -> Result<Resp, CallError<Req>> {
        let pool = &self.shared.replies;
        match rx.recv() {
            Ok(Reply { result, back }) => {
                // Exactly one reply per accepted call, so the channel is empty again.
                let _ = pool.0.try_send((back, rx));
                result
            }
            // The job was dropped unanswered: its worker thread died outside the handler.
            Err(_) => Err(CallError::Failed(JobError::WorkerDied)),
        }
    }
}

impl Orchestrator<(), ()> {
    /// A [`Builder`] with every option at its default.
    ///
    /// # Examples
    ///
    /// ```
    /// let (orch, responses) = channel_orchestrator::Orchestrator::builder()
    ///     .workers(2)
    ///     .build(|s: &'static str| s.len())?;
    /// orch.submit("four").unwrap();
    /// assert_eq!(responses.recv().unwrap().outcome, Ok(4));
    /// # Ok::<(), channel_orchestrator::BuildError>(())
    /// ```
    pub fn builder() -> Builder {
        Builder::new()
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Orchestrator<Req, Resp> {
    fn running(&self) -> &Running<Req, Resp> {
        // Only a shutdown (which takes `self`) or `Drop` empties it.
        self.running
            .as_ref()
            .expect("orchestrator used after shutdown")
    }

    /// The submitting handle and the open intake, for feeders built elsewhere in the crate.
    pub(crate) fn feed_parts(&self) -> (&Handle<Req, Resp>, &Intake<Req, Resp>) {
        (&self.handle, &self.running().intake)
    }

    fn intake(&self) -> Option<&Intake<Req, Resp>> {
        self.running.as_ref().map(|r| &*r.intake)
    }

    /// The number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Submits a request for the shared responses channel, blocking while the queue is full.
    ///
    /// # Errors
    ///
    /// `SubmitError::ShutDown(req)` if the orchestrator is shutting down; the request comes back.
    ///
    /// # Examples
    ///
    /// ```
    /// let (orch, responses) = channel_orchestrator::Orchestrator::builder().build(|x: i32| -x)?;
    /// let id = orch.submit(7).unwrap();
    /// let response = responses.recv().unwrap();
    /// assert_eq!((response.id, response.outcome), (id, Ok(-7)));
    /// # Ok::<(), channel_orchestrator::BuildError>(())
    /// ```
    pub fn submit(&self, req: Req) -> Result<RequestId, SubmitError<Req>> {
        self.handle.submit(self.intake(), req, None)
    }

    /// As [`submit`](Self::submit), for a request that is worth running only before
    /// `deadline`: a worker that takes it later answers `Err(JobError::DeadlineExceeded)`
    /// without running it (counted in `failed`). Handlers built with
    /// [`build_with_context`](Builder::build_with_context) see the deadline in their context.
    ///
    /// # Errors
    ///
    /// `SubmitError::ShutDown(req)` if the orchestrator is shutting down.
    pub fn submit_with_deadline(
        &self,
        req: Req,
        deadline: Instant,
    ) -> Result<RequestId, SubmitError<Req>> {
        self.handle.submit(self.intake(), req, Some(deadline))
    }

    /// Feeds `inputs` through the pool from this one thread and yields each [`Response`] as
    /// it completes (in completion order; see [`process_ordered`](Self::process_ordered)).
    ///
    /// The iterator sends and receives at once (a `select!` over the queue and its own
    /// response channel), so it never deadlocks whatever the capacities, and it keeps at most
    /// a window of `queue_capacity + workers` requests in flight however long the input is.
    /// Its responses travel on a private channel, never on the shared responses channel, so
    /// several `process` calls and ordinary submits can run at once. Dropping it early stops
    /// feeding and waits for the requests already in flight (at most the window), so none is
    /// stranded in the pool; their responses are discarded and counted as undelivered.
    ///
    /// # Examples
    ///
    /// ```
    /// let (orch, _responses) = channel_orchestrator::Orchestrator::builder()
    ///     .workers(2)
    ///     .queue_capacity(1)
    ///     .build(|x: u64| x * 2)?;
    /// let sum: u64 = orch.process(0..10_000).map(|r| r.outcome.unwrap()).sum();
    /// assert_eq!(sum, 2 * (0..10_000).sum::<u64>());
    /// # Ok::<(), channel_orchestrator::BuildError>(())
    /// ```
    pub fn process<I>(&self, inputs: I) -> Process<'_, Req, Resp, I::IntoIter>
    where
        I: IntoIterator<Item = Req>,
    {
        Process::new(self.feeder(inputs.into_iter()))
    }

    /// As [`process`](Self::process), yielding responses in input order.
    ///
    /// Out-of-order results wait in a reorder buffer of one window (`queue_capacity +
    /// workers` slots, allocated once). Feeding never runs more than a window ahead of the
    /// oldest unanswered input, so memory stays bounded: one slow request holds up the
    /// stream — feeding stops once the window is full — until it completes.
    ///
    /// # Examples
    ///
    /// ```
    /// let (orch, _responses) = channel_orchestrator::Orchestrator::builder()
    ///     .workers(4)
    ///     .build(|word: &'static str| word.len())?;
    /// let lens: Vec<usize> = orch
    ///     .process_ordered(["a", "bb", "ccc", "dddd"])
    ///     .map(|r| r.outcome.unwrap())
    ///     .collect();
    /// assert_eq!(lens, [1, 2, 3, 4]);
    /// # Ok::<(), channel_orchestrator::BuildError>(())
    /// ```
    pub fn process_ordered<I>(&self, inputs: I) -> ProcessOrdered<'_, Req, Resp, I::IntoIter>
    where
        I: IntoIterator<Item = Req>,
    {
        ProcessOrdered::new(self.feeder(inputs.into_iter()))
    }

    fn feeder<I: Iterator<Item = Req>>(&self, inputs: I) -> Feeder<'_, Req, Resp, Resp, I> {
        Feeder::direct(&self.handle, &self.running().intake, self.window(), inputs)
    }

    /// The in-flight window of `process`: every queue slot, plus one job per worker.
    pub(crate) fn window(&self) -> usize {
        self.queue_capacity + self.workers
    }

    /// Submits a request without blocking.
    ///
    /// # Errors
    ///
    /// `TrySubmitError::Full(req)` if every queue is full, `TrySubmitError::ShutDown(req)` if
    /// the orchestrator is shutting down; the request comes back either way.
    pub fn try_submit(&self, req: Req) -> Result<RequestId, TrySubmitError<Req>> {
        self.handle.try_submit(self.intake(), req)
    }

    /// Submits a request, blocking at most `timeout` while the queue is full. A zero timeout
    /// behaves like `try_submit` (reporting `Timeout` instead of `Full`).
    ///
    /// # Errors
    ///
    /// `SubmitTimeoutError::Timeout(req)` if no space freed up in time,
    /// `SubmitTimeoutError::ShutDown(req)` if the orchestrator is shutting down.
    pub fn submit_timeout(
        &self,
        req: Req,
        timeout: Duration,
    ) -> Result<RequestId, SubmitTimeoutError<Req>> {
        self.handle.submit_timeout(self.intake(), req, timeout)
    }

    /// Runs a request and waits for its answer, which comes back on a private route, never
    /// on the shared responses channel. Blocks while the queue is full, then until the
    /// handler finishes. Allocates nothing in steady state (reply channels are pooled).
    ///
    /// # Errors
    ///
    /// - `CallError::ShutDown(req)`: the orchestrator is shutting down; not accepted.
    /// - `CallError::Cancelled(req)`: accepted, but `shutdown_now` (or an expired
    ///   `shutdown_timeout`) took it off the queue before it started.
    /// - `CallError::Failed(JobError::Panicked(msg))`: the handler panicked.
    ///
    /// # Examples
    ///
    /// ```
    /// use channel_orchestrator::{CallError, JobError, Orchestrator};
    ///
    /// let (orch, _responses) = Orchestrator::builder().workers(1).build(|x: u32| {
    ///     assert!(x != 0, "zero is not allowed");
    ///     100 / x
    /// })?;
    /// assert_eq!(orch.call(5), Ok(20));
    /// match orch.call(0) {
    ///     Err(CallError::Failed(JobError::Panicked(msg))) => assert!(msg.contains("zero")),
    ///     other => panic!("unexpected {other:?}"),
    /// }
    /// assert_eq!(orch.call(50), Ok(2)); // the worker survived
    /// # Ok::<(), channel_orchestrator::BuildError>(())
    /// ```
    pub fn call(&self, req: Req) -> Result<Resp, CallError<Req>> {
        let (rx, _blocked) = self.handle.call_begin(self.intake(), req)?;
        self.handle.call_wait(rx)
    }

    /// An owned, cloneable handle with the same four submitting methods.
    pub fn submitter(&self) -> Submitter<Req, Resp> {
        Submitter {
            handle: self.handle.fork(),
        }
    }

    /// The current metrics, asked of the broadcaster thread (a round trip over a channel).
    /// Counts may lag by up to one `metrics_interval` and never overshoot.
    ///
    /// # Panics
    ///
    /// Only if the broadcaster thread died, which would be a bug in this crate.
    pub fn metrics(&self) -> MetricsSnapshot {
        let (reply, rx) = bounded(1);
        let _ = self
            .running()
            .broadcast_ctl
            .send(Control::Snapshot { reply });
        rx.recv().expect("the metrics thread died")
    }

    /// Subscribes to the metrics stream with a buffer of [`DEFAULT_SUBSCRIBER_CAPACITY`]
    /// events; see [`subscribe_with_capacity`](Self::subscribe_with_capacity).
    pub fn subscribe(&self) -> Receiver<MetricsEvent> {
        self.subscribe_with_capacity(DEFAULT_SUBSCRIBER_CAPACITY)
    }

    /// Subscribes to the metrics stream: a `Snapshot` every `metrics_interval`, a `Worker`
    /// event on each worker lifecycle change, and last a `Shutdown` event with exact totals,
    /// after which the channel disconnects.
    ///
    /// The subscriber buffers up to `capacity` events (at least 1, at most
    /// [`MAX_SUBSCRIBER_CAPACITY`]). If its buffer is full when
    /// an event is sent, it is evicted: it still receives what it had buffered, then sees the
    /// channel disconnected. (One slot beyond `capacity` is reserved for the final
    /// `Shutdown` event, which therefore reaches every subscriber that was not evicted.) A
    /// slow or stalled subscriber never slows the workers. Dropping the receiver
    /// unsubscribes; one dropped while its buffer was full counts in `evicted_subscribers`.
    pub fn subscribe_with_capacity(&self, capacity: usize) -> Receiver<MetricsEvent> {
        let capacity = capacity.clamp(1, MAX_SUBSCRIBER_CAPACITY);
        let (tx, rx) = bounded(capacity + 1);
        let _ = self
            .running()
            .broadcast_ctl
            .send(Control::Subscribe { tx, capacity });
        rx
    }

    /// Closes intake, runs every queued request, joins every thread.
    ///
    /// The one case where requests come back unrun: if no worker can run any more (every
    /// worker thread died and its replacements' `init` keeps panicking), the supervisor gives
    /// up after a few attempts and the queued requests come back in `unstarted` (queued
    /// `call`s as `Cancelled`) rather than the shutdown waiting forever.
    ///
    /// With a bounded responses channel whose receiver is alive, this waits while it is full
    /// (read it from another thread, or use [`shutdown_timeout`](Self::shutdown_timeout)).
    /// Submits blocked on a full queue return `ShutDown` promptly.
    ///
    /// # Panics
    ///
    /// Only if an internal thread panicked, which would be a bug in this crate.
    pub fn shutdown(mut self) -> ShutdownReport<Req> {
        self.stop(Shutdown::Drain {
            deadline: None,
            give_up: true,
        })
    }

    /// As [`shutdown`](Self::shutdown) until `timeout`, then as
    /// [`shutdown_now`](Self::shutdown_now); responses still waiting for space on a full
    /// response channel are then dropped and counted as `undelivered`.
    ///
    /// # Panics
    ///
    /// Only if an internal thread panicked, which would be a bug in this crate.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> ShutdownReport<Req> {
        let deadline = Instant::now().checked_add(timeout);
        self.stop(Shutdown::Drain {
            deadline,
            give_up: true,
        })
    }

    /// Closes intake; running jobs finish, queued ones are not started: stream requests come
    /// back in the report's `unstarted`, `call`s get `CallError::Cancelled(req)`.
    ///
    /// # Panics
    ///
    /// Only if an internal thread panicked, which would be a bug in this crate.
    ///
    /// # Examples
    ///
    /// ```
    /// use channel_orchestrator::Orchestrator;
    /// use std::time::Duration;
    ///
    /// let (orch, responses) = Orchestrator::builder()
    ///     .workers(1)
    ///     .build(|ms: u64| std::thread::sleep(Duration::from_millis(ms)))?;
    /// for _ in 0..10 {
    ///     orch.submit(20).unwrap();
    /// }
    /// let report = orch.shutdown_now();
    /// let answered = responses.iter().count() as u64;
    /// assert_eq!(answered + report.unstarted.len() as u64, 10);
    /// assert!(report.unstarted.len() >= 8);
    /// # Ok::<(), channel_orchestrator::BuildError>(())
    /// ```
    pub fn shutdown_now(mut self) -> ShutdownReport<Req> {
        self.stop(Shutdown::Now)
    }

    /// A pipeline stage's shutdown: drain, and past `deadline` start nothing more, but never
    /// give up on delivering what already ran.
    pub(crate) fn shutdown_stage(mut self, deadline: Option<Instant>) -> ShutdownReport<Req> {
        self.stop(Shutdown::Drain {
            deadline,
            give_up: false,
        })
    }

    /// This pool's process-wide id.
    pub(crate) fn pool_id(&self) -> u64 {
        self.handle.shared.pool
    }

    fn stop(&mut self, mode: Shutdown) -> ShutdownReport<Req> {
        // Waiting for every worker from inside one of them would wait forever. Refuse before
        // anything is taken: unwinding drops `self`, and `Drop` shuts the pool down without
        // waiting for itself.
        assert!(
            !worker::is_worker_of(self.handle.shared.pool),
            "shutdown called from a handler of this same orchestrator would wait for itself \
             forever; drop the orchestrator there instead, or shut it down from another thread"
        );
        let started = Instant::now();
        let Running {
            intake,
            closed,
            stop,
            supervisor_ctl,
            supervisor,
            broadcast_ctl,
            broadcaster,
        } = self.running.take().expect("shutdown runs once");
        // `shutdown_now`, or a `shutdown_timeout` whose deadline is already due: start
        // nothing more from this moment, not from the supervisor's first timer tick.
        let now = match mode {
            Shutdown::Now => true,
            Shutdown::Drain { deadline, .. } => deadline.is_some_and(|d| d <= Instant::now()),
        };
        if now {
            stop.store(true, Ordering::Relaxed);
        }
        self.handle.shared.closing.store(true, Ordering::Release);
        drop(closed); // wakes submits blocked on a full queue
        drop(intake); // the queues close once in-progress submits return
        let _ = supervisor_ctl.send(mode);
        let outcome = supervisor
            .join()
            .unwrap_or_else(|p| panic::resume_unwind(p));
        drop(broadcast_ctl);
        let summary = broadcaster
            .join()
            .unwrap_or_else(|p| panic::resume_unwind(p));
        ShutdownReport {
            submitted: summary.submitted,
            completed: summary.completed,
            failed: summary.failed,
            undelivered: summary.undelivered,
            unstarted: outcome.unstarted,
            cancelled: summary.cancelled,
            rejected: summary.rejected,
            elapsed: started.elapsed(),
        }
    }

    /// Wires the channels and starts every thread; on any failure tears down what started.
    pub(crate) fn start<S, I, H>(
        cfg: Config,
        init: I,
        handler: H,
        forward: Option<Forward<Resp>>,
    ) -> Result<(Self, Receiver<Response<Resp>>), BuildError>
    where
        S: 'static,
        I: Fn(WorkerId) -> S + Send + Sync + 'static,
        H: Fn(&mut S, &JobContext, Req) -> Resp + Send + Sync + 'static,
    {
        let n = cfg.workers;
        let (senders, receivers): (Vec<_>, Vec<_>) = match cfg.distribution {
            Spread::RoundRobin | Spread::ByKey(_) if n > 1 => (0..n)
                .map(|i| bounded(cfg.queue_capacity / n + usize::from(i < cfg.queue_capacity % n)))
                .unzip(),
            _ => std::iter::once(bounded(cfg.queue_capacity)).unzip(),
        };
        let (resp_tx, resp_rx) = match cfg.response_capacity {
            Some(cap) => bounded(cap),
            None => unbounded(),
        };
        let (status_tx, status_rx) = unbounded::<Status<Req>>();
        let (bcast_tx, bcast_rx) = bounded(64 + 2 * n);
        // Capacity 1, not 0: nothing is ever sent, and a zero-capacity receiver allocates
        // each time it is registered in a select (crossbeam's zero flavor boxes a packet).
        let (abort_tx, abort_rx) = bounded::<Never>(1);
        let stop = Arc::new(AtomicBool::new(false));
        let flush_every = cfg.metrics.then(|| cfg.metrics_interval / 2);
        let (init, handler) = (Arc::new(init), Arc::new(handler));
        let pool = NEXT_POOL.fetch_add(1, Ordering::Relaxed);

        let key = match &cfg.distribution {
            Spread::ByKey(key) if n > 1 => Some(key.clone()),
            _ => None,
        };
        let steal = key.is_none();
        let mut spawn: SpawnWorker = {
            let receivers = receivers.clone();
            let (name, stack, stop, bcast_tx) = (
                cfg.thread_name.clone(),
                cfg.stack_size,
                Arc::clone(&stop),
                bcast_tx.clone(),
            );
            Box::new(move |i| {
                // Own queue first. `RoundRobin` steals from the others in order;
                // `ByKey` never steals: that would break per-key order.
                let mut queues = receivers.clone();
                let len = queues.len();
                queues.rotate_left(i % len);
                if !steal {
                    queues.truncate(1);
                }
                let worker = Worker {
                    pool,
                    id: i,
                    inline: false,
                    queues,
                    responses: resp_tx.clone(),
                    status: status_tx.clone(),
                    broadcast: bcast_tx.clone(),
                    stop: Arc::clone(&stop),
                    abort: abort_rx.clone(),
                    flush_every,
                    forward,
                    waited: Default::default(),
                    init: Arc::clone(&init),
                    handler: Arc::clone(&handler),
                };
                let mut b = thread::Builder::new().name(format!("{name}-worker-{i}"));
                if let Some(bytes) = stack {
                    b = b.stack_size(bytes);
                }
                b.spawn(move || worker.run())
            })
        };

        // Workers first; each reports `Ready` (or `InitPanicked`) once its `init` ran.
        let mut handles = Vec::with_capacity(n);
        let mut failure = None;
        for i in 0..n {
            match spawn(i) {
                Ok(h) => handles.push(h),
                Err(source) => {
                    let thread = format!("{}-worker-{i}", cfg.thread_name);
                    failure = Some(BuildErrorKind::Spawn { thread, source });
                    break;
                }
            }
        }
        let mut ready = 0;
        while ready < handles.len() {
            match status_rx.recv() {
                Ok(Status::Ready { .. }) => ready += 1,
                Ok(Status::InitPanicked { worker, message }) => {
                    ready += 1;
                    failure.get_or_insert(BuildErrorKind::InitPanicked { worker, message });
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }

        let counters = Arc::new(Counters::default());
        let broadcaster = if failure.is_none() {
            let queue_rxs = receivers.clone();
            let (ctl_tx, ctl_rx) = unbounded();
            let b = Broadcaster {
                inbox: bcast_rx,
                control: ctl_rx,
                interval: cfg.metrics_interval,
                workers: n,
                queue_len: Box::new(move || queue_rxs.iter().map(Receiver::len).sum()),
                counters: Arc::clone(&counters),
                started: Instant::now(),
                timing_sample: cfg.timing_sample as u64,
            };
            match spawn_named(format!("{}-metrics", cfg.thread_name), move || b.run()) {
                Ok(h) => Some((h, ctl_tx)),
                Err(source) => {
                    let thread = format!("{}-metrics", cfg.thread_name);
                    failure = Some(BuildErrorKind::Spawn { thread, source });
                    None
                }
            }
        } else {
            None
        };

        let Some((broadcaster, broadcast_ctl)) = broadcaster else {
            // Closing the queues makes every started worker exit; nothing was accepted yet.
            drop(senders);
            drop(spawn);
            for h in handles {
                let _ = h.join();
            }
            return Err(BuildError::new(failure.expect("a failure was recorded")));
        };

        let (sup_tx, sup_rx) = bounded(1);
        let sup = Supervisor {
            status: status_rx,
            control: sup_rx,
            broadcast: bcast_tx.clone(),
            spawn,
            handles,
            queues: receivers,
            stop: Arc::clone(&stop),
            abort: Some(abort_tx),
            shutting_down: false,
            keep_delivering: false,
        };
        // If this spawn fails, the closure (and the supervisor's state in it) is dropped:
        // then queues close, the workers exit, and the broadcaster sees its inbox close.
        let (intake, sup_name) = (
            Arc::new(Intake {
                queues: senders,
                key,
            }),
            format!("{}-supervisor", cfg.thread_name),
        );
        let supervisor = match spawn_named(sup_name.clone(), move || sup.run()) {
            Ok(h) => h,
            Err(source) => {
                drop(intake);
                drop(bcast_tx);
                let _ = broadcaster.join();
                return Err(BuildError::new(BuildErrorKind::Spawn {
                    thread: sup_name,
                    source,
                }));
            }
        };
        drop(bcast_tx);

        // Capacity 1, not 0: see `abort` above.
        let (closed_tx, closed_rx) = bounded(1);
        let shared = Arc::new(Shared {
            intake: Arc::downgrade(&intake),
            closed: closed_rx,
            closing: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            counters,
            time_mask: cfg.metrics.then(|| cfg.timing_sample as u64 - 1),
            replies: bounded(REPLY_POOL),
            pool,
            workers: n,
            reentrant: AtomicUsize::new(0),
        });
        let orch = Orchestrator {
            handle: Handle {
                shared,
                cursor: AtomicUsize::new(0),
            },
            running: Some(Running {
                intake,
                closed: closed_tx,
                stop,
                supervisor_ctl: sup_tx,
                supervisor,
                broadcast_ctl,
                broadcaster,
            }),
            workers: n,
            queue_capacity: cfg.queue_capacity,
        };
        Ok((orch, resp_rx))
    }
}

fn spawn_named<T: Send + 'static>(
    name: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<JoinHandle<T>> {
    thread::Builder::new().name(name).spawn(f)
}

impl<Req, Resp> Drop for Orchestrator<Req, Resp> {
    /// The same as [`shutdown`](Orchestrator::shutdown), discarding the report.
    ///
    /// Dropped inside one of its own handlers, it cannot wait for its workers (one of them is
    /// the caller): it starts the same graceful shutdown and returns at once; the pool's
    /// threads finish the queued work, then exit by themselves.
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            let Running {
                intake,
                closed,
                supervisor_ctl,
                supervisor,
                broadcast_ctl,
                broadcaster,
                ..
            } = running;
            // The first steps of `stop`, without the generic bounds `stop` needs.
            self.handle.shared.closing.store(true, Ordering::Release);
            drop(closed);
            drop(intake);
            let _ = supervisor_ctl.send(Shutdown::Drain {
                deadline: None,
                give_up: true,
            });
            if worker::is_worker_of(self.handle.shared.pool) {
                // Detached: the supervisor and the metrics thread end once the workers do.
                return;
            }
            let _ = supervisor.join();
            drop(broadcast_ctl);
            let _ = broadcaster.join();
        }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Submitter<Req, Resp> {
    /// As [`Orchestrator::submit`].
    ///
    /// # Errors
    ///
    /// `SubmitError::ShutDown(req)` once any shutdown started (or the orchestrator was dropped).
    pub fn submit(&self, req: Req) -> Result<RequestId, SubmitError<Req>> {
        let intake = self.handle.shared.intake.upgrade();
        self.handle.submit(intake.as_deref(), req, None)
    }

    /// As [`Orchestrator::try_submit`].
    ///
    /// # Errors
    ///
    /// `TrySubmitError::Full(req)` if every queue is full, `TrySubmitError::ShutDown(req)`
    /// once any shutdown started.
    pub fn try_submit(&self, req: Req) -> Result<RequestId, TrySubmitError<Req>> {
        let intake = self.handle.shared.intake.upgrade();
        self.handle.try_submit(intake.as_deref(), req)
    }

    /// As [`Orchestrator::submit_timeout`].
    ///
    /// # Errors
    ///
    /// `SubmitTimeoutError::Timeout(req)` if no space freed up in time,
    /// `SubmitTimeoutError::ShutDown(req)` once any shutdown started.
    pub fn submit_timeout(
        &self,
        req: Req,
        timeout: Duration,
    ) -> Result<RequestId, SubmitTimeoutError<Req>> {
        let intake = self.handle.shared.intake.upgrade();
        self.handle.submit_timeout(intake.as_deref(), req, timeout)
    }

    /// As [`Orchestrator::call`].
    ///
    /// # Errors
    ///
    /// As [`Orchestrator::call`]: `ShutDown(req)`, `Cancelled(req)` or `Failed(JobError)`.
    pub fn call(&self, req: Req) -> Result<Resp, CallError<Req>> {
        // The intake is held only while enqueueing, not while waiting for the answer.
        let (rx, _blocked) = {
            let intake = self.handle.shared.intake.upgrade();
            self.handle.call_begin(intake.as_deref(), req)?
        };
        self.handle.call_wait(rx)
    }
}
