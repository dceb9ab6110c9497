//! Resizing: the supervisor starts workers (reusing retired slots) or retires the newest
//! ones, on `resize` and by the elastic rule. Retiring is a flag and a wake-up (see
//! `worker::Retire`): the worker leaves after its current job, and what is queued stays for
//! the others (every queue is served by a worker that steals, or is the one shared queue).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Slot, Supervisor};
use crate::message::{Live, ToMetrics};
use crate::metrics::WorkerEventKind;
use crate::worker::Slot as SlotIo;

impl<'p, Req: Send + 'p, Resp: Send + 'p> Supervisor<'p, Req, Resp> {
    /// Slots that are part of the pool: running, or dead and about to be replaced.
    fn active(slots: &[Slot<'p>]) -> Vec<usize> {
        (0..slots.len())
            .filter(|&i| {
                let s = &slots[i];
                !s.retired && !s.retiring && (s.running || s.respawn_at.is_some())
            })
            .collect()
    }

    /// Brings the pool to the target size: starts workers (reusing retired slots first) or
    /// retires the newest ones (each leaves after its current job). Not during a shutdown.
    ///
    /// Returns `false` if it must try again shortly (a retirement had to wait).
    pub(super) fn apply_target(&mut self, slots: &mut Vec<Slot<'p>>) -> bool {
        if self.shutting_down {
            return true;
        }
        let target = self.target.load(Ordering::SeqCst).max(1);
        let mut active = Self::active(slots);
        while active.len() > target {
            let i = *active.last().expect("more than one");
            if !self.retire(&mut slots[i]) {
                return false; // every other worker waits on the pool: retire later
            }
            active.pop();
            let slot = &mut slots[i];
            if !slot.running {
                // Dead and waiting for a replacement: simply not replaced.
                slot.respawn_at = None;
                slot.retiring = false;
                slot.retired = true;
                self.event(i, WorkerEventKind::Retired);
            }
        }
        while active.len() < target {
            match self.add_worker(slots) {
                Some(i) => active.push(i),
                None => return false,
            }
        }
        true
    }

    /// Starts one more worker, in a retired slot if there is one.
    fn add_worker(&mut self, slots: &mut Vec<Slot<'p>>) -> Option<usize> {
        let i = match slots.iter().position(|s| s.retired && !s.running) {
            Some(i) => i,
            None => {
                let live = self.live_totals.then(Live::default);
                slots.push(Slot {
                    handle: None,
                    live: live.clone(),
                    retire: None,
                    retiring: false,
                    retired: true,
                    added: false,
                    idle_since: None,
                    last_taken: 0,
                    running: false,
                    serving: false,
                    replacement: false,
                    deaths: 0,
                    respawn_at: None,
                });
                let worker = slots.len() - 1;
                let _ = self.metrics.send(ToMetrics::Slot { worker, live });
                worker
            }
        };
        let (io, retire) = SlotIo::new(slots[i].live.clone());
        let handle = (self.spawn)(i, io).ok()?;
        let slot = &mut slots[i];
        slot.handle = Some(handle);
        slot.retire = Some(retire);
        slot.running = true;
        slot.retired = false;
        slot.added = true;
        slot.replacement = false;
        slot.deaths = 0;
        slot.idle_since = None;
        Some(i)
    }

    /// The elastic rule, every `ELASTIC_CHECK`: one more worker (up to the maximum) while
    /// requests wait and every worker is busy; one fewer (down to the minimum) when a worker
    /// has been idle for the keep-alive.
    pub(super) fn elastic_check(&mut self, slots: &mut Vec<Slot<'p>>) {
        if self.shutting_down {
            return;
        }
        let (min, max, keep_alive) = self.elastic;
        let now = Instant::now();
        let active = Self::active(slots);
        let queued: u64 = self.queues.len().iter().sum();
        let mut all_busy = true;
        let mut idle_longest: Option<(usize, Duration)> = None;
        for &i in &active {
            let slot = &mut slots[i];
            let Some(live) = &slot.live else {
                all_busy = false;
                continue;
            };
            let taken = live.taken.load(Ordering::Relaxed);
            let done = live.completed.load(Ordering::Relaxed)
                + live.failed.load(Ordering::Relaxed)
                + live.returned.load(Ordering::Relaxed);
            let busy = taken > done;
            if busy || taken != slot.last_taken || !slot.serving {
                slot.idle_since = None;
            } else {
                let since = *slot.idle_since.get_or_insert(now);
                let idle = now.saturating_duration_since(since);
                if idle_longest.is_none_or(|(_, d)| idle > d) {
                    idle_longest = Some((i, idle));
                }
            }
            all_busy &= busy;
            slot.last_taken = taken;
        }
        if queued > 0 && all_busy && active.len() < max {
            self.target.store(active.len() + 1, Ordering::SeqCst);
            let _ = self.apply_target(slots); // the next check retries anyway
        } else if let Some((i, idle)) = idle_longest
            && idle >= keep_alive
            && active.len() > min
            && self.retire(&mut slots[i])
        {
            self.target.store(active.len() - 1, Ordering::SeqCst);
            slots[i].idle_since = None;
        }
    }

    /// Retires the slot's worker, unless that would leave no free worker for those waiting
    /// on the pool itself (a re-entrant call whose request is queued): then it stays, and
    /// a later check retires it. A serving worker stops counting as alive at once, before
    /// it leaves: with the re-entrancy check in `Blocked::block` (its counter first, then
    /// `alive`; here `alive` first, then the counter, all `SeqCst`), either a worker about
    /// to wait sees it gone and runs its request inline, or this sees that worker waiting
    /// and keeps the slot.
    fn retire(&mut self, slot: &mut Slot) -> bool {
        if slot.serving {
            let alive = self.blocked.alive().saturating_sub(1);
            self.blocked.set_alive(alive);
            if self.blocked.count() > 0 && self.blocked.count() >= alive {
                self.blocked.set_alive(alive + 1);
                return false;
            }
            slot.serving = false;
        }
        slot.retiring = true;
        if let Some(retire) = slot.retire.take() {
            retire.retire();
        }
        true
    }
}
