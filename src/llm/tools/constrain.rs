//! Constrained decoding, one step at a time. A [`Constrainer`] (one per
//! generation pipeline, built at start-up from the model's token
//! environment) compiles a request's grammar into a [`CallSession`]; the
//! decode loop then calls, every step, [`CallSession::mask_logits`] on the
//! last position's logits before sampling (disallowed tokens become -inf)
//! and [`CallSession::commit`] with the sampled token after. `commit`
//! reports when the reply turned out to be text, when a call closed (with
//! the parsed call, for the gate) and when the model ended its turn. The
//! mask is llguidance's (an Earley parser over a lexer built lazily on the
//! token trie); its cost per step is measured against a decode step by
//! `benches/tools.rs`.

use std::sync::{Arc, OnceLock};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{ApproximateTokEnv, SimpleVob, TokEnv, TokenId};
use llguidance::{Matcher, ParserFactory};

use super::ToolError;
use super::gate::{ParsedCall, parse_call};
use super::grammar::{CALL_CLOSE, ToolChoice, lark};
use super::spec::ToolSpec;

/// Compiles tool grammars against one model's vocabulary.
pub struct Constrainer {
    factory: Arc<ParserFactory>,
    env: TokEnv,
}

fn factory(env: &TokEnv) -> Result<ParserFactory, ToolError> {
    let mut f = ParserFactory::new_simple(env).map_err(|e| ToolError::Grammar(e.to_string()))?;
    // Problems come back as errors; nothing is written to stderr.
    f.quiet();
    Ok(f)
}

fn matcher(factory: &ParserFactory, lark_text: String) -> Result<Matcher, ToolError> {
    let parser = factory
        .create_parser(TopLevelGrammar::from_lark(lark_text))
        .map_err(|e| ToolError::Grammar(e.to_string()))?;
    let m = Matcher::new(Ok(parser));
    match m.get_error() {
        Some(e) => Err(ToolError::Grammar(e)),
        None => Ok(m),
    }
}

/// Compiles `tool`'s call grammar against a byte-level vocabulary: proves at
/// config time, before any model is loaded, that llguidance accepts the
/// schema.
pub fn check_compiles(tool: &ToolSpec) -> Result<(), ToolError> {
    static BYTES: OnceLock<Result<ParserFactory, ToolError>> = OnceLock::new();
    let f = BYTES
        .get_or_init(|| factory(&ApproximateTokEnv::single_byte_env()))
        .as_ref()
        .map_err(Clone::clone)?;
    matcher(f, lark(&[tool], false)).map(|_| ())
}

