//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator
//! replicas can run and only one reconciles.
//!
//! The decision is pure ([`decide_lease`]); [`LeaderElector`] does the
//! reads and writes. Expiry is judged on this replica's own clock from when
//! it first saw the holder's current renewal (as client-go does), so clock
//! skew between replicas does not matter. Writes carry the Lease's
//! resourceVersion: when two replicas race, the API server lets one win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tokio::sync::watch;

use crate::error::Error;

/// Timing of the election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderConfig {
    /// A holder that has not renewed for this long may be replaced.
    pub lease_duration: Duration,
    /// The leader stops reconciling when it could not renew for this long
    /// (shorter than `lease_duration`, so it stops before anyone takes over).
    pub renew_deadline: Duration,
    /// Pause between attempts (renewals of the leader, tries of the others).
    pub retry_period: Duration,
}

impl Default for LeaderConfig {
    /// client-go's defaults.
    fn default() -> Self {
        Self {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What to do with the Lease.
#[derive(Clone, Debug, PartialEq)]
pub enum LeaseDecision {
    /// Become the holder: the Lease is free, released, or expired.
    Acquire(LeaseSpec),
    /// Stay the holder: write a new renewTime.
    Renew(LeaseSpec),
    /// Someone else holds it until at least `expires_at`.
    Follow {
        holder: String,
        expires_at: Timestamp,
    },
}

/// Decides from the current Lease spec (None when there is no Lease),
/// `seen_since` (when this replica first saw the current holder and renewal
/// time), our identity and lease duration, and `now`.
pub fn decide_lease(
    current: Option<&LeaseSpec>,
    seen_since: Timestamp,
    identity: &str,
    lease_duration_seconds: i32,
    now: Timestamp,
) -> LeaseDecision {
    let holder = current
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty());
    let transitions = current.and_then(|s| s.lease_transitions).unwrap_or(0);
    let acquire = |transitions: i32| LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        lease_duration_seconds: Some(lease_duration_seconds),
        acquire_time: Some(MicroTime(now)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..LeaseSpec::default()
    };
    match holder {
        None => LeaseDecision::Acquire(acquire(if current.is_some() {
            transitions.saturating_add(1)
        } else {
            0
        })),
        Some(holder) if holder == identity => {
            let mut spec = current.cloned().unwrap_or_default();
            spec.renew_time = Some(MicroTime(now));
            spec.lease_duration_seconds = Some(lease_duration_seconds);
            LeaseDecision::Renew(spec)
        }
        Some(holder) => {
            let duration = current
                .and_then(|s| s.lease_duration_seconds)
                .unwrap_or(lease_duration_seconds)
                .max(1);
            let expires = seen_since
                .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(i64::from(
                    duration,
                )))
                .unwrap_or(now);
            if now >= expires {
                LeaseDecision::Acquire(acquire(transitions.saturating_add(1)))
            } else {
                LeaseDecision::Follow {
                    holder: holder.to_owned(),
                    expires_at: expires,
                }
            }
        }
    }
}

/// Who holds a Lease and since when we see that holding (the expiry clock).
#[derive(Clone, Debug, PartialEq)]
struct SeenRecord {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    since: Timestamp,
}

/// Takes part in the election for one Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    lease_name: String,
    identity: String,
    config: LeaderConfig,
    seen: Option<SeenRecord>,
}

