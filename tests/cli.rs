//! The `reflexd` binary as an operator meets it: `check` on good and bad
//! configs, missing models and a missing ONNX Runtime, and execution-provider
//! selection on this CPU-only machine. Errors are one clear line on stderr
//! and a non-zero exit; never a panic.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn reflexd(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_reflexd"));
    cmd.args(args).env("REFLEXD_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run reflexd")
}

fn write_config(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("reflexd-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn pipeline(model: &str, extra: &str) -> String {
    format!(
        "[zenoh]\nlisten = [\"tcp/127.0.0.1:0\"]\n[[pipeline]]\nname = \"p\"\nmodel = \"{model}\"\ninput = \"a/*\"\noutput = \"b\"\n{extra}\n"
    )
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_clean_failure(o: &Output, must_contain: &[&str]) {
    let err = stderr(o);
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {err}"
    );
    assert_eq!(o.status.code(), Some(1), "exit code; stderr: {err}");
    assert!(!err.contains("panicked"), "must not panic: {err}");
    for s in must_contain {
        assert!(err.contains(s), "stderr should mention {s:?}: {err}");
    }
}

#[test]
fn check_describes_a_good_config() {
    let d = tmpdir("good");
    let cfg = write_config(
        &d,
        "ok.toml",
        &pipeline(&common::test_model("affine.onnx"), ""),
    );
    let o = reflexd(&["check", "-c", &cfg], &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "stderr: {}", stderr(&o));
    assert!(
        out.contains("x: f32[?,4]") && out.contains("y: f32[?,4]"),
        "{out}"
    );
    assert!(out.contains("provider: cpu"), "{out}");
}

#[test]
fn unknown_key_fails_with_its_name() {
    let d = tmpdir("unknown");
    let cfg = write_config(
        &d,
        "bad.toml",
        &pipeline(&common::test_model("affine.onnx"), "priority = 3"),
    );
    assert_clean_failure(
        &reflexd(&["check", "-c", &cfg], &[]),
        &["unknown field `priority`"],
    );
}

#[test]
fn bad_value_fails_naming_key_value_and_choices() {
    let d = tmpdir("badvalue");
    let cfg = write_config(
        &d,
        "bad.toml",
        &pipeline(&common::test_model("affine.onnx"), "overflow = \"oldest\""),
    );
    assert_clean_failure(
        &reflexd(&["check", "-c", &cfg], &[]),
        &["pipeline \"p\"", "overflow", "oldest", "latest", "reject"],
    );
}

#[test]
fn missing_model_fails_for_check_and_run() {
    let d = tmpdir("missing");
    let cfg = write_config(&d, "m.toml", &pipeline("/nonexistent/model.onnx", ""));
    for cmd in ["check", "run"] {
        assert_clean_failure(
            &reflexd(&[cmd, "-c", &cfg], &[]),
            &["/nonexistent/model.onnx", "not found"],
        );
    }
}

#[test]
fn missing_config_file_fails_cleanly() {
    assert_clean_failure(
        &reflexd(&["check", "-c", "/nonexistent/reflexd.toml"], &[]),
        &["cannot read config file"],
    );
}

#[test]
fn missing_or_wrong_onnxruntime_is_one_clear_line() {
    let d = tmpdir("ort");
    let cfg = write_config(
        &d,
        "ok.toml",
        &pipeline(&common::test_model("affine.onnx"), ""),
    );
    let o = reflexd(
        &["check", "-c", &cfg],
        &[("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so")],
    );
    assert_clean_failure(&o, &["ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so"]);
    // A file that is not ONNX Runtime at all.
    let bogus = d.join("libonnxruntime.so");
    std::fs::write(&bogus, b"not a library").unwrap();
    let o = reflexd(
        &["check", "-c", &cfg],
        &[("ORT_DYLIB_PATH", bogus.to_str().unwrap())],
    );
    assert_clean_failure(&o, &["cannot load ONNX Runtime"]);
    // From the config key, which wins over the environment.
    let cfg2 = write_config(
        &d,
        "rt.toml",
        &format!(
            "[runtime]\nonnxruntime = \"/opt/none/libonnxruntime.so\"\n{}",
            pipeline(&common::test_model("affine.onnx"), "")
        ),
    );
    assert_clean_failure(
        &reflexd(&["check", "-c", &cfg2], &[]),
        &["runtime.onnxruntime", "/opt/none"],
    );
}

#[test]
fn gpu_providers_fall_back_to_cpu_only_when_allowed() {
    let d = tmpdir("providers");
    let model = common::test_model("affine.onnx");
    let chain = "[[pipeline.provider]]\nkind = \"tensorrt\"\nfp16 = true\nengine_cache = \"/tmp/trt\"\n[[pipeline.provider]]\nkind = \"cuda\"\n[[pipeline.provider]]\nkind = \"cpu\"\n";
    let next = write_config(
        &d,
        "next.toml",
        &pipeline(&model, &format!("fallback = \"next\"\n{chain}")),
    );
    let o = reflexd(&["check", "-c", &next], &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        out.contains("provider: cpu (configured: tensorrt → cuda → cpu"),
        "{out}"
    );

    let strict = write_config(
        &d,
        "strict.toml",
        &pipeline(&model, &format!("fallback = \"error\"\n{chain}")),
    );
    assert_clean_failure(
        &reflexd(&["check", "-c", &strict], &[]),
        &[
            "execution provider tensorrt unusable",
            "fallback = \"error\"",
        ],
    );
}

/// `--help` of every subcommand documents each option (none bare, none cut
/// off) and the environment variables, REFLEXD_LOG first.
#[test]
fn help_documents_every_option_and_the_environment() {
    for sub in ["run", "check", "prompt", "top", "tap"] {
        let o = reflexd(&[sub, "--help"], &[]);
        let help = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{sub}: {}", stderr(&o));
        for var in ["REFLEXD_LOG", "REFLEXD_CONNECT", "REFLEXD_ZENOH_CONFIG"] {
            assert!(help.contains(var), "{sub} --help lacks {var}:\n{help}");
        }
        for line in help.lines().filter(|l| l.trim_start().starts_with('-')) {
            // `--flag <VALUE>  text`: an option line must carry text that
            // ends a sentence (clap cuts nothing; the doc comment might).
            let text = line
                .trim_start()
                .split_once("  ")
                .map(|(_, t)| t.trim())
                .unwrap_or("");
            assert!(!text.is_empty(), "{sub}: undocumented option: {line}");
            assert!(
                !text.ends_with(" after.") && !text.ends_with(" after"),
                "{sub}: cut-off text: {line}"
            );
        }
    }
    let o = reflexd(&["prompt", "--help"], &[]);
    let help = String::from_utf8_lossy(&o.stdout);
    for opt in [
        "--max-tokens <N>",
        "--top-k <K>",
        "--top-p <P>",
        "--deadline-ms <MS>",
    ] {
        let line = help
            .lines()
            .find(|l| l.contains(opt))
            .unwrap_or_else(|| panic!("no {opt} in:\n{help}"));
        assert!(line.len() > opt.len() + 20, "{opt} has no text: {line}");
    }
}

/// A daemon start with the default log filter: no zenoh warning about
/// gossip (scouting is off on purpose), and nothing at WARN or above from
/// zenoh at all.
#[test]
fn default_log_of_a_daemon_start_has_no_zenoh_noise() {
    let d = tmpdir("log");
    let port = common::free_port();
    let cfg = write_config(
        &d,
        "ok.toml",
        &format!(
            "[zenoh]\nlisten = [\"tcp/127.0.0.1:{port}\"]\nscouting = false\n[[pipeline]]\nname = \"p\"\nmodel = \"{}\"\ninput = \"a/*\"\noutput = \"b\"\n",
            common::test_model("affine.onnx")
        ),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_reflexd"))
        .args(["run", "-c", &cfg])
        .env_remove("REFLEXD_LOG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let mut log = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&log).contains("reflexd ready") {
        let n = std::io::Read::read(&mut err, &mut buf).unwrap();
        assert!(n > 0, "daemon ended: {}", String::from_utf8_lossy(&log));
        log.extend_from_slice(&buf[..n]);
    }
    // SAFETY: plain kill(2) on the child this test spawned.
    assert_eq!(
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) },
        0
    );
    std::io::Read::read_to_end(&mut err, &mut log).unwrap();
    // Not asserted: the exit status (a SIGTERM just after "ready" can come
    // before the daemon's handler is installed; not what this test is about).
    let _ = child.wait();
    let log = String::from_utf8_lossy(&log);
    assert!(!log.contains("Gossip is disabled"), "{log}");
    assert!(
        !log.lines()
            .any(|l| l.contains(" zenoh") && (l.contains("WARN") || l.contains("ERROR"))),
        "{log}"
    );
}

