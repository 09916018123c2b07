//! `[[pipeline.tool]]`: the tools a generation pipeline offers, read at
//! start-up. Stage one is the raw TOML entry (unknown keys rejected); stage
//! two ([`ToolSet::load`]) reads each JSON Schema file and compiles it twice
//! — into a validator (`jsonschema`, the check every call must pass before
//! it is published) and into an llguidance grammar (the constraint used
//! while the call is written) — so a schema either engine cannot handle is
//! a start-up error naming the tool and the file, never a runtime surprise.
//! The validated form cannot hold an unusable tool.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::ToolError;
use super::rate::Rate;
pub use crate::config::RawTool;

/// Most tools one pipeline may offer: each adds its description and schema
/// to every prompt that enables it.
pub const MAX_TOOLS: usize = 32;
/// Largest schema file (bytes).
pub const MAX_SCHEMA_BYTES: u64 = 64 * 1024;
/// Longest tool description (characters).
pub const MAX_DESCRIPTION_CHARS: usize = 1000;
/// Longest tool name.
pub const MAX_NAME_LEN: usize = 64;
/// Default sustained rate and burst: one call per second, no burst. A
/// moving arm rarely needs more, and a runaway plan is stopped early.
pub const DEFAULT_RATE_PER_S: f64 = 1.0;
pub const DEFAULT_BURST: u32 = 1;
/// Upper bounds for `rate_per_s` and `burst`.
pub const MAX_RATE_PER_S: f64 = 1000.0;
pub const MAX_BURST: u32 = 100;
/// Values of `tool_choice` that therefore cannot be tool names.
const RESERVED_NAMES: [&str; 3] = ["none", "auto", "required"];

/// A tool after validation.
#[derive(Clone, Debug)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    pub schema_path: PathBuf,
    /// The arguments schema (a JSON object schema).
    pub schema: Value,
    validator: Arc<jsonschema::Validator>,
    pub key: String,
    pub rate: Rate,
    pub dry_run: bool,
}

impl ToolSpec {
    /// Checks `arguments` against the schema; the error lists every failure
    /// with its JSON pointer.
    pub fn validate(&self, arguments: &Value) -> Result<(), ToolError> {
        let errors: Vec<String> = self
            .validator
            .iter_errors(arguments)
            .map(|e| {
                let at = e.instance_path().to_string();
                if at.is_empty() {
                    e.to_string()
                } else {
                    format!("{at}: {e}")
                }
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ToolError::Invalid {
                tool: self.name.clone(),
                reason: errors.join("; "),
            })
        }
    }
}

/// The tools of one pipeline, in config order.
#[derive(Clone, Debug, Default)]
pub struct ToolSet {
    tools: Vec<ToolSpec>,
}

impl ToolSet {
    /// Validates `[[pipeline.tool]]` entries of pipeline `pipeline`; schema
    /// paths are relative to `base_dir` (the config file's directory).
    pub fn load(pipeline: &str, raw: &[RawTool], base_dir: &Path) -> Result<ToolSet, ToolError> {
        if raw.len() > MAX_TOOLS {
            return Err(ToolError::Config(format!(
                "pipeline {pipeline:?}: {} tools; at most {MAX_TOOLS}",
                raw.len()
            )));
        }
        let mut tools: Vec<ToolSpec> = Vec::with_capacity(raw.len());
        for (i, r) in raw.iter().enumerate() {
            let at = format!("pipeline {pipeline:?} tool[{i}] ({:?})", r.name);
            let t = tool(r, base_dir).map_err(|e| ToolError::Config(format!("{at}: {e}")))?;
            if tools.iter().any(|o| o.name == t.name) {
                return Err(ToolError::Config(format!(
                    "{at}: name {:?} is used twice; tool names must be unique",
                    t.name
                )));
            }
            tools.push(t);
        }
        Ok(ToolSet { tools })
    }

