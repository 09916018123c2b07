//! Stage two for `kind = "generate"` pipelines: command, cancel and query
//! topics, generation limits (tokens, prompt size in characters, tokens and
//! messages, live generations), prefill chunking, continuous batching, the
//! per-generation outbox, speculative decoding and the prefix cache, turned
//! into a [`GeneratorConfig`].

use std::path::Path;

use super::common::{At, LevelIndex, RawCommon, common, plain_key};
use super::raw::RawGeneratePipeline;
use super::*;

/// Default bound on messages produced but not yet delivered to a
/// generation's client; past it the generation ends `slow_consumer`.
pub const DEFAULT_MAX_UNSENT: usize = 64;
/// Default bound on the messages of one command.
pub const DEFAULT_MAX_MESSAGES: usize = 64;
/// Default most draft tokens per verify pass.
pub const DEFAULT_DRAFT_TOKENS: usize = 4;
/// Default prefix cache per worker, in tokens.
pub const DEFAULT_PREFIX_CACHE_TOKENS: usize = 1024;

pub(super) fn generator_config(
    p: RawGeneratePipeline,
    base: &Path,
    level_index: LevelIndex,
    levels: &[String],
) -> Result<GeneratorConfig, ConfigError> {
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
            default_deadline_ms: 60_000.0,
            provider: &p.provider,
            fallback: p.fallback,
        },
        base,
        level_index,
        levels,
    )?;
    if let Some(j) = c.providers.iter().position(|x| x.name() == "tensorrt") {
        return Err(at.err(
            &format!("provider[{j}].kind"),
            "= \"tensorrt\": a generation model's inputs change shape at every decode step (the KV cache grows), and TensorRT would rebuild its engine for each new length; use \"cuda\" or \"cpu\"",
        ));
    }
    let (max_generations, max_batch, max_unsent) = concurrency(&at, &p)?;
    let (cancel_key, query_key) = topics(&at, &c.input, p.cancel, p.query)?;
    let (max_tokens, default_max_tokens) = token_limits(&at, p.max_tokens, p.default_max_tokens)?;
    let speculation = speculation(&at, p.speculation.as_deref(), p.draft_model, base)?;
    let draft_tokens = positive(
        &at.key("draft_tokens"),
        p.draft_tokens,
        DEFAULT_DRAFT_TOKENS,
    )?;
    if draft_tokens > 16 {
        return Err(at.err(
            "draft_tokens",
            format!("= {draft_tokens}: at most 16 (a verify pass of more rarely pays)"),
        ));
    }
    let (tools, max_tool_steps) = tools(&at, p.tool, p.max_tool_steps, base, max_unsent)?;
    let offload = super::fleet::offload(&at, p.offload, super::fleet::DEFAULT_GEN_TIMEOUT, false)?;
    Ok(GeneratorConfig {
        name: c.name,
        model: c.model,
        input: c.input,
        output: c.output,
        error_key: c.error_key,
        level: c.level,
        deadline: c.deadline,
        providers: c.providers,
        fallback: c.fallback,
        cancel_key,
        query_key,
        max_generations,
        max_tokens,
        default_max_tokens,
        max_prompt_chars: positive(&at.key("max_prompt_chars"), p.max_prompt_chars, 16_384)?,
        max_prompt_tokens: p
            .max_prompt_tokens
            .map(|n| positive(&at.key("max_prompt_tokens"), Some(n), n))
            .transpose()?,
        max_messages: positive(
            &at.key("max_messages"),
            p.max_messages,
            DEFAULT_MAX_MESSAGES,
        )?,
        prefill_chunk: positive(&at.key("prefill_chunk"), p.prefill_chunk, 64)?,
        max_batch,
        max_unsent,
        speculation,
        draft_tokens,
        prefix_cache_tokens: p.prefix_cache_tokens.unwrap_or(DEFAULT_PREFIX_CACHE_TOKENS),
        allowed_levels: Vec::new(),
        tools,
        max_tool_steps,
        offload,
        ros2: None,
    })
}

