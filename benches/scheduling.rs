//! Scheduling inside one pool: how long urgent requests wait while a backlog of normal ones
//! grows, with and without priorities; and a concurrency limit's peak under load.
//!
//! Run with `cargo bench --bench scheduling` (about 15 s on 2 cores). Every number comes from
//! the responses' own `queue_time` (every job timed: `timing_sample(1)`), so the waits are
//! what the pool measured, not a client's round trip.
//!
//! Part 1. Two workers run 20 µs jobs. A backlog of B `Normal` requests is queued, then a
//! probe stream of 200 requests (one every 100 µs) arrives while the backlog drains: submitted
//! as `High` (priorities on), or as `Normal` (priorities off: they queue behind the backlog).
//! The table shows the probes' queue wait against the backlog's.
//!
//! Part 2. Eight workers, a `limited(2)` handle and a plain stream at the same time: the
//! limited requests' peak concurrency, counted in the handler, and the throughput of both.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use channel_orchestrator::{Orchestrator, Priority};

mod common;

use common::workload::Workload;

const BACKLOGS: [usize; 4] = [0, 1_000, 10_000, 50_000];
const PROBES: usize = 200;
const PROBE_EVERY: Duration = Duration::from_micros(100);

/// (p50, p99) in microseconds.
fn percentiles(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)].as_secs_f64() * 1e6;
    (at(0.50), at(0.99))
}

/// Returns the probes' and the backlog's queue waits.
fn urgent_under_backlog(backlog: usize, priorities: bool) -> (Vec<Duration>, Vec<Duration>) {
    let work = Workload::spin(20);
    let (orch, responses) = Orchestrator::builder()
        .workers(2)
        .queue_capacity(backlog.max(1) + PROBES)
        .timing_sample(1)
        .build(move |(probe, x): (bool, u64)| (probe, work.run(x)))
        .expect("build");
    for i in 0..backlog {
        orch.submit((false, i as u64)).expect("open");
    }
    let probe = if priorities {
        Priority::High
    } else {
        Priority::Normal
    };
    for i in 0..PROBES {
        orch.submit_with_priority((true, i as u64), probe)
            .expect("open");
        thread::sleep(PROBE_EVERY);
    }
    let (mut probes, mut rest) = (Vec::new(), Vec::new());
    for r in responses.iter().take(backlog + PROBES) {
        let (is_probe, _) = r.outcome.expect("no panics");
        if is_probe {
            probes.push(r.queue_time);
        } else {
            rest.push(r.queue_time);
        }
    }
    orch.shutdown();
    (probes, rest)
}

fn main() {
    // `cargo bench` passes `--bench`; this target has no criterion filters.
    println!("Part 1: queue wait of 200 probe requests (1 per 100 µs) while a Normal backlog");
    println!("drains; 2 workers, 20 µs jobs (µs, p50 / p99)\n");
    println!("| backlog | probes as High | probes as Normal (no priorities) | backlog |");
    println!("|---:|---:|---:|---:|");
    for backlog in BACKLOGS {
        let (high, rest) = urgent_under_backlog(backlog, true);
        let (normal, _) = urgent_under_backlog(backlog, false);
        let (h50, h99) = percentiles(high);
        let (n50, n99) = percentiles(normal);
        let backlog_wait = if rest.is_empty() {
            "—".to_owned()
        } else {
            let (b50, b99) = percentiles(rest);
            format!("{b50:.0} / {b99:.0}")
        };
        println!("| {backlog} | {h50:.1} / {h99:.1} | {n50:.0} / {n99:.0} | {backlog_wait} |");
    }

    println!("\nPart 2: a limited(2) handle beside a plain stream; 8 workers, 50 µs jobs\n");
    let k = 2;
    let work = Workload::spin(50);
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (n, p) = (now.clone(), peak.clone());
    let (orch, responses) = Orchestrator::builder()
        .workers(8)
        .queue_capacity(4096)
        .build(move |(limited, x): (bool, u64)| {
            if limited {
                let running = n.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(running, Ordering::SeqCst);
            }
            let out = work.run(x);
            if limited {
                n.fetch_sub(1, Ordering::SeqCst);
            }
            (limited, out)
        })
        .expect("build");
    let db = orch.limited(k);
    let jobs = 4_000u64;
    let start = Instant::now();
    let producer = {
        let db = db.clone();
        thread::spawn(move || (0..jobs).for_each(|i| _ = db.submit((true, i)).expect("open")))
    };
    for i in 0..jobs {
        orch.submit((false, i)).expect("open");
    }
    let mut sampled_peak = 0;
    let (mut limited_done, mut plain_done) = (None, None);
    let mut counts = (0, 0);
    for r in responses.iter().take(2 * jobs as usize) {
        sampled_peak = sampled_peak.max(db.metrics().in_flight);
        if r.outcome.expect("no panics").0 {
            counts.0 += 1;
            if counts.0 == jobs {
                limited_done = Some(start.elapsed());
            }
        } else {
            counts.1 += 1;
            if counts.1 == jobs {
                plain_done = Some(start.elapsed());
            }
        }
    }
    producer.join().expect("producer");
    orch.shutdown();
    let rate = |d: Option<Duration>| jobs as f64 / d.expect("all done").as_secs_f64();
    println!("| | limited(2) | plain |");
    println!("|---|---:|---:|");
    println!(
        "| peak concurrency (counted in the handler) | {} | — |",
        peak.load(Ordering::SeqCst)
    );
    println!("| peak `in_flight` (Limited::metrics) | {sampled_peak} | — |");
    println!(
        "| jobs/s | {:.0} | {:.0} |",
        rate(limited_done),
        rate(plain_done)
    );
    assert!(peak.load(Ordering::SeqCst) <= k, "the limit was exceeded");
}
