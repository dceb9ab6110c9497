//! Panics: a panicking handler becomes `JobError::Panicked` (on the responses channel or as
//! `CallError::Failed`), the worker keeps serving, other requests are unaffected, and
//! `init` rebuilds that worker's state.

mod common;

use std::collections::HashMap;
use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use channel_orchestrator::{CallError, JobError, Orchestrator, WorkerId};
use common::*;

/// Requests in the mixed tests; every `PANIC_EVERY`-th one panics.
const REQUESTS: u32 = 300;
const PANIC_EVERY: u32 = 3;
/// Workers and calling threads of the concurrent test.
const WORKERS: usize = 3;
const CALLERS: u32 = 4;

fn panics_on(x: u32) -> bool {
    x.is_multiple_of(PANIC_EVERY)
}

fn handler(x: u32) -> u32 {
    if panics_on(x) {
        panic!("intentional panic on {x}");
    }
    x + 1
}

#[test]
fn a_panicking_handler_becomes_an_error_response_and_the_worker_keeps_serving() {
    quiet_panics();
    // One worker: every request, before and after each panic, is served by the same one.
    let (orch, responses) = Orchestrator::builder()
        .workers(1)
        .thread_name("p-one")
        .build(handler)
        .unwrap();
    let ids: HashMap<_, _> = (0..REQUESTS)
        .map(|x| (orch.submit(x).unwrap(), x))
        .collect();
    for r in recv_n(&responses, REQUESTS as usize) {
        let x = ids[&r.id];
        assert_eq!(r.worker.index(), 0);
        if panics_on(x) {
            match &r.outcome {
                Err(e @ JobError::Panicked(msg)) => {
                    assert_eq!(msg, &format!("intentional panic on {x}"));
                    assert!(e.to_string().contains(msg.as_str()));
                    assert_message_style(e);
                    let _: &dyn Error = e;
                }
                other => panic!("request {x}: {other:?}"),
            }
        } else {
            assert_eq!(r.outcome, Ok(x + 1));
        }
    }
    let report = orch.shutdown();
    assert_eq!(report.failed, u64::from(REQUESTS.div_ceil(PANIC_EVERY)));
    assert_eq!(report.completed + report.failed, u64::from(REQUESTS));
    assert_no_threads_of("p-one");
}

#[test]
fn string_str_and_other_payloads_are_all_caught() {
    quiet_panics();
    let (orch, responses) = Orchestrator::builder()
        .workers(1)
        .build(|x: u32| match x {
            0 => panic!("intentional &str payload"),
            1 => panic!("intentional String payload {}", x),
            2 => std::panic::panic_any(IntentionalPayload),
            _ => x,
        })
        .unwrap();
    let ids: Vec<_> = (0..4).map(|x| orch.submit(x).unwrap()).collect();
    let mut by_id: HashMap<_, _> = recv_n(&responses, 4)
        .into_iter()
        .map(|r| (r.id, r.outcome))
        .collect();
    assert_eq!(
        by_id.remove(&ids[0]),
        Some(Err(JobError::Panicked("intentional &str payload".into())))
    );
    assert_eq!(
        by_id.remove(&ids[1]),
        Some(Err(JobError::Panicked(
            "intentional String payload 1".into()
        )))
    );
    assert!(matches!(
        by_id.remove(&ids[2]),
        Some(Err(JobError::Panicked(_)))
    ));
    assert_eq!(by_id.remove(&ids[3]), Some(Ok(3)));
}

#[test]
fn a_panicking_call_is_call_error_panicked() {
    quiet_panics();
    let (orch, responses) = Orchestrator::builder().workers(1).build(handler).unwrap();
    let sub = orch.submitter();
    for via in VIAS {
        let h: &dyn Handle<u32, u32> = match via {
            Via::Orchestrator => &orch,
            Via::Submitter => &sub,
        };
        let e = h.call(3).unwrap_err();
        match &e {
            CallError::Failed(JobError::Panicked(msg)) => {
                assert_eq!(msg, "intentional panic on 3");
            }
            other => panic!("{via:?}: {other:?}"),
        }
        assert!(e.to_string().contains("intentional panic on 3"));
        assert_message_style(&e);
        assert!(e.source().is_some(), "the JobError is the source");
        assert_eq!(e.into_inner(), None, "the handler consumed the request");
        // The same worker answers the next call.
        assert_eq!(h.call(4), Ok(5));
    }
    let report = orch.shutdown();
    assert_eq!((report.completed, report.failed), (2, 2));
    assert!(drain_after_shutdown(&responses).is_empty());
}

