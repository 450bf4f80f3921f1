//! Leader election with two controller instances against the in-memory API
//! double: only the Lease holder writes; the other takes over after the
//! first stops (at once when it releases the Lease, after the lease
//! duration when it just dies).

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use support::*;
use tokio::sync::watch;
use videochat_operator::VideoChatCluster;
use videochat_operator::io::controller::{self, Context};
use videochat_operator::io::leader::{LeaderConfig, LeaderElection, LeaderElector, spawn_elector};
use videochat_operator::metrics::Metrics;
use videochat_operator::testing::ApiDouble;

const NS: &str = "videochat";
const LEASE_NS: &str = "videochat-system";

/// The double, seen through one controller instance: counts that
/// instance's writes to anything but the Lease and Events.
#[derive(Clone)]
struct Instance {
    double: ApiDouble,
    writes: Arc<Mutex<Vec<String>>>,
}

impl tower::Service<Request<Body>> for Instance {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let path = request.uri().path().to_owned();
        if request.method() != http::Method::GET
            && !path.contains("/leases")
            && !path.contains("/events")
        {
            self.writes
                .lock()
                .expect("lock")
                .push(format!("{} {path}", request.method()));
        }
        self.double.call(request)
    }
}

impl Instance {
    fn new(double: &ApiDouble) -> Self {
        Self {
            double: double.clone(),
            writes: Arc::default(),
        }
    }
    fn client(&self) -> kube::Client {
        kube::Client::new(self.clone(), "default")
    }
    fn writes(&self) -> usize {
        self.writes.lock().expect("lock").len()
    }
}

fn fast() -> LeaderConfig {
    LeaderConfig {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1300),
        retry_period: Duration::from_millis(100),
    }
}

fn election(identity: &str) -> LeaderElection {
    LeaderElection {
        namespace: LEASE_NS.into(),
        lease_name: "videochat-operator".into(),
        identity: identity.into(),
        config: fast(),
    }
}

fn double_with_cluster() -> ApiDouble {
    let double = ApiDouble::new();
    let mut value = serde_json::to_value(sample("minimal")).expect("json");
    value["metadata"].as_object_mut().map(|m| m.remove("uid"));
    double.insert(value);
    double
}

fn stored_cluster(double: &ApiDouble) -> Arc<VideoChatCluster> {
    let value = double
        .get("videochat.dev/v1alpha1", "VideoChatCluster", NS, "demo")
        .expect("cluster stored");
    Arc::new(serde_json::from_value(value).expect("cluster parses"))
}

fn holder(double: &ApiDouble) -> Option<String> {
    double
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            LEASE_NS,
            "videochat-operator",
        )?
        .pointer("/spec/holderIdentity")?
        .as_str()
        .map(str::to_owned)
}

async fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn reconcile(double: &ApiDouble, ctx: &Arc<Context>) {
    controller::reconcile(stored_cluster(double), ctx.clone())
        .await
        .expect("reconcile succeeds");
}

fn context(instance: &Instance, leading: watch::Receiver<bool>) -> Arc<Context> {
    Arc::new(Context::new(instance.client(), Arc::new(Metrics::new()), None).with_leader(leading))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes_and_the_other_takes_over_when_it_stops() {
    let double = double_with_cluster();
    let a = Instance::new(&double);
    let b = Instance::new(&double);
    let (a_leading, a_stop, a_task) = spawn_elector(a.client(), election("operator-a"));
    wait_until("a leads", Duration::from_secs(5), || *a_leading.borrow()).await;
    let (b_leading, b_stop, b_task) = spawn_elector(b.client(), election("operator-b"));
    let a_ctx = context(&a, a_leading.clone());
    let b_ctx = context(&b, b_leading.clone());

    // Both reconcile for a while; only a writes.
    for _ in 0..5 {
        reconcile(&double, &a_ctx).await;
        reconcile(&double, &b_ctx).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(a.writes() > 0, "the leader created the children");
    assert_eq!(b.writes(), 0, "the follower wrote nothing");
    assert!(!*b_leading.borrow());
    assert_eq!(holder(&double).as_deref(), Some("operator-a"));

    // a stops cleanly: it releases the Lease, b takes over well within
    // one lease duration, and from then on b's reconciles write.
    a_stop.send(()).expect("a's elector runs");
    a_task.await.expect("a's elector ends");
    assert!(!a_ctx.is_leader(), "a stopped elector means not leading");
    wait_until("b leads", Duration::from_secs(1), || *b_leading.borrow()).await;
    assert_eq!(holder(&double).as_deref(), Some("operator-b"));

    let mut cluster = serde_json::to_value(&*stored_cluster(&double)).expect("json");
    cluster["spec"]["signaling"]["replicas"] = serde_json::json!(3);
    double.insert(cluster);
    let before = a.writes();
    reconcile(&double, &a_ctx).await;
    reconcile(&double, &b_ctx).await;
    assert_eq!(a.writes(), before, "a no longer writes");
    assert!(b.writes() > 0, "b applies the change");

    b_stop.send(()).expect("b's elector runs");
    b_task.await.expect("b's elector ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_leader_is_replaced_after_the_lease_duration() {
    let double = ApiDouble::new();
    let a = Instance::new(&double);
    let b = Instance::new(&double);
    let (a_leading, _a_stop, a_task) = spawn_elector(a.client(), election("operator-a"));
    wait_until("a leads", Duration::from_secs(5), || *a_leading.borrow()).await;
    let (b_leading, _b_stop, b_task) = spawn_elector(b.client(), election("operator-b"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!*b_leading.borrow(), "b follows while a renews");

    // a dies without releasing the Lease.
    a_task.abort();
    let died = tokio::time::Instant::now();
    wait_until("b leads", Duration::from_secs(5), || *b_leading.borrow()).await;
    let waited = died.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "b took over after {waited:?}, before a's lease ran out"
    );
    assert!(
        waited < Duration::from_secs(4),
        "b took over only after {waited:?}"
    );
    assert_eq!(holder(&double).as_deref(), Some("operator-b"));
    let transitions = double
        .get(
            "coordination.k8s.io/v1",
            "Lease",
            LEASE_NS,
            "videochat-operator",
        )
        .and_then(|l| l.pointer("/spec/leaseTransitions").and_then(|t| t.as_i64()));
    assert_eq!(transitions, Some(1));
    b_task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_race_is_not_leadership() {
    // Two electors write the same Lease version: the API server lets one
    // win (409 for the other), so there is never more than one leader.
    let double = ApiDouble::new();
    let a = Instance::new(&double);
    let b = Instance::new(&double);
    let api_a = kube::Api::namespaced(a.client(), LEASE_NS);
    let api_b = kube::Api::namespaced(b.client(), LEASE_NS);
    let mut first = LeaderElector::new(api_a, "race", "operator-a", fast());
    let mut second = LeaderElector::new(api_b, "race", "operator-b", fast());
    let (got_a, got_b) = tokio::join!(first.try_acquire_or_renew(), second.try_acquire_or_renew());
    let got = [got_a.expect("a's round"), got_b.expect("b's round")];
    assert_eq!(
        got.iter().filter(|l| **l).count(),
        1,
        "exactly one leader: {got:?}"
    );
    // The loser keeps following on the next round.
    let (again_a, again_b) =
        tokio::join!(first.try_acquire_or_renew(), second.try_acquire_or_renew());
    assert_eq!([again_a.expect("a"), again_b.expect("b")], got);
}
