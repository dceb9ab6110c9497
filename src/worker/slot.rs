//! What belongs to one worker slot rather than to the pool: its live totals and the signal
//! that retires it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, Sender};

use crate::message::{Live, Never};

/// What belongs to one worker slot rather than to the pool: its live totals (which a
/// replacement continues), and the signal that retires it (a shrinking pool).
pub(crate) struct Slot {
    pub(crate) live: Option<Live>,
    /// Set by the supervisor when it retires this worker: it leaves after its current job.
    pub(crate) retire: Arc<AtomicBool>,
    /// Disconnected by the supervisor when it retires this worker: wakes it if idle.
    pub(crate) retired: Receiver<Never>,
}

/// The supervisor's end of a [`Slot`]: setting the flag and dropping the sender retires it.
pub(crate) struct Retire {
    pub(crate) flag: Arc<AtomicBool>,
    pub(crate) wake: Sender<Never>,
}

impl Slot {
    /// A fresh slot for a worker thread, and the handle that retires it.
    pub(crate) fn new(live: Option<Live>) -> (Slot, Retire) {
        let flag = Arc::new(AtomicBool::new(false));
        // Capacity 1: nothing is ever sent (see `abort` in the runtime).
        let (wake, retired) = crossbeam_channel::bounded(1);
        let slot = Slot {
            live,
            retire: Arc::clone(&flag),
            retired,
        };
        (slot, Retire { flag, wake })
    }
}

impl Retire {
    /// Retires the worker: after its current job, or at once if it is idle.
    pub(crate) fn retire(self) {
        // Written once, read with `Relaxed` by its worker after each job: a stale read only
        // means one more job before it leaves. The disconnect wakes an idle worker.
        self.flag.store(true, Ordering::Relaxed);
        drop(self.wake);
    }
}
