//! Cost per token, the third generation metric beside TTFT and TPOT: the CPU
//! time a generation's steps consumed, read from thread CPU clocks around
//! each step (the worker thread's and those of its session's intra-op
//! threads, which [`PoolThreads`] records as ONNX Runtime creates them),
//! and — on boards with power rails — the energy measured over those steps
//! (`obs::power`). A batched step's cost is shared by the generations it
//! served, in proportion to the tokens it gave each, so batching and
//! speculation show up here as a smaller figure per token, not only as a
//! shorter TPOT. Reading a clock is one `clock_gettime` per thread, a few
//! hundred nanoseconds: cheap enough for every step.

use std::sync::{Arc, Mutex};

use serde::Serialize;

/// CPU time of the calling thread, ns (0 if the clock cannot be read).
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn clock_ns(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; an invalid clock id only makes
    // the call fail.
    if unsafe { libc::clock_gettime(id, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU clocks of the threads that run a session's steps: the caller's and
/// the session's intra-op pool threads.
#[derive(Clone, Default, Debug)]
pub struct CpuClock {
    pool: Vec<libc::clockid_t>,
}

impl CpuClock {
    /// Total CPU time so far of the calling thread plus the pool threads.
    pub fn now_ns(&self) -> u64 {
        thread_cpu_ns() + self.pool.iter().map(|&c| clock_ns(c)).sum::<u64>()
    }

    pub fn pool_threads(&self) -> usize {
        self.pool.len()
    }
}

/// An ONNX Runtime thread manager that starts intra-op pool threads as
/// named OS threads and records each one's CPU clock, so the CPU time of a
/// step can include the work the pool did for it.
#[derive(Clone, Default)]
pub struct PoolThreads {
    clocks: Arc<Mutex<Vec<libc::clockid_t>>>,
}

impl PoolThreads {
    /// The clocks of the threads started so far (the pool is complete once
    /// the session is built).
    pub fn clock(&self) -> CpuClock {
        CpuClock {
            pool: self
                .clocks
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

impl ort::environment::ThreadManager for PoolThreads {
    type Thread = std::thread::JoinHandle<()>;

    fn create(&self, work: impl FnOnce() + Send + 'static) -> ort::Result<Self::Thread> {
        let clocks = self.clocks.clone();
        std::thread::Builder::new()
            .name("reflexd-ort".into())
            .spawn(move || {
                let mut id: libc::clockid_t = 0;
                // SAFETY: asks for the calling thread's own CPU clock.
                if unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut id) } == 0 {
                    clocks.lock().unwrap_or_else(|e| e.into_inner()).push(id);
                }
                work();
            })
            .map_err(|e| ort::Error::new(e.to_string()))
    }

    fn join(thread: Self::Thread) -> ort::Result<()> {
        thread
            .join()
            .map_err(|_| ort::Error::new("an onnxruntime pool thread panicked"))
    }
}

/// What a generation's steps consumed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    pub cpu_ns: u64,
    /// Board energy attributed to its steps (µJ); `None` without rails.
    pub energy_uj: Option<f64>,
}

impl Cost {
    /// Adds one step's share: `cpu_ns` of CPU and `energy_uj` if measured.
    pub fn add(&mut self, cpu_ns: u64, energy_uj: Option<f64>) {
        self.cpu_ns += cpu_ns;
        if let Some(e) = energy_uj {
            *self.energy_uj.get_or_insert(0.0) += e;
        }
    }

    /// The figures a final message reports for `tokens` output tokens.
    pub fn report(&self, tokens: usize) -> CostReport {
        let per = |x: f64| (tokens > 0).then(|| x / tokens as f64);
        let cpu_ms = self.cpu_ns as f64 / 1e6;
        let energy_mj = self.energy_uj.map(|e| e / 1e3);
        CostReport {
            cpu_ms,
            cpu_ms_per_token: per(cpu_ms),
            energy_mj,
            energy_mj_per_token: energy_mj.and_then(per),
        }
    }
}

/// A generation's cost as its final message carries it.
#[derive(Serialize, Clone, Copy, Debug, PartialEq)]
pub struct CostReport {
    pub cpu_ms: f64,
    pub cpu_ms_per_token: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub energy_mj: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub energy_mj_per_token: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_clock_counts_this_threads_work_only() {
        let t0 = thread_cpu_ns();
        let mut x = 0u64;
        for i in 0..3_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let busy = thread_cpu_ns() - t0;
        assert!(busy > 0, "work advanced the thread clock");
        let t1 = thread_cpu_ns();
        std::thread::sleep(std::time::Duration::from_millis(30));
        assert!(thread_cpu_ns() - t1 < 20_000_000, "sleeping costs no CPU");
    }

    #[test]
    fn pool_threads_report_their_clocks() {
        use ort::environment::ThreadManager;
        let pool = PoolThreads::default();
        let h = pool
            .create(|| {
                let mut x = 0u64;
                for i in 0..2_000_000u64 {
                    x = x.wrapping_add(i * i);
                }
                std::hint::black_box(x);
            })
            .unwrap();
        PoolThreads::join(h).unwrap();
        assert_eq!(pool.clock().pool_threads(), 1);
        let c = Cost::default().report(0);
        assert_eq!(c.cpu_ms_per_token, None);
        let mut cost = Cost::default();
        cost.add(4_000_000, None);
        cost.add(2_000_000, Some(300.0));
        let r = cost.report(3);
        assert_eq!(r.cpu_ms, 6.0);
        assert_eq!(r.cpu_ms_per_token, Some(2.0));
        assert!((r.energy_mj_per_token.unwrap() - 0.1).abs() < 1e-12);
    }
}
