//! Submitting: every row of the contract's "Submitting" table, on both `Orchestrator` and
//! `Submitter`, with both distributions; refusals hand the request back; blocked submits
//! wake when space frees or a shutdown starts; `RoundRobin` neither refuses nor strands work
//! while some worker has room.

mod common;

use std::collections::HashSet;
use std::error::Error;
use std::thread;
use std::time::{Duration, Instant};

use channel_orchestrator::crossbeam_channel::{Receiver, RecvTimeoutError, bounded};
use channel_orchestrator::{
    CallError, Distribution, Orchestrator, Response, SubmitError, SubmitTimeoutError,
    TrySubmitError,
};
use common::*;

/// Requests per accepting test.
const REQUESTS: u32 = 50;
/// How long a blocked submit must stay blocked before we believe it blocks.
const STILL_BLOCKED: Duration = Duration::from_millis(100);
/// The timeout of the `submit_timeout` timing test.
const TIMEOUT: Duration = Duration::from_millis(100);
/// Tolerance for timing asserts on a loaded machine.
const SLACK: Duration = Duration::from_secs(2);
/// A request value that the test never uses otherwise, to see it come back.
const PROBE: u32 = 4242;

const DISTRIBUTIONS: [Distribution; 2] = [Distribution::Shared, Distribution::RoundRobin];

type Orch = Orchestrator<u32, u32>;
type Responses = Receiver<Response<u32>>;

/// A pool whose every job waits at `gate`; returns with every worker busy and the queue(s)
/// holding `capacity` requests, so the next submit finds no room.
///
/// The gate comes last so that it drops (and opens) first: an orchestrator's drop waits for
/// its jobs.
fn full(workers: usize, capacity: usize, dist: Distribution) -> (Orch, Responses, Gate) {
    let gate = Gate::new();
    let waiter = gate.waiter();
    let (orch, responses) = Orchestrator::builder()
        .workers(workers)
        .queue_capacity(capacity)
        .distribution(dist)
        .build(move |x: u32| {
            waiter.pass(u64::from(x));
            x
        })
        .unwrap();
    for i in 0..workers {
        orch.submit(i as u32).unwrap();
    }
    gate.wait_started(workers);
    for i in 0..capacity {
        orch.try_submit((workers + i) as u32)
            .unwrap_or_else(|e| panic!("queue full after {i} of {capacity}: {e}"));
    }
    (orch, responses, gate)
}

fn handle<'a>(
    via: Via,
    orch: &'a Orch,
    sub: &'a channel_orchestrator::Submitter<u32, u32>,
) -> &'a (dyn Handle<u32, u32> + Sync) {
    match via {
        Via::Orchestrator => orch,
        Via::Submitter => sub,
    }
}

fn doubling(workers: usize, dist: Distribution) -> (Orch, Responses) {
    Orchestrator::builder()
        .workers(workers)
        .distribution(dist)
        .build(|x: u32| x * 2)
        .unwrap()
}

/// Checks that the responses are exactly one per (id, request) pair, each doubled.
fn assert_answered(responses: &Responses, sent: &[(channel_orchestrator::RequestId, u32)]) {
    let got = recv_n(responses, sent.len());
    let mut want: std::collections::HashMap<_, _> = sent.iter().copied().collect();
    assert_eq!(want.len(), sent.len(), "submit returned a duplicate id");
    for r in got {
        let req = want
            .remove(&r.id)
            .unwrap_or_else(|| panic!("response for unknown or repeated id {}", r.id));
        assert_eq!(r.outcome, Ok(req * 2), "wrong answer for id {}", r.id);
    }
}

#[test]
fn submit_accepts_and_the_response_carries_its_id() {
    for dist in DISTRIBUTIONS {
        for via in VIAS {
            let (orch, responses) = doubling(2, dist);
            let sub = orch.submitter();
            let h = handle(via, &orch, &sub);
            let sent: Vec<_> = (0..REQUESTS).map(|x| (h.submit(x).unwrap(), x)).collect();
            assert_answered(&responses, &sent);
        }
    }
}

