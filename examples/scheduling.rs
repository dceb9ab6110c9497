//! Priorities and a concurrency limit in one pool, as a service would use them:
//! `cargo run --release --example scheduling`.
//!
//! Four workers serve three kinds of work: a backlog of batch jobs (`Low`), user requests
//! that must not wait behind it (`High`, answered by `call`), and "database" jobs of which at
//! most two may run at once (`limited(2)`). Every 100 ms it prints the queued requests per
//! priority, the limit's counts and the user requests' queue wait so far; at the end, the
//! peak number of database jobs that ran at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use channel_orchestrator::{MetricsEvent, Orchestrator, Priority};

#[derive(Debug, Clone, Copy)]
enum Job {
    Batch,
    User,
    Database,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let running_db = Arc::new(AtomicUsize::new(0));
    let peak_db = Arc::new(AtomicUsize::new(0));
    let (now, peak) = (running_db.clone(), peak_db.clone());
    let (orch, responses) = Orchestrator::builder()
        .workers(4)
        .queue_capacity(20_000)
        .metrics_interval(Duration::from_millis(100))
        .build(move |job: Job| {
            let work = match job {
                Job::Batch => Duration::from_micros(400),
                Job::User => Duration::from_micros(100),
                Job::Database => {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    Duration::from_millis(2)
                }
            };
            thread::sleep(work);
            if matches!(job, Job::Database) {
                now.fetch_sub(1, Ordering::SeqCst);
            }
            job
        })?;
    // Nobody reads the stream responses of the batch and database jobs here.
    drop(responses);

    let database = orch.limited(2);
    let events = orch.subscribe();
    let printer = {
        let database = database.clone();
        thread::spawn(move || {
            println!(
                "{:>7} {:>6} {:>6} {:>6}  {:>9} {:>9}  {:>13}",
                "time", "high", "normal", "low", "db active", "db queued", "user wait p99"
            );
            let start = Instant::now();
            for event in events {
                if let MetricsEvent::Snapshot(s) = event {
                    let db = database.metrics();
                    let q = s.queued_by_priority;
                    println!(
                        "{:>5} ms {:>6} {:>6} {:>6}  {:>9} {:>9}  {:>13?}",
                        start.elapsed().as_millis(),
                        q.high,
                        q.normal,
                        q.low,
                        db.in_flight,
                        db.queued,
                        s.queue_wait_by_priority.high.p99
                    );
                }
            }
        })
    };

    for _ in 0..5_000 {
        orch.submit_with_priority(Job::Batch, Priority::Low)?;
    }
    for _ in 0..200 {
        database.submit(Job::Database)?;
    }
    // User requests arrive one every 2 ms; each is answered within about one job's time,
    // while the batch backlog drains behind them.
    let mut answers: Vec<Duration> = Vec::new();
    for _ in 0..150 {
        let asked = Instant::now();
        orch.call_with_priority(Job::User, Priority::High)?;
        answers.push(asked.elapsed());
        thread::sleep(Duration::from_millis(2));
    }
    answers.sort();
    let batch_left = orch.metrics().queued_by_priority.low;
    let report = orch.shutdown();
    printer.join().expect("printer");
    println!(
        "\nuser calls: p50 {:?}, max {:?} (with {batch_left} batch jobs still queued after them)",
        answers[answers.len() / 2],
        answers[answers.len() - 1]
    );
    println!(
        "done: {} completed, {} undelivered (nobody read them); database jobs at once: at most {}",
        report.completed,
        report.undelivered,
        peak_db.load(Ordering::SeqCst)
    );
    assert!(peak_db.load(Ordering::SeqCst) <= 2);
    Ok(())
}
