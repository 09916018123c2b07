//! Continuous batching with the real converted SmolLM2-135M over loopback
//! zenoh: concurrent greedy generations of different prompt lengths and
//! token budgets, decoded together in shared model runs (joining after
//! their own prefill, leaving when done), produce token for token what each
//! produces alone.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn config() -> String {
    format!(
        r#"
        [[pipeline]]
        name = "chat"
        kind = "generate"
        model = "{}"
        input = "t/llm/cmd"
        output = "t/llm/out"
        max_generations = 4
        max_batch = 4
        prefill_chunk = 16
        "#,
        llm_dir()
    )
}

/// Token ids and final message of one stream.
async fn collect_stream(sub: &Sub) -> (Vec<u64>, Value) {
    let mut tokens = Vec::new();
    loop {
        let s = tokio::time::timeout(Duration::from_secs(300), sub.recv_async())
            .await
            .expect("generation stream timed out")
            .unwrap();
        let v: Value = serde_json::from_slice(&s.payload().to_bytes()).unwrap();
        if v["done"] == true {
            return (tokens, v);
        }
        if let Some(t) = v["token_id"].as_u64() {
            tokens.push(t);
        }
    }
}

/// Sends every command, then collects every stream (buffered meanwhile).
async fn run_all(
    daemon: &reflexd::Daemon,
    c: &zenoh::Session,
    cmds: &[Value],
) -> HashMap<String, (Vec<u64>, Value)> {
    let mut subs = Vec::new();
    for cmd in cmds {
        let id = cmd["id"].as_str().unwrap().to_string();
        let key = format!("t/llm/out/{id}");
        subs.push((id.clone(), subscribe(c, &key).await));
        wired(daemon, c, "t/llm/cmd", &key).await;
    }
    for cmd in cmds {
        put(c, "t/llm/cmd", cmd.to_string().into_bytes()).await;
    }
    let mut out = HashMap::new();
    for (id, sub) in subs {
        out.insert(id, collect_stream(&sub).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_greedy_generations_match_each_alone_token_for_token() {
    let (daemon, port) = start(&config()).await;
    let c = client(port).await;
    llm_ready(&c).await;
    // Different prompt lengths (different KV lengths in one batch) and
    // different budgets (members leave at different steps).
    let prompts = [
        ("a", "What is the capital of France?", 24),
        (
            "b",
            "Write a haiku about a robot vacuum cleaner that dreams of the sea.",
            40,
        ),
        ("c", "2+2=", 12),
        (
            "d",
            "List three colours of the rainbow, separated by commas, and then explain why the sky is blue in one sentence.",
            32,
        ),
    ];
    let cmd = |tag: &str, (id, prompt, n): (&str, &str, u32)| json!({"id": format!("{tag}-{id}"), "prompt": prompt, "max_tokens": n});
    let mut alone = HashMap::new();
    for p in prompts {
        let r = run_all(&daemon, &c, &[cmd("solo", p)]).await;
        alone.extend(r);
    }
    let before = daemon.decode_stats()[0].clone();
    assert!(
        before.largest() <= 1,
        "one at a time never batches: {before:?}"
    );

    let together = run_all(&daemon, &c, &prompts.map(|p| cmd("batch", p))).await;
    for (id, _, _) in prompts {
        let (solo_tokens, solo_fin) = &alone[&format!("solo-{id}")];
        let (batch_tokens, batch_fin) = &together[&format!("batch-{id}")];
        assert!(!solo_tokens.is_empty(), "{id}: {solo_fin}");
        assert_eq!(
            batch_tokens, solo_tokens,
            "{id}: batched greedy tokens differ from the same request alone"
        );
        assert_eq!(batch_fin["text"], solo_fin["text"], "{id}");
        assert_eq!(
            batch_fin["finish_reason"], solo_fin["finish_reason"],
            "{id}"
        );
        assert_eq!(
            batch_fin["usage"]["completion_tokens"],
            solo_fin["usage"]["completion_tokens"]
        );
    }
    let after = daemon.decode_stats()[0].clone();
    assert!(
        after.largest() >= 2,
        "concurrent generations must have shared decode steps: {after:?}"
    );
    assert!(after.tokens > before.tokens);
    assert_eq!(daemon.live_generations(), vec![0], "every slot freed");
    let st = &daemon.generation_stats()[0];
    assert_eq!(st.ok, st.received, "all finished ok: {st:?}");
    daemon.shutdown(Duration::from_secs(5)).await;
}
