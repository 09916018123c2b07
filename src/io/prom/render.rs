//! The Prometheus text exposition (format 0.0.4) of one metrics snapshot.
//! Every metric name and label is documented in `docs/metrics.md`; keep the
//! two in step. Names follow Prometheus conventions (`_total` counters,
//! `_seconds` histograms); generation latencies follow the OpenTelemetry
//! GenAI semantic conventions (`gen_ai.server.time_to_first_token` →
//! `gen_ai_server_time_to_first_token_seconds`, attributes with `.` → `_`).
//! Histogram buckets are summed from the µs-resolution histogram, so a
//! bucket edge is exact to the histogram's resolution (≤ 1.6 %); `_count`
//! and `_sum` are exact.

use std::fmt::Write as _;

use crate::obs::hist::{OTEL_REQUEST_US, OTEL_TPOT_US, OTEL_TTFT_US};
use crate::obs::process::ProcessStats;
use crate::obs::{
    GEN_FAILURES, GenSnapshot, HistSnapshot, MetricsSnapshot, OTHER_ERROR, PipelineSnapshot,
};

/// What the exposition needs beyond the snapshot, fixed at start-up.
pub struct Layout {
    /// Per pipeline, in snapshot order (tensor pipelines, then generation).
    pub pipelines: Vec<PipeLayout>,
}

pub struct PipeLayout {
    /// Error codes the pipeline can produce (`ok` is implied).
    pub outcomes: Vec<&'static str>,
    /// Bucket bounds (µs) of its latency histograms.
    pub buckets_us: Vec<u64>,
    pub deadline_s: f64,
}

