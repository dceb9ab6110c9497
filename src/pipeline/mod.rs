//! Multi-stage pipelines: a typed chain of orchestrators with bounded queues between them.
//!
//! ```text
//!  submit/call/process ─► stage 0 ─(hand-off, waits when full)─► stage 1 ─► … ─► last stage
//!                          N₀ workers                             N₁ workers        │ bounded
//!                                                                                   ▼
//!                                responses / call reply / process channel ◄── collector thread
//! ```
//!
//! Each stage is an [`Orchestrator`] whose requests are envelopes ([`stage::Env`]): the
//! pipeline's request id, the value so far (or the error that ended it), its deadline and the
//! route of the final answer. A stage worker runs its function, then hands the envelope to
//! the next stage: at once if there is room, otherwise — after reporting itself not busy —
//! waiting for room, so a slow stage pushes back all the way to the producer, and a stage
//! waiting on a slow successor does not look busy. The last stage hands envelopes to one
//! collector thread, which owns the pipeline's totals and delivers each answer on its route.
//! A panic in a stage's function, or a passed deadline, turns the envelope's value into an
//! error that travels on (later stages skip it).
//!
//! This layer reaches the core through one door: a stage is an orchestrator built with
//! `Builder::build_stage`, fed with its `submitter`/`feeder` and stopped with
//! `shutdown_stage`.
//!
//! Shutdown goes stage by stage: the first stage as asked (drain, deadline or now), then
//! each later stage drains — its requests already started — and only a `shutdown_timeout`
//! past its deadline cancels what still waits in a later stage's queue (answered
//! `JobError::Cancelled`). No stage ever drops what it ran; only the collector gives up, on a
//! full response channel past the deadline, and counts that as undelivered.

mod chain;
mod collector;
mod stage;

use std::fmt;
use std::panic;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};

use self::chain::NoStages;
pub use self::chain::PipelineBuilder;
use self::collector::{CollectorControl, Totals};
use self::stage::{Env, PipeRoute, StageControl};
use crate::error::{
    CallError, CallTimeoutError, JobError, SubmitError, SubmitTimeoutError, TrySubmitError,
};
use crate::ids::{RequestId, WorkerId};
use crate::intake::Handle;
use crate::message::{Job, Route};
use crate::metrics::{MetricsEvent, MetricsSnapshot};
use crate::orchestrator::{Orchestrator, Submitter};
use crate::process::{Ordered, Tag};
use crate::report::ShutdownReport;
use crate::response::Response;
use crate::runtime::deadline_after;
use crate::worker::Handoff;

/// A chain of stages, each a pool of workers with its own function, joined by bounded
/// queues. Built with [`Pipeline::builder`]; it has the submitting, `process`, metrics and
/// shutdown surface of an [`Orchestrator`].
///
/// A request's [`Response`] carries the worker of the last stage that handled it, and in
/// `handler_time` its whole time in the pipeline (zero with metrics off).
///
/// # Examples
///
/// ```
/// use channel_orchestrator::Pipeline;
///
/// let (pipeline, responses) = Pipeline::builder()
///     .stage(2, |line: String| line.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
///     .stage(4, |words: Vec<String>| words.iter().filter(|w| w.len() > 3).count())
///     .stage(1, |long_words: usize| long_words * 10)
///     .build()?;
/// pipeline.submit("the quick brown fox jumps".to_string()).unwrap();
/// assert_eq!(responses.recv().unwrap().outcome, Ok(30));
/// assert_eq!(pipeline.call("a pipeline of stages".to_string()), Ok(20));
/// let report = pipeline.shutdown();
/// assert_eq!(report.completed, 2);
/// # Ok::<(), channel_orchestrator::BuildError>(())
/// ```
pub struct Pipeline<In: Send + 'static, Out: Send + 'static> {
    front: Front<In, Out>,
    first: Option<Orchestrator<Env<In, In, Out>, Handoff>>,
    rest: Vec<Box<dyn StageControl>>,
    collector: Option<JoinHandle<Totals>>,
    control: Sender<CollectorControl>,
    /// The pool ids of every stage, to recognise a drop from inside a stage function.
    stage_pools: Vec<u64>,
}

/// An owned handle for submitting to a [`Pipeline`] from threads that cannot borrow it:
/// `Clone + Send + Sync + 'static`, with the pipeline's submitting methods. It does not keep
/// the pipeline alive: after any shutdown, every method hands the request back as
/// `ShutDown`.
pub struct PipelineSubmitter<In: Send + 'static, Out: Send + 'static> {
    front: Front<In, Out>,
}

