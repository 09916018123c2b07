//! Finding and loading the ONNX Runtime shared library, once per process,
//! before any session exists. The daemon is built with `load-dynamic`, so the
//! same binary runs against the PyPI CPU wheel here and JetPack's TensorRT
//! build on a Jetson. Order: `runtime.onnxruntime` from the config, then
//! `ORT_DYLIB_PATH`, then the copy `scripts/provision.sh` installs in the
//! user cache, then system paths. An explicit path (config or environment) is
//! the only one tried.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::environment::Environment;

/// Provisioning version key; must match `scripts/provision.sh`.
pub const CACHE_VERSION: &str = "v1";

const SYSTEM_PATHS: [&str; 8] = [
    "/usr/local/lib/libonnxruntime.so",
    "/usr/local/lib/libonnxruntime.so.1",
    "/usr/lib/libonnxruntime.so",
    "/usr/lib/libonnxruntime.so.1",
    "/usr/lib/x86_64-linux-gnu/libonnxruntime.so",
    "/usr/lib/aarch64-linux-gnu/libonnxruntime.so",
    "/usr/lib/aarch64-linux-gnu/libonnxruntime.so.1",
    "/opt/onnxruntime/lib/libonnxruntime.so",
];

#[derive(thiserror::Error, Debug)]
pub enum OrtLoadError {
    #[error(
        "ONNX Runtime library not found; tried: {tried}. Run `scripts/provision.sh` or set runtime.onnxruntime / ORT_DYLIB_PATH"
    )]
    NotFound { tried: String },
    #[error("cannot load ONNX Runtime from {path} ({source_of_path}): {reason}")]
    Load {
        path: PathBuf,
        source_of_path: &'static str,
        reason: String,
    },
    #[error("cannot create the ONNX Runtime environment: {0}")]
    Environment(String),
}

/// The user cache directory the provisioning script fills.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("REFLEXD_CACHE") {
        return Some(PathBuf::from(p).join(CACHE_VERSION));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("reflexd").join(CACHE_VERSION))
}

/// Candidate library paths in search order, each with where it came from.
pub fn candidates(configured: Option<&Path>) -> Vec<(PathBuf, &'static str)> {
    if let Some(p) = configured {
        return vec![(p.to_path_buf(), "runtime.onnxruntime")];
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return vec![(PathBuf::from(p), "ORT_DYLIB_PATH")];
    }
    let mut out = Vec::new();
    if let Some(c) = cache_dir() {
        out.push((c.join("lib/libonnxruntime.so"), "provisioned cache"));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        out.push((
            dir.join("../lib/reflexd/libonnxruntime.so"),
            "next to the binary",
        ));
    }
    out.extend(
        SYSTEM_PATHS
            .iter()
            .map(|p| (PathBuf::from(p), "system path")),
    );
    out
}

struct Loaded {
    path: PathBuf,
    env: Environment,
}

static LOADED: Mutex<Option<Loaded>> = Mutex::new(None);

/// Loads ONNX Runtime (first call only) and returns the process-wide
/// environment and the library path in use. ORT allows one environment per
/// process, so later calls reuse it; a different path on a later call is
/// logged, not honoured.
pub fn environment(configured: Option<&Path>) -> Result<(Environment, PathBuf), OrtLoadError> {
    let mut guard = LOADED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(l) = guard.as_ref() {
        if let Some(p) = configured
            && p != l.path
        {
            tracing::warn!(
                requested = %p.display(),
                in_use = %l.path.display(),
                "ONNX Runtime is already loaded in this process; keeping the loaded library"
            );
        }
        return Ok((l.env.clone(), l.path.clone()));
    }
    let cands = candidates(configured);
    let explicit = configured.is_some() || cands.len() == 1;
    let mut tried = Vec::new();
    for (path, source_of_path) in cands {
        if !path.exists() {
            tried.push(format!("{} ({source_of_path}: missing)", path.display()));
            if explicit {
                return Err(OrtLoadError::Load {
                    path,
                    source_of_path,
                    reason: "file does not exist".into(),
                });
            }
            continue;
        }
        // ort's loader asserts on a library without a usable API base; keep a
        // panic from escaping as a crash of the daemon.
        let builder = std::panic::catch_unwind(|| ort::init_from(&path))
            .map_err(|_| "the library panicked while loading".to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
            .map_err(|reason| OrtLoadError::Load {
                path: path.clone(),
                source_of_path,
                reason,
            })?;
        let env = builder
            .with_name("reflexd")
            .with_telemetry(false)
            .build()
            .map_err(|e| OrtLoadError::Environment(e.to_string()))?;
        tracing::info!(path = %path.display(), source = source_of_path, "loaded ONNX Runtime");
        *guard = Some(Loaded {
            path: path.clone(),
            env: env.clone(),
        });
        return Ok((env, path));
    }
    Err(OrtLoadError::NotFound {
        tried: tried.join(", "),
    })
}
