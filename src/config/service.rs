//! `[service]` and the per-worker real-time knobs: how the daemon behaves
//! under a supervisor (systemd watchdog, status reports, start-up timeouts,
//! drain on SIGTERM) and where worker threads may run. Validated here like
//! every other section; [`crate::supervise`] and [`crate::worker`] consume it.

use std::time::Duration;

use super::{ConfigError, RawService, invalid};

/// Default time a SIGTERM leaves queued work to finish.
pub const DEFAULT_DRAIN_TIMEOUT_MS: u64 = 5000;
/// Default longest single model run (or decode step) that still counts as
/// progress for the watchdog.
pub const DEFAULT_MAX_RUN_MS: u64 = 10_000;
/// Default period of the `STATUS=` line with live counts.
pub const DEFAULT_STATUS_INTERVAL_MS: u64 = 5000;
/// Default start-up time granted per model load (TensorRT engine builds on a
/// Jetson take minutes: ~9.5 min reported on an Orin).
pub const DEFAULT_MODEL_LOAD_TIMEOUT_S: u64 = 1200;

/// How the daemon behaves as a supervised service (`[service]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    /// After SIGTERM, how long queued jobs may still run before the rest is
    /// answered with `shutting_down`.
    pub drain_timeout: Duration,
    /// A worker inside one model run for longer than this is stuck: the
    /// watchdog pings stop so systemd restarts the daemon.
    pub max_run: Duration,
    pub status_interval: Duration,
    /// `EXTEND_TIMEOUT_USEC` sent as each model starts loading.
    pub model_load_timeout: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            drain_timeout: Duration::from_millis(DEFAULT_DRAIN_TIMEOUT_MS),
            max_run: Duration::from_millis(DEFAULT_MAX_RUN_MS),
            status_interval: Duration::from_millis(DEFAULT_STATUS_INTERVAL_MS),
            model_load_timeout: Duration::from_secs(DEFAULT_MODEL_LOAD_TIMEOUT_S),
        }
    }
}

pub(super) fn cpu_list(worker: usize, cpus: Option<&[usize]>) -> Result<Vec<usize>, ConfigError> {
    let Some(cpus) = cpus else {
        return Ok(Vec::new());
    };
    let max = libc::CPU_SETSIZE as usize;
    if cpus.is_empty() {
        return Err(invalid(format!(
            "worker[{worker}].cpus = []: list at least one CPU, or leave cpus out to inherit the process affinity"
        )));
    }
    if let Some(c) = cpus.iter().find(|&&c| c >= max) {
        return Err(invalid(format!(
            "worker[{worker}].cpus: CPU {c} is out of range; expected CPU numbers 0 to {}",
            max - 1
        )));
    }
    let mut v = cpus.to_vec();
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// `[service]`: every value is a duration and must be non-zero.
pub(super) fn service_config(s: &RawService) -> Result<ServiceConfig, ConfigError> {
    let ms = |key: &str, v: Option<u64>, default: u64| -> Result<Duration, ConfigError> {
        match v {
            Some(0) => Err(invalid(format!("service.{key} = 0: must be at least 1"))),
            v => Ok(Duration::from_millis(v.unwrap_or(default))),
        }
    };
    let load_s = match s.model_load_timeout_s {
        Some(n) if n == 0 || n > 4000 => {
            return Err(invalid(format!(
                "service.model_load_timeout_s = {n}: expected 1 to 4000 (systemd's EXTEND_TIMEOUT_USEC holds at most ~71 min)"
            )));
        }
        n => n.unwrap_or(DEFAULT_MODEL_LOAD_TIMEOUT_S),
    };
    Ok(ServiceConfig {
        drain_timeout: ms(
            "drain_timeout_ms",
            s.drain_timeout_ms,
            DEFAULT_DRAIN_TIMEOUT_MS,
        )?,
        max_run: ms("max_run_ms", s.max_run_ms, DEFAULT_MAX_RUN_MS)?,
        status_interval: ms(
            "status_interval_ms",
            s.status_interval_ms,
            DEFAULT_STATUS_INTERVAL_MS,
        )?,
        model_load_timeout: Duration::from_secs(load_s),
    })
}
