//! Execution-provider options as ONNX Runtime receives them. Each validated
//! [`Provider`] becomes one list of `(ORT option name, value)` pairs —
//! the exact strings ORT's `Update*ProviderOptions` gets — and that list is
//! what the session builder is handed ([`dispatch`]), what `reflexd check`
//! prints, and what the unit tests pin down (no GPU is needed to know what
//! the GPU would be asked for). Only options that differ from ORT's defaults
//! are sent, plus the device id. Sits under [`super::engine`], which builds
//! sessions with these.

use ort::ep::{self, ArbitrarilyConfigurableExecutionProvider, ExecutionProviderDispatch};

use super::profile::Profile;
use crate::config::{ArenaStrategy, CudaOptions, Provider, TensorRtOptions};

/// One provider's options, in the order they are set.
pub type Options = Vec<(&'static str, String)>;

/// A boolean as ort's typed setters write it (ORT's option parser takes
/// `true`/`false` and `1`/`0` alike).
fn flag(on: bool) -> String {
    on.to_string()
}

/// The options ORT receives for `p`; `profile` applies to TensorRT only.
pub fn options(p: &Provider, profile: Option<&Profile>) -> Options {
    match p {
        Provider::TensorRt(t) => tensorrt(t, profile),
        Provider::Cuda(c) => cuda(c),
        Provider::Cpu => Vec::new(),
    }
}

fn tensorrt(t: &TensorRtOptions, profile: Option<&Profile>) -> Options {
    let mut o: Options = vec![("device_id", t.device_id.to_string())];
    if t.fp16 {
        o.push(("trt_fp16_enable", flag(true)));
    }
    if let Some(i8) = &t.int8 {
        o.push(("trt_int8_enable", flag(true)));
        if let Some(table) = &i8.calibration_table {
            o.push(("trt_int8_calibration_table_name", table.clone()));
            o.push((
                "trt_int8_use_native_calibration_table",
                flag(i8.native_table),
            ));
        }
    }
    if let Some(core) = t.dla_core {
        o.push(("trt_dla_enable", flag(true)));
        o.push(("trt_dla_core", core.to_string()));
    }
    if let Some(bytes) = t.max_workspace_bytes {
        o.push(("trt_max_workspace_size", bytes.to_string()));
    }
    if let Some(dir) = &t.engine_cache {
        o.push(("trt_engine_cache_enable", flag(true)));
        o.push(("trt_engine_cache_path", dir.display().to_string()));
    }
    if let Some(dir) = &t.timing_cache {
        o.push(("trt_timing_cache_enable", flag(true)));
        o.push(("trt_timing_cache_path", dir.display().to_string()));
    }
    if let Some(p) = profile {
        o.push(("trt_profile_min_shapes", p.ort_min()));
        o.push(("trt_profile_opt_shapes", p.ort_opt()));
        o.push(("trt_profile_max_shapes", p.ort_max()));
    }
    o
}

fn cuda(c: &CudaOptions) -> Options {
    let mut o: Options = vec![("device_id", c.device_id.to_string())];
    if let Some(bytes) = c.memory_limit_bytes {
        o.push(("gpu_mem_limit", bytes.to_string()));
    }
    if let Some(a) = c.arena {
        let v = match a {
            ArenaStrategy::NextPowerOfTwo => "kNextPowerOfTwo",
            ArenaStrategy::SameAsRequested => "kSameAsRequested",
        };
        o.push(("arena_extend_strategy", v.to_string()));
    }
    o
}

fn with_options<E: ArbitrarilyConfigurableExecutionProvider>(mut e: E, o: &Options) -> E {
    for (k, v) in o {
        e = e.with_arbitrary_config(k, v);
    }
    e
}

/// The provider registration for a session builder; registering fails
/// (rather than silently continuing) when ORT cannot use it, so the
/// engine's fallback rule decides what happens next.
pub fn dispatch(p: &Provider, profile: Option<&Profile>) -> ExecutionProviderDispatch {
    let o = options(p, profile);
    match p {
        Provider::TensorRt(_) => with_options(ep::TensorRT::default(), &o).build(),
        Provider::Cuda(_) => with_options(ep::CUDA::default(), &o).build(),
        Provider::Cpu => ep::CPU::default().build(),
    }
    .error_on_failure()
}

/// One line per option for `reflexd check`: `name=value …`.
pub fn describe(o: &Options) -> String {
    o.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::Int8;

    fn full_trt() -> TensorRtOptions {
        TensorRtOptions {
            device_id: 1,
            fp16: true,
            int8: Some(Int8 {
                calibration_table: Some("calib.cache".into()),
                native_table: true,
            }),
            dla_core: Some(1),
            max_workspace_bytes: Some(2 << 30),
            engine_cache: Some(PathBuf::from("/var/cache/reflexd/trt")),
            timing_cache: Some(PathBuf::from("/var/cache/reflexd/timing")),
            warmup_profile: true,
        }
    }

    fn profile() -> Profile {
        Profile {
            min: vec![("x".into(), vec![1, 3, 160, 320])],
            opt: vec![("x".into(), vec![4, 3, 160, 640])],
            max: vec![("x".into(), vec![4, 3, 320, 640])],
        }
    }

    /// What our list hands ORT is exactly what ort's typed setters would
    /// hand it: same option names, same value encoding, same order.
    #[test]
    fn tensorrt_options_match_the_typed_builder() {
        let ours = with_options(
            ep::TensorRT::default(),
            &options(&Provider::TensorRt(full_trt()), Some(&profile())),
        );
        let typed = ep::TensorRT::default()
            .with_device_id(1)
            .with_fp16(true)
            .with_int8(true)
            .with_int8_calibration_table_name("calib.cache")
            .with_int8_use_native_calibration_table(true)
            .with_dla(true)
            .with_dla_core(1)
            .with_max_workspace_size(2 << 30)
            .with_engine_cache(true)
            .with_engine_cache_path("/var/cache/reflexd/trt")
            .with_timing_cache(true)
            .with_timing_cache_path("/var/cache/reflexd/timing")
            .with_profile_min_shapes("x:1x3x160x320")
            .with_profile_opt_shapes("x:4x3x160x640")
            .with_profile_max_shapes("x:4x3x320x640");
        assert_eq!(format!("{ours:?}"), format!("{typed:?}"));
    }

    #[test]
    fn tensorrt_defaults_send_only_the_device() {
        let o = options(
            &Provider::TensorRt(TensorRtOptions {
                warmup_profile: true,
                ..Default::default()
            }),
            None,
        );
        assert_eq!(o, vec![("device_id", "0".to_string())]);
        let o = options(
            &Provider::TensorRt(TensorRtOptions {
                int8: Some(Int8::default()),
                ..Default::default()
            }),
            None,
        );
        // INT8 of a Q/DQ model: no table, so no table options.
        assert_eq!(describe(&o), "device_id=0 trt_int8_enable=true");
    }

    #[test]
    fn cuda_options_match_the_typed_builder() {
        let c = CudaOptions {
            device_id: 0,
            memory_limit_bytes: Some(4 << 30),
            arena: Some(ArenaStrategy::SameAsRequested),
        };
        let o = options(&Provider::Cuda(c), Some(&profile()));
        assert_eq!(
            describe(&o),
            "device_id=0 gpu_mem_limit=4294967296 arena_extend_strategy=kSameAsRequested",
            "a TensorRT profile never reaches CUDA"
        );
        let typed = ep::CUDA::default()
            .with_device_id(0)
            .with_memory_limit(4 << 30)
            .with_arena_extend_strategy(ep::ArenaExtendStrategy::SameAsRequested);
        let ours = with_options(ep::CUDA::default(), &o);
        assert_eq!(format!("{ours:?}"), format!("{typed:?}"));
        assert!(options(&Provider::Cpu, None).is_empty());
    }
}
