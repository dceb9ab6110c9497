//! Hostile tests of scoped pools: bodies that return early or panic at every moment,
//! panics in every place user code runs, extreme settings, borrowed data of every kind, many
//! scoped producers with every submit kind, and stalled subscribers. Each test runs under a
//! bounded wait: a broken promise shows up as a failure, never as a hang of the suite.

mod common;

use std::collections::HashSet;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use channel_orchestrator::crossbeam_channel::{Receiver, TryRecvError};
use channel_orchestrator::{
    BuildErrorKind, CallError, CallTimeoutError, JobError, MIN_STACK_SIZE, MetricsEvent,
    Orchestrator, Priority, RequestId, Response, SubmitTimeoutError, TrySubmitError,
    WorkerEventKind,
};
use common::{
    IntentionalPayload, MARKER, Rng, assert_no_threads_of, assert_summary_is_report, eventually,
    quiet_panics, threads_of, within,
};

/// The bound on every test here: far above what each needs (well under a second).
const LIMIT: Duration = Duration::from_secs(5);

/// Counts the requests (or responses) made and dropped, borrowed by each of them.
#[derive(Default)]
struct Counts {
    created: AtomicUsize,
    dropped: AtomicUsize,
}

impl Counts {
    fn created(&self) -> usize {
        self.created.load(Ordering::SeqCst)
    }
    fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
}

/// A request (or response) that borrows its counter and counts its own drop; a `bomb` also
/// panics in its `Drop`.
struct Tracked<'a> {
    n: u64,
    counts: &'a Counts,
    bomb: bool,
}

impl<'a> Tracked<'a> {
    fn new(n: u64, counts: &'a Counts) -> Self {
        counts.created.fetch_add(1, Ordering::SeqCst);
        Tracked {
            n,
            counts,
            bomb: false,
        }
    }
    fn bomb(n: u64, counts: &'a Counts) -> Self {
        counts.created.fetch_add(1, Ordering::SeqCst);
        Tracked {
            n,
            counts,
            bomb: true,
        }
    }
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        self.counts.dropped.fetch_add(1, Ordering::SeqCst);
        if self.bomb && !thread::panicking() {
            panic!("{MARKER}: drop of {}", self.n);
        }
    }
}

impl std::fmt::Debug for Tracked<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tracked({})", self.n)
    }
}

fn exact<Req>(report: &channel_orchestrator::ShutdownReport<Req>) {
    assert_eq!(
        report.submitted,
        report.completed + report.failed + report.unstarted.len() as u64 + report.cancelled,
        "report not exact: {report:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Early returns
// ---------------------------------------------------------------------------------------

/// The body returns with work queued, a `process` iterator and a `process_ordered` iterator
/// half consumed (dropped at the return): everything accepted runs, each request is dropped
/// exactly once, the discarded `process` items are `undelivered`, no thread is left.
#[test]
fn early_return_with_half_consumed_iterators_runs_everything_and_drops_each_once() {
    within(LIMIT, "scoped", || {
        let counts = Counts::default();
        let ran = AtomicUsize::new(0);
        let name = "hse";
        let ((responses, yielded), report) = Orchestrator::builder()
            .workers(2)
            .queue_capacity(4)
            .thread_name(name)
            .scoped(
                |t: Tracked<'_>| {
                    ran.fetch_add(1, Ordering::SeqCst);
                    thread::sleep(Duration::from_micros(50));
                    t.n
                },
                |pool, responses| {
                    for n in 0..10 {
                        pool.submit(Tracked::new(n, &counts)).unwrap();
                    }
                    let mut unordered = pool.process((100..200).map(|n| Tracked::new(n, &counts)));
                    let mut ordered =
                        pool.process_ordered((200..300).map(|n| Tracked::new(n, &counts)));
                    let mut yielded = 0;
                    for _ in 0..3 {
                        assert!(unordered.next().unwrap().outcome.is_ok());
                        assert!(ordered.next().unwrap().outcome.unwrap() >= 200);
                        yielded += 2;
                    }
                    for n in 10..20 {
                        pool.submit(Tracked::new(n, &counts)).unwrap();
                    }
                    (responses, yielded)
                },
            )
            .unwrap();
        exact(&report);
        assert!(report.unstarted.is_empty());
        let created = counts.created() as u64;
        assert_eq!(report.submitted, created, "{report:?}");
        assert_eq!(report.completed, created);
        assert_eq!(ran.load(Ordering::SeqCst) as u64, created);
        assert_eq!(
            counts.dropped() as u64,
            created,
            "each request dropped once"
        );
        // Every stream response is there, once.
        let ids: Vec<u64> = responses.try_iter().map(|r| r.outcome.unwrap()).collect();
        assert_eq!(
            ids.iter().copied().collect::<HashSet<_>>(),
            (0..20).collect()
        );
        assert_eq!(ids.len(), 20);
        // What the iterators took but did not yield is undelivered (and nothing else is).
        assert_eq!(report.undelivered, created - 20 - yielded, "{report:?}");
        assert_no_threads_of(name);
    });
}

/// The body leaks (`mem::forget`) a half-consumed `process` iterator and a `process_ordered`
/// one, then returns: their requests in flight still run (their answers land in the leaked
/// private channels, which always have room), the shutdown does not wait on them, each
/// accepted request is dropped exactly once.
#[test]
fn forgotten_process_iterators_do_not_hold_the_shutdown() {
    within(LIMIT, "scoped", || {
        let counts = Counts::default();
        let name = "hsfg";
        let ((), report) = Orchestrator::builder()
            .workers(2)
            .queue_capacity(2)
            .response_capacity(1)
            .thread_name(name)
            .scoped(
                |t: Tracked<'_>| {
                    thread::sleep(Duration::from_micros(100));
                    t.n
                },
                |pool, _responses| {
                    let mut a = pool.process((0..50).map(|n| Tracked::new(n, &counts)));
                    a.next().unwrap();
                    std::mem::forget(a);
                    let mut b = pool.process_ordered((50..100).map(|n| Tracked::new(n, &counts)));
                    b.next().unwrap();
                    std::mem::forget(b);
                },
            )
            .unwrap();
        exact(&report);
        // A forgotten iterator leaks what it holds: at most the one input it pulled but
        // could not queue yet (a full queue). Everything accepted ran and was dropped once.
        let leaked = counts.created() as u64 - report.submitted;
        assert!(leaked <= 2, "{leaked} leaked");
        assert_eq!(report.completed, report.submitted);
        assert_eq!(counts.dropped() as u64, report.submitted);
        assert_no_threads_of(name);
    });
}

