//! The peers `cargo bench --bench llm` runs beside reflexd: Python loops as
//! long-lived children (`benches/llm_peers.py`: a plain onnxruntime loop and
//! onnxruntime-genai, installed on demand into its own venv), and
//! llama.cpp's `llama-bench` (prefill and decode speed) and `llama-simple`
//! (its greedy answer), built on demand by `scripts/llama-cpp.sh`. Every
//! child is ours and is ended by its own handle, never by name.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use crossbeam::channel::{self, Receiver};
use serde_json::Value;

use crate::report::Run;

pub const GENAI_VERSION: &str = "0.18.0";
/// How long a child gets to import and load the model.
const START_TIMEOUT: Duration = Duration::from_secs(180);
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
const PIP_TIMEOUT: Duration = Duration::from_secs(400);
/// A llama.cpp build takes ~15 min on 2 busy cores.
const LLAMA_BUILD_TIMEOUT: Duration = Duration::from_secs(3600);

/// A Python generate loop in a child process.
pub struct Peer {
    pub name: String,
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    pub info: Value,
}

impl Peer {
    pub fn spawn(name: &str, python: &Path, args: &[String]) -> Result<Peer> {
        let mut child = Command::new(python)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("{name}: cannot start {}", python.display()))?;
        let stdin = child.stdin.take().context("piped stdin")?;
        let stdout = child.stdout.take().context("piped stdout")?;
        let (tx, lines) = channel::unbounded();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut p = Peer {
            name: name.to_string(),
            child,
            stdin,
            lines,
            info: Value::Null,
        };
        let v = p.reply(START_TIMEOUT)?;
        if v["ready"] != true {
            bail!("{name}: unexpected first line {v}");
        }
        p.info = v;
        Ok(p)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn reply(&self, timeout: Duration) -> Result<Value> {
        let line = self
            .lines
            .recv_timeout(timeout)
            .map_err(|_| anyhow!("{}: no reply within {timeout:?}", self.name))?;
        serde_json::from_str(&line).with_context(|| format!("{}: {line}", self.name))
    }

