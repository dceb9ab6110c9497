//! Chaos schedules for scoped pools: random sizes, priorities, a concurrency limit's worth of
//! back-pressure (queue of 1..8), scoped producer threads using every submit kind on borrowed
//! requests, random handler panics, a consumer that reads, stalls or drops the receiver, and
//! a body that returns early or panics at a random moment. Checked after each run: every
//! accepted request ended in exactly one place (a response, a `call` answer, or — receiver
//! dropped, or the body gone while the channel was full — one count of `undelivered`),
//! every request value was dropped exactly once, the report is consistent, and no thread of
//! the pool is left.
//!
//! Reproduce a failing seed with `SCOPED_CHAOS_SEED=<seed> cargo test --test chaos_scoped`;
//! more seeds with `SCOPED_CHAOS_SEEDS=<count>` (release: `cargo test --release`).

mod common;

use std::collections::HashSet;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use channel_orchestrator::{
    CallError, CallTimeoutError, JobError, Orchestrator, Priority, SubmitError, SubmitTimeoutError,
    TrySubmitError,
};
use common::{MARKER, Rng, assert_no_threads_of, quiet_panics, within};

const SEEDS: u64 = 60;

/// A borrowed request: its tag, and the drop counter of its value.
struct Req<'a> {
    tag: u64,
    drops: &'a [AtomicU32],
}

impl Drop for Req<'_> {
    fn drop(&mut self) {
        self.drops[self.tag as usize].fetch_add(1, Ordering::SeqCst);
    }
}

fn answer(tag: u64) -> u64 {
    tag * 3 + 1
}

fn run(seed: u64) {
    let mut r = Rng::new(seed);
    let workers = 1 + r.below(4) as usize;
    let queue = 1 + r.below(8) as usize;
    let response_capacity = r.chance(40).then(|| 1 + r.below(4) as usize);
    let producers = 1 + r.below(4);
    let per = 1 + r.below(120);
    let panic_percent = [0, 5, 30][r.below(3) as usize];
    let body_panics = r.chance(20);
    let stop_after = r.below(per + 1); // producers' requests before the body gives up
    let reader = r.below(3); // 0: reads all, 1: stalls then drops, 2: drops at once
    let total = producers * per;
    let drops: Vec<AtomicU32> = (0..total).map(|_| AtomicU32::new(0)).collect();
    let created: Vec<AtomicBool> = (0..total).map(|_| AtomicBool::new(false)).collect();
    let ran: Vec<AtomicU32> = (0..total).map(|_| AtomicU32::new(0)).collect();
    let accepted = AtomicU64::new(0);
    let answered = AtomicU64::new(0); // `call`s answered Ok or Failed
    let refused = AtomicU64::new(0);
    let giving_up = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let name = format!("chs{seed}");
    let mut b = Orchestrator::builder()
        .workers(workers)
        .queue_capacity(queue)
        .thread_name(name.as_str());
    if let Some(cap) = response_capacity {
        b = b.response_capacity(cap);
    }
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        b.scoped(
            |req: Req<'_>| {
                ran[req.tag as usize].fetch_add(1, Ordering::SeqCst);
                if draw(seed, req.tag) % 100 < panic_percent {
                    panic!("{MARKER} #{}", req.tag);
                }
                answer(req.tag)
            },
            |pool, responses| {
                thread::scope(|s| {
                    let done = &done;
                    let reading = s.spawn(move || {
                        let mut got = Vec::new();
                        match reader {
                            0 => loop {
                                match responses.recv_timeout(Duration::from_millis(1)) {
                                    Ok(r) => got.push(r.id),
                                    Err(_) if done.load(Ordering::SeqCst) => {
                                        return (got, Some(responses));
                                    }
                                    Err(_) => {}
                                }
                            },
                            1 => {
                                // Reads a few, then drops the receiver.
                                while got.len() < 5 && !done.load(Ordering::SeqCst) {
                                    if let Ok(r) = responses.recv_timeout(Duration::from_millis(1))
                                    {
                                        got.push(r.id);
                                    }
                                }
                                (got, None)
                            }
                            _ => (got, None),
                        }
                    });
                    let producing: Vec<_> = (0..producers)
                        .map(|p| {
                            let (drops, created, accepted, answered, refused, giving_up) =
                                (&drops, &created, &accepted, &answered, &refused, &giving_up);
                            s.spawn(move || {
                                produce(
                                    pool, seed, p, per, drops, created, accepted, answered,
                                    refused, giving_up,
                                )
                            })
                        })
                        .collect();
                    // The body gives up at a random moment: producers stop soon after.
                    loop {
                        let seen = accepted.load(Ordering::SeqCst) + refused.load(Ordering::SeqCst);
                        if seen >= stop_after.min(total)
                            || producing.iter().all(|h| h.is_finished())
                        {
                            break;
                        }
                        thread::yield_now();
                    }
                    giving_up.store(true, Ordering::SeqCst);
                    for h in producing {
                        h.join().expect("a producer");
                    }
                    done.store(true, Ordering::SeqCst);
                    let (got, rx) = reading.join().expect("the reader");
                    if body_panics {
                        panic!("{MARKER}: body gives up");
                    }
                    (got, rx)
                })
            },
        )
    }));
    let streamed: HashSet<_> = match result {
        Ok(Ok(((mut got, rx), report))) => {
            // What was still buffered when the pool stopped.
            got.extend(rx.into_iter().flat_map(|rx| rx.into_iter().map(|r| r.id)));
            let got_len = got.len() as u64;
            let ids: HashSet<_> = got.into_iter().collect();
            assert_eq!(ids.len() as u64, got_len, "seed {seed}: a response twice");
            let acc = accepted.load(Ordering::SeqCst);
            let calls = answered.load(Ordering::SeqCst);
            assert_eq!(report.submitted, acc, "seed {seed}: {report:?}");
            assert!(report.unstarted.is_empty(), "seed {seed}: graceful");
            assert_eq!(
                report.completed + report.failed,
                acc,
                "seed {seed}: every accepted request ran once"
            );
            // Stream responses: read, or undelivered (receiver dropped, or full after the
            // body), never both. A receiver dropped with responses in its buffer takes them
            // along uncounted (README, "Not promised"): then at most.
            let streamed = acc - calls;
            if reader == 0 {
                assert_eq!(
                    got_len + report.undelivered,
                    streamed,
                    "seed {seed}: {report:?}"
                );
            } else {
                assert!(
                    got_len + report.undelivered <= streamed,
                    "seed {seed}: {report:?}"
                );
            }
            ids
        }
        Ok(Err(e)) => panic!("seed {seed}: build failed: {e}"),
        Err(payload) => {
            let m = payload
                .downcast_ref::<String>()
                .cloned()
                .unwrap_or_default();
            assert!(
                body_panics && m.contains("body gives up"),
                "seed {seed}: {m}"
            );
            HashSet::new()
        }
    };
    let _ = streamed;
    for (tag, (d, c)) in drops.iter().zip(&created).enumerate() {
        let (dropped, made) = (d.load(Ordering::SeqCst), c.load(Ordering::SeqCst));
        assert_eq!(
            dropped,
            u32::from(made),
            "seed {seed}: request {tag} dropped {dropped} times"
        );
    }
    for (tag, n) in ran.iter().enumerate() {
        assert!(
            n.load(Ordering::SeqCst) <= 1,
            "seed {seed}: request {tag} ran twice"
        );
    }
    assert_no_threads_of(&name);
}

