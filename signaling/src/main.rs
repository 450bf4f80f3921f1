//! videochat-signaling: WebSocket signaling and REST service.

use clap::{CommandFactory, Parser};
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;
use videochat_signaling::Config;
use videochat_signaling::config::LogFormat;
use videochat_startup::{parse_or_exit, start_failed, stderr_is_terminal};

const PROGRAM: &str = "videochat-signaling";

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

fn main() -> ExitCode {
    let cli: Cli = parse_or_exit(PROGRAM);
    let filter = match EnvFilter::try_new(&cli.config.log) {
        Ok(filter) => filter,
        Err(error) => {
            let error = format!("invalid --log filter {:?}: {error}", cli.config.log);
            return start_failed(PROGRAM, &error, &Cli::command());
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(stderr_is_terminal());
    match cli.config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{PROGRAM}: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli.config))
}

async fn run(config: Config) -> ExitCode {
    let drain_timeout = config.drain_timeout;
    let server = match videochat_signaling::start(config).await {
        Ok(s) => s,
        Err(error) => return start_failed(PROGRAM, &error, &Cli::command()),
    };
    say(&format!("listening on http://{}", server.local_addr()));
    say(&videochat_signaling::web::open_hint(server.local_addr()));
    if let Some((udp, tcp)) = server.turn_addrs() {
        let tcp = tcp.map(|a| format!(" tcp {a}")).unwrap_or_default();
        say(&format!("turn relay on udp {udp}{tcp}"));
    }
    let mut sigterm = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        Ok(sigterm) => sigterm,
        Err(error) => {
            eprintln!("{PROGRAM}: cannot listen for SIGTERM: {error}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt"),
    }
    server.begin_drain();
    let empty = server.wait_drained(drain_timeout).await;
    tracing::info!(clients_left = !empty, "exiting");
    server.shutdown().await;
    ExitCode::SUCCESS
}

/// One line on stdout for people and scripts. A closed stdout (a script that
/// read the first line and went away) must not stop the server, as
/// `println!` would by panicking.
fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}
