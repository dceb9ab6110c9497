//! The runtime: where a pool's threads start, and the one stop sequence.
//!
//! [`start`] wires the channels, starts the workers (each runs `init` and reports `Ready`),
//! then the metrics thread, then the supervisor — each module spawns its own thread. If any
//! step fails, a [`StartGuard`] tears down what already started and joins it. [`Running`]
//! holds what a running pool needs to stop; [`Running::stop`] is the one stop sequence that
//! every `shutdown*` and `Drop` run:
//!
//! 1. `shutdown_now` (or a deadline already due) sets the stop flag: nothing starts from now;
//! 2. the `closing` flag is set and `closed` disconnects: blocked submits return `ShutDown`;
//! 3. the supervisor waits until no submitter handle is in a submit (see `intake`), then
//!    disconnects the workers' `intake_closed` signal: each leaves once its queues are empty;
//! 4. the supervisor gets the command (it hands back what is queued at once for
//!    `shutdown_now` or at the deadline), joins every worker, drains what is left and sends
//!    the metrics thread `Finish`;
//! 5. the metrics thread sends the final summary and returns it.
//!
//! Dropped inside one of its own handlers, a pool runs steps 1–4's signals and detaches:
//! waiting would mean waiting for the calling thread itself.

use std::io;
use std::panic;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use crate::context::JobContext;
use crate::distribution::Spread;
use crate::error::{BuildError, Detail};
use crate::gate::LimitWaiting;
use crate::ids::WorkerId;
use crate::intake::{Handle, Intake, Shared, Statics};
use crate::message::{Live, MetricsRequest, Never, Shutdown, Status, ToMetrics};
use crate::metrics::{MetricsEvent, MetricsSnapshot};
use crate::metrics_thread::{self, Counters, MetricsConfig, MetricsThread};
use crate::priority::LANES;
use crate::reentry::Blocked;
use crate::report::{ShutdownReport, ShutdownSummary};
use crate::response::Response;
use crate::spawn::{Global, Join, Spawn};
use crate::supervisor::{self, Outcome, Supervisor, SupervisorLinks};
use crate::worker::{self, Forward, Links, Queues, Recipe, Retire, Slot as SlotIo, SpawnWorker};

/// A started pool: what the facade wraps.
pub(crate) struct Parts<'p, Req, Resp> {
    pub(crate) handle: Handle<Req, Resp>,
    pub(crate) running: Running<'p, Req, Resp>,
    pub(crate) responses: Receiver<Response<Resp>>,
    pub(crate) workers: usize,
    pub(crate) queue_capacity: usize,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Workers at start (the elastic minimum).
    pub(crate) workers: usize,
    /// The elastic maximum (`workers` for a fixed pool).
    pub(crate) max_workers: usize,
    /// How long a worker above the minimum may idle.
    pub(crate) keep_alive: Duration,
    pub(crate) queue_capacity: usize,
    pub(crate) response_capacity: Option<usize>,
    pub(crate) distribution: Spread,
    pub(crate) thread_name: String,
    pub(crate) metrics_interval: Duration,
    pub(crate) metrics: bool,
    /// `Builder::priority_burst`: more urgent requests a waiting one lets pass in a row.
    pub(crate) priority_burst: usize,
    /// `Some(n)`, a power of two: time one job in `n`. `None`: adapt the rate.
    pub(crate) timing_sample: Option<usize>,
    pub(crate) stack_size: Option<usize>,
}

/// Process-wide source of pool ids; one `fetch_add` per `build`.
static NEXT_POOL: AtomicU64 = AtomicU64::new(0);

/// The threads and channels of a running pool; taken by the first shutdown.
pub(crate) struct Running<'p, Req, Resp> {
    _resp: std::marker::PhantomData<fn() -> Resp>,
    /// Dropped when a shutdown starts: wakes submits blocked on a full queue.
    closed: Sender<Never>,
    stop: Arc<AtomicBool>,
    supervisor: Join<'p, Outcome<Req>>,
    supervisor_ctl: Sender<Shutdown>,
    metrics_thread: Join<'p, ShutdownSummary>,
    metrics_ctl: Sender<MetricsRequest>,
}

