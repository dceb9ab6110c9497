//! Resizing and elastic pools: `resize(n)` up and down under load for every distribution
//! that allows it, refusals, `elastic(min, max)` growing under load and shrinking after
//! `keep_alive`, and resizes racing a shutdown. Nothing queued is lost or run twice, and the
//! thread count follows the size.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use channel_orchestrator::{
    BuildErrorKind, Distribution, MetricsEvent, Orchestrator, ResizeError, WorkerEventKind,
};
use common::{WAIT, assert_no_threads_of, eventually, threads_of, within};

/// Worker threads of the pool named `name` now (`/proc` keeps 15 bytes of a thread name:
/// short pool names keep the `-worker-` part).
fn worker_threads(name: &str) -> usize {
    threads_of(name)
        .iter()
        .filter(|t| t.contains("-worker-"))
        .count()
}

/// Counts the `Added` and `Retired` events a subscription saw (it ends at shutdown).
fn added_and_retired(
    events: &channel_orchestrator::crossbeam_channel::Receiver<MetricsEvent>,
) -> (usize, usize) {
    let (mut added, mut retired) = (0, 0);
    for e in events.iter() {
        if let MetricsEvent::Worker(w) = e {
            match w.kind {
                WorkerEventKind::Added => added += 1,
                WorkerEventKind::Retired => retired += 1,
                _ => {}
            }
        }
    }
    (added, retired)
}

/// Ports the JSR-166 TCK's `testSetCorePoolSize` / `testSetMaximumPoolSize` (the size
/// changes at run time and the pool really runs that many at once) and
/// `testGetPoolSize` after a change (the thread count follows).
#[test]
fn resize_grows_and_shrinks_the_pool_and_loses_nothing() {
    for (round, dist) in [Distribution::Shared, Distribution::RoundRobin]
        .into_iter()
        .enumerate()
    {
        let name = format!("rzu{round}");
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let (r, m) = (Arc::clone(&running), Arc::clone(&most));
        let (orch, responses) = Orchestrator::builder()
            .workers(1)
            .queue_capacity(64)
            .distribution(dist)
            .thread_name(name.clone())
            .build(move |x: u64| {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                thread::sleep(Duration::from_millis(2));
                r.fetch_sub(1, Ordering::SeqCst);
                x
            })
            .unwrap();
        let events = orch.subscribe_with_capacity(1024);
        orch.resize(4).unwrap();
        assert_eq!(orch.workers(), 4);
        eventually("four worker threads", || worker_threads(&name) == 4);
        eventually("four workers in the metrics", || {
            orch.metrics().workers.len() == 4
        });
        for x in 0..60 {
            orch.submit(x).unwrap();
        }
        eventually("four jobs at once", || most.load(Ordering::SeqCst) == 4);
        // Shrink while the queue is full: the retired workers' queues are still served.
        for x in 60..120 {
            orch.submit(x).unwrap();
        }
        orch.resize(1).unwrap();
        let got: HashSet<u64> = (0..120)
            .map(|_| responses.recv_timeout(WAIT).unwrap().outcome.unwrap())
            .collect();
        assert_eq!(got.len(), 120, "every request answered once");
        eventually("one worker thread", || worker_threads(&name) == 1);
        eventually("one worker in the metrics", || {
            orch.metrics().workers.len() == 1
        });
        let report = within(WAIT, "shutdown", move || orch.shutdown());
        assert_eq!(report.completed, 120);
        assert_eq!(added_and_retired(&events), (3, 3));
        assert_no_threads_of(&name);
    }
}

