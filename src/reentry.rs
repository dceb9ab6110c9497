//! Recognising a handler that calls back into its own pool, and running a job inline for it.
//!
//! A worker thread records, in a thread-local, which pool it serves and how to run one of
//! that pool's jobs on the spot (an [`Inline`]). A `call` or blocking `submit` made from such
//! a thread into the same pool finds it here; see the intake's re-entrancy rule. Nothing in
//! here is shared between threads.

use std::any::Any;
use std::cell::RefCell;
use std::rc::Rc;

use crate::message::Job;

thread_local! {
    /// On a worker thread: the id of its pool, and how to run one of that pool's jobs inline
    /// (an `Inline<Req, Resp>`). Set once the worker's `init` ran, cleared when it exits. It
    /// is how a handler that calls back into its own pool is recognised (see
    /// [`inline_runner`]); a thread-local, not shared state: no other thread reads it.
    static CURRENT: RefCell<Option<(u64, Rc<dyn Any>)>> = const { RefCell::new(None) };
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
) -> Option<Rc<Inline<Req, Resp>>> {
    CURRENT.with(|c| match &*c.borrow() {
        Some((id, inline)) if *id == pool => Rc::clone(inline).downcast().ok(),
        _ => None,
    })
}

/// Whether this thread is a worker of pool `pool`.
pub(crate) fn is_worker_of(pool: u64) -> bool {
    CURRENT.with(|c| matches!(&*c.borrow(), Some((id, _)) if *id == pool))
}

impl<Req, Resp> Inline<Req, Resp> {
    /// Wraps the function that runs one job inline.
    pub(crate) fn new(run: Box<dyn Fn(Job<Req, Resp>)>) -> Self {
        Inline { run }
    }
}

/// Records this thread as a worker of `pool`, running inline with `inline`.
pub(crate) fn enter<Req: 'static, Resp: 'static>(pool: u64, inline: Inline<Req, Resp>) {
    let inline: Rc<dyn Any> = Rc::new(inline);
    CURRENT.with(|c| *c.borrow_mut() = Some((pool, inline)));
}

/// Forgets this thread's pool; returns what was recorded, for the caller to drop.
pub(crate) fn leave() -> Option<Rc<dyn Any>> {
    CURRENT
        .with(|c| c.borrow_mut().take())
        .map(|(_, inline)| inline)
}