#[test]
fn try_submit_accepts_when_there_is_room() {
    for dist in DISTRIBUTIONS {
        for via in VIAS {
            let (orch, responses) = doubling(2, dist);
            let sub = orch.submitter();
            let h = handle(via, &orch, &sub);
            // The default queue holds all of them even if no worker ran yet.
            let sent: Vec<_> = (0..REQUESTS)
                .map(|x| (h.try_submit(x).unwrap(), x))
                .collect();
            assert_answered(&responses, &sent);
        }
    }
}

#[test]
fn submit_timeout_accepts_when_there_is_room() {
    for dist in DISTRIBUTIONS {
        for via in VIAS {
            let (orch, responses) = doubling(2, dist);
            let sub = orch.submitter();
            let h = handle(via, &orch, &sub);
            let mut sent = Vec::new();
            for x in 0..REQUESTS {
                // Zero ("now"), small, and a timeout too large to add to `Instant::now()`.
                let d = match x % 3 {
                    0 => Duration::ZERO,
                    1 => Duration::from_millis(10),
                    _ => Duration::MAX,
                };
                sent.push((h.submit_timeout(x, d).unwrap(), x));
            }
            assert_answered(&responses, &sent);
        }
    }
}

#[test]
fn call_returns_the_handlers_value_and_nothing_on_responses() {
    for dist in DISTRIBUTIONS {
        for via in VIAS {
            let (orch, responses) = doubling(2, dist);
            let sub = orch.submitter();
            let h = handle(via, &orch, &sub);
            for x in 0..REQUESTS {
                assert_eq!(h.call(x), Ok(x * 2));
            }
            drop(sub);
            orch.shutdown();
            assert!(drain_after_shutdown(&responses).is_empty());
        }
    }
}

#[test]
fn try_submit_on_a_full_queue_is_full_and_gives_the_request_back() {
    for dist in DISTRIBUTIONS {
        for via in VIAS {
            let (orch, responses, mut gate) = full(2, 4, dist);
            let sub = orch.submitter();
            let h = handle(via, &orch, &sub);
            let e = h.try_submit(PROBE).unwrap_err();
            assert!(
                matches!(e, TrySubmitError::Full(PROBE)),
                "{dist:?} {via:?}: {e:?}"
            );
            assert_message_style(&e);
            let _: &dyn Error = &e;
            assert_eq!(e.into_inner(), PROBE);
            // Once the workers move on there is room again.
            gate.open();
            recv_n(&responses, 6);
            h.submit(1).unwrap();
            recv_n(&responses, 1);
        }
    }
}

#[test]
fn submit_timeout_on_a_full_queue_times_out_after_its_timeout() {
    for via in VIAS {
        let (orch, _responses, _gate) = full(1, 2, Distribution::Shared);
        let sub = orch.submitter();
        let h = handle(via, &orch, &sub);
        let t = Instant::now();
        let e = h.submit_timeout(PROBE, TIMEOUT).unwrap_err();
        let waited = t.elapsed();
        assert!(
            matches!(e, SubmitTimeoutError::Timeout(PROBE)),
            "{via:?}: {e:?}"
        );
        assert!(
            waited >= TIMEOUT,
            "gave up after {waited:?}, before {TIMEOUT:?}"
        );
        assert!(waited < TIMEOUT + SLACK, "gave up only after {waited:?}");
        assert_message_style(&e);
        let _: &dyn Error = &e;
        assert_eq!(e.into_inner(), PROBE);
    }
}

#[test]
fn submit_timeout_round_robin_waits_on_every_queue_and_times_out() {
    for via in VIAS {
        let (orch, _responses, _gate) = full(3, 6, Distribution::RoundRobin);
        let sub = orch.submitter();
        let h = handle(via, &orch, &sub);
        let t = Instant::now();
        let e = h.submit_timeout(PROBE, TIMEOUT).unwrap_err();
        let waited = t.elapsed();
        assert!(
            matches!(e, SubmitTimeoutError::Timeout(PROBE)),
            "{via:?}: {e:?}"
        );
        assert!(waited >= TIMEOUT && waited < TIMEOUT + SLACK, "{waited:?}");
    }
}