impl Constrainer {
    pub fn new(env: TokEnv) -> Result<Constrainer, ToolError> {
        Ok(Constrainer {
            factory: Arc::new(factory(&env)?),
            env,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.env.tok_trie().vocab_size()
    }

    /// The session for one generation that enables `tools` with `choice`;
    /// `None` when nothing is constrained (`tool_choice: "none"` or no
    /// tools). A named tool must be among `tools`.
    pub fn session(
        &self,
        tools: &[&ToolSpec],
        choice: &ToolChoice,
    ) -> Result<Option<CallSession>, ToolError> {
        let (chosen, allow_text): (Vec<&ToolSpec>, bool) = match choice {
            ToolChoice::None => return Ok(None),
            _ if tools.is_empty() => {
                if *choice == ToolChoice::Auto {
                    return Ok(None);
                }
                return Err(ToolError::Request(
                    "tool_choice requires a call but no tools are enabled".into(),
                ));
            }
            ToolChoice::Auto => (tools.to_vec(), true),
            ToolChoice::Required => (tools.to_vec(), false),
            ToolChoice::Tool(name) => {
                let t = tools.iter().find(|t| t.name == *name).ok_or_else(|| {
                    ToolError::Request(format!(
                        "tool_choice names {name:?}, which is not among the enabled tools"
                    ))
                })?;
                (vec![*t], false)
            }
        };
        self.build(&chosen, allow_text).map(Some)
    }

    /// A session that allows only plain text (never starting with `<`):
    /// the answer step of a plan, whose prompt still offers the tools.
    pub fn answer_session(&self) -> Result<CallSession, ToolError> {
        self.build(&[], true)
    }

    fn build(&self, tools: &[&ToolSpec], allow_text: bool) -> Result<CallSession, ToolError> {
        Ok(CallSession {
            matcher: matcher(&self.factory, lark(tools, allow_text))?,
            env: self.env.clone(),
            enabled: tools.iter().map(|t| t.name.clone()).collect(),
            out: Vec::new(),
            mode: Mode::Undecided,
            mask: None,
            done: false,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Undecided,
    Text,
    Call,
}

/// What a committed token meant.
#[derive(Debug, PartialEq)]
pub enum Progress {
    /// Nothing decided yet, or more of the same.
    Continue,
    /// The reply is plain text (`auto` only); reported once, on its first
    /// token. The text is still masked (special tokens stay out).
    Text,
    /// The call is complete: gate it, then end this turn (the grammar
    /// allows nothing but the end of turn after it).
    Call(ParsedCall),
    /// The model ended its turn where the grammar allows it.
    End,
}

/// Constraint state of one generation.
pub struct CallSession {
    matcher: Matcher,
    env: TokEnv,
    enabled: Vec<String>,
    /// Bytes written so far (special tokens excluded).
    out: Vec<u8>,
    mode: Mode,
    /// The mask of the current step, to check the committed token.
    mask: Option<SimpleVob>,
    done: bool,
}

impl CallSession {
    /// Before sampling: sets every logit the grammar does not allow next to
    /// -inf. `logits` is the last position's row, one entry per token.
    pub fn mask_logits(&mut self, logits: &mut [f32]) -> Result<(), ToolError> {
        let mask = self.compute_mask()?;
        if logits.len() != mask.len() {
            return Err(ToolError::Grammar(format!(
                "logits have {} entries; the token environment has {}",
                logits.len(),
                mask.len()
            )));
        }
        apply_mask(&mask, logits);
        self.mask = Some(mask);
        Ok(())
    }

    /// The allowed-token set for the next token (what `mask_logits` applies).
    pub fn compute_mask(&mut self) -> Result<SimpleVob, ToolError> {
        if self.done {
            return Ok(self.env.tok_trie().eos_token_set());
        }
        let m = self
            .matcher
            .compute_mask_or_eos()
            .map_err(|e| ToolError::Grammar(e.to_string()))?;
        if m.is_zero() {
            return Err(ToolError::Grammar("no token is allowed next".into()));
        }
        Ok(m)
    }

    /// After sampling: advances the grammar by `token`.
    pub fn commit(&mut self, token: TokenId) -> Result<Progress, ToolError> {
        if let Some(m) = self.mask.take()
            && !m.is_allowed(token)
        {
            return Err(ToolError::Grammar(format!(
                "token {token} was sampled but the mask forbids it"
            )));
        }
        let trie = self.env.tok_trie();
        if trie.eos_tokens().contains(&token) {
            let accepting = self.done
                || self
                    .matcher
                    .is_accepting()
                    .map_err(|e| ToolError::Grammar(e.to_string()))?;
            if !accepting {
                return Err(ToolError::Grammar(format!(
                    "end of turn (token {token}) inside an unfinished call"
                )));
            }
            self.done = true;
            return Ok(Progress::End);
        }
        if self.done {
            return Err(ToolError::Grammar(format!(
                "token {token} after the call was complete"
            )));
        }
        self.matcher
            .consume_token(token)
            .map_err(|e| ToolError::Grammar(e.to_string()))?;
        if !trie.is_special_token(token) {
            self.out.extend_from_slice(trie.token(token));
        }
        self.progress()
    }

    fn progress(&mut self) -> Result<Progress, ToolError> {
        if self.mode == Mode::Undecided && !self.out.is_empty() {
            if self.out[0] == b'<' {
                self.mode = Mode::Call;
            } else {
                self.mode = Mode::Text;
                return Ok(Progress::Text);
            }
        }
        if self.mode == Mode::Call && self.out.ends_with(CALL_CLOSE.as_bytes()) {
            self.done = true;
            let text = String::from_utf8_lossy(&self.out);
            let call = parse_call(&text)?;
            if !self.enabled.contains(&call.name) {
                return Err(ToolError::NotAllowed(call.name));
            }
            return Ok(Progress::Call(call));
        }
        Ok(Progress::Continue)
    }

    /// When the generation ends for another reason (length, deadline,
    /// cancel): an open call is an error, never a partial publication.
    pub fn finish(&self) -> Result<(), ToolError> {
        if self.mode == Mode::Call && !self.done {
            return Err(ToolError::Incomplete);
        }
        Ok(())
    }

    /// The text written so far (the call's raw text in call mode).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.out).into_owned()
    }

    /// The reply turned out to be a call (possibly still being written).
    pub fn is_call(&self) -> bool {
        self.mode == Mode::Call
    }
}

/// -inf for every token not in `mask`. Whole 32-bit words are tested first:
/// most of a step's mask is either fully allowed or fully forbidden.
fn apply_mask(mask: &SimpleVob, logits: &mut [f32]) {
    for (w, &bits) in mask.as_slice().iter().enumerate() {
        if bits == u32::MAX {
            continue;
        }
        let base = w * 32;
        let end = (base + 32).min(logits.len());
        for (i, l) in logits[base.min(end)..end].iter_mut().enumerate() {
            if bits & (1 << i) == 0 {
                *l = f32::NEG_INFINITY;
            }
        }
    }
}

// A generation moves between worker threads between steps, and its call
// session with it.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<CallSession>();
    send::<Constrainer>();
};
