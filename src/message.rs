//! The private protocol between threads: the envelopes, status and control messages, and
//! which thread sends and receives each.
//!
//! Channels, who sends and who receives (each closes by dropping its senders):
//!
//! | channel | senders | receiver | disconnects when |
//! |---|---|---|---|
//! | intake (`Job`) | the orchestrator and submitters (every handle shares the senders) | workers (supervisor keeps clones to drain) | the last handle drops; workers do not wait for it: they leave on `intake_closed` |
//! | intake closed (`Never`) | the supervisor | workers | the shutdown started and no submitter handle is mid-submit |
//! | responses (`Response`) | workers, supervisor (spare clone for replacements) | the user | every worker and the supervisor exited |
//! | call reply (`Reply`) | the worker that ran the job (or the supervisor, cancelling) | the waiting `call` | never while pooled: the sender travels back in the reply |
//! | status (`Status`) | workers | supervisor | the supervisor drops its spare sender after the last worker exited |
//! | metrics (`ToMetrics`) | workers (stats), supervisor (events, finish) | metrics thread | after `Finish`, the metrics thread returns |
//! | metrics requests (`MetricsRequest`) | the orchestrator (`subscribe`, `metrics`) | metrics thread | the orchestrator is shut down |

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crossbeam_utils::CachePadded;

use crossbeam_channel::Sender;

use crate::error::CallError;
use crate::ids::RequestId;
use crate::metrics::{Histogram, MetricsEvent, MetricsSnapshot, WorkerEventKind};
use crate::priority::LANES;
use crate::response::Response;
use crate::unwind::drop_quietly;

/// A moment in 8 bytes (an `Instant` takes 16): nanoseconds since the pool's epoch, or none.
/// Moments before the epoch read as the epoch (for a deadline: already passed), moments
/// beyond 584 years as never.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp(u64);

impl Stamp {
    pub(crate) const NONE: Stamp = Stamp(u64::MAX);

    pub(crate) fn new(epoch: Instant, at: Option<Instant>) -> Stamp {
        match at {
            Some(at) => Stamp(
                u64::try_from(at.saturating_duration_since(epoch).as_nanos())
                    .unwrap_or(u64::MAX - 1)
                    .min(u64::MAX - 1),
            ),
            None => Stamp::NONE,
        }
    }

    pub(crate) fn raw(self) -> u64 {
        self.0
    }

    pub(crate) fn from_raw(raw: u64) -> Stamp {
        Stamp(raw)
    }

    pub(crate) fn get(self, epoch: Instant) -> Option<Instant> {
        (self != Stamp::NONE).then(|| epoch + std::time::Duration::from_nanos(self.0))
    }
}

/// A request on its way to a worker: 56 bytes for `u64` requests (the common case carries
/// its optional times as [`Stamp`]s).
pub(crate) struct Job<Req, Resp> {
    pub(crate) id: RequestId,
    pub(crate) req: Req,
    /// When it was submitted, if it is timed (none with metrics off, or untimed by the
    /// sampling: then no clock read at all).
    pub(crate) enqueued: Stamp,
    /// Past this moment the job is answered `DeadlineExceeded` instead of being run.
    pub(crate) deadline: Stamp,
    pub(crate) route: Route<Req, Resp>,
}

impl<Req, Resp> Job<Req, Resp> {
    /// Hands back a job that never ran: a `call` is answered `Cancelled(req)` (returns
    /// `true`), any other request goes to `unstarted` (returns `false`). The one way a job
    /// leaves unrun, whoever finds it (a worker after the stop flag, or the supervisor).
    pub(crate) fn hand_back(self, unstarted: impl FnOnce(RequestId, Req)) -> bool {
        match self.route {
            Route::Stream | Route::Process(..) => {
                unstarted(self.id, self.req);
                false
            }
            Route::Call(back) => {
                Reply::cancel(back, self.req);
                true
            }
        }
    }
}

/// Where a job's answer goes.
pub(crate) enum Route<Req, Resp> {
    /// To the shared responses channel.
    Stream,
    /// Straight back to the `call` waiting on the other end.
    Call(Sender<Reply<Req, Resp>>),
    /// To the private channel of one `process` iterator, tagged with its input position.
    Process(Sender<(u64, Response<Resp>)>, u64),
}

