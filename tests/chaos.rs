//! Chaos: randomized schedules over many seeds. Concurrent submitters use every submitting
//! method (`submit`, `try_submit`, `submit_timeout`, `call` from `Submitter`s;
//! `submit_with_deadline` and a `process`/`process_ordered` stream from the orchestrator's own
//! threads); handlers panic, sleep, and sometimes kill their worker (a failing `init` on the
//! rebuild); the response consumer pauses, stalls and may drop its receiver mid-stream;
//! subscribers come and go, read, stall, or unsubscribe; and the run ends in every kind of
//! shutdown (`shutdown`, `shutdown_timeout`, `shutdown_now`, drop) at a random moment.
//!
//! Two more hostile behaviours, each with a per-seed probability:
//! - re-entrant handlers: some top-level requests, when handled, call back into their own pool
//!   through a `Submitter` the handler captured (an `Arc<OnceLock<_>>` filled after `build`):
//!   one nested blocking `call` and/or one nested blocking `submit`, in either order. Nested
//!   requests are plain (they panic, sleep and panic-drop like any other, but never nest), so
//!   recursion stops there. Pools have 1 to 4 workers and every distribution, so a nested
//!   request either waits for another worker or, when waiting would leave no worker free
//!   (always for a `call` in a 1-worker pool, which the checker asserts), runs inline on the
//!   calling worker with a fresh state from `init` — which may itself fail, answering
//!   `JobError::Panicked("init panicked: ..")` without running the handler. A nested request
//!   is accounted like any other: its `call`'s answer (`Cancelled` if `shutdown_now` or an
//!   expired `shutdown_timeout` took it off the queue, `ShutDown` once a shutdown started), or
//!   one response on the responses channel, or unstarted, or undelivered where allowed;
//! - request values whose `Drop` panics (with the quiet-panic marker, after counting the drop)
//!   wherever the crate or the handler drops them: a worker dropping a request whose deadline
//!   had passed (answered `DeadlineExceeded`; these panic-drop most often), a handler consuming
//!   its request (a handler panic, answered `JobError::Panicked`; only where `init` never
//!   fails, or for nested requests, so that worker deaths do not pile up respawn backoffs), a
//!   nested request dropped unrun because its inline `init` failed, a `process` iterator
//!   dropped with an input pending, a drop that left requests unstarted. The test defuses the
//!   ones that come back to it (refusals, cancelled calls, `unstarted`) before dropping them.
//!   No worker may die of it, no panic may escape a shutdown, nothing may be lost.
//!
//! In half the scenarios without per-key queues, a thread also resizes the pool (1 to 4
//! workers) at random moments, on into the shutdown.
//!
//! Every scenario checks:
//! - exactly-once: every accepted request (nested ones included) is answered exactly once (on
//!   the responses channel, to its `call`, or to its `process` iterator), or handed back
//!   unstarted, or cancelled back to its `call`, or — only when its receiver was dropped, or a
//!   `shutdown_timeout` gave up on a full response channel — counted undelivered; nothing runs
//!   twice, nothing refused runs, every answer names the worker thread that ran it (for a
//!   nested request run inline: the worker whose handler made it), and the report's (or, for
//!   drop, the `Shutdown` event's) totals are exact
//!   (`submitted == completed + failed + unstarted + cancelled`);
//! - no hang: every wait is bounded, and a whole scenario must finish within
//!   [`SCENARIO_LIMIT`];
//! - no thread left behind: after each shutdown, `/proc/self/task` is back to the count it had
//!   before the first scenario (all run one after another in a single `#[test]`, the only
//!   test in this binary, so no other test's threads are counted);
//! - every request value is dropped exactly once (a drop-counting request type);
//! - live metrics never overshoot, and every subscription sees consecutive sequence numbers.
//!
//! A failing scenario prints its seed. Reproduce it with
//! `CHAOS_SEED=<seed> cargo test --test chaos -- --nocapture` (which prints the scenario
//! first, since a hung one never unwinds to print it); run more seeds with
//! `CHAOS_SEEDS=<count> cargo test --release --test chaos`; `CHAOS_VERBOSE=1` prints each
//! scenario's totals.

mod common;

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use channel_orchestrator::crossbeam_channel::{Receiver, RecvTimeoutError, Sender, unbounded};
use channel_orchestrator::{
    CallError, Distribution, JobError, Limited, MetricsEvent, MetricsSnapshot, Orchestrator,
    Priority, RequestId, Response, ShutdownReport, ShutdownSummary, SubmitError,
    SubmitTimeoutError, Submitter, TrySubmitError, WorkerId,
};
use common::{MARKER, Rng, Stop, WAIT, quiet_panics, within};

/// Scenarios in a default run (seeds `1..=SEEDS`); `CHAOS_SEEDS` overrides it.
const SEEDS: u64 = 200;
/// Bounds of one scenario.
const MAX_WORKERS: u64 = 4;
const MAX_QUEUE: u64 = 16;
const MAX_PRODUCERS: u64 = 3;
const MAX_PER_PRODUCER: u64 = 120;
const MAX_PROCESS: u64 = 150;
const MAX_DEADLINE_SUBMITS: u64 = 12;
const MAX_SUBSCRIBERS: u64 = 5;
/// Longest handler sleep, in microseconds, of the two kinds of scenario: quick and slow ones
/// (slow ones keep the queues full, so shutdowns find work queued and submitters blocked).
const MAX_SLEEP_US: [u64; 2] = [400, 3_000];
/// Longest pause of the response consumer's one long stall, in milliseconds.
const MAX_STALL_MS: u64 = 40;
/// Longest the main thread keeps poking the running pool before the shutdown, in ms.
const MAX_RUN_MS: u64 = 25;
/// The longest one scenario may take before it counts as hung.
const SCENARIO_LIMIT: Duration = Duration::from_secs(30);
/// How long a finished thread may linger in `/proc/self/task` after its join.
const THREAD_EXIT_GRACE: Duration = Duration::from_secs(3);

/// A deterministic draw per (seed, tag, salt), so the checker knows what each request did.
fn draw(seed: u64, tag: u64, salt: u64) -> u64 {
    Rng::new(seed ^ tag.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ salt.wrapping_mul(0xA5A5)).next()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Dist {
    Shared,
    RoundRobin,
    ByKey,
}

/// How one extra subscriber behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sub {
    /// Reads everything, pausing this many microseconds per event.
    Slow(u64),
    /// Never reads until the shutdown: gets evicted once its buffer is full.
    Stalled,
    /// Reads this many events, then drops its receiver.
    Leaves(u64),
}

#[derive(Debug, Clone)]
struct Scenario {
    seed: u64,
    workers: usize,
    queue_capacity: usize,
    dist: Dist,
    response_capacity: Option<usize>,
    metrics: bool,
    interval: Duration,
    producers: u64,
    per_producer: u64,
    /// `Some((inputs, stop reading after, ordered))`: a `process` stream from the main scope.
    process: Option<(u64, Option<u64>, bool)>,
    deadline_submits: u64,
    panic_percent: u64,
    slow_percent: u64,
    max_sleep_us: u64,
    /// Chance that a rebuild of a worker's state (after a panic) panics, killing the thread.
    init_fail_percent: u64,
    reader_pause_us: u64,
    /// `(after this many responses, stall this long)`.
    reader_stall: Option<(u64, Duration)>,
    /// The consumer drops the receiver after this many responses.
    reader_quits_after: Option<u64>,
    subscribers: Vec<(Sub, usize)>,
    run_for: Duration,
    /// Subscribe once more right before the shutdown; that subscriber must get the summary.
    late_subscriber: bool,
    stop: Stop,
    /// Chance that a top-level request is re-entrant: when handled, it makes a nested `call`
    /// and/or a nested blocking `submit` into its own pool.
    reentrant_percent: u64,
    /// Whether a thread resizes the pool (1 to `MAX_WORKERS` workers) at random moments,
    /// into the shutdown too (per-key pools cannot be resized).
    resizes: bool,
    /// Chance that a request's `Drop` panics (after counting the drop).
    drop_panic_percent: u64,
    /// `Some(k)`: the odd-numbered producers submit through one `limited(k)` handle; the
    /// handler checks that no more than `k` of their requests ever run at once.
    limit: Option<usize>,
    /// Whether producers draw a priority for their `submit` and `try_submit`.
    priorities: bool,
}

