//! Stage two of a pipeline's `[[pipeline.provider]]` list: the execution
//! providers ONNX Runtime is asked for, in order, with their options
//! validated here so that a combination ONNX Runtime would silently ignore
//! (DLA without fp16/int8, a calibration table without int8) or read from
//! the wrong place is refused at `reflexd check`, on the development
//! machine, rather than discovered on the board. `crate::infer::ep` turns
//! each [`Provider`] into the option list handed to ORT.

use std::path::{Path, PathBuf};

use super::common::At;
use super::raw::{RawCuda, RawProvider, RawTensorRt};
use super::{ConfigError, resolve};

/// Largest device-memory size accepted (workspace, CUDA arena): 1 TiB.
const MAX_MB: u64 = 1 << 20;
/// DLA cores of the Jetson boards that have them (AGX Orin, Orin NX,
/// Xavier: 0 and 1; Orin Nano has none).
const DLA_CORES: i64 = 2;

#[derive(Clone, Debug, PartialEq)]
pub enum Provider {
    TensorRt(TensorRtOptions),
    Cuda(CudaOptions),
    Cpu,
}

impl Provider {
    pub fn name(&self) -> &'static str {
        match self {
            Provider::TensorRt(_) => "tensorrt",
            Provider::Cuda(_) => "cuda",
            Provider::Cpu => "cpu",
        }
    }
}

/// The TensorRT execution provider's settings.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct TensorRtOptions {
    pub device_id: i32,
    pub fp16: bool,
    /// INT8 precision; `None` = off.
    pub int8: Option<Int8>,
    /// Deep Learning Accelerator core; layers it cannot run fall back to
    /// the GPU (ORT sets TensorRT's GPU-fallback flag with DLA).
    pub dla_core: Option<u32>,
    /// TensorRT's builder workspace; `None` = ORT's default.
    pub max_workspace_bytes: Option<u64>,
    /// Where built engines are stored and reloaded from.
    pub engine_cache: Option<PathBuf>,
    /// Where TensorRT's layer timing cache is kept (speeds up rebuilds).
    pub timing_cache: Option<PathBuf>,
    /// Give ORT explicit optimisation profiles derived from the warm-up
    /// shapes (`crate::infer::profile`), so the engine is built once at
    /// start-up for every shape the pipeline will feed.
    pub warmup_profile: bool,
}

/// INT8 settings of the TensorRT provider.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Int8 {
    /// Calibration table file name inside `engine_cache` (ORT looks for it
    /// there); `None` for a model with Q/DQ nodes, which needs none.
    pub calibration_table: Option<String>,
    /// The table was written by TensorRT itself rather than ORT's tool.
    pub native_table: bool,
}

/// The CUDA execution provider's settings.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct CudaOptions {
    pub device_id: i32,
    /// Cap of the CUDA memory arena; `None` = no cap.
    pub memory_limit_bytes: Option<u64>,
    /// How the arena grows; `None` = ORT's default (next power of two).
    pub arena: Option<ArenaStrategy>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArenaStrategy {
    /// Grow by doubling (fewer allocations, more memory held).
    NextPowerOfTwo,
    /// Grow by exactly what is asked (tight memory on a shared board).
    SameAsRequested,
}

impl ArenaStrategy {
    pub const NAMES: [&str; 2] = ["next_power_of_two", "same_as_requested"];

    pub fn name(self) -> &'static str {
        match self {
            ArenaStrategy::NextPowerOfTwo => Self::NAMES[0],
            ArenaStrategy::SameAsRequested => Self::NAMES[1],
        }
    }
}

/// The validated provider chain; CPU alone when none is configured.
pub(super) fn providers(
    at: &At,
    raw: &[RawProvider],
    base: &Path,
) -> Result<Vec<Provider>, ConfigError> {
    let mut providers: Vec<Provider> = Vec::new();
    for (j, rp) in raw.iter().enumerate() {
        let key = |k: &str| format!("provider[{j}].{k}");
        let prov = match rp {
            RawProvider::Tensorrt(t) => Provider::TensorRt(tensorrt(at, &key, t, base)?),
            RawProvider::Cuda(c) => Provider::Cuda(cuda(at, &key, c)?),
            RawProvider::Cpu(_) => Provider::Cpu,
        };
        if providers.iter().any(|q| q.name() == prov.name()) {
            return Err(at.err(&key("kind"), format!("= {:?}: listed twice", prov.name())));
        }
        providers.push(prov);
    }
    if providers.is_empty() {
        providers.push(Provider::Cpu);
    }
    Ok(providers)
}

