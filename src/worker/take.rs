//! How an idle worker waits for its next job: own queue first, then the others (stealing),
//! a short spin, then one `select` over its queues, the "intake closed" signal and its own
//! retire signal; it wakes on time to report counts it still owes.

use std::sync::atomic::Ordering;
use std::time::Instant;

use crossbeam_channel::{Select, TryRecvError};
use crossbeam_utils::Backoff;

use super::Worker;
use crate::context::JobContext;
use crate::ids::WorkerId;
use crate::message::{Job, StatsDelta};

impl<Req, Resp, S, I, H> Worker<Req, Resp, I, H>
where
    Req: Send + 'static,
    Resp: Send + 'static,
    I: Fn(WorkerId) -> S + Send + Sync + 'static,
    H: Fn(&mut S, &JobContext, Req) -> Resp + Send + Sync + 'static,
{
    /// The next job, and whether it had to wait for it; `None` when every queue is
    /// disconnected and empty.
    pub(super) fn take<'a>(
        &'a self,
        select: &mut Select<'a>,
        live: &mut [bool],
        stats: &mut StatsDelta,
        next_flush: &mut Option<Instant>,
    ) -> Option<(Job<Req, Resp>, bool)> {
        if let Some(job) = self.try_take(select, live) {
            return Some((job, false));
        }
        // `Select::select` parks at once, so a submit would have to unpark us on every job
        // that finds us idle; `Receiver::recv` spins with a backoff first. Spin the same way.
        let backoff = Backoff::new();
        while !backoff.is_completed() {
            backoff.snooze();
            if let Some(job) = self.try_take(select, live) {
                return Some((job, true));
            }
        }
        // Going idle: block, waking to report counts if some are unreported.
        let signal = self.queues.len();
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
                return self.try_take(select, live).map(|job| (job, true));
            }
            let deadline = next_flush.filter(|_| stats.owes_report());
            let op = match deadline {
                Some(d) => match select.select_deadline(d) {
                    Ok(op) => op,
                    Err(_) => {
                        self.flush_idle(stats, next_flush);
                        continue;
                    }
                },
                None => select.select(),
            };
            let i = op.index();
            if i == signal {
                let _ = op.recv(&self.links.intake_closed);
                continue; // the loop's check sees it closed
            }
            if i == signal + 1 {
                let _ = op.recv(&self.retired);
                continue; // the loop's check sees the flag
            }
            match op.recv(&self.queues[i]) {
                Ok(job) => return Some((job, true)),
                Err(_) => {
                    live[i] = false;
                    select.remove(i);
                }
            }
        }
    }

    /// Own queue first, then steal from the others in order; never blocks.
    fn try_take<'a>(
        &'a self,
        select: &mut Select<'a>,
        live: &mut [bool],
    ) -> Option<Job<Req, Resp>> {
        for (i, q) in self.queues.iter().enumerate() {
            if !live[i] {
                continue;
            }
            match q.try_recv() {
                Ok(job) => return Some(job),
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => {
                    live[i] = false;
                    select.remove(i);
                }
            }
        }
        None
    }

    pub(super) fn flush_idle(&self, stats: &mut StatsDelta, next_flush: &mut Option<Instant>) {
        stats.busy = false;
        self.flush(stats);
        *next_flush = self.flush_every.map(|p| Instant::now() + p);
    }
}
