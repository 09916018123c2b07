//! Several daemons on one zenoh fabric. Every key carries the daemon's node
//! name (`metrics.node`): `<node>/alive` (liveliness), `<node>/metrics`,
//! and, on a daemon with `[fleet] serve = true`, `<node>/offload/<pipeline>`
//! (a queryable per pipeline) and `<node>/offload/<pipeline>/cancel`.
//!
//! Where this sits in the data flow: between intake and the scheduler.
//! Ingress and the command intake hand their validated work to [`submit`]
//! / [`submit_gen`] instead of the scheduler; a pipeline without `offload`
//! goes straight on, one with it is routed by its policy ([`tensor`],
//! [`generate`]); a failed remote attempt comes back through the same
//! scheduler with its original receipt time, deadline and level. The
//! serving side ([`serve`]) queues offloaded work in its own scheduler at
//! the requester's level and answers through the query. Pipelines without
//! a local model relay everything ([`remote_tensor`], [`remote_gen`]).
//! Targets are followed by their liveliness token ([`target`]) and by the
//! matching status of their offload queryable. Nothing here runs on a
//! worker or blocks a zenoh callback.

pub mod header;
pub mod serve;

mod generate;
mod remote_gen;
mod remote_tensor;
mod target;
mod tensor;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Weak};
use std::time::Duration;

use zenoh::Wait;

use crate::config::FleetConfig;
use crate::ctx::Ctx;
use crate::job::Job;
use crate::llm::Generation;
use crate::obs::fleet::{FleetSnapshot, OffloadLabels};
use crate::sched::Submitted;
use target::Target;

type GenRefused = crate::sched::GenRefused<crate::ctx::Kinds>;

/// The fleet side of one daemon, kept in `Ctx::fleet`.
pub struct Fleet {
    ctx: Weak<Ctx>,
    node: String,
    /// Ids of generations sent to a target start with it: unique per
    /// session (the zid), so two requesters never collide on a target.
    id_prefix: String,
    rt: tokio::runtime::Handle,
    next: AtomicU64,
    max_inflight: usize,
    max_payload: usize,
    serve: bool,
    targets: Vec<Arc<Target>>,
    tensors: Vec<Option<tensor::Route>>,
    gens: Vec<Option<generate::Route>>,
    remote_tensors: Vec<remote_tensor::Route>,
    remote_gens: Vec<remote_gen::Route>,
    /// Offloaded requests served, tensor pipelines then generation ones.
    served: Arc<[AtomicU64]>,
}

impl Fleet {
    fn next_key(&self) -> u64 {
        self.next.fetch_add(1, Relaxed)
    }

    fn tensor_route(&self, pi: usize) -> &tensor::Route {
        self.tensors[pi]
            .as_ref()
            .expect("a flight belongs to a route")
    }

    fn gen_route(&self, gi: usize) -> &generate::Route {
        self.gens[gi].as_ref().expect("a flight belongs to a route")
    }
}

