//! Stage two for `kind = "tensor"` pipelines: input format, constants, state
//! and context bindings, queueing and batching, turned into a
//! [`PipelineConfig`] that cannot hold an invalid combination.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::common::{At, LevelIndex, RawCommon, common};
use super::image::RawPre;
use super::ocr::OcrConfig;
use super::raw::{RawConstant, RawFormat, RawRawFormat, RawTensorPipeline};
use super::*;

/// A chain stage's link before the pipeline it names is resolved to an
/// index (see `super::chain`).
pub(super) struct PendingLink {
    pub after: String,
    pub feed: Option<BTreeMap<String, String>>,
    pub pre: Option<PreSpec>,
}

pub(super) fn tensor_config(
    mut p: RawTensorPipeline,
    base: &Path,
    level_index: LevelIndex,
    levels: &[String],
    limits: &Limits,
) -> Result<(PipelineConfig, Option<PendingLink>), ConfigError> {
    let name = p.name.clone();
    let at = At(&name);
    let (input, output) = super::chain::stage_keys(&at, &p)?;
    let pending = chain_link(&at, &mut p)?;
    let answer = p
        .answer
        .as_ref()
        .map(|a| {
            AnswerConfig::from_raw(a, base)
                .map_err(|e| invalid(format!("pipeline {:?}: {e}", p.name)))
        })
        .transpose()?;
    let raw = RawCommon {
        name: &p.name,
        model: &p.model,
        input: &input,
        output: &output,
        error_key: p.error_key.as_deref(),
        level: p.level.as_deref(),
        deadline_ms: p.deadline_ms,
        default_deadline_ms: 1000.0,
        provider: &p.provider,
        fallback: p.fallback,
    };
    let c = common(raw, base, level_index, levels)?;
    let ocr = p
        .ocr
        .take()
        .map(|t| ocr_config(&at, &p, &t, base))
        .transpose()?;
    let format = match &ocr {
        Some(o) => ocr_format(&at, o)?,
        None => format(&at, p.format, p.raw.take(), p.pre.as_ref())?,
    };
    let warmup = super::warmup::warmup(&at, &p.warmup)?;
    refuse_combinations(&at, (&p, &format, &warmup), p.offload.is_some())?;
    let batch = batch_config(
        &at,
        p.max_batch,
        p.max_queue_delay_us,
        p.preferred_batch_sizes,
    )?;
    let constants = constants(&at, p.constants)?;
    let (state, context) = bindings(&at, p.state, p.context, p.overflow)?;
    let stateful = !state.is_empty() || !context.is_empty();
    let offload = super::fleet::offload(&at, p.offload.take(), c.deadline, stateful)?;
    let config = PipelineConfig {
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
        answer,
        ocr,
        next: None,
        head: usize::MAX,
        offload,
        ros2: None,
    };
    Ok((config, pending))
}

/// A chain stage's `after` and `feed` (and its crops' `[pipeline.pre]`),
/// taken out of `p` until the pipeline they name is resolved.
fn chain_link(at: &At, p: &mut RawTensorPipeline) -> Result<Option<PendingLink>, ConfigError> {
    let pending = match p.after.take() {
        None => None,
        Some(after) => Some(PendingLink {
            after,
            feed: p.feed.take(),
            pre: p.pre.take().map(|r| pre_spec(at, &r)).transpose()?,
        }),
    };
    if pending.is_none() && p.feed.is_some() {
        return Err(at.err(
            "feed",
            "only a chain stage (`after = \"…\"`) is fed by another pipeline",
        ));
    }
    Ok(pending)
}

