use clap::Parser;

/// videochat-signaling (not yet implemented beyond --help).
#[derive(Parser)]
#[command(version)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
