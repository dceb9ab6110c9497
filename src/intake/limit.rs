//! The intake side of priorities and concurrency limits: announcing the first use of a lane
//! other than `Normal`, making a gate, and a submit through one.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::{Sender, TrySendError, bounded, select_biased};

use super::{Handle, Intake, Reentry, Refusal, Wait};
use crate::gate::{Gate, Permit, Waiting};
use crate::ids::RequestId;
use crate::message::Job;

/// Where a submit puts its request: a priority lane of the pool, or a gate's waiting queue
/// (with the lane it takes once past the gate).
pub(crate) enum Dest<'a, Req, Resp> {
    Lane(usize),
    Gate(&'a Limit<Req, Resp>, usize),
}

impl<Req, Resp> Clone for Dest<'_, Req, Resp> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<Req, Resp> Copy for Dest<'_, Req, Resp> {}

/// One limit as a submitting handle holds it: the gate, and the sending end of its waiting
/// queue (the gate holds the receiving end; waiting requests hold no reference to the gate,
/// so nothing keeps itself alive).
pub(crate) struct Limit<Req, Resp> {
    pub(crate) gate: Arc<Gate<Req, Resp>>,
    push: Sender<Waiting<Req, Resp>>,
}

impl<Req, Resp> Clone for Limit<Req, Resp> {
    fn clone(&self) -> Self {
        Limit {
            gate: Arc::clone(&self.gate),
            push: self.push.clone(),
        }
    }
}

impl<Req: Send, Resp: Send> Handle<Req, Resp> {
    /// A new limit of `k` permits whose requests wait in a queue of `capacity`, registered
    /// with the supervisor before any request can use it.
    pub(crate) fn limit(&self, k: usize, capacity: usize) -> Limit<Req, Resp> {
        let (push, waiting) = bounded(capacity);
        let intake = &self.shared.intake;
        let ready = std::array::from_fn(|lane| intake.ready[lane].clone());
        let gate = Arc::new(Gate::new(
            k,
            waiting,
            ready,
            Arc::clone(&self.shared.stop),
            Arc::clone(&self.shared.limit_waiting),
        ));
        self.lanes_on();
        // Gone only once the supervisor returned: then every submit is refused anyway.
        let _ = self.shared.gates.send(Arc::clone(&gate));
        Limit { gate, push }
    }

    /// Announces that a lane other than `Normal` (or a gate) is in use: see
    /// [`Shared::lanes_on`](super::Shared::lanes_on). A load first, so the line is written once.
    pub(crate) fn lanes_on(&self) {
        let on = &self.shared.lanes_on;
        if !on.load(Ordering::Relaxed) && !on.swap(true, Ordering::SeqCst) {
            // The first use: the supervisor wakes every idle worker to watch every lane.
            let _ = self.shared.lanes_used.send(());
        }
    }

    /// The pool's `queue_capacity`.
    pub(crate) fn queue_capacity(&self) -> usize {
        self.shared.queue_capacity
    }

    /// [`enqueue`](Self::enqueue) through a gate: into its waiting queue (blocking as `wait`
    /// says while that is full), then move what the free permits allow.
    pub(super) fn enqueue_gate(
        &self,
        intake: &Intake<Req, Resp>,
        limit: &Limit<Req, Resp>,
        job: Job<Req, Resp>,
        wait: Wait,
        may_inline: bool,
        lane: usize,
    ) -> Result<RequestId, (Refusal, Job<Req, Resp>)> {
        let id = job.id;
        let (queue, _) = self.target(intake, &job.req);
        let gate = &limit.gate;
        let back = |why, w: Waiting<Req, Resp>| Err((why, w.job));
        let waiting = Waiting { job, lane, queue };
        let waiting = match limit.push.try_send(waiting) {
            Ok(()) => {
                gate.count(lane);
                gate.pump();
                return Ok(id);
            }
            Err(TrySendError::Full(w)) => w,
            // The gate holds the receiver: it cannot be gone while we hold the gate.
            Err(TrySendError::Disconnected(w)) => return back(Refusal::ShutDown, w),
        };
        let deadline = match wait {
            Wait::No => return back(Refusal::Full, waiting),
            Wait::Forever => None,
            Wait::Until(at) => Some(at),
        };
        // A worker of this pool about to wait for room: only while another worker is free
        // to make it (a timed wait ends by itself). Otherwise the request runs here, nested
        // in the caller's handler.
        // Inline under one of the limit's permits if one is free; if none is, every worker
        // is blocked on the pool and so is every running holder of a permit: the request runs
        // nested past the limit (documented) rather than deadlock.
        let reentry = (may_inline && deadline.is_none()).then(|| self.reentry(|| None));
        let _blocked = match reentry {
            Some(Reentry::Inline(inline)) => {
                let permit = gate.try_permit();
                let running = permit.as_ref().map(Permit::enter);
                inline.run(waiting.job);
                drop(running);
                drop(permit); // gives the permit back, moves the next request on
                return Ok(id);
            }
            Some(Reentry::Wait(guard)) => guard,
            None => None,
        };
        let closed = &self.shared.closed;
        let push = &limit.push;
        let sent = match deadline.map(|d| d.saturating_duration_since(Instant::now())) {
            None => select_biased! {
                recv(closed) -> _ => Err((Refusal::ShutDown, waiting)),
                send(push, waiting) -> sent => sent.map_err(|e| (Refusal::ShutDown, e.into_inner())),
            },
            Some(timeout) => select_biased! {
                recv(closed) -> _ => Err((Refusal::ShutDown, waiting)),
                send(push, waiting) -> sent => sent.map_err(|e| (Refusal::ShutDown, e.into_inner())),
                default(timeout) => Err((Refusal::Timeout, waiting)),
            },
        };
        match sent {
            Ok(()) => {
                gate.count(lane);
                gate.pump();
                Ok(id)
            }
            Err((why, w)) => back(why, w),
        }
    }
}
