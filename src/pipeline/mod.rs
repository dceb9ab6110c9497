//! Multi-stage pipelines: a typed chain of orchestrators with bounded queues between them.
//!
//! ```text
//!  submit/call/process ─► stage 0 ─(submit, blocks when full)─► stage 1 ─► … ─► last stage
//!                          N₀ workers                           N₁ workers        │ bounded
//!                                                                                 ▼
//!                              responses / call reply / process channel ◄── collector thread
//! ```
//!
//! Each stage is an [`Orchestrator`] whose requests are envelopes: the pipeline's request id,
//! the value so far (or the error that ended it), and the route of the final answer. A stage
//! worker runs its function, then submits the envelope to the next stage — a blocking
//! submit, so a slow stage pushes back all the way to the producer. The last stage hands
//! envelopes to one collector thread, which owns the pipeline's totals and delivers each
//! answer on its route. A panic in a stage turns the envelope's value into an error that
//! travels on (later stages skip it) and is re-raised inside the stage, so that stage's own
//! metrics count it and its worker events report it.
//!
//! Shutdown goes stage by stage: the first stage as asked (drain, deadline or now), then
//! each later stage drains — its requests already started — and only a `shutdown_timeout`
//! past its deadline cancels what still waits in a later stage's queue (answered
//! `JobError::Cancelled`).

use std::marker::PhantomData;
use std::panic::{self, AssertUnwindSafe};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError, at, bounded, never, select, unbounded};

use crate::builder::{
    DEFAULT_QUEUE_CAPACITY, DEFAULT_THREAD_NAME, MAX_QUEUE_CAPACITY, MAX_WORKERS,
};
use crate::error::{
    BuildError, BuildErrorKind, CallError, JobError, SubmitError, SubmitTimeoutError,
    TrySubmitError,
};
use crate::message::{Job, RequestId, Response, Route, WorkerId};
use crate::metrics::MetricsSnapshot;
use crate::orchestrator::{Handle, Orchestrator, ShutdownReport, Submitter};
use crate::process::{Feeder, Ordered, Tag};
use crate::worker::{Handoff, JobContext, drop_quietly};

/// A request on its way through the stages: `T` is the value so far.
///
/// `pub` only because the sealed [`Chain`] trait names it; the module is private, so no
/// user can name it.
#[allow(unreachable_pub, missing_debug_implementations)]
pub struct Env<T, In, Out> {
    id: RequestId,
    value: Result<T, JobError>,
    route: PipeRoute<In, Out>,
    submitted: Option<Instant>,
    worker: WorkerId,
}

enum PipeRoute<In, Out> {
    /// To the pipeline's responses channel.
    Stream,
    /// To a waiting `call`.
    Call(Sender<Result<Out, CallError<In>>>),
    /// To a `process` feeder.
    Process(Tag<Out>),
}

/// Where a stage puts what it produced. (`pub` for the sealed [`Chain`], like [`Env`].)
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

/// The options shared by every stage. (`pub` for the sealed [`Chain`], like [`Env`].)
#[derive(Debug, Clone)]
#[allow(unreachable_pub, missing_debug_implementations)]
pub struct Options {
    queue_capacity: usize,
    response_capacity: Option<usize>,
    thread_name: String,
    metrics_interval: Option<Duration>,
    metrics: bool,
}

/// A stage's shutdown and metrics, whatever its value type.
#[allow(unreachable_pub, missing_debug_implementations)]
pub trait StageControl: Send + Sync {
    fn metrics(&self) -> MetricsSnapshot;
    fn pool_id(&self) -> u64;
    /// Drains (or, past `deadline`, cancels) and joins the stage.
    fn shutdown(self: Box<Self>, deadline: Option<Instant>);
}

struct LaterStage<T, In, Out> {
    orch: Orchestrator<Env<T, In, Out>, Handoff>,
    collector: Sender<Env<Out, In, Out>>,
}

