//! The `analyze` example run as a program: totals equal `wc`'s, unreadable paths don't stop it, Ctrl-C prints a partial report, options parse both ways.
#![cfg(unix)]

mod common;

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The longest a run may take before the test kills it and fails.
const LIMIT: Duration = Duration::from_secs(60);

/// Builds the example once per test binary and returns its path. Under `cargo test` the
/// example is already built, so this costs a fraction of a second.
fn analyze_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        common::build_examples(&["analyze"])
            .remove("analyze")
            .expect("built")
    })
}

/// What a run printed, and how it ended.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON object ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs the example with `args`; sends it SIGINT after `interrupt_after`, if given.
fn analyze(args: &[OsString], interrupt_after: Option<Duration>) -> Run {
    let mut child = Command::new(analyze_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the example starts");
    // Read both pipes while it runs, so a full pipe never blocks it.
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let status = wait(&mut child, interrupt_after);
    Run {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        pipe.read_to_string(&mut text).expect("UTF-8 output");
        text
    })
}

fn wait(child: &mut Child, mut interrupt_after: Option<Duration>) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if interrupt_after.is_some_and(|after| start.elapsed() >= after) {
            interrupt_after = None;
            let sent = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .expect("kill runs");
            assert!(sent.success());
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("analyze ran longer than {LIMIT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// A fresh directory under the system's temp dir, removed on drop.
struct Tree(PathBuf);

impl Tree {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("analyze-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Tree(dir)
    }

    fn file(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The specification, written as plainly as possible: lines are newline bytes; a word is a
/// maximal run of bytes other than the six C-locale spaces that holds a printable ASCII byte.
fn spec_counts(bytes: &[u8]) -> [u64; 3] {
    let lines = bytes.iter().filter(|&&b| b == b'\n').count();
    let words = bytes
        .split(|b| b" \t\n\x0b\x0c\r".contains(b))
        .filter(|run| run.iter().any(|b| (0x21..=0x7e).contains(b)))
        .count();
    [lines as u64, words as u64, bytes.len() as u64]
}

/// `LC_ALL=C wc -l -w -c FILES`'s total line; `None` when `wc` is missing.
fn wc_totals(files: &[PathBuf]) -> Option<[u64; 3]> {
    let out = match Command::new("wc")
        .args(["-l", "-w", "-c"])
        .args(files)
        .env("LC_ALL", "C")
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("note: wc did not run ({e}); comparing with the specification only");
            return None;
        }
    };
    assert!(out.status.success(), "wc failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.lines().last().expect("wc printed a line");
    let n: Vec<u64> = last
        .split_whitespace()
        .take(3)
        .map(|n| n.parse().unwrap())
        .collect();
    Some([n[0], n[1], n[2]])
}

fn totals(json: &Value) -> [u64; 3] {
    ["lines", "words", "bytes"].map(|k| json[k].as_u64().unwrap())
}

/// Pseudo-random bytes (xorshift), the same on every run.
fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn totals_equal_wc_on_tricky_files() {
    let tree = Tree::new("tricky");
    // Longer than the example's 64 KiB reads, so words and lines span reads.
    let mut long = b"abcdefg ".repeat(40_000);
    long.extend(b"x".repeat(200_000)); // one 200 KB word
    long.push(b'\n');
    let files = [
        ("empty", b"".to_vec()),
        ("no-trailing-newline.txt", b"the end is near".to_vec()),
        ("crlf.txt", b"one two\r\nthree\r\n\r\n".to_vec()),
        (
            "invalid-utf8.txt",
            b"caf\xe9 na\xefve \xff\xfe\xfd ok\n\xc3\x28 \xa0\xa1\n".to_vec(),
        ),
        ("long-line.txt", long),
        ("binary.bin", noise(300_000)),
        // Words made only of bytes >= 0x80 are no words in the C locale.
        (
            "high-bytes.txt",
            b"\x80\x81\x82 \xc3\xa9\xc3\xa8 \xff\n\xe2\x82\xac\xe2\x82\xac\n".to_vec(),
        ),
        // Controls neither start nor end a word: `a\x01b` is one, `\x01\x02` none.
        (
            "control.txt",
            b"\x01\x02\x03 \x00 \x1b[0m a\x01b \x7f\x7f\n\x0b\x0c\r \x07bell\x07\n".to_vec(),
        ),
        ("spaces-only.txt", b"  \t \n\x0b\x0c\r\n".to_vec()),
        ("unicode.txt", "héllo wörld — ünïcode\n".as_bytes().to_vec()),
        ("a dir/name with spaces.txt", b"spaced out\n".to_vec()),
        ("a dir/deeper/nested.txt", b"nested  file\n\n".to_vec()),
    ];
    let paths: Vec<PathBuf> = files.iter().map(|(rel, b)| tree.file(rel, b)).collect();

    let run = analyze(
        &[
            "--json".into(),
            "--workers".into(),
            "3".into(),
            tree.0.clone().into(),
        ],
        None,
    );
    assert!(
        run.status.success(),
        "exit {:?}: {}",
        run.status,
        run.stderr
    );
    let json = run.json();
    assert_eq!(json["files"], files.len());
    assert_eq!(json["failed"], 0);

    // Each file as the specification says.
    let per_file = json["per_file"].as_array().unwrap();
    assert_eq!(per_file.len(), files.len());
    let mut spec_total = [0; 3];
    for (path, (_, bytes)) in paths.iter().zip(&files) {
        let spec = spec_counts(bytes);
        let row = per_file
            .iter()
            .find(|r| r["path"] == path.to_str().unwrap())
            .unwrap_or_else(|| panic!("{} is missing from per_file", path.display()));
        assert_eq!(totals(row), spec, "{}", path.display());
        for (t, n) in spec_total.iter_mut().zip(spec) {
            *t += n;
        }
    }
    assert_eq!(totals(&json), spec_total);

    // The totals as `wc` says.
    if let Some(wc) = wc_totals(&paths) {
        let probe = tree.file("probe", b"\x80\x81 \x01\x02 a\x80\n");
        if wc_totals(std::slice::from_ref(&probe))
            == Some(spec_counts(b"\x80\x81 \x01\x02 a\x80\n"))
        {
            assert_eq!(totals(&json), wc, "analyze vs LC_ALL=C wc -l -w -c");
        } else {
            eprintln!(
                "note: this wc counts words of non-printable bytes; comparing lines and bytes only"
            );
            let ours = totals(&json);
            assert_eq!([ours[0], ours[2]], [wc[0], wc[2]]);
        }
    }

    // The word tallies, handed over by each worker at shutdown, add up.
    let top = &json["top_words"][0];
    assert_eq!(top["word"], "abcdefg");
    assert_eq!(top["count"], 40_000);
}

#[test]
fn unreadable_paths_are_reported_and_the_run_goes_on() {
    let tree = Tree::new("unreadable");
    tree.file("good.txt", b"still counted\n");
    tree.file("sub/also-good.txt", b"me too\n");
    // Root can read any file whatever its mode, so make reads fail another way.
    std::os::unix::fs::symlink("missing-target", tree.0.join("broken-link")).unwrap();
    // A link to a directory is skipped, not followed (no cycles).
    std::os::unix::fs::symlink("sub", tree.0.join("dir-link")).unwrap();
    // A FIFO would block a reader forever: it is skipped.
    let fifo = Command::new("mkfifo").arg(tree.0.join("pipe")).status();
    let have_fifo = fifo.is_ok_and(|s| s.success());
    // Opens fine, but reading it at offset 0 fails with EIO.
    let proc_mem = cfg!(target_os = "linux") && Path::new("/proc/self/mem").exists();
    if proc_mem {
        std::os::unix::fs::symlink("/proc/self/mem", tree.0.join("proc-mem")).unwrap();
    }
    let missing_root = tree.0.join("no-such-dir");

    let run = analyze(
        &[
            "--json".into(),
            tree.0.clone().into(),
            missing_root.clone().into(),
        ],
        None,
    );
    assert_eq!(run.status.code(), Some(1), "{}", run.stderr);
    let json = run.json();
    assert_eq!(json["files"], 2);
    assert_eq!(totals(&json), [2, 4, 21]);

    let errors = json["errors"].as_array().unwrap();
    let mut expected = vec![tree.0.join("broken-link"), missing_root];
    if proc_mem {
        expected.push(tree.0.join("proc-mem"));
    }
    assert_eq!(json["failed"], expected.len(), "{errors:?}");
    for path in &expected {
        let path = path.to_str().unwrap();
        let error = errors
            .iter()
            .find(|e| e["path"] == path)
            .unwrap_or_else(|| panic!("{path} is not reported: {errors:?}"));
        assert!(!error["reason"].as_str().unwrap().is_empty());
        assert!(run.stderr.contains(path), "{path} is not on stderr");
    }
    assert_eq!(json["skipped"], 1 + u64::from(have_fifo));
}

#[test]
fn ctrl_c_prints_a_partial_report() {
    if Command::new("kill").arg("-l").output().is_err() {
        eprintln!("note: no `kill` command to send SIGINT with; skipped");
        return;
    }
    let tree = Tree::new("interrupt");
    for name in ["a.txt", "b.txt", "c.txt"] {
        tree.file(name, b"small file\n");
    }
    // 8 GiB of holes: takes seconds to read, no disk space.
    let huge = fs::File::create(tree.0.join("zz-huge")).unwrap();
    huge.set_len(8 << 30).unwrap();
    drop(huge);

    let start = Instant::now();
    let run = analyze(
        &[
            "--json".into(),
            "--workers".into(),
            "2".into(),
            tree.0.clone().into(),
        ],
        Some(Duration::from_secs(1)),
    );
    assert_eq!(
        run.status.code(),
        Some(130),
        "{:?}: {}",
        run.status,
        run.stderr
    );
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "it did not stop early"
    );
    let json = run.json();
    assert_eq!(json["interrupted"], true);
    assert_eq!(json["files"], 3);
    assert_eq!(totals(&json), [3, 6, 33]);
    assert_eq!(json["cancelled"], 1);
    assert!(run.stderr.contains("interrupted"), "{}", run.stderr);
}

#[test]
fn options_take_their_value_after_a_space_or_an_equals_sign() {
    let tree = Tree::new("options");
    tree.file("a.txt", b"one two\nthree\n");
    tree.file("sub/b.txt", b"four\n");
    let equals: [OsString; 2] = ["--workers=2".into(), "--top=1".into()];
    let spaced: [OsString; 4] = ["--workers".into(), "2".into(), "--top".into(), "1".into()];
    for options in [&equals[..], &spaced[..]] {
        let mut args = options.to_vec();
        args.extend(["--json".into(), tree.0.clone().into()]);
        let run = analyze(&args, None);
        assert!(
            run.status.success(),
            "{args:?}: exit {:?}: {}",
            run.status,
            run.stderr
        );
        let json = run.json();
        assert_eq!(json["workers"], 2, "{args:?}");
        assert_eq!(totals(&json), [3, 4, 19], "{args:?}");
        assert_eq!(json["top_words"].as_array().unwrap().len(), 1, "{args:?}");
    }
}

#[test]
fn help_and_version_succeed_and_bad_usage_exits_2() {
    let help = analyze(&["--help".into()], None);
    assert!(help.status.success(), "{:?}: {}", help.status, help.stderr);
    for option in [
        "--workers <N>",
        "--top <N>",
        "--per-file",
        "--json",
        "--version",
    ] {
        assert!(
            help.stdout.contains(option),
            "{option} is not in:\n{}",
            help.stdout
        );
    }

    let version = analyze(&["--version".into()], None);
    assert!(
        version.status.success(),
        "{:?}: {}",
        version.status,
        version.stderr
    );
    assert!(
        version.stdout.contains(env!("CARGO_PKG_VERSION")),
        "{}",
        version.stdout
    );

    for bad in [
        &["--wrkers=2"][..],
        &["--workers=two"],
        &["--workers"],
        &["--json=yes"],
    ] {
        let args: Vec<OsString> = bad.iter().map(OsString::from).collect();
        let run = analyze(&args, None);
        assert_eq!(run.status.code(), Some(2), "{bad:?}: {}", run.stderr);
        assert!(
            run.stdout.is_empty(),
            "{bad:?} printed a report:\n{}",
            run.stdout
        );
        assert!(run.stderr.contains("error"), "{bad:?}: {}", run.stderr);
    }
}
