//! Fills a Redis stream with jobs for `redis_worker`, waits for their results, checks them, or
//! runs the same jobs in one process without Redis (the baseline the durable hop costs against).
//!
//! ```sh
//! # load a directory's files and/or N generated payloads (one stream entry each, field `payload`)
//! cargo run --release --example redis_feed -- --redis redis://HOST:PORT --stream jobs --group workers [--dir DIR] [--generate N] [--reset]
//! # wait until N results exist, and print the rate
//! cargo run --release --example redis_feed -- --redis redis://HOST:PORT --results results --wait N
//! # check that every entry has exactly one result, and that it is right
//! cargo run --release --example redis_feed -- --redis redis://HOST:PORT --stream jobs --group workers --results results --verify
//! # the same generated payloads counted in this process, no Redis
//! cargo run --release --example redis_feed -- --local --generate N [--workers W]
//! ```
//!
//! Generated payloads depend only on `--seed` and their index, so every mode sees the same
//! ones. `--verify` recounts each entry's payload (the code in `examples/common/wc.rs`) and
//! compares it with the stored result; it fails (status 1) on a missing, wrong or extra result
//! or on entries still pending in the group.

use std::error::Error;
use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use channel_orchestrator::Orchestrator;
use clap::Parser;
use redis::{Connection, Value};
use walkdir::WalkDir;

#[allow(dead_code)] // the consumer side (XREADGROUP, XAUTOCLAIM replies) is redis_worker's
#[path = "common/streams.rs"]
mod streams;
#[path = "common/wc.rs"]
mod wc;
use streams::{PAYLOAD, Payload};

/// Entries per pipeline (`XADD`) or page (`XRANGE`, `HMGET`).
const BATCH: usize = 1000;
/// Files larger than this are skipped (a Redis string holds at most 512 MB; jobs should be small).
const MAX_FILE: u64 = 64 << 20;

/// Loads jobs into a Redis stream, waits for or verifies their results, or runs them locally.
#[derive(Parser)]
#[command(name = "redis_feed", version)]
struct Args {
    #[command(flatten)]
    at: streams::Group,
    /// The hash of results written by the workers
    #[arg(long, value_name = "KEY", default_value = "results")]
    results: String,
    /// Load every regular file under DIR, one entry each
    #[arg(long, value_name = "DIR")]
    dir: Vec<PathBuf>,
    /// Load N generated payloads
    #[arg(long, value_name = "N", default_value_t = 0)]
    generate: u64,
    /// The generator's seed
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Delete the stream (and its group) and the results first
    #[arg(long)]
    reset: bool,
    /// Instead of loading: wait until the results hash holds N results, print the rate
    #[arg(long, value_name = "N", conflicts_with_all = ["verify", "local"])]
    wait: Option<u64>,
    /// Instead of loading: check that every entry has exactly one correct result and that
    /// nothing is pending
    #[arg(long, conflicts_with = "local")]
    verify: bool,
    /// Instead of loading: count the payloads in this process with the orchestrator, no Redis
    #[arg(long)]
    local: bool,
    /// Worker threads for --local [default: one per CPU]
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = if args.local {
        local(&args)
    } else if let Some(n) = args.wait {
        connect(&args).and_then(|mut con| wait(&args, &mut con, n))
    } else if args.verify {
        connect(&args).and_then(|mut con| verify(&args, &mut con))
    } else {
        connect(&args).and_then(|mut con| feed(&args, &mut con))
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("redis_feed: error: {e}");
            ExitCode::from(2)
        }
    }
}

type Outcome = Result<bool, Box<dyn Error>>;

fn connect(args: &Args) -> Result<Connection, Box<dyn Error>> {
    Ok(redis::Client::open(args.at.redis.as_str())?.get_connection()?)
}

