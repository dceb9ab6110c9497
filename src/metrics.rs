//! Plain data: the snapshots and events that subscribers receive, and the histogram behind
//! the latency percentiles.
//!
//! Nothing here is shared between threads: a worker fills its own [`Histogram`], sends it to
//! the metrics thread by value, and the metrics thread merges it into totals that only it owns.

use std::fmt;
use std::time::Duration;

use crate::ids::{RequestId, WorkerId};
use crate::priority::ByPriority;
use crate::report::ShutdownSummary;

/// A point-in-time view of the whole orchestrator, as [`Orchestrator::metrics`] returns it and
/// [`MetricsEvent::Snapshot`] streams it.
///
/// With metrics on (the default) the counts — `submitted`, `completed`, `failed`, `queued`,
/// `in_flight` and each worker's `completed`, `failed` and `state` — are live: every worker
/// keeps its running totals where the metrics thread reads them for each snapshot, so they
/// are exact at the moment they are read (a job that finished between two reads may show a
/// moment late, never early: counts never overshoot). The latency summaries, `undelivered`,
/// `throughput` and the busy fractions come with the workers' batched reports and may lag by
/// up to one `metrics_interval`. The totals in the final [`ShutdownSummary`] are exact. With
/// `.metrics(false)` the workers keep no live totals and send their counts only when they
/// stop, so a running orchestrator reports zeros.
///
/// [`Orchestrator::metrics`]: crate::Orchestrator::metrics
/// [`ShutdownSummary`]: crate::ShutdownSummary
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Event sequence number, shared with every other [`MetricsEvent`] this orchestrator sent.
    pub seq: u64,
    /// Time since the orchestrator was built.
    pub uptime: Duration,
    /// Requests accepted (their submit returned `Ok`), `call`s included. Rejected ones are not.
    pub submitted: u64,
    /// Submits and calls that got their request back (`Full`, `Timeout`, `ShutDown`).
    pub rejected: u64,
    /// Jobs whose handler returned a value.
    pub completed: u64,
    /// Jobs answered with an error: the handler panicked, or the deadline had passed.
    pub failed: u64,
    /// Responses that nobody could receive (the responses receiver was dropped, or a
    /// `shutdown_timeout` gave up on a full response channel). Counted in `completed`/`failed` too.
    pub undelivered: u64,
    /// `call` requests answered `CallError::Cancelled` by a shutdown.
    pub cancelled: u64,
    /// Requests in the queue(s), accepted but not yet taken by a worker.
    pub queued: u64,
    /// Requests taken by a worker and not yet finished: at most one per worker, plus the
    /// requests a worker runs inline for a handler that called its own pool.
    pub in_flight: u64,
    /// Jobs finished (completed + failed) per second over the last interval.
    pub throughput: f64,
    /// Handler time of every finished job since the start.
    pub latency: LatencySummary,
    /// Time from submit to the start of the handler, of every started job since the start.
    pub queue_wait: LatencySummary,
    /// `queued`, per [`Priority`](crate::Priority) (requests waiting at a
    /// [limit](crate::Orchestrator::limited) count at the priority they were submitted with).
    pub queued_by_priority: ByPriority<u64>,
    /// `queue_wait`, per [`Priority`](crate::Priority): how long requests of each priority
    /// waited (for a limited request, its wait at the limit included). Boxed, so that a
    /// subscriber's buffer of events stays small.
    pub queue_wait_by_priority: Box<ByPriority<LatencySummary>>,
    /// Subscribers evicted so far because their buffer was full (one whose receiver was
    /// dropped while full counts here too: without a send the two look alike).
    pub evicted_subscribers: u64,
    /// Subscribers currently attached.
    pub subscribers: usize,
    /// One entry per worker, in `WorkerId` order.
    pub workers: Vec<WorkerSnapshot>,
}

/// What one worker has done, inside a [`MetricsSnapshot`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct WorkerSnapshot {
    /// Which worker.
    pub id: WorkerId,
    /// Its lifecycle state, as the supervisor and its last report know it.
    pub state: WorkerState,
    /// Jobs it finished with a value.
    pub completed: u64,
    /// Jobs it answered with an error (handler panic, passed deadline).
    pub failed: u64,
    /// Fraction of the last interval it spent inside the handler, `0.0..=1.0`.
    pub busy: f64,
    /// How often its state was rebuilt (after a handler panic) or its thread replaced.
    pub restarts: u64,
}

