//! The replica count from load and CPU: targets per pod, tolerance,
//! stabilization windows (as the HorizontalPodAutoscaler), max step, bounds.

use k8s_openapi::jiff::Timestamp;

use super::load::PodLoad;
use super::policy::AutoscalePolicy;
use crate::resource::Recommendation;

/// Most recommendations kept in status; one per distinct replica count is
/// enough for the windows (only the newest time of each value matters).
const MAX_RECOMMENDATIONS: usize = 64;

/// Why the replica count is what it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScaleReason {
    /// No pod reported any configured metric: replicas stay.
    MetricsMissing,
    /// Load within the tolerance of the target.
    WithinTolerance,
    ScaleUp,
    ScaleDown,
    /// A higher recommendation has not held for the scale-up window yet.
    ScaleUpWindow,
    /// A higher recommendation inside the scale-down window keeps replicas.
    ScaleDownWindow,
    /// The step was cut to maxStep.
    MaxStep,
    /// Replicas moved into [min, max] after the bounds changed.
    Bounds,
}

impl ScaleReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MetricsMissing => "MetricsMissing",
            Self::WithinTolerance => "WithinTolerance",
            Self::ScaleUp => "ScaleUp",
            Self::ScaleDown => "ScaleDown",
            Self::ScaleUpWindow => "ScaleUpWindow",
            Self::ScaleDownWindow => "ScaleDownWindow",
            Self::MaxStep => "MaxStep",
            Self::Bounds => "Bounds",
        }
    }
}

/// Outcome of the replica computation.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaDecision {
    pub desired: i32,
    /// The recommendation before windows and step; None without metrics.
    pub raw: Option<i32>,
    pub reason: ScaleReason,
    pub message: String,
    /// Sum of the load gauge over reporting pods.
    pub load: Option<f64>,
    /// Recommendations to keep for the next decision.
    pub recommendations: Vec<Recommendation>,
}

/// Replicas needed for one metric, treating pods without a figure as idle
/// when that argues for more pods and as at target when it argues for fewer,
/// so a missing figure never causes a scale-down. None when no pod reports.
fn replicas_for(
    current: i32,
    tolerance: f64,
    figures: &[Option<f64>],
    target_per_pod: f64,
) -> Option<i32> {
    let reported: Vec<f64> = figures.iter().flatten().copied().collect();
    if reported.is_empty() || target_per_pod <= 0.0 || current <= 0 {
        return None;
    }
    let missing = (figures.len() - reported.len()) as f64;
    let total: f64 = reported.iter().sum();
    let need = |sum: f64| {
        (sum / target_per_pod)
            .ceil()
            .max(1.0)
            .min(f64::from(i32::MAX)) as i32
    };
    let within = |sum: f64| (sum / (f64::from(current) * target_per_pod) - 1.0).abs() <= tolerance;
    let up = total;
    let down = total + missing * target_per_pod;
    if need(up) > current && !within(up) {
        Some(need(up))
    } else if need(down) < current && !within(down) {
        Some(need(down))
    } else {
        Some(current)
    }
}

