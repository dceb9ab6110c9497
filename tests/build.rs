//! Building: invalid options and spawn or `init` failures are `BuildError`s (never a panic,
//! never a thread left behind), thread names, and the auto traits of the public types.

mod common;

use std::collections::{HashMap, HashSet};
use std::error::Error;
use std::fmt::{Debug, Display};
use std::hash::Hash;
use std::io;
use std::time::Duration;

use channel_orchestrator::{
    BuildError, CallError, DEFAULT_THREAD_NAME, JobError, Orchestrator, RequestId, Response,
    ShutdownReport, SubmitError, SubmitTimeoutError, Submitter, TrySubmitError, WorkerId,
};
use common::*;

/// Workers of the thread-naming test.
const NAMED_WORKERS: usize = 3;
/// Requests sent through it, enough for every worker to run some.
const NAMED_REQUESTS: usize = 200;

fn build_err(result: Result<impl Sized, BuildError>) -> BuildError {
    match result {
        Ok(_) => panic!("build succeeded where it must fail"),
        Err(e) => e,
    }
}

#[test]
fn zero_workers_is_a_build_error() {
    let e = build_err(Orchestrator::builder().workers(0).build(|x: u32| x));
    assert_eq!(
        e.to_string(),
        "invalid configuration: workers must be at least 1"
    );
    assert!(e.source().is_none());
}

#[test]
fn zero_queue_capacity_is_a_build_error() {
    let e = build_err(Orchestrator::builder().queue_capacity(0).build(|x: u32| x));
    assert_eq!(
        e.to_string(),
        "invalid configuration: queue_capacity must be at least 1"
    );
    assert!(e.source().is_none());
}

#[test]
fn zero_metrics_interval_is_a_build_error() {
    let e = build_err(
        Orchestrator::builder()
            .metrics_interval(Duration::ZERO)
            .build(|x: u32| x),
    );
    assert_eq!(
        e.to_string(),
        "invalid configuration: metrics_interval must be greater than zero"
    );
    assert!(e.source().is_none());
}

#[test]
fn empty_thread_name_is_a_build_error() {
    let e = build_err(Orchestrator::builder().thread_name("").build(|x: u32| x));
    assert_eq!(
        e.to_string(),
        "invalid configuration: thread_name must not be empty"
    );
    assert!(e.source().is_none());
}

#[test]
fn invalid_options_are_refused_with_build_with_state_too() {
    let e = build_err(
        Orchestrator::builder()
            .workers(0)
            .build_with_state(|_| 0u8, |_: &mut u8, x: u32| x),
    );
    assert_eq!(
        e.to_string(),
        "invalid configuration: workers must be at least 1"
    );
}

#[test]
fn build_error_messages_follow_the_house_style() {
    for e in [
        build_err(Orchestrator::builder().workers(0).build(|x: u32| x)),
        build_err(Orchestrator::builder().queue_capacity(0).build(|x: u32| x)),
        build_err(
            Orchestrator::builder()
                .metrics_interval(Duration::ZERO)
                .build(|x: u32| x),
        ),
        build_err(Orchestrator::builder().thread_name("").build(|x: u32| x)),
    ] {
        assert_message_style(&e);
        // Debug must work (every public type implements it).
        assert!(!format!("{e:?}").is_empty());
    }
}

#[test]
fn thread_name_with_a_nul_byte_is_a_build_error() {
    let name = "b-nul\0name";
    let built = std::panic::catch_unwind(|| {
        Orchestrator::builder()
            .workers(2)
            .thread_name(name)
            .build(|x: u32| x)
            .map(drop)
    });
    let e = match built {
        Err(_) => panic!("build panicked on a thread name with a NUL byte"),
        Ok(Ok(())) => panic!("build accepted a thread name that no thread can carry"),
        Ok(Err(e)) => e,
    };
    let msg = e.to_string();
    assert!(msg.contains("thread_name"), "unclear message: {msg:?}");
    assert_message_style(&e);
    assert_no_threads_of("b-nul");
}

#[test]
fn unspawnable_thread_is_a_build_error_with_an_io_source() {
    // No machine gives a thread a petabyte of stack: the spawn itself fails.
    let name = "b-stack";
    let e = build_err(
        Orchestrator::builder()
            .workers(2)
            .thread_name(name)
            .stack_size(1 << 50)
            .build(|x: u32| x),
    );
    let msg = e.to_string();
    assert!(
        msg.starts_with("failed to spawn thread \"b-stack-worker-0\": "),
        "unexpected message: {msg:?}"
    );
    assert_message_style(&e);
    let source = e.source().expect("a spawn failure has a source");
    assert!(
        source.downcast_ref::<io::Error>().is_some(),
        "source is not an io::Error: {source:?}"
    );
    assert_no_threads_of(name);
}

