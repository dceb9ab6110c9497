//! Every implementation under test, started the same way, behind two shapes of work:
//! a [`Stream`] (one producer thread submits, the calling thread receives) and a [`Caller`]
//! (one request in flight at a time: the round trip).
//!
//! All of them get the same bound: [`CAPACITY`] queued requests and [`CAPACITY`] buffered
//! responses, except where a peer has no bound to set (the `threadpool` and rayon queues).
#![allow(dead_code)] // shared by several bench and example targets; each uses a part

use std::hint::black_box;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use channel_orchestrator::crossbeam_channel::{self as channel, Receiver, Sender};
use channel_orchestrator::{Distribution, MetricsEvent, Orchestrator, Response};

use super::baseline::MutexPool;
use super::workload::Workload;

/// The bound on queued requests and on buffered responses, for every implementation.
pub const CAPACITY: usize = 1024;

/// The implementations, in the order the benches run them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    /// This crate, `Distribution::Shared`, `.metrics(false)`.
    OrchShared,
    /// This crate, `Distribution::Shared`, metrics on (the default).
    OrchSharedMetrics,
    /// This crate, `Distribution::RoundRobin`, `.metrics(false)`.
    OrchRr,
    /// This crate, `Distribution::RoundRobin`, metrics on.
    OrchRrMetrics,
    /// The old design: mutex + condvar queues, locked metrics (see `baseline.rs`).
    Mutex,
    /// `threadpool::ThreadPool::execute`, results on a bounded crossbeam channel.
    Threadpool,
    /// `rayon::ThreadPool::spawn`, results on a bounded crossbeam channel.
    Rayon,
    /// Raw crossbeam: one bounded MPMC request channel, W workers, one bounded response channel.
    Floor,
}

impl Impl {
    pub const ALL: [Impl; 8] = [
        Impl::OrchShared,
        Impl::OrchSharedMetrics,
        Impl::OrchRr,
        Impl::OrchRrMetrics,
        Impl::Mutex,
        Impl::Threadpool,
        Impl::Rayon,
        Impl::Floor,
    ];

    /// The id used in bench names and tables.
    pub fn name(self) -> &'static str {
        match self {
            Impl::OrchShared => "orchestrator-shared",
            Impl::OrchSharedMetrics => "orchestrator-shared-metrics",
            Impl::OrchRr => "orchestrator-rr",
            Impl::OrchRrMetrics => "orchestrator-rr-metrics",
            Impl::Mutex => "mutex-baseline",
            Impl::Threadpool => "threadpool",
            Impl::Rayon => "rayon",
            Impl::Floor => "floor",
        }
    }

    pub fn from_name(name: &str) -> Option<Impl> {
        Impl::ALL.into_iter().find(|i| i.name() == name)
    }

    /// Starts the implementation with `workers` threads for streaming.
    pub fn stream(self, workers: usize, work: Workload) -> Stream {
        match self {
            Impl::OrchShared => orchestrator_stream(workers, work, Distribution::Shared, false),
            Impl::OrchSharedMetrics => {
                orchestrator_stream(workers, work, Distribution::Shared, true)
            }
            Impl::OrchRr => orchestrator_stream(workers, work, Distribution::RoundRobin, false),
            Impl::OrchRrMetrics => {
                orchestrator_stream(workers, work, Distribution::RoundRobin, true)
            }
            Impl::Mutex => mutex_stream(workers, work),
            Impl::Threadpool => threadpool_stream(workers, work),
            Impl::Rayon => rayon_stream(workers, work),
            Impl::Floor => floor_stream(workers, work),
        }
    }

    /// Starts the implementation with `workers` threads for round trips.
    pub fn caller(self, workers: usize, work: Workload) -> Caller {
        match self {
            Impl::OrchShared => orchestrator_caller(workers, work, Distribution::Shared, false),
            Impl::OrchSharedMetrics => {
                orchestrator_caller(workers, work, Distribution::Shared, true)
            }
            Impl::OrchRr => orchestrator_caller(workers, work, Distribution::RoundRobin, false),
            Impl::OrchRrMetrics => {
                orchestrator_caller(workers, work, Distribution::RoundRobin, true)
            }
            Impl::Mutex => {
                let pool = MutexPool::new(workers, CAPACITY, move |x: u64| work.run(x));
                Caller::new(move |x| {
                    pool.submit(x).expect("baseline is running");
                    pool.recv().expect("a result").expect("no panic")
                })
            }
            Impl::Threadpool => {
                let pool = JoinOnDrop(threadpool::ThreadPool::new(workers));
                let (tx, rx) = channel::bounded(CAPACITY);
                Caller::new(move |x| {
                    let tx = tx.clone();
                    pool.0.execute(move || {
                        let _ = tx.send(work.run(x));
                    });
                    rx.recv().expect("a result")
                })
            }
            Impl::Rayon => {
                let pool = rayon_pool(workers);
                let (tx, rx) = channel::bounded(CAPACITY);
                Caller::new(move |x| {
                    let tx = tx.clone();
                    pool.spawn(move || {
                        let _ = tx.send(work.run(x));
                    });
                    rx.recv().expect("a result")
                })
            }
            Impl::Floor => {
                let floor = Floor::start(workers, work);
                Caller::new(move |x| {
                    // Through a reference to the whole, so that the closure owns all of it
                    // (its `Joiner` included) and not just the two fields it uses.
                    let floor = &floor;
                    floor.tx.send(x).expect("floor is running");
                    floor.rx.recv().expect("a result").1
                })
            }
        }
    }
}

