//! The performance targets, each measured as interleaved pairs against the floor (raw
//! crossbeam channels), the metrics cost the same way, 1 µs jobs against rayon and
//! `threadpool`, and allocations per job for every implementation.
//!
//! On a small, shared machine the load changes faster than criterion moves from one bench to
//! the next, so a ratio of two criterion means can be off by 2x. Here both sides of a
//! comparison are started together and run in alternating short rounds (A B, B A, A B, ...);
//! each round gives one ratio, and the median of those ratios is reported. Run with
//! `cargo bench --bench targets`; `BENCH_WORKERS=1,2,4` sets the worker counts,
//! `TARGET_ROUNDS=31` the rounds per pair.

use std::time::Duration;

mod common;

use common::alloc::{Allocs, Counting};
use common::impls::{Impl, MetricsVariant, Stream, percentiles};
use common::workload::Workload;

#[global_allocator]
static ALLOC: Counting = Counting;

/// How long one round of one side runs.
const ROUND: Duration = Duration::from_millis(40);

fn env_list(name: &str, default: Vec<usize>) -> Vec<usize> {
    let mut v: Vec<usize> = match std::env::var(name) {
        Ok(list) => list
            .split(',')
            .map(|w| w.trim().parse().expect("a list of numbers"))
            .collect(),
        Err(_) => default,
    };
    v.sort_unstable();
    v.dedup();
    v
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The result of one interleaved comparison of `imp` against the floor.
struct Paired {
    imp_ns: f64,
    floor_ns: f64,
    /// Median over rounds of (floor time / imp time): the throughput ratio, 1.0 = the floor.
    ratio: f64,
    allocs_per_job: f64,
}

/// Streams through `imp` and the floor in alternating rounds; per-job times and the ratio.
fn paired_stream(imp: Impl, workers: usize, work: Workload, rounds: usize) -> Paired {
    paired(
        imp.stream(workers, work),
        Impl::Floor.stream(workers, work),
        work_ns(work),
        rounds,
    )
}

/// Streams through `a` and `b` in alternating rounds (A B, B A, ...) of about [`ROUND`]
/// each; `ratio` is the median over rounds of (time of b / time of a), so above 1 means `a`
/// is faster. Allocations are counted over `a`'s rounds only.
fn paired(mut a: Stream, mut b: Stream, job_ns: f64, rounds: usize) -> Paired {
    // Warm up both, and size a round to about `ROUND` of `b`.
    a.run(2_000);
    b.run(2_000);
    let probe = ((20e6 / job_ns.max(1.0)) as u64).clamp(200, 20_000);
    let per_job = b.run(probe).as_nanos() as f64 / probe as f64;
    let n = ((ROUND.as_nanos() as f64 / per_job) as u64).max(200);
    a.run(n);
    let (mut ta, mut tb, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut allocs = 0u64;
    let mut run_a = |a: &mut Stream| {
        let before = Allocs::now();
        let t = a.run(n);
        allocs += Allocs::since(before).count;
        t
    };
    for r in 0..rounds {
        let (x, y) = if r % 2 == 0 {
            let x = run_a(&mut a);
            (x, b.run(n))
        } else {
            let y = b.run(n);
            (run_a(&mut a), y)
        };
        let (x, y) = (
            x.as_nanos() as f64 / n as f64,
            y.as_nanos() as f64 / n as f64,
        );
        ta.push(x);
        tb.push(y);
        ratios.push(y / x);
    }
    Paired {
        imp_ns: median(&mut ta),
        floor_ns: median(&mut tb),
        ratio: median(&mut ratios),
        allocs_per_job: allocs as f64 / (n * rounds as u64) as f64,
    }
}

/// Round trips through `imp` and the floor's ping-pong in alternating rounds.
/// The ratio here is imp time / floor time (1.0 = the floor, higher is slower), of means.
fn paired_call(imp: Impl, workers: usize, rounds: usize) -> (Paired, [u64; 4]) {
    let work = Workload::Empty;
    let mut a = imp.caller(workers, work);
    let mut b = Impl::Floor.caller(workers, work);
    a.run(2_000);
    b.run(2_000);
    let n = 2_000u64;
    let (mut ta, mut tb, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut allocs = 0u64;
    for r in 0..rounds {
        let run_a = |a: &mut common::impls::Caller, allocs: &mut u64| {
            let before = Allocs::now();
            let t = a.run(n);
            *allocs += Allocs::since(before).count;
            t
        };
        let (x, y) = if r % 2 == 0 {
            let x = run_a(&mut a, &mut allocs);
            (x, b.run(n))
        } else {
            let y = b.run(n);
            (run_a(&mut a, &mut allocs), y)
        };
        let (x, y) = (
            x.as_nanos() as f64 / n as f64,
            y.as_nanos() as f64 / n as f64,
        );
        ta.push(x);
        tb.push(y);
        ratios.push(x / y);
    }
    // Per-call percentiles, also interleaved: 10 blocks of 1,000 timed calls each.
    let (mut sa, mut sb) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        sa.extend(a.sample(1_000));
        sb.extend(b.sample(1_000));
    }
    sa.sort_unstable();
    sb.sort_unstable();
    let (a50, a99, _) = percentiles(&sa);
    let (b50, b99, _) = percentiles(&sb);
    (
        Paired {
            imp_ns: median(&mut ta),
            floor_ns: median(&mut tb),
            ratio: median(&mut ratios),
            allocs_per_job: allocs as f64 / (n * rounds as u64) as f64,
        },
        [a50, a99, b50, b99],
    )
}

fn work_ns(work: Workload) -> f64 {
    match work {
        Workload::Empty => 50.0,
        _ => work.measure_ns(),
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

/// Allocations per job of every implementation: a warm-up, then a measured stream and
/// measured calls, on the calling thread and every thread the implementation runs.
fn allocation_table(workers: usize) {
    println!("\n## Allocations per job ({workers} workers, steady state after a warm-up)\n");
    println!("| implementation | empty stream | analysis stream | 50us stream | empty call |");
    println!("|---|---:|---:|---:|---:|");
    for imp in Impl::ALL {
        let mut cells = Vec::new();
        for (name, jobs) in [("empty", 200_000u64), ("analysis", 20_000), ("50us", 2_000)] {
            let work = Workload::parse(name).expect("known");
            let mut s = imp.stream(workers, work);
            s.run(jobs / 4);
            let before = Allocs::now();
            s.run(jobs);
            let a = Allocs::since(before);
            cells.push(a.count as f64 / jobs as f64);
        }
        let mut c = imp.caller(workers, Workload::Empty);
        c.run(2_000);
        let before = Allocs::now();
        c.run(20_000);
        cells.push(Allocs::since(before).count as f64 / 20_000.0);
        let cells: Vec<String> = cells.iter().map(|v| format!("{v:.4}")).collect();
        println!("| {} | {} |", imp.name(), cells.join(" | "));
    }
}

fn main() {
    // `cargo bench` passes `--bench`; without it (`cargo test --benches`), or with
    // `--test`, run a smoke test: every pair once, two rounds, no allocation table.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let quick =
        !std::env::args().any(|a| a == "--bench") || std::env::args().any(|a| a == "--test");
    let rounds = std::env::var("TARGET_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(if quick { 2 } else { 21 });
    let workers = env_list("BENCH_WORKERS", vec![1, 2, num_cpus::get()]);
    let spin1 = Workload::spin(1);
    println!(
        "# Targets: {} cores (num_cpus), {} rounds per pair of ~{} ms a side; 1us spin = {} rounds of ~{:.2} ns",
        num_cpus::get(),
        rounds,
        ROUND.as_millis(),
        match spin1 {
            Workload::Spin { iters, .. } => iters,
            _ => 0,
        },
        common::workload::spin_ns_per_iter()
    );

    println!("\n## Streaming throughput against the floor (median of per-round ratios)\n");
    println!(
        "| workers | workload | implementation | ns/job | floor ns/job | x floor | target | allocs/job |"
    );
    println!("|---:|---|---|---:|---:|---:|---|---:|");
    let empty = Workload::Empty;
    let fifty = Workload::spin(50);
    for &w in &workers {
        for (imp, target) in [
            (Impl::OrchShared, 0.85),
            (Impl::OrchSharedMetrics, 0.75),
            (Impl::OrchRr, 0.85),
            (Impl::OrchRrMetrics, 0.75),
        ] {
            let p = paired_stream(imp, w, empty, rounds);
            println!(
                "| {w} | empty | {} | {:.0} | {:.0} | {:.2} | >= {target:.2} {} | {:.4} |",
                imp.name(),
                p.imp_ns,
                p.floor_ns,
                p.ratio,
                verdict(p.ratio >= target),
                p.allocs_per_job
            );
        }
        // 1 µs jobs: this crate (default settings) against rayon and threadpool, each paired
        // with the floor in its own rounds; the target is to be ahead of both.
        let spin1 = Workload::spin(1);
        let ours = paired_stream(Impl::OrchSharedMetrics, w, spin1, rounds);
        let rayon = paired_stream(Impl::Rayon, w, spin1, rounds);
        let threadpool = paired_stream(Impl::Threadpool, w, spin1, rounds);
        for (imp, p) in [
            (Impl::OrchSharedMetrics, &ours),
            (Impl::Rayon, &rayon),
            (Impl::Threadpool, &threadpool),
        ] {
            let target = if imp == Impl::OrchSharedMetrics {
                let ahead = ours.ratio > rayon.ratio && ours.ratio > threadpool.ratio;
                format!("ahead of rayon and threadpool {}", verdict(ahead))
            } else {
                "(peer)".to_owned()
            };
            println!(
                "| {w} | 1us | {} | {:.0} | {:.0} | {:.3} | {target} | {:.4} |",
                imp.name(),
                p.imp_ns,
                p.floor_ns,
                p.ratio,
                p.allocs_per_job
            );
        }
        for imp in [Impl::OrchShared, Impl::OrchSharedMetrics] {
            let p = paired_stream(imp, w, fifty, rounds.min(11));
            println!(
                "| {w} | 50us | {} | {:.0} | {:.0} | {:.3} | >= 0.95 {} | {:.4} |",
                imp.name(),
                p.imp_ns,
                p.floor_ns,
                p.ratio,
                verdict(p.ratio >= 0.95),
                p.allocs_per_job
            );
        }
    }

    println!("\n## call() round trip against the floor's ping-pong (empty job)\n");
    println!(
        "| workers | implementation | mean ns | floor mean ns | x floor | target | p50 / p99 ns | floor p50 / p99 ns | allocs/call |"
    );
    println!("|---:|---|---:|---:|---:|---|---|---|---:|");
    for &w in &workers {
        for (imp, target) in [
            (Impl::OrchShared, 1.3),
            (Impl::OrchSharedMetrics, 1.4),
            (Impl::OrchRr, 1.3),
        ] {
            let (p, [a50, a99, b50, b99]) = paired_call(imp, w, rounds);
            println!(
                "| {w} | {} | {:.0} | {:.0} | {:.2} | <= {target:.2} {} | {a50} / {a99} | {b50} / {b99} | {:.4} |",
                imp.name(),
                p.imp_ns,
                p.floor_ns,
                p.ratio,
                verdict(p.ratio <= target),
                p.allocs_per_job
            );
        }
    }

    println!(
        "\n## Metrics cost: empty jobs, 20 ms metrics interval, A against B in alternating rounds\n"
    );
    println!("| workers | A | B | A ns/job | B ns/job | A throughput / B | target |");
    println!("|---:|---|---|---:|---:|---:|---|");
    for &w in &workers {
        for (a, b, target) in [
            (MetricsVariant::OneSubscriber, MetricsVariant::Off, 0.95),
            (MetricsVariant::On, MetricsVariant::Off, 0.95),
            (MetricsVariant::Sampled, MetricsVariant::Off, 0.90),
            (MetricsVariant::EveryJob, MetricsVariant::Off, 0.0),
            (MetricsVariant::Stalled, MetricsVariant::OneSubscriber, 0.95),
            (MetricsVariant::Hundred, MetricsVariant::OneSubscriber, 0.95),
        ] {
            let p = paired(a.stream(w), b.stream(w), 50.0, rounds);
            println!(
                "| {w} | {} | {} | {:.0} | {:.0} | {:.2} | >= {target:.2} {} |",
                a.name(),
                b.name(),
                p.imp_ns,
                p.floor_ns,
                p.ratio,
                verdict(p.ratio >= target)
            );
        }
    }

    if !quick {
        allocation_table(2.min(num_cpus::get()).max(1));
    }
}
