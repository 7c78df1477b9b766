//! Leader election against real PostgreSQL: never two leaders, and a bounded handoff.

use std::time::Duration;

use tokio::time::Instant;
use trellis_store::testing::TestDb;
use trellis_store::{LeaderElector, LeaderOptions};

fn options(name: &str) -> LeaderOptions {
    LeaderOptions {
        check_every: Duration::from_millis(100),
        lease: Duration::from_millis(400),
        retry_every: Duration::from_millis(100),
        application_name: name.into(),
        ..LeaderOptions::default()
    }
}

/// Samples both electors every 2 ms until `until` holds or `within` passes; panics if both
/// ever lead at once. Returns the time `until` took.
async fn sample(
    a: &LeaderElector,
    b: &LeaderElector,
    within: Duration,
    until: impl Fn(bool, bool) -> bool,
) -> Duration {
    let start = Instant::now();
    let mut samples = 0u64;
    loop {
        let (la, lb) = (a.is_leader(), b.is_leader());
        samples += 1;
        assert!(!(la && lb), "two leaders at once after {samples} samples");
        if until(la, lb) {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "condition not reached within {within:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn exactly_one_leads_and_a_killed_leader_hands_over_within_two_seconds() {
    let db = TestDb::create().await;
    let a = LeaderElector::start(db.roles.app.clone(), options("leader-a"));
    let b = LeaderElector::start(db.roles.app.clone(), options("leader-b"));

    sample(&a, &b, Duration::from_secs(5), |la, lb| la || lb).await;
    // Stable: over a second of sampling, never both and never neither.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        let (la, lb) = (a.is_leader(), b.is_leader());
        assert!(la ^ lb, "leaders: a={la} b={lb}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    // Kill the leader's database session, as a crash or a network cut would.
    let (leader_name, a_led) = if a.is_leader() { ("leader-a", true) } else { ("leader-b", false) };
    let mut admin = db.admin_conn().await;
    let killed: bool = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND application_name = $1",
    )
    .bind(leader_name)
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(killed);
    let took =
        sample(&a, &b, Duration::from_secs(2), |la, lb| if a_led { lb && !la } else { la && !lb }).await;
    eprintln!("handoff after a killed session took {took:?}");

    // A leader that stops releases the role to the other at once (after its lease).
    let (leader, follower) = if a.is_leader() { (a, b) } else { (b, a) };
    leader.stop().await;
    let start = Instant::now();
    while !follower.is_leader() {
        assert!(start.elapsed() < Duration::from_secs(2), "no takeover after a clean stop");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    follower.stop().await;
}

#[tokio::test]
async fn elections_in_different_databases_do_not_interfere() {
    let one = TestDb::create().await;
    let two = TestDb::create().await;
    let a = LeaderElector::start(one.roles.app.clone(), options("leader-a"));
    let b = LeaderElector::start(two.roles.app.clone(), options("leader-b"));
    let start = Instant::now();
    while !(a.is_leader() && b.is_leader()) {
        assert!(start.elapsed() < Duration::from_secs(5), "each database should have its own leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    a.stop().await;
    b.stop().await;
}
