//! Scoped pools: handlers, states and requests that borrow from the caller's stack, with the
//! promises of a built pool — back-pressure, contained panics, metrics, lossless shutdown —
//! and no thread outliving the call, whatever the body does.

mod common;

use std::collections::HashSet;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use channel_orchestrator::{
    BuildErrorKind, CallError, Distribution, JobError, MetricsEvent, Orchestrator, Priority,
    TrySubmitError,
};
use common::{Gate, MARKER, assert_no_threads_of, quiet_panics};

#[test]
fn handlers_and_requests_borrow_and_results_may_borrow_too() {
    let text = String::from("alpha beta\ngamma\ndelta epsilon zeta");
    let lines: Vec<&str> = text.lines().collect();
    let min_len = 5; // borrowed by the handler
    let ((firsts, long), report) = Orchestrator::builder()
        .workers(3)
        .thread_name("sc-borrow")
        .scoped(
            |line: &str| {
                let first = line.split_whitespace().next().unwrap_or("");
                (
                    first,
                    line.split_whitespace()
                        .filter(|w| w.len() >= min_len)
                        .count(),
                )
            },
            |pool, _responses| {
                let firsts: Vec<&str> = pool
                    .process_ordered(lines.iter().copied())
                    .map(|r| r.outcome.unwrap().0)
                    .collect();
                let long: usize = pool
                    .process(text.lines())
                    .map(|r| r.outcome.unwrap().1)
                    .sum();
                (firsts, long)
            },
        )
        .unwrap();
    // The results borrow `text`, and outlive the pool.
    assert_eq!(firsts, ["alpha", "gamma", "delta"]);
    assert_eq!(long, 4); // alpha, gamma, delta, epsilon
    assert_eq!(report.completed, 6);
    assert!(report.unstarted.is_empty());
    assert_no_threads_of("sc-borrow");
}

#[test]
fn per_worker_state_may_borrow() {
    let prefix = String::from(">> ");
    let inits = AtomicUsize::new(0);
    let (out, report) = Orchestrator::builder()
        .workers(2)
        .scoped_with_state(
            |_worker| {
                inits.fetch_add(1, Ordering::SeqCst);
                prefix.as_str()
            },
            |p: &mut &str, n: u32| format!("{p}{n}"),
            |pool, _responses| pool.call(7).unwrap(),
        )
        .unwrap();
    assert_eq!(out, ">> 7");
    assert_eq!(report.completed, 1);
    assert_eq!(inits.load(Ordering::SeqCst), 2);
}

#[test]
fn an_early_return_with_work_queued_runs_it_all_and_hands_the_responses_over() {
    let data: Vec<u64> = (0..200).collect();
    let (responses, report) = Orchestrator::builder()
        .workers(2)
        .queue_capacity(256)
        .thread_name("sc-early")
        .scoped(
            |x: &u64| {
                thread::sleep(Duration::from_micros(200));
                *x * 2
            },
            |pool, responses| {
                for x in &data {
                    pool.submit(x).unwrap();
                }
                responses // returned at once, with nearly everything still queued
            },
        )
        .unwrap();
    assert_eq!(report.completed, 200);
    assert!(report.unstarted.is_empty());
    let got: HashSet<u64> = responses.iter().map(|r| r.outcome.unwrap()).collect();
    assert_eq!(got, data.iter().map(|x| x * 2).collect());
    assert_no_threads_of("sc-early");
}

#[test]
fn a_panicking_handler_is_contained() {
    quiet_panics();
    let words = ["ok", "boom", "fine"];
    let (answers, report) = Orchestrator::builder()
        .workers(1)
        .scoped(
            |w: &str| {
                assert!(w != "boom", "{MARKER}: boom");
                w.len()
            },
            |pool, _responses| words.iter().map(|w| pool.call(w)).collect::<Vec<_>>(),
        )
        .unwrap();
    assert_eq!(answers[0], Ok(2));
    assert!(
        matches!(&answers[1], Err(CallError::Failed(JobError::Panicked(m))) if m.contains("boom"))
    );
    assert_eq!(answers[2], Ok(4));
    assert_eq!((report.completed, report.failed), (2, 1));
}

