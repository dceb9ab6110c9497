//! The submitting methods, written once for every submitting handle: [`Orchestrator`],
//! [`Submitter`] and [`Limited`].
//!
//! [`Orchestrator`]: crate::Orchestrator
//! [`Submitter`]: crate::Submitter
//! [`Limited`]: crate::Limited

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