/// What the daemon holds while the fleet side runs (undeclared on drop).
pub struct Entities {
    _watch: Vec<zenoh::pubsub::Subscriber<()>>,
    _served: Option<serve::Served>,
    _remote_subs: Vec<zenoh::pubsub::Subscriber<()>>,
    _remote_gens: Vec<remote_gen::Entities>,
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

/// Sets the zenoh link lease (`[fleet] lease_ms`): how long a node that
/// vanished without closing its links (power loss, cut cable) stays
/// "alive" for the others.
pub fn lease(mut zc: zenoh::Config, f: &FleetConfig) -> Result<zenoh::Config, String> {
    if let Some(l) = f.lease {
        let key = "transport/link/tx/lease";
        zc.insert_json5(key, &l.as_millis().to_string())
            .map_err(|e| format!("{key}: {e}"))?;
    }
    Ok(zc)
}

/// The querier of a tensor pipeline's offload target, at the pipeline's
/// level and timeout, and whether the target serves it (local pipelines
/// that may offload and remote-only ones alike).
type Matched = (Arc<AtomicBool>, zenoh::matching::MatchingListener<()>);

fn tensor_querier(
    session: &zenoh::Session,
    p: &crate::config::PipelineConfig,
    o: &crate::config::OffloadConfig,
) -> zenoh::Result<(zenoh::query::Querier<'static>, Matched)> {
    let querier = session
        .declare_querier(crate::config::fleet::offload_key(&o.to, &p.name))
        .consolidation(zenoh::query::ConsolidationMode::None)
        .congestion_control(zenoh::qos::CongestionControl::Drop)
        .priority(crate::io::egress::level_priority(p.level))
        .timeout(o.timeout)
        .wait()?;
    let m = matching(&querier)?;
    Ok((querier, m))
}

/// Follows whether a querier's key has a queryable (the target serves
/// the pipeline).
fn matching(q: &zenoh::query::Querier<'static>) -> zenoh::Result<Matched> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let listener = q
        .matching_listener()
        .callback(move |s| f.store(s.matching(), SeqCst))
        .wait()?;
    if q.matching_status().wait()?.matching() {
        flag.store(true, SeqCst);
    }
    Ok((flag, listener))
}

/// The routes of every offloading pipeline and their targets.
fn build(ctx: &Arc<Ctx>) -> zenoh::Result<Fleet> {
    let cfg = &ctx.config;
    let s = &ctx.session;
    let mut nodes: Vec<&str> = Vec::new();
    let offloads = cfg.pipelines.iter().filter_map(|p| p.offload.as_ref());
    let offloads = offloads.chain(cfg.generators.iter().filter_map(|g| g.offload.as_ref()));
    let offloads = offloads.chain(
        cfg.fleet
            .remote_tensors
            .iter()
            .filter_map(|p| p.offload.as_ref()),
    );
    for o in offloads.chain(
        cfg.fleet
            .remote_gens
            .iter()
            .filter_map(|g| g.offload.as_ref()),
    ) {
        if !nodes.contains(&o.to.as_str()) {
            nodes.push(&o.to);
        }
    }
    let targets: Vec<Arc<Target>> = nodes.iter().map(|n| Arc::new(Target::new(n))).collect();
    let t = |node: &str| {
        targets
            .iter()
            .find(|t| t.node == node)
            .expect("known")
            .clone()
    };
    let mut tensors = Vec::new();
    for p in &cfg.pipelines {
        tensors.push(match &p.offload {
            Some(o) => Some(tensor::Route::declare(s, p, o.clone(), t(&o.to))?),
            None => None,
        });
    }
    let mut gens = Vec::new();
    for g in &cfg.generators {
        gens.push(match &g.offload {
            Some(o) => Some(generate::Route::declare(s, g, o.clone(), t(&o.to))?),
            None => None,
        });
    }
    let mut remote_tensors = Vec::new();
    for p in &cfg.fleet.remote_tensors {
        let to = &p.offload.as_ref().expect("remote-only").to;
        remote_tensors.push(remote_tensor::Route::declare(s, p.clone(), t(to))?);
    }
    let mut remote_gens = Vec::new();
    for g in &cfg.fleet.remote_gens {
        let to = &g.offload.as_ref().expect("remote-only").to;
        remote_gens.push(remote_gen::Route::declare(s, g.clone(), t(to))?);
    }
    Ok(Fleet {
        ctx: Arc::downgrade(ctx),
        node: cfg.metrics.node.clone(),
        id_prefix: format!("fleet-{}", s.zid()),
        rt: tokio::runtime::Handle::current(),
        next: AtomicU64::new(0),
        max_inflight: cfg.fleet.max_inflight,
        max_payload: cfg.limits.max_payload_bytes,
        serve: cfg.fleet.serve,
        targets,
        tensors,
        gens,
        remote_tensors,
        remote_gens,
        served: (0..ctx.tensors.len() + ctx.gens.len())
            .map(|_| AtomicU64::new(0))
            .collect(),
    })
}

/// Starts the fleet side, if this daemon offloads or serves anything:
/// routes and target watches first, then the intake of remote-only
/// pipelines and the serving queryables. Call from a tokio runtime, before
/// ingress opens.
pub fn start(ctx: &Arc<Ctx>) -> Result<Option<Entities>, String> {
    let cfg = &ctx.config;
    if !cfg.fleet.serve && !cfg.fleet.offloads(&cfg.pipelines, &cfg.generators) {
        return Ok(None);
    }
    let zerr = |e: zenoh::Error| e.to_string();
    let fleet = Arc::new(build(ctx).map_err(zerr)?);
    let watch = fleet
        .targets
        .iter()
        .map(|t| t.watch(&ctx.session))
        .collect::<zenoh::Result<Vec<_>>>()
        .map_err(zerr)?;
    if ctx.fleet.set(fleet.clone()).is_err() {
        return Err("the fleet side was started twice".into());
    }
    let remote_subs = (0..fleet.remote_tensors.len())
        .map(|ri| remote_tensor::subscribe(&fleet, &ctx.session, ri))
        .collect::<zenoh::Result<Vec<_>>>()
        .map_err(zerr)?;
    let remote_gens = (0..fleet.remote_gens.len())
        .map(|ri| remote_gen::declare(&fleet, &ctx.session, ri))
        .collect::<zenoh::Result<Vec<_>>>()
        .map_err(zerr)?;
    let served = match cfg.fleet.serve {
        true => Some(serve::declare(ctx, &fleet.served).map_err(zerr)?),
        false => None,
    };
    for t in &fleet.targets {
        tracing::info!(node = %cfg.metrics.node, target = %t.node, "offload target");
    }
    Ok(Some(Entities {
        _watch: watch,
        _served: served,
        _remote_subs: remote_subs,
        _remote_gens: remote_gens,
    }))
}

fn fleet_of(ctx: &Ctx) -> Option<Arc<Fleet>> {
    ctx.fleet.get()?.clone().downcast::<Fleet>().ok()
}

/// Ingress's way into the scheduler: a job of an offloading pipeline may
/// go to its target instead (then it counts as queued).
pub fn submit(ctx: &Ctx, job: Box<Job>) -> Submitted<Job> {
    if ctx.tensors[job.pipeline].cfg.offload.is_none() {
        return ctx.sched.submit(job);
    }
    match fleet_of(ctx) {
        Some(f) => match &f.tensors[job.pipeline] {
            Some(r) => tensor::submit(&f, ctx, r, job),
            None => ctx.sched.submit(job),
        },
        None => ctx.sched.submit(job),
    }
}

/// The command intake's way into the scheduler, as [`submit`].
pub fn submit_gen(ctx: &Ctx, level: usize, g: Box<Generation>) -> Result<(), GenRefused> {
    if ctx.gens[g.pipeline].cfg.offload.is_none() {
        return ctx.sched.submit_gen(level, g);
    }
    match fleet_of(ctx) {
        Some(f) => match &f.gens[g.pipeline] {
            Some(r) => generate::submit(&f, ctx, r, level, g),
            None => ctx.sched.submit_gen(level, g),
        },
        None => ctx.sched.submit_gen(level, g),
    }
}

fn label<'a>(
    pipeline: &'a str,
    kind: &'static str,
    o: &'a crate::config::OffloadConfig,
    remote_only: bool,
    target_up: bool,
) -> OffloadLabels<'a> {
    OffloadLabels {
        pipeline,
        kind,
        to: &o.to,
        when: o.when.as_str(),
        remote_only,
        target_up,
    }
}

