//! A parallel `wc` for directory trees, with live progress and Ctrl-C: `cargo run --release --example analyze -- [DIR ...]`.
//!
//! Options: `--workers N`, `--top N`, `--per-file`, `--json`; each option that takes a value
//! accepts both `--workers 2` and `--workers=2`. `--help` lists them, `--version` prints the
//! version. Arguments are parsed by `clap`, the tree is walked by `walkdir`, and words are
//! tallied in `rustc-hash` maps: what is hand-written here is the counting and the
//! orchestration.

// How it works: three kinds of threads, joined by the crate's channels.
//
//   walker thread ──submit(path)──► bounded queue ──► N workers ──► responses ──┐
//   (blocks while the queue is full:                 (read + count,             │
//    the walk runs at the workers' pace)              64 KiB at a time)         ▼
//                                 metrics subscription ───────────────► main thread: one select!
//   Ctrl-C handler ──────────────────────────────────────────────────► (aggregate, progress line)
//
// Reading and counting share one stage on purpose: a worker streams each file through a
// reused buffer, so memory does not grow with file size, and it can give up between two
// chunks when Ctrl-C calls `shutdown_now` (`JobContext::is_cancelled`). The main thread owns
// the totals; each worker owns its tally of words and hands it over when it stops. Nothing
// is shared but channels.
//
// Counts are those of GNU `wc` in the C locale, on any bytes: lines are newline bytes; a word
// is a maximal run of bytes other than space, \t, \n, \v, \f, \r that holds at least one
// printable ASCII byte (0x21..=0x7e). Other bytes (controls, bytes >= 0x80) neither start nor
// end a word. The counting lives in `common/wc.rs`, shared with the Redis Streams examples.

use std::cmp::Ordering;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use channel_orchestrator::crossbeam_channel::{Sender, never, select, unbounded};
use channel_orchestrator::{
    JobContext, JobError, MetricsEvent, MetricsSnapshot, Orchestrator, Response, Submitter,
};
use clap::Parser;
use walkdir::{DirEntry, WalkDir};

use status_line::StatusLine;

#[path = "common/signals.rs"]
mod signals;
#[path = "common/status_line.rs"]
mod status_line;
#[path = "common/wc.rs"]
mod wc;
use wc::{Counter, Counts, WordCounts};

/// Bytes read per `read` call; each worker owns one buffer of this size.
const CHUNK: usize = 64 * 1024;
/// Files waiting for a worker. Small: the walker only has to stay a little ahead.
const QUEUE: usize = 256;
/// How often the metrics subscription sends a snapshot (and the progress line is redrawn).
const TICK: Duration = Duration::from_millis(200);

