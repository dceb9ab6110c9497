//! [`JobContext`]: what a handler learns about the job it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use crate::ids::{RequestId, WorkerId};

/// What a handler built with [`Builder::build_with_context`] learns about its job.
///
/// [`Builder::build_with_context`]: crate::Builder::build_with_context
#[derive(Debug)]
pub struct JobContext {
    worker: WorkerId,
    request: RequestId,
    deadline: Option<Instant>,
    stop: Arc<AtomicBool>,
}

impl JobContext {
    /// The worker running the job.
    pub fn worker(&self) -> WorkerId {
        self.worker
    }

    /// The id of the request being handled.
    pub fn request(&self) -> RequestId {
        self.request
    }

    /// The deadline the request was submitted with, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the orchestrator asked running jobs to stop early: true once `shutdown_now`
    /// was called or a `shutdown_timeout` expired. A cheap load; poll it in long loops. What
    /// the handler returns after noticing it is still delivered as its response.
    pub fn is_cancelled(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

impl JobContext {
    /// The context of jobs run by worker `worker`; `stop` is the pool's stop flag.
    pub(crate) fn new(worker: WorkerId, stop: Arc<AtomicBool>) -> Self {
        JobContext {
            worker,
            request: RequestId(0),
            deadline: None,
            stop,
        }
    }

    /// Points the context at the next job.
    pub(crate) fn set_job(&mut self, request: RequestId, deadline: Option<Instant>) {
        self.request = request;
        self.deadline = deadline;
    }
}
