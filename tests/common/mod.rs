//! Helpers shared by the integration tests: bounded waits, a quiet panic hook, a gate that
//! holds handlers, both submitting handles behind one trait, and thread counting.
#![allow(dead_code)] // each test file uses a different subset

use std::collections::HashSet;
use std::fmt::{Debug, Display};
use std::hash::Hash;
use std::panic;
use std::sync::Once;
use std::thread;
use std::time::{Duration, Instant};

use channel_orchestrator::crossbeam_channel::{
    Receiver, RecvTimeoutError, Sender, TryRecvError, bounded, unbounded,
};
use channel_orchestrator::{
    CallError, MetricsSnapshot, Orchestrator, RequestId, Response, ShutdownReport, ShutdownSummary,
    SubmitError, SubmitTimeoutError, Submitter, TrySubmitError,
};

/// The longest any wait that should succeed may take before the test calls it a failure.
/// Generous: a bug shows up as a failed test after this long, never as a hang.
pub const WAIT: Duration = Duration::from_secs(10);

/// What "promptly" means: far above any real latency here, far below a hang.
pub const PROMPT: Duration = Duration::from_millis(500);

/// Panics whose message contains this are expected; the hook keeps them off stderr.
pub const MARKER: &str = "intentional";

/// A panic payload that is neither `&str` nor `String`; also kept off stderr.
#[derive(Debug)]
pub struct IntentionalPayload;

/// Installs (once per test binary) a panic hook that stays silent for intentional panics and
/// delegates every other panic to the default hook.
pub fn quiet_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let msg = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
            let intentional = match msg {
                Some(m) => m.contains(MARKER),
                None => payload.is::<IntentionalPayload>(),
            };
            if !intentional {
                default(info);
            }
        }));
    });
}

/// Runs `f` on its own thread and returns its value, or fails the test if it takes longer
/// than `limit` (the stuck thread is left behind; the test binary still exits). A panic in
/// `f` is re-raised here.
pub fn within<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = bounded(1);
    let handle = thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => {
            let _ = handle.join();
            v
        }
        Err(RecvTimeoutError::Timeout) => panic!("{what} did not finish within {limit:?}"),
        Err(RecvTimeoutError::Disconnected) => match handle.join() {
            Err(p) => panic::resume_unwind(p),
            Ok(()) => unreachable!("the thread sends before it returns"),
        },
    }
}

/// Receives exactly `n` responses (each within [`WAIT`]).
pub fn recv_n<T>(rx: &Receiver<Response<T>>, n: usize) -> Vec<Response<T>> {
    (0..n)
        .map(|i| {
            rx.recv_timeout(WAIT)
                .unwrap_or_else(|e| panic!("response {i} of {n} did not come: {e:?}"))
        })
        .collect()
}

/// Receives responses until the channel reports disconnected (each within [`WAIT`]).
pub fn recv_until_disconnected<T>(rx: &Receiver<Response<T>>) -> Vec<Response<T>> {
    let mut out = Vec::new();
    loop {
        match rx.recv_timeout(WAIT) {
            Ok(r) => out.push(r),
            Err(RecvTimeoutError::Disconnected) => return out,
            Err(RecvTimeoutError::Timeout) => panic!(
                "the responses channel neither delivered nor disconnected within {WAIT:?} \
                 (after {} responses)",
                out.len()
            ),
        }
    }
}

/// After a shutdown returned: the channel holds what is left, then reports disconnected
/// without any waiting.
pub fn drain_after_shutdown<T>(rx: &Receiver<Response<T>>) -> Vec<Response<T>> {
    let out: Vec<_> = rx.try_iter().collect();
    assert!(
        matches!(rx.try_recv(), Err(TryRecvError::Disconnected)),
        "responses channel still connected after shutdown returned"
    );
    out
}

/// Asserts that every item is distinct and returns them as a set.
pub fn distinct<T: Eq + Hash + Debug + Copy>(items: impl IntoIterator<Item = T>) -> HashSet<T> {
    let mut set = HashSet::new();
    for x in items {
        assert!(set.insert(x), "{x:?} appears twice");
    }
    set
}

/// Holds handlers until the test lets them go, and tells the test when each one started.
///
/// A handler calls [`Waiter::pass`]: it announces itself, then waits for one token (or for
/// the gate to open, or at most [`WAIT`], so a failing test never hangs on it).
pub struct Gate {
    tokens: Option<Sender<()>>,
    started: Receiver<u64>,
    waiter: Waiter,
}

/// The handler's side of a [`Gate`].
#[derive(Clone)]
pub struct Waiter {
    tokens: Receiver<()>,
    started: Sender<u64>,
}

