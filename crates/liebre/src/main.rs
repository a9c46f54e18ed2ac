//! `liebre`: the one binary. Glue only: parse the command line, set up
//! logging, run the chosen subcommand, map errors to exit codes.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use liebre_server::{Config, Server, ServerArgs};

/// Liebre: an AMQP 0-9-1 and MQTT message broker.
#[derive(Debug, Parser)]
#[command(name = "liebre", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker.
    ///
    /// Every flag can also be set in the TOML file given with --config and
    /// in a LIEBRE_* environment variable (LIEBRE_DATA_DIR, LIEBRE_AMQP,
    /// ...); flags win over the environment, which wins over the file.
    Server(ServerArgs),
    /// Print an example configuration file.
    ExampleConfig,
    /// Load-test a broker (AMQP, MQTT, idle connections) and report rates,
    /// loss, latency percentiles and the client's own CPU cost.
    Bench(liebre_bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let result = match cli.command {
        Command::Server(args) => run_server(args),
        Command::ExampleConfig => {
            print!("{}", liebre_server::config::EXAMPLE_CONFIG);
            Ok(())
        }
        Command::Bench(args) => liebre_bench::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("liebre: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("LIEBRE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    let config = Config::resolve(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let server = Server::start(config).await?;
        wait_for_signal().await?;
        server.shutdown().await;
        Ok(())
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!(message = "SIGTERM received."),
        _ = int.recv() => tracing::info!(message = "SIGINT received."),
    }
    Ok(())
}
