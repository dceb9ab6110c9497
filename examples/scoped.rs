//! Borrowed data through a pool, where one would reach for rayon's `par_iter`:
//! `cargo run --release --example scoped [FILE]` (default: this crate's `src/` files).
//!
//! The text is read once into a `String`; the pool's requests are `&str` lines borrowed from
//! it, the handler borrows a stop-word list, and the results borrow the text too (the longest
//! word of each line). No `Arc`, no clone. Unlike `par_iter`, the scoped pool gives bounded
//! queues (memory stays flat however long the input), live metrics while it runs, and an
//! exact report at the end.

use std::collections::HashMap;

use channel_orchestrator::Orchestrator;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let text = match std::env::args().nth(1) {
        Some(path) => std::fs::read_to_string(path)?,
        None => read_sources("src")?,
    };
    let stop_words: Vec<&str> = vec!["the", "a", "an", "of", "to", "and", "is", "in", "let"];

    let ((counts, longest), report) = Orchestrator::builder()
        .workers(num_cpus())
        .queue_capacity(256)
        .scoped(
            // Borrows `stop_words`; gets `&str` lines borrowed from `text`; returns
            // (the line's word counts, its longest word — a `&str` into `text`).
            |line: &str| {
                let mut counts: HashMap<&str, u32> = HashMap::new();
                let mut longest = "";
                for word in line.split(|c: char| !c.is_alphanumeric() && c != '_') {
                    if word.is_empty() || stop_words.contains(&word) {
                        continue;
                    }
                    *counts.entry(word).or_default() += 1;
                    if word.len() > longest.len() {
                        longest = word;
                    }
                }
                (counts, longest)
            },
            |pool, _responses| {
                let mut total: HashMap<&str, u32> = HashMap::new();
                let mut longest = "";
                for response in pool.process(text.lines()) {
                    let (counts, word) = response.outcome.expect("the handler does not panic");
                    for (w, n) in counts {
                        *total.entry(w).or_default() += n;
                    }
                    if word.len() > longest.len() {
                        longest = word;
                    }
                }
                let m = pool.metrics();
                eprintln!(
                    "pool: {} workers, {} jobs done",
                    m.workers.len(),
                    m.completed
                );
                (total, longest)
            },
        )?;

    let mut top: Vec<(&str, u32)> = counts.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    println!("{} lines ({} failed)", report.completed, report.failed);
    println!("longest word: {longest}");
    for (word, n) in top.iter().take(10) {
        println!("{n:>7}  {word}");
    }
    Ok(())
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Every `.rs` file under `dir`, concatenated.
fn read_sources(dir: &str) -> std::io::Result<String> {
    let mut text = String::new();
    let mut stack = vec![std::path::PathBuf::from(dir)];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(path)? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                text.push_str(&std::fs::read_to_string(&path)?);
            }
        }
    }
    Ok(text)
}