/// The submitting side of a pipeline: envelopes into the first stage.
struct Front<In: Send + 'static, Out: Send + 'static> {
    first: Submitter<Env<In, In, Out>, Handoff>,
    /// Whether envelopes carry their entry time.
    metrics: bool,
}

impl<In: Send + 'static, Out: Send + 'static> Clone for Front<In, Out> {
    fn clone(&self) -> Self {
        Front {
            first: self.first.clone(),
            metrics: self.metrics,
        }
    }
}

impl<In: Send + 'static, Out: Send + 'static> Clone for PipelineSubmitter<In, Out> {
    fn clone(&self) -> Self {
        PipelineSubmitter {
            front: self.front.clone(),
        }
    }
}

/// Per-stage metrics of a [`Pipeline`], with the pipeline's own totals.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct PipelineSnapshot {
    /// Answers delivered with a value so far.
    pub completed: u64,
    /// Answers delivered with an error so far (a panic in any stage, a deadline, a cancel).
    pub failed: u64,
    /// Answers nobody could receive so far.
    pub undelivered: u64,
    /// One snapshot per stage, in order: queue depth, busy fractions, latency.
    pub stages: Vec<MetricsSnapshot>,
}

impl PipelineSnapshot {
    /// The index of the stage whose workers were busiest over the last interval: the
    /// bottleneck to give more workers. Busy means running the stage's function, never
    /// waiting to hand off to the next stage.
    pub fn bottleneck(&self) -> Option<usize> {
        let busy = |s: &MetricsSnapshot| {
            s.workers.iter().map(|w| w.busy).sum::<f64>() / s.workers.len().max(1) as f64
        };
        (0..self.stages.len())
            .max_by(|&a, &b| busy(&self.stages[a]).total_cmp(&busy(&self.stages[b])))
    }
}

impl Pipeline<(), ()> {
    /// A builder with no stages; add them with [`stage`](PipelineBuilder::stage).
    pub fn builder() -> PipelineBuilder<(), (), NoStages> {
        PipelineBuilder::new()
    }
}

impl<In: Send + 'static, Out: Send + 'static> Front<In, Out> {
    fn env(
        &self,
        req: In,
        deadline: Option<Instant>,
        route: PipeRoute<In, Out>,
    ) -> Env<In, In, Out> {
        // Ids come from the first stage's counter, as those of `process` requests do.
        Env {
            id: self.first.handle().next_id(),
            value: Ok(req),
            route,
            submitted: self.metrics.then(Instant::now),
            deadline,
            worker: WorkerId(0),
        }
    }

    fn submit(&self, req: In, deadline: Option<Instant>) -> Result<RequestId, SubmitError<In>> {
        let env = self.env(req, deadline, PipeRoute::Stream);
        let id = env.id;
        self.first
            .submit(env)
            .map(|_| id)
            .map_err(|e| SubmitError::ShutDown(input(e.into_inner())))
    }

    fn try_submit(&self, req: In) -> Result<RequestId, TrySubmitError<In>> {
        let env = self.env(req, None, PipeRoute::Stream);
        let id = env.id;
        self.first.try_submit(env).map(|_| id).map_err(|e| match e {
            TrySubmitError::Full(env) => TrySubmitError::Full(input(env)),
            TrySubmitError::ShutDown(env) => TrySubmitError::ShutDown(input(env)),
        })
    }

    fn submit_timeout(
        &self,
        req: In,
        timeout: Duration,
    ) -> Result<RequestId, SubmitTimeoutError<In>> {
        let env = self.env(req, None, PipeRoute::Stream);
        let id = env.id;
        self.first
            .submit_timeout(env, timeout)
            .map(|_| id)
            .map_err(|e| match e {
                SubmitTimeoutError::Timeout(env) => SubmitTimeoutError::Timeout(input(env)),
                SubmitTimeoutError::ShutDown(env) => SubmitTimeoutError::ShutDown(input(env)),
            })
    }

    fn call(&self, req: In) -> Result<Out, CallError<In>> {
        let (tx, rx) = bounded(1);
        let env = self.env(req, None, PipeRoute::Call(tx));
        if let Err(e) = self.first.submit(env) {
            return Err(CallError::ShutDown(input(e.into_inner())));
        }
        rx.recv()
            .unwrap_or(Err(CallError::Failed(JobError::WorkerDied)))
    }

