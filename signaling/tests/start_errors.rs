//! How videochat-signaling reports a configuration it cannot start with: one
//! line on stderr naming the setting as the user gave it (flag or variable),
//! exit code 2, no backtrace and no colour codes, whatever RUST_BACKTRACE says.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn scratch(label: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("videochat-start-{label}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn signaling() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_videochat-signaling"));
    // No VIDEOCHAT_ setting of the test's environment leaks in.
    for (key, _) in std::env::vars() {
        if key.starts_with("VIDEOCHAT_") {
            command.env_remove(key);
        }
    }
    // Whatever a start does on the way to its error happens in a scratch
    // directory, never in the source tree.
    command.current_dir(std::env::temp_dir());
    command.env("RUST_BACKTRACE", "1").args([
        "--listen",
        "127.0.0.1:0",
        "--turn-listen",
        "127.0.0.1:0",
    ]);
    command
}

/// Asserts a refused start: exit 2 and exactly one plain line on stderr.
fn refused(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(2),
        "exit code; stderr:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got:\n{stderr}");
    assert!(lines[0].starts_with("videochat-signaling: "), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes on a pipe: {stderr:?}"
    );
    assert!(!stderr.contains("backtrace"), "{stderr}");
    stderr
}

#[test]
fn a_data_dir_that_is_a_file_says_so() {
    let dir = scratch("file");
    let file = dir.join("not-a-dir");
    std::fs::write(&file, "x").expect("file");
    let output = signaling()
        .arg("--data-dir")
        .arg(&file)
        .output()
        .expect("run");
    let line = refused(&output);
    assert!(
        line.contains("--data-dir") && line.contains("is a file"),
        "{line}"
    );
}

#[test]
fn an_error_names_the_variable_when_the_variable_set_it() {
    let dir = scratch("env");
    let file = dir.join("not-a-dir");
    std::fs::write(&file, "x").expect("file");
    let output = signaling()
        .env("VIDEOCHAT_DATA_DIR", &file)
        .output()
        .expect("run");
    let line = refused(&output);
    assert!(
        line.contains("VIDEOCHAT_DATA_DIR") && !line.contains("--data-dir"),
        "{line}"
    );

    let output = signaling()
        .env("VIDEOCHAT_MAX_CONNECTIONS", "many")
        .output()
        .expect("run");
    let line = refused(&output);
    assert!(line.contains("VIDEOCHAT_MAX_CONNECTIONS"), "{line}");
}

#[test]
fn a_store_held_by_another_instance_says_another_instance_is_running() {
    let dir = scratch("locked");
    let mut first = signaling()
        .arg("--data-dir")
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("first instance");
    // Wait until the first instance has the store open.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.join("signaling.redb").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = signaling()
        .arg("--data-dir")
        .arg(&dir)
        .output()
        .expect("second");
    let _ = first.kill();
    let _ = first.wait();
    let line = refused(&output);
    assert!(line.contains("another instance is running"), "{line}");
}

#[test]
fn a_bad_flag_is_one_line_with_exit_code_2() {
    let output = signaling()
        .args(["--max-connections", "lots"])
        .output()
        .expect("run");
    let line = refused(&output);
    assert!(line.contains("--max-connections"), "{line}");
}

#[test]
fn a_bad_duration_is_one_line_naming_the_setting() {
    let output = signaling()
        .args(["--heartbeat", "5 parsecs"])
        .output()
        .expect("run");
    let line = refused(&output);
    assert!(
        line.contains("--heartbeat") && line.contains("parsecs"),
        "{line}"
    );

    // A bare number has no unit: refused rather than guessed.
    let output = signaling()
        .env("VIDEOCHAT_RESUME_WINDOW", "60")
        .output()
        .expect("run");
    let line = refused(&output);
    assert!(line.contains("VIDEOCHAT_RESUME_WINDOW"), "{line}");

    let output = signaling()
        .args(["--chat-sweep", "400days"])
        .output()
        .expect("run");
    let line = refused(&output);
    assert!(
        line.contains("--chat-sweep") && line.contains("longer than 30 days"),
        "{line}"
    );
}

#[test]
fn room_token_settings_that_do_not_fit_together_name_the_setting() {
    let dir = scratch("keys");
    let key = dir.join("public.pem");
    std::fs::write(
        &key,
        "-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n",
    )
    .expect("key");
    // A public key without the algorithm it verifies.
    let output = signaling()
        .arg("--auth-public-key-file")
        .arg(&key)
        .output()
        .expect("run");
    let line = refused(&output);
    assert!(
        line.contains("--auth-algorithm") && line.contains("RS256 or ES256"),
        "{line}"
    );
    // An algorithm no key file goes with.
    let output = signaling()
        .env("VIDEOCHAT_AUTH_ALGORITHM", "RS256")
        .output()
        .expect("run");
    let line = refused(&output);
    assert!(line.contains("VIDEOCHAT_AUTH_ALGORITHM"), "{line}");
    // A file that holds no key of that kind: refused before the store is
    // opened, so no data directory is left behind.
    let data = dir.join("data");
    let output = signaling()
        .arg("--data-dir")
        .arg(&data)
        .arg("--auth-public-key-file")
        .arg(&key)
        .args(["--auth-algorithm", "ES256"])
        .output()
        .expect("run");
    let line = refused(&output);
    assert!(
        line.contains("--auth-public-key-file") && line.contains("not a PEM EC P-256 public key"),
        "{line}"
    );
    assert!(
        !data.exists(),
        "a data directory was made for a refused start"
    );
    // An algorithm that does not exist.
    let output = signaling()
        .args(["--auth-algorithm", "none"])
        .output()
        .expect("run");
    let line = refused(&output);
    assert!(line.contains("--auth-algorithm"), "{line}");
}

#[test]
fn a_trusted_proxy_that_is_not_a_network_names_the_setting() {
    let output = signaling()
        .env("VIDEOCHAT_TRUSTED_PROXIES", "10.0.0.0/8,ingress-nginx")
        .output()
        .expect("run");
    let line = refused(&output);
    assert!(
        line.contains("VIDEOCHAT_TRUSTED_PROXIES") && line.contains("ingress-nginx"),
        "{line}"
    );
}
