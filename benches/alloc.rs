//! Heap allocations per frame on the hot path (issue 12), counted by a
//! global allocator, per OS thread: the worker thread (`reflexd-w0`) is the
//! figure of interest; zenoh's threads and the client are shown beside it.
//! VAD frames (Silero, 512 raw f32 samples + attachment, stateful with
//! carried context) go through a real daemon on loopback, one at a time.
//!
//! Only the daemon's stable surface is used (`Config`, `Daemon`, zenoh), so
//! the same file builds against earlier revisions of the library: that is
//! how the "before" column in BENCHMARKS.md was measured.
//!
//!   cargo bench --bench alloc [-- --frames 2000]
//!
//! Counts are of Rust allocations (`GlobalAlloc`); ONNX Runtime's own C++
//! allocations are not seen here (its arena reuses its buffers).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use reflexd::{Config, Daemon};

const SLOTS: usize = 256;

/// Allocations and bytes per OS thread, in a fixed table (the allocator
/// must not allocate).
struct Counting;

static TID: [AtomicU32; SLOTS] = [const { AtomicU32::new(0) }; SLOTS];
static COUNT: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
static BYTES: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];

fn gettid() -> u32 {
    // SAFETY: a syscall without arguments.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

fn record(size: usize) {
    let tid = gettid();
    let mut i = (tid as usize).wrapping_mul(2_654_435_761) % SLOTS;
    for _ in 0..SLOTS {
        let cur = TID[i].load(Relaxed);
        if cur == tid
            || (cur == 0 && TID[i].compare_exchange(0, tid, Relaxed, Relaxed).is_ok())
            || TID[i].load(Relaxed) == tid
        {
            COUNT[i].fetch_add(1, Relaxed);
            BYTES[i].fetch_add(size as u64, Relaxed);
            return;
        }
        i = (i + 1) % SLOTS;
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        record(l.size());
        // SAFETY: forwarded as given.
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        record(l.size());
        // SAFETY: forwarded as given.
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        record(n);
        // SAFETY: forwarded as given.
        unsafe { System.realloc(p, l, n) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded as given.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// (thread name, allocations, bytes) for every thread seen.
fn snapshot() -> Vec<(u32, String, u64, u64)> {
    (0..SLOTS)
        .filter_map(|i| {
            let tid = TID[i].load(Relaxed);
            (tid != 0).then(|| {
                let name = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "(gone)".into());
                (tid, name, COUNT[i].load(Relaxed), BYTES[i].load(Relaxed))
            })
        })
        .collect()
}

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const VAD: &str = r#"
[runtime]
intra_op_threads = 1
[[worker]]
levels = ["default"]
[[pipeline]]
name = "vad"
model = "models/fetched/silero_vad.onnx"
input = "a/mic/*"
output = "a/vad"
deadline_ms = 1000
overflow = "latest"
format = "raw"
raw = { tensor = "input", dtype = "f32", shape = [1, 512] }
constants.sr = { dtype = "i64", shape = [], data = [16000] }
state = [{ input = "state", output = "stateN" }]
context = [{ input = "input", keep = 64 }]
"#;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let frames: usize = std::env::args()
        .skip_while(|a| a != "--frames")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = format!("[zenoh]\nlisten = [\"tcp/127.0.0.1:{port}\"]\nscouting = false\n{VAD}");
    let cfg = Config::from_toml(&text, &repo()).expect("config");
    let daemon = Daemon::start(cfg).await.expect("start");
    let json = format!(
        r#"{{ mode: "peer", listen: {{ endpoints: [] }}, connect: {{ endpoints: ["tcp/127.0.0.1:{port}"] }},
             scouting: {{ multicast: {{ enabled: false }}, gossip: {{ enabled: false }} }} }}"#
    );
    let c = zenoh::open(zenoh::Config::from_json5(&json).unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sub = c.declare_subscriber("a/vad/**").await.unwrap();
    let publisher = c.declare_publisher("a/mic/front").await.unwrap();
    let samples: Vec<u8> = (0..512)
        .flat_map(|i| ((i as f32 * 0.01).sin() * 0.1).to_le_bytes())
        .collect();
    let send = |i: usize| {
        let p = publisher
            .put(samples.clone())
            .attachment(format!("id=f{i};seq={i}"));
        async move { p.await.unwrap() }
    };
    // Warm-up: connections, publisher caches, ORT's arena, stream state.
    for i in 0..300 {
        send(i).await;
        let _ = tokio::time::timeout(Duration::from_secs(5), sub.recv_async()).await;
    }
    let before = snapshot();
    let t0 = Instant::now();
    let mut answered = 0;
    for i in 0..frames {
        send(300 + i).await;
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), sub.recv_async()).await {
            answered += 1;
        }
    }
    let took = t0.elapsed();
    let after = snapshot();
    println!(
        "{frames} VAD frames, {answered} answered, {:.0} µs per round trip (this machine, not a latency figure)",
        took.as_secs_f64() * 1e6 / frames as f64
    );
    println!(
        "\n{:<22} {:>14} {:>14}",
        "thread", "allocs/frame", "bytes/frame"
    );
    let mut rows: Vec<(String, f64, f64)> = Vec::new();
    for (tid, name, n, b) in &after {
        let (n0, b0) = before
            .iter()
            .find(|x| x.0 == *tid)
            .map_or((0, 0), |x| (x.2, x.3));
        let (dn, db) = (n - n0, b - b0);
        if dn == 0 {
            continue;
        }
        let key = name.clone();
        match rows.iter_mut().find(|r| r.0 == key) {
            Some(r) => {
                r.1 += dn as f64;
                r.2 += db as f64;
            }
            None => rows.push((key, dn as f64, db as f64)),
        }
    }
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (name, n, b) in rows {
        println!(
            "{name:<22} {:>14.2} {:>14.0}",
            n / frames as f64,
            b / frames as f64
        );
    }
    daemon.shutdown(Duration::from_secs(2)).await;
}
