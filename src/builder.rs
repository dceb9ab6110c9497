//! The builder: `Option` fields ("not set" is distinct from any value), by-value setters, and
//! all validation in [`Builder::build`].

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::config::{
    DEFAULT_KEEP_ALIVE, DEFAULT_METRICS_INTERVAL, DEFAULT_PRIORITY_BURST, DEFAULT_QUEUE_CAPACITY,
    DEFAULT_THREAD_NAME, MAX_METRICS_INTERVAL, MAX_QUEUE_CAPACITY, MAX_TIMING_SAMPLE, MAX_WORKERS,
    MIN_STACK_SIZE,
};
use crate::context::JobContext;
use crate::distribution::{IntoDistribution, Spread};
use crate::error::{BuildError, Detail};
use crate::ids::WorkerId;
use crate::orchestrator::Orchestrator;
use crate::response::Response;
use crate::runtime::{self, Config};
use crate::worker::{Forward, Handoff};

/// Configures and starts an [`Orchestrator`]. Create it with [`Orchestrator::builder`],
/// [`Builder::new`] or [`Builder::default`].
///
/// Every setter takes and returns the builder by value; nothing is checked until
/// [`build`](Builder::build). The type parameters are the request and response types of the
/// orchestrator it builds; they are inferred from the handler, so they are never written
/// out (they are there so that `type Pool = Orchestrator<String, usize>; Pool::builder()`
/// works too).
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
#[must_use = "a builder does nothing until build() is called"]
pub struct Builder<Req = (), Resp = ()> {
    workers: Option<usize>,
    elastic: Option<(usize, usize)>,
    keep_alive: Option<Duration>,
    queue_capacity: Option<usize>,
    response_capacity: Option<usize>,
    distribution: Spread,
    thread_name: Option<String>,
    metrics_interval: Option<Duration>,
    metrics: Option<bool>,
    timing_sample: Option<usize>,
    stack_size: Option<usize>,
    priority_burst: Option<usize>,
    _types: PhantomData<fn(Req) -> Resp>,
}

impl<Req, Resp> Default for Builder<Req, Resp> {
    fn default() -> Self {
        Builder {
            workers: None,
            elastic: None,
            keep_alive: None,
            queue_capacity: None,
            response_capacity: None,
            distribution: Spread::default(),
            thread_name: None,
            metrics_interval: None,
            metrics: None,
            timing_sample: None,
            stack_size: None,
            priority_burst: None,
            _types: PhantomData,
        }
    }
}

impl<Req, Resp> Clone for Builder<Req, Resp> {
    fn clone(&self) -> Self {
        Builder {
            distribution: self.distribution.clone(),
            thread_name: self.thread_name.clone(),
            ..*self
        }
    }
}

impl<Req, Resp> fmt::Debug for Builder<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("workers", &self.workers)
            .field("elastic", &self.elastic)
            .field("keep_alive", &self.keep_alive)
            .field("queue_capacity", &self.queue_capacity)
            .field("response_capacity", &self.response_capacity)
            .field("distribution", &self.distribution)
            .field("thread_name", &self.thread_name)
            .field("metrics_interval", &self.metrics_interval)
            .field("metrics", &self.metrics)
            .field("timing_sample", &self.timing_sample)
            .field("stack_size", &self.stack_size)
            .field("priority_burst", &self.priority_burst)
            .finish()
    }
}

impl<Req, Resp> Builder<Req, Resp> {
    /// A builder with every option unset (see each setter for its default); the same as
    /// [`Orchestrator::builder`].
    ///
    /// # Examples
    ///
    /// ```
    /// use channel_orchestrator::{Builder, Orchestrator};
    ///
    /// type Pool = Orchestrator<String, usize>;
    /// let (pool, _responses): (Pool, _) = Builder::new().workers(2).build(|s: String| s.len())?;
    /// assert_eq!(pool.call("four".to_string()), Ok(4));
    /// let (same, _responses) = Pool::builder().workers(1).build(|s: String| s.len())?;
    /// assert_eq!(same.call("five!".to_string()), Ok(5));
    /// # Ok::<(), channel_orchestrator::BuildError>(())
    /// ```
    pub fn new() -> Self {
        Builder::default()
    }

    /// The same options without a bound on responses (pipeline stages send none).
    pub(crate) fn without_response_capacity(mut self) -> Self {
        self.response_capacity = None;
        self
    }

