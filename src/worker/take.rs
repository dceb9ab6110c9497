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
    #[inline]
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

    /// Takes every job queued for worker queue `q` (permits are given back as they go).
    pub(crate) fn drain_queue(&self, q: usize, mut each: impl FnMut(Job<Req, Resp>)) {
        for lane in &self.ready {
            while let Some(Ok((job, permit))) = lane.get(q).map(Receiver::try_recv) {
                drop(permit);
                each(job);
            }
        }
        for lane in &self.lanes {
            while let Some(Ok(job)) = lane.get(q).map(Receiver::try_recv) {
                each(job);
            }
        }
    }

    /// How many queue slots a worker watches (bounded and ready, every lane).
    pub(super) fn slots(&self) -> usize {
        2 * LANES * self.per_lane()
    }

    /// The slot of queue `q` of `lane`, bounded or ready.
    #[inline]
    fn slot(&self, ready: bool, lane: usize, q: usize) -> usize {
        (usize::from(ready) * LANES + lane) * self.per_lane() + q
    }
}

/// What one entry of a worker's `Select` watches.
#[derive(Clone, Copy)]
enum Watch {
    /// A queue slot (see [`Queues::slot`]).
    Slot(usize),
    /// `intake_closed` or the retire signal: the loop's checks look at both.
    Signal,
    /// The pool's "lanes on" signal: watch every lane from now on.
    Wake,
}

/// A worker's blocking wait: one `Select`, built once, over its `Normal` queues and its
/// signals — and, once priorities or limits are in use, over every lane (each registered
/// operation costs a little on every idle wait, so a pool that never uses them never
/// watches those queues). `live` says which slots are still connected.
pub(super) struct Watching<'a> {
    select: Select<'a>,
    /// Select index → what it watches (indices grow as operations are added).
    map: Vec<Watch>,
    live: Vec<bool>,
    /// Every lane registered.
    wide: bool,
}

