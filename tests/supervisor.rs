//! Supervision seen through metrics: worker events after panics, dead threads replaced, pool back to full size.

mod common;

use common::{WAIT, assert_summary_is_report, quiet_panics, wait_for, within};

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use channel_orchestrator::crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use channel_orchestrator::{
    CallError, JobError, MetricsEvent, Orchestrator, ShutdownSummary, WorkerEvent, WorkerEventKind,
    WorkerId, WorkerState,
};

/// Panics whose message holds this tag are expected and not printed.
const PANIC_TAG: &str = "intentional test panic";

/// Reads worker events for `worker` until one matches `last`; returns them all, in order.
fn worker_events_until(
    events: &Receiver<MetricsEvent>,
    worker: WorkerId,
    last: impl Fn(&WorkerEventKind) -> bool,
) -> Vec<WorkerEvent> {
    let mut seen = Vec::new();
    loop {
        match events.recv_timeout(WAIT) {
            Ok(MetricsEvent::Worker(event)) if event.worker == worker => {
                let done = last(&event.kind);
                seen.push(event);
                if done {
                    return seen;
                }
            }
            Ok(MetricsEvent::Shutdown(_)) => panic!("Shutdown before the expected event: {seen:?}"),
            Ok(_) => {}
            Err(e) => panic!("worker {worker}: expected event missing ({e:?}) after {seen:?}"),
        }
    }
}

/// Reads a subscription up to its `Shutdown` event, returning the worker events before it.
fn worker_events_until_shutdown(
    events: &Receiver<MetricsEvent>,
) -> (Vec<WorkerEvent>, ShutdownSummary) {
    let mut seen = Vec::new();
    loop {
        match events.recv_timeout(WAIT) {
            Ok(MetricsEvent::Worker(event)) => seen.push(event),
            Ok(MetricsEvent::Shutdown(summary)) => return (seen, summary),
            Ok(_) => {}
            Err(e) => panic!("no Shutdown event: {e:?}"),
        }
    }
}

