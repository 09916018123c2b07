//! The zenoh session's configuration: inline loopback-friendly settings or a
//! zenoh config file, with the receive bound derived from the payload limit.

use crate::config::{Limits, ZenohConfig, ZenohMode};

/// Builds the zenoh configuration; scouting off unless asked for.
pub fn zenoh_config(z: &ZenohConfig) -> Result<zenoh::Config, String> {
    match z {
        ZenohConfig::File(path) => {
            zenoh::Config::from_file(path).map_err(|e| format!("{}: {e}", path.display()))
        }
        ZenohConfig::Inline {
            mode,
            listen,
            connect,
            scouting,
        } => {
            let mode = match mode {
                ZenohMode::Peer => "peer",
                ZenohMode::Client => "client",
                ZenohMode::Router => "router",
            };
            let json = serde_json::json!({
                "mode": mode,
                "listen": { "endpoints": listen },
                "connect": { "endpoints": connect },
                "scouting": {
                    "multicast": { "enabled": scouting },
                    "gossip": { "enabled": scouting },
                },
                // Opt-in through a config file (docs/deploy.md): a shared
                // buffer stays the publisher's until the daemon has run the
                // request, so a deep queue of large requests exhausted a
                // client's pool and stalled it.
                "transport": { "shared_memory": { "enabled": false } },
            });
            zenoh::Config::from_json5(&json.to_string()).map_err(|e| e.to_string())
        }
    }
}

/// Headroom above `limits.max_payload_bytes` for the zenoh receive bound: a
/// message's key, attachment and framing, so a payload just over the limit
/// still reaches ingress and is answered `payload_too_large`.
pub const RX_MESSAGE_SLACK: usize = 64 << 10;

/// Bounds zenoh's own reassembly of fragmented messages
/// (`transport/link/rx/max_message_size`, 1 GiB by default) to the payload
/// limit plus [`RX_MESSAGE_SLACK`], so a hostile publisher cannot make the
/// transport buffer a huge message before ingress sees its size. Larger
/// messages are dropped by zenoh (the link stays up). A zenoh config file
/// may set a lower bound, never a higher one.
pub fn bound_rx(mut zc: zenoh::Config, limits: &Limits) -> Result<zenoh::Config, String> {
    const KEY: &str = "transport/link/rx/max_message_size";
    let want = limits.max_payload_bytes.saturating_add(RX_MESSAGE_SLACK);
    let current = zc
        .get_json(KEY)
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(usize::MAX);
    if want < current {
        zc.insert_json5(KEY, &want.to_string())
            .map_err(|e| format!("{KEY}: {e}"))?;
    }
    Ok(zc)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shared memory is opt-in (a config file): an inline config leaves it
    /// off, so a client's deep queue of large requests cannot exhaust its
    /// pool through the daemon (docs/deploy.md).
    #[test]
    fn inline_config_has_shared_memory_off() {
        let z = ZenohConfig::Inline {
            mode: ZenohMode::Peer,
            listen: vec!["tcp/127.0.0.1:0".into()],
            connect: vec![],
            scouting: false,
        };
        let zc = zenoh_config(&z).expect("config");
        let on = zc.get_json("transport/shared_memory/enabled").expect("key");
        assert_eq!(on, "false");
    }
}
