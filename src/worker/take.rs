//! How an idle worker picks its next job: by priority (with the starvation bound), own queue
//! first, then the others (stealing); a short spin; then one `select` over every queue, the
//! "intake closed" signal and its own retire signal, waking on time to report counts it
//! still owes.
//!
//! # Priorities without starving
//!
//! The worker keeps, per lane below `High`, how many requests of more urgent lanes it took in
//! a row while that lane had a request waiting (`passed`). Once a lane's count reaches the
//! burst, that lane goes first for one take (the lowest due lane first; taking it does not
//! count as passing a more urgent lane). A lane found empty resets its count: nothing was
//! passed. Within a lane, ready requests (past their limit) go before the bounded queue.
//!
//! Until priorities or limits are first used (see `Shared::lanes_on`), the fast path looks
//! only at the `Normal` lanes; the blocking wait always watches every lane.

use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::{Receiver, Select, TryRecvError};
use crossbeam_utils::Backoff;

use super::Worker;
use crate::context::JobContext;
use crate::gate::{Permit, Permitted};
use crate::ids::WorkerId;
use crate::message::{Job, StatsDelta};
use crate::priority::{LANES, NORMAL};

/// A job as a worker takes it: its lane, and its limit's permit if it has one.
pub(super) struct Taken<Req, Resp> {
    pub(super) job: Job<Req, Resp>,
    pub(super) lane: usize,
    pub(super) permit: Option<Permit<Req, Resp>>,
}

/// The receiving ends of a pool's queues, `[lane][queue]`: the bounded lanes and the ready
/// lanes (limited requests holding a permit). In a worker, index 0 of each is its own queue.
pub(crate) struct Queues<Req, Resp> {
    pub(crate) lanes: [Vec<Receiver<Job<Req, Resp>>>; LANES],
    pub(crate) ready: [Vec<Receiver<Permitted<Req, Resp>>>; LANES],
}

impl<Req, Resp> Clone for Queues<Req, Resp> {
    fn clone(&self) -> Self {
        Queues {
            lanes: self.lanes.clone(),
            ready: self.ready.clone(),
        }
    }
}

impl<Req, Resp> Queues<Req, Resp> {
    /// No queues (a worker stand-in that never takes).
    pub(crate) fn none() -> Self {
        Queues {
            lanes: Default::default(),
            ready: Default::default(),
        }
    }

    /// Queues per lane.
    pub(crate) fn per_lane(&self) -> usize {
        self.lanes[NORMAL].len()
    }

    /// Worker `i`'s view: its own queue first, then (only when stealing) the others in order.
    pub(crate) fn rotated(&self, i: usize, steal: bool) -> Self {
        Queues {
            lanes: self.lanes.clone().map(|v| own_first(v, i, steal)),
            ready: self.ready.clone().map(|v| own_first(v, i, steal)),
        }
    }

    /// Queued requests per lane (bounded and ready).
    pub(crate) fn len(&self) -> [u64; LANES] {
        std::array::from_fn(|l| {
            let bounded: usize = self.lanes[l].iter().map(Receiver::len).sum();
            let ready: usize = self.ready[l].iter().map(Receiver::len).sum();
            (bounded + ready) as u64
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lanes.iter().flatten().all(Receiver::is_empty)
            && self.ready.iter().flatten().all(Receiver::is_empty)
    }

    /// Takes every queued job at once (permits are given back as they go).
    pub(crate) fn drain(&self, mut each: impl FnMut(Job<Req, Resp>)) {
        for q in self.ready.iter().flatten() {
            while let Ok((job, permit)) = q.try_recv() {
                drop(permit);
                each(job);
            }
        }
        for q in self.lanes.iter().flatten() {
            while let Ok(job) = q.try_recv() {
                each(job);
            }
        }
    }

    /// How many channels a worker's select watches before its two signals.
    pub(super) fn slots(&self) -> usize {
        2 * LANES * self.per_lane()
    }

    /// Registers every channel in `select`, in slot order (see [`slot`](Self::slot)).
    pub(super) fn register<'a>(&'a self, select: &mut Select<'a>) {
        for lane in &self.lanes {
            lane.iter().for_each(|q| _ = select.recv(q));
        }
        for lane in &self.ready {
            lane.iter().for_each(|q| _ = select.recv(q));
        }
    }

    /// The select slot of queue `q` of `lane`, bounded or ready.
    fn slot(&self, ready: bool, lane: usize, q: usize) -> usize {
        (usize::from(ready) * LANES + lane) * self.per_lane() + q
    }
}

impl<Req, Resp, S, I, H> Worker<Req, Resp, I, H>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    I: Fn(WorkerId) -> S + Send + Sync + 'static,
    H: Fn(&mut S, &JobContext, Req) -> Resp + Send + Sync + 'static,
{
    /// The next job, and whether it had to wait for it; `None` when every queue is
    /// disconnected and empty, or the worker is retired.
    pub(super) fn take<'a>(
        &'a self,
        select: &mut Select<'a>,
        live: &mut [bool],
        stats: &mut StatsDelta,
        next_flush: &mut Option<Instant>,
    ) -> Option<(Taken<Req, Resp>, bool)> {
        if let Some(taken) = self.try_take(select, live, false) {
            return Some((taken, false));
        }
        // `Select::select` parks at once, so a submit would have to unpark us on every job
        // that finds us idle; `Receiver::recv` spins with a backoff first. Spin the same way.
        let backoff = Backoff::new();
        while !backoff.is_completed() {
            backoff.snooze();
            if let Some(taken) = self.try_take(select, live, false) {
                return Some((taken, true));
            }
        }
        // Going idle: block, waking to report counts if some are unreported.
        let signal = self.queues.slots();
        loop {
            if self.retire.load(Ordering::Relaxed) {
                return None; // retired: leave at once
            }
            let closed = matches!(
                self.links.intake_closed.try_recv(),
                Err(TryRecvError::Disconnected)
            );
            if closed || !live.iter().any(|&l| l) {
                // Nothing can arrive any more: what is queued is still ours; then leave.
                return self.try_take(select, live, true).map(|t| (t, true));
            }
            let deadline = next_flush.filter(|_| stats.owes_report());
            let i = match deadline {
                Some(d) => match select.ready_deadline(d) {
                    Ok(i) => i,
                    Err(_) => {
                        self.flush_idle(stats, next_flush);
                        continue;
                    }
                },
                None => select.ready(),
            };
            if i >= signal {
                continue; // a signal: the loop's checks see it
            }
            if let Some(taken) = self.try_take(select, live, true) {
                return Some((taken, true));
            }
            // Slot `i` looked ready but the scan found nothing: another worker was quicker,
            // something arrived since, or it is disconnected.
            if let Some(taken) = self.probe(i, select, live) {
                return Some((taken, true));
            }
        }
    }

