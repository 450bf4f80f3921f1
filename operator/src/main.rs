use clap::Parser;

/// videochat-operator (not yet implemented beyond --help).
#[derive(Parser)]
#[command(version)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