/// A worker's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WorkerState {
    /// Its thread is running `init`.
    Starting,
    /// Waiting for work.
    Idle,
    /// Running jobs.
    Busy,
    /// Rebuilding its state after a panic, or its thread is being replaced.
    Restarting,
    /// Its thread has exited.
    Stopped,
    /// Retired by a shrinking pool (`resize`, or idle past the elastic keep-alive).
    Retired,
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WorkerState::Starting => "starting",
            WorkerState::Idle => "idle",
            WorkerState::Busy => "busy",
            WorkerState::Restarting => "restarting",
            WorkerState::Stopped => "stopped",
            WorkerState::Retired => "retired",
        })
    }
}

/// The live counts of one concurrency limit, as [`Limited::metrics`] returns them.
///
/// [`Limited::metrics`]: crate::Limited::metrics
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct LimitSnapshot {
    /// The limit: the most of its requests that may be past it at once.
    pub limit: usize,
    /// Its requests past the limit now: running, or handed to a worker's queue to run next.
    /// Never above `limit`.
    pub in_flight: usize,
    /// Its requests waiting for their turn (they hold no worker).
    pub queued: usize,
}

/// Percentiles of a set of durations. Values are exact for durations under 8 ns and within
/// 12.5% above that (a log-linear histogram); `max` is exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct LatencySummary {
    /// How many durations were recorded.
    pub count: u64,
    /// The median.
    pub p50: Duration,
    /// The 90th percentile.
    pub p90: Duration,
    /// The 99th percentile.
    pub p99: Duration,
    /// The largest recorded duration.
    pub max: Duration,
}

/// One message of a metrics subscription; see [`Orchestrator::subscribe`].
///
/// [`Orchestrator::subscribe`]: crate::Orchestrator::subscribe
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
#[allow(clippy::large_enum_variant)] // by value: users match on it; events are not per job
pub enum MetricsEvent {
    /// The periodic snapshot, every `metrics_interval`.
    Snapshot(MetricsSnapshot),
    /// A worker changed lifecycle state.
    Worker(WorkerEvent),
    /// The last event: exact totals. The channel disconnects after it.
    Shutdown(ShutdownSummary),
}

impl MetricsEvent {
    /// The event's sequence number. Numbers increase by one per event the orchestrator
    /// broadcasts, so a subscriber sees consecutive numbers from its first event to its last;
    /// a subscriber that was evicted simply stops receiving.
    pub fn seq(&self) -> u64 {
        match self {
            MetricsEvent::Snapshot(s) => s.seq,
            MetricsEvent::Worker(w) => w.seq,
            MetricsEvent::Shutdown(s) => s.seq,
        }
    }
}

/// A worker lifecycle change, inside [`MetricsEvent::Worker`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkerEvent {
    /// Event sequence number (see [`MetricsEvent::seq`]).
    pub seq: u64,
    /// Which worker.
    pub worker: WorkerId,
    /// What happened.
    pub kind: WorkerEventKind,
}

/// What happened to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WorkerEventKind {
    /// Its thread finished `init` and is serving.
    Started,
    /// Its handler panicked on a request (the message); the request is answered
    /// `JobError::Panicked` and the worker rebuilds its state.
    Panicked {
        /// The request whose handler panicked.
        request: RequestId,
        /// The panic message.
        message: String,
    },
    /// It rebuilt its state with `init` after a panic, or a replacement thread started.
    Restarted,
    /// Its thread died outside the handler (the message); the supervisor replaces it.
    Died(String),
    /// Its thread exited during shutdown.
    Stopped,
    /// A new worker, started because the pool grew (`resize`, or an elastic pool under load).
    Added,
    /// Retired because the pool shrank (`resize`, or idle past the elastic keep-alive); not
    /// a death: nothing is replaced.
    Retired,
}