/// Same early return with a bounded responses channel of 1 that the body never reads and
/// drops: the shutdown does not wait for it, responses are all dropped exactly once.
#[test]
fn early_return_dropping_a_full_bounded_responses_receiver() {
    within(LIMIT, "scoped", || {
        let reqs = Counts::default();
        let resps = Counts::default();
        let name = "hsf";
        let ((), report) = Orchestrator::builder()
            .workers(2)
            .queue_capacity(32)
            .response_capacity(1)
            .thread_name(name)
            .scoped(
                |t: Tracked<'_>| Tracked::new(t.n, &resps),
                |pool, responses| {
                    for n in 0..20 {
                        pool.submit(Tracked::new(n, &reqs)).unwrap();
                    }
                    // Make sure the channel is full and a worker waits on it.
                    eventually("channel full", || responses.is_full());
                    drop(responses);
                },
            )
            .unwrap();
        exact(&report);
        assert_eq!((report.submitted, report.completed), (20, 20));
        assert_eq!(reqs.dropped(), 20);
        assert_eq!(resps.created(), 20);
        assert_eq!(resps.dropped(), 20, "every response dropped once");
        assert!(report.undelivered >= 18, "{report:?}");
        assert_no_threads_of(name);
    });
}

/// The documented pattern of returning the responses receiver from the body (as
/// `scoped::an_early_return_with_work_queued_runs_it_all_and_hands_the_responses_over`
/// does), with a bounded responses channel: the graceful shutdown waits for space that only
/// the caller of `scoped` could make, and the caller gets control only when `scoped` returns.
#[test]
fn returning_a_full_bounded_receiver_from_the_body_does_not_deadlock() {
    within(Duration::from_secs(2), "scoped", || {
        let data: Vec<u64> = (0..5).collect();
        let (responses, report) = Orchestrator::builder()
            .workers(1)
            .response_capacity(1)
            .thread_name("hsr")
            .scoped(
                |x: &u64| *x,
                |pool, responses| {
                    for x in &data {
                        pool.submit(x).unwrap();
                    }
                    responses
                },
            )
            .unwrap();
        assert_eq!(report.completed, 5);
        assert!(responses.try_iter().count() <= 5);
    });
}

/// The body keeps the receiver of a bounded responses channel outside the pool (in a
/// variable of the caller), then panics: the documented "stops at once, joins every thread,
/// then the panic goes on" waits for response space that nobody can make.
#[test]
fn a_panicking_body_with_an_escaped_full_receiver_does_not_deadlock() {
    quiet_panics();
    within(Duration::from_secs(2), "scoped", || {
        let mut kept: Option<Receiver<Response<u64>>> = None;
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            Orchestrator::builder()
                .workers(1)
                .response_capacity(1)
                .thread_name("hsx")
                .scoped(
                    |x: u64| x,
                    |pool, responses| {
                        for x in 0..3 {
                            pool.submit(x).unwrap();
                        }
                        eventually("channel full", || responses.is_full());
                        kept = Some(responses);
                        panic!("{MARKER}: body fails after keeping the receiver");
                    },
                )
        }));
        assert!(result.is_err());
        drop(kept);
    });
}

// ---------------------------------------------------------------------------------------
// Panicking bodies
// ---------------------------------------------------------------------------------------

