//! A three-stage pipeline (parse → analyze → format) fed by `process_ordered`, with per-stage metrics.
//!
//! Run it with `cargo run --release --example pipeline [-- LINES]`. It generates web-server
//! style log lines, parses each into a record on 2 workers, "analyzes" it on 4 (a CPU-bound
//! score), and formats the result on 1, then prints which stage was the bottleneck.

use std::time::{Duration, Instant};

use channel_orchestrator::{Pipeline, PipelineSnapshot};

/// One parsed log line.
struct Record {
    path: String,
    status: u16,
    bytes: u64,
}

fn parse(line: String) -> Record {
    let mut fields = line.split_whitespace();
    let path = fields.next().unwrap_or("/").to_owned();
    let status = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let bytes = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    Record {
        path,
        status,
        bytes,
    }
}

/// A deliberately CPU-heavy score, so the analyze stage is worth 4 workers.
fn analyze(r: Record) -> (Record, u64) {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for _ in 0..200 {
        for b in r.path.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    (r, h % 1000)
}

fn format((r, score): (Record, u64)) -> String {
    format!(
        "{:<24} {} {:>6} score={score:03}",
        r.path, r.status, r.bytes
    )
}

fn print_stages(snap: &PipelineSnapshot) {
    for (i, stage) in snap.stages.iter().enumerate() {
        let busy: f64 =
            stage.workers.iter().map(|w| w.busy).sum::<f64>() / stage.workers.len() as f64;
        println!(
            "  stage {i}: {} workers, {:>5.1}% busy, queued {:>4}, p99 {:?}",
            stage.workers.len(),
            busy * 100.0,
            stage.queued,
            stage.latency.p99
        );
    }
    if let Some(b) = snap.bottleneck() {
        println!("  bottleneck: stage {b}");
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let lines: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200_000);
    let (pipeline, _responses) = Pipeline::builder()
        .thread_name("logs")
        .queue_capacity(256)
        .metrics_interval(Duration::from_millis(50))
        .stage(2, parse)
        .stage(4, analyze)
        .stage(1, format)
        .build()?;

    let input = (0..lines).map(|i| {
        format!(
            "/api/v1/item/{} {} {}",
            i % 977,
            200 + (i % 3) * 100,
            i * 7 % 5000
        )
    });
    let start = Instant::now();
    let mut shown = 0;
    let mut last_report = Instant::now();
    for response in pipeline.process_ordered(input) {
        let line = response.outcome?;
        if shown < 3 {
            println!("{line}");
            shown += 1;
        }
        if last_report.elapsed() > Duration::from_millis(500) {
            print_stages(&pipeline.metrics());
            last_report = Instant::now();
        }
    }
    let elapsed = start.elapsed();
    println!("per-stage metrics at the end of the run:");
    print_stages(&pipeline.metrics());
    let report = pipeline.shutdown();
    println!(
        "{} lines in {:.2?} ({:.0} lines/s), {} completed, {} failed",
        lines,
        elapsed,
        lines as f64 / elapsed.as_secs_f64(),
        report.completed,
        report.failed
    );
    Ok(())
}
