//! Multi-stage pipelines: typed stages, back-pressure, panics in a middle stage, shutdown
//! stage by stage, per-stage metrics.

use std::collections::HashSet;
use std::thread;
use std::time::{Duration, Instant};

use channel_orchestrator::{CallError, JobError, Pipeline};

fn quiet_intentional_panics() {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.to_string().contains("intentional") {
            hook(info);
        }
    }));
}

#[test]
fn three_typed_stages_answer_submit_call_and_process() {
    let (p, responses) = Pipeline::builder()
        .stage(2, |n: u32| n.to_string())
        .stage(3, |s: String| s.len())
        .stage(1, |len: usize| len * 100)
        .build()
        .unwrap();
    let id = p.submit(12345).unwrap();
    let r = responses.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!((r.id, r.outcome), (id, Ok(500)));
    assert_eq!(p.call(7), Ok(100));
    let out: Vec<usize> = p
        .process_ordered(1..=1000u32)
        .map(|r| r.outcome.unwrap())
        .collect();
    let expected: Vec<usize> = (1..=1000u32).map(|n| n.to_string().len() * 100).collect();
    assert_eq!(out, expected);
    let unordered: HashSet<_> = p.process(0..500u32).map(|r| r.id).collect();
    assert_eq!(unordered.len(), 500, "process ids are unique");
    assert!(
        !unordered.contains(&id),
        "process ids differ from submit ids"
    );
    let report = p.shutdown();
    assert_eq!(report.completed, 1 + 1 + 1000 + 500);
    assert_eq!(report.submitted, report.completed);
    assert!(
        responses.try_recv().is_err(),
        "call and process answers never use the stream"
    );
}

#[test]
fn a_panic_in_the_middle_stage_yields_exactly_one_failed_response() {
    quiet_intentional_panics();
    let (p, responses) = Pipeline::builder()
        .stage(2, |n: u32| n)
        .stage(2, |n: u32| {
            assert!(n % 10 != 5, "intentional panic on {n}");
            n
        })
        .stage(1, |n: u32| n * 2)
        .build()
        .unwrap();
    for n in 0..100 {
        p.submit(n).unwrap();
    }
    let mut ok = 0;
    let mut failed = 0;
    for r in responses.iter().take(100) {
        match r.outcome {
            Ok(v) => {
                assert_eq!(v % 2, 0);
                ok += 1;
            }
            Err(JobError::Panicked(msg)) => {
                assert!(msg.contains("intentional panic"), "{msg}");
                failed += 1;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!((ok, failed), (90, 10));
    match p.call(15) {
        Err(CallError::Failed(JobError::Panicked(msg))) => assert!(msg.contains("15")),
        other => panic!("{other:?}"),
    }
    // The middle stage counted its panics in its own metrics.
    let snap = p.metrics();
    assert_eq!(snap.stages.len(), 3);
    let report = p.shutdown();
    assert_eq!((report.completed, report.failed), (90, 11));
    assert!(responses.try_recv().is_err());
}

#[test]
fn back_pressure_reaches_the_producer() {
    let (gate_tx, gate) = crossbeam_channel::bounded::<()>(0);
    let (p, _responses) = Pipeline::builder()
        .queue_capacity(2)
        .stage(1, |n: u32| n)
        .stage(1, move |n: u32| {
            let _ = gate.recv();
            n
        })
        .build()
        .unwrap();
    // Slow last stage: 1 running + 2 queued there, 1 blocked in stage 0 + 2 queued in stage 0.
    let mut accepted = 0;
    let t = Instant::now();
    while p.try_submit(accepted).is_ok() {
        accepted += 1;
        assert!(accepted < 50, "the first stage never filled up");
        thread::sleep(Duration::from_millis(2));
    }
    assert!(accepted <= 8, "accepted {accepted}");
    assert!(t.elapsed() < Duration::from_secs(5));
    drop(gate_tx);
    let report = p.shutdown();
    assert_eq!(report.completed, u64::from(accepted));
}

#[test]
fn shutdown_drains_stage_by_stage_and_now_hands_back_the_first_stages_queue() {
    let (p, responses) = Pipeline::builder()
        .stage(1, |n: u32| {
            thread::sleep(Duration::from_millis(2));
            n
        })
        .stage(2, |n: u32| n)
        .build()
        .unwrap();
    for n in 0..50 {
        p.submit(n).unwrap();
    }
    let report = p.shutdown_now();
    let answered = responses.iter().count() as u64;
    assert_eq!(answered, report.completed);
    assert_eq!(answered + report.unstarted.len() as u64, 50);
    assert!(!report.unstarted.is_empty());
    let mut all: Vec<u32> = report.unstarted.iter().map(|(_, n)| *n).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), report.unstarted.len());
}

#[test]
fn shutdown_timeout_cancels_what_waits_in_later_stages() {
    let (p, responses) = Pipeline::builder()
        .stage(4, |n: u32| n)
        .stage(1, |n: u32| {
            thread::sleep(Duration::from_millis(20));
            n
        })
        .build()
        .unwrap();
    for n in 0..40 {
        p.submit(n).unwrap();
    }
    thread::sleep(Duration::from_millis(30));
    let t = Instant::now();
    let report = p.shutdown_timeout(Duration::from_millis(60));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let all: Vec<_> = responses.iter().collect();
    let cancelled = all
        .iter()
        .filter(|r| r.outcome == Err(JobError::Cancelled))
        .count() as u64;
    assert!(cancelled > 0, "{report:?}");
    assert_eq!(
        all.len() as u64 + report.unstarted.len() as u64,
        40,
        "{report:?}"
    );
    assert_eq!(report.failed, cancelled);
}

#[test]
fn a_stage_with_zero_workers_is_a_build_error() {
    let err = Pipeline::builder()
        .stage(2, |n: u32| n)
        .stage(0, |n: u32| n)
        .build()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid configuration: workers must be at least 1"
    );
}