/// A `warmup` key that names no input the messages carry would warm up (and
/// build a TensorRT engine for) a shape nobody sends: refused, naming the
/// pipeline and the inputs that exist.
#[test]
fn warmup_key_naming_no_input_is_refused() {
    let d = tmpdir("warmup");
    let model = common::test_model("affine.onnx");
    let cfg = write_config(
        &d,
        "w.toml",
        &pipeline(&model, "warmup = { images = [1, 3, 8, 8] }"),
    );
    for cmd in ["check", "run"] {
        assert_clean_failure(
            &reflexd(&[cmd, "-c", &cfg], &[]),
            &[
                "pipeline \"p\"",
                "warmup.images",
                "no input `images`",
                "x: f32[?,4]",
            ],
        );
    }
    // A shape that does not fit the input is refused the same way.
    let cfg = write_config(&d, "s.toml", &pipeline(&model, "warmup = { x = [1, 5] }"));
    assert_clean_failure(
        &reflexd(&["check", "-c", &cfg], &[]),
        &["pipeline \"p\"", "warmup.x = [1, 5]", "x: f32[?,4]"],
    );
}

/// Config errors print their cause once: the TOML parser's report and the
/// OS error of a missing file are not repeated by the error chain.
#[test]
fn config_errors_print_their_cause_once() {
    let d = tmpdir("once");
    let cfg = write_config(&d, "syntax.toml", "[[pipeline]\nname = \"p\"\n");
    let o = reflexd(&["check", "-c", &cfg], &[]);
    assert_clean_failure(&o, &["syntax.toml", "TOML parse error"]);
    assert_eq!(
        stderr(&o).matches("TOML parse error").count(),
        1,
        "{}",
        stderr(&o)
    );
    let o = reflexd(&["check", "-c", "/nonexistent/reflexd.toml"], &[]);
    assert_clean_failure(&o, &["cannot read config file /nonexistent/reflexd.toml"]);
    assert_eq!(
        stderr(&o).matches("No such file or directory").count(),
        1,
        "{}",
        stderr(&o)
    );
}

