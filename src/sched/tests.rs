//! Unit tests of the scheduler: priority order, latest-wins, bounds,
//! drain, wake-up and batch collection. Time-dependent rules (batch fill,
//! deadlines, stream eviction) run on a [`ManualClock`]: no test sleeps.
//! Interleavings are checked exhaustively in `sched::loom`.
use super::*;
use std::path::Path;
use std::sync::atomic::Ordering::SeqCst;

/// A job as the scheduler sees it: pipeline, stream, times, and a sequence
/// number to follow it by.
#[derive(Debug)]
struct TestJob {
    pipeline: usize,
    stream: Arc<str>,
    seq: u64,
    received: Instant,
    deadline: Instant,
}

impl Task for TestJob {
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
        self.deadline
    }
}

struct K;

impl Kinds for K {
    type Job = TestJob;
    type Gen = ();
    type GenBatch = ();
    type State = ();
}

type Scheduler = super::Scheduler<K>;
type Work = super::Work<K>;

fn cfg(extra: &str) -> Config {
    let text = format!(
        r#"
        [[level]]
        name = "hi"
        [[level]]
        name = "lo"
        [[worker]]
        levels = ["hi", "lo"]
        [[pipeline]]
        name = "h"
        model = "m.onnx"
        input = "h/*"
        output = "ho"
        level = "hi"
        overflow = "latest"
        max_streams = 2
        [[pipeline]]
        name = "l"
        model = "m.onnx"
        input = "l"
        output = "lo"
        level = "lo"
        queue_capacity = 3
        {extra}
        "#
    );
    Config::from_toml(&text, Path::new("/")).unwrap()
}

fn job(pipeline: usize, stream: &str, seq: u64) -> Box<TestJob> {
    job_at(
        pipeline,
        stream,
        seq,
        Instant::now(),
        Duration::from_secs(1),
    )
}

fn job_at(
    pipeline: usize,
    stream: &str,
    seq: u64,
    received: Instant,
    budget: Duration,
) -> Box<TestJob> {
    Box::new(TestJob {
        pipeline,
        stream: stream.into(),
        seq,
        received,
        deadline: received + budget,
    })
}

/// Waits (without a timeout) until `worker` has marked itself idle: it is
/// parked or about to park.
fn wait_idle(s: &Scheduler, worker: usize) {
    while !s.workers[worker].idle.load(SeqCst) {
        std::thread::yield_now();
    }
}

fn seq(w: &Work) -> (usize, u64) {
    let j = match w {
        Work::Job(j) | Work::Stream(_, j) => j,
        Work::Gen(_) | Work::Batch(_) | Work::GenBatch(_) => {
            panic!("no generations or batches here")
        }
    };
    (j.pipeline, j.seq)
}

#[test]
fn highest_level_is_served_first_and_reject_counts_capacity() {
    let (s, parkers) = Scheduler::new(&cfg(""));
    for i in 0..3 {
        assert!(matches!(s.submit(job(1, "", i)), Submitted::Queued));
    }
    match s.submit(job(1, "", 3)) {
        Submitted::Rejected(r, _) => assert_eq!(r.code, ErrorCode::Busy),
        _ => panic!("fourth job must be rejected"),
    }
    assert!(matches!(s.submit(job(0, "a", 10)), Submitted::Queued));
    let order: Vec<_> = (0..4)
        .map(|_| seq(&s.next(0, &parkers[0]).unwrap()))
        .collect();
    assert_eq!(order, vec![(0, 10), (1, 0), (1, 1), (1, 2)]);
}

#[test]
fn latest_replaces_pending_frame_and_keeps_one_ticket() {
    let (s, parkers) = Scheduler::new(&cfg(""));
    assert!(matches!(s.submit(job(0, "a", 1)), Submitted::Queued));
    match s.submit(job(0, "a", 2)) {
        Submitted::Replaced(old) => assert_eq!(old.seq, 1),
        _ => panic!("expected replacement"),
    }
    let w = s.next(0, &parkers[0]).unwrap();
    assert_eq!(seq(&w), (0, 2));
    // While the frame runs, a new one waits without a second ticket.
    assert!(matches!(s.submit(job(0, "a", 3)), Submitted::Queued));
    assert!(
        s.pop(0).is_none(),
        "stream must not run on two workers at once"
    );
    if let Work::Stream(slot, _) = w {
        s.release(&slot);
    }
    assert_eq!(seq(&s.next(0, &parkers[0]).unwrap()), (0, 3));
}

