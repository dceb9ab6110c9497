//! The supervisor thread: one `select!` over the workers' status channel, the shutdown
//! command, a shutdown deadline and pending respawns. It alone owns the worker threads'
//! handles and lifecycle, replaces a thread that died, collects the requests handed back by a
//! `shutdown_now`, and tells the metrics thread when everything is over.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, after, bounded, never, select, tick};

use crate::gate::Gate;
use crate::ids::RequestId;
use crate::intake::Liveness;
use crate::message::Live;
use crate::message::{Job, Never, Shutdown, Status, ToMetrics};
use crate::metrics::WorkerEventKind;
use crate::reentry::Blocked;
use crate::spawn::{Join, Spawn};
use crate::unwind::{drop_quietly, panic_message};
use crate::worker::{Queues, Retire, Slot as SlotIo, SpawnWorker};

mod elastic;
mod gates;

/// How soon a resize that had to wait tries again.
const RESIZE_RETRY: Duration = Duration::from_millis(2);

/// How often an elastic pool checks whether to grow or shrink.
const ELASTIC_CHECK: Duration = Duration::from_millis(5);

/// How often a shutdown checks whether the submits in progress are done.
const QUIESCE_POLL: Duration = Duration::from_micros(200);

/// Backoff before replacing a thread that died: doubles per consecutive death of the same
/// worker, so an `init` that always panics cannot spin the machine.
const RESPAWN_MIN: Duration = Duration::from_millis(10);
const RESPAWN_MAX: Duration = Duration::from_secs(1);
/// During a draining shutdown, a worker whose replacements keep dying is given up after this
/// many deaths in a row; what it would have run comes back in the report's `unstarted`.
const SHUTDOWN_RESPAWNS: u32 = 3;

/// What the supervisor hands back when it returns.
pub(crate) struct Outcome<Req> {
    pub(crate) unstarted: Vec<(RequestId, Req)>,
}

struct Slot<'p> {
    handle: Option<Join<'p, ()>>,
    /// The slot's live totals (a replacement continues them).
    live: Option<Live>,
    /// Retires the current thread (see `worker::Retire`).
    retire: Option<Retire>,
    /// Asked to retire; it leaves after its current job.
    retiring: bool,
    /// Retired (or never started): not part of the pool until reused by a growth.
    retired: bool,
    /// Whether the current thread was started by a growth (its `Ready` is `Added`).
    added: bool,
    /// Since when it has been idle, as the elastic checks saw it; and its taken count then.
    idle_since: Option<Instant>,
    last_taken: u64,
    /// Whether its thread is running (between spawn and `Exited`).
    running: bool,
    /// Whether its thread is serving (between `Ready` and `Exited`): counted as alive.
    serving: bool,
    /// Whether the current thread is a replacement (its `Ready` is a restart).
    replacement: bool,
    /// Consecutive deaths, for the backoff.
    deaths: u32,
    /// When to spawn a replacement, if one is due.
    respawn_at: Option<Instant>,
}

/// The supervisor's ends of the pool's channels.
pub(crate) struct SupervisorLinks<Req, Resp> {
    /// Worker lifecycle and hand-backs.
    pub(crate) status: Receiver<Status<Req>>,
    /// Worker events and the final `Finish`, to the metrics thread.
    pub(crate) metrics: Sender<ToMetrics>,
    /// Clones of the queues' receivers: to hand back what is queued at a `shutdown_now` or
    /// an expired `shutdown_timeout`, and to drain what no worker took.
    pub(crate) queues: Queues<Req, Resp>,
    /// Each concurrency limit's gate, registered as it is made.
    pub(crate) gates: Receiver<Arc<Gate<Req, Resp>>>,
    /// The first use of a priority or a limit; and the workers' `lanes_wake`, dropped then.
    pub(crate) lanes: (Receiver<()>, Sender<Never>),
    /// The workers' stop flag (see `worker::Links::stop`).
    pub(crate) stop: Arc<AtomicBool>,
    /// Dropped when a `shutdown_timeout` expires: workers stop waiting for response space.
    pub(crate) abort: Sender<Never>,
    /// Which workers wait on the pool itself; the supervisor keeps its `alive` count.
    pub(crate) blocked: Arc<Blocked>,
    /// Submitter handles' liveness counters, registered as the handles are made.
    pub(crate) register: Receiver<Weak<Liveness>>,
    /// Disconnected once no request can arrive any more (see `intake`).
    pub(crate) intake_closed: Sender<Never>,
    /// The target number of workers: written by `resize` (before it sends the new size)
    /// and by the elastic decisions here; read by `workers()`.
    pub(crate) target: Arc<AtomicUsize>,
    /// `resize` requests.
    pub(crate) resize: Receiver<usize>,
    /// The elastic range and keep-alive (`min == max`: a fixed pool).
    pub(crate) elastic: (usize, usize, Duration),
    /// Whether workers get live totals (metrics on, or elastic: the decisions read them).
    pub(crate) live_totals: bool,
    /// Whether the pool has per-key queues (no worker runs another's queue).
    pub(crate) per_key: bool,
}

