//! How videochat-operator reports a configuration it cannot start with: one
//! line on stderr and exit code 2, like the relay and the signaling server.

use std::process::{Command, Output};

fn operator(args: &[&str]) -> Output {
    let home = std::env::temp_dir().join(format!("videochat-operator-home-{}", std::process::id()));
    std::fs::create_dir_all(&home).expect("home");
    let mut command = Command::new(env!("CARGO_BIN_EXE_videochat-operator"));
    for (key, _) in std::env::vars() {
        if key.starts_with("VIDEOCHAT_") || key.starts_with("KUBERNETES_") {
            command.env_remove(key);
        }
    }
    command
        .env("HOME", &home)
        .env("KUBECONFIG", home.join("no-such-kubeconfig"))
        .env("RUST_BACKTRACE", "1")
        .args(args)
        .output()
        .expect("run videochat-operator")
}

fn refused(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(2),
        "exit code; stderr:\n{stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "one line on stderr, got:\n{stderr}"
    );
    assert!(stderr.starts_with("videochat-operator: "), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes on a pipe: {stderr:?}"
    );
    stderr
}

#[test]
fn no_kubernetes_configuration_is_one_line_with_exit_code_2() {
    let line = refused(&operator(&["run", "--leader-election=false"]));
    assert!(line.contains("no Kubernetes configuration"), "{line}");
}

#[test]
fn a_bad_flag_is_one_line_with_exit_code_2() {
    let line = refused(&operator(&["run", "--leader-election=sometimes"]));
    assert!(line.contains("--leader-election"), "{line}");
    let line = refused(&operator(&["--log", "a=b=c", "crd"]));
    assert!(line.contains("--log"), "{line}");
}