/// The answer to a `call`. It carries the reply sender back so the caller can return the
/// channel pair to the pool: no allocation per `call` in steady state.
pub(crate) struct Reply<Req, Resp> {
    pub(crate) result: Result<Resp, CallError<Req>>,
    pub(crate) back: Sender<Reply<Req, Resp>>,
}

impl<Req, Resp> Reply<Req, Resp> {
    /// Answers a call whose request never started.
    pub(crate) fn cancel(back: Sender<Reply<Req, Resp>>, req: Req) {
        let reply = Reply {
            result: Err(CallError::Cancelled(req)),
            back: back.clone(),
        };
        // The caller waits in `recv` until it gets exactly one reply; it cannot be gone. Were
        // it gone, the request is dropped where its `Drop` cannot take this thread down.
        if let Err(lost) = back.send(reply) {
            drop_quietly(lost);
        }
    }
}

/// Worker → supervisor: lifecycle and hand-backs.
pub(crate) enum Status<Req> {
    /// `init` finished; the worker serves.
    Ready { worker: usize },
    /// `init` panicked; the thread exits after sending this.
    InitPanicked { worker: usize, message: String },
    /// The handler panicked on `request`; the worker is rebuilding its state.
    Panicked {
        worker: usize,
        request: RequestId,
        message: String,
    },
    /// The worker rebuilt its state after a panic.
    Restarted { worker: usize },
    /// A stream request taken from the queue after the stop flag was set.
    Unstarted { id: RequestId, req: Req },
    /// The thread is ending; `died` holds a panic message when it unwinds.
    Exited { worker: usize, died: Option<String> },
}

/// One worker slot's running totals, written only by the thread currently serving that slot
/// (a replacement continues from its predecessor's values, after it exited) and read by the
/// metrics thread for every snapshot. So live counts are exact without a message per job.
///
/// Each field is written with a plain `Relaxed` load and store, never a read-modify-write:
/// there is one writer at a time, so no update can be lost. The metrics thread's `Relaxed`
/// loads may see a value a moment old, never one ahead of the truth (a count is stored after
/// what it counts happened), so snapshots never overshoot. The struct sits on its own cache
/// line(s) (`CachePadded`): workers never share a line they write.
#[derive(Debug)]
pub(crate) struct LiveCounts {
    /// Jobs taken from a queue (inline jobs included).
    pub(crate) taken: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    /// Calls answered `Cancelled` and requests handed back unstarted by this worker.
    pub(crate) returned: AtomicU64,
    /// When the timed job it runs now started (a [`Stamp`]); none while idle or running an
    /// untimed job. For the busy fraction of a long job while it runs.
    pub(crate) running: AtomicU64,
}

impl Default for LiveCounts {
    fn default() -> Self {
        LiveCounts {
            taken: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            returned: AtomicU64::new(0),
            running: AtomicU64::new(Stamp::NONE.raw()),
        }
    }
}

/// The live totals of one worker slot.
pub(crate) type Live = Arc<CachePadded<LiveCounts>>;

/// Adds one to a [`LiveCounts`] field; only its single writer may call this.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// What one worker did since its last report. Cumulative counts are kept by the metrics thread.
#[derive(Default, Clone)]
pub(crate) struct StatsDelta {
    /// Jobs taken from a queue.
    pub(crate) taken: u64,
    pub(crate) completed: u64,
    pub(crate) failed: u64,
    pub(crate) undelivered: u64,
    /// Call requests answered `Cancelled`.
    pub(crate) cancelled: u64,
    /// Stream requests sent to the supervisor as `Unstarted`.
    pub(crate) handed_back: u64,
    pub(crate) handler: Histogram,
    /// Queue wait of `Normal` jobs while no other lane is in use.
    pub(crate) wait: Histogram,
    /// Queue wait per lane, once priorities or limits are in use (boxed: allocated once per
    /// report, and only then; a report stays small enough for small worker stacks).
    pub(crate) wait_by_lane: Option<Box<[Histogram; LANES]>>,
    /// Whether the worker is in the middle of a job (or has more queued) at report time.
    pub(crate) busy: bool,
    /// When the job in progress at report time started, if one is (the metrics thread credits
    /// its running time to the busy fraction before it ends).
    pub(crate) running_since: Option<Instant>,
    /// Worker-local, never merged: whether the last report that went out said `busy`, so an
    /// idle worker knows it still owes an "idle" report.
    pub(crate) reported_busy: bool,
    /// Counts only: `busy` and `running_since` say nothing (a job run inline for a
    /// re-entrant caller, while the worker's own job still runs).
    pub(crate) counts_only: bool,
}