impl<T: Send + 'static, In: Send + 'static, Out: Send + 'static> StageControl
    for LaterStage<T, In, Out>
{
    fn metrics(&self) -> MetricsSnapshot {
        self.orch.metrics()
    }

    fn pool_id(&self) -> u64 {
        self.orch.pool_id()
    }

    fn shutdown(self: Box<Self>, deadline: Option<Instant>) {
        // Never gives up on a hand-off: what a stage produced is a request of the next.
        let report = self.orch.shutdown_stage(deadline);
        for (_, env) in report.unstarted {
            let Env {
                id,
                route,
                submitted,
                worker,
                ..
            } = env;
            let value = Err(JobError::Cancelled);
            let _ = self.collector.send(Env {
                id,
                value,
                route,
                submitted,
                worker,
            });
        }
    }
}

/// What building a chain of stages produces: the typed first stage and the rest.
#[allow(unreachable_pub, missing_debug_implementations)]
pub struct Built<In, Out> {
    first: Orchestrator<Env<In, In, Out>, Handoff>,
    rest: Vec<Box<dyn StageControl>>,
}

/// A typed chain of stages, made by [`PipelineBuilder::stage`]. Sealed; you never name it.
pub trait Chain<In, Cur>: sealed::Sealed {
    #[doc(hidden)]
    fn depth(&self) -> usize;
    #[doc(hidden)]
    fn total_workers(&self) -> usize;
    #[doc(hidden)]
    fn build_chain<Out: Send + 'static>(
        self,
        opts: &Options,
        sink: Sink<Cur, In, Out>,
        collector: &Sender<Env<Out, In, Out>>,
    ) -> Result<Built<In, Out>, BuildError>;
}

mod sealed {
    pub trait Sealed {}
    impl<F, A, B> Sealed for super::First<F, A, B> {}
    impl<C, F, A, B> Sealed for super::Then<C, F, A, B> {}
}

/// The first stage of a chain (see [`Chain`]).
#[derive(Debug)]
pub struct First<F, A, B> {
    workers: usize,
    f: F,
    _types: PhantomData<fn(A) -> B>,
}

/// A stage after others (see [`Chain`]).
#[derive(Debug)]
pub struct Then<C, F, A, B> {
    prev: C,
    workers: usize,
    f: F,
    _types: PhantomData<fn(A) -> B>,
}

