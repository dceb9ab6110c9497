//! [`Limited`]: a submitting handle with a concurrency limit inside the pool.

use std::fmt;
use std::time::{Duration, Instant};

use crate::config::MAX_QUEUE_CAPACITY;
use crate::error::{CallError, CallTimeoutError, SubmitError, SubmitTimeoutError, TrySubmitError};
use crate::ids::RequestId;
use crate::intake::{Dest, Handle, Intake, Limit};
use crate::metrics::LimitSnapshot;
use crate::priority::NORMAL;
use crate::runtime::deadline_after;
use crate::submitting::submitting_methods;

/// A submitting handle whose requests run at most `k` at once, on the pool's own workers.
/// Made by [`Orchestrator::limited`](crate::Orchestrator::limited) (see there for the
/// whole contract).
///
/// `Clone + Send + Sync + 'static`, with the submitting methods of a
/// [`Submitter`](crate::Submitter). Clones share the limit. It does not keep the
/// orchestrator alive: after any shutdown, every method hands the request back as
/// `ShutDown`.
pub struct Limited<Req, Resp> {
    handle: Handle<Req, Resp>,
    limit: Limit<Req, Resp>,
}

impl<Req, Resp> fmt::Debug for Limited<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limited")
            .field("limit", &self.limit.gate.limit())
            .field("in_flight", &self.limit.gate.held())
            .field("queued", &self.limit.gate.waiting())
            .finish_non_exhaustive()
    }
}

impl<Req, Resp> Clone for Limited<Req, Resp> {
    fn clone(&self) -> Self {
        Limited {
            handle: self.handle.fork(),
            limit: self.limit.clone(),
        }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Limited<Req, Resp> {
    pub(crate) fn new(handle: &Handle<Req, Resp>, k: usize, capacity: usize) -> Self {
        assert!(
            k > 0,
            "limited(0): a concurrency limit must let at least one request run"
        );
        assert!(
            (1..=MAX_QUEUE_CAPACITY).contains(&capacity),
            "limited_with_capacity: capacity must be in 1..={MAX_QUEUE_CAPACITY}, got {capacity}"
        );
        let handle = handle.fork();
        let limit = handle.limit(k, capacity);
        Limited { handle, limit }
    }

    fn with_intake<T>(&self, f: impl FnOnce(Option<&Intake<Req, Resp>>) -> T) -> T {
        self.handle.submitting(f)
    }

    fn dest(&self, lane: usize) -> Dest<'_, Req, Resp> {
        Dest::Gate(&self.limit, lane)
    }

    /// The limit: the most requests of this handle (and its clones) that run at once.
    pub fn limit(&self) -> usize {
        self.limit.gate.limit()
    }

    /// This limit's live counts: how many of its requests are past the limit (running, or
    /// handed to a worker's queue to run next; never above [`limit`](Self::limit)) and how
    /// many wait for their turn. Read directly, not from the metrics thread: exact at the
    /// moment of the call.
    pub fn metrics(&self) -> LimitSnapshot {
        LimitSnapshot {
            limit: self.limit.gate.limit(),
            in_flight: self.limit.gate.held(),
            queued: self.limit.gate.waiting(),
        }
    }

    submitting_methods!(with_intake);
}