/// The body panics with a payload of its own type while work is queued, a subscription is
/// held and both kinds of `process` iterator are half consumed: the payload comes out
/// unchanged, each request is dropped exactly once, no thread is left.
#[test]
fn a_body_panic_mid_everything_propagates_its_payload_unchanged() {
    quiet_panics();
    within(LIMIT, "scoped", || {
        let counts = Counts::default();
        let name = "hsb";
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            Orchestrator::builder()
                .workers(2)
                .queue_capacity(8)
                .response_capacity(16)
                .metrics_interval(Duration::from_millis(1))
                .thread_name(name)
                .scoped(
                    |t: Tracked<'_>| {
                        thread::sleep(Duration::from_micros(300));
                        t.n
                    },
                    |pool, _responses| {
                        let _events = pool.subscribe_with_capacity(1);
                        for n in 0..8 {
                            pool.submit(Tracked::new(n, &counts)).unwrap();
                        }
                        let mut a = pool.process((10..50).map(|n| Tracked::new(n, &counts)));
                        let mut b =
                            pool.process_ordered((50..90).map(|n| Tracked::new(n, &counts)));
                        a.next().unwrap();
                        b.next().unwrap();
                        for n in 100..106 {
                            pool.submit_with_priority(Tracked::new(n, &counts), Priority::Low)
                                .unwrap();
                        }
                        panic::panic_any(IntentionalPayload);
                    },
                )
        }));
        let payload = result.expect_err("the body's panic propagates");
        assert!(
            payload.is::<IntentionalPayload>(),
            "payload changed on the way out"
        );
        assert_eq!(
            counts.dropped(),
            counts.created(),
            "each request dropped once"
        );
        assert_no_threads_of(name);
    });
}

/// The body panics while requests whose `Drop` panics are queued: `shutdown_now` drops them
/// quietly (no abort, no second panic), and the body's own message comes out.
#[test]
fn a_body_panic_with_drop_bombs_queued_keeps_its_message() {
    quiet_panics();
    within(LIMIT, "scoped", || {
        let counts = Counts::default();
        let name = "hsbb";
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            Orchestrator::builder()
                .workers(1)
                .queue_capacity(16)
                .thread_name(name)
                .scoped(
                    |t: Tracked<'_>| {
                        if t.n == 0 {
                            thread::sleep(Duration::from_millis(30));
                        }
                        // A bomb explodes here, inside the handler: contained.
                        t.n
                    },
                    |pool, _responses| {
                        pool.submit(Tracked::new(0, &counts)).unwrap();
                        for n in 1..10 {
                            pool.submit(Tracked::bomb(n, &counts)).unwrap();
                        }
                        panic!("{MARKER}: body message 42");
                    },
                )
        }));
        let payload = result.expect_err("the body's panic propagates");
        assert_eq!(
            payload.downcast_ref::<String>().map(String::as_str),
            Some(format!("{MARKER}: body message 42").as_str())
        );
        assert_eq!(counts.dropped(), counts.created());
        assert_no_threads_of(name);
    });
}

/// The body panics inside its own `std::thread::scope` while producers hammer the pool with
/// calls and submits: the producers finish (the inner scope joins them), then the pool stops,
/// and every request is dropped exactly once.
#[test]
fn a_body_panic_while_scoped_producers_run() {
    quiet_panics();
    within(LIMIT, "scoped", || {
        let counts = Counts::default();
        let name = "hsp";
        let answered = AtomicUsize::new(0);
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            Orchestrator::builder()
                .workers(2)
                .queue_capacity(2)
                .thread_name(name)
                .scoped(
                    |t: Tracked<'_>| {
                        assert!(!t.n.is_multiple_of(5), "{MARKER}: handler {}", t.n);
                        t.n
                    },
                    |pool, responses| {
                        thread::scope(|s| {
                            for p in 0..3u64 {
                                let (counts, answered) = (&counts, &answered);
                                s.spawn(move || {
                                    for i in 0..100 {
                                        let n = p * 1000 + i;
                                        if i % 2 == 0 {
                                            let r = pool.call(Tracked::new(n, counts));
                                            assert_eq!(r.is_ok(), n % 5 != 0);
                                            answered.fetch_add(1, Ordering::SeqCst);
                                        } else {
                                            pool.submit(Tracked::new(n, counts)).unwrap();
                                        }
                                    }
                                });
                            }
                            // Keep the responses moving for a while, then fail.
                            for _ in 0..20 {
                                responses.recv_timeout(Duration::from_secs(1)).unwrap();
                            }
                            panic!("{MARKER}: the body fails mid-production");
                        })
                    },
                )
        }));
        let payload = result.expect_err("the body's panic propagates");
        let msg = payload
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(msg.contains("mid-production"), "{msg:?}");
        assert_eq!(answered.load(Ordering::SeqCst), 150);
        assert_eq!(counts.dropped(), counts.created());
        assert_no_threads_of(name);
    });
}

