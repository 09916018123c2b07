//! The daemon process as the operating system sees it — start time, CPU
//! time, memory, threads, open files — for the standard Prometheus
//! `process_*` series. Read only when a scrape asks (never on the hot
//! path), from `/proc/self` and `getrusage`; on a system without `/proc`
//! the fields that need it are `None` and their series are left out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// One reading of the process's resource use.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessStats {
    /// User plus system CPU time of every thread.
    pub cpu_seconds: f64,
    pub resident_bytes: Option<u64>,
    pub virtual_bytes: Option<u64>,
    /// Seconds since the Unix epoch when the process started.
    pub start_time_seconds: Option<f64>,
    pub threads: Option<u64>,
    pub open_fds: Option<u64>,
    /// The soft `RLIMIT_NOFILE`.
    pub max_fds: Option<u64>,
}

/// Reads the current process's figures.
pub fn read() -> ProcessStats {
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    let fields = stat.as_deref().and_then(stat_fields);
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| boot_time(&s));
    let page = page_size();
    let tick = clock_ticks();
    ProcessStats {
        cpu_seconds: cpu_time().as_secs_f64(),
        resident_bytes: fields.as_ref().map(|f| f.rss_pages * page),
        virtual_bytes: fields.as_ref().map(|f| f.vsize_bytes),
        start_time_seconds: match (&fields, boot, tick) {
            (Some(f), Some(b), Some(t)) => Some(b as f64 + f.start_ticks as f64 / t as f64),
            _ => None,
        },
        threads: fields.as_ref().map(|f| f.threads),
        open_fds: std::fs::read_dir("/proc/self/fd")
            .ok()
            // The directory handle being read is one of the entries.
            .map(|d| d.count().saturating_sub(1) as u64),
        max_fds: max_fds(),
    }
}

/// The `/proc/<pid>/stat` fields used here (proc(5) numbering).
#[derive(Debug, PartialEq)]
struct StatFields {
    /// (20) num_threads.
    threads: u64,
    /// (22) starttime, clock ticks after boot.
    start_ticks: u64,
    /// (23) vsize, bytes.
    vsize_bytes: u64,
    /// (24) rss, pages.
    rss_pages: u64,
}

/// Parses a stat line. The command name (field 2) is in parentheses and
/// may itself hold spaces and parentheses, so fields are counted from the
/// last `)`.
fn stat_fields(line: &str) -> Option<StatFields> {
    let rest = &line[line.rfind(')')? + 1..];
    // `rest` starts at field 3 (state): field n is rest[n - 3].
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(StatFields {
        threads: num(20)?,
        start_ticks: num(22)?,
        vsize_bytes: num(23)?,
        rss_pages: num(24)?,
    })
}

/// `btime` of `/proc/stat`: boot time, seconds since the epoch.
fn boot_time(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u64 } else { 4096 }
}

fn clock_ticks() -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (n > 0).then_some(n as u64)
}

fn cpu_time() -> Duration {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn max_fds() -> Option<u64> {
    // SAFETY: getrlimit writes into the zeroed struct we own.
    let mut r: libc::rlimit = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return None;
    }
    (r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur)
}

/// Now, in seconds since the epoch (for comparing with the start time).
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_odd_command_names() {
        // Fields 3.. of a real line; the name holds ") (" and spaces.
        let line = "4242 (re) (flex d) S 1 4242 4242 0 -1 4194560 2110 0 0 0 12 3 0 0 20 0 7 0 123456 987654321 2345 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0";
        let f = stat_fields(line).unwrap();
        assert_eq!(
            f,
            StatFields {
                threads: 7,
                start_ticks: 123456,
                vsize_bytes: 987654321,
                rss_pages: 2345
            }
        );
        assert_eq!(stat_fields("garbage"), None);
        assert_eq!(
            boot_time("cpu 1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1700000000)
        );
        assert_eq!(boot_time("cpu 1 2 3\n"), None);
    }

    #[test]
    fn this_process_reads_plausibly() {
        let before = unix_now();
        // Burn a little CPU so the counter moves off zero.
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let s = read();
        assert!(s.cpu_seconds > 0.0);
        assert!(s.resident_bytes.unwrap() > 1 << 20, "{s:?}");
        assert!(s.virtual_bytes.unwrap() >= s.resident_bytes.unwrap());
        let start = s.start_time_seconds.unwrap();
        assert!(
            start <= before + 1.0 && start > before - 86_400.0 * 365.0,
            "{start}"
        );
        assert!(s.threads.unwrap() >= 1);
        assert!(s.open_fds.unwrap() >= 3, "stdin, stdout, stderr: {s:?}");
    }
}
