//! Overload: producers far faster than the workers, for a long time. Memory stays bounded by
//! the capacities (resident memory flat, although every refused request carried a 1 KiB
//! payload), `try_submit` refuses and every refusal is counted in `rejected` and never in
//! `submitted`, the live counts stay within the capacities, and the latency of accepted work
//! stays bounded by the queue ahead of it (`queue_time` ≤ about `capacity / workers` jobs),
//! not by how long the overload lasts.
//!
//! Memory is read from `/proc/self/status` (`VmRSS`), which is process-wide, so this binary
//! holds one test.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use channel_orchestrator::crossbeam_channel::RecvTimeoutError;
use channel_orchestrator::{
    Distribution, MetricsSnapshot, Orchestrator, SubmitError, SubmitTimeoutError, TrySubmitError,
};

/// How long each overload lasts.
const OVERLOAD_FOR: Duration = Duration::from_millis(1500);
/// Memory is measured from this long into the overload.
const WARM_UP: Duration = Duration::from_millis(300);
const WORKERS: usize = 2;
const CAPACITY: usize = 32;
const RESPONSE_CAPACITY: usize = 64;
/// Each job sleeps this long: the pool finishes at most `WORKERS / JOB` per second.
const JOB: Duration = Duration::from_micros(500);
/// Producers that spin on `try_submit`, and ones that wait up to `TIMED_WAIT` each time.
const SPINNERS: usize = 3;
const TIMED: usize = 1;
const TIMED_WAIT: Duration = Duration::from_millis(2);
/// Bytes carried by each request, so that a leak of refused requests would show at once.
const PAYLOAD: usize = 1024;
/// Scheduling slack of a busy 2-core machine, added to every latency bound.
const SLACK: Duration = Duration::from_millis(300);
/// Resident memory may grow this much after the warm-up. Everything live at once is bounded
/// by the capacities (well under 1 MiB here); the producers make millions of attempts.
const RSS_TOLERANCE_KB: u64 = 8 * 1024;
/// The bound on every wait.
const WAIT: Duration = Duration::from_secs(20);

fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// A request: its producer's route (0 spinner, 1 timed, 2 blocking) and a payload.
struct Req {
    route: u8,
    payload: Vec<u8>,
}

fn req(route: u8) -> Req {
    Req {
        route,
        payload: vec![route; PAYLOAD],
    }
}

/// What the producers saw.
#[derive(Default, Debug)]
struct Tally {
    accepted: u64,
    rejected: u64,
    /// Longest wait of one blocking `submit`.
    longest_block: Duration,
}