/// The jobs: the files under `--dir` (path, bytes), then `--generate` payloads.
fn payloads(args: &Args) -> impl Iterator<Item = (String, Vec<u8>)> + '_ {
    let files = args
        .dir
        .iter()
        .flat_map(|dir| WalkDir::new(dir).sort_by_file_name())
        .filter_map(|entry| match entry {
            Ok(e) if e.file_type().is_file() => Some(e),
            Ok(_) => None,
            Err(e) => {
                eprintln!("redis_feed: skipped: {e}");
                None
            }
        })
        .filter_map(|e| {
            let path = e.path();
            match fs::metadata(path) {
                Ok(m) if m.len() > MAX_FILE => {
                    eprintln!(
                        "redis_feed: skipped {}: over {MAX_FILE} bytes",
                        path.display()
                    );
                    None
                }
                _ => match fs::read(path) {
                    Ok(bytes) => Some((path.display().to_string(), bytes)),
                    Err(e) => {
                        eprintln!("redis_feed: skipped {}: {e}", path.display());
                        None
                    }
                },
            }
        });
    let generated = (0..args.generate).map(|i| (format!("generated:{i}"), generate(args.seed, i)));
    files.chain(generated)
}

fn feed(args: &Args, con: &mut Connection) -> Outcome {
    if args.dir.is_empty() && args.generate == 0 {
        return Err("nothing to load: give --dir DIR and/or --generate N (see --help)".into());
    }
    if args.reset {
        redis::cmd("DEL")
            .arg(&args.at.stream)
            .arg(&args.results)
            .exec(con)?;
    }
    streams::ensure_group(con, &args.at.stream, &args.at.group)?;
    let started = Instant::now();
    let (mut entries, mut bytes) = (0u64, 0u64);
    let mut pipe = redis::pipe();
    let mut in_pipe = 0u64;
    for (source, payload) in payloads(args) {
        bytes += payload.len() as u64;
        pipe.cmd("XADD")
            .arg(&args.at.stream)
            .arg("*")
            .arg(PAYLOAD)
            .arg(payload)
            .arg("source")
            .arg(source)
            .ignore();
        in_pipe += 1;
        if in_pipe == BATCH as u64 {
            pipe.exec(con)?;
            pipe.clear();
            entries += in_pipe;
            in_pipe = 0;
        }
    }
    if in_pipe > 0 {
        pipe.exec(con)?;
        entries += in_pipe;
    }
    println!(
        "fed {entries} entries ({:.1} MB) to {} for group {} in {:.2?}",
        bytes as f64 / 1e6,
        args.at.stream,
        args.at.group,
        started.elapsed()
    );
    Ok(true)
}

