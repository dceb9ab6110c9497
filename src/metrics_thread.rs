//! The metrics thread thread: it alone owns the metric totals and the subscribers' senders.
//!
//! Workers send it their counts in batches ([`StatsDelta`]), the supervisor sends worker
//! lifecycle events, user threads ask it for snapshots and subscriptions over a control
//! channel. Every `metrics_interval` a `tick()` makes it broadcast a snapshot with
//! non-blocking sends; a subscriber whose buffer is full is evicted on the spot, so a stalled
//! subscriber never slows anyone down.
//!
//! Each subscriber's channel has one slot more than the capacity it asked for, and eviction
//! happens when the asked-for part is full: the last slot is reserved for the final
//! `Shutdown` event, which therefore always arrives, without ever blocking.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::MAX_TIMING_SAMPLE;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, never, select, tick, unbounded};

use crate::ids::WorkerId;
use crate::message::{Live, MetricsRequest, Stamp, StatsDelta, ToMetrics};
use crate::metrics::{
    Histogram, MetricsEvent, MetricsSnapshot, WorkerEvent, WorkerEventKind, WorkerSnapshot,
    WorkerState,
};
use crate::priority::{ByPriority, LANES, NORMAL};
use crate::report::ShutdownSummary;
use crate::spawn::{Join, Spawn};

/// The counters that submitting handles share with the metrics thread.
///
/// Both are bumped only on cold paths, never on the accepted fast path: `rejected` on a
/// failed submit, `undelivered` when a `process` iterator dropped early discards the
/// responses it waited for. A message per event would cost more than the event itself.
/// Written with `Relaxed` by any thread, read with `Relaxed` here: they are statistics, and
/// no other memory depends on them. The final summary is read after every thread that could
/// write them returned (the orchestrator is being consumed), so it is exact.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) rejected: AtomicU64,
    pub(crate) undelivered: AtomicU64,
}

/// Reads the number of queued requests per priority lane (the sum of the queues' `len()`,
/// and of the requests waiting at limits).
pub(crate) type QueueLen<'p> = Box<dyn Fn() -> [u64; LANES] + Send + 'p>;

struct Subscriber {
    tx: Sender<MetricsEvent>,
    /// The capacity the subscriber asked for; its channel has one more slot.
    capacity: usize,
}

#[derive(Default)]
struct WorkerTotals {
    totals: StatsDelta,
    state: Option<WorkerState>,
    restarts: u64,
    /// Handler nanoseconds at the last tick, for the busy fraction.
    busy_base: u64,
    /// Timed jobs at the last tick.
    timed_base: u64,
    /// Finished jobs at the last tick.
    jobs_base: u64,
    busy: f64,
    /// The start of the job the worker last reported as running.
    running_since: Option<Instant>,
    /// Nanoseconds of that running job already credited to past intervals.
    credited: u64,
    /// Credit of jobs that have since finished: their full handler time arrives with their
    /// completion, so what was credited before must not count twice.
    to_subtract: u64,
    /// What the worker's last report said: busy or idle. Lifecycle events that bring a
    /// worker (back) to serving keep it, since the worker's own report may arrive first.
    last_busy: bool,
}

/// How the metrics thread is set up.
pub(crate) struct MetricsConfig<'p> {
    /// The snapshot period. Snapshots go out with metrics off too (their counts are zero
    /// until the end): sending is also how dropped subscriptions are noticed and freed.
    pub(crate) interval: Duration,
    pub(crate) workers: usize,
    pub(crate) queue_len: QueueLen<'p>,
    pub(crate) counters: Arc<Counters>,
    /// The mask of timed request ids (see `intake::Shared::sampling`), and whether this
    /// thread adapts it; `None` with metrics off.
    pub(crate) sampling: Option<(Arc<AtomicU64>, bool)>,
    /// Each worker slot's live totals; `None` with metrics off.
    pub(crate) live: Option<Vec<Live>>,
    /// The moment the pool's stamps count from.
    pub(crate) epoch: Instant,
}

/// A started metrics thread: its handle, and the sender of user requests (`metrics()`,
/// `subscribe()`); dropping that sender tells it no more will come.
pub(crate) struct Started<'p> {
    pub(crate) thread: Join<'p, ShutdownSummary>,
    pub(crate) requests: Sender<MetricsRequest>,
}

