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

use crossbeam_channel::{Receiver, Sender, at, bounded, never, select, unbounded};

use crate::builder::{DEFAULT_QUEUE_CAPACITY, DEFAULT_THREAD_NAME};
use crate::error::{
    BuildError, BuildErrorKind, CallError, JobError, SubmitError, SubmitTimeoutError,
    TrySubmitError,
};
use crate::message::{Job, RequestId, Response, Route, WorkerId, panic_message};
use crate::metrics::MetricsSnapshot;
use crate::orchestrator::{Handle, Orchestrator, ShutdownReport, Submitter};
use crate::process::{Feeder, Ordered, Tag};
use crate::worker::JobContext;

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
    Next(Submitter<Env<T, In, Out>, ()>),
    Collect(Sender<Env<T, In, Out>>),
}

impl<T: Send + 'static, In: Send + 'static, Out: Send + 'static> Sink<T, In, Out> {
    fn put(&self, env: Env<T, In, Out>) {
        match self {
            // The next stage shuts down only after this one drained, so it is open.
            Sink::Next(next) => drop(next.submit(env)),
            // The collector runs until every stage is down.
            Sink::Collect(tx) => drop(tx.send(env)),
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
    /// Drains (or, past `deadline`, cancels) and joins the stage.
    fn shutdown(self: Box<Self>, deadline: Option<Instant>);
}

struct LaterStage<T, In, Out> {
    orch: Orchestrator<Env<T, In, Out>, ()>,
    collector: Sender<Env<Out, In, Out>>,
}

impl<T: Send + 'static, In: Send + 'static, Out: Send + 'static> StageControl
    for LaterStage<T, In, Out>
{
    fn metrics(&self) -> MetricsSnapshot {
        self.orch.metrics()
    }

    fn shutdown(self: Box<Self>, deadline: Option<Instant>) {
        let report = match deadline {
            None => self.orch.shutdown(),
            Some(at) => self
                .orch
                .shutdown_timeout(at.saturating_duration_since(Instant::now())),
        };
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
    first: Orchestrator<Env<In, In, Out>, ()>,
    rest: Vec<Box<dyn StageControl>>,
}

/// A typed chain of stages, made by [`PipelineBuilder::stage`]. Sealed; you never name it.
pub trait Chain<In, Cur>: sealed::Sealed {
    #[doc(hidden)]
    fn depth(&self) -> usize;
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

/// Starts one stage: an orchestrator over envelopes whose handler applies `f`.
fn start_stage<A, B, In, Out, F>(
    opts: &Options,
    index: usize,
    workers: usize,
    f: F,
    sink: Sink<B, In, Out>,
) -> Result<Orchestrator<Env<A, In, Out>, ()>, BuildError>
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
    let (orch, _unused) = b.build_with_context(
        |_| (),
        move |_: &mut (), ctx: &JobContext, env: Env<A, In, Out>| {
            let Env {
                id,
                value,
                route,
                submitted,
                ..
            } = env;
            let mut payload = None;
            let value = value.and_then(|x| {
                panic::catch_unwind(AssertUnwindSafe(|| f(x))).map_err(|p| {
                    let message = panic_message(&*p);
                    payload = Some(p);
                    JobError::Panicked(message)
                })
            });
            sink.put(Env {
                id,
                value,
                route,
                submitted,
                worker: ctx.worker(),
            });
            if let Some(p) = payload {
                // Let this stage's orchestrator count it and report it.
                panic::resume_unwind(p);
            }
        },
    )?;
    Ok(orch)
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
        let pipeline = Pipeline {
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
}

impl<In: Send + 'static, Out: Send + 'static> Collector<In, Out> {
    fn run(self) -> Totals {
        let mut totals = Totals::default();
        let mut control = self.control.clone();
        let mut give_up = never();
        loop {
            select! {
                recv(self.inbox) -> env => match env {
                    Ok(env) => self.deliver(env, &mut totals, &give_up),
                    // Every stage is down.
                    Err(_) => return totals,
                },
                recv(control) -> msg => match msg {
                    Ok(CollectorControl::Deadline(deadline)) => give_up = at(deadline),
                    Ok(CollectorControl::Totals(reply)) => drop(reply.send(totals)),
                    Err(_) => control = never(),
                },
            }
        }
    }

    fn deliver(&self, env: Env<Out, In, Out>, totals: &mut Totals, give_up: &Receiver<Instant>) {
        let Env {
            id,
            value,
            route,
            submitted,
            worker,
        } = env;
        if value.is_ok() {
            totals.completed += 1;
        } else {
            totals.failed += 1;
        }
        let response = |outcome| Response {
            id,
            worker,
            outcome,
            queue_time: Duration::ZERO,
            handler_time: submitted.map(|t| t.elapsed()).unwrap_or_default(),
        };
        let delivered = match route {
            PipeRoute::Stream => {
                let r = response(value);
                match self.responses.try_send(r) {
                    Ok(()) => true,
                    Err(crossbeam_channel::TrySendError::Disconnected(_)) => false,
                    Err(crossbeam_channel::TrySendError::Full(r)) => select! {
                        send(self.responses, r) -> sent => sent.is_ok(),
                        recv(give_up) -> _ => false,
                    },
                }
            }
            PipeRoute::Call(reply) => reply.send(value.map_err(CallError::Panicked)).is_ok(),
            PipeRoute::Process((tx, seq)) => tx.send((seq, response(value))).is_ok(),
        };
        if !delivered {
            totals.undelivered += 1;
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
pub struct Pipeline<In, Out> {
    first: Option<Orchestrator<Env<In, In, Out>, ()>>,
    rest: Vec<Box<dyn StageControl>>,
    collector: Option<JoinHandle<Totals>>,
    control: Sender<CollectorControl>,
    metrics: bool,
    window: usize,
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
    fn first(&self) -> &Orchestrator<Env<In, In, Out>, ()> {
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
    /// `CallError::Panicked(JobError::Panicked(msg))` if a stage's function panicked.
    pub fn call(&self, req: In) -> Result<Out, CallError<In>> {
        let (tx, rx) = bounded(1);
        let env = self.env(req, PipeRoute::Call(tx));
        if let Err(e) = self.first().submit(env) {
            return Err(CallError::ShutDown(input(e.into_inner())));
        }
        rx.recv()
            .unwrap_or(Err(CallError::Panicked(JobError::WorkerDied)))
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
    ) -> Feeder<'_, Env<In, In, Out>, (), Out, I> {
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
        let started = Instant::now();
        let Some(first) = self.first.take() else {
            unreachable!("shutdown runs once")
        };
        // Responses that `process` iterators dropped early waited for and discarded.
        let discarded = first.feed_parts().0.discarded_so_far();
        if let Some(d) = deadline {
            let _ = self.control.send(CollectorControl::Deadline(d));
        }
        let report = match (how, deadline) {
            (Stop::Now, _) => first.shutdown_now(),
            (Stop::Drain, None) => first.shutdown(),
            (Stop::Drain, Some(d)) => {
                first.shutdown_timeout(d.saturating_duration_since(Instant::now()))
            }
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
    handle: &Handle<Env<In, In, Out>, ()>,
    req: In,
    tag: Tag<Out>,
) -> Job<Env<In, In, Out>, ()> {
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

impl<In, Out> Drop for Pipeline<In, Out> {
    fn drop(&mut self) {
        // Same order as `shutdown`: first stage, later stages, then the collector.
        drop(self.first.take());
        for stage in self.rest.drain(..) {
            stage.shutdown(None);
        }
        if let Some(h) = self.collector.take() {
            let _ = h.join();
        }
    }
}

impl<In, Out> std::fmt::Debug for Pipeline<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field(
                "stages",
                &(self.rest.len() + usize::from(self.first.is_some())),
            )
            .finish_non_exhaustive()
    }
}
