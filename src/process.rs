//! `process` and `process_ordered`: one thread feeds a long input through the pool and reads
//! the results at the same time.
//!
//! The feeder keeps at most `window` requests in flight, and its private response channel
//! has exactly `window` slots, so a worker never waits to deliver a `process` response and
//! the feeder never waits on a queue without also watching for responses: no capacity can
//! deadlock it. The same feeder serves [`Pipeline`](crate::Pipeline)s, whose first stage it
//! feeds with jobs that carry the private route to the pipeline's end.

use std::fmt;
use std::iter::Fuse;

use crossbeam_channel::{Receiver, Sender, bounded, select};
use crossbeam_utils::Backoff;

use crate::intake::{Handle, Intake, Refusal};
use crate::message::{Job, Route};
use crate::priority::NORMAL;
use crate::response::Response;
use crate::unwind::drop_quietly;

/// The most requests a `process` iterator keeps in flight, whatever the capacities.
pub(crate) const MAX_WINDOW: usize = 1 << 16;

/// Where a `process` response goes: the feeder's private channel, and the input's position.
pub(crate) type Tag<Out> = (Sender<(u64, Response<Out>)>, u64);

/// Makes the job for one input, given the route back to the feeder.
pub(crate) type MakeJob<Req, Resp, Item, Out> =
    fn(&Handle<Req, Resp>, Item, Tag<Out>) -> Job<Req, Resp>;

/// Feeds inputs and collects `(position, response)` pairs.
pub(crate) struct Feeder<'a, Req: Send, Resp: Send, Out, I: Iterator> {
    handle: &'a Handle<Req, Resp>,
    intake: &'a Intake<Req, Resp>,
    inputs: Fuse<I>,
    make: MakeJob<Req, Resp, I::Item, Out>,
    /// A job made from the next input that did not fit in the queue yet.
    pending: Option<Job<Req, Resp>>,
    tx: Sender<(u64, Response<Out>)>,
    rx: Receiver<(u64, Response<Out>)>,
    next_seq: u64,
    in_flight: usize,
    window: usize,
}

