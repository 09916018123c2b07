//! Draft-model speculation with a generated tiny draft: the first two layers
//! of the exact SmolLM2 conversion (`models/llm/make_draft.py`, cached
//! beside the provisioned models). The draft proposes, the pipeline's model
//! verifies: the tokens are exactly greedy decoding's whatever the draft
//! proposes, and a draft that does not pair with the model (another
//! tokenizer, another vocabulary size) is refused at load with the reason.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use reflexd::Config;
use reflexd::llm::{self, Generation, LlmModel, LlmShared, ModelFiles};
use reflexd::wire::command::{self, CommandLimits};

/// The two-layer draft of `src`, made (or found up to date) in the cache.
fn draft_of(src: &str) -> PathBuf {
    let cache = reflexd::infer::runtime::cache_dir().expect("cache dir");
    let name = Path::new(src)
        .file_name()
        .unwrap()
        .to_string_lossy()
        .to_string();
    let out = cache.join("llm").join(format!("draft2-{name}"));
    let st = std::process::Command::new(common::venv_python())
        .arg(common::repo().join("models/llm/make_draft.py"))
        .arg(src)
        .arg(&out)
        .args(["--layers", "2"])
        .status()
        .expect("run make_draft.py");
    assert!(st.success(), "make_draft.py failed");
    out
}

fn load(dir: &str, extra: &str) -> Result<(LlmModel, Arc<LlmShared>), String> {
    let text = format!(
        r#"
        [[pipeline]]
        name = "chat"
        kind = "generate"
        model = "{dir}"
        input = "t/cmd"
        output = "t/out"
        {extra}
        "#
    );
    let config = Config::from_toml(&text, &common::repo()).map_err(|e| e.to_string())?;
    let g = &config.generators[0];
    let (env, _) = reflexd::infer::runtime::environment(None).unwrap();
    let files = ModelFiles::open(Path::new(dir)).unwrap();
    let shared = Arc::new(LlmShared::new(&files).unwrap());
    let (m, _) =
        llm::load(&env, g, &config.runtime, &shared, &files.onnx).map_err(|e| e.to_string())?;
    Ok((m, shared))
}

fn run(m: &mut LlmModel, shared: &LlmShared, prompt: &str, n: u32) -> Box<Generation> {
    let body = serde_json::json!({"id": "t", "prompt": prompt, "max_tokens": n});
    let limits = CommandLimits {
        max_tokens: 256,
        default_max_tokens: 64,
        max_prompt_chars: 4096,
        max_messages: 8,
        default_deadline: Duration::from_secs(600),
    };
    let cmd = command::parse(body.to_string().as_bytes(), &limits).unwrap();
    let ids = shared.prompt_ids(&cmd.messages, 2048).unwrap();
    let mut g = Box::new(Generation::new(
        0,
        0,
        cmd,
        Arc::new(AtomicBool::new(false)),
        Instant::now(),
        0,
        ids,
    ));
    while g.finished.is_none() {
        m.step(&mut g, usize::MAX).unwrap();
    }
    g
}

#[test]
fn draft_model_speculation_gives_exactly_the_greedy_tokens() {
    let dir = common::llm_dir();
    let draft = draft_of(&dir);
    let (mut plain, shared) = load(&dir, "speculation = \"off\"").unwrap();
    let extra = format!(
        "speculation = \"draft\"\ndraft_model = \"{}\"\ndraft_tokens = 3",
        draft.display()
    );
    let (mut spec, _) = load(&dir, &extra).unwrap();
    let mut verifies = 0;
    for p in [
        "Repeat exactly: one two three four five six seven eight nine ten.",
        "Tell me a long story about a robot.",
    ] {
        let a = run(&mut plain, &shared, p, 40);
        let b = run(&mut spec, &shared, p, 40);
        assert_eq!(
            a.tokens, b.tokens,
            "prompt {p:?}: the draft changed the tokens"
        );
        verifies += b.spec.verify_steps;
        assert!(b.spec.accepted <= b.spec.drafted);
    }
    assert!(
        verifies > 0,
        "the draft model proposed and the model verified"
    );
}

#[test]
fn drafts_of_another_tokenizer_or_vocabulary_are_refused() {
    let dir = common::llm_dir();
    let draft = draft_of(&dir);
    let tmp = std::env::temp_dir().join(format!("reflexd-draft-mismatch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).unwrap();
    for f in ["model.onnx", "generation.json"] {
        std::fs::copy(draft.join(f), tmp.join(f)).unwrap();
    }
    // Two tokens trade ids: same size, different tokenizer.
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(draft.join("tokenizer.json")).unwrap())
            .unwrap();
    let vocab = tok["model"]["vocab"].as_object_mut().unwrap();
    let (a, b) = (vocab["hello"].clone(), vocab["world"].clone());
    vocab.insert("hello".into(), b);
    vocab.insert("world".into(), a);
    std::fs::write(tmp.join("tokenizer.json"), tok.to_string()).unwrap();
    let extra = format!(
        "speculation = \"draft\"\ndraft_model = \"{}\"",
        tmp.display()
    );
    let err = load(&dir, &extra)
        .err()
        .expect("a mismatched draft is refused");
    assert!(err.contains("tokenizers differ"), "{err}");
    // Another vocabulary size.
    let mut genj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(draft.join("generation.json")).unwrap())
            .unwrap();
    genj["vocab_size"] = serde_json::json!(32000);
    std::fs::write(tmp.join("generation.json"), genj.to_string()).unwrap();
    std::fs::copy(draft.join("tokenizer.json"), tmp.join("tokenizer.json")).unwrap();
    let err = load(&dir, &extra)
        .err()
        .expect("another vocabulary size is refused");
    assert!(err.contains("vocabulary sizes differ"), "{err}");
    let _ = std::fs::remove_dir_all(&tmp);
    // And a missing draft_model is a config error, not a start-up surprise.
    let err = load(&dir, "speculation = \"draft\"").err().unwrap();
    assert!(err.contains("draft_model"), "{err}");
}