/// Ports `testSetCorePoolSize_IllegalArgumentException` and
/// `testSetMaximumPoolSize_IllegalArgumentException` (a size of 0, or above the limit, is
/// refused and changes nothing), and `testSetCorePoolSize` after `shutdown` (refused).
#[test]
fn resize_refuses_zero_too_large_per_key_queues_and_a_shut_down_pool() {
    let (orch, _r) = Orchestrator::builder().workers(2).build(|x: u8| x).unwrap();
    assert_eq!(orch.resize(0), Err(ResizeError::Zero));
    assert_eq!(
        orch.resize(channel_orchestrator::MAX_WORKERS + 1),
        Err(ResizeError::TooLarge {
            limit: channel_orchestrator::MAX_WORKERS
        })
    );
    let sub = orch.submitter();
    orch.shutdown();
    assert_eq!(sub.resize(3), Err(ResizeError::ShutDown));
    let e = ResizeError::PerKeyQueues;
    assert_eq!(
        e.to_string(),
        "cannot resize a pool with per-key queues (by_key)"
    );

    let (keyed, _r) = Orchestrator::builder()
        .workers(2)
        .distribution(Distribution::by_key(|x: &u8| *x))
        .build(|x: u8| x)
        .unwrap();
    assert_eq!(keyed.resize(3), Err(ResizeError::PerKeyQueues));
    assert_eq!(keyed.workers(), 2);
}

/// Ports the TCK's constructor checks (`testConstructor3` … `testConstructor10`: a maximum
/// below the core size, or a keep-alive that cannot hold, is refused). Unlike Java's, our
/// minimum is 1: a pool always has a worker.
#[test]
fn elastic_settings_are_checked_at_build() {
    let kind = |r: Result<_, channel_orchestrator::BuildError>| r.map(|_| ()).unwrap_err().kind();
    assert_eq!(
        kind(Orchestrator::builder().elastic(0, 2).build(|x: u8| x)),
        BuildErrorKind::ZeroWorkers
    );
    assert_eq!(
        kind(Orchestrator::builder().elastic(3, 2).build(|x: u8| x)),
        BuildErrorKind::ElasticRange
    );
    assert_eq!(
        kind(
            Orchestrator::builder()
                .elastic(1, 2)
                .keep_alive(Duration::ZERO)
                .build(|x: u8| x)
        ),
        BuildErrorKind::ZeroKeepAlive
    );
    assert_eq!(
        kind(
            Orchestrator::builder()
                .elastic(1, 2)
                .distribution(Distribution::by_key(|x: &u8| *x))
                .build(|x: u8| x)
        ),
        BuildErrorKind::ElasticByKey
    );
    assert_eq!(
        kind(
            Orchestrator::builder()
                .elastic(1, usize::MAX)
                .build(|x: u8| x)
        ),
        BuildErrorKind::TooManyWorkers
    );
    // The longest keep-alive is only ever compared with: it builds, serves and shuts down.
    let (orch, _responses) = Orchestrator::builder()
        .elastic(1, 2)
        .keep_alive(Duration::MAX)
        .build(|x: u8| x)
        .expect("the longest keep-alive is valid");
    assert_eq!(orch.call(7), Ok(7));
    let report = orch.shutdown();
    assert_eq!((report.completed, report.unstarted.len()), (1, 0));
}

/// Ports `testAllowCoreThreadTimeOut_true` in spirit (idle workers above the minimum time
/// out after the keep-alive) and the TCK's growth toward the maximum under load.
#[test]
fn an_elastic_pool_grows_under_load_and_shrinks_back_after_keep_alive() {
    let name = "rze";
    let (orch, responses) = Orchestrator::builder()
        .elastic(1, 4)
        .keep_alive(Duration::from_millis(60))
        .thread_name(name)
        .build(|ms: u64| {
            thread::sleep(Duration::from_millis(ms));
            ms
        })
        .unwrap();
    let events = orch.subscribe_with_capacity(1024);
    assert_eq!(orch.workers(), 1);
    assert_eq!(worker_threads(name), 1);
    for _ in 0..80 {
        orch.submit(5).unwrap();
    }
    eventually("grows to the maximum", || orch.workers() == 4);
    eventually("four worker threads", || worker_threads(name) == 4);
    for _ in 0..80 {
        responses.recv_timeout(WAIT).unwrap();
    }
    // Idle now: back to the minimum after the keep-alive.
    eventually("shrinks to the minimum", || orch.workers() == 1);
    eventually("one worker thread", || worker_threads(name) == 1);
    // The retirement reaches the metrics thread as an event, just after the thread is gone.
    eventually("metrics list one worker", || {
        orch.metrics().workers.len() == 1
    });
    // It still works, and grows again.
    assert_eq!(orch.call(1), Ok(1));
    let report = within(WAIT, "shutdown", move || orch.shutdown());
    assert_eq!(report.completed, 81);
    // At least the growth to four and the shrink back; the last call may have grown the
    // pool again for a moment.
    let (added, retired) = added_and_retired(&events);
    assert!(
        added >= 3 && retired >= 3,
        "added {added}, retired {retired}"
    );
    assert_no_threads_of(name);
}

