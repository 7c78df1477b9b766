//! A write's propagation counts the proxies it configures from counts that PostgreSQL keeps
//! as dataplanes come and go (migration 0023), not by reading the fleet. These tests drive a
//! fleet through everything that changes those counts — registrations, new registrations of
//! a node, what proxies are sent, going offline, pruning, deleted meshes, rolled back batches,
//! several organizations and meshes — and check after each step that the answer equals a
//! count made directly from the dataplanes.

use std::time::Duration;

use serde_json::json;
use trellis_model::config::Reach;
use trellis_model::{MeshId, MeshName, OrgId, OrgSlug};
use trellis_store::testing::TestDb;
use trellis_store::{Dataplane, Precondition, Registration, Store};

const SERVICES: [&str; 4] = ["reviews", "ratings", "details", "productpage"];
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// The mesh revision whose propagation is asked for; proxies sync to revisions around it.
const REVISION: i64 = 5;

fn registration(service: &str, node: &str) -> Registration {
    Registration {
        service: service.into(),
        node_id: node.into(),
        client: "envoy".into(),
        address: None,
        ports: vec![9080],
        tags: json!({}),
        zone: String::new(),
        replica: "r1".into(),
    }
}

/// A small deterministic generator, so that a failure replays.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

async fn mesh(store: &Store, org: OrgId, name: &str) -> MeshId {
    let mut tx = store.tenant(org).await.unwrap();
    let td = format!("{name}.{}.test", org.as_uuid().simple());
    let m = tx
        .put_mesh(&MeshName::parse(name).unwrap(), &td, &json!({}), &json!({}), Precondition::Unconditional)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    m.value.id
}

/// Whether a resource of `reach` targeting `target` configures `d`: the rule, written again
/// from the product's definition, over what the store lists.
fn configures(d: &Dataplane, reach: Reach, target: Option<&str>) -> bool {
    d.online
        && match target {
            None => true,
            Some(t) => {
                (reach.callers && d.calls.iter().any(|c| c == t))
                    || (reach.instances && d.serves && d.service == t)
            }
        }
}

/// For every target (none, each service, one no proxy knows) and every reach, the propagation
/// the API would answer equals the direct count of the mesh's dataplanes.
async fn assert_counts_true(store: &Store, org: OrgId, mesh: MeshId, step: &str) {
    let (fleet, rejecting) = {
        let mut tx = store.tenant(org).await.unwrap();
        let fleet = tx.list_dataplanes(mesh).await.unwrap();
        let ledger = tx.ledger(mesh).await.unwrap();
        let rejecting: Vec<_> = ledger
            .iter()
            .filter(|l| l.nacked_version.is_some() && l.nack_error.is_some())
            .map(|l| l.dataplane_id)
            .collect();
        (fleet, rejecting)
    };
    let targets =
        [None, Some("reviews"), Some("ratings"), Some("details"), Some("productpage"), Some("nobody")];
    let reaches = [
        Reach { callers: true, instances: false },
        Reach { callers: false, instances: true },
        Reach { callers: true, instances: true },
    ];
    for target in targets {
        for reach in reaches {
            let reached: Vec<&Dataplane> = fleet.iter().filter(|d| configures(d, reach, target)).collect();
            let has_applied = |d: &Dataplane| d.synced_revision.is_some_and(|r| r >= REVISION);
            let applied = reached.iter().filter(|d| has_applied(d)).count();
            let rejected = reached.iter().filter(|d| !has_applied(d) && rejecting.contains(&d.id)).count();
            let now = store.propagation_now(org, mesh, REVISION, reach, target, 10_000).await.unwrap();
            let got = &now.reached;
            let what = format!("{step}: target {target:?}, {reach:?}");
            assert_eq!(got.proxies, reached.len() as i64, "proxies, {what}");
            assert_eq!(got.applied, applied as i64, "applied, {what}");
            assert_eq!(got.rejected, rejected as i64, "rejected, {what}");
            // The proxies still waiting are listed by a scan of the fleet (0014): with them,
            // the counts add up too.
            assert_eq!(got.applied + now.waiting.len() as i64, got.proxies, "waiting, {what}");
            assert_eq!(got.rejections.len(), rejected.min(5), "rejections shown, {what}");
        }
    }
}

