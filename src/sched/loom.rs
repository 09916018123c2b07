//! Exhaustive checks of the scheduler's protocols with `loom`, on the
//! production code built over loom's primitives (see `sync`): claim, park
//! and unpark (no ticket waits for a timeout: under loom a park never times
//! out, so a lost wake-up is a deadlock, which loom reports); a batch fill
//! ended by work at its own level; latest-wins replacement, release and
//! eviction (one stream never has two slots); decode-batch join and retire
//! (no joiner is left with no batch to take it).
//!
//! Run with `scripts/loom.sh` (builds this crate alone with `--cfg loom`,
//! dependencies unchanged; it bounds each execution to 3 preemptions,
//! `LOOM_MAX_PREEMPTIONS` changes that).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64 as StdAtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use ::loom::sync::atomic::AtomicUsize;
use ::loom::sync::{Condvar, Mutex};
use ::loom::thread;

use super::*;

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
        self.received + Duration::from_secs(60)
    }
}

struct K;

impl Kinds for K {
    type Job = Job;
    type Gen = ();
    type GenBatch = ();
    type State = ();
}

type Sched = Scheduler<K>;

/// Time stands still unless a test moves it before starting its threads;
/// a timed wait never times out (a wake-up that only a timeout would bring
/// is a deadlock).
struct LoomClock {
    base: Instant,
    offset_us: StdAtomicU64,
}

impl Clock for LoomClock {
    fn now(&self) -> Instant {
        self.base + Duration::from_micros(self.offset_us.load(SeqCst))
    }
    fn park(&self, parker: &Parker, _timeout: Duration) {
        parker.park();
    }
}

/// A flag threads can wait for (blocking, so loom sees a missed wake-up
/// as a deadlock rather than a spin).
#[derive(Default)]
struct Latch {
    set: Mutex<bool>,
    cv: Condvar,
}

impl Latch {
    fn set(&self) {
        *self.set.lock().unwrap() = true;
        self.cv.notify_all();
    }
    fn wait(&self) {
        let mut set = self.set.lock().unwrap();
        while !*set {
            set = self.cv.wait(set).unwrap();
        }
    }
}

fn config(text: &str) -> Config {
    Config::from_toml(text, Path::new("/")).expect("loom test config")
}

fn pipeline(name: &str, level: &str, extra: &str) -> String {
    format!(
        "[[pipeline]]\nname = \"{name}\"\nmodel = \"m.onnx\"\ninput = \"{name}\"\noutput = \"{name}o\"\nlevel = \"{level}\"\n{extra}\n"
    )
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut b = ::loom::model::Builder::new();
    b.max_branches = 100_000;
    b.check(f);
}

struct Setup {
    s: Arc<Sched>,
    parkers: Vec<Parker>,
    clock: Arc<LoomClock>,
}

fn setup(cfg: &Config) -> Setup {
    let clock = Arc::new(LoomClock {
        base: Instant::now(),
        offset_us: StdAtomicU64::new(0),
    });
    let (s, parkers) = Sched::with_clock(cfg, clock.clone());
    Setup { s, parkers, clock }
}

fn job(clock: &LoomClock, pipeline: usize, stream: &str) -> Box<Job> {
    Box::new(Job {
        pipeline,
        stream: stream.into(),
        received: clock.base,
    })
}

fn queued(r: Submitted<Job>) -> bool {
    matches!(r, Submitted::Queued | Submitted::Replaced(_))
}

fn pipeline_of(w: &Work<K>) -> usize {
    match w {
        Work::Job(j) | Work::Stream(_, j) => j.pipeline,
        Work::Batch(b) => b.pipeline,
        Work::Gen(_) | Work::GenBatch(_) => unreachable!("no generations here"),
    }
}

/// A parked worker is woken by a submit, and `stop` wakes every worker.
#[test]
fn submit_wakes_a_parked_worker_and_stop_wakes_all() {
    let cfg = config(&format!(
        "[[level]]\nname = \"hi\"\n[[worker]]\nlevels = [\"hi\"]\n[[worker]]\nlevels = [\"hi\"]\n{}",
        pipeline("p", "hi", "")
    ));
    model(move || {
        let Setup { s, parkers, clock } = setup(&cfg);
        let served = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = parkers
            .into_iter()
            .enumerate()
            .map(|(id, p)| {
                let (s, served) = (s.clone(), served.clone());
                thread::spawn(move || {
                    while s.next(id, &p).is_some() {
                        served.fetch_add(1, SeqCst);
                    }
                })
            })
            .collect();
        assert!(queued(s.submit(job(&clock, 0, ""))));
        s.stop();
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(served.load(SeqCst), 1);
    });
}