impl Scenario {
    fn new(seed: u64) -> Self {
        let mut r = Rng::new(seed);
        let stop = Stop::draw(&mut r);
        let response_capacity = match r.below(3) {
            0 => Some(r.below(4) as usize),
            _ => None,
        };
        let dist = match r.below(3) {
            0 => Dist::Shared,
            1 => Dist::RoundRobin,
            _ => Dist::ByKey,
        };
        let process = r.chance(60).then(|| {
            let n = 1 + r.below(MAX_PROCESS);
            let stop_after = r.chance(30).then(|| r.below(n));
            (n, stop_after, r.chance(50))
        });
        let subscribers = (0..r.below(MAX_SUBSCRIBERS + 1))
            .map(|_| {
                let kind = match r.below(3) {
                    0 => Sub::Slow(r.below(500)),
                    1 => Sub::Stalled,
                    _ => Sub::Leaves(r.below(20)),
                };
                (kind, 1 + r.below(16) as usize)
            })
            .collect();
        Scenario {
            seed,
            workers: 1 + r.below(MAX_WORKERS) as usize,
            queue_capacity: 1 + r.below(MAX_QUEUE) as usize,
            dist,
            response_capacity,
            metrics: r.chance(80),
            interval: Duration::from_millis(1 + r.below(10)),
            producers: r.below(MAX_PRODUCERS + 1),
            per_producer: 1 + r.below(MAX_PER_PRODUCER),
            process,
            deadline_submits: r.below(MAX_DEADLINE_SUBMITS + 1),
            panic_percent: [0, 5, 30][r.below(3) as usize],
            slow_percent: [0, 10, 50, 90][r.below(4) as usize],
            max_sleep_us: MAX_SLEEP_US[r.below(2) as usize],
            init_fail_percent: [0, 0, 30][r.below(3) as usize],
            reader_pause_us: [0, 0, 20, 200][r.below(4) as usize],
            reader_stall: r
                .chance(30)
                .then(|| (r.below(40), Duration::from_millis(r.below(MAX_STALL_MS)))),
            reader_quits_after: r.chance(15).then(|| r.below(60)),
            subscribers,
            run_for: Duration::from_millis(r.below(MAX_RUN_MS)),
            late_subscriber: r.chance(50),
            stop,
            reentrant_percent: [0, 5, 15, 40][r.below(4) as usize],
            drop_panic_percent: [0, 0, 4, 10][r.below(4) as usize],
            // Drawn last, so the scenarios of earlier seeds keep their shape.
            resizes: dist != Dist::ByKey && r.chance(50),
            limit: r.chance(50).then(|| 1 + r.below(4) as usize),
            priorities: r.chance(50),
        }
    }

    /// Whether `tag` is submitted through the limited handle.
    fn limited_tag(&self, tag: u64) -> bool {
        self.limit.is_some() && tag < self.producer_tags() && (tag / self.per_producer) % 2 == 1
    }

    fn producer_tags(&self) -> u64 {
        self.producers * self.per_producer
    }
    fn process_base(&self) -> u64 {
        self.producer_tags()
    }
    fn process_count(&self) -> u64 {
        self.process.map_or(0, |(n, _, _)| n)
    }
    fn deadline_base(&self) -> u64 {
        self.process_base() + self.process_count()
    }
    /// Top-level requests: made by the producers, the `process` stream and the deadline
    /// submits.
    fn tags(&self) -> u64 {
        self.deadline_base() + self.deadline_submits
    }
    /// Every tag: the top-level ones, then two nested ones per top-level tag (its nested
    /// `call`, then its nested `submit`).
    fn all_tags(&self) -> u64 {
        3 * self.tags()
    }
    fn nested_tag(&self, parent: u64, op: Nested) -> u64 {
        self.tags() + 2 * parent + u64::from(op == Nested::Submit)
    }
    fn is_nested(&self, tag: u64) -> bool {
        tag >= self.tags()
    }
    fn is_process_tag(&self, tag: u64) -> bool {
        (self.process_base()..self.deadline_base()).contains(&tag)
    }
    fn panics(&self, tag: u64) -> bool {
        draw(self.seed, tag, 1) % 100 < self.panic_percent
    }
    /// Requests the crate drops unrun (past their deadline) panic in `Drop` more often than
    /// the others. For those, the `Drop` panic comes in the handler, a handler panic like any
    /// other; top-level ones only in scenarios whose `init` never fails (handler panics kill
    /// workers there already; more deaths would only add respawn backoffs to the run).
    fn drop_panics(&self, tag: u64) -> bool {
        let percent = if self.expired(tag) {
            5 * self.drop_panic_percent
        } else if self.init_fail_percent == 0 || self.is_nested(tag) {
            self.drop_panic_percent
        } else {
            0
        };
        draw(self.seed, tag, 6) % 100 < percent
    }
    /// Whether the handler of `tag`, once run, answers a panic: its own, or its request's
    /// `Drop` when the handler consumes it.
    fn fails(&self, tag: u64) -> bool {
        self.panics(tag) || self.drop_panics(tag)
    }
    /// The nested operations a handled request makes, in order (none for nested requests).
    fn nested_ops(&self, tag: u64) -> &'static [Nested] {
        if self.is_nested(tag) || draw(self.seed, tag, 7) % 100 >= self.reentrant_percent {
            return &[];
        }
        const OPS: [&[Nested]; 4] = [
            &[Nested::Call],
            &[Nested::Submit],
            &[Nested::Call, Nested::Submit],
            &[Nested::Submit, Nested::Call],
        ];
        OPS[(draw(self.seed, tag, 8) % 4) as usize]
    }
    /// Nested requests sleep a quarter as long: long enough to keep their callers blocked
    /// while others queue up behind them, short enough to keep the run's length.
    fn sleep_us(&self, tag: u64) -> u64 {
        if draw(self.seed, tag, 2) % 100 < self.slow_percent {
            let max = if self.is_nested(tag) {
                self.max_sleep_us / 4
            } else {
                self.max_sleep_us
            };
            draw(self.seed, tag, 3) % max
        } else {
            0
        }
    }
    /// Deadline submits: half of them carry a deadline long past (never run), half one far off.
    fn deadline_passed(&self, tag: u64) -> bool {
        draw(self.seed, tag, 4).is_multiple_of(2)
    }
    /// A deadline submit whose deadline had passed when it was submitted.
    fn expired(&self, tag: u64) -> bool {
        (self.deadline_base()..self.tags()).contains(&tag) && self.deadline_passed(tag)
    }
    /// Whether the scenario allows accepted work to be given up in a graceful shutdown: only a
    /// worker whose replacements keep dying makes a draining shutdown hand work back: a
    /// rebuild after a handler panic (its own, or its request's `Drop`) whose `init` fails. A
    /// nested request run inline whose `init` fails kills nothing.
    fn workers_may_die(&self) -> bool {
        let drop_panics = self.drop_panic_percent > 0 && self.reentrant_percent > 0;
        self.init_fail_percent > 0 && (self.panic_percent > 0 || drop_panics)
    }
}

/// A nested operation of a re-entrant handler.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Nested {
    Call,
    Submit,
}

