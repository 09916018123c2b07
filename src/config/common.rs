//! Stage two for the keys every `[[pipeline]]` kind has: name, zenoh keys,
//! level, deadline and the execution-provider chain. Errors name the
//! pipeline and the key (`pipeline "vad": deadline_ms = 0: …`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{Fallback, RawProvider};
use super::{ConfigError, Provider, invalid, resolve};

/// Names a key of one pipeline in error messages.
pub(super) struct At<'a>(pub &'a str);

impl At<'_> {
    pub fn key(&self, k: &str) -> String {
        format!("pipeline {:?}: {k}", self.0)
    }

    pub fn err(&self, k: &str, msg: impl std::fmt::Display) -> ConfigError {
        invalid(format!("{} {msg}", self.key(k)))
    }
}

/// Finds a level by name; the error lists the levels that exist.
pub(super) type LevelIndex<'a> = &'a dyn Fn(&str, &str) -> Result<usize, ConfigError>;

/// What both pipeline kinds share, validated.
pub(super) struct Common {
    pub name: String,
    pub model: PathBuf,
    pub input: String,
    pub output: String,
    pub error_key: String,
    pub level: usize,
    pub deadline: Duration,
    pub providers: Vec<Provider>,
    pub fallback: Fallback,
}

/// The shared keys as they come from either kind's raw table.
pub(super) struct RawCommon<'a> {
    pub name: &'a str,
    pub model: &'a Path,
    pub input: &'a str,
    pub output: &'a str,
    pub error_key: Option<&'a str>,
    pub level: Option<&'a str>,
    pub deadline_ms: Option<f64>,
    pub default_deadline_ms: f64,
    pub provider: &'a [RawProvider],
    pub fallback: Fallback,
}

pub(super) fn key_expr_ok(key: &str) -> bool {
    zenoh::key_expr::keyexpr::new(key).is_ok()
}

/// A zenoh key without wildcards (outputs, error keys, command topics).
pub(super) fn plain_key(at: &At, k: &str, v: &str) -> Result<(), ConfigError> {
    if !key_expr_ok(v) || v.contains('*') {
        return Err(at.err(
            k,
            format!("= {v:?}: not a valid zenoh key without wildcards"),
        ));
    }
    Ok(())
}

pub(super) fn common(
    r: RawCommon,
    base: &Path,
    level_index: LevelIndex,
    levels: &[String],
) -> Result<Common, ConfigError> {
    let at = At(r.name);
    if r.name.is_empty()
        || !r
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(invalid(format!(
            "pipeline name {:?}: use letters, digits, '_' or '-'",
            r.name
        )));
    }
    if !key_expr_ok(r.input) {
        return Err(at.err(
            "input",
            format!(
                "= {:?}: not a valid zenoh key expression (chunks separated by '/', wildcards `*` and `**` only as whole chunks, no leading or trailing '/')",
                r.input
            ),
        ));
    }
    if r.output.contains('*') {
        return Err(at.err(
            "output",
            format!(
                "= {:?}: an output key cannot contain wildcards; the stream id is appended to it",
                r.output
            ),
        ));
    }
    plain_key(&at, "output", r.output)?;
    let error_key = r
        .error_key
        .map_or_else(|| format!("{}/error", r.output), str::to_string);
    plain_key(&at, "error_key", &error_key)?;
    let level = match r.level {
        Some(l) => level_index(&at.key("level"), l)?,
        None => levels.len() - 1,
    };
    let deadline_ms = r.deadline_ms.unwrap_or(r.default_deadline_ms);
    if !(deadline_ms.is_finite() && deadline_ms > 0.0 && deadline_ms <= 3_600_000.0) {
        return Err(at.err(
            "deadline_ms",
            format!("= {deadline_ms}: expected a latency budget in milliseconds, > 0 and at most one hour"),
        ));
    }
    Ok(Common {
        name: r.name.to_string(),
        model: resolve(base, r.model),
        input: r.input.to_string(),
        output: r.output.to_string(),
        error_key,
        level,
        deadline: Duration::from_secs_f64(deadline_ms / 1000.0),
        providers: super::provider::providers(&at, r.provider, base)?,
        fallback: r.fallback,
    })
}
