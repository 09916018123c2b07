//! Stage two for `[[pipeline]]` tables: the validators that turn a raw
//! pipeline into a tensor [`PipelineConfig`] or a generation
//! [`GeneratorConfig`], naming the key, the value and what is allowed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::*;

pub(super) fn pipeline_config(
    i: usize,
    p: RawPipeline,
    base: &Path,
    level_index: &dyn Fn(&str, &str) -> Result<usize, ConfigError>,
    levels: &[String],
) -> Result<PipelineConfig, ConfigError> {
    let at = |k: &str| format!("pipeline[{i}].{k}");
    for (k, set) in [
        ("cancel", p.cancel.is_some()),
        ("query", p.query.is_some()),
        ("max_generations", p.max_generations.is_some()),
        ("max_tokens", p.max_tokens.is_some()),
        ("default_max_tokens", p.default_max_tokens.is_some()),
        ("max_prompt_chars", p.max_prompt_chars.is_some()),
        ("prefill_chunk", p.prefill_chunk.is_some()),
    ] {
        if set {
            return Err(invalid(format!(
                "{}: only valid with kind = \"generate\"",
                at(k)
            )));
        }
    }
    if p.name.is_empty()
        || !p
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(invalid(format!(
            "{} = {:?}: use letters, digits, '_' or '-'",
            at("name"),
            p.name
        )));
    }
    for (k, v) in [("input", &p.input), ("output", &p.output)] {
        if !key_expr_ok(v) {
            return Err(invalid(format!(
                "{} = {v:?}: not a valid zenoh key expression (chunks separated by '/', wildcards `*` and `**` only as whole chunks, no leading or trailing '/')",
                at(k)
            )));
        }
    }
    if p.output.contains('*') {
        return Err(invalid(format!(
            "{} = {:?}: an output key cannot contain wildcards; the stream id is appended to it",
            at("output"),
            p.output
        )));
    }
    let error_key = p.error_key.unwrap_or_else(|| format!("{}/error", p.output));
    if !key_expr_ok(&error_key) || error_key.contains('*') {
        return Err(invalid(format!(
            "{} = {error_key:?}: not a valid zenoh key without wildcards",
            at("error_key")
        )));
    }
    let level = match &p.level {
        Some(l) => level_index(&at("level"), l)?,
        None => levels.len() - 1,
    };
    let deadline_ms = p.deadline_ms.unwrap_or(1000.0);
    if !(deadline_ms.is_finite() && deadline_ms > 0.0 && deadline_ms <= 3_600_000.0) {
        return Err(invalid(format!(
            "{} = {deadline_ms}: expected a latency budget in milliseconds, > 0 and at most one hour",
            at("deadline_ms")
        )));
    }
    let overflow = match p.overflow.as_deref().unwrap_or("reject") {
        "latest" => Overflow::Latest,
        "reject" => Overflow::Reject,
        other => {
            return Err(invalid(format!(
                "{} = {other:?}: expected \"latest\" (newest frame per stream wins) or \"reject\" (busy when full)",
                at("overflow")
            )));
        }
    };
    let fallback = match p.fallback.as_deref().unwrap_or("next") {
        "next" => Fallback::Next,
        "error" => Fallback::Error,
        other => {
            return Err(invalid(format!(
                "{} = {other:?}: expected \"next\" or \"error\"",
                at("fallback")
            )));
        }
    };
    let format = match p.format.as_deref().unwrap_or("safetensors") {
        "safetensors" => {
            if p.raw.is_some() {
                return Err(invalid(format!(
                    "{}: a [pipeline.raw] table needs format = \"raw\"",
                    at("raw")
                )));
            }
            InputFormat::Safetensors
        }
        "raw" => {
            let r = p.raw.ok_or_else(|| {
                invalid(format!(
                    "{}: format = \"raw\" needs a [pipeline.raw] table with tensor, dtype and shape",
                    at("raw")
                ))
            })?;
            InputFormat::Raw {
                dtype: dtype(&at("raw.dtype"), &r.dtype)?,
                shape: shape(&at("raw.shape"), &r.shape)?,
                tensor: r.tensor,
            }
        }
        other => {
            return Err(invalid(format!(
                "{} = {other:?}: expected \"safetensors\" or \"raw\"",
                at("format")
            )));
        }
    };
    let mut providers = Vec::new();
    for (j, rp) in p.provider.iter().enumerate() {
        let key = |k: &str| format!("pipeline[{i}].provider[{j}].{k}");
        let only = |allowed: &str, k: &str, set: bool| -> Result<(), ConfigError> {
            if set {
                Err(invalid(format!(
                    "{}: only valid for kind = {allowed}",
                    key(k)
                )))
            } else {
                Ok(())
            }
        };
        let prov = match rp.kind.as_str() {
            "tensorrt" => Provider::TensorRt {
                device_id: rp.device_id.unwrap_or(0),
                fp16: rp.fp16.unwrap_or(false),
                engine_cache: rp.engine_cache.as_deref().map(|e| resolve(base, e)),
            },
            "cuda" => {
                only("\"tensorrt\"", "fp16", rp.fp16.is_some())?;
                only("\"tensorrt\"", "engine_cache", rp.engine_cache.is_some())?;
                Provider::Cuda {
                    device_id: rp.device_id.unwrap_or(0),
                }
            }
            "cpu" => {
                only(
                    "\"tensorrt\" or \"cuda\"",
                    "device_id",
                    rp.device_id.is_some(),
                )?;
                only("\"tensorrt\"", "fp16", rp.fp16.is_some())?;
                only("\"tensorrt\"", "engine_cache", rp.engine_cache.is_some())?;
                Provider::Cpu
            }
            other => {
                return Err(invalid(format!(
                    "{} = {other:?}: expected \"tensorrt\", \"cuda\" or \"cpu\"",
                    key("kind")
                )));
            }
        };
        if let Provider::TensorRt { device_id, .. } | Provider::Cuda { device_id } = &prov
            && *device_id < 0
        {
            return Err(invalid(format!(
                "{} = {device_id}: must be >= 0",
                key("device_id")
            )));
        }
        if providers.iter().any(|q: &Provider| q.name() == prov.name()) {
            return Err(invalid(format!(
                "{} = {:?}: listed twice",
                key("kind"),
                prov.name()
            )));
        }
        providers.push(prov);
    }
    if providers.is_empty() {
        providers.push(Provider::Cpu);
    }
    let batch = batch_config(
        &at,
        p.max_batch,
        p.max_queue_delay_us,
        p.preferred_batch_sizes.clone(),
    )?;
    let mut constants = BTreeMap::new();
    for (name, c) in p.constants {
        let key = format!("pipeline[{i}].constants.{name}");
        let dt = dtype(&format!("{key}.dtype"), &c.dtype)?;
        let shp = shape(&format!("{key}.shape"), &c.shape)?;
        let n: usize = shp.iter().product();
        if c.data.len() != n {
            return Err(invalid(format!(
                "{key}.data has {} values: shape {:?} needs {n}",
                c.data.len(),
                c.shape
            )));
        }
        let bytes = dt.encode_f64(&c.data).ok_or_else(|| {
            invalid(format!(
                "{key}.data: values cannot be represented as {}",
                dt.name()
            ))
        })?;
        constants.insert(
            name,
            Constant {
                dtype: dt,
                shape: shp,
                bytes,
            },
        );
    }
    let state: Vec<StateBinding> = p
        .state
        .into_iter()
        .map(|s| StateBinding {
            input: s.input,
            output: s.output,
        })
        .collect();
    let context: Vec<ContextCarry> = p
        .context
        .into_iter()
        .map(|c| ContextCarry {
            input: c.input,
            keep: c.keep,
        })
        .collect();
    for (j, c) in context.iter().enumerate() {
        if c.keep == 0 {
            return Err(invalid(format!(
                "pipeline[{i}].context[{j}].keep = 0: must be at least 1"
            )));
        }
    }
    let overflow_ok = overflow == Overflow::Latest || (state.is_empty() && context.is_empty());
    if !overflow_ok {
        return Err(invalid(format!(
            "{} = \"reject\": a stateful pipeline (state or context bindings) must use overflow = \"latest\", which runs each stream's frames one at a time in order",
            at("overflow")
        )));
    }
    if overflow == Overflow::Latest && p.queue_capacity.is_some() {
        return Err(invalid(format!(
            "{}: applies to overflow = \"reject\"; with \"latest\" each stream keeps one pending frame and max_streams bounds the queue",
            at("queue_capacity")
        )));
    }
    let queue_capacity = positive(&at("queue_capacity"), p.queue_capacity, 16)?;
    let max_streams = positive(&at("max_streams"), p.max_streams, DEFAULT_MAX_STREAMS)?;
    Ok(PipelineConfig {
        name: p.name,
        model: resolve(base, &p.model),
        input: p.input,
        output: p.output,
        error_key,
        level,
        deadline: Duration::from_secs_f64(deadline_ms / 1000.0),
        queue_capacity,
        overflow,
        max_streams,
        format,
        providers,
        fallback,
        publish: p.publish,
        idle_reset: p
            .idle_reset_ms
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_IDLE_RESET),
        warmup: p
            .warmup
            .iter()
            .map(|(k, v)| Ok((k.clone(), shape(&format!("pipeline[{i}].warmup.{k}"), v)?)))
            .collect::<Result<_, ConfigError>>()?,
        constants,
        state,
        context,
        batch,
    })
}

