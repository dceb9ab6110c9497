//! The builder: `Option` fields ("not set" is distinct from any value), by-value setters, and
//! all validation in [`Builder::build`].

use std::any::{Any, TypeId, type_name};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::error::{BuildError, BuildErrorKind};
use crate::message::{Response, WorkerId};
use crate::orchestrator::Orchestrator;
use crate::worker::{Forward, Handoff, JobContext};

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

/// How requests are spread over the workers.
///
/// For per-key ordering, pass [`Distribution::by_key`] to
/// [`Builder::distribution`] instead.
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
    /// [`Builder::distribution`].
    ///
    /// One bounded queue per worker, `hash(key) % workers` picks it, and there is no
    /// stealing (it would break the order). The cost: a hot key loads one worker while the
    /// others idle, and a submit blocks (or `try_submit` reports `Full`) when *its* worker's
    /// queue is full, whatever room the others have. While a worker is down (its thread died
    /// and its replacement is not running yet), its keys wait for it: see the crate docs'
    /// Guarantees.
    ///
    /// `Req` must be the orchestrator's request type; [`Builder::build`] checks it. The key
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
/// [`Builder::distribution`]. It owns the key function; clones share it.
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

    fn check<Req: 'static>(&self) -> Result<(), BuildError> {
        if self.req_type == TypeId::of::<Req>() {
            Ok(())
        } else {
            Err(BuildError::new(BuildErrorKind::KeyType {
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

/// What [`Builder::distribution`] takes: a [`Distribution`] or a [`ByKey`]. Sealed.
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

/// Configures and starts an [`Orchestrator`]. Create it with [`Orchestrator::builder`].
///
/// Every setter takes and returns the builder by value; nothing is checked until
/// [`build`](Builder::build).
///
/// # Examples
///
/// ```
/// use channel_orchestrator::{Distribution, Orchestrator};
/// use std::time::Duration;
///
/// let (orch, responses) = Orchestrator::builder()
///     .workers(2)
///     .queue_capacity(64)
///     .distribution(Distribution::RoundRobin)
///     .thread_name("doc")
///     .metrics_interval(Duration::from_millis(50))
///     .build(|x: u64| x * 2)?;
/// orch.submit(21).unwrap();
/// assert_eq!(responses.recv().unwrap().outcome, Ok(42));
/// # Ok::<(), channel_orchestrator::BuildError>(())
/// ```
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until build() is called"]
pub struct Builder {
    workers: Option<usize>,
    queue_capacity: Option<usize>,
    response_capacity: Option<usize>,
    distribution: Spread,
    thread_name: Option<String>,
    metrics_interval: Option<Duration>,
    metrics: Option<bool>,
    timing_sample: Option<usize>,
    stack_size: Option<usize>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) workers: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) response_capacity: Option<usize>,
    pub(crate) distribution: Spread,
    pub(crate) thread_name: String,
    pub(crate) metrics_interval: Duration,
    pub(crate) metrics: bool,
    /// A power of two: one job in this many is timed.
    pub(crate) timing_sample: usize,
    pub(crate) stack_size: Option<usize>,
}

impl Builder {
    /// A builder with every option unset (see each setter for its default).
    pub fn new() -> Self {
        Builder::default()
    }

    /// The number of worker threads. Default: `num_cpus::get()`. `0`, or more than
    /// [`MAX_WORKERS`], makes `build` fail.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// The bound on queued, not yet started requests; `submit` blocks (and `try_submit`
    /// reports `Full`) beyond it. Default: 1024. `0`, or more than [`MAX_QUEUE_CAPACITY`],
    /// makes `build` fail.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = Some(n);
        self
    }

    /// Bounds the responses channel: workers wait for space (back-pressure). Default:
    /// unbounded. `0` makes a rendezvous channel: each response waits for its receive. More
    /// than [`MAX_QUEUE_CAPACITY`] makes `build` fail.
    pub fn response_capacity(mut self, n: usize) -> Self {
        self.response_capacity = Some(n);
        self
    }

    /// How requests are spread over workers: a [`Distribution`], or per-key queues made by
    /// [`Distribution::by_key`]. Default: [`Distribution::Shared`].
    pub fn distribution(mut self, d: impl IntoDistribution) -> Self {
        self.distribution = d.into_spread();
        self
    }

    /// The prefix of thread names: `"{name}-worker-{i}"`, `"{name}-supervisor"`,
    /// `"{name}-metrics"`. Default: `"orchestrator"`. An empty name, or one with a NUL byte,
    /// makes `build` fail.
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.thread_name = Some(name.into());
        self
    }

    /// The period of metrics snapshots, and the most by which counts may lag.
    /// Default: 100 ms. Zero makes `build` fail; anything longer than
    /// [`MAX_METRICS_INTERVAL`] (one day), `Duration::MAX` included, acts as one day.
    pub fn metrics_interval(mut self, interval: Duration) -> Self {
        self.metrics_interval = Some(interval);
        self
    }

    /// Whether to collect metrics (default `true`). With `false`, workers read no clock and
    /// report counts only when they stop: snapshots (still sent every interval) show zero
    /// counts while running, response timings are zero, the final totals stay exact, and
    /// worker events still flow.
    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = Some(on);
        self
    }

    /// With metrics on, time one job in `n` (rounded up to a power of two) instead of every
    /// job. Default: 1, every job. Timing costs three clock reads per job (one at submit, two
    /// in the worker); on machines where reading the clock is slow, sampling brings the cost
    /// of metrics on close to metrics off. Counts stay exact; the latency percentiles come
    /// from the timed jobs (`LatencySummary::count` counts those), the busy fractions are
    /// scaled up from them, and the `queue_time` / `handler_time` of an untimed job's
    /// [`Response`] are zero. `0` makes `build` fail; anything above [`MAX_TIMING_SAMPLE`]
    /// acts as that.
    pub fn timing_sample(mut self, n: usize) -> Self {
        self.timing_sample = Some(n);
        self
    }

    /// The stack size of worker threads, in bytes. Default: std's default (2 MiB). Below
    /// [`MIN_STACK_SIZE`] makes `build` fail; a size the system cannot give fails `build`
    /// with the spawn's I/O error.
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = Some(bytes);
        self
    }

    fn config(self) -> Result<Config, BuildError> {
        let workers = self.workers.unwrap_or_else(num_cpus::get);
        if workers == 0 {
            return Err(BuildError::new(BuildErrorKind::ZeroWorkers));
        }
        if workers > MAX_WORKERS {
            return Err(BuildError::new(BuildErrorKind::TooManyWorkers));
        }
        let queue_capacity = self.queue_capacity.unwrap_or(DEFAULT_QUEUE_CAPACITY);
        if queue_capacity == 0 {
            return Err(BuildError::new(BuildErrorKind::ZeroQueueCapacity));
        }
        if queue_capacity > MAX_QUEUE_CAPACITY {
            return Err(BuildError::new(BuildErrorKind::QueueTooLarge));
        }
        if self
            .response_capacity
            .is_some_and(|c| c > MAX_QUEUE_CAPACITY)
        {
            return Err(BuildError::new(BuildErrorKind::ResponsesTooLarge));
        }
        let metrics_interval = self.metrics_interval.unwrap_or(DEFAULT_METRICS_INTERVAL);
        if metrics_interval.is_zero() {
            return Err(BuildError::new(BuildErrorKind::ZeroMetricsInterval));
        }
        let metrics_interval = metrics_interval.min(MAX_METRICS_INTERVAL);
        let timing_sample = match self.timing_sample.unwrap_or(1) {
            0 => return Err(BuildError::new(BuildErrorKind::ZeroTimingSample)),
            n => n.min(MAX_TIMING_SAMPLE).next_power_of_two(),
        };
        if self.stack_size.is_some_and(|b| b < MIN_STACK_SIZE) {
            return Err(BuildError::new(BuildErrorKind::StackSize));
        }
        let thread_name = self
            .thread_name
            .unwrap_or_else(|| DEFAULT_THREAD_NAME.to_owned());
        if thread_name.is_empty() {
            return Err(BuildError::new(BuildErrorKind::EmptyThreadName));
        }
        if thread_name.contains('\0') {
            return Err(BuildError::new(BuildErrorKind::NulInThreadName));
        }
        Ok(Config {
            workers,
            queue_capacity,
            response_capacity: self.response_capacity,
            distribution: self.distribution,
            thread_name,
            metrics_interval,
            metrics: self.metrics.unwrap_or(true),
            timing_sample,
            stack_size: self.stack_size,
        })
    }

    /// Starts the pool with a stateless handler. Returns the orchestrator and the receiver of
    /// responses to `submit`, `try_submit` and `submit_timeout` (`call` answers directly).
    ///
    /// Dropping the receiver means "I don't want stream responses": workers keep running and
    /// count those responses as undelivered instead of blocking.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] when `workers`, `queue_capacity`, `metrics_interval` or
    /// `timing_sample` is zero, `workers`, `queue_capacity` or `response_capacity` is above
    /// its maximum, `stack_size` is below its minimum, the thread name is empty or holds a NUL
    /// byte, or a thread could not be spawned. No thread is left running.
    #[allow(clippy::type_complexity)] // the pair is the API; an alias would hide it in docs
    pub fn build<Req, Resp, F>(
        self,
        handler: F,
    ) -> Result<(Orchestrator<Req, Resp>, Receiver<Response<Resp>>), BuildError>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        F: Fn(Req) -> Resp + Send + Sync + 'static,
    {
        self.build_with_state(|_: WorkerId| (), move |_: &mut (), req| handler(req))
    }

    /// Starts the pool with per-worker state: `init` runs on each worker thread to create its
    /// state, and again on that thread after its handler panicked (the old state may be
    /// broken). The handler gets `&mut` to its worker's state; the state never leaves its
    /// thread, so it need not be `Send`.
    ///
    /// # Errors
    ///
    /// As [`build`](Builder::build), and also when `init` panics on first start (the message is
    /// in the error), or a [`Distribution::by_key`] function takes another type than `Req`.
    ///
    /// # Examples
    ///
    /// ```
    /// use channel_orchestrator::Orchestrator;
    ///
    /// let (orch, _responses) = Orchestrator::builder()
    ///     .workers(2)
    ///     .build_with_state(|_worker| String::with_capacity(64), |buf: &mut String, n: u32| {
    ///         buf.clear();
    ///         buf.push_str(&n.to_string());
    ///         buf.len()
    ///     })?;
    /// assert_eq!(orch.call(12345).unwrap(), 5);
    /// # Ok::<(), channel_orchestrator::BuildError>(())
    /// ```
    #[allow(clippy::type_complexity)] // the pair is the API; an alias would hide it in docs
    pub fn build_with_state<Req, Resp, S, I, H>(
        self,
        init: I,
        handler: H,
    ) -> Result<(Orchestrator<Req, Resp>, Receiver<Response<Resp>>), BuildError>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        S: 'static,
        I: Fn(WorkerId) -> S + Send + Sync + 'static,
        H: Fn(&mut S, Req) -> Resp + Send + Sync + 'static,
    {
        self.build_with_context(init, move |state: &mut S, _: &JobContext, req| {
            handler(state, req)
        })
    }

    /// As [`build_with_state`](Builder::build_with_state), with a [`JobContext`] for each job:
    /// the worker and request ids, the request's deadline, and
    /// [`is_cancelled`](JobContext::is_cancelled), which turns true when `shutdown_now` is
    /// called or a `shutdown_timeout` expires, so long jobs can stop early.
    ///
    /// # Errors
    ///
    /// As [`build_with_state`](Builder::build_with_state).
    ///
    /// # Examples
    ///
    /// ```
    /// use channel_orchestrator::{JobContext, Orchestrator};
    /// use std::time::Duration;
    ///
    /// let (orch, _responses) = Orchestrator::builder().workers(1).build_with_context(
    ///     |_worker| (),
    ///     |_: &mut (), ctx: &JobContext, steps: u32| {
    ///         let mut done = 0;
    ///         while done < steps && !ctx.is_cancelled() {
    ///             std::thread::sleep(Duration::from_millis(1)); // one slice of a long job
    ///             done += 1;
    ///         }
    ///         done
    ///     },
    /// )?;
    /// orch.submit(1_000_000).unwrap(); // ~17 minutes if never cancelled
    /// std::thread::sleep(Duration::from_millis(20));
    /// let report = orch.shutdown_now(); // the job sees is_cancelled() and returns early
    /// assert_eq!(report.completed, 1);
    /// # Ok::<(), channel_orchestrator::BuildError>(())
    /// ```
    #[allow(clippy::type_complexity)] // the pair is the API; an alias would hide it in docs
    pub fn build_with_context<Req, Resp, S, I, H>(
        self,
        init: I,
        handler: H,
    ) -> Result<(Orchestrator<Req, Resp>, Receiver<Response<Resp>>), BuildError>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        S: 'static,
        I: Fn(WorkerId) -> S + Send + Sync + 'static,
        H: Fn(&mut S, &JobContext, Req) -> Resp + Send + Sync + 'static,
    {
        let config = self.config()?;
        if let Spread::ByKey(key) = &config.distribution {
            key.check::<Req>()?;
        }
        Orchestrator::start(config, init, handler, None)
    }

    /// Starts a pipeline stage: its handler returns the hand-off to the next stage, which
    /// its workers run instead of sending a response.
    pub(crate) fn build_stage<Req, H>(
        self,
        handler: H,
    ) -> Result<Orchestrator<Req, Handoff>, BuildError>
    where
        Req: Send + 'static,
        H: Fn(&mut (), &JobContext, Req) -> Handoff + Send + Sync + 'static,
    {
        let config = self.config()?;
        let identity: Forward<Handoff> = |handoff| handoff;
        let (orch, _nothing_is_sent_here) =
            Orchestrator::start(config, |_| (), handler, Some(identity))?;
        Ok(orch)
    }
}