#[test]
fn panics_do_not_disturb_concurrent_requests() {
    quiet_panics();
    let (orch, responses) = Orchestrator::builder()
        .workers(WORKERS)
        .queue_capacity(8)
        .build(handler)
        .unwrap();
    let (panicked_calls, streamed) = thread::scope(|s| {
        let joins: Vec<_> = (0..CALLERS)
            .map(|c| {
                let orch = &orch;
                s.spawn(move || {
                    let mut panicked = 0u64;
                    let mut streamed = Vec::new();
                    for i in 0..REQUESTS / CALLERS {
                        let x = c * REQUESTS + i;
                        if i.is_multiple_of(2) {
                            match orch.call(x) {
                                Ok(v) => assert_eq!(v, x + 1),
                                Err(CallError::Failed(JobError::Panicked(m))) => {
                                    assert!(panics_on(x), "{x} panicked: {m}");
                                    assert!(m.contains(&format!("on {x}")), "{m}");
                                    panicked += 1;
                                }
                                Err(e) => panic!("{e:?}"),
                            }
                        } else {
                            streamed.push((orch.submit(x).unwrap(), x));
                        }
                    }
                    (panicked, streamed)
                })
            })
            .collect();
        let mut panicked = 0;
        let mut streamed = HashMap::new();
        for j in joins {
            let (p, s) = j.join().unwrap();
            panicked += p;
            streamed.extend(s);
        }
        (panicked, streamed)
    });
    let mut stream_failed = 0;
    for r in recv_n(&responses, streamed.len()) {
        let x = streamed[&r.id];
        if panics_on(x) {
            assert!(matches!(r.outcome, Err(JobError::Panicked(_))), "{x}");
            stream_failed += 1;
        } else {
            assert_eq!(r.outcome, Ok(x + 1));
        }
    }
    let report = orch.shutdown();
    assert_eq!(report.failed, panicked_calls + stream_failed);
    assert_eq!(report.completed + report.failed, u64::from(REQUESTS));
}

#[test]
fn init_rebuilds_the_state_after_a_panic() {
    quiet_panics();
    let inits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&inits);
    // The state counts the requests since the last init.
    let (orch, responses) = Orchestrator::builder()
        .workers(1)
        .build_with_state(
            move |_| {
                counter.fetch_add(1, Ordering::SeqCst);
                0u32
            },
            |seen: &mut u32, panic: bool| {
                *seen += 1;
                if panic {
                    panic!("intentional, after {seen}");
                }
                *seen
            },
        )
        .unwrap();
    assert_eq!(inits.load(Ordering::SeqCst), 1);
    let plan = [false, false, true, false, false, false, true, true, false];
    let ids: Vec<_> = plan.iter().map(|p| orch.submit(*p).unwrap()).collect();
    let got: HashMap<_, _> = recv_n(&responses, plan.len())
        .into_iter()
        .map(|r| (r.id, r.outcome))
        .collect();
    let outcomes: Vec<_> = ids.iter().map(|id| got[id].clone().ok()).collect();
    assert_eq!(
        outcomes,
        [
            Some(1),
            Some(2),
            None,
            Some(1),
            Some(2),
            Some(3),
            None,
            None,
            Some(1)
        ],
        "the state was not fresh after a panic"
    );
    let report = orch.shutdown();
    assert_eq!(report.failed, 3);
    assert_eq!(
        inits.load(Ordering::SeqCst),
        1 + 3,
        "init runs once more per panic"
    );
}