pub(crate) struct MetricsThread<'p> {
    inbox: Receiver<ToMetrics>,
    control: Receiver<MetricsRequest>,
    interval: Duration,
    workers: usize,
    queue_len: QueueLen<'p>,
    counters: Arc<Counters>,
    started: Instant,
    /// The adaptive sampling mask this thread sets, with the cost of one clock read.
    sampler: Option<Sampler>,
    live: Option<Vec<Live>>,
    epoch: Instant,
}

/// Adapts the timing rate so that clock reads cost about [`CLOCK_BUDGET`] of the workers'
/// time. It needs no clock read of the untimed jobs: what they cost is known from how many
/// finished. Three clock reads per timed job, `jobs` finished by `workers` in `secs`: timing
/// one in `n` costs `3 · clock · jobs / n` of `workers · secs`.
struct Sampler {
    mask: Arc<AtomicU64>,
    /// Nanoseconds per clock read, measured when the thread starts.
    clock_ns: f64,
}

/// How often the timing rate adapts (or every metrics interval, if that is shorter).
const SAMPLER_PERIOD: Duration = Duration::from_millis(10);

/// The share of the workers' time that clock reads may cost.
const CLOCK_BUDGET: f64 = 0.01;

impl Sampler {
    fn adapt(&self, jobs: u64, workers: usize, secs: f64) {
        if secs <= 0.0 {
            return;
        }
        let available_ns = CLOCK_BUDGET * workers.max(1) as f64 * secs * 1e9;
        let n = (3.0 * self.clock_ns * jobs as f64 / available_ns.max(1.0)).ceil();
        let n = (n.clamp(1.0, MAX_TIMING_SAMPLE as f64) as u64).next_power_of_two();
        self.mask.store(n - 1, Ordering::Relaxed);
    }
}

/// The cost of one `Instant::now()` here, in nanoseconds.
fn clock_cost() -> f64 {
    const READS: u32 = 256;
    let start = Instant::now();
    let mut last = start;
    for _ in 0..READS {
        last = std::hint::black_box(Instant::now());
    }
    last.duration_since(start).as_nanos() as f64 / f64::from(READS)
}

struct State {
    /// Whether running jobs' starts come from the live totals (metrics on) rather than
    /// from the reports.
    live_running: bool,
    subscribers: Vec<Subscriber>,
    seq: u64,
    workers: Vec<WorkerTotals>,
    handler: Histogram,
    /// Queue wait per priority lane.
    wait: [Histogram; LANES],
    evicted: u64,
    /// The largest `submitted` reported so far: it is derived, and must never go backwards.
    submitted: u64,
    last_tick: Instant,
    finished_at_tick: u64,
    throughput: f64,
}