    /// One generation of `question`.
    pub fn generate(&mut self, question: &str) -> Result<Run> {
        writeln!(self.stdin, "run {}", serde_json::to_string(question)?)?;
        self.stdin.flush()?;
        let v = self.reply(RUN_TIMEOUT)?;
        if let Some(e) = v.get("error") {
            bail!("{}: {e}", self.name);
        }
        let ids = v["ids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_u64())
                    .map(|x| x as u32)
                    .collect()
            })
            .unwrap_or_default();
        let f = |k: &str| v[k].as_f64().unwrap_or(f64::NAN);
        Ok(Run {
            ttft_ms: f("ttft_ms"),
            tpot_ms: f("tpot_ms"),
            ids,
            ..Run::default()
        })
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command with a time limit; kills it (our child) if late. Its
/// stdout when it succeeded.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<Option<String>> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let mut out = child.stdout.take().context("piped stdout")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let until = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait()? {
            let stdout = reader.join().unwrap_or_default();
            if !st.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                let tail: Vec<&str> = err.lines().rev().take(3).collect();
                eprintln!("  {:?} failed: {}", cmd.get_program(), tail.join(" | "));
                return Ok(None);
            }
            return Ok(Some(stdout));
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!(
                "  {:?} took longer than {limit:?}; stopped",
                cmd.get_program()
            );
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The onnxruntime-genai venv, installed on first use next to the project
/// venv (never into it: genai pins its own onnxruntime).
pub fn genai_python(cache: &Path, venv_python: &Path) -> Result<PathBuf> {
    let venv = cache.join("venv-genai");
    let py = venv.join("bin/python");
    let probe = |py: &Path| {
        Command::new(py)
            .args([
                "-c",
                &format!(
                    "import onnxruntime_genai as og; assert og.__version__ == '{GENAI_VERSION}'"
                ),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if probe(&py) {
        return Ok(py);
    }
    println!(
        "installing onnxruntime-genai=={GENAI_VERSION} into {} (once)",
        venv.display()
    );
    if !py.exists()
        && run_bounded(
            Command::new(venv_python).arg("-m").arg("venv").arg(&venv),
            PIP_TIMEOUT,
        )?
        .is_none()
    {
        bail!("cannot create {}", venv.display());
    }
    let spec = format!("onnxruntime-genai=={GENAI_VERSION}");
    let pip = Command::new(&py)
        .args(["-m", "pip", "install", "-q", &spec, "numpy"])
        .output();
    if !pip.is_ok_and(|o| o.status.success()) || !probe(&py) {
        bail!("pip install {spec} failed");
    }
    Ok(py)
}

/// llama.cpp's tools and the GGUF the conversions came from.
pub struct LlamaCpp {
    bin: PathBuf,
    pub gguf: PathBuf,
}

/// One `llama-bench` measurement.
#[derive(Clone, Copy, Debug)]
pub struct LlamaBench {
    /// Time of the whole prefill of `n_prompt` tokens, or per generated
    /// token (decode), in ms.
    pub ms: f64,
}

impl LlamaCpp {
    /// Builds llama.cpp if needed (scripts/llama-cpp.sh, cached).
    pub fn find(repo: &Path, gguf: PathBuf) -> Result<LlamaCpp> {
        if !gguf.is_file() {
            bail!("{} missing (run `make setup`)", gguf.display());
        }
        let script = repo.join("scripts/llama-cpp.sh");
        let quick = Command::new("bash")
            .arg(&script)
            .arg("--print-bin")
            .output()?;
        let out = if quick.status.success() {
            String::from_utf8_lossy(&quick.stdout).into_owned()
        } else {
            println!("building llama.cpp (scripts/llama-cpp.sh, once, ~15 min)…");
            run_bounded(Command::new("bash").arg(&script), LLAMA_BUILD_TIMEOUT)?
                .ok_or_else(|| anyhow!("scripts/llama-cpp.sh failed"))?
        };
        let bin = PathBuf::from(out.lines().last().unwrap_or("").trim());
        if !bin.join("llama-bench").is_file() {
            bail!("no llama-bench in {}", bin.display());
        }
        Ok(LlamaCpp { bin, gguf })
    }

    /// `llama-bench` once: prefill of `prompt` tokens (`tokens` = 0) or
    /// `tokens` decoded after `depth` positions. ms per prefill or per token.
    pub fn bench(
        &self,
        threads: usize,
        prompt: usize,
        tokens: usize,
        depth: usize,
    ) -> Result<LlamaBench> {
        let out = run_bounded(
            Command::new(self.bin.join("llama-bench")).args([
                "-m",
                &self.gguf.display().to_string(),
                "-t",
                &threads.to_string(),
                "-r",
                "1",
                "-o",
                "json",
                "-p",
                &prompt.to_string(),
                "-n",
                &tokens.to_string(),
                "-d",
                &depth.to_string(),
            ]),
            RUN_TIMEOUT,
        )?
        .ok_or_else(|| anyhow!("llama-bench failed"))?;
        let v: Value = serde_json::from_str(&out).context("llama-bench json")?;
        let r = v
            .as_array()
            .and_then(|a| a.first())
            .ok_or_else(|| anyhow!("llama-bench: no result"))?;
        let ns = r["avg_ns"]
            .as_f64()
            .ok_or_else(|| anyhow!("llama-bench: no avg_ns"))?;
        let ms = if tokens > 0 {
            ns / 1e6 / tokens as f64
        } else {
            ns / 1e6
        };
        Ok(LlamaBench { ms })
    }

    /// `llama-simple`'s greedy continuation of `prompt` (raw text, special
    /// tokens parsed), at most `n` tokens.
    pub fn greedy_text(&self, prompt: &str, n: usize) -> Result<String> {
        let out = run_bounded(
            Command::new(self.bin.join("llama-simple")).args([
                "-m",
                &self.gguf.display().to_string(),
                "-n",
                &n.to_string(),
                prompt,
            ]),
            RUN_TIMEOUT,
        )?
        .ok_or_else(|| anyhow!("llama-simple failed"))?;
        out.strip_prefix(prompt)
            .map(|s| s.strip_suffix('\n').unwrap_or(s).to_string())
            .ok_or_else(|| anyhow!("llama-simple output does not start with the prompt"))
    }
}