/// `max_batch`, `max_queue_delay_us`, `preferred_batch_sizes` → a
/// [`BatchConfig`], or `None` when batching is off (`max_batch` 1 or unset).
fn batch_config(
    at: &dyn Fn(&str) -> String,
    max_batch: Option<usize>,
    delay_us: Option<u64>,
    preferred: Option<Vec<usize>>,
) -> Result<Option<BatchConfig>, ConfigError> {
    let max_batch = positive(&at("max_batch"), max_batch, 1)?;
    if max_batch == 1 {
        for (k, set) in [
            ("max_queue_delay_us", delay_us.is_some()),
            ("preferred_batch_sizes", preferred.is_some()),
        ] {
            if set {
                return Err(invalid(format!(
                    "{}: only valid with max_batch > 1 (dynamic batching)",
                    at(k)
                )));
            }
        }
        return Ok(None);
    }
    if max_batch > MAX_BATCH_LIMIT {
        return Err(invalid(format!(
            "{} = {max_batch}: at most {MAX_BATCH_LIMIT}",
            at("max_batch")
        )));
    }
    let delay = Duration::from_micros(delay_us.unwrap_or(0));
    if delay > MAX_QUEUE_DELAY_LIMIT {
        return Err(invalid(format!(
            "{} = {}: at most {} (1 s); a batch wait longer than that defeats real time",
            at("max_queue_delay_us"),
            delay.as_micros(),
            MAX_QUEUE_DELAY_LIMIT.as_micros()
        )));
    }
    let preferred = preferred.unwrap_or_default();
    let ascending = preferred.windows(2).all(|w| w[0] < w[1]);
    if !ascending || preferred.iter().any(|&n| n < 2 || n > max_batch) {
        return Err(invalid(format!(
            "{} = {preferred:?}: expected strictly ascending sizes, each in 2..={max_batch} (max_batch)",
            at("preferred_batch_sizes")
        )));
    }
    Ok(Some(BatchConfig {
        max_batch,
        max_queue_delay: delay,
        preferred,
    }))
}