type Key<'a> = &'a dyn Fn(&str) -> String;

fn device(at: &At, key: Key, id: Option<i32>) -> Result<i32, ConfigError> {
    match id.unwrap_or(0) {
        id if id < 0 => Err(at.err(&key("device_id"), format!("= {id}: must be >= 0"))),
        id => Ok(id),
    }
}

/// Megabytes → bytes, 1 MiB to [`MAX_MB`].
fn megabytes(at: &At, key: Key, k: &str, mb: Option<u64>) -> Result<Option<u64>, ConfigError> {
    match mb {
        None => Ok(None),
        Some(n) if n == 0 || n > MAX_MB => Err(at.err(
            &key(k),
            format!("= {n}: expected a size in MiB from 1 to {MAX_MB}"),
        )),
        Some(n) => Ok(Some(n << 20)),
    }
}

fn tensorrt(
    at: &At,
    key: Key,
    t: &RawTensorRt,
    base: &Path,
) -> Result<TensorRtOptions, ConfigError> {
    let fp16 = t.fp16.unwrap_or(false);
    let engine_cache = t.engine_cache.as_deref().map(|e| resolve(base, e));
    let int8 = int8(at, key, t, engine_cache.is_some())?;
    let dla_core = match t.dla_core {
        None => None,
        Some(c) if !(0..DLA_CORES).contains(&c) => {
            return Err(at.err(
                &key("dla_core"),
                format!("= {c}: expected 0 or 1 (Jetson AGX Orin, Orin NX and Xavier have two DLA cores; Orin Nano has none)"),
            ));
        }
        Some(_) if !(fp16 || int8.is_some()) => {
            return Err(at.err(
                &key("dla_core"),
                "needs fp16 = true or int8 = true: the DLA runs only FP16 and INT8 layers (ONNX Runtime would silently not use it)",
            ));
        }
        Some(c) => Some(c as u32),
    };
    Ok(TensorRtOptions {
        device_id: device(at, key, t.device_id)?,
        fp16,
        int8,
        dla_core,
        max_workspace_bytes: megabytes(at, key, "max_workspace_mb", t.max_workspace_mb)?,
        // The timing cache is cheap and speeds every rebuild: kept beside
        // the engines unless placed elsewhere.
        timing_cache: t
            .timing_cache
            .as_deref()
            .map(|p| resolve(base, p))
            .or_else(|| engine_cache.clone()),
        engine_cache,
        warmup_profile: t.warmup_profile.unwrap_or(true),
    })
}

fn int8(at: &At, key: Key, t: &RawTensorRt, has_cache: bool) -> Result<Option<Int8>, ConfigError> {
    let on = t.int8.unwrap_or(false);
    let table = t.int8_calibration_table.as_deref();
    let native = t.int8_use_native_calibration_table;
    if !on {
        if let Some(k) = [
            ("int8_calibration_table", table.is_some()),
            ("int8_use_native_calibration_table", native.is_some()),
        ]
        .iter()
        .find_map(|(k, set)| set.then_some(*k))
        {
            return Err(at.err(&key(k), "applies only with int8 = true"));
        }
        return Ok(None);
    }
    if let Some(name) = table {
        // ORT reads the table as <engine cache path>/<name>.
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(at.err(
                &key("int8_calibration_table"),
                format!("= {name:?}: give the file name of the table inside engine_cache (ONNX Runtime reads it from there), not a path"),
            ));
        }
        if !has_cache {
            return Err(at.err(
                &key("int8_calibration_table"),
                "needs engine_cache: ONNX Runtime reads the calibration table from the engine cache directory",
            ));
        }
    } else if native.is_some() {
        return Err(at.err(
            &key("int8_use_native_calibration_table"),
            "applies only with int8_calibration_table",
        ));
    }
    Ok(Some(Int8 {
        calibration_table: table.map(str::to_string),
        native_table: native.unwrap_or(false),
    }))
}