    /// The same options for another request and response type (pipeline stages).
    pub(crate) fn retype<R, S>(self) -> Builder<R, S> {
        Builder {
            workers: self.workers,
            elastic: self.elastic,
            keep_alive: self.keep_alive,
            queue_capacity: self.queue_capacity,
            response_capacity: self.response_capacity,
            distribution: self.distribution,
            thread_name: self.thread_name,
            metrics_interval: self.metrics_interval,
            metrics: self.metrics,
            timing_sample: self.timing_sample,
            stack_size: self.stack_size,
            priority_burst: self.priority_burst,
            _types: PhantomData,
        }
    }

    /// The number of worker threads. Default: `num_cpus::get()`. `0`, or more than
    /// [`MAX_WORKERS`], makes `build` fail. The same as `elastic(n, n)`; the size can still
    /// change at run time with [`Orchestrator::resize`].
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self.elastic = None;
        self
    }

    /// An elastic pool: it starts with `min` workers, grows toward `max` while requests wait
    /// and every worker is busy (one worker per check, checked every few milliseconds), and
    /// retires a worker above `min` that has been idle for [`keep_alive`](Self::keep_alive).
    /// `min` of 0, `min > max` or `max` above [`MAX_WORKERS`] make `build` fail, and so does
    /// an elastic pool with [`Distribution::by_key`](crate::Distribution::by_key) (moving
    /// keys between workers would break their order).
    ///
    /// # Examples
    ///
    /// ```
    /// use channel_orchestrator::Orchestrator;
    /// use std::time::Duration;
    ///
    /// let (orch, _responses) = Orchestrator::builder()
    ///     .elastic(1, 4)
    ///     .keep_alive(Duration::from_millis(50))
    ///     .build(|ms: u64| std::thread::sleep(Duration::from_millis(ms)))?;
    /// assert_eq!(orch.workers(), 1);
    /// # Ok::<(), channel_orchestrator::BuildError>(())
    /// ```
    pub fn elastic(mut self, min: usize, max: usize) -> Self {
        self.elastic = Some((min, max));
        self.workers = None;
        self
    }

    /// How long a worker above the elastic minimum may stay idle before it is retired.
    /// Default: [`DEFAULT_KEEP_ALIVE`] (60 s). Zero makes `build` fail.
    pub fn keep_alive(mut self, idle: Duration) -> Self {
        self.keep_alive = Some(idle);
        self
    }

    /// The bound on queued, not yet started requests; `submit` blocks (and `try_submit`
    /// reports `Full`) beyond it. Default: 1024. `0`, or more than [`MAX_QUEUE_CAPACITY`],
    /// makes `build` fail.
    ///
    /// The bound is **per [`Priority`](crate::Priority)**: each priority has its own queue(s)
    /// of this size, so a backlog of `Low` work never refuses or blocks a `High` submit. The
    /// slots of all three are allocated at `build` (about 64 bytes each for small requests);
    /// a [`limited`](crate::Orchestrator::limited) handle has its own waiting room of the
    /// same size (allocated when it is made).
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

    /// How requests are spread over workers: a [`Distribution`](crate::Distribution), or per-key queues made by
    /// [`Distribution::by_key`](crate::Distribution::by_key). Default: [`Distribution::Shared`](crate::Distribution::Shared).
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

    /// With metrics on, time one job in `n` (rounded up to a power of two), always: a fixed
    /// rate instead of the default adaptive one. `timing_sample(1)` times every job.
    ///
    /// Timing costs three clock reads per timed job (one at submit, two in the worker).
    /// **By default the rate adapts**: every metrics interval (every 10 ms in the first 100 ms
    /// after `build`), the metrics thread sets `n` from how many jobs finished, so that clock
    /// reads cost about 1% of the workers' time — every job is timed while the workers
    /// finish fewer than about 130,000 jobs a second each
    /// (jobs of 8 µs and longer, or an idle pool), one in 8 at about 1 µs a job, one in 64 or
    /// so for empty jobs (with a ~25 ns clock), never fewer than one in
    /// [`MAX_TIMING_SAMPLE`]. Counts stay exact either way (they are
    /// not sampled). Which jobs are timed depends only on the request id (those whose id is
    /// a multiple of `n`), so the timed jobs are a uniform sample: the percentiles are those
    /// of the sample (`LatencySummary::count` says how many), within the histogram's 12.5%
    /// buckets, and the rank error of a percentile `p` over `k` samples is about
    /// `sqrt(p(1-p)/k)` (±0.3 points for p99 over 1,000 samples). The busy fractions are
    /// scaled up from the timed jobs; the `queue_time` / `handler_time` of an untimed job's
    /// [`Response`] are zero. `0` makes `build` fail; anything above [`MAX_TIMING_SAMPLE`]
    /// acts as that.
    pub fn timing_sample(mut self, n: usize) -> Self {
        self.timing_sample = Some(n);
        self
    }

    /// The starvation bound of [priorities](crate::Priority): after `k` requests of a more
    /// urgent priority in a row have passed a waiting request, a worker takes that waiting
    /// request next. Default: 8 (a `Low` request under a flood of `High` ones gets at least
    /// one worker turn in 9). Smaller is fairer, larger is stricter; `usize::MAX` is strict
    /// priority, which can starve. The count is per worker. `0` makes `build` fail.
    ///
    /// # Examples
    ///
    /// ```
    /// use channel_orchestrator::{Orchestrator, Priority};
    ///
    /// let (orch, responses) = Orchestrator::builder()
    ///     .workers(1)
    ///     .priority_burst(2)
    ///     .build(|x: u32| x)?;
    /// orch.submit(0).unwrap(); // occupies the worker while the rest queue up
    /// orch.submit_with_priority(100, Priority::Low).unwrap();
    /// for i in 1..=6 {
    ///     orch.submit_with_priority(i, Priority::High).unwrap();
    /// }
    /// let order: Vec<u32> = responses.iter().take(8).map(|r| r.outcome.unwrap()).collect();
    /// // At most 2 `High` requests in a row passed the waiting `Low` one.
    /// let low_at = order.iter().position(|&x| x == 100).unwrap();
    /// assert!(low_at <= 3, "{order:?}");
    /// # Ok::<(), channel_orchestrator::BuildError>(())
    /// ```
    pub fn priority_burst(mut self, k: usize) -> Self {
        self.priority_burst = Some(k);
        self
    }

    /// The stack size of worker threads, in bytes. Default: std's default (2 MiB). Below
    /// [`MIN_STACK_SIZE`] makes `build` fail; a size the system cannot give fails `build`
    /// with the spawn's I/O error.
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = Some(bytes);
        self
    }

    pub(crate) fn config(self) -> Result<Config, BuildError> {
        let (workers, max_workers) = match self.elastic {
            Some((min, max)) => {
                if min > max {
                    return Err(BuildError::new(Detail::ElasticRange));
                }
                (min, max)
            }
            None => {
                let n = self.workers.unwrap_or_else(num_cpus::get);
                (n, n)
            }
        };
        if workers == 0 {
            return Err(BuildError::new(Detail::ZeroWorkers));
        }
        if max_workers > MAX_WORKERS {
            return Err(BuildError::new(Detail::TooManyWorkers));
        }
        let keep_alive = self.keep_alive.unwrap_or(DEFAULT_KEEP_ALIVE);
        if keep_alive.is_zero() {
            return Err(BuildError::new(Detail::ZeroKeepAlive));
        }
        if max_workers > workers && matches!(self.distribution, Spread::ByKey(_)) {
            return Err(BuildError::new(Detail::ElasticByKey));
        }
        let queue_capacity = self.queue_capacity.unwrap_or(DEFAULT_QUEUE_CAPACITY);
        if queue_capacity == 0 {
            return Err(BuildError::new(Detail::ZeroQueueCapacity));
        }
        if queue_capacity > MAX_QUEUE_CAPACITY {
            return Err(BuildError::new(Detail::QueueTooLarge));
        }
        if self
            .response_capacity
            .is_some_and(|c| c > MAX_QUEUE_CAPACITY)
        {
            return Err(BuildError::new(Detail::ResponsesTooLarge));
        }
        let metrics_interval = self.metrics_interval.unwrap_or(DEFAULT_METRICS_INTERVAL);
        if metrics_interval.is_zero() {
            return Err(BuildError::new(Detail::ZeroMetricsInterval));
        }
        let metrics_interval = metrics_interval.min(MAX_METRICS_INTERVAL);
        let timing_sample = match self.timing_sample {
            Some(0) => return Err(BuildError::new(Detail::ZeroTimingSample)),
            Some(n) => Some(n.min(MAX_TIMING_SAMPLE).next_power_of_two()),
            None => None,
        };
        let priority_burst = self.priority_burst.unwrap_or(DEFAULT_PRIORITY_BURST);
        if priority_burst == 0 {
            return Err(BuildError::new(Detail::ZeroPriorityBurst));
        }
        if self.stack_size.is_some_and(|b| b < MIN_STACK_SIZE) {
            return Err(BuildError::new(Detail::StackSize));
        }
        let thread_name = self
            .thread_name
            .unwrap_or_else(|| DEFAULT_THREAD_NAME.to_owned());
        if thread_name.is_empty() {
            return Err(BuildError::new(Detail::EmptyThreadName));
        }
        if thread_name.contains('\0') {
            return Err(BuildError::new(Detail::NulInThreadName));
        }
        Ok(Config {
            workers,
            max_workers,
            keep_alive,
            queue_capacity,
            response_capacity: self.response_capacity,
            distribution: self.distribution,
            thread_name,
            metrics_interval,
            metrics: self.metrics.unwrap_or(true),
            timing_sample,
            priority_burst,
            stack_size: self.stack_size,
        })
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Builder<Req, Resp> {
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
    pub fn build<F>(
        self,
        handler: F,
    ) -> Result<(Orchestrator<Req, Resp>, Receiver<Response<Resp>>), BuildError>
    where
        F: Fn(Req) -> Resp + Send + Sync + 'static,
    {
        self.build_with_state(|_: WorkerId| (), move |_: &mut (), req: Req| handler(req))
    }

    /// Starts the pool with per-worker state: `init` runs on each worker thread to create its
    /// state, and again on that thread after its handler panicked (the old state may be
    /// broken). The handler gets `&mut` to its worker's state; the state never leaves its
    /// thread, so it need not be `Send`.
    ///
    /// # Errors
    ///
    /// As [`build`](Builder::build), and also when `init` panics on first start (the message is
    /// in the error), or a [`Distribution::by_key`](crate::Distribution::by_key) function takes another type than `Req`.
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
    pub fn build_with_state<S, I, H>(
        self,
        init: I,
        handler: H,
    ) -> Result<(Orchestrator<Req, Resp>, Receiver<Response<Resp>>), BuildError>
    where
        S: 'static,
        I: Fn(WorkerId) -> S + Send + Sync + 'static,
        H: Fn(&mut S, Req) -> Resp + Send + Sync + 'static,
    {
        self.build_with_context(init, move |state: &mut S, _: &JobContext, req: Req| {
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
    pub fn build_with_context<S, I, H>(
        self,
        init: I,
        handler: H,
    ) -> Result<(Orchestrator<Req, Resp>, Receiver<Response<Resp>>), BuildError>
    where
        S: 'static,
        I: Fn(WorkerId) -> S + Send + Sync + 'static,
        H: Fn(&mut S, &JobContext, Req) -> Resp + Send + Sync + 'static,
    {
        let config = self.config()?;
        if let Spread::ByKey(key) = &config.distribution {
            key.check::<Req>()?;
        }
        runtime::start(config, init, handler, None).map(Orchestrator::from_parts)
    }
}

impl<Req: Send + 'static> Builder<Req, Handoff> {
    /// Starts a pipeline stage: its handler returns the hand-off to the next stage, which
    /// its workers run instead of sending a response.
    pub(crate) fn build_stage<H>(self, handler: H) -> Result<Orchestrator<Req, Handoff>, BuildError>
    where
        H: Fn(&mut (), &JobContext, Req) -> Handoff + Send + Sync + 'static,
    {
        let config = self.config()?;
        let identity: Forward<Handoff> = |handoff| handoff;
        let parts = runtime::start(config, |_| (), handler, Some(identity))?;
        let (orch, _nothing_is_sent_here) = Orchestrator::from_parts(parts);
        Ok(orch)
    }
}

impl<Req, Resp> Orchestrator<Req, Resp> {
    /// A [`Builder`] with every option at its default; the request and response types are
    /// inferred from the handler given to [`build`](Builder::build) (or to
    /// [`scoped`](Builder::scoped), where they may borrow).
    ///
    /// # Examples
    ///
    /// ```
    /// let (orch, responses) = channel_orchestrator::Orchestrator::builder()
    ///     .workers(2)
    ///     .build(|s: &'static str| s.len())?;
    /// orch.submit("four").unwrap();
    /// assert_eq!(responses.recv().unwrap().outcome, Ok(4));
    /// # Ok::<(), channel_orchestrator::BuildError>(())
    /// ```
    pub fn builder() -> Builder<Req, Resp> {
        Builder::new()
    }
}