impl StatsDelta {
    /// Whether there is anything to report (a job can be taken in one report and finished
    /// in the next, so finishing counts too).
    pub(crate) fn is_dirty(&self) -> bool {
        self.taken != 0
            || self.completed != 0
            || self.failed != 0
            || self.undelivered != 0
            || self.cancelled != 0
            || self.handed_back != 0
    }

    /// Whether the worker owes the metrics thread a report before it may sleep without a deadline.
    pub(crate) fn owes_report(&self) -> bool {
        self.is_dirty() || self.reported_busy
    }

    pub(crate) fn merge(&mut self, d: &StatsDelta) {
        self.taken += d.taken;
        self.completed += d.completed;
        self.failed += d.failed;
        self.undelivered += d.undelivered;
        self.cancelled += d.cancelled;
        self.handed_back += d.handed_back;
        self.handler.merge(&d.handler);
        self.wait.merge(&d.wait);
        if let Some(theirs) = &d.wait_by_lane {
            let mine = self.wait_by_lane.get_or_insert_with(Box::default);
            for (mine, theirs) in mine.iter_mut().zip(theirs.iter()) {
                mine.merge(theirs);
            }
        }
    }
}

/// Workers and supervisor → metrics thread.
///
/// `Stats` is large (two histograms) and sent by value on purpose: a report allocates
/// nothing, and the bounded channel's slots are allocated once.
#[allow(clippy::large_enum_variant)]
pub(crate) enum ToMetrics {
    Stats {
        worker: usize,
        /// Boxed: a report is a few KiB, and a worker's stack may be small.
        delta: Box<StatsDelta>,
    },
    Worker {
        worker: usize,
        kind: WorkerEventKind,
    },
    /// A worker slot beyond the ones at start (a growing pool), with its live totals.
    Slot { worker: usize, live: Option<Live> },
    /// Every worker has exited and the queues are drained: send the summary and return.
    Finish { unstarted: u64, cancelled: u64 },
}

/// Orchestrator → metrics thread: requests from user threads.
pub(crate) enum MetricsRequest {
    Subscribe {
        tx: Sender<MetricsEvent>,
        capacity: usize,
    },
    Snapshot {
        reply: Sender<MetricsSnapshot>,
    },
}

/// Orchestrator → supervisor.
pub(crate) enum Shutdown {
    /// Run everything queued (`shutdown`), or until the deadline (`shutdown_timeout`).
    /// `give_up`: past the deadline, also stop waiting for response space (responses then
    /// count as undelivered). Pipeline stages pass `false`: their responses are requests
    /// of the next stage, and must never be dropped.
    Drain {
        deadline: Option<Instant>,
        give_up: bool,
    },
    /// Start nothing more (`shutdown_now`).
    Now,
    /// Nobody can read the responses before the shutdown returns (a scoped pool whose body
    /// returned or panicked): stop waiting for response space at once (a response that finds
    /// a bounded channel full counts as undelivered). Runs everything queued, or with `now`
    /// starts nothing more.
    Unread { now: bool },
}

/// An uninhabited message type: channels of `Never` carry no messages, only disconnection.
#[derive(Debug)]
pub(crate) enum Never {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The envelope stays small: a `u64 → u64` job is 56 bytes (it was 80 with two
    /// `Option<Instant>`s and the id in the common path).
    #[test]
    fn a_u64_job_is_56_bytes() {
        assert_eq!(std::mem::size_of::<Job<u64, u64>>(), 56);
        assert_eq!(std::mem::size_of::<Stamp>(), 8);
    }

    #[test]
    fn stamps_round_trip_and_clamp() {
        let epoch = Instant::now();
        let later = epoch + std::time::Duration::from_millis(5);
        assert_eq!(Stamp::new(epoch, Some(later)).get(epoch), Some(later));
        assert_eq!(Stamp::new(epoch, None).get(epoch), None);
        // Before the epoch reads as the epoch: a deadline that has passed stays passed.
        let before = epoch - std::time::Duration::from_millis(5);
        assert_eq!(Stamp::new(later, Some(before)).get(later), Some(later));
    }
}