#[test]
fn stream_count_is_bounded() {
    let (s, _p) = Scheduler::new(&cfg(""));
    assert!(matches!(s.submit(job(0, "a", 1)), Submitted::Queued));
    assert!(matches!(s.submit(job(0, "b", 1)), Submitted::Queued));
    match s.submit(job(0, "c", 1)) {
        Submitted::Rejected(r, _) => assert_eq!(r.code, ErrorCode::TooManyStreams),
        _ => panic!("third stream must be refused"),
    }
}

#[test]
fn stop_drains_then_returns_none_and_refuses_new_work() {
    let (s, parkers) = Scheduler::new(&cfg(""));
    assert!(matches!(s.submit(job(1, "", 1)), Submitted::Queued));
    s.stop();
    assert!(s.next(0, &parkers[0]).is_some());
    assert!(s.next(0, &parkers[0]).is_none());
    assert!(matches!(s.submit(job(1, "", 2)), Submitted::Rejected(..)));
}

#[test]
fn batched_pipeline_hands_out_up_to_max_batch_in_order() {
    let (s, parkers) = Scheduler::new(&cfg("max_batch = 4"));
    for i in 0..3 {
        assert!(matches!(s.submit(job(1, "", i)), Submitted::Queued));
    }
    match s.submit(job(1, "", 3)) {
        Submitted::Rejected(r, _) => assert_eq!(r.code, ErrorCode::Busy),
        _ => panic!("queue_capacity still bounds a batched pipeline"),
    }
    let take = |s: &Scheduler| -> Vec<u64> {
        match s.next(0, &parkers[0]) {
            Some(Work::Batch(b)) => b.items.iter().map(|(_, j)| j.seq).collect(),
            _ => panic!("expected a batch"),
        }
    };
    assert_eq!(take(&s), vec![0, 1, 2]);
    // The ticket was handed back: later jobs form the next batch.
    assert!(matches!(s.submit(job(1, "", 7)), Submitted::Queued));
    assert_eq!(take(&s), vec![7]);
    assert!(s.pop(0).is_none());
}

#[test]
fn parked_worker_is_woken_by_submit_and_by_stop() {
    let (s, mut parkers) = Scheduler::new(&cfg(""));
    let p = parkers.remove(0);
    let s2 = s.clone();
    let t = std::thread::spawn(move || {
        let first = s2.next(0, &p).map(|w| seq(&w));
        (first, s2.next(0, &p).is_none())
    });
    wait_idle(&s, 0);
    assert!(matches!(s.submit(job(1, "", 5)), Submitted::Queued));
    wait_idle(&s, 0);
    // No park timeout: only `stop`'s wake-up ends the second wait.
    s.stop();
    assert_eq!(t.join().unwrap(), (Some((1, 5)), true));
}

/// Two levels; worker 0 serves both, worker 1 only `lo`; pipeline 0 at
/// `hi`, pipeline 1 at `lo`.
fn two_worker_cfg() -> Config {
    let text = r#"
        [[level]]
        name = "hi"
        [[level]]
        name = "lo"
        [[worker]]
        levels = ["hi", "lo"]
        [[worker]]
        levels = ["lo"]
        [[pipeline]]
        name = "h"
        model = "m.onnx"
        input = "h"
        output = "ho"
        level = "hi"
        [[pipeline]]
        name = "l"
        model = "m.onnx"
        input = "l"
        output = "lo"
        level = "lo"
        "#;
    Config::from_toml(text, Path::new("/")).unwrap()
}

/// Issue 11, race 1: a `lo` job claims worker 0 (idle, about to park or
/// parked), a `hi` job arrives, and worker 0 takes the `hi` job first.
/// Worker 1 (parked, serves `lo`) must be woken for the `lo` job now, not
/// after worker 0's run or a park timeout.
#[test]
fn a_claim_spent_on_other_work_is_passed_on() {
    let (s, parkers) = Scheduler::new(&two_worker_cfg());
    s.workers[0].idle.store(true, SeqCst);
    s.workers[1].idle.store(true, SeqCst);
    assert!(matches!(s.submit(job(1, "", 1)), Submitted::Queued));
    assert!(
        !s.workers[0].idle.load(SeqCst),
        "the lo job claims worker 0"
    );
    assert!(matches!(s.submit(job(0, "", 2)), Submitted::Queued));
    assert_eq!(seq(&s.next(0, &parkers[0]).unwrap()), (0, 2));
    assert!(
        !s.workers[1].idle.load(SeqCst),
        "worker 1 must be claimed for the lo job"
    );
    assert_eq!(seq(&s.next(1, &parkers[1]).unwrap()), (1, 1));
}

