//! Hostile use: handlers that call back into their own pool, values whose `Drop` panics,
//! extreme but accepted settings, shutdowns while every worker is busy. Each test is named
//! after the promise it checks; each of them once failed (issue 10 lists the symptoms).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use channel_orchestrator::crossbeam_channel::{bounded, unbounded};
use channel_orchestrator::{
    CallError, CallTimeoutError, Distribution, JobError, MAX_QUEUE_CAPACITY, MAX_WORKERS,
    MetricsEvent, Orchestrator, Pipeline, Submitter, WorkerEventKind, WorkerState,
};
use common::{
    Gate, MARKER, PROMPT, WAIT, assert_no_threads_of, drain_after_shutdown, eventually,
    quiet_panics, recv_n, wait_for, within,
};

/// A request whose `Drop` panics (after counting itself), when `explode` is set.
struct Bomb {
    value: u32,
    explode: bool,
    drops: Arc<AtomicUsize>,
}

impl Drop for Bomb {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
        if self.explode && !thread::panicking() {
            panic!("{MARKER}: a request's Drop panicked");
        }
    }
}

/// A slot that hands a handler a `Submitter` of its own pool, filled after `build`.
type SelfRef<Req, Resp> = Arc<OnceLock<Submitter<Req, Resp>>>;

// ---- 1. shutdown_now / an expired shutdown_timeout hand back queued work at once ----------

#[test]
fn shutdown_now_cancels_a_queued_call_at_once_while_every_worker_is_busy() {
    let gate = Gate::new();
    let waiter = gate.waiter();
    let (orch, _responses) = Orchestrator::builder()
        .workers(1)
        .thread_name("h-now")
        .build(move |x: u64| {
            waiter.pass(x); // a long job: holds the only worker until the gate opens
            x
        })
        .unwrap();
    orch.submit(0).unwrap();
    gate.wait_started(1);
    let sub = orch.submitter();
    let caller = thread::spawn(move || {
        let r = sub.call(7);
        (r, Instant::now())
    });
    eventually("the call is queued", || orch.metrics().queued == 1);
    let stopping = Instant::now();
    let stopper = thread::spawn(move || orch.shutdown_now());
    let (result, answered_at) = caller.join().unwrap();
    assert!(
        matches!(result, Err(CallError::Cancelled(7))),
        "expected Cancelled(7), got {result:?}"
    );
    assert!(
        answered_at - stopping < PROMPT,
        "the queued call waited {:?} for a free worker",
        answered_at - stopping
    );
    gate.release(1); // now the running job may finish
    let report = within(WAIT, "shutdown_now", move || stopper.join().unwrap());
    assert_eq!((report.completed, report.cancelled), (1, 1));
    assert_eq!(report.submitted, 2);
    assert_no_threads_of("h-now");
}

#[test]
fn an_expired_shutdown_timeout_hands_back_queued_work_at_once_while_every_worker_is_busy() {
    let gate = Gate::new();
    let waiter = gate.waiter();
    let (orch, responses) = Orchestrator::builder()
        .workers(2)
        .thread_name("h-timeout")
        .build(move |x: u64| {
            waiter.pass(x);
            x
        })
        .unwrap();
    for i in 0..2 {
        orch.submit(i).unwrap();
    }
    gate.wait_started(2);
    for i in 2..6 {
        orch.submit(i).unwrap();
    }
    let sub = orch.submitter();
    let caller = thread::spawn(move || (sub.call(99), Instant::now()));
    eventually("the call is queued", || orch.metrics().queued == 5);
    let stopping = Instant::now();
    let stopper = thread::spawn(move || orch.shutdown_timeout(Duration::from_millis(30)));
    let (result, answered_at) = caller.join().unwrap();
    assert!(
        matches!(result, Err(CallError::Cancelled(99))),
        "{result:?}"
    );
    assert!(
        answered_at - stopping < Duration::from_millis(30) + PROMPT,
        "the queued call was answered only after {:?}",
        answered_at - stopping
    );
    gate.release(2);
    let report = within(WAIT, "shutdown_timeout", move || stopper.join().unwrap());
    let mut back: Vec<u64> = report.unstarted.iter().map(|(_, r)| *r).collect();
    back.sort_unstable();
    assert_eq!(back, [2, 3, 4, 5]);
    assert_eq!(drain_after_shutdown(&responses).len(), 2);
    assert_eq!((report.completed, report.cancelled), (2, 1));
    assert_no_threads_of("h-timeout");
}

// ---- 2. re-entrant use never deadlocks --------------------------------------------------

