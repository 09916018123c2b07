//! Generation commands refused at intake (issue #11): an id that would
//! publish on the pipeline's error key, prompts over the message or token
//! limits (refused before any prefill), and a second command with the id of
//! a running generation (refused without touching the running one). Real
//! SmolLM2-135M, real zenoh on loopback.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const ERROR_KEY: &str = "t/llm/out/error";

fn config(extra: &str) -> String {
    format!(
        r#"
        [[pipeline]]
        name = "chat"
        kind = "generate"
        model = "{}"
        input = "t/llm/cmd"
        output = "t/llm/out"
        max_tokens = 256
        max_generations = 4
        {extra}
        "#,
        llm_dir()
    )
}

/// Every message under `t/llm/out/`, as (key, JSON), in arrival order.
struct Watch {
    sub: Sub,
    seen: Vec<(String, Value)>,
}

impl Watch {
    async fn new(daemon: &reflexd::Daemon, c: &zenoh::Session) -> Watch {
        let sub = subscribe(c, "t/llm/out/**").await;
        wired(daemon, c, "t/llm/cmd", ERROR_KEY).await;
        Watch {
            sub,
            seen: Vec::new(),
        }
    }

    /// Receives until a message satisfies `pred`; returns it.
    async fn until(&mut self, what: &str, pred: impl Fn(&str, &Value) -> bool) -> Value {
        loop {
            let s = tokio::time::timeout(Duration::from_secs(120), self.sub.recv_async())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}; seen {:?}", self.seen))
                .unwrap();
            let key = s.key_expr().as_str().to_string();
            let v: Value = serde_json::from_slice(&s.payload().to_bytes()).unwrap();
            self.seen.push((key.clone(), v.clone()));
            if pred(&key, &v) {
                return v;
            }
        }
    }

    /// The next message on the error key about `id`.
    async fn error_for(&mut self, id: &str) -> Value {
        self.until(&format!("an error for {id}"), |k, v| {
            k == ERROR_KEY && v["id"] == id
        })
        .await
    }

    /// Runs a short generation to its final message: everything the daemon
    /// published for commands sent before it has been received by then
    /// (one worker, one link, in order).
    async fn marker(&mut self, c: &zenoh::Session, id: &str) -> Value {
        let cmd = json!({"id": id, "prompt": "Hi", "max_tokens": 2});
        put(c, "t/llm/cmd", cmd.to_string().into_bytes()).await;
        self.until(&format!("final of {id}"), |_, v| {
            v["id"] == id && v["done"] == true
        })
        .await
    }

    /// Messages about `id` that are not on the error key, or that are on it
    /// but are token or final messages.
    fn streamed(&self, id: &str) -> Vec<&(String, Value)> {
        self.seen
            .iter()
            .filter(|(k, v)| v["id"] == id && (k != ERROR_KEY || v.get("code").is_none()))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generation_id_error_is_refused_and_nothing_streams_on_the_error_key() {
    let (daemon, port) = start(&config("")).await;
    let c = client(port).await;
    llm_ready(&c).await;
    let mut w = Watch::new(&daemon, &c).await;
    let cmd = json!({"id": "error", "prompt": "Say hello.", "max_tokens": 8});
    put(&c, "t/llm/cmd", cmd.to_string().into_bytes()).await;
    // The first message on the error key about `error` must be a refusal.
    let first = w.error_for("error").await;
    assert_eq!(
        first["code"], "bad_command",
        "the first message on the error key must refuse the id `error`, got {first}"
    );
    w.marker(&c, "after").await;
    let streamed = w.streamed("error");
    assert!(
        streamed.is_empty(),
        "token or final messages of generation `error` were published: {streamed:?}"
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

/// `n` messages, alternately user and assistant, all empty but the last
/// (a user message): tiny in characters, costly in template tokens.
fn empty_messages(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let last = i + 1 == n;
            let role = if (n - 1 - i).is_multiple_of(2) {
                "user"
            } else {
                "assistant"
            };
            json!({"role": role, "content": if last { "Hi" } else { "" }})
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_over_max_messages_or_max_prompt_tokens_are_refused_before_prefill() {
    let (daemon, port) = start(&config("max_prompt_tokens = 128\nmax_messages = 64")).await;
    let c = client(port).await;
    llm_ready(&c).await;
    let mut w = Watch::new(&daemon, &c).await;
    let inference_before = daemon.generation_stats()[0].inference.count;

    // 1 500 messages, 43 KB of JSON: the command of the issue.
    let many = json!({"id": "many", "messages": empty_messages(1500), "max_tokens": 4});
    put(&c, "t/llm/cmd", many.to_string().into_bytes()).await;
    let e = w.error_for("many").await;
    assert_eq!(e["code"], "prompt_too_long", "{e}");
    assert!(
        e["message"].as_str().unwrap_or("").contains("max_messages"),
        "the refusal names the limit: {e}"
    );

    // 60 messages (within max_messages) whose chat template alone is
    // several tokens each: far over 128 tokens after templating.
    let toks = json!({"id": "toks", "messages": empty_messages(60), "max_tokens": 4});
    put(&c, "t/llm/cmd", toks.to_string().into_bytes()).await;
    let e = w.error_for("toks").await;
    assert_eq!(e["code"], "prompt_too_long", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or("")
            .contains("max_prompt_tokens"),
        "the refusal names the limit: {e}"
    );

    // Refused at intake: no model run happened for either command.
    assert_eq!(
        daemon.generation_stats()[0].inference.count,
        inference_before,
        "a refused prompt must not be prefilled"
    );
    w.marker(&c, "after").await;
    for id in ["many", "toks"] {
        let streamed = w.streamed(id);
        assert!(streamed.is_empty(), "{id} was generated: {streamed:?}");
    }
    daemon.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_id_is_refused_and_the_running_generation_keeps_all_its_tokens() {
    let (daemon, port) = start(&config("")).await;
    let c = client(port).await;
    llm_ready(&c).await;
    let mut w = Watch::new(&daemon, &c).await;
    let long =
        json!({"id": "dup", "prompt": "Tell me a long story about a robot.", "max_tokens": 64});
    put(&c, "t/llm/cmd", long.to_string().into_bytes()).await;
    w.until("the first token of dup", |k, v| {
        k == "t/llm/out/dup" && v["seq"] == 0
    })
    .await;
    let again = json!({"id": "dup", "prompt": "Hi", "max_tokens": 4});
    put(&c, "t/llm/cmd", again.to_string().into_bytes()).await;
    let e = w.error_for("dup").await;
    assert_eq!(
        e["code"], "duplicate_id",
        "a refusal a client cannot mistake for the end of the running `dup`: {e}"
    );
    let fin = w
        .until("the final message of dup", |k, v| {
            k == "t/llm/out/dup" && v["done"] == true
        })
        .await;
    assert!(
        matches!(fin["finish_reason"].as_str(), Some("stop" | "length")),
        "the running generation ends on its own terms: {fin}"
    );
    let tokens: Vec<&Value> = w
        .seen
        .iter()
        .filter(|(k, v)| k == "t/llm/out/dup" && v.get("done").is_none())
        .map(|(_, v)| v)
        .collect();
    for (i, t) in tokens.iter().enumerate() {
        assert_eq!(t["seq"], i, "token seqs are contiguous");
    }
    assert_eq!(fin["usage"]["completion_tokens"], tokens.len(), "{fin}");
    let text: String = tokens.iter().map(|t| t["text"].as_str().unwrap()).collect();
    assert_eq!(text, fin["text"].as_str().unwrap());
    daemon.shutdown(Duration::from_secs(5)).await;
}
