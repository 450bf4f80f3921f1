//! Revision of a component: a short hash of its pod template, kept in the
//! template's `videochat.dev/revision` annotation (pods inherit it).

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use sha2::{Digest, Sha256};

pub use crate::labels::REVISION_ANNOTATION;

/// Hex characters kept from the SHA-256: plenty for the handful of
/// revisions one component sees, short enough to read in status.
const REVISION_LEN: usize = 10;

/// Hash of the pod template without its revision annotation (so stamping the
/// annotation does not change the hash), over canonical JSON (keys sorted),
/// the same as the plan's revision annotation.
pub fn revision_hash(template: &PodTemplateSpec) -> String {
    let mut unstamped = template.clone();
    if let Some(meta) = unstamped.metadata.as_mut()
        && let Some(annotations) = meta.annotations.as_mut()
    {
        annotations.remove(REVISION_ANNOTATION);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
    // Serializing plain k8s-openapi structs cannot fail; an empty body would
    // still hash deterministically.
    let canonical = serde_json::to_value(&unstamped)
        .map(crate::resource::sorted_keys)
        .unwrap_or_default();
    let bytes = serde_json::to_vec(&canonical).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest
        .iter()
        .take(REVISION_LEN / 2)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Sets the revision annotation on the template and returns the revision.
pub fn stamp_revision(template: &mut PodTemplateSpec) -> String {
    let revision = revision_hash(template);
    template
        .metadata
        .get_or_insert_with(Default::default)
        .annotations
        .get_or_insert_with(Default::default)
        .insert(REVISION_ANNOTATION.to_owned(), revision.clone());
    revision
}

/// Revision annotation of a pod template, when present.
pub fn revision_of(template: &PodTemplateSpec) -> Option<&str> {
    template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(REVISION_ANNOTATION)
        .map(String::as_str)
}

/// Revision annotation of a pod (copied from its template).
pub fn pod_revision(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(REVISION_ANNOTATION)
        .map(String::as_str)
}
