//! Stopping: `shutdown`, `shutdown_now`, `shutdown_timeout` and `Drop` do what the
//! contract's "Stopping" table says, no thread outlives the orchestrator, and the report's
//! counts add up to what was accepted.

mod common;

use std::collections::{HashMap, HashSet};
use std::thread;
use std::time::{Duration, Instant};

use channel_orchestrator::crossbeam_channel::{Receiver, bounded};
use channel_orchestrator::{
    CallError, Distribution, Orchestrator, RequestId, Response, ShutdownReport, TrySubmitError,
};
use common::*;

/// Requests of the graceful tests.
const REQUESTS: u32 = 200;
/// Stream and call requests left queued behind busy workers in the `shutdown_now` test.
const QUEUED_STREAMS: u32 = 10;
const QUEUED_CALLS: u32 = 3;
/// The slow-job `shutdown_timeout` test: jobs, their length, the timeout, and the slack.
const SLOW_JOBS: u32 = 40;
const SLOW_JOB: Duration = Duration::from_millis(50);
const GIVE_UP: Duration = Duration::from_millis(120);
const SLACK: Duration = Duration::from_millis(700);
/// How long a blocked shutdown must stay blocked before we believe it waits.
const STILL_BLOCKED: Duration = Duration::from_millis(100);

const DISTRIBUTIONS: [Distribution; 2] = [Distribution::Shared, Distribution::RoundRobin];

type Orch = Orchestrator<u32, u32>;

fn sleepy(name: &str, workers: usize, job: Duration) -> (Orch, Receiver<Response<u32>>) {
    Orchestrator::builder()
        .workers(workers)
        .queue_capacity(REQUESTS as usize + 10)
        .thread_name(name)
        .build(move |x: u32| {
            thread::sleep(job);
            x
        })
        .unwrap()
}

/// Checks that accepted ids are split exactly between responses and `unstarted`, and that
/// every unstarted request is paired with its own id.
fn assert_partition(
    accepted: &HashMap<RequestId, u32>,
    answered: &[Response<u32>],
    report: &ShutdownReport<u32>,
) {
    let mut seen = HashSet::new();
    for r in answered {
        assert!(
            accepted.contains_key(&r.id),
            "response for unknown id {}",
            r.id
        );
        assert!(seen.insert(r.id), "{} answered twice", r.id);
        assert_eq!(r.outcome, Ok(accepted[&r.id]));
    }
    for (id, x) in &report.unstarted {
        assert_eq!(
            accepted.get(id),
            Some(x),
            "unstarted {id} is not the request accepted"
        );
        assert!(seen.insert(*id), "{id} both answered and unstarted");
    }
    assert_eq!(seen.len(), accepted.len(), "requests lost");
}

fn assert_totals(report: &ShutdownReport<u32>, accepted: u64) {
    assert_eq!(report.submitted, accepted);
    assert_eq!(
        report.completed + report.failed + report.unstarted.len() as u64 + report.cancelled,
        accepted,
        "{report:?}"
    );
}

#[test]
fn shutdown_runs_everything_queued() {
    for dist in DISTRIBUTIONS {
        let name = "s-all";
        let (orch, responses) = Orchestrator::builder()
            .workers(2)
            .queue_capacity(REQUESTS as usize)
            .distribution(dist)
            .thread_name(name)
            .build(|x: u32| {
                thread::sleep(Duration::from_micros(50));
                x
            })
            .unwrap();
        let accepted: HashMap<_, _> = (0..REQUESTS)
            .map(|x| (orch.submit(x).unwrap(), x))
            .collect();
        let t = Instant::now();
        let report = within(WAIT, "shutdown", move || orch.shutdown());
        assert!(report.elapsed <= t.elapsed());
        assert!(report.unstarted.is_empty());
        assert_eq!(
            (report.completed, report.failed, report.undelivered),
            (200, 0, 0)
        );
        assert_totals(&report, u64::from(REQUESTS));
        let answered = drain_after_shutdown(&responses);
        assert_partition(&accepted, &answered, &report);
        assert_no_threads_of(name);
    }
}

#[test]
fn shutdown_of_an_idle_orchestrator() {
    let (orch, responses) = sleepy("s-idle", 3, Duration::ZERO);
    let report = within(WAIT, "shutdown", move || orch.shutdown());
    assert_eq!(
        (
            report.submitted,
            report.completed,
            report.failed,
            report.undelivered
        ),
        (0, 0, 0, 0)
    );
    assert!(report.unstarted.is_empty());
    assert!(drain_after_shutdown(&responses).is_empty());
    assert_no_threads_of("s-idle");
}