/// One producer thread that submits on command, and a consumer run by the calling thread.
pub struct Stream {
    cmd: Option<Sender<u64>>,
    producer: Option<JoinHandle<()>>,
    /// Receives `n` responses; returns a checksum so that nothing is optimised away.
    consume: Box<dyn FnMut(u64) -> u64>,
}

impl Stream {
    /// `produce(i)` submits request `i`; `consume(n)` receives `n` responses.
    pub fn new<P, C>(mut produce: P, consume: C) -> Stream
    where
        P: FnMut(u64) + Send + 'static,
        C: FnMut(u64) -> u64 + 'static,
    {
        let (cmd, orders) = channel::bounded::<u64>(1);
        let producer = thread::Builder::new()
            .name("bench-producer".into())
            .spawn(move || {
                for n in orders {
                    for i in 0..n {
                        produce(i);
                    }
                }
            })
            .expect("spawn the producer");
        Stream {
            cmd: Some(cmd),
            producer: Some(producer),
            consume: Box::new(consume),
        }
    }

    /// Streams `n` jobs through: the time from the order to the producer until the consumer
    /// holds the `n`th response. Only this phase is timed.
    pub fn run(&mut self, n: u64) -> Duration {
        self.run_checked(n).0
    }

    /// As [`run`](Self::run), also returning the checksum of the `n` responses (the
    /// wrapping sum of the results, the same for every implementation).
    pub fn run_checked(&mut self, n: u64) -> (Duration, u64) {
        let start = Instant::now();
        self.cmd
            .as_ref()
            .expect("running")
            .send(n)
            .expect("producer alive");
        let sum = black_box((self.consume)(n));
        (start.elapsed(), sum)
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // The producer owns the submitting side: closing its orders ends it, and with it
        // the intake; then the consumer side (and the workers it joins) can go.
        drop(self.cmd.take());
        if let Some(p) = self.producer.take() {
            let _ = p.join();
        }
    }
}

/// A round trip: submit one request and wait for its answer.
pub struct Caller {
    call: Box<dyn FnMut(u64) -> u64>,
}

impl Caller {
    pub fn new(call: impl FnMut(u64) -> u64 + 'static) -> Caller {
        Caller {
            call: Box::new(call),
        }
    }

    /// One round trip.
    #[inline]
    pub fn call(&mut self, x: u64) -> u64 {
        (self.call)(x)
    }

    /// `n` round trips, timed as a whole.
    pub fn run(&mut self, n: u64) -> Duration {
        let start = Instant::now();
        for i in 0..n {
            black_box(self.call(i));
        }
        start.elapsed()
    }

    /// `n` round trips, each timed: the sorted nanoseconds of every call.
    pub fn sample(&mut self, n: usize) -> Vec<u64> {
        let mut ns = Vec::with_capacity(n);
        for i in 0..n as u64 {
            let start = Instant::now();
            black_box(self.call(i));
            ns.push(start.elapsed().as_nanos() as u64);
        }
        ns.sort_unstable();
        ns
    }
}

/// p50, p99 and mean of sorted samples, in nanoseconds.
pub fn percentiles(sorted: &[u64]) -> (u64, u64, f64) {
    if sorted.is_empty() {
        return (0, 0, 0.0);
    }
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let mean = sorted.iter().map(|&v| v as f64).sum::<f64>() / sorted.len() as f64;
    (at(0.50), at(0.99), mean)
}

fn build_orchestrator(
    workers: usize,
    work: Workload,
    distribution: Distribution,
    metrics: bool,
) -> (Orchestrator<u64, u64>, Receiver<Response<u64>>) {
    Orchestrator::builder()
        .workers(workers)
        .queue_capacity(CAPACITY)
        .response_capacity(CAPACITY)
        .distribution(distribution)
        .metrics(metrics)
        .thread_name("bench")
        .build(move |x: u64| work.run(x))
        .expect("build the orchestrator")
}