#[test]
fn a_call_into_its_own_one_worker_pool_runs_inline_instead_of_deadlocking() {
    let me: SelfRef<u64, u64> = Arc::default();
    let inner = Arc::clone(&me);
    let (orch, _responses) = Orchestrator::builder()
        .workers(1)
        .thread_name("h-inline")
        .build(move |x: u64| {
            if x >= 100 {
                // The only worker calls its own pool: it must not wait for itself.
                let nested = inner.get().unwrap().call(x - 100).unwrap();
                nested + 1000
            } else {
                x * 2
            }
        })
        .unwrap();
    me.set(orch.submitter()).unwrap();
    let sub = orch.submitter();
    let answer = within(WAIT, "re-entrant call", move || sub.call(121));
    assert_eq!(answer, Ok(1042));
    let report = within(WAIT, "shutdown", move || orch.shutdown());
    assert_eq!((report.submitted, report.completed), (2, 2));
    assert_no_threads_of("h-inline");
}

#[test]
fn every_worker_calling_its_own_pool_at_once_still_completes_and_shuts_down() {
    const N: usize = 3;
    for stop in 0..3 {
        let name = format!("h-exhaust{stop}");
        let me: SelfRef<u64, u64> = Arc::default();
        let inner = Arc::clone(&me);
        let (all_in_tx, all_in) = unbounded::<()>();
        let (go_tx, go) = unbounded::<()>();
        let (done_tx, done) = unbounded::<()>();
        let (orch, responses) = Orchestrator::builder()
            .workers(N)
            .thread_name(name.clone())
            .build(move |x: u64| {
                if x >= 100 {
                    // Every worker holds an outer job at the same moment, then calls in.
                    all_in_tx.send(()).unwrap();
                    let _ = go.recv_timeout(WAIT);
                    let r = match inner.get().unwrap().call(x - 100) {
                        Ok(v) => v + 1000,
                        Err(CallError::Cancelled(v) | CallError::ShutDown(v)) => v,
                        Err(e) => panic!("unexpected {e:?}"),
                    };
                    done_tx.send(()).unwrap();
                    r
                } else {
                    x
                }
            })
            .unwrap();
        me.set(orch.submitter()).unwrap();
        for i in 0..N as u64 {
            orch.submit(100 + i).unwrap();
        }
        for _ in 0..N {
            all_in
                .recv_timeout(WAIT)
                .expect("every worker took an outer job");
        }
        for _ in 0..N {
            go_tx.send(()).unwrap();
        }
        if stop == 0 {
            // Graceful: let every nested call be made (and answered) first.
            for _ in 0..N {
                done.recv_timeout(WAIT).expect("every nested call returned");
            }
        }
        let report = within(WAIT, "shutdown of an exhausted pool", move || match stop {
            0 => orch.shutdown(),
            1 => orch.shutdown_timeout(Duration::from_millis(10)),
            _ => orch.shutdown_now(),
        });
        let outer = drain_after_shutdown(&responses);
        assert_eq!(outer.len(), N, "every outer job answered");
        assert_eq!(
            report.submitted,
            report.completed + report.failed + report.cancelled + report.unstarted.len() as u64
        );
        if stop == 0 {
            assert_eq!(report.completed, 2 * N as u64, "outer and nested all ran");
        }
        assert_no_threads_of(&name);
    }
}

#[test]
fn dropping_the_orchestrator_inside_its_own_handler_returns_and_the_pool_drains() {
    // The orchestrator travels to its own handler over a channel.
    let (slot, inner) = bounded::<Orchestrator<u64, u64>>(1);
    let (dropped_tx, dropped) = bounded(1);
    let (orch, responses) = Orchestrator::builder()
        .workers(2)
        .thread_name("h-selfdrop")
        .build(move |x: u64| {
            if x == 0 {
                let me = inner.try_recv().unwrap();
                drop(me); // must not wait for this very worker
                dropped_tx.send(()).unwrap();
            }
            thread::sleep(Duration::from_millis(1));
            x
        })
        .unwrap();
    let sub = orch.submitter();
    for i in 1..20 {
        orch.submit(i).unwrap();
    }
    slot.send(orch).unwrap();
    sub.submit(0).unwrap();
    dropped
        .recv_timeout(WAIT)
        .expect("drop inside the handler returned");
    // A graceful shutdown: every accepted request is answered, then the channel closes.
    let answered = within(WAIT, "the pool drains", move || responses.iter().count());
    assert_eq!(answered, 20);
    assert!(sub.submit(5).is_err(), "intake closed by the drop");
    assert_no_threads_of("h-selfdrop");
}