/// Counts files, lines, words and bytes (as `LC_ALL=C wc` does) in every regular file under
/// the given directories, in parallel, with a live progress line on stderr.
#[derive(Parser)]
#[command(
    name = "analyze",
    version,
    after_help = "Symbolic links to files are read; links to directories are not followed; \
                  FIFOs, sockets and devices are skipped.\n\
                  Exit status: 0; 1 if some path could not be read; 2 on bad usage; 130 if \
                  interrupted (Ctrl-C prints the report of what finished; a second Ctrl-C \
                  quits at once)."
)]
struct Args {
    /// Directories and files to count [default: this crate's src/]
    #[arg(
        value_name = "DIR|FILE",
        default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/src"),
        hide_default_value = true
    )]
    roots: Vec<PathBuf>,
    /// Worker threads [default: one per CPU]
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// How many most common words and slowest files to show; 0 skips the word tally
    #[arg(long, value_name = "N", default_value_t = 10)]
    top: usize,
    /// Also list every file in the table
    #[arg(long)]
    per_file: bool,
    /// Print one JSON object instead of the table
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    // Bad usage prints the error and exits with status 2; `--help` and `--version` exit with 0.
    let args = Args::parse();
    let interrupt = signals::interrupts("analyze");

    let mut builder = Orchestrator::builder()
        .queue_capacity(QUEUE)
        .thread_name("analyze")
        .metrics_interval(TICK);
    if let Some(n) = args.workers {
        builder = builder.workers(n);
    }
    let keep_words = args.top > 0;
    // Each worker tallies the words of the files it finished; its tally arrives here when
    // its thread ends, at shutdown (see `Worker`'s `Drop`).
    let (tally_tx, tallies) = unbounded();
    let built = builder.build_with_context(
        move |_worker| Worker::new(tally_tx.clone()),
        move |worker: &mut Worker, ctx: &JobContext, path: PathBuf| {
            let outcome = worker.analyze(&path, ctx, keep_words);
            (path, outcome)
        },
    );
    let (orch, responses) = match built {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let workers = orch.workers();
    // Subscribe before the first submit, so the progress line sees all of the work.
    let mut events = orch.subscribe();

    let (walk_tx, mut walk_rx) = unbounded();
    let walker = {
        let roots = args.roots.clone();
        let submitter = orch.submitter();
        thread::spawn(move || walk(&roots, &submitter, &walk_tx))
    };

    let started = Instant::now();
    let mut report = Report::default();
    let mut progress = Progress::new();
    let mut answered = 0u64;
    // Known once the walker is done: how many files it submitted, so how many answers to wait for.
    let mut expected = None;
    let mut interrupted = false;
    while expected != Some(answered) {
        select! {
            recv(responses) -> response => {
                // The orchestrator is alive, so the channel is connected.
                let Ok(response) = response else { break };
                answered += 1;
                if let Some(failure) = report.add(response) {
                    progress.note(&failure.to_string());
                }
            }
            recv(walk_rx) -> msg => match msg {
                Ok(Walk::Failed(failure)) => {
                    progress.note(&failure.to_string());
                    report.errors.push(failure);
                }
                Ok(Walk::Done { submitted, skipped }) => {
                    expected = Some(submitted);
                    report.skipped = skipped;
                }
                Err(_) if expected.is_some() => walk_rx = never(), // done, and gone
                // The walker died without `Done` (a bug): `shutdown` below still answers
                // everything it submitted.
                Err(_) => break,
            },
            recv(events) -> event => match event {
                Ok(MetricsEvent::Snapshot(s)) => progress.update(&s, &report),
                Ok(_) => {} // worker events; `MetricsEvent` is non-exhaustive
                Err(_) => events = never(), // evicted for falling behind: no more progress
            },
            recv(interrupt) -> _ => {
                interrupted = true;
                progress.note("interrupted: finishing the report (Ctrl-C again quits at once)");
                break;
            }
        }
    }
    progress.finish();

    // Normally every file is answered and this returns at once. After Ctrl-C, `shutdown_now`
    // cancels: queued files come back unstarted, running ones stop at their next chunk.
    let shutdown = if interrupted {
        orch.shutdown_now()
    } else {
        orch.shutdown()
    };
    report.not_started = shutdown.unstarted.len() as u64;
    // After Ctrl-C the walker stops at its next submit, which now fails.
    let _ = walker.join();
    for msg in walk_rx.try_iter() {
        match msg {
            Walk::Failed(failure) => report.errors.push(failure),
            Walk::Done { skipped, .. } => report.skipped = skipped,
        }
    }
    // After a shutdown the channel holds every remaining answer, then reports disconnected.
    for response in responses.iter() {
        report.add(response);
    }
    // Every worker thread has ended, so every tally was sent.
    report.words = merge(tallies.try_iter().collect());

    let run = Run {
        roots: &args.roots,
        workers,
        elapsed: started.elapsed(),
        interrupted,
    };
    let mut out = io::stdout().lock();
    let written = if args.json {
        print_json(&mut out, &run, &report, args.top)
    } else {
        print_table(&mut out, &run, &report, args.top, args.per_file)
    };
    if let Err(e) = written.and_then(|()| out.flush())
        && e.kind() != io::ErrorKind::BrokenPipe
    {
        eprintln!("error: writing the report: {e}");
        return ExitCode::FAILURE;
    }
    if interrupted {
        ExitCode::from(130)
    } else if report.errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

// ---------------------------------------------------------------------------------------------
// Walking: the walker thread lists directories and submits files.

/// What the walker tells the main thread.
enum Walk {
    /// A path that could not be read or listed.
    Failed(Failure),
    /// The last message: how many files were submitted, and how many paths were skipped
    /// (links to directories, FIFOs, sockets, devices).
    Done { submitted: u64, skipped: u64 },
}

/// A path that could not be read, and why.
struct Failure {
    path: PathBuf,
    reason: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.reason)
    }
}

