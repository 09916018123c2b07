//! The receiving half of `reflexd prompt`: follows one sent command to its
//! end. It reads token and final messages (from the reply topic or the
//! query's replies) and the pipeline's error topic, prints the text as it
//! streams, forwards a Ctrl-C as a cancel, and builds the [`Summary`].

use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::mpsc;
use zenoh::handlers::FifoChannelHandler;
use zenoh::query::Reply;
use zenoh::sample::Sample;

use super::*;

/// Where token and final messages come from.
pub(super) enum Source {
    Topic(zenoh::pubsub::Subscriber<FifoChannelHandler<Sample>>),
    Query(FifoChannelHandler<Reply>),
}

impl Source {
    /// The next message's payload; `Err` for an error reply or the end of
    /// the query.
    pub(super) async fn next(&self) -> Result<Vec<u8>, String> {
        match self {
            Source::Topic(s) => s
                .recv_async()
                .await
                .map(|s| s.payload().to_bytes().into_owned())
                .map_err(|e| e.to_string()),
            Source::Query(r) => match r.recv_async().await {
                Ok(reply) => match reply.result() {
                    Ok(s) => Ok(s.payload().to_bytes().into_owned()),
                    Err(e) => Err(format!(
                        "error reply: {}",
                        String::from_utf8_lossy(&e.payload().to_bytes())
                    )),
                },
                Err(_) => Err("no more replies (query timeout or daemon gone)".into()),
            },
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One sent command and everything needed to follow it to its end.
pub(super) struct Conversation<'a> {
    pub(super) args: &'a PromptArgs,
    pub(super) id: String,
    pub(super) session: &'a zenoh::Session,
    pub(super) cancel_key: String,
    /// Where replies come from (for messages).
    pub(super) reply_key: String,
    pub(super) source: Source,
    pub(super) errors: zenoh::pubsub::Subscriber<FifoChannelHandler<Sample>>,
    pub(super) sent: Instant,
}

/// Progress of the stream as seen here.
#[derive(Default)]
struct Progress {
    first_token: Option<Instant>,
    messages: usize,
    /// Running text ended mid-line: end it before anything else is printed.
    open_line: bool,
    interrupted: bool,
}

impl Conversation<'_> {
    /// Best effort: the daemon drops a cancel for an id it does not know.
    async fn cancel(&self) {
        let body = json!({ "id": self.id }).to_string();
        if let Err(e) = self
            .session
            .put(self.cancel_key.clone(), body)
            .congestion_control(CongestionControl::Block)
            .await
        {
            tracing::warn!(key = %self.cancel_key, error = %e, "cannot send the cancel");
        }
    }

    fn end_line<O: Write>(&self, out: &mut O, p: &mut Progress) -> Result<(), ClientError> {
        if p.open_line {
            p.open_line = false;
            writeln!(out)
                .and_then(|_| out.flush())
                .map_err(ClientError::Output)?;
        }
        Ok(())
    }

    fn token<O: Write>(&self, out: &mut O, p: &mut Progress, v: &Value) -> Result<(), ClientError> {
        let now = Instant::now();
        p.first_token.get_or_insert(now);
        p.messages += 1;
        let text = v["text"].as_str().unwrap_or_default();
        let r = if self.args.lines {
            writeln!(
                out,
                "[llm {} +{:.3}s] #{:<3} {text:?}",
                self.id,
                (now - self.sent).as_secs_f64(),
                v["seq"]
            )
        } else {
            if !text.is_empty() {
                p.open_line = !text.ends_with('\n');
            }
            write!(out, "{text}")
        };
        // Flushed per token: stdout is line-buffered, and a token is rarely
        // a whole line.
        r.and_then(|_| out.flush()).map_err(ClientError::Output)
    }

    pub(super) async fn run<O: Write, E: Write>(
        &self,
        out: &mut O,
        err: &mut E,
        interrupts: &mut mpsc::Receiver<()>,
    ) -> Result<Summary, ClientError> {
        let mut p = Progress::default();
        let mut until = tokio::time::Instant::from_std(self.sent + self.args.timeout);
        loop {
            tokio::select! {
                m = self.source.next() => {
                    let bytes = match m {
                        Ok(b) => b,
                        Err(reason) => {
                            self.end_line(out, &mut p)?;
                            // The generation may still be running for nobody.
                            self.cancel().await;
                            return Err(ClientError::StreamEnded(reason));
                        }
                    };
                    let v: Value = serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
                        key: self.reply_key.clone(),
                        reason: e.to_string(),
                    })?;
                    if v["done"] == true {
                        let at = Instant::now();
                        self.end_line(out, &mut p)?;
                        return self.finish(&v, at, &p, out, err);
                    }
                    self.token(out, &mut p, &v)?;
                }
                Ok(s) = self.errors.recv_async() => {
                    let v: Value = serde_json::from_slice(&s.payload().to_bytes()).unwrap_or_default();
                    if v["id"].as_str() == Some(self.id.as_str()) {
                        self.end_line(out, &mut p)?;
                        return Err(ClientError::ErrorReply {
                            pipeline: v["pipeline"].as_str().unwrap_or("?").to_string(),
                            code: v["code"].as_str().unwrap_or("?").to_string(),
                            message: v["message"].as_str().unwrap_or("").to_string(),
                        });
                    }
                }
                Some(()) = interrupts.recv() => {
                    if p.interrupted {
                        self.end_line(out, &mut p)?;
                        return Err(ClientError::Interrupted(" twice: not waiting for the final message"));
                    }
                    p.interrupted = true;
                    self.cancel().await;
                    until = until.min(tokio::time::Instant::now() + CANCEL_GRACE);
                }
                _ = tokio::time::sleep_until(until) => {
                    self.end_line(out, &mut p)?;
                    if p.interrupted {
                        return Err(ClientError::Interrupted(": cancel sent, but no final message came back"));
                    }
                    // Nobody will read the rest: let the daemon stop early.
                    self.cancel().await;
                    return Err(ClientError::Timeout {
                        key: self.reply_key.clone(),
                        waited: self.args.timeout,
                        tokens: p.messages,
                        hint: if p.messages == 0 && !self.args.query {
                            " (the command reached a subscriber of --input; does --output match the pipeline's output?)"
                        } else {
                            ""
                        },
                    });
                }
            }
        }
    }

    /// Reads the final message, prints the summary line and decides the
    /// outcome.
    fn finish<O: Write, E: Write>(
        &self,
        v: &Value,
        at: Instant,
        p: &Progress,
        out: &mut O,
        err: &mut E,
    ) -> Result<Summary, ClientError> {
        let reason = v["finish_reason"].as_str().unwrap_or("?").to_string();
        let text = v["text"].as_str().unwrap_or_default().to_string();
        let n = v["usage"]["completion_tokens"].as_u64().unwrap_or(0);
        let client_total = ms(at - self.sent);
        let client_ttft = p.first_token.map(|f| ms(f - self.sent));
        let summary = Summary {
            id: self.id.clone(),
            finish_reason: reason.clone(),
            prompt_tokens: v["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
            completion_tokens: n,
            token_messages: p.messages,
            provider: v["provider"].as_str().unwrap_or("?").to_string(),
            daemon: serde_json::from_value(v["timing"].clone()).unwrap_or_default(),
            client_ttft_ms: client_ttft,
            client_tpot_ms: client_ttft
                .filter(|_| n > 1)
                .map(|t| (client_total - t) / (n - 1) as f64),
            client_total_ms: client_total,
            interrupted: p.interrupted,
            text,
        };
        if self.args.lines {
            writeln!(
                out,
                "[llm {} +{:.3}s] done ({reason}): {:?}",
                self.id,
                (at - self.sent).as_secs_f64(),
                summary.text
            )
            .and_then(|_| out.flush())
            .map_err(ClientError::Output)?;
        }
        // A command refused by the queryable has no timing to report.
        if v.get("timing").is_some() {
            let _ = writeln!(err, "{}", summary.line());
        }
        match reason.as_str() {
            "stop" | "length" => Ok(summary),
            "cancelled" if p.interrupted => Ok(summary),
            "cancelled" => Err(ClientError::CancelledElsewhere),
            "deadline" => Err(ClientError::Deadline),
            "error" => Err(ClientError::Failed {
                code: v["error"]["code"].as_str().unwrap_or("?").to_string(),
                message: v["error"]["message"].as_str().unwrap_or("").to_string(),
            }),
            other => Err(ClientError::Protocol {
                key: self.reply_key.clone(),
                reason: format!("unknown finish_reason {other:?}"),
            }),
        }
    }
}
