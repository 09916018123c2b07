//! Supervision: it sits outside the data flow and watches it, above the
//! daemon (which never depends on it). [`run`] is the service entry point. Through the `NOTIFY_SOCKET` protocol (pure-Rust `sd-notify`) it
//! reports start-up progress (`STATUS=` plus `EXTEND_TIMEOUT_USEC=` before each
//! model load, because a TensorRT engine build can take minutes), `READY=1`
//! once every session is loaded and warmed up and intake is open, a periodic
//! `STATUS=` line with live counts, `WATCHDOG=1` at half the interval systemd
//! asked for (`WATCHDOG_USEC`) **only while no worker is stuck** in one model
//! run for longer than `service.max_run_ms` ([`crate::obs::health`]), and
//! `STOPPING=1` when shutdown begins. Without `NOTIFY_SOCKET` every send is a
//! no-op, but a stuck worker is still logged.
//!
//! SIGHUP does not reload (see [`check_on_hup`]): a reload would have to
//! rebuild and re-warm every session (minutes with TensorRT) and re-bind the
//! zenoh endpoints, which is a restart in all but name.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::config::{Config, ServiceConfig};
use crate::daemon::{Daemon, StartError, StartStep};
use crate::error::ErrorCode;
use crate::obs::health::Stuck;

/// Health checks happen at least this often when systemd set no watchdog
/// (a stuck worker is then only logged).
const MIN_CHECK_PERIOD: Duration = Duration::from_millis(50);
/// Extra stop time asked for beyond the drain timeout: closing zenoh and
/// dropping the sessions after the drain.
const STOP_MARGIN: Duration = Duration::from_secs(5);

/// Sends state changes to systemd, if the daemon runs under it.
pub struct Notifier {
    enabled: bool,
    /// Interval systemd expects pings within (`WATCHDOG_USEC`, honouring
    /// `WATCHDOG_PID`).
    watchdog: Option<Duration>,
    cfg: ServiceConfig,
}

impl Notifier {
    pub fn from_env(cfg: &ServiceConfig) -> Notifier {
        let enabled = std::env::var_os("NOTIFY_SOCKET").is_some();
        let watchdog = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
        if enabled {
            tracing::info!(?watchdog, max_run = ?cfg.max_run, "systemd notify socket found");
        }
        Notifier {
            enabled,
            watchdog,
            cfg: cfg.clone(),
        }
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        if let Err(e) = sd_notify::notify(states) {
            // Not fatal: the daemon still serves; systemd will time out or
            // restart it, which the log line explains.
            tracing::warn!(error = %e, "cannot send to systemd's NOTIFY_SOCKET");
        }
    }

    /// Before each session load: say what is loading and extend the start
    /// timeout by one model's allowance, so a slow TensorRT build is not
    /// killed but a hung one still is.
    pub fn loading(&self, s: &StartStep<'_>) {
        let status = format!(
            "loading {}/{}: pipeline {} for worker {} (load and warm-up)",
            s.index, s.total, s.pipeline, s.worker
        );
        self.send(&[
            NotifyState::Status(&status),
            NotifyState::ExtendTimeoutUsec(usec(self.cfg.model_load_timeout)),
        ]);
    }

    pub fn start_failed(&self, e: &StartError) {
        let status = format!("start failed: {e}");
        self.send(&[NotifyState::Status(&status)]);
    }