fn overload(distribution: Distribution) {
    let (orch, responses) = Orchestrator::builder()
        .workers(WORKERS)
        .queue_capacity(CAPACITY)
        .response_capacity(RESPONSE_CAPACITY)
        .distribution(distribution)
        .metrics_interval(Duration::from_millis(20))
        .thread_name("overload")
        .build(|r: Req| {
            thread::sleep(JOB);
            (r.route, r.payload.len())
        })
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let attempted = Arc::new(AtomicU64::new(0));

    // Reads every response, keeping only the worst latencies per route.
    let consumer = thread::spawn(move || {
        let mut worst = [Duration::ZERO; 3];
        let (mut n, mut longest_job) = (0u64, Duration::ZERO);
        loop {
            match responses.recv_timeout(WAIT) {
                Ok(r) => {
                    let (route, len) = r.outcome.expect("no handler panics here");
                    assert_eq!(len, PAYLOAD);
                    worst[route as usize] = worst[route as usize].max(r.queue_time);
                    longest_job = longest_job.max(r.handler_time);
                    n += 1;
                }
                Err(RecvTimeoutError::Disconnected) => return (n, worst, longest_job),
                Err(RecvTimeoutError::Timeout) => panic!("no response for {WAIT:?}"),
            }
        }
    });
    let mut producers = Vec::new();
    for p in 0..SPINNERS + TIMED + 1 {
        let (sub, stop, attempted) = (orch.submitter(), Arc::clone(&stop), Arc::clone(&attempted));
        producers.push(thread::spawn(move || {
            let mut t = Tally::default();
            while !stop.load(Ordering::Relaxed) {
                attempted.fetch_add(1, Ordering::SeqCst);
                let ok = if p < SPINNERS {
                    match sub.try_submit(req(0)) {
                        Ok(_) => true,
                        Err(TrySubmitError::Full(r)) => {
                            assert_eq!(r.payload.len(), PAYLOAD, "the request comes back whole");
                            thread::yield_now();
                            false
                        }
                        Err(e) => panic!("{e}"),
                    }
                } else if p < SPINNERS + TIMED {
                    match sub.submit_timeout(req(1), TIMED_WAIT) {
                        Ok(_) => true,
                        Err(SubmitTimeoutError::Timeout(r)) => {
                            assert_eq!(r.payload.len(), PAYLOAD);
                            false
                        }
                        Err(e) => panic!("{e}"),
                    }
                } else {
                    // A blocking submit competes with the spinners for every freed slot.
                    let start = Instant::now();
                    match sub.submit(req(2)) {
                        Ok(_) => {
                            t.longest_block = t.longest_block.max(start.elapsed());
                            true
                        }
                        Err(SubmitError::ShutDown(_)) => panic!("shut down while overloaded"),
                    }
                };
                if ok {
                    t.accepted += 1;
                } else {
                    t.rejected += 1;
                }
            }
            t
        }));
    }

    // Watch the pool while it is overloaded.
    let started = Instant::now();
    let (mut warm_kb, mut peak_kb, mut polls, mut max_queued) = (None, 0u64, 0u64, 0u64);
    let mut prev: Option<MetricsSnapshot> = None;
    while started.elapsed() < OVERLOAD_FOR {
        let m = orch.metrics();
        let attempted = attempted.load(Ordering::SeqCst);
        assert!(
            m.queued <= CAPACITY as u64,
            "queue beyond its capacity: {m:#?}"
        );
        assert!(m.in_flight <= WORKERS as u64, "{m:#?}");
        max_queued = max_queued.max(m.queued);
        assert!(
            m.submitted + m.rejected <= attempted,
            "counts overshoot: {} + {} > {attempted}",
            m.submitted,
            m.rejected
        );
        if let Some(p) = &prev {
            assert!(m.rejected >= p.rejected && m.submitted >= p.submitted);
        }
        prev = Some(m);
        if started.elapsed() >= WARM_UP {
            let now = rss_kb();
            warm_kb.get_or_insert(now);
            peak_kb = peak_kb.max(now);
        }
        polls += 1;
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::SeqCst);
    let tallies: Vec<Tally> = producers.into_iter().map(|p| p.join().unwrap()).collect();
    let accepted: u64 = tallies.iter().map(|t| t.accepted).sum();
    let rejected: u64 = tallies.iter().map(|t| t.rejected).sum();
    let end_kb = rss_kb();

    // Every refusal is counted, at once and exactly (the producers have stopped).
    let m = orch.metrics();
    assert_eq!(m.rejected, rejected, "rejected submits miscounted");
    assert!(
        m.submitted <= accepted,
        "refused work counted as submitted: {m:#?}"
    );
    let report = orch.shutdown();
    let (answered, worst, longest_job) = consumer.join().unwrap();
    assert_eq!(
        report.submitted, accepted,
        "submitted must be exactly the accepted"
    );
    assert_eq!(report.rejected, rejected);
    assert_eq!((report.completed, answered), (accepted, accepted));

    let capacity_per_s = WORKERS as f64 / JOB.as_secs_f64();
    eprintln!(
        "overload {distribution:?}: {accepted} accepted, {rejected} refused in {OVERLOAD_FOR:?} \
         (the pool can do {capacity_per_s:.0}/s); worst queue_time spin {:?} timed {:?} \
         blocking {:?}; longest job {longest_job:?}; longest blocking submit {:?}; RSS warm \
         {:?} KiB, peak {peak_kb} KiB, end {end_kb} KiB; {polls} polls, longest queue seen \
         {max_queued}",
        worst[0],
        worst[1],
        worst[2],
        tallies[SPINNERS + TIMED].longest_block,
        warm_kb,
    );
    // Overloaded: every refusal found every queue full. (On an idle machine the refusals
    // outnumber the accepted a hundredfold; a starved one still refuses some.)
    assert!(
        rejected > 0,
        "not overloaded: {accepted} accepted, none refused"
    );

    // Latency of accepted work: at most the queue ahead of it (capacity / workers jobs, each
    // at most the longest job seen), plus scheduling slack — never the length of the overload.
    // A `submit_timeout` may also have waited its timeout before it was accepted (queue_time
    // counts from the submit call).
    // Capped well below the overload's length, which an unbounded queue would approach, in
    // case a starved machine stretched one job far beyond `JOB`.
    let queue_bound = (longest_job * (CAPACITY / WORKERS + 1) as u32 + SLACK).min(OVERLOAD_FOR / 2);
    assert!(
        worst[0] <= queue_bound,
        "try_submit: queued {:?} > {queue_bound:?}",
        worst[0]
    );
    assert!(
        worst[1] <= queue_bound + TIMED_WAIT,
        "submit_timeout: queued {:?} > {:?}",
        worst[1],
        queue_bound + TIMED_WAIT
    );

    // Memory: bounded by the capacities, not by the millions of attempts.
    let warm_kb = warm_kb.expect("never warmed up");
    let peak_kb = peak_kb.max(end_kb);
    assert!(
        peak_kb <= warm_kb + RSS_TOLERANCE_KB,
        "resident memory grew from {warm_kb} KiB to {peak_kb} KiB under overload"
    );
}

/// Both distributions, one after another (memory is measured process-wide).
#[test]
fn overload_is_refused_counted_and_bounded_in_memory_and_latency() {
    overload(Distribution::Shared);
    overload(Distribution::RoundRobin);
}
