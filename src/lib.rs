//! A synchronous, thread-based, mutex-free work orchestrator.
//!
//! OS threads joined by [crossbeam channels](crossbeam_channel): no async runtime, no
//! executor, no locks in this crate's code. Requests enter a bounded queue and fan out to a
//! bounded pool of worker threads; results fan back in to one response channel, or go
//! straight back to a blocking [`call`](Orchestrator::call). Nothing accepted is ever lost.
//!
//! ```text
//!  submit / try_submit ─┐                                   ┌─► responses: Receiver<Response>
//!  submit_timeout       ├─► bounded queue(s) ─► worker 0..N ─┤
//!  call ────────────────┘   (Shared: one MPMC    │ catch_   └─► call's own reply channel
//!        ▲                   RoundRobin: one per │ unwind
//!        └── Full / Timeout / ShutDown(req)      │ per job
//!                                                ├── status ──► supervisor (select!: status,
//!                                                │              shutdown, deadline, respawn)
//!                                                └── stats ───► metrics thread (tick, totals) ──► subscribers
//! ```
//!
//! # Hello, world
//!
//! [`Orchestrator::builder`] configures the pool; [`build`](Builder::build) starts its threads
//! and returns the orchestrator with the receiver of responses.
//!
//! ```
//! use channel_orchestrator::Orchestrator;
//!
//! let (orch, responses) = Orchestrator::builder()
//!     .workers(4)
//!     .build(|text: String| text.split_whitespace().count())?;
//!
//! let id = orch.submit("the quick brown fox".to_string()).unwrap();
//! let response = responses.recv().unwrap();
//! assert_eq!(response.id, id);
//! assert_eq!(response.outcome, Ok(4));
//!
//! let report = orch.shutdown();
//! assert_eq!(report.completed, 1);
//! # Ok::<(), channel_orchestrator::BuildError>(())
//! ```
//!
//! # Back-pressure
//!
//! The queue is bounded by [`queue_capacity`](Builder::queue_capacity). When it is full,
//! [`submit`](Orchestrator::submit) blocks, [`try_submit`](Orchestrator::try_submit) returns
//! `Full(req)` at once and [`submit_timeout`](Orchestrator::submit_timeout) waits at most its
//! timeout — the same triad as crossbeam's `send` / `try_send` / `send_timeout`. Every
//! failure hands the request back.
//!
//! ```
//! use channel_orchestrator::{Orchestrator, TrySubmitError};
//! use crossbeam_channel::bounded;
//!
//! let (started_tx, started) = bounded::<u32>(8);
//! let (gate_tx, gate) = bounded::<()>(8);
//! let (orch, responses) = Orchestrator::builder()
//!     .workers(1)
//!     .queue_capacity(2)
//!     .build(move |n: u32| {
//!         started_tx.send(n).unwrap();
//!         gate.recv().unwrap(); // hold the worker until the test opens the gate
//!         n
//!     })?;
//!
//! orch.submit(1).unwrap();
//! assert_eq!(started.recv().unwrap(), 1); // the worker took it: the queue is empty
//! orch.submit(2).unwrap();
//! orch.submit(3).unwrap(); // the queue is now full
//! match orch.try_submit(4) {
//!     Err(TrySubmitError::Full(req)) => assert_eq!(req, 4), // the request comes back
//!     other => panic!("expected Full, got {other:?}"),
//! }
//! for _ in 0..3 {
//!     gate_tx.send(()).unwrap();
//! }
//! let got: Vec<u32> = responses.iter().take(3).map(|r| r.outcome.unwrap()).collect();
//! assert_eq!(got, [1, 2, 3]); // one worker: in order
//! # Ok::<(), channel_orchestrator::BuildError>(())
//! ```
//!
//! # Responses, calls and submitters
//!
//! A request submitted with `submit` is answered by one [`Response`] on the responses
//! channel, carrying its [`RequestId`], the [`WorkerId`] that ran it, its outcome and timings.
//! [`call`](Orchestrator::call) answers on its own route instead. Dropping the responses
//! receiver means "I don't want stream responses": workers keep running and count them as
//! undelivered. [`Orchestrator::submitter`] gives owned, cloneable handles for other threads,
//! with exactly the same submitting methods: `submit`, `try_submit`, `submit_timeout`,
//! `submit_with_deadline`, `call` and [`call_timeout`](Orchestrator::call_timeout).
//!
//! ```
//! use channel_orchestrator::Orchestrator;
//!
//! let (orch, responses) = Orchestrator::builder().workers(2).build(|x: u64| x * x)?;
//! drop(responses); // only calls from here on
//!
//! let submitter = orch.submitter();
//! let squares: Vec<u64> = std::thread::scope(|s| {
//!     let handles: Vec<_> = (0..4u64)
//!         .map(|i| {
//!             let submitter = submitter.clone();
//!             s.spawn(move || submitter.call(i).unwrap())
//!         })
//!         .collect();
//!     handles.into_iter().map(|h| h.join().unwrap()).collect()
//! });
//! assert_eq!(squares, [0, 1, 4, 9]);
//! # Ok::<(), channel_orchestrator::BuildError>(())
//! ```
//!
//! # Panics in handlers
//!
//! A panicking handler never takes a worker, the pool or another request down with it. The
//! panic is caught around that one call; the request is answered
//! `Err(JobError::Panicked(message))`, and with
//! [`build_with_state`](Builder::build_with_state) the worker's state is rebuilt by `init`.
//!
//! ```
//! use channel_orchestrator::{JobError, Orchestrator};
//!
//! # std::panic::set_hook(Box::new(|_| {}));
//! let (orch, responses) = Orchestrator::builder()
//!     .workers(1)
//!     .build(|n: i32| if n < 0 { panic!("negative input {n}") } else { n })?;
//! orch.submit(-1).unwrap();
//! orch.submit(1).unwrap();
//! let first = responses.recv().unwrap();
//! assert_eq!(first.outcome, Err(JobError::Panicked("negative input -1".into())));
//! assert_eq!(responses.recv().unwrap().outcome, Ok(1)); // the same worker goes on
//! assert_eq!(orch.shutdown().failed, 1);
//! # Ok::<(), channel_orchestrator::BuildError>(())
//! ```
//!
//! # Streams, keys and pipelines
//!
//! [`process`](Orchestrator::process) feeds a long input from one thread and yields the
//! responses as they complete ([`process_ordered`](Orchestrator::process_ordered): in input
//! order), sending and receiving at once so no capacity can deadlock it.
//! [`Distribution::by_key`] runs every request of one key on one worker, in submit order.
//! A [`Pipeline`] chains stages with their own worker counts and bounded queues between
//! them; it has the same handle surface as an orchestrator ([`Pipeline::submitter`],
//! `call_timeout`, `process*`, `metrics`, `subscribe`, the three shutdowns).
//!
//! ```
//! use channel_orchestrator::{Orchestrator, Pipeline};
//!
//! let (orch, _responses) = Orchestrator::builder()
//!     .workers(2)
//!     .queue_capacity(1) // tiny on purpose: process never deadlocks
//!     .build(|n: u64| n * n)?;
//! let squares: Vec<u64> = orch.process_ordered(1..=5).map(|r| r.outcome.unwrap()).collect();
//! assert_eq!(squares, [1, 4, 9, 16, 25]);
//!
//! let (pipeline, _responses) = Pipeline::builder()
//!     .stage(1, |line: &'static str| line.split(',').count())
//!     .stage(2, |fields: usize| fields * 2)
//!     .build()?;
//! assert_eq!(pipeline.call("a,b,c"), Ok(6));
//! # Ok::<(), channel_orchestrator::BuildError>(())
//! ```
//!
//! # Metrics
//!
//! Metrics are events, not shared counters: each worker counts locally and reports in
//! batches to a metrics thread thread that owns the totals. [`Orchestrator::metrics`] asks it
//! for a [`MetricsSnapshot`]; [`Orchestrator::subscribe`] streams [`MetricsEvent`]s: a
//! snapshot every `metrics_interval`, worker lifecycle events, and last the exact
//! [`ShutdownSummary`]. A subscriber that stops reading is evicted, never waited for.
//!
//! ```
//! use channel_orchestrator::{MetricsEvent, Orchestrator};
//! use std::time::Duration;
//!
//! let (orch, _responses) = Orchestrator::builder()
//!     .workers(2)
//!     .metrics_interval(Duration::from_millis(10))
//!     .build(|x: u32| x)?;
//! let events = orch.subscribe();
//! for i in 0..100 {
//!     orch.call(i).unwrap();
//! }
//! let report = orch.shutdown();
//! let last = events.iter().last().unwrap();
//! match last {
//!     MetricsEvent::Shutdown(summary) => {
//!         assert_eq!(summary.completed, 100);
//!         assert_eq!(summary.completed, report.completed);
//!     }
//!     other => panic!("the last event is the summary, got {other:?}"),
//! }
//! # Ok::<(), channel_orchestrator::BuildError>(())
//! ```
//!
//! # Shutdown
//!
//! [`shutdown`](Orchestrator::shutdown) drains: intake closes, every queued request runs.
//! [`shutdown_now`](Orchestrator::shutdown_now) hands back what never started, in the
//! report's `unstarted`. [`shutdown_timeout`](Orchestrator::shutdown_timeout) drains until
//! its deadline, then acts as `shutdown_now`. Dropping the orchestrator is `shutdown()`; no
//! thread outlives it. After any shutdown the responses channel holds every remaining
//! response and then reports disconnected.
//!
//! ```
//! use channel_orchestrator::Orchestrator;
//! use std::time::Duration;
//!
//! let (orch, responses) = Orchestrator::builder()
//!     .workers(1)
//!     .build(|ms: u64| std::thread::sleep(Duration::from_millis(ms)))?;
//! for _ in 0..20 {
//!     orch.submit(5).unwrap();
//! }
//! let report = orch.shutdown_timeout(Duration::from_millis(20));
//! let answered = responses.iter().count();
//! // Nothing is lost: each request was answered or handed back.
//! assert_eq!(answered + report.unstarted.len(), 20);
//! assert!(!report.unstarted.is_empty());
//! # Ok::<(), channel_orchestrator::BuildError>(())
//! ```
//!
//! # Resizing and elastic pools
//!
//! [`Orchestrator::resize`] changes the number of workers while the pool runs: growing starts
//! workers (their `init` runs), shrinking retires the newest after their running job. With
//! [`Builder::elastic`] the pool sizes itself: it grows toward `max` while requests wait and
//! every worker is busy, and retires workers idle longer than
//! [`keep_alive`](Builder::keep_alive). Pools with per-key queues keep their size.
//!
//! ```
//! use channel_orchestrator::{Orchestrator, ResizeError};
//!
//! let (orch, _responses) = Orchestrator::builder().workers(2).build(|x: u32| x + 1)?;
//! orch.resize(4).unwrap();
//! assert_eq!(orch.workers(), 4);
//! assert_eq!(orch.resize(0), Err(ResizeError::Zero));
//! assert_eq!(orch.call(1), Ok(2));
//! # Ok::<(), channel_orchestrator::BuildError>(())
//! ```
//!
//! # Priorities and concurrency limits
//!
//! [`submit_with_priority`](Orchestrator::submit_with_priority) (and
//! `try_submit_with_priority`, on every submitting handle) puts a request in the lane of its
//! [`Priority`]: a free worker takes the most urgent waiting request, FIFO within a priority,
//! and a waiting request is passed by at most [`priority_burst`](Builder::priority_burst)
//! (default 8) more urgent ones in a row per worker, so nothing starves. Each priority has its
//! own queue of `queue_capacity`: batch work never fills the room of urgent work.
//!
//! [`Orchestrator::limited`] makes a [`Limited`] handle: at most `k` of its requests run at
//! once, on the pool's own workers, and one waiting for its turn holds no worker — the rest
//! of the pool serves everything else meanwhile (at most 4 may talk to the database, at most
//! 2 may call a rate-limited API). A pool that uses neither pays nothing for them: its
//! workers watch only the `Normal` queues until the first use.
//!
//! ```
//! use channel_orchestrator::{Orchestrator, Priority};
//!
//! let (orch, responses) = Orchestrator::builder().workers(2).build(|x: u32| x * 2)?;
//! orch.submit_with_priority(1, Priority::High).unwrap();
//! orch.submit_with_priority(2, Priority::Low).unwrap();
//! let api = orch.limited(1); // one call to the slow API at a time
//! assert_eq!(api.call(3), Ok(6));
//! api.submit(4).unwrap();
//! assert_eq!(responses.iter().take(3).count(), 3);
//! assert_eq!(api.metrics().limit, 1);
//! # Ok::<(), channel_orchestrator::BuildError>(())
//! ```
//!
//! # Borrowed data: scoped pools
//!
//! [`Builder::scoped`] runs a pool whose handler, per-worker state and requests borrow from
//! the caller's stack, like [`std::thread::scope`] (on whose threads it runs): no `Arc`, no
//! clones, results may borrow too. The body gets a [`Scoped`] pool with the submitting
//! methods, `process`, `metrics` and `subscribe`; when it returns, the pool shuts down
//! gracefully and the report comes back with the body's value.
//!
//! ```
//! use channel_orchestrator::Orchestrator;
//!
//! let words = vec![String::from("borrowed"), String::from("not cloned")];
//! let (lens, report) = Orchestrator::builder().workers(2).scoped(
//!     |w: &String| w.len(),
//!     |pool, _responses| pool.process_ordered(&words).map(|r| r.outcome.unwrap()).collect::<Vec<_>>(),
//! )?;
//! assert_eq!((lens, report.completed), (vec![8, 10], 2));
//! # Ok::<(), channel_orchestrator::BuildError>(())
//! ```
//!
//! # Calling back into the same pool
//!
//! A handler may submit to, and `call`, its own pool (through a [`Submitter`] it captured).
//! A worker that would block on its own pool — a `call`, or a `submit` that finds the queue
//! full — waits as usual while at least one other worker is free to serve the queue. When
//! waiting would leave no worker free (a 1-worker pool, or every other worker is blocked the
//! same way), the request **runs inline** on the calling worker, with a fresh state from
//! `init`, and is answered and counted exactly as if a worker had run it: re-entrancy can
//! never exhaust the pool, and never hangs it. `submit_timeout` and `try_submit` never run
//! inline (they end by themselves).
//!
//! Dropping the orchestrator inside one of its own handlers starts the graceful shutdown and
//! returns at once (its threads finish the queued work, then exit by themselves);
//! [`shutdown`](Orchestrator::shutdown) and its siblings there panic with a clear message,
//! since they would wait for the calling worker itself. Cycles across pools (pool A's handler
//! calls pool B, whose handler calls pool A) are not detected.
//!
//! ```
//! use channel_orchestrator::{Orchestrator, Submitter};
//! use std::sync::{Arc, OnceLock};
//!
//! // Recursive Fibonacci on a single worker: every nested call runs inline.
//! let me: Arc<OnceLock<Submitter<u64, u64>>> = Arc::default();
//! let inner = Arc::clone(&me);
//! let (orch, _responses) = Orchestrator::builder().workers(1).build(move |n: u64| {
//!     let pool = inner.get().unwrap();
//!     if n < 2 { n } else { pool.call(n - 1).unwrap() + pool.call(n - 2).unwrap() }
//! })?;
//! me.set(orch.submitter()).unwrap();
//! assert_eq!(orch.call(10), Ok(55));
//! # Ok::<(), channel_orchestrator::BuildError>(())
//! ```
//!
//! # Requests must be `Send`
//!
//! Requests and responses cross threads, so they must be `Send`:
//!
//! ```compile_fail
//! use channel_orchestrator::Orchestrator;
//! use std::rc::Rc;
//!
//! let (orch, _responses) = Orchestrator::builder().build(|x: Rc<u32>| *x).unwrap();
//! ```
//!
//! # No locks
//!
//! This crate's code holds no `Mutex`, `RwLock`, `Condvar` or `Barrier` and has no `unsafe`:
//! every piece of state is owned by one thread and changed through messages. (crossbeam
//! itself parks blocked threads with a lock internally, so this is "no locks in our code",
//! not "lock-free".) The few atomics — a request id counter, a rejected-submit counter, a
//! stop flag, a closing flag, a round-robin cursor, a count of re-entrant waits — each say
//! at their definition why they are safe.
#![forbid(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations, unreachable_pub)]

