//! Concurrency limits inside one pool: at most `k` at once, waiting requests hold no worker,
//! back-pressure, every shutdown, metrics, re-entrancy and panics.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use channel_orchestrator::{
    CallError, Distribution, Limited, Orchestrator, Priority, SubmitError, TrySubmitError,
};
use common::{Gate, MARKER, PROMPT, WAIT, drain_after_shutdown, quiet_panics, recv_n, within};

/// Counts requests running at once; remembers the most.
#[derive(Clone, Default)]
struct Concurrency {
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

impl Concurrency {
    fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(n, Ordering::SeqCst);
        let out = f();
        self.now.fetch_sub(1, Ordering::SeqCst);
        out
    }

    fn most(&self) -> usize {
        self.most.load(Ordering::SeqCst)
    }
}

#[test]
fn a_limit_is_never_exceeded_and_is_used_in_full() {
    for dist in [Distribution::Shared, Distribution::RoundRobin] {
        let limited_c = Concurrency::default();
        let c = limited_c.clone();
        let (orch, responses) = Orchestrator::builder()
            .workers(6)
            .distribution(dist)
            .build(move |limited: bool| {
                if limited {
                    c.run(|| thread::sleep(Duration::from_micros(300)));
                }
                limited
            })
            .unwrap();
        let db = orch.limited(2);
        let other = db.clone(); // clones share the limit
        let producers: Vec<_> = [db, other]
            .into_iter()
            .map(|l| thread::spawn(move || (0..150).for_each(|_| _ = l.submit(true).unwrap())))
            .collect();
        for _ in 0..300 {
            orch.submit(false).unwrap();
        }
        producers.into_iter().for_each(|p| p.join().unwrap());
        assert_eq!(recv_n(&responses, 600).len(), 600);
        let report = orch.shutdown();
        assert_eq!(report.completed, 600);
        assert!(
            limited_c.most() <= 2,
            "{dist:?}: {} at once",
            limited_c.most()
        );
        assert_eq!(limited_c.most(), 2, "{dist:?}: the limit is used in full");
    }
}

#[test]
fn a_request_waiting_for_its_limit_holds_no_worker() {
    let mut gate = Gate::new();
    let waiter = gate.waiter();
    let (orch, _responses) = Orchestrator::builder()
        .workers(2)
        .build(move |x: u32| {
            if x >= 100 {
                waiter.pass(x as u64);
            }
            x
        })
        .unwrap();
    let limited = orch.limited(1);
    limited.submit(100).unwrap();
    gate.wait_started(1);
    for x in 101..110 {
        limited.submit(x).unwrap(); // all wait for the one permit
    }
    let m = limited.metrics();
    assert_eq!((m.limit, m.in_flight, m.queued), (1, 1, 9));
    assert!(orch.metrics().queued >= 9);
    // One worker is held by the running limited request; the other is free for everyone
    // else, although nine limited requests wait.
    let sub = orch.submitter();
    assert_eq!(within(PROMPT, "a plain call", move || sub.call(7)), Ok(7));
    gate.open();
    let report = within(WAIT, "shutdown runs what waits at the limit", move || {
        orch.shutdown()
    });
    assert_eq!(report.completed, 11);
    assert!(report.unstarted.is_empty());
}

#[test]
fn try_submit_on_a_full_limit_is_full_and_blocking_submits_wait() {
    let mut gate = Gate::new();
    let waiter = gate.waiter();
    let (orch, responses) = Orchestrator::builder()
        .workers(3)
        .build(move |x: u32| {
            waiter.pass(x as u64);
            x
        })
        .unwrap();
    let limited = orch.limited_with_capacity(1, 2);
    limited.try_submit(1).unwrap();
    gate.wait_started(1);
    limited.try_submit(2).unwrap();
    limited.try_submit(3).unwrap();
    assert!(matches!(
        limited.try_submit(4),
        Err(TrySubmitError::Full(4))
    ));
    assert!(
        limited
            .submit_timeout(4, Duration::from_millis(20))
            .is_err()
    );
    // Other handles are not slowed by the full limit.
    orch.try_submit(50).unwrap();
    let blocked = {
        let l = limited.clone();
        thread::spawn(move || l.submit(5))
    };
    thread::sleep(Duration::from_millis(20));
    assert!(
        !blocked.is_finished(),
        "a blocking submit waits for room at the limit"
    );
    gate.open();
    assert!(within(WAIT, "blocked submit", move || blocked.join().unwrap()).is_ok());
    let mut got: Vec<u32> = recv_n(&responses, 5)
        .into_iter()
        .map(|r| r.outcome.unwrap())
        .collect();
    got.sort();
    assert_eq!(got, [1, 2, 3, 5, 50]);
    let report = orch.shutdown();
    assert_eq!(report.rejected, 2);
}

