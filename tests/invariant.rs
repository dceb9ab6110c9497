//! The invariant, "nothing is lost", under random interleavings: concurrent submitters using
//! all four methods, random handler panics and slow jobs, slow or vanishing consumers, and a
//! random kind of shutdown at a random moment; plus a drop counter proving every request
//! value is dropped exactly once, whichever way it left.
//!
//! Reproduce a failing seed with `INVARIANT_SEED=<seed> cargo test --test invariant`; soak
//! with `INVARIANT_SEEDS=<count>`.

mod common;

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use channel_orchestrator::crossbeam_channel::RecvTimeoutError;
use channel_orchestrator::{
    CallError, Distribution, JobError, Orchestrator, RequestId, Response, SubmitError,
    SubmitTimeoutError, Submitter, TrySubmitError,
};
use common::*;

/// Random scenarios per run.
const SEEDS: u64 = 300;
/// Bounds of a scenario.
const MAX_WORKERS: u64 = 4;
const MAX_QUEUE: u64 = 16;
const MAX_PRODUCERS: u64 = 4;
const MAX_PER_PRODUCER: u64 = 150;
/// Latest moment (after the producers start) at which the shutdown begins, in microseconds.
const MAX_STOP_AFTER_US: u64 = 8_000;
/// The longest one scenario may take before it counts as hung.
const SCENARIO_LIMIT: Duration = Duration::from_secs(20);

/// A deterministic per-(seed, tag) draw, so the checker knows what each request was.
fn draw(seed: u64, tag: u64, salt: u64) -> u64 {
    Rng::new(seed ^ tag.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ salt).next()
}

#[derive(Debug, Clone)]
struct Scenario {
    seed: u64,
    workers: usize,
    queue_capacity: usize,
    distribution: Distribution,
    response_capacity: Option<usize>,
    metrics: bool,
    producers: u64,
    per_producer: u64,
    panic_percent: u64,
    slow_percent: u64,
    /// Pause of the consumer after each response, in microseconds.
    reader_pause_us: u64,
    /// The consumer drops the receiver after this many responses.
    reader_quits_after: Option<usize>,
    stop_after: Duration,
    stop: Stop,
}

impl Scenario {
    fn new(seed: u64) -> Self {
        let mut r = Rng::new(seed);
        let stop = Stop::draw(&mut r);
        let response_capacity = match r.below(3) {
            0 => Some(r.below(4) as usize),
            _ => None,
        };
        Scenario {
            seed,
            workers: 1 + r.below(MAX_WORKERS) as usize,
            queue_capacity: 1 + r.below(MAX_QUEUE) as usize,
            distribution: if r.chance(50) {
                Distribution::Shared
            } else {
                Distribution::RoundRobin
            },
            response_capacity,
            metrics: r.chance(75),
            producers: 1 + r.below(MAX_PRODUCERS),
            per_producer: 1 + r.below(MAX_PER_PRODUCER),
            panic_percent: [0, 5, 30][r.below(3) as usize],
            slow_percent: [0, 10, 50][r.below(3) as usize],
            reader_pause_us: [0, 0, 20, 200][r.below(4) as usize],
            reader_quits_after: r.chance(15).then(|| r.below(50) as usize),
            stop_after: Duration::from_micros(r.below(MAX_STOP_AFTER_US)),
            stop,
        }
    }

    fn panics(&self, tag: u64) -> bool {
        draw(self.seed, tag, 1) % 100 < self.panic_percent
    }

    fn sleep_us(&self, tag: u64) -> u64 {
        if draw(self.seed, tag, 2) % 100 < self.slow_percent {
            draw(self.seed, tag, 3) % 300
        } else {
            0
        }
    }
}

/// Counts drops per tag: every request value must be dropped exactly once.
struct DropLog(Vec<AtomicU32>);

impl DropLog {
    fn new(n: u64) -> Arc<Self> {
        Arc::new(DropLog((0..n).map(|_| AtomicU32::new(0)).collect()))
    }
    fn assert_each_dropped_once(&self, context: &str) {
        for (tag, n) in self.0.iter().enumerate() {
            let n = n.load(Ordering::SeqCst);
            assert_eq!(n, 1, "{context}: request {tag} dropped {n} times");
        }
    }
}

/// The request: what the handler should do, and a drop counter.
struct Job {
    tag: u64,
    panic: bool,
    sleep_us: u64,
    log: Arc<DropLog>,
}

impl Drop for Job {
    fn drop(&mut self) {
        self.log.0[self.tag as usize].fetch_add(1, Ordering::SeqCst);
    }
}

