//! The submitting methods, written once for every submitting handle: [`Orchestrator`],
//! [`Submitter`], [`Limited`] and [`Scoped`]; and the methods of a running pool that both
//! [`Orchestrator`] and [`Scoped`] have (`process`, metrics).
//!
//! [`Orchestrator`]: crate::Orchestrator
//! [`Submitter`]: crate::Submitter
//! [`Limited`]: crate::Limited
//! [`Scoped`]: crate::Scoped

/// The submitting methods, identical on every submitting handle. `$intake` runs a closure
/// with the open intake (or `None` once shut down); the handle's `dest(lane)` says where its
/// requests go (a lane of the pool, or its limit's gate).
macro_rules! submitting_methods {
    ($intake:ident) => {
        /// Submits a request for the shared responses channel, blocking while the queue is
        /// full.
        ///
        /// # Errors
        ///
        /// `SubmitError::ShutDown(req)` if the orchestrator is shutting down; the request
        /// comes back.
        ///
        /// # Examples
        ///
        /// ```
        /// let (orch, responses) = channel_orchestrator::Orchestrator::builder().build(|x: i32| -x)?;
        /// let id = orch.submit(7).unwrap();
        /// let response = responses.recv().unwrap();
        /// assert_eq!((response.id, response.outcome), (id, Ok(-7)));
        /// # Ok::<(), channel_orchestrator::BuildError>(())
        /// ```
        pub fn submit(&self, req: Req) -> Result<RequestId, SubmitError<Req>> {
            self.$intake(|intake| self.handle.submit(intake, req, None, self.dest(NORMAL)))
        }

        /// As [`submit`](Self::submit), for a request that is worth running only before
        /// `deadline`: a worker that takes it later answers `Err(JobError::DeadlineExceeded)`
        /// without running it (counted in `failed`). Handlers built with
        /// [`build_with_context`](crate::Builder::build_with_context) see the deadline in
        /// their context.
        ///
        /// # Errors
        ///
        /// `SubmitError::ShutDown(req)` if the orchestrator is shutting down.
        pub fn submit_with_deadline(
            &self,
            req: Req,
            deadline: Instant,
        ) -> Result<RequestId, SubmitError<Req>> {
            self.$intake(|intake| {
                self.handle
                    .submit(intake, req, Some(deadline), self.dest(NORMAL))
            })
        }

        /// Submits a request without blocking.
        ///
        /// # Errors
        ///
        /// `TrySubmitError::Full(req)` if every queue is full, `TrySubmitError::ShutDown(req)`
        /// if the orchestrator is shutting down; the request comes back either way.
        pub fn try_submit(&self, req: Req) -> Result<RequestId, TrySubmitError<Req>> {
            self.$intake(|intake| self.handle.try_submit(intake, req, self.dest(NORMAL)))
        }

        /// As [`submit`](Self::submit), at `priority`: a free worker takes the most urgent
        /// waiting request, FIFO within a priority, and a waiting request is passed by at
        /// most [`priority_burst`](crate::Builder::priority_burst) more urgent ones in a row
        /// (per worker). Each priority has its own queue of `queue_capacity`, so this blocks
        /// only while the queue of `priority` is full. See [`Priority`](crate::Priority).
        ///
        /// # Errors
        ///
        /// `SubmitError::ShutDown(req)` if the orchestrator is shutting down.
        pub fn submit_with_priority(
            &self,
            req: Req,
            priority: crate::Priority,
        ) -> Result<RequestId, SubmitError<Req>> {
            self.$intake(|intake| {
                self.handle
                    .submit(intake, req, None, self.dest(priority.lane()))
            })
        }

        /// As [`call`](Self::call), at `priority` (see
        /// [`submit_with_priority`](Self::submit_with_priority)): an urgent request/answer
        /// that does not wait behind a backlog.
        ///
        /// # Errors
        ///
        /// As [`call`](Self::call).
        pub fn call_with_priority(
            &self,
            req: Req,
            priority: crate::Priority,
        ) -> Result<Resp, CallError<Req>> {
            let (rx, _blocked) = self.$intake(|intake| {
                self.handle
                    .call_begin(intake, req, self.dest(priority.lane()))
            })?;
            self.handle.call_wait(rx)
        }

        /// As [`try_submit`](Self::try_submit), at `priority` (see
        /// [`submit_with_priority`](Self::submit_with_priority)).
        ///
        /// # Errors
        ///
        /// `TrySubmitError::Full(req)` if the queue(s) of `priority` are full,
        /// `TrySubmitError::ShutDown(req)` if the orchestrator is shutting down.
        pub fn try_submit_with_priority(
            &self,
            req: Req,
            priority: crate::Priority,
        ) -> Result<RequestId, TrySubmitError<Req>> {
            self.$intake(|intake| {
                self.handle
                    .try_submit(intake, req, self.dest(priority.lane()))
            })
        }

        /// Submits a request, blocking at most `timeout` while the queue is full. A zero
        /// timeout behaves like `try_submit` (reporting `Timeout` instead of `Full`).
        ///
        /// # Errors
        ///
        /// `SubmitTimeoutError::Timeout(req)` if no space freed up in time,
        /// `SubmitTimeoutError::ShutDown(req)` if the orchestrator is shutting down.
        pub fn submit_timeout(
            &self,
            req: Req,
            timeout: Duration,
        ) -> Result<RequestId, SubmitTimeoutError<Req>> {
            self.$intake(|intake| {
                self.handle
                    .submit_timeout(intake, req, timeout, self.dest(NORMAL))
            })
        }

        /// Runs a request and waits for its answer, which comes back on a private route,
        /// never on the shared responses channel. Blocks while the queue is full, then until
        /// the handler finishes. Allocates nothing in steady state (reply channels are
        /// pooled). From inside one of this pool's own handlers it never deadlocks: see the
        /// crate docs, "Calling back into the same pool".
        ///
        /// # Errors
        ///
        /// - `CallError::ShutDown(req)`: the orchestrator is shutting down; not accepted.
        /// - `CallError::Cancelled(req)`: accepted, but `shutdown_now` (or an expired
        ///   `shutdown_timeout`) took it off the queue before it started.
        /// - `CallError::Failed(JobError::Panicked(msg))`: the handler panicked (or
        ///   `WorkerDied`: its worker thread died outside the handler).
        ///
        /// # Examples
        ///
        /// ```
        /// use channel_orchestrator::{CallError, JobError, Orchestrator};
        ///
        /// let (orch, _responses) = Orchestrator::builder().workers(1).build(|x: u32| {
        ///     assert!(x != 0, "zero is not allowed");
        ///     100 / x
        /// })?;
        /// assert_eq!(orch.call(5), Ok(20));
        /// match orch.call(0) {
        ///     Err(CallError::Failed(JobError::Panicked(msg))) => assert!(msg.contains("zero")),
        ///     other => panic!("unexpected {other:?}"),
        /// }
        /// assert_eq!(orch.call(50), Ok(2)); // the worker survived
        /// # Ok::<(), channel_orchestrator::BuildError>(())
        /// ```
        pub fn call(&self, req: Req) -> Result<Resp, CallError<Req>> {
            // The intake is held only while enqueueing, not while waiting for the answer.
            let (rx, _blocked) =
                self.$intake(|intake| self.handle.call_begin(intake, req, self.dest(NORMAL)))?;
            self.handle.call_wait(rx)
        }

        /// As [`call`](Self::call), waiting at most `timeout` in all: for queue space, then
        /// for the answer. The request carries the deadline, so a worker that takes it after
        /// the deadline does not run it.
        ///
        /// # Errors
        ///
        /// As [`call`](Self::call), plus `CallTimeoutError::Timeout(req)` (no queue space in
        /// time: not accepted) and `CallTimeoutError::Expired` (accepted, no answer in time).
        /// A worker that takes the request after the deadline answers
        /// `CallTimeoutError::Failed(JobError::DeadlineExceeded)` without running it; that
        /// answer can win the race with `Expired`.
        ///
        /// # Examples
        ///
        /// ```
        /// use channel_orchestrator::{CallTimeoutError, Orchestrator};
        /// use std::time::Duration;
        ///
        /// let (orch, _responses) = Orchestrator::builder()
        ///     .workers(1)
        ///     .build(|ms: u64| std::thread::sleep(Duration::from_millis(ms)))?;
        /// assert_eq!(orch.call_timeout(1, Duration::from_secs(5)), Ok(()));
        /// let slow = orch.call_timeout(200, Duration::from_millis(10));
        /// assert!(matches!(slow, Err(CallTimeoutError::Expired)));
        /// # Ok::<(), channel_orchestrator::BuildError>(())
        /// ```
        pub fn call_timeout(
            &self,
            req: Req,
            timeout: Duration,
        ) -> Result<Resp, CallTimeoutError<Req>> {
            let deadline = deadline_after(timeout);
            let rx = self.$intake(|intake| {
                self.handle
                    .call_timed_begin(intake, req, deadline, self.dest(NORMAL))
            })?;
            self.handle.call_timed_wait(rx, deadline)
        }
    };
}