fn orchestrator_stream(
    workers: usize,
    work: Workload,
    distribution: Distribution,
    metrics: bool,
) -> Stream {
    let (orch, responses) = build_orchestrator(workers, work, distribution, metrics);
    Stream::new(
        move |i| {
            orch.submit(i).expect("orchestrator is running");
        },
        move |n| {
            let mut sum = 0u64;
            for _ in 0..n {
                let r = responses.recv().expect("a response");
                sum = sum.wrapping_add(r.outcome.expect("no panic"));
            }
            sum
        },
    )
}

fn orchestrator_caller(
    workers: usize,
    work: Workload,
    distribution: Distribution,
    metrics: bool,
) -> Caller {
    let (orch, responses) = build_orchestrator(workers, work, distribution, metrics);
    Caller::new(move |x| {
        let _keep = &responses; // a user who calls usually keeps the stream receiver too
        orch.call(x).expect("orchestrator is running")
    })
}

fn mutex_stream(workers: usize, work: Workload) -> Stream {
    let pool = std::sync::Arc::new(MutexPool::new(workers, CAPACITY, move |x: u64| work.run(x)));
    let results = std::sync::Arc::clone(&pool);
    Stream::new(
        move |i| pool.submit(i).expect("baseline is running"),
        move |n| {
            let mut sum = 0u64;
            for _ in 0..n {
                sum = sum.wrapping_add(results.recv().expect("a result").expect("no panic"));
            }
            sum
        },
    )
}

/// Joins a `threadpool` on drop, so that its threads are gone before the next bench starts.
struct JoinOnDrop(threadpool::ThreadPool);

impl Drop for JoinOnDrop {
    fn drop(&mut self) {
        self.0.join();
    }
}

fn threadpool_stream(workers: usize, work: Workload) -> Stream {
    let pool = JoinOnDrop(threadpool::ThreadPool::new(workers));
    let (tx, rx) = channel::bounded::<(u64, u64)>(CAPACITY);
    Stream::new(
        move |i| {
            // The crate's documented pattern: one sender clone per job.
            let tx = tx.clone();
            pool.0.execute(move || {
                let _ = tx.send((i, work.run(i)));
            });
        },
        move |n| receive_pairs(&rx, n),
    )
}

fn rayon_pool(workers: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(workers)
        .thread_name(|i| format!("rayon-{i}"))
        .build()
        .expect("build the rayon pool")
}

fn rayon_stream(workers: usize, work: Workload) -> Stream {
    let pool = rayon_pool(workers);
    let (tx, rx) = channel::bounded::<(u64, u64)>(CAPACITY);
    Stream::new(
        move |i| {
            let tx = tx.clone();
            pool.spawn(move || {
                let _ = tx.send((i, work.run(i)));
            });
        },
        move |n| receive_pairs(&rx, n),
    )
}

fn receive_pairs(rx: &Receiver<(u64, u64)>, n: u64) -> u64 {
    let mut sum = 0u64;
    for _ in 0..n {
        let (_, v) = rx.recv().expect("a result");
        sum = sum.wrapping_add(v);
    }
    sum
}

/// The floor: the least any pool of this shape can do. No ids of ours, no metrics, no
/// supervision, no panic handling: a request channel, W threads, a response channel.
struct Floor {
    tx: Sender<u64>,
    rx: Receiver<(u64, u64)>,
    workers: Joiner,
}

/// Joins threads on drop; declared after the senders they wait on, so it drops last.
struct Joiner(Vec<JoinHandle<()>>);

impl Drop for Joiner {
    fn drop(&mut self) {
        for h in self.0.drain(..) {
            let _ = h.join();
        }
    }
}

impl Floor {
    fn start(workers: usize, work: Workload) -> Floor {
        let (tx, requests) = channel::bounded::<u64>(CAPACITY);
        let (responses, rx) = channel::bounded::<(u64, u64)>(CAPACITY);
        let workers = (0..workers)
            .map(|i| {
                let (requests, responses) = (requests.clone(), responses.clone());
                thread::Builder::new()
                    .name(format!("floor-{i}"))
                    .spawn(move || {
                        for x in requests {
                            if responses.send((x, work.run(x))).is_err() {
                                break;
                            }
                        }
                    })
                    .expect("spawn a floor worker")
            })
            .collect();
        Floor {
            tx,
            rx,
            workers: Joiner(workers),
        }
    }
}

