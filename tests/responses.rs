//! Responses: one per accepted stream request with its id and worker, never one for a
//! `call`; a dropped receiver never blocks a worker; a bounded response channel is
//! back-pressure, also during shutdown; the channel disconnects after the last response.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use channel_orchestrator::{Distribution, JobError, Orchestrator, RequestId};
use common::*;

/// Stream requests per test.
const REQUESTS: u32 = 400;
/// Producer threads in the concurrent test.
const PRODUCERS: u32 = 4;
/// The bounded response channel of the back-pressure tests.
const RESPONSE_CAPACITY: usize = 2;
/// How long a stalled pipeline must stay stalled before we believe it.
const SETTLE: Duration = Duration::from_millis(100);
/// The `shutdown_timeout` of the stuck-channel test, and the slack allowed past it.
const GIVE_UP: Duration = Duration::from_millis(200);
const SLACK: Duration = Duration::from_secs(1);

#[test]
fn every_accepted_request_gets_exactly_one_response_with_its_id() {
    for dist in [Distribution::Shared, Distribution::RoundRobin] {
        let (orch, responses) = Orchestrator::builder()
            .workers(3)
            .queue_capacity(16)
            .distribution(dist)
            .build(|x: u32| u64::from(x) * 3)
            .unwrap();
        let sent: HashMap<RequestId, u32> = thread::scope(|s| {
            let joins: Vec<_> = (0..PRODUCERS)
                .map(|p| {
                    let orch = &orch;
                    s.spawn(move || {
                        (0..REQUESTS / PRODUCERS)
                            .map(|i| {
                                let x = p * 1_000_000 + i;
                                (orch.submit(x).unwrap(), x)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            joins.into_iter().flat_map(|j| j.join().unwrap()).collect()
        });
        assert_eq!(sent.len(), REQUESTS as usize, "duplicate ids");
        let mut left = sent.clone();
        for r in recv_n(&responses, sent.len()) {
            let x = left
                .remove(&r.id)
                .unwrap_or_else(|| panic!("response for unknown or repeated id {}", r.id));
            assert_eq!(r.outcome, Ok(u64::from(x) * 3));
            assert!(r.worker.index() < 3, "worker {} out of range", r.worker);
            assert_eq!(r.worker.to_string(), r.worker.index().to_string());
            assert_eq!(r.into_result(), Ok(u64::from(x) * 3));
        }
        let report = orch.shutdown();
        assert!(
            drain_after_shutdown(&responses).is_empty(),
            "extra responses"
        );
        assert_eq!(report.completed, u64::from(REQUESTS));
        assert_eq!(report.undelivered, 0);
    }
}

#[test]
fn call_answers_never_appear_on_the_responses_channel() {
    let (orch, responses) = Orchestrator::builder()
        .workers(2)
        .build(|x: u32| x + 1)
        .unwrap();
    let sub = orch.submitter();
    let mut streamed = HashMap::new();
    for x in 0..REQUESTS {
        if x.is_multiple_of(2) {
            assert_eq!(sub.call(x), Ok(x + 1));
        } else {
            streamed.insert(orch.submit(x).unwrap(), x);
        }
    }
    let report = orch.shutdown();
    let got = drain_after_shutdown(&responses);
    assert_eq!(
        got.len(),
        streamed.len(),
        "calls leaked onto the responses channel"
    );
    for r in got {
        assert_eq!(r.outcome, Ok(streamed[&r.id] + 1));
    }
    // Totals count the calls too.
    assert_eq!(report.completed, u64::from(REQUESTS));
}

#[test]
fn a_dropped_receiver_never_blocks_workers_and_counts_undelivered() {
    quiet_panics();
    for capacity in [None, Some(0), Some(1)] {
        let mut b = Orchestrator::builder().workers(2).queue_capacity(8);
        if let Some(c) = capacity {
            b = b.response_capacity(c);
        }
        let (orch, responses) = b
            .build(|x: u32| {
                if x.is_multiple_of(10) {
                    panic!("intentional panic on {x}");
                }
                x
            })
            .unwrap();
        drop(responses);
        let sub = orch.submitter();
        // More than the queue holds: the workers must keep taking requests.
        for x in 1..=REQUESTS {
            orch.submit(x).unwrap();
        }
        // Calls still get their answers.
        assert_eq!(sub.call(7), Ok(7));
        let report = within(WAIT, "shutdown", move || orch.shutdown());
        assert_eq!(report.completed + report.failed, u64::from(REQUESTS) + 1);
        assert_eq!(report.failed, u64::from(REQUESTS / 10));
        assert_eq!(
            report.undelivered,
            u64::from(REQUESTS),
            "capacity {capacity:?}: every stream response, panicked or not, is undelivered; \
             the call is not"
        );
        assert!(report.unstarted.is_empty());
    }
}

#[test]
fn a_receiver_dropped_midway_splits_responses_into_received_and_undelivered() {
    for capacity in [0, 4] {
        let (orch, responses) = Orchestrator::builder()
            .workers(2)
            .response_capacity(capacity)
            .build(|x: u32| x)
            .unwrap();
        let reader = thread::spawn(move || {
            let got = recv_n(&responses, 50);
            drop(responses);
            got.len() as u64
        });
        for x in 0..REQUESTS {
            orch.submit(x).unwrap();
        }
        let received = reader.join().unwrap();
        let report = within(WAIT, "shutdown", move || orch.shutdown());
        assert_eq!(report.completed, u64::from(REQUESTS));
        // Responses sitting in the channel's buffer when the receiver went were delivered
        // to the channel and dropped with it: at most `capacity` of them.
        let accounted = received + report.undelivered;
        assert!(
            accounted <= u64::from(REQUESTS) && accounted + capacity as u64 >= u64::from(REQUESTS),
            "capacity {capacity}: {received} received + {} undelivered of {REQUESTS}",
            report.undelivered
        );
    }
}

/// A pool with a bounded response channel whose handler counts the jobs it ran.
fn counting(
    workers: usize,
    capacity: usize,
) -> (
    Orchestrator<u32, u32>,
    channel_orchestrator::crossbeam_channel::Receiver<channel_orchestrator::Response<u32>>,
    Arc<AtomicUsize>,
) {
    let ran = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&ran);
    let (orch, responses) = Orchestrator::builder()
        .workers(workers)
        .queue_capacity(64)
        .response_capacity(capacity)
        .build(move |x: u32| {
            counter.fetch_add(1, Ordering::SeqCst);
            x
        })
        .unwrap();
    (orch, responses, ran)
}

#[test]
fn a_bounded_response_channel_is_back_pressure() {
    for (workers, capacity) in [(1, RESPONSE_CAPACITY), (2, RESPONSE_CAPACITY), (2, 0)] {
        let (orch, responses, ran) = counting(workers, capacity);
        for x in 0..20 {
            orch.submit(x).unwrap();
        }
        // Nobody reads: the channel fills, then each worker holds one finished response.
        let stall = workers + capacity;
        eventually("the pipeline to fill", || {
            ran.load(Ordering::SeqCst) >= stall
        });
        thread::sleep(SETTLE);
        assert_eq!(
            ran.load(Ordering::SeqCst),
            stall,
            "{workers} workers, capacity {capacity}: workers ran ahead of a full response channel"
        );
        assert_eq!(responses.len(), capacity);
        // Reading frees the workers.
        let got = recv_n(&responses, 20);
        assert_eq!(distinct(got.iter().map(|r| r.id)).len(), 20);
        let report = orch.shutdown();
        assert_eq!((report.completed, report.undelivered), (20, 0));
        assert!(drain_after_shutdown(&responses).is_empty());
    }
}

#[test]
fn shutdown_waits_for_a_slow_reader_of_a_full_response_channel() {
    let (orch, responses, _ran) = counting(2, 1);
    for x in 0..40 {
        orch.submit(x).unwrap();
    }
    let reader = thread::spawn(move || {
        thread::sleep(SETTLE); // the channel is full when the shutdown starts
        let mut got = Vec::new();
        loop {
            match responses.recv_timeout(WAIT) {
                Ok(r) => got.push(r.id),
                Err(e) => {
                    assert!(
                        e.is_disconnected(),
                        "responses neither came nor disconnected"
                    );
                    return got;
                }
            }
            thread::sleep(Duration::from_millis(2));
        }
    });
    let report = within(WAIT, "shutdown with a slow reader", move || orch.shutdown());
    assert_eq!(report.completed, 40);
    assert_eq!(report.undelivered, 0, "a slow reader is not a dead one");
    assert!(report.unstarted.is_empty());
    let got = reader.join().unwrap();
    assert_eq!(distinct(got).len(), 40);
}

#[test]
fn shutdown_timeout_gives_up_on_a_full_response_channel_nobody_reads() {
    const WORKERS: usize = 2;
    const CAPACITY: usize = 1;
    const SENT: u32 = 10;
    let (orch, responses, ran) = counting(WORKERS, CAPACITY);
    let ids: Vec<_> = (0..SENT).map(|x| orch.submit(x).unwrap()).collect();
    let stall = WORKERS + CAPACITY;
    eventually("the pipeline to fill", || {
        ran.load(Ordering::SeqCst) >= stall
    });
    thread::sleep(SETTLE);
    let started = Instant::now();
    let report = within(WAIT, "shutdown_timeout", move || {
        orch.shutdown_timeout(GIVE_UP)
    });
    let took = started.elapsed();
    assert!(
        took >= GIVE_UP,
        "returned after {took:?}, before its timeout"
    );
    assert!(took < GIVE_UP + SLACK, "returned only after {took:?}");
    // Exactly the stalled state: one response in the channel, one held by each worker
    // (dropped and counted), the rest never started.
    assert_eq!(report.completed, stall as u64);
    assert_eq!(report.undelivered, WORKERS as u64);
    assert_eq!(report.unstarted.len(), SENT as usize - stall);
    let left = drain_after_shutdown(&responses);
    assert_eq!(left.len(), CAPACITY);
    // Every id is in exactly one place (or one of the `undelivered`).
    let mut places = distinct(left.iter().map(|r| r.id));
    for (id, x) in &report.unstarted {
        assert_eq!(
            ids[*x as usize], *id,
            "unstarted request paired with the wrong id"
        );
        assert!(places.insert(*id), "{id} both answered and unstarted");
    }
    assert_eq!(places.len() as u64 + report.undelivered, u64::from(SENT));
}

#[test]
fn after_any_shutdown_the_channel_holds_the_rest_then_disconnects() {
    for kind in 0..4 {
        let (orch, responses) = Orchestrator::builder()
            .workers(1)
            .build(|x: u32| {
                thread::sleep(Duration::from_micros(100));
                x
            })
            .unwrap();
        let ids: Vec<_> = (0..50).map(|x| orch.submit(x).unwrap()).collect();
        let unstarted = match kind {
            0 => orch.shutdown().unstarted,
            1 => orch.shutdown_now().unstarted,
            2 => orch.shutdown_timeout(Duration::from_millis(1)).unstarted,
            _ => {
                drop(orch);
                Vec::new()
            }
        };
        let left = drain_after_shutdown(&responses);
        let mut seen = distinct(left.iter().map(|r| r.id));
        for (id, _) in &unstarted {
            assert!(seen.insert(*id), "{id} both answered and unstarted");
        }
        assert_eq!(seen.len(), ids.len(), "shutdown kind {kind}: requests lost");
        if kind == 0 || kind == 3 {
            assert_eq!(
                left.len(),
                ids.len(),
                "a graceful shutdown answers everything"
            );
        }
    }
}

#[test]
fn panicked_outcomes_travel_on_the_responses_channel() {
    quiet_panics();
    let (orch, responses) = Orchestrator::builder()
        .workers(1)
        .build(|x: u32| {
            assert!(x != 3, "intentional: three");
            x
        })
        .unwrap();
    let ids: Vec<_> = (0..5).map(|x| orch.submit(x).unwrap()).collect();
    for r in recv_n(&responses, 5) {
        let x = ids.iter().position(|id| *id == r.id).unwrap() as u32;
        match (x, r.outcome) {
            (3, Err(JobError::Panicked(msg))) => assert!(msg.contains("intentional: three")),
            (x, Ok(v)) => assert_eq!(v, x),
            (x, other) => panic!("request {x}: {other:?}"),
        }
    }
}

#[test]
fn shutdown_now_waits_for_response_space() {
    // "A shutdown waits while the response channel is full and its receiver is alive ...;
    // shutdown_timeout bounds that wait." Running jobs finish, and their responses are
    // delivered to a live reader.
    const SENT: u32 = 5;
    let (orch, responses, ran) = counting(1, 1);
    for x in 0..SENT {
        orch.submit(x).unwrap();
    }
    // One response in the channel, one held by the worker, the rest queued.
    eventually("the pipeline to fill", || ran.load(Ordering::SeqCst) >= 2);
    thread::sleep(SETTLE);
    let reader = thread::spawn(move || {
        thread::sleep(SETTLE); // starts reading after the shutdown began
        recv_until_disconnected(&responses).len() as u64
    });
    let report = within(WAIT, "shutdown_now", move || orch.shutdown_now());
    let received = reader.join().unwrap();
    assert_eq!(report.completed, 2);
    assert_eq!(report.unstarted.len() as u32, SENT - 2);
    assert_eq!(
        (received, report.undelivered),
        (2, 0),
        "a live reader lost a response to shutdown_now"
    );
}
