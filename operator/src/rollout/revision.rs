//! Revision of a component: a short hash of its pod template.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use sha2::{Digest, Sha256};

/// Pod template label carrying the revision, so that pods (and the
/// workload's template) say which revision they belong to.
pub const REVISION_LABEL: &str = "videochat.dev/revision";

/// Hex characters kept from the SHA-256: enough to never collide between the
/// handful of revisions one component sees, short enough for a label value.
const REVISION_LEN: usize = 16;

/// Hash of the pod template, ignoring the revision label itself (so stamping
/// the label does not change the hash). serde_json's default map is ordered,
/// which makes the serialization canonical.
pub fn revision_hash(template: &PodTemplateSpec) -> String {
    let mut unstamped = template.clone();
    if let Some(labels) = unstamped.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(REVISION_LABEL);
    }
    // Serializing plain k8s-openapi structs cannot fail; an empty body would
    // still hash deterministically.
    let bytes = serde_json::to_vec(&unstamped).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    let mut hex = String::with_capacity(REVISION_LEN);
    for byte in digest.iter().take(REVISION_LEN / 2) {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// Sets the revision label on the template and returns the revision.
pub fn stamp_revision(template: &mut PodTemplateSpec) -> String {
    let revision = revision_hash(template);
    template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default)
        .insert(REVISION_LABEL.to_owned(), revision.clone());
    revision
}

/// Revision label of a pod template, when present.
pub fn revision_of(template: &PodTemplateSpec) -> Option<&str> {
    template
        .metadata
        .as_ref()?
        .labels
        .as_ref()?
        .get(REVISION_LABEL)
        .map(String::as_str)
}