fn failure(path: &Path, e: &io::Error) -> Walk {
    Walk::Failed(Failure {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Walks `roots` depth first, submitting every regular file: first the roots that are files,
/// then each directory root's tree, a directory's files (in name order) before its
/// subdirectories (in name order). `submit` blocks while the queue is full, so the walk never
/// runs far ahead of the workers; it fails only once a shutdown started (Ctrl-C), which ends
/// the walk.
fn walk(roots: &[PathBuf], submitter: &Submitter<PathBuf, FileReport>, tx: &Sender<Walk>) {
    let mut submitted = 0;
    let mut skipped = 0;
    // A root is followed if it is a link; inside the tree, links to directories are not.
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    for root in roots {
        match fs::metadata(root) {
            Ok(m) if m.is_dir() => dirs.push(root.clone()),
            Ok(m) if m.is_file() => files.push(root.clone()),
            Ok(_) => skipped += 1,
            Err(e) => drop(tx.send(failure(root, &e))),
        }
    }
    let mut submit = |path: PathBuf| {
        let accepted = submitter.submit(path).is_ok();
        submitted += u64::from(accepted);
        accepted
    };
    'walk: {
        for file in files {
            if !submit(file) {
                break 'walk;
            }
        }
        for dir in dirs {
            // `walkdir` does not follow links (but the root, already known to be a directory),
            // takes each entry's type from the directory listing (no extra `stat` on Linux),
            // and reports a directory it cannot list as an error, then goes on.
            let tree = WalkDir::new(&dir).min_depth(1).sort_by(files_first);
            for entry in tree {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(e) => {
                        let _ = tx.send(walk_failure(&dir, e));
                        continue;
                    }
                };
                let kind = entry.file_type();
                let is_file = if kind.is_dir() {
                    continue; // `walkdir` goes into it
                } else if kind.is_file() {
                    true
                } else if kind.is_symlink() {
                    match fs::metadata(entry.path()) {
                        Ok(target) => target.is_file(),
                        Err(e) => {
                            let _ = tx.send(failure(entry.path(), &e)); // a dangling link, say
                            continue;
                        }
                    }
                } else {
                    false
                };
                if !is_file {
                    skipped += 1;
                } else if !submit(entry.into_path()) {
                    break 'walk;
                }
            }
        }
    }
    let _ = tx.send(Walk::Done { submitted, skipped });
}

/// A directory's entries in walking order: everything but subdirectories first, then the
/// subdirectories, each group by name. (A link to a directory is not a directory here.)
fn files_first(a: &DirEntry, b: &DirEntry) -> Ordering {
    let is_dir = |e: &DirEntry| e.file_type().is_dir();
    is_dir(a)
        .cmp(&is_dir(b))
        .then_with(|| a.file_name().cmp(b.file_name()))
}

/// A path `walkdir` could not list or inspect; the reason is the I/O error's own text, as for
/// the roots.
fn walk_failure(root: &Path, e: walkdir::Error) -> Walk {
    let path = e.path().unwrap_or(root).to_owned();
    let reason = match e.io_error() {
        Some(io) => io.to_string(),
        None => e.to_string(),
    };
    Walk::Failed(Failure { path, reason })
}

// ---------------------------------------------------------------------------------------------
// Reading and counting: what a worker does with one file.

/// A worker's answer: the path it was given, and what came of it.
type FileReport = (PathBuf, Analyzed);

enum Analyzed {
    Done(Counts),
    Failed(io::Error),
    /// Ctrl-C: abandoned between two chunks.
    Cancelled,
}

/// A worker's state, made on its thread by `init` and kept for every file it reads.
struct Worker {
    /// The read buffer, reused for every file.
    buf: Vec<u8>,
    /// The words of the file being read, added to `tally` once the file is done.
    file_words: WordCounts,
    /// The words of every file this worker finished.
    tally: WordCounts,
    /// Where `tally` goes when this state is dropped.
    tally_out: Sender<WordCounts>,
}

impl Worker {
    fn new(tally_out: Sender<WordCounts>) -> Self {
        Worker {
            buf: vec![0; CHUNK],
            file_words: WordCounts::default(),
            tally: WordCounts::default(),
            tally_out,
        }
    }

    fn analyze(&mut self, path: &Path, ctx: &JobContext, keep_words: bool) -> Analyzed {
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) => return Analyzed::Failed(e),
        };
        self.file_words.clear(); // a file abandoned by Ctrl-C may have left words here
        let mut counter = Counter::new(keep_words.then_some(&mut self.file_words));
        loop {
            if ctx.is_cancelled() {
                return Analyzed::Cancelled;
            }
            match file.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => counter.feed(&self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Analyzed::Failed(e),
            }
        }
        let counts = counter.finish();
        for (word, n) in self.file_words.drain() {
            *self.tally.entry(word).or_insert(0) += n;
        }
        Analyzed::Done(counts)
    }
}

