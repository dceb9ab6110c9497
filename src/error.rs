//! Every public error type.
//!
//! Failures hand the request back, as crossbeam's `TrySendError::Full(T)` does. `Debug` never
//! requires `T: Debug` (it prints `ShutDown(..)`), and every `Display` text is one lowercase line
//! with no final period.

use std::error::Error;
use std::fmt;
use std::io;

/// Why a job ran but did not produce a response value.
///
/// Carried in [`Response::outcome`](crate::Response::outcome) and in
/// [`CallError::Failed`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JobError {
    /// The handler panicked; the string is the panic message (for a payload that is not a
    /// `&str` or `String`: its type, and its value when it is a number, `bool`, `char` or
    /// error). The worker that ran it keeps serving.
    Panicked(String),
    /// The worker thread running this `call` died outside the handler (a panic inside a
    /// `Drop` implementation of a request, response or panic payload) before it could answer.
    /// The supervisor replaced the thread; the request value is gone with it.
    WorkerDied,
    /// The request carried a deadline that had passed when a worker took it; it was not run.
    DeadlineExceeded,
    /// A [`Pipeline`](crate::Pipeline) shutdown with a deadline stopped the request between
    /// stages: an earlier stage ran it, a later one never started it.
    Cancelled,
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Panicked(msg) => write!(f, "handler panicked: {msg}"),
            JobError::WorkerDied => f.write_str("worker thread died before answering"),
            JobError::DeadlineExceeded => f.write_str("deadline passed before the request started"),
            JobError::Cancelled => {
                f.write_str("shutdown cancelled the request between pipeline stages")
            }
        }
    }
}

impl Error for JobError {}

/// The error of [`Orchestrator::submit`](crate::Orchestrator::submit): the request comes back.
#[derive(PartialEq, Eq, Clone, Copy)]
pub enum SubmitError<T> {
    /// The orchestrator is shut down (or shutting down); the request was not accepted.
    ShutDown(T),
}

impl<T> SubmitError<T> {
    /// Returns the request that was not accepted.
    pub fn into_inner(self) -> T {
        match self {
            SubmitError::ShutDown(t) => t,
        }
    }
}

/// The error of [`Orchestrator::try_submit`](crate::Orchestrator::try_submit): the request comes back.
#[derive(PartialEq, Eq, Clone, Copy)]
pub enum TrySubmitError<T> {
    /// Every queue was full at the moment of the call.
    Full(T),
    /// The orchestrator is shut down (or shutting down).
    ShutDown(T),
}

impl<T> TrySubmitError<T> {
    /// Returns the request that was not accepted.
    pub fn into_inner(self) -> T {
        match self {
            TrySubmitError::Full(t) | TrySubmitError::ShutDown(t) => t,
        }
    }

    /// Returns `true` if the queue was full.
    pub fn is_full(&self) -> bool {
        matches!(self, TrySubmitError::Full(_))
    }

    /// Returns `true` if the orchestrator was shut down.
    pub fn is_shut_down(&self) -> bool {
        matches!(self, TrySubmitError::ShutDown(_))
    }
}

/// The error of [`Orchestrator::submit_timeout`](crate::Orchestrator::submit_timeout): the request comes back.
#[derive(PartialEq, Eq, Clone, Copy)]
pub enum SubmitTimeoutError<T> {
    /// No queue space became free before the timeout.
    Timeout(T),
    /// The orchestrator is shut down (or shut down while the call waited).
    ShutDown(T),
}

impl<T> SubmitTimeoutError<T> {
    /// Returns the request that was not accepted.
    pub fn into_inner(self) -> T {
        match self {
            SubmitTimeoutError::Timeout(t) | SubmitTimeoutError::ShutDown(t) => t,
        }
    }

    /// Returns `true` if the wait timed out.
    pub fn is_timeout(&self) -> bool {
        matches!(self, SubmitTimeoutError::Timeout(_))
    }

    /// Returns `true` if the orchestrator was shut down.
    pub fn is_shut_down(&self) -> bool {
        matches!(self, SubmitTimeoutError::ShutDown(_))
    }
}

/// The error of [`Orchestrator::call`](crate::Orchestrator::call).
#[derive(PartialEq, Eq, Clone)]
pub enum CallError<T> {
    /// The orchestrator is shut down; the request was never accepted.
    ShutDown(T),
    /// The request was accepted but a shutdown (`shutdown_now`, or `shutdown_timeout` past its
    /// deadline) took it out of the queue before any worker started it.
    Cancelled(T),
    /// The request was taken and did not produce a value: its handler panicked
    /// ([`JobError::Panicked`]), its deadline had passed ([`JobError::DeadlineExceeded`]), or
    /// its worker thread died outside the handler ([`JobError::WorkerDied`]). The request was
    /// consumed.
    Failed(JobError),
}

