//! The identities of requests and workers: plain values, shared by every layer.

use std::fmt;

/// The id of an accepted request, unique per orchestrator, as [`submit`] returned it.
///
/// Ids increase in the order requests are accepted through one handle, and are unique
/// across all handles of the same orchestrator.
///
/// [`submit`]: crate::Orchestrator::submit
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct RequestId(pub(crate) u64);

impl RequestId {
    /// The id as a number.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The index of a worker, `0..workers`. A replacement thread keeps the id of the one it replaces.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct WorkerId(pub(crate) usize);

impl WorkerId {
    /// The index as a number, `0..workers`.
    pub fn index(self) -> usize {
        self.0
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}