#[tokio::test]
async fn a_writes_proxy_counts_equal_a_direct_count_through_every_change_of_the_fleet() {
    let db = TestDb::create().await;
    let store = db.store().await;
    let acme = store.create_org(&OrgSlug::parse("acme").unwrap(), "Acme").await.unwrap().id;
    let beta = store.create_org(&OrgSlug::parse("beta").unwrap(), "Beta").await.unwrap().id;
    // Two meshes of one organization and one of another, all named alike where they can be.
    let meshes = [
        (acme, mesh(&store, acme, "shop").await),
        (acme, mesh(&store, acme, "lab").await),
        (beta, mesh(&store, beta, "shop").await),
    ];
    let mut rng = Lcg(11);

    for round in 0..12 {
        // One batch per mesh, as the ledger writer commits them: registrations (new nodes and
        // nodes registering again), what each is sent, syncs, rejections, streams closing.
        for &(org, mesh) in &meshes {
            let mut tx = store.tenant(org).await.unwrap();
            let known = tx.list_dataplanes(mesh).await.unwrap();
            for _ in 0..8 {
                let service = SERVICES[rng.below(SERVICES.len())];
                let node = format!("{service}-{}", rng.below(12));
                let dp = tx.register_dataplane(mesh, &registration(service, &node)).await.unwrap();
                if rng.chance(80) {
                    // Some calls twice, some call their own service.
                    let calls: Vec<String> =
                        (0..rng.below(4)).map(|_| SERVICES[rng.below(SERVICES.len())].to_owned()).collect();
                    tx.dataplane_reach(dp.id, &calls, rng.chance(60)).await.unwrap();
                }
                if rng.chance(50) {
                    tx.dataplane_synced(dp.id, REVISION - 1 + rng.below(3) as i64).await.unwrap();
                }
                if rng.chance(30) {
                    tx.ledger_sent(dp.id, RDS, "v2", "n", REVISION).await.unwrap();
                    tx.ledger_nacked(dp.id, RDS, "v2", "route: refused").await.unwrap();
                } else if rng.chance(30) {
                    tx.ledger_sent(dp.id, RDS, "v3", "n", REVISION).await.unwrap();
                    tx.ledger_acked(dp.id, RDS, "v3", None).await.unwrap();
                }
            }
            for d in &known {
                match rng.below(10) {
                    0 | 1 => tx.dataplane_offline(d.id, d.connected_at).await.unwrap(),
                    2 => {
                        let calls = vec![SERVICES[rng.below(SERVICES.len())].to_owned()];
                        tx.dataplane_reach(d.id, &calls, !d.serves).await.unwrap();
                    }
                    3 => tx.dataplane_reach(d.id, &[], false).await.unwrap(),
                    _ => {}
                }
            }
            tx.commit().await.unwrap();
            assert_counts_true(&store, org, mesh, &format!("round {round}, after a batch")).await;
        }

        // A batch that fails is rolled back with everything it counted.
        let (org, mesh) = meshes[rng.below(meshes.len())];
        let mut tx = store.tenant(org).await.unwrap();
        let dp = tx.register_dataplane(mesh, &registration("reviews", "rolled-back")).await.unwrap();
        tx.dataplane_reach(dp.id, &["ratings".to_owned()], true).await.unwrap();
        drop(tx);
        assert_counts_true(&store, org, mesh, &format!("round {round}, after a rollback")).await;

        if round % 4 == 3 {
            // The leader prunes the proxies offline past the grace period.
            tokio::time::sleep(Duration::from_millis(20)).await;
            store.prune_dataplanes(Duration::from_millis(10)).await.unwrap();
            for &(org, mesh) in &meshes {
                assert_counts_true(&store, org, mesh, &format!("round {round}, after pruning")).await;
            }
        }
    }

    // A mesh deleted with its proxies online goes with its counts; one created again under
    // its name starts from none, and the other meshes keep theirs.
    let (org, lab) = meshes[1];
    let mut tx = store.tenant(org).await.unwrap();
    assert!(tx.list_dataplanes(lab).await.unwrap().iter().any(|d| d.online), "lab has online proxies");
    tx.delete_mesh(lab).await.unwrap();
    tx.commit().await.unwrap();
    let lab = mesh(&store, org, "lab").await;
    assert_counts_true(&store, org, lab, "a mesh created again").await;
    let now =
        store.propagation_now(org, lab, REVISION, Reach { callers: true, instances: true }, None, 10).await;
    assert_eq!(now.unwrap().reached.proxies, 0);
    for &(org, mesh) in [meshes[0], meshes[2]].iter() {
        assert_counts_true(&store, org, mesh, "after another mesh was deleted").await;
    }
}

#[tokio::test]
async fn batches_changing_one_meshs_proxies_in_opposite_orders_both_commit() {
    let db = TestDb::create().await;
    let store = db.store().await;
    let org = store.create_org(&OrgSlug::parse("acme").unwrap(), "Acme").await.unwrap().id;
    let shop = mesh(&store, org, "shop").await;
    let mut tx = store.tenant(org).await.unwrap();
    let mut fleet = Vec::new();
    for node in ["a1", "a2", "b1", "b2"] {
        fleet.push(tx.register_dataplane(shop, &registration("productpage", node)).await.unwrap());
    }
    tx.commit().await.unwrap();

    // Batch A counts a caller of reviews, then of ratings, then a proxy going offline; batch
    // B (another replica's writer), while A is open, a proxy going offline, then callers the
    // other way round. B waits for A; neither is aborted as a deadlock.
    let reviews = vec!["reviews".to_owned()];
    let ratings = vec!["ratings".to_owned()];
    let mut a = store.tenant(org).await.unwrap();
    a.dataplane_reach(fleet[0].id, &reviews, false).await.unwrap();
    let b = {
        let (store, fleet, reviews, ratings) =
            (store.clone(), fleet.clone(), reviews.clone(), ratings.clone());
        tokio::spawn(async move {
            let mut b = store.tenant(org).await?;
            b.dataplane_offline(fleet[2].id, fleet[2].connected_at).await?;
            b.dataplane_reach(fleet[2].id, &ratings, false).await?;
            b.dataplane_reach(fleet[3].id, &reviews, false).await?;
            b.commit().await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.dataplane_reach(fleet[1].id, &ratings, false).await.unwrap();
    a.dataplane_offline(fleet[1].id, fleet[1].connected_at).await.unwrap();
    a.commit().await.unwrap();
    b.await.unwrap().unwrap();

    let callers = Reach { callers: true, instances: false };
    for (service, online_callers) in [("reviews", 2), ("ratings", 0)] {
        let now = store.propagation_now(org, shop, REVISION, callers, Some(service), 10).await.unwrap();
        assert_eq!(now.reached.proxies, online_callers, "{service}");
    }
    assert_counts_true(&store, org, shop, "after both batches").await;
}
