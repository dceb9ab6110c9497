//! A CLI tool's live status line, fed by a metrics subscription: `cargo run --example live_metrics -- --seconds 5`.

// It runs a workload of mixed-length jobs and shows one status line (completed per second,
// p99 handler time, busy workers, queue depth), redrawn in place when stderr is a terminal
// and printed as plain lines, one per second, when it is a pipe or a file. The final summary
// comes from the subscription's last event, the `Shutdown` event, and goes to stdout.

use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use channel_orchestrator::crossbeam_channel::Receiver;
use channel_orchestrator::{
    MetricsEvent, MetricsSnapshot, Orchestrator, ShutdownSummary, WorkerEventKind,
};

const USAGE: &str = "usage: live_metrics [--seconds N] [--workers N]";

struct Args {
    seconds: u64,
    workers: usize,
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("error: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    let built = Orchestrator::builder()
        .workers(args.workers)
        .queue_capacity(256)
        .thread_name("live")
        .metrics_interval(Duration::from_millis(250))
        .build(|job: Duration| {
            thread::sleep(job); // stands in for real work
            job
        });
    let (orch, responses) = match built {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };

    // Subscribe before submitting, so the status line sees all of the work.
    let events = orch.subscribe();
    let status = thread::spawn(move || show_status(events));
    // A real program would use the responses; here we only count them.
    let consumer = thread::spawn(move || responses.iter().count());

    let mut jobs = Workload::new(0x9E37_79B9_7F4A_7C15);
    let until = Instant::now() + Duration::from_secs(args.seconds);
    while Instant::now() < until {
        // Blocks while the queue is full: the producer runs at the workers' pace.
        if orch.submit(jobs.next_job()).is_err() {
            break;
        }
    }

    let report = orch.shutdown();
    let answered = consumer.join().expect("the consumer thread panicked");
    let Some(summary) = status.join().expect("the status thread panicked") else {
        // Only if the status thread fell behind by a whole buffer and was evicted.
        println!(
            "done: {} completed (status stream was cut off)",
            report.completed
        );
        return ExitCode::SUCCESS;
    };
    println!(
        "done: {} submitted, {} completed, {} failed, {} rejected, {} unstarted; \
         {answered} responses read; shutdown took {:.1?}",
        summary.submitted,
        summary.completed,
        summary.failed,
        summary.rejected,
        summary.unstarted,
        report.elapsed,
    );
    ExitCode::SUCCESS
}

/// Draws the status line from each snapshot until the `Shutdown` event, which it returns.
/// `None` means the subscription ended without one: this thread was evicted for falling behind.
fn show_status(events: Receiver<MetricsEvent>) -> Option<ShutdownSummary> {
    let mut line = StatusLine::new();
    for event in events {
        match event {
            MetricsEvent::Snapshot(snapshot) => line.update(&snapshot),
            MetricsEvent::Worker(w) => match w.kind {
                WorkerEventKind::Panicked { message, .. } => {
                    line.note(&format!("worker {} panicked: {message}", w.worker));
                }
                WorkerEventKind::Died(message) => {
                    line.note(&format!("worker {} died: {message}", w.worker));
                }
                _ => {}
            },
            MetricsEvent::Shutdown(summary) => {
                line.finish();
                return Some(summary);
            }
            _ => {} // `MetricsEvent` is non-exhaustive
        }
    }
    line.finish();
    None
}

/// One status line on stderr: redrawn in place on a terminal, appended otherwise.
struct StatusLine {
    terminal: bool,
    /// Whether a line is drawn and not yet ended with a newline (terminal only).
    drawn: bool,
    /// Plain output: the uptime at which the next line is due.
    next_plain: Duration,
}

impl StatusLine {
    const PLAIN_EVERY: Duration = Duration::from_secs(1);

    fn new() -> Self {
        StatusLine {
            terminal: io::stderr().is_terminal(),
            drawn: false,
            next_plain: Duration::ZERO,
        }
    }

    fn update(&mut self, s: &MetricsSnapshot) {
        // The sum of busy fractions: how many workers were busy on average over the interval.
        let busy: f64 = s.workers.iter().map(|w| w.busy).sum();
        let text = format!(
            "{:>7.0} done/s   p99 {:>9.2?}   busy {busy:>4.1}/{}   queued {:>4}   total {}",
            s.throughput,
            s.latency.p99,
            s.workers.len(),
            s.queued,
            s.completed + s.failed,
        );
        let mut err = io::stderr().lock();
        if self.terminal {
            // `\r` back to column 0, `ESC [2K` clears the old line.
            let _ = write!(err, "\r\x1b[2K{text}");
            let _ = err.flush();
            self.drawn = true;
        } else if s.uptime >= self.next_plain {
            let _ = writeln!(err, "{text}");
            self.next_plain = s.uptime + Self::PLAIN_EVERY;
        }
    }

    /// Prints a line that stays, above the status line (which the next update redraws).
    fn note(&mut self, text: &str) {
        let mut err = io::stderr().lock();
        if self.drawn {
            let _ = write!(err, "\r\x1b[2K");
            self.drawn = false;
        }
        let _ = writeln!(err, "{text}");
    }

    /// Ends the status line, so what follows starts on a fresh line.
    fn finish(&mut self) {
        if self.drawn {
            let _ = writeln!(io::stderr());
            self.drawn = false;
        }
    }
}

/// Job lengths of the demo: mostly short, some medium, a few long (a xorshift generator,
/// so the example needs no dependency).
struct Workload {
    state: u64,
}

impl Workload {
    fn new(seed: u64) -> Self {
        Workload { state: seed.max(1) }
    }

    fn next_job(&mut self) -> Duration {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        match x % 100 {
            0..=79 => Duration::from_micros(50 + x % 200),
            80..=97 => Duration::from_micros(500 + x % 1_500),
            _ => Duration::from_millis(5 + x % 20),
        }
    }
}

/// `Ok(None)` for `--help`.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut parsed = Args {
        seconds: 3,
        workers: 4,
    };
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--seconds" => parsed.seconds = value(&mut args, &flag)?,
            "--workers" => parsed.workers = value(&mut args, &flag)?,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(parsed))
}

fn value<T: std::str::FromStr>(
    args: &mut impl Iterator<Item = String>,
    flag: &str,
) -> Result<T, String> {
    let raw = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
    raw.parse()
        .map_err(|_| format!("{flag}: {raw:?} is not a valid number"))
}