    pub fn get(&self, name: &str) -> Option<&ToolSpec> {
        self.tools.iter().find(|t| t.name == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ToolSpec> {
        self.tools.iter()
    }

    pub fn len(&self) -> usize {
        self.tools.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// The tools a command enables, by name, in the command's order;
    /// unknown or repeated names are refused.
    pub fn select(&self, names: &[String]) -> Result<Vec<&ToolSpec>, ToolError> {
        let mut out: Vec<&ToolSpec> = Vec::with_capacity(names.len());
        for n in names {
            let t = self.get(n).ok_or_else(|| {
                let offered: Vec<&str> = self.tools.iter().map(|t| t.name.as_str()).collect();
                ToolError::Request(format!(
                    "tools: {n:?} is not a tool of this pipeline (offered: {offered:?})"
                ))
            })?;
            if out.iter().any(|o| o.name == t.name) {
                return Err(ToolError::Request(format!("tools: {n:?} is listed twice")));
            }
            out.push(t);
        }
        Ok(out)
    }
}

fn valid_name(n: &str) -> bool {
    let mut b = n.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
        && n.len() <= MAX_NAME_LEN
        && !RESERVED_NAMES.contains(&n)
}

/// A key a call may be published on: a valid zenoh key expression that
/// names exactly one key (a wildcard would let one call reach many).
fn check_key(key: &str) -> Result<(), String> {
    let ke = zenoh::key_expr::KeyExpr::try_from(key)
        .map_err(|e| format!("key = {key:?}: not a zenoh key expression: {e}"))?;
    if ke.as_str() != key {
        return Err(format!(
            "key = {key:?}: use the canonical form {:?}",
            ke.as_str()
        ));
    }
    if key.contains('*') || key.contains('$') {
        return Err(format!(
            "key = {key:?}: wildcards are not allowed; a tool publishes on exactly one key"
        ));
    }
    Ok(())
}

fn tool(r: &RawTool, base_dir: &Path) -> Result<ToolSpec, String> {
    if !valid_name(&r.name) {
        return Err(format!(
            "name = {:?}: expected 1-{MAX_NAME_LEN} characters [A-Za-z_][A-Za-z0-9_]*, not \"none\", \"auto\" or \"required\"",
            r.name
        ));
    }
    let chars = r.description.chars().count();
    if r.description.trim().is_empty() || chars > MAX_DESCRIPTION_CHARS {
        return Err(format!(
            "description: {chars} characters; expected 1-{MAX_DESCRIPTION_CHARS} (the model reads it)"
        ));
    }
    check_key(&r.key)?;
    let per_s = r.rate_per_s.unwrap_or(DEFAULT_RATE_PER_S);
    if !(per_s.is_finite() && per_s > 0.0 && per_s <= MAX_RATE_PER_S) {
        return Err(format!(
            "rate_per_s = {per_s}: expected > 0 and at most {MAX_RATE_PER_S}"
        ));
    }
    let burst = r.burst.unwrap_or(DEFAULT_BURST);
    if !(1..=MAX_BURST).contains(&burst) {
        return Err(format!("burst = {burst}: expected 1..={MAX_BURST}"));
    }
    let schema_path = base_dir.join(&r.schema);
    let schema = read_schema(&schema_path)?;
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .map_err(|e| {
            format!(
                "schema {}: not a valid JSON Schema: {e}",
                schema_path.display()
            )
        })?;
    let spec = ToolSpec {
        name: r.name.clone(),
        description: r.description.trim().to_string(),
        schema_path,
        schema,
        validator: Arc::new(validator),
        key: r.key.clone(),
        rate: Rate { per_s, burst },
        dry_run: r.dry_run.unwrap_or(false),
    };
    super::constrain::check_compiles(&spec)
        .map_err(|e| format!("schema {}: {e}", spec.schema_path.display()))?;
    Ok(spec)
}

/// Reads a schema file and checks the shape every tool needs: an object
/// schema that refuses properties it does not list.
fn read_schema(path: &Path) -> Result<Value, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("schema {shown}: {e}"))?;
    if meta.len() > MAX_SCHEMA_BYTES {
        return Err(format!(
            "schema {shown}: {} bytes; at most {MAX_SCHEMA_BYTES}",
            meta.len()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("schema {shown}: {e}"))?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| format!("schema {shown}: not JSON: {e}"))?;
    let Some(o) = v.as_object() else {
        return Err(format!("schema {shown}: expected a JSON object"));
    };
    if o.get("type") != Some(&Value::String("object".into())) {
        return Err(format!(
            "schema {shown}: \"type\" must be \"object\" (a call's arguments are an object)"
        ));
    }
    if o.get("additionalProperties") != Some(&Value::Bool(false)) {
        return Err(format!(
            "schema {shown}: set \"additionalProperties\": false, so a call can carry no argument the robot does not expect"
        ));
    }
    Ok(v)
}
