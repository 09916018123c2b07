//! Stage two of the fleet settings: the `[fleet]` table (whether this
//! daemon answers other daemons' offloaded requests, the zenoh lease that
//! bounds how long a dead or cut-off node goes unnoticed, the bound on
//! requests in flight to another node) and each pipeline's
//! `offload = { to, when, timeout_ms }`. A pipeline whose model file is
//! missing and whose offload policy is `missing_model` leaves the local
//! pipelines here and becomes a remote-only route (no session is loaded
//! for it): see `io::fleet`.

use std::time::Duration;

use serde::Deserialize;

use super::common::At;
use super::{ConfigError, GeneratorConfig, PipelineConfig, invalid};

/// Default bound on one pipeline's requests in flight to its target.
pub const DEFAULT_MAX_INFLIGHT: usize = 64;
/// Default wait for a generation's first remote message before failing over.
pub const DEFAULT_GEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest lease accepted: zenoh sends keep-alives at a quarter of it.
pub const MIN_LEASE: Duration = Duration::from_millis(200);

/// `[fleet]` as written.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    pub serve: Option<bool>,
    pub lease_ms: Option<u64>,
    pub max_inflight: Option<usize>,
}

/// `offload = { … }` of a `[[pipeline]]`, as written.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RawOffload {
    pub to: String,
    pub when: OffloadWhen,
    pub timeout_ms: Option<u64>,
}

/// When a pipeline's requests go to its target.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OffloadWhen {
    /// Only what the local scheduler would refuse or drop: a full queue
    /// (`busy`) or, for a stateless `latest` pipeline, a superseded frame;
    /// for a generation, a command that would wait for a busy model.
    Busy,
    /// Every request, while the target is up; the local model otherwise.
    Always,
    /// Only when the model file is missing at start: the pipeline is then
    /// remote-only, and fails with `offload_unavailable` while the target
    /// is down.
    MissingModel,
}

impl OffloadWhen {
    pub fn as_str(self) -> &'static str {
        match self {
            OffloadWhen::Busy => "busy",
            OffloadWhen::Always => "always",
            OffloadWhen::MissingModel => "missing_model",
        }
    }
}

/// A pipeline's validated offload policy.
#[derive(Clone, Debug, PartialEq)]
pub struct OffloadConfig {
    /// The target daemon's node name (its `metrics.node`).
    pub to: String,
    pub when: OffloadWhen,
    /// Tensor pipelines: longest wait for the remote answer. Generation
    /// pipelines: longest wait for the first remote message.
    pub timeout: Duration,
}

/// The `[fleet]` table, validated, plus the remote-only pipelines.
#[derive(Clone, Debug, Default)]
pub struct FleetConfig {
    /// Answer other daemons' offloaded requests on `<node>/offload/<pipeline>`.
    pub serve: bool,
    /// zenoh link lease (`transport/link/tx/lease`); `None` keeps zenoh's
    /// default (10 s) or the zenoh file's.
    pub lease: Option<Duration>,
    pub max_inflight: usize,
    /// Tensor pipelines with `when = "missing_model"` whose model is absent.
    pub remote_tensors: Vec<PipelineConfig>,
    /// Generation pipelines with `when = "missing_model"` whose model is absent.
    pub remote_gens: Vec<GeneratorConfig>,
}

impl FleetConfig {
    /// Whether anything offloads or serves (a daemon without either
    /// declares no fleet entity at all).
    pub fn offloads(&self, pipelines: &[PipelineConfig], gens: &[GeneratorConfig]) -> bool {
        !self.remote_tensors.is_empty()
            || !self.remote_gens.is_empty()
            || pipelines.iter().any(|p| p.offload.is_some())
            || gens.iter().any(|g| g.offload.is_some())
    }
}

/// The key a node answers offloaded requests of `pipeline` on.
pub fn offload_key(node: &str, pipeline: &str) -> String {
    format!("{node}/offload/{pipeline}")
}

/// Where a node takes cancels of offloaded generations of `pipeline`.
pub fn offload_cancel_key(node: &str, pipeline: &str) -> String {
    format!("{node}/offload/{pipeline}/cancel")
}

