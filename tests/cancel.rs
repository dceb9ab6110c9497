//! Cooperative cancellation (`JobContext::is_cancelled`) and request deadlines.

use std::time::{Duration, Instant};

use channel_orchestrator::{JobContext, JobError, Orchestrator};

#[test]
fn long_jobs_see_cancellation_on_shutdown_now() {
    let (started_tx, started) = crossbeam_channel::unbounded();
    let (orch, responses) = Orchestrator::builder()
        .workers(2)
        .build_with_context(
            |_| (),
            move |_: &mut (), ctx: &JobContext, _: ()| {
                started_tx.send(ctx.worker()).unwrap();
                let t = Instant::now();
                while !ctx.is_cancelled() {
                    assert!(t.elapsed() < Duration::from_secs(10), "never cancelled");
                    std::thread::sleep(Duration::from_millis(1));
                }
                t.elapsed()
            },
        )
        .unwrap();
    for _ in 0..5 {
        orch.submit(()).unwrap();
    }
    for _ in 0..2 {
        started.recv_timeout(Duration::from_secs(5)).unwrap();
    }
    let t = Instant::now();
    let report = orch.shutdown_now();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "shutdown_now took {:?}",
        t.elapsed()
    );
    assert_eq!(report.completed, 2);
    assert_eq!(report.unstarted.len(), 3);
    assert_eq!(responses.iter().count(), 2);
}

#[test]
fn cancellation_turns_on_when_shutdown_timeout_expires() {
    let (orch, _responses) = Orchestrator::builder()
        .workers(1)
        .build_with_context(
            |_| (),
            |_: &mut (), ctx: &JobContext, _: ()| {
                let t = Instant::now();
                while !ctx.is_cancelled() && t.elapsed() < Duration::from_secs(10) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                assert!(ctx.is_cancelled());
            },
        )
        .unwrap();
    orch.submit(()).unwrap();
    let t = Instant::now();
    let report = orch.shutdown_timeout(Duration::from_millis(50));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(50) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(report.completed, 1);
}

#[test]
fn expired_deadlines_are_answered_without_running() {
    let (gate_tx, gate) = crossbeam_channel::bounded::<()>(0);
    let (orch, responses) = Orchestrator::builder()
        .workers(1)
        .build_with_context(
            |_| (),
            move |_: &mut (), ctx: &JobContext, n: u32| {
                if n == 0 {
                    gate.recv().unwrap();
                }
                (n, ctx.deadline().is_some())
            },
        )
        .unwrap();
    orch.submit(0).unwrap(); // holds the only worker
    let soon = Instant::now() + Duration::from_millis(20);
    let late = orch.submit_with_deadline(1, soon).unwrap();
    let later = Instant::now() + Duration::from_secs(60);
    let fine = orch.submit_with_deadline(2, later).unwrap();
    std::thread::sleep(Duration::from_millis(40));
    gate_tx.send(()).unwrap();
    let got: Vec<_> = responses.iter().take(3).collect();
    assert_eq!(got[0].outcome, Ok((0, false)));
    assert_eq!(got[1].id, late);
    assert_eq!(got[1].outcome, Err(JobError::DeadlineExceeded));
    assert_eq!(got[2].id, fine);
    assert_eq!(got[2].outcome, Ok((2, true)));
    let report = orch.shutdown();
    assert_eq!((report.completed, report.failed), (2, 1));
    assert_eq!(
        JobError::DeadlineExceeded.to_string(),
        "deadline passed before the request started"
    );
}