impl LeaderElector {
    pub fn new(
        api: Api<Lease>,
        lease_name: impl Into<String>,
        identity: impl Into<String>,
        config: LeaderConfig,
    ) -> Self {
        Self {
            api,
            lease_name: lease_name.into(),
            identity: identity.into(),
            config,
            seen: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn lease_error(&self, message: impl std::fmt::Display) -> Error {
        Error::Lease {
            lease: self.lease_name.clone(),
            message: message.to_string(),
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.config.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    /// One round: create, take over, renew or follow. Ok(true) when we hold
    /// the Lease after the round. Losing a race (409) is Ok(false).
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, Error> {
        let now = Timestamp::now();
        let existing = self
            .api
            .get_opt(&self.lease_name)
            .await
            .map_err(|e| self.lease_error(format!("read failed: {e}")))?;
        let spec = existing.as_ref().and_then(|l| l.spec.clone());
        let observed = SeenRecord {
            holder: spec.as_ref().and_then(|s| s.holder_identity.clone()),
            renew_time: spec.as_ref().and_then(|s| s.renew_time.clone()),
            since: now,
        };
        let since = match &self.seen {
            Some(seen)
                if seen.holder == observed.holder && seen.renew_time == observed.renew_time =>
            {
                seen.since
            }
            _ => {
                self.seen = Some(observed);
                now
            }
        };
        let new_spec = match decide_lease(
            spec.as_ref(),
            since,
            &self.identity,
            self.duration_seconds(),
            now,
        ) {
            LeaseDecision::Follow { .. } => return Ok(false),
            LeaseDecision::Acquire(spec) | LeaseDecision::Renew(spec) => spec,
        };
        let written = match existing {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.lease_name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(new_spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                // resourceVersion stays as read: a concurrent write makes this a 409.
                lease.spec = Some(new_spec);
                self.api
                    .replace(&self.lease_name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(lease) => {
                let spec = lease.spec.unwrap_or_default();
                self.seen = Some(SeenRecord {
                    holder: spec.holder_identity.clone(),
                    renew_time: spec.renew_time.clone(),
                    since: now,
                });
                Ok(spec.holder_identity.as_deref() == Some(self.identity.as_str()))
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(self.lease_error(format!("write failed: {e}"))),
        }
    }

    /// Gives the Lease up (holder cleared) so another replica takes over at
    /// once instead of after the lease duration. Only when we hold it.
    pub async fn release(&mut self) -> Result<(), Error> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.lease_name)
            .await
            .map_err(|e| self.lease_error(format!("read failed: {e}")))?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.acquire_time = None;
        spec.renew_time = None;
        match self
            .api
            .replace(&self.lease_name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(e) => Err(self.lease_error(format!("release failed: {e}"))),
        }
    }

    /// Runs the election until `shutdown` resolves, publishing whether we
    /// lead on `leading`. A leader that cannot renew within the renew
    /// deadline steps down before anyone else can take over. On shutdown
    /// the Lease is released.
    pub async fn run(
        mut self,
        leading: watch::Sender<bool>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let mut last_renewal: Option<tokio::time::Instant> = None;
        loop {
            let round = self.try_acquire_or_renew().await;
            let now = tokio::time::Instant::now();
            match round {
                Ok(true) => {
                    if last_renewal.is_none() {
                        tracing::info!(identity = %self.identity, lease = %self.lease_name, "became leader");
                    }
                    last_renewal = Some(now);
                    leading.send_replace(true);
                }
                Ok(false) | Err(_) => {
                    if let Err(e) = &round {
                        tracing::warn!(identity = %self.identity, error = %e, "leader election round failed");
                    }
                    if let Some(renewed) = last_renewal
                        && (round.as_ref().is_ok_and(|held| !held)
                            || now.duration_since(renewed) >= self.config.renew_deadline)
                    {
                        tracing::warn!(identity = %self.identity, lease = %self.lease_name, "lost leadership");
                        last_renewal = None;
                        leading.send_replace(false);
                    }
                }
            }
            tokio::select! {
                () = &mut shutdown => break,
                () = tokio::time::sleep(self.config.retry_period) => {}
            }
        }
        leading.send_replace(false);
        if last_renewal.is_some()
            && let Err(e) = self.release().await
        {
            tracing::warn!(identity = %self.identity, error = %e, "could not release the Lease");
        }
    }
}

/// Where and as whom a replica takes part in the election.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    /// Namespace of the Lease: the operator's own.
    pub namespace: String,
    pub lease_name: String,
    /// This replica's name in the Lease (the pod name).
    pub identity: String,
    pub config: LeaderConfig,
}

/// Starts the elector for `election`: returns whether we lead (a watch),
/// a sender that stops it (the Lease is then released) and its task.
pub fn spawn_elector(
    client: kube::Client,
    election: LeaderElection,
) -> (
    watch::Receiver<bool>,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (leading_tx, leading_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let elector = LeaderElector::new(
        Api::namespaced(client, &election.namespace),
        election.lease_name,
        election.identity,
        election.config,
    );
    let task = tokio::spawn(elector.run(leading_tx, async move {
        // A dropped sender stops the elector as well.
        let _ = stop_rx.await;
    }));
    (leading_rx, stop_tx, task)
}