/// `check` shows what ONNX Runtime would be asked for on the board (here,
/// where neither GPU provider exists): every option and the TensorRT
/// profile derived from the warm-up range and the batch size.
#[test]
fn check_prints_the_options_ort_receives() {
    let d = tmpdir("epopts");
    let model = common::test_model("affine.onnx");
    let extra = "max_batch = 4\nwarmup = { x = { min = [1, 4], opt = [2, 4], max = [3, 4] } }\nprovider = [{ kind = \"tensorrt\", fp16 = true, dla_core = 1, max_workspace_mb = 64, engine_cache = \"trt\" }, { kind = \"cuda\", device_id = 1, memory_limit_mb = 256, arena_extend_strategy = \"same_as_requested\" }, { kind = \"cpu\" }]";
    let cfg = write_config(&d, "opts.toml", &pipeline(&model, extra));
    let o = reflexd(&["check", "-c", &cfg], &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    let trt = out
        .lines()
        .find(|l| l.trim_start().starts_with("tensorrt options:"))
        .unwrap_or_else(|| panic!("no tensorrt options in:\n{out}"));
    let cache = d.join("trt").display().to_string();
    for want in [
        "device_id=0".to_string(),
        "trt_fp16_enable=true".into(),
        "trt_dla_enable=true trt_dla_core=1".into(),
        format!("trt_max_workspace_size={}", 64 << 20),
        format!("trt_engine_cache_path={cache}"),
        format!("trt_timing_cache_path={cache}"),
        // min: 1 row of the min shape; opt and max: 4 rows (max_batch).
        "trt_profile_min_shapes=x:1x4".into(),
        "trt_profile_opt_shapes=x:8x4".into(),
        "trt_profile_max_shapes=x:12x4".into(),
    ] {
        assert!(trt.contains(&want), "{want} missing: {trt}");
    }
    assert!(
        out.contains("cuda options: device_id=1 gpu_mem_limit=268435456 arena_extend_strategy=kSameAsRequested"),
        "{out}"
    );
    // An option ONNX Runtime would silently ignore is refused before that.
    let bad = write_config(
        &d,
        "dla.toml",
        &pipeline(&model, "provider = [{ kind = \"tensorrt\", dla_core = 0 }]"),
    );
    assert_clean_failure(
        &reflexd(&["check", "-c", &bad], &[]),
        &["pipeline \"p\": provider[0].dla_core", "fp16"],
    );
}
