//! videochat-operator binary: parses flags, sets up logging, dispatches.

use anyhow::Context as _;
use clap::CommandFactory;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use videochat_operator::cli::{Cli, Command, LogFormat, RunArgs};
use videochat_operator::io::{admin, controller};
use videochat_operator::{metrics, resource};

const PROGRAM: &str = "videochat-operator";

fn main() -> std::process::ExitCode {
    let cli: Cli = videochat_startup::parse_or_exit(PROGRAM);
    let filter = match tracing_subscriber::EnvFilter::try_new(&cli.log) {
        Ok(filter) => filter,
        Err(error) => {
            let error = format!("invalid --log filter {:?}: {error}", cli.log);
            return videochat_startup::start_failed(PROGRAM, &error, &Cli::command());
        }
    };
    init_tracing(cli.log_format, filter);
    match real_main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            let line = videochat_startup::as_given(&one_line(&error), &Cli::command());
            eprintln!("{PROGRAM}: {line}");
            // Exit 2 for a configuration it cannot start with, as the other
            // binaries do; 1 for anything that went wrong later.
            if error.downcast_ref::<BadConfiguration>().is_some() {
                std::process::ExitCode::from(videochat_startup::EXIT_BAD_CONFIGURATION)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

/// A setting the operator cannot start with (exit code 2).
#[derive(Debug)]
struct BadConfiguration(String);

impl std::fmt::Display for BadConfiguration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadConfiguration {}

/// The error and its causes on one line; a cause already quoted in the
/// message before it is not repeated.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Some(Command::Crd) => {
            print!("{}", resource::crd_yaml()?);
            Ok(())
        }
        Some(Command::Plan(args)) => {
            print!("{}", videochat_operator::cli::plan_command(&args)?);
            Ok(())
        }
        Some(Command::Run(args)) => run(args),
        None => run(RunArgs::default()),
    }
}

fn init_tracing(format: LogFormat, filter: tracing_subscriber::EnvFilter) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(videochat_startup::stderr_is_terminal());
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let client = kube::Client::try_default().await.map_err(|error| {
            BadConfiguration(format!(
                "no Kubernetes configuration: set KUBECONFIG or run in a pod with a service account ({error})"
            ))
        })?;
        let metrics = Arc::new(metrics::Metrics::new());
        let ready = Arc::new(AtomicBool::new(false));
        let admin_state = admin::AdminState {
            metrics: metrics.clone(),
            ready: ready.clone(),
        };
        let admin_server = tokio::spawn(admin::serve(args.admin_listen, admin_state));
        let result = tokio::select! {
            result = controller::run(client, args.namespace.clone(), metrics, ready, args.instance.clone(), args.leader_election()) => result.map_err(anyhow::Error::from),
            result = admin_server => match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(error.into()),
                Err(error) => Err(anyhow::anyhow!("admin server task failed: {error}")),
            },
        };
        result
    })
}
