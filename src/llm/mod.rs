//! Generation pipelines: tokenization → prefill → decode steps → output
//! decoding. No zenoh and no daemon context here: commands arrive parsed
//! (`wire::command`), tokens leave as [`StepOutput`]s that the caller
//! publishes, and live generations are tracked by a [`registry`] whose
//! delivery side belongs to its user. A [`Generation`] is the state of one
//! request (tokens, KV cache, sampler, detokenizer, speculation, cost,
//! timing); the scheduler queues it like any job, and a worker advances it
//! by exactly one model run per turn ([`LlmModel::step`]: a prefill chunk, a
//! decode step or a speculative verify pass), then puts it back, so
//! higher-priority work waits at most one step and generations at one level
//! interleave round-robin. The KV cache is in place ([`kv`]): allocated once
//! per generation at its full length and bound as both the model's past
//! input and present output ([`bind`], [`forward`]), so no step copies it.
//! Prompt prefixes already computed are reused ([`prefix`]); drafts come
//! from prompt lookup or a draft model ([`spec`], [`draft`]).

pub mod batch;
mod bind;
mod decode;
pub mod detok;
pub mod draft;
mod forward;
mod generation;
pub mod kv;
mod model;
pub mod prefix;
pub mod registry;
pub mod sampling;
pub mod spec;
pub mod tools;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{ErrorCode, Rejection};
use crate::wire::command::Message;
pub use batch::{DecodeBatch, DecodeSlots};
pub use generation::{Generation, StepOutput, timing};
pub use model::{LlmModel, load};

/// `generation.json` written by `models/llm/convert_gguf.py`.
#[derive(Deserialize, Debug, Clone)]
pub struct GenerationFile {
    pub model_name: String,
    pub stop_token_ids: Vec<u32>,
    pub context_length: usize,
    pub num_layers: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub chat_template: ChatTemplate,
    /// Interface notes; older conversions have none.
    #[serde(default)]
    pub onnx: OnnxSection,
}

/// generation.json `onnx`: what the loop needs of it.
#[derive(Deserialize, Debug, Clone, Default)]
pub struct OnnxSection {
    /// Inputs a loop may feed (e.g. `num_logits_to_keep`); the model has a
    /// default for each.
    #[serde(default)]
    pub optional_inputs: HashMap<String, serde_json::Value>,
}

#[derive(Deserialize, Debug, Clone)]
pub struct ChatTemplate {
    #[serde(default)]
    pub bos: String,
    #[serde(default)]
    pub default_system: String,
    pub system_prefix: String,
    pub system_suffix: String,
    pub user_prefix: String,
    pub user_suffix: String,
    pub assistant_prefix: String,
    pub assistant_suffix: String,
    pub generation_prompt: String,
}

impl ChatTemplate {
    /// Renders messages the way the model was trained to read them.
    pub fn render(&self, messages: &[Message]) -> String {
        let mut s = self.bos.clone();
        if messages.first().is_none_or(|m| m.role != "system") && !self.default_system.is_empty() {
            s.push_str(&self.system_prefix);
            s.push_str(&self.default_system);
            s.push_str(&self.system_suffix);
        }
        for m in messages {
            let (pre, suf) = match m.role.as_str() {
                "system" => (&self.system_prefix, &self.system_suffix),
                "assistant" => (&self.assistant_prefix, &self.assistant_suffix),
                _ => (&self.user_prefix, &self.user_suffix),
            };
            s.push_str(pre);
            s.push_str(&m.content);
            s.push_str(suf);
        }
        s.push_str(&self.generation_prompt);
        s
    }
}

/// Files of a converted model directory.
pub struct ModelFiles {
    pub onnx: PathBuf,
    pub tokenizer: PathBuf,
    pub generation: GenerationFile,
}

impl ModelFiles {
    pub fn open(dir: &Path) -> Result<ModelFiles, String> {
        let gen_path = dir.join("generation.json");
        let text = std::fs::read_to_string(&gen_path)
            .map_err(|e| format!("{}: {e}", gen_path.display()))?;
        let generation: GenerationFile =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", gen_path.display()))?;
        let onnx = dir.join("model.onnx");
        let tokenizer = dir.join("tokenizer.json");
        for p in [&onnx, &tokenizer] {
            if !p.is_file() {
                return Err(format!("{} not found", p.display()));
            }
        }
        Ok(ModelFiles {
            onnx,
            tokenizer,
            generation,
        })
    }
}

/// Shared, immutable parts of a generation pipeline.
pub struct LlmShared {
    pub tokenizer: tokenizers::Tokenizer,
    pub generation: GenerationFile,
}

impl LlmShared {
    pub fn new(files: &ModelFiles) -> Result<LlmShared, String> {
        let tokenizer = tokenizers::Tokenizer::from_file(&files.tokenizer)
            .map_err(|e| format!("{}: {e}", files.tokenizer.display()))?;
        Ok(LlmShared {
            tokenizer,
            generation: files.generation.clone(),
        })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>, String> {
        self.tokenizer
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| e.to_string())
    }

    /// The prompt's token ids after chat templating, refused with
    /// `prompt_too_long` past `max_tokens` (or the model's context).
    /// Called at intake, so an over-long prompt never reaches a worker.
    pub fn prompt_ids(
        &self,
        messages: &[Message],
        max_tokens: usize,
    ) -> Result<Vec<u32>, Rejection> {
        let text = self.generation.chat_template.render(messages);
        let ids = self
            .encode(&text)
            .map_err(|e| Rejection::new(ErrorCode::BadCommand, format!("cannot tokenize: {e}")))?;
        let limit = max_tokens.min(self.generation.context_length.saturating_sub(1));
        if ids.is_empty() || ids.len() > limit {
            return Err(Rejection::new(
                ErrorCode::PromptTooLong,
                format!(
                    "prompt is {} tokens after the chat template; the limit is {limit} (max_prompt_tokens; model context {})",
                    ids.len(),
                    self.generation.context_length
                ),
            ));
        }
        Ok(ids)
    }

    /// `max_prompt_tokens` when the config leaves it out: the model's
    /// context less room for `max_tokens`, and at most
    /// [`DEFAULT_MAX_PROMPT_TOKENS`] so one prompt's prefill stays a few
    /// seconds of a worker, not minutes.
    pub fn default_max_prompt_tokens(&self, max_tokens: u32) -> usize {
        self.generation
            .context_length
            .saturating_sub(max_tokens as usize + 1)
            .clamp(1, DEFAULT_MAX_PROMPT_TOKENS)
    }

    pub fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, true).unwrap_or_default()
    }
}

/// Upper bound of the default `max_prompt_tokens`.
pub const DEFAULT_MAX_PROMPT_TOKENS: usize = 2048;

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    Stop,
    Length,
    Deadline,
    Cancelled,
    Error,
    /// The model wrote a tool call that passed the gate; the turn ends
    /// there (the plan's next step is the client's next command).
    ToolCall,
}

impl Finish {
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::Deadline => "deadline",
            Finish::Cancelled => "cancelled",
            Finish::Error => "error",
            Finish::ToolCall => "tool_call",
        }
    }
}
