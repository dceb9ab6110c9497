//! What a shutdown did: the [`ShutdownReport`] a shutdown returns, and the
//! [`ShutdownSummary`] every subscriber gets last. Plain data, with the same totals.

use std::fmt;
use std::time::Duration;

use crate::ids::RequestId;

/// What a shutdown did, returned by [`Orchestrator::shutdown`](crate::Orchestrator::shutdown) and its siblings.
///
/// Every accepted request is in exactly one place: answered (counted in `completed` or
/// `failed`), handed back in `unstarted`, or handed back to its `call` (counted in
/// `cancelled`).
#[non_exhaustive]
pub struct ShutdownReport<Req> {
    /// Requests accepted over the orchestrator's life: `completed + failed + unstarted.len() + cancelled`.
    pub submitted: u64,
    /// Jobs whose handler returned a value (`call`s included).
    pub completed: u64,
    /// Jobs answered with an error: the handler panicked or the deadline had passed (`call`s included).
    pub failed: u64,
    /// Responses nobody could receive: the responses receiver was dropped, or a
    /// `shutdown_timeout` gave up waiting for space. Also counted in `completed` or `failed`.
    pub undelivered: u64,
    /// Stream requests that never started, in no particular order.
    pub unstarted: Vec<(RequestId, Req)>,
    /// `call` requests that never started; each went back to its caller as `CallError::Cancelled`.
    pub cancelled: u64,
    /// Submits that got their request back, over the orchestrator's life.
    pub rejected: u64,
    /// How long the shutdown took.
    pub elapsed: Duration,
}

impl<Req> fmt::Debug for ShutdownReport<Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownReport")
            .field("submitted", &self.submitted)
            .field("completed", &self.completed)
            .field("failed", &self.failed)
            .field("undelivered", &self.undelivered)
            .field("unstarted", &self.unstarted.len())
            .field("cancelled", &self.cancelled)
            .field("rejected", &self.rejected)
            .field("elapsed", &self.elapsed)
            .finish()
    }
}

/// Exact totals, sent as the last [`MetricsEvent`](crate::MetricsEvent). Equal to the
/// [`ShutdownReport`]'s, field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownSummary {
    /// Event sequence number (see [`MetricsEvent::seq`](crate::MetricsEvent::seq)).
    pub seq: u64,
    /// Requests accepted: `completed + failed + unstarted + cancelled`.
    pub submitted: u64,
    /// Jobs whose handler returned a value.
    pub completed: u64,
    /// Jobs answered with an error: the handler panicked, or the deadline had passed.
    pub failed: u64,
    /// Responses nobody could receive (also counted in `completed` or `failed`).
    pub undelivered: u64,
    /// Stream requests handed back in the report's `unstarted`.
    pub unstarted: u64,
    /// `call` requests handed back to their caller as `CallError::Cancelled`.
    pub cancelled: u64,
    /// Submits that got their request back.
    pub rejected: u64,
}
