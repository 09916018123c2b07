//! Tools inside a running generation. [`PipeTools`] is built once per
//! generation pipeline at start-up (the validated tool set, the grammar
//! compiler over the model's vocabulary, the shared gate with its rate
//! limiters); [`prepare`] turns a command's tool fields into the prompt's
//! messages and a [`ToolRun`] at intake (zenoh callback: one grammar
//! compile, ~2 ms); the decode loop then calls [`ToolRun::mask`] between the
//! logits and the sampler and [`ToolRun::commit`] after it, on the worker.
//! Neither waits on anything: the mask is computed in place and the gate's
//! rate limiter is one atomic. An admitted call is held in the run until the
//! generation's egress takes it ([`ToolRun::take_admitted`]) and queues it on
//! the generation's outbox, so publishing happens off the worker.
//!
//! A plan is driven by its client, one command per step: the command carries
//! the conversation so far, with each result as a `{"role": "tool", "name":
//! …, "content": …}` message. The number of such results is the plan's step
//! count; once it reaches the step budget the model may only answer in
//! words.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use llguidance::toktrie::TokenId;

use super::gate::CallContext;
use super::prompt::{self, Then};
use super::{
    Admitted, CallSession, Constrainer, Progress, ToolChoice, ToolError, ToolGate, ToolSet,
};
use crate::error::{ErrorCode, Rejection};
use crate::wire::command::{Message, ToolRequest};

/// The tools of one generation pipeline, shared by every request.
pub struct PipeTools {
    pub set: Arc<ToolSet>,
    pub constrainer: Constrainer,
    pub gate: Arc<ToolGate>,
    /// Ceiling and default of a command's `max_steps`.
    pub max_steps: u32,
}

/// What [`PipeTools::new`] needs from the model.
pub struct ModelVocab<'a> {
    pub tokenizer_json: &'a Path,
    pub tokenizer: tokenizers::Tokenizer,
    pub stop_ids: &'a [u32],
    pub logits_width: usize,
}

impl PipeTools {
    pub fn new(
        set: Arc<ToolSet>,
        vocab: ModelVocab,
        max_steps: u32,
    ) -> Result<PipeTools, ToolError> {
        let env = super::env::token_env(
            vocab.tokenizer_json,
            vocab.tokenizer,
            vocab.stop_ids,
            vocab.logits_width,
        )?;
        Ok(PipeTools {
            constrainer: Constrainer::new(env)?,
            gate: Arc::new(ToolGate::new(set.clone(), Instant::now())),
            set,
            max_steps,
        })
    }
}

impl ToolError {
    /// The daemon's error for this failure: command problems are
    /// `bad_tool_request`, a call that ended unfinished is
    /// `tool_call_incomplete`, every refusal of a written call is
    /// `tool_call_refused` with the finer code first in the message.
    pub fn rejection(&self) -> Rejection {
        match self {
            ToolError::Request(_) => Rejection::new(ErrorCode::BadToolRequest, self.to_string()),
            ToolError::Incomplete => {
                Rejection::new(ErrorCode::ToolCallIncomplete, self.to_string())
            }
            _ => Rejection::new(
                ErrorCode::ToolCallRefused,
                format!("{}: {self}", self.code()),
            ),
        }
    }
}

/// Constraint and gate state of one generation step of a plan.
pub struct ToolRun {
    session: CallSession,
    gate: Arc<ToolGate>,
    enabled: Vec<String>,
    dry_run: bool,
    /// This step's index in the plan: the call id is `<id>.call<seq>`.
    seq: u32,
    admitted: Option<Admitted>,
}

/// What a committed token meant to the decode loop.
#[derive(Debug, PartialEq)]
pub enum Committed {
    /// Go on decoding.
    Continue,
    /// A call closed and passed the gate: end the turn (the call waits in
    /// the run for egress).
    Call,
}

impl ToolRun {
    /// Before sampling: forbids every token the grammar does not allow.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), ToolError> {
        self.session.mask_logits(logits)
    }

    /// After sampling: advances the grammar; a closed call goes through
    /// the gate here (validation, allow-list, rate limit).
    pub fn commit(
        &mut self,
        generation: &str,
        token: u32,
        now: Instant,
    ) -> Result<Committed, ToolError> {
        match self.session.commit(token as TokenId)? {
            Progress::Call(call) => {
                let ctx = CallContext {
                    generation,
                    seq: self.seq,
                    enabled: &self.enabled,
                    dry_run: self.dry_run,
                };
                self.admitted = Some(self.gate.admit(&ctx, call, now)?);
                Ok(Committed::Call)
            }
            Progress::Continue | Progress::Text | Progress::End => Ok(Committed::Continue),
        }
    }

    /// The admitted call, once (egress).
    pub fn take_admitted(&mut self) -> Option<Admitted> {
        self.admitted.take()
    }

    /// When the generation ends early: an unfinished call is an error.
    pub fn finish(&self) -> Result<(), ToolError> {
        self.session.finish()
    }
}