mod builder;
mod config;
mod context;
mod distribution;
mod error;
mod gate;
mod ids;
mod intake;
mod limited;
mod message;
mod metrics;
mod metrics_thread;
mod orchestrator;
mod pipeline;
mod priority;
mod process;
mod reentry;
mod report;
mod response;
mod runtime;
mod scoped;
mod spawn;
mod submitting;
mod supervisor;
mod unwind;
mod worker;

pub use crossbeam_channel;

pub use crate::builder::Builder;
pub use crate::config::{
    DEFAULT_KEEP_ALIVE, DEFAULT_METRICS_INTERVAL, DEFAULT_PRIORITY_BURST, DEFAULT_QUEUE_CAPACITY,
    DEFAULT_THREAD_NAME, MAX_METRICS_INTERVAL, MAX_QUEUE_CAPACITY, MAX_TIMING_SAMPLE, MAX_WORKERS,
    MIN_STACK_SIZE,
};
pub use crate::context::JobContext;
pub use crate::distribution::{ByKey, Distribution, IntoDistribution};
pub use crate::error::{
    BuildError, BuildErrorKind, CallError, CallTimeoutError, JobError, ResizeError, SubmitError,
    SubmitTimeoutError, TrySubmitError,
};
pub use crate::ids::{RequestId, WorkerId};
pub use crate::limited::Limited;
pub use crate::metrics::{
    LatencySummary, LimitSnapshot, MetricsEvent, MetricsSnapshot, WorkerEvent, WorkerEventKind,
    WorkerSnapshot, WorkerState,
};
pub use crate::orchestrator::{Orchestrator, Submitter};
pub use crate::pipeline::{Pipeline, PipelineBuilder, PipelineSnapshot, PipelineSubmitter};
pub use crate::priority::{ByPriority, Priority};
pub use crate::process::{Process, ProcessOrdered};
pub use crate::report::{ShutdownReport, ShutdownSummary};
pub use crate::response::Response;
pub use crate::runtime::{DEFAULT_SUBSCRIBER_CAPACITY, MAX_SUBSCRIBER_CAPACITY};
pub use crate::scoped::Scoped;

/// Compile-time checks of the auto traits the contract promises.
#[allow(dead_code)]
fn _assert_auto_traits() {
    fn send_sync<T: Send + Sync>() {}
    fn owned_handle<T: Clone + Send + Sync + 'static>() {}
    send_sync::<Orchestrator<String, Vec<u8>>>();
    owned_handle::<Submitter<String, Vec<u8>>>();
    send_sync::<BuildError>();
    send_sync::<ShutdownReport<String>>();
    send_sync::<MetricsEvent>();
    send_sync::<Pipeline<String, Vec<u8>>>();
    owned_handle::<PipelineSubmitter<String, Vec<u8>>>();
}
