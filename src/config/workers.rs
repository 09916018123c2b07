//! Stage two for `[[level]]` and `[[worker]]`: priority level names (highest
//! first) and which levels each worker thread serves, with its OS policy.

use std::collections::HashSet;

use super::raw::{RawConfig, RawLevel, RawWorker};
use super::service::cpu_list;
use super::{ConfigError, ThreadPolicy, WorkerConfig, invalid, positive};

/// Level names, highest first (`default` when none are given).
pub(super) fn levels(raw: Vec<RawLevel>) -> Result<Vec<String>, ConfigError> {
    let levels: Vec<String> = if raw.is_empty() {
        vec!["default".to_string()]
    } else {
        raw.into_iter().map(|l| l.name).collect()
    };
    let mut seen = HashSet::new();
    for (i, name) in levels.iter().enumerate() {
        if name.is_empty() || !seen.insert(name.as_str()) {
            return Err(invalid(format!(
                "level[{i}].name = {name:?}: level names must be non-empty and unique"
            )));
        }
    }
    Ok(levels)
}

/// The workers: `runtime.workers` identical workers serving every level,
/// or one per `[[worker]]` table.
pub(super) fn workers(
    raw: &RawConfig,
    level_index: &dyn Fn(&str, &str) -> Result<usize, ConfigError>,
    levels: usize,
) -> Result<Vec<WorkerConfig>, ConfigError> {
    if raw.worker.is_empty() {
        let n = positive("runtime.workers", raw.runtime.workers, 1)?;
        let all = WorkerConfig {
            levels: (0..levels).collect(),
            policy: ThreadPolicy::Default,
            cpus: Vec::new(),
        };
        return Ok(vec![all; n]);
    }
    if raw.runtime.workers.is_some() {
        return Err(invalid(
            "runtime.workers: give either runtime.workers or [[worker]] tables, not both",
        ));
    }
    raw.worker
        .iter()
        .enumerate()
        .map(|(i, w)| worker(i, w, level_index))
        .collect()
}

fn worker(
    i: usize,
    w: &RawWorker,
    level_index: &dyn Fn(&str, &str) -> Result<usize, ConfigError>,
) -> Result<WorkerConfig, ConfigError> {
    if w.levels.is_empty() {
        return Err(invalid(format!(
            "worker[{i}].levels = []: a worker must serve at least one level"
        )));
    }
    let mut idx = w
        .levels
        .iter()
        .map(|l| level_index(&format!("worker[{i}].levels"), l))
        .collect::<Result<Vec<_>, _>>()?;
    idx.sort_unstable();
    idx.dedup();
    Ok(WorkerConfig {
        levels: idx,
        policy: policy(i, w)?,
        cpus: cpu_list(i, w.cpus.as_deref())?,
    })
}

fn policy(i: usize, w: &RawWorker) -> Result<ThreadPolicy, ConfigError> {
    if w.sched_idle == Some(true) {
        if w.nice.is_some() || w.sched_fifo.is_some() {
            return Err(invalid(format!(
                "worker[{i}]: sched_idle = true excludes nice and sched_fifo (SCHED_IDLE has neither)"
            )));
        }
        return Ok(ThreadPolicy::Idle);
    }
    match (w.nice, w.sched_fifo) {
        (None, None) => Ok(ThreadPolicy::Default),
        (Some(n), None) if (-20..=19).contains(&n) => Ok(ThreadPolicy::Nice(n)),
        (Some(n), None) => Err(invalid(format!(
            "worker[{i}].nice = {n}: expected -20 (highest) to 19 (lowest)"
        ))),
        (None, Some(p)) if (1..=99).contains(&p) => Ok(ThreadPolicy::Fifo(p)),
        (None, Some(p)) => Err(invalid(format!(
            "worker[{i}].sched_fifo = {p}: expected a SCHED_FIFO priority from 1 to 99"
        ))),
        (Some(_), Some(_)) => Err(invalid(format!(
            "worker[{i}]: give either nice or sched_fifo; nice does not apply to SCHED_FIFO threads"
        ))),
    }
}
