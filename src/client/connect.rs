//! How every operator tool (`prompt`, `top`, `tap`, `reflexd-sim`) opens its
//! zenoh session, outside the daemon's data flow. One set of options:
//! `--connect ENDPOINT` (or `REFLEXD_CONNECT`), `--zenoh-config FILE` (or
//! `REFLEXD_ZENOH_CONFIG`: a zenoh JSON5 file, e.g. with TLS certificates)
//! and `--connect-timeout`.
//!
//! Tools open their session in zenoh **client** mode unless the file says
//! otherwise: a zenoh peer does not forward one peer's traffic to another, so
//! a tool connected as a peer to a peer-mode daemon sees only what the daemon
//! itself publishes (not, say, the simulator's `robot/**`), while the daemon
//! routes for its clients (README, "Topologies"). A tool never listens and
//! never scouts unless its file asks for it.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use super::{DEFAULT_CONNECT, parse_secs};
use crate::logging::strip_source_locations;

/// Connection options shared by every tool (clap flattens them in).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ConnectArgs {
    /// Zenoh endpoint of the daemon, or of a zenoh router that reaches it
    /// [default: tcp/127.0.0.1:7447, or the connect endpoints of
    /// --zenoh-config]. Replaces the file's endpoints when both are given.
    #[arg(long, env = "REFLEXD_CONNECT", value_name = "ENDPOINT")]
    pub connect: Option<String>,
    /// A zenoh JSON5 config for this tool's own session: TLS certificates
    /// (see config/zenoh-client-secure.json5), mode, endpoints. Taken as
    /// is; unset mode means client, unset scouting means off.
    #[arg(long, env = "REFLEXD_ZENOH_CONFIG", value_name = "FILE")]
    pub zenoh_config: Option<PathBuf>,
    /// Seconds to wait for the endpoint (and for the daemon's subscribers).
    #[arg(long, default_value = "5", value_parser = parse_secs, value_name = "SECONDS")]
    pub connect_timeout: Duration,
}

#[derive(thiserror::Error, Debug)]
pub enum ConnectError {
    #[error("--zenoh-config {path}: {reason}")]
    ConfigFile { path: String, reason: String },
    #[error("--connect {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error(
        "cannot connect to {endpoints} within {waited:?}: is `reflexd run` listening there? (zenoh: {reason})"
    )]
    Unreachable {
        endpoints: String,
        waited: Duration,
        reason: String,
    },
}

fn clean(e: impl std::fmt::Display) -> String {
    strip_source_locations(&e.to_string())
}

/// True when the file left `key` unset (zenoh reports it as `null`).
fn unset(cfg: &zenoh::Config, key: &str) -> bool {
    cfg.get_json(key).map_or(true, |v| v.trim() == "null")
}

fn insert(cfg: &mut zenoh::Config, key: &str, value: serde_json::Value) -> Result<(), String> {
    cfg.insert_json5(key, &value.to_string())
        .map_err(|e| format!("{key}: {}", clean(e)))
}

impl ConnectArgs {
    /// Options for one endpoint, no file (tests, programs).
    pub fn endpoint(endpoint: &str, connect_timeout: Duration) -> ConnectArgs {
        ConnectArgs {
            connect: Some(endpoint.to_string()),
            zenoh_config: None,
            connect_timeout,
        }
    }

    /// Where the session goes, for messages: `--connect`, else the file's
    /// connect endpoints, else the default.
    pub fn endpoints(&self) -> String {
        if let Some(c) = &self.connect {
            return c.clone();
        }
        if let Some(p) = &self.zenoh_config {
            let listed = zenoh::Config::from_file(p)
                .ok()
                .and_then(|cfg| cfg.get_json("connect/endpoints").ok())
                .and_then(|v| serde_json::from_str::<Vec<String>>(&v).ok())
                .filter(|v| !v.is_empty());
            return match listed {
                Some(v) => v.join(", "),
                None => format!("the endpoints of {}", p.display()),
            };
        }
        DEFAULT_CONNECT.to_string()
    }

    /// The session's zenoh config (see the module comment for the defaults).
    pub fn config(&self) -> Result<zenoh::Config, ConnectError> {
        let file = |reason: String| ConnectError::ConfigFile {
            path: self
                .zenoh_config
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            reason,
        };
        let mut cfg = match &self.zenoh_config {
            Some(p) => zenoh::Config::from_file(p).map_err(|e| file(clean(e)))?,
            None => zenoh::Config::default(),
        };
        if self.zenoh_config.is_none() || self.connect.is_some() {
            let endpoint = self.connect.as_deref().unwrap_or(DEFAULT_CONNECT);
            insert(&mut cfg, "connect/endpoints", json!([endpoint])).map_err(|reason| {
                ConnectError::Endpoint {
                    endpoint: endpoint.to_string(),
                    reason,
                }
            })?;
        }
        self.defaults(&mut cfg).map_err(file)?;
        Ok(cfg)
    }

