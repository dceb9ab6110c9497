//! One worker's loop: take a request, run the handler under `catch_unwind`, route the answer.
//!
//! A worker owns everything it touches per job: its handler state, its [`StatsDelta`] and
//! histograms. Per job it does a channel receive, the handler call, a channel send and a few
//! local increments — no allocation of ours, no lock, no shared counter. The only shared
//! memory it reads per job is the `stop` flag (see [`Worker::stop`]).
//!
//! It leaves by the "domino" rule: it serves until every queue it watches is disconnected and
//! empty, which happens only after intake closed and the last in-progress submit finished.
//! So a graceful shutdown needs no message to the workers at all.

use std::cell::Cell;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::context::JobContext;
use crate::error::JobError;
use crate::gate::Permit;
use crate::ids::WorkerId;
use crate::message::{Job, Live, LiveCounts, Never, Stamp, StatsDelta, Status, ToMetrics, bump};
use crate::priority::{LANES, NORMAL};
use crate::reentry::{self, Inline};
use crate::response::Response;
use crate::spawn::{Join, Spawn};
use crate::unwind::{drop_quietly, message_of};

mod deliver;
mod slot;
mod take;

pub(crate) use slot::{Retire, Slot};

pub(crate) use take::Queues;
use take::Taken;

/// What a pipeline stage's handler returns: nothing when the next stage took the value at
/// once, otherwise the blocking hand-off, which its worker runs after it stopped counting
/// itself busy (so a stage waiting on a slow successor does not look busy).
pub(crate) type Handoff = Option<Box<dyn FnOnce() + Send>>;

/// Turns a stream response into a [`Handoff`] instead of sending it (pipeline stages).
pub(crate) type Forward<Resp> = fn(Resp) -> Handoff;

/// The channel ends and flags every worker of one pool shares (each worker clones them).
pub(crate) struct Links<Req, Resp> {
    /// Where stream responses go (the user's receiver).
    pub(crate) responses: Sender<Response<Resp>>,
    /// Lifecycle and hand-backs, to the supervisor.
    pub(crate) status: Sender<Status<Req>>,
    /// Counts and events, to the metrics thread.
    pub(crate) metrics: Sender<ToMetrics>,
    /// Set once by `shutdown_now` or an expired `shutdown_timeout`; never cleared. Read once
    /// per job with `Relaxed`: a job taken just before the store runs, one taken after it is
    /// handed back; either way it ends in exactly one place. A channel would cost a `select`
    /// per job; a flag that is written once costs a load from a cache line nobody writes.
    pub(crate) stop: Arc<AtomicBool>,
    /// Disconnected when a `shutdown_timeout` expires: stop waiting for response space.
    pub(crate) abort: Receiver<Never>,
    /// Disconnected by the supervisor once no request can arrive any more: leave when the
    /// queues are empty.
    pub(crate) intake_closed: Receiver<Never>,
    /// Disconnected by the supervisor when priorities or limits are first used: idle
    /// workers then watch every lane (see `take`).
    pub(crate) lanes_wake: Receiver<Never>,
}

impl<Req, Resp> Clone for Links<Req, Resp> {
    fn clone(&self) -> Self {
        Links {
            responses: self.responses.clone(),
            status: self.status.clone(),
            metrics: self.metrics.clone(),
            stop: Arc::clone(&self.stop),
            abort: self.abort.clone(),
            intake_closed: self.intake_closed.clone(),
            lanes_wake: self.lanes_wake.clone(),
        }
    }
}

/// Everything needed to start worker `i` of a pool, again and again (the supervisor keeps it
/// to replace a thread that died).
pub(crate) struct Recipe<Req, Resp, I, H> {
    /// The pool's process-wide id (for [`reentry`](crate::reentry)).
    pub(crate) pool: u64,
    /// The prefix of thread names.
    pub(crate) name: String,
    pub(crate) stack_size: Option<usize>,
    /// Every queue of the pool, in worker order, per lane.
    pub(crate) queues: Queues<Req, Resp>,
    /// Whether priorities or limits were used yet (see `intake::Shared::lanes_on`).
    pub(crate) lanes_on: Arc<AtomicBool>,
    /// `Builder::priority_burst`.
    pub(crate) burst: usize,
    /// Whether a worker takes from the other workers' queues when its own is empty
    /// (`RoundRobin`); never with per-key queues, which would break per-key order.
    pub(crate) steal: bool,
    pub(crate) links: Links<Req, Resp>,
    /// How often to report counts while busy; `None` with metrics off (report only on exit).
    pub(crate) flush_every: Option<Duration>,
    /// Pipeline stages: stream responses are handed to the next stage, not sent.
    pub(crate) forward: Option<Forward<Resp>>,
    /// See [`Enter`].
    pub(crate) enter: Enter<Req, Resp, I, H>,
    /// The moment the pool's job stamps count from.
    pub(crate) epoch: Instant,