#[test]
fn submit_timeout_zero_means_now() {
    for dist in DISTRIBUTIONS {
        for via in VIAS {
            let (orch, responses, mut gate) = full(2, 2, dist);
            let sub = orch.submitter();
            let h = handle(via, &orch, &sub);
            let t = Instant::now();
            let e = h.submit_timeout(PROBE, Duration::ZERO).unwrap_err();
            assert!(
                t.elapsed() < PROMPT,
                "a zero timeout waited {:?}",
                t.elapsed()
            );
            assert!(matches!(e, SubmitTimeoutError::Timeout(PROBE)), "{e:?}");
            gate.open();
            recv_n(&responses, 4);
            // With room, a zero timeout accepts.
            h.submit_timeout(7, Duration::ZERO).unwrap();
            assert_eq!(recv_n(&responses, 1)[0].outcome, Ok(7));
        }
    }
}

/// Which blocking method a test exercises.
#[derive(Debug, Clone, Copy)]
enum Blocking {
    Submit,
    SubmitTimeout,
    Call,
}

const BLOCKING: [Blocking; 3] = [Blocking::Submit, Blocking::SubmitTimeout, Blocking::Call];

/// What a blocking method returned, without the request type's error wrappers.
#[derive(Debug, PartialEq)]
enum Got {
    /// Accepted (the id for streams; `None` for a call, whose value is checked separately).
    Accepted(Option<channel_orchestrator::RequestId>),
    /// The call's answer.
    Answer(u32),
    ShutDown(u32),
    Cancelled(u32),
    Timeout(u32),
}

fn go(h: &dyn Handle<u32, u32>, how: Blocking, req: u32) -> Got {
    match how {
        Blocking::Submit => match h.submit(req) {
            Ok(id) => Got::Accepted(Some(id)),
            Err(SubmitError::ShutDown(r)) => Got::ShutDown(r),
        },
        Blocking::SubmitTimeout => match h.submit_timeout(req, Duration::from_secs(60)) {
            Ok(id) => Got::Accepted(Some(id)),
            Err(SubmitTimeoutError::ShutDown(r)) => Got::ShutDown(r),
            Err(SubmitTimeoutError::Timeout(r)) => Got::Timeout(r),
        },
        Blocking::Call => match h.call(req) {
            Ok(v) => Got::Answer(v),
            Err(CallError::ShutDown(r)) => Got::ShutDown(r),
            Err(CallError::Cancelled(r)) => Got::Cancelled(r),
            Err(e @ CallError::Failed(_)) => panic!("unexpected {e:?}"),
        },
    }
}

#[test]
fn a_submit_on_a_full_queue_waits_for_space() {
    for dist in DISTRIBUTIONS {
        for via in VIAS {
            for how in BLOCKING {
                let (orch, responses, mut gate) = full(2, 2, dist);
                let sub = orch.submitter();
                let h = handle(via, &orch, &sub);
                thread::scope(|s| {
                    let (tx, rx) = bounded(1);
                    s.spawn(move || tx.send(go(h, how, PROBE)).unwrap());
                    assert_eq!(
                        rx.recv_timeout(STILL_BLOCKED).unwrap_err(),
                        RecvTimeoutError::Timeout,
                        "{dist:?} {via:?} {how:?} did not wait for space"
                    );
                    // One job finishes, one queued job starts: there is room for ours.
                    gate.release(1);
                    gate.wait_started(1);
                    match how {
                        Blocking::Call => {
                            gate.open();
                            assert_eq!(rx.recv_timeout(WAIT).unwrap(), Got::Answer(PROBE));
                        }
                        _ => {
                            let got = rx.recv_timeout(WAIT).unwrap();
                            assert!(matches!(got, Got::Accepted(Some(_))), "{got:?}");
                            gate.open();
                        }
                    }
                });
                let answered = recv_n(&responses, 4 + usize::from(!matches!(how, Blocking::Call)));
                assert!(answered.iter().all(|r| r.outcome.is_ok()));
            }
        }
    }
}