impl<'a, Req, Resp, Out, I> Feeder<'a, Req, Resp, Out, I>
where
    Req: Send,
    Resp: Send,
    I: Iterator,
{
    pub(crate) fn new(
        handle: &'a Handle<Req, Resp>,
        intake: &'a Intake<Req, Resp>,
        window: usize,
        inputs: I,
        make: MakeJob<Req, Resp, I::Item, Out>,
    ) -> Self {
        // The response channel's slots are allocated up front: cap the window so a huge
        // `queue_capacity` does not cost a huge allocation per `process` call.
        let window = window.clamp(1, MAX_WINDOW);
        let (tx, rx) = bounded(window);
        Feeder {
            handle,
            intake,
            inputs: inputs.fuse(),
            make,
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
    pub(crate) fn step(&mut self, limit: u64) -> Option<(u64, Response<Out>)>
    where
        Req: Send,
        Resp: Send,
    {
        'feed: loop {
            if self.pending.is_none()
                && self.next_seq < limit
                && self.in_flight < self.window
                && let Some(item) = self.inputs.next()
            {
                let tag = (self.tx.clone(), self.next_seq);
                self.pending = Some((self.make)(self.handle, item, tag));
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
            let (mut job, mut first) = match self.handle.try_enqueue(self.intake, job, NORMAL) {
                Ok(()) => {
                    self.sent();
                    continue;
                }
                Err((Refusal::Full, job, first)) => (job, first),
                // The iterator borrows its orchestrator: no shutdown can have started.
                Err(_) => return None,
            };
            // The queue is full. Retry both ways with a backoff before the `select!` parks
            // this thread (as crossbeam's own `send` and `recv` do), which would cost a
            // futex round trip per job while the pool keeps up.
            let backoff = Backoff::new();
            while !backoff.is_completed() {
                backoff.snooze();
                if self.in_flight > 0
                    && let Ok(got) = self.rx.try_recv()
                {
                    self.pending = Some(job);
                    self.in_flight -= 1;
                    return Some(got);
                }
                match self.handle.try_enqueue(self.intake, job, NORMAL) {
                    Ok(()) => {
                        self.sent();
                        continue 'feed;
                    }
                    Err((Refusal::Full, back, at)) => (job, first) = (back, at),
                    Err(_) => return None,
                }
            }
            let q = &self.intake.lanes[NORMAL][first];
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

impl<Req: Send, Resp: Send, Out, I: Iterator> Drop for Feeder<'_, Req, Resp, Out, I> {
    /// Dropped early: an input already pulled from the source but not queued yet still goes
    /// through the pool (dropping the iterator loses nothing it took), then this waits for
    /// the requests in flight (at most a window), so none is stranded in the pool, and counts
    /// their discarded responses as undelivered.
    fn drop(&mut self) {
        let mut discarded = 0;
        // `step` with a limit of 0 pulls no new input: it queues the pending job, if any,
        // and returns the responses in flight one by one.
        while self.pending.is_some() || self.in_flight > 0 {
            match self.step(0) {
                Some(response) => {
                    discarded += 1;
                    drop_quietly(response);
                }
                None => break,
            }
        }
        if let Some(job) = self.pending.take() {
            // Only if the queue closed under it, which a borrowed orchestrator rules out.
            drop_quietly(job.req);
        }
        if discarded > 0 {
            self.handle.discarded(discarded);
        }
    }
}

/// Yields a feeder's responses in input order, through a reorder buffer of one window.
pub(crate) struct Ordered<'a, Req: Send, Resp: Send, Out, I: Iterator> {
    feeder: Feeder<'a, Req, Resp, Out, I>,
    /// Responses that arrived before their turn, at `position % window`.
    reorder: Vec<Option<Response<Out>>>,
    next_out: u64,
}

impl<Req: Send, Resp: Send, Out, I: Iterator> Drop for Ordered<'_, Req, Resp, Out, I> {
    /// Responses that arrived but were never yielded are undelivered too.
    fn drop(&mut self) {
        let waiting = self.reorder.iter().filter(|r| r.is_some()).count() as u64;
        drop_quietly(std::mem::take(&mut self.reorder));
        if waiting > 0 {
            self.feeder.handle.discarded(waiting);
        }
    }
}

impl<'a, Req, Resp, Out, I> Ordered<'a, Req, Resp, Out, I>
where
    Req: Send,
    Resp: Send,
    I: Iterator,
{
    pub(crate) fn new(feeder: Feeder<'a, Req, Resp, Out, I>) -> Self {
        Ordered {
            feeder,
            reorder: Vec::new(),
            next_out: 0,
        }
    }

    pub(crate) fn next_in_order(&mut self) -> Option<Response<Out>> {
        let window = self.feeder.window as u64;
        loop {
            let slot = (self.next_out % window) as usize;
            if let Some(r) = self.reorder.get_mut(slot).and_then(Option::take) {
                self.next_out += 1;
                return Some(r);
            }
            // Positions in flight stay within [next_out, next_out + window): distinct slots.
            let (seq, r) = self.feeder.step(self.next_out + window)?;
            if seq == self.next_out {
                self.next_out += 1;
                return Some(r);
            }
            // Grown on demand, up to one window: most streams need far less.
            let slot = (seq % window) as usize;
            if slot >= self.reorder.len() {
                self.reorder.resize_with(slot + 1, || None);
            }
            self.reorder[slot] = Some(r);
        }
    }
}

/// The iterator of [`Orchestrator::process`](crate::Orchestrator::process): responses in
/// completion order.
#[must_use = "iterators are lazy: nothing is submitted until it is iterated"]
pub struct Process<'a, Req: Send, Resp: Send, I: Iterator> {
    feeder: Feeder<'a, Req, Resp, Resp, I>,
}

impl<'a, Req, Resp, I> Process<'a, Req, Resp, I>
where
    Req: Send,
    Resp: Send,
    I: Iterator<Item = Req>,
{
    pub(crate) fn new(feeder: Feeder<'a, Req, Resp, Resp, I>) -> Self {
        Process { feeder }
    }
}

impl<Req, Resp, I> Iterator for Process<'_, Req, Resp, I>
where
    Req: Send,
    Resp: Send,
    I: Iterator<Item = Req>,
{
    type Item = Response<Resp>;

    fn next(&mut self) -> Option<Response<Resp>> {
        self.feeder.step(u64::MAX).map(|(_, r)| r)
    }
}

/// The iterator of [`Orchestrator::process_ordered`](crate::Orchestrator::process_ordered):
/// responses in input order.
#[must_use = "iterators are lazy: nothing is submitted until it is iterated"]
pub struct ProcessOrdered<'a, Req: Send, Resp: Send, I: Iterator> {
    ordered: Ordered<'a, Req, Resp, Resp, I>,
}

impl<'a, Req, Resp, I> ProcessOrdered<'a, Req, Resp, I>
where
    Req: Send,
    Resp: Send,
    I: Iterator<Item = Req>,
{
    pub(crate) fn new(feeder: Feeder<'a, Req, Resp, Resp, I>) -> Self {
        ProcessOrdered {
            ordered: Ordered::new(feeder),
        }
    }
}

impl<Req, Resp, I> Iterator for ProcessOrdered<'_, Req, Resp, I>
where
    Req: Send,
    Resp: Send,
    I: Iterator<Item = Req>,
{
    type Item = Response<Resp>;

    fn next(&mut self) -> Option<Response<Resp>> {
        self.ordered.next_in_order()
    }
}

impl<Req: Send, Resp: Send, I: Iterator> fmt::Debug for Process<'_, Req, Resp, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("fed", &self.feeder.next_seq)
            .field("in_flight", &self.feeder.in_flight)
            .finish_non_exhaustive()
    }
}

impl<Req: Send, Resp: Send, I: Iterator> fmt::Debug for ProcessOrdered<'_, Req, Resp, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessOrdered")
            .field("fed", &self.ordered.feeder.next_seq)
            .field("yielded", &self.ordered.next_out)
            .field("in_flight", &self.ordered.feeder.in_flight)
            .finish_non_exhaustive()
    }
}

/// The job of one `process` input.
pub(crate) fn direct_job<Req: Send, Resp: Send>(
    handle: &Handle<Req, Resp>,
    req: Req,
    (tx, seq): Tag<Resp>,
) -> Job<Req, Resp> {
    handle.job(req, None, Route::Process(tx, seq))
}
