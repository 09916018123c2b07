//! Tool calls with the real SmolLM2-135M tokenizer and model: the token
//! environment agrees with the tokenizer, the canonical call passes the mask
//! on the real vocabulary, a handful of generated requests produce calls
//! that all parse and validate with constraints (the unconstrained rate is
//! printed beside them), and a two-turn plan feeds a result back. The full
//! 100-request acceptance run with timings is `cargo bench --bench tools`.

#[path = "tool_calls/driver.rs"]
mod driver;

use std::sync::Arc;
use std::time::Instant;

use driver::*;
use reflexd::llm::tools::gate::CallContext;
use reflexd::llm::tools::{Progress, ToolChoice, ToolGate, prompt};
use reflexd::wire::command::Message;

fn user(text: &str) -> Message {
    Message {
        role: "user".into(),
        content: text.into(),
        name: None,
    }
}

#[test]
fn token_env_agrees_with_the_tokenizer() {
    let model = Model::load(&llm_dir(), 1).unwrap();
    let g = &model.shared.generation;
    let c = model.constrainer().unwrap();
    assert_eq!(c.vocab_size(), g.vocab_size);
    // The trie's bytes are what the tokenizer decodes, token by token.
    let env = reflexd::llm::tools::env::token_env(
        &model.tokenizer_json,
        model.shared.tokenizer.clone(),
        &g.stop_token_ids,
        g.vocab_size,
    )
    .unwrap();
    let trie = env.tok_trie();
    let mut compared = 0;
    for id in (0..g.vocab_size as u32).step_by(7) {
        if trie.is_special_token(id) {
            continue;
        }
        if let Ok(s) = std::str::from_utf8(trie.token(id)) {
            assert_eq!(
                s,
                model.shared.tokenizer.decode(&[id], false).unwrap(),
                "token {id}"
            );
            compared += 1;
        }
    }
    assert!(compared > 5000, "{compared}");
    for &stop in &g.stop_token_ids {
        assert!(trie.eos_tokens().contains(&stop) && trie.is_special_token(stop));
    }
    assert!(
        trie.is_special_token(1),
        "<|im_start|> can never be spelled by grammar text"
    );
}

#[test]
fn the_canonical_call_passes_the_mask_on_the_real_vocabulary() {
    let model = Model::load(&llm_dir(), 1).unwrap();
    let c = model.constrainer().unwrap();
    let set = example_tools();
    let tools = set
        .select(&["move_arm".into(), "stop_base".into()])
        .unwrap();
    let text = "<tool_call>[{\"name\": \"move_arm\", \"arguments\": {\"x\": -0.25, \"y\": -0.1, \"z\": 0.05, \"gripper\": \"close\"}}]</tool_call>";
    let ids = model.shared.encode(text).unwrap();
    // The tokenizer's own split, so tokens that span the key separator and
    // the number (" -") are exercised.
    assert!(
        ids.iter().any(|&t| model.shared.decode(&[t]) == " -"),
        "{:?}",
        ids.iter()
            .map(|&t| model.shared.decode(&[t]))
            .collect::<Vec<_>>()
    );
    let mut s = c.session(&tools, &ToolChoice::Required).unwrap().unwrap();
    let mut last = Progress::Continue;
    for &t in &ids {
        let mut logits = vec![0.0; c.vocab_size()];
        s.mask_logits(&mut logits).unwrap();
        assert!(
            logits[t as usize].is_finite(),
            "token {t} masked after {:?}",
            s.text()
        );
        last = s.commit(t).unwrap();
    }
    match last {
        Progress::Call(call) => {
            assert_eq!(call.name, "move_arm");
            assert_eq!(call.arguments["gripper"], "close");
        }
        other => panic!("expected a call, got {other:?}"),
    }
    // Only the model's stop tokens may follow.
    let mask = s.compute_mask().unwrap();
    let stops = &model.shared.generation.stop_token_ids;
    assert_eq!(mask.num_set(), stops.len());
    assert!(stops.iter().all(|&t| mask.is_allowed(t)));
}

