//! Log output for the `reflexd` binary (outside the data flow; every stage
//! logs through `tracing`). On a terminal: coloured, timestamped lines. Under
//! systemd, stderr is a journal stream (`JOURNAL_STREAM` names its device and
//! inode): no colours, no timestamp (journald stamps each line) and each line
//! starts with a `<N>` syslog priority so `journalctl -p warning` works:
//! ERROR → 3 (err), WARN → 4 (warning), INFO → 6 (info), DEBUG/TRACE → 7
//! (debug). Anything else that is not a terminal (a file, a pipe) gets plain
//! text without colours.
//!
//! It also owns what the daemon and the tools say about zenoh: the default
//! filters (zenoh's start-up noise kept out), the one line naming the
//! endpoints a session listens on, and error text without zenoh's source
//! locations.

use std::fmt;
use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Journald priority (syslog level) for a tracing level.
pub fn journal_priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// Prefixes each event with its `<N>` journald priority.
struct JournalPrefix<F>(F);

impl<S, N, F> FormatEvent<S, N> for JournalPrefix<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", journal_priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

/// True when stderr is the journal stream systemd connected
/// (`JOURNAL_STREAM=<dev>:<inode>` matches stderr's own device and inode).
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// Prefix for the final `error: …` line `main` prints: `<3>` (err) on the
/// journal, nothing elsewhere.
pub fn error_prefix() -> &'static str {
    if stderr_is_journal() { "<3>" } else { "" }
}

/// The daemon's (`run`, `check`) filter when `REFLEXD_LOG` is unset. zenoh's
/// peer router warns "Gossip is disabled: cannot de-duplicate data
/// traversing region gateways" at every start with scouting off (reflexd's
/// default, and it uses no region gateways): that target only shows errors.
pub const DAEMON_FILTER: &str = "info,zenoh=warn,zenoh::net::routing::hat::peer=error,ort=warn";

/// The tools' (`prompt`, `top`, `tap`) filter: their stderr carries their
/// own report, so only problems are logged (zenoh's connection retries end
/// in one error the tool prints itself).
pub const TOOL_FILTER: &str = "warn,zenoh=error";

/// What `--help` says about the environment (every subcommand shows it).
pub const ENV_HELP: &str = "Environment:
  REFLEXD_LOG           log filter (tracing EnvFilter syntax), e.g. debug or info,zenoh=debug;
                        default for run/check: info,zenoh=warn,ort=warn; for the tools: warn
  REFLEXD_CONNECT       zenoh endpoint for prompt/top/tap (same as --connect)
  REFLEXD_ZENOH_CONFIG  zenoh JSON5 file for prompt/top/tap (same as --zenoh-config)
  ORT_DYLIB_PATH        ONNX Runtime library when the config names none";

