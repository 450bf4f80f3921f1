//! Load generator for the signaling WebSocket; see `videochat_signaling::bench`.

use clap::Parser;
use videochat_signaling::bench::{BenchArgs, run};

/// Chat load against a signaling server (ours or the Node.js reference):
/// prints one JSON line with delivered msgs/s, ack and fan-out latency
/// percentiles, and the server's CPU and RSS when --server-pid is given.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(cli.args)).map(|_| ())
}
