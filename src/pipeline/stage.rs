//! One stage: an orchestrator over envelopes whose handler applies the stage's function and
//! hands the result on to the next stage (or to the collector).

use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::builder::Builder;
use crate::context::JobContext;
use crate::error::{BuildError, CallError, JobError, TrySubmitError};
use crate::ids::{RequestId, WorkerId};
use crate::metrics::{MetricsEvent, MetricsSnapshot};
use crate::orchestrator::{Orchestrator, Submitter};
use crate::process::Tag;
use crate::unwind::{drop_quietly, message_of};
use crate::worker::Handoff;

/// A request on its way through the stages: `T` is the value so far.
///
/// `pub` only because the sealed `Chain` trait names it; the module is private, so no user
/// can name it.
#[allow(unreachable_pub, missing_debug_implementations)]
pub struct Env<T, In, Out> {
    pub(super) id: RequestId,
    pub(super) value: Result<T, JobError>,
    pub(super) route: PipeRoute<In, Out>,
    /// When it entered the pipeline (with metrics on): its response's `handler_time` is its
    /// whole time in the pipeline.
    pub(super) submitted: Option<Instant>,
    /// Past this instant no stage runs its function on it: it travels on as
    /// `JobError::DeadlineExceeded`. (Not the stage job's own deadline: a stage job always
    /// runs, so the envelope is never dropped.)
    pub(super) deadline: Option<Instant>,
    /// The worker of the last stage that handled it.
    pub(super) worker: WorkerId,
}

impl<T, In, Out> Env<T, In, Out> {
    /// The same envelope carrying another value.
    pub(super) fn with<U>(self, value: Result<U, JobError>) -> Env<U, In, Out> {
        Env {
            id: self.id,
            value,
            route: self.route,
            submitted: self.submitted,
            deadline: self.deadline,
            worker: self.worker,
        }
    }
}

/// Where the pipeline's answer for one request goes.
pub(super) enum PipeRoute<In, Out> {
    /// To the pipeline's responses channel.
    Stream,
    /// To a waiting `call`.
    Call(Sender<Result<Out, CallError<In>>>),
    /// To a `process` feeder.
    Process(Tag<Out>),
}

/// Where a stage puts what it produced. (`pub` for the sealed `Chain`, like [`Env`].)
#[allow(unreachable_pub, missing_debug_implementations)]
pub enum Sink<T, In, Out> {
    Next(Submitter<Env<T, In, Out>, Handoff>),
    Collect(Sender<Env<T, In, Out>>),
}

impl<T: Send + 'static, In: Send + 'static, Out: Send + 'static> Sink<T, In, Out> {
    /// Hands `env` on without blocking, or gives it back when the next queue is full.
    fn try_put(&self, env: Env<T, In, Out>) -> Result<(), Env<T, In, Out>> {
        match self {
            Sink::Next(next) => match next.try_submit(env) {
                Ok(_) => Ok(()),
                Err(TrySubmitError::Full(env)) => Err(env),
                // The next stage shuts down only after this one drained, so it is open.
                Err(TrySubmitError::ShutDown(env)) => {
                    drop_quietly(env);
                    Ok(())
                }
            },
            Sink::Collect(tx) => match tx.try_send(env) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(env)) => Err(env),
                // The collector runs until every stage is down.
                Err(TrySendError::Disconnected(env)) => {
                    drop_quietly(env);
                    Ok(())
                }
            },
        }
    }

    /// Hands `env` on, waiting for space (back-pressure from the stages after this one).
    fn put(&self, env: Env<T, In, Out>) {
        match self {
            Sink::Next(next) => {
                if let Err(e) = next.submit(env) {
                    drop_quietly(e.into_inner());
                }
            }
            Sink::Collect(tx) => {
                if let Err(e) = tx.send(env) {
                    drop_quietly(e.into_inner());
                }
            }
        }
    }
}

/// A stage after the first, whatever its value type: metrics, events, shutdown.
#[allow(unreachable_pub, missing_debug_implementations)]
pub trait StageControl: Send + Sync {
    fn metrics(&self) -> MetricsSnapshot;
    fn subscribe(&self) -> Receiver<MetricsEvent>;
    fn pool_id(&self) -> u64;
    /// Drains (or, past `deadline`, cancels what is still queued) and joins the stage.
    fn shutdown(self: Box<Self>, deadline: Option<Instant>);
}

pub(super) struct LaterStage<T, In, Out> {
    pub(super) orch: Orchestrator<Env<T, In, Out>, Handoff>,
    pub(super) collector: Sender<Env<Out, In, Out>>,
}

impl<T: Send + 'static, In: Send + 'static, Out: Send + 'static> StageControl
    for LaterStage<T, In, Out>
{
    fn metrics(&self) -> MetricsSnapshot {
        self.orch.metrics()
    }

    fn subscribe(&self) -> Receiver<MetricsEvent> {
        self.orch.subscribe()
    }

    fn pool_id(&self) -> u64 {
        self.orch.pool_id()
    }

    fn shutdown(self: Box<Self>, deadline: Option<Instant>) {
        // Never gives up on a hand-off: what a stage produced is a request of the next.
        let report = self.orch.shutdown_stage(deadline);
        for (_, env) in report.unstarted {
            let _ = self.collector.send(env.with(Err(JobError::Cancelled)));
        }
    }
}

/// Starts one stage: an orchestrator over envelopes whose handler applies `f` and hands the
/// result on. A panic in `f` becomes the envelope's error, which later stages pass along.
pub(super) fn start_stage<A, B, In, Out, F>(
    opts: &Builder,
    name: &str,
    index: usize,
    workers: usize,
    f: F,
    sink: Sink<B, In, Out>,
) -> Result<Orchestrator<Env<A, In, Out>, Handoff>, BuildError>
where
    A: Send + 'static,
    B: Send + 'static,
    In: Send + 'static,
    Out: Send + 'static,
    F: Fn(A) -> B + Send + Sync + 'static,
{
    let sink = Arc::new(sink);
    opts.clone()
        .retype::<Env<A, In, Out>, Handoff>()
        .workers(workers)
        .thread_name(format!("{name}-s{index}"))
        .without_response_capacity()
        .build_stage(
            move |_: &mut (), ctx: &JobContext, env: Env<A, In, Out>| -> Handoff {
                let late = env.deadline.is_some_and(|d| Instant::now() >= d);
                let mut env = env;
                let value = std::mem::replace(&mut env.value, Err(JobError::Cancelled));
                let value = match value {
                    Ok(_) if late => Err(JobError::DeadlineExceeded),
                    Ok(x) => panic::catch_unwind(AssertUnwindSafe(|| f(x)))
                        .map_err(|p| JobError::Panicked(message_of(p))),
                    Err(e) => Err(e),
                };
                let mut env = env.with(value);
                env.worker = ctx.worker();
                // The hand-off runs after the stage's function, outside its timing: a
                // blocking one runs once the worker reported itself not busy.
                match sink.try_put(env) {
                    Ok(()) => None,
                    Err(env) => {
                        let sink = Arc::clone(&sink);
                        Some(Box::new(move || sink.put(env)))
                    }
                }
            },
        )
}
