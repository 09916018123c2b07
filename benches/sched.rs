//! Scheduler wake-up benchmark: how long a submitted job waits before a
//! worker has it in hand (submit → `Scheduler::next` returns), measured on
//! the scheduler alone (no zenoh, no model), three cases:
//!
//! (a) `parked`: one worker, parked between jobs (the common case: the
//!     futex wake-up is the whole cost).
//! (b) `stolen claim`: workers A (levels hi, lo) and B (lo), both parked. A
//!     `lo` job claims A; a `hi` job arrives at once, A takes it first and
//!     runs it for `RUN`. The `lo` job should go to B at once; if A's claim
//!     is not passed on, it waits for A's run (or B's park timeout).
//! (c) `fill + same level`: one worker waits for a batch to fill (up to
//!     `FILL`), a job of an unbatched pipeline at the same level arrives:
//!     the wait should end at once instead of running its course.
//!
//! Prints p50/p99/max in µs per case, and for (b) and (c) the ratio to (a)
//! measured in the same run (these shared VMs drift). Never fails on a
//! number. `cargo bench --bench sched [-- --iters N]`.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam::sync::Parker;
use reflexd::Config;
use reflexd::sched::{Kinds, Scheduler, Submitted, Task, Work};

/// How long A's `hi` job runs in case (b).
const RUN: Duration = Duration::from_millis(5);
/// The batch pipeline's `max_queue_delay` in case (c).
const FILL: Duration = Duration::from_millis(5);
/// Pause between rounds, long enough for every worker to park again.
const GAP: Duration = Duration::from_millis(2);

struct Job {
    pipeline: usize,
    stream: Arc<str>,
    received: Instant,
}

impl Task for Job {
    fn pipeline(&self) -> usize {
        self.pipeline
    }
    fn stream(&self) -> &Arc<str> {
        &self.stream
    }
    fn received(&self) -> Instant {
        self.received
    }
    fn deadline(&self) -> Instant {
        self.received + Duration::from_secs(10)
    }
}

struct K;

impl Kinds for K {
    type Job = Job;
    type Gen = ();
    type GenBatch = ();
    type State = ();
}

fn job(pipeline: usize) -> Box<Job> {
    Box::new(Job {
        pipeline,
        stream: "".into(),
        received: Instant::now(),
    })
}

fn config(workers: &str, pipelines: &str) -> Config {
    let text = format!(
        r#"
        [[level]]
        name = "hi"
        [[level]]
        name = "lo"
        {workers}
        {pipelines}
        "#
    );
    Config::from_toml(&text, Path::new("/")).expect("bench config")
}

fn pipeline(name: &str, level: &str, extra: &str) -> String {
    format!(
        "[[pipeline]]\nname = \"{name}\"\nmodel = \"m.onnx\"\ninput = \"{name}\"\noutput = \"{name}o\"\nlevel = \"{level}\"\nqueue_capacity = 64\n{extra}\n"
    )
}

/// (pipeline, wait in µs from receipt to the worker holding it) per job.
type Sample = (usize, u64);

/// Runs worker threads that report every job's wait; a `hi` job (pipeline
/// `busy_pipeline`) keeps its worker busy for `RUN`.
fn workers(
    s: &Arc<Scheduler<K>>,
    parkers: Vec<Parker>,
    busy_pipeline: Option<usize>,
) -> (mpsc::Receiver<Sample>, Vec<thread::JoinHandle<()>>) {
    let (tx, rx) = mpsc::channel();
    let handles = parkers
        .into_iter()
        .enumerate()
        .map(|(id, parker)| {
            let (s, tx) = (s.clone(), tx.clone());
            thread::spawn(move || {
                while let Some(w) = s.next(id, &parker) {
                    let now = Instant::now();
                    let jobs: Vec<Box<Job>> = match w {
                        Work::Job(j) | Work::Stream(_, j) => vec![j],
                        Work::Batch(b) => b.items.into_iter().map(|(_, j)| j).collect(),
                        Work::Gen(_) | Work::GenBatch(_) => vec![],
                    };
                    for j in jobs {
                        let waited = now.duration_since(j.received).as_micros() as u64;
                        let _ = tx.send((j.pipeline, waited));
                        if Some(j.pipeline) == busy_pipeline {
                            let until = Instant::now() + RUN;
                            while Instant::now() < until {
                                std::hint::spin_loop();
                            }
                        }
                    }
                }
            })
        })
        .collect();
    (rx, handles)
}

