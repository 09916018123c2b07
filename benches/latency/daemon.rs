//! The in-process daemon of the latency benchmark: which config it runs
//! (config/demo.toml with a private zenoh listener), the routes of its VAD
//! and OCR pipelines, and `infer::run` measured alone.

use super::*;

pub(crate) fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) const VAD_MODEL: &str = "models/fetched/silero_vad.onnx";
pub(crate) const OCR_MODEL: &str = "models/fetched/ch_PP-OCRv4_det_infer.onnx";
pub(crate) const DEMO_CONFIG: &str = "config/demo.toml";

/// Used when `config/demo.toml` is missing or has no VAD pipeline or no
/// safetensors text-detector pipeline (its camera pipeline is the OCR chain
/// since issue 13): the same shape of deployment (two levels, worker 0
/// reserved for real time) with the det-only load the Python peer also runs.
pub(crate) const BUILTIN_CONFIG: &str = r#"
[runtime]
intra_op_threads = 1
[[level]]
name = "realtime"
[[level]]
name = "camera"
[[worker]]
levels = ["realtime"]
[[worker]]
levels = ["realtime", "camera"]
[[pipeline]]
name = "vad"
model = "../models/fetched/silero_vad.onnx"
input = "robot/mic/*"
output = "reflexd/vad"
level = "realtime"
deadline_ms = 30
overflow = "latest"
format = "raw"
raw = { tensor = "input", dtype = "f32", shape = [1, 512] }
constants.sr = { dtype = "i64", shape = [], data = [16000] }
state = [{ input = "state", output = "stateN" }]
context = [{ input = "input", keep = 64 }]
[[pipeline]]
name = "textdet"
model = "../models/fetched/ch_PP-OCRv4_det_infer.onnx"
input = "robot/camera/*"
output = "reflexd/textdet"
level = "camera"
deadline_ms = 250
overflow = "latest"
format = "safetensors"
warmup = { x = [1, 3, 160, 640] }
"#;

/// Where a pipeline is reached: the concrete key a client publishes on and
/// the pattern its predictions and errors arrive under.
#[derive(Clone, Debug)]
pub(crate) struct Route {
    pub(crate) name: String,
    pub(crate) publish: String,
    pub(crate) replies: String,
}

/// The daemon configuration under test: the shipped demo config (so the
/// benchmark measures what `reflexd run -c config/demo.toml` runs), with
/// only the zenoh section replaced by a private loopback listener.
pub(crate) struct DaemonSetup {
    pub(crate) table: toml::Table,
    pub(crate) base: PathBuf,
    pub(crate) source: String,
    pub(crate) vad: Route,
    pub(crate) ocr: Option<Route>,
}

impl DaemonSetup {
    pub(crate) fn load() -> Result<DaemonSetup> {
        let path = repo_dir().join(DEMO_CONFIG);
        let base = repo_dir().join("config");
        let demo = std::fs::read_to_string(&path)
            .map_err(|e| anyhow!("{e}"))
            .and_then(|t| ctx(toml::from_str::<toml::Table>(&t), "parse"))
            .and_then(|t| DaemonSetup::from_table(t, base.clone(), DEMO_CONFIG.into()));
        match demo {
            Ok(s) => Ok(s),
            Err(e) => {
                println!("config: {DEMO_CONFIG} unusable ({e:#}); using the built-in equivalent");
                let t = ctx(toml::from_str::<toml::Table>(BUILTIN_CONFIG), "built-in")?;
                DaemonSetup::from_table(t, base, "built-in".into())
            }
        }
    }

    pub(crate) fn from_table(
        table: toml::Table,
        base: PathBuf,
        source: String,
    ) -> Result<DaemonSetup> {
        let pipelines = table
            .get("pipeline")
            .and_then(|p| p.as_array())
            .ok_or_else(|| anyhow!("no [[pipeline]]"))?;
        let route = |needle: &str| -> Option<Route> {
            // An OCR pipeline (`[pipeline.ocr]`, the demo's since issue 13)
            // takes image messages, not the det tensors the load generator
            // and the Python peer exchange.
            let p = pipelines.iter().find(|p| {
                p.get("ocr").is_none()
                    && p.get("model")
                        .and_then(|m| m.as_str())
                        .is_some_and(|m| m.contains(needle))
            })?;
            let s = |k: &str| p.get(k).and_then(|v| v.as_str()).map(str::to_string);
            let input = s("input")?;
            let output = s("output")?;
            // One stream: the first wildcard chunk becomes a stream id.
            let publish = input
                .split('/')
                .map(|c| if c.contains('*') { "bench" } else { c })
                .collect::<Vec<_>>()
                .join("/");
            Some(Route {
                name: s("name")?,
                publish,
                replies: format!("{output}/**"),
            })
        };
        let vad = route("silero").ok_or_else(|| anyhow!("no Silero VAD pipeline"))?;
        // Without a tensor text-detector pipeline the load would be refused
        // as bad_image at intake: fall back to the built-in config.
        let ocr =
            Some(route("det_infer").ok_or_else(|| {
                anyhow!("no safetensors text-detector pipeline for the OCR load")
            })?);
        Ok(DaemonSetup {
            table,
            base,
            source,
            vad,
            ocr,
        })
    }