#[test]
fn panicked_then_restarted_events_carry_the_message() {
    quiet_panics();
    within(WAIT, "the test", || {
        // One worker, so the follow-up call runs where the failures happened and carries
        // their batched counts out (see the lag bug in tests/metrics.rs).
        const WORKERS: usize = 1;
        let inits = Arc::new(AtomicUsize::new(0));
        let (orch, responses) = Orchestrator::builder()
            .workers(WORKERS)
            .build_with_state(
                {
                    let inits = Arc::clone(&inits);
                    move |_| inits.fetch_add(1, Ordering::SeqCst)
                },
                |_: &mut usize, i: u32| {
                    assert!(i != 13, "{PANIC_TAG}: unlucky {i}");
                    i
                },
            )
            .unwrap();
        let events = orch.subscribe_with_capacity(10_000);

        let id = orch.submit(13).unwrap();
        let response = responses.recv_timeout(WAIT).unwrap();
        assert_eq!(response.id, id);
        assert!(
            matches!(&response.outcome, Err(JobError::Panicked(m)) if m.contains("unlucky 13")),
            "{:?}",
            response.outcome
        );
        let seen = worker_events_until(&events, response.worker, |k| {
            matches!(k, WorkerEventKind::Restarted)
        });
        let kinds: Vec<_> = seen
            .iter()
            .map(|e| &e.kind)
            .filter(|k| !matches!(k, WorkerEventKind::Started))
            .collect();
        match kinds.as_slice() {
            [
                WorkerEventKind::Panicked { request, message },
                WorkerEventKind::Restarted,
            ] => {
                assert_eq!(*request, id);
                assert!(message.contains("unlucky 13"), "{message}");
            }
            other => panic!("expected Panicked then Restarted, got {other:?}"),
        }

        // The same through `call`, and the worker keeps serving afterwards.
        match orch.call(13) {
            Err(CallError::Failed(JobError::Panicked(m))) => assert!(m.contains("unlucky 13")),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(orch.call(7), Ok(7));
        // Restarts come from events; failures from the workers' batched counts.
        wait_for(&orch, "two restarts and two failures are counted", |m| {
            let sum = |f: fn(&channel_orchestrator::WorkerSnapshot) -> u64| {
                m.workers.iter().map(f).sum::<u64>()
            };
            sum(|w| w.restarts) == 2 && sum(|w| w.failed) == 2
        });
        assert_eq!(
            inits.load(Ordering::SeqCst),
            WORKERS + 2,
            "init ran once per worker, and once per panic"
        );

        let report = orch.shutdown();
        assert_eq!(
            (report.submitted, report.completed, report.failed),
            (3, 1, 2)
        );
        let (worker_events, summary) = worker_events_until_shutdown(&events);
        assert_summary_is_report(&summary, &report);
        let panicked = worker_events
            .iter()
            .filter(|e| matches!(&e.kind, WorkerEventKind::Panicked { message, .. } if message.contains("unlucky 13")))
            .count();
        assert_eq!(
            panicked, 1,
            "the second panic, from call: {worker_events:?}"
        );
    });
}

/// A request for the pool below.
enum Job {
    Work(u32),
    Panic,
    /// Reports which worker took it, then waits for the gate.
    Hold {
        took: Sender<WorkerId>,
        gate: Receiver<()>,
    },
}

/// Submits one `Hold` per worker and returns the set of workers that took one while all were held.
fn workers_serving(
    orch: &Orchestrator<Job, u32>,
    responses: &Receiver<channel_orchestrator::Response<u32>>,
    workers: usize,
) -> BTreeSet<usize> {
    let (took, taken) = unbounded();
    let (release, gate) = bounded::<()>(0);
    for _ in 0..workers {
        orch.submit(Job::Hold {
            took: took.clone(),
            gate: gate.clone(),
        })
        .unwrap();
    }
    let mut serving = BTreeSet::new();
    for _ in 0..workers {
        match taken.recv_timeout(WAIT) {
            Ok(w) => assert!(serving.insert(w.index()), "worker {w} took two held jobs"),
            Err(_) => panic!("only workers {serving:?} are serving"),
        }
    }
    drop(release);
    for _ in 0..workers {
        responses.recv_timeout(WAIT).unwrap();
    }
    serving
}

#[test]
fn dead_worker_thread_is_replaced_and_pool_returns_to_full_size() {
    quiet_panics();
    within(WAIT, "the test", || {
        const WORKERS: usize = 3;
        const WORK: u32 = 100;
        // Per worker: how often `init` ran. Its second run panics: that is the rebuild after
        // the handler panic, so the thread dies; the replacement's `init` (third run) succeeds.
        let inits: Arc<Vec<AtomicUsize>> =
            Arc::new((0..WORKERS).map(|_| AtomicUsize::new(0)).collect());
        let (orch, responses) = Orchestrator::builder()
            .workers(WORKERS)
            .metrics_interval(Duration::from_millis(10))
            .build_with_state(
                {
                    let inits = Arc::clone(&inits);
                    move |me: WorkerId| {
                        let run = inits[me.index()].fetch_add(1, Ordering::SeqCst);
                        assert!(run != 1, "{PANIC_TAG}: init fails on its second run");
                        me
                    }
                },
                |me: &mut WorkerId, job: Job| match job {
                    Job::Work(i) => i,
                    Job::Panic => panic!("{PANIC_TAG}: handler"),
                    Job::Hold { took, gate } => {
                        let _ = took.send(*me);
                        let _ = gate.recv_timeout(WAIT);
                        0
                    }
                },
            )
            .unwrap();
        let events = orch.subscribe_with_capacity(10_000);

        let id = orch.submit(Job::Panic).unwrap();
        let response = responses.recv_timeout(WAIT).unwrap();
        assert_eq!(response.id, id);
        assert!(matches!(response.outcome, Err(JobError::Panicked(_))));
        let dead = response.worker;

        let seen = worker_events_until(&events, dead, |k| matches!(k, WorkerEventKind::Restarted));
        let kinds: Vec<_> = seen
            .iter()
            .map(|e| &e.kind)
            .filter(|k| !matches!(k, WorkerEventKind::Started))
            .collect();
        match kinds.as_slice() {
            [
                WorkerEventKind::Panicked { request, .. },
                WorkerEventKind::Died(message),
                WorkerEventKind::Restarted,
            ] => {
                assert_eq!(*request, id);
                assert!(
                    message.contains("init fails on its second run"),
                    "{message}"
                );
            }
            other => panic!("expected Panicked, Died, Restarted; got {other:?}"),
        }
        assert_eq!(
            inits[dead.index()].load(Ordering::SeqCst),
            3,
            "first init, failed rebuild, replacement"
        );

        // Back to full size: every worker takes one of the held jobs at the same time.
        let all: BTreeSet<usize> = (0..WORKERS).collect();
        assert_eq!(workers_serving(&orch, &responses, WORKERS), all);
        let m = wait_for(&orch, "the replacement is counted", |m| {
            m.workers[dead.index()].restarts == 1
        });
        assert_eq!(m.workers.len(), WORKERS);
        // The dead thread's last counts arrive before its death is announced.
        assert_eq!(m.workers[dead.index()].failed, 1);
        assert!(
            m.workers
                .iter()
                .all(|w| matches!(w.state, WorkerState::Idle | WorkerState::Busy)),
            "{m:#?}"
        );

        for i in 0..WORK {
            orch.submit(Job::Work(i)).unwrap();
        }
        for _ in 0..WORK {
            assert!(responses.recv_timeout(WAIT).unwrap().outcome.is_ok());
        }
        let report = orch.shutdown();
        let total = 1 + WORKERS as u64 + u64::from(WORK);
        assert_eq!(
            (report.submitted, report.completed, report.failed),
            (total, total - 1, 1)
        );
        let (after, summary) = worker_events_until_shutdown(&events);
        assert_summary_is_report(&summary, &report);
        for w in 0..WORKERS {
            assert!(
                after
                    .iter()
                    .any(|e| e.worker.index() == w && e.kind == WorkerEventKind::Stopped),
                "no Stopped event for worker {w}: {after:?}"
            );
        }
    });
}

/// `init` fails on every run after the first: the thread that loses its state can never be
/// replaced. The others drain the queue, and a plain `shutdown` must still return.
#[test]
fn shutdown_returns_while_a_replacement_keeps_failing() {
    quiet_panics();
    let (orch, responses, events) = within(WAIT, "the set-up", || {
        let inits: Arc<Vec<AtomicUsize>> = Arc::new((0..2).map(|_| AtomicUsize::new(0)).collect());
        let (orch, responses) = Orchestrator::builder()
            .workers(2)
            .build_with_state(
                move |me: WorkerId| {
                    let run = inits[me.index()].fetch_add(1, Ordering::SeqCst);
                    assert!(run == 0, "{PANIC_TAG}: init fails after its first run");
                },
                |_: &mut (), fail: bool| {
                    assert!(!fail, "{PANIC_TAG}: handler");
                },
            )
            .unwrap();
        let events = orch.subscribe_with_capacity(10_000);
        orch.submit(true).unwrap();
        (orch, responses, events)
    });
    let dead = responses.recv_timeout(WAIT).unwrap().worker;
    // Two deaths: the rebuild, then the first replacement.
    for _ in 0..2 {
        worker_events_until(&events, dead, |k| matches!(k, WorkerEventKind::Died(_)));
    }
    let report = within(Duration::from_secs(5), "shutdown", move || {
        for _ in 0..20 {
            orch.submit(false).unwrap();
        }
        orch.shutdown()
    });
    assert_eq!((report.completed, report.failed), (20, 1));
}

#[test]
fn worker_events_flow_with_metrics_off() {
    quiet_panics();
    within(WAIT, "the test", || {
        let (orch, _responses) = Orchestrator::builder()
            .workers(1)
            .metrics(false)
            .build(|i: u32| {
                assert!(i != 0, "{PANIC_TAG}: zero");
                i
            })
            .unwrap();
        let events = orch.subscribe();
        assert!(orch.call(0).is_err());
        assert_eq!(orch.call(1), Ok(1));
        let report = orch.shutdown();
        let (seen, summary) = worker_events_until_shutdown(&events);
        assert_summary_is_report(&summary, &report);
        let kinds: Vec<_> = seen
            .iter()
            .map(|e| &e.kind)
            .filter(|k| !matches!(k, WorkerEventKind::Started))
            .collect();
        assert!(
            matches!(
                kinds.as_slice(),
                [
                    WorkerEventKind::Panicked { message, .. },
                    WorkerEventKind::Restarted,
                    WorkerEventKind::Stopped,
                ] if message.contains("zero")
            ),
            "{kinds:?}"
        );
        assert_eq!((summary.completed, summary.failed), (1, 1));
    });
}
