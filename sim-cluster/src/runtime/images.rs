//! What each known image runs on the host: the project's binaries built by
//! cargo, a real `redis-server`, and SecantusDB (the MongoDB wire server
//! the other tests use) behind an entrypoint that does what the mongo
//! image's does on first start (create the root user from
//! MONGO_INITDB_ROOT_USERNAME/PASSWORD, then serve with authentication).

use crate::error::{Result, SimError};
use std::path::{Path, PathBuf};

/// The programs of one image.
#[derive(Clone, Debug)]
pub struct Image {
    /// ENTRYPOINT; replaced by the container's `command`.
    pub entrypoint: Vec<String>,
    /// CMD; replaced by the container's `args` (or dropped with `command`).
    pub cmd: Vec<String>,
    /// A directory of the image's programs, first on PATH.
    pub bin_dir: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Signaling,
    Turn,
    Redis,
    MongoDb,
}

fn kind(image: &str) -> Option<Kind> {
    let repository = image.split([':', '@']).next().unwrap_or_default();
    let short = repository.rsplit('/').next().unwrap_or_default();
    match short {
        "videochat-signaling" => Some(Kind::Signaling),
        "videochat-turn" => Some(Kind::Turn),
        "redis" => Some(Kind::Redis),
        "mongo" => Some(Kind::MongoDb),
        _ => None,
    }
}

/// Where cargo put this workspace's binaries: `VIDEOCHAT_SIM_BIN_DIR`, else
/// the profile directory of the running test (`target/debug/deps/x` →
/// `target/debug`).
pub fn cargo_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VIDEOCHAT_SIM_BIN_DIR") {
        return PathBuf::from(dir);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let dir = exe.parent()?;
            Some(if dir.ends_with("deps") {
                dir.parent()?.to_path_buf()
            } else {
                dir.to_path_buf()
            })
        })
        .unwrap_or_else(|| PathBuf::from("target/debug"))
}

fn cargo_binary(name: &str) -> Result<PathBuf> {
    let path = cargo_bin_dir().join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(SimError::Runtime(format!(
            "{} is missing: run `cargo build -p {name}` first (scripts/test builds every binary before the tests)",
            path.display()
        )))
    }
}

fn tool(variable: &str, default: &str) -> PathBuf {
    std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> SimError {
    let what = format!("{what} {}", path.display());
    move |e| SimError::Runtime(format!("{what}: {e}"))
}

fn link(bin_dir: &Path, name: &str, target: &Path) -> Result<()> {
    let path = bin_dir.join(name);
    let _ = std::fs::remove_file(&path);
    std::os::unix::fs::symlink(target, &path).map_err(io("cannot link", &path))
}

/// The mongo image's first-start work, for SecantusDB: a server on
/// loopback without authentication to create the root user, then the
/// real server with `--auth` on every address.
fn mongo_entrypoint(secantusd: &Path, python: &Path) -> String {
    format!(
        r#"#!/bin/sh
set -e
data=/data/db
if [ -n "$MONGO_INITDB_ROOT_USERNAME" ] && [ ! -e "$data/.root-user-created" ]; then
  {secantusd} --host 127.0.0.1 --port 27018 --storage-path "$data" --standalone --log-level WARNING &
  init=$!
  {python} - <<'PY'
import os, time, pymongo
deadline = time.time() + 60
while True:
    try:
        client = pymongo.MongoClient("mongodb://127.0.0.1:27018/", serverSelectionTimeoutMS=1000, directConnection=True)
        client.admin.command("createUser", os.environ["MONGO_INITDB_ROOT_USERNAME"],
                             pwd=os.environ["MONGO_INITDB_ROOT_PASSWORD"], roles=["root"])
        break
    except Exception as error:
        if time.time() > deadline:
            raise SystemExit(f"creating the root user: {{error}}")
        time.sleep(0.2)
PY
  kill "$init"
  wait "$init" || true
  touch "$data/.root-user-created"
fi
host=127.0.0.1
for arg in "$@"; do
  [ "$arg" = "--bind_ip_all" ] && host=0.0.0.0
done
exec {secantusd} --host "$host" --port 27017 --storage-path "$data" --standalone --auth --log-level WARNING
"#,
        secantusd = secantusd.display(),
        python = python.display(),
    )
}

/// Resolves an image to its programs, preparing its bin directory under
/// `images_dir`. None: the simulation does not know the image.
pub fn resolve(image: &str, images_dir: &Path) -> Result<Option<Image>> {
    let Some(kind) = kind(image) else {
        return Ok(None);
    };
    let bin_dir = images_dir.join(format!("{kind:?}").to_lowercase());
    std::fs::create_dir_all(&bin_dir).map_err(io("cannot create", &bin_dir))?;
    let image = match kind {
        Kind::Signaling => Image {
            entrypoint: vec![cargo_binary("videochat-signaling")?.display().to_string()],
            cmd: vec![],
            bin_dir,
        },
        Kind::Turn => Image {
            entrypoint: vec![cargo_binary("videochat-turn")?.display().to_string()],
            cmd: vec![],
            bin_dir,
        },
        Kind::Redis => {
            link(
                &bin_dir,
                "redis-server",
                &tool("VIDEOCHAT_REDIS_SERVER", "/usr/bin/redis-server"),
            )?;
            Image {
                entrypoint: vec![],
                cmd: vec!["redis-server".into()],
                bin_dir,
            }
        }
        Kind::MongoDb => {
            let venv = tool("VIDEOCHAT_VENV", "/work/main/.venv");
            let secantusd = std::env::var_os("VIDEOCHAT_SECANTUSD")
                .map(PathBuf::from)
                .unwrap_or_else(|| venv.join("bin/secantusd-py"));
            let python = std::env::var_os("VIDEOCHAT_PYTHON")
                .map(PathBuf::from)
                .unwrap_or_else(|| venv.join("bin/python"));
            let script = bin_dir.join("docker-entrypoint.sh");
            std::fs::write(&script, mongo_entrypoint(&secantusd, &python))
                .map_err(io("cannot write", &script))?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
                .map_err(io("cannot chmod", &script))?;
            Image {
                entrypoint: vec![script.display().to_string()],
                cmd: vec!["mongod".into()],
                bin_dir,
            }
        }
    };
    Ok(Some(image))
}