#[test]
fn shutdown_inside_its_own_handler_fails_that_job_clearly_and_loses_nothing() {
    quiet_panics();
    let (slot, inner) = bounded::<Orchestrator<u64, u64>>(1);
    let (orch, responses) = Orchestrator::builder()
        .workers(1)
        .thread_name("h-selfstop")
        .build(move |x: u64| {
            if x == 0 {
                let me = inner.try_recv().unwrap();
                let _ = me.shutdown(); // refused with a panic; the unwind drops `me`
            }
            x
        })
        .unwrap();
    let sub = orch.submitter();
    slot.send(orch).unwrap();
    sub.submit(0).unwrap();
    let r = responses.recv_timeout(WAIT).unwrap();
    match r.outcome {
        Err(JobError::Panicked(msg)) => assert!(msg.contains("would wait for itself"), "{msg}"),
        other => panic!("expected the clear panic, got {other:?}"),
    }
    eventually("the detached pool ends", || {
        common::threads_of("h-selfstop").is_empty()
    });
}

// ---- 3. Pipeline::shutdown_timeout with a full, unread response channel -------------------

#[test]
fn pipeline_shutdown_timeout_gives_up_on_a_full_unread_response_channel() {
    for stages in 1..=2 {
        let builder = Pipeline::builder()
            .response_capacity(1)
            .thread_name(format!("h-pipe{stages}"));
        let report = if stages == 1 {
            let (p, responses) = builder.stage(1, |x: u64| x + 1).build().unwrap();
            for i in 0..6 {
                p.submit(i).unwrap();
            }
            let r = within(WAIT, "pipeline shutdown_timeout", move || {
                p.shutdown_timeout(Duration::from_millis(50))
            });
            drop(responses);
            r
        } else {
            let (p, responses) = builder
                .stage(1, |x: u64| x + 1)
                .stage(2, |x: u64| x * 2)
                .build()
                .unwrap();
            for i in 0..6 {
                p.submit(i).unwrap();
            }
            let r = within(WAIT, "pipeline shutdown_timeout", move || {
                p.shutdown_timeout(Duration::from_millis(50))
            });
            drop(responses);
            r
        };
        assert!(report.undelivered >= 4, "{stages} stages: {report:?}");
        assert_eq!(
            report.submitted,
            report.completed + report.failed + report.unstarted.len() as u64 + report.cancelled,
            "{report:?}"
        );
        assert_eq!(report.submitted, 6);
        assert_no_threads_of(&format!("h-pipe{stages}"));
    }
}

// ---- 4, 5, 6. extreme settings are refused at build or kept ------------------------------

#[test]
fn metrics_interval_of_duration_max_is_accepted_and_the_pool_works() {
    let (orch, _responses) = Orchestrator::builder()
        .workers(2)
        .metrics_interval(Duration::MAX)
        .thread_name("h-maxint")
        .build(|x: u64| x + 1)
        .unwrap();
    assert_eq!(
        within(WAIT, "call", {
            let sub = orch.submitter();
            move || sub.call(1)
        }),
        Ok(2)
    );
    for i in 0..10 {
        orch.submit(i).unwrap();
    }
    let report = within(WAIT, "shutdown with work queued", move || orch.shutdown());
    assert_eq!(report.completed, 11);
    assert_no_threads_of("h-maxint");

    let (p, _responses) = Pipeline::builder()
        .metrics_interval(Duration::MAX)
        .thread_name("h-maxintp")
        .stage(1, |x: u64| x + 1)
        .build()
        .unwrap();
    assert_eq!(p.call(1), Ok(2));
    assert_eq!(
        within(WAIT, "pipeline shutdown", move || p.shutdown()).completed,
        1
    );
}

#[test]
fn timing_sample_of_usize_max_keeps_the_metrics_thread_alive() {
    let (orch, _responses) = Orchestrator::builder()
        .workers(2)
        .timing_sample(usize::MAX)
        .metrics_interval(Duration::from_millis(5))
        .build(|x: u64| {
            thread::sleep(Duration::from_micros(200));
            x
        })
        .unwrap();
    for i in 0..200 {
        orch.submit(i).unwrap();
    }
    let snap = wait_for(&orch, "every job counted", |m| m.completed == 200);
    thread::sleep(Duration::from_millis(20)); // a few ticks with busy time to scale
    assert!(orch.metrics().workers.iter().all(|w| w.busy <= 1.0));
    assert_eq!(snap.failed, 0);
    assert_eq!(orch.shutdown().completed, 200);
}

