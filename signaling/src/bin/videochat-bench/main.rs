//! videochat-bench: load against a signaling server (ours or the Node.js
//! reference). The load tool lives here, outside the library, so that the
//! library needs no `anyhow`.

mod chat_load;

use clap::Parser;

/// Chat load against a signaling server (ours or the Node.js reference):
/// prints one JSON line with delivered msgs/s, ack and fan-out latency
/// percentiles, and the server's CPU and RSS when --server-pid is given.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    args: chat_load::BenchArgs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(chat_load::run(cli.args)).map(|_| ())
}
