//! An elastic pool that grows for a burst and shrinks back: `cargo run --release --example elastic`.
//!
//! A pool of 1 to 8 workers (keep-alive 150 ms) gets two bursts of 2 ms jobs with a quiet
//! spell between them. A metrics subscription prints one status line per snapshot (every
//! 50 ms): the pool size (`metrics().workers`), the queue and the jobs done, with a bar for
//! the size, so the growth under load and the shrink after the keep-alive show at a glance.
//! The worker events tell which workers were added and retired.

use std::thread;
use std::time::{Duration, Instant};

use channel_orchestrator::{MetricsEvent, Orchestrator, WorkerEventKind};

fn main() {
    let (orch, responses) = Orchestrator::builder()
        .elastic(1, 8)
        .keep_alive(Duration::from_millis(150))
        .queue_capacity(512)
        .metrics_interval(Duration::from_millis(50))
        .thread_name("elastic")
        .build(|ms: u64| {
            thread::sleep(Duration::from_millis(ms));
            ms
        })
        .expect("build the pool");
    drop(responses); // only the counts matter here
    let events = orch.subscribe_with_capacity(4096);
    let printer = thread::spawn(move || {
        let start = Instant::now();
        let (mut added, mut retired) = (0, 0);
        println!("   time  size  queued    done  size");
        for event in events {
            match event {
                MetricsEvent::Snapshot(m) => {
                    let size = m.workers.len();
                    println!(
                        "{:>5} ms {:>5} {:>7} {:>7}  {}",
                        start.elapsed().as_millis(),
                        size,
                        m.queued,
                        m.completed,
                        "#".repeat(size)
                    );
                }
                MetricsEvent::Worker(w) => match w.kind {
                    WorkerEventKind::Added => added += 1,
                    WorkerEventKind::Retired => retired += 1,
                    _ => {}
                },
                MetricsEvent::Shutdown(s) => {
                    println!(
                        "done: {} jobs completed; workers added {added}, retired {retired}",
                        s.completed
                    );
                }
                _ => {}
            }
        }
    });
    for burst in 0..2 {
        for _ in 0..400 {
            orch.submit(2).expect("the pool is running");
        }
        // Let the burst drain, then stay quiet past the keep-alive.
        while orch.metrics().completed < 400 * (burst + 1) {
            thread::sleep(Duration::from_millis(10));
        }
        thread::sleep(Duration::from_millis(if burst == 0 { 700 } else { 500 }));
    }
    orch.shutdown();
    printer.join().expect("the printer thread");
}