    /// The config with a private listener on `port` and nothing else that
    /// could reach beyond loopback.
    pub(crate) fn config(&self, port: u16) -> Result<Config> {
        let mut t = self.table.clone();
        let mut z = toml::Table::new();
        z.insert("mode".into(), "peer".into());
        z.insert(
            "listen".into(),
            toml::Value::Array(vec![endpoint(port).into()]),
        );
        z.insert("scouting".into(), false.into());
        t.insert("zenoh".into(), toml::Value::Table(z));
        let text = ctx(toml::to_string(&t), "serialize config")?;
        Ok(Config::from_toml(&text, &self.base)?)
    }

    /// The same setup with `runtime.idle_spin_us` set (0: park at once).
    pub(crate) fn with_idle_spin(&self, us: u64) -> DaemonSetup {
        let mut table = self.table.clone();
        if let Some(rt) = table
            .entry("runtime")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
        {
            rt.insert("idle_spin_us".into(), toml::Value::Integer(us as i64));
        }
        DaemonSetup {
            table,
            base: self.base.clone(),
            source: self.source.clone(),
            vad: self.vad.clone(),
            ocr: self.ocr.clone(),
        }
    }

    /// The same setup with every `[[worker]] nice` and `sched_idle` removed;
    /// `None` when the config sets neither, so there is nothing to compare.
    pub(crate) fn without_nice(&self) -> Option<DaemonSetup> {
        let mut table = self.table.clone();
        let workers = table.get_mut("worker")?.as_array_mut()?;
        let mut removed = false;
        for w in workers.iter_mut() {
            if let Some(t) = w.as_table_mut() {
                removed |= t.remove("nice").is_some();
                removed |= t.remove("sched_idle").is_some();
            }
        }
        removed.then(|| DaemonSetup {
            table,
            base: self.base.clone(),
            source: format!("{} without worker nice/sched_idle", self.source),
            vad: self.vad.clone(),
            ocr: self.ocr.clone(),
        })
    }

    /// "worker 0: realtime; worker 1: realtime+camera (nice 10)".
    pub(crate) fn workers_described(&self) -> String {
        let Ok(c) = self.config(0) else {
            return String::new();
        };
        let ws: Vec<String> = c
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let names: Vec<&str> = w.levels.iter().map(|&l| c.levels[l].as_str()).collect();
                format!("worker {i}: {}{}", names.join("+"), w.policy)
            })
            .collect();
        format!("; {}", ws.join(", "))
    }

    pub(crate) fn vad_pipeline(&self) -> Result<reflexd::config::PipelineConfig> {
        let c = self.config(0)?;
        c.pipelines
            .into_iter()
            .find(|p| p.name == self.vad.name)
            .ok_or_else(|| anyhow!("VAD pipeline vanished"))
    }
}

pub(crate) fn print_stats(stats: &[PipelineSnapshot]) {
    for s in stats {
        let errs: Vec<String> = s.errors.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "  daemon.stats {:<8}: received={} ok={} errors: {}",
            s.name,
            s.received,
            s.ok,
            if errs.is_empty() {
                "none".to_string()
            } else {
                errs.join(" ")
            }
        );
    }
}

/// reflexd's inference path without zenoh or threads: `infer::run` on a
/// session built and warmed by the daemon's own start-up path, looped on this
/// thread. Separates what the daemon adds around `Session::run` from what
/// the hand-off adds.
pub(crate) struct DaemonPath {
    pub(crate) runner: reflexd::infer::Runner,
    pub(crate) pipeline: reflexd::config::PipelineConfig,
    pub(crate) spec: reflexd::infer::Spec,
    pub(crate) state: reflexd::infer::StreamState,
}

impl DaemonPath {
    pub(crate) fn new(env: &Environment, setup: &DaemonSetup) -> Result<DaemonPath> {
        let pipeline = setup.vad_pipeline()?;
        // The daemon's own start-up path: same session options, same warm-up.
        let cfg = setup.config(0)?;
        let loaded = reflexd::infer::warm::load_and_warm(env, &cfg.runtime, &pipeline)?;
        let (runner, spec) = (loaded.runner, loaded.spec);
        let state = reflexd::infer::StreamState::new(&spec, pipeline.context.len(), Instant::now())
            .map_err(|e| anyhow!("stream state: {e}"))?;
        Ok(DaemonPath {
            runner,
            pipeline,
            spec,
            state,
        })
    }

    pub(crate) fn series(&mut self, frames: &Frames, n: usize, into: &mut Series) -> Result<()> {
        let name = match &self.pipeline.format {
            reflexd::config::InputFormat::Raw { tensor, .. } => tensor.clone(),
            _ => "input".into(),
        };
        for i in 0..n {
            let t = reflexd::tensor::Tensor::new(
                name.clone(),
                Dtype::F32,
                vec![1, FRAME],
                frames.bytes(i).to_vec(),
            );
            let t0 = Instant::now();
            let mut items = [reflexd::infer::Item {
                tensors: std::slice::from_ref(&t),
                state: Some(&mut self.state),
            }];
            let ran = reflexd::infer::run::run(&mut self.runner, &self.spec, &mut items)
                .map_err(|e| anyhow!("infer::run: {e}"))?;
            let out = ran
                .outputs(&self.spec, 0)
                .map_err(|e| anyhow!("outputs: {e}"))?
                .len();
            into.lat.push(t0.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(out);
        }
        Ok(())
    }
}
