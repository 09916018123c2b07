//! Unit tests of config validation: every error names its key.

use super::*;

const MINIMAL: &str = r#"
    [[pipeline]]
    name = "a"
    model = "m.onnx"
    input = "in/*"
    output = "out"
"#;

fn err(text: &str) -> String {
    Config::from_toml(text, Path::new("/base"))
        .unwrap_err()
        .to_string()
}

#[test]
fn minimal_config_gets_defaults() {
    let c = Config::from_toml(MINIMAL, Path::new("/base")).unwrap();
    assert_eq!(c.levels, vec!["default"]);
    assert_eq!(c.workers[0].levels, vec![0]);
    let p = &c.pipelines[0];
    assert_eq!(p.model, PathBuf::from("/base/m.onnx"));
    assert_eq!(p.error_key, "out/error");
    assert_eq!(p.providers, vec![Provider::Cpu]);
    assert_eq!(p.overflow, Overflow::Reject);
}

#[test]
fn unknown_key_is_rejected_with_its_name() {
    let e = err(&format!("{MINIMAL}\nbogus = 1\n"));
    assert!(e.contains("bogus"), "{e}");
}

#[test]
fn bad_enum_value_names_key_value_and_choices() {
    let e = err(&format!("{MINIMAL}\noverflow = \"drop\"\n"));
    assert!(
        e.contains("pipeline \"a\"")
            && e.contains("overflow")
            && e.contains("drop")
            && e.contains("latest"),
        "{e}"
    );
}

#[test]
fn unknown_level_is_rejected() {
    let e = err(&format!("{MINIMAL}\nlevel = \"urgent\"\n"));
    assert!(e.contains("urgent") && e.contains("default"), "{e}");
}

#[test]
fn stateful_pipeline_needs_latest() {
    let e = err(&format!(
        "{MINIMAL}\n[[pipeline.state]]\ninput = \"s\"\noutput = \"s2\"\n"
    ));
    assert!(e.contains("stateful"), "{e}");
}

#[test]
fn provider_options_are_checked_per_kind() {
    let e = err(&format!(
        "{MINIMAL}\n[[pipeline.provider]]\nkind = \"cpu\"\nfp16 = true\n"
    ));
    assert!(e.contains("provider") && e.contains("fp16"), "{e}");
    let e = err(&format!(
        "{MINIMAL}\n[[pipeline.provider]]\nkind = \"npu\"\n"
    ));
    assert!(e.contains("npu") && e.contains("tensorrt"), "{e}");
}

#[test]
fn constant_data_must_match_shape() {
    let e = err(&format!(
        "{MINIMAL}\n[pipeline.constants.sr]\ndtype = \"i64\"\nshape = [2]\ndata = [16000]\n"
    ));
    assert!(e.contains("constants.sr.data"), "{e}");
}

