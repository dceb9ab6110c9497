//! Issue 3's performance check: empty-job throughput with metrics off, on with one reading subscriber, on with a stalled subscriber, and on with 100 live subscribers.
//!
//! Names are `metrics-{W}w-empty/{variant}`; the floor runs beside every group. See
//! `benches/README.md`.

use std::time::Duration;

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

mod common;

use common::impls::{Impl, MetricsVariant, Stream};
use common::workload::Workload;

fn metrics(c: &mut Criterion) {
    let mut counts = vec![1, 2, num_cpus::get()];
    counts.sort_unstable();
    counts.dedup();
    for workers in counts {
        let mut group = c.benchmark_group(format!("metrics-{workers}w-empty"));
        group
            .sampling_mode(SamplingMode::Flat)
            .throughput(Throughput::Elements(1));
        for variant in MetricsVariant::ALL {
            let mut stream: Option<Stream> = None;
            group.bench_function(variant.name(), |b| {
                let s = stream.get_or_insert_with(|| variant.stream(workers));
                b.iter_custom(|jobs| s.run(jobs));
            });
        }
        let mut floor: Option<Stream> = None;
        group.bench_function("floor", |b| {
            let s = floor.get_or_insert_with(|| Impl::Floor.stream(workers, Workload::Empty));
            b.iter_custom(|jobs| s.run(jobs));
        });
        drop(floor);
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1200));
    targets = metrics
}
criterion_main!(benches);
