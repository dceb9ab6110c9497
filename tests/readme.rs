//! The README's quick start, verbatim, so the first code a user copies keeps working.

use channel_orchestrator::{Distribution, MetricsEvent, Orchestrator};
use std::time::Duration;

#[test]
fn readme_quick_start() -> Result<(), Box<dyn std::error::Error>> {
    let (orch, responses) = Orchestrator::builder()
        .workers(4) // default: num_cpus::get()
        .queue_capacity(1024) // back-pressure: submit blocks beyond this
        .distribution(Distribution::Shared) // or RoundRobin, or Distribution::by_key(|r| ...)
        .thread_name("analyzer") // "analyzer-worker-0", "analyzer-supervisor", ...
        .metrics_interval(Duration::from_millis(100))
        .build(|text: String| text.split_whitespace().count())?;

    let events = orch.subscribe(); // a snapshot every interval, worker events
    let id = orch.submit("hello orchestrated world".to_string()).unwrap();
    let response = responses.recv().unwrap(); // Response { id, worker, outcome, .. }
    assert_eq!((response.id, response.outcome), (id, Ok(3)));

    assert_eq!(orch.call("one two".to_string()), Ok(2)); // answered on its own route

    let total: usize = orch
        .process_ordered(["a b", "c d e"].map(String::from)) // feed and read from one thread
        .map(|r| r.outcome.unwrap())
        .sum();
    assert_eq!(total, 5);

    let report = orch.shutdown(); // drain, join, exact totals
    assert_eq!(report.completed, 4);
    if let Some(MetricsEvent::Shutdown(summary)) = events.iter().last() {
        println!("{summary:?}"); // the same totals, last on the stream
        assert_eq!(summary.completed, report.completed);
    }
    Ok(())
}
