//! TURN shared-secret rotation: add a new secret every interval, keep the
//! previous ones until every credential issued with them has expired, then
//! remove them. The secret file holds one secret per line, newest last: TURN
//! accepts all of them, signaling signs with the last.

use k8s_openapi::jiff::Timestamp;

/// Secret annotation: creation time of each line of the secret file, comma
/// separated, in the same order.
pub const SECRET_CREATED_ANNOTATION: &str = "videochat.dev/secret-created-at";

/// Most secrets kept at once, whatever the interval and TTL: bounds the file
/// and the verification work of the TURN servers.
pub const MAX_SECRETS: usize = 8;

/// Shortest rotation interval accepted.
pub const MIN_INTERVAL_SECONDS: i64 = 60;

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

/// Parses a rotation interval such as `24h`, `90m`, `7d` or `1h30m`.
pub fn parse_interval(text: &str) -> Result<i64, String> {
    let mut total: i64 = 0;
    let mut number = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(format!("{text:?}: unknown unit {c:?} (use s, m, h or d)")),
        };
        let value: i64 = number
            .parse()
            .map_err(|_| format!("{text:?}: a number must come before {c:?}"))?;
        total = value
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{text:?} is too long"))?;
        number.clear();
    }
    if !number.is_empty() {
        return Err(format!("{text:?}: {number} lacks a unit (s, m, h or d)"));
    }
    if total < MIN_INTERVAL_SECONDS {
        return Err(format!(
            "{text:?} is shorter than the minimum rotation interval of {MIN_INTERVAL_SECONDS}s"
        ));
    }
    Ok(total)
}

/// Outcome of the rotation step of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationOutcome {
    pub plan: RotationPlan,
    /// Name of the Secret rotated.
    pub secret: String,
}

/// Rotates the operator-generated TURN Secret in `objects` when the spec
/// asks for rotation. A Secret the user supplied (`turn.sharedSecretRef`)
/// is theirs to rotate: nothing happens. The new secret's value is
/// `fresh_secret` (generated by the caller).
pub(crate) fn apply_rotation(
    ctx: &crate::plan::Ctx<'_>,
    objects: &mut [kube::api::DynamicObject],
    fresh_secret: &str,
    now: Timestamp,
) -> Result<Option<RotationOutcome>, crate::Error> {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    let turn = &ctx.cluster.spec.turn;
    let Some(rotation) = turn.secret_rotation.as_ref() else {
        return Ok(None);
    };
    if turn.shared_secret_ref.is_some() {
        return Ok(None);
    }
    // A bad interval is reported by the spec validation before this runs.
    let Ok(interval_seconds) = parse_interval(&rotation.interval) else {
        return Ok(None);
    };
    let policy = RotationPolicy {
        interval_seconds,
        credential_ttl_seconds: i64::from(turn.credential_ttl_seconds),
        propagation_seconds: RotationPolicy::DEFAULT_PROPAGATION_SECONDS,
    };
    let name = crate::labels::turn_secret_name(&ctx.name);
    let key = crate::plan::TURN_SECRET_KEY;
    let Some(object) = objects.iter_mut().find(|o| {
        crate::plan::type_of(o).1 == "Secret" && o.metadata.name.as_deref() == Some(name.as_str())
    }) else {
        return Ok(None);
    };
    let file = object
        .data
        .get("data")
        .and_then(|d| d.get(key))
        .and_then(|v| v.as_str())
        .and_then(|encoded| STANDARD.decode(encoded).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .unwrap_or_default();
    // Creation times live on the Secret as observed; a Secret created by
    // this very plan has none yet and its one secret is new.
    let created = ctx
        .observed
        .get("Secret", &name)
        .and_then(|o| o.metadata.annotations.as_ref())
        .and_then(|a| a.get(SECRET_CREATED_ANNOTATION))
        .cloned();
    let current = parse_secrets(&file, created.as_deref(), now);
    let plan = plan_rotation(&policy, &current, fresh_secret, now);
    let encoded = STANDARD.encode(secret_file(&plan.secrets));
    if let Some(data) = object.data.get_mut("data").and_then(|d| d.as_object_mut()) {
        data.insert(key.into(), serde_json::Value::String(encoded));
    }
    object
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(
            SECRET_CREATED_ANNOTATION.into(),
            created_annotation(&plan.secrets),
        );
    Ok(Some(RotationOutcome { plan, secret: name }))
}