impl<'p> MetricsThread<'p> {
    /// The thread's body: runs until the supervisor sends `Finish`; returns the exact totals.
    /// Starts the thread `"{name}-metrics"`, reading `inbox` until the supervisor's `Finish`.
    pub(crate) fn spawn<Sp: Spawn<'p>>(
        sp: Sp,
        name: &str,
        inbox: Receiver<ToMetrics>,
        cfg: MetricsConfig<'p>,
    ) -> io::Result<Started<'p>> {
        let (requests, control) = unbounded();
        let me = MetricsThread {
            inbox,
            control,
            interval: cfg.interval,
            workers: cfg.workers,
            queue_len: cfg.queue_len,
            counters: cfg.counters,
            started: Instant::now(),
            sampler: cfg.sampling.and_then(|(mask, adaptive)| {
                adaptive.then(|| Sampler {
                    mask,
                    clock_ns: clock_cost(),
                })
            }),
            live: cfg.live,
            epoch: cfg.epoch,
        };
        let b = thread::Builder::new().name(format!("{name}-metrics"));
        let thread = sp.spawn(b, move || me.run())?;
        Ok(Started { thread, requests })
    }

    fn run(mut self) -> ShutdownSummary {
        let mut st = State {
            live_running: self.live.is_some(),
            subscribers: Vec::new(),
            seq: 0,
            workers: (0..self.workers)
                .map(|_| WorkerTotals {
                    // `build` returned only after every worker's `init` ran.
                    state: Some(WorkerState::Idle),
                    ..Default::default()
                })
                .collect(),
            handler: Histogram::default(),
            wait: Default::default(),
            evicted: 0,
            submitted: 0,
            last_tick: self.started,
            finished_at_tick: 0,
            throughput: 0.0,
        };
        let ticker = tick(self.interval);
        // The timing rate adapts on its own clock: every 10 ms for the first 100 ms (so a new
        // pool times every job only for its first few milliseconds), then every interval. It
        // needs the live counts (metrics on).
        let mut sampling = match (&self.sampler, &self.live) {
            (Some(_), Some(_)) => tick(self.interval.min(SAMPLER_PERIOD)),
            _ => never(),
        };
        let (mut sampled, mut early_ticks) = ((Instant::now(), 0u64), 0u32);
        let mut control = self.control.clone();
        loop {
            select! {
                recv(self.inbox) -> msg => match msg {
                    Ok(ToMetrics::Stats { worker, delta }) => st.add(worker, &delta),
                    Ok(ToMetrics::Worker { worker, kind }) => st.worker_event(worker, kind),
                    Ok(ToMetrics::Slot { worker, live }) => self.add_slot(&mut st, worker, live),
                    Ok(ToMetrics::Finish { unstarted, cancelled }) => {
                        return self.finish(st, unstarted, cancelled);
                    }
                    // The supervisor always sends `Finish` before it returns.
                    Err(_) => return self.finish(st, 0, 0),
                },
                recv(control) -> msg => match msg {
                    Ok(MetricsRequest::Subscribe { tx, capacity }) => {
                        st.subscribers.push(Subscriber { tx, capacity });
                    }
                    Ok(MetricsRequest::Snapshot { reply }) => {
                        let snap = self.snapshot(&mut st);
                        let _ = reply.send(snap);
                    }
                    Err(_) => control = never(),
                },
                recv(sampling) -> _ => {
                    if let (Some(sampler), Some(live)) = (&self.sampler, &self.live) {
                        let now = Instant::now();
                        let finished: u64 = live
                            .iter()
                            .map(|l| {
                                l.completed.load(Ordering::Relaxed)
                                    + l.failed.load(Ordering::Relaxed)
                            })
                            .sum();
                        let secs = now.saturating_duration_since(sampled.0).as_secs_f64();
                        sampler.adapt(finished.saturating_sub(sampled.1), live.len(), secs);
                        sampled = (now, finished);
                        early_ticks += 1;
                        if early_ticks == 10 {
                            sampling = tick(self.interval);
                        }
                    }
                }
                recv(ticker) -> _ => {
                    if let Some(live) = &self.live {
                        st.sync_running(live, self.epoch);
                    }
                    st.interval_rates(Instant::now());
                    st.seq += 1;
                    let snap = self.snapshot(&mut st);
                    st.broadcast(MetricsEvent::Snapshot(snap));
                }
            }
        }
    }

    /// The current snapshot, carrying the current sequence number: a snapshot that is
    /// broadcast takes a new number first; one that answers `metrics()` takes none, so
    /// subscribers see no gap.
    fn snapshot(&self, st: &mut State) -> MetricsSnapshot {
        // Per worker slot: (taken, completed, failed, in flight). From the live totals when
        // metrics are on — exact; `taken` is read first, so a job finished and another taken
        // between the reads can only make in flight read low, never high — otherwise from the
        // reports so far.
        let counts: Vec<(u64, u64, u64, u64)> = st
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| match &self.live {
                Some(live) => {
                    let l = &live[i];
                    let taken = l.taken.load(Ordering::Relaxed);
                    let completed = l.completed.load(Ordering::Relaxed);
                    let failed = l.failed.load(Ordering::Relaxed);
                    let returned = l.returned.load(Ordering::Relaxed);
                    let done = completed + failed + returned;
                    (taken, completed, failed, taken.saturating_sub(done))
                }
                None => {
                    let t = &w.totals;
                    let done = t.completed + t.failed + t.cancelled + t.handed_back;
                    (t.taken, t.completed, t.failed, t.taken.saturating_sub(done))
                }
            })
            .collect();
        // Read after the taken counts: a job that moves from a queue to a worker in between
        // is counted in neither, never in both, so `submitted` never overshoots.
        let by_lane = (self.queue_len)();
        let queued = by_lane.iter().sum();
        let mut sum = StatsDelta::default();
        let mut in_flight = 0;
        for (&(taken, completed, failed, running), w) in counts.iter().zip(&st.workers) {
            sum.taken += taken;
            sum.completed += completed;
            sum.failed += failed;
            sum.undelivered += w.totals.undelivered;
            sum.cancelled += w.totals.cancelled;
            in_flight += running;
        }
        st.submitted = st.submitted.max(sum.taken + queued);
        let state = |w: &WorkerTotals, running: u64| match w.state {
            // A live worker is busy exactly while it holds a job.
            Some(WorkerState::Idle | WorkerState::Busy) if self.live.is_some() => {
                if running > 0 {
                    WorkerState::Busy
                } else {
                    WorkerState::Idle
                }
            }
            other => other.unwrap_or(WorkerState::Starting),
        };
        MetricsSnapshot {
            seq: st.seq,
            uptime: self.started.elapsed(),
            submitted: st.submitted,
            rejected: self.counters.rejected.load(Ordering::Relaxed),
            completed: sum.completed,
            failed: sum.failed,
            // Responses discarded by dropped `process` iterators are counted at once, their
            // completions only with the workers' next reports: keep the snapshot consistent.
            undelivered: (sum.undelivered + self.counters.undelivered.load(Ordering::Relaxed))
                .min(sum.completed + sum.failed),
            cancelled: sum.cancelled,
            queued,
            in_flight,
            throughput: st.throughput,
            latency: st.handler.summary(),
            queue_wait: {
                let mut all = Histogram::default();
                st.wait.iter().for_each(|h| all.merge(h));
                all.summary()
            },
            queued_by_priority: ByPriority::from_lanes(by_lane),
            queue_wait_by_priority: Box::new(ByPriority::from_lanes(
                st.wait.each_ref().map(Histogram::summary),
            )),
            evicted_subscribers: st.evicted,
            subscribers: st.subscribers.len(),
            workers: st
                .workers
                .iter()
                .enumerate()
                // One entry per worker of the pool: retired slots are not (until reused).
                .filter(|(_, w)| w.state != Some(WorkerState::Retired))
                .map(|(i, w)| WorkerSnapshot {
                    id: WorkerId(i),
                    state: state(w, counts[i].3),
                    completed: counts[i].1,
                    failed: counts[i].2,
                    busy: w.busy,
                    restarts: w.restarts,
                })
                .collect(),
        }
    }

    /// A slot beyond the ones at start (a growing pool): its totals start at zero.
    fn add_slot(&mut self, st: &mut State, worker: usize, live: Option<Live>) {
        debug_assert_eq!(worker, st.workers.len(), "slots are added in order");
        st.workers.push(WorkerTotals {
            state: Some(WorkerState::Starting),
            ..Default::default()
        });
        if let (Some(all), Some(live)) = (&mut self.live, live) {
            all.push(live);
        }
    }

    fn finish(mut self, mut st: State, unstarted: u64, sup_cancelled: u64) -> ShutdownSummary {
        // Every `subscribe` returned before the shutdown began (it borrows the orchestrator),
        // so its request is already here: register it, so it too gets the summary.
        while let Ok(msg) = self.control.try_recv() {
            match msg {
                MetricsRequest::Subscribe { tx, capacity } => {
                    st.subscribers.push(Subscriber { tx, capacity });
                }
                MetricsRequest::Snapshot { reply } => {
                    let snap = self.snapshot(&mut st);
                    let _ = reply.send(snap);
                }
            }
        }
        // Every worker's last report was sent before the supervisor's `Finish`.
        while let Ok(msg) = self.inbox.try_recv() {
            match msg {
                ToMetrics::Stats { worker, delta } => st.add(worker, &delta),
                ToMetrics::Worker { worker, kind } => st.worker_event(worker, kind),
                ToMetrics::Slot { worker, live } => self.add_slot(&mut st, worker, live),
                ToMetrics::Finish { .. } => {}
            }
        }
        let discarded = self.counters.undelivered.load(Ordering::Relaxed);
        let (mut completed, mut failed, mut undelivered, mut cancelled) =
            (0, 0, discarded, sup_cancelled);
        for w in &st.workers {
            completed += w.totals.completed;
            failed += w.totals.failed;
            undelivered += w.totals.undelivered;
            cancelled += w.totals.cancelled;
        }
        st.seq += 1;
        let summary = ShutdownSummary {
            seq: st.seq,
            submitted: completed + failed + unstarted + cancelled,
            completed,
            failed,
            undelivered,
            unstarted,
            cancelled,
            rejected: self.counters.rejected.load(Ordering::Relaxed),
        };
        for s in st.subscribers.drain(..) {
            // The reserved slot guarantees room; a dropped receiver just makes this fail.
            let _ = s.tx.try_send(MetricsEvent::Shutdown(summary));
        }
        summary
    }
}

