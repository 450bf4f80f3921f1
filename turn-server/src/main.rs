use clap::Parser;

/// videochat-turn (not yet implemented beyond --help).
#[derive(Parser)]
#[command(version)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