/// `max_generations`, `max_batch` (a decode batch holds live generations)
/// and `max_unsent` (one step's token, held-back text and the final
/// message must fit).
fn concurrency(at: &At, p: &RawGeneratePipeline) -> Result<(usize, usize, usize), ConfigError> {
    let max_generations = positive(&at.key("max_generations"), p.max_generations, 4)?;
    let max_batch = positive(&at.key("max_batch"), p.max_batch, 1)?;
    if max_batch > max_generations {
        return Err(at.err(
            "max_batch",
            format!(
                "= {max_batch}: at most max_generations ({max_generations}); a decode batch holds live generations"
            ),
        ));
    }
    let max_unsent = positive(&at.key("max_unsent"), p.max_unsent, DEFAULT_MAX_UNSENT)?;
    if max_unsent < 3 {
        return Err(at.err(
            "max_unsent",
            format!("= {max_unsent}: at least 3 (one step's token, held-back text and the final message)"),
        ));
    }
    Ok((max_generations, max_batch, max_unsent))
}

/// `speculation` (default `"prompt_lookup"`) and `draft_model`, which
/// `"draft"` needs and nothing else takes.
fn speculation(
    at: &At,
    mode: Option<&str>,
    draft_model: Option<std::path::PathBuf>,
    base: &Path,
) -> Result<Speculation, ConfigError> {
    let mode = mode.unwrap_or("prompt_lookup");
    let s = match (mode, draft_model) {
        ("off", None) => Speculation::Off,
        ("prompt_lookup", None) => Speculation::PromptLookup,
        ("draft", Some(dir)) => Speculation::Draft(base.join(dir)),
        ("draft", None) => {
            return Err(at.err(
                "draft_model",
                "missing: speculation = \"draft\" needs the directory of a converted draft model of the same tokenizer",
            ));
        }
        ("off" | "prompt_lookup", Some(_)) => {
            return Err(at.err(
                "draft_model",
                format!("is set but speculation = {mode:?}: it is only used with speculation = \"draft\""),
            ));
        }
        (other, _) => {
            return Err(at.err(
                "speculation",
                format!("= {other:?}: expected \"off\", \"prompt_lookup\" or \"draft\""),
            ));
        }
    };
    Ok(s)
}

/// Default and ceiling of a plan's step budget.
pub const DEFAULT_MAX_TOOL_STEPS: u32 = 4;
pub const MAX_TOOL_STEPS: u32 = 32;

/// Stage one of `[[pipeline.tool]]`: schema paths made absolute and the
/// plan budget bounded. The schemas themselves are compiled at start-up
/// (`llm::tools::ToolSet::load`), which needs the grammar engine.
fn tools(
    at: &At,
    mut raw: Vec<RawTool>,
    max_steps: Option<u32>,
    base: &Path,
    max_unsent: usize,
) -> Result<(Vec<RawTool>, u32), ConfigError> {
    let steps = max_steps.unwrap_or(DEFAULT_MAX_TOOL_STEPS);
    if !(1..=MAX_TOOL_STEPS).contains(&steps) {
        return Err(at.err(
            "max_tool_steps",
            format!("= {steps}: expected 1..={MAX_TOOL_STEPS}"),
        ));
    }
    if !raw.is_empty() && max_unsent < 4 {
        return Err(at.err(
            "max_unsent",
            format!("= {max_unsent}: at least 4 with tools (a step that closes a call also queues the call)"),
        ));
    }
    for t in &mut raw {
        t.schema = base.join(&t.schema);
    }
    Ok((raw, steps))
}

/// The cancel and query keys (defaults beside the command topic).
fn topics(
    at: &At,
    input: &str,
    cancel: Option<String>,
    query: Option<String>,
) -> Result<(String, String), ConfigError> {
    if input.contains('*') {
        return Err(at.err(
            "input",
            format!("= {input:?}: a command topic cannot contain wildcards"),
        ));
    }
    let cancel = cancel.unwrap_or_else(|| format!("{input}/cancel"));
    plain_key(at, "cancel", &cancel)?;
    let query = query.unwrap_or_else(|| format!("{input}/query"));
    plain_key(at, "query", &query)?;
    Ok((cancel, query))
}

fn token_limits(
    at: &At,
    max_tokens: Option<u32>,
    default_max_tokens: Option<u32>,
) -> Result<(u32, u32), ConfigError> {
    let max_tokens = match max_tokens {
        Some(0) => return Err(at.err("max_tokens", "= 0: must be at least 1")),
        Some(n) => n,
        None => 1024,
    };
    let default_max_tokens = default_max_tokens.unwrap_or(max_tokens.min(256));
    if default_max_tokens == 0 || default_max_tokens > max_tokens {
        return Err(at.err(
            "default_max_tokens",
            format!("= {default_max_tokens}: expected 1..={max_tokens} (max_tokens)"),
        ));
    }
    Ok((max_tokens, default_max_tokens))
}
