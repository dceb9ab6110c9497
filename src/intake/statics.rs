//! What only a pool of `'static` request and response types has (see [`Statics`]).

use std::rc::Rc;

use super::{Handle, ReplyPair, calls};
use crate::distribution::ByKey;
use crate::reentry::{self, Inline};

/// What only a pool of `'static` request and response types has, as functions made where
/// the types are known to be `'static`: the thread-locals that recognise a re-entrant
/// caller and cache reply channels, and per-key queues (whose key function takes `&dyn Any`).
/// A scoped pool has none of them: its handler cannot reach the pool, its calls take reply
/// channels from the pool's shared stock, and it has no per-key queues.
/// A worker's inline runner for a re-entrant caller: its index and the runner.
/// Keeps a reply pair in the thread's cache; gives it back if the cache is taken.
type KeepReply<Req, Resp> = fn(u64, ReplyPair<Req, Resp>) -> Option<ReplyPair<Req, Resp>>;

type Runner<Req, Resp> = Option<(usize, Rc<Inline<Req, Resp>>)>;

pub(crate) struct Statics<Req, Resp> {
    pub(super) inline_runner: fn(u64) -> Runner<Req, Resp>,
    pub(super) take_reply: fn(u64) -> Option<ReplyPair<Req, Resp>>,
    pub(super) keep_reply: KeepReply<Req, Resp>,
    pub(super) key_queue: fn(&ByKey, &Req, usize) -> usize,
}

impl<Req: 'static, Resp: 'static> Statics<Req, Resp> {
    pub(crate) fn new() -> Self {
        Statics {
            inline_runner: reentry::inline_runner::<Req, Resp>,
            take_reply: calls::cached_reply::<Req, Resp>,
            keep_reply: calls::keep_reply::<Req, Resp>,
            key_queue: ByKey::queue::<Req>,
        }
    }
}

impl<Req: Send, Resp: Send> Handle<Req, Resp> {
    /// If this thread is a worker of this pool (of `'static` types), the way to run one of
    /// its jobs here.
    pub(super) fn inline_runner(&self) -> Runner<Req, Resp> {
        (self.shared.statics.as_ref()?.inline_runner)(self.shared.pool)
    }

    /// The per-key queue of `req` among `n`.
    pub(super) fn key_of(&self, key: &ByKey, req: &Req, n: usize) -> usize {
        let statics = self.shared.statics.as_ref();
        // Per-key queues need `'static` requests (`Distribution::by_key` says so): a pool
        // that has them has the statics.
        (statics.expect("by_key pools have 'static types").key_queue)(key, req, n)
    }
}
