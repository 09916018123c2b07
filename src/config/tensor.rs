//! Stage two for `kind = "tensor"` pipelines: input format, constants, state
//! and context bindings, queueing and batching, turned into a
//! [`PipelineConfig`] that cannot hold an invalid combination.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::common::{At, LevelIndex, RawCommon, common};
use super::raw::{RawConstant, RawFormat, RawRawFormat, RawTensorPipeline};
use super::*;

pub(super) fn tensor_config(
    p: RawTensorPipeline,
    base: &Path,
    level_index: LevelIndex,
    levels: &[String],
    limits: &Limits,
) -> Result<PipelineConfig, ConfigError> {
    let at = At(&p.name);
    let c = common(
        RawCommon {
            name: &p.name,
            model: &p.model,
            input: &p.input,
            output: &p.output,
            error_key: p.error_key.as_deref(),
            level: p.level.as_deref(),
            deadline_ms: p.deadline_ms,
            default_deadline_ms: 1000.0,
            provider: &p.provider,
            fallback: p.fallback,
        },
        base,
        level_index,
        levels,
    )?;
    let format = format(&at, p.format, p.raw)?;
    let batch = batch_config(
        &at,
        p.max_batch,
        p.max_queue_delay_us,
        p.preferred_batch_sizes,
    )?;
    let constants = constants(&at, p.constants)?;
    let (state, context) = bindings(&at, p.state, p.context, p.overflow)?;
    if p.overflow == Overflow::Latest && p.queue_capacity.is_some() {
        return Err(at.err(
            "queue_capacity",
            "applies to overflow = \"reject\"; with \"latest\" each stream keeps one pending frame and max_streams bounds the queue",
        ));
    }
    let warmup = super::warmup::warmup(&at, &p.warmup)?;
    if let (InputFormat::Raw { .. }, Some(k)) = (&format, warmup.keys().next()) {
        return Err(at.err(
            &format!("warmup.{k}"),
            "does not apply to format = \"raw\": the raw shape is the warm-up shape",
        ));
    }
    Ok(PipelineConfig {
        queue_capacity: positive(&at.key("queue_capacity"), p.queue_capacity, 16)?,
        max_streams: positive(&at.key("max_streams"), p.max_streams, DEFAULT_MAX_STREAMS)?,
        idle_reset: p
            .idle_reset_ms
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_IDLE_RESET),
        name: c.name,
        model: c.model,
        input: c.input,
        output: c.output,
        error_key: c.error_key,
        level: c.level,
        deadline: c.deadline,
        providers: c.providers,
        fallback: c.fallback,
        overflow: p.overflow,
        format,
        publish: p.publish,
        warmup,
        constants,
        state,
        context,
        batch,
        late: p.late,
        non_finite: p.non_finite,
        max_elements: positive(&at.key("max_elements"), p.max_elements, limits.max_elements)?,
        pre: p.pre,
        ros2: None,
    })
}

fn format(at: &At, f: RawFormat, raw: Option<RawRawFormat>) -> Result<InputFormat, ConfigError> {
    match (f, raw) {
        (RawFormat::Safetensors, None) => Ok(InputFormat::Safetensors),
        (RawFormat::Safetensors, Some(_)) => {
            Err(at.err("raw", "a [pipeline.raw] table needs format = \"raw\""))
        }
        (RawFormat::Raw, None) => Err(at.err(
            "raw",
            "format = \"raw\" needs a [pipeline.raw] table with tensor, dtype and shape",
        )),
        (RawFormat::Raw, Some(r)) => Ok(InputFormat::Raw {
            dtype: dtype(&at.key("raw.dtype"), &r.dtype)?,
            shape: shape(&at.key("raw.shape"), &r.shape)?,
            tensor: r.tensor,
        }),
    }
}

fn constants(
    at: &At,
    raw: BTreeMap<String, RawConstant>,
) -> Result<BTreeMap<String, Constant>, ConfigError> {
    let mut constants = BTreeMap::new();
    for (name, c) in raw {
        let key = at.key(&format!("constants.{name}"));
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
    Ok(constants)
}

/// State and context bindings; a stateful pipeline must be latest-wins.
fn bindings(
    at: &At,
    state: Vec<super::raw::RawStateBinding>,
    context: Vec<super::raw::RawContext>,
    overflow: Overflow,
) -> Result<(Vec<StateBinding>, Vec<ContextCarry>), ConfigError> {
    let state: Vec<StateBinding> = state
        .into_iter()
        .map(|s| StateBinding {
            input: s.input,
            output: s.output,
        })
        .collect();
    let context: Vec<ContextCarry> = context
        .into_iter()
        .map(|c| ContextCarry {
            input: c.input,
            keep: c.keep,
        })
        .collect();
    if let Some(j) = context.iter().position(|c| c.keep == 0) {
        return Err(at.err(&format!("context[{j}].keep"), "= 0: must be at least 1"));
    }
    if overflow == Overflow::Reject && !(state.is_empty() && context.is_empty()) {
        return Err(at.err(
            "overflow",
            "= \"reject\": a stateful pipeline (state or context bindings) must use overflow = \"latest\", which runs each stream's frames one at a time in order",
        ));
    }
    Ok((state, context))
}

/// `max_batch`, `max_queue_delay_us`, `preferred_batch_sizes` → a
/// [`BatchConfig`], or `None` when batching is off (`max_batch` 1 or unset).
fn batch_config(
    at: &At,
    max_batch: Option<usize>,
    delay_us: Option<u64>,
    preferred: Option<Vec<usize>>,
) -> Result<Option<BatchConfig>, ConfigError> {
    let max_batch = positive(&at.key("max_batch"), max_batch, 1)?;
    if max_batch == 1 {
        for (k, set) in [
            ("max_queue_delay_us", delay_us.is_some()),
            ("preferred_batch_sizes", preferred.is_some()),
        ] {
            if set {
                return Err(invalid(format!(
                    "{}: only valid with max_batch > 1 (dynamic batching)",
                    at.key(k)
                )));
            }
        }
        return Ok(None);
    }
    if max_batch > MAX_BATCH_LIMIT {
        return Err(at.err(
            "max_batch",
            format!("= {max_batch}: at most {MAX_BATCH_LIMIT}"),
        ));
    }
    let delay = Duration::from_micros(delay_us.unwrap_or(0));
    if delay > MAX_QUEUE_DELAY_LIMIT {
        return Err(invalid(format!(
            "{} = {}: at most {} (1 s); a batch wait longer than that defeats real time",
            at.key("max_queue_delay_us"),
            delay.as_micros(),
            MAX_QUEUE_DELAY_LIMIT.as_micros()
        )));
    }
    let preferred = preferred.unwrap_or_default();
    let ascending = preferred.windows(2).all(|w| w[0] < w[1]);
    if !ascending || preferred.iter().any(|&n| n < 2 || n > max_batch) {
        return Err(invalid(format!(
            "{} = {preferred:?}: expected strictly ascending sizes, each in 2..={max_batch} (max_batch)",
            at.key("preferred_batch_sizes")
        )));
    }
    Ok(Some(BatchConfig {
        max_batch,
        max_queue_delay: delay,
        preferred,
    }))
}
