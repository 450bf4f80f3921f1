//! Runs the real operator (`videochat_operator::io::controller::run`) against a
//! simulated cluster, each replica on its own thread and runtime so that
//! killing one stops it mid-step, as `kill -9` would: nothing it holds
//! (the Lease) is released.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;
use videochat_operator::io::leader::{LeaderConfig, LeaderElection};
use videochat_operator::metrics::Metrics;

pub struct OperatorReplica {
    pub identity: String,
    pub metrics: Arc<Metrics>,
    kill: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Short lease timings (seconds) so failover fits a test.
pub fn short_election(identity: &str, namespace: &str) -> LeaderElection {
    LeaderElection {
        namespace: namespace.into(),
        lease_name: "videochat-operator".into(),
        identity: identity.into(),
        config: LeaderConfig {
            lease_duration: Duration::from_secs(4),
            renew_deadline: Duration::from_secs(3),
            retry_period: Duration::from_millis(500),
        },
    }
}

impl OperatorReplica {
    pub fn start(
        api: SocketAddr,
        namespace: &str,
        identity: &str,
        election: Option<LeaderElection>,
    ) -> Self {
        let metrics = Arc::new(Metrics::new());
        let (kill, killed) = std::sync::mpsc::channel::<()>();
        let namespace = namespace.to_owned();
        let instance = identity.to_owned();
        let task_metrics = metrics.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("operator runtime");
            runtime.spawn(async move {
                let url: http::Uri = format!("http://{api}").parse().expect("API url");
                let config = kube::Config::new(url);
                let client = kube::Client::try_from(config).expect("operator client");
                let ready = Arc::new(AtomicBool::new(false));
                if let Err(error) = videochat_operator::io::controller::run(
                    client,
                    Some(namespace),
                    task_metrics,
                    ready,
                    Some(instance),
                    election,
                )
                .await
                {
                    tracing::error!(%error, "operator stopped with an error");
                }
            });
            let _ = killed.recv();
            runtime.shutdown_background();
        });
        Self {
            identity: identity.to_owned(),
            metrics,
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    /// Reconciles so far.
    pub fn reconciles(&self) -> u64 {
        self.metrics.reconciles.get()
    }

    /// Stops the replica at once, mid-step, releasing nothing.
    pub fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for OperatorReplica {
    fn drop(&mut self) {
        self.kill();
    }
}