/// The fleet part of the metrics snapshot.
pub fn snapshot(ctx: &Ctx) -> Option<FleetSnapshot> {
    let f = fleet_of(ctx)?;
    let cfg = &ctx.config;
    let mut offloads = Vec::new();
    for (p, r) in cfg.pipelines.iter().zip(&f.tensors) {
        if let Some(r) = r {
            offloads.push(
                r.stats
                    .snapshot(&label(&p.name, "tensor", &r.cfg, false, r.up())),
            );
        }
    }
    for (g, r) in cfg.generators.iter().zip(&f.gens) {
        if let Some(r) = r {
            offloads.push(
                r.stats
                    .snapshot(&label(&g.name, "generate", &r.cfg, false, r.up())),
            );
        }
    }
    for r in &f.remote_tensors {
        let o = r.cfg.offload.as_ref().expect("remote-only");
        offloads.push(
            r.stats
                .snapshot(&label(&r.cfg.name, "tensor", o, true, r.up())),
        );
    }
    for r in &f.remote_gens {
        offloads.push(
            r.stats
                .snapshot(&label(&r.cfg.name, "generate", &r.offload, true, r.up())),
        );
    }
    let names = cfg.pipelines.iter().map(|p| &p.name);
    let names = names.chain(cfg.generators.iter().map(|g| &g.name));
    Some(FleetSnapshot {
        serve: f.serve,
        served: match f.serve {
            true => names
                .zip(f.served.iter())
                .map(|(n, c)| (n.clone(), c.load(Relaxed)))
                .collect(),
            false => Default::default(),
        },
        offloads,
        targets: f.targets.iter().map(|t| t.snapshot()).collect(),
    })
}