/// Tears down a half-started pool when dropped: closes the queues (every started worker
/// then exits), drops the spawner (its channel ends), joins the workers, then lets the
/// metrics thread see its inbox close and joins it. Defused by taking its parts.
struct StartGuard<'p, Req, Resp> {
    senders: Option<Intake<Req, Resp>>,
    spawner: Option<SpawnWorker<'p>>,
    workers: Vec<Join<'p, ()>>,
    retire: Vec<Retire>,
    metrics_tx: Option<Sender<ToMetrics>>,
    metrics: Option<metrics_thread::Started<'p>>,
}

impl<Req, Resp> Drop for StartGuard<'_, Req, Resp> {
    fn drop(&mut self) {
        drop(self.senders.take());
        drop(self.spawner.take());
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
        drop(self.metrics_tx.take());
        if let Some(m) = self.metrics.take() {
            drop(m.requests);
            let _ = m.thread.join();
        }
    }
}

/// What only a pool of `'static` types has (see [`start_in`]).
pub(crate) type Typed<Req, Resp, I, H> =
    (worker::Enter<Req, Resp, I, H>, Option<Statics<Req, Resp>>);

/// [`start_in`] for a pool of `'static` types on threads of the process, with everything
/// only such a pool has (re-entrant calls, cached reply channels, per-key queues).
pub(crate) fn start<Req, Resp, S, I, H>(
    cfg: Config,
    init: I,
    handler: H,
    forward: Option<Forward<Resp>>,
) -> Result<Parts<'static, Req, Resp>, BuildError>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    S: 'static,
    I: Fn(WorkerId) -> S + Send + Sync + 'static,
    H: Fn(&mut S, &JobContext, Req) -> Resp + Send + Sync + 'static,
{
    let typed = (worker::reentrant(), Some(Statics::new()));
    start_in(Global, cfg, init, handler, forward, typed)
}