/// The input iterator of `process` panics half way: the panic goes out of `scoped` as it
/// was, the requests in flight are waited for, nothing leaks.
#[test]
fn a_panicking_input_iterator_of_process() {
    quiet_panics();
    within(LIMIT, "scoped", || {
        let counts = Counts::default();
        let name = "hsi";
        let result = panic::catch_unwind(AssertUnwindSafe(|| {
            Orchestrator::builder()
                .workers(2)
                .queue_capacity(2)
                .thread_name(name)
                .scoped(
                    |t: Tracked<'_>| t.n,
                    |pool, _responses| {
                        pool.process((0..100).map(|n| {
                            if n == 37 {
                                panic::panic_any(IntentionalPayload);
                            }
                            Tracked::new(n, &counts)
                        }))
                        .count()
                    },
                )
        }));
        assert!(result.expect_err("propagates").is::<IntentionalPayload>());
        assert_eq!(counts.created(), 37);
        assert_eq!(counts.dropped(), 37);
        assert_no_threads_of(name);
    });
}

// ---------------------------------------------------------------------------------------
// Panics in user code other than the body
// ---------------------------------------------------------------------------------------

/// `init` panicking on first start (one worker of three): a `BuildError`, the body never
/// runs, the workers that did start are gone.
#[test]
fn init_panic_on_first_start_is_a_build_error() {
    quiet_panics();
    within(LIMIT, "scoped", || {
        let ran = AtomicBool::new(false);
        let inits = AtomicUsize::new(0);
        let name = "hsif";
        let err = Orchestrator::builder()
            .workers(3)
            .thread_name(name)
            .scoped_with_state(
                |w| {
                    inits.fetch_add(1, Ordering::SeqCst);
                    assert!(w.index() != 1, "{MARKER}: init of worker 1");
                    &ran
                },
                |_: &mut &AtomicBool, x: u8| x,
                |_pool, _responses| ran.store(true, Ordering::SeqCst),
            )
            .unwrap_err();
        assert_eq!(err.kind(), BuildErrorKind::InitPanicked);
        assert!(err.to_string().contains("init of worker 1"), "{err}");
        assert!(!ran.load(Ordering::SeqCst));
        assert_eq!(inits.load(Ordering::SeqCst), 3);
        assert_no_threads_of(name);
    });
}

/// A handler panic whose `init` rebuild then panics too, and every later `init` panics: the
/// one worker dies and cannot be replaced. The graceful shutdown at the body's return gives
/// up after a few attempts: what is queued comes back in `unstarted` as the very borrowed
/// requests, the report is exact, no thread is left.
#[test]
fn init_panicking_on_every_rebuild_hands_back_the_borrowed_queue() {
    quiet_panics();
    within(LIMIT, "scoped", || {
        let items: Vec<String> = (0..10).map(|i| format!("item-{i}")).collect();
        let poisoned = AtomicBool::new(false);
        let name = "hsrb";
        let ((), report) = Orchestrator::builder()
            .workers(1)
            .queue_capacity(16)
            .thread_name(name)
            .scoped_with_state(
                |_| {
                    assert!(!poisoned.load(Ordering::SeqCst), "{MARKER}: init poisoned");
                },
                |_: &mut (), s: &String| {
                    if s == "item-0" {
                        poisoned.store(true, Ordering::SeqCst);
                        panic!("{MARKER}: handler poisons init");
                    }
                    s.len()
                },
                |pool, _responses| {
                    for s in &items {
                        pool.submit(s).unwrap();
                    }
                },
            )
            .unwrap();
        exact(&report);
        assert_eq!((report.submitted, report.failed), (10, 1), "{report:?}");
        assert_eq!(report.unstarted.len(), 9);
        for (_, s) in &report.unstarted {
            assert!(
                items.iter().any(|i| std::ptr::eq(i, *s)),
                "{s} is not one of the borrowed items"
            );
        }
        assert_no_threads_of(name);
    });
}