#[test]
fn shutdown_now_hands_back_exactly_the_unstarted_and_cancels_queued_calls() {
    for (dist, workers) in [(Distribution::Shared, 1), (Distribution::RoundRobin, 2)] {
        let name = "s-now";
        let gate = Gate::new();
        let waiter = gate.waiter();
        let (orch, responses) = Orchestrator::builder()
            .workers(workers)
            .queue_capacity((QUEUED_STREAMS + QUEUED_CALLS) as usize)
            .distribution(dist)
            .thread_name(name)
            .build(move |x: u32| {
                waiter.pass(u64::from(x));
                x
            })
            .unwrap();
        // Rebound after `orch` so it drops (opens) first on every way out.
        let gate = gate;
        let running: Vec<_> = (0..workers as u32)
            .map(|x| orch.submit(1000 + x).unwrap())
            .collect();
        gate.wait_started(workers);
        let queued: HashMap<_, _> = (0..QUEUED_STREAMS)
            .map(|x| (orch.submit(x).unwrap(), x))
            .collect();
        let callers: Vec<_> = (0..QUEUED_CALLS)
            .map(|c| {
                let sub = orch.submitter();
                thread::spawn(move || sub.call(100 + c))
            })
            .collect();
        eventually("the calls to be queued", || {
            orch.metrics().queued == u64::from(QUEUED_STREAMS + QUEUED_CALLS)
        });
        let probe = orch.submitter();
        assert!(matches!(probe.try_submit(7), Err(TrySubmitError::Full(7))));
        let stopper = thread::spawn(move || orch.shutdown_now());
        // Running jobs finish: the shutdown waits for them.
        eventually("intake to close", || {
            matches!(probe.try_submit(7), Err(TrySubmitError::ShutDown(7)))
        });
        assert!(
            !stopper.is_finished(),
            "shutdown_now did not wait for running jobs"
        );
        gate.release(workers);
        let report = within(WAIT, "shutdown_now", move || stopper.join().unwrap());
        gate.assert_none_started(Duration::from_millis(20));

        let unstarted: HashMap<_, _> = report.unstarted.iter().copied().collect();
        assert_eq!(
            unstarted, queued,
            "{dist:?}: unstarted is not exactly what was queued"
        );
        assert_eq!(report.completed, workers as u64);
        assert_eq!(report.cancelled, u64::from(QUEUED_CALLS));
        for (c, caller) in callers.into_iter().enumerate() {
            let got = within(WAIT, "a cancelled call", move || caller.join().unwrap());
            match got {
                Err(CallError::Cancelled(x)) => assert_eq!(x, 100 + c as u32),
                other => panic!("{dist:?}: queued call got {other:?}"),
            }
        }
        let e = CallError::Cancelled(5u32);
        assert_message_style(&e);
        assert_eq!(e.into_inner(), Some(5));
        let answered = drain_after_shutdown(&responses);
        assert_eq!(
            answered.iter().map(|r| r.id).collect::<HashSet<_>>(),
            running.into_iter().collect(),
            "only the running jobs answer"
        );
        assert_totals(
            &report,
            u64::from(QUEUED_STREAMS + QUEUED_CALLS) + workers as u64,
        );
        assert_no_threads_of(name);
    }
}

#[test]
fn shutdown_timeout_is_graceful_before_its_deadline() {
    let (orch, responses) = sleepy("s-tgrace", 2, Duration::from_millis(1));
    let accepted: HashMap<_, _> = (0..50).map(|x| (orch.submit(x).unwrap(), x)).collect();
    let t = Instant::now();
    let report = within(WAIT * 2, "shutdown_timeout", move || {
        orch.shutdown_timeout(WAIT)
    });
    assert!(
        t.elapsed() < WAIT / 2,
        "waited for the deadline with nothing left to do"
    );
    assert!(report.unstarted.is_empty());
    assert_eq!(report.completed, 50);
    assert_partition(&accepted, &drain_after_shutdown(&responses), &report);
    assert_no_threads_of("s-tgrace");
}

#[test]
fn shutdown_timeout_past_its_deadline_is_shutdown_now() {
    let (orch, responses) = sleepy("s-tnow", 1, SLOW_JOB);
    let accepted: HashMap<_, _> = (0..SLOW_JOBS)
        .map(|x| (orch.submit(x).unwrap(), x))
        .collect();
    let t = Instant::now();
    let report = within(WAIT, "shutdown_timeout", move || {
        orch.shutdown_timeout(GIVE_UP)
    });
    let took = t.elapsed();
    assert!(
        took >= GIVE_UP,
        "returned after {took:?}, before its timeout"
    );
    assert!(
        took < GIVE_UP + SLOW_JOB + SLACK,
        "returned after {took:?}: queued jobs ran past the deadline"
    );
    assert!(report.completed >= 1, "nothing ran before the deadline");
    assert!(
        report.unstarted.len() as u32 >= SLOW_JOBS / 2,
        "only {} unstarted",
        report.unstarted.len()
    );
    assert_eq!(report.undelivered, 0);
    assert_partition(&accepted, &drain_after_shutdown(&responses), &report);
    assert_totals(&report, u64::from(SLOW_JOBS));
    assert_no_threads_of("s-tnow");
}

