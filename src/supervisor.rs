//! The supervisor thread: one `select!` over the workers' status channel, the shutdown
//! command, a shutdown deadline and pending respawns. It alone owns the worker threads'
//! handles and lifecycle, replaces a thread that died, collects the requests handed back by a
//! `shutdown_now`, and tells the broadcaster when everything is over.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, after, never, select};

use crate::message::{
    Job, Reply, RequestId, Route, Shutdown, Status, ToBroadcaster, panic_message,
};
use crate::metrics::WorkerEventKind;
use crate::worker::{Never, drop_quietly};

/// Starts worker thread `i` (a fresh incarnation that runs `init`).
pub(crate) type SpawnWorker = Box<dyn FnMut(usize) -> io::Result<JoinHandle<()>> + Send>;

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

struct Slot {
    handle: Option<JoinHandle<()>>,
    /// Whether its thread is running (between spawn and `Exited`).
    running: bool,
    /// Whether the current thread is a replacement (its `Ready` is a restart).
    replacement: bool,
    /// Consecutive deaths, for the backoff.
    deaths: u32,
    /// When to spawn a replacement, if one is due.
    respawn_at: Option<Instant>,
}

pub(crate) struct Supervisor<Req, Resp> {
    pub(crate) status: Receiver<Status<Req>>,
    pub(crate) control: Receiver<Shutdown>,
    pub(crate) broadcast: Sender<ToBroadcaster>,
    pub(crate) spawn: SpawnWorker,
    pub(crate) handles: Vec<JoinHandle<()>>,
    /// Clones of the queues' receivers, to drain what no worker took (a safety net: workers
    /// normally drain every queue themselves before they exit).
    pub(crate) queues: Vec<Receiver<Job<Req, Resp>>>,
    pub(crate) stop: Arc<AtomicBool>,
    /// Dropped when a `shutdown_timeout` expires: workers stop waiting for response space.
    pub(crate) abort: Option<Sender<Never>>,
    /// Whether the shutdown command arrived.
    pub(crate) shutting_down: bool,
    /// A pipeline stage's deadline: stop starting jobs, but keep delivering responses.
    pub(crate) keep_delivering: bool,
}

impl<Req: Send + 'static, Resp: Send + 'static> Supervisor<Req, Resp> {
    /// The thread's body: runs until a shutdown command arrived and every worker exited.
    pub(crate) fn run(mut self) -> Outcome<Req> {
        let mut slots: Vec<Slot> = std::mem::take(&mut self.handles)
            .into_iter()
            .map(|h| Slot {
                handle: Some(h),
                running: true,
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
                        Shutdown::Now => {
                            self.stop.store(true, Ordering::Relaxed);
                            self.hand_back_queued(&mut unstarted, &mut cancelled);
                        }
                        Shutdown::Drain { deadline: Some(at), give_up } => {
                            if !give_up {
                                self.keep_delivering = true;
                            }
                            deadline = after(at.saturating_duration_since(Instant::now()));
                        }
                        Shutdown::Drain { deadline: None, .. } => {}
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
                }
            }
        }

        // Every worker exited, so everything they sent is already in `status`.
        while let Ok(msg) = self.status.try_recv() {
            self.on_status(msg, &mut slots, &mut unstarted);
        }
        for q in &self.queues {
            // Blocks only until the last in-progress submit returns: intake is closed.
            for job in q.iter() {
                hand_back(job, &mut unstarted, &mut cancelled);
            }
        }
        // Dropped here, not wherever the last clone happens to go: the handler and `init`
        // may capture values whose `Drop` panics.
        drop_quietly(std::mem::replace(&mut self.spawn, Box::new(no_spawn)));
        let _ = self.broadcast.send(ToBroadcaster::Finish {
            unstarted: unstarted.len() as u64,
            cancelled,
        });
        Outcome { unstarted }
    }

    /// Takes every queued job out of the queues at once (`shutdown_now`, or an expired
    /// `shutdown_timeout`): stream requests to `unstarted`, calls answered `Cancelled`.
    /// Workers that take a job after the stop flag hand it back the same way, so each job
    /// ends in exactly one place whoever receives it.
    fn hand_back_queued(&self, unstarted: &mut Vec<(RequestId, Req)>, cancelled: &mut u64) {
        for q in &self.queues {
            while let Ok(job) = q.try_recv() {
                hand_back(job, unstarted, cancelled);
            }
        }
    }

    /// The `shutdown_timeout` deadline: start nothing more, and stop waiting for response space.
    fn expire(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if !self.keep_delivering {
            self.abort = None;
        }
    }

    fn event(&self, worker: usize, kind: WorkerEventKind) {
        let _ = self.broadcast.send(ToBroadcaster::Worker { worker, kind });
    }

    fn on_status(
        &mut self,
        msg: Status<Req>,
        slots: &mut [Slot],
        unstarted: &mut Vec<(RequestId, Req)>,
    ) {
        match msg {
            Status::Unstarted { id, req } => unstarted.push((id, req)),
            Status::Ready { worker } => {
                let slot = &mut slots[worker];
                slot.deaths = 0;
                if slot.replacement {
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
                let joined = slot.handle.take().map(JoinHandle::join);
                let died = match (died, joined) {
                    (Some(_), Some(Err(payload))) => Some(panic_message(&*payload)),
                    (died, _) => died,
                };
                if let Some(message) = died {
                    slot.deaths += 1;
                    self.event(worker, WorkerEventKind::Died(message));
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
        !self.shutting_down
            || (deaths <= SHUTDOWN_RESPAWNS && self.queues.iter().any(|q| !q.is_empty()))
    }

    fn respawn_timer(slots: &[Slot]) -> Receiver<Instant> {
        match slots.iter().filter_map(|s| s.respawn_at).min() {
            Some(at) => after(at.saturating_duration_since(Instant::now())),
            None => never(),
        }
    }

    fn respawn_due(&mut self, slots: &mut [Slot]) {
        let now = Instant::now();
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.respawn_at.is_some_and(|at| at <= now) {
                if !self.should_respawn(slot.deaths) {
                    slot.respawn_at = None;
                    self.event(i, WorkerEventKind::Stopped);
                    continue;
                }
                match (self.spawn)(i) {
                    Ok(handle) => {
                        slot.handle = Some(handle);
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
    match job.route {
        Route::Stream | Route::Process(..) => unstarted.push((job.id, job.req)),
        Route::Call(back) => {
            *cancelled += 1;
            Reply::cancel(back, job.req);
        }
    }
}

/// Stands in for the spawner once the supervisor is done.
fn no_spawn(_: usize) -> io::Result<JoinHandle<()>> {
    Err(io::Error::other("the supervisor has stopped"))
}
