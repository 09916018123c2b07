//! Overload over real zenoh: three publisher sessions flood three pipelines
//! on three priority levels far beyond what one worker can run, with a
//! bounded number of messages. The test counts, it does not time: the top
//! level keeps being served in priority order (checked on the daemon's own
//! event order), lower levels shed load (`busy` for the `reject` pipeline,
//! `superseded` for the `latest` ones, all counted), RSS stays bounded, and
//! every request ends in exactly one outcome, both in the daemon's counters
//! and as seen by a listening client (request ids make this exact).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use reflexd::error::ErrorCode;
use reflexd::tensor::f32_tensor;

/// Resident set size of this process (the in-process daemon plus clients).
fn vm_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

struct Flow {
    pipeline: &'static str,
    key_prefix: &'static str,
    streams: usize,
    count: usize,
    shape: [usize; 2],
}

const FLOWS: [Flow; 3] = [
    // Top level: a fast stateless model, latest-wins per stream.
    Flow {
        pipeline: "rt",
        key_prefix: "t/rt",
        streams: 4,
        count: 300,
        shape: [1, 4],
    },
    // Middle level: a ~4 ms model behind a small reject queue.
    Flow {
        pipeline: "detect",
        key_prefix: "t/detect",
        streams: 1,
        count: 600,
        shape: [1, 256],
    },
    // Bottom level: the same slow model, latest-wins over 8 streams.
    Flow {
        pipeline: "bulk",
        key_prefix: "t/bulk",
        streams: 8,
        count: 600,
        shape: [1, 256],
    },
];

