//! `process` and `process_ordered`: one thread feeding and reading, bounded memory, early drop.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use channel_orchestrator::{Distribution, Orchestrator};

/// The stress size: a million requests through capacity-1 channels.
const MILLION: u64 = 1_000_000;

#[test]
fn a_million_requests_through_capacity_one_channels_from_one_thread() {
    let (orch, responses) = Orchestrator::builder()
        .workers(2)
        .queue_capacity(1)
        .response_capacity(1)
        .metrics(false)
        .build(|x: u64| x + 1)
        .unwrap();
    let mut count = 0u64;
    let mut sum = 0u64;
    for r in orch.process(0..MILLION) {
        count += 1;
        sum += r.outcome.unwrap();
    }
    assert_eq!(count, MILLION);
    assert_eq!(sum, MILLION * (MILLION + 1) / 2);
    // The shared responses channel was never used.
    assert!(responses.try_recv().is_err());
    let report = orch.shutdown();
    assert_eq!(report.completed, MILLION);
    assert_eq!(report.undelivered, 0);
}

#[test]
fn process_ordered_yields_input_order_despite_uneven_jobs() {
    for dist in [Distribution::Shared, Distribution::RoundRobin] {
        let (orch, _responses) = Orchestrator::builder()
            .workers(4)
            .queue_capacity(4)
            .distribution(dist)
            .build(|x: u64| {
                if x.is_multiple_of(7) {
                    thread::sleep(Duration::from_micros(300));
                }
                x
            })
            .unwrap();
        let out: Vec<u64> = orch
            .process_ordered(0..2_000)
            .map(|r| r.outcome.unwrap())
            .collect();
        assert_eq!(out, (0..2_000).collect::<Vec<_>>());
    }
}

#[test]
fn process_keeps_at_most_a_window_of_inputs_in_flight() {
    // Count inputs pulled from the iterator versus responses yielded.
    const WORKERS: usize = 2;
    const CAPACITY: usize = 3;
    let pulled = Arc::new(AtomicUsize::new(0));
    let (orch, _responses) = Orchestrator::builder()
        .workers(WORKERS)
        .queue_capacity(CAPACITY)
        .build(|x: usize| {
            thread::sleep(Duration::from_micros(50));
            x
        })
        .unwrap();
    let p = Arc::clone(&pulled);
    let inputs = (0..500).inspect(move |_| {
        p.fetch_add(1, Ordering::Relaxed);
    });
    let mut yielded = 0;
    for _ in orch.process_ordered(inputs) {
        yielded += 1;
        let ahead = pulled.load(Ordering::Relaxed) - yielded;
        // window = capacity + workers, plus the one input held while waiting for room.
        assert!(ahead <= CAPACITY + WORKERS + 1, "{ahead} inputs in flight");
    }
    assert_eq!(yielded, 500);
}

#[test]
fn several_process_calls_and_submits_at_once_keep_their_routes() {
    let (orch, responses) = Orchestrator::builder()
        .workers(2)
        .build(|x: u64| x)
        .unwrap();
    let orch = &orch;
    thread::scope(|s| {
        let a = s.spawn(move || {
            orch.process(0..5_000)
                .map(|r| r.outcome.unwrap())
                .sum::<u64>()
        });
        let b = s.spawn(move || {
            orch.process_ordered(5_000..10_000)
                .map(|r| r.outcome.unwrap())
                .collect::<Vec<_>>()
        });
        let c = s.spawn(move || {
            let ids: HashSet<_> = (0..1_000)
                .map(|i| orch.submit(100_000 + i).unwrap())
                .collect();
            ids
        });
        assert_eq!(a.join().unwrap(), (0..5_000).sum::<u64>());
        assert_eq!(b.join().unwrap(), (5_000..10_000).collect::<Vec<_>>());
        let ids = c.join().unwrap();
        let got: HashSet<_> = responses.iter().take(1_000).map(|r| r.id).collect();
        assert_eq!(got, ids);
    });
    assert!(responses.try_recv().is_err());
}

#[test]
fn dropping_the_iterator_early_loses_nothing() {
    let (orch, _responses) = Orchestrator::builder()
        .workers(2)
        .queue_capacity(8)
        .build(|x: u64| {
            thread::sleep(Duration::from_micros(100));
            x
        })
        .unwrap();
    let mut it = orch.process(0..1_000_000);
    let first: Vec<_> = it.by_ref().take(10).collect();
    assert_eq!(first.len(), 10);
    drop(it);
    // The pool is usable afterwards, and the totals add up: what was in flight ran and was
    // counted as undelivered; nothing else was accepted.
    assert_eq!(orch.call(7), Ok(7));
    let report = orch.shutdown();
    assert_eq!(report.submitted, report.completed + report.failed);
    assert!(report.completed >= 11, "{report:?}");
    assert_eq!(report.completed - 11, report.undelivered, "{report:?}");
    assert!(report.undelivered <= 8 + 2 + 1, "{report:?}");
}

#[test]
fn process_reports_panics_as_failed_responses() {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains("intentional") {
            hook(info);
        }
    }));
    let (orch, _responses) = Orchestrator::builder()
        .workers(2)
        .build(|x: u32| {
            assert!(x % 10 != 3, "intentional panic on {x}");
            x
        })
        .unwrap();
    let results: Vec<_> = orch.process_ordered(0..100).map(|r| r.outcome).collect();
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r.is_err(), i % 10 == 3, "input {i}: {r:?}");
    }
    assert_eq!(orch.shutdown().failed, 10);
}