pub(crate) use submitting_methods;

/// The methods of a running pool, identical on [`Orchestrator`](crate::Orchestrator) and
/// [`Scoped`](crate::Scoped): `process`, `process_ordered`, `metrics`, `subscribe`. The type
/// provides `feeder(inputs, make)` and `running()`.
macro_rules! pool_methods {
    () => {
        /// Feeds `inputs` through the pool from this one thread and yields each [`Response`] as
        /// it completes (in completion order; see [`process_ordered`](Self::process_ordered)).
        ///
        /// The iterator sends and receives at once (a `select!` over the queue and its own
        /// response channel), so it never deadlocks whatever the capacities (except a bounded
        /// shared responses channel left full and unread: workers waiting to deliver stream
        /// responses there serve nobody, `process` included), and it keeps at most
        /// a window of `queue_capacity + workers` requests in flight (at most 65,536) however
        /// long the input is. Its responses travel on a private channel, never on the shared
        /// responses channel, so several `process` calls and ordinary submits can run at once.
        /// Dropping it early stops feeding; every input it already pulled from `inputs` still
        /// runs, and it waits for the requests in flight, so none is stranded in the pool; their
        /// responses are discarded and counted as undelivered.
        ///
        /// [`Response`]: crate::Response
        ///
        /// # Examples
        ///
        /// ```
        /// let (orch, _responses) = channel_orchestrator::Orchestrator::builder()
        ///     .workers(2)
        ///     .queue_capacity(1)
        ///     .build(|x: u64| x * 2)?;
        /// let sum: u64 = orch.process(0..10_000).map(|r| r.outcome.unwrap()).sum();
        /// assert_eq!(sum, 2 * (0..10_000).sum::<u64>());
        /// # Ok::<(), channel_orchestrator::BuildError>(())
        /// ```
        pub fn process<I>(&self, inputs: I) -> Process<'_, Req, Resp, I::IntoIter>
        where
            I: IntoIterator<Item = Req>,
        {
            Process::new(self.feeder(inputs.into_iter(), direct_job))
        }

        /// As [`process`](Self::process), yielding responses in input order.
        ///
        /// Out-of-order results wait in a reorder buffer of at most one window (grown as
        /// needed). Feeding never runs more than a window ahead of the oldest unanswered input,
        /// so memory stays bounded: one slow request holds up the stream — feeding stops once the
        /// window is full — until it completes.
        ///
        /// # Examples
        ///
        /// ```
        /// let (orch, _responses) = channel_orchestrator::Orchestrator::builder()
        ///     .workers(4)
        ///     .build(|word: &'static str| word.len())?;
        /// let lens: Vec<usize> = orch
        ///     .process_ordered(["a", "bb", "ccc", "dddd"])
        ///     .map(|r| r.outcome.unwrap())
        ///     .collect();
        /// assert_eq!(lens, [1, 2, 3, 4]);
        /// # Ok::<(), channel_orchestrator::BuildError>(())
        /// ```
        pub fn process_ordered<I>(&self, inputs: I) -> ProcessOrdered<'_, Req, Resp, I::IntoIter>
        where
            I: IntoIterator<Item = Req>,
        {
            ProcessOrdered::new(self.feeder(inputs.into_iter(), direct_job))
        }

        /// The current metrics, asked of the metrics thread (a round trip over a channel).
        /// Counts may lag by up to one `metrics_interval` and never overshoot.
        ///
        /// # Panics
        ///
        /// Only if the metrics thread died, which would be a bug in this crate.
        pub fn metrics(&self) -> MetricsSnapshot {
            self.running().metrics()
        }

        /// Subscribes to the metrics stream with a buffer of [`DEFAULT_SUBSCRIBER_CAPACITY`]
        /// events; see [`subscribe_with_capacity`](Self::subscribe_with_capacity).
        pub fn subscribe(&self) -> Receiver<MetricsEvent> {
            self.subscribe_with_capacity(DEFAULT_SUBSCRIBER_CAPACITY)
        }

        /// Subscribes to the metrics stream: a `Snapshot` every `metrics_interval`, a `Worker`
        /// event on each worker lifecycle change, and last a `Shutdown` event with exact totals,
        /// after which the channel disconnects.
        ///
        /// The subscriber buffers up to `capacity` events (at least 1, at most
        /// [`MAX_SUBSCRIBER_CAPACITY`](crate::MAX_SUBSCRIBER_CAPACITY)). If its buffer is full when an event is sent, it is
        /// evicted: it still receives what it had buffered, then sees the channel disconnected.
        /// (One slot beyond `capacity` is reserved for the final `Shutdown` event, which
        /// therefore reaches every subscriber that was not evicted.) A slow or stalled subscriber
        /// never slows the workers. Dropping the receiver unsubscribes; one dropped while its
        /// buffer was full counts in `evicted_subscribers`.
        pub fn subscribe_with_capacity(&self, capacity: usize) -> Receiver<MetricsEvent> {
            self.running().subscribe(capacity)
        }
    };
}

pub(crate) use pool_methods;