pub(super) fn generator_config(
    i: usize,
    p: RawPipeline,
    base: &Path,
    level_index: &dyn Fn(&str, &str) -> Result<usize, ConfigError>,
    levels: &[String],
) -> Result<GeneratorConfig, ConfigError> {
    let at = |k: &str| format!("pipeline[{i}].{k}");
    for (k, set) in [
        ("overflow", p.overflow.is_some()),
        ("queue_capacity", p.queue_capacity.is_some()),
        ("max_streams", p.max_streams.is_some()),
        ("format", p.format.is_some()),
        ("raw", p.raw.is_some()),
        ("publish", p.publish.is_some()),
        ("idle_reset_ms", p.idle_reset_ms.is_some()),
        ("warmup", !p.warmup.is_empty()),
        ("constants", !p.constants.is_empty()),
        ("state", !p.state.is_empty()),
        ("context", !p.context.is_empty()),
        ("max_queue_delay_us", p.max_queue_delay_us.is_some()),
        ("preferred_batch_sizes", p.preferred_batch_sizes.is_some()),
    ] {
        if set {
            return Err(invalid(format!(
                "{}: only valid for tensor pipelines, not kind = \"generate\"",
                at(k)
            )));
        }
    }
    // Reuse the tensor validator for the shared keys (name, keys, level,
    // deadline, providers, fallback) on a copy stripped of generate keys.
    let (cancel, query) = (p.cancel.clone(), p.query.clone());
    let prefill_chunk = p.prefill_chunk;
    let max_batch = p.max_batch;
    let (max_generations, max_tokens, default_max_tokens, max_prompt_chars) = (
        p.max_generations,
        p.max_tokens,
        p.default_max_tokens,
        p.max_prompt_chars,
    );
    let common = pipeline_config(
        i,
        RawPipeline {
            kind: None,
            cancel: None,
            query: None,
            max_generations: None,
            max_tokens: None,
            default_max_tokens: None,
            max_prompt_chars: None,
            prefill_chunk: None,
            max_batch: None,
            deadline_ms: Some(p.deadline_ms.unwrap_or(60_000.0)),
            ..p
        },
        base,
        level_index,
        levels,
    )?;
    if common.input.contains('*') {
        return Err(invalid(format!(
            "{} = {:?}: a command topic cannot contain wildcards",
            at("input"),
            common.input
        )));
    }
    let key = |k: &str, v: Option<String>, default: String| -> Result<String, ConfigError> {
        let v = v.unwrap_or(default);
        if !key_expr_ok(&v) || v.contains('*') {
            return Err(invalid(format!(
                "{} = {v:?}: not a valid zenoh key without wildcards",
                at(k)
            )));
        }
        Ok(v)
    };
    let max_tokens = match max_tokens {
        Some(0) => {
            return Err(invalid(format!(
                "{} = 0: must be at least 1",
                at("max_tokens")
            )));
        }
        Some(n) => n,
        None => 1024,
    };
    let default_max_tokens = default_max_tokens.unwrap_or(max_tokens.min(256));
    if default_max_tokens == 0 || default_max_tokens > max_tokens {
        return Err(invalid(format!(
            "{} = {default_max_tokens}: expected 1..={max_tokens} (max_tokens)",
            at("default_max_tokens")
        )));
    }
    let max_generations = positive(&at("max_generations"), max_generations, 4)?;
    let max_batch = positive(&at("max_batch"), max_batch, 1)?;
    if max_batch > max_generations {
        return Err(invalid(format!(
            "{} = {max_batch}: at most max_generations ({max_generations}); a decode batch holds live generations",
            at("max_batch")
        )));
    }
    Ok(GeneratorConfig {
        max_batch,
        cancel_key: key("cancel", cancel, format!("{}/cancel", common.input))?,
        query_key: key("query", query, format!("{}/query", common.input))?,
        name: common.name,
        model: common.model,
        input: common.input,
        output: common.output,
        error_key: common.error_key,
        level: common.level,
        deadline: common.deadline,
        providers: common.providers,
        fallback: common.fallback,
        max_generations,
        max_tokens,
        default_max_tokens,
        max_prompt_chars: positive(&at("max_prompt_chars"), max_prompt_chars, 16_384)?,
        prefill_chunk: positive(&at("prefill_chunk"), prefill_chunk, 64)?,
        allowed_levels: Vec::new(),
    })
}
