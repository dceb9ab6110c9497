//! A worker process behind a durable queue (Redis Streams with a consumer group): run one on
//! every machine.
//!
//! ```sh
//! cargo run --release --example redis_worker -- --redis redis://HOST:PORT --stream jobs \
//!     --group workers --consumer NAME --results results [--workers N] [--claim-idle MS]
//! ```
//!
//! Each stream entry's `payload` field is counted as `LC_ALL=C wc` counts (the code of
//! `examples/analyze.rs`, in `examples/common/wc.rs`); the result `"LINES WORDS BYTES"` is
//! written with `HSET <results> <entry id> <result>`, and only once that write succeeded is the
//! entry `XACK`ed. A crash between the two makes another consumer count the entry again and
//! rewrite the same result: delivery is at least once, the effect exactly once.
//!
//! - Back-pressure: it reads (`XREADGROUP ... COUNT free`) only as many entries as the
//!   orchestrator can hold, so at most `--queue` + `--workers` entries are taken and unacked
//!   in this process at any time; the rest wait in Redis for whichever consumer is free.
//! - Dead consumers: at start and every `--claim-idle`/2 it takes over (`XAUTOCLAIM`) entries
//!   that another consumer took and left unacked for longer than `--claim-idle`. A restart
//!   under the same `--consumer` name first takes back its own pending entries.
//! - Ctrl-C or SIGTERM: it stops reading, finishes what it took, writes and acks it, and exits
//!   with status 0; entries it never read stay in the stream for the others. A second signal
//!   exits at once (status 130): what it held stays pending and is claimed by the others.
//! - A status line on stderr, from the orchestrator's metrics subscription, once a second.
//! - If Redis fails it exits with status 1; what it held stays pending, as after a crash.
//!
//! `redis_feed` fills the stream and checks the results; see README.md, "Scaling out".

use std::collections::HashSet;
use std::error::Error;
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use channel_orchestrator::crossbeam_channel::{
    Receiver, Sender, TryRecvError, bounded, never, select, unbounded,
};
use channel_orchestrator::{MetricsEvent, MetricsSnapshot, Orchestrator, Response, Submitter};
use clap::Parser;
use redis::{Connection, Value};
use status_line::StatusLine;

#[path = "common/signals.rs"]
mod signals;
#[path = "common/status_line.rs"]
mod status_line;
#[path = "common/streams.rs"]
mod streams;
#[path = "common/wc.rs"]
mod wc;
use streams::{Entry, Payload};

/// How long one `XREADGROUP` waits for new entries: also how soon the reader notices a stop.
const BLOCK: Duration = Duration::from_millis(100);
/// How often the status line is refreshed.
const TICK: Duration = Duration::from_secs(1);

/// Counts the `payload` of each entry of a Redis stream, as `wc` does, with a pool of worker
/// threads; writes each result to a hash and acks the entry.
#[derive(Parser, Clone)]
#[command(name = "redis_worker", version)]
struct Args {
    #[command(flatten)]
    at: streams::Group,
    /// This consumer's name in the group; keep it stable across restarts [default: worker-PID]
    #[arg(long, value_name = "NAME")]
    consumer: Option<String>,
    /// The hash that receives `entry id -> "LINES WORDS BYTES"`
    #[arg(long, value_name = "KEY", default_value = "results")]
    results: String,
    /// Worker threads [default: one per CPU]
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Take over entries another consumer left unacked for this long (milliseconds)
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    claim_idle: u64,
    /// The orchestrator's queue capacity: entries read ahead of the workers
    #[arg(long, value_name = "N", default_value_t = 256)]
    queue: usize,
    /// No status line
    #[arg(long)]
    quiet: bool,
}

/// One entry for a worker thread.
struct Job {
    id: String,
    payload: Payload,
}

/// A worker's answer: the entry id, and the result to write (none for an entry deleted
/// while pending: it is only acked).
type Done = (String, Option<String>);

