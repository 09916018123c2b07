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
use crate::infer::profile::{self, Profile};
use crate::infer::warm::{OcrStageInfo, load_and_warm, load_ocr_stages};
use crate::infer::{Spec, ep, runtime};
use crate::io::ros2;
use crate::io::zenoh::zenoh_config;
use crate::llm::tools::ToolSet;
use crate::llm::{self, LlmShared, ModelFiles};

mod stages;

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
        let (spec, ocr) = match p.ocr {
            // The same three sessions and warm-up as start-up.
            Some(_) => {
                let (chain, spec, stages) = load_ocr_stages(&env, &config.runtime, p)?;
                (spec, Some((stages, chain.charset_len())))
            }
            None => (load_and_warm(&env, &config.runtime, p)?.spec, None),
        };
        describe_tensor(&mut out, config, p, &spec, ocr.as_ref());
        ros2::check_tensor_pipe(p, &spec).map_err(StartError::Ros2)?;
        describe_ros2(&mut out, p.ros2.as_ref());
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
        describe_tools(&mut out, g)?;
        describe_ros2(&mut out, g.ros2.as_ref());
    }
    Ok(out)
}

/// The tools a generation pipeline offers, after the same schema checks
/// as start-up: the complete list of keys the model can ever reach.
fn describe_tools(out: &mut String, g: &GeneratorConfig) -> Result<(), StartError> {
    if g.tools.is_empty() {
        return Ok(());
    }
    let set = ToolSet::load(&g.name, &g.tools, std::path::Path::new(""))
        .map_err(|e| StartError::Tools(e.to_string()))?;
    let _ = writeln!(out, "  tools (max_tool_steps {}):", g.max_tool_steps);
    for t in set.iter() {
        let _ = writeln!(
            out,
            "    {} → {}  rate {}/s burst {}{}  schema {}",
            t.name,
            t.key,
            t.rate.per_s,
            t.rate.burst,
            if t.dry_run { "  dry_run" } else { "" },
            t.schema_path.display()
        );
    }
    Ok(())
}

/// A pipeline's ROS 2 topics, one line each.
fn describe_ros2(out: &mut String, r: Option<&PipelineRos2>) {
    let Some(r) = r else { return };
    for (role, e) in r.endpoints() {
        let key = if role == "input" {
            e.subscribe_key()
        } else {
            e.publish_key()
        };
        let _ = writeln!(out, "  ros2 {role}: {} [{}] on {key}", e.topic, e.ty);
    }
}

/// An OCR pipeline's stages as loaded, and its recogniser's charset size.
type OcrShown = (Vec<OcrStageInfo>, usize);

fn describe_tensor(
    out: &mut String,
    config: &Config,
    p: &PipelineConfig,
    spec: &Spec,
    ocr: Option<&OcrShown>,
) {
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
        InputFormat::Image(_) => format!(
            "image message: {}",
            crate::wire::image::Encoding::NAMES.join("/")
        ),
        InputFormat::Chained(_) => String::new(),
    };
    match &p.format {
        InputFormat::Chained(link) => {
            let _ = writeln!(out, "  in:  {}", stages::link(config, p, link));
        }
        _ => {
            let _ = writeln!(out, "  in:  {} [{fmt}]", p.input);
        }
    }
    if let (Some(o), Some((st, charset))) = (&p.ocr, ocr) {
        stages::describe_ocr(out, o, st, *charset);
    } else {
        for port in &spec.client_inputs {
            let _ = writeln!(out, "       {port}");
        }
        stages::describe(out, config, p, spec);
    }
    if p.next.is_none() {
        let _ = writeln!(
            out,
            "  out: {}/<stream> [{}]  errors: {}",
            p.output,
            stages::published(p),
            p.error_key
        );
        let tensors = p.publishes_tensors();
        for port in spec
            .model_outputs
            .iter()
            .filter(|o| tensors && spec.publish.contains(&o.name))
        {
            let _ = writeln!(out, "       {port}");
        }
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
    // An OCR pipeline's sessions are built without one (`load_ocr`): the
    // spec's image binding is a placeholder, not the detector's input size.
    let wanted = p.ocr.is_none()
        && p.providers
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
