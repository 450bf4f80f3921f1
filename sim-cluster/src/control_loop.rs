//! The control loop: on every change in the store (a burst coalesced), and
//! on a short tick for deadlines, one pass of every controller, then one of
//! the node agent's image pulls, as a controller-manager and a kubelet each
//! react to their informers.

use crate::store::Store;
use std::sync::Arc;
use std::time::Duration;

/// Pause between passes when nothing changed (deadline checks).
const TICK: Duration = Duration::from_millis(250);

/// Starts the controllers and, with `images`, the node agent's image pulls.
pub fn spawn(store: Arc<Store>, images: Vec<String>) -> Vec<tokio::task::JoinHandle<()>> {
    let task = tokio::spawn(async move {
        let mut changes = store.subscribe();
        loop {
            tokio::select! {
                received = changes.recv() => {
                    if matches!(received, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                        return;
                    }
                    // Coalesce a burst of changes into one pass.
                    while changes.try_recv().is_ok() {}
                }
                _ = tokio::time::sleep(TICK) => {}
            }
            crate::controllers::run_pass(&store);
            crate::kubelet::pass(&store, &images);
        }
    });
    vec![task]
}