#[test]
fn shutdown_timeout_cancels_calls_still_queued_at_the_deadline() {
    let (orch, responses) = sleepy("s-tcall", 1, SLOW_JOB);
    let accepted: HashMap<_, _> = (0..4).map(|x| (orch.submit(x).unwrap(), x)).collect();
    let sub = orch.submitter();
    let caller = thread::spawn(move || sub.call(99));
    // Accepted: the four submits and the call (`queued` alone could count the four before
    // the worker took the first one).
    eventually("the call to be queued", || orch.metrics().submitted >= 5);
    let report = within(WAIT, "shutdown_timeout", move || {
        orch.shutdown_timeout(Duration::from_millis(10))
    });
    match within(WAIT, "the call", move || caller.join().unwrap()) {
        Err(CallError::Cancelled(99)) => assert_eq!(report.cancelled, 1),
        // The call may have been first in line and run before the deadline.
        Ok(99) => assert_eq!(report.cancelled, 0),
        other => panic!("{other:?}"),
    }
    assert_partition(&accepted, &drain_after_shutdown(&responses), &report);
    assert_totals(&report, 5);
}

#[test]
fn shutdown_timeout_extremes() {
    // Zero: nothing more starts. A duration too large to add to `Instant::now()`: graceful.
    let (orch, responses) = sleepy("s-tzero", 1, Duration::from_millis(5));
    let accepted: HashMap<_, _> = (0..20).map(|x| (orch.submit(x).unwrap(), x)).collect();
    let report = within(WAIT, "shutdown_timeout(0)", move || {
        orch.shutdown_timeout(Duration::ZERO)
    });
    assert!(report.unstarted.len() >= 15, "{report:?}");
    assert_partition(&accepted, &drain_after_shutdown(&responses), &report);

    let (orch, responses) = sleepy("s-tmax", 2, Duration::from_millis(1));
    let accepted: HashMap<_, _> = (0..20).map(|x| (orch.submit(x).unwrap(), x)).collect();
    let report = within(WAIT, "shutdown_timeout(MAX)", move || {
        orch.shutdown_timeout(Duration::MAX)
    });
    assert!(report.unstarted.is_empty());
    assert_eq!(report.completed, 20);
    assert_partition(&accepted, &drain_after_shutdown(&responses), &report);
}

#[test]
fn drop_is_a_graceful_shutdown() {
    let name = "s-drop";
    let (orch, responses) = sleepy(name, 2, Duration::from_micros(100));
    let sub = orch.submitter();
    let accepted: HashMap<_, _> = (0..REQUESTS)
        .map(|x| (orch.submit(x).unwrap(), x))
        .collect();
    within(WAIT, "drop", move || drop(orch));
    let answered = drain_after_shutdown(&responses);
    assert_eq!(
        answered.len(),
        accepted.len(),
        "drop did not run everything queued"
    );
    for r in &answered {
        assert_eq!(r.outcome, Ok(accepted[&r.id]));
    }
    distinct(answered.iter().map(|r| r.id));
    assert!(sub.submit(1).is_err());
    assert_no_threads_of(name);
}

#[test]
fn drop_waits_for_running_jobs() {
    let name = "s-dropw";
    let mut gate = Gate::new();
    let waiter = gate.waiter();
    let (orch, responses) = Orchestrator::builder()
        .workers(1)
        .thread_name(name)
        .build(move |x: u32| {
            waiter.pass(u64::from(x));
            x
        })
        .unwrap();
    orch.submit(1).unwrap();
    orch.submit(2).unwrap();
    gate.wait_started(1);
    let (tx, dropped) = bounded(1);
    thread::spawn(move || {
        drop(orch);
        tx.send(()).unwrap();
    });
    assert!(
        dropped.recv_timeout(STILL_BLOCKED).is_err(),
        "drop returned while a job was running"
    );
    gate.open();
    dropped.recv_timeout(WAIT).expect("drop never returned");
    assert_eq!(drain_after_shutdown(&responses).len(), 2);
    assert_no_threads_of(name);
}