/// Requests whose `Drop` panics on every path a worker drops them (an expired deadline) and
/// responses whose `Drop` panics on every path a worker drops them (undelivered: the
/// receiver is gone; a `call_timeout` that expired): no worker dies, nothing aborts.
#[test]
fn drop_bombs_in_requests_and_responses_are_contained() {
    quiet_panics();
    within(LIMIT, "scoped", || {
        let reqs = Counts::default();
        let resps = Counts::default();
        let name = "hsdb";
        let (events, report) = Orchestrator::builder()
            .workers(1)
            .queue_capacity(16)
            .thread_name(name)
            .scoped(
                |t: Tracked<'_>| {
                    if t.n == 0 {
                        thread::sleep(Duration::from_millis(100));
                    }
                    let n = t.n;
                    std::mem::forget(t); // no bomb in the handler itself
                    reqs.dropped.fetch_add(1, Ordering::SeqCst);
                    Tracked::bomb(n, &resps)
                },
                |pool, responses| {
                    let events = pool.subscribe();
                    // Blocks the worker for 100 ms.
                    pool.submit(Tracked::new(0, &reqs)).unwrap();
                    // Taken after its deadline: dropped by the worker unrun.
                    for n in 1..4 {
                        pool.submit_with_deadline(Tracked::bomb(n, &reqs), Instant::now())
                            .unwrap();
                    }
                    // Gives up before the worker is free: taken after its deadline, its
                    // `DeadlineExceeded` answer lands nowhere.
                    match pool.call_timeout(Tracked::new(4, &reqs), Duration::from_millis(1)) {
                        Err(CallTimeoutError::Expired) => {}
                        other => panic!("expected Expired, got {other:?}"),
                    }
                    drop(responses); // every stream answer is now undelivered
                    for n in 5..8 {
                        pool.submit(Tracked::new(n, &reqs)).unwrap();
                    }
                    // And a call that works, after all of that.
                    let back = pool.call(Tracked::new(8, &reqs)).unwrap();
                    assert_eq!(back.n, 8);
                    std::mem::forget(back);
                    resps.dropped.fetch_add(1, Ordering::SeqCst);
                    events
                },
            )
            .unwrap();
        exact(&report);
        assert_eq!(report.submitted, 9);
        assert_eq!(report.failed, 4, "four deadlines passed: {report:?}");
        assert_eq!(report.completed, 5);
        // 0..=7 had nobody to receive them; only the last call was answered.
        assert_eq!(report.undelivered, 8, "{report:?}");
        assert_eq!(reqs.dropped(), reqs.created());
        assert_eq!(resps.dropped(), resps.created());
        let died: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                MetricsEvent::Worker(w) => Some(w.kind),
                _ => None,
            })
            .filter(|k| matches!(k, WorkerEventKind::Died(_)))
            .collect();
        assert!(died.is_empty(), "a worker died: {died:?}");
        assert_no_threads_of(name);
    });
}

// ---------------------------------------------------------------------------------------
// Extreme settings
// ---------------------------------------------------------------------------------------

/// One worker, queues of one, a rendezvous responses channel read by a scoped consumer, a
/// small stack (twice the minimum: see `min_stack_size_is_enough_for_a_worker`), metrics off, every job timed, a priority burst of one, priorities through
/// every submitting method: everything ends in exactly one place.
#[test]
fn the_tightest_settings_lose_nothing() {
    within(LIMIT, "scoped", || {
        let data: Vec<u64> = (0..300).collect();
        let name = "hst";
        let ((streamed, calls), report) = Orchestrator::builder()
            .workers(1)
            .queue_capacity(1)
            .response_capacity(0)
            .stack_size(2 * MIN_STACK_SIZE)
            .metrics(false)
            .timing_sample(1)
            .priority_burst(1)
            .thread_name(name)
            .scoped(
                |x: &u64| *x * 3,
                |pool, responses| {
                    thread::scope(|s| {
                        let consumer = s.spawn(|| {
                            let mut got = Vec::new();
                            while let Ok(r) = responses.recv_timeout(Duration::from_secs(2)) {
                                got.push(r.outcome.unwrap());
                                if got.len() == 200 {
                                    break;
                                }
                            }
                            got
                        });
                        let mut calls = Vec::new();
                        for (i, x) in data.iter().enumerate() {
                            let p = [Priority::High, Priority::Normal, Priority::Low][i % 3];
                            match i % 3 {
                                0 => calls.push(pool.call_with_priority(x, p).unwrap()),
                                _ => {
                                    pool.submit_with_priority(x, p).unwrap();
                                }
                            }
                        }
                        let ordered: Vec<u64> = pool
                            .process_ordered(&data[..10])
                            .map(|r| r.outcome.unwrap())
                            .collect();
                        assert_eq!(ordered, (0..10).map(|x| x * 3).collect::<Vec<_>>());
                        (consumer.join().unwrap(), calls)
                    })
                },
            )
            .unwrap();
        exact(&report);
        assert_eq!(report.submitted, 310);
        assert_eq!(report.completed, 310);
        assert_eq!(report.undelivered, 0);
        assert_eq!(streamed.len(), 200);
        let mut all: Vec<u64> = streamed.into_iter().chain(calls).collect();
        all.sort_unstable();
        assert_eq!(all, data.iter().map(|x| x * 3).collect::<Vec<_>>());
        assert_no_threads_of(name);
    });
}

