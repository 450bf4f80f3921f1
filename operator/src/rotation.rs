//! TURN shared-secret rotation: add a new secret every interval, keep the
//! previous ones until every credential issued with them has expired, then
//! remove them. The secret file holds one secret per line, newest last: TURN
//! accepts all of them, signaling signs with the last.

use k8s_openapi::jiff::Timestamp;

use crate::labels::{self, TURN_SECRET_KEY};
use crate::observed::Observed;
use crate::resource::VideoChatCluster;

pub use crate::labels::SECRET_CREATED_ANNOTATION;

/// Most secrets kept at once, whatever the interval and TTL: bounds the file
/// and the verification work of the TURN servers.
pub const MAX_SECRETS: usize = 8;

/// Shortest rotation interval accepted.
pub use crate::resource::MIN_ROTATION_INTERVAL_SECONDS as MIN_INTERVAL_SECONDS;
/// Parses a rotation interval (the spec's grammar, at least the minimum).
pub use crate::resource::parse_rotation_interval as parse_interval;

/// Rotation timing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationPolicy {
    /// A new secret once the newest is this old.
    pub interval_seconds: i64,
    /// Lifetime of the credentials signaling issues.
    pub credential_ttl_seconds: i64,
    /// Time for a changed Secret to reach every pod's mounted file (the
    /// kubelet syncs mounted Secrets about once a minute); signaling may sign
    /// with a superseded secret that long.
    pub propagation_seconds: i64,
}

impl RotationPolicy {
    /// Default propagation allowance.
    pub const DEFAULT_PROPAGATION_SECONDS: i64 = 120;
}

/// One secret and when it was added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretEntry {
    pub value: String,
    pub created_at: Timestamp,
}

/// What changed in this step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RotationStep {
    /// Nothing to do before `next_change`.
    Unchanged,
    /// The first secret was created.
    Created,
    /// A new secret was appended (the previous ones stay).
    Added,
    /// Superseded secrets past their last credential's expiry were removed.
    Removed,
    /// Both, in one step (an old one expired as the interval came round).
    AddedAndRemoved,
}

/// The secret list to write and when to look again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationPlan {
    pub secrets: Vec<SecretEntry>,
    pub step: RotationStep,
    /// When the next addition or removal is due.
    pub next_change: Option<Timestamp>,
    pub message: String,
}

fn at(seconds: i64) -> Option<Timestamp> {
    Timestamp::from_second(seconds).ok()
}

/// One step of the rotation timeline. `new_secret` is used only when a
/// secret is added (randomness is an input, so the timeline is testable).
pub fn plan_rotation(
    policy: &RotationPolicy,
    current: &[SecretEntry],
    new_secret: &str,
    now: Timestamp,
) -> RotationPlan {
    let mut secrets: Vec<SecretEntry> = current.to_vec();
    let fresh = SecretEntry {
        value: new_secret.to_owned(),
        created_at: now,
    };
    if secrets.is_empty() {
        return RotationPlan {
            secrets: vec![fresh],
            step: RotationStep::Created,
            next_change: at(now.as_second() + policy.interval_seconds),
            message: "created the first TURN secret".to_owned(),
        };
    }
    let keep_for = policy.credential_ttl_seconds + policy.propagation_seconds;
    // Secret i may go once its successor has been signing for a TTL plus
    // propagation: every credential signed with i has expired by then.
    let removable = secrets
        .windows(2)
        .take_while(|pair| now.as_second() >= pair[1].created_at.as_second() + keep_for)
        .count();
    secrets.drain(..removable);

    let newest_age = now.as_second() - secrets.last().map_or(now, |s| s.created_at).as_second();
    let mut added = false;
    let mut message = String::new();
    if newest_age >= policy.interval_seconds {
        if secrets.len() < MAX_SECRETS {
            secrets.push(fresh);
            added = true;
        } else {
            message = format!(
                "rotation due but {MAX_SECRETS} secrets are still valid; the interval is too short for the credential TTL"
            );
        }
    }
    let step = match (added, removable > 0) {
        (false, false) => RotationStep::Unchanged,
        (true, false) => RotationStep::Added,
        (false, true) => RotationStep::Removed,
        (true, true) => RotationStep::AddedAndRemoved,
    };
    if message.is_empty() {
        message = match step {
            RotationStep::Unchanged => format!("{} TURN secret(s) in use", secrets.len()),
            RotationStep::Added => {
                "added a new TURN secret; the previous ones stay until their credentials expire"
                    .to_owned()
            }
            RotationStep::Removed => format!("removed {removable} superseded TURN secret(s)"),
            RotationStep::AddedAndRemoved => {
                format!("added a new TURN secret and removed {removable} superseded one(s)")
            }
            RotationStep::Created => String::new(),
        };
    }
    let next_add = secrets
        .last()
        .map(|s| s.created_at.as_second() + policy.interval_seconds);
    let next_remove = secrets.get(1).map(|s| s.created_at.as_second() + keep_for);
    let next_change = next_add.into_iter().chain(next_remove).min().and_then(at);
    RotationPlan {
        secrets,
        step,
        next_change,
        message,
    }
}