impl<Req, Resp, S, I, H> Worker<Req, Resp, I, H>
where
    Req: Send,
    Resp: Send,
    I: Fn(WorkerId) -> S + Send + Sync,
    H: Fn(&mut S, &JobContext, Req) -> Resp + Send + Sync,
{
    /// The worker's select: its `Normal` queues, its signals, and the "lanes on" wake-up
    /// (or at once every lane, if they are on already).
    pub(super) fn watching(&self) -> Watching<'_> {
        let mut w = Watching {
            select: Select::new_biased(),
            map: Vec::new(),
            live: vec![true; self.queues.slots()],
            wide: false,
        };
        for (q, rx) in self.queues.lanes[NORMAL].iter().enumerate() {
            w.watch(rx, Watch::Slot(self.queues.slot(false, NORMAL, q)));
        }
        w.watch(&self.links.intake_closed, Watch::Signal);
        w.watch(&self.retired, Watch::Signal);
        w.watch(&self.links.lanes_wake, Watch::Wake);
        if self.lanes_on.load(Ordering::SeqCst) {
            self.widen(&mut w);
        }
        w
    }

    /// Watches every lane from now on.
    fn widen<'a>(&'a self, w: &mut Watching<'a>) {
        if w.wide {
            return;
        }
        w.wide = true;
        if let Some(i) = w.map.iter().position(|m| matches!(m, Watch::Wake)) {
            w.select.remove(i);
        }
        for lane in 0..LANES {
            for (q, rx) in self.queues.ready[lane].iter().enumerate() {
                w.watch(rx, Watch::Slot(self.queues.slot(true, lane, q)));
            }
            if lane == NORMAL {
                continue;
            }
            for (q, rx) in self.queues.lanes[lane].iter().enumerate() {
                w.watch(rx, Watch::Slot(self.queues.slot(false, lane, q)));
            }
        }
    }

    /// The next job, and whether it had to wait for it; `None` when every queue is
    /// disconnected and empty, or the worker is retired.
    pub(super) fn take<'a>(
        &'a self,
        w: &mut Watching<'a>,
        stats: &mut StatsDelta,
        next_flush: &mut Option<Instant>,
    ) -> Option<(Taken<Req, Resp>, bool)> {
        if let Some(taken) = self.try_take(w, false) {
            return Some((taken, false));
        }
        // `Select::select` parks at once, so a submit would have to unpark us on every job
        // that finds us idle; `Receiver::recv` spins with a backoff first. Spin the same way.
        let backoff = Backoff::new();
        while !backoff.is_completed() {
            backoff.snooze();
            if let Some(taken) = self.try_take(w, false) {
                return Some((taken, true));
            }
        }
        // Going idle: block, waking to report counts if some are unreported.
        loop {
            if self.retire.load(Ordering::Relaxed) {
                return None; // retired: leave at once
            }
            let closed = matches!(
                self.links.intake_closed.try_recv(),
                Err(TryRecvError::Disconnected)
            );
            if closed || self.all_gone(w) {
                // Nothing can arrive any more: what is queued is still ours; then leave.
                return self.try_take(w, true).map(|t| (t, true));
            }
            let deadline = next_flush.filter(|_| stats.owes_report());
            let i = match deadline {
                Some(d) => match w.select.ready_deadline(d) {
                    Ok(i) => i,
                    Err(_) => {
                        self.flush_idle(stats, next_flush);
                        continue;
                    }
                },
                None => w.select.ready(),
            };
            let slot = match w.map[i] {
                Watch::Signal => continue, // the loop's checks see it
                Watch::Wake => {
                    self.widen(w);
                    continue;
                }
                Watch::Slot(slot) => slot,
            };
            if let Some(taken) = self.try_take(w, w.wide) {
                return Some((taken, true));
            }
            // The slot looked ready but the scan found nothing: another worker was quicker,
            // something arrived since, or it is disconnected.
            if let Some(taken) = self.probe(slot, w) {
                return Some((taken, true));
            }
        }
    }

    /// The next job by priority (see the module docs); never blocks. `all`: look at every
    /// lane even before priorities or limits were first used.
    #[inline]
    fn try_take<'a>(&'a self, w: &mut Watching<'a>, all: bool) -> Option<Taken<Req, Resp>> {
        if !w.wide && !all && !self.lanes_on.load(Ordering::Relaxed) {
            let job = self.take_from(&self.queues.lanes[NORMAL], false, NORMAL, w)?;
            return Some(Taken {
                job,
                lane: NORMAL,
                permit: None,
            });
        }
        self.take_by_priority(w)
    }

    /// [`try_take`](Self::try_take) once priorities or limits are in use.
    #[inline(never)]
    fn take_by_priority<'a>(&'a self, w: &mut Watching<'a>) -> Option<Taken<Req, Resp>> {
        if !w.wide && self.lanes_on.load(Ordering::Relaxed) {
            self.widen(w);
        }
        let mut passed = self.passed.get();
        let due = (1..LANES).rev().filter(|&l| passed[l] >= self.burst);
        for lane in due.chain(0..LANES) {
            if let Some(taken) = self.take_lane(lane, w) {
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

    /// A job of `lane`: ready (past its limit) first, then the bounded queues — except that
    /// after `burst` ready ones in a row while a plain one of the lane waited, the plain one
    /// goes first (a limit's backlog never starves its priority's other requests).
    fn take_lane<'a>(&'a self, lane: usize, w: &mut Watching<'a>) -> Option<Taken<Req, Resp>> {
        let mut run = self.ready_run.get();
        if run[lane] < self.burst
            && let Some((job, permit)) = self.take_from(&self.queues.ready[lane], true, lane, w)
        {
            let plain_waiting = self.queues.lanes[lane].iter().any(|q| !q.is_empty());
            run[lane] = if plain_waiting { run[lane] + 1 } else { 0 };
            self.ready_run.set(run);
            let permit = Some(permit);
            return Some(Taken { job, lane, permit });
        }
        run[lane] = 0;
        self.ready_run.set(run);
        if let Some(job) = self.take_from(&self.queues.lanes[lane], false, lane, w) {
            return Some(Taken {
                job,
                lane,
                permit: None,
            });
        }
        let (job, permit) = self.take_from(&self.queues.ready[lane], true, lane, w)?;
        let permit = Some(permit);
        Some(Taken { job, lane, permit })
    }

    /// Own queue first, then the others in order; a disconnected queue is no longer watched.
    #[inline]
    fn take_from<'a, T>(
        &'a self,
        queues: &[Receiver<T>],
        ready: bool,
        lane: usize,
        w: &mut Watching<'a>,
    ) -> Option<T> {
        for (q, rx) in queues.iter().enumerate() {
            let slot = self.queues.slot(ready, lane, q);
            if !w.live[slot] {
                continue;
            }
            match rx.try_recv() {
                Ok(item) => return Some(item),
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => w.disconnected(slot),
            }
        }
        None
    }

    /// Whether every queue it watches is disconnected. (While it watches only the `Normal`
    /// queues, those stand for all: every bounded queue's sender is in the one intake, and
    /// no limit ever existed to hold a ready queue's.)
    fn all_gone(&self, w: &Watching<'_>) -> bool {
        if w.wide {
            return !w.live.iter().any(|&l| l);
        }
        (0..self.queues.per_lane()).all(|q| !w.live[self.queues.slot(false, NORMAL, q)])
    }

    /// Whether a request of `lane` waits in any queue this worker serves.
    fn lane_waiting(&self, lane: usize) -> bool {
        self.queues.lanes[lane].iter().any(|q| !q.is_empty())
            || self.queues.ready[lane].iter().any(|q| !q.is_empty())
    }

    /// Queue slot `slot` looked ready, yet the scan found nothing: take
    /// what arrived on it since, or stop watching it if it is disconnected.
    fn probe<'a>(&'a self, slot: usize, w: &mut Watching<'a>) -> Option<Taken<Req, Resp>> {
        let per_lane = self.queues.per_lane();
        let (kind, q) = (slot / per_lane, slot % per_lane);
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
        if error.is_disconnected() && w.live[slot] {
            w.disconnected(slot);
        }
        None
    }

    pub(super) fn flush_idle(&self, stats: &mut StatsDelta, next_flush: &mut Option<Instant>) {
        stats.busy = false;
        self.flush(stats);
        *next_flush = self.flush_every.map(|p| Instant::now() + p);
    }
}

impl<'a> Watching<'a> {
    fn watch<T>(&mut self, rx: &'a Receiver<T>, watch: Watch) {
        let index = self.select.recv(rx);
        debug_assert_eq!(index, self.map.len(), "select indices grow by one");
        self.map.push(watch);
    }

    /// Slot `slot` is disconnected: stop watching it.
    fn disconnected(&mut self, slot: usize) {
        self.live[slot] = false;
        if let Some(i) = self
            .map
            .iter()
            .position(|m| matches!(m, Watch::Slot(s) if *s == slot))
        {
            self.select.remove(i);
            self.map[i] = Watch::Signal; // never selected again
        }
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