thread_local! {
    /// While a handler makes a nested call or submit: the nested request's tag. An `init`
    /// that runs on this thread meanwhile runs for that request, inline on this worker.
    static NESTING: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Marks this thread as making the nested request `tag` while it lives.
struct Nesting;

impl Nesting {
    fn enter(tag: u64) -> Self {
        NESTING.with(|n| n.set(Some(tag)));
        Nesting
    }
}

impl Drop for Nesting {
    fn drop(&mut self) {
        NESTING.with(|n| n.set(None));
    }
}

/// Both ends of an unbounded channel.
type Channel<T> = (Sender<T>, Receiver<T>);

/// Everything the handler and the request values report, per tag and in total.
struct Log {
    /// Drops of each request value.
    drops: Vec<AtomicU32>,
    /// Request values created (a `process` input is created only when the iterator pulls it).
    created: Vec<AtomicBool>,
    /// Handler runs per tag.
    ran: Vec<AtomicU32>,
    /// Handler runs that ended (returned or panicked); bumped before the handler returns.
    finished: AtomicU64,
    /// Submits begun (bumped before the call): an upper bound on `submitted + rejected`.
    attempts: AtomicU64,
    /// `init` runs, to let rebuilds fail while the first start never does.
    inits: AtomicU64,
    /// Nested requests run inline whose `init` failed (so their handler never ran).
    init_failed: Vec<AtomicBool>,
    /// How many `init`s failed for a nested request run inline; bumped before the panic.
    inline_init_failures: AtomicU64,
    /// Nested requests whose handler ran inline, on the worker that made them.
    ran_inline: Vec<AtomicBool>,
    /// The worker thread (index + 1, from its name) that ran each request's handler, or on
    /// which its inline `init` failed; 0 if none. Its answer must name that worker.
    worker: Vec<AtomicU64>,
    /// `Drop` panics raised (by requests dropped outside the test).
    drop_panics: AtomicU64,
    /// How each nested request ended, from its handler's side.
    nested: Channel<(u64, Fate)>,
    /// What a handler found wrong with a nested request's result (checked after the run).
    wrong: Channel<String>,
    /// Limited requests running now, and the most ever at once.
    limited_now: AtomicU64,
    limited_most: AtomicU64,
}

impl Log {
    fn new(n: u64) -> Arc<Self> {
        Arc::new(Log {
            drops: (0..n).map(|_| AtomicU32::new(0)).collect(),
            created: (0..n).map(|_| AtomicBool::new(false)).collect(),
            ran: (0..n).map(|_| AtomicU32::new(0)).collect(),
            finished: AtomicU64::new(0),
            attempts: AtomicU64::new(0),
            inits: AtomicU64::new(0),
            init_failed: (0..n).map(|_| AtomicBool::new(false)).collect(),
            inline_init_failures: AtomicU64::new(0),
            ran_inline: (0..n).map(|_| AtomicBool::new(false)).collect(),
            worker: (0..n).map(|_| AtomicU64::new(0)).collect(),
            drop_panics: AtomicU64::new(0),
            nested: unbounded(),
            wrong: unbounded(),
            limited_now: AtomicU64::new(0),
            limited_most: AtomicU64::new(0),
        })
    }
    fn ran(&self, tag: u64) -> u32 {
        self.ran[tag as usize].load(Ordering::SeqCst)
    }
    fn init_failed(&self, tag: u64) -> bool {
        self.init_failed[tag as usize].load(Ordering::SeqCst)
    }
    /// Records that `tag` ran (or failed its inline `init`) on this worker thread.
    fn ran_here(&self, tag: u64) {
        let name = thread::current().name().map(str::to_owned);
        let index = name
            .as_deref()
            .and_then(|n| n.rsplit_once("-worker-"))
            .and_then(|(_, i)| i.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("request {tag} handled on thread {name:?}"));
        self.worker[tag as usize].store(index + 1, Ordering::SeqCst);
    }
    /// Checks that an answer for `tag` names the worker that ran it.
    fn check_worker(&self, tag: u64, worker: WorkerId) {
        let ran_on = self.worker[tag as usize].load(Ordering::SeqCst);
        assert_eq!(
            worker.index() as u64 + 1,
            ran_on,
            "request {tag} answered as worker {worker}, ran on worker {}",
            ran_on.wrapping_sub(1)
        );
    }
}

/// The request: what the handler should do, and a drop counter.
struct Req {
    tag: u64,
    panic: bool,
    sleep_us: u64,
    /// The nested requests its handler makes into its own pool.
    nested: &'static [Nested],
    /// Its `Drop` panics (unless defused by the test, which drops it itself).
    drop_panics: bool,
    log: Arc<Log>,
}

impl Req {
    fn new(sc: &Scenario, tag: u64, log: &Arc<Log>) -> Self {
        let was = log.created[tag as usize].swap(true, Ordering::SeqCst);
        assert!(!was, "tag {tag} created twice");
        Req {
            tag,
            panic: sc.panics(tag),
            sleep_us: sc.sleep_us(tag),
            nested: sc.nested_ops(tag),
            drop_panics: sc.drop_panics(tag),
            log: Arc::clone(log),
        }
    }

    /// Drops a request that came back to the test, without its `Drop` panic.
    fn defuse(mut self) {
        self.drop_panics = false;
    }
}

impl Drop for Req {
    fn drop(&mut self) {
        self.log.drops[self.tag as usize].fetch_add(1, Ordering::SeqCst);
        if self.drop_panics && !thread::panicking() {
            self.log.drop_panics.fetch_add(1, Ordering::SeqCst);
            panic!("{MARKER} drop panic #{}#", self.tag);
        }
    }
}

fn answer(tag: u64) -> u64 {
    tag.wrapping_mul(31) + 7
}

/// The tag behind an outcome: the answer's inverse, or the tag in the panic message.
fn tag_of(outcome: &Result<u64, JobError>) -> Option<u64> {
    match outcome {
        Ok(v) => Some((v - 7) / 31),
        Err(JobError::Panicked(msg)) => {
            let start = msg.find('#')? + 1;
            let end = start + msg[start..].find('#')?;
            msg[start..end].parse().ok()
        }
        Err(_) => None,
    }
}

/// Counts one limited request as running while it lives (also while its handler unwinds).
struct LimitedRun(Arc<Log>);

impl LimitedRun {
    fn enter(log: &Arc<Log>) -> Self {
        let now = log.limited_now.fetch_add(1, Ordering::SeqCst) + 1;
        log.limited_most.fetch_max(now, Ordering::SeqCst);
        LimitedRun(Arc::clone(log))
    }
}

impl Drop for LimitedRun {
    fn drop(&mut self) {
        self.0.limited_now.fetch_sub(1, Ordering::SeqCst);
    }
}

fn handler(sc: &Scenario, pool: &OnceLock<Submitter<Req, u64>>, req: Req) -> u64 {
    let tag = req.tag;
    let _limited = sc.limited_tag(tag).then(|| LimitedRun::enter(&req.log));
    req.log.ran[tag as usize].fetch_add(1, Ordering::SeqCst);
    req.log.ran_here(tag);
    if NESTING.with(Cell::get) == Some(tag) {
        // Made by a handler on this very thread: run inline.
        req.log.ran_inline[tag as usize].store(true, Ordering::SeqCst);
    }
    if req.sleep_us > 0 {
        thread::sleep(Duration::from_micros(req.sleep_us));
    }
    for &op in req.nested {
        let pool = pool
            .get()
            .expect("the submitter is installed right after build");
        nested(sc, pool, &req.log, sc.nested_tag(tag, op), op);
    }
    req.log.finished.fetch_add(1, Ordering::SeqCst);
    if req.panic {
        // Unwinding drops the request: its `Drop` does not panic again while panicking.
        panic!("{MARKER} panic #{tag}#");
    }
    if req.drop_panics {
        drop(req); // panics "drop panic #tag#": a handler panic
        unreachable!("the drop of request {tag} did not panic");
    }
    answer(tag)
}

/// One nested request of a re-entrant handler, into its own pool; records how it ended.
fn nested(sc: &Scenario, pool: &Submitter<Req, u64>, log: &Arc<Log>, tag: u64, op: Nested) {
    let req = Req::new(sc, tag, log);
    log.attempts.fetch_add(1, Ordering::SeqCst);
    let wrong = |what: String| -> Option<Fate> {
        let _ = log.wrong.0.send(format!("nested request {tag}: {what}"));
        None
    };
    let back = |r: Req| {
        if r.tag != tag {
            let _ = log
                .wrong
                .0
                .send(format!("nested {tag} got request {} back", r.tag));
        }
        r.defuse();
    };
    let nesting = Nesting::enter(tag);
    let fate = match op {
        Nested::Call => match pool.call(req) {
            Ok(v) if v == answer(tag) => Some(Fate::CallOk),
            Ok(v) => wrong(format!("call answered {v}")),
            Err(CallError::Failed(JobError::Panicked(msg))) => {
                if msg.contains(&format!("#{tag}#")) {
                    Some(Fate::CallPanicked)
                } else if log.init_failed(tag) && msg.contains("init") {
                    Some(Fate::CallInitFailed)
                } else {
                    wrong(format!("call panicked: {msg:?}"))
                }
            }
            Err(CallError::Failed(e)) => wrong(format!("call failed: {e:?}")),
            Err(CallError::Cancelled(r)) => {
                back(r);
                Some(Fate::CallCancelled)
            }
            Err(CallError::ShutDown(r)) => {
                back(r);
                Some(Fate::Refused {
                    shut_down: true,
                    late: false,
                })
            }
        },
        Nested::Submit => match pool.submit(req) {
            Ok(id) => Some(Fate::Accepted(id)),
            Err(SubmitError::ShutDown(r)) => {
                back(r);
                Some(Fate::Refused {
                    shut_down: true,
                    late: false,
                })
            }
        },
    };
    drop(nesting);
    if let Some(fate) = fate {
        let _ = log.nested.0.send((tag, fate));
    }
}

/// How a producer's request ended, from the producer's side.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fate {
    Accepted(RequestId),
    /// `late`: the attempt began after the shutdown had returned, so the report cannot count it.
    Refused {
        shut_down: bool,
        late: bool,
    },
    CallOk,
    CallPanicked,
    CallCancelled,
    /// A nested call run inline whose fresh `init` panicked: answered, never ran.
    CallInitFailed,
}