fn payload(f: &Flow, i: usize) -> (String, Vec<u8>, String) {
    let n = f.shape[0] * f.shape[1];
    let id = format!("{}-{i}", f.pipeline);
    let key = format!("{}/s{}", f.key_prefix, i % f.streams);
    let body = request(&[f32_tensor("x", &f.shape, &vec![0.25; n])], &id, i as u64);
    (key, body, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_every_level_top_served_in_order_lower_shed_nothing_lost() {
    let slow = test_model("slow.onnx");
    let fast = test_model("affine.onnx");
    // One worker serves every level, so the order of runs is decided by the
    // scheduler alone and priority inversions are visible in run_order.
    let (daemon, port) = start(&format!(
        r#"
        [[level]]
        name = "realtime"
        [[level]]
        name = "normal"
        [[level]]
        name = "background"
        [[worker]]
        levels = ["realtime", "normal", "background"]
        [[pipeline]]
        name = "rt"
        model = "{fast}"
        input = "t/rt/*"
        output = "t/out/rt"
        level = "realtime"
        overflow = "latest"
        max_streams = 4
        deadline_ms = 60000
        [[pipeline]]
        name = "detect"
        model = "{slow}"
        input = "t/detect/*"
        output = "t/out/detect"
        level = "normal"
        overflow = "reject"
        queue_capacity = 8
        deadline_ms = 60000
        [[pipeline]]
        name = "bulk"
        model = "{slow}"
        input = "t/bulk/*"
        output = "t/out/bulk"
        level = "background"
        overflow = "latest"
        max_streams = 8
        deadline_ms = 60000
        "#
    ))
    .await;
    let listener = client(port).await;
    let sub = subscribe(&listener, "t/out/**").await;
    // Warm every path (and zenoh's routes) before measuring.
    for f in &FLOWS {
        let (key, body, _) = payload(f, usize::MAX);
        until_served(&listener, &key, &body, &sub).await;
    }
    let warm: Vec<u64> = daemon.stats().iter().map(|s| s.received).collect();
    let rss_before = vm_rss_kib();

    // Three publisher sessions, each sending a third of every flow,
    // interleaved, as fast as zenoh accepts them.
    let mut senders = Vec::new();
    for p in 0..3usize {
        let c = client(port).await;
        senders.push(tokio::spawn(async move {
            let most = FLOWS.iter().map(|f| f.count).max().unwrap();
            for i in (p..most).step_by(3) {
                for f in &FLOWS {
                    if i < f.count {
                        let (key, body, _) = payload(f, i);
                        put(&c, &key, body).await;
                    }
                }
            }
            c
        }));
    }
    let mut sessions = Vec::new();
    for s in senders {
        sessions.push(s.await.unwrap());
    }

    // Collect until every request has its one outcome (or replies stop).
    let total: usize = FLOWS.iter().map(|f| f.count).sum();
    let mut replies: HashMap<String, Reply> = HashMap::new();
    let mut duplicates = Vec::new();
    while replies.len() < total {
        let Some(r) = try_recv(&sub, Duration::from_secs(10)).await else {
            break;
        };
        let id = r.id().expect("every reply names its request");
        if id.ends_with(&usize::MAX.to_string()) {
            continue; // a late answer to a warm-up probe
        }
        if let Some(old) = replies.insert(id.clone(), r) {
            duplicates.push((id, old));
        }
    }
    let rss_after = vm_rss_kib();
    assert!(duplicates.is_empty(), "two outcomes: {duplicates:?}");

    // Daemon side: everything offered arrived, everything ended once.
    let stats = daemon.stats();
    println!(
        "\n{:<8} {:>7} {:>6} {:>6} {:>10} {:>6} {:>6}",
        "pipeline", "offered", "served", "busy", "superseded", "other", "lost"
    );
    for (f, (st, w)) in FLOWS.iter().zip(stats.iter().zip(&warm)) {
        let arrived = st.received - w;
        assert_eq!(arrived as usize, f.count, "{}: {st:?}", f.pipeline);
        assert_eq!(st.finished(), st.received, "{}: {st:?}", f.pipeline);
        let mine = |code: Option<&str>| {
            (0..f.count)
                .filter(|i| {
                    let id = format!("{}-{i}", f.pipeline);
                    replies.get(&id).is_some_and(|r| r.code() == code)
                })
                .count()
        };
        let served = mine(None);
        let busy = mine(Some(ErrorCode::Busy.code()));
        let superseded = mine(Some(ErrorCode::Superseded.code()));
        let answered = (0..f.count)
            .filter(|i| replies.contains_key(&format!("{}-{i}", f.pipeline)))
            .count();
        let lost = f.count - answered;
        let other = answered - served - busy - superseded;
        println!(
            "{:<8} {:>7} {:>6} {:>6} {:>10} {:>6} {:>6}",
            f.pipeline, f.count, served, busy, superseded, other, lost
        );
        assert_eq!(lost, 0, "{}: requests without an outcome", f.pipeline);
        assert_eq!(other, 0, "{}: only served / busy / superseded", f.pipeline);
        assert!(served > 0, "{}: nothing served", f.pipeline);
    }
    println!(
        "RSS before {} KiB, after {} KiB, growth {} KiB",
        rss_before,
        rss_after,
        rss_after as i64 - rss_before as i64
    );
    // Lower levels shed: the reject queue answered busy, the latest-wins
    // pipeline replaced frames.
    assert!(stats[1].error(ErrorCode::Busy) > 0, "{:?}", stats[1]);
    assert!(stats[2].error(ErrorCode::Superseded) > 0, "{:?}", stats[2]);
    // The top level never waited behind a lower one: once an rt frame had
    // arrived, no lower-level job started before it ran.
    let order = |r: &Reply, k: &str| -> u64 { r.meta(k).unwrap().parse().unwrap() };
    let runs = |p: &str| -> Vec<(u64, u64)> {
        replies
            .iter()
            .filter(|(id, r)| id.starts_with(&format!("{p}-")) && r.code().is_none())
            .map(|(_, r)| (order(r, "recv_order"), order(r, "run_order")))
            .collect()
    };
    let rt = runs("rt");
    let lower: Vec<(u64, u64)> = [runs("detect"), runs("bulk")].concat();
    let inversions = rt
        .iter()
        .flat_map(|&(h_recv, h_run)| {
            lower
                .iter()
                .filter(move |&&(_, l_run)| h_recv < l_run && l_run < h_run)
        })
        .count();
    assert_eq!(inversions, 0, "lower jobs started while an rt frame waited");
    // Every rt stream kept being served through the flood.
    for s in 0..FLOWS[0].streams {
        let n = replies
            .values()
            .filter(|r| r.code().is_none() && r.meta("stream") == Some(&format!("s{s}")))
            .filter(|r| r.meta("pipeline") == Some("rt"))
            .count();
        assert!(n > 0, "rt stream s{s} starved");
    }
    // Bounded queues bound memory: ~1.5k requests (≈1 MiB of payload) must
    // not grow the process by more than a generous allocator margin.
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    for s in sessions {
        s.close().await.unwrap();
    }
    daemon.shutdown(Duration::from_secs(5)).await;
}
