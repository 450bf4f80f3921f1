//! How the three binaries start, so that they behave alike: a bad flag, a
//! bad environment variable or a start failure is one line on stderr,
//! `<program>: <what>`, naming the flag or the variable the user actually
//! used, with exit code 2 (bad configuration); no backtrace, no colour
//! unless stderr is a terminal.

use clap::{CommandFactory, FromArgMatches};
use std::io::IsTerminal;
use std::process::ExitCode;

/// Exit code for a configuration the program cannot start with.
pub const EXIT_BAD_CONFIGURATION: u8 = 2;

/// Parses the command line and the environment; on an error prints one line
/// and exits with 2 (help and version print as usual and exit 0).
pub fn parse_or_exit<P: CommandFactory + FromArgMatches>(program: &str) -> P {
    let command = P::command();
    let result = command
        .clone()
        .try_get_matches_from(std::env::args_os())
        .and_then(|matches| P::from_arg_matches(&matches));
    match result {
        Ok(parsed) => parsed,
        Err(error) if !error.use_stderr() => error.exit(),
        Err(error) => {
            let text = error.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let message = first.trim_start_matches("error: ");
            eprintln!("{program}: {}", as_given(message, &command));
            std::process::exit(i32::from(EXIT_BAD_CONFIGURATION));
        }
    }
}

/// Prints a start error on one line and returns exit code 2.
pub fn start_failed(
    program: &str,
    error: &dyn std::fmt::Display,
    command: &clap::Command,
) -> ExitCode {
    eprintln!("{program}: {}", as_given(&one_line(error), command));
    ExitCode::from(EXIT_BAD_CONFIGURATION)
}

/// The message on one line (causes that span lines are joined).
fn one_line(error: &dyn std::fmt::Display) -> String {
    error
        .to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether log output to stderr may carry colour escapes.
pub fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// Rewrites `--flag` in a message to the environment variable that set it,
/// when the user set the variable and not the flag: errors talk about what
/// the user wrote.
pub fn as_given(message: &str, command: &clap::Command) -> String {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    as_given_with(message, command, &argv, |name| {
        std::env::var_os(name).is_some()
    })
}

fn as_given_with(
    message: &str,
    command: &clap::Command,
    argv: &[String],
    env_is_set: impl Fn(&str) -> bool,
) -> String {
    let mut out = message.to_owned();
    let commands = std::iter::once(command).chain(command.get_subcommands());
    for arg in commands.flat_map(|c| c.get_arguments()) {
        let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) else {
            continue;
        };
        let flag = format!("--{long}");
        let on_command_line = argv
            .iter()
            .any(|a| a == &flag || a.starts_with(&format!("{flag}=")));
        let env = env.to_string_lossy();
        if !on_command_line && env_is_set(&env) {
            out = replace_flag(&out, &flag, &env);
        }
    }
    out
}

/// Replaces whole occurrences of `flag` (not `--flag-more`).
fn replace_flag(text: &str, flag: &str, with: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(flag) {
        let after = &rest[at + flag.len()..];
        let whole = !after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-');
        out.push_str(&rest[..at]);
        out.push_str(if whole { with } else { flag });
        rest = after;
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> clap::Command {
        clap::Command::new("x")
            .arg(
                clap::Arg::new("data_dir")
                    .long("data-dir")
                    .env("X_DATA_DIR"),
            )
            .arg(
                clap::Arg::new("data_dir_mode")
                    .long("data-dir-mode")
                    .env("X_DATA_DIR_MODE"),
            )
    }

    #[test]
    fn a_flag_set_through_its_variable_is_named_by_the_variable() {
        let message = "invalid setting --data-dir: /tmp/f is a file";
        let got = as_given_with(message, &command(), &[], |v| v == "X_DATA_DIR");
        assert_eq!(got, "invalid setting X_DATA_DIR: /tmp/f is a file");
    }

    #[test]
    fn a_flag_on_the_command_line_keeps_its_name() {
        let message = "invalid setting --data-dir: /tmp/f is a file";
        let argv = vec!["--data-dir=/tmp/f".to_owned()];
        let got = as_given_with(message, &command(), &argv, |_| true);
        assert_eq!(got, message);
    }

    #[test]
    fn only_whole_flags_are_renamed() {
        let message = "--data-dir-mode and --data-dir";
        let got = as_given_with(message, &command(), &[], |v| v == "X_DATA_DIR");
        assert_eq!(got, "--data-dir-mode and X_DATA_DIR");
    }

    #[test]
    fn multi_line_errors_become_one_line() {
        assert_eq!(one_line(&"first\n  second\n"), "first second");
    }
}