/// `MIN_STACK_SIZE` is documented as the size below which "a worker could overflow its stack
/// in this crate's own code". At exactly that size, in the test (debug) profile, every worker
/// overflows its stack when it exits — even an idle one — and the whole process aborts
/// (`ExitGuard::drop` sends a 4.5 KB `ToMetrics` by value through `Sender::send`, whose
/// unoptimized frames take ~16 KB each). A stack overflow aborts the process, so the scenario
/// runs in a child process of this test binary.
#[test]
fn min_stack_size_is_enough_for_a_worker() {
    const CHILD: &str = "HOSTILE_SCOPED_MIN_STACK_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let ((), report) = Orchestrator::builder()
            .workers(1)
            .stack_size(MIN_STACK_SIZE)
            .scoped(
                |x: u64| x,
                |pool, _responses| assert_eq!(pool.call(7), Ok(7)),
            )
            .unwrap();
        assert_eq!(report.completed, 1);
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "min_stack_size_is_enough_for_a_worker",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the child failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An elastic scoped pool (1..=8, keep-alive 5 ms) grows under a flood of borrowed requests,
/// shrinks back when idle, and leaves no thread — grown or retired — behind.
#[test]
fn an_elastic_scoped_pool_grows_shrinks_and_leaves_no_thread() {
    within(LIMIT, "scoped", || {
        let counts = Counts::default();
        let peak = AtomicUsize::new(0);
        let running = AtomicUsize::new(0);
        let name = "hsel";
        let (grown, report) = Orchestrator::builder()
            .elastic(1, 8)
            .keep_alive(Duration::from_millis(5))
            .queue_capacity(64)
            .thread_name(name)
            .scoped(
                |t: Tracked<'_>| {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    thread::sleep(Duration::from_millis(2));
                    running.fetch_sub(1, Ordering::SeqCst);
                    t.n
                },
                |pool, responses| {
                    for n in 0..200 {
                        pool.submit(Tracked::new(n, &counts)).unwrap();
                    }
                    let got = responses.iter().take(200).count();
                    assert_eq!(got, 200);
                    let grown = threads_of(name)
                        .iter()
                        .filter(|n| n.contains("worker"))
                        .count();
                    // Idle now: back to the minimum.
                    eventually("shrunk", || {
                        threads_of(name)
                            .iter()
                            .filter(|n| n.contains("worker"))
                            .count()
                            == 1
                    });
                    for n in 200..210 {
                        pool.submit(Tracked::new(n, &counts)).unwrap();
                    }
                    grown
                },
            )
            .unwrap();
        exact(&report);
        assert_eq!((report.submitted, report.completed), (210, 210));
        assert!(peak.load(Ordering::SeqCst) > 1, "never grew");
        assert!(grown >= 1);
        assert_eq!(counts.dropped(), 210);
        assert_no_threads_of(name);
    });
}

// ---------------------------------------------------------------------------------------
// Borrowed data of every kind
// ---------------------------------------------------------------------------------------

/// A response type that borrows the input and the environment (not `'static`).
#[derive(Debug, PartialEq)]
struct Parsed<'a> {
    key: &'a str,
    value: &'a str,
    label: &'a str,
}

/// Requests `&str`, per-worker state borrowing a `Vec` of the caller, a handler borrowing an
/// `AtomicUsize`, responses borrowing both input and environment; through the stream, `call`,
/// `process_ordered` and the report's `unstarted`-free end.
#[test]
fn borrows_of_every_kind_go_in_and_come_out() {
    within(LIMIT, "scoped", || {
        let text = String::from("a=1\nb=2\nc=3\nd=4\ne=5");
        let labels = vec![String::from("even"), String::from("odd")];
        let seen = AtomicUsize::new(0);
        let ((stream, called, ordered), report) = Orchestrator::builder()
            .workers(3)
            .scoped_with_state(
                |_| labels.as_slice(),
                |labels: &mut &[String], line: &str| {
                    seen.fetch_add(1, Ordering::SeqCst);
                    let (key, value) = line.split_once('=').unwrap();
                    let parity = value.parse::<usize>().unwrap() % 2;
                    Parsed {
                        key,
                        value,
                        label: labels[parity].as_str(),
                    }
                },
                |pool, responses| {
                    for line in text.lines().take(2) {
                        pool.submit(line).unwrap();
                    }
                    let called = pool.call(text.lines().nth(2).unwrap()).unwrap();
                    let ordered: Vec<Parsed<'_>> = pool
                        .process_ordered(text.lines().skip(3))
                        .map(|r| r.outcome.unwrap())
                        .collect();
                    let mut stream: Vec<Parsed<'_>> = common::recv_n(&responses, 2)
                        .into_iter()
                        .map(|r| r.outcome.unwrap())
                        .collect();
                    stream.sort_by_key(|p| p.key);
                    (stream, called, ordered)
                },
            )
            .unwrap();
        // Everything out of the pool still borrows `text` and `labels`.
        assert_eq!(
            stream,
            [
                Parsed {
                    key: "a",
                    value: "1",
                    label: "odd"
                },
                Parsed {
                    key: "b",
                    value: "2",
                    label: "even"
                }
            ]
        );
        assert!(std::ptr::eq(called.key, &text[8..9]));
        assert!(std::ptr::eq(called.label, labels[1].as_str()));
        assert_eq!(
            ordered.iter().map(|p| p.key).collect::<Vec<_>>(),
            ["d", "e"]
        );
        assert_eq!(seen.load(Ordering::SeqCst), 5);
        assert_eq!(report.completed, 5);
    });
}