pub(super) fn fleet_config(r: &RawFleet) -> Result<FleetConfig, ConfigError> {
    let lease = match r.lease_ms {
        None => None,
        Some(ms) if Duration::from_millis(ms) < MIN_LEASE => {
            return Err(invalid(format!(
                "fleet.lease_ms = {ms}: at least {} (zenoh sends keep-alives at a quarter of the lease)",
                MIN_LEASE.as_millis()
            )));
        }
        Some(ms) => Some(Duration::from_millis(ms)),
    };
    let max_inflight = match r.max_inflight {
        Some(0) => return Err(invalid("fleet.max_inflight = 0: must be at least 1")),
        n => n.unwrap_or(DEFAULT_MAX_INFLIGHT),
    };
    Ok(FleetConfig {
        serve: r.serve.unwrap_or(false),
        lease,
        max_inflight,
        remote_tensors: Vec::new(),
        remote_gens: Vec::new(),
    })
}

/// A node name as `metrics.node` accepts it (a zenoh key without wildcards).
pub fn valid_node(node: &str) -> bool {
    !node.is_empty()
        && !node.starts_with('/')
        && !node.ends_with('/')
        && !node.contains(['*', '$', '?', '#', ' '])
        && zenoh::key_expr::OwnedKeyExpr::autocanonize(node.to_string()).is_ok()
}

/// Validates one pipeline's `offload`; `default_timeout` applies when
/// `timeout_ms` is absent; `stateful` tensor pipelines cannot split their
/// frames between two nodes by load.
pub(super) fn offload(
    at: &At,
    raw: Option<RawOffload>,
    default_timeout: Duration,
    stateful: bool,
) -> Result<Option<OffloadConfig>, ConfigError> {
    let Some(r) = raw else { return Ok(None) };
    if !valid_node(&r.to) {
        return Err(at.err(
            "offload.to",
            format!(
                "= {:?}: expected the target's node name (its metrics.node), a zenoh key without wildcards",
                r.to
            ),
        ));
    }
    if stateful && r.when == OffloadWhen::Busy {
        return Err(at.err(
            "offload.when",
            "= \"busy\": a stateful pipeline carries state from frame to frame, so its frames cannot be split between nodes by load; use \"always\" (the target keeps the state while it is up) or \"missing_model\"",
        ));
    }
    let timeout = match r.timeout_ms {
        Some(0) => return Err(at.err("offload.timeout_ms", "= 0: must be at least 1")),
        Some(ms) => Duration::from_millis(ms),
        None => default_timeout,
    };
    Ok(Some(OffloadConfig {
        to: r.to,
        when: r.when,
        timeout,
    }))
}

/// Moves pipelines whose model is missing and whose policy allows it into
/// the remote-only lists; checks no pipeline offloads to this node itself.
pub(super) fn split(
    fleet: &mut FleetConfig,
    node: &str,
    pipelines: &mut Vec<PipelineConfig>,
    gens: &mut Vec<GeneratorConfig>,
) -> Result<(), ConfigError> {
    let own = |name: &str, o: &Option<OffloadConfig>| match o {
        Some(o) if o.to == node => Err(invalid(format!(
            "pipeline {name:?}: offload.to = {:?} is this daemon's own metrics.node",
            o.to
        ))),
        _ => Ok(()),
    };
    let remote = |o: &Option<OffloadConfig>, model: &std::path::Path| {
        o.as_ref()
            .is_some_and(|o| o.when == OffloadWhen::MissingModel && !model.exists())
    };
    for p in pipelines.iter() {
        own(&p.name, &p.offload)?;
    }
    for g in gens.iter() {
        own(&g.name, &g.offload)?;
    }
    let (r, local): (Vec<_>, Vec<_>) = std::mem::take(pipelines)
        .into_iter()
        .partition(|p| remote(&p.offload, &p.model));
    *pipelines = local;
    fleet.remote_tensors = r;
    let (r, local): (Vec<_>, Vec<_>) = std::mem::take(gens)
        .into_iter()
        .partition(|g| remote(&g.offload, &g.model));
    *gens = local;
    fleet.remote_gens = r;
    Ok(())
}

/// Levels besides its own at which this daemon runs offloaded requests of
/// tensor pipeline `p`: any level whose every worker also serves `p`'s
/// level (so holds its session). Only unbatched `reject` pipelines of a
/// serving daemon take per-request levels: a `latest` stream's slot and a
/// batched pipeline's ready queue belong to one level.
pub fn served_levels(cfg: &super::Config, p: &PipelineConfig) -> Vec<usize> {
    if !cfg.fleet.serve || p.batch.is_some() || p.overflow != super::Overflow::Reject {
        return Vec::new();
    }
    runnable_levels(cfg, p.level)
        .into_iter()
        .filter(|&l| l != p.level)
        .collect()
}

