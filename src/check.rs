//! `reflexd check`: everything start-up does short of opening zenoh. Loads
//! ONNX Runtime and every model with its provider chain, warms each up, and
//! describes each pipeline's interface (generation pipelines included: model
//! directory, tokenizer, one warm-up step), so a bad config or a missing model
//! fails here (and in systemd's ExecStartPre) rather than on the robot.

use std::fmt::Write;
use std::sync::Arc;

use crate::config::ros2::PipelineRos2;
use crate::config::{
    Config, Fallback, GeneratorConfig, InputFormat, Overflow, PipelineConfig, Provider,
};
use crate::daemon::StartError;
use crate::infer::engine::EngineError;
use crate::infer::pre::Preprocessor;
use crate::infer::profile::{self, Profile};
use crate::infer::warm::load_and_warm;
use crate::infer::{Spec, ep, runtime};
use crate::io::ros2;
use crate::io::zenoh::zenoh_config;
use crate::llm::{self, LlmShared, ModelFiles};

/// Returns the human-readable report, or the first error.
pub fn check(config: &Config) -> Result<String, StartError> {
    let (env, lib) = runtime::environment(config.runtime.onnxruntime.as_deref())?;
    zenoh_config(&config.zenoh).map_err(StartError::Zenoh)?;
    let mut out = String::new();
    let _ = writeln!(out, "onnxruntime: {}", lib.display());
    let _ = writeln!(out, "levels (highest first): {}", config.levels.join(", "));
    for (i, w) in config.workers.iter().enumerate() {
        let names: Vec<&str> = w
            .levels
            .iter()
            .map(|&l| config.levels[l].as_str())
            .collect();
        let _ = writeln!(out, "worker {i}: serves {}{}", names.join(", "), w.policy);
    }
    for p in &config.pipelines {
        let loaded = load_and_warm(&env, &config.runtime, p)?;
        describe_tensor(&mut out, config, p, &loaded.spec);
        let stage = ros2::tensor_stage(p, &loaded.spec).map_err(StartError::Ros2)?;
        describe_ros2(&mut out, p.ros2.as_ref(), stage.as_ref());
    }
    for g in &config.generators {
        // The same load and one-step warm-up as start-up, once (start-up
        // builds one session per worker serving the level).
        let err = |reason: String| EngineError::Interface {
            pipeline: g.name.clone(),
            reason,
        };
        let files = ModelFiles::open(&g.model).map_err(err)?;
        let shared = Arc::new(LlmShared::new(&files).map_err(err)?);
        let (_model, provider) = llm::load(&env, g, &config.runtime, &shared, &files.onnx)?;
        describe_generator(&mut out, config, g, &shared, provider);
        describe_ros2(&mut out, g.ros2.as_ref(), None);
    }
    Ok(out)
}

/// A pipeline's ROS 2 topics, one line each, and its image stage.
fn describe_ros2(out: &mut String, r: Option<&PipelineRos2>, stage: Option<&Preprocessor>) {
    let Some(r) = r else { return };
    for (role, e) in r.endpoints() {
        let key = if role == "input" {
            e.subscribe_key()
        } else {
            e.publish_key()
        };
        let _ = writeln!(out, "  ros2 {role}: {} [{}] on {key}", e.topic, e.ty);
    }
    if let Some(pre) = stage {
        let c = pre.config();
        let _ = writeln!(
            out,
            "  image stage: {:?} {}x{} {} {:?}, {:?}",
            c.color,
            c.width,
            c.height,
            c.dtype.name(),
            c.layout,
            c.resize
        );
    }
}