/// Starts one stage: an orchestrator over envelopes whose handler applies `f` and hands the
/// result on. A panic in `f` becomes the envelope's error, which later stages pass along.
fn start_stage<A, B, In, Out, F>(
    opts: &Options,
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
    let mut b = Orchestrator::builder()
        .workers(workers)
        .queue_capacity(opts.queue_capacity)
        .thread_name(format!("{}-s{index}", opts.thread_name))
        .metrics(opts.metrics);
    if let Some(interval) = opts.metrics_interval {
        b = b.metrics_interval(interval);
    }
    let sink = Arc::new(sink);
    b.build_stage(
        move |_: &mut (), ctx: &JobContext, env: Env<A, In, Out>| -> Handoff {
            let Env {
                id,
                value,
                route,
                submitted,
                ..
            } = env;
            let value = value.and_then(|x| {
                panic::catch_unwind(AssertUnwindSafe(|| f(x)))
                    .map_err(|p| JobError::Panicked(crate::worker::message_of(p)))
            });
            let env = Env {
                id,
                value,
                route,
                submitted,
                worker: ctx.worker(),
            };
            // The hand-off runs after the stage's function, outside its timing: a blocking
            // one runs once the worker reported itself not busy.
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

impl<F, A, B> Chain<A, B> for First<F, A, B>
where
    A: Send + 'static,
    B: Send + 'static,
    F: Fn(A) -> B + Send + Sync + 'static,
{
    fn depth(&self) -> usize {
        0
    }

    fn total_workers(&self) -> usize {
        self.workers
    }

    fn build_chain<Out: Send + 'static>(
        self,
        opts: &Options,
        sink: Sink<B, A, Out>,
        _collector: &Sender<Env<Out, A, Out>>,
    ) -> Result<Built<A, Out>, BuildError> {
        let first = start_stage(opts, 0, self.workers, self.f, sink)?;
        Ok(Built {
            first,
            rest: Vec::new(),
        })
    }
}

impl<In, C, F, A, B> Chain<In, B> for Then<C, F, A, B>
where
    In: Send + 'static,
    A: Send + 'static,
    B: Send + 'static,
    C: Chain<In, A>,
    F: Fn(A) -> B + Send + Sync + 'static,
{
    fn depth(&self) -> usize {
        self.prev.depth() + 1
    }

    fn total_workers(&self) -> usize {
        self.prev.total_workers().saturating_add(self.workers)
    }

    fn build_chain<Out: Send + 'static>(
        self,
        opts: &Options,
        sink: Sink<B, In, Out>,
        collector: &Sender<Env<Out, In, Out>>,
    ) -> Result<Built<In, Out>, BuildError> {
        let index = self.depth();
        let orch = start_stage(opts, index, self.workers, self.f, sink)?;
        // If an earlier stage fails to start, `orch` is dropped: a graceful shutdown.
        let mut built = self
            .prev
            .build_chain(opts, Sink::Next(orch.submitter()), collector)?;
        built.rest.push(Box::new(LaterStage {
            orch,
            collector: collector.clone(),
        }));
        Ok(built)
    }
}

/// Configures a [`Pipeline`]; made by [`Pipeline::builder`]. `In` is the pipeline's request
/// type, `Cur` the output type of the last stage so far.
#[derive(Debug)]
#[must_use = "a builder does nothing until build() is called"]
pub struct PipelineBuilder<In, Cur, C> {
    chain: C,
    opts: Options,
    _types: PhantomData<fn(In) -> Cur>,
}

/// The empty chain, before the first [`stage`](PipelineBuilder::stage).
#[derive(Debug)]
pub struct NoStages;

impl<In, Cur, C> PipelineBuilder<In, Cur, C> {
    /// The bound on each stage's queue. Default: 1024. `0` makes `build` fail.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.opts.queue_capacity = n;
        self
    }

    /// Bounds the responses channel (default: unbounded), as
    /// [`Builder::response_capacity`](crate::Builder::response_capacity).
    pub fn response_capacity(mut self, n: usize) -> Self {
        self.opts.response_capacity = Some(n);
        self
    }

    /// The prefix of thread names: stage `k`'s workers are `"{name}-s{k}-worker-{i}"`, the
    /// collector `"{name}-collector"`. Default: `"orchestrator"`.
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.opts.thread_name = name.into();
        self
    }

    /// The period of each stage's metrics snapshots. Default: 100 ms.
    pub fn metrics_interval(mut self, interval: Duration) -> Self {
        self.opts.metrics_interval = Some(interval);
        self
    }

    /// Whether stages collect metrics (default `true`); see
    /// [`Builder::metrics`](crate::Builder::metrics).
    pub fn metrics(mut self, on: bool) -> Self {
        self.opts.metrics = on;
        self
    }
}

impl PipelineBuilder<(), (), NoStages> {
    /// Adds the first stage: `workers` threads running `f` on each request.
    pub fn stage<A, B, F>(self, workers: usize, f: F) -> PipelineBuilder<A, B, First<F, A, B>>
    where
        F: Fn(A) -> B + Send + Sync + 'static,
    {
        PipelineBuilder {
            chain: First {
                workers,
                f,
                _types: PhantomData,
            },
            opts: self.opts,
            _types: PhantomData,
        }
    }
}