    fn call_timeout(&self, req: In, timeout: Duration) -> Result<Out, CallTimeoutError<In>> {
        let deadline = deadline_after(timeout);
        let (tx, rx) = bounded(1);
        let env = self.env(req, deadline, PipeRoute::Call(tx));
        let sent = match deadline {
            Some(at) => self
                .first
                .submit_timeout(env, at.saturating_duration_since(Instant::now())),
            None => self
                .first
                .submit(env)
                .map_err(|e| SubmitTimeoutError::ShutDown(e.into_inner())),
        };
        match sent {
            Ok(_) => {}
            Err(SubmitTimeoutError::Timeout(env)) => {
                return Err(CallTimeoutError::Timeout(input(env)));
            }
            Err(SubmitTimeoutError::ShutDown(env)) => {
                return Err(CallTimeoutError::ShutDown(input(env)));
            }
        }
        let got = match deadline {
            Some(at) => rx.recv_deadline(at).map_err(|e| e.is_timeout()),
            None => rx.recv().map_err(|_| false),
        };
        match got {
            Ok(answer) => answer.map_err(CallTimeoutError::from),
            // The collector will find the receiver gone and count it undelivered.
            Err(true) => Err(CallTimeoutError::Expired),
            Err(false) => Err(CallTimeoutError::Failed(JobError::WorkerDied)),
        }
    }
}

/// The submitting methods, identical on [`Pipeline`] and [`PipelineSubmitter`].
macro_rules! pipeline_submitting_methods {
    () => {
        /// As [`Orchestrator::submit`]: blocks while the first stage's queue is full; the
        /// answer arrives on the pipeline's responses channel.
        ///
        /// # Errors
        ///
        /// `SubmitError::ShutDown(req)` if the pipeline is shutting down.
        pub fn submit(&self, req: In) -> Result<RequestId, SubmitError<In>> {
            self.front.submit(req, None)
        }

        /// As [`Orchestrator::submit_with_deadline`]: a stage that takes the request after
        /// `deadline` does not run its function; the answer is
        /// `Err(JobError::DeadlineExceeded)`.
        ///
        /// # Errors
        ///
        /// `SubmitError::ShutDown(req)` if the pipeline is shutting down.
        pub fn submit_with_deadline(
            &self,
            req: In,
            deadline: Instant,
        ) -> Result<RequestId, SubmitError<In>> {
            self.front.submit(req, Some(deadline))
        }

        /// As [`Orchestrator::try_submit`].
        ///
        /// # Errors
        ///
        /// `TrySubmitError::Full(req)` if the first stage's queue is full,
        /// `TrySubmitError::ShutDown(req)` if the pipeline is shutting down.
        pub fn try_submit(&self, req: In) -> Result<RequestId, TrySubmitError<In>> {
            self.front.try_submit(req)
        }

        /// As [`Orchestrator::submit_timeout`].
        ///
        /// # Errors
        ///
        /// `SubmitTimeoutError::Timeout(req)` if no space freed up in time,
        /// `SubmitTimeoutError::ShutDown(req)` if the pipeline is shutting down.
        pub fn submit_timeout(
            &self,
            req: In,
            timeout: Duration,
        ) -> Result<RequestId, SubmitTimeoutError<In>> {
            self.front.submit_timeout(req, timeout)
        }

        /// As [`Orchestrator::call`]: runs the request through every stage and waits for the
        /// answer, which comes back on a private route.
        ///
        /// # Errors
        ///
        /// `CallError::ShutDown(req)` if the pipeline is shutting down;
        /// `CallError::Cancelled(req)` if a shutdown took it off the first stage's queue;
        /// `CallError::Failed(JobError::Panicked(msg))` if a stage's function panicked (or
        /// `Cancelled` if a `shutdown_timeout` stopped it between stages).
        pub fn call(&self, req: In) -> Result<Out, CallError<In>> {
            self.front.call(req)
        }

        /// As [`Orchestrator::call_timeout`]: at most `timeout` in all; a stage that takes
        /// the request after the deadline does not run its function.
        ///
        /// # Errors
        ///
        /// As [`call`](Self::call), plus `CallTimeoutError::Timeout(req)` (no room in the
        /// first stage in time) and `CallTimeoutError::Expired` (no answer in time).
        pub fn call_timeout(
            &self,
            req: In,
            timeout: Duration,
        ) -> Result<Out, CallTimeoutError<In>> {
            self.front.call_timeout(req, timeout)
        }
    };
}

impl<In: Send + 'static, Out: Send + 'static> PipelineSubmitter<In, Out> {
    pipeline_submitting_methods!();
}