/// Keys that are valid alone but not together with the pipeline's format,
/// overflow or warm-up.
fn refuse_combinations(
    at: &At,
    (p, format, warmup): (
        &RawTensorPipeline,
        &InputFormat,
        &BTreeMap<String, WarmupShape>,
    ),
    offloads: bool,
) -> Result<(), ConfigError> {
    if offloads && matches!(format, InputFormat::Image(_) | InputFormat::Chained(_)) {
        // The offload request carries tensors (safetensors or raw); camera
        // frames and chain stages are not forwarded yet.
        return Err(at.err(
            "offload",
            "applies to safetensors and raw pipelines only (not image inputs or chain stages)",
        ));
    }
    if p.overflow == Overflow::Latest && p.queue_capacity.is_some() {
        return Err(at.err(
            "queue_capacity",
            "applies to overflow = \"reject\"; with \"latest\" each stream keeps one pending frame and max_streams bounds the queue",
        ));
    }
    if let (InputFormat::Raw { .. }, Some(k)) = (format, warmup.keys().next()) {
        return Err(at.err(
            &format!("warmup.{k}"),
            "does not apply to format = \"raw\": the raw shape is the warm-up shape",
        ));
    }
    Ok(())
}

/// `[pipeline.ocr]`: validated, and the keys it cannot go with refused
/// (the chain prepares frames itself, reads text instead of an answer
/// stage, and runs one frame at a time).
fn ocr_config(
    at: &At,
    p: &RawTensorPipeline,
    raw: &toml::Table,
    base: &Path,
) -> Result<OcrConfig, ConfigError> {
    if p.format != RawFormat::Image {
        return Err(at.err(
            "ocr",
            "an OCR pipeline reads camera frames: it needs format = \"image\"",
        ));
    }
    let refused = [
        (
            "pre",
            p.pre.is_some(),
            "the chain prepares frames itself (rapidocr's size rules); set ocr.max_pixels for the frame limit",
        ),
        (
            "answer",
            p.answer.is_some(),
            "the OCR chain's text lines are the answer",
        ),
        (
            "max_batch",
            p.max_batch.is_some_and(|n| n > 1),
            "the OCR chain runs one frame at a time (it batches the text crops inside)",
        ),
        (
            "state",
            !p.state.is_empty(),
            "the OCR chain carries no state",
        ),
        (
            "context",
            !p.context.is_empty(),
            "the OCR chain carries no state",
        ),
        (
            "constants",
            !p.constants.is_empty(),
            "the OCR models take only the frame",
        ),
        (
            "publish",
            p.publish.is_some(),
            "the OCR chain publishes its answer only",
        ),
    ];
    if let Some((k, _, why)) = refused.iter().find(|(_, set, _)| *set) {
        return Err(at.err(k, format!("is set on an OCR pipeline: {why}")));
    }
    OcrConfig::from_raw(raw, base).map_err(|e| invalid(format!("pipeline {:?}: {e}", p.name)))
}

/// The image input of an OCR pipeline: only the frame limit is the
/// pipeline's. The 32x32 size is a placeholder that lets the pipeline's
/// spec bind the detector's dynamic input; no frame is ever prepared with
/// it (the chain resizes each frame as rapidocr does), so `check` prints the
/// chain's own sizes and derives no TensorRT profile from it.
fn ocr_format(at: &At, o: &OcrConfig) -> Result<InputFormat, ConfigError> {
    let raw = RawPre {
        color: Some("bgr".into()),
        width: Some(32),
        height: Some(32),
        max_pixels: Some(o.params.max_pixels),
        ..RawPre::default()
    };
    Ok(InputFormat::Image(pre_spec(at, &raw)?))
}

fn pre_spec(at: &At, raw: &RawPre) -> Result<PreSpec, ConfigError> {
    PreSpec::from_raw(raw).map_err(|e| at.err(&format!("pre.{}", e.key), e.message))
}

fn format(
    at: &At,
    f: RawFormat,
    raw: Option<RawRawFormat>,
    pre: Option<&RawPre>,
) -> Result<InputFormat, ConfigError> {
    if f == RawFormat::Image {
        if raw.is_some() {
            return Err(at.err("raw", "a [pipeline.raw] table needs format = \"raw\""));
        }
        return Ok(InputFormat::Image(pre_spec(
            at,
            &pre.cloned().unwrap_or_default(),
        )?));
    }
    if pre.is_some() {
        return Err(at.err(
            "pre",
            "a [pipeline.pre] table needs format = \"image\" (or a chain stage fed with crops)",
        ));
    }
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
        (RawFormat::Image, _) => unreachable!("handled above"),
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
