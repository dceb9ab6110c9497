//! One shape for every handle: what a new user tries first works the same way on an
//! `Orchestrator`, a `Submitter`, a `Pipeline` and a `PipelineSubmitter`.

mod common;

use std::io;
use std::time::{Duration, Instant};

use channel_orchestrator::{
    BuildErrorKind, Builder, CallError, CallTimeoutError, JobError, MetricsEvent, Orchestrator,
    Pipeline,
};
use common::{WAIT, quiet_panics};

#[test]
fn a_type_alias_and_builder_new_both_build() {
    type Pool = Orchestrator<String, usize>;
    let (pool, _r) = Pool::builder()
        .workers(1)
        .build(|s: String| s.len())
        .unwrap();
    assert_eq!(pool.call("abc".into()), Ok(3));
    let (pool, _r): (Pool, _) = Builder::new()
        .workers(1)
        .build(|s: String| s.len())
        .unwrap();
    assert_eq!(pool.call("abcd".into()), Ok(4));
    let (pool, _r) = Builder::default().workers(1).build(|x: u8| x).unwrap();
    assert_eq!(pool.call(7), Ok(7));
    // The plain form keeps inferring everything from the handler.
    let (orch, _r) = Orchestrator::builder()
        .workers(1)
        .build(|x: u64| x + 1)
        .unwrap();
    assert_eq!(orch.call(1), Ok(2));
}

#[test]
fn build_errors_have_a_kind_a_program_can_match() {
    let kind = |b: Result<_, channel_orchestrator::BuildError>| b.map(|_| ()).unwrap_err().kind();
    assert_eq!(
        kind(Orchestrator::builder().workers(0).build(|x: u8| x)),
        BuildErrorKind::ZeroWorkers
    );
    assert_eq!(
        kind(Orchestrator::builder().queue_capacity(0).build(|x: u8| x)),
        BuildErrorKind::ZeroQueueCapacity
    );
    assert_eq!(
        kind(Orchestrator::builder().thread_name("").build(|x: u8| x)),
        BuildErrorKind::EmptyThreadName
    );
    assert_eq!(
        kind(Orchestrator::builder().stack_size(1).build(|x: u8| x)),
        BuildErrorKind::StackTooSmall
    );
    assert_eq!(
        kind(Orchestrator::builder().stack_size(1 << 50).build(|x: u8| x)),
        BuildErrorKind::Spawn
    );
    quiet_panics();
    let e = Orchestrator::builder()
        .workers(1)
        .build_with_state(
            |_| panic!("{}: no state", common::MARKER),
            |_: &mut (), x: u8| x,
        )
        .unwrap_err();
    assert_eq!(e.kind(), BuildErrorKind::InitPanicked);
    let e = Pipeline::builder().stage(0, |x: u8| x).build().unwrap_err();
    assert_eq!(e.kind(), BuildErrorKind::ZeroWorkers);
}

#[test]
fn a_failed_call_prints_once_as_failed() {
    quiet_panics();
    let (orch, _r) = Orchestrator::builder()
        .workers(1)
        .build(|x: u8| {
            assert!(x != 0, "{}: zero", common::MARKER);
            x
        })
        .unwrap();
    let e = orch.call(0).unwrap_err();
    let debug = format!("{e:?}");
    assert!(debug.starts_with("Failed(Panicked("), "{debug}");
    assert!(matches!(e, CallError::Failed(JobError::Panicked(_))));
}

#[test]
fn non_string_panic_payloads_say_their_type_and_value() {
    quiet_panics();
    let (orch, _r) = Orchestrator::builder()
        .workers(1)
        .build(|x: u8| {
            match x {
                0 => std::panic::panic_any(42u32),
                1 => std::panic::panic_any(io::Error::other("disk on fire")),
                2 => std::panic::panic_any(common::IntentionalPayload),
                _ => {}
            }
            x
        })
        .unwrap();
    let message = |x| match orch.call(x) {
        Err(CallError::Failed(JobError::Panicked(m))) => m,
        other => panic!("expected a panic, got {other:?}"),
    };
    assert_eq!(message(0), "panic payload of type u32: 42");
    assert_eq!(
        message(1),
        "panic payload of type std::io::Error: disk on fire"
    );
    assert!(message(2).contains("not printable"));
}

#[test]
fn submitter_has_deadlines_and_timeouts_like_the_orchestrator() {
    let (orch, responses) = Orchestrator::builder()
        .workers(1)
        .queue_capacity(1)
        .build(|ms: u64| {
            std::thread::sleep(Duration::from_millis(ms));
            ms
        })
        .unwrap();
    let sub = orch.submitter();
    let past = Instant::now() - Duration::from_millis(1);
    sub.submit_with_deadline(5, past).unwrap();
    assert_eq!(
        responses.recv_timeout(WAIT).unwrap().outcome,
        Err(JobError::DeadlineExceeded)
    );
    assert_eq!(sub.call_timeout(1, WAIT), Ok(1));
    assert_eq!(orch.call_timeout(2, WAIT), Ok(2));
    // Accepted but not answered in time.
    assert!(matches!(
        sub.call_timeout(300, Duration::from_millis(20)),
        Err(CallTimeoutError::Expired)
    ));
    // No room in time: the request comes back. The worker runs 300 ms, the queue holds one.
    sub.submit(100).unwrap();
    match sub.call_timeout(9, Duration::from_millis(20)) {
        Err(CallTimeoutError::Timeout(req)) => assert_eq!(req, 9),
        other => panic!("expected Timeout(9), got {other:?}"),
    }
    let report = orch.shutdown();
    // The expired call ran and its answer found nobody.
    assert!(report.undelivered >= 1, "{report:?}");
    assert!(matches!(
        sub.call_timeout(1, WAIT),
        Err(CallTimeoutError::ShutDown(1))
    ));
}

#[test]
fn a_pipeline_has_the_orchestrators_handle_surface() {
    let (p, responses) = Pipeline::builder()
        .queue_capacity(4)
        .stage(2, |line: String| line.split_whitespace().count())
        .stage(1, |n: usize| n * 10)
        .build()
        .unwrap();
    let events = p.subscribe();
    let first_stage = p.subscribe_stage(0).unwrap();
    assert!(p.subscribe_stage(2).is_none());
    let sub = p.submitter();
    let handle = std::thread::spawn(move || sub.call("a b c".to_string()));
    assert_eq!(handle.join().unwrap(), Ok(30));
    assert_eq!(p.call_timeout("a b".to_string(), WAIT), Ok(20));
    let past = Instant::now() - Duration::from_millis(1);
    p.submit_with_deadline("late".to_string(), past).unwrap();
    assert_eq!(
        responses.recv_timeout(WAIT).unwrap().outcome,
        Err(JobError::DeadlineExceeded)
    );
    // Borrowed input: no `'static` needed.
    let text = String::from("one\ntwo words\nthree more words");
    let counts: Vec<usize> = p
        .process_ordered(text.lines().map(String::from))
        .map(|r| r.outcome.unwrap())
        .collect();
    assert_eq!(counts, [10, 20, 30]);
    let report = p.shutdown();
    assert_eq!((report.completed, report.failed), (5, 1));
    for stream in [events, first_stage] {
        assert!(matches!(
            stream.iter().last(),
            Some(MetricsEvent::Shutdown(_))
        ));
    }
}