impl<T> CallError<T> {
    /// Returns the request if this error holds it (`ShutDown` and `Cancelled`), `None` for
    /// `Failed` (the job consumed it).
    pub fn into_inner(self) -> Option<T> {
        match self {
            CallError::ShutDown(t) | CallError::Cancelled(t) => Some(t),
            CallError::Failed(_) => None,
        }
    }
}

/// The error of [`Orchestrator::resize`](crate::Orchestrator::resize).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResizeError {
    /// `resize(0)`: a pool has at least one worker.
    Zero,
    /// More than [`MAX_WORKERS`](crate::MAX_WORKERS).
    TooLarge {
        /// The largest size accepted.
        limit: usize,
    },
    /// The pool has per-key queues ([`Distribution::by_key`](crate::Distribution::by_key)):
    /// moving keys between workers would break their order, so its size is fixed.
    PerKeyQueues,
    /// A shutdown started.
    ShutDown,
}

impl fmt::Display for ResizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResizeError::Zero => f.write_str("cannot resize a pool to zero workers"),
            ResizeError::TooLarge { limit } => {
                write!(f, "cannot resize a pool above {limit} workers")
            }
            ResizeError::PerKeyQueues => {
                f.write_str("cannot resize a pool with per-key queues (by_key)")
            }
            ResizeError::ShutDown => f.write_str("cannot resize a shut down orchestrator"),
        }
    }
}

impl Error for ResizeError {}

/// The error of [`Orchestrator::call_timeout`](crate::Orchestrator::call_timeout).
#[derive(PartialEq, Eq, Clone)]
pub enum CallTimeoutError<T> {
    /// No queue space freed up before the timeout: not accepted; the request comes back.
    Timeout(T),
    /// Accepted, but no answer came before the timeout. The request cannot come back: a
    /// worker that takes it after the deadline does not run it (it counts as `failed`, its
    /// answer as `undelivered`); if it was already running, its result is discarded
    /// (counted as `undelivered`).
    Expired,
    /// The orchestrator is shut down; the request was never accepted.
    ShutDown(T),
    /// Accepted, but a shutdown took it off the queue before it started.
    Cancelled(T),
    /// It ran (or its worker died) without producing a value; see [`CallError::Failed`].
    Failed(JobError),
}

impl<T> CallTimeoutError<T> {
    /// Returns the request if this error holds it (`Timeout`, `ShutDown`, `Cancelled`).
    pub fn into_inner(self) -> Option<T> {
        match self {
            CallTimeoutError::Timeout(t)
            | CallTimeoutError::ShutDown(t)
            | CallTimeoutError::Cancelled(t) => Some(t),
            CallTimeoutError::Expired | CallTimeoutError::Failed(_) => None,
        }
    }

    /// Returns `true` if the timeout passed, before or after the request was accepted.
    pub fn is_timeout(&self) -> bool {
        matches!(
            self,
            CallTimeoutError::Timeout(_) | CallTimeoutError::Expired
        )
    }
}

impl<T> From<CallError<T>> for CallTimeoutError<T> {
    fn from(e: CallError<T>) -> Self {
        match e {
            CallError::ShutDown(t) => CallTimeoutError::ShutDown(t),
            CallError::Cancelled(t) => CallTimeoutError::Cancelled(t),
            CallError::Failed(e) => CallTimeoutError::Failed(e),
        }
    }
}

impl<T> fmt::Debug for CallTimeoutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallTimeoutError::Timeout(_) => f.write_str("Timeout(..)"),
            CallTimeoutError::Expired => f.write_str("Expired"),
            CallTimeoutError::ShutDown(_) => f.write_str("ShutDown(..)"),
            CallTimeoutError::Cancelled(_) => f.write_str("Cancelled(..)"),
            CallTimeoutError::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

impl<T> fmt::Display for CallTimeoutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallTimeoutError::Timeout(_) => f.write_str("timed out waiting for queue space"),
            CallTimeoutError::Expired => f.write_str("timed out waiting for the answer"),
            CallTimeoutError::ShutDown(_) => f.write_str(SHUT_DOWN),
            CallTimeoutError::Cancelled(_) => {
                f.write_str("request was cancelled by shutdown before it started")
            }
            CallTimeoutError::Failed(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl<T> Error for CallTimeoutError<T> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            CallTimeoutError::Failed(e) => Some(e),
            _ => None,
        }
    }
}

macro_rules! debug_without_t {
    ($ty:ident { $($variant:ident($binding:pat) => $text:expr),* $(,)? }) => {
        impl<T> fmt::Debug for $ty<T> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $($ty::$variant($binding) => f.write_str($text),)*
                }
            }
        }
    };
}

