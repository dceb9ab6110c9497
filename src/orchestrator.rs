//! The facade: [`Orchestrator`] and [`Submitter`], with one set of submitting methods.
//!
//! Both hold a [`Handle`] on the intake; the orchestrator also owns the running pool
//! ([`Running`]). The submitting methods are written once (the `submitting_methods!` macro)
//! and differ only in how they reach the intake: the orchestrator's own submits cannot
//! overlap a shutdown (it takes the orchestrator), a submitter brackets each submit with its
//! handle's liveness counter (see [`intake`](crate::intake)).

use std::fmt;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::error::{
    CallError, CallTimeoutError, ResizeError, SubmitError, SubmitTimeoutError, TrySubmitError,
};
use crate::ids::RequestId;
use crate::intake::{Dest, Handle, Intake};
use crate::limited::Limited;
use crate::message::Shutdown;
use crate::metrics::{MetricsEvent, MetricsSnapshot};
use crate::priority::NORMAL;
use crate::process::{Feeder, MakeJob, Process, ProcessOrdered, direct_job};
use crate::report::ShutdownReport;
use crate::response::Response;
use crate::runtime::{DEFAULT_SUBSCRIBER_CAPACITY, Parts, Running, deadline_after};
use crate::submitting::{pool_methods, submitting_methods};
use crate::unwind::drop_quietly;

/// A pool of worker threads behind a bounded queue; see the [crate docs](crate) for a tour.
///
/// All submitting methods take `&self`, so an orchestrator can be shared by reference
/// (it is `Send + Sync` when `Req` and `Resp` are `Send`); use [`submitter`](Self::submitter)
/// for an owned, cloneable handle. Dropping it is the same as [`shutdown`](Self::shutdown):
/// no thread outlives it.
pub struct Orchestrator<Req, Resp> {
    handle: Handle<Req, Resp>,
    running: Option<Running<'static, Req, Resp>>,
    workers: usize,
    queue_capacity: usize,
}

/// An owned handle for submitting from threads that cannot borrow the [`Orchestrator`].
///
/// `Clone + Send + Sync + 'static`, with exactly the submitting methods of the orchestrator
/// (`submit`, `try_submit`, `submit_timeout`, `submit_with_deadline`, `call`,
/// `call_timeout`). It does not keep the orchestrator alive: after any shutdown, every
/// method hands the request back as `ShutDown`.
///
/// # Examples
///
/// ```
/// use channel_orchestrator::Orchestrator;
///
/// let (orch, responses) = Orchestrator::builder().workers(2).build(|x: u32| x + 1)?;
/// let submitter = orch.submitter();
/// let producer = std::thread::spawn(move || {
///     for i in 0..10 {
///         submitter.submit(i).unwrap();
///     }
/// });
/// producer.join().unwrap();
/// let report = orch.shutdown();
/// assert_eq!(report.completed, 10);
/// assert_eq!(responses.iter().count(), 10);
/// # Ok::<(), channel_orchestrator::BuildError>(())
/// ```
pub struct Submitter<Req, Resp> {
    handle: Handle<Req, Resp>,
}

impl<Req, Resp> fmt::Debug for Orchestrator<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Orchestrator")
            .field("workers", &self.workers)
            .field("running", &self.running.is_some())
            .finish_non_exhaustive()
    }
}

impl<Req, Resp> fmt::Debug for Submitter<Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Submitter")
            .field("shut_down", &self.handle.is_shut_down())
            .finish_non_exhaustive()
    }
}

impl<Req, Resp> Clone for Submitter<Req, Resp> {
    fn clone(&self) -> Self {
        Submitter {
            handle: self.handle.fork(),
        }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Orchestrator<Req, Resp> {
    /// Wraps a started pool; returns it with the receiver of its responses.
    pub(crate) fn from_parts(parts: Parts<'static, Req, Resp>) -> (Self, Receiver<Response<Resp>>) {
        let orch = Orchestrator {
            handle: parts.handle,
            running: Some(parts.running),
            workers: parts.workers,
            queue_capacity: parts.queue_capacity,
        };
        (orch, parts.responses)
    }

    fn running(&self) -> &Running<'static, Req, Resp> {
        // Only a shutdown (which takes `self`) or `Drop` empties it.
        self.running
            .as_ref()
            .expect("orchestrator used after shutdown")
    }

    fn with_intake<T>(&self, f: impl FnOnce(Option<&Intake<Req, Resp>>) -> T) -> T {
        f(self.running.is_some().then(|| self.handle.intake()))
    }

    fn dest(&self, lane: usize) -> Dest<'static, Req, Resp> {
        Dest::Lane(lane)
    }

