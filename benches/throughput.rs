//! Streaming throughput and `call()` round trips: this crate beside the mutex baseline, `threadpool`, rayon and the raw-crossbeam floor.
//!
//! Scenarios and how to run a subset: see `benches/README.md`.

use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

mod common;

use common::impls::{Caller, Impl, Stream, percentiles};
use common::workload::Workload;

/// Worker counts: 1, 2 and `num_cpus`, or the comma-separated list in `BENCH_WORKERS`.
fn worker_counts() -> Vec<usize> {
    let mut counts: Vec<usize> = match std::env::var("BENCH_WORKERS") {
        Ok(list) => list
            .split(',')
            .map(|w| w.trim().parse().expect("BENCH_WORKERS: a list of numbers"))
            .collect(),
        Err(_) => vec![1, 2, num_cpus::get()],
    };
    counts.sort_unstable();
    counts.dedup();
    counts
}

fn workloads() -> Vec<Workload> {
    ["empty", "1us", "50us", "analysis"]
        .iter()
        .map(|name| Workload::parse(name).expect("a known workload"))
        .collect()
}

fn configure(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(1));
}

/// `throughput-{W}w-{workload}/{impl}`: one producer thread submits, this thread receives.
/// One criterion iteration is one job, so the time reported is per job.
fn throughput(c: &mut Criterion) {
    for workers in worker_counts() {
        for work in workloads() {
            let mut group = c.benchmark_group(format!("throughput-{workers}w-{}", work.name()));
            configure(&mut group);
            for imp in Impl::ALL {
                // Built on first use, so that a filtered-out bench starts no thread.
                let mut stream: Option<Stream> = None;
                group.bench_function(imp.name(), |b| {
                    let s = stream.get_or_insert_with(|| imp.stream(workers, work));
                    b.iter_custom(|jobs| s.run(jobs));
                });
                drop(stream); // its threads are gone before the next one starts
            }
            group.finish();
        }
    }
}

/// `call-{W}w-empty/{impl}`: one request in flight at a time. Criterion reports the mean;
/// a second pass times each call and writes p50/p99 next to criterion's estimates.
fn call(c: &mut Criterion) {
    let work = Workload::Empty;
    // `cargo bench` passes `--bench`; otherwise (`cargo test --benches`, `--test`) criterion
    // runs each bench once, and so does this pass, briefly.
    let samples =
        if !std::env::args().any(|a| a == "--bench") || std::env::args().any(|a| a == "--test") {
            100
        } else {
            20_000
        };
    for workers in worker_counts() {
        let group_name = format!("call-{workers}w-{}", work.name());
        let mut group = c.benchmark_group(&group_name);
        configure(&mut group);
        for imp in Impl::ALL {
            let mut caller: Option<Caller> = None;
            group.bench_function(imp.name(), |b| {
                let s = caller.get_or_insert_with(|| imp.caller(workers, work));
                b.iter_custom(|calls| s.run(calls));
            });
            if let Some(mut caller) = caller {
                let ns = caller.sample(samples);
                let (p50, p99, mean) = percentiles(&ns);
                println!(
                    "{group_name}/{:<28} per-call p50 {p50:>7} ns   p99 {p99:>7} ns   mean {mean:>9.0} ns   ({} calls)",
                    imp.name(),
                    ns.len()
                );
                write_percentiles(&group_name, imp.name(), p50, p99, mean, ns.len());
            }
        }
        group.finish();
    }
}

/// Where criterion writes: `$CRITERION_HOME`, else `$CARGO_TARGET_DIR/criterion`, else the
/// target directory cargo reports, else `target/criterion`.
fn criterion_home() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return home.into();
    }
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir).join("criterion");
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let metadata = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok());
    let target = metadata.and_then(|json| {
        let key = "\"target_directory\":\"";
        let start = json.find(key)? + key.len();
        let end = start + json[start..].find('"')?;
        Some(PathBuf::from(&json[start..end]))
    });
    target.unwrap_or_else(|| "target".into()).join("criterion")
}

/// Writes `percentiles.json` beside criterion's `estimates.json` for this bench.
fn write_percentiles(group: &str, bench: &str, p50: u64, p99: u64, mean: f64, n: usize) {
    let dir = criterion_home().join(group).join(bench);
    let json =
        format!("{{\"p50_ns\":{p50},\"p99_ns\":{p99},\"mean_ns\":{mean:.1},\"samples\":{n}}}\n");
    if fs::create_dir_all(&dir).is_ok() {
        let _ = fs::write(dir.join("percentiles.json"), json);
    }
}

criterion_group! {
    name = benches;
    // A 2-core box runs ~130 benches: short samples, many jobs per sample.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1200));
    targets = throughput, call
}
criterion_main!(benches);