impl<In, Cur, C> PipelineBuilder<In, Cur, C>
where
    In: Send + 'static,
    Cur: Send + 'static,
    C: Chain<In, Cur>,
{
    /// Adds a stage after the others: `workers` threads running `f` on the previous stage's
    /// output. The queue between the stages is bounded, so back-pressure reaches the producer.
    pub fn stage<B, F>(self, workers: usize, f: F) -> PipelineBuilder<In, B, Then<C, F, Cur, B>>
    where
        F: Fn(Cur) -> B + Send + Sync + 'static,
    {
        PipelineBuilder {
            chain: Then {
                prev: self.chain,
                workers,
                f,
                _types: PhantomData,
            },
            opts: self.opts,
            _types: PhantomData,
        }
    }

    /// Starts every stage and the collector. Returns the pipeline and the receiver of
    /// responses to `submit`, `try_submit` and `submit_timeout`.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] when a stage has 0 workers, `queue_capacity` is 0, or a thread could
    /// not be spawned. No thread is left running.
    #[allow(clippy::type_complexity)] // the pair is the API
    pub fn build(self) -> Result<(Pipeline<In, Cur>, Receiver<Response<Cur>>), BuildError> {
        let opts = self.opts;
        // Checked before anything is allocated (the collector's inbox and the response
        // channel take their slots up front); each stage checks the rest.
        if opts.queue_capacity == 0 {
            return Err(BuildError::new(BuildErrorKind::ZeroQueueCapacity));
        }
        if opts.queue_capacity > MAX_QUEUE_CAPACITY {
            return Err(BuildError::new(BuildErrorKind::QueueTooLarge));
        }
        if opts
            .response_capacity
            .is_some_and(|c| c > MAX_QUEUE_CAPACITY)
        {
            return Err(BuildError::new(BuildErrorKind::ResponsesTooLarge));
        }
        // Every stage's workers are threads of one process: the limit is for all of them.
        if self.chain.total_workers() > MAX_WORKERS {
            return Err(BuildError::new(BuildErrorKind::TooManyWorkers));
        }
        let (resp_tx, resp_rx) = match opts.response_capacity {
            Some(cap) => bounded(cap),
            None => unbounded(),
        };
        // Room for one envelope per last-stage slot keeps the last stage flowing.
        let (env_tx, env_rx) = bounded(opts.queue_capacity.max(1));
        let (ctl_tx, ctl_rx) = unbounded();
        let Built { first, rest } =
            self.chain
                .build_chain(&opts, Sink::Collect(env_tx.clone()), &env_tx)?;
        drop(env_tx);
        let collector = Collector {
            inbox: env_rx,
            control: ctl_rx,
            responses: resp_tx,
            totals: Totals::default(),
            deadline: None,
            listening: true,
        };
        let name = format!("{}-collector", opts.thread_name);
        let collector = match thread::Builder::new()
            .name(name.clone())
            .spawn(move || collector.run())
        {
            Ok(h) => h,
            Err(source) => {
                drop(first);
                for stage in rest {
                    stage.shutdown(None);
                }
                return Err(BuildError::new(BuildErrorKind::Spawn {
                    thread: name,
                    source,
                }));
            }
        };
        let mut stage_pools = vec![first.pool_id()];
        stage_pools.extend(rest.iter().map(|s| s.pool_id()));
        let pipeline = Pipeline {
            stage_pools,
            window: first.window(),
            first: Some(first),
            rest,
            collector: Some(collector),
            control: ctl_tx,
            metrics: opts.metrics,
        };
        Ok((pipeline, resp_rx))
    }
}

/// The collector's exact totals.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    completed: u64,
    failed: u64,
    undelivered: u64,
}

enum CollectorControl {
    /// Past this instant, stop waiting for response space (`shutdown_timeout`).
    Deadline(Instant),
    Totals(Sender<Totals>),
}

