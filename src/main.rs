//! The `reflexd` binary: parse the command line, set up logging, load the
//! config and hand over to the library. Every error ends here, printed once
//! with its causes, with a non-zero exit code.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "reflexd",
    version,
    about = "Real-time inference daemon: zenoh in, ONNX Runtime, zenoh out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon until SIGINT or SIGTERM.
    Run {
        #[arg(short, long, default_value = "/etc/reflexd/reflexd.toml")]
        config: PathBuf,
    },
    /// Validate the config, load and warm up every model, print each pipeline.
    Check {
        #[arg(short, long, default_value = "/etc/reflexd/reflexd.toml")]
        config: PathBuf,
    },
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("REFLEXD_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,zenoh=warn,ort=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
}

async fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config } => {
            let cfg = reflexd::Config::load(&config)?;
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
                cfg.pipelines.len()
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
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
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