#[test]
fn resizes_at_random_moments_racing_submits_and_shutdowns_lose_nothing() {
    for seed in 0..12u64 {
        let name = format!("rzr{seed}");
        let (orch, responses) = Orchestrator::builder()
            .workers(2)
            .queue_capacity(8)
            .distribution(if seed % 2 == 0 {
                Distribution::Shared
            } else {
                Distribution::RoundRobin
            })
            .thread_name(name.clone())
            .build(|x: u64| {
                if x.is_multiple_of(7) {
                    thread::sleep(Duration::from_micros(300));
                }
                x
            })
            .unwrap();
        let sub = orch.submitter();
        let resizer = {
            let sub = orch.submitter();
            thread::spawn(move || {
                let mut r = common::Rng::new(seed + 1);
                for _ in 0..40 {
                    let _ = sub.resize(1 + r.below(5) as usize);
                    thread::sleep(Duration::from_micros(r.below(500)));
                }
            })
        };
        let producer = thread::spawn(move || {
            let mut accepted = 0u64;
            for x in 0..400 {
                if sub.submit(x).is_ok() {
                    accepted += 1;
                }
            }
            accepted
        });
        thread::sleep(Duration::from_millis(seed % 5));
        let stop = common::Stop::draw(&mut common::Rng::new(seed));
        let report = within(WAIT, "shutdown while resizing", move || stop.apply(orch));
        let accepted = producer.join().unwrap();
        resizer.join().unwrap();
        let answered = responses.iter().count() as u64;
        if let Some(report) = report {
            assert_eq!(
                answered + report.unstarted.len() as u64,
                accepted,
                "seed {seed}: {report:?}"
            );
            assert_eq!(report.submitted, accepted);
        } else {
            assert_eq!(answered, accepted, "seed {seed}: drop runs everything");
        }
        assert_no_threads_of(&name);
    }
}

#[test]
fn shrinking_never_strands_a_worker_waiting_on_its_own_pool() {
    use std::sync::OnceLock;
    for round in 0..4 {
        let name = format!("rzs{round}");
        let me: Arc<OnceLock<channel_orchestrator::Submitter<u64, u64>>> = Arc::default();
        let inner = Arc::clone(&me);
        let gate = common::Gate::new();
        let waiter = gate.waiter();
        let (orch, responses) = Orchestrator::builder()
            .workers(2)
            .thread_name(name.clone())
            .build(move |x: u64| match x {
                0 => {
                    waiter.pass(0); // holds one worker
                    0
                }
                1 => inner.get().unwrap().call(2).unwrap() + 10, // waits: the other is busy
                n => n,
            })
            .unwrap();
        me.set(orch.submitter()).unwrap();
        orch.submit(0).unwrap();
        gate.wait_started(1);
        orch.submit(1).unwrap();
        thread::sleep(Duration::from_millis(5)); // the nested call is queued and waited on
        orch.resize(1).unwrap(); // must not leave the waiting worker alone with its request
        gate.release(1);
        let mut got: Vec<u64> = (0..2)
            .map(|_| responses.recv_timeout(WAIT).unwrap().outcome.unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(got, [0, 12]);
        eventually("one worker thread", || worker_threads(&name) == 1);
        let report = within(WAIT, "shutdown", move || orch.shutdown());
        assert_eq!((report.completed, report.cancelled), (3, 0));
        assert_no_threads_of(&name);
    }
}
