//! Request priorities ([`Priority`]) and per-priority values ([`ByPriority`]).

use std::fmt;

/// How urgent a request is: a free worker takes the highest-priority waiting request.
///
/// Submit with [`Orchestrator::submit_with_priority`](crate::Orchestrator::submit_with_priority)
/// (or `try_submit_with_priority`, on every submitting handle); the plain submits are
/// [`Normal`](Priority::Normal).
///
/// - **FIFO within a priority**: requests of one priority start in the order they were
///   accepted (per queue: with `RoundRobin`, per worker queue; with `by_key`, per key).
/// - **Nothing starves**: after [`priority_burst(k)`](crate::Builder::priority_burst) (default
///   8) requests of a higher priority in a row have passed a waiting lower-priority request,
///   the worker takes that lower-priority request next. The bound is per worker: each worker
///   counts what it took. It bounds waiting, it does not set shares: under a flood of `High`,
///   `Normal` and `Low` each get about one turn per `k` (a `Normal` turn counts as passing a
///   waiting `Low` one, so `Low` gets slightly more turns than `Normal` then).
/// - **Each priority has its own queue**, bounded by `queue_capacity`: a backlog of batch
///   work never makes an urgent submit block or report `Full`.
///
/// `Ord` follows urgency: `Low < Normal < High`.
///
/// # Examples
///
/// ```
/// use channel_orchestrator::{Orchestrator, Priority};
///
/// let (orch, responses) = Orchestrator::builder().workers(1).build(|x: u32| x)?;
/// for i in 0..100 {
///     orch.submit_with_priority(i, Priority::Low).unwrap();
/// }
/// orch.submit_with_priority(1000, Priority::High).unwrap();
/// let order: Vec<u32> = responses.iter().take(101).map(|r| r.outcome.unwrap()).collect();
/// // The urgent request overtook most of the backlog (the worker may have started a few
/// // low-priority requests before it arrived).
/// let at = order.iter().position(|&x| x == 1000).unwrap();
/// assert!(at < 100);
/// # Ok::<(), channel_orchestrator::BuildError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Priority {
    /// Background work: runs when nothing more urgent waits (or its turn comes by the
    /// starvation bound).
    Low,
    /// The default: what `submit` and the other plain submits use.
    #[default]
    Normal,
    /// Urgent work: taken before anything else waiting.
    High,
}

impl Priority {
    /// Every priority, most urgent first.
    pub const ALL: [Priority; 3] = [Priority::High, Priority::Normal, Priority::Low];

    /// The lane of this priority: 0 for `High`, 1 for `Normal`, 2 for `Low`.
    pub(crate) fn lane(self) -> usize {
        match self {
            Priority::High => 0,
            Priority::Normal => 1,
            Priority::Low => 2,
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Priority::High => "high",
            Priority::Normal => "normal",
            Priority::Low => "low",
        })
    }
}

/// The number of priority lanes.
pub(crate) const LANES: usize = 3;

/// The lane of [`Priority::Normal`]: the one plain submits use.
pub(crate) const NORMAL: usize = 1;

/// One value per [`Priority`], such as the queued requests of each (in
/// [`MetricsSnapshot::queued_by_priority`](crate::MetricsSnapshot::queued_by_priority)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ByPriority<T> {
    /// The value for [`Priority::High`].
    pub high: T,
    /// The value for [`Priority::Normal`].
    pub normal: T,
    /// The value for [`Priority::Low`].
    pub low: T,
}

impl<T> ByPriority<T> {
    /// The value for `priority`.
    pub fn get(&self, priority: Priority) -> &T {
        match priority {
            Priority::High => &self.high,
            Priority::Normal => &self.normal,
            Priority::Low => &self.low,
        }
    }

    /// From the values of the lanes, most urgent first.
    pub(crate) fn from_lanes([high, normal, low]: [T; LANES]) -> Self {
        ByPriority { high, normal, low }
    }
}