/// Hands the tally over when the worker's thread ends (the orchestrator drops each worker's
/// state on its thread before `shutdown` joins it), or when a handler panic makes `init`
/// rebuild the state. So the tallying is spread over the workers, and the main thread merges
/// one tally per worker instead of one word list per file.
impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.tally_out.send(std::mem::take(&mut self.tally));
    }
}

/// Adds the workers' tallies into the largest one.
fn merge(mut tallies: Vec<WordCounts>) -> WordCounts {
    tallies.sort_by_key(|t| std::cmp::Reverse(t.len()));
    let mut tallies = tallies.into_iter();
    let mut total = tallies.next().unwrap_or_default();
    for tally in tallies {
        for (word, n) in tally {
            *total.entry(word).or_insert(0) += n;
        }
    }
    total
}

// ---------------------------------------------------------------------------------------------
// Aggregating: the main thread's totals.

struct FileRow {
    path: PathBuf,
    counts: Counts,
    time: Duration,
}

#[derive(Default)]
struct Report {
    files: Vec<FileRow>,
    total: Counts,
    words: WordCounts,
    errors: Vec<Failure>,
    /// Links to directories, FIFOs, sockets, devices.
    skipped: u64,
    /// Ctrl-C: files abandoned while being read.
    cancelled: u64,
    /// Ctrl-C: files submitted but never started.
    not_started: u64,
}

impl Report {
    /// Adds one answer; returns the failure to report, if it is one.
    fn add(&mut self, response: Response<FileReport>) -> Option<&Failure> {
        let time = response.handler_time;
        let (path, analyzed) = match response.outcome {
            Ok(report) => report,
            // Only a bug in `analyze_file` could panic; the worker survives it.
            Err(JobError::Panicked(message)) => {
                return self.fail(PathBuf::from("?"), format!("worker panicked: {message}"));
            }
            Err(e) => return self.fail(PathBuf::from("?"), e.to_string()),
        };
        match analyzed {
            Analyzed::Done(counts) => {
                self.total.lines += counts.lines;
                self.total.words += counts.words;
                self.total.bytes += counts.bytes;
                self.files.push(FileRow { path, counts, time });
                None
            }
            Analyzed::Failed(e) => self.fail(path, e.to_string()),
            Analyzed::Cancelled => {
                self.cancelled += 1;
                None
            }
        }
    }

    fn fail(&mut self, path: PathBuf, reason: String) -> Option<&Failure> {
        self.errors.push(Failure { path, reason });
        self.errors.last()
    }

