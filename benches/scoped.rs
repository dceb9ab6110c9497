//! Borrowed data, three ways: a scoped pool (`Builder::scoped` + `process_ordered`),
//! rayon's `par_iter().map().collect()` and `std::thread::scope` over equal chunks. Each
//! turns a borrowed `Vec` into a `Vec` of results in input order.
//!
//! Run with `cargo bench --bench scoped` (about 20 s). Interleaved rounds (A B C, B C A, ...)
//! on the same inputs; the table gives each one's median time per item and its ratio to
//! `std::thread::scope` (the floor: no queue at all, one chunk per thread). The scoped pool
//! and `std::thread::scope` start their threads in every round (that is what a call costs);
//! rayon's pool is built once, outside the timing, as rayon users have it.
//! `SCOPED_ROUNDS=15` sets the rounds, `BENCH_WORKERS=2` the threads.

use std::hint::black_box;
use std::time::Instant;

use channel_orchestrator::Orchestrator;
use rayon::prelude::*;

mod common;

use common::workload::{Workload, analyze, generate_document};

/// Items per round.
const ANALYSIS_ITEMS: usize = 2_000;
const SPIN_ITEMS: usize = 20_000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The three ways to map `items` through `f` on `workers` threads, in input order.
fn scoped_pool<T: Sync, F: Fn(&T) -> u64 + Sync>(items: &[T], f: &F, workers: usize) -> Vec<u64> {
    let (out, _report) = Orchestrator::builder()
        .workers(workers)
        .metrics(false)
        .scoped(
            |item: &T| f(item),
            |pool, _responses| {
                pool.process_ordered(items.iter())
                    .map(|r| r.outcome.expect("no panics"))
                    .collect::<Vec<u64>>()
            },
        )
        .expect("build");
    out
}

fn rayon_map<T: Sync, F: Fn(&T) -> u64 + Sync>(
    items: &[T],
    f: &F,
    pool: &rayon::ThreadPool,
) -> Vec<u64> {
    pool.install(|| items.par_iter().map(f).collect())
}

fn thread_scope_chunks<T: Sync, F: Fn(&T) -> u64 + Sync>(
    items: &[T],
    f: &F,
    workers: usize,
) -> Vec<u64> {
    let chunk = items.len().div_ceil(workers);
    std::thread::scope(|s| {
        let parts: Vec<_> = items
            .chunks(chunk)
            .map(|c| s.spawn(move || c.iter().map(f).collect::<Vec<u64>>()))
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().expect("no panics"))
            .collect()
    })
}

fn compare<T: Sync, F: Fn(&T) -> u64 + Sync>(name: &str, items: &[T], f: F, workers: usize) {
    let rounds = env_usize("SCOPED_ROUNDS", 15);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .build()
        .expect("rayon pool");
    let expected = thread_scope_chunks(items, &f, workers);
    let mut times: [Vec<f64>; 3] = Default::default();
    let mut ratios: [Vec<f64>; 2] = Default::default();
    for round in 0..rounds {
        let mut t = [0.0; 3];
        for k in 0..3 {
            let which = (round + k) % 3;
            let start = Instant::now();
            let out = match which {
                0 => scoped_pool(items, &f, workers),
                1 => rayon_map(items, &f, &pool),
                _ => thread_scope_chunks(items, &f, workers),
            };
            t[which] = start.elapsed().as_secs_f64();
            assert_eq!(out, expected, "every way gives the same results in order");
            black_box(out);
        }
        for (k, v) in t.iter().enumerate() {
            times[k].push(v * 1e9 / items.len() as f64);
        }
        ratios[0].push(t[2] / t[0]);
        ratios[1].push(t[2] / t[1]);
    }
    let [pool_ns, rayon_ns, scope_ns] = times.map(|mut v| median(&mut v));
    let [pool_x, rayon_x] = ratios.map(|mut v| median(&mut v));
    println!(
        "| {name} | {workers} | {pool_ns:.0} ({pool_x:.2}x) | {rayon_ns:.0} ({rayon_x:.2}x) | {scope_ns:.0} (1.00x) |"
    );
}

fn main() {
    let workers = env_usize("BENCH_WORKERS", 2);
    let docs: Vec<String> = (0..ANALYSIS_ITEMS as u64)
        .map(|i| generate_document(i, 4096))
        .collect();
    let spin = Workload::spin(1);
    let numbers: Vec<u64> = (0..SPIN_ITEMS as u64).collect();
    println!(
        "ns per item, median of interleaved rounds (x = speed relative to std::thread::scope)\n"
    );
    println!("| workload | threads | scoped pool | rayon par_iter | std::thread::scope chunks |");
    println!("|---|---:|---:|---:|---:|");
    compare(
        "analysis (4 KiB docs)",
        &docs,
        |d: &String| analyze(d),
        workers,
    );
    compare("1 µs spin", &numbers, move |x: &u64| spin.run(*x), workers);
}