    submitting_methods!(with_intake);

    /// The pool's target size: the worker count it was built with, or the last `resize`
    /// (for an elastic pool, what the pool decided last).
    pub fn workers(&self) -> usize {
        self.handle.workers()
    }

    /// From now on the pool runs `n` workers: growing starts new workers (their `init`
    /// runs), shrinking retires the newest ones once their running job ends (idle ones at
    /// once). Nothing queued is lost or run twice: the queues stay, and with
    /// `RoundRobin` every worker steals from every queue, so none is stranded. Returns once
    /// the request is with the supervisor; [`metrics`](Self::metrics) and the `Added` /
    /// `Retired` worker events show the change as it happens.
    ///
    /// # Errors
    ///
    /// [`ResizeError::Zero`] for `0`, [`ResizeError::TooLarge`] above [`MAX_WORKERS`],
    /// [`ResizeError::PerKeyQueues`] for a pool with per-key queues (their order depends on
    /// the worker count), [`ResizeError::ShutDown`] once a shutdown started.
    ///
    /// [`MAX_WORKERS`]: crate::MAX_WORKERS
    ///
    /// # Examples
    ///
    /// ```
    /// use channel_orchestrator::Orchestrator;
    ///
    /// let (orch, _responses) = Orchestrator::builder().workers(1).build(|x: u64| x * 2)?;
    /// orch.resize(3).unwrap();
    /// assert_eq!(orch.workers(), 3);
    /// assert_eq!(orch.call(21), Ok(42));
    /// orch.resize(1).unwrap();
    /// assert!(orch.resize(0).is_err());
    /// # Ok::<(), channel_orchestrator::BuildError>(())
    /// ```
    pub fn resize(&self, n: usize) -> Result<(), ResizeError> {
        self.handle.resize(n)
    }

    pool_methods!();

