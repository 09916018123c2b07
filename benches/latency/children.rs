//! Child processes of the latency benchmark: the Python node baseline and
//! the PP-OCR load generator (this same binary with `--ocr-load-child`).

use super::*;

/// A child process we started, spoken to over stdin/stdout lines. Closing
/// stdin is the stop signal; it is killed (by its own handle) only if it
/// does not exit in time.
pub(crate) struct ChildProc {
    pub(crate) name: &'static str,
    pub(crate) child: Child,
    pub(crate) stdin: Option<ChildStdin>,
    pub(crate) lines: Receiver<String>,
}

impl ChildProc {
    pub(crate) fn spawn(name: &'static str, mut cmd: Command) -> Result<ChildProc> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| anyhow!("{name}: cannot start: {e}"))?;
        LIVE_CHILDREN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child.id());
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = channel::bounded(64);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(ChildProc {
            name,
            stdin: child.stdin.take(),
            child,
            lines: rx,
        })
    }

    /// Next line that satisfies `want`, skipping others, within `timeout`.
    pub(crate) fn expect(&self, timeout: Duration, want: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if want(&l) => return Ok(l),
                Ok(_) => continue,
                Err(_) => bail!("{}: no expected output within {timeout:?}", self.name),
            }
        }
    }

    pub(crate) fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("{}: stdin closed", self.name))?;
        writeln!(stdin, "{line}")?;
        stdin.flush()?;
        Ok(())
    }

    /// Closes stdin and returns the child's last line matching `want`.
    pub(crate) fn finish(mut self, want: impl Fn(&str) -> bool) -> Option<String> {
        self.stdin = None;
        let last = self.expect(Duration::from_secs(10), want).ok();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return last;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "{}: did not exit; killing pid {}",
            self.name,
            self.child.id()
        );
        last
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let pid = self.child.id();
        LIVE_CHILDREN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| *p != pid);
    }
}

pub(crate) fn python_path() -> Option<PathBuf> {
    let p = std::env::var_os("REFLEXD_PYTHON")
        .map(PathBuf::from)
        .or_else(|| reflexd::infer::runtime::cache_dir().map(|c| c.join("venv/bin/python")))?;
    p.is_file().then_some(p)
}

pub(crate) struct PyNode {
    pub(crate) proc: ChildProc,
    pub(crate) port: u16,
    pub(crate) bare: Summary,
}

impl PyNode {
    pub(crate) fn start(python: &Path, bare_runs: usize) -> Result<PyNode> {
        let port = free_port()?;
        let root = repo_dir();
        let mut cmd = Command::new(python);
        cmd.arg(root.join("benches/py_node.py"))
            .arg("--listen")
            .arg(endpoint(port))
            .arg("--vad")
            .arg(root.join(VAD_MODEL))
            .arg("--ocr")
            .arg(root.join(OCR_MODEL))
            .arg("--bare-runs")
            .arg(bare_runs.to_string());
        let proc = ChildProc::spawn("py_node", cmd)?;
        let line = proc.expect(CHILD_START_TIMEOUT, |l| l.contains("\"ready\""))?;
        let v: serde_json::Value = serde_json::from_str(&line)?;
        let b = &v["bare"];
        let f = |k: &str| b[k].as_f64().unwrap_or(f64::NAN);
        Ok(PyNode {
            proc,
            port,
            bare: Summary {
                n: b["n"].as_u64().unwrap_or(0) as usize,
                lost: 0,
                p50: f("p50_us"),
                p90: f("p90_us"),
                p99: f("p99_us"),
                p999: f("p999_us"),
                max: f("max_us"),
            },
        })
    }
}

/// The OCR load generator: this same binary re-executed with
/// `--ocr-load-child`, so the load comes from another process's zenoh
/// session and its serialisation work does not run on our threads.
pub(crate) struct LoadGen {
    pub(crate) proc: ChildProc,
}

impl LoadGen {
    pub(crate) fn start(
        port: u16,
        in_key: &str,
        replies: &str,
        hz: f64,
        seed: u64,
    ) -> Result<LoadGen> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["--ocr-load-child", "--port", &port.to_string()])
            .args(["--in", in_key, "--replies", replies])
            .args(["--hz", &hz.to_string(), "--seed", &seed.to_string()]);
        let proc = ChildProc::spawn("ocr-load", cmd)?;
        proc.expect(Duration::from_secs(30), |l| l == "READY")?;
        Ok(LoadGen { proc })
    }
    pub(crate) fn set(&mut self, on: bool) -> Result<()> {
        self.proc.send(if on { "on" } else { "off" })
    }
    pub(crate) fn finish(self) -> String {
        self.proc
            .finish(|l| l.starts_with("DONE"))
            .unwrap_or_else(|| "no report".into())
    }
}

