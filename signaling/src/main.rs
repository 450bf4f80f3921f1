//! videochat-signaling: WebSocket signaling and REST service.

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use videochat_signaling::Config;
use videochat_signaling::config::LogFormat;

/// WebSocket signaling for video calls: rooms, presence, SDP/ICE relay and
/// durable chat. Without --redis-url/--mongodb-uri it runs on one machine: an
/// in-process TURN relay on loopback, an embedded store under --data-dir, and
/// the demo page at /.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    config: Config,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.config.log).context("invalid --log filter")?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(run(cli.config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let drain_timeout = config.drain_timeout;
    let server = match videochat_signaling::start(config).await {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return Err(e.into());
        }
    };
    println!("listening on http://{}", server.local_addr());
    if let Some((udp, tcp)) = server.turn_addrs() {
        let tcp = tcp.map(|a| format!(" tcp {a}")).unwrap_or_default();
        println!("turn relay on udp {udp}{tcp}");
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt"),
    }
    server.begin_drain();
    let empty = server.wait_drained(drain_timeout).await;
    tracing::info!(clients_left = !empty, "exiting");
    server.shutdown().await;
    Ok(())
}