    /// The `n` most common words, most common first (ties by word).
    fn top_words(&self, n: usize) -> Vec<(&[u8], u64)> {
        let mut all: Vec<(&[u8], u64)> = self.words.iter().map(|(w, &c)| (&**w, c)).collect();
        let order = |a: &(&[u8], u64), b: &(&[u8], u64)| b.1.cmp(&a.1).then(a.0.cmp(b.0));
        if n < all.len() {
            all.select_nth_unstable_by(n, order);
            all.truncate(n);
        }
        all.sort_unstable_by(order);
        all
    }

    /// The `n` files that took longest to read and count, slowest first.
    fn slowest(&self, n: usize) -> Vec<&FileRow> {
        let mut rows: Vec<&FileRow> = self.files.iter().collect();
        rows.sort_by(|a, b| b.time.cmp(&a.time).then(a.path.cmp(&b.path)));
        rows.truncate(n);
        rows
    }
}

// ---------------------------------------------------------------------------------------------
// The progress line on stderr.

/// One status line: redrawn in place when stderr is a terminal, a plain line every few
/// seconds otherwise.
struct Progress {
    line: StatusLine,
    /// Plain output: the uptime at which the next line is due.
    next_plain: Duration,
    /// The previous snapshot's uptime and byte total, for MB/s.
    last: (Duration, u64),
}

impl Progress {
    const PLAIN_EVERY: Duration = Duration::from_secs(2);

    fn new() -> Self {
        Progress {
            line: StatusLine::new(),
            next_plain: Self::PLAIN_EVERY,
            last: (Duration::ZERO, 0),
        }
    }

    fn update(&mut self, s: &MetricsSnapshot, report: &Report) {
        let (t0, b0) = std::mem::replace(&mut self.last, (s.uptime, report.total.bytes));
        let dt = s.uptime.saturating_sub(t0).as_secs_f64();
        let mb_per_s = if dt > 0.0 {
            (report.total.bytes - b0) as f64 / 1e6 / dt
        } else {
            0.0
        };
        // The sum of busy fractions: how many workers were busy, on average, last interval.
        let busy: f64 = s.workers.iter().map(|w| w.busy).sum();
        let text = format!(
            "{} files, {:.1} MB | {:>6.0} files/s {:>7.1} MB/s | p99 {:>9.2?} | busy {busy:>4.1}/{} | queued {:>4} | errors {}",
            group(report.files.len() as u64),
            report.total.bytes as f64 / 1e6,
            s.throughput,
            mb_per_s,
            s.latency.p99,
            s.workers.len(),
            s.queued,
            report.errors.len(),
        );
        if self.line.is_terminal() {
            self.line.show(&text);
        } else if s.uptime >= self.next_plain {
            self.line.show(&text);
            self.next_plain = s.uptime + Self::PLAIN_EVERY;
        }
    }

    fn note(&mut self, text: &str) {
        self.line.note(text);
    }

    fn finish(&mut self) {
        self.line.finish();
    }
}

// ---------------------------------------------------------------------------------------------
// The report on stdout.

struct Run<'a> {
    roots: &'a [PathBuf],
    workers: usize,
    elapsed: Duration,
    interrupted: bool,
}