    /// Serves until `shutdown` completes, or until a worker thread dies
    /// (returned: the daemon must exit non-zero so systemd restarts it):
    /// READY=1 first, then status lines, log summaries and watchdog pings.
    pub async fn supervise(
        &self,
        daemon: &Daemon,
        shutdown: impl Future<Output = ()>,
    ) -> Option<usize> {
        let status = status_line(daemon);
        self.send(&[NotifyState::Ready, NotifyState::Status(&status)]);
        if self.enabled {
            tracing::info!("notified systemd: READY=1");
        }
        let check_period = match self.watchdog {
            Some(w) => w / 2,
            None => (self.cfg.max_run / 2).max(MIN_CHECK_PERIOD),
        };
        let mut check = tokio::time::interval(check_period);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut report = tokio::time::interval(self.cfg.status_interval);
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        report.tick().await; // the first tick is immediate: READY carried it
        let mut stuck: Option<Stuck> = None;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return None,
                _ = report.tick() => {
                    daemon.flush_logs();
                    if stuck.is_none() {
                        self.send(&[NotifyState::Status(&status_line(daemon))]);
                    }
                }
                _ = check.tick() => {
                    if let Some(w) = daemon.dead_worker() {
                        self.died(w);
                        return Some(w);
                    }
                    stuck = self.check(daemon, stuck);
                }
            }
        }
    }

    /// A worker thread is gone: no more watchdog pings, say why.
    fn died(&self, worker: usize) {
        let status = format!(
            "DEAD: worker {worker} died (a panic outside its per-job guard); stopping so systemd restarts the daemon"
        );
        tracing::error!(
            worker,
            "worker thread died; stopping with a non-zero exit so systemd restarts the daemon"
        );
        self.send(&[NotifyState::Status(&status)]);
    }

    /// One health check: ping if every worker is idle or within its run
    /// budget; otherwise withhold the ping (systemd restarts the daemon
    /// once its WatchdogSec passes) and say why, once per episode.
    fn check(&self, daemon: &Daemon, was: Option<Stuck>) -> Option<Stuck> {
        let now = daemon.stuck_worker(self.cfg.max_run);
        match (was, now) {
            (_, None) => {
                if let Some(w) = was {
                    tracing::warn!(
                        worker = w.worker,
                        "worker finished its over-long model run; watchdog pings resume"
                    );
                    self.send(&[NotifyState::Status(&status_line(daemon))]);
                }
                if self.watchdog.is_some() {
                    self.send(&[NotifyState::Watchdog]);
                }
            }
            (None, Some(s)) => {
                let status = format!(
                    "STUCK: worker {} has been inside one model run for {:.1} s (service.max_run_ms = {}); watchdog pings withheld",
                    s.worker,
                    s.running_for.as_secs_f64(),
                    self.cfg.max_run.as_millis()
                );
                tracing::error!(worker = s.worker, running_for = ?s.running_for, max_run = ?self.cfg.max_run, "worker stuck in a model run; watchdog pings withheld so systemd restarts the daemon");
                self.send(&[NotifyState::Status(&status)]);
            }
            (Some(_), Some(_)) => {}
        }
        now
    }

    /// Shutdown begins: tell systemd, and make sure its stop timeout covers
    /// the drain.
    /// `drain`: how long queued work may run; `max_run`: how long a run
    /// still going when the drain ends is waited for (its answer is sent).
    pub fn stopping(&self, drain: Duration, max_run: Duration) {
        let status = format!("stopping: draining for up to {} ms", drain.as_millis());
        self.send(&[
            NotifyState::Stopping,
            NotifyState::Status(&status),
            NotifyState::ExtendTimeoutUsec(usec(drain + max_run + STOP_MARGIN)),
        ]);
    }
}

fn usec(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// The `STATUS=` line while serving: what `systemctl status reflexd` shows.
pub fn status_line(daemon: &Daemon) -> String {
    let tensor = daemon.stats();
    let gens = daemon.generation_stats();
    let frames: u64 = tensor.iter().map(|s| s.ok).sum();
    let tokens: u64 = gens.iter().map(|s| s.tokens).sum();
    let misses: u64 = tensor
        .iter()
        .chain(&gens)
        .map(|s| s.error(ErrorCode::DeadlineExceeded))
        .sum();
    let errors: u64 = tensor
        .iter()
        .chain(&gens)
        .map(|s| s.errors.values().sum::<u64>())
        .sum();
    let live: usize = daemon.live_generations().iter().sum();
    format!(
        "serving: {frames} frames, {tokens} tokens, {misses} deadline misses, {errors} errors, {live} generations live"
    )
}

/// SIGHUP handler: reload is not offered (module docs say why). Instead the
/// config file is validated and the result logged, so an operator who edited
/// it learns whether `systemctl restart reflexd` would succeed, and a stray
/// SIGHUP no longer terminates the daemon (its default action).
pub async fn check_on_hup(path: PathBuf) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot install the SIGHUP handler");
            return;
        }
    };
    while hup.recv().await.is_some() {
        match Config::load(&path) {
            Ok(_) => tracing::warn!(
                config = %path.display(),
                "SIGHUP: reload is not supported (sessions must be rebuilt and re-warmed); the config file is valid, restart the service to apply it"
            ),
            Err(e) => tracing::error!(
                config = %path.display(),
                "SIGHUP: reload is not supported, and the config file is invalid, so a restart would fail: {e}"
            ),
        }
    }
}

/// Why the service stopped other than by request.
#[derive(thiserror::Error, Debug)]
pub enum ServeError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(
        "worker {0} died (a panic outside its per-job guard); the daemon stopped so that systemd restarts it"
    )]
    WorkerDied(usize),
}

/// Runs the daemon until `shutdown` completes, then tears down within the
/// configured drain timeout. Under systemd (`NOTIFY_SOCKET` set) it reports
/// start-up progress, READY=1 once every session is warm, live status and
/// watchdog pings, and STOPPING=1. A worker thread that dies ends the run
/// with an error (non-zero exit), after the same teardown.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let notifier = Notifier::from_env(&config.service);
    tokio::pin!(shutdown);
    // A stop request while models load (minutes with TensorRT) ends start-up
    // at once: nothing has been announced yet, so there is nothing to drain.
    let observe = |s: StartStep<'_>| notifier.loading(&s);
    let started = tokio::select! {
        d = Daemon::start_observed(config, &observe) => d,
        _ = &mut shutdown => {
            tracing::info!("stop requested while starting; not serving");
            return Ok(());
        }
    };
    let daemon = match started {
        Ok(d) => d,
        Err(e) => {
            notifier.start_failed(&e);
            return Err(e.into());
        }
    };
    let died = notifier.supervise(&daemon, shutdown).await;
    let drain = daemon.config().service.drain_timeout;
    notifier.stopping(drain, daemon.config().service.max_run);
    daemon.shutdown(drain).await;
    match died {
        Some(w) => Err(ServeError::WorkerDied(w)),
        None => Ok(()),
    }
}
