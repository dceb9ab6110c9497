//! The mutex baseline: the original design, `Mutex<VecDeque>` + `Condvar` queues and a locked metrics struct.
//!
//! This is what the crate replaces, reproduced so that it can be measured beside it. It lives
//! here, shared by the benches and `examples/demo.rs`, and never in `src/` (which holds no lock).
//!
//! The shape of the original:
//!
//! - requests: `Arc<Mutex<VecDeque<Req>>>` with a `Condvar` the workers wait on;
//! - per job, each worker locks a shared `Metrics` struct to count it and add its handler
//!   time (two clock reads per job);
//! - results: pushed into a mutex-guarded `VecDeque` with a `Condvar` the consumer waits on;
//! - a handler panic is caught so that the worker survives.
//!
//! One deliberate change: the original queues were unbounded. Here both hold at most
//! `capacity` items (a `not_full` condvar per queue), the same bound every other
//! implementation in the benches gets, so that memory stays flat over millions of jobs and
//! all of them see the same back-pressure. Waiting only happens where the others wait too.
#![allow(dead_code)]
// shared by several bench and example targets; each uses a part
// The point of this file is to measure locks; the workspace lint forbids them for src/.
#![allow(clippy::disallowed_types)]

use std::collections::VecDeque;
use std::panic::{self, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The per-job statistics, behind one mutex that every worker takes once per job.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    pub completed: u64,
    pub failed: u64,
    pub busy: Duration,
    pub max_latency: Duration,
}

/// A bounded FIFO guarded by a mutex, with condvars for "not empty" and "not full".
struct Queue<T> {
    state: Mutex<QueueState<T>>,
    not_empty: Condvar,
    not_full: Condvar,
    capacity: usize,
}

struct QueueState<T> {
    items: VecDeque<T>,
    closed: bool,
    /// Pushers waiting for space. The bound is our addition, so it must cost nothing when
    /// nobody waits: `Condvar::notify_one` is a futex syscall even without waiters.
    waiting_for_space: usize,
}

impl<T> Queue<T> {
    fn new(capacity: usize) -> Self {
        Queue {
            state: Mutex::new(QueueState {
                items: VecDeque::with_capacity(capacity),
                closed: false,
                waiting_for_space: 0,
            }),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pushes, waiting while full; gives the item back if the queue is closed.
    fn push(&self, item: T) -> Result<(), T> {
        let mut st = self.lock();
        while st.items.len() >= self.capacity && !st.closed {
            st.waiting_for_space += 1;
            st = self.not_full.wait(st).unwrap_or_else(|e| e.into_inner());
            st.waiting_for_space -= 1;
        }
        if st.closed {
            return Err(item);
        }
        st.items.push_back(item);
        drop(st);
        // As the original: wake one waiter on every push (one futex syscall per push).
        self.not_empty.notify_one();
        Ok(())
    }

    /// Pops, waiting while empty; `None` once closed and empty.
    fn pop(&self) -> Option<T> {
        let mut st = self.lock();
        loop {
            if let Some(item) = st.items.pop_front() {
                let wake = st.waiting_for_space > 0;
                drop(st);
                if wake {
                    self.not_full.notify_one();
                }
                return Some(item);
            }
            if st.closed {
                return None;
            }
            st = self.not_empty.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_all();
        self.not_full.notify_all();
    }
}

struct Inner<Req, Resp> {
    requests: Queue<Req>,
    results: Queue<Result<Resp, String>>,
    metrics: Mutex<Metrics>,
}

/// The old worker pool: `submit` pushes into the locked request queue, workers push results
/// into the locked result queue, `recv` pops them.
pub struct MutexPool<Req, Resp> {
    inner: Arc<Inner<Req, Resp>>,
    workers: Vec<JoinHandle<()>>,
}

impl<Req: Send + 'static, Resp: Send + 'static> MutexPool<Req, Resp> {
    /// Starts `workers` threads running `handler`; both queues hold at most `capacity` items.
    pub fn new<F>(workers: usize, capacity: usize, handler: F) -> Self
    where
        F: Fn(Req) -> Resp + Send + Sync + 'static,
    {
        let inner = Arc::new(Inner {
            requests: Queue::new(capacity),
            results: Queue::new(capacity),
            metrics: Mutex::new(Metrics::default()),
        });
        let handler = Arc::new(handler);
        let workers = (0..workers)
            .map(|i| {
                let inner = Arc::clone(&inner);
                let handler = Arc::clone(&handler);
                thread::Builder::new()
                    .name(format!("mutex-worker-{i}"))
                    .spawn(move || {
                        while let Some(req) = inner.requests.pop() {
                            let start = Instant::now();
                            let result = panic::catch_unwind(AssertUnwindSafe(|| handler(req)));
                            let took = start.elapsed();
                            {
                                let mut m = inner.metrics.lock().unwrap_or_else(|e| e.into_inner());
                                match result {
                                    Ok(_) => m.completed += 1,
                                    Err(_) => m.failed += 1,
                                }
                                m.busy += took;
                                m.max_latency = m.max_latency.max(took);
                            }
                            let result = result.map_err(|_| String::from("handler panicked"));
                            if inner.results.push(result).is_err() {
                                break;
                            }
                        }
                    })
                    .expect("spawn a baseline worker")
            })
            .collect();
        MutexPool { inner, workers }
    }

    /// Queues a request, waiting while the request queue is full.
    pub fn submit(&self, req: Req) -> Result<(), Req> {
        self.inner.requests.push(req)
    }

    /// The next result, waiting while there is none.
    pub fn recv(&self) -> Option<Result<Resp, String>> {
        self.inner.results.pop()
    }

    /// A copy of the metrics.
    pub fn metrics(&self) -> Metrics {
        self.inner
            .metrics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl<Req, Resp> Drop for MutexPool<Req, Resp> {
    /// Closes intake, lets the workers drain what is queued, and joins them. Results nobody
    /// read are dropped (the result queue is closed once the workers are gone).
    fn drop(&mut self) {
        self.inner.requests.close();
        // A worker blocked on a full result queue must not hang the drop.
        self.inner.results.close();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