/// How the orchestrator goes away in the after-shutdown tests.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Shutdown,
    Now,
    Timeout,
    Drop,
}

const STOPS: [Stop; 4] = [Stop::Shutdown, Stop::Now, Stop::Timeout, Stop::Drop];

fn stop(orch: Orch, how: Stop) {
    match how {
        Stop::Shutdown => drop(orch.shutdown()),
        Stop::Now => drop(orch.shutdown_now()),
        Stop::Timeout => drop(orch.shutdown_timeout(Duration::from_millis(50))),
        Stop::Drop => drop(orch),
    }
}

#[test]
fn a_submitter_after_shutdown_gets_its_request_back() {
    for how in STOPS {
        let (orch, _responses) = doubling(2, Distribution::Shared);
        let sub = orch.submitter();
        let clone = sub.clone();
        stop(orch, how);
        for s in [&sub, &clone] {
            let e = s.submit(1).unwrap_err();
            assert!(matches!(e, SubmitError::ShutDown(1)), "{how:?}");
            assert_message_style(&e);
            assert_eq!(e.into_inner(), 1);

            let e = s.try_submit(2).unwrap_err();
            assert!(matches!(e, TrySubmitError::ShutDown(2)), "{how:?}");
            assert_message_style(&e);
            assert_eq!(e.into_inner(), 2);

            let e = s.submit_timeout(3, Duration::from_secs(1)).unwrap_err();
            assert!(matches!(e, SubmitTimeoutError::ShutDown(3)), "{how:?}");
            assert_message_style(&e);
            assert_eq!(e.into_inner(), 3);

            let t = Instant::now();
            let e = s.call(4).unwrap_err();
            assert!(t.elapsed() < PROMPT);
            assert!(matches!(e, CallError::ShutDown(4)), "{how:?}");
            assert_message_style(&e);
            let _: &dyn Error = &e;
            assert_eq!(e.into_inner(), Some(4));
        }
        // A clone made after the shutdown is just as shut.
        assert!(matches!(
            sub.clone().submit(5),
            Err(SubmitError::ShutDown(5))
        ));
    }
}

#[test]
fn a_submit_blocked_on_a_full_queue_returns_promptly_when_shutdown_starts() {
    for dist in DISTRIBUTIONS {
        for how in BLOCKING {
            for now in [false, true] {
                let (orch, responses, mut gate) = full(2, 2, dist);
                let sub = orch.submitter();
                let (tx, blocked) = bounded(1);
                let producer = thread::spawn(move || tx.send(go(&sub, how, PROBE)).unwrap());
                assert!(
                    blocked.recv_timeout(STILL_BLOCKED).is_err(),
                    "{how:?} did not block on a full queue"
                );
                // The workers are still held at the gate while the shutdown starts.
                let started = Instant::now();
                let stopper = thread::spawn(move || {
                    if now {
                        orch.shutdown_now()
                    } else {
                        orch.shutdown()
                    }
                });
                let got = blocked
                    .recv_timeout(WAIT)
                    .expect("blocked submit never returned");
                let took = started.elapsed();
                assert!(
                    took < PROMPT,
                    "{dist:?} {how:?} now={now}: blocked submit returned {took:?} after shutdown started"
                );
                gate.open();
                let report = within(WAIT, "shutdown", move || stopper.join().unwrap());
                producer.join().unwrap();
                let answered = drain_after_shutdown(&responses);
                let ids: HashSet<_> = answered.iter().map(|r| r.id).collect();
                let unstarted: HashSet<_> = report.unstarted.iter().map(|(id, _)| *id).collect();
                match got {
                    Got::ShutDown(PROBE) => {}
                    Got::Accepted(Some(id)) => assert!(
                        ids.contains(&id) || unstarted.contains(&id),
                        "accepted {id} vanished"
                    ),
                    Got::Answer(PROBE) => {}
                    Got::Cancelled(PROBE) if now => {}
                    other => panic!("{dist:?} {how:?} now={now}: unexpected {other:?}"),
                }
                let stream_accepted = matches!(got, Got::Accepted(_));
                let call_ran = matches!(got, Got::Answer(_));
                assert_eq!(
                    answered.len() + report.unstarted.len(),
                    4 + usize::from(stream_accepted),
                    "{dist:?} {how:?} now={now}"
                );
                assert_eq!(
                    report.completed as usize,
                    answered.len() + usize::from(call_ran)
                );
            }
        }
    }
}