#[test]
fn the_largest_accepted_sizes_build_run_and_shut_down() {
    // Every worker is a thread: the limit is one the machine can keep.
    let (orch, _responses) = within(WAIT, "build at MAX_WORKERS", || {
        Orchestrator::builder()
            .workers(MAX_WORKERS)
            .queue_capacity(MAX_QUEUE_CAPACITY)
            .stack_size(channel_orchestrator::MIN_STACK_SIZE * 2)
            .thread_name("h-max")
            .build(|x: u32| x)
            .unwrap()
    });
    assert_eq!(orch.workers(), MAX_WORKERS);
    assert_eq!(orch.call(3), Ok(3));
    let report = within(WAIT, "shutdown at MAX_WORKERS", move || orch.shutdown());
    assert_eq!(report.completed, 1);
    assert_no_threads_of("h-max");
    // One above each limit is refused.
    assert!(
        Orchestrator::builder()
            .workers(MAX_WORKERS + 1)
            .build(|x: u32| x)
            .is_err()
    );
    assert!(
        Orchestrator::builder()
            .queue_capacity(MAX_QUEUE_CAPACITY + 1)
            .build(|x: u32| x)
            .is_err()
    );
    let tiny = Orchestrator::builder().stack_size(1).build(|x: u32| x);
    assert_eq!(
        tiny.unwrap_err().to_string(),
        format!(
            "invalid configuration: stack_size must be at least {} bytes",
            channel_orchestrator::MIN_STACK_SIZE
        )
    );
}

// ---- 7. user code is contained wherever it runs ------------------------------------------

#[test]
fn a_deadline_expired_request_whose_drop_panics_is_answered_and_its_worker_survives() {
    quiet_panics();
    let drops = Arc::new(AtomicUsize::new(0));
    let (orch, responses) = Orchestrator::builder()
        .workers(1)
        .thread_name("h-bombdl")
        .build(|b: Bomb| {
            let v = b.value;
            std::mem::forget(b); // the handler never drops an exploding request
            v
        })
        .unwrap();
    let events = orch.subscribe();
    let past = Instant::now() - Duration::from_millis(1);
    let bomb = Bomb {
        value: 1,
        explode: true,
        drops: Arc::clone(&drops),
    };
    orch.submit_with_deadline(bomb, past)
        .map_err(|_| ())
        .unwrap();
    let r = responses
        .recv_timeout(WAIT)
        .expect("the expired request is answered");
    assert_eq!(r.outcome, Err(JobError::DeadlineExceeded));
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    // The same worker goes on.
    let ok = Bomb {
        value: 2,
        explode: false,
        drops: Arc::clone(&drops),
    };
    orch.submit(ok).map_err(|_| ()).unwrap();
    assert_eq!(responses.recv_timeout(WAIT).unwrap().outcome, Ok(2));
    let report = orch.shutdown();
    assert_eq!((report.completed, report.failed), (1, 1));
    let died = events.iter().any(
        |e| matches!(e, MetricsEvent::Worker(w) if matches!(w.kind, WorkerEventKind::Died(_))),
    );
    assert!(!died, "a request's Drop killed its worker");
}

#[test]
fn a_panicking_key_function_panics_the_submit_and_leaves_the_pool_working() {
    quiet_panics();
    let (orch, responses) = Orchestrator::builder()
        .workers(2)
        .distribution(Distribution::by_key(|x: &u32| {
            assert!(*x != 13, "{MARKER}: unlucky key");
            *x
        }))
        .thread_name("h-key")
        .build(|x: u32| x)
        .unwrap();
    let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| orch.submit(13)));
    assert!(
        refused.is_err(),
        "the key function's panic reaches the caller"
    );
    for i in 0..10 {
        orch.submit(i).unwrap();
    }
    assert_eq!(recv_n(&responses, 10).len(), 10);
    let report = orch.shutdown();
    assert_eq!((report.submitted, report.completed), (10, 10));
    assert_no_threads_of("h-key");
}

#[test]
fn a_handler_capture_whose_drop_panics_does_not_break_shutdown() {
    quiet_panics();
    struct Grenade;
    impl Drop for Grenade {
        fn drop(&mut self) {
            if !thread::panicking() {
                panic!("{MARKER}: a captured value's Drop panicked");
            }
        }
    }
    let grenade = Grenade;
    let (orch, responses) = Orchestrator::builder()
        .workers(2)
        .thread_name("h-grenade")
        .build(move |x: u32| {
            let _keep = &grenade;
            x
        })
        .unwrap();
    for i in 0..5 {
        orch.submit(i).unwrap();
    }
    let report = within(WAIT, "shutdown", move || orch.shutdown());
    assert_eq!(report.completed, 5);
    assert_eq!(drain_after_shutdown(&responses).len(), 5);
    assert_no_threads_of("h-grenade");
}

