//! The builder: `Option` fields ("not set" is distinct from any value), by-value setters, and
//! all validation in [`Builder::build`].

use std::time::Duration;

use crossbeam_channel::Receiver;

use crate::error::{BuildError, BuildErrorKind};
use crate::message::{Response, WorkerId};
use crate::orchestrator::Orchestrator;

/// The default bound on queued requests.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;
/// The default period of metrics snapshots.
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_millis(100);
/// The default prefix of thread names.
pub const DEFAULT_THREAD_NAME: &str = "orchestrator";

/// How requests are spread over the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
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
    distribution: Distribution,
    thread_name: Option<String>,
    metrics_interval: Option<Duration>,
    metrics: Option<bool>,
    stack_size: Option<usize>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) workers: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) response_capacity: Option<usize>,
    pub(crate) distribution: Distribution,
    pub(crate) thread_name: String,
    pub(crate) metrics_interval: Duration,
    pub(crate) metrics: bool,
    pub(crate) stack_size: Option<usize>,
}

impl Builder {
    /// A builder with every option unset (see each setter for its default).
    pub fn new() -> Self {
        Builder::default()
    }

    /// The number of worker threads. Default: `num_cpus::get()`. `0` makes `build` fail.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = Some(n);
        self
    }

    /// The bound on queued, not yet started requests; `submit` blocks (and `try_submit`
    /// reports `Full`) beyond it. Default: 1024. `0` makes `build` fail.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.queue_capacity = Some(n);
        self
    }

    /// Bounds the responses channel: workers wait for space (back-pressure). Default:
    /// unbounded. `0` makes a rendezvous channel: each response waits for its receive.
    pub fn response_capacity(mut self, n: usize) -> Self {
        self.response_capacity = Some(n);
        self
    }

    /// How requests are spread over workers. Default: [`Distribution::Shared`].
    pub fn distribution(mut self, d: Distribution) -> Self {
        self.distribution = d;
        self
    }

    /// The prefix of thread names: `"{name}-worker-{i}"`, `"{name}-supervisor"`,
    /// `"{name}-metrics"`. Default: `"orchestrator"`. An empty name makes `build` fail.
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.thread_name = Some(name.into());
        self
    }

    /// The period of metrics snapshots, and the most by which counts may lag.
    /// Default: 100 ms. Zero makes `build` fail.
    pub fn metrics_interval(mut self, interval: Duration) -> Self {
        self.metrics_interval = Some(interval);
        self
    }

    /// Whether to collect metrics (default `true`). With `false`, workers read no clock and
    /// report counts only when they stop: snapshots show zeros while running, response
    /// timings are zero, the final totals stay exact, and worker events still flow.
    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = Some(on);
        self
    }

    /// The stack size of worker threads, in bytes. Default: std's default.
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.stack_size = Some(bytes);
        self
    }

    fn config(self) -> Result<Config, BuildError> {
        let workers = self.workers.unwrap_or_else(num_cpus::get);
        if workers == 0 {
            return Err(BuildError::new(BuildErrorKind::ZeroWorkers));
        }
        let queue_capacity = self.queue_capacity.unwrap_or(DEFAULT_QUEUE_CAPACITY);
        if queue_capacity == 0 {
            return Err(BuildError::new(BuildErrorKind::ZeroQueueCapacity));
        }
        let metrics_interval = self.metrics_interval.unwrap_or(DEFAULT_METRICS_INTERVAL);
        if metrics_interval.is_zero() {
            return Err(BuildError::new(BuildErrorKind::ZeroMetricsInterval));
        }
        let thread_name = self
            .thread_name
            .unwrap_or_else(|| DEFAULT_THREAD_NAME.to_owned());
        if thread_name.is_empty() {
            return Err(BuildError::new(BuildErrorKind::EmptyThreadName));
        }
        Ok(Config {
            workers,
            queue_capacity,
            response_capacity: self.response_capacity,
            distribution: self.distribution,
            thread_name,
            metrics_interval,
            metrics: self.metrics.unwrap_or(true),
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
    /// A [`BuildError`] when `workers`, `queue_capacity` or `metrics_interval` is zero, the
    /// thread name is empty, or a thread could not be spawned. No thread is left running.
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
    /// in the error).
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
        Orchestrator::start(self.config()?, init, handler)
    }
}
