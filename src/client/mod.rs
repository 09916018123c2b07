//! `reflexd prompt`: the person-facing client of a generation pipeline. It
//! sits outside the daemon, at both ends of its data flow: it sends one
//! command into a pipeline's ingress (a `put` on the command topic, or a `get`
//! on its queryable) and reads what egress publishes for that id (token
//! messages, then the final one) and the pipeline's error topic, printing the
//! text as it streams and the daemon's and its own TTFT/TPOT at the end. It
//! holds one generation at a time and buffers at most [`STREAM_BUFFER`]
//! messages; when that fills, zenoh's FIFO handler blocks the receiving link
//! instead of dropping a token.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use zenoh::handlers::FifoChannel;
use zenoh::qos::CongestionControl;
use zenoh::query::ConsolidationMode;

use crate::wire::command::valid_id;

pub mod connect;
mod conversation;
pub mod frame;
pub mod ros2;
use crate::logging::strip_source_locations;
pub use connect::{ConnectArgs, ConnectError};
use conversation::{Conversation, Source};

/// Defaults matching the `chat` pipeline of config/demo.toml.
pub const DEFAULT_CONNECT: &str = "tcp/127.0.0.1:7447";
pub const DEFAULT_INPUT: &str = "reflexd/llm/cmd";
pub const DEFAULT_OUTPUT: &str = "reflexd/llm/out";
/// After a Ctrl-C the daemon notices the cancel before its next decode step;
/// this is how long we wait for its final message (it carries the timing).
pub const CANCEL_GRACE: Duration = Duration::from_secs(3);
/// Messages held between zenoh's receive task and the printer. Above the
/// daemon's usual `max_tokens`, so a slow terminal never stalls the link.
pub const STREAM_BUFFER: usize = 1024;

/// Exit status after a Ctrl-C, as shells report a SIGINT death.
pub const EXIT_INTERRUPTED: u8 = 130;

/// `reflexd prompt` options (clap derives the command line from them).
#[derive(clap::Args, Debug, Clone)]
pub struct PromptArgs {
    /// The question (sent as one user message).
    pub prompt: String,
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// The pipeline's command topic (`input` in its config).
    #[arg(long, default_value = DEFAULT_INPUT)]
    pub input: String,
    /// The pipeline's output prefix; tokens arrive on `<output>/<id>`.
    #[arg(long, default_value = DEFAULT_OUTPUT)]
    pub output: String,
    /// The pipeline's error topic [default: <output>/error].
    #[arg(long)]
    pub error_key: Option<String>,
    /// The pipeline's cancel topic [default: <input>/cancel].
    #[arg(long)]
    pub cancel_key: Option<String>,
    /// The pipeline's queryable [default: <input>/query].
    #[arg(long)]
    pub query_key: Option<String>,
    /// Ask through the queryable (request/reply) instead of pub/sub.
    #[arg(long)]
    pub query: bool,
    /// A system message before the prompt (else the model's default).
    #[arg(long)]
    pub system: Option<String>,
    /// Generation id [default: derived from the time and this process id].
    #[arg(long)]
    pub id: Option<String>,
    /// Most tokens to generate [default: the pipeline's max_tokens]; the
    /// answer ends with finish_reason "length" there.
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<u32>,
    /// Sampling temperature; 0 = greedy (the daemon's default).
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Sample only among the K most likely tokens [default: all].
    #[arg(long, value_name = "K")]
    pub top_k: Option<u64>,
    /// Sample only among the most likely tokens whose probabilities add up
    /// to P (nucleus sampling, 0 < P <= 1) [default: 1].
    #[arg(long, value_name = "P")]
    pub top_p: Option<f32>,
    /// Sampling seed: the same seed and prompt give the same tokens.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Time budget of the whole generation in milliseconds, from receipt;
    /// when it passes, the answer stops with finish_reason "deadline".
    #[arg(long, value_name = "MS")]
    pub deadline_ms: Option<f64>,
    /// Seconds to wait for the final message after sending the command.
    #[arg(long, default_value = "120", value_parser = parse_secs)]
    pub timeout: Duration,
    /// One line per token (`[llm <id> +0.412s] #3 " Paris"`) instead of
    /// running text: readable when other programs share the terminal.
    #[arg(long)]
    pub lines: bool,
}