/// The thread at the end of the pipeline: it alone delivers answers and counts them.
struct Collector<In, Out> {
    inbox: Receiver<Env<Out, In, Out>>,
    control: Receiver<CollectorControl>,
    responses: Sender<Response<Out>>,
    totals: Totals,
    /// A `shutdown_timeout`'s deadline: past it, a full response channel is given up on.
    deadline: Option<Instant>,
    /// Whether the control channel is still open.
    listening: bool,
}

impl<In: Send + 'static, Out: Send + 'static> Collector<In, Out> {
    fn run(mut self) -> Totals {
        loop {
            let control = if self.listening {
                self.control.clone()
            } else {
                never()
            };
            select! {
                recv(self.inbox) -> env => match env {
                    Ok(env) => self.deliver(env),
                    // Every stage is down.
                    Err(_) => return self.totals,
                },
                recv(control) -> msg => self.on_control(msg),
            }
        }
    }

    fn on_control(&mut self, msg: Result<CollectorControl, crossbeam_channel::RecvError>) {
        match msg {
            Ok(CollectorControl::Deadline(deadline)) => self.deadline = Some(deadline),
            Ok(CollectorControl::Totals(reply)) => drop(reply.send(self.totals)),
            Err(_) => self.listening = false,
        }
    }

    fn deliver(&mut self, env: Env<Out, In, Out>) {
        let Env {
            id,
            value,
            route,
            submitted,
            worker,
        } = env;
        if value.is_ok() {
            self.totals.completed += 1;
        } else {
            self.totals.failed += 1;
        }
        let response = |outcome| Response {
            id,
            worker,
            outcome,
            queue_time: Duration::ZERO,
            handler_time: submitted.map(|t| t.elapsed()).unwrap_or_default(),
        };
        let delivered = match route {
            PipeRoute::Stream => match self.responses.try_send(response(value)) {
                Ok(()) => true,
                Err(TrySendError::Disconnected(r)) => {
                    drop_quietly(r);
                    false
                }
                Err(TrySendError::Full(r)) => self.wait_for_space(r),
            },
            PipeRoute::Call(reply) => match reply.send(value.map_err(CallError::Failed)) {
                Ok(()) => true,
                Err(lost) => {
                    drop_quietly(lost);
                    false
                }
            },
            PipeRoute::Process((tx, seq)) => match tx.send((seq, response(value))) {
                Ok(()) => true,
                Err(lost) => {
                    drop_quietly(lost);
                    false
                }
            },
        };
        if !delivered {
            self.totals.undelivered += 1;
        }
    }

    /// The response channel is full: wait for space, still answering control messages,
    /// until a `shutdown_timeout`'s deadline (which may arrive while waiting) has passed.
    fn wait_for_space(&mut self, response: Response<Out>) -> bool {
        loop {
            let give_up = match self.deadline {
                Some(d) if d <= Instant::now() => {
                    drop_quietly(response);
                    return false;
                }
                Some(d) => at(d),
                None => never(),
            };
            let control = if self.listening {
                self.control.clone()
            } else {
                never()
            };
            select! {
                send(self.responses, response) -> sent => return match sent {
                    Ok(()) => true,
                    Err(lost) => {
                        drop_quietly(lost);
                        false
                    }
                },
                recv(control) -> msg => self.on_control(msg),
                recv(give_up) -> _ => {}
            }
        }
    }
}

/// A chain of stages, each a pool of workers with its own function, joined by bounded
/// queues. Built with [`Pipeline::builder`]; it has the same submitting, `process`, metrics
/// and shutdown surface as [`Orchestrator`].
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
    first: Option<Orchestrator<Env<In, In, Out>, Handoff>>,
    rest: Vec<Box<dyn StageControl>>,
    collector: Option<JoinHandle<Totals>>,
    control: Sender<CollectorControl>,
    metrics: bool,
    window: usize,
    /// The pool ids of every stage, to recognise a drop from inside a stage function.
    stage_pools: Vec<u64>,
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
    /// bottleneck to give more workers.
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
        PipelineBuilder {
            chain: NoStages,
            opts: Options {
                queue_capacity: DEFAULT_QUEUE_CAPACITY,
                response_capacity: None,
                thread_name: DEFAULT_THREAD_NAME.to_owned(),
                metrics_interval: None,
                metrics: true,
            },
            _types: PhantomData,
        }
    }
}

