//! How requests are spread over workers: [`Distribution`] and per-key queues ([`ByKey`]).

use std::any::{Any, TypeId, type_name};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use crate::error::{BuildError, Detail};

/// How requests are spread over the workers.
///
/// For per-key ordering, pass [`Distribution::by_key`] to
/// [`Builder::distribution`](crate::Builder::distribution) instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Distribution {
    /// One bounded MPMC queue that every worker receives from (the default). The first idle
    /// worker takes the next request: the best choice for jobs of uneven length.
    #[default]
    Shared,
    /// One bounded queue per worker; submits rotate over them. Each worker serves its own
    /// queue first, and steals from the others only when its own is empty, so a slow worker
    /// never strands requests while others idle, and a submit only reports `Full` (or blocks)
    /// when every queue is full. The trade-off against `Shared`: producers and workers touch
    /// different queues (less contention when several producers submit short jobs), but a
    /// submit that finds its queue full scans the others, and the total capacity is split
    /// evenly, so one worker's queue holds at most `ceil(queue_capacity / workers)`.
    RoundRobin,
}

impl Distribution {
    /// Per-key queues: requests with the same key always run on the same worker, in submit
    /// order — per-key ordering, like a partitioned log. Pass the result to
    /// [`Builder::distribution`](crate::Builder::distribution).
    ///
    /// One bounded queue per worker, `hash(key) % workers` picks it, and there is no
    /// stealing (it would break the order). The cost: a hot key loads one worker while the
    /// others idle, and a submit blocks (or `try_submit` reports `Full`) when *its* worker's
    /// queue is full, whatever room the others have. While a worker is down (its thread died
    /// and its replacement is not running yet), its keys wait for it: see the crate docs'
    /// Guarantees.
    ///
    /// `Req` must be the orchestrator's request type; [`Builder::build`](crate::Builder::build) checks it. The key
    /// function is owned by the pool and dropped with it (and with the builder, if it is
    /// never built). It runs on the submitting thread: if it panics, the submit panics and
    /// the request is dropped, nothing enqueued.
    ///
    /// # Examples
    ///
    /// ```
    /// use channel_orchestrator::{Distribution, Orchestrator};
    ///
    /// // (account, amount): every update of one account runs on one worker, in order.
    /// let (orch, responses) = Orchestrator::builder()
    ///     .workers(4)
    ///     .distribution(Distribution::by_key(|req: &(u32, i64)| req.0))
    ///     .build(|(account, amount): (u32, i64)| (account, amount))?;
    /// for amount in 0..100 {
    ///     orch.submit((7, amount)).unwrap();
    /// }
    /// let seen: Vec<i64> = responses.iter().take(100).map(|r| r.outcome.unwrap().1).collect();
    /// assert_eq!(seen, (0..100).collect::<Vec<_>>());
    /// # Ok::<(), channel_orchestrator::BuildError>(())
    /// ```
    pub fn by_key<Req, K, F>(key: F) -> ByKey
    where
        Req: 'static,
        K: Hash,
        F: Fn(&Req) -> K + Send + Sync + 'static,
    {
        ByKey {
            hash: Arc::new(move |req: &dyn Any| {
                // `build` checked that requests are `Req`.
                let req = req
                    .downcast_ref::<Req>()
                    .expect("key type checked at build");
                let mut h = DefaultHasher::new();
                key(req).hash(&mut h);
                h.finish()
            }),
            req_type: TypeId::of::<Req>(),
            req_name: type_name::<Req>(),
        }
    }
}

type HashFn = dyn Fn(&dyn Any) -> u64 + Send + Sync;

/// Per-key distribution, made by [`Distribution::by_key`] and passed to
/// [`Builder::distribution`](crate::Builder::distribution). It owns the key function; clones share it.
#[derive(Clone)]
pub struct ByKey {
    hash: Arc<HashFn>,
    req_type: TypeId,
    req_name: &'static str,
}

impl ByKey {
    /// The queue of `req` among `n`.
    pub(crate) fn queue<Req: 'static>(&self, req: &Req, n: usize) -> usize {
        ((self.hash)(req) % n as u64) as usize
    }

    pub(crate) fn check<Req: 'static>(&self) -> Result<(), BuildError> {
        if self.req_type == TypeId::of::<Req>() {
            Ok(())
        } else {
            Err(BuildError::new(Detail::KeyType {
                expected: self.req_name,
                found: type_name::<Req>(),
            }))
        }
    }
}

impl fmt::Debug for ByKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ByKey(&{})", self.req_name)
    }
}

/// What [`Builder::distribution`](crate::Builder::distribution) takes: a [`Distribution`] or a [`ByKey`]. Sealed.
pub trait IntoDistribution: sealed::Sealed {
    #[doc(hidden)]
    fn into_spread(self) -> Spread;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Distribution {}
    impl Sealed for super::ByKey {}
}

impl IntoDistribution for Distribution {
    fn into_spread(self) -> Spread {
        match self {
            Distribution::Shared => Spread::Shared,
            Distribution::RoundRobin => Spread::RoundRobin,
        }
    }
}

impl IntoDistribution for ByKey {
    fn into_spread(self) -> Spread {
        Spread::ByKey(self)
    }
}

/// The distribution a builder was given. (`pub` only for the sealed [`IntoDistribution`].)
#[doc(hidden)]
#[allow(unreachable_pub)]
#[derive(Debug, Clone, Default)]
pub enum Spread {
    #[default]
    Shared,
    RoundRobin,
    ByKey(ByKey),
}