#[test]
fn init_panic_at_build_is_a_build_error_and_no_thread_is_left() {
    quiet_panics();
    let name = "b-init";
    let e = build_err(
        Orchestrator::builder()
            .workers(4)
            .thread_name(name)
            .build_with_state(
                |w: WorkerId| {
                    if w.index() == 2 {
                        panic!("intentional init failure");
                    }
                    w.index()
                },
                |_: &mut usize, x: u32| x,
            ),
    );
    assert_eq!(
        e.to_string(),
        "worker 2 state init panicked: intentional init failure"
    );
    assert_message_style(&e);
    // The three workers whose init succeeded were stopped and joined.
    assert_no_threads_of(name);
}

#[test]
fn init_panic_on_every_worker_is_a_build_error() {
    quiet_panics();
    let name = "b-initall";
    let e = build_err(
        Orchestrator::builder()
            .workers(3)
            .thread_name(name)
            .build_with_state(
                |_: WorkerId| -> u8 { panic!("intentional init failure everywhere") },
                |_: &mut u8, x: u32| x,
            ),
    );
    let msg = e.to_string();
    assert!(
        msg.contains("init panicked") && msg.contains("intentional init failure everywhere"),
        "unexpected message: {msg:?}"
    );
    assert_no_threads_of(name);
}

#[test]
fn worker_threads_are_named_after_the_builder_name() {
    let name = "b-named";
    let (orch, responses) = Orchestrator::builder()
        .workers(NAMED_WORKERS)
        .thread_name(name)
        .build(|_: u32| {
            // Long enough that every worker gets some of the requests.
            std::thread::sleep(Duration::from_micros(200));
            std::thread::current().name().map(str::to_owned)
        })
        .unwrap();
    // The supervisor and metrics threads carry the name too (`/proc` truncates to 15
    // bytes; a new thread names itself once it runs, so give it a moment).
    eventually(
        "a supervisor and a metrics thread named after the builder",
        || {
            let live = threads_of(name);
            live.iter()
                .any(|n| "b-named-supervisor".starts_with(n.as_str()) && n.len() > 8)
                && live.iter().any(|n| n == "b-named-metrics")
        },
    );
    for i in 0..NAMED_REQUESTS {
        orch.submit(i as u32).unwrap();
    }
    let mut seen = HashSet::new();
    for r in recv_n(&responses, NAMED_REQUESTS) {
        let thread = r.outcome.unwrap().expect("worker threads have names");
        assert_eq!(thread, format!("{name}-worker-{}", r.worker.index()));
        seen.insert(r.worker);
    }
    assert!(!seen.is_empty());
    // A call runs on a worker thread too.
    let via_call = orch.call(0).unwrap().unwrap();
    assert!(
        via_call.starts_with("b-named-worker-"),
        "call ran on {via_call:?}"
    );
    drop(orch);
    assert_no_threads_of(name);
}

#[test]
fn default_thread_name_and_worker_count() {
    let (orch, responses) = Orchestrator::builder()
        .build(|_: u32| std::thread::current().name().map(str::to_owned))
        .unwrap();
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(
        orch.metrics().workers.len(),
        cpus,
        "default is one worker per CPU"
    );
    orch.submit(1).unwrap();
    let r = responses.recv_timeout(WAIT).unwrap();
    assert!(r.worker.index() < cpus);
    assert_eq!(
        r.outcome.unwrap().unwrap(),
        format!("{DEFAULT_THREAD_NAME}-worker-{}", r.worker.index())
    );
}

#[test]
fn init_runs_on_its_own_worker_thread_once_per_worker() {
    let name = "b-initon";
    let (seen_tx, seen_rx) = channel_orchestrator::crossbeam_channel::unbounded();
    let (orch, _responses) = Orchestrator::builder()
        .workers(3)
        .thread_name(name)
        .build_with_state(
            move |w: WorkerId| {
                let thread = std::thread::current().name().map(str::to_owned);
                seen_tx.send((w, thread)).unwrap();
            },
            |_: &mut (), x: u32| x,
        )
        .unwrap();
    // `build` returns after every worker's init ran.
    let seen: HashMap<WorkerId, Option<String>> = seen_rx.try_iter().collect();
    assert_eq!(
        seen.len(),
        3,
        "init ran {} times before build returned",
        seen.len()
    );
    for (w, thread) in &seen {
        assert_eq!(
            thread.as_deref(),
            Some(&*format!("{name}-worker-{}", w.index()))
        );
    }
    let report = orch.shutdown();
    assert_eq!(report.completed, 0);
    assert!(
        seen_rx.try_recv().is_err(),
        "init ran again without a panic"
    );
}