impl<In: Send + 'static, Out: Send + 'static> Pipeline<In, Out> {
    fn first(&self) -> &Orchestrator<Env<In, In, Out>, Handoff> {
        self.first.as_ref().expect("pipeline used after shutdown")
    }

    fn env(&self, req: In, route: PipeRoute<In, Out>) -> Env<In, In, Out> {
        // Ids come from the first stage's counter, as those of `process` requests do.
        Env {
            id: self.first().feed_parts().0.next_id(),
            value: Ok(req),
            route,
            submitted: self.metrics.then(Instant::now),
            worker: WorkerId(0),
        }
    }

    /// As [`Orchestrator::submit`]: blocks while the first stage's queue is full.
    ///
    /// # Errors
    ///
    /// `SubmitError::ShutDown(req)` if the pipeline is shutting down.
    pub fn submit(&self, req: In) -> Result<RequestId, SubmitError<In>> {
        let env = self.env(req, PipeRoute::Stream);
        let id = env.id;
        self.first()
            .submit(env)
            .map(|_| id)
            .map_err(|e| SubmitError::ShutDown(input(e.into_inner())))
    }

    /// As [`Orchestrator::try_submit`].
    ///
    /// # Errors
    ///
    /// `TrySubmitError::Full(req)` if the first stage's queue is full,
    /// `TrySubmitError::ShutDown(req)` if the pipeline is shutting down.
    pub fn try_submit(&self, req: In) -> Result<RequestId, TrySubmitError<In>> {
        let env = self.env(req, PipeRoute::Stream);
        let id = env.id;
        self.first()
            .try_submit(env)
            .map(|_| id)
            .map_err(|e| match e {
                TrySubmitError::Full(env) => TrySubmitError::Full(input(env)),
                TrySubmitError::ShutDown(env) => TrySubmitError::ShutDown(input(env)),
            })
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
        let env = self.env(req, PipeRoute::Stream);
        let id = env.id;
        self.first()
            .submit_timeout(env, timeout)
            .map(|_| id)
            .map_err(|e| match e {
                SubmitTimeoutError::Timeout(env) => SubmitTimeoutError::Timeout(input(env)),
                SubmitTimeoutError::ShutDown(env) => SubmitTimeoutError::ShutDown(input(env)),
            })
    }

    /// As [`Orchestrator::call`]: runs the request through every stage and waits for the
    /// answer, which comes back on a private route.
    ///
    /// # Errors
    ///
    /// `CallError::ShutDown(req)` if the pipeline is shutting down;
    /// `CallError::Failed(JobError::Panicked(msg))` if a stage's function panicked.
    pub fn call(&self, req: In) -> Result<Out, CallError<In>> {
        let (tx, rx) = bounded(1);
        let env = self.env(req, PipeRoute::Call(tx));
        if let Err(e) = self.first().submit(env) {
            return Err(CallError::ShutDown(input(e.into_inner())));
        }
        rx.recv()
            .unwrap_or(Err(CallError::Failed(JobError::WorkerDied)))
    }

    /// As [`Orchestrator::process`]: feeds `inputs` from this thread and yields responses
    /// as they leave the last stage, never deadlocking, with at most a window of the first
    /// stage's `queue_capacity + workers` requests fed ahead of what was read.
    pub fn process<I>(&self, inputs: I) -> impl Iterator<Item = Response<Out>> + '_
    where
        I: IntoIterator<Item = In>,
        I::IntoIter: 'static,
    {
        let mut feeder = self.feeder(inputs.into_iter());
        std::iter::from_fn(move || feeder.step(u64::MAX).map(|(_, r)| r))
    }