    pub(crate) init: Arc<I>,
    pub(crate) handler: Arc<H>,
}

/// Starts worker `i` (a fresh thread that runs `init`).
pub(crate) type SpawnWorker<'p> =
    Box<dyn FnMut(usize, Slot) -> io::Result<Join<'p, ()>> + Send + 'p>;

/// How a worker thread makes itself known for re-entrant calls into its own pool (see
/// [`reentry`](crate::reentry)): only pools of `'static` types can (the record is a
/// thread-local); a scoped pool's handler cannot reach its own pool anyway.
pub(crate) type Enter<Req, Resp, I, H> = Option<fn(&Worker<Req, Resp, I, H>)>;

/// [`Enter`] for a pool of `'static` types.
pub(crate) fn reentrant<Req, Resp, S, I, H>() -> Enter<Req, Resp, I, H>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    I: Fn(WorkerId) -> S + Send + Sync + 'static,
    H: Fn(&mut S, &JobContext, Req) -> Resp + Send + Sync + 'static,
{
    Some(|worker| reentry::enter(worker.pool, worker.id, worker.inline_runner()))
}

impl<'p, Req, Resp, S, I, H> Recipe<Req, Resp, I, H>
where
    Req: Send + 'p,
    Resp: Send + 'p,
    S: 'p,
    I: Fn(WorkerId) -> S + Send + Sync + 'p,
    H: Fn(&mut S, &JobContext, Req) -> Resp + Send + Sync + 'p,
{
    /// The spawner of this pool's worker threads, named `"{name}-worker-{i}"`, started by
    /// `sp` (the process, or a scope).
    pub(crate) fn spawner<Sp: Spawn<'p>>(self, sp: Sp) -> SpawnWorker<'p> {
        Box::new(move |i, slot: Slot| {
            // Own queue first, then the others in order (only when stealing).
            let queues = self.queues.rotated(i, self.steal);
            let worker = Worker {
                pool: self.pool,
                id: i,
                inline: false,
                queues,
                lanes_on: Arc::clone(&self.lanes_on),
                burst: self.burst,
                passed: Cell::new([0; LANES]),
                ready_run: Cell::new([0; LANES]),
                links: self.links.clone(),
                flush_every: self.flush_every,
                forward: self.forward,
                epoch: self.epoch,
                live: slot.live,
                retire: slot.retire,
                retired: slot.retired,
                waited: Cell::new(false),
                enter: self.enter,
                init: Arc::clone(&self.init),
                handler: Arc::clone(&self.handler),
            };
            let mut b = thread::Builder::new().name(format!("{}-worker-{i}", self.name));
            if let Some(bytes) = self.stack_size {
                b = b.stack_size(bytes);
            }
            sp.spawn(b, move || worker.run())
        })
    }
}

