//! docs/models.md ("add your own model") run as a reader runs it, so the
//! page cannot drift from the code: its config (the page's ```toml block)
//! is loaded, `reflexd check` must print every line the page shows (```text),
//! a daemon serves it on a loopback port, and the page's Python script
//! (```python, plain eclipse-zenoh in the provisioned venv) sends its bgr8
//! frames over real zenoh. The answers must be the page's (```json) and, on
//! their own terms, right: the three squares drawn on the frame come back as
//! boxes in the frame's pixels with their labels from the names file, and the
//! patch around the green one is classified green.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use reflexd::{Config, Daemon};
use serde_json::Value;

/// The doc's own port, replaced by a free one.
const DOC_ENDPOINT: &str = "tcp/127.0.0.1:7460";

fn doc() -> String {
    std::fs::read_to_string(repo().join("docs/models.md")).expect("docs/models.md")
}

/// The body of the first fenced block whose info string is `lang`.
fn fenced(doc: &str, lang: &str) -> String {
    let open = format!("```{lang}\n");
    let start = doc
        .find(&open)
        .unwrap_or_else(|| panic!("docs/models.md has no {open:?} block"))
        + open.len();
    let len = doc[start..].find("\n```").expect("unterminated block");
    doc[start..start + len].to_string()
}

fn json_values(text: &[u8]) -> Vec<Value> {
    serde_json::Deserializer::from_slice(text)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(text)))
}

fn check_output_matches_the_doc(cfg: &Config, doc: &str) {
    let out = reflexd::check::check(cfg).unwrap();
    // The doc runs from the checkout with relative paths.
    let out = out.replace(&format!("{}/", repo().display()), "");
    // The library path is the machine's; the CLI adds the "OK:" line.
    for line in fenced(doc, "text")
        .lines()
        .filter(|l| !l.starts_with("onnxruntime:") && !l.starts_with("OK:"))
    {
        assert!(
            out.lines().any(|o| o == line),
            "docs/models.md shows {line:?}; reflexd check printed:\n{out}"
        );
    }
}

/// Runs the doc's script against the daemon on `port`; its stdout.
async fn run_script(script: &str, port: u16) -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("reflexd-models-doc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("send_frame.py");
    std::fs::write(&path, script).unwrap();
    let py = venv_python();
    let endpoint = format!("tcp/127.0.0.1:{port}");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .arg(&path)
            .env("REFLEXD_CONNECT", endpoint)
            .output()
            .expect("run the venv python")
    })
    .await
    .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        out.status.success(),
        "send_frame.py failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn detection<'a>(dets: &'a Value, label: &str) -> &'a Value {
    dets.as_array()
        .and_then(|a| a.iter().find(|d| d["label"] == label))
        .unwrap_or_else(|| panic!("no {label} in {dets}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_doc_config_check_script_and_answers_are_real() {
    let doc = doc();
    let port = free_port();
    let toml = fenced(&doc, "toml");
    assert!(
        toml.contains(DOC_ENDPOINT),
        "the doc's config listens on {DOC_ENDPOINT}"
    );
    let toml = toml.replace(DOC_ENDPOINT, &format!("tcp/127.0.0.1:{port}"));
    let cfg = Config::from_toml(&toml, &repo()).unwrap_or_else(|e| panic!("doc config: {e}"));
    check_output_matches_the_doc(&cfg, &doc);

    let daemon = Daemon::start(cfg).await.expect("daemon starts");
    let got = json_values(&run_script(&fenced(&doc, "python"), port).await);
    let shown = json_values(fenced(&doc, "json").as_bytes());
    assert_eq!(got.len(), 2, "two answers: {got:?}");
    assert_eq!(shown.len(), 2, "the doc shows two answers");
    for (g, s) in got.iter().zip(&shown) {
        for k in ["pipeline", "stream", "id", "model", "late"] {
            assert_eq!(g[k], s[k], "{k}: got {g}, the doc shows {s}");
        }
    }
    assert_eq!(
        got[0]["answer"], shown[0]["answer"],
        "the detections the doc shows"
    );
    // Classifier scores come from a resized patch: equal up to the resizer's
    // rounding on another CPU's SIMD path.
    let classes = |v: &Value| -> Vec<(String, f64)> {
        v["answer"]["classes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["label"].as_str().unwrap_or("?").to_string(),
                    c["score"].as_f64().unwrap_or(f64::NAN),
                )
            })
            .collect()
    };
    let (g, s) = (classes(&got[1]), classes(&shown[1]));
    assert_eq!(g.len(), s.len(), "{g:?} vs the doc's {s:?}");
    for ((gl, gs), (sl, ss)) in g.iter().zip(&s) {
        assert!(
            gl == sl && (gs - ss).abs() < 0.01,
            "{g:?} vs the doc's {s:?}"
        );
    }

    // On their own terms: the squares of the script's 128x96 frame.
    let a = &got[0]["answer"];
    assert_eq!(a["kind"], "detect");
    assert_eq!(
        (a["width"].as_u64(), a["height"].as_u64()),
        (Some(128), Some(96))
    );
    assert_eq!(a["detections"].as_array().map(Vec::len), Some(3), "{a}");
    for (label, [x1, y1, x2, y2]) in [
        ("red", [32.0, 16.0, 48.0, 32.0]),
        ("green", [80.0, 48.0, 96.0, 64.0]),
        ("blue", [96.0, 16.0, 112.0, 32.0]),
    ] {
        let d = detection(&a["detections"], label);
        let b = &d["box"];
        let corners = [&b["x1"], &b["y1"], &b["x2"], &b["y2"]].map(|v| v.as_f64().unwrap());
        for (got, want) in corners.iter().zip([x1, y1, x2, y2]) {
            assert!((got - want).abs() < 0.01, "{label}: {b}");
        }
        assert!(d["score"].as_f64().unwrap() > 0.99, "{d}");
    }
    let top = &got[1]["answer"]["classes"][0];
    assert_eq!(top["label"], "green", "{}", got[1]);

    daemon.shutdown(Duration::from_secs(2)).await;
}