// ---- 8. dropping a process iterator loses no input it pulled -----------------------------

#[test]
fn dropping_a_by_key_process_iterator_with_a_full_queue_loses_no_pulled_input() {
    for round in 0..5 {
        let (ran_tx, ran) = unbounded();
        let (orch, _responses) = Orchestrator::builder()
            .workers(2)
            .queue_capacity(2)
            .distribution(Distribution::by_key(|x: &u64| *x % 2))
            .thread_name(format!("h-proc{round}"))
            .build(move |x: u64| {
                thread::sleep(Duration::from_micros(300));
                ran_tx.send(x).unwrap();
                x
            })
            .unwrap();
        let pulled = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&pulled);
        let inputs = (0..1_000u64).map(move |x| {
            counter.fetch_add(1, Ordering::SeqCst);
            // Every key on one queue: its queue fills while the other idles.
            x * 2
        });
        let mut it = orch.process(inputs);
        for _ in 0..(3 + round) {
            it.next().unwrap();
        }
        drop(it);
        let report = orch.shutdown();
        let ran: Vec<u64> = ran.try_iter().collect();
        let pulled = pulled.load(Ordering::SeqCst);
        assert_eq!(
            ran.len(),
            pulled,
            "round {round}: an input pulled from the source vanished"
        );
        assert_eq!(report.completed as usize, pulled);
        assert_eq!(report.undelivered as usize, pulled - (3 + round));
    }
}

// ---- 9. build and drop leave memory flat ------------------------------------------------

#[test]
fn by_key_build_and_drop_cycles_release_the_key_function() {
    let big = Arc::new(vec![0u8; 1 << 20]);
    for _ in 0..20 {
        let captured = Arc::clone(&big);
        let (orch, _responses) = Orchestrator::builder()
            .workers(2)
            .distribution(Distribution::by_key(move |x: &u64| {
                *x + captured.len() as u64
            }))
            .build(|x: u64| x)
            .unwrap();
        assert_eq!(orch.call(1), Ok(1));
        drop(orch);
    }
    // A by_key never built drops its function too.
    let unused = Distribution::by_key({
        let captured = Arc::clone(&big);
        move |x: &u64| *x + captured.len() as u64
    });
    drop(channel_orchestrator::Builder::<u64, u64>::new().distribution(unused));
    assert_eq!(
        Arc::strong_count(&big),
        1,
        "a key function's captures leaked"
    );
}

// ---- 10. per-key queues wait for their own worker ----------------------------------------

#[test]
fn by_key_requests_of_a_worker_that_cannot_be_replaced_wait_and_come_back_at_shutdown() {
    quiet_panics();
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let init_broken = Arc::clone(&broken);
    let (orch, responses) = Orchestrator::builder()
        .workers(2)
        .distribution(Distribution::by_key(|r: &(u32, u32)| r.0))
        .thread_name("h-strand")
        .build_with_state(
            move |_| {
                assert!(!init_broken.load(Ordering::SeqCst), "{MARKER}: init fails");
            },
            |_: &mut (), (key, v): (u32, u32)| {
                assert!(v != u32::MAX, "{MARKER}: kill this worker");
                (key, v)
            },
        )
        .unwrap();
    // Find a key for each worker.
    let mut key_of = [None, None];
    for key in 0..64 {
        let w = orch.call((key, 0)).unwrap();
        let r = orch.submit((key, 1)).unwrap();
        let resp = responses.recv_timeout(WAIT).unwrap();
        assert_eq!(resp.id, r);
        let _ = w;
        key_of[resp.worker.index()].get_or_insert(key);
        if key_of.iter().all(Option::is_some) {
            break;
        }
    }
    let (dead_key, live_key) = (key_of[0].unwrap(), key_of[1].unwrap());
    broken.store(true, Ordering::SeqCst);
    // Worker 0's handler panics, its rebuild panics: its thread dies, replacements fail.
    orch.submit((dead_key, u32::MAX)).unwrap();
    assert!(matches!(
        responses.recv_timeout(WAIT).unwrap().outcome,
        Err(JobError::Panicked(_))
    ));
    for v in 10..15 {
        orch.submit((dead_key, v)).unwrap();
        orch.submit((live_key, v)).unwrap();
    }
    // The other worker's keys keep flowing; the dead worker's wait.
    let served = recv_n(&responses, 5);
    assert!(
        served
            .iter()
            .all(|r| r.outcome.as_ref().unwrap().0 == live_key)
    );
    assert!(responses.recv_timeout(Duration::from_millis(100)).is_err());
    let report = within(WAIT, "shutdown_now", move || orch.shutdown_now());
    let mut back: Vec<u32> = report
        .unstarted
        .iter()
        .map(|(_, (k, v))| {
            assert_eq!(*k, dead_key);
            *v
        })
        .collect();
    back.sort_unstable();
    assert_eq!(
        back,
        [10, 11, 12, 13, 14],
        "stranded requests come back in order of value"
    );
    assert_no_threads_of("h-strand");
}

