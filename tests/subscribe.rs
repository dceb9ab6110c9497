//! Metrics subscriptions: cadence, sequence numbers, eviction, unsubscribing, many subscribers, shutdown.

mod common;

use common::{WAIT, assert_summary_is_report, quiet_panics, wait_for, within};

use std::thread;
use std::time::{Duration, Instant};

use channel_orchestrator::crossbeam_channel::{Receiver, RecvTimeoutError};
use channel_orchestrator::{
    MetricsEvent, MetricsSnapshot, Orchestrator, ShutdownReport, ShutdownSummary, WorkerEvent,
    WorkerEventKind,
};

/// Panics whose message holds this tag are expected and not printed.
const PANIC_TAG: &str = "intentional test panic";

/// Every event of a subscription up to and including `Shutdown`; checks that it then
/// disconnected.
fn events_until_shutdown(events: &Receiver<MetricsEvent>) -> (Vec<MetricsEvent>, ShutdownSummary) {
    let mut seen = Vec::new();
    loop {
        match events.recv_timeout(WAIT) {
            Ok(MetricsEvent::Shutdown(summary)) => {
                assert_eq!(
                    events.recv_timeout(WAIT).map(|e| e.seq()),
                    Err(RecvTimeoutError::Disconnected),
                    "the subscription must disconnect after Shutdown"
                );
                return (seen, summary);
            }
            Ok(event) => seen.push(event),
            Err(e) => panic!("no Shutdown event after {} events: {e:?}", seen.len()),
        }
    }
}

/// Every event left in an ended subscription; fails if it does not end.
fn remaining(events: &Receiver<MetricsEvent>) -> Vec<MetricsEvent> {
    let mut seen = Vec::new();
    loop {
        match events.recv_timeout(WAIT) {
            Ok(event) => seen.push(event),
            Err(RecvTimeoutError::Disconnected) => return seen,
            Err(RecvTimeoutError::Timeout) => panic!("the subscription never disconnected"),
        }
    }
}

fn assert_consecutive(seqs: &[u64]) {
    for pair in seqs.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "a gap in the sequence numbers: {seqs:?}"
        );
    }
}

fn worker_event(event: &MetricsEvent) -> Option<&WorkerEvent> {
    match event {
        MetricsEvent::Worker(w) => Some(w),
        _ => None,
    }
}