#[test]
fn no_thread_outlives_any_kind_of_shutdown() {
    for (kind, name) in ["s-k0", "s-k1", "s-k2", "s-k3"].into_iter().enumerate() {
        for dist in DISTRIBUTIONS {
            let (orch, _responses) = Orchestrator::builder()
                .workers(3)
                .distribution(dist)
                .thread_name(name)
                .build(|x: u32| x)
                .unwrap();
            eventually("every thread to start", || threads_of(name).len() == 5);
            for x in 0..100 {
                orch.submit(x).unwrap();
            }
            within(WAIT, "shutdown", move || match kind {
                0 => drop(orch.shutdown()),
                1 => drop(orch.shutdown_now()),
                2 => drop(orch.shutdown_timeout(Duration::from_millis(1))),
                _ => drop(orch),
            });
            assert_no_threads_of(name);
        }
    }
}

#[test]
fn shutdown_while_producers_keep_submitting_loses_nothing() {
    quiet_panics();
    const PRODUCERS: u32 = 3;
    for kind in 0..3 {
        let (orch, responses) = Orchestrator::builder()
            .workers(2)
            .queue_capacity(4)
            .build(|x: u32| {
                assert!(!x.is_multiple_of(7), "intentional panic on {x}");
                x
            })
            .unwrap();
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let sub = orch.submitter();
                thread::spawn(move || {
                    let mut accepted = Vec::new();
                    for i in 0.. {
                        let x = p * 1_000_000 + i;
                        match sub.submit(x) {
                            Ok(id) => accepted.push((id, x)),
                            Err(e) => {
                                assert_eq!(e.into_inner(), x);
                                return accepted;
                            }
                        }
                    }
                    unreachable!()
                })
            })
            .collect();
        thread::sleep(Duration::from_millis(20));
        let report = within(WAIT, "shutdown", move || match kind {
            0 => orch.shutdown(),
            1 => orch.shutdown_now(),
            _ => orch.shutdown_timeout(Duration::from_millis(2)),
        });
        let accepted: HashMap<_, _> = producers
            .into_iter()
            .flat_map(|p| within(WAIT, "a producer", move || p.join().unwrap()))
            .collect();
        assert!(!accepted.is_empty());
        let answered = drain_after_shutdown(&responses);
        let mut seen = HashSet::new();
        let mut failed = 0;
        for r in &answered {
            assert!(seen.insert(r.id), "{} answered twice", r.id);
            let x = accepted[&r.id];
            match &r.outcome {
                Ok(v) => assert_eq!(*v, x),
                Err(_) => {
                    assert!(x.is_multiple_of(7));
                    failed += 1;
                }
            }
        }
        for (id, x) in &report.unstarted {
            assert_eq!(accepted.get(id), Some(x));
            assert!(seen.insert(*id), "{id} both answered and unstarted");
        }
        assert_eq!(seen.len(), accepted.len(), "kind {kind}: requests lost");
        assert_eq!(report.failed, failed);
        assert_totals(&report, accepted.len() as u64);
        if kind == 0 {
            assert!(report.unstarted.is_empty());
        }
    }
}

#[test]
fn a_handler_submitting_to_its_own_full_queue_with_no_worker_free_runs_it_inline() {
    use std::sync::{Arc, OnceLock};
    // The only worker's handler submits more work than the queue holds. Waiting for space
    // would wait for itself forever: the submit runs the request inline instead, and its
    // response arrives on the responses channel as usual.
    let slot: Arc<OnceLock<channel_orchestrator::Submitter<u32, u32>>> = Arc::new(OnceLock::new());
    let inner = Arc::clone(&slot);
    let (orch, responses) = Orchestrator::builder()
        .workers(1)
        .queue_capacity(1)
        .thread_name("s-self")
        .build(move |x: u32| {
            if x == 0 {
                let sub = inner.get().expect("submitter installed");
                sub.submit(1).unwrap(); // fills the queue
                sub.submit(2).unwrap(); // no room, no other worker: inline
            }
            x
        })
        .unwrap();
    slot.set(orch.submitter()).unwrap();
    let first = orch.submit(0).unwrap();
    let mut got: Vec<u32> = (0..3)
        .map(|_| {
            responses
                .recv_timeout(WAIT)
                .expect("an answer")
                .outcome
                .unwrap()
        })
        .collect();
    got.sort_unstable();
    assert_eq!(got, [0, 1, 2]);
    let report = within(WAIT, "shutdown", move || orch.shutdown());
    assert!(drain_after_shutdown(&responses).is_empty());
    assert_eq!(report.completed, 3);
    assert_eq!(report.submitted, 3);
    let _ = first;
    assert_no_threads_of("s-self");
}