/// A batched pipeline `b` and an unbatched `u` at the only level, one
/// worker, on a manual clock.
fn fill_setup(extra_b: &str) -> (Arc<Scheduler>, Vec<Parker>, Arc<ManualClock>) {
    let text = format!(
        r#"
        [[level]]
        name = "hi"
        [[level]]
        name = "lo"
        [[worker]]
        levels = ["hi", "lo"]
        [[pipeline]]
        name = "b"
        model = "m.onnx"
        input = "b"
        output = "bo"
        level = "lo"
        max_batch = 4
        max_queue_delay_us = 5000
        {extra_b}
        [[pipeline]]
        name = "u"
        model = "m.onnx"
        input = "u"
        output = "uo"
        level = "lo"
        [[pipeline]]
        name = "h"
        model = "m.onnx"
        input = "h"
        output = "ho"
        level = "hi"
        "#
    );
    let cfg = Config::from_toml(&text, Path::new("/")).unwrap();
    let clock = Arc::new(ManualClock::new());
    let (s, parkers) = Scheduler::with_clock(&cfg, clock.clone());
    (s, parkers, clock)
}

fn batch_of(w: Option<Work>) -> Batch<K> {
    match w {
        Some(Work::Batch(b)) => b,
        _ => panic!("expected a batch"),
    }
}

const BUDGET: Duration = Duration::from_secs(1);

#[test]
fn fill_waits_until_max_queue_delay_without_other_work() {
    let (s, parkers, clock) = fill_setup("");
    let t0 = clock.now();
    assert!(matches!(
        s.submit(job_at(0, "", 1, t0, BUDGET)),
        Submitted::Queued
    ));
    let b = batch_of(s.next(0, &parkers[0]));
    assert_eq!(b.items.len(), 1);
    assert_eq!(b.fill_wait, Duration::from_millis(5));
    assert!(!b.cut_by_deadline);
}

#[test]
fn fill_collects_jobs_that_arrive_during_the_wait() {
    let (s, parkers, clock) = fill_setup("");
    let t0 = clock.now();
    assert!(matches!(
        s.submit(job_at(0, "", 1, t0, BUDGET)),
        Submitted::Queued
    ));
    let s2 = s.clone();
    clock.on_park(move || {
        assert!(matches!(
            s2.submit(job_at(0, "", 2, t0, BUDGET)),
            Submitted::Queued
        ));
    });
    let b = batch_of(s.next(0, &parkers[0]));
    let seqs: Vec<u64> = b.items.iter().map(|(_, j)| j.seq).collect();
    assert_eq!(seqs, vec![1, 2]);
    // The second wait (for a third job) timed out.
    assert_eq!(clock.parks(), 2);
    assert_eq!(b.fill_wait, Duration::from_millis(5));
}

#[test]
fn fill_stops_at_a_preferred_size() {
    let (s, parkers, clock) = fill_setup("preferred_batch_sizes = [2]");
    let t0 = clock.now();
    for i in 0..2 {
        assert!(matches!(
            s.submit(job_at(0, "", i, t0, BUDGET)),
            Submitted::Queued
        ));
    }
    let b = batch_of(s.next(0, &parkers[0]));
    assert_eq!(b.items.len(), 2);
    assert_eq!((clock.parks(), b.fill_wait), (0, Duration::ZERO));
}

#[test]
fn fill_keeps_a_quarter_of_the_budget_before_a_deadline() {
    let (s, parkers, clock) = fill_setup("");
    let t0 = clock.now();
    // Budget 4 ms: the wait must end 1 ms before the deadline, at 3 ms,
    // before max_queue_delay (5 ms).
    let budget = Duration::from_millis(4);
    assert!(matches!(
        s.submit(job_at(0, "", 1, t0, budget)),
        Submitted::Queued
    ));
    let b = batch_of(s.next(0, &parkers[0]));
    assert!(b.cut_by_deadline);
    assert_eq!(b.fill_wait, Duration::from_millis(3));
}