fn answer(tag: u64) -> u64 {
    tag.wrapping_mul(31) + 7
}

fn handler(job: Job) -> u64 {
    if job.sleep_us > 0 {
        thread::sleep(Duration::from_micros(job.sleep_us));
    }
    if job.panic {
        panic!("intentional panic #{}#", job.tag);
    }
    answer(job.tag)
}

/// What one producer saw.
#[derive(Default)]
struct Seen {
    accepted: Vec<(RequestId, u64)>,
    calls_ok: u64,
    calls_panicked: u64,
    calls_cancelled: u64,
}

fn produce(sc: &Scenario, p: u64, sub: Submitter<Job, u64>, log: Arc<DropLog>) -> Seen {
    let mut rng = Rng::new(sc.seed ^ (p + 1).wrapping_mul(0xA076_1D64_78BD_642F));
    let mut seen = Seen::default();
    let mut shut = false;
    for i in 0..sc.per_producer {
        let tag = p * sc.per_producer + i;
        let job = Job {
            tag,
            panic: sc.panics(tag),
            sleep_us: sc.sleep_us(tag),
            log: Arc::clone(&log),
        };
        // `Some((tag handed back, was it a shutdown))` for a refusal.
        let refused: Option<(u64, bool)> = match rng.below(4) {
            0 => match sub.submit(job) {
                Ok(id) => {
                    seen.accepted.push((id, tag));
                    None
                }
                Err(SubmitError::ShutDown(j)) => Some((j.tag, true)),
            },
            1 => match sub.try_submit(job) {
                Ok(id) => {
                    seen.accepted.push((id, tag));
                    None
                }
                Err(TrySubmitError::Full(j)) => Some((j.tag, false)),
                Err(TrySubmitError::ShutDown(j)) => Some((j.tag, true)),
            },
            2 => match sub.submit_timeout(job, Duration::from_micros(rng.below(2_000))) {
                Ok(id) => {
                    seen.accepted.push((id, tag));
                    None
                }
                Err(SubmitTimeoutError::Timeout(j)) => Some((j.tag, false)),
                Err(SubmitTimeoutError::ShutDown(j)) => Some((j.tag, true)),
            },
            _ => match sub.call(job) {
                Ok(v) => {
                    assert!(!sc.panics(tag), "call {tag} should have panicked");
                    assert_eq!(v, answer(tag), "call {tag}: wrong answer");
                    seen.calls_ok += 1;
                    None
                }
                Err(CallError::Failed(JobError::Panicked(msg))) => {
                    assert!(sc.panics(tag), "call {tag} panicked: {msg}");
                    assert!(
                        msg.contains(&format!("#{tag}#")),
                        "call {tag}: message {msg:?}"
                    );
                    seen.calls_panicked += 1;
                    None
                }
                Err(CallError::Failed(e)) => panic!("call {tag}: {e:?}"),
                Err(CallError::Cancelled(j)) => {
                    assert_eq!(j.tag, tag, "call {tag} cancelled with another request");
                    assert!(
                        matches!(sc.stop, Stop::Now | Stop::Timeout(_)),
                        "a graceful shutdown cancelled call {tag}"
                    );
                    seen.calls_cancelled += 1;
                    None
                }
                Err(CallError::ShutDown(j)) => Some((j.tag, true)),
            },
        };
        match refused {
            None => assert!(!shut, "request {tag} accepted after a refusal for shutdown"),
            Some((back, is_shutdown)) => {
                assert_eq!(back, tag, "refusal handed back another request");
                assert!(
                    !shut || is_shutdown,
                    "request {tag}: intake reopened after a shutdown refusal"
                );
                shut |= is_shutdown;
            }
        }
        if rng.chance(5) {
            thread::yield_now();
        }
    }
    seen
}

/// Reads responses until disconnected, or quits early if the scenario says so.
fn consume(
    sc: &Scenario,
    responses: channel_orchestrator::crossbeam_channel::Receiver<Response<u64>>,
) -> (Vec<Response<u64>>, bool) {
    let mut got = Vec::new();
    loop {
        if sc.reader_quits_after.is_some_and(|k| got.len() >= k) {
            drop(responses);
            return (got, true);
        }
        match responses.recv_timeout(WAIT) {
            Ok(r) => got.push(r),
            Err(RecvTimeoutError::Disconnected) => return (got, false),
            Err(RecvTimeoutError::Timeout) => {
                panic!("responses neither came nor disconnected for {WAIT:?}")
            }
        }
        if sc.reader_pause_us > 0 {
            thread::sleep(Duration::from_micros(sc.reader_pause_us));
        }
    }
}