#[test]
fn snapshot_cadence_within_tolerance() {
    within(WAIT, "the test", || {
        let interval = Duration::from_millis(50);
        let window = Duration::from_secs(1);
        let (orch, _responses) = Orchestrator::builder()
            .workers(1)
            .metrics_interval(interval)
            .build(|i: u32| i)
            .unwrap();
        let events = orch.subscribe();
        // Measure the window on the snapshots' own clock, so a late reader counts the same.
        let mut snapshots: Vec<MetricsSnapshot> = Vec::new();
        loop {
            match events.recv_timeout(WAIT).expect("snapshots keep coming") {
                MetricsEvent::Snapshot(s) => {
                    let done = snapshots
                        .first()
                        .is_some_and(|first| s.uptime - first.uptime >= window);
                    snapshots.push(s);
                    if done {
                        break;
                    }
                }
                MetricsEvent::Worker(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        // One snapshot at the start of the window, then one per interval: 20 + 1 expected.
        // Ticks never come early; a loaded machine can only drop some.
        let n = snapshots.len();
        assert!((11..=22).contains(&n), "{n} snapshots in {window:?}");
        let span = snapshots[n - 1].uptime - snapshots[0].uptime;
        let mean = span / (n as u32 - 1);
        assert!(
            mean >= interval.mul_f64(0.8) && mean <= interval * 2,
            "mean gap {mean:?}, interval {interval:?}"
        );
        for pair in snapshots.windows(2) {
            assert!(pair[1].uptime > pair[0].uptime, "uptime went back");
            assert!(pair[1].seq > pair[0].seq);
        }
        drop(orch);
    });
}

#[test]
fn sequence_numbers_are_consecutive_for_a_live_subscriber() {
    quiet_panics();
    within(WAIT, "the test", || {
        const WORKERS: usize = 2;
        const JOBS: u32 = 60;
        let (orch, responses) = Orchestrator::builder()
            .workers(WORKERS)
            .metrics_interval(Duration::from_millis(5))
            .build(|i: u32| {
                thread::sleep(Duration::from_micros(500));
                assert!(i % 10 != 3, "{PANIC_TAG} on {i}");
                i
            })
            .unwrap();
        let events = orch.subscribe_with_capacity(10_000);
        for i in 0..JOBS {
            orch.submit(i).unwrap();
        }
        for _ in 0..JOBS {
            responses.recv_timeout(WAIT).unwrap();
        }
        let report = orch.shutdown();
        let (seen, summary) = events_until_shutdown(&events);
        assert_summary_is_report(&summary, &report);

        let seqs: Vec<u64> = seen
            .iter()
            .map(MetricsEvent::seq)
            .chain([summary.seq])
            .collect();
        assert_consecutive(&seqs);
        let kinds: Vec<&WorkerEventKind> = seen
            .iter()
            .filter_map(worker_event)
            .map(|w| &w.kind)
            .collect();
        let panicked = kinds
            .iter()
            .filter(|k| matches!(k, WorkerEventKind::Panicked { .. }))
            .count();
        let restarted = kinds
            .iter()
            .filter(|k| matches!(k, WorkerEventKind::Restarted))
            .count();
        assert_eq!((panicked, restarted), (6, 6), "{kinds:?}");
        assert!(
            seen.iter().any(|e| matches!(e, MetricsEvent::Snapshot(_))),
            "snapshots are part of the sequence"
        );
        // Every worker reports that it stopped, before the final event.
        for w in 0..WORKERS {
            assert!(
                seen.iter()
                    .filter_map(worker_event)
                    .any(|e| e.worker.index() == w && e.kind == WorkerEventKind::Stopped),
                "no Stopped event for worker {w}"
            );
        }
    });
}

#[test]
fn sequence_numbers_stay_consecutive_while_metrics_is_polled() {
    within(WAIT, "the test", || {
        let (orch, _responses) = Orchestrator::builder()
            .workers(1)
            .metrics_interval(Duration::from_millis(5))
            .build(|i: u32| i)
            .unwrap();
        let events = orch.subscribe_with_capacity(10_000);
        for _ in 0..20 {
            let _ = orch.metrics();
            thread::sleep(Duration::from_millis(3));
        }
        let report = orch.shutdown();
        let (seen, summary) = events_until_shutdown(&events);
        assert_summary_is_report(&summary, &report);
        let seqs: Vec<u64> = seen
            .iter()
            .map(MetricsEvent::seq)
            .chain([summary.seq])
            .collect();
        assert_consecutive(&seqs);
    });
}

#[test]
fn stalled_subscriber_is_evicted_and_keeps_its_buffer() {
    within(WAIT, "the test", || {
        const CAPACITY: usize = 3;
        let (orch, responses) = Orchestrator::builder()
            .workers(2)
            .metrics_interval(Duration::from_millis(10))
            .build(|i: u32| i)
            .unwrap();
        let live = orch.subscribe_with_capacity(10_000);
        let stalled = orch.subscribe_with_capacity(CAPACITY);
        let reader = thread::spawn(move || events_until_shutdown(&live));

        // Let the stalled buffer fill without touching metrics() (which would add seq gaps).
        let deadline = Instant::now() + WAIT;
        while stalled.len() < CAPACITY {
            assert!(Instant::now() < deadline, "the stalled buffer never filled");
            thread::sleep(Duration::from_millis(1));
        }
        let m = wait_for(&orch, "the stalled subscriber is evicted", |m| {
            m.evicted_subscribers == 1
        });
        assert_eq!(m.subscribers, 1, "only the live subscriber is left");

        // Workers are not held up by it: jobs still flow.
        for i in 0..100 {
            orch.submit(i).unwrap();
        }
        for _ in 0..100 {
            responses.recv_timeout(WAIT).unwrap();
        }

        // It receives exactly what it had buffered, then sees the channel disconnected.
        let buffered = remaining(&stalled);
        assert_eq!(buffered.len(), CAPACITY, "{buffered:?}");
        let seqs: Vec<u64> = buffered.iter().map(MetricsEvent::seq).collect();
        assert_consecutive(&seqs);
        assert!(
            buffered
                .iter()
                .all(|e| !matches!(e, MetricsEvent::Shutdown(_)))
        );

        let report = orch.shutdown();
        let (seen, summary) = reader.join().unwrap();
        assert_summary_is_report(&summary, &report);
        let last_buffered = seqs[CAPACITY - 1];
        assert!(
            seen.iter()
                .any(|e| matches!(e, MetricsEvent::Snapshot(s) if s.seq > last_buffered)),
            "the live subscriber received the snapshot that evicted the stalled one: {seen:#?}"
        );
    });
}

#[test]
fn dropping_the_receiver_unsubscribes() {
    within(WAIT, "the test", || {
        let (orch, _responses) = Orchestrator::builder()
            .workers(1)
            .metrics_interval(Duration::from_millis(10))
            .build(|i: u32| i)
            .unwrap();
        let a = orch.subscribe();
        let b = orch.subscribe();
        let c = orch.subscribe();
        assert_eq!(orch.metrics().subscribers, 3);
        drop(b);
        let m = wait_for(&orch, "the dropped subscriber is removed", |m| {
            m.subscribers == 2
        });
        assert_eq!(m.evicted_subscribers, 0, "dropping is not an eviction");
        let report = orch.shutdown();
        for events in [&a, &c] {
            assert_summary_is_report(&events_until_shutdown(events).1, &report);
        }
    });
}

/// A receiver dropped while its buffer is full is removed (and, indistinguishable from a
/// stalled one without a send, counted as evicted).
#[test]
fn a_dropped_full_subscriber_is_removed() {
    within(WAIT, "the test", || {
        const CAPACITY: usize = 2;
        let (orch, _responses) = Orchestrator::builder()
            .workers(1)
            .metrics_interval(Duration::from_millis(50))
            .build(|i: u32| i)
            .unwrap();
        let events = orch.subscribe_with_capacity(CAPACITY);
        let deadline = Instant::now() + WAIT;
        while events.len() < CAPACITY {
            assert!(Instant::now() < deadline, "the buffer never filled");
            thread::sleep(Duration::from_millis(1));
        }
        drop(events); // well before the next snapshot is due
        let m = wait_for(&orch, "the dropped subscriber is removed", |m| {
            m.subscribers == 0
        });
        // Without a send, a receiver dropped while full looks like a stalled one.
        assert_eq!(m.evicted_subscribers, 1, "{m:#?}");
    });
}

#[test]
fn hundred_subscribers_all_get_the_shutdown_event() {
    within(WAIT, "the test", || {
        const SUBSCRIBERS: usize = 100;
        let (orch, responses) = Orchestrator::builder()
            .workers(4)
            .metrics_interval(Duration::from_millis(50))
            .build(|i: u32| i)
            .unwrap();
        let subscriptions: Vec<_> = (0..SUBSCRIBERS).map(|_| orch.subscribe()).collect();
        assert_eq!(orch.metrics().subscribers, SUBSCRIBERS);
        for i in 0..500 {
            orch.submit(i).unwrap();
        }
        for _ in 0..500 {
            responses.recv_timeout(WAIT).unwrap();
        }
        let report = orch.shutdown();
        assert_eq!(report.completed, 500);
        let mut last_seq = None;
        for events in &subscriptions {
            let (seen, summary) = events_until_shutdown(events);
            assert_summary_is_report(&summary, &report);
            assert_eq!(*last_seq.get_or_insert(summary.seq), summary.seq);
            assert!(
                seen.iter().all(|e| e.seq() < summary.seq),
                "Shutdown is last"
            );
        }
    });
}

/// Builds a pool with a mix of subscribers — stalled, live, dropped — and some work done.
#[allow(clippy::type_complexity)]
fn pool_with_subscribers(
    metrics: bool,
) -> (
    Orchestrator<u32, u32>,
    Receiver<channel_orchestrator::Response<u32>>,
    Vec<Receiver<MetricsEvent>>,
    Vec<Receiver<MetricsEvent>>,
) {
    let (orch, responses) = Orchestrator::builder()
        .workers(2)
        .queue_capacity(16)
        .metrics(metrics)
        .metrics_interval(Duration::from_millis(5))
        .build(|i: u32| {
            thread::sleep(Duration::from_micros(200));
            i
        })
        .unwrap();
    let stalled: Vec<_> = (0..3).map(|_| orch.subscribe_with_capacity(1)).collect();
    let live: Vec<_> = (0..2)
        .map(|_| orch.subscribe_with_capacity(10_000))
        .collect();
    for _ in 0..2 {
        drop(orch.subscribe());
    }
    for i in 0..40 {
        orch.submit(i).unwrap();
    }
    (orch, responses, stalled, live)
}

#[test]
fn shutdown_with_subscribers_attached_never_hangs() {
    type Stop = fn(Orchestrator<u32, u32>) -> Option<ShutdownReport<u32>>;
    let modes: [(&str, Stop); 4] = [
        ("shutdown", |o| Some(o.shutdown())),
        ("shutdown_now", |o| Some(o.shutdown_now())),
        ("shutdown_timeout", |o| {
            Some(o.shutdown_timeout(Duration::from_millis(20)))
        }),
        ("drop", |o| {
            drop(o);
            None
        }),
    ];
    for metrics in [true, false] {
        for (name, stop) in modes {
            let (orch, responses, stalled, live) = pool_with_subscribers(metrics);
            let report = within(WAIT, name, move || stop(orch));
            let answered = responses.iter().count() as u64;
            for events in &live {
                let (_, summary) = events_until_shutdown(events);
                if let Some(report) = &report {
                    assert_summary_is_report(&summary, report);
                }
                assert_eq!(summary.submitted, 40, "{name}");
                assert_eq!(summary.completed, answered, "{name}");
            }
            for events in &stalled {
                // Evicted or not, the stream ends after at most its buffer and the Shutdown slot.
                let rest = remaining(events);
                assert!(rest.len() <= 2, "{name}: {rest:?}");
            }
        }
    }
}

#[test]
fn a_full_subscriber_still_gets_the_shutdown_event() {
    within(WAIT, "the test", || {
        let (orch, _responses) = Orchestrator::builder()
            .workers(1)
            .metrics_interval(Duration::from_secs(3600)) // no snapshot during the test
            .build(|i: u32| i)
            .unwrap();
        // The Started event (sequence number 1) has gone out before we subscribe.
        wait_for(&orch, "the worker's Started event", |m| m.seq >= 1);
        let events = orch.subscribe_with_capacity(1);
        let report = orch.shutdown();
        // The worker's Stopped event fills the buffer; the reserved slot takes Shutdown.
        let (seen, summary) = events_until_shutdown(&events);
        assert_summary_is_report(&summary, &report);
        assert!(
            matches!(
                seen.as_slice(),
                [MetricsEvent::Worker(WorkerEvent {
                    kind: WorkerEventKind::Stopped,
                    ..
                })]
            ),
            "{seen:?}"
        );
    });
}

#[test]
fn dropping_the_orchestrator_sends_the_shutdown_event() {
    within(WAIT, "the test", || {
        let (orch, responses) = Orchestrator::builder()
            .workers(2)
            .build(|i: u32| i)
            .unwrap();
        let events = orch.subscribe();
        for i in 0..10 {
            orch.submit(i).unwrap();
        }
        drop(orch);
        let (_, summary) = events_until_shutdown(&events);
        assert_eq!((summary.submitted, summary.completed), (10, 10));
        assert_eq!(responses.iter().count(), 10);
    });
}
