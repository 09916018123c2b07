//! Unit tests of the scheduler: priority order, latest-wins, bounds,
//! drain, wake-up and batch collection.
use super::*;
use std::path::Path;

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
    let now = Instant::now();
    Box::new(TestJob {
        pipeline,
        stream: stream.into(),
        seq,
        received: now,
        deadline: now + Duration::from_secs(1),
    })
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
fn parked_worker_is_woken_by_submit() {
    let (s, mut parkers) = Scheduler::new(&cfg(""));
    let p = parkers.remove(0);
    let s2 = s.clone();
    let t = std::thread::spawn(move || s2.next(0, &p).map(|w| seq(&w)));
    std::thread::sleep(Duration::from_millis(20));
    assert!(matches!(s.submit(job(1, "", 5)), Submitted::Queued));
    assert_eq!(t.join().unwrap(), Some((1, 5)));
}
