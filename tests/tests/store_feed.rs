//! The change feed against real PostgreSQL: keys-only notifications, and no mesh missed
//! across a forced disconnect or a notification that never came.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::json;
use sqlx::postgres::PgListener;
use tokio::sync::Mutex;
use trellis_model::{MeshId, MeshName, OrgId, OrgSlug, ResourceName};
use trellis_store::testing::TestDb;
use trellis_store::{ChangeFeed, FeedOptions, Precondition, Store};

type Heads = Arc<Mutex<HashMap<(OrgId, MeshId), i64>>>;

/// Drains the feed into a map of the last revision seen per mesh.
fn follow(mut feed: ChangeFeed) -> (Heads, Arc<trellis_store::FeedStats>) {
    let heads: Heads = Arc::default();
    let stats = feed.stats();
    let h = heads.clone();
    tokio::spawn(async move {
        while let Some(c) = feed.recv().await {
            let mut h = h.lock().await;
            if c.is_deleted() {
                h.remove(&(c.org, c.mesh));
            } else {
                let e = h.entry((c.org, c.mesh)).or_insert(0);
                assert!(c.revision > *e, "feed went backwards: {c:?} after {e}");
                *e = c.revision;
            }
        }
    });
    (heads, stats)
}

async fn db_heads(store: &Store) -> HashMap<(OrgId, MeshId), i64> {
    store.mesh_heads().await.unwrap().into_iter().map(|c| ((c.org, c.mesh), c.revision)).collect()
}