/// Levels at which work of a pipeline at `level` can run: served by at
/// least one worker, and every worker serving them holds `level`'s sessions.
pub fn runnable_levels(cfg: &super::Config, level: usize) -> Vec<usize> {
    (0..cfg.levels.len())
        .filter(|&l| {
            let mut serving = cfg
                .workers
                .iter()
                .filter(|w| w.levels.contains(&l))
                .peekable();
            serving.peek().is_some() && serving.all(|w| w.levels.contains(&level))
        })
        .collect()
}

/// The level an offloaded request asking for level `name` runs at: that
/// level if allowed, else the allowed level nearest to it (the higher one
/// on a tie); `own` when the name is unknown here or nothing else is allowed.
pub fn resolve_level(levels: &[String], allowed: &[usize], own: usize, name: &str) -> usize {
    let Some(want) = levels.iter().position(|l| l == name) else {
        return own;
    };
    allowed
        .iter()
        .copied()
        .chain(std::iter::once(own))
        .min_by_key(|&l| (l.abs_diff(want), l))
        .unwrap_or(own)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    fn pipeline(model: &str, extra: &str) -> String {
        format!(
            "[[pipeline]]\nname = \"a\"\nmodel = \"{model}\"\ninput = \"in/*\"\noutput = \"out\"\n{extra}\n"
        )
    }

    fn err(text: &str) -> String {
        Config::from_toml(text, Path::new("/base"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn offload_keys_are_validated_with_their_names() {
        let off = |o: &str| pipeline("m.onnx", &format!("offload = {{ {o} }}"));
        let e = err(&off("to = \"srv/*\", when = \"always\""));
        assert!(e.contains("offload.to") && e.contains("srv/*"), "{e}");
        let e = err(&off("to = \"srv\", when = \"sometimes\""));
        assert!(e.contains("sometimes"), "{e}");
        let e = err(&off("to = \"srv\", when = \"always\", timeout_ms = 0"));
        assert!(e.contains("offload.timeout_ms"), "{e}");
        let e =
            err(&("[metrics]\nnode = \"me\"\n".to_string()
                + &off("to = \"me\", when = \"always\"")));
        assert!(e.contains("own metrics.node"), "{e}");
        let e = err(&("[fleet]\nlease_ms = 10\n".to_string() + &pipeline("m.onnx", "")));
        assert!(e.contains("fleet.lease_ms"), "{e}");
        let e = err(&("[fleet]\nmax_inflight = 0\n".to_string() + &pipeline("m.onnx", "")));
        assert!(e.contains("fleet.max_inflight"), "{e}");
    }

    #[test]
    fn stateful_pipeline_cannot_offload_by_load() {
        let state = "overflow = \"latest\"\nstate = [{ input = \"s\", output = \"s2\" }]\n";
        let busy = "offload = { to = \"srv\", when = \"busy\" }";
        let e = err(&pipeline("m.onnx", &format!("{state}{busy}")));
        assert!(e.contains("offload.when") && e.contains("stateful"), "{e}");
        let always = "offload = { to = \"srv\", when = \"always\" }";
        let c = Config::from_toml(
            &pipeline("m.onnx", &format!("{state}{always}")),
            Path::new("/base"),
        );
        assert!(c.is_ok(), "{:?}", c.err());
    }

    #[test]
    fn missing_model_makes_a_remote_only_pipeline_and_timeout_defaults_to_deadline() {
        let o = "deadline_ms = 30\noffload = { to = \"srv\", when = \"missing_model\" }";
        let c = Config::from_toml(&pipeline("absent.onnx", o), Path::new("/nonexistent")).unwrap();
        assert!(c.pipelines.is_empty());
        assert_eq!(c.fleet.remote_tensors.len(), 1);
        let off = c.fleet.remote_tensors[0].offload.as_ref().unwrap();
        assert_eq!(off.timeout, Duration::from_millis(30));
        assert!(c.fleet.offloads(&c.pipelines, &c.generators));
        assert!(!c.fleet.serve);
    }

    #[test]
    fn requested_level_resolves_to_the_nearest_allowed_one() {
        let levels: Vec<String> = ["rt", "normal", "bg"].map(String::from).into();
        assert_eq!(resolve_level(&levels, &[0, 2], 1, "rt"), 0);
        assert_eq!(resolve_level(&levels, &[0], 2, "normal"), 0);
        assert_eq!(resolve_level(&levels, &[], 2, "rt"), 2);
        assert_eq!(resolve_level(&levels, &[0, 1], 2, "unknown"), 2);
    }
}