/// One initial worker, as the supervisor takes it over.
pub(crate) type Initial<'p> = (Join<'p, ()>, Retire, Option<Live>);

/// A started supervisor: its thread, the channel for the one shutdown command, and the
/// channel on which it waits for the worker threads' handles.
pub(crate) struct Started<'p, Req> {
    pub(crate) thread: Join<'p, Outcome<Req>>,
    pub(crate) control: Sender<Shutdown>,
    pub(crate) handles: Sender<Vec<Initial<'p>>>,
}

pub(crate) struct Supervisor<'p, Req, Resp> {
    status: Receiver<Status<Req>>,
    control: Receiver<Shutdown>,
    metrics: Sender<ToMetrics>,
    spawn: SpawnWorker<'p>,
    queues: Queues<Req, Resp>,
    /// New gates, and the gates known so far (pruned as the list doubles, once nothing but
    /// this list holds one).
    new_gates: Receiver<Arc<Gate<Req, Resp>>>,
    gates: Vec<Arc<Gate<Req, Resp>>>,
    lanes_used: Receiver<()>,
    lanes_wake: Option<Sender<Never>>,
    stop: Arc<AtomicBool>,
    abort: Option<Sender<Never>>,
    blocked: Arc<Blocked>,
    register: Receiver<Weak<Liveness>>,
    /// The submitter handles still alive (dead ones are pruned as registrations come in).
    handles: Vec<Weak<Liveness>>,
    /// Dropped (the workers' signal) once the shutdown started and no submit is in progress.
    intake_closed: Option<Sender<Never>>,
    target: Arc<AtomicUsize>,
    resize: Receiver<usize>,
    elastic: (usize, usize, Duration),
    live_totals: bool,
    per_key: bool,
    /// Whether the shutdown command arrived.
    shutting_down: bool,
    /// A pipeline stage's deadline: stop starting jobs, but keep delivering responses.
    keep_delivering: bool,
}