/// A producer's submitting handle: the pool's, or the limited one.
enum Via {
    Pool(Submitter<Req, u64>),
    Limited(Limited<Req, u64>),
}

macro_rules! via {
    ($via:expr, $method:ident($($arg:expr),*)) => {
        match $via {
            Via::Pool(s) => s.$method($($arg),*),
            Via::Limited(l) => l.$method($($arg),*),
        }
    };
}

fn produce(
    sc: &Scenario,
    p: u64,
    sub: Via,
    log: Arc<Log>,
    reported: Arc<AtomicBool>,
) -> Vec<(u64, Fate)> {
    let mut rng = Rng::new(sc.seed ^ (p + 1).wrapping_mul(0xA076_1D64_78BD_642F));
    let mut fates = Vec::new();
    let mut shut = false;
    for i in 0..sc.per_producer {
        let tag = p * sc.per_producer + i;
        let req = Req::new(sc, tag, &log);
        log.attempts.fetch_add(1, Ordering::SeqCst);
        let late = reported.load(Ordering::SeqCst);
        let back = |r: Req, shut_down: bool| {
            assert_eq!(r.tag, tag, "a refusal handed back another request");
            r.defuse();
            Fate::Refused { shut_down, late }
        };
        let priority = [Priority::High, Priority::Normal, Priority::Low][rng.below(3) as usize];
        let fate = match rng.below(4) {
            0 => match if sc.priorities {
                via!(&sub, submit_with_priority(req, priority))
            } else {
                via!(&sub, submit(req))
            } {
                Ok(id) => Fate::Accepted(id),
                Err(SubmitError::ShutDown(r)) => back(r, true),
            },
            1 => match if sc.priorities {
                via!(&sub, try_submit_with_priority(req, priority))
            } else {
                via!(&sub, try_submit(req))
            } {
                Ok(id) => Fate::Accepted(id),
                Err(TrySubmitError::Full(r)) => back(r, false),
                Err(TrySubmitError::ShutDown(r)) => back(r, true),
            },
            2 => match via!(
                &sub,
                submit_timeout(req, Duration::from_micros(rng.below(3_000)))
            ) {
                Ok(id) => Fate::Accepted(id),
                Err(SubmitTimeoutError::Timeout(r)) => back(r, false),
                Err(SubmitTimeoutError::ShutDown(r)) => back(r, true),
            },
            _ => match via!(&sub, call(req)) {
                Ok(v) => {
                    assert_eq!(v, answer(tag), "call {tag}: wrong answer");
                    Fate::CallOk
                }
                Err(CallError::Failed(JobError::Panicked(msg))) => {
                    assert!(msg.contains(&format!("#{tag}#")), "call {tag}: {msg:?}");
                    Fate::CallPanicked
                }
                Err(CallError::Failed(e)) => panic!("call {tag}: {e:?}"),
                Err(CallError::Cancelled(r)) => {
                    assert_eq!(r.tag, tag, "call {tag} cancelled with another request");
                    r.defuse();
                    Fate::CallCancelled
                }
                Err(CallError::ShutDown(r)) => back(r, true),
            },
        };
        match fate {
            Fate::Refused { shut_down, .. } => {
                assert!(
                    !shut || shut_down,
                    "request {tag}: intake reopened after ShutDown"
                );
                shut |= shut_down;
            }
            _ => assert!(!shut, "request {tag} accepted after a ShutDown refusal"),
        }
        fates.push((tag, fate));
        if rng.chance(5) {
            thread::yield_now();
        }
    }
    fates
}

/// What the response consumer saw.
struct Consumed {
    got: Vec<Response<u64>>,
    quit: bool,
}

fn consume(sc: &Scenario, responses: Receiver<Response<u64>>) -> Consumed {
    let mut got = Vec::new();
    loop {
        let n = got.len() as u64;
        if sc.reader_quits_after.is_some_and(|k| n >= k) {
            drop(responses);
            return Consumed { got, quit: true };
        }
        if let Some((at, stall)) = sc.reader_stall
            && n == at
        {
            thread::sleep(stall);
        }
        match responses.recv_timeout(WAIT) {
            Ok(r) => got.push(r),
            Err(RecvTimeoutError::Disconnected) => return Consumed { got, quit: false },
            Err(RecvTimeoutError::Timeout) => {
                panic!("responses neither came nor disconnected for {WAIT:?}")
            }
        }
        if sc.reader_pause_us > 0 {
            thread::sleep(Duration::from_micros(sc.reader_pause_us));
        }
    }
}

