use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use tracing_subscriber::EnvFilter;
use videochat_startup::{parse_or_exit, start_failed};
use videochat_turn::{Relay, RelayConfig};

/// TURN relay (UDP and TCP) with TURN REST API credentials.
#[derive(Parser)]
#[command(name = "videochat-turn", version)]
struct Cli {
    #[command(flatten)]
    relay: RelayConfig,

    /// Log format.
    #[arg(long, env = "VIDEOCHAT_TURN_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,

    /// Log filter (tracing EnvFilter syntax).
    #[arg(
        long,
        env = "VIDEOCHAT_TURN_LOG",
        default_value = "info,turn=off,webrtc_util=off"
    )]
    log: String,
}

const PROGRAM: &str = "videochat-turn";

#[tokio::main]
async fn main() -> ExitCode {
    let cli: Cli = parse_or_exit(PROGRAM);
    let filter = match EnvFilter::try_new(&cli.log) {
        Ok(f) => f,
        Err(err) => {
            let err = format!("invalid --log filter {:?}: {err}", cli.log);
            return start_failed(PROGRAM, &err, &Cli::command());
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    if cli.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }

    let drain_timeout = cli.relay.drain_timeout;
    let relay = match Relay::start(cli.relay).await {
        Ok(r) => r,
        Err(err) => return start_failed(PROGRAM, &err, &Cli::command()),
    };
    if let Err(err) = wait_for_signal().await {
        eprintln!("videochat-turn: cannot listen for signals: {err}");
        return ExitCode::from(1);
    }
    relay.begin_drain();
    let drained = relay.wait_drained(drain_timeout).await;
    tracing::info!(
        drained,
        active_allocations = relay.active_allocations(),
        "drain finished, stopping"
    );
    relay.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "draining"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "draining"),
    }
    Ok(())
}
