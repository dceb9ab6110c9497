//! Re-entrancy at the intake: whether a worker of this pool that would wait on the pool may
//! (counting itself blocked meanwhile) or must run its request inline (see the module docs
//! of [`intake`](super)).

use std::rc::Rc;

use crossbeam_channel::Receiver;

use super::Handle;
use crate::message::Reply;
use crate::reentry::{Blocked, Inline};

/// Whether a re-entrant caller may wait or must run its request inline.
pub(super) enum Reentry<'a, Req, Resp> {
    /// Not a worker of this pool, or another worker is free: wait as usual (the guard, if
    /// any, counts this worker as blocked until it is dropped).
    Wait(Option<WaitGuard<'a>>),
    /// Waiting would leave no worker free: run it here.
    Inline(Rc<Inline<Req, Resp>>),
}

/// A `call` under way: the reply's receiver, and for a worker of this pool the guard that
/// counts it as blocked until the answer arrives.
pub(crate) type Begun<'a, Req, Resp> = (Receiver<Reply<Req, Resp>>, Option<WaitGuard<'a>>);

/// Counts one worker as blocked in a re-entrant wait while it lives.
pub(crate) struct WaitGuard<'a>(&'a Blocked, usize);

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.unblock(self.1);
    }
}

impl<Req: Send, Resp: Send> Handle<Req, Resp> {
    /// Whether this thread, a worker of this pool, may block on it (marking itself
    /// blocked), or must run its request inline because waiting could deadlock: no other
    /// worker free, or — with per-key queues — the request's own worker (`target`, computed
    /// only for a re-entrant caller) is this one or is blocked too.
    pub(super) fn reentry(&self, target: impl FnOnce() -> Option<usize>) -> Reentry<'_, Req, Resp> {
        let Some((me, inline)) = self.inline_runner() else {
            return Reentry::Wait(None);
        };
        let blocked = &*self.shared.blocked;
        if blocked.block(me, target()) {
            Reentry::Wait(Some(WaitGuard(blocked, me)))
        } else {
            Reentry::Inline(inline)
        }
    }
}