/// Checks one live snapshot against the truth read right after it.
fn check_snapshot(sc: &Scenario, log: &Log, m: &MetricsSnapshot, past_deadlines: u64) {
    // Read after the snapshot: each is bumped before the count it bounds can be reported.
    let finished = log.finished.load(Ordering::SeqCst);
    let init_failures = log.inline_init_failures.load(Ordering::SeqCst);
    let attempts = log.attempts.load(Ordering::SeqCst);
    assert!(
        m.completed + m.failed <= finished + past_deadlines + init_failures,
        "overshoot: {} + {} finished, truly {finished} (+{past_deadlines} expired, \
         +{init_failures} inline init failures)",
        m.completed,
        m.failed
    );
    assert!(
        m.submitted + m.rejected <= attempts,
        "overshoot: {} submitted + {} rejected > {attempts} attempts",
        m.submitted,
        m.rejected
    );
    assert!(m.completed + m.failed <= m.submitted, "{m:?}");
    assert!(m.undelivered <= m.completed + m.failed, "{m:?}");
    // Each priority lane in use has its own bound; a limit has its own waiting room, and at
    // most `k` of its requests sit in the pool's ready queues.
    let lanes = if sc.priorities { 3 } else { 1 };
    let limit_room = sc.limit.map_or(0, |k| sc.queue_capacity + k);
    let bound = sc.queue_capacity * lanes + limit_room;
    assert!(m.queued <= bound as u64, "{m:?}");
    // One job per worker, plus, for a re-entrant request, the nested one its worker runs
    // inline while the outer one waits (both are in flight).
    let per_worker = if sc.reentrant_percent > 0 { 2 } else { 1 };
    let workers = if sc.resizes {
        MAX_WORKERS as usize
    } else {
        sc.workers
    };
    // (A resized pool can hold retiring workers still finishing a job beside new ones.)
    assert!(
        sc.resizes || m.in_flight <= (per_worker * workers) as u64,
        "{m:?}"
    );
    if sc.resizes {
        // Retired workers finish their running job first: while the size swings, more
        // threads than the target can be alive for a while (`tests/resize.rs` checks that
        // the count comes back to the target).
        assert!(!m.workers.is_empty(), "{m:?}");
    } else {
        assert_eq!(m.workers.len(), sc.workers);
    }
}

/// What one subscription saw: whether it got the `Shutdown` event, and with what.
struct Subscription {
    summary: Option<ShutdownSummary>,
}

/// Reads a subscription as `kind` says; checks consecutive sequence numbers, monotonic
/// snapshots that never overshoot, and that `Shutdown` comes last.
fn read_events(
    sc: &Scenario,
    log: &Log,
    kind: Sub,
    events: Receiver<MetricsEvent>,
    stop: &AtomicBool,
) -> Subscription {
    if kind == Sub::Stalled {
        // Stall until the shutdown started, then read what was kept.
        let until = Instant::now() + SCENARIO_LIMIT;
        while !stop.load(Ordering::SeqCst) && Instant::now() < until {
            thread::sleep(Duration::from_millis(1));
        }
    }
    let mut last_seq: Option<u64> = None;
    let mut last: Option<MetricsSnapshot> = None;
    let mut read = 0u64;
    loop {
        if let Sub::Leaves(k) = kind
            && read >= k
        {
            return Subscription { summary: None };
        }
        let event = match events.recv_timeout(WAIT) {
            Ok(e) => e,
            Err(RecvTimeoutError::Disconnected) => return Subscription { summary: None },
            Err(RecvTimeoutError::Timeout) => panic!("a subscription neither sent nor closed"),
        };
        read += 1;
        if let Some(prev) = last_seq {
            assert_eq!(event.seq(), prev + 1, "sequence gap: {prev} then {event:?}");
        }
        last_seq = Some(event.seq());
        match event {
            MetricsEvent::Snapshot(m) => {
                // A stale snapshot still never exceeds the truth read now: counts only grow.
                check_snapshot(sc, log, &m, sc.deadline_submits);
                if let Some(p) = &last {
                    assert!(m.submitted >= p.submitted, "submitted went back");
                    assert!(m.completed >= p.completed, "completed went back");
                    assert!(m.failed >= p.failed, "failed went back");
                    assert!(m.rejected >= p.rejected, "rejected went back");
                }
                last = Some(m);
            }
            MetricsEvent::Shutdown(summary) => {
                match events.recv_timeout(WAIT) {
                    Err(RecvTimeoutError::Disconnected) => {}
                    other => panic!("after Shutdown: {other:?}"),
                }
                return Subscription {
                    summary: Some(summary),
                };
            }
            _ => {}
        }
        if let Sub::Slow(us) = kind {
            thread::sleep(Duration::from_micros(us));
        }
    }
}

/// The totals a shutdown reported: from the `ShutdownReport`, or for a drop from the
/// `Shutdown` event.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Totals {
    submitted: u64,
    completed: u64,
    failed: u64,
    undelivered: u64,
    unstarted: u64,
    cancelled: u64,
    rejected: u64,
}

impl From<&ShutdownSummary> for Totals {
    fn from(s: &ShutdownSummary) -> Self {
        Totals {
            submitted: s.submitted,
            completed: s.completed,
            failed: s.failed,
            undelivered: s.undelivered,
            unstarted: s.unstarted,
            cancelled: s.cancelled,
            rejected: s.rejected,
        }
    }
}

impl<Req> From<&ShutdownReport<Req>> for Totals {
    fn from(r: &ShutdownReport<Req>) -> Self {
        Totals {
            submitted: r.submitted,
            completed: r.completed,
            failed: r.failed,
            undelivered: r.undelivered,
            unstarted: r.unstarted.len() as u64,
            cancelled: r.cancelled,
            rejected: r.rejected,
        }
    }
}

/// What the `process` thread saw.
#[derive(Default)]
struct Processed {
    yielded: Vec<u64>,
    dropped_early: bool,
}

fn run_process(sc: &Scenario, orch: &Orchestrator<Req, u64>, log: &Arc<Log>) -> Processed {
    let Some((n, stop_after, ordered)) = sc.process else {
        return Processed::default();
    };
    let base = sc.process_base();
    let inputs = (0..n).map(|j| {
        log.attempts.fetch_add(1, Ordering::SeqCst);
        Req::new(sc, base + j, log)
    });
    let limit = stop_after.unwrap_or(u64::MAX);
    let mut out = Processed::default();
    let take = |r: Response<u64>, out: &mut Processed| {
        let tag = tag_of(&r.outcome).unwrap_or_else(|| panic!("process: {:?}", r.outcome));
        assert!(sc.is_process_tag(tag), "process yielded tag {tag}");
        log.check_worker(tag, r.worker);
        match &r.outcome {
            Ok(_) => assert!(!sc.fails(tag), "process {tag} should have panicked"),
            Err(_) => assert!(sc.fails(tag), "process {tag} panicked"),
        }
        out.yielded.push(tag);
    };
    if ordered {
        let mut it = orch.process_ordered(inputs);
        while (out.yielded.len() as u64) < limit {
            let Some(r) = it.next() else { break };
            take(r, &mut out);
        }
        let expected: Vec<u64> = (base..base + out.yielded.len() as u64).collect();
        assert_eq!(out.yielded, expected, "process_ordered out of order");
    } else {
        let mut it = orch.process(inputs);
        while (out.yielded.len() as u64) < limit {
            let Some(r) = it.next() else { break };
            take(r, &mut out);
        }
    }
    out.dropped_early = (out.yielded.len() as u64) < n;
    out
}

/// Prints the scenario if the thread unwinds, so that a failure names its seed.
struct Reporter<'a>(&'a Scenario);

impl Drop for Reporter<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "chaos failed for seed {} (rerun with CHAOS_SEED={}): {:#?}",
                self.0.seed, self.0.seed, self.0
            );
        }
    }
}

