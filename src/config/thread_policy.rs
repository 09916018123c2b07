//! How the OS schedules one worker thread (`[[worker]] nice`, `sched_fifo`,
//! `sched_idle`): validated in stage two, applied by the worker thread itself
//! (`worker::apply_policy`) before it takes its first job.

/// How the OS schedules a worker thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadPolicy {
    /// Inherited (SCHED_OTHER, nice 0).
    Default,
    /// SCHED_OTHER with this nice value: a worker serving lower levels can
    /// be made to yield the CPU (raising nice needs no privilege).
    Nice(i32),
    /// SCHED_FIFO at this priority (1-99): the thread preempts every normal
    /// thread as soon as it is runnable. Needs CAP_SYS_NICE.
    Fifo(i32),
    /// SCHED_IDLE: runs only when no normal thread wants the CPU, so every
    /// wake-up of a zenoh I/O thread or a higher-level worker preempts it at
    /// once (nice only lowers its share). For workers serving only
    /// background levels; needs no privilege.
    Idle,
}

/// The suffix `check` and the benchmarks print after a worker's levels:
/// empty for the default policy, else " (nice N)" / " (SCHED_FIFO P)".
impl std::fmt::Display for ThreadPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ThreadPolicy::Default => Ok(()),
            ThreadPolicy::Nice(n) => write!(f, " (nice {n})"),
            ThreadPolicy::Fifo(p) => write!(f, " (SCHED_FIFO {p})"),
            ThreadPolicy::Idle => write!(f, " (SCHED_IDLE)"),
        }
    }
}
