//! [`PipelineBuilder`]: a typed chain of stages, and how it is started.

use std::fmt;
use std::marker::PhantomData;
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use super::collector::Collector;
use super::stage::{Env, LaterStage, Sink, StageControl, start_stage};
use super::{Front, Pipeline};
use crate::builder::Builder;
use crate::config::MAX_WORKERS;
use crate::error::{BuildError, Detail};
use crate::orchestrator::Orchestrator;
use crate::response::Response;
use crate::worker::Handoff;

/// What building a chain of stages produces: the typed first stage and the rest.
#[doc(hidden)]
#[allow(unreachable_pub, missing_debug_implementations)]
pub struct Built<In, Out> {
    first: Orchestrator<Env<In, In, Out>, Handoff>,
    rest: Vec<Box<dyn StageControl>>,
}

/// A typed chain of stages, made by [`PipelineBuilder::stage`]. Sealed; you never name it.
#[doc(hidden)]
pub trait Chain<In, Cur>: sealed::Sealed {
    #[doc(hidden)]
    fn depth(&self) -> usize;
    #[doc(hidden)]
    fn total_workers(&self) -> usize;
    #[doc(hidden)]
    fn build_chain<Out: Send + 'static>(
        self,
        opts: &Builder,
        name: &str,
        sink: Sink<Cur, In, Out>,
        collector: &Sender<Env<Out, In, Out>>,
    ) -> Result<Built<In, Out>, BuildError>;
}

mod sealed {
    pub trait Sealed {}
    impl<F, A, B> Sealed for super::First<F, A, B> {}
    impl<C, F, A, B> Sealed for super::Then<C, F, A, B> {}
}

/// The first stage of a chain.
#[doc(hidden)]
#[derive(Debug)]
pub struct First<F, A, B> {
    workers: usize,
    f: F,
    _types: PhantomData<fn(A) -> B>,
}

/// A stage after others.
#[doc(hidden)]
#[derive(Debug)]
pub struct Then<C, F, A, B> {
    prev: C,
    workers: usize,
    f: F,
    _types: PhantomData<fn(A) -> B>,
}

/// The empty chain, before the first [`stage`](PipelineBuilder::stage).
#[doc(hidden)]
#[derive(Debug)]
pub struct NoStages;

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
        opts: &Builder,
        name: &str,
        sink: Sink<B, A, Out>,
        _collector: &Sender<Env<Out, A, Out>>,
    ) -> Result<Built<A, Out>, BuildError> {
        let first = start_stage(opts, name, 0, self.workers, self.f, sink)?;
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
        opts: &Builder,
        name: &str,
        sink: Sink<B, In, Out>,
        collector: &Sender<Env<Out, In, Out>>,
    ) -> Result<Built<In, Out>, BuildError> {
        let index = self.depth();
        let orch = start_stage(opts, name, index, self.workers, self.f, sink)?;
        // If an earlier stage fails to start, `orch` is dropped: a graceful shutdown.
        let next = Sink::Next(orch.submitter());
        let mut built = self.prev.build_chain(opts, name, next, collector)?;
        built.rest.push(Box::new(LaterStage {
            orch,
            collector: collector.clone(),
        }));
        Ok(built)
    }
}

/// Configures a [`Pipeline`]; made by [`Pipeline::builder`]. `In` is the pipeline's request
/// type, `Cur` the output type of the last stage so far.
///
/// It takes the same options as an orchestrator's [`Builder`] — each applies to every stage
/// (per stage: `queue_capacity` bounds its queue, `metrics_interval` its snapshots, …) —
/// except `response_capacity`, which bounds the pipeline's own responses channel. Stage `k`'s
/// threads are named `"{name}-s{k}-worker-{i}"`, the collector `"{name}-collector"`.
#[must_use = "a builder does nothing until build() is called"]
pub struct PipelineBuilder<In, Cur, C> {
    chain: C,
    opts: Builder,
    _types: PhantomData<fn(In) -> Cur>,
}

impl<In, Cur, C> fmt::Debug for PipelineBuilder<In, Cur, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PipelineBuilder")
            .field("options", &self.opts)
            .finish_non_exhaustive()
    }
}