fn submit(s: &Scheduler<K>, j: Box<Job>) {
    if !matches!(s.submit(j), Submitted::Queued) {
        panic!("bench job refused");
    }
}

fn stats(name: &str, mut v: Vec<u64>, base_p50: Option<u64>) -> u64 {
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q) as usize];
    let ratio = base_p50
        .map(|b| format!("  p50 = {:.1} × parked", at(0.5) as f64 / b.max(1) as f64))
        .unwrap_or_default();
    println!(
        "{name:<18} n={:<5} p50 {:>6} µs  p99 {:>6} µs  max {:>6} µs{ratio}",
        v.len(),
        at(0.5),
        at(0.99),
        v[v.len() - 1]
    );
    at(0.5)
}

fn finish(s: &Scheduler<K>, handles: Vec<thread::JoinHandle<()>>) {
    s.stop();
    for h in handles {
        h.join().expect("worker thread");
    }
}

fn parked(iters: usize) -> Vec<u64> {
    let cfg = config("[[worker]]\nlevels = [\"hi\"]", &pipeline("p", "hi", ""));
    let (s, parkers) = Scheduler::<K>::new(&cfg);
    let (rx, handles) = workers(&s, parkers, None);
    let mut out = Vec::with_capacity(iters);
    for _ in 0..iters {
        thread::sleep(GAP);
        submit(&s, job(0));
        out.push(rx.recv().expect("sample").1);
    }
    finish(&s, handles);
    out
}

fn stolen_claim(iters: usize) -> Vec<u64> {
    let cfg = config(
        "[[worker]]\nlevels = [\"hi\", \"lo\"]\n[[worker]]\nlevels = [\"lo\"]",
        &(pipeline("h", "hi", "") + &pipeline("l", "lo", "")),
    );
    let (s, parkers) = Scheduler::<K>::new(&cfg);
    let (rx, handles) = workers(&s, parkers, Some(0));
    let mut out = Vec::with_capacity(iters);
    for _ in 0..iters {
        thread::sleep(GAP + RUN);
        submit(&s, job(1));
        submit(&s, job(0));
        for _ in 0..2 {
            let (p, waited) = rx.recv().expect("sample");
            if p == 1 {
                out.push(waited);
            }
        }
    }
    finish(&s, handles);
    out
}

fn fill_same_level(iters: usize) -> Vec<u64> {
    let batched = format!("max_batch = 8\nmax_queue_delay_us = {}", FILL.as_micros());
    let cfg = config(
        "[[worker]]\nlevels = [\"lo\"]",
        &(pipeline("b", "lo", &batched) + &pipeline("u", "lo", "")),
    );
    let (s, parkers) = Scheduler::<K>::new(&cfg);
    let (rx, handles) = workers(&s, parkers, None);
    let mut out = Vec::with_capacity(iters);
    for _ in 0..iters {
        thread::sleep(GAP + FILL);
        submit(&s, job(0));
        // Let the worker take the batch ticket and start waiting.
        thread::sleep(Duration::from_micros(300));
        submit(&s, job(1));
        for _ in 0..2 {
            let (p, waited) = rx.recv().expect("sample");
            if p == 1 {
                out.push(waited);
            }
        }
    }
    finish(&s, handles);
    out
}

fn main() {
    let mut iters = 500;
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--iters") {
        iters = args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .expect("--iters N");
    }
    println!("scheduler wake-up: submit → worker holds the job ({iters} rounds each)");
    let base = stats("parked", parked(iters), None);
    stats("stolen claim", stolen_claim(iters), Some(base));
    stats("fill + same level", fill_same_level(iters), Some(base));
}
