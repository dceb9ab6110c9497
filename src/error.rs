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
    /// The handler panicked; the string is the panic message (or `"Box<dyn Any>"` when the
    /// payload was neither a `&str` nor a `String`). The worker that ran it keeps serving.
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
/// It is opaque, as rayon's `ThreadPoolBuildError` is: print it, or look at its
/// [`source`](Error::source) for the underlying I/O error.
#[derive(Debug)]
pub struct BuildError {
    kind: BuildErrorKind,
}

#[derive(Debug)]
pub(crate) enum BuildErrorKind {
    ZeroWorkers,
    ZeroQueueCapacity,
    ZeroMetricsInterval,
    ZeroTimingSample,
    EmptyThreadName,
    NulInThreadName,
    TooManyWorkers,
    QueueTooLarge,
    ResponsesTooLarge,
    StackSize,
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
    pub(crate) fn new(kind: BuildErrorKind) -> Self {
        BuildError { kind }
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            BuildErrorKind::ZeroWorkers => {
                f.write_str("invalid configuration: workers must be at least 1")
            }
            BuildErrorKind::ZeroQueueCapacity => {
                f.write_str("invalid configuration: queue_capacity must be at least 1")
            }
            BuildErrorKind::ZeroMetricsInterval => {
                f.write_str("invalid configuration: metrics_interval must be greater than zero")
            }
            BuildErrorKind::ZeroTimingSample => {
                f.write_str("invalid configuration: timing_sample must be at least 1")
            }
            BuildErrorKind::EmptyThreadName => {
                f.write_str("invalid configuration: thread_name must not be empty")
            }
            BuildErrorKind::NulInThreadName => {
                f.write_str("invalid configuration: thread_name must not contain a NUL byte")
            }
            BuildErrorKind::TooManyWorkers => write!(
                f,
                "invalid configuration: workers must be at most {}",
                crate::builder::MAX_WORKERS
            ),
            BuildErrorKind::ResponsesTooLarge => write!(
                f,
                "invalid configuration: response_capacity must be at most {}",
                crate::builder::MAX_QUEUE_CAPACITY
            ),
            BuildErrorKind::QueueTooLarge => write!(
                f,
                "invalid configuration: queue_capacity must be at most {}",
                crate::builder::MAX_QUEUE_CAPACITY
            ),
            BuildErrorKind::StackSize => write!(
                f,
                "invalid configuration: stack_size must be at least {} bytes",
                crate::builder::MIN_STACK_SIZE
            ),
            BuildErrorKind::Spawn { thread, source } => {
                write!(f, "failed to spawn thread {thread:?}: {source}")
            }
            BuildErrorKind::InitPanicked { worker, message } => {
                write!(f, "worker {worker} state init panicked: {message}")
            }
            BuildErrorKind::KeyType { expected, found } => write!(
                f,
                "invalid configuration: the by_key function takes {expected} but requests are {found}"
            ),
        }
    }
}

impl Error for BuildError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match &self.kind {
            BuildErrorKind::Spawn { source, .. } => Some(source),
            _ => None,
        }
    }
}
