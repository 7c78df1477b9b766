//! The issuance path's cache against the real store: two authorities on one database stand
//! for two replicas, and neither follows a change feed here, so every cached mesh is stale
//! after the other one changes it. What a stale cache may never do: sign a leaf that the
//! rotation status does not count, or sign with a CA that is no longer active; and a
//! retired root stops authenticating once the change is known (or after 2 s at most).

use std::time::Duration;

use serde_json::json;
use trellis_ca::{Kek, KeyRing};
use trellis_model::{MeshId, MeshName, OrgId, OrgSlug, ResourceName, Token, TokenKind, token_sha256};
use trellis_pki::{Authority, Issued, PkiError};
use trellis_store::testing::TestDb;
use trellis_store::{MeshChange, Precondition, Store};

static REVIEWS: std::sync::LazyLock<ResourceName> =
    std::sync::LazyLock::new(|| ResourceName::parse("reviews").unwrap());

struct Fixture {
    org: OrgId,
    mesh: MeshId,
}

async fn mesh(store: &Store, a: &Authority) -> Fixture {
    let org = store.create_org(&OrgSlug::parse("acme").unwrap(), "Acme").await.unwrap();
    mesh_in(store, a, org.id).await
}

/// The mesh `shop` (trust domain `shop.acme.test`) with its root and the service `reviews`,
/// in `org`.
async fn mesh_in(store: &Store, a: &Authority, org: OrgId) -> Fixture {
    let mut tx = store.tenant(org).await.unwrap();
    let put = tx
        .put_mesh(
            &MeshName::parse("shop").unwrap(),
            "shop.acme.test",
            &json!({}),
            &json!({}),
            Precondition::Unconditional,
        )
        .await
        .unwrap();
    a.create_root(&mut tx, &put.value).await.unwrap();
    let spec = json!({"ports": [{"port": 9080, "protocol": "http"}]});
    tx.put_resource(put.value.id, "Service", &REVIEWS, &spec, &json!({}), Precondition::Unconditional)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    Fixture { org, mesh: put.value.id }
}

async fn join_token(store: &Store, f: &Fixture, single_use: bool) -> String {
    let token =
        Token::new(TokenKind::Join, f.org, rand::random::<[u8; trellis_model::SECRET_LEN]>()).to_string();
    let mut tx = store.tenant(f.org).await.unwrap();
    let expires = chrono::Utc::now() + chrono::Duration::hours(1);
    tx.create_join_token(f.mesh, &token_sha256(&token), "reviews", &json!({}), single_use, "test", expires)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    token
}

fn csr() -> Vec<u8> {
    trellis_ca::workload_key_and_csr().unwrap().1.into_bytes()
}

/// Live leaves per CA state, from the rotation status.
async fn live(store: &Store, a: &Authority, f: &Fixture) -> Vec<(&'static str, i64)> {
    let mut tx = store.tenant(f.org).await.unwrap();
    let m = tx.mesh_by_id(f.mesh).await.unwrap().unwrap();
    let st = a.status(&mut tx, &m).await.unwrap();
    tx.commit().await.unwrap();
    let mut out: Vec<_> = st.cas.iter().map(|c| (c.state, c.live_leaves)).collect();
    out.sort();
    out
}

async fn rotate(store: &Store, b: &Authority, f: &Fixture) {
    let mut tx = store.tenant(f.org).await.unwrap();
    let m = tx.mesh_by_id(f.mesh).await.unwrap().unwrap();
    b.prepare_rotation(&mut tx, &m).await.unwrap();
    b.activate(&mut tx, &m).await.unwrap();
    tx.commit().await.unwrap();
}

fn chain(i: &Issued) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    trellis_tests::grpc::certs(&i.svid.chain_pem)
}

/// Retires the previous CA, forced (its leaves still live).
async fn retire_previous(store: &Store, b: &Authority, f: &Fixture) {
    try_retire_previous(store, b, f, true).await.unwrap();
}

