//! Worker liveness, read by the watchdog: sits beside the worker stage of the
//! data flow. Each worker stamps "model run started at" in its own atomic
//! slot around every model run and decode step and clears it afterwards; the
//! supervisor ([`crate::supervise`]) reads the slots without locks. A worker that
//! is idle (slot clear) or whose current run is younger than the allowed
//! maximum is making progress; anything else is stuck, and the daemon stops
//! telling systemd it is alive. Writing a slot is one relaxed store: nothing on
//! the hot path waits for the reader.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// One "run started at" stamp per worker, and whether it is still alive.
pub struct Progress {
    epoch: Instant,
    /// Microseconds since `epoch` plus one when a run started; 0 while the
    /// worker is between runs.
    started: Vec<AtomicU64>,
    /// Set when a worker thread ended by a panic outside its per-job guard
    /// (its stamp is cleared on unwinding, so it would look idle).
    dead: Vec<AtomicBool>,
}

/// Marks its worker dead if the thread unwinds past it.
pub struct Alive<'a> {
    flag: &'a AtomicBool,
}

impl Drop for Alive<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.flag.store(true, Relaxed);
        }
    }
}

/// A worker inside one model run for longer than allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stuck {
    pub worker: usize,
    pub running_for: Duration,
}

/// Clears the worker's stamp when the run ends (also on unwinding).
pub struct Running<'a> {
    slot: &'a AtomicU64,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.slot.store(0, Relaxed);
    }
}

impl Progress {
    pub fn new(workers: usize) -> Progress {
        Progress {
            epoch: Instant::now(),
            started: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            dead: (0..workers).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    /// Held by a worker thread for its whole life: if the thread dies by a
    /// panic, the worker is marked dead.
    pub fn alive(&self, worker: usize) -> Alive<'_> {
        Alive {
            flag: &self.dead[worker],
        }
    }

    /// The first worker whose thread died, if any.
    pub fn dead(&self) -> Option<usize> {
        self.dead.iter().position(|d| d.load(Relaxed))
    }

    /// Marks `worker` as inside a model run until the guard drops.
    pub fn running(&self, worker: usize) -> Running<'_> {
        let slot = &self.started[worker];
        slot.store(self.epoch.elapsed().as_micros() as u64 + 1, Relaxed);
        Running { slot }
    }

    /// The worker that has been inside one run the longest, if that is
    /// longer than `max_run`.
    pub fn stuck(&self, max_run: Duration) -> Option<Stuck> {
        let now = self.epoch.elapsed().as_micros() as u64 + 1;
        self.started
            .iter()
            .enumerate()
            .filter_map(|(worker, s)| {
                let t = s.load(Relaxed);
                (t != 0).then(|| Stuck {
                    worker,
                    running_for: Duration::from_micros(now.saturating_sub(t)),
                })
            })
            .filter(|s| s.running_for > max_run)
            .max_by_key(|s| s.running_for)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_and_short_runs_are_progress_long_runs_are_stuck() {
        let p = Progress::new(2);
        assert_eq!(p.stuck(Duration::ZERO), None, "idle workers are fine");
        let g = p.running(1);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(p.stuck(Duration::from_secs(60)), None);
        let s = p
            .stuck(Duration::from_millis(5))
            .expect("worker 1 is stuck");
        assert_eq!(s.worker, 1);
        assert!(s.running_for >= Duration::from_millis(20));
        drop(g);
        assert_eq!(p.stuck(Duration::ZERO), None, "the guard clears the stamp");
    }

    #[test]
    fn a_worker_that_unwinds_is_marked_dead() {
        let p = std::sync::Arc::new(Progress::new(2));
        let q = p.clone();
        let _ = std::thread::spawn(move || {
            let _alive = q.alive(1);
            panic!("worker dies");
        })
        .join();
        assert_eq!(p.dead(), Some(1));
        let _ok = p.alive(0);
        assert_eq!(p.dead(), Some(1));
    }
}