/// Prints the scenario if the thread unwinds, so that a failure names its seed.
struct Reporter<'a>(&'a Scenario);

impl Drop for Reporter<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "invariant failed for seed {} (rerun with INVARIANT_SEED={}): {:?}",
                self.0.seed, self.0.seed, self.0
            );
        }
    }
}

fn run(sc: Scenario) {
    let _reporter = Reporter(&sc);
    let sc = Arc::new(sc.clone());
    let log = DropLog::new(sc.producers * sc.per_producer);
    let mut b = Orchestrator::builder()
        .workers(sc.workers)
        .queue_capacity(sc.queue_capacity)
        .distribution(sc.distribution)
        .metrics(sc.metrics)
        .metrics_interval(Duration::from_millis(5))
        .thread_name(format!("inv{}", sc.seed));
    if let Some(c) = sc.response_capacity {
        b = b.response_capacity(c);
    }
    let (orch, responses) = b.build(handler).unwrap();
    let consumer = {
        let sc = Arc::clone(&sc);
        thread::spawn(move || consume(&sc, responses))
    };
    let producers: Vec<_> = (0..sc.producers)
        .map(|p| {
            let (sc, sub, log) = (Arc::clone(&sc), orch.submitter(), Arc::clone(&log));
            thread::spawn(move || produce(&sc, p, sub, log))
        })
        .collect();
    thread::sleep(sc.stop_after);
    let report = sc.stop.apply(orch);
    let mut seen = Seen::default();
    for p in producers {
        let s = p.join().unwrap();
        seen.accepted.extend(s.accepted);
        seen.calls_ok += s.calls_ok;
        seen.calls_panicked += s.calls_panicked;
        seen.calls_cancelled += s.calls_cancelled;
    }
    let (received, reader_quit) = consumer.join().unwrap();

    // Ids are unique; every response and every unstarted request is an accepted one, once.
    let accepted: HashMap<RequestId, u64> = seen.accepted.iter().copied().collect();
    assert_eq!(
        accepted.len(),
        seen.accepted.len(),
        "two accepted requests share an id"
    );
    let mut placed = HashSet::new();
    let (mut ok, mut failed) = (0u64, 0u64);
    for r in &received {
        let tag = *accepted
            .get(&r.id)
            .unwrap_or_else(|| panic!("response for an id never accepted: {}", r.id));
        assert!(placed.insert(r.id), "request {tag} answered twice");
        assert!(
            r.worker.index() < sc.workers,
            "worker {} out of range",
            r.worker
        );
        match &r.outcome {
            Ok(v) => {
                assert!(!sc.panics(tag), "request {tag} should have panicked");
                assert_eq!(*v, answer(tag), "request {tag}: wrong answer");
                ok += 1;
            }
            Err(JobError::Panicked(msg)) => {
                assert!(sc.panics(tag), "request {tag} panicked: {msg}");
                assert!(
                    msg.contains(&format!("#{tag}#")),
                    "request {tag}: message {msg:?}"
                );
                failed += 1;
            }
            Err(e) => panic!("request {tag}: {e:?}"),
        }
    }
    let streams = accepted.len() as u64;
    let calls = seen.calls_ok + seen.calls_panicked + seen.calls_cancelled;
    match &report {
        Some(report) => {
            for (id, job) in &report.unstarted {
                assert_eq!(
                    accepted.get(id),
                    Some(&job.tag),
                    "unstarted {id} is not the request accepted under that id"
                );
                assert!(
                    placed.insert(*id),
                    "request {} answered and unstarted",
                    job.tag
                );
            }
            let undelivered = report.undelivered;
            if reader_quit {
                // Responses buffered in the channel when the receiver went are lost with it.
                assert!(placed.len() as u64 + undelivered <= streams);
            } else {
                assert_eq!(
                    placed.len() as u64 + undelivered,
                    streams,
                    "accepted requests neither answered, unstarted nor undelivered"
                );
                if undelivered > 0 {
                    assert!(
                        matches!(sc.stop, Stop::Timeout(_)) && sc.response_capacity.is_some(),
                        "{undelivered} undelivered with a live reader"
                    );
                } else {
                    assert_eq!(report.completed, ok + seen.calls_ok);
                    assert_eq!(report.failed, failed + seen.calls_panicked);
                }
            }
            if matches!(sc.stop, Stop::Graceful) {
                assert!(
                    report.unstarted.is_empty(),
                    "graceful shutdown left requests"
                );
            }
            assert_eq!(report.submitted, streams + calls, "report.submitted");
            assert_eq!(report.cancelled, seen.calls_cancelled, "report.cancelled");
            assert_eq!(
                report.completed + report.failed + report.unstarted.len() as u64 + report.cancelled,
                report.submitted,
                "report totals"
            );
        }
        None => {
            if !reader_quit {
                assert_eq!(
                    placed.len() as u64,
                    streams,
                    "drop did not answer everything"
                );
            }
            assert_eq!(seen.calls_cancelled, 0, "drop cancelled calls");
        }
    }
    drop(report);
    drop(received);
    log.assert_each_dropped_once(&format!("seed {}", sc.seed));
    assert_no_threads_of(&format!("inv{}", sc.seed));
}