fn floor_stream(workers: usize, work: Workload) -> Stream {
    let Floor { tx, rx, workers } = Floor::start(workers, work);
    Stream::new(
        move |i| tx.send(i).expect("floor is running"),
        move |n| {
            let _join_last = &workers;
            receive_pairs(&rx, n)
        },
    )
}

/// How the metrics side is set up for one bench.
#[derive(Clone, Copy)]
pub enum MetricsVariant {
    /// `.metrics(false)`: no clock reads, no reports until shutdown.
    Off,
    /// Metrics on, nobody subscribed.
    On,
    /// Metrics on, one subscriber that reads every event.
    OneSubscriber,
    /// Metrics on, one subscriber that never reads (it is evicted once its buffer fills).
    Stalled,
    /// Metrics on, 100 subscribers, each read by its own thread.
    Hundred,
    /// Metrics on with one job in 16 timed (`.timing_sample(16)`), one reading subscriber.
    Sampled,
    /// Metrics on with every job timed (`.timing_sample(1)`), one reading subscriber.
    EveryJob,
}

impl MetricsVariant {
    pub const ALL: [MetricsVariant; 7] = [
        MetricsVariant::Off,
        MetricsVariant::On,
        MetricsVariant::OneSubscriber,
        MetricsVariant::Stalled,
        MetricsVariant::Hundred,
        MetricsVariant::Sampled,
        MetricsVariant::EveryJob,
    ];

    pub fn name(self) -> &'static str {
        match self {
            MetricsVariant::Off => "metrics-off",
            MetricsVariant::On => "metrics-on",
            MetricsVariant::OneSubscriber => "metrics-on-1-subscriber",
            MetricsVariant::Stalled => "metrics-on-stalled-subscriber",
            MetricsVariant::Hundred => "metrics-on-100-subscribers",
            MetricsVariant::Sampled => "metrics-sampled-16-1-subscriber",
            MetricsVariant::EveryJob => "metrics-every-job-1-subscriber",
        }
    }
}

/// Threads that drain subscriptions until the orchestrator shuts down.
struct Readers(Vec<JoinHandle<u64>>);

impl Drop for Readers {
    /// Runs after the orchestrator is gone (the producer thread owned it), when every
    /// subscription has delivered its `Shutdown` event and disconnected.
    fn drop(&mut self) {
        for r in self.0.drain(..) {
            let _ = r.join();
        }
    }
}

impl Readers {
    fn spawn(subscriptions: Vec<Receiver<MetricsEvent>>) -> Readers {
        Readers(
            subscriptions
                .into_iter()
                .map(|rx| thread::spawn(move || rx.iter().count() as u64))
                .collect(),
        )
    }
}

impl MetricsVariant {
    /// Streams empty jobs through an orchestrator set up as this variant says.
    pub fn stream(self, workers: usize) -> Stream {
        let variant = self;
        let work = Workload::Empty;
        let builder = Orchestrator::builder()
            .workers(workers)
            .queue_capacity(CAPACITY)
            .response_capacity(CAPACITY)
            .metrics(!matches!(variant, MetricsVariant::Off));
        // The default is the adaptive rate; two variants fix it.
        let builder = match variant {
            MetricsVariant::Sampled => builder.timing_sample(16),
            MetricsVariant::EveryJob => builder.timing_sample(1),
            _ => builder,
        };
        let (orch, responses) = builder
            // A short interval, so that the 1.2 s of a bench sees many snapshots.
            .metrics_interval(Duration::from_millis(20))
            .thread_name("bench")
            .build(move |x: u64| work.run(x))
            .expect("build the orchestrator");
        let (readers, stalled) = match variant {
            MetricsVariant::Off | MetricsVariant::On => (Readers(Vec::new()), None),
            MetricsVariant::OneSubscriber | MetricsVariant::Sampled | MetricsVariant::EveryJob => {
                (Readers::spawn(vec![orch.subscribe()]), None)
            }
            MetricsVariant::Stalled => (Readers(Vec::new()), Some(orch.subscribe_with_capacity(4))),
            MetricsVariant::Hundred => (
                Readers::spawn((0..100).map(|_| orch.subscribe()).collect()),
                None,
            ),
        };
        Stream::new(
            move |i| {
                orch.submit(i).expect("orchestrator is running");
            },
            move |n| {
                // Owned here so that they live as long as the stream; dropped after the
                // orchestrator (the producer owns it), so the readers see the channel close.
                let _ = (&readers, &stalled);
                let mut sum = 0u64;
                for _ in 0..n {
                    let r = responses.recv().expect("a response");
                    sum = sum.wrapping_add(r.outcome.expect("no panic"));
                }
                sum
            },
        )
    }
}