async fn try_retire_previous(store: &Store, b: &Authority, f: &Fixture, force: bool) -> Result<(), PkiError> {
    let mut tx = store.tenant(f.org).await.unwrap();
    let m = tx.mesh_by_id(f.mesh).await.unwrap().unwrap();
    let st = b.status(&mut tx, &m).await.unwrap();
    let old = st.cas.iter().find(|c| c.state == "previous").unwrap().id;
    b.retire(&mut tx, &m, old, force).await?;
    tx.commit().await.unwrap();
    Ok(())
}

/// A fresh database with one mesh, and two authorities on it (two replicas' caches).
async fn setup() -> (TestDb, Store, Authority, Authority, Fixture) {
    trellis_tests::init();
    let db = TestDb::create().await;
    let store = db.store().await;
    let (a, b) = (authority(&store), authority(&store));
    let f = mesh(&store, &a).await;
    (db, store, a, b, f)
}

fn authority(store: &Store) -> Authority {
    let ring = KeyRing::new(Kek::new("test", [7u8; 32]).unwrap());
    Authority::new(store.clone(), ring, Default::default())
}

#[tokio::test]
async fn a_stale_cache_never_signs_with_a_ca_that_stopped_being_active() {
    let (_db, store, a, b, f) = setup().await;
    let token = join_token(&store, &f, false).await;

    // Replica A caches the mesh while issuing.
    let first = a.issue_with_join_token(&token, &csr()).await.unwrap();
    let peer = a.authenticate_peer(&chain(&first)).await.unwrap();
    assert_eq!(peer.id.as_str(), "spiffe://shop.acme.test/ns/shop/sa/reviews");
    assert_eq!(live(&store, &a, &f).await, vec![("active", 1)]);

    // Replica B rotates; A hears nothing of it.
    rotate(&store, &b, &f).await;
    let by_token = a.issue_with_join_token(&token, &csr()).await.unwrap();
    let renewed = a.renew(&peer, &csr()).await.unwrap();
    assert_eq!(
        live(&store, &a, &f).await,
        vec![("active", 2), ("previous", 1)],
        "both leaves A signed after the rotation are the new CA's; the renewed one is in use \
         until its successor is presented"
    );
    a.authenticate_peer(&chain(&renewed)).await.unwrap();
    assert_eq!(live(&store, &a, &f).await, vec![("active", 2), ("previous", 0)]);
    assert!(by_token.bundle_sequence > first.bundle_sequence, "A reloaded the mesh and its bundle");
    assert_eq!(renewed.svid.spiffe_id, peer.id, "renewal keeps the identity");

    // Each issuance by the shared token counted once; the refused stale attempt did not.
    let mut tx = store.tenant(f.org).await.unwrap();
    let tokens = tx.list_join_tokens(f.mesh).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(tokens[0].uses, 2);

    // Retire the old root through B (renewed, its one leaf is no longer in use). A's cache may
    // trust it for up to 2 s more; the change notification ends that at once...
    retire_previous(&store, &b, &f).await;
    a.on_change(&MeshChange { org: f.org, mesh: f.mesh, revision: 99 });
    // ...and refuses it from then on.
    let refused = a.authenticate_peer(&chain(&first)).await;
    assert!(matches!(refused, Err(PkiError::Unauthenticated(_))), "{refused:?}");
    // The new root's leaves still authenticate.
    a.authenticate_peer(&chain(&renewed)).await.unwrap();
    store.close().await;
}

#[tokio::test]
async fn a_renewal_whose_reply_was_lost_leaves_the_old_leaf_in_use_until_the_new_one_is_presented() {
    let (_db, store, a, b, f) = setup().await;
    let token = join_token(&store, &f, false).await;
    let first = a.issue_with_join_token(&token, &csr()).await.unwrap();
    let peer = a.authenticate_peer(&chain(&first)).await.unwrap();
    rotate(&store, &b, &f).await;

    // The first renewal's reply never reaches the workload: it still holds only `first`,
    // so retiring the old root unforced would cut it off, and is refused.
    let _lost = a.renew(&peer, &csr()).await.unwrap();
    assert_eq!(live(&store, &a, &f).await, vec![("active", 1), ("previous", 1)]);
    let refused = try_retire_previous(&store, &b, &f, false).await;
    assert!(matches!(&refused, Err(PkiError::Conflict(m)) if m.contains("1 unexpired")), "{refused:?}");

    // It renews again with the same leaf; once it presents what it received (on any of the
    // control plane's mTLS ports, through either replica), the old leaf is out of use.
    let second = a.renew(&peer, &csr()).await.unwrap();
    b.authenticate_peer(&chain(&second)).await.unwrap();
    assert_eq!(live(&store, &a, &f).await, vec![("active", 2), ("previous", 0)]);
    try_retire_previous(&store, &b, &f, false).await.unwrap();
    store.close().await;
}

