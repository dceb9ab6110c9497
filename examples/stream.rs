//! Streams empty jobs through a pool with default settings, for profiling the hot path:
//! `cargo run --release --example stream -- [jobs] [workers] [call]`, e.g. under
//! `perf record -g`; with `call`, one `call()` at a time instead of a stream.

use channel_orchestrator::crossbeam_channel::Receiver;
use channel_orchestrator::{Orchestrator, Response};
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let jobs: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(5_000_000);
    let workers: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2);
    let calls = args.next().is_some_and(|a| a == "call");
    let (orch, responses) = Orchestrator::builder()
        .workers(workers)
        .queue_capacity(1024)
        .response_capacity(1024)
        .build(|x: u64| x)
        .expect("build");
    let start = Instant::now();
    if calls {
        let mut sum = 0u64;
        for i in 0..jobs {
            sum = sum.wrapping_add(orch.call(i).expect("an answer"));
        }
        std::hint::black_box(sum);
    } else {
        stream(&orch, &responses, jobs);
    }
    let elapsed = start.elapsed();
    let m = orch.metrics();
    println!(
        "{jobs} {}, {workers} workers: {:.0} ns each; {} timed (latency p50 {:?})",
        if calls { "calls" } else { "jobs" },
        elapsed.as_nanos() as f64 / jobs as f64,
        m.latency.count,
        m.latency.p50
    );
    orch.shutdown();
}

/// One producer thread submits, this thread receives.
fn stream(orch: &Orchestrator<u64, u64>, responses: &Receiver<Response<u64>>, jobs: u64) {
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..jobs {
                orch.submit(i).expect("running");
            }
        });
        let mut sum = 0u64;
        for _ in 0..jobs {
            sum = sum.wrapping_add(responses.recv().expect("a response").outcome.expect("ok"));
        }
        std::hint::black_box(sum);
    });
}
