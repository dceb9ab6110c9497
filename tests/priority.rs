//! Priority lanes: most urgent first, FIFO within a priority, and a starvation bound of
//! `priority_burst` more urgent requests in a row per worker.

mod common;

use std::collections::HashMap;
use std::thread;
use std::time::Duration;

use channel_orchestrator::{BuildErrorKind, Distribution, Orchestrator, Priority, TrySubmitError};
use common::{Gate, WAIT, drain_after_shutdown, recv_n, wait_for, within};

/// (priority, sequence number within that priority)
type Tagged = (Priority, u32);

/// Builds a one-worker pool whose first request (the blocker, tag `(High, u32::MAX)`) waits on
/// `gate`, so every later submit queues up before anything else runs.
fn blocked_pool(
    burst: usize,
    gate: &Gate,
) -> (
    Orchestrator<Tagged, Tagged>,
    channel_orchestrator::crossbeam_channel::Receiver<channel_orchestrator::Response<Tagged>>,
) {
    let waiter = gate.waiter();
    let (orch, responses) = Orchestrator::builder()
        .workers(1)
        .queue_capacity(4096)
        .priority_burst(burst)
        .build(move |t: Tagged| {
            if t.1 == u32::MAX {
                waiter.pass(0);
            }
            t
        })
        .unwrap();
    orch.submit((Priority::High, u32::MAX)).unwrap();
    gate.wait_started(1);
    (orch, responses)
}

/// Checks the starvation bound over an execution order in which every request was waiting
/// from the start: while a request of lane L waits, at most `burst` requests more urgent than
/// L run in a row (a less urgent one running in between does not reset the count).
fn assert_bounded(order: &[Tagged], burst: usize) {
    for lane in [Priority::Normal, Priority::Low] {
        let total = order.iter().filter(|t| t.0 == lane).count();
        let mut seen = 0;
        let mut passed = 0;
        for t in order {
            if seen == total {
                break;
            }
            if t.0 == lane {
                seen += 1;
                passed = 0;
            } else if t.0 > lane {
                passed += 1;
                assert!(
                    passed <= burst,
                    "{passed} requests more urgent than a waiting {lane:?} ran in a row: {order:?}"
                );
            }
        }
    }
}

#[test]
fn fifo_within_each_priority_and_most_urgent_first() {
    let mut gate = Gate::new();
    let (orch, responses) = blocked_pool(usize::MAX, &gate);
    let mut next: HashMap<Priority, u32> = HashMap::new();
    for i in 0..300u32 {
        let p = Priority::ALL[(i * 7 % 3) as usize];
        let seq = next.entry(p).or_default();
        orch.submit_with_priority((p, *seq), p).unwrap();
        *seq += 1;
    }
    gate.open();
    let order: Vec<Tagged> = recv_n(&responses, 301)
        .into_iter()
        .map(|r| r.outcome.unwrap())
        .skip(1)
        .collect();
    // Strict priority (burst = usize::MAX): every High, then every Normal, then every Low,
    // each in submit order.
    let mut expected = Vec::new();
    for p in Priority::ALL {
        expected.extend((0..next[&p]).map(|s| (p, s)));
    }
    assert_eq!(order, expected);
    orch.shutdown();
}

#[test]
fn a_flood_of_high_passes_a_waiting_low_at_most_burst_times_in_a_row() {
    for burst in [1, 3, 8] {
        let mut gate = Gate::new();
        let (orch, responses) = blocked_pool(burst, &gate);
        for s in 0..5 {
            orch.submit_with_priority((Priority::Low, s), Priority::Low)
                .unwrap();
            orch.submit_with_priority((Priority::Normal, s), Priority::Normal)
                .unwrap();
        }
        for s in 0..200 {
            orch.submit_with_priority((Priority::High, s), Priority::High)
                .unwrap();
        }
        gate.open();
        let order: Vec<Tagged> = recv_n(&responses, 211)
            .into_iter()
            .map(|r| r.outcome.unwrap())
            .skip(1)
            .collect();
        assert_bounded(&order, burst);
        // Every Low ran long before the flood ended.
        let last_low = order.iter().rposition(|t| t.0 == Priority::Low).unwrap();
        assert!(last_low < 200, "burst {burst}: last Low at {last_low}");
        orch.shutdown();
    }
}

