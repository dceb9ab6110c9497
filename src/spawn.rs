//! Where a pool's threads come from: the process ([`Global`], for pools that own their
//! data) or a [`std::thread::Scope`] (scoped pools, whose handler and requests borrow from
//! the caller's stack). The runtime, the supervisor's respawns and the metrics thread are
//! written once over [`Spawn`]; only the two impls below differ.

use std::io;
use std::thread::{self, JoinHandle, Scope, ScopedJoinHandle};

/// Something that can start a thread whose closure may borrow for `'s`.
pub(crate) trait Spawn<'s>: Copy + Send + Sync + 's {
    /// Starts `f` on a thread configured by `builder`.
    fn spawn<F, T>(self, builder: thread::Builder, f: F) -> io::Result<Join<'s, T>>
    where
        F: FnOnce() -> T + Send + 's,
        T: Send + 's;
}

/// The process-wide spawner: `thread::Builder::spawn`, for `'static` pools.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Global;

impl Spawn<'static> for Global {
    fn spawn<F, T>(self, builder: thread::Builder, f: F) -> io::Result<Join<'static, T>>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        builder.spawn(f).map(Join::Global)
    }
}

impl<'s, 'env> Spawn<'s> for &'s Scope<'s, 'env> {
    fn spawn<F, T>(self, builder: thread::Builder, f: F) -> io::Result<Join<'s, T>>
    where
        F: FnOnce() -> T + Send + 's,
        T: Send + 's,
    {
        builder.spawn_scoped(self, f).map(Join::Scoped)
    }
}

/// The handle of a thread started by a [`Spawn`].
#[derive(Debug)]
pub(crate) enum Join<'s, T> {
    Global(JoinHandle<T>),
    Scoped(ScopedJoinHandle<'s, T>),
}

impl<T> Join<'_, T> {
    /// Waits for the thread; `Err` with its panic payload if it panicked.
    pub(crate) fn join(self) -> thread::Result<T> {
        match self {
            Join::Global(h) => h.join(),
            Join::Scoped(h) => h.join(),
        }
    }
}