fn print_table(
    out: &mut impl Write,
    run: &Run<'_>,
    report: &Report,
    top: usize,
    per_file: bool,
) -> io::Result<()> {
    if run.interrupted {
        writeln!(
            out,
            "INTERRUPTED: a partial report of the files that finished"
        )?;
    }
    let roots: Vec<String> = run.roots.iter().map(|r| r.display().to_string()).collect();
    let secs = run.elapsed.as_secs_f64();
    writeln!(
        out,
        "{} in {:.2?} with {} ({:.0} files/s, {:.1} MB/s)",
        roots.join(" "),
        run.elapsed,
        count(run.workers as u64, "worker"),
        report.files.len() as f64 / secs,
        report.total.bytes as f64 / 1e6 / secs,
    )?;
    writeln!(out)?;
    let row = |c: &Counts| {
        format!(
            "{:>12} {:>12} {:>14}",
            group(c.lines),
            group(c.words),
            group(c.bytes)
        )
    };
    writeln!(out, "{:>12} {:>12} {:>14}  file", "lines", "words", "bytes")?;
    if per_file {
        let mut rows: Vec<&FileRow> = report.files.iter().collect();
        rows.sort_by(|a, b| a.path.cmp(&b.path));
        for f in rows {
            writeln!(out, "{}  {}", row(&f.counts), f.path.display())?;
        }
    }
    writeln!(
        out,
        "{}  total of {}",
        row(&report.total),
        count(report.files.len() as u64, "file")
    )?;

    if top > 0 {
        writeln!(out, "\nmost common words:")?;
        for (word, n) in report.top_words(top) {
            writeln!(out, "{:>12}  {}", group(n), show_word(word))?;
        }
        writeln!(out, "\nslowest files:")?;
        for f in report.slowest(top) {
            writeln!(
                out,
                "{:>12.2?}  {} ({} bytes)",
                f.time,
                f.path.display(),
                group(f.counts.bytes)
            )?;
        }
    }
    if report.skipped > 0 {
        writeln!(
            out,
            "\nskipped {} links to directories and special files",
            report.skipped
        )?;
    }
    if run.interrupted {
        writeln!(
            out,
            "\nnot finished: {} abandoned while being read, {} queued and never started; the walk stopped early",
            report.cancelled, report.not_started
        )?;
    }
    if !report.errors.is_empty() {
        writeln!(out, "\n{} unreadable:", report.errors.len())?;
        for e in &report.errors {
            writeln!(out, "  {e}")?;
        }
    }
    Ok(())
}

fn print_json(out: &mut impl Write, run: &Run<'_>, report: &Report, top: usize) -> io::Result<()> {
    use serde_json::json;

    // JSON strings are Unicode: paths and words that are not UTF-8 are shown lossily.
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let mut files: Vec<&FileRow> = report.files.iter().collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let per_file: Vec<_> = files
        .iter()
        .map(|f| {
            json!({
                "path": path(&f.path),
                "lines": f.counts.lines,
                "words": f.counts.words,
                "bytes": f.counts.bytes,
                "micros": f.time.as_micros() as u64,
            })
        })
        .collect();
    let value = json!({
        "roots": run.roots.iter().map(|r| path(r)).collect::<Vec<_>>(),
        "workers": run.workers,
        "elapsed_secs": run.elapsed.as_secs_f64(),
        "interrupted": run.interrupted,
        "files": report.files.len(),
        "lines": report.total.lines,
        "words": report.total.words,
        "bytes": report.total.bytes,
        "failed": report.errors.len(),
        "errors": report.errors.iter().map(|e| json!({
            "path": path(&e.path),
            "reason": e.reason,
        })).collect::<Vec<_>>(),
        "skipped": report.skipped,
        "cancelled": report.cancelled,
        "not_started": report.not_started,
        "top_words": report.top_words(top).into_iter().map(|(w, n)| json!({
            "word": String::from_utf8_lossy(w),
            "count": n,
        })).collect::<Vec<_>>(),
        "slowest": report.slowest(top).into_iter().map(|f| json!({
            "path": path(&f.path),
            "micros": f.time.as_micros() as u64,
        })).collect::<Vec<_>>(),
        "per_file": per_file,
    });
    serde_json::to_writer_pretty(&mut *out, &value)?;
    writeln!(out)
}

/// A word for the terminal: as is when it is printable UTF-8, escaped (`\xff`) otherwise.
fn show_word(word: &[u8]) -> String {
    match std::str::from_utf8(word) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_owned(),
        _ => word.escape_ascii().to_string(),
    }
}

/// `1 file`, `1,234 files`.
fn count(n: u64, noun: &str) -> String {
    let s = if n == 1 { "" } else { "s" };
    format!("{} {noun}{s}", group(n))
}

/// `1234567` as `1,234,567`.
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}
