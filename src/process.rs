//! `process` and `process_ordered`: one thread feeds a long input through the pool and reads
//! the results at the same time.
//!
//! The feeder keeps at most `window` requests in flight, and its private response channel
//! has exactly `window` slots, so a worker never waits to deliver a `process` response and
//! the feeder never waits on a queue without also watching for responses: no capacity can
//! deadlock it.

use std::iter::Fuse;

use crossbeam_channel::{Receiver, Sender, bounded, select};

use crate::message::{Job, Response, Route};
use crate::orchestrator::{Handle, Intake, Refusal};

/// Feeds inputs and collects `(position, response)` pairs.
struct Feeder<'a, Req, Resp, I> {
    handle: &'a Handle<Req, Resp>,
    intake: &'a Intake<Req, Resp>,
    inputs: Fuse<I>,
    /// A job made from the next input that did not fit in the queue yet.
    pending: Option<Job<Req, Resp>>,
    tx: Sender<(u64, Response<Resp>)>,
    rx: Receiver<(u64, Response<Resp>)>,
    next_seq: u64,
    in_flight: usize,
    window: usize,
}

impl<'a, Req: Send + 'static, Resp: Send + 'static, I: Iterator<Item = Req>>
    Feeder<'a, Req, Resp, I>
{
    fn new(
        handle: &'a Handle<Req, Resp>,
        intake: &'a Intake<Req, Resp>,
        window: usize,
        inputs: I,
    ) -> Self {
        let (tx, rx) = bounded(window);
        Feeder {
            handle,
            intake,
            inputs: inputs.fuse(),
            pending: None,
            tx,
            rx,
            next_seq: 0,
            in_flight: 0,
            window,
        }
    }

    /// Feeds inputs at positions below `limit` while the window allows, until one response
    /// arrives. `None` when nothing is in flight and nothing more may be fed.
    fn step(&mut self, limit: u64) -> Option<(u64, Response<Resp>)> {
        loop {
            if self.pending.is_none()
                && self.next_seq < limit
                && self.in_flight < self.window
                && let Some(req) = self.inputs.next()
            {
                let route = Route::Process(self.tx.clone(), self.next_seq);
                self.pending = Some(self.handle.job(req, None, route));
            }
            let Some(job) = self.pending.take() else {
                if self.in_flight == 0 {
                    return None;
                }
                // We hold a sender, so this cannot disconnect.
                let got = self.rx.recv().ok();
                self.in_flight -= 1;
                return got;
            };
            let job = match self.handle.try_enqueue(self.intake, job) {
                Ok(_) => {
                    self.sent();
                    continue;
                }
                Err((Refusal::Full, job)) => job,
                // `process` borrows the orchestrator: no shutdown can have started.
                Err(_) => return None,
            };
            let q = &self.intake.queues[self.handle.target(self.intake, &job).0];
            if self.in_flight == 0 {
                // Nothing to read: wait for queue space alone.
                match q.send(job) {
                    Ok(()) => self.sent(),
                    Err(_) => return None,
                }
                continue;
            }
            select! {
                send(q, job) -> sent => match sent {
                    Ok(()) => self.sent(),
                    Err(_) => return None,
                },
                recv(self.rx) -> got => {
                    self.pending = Some(job);
                    self.in_flight -= 1;
                    return got.ok();
                }
            }
        }
    }

    fn sent(&mut self) {
        self.next_seq += 1;
        self.in_flight += 1;
    }
}

/// The iterator of [`Orchestrator::process`](crate::Orchestrator::process): responses in
/// completion order.
#[must_use = "iterators are lazy: nothing is submitted until it is iterated"]
pub struct Process<'a, Req, Resp, I> {
    feeder: Feeder<'a, Req, Resp, I>,
}

impl<'a, Req: Send + 'static, Resp: Send + 'static, I: Iterator<Item = Req>>
    Process<'a, Req, Resp, I>
{
    pub(crate) fn new(
        handle: &'a Handle<Req, Resp>,
        intake: &'a Intake<Req, Resp>,
        window: usize,
        inputs: impl IntoIterator<IntoIter = I>,
    ) -> Self {
        Process {
            feeder: Feeder::new(handle, intake, window, inputs.into_iter()),
        }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static, I: Iterator<Item = Req>> Iterator
    for Process<'_, Req, Resp, I>
{
    type Item = Response<Resp>;

    fn next(&mut self) -> Option<Response<Resp>> {
        self.feeder.step(u64::MAX).map(|(_, r)| r)
    }
}

/// The iterator of [`Orchestrator::process_ordered`](crate::Orchestrator::process_ordered):
/// responses in input order.
#[must_use = "iterators are lazy: nothing is submitted until it is iterated"]
pub struct ProcessOrdered<'a, Req, Resp, I> {
    feeder: Feeder<'a, Req, Resp, I>,
    /// Responses that arrived before their turn, at `position % window`.
    reorder: Vec<Option<Response<Resp>>>,
    next_out: u64,
}

impl<'a, Req: Send + 'static, Resp: Send + 'static, I: Iterator<Item = Req>>
    ProcessOrdered<'a, Req, Resp, I>
{
    pub(crate) fn new(
        handle: &'a Handle<Req, Resp>,
        intake: &'a Intake<Req, Resp>,
        window: usize,
        inputs: impl IntoIterator<IntoIter = I>,
    ) -> Self {
        ProcessOrdered {
            feeder: Feeder::new(handle, intake, window, inputs.into_iter()),
            reorder: (0..window).map(|_| None).collect(),
            next_out: 0,
        }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static, I: Iterator<Item = Req>> Iterator
    for ProcessOrdered<'_, Req, Resp, I>
{
    type Item = Response<Resp>;

    fn next(&mut self) -> Option<Response<Resp>> {
        let window = self.reorder.len() as u64;
        loop {
            let slot = (self.next_out % window) as usize;
            if let Some(r) = self.reorder[slot].take() {
                self.next_out += 1;
                return Some(r);
            }
            // Positions in flight stay within [next_out, next_out + window): distinct slots.
            let (seq, r) = self.feeder.step(self.next_out + window)?;
            if seq == self.next_out {
                self.next_out += 1;
                return Some(r);
            }
            self.reorder[(seq % window) as usize] = Some(r);
        }
    }
}

impl<Req, Resp, I> std::fmt::Debug for Process<'_, Req, Resp, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process")
            .field("fed", &self.feeder.next_seq)
            .field("in_flight", &self.feeder.in_flight)
            .finish_non_exhaustive()
    }
}

impl<Req, Resp, I> std::fmt::Debug for ProcessOrdered<'_, Req, Resp, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessOrdered")
            .field("fed", &self.feeder.next_seq)
            .field("yielded", &self.next_out)
            .field("in_flight", &self.feeder.in_flight)
            .finish_non_exhaustive()
    }
}
