//! The durable copy of a component's last good pod template: one
//! ControllerRevision per good revision, owned by the VideoChatCluster.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;

use crate::labels::Component;
use crate::labels::{self, COMPONENT as COMPONENT_LABEL, INSTANCE as INSTANCE_LABEL};

/// ControllerRevision label carrying the revision it stores.
pub const REVISION_LABEL: &str = "videochat.dev/revision";

/// Good revisions kept per component; older ones are pruned.
pub const REVISION_HISTORY_LIMIT: usize = 3;

/// A good revision and its template, read back from a ControllerRevision.
#[derive(Clone, Debug, PartialEq)]
pub struct RevisionRecord {
    pub revision: String,
    pub template: PodTemplateSpec,
}

/// Name of the ControllerRevision holding `revision` of `component`.
pub fn controller_revision_name(cluster: &str, component: Component, revision: &str) -> String {
    format!("{cluster}-{}-{revision}", component.as_str())
}

/// The ControllerRevision that keeps a good template. `sequence` orders
/// revisions of one component (the resource generation that made it good).
pub fn controller_revision(
    cluster: &str,
    namespace: &str,
    owner: OwnerReference,
    component: Component,
    record: &RevisionRecord,
    sequence: i64,
) -> ControllerRevision {
    let mut labels: BTreeMap<String, String> = labels::labels(cluster, Some(component));
    labels.insert(REVISION_LABEL.to_owned(), record.revision.clone());
    ControllerRevision {
        metadata: ObjectMeta {
            name: Some(controller_revision_name(
                cluster,
                component,
                &record.revision,
            )),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        data: RawExtension(serde_json::to_value(&record.template).unwrap_or_default()),
        revision: Some(sequence),
    }
}

fn belongs_to(revision: &ControllerRevision, cluster: &str, component: Component) -> bool {
    let labels = revision.metadata.labels.as_ref();
    let label = |key: &str| labels.and_then(|l| l.get(key)).map(String::as_str);
    label(COMPONENT_LABEL) == Some(component.as_str()) && label(INSTANCE_LABEL) == Some(cluster)
}

/// Finds the stored template of `revision` among observed ControllerRevisions.
/// A record whose data does not parse as a pod template is ignored (it could
/// not be re-applied anyway).
pub fn last_good_record(
    revisions: &[ControllerRevision],
    cluster: &str,
    component: Component,
    revision: &str,
) -> Option<RevisionRecord> {
    revisions
        .iter()
        .filter(|r| belongs_to(r, cluster, component))
        .find(|r| {
            r.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(REVISION_LABEL))
                .is_some_and(|v| v == revision)
        })
        .and_then(|r| {
            let template = serde_json::from_value(r.data.0.clone()).ok()?;
            Some(RevisionRecord {
                revision: revision.to_owned(),
                template,
            })
        })
}

/// Names of this component's ControllerRevisions beyond the history limit
/// (oldest first), never the one named `keep`.
pub fn revisions_to_prune(
    revisions: &[ControllerRevision],
    cluster: &str,
    component: Component,
    keep: &str,
) -> Vec<String> {
    let mut own: Vec<&ControllerRevision> = revisions
        .iter()
        .filter(|r| belongs_to(r, cluster, component))
        .collect();
    own.sort_by_key(|r| std::cmp::Reverse(r.revision));
    own.into_iter()
        .skip(REVISION_HISTORY_LIMIT)
        .filter(|r| {
            r.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(REVISION_LABEL))
                .is_none_or(|v| v != keep)
        })
        .filter_map(|r| r.metadata.name.clone())
        .rev()
        .collect()
}