#[test]
fn invalid_key_expressions_are_rejected() {
    for bad in ["a/*x", "/a", "a//b", "a/"] {
        let e = err(&MINIMAL.replace("in/*", bad));
        assert!(
            e.contains("pipeline \"a\": input") && e.contains("key expression"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn generate_pipelines_are_split_out_and_checked() {
    let text = r#"
        [[pipeline]]
        name = "chat"
        kind = "generate"
        model = "llm"
        input = "llm/cmd"
        output = "llm/out"
        max_tokens = 64
    "#;
    let c = Config::from_toml(text, Path::new("/m")).unwrap();
    assert!(c.pipelines.is_empty());
    let g = &c.generators[0];
    assert_eq!(
        (g.cancel_key.as_str(), g.query_key.as_str()),
        ("llm/cmd/cancel", "llm/cmd/query")
    );
    assert_eq!((g.max_tokens, g.default_max_tokens), (64, 64));
    let e = err(&format!("{text}\noverflow = \"latest\"\n"));
    assert!(
        e.contains("pipeline \"chat\"") && e.contains("unknown field `overflow`"),
        "{e}"
    );
    let e = err(&format!("{MINIMAL}\nmax_tokens = 3\n"));
    assert!(
        e.contains("pipeline \"a\"") && e.contains("unknown field `max_tokens`"),
        "{e}"
    );
}

#[test]
fn workers_reserve_levels() {
    let c = Config::from_toml(
        &format!(
            "[[level]]\nname = \"hi\"\n[[level]]\nname = \"lo\"\n[[worker]]\nlevels = [\"hi\"]\n[[worker]]\nlevels = [\"lo\", \"hi\"]\n{MINIMAL}"
        ),
        Path::new("/"),
    )
    .unwrap();
    let levels: Vec<_> = c.workers.iter().map(|w| w.levels.clone()).collect();
    assert_eq!(levels, vec![vec![0], vec![0, 1]]);
    assert_eq!(c.pipelines[0].level, 1, "default level is the lowest");
}

#[test]
fn service_section_defaults_values_and_errors() {
    let c = Config::from_toml(MINIMAL, Path::new("/")).unwrap();
    assert_eq!(c.service, ServiceConfig::default());
    assert!(!c.runtime.mlockall);
    assert!(c.workers[0].cpus.is_empty());
    let c = Config::from_toml(
        &format!(
            "[service]\ndrain_timeout_ms = 250\nmax_run_ms = 40\nstatus_interval_ms = 1000\nmodel_load_timeout_s = 60\n[runtime]\nmlockall = true\n{MINIMAL}"
        ),
        Path::new("/"),
    )
    .unwrap();
    assert_eq!(c.service.drain_timeout, Duration::from_millis(250));
    assert_eq!(c.service.max_run, Duration::from_millis(40));
    assert_eq!(c.service.status_interval, Duration::from_secs(1));
    assert_eq!(c.service.model_load_timeout, Duration::from_secs(60));
    assert!(c.runtime.mlockall);
    let e = err(&format!("[service]\nmax_run_ms = 0\n{MINIMAL}"));
    assert!(e.contains("service.max_run_ms = 0"), "{e}");
    let e = err(&format!(
        "[service]\nmodel_load_timeout_s = 5000\n{MINIMAL}"
    ));
    assert!(
        e.contains("service.model_load_timeout_s = 5000") && e.contains("EXTEND_TIMEOUT_USEC"),
        "{e}"
    );
    let e = err(&format!("[service]\nwatchdog_sec = 3\n{MINIMAL}"));
    assert!(e.contains("watchdog_sec"), "unknown keys are named: {e}");
}

#[test]
fn worker_cpus_are_validated_and_sorted() {
    let w = |cpus: &str| format!("[[worker]]\nlevels = [\"default\"]\ncpus = {cpus}\n{MINIMAL}");
    let c = Config::from_toml(&w("[3, 1, 3]"), Path::new("/")).unwrap();
    assert_eq!(c.workers[0].cpus, vec![1, 3]);
    let e = err(&w("[]"));
    assert!(e.contains("worker[0].cpus = []"), "{e}");
    let e = err(&w("[4096]"));
    assert!(
        e.contains("worker[0].cpus") && e.contains("4096") && e.contains("0 to 1023"),
        "{e}"
    );
}

#[test]
fn batching_keys_are_validated() {
    let c = Config::from_toml(
        &format!(
            "{MINIMAL}\nmax_batch = 8\nmax_queue_delay_us = 2000\npreferred_batch_sizes = [4, 8]\n"
        ),
        Path::new("/base"),
    )
    .unwrap();
    assert_eq!(
        c.pipelines[0].batch,
        Some(BatchConfig {
            max_batch: 8,
            max_queue_delay: Duration::from_millis(2),
            preferred: vec![4, 8],
        })
    );
    assert!(
        Config::from_toml(MINIMAL, Path::new("/base"))
            .unwrap()
            .pipelines[0]
            .batch
            .is_none()
    );
    let e = err(&format!("{MINIMAL}\nmax_queue_delay_us = 100\n"));
    assert!(
        e.contains("pipeline \"a\": max_queue_delay_us") && e.contains("max_batch > 1"),
        "{e}"
    );
    let e = err(&format!(
        "{MINIMAL}\nmax_batch = 4\npreferred_batch_sizes = [8]\n"
    ));
    assert!(
        e.contains("preferred_batch_sizes = [8]") && e.contains("2..=4"),
        "{e}"
    );
    let e = err(&format!(
        "{MINIMAL}\nmax_batch = 4\nmax_queue_delay_us = 5000000\n"
    ));
    assert!(e.contains("max_queue_delay_us = 5000000"), "{e}");
    let e = err(&format!("{MINIMAL}\nmax_batch = 0\n"));
    assert!(e.contains("max_batch = 0"), "{e}");
}

#[test]
fn generator_max_batch_is_bounded_by_max_generations() {
    let gen_cfg = |extra: &str| {
        format!(
            "[[pipeline]]\nname = \"g\"\nkind = \"generate\"\nmodel = \"d\"\ninput = \"cmd\"\noutput = \"out\"\n{extra}\n"
        )
    };
    let c = Config::from_toml(&gen_cfg("max_batch = 4"), Path::new("/base")).unwrap();
    assert_eq!(c.generators[0].max_batch, 4);
    let c = Config::from_toml(&gen_cfg(""), Path::new("/base")).unwrap();
    assert_eq!(c.generators[0].max_batch, 1);
    let e = err(&gen_cfg("max_generations = 2\nmax_batch = 3"));
    assert!(
        e.contains("pipeline \"g\": max_batch = 3") && e.contains("max_generations (2)"),
        "{e}"
    );
    let e = err(&gen_cfg("max_batch = 2\nmax_queue_delay_us = 10"));
    assert!(
        e.contains("unknown field `max_queue_delay_us`") && e.contains("kind = \"generate\""),
        "{e}"
    );
}

#[test]
fn sched_idle_excludes_nice_and_fifo() {
    let w = |extra: &str| format!("[[worker]]\nlevels = [\"default\"]\n{extra}\n{MINIMAL}");
    let c = Config::from_toml(&w("sched_idle = true"), Path::new("/")).unwrap();
    assert_eq!(c.workers[0].policy, ThreadPolicy::Idle);
    let c = Config::from_toml(&w("sched_idle = false\nnice = 3"), Path::new("/")).unwrap();
    assert_eq!(c.workers[0].policy, ThreadPolicy::Nice(3));
    let e = err(&w("sched_idle = true\nnice = 3"));
    assert!(e.contains("worker[0]") && e.contains("sched_idle"), "{e}");
    let e = err(&w("sched_idle = true\nsched_fifo = 3"));
    assert!(e.contains("excludes nice and sched_fifo"), "{e}");
}

#[test]
fn new_contention_keys_have_defaults_and_bounds() {
    let c = Config::from_toml(MINIMAL, Path::new("/base")).unwrap();
    assert_eq!(c.pipelines[0].late, Late::Publish);
    assert_eq!(c.pipelines[0].non_finite, NonFinite::Reject);
    let c = Config::from_toml(
        &format!("{MINIMAL}\nlate = \"drop\"\nnon_finite = \"allow\"\n"),
        Path::new("/base"),
    )
    .unwrap();
    assert_eq!(
        (c.pipelines[0].late, c.pipelines[0].non_finite),
        (Late::Drop, NonFinite::Allow)
    );
    let gen_cfg = |extra: &str| {
        format!(
            "[[pipeline]]\nname = \"g\"\nkind = \"generate\"\nmodel = \"d\"\ninput = \"cmd\"\noutput = \"out\"\n{extra}\n"
        )
    };
    let c = Config::from_toml(&gen_cfg(""), Path::new("/base")).unwrap();
    let g = &c.generators[0];
    assert_eq!(
        (g.max_prompt_tokens, g.max_messages, g.max_unsent),
        (None, DEFAULT_MAX_MESSAGES, DEFAULT_MAX_UNSENT)
    );
    let e = err(&gen_cfg("max_unsent = 2"));
    assert!(e.contains("pipeline \"g\": max_unsent = 2"), "{e}");
    let e = err(&gen_cfg("max_prompt_tokens = 0"));
    assert!(e.contains("max_prompt_tokens = 0"), "{e}");
}

/// The shipped example configs stay loadable (stage one and two; model
/// files are only looked at by `check` and start-up).
#[test]
fn shipped_configs_validate() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in ["demo.toml", "jetson.toml", "secure.toml"] {
        let path = repo.join("config").join(name);
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!c.pipelines.is_empty(), "{name}");
    }
    let jetson = Config::load(&repo.join("config/jetson.toml")).unwrap();
    let det = jetson
        .pipelines
        .iter()
        .find(|p| p.name == "textdet")
        .unwrap();
    let Provider::TensorRt(t) = &det.providers[0] else {
        panic!("textdet starts with tensorrt");
    };
    assert!(t.fp16 && t.warmup_profile);
    assert_eq!(t.timing_cache, t.engine_cache);
}

#[test]
fn provider_tables_reach_stage_two() {
    let c = Config::from_toml(
        &format!(
            "{MINIMAL}\nprovider = [{{ kind = \"tensorrt\", int8 = true, dla_core = 0, engine_cache = \"trt\", int8_calibration_table = \"calib.cache\" }}, {{ kind = \"cuda\", memory_limit_mb = 512 }}]\n"
        ),
        Path::new("/base"),
    )
    .unwrap();
    let p = &c.pipelines[0];
    assert_eq!(p.providers.len(), 2);
    let Provider::TensorRt(t) = &p.providers[0] else {
        panic!()
    };
    assert_eq!(t.engine_cache, Some(PathBuf::from("/base/trt")));
    assert_eq!(t.dla_core, Some(0));
    let Provider::Cuda(cu) = &p.providers[1] else {
        panic!()
    };
    assert_eq!(cu.memory_limit_bytes, Some(512 << 20));
    let e = err(&format!(
        "{MINIMAL}\nprovider = [{{ kind = \"tensorrt\", dla = true }}]\n"
    ));
    assert!(e.contains("dla"), "unknown keys are refused: {e}");
}

#[test]
fn generation_pipelines_refuse_tensorrt() {
    let e = err(
        "[[pipeline]]\nname = \"chat\"\nkind = \"generate\"\nmodel = \"m\"\ninput = \"c\"\noutput = \"o\"\nprovider = [{ kind = \"tensorrt\" }, { kind = \"cuda\" }]\n",
    );
    assert!(
        e.contains("pipeline \"chat\": provider[0].kind") && e.contains("decode step"),
        "{e}"
    );
}

#[test]
fn warmup_does_not_apply_to_raw_frames() {
    let e = err(&format!(
        "{MINIMAL}\nformat = \"raw\"\nraw = {{ tensor = \"x\", dtype = \"f32\", shape = [1, 4] }}\nwarmup = {{ x = [1, 4] }}\n"
    ));
    assert!(
        e.contains("pipeline \"a\": warmup.x") && e.contains("raw"),
        "{e}"
    );
}

/// A config error prints its cause once, also when a printer walks the
/// error's sources (`{:#}` of anyhow, as `main` prints).
#[test]
fn read_and_parse_errors_carry_their_cause_once() {
    use std::error::Error as _;
    let e = Config::load(Path::new("/nonexistent/reflexd.toml")).unwrap_err();
    assert!(e.to_string().contains("No such file"), "{e}");
    assert!(e.source().is_none(), "the cause is in the message already");
    let e = Config::from_toml("[[pipeline]\n", Path::new("/")).unwrap_err();
    assert!(e.source().is_none());
}