    /// As [`Orchestrator::process_ordered`]: yields responses in input order.
    pub fn process_ordered<I>(&self, inputs: I) -> impl Iterator<Item = Response<Out>> + '_
    where
        I: IntoIterator<Item = In>,
        I::IntoIter: 'static,
    {
        let mut ordered = Ordered::new(self.feeder(inputs.into_iter()));
        std::iter::from_fn(move || ordered.next_in_order())
    }

    fn feeder<I: Iterator<Item = In>>(
        &self,
        inputs: I,
    ) -> Feeder<'_, Env<In, In, Out>, Handoff, Out, I> {
        let (handle, intake) = self.first().feed_parts();
        // Every envelope fed stays in flight until the collector answers it; the window
        // bounds that, and the collector's process channel has exactly that many slots.
        Feeder::new(handle, intake, self.window, inputs, pipeline_job::<In, Out>)
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
            undelivered: totals.undelivered + self.first().feed_parts().0.discarded_so_far(),
            stages,
        }
    }

    /// Drains every stage in order and joins every thread; see [`Orchestrator::shutdown`].
    pub fn shutdown(mut self) -> ShutdownReport<In> {
        self.stop(Stop::Drain, None)
    }

    /// As [`shutdown`](Self::shutdown) until `timeout`, then as
    /// [`shutdown_now`](Self::shutdown_now) for the first stage; requests still queued in
    /// later stages are answered `JobError::Cancelled`.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> ShutdownReport<In> {
        let deadline = Instant::now().checked_add(timeout);
        self.stop(Stop::Drain, deadline)
    }

    /// The first stage starts nothing more (its queued requests come back in `unstarted`);
    /// later stages drain, since their requests already started.
    pub fn shutdown_now(mut self) -> ShutdownReport<In> {
        self.stop(Stop::Now, None)
    }

    fn stop(&mut self, how: Stop, deadline: Option<Instant>) -> ShutdownReport<In> {
        assert!(
            !self
                .stage_pools
                .iter()
                .any(|&pool| crate::worker::is_worker_of(pool)),
            "shutdown called from a stage of this same pipeline would wait for itself \
             forever; drop the pipeline there instead, or shut it down from another thread"
        );
        let started = Instant::now();
        let Some(first) = self.first.take() else {
            unreachable!("shutdown runs once")
        };
        // Responses that `process` iterators dropped early waited for and discarded.
        let discarded = first.feed_parts().0.discarded_so_far();
        if let Some(d) = deadline {
            let _ = self.control.send(CollectorControl::Deadline(d));
        }
        // The first stage never gives up on a hand-off either: past the deadline it starts
        // nothing more, and what it already ran travels on (only the collector gives up on
        // a full response channel, and counts that as undelivered).
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
            match env.route {
                PipeRoute::Call(reply) => {
                    cancelled += 1;
                    let _ = reply.send(Err(CallError::Cancelled(input(Env {
                        route: PipeRoute::Stream,
                        ..env
                    }))));
                }
                _ => unstarted.push((env.id, input(env))),
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
        worker: WorkerId(0),
    };
    let mut job = handle.job(env, None, Route::Stream);
    job.req.submitted = job.enqueued;
    job
}

/// The request inside a first-stage envelope (its value is always `Ok` there).
fn input<In, Out>(env: Env<In, In, Out>) -> In {
    match env.value {
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
        if self
            .stage_pools
            .iter()
            .any(|&pool| crate::worker::is_worker_of(pool))
        {
            let _detached = thread::Builder::new()
                .name("pipeline-teardown".to_owned())
                .spawn(teardown);
        } else {
            teardown();
        }
    }
}

impl<In: Send + 'static, Out: Send + 'static> std::fmt::Debug for Pipeline<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field(
                "stages",
                &(self.rest.len() + usize::from(self.first.is_some())),
            )
            .finish_non_exhaustive()
    }
}
