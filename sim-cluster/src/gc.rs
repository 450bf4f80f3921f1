//! The garbage collector: dependents whose owners are all gone are
//! deleted (background propagation); references to gone owners among
//! living ones are dropped.

use crate::store::{ChangeKind, Propagation, Store};
use std::sync::Arc;
use std::time::Duration;

/// Sweep period besides the sweeps that deletions trigger.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

pub fn spawn(store: Arc<Store>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut changes = store.subscribe();
        loop {
            tokio::select! {
                received = changes.recv() => match received {
                    Ok(change) if change.kind != ChangeKind::Deleted => continue,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
            }
            sweep(&store);
        }
    })
}

/// One pass; repeats until no dependent is left dangling (chains such as
/// Deployment → ReplicaSet → Pod go in one sweep).
pub fn sweep(store: &Store) {
    for _ in 0..8 {
        let dangling = store.dangling_dependents();
        if dangling.is_empty() {
            return;
        }
        for (resource, namespace, name, missing, all_gone) in dangling {
            let result = if all_gone {
                store
                    .delete(
                        &resource,
                        Some(&namespace),
                        &name,
                        Propagation::Background,
                        None,
                    )
                    .map(|_| ())
            } else {
                store
                    .drop_owner_refs(&resource, &namespace, &name, &missing)
                    .map(|_| ())
            };
            if let Err(error) = result {
                tracing::debug!(%error, kind = %resource.kind, %namespace, %name, "garbage collection step failed");
            }
        }
    }
}
