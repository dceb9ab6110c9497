//! Scaling out behind a durable queue, against a real `redis-server`: 20,000 stream entries,
//! three `redis_worker` processes, one killed with SIGKILL mid-run and replaced, one stopped
//! with SIGTERM; every entry ends with exactly one correct result and nothing stays pending.
//!
//! Needs `redis-server` on PATH (`.ci/run` installs it); without it the test says so and
//! passes as skipped.
#![cfg(unix)]

mod common;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use redis::{Connection, Value};

const ENTRIES: u64 = 20_000;
/// The longest any wait of this test may take before it fails.
const LIMIT: Duration = Duration::from_secs(90);

/// The two examples' executables, by name.
fn examples() -> HashMap<String, PathBuf> {
    common::build_examples(&["redis_worker", "redis_feed"])
}

/// A `redis-server` on a free loopback port, without persistence, in a temporary directory;
/// killed (and the directory removed) on drop, so a failing test leaks neither.
struct Server {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Server {
    /// `None` when `redis-server` is not installed.
    fn start() -> Option<Server> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir = std::env::temp_dir().join(format!("redis-streams-test-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("a temporary directory");
        let spawned = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(File::create(dir.join("redis.log")).expect("a log file"))
            .stderr(Stdio::inherit())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let _ = fs::remove_dir_all(&dir);
                return None;
            }
            Err(e) => panic!("redis-server does not start: {e}"),
        };
        let server = Server {
            child,
            dir,
            url: format!("redis://127.0.0.1:{port}"),
        };
        let started = Instant::now();
        loop {
            if let Ok(mut con) = server.try_connect()
                && redis::cmd("PING").query::<String>(&mut con).is_ok()
            {
                return Some(server);
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server does not answer PING on {}",
                server.url
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn try_connect(&self) -> redis::RedisResult<Connection> {
        redis::Client::open(self.url.as_str())?.get_connection()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The worker processes; any still running are killed on drop.
struct Workers {
    bin: PathBuf,
    url: String,
    logs: PathBuf,
    running: Vec<(String, Child)>,
}

impl Workers {
    fn start(&mut self, name: &str, claim_idle_ms: u64) {
        let child = Command::new(&self.bin)
            .args([
                "--redis", &self.url, "--stream", "jobs", "--group", "workers",
            ])
            .args(["--results", "results", "--consumer", name])
            .args(["--workers", "1", "--queue", "16"])
            .args(["--claim-idle", &claim_idle_ms.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(self.logs.join(format!("{name}.log"))).expect("a log file"))
            .spawn()
            .expect("redis_worker starts");
        self.running.push((name.to_owned(), child));
    }

    fn take(&mut self, name: &str) -> Child {
        let i = self
            .running
            .iter()
            .position(|(n, _)| n == name)
            .expect("a running worker");
        self.running.remove(i).1
    }

    /// Sends SIGTERM to `name` and waits for it to exit.
    fn terminate(&mut self, name: &str) -> ExitStatus {
        let mut child = self.take(name);
        signal(&child, "TERM");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if started.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                panic!("{name} did not exit within 20 s of SIGTERM\n{}", self.log());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every worker's stderr, for failure messages.
    fn log(&self) -> String {
        let mut all = String::new();
        for entry in fs::read_dir(&self.logs).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                all += &format!("--- {}\n", path.display());
                all += &fs::read_to_string(&path).unwrap_or_default();
            }
        }
        all
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for (_, child) in &mut self.running {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends `kill -SIGNAL` to `child`.
fn signal(child: &Child, signal: &str) {
    let sent = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill runs");
    assert!(sent.success(), "kill -{signal} {}", child.id());
}

/// `wc`'s numbers, `LINES WORDS BYTES`, written here independently of the examples' counter:
/// a word is a run between the C locale's spaces that holds a printable ASCII byte.
fn expected(payload: &[u8]) -> String {
    let lines = payload.iter().filter(|&&b| b == b'\n').count();
    let words = payload
        .split(|b| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r'))
        .filter(|w| w.iter().any(|b| (0x21..=0x7e).contains(b)))
        .count();
    format!("{lines} {words} {}", payload.len())
}

fn hlen(con: &mut Connection) -> u64 {
    redis::cmd("HLEN").arg("results").query(con).expect("HLEN")
}

/// Entries pending in the group: all of them, or `consumer`'s.
fn pending(con: &mut Connection, consumer: Option<&str>) -> u64 {
    match consumer {
        None => {
            let summary: Value = redis::cmd("XPENDING")
                .arg("jobs")
                .arg("workers")
                .query(con)
                .expect("XPENDING");
            match summary {
                Value::Array(parts) => match parts.first() {
                    Some(Value::Int(n)) => *n as u64,
                    other => panic!("XPENDING summary starts with {other:?}"),
                },
                other => panic!("XPENDING summary is {other:?}"),
            }
        }
        Some(consumer) => {
            let entries: Vec<Value> = redis::cmd("XPENDING")
                .arg("jobs")
                .arg("workers")
                .arg("-")
                .arg("+")
                .arg(ENTRIES)
                .arg(consumer)
                .query(con)
                .expect("XPENDING");
            entries.len() as u64
        }
    }
}

/// Waits until `done` holds, polling every 2 ms.
fn wait_until(what: &str, workers: &Workers, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < LIMIT,
            "timed out waiting for {what}\n{}",
            workers.log()
        );
        thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn three_workers_one_killed_nothing_lost() {
    let Some(server) = Server::start() else {
        // Straight to stderr, not `eprintln!`: the test harness captures that for a passing
        // test, and this line must show under a plain `cargo test`.
        let _ = writeln!(
            std::io::stderr(),
            "redis_streams: skipped: redis-server not found; install it with \
             `apt-get install redis-server` (.ci/run does this)"
        );
        return;
    };
    let bins = examples();
    let mut con = server.try_connect().expect("a connection");

    let fed = Command::new(&bins["redis_feed"])
        .args([
            "--redis",
            &server.url,
            "--stream",
            "jobs",
            "--group",
            "workers",
        ])
        .args([
            "--results",
            "results",
            "--reset",
            "--generate",
            &ENTRIES.to_string(),
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("redis_feed runs");
    assert!(fed.status.success(), "redis_feed failed");
    let xlen: u64 = redis::cmd("XLEN").arg("jobs").query(&mut con).unwrap();
    assert_eq!(xlen, ENTRIES);

    let mut workers = Workers {
        bin: bins["redis_worker"].clone(),
        url: server.url.clone(),
        logs: server.dir.clone(),
        running: Vec::new(),
    };
    // The survivors claim slowly; the replacement below claims fast.
    for name in ["w1", "w2", "w3"] {
        workers.start(name, 2_000);
    }

    // Mid-run: some results, not all. SIGKILL w2 while it holds entries it took and never
    // acked: freeze it first (SIGSTOP), so that what it holds cannot change while we look.
    wait_until("the first results", &workers, || {
        hlen(&mut con) >= ENTRIES / 20
    });
    let mut victim = workers.take("w2");
    let started = Instant::now();
    let orphaned = loop {
        signal(&victim, "STOP");
        let held = pending(&mut con, Some("w2"));
        if held > 0 {
            break held;
        }
        // It had just acked everything it held: let it take more.
        signal(&victim, "CONT");
        assert!(started.elapsed() < LIMIT, "w2 never holds entries");
        thread::sleep(Duration::from_millis(1));
    };
    victim.kill().expect("SIGKILL w2");
    victim.wait().expect("w2 reaped");
    let done_at_kill = hlen(&mut con);
    eprintln!("killed w2 at {done_at_kill} results, holding {orphaned} unacked entries");
    assert!(
        done_at_kill < ENTRIES,
        "the run ended before the kill: make it longer"
    );

    // A replacement takes over w2's entries once they are idle for 300 ms.
    workers.start("w4", 300);

    // A clean stop mid-run (or at the end, if the run is over by then): w1 finishes and acks
    // everything it took, and exits with status 0.
    wait_until("half of the results", &workers, || {
        hlen(&mut con) >= ENTRIES / 2
    });
    let done_at_stop = hlen(&mut con);
    let status = workers.terminate("w1");
    eprintln!("stopped w1 with SIGTERM at {done_at_stop} results");
    assert!(
        status.success(),
        "w1 after SIGTERM: {status}\n{}",
        workers.log()
    );
    assert_eq!(pending(&mut con, Some("w1")), 0, "w1 left entries pending");

    wait_until("every result, nothing pending", &workers, || {
        hlen(&mut con) == ENTRIES && pending(&mut con, None) == 0
    });
    assert_eq!(
        pending(&mut con, Some("w2")),
        0,
        "w2's entries were not claimed"
    );
    for name in ["w3", "w4"] {
        let status = workers.terminate(name);
        assert!(status.success(), "{name} after SIGTERM: {status}");
    }

    // Every entry has exactly one result (a hash holds one value per field, and there are as
    // many fields as entries), and it is the right one.
    let entries: Vec<(String, HashMap<String, Vec<u8>>)> = redis::cmd("XRANGE")
        .arg("jobs")
        .arg("-")
        .arg("+")
        .query(&mut con)
        .expect("XRANGE");
    let results: HashMap<String, String> = redis::cmd("HGETALL")
        .arg("results")
        .query(&mut con)
        .expect("HGETALL");
    assert_eq!(entries.len() as u64, ENTRIES);
    assert_eq!(results.len() as u64, ENTRIES);
    for (id, fields) in &entries {
        let payload = &fields["payload"];
        assert_eq!(
            results.get(id),
            Some(&expected(payload)),
            "entry {id}: {:?}",
            String::from_utf8_lossy(payload)
        );
    }
    assert_eq!(pending(&mut con, None), 0);

    // The example's own check agrees.
    let verified = Command::new(&bins["redis_feed"])
        .args([
            "--redis",
            &server.url,
            "--stream",
            "jobs",
            "--group",
            "workers",
        ])
        .args(["--results", "results", "--verify"])
        .output()
        .expect("redis_feed --verify runs");
    assert!(
        verified.status.success(),
        "redis_feed --verify: {}",
        String::from_utf8_lossy(&verified.stdout)
    );
    // What the workers said about claims and stops (shown with --nocapture).
    for line in workers.log().lines() {
        if line.contains("claimed") || line.contains("stop") {
            eprintln!("{line}");
        }
    }
    drop(workers);
    drop(server);
}