/// Computes the replica count of one component from its pods' load.
pub fn recommend_replicas(
    policy: &AutoscalePolicy,
    current: i32,
    pods: &[PodLoad],
    history: &[Recommendation],
    now: Timestamp,
) -> ReplicaDecision {
    let live: Vec<&PodLoad> = pods.iter().filter(|p| !p.terminating).collect();
    let load_figures: Vec<Option<f64>> = live.iter().map(|p| p.load).collect();
    let load = {
        let reported: Vec<f64> = load_figures.iter().flatten().copied().collect();
        (!reported.is_empty()).then(|| reported.iter().sum())
    };
    let by_load = policy
        .target_load_per_pod
        .and_then(|target| replicas_for(current, policy.tolerance, &load_figures, target));
    let by_cpu = policy.target_cpu_percent.and_then(|percent| {
        let requests: Vec<f64> = live
            .iter()
            .filter_map(|p| p.cpu_request_millicores)
            .collect();
        if requests.is_empty() {
            return None;
        }
        let mean_request = requests.iter().sum::<f64>() / requests.len() as f64;
        let figures: Vec<Option<f64>> = live.iter().map(|p| p.cpu_millicores).collect();
        replicas_for(
            current,
            policy.tolerance,
            &figures,
            mean_request * percent / 100.0,
        )
    });
    let bounded = |n: i32| {
        n.clamp(
            policy.min_replicas,
            policy.max_replicas.max(policy.min_replicas),
        )
    };
    let mut recommendations: Vec<Recommendation> = history.to_vec();

    let Some(raw) = by_load.into_iter().chain(by_cpu).max() else {
        let desired = bounded(current);
        let (reason, message) = if desired != current {
            (
                ScaleReason::Bounds,
                format!(
                    "no metrics; replicas {current} moved into [{}, {}]",
                    policy.min_replicas, policy.max_replicas
                ),
            )
        } else {
            (
                ScaleReason::MetricsMissing,
                format!("no pod reported load or CPU; replicas stay at {current}"),
            )
        };
        return ReplicaDecision {
            desired,
            raw: None,
            reason,
            message,
            load,
            recommendations: prune(recommendations, policy, now),
        };
    };
    let raw = bounded(raw);
    record(&mut recommendations, raw, now);
    let recommendations = prune(recommendations, policy, now);
    let within = |window: i64| {
        recommendations
            .iter()
            .filter(move |r| now.as_second() - r.time.0.as_second() <= window)
            .map(|r| r.replicas)
    };
    let up_limit = within(policy.scale_up_window_seconds)
        .min()
        .unwrap_or(raw)
        .min(raw);
    let down_limit = within(policy.scale_down_window_seconds)
        .max()
        .unwrap_or(raw)
        .max(raw);
    let stabilized = if current < up_limit {
        up_limit
    } else if current > down_limit {
        down_limit
    } else {
        current
    };
    let step = policy.max_step.max(1);
    let stepped = stabilized.clamp(current.saturating_sub(step), current.saturating_add(step));
    let desired = bounded(stepped);
    let load_text = load.map_or_else(|| "unknown".to_owned(), |l| format!("{l}"));
    let (reason, message) = if desired != stepped {
        (
            ScaleReason::Bounds,
            format!(
                "replicas kept within [{}, {}]",
                policy.min_replicas, policy.max_replicas
            ),
        )
    } else if stepped != stabilized {
        (
            ScaleReason::MaxStep,
            format!(
                "load {load_text} asks for {stabilized} replicas; stepping {current} -> {desired} (maxStep {step})"
            ),
        )
    } else if desired > current {
        (
            ScaleReason::ScaleUp,
            format!("load {load_text} needs {raw} replicas; scaling {current} -> {desired}"),
        )
    } else if desired < current {
        (
            ScaleReason::ScaleDown,
            format!("load {load_text} needs {raw} replicas; scaling {current} -> {desired}"),
        )
    } else if raw > current {
        (
            ScaleReason::ScaleUpWindow,
            format!(
                "load {load_text} asks for {raw} replicas; waiting for the {}s scale-up window",
                policy.scale_up_window_seconds
            ),
        )
    } else if raw < current {
        (
            ScaleReason::ScaleDownWindow,
            format!(
                "load {load_text} asks for {raw} replicas; a higher recommendation within the {}s scale-down window keeps {current}",
                policy.scale_down_window_seconds
            ),
        )
    } else {
        (
            ScaleReason::WithinTolerance,
            format!("load {load_text} fits {current} replicas"),
        )
    };
    ReplicaDecision {
        desired,
        raw: Some(raw),
        reason,
        message,
        load,
        recommendations,
    }
}

/// Adds `raw` to the history. The newest entry is the standing
/// recommendation, stamped when it began; an entry it replaces is stamped
/// with the time it was last recommended (now). A recommendation that does
/// not change leaves the history as it was, so an unchanged load writes no
/// status (a status write per reconcile would be a write per metrics interval
/// for ever).
fn record(history: &mut Vec<Recommendation>, raw: i32, now: Timestamp) {
    match history.last_mut() {
        Some(last) if last.replicas == raw => {}
        Some(last) => {
            last.time = now.into();
            history.push(Recommendation {
                time: now.into(),
                replicas: raw,
            });
        }
        None => history.push(Recommendation {
            time: now.into(),
            replicas: raw,
        }),
    }
}

/// Keeps recommendations inside the longest window (the standing one, the
/// newest, always), only the newest of each replica count, at most
/// [`MAX_RECOMMENDATIONS`], newest last.
fn prune(
    mut recommendations: Vec<Recommendation>,
    policy: &AutoscalePolicy,
    now: Timestamp,
) -> Vec<Recommendation> {
    let horizon = policy
        .scale_up_window_seconds
        .max(policy.scale_down_window_seconds);
    let standing = recommendations.len().saturating_sub(1);
    let mut index = 0;
    recommendations.retain(|r| {
        let keep = index == standing || now.as_second() - r.time.0.as_second() <= horizon;
        index += 1;
        keep
    });
    recommendations.sort_by(|a, b| a.time.cmp(&b.time));
    let mut kept: Vec<Recommendation> = Vec::new();
    for recommendation in recommendations.into_iter().rev() {
        if !kept.iter().any(|k| k.replicas == recommendation.replicas) {
            kept.push(recommendation);
        }
    }
    kept.truncate(MAX_RECOMMENDATIONS);
    kept.reverse();
    kept
}