#[tokio::test]
async fn without_a_change_notification_a_cached_mesh_lives_two_seconds_at_most() {
    let (_db, store, a, b, f) = setup().await;
    let token = join_token(&store, &f, false).await;
    let first = a.issue_with_join_token(&token, &csr()).await.unwrap();
    a.authenticate_peer(&chain(&first)).await.unwrap();

    rotate(&store, &b, &f).await;
    retire_previous(&store, &b, &f).await;

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let refused = a.authenticate_peer(&chain(&first)).await;
    assert!(matches!(refused, Err(PkiError::Unauthenticated(_))), "{refused:?}");
    store.close().await;
}

#[tokio::test]
async fn a_single_use_token_yields_one_svid_under_concurrent_redemption() {
    let (_db, store, a, b, f) = setup().await;
    let once = join_token(&store, &f, true).await;
    let (c1, c2) = (csr(), csr());
    let (r1, r2) = tokio::join!(a.issue_with_join_token(&once, &c1), b.issue_with_join_token(&once, &c2));
    assert_eq!(
        [r1.is_ok(), r2.is_ok()].iter().filter(|ok| **ok).count(),
        1,
        "exactly one redemption wins: {r1:?} {r2:?}"
    );
    assert_eq!(live(&store, &a, &f).await, vec![("active", 1)]);

    // A refused CSR spends nothing of a single-use token.
    let spare = join_token(&store, &f, true).await;
    let bad = a.issue_with_join_token(&spare, b"not a csr").await;
    assert!(matches!(bad, Err(PkiError::Invalid { field: "csr", .. })), "{bad:?}");
    a.issue_with_join_token(&spare, &csr()).await.unwrap();
    store.close().await;
}

#[tokio::test]
async fn a_deleted_mesh_stops_authenticating_and_one_made_again_under_its_trust_domain_starts() {
    let (_db, store, a, b, f) = setup().await;
    let token = join_token(&store, &f, false).await;
    let old = a.issue_with_join_token(&token, &csr()).await.unwrap();
    let old_peer = a.authenticate_peer(&chain(&old)).await.unwrap();

    // Through the other replica: the mesh is deleted and made again, same name and trust
    // domain, a new root. A hears of the deletion (revision 0), not of the new mesh.
    let mut tx = store.tenant(f.org).await.unwrap();
    tx.delete_mesh(f.mesh).await.unwrap();
    tx.commit().await.unwrap();
    a.on_change(&MeshChange { org: f.org, mesh: f.mesh, revision: 0 });
    let g = mesh_in(&store, &b, f.org).await;
    let new = b.issue_with_join_token(&join_token(&store, &g, false).await, &csr()).await.unwrap();

    let peer = a.authenticate_peer(&chain(&new)).await.unwrap();
    assert_eq!(peer.mesh_id, g.mesh, "the new mesh, not the remembered one");
    let refused = a.authenticate_peer(&chain(&old)).await;
    assert!(matches!(refused, Err(PkiError::Unauthenticated(_))), "the old root is gone: {refused:?}");
    let renewal = a.renew(&old_peer, &csr()).await;
    assert!(renewal.is_err(), "nothing is signed for the deleted mesh: {renewal:?}");
    assert_eq!(live(&store, &a, &g).await, vec![("active", 1)]);
    store.close().await;
}

