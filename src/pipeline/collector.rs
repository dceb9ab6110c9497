//! The collector: the thread at the end of a pipeline. It alone delivers answers (to the
//! responses channel, a waiting `call`, or a `process` feeder) and counts them.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, at, never, select};

use super::stage::{Env, PipeRoute};
use crate::error::CallError;
use crate::response::Response;
use crate::unwind::drop_quietly;

/// The collector's exact totals.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Totals {
    pub(super) completed: u64,
    pub(super) failed: u64,
    pub(super) undelivered: u64,
}

pub(super) enum CollectorControl {
    /// Past this instant, stop waiting for response space (`shutdown_timeout`).
    Deadline(Instant),
    Totals(Sender<Totals>),
}

/// The thread at the end of the pipeline: it alone delivers answers and counts them.
pub(super) struct Collector<In, Out> {
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
    pub(super) fn new(
        inbox: Receiver<Env<Out, In, Out>>,
        control: Receiver<CollectorControl>,
        responses: Sender<Response<Out>>,
    ) -> Self {
        Collector {
            inbox,
            control,
            responses,
            totals: Totals::default(),
            deadline: None,
            listening: true,
        }
    }

    /// The thread's body: delivers until every stage is down; returns the exact totals.
    pub(super) fn run(mut self) -> Totals {
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
            ..
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