impl<In: Send + 'static, Out: Send + 'static> Pipeline<In, Out> {
    pipeline_submitting_methods!();

    fn first(&self) -> &Orchestrator<Env<In, In, Out>, Handoff> {
        self.first.as_ref().expect("pipeline used after shutdown")
    }

    /// An owned, cloneable handle with the same submitting methods.
    pub fn submitter(&self) -> PipelineSubmitter<In, Out> {
        PipelineSubmitter {
            front: self.front.clone(),
        }
    }

    /// As [`Orchestrator::process`]: feeds `inputs` from this thread and yields responses
    /// as they leave the last stage, never deadlocking, with at most a window of the first
    /// stage's `queue_capacity + workers` requests fed ahead of what was read.
    pub fn process<I>(&self, inputs: I) -> impl Iterator<Item = Response<Out>>
    where
        I: IntoIterator<Item = In>,
    {
        let mut feeder = self
            .first()
            .feeder(inputs.into_iter(), pipeline_job::<In, Out>);
        std::iter::from_fn(move || feeder.step(u64::MAX).map(|(_, r)| r))
    }

    /// As [`Orchestrator::process_ordered`]: yields responses in input order.
    pub fn process_ordered<I>(&self, inputs: I) -> impl Iterator<Item = Response<Out>>
    where
        I: IntoIterator<Item = In>,
    {
        let feeder = self
            .first()
            .feeder(inputs.into_iter(), pipeline_job::<In, Out>);
        let mut ordered = Ordered::new(feeder);
        std::iter::from_fn(move || ordered.next_in_order())
    }

    /// Per-stage metrics and the pipeline's totals so far.
    pub fn metrics(&self) -> PipelineSnapshot {
        let (reply, rx) = bounded(1);
        let _ = self.control.send(CollectorControl::Totals(reply));
        let totals = rx.recv().unwrap_or_default();
        let mut stages = vec![self.first().metrics()];
        stages.extend(self.rest.iter().map(|s| s.metrics()));
        PipelineSnapshot {
            completed: totals.completed,
            failed: totals.failed,
            undelivered: totals.undelivered + self.first().handle().discarded_so_far(),
            stages,
        }
    }

    /// Subscribes to the metrics stream of the **last** stage: its snapshots count what
    /// left the pipeline, and its `Shutdown` event comes when the pipeline is down. See
    /// [`subscribe_stage`](Self::subscribe_stage) for the others.
    pub fn subscribe(&self) -> Receiver<MetricsEvent> {
        match self.rest.last() {
            Some(last) => last.subscribe(),
            None => self.first().subscribe(),
        }
    }

    /// Subscribes to stage `k`'s metrics stream (as [`Orchestrator::subscribe`]); `None` if
    /// there is no stage `k`.
    pub fn subscribe_stage(&self, k: usize) -> Option<Receiver<MetricsEvent>> {
        match k {
            0 => Some(self.first().subscribe()),
            k => self.rest.get(k - 1).map(|s| s.subscribe()),
        }
    }

    /// The number of stages.
    pub fn stages(&self) -> usize {
        1 + self.rest.len()
    }

    /// Drains every stage in order and joins every thread; see [`Orchestrator::shutdown`].
    ///
    /// # Panics
    ///
    /// If called from inside one of this pipeline's own stage functions (it would wait for
    /// itself forever); drop the pipeline there instead.
    pub fn shutdown(mut self) -> ShutdownReport<In> {
        self.stop(Stop::Drain, None)
    }