/// Everything one worker thread needs; moved into the thread.
pub(crate) struct Worker<Req, Resp, I, H> {
    /// The id of the pool, unique in the process.
    pool: u64,
    id: usize,
    /// A stand-in running one job inline for a re-entrant caller: it reports no lifecycle
    /// events and rebuilds nothing after a panic (its state is thrown away anyway).
    inline: bool,
    /// The queues it takes work from, per lane. `Shared`: the one MPMC queue. `RoundRobin`:
    /// every worker queue, rotated so that index 0 is its own; the others are stolen from
    /// when its own is empty. `by_key`: its own only.
    queues: Queues<Req, Resp>,
    lanes_on: Arc<AtomicBool>,
    burst: usize,
    /// Per lane, the more urgent requests taken in a row while one of it waited (see
    /// `take`). Worker-local.
    passed: Cell<[usize; LANES]>,
    /// Per lane, the ready (limited) requests taken in a row while a plain one of the same
    /// lane waited. Worker-local.
    ready_run: Cell<[usize; LANES]>,
    links: Links<Req, Resp>,
    flush_every: Option<Duration>,
    forward: Option<Forward<Resp>>,
    epoch: Instant,
    /// This slot's live totals (see [`LiveCounts`](crate::message::LiveCounts)).
    live: Option<Live>,
    /// Set when the supervisor retires this worker (see [`Retire`]).
    retire: Arc<AtomicBool>,
    /// Disconnected when the supervisor retires this worker.
    retired: Receiver<Never>,
    /// Set when handing an answer on had to wait: the next job's start is then not the
    /// previous job's end. Worker-local (a `Cell`, never shared).
    waited: Cell<bool>,
    enter: Enter<Req, Resp, I, H>,
    init: Arc<I>,
    handler: Arc<H>,
}

impl<Req, Resp, S, I, H> Worker<Req, Resp, I, H>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    I: Fn(WorkerId) -> S + Send + Sync + 'static,
    H: Fn(&mut S, &JobContext, Req) -> Resp + Send + Sync + 'static,
{
    /// A runner of this pool's jobs on this thread, for a handler that calls back into its
    /// own pool when waiting would deadlock.
    fn inline_runner(&self) -> Inline<Req, Resp> {
        let stand_in = Worker {
            pool: self.pool,
            id: self.id,
            inline: true,
            queues: Queues::none(),
            lanes_on: Arc::clone(&self.lanes_on),
            burst: self.burst,
            passed: Cell::new([0; LANES]),
            ready_run: Cell::new([0; LANES]),
            links: self.links.clone(),
            flush_every: None,
            forward: self.forward,
            epoch: self.epoch,
            live: self.live.clone(),
            retire: Arc::clone(&self.retire),
            retired: self.retired.clone(),
            waited: Cell::new(false),
            enter: None,
            init: Arc::clone(&self.init),
            handler: Arc::clone(&self.handler),
        };
        Inline::new(Box::new(move |job| stand_in.run_inline(job)))
    }
}

/// Reports the worker's last counts and its exit, also when the thread unwinds.
///
/// Its `Drop` runs on every way out of the thread, so the final totals stay exact even when a
/// panic outside the handler (in a user `Drop`, or `init`) kills the thread.
struct ExitGuard<Req> {
    worker: usize,
    stats: StatsDelta,
    status: Sender<Status<Req>>,
    metrics: Sender<ToMetrics>,
}

impl<Req> Drop for ExitGuard<Req> {
    fn drop(&mut self) {
        // Drop the inline runner (and the channel ends it holds) before saying goodbye.
        drop_quietly(reentry::leave());
        let delta = std::mem::take(&mut self.stats);
        // The metrics thread runs until the supervisor sends `Finish`, which it does only after
        // this worker's `Exited` below; so this blocking send cannot be lost or hang.
        let _ = self.metrics.send(ToMetrics::Stats {
            worker: self.worker,
            delta: Box::new(delta),
        });
        let died = thread::panicking().then(|| String::from("worker thread panicked"));
        let _ = self.status.send(Status::Exited {
            worker: self.worker,
            died,
        });
    }
}