fn cuda(at: &At, key: Key, c: &RawCuda) -> Result<CudaOptions, ConfigError> {
    let arena = match c.arena_extend_strategy.as_deref() {
        None => None,
        Some("next_power_of_two") => Some(ArenaStrategy::NextPowerOfTwo),
        Some("same_as_requested") => Some(ArenaStrategy::SameAsRequested),
        Some(other) => {
            return Err(at.err(
                &key("arena_extend_strategy"),
                format!(
                    "= {other:?}: expected one of {}",
                    ArenaStrategy::NAMES.map(|n| format!("{n:?}")).join(", ")
                ),
            ));
        }
    };
    Ok(CudaOptions {
        device_id: device(at, key, c.device_id)?,
        memory_limit_bytes: megabytes(at, key, "memory_limit_mb", c.memory_limit_mb)?,
        arena,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trt(t: RawTensorRt) -> Result<TensorRtOptions, String> {
        let key = |k: &str| format!("provider[0].{k}");
        tensorrt(&At("cam"), &key, &t, Path::new("/etc/reflexd")).map_err(|e| e.to_string())
    }

    #[test]
    fn tensorrt_defaults_and_paths() {
        let o = trt(RawTensorRt {
            engine_cache: Some("trt".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(o.engine_cache, Some(PathBuf::from("/etc/reflexd/trt")));
        assert_eq!(
            o.timing_cache, o.engine_cache,
            "timing cache beside engines"
        );
        assert!(o.warmup_profile && !o.fp16 && o.int8.is_none() && o.dla_core.is_none());
        let o = trt(RawTensorRt {
            max_workspace_mb: Some(2048),
            timing_cache: Some("/var/cache/t".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(o.max_workspace_bytes, Some(2048 << 20));
        assert_eq!(o.timing_cache, Some(PathBuf::from("/var/cache/t")));
        assert_eq!(o.engine_cache, None);
    }

    #[test]
    fn tensorrt_combinations_ort_would_ignore_are_refused() {
        let cases: Vec<(RawTensorRt, &str)> = vec![
            (
                RawTensorRt {
                    dla_core: Some(0),
                    ..Default::default()
                },
                "needs fp16 = true or int8 = true",
            ),
            (
                RawTensorRt {
                    dla_core: Some(2),
                    fp16: Some(true),
                    ..Default::default()
                },
                "dla_core = 2",
            ),
            (
                RawTensorRt {
                    int8_calibration_table: Some("c.cache".into()),
                    ..Default::default()
                },
                "applies only with int8 = true",
            ),
            (
                RawTensorRt {
                    int8: Some(true),
                    int8_calibration_table: Some("c.cache".into()),
                    ..Default::default()
                },
                "needs engine_cache",
            ),
            (
                RawTensorRt {
                    int8: Some(true),
                    engine_cache: Some("/c".into()),
                    int8_calibration_table: Some("/c/t".into()),
                    ..Default::default()
                },
                "not a path",
            ),
            (
                RawTensorRt {
                    int8: Some(true),
                    int8_use_native_calibration_table: Some(true),
                    ..Default::default()
                },
                "applies only with int8_calibration_table",
            ),
            (
                RawTensorRt {
                    max_workspace_mb: Some(0),
                    ..Default::default()
                },
                "max_workspace_mb = 0",
            ),
            (
                RawTensorRt {
                    device_id: Some(-1),
                    ..Default::default()
                },
                "device_id = -1",
            ),
        ];
        for (raw, want) in cases {
            let e = trt(raw).unwrap_err();
            assert!(
                e.contains("pipeline \"cam\": provider[0].") && e.contains(want),
                "{e}"
            );
        }
        let ok = trt(RawTensorRt {
            int8: Some(true),
            dla_core: Some(1),
            engine_cache: Some("/c".into()),
            int8_calibration_table: Some("calib.flatbuffers".into()),
            int8_use_native_calibration_table: Some(true),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(ok.dla_core, Some(1));
        let i = ok.int8.unwrap();
        assert_eq!(i.calibration_table.as_deref(), Some("calib.flatbuffers"));
        assert!(i.native_table);
    }

    #[test]
    fn cuda_options_are_checked() {
        let key = |k: &str| format!("provider[1].{k}");
        let c = |raw: RawCuda| cuda(&At("cam"), &key, &raw).map_err(|e| e.to_string());
        let o = c(RawCuda {
            device_id: Some(1),
            memory_limit_mb: Some(4096),
            arena_extend_strategy: Some("same_as_requested".into()),
        })
        .unwrap();
        assert_eq!(o.memory_limit_bytes, Some(4096 << 20));
        assert_eq!(o.arena, Some(ArenaStrategy::SameAsRequested));
        let e = c(RawCuda {
            arena_extend_strategy: Some("grow".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(
            e.contains("arena_extend_strategy = \"grow\"") && e.contains("same_as_requested"),
            "{e}"
        );
        let e = c(RawCuda {
            memory_limit_mb: Some(0),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.contains("provider[1].memory_limit_mb = 0"), "{e}");
    }
}