    /// As [`shutdown`](Self::shutdown) until `timeout`, then as
    /// [`shutdown_now`](Self::shutdown_now) for the first stage; requests still queued in
    /// later stages are answered `JobError::Cancelled`, and answers still waiting for room on
    /// a full response channel are counted as `undelivered`.
    ///
    /// # Panics
    ///
    /// As [`shutdown`](Self::shutdown).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> ShutdownReport<In> {
        self.stop(Stop::Drain, deadline_after(timeout))
    }

    /// The first stage starts nothing more (its queued requests come back in `unstarted`);
    /// later stages drain, since their requests already started.
    ///
    /// # Panics
    ///
    /// As [`shutdown`](Self::shutdown).
    pub fn shutdown_now(mut self) -> ShutdownReport<In> {
        self.stop(Stop::Now, None)
    }

    fn reentrant(&self) -> bool {
        self.stage_pools
            .iter()
            .any(|&pool| crate::reentry::is_worker_of(pool))
    }

    fn stop(&mut self, how: Stop, deadline: Option<Instant>) -> ShutdownReport<In> {
        assert!(
            !self.reentrant(),
            "shutdown called from a stage of this same pipeline would wait for itself \
             forever; drop the pipeline there instead, or shut it down from another thread"
        );
        let started = Instant::now();
        let Some(first) = self.first.take() else {
            unreachable!("shutdown runs once")
        };
        // Responses that `process` iterators dropped early waited for and discarded.
        let discarded = first.handle().discarded_so_far();
        if let Some(d) = deadline {
            let _ = self.control.send(CollectorControl::Deadline(d));
        }
        // The first stage never gives up on a hand-off either: past the deadline it starts
        // nothing more, and what it already ran travels on.
        let report = match (how, deadline) {
            (Stop::Now, _) => first.shutdown_now(),
            (Stop::Drain, None) => first.shutdown(),
            (Stop::Drain, Some(d)) => first.shutdown_stage(Some(d)),
        };
        for stage in self.rest.drain(..) {
            stage.shutdown(deadline);
        }
        let totals = self
            .collector
            .take()
            .map(|h| h.join().unwrap_or_else(|p| panic::resume_unwind(p)))
            .unwrap_or_default();
        let mut unstarted = Vec::with_capacity(report.unstarted.len());
        let mut cancelled = 0;
        for (_, env) in report.unstarted {
            let id = env.id;
            match env.route {
                PipeRoute::Call(reply) => {
                    cancelled += 1;
                    let req = input_of(env.value);
                    let _ = reply.send(Err(CallError::Cancelled(req)));
                }
                _ => unstarted.push((id, input_of(env.value))),
            }
        }
        ShutdownReport {
            submitted: totals.completed + totals.failed + unstarted.len() as u64 + cancelled,
            completed: totals.completed,
            failed: totals.failed,
            undelivered: totals.undelivered + discarded,
            unstarted,
            cancelled,
            rejected: report.rejected,
            elapsed: started.elapsed(),
        }
    }
}

#[derive(Clone, Copy)]
enum Stop {
    Drain,
    Now,
}

/// The first-stage job of one `process` input.
fn pipeline_job<In: Send + 'static, Out: Send + 'static>(
    handle: &Handle<Env<In, In, Out>, Handoff>,
    req: In,
    tag: Tag<Out>,
) -> Job<Env<In, In, Out>, Handoff> {
    let env = Env {
        id: handle.next_id(),
        value: Ok(req),
        route: PipeRoute::Process(tag),
        submitted: None,
        deadline: None,
        worker: WorkerId(0),
    };
    let mut job = handle.job(env, None, Route::Stream);
    job.req.submitted = job.enqueued.get(handle.epoch());
    job
}

/// The request inside a first-stage envelope (its value is always `Ok` there).
fn input<In, Out>(env: Env<In, In, Out>) -> In {
    input_of(env.value)
}

fn input_of<In>(value: Result<In, JobError>) -> In {
    match value {
        Ok(req) => req,
        Err(_) => unreachable!("first-stage envelopes hold their request"),
    }
}

impl<In: Send + 'static, Out: Send + 'static> Drop for Pipeline<In, Out> {
    /// The same as [`shutdown`](Pipeline::shutdown), discarding the report. Dropped inside
    /// one of its own stage functions, it cannot wait for that stage: a helper thread runs
    /// the same staged shutdown, and ends when it is done.
    fn drop(&mut self) {
        let Some(first) = self.first.take() else {
            return;
        };
        let rest = std::mem::take(&mut self.rest);
        let collector = self.collector.take();
        let teardown = move || {
            // Same order as `shutdown`: first stage, later stages, then the collector.
            drop(first);
            for stage in rest {
                stage.shutdown(None);
            }
            if let Some(h) = collector {
                let _ = h.join();
            }
        };
        if self.reentrant() {
            let _detached = thread::Builder::new()
                .name("pipeline-teardown".to_owned())
                .spawn(teardown);
        } else {
            teardown();
        }
    }
}

impl<In: Send + 'static, Out: Send + 'static> fmt::Debug for Pipeline<In, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pipeline")
            .field(
                "stages",
                &(self.rest.len() + usize::from(self.first.is_some())),
            )
            .finish_non_exhaustive()
    }
}

impl<In: Send + 'static, Out: Send + 'static> fmt::Debug for PipelineSubmitter<In, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineSubmitter").finish_non_exhaustive()
    }
}
