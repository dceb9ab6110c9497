//! Pipelines and key affinity: a 3-stage pipeline against the same work in one stage, and a
//! hot key against spread keys under `Distribution::ByKey`.
//!
//! Run with `cargo bench --bench pipeline`. Scenarios are defined in benches/README.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use channel_orchestrator::{Distribution, Orchestrator, Pipeline, Response};
use criterion::{Criterion, criterion_group, criterion_main};

/// Jobs per measured iteration.
const JOBS: u64 = 20_000;

/// Spins for about `nanos` of CPU.
fn spin(nanos: u64) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_nanos(nanos) {
        std::hint::spin_loop();
    }
}

fn parse(x: u64) -> u64 {
    spin(1_000);
    x
}

fn analyze(x: u64) -> u64 {
    spin(4_000);
    x.wrapping_mul(31)
}

fn write(x: u64) -> u64 {
    spin(1_000);
    x + 1
}

/// Times `iters` runs of `JOBS` responses read from `run()`'s iterator.
fn timed<R>(iters: u64, run: impl Fn() -> R) -> Duration
where
    R: Iterator<Item = Response<u64>>,
{
    let t = Instant::now();
    for _ in 0..iters {
        let n = run()
            .map(|r| black_box(r.outcome.unwrap()))
            .fold(0u64, |n, _| n + 1);
        assert_eq!(n, JOBS);
    }
    t.elapsed()
}

fn pipeline(c: &mut Criterion) {
    let mut g = c.benchmark_group("pipeline-6us");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    let workers = num_cpus::get();

    g.bench_function("three-stages-process-ordered", |b| {
        let (p, _rx) = Pipeline::builder()
            .stage(1, parse)
            .stage(workers, analyze)
            .stage(1, write)
            .build()
            .unwrap();
        b.iter_custom(|iters| timed(iters, || p.process_ordered(0..JOBS)));
    });

    let (orch, _rx) = Orchestrator::builder()
        .workers(workers)
        .build(|x: u64| write(analyze(parse(x))))
        .unwrap();
    g.bench_function("one-stage-process-ordered", |b| {
        b.iter_custom(|iters| timed(iters, || orch.process_ordered(0..JOBS)));
    });
    g.bench_function("one-stage-process", |b| {
        b.iter_custom(|iters| timed(iters, || orch.process(0..JOBS)));
    });
    g.finish();
}

fn by_key(c: &mut Criterion) {
    let mut g = c.benchmark_group("by-key-5us");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    let workers = num_cpus::get().max(2);
    for (name, keys) in [("spread-keys", 1024u64), ("hot-key", 1)] {
        g.bench_function(name, |b| {
            let (orch, _rx) = Orchestrator::builder()
                .workers(workers)
                .distribution(Distribution::by_key(|x: &u64| *x))
                .build(|x: u64| {
                    spin(5_000);
                    x
                })
                .unwrap();
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    let n = orch.process((0..JOBS).map(|i| i % keys)).count();
                    assert_eq!(n as u64, JOBS);
                }
                t.elapsed()
            });
        });
    }
    g.finish();
}

criterion_group!(benches, pipeline, by_key);
criterion_main!(benches);
