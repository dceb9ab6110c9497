//! The limits and defaults of every setting. Plain values: imports nothing of ours.

use std::time::Duration;

/// The default bound on queued requests.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;
/// The default period of metrics snapshots.
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_millis(100);
/// The largest accepted `workers`: beyond it `build` fails instead of exhausting threads.
///
/// Each worker is an OS thread: its stack is reserved up front (std's default is 2 MiB of
/// address space, of which only the pages touched become memory) and it takes a few kernel
/// memory mappings. Linux's default `vm.max_map_count` (65,530) runs out at about 16,000
/// threads in one process, and a thread that cannot set up its guard page aborts the whole
/// process, so the limit stays well below that, leaving room for several pools.
pub const MAX_WORKERS: usize = 4096;
/// The largest accepted `queue_capacity` and `response_capacity`. A bounded channel allocates
/// its slots up front: about `capacity × (size_of::<Req>() + 48)` bytes for the queue (so
/// 80 MiB for a 32-byte request at this limit), and the same order for the responses.
pub const MAX_QUEUE_CAPACITY: usize = 1 << 20;
/// The longest effective `metrics_interval`: a longer one (up to `Duration::MAX`) is accepted
/// and acts as this, so that no deadline computed from it can overflow.
pub const MAX_METRICS_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);
/// The largest effective `timing_sample`: one job in about a million is timed at least.
pub const MAX_TIMING_SAMPLE: usize = 1 << 20;
/// The smallest accepted `stack_size`: below it a worker could overflow its stack in this
/// crate's own code (a stack overflow aborts the process).
pub const MIN_STACK_SIZE: usize = 64 * 1024;
/// The default prefix of thread names.
pub const DEFAULT_THREAD_NAME: &str = "orchestrator";

/// The default [`Builder::priority_burst`](crate::Builder::priority_burst): a waiting
/// request lets at most this many more urgent ones pass in a row.
pub const DEFAULT_PRIORITY_BURST: usize = 8;

/// How long a worker above an elastic pool's minimum may stay idle by default.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(60);