// ---- 11. live state is right from the start ----------------------------------------------

#[test]
fn a_job_submitted_right_after_build_shows_its_worker_busy() {
    for round in 0..5 {
        let gate = Gate::new();
        let waiter = gate.waiter();
        let (orch, _responses) = Orchestrator::builder()
            .workers(1)
            .metrics_interval(Duration::from_millis(10))
            .build(move |x: u64| {
                waiter.pass(x);
                x
            })
            .unwrap();
        orch.submit(round).unwrap();
        gate.wait_started(1);
        let snap = wait_for(&orch, "the running job is in flight", |m| m.in_flight == 1);
        thread::sleep(Duration::from_millis(30)); // past every start-up event and a few ticks
        let snap2 = orch.metrics();
        for s in [&snap, &snap2] {
            assert_eq!(s.in_flight, 1);
            assert_eq!(
                s.workers[0].state,
                WorkerState::Busy,
                "round {round}: {s:#?}"
            );
        }
        gate.release(1);
        orch.shutdown();
    }
}

// ---- 12. a pipeline's busy means running the stage's function ------------------------------

#[test]
fn pipeline_bottleneck_is_the_slow_stage_not_the_one_waiting_to_hand_off() {
    let (p, responses) = Pipeline::builder()
        .queue_capacity(2)
        .metrics_interval(Duration::from_millis(40))
        .thread_name("h-bottle")
        .stage(1, |x: u64| x) // does nothing, then waits to hand off
        .stage(1, |x: u64| {
            thread::sleep(Duration::from_millis(2));
            x
        })
        .build()
        .unwrap();
    let p = Arc::new(p);
    // A producer keeps every queue full, so the first stage always waits on the second.
    let producer = {
        let p = Arc::clone(&p);
        thread::spawn(move || {
            for i in 0..150u64 {
                p.submit(i).unwrap();
            }
        })
    };
    let reader = thread::spawn(move || responses.iter().take(150).count());
    thread::sleep(Duration::from_millis(200));
    let snap = p.metrics();
    let busy = |s: usize| snap.stages[s].workers[0].busy;
    assert_eq!(
        snap.bottleneck(),
        Some(1),
        "stage busy: {} vs {}",
        busy(0),
        busy(1)
    );
    assert!(busy(0) < 0.5, "the do-nothing stage reads {} busy", busy(0));
    assert!(busy(1) > 0.5, "the slow stage reads {} busy", busy(1));
    producer.join().unwrap();
    assert_eq!(reader.join().unwrap(), 150);
    let p = Arc::into_inner(p).unwrap();
    assert_eq!(p.shutdown().completed, 150);
}

// ---- found while looking for more of the same -------------------------------------------

#[test]
fn absurd_pipeline_sizes_are_build_errors_not_aborts() {
    let e = Pipeline::builder()
        .queue_capacity(usize::MAX)
        .stage(1, |x: u32| x)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("queue_capacity"), "{e}");
    let e = Pipeline::builder()
        .response_capacity(usize::MAX)
        .stage(1, |x: u32| x)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("response_capacity"), "{e}");
    // The worker limit is for the whole pipeline: its stages' threads share one process.
    let e = Pipeline::builder()
        .stage(MAX_WORKERS / 2 + 1, |x: u32| x)
        .stage(MAX_WORKERS / 2 + 1, |x: u32| x)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("workers must be at most"), "{e}");
}

// ---- found by the chaos schedules' re-entrant and panicking-Drop requests -----------------