/// Steps already taken: one per tool result in the conversation.
fn steps_done(messages: &[Message]) -> u32 {
    messages.iter().filter(|m| m.role == "tool").count() as u32
}

/// The command's messages as the model reads them (tools in the system
/// turn, results as `<tool_response>` turns) and the step's tool run
/// (`None` with `tool_choice: "none"`). Refuses a command that asks for
/// tools the pipeline does not have.
pub fn prepare(
    pipe: Option<&PipeTools>,
    req: &ToolRequest,
    messages: &[Message],
) -> Result<(Vec<Message>, Option<Box<ToolRun>>), ToolError> {
    let Some(pipe) = pipe else {
        return Err(ToolError::Request(
            "this pipeline offers no tools ([[pipeline.tool]])".into(),
        ));
    };
    let tools = pipe.set.select(&req.tools)?;
    let max_steps = req.max_steps.unwrap_or(pipe.max_steps);
    if max_steps == 0 || max_steps > pipe.max_steps {
        return Err(ToolError::Request(format!(
            "max_steps = {max_steps}: expected 1..={} (max_tool_steps)",
            pipe.max_steps
        )));
    }
    let choice = ToolChoice::from_json(req.tool_choice.as_ref())?;
    let done = steps_done(messages);
    let spent = done >= max_steps;
    if done > max_steps {
        return Err(ToolError::Request(format!(
            "{done} tool results but max_steps = {max_steps}: the plan's budget is spent"
        )));
    }
    let last_tool = messages.iter().rposition(|m| m.role == "tool");
    let rendered: Vec<Message> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| match (m.role.as_str(), &m.name) {
            ("tool", Some(name)) => {
                let then = if spent && Some(i) == last_tool {
                    Then::Answer
                } else {
                    Then::Continue
                };
                prompt::tool_result(name, &m.content, then)
            }
            _ => m.clone(),
        })
        .collect();
    if choice == ToolChoice::None {
        return Ok((rendered, None));
    }
    let messages = prompt::with_tools(&rendered, &tools);
    let session = if spent {
        Some(pipe.constrainer.answer_session()?)
    } else {
        pipe.constrainer.session(&tools, &choice)?
    };
    let run = session.map(|session| {
        Box::new(ToolRun {
            session,
            gate: pipe.gate.clone(),
            enabled: tools.iter().map(|t| t.name.clone()).collect(),
            dry_run: req.dry_run,
            seq: done,
            admitted: None,
        })
    });
    Ok((messages, run))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use llguidance::toktrie::{ApproximateTokEnv, TokEnv};

    use super::*;
    use crate::config::RawTool;

    fn pipe() -> (PipeTools, TokEnv) {
        let raw = RawTool {
            name: "move_arm".into(),
            description: "Move the gripper.".into(),
            schema: PathBuf::from("config/tools/move_arm.json"),
            key: "robot/arm/cmd".into(),
            rate_per_s: None,
            burst: Some(2),
            dry_run: None,
        };
        let set =
            Arc::new(ToolSet::load("chat", &[raw], Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap());
        let env = ApproximateTokEnv::single_byte_env();
        let pipe = PipeTools {
            constrainer: Constrainer::new(env.clone()).unwrap(),
            gate: Arc::new(ToolGate::new(set.clone(), Instant::now())),
            set,
            max_steps: 2,
        };
        (pipe, env)
    }

    fn msg(role: &str, content: &str, name: Option<&str>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
            name: name.map(String::from),
        }
    }

    fn req(max_steps: Option<u32>, dry_run: bool) -> ToolRequest {
        ToolRequest {
            tools: vec!["move_arm".into()],
            tool_choice: Some(serde_json::json!("required")),
            dry_run,
            max_steps,
        }
    }

    /// Feeds `text` byte by byte through the run as the decode loop does.
    fn write(run: &mut ToolRun, env: &TokEnv, text: &str) -> Result<Vec<Committed>, ToolError> {
        let mut out = Vec::new();
        for t in env.tokenize(text) {
            let mut logits = vec![0.0f32; env.tok_trie().vocab_size()];
            run.mask(&mut logits)?;
            if logits[t as usize] == f32::NEG_INFINITY {
                return Err(ToolError::Grammar(format!("masked at {t}")));
            }
            out.push(run.commit("p1", t, Instant::now())?);
        }
        Ok(out)
    }

    #[test]
    fn a_step_offers_the_tools_and_gates_the_closed_call() {
        let (pipe, env) = pipe();
        let user = [msg("user", "Pick up the cube.", None)];
        let (m, run) = prepare(Some(&pipe), &req(None, true), &user).unwrap();
        assert!(m[0].role == "system" && m[0].content.contains("<tools>"));
        let mut run = run.expect("required: a grammar");
        let call = "<tool_call>[{\"name\": \"move_arm\", \"arguments\": {\"x\": 0.3, \"y\": 0.1, \"z\": 0.05, \"gripper\": \"close\"}}]</tool_call>";
        let steps = write(&mut run, &env, call).unwrap();
        assert_eq!(steps.last(), Some(&Committed::Call));
        let a = run.take_admitted().expect("admitted");
        assert_eq!(a.call_id(), "p1.call0");
        assert!(a.publication().is_none(), "the command asked for a dry run");
        assert!(run.take_admitted().is_none(), "taken once");
    }

    #[test]
    fn results_count_steps_and_a_spent_budget_allows_words_only() {
        let (pipe, env) = pipe();
        let conv = [
            msg("user", "Pick up the cube.", None),
            msg("assistant", "<tool_call>[…]</tool_call>", None),
            msg("tool", "done", Some("move_arm")),
        ];
        let (m, run) = prepare(Some(&pipe), &req(Some(2), false), &conv).unwrap();
        assert!(m.last().unwrap().content.starts_with("<tool_response>"));
        assert!(!m.last().unwrap().content.contains("plain words"));
        let mut run = run.unwrap();
        let call = "<tool_call>[{\"name\": \"move_arm\", \"arguments\": {\"x\": 0.1, \"y\": 0.1, \"z\": 0.1, \"gripper\": \"open\"}}]</tool_call>";
        write(&mut run, &env, call).unwrap();
        assert_eq!(run.take_admitted().unwrap().call_id(), "p1.call1");

        let (m, run) = prepare(Some(&pipe), &req(Some(1), false), &conv).unwrap();
        assert!(
            m.last()
                .unwrap()
                .content
                .ends_with("Answer in plain words.")
        );
        let mut run = run.unwrap();
        assert!(write(&mut run, &env, "<").is_err(), "no call can open");
        let (_, run) = prepare(Some(&pipe), &req(Some(1), false), &conv).unwrap();
        assert!(write(&mut run.unwrap(), &env, "Done.").is_ok());

        let over = [conv[0].clone(), conv[2].clone(), conv[2].clone()];
        let e = prepare(Some(&pipe), &req(Some(1), false), &over)
            .err()
            .unwrap();
        assert_eq!(e.rejection().code, ErrorCode::BadToolRequest);
    }

    #[test]
    fn requests_a_pipeline_cannot_serve_are_refused() {
        let (pipe, _) = pipe();
        let user = [msg("user", "hi", None)];
        for (p, r) in [
            (None, req(None, false)),
            (Some(&pipe), req(Some(3), false)),
            (
                Some(&pipe),
                ToolRequest {
                    tools: vec!["fly".into()],
                    ..req(None, false)
                },
            ),
        ] {
            let e = prepare(p, &r, &user).err().expect("refused");
            assert_eq!(e.rejection().code, ErrorCode::BadToolRequest, "{e}");
        }
        let none = ToolRequest {
            tool_choice: Some(serde_json::json!("none")),
            ..req(None, false)
        };
        let (m, run) = prepare(Some(&pipe), &none, &user).unwrap();
        assert!(
            run.is_none() && m == user,
            "none: no tools described, no grammar"
        );
        assert_eq!(
            ToolError::Incomplete.rejection().code,
            ErrorCode::ToolCallIncomplete
        );
        let r = ToolError::RateLimited {
            tool: "move_arm".into(),
            retry_ms: 5,
        }
        .rejection();
        assert_eq!(r.code, ErrorCode::ToolCallRefused);
        assert!(
            r.message.starts_with("tool_rate_limited: "),
            "{}",
            r.message
        );
    }
}