/// Issue 11, race 1. Worker A serves `hi` and `lo`, B serves `lo`. A `lo`
/// job may claim A, and A may then take a `hi` job first (or take a job in
/// its last look before parking). A's `hi` job runs until the `lo` job has
/// been taken: unless the claim is passed on to B, nothing wakes B.
#[test]
fn a_spent_claim_is_passed_on() {
    let cfg = config(&format!(
        "[[level]]\nname = \"hi\"\n[[level]]\nname = \"lo\"\n\
         [[worker]]\nlevels = [\"hi\", \"lo\"]\n[[worker]]\nlevels = [\"lo\"]\n{}{}",
        pipeline("h", "hi", ""),
        pipeline("l", "lo", "")
    ));
    model(move || {
        let Setup { s, parkers, clock } = setup(&cfg);
        let lo_taken = Arc::new(Latch::default());
        let workers: Vec<_> = parkers
            .into_iter()
            .enumerate()
            .map(|(id, p)| {
                let (s, lo_taken) = (s.clone(), lo_taken.clone());
                thread::spawn(move || {
                    while let Some(w) = s.next(id, &p) {
                        match pipeline_of(&w) {
                            0 => lo_taken.wait(),
                            _ => lo_taken.set(),
                        }
                    }
                })
            })
            .collect();
        assert!(queued(s.submit(job(&clock, 1, ""))));
        assert!(queued(s.submit(job(&clock, 0, ""))));
        lo_taken.wait();
        s.stop();
        for w in workers {
            w.join().unwrap();
        }
    });
}

/// Issue 11, race 2. A worker waiting for a batch to fill stops waiting
/// when a job of another pipeline at the same level arrives (or is
/// already queued): it runs its batch and comes back for the job, instead
/// of waiting out `max_queue_delay` (which, under loom, never ends).
#[test]
fn same_level_work_ends_a_batch_fill() {
    let cfg = config(&format!(
        "[[level]]\nname = \"lo\"\n[[worker]]\nlevels = [\"lo\"]\n{}{}",
        pipeline("b", "lo", "max_batch = 4\nmax_queue_delay_us = 100000"),
        pipeline("u", "lo", "")
    ));
    model(move || {
        let Setup {
            s,
            mut parkers,
            clock,
        } = setup(&cfg);
        let u_taken = Arc::new(Latch::default());
        assert!(queued(s.submit(job(&clock, 0, ""))));
        let p = parkers.remove(0);
        let worker = {
            let (s, u_taken) = (s.clone(), u_taken.clone());
            thread::spawn(move || {
                while let Some(w) = s.next(0, &p) {
                    if pipeline_of(&w) == 1 {
                        u_taken.set();
                    }
                }
            })
        };
        assert!(queued(s.submit(job(&clock, 1, ""))));
        u_taken.wait();
        s.stop();
        worker.join().unwrap();
    });
}

fn latest_config() -> Config {
    config(&format!(
        "[[level]]\nname = \"hi\"\n[[worker]]\nlevels = [\"hi\"]\n[[worker]]\nlevels = [\"hi\"]\n{}",
        pipeline(
            "p",
            "hi",
            "overflow = \"latest\"\nmax_streams = 1\nidle_reset_ms = 1"
        )
    ))
}

/// Two frames of one stream race with two workers: each frame runs or is
/// superseded, the stream never runs on two workers at once.
#[test]
fn latest_frames_replace_and_run_one_at_a_time() {
    let cfg = latest_config();
    model(move || {
        let Setup { s, parkers, clock } = setup(&cfg);
        let running = Arc::new(AtomicUsize::new(0));
        let ran = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = parkers
            .into_iter()
            .enumerate()
            .map(|(id, p)| {
                let (s, running, ran) = (s.clone(), running.clone(), ran.clone());
                thread::spawn(move || {
                    while let Some(w) = s.next(id, &p) {
                        let Work::Stream(slot, _) = w else {
                            panic!("expected a stream frame")
                        };
                        assert_eq!(running.fetch_add(1, SeqCst), 0, "two workers on one stream");
                        running.fetch_sub(1, SeqCst);
                        ran.fetch_add(1, SeqCst);
                        s.release(&slot);
                    }
                })
            })
            .collect();
        let other = {
            let (s, clock) = (s.clone(), clock.clone());
            thread::spawn(move || s.submit(job(&clock, 0, "a")))
        };
        let mine = s.submit(job(&clock, 0, "a"));
        let theirs = other.join().unwrap();
        let superseded = [mine, theirs]
            .into_iter()
            .filter(|r| matches!(r, Submitted::Replaced(_)))
            .count();
        s.stop();
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(ran.load(SeqCst) + superseded, 2);
    });
}