#[test]
fn shutdown_now_hands_back_what_waits_at_a_limit_and_cancels_its_calls() {
    let mut gate = Gate::new();
    let waiter = gate.waiter();
    let (orch, responses) = Orchestrator::builder()
        .workers(2)
        .build(move |x: u32| {
            waiter.pass(x as u64);
            x
        })
        .unwrap();
    let limited = orch.limited(1);
    let mut ids = Vec::new();
    ids.push(limited.submit(1).unwrap());
    gate.wait_started(1);
    for x in 2..=6 {
        ids.push(limited.submit_with_priority(x, Priority::High).unwrap());
    }
    let caller = {
        let l = limited.clone();
        thread::spawn(move || l.call(7))
    };
    common::eventually("the call waits at the limit", || {
        limited.metrics().queued == 6
    });
    let sub = orch.submitter();
    let stopping = thread::spawn(move || orch.shutdown_now());
    common::eventually("intake closed", || sub.resize(1).is_err());
    assert!(matches!(limited.submit(8), Err(SubmitError::ShutDown(8))));
    gate.open();
    let report = within(WAIT, "shutdown_now", move || stopping.join().unwrap());
    assert_eq!(
        within(WAIT, "cancelled call", move || caller.join().unwrap()),
        Err(CallError::Cancelled(7))
    );
    let back: Vec<u32> = report.unstarted.iter().map(|(_, x)| *x).collect();
    assert_eq!(back.len(), 5, "{back:?}");
    assert_eq!(drain_after_shutdown(&responses).len(), 1);
    assert_eq!(report.completed, 1);
    assert_eq!(report.cancelled, 1);
    assert_eq!(limited.metrics().in_flight, 0);
}

#[test]
fn a_handler_calling_its_own_limit_does_not_wait_for_itself() {
    let cell: Arc<std::sync::OnceLock<Limited<u32, u32>>> = Arc::default();
    let c = cell.clone();
    let (orch, _responses) = Orchestrator::builder()
        .workers(2)
        .build(move |x: u32| {
            if x > 0 {
                let limited = c.get().expect("set before the first submit");
                limited.call(x - 1).unwrap() + 1
            } else {
                0
            }
        })
        .unwrap();
    let limited = orch.limited(1);
    assert!(cell.set(limited.clone()).is_ok());
    assert_eq!(
        within(WAIT, "nested limited calls", move || limited.call(5)),
        Ok(5)
    );
    drop(cell);
    within(WAIT, "shutdown", move || orch.shutdown());
}

#[test]
fn a_panicking_limited_request_gives_its_permit_back() {
    quiet_panics();
    let (orch, responses) = Orchestrator::builder()
        .workers(2)
        .build(|x: u32| {
            assert!(x.is_multiple_of(2), "{MARKER}: odd");
            x
        })
        .unwrap();
    let limited = orch.limited(1);
    for x in 0..20 {
        limited.submit(x).unwrap();
    }
    let got = recv_n(&responses, 20);
    assert_eq!(got.iter().filter(|r| r.outcome.is_err()).count(), 10);
    assert_eq!(limited.call(4), Ok(4));
    // The answer goes out just before the worker gives the permit back.
    common::eventually("the permit is back", || limited.metrics().in_flight == 0);
    let report = orch.shutdown();
    assert_eq!((report.completed, report.failed), (11, 10));
}

#[test]
fn limits_are_independent_and_work_with_per_key_queues() {
    let (orch, responses) = Orchestrator::builder()
        .workers(3)
        .distribution(Distribution::by_key(|r: &(u32, u32)| r.0))
        .build(|r: (u32, u32)| r)
        .unwrap();
    let a = orch.limited(1);
    let b = orch.limited(2);
    for seq in 0..200 {
        a.submit((1, seq)).unwrap();
        b.submit((2, seq)).unwrap();
    }
    let got = recv_n(&responses, 400);
    let mut last = [None, None, None];
    for r in got {
        let (key, seq) = r.outcome.unwrap();
        if let Some(prev) = last[key as usize].replace(seq) {
            assert!(seq > prev, "key {key}: {seq} after {prev}");
        }
    }
    assert_eq!(orch.shutdown().completed, 400);
}

#[test]
#[should_panic(expected = "limited(0)")]
fn a_limit_of_zero_panics() {
    let (orch, _responses) = Orchestrator::builder()
        .workers(1)
        .build(|x: u32| x)
        .unwrap();
    let _ = orch.limited(0);
}

#[test]
fn a_limited_handle_outliving_its_pool_hands_requests_back() {
    let (orch, _responses) = Orchestrator::builder()
        .workers(1)
        .build(|x: u32| x)
        .unwrap();
    let limited = orch.limited(3);
    assert_eq!(limited.call(1), Ok(1));
    drop(orch);
    assert!(matches!(limited.submit(2), Err(SubmitError::ShutDown(2))));
    assert!(matches!(limited.call(3), Err(CallError::ShutDown(3))));
    assert!(matches!(
        limited.try_submit(4),
        Err(TrySubmitError::ShutDown(4))
    ));
    assert_eq!(limited.limit(), 3);
}

#[test]
fn the_first_limited_request_wakes_an_idle_pool_promptly() {
    let (orch, _responses) = Orchestrator::builder()
        .workers(2)
        .build(|x: u32| x + 1)
        .unwrap();
    thread::sleep(Duration::from_millis(30)); // every worker is parked by now
    let limited = orch.limited(1);
    assert_eq!(
        within(PROMPT, "limited call", move || limited.call(1)),
        Ok(2)
    );
    orch.shutdown();
}
