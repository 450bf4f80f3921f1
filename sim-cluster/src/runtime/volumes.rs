//! Pod volumes as directories on the host, bind-mounted at their real
//! mountPath inside the pod's mount namespace. Secret and ConfigMap volumes
//! are written as a kubelet's atomic writer does: the files in a
//! timestamped directory, `..data` a symlink to it swapped by rename, and
//! each key a symlink through `..data`, so a reader never sees half an
//! update and a change shows up at once (a real kubelet takes up to its
//! sync period, about a minute). PVCs are directories of the cluster that
//! outlive the pod; emptyDirs live and die with it.

use super::env::object_data;
use crate::controllers::{namespace, str_at};
use crate::error::{Result, SimError};
use crate::store::Store;
use serde_json::Value;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> SimError {
    let what = format!("{what} {}", path.display());
    move |e| SimError::Runtime(format!("{what}: {e}"))
}

/// One volume's directory on the host.
#[derive(Clone, Debug)]
pub struct HostVolume {
    pub name: String,
    pub dir: PathBuf,
    /// Secret or ConfigMap contents as last written (to write only changes).
    written: Option<BTreeMap<String, (Vec<u8>, u32)>>,
}

/// The files a Secret or ConfigMap volume holds: path → (bytes, mode).
/// Ok(None): the object is missing and not optional (the pod waits).
fn projected(
    store: &Store,
    pod: &Value,
    volume: &Value,
) -> Option<BTreeMap<String, (Vec<u8>, u32)>> {
    let (kind, source, object_name) = if let Some(s) = volume.get("secret") {
        ("Secret", s, str_at(s, "/secretName"))
    } else if let Some(s) = volume.get("configMap") {
        ("ConfigMap", s, str_at(s, "/name"))
    } else {
        return None;
    };
    let optional = source.get("optional").and_then(Value::as_bool) == Some(true);
    let default_mode = source
        .get("defaultMode")
        .and_then(Value::as_u64)
        .unwrap_or(0o644) as u32;
    let data = match object_data(store, kind, namespace(pod), object_name) {
        Some(data) => data,
        None if optional => return Some(BTreeMap::new()),
        None => return None,
    };
    let mut files = BTreeMap::new();
    match source.get("items").and_then(Value::as_array) {
        Some(items) => {
            for item in items {
                let key = str_at(item, "/key");
                let mode = item.get("mode").and_then(Value::as_u64).map(|m| m as u32);
                match data.get(key) {
                    Some(value) => {
                        files.insert(
                            str_at(item, "/path").to_owned(),
                            (value.clone(), mode.unwrap_or(default_mode)),
                        );
                    }
                    None if optional => {}
                    None => return None,
                }
            }
        }
        None => {
            for (key, value) in data {
                files.insert(key, (value, default_mode));
            }
        }
    }
    Some(files)
}

/// Writes `files` into `dir` atomically (see the module comment).
fn write_atomically(dir: &Path, files: &BTreeMap<String, (Vec<u8>, u32)>) -> Result<()> {
    let stamp = format!(
        "..{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
    );
    let fresh = dir.join(&stamp);
    std::fs::create_dir_all(&fresh).map_err(io("cannot create", &fresh))?;
    for (path, (bytes, mode)) in files {
        let file = fresh.join(path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
        }
        std::fs::write(&file, bytes).map_err(io("cannot write", &file))?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(*mode))
            .map_err(io("cannot chmod", &file))?;
    }
    let temporary = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&temporary);
    std::os::unix::fs::symlink(&stamp, &temporary).map_err(io("cannot link", &temporary))?;
    let data = dir.join("..data");
    std::fs::rename(&temporary, &data).map_err(io("cannot swap", &data))?;
    let top: std::collections::BTreeSet<String> = files
        .keys()
        .filter_map(|p| p.split('/').next().map(str::to_owned))
        .collect();
    for name in &top {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{name}"), &link)
                .map_err(io("cannot link", &link))?;
        }
    }
    for entry in std::fs::read_dir(dir)
        .map_err(io("cannot read", dir))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale_version = name.starts_with("..") && name != stamp && name != "..data";
        let stale_key = !name.starts_with("..") && !top.contains(&name);
        if stale_version {
            let _ = std::fs::remove_dir_all(entry.path());
        } else if stale_key {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// The pod's volumes, created under `pod_dir/volumes` (emptyDir,
/// Secret, ConfigMap) or `claims_dir` (PVCs).
pub struct PodVolumes {
    pub volumes: Vec<HostVolume>,
}

impl PodVolumes {
    pub fn create(pod: &Value, pod_dir: &Path, claims_dir: &Path) -> Result<Self> {
        let mut volumes = Vec::new();
        for volume in pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = str_at(volume, "/name").to_owned();
            let dir = match volume
                .pointer("/persistentVolumeClaim/claimName")
                .and_then(Value::as_str)
            {
                Some(claim) => claims_dir.join(namespace(pod)).join(claim),
                None => pod_dir.join("volumes").join(&name),
            };
            std::fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
            volumes.push(HostVolume {
                name,
                dir,
                written: None,
            });
        }
        Ok(Self { volumes })
    }

    /// Brings Secret and ConfigMap volumes up to date. Err names a volume
    /// whose object is missing (the pod cannot start until it exists).
    pub fn sync(&mut self, store: &Store, pod: &Value) -> Result<(), String> {
        let specs: Vec<Value> = pod
            .pointer("/spec/volumes")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for volume in &mut self.volumes {
            let Some(spec) = specs.iter().find(|v| str_at(v, "/name") == volume.name) else {
                continue;
            };
            if spec.get("secret").is_none() && spec.get("configMap").is_none() {
                continue;
            }
            let Some(files) = projected(store, pod, spec) else {
                if volume.written.is_some() {
                    // A kubelet keeps the last contents when the object goes.
                    continue;
                }
                return Err(format!(
                    "MountVolume.SetUp failed for volume \"{}\": not found",
                    volume.name
                ));
            };
            if volume.written.as_ref() != Some(&files) {
                if let Err(error) = write_atomically(&volume.dir, &files) {
                    return Err(error.to_string());
                }
                volume.written = Some(files);
            }
        }
        Ok(())
    }

    pub fn dir(&self, name: &str) -> Option<&Path> {
        self.volumes
            .iter()
            .find(|v| v.name == name)
            .map(|v| v.dir.as_path())
    }
}