/// Issue 11, race 3. Stream `a` is quiet (evictable); a frame of `a` and
/// the first frame of a new stream `b` arrive together with room for one
/// stream. `a`'s frame keeps `a` (then `b` is refused), or `a` is evicted
/// first (then `a`'s frame is refused): a frame is never queued into a
/// slot that is no longer the stream's.
#[test]
fn eviction_never_orphans_a_queued_frame() {
    let cfg = latest_config();
    model(move || {
        let Setup {
            s,
            mut parkers,
            clock,
        } = setup(&cfg);
        let p = parkers.remove(0);
        assert!(queued(s.submit(job(&clock, 0, "a"))));
        let Some(Work::Stream(slot, _)) = s.next(0, &p) else {
            panic!("expected a's frame")
        };
        s.release(&slot);
        clock.offset_us.store(10_000, SeqCst);
        let other = {
            let (s, clock) = (s.clone(), clock.clone());
            thread::spawn(move || queued(s.submit(job(&clock, 0, "b"))))
        };
        let a_queued = queued(s.submit(job(&clock, 0, "a")));
        let b_queued = other.join().unwrap();
        if a_queued {
            assert!(
                s.slot_of(0, "a").is_some(),
                "a's frame went into an evicted slot"
            );
        }
        if b_queued {
            assert!(s.slot_of(0, "b").is_some());
        }
    });
}

/// Issue 11, race 3 (release side). A worker holds `a`'s slot while a
/// newer frame waits; it releases (the slot is rescheduled) and takes the
/// newer frame, while a new stream `b` looks for a quiet stream to evict.
/// While the worker holds a frame of `a`, `a`'s slot stays in the map.
#[test]
fn eviction_never_takes_a_slot_in_use() {
    let cfg = latest_config();
    model(move || {
        let Setup {
            s,
            mut parkers,
            clock,
        } = setup(&cfg);
        let p = parkers.remove(0);
        assert!(queued(s.submit(job(&clock, 0, "a"))));
        let Some(Work::Stream(slot, _)) = s.next(0, &p) else {
            panic!("expected a's frame")
        };
        assert!(queued(s.submit(job(&clock, 0, "a"))));
        clock.offset_us.store(10_000, SeqCst);
        let worker = {
            let s = s.clone();
            thread::spawn(move || {
                s.release(&slot);
                let Some(Work::Stream(slot, _)) = s.next(0, &p) else {
                    panic!("expected a's second frame")
                };
                let current = s.slot_of(0, "a").expect("a evicted while in use");
                assert!(Arc::ptr_eq(&current, &slot), "a has two slots");
                s.release(&slot);
            })
        };
        let _ = s.submit(job(&clock, 0, "b"));
        worker.join().unwrap();
    });
}

/// Decode-batch join and retire: each thread hands its members to the
/// batch one by one; a thread that starts a batch runs it (every member
/// finishes in one step) until it retires. Every member is stepped exactly
/// once and none is left waiting with no batch to take it.
fn check_joins(max: usize, plan: &'static [&'static [u32]]) {
    model(move || {
        let q = Arc::new(JoinQueue::<u32>::new(max));
        let stepped = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = plan
            .iter()
            .map(|ids| {
                let (q, stepped) = (q.clone(), stepped.clone());
                thread::spawn(move || {
                    for &id in *ids {
                        match q.join(id) {
                            Ok(true) => run_batch(&q, &stepped),
                            Ok(false) => {}
                            // Full: the member steps alone.
                            Err(_) => {
                                stepped.fetch_add(1, SeqCst);
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let left = q.drain();
        assert!(left.is_empty(), "joiners {left:?} have no batch");
        let all: usize = plan.iter().map(|ids| ids.len()).sum();
        assert_eq!(stepped.load(SeqCst), all);
    });
}

#[test]
fn every_joiner_is_taken_by_a_batch_two_by_two() {
    check_joins(2, &[&[1, 3], &[2, 4]]);
}

/// The retire that finds its joiners taken by a batch started meanwhile
/// must not let go of `active` after a third joiner relied on it.
#[test]
fn every_joiner_is_taken_by_a_batch_three_threads() {
    check_joins(3, &[&[1], &[2], &[3]]);
}

/// A decode batch's turns: take joiners, one step (all members finish),
/// retire when empty.
fn run_batch(q: &JoinQueue<u32>, stepped: &AtomicUsize) {
    let mut members = Vec::new();
    loop {
        q.take(|g| members.push(g));
        stepped.fetch_add(members.len(), SeqCst);
        q.left(members.len());
        members.clear();
        if !q.retire(|g| members.push(g)) {
            return;
        }
    }
}