pub fn parse_secs(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("{s:?}: expected seconds, > 0 and at most 86400")),
    }
}

#[derive(thiserror::Error, Debug)]
pub enum ClientError {
    #[error("{0}")]
    BadArgs(String),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(
        "connected to {endpoint}, but nothing serves {key} after {waited:?}: is a `kind = \"generate\"` pipeline configured with that key (see --input/--query-key)?"
    )]
    NoPipeline {
        endpoint: String,
        key: String,
        waited: Duration,
    },
    #[error("error reply from pipeline {pipeline:?}: {code}: {message}")]
    ErrorReply {
        pipeline: String,
        code: String,
        message: String,
    },
    #[error("generation failed: {code}: {message}")]
    Failed { code: String, message: String },
    #[error("generation stopped at its deadline; the answer is incomplete")]
    Deadline,
    #[error("generation was cancelled by another client")]
    CancelledElsewhere,
    #[error(
        "no final message on {key} within {waited:?} ({tokens} token message(s) received){hint}"
    )]
    Timeout {
        key: String,
        waited: Duration,
        tokens: usize,
        hint: &'static str,
    },
    #[error("interrupted{0}")]
    Interrupted(&'static str),
    #[error("the reply stream ended without a final message ({0})")]
    StreamEnded(String),
    #[error("cannot write the answer: {0}")]
    Output(std::io::Error),
    #[error("zenoh: {0}")]
    Zenoh(String),
    #[error("unreadable message on {key}: {reason}")]
    Protocol { key: String, reason: String },
}

impl ClientError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::Interrupted(_) => EXIT_INTERRUPTED,
            _ => 1,
        }
    }
}

fn z<T>(r: zenoh::Result<T>) -> Result<T, ClientError> {
    r.map_err(|e| ClientError::Zenoh(strip_source_locations(&e.to_string())))
}

/// The daemon's timing of one generation (`timing` of the final message).
#[derive(serde::Deserialize, Debug, Clone, Default)]
pub struct DaemonTiming {
    pub queue_ms: Option<f64>,
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub total_ms: Option<f64>,
    pub prefill_tokens_per_s: Option<f64>,
    pub decode_tokens_per_s: Option<f64>,
}

/// What a finished generation looked like from both ends.
#[derive(Debug, Clone)]
pub struct Summary {
    pub id: String,
    pub finish_reason: String,
    pub text: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Token messages received (one more than the tokens when the daemon
    /// flushed held-back text in a last message).
    pub token_messages: usize,
    pub provider: String,
    pub daemon: DaemonTiming,
    /// Measured here with the daemon's definitions, but from our `put` (or
    /// `get`) to the arrival of the first token / the final message: they
    /// add the command's and the replies' transport to the daemon's figures.
    pub client_ttft_ms: Option<f64>,
    pub client_tpot_ms: Option<f64>,
    pub client_total_ms: f64,
    /// The run ended because of our Ctrl-C.
    pub interrupted: bool,
}

impl Summary {
    pub fn exit_code(&self) -> u8 {
        if self.interrupted {
            EXIT_INTERRUPTED
        } else {
            0
        }
    }

    /// The one-line report printed on stderr.
    pub fn line(&self) -> String {
        let ms = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.1} ms"));
        let num = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.1}"));
        let d = &self.daemon;
        format!(
            "finish_reason={} tokens={} prompt_tokens={} | TTFT {} (client {}) | TPOT {} (client {}) | prefill {} tok/s | decode {} tok/s | queue {} | total {} (client {}) | provider {}",
            self.finish_reason,
            self.completion_tokens,
            self.prompt_tokens,
            ms(d.ttft_ms),
            ms(self.client_ttft_ms),
            ms(d.tpot_ms),
            ms(self.client_tpot_ms),
            num(d.prefill_tokens_per_s),
            num(d.decode_tokens_per_s),
            ms(d.queue_ms),
            ms(d.total_ms),
            ms(Some(self.client_total_ms)),
            self.provider,
        )
    }
}

/// A default id: unique enough for one person's terminal (pid + clock).
pub fn default_id() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "prompt-{}-{:x}{:03x}",
        std::process::id(),
        t.as_secs(),
        t.subsec_millis()
    )
}