    /// Fills what the file (or the absence of one) left unset.
    fn defaults(&self, cfg: &mut zenoh::Config) -> Result<(), String> {
        if unset(cfg, "mode") {
            insert(cfg, "mode", json!("client"))?;
        }
        if self.zenoh_config.is_none() {
            // A peer would otherwise listen on every interface.
            insert(cfg, "listen/endpoints", json!([]))?;
        }
        // Never discover (or be found on) a real network by accident.
        for key in ["scouting/multicast/enabled", "scouting/gossip/enabled"] {
            if unset(cfg, key) {
                insert(cfg, key, json!(false))?;
            }
        }
        // `exit_on_failure` turns "nobody listens there" into an error of
        // `zenoh::open` after the timeout (retried meanwhile, so a daemon
        // that is just opening its port is still found).
        if unset(cfg, "connect/timeout_ms") {
            let ms = self.connect_timeout.as_millis() as u64;
            insert(cfg, "connect/timeout_ms", json!(ms))?;
        }
        if unset(cfg, "connect/exit_on_failure") {
            insert(cfg, "connect/exit_on_failure", json!(true))?;
        }
        if unset(cfg, "connect/retry") {
            let retry =
                json!({ "period_init_ms": 100, "period_max_ms": 500, "period_increase_factor": 2 });
            insert(cfg, "connect/retry", retry)?;
        }
        Ok(())
    }

    /// Opens the session; the error names the endpoint and has no source
    /// locations of zenoh in it.
    pub async fn open(&self) -> Result<zenoh::Session, ConnectError> {
        let cfg = self.config()?;
        zenoh::open(cfg)
            .await
            .map_err(|e| ConnectError::Unreachable {
                endpoints: self.endpoints(),
                waited: self.connect_timeout,
                reason: clean(e),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(cfg: &zenoh::Config, key: &str) -> String {
        cfg.get_json(key).unwrap()
    }

    #[test]
    fn without_a_file_the_tool_is_a_silent_client_of_one_endpoint() {
        let a = ConnectArgs::endpoint("tcp/127.0.0.1:7999", Duration::from_secs(2));
        let cfg = a.config().unwrap();
        assert_eq!(get(&cfg, "mode"), "\"client\"");
        assert_eq!(get(&cfg, "connect/endpoints"), "[\"tcp/127.0.0.1:7999\"]");
        assert_eq!(get(&cfg, "listen/endpoints"), "[]");
        assert_eq!(get(&cfg, "scouting/multicast/enabled"), "false");
        assert_eq!(get(&cfg, "scouting/gossip/enabled"), "false");
        assert_eq!(get(&cfg, "connect/timeout_ms"), "2000");
        assert_eq!(a.endpoints(), "tcp/127.0.0.1:7999");
        let d = ConnectArgs::default();
        assert_eq!(d.endpoints(), DEFAULT_CONNECT);
    }

    #[test]
    fn a_file_is_kept_and_connect_replaces_its_endpoints() {
        let dir = std::env::temp_dir().join(format!("reflexd-connect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("tool.json5");
        std::fs::write(
            &f,
            r#"{ mode: "peer", connect: { endpoints: ["tcp/127.0.0.1:7001"] },
                 scouting: { multicast: { enabled: false } } }"#,
        )
        .unwrap();
        let mut a = ConnectArgs {
            zenoh_config: Some(f.clone()),
            ..ConnectArgs::default()
        };
        let cfg = a.config().unwrap();
        assert_eq!(get(&cfg, "mode"), "\"peer\"", "the file's mode wins");
        assert_eq!(get(&cfg, "connect/endpoints"), "[\"tcp/127.0.0.1:7001\"]");
        assert_eq!(get(&cfg, "scouting/gossip/enabled"), "false");
        assert_eq!(a.endpoints(), "tcp/127.0.0.1:7001");
        a.connect = Some("tcp/127.0.0.1:7002".into());
        let cfg = a.config().unwrap();
        assert_eq!(get(&cfg, "connect/endpoints"), "[\"tcp/127.0.0.1:7002\"]");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_files_and_endpoints_are_named_in_the_error() {
        let a = ConnectArgs {
            zenoh_config: Some("/nonexistent/tool.json5".into()),
            ..ConnectArgs::default()
        };
        let e = a.config().unwrap_err().to_string();
        assert!(
            e.starts_with("--zenoh-config /nonexistent/tool.json5: "),
            "{e}"
        );
        assert!(!e.contains(".rs:"), "{e}");
        let a = ConnectArgs::endpoint("not an endpoint", Duration::from_secs(1));
        let e = a.config().unwrap_err().to_string();
        assert!(e.starts_with("--connect \"not an endpoint\": "), "{e}");
    }
}