/// Drops the source locations zenoh appends to its errors (` at
/// /root/.cargo/registry/…/orchestrator.rs:388.`): they name files of a
/// dependency on the build machine, noise to whoever reads the message.
pub fn strip_source_locations(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(" at ") {
        let after = &rest[i + 4..];
        let end = after.find(char::is_whitespace).unwrap_or(after.len());
        let token = after[..end].trim_end_matches(['.', ',', ';', ')']);
        let is_location = token.rsplit_once(".rs:").is_some_and(|(path, line)| {
            !path.is_empty()
                && line
                    .split(':')
                    .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        });
        if is_location {
            out.push_str(&rest[..i]);
            // Keep the punctuation after the token, except the sentence
            // stop zenoh adds after the location.
            let tail = &after[token.len()..end];
            out.push_str(tail.trim_start_matches('.'));
            rest = &after[end..];
        } else {
            out.push_str(&rest[..i + 4]);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Endpoints of `key` (`listen/endpoints`, `connect/endpoints`) for this
/// mode: zenoh stores either one list or one list per mode.
fn endpoints_of(config: &zenoh::Config, key: &str, mode: &str) -> Vec<String> {
    let Ok(text) = config.get_json(key) else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let list = match &v {
        serde_json::Value::Object(per_mode) => per_mode.get(mode).cloned().unwrap_or_default(),
        other => other.clone(),
    };
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    // A connect entry may itself be a list of alternatives.
    match list.as_array() {
        Some(items) if items.iter().any(|i| i.is_array()) => {
            items.iter().flat_map(strings).collect()
        }
        _ => strings(&list),
    }
}

/// One line saying where a zenoh session listens and what it dials, from
/// the config it was opened with. Every listen endpoint is bound once
/// `zenoh::open` has returned (zenoh fails the open otherwise); port 0 and
/// unspecified addresses are flagged, their real values being the OS's
/// choice.
pub fn zenoh_endpoints_summary(config: &zenoh::Config) -> String {
    let mode = config
        .get_json("mode")
        .ok()
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty() && m != "null")
        .unwrap_or_else(|| "peer".into());
    let note = |e: &String| {
        let mut s = e.clone();
        if e.ends_with(":0") {
            s += " (port chosen by the OS)";
        }
        if e.contains("0.0.0.0") || e.contains("[::]") {
            s += " (every interface)";
        }
        s
    };
    let listen: Vec<String> = endpoints_of(config, "listen/endpoints", &mode)
        .iter()
        .map(note)
        .collect();
    let connect = endpoints_of(config, "connect/endpoints", &mode);
    let mut line = format!("zenoh {mode}");
    line += &match listen.is_empty() {
        true => ", listening nowhere".to_string(),
        false => format!(", listening on {}", listen.join(", ")),
    };
    if !connect.is_empty() {
        line += &format!(", connecting to {}", connect.join(", "));
    }
    line
}

/// Logs once, at info, where the daemon's zenoh session listens and what it
/// connected to (its zenoh id, the routers and peers it has links with).
/// Call it right after `zenoh::open(config)` with a clone of that config.
pub async fn log_zenoh_session(session: &zenoh::Session, config: &zenoh::Config) {
    let info = session.info();
    let routers: Vec<String> = info.routers_zid().await.map(|z| z.to_string()).collect();
    let peers: Vec<String> = info.peers_zid().await.map(|z| z.to_string()).collect();
    tracing::info!(
        zid = %session.zid(),
        routers = %routers.join(","),
        peers = %peers.join(","),
        "{}",
        zenoh_endpoints_summary(config)
    );
}

/// Installs the global subscriber; `REFLEXD_LOG` overrides `default`.
pub fn init(default: &str) {
    // An empty REFLEXD_LOG (`REFLEXD_LOG= reflexd run`) means the default,
    // not "log nothing".
    let filter = match std::env::var("REFLEXD_LOG") {
        Ok(v) if !v.trim().is_empty() => EnvFilter::try_new(&v).unwrap_or_else(|e| {
            eprintln!("REFLEXD_LOG={v:?} is not a log filter ({e}); using {default:?}");
            EnvFilter::new(default)
        }),
        _ => EnvFilter::new(default),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if stderr_is_journal() {
        let format = tracing_subscriber::fmt::format().without_time();
        builder
            .with_ansi(false)
            .event_format(JournalPrefix(format))
            .init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_locations_of_dependencies_are_stripped() {
        assert_eq!(
            strip_source_locations("Unable to connect. Timeout! at /root/x/orchestrator.rs:388."),
            "Unable to connect. Timeout!"
        );
        assert_eq!(
            strip_source_locations(
                "open failed: bad cert at /a/b/tls.rs:12. (retry at /a/c.rs:9:4)"
            ),
            "open failed: bad cert (retry)"
        );
        assert_eq!(strip_source_locations("plain"), "plain");
        assert_eq!(strip_source_locations("look at me"), "look at me");
        assert_eq!(strip_source_locations("at /x.rs:1"), "at /x.rs:1");
    }

    #[test]
    fn endpoint_summary_names_listeners_and_dialled_endpoints() {
        let cfg = zenoh::Config::from_json5(
            r#"{ mode: "peer", listen: { endpoints: ["tcp/127.0.0.1:7447", "tls/0.0.0.0:0"] },
                 connect: { endpoints: ["tcp/127.0.0.1:7000"] } }"#,
        )
        .unwrap();
        assert_eq!(
            zenoh_endpoints_summary(&cfg),
            "zenoh peer, listening on tcp/127.0.0.1:7447, tls/0.0.0.0:0 (port chosen by the OS) \
             (every interface), connecting to tcp/127.0.0.1:7000"
        );
        let client = zenoh::Config::from_json5(
            r#"{ mode: "client", connect: { endpoints: ["tcp/127.0.0.1:7000"] } }"#,
        )
        .unwrap();
        assert_eq!(
            zenoh_endpoints_summary(&client),
            "zenoh client, listening nowhere, connecting to tcp/127.0.0.1:7000"
        );
    }
}