debug_without_t!(SubmitError { ShutDown(_) => "ShutDown(..)" });
debug_without_t!(TrySubmitError { Full(_) => "Full(..)", ShutDown(_) => "ShutDown(..)" });
debug_without_t!(SubmitTimeoutError { Timeout(_) => "Timeout(..)", ShutDown(_) => "ShutDown(..)" });

impl<T> fmt::Debug for CallError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::ShutDown(_) => f.write_str("ShutDown(..)"),
            CallError::Cancelled(_) => f.write_str("Cancelled(..)"),
            CallError::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

const SHUT_DOWN: &str = "submitting on a shut down orchestrator";

impl<T> fmt::Display for SubmitError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SHUT_DOWN)
    }
}

impl<T> fmt::Display for TrySubmitError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySubmitError::Full(_) => f.write_str("submitting on a full queue"),
            TrySubmitError::ShutDown(_) => f.write_str(SHUT_DOWN),
        }
    }
}

impl<T> fmt::Display for SubmitTimeoutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubmitTimeoutError::Timeout(_) => f.write_str("timed out waiting for queue space"),
            SubmitTimeoutError::ShutDown(_) => f.write_str(SHUT_DOWN),
        }
    }
}

impl<T> fmt::Display for CallError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::ShutDown(_) => f.write_str(SHUT_DOWN),
            CallError::Cancelled(_) => {
                f.write_str("request was cancelled by shutdown before it started")
            }
            CallError::Failed(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl<T> Error for SubmitError<T> {}
impl<T> Error for TrySubmitError<T> {}
impl<T> Error for SubmitTimeoutError<T> {}
impl<T> Error for CallError<T> {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            CallError::Failed(e) => Some(e),
            _ => None,
        }
    }
}

/// The error of [`Builder::build`](crate::Builder::build): the configuration was refused or
/// the pool could not start. No thread is left running when it is returned.
///
/// Print it, ask its [`kind`](BuildError::kind), or look at its [`source`](Error::source)
/// for the underlying I/O error of a failed spawn.
#[derive(Debug)]
pub struct BuildError {
    detail: Detail,
}

/// The kind of a [`BuildError`], for programs that must tell a bad setting from a spawn
/// failure or a panicking `init` without reading the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BuildErrorKind {
    /// `workers` is 0.
    ZeroWorkers,
    /// `workers` is above [`MAX_WORKERS`](crate::MAX_WORKERS) (for a pipeline: all its stages'
    /// workers together).
    TooManyWorkers,
    /// `queue_capacity` is 0.
    ZeroQueueCapacity,
    /// `queue_capacity` is above [`MAX_QUEUE_CAPACITY`](crate::MAX_QUEUE_CAPACITY).
    QueueTooLarge,
    /// `response_capacity` is above [`MAX_QUEUE_CAPACITY`](crate::MAX_QUEUE_CAPACITY).
    ResponsesTooLarge,
    /// `metrics_interval` is zero.
    ZeroMetricsInterval,
    /// `timing_sample` is 0.
    ZeroTimingSample,
    /// `priority_burst` is 0.
    ZeroPriorityBurst,
    /// A scoped pool with per-key queues: `Distribution::by_key` needs `'static` requests.
    ScopedByKey,
    /// `stack_size` is below [`MIN_STACK_SIZE`](crate::MIN_STACK_SIZE).
    StackTooSmall,
    /// `elastic(min, max)` with `min > max`.
    ElasticRange,
    /// `keep_alive` is zero.
    ZeroKeepAlive,
    /// An elastic pool with per-key queues.
    ElasticByKey,
    /// The thread name is empty.
    EmptyThreadName,
    /// The thread name holds a NUL byte.
    NulInThreadName,
    /// A `by_key` function takes another type than the orchestrator's requests.
    KeyType,
    /// A thread could not be spawned; [`source`](Error::source) is the I/O error.
    Spawn,
    /// A worker's `init` panicked at start; the message holds the panic's.
    InitPanicked,
}

/// What went wrong, with the details the message shows.
#[derive(Debug)]
pub(crate) enum Detail {
    ZeroWorkers,
    ZeroQueueCapacity,
    ZeroMetricsInterval,
    ZeroTimingSample,
    ZeroPriorityBurst,
    ScopedByKey,
    EmptyThreadName,
    NulInThreadName,
    TooManyWorkers,
    QueueTooLarge,
    ResponsesTooLarge,
    StackSize,
    ElasticRange,
    ZeroKeepAlive,
    ElasticByKey,
    Spawn {
        thread: String,
        source: io::Error,
    },
    InitPanicked {
        worker: usize,
        message: String,
    },
    KeyType {
        expected: &'static str,
        found: &'static str,
    },
}