/// Issue 11, race 2: a job of another pipeline at the fill's own level
/// ends the wait at once (like higher-level work), instead of the worker
/// parking again until max_queue_delay.
#[test]
fn same_level_work_ends_a_batch_fill() {
    let (s, parkers, clock) = fill_setup("");
    let t0 = clock.now();
    assert!(matches!(
        s.submit(job_at(0, "", 1, t0, BUDGET)),
        Submitted::Queued
    ));
    let s2 = s.clone();
    clock.on_park(move || {
        assert!(matches!(
            s2.submit(job_at(1, "", 2, t0, BUDGET)),
            Submitted::Queued
        ));
    });
    let b = batch_of(s.next(0, &parkers[0]));
    assert_eq!(b.items.len(), 1);
    assert_eq!((clock.parks(), b.fill_wait), (1, Duration::ZERO));
    assert_eq!(seq(&s.next(0, &parkers[0]).unwrap()), (1, 2));
}

#[test]
fn higher_level_work_ends_a_batch_fill() {
    let (s, parkers, clock) = fill_setup("");
    let t0 = clock.now();
    assert!(matches!(
        s.submit(job_at(0, "", 1, t0, BUDGET)),
        Submitted::Queued
    ));
    let s2 = s.clone();
    clock.on_park(move || {
        assert!(matches!(
            s2.submit(job_at(2, "", 2, t0, BUDGET)),
            Submitted::Queued
        ));
    });
    let b = batch_of(s.next(0, &parkers[0]));
    assert_eq!((clock.parks(), b.fill_wait), (1, Duration::ZERO));
    assert_eq!(seq(&s.next(0, &parkers[0]).unwrap()), (2, 2));
}

/// A stream of a full `latest` pipeline is forgotten only once it has been
/// quiet for longer than `idle_reset`, to make room for a new stream.
#[test]
fn quiet_stream_is_evicted_only_after_idle_reset() {
    let text = r#"
        [[level]]
        name = "hi"
        [[worker]]
        levels = ["hi"]
        [[pipeline]]
        name = "h"
        model = "m.onnx"
        input = "h/*"
        output = "ho"
        level = "hi"
        overflow = "latest"
        max_streams = 1
        idle_reset_ms = 100
        "#;
    let clock = Arc::new(ManualClock::new());
    let (s, parkers) = Scheduler::with_clock(
        &Config::from_toml(text, Path::new("/")).unwrap(),
        clock.clone(),
    );
    let frame = |stream: &str, seq| job_at(0, stream, seq, clock.now(), BUDGET);
    assert!(matches!(s.submit(frame("a", 1)), Submitted::Queued));
    let Some(Work::Stream(slot, _)) = s.next(0, &parkers[0]) else {
        panic!("expected a's frame")
    };
    // While a's frame runs, and right after, b is refused.
    assert!(matches!(s.submit(frame("b", 1)), Submitted::Rejected(..)));
    s.release(&slot);
    clock.advance(Duration::from_millis(100));
    match s.submit(frame("b", 2)) {
        Submitted::Rejected(r, _) => assert_eq!(r.code, ErrorCode::TooManyStreams),
        _ => panic!("a has not been quiet for longer than idle_reset"),
    }
    clock.advance(Duration::from_millis(1));
    assert!(matches!(s.submit(frame("b", 3)), Submitted::Queued));
    assert!(s.slot_of(0, "a").is_none());
    assert_eq!(seq(&s.next(0, &parkers[0]).unwrap()), (0, 3));
}

#[test]
fn join_queue_starts_one_batch_and_retire_takes_late_joiners() {
    let q = JoinQueue::new(2);
    assert_eq!(q.join(1), Ok(true), "the first joiner starts the batch");
    let mut batch = Vec::new();
    assert_eq!(q.take(|g| batch.push(g)), 1);
    assert_eq!(q.join(2), Ok(false), "the running batch takes the second");
    assert_eq!(q.join(3), Err(3), "two places taken");
    q.left(1);
    batch.clear();
    // The batch emptied, but a joiner is waiting: it keeps going.
    assert!(q.retire(|g| batch.push(g)));
    assert_eq!(batch, vec![2]);
    q.left(1);
    batch.clear();
    assert!(!q.retire(|g| batch.push(g)));
    assert_eq!(q.join(4), Ok(true), "a retired batch is started anew");
}
