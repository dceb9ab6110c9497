//! Before and after: the old mutex design and this crate on the same workload, side by side, with the raw-crossbeam floor for scale.
//!
//! ```text
//! cargo run --release --example demo
//! cargo run --release --example demo -- --workers 2 --jobs 500000 --workload empty
//! ```
//!
//! For each implementation it streams `--jobs` requests (one producer thread submits, the
//! main thread receives every response) and measures wall time, CPU time of the whole
//! process, and allocations; then it times `--calls` round trips one at a time for p50/p99.
//! It does that `--rounds` times, interleaving the implementations, and shows the median run.
//! The mutex baseline is `benches/common/baseline.rs`, shared with the benches.

use std::time::{Duration, Instant};

#[path = "../benches/common/mod.rs"]
mod common;

use common::alloc::{Allocs, Counting};
use common::impls::{Impl, percentiles};
use common::workload::Workload;

#[global_allocator]
static ALLOC: Counting = Counting;

const USAGE: &str = "\
usage: demo [--workers N] [--jobs N] [--calls N] [--rounds N] [--workload NAME] [--no-metrics] [--no-floor]

  --workers N      worker threads (default: the number of CPUs)
  --jobs N         requests streamed through each implementation (default 200000)
  --calls N        round trips timed one by one for p50/p99 (default 5000)
  --rounds N       runs of each implementation, interleaved; the median run is shown (default 3)
  --workload NAME  empty | 1us | 50us | <N>us | analysis (default: analysis, ~4 KiB of text)
  --no-metrics     run the orchestrator with .metrics(false)
  --no-floor       leave out the raw-crossbeam floor row";

struct Options {
    workers: usize,
    jobs: u64,
    calls: usize,
    rounds: usize,
    workload: Workload,
    metrics: bool,
    floor: bool,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        workers: num_cpus::get(),
        jobs: 200_000,
        calls: 5_000,
        rounds: 3,
        workload: Workload::parse("analysis").expect("known workload"),
        metrics: true,
        floor: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--workers" | "-w" => {
                o.workers = number(&value("--workers")?)?;
                if o.workers == 0 {
                    return Err("--workers must be at least 1".into());
                }
            }
            "--jobs" | "-n" => o.jobs = number(&value("--jobs")?)? as u64,
            "--calls" => o.calls = number(&value("--calls")?)?,
            "--rounds" => o.rounds = number(&value("--rounds")?)?.max(1),
            "--workload" => {
                let name = value("--workload")?;
                o.workload = Workload::parse(&name).ok_or(format!("unknown workload {name:?}"))?;
            }
            "--no-metrics" => o.metrics = false,
            "--no-floor" => o.floor = false,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.jobs < 10 {
        return Err("--jobs must be at least 10".into());
    }
    Ok(o)
}

fn number(s: &str) -> Result<usize, String> {
    s.replace('_', "")
        .parse()
        .map_err(|_| format!("not a number: {s:?}"))
}

/// CPU time of the whole process so far: the sum over its live threads of the time they
/// ran (`/proc/self/task/*/schedstat`, nanoseconds). Every thread of a measured phase is
/// started before it and ends after it, so a difference of two readings is that phase's
/// CPU time. `None` where `/proc` is not there.
fn cpu_time() -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let path = task.ok()?.path().join("schedstat");
        let Ok(text) = std::fs::read_to_string(path) else {
            continue; // the thread ended between the listing and the read
        };
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

/// What one implementation did.
struct Row {
    name: &'static str,
    ns_per_job: f64,
    cpu_per_job: Option<f64>,
    allocs_per_job: f64,
    p50: u64,
    p99: u64,
    allocs_per_call: f64,
    checksum: u64,
}

fn measure(imp: Impl, o: &Options) -> Row {
    // Streaming: one producer thread submits, this thread receives.
    let mut stream = imp.stream(o.workers, o.workload);
    stream.run((o.jobs / 10).max(1)); // warm-up: threads running, queues and caches full
    let (cpu0, allocs0) = (cpu_time(), Allocs::now());
    let (wall, checksum) = stream.run_checked(o.jobs);
    let allocs = Allocs::since(allocs0);
    let cpu = cpu_time().zip(cpu0).map(|(b, a)| b.saturating_sub(a));
    drop(stream);

    // Round trips: one request in flight at a time.
    let mut caller = imp.caller(o.workers, o.workload);
    caller.run((o.calls as u64 / 10).max(1));
    let call_allocs0 = Allocs::now();
    let samples = caller.sample(o.calls.max(1));
    let call_allocs = Allocs::since(call_allocs0);
    drop(caller);
    let (p50, p99, _) = percentiles(&samples);

    let jobs = o.jobs as f64;
    Row {
        name: match imp {
            Impl::Mutex => "mutex baseline (old design)",
            Impl::OrchShared | Impl::OrchSharedMetrics => "channel-orchestrator",
            Impl::Floor => "floor (raw crossbeam)",
            _ => imp.name(),
        },
        ns_per_job: wall.as_nanos() as f64 / jobs,
        cpu_per_job: cpu.map(|c| c.as_nanos() as f64 / jobs),
        allocs_per_job: allocs.count as f64 / jobs,
        p50,
        p99,
        allocs_per_call: call_allocs.count as f64 / samples.len() as f64,
        checksum,
    }
}