#[test]
fn low_requests_all_run_under_a_continuous_flood_of_high() {
    // Producers keep the High lane full the whole time; every Low request must still finish.
    let (orch, responses) = Orchestrator::builder()
        .workers(2)
        .queue_capacity(64)
        .build(|p: Priority| {
            thread::sleep(Duration::from_micros(50));
            p
        })
        .unwrap();
    let high = orch.submitter();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                high.submit_with_priority(Priority::High, Priority::High)
                    .unwrap();
            }
        })
    };
    for _ in 0..50 {
        orch.submit_with_priority(Priority::Low, Priority::Low)
            .unwrap();
    }
    let mut lows = 0;
    within(WAIT, "every Low request under the flood", move || {
        for r in responses.iter() {
            if r.outcome.unwrap() == Priority::Low {
                lows += 1;
                if lows == 50 {
                    return;
                }
            }
        }
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    flood.join().unwrap();
    let report = orch.shutdown();
    assert!(report.unstarted.is_empty());
}

#[test]
fn each_priority_has_its_own_room() {
    let mut gate = Gate::new();
    let waiter = gate.waiter();
    let (orch, _responses) = Orchestrator::builder()
        .workers(1)
        .queue_capacity(4)
        .build(move |x: u32| {
            if x == 0 {
                waiter.pass(0);
            }
            x
        })
        .unwrap();
    orch.submit(0).unwrap();
    gate.wait_started(1);
    for i in 1..=4 {
        orch.try_submit(i).unwrap();
    }
    assert!(matches!(orch.try_submit(5), Err(TrySubmitError::Full(5))));
    // Batch work filled the Normal queue; urgent work still gets in, and Low has its own room.
    for i in 10..14 {
        orch.try_submit_with_priority(i, Priority::High).unwrap();
        orch.try_submit_with_priority(i + 10, Priority::Low)
            .unwrap();
    }
    assert!(matches!(
        orch.try_submit_with_priority(99, Priority::High),
        Err(TrySubmitError::Full(99))
    ));
    let snap = wait_for(&orch, "queued per priority", |m| m.queued == 12);
    assert_eq!(
        (
            snap.queued_by_priority.high,
            snap.queued_by_priority.normal,
            snap.queued_by_priority.low
        ),
        (4, 4, 4)
    );
    gate.open();
    let report = orch.shutdown();
    assert_eq!(report.completed, 13);
    assert!(report.unstarted.is_empty());
}

#[test]
fn queue_wait_is_reported_per_priority() {
    let mut gate = Gate::new();
    let (orch, responses) = blocked_pool(8, &gate);
    for s in 0..20 {
        orch.submit_with_priority((Priority::Low, s), Priority::Low)
            .unwrap();
        orch.submit_with_priority((Priority::High, s), Priority::High)
            .unwrap();
    }
    thread::sleep(Duration::from_millis(20));
    gate.open();
    recv_n(&responses, 41);
    let snap = wait_for(&orch, "waits reported", |m| {
        m.queue_wait_by_priority.low.count == 20 && m.queue_wait_by_priority.high.count == 20
    });
    let by = &snap.queue_wait_by_priority;
    // Every one of them waited the 20 ms (the histogram's buckets are within 12.5%).
    assert!(by.low.p50 >= Duration::from_millis(17), "{by:?}");
    assert!(by.high.p50 >= Duration::from_millis(17), "{by:?}");
    assert_eq!(snap.queue_wait.count, 41);
    assert_eq!(by.get(Priority::Normal).count, 1, "the blocker: {by:?}");
    orch.shutdown();
}

#[test]
fn shutdown_now_hands_back_every_priority_and_graceful_runs_them_all() {
    for now in [false, true] {
        let mut gate = Gate::new();
        let (orch, responses) = blocked_pool(8, &gate);
        let mut ids = Vec::new();
        for s in 0..10 {
            for p in Priority::ALL {
                ids.push(orch.submit_with_priority((p, s), p).unwrap());
            }
        }
        let report = if now {
            let sub = orch.submitter();
            let stopping = thread::spawn(move || orch.shutdown_now());
            // Once intake is closed, the queued requests are being handed back; only then
            // let the running blocker finish.
            common::eventually("intake closed", || sub.resize(1).is_err());
            gate.open();
            within(WAIT, "shutdown_now", move || stopping.join().unwrap())
        } else {
            gate.open();
            within(WAIT, "shutdown", move || orch.shutdown())
        };
        let answered = drain_after_shutdown(&responses);
        if now {
            assert_eq!(report.unstarted.len(), 30);
            let mut back: Vec<_> = report.unstarted.iter().map(|(id, _)| *id).collect();
            back.sort();
            ids.sort();
            assert_eq!(back, ids);
            assert_eq!(answered.len(), 1);
        } else {
            assert!(report.unstarted.is_empty());
            assert_eq!(answered.len(), 31);
        }
    }
}

type MakeBuilder = Box<dyn Fn() -> channel_orchestrator::Builder<(u32, u32), (u32, u32)>>;

#[test]
fn priorities_work_with_every_distribution_and_keep_per_key_order() {
    let dists: Vec<(&str, MakeBuilder)> = vec![
        (
            "shared",
            Box::new(|| Orchestrator::builder().distribution(Distribution::Shared)),
        ),
        (
            "round robin",
            Box::new(|| Orchestrator::builder().distribution(Distribution::RoundRobin)),
        ),
        (
            "by key",
            Box::new(|| {
                Orchestrator::builder().distribution(Distribution::by_key(|r: &(u32, u32)| r.0))
            }),
        ),
    ];
    for (name, builder) in dists {
        let (orch, responses) = builder()
            .workers(3)
            .queue_capacity(3000)
            .build(|r: (u32, u32)| r)
            .unwrap();
        // Key k is always submitted at the same priority: per key, submit order holds.
        for seq in 0..300 {
            for key in 0..6u32 {
                let p = Priority::ALL[key as usize % 3];
                orch.submit_with_priority((key, seq), p).unwrap();
            }
        }
        let got = recv_n(&responses, 1800);
        let report = orch.shutdown();
        assert_eq!(report.completed, 1800, "{name}");
        if name == "by key" {
            let mut last: HashMap<u32, u32> = HashMap::new();
            for r in got {
                let (key, seq) = r.outcome.unwrap();
                if let Some(prev) = last.insert(key, seq) {
                    assert!(seq > prev, "{name}: key {key} ran {seq} after {prev}");
                }
            }
        }
    }
}

#[test]
fn zero_priority_burst_is_a_build_error() {
    let err = Orchestrator::builder()
        .priority_burst(0)
        .build(|x: u32| x)
        .unwrap_err();
    assert_eq!(err.kind(), BuildErrorKind::ZeroPriorityBurst);
    assert!(err.to_string().contains("priority_burst"));
}

#[test]
fn submitters_have_the_priority_methods_and_priority_orders_by_urgency() {
    let (orch, responses) = Orchestrator::builder().workers(1).build(|x: u8| x).unwrap();
    let sub = orch.submitter();
    sub.submit_with_priority(1, Priority::Low).unwrap();
    sub.try_submit_with_priority(2, Priority::High).unwrap();
    recv_n(&responses, 2);
    assert_eq!(sub.call_with_priority(5, Priority::High), Ok(5));
    assert_eq!(orch.call_with_priority(6, Priority::Low), Ok(6));
    assert!(Priority::Low < Priority::Normal && Priority::Normal < Priority::High);
    assert_eq!(Priority::default(), Priority::Normal);
    assert_eq!(Priority::High.to_string(), "high");
    drop(orch);
    assert!(sub.submit_with_priority(3, Priority::High).is_err());
}

#[test]
fn the_first_urgent_request_wakes_an_idle_pool_promptly() {
    // Until a priority is first used, idle workers watch only the Normal queues; the first
    // High request must still be taken at once, not when the next Normal one arrives.
    for workers in [1, 3] {
        let (orch, responses) = Orchestrator::builder()
            .workers(workers)
            .distribution(Distribution::RoundRobin)
            .build(|x: u32| x)
            .unwrap();
        thread::sleep(Duration::from_millis(30)); // every worker is parked by now
        orch.submit_with_priority(7, Priority::High).unwrap();
        let r = responses
            .recv_timeout(common::PROMPT)
            .expect("taken promptly");
        assert_eq!(r.outcome, Ok(7));
        thread::sleep(Duration::from_millis(30));
        orch.submit_with_priority(8, Priority::Low).unwrap();
        let r = responses
            .recv_timeout(common::PROMPT)
            .expect("taken promptly");
        assert_eq!(r.outcome, Ok(8));
        orch.shutdown();
    }
}
