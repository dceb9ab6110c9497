//! Recognising a handler that calls back into its own pool, and running a job inline for it.
//!
//! A worker thread records, in a thread-local, which pool it serves and how to run one of
//! that pool's jobs on the spot (an [`Inline`]). A `call` or blocking `submit` made from such
//! a thread into the same pool finds it here; see the intake's re-entrancy rule. Nothing in
//! here is shared between threads.

use std::any::Any;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::config::MAX_WORKERS;
use crate::message::Job;

/// (pool id, worker index, its `Inline<Req, Resp>`).
type Current = (u64, usize, Rc<dyn Any>);

thread_local! {
    /// On a worker thread: the id of its pool, and how to run one of that pool's jobs inline
    /// (an `Inline<Req, Resp>`). Set once the worker's `init` ran, cleared when it exits. It
    /// is how a handler that calls back into its own pool is recognised (see
    /// [`inline_runner`]); a thread-local, not shared state: no other thread reads it.
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// Runs one job of a pool on the calling worker thread, with a fresh state from `init`,
/// answering and counting it exactly as a worker would.
pub(crate) struct Inline<Req, Resp> {
    run: Box<dyn Fn(Job<Req, Resp>)>,
}

impl<Req, Resp> Inline<Req, Resp> {
    pub(crate) fn run(&self, job: Job<Req, Resp>) {
        (self.run)(job)
    }
}

/// If this thread is a worker of pool `pool`, the way to run that pool's jobs inline.
pub(crate) fn inline_runner<Req: 'static, Resp: 'static>(
    pool: u64,
) -> Option<(usize, Rc<Inline<Req, Resp>>)> {
    CURRENT.with(|c| match &*c.borrow() {
        Some((id, worker, inline)) if *id == pool => {
            Rc::clone(inline).downcast().ok().map(|i| (*worker, i))
        }
        _ => None,
    })
}

/// Whether this thread is a worker of pool `pool`.
pub(crate) fn is_worker_of(pool: u64) -> bool {
    CURRENT.with(|c| matches!(&*c.borrow(), Some((id, ..)) if *id == pool))
}

impl<Req, Resp> Inline<Req, Resp> {
    /// Wraps the function that runs one job inline.
    pub(crate) fn new(run: Box<dyn Fn(Job<Req, Resp>)>) -> Self {
        Inline { run }
    }
}

/// Records this thread as worker `worker` of `pool`, running inline with `inline`.
pub(crate) fn enter<Req: 'static, Resp: 'static>(
    pool: u64,
    worker: usize,
    inline: Inline<Req, Resp>,
) {
    let inline: Rc<dyn Any> = Rc::new(inline);
    CURRENT.with(|c| *c.borrow_mut() = Some((pool, worker, inline)));
}

/// Forgets this thread's pool; returns what was recorded, for the caller to drop.
pub(crate) fn leave() -> Option<Rc<dyn Any>> {
    CURRENT
        .with(|c| c.borrow_mut().take())
        .map(|(_, _, inline)| inline)
}

/// Which workers of a pool are blocked waiting on the pool itself (a re-entrant `call`, or a
/// blocking `submit` into a full queue), and how many workers are alive.
///
/// A worker marks itself blocked before it checks whether waiting could deadlock, and the
/// check reads the other flags after: with `SeqCst` on both sides, of two workers that would
/// each wait on the other (or on a cycle of others) at least one sees the other's mark and
/// runs its request inline instead. Only re-entrant waits touch these atomics — never an
/// ordinary submit — and each flag is written only by its own worker. `alive` is written
/// only by the supervisor (and set once at start).
#[derive(Debug)]
pub(crate) struct Blocked {
    /// One per possible worker slot (up to `MAX_WORKERS`: a pool can grow). Not padded:
    /// they are written only around re-entrant waits.
    flags: Box<[AtomicBool]>,
    count: AtomicUsize,
    alive: AtomicUsize,
}

impl Blocked {
    /// `workers` workers, all alive, none blocked.
    pub(crate) fn new(workers: usize) -> Self {
        Blocked {
            flags: (0..MAX_WORKERS).map(|_| AtomicBool::new(false)).collect(),
            count: AtomicUsize::new(0),
            alive: AtomicUsize::new(workers),
        }
    }

    /// Marks worker `me` blocked, if waiting cannot deadlock: another alive worker is not
    /// blocked, and — for a per-key queue, which only its own worker `target` serves — that
    /// worker is not `me` and not blocked itself. Returns whether it may wait (then it must
    /// [`unblock`](Self::unblock) when done); otherwise it runs the request inline.
    pub(crate) fn block(&self, me: usize, target: Option<usize>) -> bool {
        self.flags[me].store(true, Ordering::SeqCst);
        let blocked = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        let stuck = blocked >= self.alive.load(Ordering::SeqCst)
            || target.is_some_and(|t| t == me || self.flags[t].load(Ordering::SeqCst));
        if stuck {
            self.unblock(me);
        }
        !stuck
    }

    /// Worker `me` stopped waiting.
    pub(crate) fn unblock(&self, me: usize) {
        self.flags[me].store(false, Ordering::SeqCst);
        self.count.fetch_sub(1, Ordering::SeqCst);
    }

    /// How many workers are blocked on the pool now.
    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// How many worker threads are alive (past `init`, not exited).
    pub(crate) fn alive(&self) -> usize {
        self.alive.load(Ordering::SeqCst)
    }

    /// The supervisor's count of alive workers changed.
    pub(crate) fn set_alive(&self, n: usize) {
        self.alive.store(n, Ordering::SeqCst);
    }
}
