//! Scoped pools: a pool whose handler and requests borrow from the caller's stack, on the
//! threads of a [`std::thread::scope`]. [`Builder::scoped`](crate::Builder::scoped) starts
//! one, hands [`Scoped`] to the body, and shuts it down when the body returns.

use std::fmt;
use std::panic::{self, AssertUnwindSafe};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use crate::builder::Builder;
use crate::context::JobContext;
use crate::distribution::Spread;
use crate::error::{
    BuildError, CallError, CallTimeoutError, Detail, SubmitError, SubmitTimeoutError,
    TrySubmitError,
};
use crate::ids::{RequestId, WorkerId};
use crate::intake::{Dest, Handle, Intake};
use crate::message::Shutdown;
use crate::metrics::{MetricsEvent, MetricsSnapshot};
use crate::priority::NORMAL;
use crate::process::{Feeder, MakeJob, Process, ProcessOrdered, direct_job};
use crate::report::ShutdownReport;
use crate::response::Response;
use crate::runtime::{self, DEFAULT_SUBSCRIBER_CAPACITY, Parts, Running, deadline_after};
use crate::submitting::{pool_methods, submitting_methods};
use crate::unwind::drop_quietly;

/// A pool running inside [`Builder::scoped`](crate::Builder::scoped): its handler and
/// requests may borrow data that outlives the `scoped` call, like threads of
/// [`std::thread::scope`].
///
/// It has the orchestrator's submitting methods (the submit family with priorities and
/// deadlines, `call`, `call_timeout`), `process` / `process_ordered` over borrowed
/// iterators, `metrics` and `subscribe`. It is `Sync`: threads of a `std::thread::scope`
/// inside the body can share `&Scoped`. It has no `submitter()` or `limited()`: an owned
/// handle could be smuggled into the handler, and a scoped pool does not detect a handler
/// that calls back into its own pool.
pub struct Scoped<'scope, Req, Resp> {
    handle: Handle<Req, Resp>,
    running: Running<'scope, Req, Resp>,
    workers: usize,
    queue_capacity: usize,
}

impl<Req, Resp> fmt::Debug for Scoped<'_, Req, Resp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scoped")
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl<'scope, Req: Send + 'scope, Resp: Send + 'scope> Scoped<'scope, Req, Resp> {
    fn with_intake<T>(&self, f: impl FnOnce(Option<&Intake<Req, Resp>>) -> T) -> T {
        // The pool shuts down only after the body returned, so it is open all along.
        f(Some(self.handle.intake()))
    }

    fn dest(&self, lane: usize) -> Dest<'_, Req, Resp> {
        Dest::Lane(lane)
    }

    fn running(&self) -> &Running<'scope, Req, Resp> {
        &self.running
    }

    fn feeder<I: Iterator, Out>(
        &self,
        inputs: I,
        make: MakeJob<Req, Resp, I::Item, Out>,
    ) -> Feeder<'_, Req, Resp, Out, I> {
        let window = self.queue_capacity + self.workers;
        Feeder::new(&self.handle, self.handle.intake(), window, inputs, make)
    }

    /// The pool's size.
    pub fn workers(&self) -> usize {
        self.handle.workers()
    }

    submitting_methods!(with_intake);

    pool_methods!();

    /// Stops the pool as `mode` says and returns the report (every thread joined).
    fn stop(self, mode: Shutdown) -> ShutdownReport<Req> {
        self.running
            .stop(&self.handle, mode, true)
            .expect("a scoped pool is stopped by the thread that started it, never by a worker")
    }
}

