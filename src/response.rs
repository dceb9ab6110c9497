//! [`Response`]: what a worker sends back for each stream request.

use std::time::Duration;

use crate::error::JobError;
use crate::ids::{RequestId, WorkerId};

/// The result of one request submitted with `submit`, `try_submit` or `submit_timeout`,
/// as it arrives on the responses channel.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Response<Resp> {
    /// The id that `submit` returned.
    pub id: RequestId,
    /// The worker that ran it.
    pub worker: WorkerId,
    /// The handler's value, or `Err(JobError::Panicked(message))` when it panicked.
    pub outcome: Result<Resp, JobError>,
    /// Time from the submit to the start of the handler (zero with `.metrics(false)`, and
    /// for a job that [`timing_sample`](crate::Builder::timing_sample) left untimed).
    pub queue_time: Duration,
    /// Time spent in the handler (zero with `.metrics(false)`, and for an untimed job).
    pub handler_time: Duration,
}

impl<Resp> Response<Resp> {
    /// Returns the handler's value, or the error when it panicked.
    ///
    /// # Errors
    ///
    /// `JobError::Panicked` when the handler panicked on this request.
    pub fn into_result(self) -> Result<Resp, JobError> {
        self.outcome
    }
}