#[test]
fn init_reruns_on_the_worker_that_panicked() {
    quiet_panics();
    const POOL: usize = 3;
    let inits: Arc<Vec<AtomicUsize>> = Arc::new((0..POOL).map(|_| AtomicUsize::new(0)).collect());
    let counter = Arc::clone(&inits);
    let (orch, responses) = Orchestrator::builder()
        .workers(POOL)
        .thread_name("p-rerun")
        .build_with_state(
            move |w: WorkerId| {
                // It runs on that worker's own thread.
                assert_eq!(
                    thread::current().name(),
                    Some(&*format!("p-rerun-worker-{}", w.index()))
                );
                counter[w.index()].fetch_add(1, Ordering::SeqCst);
                w
            },
            |me: &mut WorkerId, x: u32| {
                if panics_on(x) {
                    panic!("intentional panic on {x}");
                }
                *me
            },
        )
        .unwrap();
    let ids: HashMap<_, _> = (0..REQUESTS)
        .map(|x| (orch.submit(x).unwrap(), x))
        .collect();
    let mut panics_per_worker = [0usize; POOL];
    for r in recv_n(&responses, ids.len()) {
        match r.outcome {
            Ok(me) => assert_eq!(me, r.worker, "a worker got another worker's state"),
            Err(_) => {
                assert!(panics_on(ids[&r.id]));
                panics_per_worker[r.worker.index()] += 1;
            }
        }
    }
    let report = orch.shutdown();
    for (w, panics) in panics_per_worker.iter().enumerate() {
        assert_eq!(
            inits[w].load(Ordering::SeqCst),
            1 + panics,
            "worker {w}: init calls"
        );
    }
    assert_eq!(
        report.failed as usize,
        panics_per_worker.iter().sum::<usize>()
    );
}

#[test]
fn a_worker_whose_init_panics_on_rebuild_is_replaced() {
    quiet_panics();
    // The second init of the only worker panics: its thread cannot go on, and the pool must
    // still serve the requests behind the panicking one.
    let inits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&inits);
    let (orch, responses) = Orchestrator::builder()
        .workers(1)
        .build_with_state(
            move |_| {
                if counter.fetch_add(1, Ordering::SeqCst) == 1 {
                    panic!("intentional init panic on rebuild");
                }
            },
            |_: &mut (), x: u32| {
                if x == 0 {
                    panic!("intentional panic on 0");
                }
                x
            },
        )
        .unwrap();
    let ids: Vec<_> = (0..10).map(|x| orch.submit(x).unwrap()).collect();
    let got: HashMap<_, _> = recv_n(&responses, ids.len())
        .into_iter()
        .map(|r| (r.id, r.outcome))
        .collect();
    assert!(matches!(got[&ids[0]], Err(JobError::Panicked(_))));
    for (x, id) in ids.iter().enumerate().skip(1) {
        assert_eq!(got[id], Ok(x as u32));
    }
    assert_eq!(orch.call(11), Ok(11));
    let report = within(WAIT, "shutdown", move || orch.shutdown());
    assert_eq!((report.completed, report.failed), (10, 1));
    assert!(inits.load(Ordering::SeqCst) >= 3, "no replacement ran init");
}

/// A response whose drop panics (outside any handler).
struct Bomb(#[allow(dead_code)] u32);

impl Drop for Bomb {
    fn drop(&mut self) {
        if !thread::panicking() {
            panic!("intentional panic dropping a response");
        }
    }
}

#[test]
fn an_undeliverable_response_whose_drop_panics_is_still_counted() {
    quiet_panics();
    const SENT: u32 = 3;
    let (orch, responses) = Orchestrator::builder()
        .workers(1)
        .thread_name("p-bomb")
        .build(Bomb)
        .unwrap();
    drop(responses);
    for x in 0..SENT {
        orch.submit(x).unwrap();
    }
    // The pool survives (a replacement takes over) ...
    let report = within(WAIT, "shutdown", move || orch.shutdown());
    assert_eq!(report.completed, u64::from(SENT));
    // ... and each accepted request is in exactly one place: here, `undelivered`.
    assert_eq!(
        report.undelivered,
        u64::from(SENT),
        "responses dropped for want of a receiver were not counted undelivered"
    );
    assert_no_threads_of("p-bomb");
}