/// Runs a scoped pool: started on `scope`'s threads from `parts`, handed to `body` with the
/// responses receiver, then shut down gracefully when `body` returns. If `body` panics, the
/// pool stops at once (`shutdown_now`; what never started is dropped), every thread is
/// joined, and the panic goes on.
pub(crate) fn run<'scope, Req, Resp, B, R>(
    parts: Result<Parts<'scope, Req, Resp>, BuildError>,
    body: B,
) -> Result<(R, ShutdownReport<Req>), BuildError>
where
    Req: Send + 'scope,
    Resp: Send + 'scope,
    B: FnOnce(&Scoped<'scope, Req, Resp>, Receiver<Response<Resp>>) -> R,
{
    let parts = parts?;
    let pool = Scoped {
        handle: parts.handle,
        running: parts.running,
        workers: parts.workers,
        queue_capacity: parts.queue_capacity,
    };
    let responses = parts.responses;
    match panic::catch_unwind(AssertUnwindSafe(|| body(&pool, responses))) {
        Ok(value) => {
            // The caller can read the responses only once this returns: never wait for room.
            let report = pool.stop(Shutdown::Unread { now: false });
            Ok((value, report))
        }
        Err(payload) => {
            let report = pool.stop(Shutdown::Unread { now: true });
            for request in report.unstarted {
                drop_quietly(request);
            }
            panic::resume_unwind(payload)
        }
    }
}

impl<Req: Send, Resp: Send> Builder<Req, Resp> {
    /// Runs a pool whose handler and requests may borrow from the caller's stack, like
    /// [`std::thread::scope`]: every thread of the pool (workers, their replacements, the
    /// supervisor, the metrics thread) is a scoped thread. `body` gets the pool ([`Scoped`]:
    /// the submit family, `call`, `process`, `process_ordered`, `metrics`, `subscribe`) and
    /// the responses receiver. When `body` returns, the pool shuts down gracefully (every
    /// queued request runs) and the report comes back with `body`'s value. If `body`
    /// panics, the pool stops at once (`shutdown_now`: running jobs finish, queued ones are
    /// dropped), every thread is joined, and the panic continues.
    ///
    /// Once the body returned (or panicked), nobody can read the responses before `scoped`
    /// returns: a response that finds a bounded response channel full then counts as
    /// `undelivered` instead of waiting (what is already in the channel stays there for a
    /// receiver the body returned), so `scoped` always returns.
    ///
    /// Everything a built pool promises holds here too: bounded queues and back-pressure,
    /// priorities, panicking handlers contained, exact metrics and report. Not available:
    /// per-key queues (`Distribution::by_key` needs `'static` requests: a `BuildError`),
    /// `submitter()` and `limited()` (owned handles that could reach the handler).
    ///
    /// # Errors
    ///
    /// As [`build`](Builder::build); [`BuildErrorKind::ScopedByKey`](crate::BuildErrorKind::ScopedByKey)
    /// for per-key queues.
    ///
    /// # Panics
    ///
    /// If `body` panics (after the pool stopped).
    ///
    /// # Examples
    ///
    /// Counting the words of borrowed lines, no `Arc`, no clone:
    ///
    /// ```
    /// use channel_orchestrator::Orchestrator;
    ///
    /// let text = String::from("the quick brown fox\njumps over\nthe lazy dog");
    /// let stop_words = vec!["the"];
    /// let (counts, report) = Orchestrator::builder()
    ///     .workers(2)
    ///     .scoped(
    ///         |line: &str| line.split_whitespace().filter(|w| !stop_words.contains(w)).count(),
    ///         |pool, _responses| {
    ///             pool.process_ordered(text.lines())
    ///                 .map(|r| r.outcome.unwrap())
    ///                 .collect::<Vec<usize>>()
    ///         },
    ///     )?;
    /// assert_eq!(counts, [3, 2, 2]);
    /// assert_eq!(report.completed, 3);
    /// # Ok::<(), channel_orchestrator::BuildError>(())
    /// ```
    ///
    /// Results may borrow too; a borrow cannot outlive the data:
    ///
    /// ```compile_fail,E0597
    /// use channel_orchestrator::Orchestrator;
    ///
    /// let mut escaped: Vec<&str> = Vec::new();
    /// {
    ///     let text = String::from("a b c");
    ///     Orchestrator::builder()
    ///         .scoped(|w: &str| w, |pool, responses| {
    ///             for w in text.split(' ') {
    ///                 pool.submit(w).unwrap();
    ///             }
    ///             escaped.extend(responses.iter().take(3).map(|r| r.outcome.unwrap()));
    ///         })
    ///         .unwrap();
    /// } // `text` is dropped here while `escaped` still borrows it
    /// println!("{escaped:?}");
    /// ```
    #[allow(clippy::type_complexity)] // the pair is the API
    pub fn scoped<'env, H, B, R>(
        self,
        handler: H,
        body: B,
    ) -> Result<(R, ShutdownReport<Req>), BuildError>
    where
        Req: 'env,
        Resp: 'env,
        H: Fn(Req) -> Resp + Send + Sync + 'env,
        B: for<'scope> FnOnce(&Scoped<'scope, Req, Resp>, Receiver<Response<Resp>>) -> R,
    {
        self.scoped_with_state(
            |_: WorkerId| (),
            move |_: &mut (), req: Req| handler(req),
            body,
        )
    }

    /// As [`scoped`](Builder::scoped), with per-worker state, as
    /// [`build_with_state`](Builder::build_with_state): `init` (which may borrow too) runs on
    /// each worker thread, and again after its handler panicked.
    ///
    /// # Errors
    ///
    /// As [`scoped`](Builder::scoped), and when `init` panics on first start.
    ///
    /// # Panics
    ///
    /// If `body` panics (after the pool stopped).
    #[allow(clippy::type_complexity)] // the pair is the API
    pub fn scoped_with_state<'env, S, I, H, B, R>(
        self,
        init: I,
        handler: H,
        body: B,
    ) -> Result<(R, ShutdownReport<Req>), BuildError>
    where
        Req: 'env,
        Resp: 'env,
        S: 'env,
        I: Fn(WorkerId) -> S + Send + Sync + 'env,
        H: Fn(&mut S, Req) -> Resp + Send + Sync + 'env,
        B: for<'scope> FnOnce(&Scoped<'scope, Req, Resp>, Receiver<Response<Resp>>) -> R,
    {
        let config = self.config()?;
        if matches!(config.distribution, Spread::ByKey(_)) {
            return Err(BuildError::new(Detail::ScopedByKey));
        }
        let handler = move |state: &mut S, _: &JobContext, req: Req| handler(state, req);
        std::thread::scope(|scope| {
            run(
                runtime::start_in(scope, config, init, handler, None, (None, None)),
                body,
            )
        })
    }
}
