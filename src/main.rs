//! The `reflexd` binary: parse the command line, set up logging, load the
//! config and hand over to the library (`run`, `check`), or run the prompt
//! client ([`reflexd::client`]) against a running daemon. Every error ends
//! here, printed once with its causes, with a non-zero exit code.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "reflexd",
    version,
    about = "Real-time inference daemon: zenoh in, ONNX Runtime, zenoh out",
    after_help = reflexd::logging::ENV_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon until SIGINT or SIGTERM.
    #[command(after_help = reflexd::logging::ENV_HELP)]
    Run {
        /// The config file (TOML; config/demo.toml is a commented example).
        #[arg(short, long, default_value = "/etc/reflexd/reflexd.toml")]
        config: PathBuf,
    },
    /// Validate the config, load and warm up every model, print each pipeline.
    #[command(after_help = reflexd::logging::ENV_HELP)]
    Check {
        /// The config file (TOML; config/demo.toml is a commented example).
        #[arg(short, long, default_value = "/etc/reflexd/reflexd.toml")]
        config: PathBuf,
    },
    /// Ask a running daemon's generation pipeline; stream the answer to
    /// stdout and print TTFT/TPOT on stderr. Exit status: 0 answered (stop or
    /// length), 1 error, deadline or timeout, 130 cancelled with Ctrl-C.
    #[command(after_help = reflexd::logging::ENV_HELP)]
    Prompt(Box<reflexd::client::PromptArgs>),
    /// Live view of a running daemon's metrics over zenoh (pipelines, rates,
    /// p50/p99, misses, drops, TTFT/TPOT, workers); `--once` prints one screen.
    /// Columns: docs/ops.md.
    #[command(after_help = reflexd::logging::ENV_HELP)]
    Top(reflexd::ops::top::TopArgs),
    /// Print decoded messages on a key expression: tensor summaries, token
    /// streams, errors, metrics.
    #[command(after_help = reflexd::logging::ENV_HELP)]
    Tap(reflexd::ops::tap::TapArgs),
    /// List a running daemon's pipelines: zenoh keys and ROS 2 topics with
    /// their types (like `ros2 topic list -t`), tensors, level, deadline.
    Describe(reflexd::ops::describe::DescribeArgs),
}

/// Resolves on the first Ctrl-C.
async fn ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

/// SIGINT/SIGTERM as a future. The handlers are installed here, when it is
/// created (before the daemon starts), not when it is first polled: a
/// SIGTERM during model loading or right after "ready" must drain, never
/// kill the process with the default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    async move {
        tokio::select! {
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        }
    }
}

/// Runs the prompt client; Ctrl-C presses become messages it can react to
/// (the first cancels the generation, the second stops waiting).
async fn prompt(args: reflexd::client::PromptArgs) -> ExitCode {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            if tx.send(()).await.is_err() {
                break;
            }
        }
    });
    let r =
        reflexd::client::prompt(&args, &mut std::io::stdout(), &mut std::io::stderr(), rx).await;
    match r {
        Ok(summary) => ExitCode::from(summary.exit_code()),
        Err(e) => {
            eprintln!(
                "error: {}",
                reflexd::logging::strip_source_locations(&e.to_string())
            );
            ExitCode::from(e.exit_code())
        }
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config } => {
            let cfg = reflexd::Config::load(&config)?;
            tokio::spawn(reflexd::supervise::check_on_hup(config.clone()));
            reflexd::run(cfg, shutdown_signal())
                .await
                .with_context(|| format!("reflexd run -c {}", config.display()))?;
        }
        Command::Check { config } => {
            let cfg = reflexd::Config::load(&config)?;
            let report = reflexd::check::check(&cfg)
                .with_context(|| format!("reflexd check -c {}", config.display()))?;
            print!("{report}");
            println!(
                "\nOK: {} pipeline(s) loaded and warmed up",
                cfg.pipelines.len() + cfg.generators.len()
            );
        }
        Command::Prompt(args) => return Ok(prompt(*args).await),
        Command::Top(args) => {
            let tty = std::io::stdout().is_terminal();
            reflexd::ops::top::run(&args, &mut std::io::stdout(), tty, ctrl_c())
                .await
                .map_err(anyhow::Error::msg)?;
        }
        Command::Tap(args) => {
            reflexd::ops::tap::run(&args, &mut std::io::stdout(), ctrl_c())
                .await
                .map_err(anyhow::Error::msg)?;
        }
        Command::Describe(args) => {
            reflexd::ops::describe::run(&args, &mut std::io::stdout())
                .await
                .map_err(anyhow::Error::msg)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    reflexd::logging::init(match &cli.command {
        Command::Prompt(_) | Command::Top(_) | Command::Tap(_) | Command::Describe(_) => {
            reflexd::logging::TOOL_FILTER
        }
        _ => reflexd::logging::DAEMON_FILTER,
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(real_main(cli)) {
        Ok(code) => code,
        Err(e) => {
            // Errors of zenoh (opening the daemon's session, the tools')
            // carry source paths of the build machine: not for the reader.
            let msg = reflexd::logging::strip_source_locations(&format!("{e:#}"));
            eprintln!("{}error: {msg}", reflexd::logging::error_prefix());
            ExitCode::FAILURE
        }
    }
}