    /// A feeder of `inputs`, making each job with `make`: the one way in for `process` and
    /// for a pipeline's first stage.
    pub(crate) fn feeder<I: Iterator, Out>(
        &self,
        inputs: I,
        make: MakeJob<Req, Resp, I::Item, Out>,
    ) -> Feeder<'_, Req, Resp, Out, I> {
        let window = self.queue_capacity + self.workers;
        let _running = self.running(); // panics if used after shutdown, which takes `self`
        Feeder::new(&self.handle, self.handle.intake(), window, inputs, make)
    }

    /// An owned, cloneable handle with the same submitting methods.
    pub fn submitter(&self) -> Submitter<Req, Resp> {
        Submitter {
            handle: self.handle.fork(),
        }
    }

    /// A handle through which at most `k` requests run at once, on this pool's workers:
    /// a concurrency limit inside the pool, like a sub-pool of `k` (at most 4 requests may
    /// talk to the database, at most 2 may call a rate-limited API).
    ///
    /// The handle (`Clone + Send + Sync + 'static`) has the submitting methods of a
    /// [`Submitter`]; its clones share the limit, and each call of `limited` makes a new,
    /// independent one. A request over the limit waits in the limit's own queue (of
    /// `queue_capacity` requests; see [`limited_with_capacity`](Self::limited_with_capacity))
    /// **without holding a worker**: the pool's workers serve everything else meanwhile.
    /// Once a request of the limit finishes, the oldest waiting one is passed to the pool's
    /// queues at its priority, ahead of requests of that priority that did not wait at a
    /// limit — at most [`priority_burst`](crate::Builder::priority_burst) of them in a row
    /// while such a request waits. Responses go to the same responses channel; `call` answers
    /// come back to the caller. Everything else holds as for any request: back-pressure (a blocking
    /// submit waits while the limit's queue is full, `try_submit` reports `Full`), the
    /// shutdowns (a graceful one runs what waits at the limit, `shutdown_now` hands it back
    /// in `unstarted`), metrics ([`Limited::metrics`]).
    ///
    /// Within a limit, requests start in submit order. A handler that calls into the limit it
    /// runs under (`call`, or a blocking submit into its full queue) does not wait for
    /// itself: the request runs nested in the caller, under the caller's permit. The same
    /// holds one step removed: when a handler's wait on a limit would deadlock the pool
    /// (every worker is waiting on the pool, so every running holder of the limit's permits
    /// is suspended), the request runs nested in that handler — under a free permit if there
    /// is one, otherwise past the limit while the holders are suspended — rather than never.
    ///
    /// # Panics
    ///
    /// If `k` is 0: a limit that lets nothing run is a bug, not a configuration.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use std::sync::Arc;
    ///
    /// use channel_orchestrator::Orchestrator;
    ///
    /// let running = Arc::new(AtomicUsize::new(0));
    /// let most = Arc::new(AtomicUsize::new(0));
    /// let (r, m) = (running.clone(), most.clone());
    /// let (orch, responses) = Orchestrator::builder().workers(4).build(move |ms: u64| {
    ///     let now = r.fetch_add(1, Ordering::SeqCst) + 1;
    ///     m.fetch_max(now, Ordering::SeqCst);
    ///     std::thread::sleep(std::time::Duration::from_millis(ms));
    ///     r.fetch_sub(1, Ordering::SeqCst);
    /// })?;
    /// let database = orch.limited(2); // at most 2 at once
    /// for _ in 0..8 {
    ///     database.submit(5).unwrap();
    /// }
    /// assert_eq!(responses.iter().take(8).count(), 8);
    /// assert!(most.load(Ordering::SeqCst) <= 2);
    /// # Ok::<(), channel_orchestrator::BuildError>(())
    /// ```
    pub fn limited(&self, k: usize) -> Limited<Req, Resp> {
        Limited::new(&self.handle, k, self.queue_capacity)
    }

    /// As [`limited`](Self::limited), with room for `capacity` waiting requests.
    ///
    /// # Panics
    ///
    /// If `k` or `capacity` is 0, or `capacity` is above
    /// [`MAX_QUEUE_CAPACITY`](crate::MAX_QUEUE_CAPACITY).
    pub fn limited_with_capacity(&self, k: usize, capacity: usize) -> Limited<Req, Resp> {
        Limited::new(&self.handle, k, capacity)
    }

    /// Closes intake, runs every queued request, joins every thread.
    ///
    /// The one case where requests come back unrun: if no worker can run any more (every
    /// worker thread died and its replacements' `init` keeps panicking), the supervisor gives
    /// up after a few attempts and the queued requests come back in `unstarted` (queued
    /// `call`s as `Cancelled`) rather than the shutdown waiting forever.
    ///
    /// With a bounded responses channel whose receiver is alive, this waits while it is full
    /// (read it from another thread, or use [`shutdown_timeout`](Self::shutdown_timeout)).
    /// Submits blocked on a full queue return `ShutDown` promptly.
    ///
    /// # Panics
    ///
    /// If called from inside one of this orchestrator's own handlers (it would wait for that
    /// very worker forever); drop the orchestrator there instead. Otherwise only if an
    /// internal thread panicked, which would be a bug in this crate.
    pub fn shutdown(self) -> ShutdownReport<Req> {
        self.stop(Shutdown::Drain {
            deadline: None,
            give_up: true,
        })
    }

    /// As [`shutdown`](Self::shutdown) until `timeout`, then as
    /// [`shutdown_now`](Self::shutdown_now): at that moment everything still queued comes
    /// back at once, and responses still waiting for space on a full response channel are
    /// dropped and counted as `undelivered`.
    ///
    /// # Panics
    ///
    /// As [`shutdown`](Self::shutdown).
    pub fn shutdown_timeout(self, timeout: Duration) -> ShutdownReport<Req> {
        self.stop(Shutdown::Drain {
            deadline: deadline_after(timeout),
            give_up: true,
        })
    }

    /// Closes intake; running jobs finish, queued ones are not started: they come back at
    /// once, whatever the workers are doing — stream requests in the report's `unstarted`,
    /// `call`s as `CallError::Cancelled(req)`. Then it waits for the running jobs (whose
    /// [`JobContext::is_cancelled`](crate::JobContext::is_cancelled) turns true).
    ///
    /// # Panics
    ///
    /// As [`shutdown`](Self::shutdown).
    ///
    /// # Examples
    ///
    /// ```
    /// use channel_orchestrator::Orchestrator;
    /// use std::time::Duration;
    ///
    /// let (orch, responses) = Orchestrator::builder()
    ///     .workers(1)
    ///     .build(|ms: u64| std::thread::sleep(Duration::from_millis(ms)))?;
    /// for _ in 0..10 {
    ///     orch.submit(20).unwrap();
    /// }
    /// let report = orch.shutdown_now();
    /// let answered = responses.iter().count() as u64;
    /// assert_eq!(answered + report.unstarted.len() as u64, 10);
    /// assert!(report.unstarted.len() >= 8);
    /// # Ok::<(), channel_orchestrator::BuildError>(())
    /// ```
    pub fn shutdown_now(self) -> ShutdownReport<Req> {
        self.stop(Shutdown::Now)
    }

    /// A pipeline stage's shutdown: drain, and past `deadline` start nothing more, but never
    /// give up on delivering what already ran.
    pub(crate) fn shutdown_stage(self, deadline: Option<Instant>) -> ShutdownReport<Req> {
        self.stop(Shutdown::Drain {
            deadline,
            give_up: false,
        })
    }

    /// This pool's process-wide id.
    pub(crate) fn pool_id(&self) -> u64 {
        self.handle.pool()
    }

    /// The submitting handle, for pipelines (which make their own envelopes and ids).
    pub(crate) fn handle(&self) -> &Handle<Req, Resp> {
        &self.handle
    }

    fn stop(mut self, mode: Shutdown) -> ShutdownReport<Req> {
        // Waiting for every worker from inside one of them would wait forever. Refuse before
        // anything is taken: unwinding drops `self`, and `Drop` shuts the pool down without
        // waiting for itself.
        assert!(
            !crate::reentry::is_worker_of(self.handle.pool()),
            "shutdown called from a handler of this same orchestrator would wait for itself \
             forever; drop the orchestrator there instead, or shut it down from another thread"
        );
        let running = self.running.take().expect("shutdown runs once");
        running
            .stop(&self.handle, mode, true)
            .expect("not called from one of its own workers, and every thread joined")
    }
}