fn build(sc: &Arc<Scenario>, log: &Arc<Log>) -> (Orchestrator<Req, u64>, Receiver<Response<u64>>) {
    // The handler's way back into its own pool, installed right after `build`.
    let pool: Arc<OnceLock<Submitter<Req, u64>>> = Arc::new(OnceLock::new());
    let mut b = Orchestrator::builder()
        .workers(sc.workers)
        .queue_capacity(sc.queue_capacity)
        .metrics(sc.metrics)
        .metrics_interval(sc.interval)
        .thread_name(format!("chaos{}", sc.seed));
    b = match sc.dist {
        Dist::Shared => b.distribution(Distribution::Shared),
        Dist::RoundRobin => b.distribution(Distribution::RoundRobin),
        Dist::ByKey => b.distribution(Distribution::by_key(|r: &Req| r.tag % 3)),
    };
    if let Some(c) = sc.response_capacity {
        b = b.response_capacity(c);
    }
    let (sc2, log2) = (Arc::clone(sc), Arc::clone(log));
    let (sc3, pool3) = (Arc::clone(sc), Arc::clone(&pool));
    let (orch, responses) = b
        .build_with_state(
            move |_| {
                let n = log2.inits.fetch_add(1, Ordering::SeqCst);
                if n >= sc2.workers as u64 && draw(sc2.seed, n, 5) % 100 < sc2.init_fail_percent {
                    // A rebuild after a handler panic (the worker dies), or the fresh state of
                    // a nested request run inline (answered as a panic, nothing dies).
                    if let Some(tag) = NESTING.with(Cell::get) {
                        log2.ran_here(tag);
                        log2.init_failed[tag as usize].store(true, Ordering::SeqCst);
                        log2.inline_init_failures.fetch_add(1, Ordering::SeqCst);
                    }
                    panic!("{MARKER}: init {n} fails");
                }
            },
            move |_: &mut (), req: Req| handler(&sc3, &pool3, req),
        )
        .unwrap();
    assert!(pool.set(orch.submitter()).is_ok(), "installed twice");
    (orch, responses)
}

