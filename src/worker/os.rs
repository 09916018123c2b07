//! OS-level placement of a worker thread: its scheduling policy (nice,
//! SCHED_FIFO, SCHED_IDLE) and CPU affinity, applied by the thread itself
//! before it takes its first job.

use crate::config::ThreadPolicy;

/// Applies the OS scheduling policy to the calling thread (Linux: per
/// thread).
pub fn apply_policy(policy: ThreadPolicy) -> Result<(), String> {
    let (rc, what) = match policy {
        ThreadPolicy::Default => return Ok(()),
        // SAFETY: plain syscalls on the calling thread's own id.
        ThreadPolicy::Nice(n) => (
            unsafe {
                let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
                libc::setpriority(libc::PRIO_PROCESS, tid, n)
            },
            format!("nice {n}"),
        ),
        ThreadPolicy::Fifo(p) => {
            let param = libc::sched_param { sched_priority: p };
            // SAFETY: pid 0 is the calling thread; `param` outlives the call.
            (
                unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) },
                format!("SCHED_FIFO priority {p}"),
            )
        }
        ThreadPolicy::Idle => {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: as above.
            (
                unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) },
                "SCHED_IDLE".to_string(),
            )
        }
    };
    if rc == 0 {
        Ok(())
    } else {
        let e = std::io::Error::last_os_error();
        Err(format!(
            "cannot set {what}: {e} (needs CAP_SYS_NICE, e.g. AmbientCapabilities=CAP_SYS_NICE in the unit, or an RLIMIT_RTPRIO)"
        ))
    }
}

/// Pins the calling thread to `cpus` (no-op when empty).
pub fn apply_affinity(cpus: &[usize]) -> Result<(), String> {
    if cpus.is_empty() {
        return Ok(());
    }
    // SAFETY: cpu_set_t is plain data; CPU_SET is bounds-checked by config
    // validation (every CPU < CPU_SETSIZE); pid 0 is the calling thread.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        let e = std::io::Error::last_os_error();
        let online = std::thread::available_parallelism().map_or(0, |n| n.get());
        Err(format!(
            "cannot pin to CPUs {cpus:?}: {e} (this machine has {online} CPU(s) available to the daemon; a systemd CPUAffinity= or cgroup cpuset may restrict them further)"
        ))
    }
}