    /// The next job by priority (see the module docs); never blocks. `all`: look at every
    /// lane even before priorities or limits were first used.
    fn try_take<'a>(
        &'a self,
        select: &mut Select<'a>,
        live: &mut [bool],
        all: bool,
    ) -> Option<Taken<Req, Resp>> {
        if !all && !self.lanes_on.load(Ordering::Relaxed) {
            let job = self.take_from(&self.queues.lanes[NORMAL], false, NORMAL, select, live)?;
            return Some(Taken {
                job,
                lane: NORMAL,
                permit: None,
            });
        }
        let mut passed = self.passed.get();
        let due = (1..LANES).rev().filter(|&l| passed[l] >= self.burst);
        for lane in due.chain(0..LANES) {
            if let Some(taken) = self.take_lane(lane, select, live) {
                passed[lane] = 0;
                for (l, count) in passed.iter_mut().enumerate().skip(lane + 1) {
                    *count = if self.lane_waiting(l) {
                        count.saturating_add(1)
                    } else {
                        0
                    };
                }
                self.passed.set(passed);
                return Some(taken);
            }
        }
        None
    }

    /// A job of `lane`: ready (past its limit) first, then the bounded queues.
    fn take_lane<'a>(
        &'a self,
        lane: usize,
        select: &mut Select<'a>,
        live: &mut [bool],
    ) -> Option<Taken<Req, Resp>> {
        if let Some((job, permit)) =
            self.take_from(&self.queues.ready[lane], true, lane, select, live)
        {
            return Some(Taken {
                job,
                lane,
                permit: Some(permit),
            });
        }
        let job = self.take_from(&self.queues.lanes[lane], false, lane, select, live)?;
        Some(Taken {
            job,
            lane,
            permit: None,
        })
    }

    /// Own queue first, then the others in order; a disconnected queue is no longer watched.
    fn take_from<'a, T>(
        &'a self,
        queues: &[Receiver<T>],
        ready: bool,
        lane: usize,
        select: &mut Select<'a>,
        live: &mut [bool],
    ) -> Option<T> {
        for (q, rx) in queues.iter().enumerate() {
            let slot = self.queues.slot(ready, lane, q);
            if !live[slot] {
                continue;
            }
            match rx.try_recv() {
                Ok(item) => return Some(item),
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => {
                    live[slot] = false;
                    select.remove(slot);
                }
            }
        }
        None
    }

    /// Whether a request of `lane` waits in any queue this worker serves.
    fn lane_waiting(&self, lane: usize) -> bool {
        self.queues.lanes[lane].iter().any(|q| !q.is_empty())
            || self.queues.ready[lane].iter().any(|q| !q.is_empty())
    }

    /// Slot `i` looked ready, yet the scan found nothing: take what arrived on it since, or
    /// stop watching it if it is disconnected.
    fn probe<'a>(
        &'a self,
        i: usize,
        select: &mut Select<'a>,
        live: &mut [bool],
    ) -> Option<Taken<Req, Resp>> {
        let per_lane = self.queues.per_lane();
        let (kind, q) = (i / per_lane, i % per_lane);
        let lane = kind % LANES;
        let error = if kind >= LANES {
            match self.queues.ready[lane][q].try_recv() {
                Ok((job, permit)) => {
                    let permit = Some(permit);
                    return Some(Taken { job, lane, permit });
                }
                Err(e) => e,
            }
        } else {
            match self.queues.lanes[lane][q].try_recv() {
                Ok(job) => {
                    let permit = None;
                    return Some(Taken { job, lane, permit });
                }
                Err(e) => e,
            }
        };
        if error.is_disconnected() && live[i] {
            live[i] = false;
            select.remove(i);
        }
        None
    }

    pub(super) fn flush_idle(&self, stats: &mut StatsDelta, next_flush: &mut Option<Instant>) {
        stats.busy = false;
        self.flush(stats);
        *next_flush = self.flush_every.map(|p| Instant::now() + p);
    }
}

/// Queue `i` first, then (only when stealing) the others in order.
fn own_first<T>(mut queues: Vec<T>, i: usize, steal: bool) -> Vec<T> {
    let len = queues.len();
    queues.rotate_left(i % len);
    if !steal {
        queues.truncate(1);
    }
    queues
}