#[test]
fn a_small_valid_configuration_builds_and_serves() {
    let (orch, responses) = Orchestrator::builder()
        .workers(1)
        .queue_capacity(1)
        .response_capacity(1)
        .thread_name("b-small")
        .metrics_interval(Duration::from_nanos(1))
        .metrics(false)
        .build(|x: u32| x + 1)
        .unwrap();
    assert_eq!(orch.call(1), Ok(2));
    orch.submit(2).unwrap();
    assert_eq!(responses.recv_timeout(WAIT).unwrap().outcome, Ok(3));
    let report = orch.shutdown();
    assert_eq!((report.completed, report.failed), (2, 0));
    assert_no_threads_of("b-small");
}

fn assert_send_sync<T: Send + Sync>() {}
fn assert_submitter<T: Clone + Send + Sync + 'static>() {}
fn assert_id<T: Copy + Eq + Ord + Hash + Debug + Display + Send + Sync>() {}
fn assert_error<T: Error + Send + Sync + 'static>() {}

/// A request type with no `Debug`, `Clone` or `PartialEq`: nothing may require them.
struct Opaque;

#[test]
fn public_types_have_the_promised_traits() {
    assert_send_sync::<Orchestrator<String, Vec<u8>>>();
    assert_send_sync::<Orchestrator<Opaque, Opaque>>();
    assert_submitter::<Submitter<String, Vec<u8>>>();
    assert_submitter::<Submitter<Opaque, Opaque>>();
    // `Send` is all the contract asks of the request and response types, not `Sync`.
    type SendOnly = std::cell::Cell<u32>;
    assert_send_sync::<Orchestrator<SendOnly, SendOnly>>();
    assert_submitter::<Submitter<SendOnly, SendOnly>>();
    assert_id::<RequestId>();
    assert_id::<WorkerId>();
    assert_error::<BuildError>();
    assert_error::<JobError>();
    assert_error::<SubmitError<Opaque>>();
    assert_error::<TrySubmitError<Opaque>>();
    assert_error::<SubmitTimeoutError<Opaque>>();
    assert_error::<CallError<Opaque>>();
    assert_send_sync::<Response<Opaque>>();
    assert_send_sync::<ShutdownReport<Opaque>>();
}

#[test]
fn debug_never_needs_the_request_to_be_debug() {
    let (orch, _responses) = Orchestrator::builder()
        .workers(1)
        .build(|_: Opaque| Opaque)
        .unwrap();
    let sub = orch.submitter();
    assert!(format!("{orch:?}").contains("Orchestrator"));
    assert!(format!("{sub:?}").contains("Submitter"));
    let report = orch.shutdown();
    assert!(format!("{report:?}").contains("ShutdownReport"));
    let e = sub.submit(Opaque).unwrap_err();
    assert!(format!("{e:?}").contains("ShutDown"));
    let e = sub.try_submit(Opaque).unwrap_err();
    assert!(format!("{e:?}").contains("ShutDown"));
    let e = sub.submit_timeout(Opaque, Duration::ZERO).unwrap_err();
    assert!(format!("{e:?}").contains("ShutDown"));
    let Err(e) = sub.call(Opaque) else {
        panic!("call after shutdown succeeded")
    };
    assert!(format!("{e:?}").contains("ShutDown"));
}

#[test]
fn absurd_sizes_are_build_errors_not_aborts() {
    use channel_orchestrator::{MAX_QUEUE_CAPACITY, MAX_WORKERS};
    let e = Orchestrator::builder()
        .workers(MAX_WORKERS + 1)
        .build(|x: u32| x)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("invalid configuration: workers must be at most {MAX_WORKERS}")
    );
    let e = Orchestrator::builder()
        .workers(1)
        .queue_capacity(usize::MAX)
        .build(|x: u32| x)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("invalid configuration: queue_capacity must be at most {MAX_QUEUE_CAPACITY}")
    );
}