pub(crate) fn ocr_request(rng: &mut Rng, k: usize) -> Vec<u8> {
    let [_, c, h, w] = OCR_SHAPE;
    let mut vals = Vec::with_capacity(c * h * w);
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                // Dark strokes on a light page: glyph-sized bars give the
                // detector something to respond to, noise keeps it honest.
                let stroke = (x / 7 + y / 23 + ch + k).is_multiple_of(5) && (y % 23) > 6;
                let base = if stroke { 0.1 } else { 0.9 };
                vals.push(base + 0.1 * (rng.unit() as f32 - 0.5));
            }
        }
    }
    let t = reflexd::tensor::Tensor::new(
        "x",
        Dtype::F32,
        OCR_SHAPE.to_vec(),
        vals.iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    );
    wire::encode_request(
        &[t],
        &RequestMeta {
            id: Some(format!("ocr-{k}")),
            ..Default::default()
        },
    )
}

/// Child mode: publishes OCR requests with exponential gaps while switched
/// on ("on"/"off" lines on stdin), counts replies, stops at stdin EOF.
pub(crate) fn load_child(argv: &[String]) -> Result<()> {
    let get = |flag: &str| -> Result<&str> {
        argv.iter()
            .position(|a| a == flag)
            .and_then(|i| argv.get(i + 1))
            .map(|s| s.as_str())
            .ok_or_else(|| anyhow!("ocr-load: missing {flag}"))
    };
    let port: u16 = get("--port")?.parse()?;
    let hz: f64 = get("--hz")?.parse()?;
    let mut rng = Rng::new(get("--seed")?.parse::<u64>()? ^ 0x0C2);
    let payloads: Vec<ZBytes> = (0..OCR_VARIANTS)
        .map(|k| ZBytes::from(ocr_request(&mut rng, k)))
        .collect();
    let session = ctx(zenoh::open(peer_config(None, Some(port))?).wait(), "open")?;
    let publisher = ctx(
        session.declare_publisher(get("--in")?.to_string()).wait(),
        "declare publisher",
    )?;
    let ok = Arc::new(AtomicU64::new(0));
    let err = Arc::new(AtomicU64::new(0));
    let (ok2, err2) = (ok.clone(), err.clone());
    let _sub = ctx(
        session
            .declare_subscriber(get("--replies")?.to_string())
            .callback(move |s| {
                if s.key_expr().as_str().ends_with("/error") {
                    err2.fetch_add(1, Relaxed);
                } else {
                    ok2.fetch_add(1, Relaxed);
                }
            })
            .wait(),
        "declare subscriber",
    )?;
    let on = Arc::new(AtomicBool::new(false));
    let quit = Arc::new(AtomicBool::new(false));
    let (on2, quit2) = (on.clone(), quit.clone());
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(|l| l.ok()) {
            match line.trim() {
                "on" => on2.store(true, Relaxed),
                "off" => on2.store(false, Relaxed),
                _ => {}
            }
        }
        quit2.store(true, Relaxed);
    });
    println!("READY");
    std::io::stdout().flush()?;
    let start = Instant::now();
    let mut next = Instant::now();
    let mut sent = 0u64;
    while !quit.load(Relaxed) && start.elapsed() < LOAD_CHILD_MAX {
        if !on.load(Relaxed) {
            std::thread::sleep(Duration::from_millis(2));
            next = Instant::now();
            continue;
        }
        next += Duration::from_secs_f64(rng.exp(hz));
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let body = payloads[sent as usize % OCR_VARIANTS].clone();
        if publisher.put(body).wait().is_ok() {
            sent += 1;
        }
    }
    // Replies to the last requests are still in flight.
    std::thread::sleep(Duration::from_millis(500));
    println!(
        "DONE sent={sent} replies_ok={} replies_error={}",
        ok.load(Relaxed),
        err.load(Relaxed)
    );
    std::io::stdout().flush()?;
    let _ = session.close().wait();
    Ok(())
}