fn count(job: Job) -> Done {
    let result = match job.payload {
        Payload::Text(bytes) => {
            let mut counter = wc::Counter::new(None);
            counter.feed(&bytes);
            Some(counter.finish().to_string())
        }
        Payload::Missing => Some(format!("error: no `{}` field", streams::PAYLOAD)),
        Payload::Deleted => None,
    };
    (job.id, result)
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("redis_worker: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn Error>> {
    let consumer = args
        .consumer
        .clone()
        .unwrap_or_else(|| format!("worker-{}", std::process::id()));
    let signal = signals::interrupts("redis_worker");
    let client = redis::Client::open(args.at.redis.as_str())?;
    // Two connections: the reader blocks in XREADGROUP on its own, this thread writes.
    let mut writer = client.get_connection()?;
    let reader_con = client.get_connection()?;
    streams::ensure_group(&mut writer, &args.at.stream, &args.at.group)?;

    let mut builder = Orchestrator::builder()
        .queue_capacity(args.queue)
        .thread_name("redis-worker")
        .metrics_interval(TICK);
    if let Some(n) = args.workers {
        builder = builder.workers(n);
    }
    let (orch, responses) = builder.build(count)?;
    let workers = orch.workers();
    let events = orch.subscribe();
    // Everything taken and not yet acked: queued, running, or answered and being written.
    let limit = args.queue + workers;
    eprintln!(
        "redis_worker {consumer}: {} {} as {}/{consumer}, {workers} threads, at most {limit} entries unacked here",
        args.at.redis, args.at.stream, args.at.group
    );

    let (acked_tx, acked_rx) = unbounded::<Vec<String>>();
    let (stop_tx, stop_rx) = bounded::<()>(0);
    let (note_tx, notes) = unbounded::<String>();
    let reader = {
        let reader = Reader {
            con: reader_con,
            submitter: orch.submitter(),
            stream: args.at.stream.clone(),
            group: args.at.group.clone(),
            consumer: consumer.clone(),
            limit,
            claim_idle: Duration::from_millis(args.claim_idle),
            acked: acked_rx,
            stop: stop_rx,
            notes: note_tx,
        };
        thread::Builder::new()
            .name("redis-reader".into())
            .spawn(move || reader.run())?
    };

    let mut status = Status::new(&consumer, args.quiet);
    let mut writer = Writer {
        con: writer,
        args: &args,
        acked: 0,
    };
    let mut events = events;
    // The reader's end: Ok when told to stop, Err when Redis failed.
    let mut failure: Option<String> = None;
    loop {
        select! {
            recv(responses) -> response => {
                let Ok(response) = response else { break };
                let mut batch = vec![response];
                batch.extend(responses.try_iter().take(limit));
                let ids = writer.write(batch)?;
                // The reader may have stopped already; then nobody needs the ids back.
                let _ = acked_tx.send(ids);
            }
            recv(events) -> event => match event {
                Ok(MetricsEvent::Snapshot(s)) => status.update(&s, writer.acked),
                Ok(_) => {}
                Err(_) => events = never(),
            },
            recv(notes) -> note => match note {
                Ok(note) => status.note(&note),
                // The reader ended: Redis failed (a stop comes from this thread, below).
                Err(_) => {
                    failure = Some("the reader stopped".into());
                    break;
                }
            },
            recv(signal) -> _ => {
                status.note(&format!("{consumer}: stopping: no more reads; finishing and acking what was taken (a second signal exits at once)"));
                break;
            }
        }
    }

    // Stop the reader (it checks between two reads, at most BLOCK apart) and wait for it, so
    // that nothing is submitted after the shutdown below.
    drop(stop_tx);
    match reader.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => failure = Some(e),
        Err(_) => failure = Some("the reader panicked".into()),
    }
    for note in notes.try_iter() {
        status.note(&note);
    }
    // Every entry taken runs; then the responses channel holds the rest and disconnects.
    let report = orch.shutdown();
    let mut rest: Vec<_> = responses.iter().collect();
    while !rest.is_empty() {
        let batch = rest.drain(..rest.len().min(limit)).collect();
        writer.write(batch)?;
    }
    status.finish();
    eprintln!(
        "redis_worker {consumer}: stopped: {} entries counted, {} acked, {} failed",
        report.completed, writer.acked, report.failed
    );
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Reading: one thread takes entries from Redis and submits them.

struct Reader {
    con: Connection,
    submitter: Submitter<Job, Done>,
    stream: String,
    group: String,
    consumer: String,
    /// The most entries taken and not yet acked.
    limit: usize,
    claim_idle: Duration,
    /// The ids the main thread acked.
    acked: Receiver<Vec<String>>,
    /// Disconnected when the reader must stop.
    stop: Receiver<()>,
    /// Lines for the main thread to print; dropping it tells the main thread the reader ended.
    notes: Sender<String>,
}

impl Reader {
    fn run(mut self) -> Result<(), String> {
        let result = self.read();
        if let Err(e) = &result {
            let _ = self
                .notes
                .send(format!("redis_worker: reading failed: {e}"));
        }
        result
    }

    fn read(&mut self) -> Result<(), String> {
        // Entries taken and not yet acked, by id: the back-pressure count, and the filter
        // that keeps an entry claimed back from this very process from running twice here.
        let mut taken: HashSet<String> = HashSet::new();
        // Own pending entries first (a restart under the same name), from this id on.
        let mut backlog = Some("0".to_string());
        let mut cursor = "0-0".to_string();
        let mut next_claim = Instant::now();
        let claim_every = (self.claim_idle / 2).max(Duration::from_millis(10));
        let mut claimed = 0u64;
        loop {
            if self.stop.try_recv() != Err(TryRecvError::Empty) {
                return Ok(()); // disconnected: stop
            }
            for ids in self.acked.try_iter() {
                for id in ids {
                    taken.remove(&id);
                }
            }
            let free = self.limit.saturating_sub(taken.len());
            if free == 0 {
                // Full: wait for acks (or a stop).
                select! {
                    recv(self.acked) -> ids => {
                        for id in ids.into_iter().flatten() {
                            taken.remove(&id);
                        }
                    }
                    recv(self.stop) -> _ => return Ok(()),
                }
                continue;
            }
            let entries = if let Some(from) = backlog.take() {
                let entries = self.read_group(&from, free, None)?;
                if !entries.is_empty() {
                    let _ = self.notes.send(format!(
                        "{}: took back {} of its own pending entries",
                        self.consumer,
                        entries.len()
                    ));
                }
                backlog = entries.last().map(|e| e.id.clone());
                entries
            } else if Instant::now() >= next_claim {
                let (next, entries) = self.autoclaim(&cursor, free)?;
                if next == "0-0" {
                    next_claim = Instant::now() + claim_every;
                }
                cursor = next;
                let new = entries.iter().filter(|e| !taken.contains(&e.id)).count();
                if new > 0 {
                    claimed += new as u64;
                    let _ = self.notes.send(format!(
                        "{}: claimed {new} entries idle over {:?} (total {claimed})",
                        self.consumer, self.claim_idle
                    ));
                }
                entries
            } else {
                self.read_group(">", free, Some(BLOCK))?
            };
            for Entry { id, payload } in entries {
                if !taken.insert(id.clone()) {
                    continue; // already here: claimed back from this process
                }
                if self.submitter.submit(Job { id, payload }).is_err() {
                    return Ok(()); // shut down
                }
            }
        }
    }

    /// `XREADGROUP`: new entries (`from` = `>`), or this consumer's pending ones after `from`.
    fn read_group(
        &mut self,
        from: &str,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<Entry>, String> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("STREAMS").arg(&self.stream).arg(from);
        let reply: Value = cmd.query(&mut self.con).map_err(|e| e.to_string())?;
        streams::read_reply(reply)
    }

    /// `XAUTOCLAIM`: up to `count` entries idle longer than `claim_idle`, from `cursor` on.
    fn autoclaim(&mut self, cursor: &str, count: usize) -> Result<(String, Vec<Entry>), String> {
        let reply: Value = redis::cmd("XAUTOCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(self.claim_idle.as_millis() as u64)
            .arg(cursor)
            .arg("COUNT")
            .arg(count)
            .query(&mut self.con)
            .map_err(|e| e.to_string())?;
        streams::autoclaim_reply(reply)
    }
}

// ---------------------------------------------------------------------------------------------
// Writing: the main thread stores results, then acks.

struct Writer<'a> {
    con: Connection,
    args: &'a Args,
    acked: u64,
}

impl Writer<'_> {
    /// Writes the results of `batch` with one `HSET`, then, once that succeeded, acks their
    /// entries with one `XACK`. Returns the ids acked.
    fn write(&mut self, batch: Vec<Response<Done>>) -> Result<Vec<String>, Box<dyn Error>> {
        let mut ids = Vec::with_capacity(batch.len());
        let mut hset = redis::cmd("HSET");
        hset.arg(&self.args.results);
        let mut fields = 0;
        for response in batch {
            match response.outcome {
                Ok((id, result)) => {
                    if let Some(result) = result {
                        hset.arg(&id).arg(result);
                        fields += 1;
                    }
                    ids.push(id);
                }
                // Counting does not panic; were it to, the entry stays pending and another
                // consumer retries it after --claim-idle.
                Err(e) => eprintln!("redis_worker: a job failed: {e}"),
            }
        }
        if fields > 0 {
            hset.exec(&mut self.con)?;
        }
        if !ids.is_empty() {
            redis::cmd("XACK")
                .arg(&self.args.at.stream)
                .arg(&self.args.at.group)
                .arg(&ids)
                .exec(&mut self.con)?;
            self.acked += ids.len() as u64;
        }
        Ok(ids)
    }
}

// ---------------------------------------------------------------------------------------------
// The status line on stderr.

struct Status {
    consumer: String,
    quiet: bool,
    line: StatusLine,
}

impl Status {
    fn new(consumer: &str, quiet: bool) -> Self {
        Status {
            consumer: consumer.to_owned(),
            quiet,
            line: StatusLine::new(),
        }
    }

    fn update(&mut self, s: &MetricsSnapshot, acked: u64) {
        if self.quiet {
            return;
        }
        self.line.show(&format!(
            "{}: completed {} | queued {} | in flight {} | {:.0} entries/s | acked {}",
            self.consumer, s.completed, s.queued, s.in_flight, s.throughput, acked
        ));
    }

    /// A line that stays, above the status line.
    fn note(&mut self, text: &str) {
        self.line.note(text);
    }

    fn finish(&mut self) {
        self.line.finish();
    }
}