#[test]
fn round_robin_takes_exactly_queue_capacity_in_total() {
    for (workers, capacity) in [(2, 4), (2, 5), (3, 7), (4, 4), (4, 2)] {
        for fresh_handles in [false, true] {
            let gate = Gate::new();
            let waiter = gate.waiter();
            let (orch, _responses) = Orchestrator::builder()
                .workers(workers)
                .queue_capacity(capacity)
                .distribution(Distribution::RoundRobin)
                .build(move |x: u32| {
                    waiter.pass(u64::from(x));
                    x
                })
                .unwrap();
            // Rebound after `orch` so it drops (opens) first on every way out.
            let gate = gate;
            for i in 0..workers {
                orch.submit(i as u32).unwrap();
            }
            gate.wait_started(workers);
            // Each new `Submitter` starts its rotation at the same queue: after that queue
            // fills, the others must still take requests.
            let mut accepted = 0;
            loop {
                let r = if fresh_handles {
                    orch.submitter().try_submit(PROBE)
                } else {
                    orch.try_submit(PROBE)
                };
                match r {
                    Ok(_) => accepted += 1,
                    Err(TrySubmitError::Full(PROBE)) => break,
                    Err(e) => panic!("{e:?}"),
                }
                assert!(accepted <= capacity, "accepted more than queue_capacity");
            }
            assert_eq!(
                accepted, capacity,
                "{workers} workers, capacity {capacity}, fresh handles {fresh_handles}: \
                 Full while some worker queue had room"
            );
        }
    }
}

#[test]
fn round_robin_slow_worker_does_not_strand_requests() {
    const BLOCKER: u32 = u32::MAX;
    const QUICK: u32 = 40;
    let gate = Gate::new();
    let waiter = gate.waiter();
    let (orch, responses) = Orchestrator::builder()
        .workers(2)
        .queue_capacity(64)
        .distribution(Distribution::RoundRobin)
        .build(move |x: u32| {
            if x == BLOCKER {
                waiter.pass(u64::from(x));
            }
            x
        })
        .unwrap();
    // Rebound after `orch` so it drops (opens) first on every way out.
    let gate = gate;
    orch.submit(BLOCKER).unwrap();
    gate.wait_started(1);
    // These rotate over both queues; half land behind the stuck worker.
    let ids: HashSet<_> = (0..QUICK).map(|x| orch.submit(x).unwrap()).collect();
    let quick = recv_n(&responses, QUICK as usize);
    assert_eq!(quick.iter().map(|r| r.id).collect::<HashSet<_>>(), ids);
    let helper = quick[0].worker;
    assert!(quick.iter().all(|r| r.worker == helper));
    gate.release(1);
    let slow = recv_n(&responses, 1);
    assert_eq!(slow[0].outcome, Ok(BLOCKER));
    assert_ne!(
        slow[0].worker, helper,
        "one worker ran both the blocker and the rest"
    );
}

