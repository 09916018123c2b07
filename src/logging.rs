//! Log output for the `reflexd` binary (outside the data flow; every stage
//! logs through `tracing`). On a terminal: coloured, timestamped lines. Under
//! systemd, stderr is a journal stream (`JOURNAL_STREAM` names its device and
//! inode): no colours, no timestamp (journald stamps each line) and each line
//! starts with a `<N>` syslog priority so `journalctl -p warning` works:
//! ERROR → 3 (err), WARN → 4 (warning), INFO → 6 (info), DEBUG/TRACE → 7
//! (debug). Anything else that is not a terminal (a file, a pipe) gets plain
//! text without colours.

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

/// Installs the global subscriber; `REFLEXD_LOG` overrides `default`.
pub fn init(default: &str) {
    let filter = EnvFilter::try_from_env("REFLEXD_LOG").unwrap_or_else(|_| EnvFilter::new(default));
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