impl State {
    fn add(&mut self, worker: usize, delta: &StatsDelta) {
        let w = &mut self.workers[worker];
        w.totals.merge(delta);
        if !delta.counts_only {
            if !self.live_running && delta.running_since != w.running_since {
                w.to_subtract += std::mem::take(&mut w.credited);
                w.running_since = delta.running_since;
            }
            w.last_busy = delta.busy;
            if matches!(w.state, Some(WorkerState::Idle | WorkerState::Busy)) {
                w.state = Some(if delta.busy {
                    WorkerState::Busy
                } else {
                    WorkerState::Idle
                });
            }
        }
        self.handler.merge(&delta.handler);
        self.wait[NORMAL].merge(&delta.wait);
        if let Some(theirs) = &delta.wait_by_lane {
            for (mine, theirs) in self.wait.iter_mut().zip(theirs.iter()) {
                mine.merge(theirs);
            }
        }
    }

    fn worker_event(&mut self, worker: usize, kind: WorkerEventKind) {
        let w = &mut self.workers[worker];
        w.state = Some(match &kind {
            WorkerEventKind::Started | WorkerEventKind::Restarted if w.last_busy => {
                WorkerState::Busy
            }
            WorkerEventKind::Started | WorkerEventKind::Restarted => WorkerState::Idle,
            WorkerEventKind::Panicked { .. } | WorkerEventKind::Died(_) => WorkerState::Restarting,
            WorkerEventKind::Stopped => WorkerState::Stopped,
            WorkerEventKind::Added => WorkerState::Idle,
            WorkerEventKind::Retired => WorkerState::Retired,
        });
        if matches!(kind, WorkerEventKind::Restarted) {
            w.restarts += 1;
        }
        self.seq += 1;
        let event = WorkerEvent {
            seq: self.seq,
            worker: WorkerId(worker),
            kind,
        };
        self.broadcast(MetricsEvent::Worker(event));
    }