#[test]
fn constrained_calls_from_the_real_model_all_validate() {
    let mut model = Model::load(&llm_dir(), 2).unwrap();
    let c = model.constrainer().unwrap();
    let set = Arc::new(example_tools());
    let gate = ToolGate::new(set.clone(), Instant::now());
    let names = vec!["move_arm".to_string(), "stop_base".to_string()];
    let tools = set.select(&names).unwrap();
    let reqs = requests(4, 7);
    let mut unconstrained_ok = 0;
    println!("{:<70} | constrained call | unconstrained", "request");
    for (i, r) in reqs.iter().enumerate() {
        let msgs = [user(&r.text)];
        let on = run_request(
            &mut model,
            &c,
            &tools,
            &msgs,
            &ToolChoice::Required,
            true,
            64,
        )
        .unwrap();
        let call = on
            .call
            .unwrap_or_else(|e| panic!("{:?}: no valid call ({e}); text {:?}", r.text, on.text));
        let ctx = CallContext {
            generation: "t",
            seq: i as u32,
            enabled: &names,
            dry_run: false,
        };
        let admitted = gate.admit(&ctx, call.clone(), Instant::now());
        assert!(admitted.is_ok(), "{:?}: {admitted:?}", call);
        let off = run_request(
            &mut model,
            &c,
            &tools,
            &msgs,
            &ToolChoice::Required,
            false,
            48,
        )
        .unwrap();
        let off_ok = off.call.is_ok_and(|c| {
            set.get(&c.name)
                .is_some_and(|t| t.validate(&c.arguments).is_ok())
        });
        unconstrained_ok += usize::from(off_ok);
        println!(
            "{:<70} | {} | {}",
            r.text,
            on.text,
            if off_ok { "valid" } else { "invalid" }
        );
    }
    println!(
        "constrained: {n}/{n} valid; unconstrained: {unconstrained_ok}/{n}",
        n = reqs.len()
    );
}

#[test]
fn a_plan_feeds_the_result_back_for_the_next_turn() {
    let mut model = Model::load(&llm_dir(), 2).unwrap();
    let c = model.constrainer().unwrap();
    let set = Arc::new(example_tools());
    let gate = ToolGate::new(set.clone(), Instant::now());
    let names = vec!["move_arm".to_string()];
    let tools = set.select(&names).unwrap();
    let mut msgs = vec![user(
        "Pick up the red cube. It is at x=0.3, y=-0.1, z=0.05.",
    )];
    let first = run_request(
        &mut model,
        &c,
        &tools,
        &msgs,
        &ToolChoice::Required,
        true,
        64,
    )
    .unwrap();
    let call = first.call.expect("step 1 is a call");
    let ctx = CallContext {
        generation: "plan",
        seq: 0,
        enabled: &names,
        dry_run: false,
    };
    let admitted = gate.admit(&ctx, call, Instant::now()).unwrap();
    let (key, _) = admitted.publication().unwrap();
    assert_eq!(key, "robot/arm/cmd");
    msgs.push(prompt::assistant_call(&admitted.as_model_text()));
    msgs.push(prompt::tool_result(
        "move_arm",
        "done: the gripper closed on the red cube",
        prompt::Then::Answer,
    ));
    let second = run_request(&mut model, &c, &tools, &msgs, &ToolChoice::Auto, true, 80).unwrap();
    // Whatever the model chose, it is a valid call or plain text.
    match &second.call {
        Ok(call) => assert!(
            set.get(&call.name)
                .unwrap()
                .validate(&call.arguments)
                .is_ok()
        ),
        Err(e) => assert_eq!(e.code(), "tool_call_parse", "{e}: {:?}", second.text),
    }
    println!("step 1: {}\nstep 2: {}", first.text, second.text);
}
