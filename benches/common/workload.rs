//! The jobs every implementation runs: empty, calibrated spins and a text "analysis".
//!
//! A job is a `u64` in and a `u64` out, so that every implementation moves the same bytes and
//! no request or response owns heap memory: what the benches measure is the machinery.

use std::hint::black_box;
use std::sync::OnceLock;
use std::time::Instant;

/// One workload, cheap to copy into every worker's handler.
#[derive(Clone, Copy, Debug)]
pub enum Workload {
    /// Returns its input: pure orchestration cost.
    Empty,
    /// A calibrated CPU spin of about `micros` microseconds (`iters` rounds of an LCG).
    Spin { micros: u64, iters: u64 },
    /// Tokenizes one of a fixed set of generated text documents and counts its words.
    Analysis(&'static [&'static str]),
}

impl Workload {
    /// The workload named `empty`, `1us`, `50us`, `analysis`, or `<N>us` for any `N`.
    pub fn parse(name: &str) -> Option<Workload> {
        match name {
            "empty" => Some(Workload::Empty),
            "analysis" => Some(Workload::Analysis(documents())),
            _ => {
                let micros: u64 = name.strip_suffix("us")?.parse().ok()?;
                Some(Workload::spin(micros))
            }
        }
    }

    /// A spin of about `micros` microseconds on this machine.
    pub fn spin(micros: u64) -> Workload {
        let iters = (micros as f64 * 1_000.0 / spin_ns_per_iter())
            .round()
            .max(1.0) as u64;
        Workload::Spin { micros, iters }
    }

    /// The name used in bench ids: `empty`, `1us`, `50us`, `analysis`.
    pub fn name(&self) -> String {
        match self {
            Workload::Empty => "empty".to_owned(),
            Workload::Spin { micros, .. } => format!("{micros}us"),
            Workload::Analysis(_) => "analysis".to_owned(),
        }
    }

    /// Runs the job for request `x`.
    #[inline]
    pub fn run(&self, x: u64) -> u64 {
        match *self {
            Workload::Empty => x,
            Workload::Spin { iters, .. } => spin(iters, x),
            Workload::Analysis(docs) => analyze(docs[(x % docs.len() as u64) as usize]),
        }
    }

    /// Measures the mean time of one job on the calling thread (best of five rounds).
    pub fn measure_ns(&self) -> f64 {
        let rounds = match self {
            Workload::Empty => 100_000,
            Workload::Spin { micros, .. } => (20_000 / micros.max(&1)).max(20),
            Workload::Analysis(_) => 2_000,
        };
        (0..5)
            .map(|_| {
                let t = Instant::now();
                for i in 0..rounds {
                    black_box(self.run(black_box(i)));
                }
                t.elapsed().as_nanos() as f64 / rounds as f64
            })
            .fold(f64::INFINITY, f64::min)
    }
}

/// `iters` rounds of a linear congruential generator, each behind `black_box` so that the
/// loop cannot be folded: CPU work whose length does not depend on the data.
#[inline]
pub fn spin(iters: u64, seed: u64) -> u64 {
    let mut x = seed;
    for _ in 0..iters {
        x = black_box(
            x.wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407),
        );
    }
    x
}

/// Nanoseconds per spin round on this machine: the best of several timed runs, measured once.
pub fn spin_ns_per_iter() -> f64 {
    static NS: OnceLock<f64> = OnceLock::new();
    *NS.get_or_init(|| {
        const ITERS: u64 = 2_000_000;
        black_box(spin(ITERS / 4, 1)); // warm up the core's clock
        (0..7)
            .map(|_| {
                let t = Instant::now();
                black_box(spin(ITERS, 1));
                t.elapsed().as_nanos() as f64 / ITERS as f64
            })
            .fold(f64::INFINITY, f64::min)
    })
}

/// Tokenizes `doc` into words (runs of ASCII letters and digits), counting words, long
/// words and sentences and folding each lower-cased word into a 64-bucket histogram, without
/// allocating; returns a digest of all of it.
pub fn analyze(doc: &str) -> u64 {
    let mut words = 0u64;
    let mut long_words = 0u64;
    let mut sentences = 0u64;
    let mut buckets = [0u32; 64];
    let (mut len, mut hash) = (0usize, FNV_OFFSET);
    for &b in doc.as_bytes() {
        if b.is_ascii_alphanumeric() {
            len += 1;
            hash = (hash ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(FNV_PRIME);
            continue;
        }
        if len > 0 {
            words += 1;
            long_words += u64::from(len > 6);
            buckets[(hash % 64) as usize] += 1;
            (len, hash) = (0, FNV_OFFSET);
        }
        sentences += u64::from(b == b'.');
    }
    if len > 0 {
        words += 1;
        long_words += u64::from(len > 6);
        buckets[(hash % 64) as usize] += 1;
    }
    let top = buckets.iter().copied().max().unwrap_or(0);
    words ^ (long_words << 20) ^ (sentences << 40) ^ (u64::from(top) << 52)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x100_0000_01b3;

/// Sixteen generated English-like documents of about 4 KiB each, built once and leaked so
/// that requests can refer to them by index.
pub fn documents() -> &'static [&'static str] {
    static DOCS: OnceLock<Vec<&'static str>> = OnceLock::new();
    DOCS.get_or_init(|| {
        (0..16)
            .map(|i| &*generate_document(i, 4096).leak())
            .collect()
    })
}

/// A deterministic text of about `bytes` bytes: sentences of words from a small vocabulary.
pub fn generate_document(seed: u64, bytes: usize) -> String {
    const WORDS: &[&str] = &[
        "the",
        "of",
        "and",
        "to",
        "in",
        "a",
        "is",
        "that",
        "for",
        "it",
        "as",
        "was",
        "with",
        "be",
        "by",
        "on",
        "not",
        "he",
        "this",
        "are",
        "or",
        "his",
        "from",
        "at",
        "which",
        "but",
        "have",
        "an",
        "had",
        "they",
        "you",
        "were",
        "their",
        "one",
        "all",
        "we",
        "channel",
        "worker",
        "request",
        "response",
        "orchestrator",
        "throughput",
        "latency",
        "queue",
        "thread",
        "message",
        "capacity",
        "shutdown",
        "supervisor",
        "metrics",
        "analysis",
        "document",
        "benchmark",
        "allocation",
        "contention",
        "processor",
    ];
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut doc = String::with_capacity(bytes + 64);
    while doc.len() < bytes {
        let len = 6 + next() % 14;
        for w in 0..len {
            let word = WORDS[(next() % WORDS.len() as u64) as usize];
            if w == 0 {
                let mut chars = word.chars();
                if let Some(first) = chars.next() {
                    doc.extend(first.to_uppercase());
                    doc.push_str(chars.as_str());
                }
            } else {
                doc.push(if next() % 9 == 0 { ',' } else { ' ' });
                if doc.ends_with(',') {
                    doc.push(' ');
                }
                doc.push_str(word);
            }
        }
        doc.push_str(if next() % 5 == 0 { ".\n" } else { ". " });
    }
    doc
}