/// The feeding thread uses the pool from inside `process`'s input iterator (a `call` per
/// input) and from inside the consumer of another `process` (a nested `process_ordered`):
/// the windows never deadlock, every answer is right.
#[test]
fn the_pool_used_from_inside_process_iterators() {
    within(LIMIT, "scoped", || {
        let data: Vec<u64> = (0..60).collect();
        let (sum, report) = Orchestrator::builder()
            .workers(2)
            .queue_capacity(1)
            .scoped(
                |x: u64| x + 1,
                |pool, _responses| {
                    pool.process(data.iter().map(|x| pool.call(*x).unwrap()))
                        .map(|r| {
                            let y = r.outcome.unwrap();
                            pool.process_ordered([y, y])
                                .map(|r| r.outcome.unwrap())
                                .sum::<u64>()
                        })
                        .sum::<u64>()
                },
            )
            .unwrap();
        // x -> call: x+1 -> process: x+2 -> nested twice: 2(x+3)
        assert_eq!(sum, data.iter().map(|x| 2 * (x + 3)).sum::<u64>());
        assert_eq!(report.completed, 60 * 4);
        exact(&report);
    });
}

// ---------------------------------------------------------------------------------------
// The invariant from many producers
// ---------------------------------------------------------------------------------------

/// How one producer's request ended (besides the stream responses, counted at the end).
#[derive(Default)]
struct Tally {
    stream: Vec<RequestId>,
    refused: u64,
    call_ok: u64,
    call_failed: u64,
    call_expired: u64,
}

/// Many scoped producers sharing `&Scoped` with every submit kind, random handler panics,
/// random deadlines: every accepted stream request has exactly one response, every call one
/// answer, every refusal hands back the very borrowed request, and the report adds up.
#[test]
fn every_submit_kind_from_many_scoped_producers_ends_in_exactly_one_place() {
    quiet_panics();
    within(LIMIT, "scoped", || {
        let items: Vec<u64> = (0..1_600).collect();
        let name = "hsinv";
        let ((tallies, responses), report) = Orchestrator::builder()
            .workers(3)
            .queue_capacity(2)
            .thread_name(name)
            .scoped(
                |x: &u64| {
                    assert!(!x.is_multiple_of(13), "{MARKER}: handler {x}");
                    if x.is_multiple_of(7) {
                        thread::sleep(Duration::from_micros(200));
                    }
                    *x + 1
                },
                |pool, responses| {
                    let tallies: Vec<Tally> = thread::scope(|s| {
                        let producers: Vec<_> = items
                            .chunks(400)
                            .enumerate()
                            .map(|(p, chunk)| {
                                s.spawn(move || {
                                    let mut rng = Rng::new(p as u64 + 1);
                                    let mut t = Tally::default();
                                    for x in chunk {
                                        let same = |back: &u64| assert!(std::ptr::eq(back, x));
                                        match rng.below(8) {
                                            0 => t.stream.push(pool.submit(x).unwrap()),
                                            1 => match pool.try_submit(x) {
                                                Ok(id) => t.stream.push(id),
                                                Err(TrySubmitError::Full(back)) => {
                                                    same(back);
                                                    t.refused += 1;
                                                }
                                                Err(e) => panic!("{e:?}"),
                                            },
                                            2 => {
                                                let d = Duration::from_micros(rng.below(300));
                                                match pool.submit_timeout(x, d) {
                                                    Ok(id) => t.stream.push(id),
                                                    Err(SubmitTimeoutError::Timeout(back)) => {
                                                        same(back);
                                                        t.refused += 1;
                                                    }
                                                    Err(e) => panic!("{e:?}"),
                                                }
                                            }
                                            3 => {
                                                let at = Instant::now()
                                                    + Duration::from_micros(rng.below(500));
                                                t.stream.push(
                                                    pool.submit_with_deadline(x, at).unwrap(),
                                                );
                                            }
                                            4 => {
                                                let p = [Priority::High, Priority::Low]
                                                    [rng.below(2) as usize];
                                                t.stream
                                                    .push(pool.submit_with_priority(x, p).unwrap());
                                            }
                                            5 | 6 => {
                                                let r = if rng.chance(50) {
                                                    pool.call(x)
                                                } else {
                                                    pool.call_with_priority(x, Priority::High)
                                                };
                                                match r {
                                                    Ok(v) => {
                                                        assert_eq!(v, x + 1);
                                                        t.call_ok += 1;
                                                    }
                                                    Err(CallError::Failed(JobError::Panicked(
                                                        _,
                                                    ))) => {
                                                        assert_eq!(x % 13, 0);
                                                        t.call_failed += 1;
                                                    }
                                                    Err(e) => panic!("{e:?}"),
                                                }
                                            }
                                            _ => {
                                                let d = Duration::from_micros(rng.below(400));
                                                match pool.call_timeout(x, d) {
                                                    Ok(v) => {
                                                        assert_eq!(v, x + 1);
                                                        t.call_ok += 1;
                                                    }
                                                    Err(CallTimeoutError::Failed(_)) => {
                                                        t.call_failed += 1;
                                                    }
                                                    Err(CallTimeoutError::Expired) => {
                                                        t.call_expired += 1;
                                                    }
                                                    Err(CallTimeoutError::Timeout(back)) => {
                                                        same(back);
                                                        t.refused += 1;
                                                    }
                                                    Err(e) => panic!("{e:?}"),
                                                }
                                            }
                                        }
                                    }
                                    t
                                })
                            })
                            .collect();
                        producers.into_iter().map(|h| h.join().unwrap()).collect()
                    });
                    (tallies, responses)
                },
            )
            .unwrap();
        exact(&report);
        assert!(report.unstarted.is_empty());
        assert_eq!(report.cancelled, 0);
        let stream: Vec<RequestId> = tallies.iter().flat_map(|t| t.stream.clone()).collect();
        let refused: u64 = tallies.iter().map(|t| t.refused).sum();
        let calls: u64 = tallies
            .iter()
            .map(|t| t.call_ok + t.call_failed + t.call_expired)
            .sum();
        let expired: u64 = tallies.iter().map(|t| t.call_expired).sum();
        assert_eq!(refused + stream.len() as u64 + calls, items.len() as u64);
        assert_eq!(report.rejected, refused, "{report:?}");
        assert_eq!(report.submitted, stream.len() as u64 + calls, "{report:?}");
        // Each accepted stream request: exactly one response, with its own id.
        let got: Vec<RequestId> = responses.try_iter().map(|r| r.id).collect();
        assert!(matches!(
            responses.try_recv(),
            Err(TryRecvError::Disconnected)
        ));
        assert_eq!(
            got.len(),
            stream.len(),
            "responses vs accepted stream requests"
        );
        assert_eq!(
            got.iter().collect::<HashSet<_>>(),
            stream.iter().collect::<HashSet<_>>()
        );
        assert!(report.undelivered <= expired, "{report:?}");
        assert_no_threads_of(name);
    });
}

