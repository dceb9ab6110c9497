//! The per-job hot path allocates nothing of ours: a counting global allocator watches a
//! steady stream of `submit`s and `call`s (this binary holds one test, so nothing else
//! allocates meanwhile).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use channel_orchestrator::Orchestrator;

/// Jobs run before measuring (thread-locals, pools and channel slots get allocated), and
/// jobs measured.
const WARMUP: u64 = 2_000;
const MEASURED: u64 = 20_000;
/// Submits in flight at once: below both channel capacities, so nobody blocks.
const BATCH: u64 = 32;
const CAPACITY: usize = 64;
/// Allocations tolerated per measured run: the metrics thread builds a snapshot per tick,
/// which is not per job. One per job would be `MEASURED`.
const TOLERATED: u64 = MEASURED / 100;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to `System` unchanged; the counter has no effect on memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made while `f` runs.
fn allocations_during(f: impl FnOnce()) -> u64 {
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    f();
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

#[test]
fn steady_state_jobs_allocate_nothing_per_job() {
    // The counter sees allocations at all.
    assert!(allocations_during(|| drop(std::hint::black_box(Box::new(1u8)))) >= 1);
    for metrics in [true, false] {
        let (orch, responses) = Orchestrator::builder()
            .workers(2)
            .queue_capacity(CAPACITY)
            .response_capacity(CAPACITY)
            .metrics(metrics)
            .build(|x: u64| x.wrapping_mul(3))
            .unwrap();
        let stream = |jobs: u64| {
            for start in (0..jobs).step_by(BATCH as usize) {
                for x in start..start + BATCH {
                    orch.submit(x).unwrap();
                }
                for _ in 0..BATCH {
                    let r = responses.recv_timeout(Duration::from_secs(10)).unwrap();
                    assert!(r.outcome.is_ok());
                }
            }
        };
        stream(WARMUP);
        let n = allocations_during(|| stream(MEASURED));
        assert!(
            n < TOLERATED,
            "metrics({metrics}): {n} allocations for {MEASURED} submitted jobs"
        );

        let call = |jobs: u64| {
            for x in 0..jobs {
                assert_eq!(orch.call(x), Ok(x.wrapping_mul(3)));
            }
        };
        call(WARMUP);
        let n = allocations_during(|| call(MEASURED));
        assert!(
            n < TOLERATED,
            "metrics({metrics}): {n} allocations for {MEASURED} calls"
        );
        orch.shutdown();
    }
}