impl<Req, Resp, S, I, H> Worker<Req, Resp, I, H>
where
    Req: Send,
    Resp: Send,
    I: Fn(WorkerId) -> S + Send + Sync,
    H: Fn(&mut S, &JobContext, Req) -> Resp + Send + Sync,
{
    /// Counts one event in this slot's live totals (with metrics on).
    fn live(&self, field: impl FnOnce(&LiveCounts) -> &AtomicU64) {
        if let Some(live) = &self.live {
            bump(field(live));
        }
    }

    /// The thread's body.
    fn run(self) {
        let mut guard = ExitGuard {
            worker: self.id,
            stats: StatsDelta::default(),
            status: self.links.status.clone(),
            metrics: self.links.metrics.clone(),
        };
        let mut state = match self.init_state() {
            Ok(state) => state,
            Err(message) => {
                let _ = self.links.status.send(Status::InitPanicked {
                    worker: self.id,
                    message,
                });
                return;
            }
        };
        let _ = self.links.status.send(Status::Ready { worker: self.id });
        if let Some(enter) = self.enter {
            enter(&self);
        }

        // Built once and reused for every blocking wait (a `Select` allocates as it is built).
        let mut watching = self.watching();
        let mut next_flush = self.flush_every.map(|p| Instant::now() + p);
        let mut ctx = JobContext::new(WorkerId(self.id), Arc::clone(&self.links.stop));

        // With metrics on: when the previous job ended, if the next one was taken right away
        // (then that instant is its start too, and one clock read per job is saved).
        let mut last_end = None;
        loop {
            let taken = match self.take(&mut watching, &mut guard.stats, &mut next_flush) {
                Some((taken, waited)) => {
                    if waited {
                        last_end = None;
                    }
                    taken
                }
                None => break,
            };
            let Taken { job, lane, permit } = taken;
            guard.stats.taken += 1;
            self.live(|l| &l.taken);
            if self.links.stop.load(Ordering::Relaxed) {
                self.hand_back(job, &mut guard.stats);
                drop(permit);
                continue;
            }
            let times = (&mut next_flush, &mut last_end);
            let running = permit.as_ref().map(Permit::enter);
            self.run_job(job, lane, &mut state, &mut ctx, &mut guard.stats, times);
            drop(running);
            // Gives the permit back and moves the limit's next waiting request on.
            drop(permit);
            if self.retire.load(Ordering::Relaxed) {
                break; // retired: what is queued is the others' to run
            }
        }
    }

    /// Runs one job with a fresh state, then reports its counts (and nothing else: the
    /// worker's own live state belongs to the job that called).
    fn run_inline(&self, job: Job<Req, Resp>) {
        let mut stats = StatsDelta {
            taken: 1,
            counts_only: true,
            ..StatsDelta::default()
        };
        self.live(|l| &l.taken);
        match self.init_state() {
            Ok(mut state) => {
                let mut ctx = JobContext::new(WorkerId(self.id), Arc::clone(&self.links.stop));
                self.run_job(
                    job,
                    NORMAL,
                    &mut state,
                    &mut ctx,
                    &mut stats,
                    (&mut None, &mut None),
                );
                drop_quietly(state);
            }
            Err(message) => {
                let Job { id, req, route, .. } = job;
                drop_quietly(req);
                stats.failed += 1;
                self.live(|l| &l.failed);
                let error = JobError::Panicked(format!("init panicked: {message}"));
                let none = Duration::ZERO;
                self.answer(id, Err(error), route, none, none, &mut stats);
            }
        }
        // The metrics thread runs until every worker exited, and this one has not.
        let _ = self.links.metrics.send(ToMetrics::Stats {
            worker: self.id,
            delta: Box::new(stats),
        });
    }

    fn init_state(&self) -> Result<S, String> {
        let init = &self.init;
        let id = WorkerId(self.id);
        panic::catch_unwind(AssertUnwindSafe(|| init(id))).map_err(message_of)
    }

    /// Sends the counts since the last report without blocking. If the metrics thread's inbox is
    /// full they stay here and go with the next report: nothing is lost, the worker never waits.
    fn flush(&self, stats: &mut StatsDelta) {
        let busy = stats.busy;
        let delta = Box::new(std::mem::take(stats));
        match self.links.metrics.try_send(ToMetrics::Stats {
            worker: self.id,
            delta,
        }) {
            Ok(()) => stats.reported_busy = busy,
            Err(TrySendError::Full(ToMetrics::Stats { delta, .. })) => *stats = *delta,
            Err(_) => {}
        }
    }

    fn run_job(
        &self,
        job: Job<Req, Resp>,
        lane: usize,
        state: &mut S,
        ctx: &mut JobContext,
        stats: &mut StatsDelta,
        (next_flush, last_end): (&mut Option<Instant>, &mut Option<Instant>),
    ) {
        let Job {
            id,
            req,
            enqueued,
            deadline,
            route,
        } = job;
        let (enqueued, deadline) = (enqueued.get(self.epoch), deadline.get(self.epoch));
        // A clock read only for requests that carry a deadline.
        if deadline.is_some_and(|d| Instant::now() >= d) {
            stats.failed += 1;
            self.live(|l| &l.failed);
            drop_quietly(req);
            let none = Duration::ZERO;
            self.answer(
                id,
                Err(JobError::DeadlineExceeded),
                route,
                none,
                none,
                stats,
            );
            return;
        }
        ctx.set_job(id, deadline);
        // A timed job (metrics on, and sampled: it carries its submit time) costs one clock
        // read after the handler, and one before it unless the previous job's end is this
        // one's start.
        let start = enqueued.map(|_| last_end.take().unwrap_or_else(Instant::now));
        if start.is_none() {
            *last_end = None;
        }
        let mut queue_time = Duration::ZERO;
        if let (Some(start), Some(enqueued)) = (start, enqueued) {
            queue_time = start.saturating_duration_since(enqueued);
            let wait = nanos(queue_time);
            if lane != NORMAL
                || stats.wait_by_lane.is_some()
                || self.lanes_on.load(Ordering::Relaxed)
            {
                stats.wait_by_lane.get_or_insert_with(Box::default)[lane].record(wait);
            } else {
                stats.wait.record(wait);
            }
        }
        // Report at the start of a job when a report is due. (Counts, in flight and the
        // worker's state are live; a timed job's start is published live below, for the
        // busy fraction: no message per job, also after an idle spell.)
        if let (Some(start), Some(due), Some(period)) = (start, *next_flush, self.flush_every)
            && start >= due
        {
            stats.busy = true;
            stats.running_since = Some(start);
            self.flush(stats);
            *next_flush = Some(start + period);
        }

        if let (Some(live), Some(start)) = (&self.live, start) {
            live.running
                .store(Stamp::new(self.epoch, Some(start)).raw(), Ordering::Relaxed);
        }
        let handler = &self.handler;
        let ctx = &*ctx;
        let result = panic::catch_unwind(AssertUnwindSafe(|| handler(state, ctx, req)));
        if let (Some(live), Some(_)) = (&self.live, start) {
            live.running.store(Stamp::NONE.raw(), Ordering::Relaxed);
        }

        let mut handler_time = Duration::ZERO;
        if let Some(start) = start {
            let end = Instant::now();
            handler_time = end.saturating_duration_since(start);
            *last_end = Some(end);
            stats.handler.record(nanos(handler_time));
        }
        match result {
            Ok(resp) => {
                stats.completed += 1;
                self.live(|l| &l.completed);
                self.answer(id, Ok(resp), route, queue_time, handler_time, stats);
            }
            Err(payload) => {
                stats.failed += 1;
                self.live(|l| &l.failed);
                let message = message_of(payload);
                self.answer(
                    id,
                    Err(JobError::Panicked(message.clone())),
                    route,
                    queue_time,
                    handler_time,
                    stats,
                );
                if !self.inline {
                    let _ = self.links.status.send(Status::Panicked {
                        worker: self.id,
                        request: id,
                        message,
                    });
                    self.rebuild(state);
                }
            }
        }
        if self.waited.replace(false) {
            *last_end = None; // the hand-off took time: the next job reads its own start
        }
        // A long job may have outlasted the report period: report as soon as it ends (the
        // end time is known without another clock read).
        if let (Some(start), Some(due)) = (start, *next_flush)
            && start + handler_time >= due
        {
            stats.busy = true;
            self.flush(stats);
            *next_flush = self.flush_every.map(|p| start + handler_time + p);
            *last_end = None; // the report took time: the next job reads its own start
        }
    }

    /// Rebuilds the state after a handler panic. If `init` panics now, the thread has no state
    /// to serve with: it re-raises, the exit guard reports, and the supervisor replaces it.
    fn rebuild(&self, state: &mut S) {
        let init = &self.init;
        let id = WorkerId(self.id);
        match panic::catch_unwind(AssertUnwindSafe(|| init(id))) {
            Ok(fresh) => {
                drop_quietly(std::mem::replace(state, fresh));
                let _ = self
                    .links
                    .status
                    .send(Status::Restarted { worker: self.id });
            }
            Err(payload) => panic::resume_unwind(payload),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