// ---------------------------------------------------------------------------------------
// Metrics and subscriptions inside the body
// ---------------------------------------------------------------------------------------

/// A stalled subscriber (capacity 1, never read, kept past the pool) is evicted and does not
/// hold the shutdown; a kept subscription's last event is the `Shutdown` summary, equal to
/// the report; a subscription dropped unread is forgotten.
#[test]
fn a_stalled_subscriber_is_evicted_and_a_kept_one_ends_with_the_report() {
    within(LIMIT, "scoped", || {
        let words: Vec<String> = (0..200).map(|i| format!("w{i}")).collect();
        let name = "hss";
        let ((stalled, kept), report) = Orchestrator::builder()
            .workers(2)
            .metrics_interval(Duration::from_millis(1))
            .thread_name(name)
            .scoped(
                |w: &String| {
                    thread::sleep(Duration::from_micros(20));
                    w.len()
                },
                |pool, _responses| {
                    let stalled = pool.subscribe_with_capacity(1);
                    let kept = pool.subscribe_with_capacity(1 << 16);
                    let dropped = pool.subscribe_with_capacity(1);
                    drop(dropped);
                    let total: usize = pool.process(&words).map(|r| r.outcome.unwrap()).sum();
                    assert!(total > 0);
                    eventually("evicted", || pool.metrics().evicted_subscribers >= 1);
                    (stalled, kept)
                },
            )
            .unwrap();
        // The stalled one got at most its buffer (plus the reserved slot), then the end.
        let stalled: Vec<_> = stalled.try_iter().collect();
        assert!(stalled.len() <= 2, "{}", stalled.len());
        assert!(
            !stalled
                .iter()
                .any(|e| matches!(e, MetricsEvent::Shutdown(_))),
            "an evicted subscriber got the summary"
        );
        let kept: Vec<_> = kept.try_iter().collect();
        match kept.last() {
            Some(MetricsEvent::Shutdown(summary)) => assert_summary_is_report(summary, &report),
            other => panic!("last event {other:?}"),
        }
        // Consecutive sequence numbers: nothing was skipped for the kept subscriber.
        for pair in kept.windows(2) {
            assert_eq!(pair[1].seq(), pair[0].seq() + 1);
        }
        assert_eq!(report.completed, 200);
        assert_no_threads_of(name);
    });
}

/// With metrics off, `metrics()` and `subscribe` still work inside the body, and the
/// `Shutdown` summary still equals the report (with handler panics counted).
#[test]
fn metrics_off_still_ends_with_an_exact_summary() {
    quiet_panics();
    within(LIMIT, "scoped", || {
        let data: Vec<u32> = (0..50).collect();
        let (events, report) = Orchestrator::builder()
            .workers(2)
            .metrics(false)
            .scoped(
                |x: &u32| {
                    assert!(*x % 10 != 3, "{MARKER}: {x}");
                    *x
                },
                |pool, _responses| {
                    let events = pool.subscribe();
                    let ok = pool.process(&data).filter(|r| r.outcome.is_ok()).count();
                    assert_eq!(ok, 45);
                    // Documented: with metrics off, counts show only at the end.
                    assert_eq!(pool.metrics().completed, 0);
                    events
                },
            )
            .unwrap();
        assert_eq!((report.completed, report.failed), (45, 5));
        match events.iter().last() {
            Some(MetricsEvent::Shutdown(summary)) => assert_summary_is_report(&summary, &report),
            other => panic!("last event {other:?}"),
        }
    });
}