impl<Req, Resp> Drop for Orchestrator<Req, Resp> {
    /// The same as [`shutdown`](Orchestrator::shutdown), discarding the report.
    ///
    /// Dropped inside one of its own handlers, it cannot wait for its workers (one of them is
    /// the caller): it starts the same graceful shutdown and returns at once; the pool's
    /// threads finish the queued work, then exit by themselves.
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            let graceful = Shutdown::Drain {
                deadline: None,
                give_up: true,
            };
            if let Some(report) = running.stop(&self.handle, graceful, false) {
                // Nobody receives these: drop them one by one, where a panicking `Drop`
                // cannot escape (a second panic in one drop glue would abort).
                for request in report.unstarted {
                    drop_quietly(request);
                }
            }
        }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Submitter<Req, Resp> {
    /// The submitting handle, for pipelines (which make their own envelopes and ids).
    pub(crate) fn handle(&self) -> &Handle<Req, Resp> {
        &self.handle
    }

    fn with_intake<T>(&self, f: impl FnOnce(Option<&Intake<Req, Resp>>) -> T) -> T {
        self.handle.submitting(f)
    }

    fn dest(&self, lane: usize) -> Dest<'static, Req, Resp> {
        Dest::Lane(lane)
    }

    /// As [`Orchestrator::limited`].
    ///
    /// # Panics
    ///
    /// If `k` is 0.
    pub fn limited(&self, k: usize) -> Limited<Req, Resp> {
        Limited::new(&self.handle, k, self.handle.queue_capacity())
    }

    /// As [`Orchestrator::limited_with_capacity`].
    ///
    /// # Panics
    ///
    /// If `k` or `capacity` is 0, or `capacity` is above
    /// [`MAX_QUEUE_CAPACITY`](crate::MAX_QUEUE_CAPACITY).
    pub fn limited_with_capacity(&self, k: usize, capacity: usize) -> Limited<Req, Resp> {
        Limited::new(&self.handle, k, capacity)
    }

    /// As [`Orchestrator::resize`].
    ///
    /// # Errors
    ///
    /// As [`Orchestrator::resize`].
    pub fn resize(&self, n: usize) -> Result<(), ResizeError> {
        self.handle.resize(n)
    }

    /// As [`Orchestrator::workers`]: the pool's target size.
    pub fn workers(&self) -> usize {
        self.handle.workers()
    }

    submitting_methods!(with_intake);
}