fn run(sc: Scenario) {
    let _reporter = Reporter(&sc);
    let sc = Arc::new(sc.clone());
    let log = Log::new(sc.all_tags());
    let (orch, responses) = build(&sc, &log);
    let shutting_down = Arc::new(AtomicBool::new(false));
    let reported = Arc::new(AtomicBool::new(false));

    // The auditor reads every event promptly; for a drop, its summary is the report.
    let auditor = {
        let (sc, log, events, stop) = (
            Arc::clone(&sc),
            Arc::clone(&log),
            orch.subscribe_with_capacity(1 << 14),
            Arc::clone(&shutting_down),
        );
        thread::spawn(move || read_events(&sc, &log, Sub::Slow(0), events, &stop))
    };
    let consumer = {
        let sc = Arc::clone(&sc);
        thread::spawn(move || consume(&sc, responses))
    };
    // Resizes at random moments, until a little after the shutdown began.
    let resizer = sc.resizes.then(|| {
        let (sub, stop, seed) = (orch.submitter(), Arc::clone(&shutting_down), sc.seed);
        thread::spawn(move || {
            let mut r = Rng::new(seed ^ 0x2E51);
            let mut after_stop = 0;
            while after_stop < 3 {
                if stop.load(Ordering::SeqCst) {
                    after_stop += 1;
                }
                let _ = sub.resize(1 + r.below(MAX_WORKERS) as usize);
                thread::sleep(Duration::from_micros(r.below(3_000)));
            }
        })
    });
    let limited = sc.limit.map(|k| orch.limited(k));
    let producers: Vec<JoinHandle<Vec<(u64, Fate)>>> = (0..sc.producers)
        .map(|p| {
            let sub = match &limited {
                Some(l) if p % 2 == 1 => Via::Limited(l.clone()),
                _ => Via::Pool(orch.submitter()),
            };
            let (sc, log) = (Arc::clone(&sc), Arc::clone(&log));
            let reported = Arc::clone(&reported);
            thread::spawn(move || produce(&sc, p, sub, log, reported))
        })
        .collect();

    // The main thread: a `process` stream on a scoped thread, and meanwhile subscribers that
    // come and go, submits with deadlines, and metrics polls. The scope must end before any
    // shutdown: `process` borrows the orchestrator.
    let mut rng = Rng::new(sc.seed ^ 0x5EED);
    let mut readers: Vec<JoinHandle<Subscription>> = Vec::new();
    let mut deadline_ids: Vec<(u64, RequestId)> = Vec::new();
    let mut deadline_refused = 0u64;
    let processed = thread::scope(|s| {
        let process = s.spawn(|| run_process(&sc, &orch, &log));
        let start = Instant::now();
        let mut subscribers = sc.subscribers.iter();
        let mut deadline_tags = sc.deadline_base()..sc.tags();
        let mut prev: Option<MetricsSnapshot> = None;
        while start.elapsed() < sc.run_for || !process.is_finished() {
            match rng.below(4) {
                0 => {
                    if let Some(&(kind, capacity)) = subscribers.next() {
                        let (sc, log, events, stop) = (
                            Arc::clone(&sc),
                            Arc::clone(&log),
                            orch.subscribe_with_capacity(capacity),
                            Arc::clone(&shutting_down),
                        );
                        readers.push(thread::spawn(move || {
                            read_events(&sc, &log, kind, events, &stop)
                        }));
                    }
                }
                1 => {
                    if let Some(tag) = deadline_tags.next() {
                        let req = Req::new(&sc, tag, &log);
                        let now = Instant::now();
                        let deadline = if sc.deadline_passed(tag) {
                            now.checked_sub(Duration::from_secs(1)).unwrap_or(now)
                        } else {
                            now + SCENARIO_LIMIT * 10
                        };
                        log.attempts.fetch_add(1, Ordering::SeqCst);
                        match orch.submit_with_deadline(req, deadline) {
                            Ok(id) => deadline_ids.push((tag, id)),
                            Err(e) => {
                                e.into_inner().defuse();
                                deadline_refused += 1;
                            }
                        }
                    }
                }
                2 => {
                    let m = orch.metrics();
                    check_snapshot(&sc, &log, &m, sc.deadline_submits);
                    assert_eq!(m.cancelled, 0, "cancelled before any shutdown");
                    if let Some(p) = &prev {
                        assert!(m.submitted >= p.submitted, "submitted went back");
                        assert!(m.completed >= p.completed, "completed went back");
                        assert!(m.failed >= p.failed, "failed went back");
                        assert!(m.rejected >= p.rejected, "rejected went back");
                    }
                    prev = Some(m);
                }
                _ => thread::sleep(Duration::from_micros(rng.below(2_000))),
            }
        }
        process.join().unwrap()
    });
    assert_eq!(
        deadline_refused, 0,
        "the orchestrator refused before its shutdown"
    );

    // Stop at a random moment; subscribers left unsubscribed stay attached through it.
    thread::sleep(Duration::from_micros(rng.below(3_000)));
    let late = sc.late_subscriber.then(|| {
        let (sc, log, events, stop) = (
            Arc::clone(&sc),
            Arc::clone(&log),
            orch.subscribe(),
            Arc::clone(&shutting_down),
        );
        thread::spawn(move || read_events(&sc, &log, Sub::Slow(0), events, &stop))
    });
    shutting_down.store(true, Ordering::SeqCst);
    // A request's `Drop` panic must not escape any kind of shutdown (the quiet hook would
    // hide its message: say what happened).
    let stop = sc.stop;
    let mut report = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| stop.apply(orch)))
        .unwrap_or_else(|_| panic!("a panic escaped the shutdown ({stop:?})"));
    reported.store(true, Ordering::SeqCst);

    if let Some(resizer) = resizer {
        resizer.join().unwrap();
    }
    let mut fates: HashMap<u64, Fate> = HashMap::new();
    for p in producers {
        fates.extend(p.join().unwrap());
    }
    if let Some(k) = sc.limit {
        let most = log.limited_most.load(Ordering::SeqCst);
        assert!(
            most <= k as u64,
            "{most} limited requests ran at once; the limit is {k}"
        );
        drop(limited);
    }
    // Every handler has returned: the nested requests' fates are all in.
    let wrong: Vec<String> = log.wrong.1.try_iter().collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
    let mut nested = 0;
    for (tag, fate) in log.nested.1.try_iter() {
        assert!(
            fates.insert(tag, fate).is_none(),
            "nested request {tag} twice"
        );
        nested += 1;
    }
    let consumed = consumer.join().unwrap();
    let audit = auditor.join().unwrap();
    for r in readers {
        if let Some(summary) = r.join().unwrap().summary {
            assert_eq!(Some(summary), audit.summary, "subscribers disagree");
        }
    }
    if let Some(late) = late {
        let got = late.join().unwrap().summary;
        assert!(
            got.is_some(),
            "a subscriber made just before the shutdown got no summary"
        );
        assert_eq!(got, audit.summary, "subscribers disagree");
    }
    let summary = audit
        .summary
        .expect("the auditor (a prompt reader) got no Shutdown event");
    let totals = match &report {
        Some(r) => {
            let t = Totals::from(r);
            assert_eq!(
                t,
                Totals::from(&summary),
                "report and Shutdown event differ"
            );
            t
        }
        None => Totals::from(&summary),
    };

    check_exactly_once(
        &sc,
        &log,
        &fates,
        &deadline_ids,
        &consumed,
        &processed,
        report.as_ref(),
        totals,
    );

    if std::env::var_os("CHAOS_VERBOSE").is_some() {
        eprintln!(
            "seed {}: {:?} {:?} received {} (quit: {}), process yielded {}, calls {}, nested {} \
             ({} inline, {} inline init failures), drop panics {}",
            sc.seed,
            sc.stop,
            totals,
            consumed.got.len(),
            consumed.quit,
            processed.yielded.len(),
            fates
                .values()
                .filter(|f| {
                    matches!(
                        f,
                        Fate::CallOk
                            | Fate::CallPanicked
                            | Fate::CallCancelled
                            | Fate::CallInitFailed
                    )
                })
                .count(),
            nested,
            log.ran_inline
                .iter()
                .filter(|r| r.load(Ordering::SeqCst))
                .count(),
            log.inline_init_failures.load(Ordering::SeqCst),
            log.drop_panics.load(Ordering::SeqCst),
        );
    }
    // What came back unstarted is the test's to drop: without the `Drop` panic.
    if let Some(r) = report.as_mut() {
        for (_, req) in &mut r.unstarted {
            req.drop_panics = false;
        }
    }
    drop(report);
    drop(consumed);
    for (tag, drops) in log.drops.iter().enumerate() {
        let created = log.created[tag].load(Ordering::SeqCst);
        let drops = drops.load(Ordering::SeqCst);
        assert_eq!(
            drops,
            u32::from(created),
            "request {tag} (created: {created}) dropped {drops} times"
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn check_exactly_once(
    sc: &Scenario,
    log: &Log,
    fates: &HashMap<u64, Fate>,
    deadline_ids: &[(u64, RequestId)],
    consumed: &Consumed,
    processed: &Processed,
    report: Option<&ShutdownReport<Req>>,
    totals: Totals,
) {
    for tag in 0..sc.all_tags() {
        assert!(
            log.ran(tag) <= 1,
            "request {tag} ran {} times",
            log.ran(tag)
        );
    }
    // Stream requests: accepted ids, unique, each mapped to its tag.
    let mut stream: HashMap<RequestId, u64> = HashMap::new();
    for (&tag, fate) in fates {
        if let Fate::Accepted(id) = fate {
            assert!(
                stream.insert(*id, tag).is_none(),
                "two requests share id {id}"
            );
        }
    }
    for &(tag, id) in deadline_ids {
        assert!(
            stream.insert(id, tag).is_none(),
            "two requests share id {id}"
        );
    }
    let expired = |tag: u64| sc.expired(tag);
    // Nested requests run inline whose fresh state failed: answered a panic, never ran.
    let init_failed = |tag: u64| log.init_failed(tag);
    for tag in 0..sc.all_tags() {
        if init_failed(tag) {
            assert!(
                sc.is_nested(tag),
                "init failed inline for top-level request {tag}"
            );
            assert_eq!(
                log.ran(tag),
                0,
                "request {tag} ran although its init failed"
            );
        }
    }
    let inline_init_failures = (0..sc.all_tags()).filter(|&t| init_failed(t)).count() as u64;
    assert_eq!(
        inline_init_failures,
        log.inline_init_failures.load(Ordering::SeqCst),
        "one nested request's init failed twice"
    );

    // Responses: each for an accepted request, once, with the right outcome.
    let mut received: HashSet<u64> = HashSet::new();
    let mut expired_answered = 0;
    for r in &consumed.got {
        let tag = *stream
            .get(&r.id)
            .unwrap_or_else(|| panic!("response for an id never accepted: {}", r.id));
        assert!(received.insert(tag), "request {tag} answered twice");
        // A resized pool adds slots after the first ones (retired slots are reused, but
        // one still finishing its last job is not): no bound to check then.
        assert!(
            sc.resizes || r.worker.index() < sc.workers,
            "worker {} out of range",
            r.worker
        );
        match &r.outcome {
            Err(JobError::DeadlineExceeded) => {
                assert!(expired(tag), "request {tag}: {:?}", r.outcome);
                assert_eq!(log.ran(tag), 0, "an expired request ran");
                expired_answered += 1;
            }
            Err(JobError::Panicked(msg)) if init_failed(tag) => {
                assert!(msg.contains("init"), "request {tag}: {msg:?}");
                log.check_worker(tag, r.worker);
            }
            outcome => {
                assert_eq!(tag_of(outcome), Some(tag), "request {tag}: {outcome:?}");
                assert!(!expired(tag), "expired request {tag} ran");
                assert_eq!(
                    outcome.is_err(),
                    sc.fails(tag),
                    "request {tag}: {outcome:?}"
                );
                assert_eq!(log.ran(tag), 1, "answered request {tag} never ran");
                log.check_worker(tag, r.worker);
            }
        }
    }

    // Unstarted: accepted, never ran, never answered; stream ids match, process tags allowed.
    let mut unstarted: HashSet<u64> = HashSet::new();
    if let Some(report) = report {
        for (id, req) in &report.unstarted {
            let tag = req.tag;
            assert!(unstarted.insert(tag), "request {tag} unstarted twice");
            assert_eq!(log.ran(tag), 0, "unstarted request {tag} ran");
            assert!(
                !received.contains(&tag),
                "request {tag} answered and unstarted"
            );
            if sc.is_process_tag(tag) {
                assert!(!processed.yielded.contains(&tag));
            } else {
                assert_eq!(
                    stream.get(id),
                    Some(&tag),
                    "unstarted {id} is not request {tag}"
                );
            }
        }
        if matches!(sc.stop, Stop::Graceful) && !sc.workers_may_die() {
            assert!(
                unstarted.is_empty(),
                "a graceful shutdown left requests unstarted"
            );
        }
    }

    // Calls and refusals.
    let (mut calls, mut cancelled) = (0, 0);
    // Refusals the report must count (full or timed out: before the intake closed), may count
    // (shut down while the report was being made), and cannot count (begun after it).
    let (mut refused_full, mut refused_shut, mut refused_late) = (0, 0, 0);
    for (&tag, fate) in fates {
        match fate {
            Fate::Accepted(_) => {}
            Fate::Refused { shut_down, late } => {
                match (shut_down, late) {
                    (false, _) => refused_full += 1,
                    (true, false) => refused_shut += 1,
                    (true, true) => refused_late += 1,
                }
                assert_eq!(log.ran(tag), 0, "refused request {tag} ran");
            }
            Fate::CallOk | Fate::CallPanicked => {
                calls += 1;
                assert_eq!(log.ran(tag), 1, "answered call {tag} never ran");
                assert_eq!(*fate == Fate::CallPanicked, sc.fails(tag), "call {tag}");
                if sc.is_nested(tag) && sc.workers == 1 && !sc.resizes {
                    // No other worker to wait for.
                    assert!(
                        log.ran_inline[tag as usize].load(Ordering::SeqCst),
                        "nested call {tag} in a 1-worker pool did not run inline"
                    );
                }
            }
            Fate::CallInitFailed => {
                calls += 1;
                assert!(init_failed(tag), "call {tag} answered an init failure");
            }
            Fate::CallCancelled => {
                calls += 1;
                cancelled += 1;
                assert_eq!(log.ran(tag), 0, "cancelled call {tag} ran");
                assert!(
                    !matches!(sc.stop, Stop::Graceful | Stop::Drop) || sc.workers_may_die(),
                    "a graceful shutdown cancelled call {tag}"
                );
            }
        }
    }

    // Stream requests that were answered (ran, or expired) but not received.
    // `stream_missing`: answered but never received, so lost with a dropped receiver or
    // counted undelivered; `stream_maybe`: for a drop whose workers kept dying, an expired
    // request that was either answered so, or left unstarted (no report says which).
    let (mut stream_missing, mut stream_maybe) = (0, 0);
    for &tag in stream.values() {
        if received.contains(&tag) || unstarted.contains(&tag) {
            continue;
        }
        if report.is_none() && log.ran(tag) == 0 && !init_failed(tag) {
            // A drop runs (or, past its deadline, answers) everything, unless workers kept
            // dying: then what is left is counted in the summary's `unstarted` and dropped
            // with the report nobody sees.
            if sc.workers_may_die() {
                if expired(tag) {
                    stream_maybe += 1;
                }
                continue;
            }
        }
        assert!(
            log.ran(tag) == 1 || expired(tag) || init_failed(tag),
            "stream request {tag} was accepted, never ran and was not handed back"
        );
        stream_missing += 1;
    }

    // Process requests: fed ones ran or were handed back; at most one pulled input was never
    // fed (the one pending when the iterator was dropped).
    let yielded: HashSet<u64> = processed.yielded.iter().copied().collect();
    assert_eq!(
        yielded.len(),
        processed.yielded.len(),
        "process yielded a tag twice"
    );
    let (mut process_fed, mut process_undelivered, mut never_fed) = (0, 0, 0);
    for tag in sc.process_base()..sc.deadline_base() {
        if !log.created[tag as usize].load(Ordering::SeqCst) {
            continue;
        }
        if log.ran(tag) == 1 {
            process_fed += 1;
            if !yielded.contains(&tag) {
                assert!(
                    processed.dropped_early,
                    "process lost the response of {tag}"
                );
                process_undelivered += 1;
            }
        } else if unstarted.contains(&tag) {
            process_fed += 1;
        } else {
            // Pending in the iterator when it was dropped; or, for a drop whose workers kept
            // dying, unstarted and counted in the summary only.
            never_fed += 1;
        }
    }
    assert!(
        never_fed <= 1 || (report.is_none() && sc.workers_may_die()),
        "{never_fed} process inputs neither ran nor came back"
    );
    assert!(never_fed == 0 || processed.dropped_early);

    // The totals, exactly.
    let ran_ok = (0..sc.all_tags())
        .filter(|&t| log.ran(t) == 1 && !sc.fails(t))
        .count() as u64;
    let ran_panicked = (0..sc.all_tags())
        .filter(|&t| log.ran(t) == 1 && sc.fails(t))
        .count() as u64
        + inline_init_failures;
    assert_eq!(totals.completed, ran_ok, "completed: {totals:?}");
    let expired_accepted = deadline_ids.iter().filter(|(t, _)| expired(*t)).count() as u64;
    let expired_unstarted = unstarted.iter().filter(|&&t| expired(t)).count() as u64;
    let expired_failed = totals
        .failed
        .checked_sub(ran_panicked)
        .unwrap_or_else(|| panic!("failed {} < {ran_panicked} panics", totals.failed));
    assert!(
        expired_failed <= expired_accepted - expired_unstarted
            && expired_failed >= expired_answered,
        "failed {} = {ran_panicked} panics + {expired_failed} expired; {expired_accepted} expired \
         accepted, {expired_unstarted} unstarted, {expired_answered} answered",
        totals.failed
    );
    assert_eq!(totals.cancelled, cancelled, "cancelled: {totals:?}");
    assert!(
        totals.rejected >= refused_full && totals.rejected <= refused_full + refused_shut,
        "rejected {}: {refused_full} full/timed out, {refused_shut} shut down, {refused_late} \
         after the report",
        totals.rejected
    );
    if report.is_some() {
        assert_eq!(
            totals.submitted,
            stream.len() as u64 + calls + process_fed,
            "submitted: {totals:?}"
        );
        assert_eq!(
            totals.submitted,
            totals.completed + totals.failed + totals.unstarted + totals.cancelled
        );
        if !consumed.quit {
            // Expired requests answered but not received: only undelivered ones.
            let expired_missing = stream
                .values()
                .filter(|&&t| expired(t) && !received.contains(&t) && !unstarted.contains(&t))
                .count() as u64;
            assert_eq!(expired_failed, expired_answered + expired_missing);
        }
    } else {
        assert!(totals.submitted >= stream.len() as u64 + calls + process_fed);
        assert!(totals.submitted <= stream.len() as u64 + calls + process_fed + never_fed);
        if !sc.workers_may_die() {
            assert_eq!(
                totals.unstarted, 0,
                "a drop left requests unstarted: {totals:?}"
            );
        }
    }
    // Undelivered: stream responses nobody could receive — exactly the missing ones with a
    // live reader, at most those when the reader quit (what sat in its buffer is lost with it,
    // uncounted); `process` responses of an iterator dropped early — at most the ones that ran
    // and were not yielded (what sat in the iterator's buffer is lost with it, uncounted).
    assert!(processed.dropped_early || process_undelivered == 0);
    let stream_low = if consumed.quit { 0 } else { stream_missing };
    let stream_high = stream_missing + stream_maybe;
    assert!(
        totals.undelivered >= stream_low && totals.undelivered <= stream_high + process_undelivered,
        "undelivered {}: stream {stream_low}..={stream_high}, process 0..={process_undelivered}",
        totals.undelivered
    );
    if !consumed.quit && stream_missing > 0 {
        assert!(
            matches!(sc.stop, Stop::Timeout(_)) && sc.response_capacity.is_some(),
            "{stream_missing} stream responses undelivered with a live reader"
        );
    }
}

/// This process's thread count.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Waits until the thread count is back to `baseline`: joined threads linger for a moment.
fn assert_threads_back_to(baseline: usize, seed: u64) {
    let start = Instant::now();
    loop {
        // Listing `/proc/self/task` while a thread exits can skip a live entry: a count
        // that is off either way is read again until the grace period is over.
        let now = threads();
        if now == baseline {
            return;
        }
        assert!(
            start.elapsed() < THREAD_EXIT_GRACE,
            "seed {seed}: {now} threads, {baseline} before the scenarios"
        );
        thread::sleep(Duration::from_millis(2));
    }
}

/// The only test in this binary, so that the thread count sees no other test's threads.
#[test]
fn chaos_schedules_lose_nothing_hang_nowhere_and_leave_no_thread() {
    quiet_panics();
    let single = std::env::var_os("CHAOS_SEED").is_some();
    let seeds: Vec<u64> = match std::env::var("CHAOS_SEED") {
        Ok(s) => vec![s.parse().expect("CHAOS_SEED must be a number")],
        Err(_) => {
            let n = std::env::var("CHAOS_SEEDS").map_or(SEEDS, |n| n.parse().unwrap());
            (1..=n).collect()
        }
    };
    let baseline = threads();
    assert!(baseline > 0, "/proc/self/task is not readable");
    let started = Instant::now();
    for seed in seeds {
        let sc = Scenario::new(seed);
        if single {
            // A hung scenario never unwinds, so its `Reporter` never prints: print it first.
            eprintln!("chaos seed {seed}: {sc:#?}");
        }
        within(SCENARIO_LIMIT, &format!("chaos seed {seed}"), move || {
            run(sc)
        });
        assert_threads_back_to(baseline, seed);
    }
    eprintln!("chaos: done in {:?}", started.elapsed());
}
