//! `Distribution::ByKey`: same key → same worker, in submit order; a hot key loads one worker.

use std::collections::HashMap;
use std::thread;
use std::time::Duration;

use channel_orchestrator::{Distribution, Orchestrator, TrySubmitError};

const KEYS: u32 = 16;
const PER_KEY: u32 = 200;

#[test]
fn same_key_runs_on_one_worker_in_submit_order() {
    let (orch, responses) = Orchestrator::builder()
        .workers(4)
        .queue_capacity(64)
        .distribution(Distribution::by_key(|req: &(u32, u32)| req.0))
        .build(|req: (u32, u32)| {
            if req.1.is_multiple_of(17) {
                thread::sleep(Duration::from_micros(200));
            }
            req
        })
        .unwrap();
    let consumer = thread::spawn(move || responses.iter().collect::<Vec<_>>());
    // Two producers, each owning half of the keys: per-key submit order is well defined.
    let s = orch.submitter();
    thread::scope(|scope| {
        for half in 0..2 {
            let s = s.clone();
            scope.spawn(move || {
                for seq in 0..PER_KEY {
                    for key in (half..KEYS).step_by(2) {
                        s.submit((key, seq)).unwrap();
                    }
                }
            });
        }
    });
    drop(s);
    orch.shutdown();
    let all = consumer.join().unwrap();
    assert_eq!(all.len() as u32, KEYS * PER_KEY);
    let mut worker_of = HashMap::new();
    let mut next_seq = HashMap::new();
    for r in all {
        let (key, seq) = r.outcome.unwrap();
        let w = *worker_of.entry(key).or_insert(r.worker);
        assert_eq!(
            w, r.worker,
            "key {key} moved from worker {w} to {}",
            r.worker
        );
        let expected = next_seq.entry(key).or_insert(0);
        assert_eq!(seq, *expected, "key {key} out of order");
        *expected += 1;
    }
    // With 16 keys over 4 workers, more than one worker is used.
    let mut used: Vec<_> = worker_of.values().collect();
    used.sort();
    used.dedup();
    assert!(used.len() > 1);
}

#[test]
fn a_hot_key_fills_only_its_own_queue() {
    let (gate_tx, gate) = crossbeam_channel::bounded::<()>(0);
    let (orch, _responses) = Orchestrator::builder()
        .workers(2)
        .queue_capacity(4) // two per worker
        .distribution(Distribution::by_key(|k: &u32| *k))
        .build(move |k: u32| {
            let _ = gate.recv();
            k
        })
        .unwrap();
    // Submit the hot key until it reports Full: its worker holds one job and its queue two.
    let mut accepted = 0;
    loop {
        match orch.try_submit(1) {
            Ok(_) => accepted += 1,
            Err(TrySubmitError::Full(k)) => {
                assert_eq!(k, 1);
                break;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(accepted < 10, "the hot key's queue never filled");
    }
    assert!((2..=3).contains(&accepted), "accepted {accepted}");
    // Another key that hashes to the other worker is still accepted.
    let other = (2..100).find(|&k| orch.try_submit(k).is_ok());
    assert!(
        other.is_some(),
        "no other key was accepted while the hot key's queue was full"
    );
    drop(gate_tx); // release everything
    let report = orch.shutdown();
    assert_eq!(report.completed, accepted + 1);
}

#[test]
fn a_key_function_of_the_wrong_type_is_a_build_error() {
    let err = Orchestrator::builder()
        .workers(2)
        .distribution(Distribution::by_key(|s: &String| s.len()))
        .build(|x: u32| x)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid configuration: the by_key function takes alloc::string::String but requests are u32"
    );
}