#[test]
fn ids_are_unique_across_handles_and_threads() {
    const THREADS: u32 = 4;
    const EACH: u32 = 200;
    let (orch, responses) = doubling(2, Distribution::RoundRobin);
    let all: Vec<_> = thread::scope(|s| {
        let joins: Vec<_> = (0..THREADS)
            .map(|t| {
                let sub = orch.submitter();
                let orch = &orch;
                s.spawn(move || {
                    (0..EACH)
                        .map(|i| {
                            let x = t * EACH + i;
                            let id = if i.is_multiple_of(2) {
                                orch.submit(x)
                            } else {
                                sub.submit(x)
                            };
                            (id.unwrap(), x)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        joins.into_iter().flat_map(|j| j.join().unwrap()).collect()
    });
    distinct(all.iter().map(|(id, _)| *id));
    assert_answered(&responses, &all);
}

/// Submitting threads per round of the shutdown-is-final tests, and rounds.
const RACERS: usize = 4;
const ROUNDS: usize = 30;

#[test]
fn a_shutdown_refusal_is_final() {
    // Once a handle reported `ShutDown`, intake is closed for good: no later submit on any
    // handle may be accepted, or report `Full`/`Timeout` (which invite a retry).
    let mut violations = Vec::new();
    for round in 0..ROUNDS {
        let (orch, _responses, mut gate) = full(1, 1, Distribution::Shared);
        let (tx, rx) = bounded(RACERS);
        let racers: Vec<_> = (0..RACERS)
            .map(|r| {
                let sub = orch.submitter();
                let tx = tx.clone();
                thread::spawn(move || {
                    // Blocks on the full queue until the shutdown wakes it.
                    let first = sub.submit(PROBE);
                    assert!(
                        matches!(first, Err(SubmitError::ShutDown(PROBE))),
                        "{first:?}"
                    );
                    tx.send(()).unwrap();
                    let mut after = Vec::new();
                    for i in 0..200 {
                        match sub.try_submit(i) {
                            Err(TrySubmitError::ShutDown(_)) => {}
                            Ok(_) => after.push(format!("racer {r}: try_submit {i} accepted")),
                            Err(TrySubmitError::Full(_)) => {
                                after.push(format!("racer {r}: try_submit {i} was Full"))
                            }
                        }
                    }
                    after
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(20)); // let them block
        let stopper = thread::spawn(move || orch.shutdown());
        for _ in 0..RACERS {
            rx.recv_timeout(WAIT)
                .expect("a blocked submit never returned");
        }
        gate.open();
        within(WAIT, "shutdown", move || drop(stopper.join().unwrap()));
        for r in racers {
            let after = r.join().unwrap();
            if let Some(first) = after.first() {
                violations.push(format!(
                    "round {round}: {first} (of {} later submits)",
                    after.len()
                ));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "{} of {} racers saw a submit after their ShutDown refusal not refused; first: {}",
        violations.len(),
        ROUNDS * RACERS,
        violations[0]
    );
}

#[test]
fn shutdown_completes_while_producers_retry_on_full() {
    // Producers that retry `try_submit` on `Full` (and stop on `ShutDown`) must not keep
    // intake open: a graceful shutdown returns promptly and loses nothing.
    for round in 0..ROUNDS / 3 {
        let (orch, responses) = Orchestrator::builder()
            .workers(2)
            .queue_capacity(2)
            .build(|x: u32| x)
            .unwrap();
        let producers: Vec<_> = (0..RACERS as u32)
            .map(|p| {
                let sub = orch.submitter();
                thread::spawn(move || {
                    let mut accepted = Vec::new();
                    let mut i = 0;
                    loop {
                        match sub.try_submit(p * 10_000_000 + i) {
                            Ok(id) => {
                                accepted.push(id);
                                i += 1;
                            }
                            Err(TrySubmitError::Full(_)) => {}
                            Err(TrySubmitError::ShutDown(_)) => return accepted,
                        }
                    }
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(10));
        let t = Instant::now();
        let report = within(WAIT, "shutdown with retrying producers", move || {
            orch.shutdown()
        });
        let took = t.elapsed();
        let accepted: Vec<_> = producers
            .into_iter()
            .flat_map(|p| within(WAIT, "a producer", move || p.join().unwrap()))
            .collect();
        assert!(took < PROMPT * 2, "round {round}: shutdown took {took:?}");
        let answered = distinct(drain_after_shutdown(&responses).into_iter().map(|r| r.id));
        assert_eq!(answered, distinct(accepted), "round {round}");
        assert!(report.unstarted.is_empty());
    }
}