impl<'p, Req: Send + 'p, Resp: Send + 'p> Supervisor<'p, Req, Resp> {
    /// Starts the thread `"{name}-supervisor"`. It takes the worker threads' handles from
    /// [`Started::handles`] before anything else, so that if this spawn fails the caller
    /// still holds them (and joins them).
    pub(crate) fn spawn<Sp: Spawn<'p>>(
        sp: Sp,
        name: &str,
        links: SupervisorLinks<Req, Resp>,
        spawn: SpawnWorker<'p>,
    ) -> io::Result<Started<'p, Req>> {
        let (control_tx, control) = bounded(1);
        let (handles_tx, handles_rx) = bounded(1);
        let sup = Supervisor {
            status: links.status,
            control,
            metrics: links.metrics,
            spawn,
            queues: links.queues,
            new_gates: links.gates,
            gates: Vec::new(),
            lanes_used: links.lanes.0,
            lanes_wake: Some(links.lanes.1),
            stop: links.stop,
            abort: Some(links.abort),
            blocked: links.blocked,
            register: links.register,
            handles: Vec::new(),
            intake_closed: Some(links.intake_closed),
            target: links.target,
            resize: links.resize,
            elastic: links.elastic,
            live_totals: links.live_totals,
            per_key: links.per_key,
            shutting_down: false,
            keep_delivering: false,
        };
        let b = thread::Builder::new().name(format!("{name}-supervisor"));
        let thread = sp.spawn(b, move || {
            // Sent right after a successful spawn; never missing.
            let handles = handles_rx.recv().unwrap_or_default();
            sup.run(handles)
        })?;
        Ok(Started {
            thread,
            control: control_tx,
            handles: handles_tx,
        })
    }

    /// The thread's body: runs until a shutdown command arrived and every worker exited.
    fn run(mut self, handles: Vec<Initial<'p>>) -> Outcome<Req> {
        let mut slots: Vec<Slot<'p>> = handles
            .into_iter()
            .map(|(h, retire, live)| Slot {
                handle: Some(h),
                live,
                retire: Some(retire),
                retiring: false,
                retired: false,
                added: false,
                idle_since: None,
                last_taken: 0,
                running: true,
                serving: true, // `build` returned after every worker's `Ready`
                replacement: false,
                deaths: 0,
                respawn_at: None,
            })
            .collect();
        for i in 0..slots.len() {
            self.event(i, WorkerEventKind::Started);
        }
        let mut unstarted = Vec::new();
        let mut cancelled = 0;
        let mut control = self.control.clone();
        let mut deadline = never();
        let mut respawn = never();
        let mut register = self.register.clone();
        let mut lanes_used = self.lanes_used.clone();
        let resize = self.resize.clone();
        let (min, max, _) = self.elastic;
        let elastic = if max > min {
            tick(ELASTIC_CHECK)
        } else {
            never()
        };
        // A resize that could not finish yet (a retirement waiting for a re-entrant call).
        let mut retry = never();
        // While a shutdown waits for submits in progress to finish: a short poll.
        let mut quiesce = never();

        loop {
            if self.shutting_down && slots.iter().all(|s| !s.running && s.respawn_at.is_none()) {
                break;
            }
            select! {
                recv(self.status) -> msg => {
                    // The status channel cannot disconnect: our spawner holds a sender.
                    let Ok(msg) = msg else { break };
                    self.on_status(msg, &mut slots, &mut unstarted);
                    respawn = Self::respawn_timer(&slots);
                    self.rescue(&slots, &mut unstarted, &mut cancelled);
                    self.release_dead_keys(&slots, &mut unstarted, &mut cancelled);
                }
                recv(control) -> cmd => {
                    // The orchestrator sends exactly one command; a disconnect without one
                    // (it was leaked or its thread unwound mid-shutdown) means "drain".
                    let cmd = cmd.unwrap_or(Shutdown::Drain {
                        deadline: None,
                        give_up: true,
                    });
                    control = never();
                    self.shutting_down = true;
                    match cmd {
                        // Already set by the orchestrator; responses of running jobs still
                        // wait for space, as the contract says. What is queued comes back
                        // now, whatever the workers are doing.
                        Shutdown::Now | Shutdown::Unread { now: true } => {
                            if matches!(cmd, Shutdown::Unread { .. }) {
                                self.abort = None;
                            }
                            self.stop.store(true, Ordering::Relaxed);
                            self.hand_back_queued(&mut unstarted, &mut cancelled);
                        }
                        Shutdown::Unread { now: false } => self.abort = None,
                        Shutdown::Drain { deadline: Some(at), give_up } => {
                            if !give_up {
                                self.keep_delivering = true;
                            }
                            deadline = after(at.saturating_duration_since(Instant::now()));
                        }
                        Shutdown::Drain { deadline: None, .. } => {}
                    }
                    self.rescue(&slots, &mut unstarted, &mut cancelled);
                    self.release_dead_keys(&slots, &mut unstarted, &mut cancelled);
                    if !self.close_intake_if_quiet() {
                        quiesce = tick(QUIESCE_POLL);
                    }
                }
                recv(resize) -> _ => {
                    // The target was stored by `resize`; several requests fold into one.
                    while self.resize.try_recv().is_ok() {}
                    retry = self.resize_retry(&mut slots);
                }
                recv(retry) -> _ => retry = self.resize_retry(&mut slots),
                recv(lanes_used) -> _ => {
                    // Sent once, when the flag was set: wake every idle worker.
                    self.lanes_wake = None;
                    lanes_used = never();
                }
                recv(elastic) -> _ => self.elastic_check(&mut slots),
                recv(register) -> handle => match handle {
                    Ok(handle) => self.track(handle),
                    // Every handle is gone: nothing more to register.
                    Err(_) => register = never(),
                },
                recv(quiesce) -> _ => {
                    self.release_dead_keys(&slots, &mut unstarted, &mut cancelled);
                    if self.close_intake_if_quiet() {
                        quiesce = never();
                    }
                }
                recv(deadline) -> _ => {
                    deadline = never();
                    self.expire();
                    self.hand_back_queued(&mut unstarted, &mut cancelled);
                }
                recv(respawn) -> _ => {
                    self.respawn_due(&mut slots);
                    respawn = Self::respawn_timer(&slots);
                    self.rescue(&slots, &mut unstarted, &mut cancelled);
                    self.release_dead_keys(&slots, &mut unstarted, &mut cancelled);
                }
            }
        }

        // Every worker exited, so everything they sent is already in `status`.
        while let Ok(msg) = self.status.try_recv() {
            self.on_status(msg, &mut slots, &mut unstarted);
        }
        // Intake closed before the workers could leave: nothing more arrives.
        self.hand_back_queued(&mut unstarted, &mut cancelled);
        // Dropped here, not wherever the last clone happens to go: the handler and `init`
        // may capture values whose `Drop` panics.
        drop_quietly(std::mem::replace(&mut self.spawn, Box::new(no_spawn)));
        let _ = self.metrics.send(ToMetrics::Finish {
            unstarted: unstarted.len() as u64,
            cancelled,
        });
        Outcome { unstarted }
    }

    /// Applies the target size; a timer to try again if it could not finish.
    fn resize_retry(&mut self, slots: &mut Vec<Slot<'p>>) -> Receiver<Instant> {
        if self.apply_target(slots) {
            never()
        } else {
            after(RESIZE_RETRY)
        }
    }

    /// Keeps a new submitter handle's liveness counter, dropping those of handles that are
    /// gone (amortized: whenever the list doubled).
    fn track(&mut self, handle: Weak<Liveness>) {
        self.handles.push(handle);
        if self.handles.len().is_power_of_two() {
            self.handles.retain(|h| h.strong_count() > 0);
        }
    }

    /// Once a shutdown started: if no submitter handle is in a submit, disconnect the
    /// workers' `intake_closed` signal (nothing can arrive any more; see `intake`). Returns
    /// whether it is done.
    fn close_intake_if_quiet(&mut self) -> bool {
        if self.intake_closed.is_none() {
            return true;
        }
        // Handles registered before the shutdown's `closing` store are all here now.
        while let Ok(handle) = self.register.try_recv() {
            self.track(handle);
        }
        let quiet = self
            .handles
            .iter()
            .filter_map(Weak::upgrade)
            .all(|busy| busy.load(Ordering::SeqCst) == 0);
        // Then every limit must be drained too: what waits at a gate is accepted, and is
        // moved on only as the gate's running requests finish — on the workers, which must
        // stay until then. Once nothing waits or moves, what the gates let through is in the
        // queues like any request. (Gates are registered before their first submit.)
        self.collect_gates();
        let quiet = quiet && self.gates.iter().all(|g| self.gate_drained(g));
        if quiet {
            self.intake_closed = None;
        }
        quiet
    }

    /// During a shutdown, once no replacement will come: if every worker still alive is
    /// blocked waiting on the pool itself (a re-entrant `call` whose request is queued), no
    /// one can ever run what is queued — hand it back, so the waiting calls get `Cancelled`
    /// and their workers can finish. (The inline rule keeps this from arising while workers
    /// are alive; it arises when one dies after another began to wait.)
    fn rescue(
        &mut self,
        slots: &[Slot<'p>],
        unstarted: &mut Vec<(RequestId, Req)>,
        cancelled: &mut u64,
    ) {
        let waiting_for_replacement = slots.iter().any(|s| s.respawn_at.is_some());
        if self.shutting_down
            && !waiting_for_replacement
            && self.blocked.count() > 0
            && self.blocked.count() >= self.blocked.alive()
        {
            self.hand_back_queued(unstarted, cancelled);
        }
    }

    /// Takes every queued job out of the queues at once (`shutdown_now`, or an expired
    /// `shutdown_timeout`): stream requests to `unstarted`, calls answered `Cancelled`.
    /// Workers that take a job after the stop flag hand it back the same way, so each job
    /// ends in exactly one place whoever receives it.
    fn hand_back_queued(&mut self, unstarted: &mut Vec<(RequestId, Req)>, cancelled: &mut u64) {
        self.collect_gates();
        for gate in &self.gates {
            for job in gate.drain() {
                hand_back(job, unstarted, cancelled);
            }
        }
        self.queues
            .drain(|job| hand_back(job, unstarted, cancelled));
    }

    /// The `shutdown_timeout` deadline: start nothing more, and stop waiting for response space.
    fn expire(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if !self.keep_delivering {
            self.abort = None;
        }
    }

    fn event(&self, worker: usize, kind: WorkerEventKind) {
        let _ = self.metrics.send(ToMetrics::Worker { worker, kind });
    }

    fn on_status(
        &mut self,
        msg: Status<Req>,
        slots: &mut [Slot<'p>],
        unstarted: &mut Vec<(RequestId, Req)>,
    ) {
        match msg {
            Status::Unstarted { id, req } => unstarted.push((id, req)),
            Status::Ready { worker } => {
                let slot = &mut slots[worker];
                slot.deaths = 0;
                slot.serving = true;
                self.blocked.set_alive(self.blocked.alive() + 1);
                if std::mem::take(&mut slot.added) {
                    self.event(worker, WorkerEventKind::Added);
                } else if slot.replacement {
                    self.event(worker, WorkerEventKind::Restarted);
                }
            }
            Status::Panicked {
                worker,
                request,
                message,
            } => {
                self.event(worker, WorkerEventKind::Panicked { request, message });
            }
            Status::Restarted { worker } => self.event(worker, WorkerEventKind::Restarted),
            Status::InitPanicked { worker, message } => {
                // The thread exits right after this; `Exited` schedules the replacement.
                self.event(
                    worker,
                    WorkerEventKind::Died(format!("init panicked: {message}")),
                );
                slots[worker].deaths += 1;
            }
            Status::Exited { worker, died } => {
                let slot = &mut slots[worker];
                slot.running = false;
                if std::mem::take(&mut slot.serving) {
                    self.blocked
                        .set_alive(self.blocked.alive().saturating_sub(1));
                }
                let joined = slot.handle.take().map(Join::join);
                let died = match (died, joined) {
                    (Some(_), Some(Err(payload))) => Some(panic_message(&*payload)),
                    (died, _) => died,
                };
                if std::mem::take(&mut slot.retiring) {
                    // Retired, whether it left on its own or died on the way: not replaced.
                    if let Some(message) = died {
                        self.event(worker, WorkerEventKind::Died(message));
                    }
                    slot.retired = true;
                    slot.respawn_at = None;
                    self.event(worker, WorkerEventKind::Retired);
                    return;
                }
                if let Some(message) = died {
                    slot.deaths += 1;
                    self.event(worker, WorkerEventKind::Died(message));
                }
                if slot.retired {
                    return; // a growth's thread that failed its `init`: not replaced
                }
                if self.should_respawn(slot.deaths) {
                    let backoff = RESPAWN_MIN
                        .saturating_mul(1 << (slot.deaths - 1).min(7))
                        .min(RESPAWN_MAX);
                    slot.respawn_at = Some(Instant::now() + backoff);
                } else {
                    slot.respawn_at = None;
                    self.event(worker, WorkerEventKind::Stopped);
                }
            }
        }
    }

    /// Whether to replace a worker that died `deaths` times in a row: never once `stop` is
    /// set; while draining, only if work is left and the replacements do not keep dying.
    fn should_respawn(&self, deaths: u32) -> bool {
        if deaths == 0 || self.stop.load(Ordering::Relaxed) {
            return false;
        }
        let waiting = !self.queues.is_empty() || self.gates.iter().any(|g| g.waiting() > 0);
        !self.shutting_down || (deaths <= SHUTDOWN_RESPAWNS && waiting)
    }

    fn respawn_timer(slots: &[Slot<'p>]) -> Receiver<Instant> {
        match slots.iter().filter_map(|s| s.respawn_at).min() {
            Some(at) => after(at.saturating_duration_since(Instant::now())),
            None => never(),
        }
    }

    fn respawn_due(&mut self, slots: &mut [Slot<'p>]) {
        let now = Instant::now();
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.respawn_at.is_some_and(|at| at <= now) {
                if !self.should_respawn(slot.deaths) {
                    slot.respawn_at = None;
                    self.event(i, WorkerEventKind::Stopped);
                    continue;
                }
                let (io, retire) = SlotIo::new(slot.live.clone());
                match (self.spawn)(i, io) {
                    Ok(handle) => {
                        slot.handle = Some(handle);
                        slot.retire = Some(retire);
                        slot.running = true;
                        slot.replacement = true;
                        slot.respawn_at = None;
                    }
                    Err(_) => {
                        slot.deaths += 1;
                        slot.respawn_at = Some(now + RESPAWN_MAX);
                    }
                }
            }
        }
    }
}

/// Hands back one job that never started.
fn hand_back<Req, Resp>(
    job: Job<Req, Resp>,
    unstarted: &mut Vec<(RequestId, Req)>,
    cancelled: &mut u64,
) {
    if job.hand_back(|id, req| unstarted.push((id, req))) {
        *cancelled += 1;
    }
}

/// Stands in for the spawner once the supervisor is done.
fn no_spawn<'p>(_: usize, _: SlotIo) -> io::Result<Join<'p, ()>> {
    Err(io::Error::other("the supervisor has stopped"))
}