fn check_key(flag: &str, key: &str) -> Result<(), ClientError> {
    if key.contains('*') || zenoh::key_expr::KeyExpr::try_from(key).is_err() {
        return Err(ClientError::BadArgs(format!(
            "{flag} {key:?}: not a zenoh key without wildcards"
        )));
    }
    Ok(())
}

/// The command JSON for these options (fields left out take the daemon's
/// defaults).
pub fn command(args: &PromptArgs, id: &str) -> Value {
    let mut c = json!({ "id": id });
    match &args.system {
        Some(system) => {
            c["messages"] = json!([
                { "role": "system", "content": system },
                { "role": "user", "content": args.prompt },
            ])
        }
        None => c["prompt"] = json!(args.prompt),
    }
    let mut opt = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            c[k] = v;
        }
    };
    opt("max_tokens", args.max_tokens.map(Value::from));
    opt("temperature", args.temperature.map(Value::from));
    opt("top_k", args.top_k.map(Value::from));
    opt("top_p", args.top_p.map(Value::from));
    opt("seed", args.seed.map(Value::from));
    opt("deadline_ms", args.deadline_ms.map(Value::from));
    c
}

/// Polls `matching` until a subscriber (or queryable) on the key is known
/// to our session. zenoh pub/sub keeps nothing: a command put before the
/// daemon's subscription reached us would be routed nowhere and lost
/// silently. Once the declaration has arrived, our `put` follows it on the
/// same link. Our reply subscriber is declared before that and declarations
/// travel at zenoh's Control priority, so the daemon knows where the tokens
/// go before it reads the command.
async fn wait_matching<F, Fut>(
    args: &PromptArgs,
    key: &str,
    matching: F,
    interrupts: &mut mpsc::Receiver<()>,
) -> Result<(), ClientError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = zenoh::Result<bool>>,
{
    let until = tokio::time::Instant::now() + args.conn.connect_timeout;
    loop {
        if z(matching().await)? {
            return Ok(());
        }
        if tokio::time::Instant::now() >= until {
            return Err(ClientError::NoPipeline {
                endpoint: args.conn.endpoints(),
                key: key.to_string(),
                waited: args.conn.connect_timeout,
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            Some(()) = interrupts.recv() => {
                return Err(ClientError::Interrupted(" before the command was sent"));
            }
        }
    }
}

/// Runs one generation: connects, sends the command, streams the text to
/// `out`, writes the summary line to `err`. Each message on `interrupts` is
/// a Ctrl-C: the first sends a cancel and waits up to [`CANCEL_GRACE`] for
/// the final message, the second gives up at once.
pub async fn prompt<O: Write, E: Write>(
    args: &PromptArgs,
    out: &mut O,
    err: &mut E,
    mut interrupts: mpsc::Receiver<()>,
) -> Result<Summary, ClientError> {
    let id = args.id.clone().unwrap_or_else(default_id);
    if !valid_id(&id) {
        return Err(ClientError::BadArgs(format!(
            "--id {id:?}: use 1-64 characters from A-Z a-z 0-9 - _ ."
        )));
    }
    if args.prompt.trim().is_empty() {
        return Err(ClientError::BadArgs("the prompt is empty".into()));
    }
    let keys = Keys::new(args, &id)?;
    let body = command(args, &id).to_string();

    let session = args.conn.open().await?;
    // Errors are published for every client of the pipeline; ours carry our id.
    let errors = z(session
        .declare_subscriber(keys.error.clone())
        .with(FifoChannel::new(64))
        .await)?;
    let sending = send(args, &session, &keys, body, &mut interrupts).await?;
    let conv = Conversation {
        args,
        id,
        session: &session,
        cancel_key: keys.cancel,
        reply_key: if args.query { keys.query } else { keys.token },
        source: sending.source,
        errors,
        sent: sending.sent,
    };
    let r = conv.run(out, err, &mut interrupts).await;
    drop(conv);
    drop(sending.keep);
    let _ = session.close().await;
    r
}

/// The keys one conversation uses, checked.
struct Keys {
    error: String,
    cancel: String,
    query: String,
    token: String,
}

impl Keys {
    fn new(args: &PromptArgs, id: &str) -> Result<Keys, ClientError> {
        let or = |k: &Option<String>, default: String| k.clone().unwrap_or(default);
        let keys = Keys {
            error: or(&args.error_key, format!("{}/error", args.output)),
            cancel: or(&args.cancel_key, format!("{}/cancel", args.input)),
            query: or(&args.query_key, format!("{}/query", args.input)),
            token: format!("{}/{id}", args.output),
        };
        for (flag, key) in [
            ("--input", &args.input),
            ("--output", &keys.token),
            ("--error-key", &keys.error),
            ("--cancel-key", &keys.cancel),
            ("--query-key", &keys.query),
        ] {
            check_key(flag, key)?;
        }
        Ok(keys)
    }
}

/// The sent command: where its answer comes from, when it left, and the
/// entity that must stay declared until the final message (the querier
/// carries the pending query; undeclaring mid-stream gains nothing).
struct Sending {
    source: Source,
    sent: Instant,
    keep: Box<dyn std::any::Any>,
}

/// Sends the command once a daemon listens: as a query, or published with
/// the token topic subscribed first.
async fn send(
    args: &PromptArgs,
    session: &zenoh::Session,
    keys: &Keys,
    body: String,
    interrupts: &mut mpsc::Receiver<()>,
) -> Result<Sending, ClientError> {
    let (query_key, token_key) = (&keys.query, &keys.token);
    let mut _querier = None;
    let mut _publisher = None;
    let sent: Instant;
    let source = if args.query {
        // Every reply has the query's key: with consolidation on, zenoh
        // would keep only the last one (the final message).
        let querier = z(session
            .declare_querier(query_key.clone())
            .consolidation(ConsolidationMode::None)
            .timeout(args.timeout)
            .await)?;
        wait_matching(
            args,
            query_key,
            || async { querier.matching_status().await.map(|m| m.matching()) },
            interrupts,
        )
        .await?;
        sent = Instant::now();
        let replies = z(querier
            .get()
            .payload(body)
            .with(FifoChannel::new(STREAM_BUFFER))
            .await)?;
        _querier = Some(querier);
        Source::Query(replies)
    } else {
        let tokens = z(session
            .declare_subscriber(token_key.clone())
            .with(FifoChannel::new(STREAM_BUFFER))
            .await)?;
        // Block, not Drop: a command that meets a full queue must wait, not
        // vanish (it is one small message).
        let publisher = z(session
            .declare_publisher(args.input.clone())
            .congestion_control(CongestionControl::Block)
            .await)?;
        wait_matching(
            args,
            &args.input,
            || async { publisher.matching_status().await.map(|m| m.matching()) },
            interrupts,
        )
        .await?;
        sent = Instant::now();
        z(publisher.put(body).await)?;
        _publisher = Some(publisher);
        Source::Topic(tokens)
    };
    Ok(Sending {
        source,
        sent,
        keep: Box::new((_querier, _publisher)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: PromptArgs,
    }

    fn args(argv: &[&str]) -> PromptArgs {
        Cli::parse_from(std::iter::once("prompt").chain(argv.iter().copied())).args
    }

    #[test]
    fn command_leaves_unset_options_to_the_daemon() {
        let c = command(&args(&["hi"]), "a1");
        assert_eq!(c, json!({"id": "a1", "prompt": "hi"}));
        let c = command(
            &args(&[
                "--max-tokens",
                "9",
                "--seed",
                "3",
                "--temperature",
                "0.5",
                "hi",
            ]),
            "a1",
        );
        assert_eq!(c["max_tokens"], 9);
        assert_eq!(c["seed"], 3);
        assert_eq!(c["temperature"], 0.5);
    }

    #[test]
    fn system_turns_the_prompt_into_messages() {
        let c = command(&args(&["--system", "Be brief.", "hi"]), "a1");
        assert_eq!(
            c["messages"],
            json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
        );
        assert!(c.get("prompt").is_none());
    }

    #[test]
    fn default_ids_are_valid_and_defaults_match_the_demo() {
        assert!(valid_id(&default_id()), "{}", default_id());
        let a = args(&["hi"]);
        assert_eq!(
            (a.input.as_str(), a.output.as_str()),
            (DEFAULT_INPUT, DEFAULT_OUTPUT)
        );
        assert_eq!(a.timeout, Duration::from_secs(120));
    }
}
