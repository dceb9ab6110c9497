//! TODO crate docs
#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations, unreachable_pub)]

mod broadcast;
mod builder;
mod error;
mod message;
mod metrics;
mod orchestrator;
mod supervisor;
mod worker;

pub use crossbeam_channel;

pub use crate::builder::{
    Builder, DEFAULT_METRICS_INTERVAL, DEFAULT_QUEUE_CAPACITY, DEFAULT_THREAD_NAME, Distribution,
};
pub use crate::error::{
    BuildError, CallError, JobError, SubmitError, SubmitTimeoutError, TrySubmitError,
};
pub use crate::message::{RequestId, Response, WorkerId};
pub use crate::metrics::{
    LatencySummary, MetricsEvent, MetricsSnapshot, ShutdownSummary, WorkerEvent, WorkerEventKind,
    WorkerSnapshot, WorkerState,
};
pub use crate::orchestrator::{
    DEFAULT_SUBSCRIBER_CAPACITY, Orchestrator, ShutdownReport, Submitter,
};