fn human_rate(per_sec: f64) -> String {
    if per_sec >= 1e6 {
        format!("{:.2} M/s", per_sec / 1e6)
    } else {
        format!("{:.0} k/s", per_sec / 1e3)
    }
}

fn micros(ns: u64) -> String {
    format!("{:.1} µs", ns as f64 / 1e3)
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}\n");
            }
            eprintln!("{USAGE}");
            std::process::exit(if e.is_empty() { 0 } else { 2 });
        }
    };
    let started = Instant::now();
    let job_ns = o.workload.measure_ns();
    println!(
        "machine: {} logical CPUs ({} physical), {} {}",
        num_cpus::get(),
        num_cpus::get_physical(),
        std::env::consts::OS,
        std::env::consts::ARCH
    );
    println!(
        "workload: {} (~{:.2} µs of work per job on one core), {} workers, {} jobs streamed, {} round trips timed, median of {} interleaved rounds; orchestrator metrics {}",
        o.workload.name(),
        job_ns / 1e3,
        o.workers,
        o.jobs,
        o.calls,
        o.rounds,
        if o.metrics { "on (the default)" } else { "off" }
    );
    println!(
        "every implementation: bounded queue of {} requests and bounded responses of {}",
        common::impls::CAPACITY,
        common::impls::CAPACITY
    );
    println!();

    let orchestrator = if o.metrics {
        Impl::OrchSharedMetrics
    } else {
        Impl::OrchShared
    };
    let mut imps = vec![Impl::Mutex, orchestrator];
    if o.floor {
        imps.push(Impl::Floor);
    }
    // Interleaved rounds (A B C, A B C, ...), so that a burst of load from elsewhere hits
    // every implementation alike; each row is the round with the median throughput.
    let mut runs: Vec<Vec<Row>> = imps.iter().map(|_| Vec::new()).collect();
    for _ in 0..o.rounds {
        for (i, &imp) in imps.iter().enumerate() {
            runs[i].push(measure(imp, &o));
        }
    }
    let rows: Vec<Row> = runs
        .into_iter()
        .map(|mut r| {
            r.sort_by(|a, b| a.ns_per_job.total_cmp(&b.ns_per_job));
            r.swap_remove(r.len() / 2)
        })
        .collect();

    println!(
        "| {:<28} | {:>11} | {:>9} | {:>9} | {:>9} | {:>12} | {:>10} |",
        "implementation",
        "throughput",
        "ns/job",
        "call p50",
        "call p99",
        "CPU ns/job",
        "allocs/job"
    );
    println!(
        "|{:-<30}|{:->13}|{:->11}|{:->11}|{:->11}|{:->14}|{:->12}|",
        "", ":", ":", ":", ":", ":", ":"
    );
    for r in &rows {
        println!(
            "| {:<28} | {:>11} | {:>9.0} | {:>9} | {:>9} | {:>12} | {:>10.4} |",
            r.name,
            human_rate(1e9 / r.ns_per_job),
            r.ns_per_job,
            micros(r.p50),
            micros(r.p99),
            r.cpu_per_job
                .map(|c| format!("{c:.0}"))
                .unwrap_or_else(|| "n/a".into()),
            r.allocs_per_job
        );
    }
    let (old, new) = (&rows[0], &rows[1]);
    println!();
    println!(
        "channel-orchestrator vs mutex baseline: {:.2}x the throughput, {:.2}x the CPU per job, call p50 {:.2}x, p99 {:.2}x (below 1 is faster)",
        old.ns_per_job / new.ns_per_job,
        match (new.cpu_per_job, old.cpu_per_job) {
            (Some(n), Some(b)) => n / b,
            _ => f64::NAN,
        },
        new.p50 as f64 / old.p50.max(1) as f64,
        new.p99 as f64 / old.p99.max(1) as f64,
    );
    if let Some(floor) = rows.get(2) {
        println!(
            "channel-orchestrator vs the floor:      {:.2}x the floor's throughput (1.00 = no overhead over raw channels)",
            floor.ns_per_job / new.ns_per_job
        );
    }
    let same = rows.iter().all(|r| r.checksum == rows[0].checksum);
    println!(
        "same answers from every implementation: {}; allocations per call(): {}",
        if same { "yes" } else { "NO" },
        rows.iter()
            .map(|r| format!(
                "{} {:.4}",
                r.name.split(' ').next().unwrap_or(""),
                r.allocs_per_call
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "numbers from a machine that may be busy: rerun to see the spread (`--help` for flags). took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if !same {
        std::process::exit(1);
    }
}