/// The secret file: one secret per line, newest last.
pub fn secret_file(secrets: &[SecretEntry]) -> String {
    let mut text = String::new();
    for secret in secrets {
        text.push_str(&secret.value);
        text.push('\n');
    }
    text
}

/// The [`SECRET_CREATED_ANNOTATION`] value for `secrets`.
pub fn created_annotation(secrets: &[SecretEntry]) -> String {
    secrets
        .iter()
        .map(|s| s.created_at.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads the secret file and its creation annotation back. Lines without a
/// usable creation time (a secret supplied by hand, an edited annotation)
/// count as created `now`: that only delays their removal, never hastens it.
pub fn parse_secrets(file: &str, created: Option<&str>, now: Timestamp) -> Vec<SecretEntry> {
    let times: Vec<Option<Timestamp>> = created
        .map(|text| text.split(',').map(|t| t.trim().parse().ok()).collect())
        .unwrap_or_default();
    let values: Vec<&str> = file
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let aligned = times.len() == values.len();
    values
        .into_iter()
        .enumerate()
        .map(|(i, value)| SecretEntry {
            value: value.to_owned(),
            created_at: if aligned {
                times[i].map_or(now, |t| t.min(now))
            } else {
                now
            },
        })
        .collect()
}

/// Outcome of the rotation step of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationOutcome {
    pub plan: RotationPlan,
    /// Name of the Secret rotated.
    pub secret: String,
}

/// The generated TURN secret file the cluster gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnSecret {
    /// The secret file: one secret per line, newest last.
    pub file: String,
    /// The [`SECRET_CREATED_ANNOTATION`] value, when the spec rotates the secret.
    pub created_annotation: Option<String>,
    /// This step of the rotation, when the spec rotates the secret.
    pub rotation: Option<RotationOutcome>,
}

/// What the TURN secret decision reads.
pub struct TurnSecretInput<'a> {
    pub cluster: &'a VideoChatCluster,
    /// The resource's name.
    pub name: &'a str,
    pub observed: &'a Observed,
    /// Generated by the caller: the first secret, or the next one when a
    /// rotation adds one.
    pub fresh_secret: &'a str,
    pub now: Timestamp,
}

/// The operator-generated TURN secret: kept as observed (or created from
/// `fresh_secret`), and rotated when the spec asks for it. A Secret the user
/// supplied (`turn.sharedSecretRef`) is theirs: None.
pub fn decide_turn_secret(input: &TurnSecretInput<'_>) -> Option<TurnSecret> {
    let turn = &input.cluster.spec.turn;
    if turn.shared_secret_ref.is_some() {
        return None;
    }
    let name = labels::turn_secret_name(input.name);
    let file = input
        .observed
        .secret_value(&name, TURN_SECRET_KEY)
        .unwrap_or_else(|| format!("{}\n", input.fresh_secret));
    // A bad interval is reported by the spec validation before this runs.
    let Some(interval_seconds) = turn
        .secret_rotation
        .as_ref()
        .and_then(|rotation| parse_interval(&rotation.interval).ok())
    else {
        return Some(TurnSecret {
            file,
            created_annotation: None,
            rotation: None,
        });
    };
    let policy = RotationPolicy {
        interval_seconds,
        credential_ttl_seconds: i64::from(turn.credential_ttl_seconds),
        propagation_seconds: RotationPolicy::DEFAULT_PROPAGATION_SECONDS,
    };
    // Creation times live on the Secret as observed; a Secret created by
    // this very plan has none yet and its one secret is new.
    let created = input
        .observed
        .get("Secret", &name)
        .and_then(|o| o.metadata.annotations.as_ref())
        .and_then(|a| a.get(SECRET_CREATED_ANNOTATION))
        .cloned();
    let current = parse_secrets(&file, created.as_deref(), input.now);
    let plan = plan_rotation(&policy, &current, input.fresh_secret, input.now);
    Some(TurnSecret {
        file: secret_file(&plan.secrets),
        created_annotation: Some(created_annotation(&plan.secrets)),
        rotation: Some(RotationOutcome { plan, secret: name }),
    })
}