fn describe_tensor(out: &mut String, config: &Config, p: &PipelineConfig, spec: &Spec) {
    let chain: Vec<&str> = p.providers.iter().map(|x| x.name()).collect();
    let _ = writeln!(out, "\npipeline {} ({})", p.name, p.model.display());
    let _ = writeln!(
        out,
        "  provider: {} (configured: {}, fallback: {})",
        spec.provider,
        chain.join(" → "),
        fallback_name(p.fallback)
    );
    provider_options(out, &p.providers, trt_profile(p, spec).as_ref());
    let _ = writeln!(
        out,
        "  level: {}  deadline: {:?}  overflow: {}",
        config.levels[p.level],
        p.deadline,
        match p.overflow {
            Overflow::Latest => format!("latest (max_streams {})", p.max_streams),
            Overflow::Reject => format!("reject (queue_capacity {})", p.queue_capacity),
        }
    );
    let fmt = match &p.format {
        InputFormat::Safetensors => "safetensors".to_string(),
        InputFormat::Raw {
            tensor,
            dtype,
            shape,
        } => format!("raw {tensor}: {}{:?}", dtype.name(), shape),
    };
    let _ = writeln!(out, "  in:  {} [{fmt}]", p.input);
    for port in &spec.client_inputs {
        let _ = writeln!(out, "       {port}");
    }
    let _ = writeln!(out, "  out: {}/<stream>  errors: {}", p.output, p.error_key);
    for port in spec
        .model_outputs
        .iter()
        .filter(|o| spec.publish.contains(&o.name))
    {
        let _ = writeln!(out, "       {port}");
    }
    for s in &p.state {
        let _ = writeln!(out, "  state: {} → {}", s.output, s.input);
    }
    for c in &p.context {
        let _ = writeln!(out, "  context: last {} of {} carried", c.keep, c.input);
    }
}

fn describe_generator(
    out: &mut String,
    config: &Config,
    g: &GeneratorConfig,
    shared: &LlmShared,
    provider: &str,
) {
    let m = &shared.generation;
    let chain: Vec<&str> = g.providers.iter().map(|x| x.name()).collect();
    let _ = writeln!(
        out,
        "\ngeneration pipeline {} ({})",
        g.name,
        g.model.display()
    );
    let _ = writeln!(
        out,
        "  model: {} ({} layers, context {} tokens, vocabulary {})",
        m.model_name, m.num_layers, m.context_length, m.vocab_size
    );
    let _ = writeln!(
        out,
        "  provider: {provider} (configured: {}, fallback: {})",
        chain.join(" → "),
        fallback_name(g.fallback)
    );
    provider_options(out, &g.providers, None);
    let _ = writeln!(
        out,
        "  level: {}  deadline: {:?}  max_generations: {}",
        config.levels[g.level], g.deadline, g.max_generations
    );
    let _ = writeln!(
        out,
        "  in:  {} [JSON command]  cancel: {}  query: {}",
        g.input, g.cancel_key, g.query_key
    );
    let _ = writeln!(
        out,
        "       max_tokens {} (default {}), max_prompt_chars {}",
        g.max_tokens, g.default_max_tokens, g.max_prompt_chars
    );
    let _ = writeln!(
        out,
        "  out: {}/<id> [JSON tokens, then the final message]  errors: {}",
        g.output, g.error_key
    );
}

/// The profile a TensorRT session of this pipeline is built with, if any.
fn trt_profile(p: &PipelineConfig, spec: &Spec) -> Option<Profile> {
    let wanted = p
        .providers
        .iter()
        .any(|x| matches!(x, Provider::TensorRt(t) if t.warmup_profile));
    if !wanted {
        return None;
    }
    profile::derive(p, spec).ok().flatten()
}

/// What ONNX Runtime is asked for, per configured GPU provider (the same
/// strings `crate::infer::ep` hands to it), whichever provider ended up
/// in use on this machine.
fn provider_options(out: &mut String, chain: &[Provider], profile: Option<&Profile>) {
    for prov in chain.iter().filter(|x| !matches!(x, Provider::Cpu)) {
        let opts = ep::options(prov, profile);
        let _ = writeln!(out, "  {} options: {}", prov.name(), ep::describe(&opts));
    }
}

fn fallback_name(f: Fallback) -> &'static str {
    match f {
        Fallback::Next => "next",
        Fallback::Error => "error",
    }
}