/// One scoped producer: every submit kind on borrowed requests, until the body gives up.
#[allow(clippy::too_many_arguments)]
fn produce<'a>(
    pool: &channel_orchestrator::Scoped<'_, Req<'a>, u64>,
    seed: u64,
    p: u64,
    per: u64,
    drops: &'a [AtomicU32],
    created: &[AtomicBool],
    accepted: &AtomicU64,
    answered: &AtomicU64,
    refused: &AtomicU64,
    giving_up: &AtomicBool,
) {
    let mut r = Rng::new(seed ^ ((p + 1) * 0x9E37));
    for i in 0..per {
        if giving_up.load(Ordering::SeqCst) {
            return;
        }
        let tag = p * per + i;
        created[tag as usize].store(true, Ordering::SeqCst);
        let req = Req { tag, drops };
        let priority = [Priority::High, Priority::Normal, Priority::Low][r.below(3) as usize];
        let ok = match r.below(6) {
            0 => pool.submit(req).map_err(|SubmitError::ShutDown(q)| q),
            1 => pool.try_submit(req).map_err(|e| match e {
                TrySubmitError::Full(q) | TrySubmitError::ShutDown(q) => q,
            }),
            2 => pool
                .submit_with_priority(req, priority)
                .map_err(|SubmitError::ShutDown(q)| q),
            3 => pool
                .submit_timeout(req, Duration::from_micros(r.below(500)))
                .map_err(|e| match e {
                    SubmitTimeoutError::Timeout(q) | SubmitTimeoutError::ShutDown(q) => q,
                }),
            4 => {
                match pool.call(req) {
                    Ok(v) => assert_eq!(v, answer(tag)),
                    Err(CallError::Failed(JobError::Panicked(m))) => {
                        assert!(m.contains(&format!("#{tag}")), "{m}");
                    }
                    Err(e) => panic!("call {tag}: {e:?}"),
                }
                answered.fetch_add(1, Ordering::SeqCst);
                accepted.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            _ => match pool.call_timeout(req, Duration::from_secs(30)) {
                Ok(_) | Err(CallTimeoutError::Failed(_)) => {
                    answered.fetch_add(1, Ordering::SeqCst);
                    accepted.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                Err(CallTimeoutError::Timeout(q)) => Err(q),
                Err(e) => panic!("call_timeout {tag}: {e:?}"),
            },
        };
        match ok {
            Ok(_) => _ = accepted.fetch_add(1, Ordering::SeqCst),
            Err(back) => {
                assert_eq!(back.tag, tag, "another request came back");
                refused.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

fn draw(seed: u64, tag: u64) -> u64 {
    Rng::new(seed ^ tag.wrapping_mul(0xD6E8_FEB8_6659_FD93)).next()
}

#[test]
fn scoped_chaos_schedules_lose_nothing_and_leave_no_thread() {
    quiet_panics();
    let seeds: Vec<u64> = match std::env::var("SCOPED_CHAOS_SEED") {
        Ok(s) => vec![s.parse().expect("a seed")],
        Err(_) => {
            let n = std::env::var("SCOPED_CHAOS_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(SEEDS);
            (0..n).collect()
        }
    };
    for seed in seeds {
        within(
            Duration::from_secs(30),
            &format!("scoped chaos seed {seed}"),
            move || run(seed),
        );
    }
}