/// Wires the channels and starts every thread with `sp` (the process, or a scope); on any
/// failure tears down what started. `typed`: what only a pool of `'static` types has (see
/// [`Statics`] and [`worker::Enter`]); `None`s for a scoped pool.
pub(crate) fn start_in<'p, Sp, Req, Resp, S, I, H>(
    sp: Sp,
    cfg: Config,
    init: I,
    handler: H,
    forward: Option<Forward<Resp>>,
    (enter, statics): Typed<Req, Resp, I, H>,
) -> Result<Parts<'p, Req, Resp>, BuildError>
where
    Sp: Spawn<'p>,
    Req: Send + 'p,
    Resp: Send + 'p,
    S: 'p,
    I: Fn(WorkerId) -> S + Send + Sync + 'p,
    H: Fn(&mut S, &JobContext, Req) -> Resp + Send + Sync + 'p,
{
    let n = cfg.workers;
    let per_worker_queues = matches!(cfg.distribution, Spread::RoundRobin | Spread::ByKey(_));
    let queues = if per_worker_queues && n > 1 { n } else { 1 };
    let capacity =
        |i: usize| cfg.queue_capacity / queues + usize::from(i < cfg.queue_capacity % queues);
    // Each priority lane has its own bounded queues (so batch work never fills the room of
    // urgent work), and its own unbounded ready queues for limited requests past their limit.
    let lanes: [(Vec<_>, Vec<_>); LANES] =
        std::array::from_fn(|_| (0..queues).map(|i| bounded(capacity(i))).unzip());
    let ready: [(Vec<_>, Vec<_>); LANES] =
        std::array::from_fn(|_| (0..queues).map(|_| unbounded()).unzip());
    let [(h, hr), (m, mr), (l, lr)] = lanes;
    let [(hp, hpr), (mp, mpr), (lp, lpr)] = ready;
    let key = match &cfg.distribution {
        Spread::ByKey(key) if n > 1 => Some(key.clone()),
        _ => None,
    };
    let receivers = Queues {
        lanes: [hr, mr, lr],
        ready: [hpr, mpr, lpr],
    };
    let senders = Intake {
        lanes: [h, m, l],
        ready: [hp, mp, lp],
        key: key.clone(),
    };
    let lanes_on = Arc::new(AtomicBool::new(false));
    // The first use of a priority or a limit is announced to the supervisor, which then
    // disconnects `lanes_wake`: idle workers wake up and watch every lane. Capacity 1: see
    // `abort`.
    let (lanes_used_tx, lanes_used_rx) = bounded(1);
    let (lanes_wake_tx, lanes_wake_rx) = bounded::<Never>(1);
    let limit_waiting: Arc<LimitWaiting> = Arc::default();
    // Each concurrency limit's gate, registered with the supervisor.
    let (gates_tx, gates_rx) = unbounded();
    let (resp_tx, resp_rx) = match cfg.response_capacity {
        Some(cap) => bounded(cap),
        None => unbounded(),
    };
    let (status_tx, status_rx) = unbounded::<Status<Req>>();
    let (metrics_tx, metrics_rx) = bounded(64 + 2 * n);
    // Capacity 1, not 0: nothing is ever sent, and a zero-capacity receiver allocates each
    // time it is registered in a select (crossbeam's zero flavor boxes a packet).
    let (abort_tx, abort_rx) = bounded::<Never>(1);
    // Disconnected by the supervisor once nothing more can arrive: workers then leave when
    // their queues are empty. Capacity 1: see `abort`.
    let (intake_closed_tx, intake_closed_rx) = bounded::<Never>(1);
    // Each submitter handle's liveness counter, registered with the supervisor.
    let (register_tx, register_rx) = unbounded();
    // `resize` requests, and the target size they set (read by `workers()`).
    let (resize_tx, resize_rx) = unbounded();
    let target = Arc::new(AtomicUsize::new(n));
    let stop = Arc::new(AtomicBool::new(false));
    let pool = NEXT_POOL.fetch_add(1, Ordering::Relaxed);
    let epoch = Instant::now();
    let blocked = Arc::new(Blocked::new(n));
    // Live totals: for the metrics (metrics on) and for the elastic decisions.
    let elastic = cfg.max_workers > n;
    let live_totals = cfg.metrics || elastic;
    let live: Vec<Option<Live>> = (0..n).map(|_| live_totals.then(Live::default)).collect();
    // Which jobs are timed: those whose id has no bit of the mask set. Adaptive (the
    // default) starts by timing every job.
    let first_mask = cfg.timing_sample.map_or(0, |n| n as u64 - 1);
    let sampling = cfg.metrics.then(|| Arc::new(AtomicU64::new(first_mask)));

    let recipe = Recipe {
        pool,
        name: cfg.thread_name.clone(),
        stack_size: cfg.stack_size,
        queues: receivers.clone(),
        lanes_on: Arc::clone(&lanes_on),
        burst: cfg.priority_burst,
        steal: key.is_none(),
        links: Links {
            responses: resp_tx,
            status: status_tx,
            metrics: metrics_tx.clone(),
            stop: Arc::clone(&stop),
            abort: abort_rx,
            intake_closed: intake_closed_rx,
            lanes_wake: lanes_wake_rx,
        },
        flush_every: cfg.metrics.then(|| cfg.metrics_interval / 2),
        forward,
        enter,
        epoch,
        init: Arc::new(init),
        handler: Arc::new(handler),
    };
    let mut guard = StartGuard {
        senders: Some(senders),
        spawner: Some(recipe.spawner(sp)),
        workers: Vec::with_capacity(n),
        retire: Vec::with_capacity(n),
        metrics_tx: Some(metrics_tx),
        metrics: None,
    };
    let spawn_error =
        |thread: String, source: io::Error| BuildError::new(Detail::Spawn { thread, source });

    // Workers first; each reports `Ready` (or `InitPanicked`) once its `init` ran.
    let mut failure = None;
    for (i, totals) in live.iter().enumerate() {
        let spawner = guard
            .spawner
            .as_mut()
            .expect("held until the supervisor starts");
        let (slot, retire) = SlotIo::new(totals.clone());
        match spawner(i, slot) {
            Ok(h) => {
                guard.workers.push(h);
                guard.retire.push(retire);
            }
            Err(source) => {
                failure = Some(spawn_error(
                    format!("{}-worker-{i}", cfg.thread_name),
                    source,
                ));
                break;
            }
        }
    }
    let mut ready = 0;
    while ready < guard.workers.len() {
        match status_rx.recv() {
            Ok(Status::Ready { .. }) => ready += 1,
            Ok(Status::InitPanicked { worker, message }) => {
                ready += 1;
                let kind = Detail::InitPanicked { worker, message };
                failure.get_or_insert(BuildError::new(kind));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    if let Some(e) = failure {
        return Err(e); // the guard tears down
    }

    let counters = Arc::new(Counters::default());
    let queue_rxs = receivers.clone();
    let waiting = Arc::clone(&limit_waiting);
    let metrics_cfg = MetricsConfig {
        interval: cfg.metrics_interval,
        workers: n,
        queue_len: Box::new(move || {
            let mut lens = queue_rxs.len();
            for (len, at_limits) in lens.iter_mut().zip(waiting.iter()) {
                *len += at_limits.load(Ordering::Relaxed).max(0) as u64;
            }
            lens
        }),
        counters: Arc::clone(&counters),
        sampling: sampling
            .clone()
            .map(|mask| (mask, cfg.timing_sample.is_none())),
        live: cfg
            .metrics
            .then(|| live.iter().flatten().cloned().collect()),
        epoch,
    };
    match MetricsThread::spawn(sp, &cfg.thread_name, metrics_rx, metrics_cfg) {
        Ok(started) => guard.metrics = Some(started),
        Err(source) => return Err(spawn_error(format!("{}-metrics", cfg.thread_name), source)),
    }

    let links = SupervisorLinks {
        status: status_rx,
        metrics: guard
            .metrics_tx
            .clone()
            .expect("held until the end of start"),
        queues: receivers,
        gates: gates_rx,
        lanes: (lanes_used_rx, lanes_wake_tx),
        stop: Arc::clone(&stop),
        abort: abort_tx,
        blocked: Arc::clone(&blocked),
        register: register_rx,
        intake_closed: intake_closed_tx,
        target: Arc::clone(&target),
        resize: resize_rx,
        elastic: (n, cfg.max_workers, cfg.keep_alive),
        live_totals,
        per_key: key.is_some(),
    };
    let spawner = guard
        .spawner
        .take()
        .expect("held until the supervisor starts");
    let sup = match Supervisor::spawn(sp, &cfg.thread_name, links, spawner) {
        Ok(sup) => sup,
        Err(source) => {
            let thread = format!("{}-supervisor", cfg.thread_name);
            return Err(spawn_error(thread, source));
        }
    };
    let supervisor::Started {
        thread: supervisor,
        control: supervisor_ctl,
        handles,
    } = sup;

    // Everything started: defuse the guard. The supervisor owns the workers from here.
    let intake = guard.senders.take().expect("held until now");
    let initial = std::mem::take(&mut guard.workers)
        .into_iter()
        .zip(std::mem::take(&mut guard.retire))
        .zip(live)
        .map(|((h, retire), live)| (h, retire, live))
        .collect();
    let _ = handles.send(initial);
    drop(guard.metrics_tx.take());
    let metrics_thread::Started {
        thread: metrics_thread,
        requests: metrics_ctl,
    } = guard.metrics.take().expect("started above");
    drop(guard);

    // Capacity 1, not 0: see `abort` above.
    let (closed_tx, closed_rx) = bounded(1);
    let shared = Shared {
        intake,
        register: register_tx,
        closed: closed_rx,
        closing: AtomicBool::new(false),
        next_id: AtomicU64::new(0),
        counters,
        sampling,
        replies: bounded(crate::intake::REPLY_POOL),
        statics,
        epoch,
        pool,
        blocked,
        target,
        resize: resize_tx,
        per_key: matches!(cfg.distribution, Spread::ByKey(_)) && n > 1,
        lanes_on,
        lanes_used: lanes_used_tx,
        gates: gates_tx,
        limit_waiting,
        stop: Arc::clone(&stop),
        queue_capacity: cfg.queue_capacity,
    };
    let running = Running {
        _resp: std::marker::PhantomData,
        closed: closed_tx,
        stop,
        supervisor,
        supervisor_ctl,
        metrics_thread,
        metrics_ctl,
    };
    Ok(Parts {
        handle: Handle::new(shared),
        running,
        responses: resp_rx,
        workers: n,
        queue_capacity: cfg.queue_capacity,
    })
}

/// The largest buffer a subscription gets; larger requests are clamped to it.
pub const MAX_SUBSCRIBER_CAPACITY: usize = 1 << 20;

/// The default buffer of a subscription made with `subscribe`.
pub const DEFAULT_SUBSCRIBER_CAPACITY: usize = 64;

impl<Req, Resp> Running<'_, Req, Resp> {
    /// The current metrics, asked of the metrics thread (a round trip over a channel).
    pub(crate) fn metrics(&self) -> MetricsSnapshot {
        let (reply, rx) = bounded(1);
        let _ = self.metrics_ctl.send(MetricsRequest::Snapshot { reply });
        rx.recv().expect("the metrics thread died")
    }

    /// A new subscription with a buffer of `capacity` events (clamped to `1..=MAX`).
    pub(crate) fn subscribe(&self, capacity: usize) -> Receiver<MetricsEvent> {
        let capacity = capacity.clamp(1, MAX_SUBSCRIBER_CAPACITY);
        // One slot more than asked: reserved for the final `Shutdown` event.
        let (tx, rx) = bounded(capacity + 1);
        let _ = self
            .metrics_ctl
            .send(MetricsRequest::Subscribe { tx, capacity });
        rx
    }

    /// The stop sequence (see the module docs): signals, then waits for every thread and
    /// returns the exact report. From inside one of this pool's own workers it signals and
    /// detaches instead (`None`): the threads finish on their own.
    ///
    /// `Drop` passes `propagate: false`: an internal thread's panic (a bug in this crate) is
    /// then not re-raised, since a drop may run while the caller is already unwinding.
    pub(crate) fn stop(
        self,
        handle: &Handle<Req, Resp>,
        mode: Shutdown,
        propagate: bool,
    ) -> Option<ShutdownReport<Req>> {
        let started = Instant::now();
        let Running {
            _resp,
            closed,
            stop,
            supervisor,
            supervisor_ctl,
            metrics_thread,
            metrics_ctl,
        } = self;
        // `shutdown_now`, or a `shutdown_timeout` whose deadline is already due: start
        // nothing more from this moment, not from the supervisor's first timer tick.
        let now = match mode {
            Shutdown::Now | Shutdown::Unread { now: true } => true,
            Shutdown::Unread { now: false } => false,
            Shutdown::Drain { deadline, .. } => deadline.is_some_and(|d| d <= Instant::now()),
        };
        if now {
            stop.store(true, Ordering::Relaxed);
        }
        handle.close();
        drop(closed); // wakes submits blocked on a full queue
        let _ = supervisor_ctl.send(mode);
        if crate::reentry::is_worker_of(handle.pool()) {
            // Detached: the supervisor and the metrics thread end once the workers do.
            return None;
        }
        let joined = supervisor.join();
        drop(metrics_ctl);
        let summary = metrics_thread.join();
        let (outcome, summary) = match (joined, summary) {
            (Ok(outcome), Ok(summary)) => (outcome, summary),
            (Err(p), _) | (_, Err(p)) if propagate => panic::resume_unwind(p),
            _ => return None,
        };
        Some(ShutdownReport {
            submitted: summary.submitted,
            completed: summary.completed,
            failed: summary.failed,
            undelivered: summary.undelivered,
            unstarted: outcome.unstarted,
            cancelled: summary.cancelled,
            rejected: summary.rejected,
            elapsed: started.elapsed(),
        })
    }
}

/// The deadline of a `shutdown_timeout(timeout)` that starts now (`None`: never).
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}