#[test]
fn a_call_into_its_own_per_key_queue_runs_inline_instead_of_deadlocking() {
    let me: SelfRef<u64, u64> = Arc::default();
    let inner = Arc::clone(&me);
    let (orch, _responses) = Orchestrator::builder()
        .workers(2)
        .distribution(Distribution::by_key(|r: &u64| *r % 2))
        .thread_name("h-keyself")
        .build(move |x: u64| {
            if x >= 100 {
                // The same key: the nested request's queue is this very worker's.
                return inner.get().unwrap().call(x - 100).unwrap() + 1;
            }
            x
        })
        .unwrap();
    me.set(orch.submitter()).unwrap();
    let sub = orch.submitter();
    assert_eq!(
        within(WAIT, "nested per-key call", move || sub.call(102)),
        Ok(3)
    );
    // Two workers calling into each other's keys at once never wait on each other forever.
    let sub = orch.submitter();
    let (a, b) = within(WAIT, "crossed per-key calls", move || {
        let s2 = sub.clone();
        let t = thread::spawn(move || s2.call(101)); // key 1 calls key 0
        (sub.call(100), t.join().unwrap())
    });
    assert_eq!((a, b), (Ok(1), Ok(2)));
    within(WAIT, "shutdown", move || orch.shutdown());
    assert_no_threads_of("h-keyself");
}

#[test]
fn shutdown_returns_when_the_only_worker_left_waits_on_its_own_queued_call() {
    quiet_panics();
    let inits = Arc::new(AtomicUsize::new(0));
    let me: SelfRef<u32, u32> = Arc::default();
    let (counted, inner) = (Arc::clone(&inits), Arc::clone(&me));
    let (started_tx, started) = bounded::<()>(4);
    let (orch, _responses) = Orchestrator::builder()
        .workers(2)
        .thread_name("h-lastwait")
        .build_with_state(
            // The two first starts succeed; every rebuild and replacement fails.
            move |_| {
                assert!(
                    counted.fetch_add(1, Ordering::SeqCst) < 2,
                    "{MARKER}: init fails"
                );
            },
            move |_: &mut (), r: u32| match r {
                // Dies a little later: its rebuild fails, and so does every replacement.
                0 => {
                    started_tx.send(()).unwrap();
                    thread::sleep(Duration::from_millis(50));
                    panic!("{MARKER}: handler panics")
                }
                // Calls its own pool while the other worker is busy, not blocked: it waits.
                1 => {
                    started_tx.send(()).unwrap();
                    match inner.get().unwrap().call(2) {
                        Ok(v) => v,
                        Err(CallError::Cancelled(v)) => v + 100,
                        Err(e) => panic!("unexpected {e:?}"),
                    }
                }
                n => n,
            },
        )
        .unwrap();
    me.set(orch.submitter()).unwrap();
    orch.submit(0).unwrap();
    orch.submit(1).unwrap();
    started.recv_timeout(WAIT).unwrap();
    started.recv_timeout(WAIT).unwrap();
    let report = within(
        WAIT,
        "shutdown with the last worker waiting on its own pool",
        move || orch.shutdown(),
    );
    assert_eq!(
        report.submitted,
        report.completed + report.failed + report.cancelled + report.unstarted.len() as u64
    );
    assert_no_threads_of("h-lastwait");
}

#[test]
fn dropping_an_orchestrator_with_unstarted_requests_whose_drop_panics_does_not_panic() {
    quiet_panics();
    let inits = Arc::new(AtomicUsize::new(0));
    let drops = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&inits);
    let (orch, _responses) = Orchestrator::builder()
        .workers(1)
        .thread_name("h-dropbomb")
        .build_with_state(
            move |_| {
                assert!(
                    counted.fetch_add(1, Ordering::SeqCst) == 0,
                    "{MARKER}: init fails"
                );
            },
            |_: &mut (), b: Bomb| {
                let kill = b.value == 0;
                std::mem::forget(b);
                assert!(!kill, "{MARKER}: handler panics");
                0u32
            },
        )
        .unwrap();
    let bomb = |value, explode| Bomb {
        value,
        explode,
        drops: Arc::clone(&drops),
    };
    orch.submit(bomb(0, false)).map_err(|_| ()).unwrap();
    for v in 1..5 {
        orch.submit(bomb(v, true)).map_err(|_| ()).unwrap();
    }
    // The only worker dies and cannot be replaced: the four come back unstarted to a drop.
    let dropped = within(WAIT, "drop", move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(orch))).is_ok()
    });
    assert!(dropped, "a request's Drop escaped drop(orch)");
    assert_eq!(
        drops.load(Ordering::SeqCst),
        4,
        "each unstarted request dropped once"
    );
    assert_no_threads_of("h-dropbomb");
}