impl Waiter {
    /// Announces `tag` as started, then waits for a token or the gate to open.
    pub fn pass(&self, tag: u64) {
        let _ = self.started.send(tag);
        let _ = self.tokens.recv_timeout(WAIT);
    }
}

impl Gate {
    pub fn new() -> Self {
        let (tx, rx) = unbounded();
        let (stx, srx) = unbounded();
        Gate {
            tokens: Some(tx),
            started: srx,
            waiter: Waiter {
                tokens: rx,
                started: stx,
            },
        }
    }

    pub fn waiter(&self) -> Waiter {
        self.waiter.clone()
    }

    /// Lets `n` waiting (or future) handlers finish.
    pub fn release(&self, n: usize) {
        for _ in 0..n {
            self.tokens
                .as_ref()
                .expect("gate is open")
                .send(())
                .unwrap();
        }
    }

    /// Lets every current and future handler through.
    pub fn open(&mut self) {
        self.tokens = None;
    }

    /// Waits until `n` more handlers have started; returns their tags.
    pub fn wait_started(&self, n: usize) -> Vec<u64> {
        (0..n)
            .map(|i| {
                self.started
                    .recv_timeout(WAIT)
                    .unwrap_or_else(|_| panic!("handler {i} of {n} did not start"))
            })
            .collect()
    }

    /// Asserts that no further handler starts within `d`.
    pub fn assert_none_started(&self, d: Duration) {
        if let Ok(tag) = self.started.recv_timeout(d) {
            panic!("handler for {tag} started unexpectedly");
        }
    }
}

/// The four submitting methods, so that every test can run on both [`Orchestrator`] and
/// [`Submitter`].
pub trait Handle<Req, Resp> {
    fn submit(&self, req: Req) -> Result<RequestId, SubmitError<Req>>;
    fn try_submit(&self, req: Req) -> Result<RequestId, TrySubmitError<Req>>;
    fn submit_timeout(&self, req: Req, d: Duration) -> Result<RequestId, SubmitTimeoutError<Req>>;
    fn call(&self, req: Req) -> Result<Resp, CallError<Req>>;
}

impl<Req: Send + 'static, Resp: Send + 'static> Handle<Req, Resp> for Orchestrator<Req, Resp> {
    fn submit(&self, req: Req) -> Result<RequestId, SubmitError<Req>> {
        Orchestrator::submit(self, req)
    }
    fn try_submit(&self, req: Req) -> Result<RequestId, TrySubmitError<Req>> {
        Orchestrator::try_submit(self, req)
    }
    fn submit_timeout(&self, req: Req, d: Duration) -> Result<RequestId, SubmitTimeoutError<Req>> {
        Orchestrator::submit_timeout(self, req, d)
    }
    fn call(&self, req: Req) -> Result<Resp, CallError<Req>> {
        Orchestrator::call(self, req)
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Handle<Req, Resp> for Submitter<Req, Resp> {
    fn submit(&self, req: Req) -> Result<RequestId, SubmitError<Req>> {
        Submitter::submit(self, req)
    }
    fn try_submit(&self, req: Req) -> Result<RequestId, TrySubmitError<Req>> {
        Submitter::try_submit(self, req)
    }
    fn submit_timeout(&self, req: Req, d: Duration) -> Result<RequestId, SubmitTimeoutError<Req>> {
        Submitter::submit_timeout(self, req, d)
    }
    fn call(&self, req: Req) -> Result<Resp, CallError<Req>> {
        Submitter::call(self, req)
    }
}

/// Which handle a test goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Orchestrator,
    Submitter,
}

pub const VIAS: [Via; 2] = [Via::Orchestrator, Via::Submitter];

/// Asserts the house style of an error message: one line, starts lowercase, no final period.
pub fn assert_message_style(e: &(impl Display + ?Sized)) {
    let msg = e.to_string();
    assert!(!msg.is_empty(), "empty error message");
    assert!(!msg.contains('\n'), "multi-line error message: {msg:?}");
    assert!(
        msg.chars().next().unwrap().is_lowercase(),
        "error message does not start lowercase: {msg:?}"
    );
    assert!(
        !msg.ends_with('.'),
        "error message ends with a period: {msg:?}"
    );
}

/// Names (`comm`) of this process's threads; `/proc` truncates them to 15 bytes.
pub fn thread_names() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let path = e.ok()?.path().join("comm");
        // A thread may exit between the listing and the read.
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim_end().to_owned())
    })
    .collect()
}

