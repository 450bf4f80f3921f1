//! Pod building blocks shared by every component: hardened security
//! contexts, default resources, Secret and scratch volumes.

use crate::resource::SecretKeyRef;
use k8s_openapi::api::core::v1::{
    Capabilities, EmptyDirVolumeSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath,
    PodSecurityContext, Probe, ResourceRequirements, SeccompProfile, SecretKeySelector,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;

/// UID of the `nonroot` user of distroless images (our own images).
pub const NONROOT_UID: i64 = 65532;
/// UID of the redis and mongodb users in the official images.
pub const DATABASE_UID: i64 = 999;

pub fn pod_security(uid: i64) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        fs_group: Some(uid),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    }
}

pub fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

/// The user's resources, or requests/limits that let the scheduler place
/// the pod and stop a leak from taking the node down.
pub fn resources(
    spec: Option<&ResourceRequirements>,
    cpu: &str,
    memory: &str,
    memory_limit: &str,
) -> ResourceRequirements {
    if let Some(spec) = spec {
        return spec.clone();
    }
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            Quantity(memory_limit.into()),
        )])),
        ..ResourceRequirements::default()
    }
}

/// A volume holding one key of a Secret as file `file`, readable by the pod's group only.
pub fn secret_volume(volume: &str, reference: &SecretKeyRef, file: &str) -> Volume {
    Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(reference.name.clone()),
            items: Some(vec![KeyToPath {
                key: reference.key.clone(),
                path: file.into(),
                ..KeyToPath::default()
            }]),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// An environment variable read from `key` of the Secret `secret`.
pub fn env_from_secret(env: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: env.into(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                ..SecretKeySelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// An HTTP GET probe of `path` on the named container port, with a 2 s timeout.
pub fn http_probe(port_name: &str, path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port_name.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    }
}

pub fn empty_dir(volume: &str) -> Volume {
    Volume {
        name: volume.into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

pub fn mount(volume: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}
