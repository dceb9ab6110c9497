//! The supervisor's side of concurrency limits and per-key queues at shutdown: the gates it
//! keeps (to drain them), whether they are drained, and the queues of a per-key worker that
//! is dead for good.

use std::sync::Arc;

use super::{Slot, Supervisor, hand_back};
use crate::gate::Gate;
use crate::ids::RequestId;

impl<'p, Req: Send + 'p, Resp: Send + 'p> Supervisor<'p, Req, Resp> {
    /// During a shutdown, with per-key queues: the queues of a worker that is dead for good
    /// (no replacement will come) are handed back now, since no other worker may run its
    /// keys. So a limit whose permits they hold moves on, and intake can close.
    pub(super) fn release_dead_keys(
        &self,
        slots: &[Slot<'p>],
        unstarted: &mut Vec<(RequestId, Req)>,
        cancelled: &mut u64,
    ) {
        if !self.shutting_down || !self.per_key {
            return;
        }
        for (i, slot) in slots.iter().enumerate() {
            if !slot.running && slot.respawn_at.is_none() && !slot.retired {
                self.queues
                    .drain_queue(i, |job| hand_back(job, unstarted, cancelled));
            }
        }
    }

    /// Takes over the gates registered since the last look, dropping those nothing else
    /// holds any more (amortized: whenever the list doubled). A gate nobody holds has no
    /// handle to submit through and no request past it, so nothing waits at it either.
    pub(super) fn collect_gates(&mut self) {
        while let Ok(gate) = self.new_gates.try_recv() {
            self.gates.push(gate);
            if self.gates.len().is_power_of_two() {
                self.gates
                    .retain(|g| Arc::strong_count(g) > 1 || !g.is_idle());
            }
        }
    }

    /// Whether nothing waits at a gate or is on its way out. One that has requests waiting
    /// and no permit held is pumped here, as a guard (see `gate`).
    pub(super) fn gate_drained(&self, gate: &Arc<Gate<Req, Resp>>) -> bool {
        if gate.is_drained() {
            return true;
        }
        // Also once the stop flag is set: a submit that was in progress at the hand-back
        // can land at the gate after it, and no permit is left to move it on. Pumped, it
        // reaches a worker, which hands it back (or the final drain does).
        if gate.held() == 0 {
            gate.pump();
        }
        false
    }
}