    /// Throughput and busy fractions over the interval that ends now.
    /// Takes each worker's running job from its live totals: a new start means the job
    /// credited so far has finished (its full time comes with its report).
    fn sync_running(&mut self, live: &[Live], epoch: Instant) {
        for (w, l) in self.workers.iter_mut().zip(live) {
            let running = Stamp::from_raw(l.running.load(Ordering::Relaxed)).get(epoch);
            if running != w.running_since {
                w.to_subtract += std::mem::take(&mut w.credited);
                w.running_since = running;
            }
        }
    }

    fn interval_rates(&mut self, now: Instant) {
        let secs = now.saturating_duration_since(self.last_tick).as_secs_f64();
        let finished: u64 = self
            .workers
            .iter()
            .map(|w| w.totals.completed + w.totals.failed)
            .sum();
        if secs > 0.0 {
            self.throughput = (finished - self.finished_at_tick) as f64 / secs;
            for w in &mut self.workers {
                let busy_nanos = w.totals.handler.sum_nanos();
                let timed_count = w.totals.handler.count();
                let jobs = w.totals.completed + w.totals.failed;
                let (d_nanos, d_timed) = (
                    busy_nanos.saturating_sub(w.busy_base),
                    timed_count.saturating_sub(w.timed_base),
                );
                // Scale the timed jobs' handler time up to every job this interval finished.
                let scale = if d_timed > 0 {
                    jobs.saturating_sub(w.jobs_base) as f64 / d_timed as f64
                } else {
                    0.0
                };
                let finished = (d_nanos as f64 * scale) as u64;
                let finished = finished.saturating_sub(w.to_subtract);
                let running = w.running_since.map_or(0, |since| {
                    let from = since.max(self.last_tick);
                    nanos(now.saturating_duration_since(from))
                });
                w.credited = w.credited.saturating_add(running);
                w.to_subtract = 0;
                w.busy = (finished.saturating_add(running) as f64 / 1e9 / secs).clamp(0.0, 1.0);
                w.busy_base = busy_nanos;
                w.timed_base = timed_count;
                w.jobs_base = jobs;
            }
        }
        self.finished_at_tick = finished;
        self.last_tick = now;
    }

    /// Sends `event` to every subscriber without blocking; evicts the full, forgets the gone.
    fn broadcast(&mut self, event: MetricsEvent) {
        let mut evicted = 0;
        self.subscribers.retain(|s| {
            // A full buffer means a stalled subscriber: it goes, keeping exactly what it had
            // buffered (the spare slot stays for `Shutdown` only). A receiver dropped while
            // full looks the same without a send, so it is counted as evicted too.
            if s.tx.len() >= s.capacity {
                evicted += 1;
                return false;
            }
            match s.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    evicted += 1;
                    false
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        });
        self.evicted += evicted;
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