impl PipelineBuilder<(), (), NoStages> {
    pub(super) fn new() -> Self {
        PipelineBuilder {
            chain: NoStages,
            opts: Builder::new(),
            _types: PhantomData,
        }
    }

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

impl<In, Cur, C> PipelineBuilder<In, Cur, C> {
    /// The bound on each stage's queue, as [`Builder::queue_capacity`]. Default: 1024.
    pub fn queue_capacity(mut self, n: usize) -> Self {
        self.opts = self.opts.queue_capacity(n);
        self
    }

    /// Bounds the pipeline's responses channel, as [`Builder::response_capacity`]
    /// (default: unbounded).
    pub fn response_capacity(mut self, n: usize) -> Self {
        self.opts = self.opts.response_capacity(n);
        self
    }

    /// The prefix of thread names, as [`Builder::thread_name`]. Default: `"orchestrator"`.
    pub fn thread_name(mut self, name: impl Into<String>) -> Self {
        self.opts = self.opts.thread_name(name);
        self
    }

    /// The period of each stage's metrics snapshots, as [`Builder::metrics_interval`].
    pub fn metrics_interval(mut self, interval: Duration) -> Self {
        self.opts = self.opts.metrics_interval(interval);
        self
    }

    /// Whether stages collect metrics (default `true`), as [`Builder::metrics`].
    pub fn metrics(mut self, on: bool) -> Self {
        self.opts = self.opts.metrics(on);
        self
    }

    /// Each stage times one job in `n`, as [`Builder::timing_sample`].
    pub fn timing_sample(mut self, n: usize) -> Self {
        self.opts = self.opts.timing_sample(n);
        self
    }

    /// The stack size of every stage's worker threads, as [`Builder::stack_size`].
    pub fn stack_size(mut self, bytes: usize) -> Self {
        self.opts = self.opts.stack_size(bytes);
        self
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
    /// responses to `submit`, `try_submit`, `submit_timeout` and `submit_with_deadline`.
    ///
    /// # Errors
    ///
    /// A [`BuildError`] for any setting an orchestrator's [`Builder::build`] refuses (a stage
    /// with 0 workers included), when all stages together have more than [`MAX_WORKERS`]
    /// workers, or when a thread could not be spawned. No thread is left running.
    #[allow(clippy::type_complexity)] // the pair is the API
    pub fn build(self) -> Result<(Pipeline<In, Cur>, Receiver<Response<Cur>>), BuildError> {
        // Validated before anything is allocated (the collector's inbox and the response
        // channel take their slots up front); each stage checks its worker count.
        let cfg = self.opts.clone().workers(1).config()?;
        // Every stage's workers are threads of one process: the limit is for all of them.
        if self.chain.total_workers() > MAX_WORKERS {
            return Err(BuildError::new(Detail::TooManyWorkers));
        }
        let (resp_tx, resp_rx) = match cfg.response_capacity {
            Some(cap) => bounded(cap),
            None => unbounded(),
        };
        // Room for one envelope per last-stage queue slot keeps the last stage flowing.
        let (env_tx, env_rx) = bounded(cfg.queue_capacity);
        let (ctl_tx, ctl_rx) = unbounded();
        let name = cfg.thread_name.clone();
        let Built { first, rest } =
            self.chain
                .build_chain(&self.opts, &name, Sink::Collect(env_tx.clone()), &env_tx)?;
        drop(env_tx);
        let collector = Collector::new(env_rx, ctl_rx, resp_tx);
        let thread = format!("{name}-collector");
        let collector = match thread::Builder::new()
            .name(thread.clone())
            .spawn(move || collector.run())
        {
            Ok(h) => h,
            Err(source) => {
                drop(first);
                for stage in rest {
                    stage.shutdown(None);
                }
                return Err(BuildError::new(Detail::Spawn { thread, source }));
            }
        };
        let mut stage_pools = vec![first.pool_id()];
        stage_pools.extend(rest.iter().map(|s| s.pool_id()));
        let front = Front {
            first: first.submitter(),
            metrics: cfg.metrics,
        };
        let pipeline = Pipeline {
            front,
            first: Some(first),
            rest,
            collector: Some(collector),
            control: ctl_tx,
            stage_pools,
        };
        Ok((pipeline, resp_rx))
    }
}
