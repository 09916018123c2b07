//! The `[zenoh]` and `[runtime]` tables: how the daemon's zenoh session is
//! opened and which ONNX Runtime library and thread settings its sessions
//! use. Part of loading a config (`Config::from_toml`); nothing here opens
//! anything.

use std::path::Path;

use super::raw::{RawRuntime, RawZenoh};
use super::*;

pub(super) fn zenoh_config(z: &RawZenoh, base: &Path) -> Result<ZenohConfig, ConfigError> {
    if let Some(file) = &z.config_file {
        if z.mode.is_some() || z.listen.is_some() || z.connect.is_some() || z.scouting.is_some() {
            return Err(invalid(
                "zenoh.config_file: when a zenoh JSON5 file is given, zenoh.mode/listen/connect/scouting must be set in that file instead",
            ));
        }
        return Ok(ZenohConfig::File(resolve(base, file)));
    }
    let mode = match z.mode.as_deref().unwrap_or("peer") {
        "peer" => ZenohMode::Peer,
        "client" => ZenohMode::Client,
        "router" => ZenohMode::Router,
        other => {
            return Err(invalid(format!(
                "zenoh.mode = {other:?}: expected one of \"peer\", \"client\", \"router\""
            )));
        }
    };
    let listen = z.listen.clone().unwrap_or_default();
    let connect = z.connect.clone().unwrap_or_default();
    for (key, eps) in [("zenoh.listen", &listen), ("zenoh.connect", &connect)] {
        for ep in eps {
            if !ep.contains('/') {
                return Err(invalid(format!(
                    "{key} entry {ep:?}: expected a zenoh endpoint such as \"tcp/127.0.0.1:7447\""
                )));
            }
        }
    }
    if mode == ZenohMode::Client && connect.is_empty() {
        return Err(invalid(
            "zenoh.connect = []: client mode needs at least one router endpoint",
        ));
    }
    Ok(ZenohConfig::Inline {
        mode,
        listen,
        connect,
        scouting: z.scouting.unwrap_or(false),
    })
}

pub(super) fn runtime_config(r: &RawRuntime, base: &Path) -> Result<RuntimeConfig, ConfigError> {
    Ok(RuntimeConfig {
        onnxruntime: r.onnxruntime.as_deref().map(|p| resolve(base, p)),
        intra_op_threads: positive("runtime.intra_op_threads", r.intra_op_threads, 1)?,
        intra_op_spinning: r.intra_op_spinning.unwrap_or(false),
        idle_spin: match r.idle_spin_us {
            Some(us) if us > 100_000 => {
                return Err(invalid(format!(
                    "runtime.idle_spin_us = {us}: at most 100000 (0.1 s); spinning longer only burns CPU"
                )));
            }
            us => Duration::from_micros(us.unwrap_or(0)),
        },
        mlockall: r.mlockall.unwrap_or(false),
    })
}