/// Waits until the feed has delivered exactly the database's heads; returns the meshes
/// whose latest revision it has not delivered.
async fn missed(store: &Store, heads: &Heads, within: Duration) -> Vec<(OrgId, MeshId)> {
    let want = db_heads(store).await;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let got = heads.lock().await.clone();
        let missing: Vec<_> = want.iter().filter(|(k, r)| got.get(k) != Some(r)).map(|(k, _)| *k).collect();
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three organizations with `per_org` meshes each.
async fn meshes(store: &Store, per_org: usize) -> Vec<(OrgId, MeshId)> {
    let mut out = Vec::new();
    for o in 0..3 {
        let org = store.create_org(&OrgSlug::parse(&format!("org-{o}")).unwrap(), "o").await.unwrap();
        let mut tx = store.tenant(org.id).await.unwrap();
        for m in 0..per_org {
            let mesh = tx
                .put_mesh(
                    &MeshName::parse(&format!("mesh-{m}")).unwrap(),
                    &format!("m{m}.{}.test", org.id),
                    &json!({}),
                    &json!({}),
                    Precondition::Unconditional,
                )
                .await
                .unwrap()
                .value;
            out.push((org.id, mesh.id));
        }
        tx.commit().await.unwrap();
    }
    out
}

#[tokio::test]
async fn notifications_carry_keys_only() {
    let db = TestDb::create().await;
    let store = db.store().await;
    let keys = meshes(&store, 1).await;
    let (org, mesh) = keys[0];

    let pool = sqlx::PgPool::connect_with(db.roles.app.clone()).await.unwrap();
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen("trellis_mesh_changed").await.unwrap();

    // A large spec: none of it may travel in the notification.
    let big = "x".repeat(20_000);
    let mut tx = store.tenant(org).await.unwrap();
    tx.put_resource(
        mesh,
        "Service",
        &ResourceName::parse("web").unwrap(),
        &json!({ "note": big }),
        &json!({}),
        Precondition::Unconditional,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let n = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await.unwrap().unwrap();
    let revision = db_heads(&store).await[&(org, mesh)];
    assert_eq!(n.payload(), format!("{org}/{mesh}/{revision}"));
    assert!(n.payload().len() < 100, "payload is {} bytes", n.payload().len());
}

#[tokio::test]
async fn a_write_bumps_the_revision_in_the_same_transaction() {
    let db = TestDb::create().await;
    let store = db.store().await;
    let (org, mesh) = meshes(&store, 1).await[0];
    let before = db_heads(&store).await[&(org, mesh)];
    let mut tx = store.tenant(org).await.unwrap();
    tx.put_resource(
        mesh,
        "Service",
        &ResourceName::parse("a").unwrap(),
        &json!({}),
        &json!({}),
        Precondition::Unconditional,
    )
    .await
    .unwrap();
    drop(tx); // rolled back: neither the row nor the bump may remain
    assert_eq!(db_heads(&store).await[&(org, mesh)], before);
    let mut tx = store.tenant(org).await.unwrap();
    tx.put_resource(
        mesh,
        "Service",
        &ResourceName::parse("a").unwrap(),
        &json!({}),
        &json!({}),
        Precondition::Unconditional,
    )
    .await
    .unwrap();
    tx.delete_resource(mesh, "Service", &ResourceName::parse("a").unwrap(), None).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(db_heads(&store).await[&(org, mesh)], before + 2);
}

#[tokio::test]
async fn no_mesh_is_missed_across_forced_disconnects() {
    let db = TestDb::create().await;
    let store = db.store().await;
    let keys = meshes(&store, 34).await; // 102 meshes
    // A reconcile period far beyond the test, so only the reconnect resync can recover.
    let options = FeedOptions { reconcile_every: Duration::from_secs(3600), ..FeedOptions::default() };
    let (heads, stats) = follow(ChangeFeed::start(&store, options));
    assert!(missed(&store, &heads, Duration::from_secs(10)).await.is_empty(), "initial sync");
    assert_eq!(stats.connects.load(Ordering::Relaxed), 1);

    // Keep killing the feed's connection while 1,000 writes land.
    let mut admin = db.admin_conn().await;
    let killer = tokio::spawn(async move {
        let mut kills = 0u32;
        for _ in 0..60 {
            let n: Vec<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND application_name = 'trellis-feed'",
            )
            .fetch_all(&mut admin)
            .await
            .unwrap();
            kills += n.into_iter().filter(|k| *k).count() as u32;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        kills
    });
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            let keys = keys.clone();
            tokio::spawn(async move {
                for i in 0..250 {
                    let (org, mesh) = keys[(w * 250 + i) % keys.len()];
                    let mut tx = store.tenant(org).await.unwrap();
                    let name = ResourceName::parse(&format!("svc-{}", i % 7)).unwrap();
                    tx.put_resource(
                        mesh,
                        "Service",
                        &name,
                        &json!({ "i": i }),
                        &json!({}),
                        Precondition::Unconditional,
                    )
                    .await
                    .unwrap();
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let kills = killer.await.unwrap();
    assert!(kills >= 2, "the listener was killed only {kills} times");

    let missing = missed(&store, &heads, Duration::from_secs(20)).await;
    assert!(missing.is_empty(), "{} changed meshes missed: {missing:?}", missing.len());
    assert!(stats.connects.load(Ordering::Relaxed) >= 2, "the feed never reconnected");
    assert!(stats.recovered.load(Ordering::Relaxed) > 0, "no change had to be recovered by resync");
}

#[tokio::test]
async fn the_periodic_reconcile_finds_a_change_that_was_never_notified() {
    let db = TestDb::create().await;
    let store = db.store().await;
    let keys = meshes(&store, 2).await;
    let options = FeedOptions { reconcile_every: Duration::from_millis(200), ..FeedOptions::default() };
    let (heads, stats) = follow(ChangeFeed::start(&store, options));
    assert!(missed(&store, &heads, Duration::from_secs(10)).await.is_empty());

    // A superuser with triggers off bumps a revision and sends nothing.
    let mut admin = db.admin_conn().await;
    sqlx::query("SET session_replication_role = replica").execute(&mut admin).await.unwrap();
    sqlx::query("UPDATE meshes SET revision = revision + 10 WHERE id = $1")
        .bind(keys[3].1.as_uuid())
        .execute(&mut admin)
        .await
        .unwrap();
    let missing = missed(&store, &heads, Duration::from_secs(10)).await;
    assert!(missing.is_empty(), "reconcile missed {missing:?}");
    assert!(stats.recovered.load(Ordering::Relaxed) >= 1);

    // A deleted mesh is reported as such.
    let (org, mesh) = keys[0];
    let mut tx = store.tenant(org).await.unwrap();
    tx.delete_mesh(mesh).await.unwrap();
    tx.commit().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while heads.lock().await.contains_key(&(org, mesh)) {
        assert!(tokio::time::Instant::now() < deadline, "deletion never delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