/// This process's threads whose name starts with `"{name}-"`: the ones an orchestrator
/// built with `.thread_name(name)` starts. Other tests run in parallel threads of the same
/// process, so counting by name is what makes the count exact.
pub fn threads_of(name: &str) -> Vec<String> {
    let prefix = format!("{name}-");
    thread_names()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

/// Asserts that no thread of the orchestrator named `name` is alive. A joined thread can
/// linger in `/proc` for a moment after `join` returns, so this polls briefly; and a new
/// thread names itself only once it runs, so the count must stay zero for a moment too.
pub fn assert_no_threads_of(name: &str) {
    let start = Instant::now();
    loop {
        let left = threads_of(name);
        if left.is_empty() {
            thread::sleep(Duration::from_millis(5));
            let late = threads_of(name);
            assert!(
                late.is_empty(),
                "threads of {name:?} appeared after the end: {late:?}"
            );
            return;
        }
        if start.elapsed() > Duration::from_secs(2) {
            panic!("threads outlived the orchestrator {name:?}: {left:?}");
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Polls `cond` until it holds, failing after [`WAIT`].
pub fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "timed out waiting for: {what}");
        thread::sleep(Duration::from_millis(1));
    }
}

/// Polls `metrics()` until `done` holds, failing after [`WAIT`]; returns the matching snapshot.
pub fn wait_for<Req: Send + 'static, Resp: Send + 'static>(
    orch: &Orchestrator<Req, Resp>,
    what: &str,
    done: impl Fn(&MetricsSnapshot) -> bool,
) -> MetricsSnapshot {
    let deadline = Instant::now() + WAIT;
    loop {
        let snap = orch.metrics();
        if done(&snap) {
            return snap;
        }
        assert!(Instant::now() < deadline, "{what}: still {snap:#?}");
        thread::sleep(Duration::from_millis(2));
    }
}

/// The last metrics event (`Shutdown`) carries exactly the report's totals.
pub fn assert_summary_is_report<Req>(summary: &ShutdownSummary, report: &ShutdownReport<Req>) {
    assert_eq!(
        (
            summary.submitted,
            summary.completed,
            summary.failed,
            summary.undelivered,
            summary.unstarted,
            summary.cancelled,
            summary.rejected,
        ),
        (
            report.submitted,
            report.completed,
            report.failed,
            report.undelivered,
            report.unstarted.len() as u64,
            report.cancelled,
            report.rejected,
        ),
        "Shutdown event differs from the ShutdownReport"
    );
}

/// xorshift64*: small, seedable, good enough to pick interleavings.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A kind of shutdown, for randomized schedules.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    Graceful,
    Timeout(Duration),
    Now,
    Drop,
}

impl Stop {
    /// One of the four, uniformly; a timeout of up to 5 ms.
    pub fn draw(r: &mut Rng) -> Stop {
        match r.below(4) {
            0 => Stop::Graceful,
            1 => Stop::Timeout(Duration::from_micros(r.below(5_000))),
            2 => Stop::Now,
            _ => Stop::Drop,
        }
    }

    /// Stops `orch` this way; the report, except for `Drop`, which has none.
    pub fn apply<Req: Send + 'static, Resp: Send + 'static>(
        self,
        orch: Orchestrator<Req, Resp>,
    ) -> Option<ShutdownReport<Req>> {
        match self {
            Stop::Graceful => Some(orch.shutdown()),
            Stop::Timeout(d) => Some(orch.shutdown_timeout(d)),
            Stop::Now => Some(orch.shutdown_now()),
            Stop::Drop => {
                drop(orch);
                None
            }
        }
    }
}

/// Builds the named examples (a no-op under `cargo test`, which already built them) with the
/// profile this test runs in, and returns their executables by name.
pub fn build_examples(names: &[&str]) -> std::collections::HashMap<String, std::path::PathBuf> {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    let mut cargo = Command::new(env!("CARGO"));
    cargo.args(["build", "--message-format=json"]);
    for name in names {
        cargo.args(["--example", name]);
    }
    cargo
        .arg("--manifest-path")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
    if !cfg!(debug_assertions) {
        cargo.arg("--release");
    }
    let out = cargo.output().expect("cargo runs");
    assert!(
        out.status.success(),
        "cargo build of the examples {names:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bins: std::collections::HashMap<String, PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact")
        .filter_map(|msg| {
            let name = msg["target"]["name"].as_str()?.to_owned();
            let exe = msg["executable"].as_str()?;
            Some((name, PathBuf::from(exe)))
        })
        .collect();
    for name in names {
        assert!(
            bins.contains_key(*name),
            "cargo names the executable of {name}"
        );
    }
    bins
}