/// Issue #10, item 6, the race: a service deleted while one of its SVIDs is being issued
/// (its token read, its leaf not yet recorded) leaves no live identity behind. Either the
/// delete commits first and the leaf is not recorded (the issuance is refused), or the leaf
/// commits first and the delete revokes it. Here the delete lands between the two.
#[tokio::test]
async fn a_leaf_whose_service_was_deleted_meanwhile_is_not_recorded() {
    let (_db, store, a, _b, f) = setup().await;
    let token = join_token(&store, &f, false).await;
    let first = a.issue_with_join_token(&token, &csr()).await.unwrap();
    let peer = a.authenticate_peer(&chain(&first)).await.unwrap();
    assert!(peer.tags.is_empty(), "{peer:?}");

    let mut tx = store.tenant(f.org).await.unwrap();
    tx.delete_resource(f.mesh, "Service", &REVIEWS, None).await.unwrap();
    tx.commit().await.unwrap();
    // `a` hears nothing of the delete: its cached mesh and remembered chain are stale, so
    // only the leaf's record stands between the renewal and a new SVID.
    let renewal = a.renew(&peer, &csr()).await;
    assert!(matches!(renewal, Err(PkiError::Unauthenticated(_))), "{renewal:?}");
    assert_eq!(live(&store, &a, &f).await, vec![("active", 1)], "no leaf recorded after the delete");
    let refused = a.issue_with_join_token(&token, &csr()).await;
    assert!(matches!(refused, Err(PkiError::Unauthenticated(_))), "the token was revoked: {refused:?}");
    a.on_change(&MeshChange { org: f.org, mesh: f.mesh, revision: 99 });
    let stale = a.authenticate_peer(&chain(&first)).await;
    assert!(matches!(stale, Err(PkiError::Unauthenticated(_))), "the leaf was revoked: {stale:?}");
    store.close().await;
}

/// The join token's last refusal, as "waiting for the first proxy" reads it.
async fn last_refusal(store: &Store, f: &Fixture) -> (Option<String>, Option<chrono::DateTime<chrono::Utc>>) {
    let mut tx = store.tenant(f.org).await.unwrap();
    let tokens = tx.list_join_tokens(f.mesh).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(tokens.len(), 1);
    (tokens[0].last_refusal.clone(), tokens[0].last_refused_at)
}

#[tokio::test]
async fn a_refused_join_token_keeps_why_it_was_last_refused_and_an_unknown_one_changes_nothing() {
    let (_db, store, a, _b, f) = setup().await;
    let token = join_token(&store, &f, true).await;
    assert_eq!(last_refusal(&store, &f).await, (None, None), "never presented");

    // A bad CSR, then a good one: the refusal stays as history, the use is counted after it.
    let bad = a.issue_with_join_token(&token, b"not a csr").await;
    assert!(matches!(bad, Err(PkiError::Invalid { field: "csr", .. })), "{bad:?}");
    let (why, at) = last_refusal(&store, &f).await;
    assert!(why.as_deref().is_some_and(|w| w.starts_with("csr: ")), "{why:?}");
    a.issue_with_join_token(&token, &csr()).await.unwrap();

    // Spent (single use): the next agent is refused, and that is the last refusal now.
    let spent = a.issue_with_join_token(&token, &csr()).await;
    assert!(matches!(spent, Err(PkiError::Unauthenticated(_))), "{spent:?}");
    let (why, later) = last_refusal(&store, &f).await;
    assert_eq!(why.as_deref(), Some("single-use join token already used"));
    assert!(later > at, "{later:?} after {at:?}");
    // The same refusal again at once writes nothing: a peer retrying in a loop costs reads.
    let _ = a.issue_with_join_token(&token, &csr()).await;
    assert_eq!(last_refusal(&store, &f).await.1, later);

    // A token that does not exist is refused and belongs to no one.
    let unknown = Token::new(TokenKind::Join, f.org, [9u8; trellis_model::SECRET_LEN]).to_string();
    let refused = a.issue_with_join_token(&unknown, &csr()).await;
    assert!(matches!(refused, Err(PkiError::Unauthenticated(_))), "{refused:?}");
    assert_eq!(last_refusal(&store, &f).await, (why, later));
    store.close().await;
}
