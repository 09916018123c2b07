//! The token environment llguidance masks against: the bytes of every
//! token of the model's vocabulary (read from its `tokenizer.json`, with
//! special tokens marked so grammar text can never spell them), the model's
//! stop tokens as end-of-sequence, and the model's own tokenizer for the
//! few strings llguidance tokenizes itself. Built once per generation
//! pipeline at start-up (a few tens of ms) and shared by every request.
//!
//! The daemon's `tokenizers` (pure Rust, fancy-regex) is reused here rather
//! than `toktrie_hf_tokenizers`, which pins another `tokenizers` release
//! with other features: one tokenizer implementation in the binary, and no
//! C code.

use std::path::Path;
use std::sync::Arc;

use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use super::ToolError;

struct ModelTokEnv {
    trie: TokTrie,
    tokenizer: tokenizers::Tokenizer,
}

impl TokenizerEnv for ModelTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        // Valid UTF-8 runs go through the model's tokenizer; anything else
        // falls back to the trie's greedy split (that is llguidance's
        // contract for this method).
        self.trie.tokenize_with_greedy_fallback(s, |text| {
            self.tokenizer
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .unwrap_or_default()
        })
    }
}

/// Builds the environment from `tokenizer.json` (its bytes per token), the
/// loaded tokenizer, the model's stop token ids (the first is the primary
/// end of sequence) and the width of the model's logits.
pub fn token_env(
    tokenizer_json: &Path,
    tokenizer: tokenizers::Tokenizer,
    stop_ids: &[u32],
    logits_width: usize,
) -> Result<TokEnv, ToolError> {
    let err = |m: String| ToolError::TokenEnv(format!("{}: {m}", tokenizer_json.display()));
    let text = std::fs::read_to_string(tokenizer_json).map_err(|e| err(e.to_string()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| err(format!("not JSON: {e}")))?;
    let mut words = llguidance::token_bytes_from_tokenizer_json(&json)
        .map_err(|e| err(format!("cannot read token bytes: {e}")))?;
    if words.len() > logits_width {
        return Err(err(format!(
            "{} tokens, but the model's logits have {logits_width} entries",
            words.len()
        )));
    }
    // Ids the model can emit but the tokenizer never names (padding of the
    // embedding matrix) become special tokens: no grammar text reaches them.
    while words.len() < logits_width {
        let mut w = format!(".<[{}]>", words.len()).into_bytes();
        w[0] = TokTrie::SPECIAL_TOKEN_MARKER;
        words.push(w);
    }
    let Some(&eos) = stop_ids.first() else {
        return Err(err("the model has no stop token".into()));
    };
    if let Some(bad) = stop_ids.iter().find(|&&t| t as usize >= logits_width) {
        return Err(err(format!(
            "stop token {bad} is outside the vocabulary of {logits_width}"
        )));
    }
    let info = TokRxInfo::new(logits_width as u32, eos);
    let trie = TokTrie::from(&info, &words).with_eos_tokens(stop_ids);
    Ok(Arc::new(ModelTokEnv { trie, tokenizer }))
}