#[test]
fn nothing_is_lost_under_random_interleavings_and_shutdowns() {
    quiet_panics();
    let seeds: Vec<u64> = match std::env::var("INVARIANT_SEED") {
        Ok(s) => vec![s.parse().expect("INVARIANT_SEED must be a number")],
        Err(_) => {
            let n = std::env::var("INVARIANT_SEEDS").map_or(SEEDS, |n| n.parse().unwrap());
            (1..=n).collect()
        }
    };
    for seed in seeds {
        let sc = Scenario::new(seed);
        within(
            SCENARIO_LIMIT,
            &format!("scenario {seed}: {sc:?}"),
            move || run(sc),
        );
    }
}

/// Every way a request value can leave, one after another, with a drop counter.
#[test]
fn every_request_value_is_dropped_exactly_once() {
    quiet_panics();
    const N: u64 = 10_000;
    const QUEUED: usize = 4;
    const CALLS: usize = 2;
    let log = DropLog::new(N);
    let tag = Cell::new(0);
    let next = |panic: bool| {
        assert!(tag.get() < N);
        let j = Job {
            tag: tag.get(),
            panic,
            sleep_us: 0,
            log: Arc::clone(&log),
        };
        tag.set(tag.get() + 1);
        j
    };

    // A pool whose only worker is held on tag 0, and whose queue we fill.
    let gate = Gate::new();
    let waiter = gate.waiter();
    let (orch, responses) = Orchestrator::builder()
        .workers(1)
        .queue_capacity(QUEUED + CALLS)
        .build(move |j: Job| {
            if j.tag == 0 {
                waiter.pass(0);
            }
            handler(j)
        })
        .unwrap();
    let gate = gate; // rebound: drops (opens) before `orch` on every way out
    let sub = orch.submitter();
    orch.submit(next(false)).unwrap();
    gate.wait_started(1);
    for _ in 0..QUEUED {
        orch.submit(next(false)).unwrap();
    }
    // Calls queued behind the stuck worker: they will be cancelled.
    let call_threads: Vec<_> = (0..CALLS)
        .map(|_| {
            let (sub, j) = (sub.clone(), next(false));
            thread::spawn(move || sub.call(j))
        })
        .collect();
    eventually("the calls to be queued", || {
        orch.metrics().queued == (QUEUED + CALLS) as u64
    });
    // Refused while full: handed back, dropped here.
    drop(orch.try_submit(next(false)).unwrap_err().into_inner());
    drop(
        orch.submit_timeout(next(false), Duration::from_millis(1))
            .unwrap_err(),
    );
    // Shut down now: the queued requests come back in `unstarted`, the calls are cancelled,
    // later submits are refused.
    let stopper = thread::spawn(move || orch.shutdown_now());
    eventually("intake to close", || {
        matches!(
            sub.try_submit(next(false)),
            Err(TrySubmitError::ShutDown(_))
        )
    });
    drop(sub.call(next(false)).unwrap_err());
    drop(sub.submit(next(false)).unwrap_err());
    gate.release(1);
    let report = within(WAIT, "shutdown_now", move || stopper.join().unwrap());
    assert_eq!(report.unstarted.len(), QUEUED);
    for t in call_threads {
        match t.join().unwrap() {
            Err(CallError::Cancelled(j)) => drop(j),
            other => panic!("queued call: {:?}", other.map(|_| ())),
        }
    }
    drop(report);
    drop(responses);

    // A second pool: completed, panicked, called, and run by the orchestrator's drop.
    let (orch, responses) = Orchestrator::builder().workers(2).build(handler).unwrap();
    for i in 0..20u32 {
        orch.submit(next(i.is_multiple_of(3))).unwrap();
    }
    assert!(orch.call(next(false)).is_ok());
    assert!(orch.call(next(true)).is_err());
    drop(orch);
    let answered = responses.try_iter().count();
    assert_eq!(answered, 20);
    drop(responses);

    // The tags never used, so that the check covers exactly the values created.
    while tag.get() < N {
        drop(next(false));
    }
    log.assert_each_dropped_once("drop-counter test");
}