#[test]
fn a_queue_capacity_smaller_than_the_worker_count_still_works_for_every_distribution() {
    // Per-worker queues split the capacity: some get none (a rendezvous queue).
    for round in 0..3 {
        let builder = Orchestrator::builder()
            .workers(4)
            .queue_capacity(1)
            .thread_name(format!("h-tiny{round}"));
        let builder = match round {
            0 => builder.distribution(Distribution::Shared),
            1 => builder.distribution(Distribution::RoundRobin),
            _ => builder.distribution(Distribution::by_key(|x: &u64| *x % 7)),
        };
        let (orch, responses) = builder
            .build(|x: u64| {
                thread::sleep(Duration::from_micros(50));
                x
            })
            .unwrap();
        let sum: u64 = within(WAIT, "process", {
            let sub = orch.submitter();
            move || (0..200u64).map(|x| sub.call(x).unwrap()).sum()
        });
        assert_eq!(sum, (0..200).sum::<u64>());
        let streamed: u64 = orch.process(0..300u64).map(|r| r.outcome.unwrap()).sum();
        assert_eq!(streamed, (0..300).sum::<u64>());
        for x in 0..50 {
            orch.submit(x).unwrap();
        }
        let report = within(WAIT, "shutdown_now", move || orch.shutdown_now());
        let answered = drain_after_shutdown(&responses).len() as u64;
        assert_eq!(
            answered + report.unstarted.len() as u64,
            50,
            "round {round}"
        );
        assert_no_threads_of(&format!("h-tiny{round}"));
    }
}

// ---- the new surfaces under the same scrutiny -------------------------------------------

#[test]
fn a_timed_call_into_its_own_busy_pool_expires_instead_of_hanging_and_is_counted() {
    let me: SelfRef<u64, u64> = Arc::default();
    let inner = Arc::clone(&me);
    let (orch, responses) = Orchestrator::builder()
        .workers(1)
        .thread_name("h-selftimed")
        .build(move |x: u64| {
            if x == 1 {
                // The only worker waits on its own queue: only the timeout can end it.
                match inner
                    .get()
                    .unwrap()
                    .call_timeout(2, Duration::from_millis(30))
                {
                    Err(CallTimeoutError::Expired) => 100,
                    other => panic!("expected Expired, got {other:?}"),
                }
            } else {
                x
            }
        })
        .unwrap();
    me.set(orch.submitter()).unwrap();
    orch.submit(1).unwrap();
    let r = responses.recv_timeout(WAIT).unwrap();
    assert_eq!(r.outcome, Ok(100));
    let report = within(WAIT, "shutdown", move || orch.shutdown());
    // The nested request was taken after its deadline: not run, failed, its answer undelivered.
    assert_eq!(
        (report.submitted, report.completed, report.failed),
        (2, 1, 1)
    );
    assert_eq!(report.undelivered, 1);
    assert_no_threads_of("h-selftimed");
}

#[test]
fn a_pipeline_submitter_after_shutdown_gets_its_request_back() {
    let (p, _responses) = Pipeline::builder()
        .thread_name("h-psub")
        .stage(1, |x: u64| x + 1)
        .build()
        .unwrap();
    let sub = p.submitter();
    assert_eq!(sub.call(1), Ok(2));
    p.shutdown();
    assert!(matches!(
        sub.submit(5),
        Err(channel_orchestrator::SubmitError::ShutDown(5))
    ));
    assert!(matches!(sub.call(6), Err(CallError::ShutDown(6))));
    assert!(matches!(
        sub.call_timeout(7, WAIT),
        Err(CallTimeoutError::ShutDown(7))
    ));
    assert_no_threads_of("h-psub");
}

#[test]
fn dropping_a_pipeline_inside_its_own_stage_returns_and_the_pipeline_winds_down() {
    let (slot, inner) = bounded::<Pipeline<u64, u64>>(1);
    let (dropped_tx, dropped) = bounded(1);
    let (p, responses) = Pipeline::builder()
        .thread_name("h-pself")
        .stage(1, move |x: u64| {
            if x == 0 {
                drop(inner.try_recv().unwrap()); // must not wait for this very stage
                dropped_tx.send(()).unwrap();
            }
            x
        })
        .stage(1, |x: u64| x * 2)
        .build()
        .unwrap();
    let sub = p.submitter();
    for x in 1..10 {
        p.submit(x).unwrap();
    }
    slot.send(p).unwrap();
    sub.submit(0).unwrap();
    dropped.recv_timeout(WAIT).expect("the drop returned");
    let answered = within(WAIT, "the pipeline winds down", move || {
        responses.iter().count()
    });
    assert_eq!(answered, 10, "every accepted request answered");
    assert_no_threads_of("h-pself");
    eventually("the teardown thread ends", || {
        common::thread_names()
            .iter()
            .all(|n| n != "pipeline-teardo")
    });
}