impl BuildError {
    pub(crate) fn new(detail: Detail) -> Self {
        BuildError { detail }
    }

    /// What kind of failure this is.
    ///
    /// # Examples
    ///
    /// ```
    /// use channel_orchestrator::{BuildErrorKind, Orchestrator};
    ///
    /// let e = Orchestrator::builder().workers(0).build(|x: u32| x).unwrap_err();
    /// assert_eq!(e.kind(), BuildErrorKind::ZeroWorkers);
    /// ```
    pub fn kind(&self) -> BuildErrorKind {
        match &self.detail {
            Detail::ZeroWorkers => BuildErrorKind::ZeroWorkers,
            Detail::ZeroQueueCapacity => BuildErrorKind::ZeroQueueCapacity,
            Detail::ZeroMetricsInterval => BuildErrorKind::ZeroMetricsInterval,
            Detail::ZeroTimingSample => BuildErrorKind::ZeroTimingSample,
            Detail::ZeroPriorityBurst => BuildErrorKind::ZeroPriorityBurst,
            Detail::ScopedByKey => BuildErrorKind::ScopedByKey,
            Detail::EmptyThreadName => BuildErrorKind::EmptyThreadName,
            Detail::NulInThreadName => BuildErrorKind::NulInThreadName,
            Detail::TooManyWorkers => BuildErrorKind::TooManyWorkers,
            Detail::QueueTooLarge => BuildErrorKind::QueueTooLarge,
            Detail::ResponsesTooLarge => BuildErrorKind::ResponsesTooLarge,
            Detail::StackSize => BuildErrorKind::StackTooSmall,
            Detail::ElasticRange => BuildErrorKind::ElasticRange,
            Detail::ZeroKeepAlive => BuildErrorKind::ZeroKeepAlive,
            Detail::ElasticByKey => BuildErrorKind::ElasticByKey,
            Detail::Spawn { .. } => BuildErrorKind::Spawn,
            Detail::InitPanicked { .. } => BuildErrorKind::InitPanicked,
            Detail::KeyType { .. } => BuildErrorKind::KeyType,
        }
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            Detail::ZeroWorkers => f.write_str("invalid configuration: workers must be at least 1"),
            Detail::ZeroQueueCapacity => {
                f.write_str("invalid configuration: queue_capacity must be at least 1")
            }
            Detail::ZeroMetricsInterval => {
                f.write_str("invalid configuration: metrics_interval must be greater than zero")
            }
            Detail::ZeroTimingSample => {
                f.write_str("invalid configuration: timing_sample must be at least 1")
            }
            Detail::ZeroPriorityBurst => {
                f.write_str("invalid configuration: priority_burst must be at least 1")
            }
            Detail::ScopedByKey => f.write_str(
                "invalid configuration: a scoped pool cannot have per-key queues (by_key)",
            ),
            Detail::EmptyThreadName => {
                f.write_str("invalid configuration: thread_name must not be empty")
            }
            Detail::NulInThreadName => {
                f.write_str("invalid configuration: thread_name must not contain a NUL byte")
            }
            Detail::TooManyWorkers => write!(
                f,
                "invalid configuration: workers must be at most {}",
                crate::config::MAX_WORKERS
            ),
            Detail::ResponsesTooLarge => write!(
                f,
                "invalid configuration: response_capacity must be at most {}",
                crate::config::MAX_QUEUE_CAPACITY
            ),
            Detail::QueueTooLarge => write!(
                f,
                "invalid configuration: queue_capacity must be at most {}",
                crate::config::MAX_QUEUE_CAPACITY
            ),
            Detail::StackSize => write!(
                f,
                "invalid configuration: stack_size must be at least {} bytes",
                crate::config::MIN_STACK_SIZE
            ),
            Detail::ElasticRange => {
                f.write_str("invalid configuration: elastic(min, max) needs min <= max")
            }
            Detail::ZeroKeepAlive => {
                f.write_str("invalid configuration: keep_alive must be greater than zero")
            }
            Detail::ElasticByKey => f.write_str(
                "invalid configuration: an elastic pool cannot have per-key queues (by_key)",
            ),
            Detail::Spawn { thread, source } => {
                write!(f, "failed to spawn thread {thread:?}: {source}")
            }
            Detail::InitPanicked { worker, message } => {
                write!(f, "worker {worker} state init panicked: {message}")
            }
            Detail::KeyType { expected, found } => write!(
                f,
                "invalid configuration: the by_key function takes {expected} but requests are {found}"
            ),
        }
    }
}

impl Error for BuildError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match &self.detail {
            Detail::Spawn { source, .. } => Some(source),
            _ => None,
        }
    }
}
