//! Many producers: P threads submitting at once, W workers, against the floor with as many
//! producers (raw crossbeam: one bounded MPMC request channel, W workers, one bounded
//! response channel read by the main thread).
//!
//! Two ways to share this crate among producers: each thread with its own `Submitter` clone,
//! and every thread sharing one `&Orchestrator`. Default settings (metrics on, adaptive
//! timing). Each cell runs the three side by side in alternating rounds and reports medians
//! and the ratio to the floor (throughput, 1.0 = the floor).
//!
//! `cargo bench --bench producers`; set `PRODUCERS=1,2,4`, `WORKERS=1,2`,
//! `WORKLOADS=empty,1us,50us`, `ROUNDS=5`, `ROUND_MS=60`. `scripts/sweep.sh` runs the whole
//! sweep on a bigger machine and writes the table.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use channel_orchestrator::Orchestrator;
use channel_orchestrator::crossbeam_channel::bounded;
use common::workload::Workload;

const CAPACITY: usize = 1024;

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(name)
        .map(|v| {
            v.split(',')
                .map(|x| x.trim().parse().expect("numbers"))
                .collect()
        })
        .unwrap_or_else(|_| default.to_vec())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Jobs of `work`, `per` from each of `producers` threads, through raw crossbeam channels and
/// `workers` threads; the time until every result was received.
fn floor(producers: usize, workers: usize, work: Workload, per: u64) -> Duration {
    let (req_tx, req_rx) = bounded::<u64>(CAPACITY);
    let (resp_tx, resp_rx) = bounded::<u64>(CAPACITY);
    let pool: Vec<_> = (0..workers)
        .map(|_| {
            let (rx, tx) = (req_rx.clone(), resp_tx.clone());
            thread::spawn(move || {
                for x in rx {
                    let _ = tx.send(work.run(x));
                }
            })
        })
        .collect();
    drop((req_rx, resp_tx));
    let start = Instant::now();
    thread::scope(|s| {
        for p in 0..producers {
            let tx = req_tx.clone();
            s.spawn(move || {
                for i in 0..per {
                    tx.send(p as u64 * per + i).unwrap();
                }
            });
        }
        for _ in 0..producers as u64 * per {
            resp_rx.recv().unwrap();
        }
    });
    let elapsed = start.elapsed();
    drop(req_tx);
    for t in pool {
        t.join().unwrap();
    }
    elapsed
}

/// The same through this crate: each producer with its own `Submitter` clone, or every
/// producer sharing `&Orchestrator`.
fn orchestrator(
    producers: usize,
    workers: usize,
    work: Workload,
    per: u64,
    clones: bool,
) -> Duration {
    let (orch, responses) = Orchestrator::builder()
        .workers(workers)
        .queue_capacity(CAPACITY)
        .response_capacity(CAPACITY)
        .thread_name("producers")
        .build(move |x: u64| work.run(x))
        .expect("build");
    let start = Instant::now();
    thread::scope(|s| {
        for p in 0..producers {
            let orch = &orch;
            let sub = clones.then(|| orch.submitter());
            s.spawn(move || {
                for i in 0..per {
                    let x = p as u64 * per + i;
                    match &sub {
                        Some(sub) => sub.submit(x).map(|_| ()).unwrap(),
                        None => orch.submit(x).map(|_| ()).unwrap(),
                    }
                }
            });
        }
        for _ in 0..producers as u64 * per {
            responses.recv().unwrap();
        }
    });
    let elapsed = start.elapsed();
    orch.shutdown();
    elapsed
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick =
        !std::env::args().any(|a| a == "--bench") || std::env::args().any(|a| a == "--test");
    let cpus = num_cpus::get();
    let mut default_producers = vec![1, 2, 4, cpus];
    default_producers.sort_unstable();
    default_producers.dedup();
    let producers = env_list(
        "PRODUCERS",
        if quick { &[1, 2] } else { &default_producers },
    );
    let mut default_workers = vec![1, 2, cpus];
    default_workers.sort_unstable();
    default_workers.dedup();
    let workers = env_list("WORKERS", if quick { &[1] } else { &default_workers });
    let workloads: Vec<Workload> = std::env::var("WORKLOADS")
        .unwrap_or_else(|_| {
            if quick {
                "empty".into()
            } else {
                "empty,1us,50us".into()
            }
        })
        .split(',')
        .map(|w| Workload::parse(w.trim()).expect("a workload name"))
        .collect();
    let rounds = env_list("ROUNDS", &[if quick { 1 } else { 5 }])[0];
    let round = Duration::from_millis(env_list("ROUND_MS", &[60])[0] as u64);

    println!(
        "# Producers: {cpus} cores; {rounds} alternating rounds of ~{} ms per cell; ratio = floor time / time (1.0 = the floor)\n",
        round.as_millis()
    );
    println!(
        "| producers | workers | workload | floor ns/job | submitters ns/job | x floor | shared &orch ns/job | x floor |"
    );
    println!("|---:|---:|---|---:|---:|---:|---:|---:|");
    for work in &workloads {
        let work = *work;
        for &w in &workers {
            for &p in &producers {
                // Size a round from one probe of the floor.
                let probe = 2_000u64;
                let t = floor(p, w, work, probe / p as u64 + 1);
                let ns = t.as_nanos() as f64 / probe as f64;
                let total = ((round.as_nanos() as f64 / ns) as u64).clamp(1_000, 2_000_000);
                let per = (total / p as u64).max(1);
                let jobs = (per * p as u64) as f64;
                let (mut f, mut c, mut s) = (Vec::new(), Vec::new(), Vec::new());
                for r in 0..rounds {
                    let order: [u8; 3] = if r % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
                    for which in order {
                        let t = match which {
                            0 => floor(p, w, work, per),
                            1 => orchestrator(p, w, work, per, true),
                            _ => orchestrator(p, w, work, per, false),
                        };
                        let v = t.as_nanos() as f64 / jobs;
                        [&mut f, &mut c, &mut s][which as usize].push(v);
                    }
                }
                let (f, c, s) = (median(f), median(c), median(s));
                println!(
                    "| {p} | {w} | {} | {f:.0} | {c:.0} | {:.2} | {s:.0} | {:.2} |",
                    work.name(),
                    f / c,
                    f / s
                );
            }
        }
    }
}