fn wait(args: &Args, con: &mut Connection, n: u64) -> Outcome {
    let started = Instant::now();
    let mut last_print = started;
    loop {
        let have: u64 = redis::cmd("HLEN").arg(&args.results).query(con)?;
        if have >= n {
            let secs = started.elapsed().as_secs_f64();
            println!(
                "{have} results in {secs:.2} s: {:.0} entries/s",
                n as f64 / secs
            );
            return Ok(true);
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            eprintln!("redis_feed: {have} of {n} results");
            last_print = Instant::now();
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn verify(args: &Args, con: &mut Connection) -> Outcome {
    let (mut entries, mut right, mut missing, mut wrong) = (0u64, 0u64, 0u64, 0u64);
    let mut start = "-".to_string();
    loop {
        let page: Value = redis::cmd("XRANGE")
            .arg(&args.at.stream)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(BATCH)
            .query(con)?;
        let page = streams::entries_of(page)?;
        let Some(last) = page.last() else { break };
        start = format!("({}", last.id);
        let ids: Vec<&str> = page.iter().map(|e| e.id.as_str()).collect();
        let results: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(&args.results)
            .arg(&ids)
            .query(con)?;
        for (entry, result) in page.iter().zip(results) {
            entries += 1;
            let expected = match &entry.payload {
                Payload::Text(bytes) => {
                    let mut counter = wc::Counter::new(None);
                    counter.feed(bytes);
                    counter.finish().to_string()
                }
                Payload::Missing | Payload::Deleted => format!("error: no `{PAYLOAD}` field"),
            };
            match result {
                None => {
                    missing += 1;
                    if missing <= 5 {
                        eprintln!("missing: {}", entry.id);
                    }
                }
                Some(r) if r == expected => right += 1,
                Some(r) => {
                    wrong += 1;
                    if wrong <= 5 {
                        eprintln!("wrong: {}: {r:?}, expected {expected:?}", entry.id);
                    }
                }
            }
        }
    }
    let stored: u64 = redis::cmd("HLEN").arg(&args.results).query(con)?;
    // A hash holds one value per field: results for entries of the stream are `right + wrong`;
    // any other field is a result for no entry.
    let extra = stored - (right + wrong);
    // XPENDING's summary form: [count, first id, last id, [[consumer, count], ...]].
    let summary: Value = redis::cmd("XPENDING")
        .arg(&args.at.stream)
        .arg(&args.at.group)
        .query(con)?;
    let pending = match summary {
        Value::Array(parts) => match parts.first() {
            Some(Value::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    };
    let ok = missing == 0 && wrong == 0 && extra == 0 && pending == 0;
    println!(
        "{}: {entries} entries, {right} right results, {missing} missing, {wrong} wrong, {extra} extra; {pending} pending in group {}",
        if ok { "verified" } else { "FAILED" },
        args.at.group
    );
    Ok(ok)
}

/// The baseline: the same payloads, the same count, the same orchestrator settings as
/// `redis_worker` (queue 256), in one process, results kept in memory instead of Redis.
fn local(args: &Args) -> Outcome {
    let jobs: Vec<(String, Vec<u8>)> = payloads(args).collect();
    if jobs.is_empty() {
        return Err("nothing to count: give --dir DIR and/or --generate N".into());
    }
    let n = jobs.len();
    let mut builder = Orchestrator::builder().queue_capacity(256);
    if let Some(w) = args.workers {
        builder = builder.workers(w);
    }
    let (orch, responses) = builder.build(|(source, payload): (String, Vec<u8>)| {
        let mut counter = wc::Counter::new(None);
        counter.feed(&payload);
        (source, counter.finish().to_string())
    })?;
    let workers = orch.workers();
    let started = Instant::now();
    let submitter = orch.submitter();
    let feeder = thread::spawn(move || {
        for job in jobs {
            if submitter.submit(job).is_err() {
                break;
            }
        }
    });
    let mut results = std::collections::HashMap::with_capacity(n);
    for response in responses.iter().take(n) {
        let (source, result) = response.outcome?;
        results.insert(source, result);
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = feeder.join();
    orch.shutdown();
    println!(
        "local: {} results in {secs:.2} s with {workers} workers: {:.0} entries/s",
        results.len(),
        n as f64 / secs
    );
    Ok(results.len() == n)
}

/// Payload `i` of `seed`: 1 to 6 lines of 0 to 10 words of 1 to 9 letters, separated by spaces
/// or tabs, with now and then a word of punctuation and a run of UTF-8 `é` (bytes >= 0x80,
/// which alone are not a word for `wc`); the last newline is sometimes missing.
fn generate(seed: u64, i: u64) -> Vec<u8> {
    let mut rng = SplitMix(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut out = Vec::with_capacity(128);
    let lines = 1 + rng.below(6);
    for line in 0..lines {
        let words = rng.below(11);
        for w in 0..words {
            if w > 0 {
                out.extend_from_slice(match rng.below(8) {
                    0 => b"\t",
                    1 => b"  ",
                    _ => b" ",
                });
            }
            match rng.below(16) {
                0 => out.extend_from_slice("éé".as_bytes()),
                1 => out.extend_from_slice(b"--!"),
                _ => {
                    for _ in 0..1 + rng.below(9) {
                        out.push(b'a' + rng.below(26) as u8);
                    }
                }
            }
        }
        if line + 1 < lines || rng.below(4) != 0 {
            out.push(b'\n');
        }
    }
    out
}

/// A tiny, fast, deterministic generator (splitmix64).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
