//! videochat-bench: load against a signaling server (ours or the Node.js
//! reference), and the attacks of the hardening work as measured loads.
//! The load tool lives here, outside the library, so that the library needs
//! no `anyhow`.

mod chat_load;
mod flood;
mod history_attack;
mod measure;

use clap::{Parser, Subcommand};

/// Chat load against a signaling server (ours or the Node.js reference):
/// prints one JSON line with delivered msgs/s, ack and fan-out latency
/// percentiles, and the server's CPU and RSS when --server-pid is given.
/// The subcommands run the attacks instead.
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    attack: Option<Attack>,
    #[command(flatten)]
    chat: chat_load::BenchArgs,
}

#[derive(Subcommand)]
enum Attack {
    /// History requests of 1,000 large messages from clients that never
    /// read; reports the server's RSS before, at its peak and after.
    HistoryAttack(history_attack::HistoryAttackArgs),
    /// Binary and pre-hello frames as fast as possible from another
    /// address; reports another client's chat ack latency meanwhile.
    Flood(flood::FloodArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.attack {
            None => chat_load::run(cli.chat).await.map(|_| ()),
            Some(Attack::HistoryAttack(args)) => history_attack::run(args).await.map(|_| ()),
            Some(Attack::Flood(args)) => flood::run(args).await.map(|_| ()),
        }
    })
}