#[test]
fn a_panicking_body_stops_and_joins_every_thread_before_the_panic_goes_on() {
    quiet_panics();
    let ran = AtomicUsize::new(0);
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        Orchestrator::builder()
            .workers(2)
            .thread_name("sc-panic")
            .scoped(
                |_: u32| {
                    ran.fetch_add(1, Ordering::SeqCst);
                    thread::sleep(Duration::from_millis(2));
                },
                |pool, _responses| {
                    for x in 0..50 {
                        pool.submit(x).unwrap();
                    }
                    panic!("{MARKER}: the body fails");
                },
            )
    }));
    let payload = result.expect_err("the body's panic propagates");
    let message = payload
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(message.contains("the body fails"), "{message}");
    assert!(
        ran.load(Ordering::SeqCst) < 50,
        "shutdown_now: queued requests do not run"
    );
    assert_no_threads_of("sc-panic");
}

#[test]
fn back_pressure_and_refusals_hand_the_borrowed_request_back() {
    let mut gate = Gate::new();
    let waiter = gate.waiter();
    let names = [String::from("a"), String::from("b"), String::from("c")];
    let ((), report) = Orchestrator::builder()
        .workers(1)
        .queue_capacity(1)
        .scoped(
            |s: &String| {
                waiter.pass(0);
                s.len()
            },
            |pool, _responses| {
                pool.submit(&names[0]).unwrap();
                gate.wait_started(1);
                pool.submit(&names[1]).unwrap(); // fills the queue
                match pool.try_submit(&names[2]) {
                    Err(TrySubmitError::Full(back)) => assert!(std::ptr::eq(back, &names[2])),
                    other => panic!("expected Full, got {other:?}"),
                }
                // Each priority has its own room.
                pool.try_submit_with_priority(&names[2], Priority::High)
                    .unwrap();
                gate.open();
            },
        )
        .unwrap();
    assert_eq!(report.completed, 3);
    assert_eq!(report.rejected, 1);
}

#[test]
fn every_request_ends_in_exactly_one_place_from_many_scoped_producers() {
    let inputs: Vec<u64> = (0..2_000).collect();
    let (calls, report) = Orchestrator::builder()
        .workers(3)
        .queue_capacity(16)
        .scoped(
            |x: &u64| *x + 1,
            |pool, responses| {
                thread::scope(|s| {
                    let producers: Vec<_> = inputs
                        .chunks(500)
                        .enumerate()
                        .map(|(i, chunk)| {
                            s.spawn(move || {
                                let mut calls = 0;
                                for x in chunk {
                                    if i % 2 == 0 {
                                        pool.submit(x).unwrap();
                                    } else {
                                        assert_eq!(pool.call(x), Ok(x + 1));
                                        calls += 1;
                                    }
                                }
                                calls
                            })
                        })
                        .collect();
                    let streamed: HashSet<u64> = responses
                        .iter()
                        .take(1_000)
                        .map(|r| r.outcome.unwrap())
                        .collect();
                    assert_eq!(streamed.len(), 1_000);
                    producers
                        .into_iter()
                        .map(|p| p.join().unwrap())
                        .sum::<u64>()
                })
            },
        )
        .unwrap();
    assert_eq!(calls, 1_000);
    assert_eq!(report.submitted, 2_000);
    assert_eq!(report.completed, 2_000);
    assert!(report.unstarted.is_empty());
}

#[test]
fn metrics_and_subscriptions_work_and_end_with_the_exact_summary() {
    let words = vec!["x"; 100];
    let (events, report) = Orchestrator::builder()
        .workers(2)
        .metrics_interval(Duration::from_millis(5))
        .scoped(
            |w: &str| w.len(),
            |pool, _responses| {
                let events = pool.subscribe();
                let total: usize = pool
                    .process(words.iter().copied())
                    .map(|r| r.outcome.unwrap())
                    .sum();
                assert_eq!(total, 100);
                common::eventually("counted", || pool.metrics().completed == 100);
                events
            },
        )
        .unwrap();
    let last = events.iter().last().expect("events");
    match last {
        MetricsEvent::Shutdown(summary) => common::assert_summary_is_report(&summary, &report),
        other => panic!("last event {other:?}"),
    }
}

#[test]
fn build_errors_come_back_without_running_the_body() {
    let ran = AtomicUsize::new(0);
    let err = Orchestrator::builder()
        .workers(0)
        .scoped(
            |x: &u8| *x,
            |_pool, _responses| ran.fetch_add(1, Ordering::SeqCst),
        )
        .unwrap_err();
    assert_eq!(err.kind(), BuildErrorKind::ZeroWorkers);
    let err = Orchestrator::builder()
        .distribution(Distribution::by_key(|x: &u8| *x))
        .scoped(
            |x: u8| x,
            |_pool, _responses| ran.fetch_add(1, Ordering::SeqCst),
        )
        .unwrap_err();
    assert_eq!(err.kind(), BuildErrorKind::ScopedByKey);
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}