/// Bits of linear sub-bucket per power of two: 3 bits → at most 12.5% relative error.
const SUB_BITS: u32 = 3;
const SUB: usize = 1 << SUB_BITS;
/// Values at or above 2^MAX_EXP ns (~68.7 s) share the last bucket; `max` stays exact.
const MAX_EXP: u32 = 36;
pub(crate) const BUCKETS: usize = SUB + (MAX_EXP - SUB_BITS) as usize * SUB;

/// A log-linear histogram of nanosecond durations, fixed size, no allocation. Counts are
/// `u64`: the metrics thread's lifetime totals must not saturate (2^32 jobs is an hour or two).
///
/// Bucket `v` holds value `v` exactly for `v < 8`; above that each power of two is split into
/// 8 equal sub-buckets. Recording is a leading-zero count, a shift and an increment.
#[derive(Clone)]
pub(crate) struct Histogram {
    counts: [u64; BUCKETS],
    total: u64,
    max: u64,
    sum: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: [0; BUCKETS],
            total: 0,
            max: 0,
            sum: 0,
        }
    }
}

impl Histogram {
    fn index(v: u64) -> usize {
        if v < SUB as u64 {
            return v as usize;
        }
        let exp = 63 - v.leading_zeros();
        if exp >= MAX_EXP {
            return BUCKETS - 1;
        }
        let sub = ((v >> (exp - SUB_BITS)) as usize) & (SUB - 1);
        SUB + (exp - SUB_BITS) as usize * SUB + sub
    }

    /// The smallest value that lands in bucket `i`.
    fn lower_bound(i: usize) -> u64 {
        if i < SUB {
            return i as u64;
        }
        let exp = (i - SUB) / SUB + SUB_BITS as usize;
        let sub = ((i - SUB) % SUB) as u64;
        (1u64 << exp) + (sub << (exp - SUB_BITS as usize))
    }

    pub(crate) fn record(&mut self, nanos: u64) {
        let i = Self::index(nanos);
        self.counts[i] += 1;
        self.total += 1;
        self.sum = self.sum.saturating_add(nanos);
        self.max = self.max.max(nanos);
    }

    pub(crate) fn sum_nanos(&self) -> u64 {
        self.sum
    }

    /// How many durations were recorded.
    pub(crate) fn count(&self) -> u64 {
        self.total
    }

    pub(crate) fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += *b;
        }
        self.total += other.total;
        self.sum = self.sum.saturating_add(other.sum);
        self.max = self.max.max(other.max);
    }

    /// The value at quantile `q` (0.0..=1.0): the lower bound of the bucket holding the
    /// `ceil(q * total)`-th smallest value, capped at the exact maximum.
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::lower_bound(i).min(self.max);
            }
        }
        self.max
    }

    pub(crate) fn summary(&self) -> LatencySummary {
        LatencySummary {
            count: self.total,
            p50: Duration::from_nanos(self.quantile(0.50)),
            p90: Duration::from_nanos(self.quantile(0.90)),
            p99: Duration::from_nanos(self.quantile(0.99)),
            max: Duration::from_nanos(self.max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_bounds_round_trip() {
        let mut last = 0;
        for v in (0..100_000u64).chain([1 << 20, (1 << 30) + 12345, 1 << 35]) {
            let i = Histogram::index(v);
            assert!(i >= last || v < 100_000, "index went backwards at {v}");
            last = i;
            let lo = Histogram::lower_bound(i);
            assert!(lo <= v, "lower bound {lo} above value {v}");
            assert!(v - lo <= v / 8, "bucket of {v} starts too low at {lo}");
        }
        assert_eq!(Histogram::index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_within_error_and_max_exact() {
        let mut h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert_eq!(s.max, Duration::from_micros(1000));
        let p50 = s.p50.as_nanos() as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 <= 0.125, "p50 {p50}");
        let p99 = s.p99.as_nanos() as f64;
        assert!((p99 - 990_000.0).abs() / 990_000.0 <= 0.125, "p99 {p99}");
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.record(5);
        b.record(7);
        b.record(1_000_000);
        a.merge(&b);
        assert_eq!(a.summary().count, 3);
        assert_eq!(a.summary().max, Duration::from_nanos(1_000_000));
        assert_eq!(a.quantile(0.0), 5);
    }
}