/// `gen_ai.provider.name` (and the older `gen_ai.system`) of our series:
/// the serving daemon itself.
pub const GEN_AI_PROVIDER: &str = "reflexd";

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
        .collect();
    inner.join(",")
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn histogram(out: &mut String, name: &str, l: &str, h: &HistSnapshot, buckets_us: &[u64]) {
    for &le in buckets_us {
        let _ = writeln!(
            out,
            "{name}_bucket{{{l},le=\"{}\"}} {}",
            le as f64 / 1e6,
            h.count_le(le)
        );
    }
    let _ = writeln!(out, "{name}_bucket{{{l},le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum{{{l}}} {}", h.sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count{{{l}}} {}", h.count);
}

fn base(p: &PipelineSnapshot) -> String {
    labels(&[
        ("pipeline", &p.name),
        ("kind", &p.kind),
        ("level", &p.level),
    ])
}

/// Renders the snapshot, the build and the process in the text format.
pub fn render(s: &MetricsSnapshot, layout: &Layout, process: &ProcessStats) -> String {
    let mut o = String::with_capacity(16 * 1024);
    let pipes: Vec<(&PipelineSnapshot, &PipeLayout)> =
        s.pipelines.iter().zip(&layout.pipelines).collect();
    build_info(&mut o, s);
    pipeline_info(&mut o, &pipes);
    request_counters(&mut o, &pipes);
    latency_histograms(&mut o, &pipes);
    gen_ai(&mut o, &pipes);
    workers(&mut o, s);
    process_metrics(&mut o, process);
    o
}

fn build_info(o: &mut String, s: &MetricsSnapshot) {
    header(
        o,
        "reflexd_build_info",
        "gauge",
        "Always 1; the labels say which reflexd build runs and the ONNX Runtime API it needs.",
    );
    let l = labels(&[
        ("version", &s.version),
        ("ort_api", &ort::MINOR_VERSION.to_string()),
    ]);
    let _ = writeln!(o, "reflexd_build_info{{{l}}} 1");
    header(
        o,
        "reflexd_uptime_seconds",
        "gauge",
        "Seconds since the daemon finished loading its models.",
    );
    let _ = writeln!(o, "reflexd_uptime_seconds {}", s.uptime_s);
}

fn pipeline_info(o: &mut String, pipes: &[(&PipelineSnapshot, &PipeLayout)]) {
    header(
        o,
        "reflexd_pipeline_info",
        "gauge",
        "Always 1; the labels describe the pipeline: level, configured model and the execution provider in use.",
    );
    for (p, _) in pipes {
        let l = labels(&[
            ("pipeline", &p.name),
            ("kind", &p.kind),
            ("level", &p.level),
            ("provider", &p.provider),
            ("model", &p.model),
        ]);
        let _ = writeln!(o, "reflexd_pipeline_info{{{l}}} 1");
    }
    header(
        o,
        "reflexd_pipeline_deadline_seconds",
        "gauge",
        "The pipeline's configured deadline (deadline_ms), the budget of one request.",
    );
    for (p, pl) in pipes {
        let _ = writeln!(
            o,
            "reflexd_pipeline_deadline_seconds{{{}}} {}",
            base(p),
            pl.deadline_s
        );
    }
}

fn request_counters(o: &mut String, pipes: &[(&PipelineSnapshot, &PipeLayout)]) {
    header(
        o,
        "reflexd_received_total",
        "counter",
        "Requests that reached the pipeline's subscriber.",
    );
    for (p, _) in pipes {
        let _ = writeln!(o, "reflexd_received_total{{{}}} {}", base(p), p.received);
    }
    header(
        o,
        "reflexd_requests_total",
        "counter",
        "Finished requests by outcome: ok or the stable error code; only outcomes the pipeline can produce are listed (docs/metrics.md).",
    );
    for (p, pl) in pipes {
        let b = base(p);
        let _ = writeln!(o, "reflexd_requests_total{{{b},outcome=\"ok\"}} {}", p.ok);
        for code in &pl.outcomes {
            let n = p.errors.get(*code).copied().unwrap_or(0);
            let _ = writeln!(o, "reflexd_requests_total{{{b},outcome=\"{code}\"}} {n}");
        }
    }
    header(
        o,
        "reflexd_late_total",
        "counter",
        "Results that finished after their deadline (published flagged late, or dropped with late = \"drop\"); jobs dropped before they could start are reflexd_requests_total{outcome=\"deadline_exceeded\"}.",
    );
    for (p, _) in pipes {
        let _ = writeln!(o, "reflexd_late_total{{{}}} {}", base(p), p.late);
    }
}

type Pick = fn(&PipelineSnapshot) -> &HistSnapshot;

fn latency_histograms(o: &mut String, pipes: &[(&PipelineSnapshot, &PipeLayout)]) {
    let families: [(&str, &str, Pick); 3] = [
        (
            "reflexd_queue_wait_seconds",
            "Receipt to start of the model run (generation: to the first step). Buckets follow the pipeline's deadline.",
            |p| &p.queue_wait,
        ),
        (
            "reflexd_inference_seconds",
            "One model run (generation: one prefill chunk or decode step). Buckets follow the pipeline's deadline.",
            |p| &p.inference,
        ),
        (
            "reflexd_request_duration_seconds",
            "Receipt to publication of a successful prediction (generation: to the final message of a generation that did not fail). Buckets follow the pipeline's deadline.",
            |p| &p.e2e,
        ),
    ];
    for (name, help, get) in families {
        header(o, name, "histogram", help);
        for (p, pl) in pipes {
            histogram(o, name, &base(p), get(p), &pl.buckets_us);
        }
    }
}

fn gen_labels(p: &PipelineSnapshot) -> String {
    labels(&[
        ("pipeline", &p.name),
        ("gen_ai_operation_name", "chat"),
        ("gen_ai_provider_name", GEN_AI_PROVIDER),
        ("gen_ai_system", GEN_AI_PROVIDER),
        ("gen_ai_request_model", &p.model),
    ])
}

/// The OpenTelemetry GenAI server metrics, for generation pipelines only.
fn gen_ai(o: &mut String, pipes: &[(&PipelineSnapshot, &PipeLayout)]) {
    let gens: Vec<(&PipelineSnapshot, &GenSnapshot)> = pipes
        .iter()
        .filter_map(|(p, _)| p.generation.as_ref().map(|g| (*p, g)))
        .collect();
    if gens.is_empty() {
        return;
    }
    let name = "gen_ai_server_time_to_first_token_seconds";
    header(
        o,
        name,
        "histogram",
        "Receipt to the first token (OpenTelemetry gen_ai.server.time_to_first_token).",
    );
    for (p, g) in &gens {
        histogram(o, name, &gen_labels(p), &g.ttft, &OTEL_TTFT_US);
    }
    let name = "gen_ai_server_time_per_output_token_seconds";
    header(
        o,
        name,
        "histogram",
        "Time per output token after the first (OpenTelemetry gen_ai.server.time_per_output_token).",
    );
    for (p, g) in &gens {
        histogram(o, name, &gen_labels(p), &g.tpot, &OTEL_TPOT_US);
    }
    gen_request_duration(o, &gens);
    gen_counters(o, &gens);
}

/// Successful generations without `error_type`, failed ones by code
/// (OpenTelemetry `error.type`): every failure a started generation can
/// end with, plus `_OTHER` once it has samples.
fn gen_request_duration(o: &mut String, gens: &[(&PipelineSnapshot, &GenSnapshot)]) {
    let name = "gen_ai_server_request_duration_seconds";
    header(
        o,
        name,
        "histogram",
        "Receipt to the final message (OpenTelemetry gen_ai.server.request.duration); failed generations carry error_type.",
    );
    let empty = HistSnapshot::default();
    for (p, g) in gens {
        let l = gen_labels(p);
        histogram(o, name, &l, &p.e2e, &OTEL_REQUEST_US);
        for code in GEN_FAILURES.iter().map(|c| c.code()).chain([OTHER_ERROR]) {
            let h = g.failed.get(code);
            if code == OTHER_ERROR && h.is_none() {
                continue;
            }
            let le = format!("{l},error_type=\"{code}\"");
            histogram(o, name, &le, h.unwrap_or(&empty), &OTEL_REQUEST_US);
        }
    }
}

fn gen_counters(o: &mut String, gens: &[(&PipelineSnapshot, &GenSnapshot)]) {
    header(
        o,
        "reflexd_gen_ai_tokens_total",
        "counter",
        "Tokens processed, by OpenTelemetry gen_ai.token.type (input = prompt, output = completion).",
    );
    for (p, g) in gens {
        let l = gen_labels(p);
        for (kind, n) in [("input", g.prompt_tokens), ("output", g.completion_tokens)] {
            let _ = writeln!(
                o,
                "reflexd_gen_ai_tokens_total{{{l},gen_ai_token_type=\"{kind}\"}} {n}"
            );
        }
    }
    header(
        o,
        "reflexd_generations_live",
        "gauge",
        "Generations queued or running.",
    );
    for (p, g) in gens {
        let _ = writeln!(
            o,
            "reflexd_generations_live{{{}}} {}",
            gen_labels(p),
            g.live
        );
    }
}

fn workers(o: &mut String, s: &MetricsSnapshot) {
    header(
        o,
        "reflexd_worker_busy_seconds_total",
        "counter",
        "Time each worker thread spent running jobs (utilisation = rate of this).",
    );
    for w in &s.workers {
        let l = labels(&[
            ("worker", &w.id.to_string()),
            ("levels", &w.levels.join(",")),
        ]);
        let _ = writeln!(
            o,
            "reflexd_worker_busy_seconds_total{{{l}}} {}",
            w.busy_us as f64 / 1e6
        );
    }
}

/// The standard `process_*` series of Prometheus client libraries; one
/// the system cannot report is left out rather than shown as 0.
fn process_metrics(o: &mut String, p: &ProcessStats) {
    let gauges: [(&str, &str, Option<f64>); 6] = [
        (
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds.",
            p.start_time_seconds,
        ),
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            p.resident_bytes.map(|v| v as f64),
        ),
        (
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            p.virtual_bytes.map(|v| v as f64),
        ),
        (
            "process_open_fds",
            "Number of open file descriptors.",
            p.open_fds.map(|v| v as f64),
        ),
        (
            "process_max_fds",
            "Maximum number of open file descriptors.",
            p.max_fds.map(|v| v as f64),
        ),
        (
            "process_threads",
            "Number of OS threads in the process.",
            p.threads.map(|v| v as f64),
        ),
    ];
    header(
        o,
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
    );
    let _ = writeln!(o, "process_cpu_seconds_total {}", p.cpu_seconds);
    for (name, help, v) in gauges {
        if let Some(v) = v {
            header(o, name, "gauge", help);
            let _ = writeln!(o, "{name} {v}");
        }
    }
}
